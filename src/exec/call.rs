//! Call activities (WCP 22): a token at a `kind: call` node starts a child instance of another
//! definition and waits; the child's completion resumes it.
//!
//! Everything that crosses instances goes through the outbox (`FollowUp`), committed with the
//! change that caused it and run after the commit, each in the other instance's own commit:
//! - the parent's step reserves the child's id and commits [`FollowUp::StartChild`]; running it
//!   starts the child unless an instance with that id exists (so a follow-up run again after a
//!   crash starts no second child);
//! - the child keeps its parent (instance, call node, item, depth) in its state; its completion
//!   commits [`FollowUp::ResumeParent`] with its mapped outputs, its incidents
//!   [`FollowUp::ChildFailed`], its retry [`FollowUp::ChildRetried`];
//! - the parent ignores a resume, failure or retry of a child it no longer waits for;
//! - withdrawing a call's token (cancel, terminate, a race or cancel region) commits
//!   [`FollowUp::CancelChild`] for each child it waits for.
//!
//! **Invariant:** a token waits at a call node exactly while the parent has an open
//! [`Called`](crate::model::Called) entry there (or, for a multi-instance call, its activity is
//! underway); a child instance's state names its parent, and the parent's names the child.

use std::sync::Arc;

use serde_json::Value;

use super::multi::LoopChange;
use super::seam::{self, Slot, Stepped};
use super::step::{Change, Step};
use super::{Engine, ExecError, check_vars, deploy, lock};
use crate::def::call::Call;
use crate::ids::{DefKey, InstanceId, NodeId};
use crate::model::{
    CallParent, Called, Entry, Event, FollowUp, Instance, ItemState, Pending, Rare, Status, Token,
    TokenState,
};
use crate::raci::Actor;
use crate::vars::{VarProblem, Vars};

/// The actor that cancels a child when its parent's call is withdrawn.
const CANCELLER: &str = "procflow";

/// A change to an instance's calls (applied by [`Step::apply`] as [`Change::Call`]).
pub(crate) enum CallChange {
    /// A child starts after the commit: `start` is its [`FollowUp::StartChild`]. Token `token`
    /// (none for a multi-instance item, whose activity's token already waits) waits.
    Start {
        token: Option<usize>,
        start: Box<FollowUp>,
    },
    /// Child `child` completed: `vars` (parent names) are set and its token is ready (a
    /// multi-instance item's output is applied by the caller).
    Returned { child: InstanceId, vars: Box<Vars> },
    /// Child `child` could not be started, or handed back an output that does not fit: the call
    /// no longer waits for it.
    Closed { child: InstanceId },
    /// Child `child` failed: an incident of this instance names it.
    Failed {
        child: InstanceId,
        message: Box<str>,
    },
    /// Failed child `child` went on: the incident that stood for it is resolved.
    Retried { child: InstanceId },
    /// The call at `node` is withdrawn: every child it waits for is cancelled.
    Withdrawn { node: NodeId },
}

impl<'a> Step<'a> {
    /// Applies a [`CallChange`].
    #[inline(never)]
    pub(super) fn apply_call(&mut self, change: CallChange) {
        let id = self.inst.id;
        match change {
            CallChange::Start { token, start } => {
                let FollowUp::StartChild {
                    child, node, item, ..
                } = &*start
                else {
                    return;
                };
                let (child, node, item) = (*child, *node, *item);
                if let Some(i) = token {
                    self.inst.tokens[i].state = TokenState::Waiting;
                }
                let rare = self.inst.rare_mut();
                rare.calls.push(Called {
                    node,
                    child,
                    item,
                    open: true,
                    incident: None,
                });
                if let Some(k) = item
                    && let Some(m) = rare.multi.iter_mut().find(|m| m.node == node)
                    && let Some(s) = m.state.get_mut(k as usize)
                {
                    *s = ItemState::Called;
                }
                self.record(Entry::CallStarted { node, child });
                if self.heard() {
                    let name = self.name(node);
                    self.emit(Event::CallStarted {
                        instance: id,
                        node: name,
                        child,
                    });
                }
                self.follow(*start);
            }
            CallChange::Returned { child, vars } => {
                let Some(c) = self.close(child) else {
                    return;
                };
                if c.item.is_none()
                    && let Some(t) = self
                        .inst
                        .tokens
                        .iter_mut()
                        .find(|t| t.node == c.node && t.state == TokenState::Waiting)
                {
                    t.state = TokenState::Ready;
                }
                self.note_keys(&vars);
                self.inst.vars.extend(*vars);
                self.record(Entry::CallReturned {
                    node: c.node,
                    child,
                });
                if self.heard() {
                    let name = self.name(c.node);
                    self.emit(Event::CallReturned {
                        instance: id,
                        node: name,
                        child,
                    });
                }
            }
            CallChange::Closed { child } => {
                if let Some(c) = self.close(child)
                    && let Some(k) = c.item
                    && let Some(m) = self
                        .inst
                        .rare
                        .as_deref_mut()
                        .and_then(|r| r.multi.iter_mut().find(|m| m.node == c.node))
                    && let Some(s) = m.state.get_mut(k as usize)
                {
                    // The item runs again on a retry.
                    *s = ItemState::Pending;
                }
            }
            CallChange::Failed { child, message } => {
                let Some(node) = self.open_call(child).map(|c| c.node) else {
                    return;
                };
                self.apply(Change::Fail {
                    token: None,
                    node: Some(node),
                    message: &format!("child instance {child} failed: {message}"),
                });
                let rare = self.inst.rare_mut();
                let index = rare.incidents.len().saturating_sub(1) as u32;
                if let Some(c) = rare.calls.iter_mut().find(|c| c.child == child) {
                    c.incident = Some(index);
                }
            }
            CallChange::Retried { child } => {
                let Some(rare) = self.inst.rare.as_deref_mut() else {
                    return;
                };
                let Some(c) = rare.calls.iter_mut().find(|c| c.child == child && c.open) else {
                    return;
                };
                let node = c.node;
                if let Some(k) = c.incident.take()
                    && let Some(incident) = rare.incidents.get_mut(k as usize)
                {
                    incident.resolved = true;
                }
                self.record(Entry::ChildRetried { node, child });
                // This instance goes on too: its own caller hears it.
                self.child_retried();
            }
            CallChange::Withdrawn { node } => {
                let open: Vec<InstanceId> = self.inst.rare.as_deref().map_or_else(Vec::new, |r| {
                    r.calls
                        .iter()
                        .filter(|c| c.node == node && c.open)
                        .map(|c| c.child)
                        .collect()
                });
                for child in open {
                    self.close(child);
                    self.record(Entry::CallCancelled { node, child });
                    let reason = format!(
                        "instance {id} withdrew its call at '{}'",
                        self.node_name(node)
                    );
                    self.follow(FollowUp::CancelChild { child, reason });
                }
            }
        }
    }

    /// The open call waiting for `child`.
    fn open_call(&self, child: InstanceId) -> Option<&Called> {
        self.inst
            .rare
            .as_deref()?
            .calls
            .iter()
            .find(|c| c.child == child && c.open)
    }

    /// Closes the open call waiting for `child` (resolving the incident that stood for its
    /// failure); gives it.
    fn close(&mut self, child: InstanceId) -> Option<Called> {
        let rare = self.inst.rare.as_deref_mut()?;
        let c = rare.calls.iter_mut().find(|c| c.child == child && c.open)?;
        c.open = false;
        let closed = c.clone();
        if let Some(k) = c.incident.take()
            && let Some(incident) = rare.incidents.get_mut(k as usize)
        {
            incident.resolved = true;
        }
        Some(closed)
    }

    /// Runs a ready token at a call activity (from [`Step::run`]).
    #[inline(never)]
    pub(super) fn run_call(&mut self, i: usize, at: NodeId) -> Result<(), ExecError> {
        let dep: &'a super::deploy::Deployed = self.dep;
        let node = &dep.def.nodes[at.index()];
        let Some(call) = node.call() else {
            return Ok(());
        };
        if node.for_each().is_some() {
            let items = match self.inst.multi_at(at) {
                Some(_) => None,
                None => match super::multi::list_of(self, at) {
                    Ok(items) => Some(items.to_vec()),
                    Err(message) => return Err(self.fail_node(i, at, message)),
                },
            };
            self.apply(Change::Looping(LoopChange::Begin { token: i, items }));
            return self.advance_calls(at);
        }
        match self.begin_child(at, call, None, Some(i)) {
            Ok(()) => Ok(()),
            Err(message) => Err(self.fail_node(i, at, message)),
        }
    }

    /// Reserves a child for the call at `at` (item `item`) and commits its start; gives why it
    /// cannot be started (an incident of the caller).
    fn begin_child(
        &mut self,
        at: NodeId,
        call: &Call,
        item: Option<u32>,
        token: Option<usize>,
    ) -> Result<(), String> {
        let Some(engine) = self.engine else {
            return Err("a call activity needs its engine".to_owned());
        };
        let depth = self.inst.call_depth() + 1;
        let limit = call.max_depth.unwrap_or(engine.config.max_call_depth);
        if depth > limit {
            return Err(format!(
                "call depth limit {limit} reached: calling '{}' would run it at depth {depth}",
                call.process
            ));
        }
        let child_dep = match engine.deployed(&call.process, call.version) {
            Ok(d) => d,
            Err(_) => {
                return Err(format!(
                    "called process '{}'{} is not deployed",
                    call.process,
                    call.version
                        .map(|v| format!(" version {v}"))
                        .unwrap_or_default()
                ));
            }
        };
        child_dep.runnable().map_err(|e| e.to_string())?;
        let mut vars = Vars::new();
        let local = item.and_then(|k| {
            let fe = self.dep.def.nodes[at.index()].for_each()?;
            let value = self.inst.multi_at(at)?.items.get(k as usize)?;
            Some((fe.item.as_str(), value))
        });
        for m in &call.inputs {
            let value = match local {
                Some((name, value)) if name == m.from => Some(value),
                _ => self.inst.vars.get(&m.from),
            };
            if let Some(v) = value {
                vars.insert(m.to.clone(), v.clone());
            }
        }
        if let Some((name, problem)) = start_vars(&child_dep.def, &mut vars).into_iter().next() {
            return Err(format!(
                "cannot start '{}': its input variable '{name}' is {problem}",
                child_dep.def.key
            ));
        }
        let child = engine
            .next_instance_id()
            .map_err(|e| format!("cannot reserve the child's id: {e}"))?;
        self.apply(Change::Call(CallChange::Start {
            token,
            start: Box::new(FollowUp::StartChild {
                child,
                process: child_dep.def.key.clone(),
                node: at,
                item,
                depth,
                vars,
                outputs: call.returned(),
            }),
        }));
        Ok(())
    }

    /// Moves a multi-instance call on: ends it when every child returned or its completion
    /// condition holds (cancelling the children still running), else starts the children due.
    fn advance_calls(&mut self, at: NodeId) -> Result<(), ExecError> {
        let dep: &'a super::deploy::Deployed = self.dep;
        let node = &dep.def.nodes[at.index()];
        let (Some(fe), Some(call), Some(m)) =
            (node.for_each(), node.call(), self.inst.multi_at(at))
        else {
            return Ok(());
        };
        let held = if m.completed > 0 {
            super::multi::completion_holds(
                &dep.def.cel,
                fe,
                &m.outputs,
                m.completed,
                &self.inst.vars,
            )
        } else {
            Ok(false)
        };
        let token = self.inst.tokens.iter().position(|t| t.node == at);
        let held = match held {
            Ok(held) => held,
            Err(message) => return Err(self.fail_node(token, at, message)),
        };
        if held || m.settled() {
            let rest: Vec<u32> = (0..m.state.len() as u32)
                .filter(|k| matches!(m.state[*k as usize], ItemState::Pending | ItemState::Called))
                .collect();
            let withdrawn = rest.len() as u32
                + m.state
                    .iter()
                    .filter(|s| **s == ItemState::Withdrawn)
                    .count() as u32;
            if !rest.is_empty() {
                self.apply(Change::Call(CallChange::Withdrawn { node: at }));
            }
            for item in rest {
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
            if let Some(i) = token {
                self.apply(Change::Flow {
                    token: Some(i),
                    from: at,
                    to: node.next[0],
                    actor: None,
                });
            }
            return Ok(());
        }
        let due: Vec<u32> = if fe.parallel {
            (0..m.state.len() as u32)
                .filter(|k| m.state[*k as usize] == ItemState::Pending)
                .collect()
        } else if m.state.contains(&ItemState::Called) {
            Vec::new()
        } else {
            m.state
                .iter()
                .position(|s| *s == ItemState::Pending)
                .map(|k| k as u32)
                .into_iter()
                .collect()
        };
        for item in due {
            if let Err(message) = self.begin_child(at, call, Some(item), None) {
                return Err(self.fail_node(token, at, format!("item {item}: {message}")));
            }
        }
        Ok(())
    }

    /// Child `child` of the call at `at` completed with `vars` (its `out` variables, by their
    /// child names): sets the parent's outputs and moves the token on.
    fn call_returned(
        &mut self,
        at: NodeId,
        child: InstanceId,
        mut vars: Vars,
    ) -> Result<(), ExecError> {
        let dep: &'a super::deploy::Deployed = self.dep;
        let node = &dep.def.nodes[at.index()];
        let Some(call) = node.call() else {
            return Ok(());
        };
        let item = self.open_call(child).and_then(|c| c.item);
        let mut mapped = Vars::new();
        let mut bad = None;
        for m in &call.outputs {
            if let Some(value) = vars.remove(&m.from) {
                if let Some(problem) = dep.def.vars.get(&m.to).and_then(|s| s.reject(&value)) {
                    bad.get_or_insert(format!(
                        "child instance {child} handed back '{}' for variable '{}', which is {problem}",
                        m.from, m.to
                    ));
                }
                mapped.insert(m.to.clone(), value);
            }
        }
        let token = self.inst.tokens.iter().position(|t| t.node == at);
        if let Some(message) = bad {
            self.apply(Change::Call(CallChange::Closed { child }));
            return Err(self.fail_node(token, at, message));
        }
        match (item, node.for_each()) {
            (Some(k), Some(fe)) => {
                let output = fe
                    .output
                    .as_deref()
                    .and_then(|o| mapped.remove(o))
                    .unwrap_or(Value::Null);
                // The collected list must stay a valid variable value with this output.
                if let (Some(collect), Some(m)) = (&fe.collect, self.inst.multi_at(at))
                    && let Err(problem) = crate::vars::list_bounds(&m.outputs)
                        .and_then(|bytes| crate::vars::replace_null(bytes, &output))
                {
                    let message =
                        format!("child instance {child}'s output would make '{collect}' {problem}");
                    self.apply(Change::Call(CallChange::Closed { child }));
                    return Err(self.fail_node(token, at, message));
                }
                self.apply(Change::Call(CallChange::Returned {
                    child,
                    vars: Box::default(),
                }));
                self.apply(Change::Looping(LoopChange::Done {
                    node: at,
                    item: k,
                    output: Some(Box::new(output)),
                }));
                self.advance_calls(at)
            }
            _ => {
                self.apply(Change::Call(CallChange::Returned {
                    child,
                    vars: Box::new(mapped),
                }));
                self.leave(at, node.next[0], None);
                Ok(())
            }
        }
    }

    /// From [`Change::Finish`]: a child tells its parent it completed, with its outputs.
    #[cold]
    #[inline(never)]
    pub(super) fn child_finished(&mut self) {
        let Some(p) = self.inst.rare.as_deref().and_then(|r| r.parent.as_ref()) else {
            return;
        };
        let mut vars = Vars::new();
        for name in &p.outputs {
            if let Some(v) = self.inst.vars.get(name) {
                vars.insert(name.clone(), v.clone());
            }
        }
        let follow = FollowUp::ResumeParent {
            parent: p.instance,
            node: p.node,
            item: p.item,
            child: self.inst.id,
            vars,
        };
        self.follow(follow);
    }

    /// From [`Change::Fail`] and [`Change::Cancel`]: a child tells its parent it failed.
    #[cold]
    #[inline(never)]
    pub(super) fn child_failed(&mut self, message: &str) {
        let Some(p) = self.inst.rare.as_deref().and_then(|r| r.parent.as_ref()) else {
            return;
        };
        let follow = FollowUp::ChildFailed {
            parent: p.instance,
            node: p.node,
            child: self.inst.id,
            message: message.to_owned(),
        };
        self.follow(follow);
    }

    /// From [`Change::Retry`]: a child tells its parent it goes on.
    #[cold]
    #[inline(never)]
    pub(super) fn child_retried(&mut self) {
        let Some(p) = self.inst.rare.as_deref().and_then(|r| r.parent.as_ref()) else {
            return;
        };
        let follow = FollowUp::ChildRetried {
            parent: p.instance,
            node: p.node,
            child: self.inst.id,
        };
        self.follow(follow);
    }

    /// From [`Change::Withdraw`]: a call's token leaves, so its children are cancelled.
    #[cold]
    #[inline(never)]
    pub(super) fn withdraw_calls(&mut self, node: NodeId) {
        if self
            .inst
            .rare
            .as_deref()
            .is_some_and(|r| r.calls.iter().any(|c| c.node == node && c.open))
        {
            self.apply(Change::Call(CallChange::Withdrawn { node }));
        }
    }
}

/// Fills in a child's declared defaults and lists what does not fit its declarations (an
/// undeclared or mistyped variable, a missing required one).
fn start_vars(def: &crate::ProcessDef, vars: &mut Vars) -> Vec<(String, VarProblem)> {
    let mut problems = check_vars(def, vars);
    for spec in def.vars.values() {
        if (spec.default.is_some() || spec.required) && !vars.contains_key(&spec.name) {
            match &spec.default {
                Some(d) => {
                    vars.insert(spec.name.clone(), d.clone());
                }
                None => problems.push((spec.name.clone(), VarProblem::Missing)),
            }
        }
    }
    problems
}

/// Whether a follow-up belongs to call activities (run by [`Engine::run_calls`], not told to
/// hooks).
pub(super) fn is_call(what: &FollowUp) -> bool {
    matches!(
        what,
        FollowUp::StartChild { .. }
            | FollowUp::ResumeParent { .. }
            | FollowUp::ChildFailed { .. }
            | FollowUp::ChildRetried { .. }
            | FollowUp::CancelChild { .. }
    )
}

impl Engine {
    /// The child instances an instance's call activities started, oldest first (the running
    /// and the finished ones).
    ///
    /// # Errors
    /// [`ExecError::UnknownInstance`].
    pub fn children(&self, id: InstanceId) -> Result<Vec<InstanceId>, ExecError> {
        self.with_current(id, |slot| {
            slot.inst
                .children()
                .into_iter()
                .map(|(child, _, _)| child)
                .collect()
        })
    }

    /// The instance whose call activity started `id`, if any.
    ///
    /// # Errors
    /// [`ExecError::UnknownInstance`].
    pub fn parent(&self, id: InstanceId) -> Result<Option<InstanceId>, ExecError> {
        self.with_current(id, |slot| slot.inst.parent())
    }

    /// Runs the call follow-ups among `follow`, left by instance `from`. Gives the numbers of
    /// those that could not run because the store failed: they stay in the outbox and run
    /// when an engine next opens the store.
    pub(super) fn run_calls(&self, from: InstanceId, follow: &[Pending]) -> Vec<u64> {
        let mut kept = Vec::new();
        for p in follow {
            let result = match &p.what {
                FollowUp::StartChild {
                    child,
                    process,
                    node,
                    item,
                    depth,
                    vars,
                    outputs,
                } => self.start_child(
                    *child,
                    process,
                    CallParent {
                        instance: from,
                        node: *node,
                        item: *item,
                        depth: *depth,
                        outputs: outputs.clone(),
                    },
                    vars.clone(),
                ),
                FollowUp::ResumeParent {
                    parent,
                    node,
                    child,
                    vars,
                    ..
                } => self.resume_parent(*parent, *node, *child, vars.clone()),
                FollowUp::ChildFailed {
                    parent,
                    child,
                    message,
                    ..
                } => self.at_parent(*parent, *child, |step| {
                    step.apply(Change::Call(CallChange::Failed {
                        child: *child,
                        message: Box::from(message.as_str()),
                    }));
                    Ok(())
                }),
                FollowUp::ChildRetried { parent, child, .. } => {
                    self.at_parent(*parent, *child, |step| {
                        step.apply(Change::Call(CallChange::Retried { child: *child }));
                        Ok(())
                    })
                }
                FollowUp::CancelChild { child, reason } => self.cancel_child(*child, reason),
                _ => Ok(()),
            };
            if let Err(ExecError::Store(_) | ExecError::Conflict(_)) = result {
                kept.push(p.seq);
            }
        }
        kept
    }

    /// Starts a reserved child, unless it exists.
    fn start_child(
        &self,
        child: InstanceId,
        process: &DefKey,
        parent: CallParent,
        vars: Vars,
    ) -> Result<(), ExecError> {
        let exists = lock(self.shard(child)).contains_key(child.0)
            || match &self.store {
                Some(store) => store.read(child)?.is_some(),
                None => false,
            };
        if exists {
            return Ok(());
        }
        let (from, node) = (parent.instance, parent.node);
        let refuse = |message: String| {
            let _ = self.at_parent(from, child, |step| {
                step.apply(Change::Call(CallChange::Closed { child }));
                let token = step.inst.tokens.iter().position(|t| t.node == node);
                Err(step.fail_node(token, node, message))
            });
        };
        let dep = match deploy::find(&self.defs.load(), &process.id, Some(process.version)) {
            Ok(dep) => Arc::clone(dep),
            Err(e) => {
                refuse(format!("cannot start child instance {child}: {e}"));
                return Ok(());
            }
        };
        let now = self.clock.now();
        let mut inst = Instance {
            id: child,
            def: self.store.as_ref().map(|_| Arc::clone(&dep.key)),
            status: Status::Running,
            vars,
            tokens: smallvec::smallvec![Token {
                node: dep.def.start,
                state: TokenState::Ready,
                run: 0,
            }],
            tasks: Vec::new(),
            timers: Vec::new(),
            audit: Vec::new(),
            started_at: now,
            ended_at: None,
            rare: Some(Box::new(Rare {
                parent: Some(parent),
                ..Rare::default()
            })),
        };
        let mut version = 0;
        let mut sla_failed = None;
        let stepped = {
            let _held = seam::hold(child);
            self.step_parts(&mut inst, &dep, &mut version, now, |step| {
                let mut sla = super::timers::Armed::default();
                step.sla_timers(&mut sla)
                    .inspect_err(|e| sla_failed = Some(e.to_string()))?;
                step.apply(Change::Started);
                step.arm(&sla);
                step.run()
            })
        };
        let stepped = match stepped {
            Ok(stepped) => stepped,
            Err(error) => {
                let e = self.after(self.refusal(child, error));
                return e;
            }
        };
        if let Some(message) = sla_failed {
            // Nothing was started: the parent's call fails, and a retry starts another child.
            let _ = self.after(stepped);
            refuse(format!("cannot start child instance {child}: {message}"));
            return Ok(());
        }
        if inst.status == Status::Running || self.config.retain_completed {
            if inst.def.is_none() {
                inst.def = Some(Arc::clone(&dep.key));
            }
            if !dep.def.keys.is_empty() {
                self.index_keys(&inst, &dep.def);
            }
            let slot = Slot::new(inst, dep, version);
            lock(self.shard(child)).insert(child.0, Arc::new(std::sync::Mutex::new(slot)));
            if self.config.cache.is_some() {
                self.trim(child);
            }
        }
        // The child's own failures reach the parent through its outbox.
        match self.after(stepped) {
            Err(e @ (ExecError::Store(_) | ExecError::Conflict(_))) => Err(e),
            _ => Ok(()),
        }
    }

    /// Resumes the parent of a completed child (unless it no longer waits for it).
    fn resume_parent(
        &self,
        parent: InstanceId,
        node: NodeId,
        child: InstanceId,
        vars: Vars,
    ) -> Result<(), ExecError> {
        self.at_parent(parent, child, |step| {
            let returned = step.call_returned(node, child, vars);
            let ran = step.run();
            returned.and(ran)
        })
    }

    /// Steps `parent` with `f` when it is running and still waits for `child`.
    fn at_parent(
        &self,
        parent: InstanceId,
        child: InstanceId,
        f: impl FnOnce(&mut Step<'_>) -> Result<(), ExecError>,
    ) -> Result<(), ExecError> {
        let now = self.clock.now();
        let result = self.call(parent, |slot| {
            let waits = slot.inst.status == Status::Running
                && slot
                    .inst
                    .rare
                    .as_deref()
                    .is_some_and(|r| r.calls.iter().any(|c| c.child == child && c.open));
            if !waits {
                return Ok(Stepped::nothing(parent));
            }
            Ok(self.step_slot(slot, now, f))
        });
        // The parent's own failures (an incident further on) are the parent's.
        match result {
            Err(e @ (ExecError::Store(_) | ExecError::Conflict(_))) => Err(e),
            _ => Ok(()),
        }
    }

    /// Cancels a child whose parent's call was withdrawn (unless it has ended).
    fn cancel_child(&self, child: InstanceId, reason: &str) -> Result<(), ExecError> {
        let now = self.clock.now();
        let actor = Actor::new(CANCELLER, std::iter::empty::<String>());
        let result = self.call(child, |slot| {
            if slot.inst.status != Status::Running {
                return Ok(Stepped::nothing(child));
            }
            Ok(self.step_slot(slot, now, |step| {
                step.cancel_instance(&actor, reason);
                Ok(())
            }))
        });
        match result {
            Err(e @ (ExecError::Store(_) | ExecError::Conflict(_))) => Err(e),
            _ => Ok(()),
        }
    }
}

/// The definition a call names, among `def`, `others` and the deployed ones: the version named,
/// else the newest.
fn resolve<'d>(
    catalog: &'d deploy::Catalog,
    def: &'d crate::ProcessDef,
    others: &[&'d crate::ProcessDef],
    id: &str,
    version: Option<u32>,
) -> Option<&'d crate::ProcessDef> {
    let mut best: Option<&'d crate::ProcessDef> = None;
    let mut consider = |d: &'d crate::ProcessDef| {
        if d.key.id == id
            && version.is_none_or(|v| v == d.key.version)
            && best.is_none_or(|b| d.key.version > b.key.version)
        {
            best = Some(d);
        }
    };
    consider(def);
    for d in others {
        consider(d);
    }
    if let Some(versions) = catalog.get(id) {
        let found = match version {
            Some(v) => versions.get(&v),
            None => versions.values().next_back(),
        };
        if let Some(dep) = found {
            consider(&dep.def);
        }
    }
    best
}

impl Engine {
    /// Deploys definitions that may call each other (a call activity of one names another of
    /// the set), checking every call against the set and the deployed definitions first; see
    /// [`Engine::deploy`]. Deployed in the order given.
    ///
    /// # Errors
    /// The [`DeployError`](super::DeployError) of the first definition whose calls do not
    /// check (then nothing is deployed); else of the first that does not deploy for another
    /// reason (a handler or calendar missing: those before it stay deployed).
    pub fn deploy_all(
        &self,
        defs: impl IntoIterator<Item = crate::ProcessDef>,
    ) -> Result<Vec<Arc<crate::ProcessDef>>, super::DeployError> {
        let defs: Vec<crate::ProcessDef> = defs.into_iter().collect();
        for (i, def) in defs.iter().enumerate() {
            let others: Vec<&crate::ProcessDef> = defs
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, d)| d)
                .collect();
            self.check_calls(def, &others)?;
        }
        defs.into_iter()
            .map(|def| self.install(def, deploy::Install::Deploy))
            .collect()
    }

    /// Checks the call activities of `def` against the deployed definitions and `others`
    /// (deployed with it): each called definition exists, declares the `in` keys and `out`
    /// values, and no cycle of calls without a depth limit runs through `def`.
    pub(super) fn check_calls(
        &self,
        def: &crate::ProcessDef,
        others: &[&crate::ProcessDef],
    ) -> Result<(), super::DeployError> {
        use super::DeployProblem;
        let calls: Vec<(usize, &Call)> = def
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.call().map(|c| (i, c)))
            .collect();
        if calls.is_empty() {
            return Ok(());
        }
        let catalog = self.defs.load();
        let node = |i: usize| crate::ids::NodeRef {
            id: NodeId(i as u32),
            name: Arc::from(def.nodes[i].id.as_str()),
        };
        let mut problems = Vec::new();
        for &(i, call) in &calls {
            let Some(child) = resolve(&catalog, def, others, &call.process, call.version) else {
                problems.push(DeployProblem::UnknownCalledProcess {
                    node: node(i),
                    process: call.process.clone(),
                    version: call.version,
                    location: call.location,
                });
                continue;
            };
            let names = call
                .inputs
                .iter()
                .map(|m| ("in", &m.to, m.location))
                .chain(call.outputs.iter().map(|m| ("out", &m.from, m.location)));
            for (key, variable, location) in names {
                if !child.vars.contains_key(variable) {
                    problems.push(DeployProblem::CallVariable {
                        node: node(i),
                        process: child.key.clone(),
                        key,
                        variable: variable.clone(),
                        location,
                    });
                }
            }
        }
        if problems.is_empty()
            && let Some(cycle) = unlimited_cycle(&catalog, def, others)
        {
            problems.push(DeployProblem::CallCycle { cycle });
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(super::DeployError {
                key: def.key.clone(),
                problems,
            })
        }
    }
}

/// A cycle of calls without `max_depth` that runs through `def`: the definition ids around it,
/// `def`'s first and last.
fn unlimited_cycle(
    catalog: &deploy::Catalog,
    def: &crate::ProcessDef,
    others: &[&crate::ProcessDef],
) -> Option<Vec<String>> {
    // Depth-first over unlimited calls, from `def` back to `def`.
    let mut path: Vec<&crate::ProcessDef> = vec![def];
    let mut seen: Vec<DefKey> = vec![def.key.clone()];
    let mut stack: Vec<Vec<&crate::ProcessDef>> = vec![callees(catalog, def, others, def)];
    while let Some(next) = stack.last_mut() {
        let Some(d) = next.pop() else {
            stack.pop();
            path.pop();
            continue;
        };
        if d.key == def.key {
            let mut cycle: Vec<String> = path.iter().map(|p| p.key.to_string()).collect();
            cycle.push(def.key.to_string());
            return Some(cycle);
        }
        if seen.contains(&d.key) {
            continue;
        }
        seen.push(d.key.clone());
        path.push(d);
        stack.push(callees(catalog, def, others, d));
    }
    None
}

/// The definitions `d` calls without a depth limit.
fn callees<'d>(
    catalog: &'d deploy::Catalog,
    def: &'d crate::ProcessDef,
    others: &[&'d crate::ProcessDef],
    d: &'d crate::ProcessDef,
) -> Vec<&'d crate::ProcessDef> {
    d.nodes
        .iter()
        .filter_map(|n| n.call())
        .filter(|c| c.max_depth.is_none())
        .filter_map(|c| resolve(catalog, def, others, &c.process, c.version))
        .collect()
}
