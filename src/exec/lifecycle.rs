//! Allocation at run time and the work-item lifecycle: who a task opens for (`assign:`), the case
//! owner, separation of duties (`four_eyes`), priority, and the calls release, delegate, return,
//! suspend, resume, skip and hand over.
//!
//! **Invariant:** every refusal of an allocation rule or a lifecycle call by someone not allowed
//! to make it writes an [`Entry::Refused`] naming who tried and why, and changes nothing else. A
//! suspended task or instance has no armed timers: they wait in its `Suspension` and are armed
//! again, later by the suspended time (business time on the process calendar for business
//! deadlines), when it resumes.

use chrono::{DateTime, Utc};

use super::step::{Change, Step};
use super::{Engine, ExecError, TaskView, seam::Slot};
use crate::def::assign::{Assign, PRIORITY_VAR};
use crate::hooks::{Completing, Control};
use crate::ids::{ActorId, InstanceId, NodeId, TaskId};
use crate::model::{Call, Entry, Event, Refusal, Status, Task, TaskState, Timer};
use crate::raci::Actor;
use crate::time::duration::{BusinessDuration, DurationSpec};
use crate::vars::Vars;

/// Who a task opens for: the assignee or the candidates (`true`).
pub(crate) type Allocated = (Box<[ActorId]>, bool);

/// What [`Engine::suspend`] and [`Engine::resume`] act on: one task, or a whole instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkItem {
    /// One open task.
    Task(TaskId),
    /// Every task and timer of an instance.
    Instance(InstanceId),
}

impl From<TaskId> for WorkItem {
    fn from(t: TaskId) -> WorkItem {
        WorkItem::Task(t)
    }
}

impl From<InstanceId> for WorkItem {
    fn from(i: InstanceId) -> WorkItem {
        WorkItem::Instance(i)
    }
}

/// How [`Engine::work_list_by`] orders a work list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkOrder {
    /// By deadline (tasks without one last), then age: as [`Engine::work_list`].
    #[default]
    Due,
    /// Highest priority first (tasks without one last), then by deadline.
    Priority,
    /// By the value of an instance variable (numbers numerically, text alphabetically; tasks
    /// whose instance does not set it last), then by deadline.
    Var(String),
}

/// A filtered, ordered work list ([`Engine::work_list_by`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkQuery {
    /// Only tasks of this process (its id). Default: every process.
    pub process: Option<String>,
    /// Only tasks at this node (its YAML id). Default: every node.
    pub node: Option<String>,
    /// Only tasks whose priority is at least this. Default: no bound.
    pub min_priority: Option<i64>,
    /// The order. Default: by deadline.
    pub order: WorkOrder,
}

impl WorkQuery {
    /// A query for every task, by deadline.
    pub fn new() -> WorkQuery {
        WorkQuery::default()
    }

    /// Only tasks of `process`.
    pub fn process(mut self, process: impl Into<String>) -> WorkQuery {
        self.process = Some(process.into());
        self
    }

    /// Only tasks at node `node`.
    pub fn node(mut self, node: impl Into<String>) -> WorkQuery {
        self.node = Some(node.into());
        self
    }

    /// Only tasks of at least `priority`.
    pub fn min_priority(mut self, priority: i64) -> WorkQuery {
        self.min_priority = Some(priority);
        self
    }

    /// Ordered by `order`.
    pub fn order(mut self, order: WorkOrder) -> WorkQuery {
        self.order = order;
        self
    }
}

/// A change of allocation or lifecycle state (see [`Change::Life`]). Large payloads are boxed,
/// to keep [`Change`] as small as it was.
pub(crate) enum LifeChange<'c> {
    /// Task `task` opened for `to` (candidates when `candidates`).
    Assign {
        task: u32,
        to: Box<[ActorId]>,
        candidates: bool,
    },
    Owner {
        owner: &'c ActorId,
        by: Option<&'c ActorId>,
    },
    Release {
        task: u32,
        actor: &'c ActorId,
    },
    Delegate {
        task: u32,
        by: &'c ActorId,
        to: &'c ActorId,
    },
    Return {
        task: u32,
        actor: &'c ActorId,
    },
    Suspend {
        task: Option<u32>,
        actor: &'c ActorId,
    },
    Resume {
        task: Option<u32>,
        actor: &'c ActorId,
    },
    /// Recorded before the task's override completion.
    Skip {
        task: u32,
        actor: &'c ActorId,
        reason: &'c str,
    },
    Refuse(Box<Refusal>),
}

impl Step<'_> {
    /// Applies a [`LifeChange`] (from [`Step::apply`]).
    #[cold]
    #[inline(never)]
    pub(super) fn apply_life(&mut self, change: LifeChange<'_>) {
        self.apply_life_here(change);
        tidy(self.inst);
    }

    fn apply_life_here(&mut self, change: LifeChange<'_>) {
        let id = self.inst.id;
        match change {
            LifeChange::Assign {
                task,
                to,
                candidates,
            } => {
                let rare = self.inst.rare_mut();
                rare.assigned.retain(|a| a.task != task);
                rare.assigned.push(crate::model::Assigned {
                    task,
                    to: to.to_vec(),
                    candidates,
                });
                if self.heard() {
                    let (t, node) = (self.task_id(task), self.task_node_name(task));
                    self.emit(Event::TaskAssigned {
                        task: t,
                        node,
                        to: to.to_vec(),
                    });
                }
                self.record(Entry::Assigned { task, to });
            }
            LifeChange::Owner { owner, by } => {
                self.inst.rare_mut().owner = Some(owner.clone());
                self.record(Entry::OwnerSet {
                    owner: owner.clone(),
                    by: by.cloned(),
                });
                self.emit(Event::OwnerChanged {
                    instance: id,
                    owner: owner.clone(),
                    by: by.cloned(),
                });
            }
            LifeChange::Release { task, actor } => {
                self.inst.tasks[task as usize].claimed_by = None;
                self.record(Entry::Released {
                    task,
                    actor: actor.clone(),
                });
                if self.heard() {
                    let (t, node) = (self.task_id(task), self.task_node_name(task));
                    self.emit(Event::TaskReleased {
                        task: t,
                        node,
                        actor: actor.clone(),
                    });
                }
            }
            LifeChange::Delegate { task, by, to } => {
                let from = self.inst.tasks[task as usize]
                    .claimed_by
                    .replace(to.clone());
                self.inst
                    .rare_mut()
                    .delegated
                    .push(crate::model::Delegation {
                        task,
                        by: by.clone(),
                        from,
                    });
                self.record(Entry::Delegated {
                    task,
                    by: by.clone(),
                    to: to.clone(),
                });
                if self.heard() {
                    let (t, node) = (self.task_id(task), self.task_node_name(task));
                    self.emit(Event::TaskDelegated {
                        task: t,
                        node,
                        by: by.clone(),
                        to: to.clone(),
                    });
                }
            }
            LifeChange::Return { task, actor } => {
                let rare = self.inst.rare_mut();
                let from = rare
                    .delegated
                    .iter()
                    .position(|d| d.task == task)
                    .and_then(|i| rare.delegated.remove(i).from);
                self.inst.tasks[task as usize].claimed_by = from;
                self.record(Entry::Returned {
                    task,
                    actor: actor.clone(),
                });
                if self.heard() {
                    let (t, node) = (self.task_id(task), self.task_node_name(task));
                    self.emit(Event::TaskReturned {
                        task: t,
                        node,
                        actor: actor.clone(),
                    });
                }
            }
            LifeChange::Suspend { task, actor } => {
                // A task's timers, or every timer of the instance yet to fire, pause.
                let (paused, kept): (Vec<Timer>, Vec<Timer>) =
                    std::mem::take(&mut self.inst.timers)
                        .into_iter()
                        .partition(|t| !t.fired && (task.is_none() || t.task == task));
                self.inst.timers = kept;
                self.inst
                    .rare_mut()
                    .suspended
                    .push(crate::model::Suspension {
                        task,
                        since: self.now,
                        by: actor.clone(),
                        timers: paused,
                    });
                self.record(Entry::Suspended {
                    task,
                    actor: actor.clone(),
                });
                if self.heard() {
                    let t = task.map(|t| self.task_id(t));
                    self.emit(Event::Suspended {
                        instance: id,
                        task: t,
                        actor: actor.clone(),
                    });
                }
            }
            LifeChange::Resume { task, actor } => {
                let rare = self.inst.rare_mut();
                let Some(i) = rare.suspended.iter().position(|s| s.task == task) else {
                    return;
                };
                let s = rare.suspended.remove(i);
                self.record(Entry::Resumed {
                    task,
                    actor: actor.clone(),
                });
                let shifted: Vec<Timer> = s
                    .timers
                    .into_iter()
                    .filter(|t| t.task.is_none_or(|k| self.inst.tasks[k as usize].is_open()))
                    .map(|t| self.shifted(t, s.since))
                    .collect();
                if !shifted.is_empty() {
                    self.apply(Change::Arm(&shifted));
                }
                if self.heard() {
                    let t = task.map(|t| self.task_id(t));
                    self.emit(Event::Resumed {
                        instance: id,
                        task: t,
                        actor: actor.clone(),
                    });
                }
            }
            LifeChange::Skip {
                task,
                actor,
                reason,
            } => {
                self.record(Entry::Skipped {
                    task,
                    actor: actor.clone(),
                    reason: Box::from(reason),
                });
                if self.heard() {
                    let (t, node) = (self.task_id(task), self.task_node_name(task));
                    self.emit(Event::TaskSkipped {
                        task: t,
                        node,
                        actor: actor.clone(),
                        reason: reason.to_owned(),
                    });
                }
            }
            LifeChange::Refuse(refusal) => {
                if self.heard() {
                    let t = refusal.task.map(|t| self.task_id(t));
                    self.emit(Event::CallRefused {
                        instance: id,
                        task: t,
                        actor: refusal.actor.clone(),
                        call: refusal.call,
                        reason: refusal.reason.clone(),
                    });
                }
                self.record(Entry::Refused(refusal));
            }
        }
    }

    fn task_node_name(&self, seq: u32) -> std::sync::Arc<str> {
        self.name(self.inst.tasks[seq as usize].node)
    }

    /// A paused timer armed again now, later by the time it was suspended since `since`: wall
    /// time for wall-clock timers, business time on the process calendar for business ones (a
    /// deadline 3 business hours away when suspended is 3 business hours away on resume).
    fn shifted(&self, mut t: Timer, since: DateTime<Utc>) -> Timer {
        let now = self.now;
        // A timer near the end of time stays there.
        let wall =
            t.at.checked_add_signed((now - since).max(chrono::Duration::zero()))
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
        t.at = match self.dep.calendar.as_deref().filter(|_| t.business) {
            Some(cal) => {
                let left = if t.at > since {
                    cal.business_time_between(since, t.at)
                        .map(|c| c.value)
                        .unwrap_or_default()
                } else {
                    BusinessDuration::ZERO
                };
                super::timers::when(
                    &DurationSpec::Business(left),
                    now,
                    Some(cal),
                    &mut Vec::new(),
                )
                .map_or(wall, |(at, _)| at)
            }
            None => wall,
        };
        t
    }

    /// Who a user task at `at` opens for, from its `assign:` (nothing when it has none).
    ///
    /// # Errors
    /// Why nobody: the expression failed or gave no person id, the candidates variable holds no
    /// list of ids, the earlier task or the owner task was never done.
    pub(super) fn allocate(&self, at: NodeId) -> Result<Option<Allocated>, String> {
        let def = &*self.dep.def;
        let Some(assign) = def.nodes[at.index()]
            .alloc
            .as_deref()
            .and_then(|a| a.assign.as_ref())
        else {
            return Ok(None);
        };
        let one = |a: ActorId| Ok(Some((vec![a].into_boxed_slice(), false)));
        match assign {
            Assign::Owner => match self.inst.owner() {
                Some(o) => one(o.clone()),
                None => {
                    let from = def.owner.map_or("?", |n| def.nodes[n.index()].id.as_str());
                    Err(format!(
                        "the task goes to the case owner, who is not set: task '{from}' was never completed"
                    ))
                }
            },
            Assign::To(cond) => match cond.eval_text(&def.cel, &self.inst.vars) {
                Ok(id) if !id.trim().is_empty() => one(ActorId::new(id)),
                Ok(_) => Err(format!(
                    "assignment '{}' gave an empty person id",
                    crate::cond::excerpt(cond.source())
                )),
                Err(e) => Err(format!("assignment failed: {e}")),
            },
            Assign::Candidates(var) => {
                let ids: Option<Vec<ActorId>> = self
                    .inst
                    .vars
                    .get(var)
                    .and_then(|v| v.as_array())
                    .map(|items| {
                        items
                            .iter()
                            .map(|i| i.as_str().filter(|s| !s.is_empty()).map(ActorId::new))
                            .collect::<Option<Vec<_>>>()
                    })
                    .unwrap_or(None);
                match ids {
                    Some(ids) if !ids.is_empty() => Ok(Some((ids.into_boxed_slice(), true))),
                    _ => Err(format!(
                        "candidates variable '{var}' holds no non-empty list of person ids"
                    )),
                }
            }
            Assign::Like(node) => match last_performer(&self.inst.tasks, *node) {
                Some((_, by)) => one(by.clone()),
                None => Err(format!(
                    "the task goes to whoever did '{}', which was never completed",
                    def.nodes[node.index()].id
                )),
            },
        }
    }

    /// Records a refusal of `call` on `task` by `actor` and gives its error.
    fn refuse(
        &mut self,
        task: Option<u32>,
        actor: &ActorId,
        call: Call,
        reason: String,
    ) -> ExecError {
        self.apply(Change::Life(LifeChange::Refuse(Box::new(Refusal {
            task,
            actor: actor.clone(),
            call,
            reason: reason.clone(),
        }))));
        ExecError::Refused {
            instance: self.inst.id,
            task: task.map(|t| self.task_id(t)),
            actor: actor.clone(),
            call,
            reason,
        }
    }

    /// Four eyes: `actor` performed none of the tasks `task` must be kept apart from.
    fn check_four_eyes(&mut self, task: u32, actor: &ActorId, call: Call) -> Result<(), ExecError> {
        let def = &*self.dep.def;
        let node = self.inst.tasks[task as usize].node;
        let Some(alloc) = def.nodes[node.index()].alloc.as_deref() else {
            return Ok(());
        };
        for &earlier in &alloc.four_eyes {
            let done = self.inst.tasks.iter().find(|k| {
                k.node == earlier
                    && matches!(&k.state, TaskState::Completed { by, .. } if by == actor)
            });
            if let Some(k) = done {
                let reason = format!(
                    "four eyes: {actor} performed task {} at '{}', which this task must be kept apart from",
                    k.seq,
                    def.nodes[earlier.index()].id
                );
                return Err(self.refuse(Some(task), actor, call, reason));
            }
        }
        Ok(())
    }

    /// The checks of allocation and lifecycle on a claim or completion by `actor` (after RACI
    /// allowed it; `regular`: as a responsible, not as the accountable's override): the task is
    /// not suspended, four eyes, and its assignment.
    pub(super) fn check_allocation(
        &mut self,
        task: TaskId,
        actor: &ActorId,
        call: Call,
        regular: bool,
    ) -> Result<(), ExecError> {
        let seq = task.seq;
        if self.inst.rare.is_none() && !self.dep.def.allocating {
            return Ok(());
        }
        if self.inst.is_suspended(seq) {
            let node = self.inst.tasks[seq as usize].node;
            return Err(ExecError::Suspended {
                task,
                node: self.dep.node(node),
            });
        }
        if !self.dep.def.allocating {
            return Ok(());
        }
        self.check_four_eyes(seq, actor, call)?;
        let delegate = self.inst.delegated_by(seq).is_some()
            && self.inst.tasks[seq as usize].claimed_by.as_ref() == Some(actor);
        // An escalation that gave the task to a role overrides its assignment.
        let escalated = self.inst.tasks[seq as usize].escalated_to.is_some();
        if regular
            && !delegate
            && !escalated
            && let Some(a) = self.inst.assigned(seq)
            && !a.to.contains(actor)
        {
            let to: Vec<&str> = a.to.iter().map(|a| a.as_str()).collect();
            let reason = if a.candidates {
                format!(
                    "the task is offered only to its candidates: {}",
                    to.join(", ")
                )
            } else {
                format!("the task is assigned to {}", to.join(", "))
            };
            return Err(self.refuse(Some(seq), actor, call, reason));
        }
        Ok(())
    }

    /// On a completion by `actor`: when the task is the owner task, `actor` becomes the case
    /// owner.
    pub(super) fn completing(&mut self, task: u32, actor: &ActorId) {
        let def = &*self.dep.def;
        if def.owner == Some(self.inst.tasks[task as usize].node)
            && self.inst.owner() != Some(actor)
        {
            self.apply(Change::Life(LifeChange::Owner {
                owner: actor,
                by: None,
            }));
        }
    }

    /// A task's priority: its `priority:` expression, else the instance's `priority` variable
    /// when the process declares one. Text ranks as `low` 1, `medium` 2, `high` 3, `urgent` 4.
    pub(crate) fn priority_of(&self, node: NodeId) -> Option<i64> {
        priority(&self.dep.def, &self.inst.vars, node)
    }

    /// The time limits of a task at `node` opened now: those of the first `priority_due` entry
    /// its priority reaches, else its own.
    pub(crate) fn limits_for(&self, node: NodeId) -> Option<&crate::def::timers::Limits> {
        let dep: &super::deploy::Deployed = self.dep;
        let n = &dep.def.nodes[node.index()];
        if let Some(alloc) = n.alloc.as_deref()
            && !alloc.priority_due.is_empty()
            && let Some(p) = self.priority_of(node)
            && let Some((_, limits)) = alloc.priority_due.iter().find(|(min, _)| p >= *min)
        {
            return Some(limits);
        }
        n.limits.as_deref()
    }
}

/// See [`Step::priority_of`].
pub(crate) fn priority(def: &crate::ProcessDef, vars: &Vars, node: NodeId) -> Option<i64> {
    let rank = |text: &str| match text {
        "low" => Some(1),
        "medium" | "normal" => Some(2),
        "high" => Some(3),
        "urgent" => Some(4),
        _ => text.parse().ok(),
    };
    match def.nodes[node.index()]
        .alloc
        .as_deref()
        .and_then(|a| a.priority.as_ref())
    {
        Some(cond) => match cond.eval_rank(&def.cel, vars) {
            Ok(Ok(n)) => Some(n),
            Ok(Err(text)) => rank(&text),
            Err(_) => None,
        },
        None if def.vars.contains_key(PRIORITY_VAR) => match vars.get(PRIORITY_VAR)? {
            serde_json::Value::Number(n) => n.as_i64(),
            serde_json::Value::String(s) => rank(s),
            _ => None,
        },
        None => None,
    }
}

/// The latest completed task at `node` and who completed it.
fn last_performer(tasks: &[Task], node: NodeId) -> Option<(u32, &ActorId)> {
    tasks.iter().rev().find_map(|k| match &k.state {
        TaskState::Completed { by, .. } if k.node == node => Some((k.seq, by)),
        _ => None,
    })
}

/// Whether an open task is offered to `actor` as allocation and suspension go (RACI aside): not
/// suspended, and assigned to it if assigned.
pub(super) fn offered(slot: &Slot, t: &Task, actor: &Actor) -> bool {
    let Some(rare) = slot.inst.rare.as_deref() else {
        return true;
    };
    if slot.inst.is_suspended(t.seq) {
        return false;
    }
    let delegate = rare.delegated.iter().any(|d| d.task == t.seq);
    delegate
        || t.escalated_to.is_some()
        || slot
            .inst
            .assigned(t.seq)
            .is_none_or(|a| a.to.contains(&actor.id) || t.claimed_by.as_ref() == Some(&actor.id))
}

/// What a [`TaskView`] shows of allocation: the assignee, the candidates, whether it is
/// suspended, who delegated it, its priority.
pub(super) fn view(slot: &Slot, t: &Task, v: &mut TaskView) {
    if slot.dep.def.allocating {
        v.priority = priority(&slot.dep.def, &slot.inst.vars, t.node);
    }
    let Some(rare) = slot.inst.rare.as_deref() else {
        return;
    };
    if let Some(a) = rare.assigned.iter().find(|a| a.task == t.seq) {
        if a.candidates {
            v.candidates = a.to.clone();
        } else {
            v.assignee = a.to.first().cloned();
        }
    }
    v.suspended = slot.inst.is_suspended(t.seq);
    v.delegated_by = slot.inst.delegated_by(t.seq).cloned();
}

/// Drops an emptied `Rare`: a stored instance without one reads back as `None`.
fn tidy(inst: &mut crate::model::Instance) {
    if inst
        .rare
        .as_deref()
        .is_some_and(|r| *r == crate::model::Rare::default())
    {
        inst.rare = None;
    }
}

/// A task an escalation or a reassignment took from its claimant is no longer delegated: the
/// claim the delegation lent is gone.
pub(super) fn undelegate(inst: &mut crate::model::Instance, seq: u32) {
    if let Some(rare) = inst.rare.as_deref_mut()
        && !rare.delegated.is_empty()
    {
        rare.delegated.retain(|d| d.task != seq);
        tidy(inst);
    }
}

/// A task the accountable reassigned (`Change::Reassign`) is assigned to its new holder, and
/// no longer delegated: the override replaces the claim the delegation lent.
pub(super) fn reassigned(inst: &mut crate::model::Instance, seq: u32, to: &ActorId) {
    if let Some(a) = inst
        .rare
        .as_deref_mut()
        .and_then(|r| r.assigned.iter_mut().find(|a| a.task == seq))
    {
        a.to = vec![to.clone()];
        a.candidates = false;
    }
    undelegate(inst, seq);
}

/// Drops the allocation state of a task that ended (from `Step::disarm`).
pub(super) fn forget(inst: &mut crate::model::Instance, seq: u32) {
    let Some(rare) = inst.rare.as_deref_mut() else {
        return;
    };
    let had = !rare.assigned.is_empty() || !rare.delegated.is_empty() || !rare.suspended.is_empty();
    if had {
        if !rare.assigned.is_empty() {
            rare.assigned.retain(|a| a.task != seq);
        }
        if !rare.delegated.is_empty() {
            rare.delegated.retain(|d| d.task != seq);
        }
        if !rare.suspended.is_empty() {
            rare.suspended.retain(|s| s.task != Some(seq));
            // An instance's suspension keeps no timer of a task that ended meanwhile.
            for s in &mut rare.suspended {
                s.timers.retain(|t| t.task != Some(seq));
            }
        }
        tidy(inst);
    }
}

impl Engine {
    /// The task's RACI, escalation role and claimant, for the lifecycle calls.
    fn accountable_for(&self, step: &Step<'_>, seq: u32, actor: &Actor) -> bool {
        let t = &step.inst.tasks[seq as usize];
        step.dep.def.nodes[t.node.index()]
            .raci()
            .is_some_and(|r| self.authorizer.holds(r.accountable(), actor))
    }

    /// Whether `to` may do task `seq`: a responsible role (the escalation's role for an
    /// escalated task).
    fn eligible(&self, step: &Step<'_>, seq: u32, to: &Actor) -> bool {
        let t = &step.inst.tasks[seq as usize];
        let def = &step.dep.def;
        match t.escalated_to(def) {
            Some(role) => self.authorizer.holds(role, to),
            None => def.nodes[t.node.index()].raci().is_some_and(|r| {
                r.responsible()
                    .iter()
                    .any(|role| self.authorizer.holds(role, to))
            }),
        }
    }

    /// Releases a claimed task (WRP 29, deallocation): the claimant gives it back unclaimed, and
    /// it is back in the work lists of its responsible roles (and its assignee or candidates).
    ///
    /// Who may: the claimant. A delegated task is given back with [`Engine::return_task`].
    ///
    /// # Errors
    /// [`ExecError::Refused`] (audited) when `actor` is not the claimant or the task is
    /// delegated; [`ExecError::NotClaimed`] when nobody claimed it; [`ExecError::UnknownTask`],
    /// [`ExecError::TaskClosed`].
    pub fn release(&self, task: TaskId, actor: &Actor) -> Result<(), ExecError> {
        crate::telemetry::call!("release", instance = %task.instance, task = %task, node = ::tracing::field::Empty, actor = %actor.id);
        self.with_task(task, |step, node| {
            let t = &step.inst.tasks[task.seq as usize];
            let Some(claimant) = t.claimed_by.clone() else {
                return Err(ExecError::NotClaimed {
                    task,
                    node: step.dep.node(node),
                });
            };
            if claimant != actor.id {
                let reason = format!("only the claimant ({claimant}) may release the task");
                return Err(step.refuse(Some(task.seq), &actor.id, Call::Release, reason));
            }
            if step.inst.delegated_by(task.seq).is_some() {
                let reason = "the task is delegated: give it back with return_task".to_owned();
                return Err(step.refuse(Some(task.seq), &actor.id, Call::Release, reason));
            }
            step.apply(Change::Life(LifeChange::Release {
                task: task.seq,
                actor: &actor.id,
            }));
            Ok(())
        })
    }

    /// Delegates a task (WRP 27, delegation) to `to`, who then holds its claim and completes it
    /// or gives it back with [`Engine::return_task`]. The delegator stays accountable: the audit
    /// trail and [`TaskView::delegated_by`] name it until the task completes or returns.
    ///
    /// Who may: the claimant, or a holder of the task's accountable role. `to` must be eligible:
    /// hold a responsible role (for an escalated task: the escalation's role) and not be kept
    /// apart by `four_eyes`. A delegation overrides the task's `assign:` (it is the explicit,
    /// audited exception to it).
    ///
    /// # Errors
    /// [`ExecError::Refused`] (audited, naming `by`) when `by` may not delegate or `to` is not
    /// eligible; [`ExecError::Delegated`] when it is delegated already; [`ExecError::Suspended`].
    pub fn delegate(&self, task: TaskId, by: &Actor, to: &Actor) -> Result<(), ExecError> {
        crate::telemetry::call!("delegate", instance = %task.instance, task = %task, node = ::tracing::field::Empty, actor = %by.id, to = %to.id);
        self.with_task(task, |step, node| {
            let seq = task.seq;
            if step.inst.is_suspended(seq) {
                return Err(ExecError::Suspended {
                    task,
                    node: step.dep.node(node),
                });
            }
            if let Some(d) = step.inst.delegated_by(seq) {
                return Err(ExecError::Delegated {
                    task,
                    node: step.dep.node(node),
                    by: d.clone(),
                });
            }
            let claimant = step.inst.tasks[seq as usize].claimed_by.clone();
            if claimant.as_ref() != Some(&by.id) && !self.accountable_for(step, seq, by) {
                let reason = "only the claimant or the task's accountable role may delegate it";
                return Err(step.refuse(Some(seq), &by.id, Call::Delegate, reason.into()));
            }
            if !self.eligible(step, seq, to) {
                let reason = format!("{} holds no responsible role of the task", to.id);
                return Err(step.refuse(Some(seq), &by.id, Call::Delegate, reason));
            }
            if step.dep.def.allocating
                && let Err(e) = step.check_four_eyes(seq, &to.id, Call::Delegate)
            {
                return Err(e);
            }
            step.apply(Change::Life(LifeChange::Delegate {
                task: seq,
                by: &by.id,
                to: &to.id,
            }));
            Ok(())
        })
    }

    /// Gives a delegated task back: its claim returns to whoever held it before the delegation
    /// (unclaimed if nobody did).
    ///
    /// Who may: the delegate.
    ///
    /// # Errors
    /// [`ExecError::NotDelegated`]; [`ExecError::Refused`] (audited) when `actor` is not the
    /// delegate.
    pub fn return_task(&self, task: TaskId, actor: &Actor) -> Result<(), ExecError> {
        crate::telemetry::call!("return_task", instance = %task.instance, task = %task, node = ::tracing::field::Empty, actor = %actor.id);
        self.with_task(task, |step, node| {
            let seq = task.seq;
            if step.inst.delegated_by(seq).is_none() {
                return Err(ExecError::NotDelegated {
                    task,
                    node: step.dep.node(node),
                });
            }
            if step.inst.tasks[seq as usize].claimed_by.as_ref() != Some(&actor.id) {
                let reason = "only the delegate may return a delegated task".to_owned();
                return Err(step.refuse(Some(seq), &actor.id, Call::Return, reason));
            }
            step.apply(Change::Life(LifeChange::Return {
                task: seq,
                actor: &actor.id,
            }));
            Ok(())
        })
    }

    /// Suspends a task or a whole instance (WRP 32, suspension/resumption): its timers pause (they fall due
    /// later by the suspended time when it resumes), and a suspended task cannot be claimed,
    /// completed or delegated and leaves the work lists. An instance's suspension covers all its
    /// tasks and timers (the SLA's included); messages and signals are still delivered to it.
    ///
    /// Who may: for a task, a holder of its accountable role; for an instance, a holder of the
    /// process's accountable role (`accountable:`).
    ///
    /// # Errors
    /// [`ExecError::Refused`] (audited); [`ExecError::Suspended`] when it is suspended already;
    /// [`ExecError::UnknownTask`], [`ExecError::TaskClosed`], [`ExecError::InstanceCompleted`],
    /// [`ExecError::InstanceCancelled`].
    pub fn suspend(&self, what: impl Into<WorkItem>, actor: &Actor) -> Result<(), ExecError> {
        crate::telemetry::call!("suspend", actor = %actor.id);
        self.suspension(what.into(), actor, Call::Suspend)
    }

    /// Resumes a suspended task or instance; see [`Engine::suspend`]. A deadline 4 hours away
    /// when suspended is 4 hours away on resume (business hours on the process calendar for a
    /// business deadline).
    ///
    /// Who may: as for [`Engine::suspend`].
    ///
    /// # Errors
    /// [`ExecError::NotSuspended`]; otherwise as [`Engine::suspend`].
    pub fn resume(&self, what: impl Into<WorkItem>, actor: &Actor) -> Result<(), ExecError> {
        crate::telemetry::call!("resume", actor = %actor.id);
        self.suspension(what.into(), actor, Call::Resume)
    }

    fn suspension(&self, what: WorkItem, actor: &Actor, call: Call) -> Result<(), ExecError> {
        let suspend = call == Call::Suspend;
        let change = |task| {
            if suspend {
                LifeChange::Suspend {
                    task,
                    actor: &actor.id,
                }
            } else {
                LifeChange::Resume {
                    task,
                    actor: &actor.id,
                }
            }
        };
        match what {
            WorkItem::Task(task) => self.with_task(task, |step, node| {
                let seq = task.seq;
                if !self.accountable_for(step, seq, actor) {
                    let reason = format!("only the task's accountable role may {call} it");
                    return Err(step.refuse(Some(seq), &actor.id, call, reason));
                }
                let own = step
                    .inst
                    .rare
                    .as_deref()
                    .is_some_and(|r| r.suspended.iter().any(|s| s.task == Some(seq)));
                if suspend && step.inst.is_suspended(seq) {
                    return Err(ExecError::Suspended {
                        task,
                        node: step.dep.node(node),
                    });
                }
                if !suspend && !own {
                    return Err(ExecError::NotSuspended {
                        instance: task.instance,
                        task: Some(task),
                    });
                }
                step.apply(Change::Life(change(Some(seq))));
                Ok(())
            }),
            WorkItem::Instance(instance) => {
                let now = self.clock.now();
                self.call(instance, |slot| {
                    match slot.inst.status {
                        Status::Completed => return Err(ExecError::InstanceCompleted(instance)),
                        Status::Cancelled => return Err(ExecError::InstanceCancelled(instance)),
                        _ => {}
                    }
                    let suspended = slot.inst.instance_suspended();
                    if suspend && suspended {
                        return Err(ExecError::InstanceSuspended(instance));
                    }
                    if !suspend && !suspended {
                        return Err(ExecError::NotSuspended {
                            instance,
                            task: None,
                        });
                    }
                    let allowed = slot
                        .dep
                        .def
                        .accountable
                        .as_ref()
                        .is_some_and(|role| self.authorizer.holds(role, actor));
                    Ok(self.step_slot(slot, now, |step| {
                        if !allowed {
                            let reason = format!(
                                "only the process's accountable role may {call} the instance"
                            );
                            return Err(step.refuse(None, &actor.id, call, reason));
                        }
                        step.apply(Change::Life(change(None)));
                        Ok(())
                    }))
                })
            }
        }
    }

    /// Skips a task (WRP 33, skip): the accountable completes it without output, audited
    /// as an override ([`Entry::Skipped`], then the completion marked overridden), and the
    /// instance runs on. The owner rule does not take the skipper as the case owner.
    ///
    /// Who may: a holder of the task's accountable role.
    ///
    /// # Errors
    /// [`ExecError::Refused`] (audited); [`ExecError::Suspended`]; [`ExecError::Vetoed`] when a
    /// hook vetoes the completion; as [`Engine::complete`] for what runs after it.
    pub fn skip(&self, task: TaskId, actor: &Actor, reason: &str) -> Result<(), ExecError> {
        crate::telemetry::call!("skip", instance = %task.instance, task = %task, node = ::tracing::field::Empty, actor = %actor.id);
        self.with_task(task, |step, node| {
            let seq = task.seq;
            if !self.accountable_for(step, seq, actor) {
                let why = "only the task's accountable role may skip it".to_owned();
                return Err(step.refuse(Some(seq), &actor.id, Call::Skip, why));
            }
            if step.inst.is_suspended(seq) {
                return Err(ExecError::Suspended {
                    task,
                    node: step.dep.node(node),
                });
            }
            let output = Vars::new();
            let verdict = step.guard(&Completing {
                task,
                node: &step.dep.def.nodes[node.index()].id,
                actor: &actor.id,
                output: &output,
                vars: &step.inst.vars,
            });
            match verdict {
                Err(Control::Veto(why)) => {
                    step.apply(Change::Vetoed {
                        task: seq,
                        actor: &actor.id,
                        reason: &why,
                    });
                    return Err(ExecError::Vetoed {
                        task,
                        node: step.dep.node(node),
                        reason: why,
                    });
                }
                Err(Control::Abort(message)) => {
                    return Err(ExecError::Hook {
                        instance: task.instance,
                        message,
                    });
                }
                _ => {}
            }
            step.apply(Change::Life(LifeChange::Skip {
                task: seq,
                actor: &actor.id,
                reason,
            }));
            let role = step.accountable_role(seq);
            step.finish_task(seq, &actor.id, true, output, role)
        })
    }

    /// Hands the case over to `to` (WRP 6, case handling): `to` becomes the case owner, and
    /// tasks that open for the owner (`assign: owner`) from then on go to `to` (open ones keep
    /// their assignee; reassign or delegate those).
    ///
    /// Who may: the current owner, or a holder of the process's accountable role. `to` must hold
    /// a responsible role of the owner task (`owner: { from: TASK }`).
    ///
    /// # Errors
    /// [`ExecError::NoOwnerRule`] when the process has no `owner:`; [`ExecError::Refused`]
    /// (audited) otherwise refused; [`ExecError::InstanceCompleted`],
    /// [`ExecError::InstanceCancelled`].
    pub fn hand_over(&self, instance: InstanceId, by: &Actor, to: &Actor) -> Result<(), ExecError> {
        crate::telemetry::call!("hand_over", instance = %instance, actor = %by.id, to = %to.id);
        let now = self.clock.now();
        self.call(instance, |slot| {
            match slot.inst.status {
                Status::Completed => return Err(ExecError::InstanceCompleted(instance)),
                Status::Cancelled => return Err(ExecError::InstanceCancelled(instance)),
                _ => {}
            }
            let def = &slot.dep.def;
            let Some(from) = def.owner else {
                return Err(ExecError::NoOwnerRule(instance));
            };
            let owner = slot.inst.owner().cloned();
            let allowed = owner.as_ref() == Some(&by.id)
                || def
                    .accountable
                    .as_ref()
                    .is_some_and(|role| self.authorizer.holds(role, by));
            let eligible = def.nodes[from.index()].raci().is_some_and(|r| {
                r.responsible()
                    .iter()
                    .any(|role| self.authorizer.holds(role, to))
            });
            Ok(self.step_slot(slot, now, |step| {
                if !allowed {
                    let reason = format!(
                        "only the case owner ({}) or the process's accountable role may hand the case over",
                        owner.as_ref().map_or("nobody yet", |o| o.as_str())
                    );
                    return Err(step.refuse(None, &by.id, Call::HandOver, reason));
                }
                if !eligible {
                    let reason = format!(
                        "{} holds no responsible role of the owner task '{}'",
                        to.id, step.dep.def.nodes[from.index()].id
                    );
                    return Err(step.refuse(None, &by.id, Call::HandOver, reason));
                }
                step.apply(Change::Life(LifeChange::Owner {
                    owner: &to.id,
                    by: Some(&by.id),
                }));
                Ok(())
            }))
        })
    }

    /// The open tasks offered to `actor` (as [`Engine::work_list`]), filtered and ordered by
    /// `query`.
    ///
    /// Complexity: that of [`Engine::work_list`], plus one lookup of each listed instance.
    pub fn work_list_by(&self, actor: &Actor, query: &WorkQuery) -> Vec<TaskView> {
        crate::telemetry::call!("work_list_by", actor = %actor.id);
        let list = self.work_list(actor);
        // Per instance: its process id and the variable to order by.
        let mut seen: std::collections::HashMap<InstanceId, (String, Option<serde_json::Value>)> =
            std::collections::HashMap::new();
        let var = match &query.order {
            WorkOrder::Var(name) => Some(name.as_str()),
            _ => None,
        };
        let mut keyed: Vec<(TaskView, Option<serde_json::Value>)> = Vec::new();
        for v in list {
            let id = v.id.instance;
            if let std::collections::hash_map::Entry::Vacant(e) = seen.entry(id) {
                let Ok(info) = self.with_slot(id, |slot| {
                    (
                        slot.dep.def.key.id.clone(),
                        var.and_then(|n| slot.inst.vars.get(n).cloned()),
                    )
                }) else {
                    continue;
                };
                e.insert(info);
            }
            let (process, value) = &seen[&id];
            if query.process.as_ref().is_some_and(|p| p != process)
                || query.node.as_ref().is_some_and(|n| **n != *v.node_id)
                || query
                    .min_priority
                    .is_some_and(|min| v.priority.is_none_or(|p| p < min))
            {
                continue;
            }
            keyed.push((v, value.clone()));
        }
        let due = |v: &TaskView| (v.due.is_none(), v.due, v.created_at, v.id);
        match &query.order {
            WorkOrder::Due => keyed.sort_by_key(|(v, _)| due(v)),
            WorkOrder::Priority => keyed.sort_by_key(|(v, _)| {
                (v.priority.is_none(), std::cmp::Reverse(v.priority), due(v))
            }),
            WorkOrder::Var(_) => keyed.sort_by(|(a, x), (b, y)| {
                compare_values(x.as_ref(), y.as_ref()).then_with(|| due(a).cmp(&due(b)))
            }),
        }
        keyed.into_iter().map(|(v, _)| v).collect()
    }

    /// The case owner of an instance, if set.
    ///
    /// # Errors
    /// [`ExecError::UnknownInstance`].
    pub fn owner(&self, instance: InstanceId) -> Result<Option<ActorId>, ExecError> {
        self.with_slot(instance, |slot| slot.inst.owner().cloned())
    }
}

/// Orders variable values: numbers numerically, then text, then the rest as JSON text; unset
/// last.
fn compare_values(
    a: Option<&serde_json::Value>,
    b: Option<&serde_json::Value>,
) -> std::cmp::Ordering {
    use serde_json::Value;
    use std::cmp::Ordering;
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(x), Some(y)) => x.to_string().cmp(&y.to_string()),
    }
}
