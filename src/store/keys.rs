//! Business keys as stores index them: [`BusinessKey`], a key's name with its value rendered
//! canonically, carried by a [`Commit`](super::Commit) whenever an instance's keys change.

use serde_json::Value;

/// One business key an instance holds: the key's name (a variable its definition lists under
/// `keys:`) and the variable's value rendered canonically ([`BusinessKey::render`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BusinessKey {
    /// The key's name, e.g. `customer_id`.
    pub name: String,
    /// The value, rendered canonically: a string as it is, an integer in decimal digits.
    pub value: String,
}

impl BusinessKey {
    /// A variable's value as key indexes hold it: a string as it is, an integer in decimal
    /// digits (`1001`, `-7`); `None` for anything else (no value, `null`, another type), which
    /// no index holds. A string `"1001"` and the integer `1001` render alike: they are the same
    /// business key.
    ///
    /// # Examples
    /// ```
    /// use procflow::BusinessKey;
    /// use serde_json::json;
    /// assert_eq!(BusinessKey::render(&json!("C-1001")).as_deref(), Some("C-1001"));
    /// assert_eq!(BusinessKey::render(&json!(1001)).as_deref(), Some("1001"));
    /// assert_eq!(BusinessKey::render(&json!(null)), None);
    /// assert_eq!(BusinessKey::render(&json!(1.5)), None);
    /// ```
    pub fn render(value: &Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
            _ => None,
        }
    }

    /// The keys `vars` hold among `names` (a definition's `keys:`), in that order.
    pub fn of<'a>(
        names: impl IntoIterator<Item = &'a str>,
        vars: &crate::vars::Vars,
    ) -> Vec<BusinessKey> {
        names
            .into_iter()
            .filter_map(|name| {
                let value = BusinessKey::render(vars.get(name)?)?;
                Some(BusinessKey {
                    name: name.to_owned(),
                    value,
                })
            })
            .collect()
    }
}

/// A role an instance's open task is offered to: the work list of whoever acts in `role` (in
/// `unit`, when the task's reference to the role is scoped to a unit) may show the task. A
/// [`Commit`](super::Commit) carries an instance's offers whenever they change, so that a
/// store can name the instances whose tasks a work list may show
/// ([`Store::offered`](super::Store::offered)) without decoding every running one.
///
/// An offer narrows, it does not decide: the engine still checks every task it reads as
/// [`Engine::work_list`](crate::Engine::work_list) does (claims, assignment, skills, the
/// authorizer), so an instance offered to a role may show its actor nothing.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Offer {
    /// A responsible role of an open task, or the role an escalation gave it to.
    pub role: crate::ids::RoleId,
    /// The unit the task's reference to the role is scoped to (with an organisation); `None`
    /// for an unscoped reference, and for every reference of an engine without one. `^unit`
    /// for a task an escalation gave one level above `unit` (`role@up`): a work list asks for
    /// the children of the units it reaches, so the offer holds whatever the parent is.
    pub unit: Option<String>,
}

impl Offer {
    /// The offer as stores index it: `role`, or `role@unit` for a scoped one (role ids never
    /// hold an `@`, so the two never meet).
    ///
    /// # Examples
    /// ```
    /// use procflow::{Offer, RoleId};
    /// let agent = |unit: Option<&str>| Offer { role: RoleId::new("agent"), unit: unit.map(str::to_owned) };
    /// assert_eq!(agent(None).render(), "agent");
    /// assert_eq!(agent(Some("north")).render(), "agent@north");
    /// ```
    pub fn render(&self) -> String {
        match &self.unit {
            None => self.role.as_str().to_owned(),
            Some(unit) => format!("{}@{unit}", self.role.as_str()),
        }
    }
}

/// The offer a schema migration gives each instance stored running before stores indexed
/// offers: it matches every query (see [`Store::offered`](super::Store::offered)), until the
/// instance's next commit that changes its offers replaces it.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) const ANY_OFFER: &str = "*";
