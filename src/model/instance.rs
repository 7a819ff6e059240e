//! Instance state: plain serde data, changed only by the executor's one seam (`Step::apply`).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::event::Pending;
use super::timer::{Timer, TimerKind};
use crate::def::ProcessDef;
use crate::ids::{ActorId, DefKey, InstanceId, NodeId, RoleId, TaskId};
use crate::raci::Action;
use crate::vars::Vars;

/// The state of one process instance: plain data that a store can persist.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(from = "Wire")]
pub struct Instance {
    pub(crate) id: InstanceId,
    /// Set when the instance is stored in the engine. Not cloning the shared key for an instance
    /// that completes within its first call (and is not kept) spares threads starting instances
    /// of one definition a contended reference count.
    pub(crate) def: Option<Arc<DefKey>>,
    pub(crate) status: Status,
    pub(crate) vars: Vars,
    /// Most instances have one token: it is kept inline.
    pub(crate) tokens: SmallVec<[Token; 1]>,
    /// Every task the instance opened; a task's `seq` is its index here.
    pub(crate) tasks: Vec<Task>,
    /// Armed timers (and fired deadlines), few per instance.
    pub(crate) timers: Vec<Timer>,
    /// Absent from a stored state ([`Instance::encode`]): stores keep the records beside it.
    pub(crate) audit: Vec<Record>,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) ended_at: Option<DateTime<Utc>>,
    /// Incidents and follow-ups: most instances never have one, so they share one pointer
    /// (a waiting instance stays under 512 bytes).
    pub(crate) rare: Option<Box<Rare>>,
}

/// The parts of an instance most instances never have.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Rare {
    pub(crate) incidents: Vec<Incident>,
    pub(crate) outbox: Outbox,
    /// Partial joins that fired without cancelling the rest: how many late branches each still
    /// absorbs.
    pub(crate) absorbing: Vec<Absorbing>,
    /// Multi-instance activities underway (see `exec/multi.rs`).
    pub(crate) multi: Vec<Multi>,
    /// Which item each multi-instance task ran: (task seq, item index). Kept after the
    /// activity ends, so a closed task still names its item.
    pub(crate) item_tasks: Vec<(u32, u32)>,
    /// Loops underway: (node, runs so far).
    pub(crate) loops: Vec<(NodeId, u32)>,
    /// Persistent triggers (WCP 24) that came while nothing waited for them, oldest first
    /// (see `exec/kept.rs`).
    pub(crate) kept: Vec<Kept>,
    /// The local variables of the runs of multi-instance sub-processes underway that set any
    /// (see `exec/runs.rs`).
    pub(crate) run_vars: Vec<RunVars>,
    /// Messages received from other processes' outboxes (see `exec/correlate.rs`), newest last.
    pub(crate) receipts: Vec<Receipt>,
    /// The children this instance's call activities started, oldest first (see
    /// `exec/call.rs`).
    pub(crate) calls: Vec<Called>,
    /// The call activity that started this instance, when a parent instance did.
    pub(crate) parent: Option<CallParent>,
    /// The case owner (see `model/alloc.rs`).
    pub(crate) owner: Option<ActorId>,
    /// Who open tasks are assigned to.
    pub(crate) assigned: Vec<super::alloc::Assigned>,
    /// Delegated tasks.
    pub(crate) delegated: Vec<super::alloc::Delegation>,
    /// Suspended tasks and the suspended instance, with their paused timers.
    pub(crate) suspended: Vec<super::alloc::Suspension>,
}

/// A child instance a call activity started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Called {
    /// The call activity.
    pub(crate) node: NodeId,
    pub(crate) child: InstanceId,
    /// For a multi-instance call: the item the child runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) item: Option<u32>,
    /// Whether the call still waits for the child.
    pub(crate) open: bool,
    /// The parent's incident that stands for the child's failure (an index into its
    /// incidents), until the child goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) incident: Option<u32>,
}

/// Where a child instance was called from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CallParent {
    pub(crate) instance: InstanceId,
    /// The parent's call activity.
    pub(crate) node: NodeId,
    /// For a multi-instance call: the item this child runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) item: Option<u32>,
    /// The length of the call chain above this instance (1 for a child of a top-level one).
    pub(crate) depth: u32,
    /// The variables handed back when this instance completes (the call's `out` values).
    #[serde(default)]
    pub(crate) outputs: Vec<String>,
}

/// The local variables of one run of a multi-instance sub-process (its scope's `variables:`),
/// kept apart from the instance's while the run waits, so that parallel runs never overwrite
/// each other's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct RunVars {
    /// The sub-process node.
    pub(crate) node: NodeId,
    /// The item the run is for.
    pub(crate) item: u32,
    pub(crate) vars: Vars,
}

/// A persistent message or signal (`keep: true`) that came while nothing in the instance waited
/// for it: the first catch or boundary event of its name that the instance reaches consumes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Kept {
    /// A signal, or a message.
    #[serde(default)]
    pub(crate) signal: bool,
    pub(crate) name: String,
    /// The payload, set on the instance when the trigger is consumed.
    #[serde(default)]
    pub(crate) vars: Vars,
}

/// A partial join (`wait_for` without `cancel_rest`) that fired: the branches still to come are
/// absorbed when they arrive, without firing it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Absorbing {
    /// The join.
    pub(crate) node: NodeId,
    /// How many branches are still to arrive.
    pub(crate) left: u32,
}

/// A multi-instance activity underway at `node`: its items, their outputs so far and where each
/// stands. Item `k` is `items[k]`, `outputs[k]` and `state[k]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Multi {
    pub(crate) node: NodeId,
    pub(crate) items: Vec<serde_json::Value>,
    /// Each item's output (`null` until it completes).
    pub(crate) outputs: Vec<serde_json::Value>,
    pub(crate) state: Vec<ItemState>,
    /// How many items completed.
    pub(crate) completed: u32,
    /// `for_each` with `wait: false` (WCP 12): the activity's token went on; its items run on
    /// their own.
    #[serde(default, skip_serializing_if = "is_false")]
    pub(crate) detached: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Where one item of a multi-instance activity stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ItemState {
    /// Not started (a sequential activity's later items).
    Pending,
    /// Its task is open.
    Open(u32),
    /// Completed.
    Done,
    /// Withdrawn by the completion condition.
    Withdrawn,
    /// Its run of a multi-instance sub-process's scope is underway (its tokens carry
    /// [`Token::run`] = item + 1).
    Running,
    /// A multi-instance call's child runs it (see `exec/call.rs`).
    Called,
}

impl Multi {
    /// Whether no item is pending or open.
    pub(crate) fn settled(&self) -> bool {
        self.state
            .iter()
            .all(|s| matches!(s, ItemState::Done | ItemState::Withdrawn))
    }
}

/// An instance's outbox: the follow-ups its calls left, and the number the next one gets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Outbox {
    pub(crate) next: u64,
    pub(crate) pending: Vec<Pending>,
}

/// An instance as it is serialized: every field, the audit trail only when asked.
#[derive(Serialize)]
struct WireRef<'a> {
    id: InstanceId,
    def: &'a Option<Arc<DefKey>>,
    status: Status,
    vars: &'a Vars,
    tokens: &'a SmallVec<[Token; 1]>,
    tasks: &'a [Task],
    incidents: &'a [Incident],
    timers: &'a [Timer],
    #[serde(skip_serializing_if = "Option::is_none")]
    audit: Option<&'a [Record]>,
    started_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outbox: Option<&'a Outbox>,
    #[serde(skip_serializing_if = "<[Absorbing]>::is_empty")]
    absorbing: &'a [Absorbing],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    multi: &'a [Multi],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    item_tasks: &'a [(u32, u32)],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    loops: &'a [(NodeId, u32)],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    kept: &'a [Kept],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    run_vars: &'a [RunVars],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    receipts: &'a [Receipt],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    calls: &'a [Called],
    #[serde(skip_serializing_if = "Option::is_none")]
    parent: Option<&'a CallParent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<&'a ActorId>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    assigned: &'a [super::alloc::Assigned],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    delegated: &'a [super::alloc::Delegation],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    suspended: &'a [super::alloc::Suspension],
}

/// An instance as it is deserialized (the audit trail and the outbox may be absent).
#[derive(Deserialize)]
struct Wire {
    id: InstanceId,
    def: Option<Arc<DefKey>>,
    status: Status,
    vars: Vars,
    tokens: SmallVec<[Token; 1]>,
    tasks: Vec<Task>,
    #[serde(default)]
    incidents: Vec<Incident>,
    timers: Vec<Timer>,
    #[serde(default)]
    audit: Vec<Record>,
    started_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
    #[serde(default)]
    outbox: Option<Outbox>,
    #[serde(default)]
    absorbing: Vec<Absorbing>,
    #[serde(default)]
    multi: Vec<Multi>,
    #[serde(default)]
    item_tasks: Vec<(u32, u32)>,
    #[serde(default)]
    loops: Vec<(NodeId, u32)>,
    #[serde(default)]
    kept: Vec<Kept>,
    #[serde(default)]
    run_vars: Vec<RunVars>,
    #[serde(default)]
    receipts: Vec<Receipt>,
    #[serde(default)]
    calls: Vec<Called>,
    #[serde(default)]
    parent: Option<CallParent>,
    #[serde(default)]
    owner: Option<ActorId>,
    #[serde(default)]
    assigned: Vec<super::alloc::Assigned>,
    #[serde(default)]
    delegated: Vec<super::alloc::Delegation>,
    #[serde(default)]
    suspended: Vec<super::alloc::Suspension>,
}

impl From<Wire> for Instance {
    fn from(w: Wire) -> Instance {
        let outbox = w.outbox.unwrap_or_default();
        let rare = (!w.incidents.is_empty()
            || outbox != Outbox::default()
            || !w.absorbing.is_empty()
            || !w.multi.is_empty()
            || !w.item_tasks.is_empty()
            || !w.loops.is_empty()
            || !w.kept.is_empty()
            || !w.run_vars.is_empty()
            || !w.receipts.is_empty()
            || !w.calls.is_empty()
            || w.parent.is_some()
            || w.owner.is_some()
            || !w.assigned.is_empty()
            || !w.delegated.is_empty()
            || !w.suspended.is_empty())
        .then(|| {
            Box::new(Rare {
                incidents: w.incidents,
                outbox,
                absorbing: w.absorbing,
                multi: w.multi,
                item_tasks: w.item_tasks,
                loops: w.loops,
                kept: w.kept,
                run_vars: w.run_vars,
                receipts: w.receipts,
                calls: w.calls,
                parent: w.parent,
                owner: w.owner,
                assigned: w.assigned,
                delegated: w.delegated,
                suspended: w.suspended,
            })
        });
        Instance {
            id: w.id,
            def: w.def,
            status: w.status,
            vars: w.vars,
            tokens: w.tokens,
            tasks: w.tasks,
            timers: w.timers,
            audit: w.audit,
            started_at: w.started_at,
            ended_at: w.ended_at,
            rare,
        }
    }
}

impl Instance {
    fn wire(&self, audit: bool) -> WireRef<'_> {
        WireRef {
            id: self.id,
            def: &self.def,
            status: self.status,
            vars: &self.vars,
            tokens: &self.tokens,
            tasks: &self.tasks,
            incidents: self.incidents(),
            timers: &self.timers,
            audit: audit.then_some(&self.audit[..]),
            started_at: self.started_at,
            ended_at: self.ended_at,
            outbox: self
                .rare
                .as_deref()
                .map(|r| &r.outbox)
                .filter(|o| **o != Outbox::default()),
            absorbing: self.rare.as_deref().map_or(&[], |r| &r.absorbing[..]),
            multi: self.rare.as_deref().map_or(&[], |r| &r.multi[..]),
            item_tasks: self.rare.as_deref().map_or(&[], |r| &r.item_tasks[..]),
            loops: self.rare.as_deref().map_or(&[], |r| &r.loops[..]),
            kept: self.rare.as_deref().map_or(&[], |r| &r.kept[..]),
            run_vars: self.rare.as_deref().map_or(&[], |r| &r.run_vars[..]),
            receipts: self.rare.as_deref().map_or(&[], |r| &r.receipts[..]),
            calls: self.rare.as_deref().map_or(&[], |r| &r.calls[..]),
            parent: self.rare.as_deref().and_then(|r| r.parent.as_ref()),
            owner: self.rare.as_deref().and_then(|r| r.owner.as_ref()),
            assigned: self.rare.as_deref().map_or(&[], |r| &r.assigned[..]),
            delegated: self.rare.as_deref().map_or(&[], |r| &r.delegated[..]),
            suspended: self.rare.as_deref().map_or(&[], |r| &r.suspended[..]),
        }
    }

    /// Drops the rare state when nothing is left in it (as a decoded state has none).
    pub(crate) fn tidy_rare(&mut self) {
        if self.rare.as_deref().is_some_and(|r| *r == Rare::default()) {
            self.rare = None;
        }
    }

    /// The incidents and outbox, made on first use.
    pub(crate) fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// The multi-instance activity underway at `node`.
    pub(crate) fn multi_at(&self, node: NodeId) -> Option<&Multi> {
        self.rare
            .as_deref()
            .and_then(|r| r.multi.iter().find(|m| m.node == node))
    }

    /// The item a multi-instance task runs: its index and its value while its activity is
    /// underway (`None` once the activity ended).
    pub fn task_item(&self, task: u32) -> Option<(u32, Option<&serde_json::Value>)> {
        let rare = self.rare.as_deref()?;
        let &(_, item) = rare.item_tasks.iter().find(|(t, _)| *t == task)?;
        let node = self.tasks.get(task as usize)?.node;
        let value = rare
            .multi
            .iter()
            .find(|m| m.node == node)
            .and_then(|m| m.items.get(item as usize));
        Some((item, value))
    }

    /// The run (item + 1) of a multi-instance sub-process that task `task` opened in; 0 for a
    /// task outside such runs. Meaningful for the tasks inside a multi-instance sub-process's
    /// scope (a multi-instance task's items are in the same table).
    pub(crate) fn task_run(&self, task: u32) -> u16 {
        self.rare
            .as_deref()
            .and_then(|r| r.item_tasks.iter().find(|(t, _)| *t == task))
            .and_then(|(_, item)| item.checked_add(1))
            .and_then(|run| u16::try_from(run).ok())
            .unwrap_or(0)
    }

    /// The value of item `item` of the multi-instance activity underway at `node` (a task's or a
    /// sub-process's): for a task opened in a run of a multi-instance sub-process, `node` is the
    /// sub-process and `item` the task's [`TaskView::item`](crate::TaskView::item).
    pub fn item(&self, node: NodeId, item: u32) -> Option<&serde_json::Value> {
        self.multi_at(node)?.items.get(item as usize)
    }

    /// The local variables one run of multi-instance sub-process `node` has set so far (its
    /// scope's `variables:`, each run its own): `None` while the run has set none, or when it
    /// is not underway.
    pub fn item_vars(&self, node: NodeId, item: u32) -> Option<&Vars> {
        self.rare
            .as_deref()?
            .run_vars
            .iter()
            .find(|r| r.node == node && r.item == item)
            .map(|r| &r.vars)
    }

    /// Whether a multi-instance activity runs its items without its token (`wait: false`).
    pub(crate) fn has_detached(&self) -> bool {
        self.rare
            .as_deref()
            .is_some_and(|r| r.multi.iter().any(|m| m.detached))
    }

    /// The runs so far of the loop underway at `node` (0 when none is).
    pub fn iteration(&self, node: NodeId) -> u32 {
        self.rare
            .as_deref()
            .and_then(|r| r.loops.iter().find(|(n, _)| *n == node))
            .map_or(0, |(_, i)| *i)
    }

    /// The number the next follow-up gets.
    pub(crate) fn next_follow_up(&self) -> u64 {
        self.rare.as_deref().map_or(0, |r| r.outbox.next)
    }
}

impl Serialize for Instance {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.wire(true).serialize(s)
    }
}

/// Where an instance is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Status {
    /// Some token has not reached an end.
    Running,
    /// Every token reached an end.
    Completed,
    /// Withdrawn by [`Engine::cancel`](crate::Engine::cancel): its open work was cancelled.
    Cancelled,
}

/// A token: a thread of control at a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Where it is.
    pub node: NodeId,
    /// What it does there.
    pub state: TokenState,
    /// Inside a run of a multi-instance sub-process: the run's item index + 1; 0 elsewhere (it
    /// fits in the bytes the token had spare: a token stays 8 bytes).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub run: u16,
}

fn is_zero(run: &u16) -> bool {
    *run == 0
}

/// What a token is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TokenState {
    /// The node has yet to run.
    Ready,
    /// Waiting at a user task.
    Waiting,
    /// The node failed; an incident is open and [`retry`](crate::Engine::retry) runs it again.
    Failed,
    /// Arrived at a parallel join, waiting for the other branches.
    Joined,
}

/// A user task of an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub(crate) seq: u32,
    pub(crate) node: NodeId,
    pub(crate) state: TaskState,
    pub(crate) claimed_by: Option<ActorId>,
    pub(crate) created_at: DateTime<Utc>,
    /// The role an escalation gave the task to (its position in the role catalogue).
    pub(crate) escalated_to: Option<u16>,
    /// Rarely more than a few: a boxed slice is 8 bytes smaller than a `Vec`.
    pub(crate) comments: Box<[Comment]>,
}

/// Whether a task is open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskState {
    /// Waiting to be claimed or completed.
    Open,
    /// Cancelled by its timeout route.
    TimedOut {
        /// When.
        at: DateTime<Utc>,
    },
    /// Withdrawn before it was done: its instance was cancelled, another branch of a race won,
    /// a cancel region or a terminating end took it away, or the case was sent back past it.
    Cancelled {
        /// When.
        at: DateTime<Utc>,
    },
    /// Done.
    Completed {
        /// Who completed it.
        by: ActorId,
        /// When.
        at: DateTime<Utc>,
    },
}

/// A comment on a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comment {
    /// Who wrote it.
    pub actor: String,
    /// When.
    pub at: DateTime<Utc>,
    /// What.
    pub text: String,
}

/// A failure recorded on an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    /// Where, when a node failed.
    pub node: Option<NodeId>,
    /// What went wrong.
    pub message: String,
    /// When.
    pub at: DateTime<Utc>,
    /// Whether a retry has dealt with it.
    pub resolved: bool,
}

/// A send back (退回), as [`Entry::SentBack`] records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentBack {
    /// The task that sent it back (now cancelled).
    pub task: u32,
    /// Its node.
    pub from: NodeId,
    /// The earlier user task.
    pub to: NodeId,
    /// Who sent it back.
    pub actor: ActorId,
    /// Why.
    pub reason: Box<str>,
}

/// One entry of the audit trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When, by the engine's clock.
    pub at: DateTime<Utc>,
    /// What.
    pub what: Entry,
}

/// What an audit record says. Tasks are named by their number within the instance
/// ([`TaskId::seq`]); actors by their id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
#[non_exhaustive]
pub enum Entry {
    /// The instance started.
    Started,
    /// A token entered embedded sub-process `node`: a token starts its scope.
    ScopeEntered {
        /// The sub-process node.
        node: NodeId,
    },
    /// Sub-process `node`'s scope has no live token left: its token leaves by its `next`.
    ScopeCompleted {
        /// The sub-process node.
        node: NodeId,
    },
    /// Sub-process `node`'s timeout or an interrupting boundary event fired: its scope's tokens
    /// were withdrawn (the `Withdrawn` records before this one) and its token leaves by that
    /// route.
    ScopeInterrupted {
        /// The sub-process node.
        node: NodeId,
    },
    /// A token moved along a flow; `actor` is set when a task completion moved it.
    Transition {
        /// From this node.
        from: NodeId,
        /// To this node.
        to: NodeId,
        /// Who caused it.
        actor: Option<ActorId>,
    },
    /// An exclusive gateway chose a route.
    Route {
        /// The gateway.
        gateway: NodeId,
        /// The chosen target.
        to: NodeId,
        /// The position of the route whose condition held, or `None` for the default route.
        route: Option<u32>,
    },
    /// A parallel join received its last branch and fired.
    Joined {
        /// The join.
        node: NodeId,
    },
    /// A user task opened.
    TaskCreated {
        /// The task.
        task: u32,
        /// Its node.
        node: NodeId,
    },
    /// A task was claimed.
    Claimed {
        /// The task.
        task: u32,
        /// By whom.
        actor: ActorId,
    },
    /// A task completed.
    Completed {
        /// The task.
        task: u32,
        /// By whom.
        actor: ActorId,
        /// Whether the accountable role overrode the regular rule.
        overridden: bool,
        /// The role the actor acted in, as its position in the definition's role catalogue
        /// ([`ProcessDef::roles`](crate::ProcessDef::roles)): the accountable role for an
        /// override, the role an escalation gave the task to, else the first responsible role
        /// the actor holds. `None` in records written before procflow kept it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<u16>,
    },
    /// The accountable role reassigned a task.
    Reassigned {
        /// The task.
        task: u32,
        /// Who did it.
        by: ActorId,
        /// Who has the task now.
        to: ActorId,
    },
    /// A comment.
    Commented {
        /// The task.
        task: u32,
        /// By whom.
        actor: ActorId,
    },
    /// An attempt the actor's roles do not allow.
    Denied {
        /// The task.
        task: u32,
        /// Who tried.
        actor: ActorId,
        /// What.
        action: Action,
        /// The roles that would have been allowed.
        allowed: Box<[RoleId]>,
    },
    /// A hook vetoed a completion.
    Vetoed {
        /// The task.
        task: u32,
        /// Who tried to complete it.
        actor: ActorId,
        /// The hook's reason.
        reason: Box<str>,
    },
    /// Something failed.
    Incident {
        /// Where.
        node: Option<NodeId>,
        /// What.
        message: Box<str>,
    },
    /// A retry re-ran failed nodes.
    Retried,
    /// Every token reached an end.
    InstanceCompleted,
    /// The process's accountable role cancelled the instance ([`Engine::cancel`](crate::Engine::cancel)):
    /// every token was withdrawn first (see [`Entry::Withdrawn`]).
    Cancelled {
        /// Who cancelled it.
        actor: ActorId,
        /// Why.
        reason: Box<str>,
    },
    /// An actor without the process's accountable role tried to cancel the instance. Nothing
    /// else changed.
    CancelDenied {
        /// Who tried.
        actor: ActorId,
        /// The roles that would have been allowed.
        allowed: Box<[RoleId]>,
    },
    /// A token reached a terminating end: every other token was withdrawn and the instance
    /// completes.
    Terminated {
        /// The end node.
        node: NodeId,
    },
    /// A token entered a node with a cancel region (`cancels`): the withdrawals follow.
    RegionCancelled {
        /// The node entered.
        node: NodeId,
    },
    /// A late branch reached a partial join that had already fired and was absorbed there.
    Absorbed {
        /// The join.
        node: NodeId,
    },
    /// A token's work was withdrawn (see [`TaskState::Cancelled`]): its open task, if any, is
    /// cancelled and its timers are dropped.
    Withdrawn {
        /// Where the token was.
        node: NodeId,
        /// The task it waited at, if any.
        task: Option<u32>,
    },
    /// A task's case was sent back to an earlier user task (退回): the work after the target was
    /// withdrawn (the `Withdrawn` records that follow) and the target opens again. Boxed: it is
    /// the largest entry, and every record is as large as the largest (a record past 48 bytes
    /// stopped the audit trail's push from being inlined on the hot path).
    SentBack(Box<SentBack>),
    /// A catch node, or a user task's boundary event, received a message delivered to the
    /// instance ([`Engine::deliver`](crate::Engine::deliver)).
    MessageCaught {
        /// The catch node, or the task's node.
        node: NodeId,
        /// The message.
        message: Box<str>,
    },
    /// A catch node, or a user task's boundary event, received a signal
    /// ([`Engine::signal`](crate::Engine::signal)).
    SignalCaught {
        /// The catch node, or the task's node.
        node: NodeId,
        /// The signal.
        signal: Box<str>,
    },
    /// A persistent message or signal (`keep: true`) came while nothing waited for it: the
    /// instance keeps it for the first catch or boundary event of its name it reaches (WCP 24).
    TriggerKept {
        /// A signal, or a message.
        signal: bool,
        /// Its name.
        name: Box<str>,
    },
    /// A kept message or signal was consumed: its payload was set on the instance, and the
    /// `MessageCaught` or `SignalCaught` record that follows names who received it.
    TriggerConsumed {
        /// A signal, or a message.
        signal: bool,
        /// Its name.
        name: Box<str>,
    },
    /// A race gateway was decided: `node`, one of its targets, left first; the others were
    /// withdrawn ([`Entry::Withdrawn`]).
    RaceWon {
        /// The race.
        gateway: NodeId,
        /// The target that won.
        node: NodeId,
    },
    /// A boundary event of a user task fired: an interrupting one withdrew the task
    /// ([`TaskState::Cancelled`], or [`TaskState::TimedOut`] for a timer), a non-interrupting one
    /// started a token beside it.
    Boundary {
        /// The task.
        task: u32,
        /// Its node.
        node: NodeId,
        /// The boundary event's position in the task's `boundary` list.
        index: u32,
        /// Whether it withdrew the task.
        interrupting: bool,
    },
    /// A multi-instance activity began with `items` items.
    ItemsStarted {
        /// The task node.
        node: NodeId,
        /// How many items.
        items: u32,
    },
    /// One item of a multi-instance activity completed (its task or its handler call).
    ItemCompleted {
        /// The task node.
        node: NodeId,
        /// The item's index.
        item: u32,
    },
    /// Items were added to a running multi-instance activity
    /// ([`Engine::add_items`](crate::Engine::add_items)).
    ItemsAdded {
        /// The task node.
        node: NodeId,
        /// How many.
        count: u32,
    },
    /// A multi-instance activity ended: every item completed, or its completion condition held
    /// and the rest were withdrawn.
    ItemsFinished {
        /// The task node.
        node: NodeId,
        /// Items completed.
        completed: u32,
        /// Items withdrawn.
        withdrawn: u32,
    },
    /// A task with `repeat` runs again: its `until` did not hold.
    Repeated {
        /// The task node.
        node: NodeId,
        /// The run that begins (2 for the first repetition).
        iteration: u32,
    },
    /// A timer fired.
    Timer {
        /// What fired.
        kind: TimerKind,
        /// The task, for task timers.
        task: Option<u32>,
        /// Whether it belongs to the SLA.
        sla: bool,
    },
    /// A warning, e.g. a calendar computation that ran past the years the calendar covers.
    Warning {
        /// What.
        message: Box<str>,
    },
    /// Timers were armed on days their business calendar only knows by the statutory rule (no
    /// State Council notice for the year yet): they are provisional
    /// ([`Timer::provisional`](crate::Timer::provisional)).
    Provisional {
        /// The task, for task timers.
        task: Option<u32>,
        /// Whether they belong to the SLA.
        sla: bool,
    },
    /// A provisional timer was computed again on a replaced business calendar
    /// ([`Engine::update_calendar`](crate::Engine::update_calendar)).
    Retimed {
        /// Which timer.
        kind: TimerKind,
        /// The task, for task timers.
        task: Option<u32>,
        /// Whether it belongs to the SLA.
        sla: bool,
        /// When it fires now.
        at: DateTime<Utc>,
        /// Whether it is still provisional.
        provisional: bool,
    },
    /// A run of multi-instance sub-process `node`'s scope started for item `item`: a token
    /// starts the scope in that run (its completion is an [`Entry::ItemCompleted`]).
    RunStarted {
        /// The sub-process node.
        node: NodeId,
        /// The item's index.
        item: u32,
    },
    /// A send node sent a message to other processes: it waits in the outbox, and
    /// [`Entry::MessageDelivered`] follows once it was correlated.
    MessageSent {
        /// The send node.
        node: NodeId,
        /// The message.
        message: Box<str>,
    },
    /// A message this instance sent was correlated: who received it, who it started, or that
    /// it was kept engine-wide for a receiver to come. Boxed, to keep records small.
    MessageDelivered(Box<Delivered>),
    /// A message from another process (or from the host, by
    /// [`Engine::correlate`](crate::Engine::correlate)) was received; the `MessageCaught`
    /// record that follows names the catch, or the instance started from it.
    MessageReceived(Box<Received>),
    /// Allocation (`allocate:`) gave a task that just opened to a person: it is claimed for
    /// them.
    Allocated {
        /// The task.
        task: u32,
        /// Who has it.
        actor: ActorId,
    },
    /// The accountable tried to reassign a task to someone who may not work it (no responsible
    /// or escalation role there, or lacking a required skill).
    ReassignRefused {
        /// The task.
        task: u32,
        /// Who tried to reassign it.
        by: ActorId,
        /// Whom it was to go to.
        to: ActorId,
    },
    /// An attempt refused because the actor lacks skills the task requires (`skills:`).
    LacksSkills {
        /// The task.
        task: u32,
        /// Who tried.
        actor: ActorId,
        /// What.
        action: Action,
        /// The skills missing.
        missing: Box<[Box<str>]>,
    },
    /// Call activity `node` started child instance `child` (it starts after this commit).
    CallStarted {
        /// The call activity.
        node: NodeId,
        /// The child.
        child: InstanceId,
    },
    /// Child `child` of call activity `node` completed: its outputs are set.
    CallReturned {
        /// The call activity.
        node: NodeId,
        /// The child.
        child: InstanceId,
    },
    /// Call activity `node`'s token was withdrawn: child `child` is cancelled.
    CallCancelled {
        /// The call activity.
        node: NodeId,
        /// The child.
        child: InstanceId,
    },
    /// Child `child` of call activity `node`, which had failed, was retried: the incident
    /// that stood for its failure is resolved.
    ChildRetried {
        /// The call activity.
        node: NodeId,
        /// The child.
        child: InstanceId,
    },
    /// The case owner changed: set by completing the definition's owner task (`by: None`), or
    /// handed over ([`Engine::hand_over`](crate::Engine::hand_over)) by `by`.
    OwnerSet {
        /// The new owner.
        owner: ActorId,
        /// Who handed it over.
        by: Option<ActorId>,
    },
    /// A task opened assigned to a person, or to candidates (`assign:`).
    Assigned {
        /// The task.
        task: u32,
        /// The assignee, or the candidates.
        to: Box<[ActorId]>,
    },
    /// The claimant released a task: it is back in the work lists.
    Released {
        /// The task.
        task: u32,
        /// Who released it.
        actor: ActorId,
    },
    /// A task was delegated: `to` holds it until it completes or returns it; `by` stays
    /// accountable.
    Delegated {
        /// The task.
        task: u32,
        /// Who delegated it.
        by: ActorId,
        /// The delegate.
        to: ActorId,
    },
    /// The delegate returned a task to whoever held it before the delegation.
    Returned {
        /// The task.
        task: u32,
        /// The delegate.
        actor: ActorId,
    },
    /// A task (`task: Some`) or the whole instance was suspended: its timers pause.
    Suspended {
        /// The task, or `None` for the instance.
        task: Option<u32>,
        /// Who suspended it.
        actor: ActorId,
    },
    /// A suspended task or instance resumed: its timers fall due later by the suspended time.
    Resumed {
        /// The task, or `None` for the instance.
        task: Option<u32>,
        /// Who resumed it.
        actor: ActorId,
    },
    /// The accountable completed a task without output, as an override.
    Skipped {
        /// The task.
        task: u32,
        /// Who skipped it.
        actor: ActorId,
        /// Why.
        reason: Box<str>,
    },
    /// An allocation rule or the work-item lifecycle refused a call (four eyes, an assignment,
    /// a lifecycle call by someone not allowed to make it). Nothing else changed.
    Refused(Box<super::alloc::Refusal>),
    /// A service task's handler took the call to answer later: its token waits at `node`
    /// ([`Engine::complete_service`](crate::Engine::complete_service)).
    ServiceAwaiting {
        /// The service task.
        node: NodeId,
    },
}

/// What [`Entry::MessageDelivered`] says: where a sent message went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    /// The message.
    pub message: String,
    /// The waiting instances that received it.
    pub received: Vec<InstanceId>,
    /// The instances it started (message start events).
    pub started: Vec<InstanceId>,
    /// Whether nobody matched and it was kept engine-wide (`keep_for`).
    pub kept: bool,
    /// Why it was not delivered, when correlating it was refused (say, an ambiguous match): it
    /// is not tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What [`Entry::MessageReceived`] says: which message, from whom.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Received {
    /// The message.
    pub message: String,
    /// The sending instance, when another process sent it; `None` when the host did.
    pub from: Option<InstanceId>,
}

/// Messages an instance received from other processes' outboxes, for receiving each once: the
/// sender and the follow-up's number in the sender's outbox (sender 0: a message kept
/// engine-wide, with its number). The newest [`Receipt::LIMIT`] are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Receipt {
    pub(crate) from: u64,
    pub(crate) seq: u64,
}

impl Receipt {
    /// How many receipts an instance keeps: a follow-up runs again only after a crash, soon
    /// after it first ran, so the newest few are the ones that can come again.
    pub(crate) const LIMIT: usize = 64;
}

impl Instance {
    /// The id.
    pub fn id(&self) -> InstanceId {
        self.id
    }

    /// The definition it runs. Always set on an instance read from the engine; `None` only for
    /// an instance that completed within its first call and was not kept.
    pub fn def(&self) -> Option<&DefKey> {
        self.def.as_deref()
    }

    /// Running or completed.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The variables.
    pub fn vars(&self) -> &Vars {
        &self.vars
    }

    /// The live tokens.
    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// Every task, open and closed, in the order they opened.
    pub fn tasks(&self) -> &[Task] {
        &self.tasks
    }

    /// The persistent triggers (WCP 24) the instance keeps, oldest first: `message NAME` or
    /// `signal NAME`, each waiting for the first catch or boundary event of its name the
    /// instance reaches.
    pub fn kept(&self) -> impl Iterator<Item = String> + '_ {
        self.rare
            .iter()
            .flat_map(|r| r.kept.iter())
            .map(|k| format!("{} {}", if k.signal { "signal" } else { "message" }, k.name))
    }

    /// The incidents, resolved or not.
    pub fn incidents(&self) -> &[Incident] {
        self.rare.as_deref().map_or(&[], |r| &r.incidents[..])
    }

    /// The armed timers, and deadlines that already fired.
    pub fn timers(&self) -> &[Timer] {
        &self.timers
    }

    /// The audit trail, oldest first (empty when the engine's audit is off).
    pub fn audit(&self) -> &[Record] {
        &self.audit
    }

    /// The follow-ups committed with the instance that have yet to run (see
    /// [`FollowUp`](super::FollowUp)).
    pub fn pending(&self) -> &[Pending] {
        self.rare.as_deref().map_or(&[], |r| &r.outbox.pending[..])
    }

    /// The state as stores keep it: JSON with every field but the audit trail (a commit carries
    /// the records it added beside it, see [`Record::encode_batch`]). A store outside this crate
    /// uses this and [`Instance::decode`].
    pub fn encode(&self) -> String {
        // Instance state is plain serde data with string keys: it always serializes.
        serde_json::to_string(&self.wire(false)).unwrap_or_default()
    }

    /// Decodes what [`Instance::encode`] wrote and puts the audit trail back.
    ///
    /// # Errors
    /// The decoder's error, when `state` is not an encoded instance.
    pub fn decode(state: &str, audit: Vec<Record>) -> Result<Instance, serde_json::Error> {
        let mut instance: Instance = serde_json::from_str(state)?;
        instance.audit = audit;
        Ok(instance)
    }

    /// Checks that a decoded state fits `def`: every node, task, role and timer it names exists
    /// and has the right kind, and every waiting token has what it waits for. A store's data can
    /// be damaged or edited; the executor indexes by these numbers, so it checks them once, when
    /// it reads an instance, instead of at every step.
    ///
    /// # Errors
    /// What does not fit, as a sentence.
    pub fn check(&self, def: &ProcessDef) -> Result<(), String> {
        let nodes = def.nodes.len();
        let node = |n: NodeId, what: &str| {
            if n.index() < nodes {
                Ok(())
            } else {
                Err(format!(
                    "{what} names node {}, which {} lacks",
                    n.index(),
                    def.key
                ))
            }
        };
        for t in &self.tokens {
            node(t.node, "a token")?;
            if t.state == TokenState::Waiting {
                // A catch waits for a message or signal: nothing of the instance stands for it.
                // A sub-process waits for its scope: checked below.
                let catch = matches!(
                    def.nodes[t.node.index()].behaviour,
                    crate::def::Behaviour::Catch(_)
                        | crate::def::Behaviour::Subprocess { .. }
                        // A service task waits for its awaiting handler's answer.
                        | crate::def::Behaviour::ServiceTask { .. }
                ) || super::call::waits(self, def, t.node);
                let waits = catch
                    || self.tasks.iter().any(|k| k.node == t.node && k.is_open())
                    || self.timers.iter().any(|x| x.node == t.node && !x.fired);
                if !waits {
                    return Err(format!(
                        "a token waits at '{}' for no open task or timer",
                        def.nodes[t.node.index()].id
                    ));
                }
            }
        }
        // A token inside a sub-process's scope needs that sub-process's token waiting; a waiting
        // sub-process needs a token inside its scope, or its completion is due (nothing to
        // reject: the next call completes it).
        for t in &self.tokens {
            if let Some(p) = def.nodes[t.node.index()].parent
                && !self.tokens.iter().any(|u| {
                    u.node == p && matches!(u.state, TokenState::Waiting | TokenState::Failed)
                })
                && !self.multi_at(p).is_some_and(|m| m.detached)
            {
                return Err(format!(
                    "a token at '{}' is inside sub-process '{}', which no token waits at",
                    def.nodes[t.node.index()].id,
                    def.nodes[p.index()].id
                ));
            }
            if matches!(
                def.nodes[t.node.index()].behaviour,
                crate::def::Behaviour::Subprocess { .. }
            ) && t.state != TokenState::Waiting
                && t.state != TokenState::Ready
                && t.state != TokenState::Failed
            {
                return Err(format!(
                    "a token at sub-process '{}' is {:?}",
                    def.nodes[t.node.index()].id,
                    t.state
                ));
            }
        }
        for (i, task) in self.tasks.iter().enumerate() {
            node(task.node, "a task")?;
            if task.seq as usize != i {
                return Err(format!("task {i} is numbered {}", task.seq));
            }
            if def.nodes[task.node.index()].raci().is_none() {
                return Err(format!(
                    "task {i} sits at '{}', which is not a user task",
                    def.nodes[task.node.index()].id
                ));
            }
            if task
                .escalated_to
                .is_some_and(|r| r as usize >= def.roles.len())
            {
                return Err(format!("task {i} is escalated to a role {} lacks", def.key));
            }
        }
        // A mutex group has at most one claimed task (see `Engine::claim`).
        let claimed_in = |k: &Task| {
            k.is_open()
                .then_some(k.claimed_by.as_ref())
                .flatten()
                .and(def.nodes[k.node.index()].mutex())
        };
        for (i, a) in self.tasks.iter().enumerate() {
            if let Some(group) = claimed_in(a)
                && let Some(b) = self.tasks[i + 1..]
                    .iter()
                    .find(|b| claimed_in(b) == Some(group))
            {
                return Err(format!(
                    "tasks {i} and {} of mutex group '{group}' are both claimed",
                    b.seq
                ));
            }
        }
        for timer in &self.timers {
            node(timer.node, "a timer")?;
            if let TimerKind::Boundary { index } = timer.kind {
                let has = def.nodes[timer.node.index()]
                    .boundary
                    .get(index as usize)
                    .is_some_and(|b| matches!(b.on, crate::def::events::BoundaryOn::Timer(_)));
                // A sub-process's timer boundary belongs to no task; a task's to its task.
                let subprocess = matches!(
                    def.nodes[timer.node.index()].behaviour,
                    crate::def::Behaviour::Subprocess { .. }
                );
                if !has || timer.task.is_none() != subprocess {
                    return Err(format!(
                        "a boundary timer names boundary event {index} of '{}', which has no such timer",
                        def.nodes[timer.node.index()].id
                    ));
                }
            }
            if timer.task.is_some_and(|t| t as usize >= self.tasks.len()) {
                return Err(format!(
                    "a timer names task {:?}, which does not exist",
                    timer.task
                ));
            }
        }
        let empty = Rare::default();
        check_looping(self, self.rare.as_deref().unwrap_or(&empty), def)?;
        check_kept(self, self.rare.as_deref().unwrap_or(&empty), def)?;
        check_runs(self, self.rare.as_deref().unwrap_or(&empty), def)?;
        super::call::check(self, self.rare.as_deref().unwrap_or(&empty), def)?;
        super::alloc::check(self, self.rare.as_deref().unwrap_or(&empty), def)?;
        for incident in self.incidents() {
            if let Some(n) = incident.node {
                node(n, "an incident")?;
            }
        }
        self.check_control(def)?;
        for record in &self.audit {
            record.check(nodes, self.tasks.len())?;
            if let Entry::Completed {
                role: Some(role), ..
            } = record.what
                && usize::from(role) >= def.roles().count()
            {
                return Err(format!(
                    "audit record at {} names role {role}: the definition has {} roles",
                    record.at,
                    def.roles().count()
                ));
            }
        }
        Ok(())
    }

    /// The latest instant the instance records: its last audit record, its newest task, its
    /// start.
    pub(crate) fn latest(&self) -> DateTime<Utc> {
        let mut latest = self.started_at;
        if let Some(r) = self.audit.last() {
            latest = latest.max(r.at);
        }
        if let Some(t) = self.tasks.last() {
            latest = latest.max(t.created_at);
        }
        latest
    }

    /// A copy of everything but the audit trail: what a call restores when its commit is
    /// refused (it truncates the trail back instead of copying it).
    pub(crate) fn snapshot(&mut self) -> Instance {
        let audit = std::mem::take(&mut self.audit);
        let copy = self.clone();
        self.audit = audit;
        copy
    }

    /// Puts back a [`Instance::snapshot`], dropping the audit records from `first` on.
    pub(crate) fn restore(&mut self, mut snapshot: Instance, first: usize) {
        self.audit.truncate(first);
        std::mem::swap(&mut snapshot.audit, &mut self.audit);
        *self = snapshot;
    }

    /// When it started.
    pub fn started_at(&self) -> DateTime<Utc> {
        self.started_at
    }

    /// When it completed.
    pub fn ended_at(&self) -> Option<DateTime<Utc>> {
        self.ended_at
    }
}

impl Task {
    /// The task's id.
    pub fn id(&self, instance: InstanceId) -> TaskId {
        TaskId {
            instance,
            seq: self.seq,
        }
    }

    /// Its node.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Open or completed.
    pub fn state(&self) -> &TaskState {
        &self.state
    }

    /// Who claimed it.
    pub fn claimed_by(&self) -> Option<&str> {
        self.claimed_by.as_deref()
    }

    /// When it opened.
    pub fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }

    /// The role an escalation gave the task to (it is that role's work alone now), resolved in
    /// the definition the instance runs.
    pub fn escalated_to<'d>(&self, def: &'d ProcessDef) -> Option<&'d RoleId> {
        self.escalated_to
            .and_then(|i| def.roles.get_index(i as usize))
            .map(|(r, _)| r)
    }

    /// Its comments.
    pub fn comments(&self) -> &[Comment] {
        &self.comments
    }

    pub(crate) fn is_open(&self) -> bool {
        self.state == TaskState::Open
    }
}

/// Whose timers a record names: a task's, the SLA's, or a timer node's.
fn whose(task: Option<u32>, sla: bool) -> String {
    match task {
        Some(t) => format!("task {t}"),
        None if sla => "the SLA".to_owned(),
        None => "a timer node".to_owned(),
    }
}

impl Record {
    /// Checks the node and task numbers the record names (see [`Instance::check`]).
    fn check(&self, nodes: usize, tasks: usize) -> Result<(), String> {
        let ok_node = |n: &NodeId| n.index() < nodes;
        let ok_task = |t: &u32| (*t as usize) < tasks;
        let fits = match &self.what {
            Entry::Transition { from, to, .. } => ok_node(from) && ok_node(to),
            Entry::Route { gateway, to, .. } => ok_node(gateway) && ok_node(to),
            Entry::Joined { node } => ok_node(node),
            Entry::TaskCreated { task, node } => ok_task(task) && ok_node(node),
            Entry::Claimed { task, .. }
            | Entry::Completed { task, .. }
            | Entry::Reassigned { task, .. }
            | Entry::Commented { task, .. }
            | Entry::Denied { task, .. }
            | Entry::Vetoed { task, .. }
            | Entry::Allocated { task, .. }
            | Entry::ReassignRefused { task, .. }
            | Entry::LacksSkills { task, .. } => ok_task(task),
            Entry::Incident { node, .. } => node.as_ref().is_none_or(ok_node),
            Entry::SentBack(s) => ok_task(&s.task) && ok_node(&s.from) && ok_node(&s.to),
            Entry::ItemsStarted { node, .. }
            | Entry::ItemCompleted { node, .. }
            | Entry::ItemsAdded { node, .. }
            | Entry::ItemsFinished { node, .. }
            | Entry::Repeated { node, .. }
            | Entry::RunStarted { node, .. }
            | Entry::ServiceAwaiting { node } => ok_node(node),
            Entry::Timer { task, .. } => task.as_ref().is_none_or(ok_task),
            Entry::Terminated { node }
            | Entry::RegionCancelled { node }
            | Entry::Absorbed { node } => ok_node(node),
            Entry::MessageCaught { node, .. } | Entry::SignalCaught { node, .. } => ok_node(node),
            Entry::MessageSent { node, .. } => ok_node(node),
            Entry::RaceWon { gateway, node } => ok_node(gateway) && ok_node(node),
            Entry::Boundary { task, node, .. } => ok_task(task) && ok_node(node),
            Entry::CallStarted { node, .. }
            | Entry::CallReturned { node, .. }
            | Entry::CallCancelled { node, .. }
            | Entry::ChildRetried { node, .. } => ok_node(node),
            Entry::Assigned { task, .. }
            | Entry::Released { task, .. }
            | Entry::Delegated { task, .. }
            | Entry::Returned { task, .. }
            | Entry::Skipped { task, .. } => ok_task(task),
            Entry::Suspended { task, .. } | Entry::Resumed { task, .. } => {
                task.as_ref().is_none_or(ok_task)
            }
            Entry::Refused(r) => r.task.as_ref().is_none_or(ok_task),
            _ => true,
        };
        if fits {
            Ok(())
        } else {
            Err(format!(
                "an audit record names a node or task that does not exist: {self:?}"
            ))
        }
    }

    /// Encodes the records one commit added, as stores keep them: a JSON array.
    pub fn encode_batch(records: &[Record]) -> String {
        serde_json::to_string(records).unwrap_or_default()
    }

    /// Decodes what [`Record::encode_batch`] wrote.
    ///
    /// # Errors
    /// The decoder's error, when `text` is not an encoded batch.
    pub fn decode_batch(text: &str) -> Result<Vec<Record>, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The record as one line of text, with node ids resolved in `def`.
    pub fn describe(&self, def: &ProcessDef) -> String {
        let n = |id: &NodeId| def.try_node(*id).map_or("?", |n| n.id());
        let what = match &self.what {
            Entry::Started => "instance started".to_owned(),
            Entry::ScopeEntered { node } => format!("sub-process {} entered", n(node)),
            Entry::ScopeCompleted { node } => format!("sub-process {} completed", n(node)),
            Entry::ScopeInterrupted { node } => {
                format!("sub-process {} interrupted", n(node))
            }
            Entry::Transition {
                from,
                to,
                actor: Some(a),
            } => format!("{} -> {} (by {a})", n(from), n(to)),
            Entry::Transition {
                from,
                to,
                actor: None,
            } => format!("{} -> {}", n(from), n(to)),
            Entry::Route {
                gateway,
                to,
                route: Some(r),
            } => {
                let routes = def
                    .try_node(*gateway)
                    .map(|g| g.routes())
                    .unwrap_or_default();
                let cond = routes.get(*r as usize).and_then(|(c, _)| *c).unwrap_or("?");
                format!("{} chose {} because {cond}", n(gateway), n(to))
            }
            Entry::Route {
                gateway,
                to,
                route: None,
            } => format!("{} chose {} by default", n(gateway), n(to)),
            Entry::Joined { node } => format!("{} joined its branches", n(node)),
            Entry::TaskCreated { task, node } => format!("task {task} opened at {}", n(node)),
            Entry::Withdrawn {
                node,
                task: Some(task),
            } => format!("task {task} at {} withdrawn", n(node)),
            Entry::Withdrawn { node, task: None } => format!("the wait at {} withdrawn", n(node)),
            Entry::SentBack(s) => format!(
                "task {} at {} sent back to {} by {}: {}",
                s.task,
                n(&s.from),
                n(&s.to),
                s.actor,
                s.reason
            ),
            Entry::Claimed { task, actor } => format!("task {task} claimed by {actor}"),
            Entry::Completed {
                task,
                actor,
                overridden,
                role,
            } => {
                let role = role
                    .and_then(|i| def.roles().nth(usize::from(i)))
                    .map(|(r, _)| format!(" as {r}"))
                    .unwrap_or_default();
                let how = if *overridden {
                    " (accountable override)"
                } else {
                    ""
                };
                format!("task {task} completed by {actor}{role}{how}")
            }
            Entry::Reassigned { task, by, to } => {
                format!("task {task} reassigned to {to} by {by} (override)")
            }
            Entry::Commented { task, actor } => format!("task {task} commented by {actor}"),
            Entry::Denied {
                task,
                actor,
                action,
                allowed,
            } => {
                let roles: Vec<&str> = allowed.iter().map(RoleId::as_str).collect();
                format!(
                    "denied: {actor} may not {action} task {task} (allowed: {})",
                    roles.join(", ")
                )
            }
            Entry::Allocated { task, actor } => format!("task {task} allocated to {actor}"),
            Entry::ReassignRefused { task, by, to } => {
                format!("refused: {by} may not reassign task {task} to {to}, who may not work it")
            }
            Entry::LacksSkills {
                task,
                actor,
                action,
                missing,
            } => format!(
                "denied: {actor} may not {action} task {task} (lacks skills: {})",
                missing.join(", ")
            ),
            Entry::Vetoed {
                task,
                actor,
                reason,
            } => format!("vetoed: {actor} completing task {task}: {reason}"),
            Entry::Incident {
                node: Some(node),
                message,
            } => format!("incident at {}: {message}", n(node)),
            Entry::Incident {
                node: None,
                message,
            } => format!("incident: {message}"),
            Entry::MessageCaught { node, message } => {
                format!("{} received message {message}", n(node))
            }
            Entry::SignalCaught { node, signal } => format!("{} received signal {signal}", n(node)),
            Entry::TriggerKept { signal, name } => format!(
                "{} {name} kept until a catch of it is reached",
                if *signal { "signal" } else { "message" }
            ),
            Entry::TriggerConsumed { signal, name } => format!(
                "kept {} {name} consumed",
                if *signal { "signal" } else { "message" }
            ),
            Entry::RaceWon { gateway, node } => {
                format!(
                    "{} won race {}; the other targets withdrawn",
                    n(node),
                    n(gateway)
                )
            }
            Entry::Boundary {
                task,
                node,
                index,
                interrupting,
            } => {
                let how = if *interrupting {
                    "interrupting"
                } else {
                    "non-interrupting"
                };
                format!(
                    "boundary event {index} of task {task} at {} fired ({how})",
                    n(node)
                )
            }
            Entry::Retried => "retried".to_owned(),
            Entry::ItemsStarted { node, items: 1 } => format!("{} began for 1 item", n(node)),
            Entry::ItemsStarted { node, items } => {
                format!("{} began for {items} items", n(node))
            }
            Entry::ItemCompleted { node, item } => format!("{} item {item} completed", n(node)),
            Entry::RunStarted { node, item } => format!("{} item {item} run started", n(node)),
            Entry::ItemsAdded { node, count } => format!("{count} items added to {}", n(node)),
            Entry::ItemsFinished {
                node,
                completed,
                withdrawn,
            } => format!(
                "{} finished: {completed} items completed, {withdrawn} withdrawn",
                n(node)
            ),
            Entry::Repeated { node, iteration } => {
                format!("{} runs again (iteration {iteration})", n(node))
            }
            Entry::InstanceCompleted => "instance completed".to_owned(),
            Entry::Cancelled { actor, reason } => {
                format!("instance cancelled by {actor}: {reason}")
            }
            Entry::CancelDenied { actor, allowed } => {
                let roles: Vec<&str> = allowed.iter().map(RoleId::as_str).collect();
                format!(
                    "denied: {actor} may not cancel the instance (allowed: {})",
                    roles.join(", ")
                )
            }
            Entry::Terminated { node } => {
                format!("{} terminated the instance", n(node))
            }
            Entry::RegionCancelled { node } => {
                format!("{} cancels its region", n(node))
            }
            Entry::Absorbed { node } => {
                format!("{} absorbed a late branch", n(node))
            }
            Entry::Timer { kind, task, sla } => {
                let whose = whose(*task, *sla);
                format!("timer fired for {whose}: {kind:?}")
            }
            Entry::Warning { message } => format!("warning: {message}"),
            Entry::Provisional { task, sla } => {
                let whose = whose(*task, *sla);
                format!(
                    "provisional deadlines for {whose}: the calendar has no notice for the year yet"
                )
            }
            Entry::Retimed {
                kind,
                task,
                sla,
                at,
                provisional,
            } => {
                let whose = whose(*task, *sla);
                let still = if *provisional {
                    " (still provisional)"
                } else {
                    ""
                };
                format!(
                    "{} of {whose} recomputed on the updated calendar: {}{still}",
                    kind.name(*sla),
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
            }
            Entry::MessageSent { node, message } => {
                format!("{} sent message {message}", n(node))
            }
            Entry::MessageDelivered(d) => {
                let ids = |v: &[InstanceId]| {
                    v.iter()
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let mut parts = Vec::new();
                if !d.received.is_empty() {
                    parts.push(format!("received by {}", ids(&d.received)));
                }
                if !d.started.is_empty() {
                    parts.push(format!("started {}", ids(&d.started)));
                }
                if d.kept {
                    parts.push("kept for a receiver to come".to_owned());
                }
                if let Some(e) = &d.error {
                    parts.push(format!("not delivered: {e}"));
                }
                if parts.is_empty() {
                    parts.push("matched nobody".to_owned());
                }
                format!("message {} {}", d.message, parts.join("; "))
            }
            Entry::MessageReceived(r) => match r.from {
                Some(from) => format!("message {} received from instance {from}", r.message),
                None => format!("message {} received from the host", r.message),
            },
            Entry::CallStarted { node, child } => {
                format!("{} called: child instance {child} started", n(node))
            }
            Entry::CallReturned { node, child } => {
                format!("{}: child instance {child} completed", n(node))
            }
            Entry::CallCancelled { node, child } => {
                format!("{} withdrawn: child instance {child} cancelled", n(node))
            }
            Entry::ChildRetried { node, child } => {
                format!("{}: child instance {child} was retried", n(node))
            }
            Entry::OwnerSet { owner, by: None } => format!("case owner is {owner}"),
            Entry::OwnerSet {
                owner,
                by: Some(by),
            } => format!("case handed over to {owner} by {by}"),
            Entry::Assigned { task, to } => {
                let to: Vec<&str> = to.iter().map(|a| a.as_str()).collect();
                format!("task {task} assigned to {}", to.join(", "))
            }
            Entry::Released { task, actor } => format!("task {task} released by {actor}"),
            Entry::ServiceAwaiting { node } => format!("{}: waits for its handler", n(node)),
            Entry::Delegated { task, by, to } => {
                format!("task {task} delegated to {to} by {by}")
            }
            Entry::Returned { task, actor } => format!("task {task} returned by {actor}"),
            Entry::Suspended {
                task: Some(task),
                actor,
            } => format!("task {task} suspended by {actor}"),
            Entry::Suspended { task: None, actor } => format!("instance suspended by {actor}"),
            Entry::Resumed {
                task: Some(task),
                actor,
            } => format!("task {task} resumed by {actor}"),
            Entry::Resumed { task: None, actor } => format!("instance resumed by {actor}"),
            Entry::Skipped {
                task,
                actor,
                reason,
            } => format!("task {task} skipped by {actor} as accountable override: {reason}"),
            Entry::Refused(r) => match r.task {
                Some(task) => format!(
                    "denied: {} may not {} task {task}: {}",
                    r.actor, r.call, r.reason
                ),
                None => format!("denied: {} may not {}: {}", r.actor, r.call, r.reason),
            },
        };
        format!(
            "{} {what}",
            self.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        )
    }
}

/// Checks the multi-instance and loop state of a restored instance (see [`Instance::check`]).
/// Kept triggers (WCP 24): each is declared persistent, its payload fits the declarations (a
/// message's within its `payload`), and in a running instance nothing waits for it now (it
/// would have been consumed).
fn check_kept(inst: &Instance, rare: &Rare, def: &ProcessDef) -> Result<(), String> {
    use crate::def::Behaviour;
    for k in &rare.kept {
        let what = if k.signal { "signal" } else { "message" };
        if !def.keeps(k.signal, &k.name) {
            return Err(format!(
                "a kept {what} '{}' is not declared persistent in {}",
                k.name, def.key
            ));
        }
        for (name, value) in &k.vars {
            let fits = def
                .vars
                .get(name)
                .is_some_and(|spec| spec.reject(value).is_none());
            let in_payload = k.signal
                || def
                    .messages
                    .get(&k.name)
                    .is_some_and(|m| m.payload.iter().any(|p| p == name));
            if !fits || !in_payload {
                return Err(format!(
                    "the kept {what} '{}' carries variable '{name}', which it may not set",
                    k.name
                ));
            }
        }
        if inst.status != Status::Running {
            continue;
        }
        let is = |t: &crate::def::events::Trigger| t.is(k.signal, &k.name);
        let catch = inst.tokens.iter().any(|t| {
            t.state == TokenState::Waiting
                && matches!(&def.nodes[t.node.index()].behaviour, Behaviour::Catch(c) if is(c))
        });
        let boundary = inst.tasks.iter().filter(|t| t.is_open()).any(|t| {
            def.nodes[t.node.index()]
                .boundary
                .iter()
                .any(|b| matches!(&b.on, crate::def::events::BoundaryOn::Event(e) if is(e)))
        });
        if catch || boundary {
            return Err(format!(
                "the kept {what} '{}' has a catch waiting for it",
                k.name
            ));
        }
    }
    Ok(())
}

/// Checks the runs of multi-instance sub-processes (see [`Instance::check`]): every token of a
/// run is inside its sub-process's scope and its item runs; every token inside such a scope is
/// in a run; items of a sub-process run (never wait at a task) and a task's items never run; each
/// run's local variables are its scope's locals; an open task inside such a scope opened in a
/// run underway.
fn check_runs(inst: &Instance, rare: &Rare, def: &ProcessDef) -> Result<(), String> {
    use crate::def::Behaviour;
    let scope_of = |n: NodeId| {
        def.nodes[n.index()]
            .parent
            .and_then(|p| def.scopes.iter().find(|s| s.node == p && s.multi))
    };
    let running = |node: NodeId, item: u32| {
        rare.multi
            .iter()
            .any(|m| m.node == node && m.state.get(item as usize) == Some(&ItemState::Running))
    };
    for t in &inst.tokens {
        let id = &def.nodes[t.node.index()].id;
        match (scope_of(t.node), t.run) {
            (None, 0) => {}
            (None, run) => {
                return Err(format!(
                    "a token at '{id}' is in run {run}, but '{id}' is in no multi-instance sub-process"
                ));
            }
            (Some(s), 0) => {
                return Err(format!(
                    "a token at '{id}' is inside multi-instance sub-process '{}' but in none of its runs",
                    def.nodes[s.node.index()].id
                ));
            }
            (Some(s), run) if !running(s.node, u32::from(run) - 1) => {
                return Err(format!(
                    "a token at '{id}' is in run {run} of '{}', whose item does not run",
                    def.nodes[s.node.index()].id
                ));
            }
            _ => {}
        }
    }
    for m in &rare.multi {
        let subprocess = matches!(
            def.nodes.get(m.node.index()).map(|n| &n.behaviour),
            Some(Behaviour::Subprocess { .. })
        );
        let wrong = m.state.iter().any(|s| match s {
            ItemState::Open(_) => subprocess,
            ItemState::Running => !subprocess,
            _ => false,
        });
        if wrong {
            return Err(format!(
                "an item of '{}' is in a state its node does not have (a task's items wait at tasks, a sub-process's run)",
                def.nodes[m.node.index()].id
            ));
        }
    }
    for r in &rare.run_vars {
        let scope = def.scopes.iter().find(|s| s.node == r.node && s.multi);
        let Some(scope) = scope.filter(|_| running(r.node, r.item)) else {
            return Err(format!(
                "local variables are kept for item {} of node {}, which runs no item",
                r.item,
                r.node.index()
            ));
        };
        if let Some((name, _)) = r.vars.iter().find(|(n, _)| !scope.locals.contains(n)) {
            return Err(format!(
                "a run of '{}' keeps variable '{name}', which is not one of its locals",
                def.nodes[r.node.index()].id
            ));
        }
    }
    for task in inst.tasks.iter().filter(|t| t.is_open()) {
        let Some(s) = scope_of(task.node) else {
            continue;
        };
        let run = inst.task_run(task.seq);
        let waits = run != 0
            && inst
                .tokens
                .iter()
                .any(|t| t.node == task.node && t.run == run && t.state == TokenState::Waiting);
        if !waits {
            return Err(format!(
                "task {} inside multi-instance sub-process '{}' is open but no token of its run waits for it",
                task.seq,
                def.nodes[s.node.index()].id
            ));
        }
    }
    Ok(())
}

fn check_looping(inst: &Instance, rare: &Rare, def: &ProcessDef) -> Result<(), String> {
    let node_of = |n: NodeId| def.nodes.get(n.index());
    for m in &rare.multi {
        let Some(node) = node_of(m.node).filter(|n| n.for_each().is_some()) else {
            return Err(format!(
                "multi-instance state names node {}, which is not a multi-instance task",
                m.node.index()
            ));
        };
        if m.outputs.len() != m.items.len() || m.state.len() != m.items.len() {
            return Err(format!(
                "the multi-instance state of '{}' has items, outputs and states of different lengths",
                node.id
            ));
        }
        let done = m.state.iter().filter(|s| **s == ItemState::Done).count();
        if done != m.completed as usize {
            return Err(format!(
                "the multi-instance state of '{}' counts {} completed items, not {done}",
                node.id, m.completed
            ));
        }
        for s in &m.state {
            if let ItemState::Open(t) = s
                && !inst
                    .tasks
                    .get(*t as usize)
                    .is_some_and(|k| k.node == m.node && k.is_open())
            {
                return Err(format!(
                    "an item of '{}' waits at task {t}, which is not open there",
                    node.id
                ));
            }
        }
        if !m.detached && !inst.tokens.iter().any(|t| t.node == m.node) {
            return Err(format!(
                "the multi-instance activity at '{}' has no token",
                node.id
            ));
        }
    }
    for (task, _) in &rare.item_tasks {
        if *task as usize >= inst.tasks.len() {
            return Err(format!("an item names task {task}, which does not exist"));
        }
    }
    // Every open task of a multi-instance task is an item that waits for it.
    for task in inst.tasks.iter().filter(|t| t.is_open()) {
        let Some(node) = node_of(task.node).filter(|n| n.for_each().is_some()) else {
            continue;
        };
        let item = rare
            .item_tasks
            .iter()
            .find(|(t, _)| *t == task.seq)
            .map(|(_, item)| *item as usize);
        let waits = item.is_some_and(|item| {
            rare.multi.iter().any(|m| {
                m.node == task.node && m.state.get(item) == Some(&ItemState::Open(task.seq))
            })
        });
        if !waits {
            return Err(format!(
                "task {} at multi-instance task '{}' is open but no item waits for it",
                task.seq, node.id
            ));
        }
    }
    for (n, runs) in &rare.loops {
        match node_of(*n).and_then(|node| node.max_iterations()) {
            Some(max) if *runs >= 1 && *runs <= max => {}
            _ => {
                return Err(format!(
                    "a loop names node {} with {runs} runs, which its definition does not allow",
                    n.index()
                ));
            }
        }
        // A repeated sub-process's loop is underway only while its token waits there (or
        // failed there, evaluating `until`).
        let waits = inst
            .tokens
            .iter()
            .any(|t| t.node == *n && matches!(t.state, TokenState::Waiting | TokenState::Failed));
        match node_of(*n).map(|node| &node.behaviour) {
            Some(crate::def::Behaviour::Subprocess { .. }) if !waits => {
                return Err(format!(
                    "a loop of sub-process node {} is underway but no token waits there",
                    n.index()
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    use super::*;

    /// Multi-instance and loop state lives in `Rare`: the common token, task and instance keep
    /// their sizes (a waiting instance stays under 512 bytes).
    #[test]
    fn common_state_keeps_its_size() {
        assert_eq!(std::mem::size_of::<Token>(), 8);
        assert_eq!(std::mem::size_of::<SmallVec<[Token; 1]>>(), 24);
        assert_eq!(std::mem::size_of::<Task>(), 72);
        assert_eq!(std::mem::size_of::<Instance>(), 176);
        assert_eq!(std::mem::size_of::<ItemState>(), 8);
        // Every audit record is as large as the largest entry: a large one is boxed.
        assert_eq!(std::mem::size_of::<Record>(), 48);
    }
}
