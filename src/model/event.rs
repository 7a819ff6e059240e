//! What hooks hear: owned [`Event`]s, delivered after the commit of the call that caused them,
//! and the [`FollowUp`] work a call leaves in its instance's outbox.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::timer::TimerKind;
use crate::ids::{ActorId, DefKey, InstanceId, NodeId, RoleId, TaskId};
use crate::raci::Action;

/// Something that happened to an instance: an owned value (`'static`, `Clone`, serde), delivered
/// to every [`Hook`](crate::Hook) after the call that caused it committed and after the
/// instance's lock was released. Node names are the YAML ids of the definition.
///
/// Serializes to JSON as `{"event": "task_completed", ...fields}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// An instance started.
    InstanceStarted {
        /// The instance.
        instance: InstanceId,
        /// Its definition.
        def: DefKey,
    },
    /// Every token of an instance reached an end.
    InstanceCompleted {
        /// The instance.
        instance: InstanceId,
    },
    /// The process's accountable role cancelled an instance
    /// ([`Engine::cancel`](crate::Engine::cancel)): its open tasks were cancelled (each heard as
    /// [`Event::TaskCancelled`]) and its timers dropped.
    InstanceCancelled {
        /// The instance.
        instance: InstanceId,
        /// Who cancelled it.
        actor: ActorId,
        /// Why.
        reason: String,
    },
    /// An actor without the process's accountable role tried to cancel an instance. Nothing
    /// changed but the audit trail.
    CancelDenied {
        /// The instance.
        instance: InstanceId,
        /// Who tried.
        actor: ActorId,
        /// The roles that would have been allowed.
        allowed: Vec<RoleId>,
    },
    /// A message for an informed role: the instance was cancelled. From the instance's outbox
    /// ([`FollowUp::CancelNotice`]), as [`Event::Notify`] is.
    CancelNotice {
        /// The instance.
        instance: InstanceId,
        /// The informed role.
        role: RoleId,
        /// Who cancelled it.
        actor: ActorId,
        /// Why.
        reason: String,
    },
    /// A token arrived at a node.
    NodeEntered {
        /// The instance.
        instance: InstanceId,
        /// The node.
        node: Arc<str>,
    },
    /// A token left a node.
    NodeLeft {
        /// The instance.
        instance: InstanceId,
        /// The node.
        node: Arc<str>,
    },
    /// A user task opened.
    TaskCreated {
        /// The task.
        task: TaskId,
        /// Its node.
        node: Arc<str>,
        /// The roles that may claim it.
        responsible: Vec<RoleId>,
    },
    /// An actor claimed a task.
    TaskClaimed {
        /// The task.
        task: TaskId,
        /// Its node.
        node: Arc<str>,
        /// Who claimed it.
        actor: ActorId,
    },
    /// A task completed.
    TaskCompleted {
        /// The task.
        task: TaskId,
        /// Its node.
        node: Arc<str>,
        /// Who completed it.
        actor: ActorId,
        /// Whether the accountable role overrode the regular rule.
        overridden: bool,
    },
    /// A multi-instance activity ended (every item completed, or its completion condition held
    /// and the rest were withdrawn).
    ItemsFinished {
        /// The instance.
        instance: InstanceId,
        /// The task node.
        node: Arc<str>,
        /// Items completed.
        completed: u32,
        /// Items withdrawn.
        withdrawn: u32,
    },
    /// A token entered an embedded sub-process: its scope starts.
    ScopeEntered {
        /// The instance.
        instance: InstanceId,
        /// The sub-process node.
        node: Arc<str>,
    },
    /// An embedded sub-process's scope ended: completed (no live token left in it), or
    /// interrupted by its timeout or an interrupting boundary event (its tokens withdrawn).
    ScopeLeft {
        /// The instance.
        instance: InstanceId,
        /// The sub-process node.
        node: Arc<str>,
        /// Whether its timeout or a boundary event interrupted it.
        interrupted: bool,
    },
    /// A run of a multi-instance sub-process's scope started for one item.
    RunStarted {
        /// The instance.
        instance: InstanceId,
        /// The sub-process node.
        node: Arc<str>,
        /// The item's index.
        item: u32,
    },
    /// A run of a multi-instance sub-process's scope completed (no live token of it is left):
    /// its output is kept for the collection.
    RunCompleted {
        /// The instance.
        instance: InstanceId,
        /// The sub-process node.
        node: Arc<str>,
        /// The item's index.
        item: u32,
    },
    /// A task with `repeat` runs again.
    Repeated {
        /// The instance.
        instance: InstanceId,
        /// The task node.
        node: Arc<str>,
        /// The run that begins (2 for the first repetition).
        iteration: u32,
    },
    /// A task was withdrawn before it was done ([`TaskState::Cancelled`](crate::TaskState)).
    TaskCancelled {
        /// The task.
        task: TaskId,
        /// Its node.
        node: Arc<str>,
    },
    /// A task's case was sent back to an earlier user task (退回). The task and the work after
    /// the target were withdrawn (each open task heard as [`Event::TaskCancelled`]), and the
    /// target opens again ([`Event::TaskCreated`], then [`Event::TaskClaimed`] for whoever
    /// completed it before).
    TaskSentBack {
        /// The task that sent it back.
        task: TaskId,
        /// Its node.
        node: Arc<str>,
        /// The earlier user task's node.
        to: Arc<str>,
        /// Who sent it back.
        actor: ActorId,
        /// Why.
        reason: String,
    },
    /// The accountable role gave a task to another actor.
    TaskReassigned {
        /// The task.
        task: TaskId,
        /// Its node.
        node: Arc<str>,
        /// Who reassigned it.
        by: ActorId,
        /// Who has it now.
        to: ActorId,
    },
    /// Someone commented on a task.
    TaskCommented {
        /// The task.
        task: TaskId,
        /// Its node.
        node: Arc<str>,
        /// Who commented.
        actor: ActorId,
        /// The comment.
        text: String,
    },
    /// An actor tried something its roles do not allow. Nothing changed but the audit trail.
    AccessDenied {
        /// The task.
        task: TaskId,
        /// Its node.
        node: Arc<str>,
        /// Who tried.
        actor: ActorId,
        /// What it tried.
        action: Action,
        /// The roles that would have been allowed.
        allowed: Vec<RoleId>,
    },
    /// A message for an informed role: the task completed. This one comes from the instance's
    /// outbox ([`FollowUp::Notify`]): with a store it survives a crash between the commit and
    /// its delivery, and is delivered again by the next engine that opens the store.
    Notify {
        /// The task.
        task: TaskId,
        /// Its node.
        node: Arc<str>,
        /// The informed role.
        role: RoleId,
        /// Who completed the task.
        actor: ActorId,
    },
    /// A catch node, or a user task's boundary event, received a message delivered to the
    /// instance.
    MessageCaught {
        /// The instance.
        instance: InstanceId,
        /// The catch node, or the task's node.
        node: Arc<str>,
        /// The message.
        message: String,
    },
    /// A catch node, or a user task's boundary event, received a broadcast signal.
    SignalCaught {
        /// The instance.
        instance: InstanceId,
        /// The catch node, or the task's node.
        node: Arc<str>,
        /// The signal.
        signal: String,
    },
    /// A persistent message or signal (`keep: true`) came while nothing in the instance waited
    /// for it: the instance keeps it for the first catch or boundary event of its name it
    /// reaches (WCP 24); [`Event::MessageCaught`] or [`Event::SignalCaught`] follows then.
    TriggerKept {
        /// The instance.
        instance: InstanceId,
        /// A signal, or a message.
        signal: bool,
        /// Its name.
        name: String,
    },
    /// A race gateway was decided: `node` left first; the other targets were withdrawn (their
    /// tasks are cancelled: [`Event::TaskCancelled`]).
    RaceWon {
        /// The instance.
        instance: InstanceId,
        /// The race.
        gateway: Arc<str>,
        /// The target that won.
        node: Arc<str>,
    },
    /// A boundary event of a user task fired.
    BoundaryFired {
        /// The task.
        task: TaskId,
        /// Its node.
        node: Arc<str>,
        /// Where the token goes.
        to: Arc<str>,
        /// Whether the task was withdrawn.
        interrupting: bool,
    },
    /// A timer fired: a reminder, a breach notice, an escalation (notify or reassign), an urge, a
    /// timeout, a timer node's wait, or one of these for the process-wide SLA.
    Timer {
        /// The instance.
        instance: InstanceId,
        /// The task, for task timers.
        task: Option<TaskId>,
        /// The task's or timer node's id (the start node's for the SLA).
        node: Arc<str>,
        /// What fired.
        kind: TimerKind,
        /// Whether it belongs to the SLA.
        sla: bool,
        /// The roles told: responsible roles for reminders, informed roles for a breach, the
        /// level's target (by default the accountable role) for escalations and urges.
        recipients: Vec<RoleId>,
    },
    /// Something failed: a service handler, a condition, a deadline, a veto hook. The instance
    /// keeps its state; a [`retry`](crate::Engine::retry) runs the failed step again.
    Incident {
        /// The instance.
        instance: InstanceId,
        /// Where, when a node failed.
        node: Option<Arc<str>>,
        /// What went wrong.
        message: String,
    },
    /// A send node's message was correlated (after the sender's commit, from its outbox): who
    /// received it, who it started, or that it was kept engine-wide.
    MessageSent {
        /// The sending instance.
        instance: InstanceId,
        /// The message.
        message: String,
        /// The waiting instances that received it.
        received: Vec<InstanceId>,
        /// The instances it started.
        started: Vec<InstanceId>,
        /// Whether nobody matched and it was kept engine-wide (`keep_for`).
        kept: bool,
    },
    /// An instance received a message from another process or the host (a
    /// [`Event::MessageCaught`] follows, or the instance started from it).
    MessageReceived {
        /// The receiving instance.
        instance: InstanceId,
        /// The message.
        message: String,
        /// The sending instance; `None` when the host correlated it.
        from: Option<InstanceId>,
    },
    /// A message kept engine-wide (`keep_for`) expired before any instance matched it. The
    /// engine's store keeps it ([`Engine::unmatched`](crate::Engine::unmatched)).
    MessageUnmatched {
        /// The sending instance; `None` when the host correlated it. [`Event::instance`] gives
        /// instance 0 then.
        from: Option<InstanceId>,
        /// The message.
        message: String,
        /// Its payload.
        vars: crate::vars::Vars,
    },
    /// A call activity started a child instance (it starts after this commit, from the
    /// outbox: [`FollowUp::StartChild`]).
    CallStarted {
        /// The parent instance.
        instance: InstanceId,
        /// The call activity.
        node: Arc<str>,
        /// The child instance.
        child: InstanceId,
    },
    /// A call activity's child completed; its outputs are set on the parent, which goes on.
    CallReturned {
        /// The parent instance.
        instance: InstanceId,
        /// The call activity.
        node: Arc<str>,
        /// The child instance.
        child: InstanceId,
    },
    /// With a store: the store refused the commit of a call, so nothing of it happened and no
    /// other event of it is delivered; the call fails with
    /// [`ExecError::Store`](crate::ExecError::Store) or
    /// [`ExecError::Conflict`](crate::ExecError::Conflict).
    Refused {
        /// The instance.
        instance: InstanceId,
        /// Why, as the store said.
        reason: String,
    },
    /// Allocation (`allocate:`) gave a task that just opened to a person.
    TaskAllocated {
        /// The task.
        task: TaskId,
        /// Its node.
        node: Arc<str>,
        /// Who has it.
        actor: ActorId,
    },
    /// The case owner changed (see [`Entry::OwnerSet`](super::Entry::OwnerSet)).
    OwnerChanged {
        /// The instance.
        instance: InstanceId,
        /// The new owner.
        owner: ActorId,
        /// Who handed it over (`None`: set by completing the owner task).
        by: Option<ActorId>,
    },
    /// A task opened assigned to a person or candidates (`assign:`).
    TaskAssigned {
        /// The task.
        task: TaskId,
        /// Its node.
        node: Arc<str>,
        /// The assignee, or the candidates.
        to: Vec<ActorId>,
    },
    /// The claimant released a task ([`Engine::release`](crate::Engine::release)).
    TaskReleased {
        /// The task.
        task: TaskId,
        /// Its node.
        node: Arc<str>,
        /// Who released it.
        actor: ActorId,
    },
    /// A task was delegated ([`Engine::delegate`](crate::Engine::delegate)).
    TaskDelegated {
        /// The task.
        task: TaskId,
        /// Its node.
        node: Arc<str>,
        /// Who delegated it.
        by: ActorId,
        /// The delegate.
        to: ActorId,
    },
    /// The delegate returned a task ([`Engine::return_task`](crate::Engine::return_task)).
    TaskReturned {
        /// The task.
        task: TaskId,
        /// Its node.
        node: Arc<str>,
        /// The delegate.
        actor: ActorId,
    },
    /// A task or an instance was suspended ([`Engine::suspend`](crate::Engine::suspend)).
    Suspended {
        /// The instance.
        instance: InstanceId,
        /// The task, or `None` for the whole instance.
        task: Option<TaskId>,
        /// Who suspended it.
        actor: ActorId,
    },
    /// A task or an instance resumed ([`Engine::resume`](crate::Engine::resume)).
    Resumed {
        /// The instance.
        instance: InstanceId,
        /// The task, or `None` for the whole instance.
        task: Option<TaskId>,
        /// Who resumed it.
        actor: ActorId,
    },
    /// The accountable skipped a task ([`Engine::skip`](crate::Engine::skip)).
    TaskSkipped {
        /// The task.
        task: TaskId,
        /// Its node.
        node: Arc<str>,
        /// Who skipped it.
        actor: ActorId,
        /// Why.
        reason: String,
    },
    /// An allocation rule or the work-item lifecycle refused a call (see
    /// [`Entry::Refused`](super::Entry::Refused)).
    CallRefused {
        /// The instance.
        instance: InstanceId,
        /// The task, for a task call.
        task: Option<TaskId>,
        /// Who tried.
        actor: ActorId,
        /// What.
        call: super::alloc::Call,
        /// Why.
        reason: String,
    },
    /// A service task's handler took the call to answer later: the token waits
    /// ([`Engine::complete_service`](crate::Engine::complete_service)).
    ServiceAwaiting {
        /// The instance.
        instance: InstanceId,
        /// The service task.
        node: Arc<str>,
    },
}

impl Event {
    /// The instance the event is about.
    pub fn instance(&self) -> InstanceId {
        match self {
            Event::InstanceStarted { instance, .. }
            | Event::InstanceCompleted { instance }
            | Event::InstanceCancelled { instance, .. }
            | Event::CancelDenied { instance, .. }
            | Event::CancelNotice { instance, .. }
            | Event::NodeEntered { instance, .. }
            | Event::NodeLeft { instance, .. }
            | Event::Timer { instance, .. }
            | Event::Incident { instance, .. }
            | Event::Refused { instance, .. }
            | Event::MessageCaught { instance, .. }
            | Event::SignalCaught { instance, .. }
            | Event::RaceWon { instance, .. }
            | Event::TriggerKept { instance, .. }
            | Event::ItemsFinished { instance, .. }
            | Event::Repeated { instance, .. }
            | Event::ScopeEntered { instance, .. }
            | Event::ScopeLeft { instance, .. }
            | Event::RunStarted { instance, .. }
            | Event::RunCompleted { instance, .. }
            | Event::MessageSent { instance, .. }
            | Event::MessageReceived { instance, .. }
            | Event::CallStarted { instance, .. }
            | Event::CallReturned { instance, .. }
            | Event::OwnerChanged { instance, .. }
            | Event::Suspended { instance, .. }
            | Event::Resumed { instance, .. }
            | Event::CallRefused { instance, .. }
            | Event::ServiceAwaiting { instance, .. } => *instance,
            Event::MessageUnmatched { from, .. } => from.unwrap_or(InstanceId(0)),
            Event::TaskCreated { task, .. }
            | Event::TaskClaimed { task, .. }
            | Event::TaskCompleted { task, .. }
            | Event::TaskCancelled { task, .. }
            | Event::TaskSentBack { task, .. }
            | Event::TaskReassigned { task, .. }
            | Event::TaskCommented { task, .. }
            | Event::AccessDenied { task, .. }
            | Event::Notify { task, .. }
            | Event::BoundaryFired { task, .. }
            | Event::TaskAllocated { task, .. }
            | Event::TaskAssigned { task, .. }
            | Event::TaskReleased { task, .. }
            | Event::TaskDelegated { task, .. }
            | Event::TaskReturned { task, .. }
            | Event::TaskSkipped { task, .. } => task.instance(),
        }
    }
}

/// Work a call leaves for after its commit, stored in the same commit as the change that caused
/// it (a transactional outbox). The engine runs each one after the commit, in its own commit,
/// and an engine that opens a store runs the ones a crash left undone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum FollowUp {
    /// Tell an informed role that a task completed: delivered to the hooks as
    /// [`Event::Notify`].
    Notify {
        /// The task.
        task: TaskId,
        /// Its node.
        node: NodeId,
        /// The informed role.
        role: RoleId,
        /// Who completed the task.
        actor: ActorId,
    },
    /// Tell an informed role (the SLA's, and those of the tasks cancelled) that the instance
    /// was cancelled: delivered to the hooks as [`Event::CancelNotice`].
    CancelNotice {
        /// The informed role.
        role: RoleId,
        /// Who cancelled it.
        actor: ActorId,
        /// Why.
        reason: String,
    },
    /// Send a message (a send node's) to other processes: correlated as
    /// [`Engine::correlate`](crate::Engine::correlate) does, each receiver changed in its own
    /// commit once (it remembers this follow-up's sender and number).
    Send {
        /// The message.
        message: String,
        /// Its payload: the sender's variables the message declares.
        vars: crate::vars::Vars,
    },
    /// Start the child instance a call activity reserved (idempotent: a child that exists is
    /// not started again).
    StartChild {
        /// The child's id, reserved in the parent's step.
        child: InstanceId,
        /// The called definition, its version resolved in the parent's step.
        process: DefKey,
        /// The parent's call activity.
        node: NodeId,
        /// For a multi-instance call: the item.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<u32>,
        /// The child's call depth.
        depth: u32,
        /// The child's input variables.
        vars: crate::vars::Vars,
        /// The child variables it hands back when it completes.
        outputs: Vec<String>,
    },
    /// A child completed: resume its parent's call with its outputs (idempotent: a parent that
    /// no longer waits for the child ignores it).
    ResumeParent {
        /// The parent.
        parent: InstanceId,
        /// The parent's call activity.
        node: NodeId,
        /// For a multi-instance call: the item.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<u32>,
        /// The child.
        child: InstanceId,
        /// The child's output variables (child names).
        vars: crate::vars::Vars,
    },
    /// A child failed (an incident) or was cancelled: an incident of its parent naming it.
    ChildFailed {
        /// The parent.
        parent: InstanceId,
        /// The parent's call activity.
        node: NodeId,
        /// The child.
        child: InstanceId,
        /// What went wrong in the child.
        message: String,
    },
    /// A failed child was retried: the parent's incident for it is resolved.
    ChildRetried {
        /// The parent.
        parent: InstanceId,
        /// The parent's call activity.
        node: NodeId,
        /// The child.
        child: InstanceId,
    },
    /// The parent's call was withdrawn (cancelled, terminated, interrupted): cancel the child.
    CancelChild {
        /// The child.
        child: InstanceId,
        /// Why.
        reason: String,
    },
}

/// A message that matched no waiting instance and started none: kept engine-wide for its
/// `keep_for` ([`Engine::kept_messages`](crate::Engine::kept_messages)), then recorded as
/// unmatched ([`Engine::unmatched`](crate::Engine::unmatched)). A store keeps both.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ParkedMessage {
    /// Its number, unique within a store.
    pub id: u64,
    /// The message.
    pub message: String,
    /// Its payload.
    pub vars: crate::vars::Vars,
    /// The sending instance; `None` when the host correlated it.
    pub from: Option<InstanceId>,
    /// The number of the sender's follow-up that sent it.
    pub from_seq: Option<u64>,
    /// Until when it is kept (`None`: it was recorded unmatched at once).
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

/// A follow-up waiting in an instance's outbox, with its number (unique within the instance).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Its number within the instance, from 0.
    pub seq: u64,
    /// What to do.
    pub what: FollowUp,
}
