//! RACI: who may claim, complete, comment on, reassign and send back a task, and who is told.
//!
//! **Invariant:** every call that acts on a task passes through [`allowed_roles`] before anything
//! changes.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{ActorId, InstanceId, RoleId, TaskId};
use crate::vars::Vars;

/// A person or system acting on tasks: an id and the roles it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The actor's id, e.g. a staff number (shared: tasks and audit records keep it without
    /// copying the text).
    pub id: ActorId,
    /// The roles the actor holds.
    pub roles: Vec<RoleId>,
}

impl Actor {
    /// An actor with the given roles.
    ///
    /// # Examples
    /// ```
    /// let alice = procflow::Actor::new("alice", ["customer_service"]);
    /// assert!(alice.has_role(&procflow::RoleId::new("customer_service")));
    /// ```
    pub fn new<R: Into<String>>(
        id: impl Into<ActorId>,
        roles: impl IntoIterator<Item = R>,
    ) -> Actor {
        Actor {
            id: id.into(),
            roles: roles.into_iter().map(|r| RoleId(r.into())).collect(),
        }
    }

    /// Whether the actor holds `role`.
    pub fn has_role(&self, role: &RoleId) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// The RACI assignment of one user task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Raci {
    pub(crate) responsible: Vec<RoleId>,
    pub(crate) accountable: RoleId,
    pub(crate) consulted: Vec<RoleId>,
    pub(crate) informed: Vec<RoleId>,
    /// Scoped role references (`network_ops@local_network`): the role and the variable naming
    /// the unit it must be held in. Empty for most tasks.
    pub(crate) scopes: Vec<(RoleId, String)>,
}

impl Raci {
    /// Roles that do the work: they may claim and complete.
    pub fn responsible(&self) -> &[RoleId] {
        &self.responsible
    }

    /// The one role that answers for the task: it may complete or reassign as an override.
    pub fn accountable(&self) -> &RoleId {
        &self.accountable
    }

    /// Roles asked for advice: they may comment.
    pub fn consulted(&self) -> &[RoleId] {
        &self.consulted
    }

    /// Roles told when the task completes.
    pub fn informed(&self) -> &[RoleId] {
        &self.informed
    }

    /// The variable naming the unit `role` is scoped to on this task
    /// (`network_ops@local_network` gives `local_network`), if the reference is scoped.
    pub fn scope_of(&self, role: &RoleId) -> Option<&str> {
        self.scopes
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, v)| v.as_str())
    }
}

/// What an [`Authorizer`] sees of the call besides the role and the actor: the task, its
/// instance and variables, and the unit the role reference is scoped to.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct AuthContext<'a> {
    /// The instance.
    pub instance: InstanceId,
    /// The task.
    pub task: TaskId,
    /// The task's node id.
    pub node: &'a str,
    /// The instance's variables.
    pub vars: &'a Vars,
    /// The unit the role must be held in (or below), when the task's reference to the role is
    /// scoped (`network_ops@local_network`: the value of `local_network`; after an escalation
    /// `role@up`: its parent unit). A scoped reference whose variable is unset or not a string
    /// gives `Some("")`, a unit nobody belongs to.
    pub unit: Option<&'a str>,
}

impl<'a> AuthContext<'a> {
    /// A context for `task` at `node` with `vars` and no scope.
    pub fn new(task: TaskId, node: &'a str, vars: &'a Vars) -> AuthContext<'a> {
        AuthContext {
            instance: task.instance,
            task,
            node,
            vars,
            unit: None,
        }
    }
}

/// Something an actor does to a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Action {
    /// Take the task.
    Claim,
    /// Finish the task.
    Complete,
    /// Add a comment.
    Comment,
    /// Give the task to someone else.
    Reassign,
    /// Send the case back from the task to an earlier user task (退回).
    SendBack,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Claim => "claim",
            Action::Complete => "complete",
            Action::Comment => "comment on",
            Action::Reassign => "reassign",
            Action::SendBack => "send back",
        })
    }
}

/// How an allowed action was allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Grant {
    /// As a responsible role (or the claimant).
    Regular,
    /// As the accountable role overriding the regular rule.
    Override,
}

/// Decides whether an actor holds a role. The default checks [`Actor::roles`]; a host with role
/// hierarchies or delegation supplies its own.
///
/// Any `Fn(&RoleId, &Actor) -> bool + Send + Sync` is an `Authorizer`.
pub trait Authorizer: Send + Sync {
    /// Whether `actor` acts in `role`.
    fn holds(&self, role: &RoleId, actor: &Actor) -> bool;

    /// Whether `actor` acts in `role` on the task and instance of `cx`. The engine asks this
    /// for every task action; the default is [`Authorizer::holds`], which ignores the context
    /// (and so the unit of a scoped reference: an authorizer without an organisation counts a
    /// role as held in every unit). An [`Organisation`](crate::Organisation) checks the unit.
    fn allows(&self, role: &RoleId, actor: &Actor, cx: &AuthContext<'_>) -> bool {
        let _ = cx;
        self.holds(role, actor)
    }
}

impl<F> Authorizer for F
where
    F: Fn(&RoleId, &Actor) -> bool + Send + Sync,
{
    fn holds(&self, role: &RoleId, actor: &Actor) -> bool {
        self(role, actor)
    }
}

/// The default authorizer: the actor holds exactly the roles it lists.
pub(crate) fn by_actor_roles(role: &RoleId, actor: &Actor) -> bool {
    actor.has_role(role)
}

/// Checks `action` by `actor` on a task with `raci`, claimed by `claimant` if any; role
/// membership is decided by `holds` (which sees the call's context: instance, task, scope).
///
/// # Errors
/// The roles that would have been allowed, when the actor is not.
pub(crate) fn check_with(
    holds: &dyn Fn(&RoleId) -> bool,
    raci: &Raci,
    action: Action,
    actor: &Actor,
    claimant: Option<&str>,
    escalated_to: Option<&RoleId>,
) -> Result<Grant, Vec<RoleId>> {
    let holds_any = |roles: &[RoleId]| roles.iter().any(holds);
    let accountable = holds(&raci.accountable);
    // A task an escalation gave to a role is that role's work, no longer its responsible roles'.
    let responsible = match escalated_to {
        Some(role) => holds(role),
        None => holds_any(&raci.responsible),
    };
    match action {
        Action::Claim if responsible && claimant.is_none_or(|c| c == actor.id.as_str()) => {
            Ok(Grant::Regular)
        }
        Action::Complete if responsible && claimant.is_none_or(|c| c == actor.id.as_str()) => {
            Ok(Grant::Regular)
        }
        Action::SendBack if responsible && claimant.is_none_or(|c| c == actor.id.as_str()) => {
            Ok(Grant::Regular)
        }
        Action::Complete | Action::Reassign | Action::SendBack if accountable => {
            Ok(Grant::Override)
        }
        Action::Comment if accountable || responsible || holds_any(&raci.consulted) => {
            Ok(Grant::Regular)
        }
        _ => {
            let mut allowed = allowed_roles(raci, action);
            if let Some(role) = escalated_to {
                // The escalation's role takes the responsible roles' place.
                allowed.retain(|r| !raci.responsible.contains(r) || *r == raci.accountable);
                if action != Action::Reassign {
                    allowed.insert(0, role.clone());
                }
                allowed.dedup();
            }
            Err(allowed)
        }
    }
}

/// The roles that may take `action` (before claims are taken into account).
pub(crate) fn allowed_roles(raci: &Raci, action: Action) -> Vec<RoleId> {
    let mut roles = match action {
        Action::Claim => raci.responsible.clone(),
        Action::Complete | Action::SendBack => {
            let mut r = raci.responsible.clone();
            r.push(raci.accountable.clone());
            r
        }
        Action::Reassign => vec![raci.accountable.clone()],
        Action::Comment => {
            let mut r = raci.responsible.clone();
            r.push(raci.accountable.clone());
            r.extend(raci.consulted.iter().cloned());
            r
        }
    };
    // A role that is both responsible and accountable is listed once, where it first appears.
    let mut seen = Vec::with_capacity(roles.len());
    roles.retain(|r| {
        let new = !seen.contains(r);
        if new {
            seen.push(r.clone());
        }
        new
    });
    roles
}
