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
