//! Extension points: hooks that observe what happened (and may veto a completion), and service
//! handlers that service tasks call.
//!
//! Both are object-safe `Send + Sync` traits with closure adapters: [`hook_fn`], [`veto_fn`]
//! and [`handler_fn`].
//!
//! **Invariant:** hooks hear owned [`Event`]s after the commit of the call that caused them,
//! with no instance locked; the only code the engine runs while it holds an instance is a
//! handler and a veto ([`Hook::on_completing`]), and an engine call from either returns
//! [`ExecError::Reentrant`](crate::ExecError::Reentrant).

use std::fmt;

use crate::ids::{InstanceId, TaskId};
use crate::model::Event;
use crate::vars::Vars;

/// What a hook answers.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Control {
    /// Go on.
    #[default]
    Continue,
    /// Refuse a task completion (only honoured by [`Hook::on_completing`]). Nothing changes
    /// but the audit trail, and the caller gets [`ExecError::Vetoed`](crate::ExecError::Vetoed).
    Veto(String),
    /// The hook failed. From [`Hook::on_completing`]: the completion is refused, the instance
    /// records an incident and the caller gets [`ExecError::Hook`](crate::ExecError::Hook).
    /// From [`Hook::on_event`]: the call's change is committed and stays, the other hooks still
    /// hear the event, and the caller gets [`ExecError::Hook`](crate::ExecError::Hook).
    Abort(String),
}

/// A task about to complete, as [`Hook::on_completing`] sees it: nothing has changed yet.
#[derive(Debug)]
#[non_exhaustive]
pub struct Completing<'a> {
    /// The task.
    pub task: TaskId,
    /// Its node's YAML id.
    pub node: &'a str,
    /// Who completes it.
    pub actor: &'a str,
    /// The variables the completion would set.
    pub output: &'a Vars,
    /// The instance's variables now.
    pub vars: &'a Vars,
}

impl From<()> for Control {
    fn from((): ()) -> Control {
        Control::Continue
    }
}

/// Observes events and may veto completions. Registered on the engine as `Arc<dyn Hook>`.
///
/// # Pitfalls
/// [`on_event`](Hook::on_event) runs on the calling thread after the call's commit, with no
/// lock held: it may call the engine for any instance, its own included, and `tick`. Events of
/// one call arrive in order; calls on one instance from several threads may deliver theirs
/// interleaved. An event is delivered once, but a crash between a commit and its delivery
/// loses it; work that must survive a crash is a follow-up ([`Event::Notify`]), which the next
/// engine delivers again.
///
/// [`on_completing`](Hook::on_completing) runs while the instance is locked, before anything
/// changed: it must not call the engine (a call returns
/// [`ExecError::Reentrant`](crate::ExecError::Reentrant)). A panicking hook is caught: in
/// `on_completing` as an abort, in `on_event` as [`Control::Abort`].
pub trait Hook: Send + Sync {
    /// Hears every event after its call committed, in order.
    fn on_event(&self, event: &Event) -> Control {
        let _ = event;
        Control::Continue
    }

    /// Decides whether a task may complete: [`Control::Veto`] refuses it.
    fn on_completing(&self, completing: &Completing<'_>) -> Control {
        let _ = completing;
        Control::Continue
    }
}

/// A hook made from a closure that hears events; see [`hook_fn`].
pub struct HookFn<F>(F);

impl<F> fmt::Debug for HookFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HookFn")
    }
}

impl<F, R> Hook for HookFn<F>
where
    F: Fn(&Event) -> R + Send + Sync,
    R: Into<Control>,
{
    fn on_event(&self, event: &Event) -> Control {
        (self.0)(event).into()
    }
}

/// Makes a hook from a closure that hears every event after its commit and returns `()` or a
/// [`Control`].
///
/// # Examples
/// ```
/// use procflow::{hook_fn, Event};
/// let printer = hook_fn(|ev: &Event| {
///     if let Event::Notify { role, node, .. } = ev {
///         println!("tell {role}: {node} is done");
///     }
/// });
/// # let _ = printer;
/// ```
pub fn hook_fn<F, R>(f: F) -> HookFn<F>
where
    F: Fn(&Event) -> R + Send + Sync + 'static,
    R: Into<Control>,
{
    HookFn(f)
}

/// A hook made from a closure that decides completions; see [`veto_fn`].
pub struct VetoFn<F>(F);

impl<F> fmt::Debug for VetoFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VetoFn")
    }
}

impl<F> Hook for VetoFn<F>
where
    F: Fn(&Completing<'_>) -> Control + Send + Sync,
{
    fn on_completing(&self, completing: &Completing<'_>) -> Control {
        (self.0)(completing)
    }
}

/// Makes a hook from a closure that may veto task completions.
///
/// # Examples
/// ```
/// use procflow::{veto_fn, Control};
/// let four_eyes = veto_fn(|c| match c.vars.get("drafted_by") {
///     Some(v) if v.as_str() == Some(c.actor) => Control::Veto("drafter may not approve".into()),
///     _ => Control::Continue,
/// });
/// # let _ = four_eyes;
/// ```
pub fn veto_fn<F>(f: F) -> VetoFn<F>
where
    F: Fn(&Completing<'_>) -> Control + Send + Sync + 'static,
{
    VetoFn(f)
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
    /// For a multi-instance service task (`for_each`): the item this call handles. The item
    /// variable is local to the call; it is not among `vars`.
    pub item: Option<&'a serde_json::Value>,
    /// For a multi-instance service task: the item's index in the list.
    pub item_index: Option<u32>,
}

/// The message of [`HandlerError::pending`], and what `call_service` gives for it. A handler's
/// own failures always begin with "handler", so this cannot be one of them; where a pending
/// answer is not supported (a `repeat` or `for_each` service task) it is the incident's message.
pub(crate) const PENDING: &str =
    "an awaiting handler cannot serve a repeating or multi-instance service task (not supported)";

/// Why a service handler failed: a message, and the error behind it if there is one.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
    /// Not a failure: the handler answers later ([`HandlerError::pending`]).
    pending: bool,
}

impl HandlerError {
    /// A failure with a message.
    pub fn new(message: impl Into<String>) -> HandlerError {
        HandlerError {
            message: message.into(),
            source: None,
            pending: false,
        }
    }

    /// A failure with a message and the error that caused it (its text goes into the
    /// incident after the message).
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> HandlerError {
        HandlerError {
            message: message.into(),
            source: Some(Box::new(source)),
            pending: false,
        }
    }

    /// Not a failure: the handler took the call and answers later, through
    /// [`Engine::complete_service`](crate::Engine::complete_service) (the tokio façade's async
    /// handlers answer so). The token waits at the service task meanwhile, and the engine is
    /// free. A `repeat` or `for_each` service task cannot wait so: there it is an incident.
    pub fn pending() -> HandlerError {
        HandlerError {
            message: PENDING.to_owned(),
            source: None,
            pending: true,
        }
    }

    /// Whether the handler answers later ([`HandlerError::pending`]).
    pub fn is_pending(&self) -> bool {
        self.pending
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The message followed by the chain of sources, as an incident records it.
    pub fn describe(&self) -> String {
        let mut text = self.message.clone();
        let mut source = std::error::Error::source(self);
        while let Some(e) = source {
            text.push_str(": ");
            text.push_str(&e.to_string());
            source = e.source();
        }
        text
    }
}

/// The code behind a service task, registered on the engine by name.
///
/// # Pitfalls
/// Handlers run synchronously while the instance is locked: a handler must not call the engine
/// (a call returns [`ExecError::Reentrant`](crate::ExecError::Reentrant)). A panicking handler
/// is caught and recorded as an incident, as an error is.
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
