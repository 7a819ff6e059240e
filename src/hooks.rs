//! Extension points: hooks that observe (and may veto) what happens, and service handlers that
//! service tasks call.
//!
//! Both are object-safe `Send + Sync` traits with a closure adapter: [`hook_fn`] and
//! [`handler_fn`].

use std::fmt;

use crate::ids::{DefKey, InstanceId, RoleId, TaskId};
use crate::raci::Action;
use crate::vars::Vars;

/// Something that happened to an instance. Names are the YAML ids of the definition.
///
/// Serializes to JSON as `{"event": "task_completed", ...fields}`.
#[derive(Debug, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event<'a> {
    /// An instance started.
    InstanceStarted {
        /// The instance.
        instance: InstanceId,
        /// Its definition.
        def: &'a DefKey,
    },
    /// Every token of an instance reached an end.
    InstanceCompleted {
        /// The instance.
        instance: InstanceId,
    },
    /// A token arrived at a node.
    NodeEntered {
        /// The instance.
        instance: InstanceId,
        /// The node.
        node: &'a str,
    },
    /// A token left a node.
    NodeLeft {
        /// The instance.
        instance: InstanceId,
        /// The node.
        node: &'a str,
    },
    /// A user task opened.
    TaskCreated {
        /// The task.
        task: TaskId,
        /// Its node.
        node: &'a str,
        /// The roles that may claim it.
        responsible: &'a [RoleId],
    },
    /// An actor claimed a task.
    TaskClaimed {
        /// The task.
        task: TaskId,
        /// Its node.
        node: &'a str,
        /// Who claimed it.
        actor: &'a str,
    },
    /// A task is about to complete: a hook may answer [`Control::Veto`] to refuse it. Nothing has
    /// changed yet.
    TaskCompleting {
        /// The task.
        task: TaskId,
        /// Its node.
        node: &'a str,
        /// Who completes it.
        actor: &'a str,
        /// The variables the completion would set.
        output: &'a Vars,
    },
    /// A task completed.
    TaskCompleted {
        /// The task.
        task: TaskId,
        /// Its node.
        node: &'a str,
        /// Who completed it.
        actor: &'a str,
        /// Whether the accountable role overrode the regular rule.
        overridden: bool,
    },
    /// The accountable role gave a task to another actor.
    TaskReassigned {
        /// The task.
        task: TaskId,
        /// Its node.
        node: &'a str,
        /// Who reassigned it.
        by: &'a str,
        /// Who has it now.
        to: &'a str,
    },
    /// Someone commented on a task.
    TaskCommented {
        /// The task.
        task: TaskId,
        /// Its node.
        node: &'a str,
        /// Who commented.
        actor: &'a str,
        /// The comment.
        text: &'a str,
    },
    /// An actor tried something its roles do not allow. Nothing changed.
    AccessDenied {
        /// The task.
        task: TaskId,
        /// Its node.
        node: &'a str,
        /// Who tried.
        actor: &'a str,
        /// What it tried.
        action: Action,
        /// The roles that would have been allowed.
        allowed: &'a [RoleId],
    },
    /// A message for an informed role: the task completed.
    Notify {
        /// The task.
        task: TaskId,
        /// Its node.
        node: &'a str,
        /// The informed role.
        role: &'a RoleId,
        /// Who completed the task.
        actor: &'a str,
    },
    /// A timer fired: a reminder, a breach notice, an escalation (notify or reassign), an urge, a
    /// timeout, a timer node's wait, or one of these for the process-wide SLA.
    Timer {
        /// The instance.
        instance: InstanceId,
        /// The task, for task timers.
        task: Option<TaskId>,
        /// The task's or timer node's id (the start node's for the SLA).
        node: &'a str,
        /// What fired.
        kind: crate::model::TimerKind,
        /// Whether it belongs to the SLA.
        sla: bool,
        /// The roles told: responsible roles for reminders, informed roles for a breach, the
        /// level's target (by default the accountable role) for escalations and urges.
        recipients: &'a [RoleId],
    },
    /// Something failed: a service handler, a condition, a hook. The instance keeps its state; a
    /// [`retry`](crate::Engine::retry) runs the failed step again.
    Incident {
        /// The instance.
        instance: InstanceId,
        /// Where.
        node: &'a str,
        /// What went wrong.
        message: &'a str,
    },
    /// With a store: the events of the call before this one (on this instance) are stored.
    /// Hooks see a call's events as they happen, before its commit; a host that must act only
    /// on stored changes (send a notice, say) keeps a call's events until this one.
    Committed {
        /// The instance.
        instance: InstanceId,
        /// Its stored version now.
        version: u64,
    },
    /// With a store: the store refused the commit of the call whose events came before, so
    /// none of them happened; the call fails with
    /// [`ExecError::Store`](crate::ExecError::Store) or
    /// [`ExecError::Conflict`](crate::ExecError::Conflict).
    Refused {
        /// The instance.
        instance: InstanceId,
        /// Why, as the store said.
        reason: &'a str,
    },
}

/// What a hook answers.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Control {
    /// Go on.
    #[default]
    Continue,
    /// Refuse a task completion (only honoured for [`Event::TaskCompleting`]). Nothing changes
    /// and the caller gets [`ExecError::Vetoed`](crate::ExecError::Vetoed).
    Veto(String),
    /// The hook failed: the instance records an incident and the caller gets
    /// [`ExecError::Hook`](crate::ExecError::Hook). Changes already made stay.
    Abort(String),
}

impl From<()> for Control {
    fn from((): ()) -> Control {
        Control::Continue
    }
}

/// Observes events. Registered on the engine as `Arc<dyn Hook>`.
///
/// # Pitfalls
/// Hooks run synchronously, inside the call that caused the event, while the instance is locked.
/// A hook that calls back into the engine for the *same* instance gets
/// [`ExecError::Reentrant`](crate::ExecError::Reentrant); to act on an instance from a hook, queue
/// the work and do it after the call returns. A panicking hook is caught and recorded as an
/// incident.
pub trait Hook: Send + Sync {
    /// Called for every event, in order.
    fn on_event(&self, event: &Event<'_>) -> Control;
}

/// A hook made from a closure; see [`hook_fn`].
pub struct HookFn<F>(F);

impl<F> fmt::Debug for HookFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HookFn")
    }
}

impl<F, R> Hook for HookFn<F>
where
    F: Fn(&Event<'_>) -> R + Send + Sync,
    R: Into<Control>,
{
    fn on_event(&self, event: &Event<'_>) -> Control {
        (self.0)(event).into()
    }
}

/// Makes a hook from a closure that returns `()` (observe only) or a [`Control`].
///
/// # Examples
/// ```
/// use procflow::{hook_fn, Event};
/// let printer = hook_fn(|ev: &Event<'_>| {
///     if let Event::Notify { role, node, .. } = ev {
///         println!("tell {role}: {node} is done");
///     }
/// });
/// # let _ = printer;
/// ```
pub fn hook_fn<F, R>(f: F) -> HookFn<F>
where
    F: Fn(&Event<'_>) -> R + Send + Sync + 'static,
    R: Into<Control>,
{
    HookFn(f)
}

/// What a service handler is given.
#[derive(Debug)]
pub struct ServiceCall<'a> {
    /// The instance.
    pub instance: InstanceId,
    /// The service task's node id.
    pub node: &'a str,
    /// The instance's variables.
    pub vars: &'a Vars,
}

/// Why a service handler failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

impl HandlerError {
    /// A failure with a message.
    pub fn new(message: impl Into<String>) -> HandlerError {
        HandlerError(message.into())
    }
}

/// The code behind a service task, registered on the engine by name.
///
/// # Pitfalls
/// Handlers run synchronously while the instance is locked; see [`Hook`]. A panicking handler is
/// caught and recorded as an incident, as an error is.
pub trait ServiceHandler: Send + Sync {
    /// Does the work; returns the variables to set on the instance (they must be declared).
    ///
    /// # Errors
    /// A failure, which becomes an incident on the instance.
    fn call(&self, call: &ServiceCall<'_>) -> Result<Vars, HandlerError>;
}

/// A service handler made from a closure; see [`handler_fn`].
pub struct HandlerFn<F>(F);

impl<F> fmt::Debug for HandlerFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HandlerFn")
    }
}

impl<F> ServiceHandler for HandlerFn<F>
where
    F: Fn(&ServiceCall<'_>) -> Result<Vars, HandlerError> + Send + Sync,
{
    fn call(&self, call: &ServiceCall<'_>) -> Result<Vars, HandlerError> {
        (self.0)(call)
    }
}

/// Makes a service handler from a closure.
///
/// # Examples
/// ```
/// use procflow::{handler_fn, Vars};
/// let credit_check = handler_fn(|call| {
///     let mut out = Vars::new();
///     out.insert("credit_ok".into(), serde_json::json!(call.vars.get("amount").is_some()));
///     Ok(out)
/// });
/// # let _ = credit_check;
/// ```
pub fn handler_fn<F>(f: F) -> HandlerFn<F>
where
    F: Fn(&ServiceCall<'_>) -> Result<Vars, HandlerError> + Send + Sync + 'static,
{
    HandlerFn(f)
}
