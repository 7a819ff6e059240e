//! The executor boundary's error type.

use crate::ids::{InstanceId, RoleId, TaskId};
use crate::raci::Action;
use crate::vars::VarProblem;

/// Why an engine call did not do what was asked. Unless the variant says otherwise, nothing
/// changed (a refused attempt is still written to the audit trail).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// No deployed definition has this id (and version).
    #[error("unknown process '{id}'{}", version.map(|v| format!(" version {v}")).unwrap_or_default())]
    UnknownProcess {
        /// The process id.
        id: String,
        /// The version asked for, if one was.
        version: Option<u32>,
    },
    /// No such instance.
    #[error("unknown instance {0}")]
    UnknownInstance(InstanceId),
    /// No such task.
    #[error("unknown task {0}")]
    UnknownTask(TaskId),
    /// The task is already completed.
    #[error("task {task} at '{node}' is already completed")]
    TaskClosed {
        /// The task.
        task: TaskId,
        /// Its node.
        node: String,
    },
    /// The actor's roles do not allow the action.
    #[error(
        "actor '{actor}' may not {action} task {task} at '{node}'{}; allowed roles: {}",
        claimed_by.as_ref().map(|c| format!(" (claimed by '{c}')")).unwrap_or_default(),
        allowed.iter().map(RoleId::as_str).collect::<Vec<_>>().join(", ")
    )]
    Denied {
        /// Who tried.
        actor: String,
        /// What it tried.
        action: Action,
        /// The task.
        task: TaskId,
        /// Its node.
        node: String,
        /// The roles that would have been allowed.
        allowed: Vec<RoleId>,
        /// Who holds the claim, when that is why.
        claimed_by: Option<String>,
    },
    /// The task is claimed by someone else.
    #[error("task {task} at '{node}' is already claimed by '{by}'")]
    AlreadyClaimed {
        /// The task.
        task: TaskId,
        /// Its node.
        node: String,
        /// The claimant.
        by: String,
    },
    /// Variables given at start or on completion do not fit the declarations.
    #[error("bad variables: {}", problems.iter().map(|(n, p)| format!("'{n}' {p}")).collect::<Vec<_>>().join("; "))]
    Variables {
        /// Each variable and what is wrong with it.
        problems: Vec<(String, VarProblem)>,
    },
    /// A hook vetoed the completion.
    #[error("completion of task {task} at '{node}' vetoed: {reason}")]
    Vetoed {
        /// The task.
        task: TaskId,
        /// Its node.
        node: String,
        /// The hook's reason.
        reason: String,
    },
    /// A node failed (a service handler, a condition, no matching route). The change that led
    /// to it stays; the instance records an incident and [`retry`](crate::Engine::retry) runs
    /// the node again.
    #[error("instance {instance} failed at '{node}': {message}")]
    Incident {
        /// The instance.
        instance: InstanceId,
        /// The node.
        node: String,
        /// What went wrong.
        message: String,
    },
    /// A hook aborted or panicked. The change it observed stays; the instance records an
    /// incident.
    #[error("hook failed on instance {instance}: {message}")]
    Hook {
        /// The instance.
        instance: InstanceId,
        /// What the hook said.
        message: String,
    },
    /// A hook or handler called back into the engine for the instance it is running in.
    #[error("instance {0} is busy in this thread (a hook or handler called back into it)")]
    Reentrant(InstanceId),
    /// The instance has already completed.
    #[error("instance {0} has completed")]
    InstanceCompleted(InstanceId),
    /// `retry` found no failed node.
    #[error("instance {0} has no failed node to retry")]
    NothingToRetry(InstanceId),
}
