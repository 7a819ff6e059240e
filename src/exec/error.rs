//! The executor boundary's error type.

use crate::def::LoadError;
use crate::ids::{DefKey, InstanceId, RoleId, TaskId};
use crate::raci::Action;
use crate::store::StoreError;
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
    /// Another engine sharing the store changed the instance since this engine read it. Nothing
    /// changed; the engine has read the instance again, so the caller may look and retry.
    #[error("instance {0} was changed by another engine; read it again and retry")]
    Conflict(InstanceId),
    /// The store refused the call's commit (or a read). Nothing changed, in memory or in the
    /// store.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// Why [`EngineBuilder::open`](crate::EngineBuilder::open) could not resume from a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A stored definition no longer deploys (a handler or calendar it names is not registered,
    /// or this procflow rejects its text).
    #[error("stored definition {key} does not deploy: {error}")]
    Definition {
        /// The definition.
        key: DefKey,
        /// Why.
        error: LoadError,
    },
    /// A stored instance names a definition the store does not hold.
    #[error("stored instance {instance} runs {key}, which is not stored")]
    UnknownDefinition {
        /// The instance.
        instance: InstanceId,
        /// The definition it names.
        key: DefKey,
    },
}
