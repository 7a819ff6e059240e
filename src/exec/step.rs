//! Stepping one instance: the run-to-completion loop and [`Step::apply`], the one place where
//! instance state changes.
//!
//! **Invariant:** nothing outside [`Step::apply`] writes to an [`Instance`]; each change writes
//! its audit record and emits its events there, so a store can later persist changes at this
//! one seam.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};

use super::deploy::Deployed;
use super::error::ExecError;

use crate::def::Behaviour;
use crate::def::events::{BoundaryOn, Trigger};
use crate::hooks::{Completing, Control, Hook, ServiceCall};
use crate::ids::{ActorId, NodeId, RoleId, TaskId};
use crate::model::{
    Comment, Entry, Event, FollowUp, Incident, Instance, Pending, Record, SentBack, Status, Task,
    TaskState, Timer, TimerKind, Token, TokenState,
};
use crate::raci::Action;
use crate::vars::Vars;

/// A change to an instance.
pub(crate) enum Change<'c> {
    Started,
    /// A token moves along a flow; `token: None` makes a new token (a fork's extra branch).
    Flow {
        token: Option<usize>,
        from: NodeId,
        to: NodeId,
        actor: Option<&'c ActorId>,
    },
    Route {
        gateway: NodeId,
        to: NodeId,
        route: Option<u32>,
    },
    /// A token arrives at a join and waits there (it is absorbed into the join's count).
    Arrive {
        token: usize,
    },
    Joined {
        join: NodeId,
    },
    End {
        token: usize,
    },
    OpenTask {
        token: usize,
    },
    Claim {
        task: u32,
        actor: &'c ActorId,
    },
    Complete {
        task: u32,
        actor: &'c ActorId,
        overridden: bool,
        output: Vars,
        /// The role acted in (its catalogue position).
        role: Option<u16>,
    },
    Reassign {
        task: u32,
        by: &'c ActorId,
        to: &'c ActorId,
    },
    Comment {
        task: u32,
        actor: &'c ActorId,
        text: &'c str,
    },
    Denied {
        task: u32,
        actor: &'c ActorId,
        action: Action,
        allowed: &'c [RoleId],
    },
    Vetoed {
        task: u32,
        actor: &'c ActorId,
        reason: &'c str,
    },
    SetVars(Vars),
    Fail {
        token: Option<usize>,
        node: Option<NodeId>,
        message: &'c str,
    },
    Retry,
    Finish,
    /// Arms timers.
    Arm(&'c [Timer]),
    /// A token waits at a timer node until `at` (provisional: see [`Timer::provisional`]).
    Wait {
        token: usize,
        at: DateTime<Utc>,
        provisional: bool,
    },
    /// Fires the armed timer at `index`.
    Fire {
        index: usize,
        recipients: &'c [RoleId],
    },
    /// A calendar warning (a computation ran past the years a calendar covers).
    Warn {
        message: &'c str,
    },
    /// The armed timer at `index` fires at `at` instead (its calendar was replaced).
    Retime {
        index: usize,
        at: DateTime<Utc>,
        provisional: bool,
    },
    /// Token `token` is withdrawn: it leaves, its open task is cancelled and the timers of the
    /// task or of its wait are dropped. Apply to the highest index first when withdrawing
    /// several (the last token takes the removed one's place).
    Withdraw {
        token: usize,
    },
    /// Task `task`'s case goes back to the earlier user task `to` (退回): every token after `to`
    /// is withdrawn (see `rework.rs`), and a ready token is placed at `to` (the caller runs it,
    /// which opens the task again).
    SendBack {
        task: u32,
        to: NodeId,
        actor: &'c ActorId,
        reason: &'c str,
    },
    /// The follow-ups numbered `seqs` ran: they leave the outbox.
    Done {
        seqs: &'c [u64],
    },
    /// The instance is cancelled (its tokens were withdrawn first): its timers are dropped and
    /// `informed` roles are told through the outbox.
    Cancel {
        actor: &'c ActorId,
        reason: &'c str,
        informed: &'c [RoleId],
    },
    /// An actor without the accountable role tried to cancel the instance.
    CancelDenied {
        actor: &'c ActorId,
        allowed: &'c [RoleId],
    },
    /// A token reached the terminating end `node` (the other tokens are withdrawn next).
    Terminate {
        node: NodeId,
    },
    /// A token entered `node`, whose cancel region is withdrawn next.
    RegionCancelled {
        node: NodeId,
    },
    /// An inclusive join fires: its joined tokens become one, ready to leave it.
    OrJoined {
        join: NodeId,
    },
    /// A partial join fired without cancelling the rest: `left` late branches are to be
    /// absorbed.
    Absorbing {
        join: NodeId,
        left: u32,
    },
    /// Token `token` is a late branch at a partial join that fired: it is absorbed.
    Absorb {
        token: usize,
    },
    /// Token `token` waits at a catch node for its message or signal.
    Await {
        token: usize,
    },
    /// A catch node (`token` waiting there: it becomes ready) or an open task's boundary event
    /// (`token: None`) at `node` received a message or signal.
    Caught {
        token: Option<usize>,
        node: NodeId,
        trigger: &'c Trigger,
    },
    /// Race `gateway` is decided for its target `node` (the losers were withdrawn).
    RaceWon {
        gateway: NodeId,
        node: NodeId,
    },
    /// Boundary event `index` of open task `task` fires: an interrupting one ends the task
    /// (cancelled, or timed out for a timer) and readies its token.
    Boundary {
        task: u32,
        index: u8,
    },
    /// Multi-instance and loop state (see `multi.rs`).
    Looping(super::multi::LoopChange),
    /// Persistent triggers kept and consumed (see `kept.rs`).
    Kept(super::kept::KeptChange<'c>),
    /// Embedded sub-process scopes (see `scope.rs`).
    Scope(super::scope::ScopeChange),
    /// Messages between processes: sent, delivered, received (see `correlate.rs`).
    Between(Box<super::correlate::BetweenChange>),
    /// A service task waits for its awaiting handler (see `awaiting.rs`).
    Awaiting(super::awaiting::AwaitChange),
    /// Allocation and the organisation's refusals (see `allot.rs`).
    Org(super::allot::OrgChange<'c>),
    /// Call activities (see `call.rs`).
    Call(super::call::CallChange),
    /// Allocation and the work-item lifecycle (see `lifecycle.rs`).
    Life(super::lifecycle::LifeChange<'c>),
}

/// One engine call's work on one locked instance.
pub(crate) struct Step<'a> {
    pub(crate) inst: &'a mut Instance,
    pub(crate) dep: &'a Deployed,
    pub(crate) hooks: &'a [Arc<dyn Hook>],
    pub(crate) now: DateTime<Utc>,
    pub(crate) audit: bool,
    /// The events of this call, for the hooks after its commit (only collected when there are
    /// hooks).
    pub(crate) events: Vec<Event>,
    /// The earliest timer this call armed, for the engine's schedule (which needs only the
    /// earliest: firing a timer schedules the instance's next one).
    armed: Option<DateTime<Utc>>,
    /// Whether this call applied any change (a store then commits it).
    pub(crate) changed: bool,
    /// The multi-instance item whose task's deadlines are being computed (its task does not
    /// exist yet), so that its durations see the item variable.
    pub(crate) arming_item: Option<u32>,
    /// The engine's organisation, for allocation (`None` without one).
    pub(crate) org: Option<&'a super::allot::OrgCx>,
    /// The business keys this call set, with their values before (see `keys.rs`).
    pub(crate) key_notes: super::keys::KeyNotes,
    /// The run (of a multi-instance sub-process) of the token the run loop runs now: a token a
    /// fork or a join makes (`Flow` without a token) is in it (see `runs.rs`).
    pub(crate) fork_run: u16,
    /// The run whose local variables are in the instance's variables now: (sub-process, item).
    pub(crate) mounted: Option<(NodeId, u32)>,
    /// The engine, for what a step reaches beyond its instance (a call activity reserves its
    /// child's id and reads the called definition).
    pub(crate) engine: Option<&'a super::Engine>,
    /// The kept message this call delivers, on a shared store ([`crate::Commit::takes`]).
    pub(crate) takes: Option<u64>,
}

impl<'a> Step<'a> {
    pub(crate) fn new(
        inst: &'a mut Instance,
        dep: &'a Deployed,
        hooks: &'a [Arc<dyn Hook>],
        now: DateTime<Utc>,
        audit: bool,
    ) -> Step<'a> {
        Step {
            inst,
            dep,
            hooks,
            now,
            audit,
            events: Vec::new(),
            armed: None,
            changed: false,
            arming_item: None,
            org: None,
            key_notes: Vec::new(),
            fork_run: 0,
            mounted: None,
            engine: None,
            takes: None,
        }
    }

    /// The earliest timer this call armed.
    pub(crate) fn take_armed(&mut self) -> Option<DateTime<Utc>> {
        self.armed.take()
    }

    pub(super) fn node_name(&self, node: NodeId) -> &'a str {
        let dep: &'a Deployed = self.dep;
        &dep.def.nodes[node.index()].id
    }

    /// A node's YAML id as events carry it.
    pub(super) fn name(&self, node: NodeId) -> Arc<str> {
        Arc::clone(&self.dep.names[node.index()])
    }

    /// Whether anyone hears events: when not, none are built.
    pub(super) fn heard(&self) -> bool {
        !self.hooks.is_empty()
    }

    pub(super) fn task_id(&self, seq: u32) -> TaskId {
        TaskId {
            instance: self.inst.id,
            seq,
        }
    }

    /// Appends an audit record (when audit is on). Inlined, and the record is built only after
    /// the vector has room, so it is written in place: building it first and then copying it in
    /// stalled on reloading the just-written bytes (perf put 42% of a linear run there).
    ///
    /// A full trail grows to what the definition's last completed instance wrote (when that is
    /// more than doubling gives), so that a trail is moved once or twice in its life, not at
    /// every doubling.
    #[inline(always)]
    pub(super) fn record(&mut self, what: Entry) {
        if self.audit {
            let at = self.now;
            let audit = &mut self.inst.audit;
            if audit.len() == audit.capacity() {
                let hint = self.dep.last_records.load(Ordering::Relaxed);
                audit.reserve_exact(audit.len().max(3).max(hint.saturating_sub(audit.len())));
            }
            audit.push(Record { at, what });
        }
    }

    /// Makes room in the audit trail for `n` more records at once (when audit is on), so that a
    /// call that writes several (a race decided: caught, withdrawn, won, moved on, the next task
    /// opened) moves the trail once, not at each doubling.
    pub(crate) fn room(&mut self, n: usize) {
        if self.audit {
            let hint = self.dep.last_records.load(Ordering::Relaxed);
            let audit = &mut self.inst.audit;
            if audit.capacity() - audit.len() < n {
                audit.reserve_exact(n.max(hint.saturating_sub(audit.len())));
            }
        }
    }

    /// Keeps an event for the hooks, which hear it after the commit.
    pub(super) fn emit(&mut self, event: Event) {
        if self.heard() {
            self.events.push(event);
        }
    }

    /// Leaves a follow-up in the instance's outbox, committed with this call's change.
    pub(super) fn follow(&mut self, what: FollowUp) {
        let outbox = &mut self.inst.rare_mut().outbox;
        outbox.pending.push(Pending {
            seq: outbox.next,
            what,
        });
        outbox.next += 1;
    }

    /// Asks every hook whether a completion may go ahead. Nothing changes here.
    /// A veto answers `Err(Control::Veto)`; a failing or panicking hook `Err(Control::Abort)`.
    pub(crate) fn guard(&self, completing: &Completing<'_>) -> Result<(), Control> {
        for hook in self.hooks {
            match catch_unwind(AssertUnwindSafe(|| hook.on_completing(completing))) {
                Ok(Control::Continue) => {}
                Ok(refusal) => return Err(refusal),
                Err(panic) => {
                    return Err(Control::Abort(format!(
                        "hook panicked: {}",
                        panic_message(&panic)
                    )));
                }
            }
        }
        Ok(())
    }

    /// Applies one change: updates the state, writes the audit record, emits the events.
    pub(crate) fn apply(&mut self, change: Change<'_>) {
        self.changed = true;
        let id = self.inst.id;
        match change {
            Change::Started => {
                self.record(Entry::Started);
                if self.heard() {
                    let def = self.dep.def.key.clone();
                    self.emit(Event::InstanceStarted { instance: id, def });
                }
            }
            Change::Flow {
                token,
                from,
                to,
                actor,
            } => {
                match token {
                    // The token stays in its run (of a multi-instance sub-process), if any.
                    Some(i) => {
                        let t = &mut self.inst.tokens[i];
                        t.node = to;
                        t.state = TokenState::Ready;
                    }
                    None => self.inst.tokens.push(Token {
                        node: to,
                        state: TokenState::Ready,
                        run: self.fork_run,
                    }),
                }
                self.record(Entry::Transition {
                    from,
                    to,
                    actor: actor.cloned(),
                });
                if self.heard() {
                    self.emit(Event::NodeLeft {
                        instance: id,
                        node: self.name(from),
                    });
                    self.emit(Event::NodeEntered {
                        instance: id,
                        node: self.name(to),
                    });
                }
            }
            Change::Route { gateway, to, route } => {
                self.record(Entry::Route { gateway, to, route });
            }
            Change::Arrive { token } => self.inst.tokens[token].state = TokenState::Joined,
            Change::Joined { join } => {
                // Only the branches of the run being joined (0 outside multi-instance runs).
                let run = self.fork_run;
                self.inst
                    .tokens
                    .retain(|t| !(t.node == join && t.state == TokenState::Joined && t.run == run));
                self.record(Entry::Joined { node: join });
            }
            Change::End { token } => {
                let node = self.inst.tokens.swap_remove(token).node;
                if self.heard() {
                    self.emit(Event::NodeLeft {
                        instance: id,
                        node: self.name(node),
                    });
                }
            }
            Change::OpenTask { token } => {
                let node = self.inst.tokens[token].node;
                self.inst.tokens[token].state = TokenState::Waiting;
                let seq = self.inst.tasks.len() as u32;
                let now = self.now;
                push_small(&mut self.inst.tasks, 1, || Task {
                    seq,
                    node,
                    state: TaskState::Open,
                    claimed_by: None,
                    created_at: now,
                    escalated_to: None,
                    comments: Box::default(),
                });
                let task = self.task_id(seq);
                if self.dep.def.multi_scopes && self.inst.tokens[token].run != 0 {
                    let run = self.inst.tokens[token].run;
                    self.note_run_task(seq, run);
                }
                self.record(Entry::TaskCreated { task: seq, node });
                if self.heard() {
                    let responsible = self.dep.def.nodes[node.index()]
                        .raci()
                        .map_or(&[][..], |r| r.responsible())
                        .to_vec();
                    self.emit(Event::TaskCreated {
                        task,
                        node: self.name(node),
                        responsible,
                    });
                }
            }
            Change::Claim { task, actor } => {
                self.inst.tasks[task as usize].claimed_by = Some(actor.clone());
                // A claimed task's claim deadline is met.
                if self
                    .inst
                    .timers
                    .iter()
                    .any(|t| t.task == Some(task) && t.kind == TimerKind::ClaimDue)
                {
                    self.inst
                        .timers
                        .retain(|t| !(t.task == Some(task) && t.kind == TimerKind::ClaimDue));
                }
                self.record(Entry::Claimed {
                    task,
                    actor: actor.clone(),
                });
                if self.heard() {
                    let (t, node) = (self.task_id(task), self.task_name(task));
                    self.emit(Event::TaskClaimed {
                        task: t,
                        node,
                        actor: actor.clone(),
                    });
                }
            }
            Change::Complete {
                task,
                actor,
                overridden,
                output,
                role,
            } => {
                if output.is_empty() {
                    // As for a service task's empty result (see `run`): an empty map owns no
                    // memory, and dropping it walks a B-tree iterator.
                    std::mem::forget(output);
                } else {
                    if !self.dep.def.keys.is_empty() {
                        self.note_keys(&output);
                    }
                    self.inst.vars.extend(output);
                }
                self.disarm(task);
                let by = actor.clone();
                let slot = &mut self.inst.tasks[task as usize];
                slot.state = TaskState::Completed { by, at: self.now };
                let node_id = slot.node;
                // A multi-instance item's task leaves its activity's token waiting.
                let multi = self.dep.def.nodes[node_id.index()].for_each().is_some();
                // Inside a run of a multi-instance sub-process: the token of the task's run.
                let run = if self.dep.def.multi_scopes {
                    self.inst.task_run(task)
                } else {
                    0
                };
                if let Some(i) = self.inst.tokens.iter().position(|t| {
                    !multi && t.node == node_id && t.state == TokenState::Waiting && t.run == run
                }) {
                    self.inst.tokens[i].state = TokenState::Ready;
                }
                self.record(Entry::Completed {
                    task,
                    actor: actor.clone(),
                    overridden,
                    role,
                });
                if self.heard() {
                    let t = self.task_id(task);
                    self.emit(Event::TaskCompleted {
                        task: t,
                        node: self.task_name(task),
                        actor: actor.clone(),
                        overridden,
                    });
                    let dep: &'a Deployed = self.dep;
                    if let Some(raci) = dep.def.nodes[node_id.index()].raci() {
                        for role in raci.informed() {
                            self.follow(FollowUp::Notify {
                                task: t,
                                node: node_id,
                                role: role.clone(),
                                actor: actor.clone(),
                            });
                        }
                    }
                }
            }
            Change::SetVars(vars) => {
                if !self.dep.def.keys.is_empty() {
                    self.note_keys(&vars);
                }
                self.inst.vars.extend(vars)
            }
            Change::Finish => {
                self.inst.timers = Vec::new();
                self.inst.status = Status::Completed;
                self.inst.ended_at = Some(self.now);
                self.record(Entry::InstanceCompleted);
                // Raised to a longer trail, lowered only to one under half as long: written
                // seldom, so that threads completing instances of one definition (whose routes
                // write more or fewer records) do not fight over the cache line.
                let records = self.inst.audit.len().min(super::deploy::MAX_RECORDS_HINT);
                let hint = self.dep.last_records.load(Ordering::Relaxed);
                if self.audit && (records > hint || records < hint / 2) {
                    self.dep.last_records.store(records, Ordering::Relaxed);
                }
                self.emit(Event::InstanceCompleted { instance: id });
                // A child tells its parent (see `call.rs`).
                if self.inst.rare.is_some() {
                    self.child_finished();
                }
            }
            Change::Arm(new) => {
                if let Some(first) = new.iter().map(|t| t.at).min() {
                    self.armed = Some(self.armed.map_or(first, |a| a.min(first)));
                }
                if let Some(t) = new.iter().find(|t| t.provisional) {
                    let (task, sla) = (t.task, t.sla);
                    self.record(Entry::Provisional { task, sla });
                }
                self.inst.timers.extend_from_slice(new);
            }
            Change::Wait {
                token,
                at,
                provisional,
            } => {
                let node = self.inst.tokens[token].node;
                self.inst.tokens[token].state = TokenState::Waiting;
                let timer = Timer {
                    at,
                    kind: TimerKind::Wait,
                    task: None,
                    node,
                    sla: false,
                    business: false,
                    fired: false,
                    provisional,
                };
                self.apply(Change::Arm(&[timer]));
            }
            Change::Looping(change) => self.apply_loop(change),
            Change::Kept(change) => self.apply_kept(change),
            Change::Scope(change) => self.apply_scope(change),
            Change::Between(change) => self.apply_between(*change),
            Change::Org(change) => self.apply_org(change),
            Change::Call(change) => self.apply_call(change),
            Change::Life(change) => self.apply_life(change),
            Change::Awaiting(change) => self.apply_awaiting(change),
            // The rare changes (task chores, failures, timers firing, withdrawals, cancellation,
            // joins, send back, events) apply in a function of their own: with them here the
            // compiler stopped inlining the audit trail's `push` into `apply`, and the record was
            // built on the stack and copied (linear fell from 37.8 M to 33.4 M transitions/s).
            change @ (Change::Reassign { .. }
            | Change::Comment { .. }
            | Change::Denied { .. }
            | Change::Vetoed { .. }
            | Change::Fail { .. }
            | Change::Retry
            | Change::Fire { .. }
            | Change::Warn { .. }
            | Change::Retime { .. }
            | Change::Withdraw { .. }
            | Change::Done { .. }
            | Change::Cancel { .. }
            | Change::SendBack { .. }
            | Change::Await { .. }
            | Change::Caught { .. }
            | Change::RaceWon { .. }
            | Change::Boundary { .. }
            | Change::CancelDenied { .. }
            | Change::Terminate { .. }
            | Change::RegionCancelled { .. }
            | Change::OrJoined { .. }
            | Change::Absorbing { .. }
            | Change::Absorb { .. }) => self.apply_control(change),
        }
    }

    /// [`Step::apply`] for the rare changes: cancellation and the joins (see `control.rs`), send
    /// back (`rework.rs`), messages, signals, races and boundary events (`events.rs`).
    #[cold]
    #[inline(never)]
    fn apply_control(&mut self, change: Change<'_>) {
        let id = self.inst.id;
        match change {
            Change::Cancel {
                actor,
                reason,
                informed,
            } => {
                self.inst.timers = Vec::new();
                self.inst.status = Status::Cancelled;
                self.inst.ended_at = Some(self.now);
                self.record(Entry::Cancelled {
                    actor: actor.clone(),
                    reason: Box::from(reason),
                });
                self.child_failed(&format!("cancelled by {actor}: {reason}"));
                if self.heard() {
                    self.emit(Event::InstanceCancelled {
                        instance: id,
                        actor: actor.clone(),
                        reason: reason.to_owned(),
                    });
                    for role in informed {
                        self.follow(FollowUp::CancelNotice {
                            role: role.clone(),
                            actor: actor.clone(),
                            reason: reason.to_owned(),
                        });
                    }
                }
            }
            Change::CancelDenied { actor, allowed } => {
                self.record(Entry::CancelDenied {
                    actor: actor.clone(),
                    allowed: allowed.into(),
                });
                self.emit(Event::CancelDenied {
                    instance: id,
                    actor: actor.clone(),
                    allowed: allowed.to_vec(),
                });
            }
            Change::Terminate { node } => self.record(Entry::Terminated { node }),
            Change::RegionCancelled { node } => self.record(Entry::RegionCancelled { node }),
            Change::OrJoined { join } => {
                let mut first = true;
                self.inst.tokens.retain(|t| {
                    if t.node == join && t.state == TokenState::Joined {
                        if first {
                            first = false;
                            t.state = TokenState::Ready;
                            return true;
                        }
                        return false;
                    }
                    true
                });
                self.record(Entry::Joined { node: join });
            }
            Change::Absorbing { join, left } => {
                self.inst
                    .rare_mut()
                    .absorbing
                    .push(crate::model::Absorbing { node: join, left });
            }
            Change::Absorb { token } => {
                let node = self.inst.tokens.swap_remove(token).node;
                if let Some(rare) = self.inst.rare.as_deref_mut()
                    && let Some(k) = rare.absorbing.iter().position(|a| a.node == node)
                {
                    rare.absorbing[k].left = rare.absorbing[k].left.saturating_sub(1);
                    if rare.absorbing[k].left == 0 {
                        rare.absorbing.swap_remove(k);
                    }
                }
                self.record(Entry::Absorbed { node });
                if self.heard() {
                    self.emit(Event::NodeLeft {
                        instance: id,
                        node: self.name(node),
                    });
                }
            }
            Change::SendBack {
                task,
                to,
                actor,
                reason,
            } => {
                let from = self.inst.tasks[task as usize].node;
                self.record(Entry::SentBack(Box::new(SentBack {
                    task,
                    from,
                    to,
                    actor: actor.clone(),
                    reason: Box::from(reason),
                })));
                if self.heard() {
                    let (t, node, target) = (self.task_id(task), self.name(from), self.name(to));
                    self.emit(Event::TaskSentBack {
                        task: t,
                        node,
                        to: target,
                        actor: actor.clone(),
                        reason: reason.to_owned(),
                    });
                }
                // Highest index first: a withdrawal moves the last token into the freed place.
                for token in super::rework::withdrawn(&self.dep.def, &self.inst.tokens, to)
                    .into_iter()
                    .rev()
                {
                    self.apply(Change::Withdraw { token });
                }
                self.inst.tokens.push(Token {
                    node: to,
                    state: TokenState::Ready,
                    run: 0,
                });
                if self.heard() {
                    self.emit(Event::NodeEntered {
                        instance: id,
                        node: self.name(to),
                    });
                }
            }
            Change::Await { token } => self.inst.tokens[token].state = TokenState::Waiting,
            Change::Caught {
                token,
                node,
                trigger,
            } => {
                if let Some(i) = token {
                    self.inst.tokens[i].state = TokenState::Ready;
                }
                match trigger {
                    Trigger::Message(m) => self.record(Entry::MessageCaught {
                        node,
                        message: Box::from(m.as_str()),
                    }),
                    Trigger::Signal(s) => self.record(Entry::SignalCaught {
                        node,
                        signal: Box::from(s.as_str()),
                    }),
                }
                if self.heard() {
                    let node = self.name(node);
                    self.emit(match trigger {
                        Trigger::Message(m) => Event::MessageCaught {
                            instance: id,
                            node,
                            message: m.clone(),
                        },
                        Trigger::Signal(s) => Event::SignalCaught {
                            instance: id,
                            node,
                            signal: s.clone(),
                        },
                    });
                }
            }
            Change::RaceWon { gateway, node } => {
                self.record(Entry::RaceWon { gateway, node });
                if self.heard() {
                    let (gateway, node) = (self.name(gateway), self.name(node));
                    self.emit(Event::RaceWon {
                        instance: id,
                        gateway,
                        node,
                    });
                }
            }
            Change::Boundary { task, index } => {
                let dep: &'a Deployed = self.dep;
                let node = self.inst.tasks[task as usize].node;
                let Some(b) = dep.def.nodes[node.index()].boundary.get(index as usize) else {
                    return;
                };
                let timer = matches!(b.on, BoundaryOn::Timer(_));
                if b.interrupting {
                    self.inst.tasks[task as usize].state = if timer {
                        TaskState::TimedOut { at: self.now }
                    } else {
                        TaskState::Cancelled { at: self.now }
                    };
                    self.disarm(task);
                    self.wake(node);
                }
                self.record(Entry::Boundary {
                    task,
                    node,
                    index: u32::from(index),
                    interrupting: b.interrupting,
                });
                if self.heard() {
                    let (t, name) = (self.task_id(task), self.name(node));
                    if b.interrupting && !timer {
                        self.emit(Event::TaskCancelled {
                            task: t,
                            node: Arc::clone(&name),
                        });
                    }
                    self.emit(Event::BoundaryFired {
                        task: t,
                        node: name,
                        to: self.name(b.to),
                        interrupting: b.interrupting,
                    });
                }
            }
            Change::Reassign { task, by, to } => {
                let (by, to) = (by.clone(), to.clone());
                self.inst.tasks[task as usize].claimed_by = Some(to.clone());
                // An accountable's reassignment moves the task's assignment (`assign:`) too.
                super::lifecycle::reassigned(self.inst, task, &to);
                self.record(Entry::Reassigned {
                    task,
                    by: by.clone(),
                    to: to.clone(),
                });
                if self.heard() {
                    let (t, node) = (self.task_id(task), self.task_name(task));
                    self.emit(Event::TaskReassigned {
                        task: t,
                        node,
                        by,
                        to,
                    });
                }
            }
            Change::Comment { task, actor, text } => {
                let comments = &mut self.inst.tasks[task as usize].comments;
                let mut all = std::mem::take(comments).into_vec();
                all.push(Comment {
                    actor: actor.to_string(),
                    at: self.now,
                    text: text.to_owned(),
                });
                *comments = all.into_boxed_slice();
                let actor = actor.clone();
                self.record(Entry::Commented {
                    task,
                    actor: actor.clone(),
                });
                if self.heard() {
                    let (t, node) = (self.task_id(task), self.task_name(task));
                    self.emit(Event::TaskCommented {
                        task: t,
                        node,
                        actor,
                        text: text.to_owned(),
                    });
                }
            }
            Change::Denied {
                task,
                actor,
                action,
                allowed,
            } => {
                let actor = actor.clone();
                self.record(Entry::Denied {
                    task,
                    actor: actor.clone(),
                    action,
                    allowed: allowed.into(),
                });
                if self.heard() {
                    let (t, node) = (self.task_id(task), self.task_name(task));
                    self.emit(Event::AccessDenied {
                        task: t,
                        node,
                        actor,
                        action,
                        allowed: allowed.to_vec(),
                    });
                }
            }
            Change::Vetoed {
                task,
                actor,
                reason,
            } => {
                self.record(Entry::Vetoed {
                    task,
                    actor: actor.clone(),
                    reason: Box::from(reason),
                });
            }
            Change::Fail {
                token,
                node,
                message,
            } => {
                if let Some(i) = token {
                    self.inst.tokens[i].state = TokenState::Failed;
                }
                self.inst.rare_mut().incidents.push(Incident {
                    node,
                    message: message.to_owned(),
                    at: self.now,
                    resolved: false,
                });
                self.record(Entry::Incident {
                    node,
                    message: Box::from(message),
                });
                self.child_failed(message);
                if self.heard() {
                    let node = node.map(|n| self.name(n));
                    self.emit(Event::Incident {
                        instance: id,
                        node,
                        message: message.to_owned(),
                    });
                }
            }
            Change::Retry => {
                for t in &mut self.inst.tokens {
                    if t.state == TokenState::Failed {
                        t.state = TokenState::Ready;
                    }
                }
                for incident in self.inst.rare_mut().incidents.iter_mut() {
                    incident.resolved = true;
                }
                self.record(Entry::Retried);
                self.child_retried();
            }
            Change::Fire { index, recipients } => {
                let timer = self.inst.timers[index].clone();
                if timer.kind == TimerKind::Due {
                    // A deadline stays, marked, so that SLA queries still know it.
                    self.inst.timers[index].fired = true;
                } else {
                    self.inst.timers.remove(index);
                }
                if let Some(seq) = timer.task {
                    match timer.kind {
                        TimerKind::Timeout => {
                            self.inst.tasks[seq as usize].state =
                                TaskState::TimedOut { at: self.now };
                            self.disarm(seq);
                            self.wake(timer.node);
                        }
                        TimerKind::Escalation { .. } => {
                            if let Some(role) =
                                super::timers::reassign_target(&self.dep.def, &timer)
                            {
                                let index =
                                    self.dep.def.roles.get_index_of(&role).map(|i| i as u16);
                                let task = &mut self.inst.tasks[seq as usize];
                                task.escalated_to = index;
                                task.claimed_by = None;
                                super::lifecycle::undelegate(self.inst, seq);
                            }
                        }
                        _ => {}
                    }
                } else if timer.kind == TimerKind::Wait {
                    self.wake(timer.node);
                }
                self.record(Entry::Timer {
                    kind: timer.kind,
                    task: timer.task,
                    sla: timer.sla,
                });
                if self.heard() {
                    let task = timer.task.map(|seq| self.task_id(seq));
                    self.emit(Event::Timer {
                        instance: id,
                        task,
                        node: self.name(timer.node),
                        kind: timer.kind,
                        sla: timer.sla,
                        recipients: recipients.to_vec(),
                    });
                }
            }
            Change::Warn { message } => self.record(Entry::Warning {
                message: Box::from(message),
            }),
            Change::Retime {
                index,
                at,
                provisional,
            } => {
                self.armed = Some(self.armed.map_or(at, |a| a.min(at)));
                let timer = &mut self.inst.timers[index];
                timer.at = at;
                timer.provisional = provisional;
                let (kind, task, sla) = (timer.kind, timer.task, timer.sla);
                self.record(Entry::Retimed {
                    kind,
                    task,
                    sla,
                    at,
                    provisional,
                });
            }
            Change::Withdraw { token } => {
                // A call's children are cancelled (see `call.rs`).
                let at = self.inst.tokens[token].node;
                if matches!(self.dep.def.nodes[at.index()].behaviour, Behaviour::Call(_)) {
                    self.withdraw_calls(at);
                }
                // A multi-instance activity's items go with its token.
                self.withdraw_items(self.inst.tokens[token].node);
                let t = self.inst.tokens.swap_remove(token);
                let task = (t.state == TokenState::Waiting)
                    .then(|| self.open_task_of(t))
                    .flatten();
                match task {
                    Some(seq) => {
                        self.inst.tasks[seq as usize].state = TaskState::Cancelled { at: self.now };
                        self.disarm(seq);
                    }
                    None => self
                        .inst
                        .timers
                        .retain(|x| !(x.task.is_none() && !x.sla && x.node == t.node)),
                }
                self.record(Entry::Withdrawn { node: t.node, task });
                if self.heard() {
                    if let Some(seq) = task {
                        let (t, node) = (self.task_id(seq), self.task_name(seq));
                        self.emit(Event::TaskCancelled { task: t, node });
                    }
                    self.emit(Event::NodeLeft {
                        instance: id,
                        node: self.name(t.node),
                    });
                }
            }
            Change::Done { seqs } => {
                if let Some(rare) = self.inst.rare.as_deref_mut() {
                    rare.outbox.pending.retain(|p| !seqs.contains(&p.seq));
                }
            }
            _ => {}
        }
    }

    /// Drops the timers of a task that ended.
    fn disarm(&mut self, seq: u32) {
        self.inst.timers.retain(|t| t.task != Some(seq));
        if self.inst.rare.is_some() {
            super::lifecycle::forget(self.inst, seq);
        }
    }

    /// The catalogue position of the accountable role of task `seq`'s node: the role an
    /// override acts in.
    pub(crate) fn accountable_role(&self, seq: u32) -> Option<u16> {
        let node = self.inst.tasks.get(seq as usize)?.node;
        let raci = self.dep.def.nodes.get(node.index())?.raci()?;
        let i = self.dep.def.roles.get_index_of(raci.accountable())?;
        u16::try_from(i).ok()
    }

    /// Completes open task `seq` and moves its token on: as an item of a multi-instance task, into
    /// a repeated task's next round, or along its flow (through `leave`: the task may be a race's
    /// target). The caller checked the task and who completes it (`complete`, `skip`).
    pub(crate) fn finish_task(
        &mut self,
        seq: u32,
        actor: &ActorId,
        overridden: bool,
        output: Vars,
        role: Option<u16>,
    ) -> Result<(), ExecError> {
        let from = self.inst.tasks[seq as usize].node;
        if self.dep.def.nodes[from.index()].for_each().is_some() {
            let done = self.complete_item(seq, actor, overridden, output, role);
            let ran = self.run();
            return done.and(ran);
        }
        // A task in a run of a multi-instance sub-process: its output lands in that run.
        self.mount_task(seq);
        self.apply(Change::Complete {
            task: seq,
            actor,
            overridden,
            output,
            role,
        });
        let to = self.dep.def.nodes[from.index()].next[0];
        if self.dep.def.nodes[from.index()].repeat().is_some()
            && let Some(i) = self
                .inst
                .tokens
                .iter()
                .position(|t| t.node == from && t.state == TokenState::Ready)
        {
            let looped = self.loop_next(i, from, Some(actor));
            let ran = self.run();
            return looped.and(ran);
        }
        // Checked when the instance was read: a waiting task has its token.
        self.leave(from, to, Some(actor));
        self.run()
    }

    /// The open task at `node`, the latest if there are several.
    pub(crate) fn open_task_at(&self, node: NodeId) -> Option<u32> {
        self.inst
            .tasks
            .iter()
            .rev()
            .find(|k| k.node == node && k.is_open())
            .map(|k| k.seq)
    }

    /// The open task token `t` waits at: inside a run of a multi-instance sub-process, its run's.
    fn open_task_of(&self, t: Token) -> Option<u32> {
        if t.run == 0 {
            return self.open_task_at(t.node);
        }
        self.inst
            .tasks
            .iter()
            .rev()
            .find(|k| k.node == t.node && k.is_open() && self.inst.task_run(k.seq) == t.run)
            .map(|k| k.seq)
    }

    /// The token waiting at `node`, if any.
    pub(super) fn waiting_at(&self, node: NodeId) -> Option<usize> {
        self.inst
            .tokens
            .iter()
            .position(|t| t.node == node && t.state == TokenState::Waiting)
    }

    /// Makes the token waiting at `node` ready to leave it.
    fn wake(&mut self, node: NodeId) {
        if let Some(i) = self.waiting_at(node) {
            self.inst.tokens[i].state = TokenState::Ready;
        }
    }

    pub(super) fn task_name(&self, seq: u32) -> Arc<str> {
        self.name(self.inst.tasks[seq as usize].node)
    }

    /// Runs every ready token until each waits at a user task, has ended, or failed; then
    /// completes the instance if no token is left.
    pub(crate) fn run(&mut self) -> Result<(), ExecError> {
        let dep: &'a Deployed = self.dep;
        let def = &*dep.def;
        let mut failure: Option<ExecError> = None;
        // Read once: a definition without any node control never looks at a node's.
        let controlled = def.controlled;
        // Read once: a definition without multi-instance sub-processes never looks at a run.
        let runs = def.multi_scopes;
        // Every ready token runs; when none is left, an inclusive join with nothing left to
        // wait for fires (see `next_ready`).
        while let Some(i) = self.next_ready(&mut failure) {
            if runs {
                self.enter_run_of(i);
            }
            let at = self.inst.tokens[i].node;
            let node = &def.nodes[at.index()];
            // Cancel regions, terminating ends and partial joins (a null pointer for the rest).
            let i = if controlled && let Some(control) = node.control.as_deref() {
                match self.enter_control(i, at, node, control, &mut failure) {
                    Some(i) => i,
                    None => continue,
                }
            } else {
                i
            };
            match &node.behaviour {
                Behaviour::Start => self.apply(Change::Flow {
                    token: Some(i),
                    from: at,
                    to: node.next[0],
                    actor: None,
                }),
                Behaviour::End => self.apply(Change::End { token: i }),
                Behaviour::UserTask(_) if node.for_each().is_some() => {
                    if let Err(e) = self.run_looping(i, at) {
                        failure.get_or_insert(e);
                    }
                }
                Behaviour::UserTask(_) => {
                    // Who it opens for: nobody is an incident, and a retry tries again.
                    let assigned = match def.allocating.then(|| self.allocate(at)) {
                        Some(Err(message)) => {
                            failure.get_or_insert(self.fail_node(i, at, message));
                            continue;
                        }
                        Some(Ok(assigned)) => assigned,
                        None => None,
                    };
                    // The task's deadlines are computed before it opens: one that cannot be
                    // computed fails the node, and a retry (say, after the calendar gained the
                    // year) opens the task again.
                    let mut armed = super::timers::Armed::default();
                    match self.task_timers(at, self.inst.tasks.len() as u32, &mut armed) {
                        Ok(()) if def.auto_allocating && node.allocation().is_some() => {
                            if let Err(e) = self.open_allocated(i, at, &armed) {
                                failure.get_or_insert(e);
                            }
                        }
                        Ok(()) => {
                            self.apply(Change::OpenTask { token: i });
                            if let Some((to, candidates)) = assigned {
                                let task = self.inst.tasks.len() as u32 - 1;
                                self.apply(Change::Life(super::lifecycle::LifeChange::Assign {
                                    task,
                                    to,
                                    candidates,
                                }));
                            }
                            self.arm(&armed);
                        }
                        Err(message) => {
                            failure.get_or_insert(self.fail_deadline(i, at, message));
                        }
                    }
                }
                Behaviour::Timer(wait) => match self.wait_until(wait) {
                    Ok((at, provisional)) => self.apply(Change::Wait {
                        token: i,
                        at,
                        provisional,
                    }),
                    Err(message) => {
                        failure.get_or_insert(self.fail_deadline(i, at, message));
                    }
                },
                // A service task with `for_each` or `repeat` runs in `multi.rs`.
                Behaviour::ServiceTask { .. } if node.looping.is_some() => {
                    if let Err(e) = self.run_looping(i, at) {
                        failure.get_or_insert(e);
                    }
                }
                Behaviour::ServiceTask { .. } => match self.call_service(at) {
                    Ok(vars) => {
                        if vars.is_empty() {
                            // Dropping even an empty `serde_json::Map` walks a B-tree iterator,
                            // which showed in profiles at about 60 instructions per service
                            // call. An empty map owns no memory, so forgetting it leaks nothing.
                            std::mem::forget(vars);
                        } else {
                            self.apply(Change::SetVars(vars));
                        }
                        self.apply(Change::Flow {
                            token: Some(i),
                            from: at,
                            to: node.next[0],
                            actor: None,
                        });
                    }
                    // The handler answers later (see `awaiting.rs`): the token waits.
                    Err(message) if message == super::awaiting::PENDING => {
                        self.apply(Change::Awaiting(super::awaiting::AwaitChange::Wait {
                            token: i,
                            node: at,
                        }))
                    }
                    Err(message) => {
                        failure.get_or_insert(self.fail_node(i, at, message));
                    }
                },
                Behaviour::Exclusive { routes, default } => {
                    let mut chosen = None;
                    let mut error = None;
                    for (n, route) in routes.iter().enumerate() {
                        match route.cond.eval(&def.cel, &self.inst.vars) {
                            Ok(true) => {
                                chosen = Some((route.to, Some(n as u32)));
                                break;
                            }
                            Ok(false) => {}
                            Err(e) => {
                                error = Some(e);
                                break;
                            }
                        }
                    }
                    if error.is_none() && chosen.is_none() {
                        chosen = default.map(|d| (d, None));
                    }
                    match (chosen, error) {
                        (Some((to, route)), None) => {
                            self.apply(Change::Route {
                                gateway: at,
                                to,
                                route,
                            });
                            self.apply(Change::Flow {
                                token: Some(i),
                                from: at,
                                to,
                                actor: None,
                            });
                        }
                        (_, error) => {
                            let message = error.unwrap_or_else(|| {
                                "no route's condition holds and there is no default".into()
                            });
                            failure.get_or_insert(self.fail_node(i, at, message));
                        }
                    }
                }
                Behaviour::Catch(_) => self.apply(Change::Await { token: i }),
                // A race sends a token to each target; the first to leave its node wins
                // (`Step::leave`).
                Behaviour::Race => {
                    let mut token = Some(i);
                    for &to in &node.next {
                        self.apply(Change::Flow {
                            token: token.take(),
                            from: at,
                            to,
                            actor: None,
                        });
                    }
                }
                Behaviour::Parallel => {
                    let mut token = Some(i);
                    if node.incoming > 1 {
                        if self.arrive(i, at) < node.incoming {
                            continue;
                        }
                        self.apply(Change::Joined { join: at });
                        token = None;
                    }
                    for &to in &node.next {
                        self.apply(Change::Flow {
                            token: token.take(),
                            from: at,
                            to,
                            actor: None,
                        });
                    }
                }
                Behaviour::Inclusive { .. } => self.inclusive(i, at, node, &mut failure),
                Behaviour::Subprocess { scope, timeout, .. } => {
                    self.enter_scope(i, at, *scope, timeout.as_ref(), &mut failure)
                }
                Behaviour::Send(message) => self.send(i, at, message),
                Behaviour::Call(_) => {
                    if let Err(e) = self.run_call(i, at) {
                        failure.get_or_insert(e);
                    }
                }
            }
        }
        if runs {
            self.leave_runs();
        }
        if self.pass_milestones() || self.consume_kept() {
            // A task whose milestone passed for good was skipped, or a kept trigger (WCP 24)
            // was caught: run on from it.
            let rest = self.run();
            return failure.map_or(rest, Err);
        }
        // Items running without their token (`wait: false`, WCP 12) keep the instance going.
        if self.inst.tokens.is_empty()
            && self.inst.status == Status::Running
            && !self.inst.has_detached()
        {
            self.apply(Change::Finish);
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Token `i` arrives at the join `at`: gives how many tokens have arrived there.
    pub(super) fn arrive(&mut self, i: usize, at: NodeId) -> u32 {
        self.apply(Change::Arrive { token: i });
        // Only the branches of the token's run (0 outside multi-instance runs).
        let run = self.inst.tokens[i].run;
        self.inst
            .tokens
            .iter()
            .filter(|t| t.node == at && t.state == TokenState::Joined && t.run == run)
            .count() as u32
    }

    /// Marks token `i` (if any) at `at` failed with an incident, and gives the error for the
    /// caller.
    pub(super) fn fail_node(
        &mut self,
        i: impl Into<Option<usize>>,
        at: NodeId,
        message: String,
    ) -> ExecError {
        self.apply(Change::Fail {
            token: i.into(),
            node: Some(at),
            message: &message,
        });
        ExecError::Incident {
            instance: self.inst.id,
            node: self.dep.node(at),
            message,
        }
    }

    /// As [`Step::fail_node`], for a deadline that cannot be computed.
    pub(super) fn fail_deadline(&mut self, i: usize, at: NodeId, message: String) -> ExecError {
        self.apply(Change::Fail {
            token: Some(i),
            node: Some(at),
            message: &format!("cannot compute a deadline: {message}"),
        });
        ExecError::Deadline {
            instance: self.inst.id,
            node: self.dep.node(at),
            message,
        }
    }

    /// Calls a service task's handler and checks what it returns. Always inlined: `run` calls it
    /// on the hot path, and a second caller (a task with `repeat`) must not make it a call.
    #[inline(always)]
    pub(super) fn call_service(&self, at: NodeId) -> Result<Vars, String> {
        let Some(handler) = &self.dep.handlers[at.index()] else {
            return Err("no handler registered".to_owned());
        };
        let call = ServiceCall {
            instance: self.inst.id,
            node: self.node_name(at),
            vars: &self.inst.vars,
            item: None,
            item_index: None,
        };
        let vars = match catch_unwind(AssertUnwindSafe(|| handler.call(&call))) {
            Ok(Ok(vars)) => vars,
            Ok(Err(e)) if e.is_pending() => return Err(super::awaiting::PENDING.to_owned()),
            Ok(Err(e)) => return Err(format!("handler failed: {}", e.describe())),
            Err(panic) => return Err(format!("handler panicked: {}", panic_message(&panic))),
        };
        if vars.is_empty() {
            return Ok(vars);
        }
        let problems = super::check_vars(&self.dep.def, &vars);
        match problems.first() {
            None => Ok(vars),
            Some((name, problem)) => {
                let message = format!("handler returned variable '{name}' that is {problem}");
                drop(crate::vars::Handed::new(vars));
                Err(message)
            }
        }
    }
}

/// Pushes with a growth that starts small: most instances hold a handful of tasks and records,
/// and a waiting instance should not carry a vector's default spare capacity.
///
/// The item is made by `make` after room is made, so that it can be built in place.
#[inline(always)]
fn push_small<T>(v: &mut Vec<T>, first: usize, make: impl FnOnce() -> T) {
    if v.len() == v.capacity() {
        v.reserve_exact(v.len().max(first));
    }
    v.push(make());
}

pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}
