//! The executor boundary's error type.

use crate::def::{LoadError, Location};
use crate::ids::{ActorId, DefKey, InstanceId, NodeRef, RoleId, TaskId};
use crate::raci::Action;
use crate::store::StoreError;
use crate::vars::VarProblem;

/// Why an engine call did not do what was asked. Unless the variant says otherwise, nothing
/// changed (a refused attempt is still written to the audit trail).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", content = "fields", rename_all = "snake_case")]
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
    /// No deployed definition lists this business key under `keys:`.
    #[error("unknown business key '{key}': no deployed definition lists it under keys")]
    UnknownKey {
        /// The key's name.
        key: String,
    },
    /// The value cannot be one of this business key: every deployed definition listing it
    /// declares it an integer.
    #[error("business key '{key}' takes {expected}, not '{value}'")]
    BadKeyValue {
        /// The key's name.
        key: String,
        /// The value given.
        value: String,
        /// What the key takes (`an integer`).
        expected: &'static str,
    },
    /// No such task.
    #[error("unknown task {0}")]
    UnknownTask(TaskId),
    /// The task is no longer open: completed, or cancelled by its timeout.
    #[error("task {task} at '{node}' is {state}")]
    TaskClosed {
        /// The task.
        task: TaskId,
        /// Its node.
        node: NodeRef,
        /// How it ended: `already completed`, `timed out` or `cancelled`.
        state: &'static str,
    },
    /// The actor's roles do not allow the action.
    #[error(
        "actor '{actor}' may not {action} task {task} at '{node}'{}; allowed roles: {}",
        claimed_by.as_ref().map(|c| format!(" (claimed by '{c}')")).unwrap_or_default(),
        allowed.iter().map(RoleId::as_str).collect::<Vec<_>>().join(", ")
    )]
    Denied {
        /// Who tried.
        actor: ActorId,
        /// What it tried.
        action: Action,
        /// The task.
        task: TaskId,
        /// Its node.
        node: NodeRef,
        /// The roles that would have been allowed.
        allowed: Vec<RoleId>,
        /// Who holds the claim, when that is why.
        claimed_by: Option<ActorId>,
    },
    /// The task is claimed by someone else.
    #[error("task {task} at '{node}' is already claimed by '{by}'")]
    AlreadyClaimed {
        /// The task.
        task: TaskId,
        /// Its node.
        node: NodeRef,
        /// The claimant.
        by: ActorId,
    },
    /// [`Engine::send_back`](crate::Engine::send_back) named a node that is not among the
    /// task's `send_back` targets.
    #[error(
        "task {task} at '{node}' cannot be sent back to '{to}'; {}",
        if allowed.is_empty() {
            "it names no send_back targets".to_owned()
        } else {
            format!("allowed: {}", allowed.join(", "))
        }
    )]
    NotSendBackTarget {
        /// The task.
        task: TaskId,
        /// Its node.
        node: NodeRef,
        /// The node asked for.
        to: String,
        /// The task's `send_back` targets.
        allowed: Vec<String>,
    },
    /// The task has milestones (`while_at`) and no token of its instance is at any of them: it
    /// may not be claimed or completed now.
    #[error(
        "task {task} at '{node}' is not enabled: no token is at its milestone{} {}",
        if milestones.len() == 1 { "" } else { "s" },
        milestones.join(", ")
    )]
    NotEnabled {
        /// The task.
        task: TaskId,
        /// Its node.
        node: NodeRef,
        /// Its milestones.
        milestones: Vec<String>,
    },
    /// Another task of the same interleaving group (`mutex`) is claimed in the instance: the
    /// task may not be claimed (or completed unclaimed, or reassigned) until that one is done.
    #[error(
        "task {task} at '{node}' must wait: task {holder_task} of mutex group '{group}' is claimed by '{holder}'"
    )]
    Interleaved {
        /// The task.
        task: TaskId,
        /// Its node.
        node: NodeRef,
        /// The group.
        group: String,
        /// The claimed task of the group.
        holder_task: TaskId,
        /// Who claimed it.
        holder: ActorId,
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
        node: NodeRef,
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
        node: NodeRef,
        /// What went wrong.
        message: String,
    },
    /// A deadline (a task's, a timer node's or the SLA's) could not be computed: its business
    /// calendar does not cover the instant, or its expression gave no duration. Nothing
    /// changed: the call that would have armed it is refused.
    #[error("instance {instance}: cannot compute the deadline at '{node}': {message}")]
    Deadline {
        /// The instance.
        instance: InstanceId,
        /// The task's or timer node's node (the start node for the SLA).
        node: NodeRef,
        /// Why.
        message: String,
    },
    /// A veto hook aborted or panicked (the completion is refused and the instance records an
    /// incident), or an observing hook did (the call's change is committed and stays).
    #[error("hook failed on instance {instance}: {message}")]
    Hook {
        /// The instance.
        instance: InstanceId,
        /// What the hook said.
        message: String,
    },
    /// A veto hook or a service handler called back into the engine. They run while an
    /// instance is locked; act from [`Hook::on_event`](crate::Hook::on_event) instead, which
    /// runs after the commit with nothing locked.
    #[error(
        "instance {0} is busy in this thread (a veto hook or handler called back into the engine)"
    )]
    Reentrant(InstanceId),
    /// No business calendar is registered under this name.
    #[error("no business calendar registered as '{0}'")]
    UnknownCalendar(String),
    /// No deployed definition can start or run the instance: the definition names a service
    /// handler or calendar this engine does not have (see [`Engine::unavailable`](crate::Engine::unavailable)).
    #[error("{0}")]
    Unavailable(DeployError),
    /// The instance has already completed.
    #[error("instance {0} has completed")]
    InstanceCompleted(InstanceId),
    /// The instance was cancelled ([`Engine::cancel`](crate::Engine::cancel)).
    #[error("instance {0} was cancelled")]
    InstanceCancelled(InstanceId),
    /// An actor without the process's accountable role tried to cancel an instance. The attempt
    /// is in the audit trail; nothing else changed.
    #[error(
        "actor '{actor}' may not cancel instance {instance}; allowed roles: {}",
        allowed.iter().map(RoleId::as_str).collect::<Vec<_>>().join(", ")
    )]
    CancelDenied {
        /// The instance.
        instance: InstanceId,
        /// Who tried.
        actor: ActorId,
        /// The roles that would have been allowed.
        allowed: Vec<RoleId>,
    },
    /// The instance's process names no accountable role (`accountable:` or `sla.accountable`),
    /// so nobody may cancel it.
    #[error(
        "instance {0} cannot be cancelled: its process names no accountable role (add 'accountable:')"
    )]
    NoAccountable(InstanceId),
    /// [`Engine::deliver`](crate::Engine::deliver) named a message the instance's definition
    /// does not declare under `messages:`.
    #[error("instance {instance}: its process declares no message '{message}'")]
    UnknownMessage {
        /// The instance.
        instance: InstanceId,
        /// The message.
        message: String,
    },
    /// [`Engine::deliver`](crate::Engine::deliver): nothing in the instance waits for the
    /// message now (no catch, race branch or open task's boundary event). The message is not
    /// kept for later.
    #[error("instance {instance}: nothing waits for message '{message}'")]
    NotWaiting {
        /// The instance.
        instance: InstanceId,
        /// The message.
        message: String,
    },
    /// The tokio façade could not run the call: the runtime is shutting down, or the blocking
    /// task running it was cancelled. Whether the call happened is unknown; read the instance.
    #[error("the async runtime could not run the call: {0}")]
    Runtime(String),
    /// [`Engine::complete_service`](crate::Engine::complete_service): no token waits at the
    /// service task for its handler's answer (the instance finished or was cancelled meanwhile,
    /// the answer came twice, or the node is not a service task).
    #[error("instance {instance}: nothing waits for the answer of service task '{node}'")]
    NotAwaiting {
        /// The instance.
        instance: InstanceId,
        /// The node asked for.
        node: String,
    },
    /// [`Engine::correlate`](crate::Engine::correlate): no deployed definition declares the
    /// message under `messages:`.
    #[error("no deployed process receives message '{message}'")]
    UndeclaredMessage {
        /// The message.
        message: String,
    },
    /// [`Engine::correlate`](crate::Engine::correlate): the message lacks a value for a field
    /// of a receiver's correlation rule.
    #[error("message '{message}' has no value for its correlation field '{field}'")]
    MissingCorrelation {
        /// The message.
        message: String,
        /// The payload field.
        field: String,
    },
    /// [`Engine::correlate`](crate::Engine::correlate): several waiting instances match and a
    /// receiver does not declare `many: true`. Nothing was delivered.
    #[error("message '{message}' matches several waiting instances: {}", candidates.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", "))]
    AmbiguousMessage {
        /// The message.
        message: String,
        /// The instances that match.
        candidates: Vec<InstanceId>,
    },
    /// `retry` found no failed node.
    #[error("instance {0} has no failed node to retry")]
    NothingToRetry(InstanceId),
    /// An allocation rule (four eyes, an assignment) or the work-item lifecycle refused a call
    /// by an actor not allowed to make it. The refusal is in the audit trail
    /// ([`Entry::Refused`](crate::Entry::Refused)); nothing else changed.
    #[error("actor '{actor}' may not {call} {}: {reason}", task.map_or_else(|| format!("instance {instance}"), |t| format!("task {t}")))]
    Refused {
        /// The instance.
        instance: InstanceId,
        /// The task, for a task call.
        task: Option<TaskId>,
        /// Who tried.
        actor: ActorId,
        /// What.
        call: crate::model::Call,
        /// Why, naming the rule (for four eyes: the earlier task and who performed it).
        reason: String,
    },
    /// The task, or its instance, is suspended ([`Engine::suspend`](crate::Engine::suspend)):
    /// resume it first.
    #[error("task {task} at '{node}' is suspended; resume it first")]
    Suspended {
        /// The task.
        task: TaskId,
        /// Its node.
        node: NodeRef,
    },
    /// The instance is suspended already.
    #[error("instance {0} is suspended already")]
    InstanceSuspended(InstanceId),
    /// [`Engine::resume`](crate::Engine::resume) on a task or instance that is not suspended
    /// (a task suspended only with its instance resumes with it).
    #[error("{} is not suspended", task.map_or_else(|| format!("instance {instance}"), |t| format!("task {t}")))]
    NotSuspended {
        /// The instance.
        instance: InstanceId,
        /// The task, for a task.
        task: Option<TaskId>,
    },
    /// [`Engine::release`](crate::Engine::release) on a task nobody claimed.
    #[error("task {task} at '{node}' is not claimed")]
    NotClaimed {
        /// The task.
        task: TaskId,
        /// Its node.
        node: NodeRef,
    },
    /// [`Engine::delegate`](crate::Engine::delegate) on a task delegated already.
    #[error("task {task} at '{node}' is delegated already (by '{by}')")]
    Delegated {
        /// The task.
        task: TaskId,
        /// Its node.
        node: NodeRef,
        /// Who delegated it.
        by: ActorId,
    },
    /// [`Engine::return_task`](crate::Engine::return_task) on a task that is not delegated.
    #[error("task {task} at '{node}' is not delegated")]
    NotDelegated {
        /// The task.
        task: TaskId,
        /// Its node.
        node: NodeRef,
    },
    /// [`Engine::hand_over`](crate::Engine::hand_over) on an instance whose process has no
    /// case owner rule (`owner: { from: TASK }`).
    #[error("instance {0} has no case owner: its process has no 'owner: {{ from: TASK }}'")]
    NoOwnerRule(InstanceId),
    /// Another engine sharing the store changed the instance since this engine read it. Nothing
    /// changed; the engine has read the instance again, so the caller may look and retry.
    #[error("instance {0} was changed by another engine; read it again and retry")]
    Conflict(InstanceId),
    /// The instance's definition has no node with this YAML id.
    #[error("instance {instance} has no node '{node}'")]
    UnknownNode {
        /// The instance.
        instance: InstanceId,
        /// The id asked for.
        node: String,
    },
    /// The node is not a multi-instance task (`for_each`), or none of its activity is underway
    /// in the instance.
    #[error("'{node}' of instance {instance} is not a running multi-instance task")]
    NotRunningItems {
        /// The instance.
        instance: InstanceId,
        /// The node.
        node: NodeRef,
    },
    /// The store refused the call's commit (or a read). Nothing changed, in memory or in the
    /// store.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The accountable may reassign, but not to this person: they may not work the task (no
    /// responsible role in the task's scope, nor the escalation's role, or a required skill
    /// missing). Recorded as `by`'s refused reassign.
    #[error(
        "actor '{by}' may not reassign task {task} at '{node}' to '{to}', who may not work it; roles that may: {}",
        allowed.iter().map(RoleId::as_str).collect::<Vec<_>>().join(", ")
    )]
    ReassignRefused {
        /// Who tried to reassign.
        by: ActorId,
        /// Whom the task was to go to.
        to: ActorId,
        /// The task.
        task: TaskId,
        /// Its node.
        node: NodeRef,
        /// The roles that may work the task.
        allowed: Vec<RoleId>,
    },
    /// The actor lacks skills the task requires (`skills:`); recorded in the audit trail.
    #[error("actor '{actor}' may not {action} task {task} at '{node}': lacks skills {}", missing.join(", "))]
    LacksSkills {
        /// Who tried.
        actor: ActorId,
        /// What it tried.
        action: Action,
        /// The task.
        task: TaskId,
        /// Its node.
        node: NodeRef,
        /// The skills missing.
        missing: Vec<String>,
    },
}

/// Why [`Engine::deploy`](crate::Engine::deploy) refused a definition. Nothing was deployed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[error("{}", problems.iter().map(|p| format!("{key}: {p}")).collect::<Vec<_>>().join("\n"))]
pub struct DeployError {
    /// The definition.
    pub key: DefKey,
    /// Every problem found.
    pub problems: Vec<DeployProblem>,
}

/// One reason a definition does not deploy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", content = "fields", rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeployProblem {
    /// A service task names a handler the engine does not have.
    #[error("{location}: service task '{node}' needs handler '{handler}', which is not registered")]
    UnknownHandler {
        /// The service task.
        node: NodeRef,
        /// The handler's name.
        handler: String,
        /// Where the definition names it.
        location: Location,
    },
    /// The definition (or one of its durations, at `node`) names a calendar the engine does
    /// not have.
    #[error("no business calendar registered as '{name}'{}", node.as_ref().map(|n| format!(" (used at '{n}')")).unwrap_or_default())]
    UnknownCalendar {
        /// The calendar's name.
        name: String,
        /// The node whose duration names it; `None` for the process calendar or the SLA.
        node: Option<NodeRef>,
    },
    /// Another text is deployed (or stored) under this id and version; deploying the same text
    /// again is allowed and changes nothing.
    #[error("already deployed with another text; give it a new version")]
    AlreadyDeployed,
    /// The engine's store refused to keep the definition.
    #[error("the store refused the definition: {0}")]
    Store(StoreError),
    /// The definition's roles or skills are not the engine's organisation's
    /// ([`ProcessDef::check_organisation`](crate::ProcessDef::check_organisation)).
    #[error("not fit for the organisation: {0}")]
    Organisation(crate::yaml::LoadError),
    /// A call activity names a definition (id, and version when it names one) that is not
    /// deployed.
    #[error("{location}: call activity '{node}' calls '{process}'{}, which is not deployed", version.map(|v| format!(" version {v}")).unwrap_or_default())]
    UnknownCalledProcess {
        /// The call activity.
        node: NodeRef,
        /// The called definition's id.
        process: String,
        /// The called version, when the call names one.
        version: Option<u32>,
        /// Where the definition names it.
        location: Location,
    },
    /// A call activity's `in` key or `out` value names a variable the called definition does
    /// not declare.
    #[error(
        "{location}: call activity '{node}': '{key}' names variable '{variable}', which {process} does not declare"
    )]
    CallVariable {
        /// The call activity.
        node: NodeRef,
        /// The called definition.
        process: DefKey,
        /// `in` or `out`.
        key: &'static str,
        /// The variable.
        variable: String,
        /// Where the mapping is.
        location: Location,
    },
    /// Call activities form a cycle (a definition calls itself, directly or through others)
    /// and no call on it has a `max_depth`.
    #[error("call activities form a cycle without a depth limit: {}; give one of these calls a 'max_depth'", cycle.join(" -> "))]
    CallCycle {
        /// The definition ids around the cycle, the first repeated at the end.
        cycle: Vec<String>,
    },
}

/// Why [`EngineBuilder::open`](crate::EngineBuilder::open) could not resume from a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A stored definition's text no longer loads in this procflow.
    #[error("stored definition {key} does not load: {error}")]
    Definition {
        /// The definition.
        key: DefKey,
        /// Why.
        error: LoadError,
    },
    /// A running instance needs a definition that does not deploy here (a handler or calendar
    /// it names is not registered). Definitions no running instance needs are only listed by
    /// [`Engine::unavailable`](crate::Engine::unavailable).
    #[error("stored instance {instance} runs a definition that does not deploy: {error}")]
    Unavailable {
        /// The instance.
        instance: InstanceId,
        /// Why its definition does not deploy.
        error: DeployError,
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
