//! Multi-instance tasks (`for_each`) and structured loops (`repeat`): how a step runs them.
//!
//! A multi-instance task keeps one token, waiting at its node, while its items run. A user
//! task's items are tasks of their own (each with its RACI check, deadlines and work-list entry)
//! whose state lives in the instance's `Rare::multi`; a service task's items are handler calls
//! made one after another within the step, and leave state behind only when one fails (so that
//! a retry resumes at the failed item instead of calling the finished ones again).
//!
//! **Invariant:** what an item sets is local to it: only its `output` variable's value leaves it,
//! collected in item order into the `collect` variable when the activity ends. Items never write
//! instance variables, so parallel items cannot overwrite each other.

use serde_json::Value;

use super::error::ExecError;
use super::step::{Change, Step, panic_message};
use crate::cond::Layered;
use crate::def::multi::{COMPLETED, ForEach, TOTAL};
use crate::hooks::ServiceCall;
use crate::ids::{ActorId, NodeId};
use crate::model::{Entry, Event, ItemState, Multi, Task, TaskState, TokenState};
use crate::vars::{VarProblem, Vars};

/// A change to an instance's multi-instance or loop state (applied by [`Step::apply`] as
/// [`Change::Looping`]).
pub(crate) enum LoopChange {
    /// A user task's activity begins with `items`; its token waits. `None` resumes one whose
    /// state is kept (after a retry).
    Begin {
        token: usize,
        items: Option<Vec<Value>>,
    },
    /// A service task's activity begins with `count` items (it keeps no state).
    Note { node: NodeId, count: u32 },
    /// Opens the task of item `item`, making room for `reserve` tasks.
    Open {
        node: NodeId,
        item: u32,
        reserve: u32,
    },
    /// Item `item` completed with `output` (kept when the activity keeps state). Boxed, as are
    /// the other large payloads, to keep [`Change`] as small as it was: every change is passed
    /// by value on the hot path.
    Done {
        node: NodeId,
        item: u32,
        output: Option<Box<Value>>,
    },
    /// Item `item` is withdrawn: its open task is cancelled.
    Withdraw { node: NodeId, item: u32 },
    /// Items join a running activity.
    Add { node: NodeId, items: Vec<Value> },
    /// A service activity stopped at a failing item: its progress is kept for a retry.
    Suspend { multi: Box<Multi> },
    /// The activity ends: its state goes and `outputs` go into its `collect` variable.
    End {
        node: NodeId,
        outputs: Option<Vec<Value>>,
        completed: u32,
        withdrawn: u32,
    },
    /// The activity's state goes without an end (its token was withdrawn).
    Drop { node: NodeId },
    /// Token `token` runs its node again, as run number `iteration`.
    Repeat { token: usize, iteration: u32 },
    /// The loop at `node` is over.
    LoopEnd { node: NodeId },
    /// The local variables of run `to` (multi-instance sub-process, item) are put into the
    /// instance's, those of the run mounted before taken back out (see `runs.rs`).
    Mount { to: Option<(NodeId, u32)> },
    /// The activity at `node` does not wait for its items (`wait: false`, WCP 12): its token
    /// goes on (a `Flow` follows).
    Detach { node: NodeId },
    /// Item `item` of multi-instance sub-process `node` runs: a token starts its scope.
    Run { node: NodeId, item: u32 },
    /// The run of item `item` of sub-process `node` has no live token left (its output is
    /// read; a `Done` follows).
    RunDone { node: NodeId, item: u32 },
}

/// What running a service task's items gave, before any change is applied.
struct Calls {
    /// Items completed by this run, in order.
    done: Vec<u32>,
    outputs: Vec<Value>,
    completed: u32,
    /// Set when an item or the completion condition failed: the state to keep, and why.
    failed: Option<(Multi, String)>,
}

impl<'a> Step<'a> {
    /// Applies a [`LoopChange`].
    #[inline(never)]
    pub(super) fn apply_loop(&mut self, change: LoopChange) {
        let id = self.inst.id;
        match change {
            LoopChange::Begin { token, items } => {
                let node = self.inst.tokens[token].node;
                self.inst.tokens[token].state = TokenState::Waiting;
                if let Some(items) = items {
                    let n = items.len();
                    self.record_cold(Entry::ItemsStarted {
                        node,
                        items: n as u32,
                    });
                    self.inst.rare_mut().multi.push(Multi {
                        node,
                        items,
                        outputs: vec![Value::Null; n],
                        state: vec![ItemState::Pending; n],
                        completed: 0,
                        detached: false,
                    });
                }
            }
            LoopChange::Note { node, count } => {
                self.record_cold(Entry::ItemsStarted { node, items: count })
            }
            LoopChange::Open {
                node,
                item,
                reserve,
            } => {
                let seq = self.inst.tasks.len() as u32;
                let tasks = &mut self.inst.tasks;
                if tasks.len() == tasks.capacity() {
                    tasks.reserve_exact(reserve.max(1) as usize);
                }
                tasks.push(Task {
                    seq,
                    node,
                    state: TaskState::Open,
                    claimed_by: None,
                    created_at: self.now,
                    escalated_to: None,
                    comments: Box::default(),
                });
                let rare = self.inst.rare_mut();
                if rare.item_tasks.len() == rare.item_tasks.capacity() {
                    rare.item_tasks.reserve_exact(reserve.max(1) as usize);
                }
                rare.item_tasks.push((seq, item));
                if let Some(m) = rare.multi.iter_mut().find(|m| m.node == node) {
                    m.state[item as usize] = ItemState::Open(seq);
                }
                self.record_cold(Entry::TaskCreated { task: seq, node });
                if self.heard() {
                    let responsible = self.dep.def.nodes[node.index()]
                        .raci()
                        .map_or(&[][..], |r| r.responsible())
                        .to_vec();
                    let task = self.task_id(seq);
                    self.emit(Event::TaskCreated {
                        task,
                        node: self.name(node),
                        responsible,
                    });
                }
            }
            LoopChange::Done { node, item, output } => {
                if let Some(m) = self.multi_mut(node) {
                    m.state[item as usize] = ItemState::Done;
                    m.completed += 1;
                    if let Some(output) = output {
                        m.outputs[item as usize] = *output;
                    }
                }
                self.record_cold(Entry::ItemCompleted { node, item });
            }
            LoopChange::Withdraw { node, item } => {
                let Some(m) = self.multi_mut(node) else {
                    return;
                };
                let before = std::mem::replace(&mut m.state[item as usize], ItemState::Withdrawn);
                if before == ItemState::Running
                    && let Some(rare) = self.inst.rare.as_deref_mut()
                {
                    rare.run_vars
                        .retain(|r| !(r.node == node && r.item == item));
                }
                if let ItemState::Open(seq) = before {
                    self.inst.tasks[seq as usize].state = TaskState::Cancelled { at: self.now };
                    self.inst.timers.retain(|t| t.task != Some(seq));
                    self.record_cold(Entry::Withdrawn {
                        node,
                        task: Some(seq),
                    });
                    if self.heard() {
                        let task = self.task_id(seq);
                        self.emit(Event::TaskCancelled {
                            task,
                            node: self.name(node),
                        });
                    }
                }
            }
            LoopChange::Add { node, items } => {
                let count = items.len() as u32;
                if let Some(m) = self.multi_mut(node) {
                    m.outputs
                        .extend(std::iter::repeat_n(Value::Null, items.len()));
                    m.state
                        .extend(std::iter::repeat_n(ItemState::Pending, items.len()));
                    m.items.extend(items);
                }
                self.record_cold(Entry::ItemsAdded { node, count });
            }
            LoopChange::Suspend { multi } => {
                let rare = self.inst.rare_mut();
                match rare.multi.iter_mut().find(|m| m.node == multi.node) {
                    Some(m) => *m = *multi,
                    None => rare.multi.push(*multi),
                }
            }
            LoopChange::End {
                node,
                outputs,
                completed,
                withdrawn,
            } => {
                if let Some(rare) = self.inst.rare.as_deref_mut() {
                    rare.multi.retain(|m| m.node != node);
                }
                // A multi-instance sub-process's timeout and timer boundaries go with it.
                self.inst.timers.retain(|t| {
                    !(t.task.is_none()
                        && !t.sla
                        && t.node == node
                        && matches!(
                            t.kind,
                            crate::model::TimerKind::ScopeTimeout
                                | crate::model::TimerKind::Boundary { .. }
                        ))
                });
                let dep: &'a super::deploy::Deployed = self.dep;
                let collect = dep.def.nodes[node.index()]
                    .for_each()
                    .and_then(|f| f.collect.as_deref());
                if let (Some(name), Some(outputs)) = (collect, outputs) {
                    self.inst
                        .vars
                        .insert(name.to_owned(), Value::Array(outputs));
                }
                self.inst.tidy_rare();
                self.record_cold(Entry::ItemsFinished {
                    node,
                    completed,
                    withdrawn,
                });
                if self.heard() {
                    self.emit(Event::ItemsFinished {
                        instance: id,
                        node: self.name(node),
                        completed,
                        withdrawn,
                    });
                }
            }
            LoopChange::Drop { node } => {
                if self.mounted.is_some_and(|(n, _)| n == node) {
                    self.remount(None);
                }
                if let Some(rare) = self.inst.rare.as_deref_mut() {
                    rare.multi.retain(|m| m.node != node);
                    rare.run_vars.retain(|r| r.node != node);
                }
                self.inst.tidy_rare();
            }
            LoopChange::Repeat { token, iteration } => {
                let node = self.inst.tokens[token].node;
                self.inst.tokens[token].state = TokenState::Ready;
                let loops = &mut self.inst.rare_mut().loops;
                match loops.iter_mut().find(|(n, _)| *n == node) {
                    Some(entry) => entry.1 = iteration,
                    None => loops.push((node, iteration)),
                }
                self.record_cold(Entry::Repeated { node, iteration });
                if self.heard() {
                    self.emit(Event::Repeated {
                        instance: id,
                        node: self.name(node),
                        iteration,
                    });
                }
            }
            LoopChange::LoopEnd { node } => {
                if let Some(rare) = self.inst.rare.as_deref_mut() {
                    rare.loops.retain(|(n, _)| *n != node);
                }
            }
            LoopChange::Mount { to } => self.remount(to),
            LoopChange::Detach { node } => {
                if let Some(m) = self.multi_mut(node) {
                    m.detached = true;
                }
            }
            LoopChange::Run { node, item } => self.start_run(node, item),
            LoopChange::RunDone { node, item } => self.end_run(node, item),
        }
    }

    /// Writes an audit record from this module through one call site of the always-inlined
    /// `Step::record`, so that this module adds one copy of it, not one per entry kind.
    #[inline(never)]
    fn record_cold(&mut self, what: Entry) {
        self.record(what);
    }

    fn multi_mut(&mut self, node: NodeId) -> Option<&mut Multi> {
        self.inst
            .rare
            .as_deref_mut()
            .and_then(|r| r.multi.iter_mut().find(|m| m.node == node))
    }

    /// The token at `node` (an activity's one token).
    fn token_at(&self, node: NodeId) -> Option<usize> {
        self.inst
            .tokens
            .iter()
            .position(|t| t.node == node && t.state != TokenState::Joined)
    }

    /// Runs a ready token at a task with `for_each` or `repeat` (from [`Step::run`]).
    #[inline(never)]
    pub(super) fn run_looping(&mut self, i: usize, at: NodeId) -> Result<(), ExecError> {
        let dep = self.dep;
        let node = &dep.def.nodes[at.index()];
        match (node.for_each(), node.raci().is_some()) {
            (Some(_), true) => {
                let items = match self.inst.multi_at(at) {
                    Some(_) => None,
                    None => match list_of(self, at) {
                        Ok(items) => Some(items.to_vec()),
                        Err(message) => return Err(self.fail_node(i, at, message)),
                    },
                };
                self.apply(Change::Looping(LoopChange::Begin { token: i, items }));
                self.advance_items(at, None)?;
                self.detach(i, at);
                Ok(())
            }
            (Some(fe), false) => self.service_items(i, at, fe),
            (None, _) => match self.call_service(at) {
                Ok(vars) => {
                    if !vars.is_empty() {
                        self.apply(Change::SetVars(vars));
                    }
                    self.loop_next(i, at, None)
                }
                Err(message) => Err(self.fail_node(i, at, message)),
            },
        }
    }

    /// After a run of a task with `repeat` (its token at `at` is ready): runs it again, or
    /// moves on.
    pub(super) fn loop_next(
        &mut self,
        i: usize,
        at: NodeId,
        actor: Option<&ActorId>,
    ) -> Result<(), ExecError> {
        let dep: &'a super::deploy::Deployed = self.dep;
        let node = &dep.def.nodes[at.index()];
        let Some(repeat) = node.repeat() else {
            return Ok(());
        };
        let runs = self.inst.iteration(at).max(1);
        let done = match repeat.until.eval(&dep.def.cel, &self.inst.vars) {
            Ok(done) => done,
            Err(message) => return Err(self.fail_node(i, at, message)),
        };
        if !done && runs < repeat.max {
            self.apply(Change::Looping(LoopChange::Repeat {
                token: i,
                iteration: runs + 1,
            }));
            return Ok(());
        }
        if !done {
            let message = format!(
                "'{}' ran {runs} times, its most, and its 'until' still does not hold",
                node.id
            );
            self.apply(Change::Warn { message: &message });
        }
        self.apply(Change::Looping(LoopChange::LoopEnd { node: at }));
        self.apply(Change::Flow {
            token: Some(i),
            from: at,
            to: node.next[0],
            actor,
        });
        Ok(())
    }

    /// Completes the task of a multi-instance item: its output is kept for the collection, and
    /// the activity goes on (the next item, or its end).
    pub(super) fn complete_item(
        &mut self,
        task: u32,
        actor: &ActorId,
        overridden: bool,
        mut output: Vars,
        role: Option<u16>,
    ) -> Result<(), ExecError> {
        let dep: &'a super::deploy::Deployed = self.dep;
        let at = self.inst.tasks[task as usize].node;
        let fe = dep.def.nodes[at.index()].for_each();
        let value = fe
            .and_then(|fe| fe.output.as_deref())
            .and_then(|name| output.remove(name))
            .unwrap_or(Value::Null);
        drop(crate::vars::Handed::new(output));
        let item = self
            .inst
            .rare
            .as_deref()
            .and_then(|r| r.item_tasks.iter().find(|(t, _)| *t == task))
            .map(|(_, item)| *item);
        self.apply(Change::Complete {
            task,
            actor,
            overridden,
            output: Vars::new(),
            role,
        });
        if let Some(item) = item
            && self.inst.multi_at(at).is_some()
        {
            self.apply(Change::Looping(LoopChange::Done {
                node: at,
                item,
                output: Some(Box::new(value)),
            }));
            self.advance_items(at, Some(actor))?;
        }
        Ok(())
    }

    /// Moves a user task's activity on: ends it when every item is done or its completion
    /// condition holds (withdrawing the rest), else opens the items due to run.
    pub(super) fn advance_items(
        &mut self,
        at: NodeId,
        actor: Option<&ActorId>,
    ) -> Result<(), ExecError> {
        let dep: &'a super::deploy::Deployed = self.dep;
        let node = &dep.def.nodes[at.index()];
        let (Some(fe), Some(m)) = (node.for_each(), self.inst.multi_at(at)) else {
            return Ok(());
        };
        let held = if m.completed > 0 {
            completion_holds(&dep.def.cel, fe, &m.outputs, m.completed, &self.inst.vars)
        } else {
            Ok(false)
        };
        let held = match held {
            Ok(held) => held,
            Err(message) => {
                let i = self.token_at(at);
                return Err(self.fail_node(i, at, message));
            }
        };
        if held || m.settled() {
            let rest: Vec<u32> = (0..m.state.len() as u32)
                .filter(|k| {
                    matches!(
                        m.state[*k as usize],
                        ItemState::Pending | ItemState::Open(_) | ItemState::Running
                    )
                })
                .collect();
            let withdrawn = rest.len() as u32
                + m.state
                    .iter()
                    .filter(|s| **s == ItemState::Withdrawn)
                    .count() as u32;
            for item in rest {
                if self
                    .inst
                    .multi_at(at)
                    .and_then(|m| m.state.get(item as usize))
                    == Some(&ItemState::Running)
                {
                    self.withdraw_run(at, item);
                }
                self.apply(Change::Looping(LoopChange::Withdraw { node: at, item }));
            }
            let Some(m) = self.inst.multi_at(at) else {
                return Ok(());
            };
            let completed = m.completed;
            let outputs = fe.collect.as_ref().map(|_| m.outputs.clone());
            self.apply(Change::Looping(LoopChange::End {
                node: at,
                outputs,
                completed,
                withdrawn,
            }));
            if let Some(i) = self.token_at(at) {
                self.apply(Change::Flow {
                    token: Some(i),
                    from: at,
                    to: node.next[0],
                    actor,
                });
            }
            return Ok(());
        }
        let due: Vec<u32> = if fe.parallel {
            (0..m.state.len() as u32)
                .filter(|k| m.state[*k as usize] == ItemState::Pending)
                .collect()
        } else if m
            .state
            .iter()
            .any(|s| matches!(s, ItemState::Open(_) | ItemState::Running))
        {
            Vec::new()
        } else {
            m.state
                .iter()
                .position(|s| *s == ItemState::Pending)
                .map(|k| k as u32)
                .into_iter()
                .collect()
        };
        let reserve = due.len() as u32;
        if matches!(node.behaviour, crate::def::Behaviour::Subprocess { .. }) {
            // A multi-instance sub-process runs its scope per item (see `runs.rs`).
            for item in due {
                self.apply(Change::Looping(LoopChange::Run { node: at, item }));
            }
            return Ok(());
        }
        for item in due {
            let mut armed = super::timers::Armed::default();
            self.arming_item = Some(item);
            let timers = self.task_timers(at, self.inst.tasks.len() as u32, &mut armed);
            self.arming_item = None;
            match timers {
                Ok(()) => {
                    self.apply(Change::Looping(LoopChange::Open {
                        node: at,
                        item,
                        reserve,
                    }));
                    self.arm(&armed);
                }
                Err(message) => {
                    let i = self.token_at(at);
                    return Err(self.fail_node(
                        i,
                        at,
                        format!("cannot compute a deadline: {message}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Runs a service task's items: one handler call per item, in item order, until all are
    /// done, the completion condition holds, or one fails.
    fn service_items(&mut self, i: usize, at: NodeId, fe: &'a ForEach) -> Result<(), ExecError> {
        let dep: &'a super::deploy::Deployed = self.dep;
        let def = &*dep.def;
        let node = &def.nodes[at.index()];
        let Some(handler) = &dep.handlers[at.index()] else {
            return Err(self.fail_node(i, at, "no handler registered".to_owned()));
        };
        let resumed = self.inst.multi_at(at).is_some();
        // Every call is made with the instance borrowed for reading; the changes follow.
        let calls = {
            let inst = &*self.inst;
            let (items, mut outputs, mut state, mut completed) = match inst.multi_at(at) {
                Some(m) => (
                    &m.items[..],
                    m.outputs.clone(),
                    m.state.clone(),
                    m.completed,
                ),
                None => match list_of(self, at) {
                    Ok(items) => (items, vec![Value::Null; items.len()], Vec::new(), 0),
                    Err(message) => return Err(self.fail_node(i, at, message)),
                },
            };
            let total = items.len();
            let mut done = Vec::with_capacity(if resumed { 0 } else { total });
            let mut failed = None;
            // The collected list must stay a valid variable value: its JSON size, kept as the
            // items complete.
            let mut bytes = match (&fe.collect, resumed) {
                (None, _) => Ok(0),
                (Some(_), false) => Ok(crate::vars::null_list_bytes(total)),
                (Some(_), true) => crate::vars::list_bounds(&outputs),
            };
            for (k, item) in items.iter().enumerate() {
                if resumed && state[k] != ItemState::Pending {
                    continue;
                }
                let call = ServiceCall {
                    instance: inst.id,
                    node: &node.id,
                    vars: &inst.vars,
                    item: Some(item),
                    item_index: Some(k as u32),
                };
                let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    handler.call(&call)
                })) {
                    Ok(Ok(vars)) => item_output(def, fe, vars),
                    Ok(Err(e)) => Err(format!("handler failed: {}", e.describe())),
                    Err(panic) => Err(format!("handler panicked: {}", panic_message(&panic))),
                };
                let outcome = result.and_then(|output| {
                    if let Some(collect) = &fe.collect {
                        bytes = std::mem::replace(&mut bytes, Ok(0))
                            .and_then(|b| crate::vars::replace_null(b, &output));
                        if let Err(problem) = &bytes {
                            return Err(format!("its output would make '{collect}' {problem}"));
                        }
                    }
                    outputs[k] = output;
                    completed += 1;
                    done.push(k as u32);
                    if resumed {
                        state[k] = ItemState::Done;
                    }
                    completion_holds(&def.cel, fe, &outputs, completed, &inst.vars)
                });
                match outcome {
                    Ok(false) => {}
                    Ok(true) => break,
                    Err(message) => {
                        let message = format!("item {k}: {message}");
                        failed = Some((k, message));
                        break;
                    }
                }
            }
            let failed = failed.map(|(_, message): (usize, String)| {
                let mut state = state;
                if !resumed {
                    // A first run calls the items in order: the ones before the failure are done.
                    state = (0..total)
                        .map(|j| {
                            if j < done.len() {
                                ItemState::Done
                            } else {
                                ItemState::Pending
                            }
                        })
                        .collect();
                }
                let multi = Multi {
                    node: at,
                    items: items.to_vec(),
                    outputs: outputs.clone(),
                    state,
                    completed,
                    detached: false,
                };
                (multi, message)
            });
            Calls {
                done,
                outputs,
                completed,
                failed,
            }
        };
        if !resumed {
            self.apply(Change::Looping(LoopChange::Note {
                node: at,
                count: calls.outputs.len() as u32,
            }));
        }
        for &item in &calls.done {
            self.apply(Change::Looping(LoopChange::Done {
                node: at,
                item,
                output: None,
            }));
        }
        if let Some((multi, message)) = calls.failed {
            self.apply(Change::Looping(LoopChange::Suspend {
                multi: Box::new(multi),
            }));
            return Err(self.fail_node(i, at, message));
        }
        // Items the completion condition left uncalled are withdrawn.
        let withdrawn = (calls.outputs.len() as u32).saturating_sub(calls.completed);
        let outputs = fe.collect.as_ref().map(|_| calls.outputs);
        self.apply(Change::Looping(LoopChange::End {
            node: at,
            outputs,
            completed: calls.completed,
            withdrawn,
        }));
        self.apply(Change::Flow {
            token: Some(i),
            from: at,
            to: node.next[0],
            actor: None,
        });
        Ok(())
    }

    /// The item variable a task's durations see: for a multi-instance item's task (or the one
    /// about to open, [`Step::arming_item`]), its `as` name and its value.
    pub(super) fn item_local(&self, task: Option<u32>, node: NodeId) -> Option<(&'a str, &Value)> {
        let dep: &'a super::deploy::Deployed = self.dep;
        let fe = dep.def.nodes.get(node.index())?.for_each()?;
        let rare = self.inst.rare.as_deref()?;
        let m = rare.multi.iter().find(|m| m.node == node)?;
        let item = match self.arming_item {
            Some(item) => item,
            None => {
                let task = task?;
                rare.item_tasks.iter().find(|(t, _)| *t == task)?.1
            }
        };
        Some((fe.item.as_str(), m.items.get(item as usize)?))
    }

    /// Withdraws the items of the activity at `node` when its token is withdrawn (and forgets a
    /// loop underway there).
    #[inline(never)]
    pub(super) fn withdraw_items(&mut self, node: NodeId) {
        if self.inst.iteration(node) > 0 {
            self.apply(Change::Looping(LoopChange::LoopEnd { node }));
        }
        let Some(m) = self.inst.multi_at(node) else {
            return;
        };
        let open: Vec<u32> = (0..m.state.len() as u32)
            .filter(|k| matches!(m.state[*k as usize], ItemState::Open(_)))
            .collect();
        for item in open {
            self.apply(Change::Looping(LoopChange::Withdraw { node, item }));
        }
        self.apply(Change::Looping(LoopChange::Drop { node }));
    }
}

/// The list a `for_each` runs over, or why the variable holds none.
pub(super) fn list_of<'s>(step: &'s Step<'_>, at: NodeId) -> Result<&'s [Value], String> {
    let node = &step.dep.def.nodes[at.index()];
    let Some(fe) = node.for_each() else {
        return Err("not a multi-instance task".to_owned());
    };
    match step.inst.vars.get(&fe.list) {
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(format!(
            "for_each: variable '{}' holds {}, not a list",
            fe.list,
            kind_of(other)
        )),
        None => Err(format!(
            "for_each: variable '{}' is not set, so there is no list to run over",
            fe.list
        )),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The output of one item's handler call: its `output` variable (checked against its
/// declaration), `null` when it set none. Any other variable is refused: it would be local to
/// the item and lost.
fn item_output(def: &crate::ProcessDef, fe: &ForEach, mut vars: Vars) -> Result<Value, String> {
    if vars.is_empty() {
        std::mem::forget(vars);
        return Ok(Value::Null);
    }
    let output = fe.output.as_deref().and_then(|name| vars.remove(name));
    if let Some((name, _)) = vars.iter().next() {
        let message = format!(
            "handler returned variable '{name}' that is {}",
            VarProblem::NotItemOutput
        );
        drop(crate::vars::Handed::new(vars));
        return Err(message);
    }
    let Some(output) = output else {
        return Ok(Value::Null);
    };
    let name = fe.output.as_deref().unwrap_or_default();
    if let Some(problem) = def.vars.get(name).and_then(|spec| spec.reject(&output)) {
        return Err(format!(
            "handler returned variable '{name}' that is {problem}"
        ));
    }
    Ok(output)
}

/// Whether a `for_each`'s completion condition holds with `completed` items done and the
/// outputs so far (`null` for unfinished items).
pub(super) fn completion_holds(
    cel: &cel::Context<'_, '_>,
    fe: &ForEach,
    outputs: &[Value],
    completed: u32,
    vars: &Vars,
) -> Result<bool, String> {
    let Some(cond) = &fe.complete_when else {
        return Ok(false);
    };
    let completed = Value::from(completed);
    let total = Value::from(outputs.len() as u64);
    let reads_collect = fe
        .collect
        .as_deref()
        .is_some_and(|c| cond.reads().iter().any(|r| r == c));
    let collected = if reads_collect {
        Value::Array(outputs.to_vec())
    } else {
        Value::Null
    };
    let mut locals: Vec<(&str, &Value)> = vec![(COMPLETED, &completed), (TOTAL, &total)];
    if let Some(c) = fe.collect.as_deref().filter(|_| reads_collect) {
        locals.push((c, &collected));
    }
    let scope = Layered {
        locals: &locals,
        vars,
    };
    cond.eval(cel, &scope)
}

/// Checks the output of a multi-instance user task's completion: only the item's `output`
/// variable may be set, and the collected list must stay within a variable's bounds with it.
pub(super) fn item_problems(
    inst: &crate::Instance,
    fe: &ForEach,
    task: u32,
    output: &Vars,
) -> Vec<(String, VarProblem)> {
    let mut problems: Vec<(String, VarProblem)> = output
        .keys()
        .filter(|name| fe.output.as_deref() != Some(name.as_str()))
        .map(|name| (name.clone(), VarProblem::NotItemOutput))
        .collect();
    let node = inst.tasks.get(task as usize).map(|t| t.node);
    if let (Some(collect), Some(value), Some(m)) = (
        &fe.collect,
        fe.output.as_deref().and_then(|o| output.get(o)),
        node.and_then(|n| inst.multi_at(n)),
    ) && let Err(problem) = crate::vars::list_bounds(&m.outputs)
        .and_then(|bytes| crate::vars::replace_null(bytes, value))
    {
        problems.push((collect.clone(), problem));
    }
    problems
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    /// Every change is passed by value on the hot path: multi-instance changes box what is
    /// large, so that `Change` stays as small as it was before them.
    #[test]
    fn changes_stay_small() {
        assert!(std::mem::size_of::<super::LoopChange>() <= 40);
        assert!(std::mem::size_of::<super::Change<'_>>() <= 48);
    }
}
