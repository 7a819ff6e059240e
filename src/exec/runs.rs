//! Multi-instance embedded sub-processes (`for_each` on `kind: subprocess`): one run of the
//! sub-process's scope per item (compiled in `def/multi.rs` and `def/scope.rs`).
//!
//! - The sub-process node's token waits there while the runs go on; the activity's items are a
//!   [`Multi`](crate::model::Multi) as a multi-instance task's are, a running item being
//!   `ItemState::Running`. Entering it begins the items (`Entry::ItemsStarted`); each run starts
//!   with a token at the scope's start (`Entry::RunStarted`), all at once or one after another.
//! - **A run's identity is in its tokens**: [`Token::run`](crate::Token::run) is the item index
//!   plus one (0 for every token outside such runs), in bytes the token had spare. A token made by a
//!   fork or a join inside a run is in that run (`Step::fork_run`); a parallel join counts only
//!   its run's branches. A task opened in a run is listed in `Rare::item_tasks` with its item
//!   (as a multi-instance task's item is), so a completion moves that run's token and a
//!   withdrawal cancels that run's task.
//! - **A run's local variables** (its scope's `variables:`, and the item under its `as` name)
//!   are kept in `Rare::run_vars` while it waits. The run loop puts them into the instance's
//!   variables while it runs a token of the run ("mounted") and takes them back out after
//!   (before anything else runs, and at the end of the pass), so parallel runs never overwrite
//!   each other's; a task completion in a run mounts its run first, so its output lands there.
//! - When a run has no live token left, it completes (`Event::RunCompleted`,
//!   `Entry::ItemCompleted`): its `output` local is kept for the collection, in item order. Then
//!   the activity moves on as a multi-instance task's does (`advance_items`): the next item of a
//!   sequential one, or its end when every item is done or its completion condition holds,
//!   withdrawing the runs still going (their tokens, tasks and timers).
//! - Cancelling the instance, a cancel region, a terminating end, the sub-process's timeout and
//!   its interrupting boundary events withdraw every run.
//!
//! Definitions without multi-instance sub-processes never get here: the run loop looks only
//! when `ProcessDef::multi_scopes` is set.

use serde_json::Value;

use super::error::ExecError;
use super::multi::LoopChange;
use super::step::{Change, Step};
use crate::def::Behaviour;
use crate::ids::NodeId;
use crate::model::{Event, ItemState, RunVars, Token, TokenState};
use crate::vars::Vars;

impl<'a> Step<'a> {
    /// Task `seq` opened in run `run` (called from `apply`): it names its item.
    #[cold]
    #[inline(never)]
    pub(super) fn note_run_task(&mut self, seq: u32, run: u16) {
        self.inst
            .rare_mut()
            .item_tasks
            .push((seq, u32::from(run) - 1));
    }

    /// Before the run loop runs token `i`: later tokens a fork makes are in its run, and its
    /// run's local variables are in the instance's.
    #[inline(never)]
    pub(super) fn enter_run_of(&mut self, i: usize) {
        let t = self.inst.tokens[i];
        self.fork_run = t.run;
        let want = match t.run {
            0 => None,
            run => self.dep.def.nodes[t.node.index()]
                .parent
                .map(|p| (p, u32::from(run) - 1)),
        };
        if want != self.mounted {
            self.apply(Change::Looping(LoopChange::Mount { to: want }));
        }
    }

    /// Takes the mounted run's local variables back out of the instance's.
    pub(super) fn leave_runs(&mut self) {
        self.fork_run = 0;
        if self.mounted.is_some() {
            self.apply(Change::Looping(LoopChange::Mount { to: None }));
        }
    }

    /// Before task `seq` completes: when it opened in a run, that run's locals are mounted, so
    /// that its output lands in the run.
    pub(crate) fn mount_task(&mut self, seq: u32) {
        if !self.dep.def.multi_scopes {
            return;
        }
        let run = self.inst.task_run(seq);
        let node = self.inst.tasks[seq as usize].node;
        let Some(parent) = self.dep.def.nodes[node.index()].parent else {
            return;
        };
        let multi = self
            .dep
            .def
            .scopes
            .iter()
            .any(|s| s.node == parent && s.multi);
        if run != 0 && multi {
            self.fork_run = run;
            let to = Some((parent, u32::from(run) - 1));
            if to != self.mounted {
                self.apply(Change::Looping(LoopChange::Mount { to }));
            }
        }
    }

    /// Applies [`LoopChange::Mount`]: the mounted run's locals (and item variable) go back to
    /// its `Rare::run_vars` entry, and run `to`'s come out of it into the instance's variables.
    pub(super) fn remount(&mut self, to: Option<(NodeId, u32)>) {
        let dep: &'a super::deploy::Deployed = self.dep;
        let def = &*dep.def;
        if let Some((node, item)) = self.mounted.take() {
            let mut vars = Vars::new();
            if let Some(s) = def.scopes.iter().find(|s| s.node == node) {
                for name in &s.locals {
                    if let Some(v) = self.inst.vars.remove(name) {
                        vars.insert(name.clone(), v);
                    }
                }
            }
            if let Some(fe) = def.nodes[node.index()].for_each() {
                self.inst.vars.remove(&fe.item);
            }
            let k = self.inst.rare.as_deref().and_then(|r| {
                r.run_vars
                    .iter()
                    .position(|r| r.node == node && r.item == item)
            });
            match (k, vars.is_empty()) {
                (Some(k), true) => {
                    self.inst.rare_mut().run_vars.remove(k);
                }
                (Some(k), false) => self.inst.rare_mut().run_vars[k].vars = vars,
                (None, false) => self
                    .inst
                    .rare_mut()
                    .run_vars
                    .push(RunVars { node, item, vars }),
                (None, true) => {}
            }
        }
        let Some((node, item)) = to else {
            return;
        };
        let value = self
            .inst
            .multi_at(node)
            .and_then(|m| m.items.get(item as usize))
            .cloned()
            .unwrap_or(Value::Null);
        let kept = self.inst.rare.as_deref_mut().and_then(|r| {
            r.run_vars
                .iter_mut()
                .find(|r| r.node == node && r.item == item)
                .map(|r| std::mem::take(&mut r.vars))
        });
        if let Some(kept) = kept {
            self.inst.vars.extend(kept);
        }
        if let Some(fe) = def.nodes[node.index()].for_each() {
            self.inst.vars.insert(fe.item.clone(), value);
        }
        self.mounted = Some((node, item));
    }

    /// Applies [`LoopChange::Run`]: item `item` of multi-instance sub-process `node` runs; a
    /// token starts its scope in that run.
    pub(super) fn start_run(&mut self, node: NodeId, item: u32) {
        let def = &*self.dep.def;
        let Behaviour::Subprocess { start, .. } = def.nodes[node.index()].behaviour else {
            return;
        };
        if let Some(m) = self.inst.rare.as_deref_mut().and_then(|r| {
            r.multi
                .iter_mut()
                .find(|m| m.node == node)
                .and_then(|m| m.state.get_mut(item as usize))
        }) {
            *m = ItemState::Running;
        }
        self.inst.tokens.push(Token {
            node: start,
            state: TokenState::Ready,
            run: (item + 1) as u16,
        });
        self.record(crate::model::Entry::RunStarted { node, item });
        if self.heard() {
            let instance = self.inst.id;
            let name = self.name(node);
            self.emit(Event::RunStarted {
                instance,
                node: name,
                item,
            });
        }
    }

    /// Applies [`LoopChange::RunDone`]: the run of item `item` has no live token left; its
    /// kept locals go (its output was read before).
    pub(super) fn end_run(&mut self, node: NodeId, item: u32) {
        if let Some(rare) = self.inst.rare.as_deref_mut() {
            rare.run_vars
                .retain(|r| !(r.node == node && r.item == item));
        }
        self.inst.tidy_rare();
        if self.heard() {
            let instance = self.inst.id;
            let name = self.name(node);
            self.emit(Event::RunCompleted {
                instance,
                node: name,
                item,
            });
        }
    }

    /// Token `i` reaches multi-instance sub-process `at`: its items begin (or resume, after a
    /// retry) as a multi-instance task's do, each a run of the scope.
    pub(super) fn enter_runs(&mut self, i: usize, at: NodeId) -> Result<(), ExecError> {
        let items = match self.inst.multi_at(at) {
            Some(_) => None,
            None => match super::multi::list_of(self, at) {
                Ok(items) if items.len() >= usize::from(u16::MAX) => {
                    let message = format!(
                        "for_each: {} items, more than a sub-process runs ({})",
                        items.len(),
                        u16::MAX - 1
                    );
                    return Err(self.fail_node(i, at, message));
                }
                Ok(items) => Some(items.to_vec()),
                Err(message) => return Err(self.fail_node(i, at, message)),
            },
        };
        self.apply(Change::Looping(LoopChange::Begin { token: i, items }));
        self.advance_items(at, None)?;
        self.detach(i, at);
        Ok(())
    }

    /// After token `i` began the items of the activity at `at`: with `wait: false` (WCP 12),
    /// the token goes on at once while the items run on their own.
    pub(super) fn detach(&mut self, i: usize, at: NodeId) {
        let node = &self.dep.def.nodes[at.index()];
        let Some(fe) = node.for_each() else {
            return;
        };
        if fe.wait
            || self.inst.multi_at(at).is_none_or(|m| m.detached)
            || self.inst.tokens.get(i).is_none_or(|t| t.node != at)
        {
            return;
        }
        let to = node.next[0];
        self.apply(Change::Looping(LoopChange::Detach { node: at }));
        self.apply(Change::Flow {
            token: Some(i),
            from: at,
            to,
            actor: None,
        });
    }

    /// Withdraws the items of the activities that run without their token (`wait: false`) at
    /// the nodes `pick` chooses: their open tasks are cancelled and their state goes (the
    /// tokens of a sub-process's runs are withdrawn with the others). Tokens are not touched.
    pub(super) fn drop_detached(&mut self, pick: impl Fn(NodeId) -> bool) {
        let Some(rare) = self.inst.rare.as_deref() else {
            return;
        };
        let nodes: Vec<NodeId> = rare
            .multi
            .iter()
            .filter(|m| m.detached && pick(m.node))
            .map(|m| m.node)
            .collect();
        for node in nodes {
            self.withdraw_items(node);
        }
    }

    /// Withdraws every token of the run of item `item` of sub-process `node` (their tasks are
    /// cancelled and timers dropped).
    pub(super) fn withdraw_run(&mut self, node: NodeId, item: u32) {
        let def = &*self.dep.def;
        let Some(s) = def.scopes.iter().find(|s| s.node == node) else {
            return;
        };
        let run = (item + 1) as u16;
        // Highest index first: a withdrawn token's place is taken by the last one.
        for j in (0..self.inst.tokens.len()).rev() {
            let t = self.inst.tokens[j];
            if t.run == run && s.members.contains(t.node.index()) {
                self.apply(Change::Withdraw { token: j });
            }
        }
    }

    /// When the run loop has no ready token: withdraws tokens left in a run that no longer
    /// runs, then completes the first run with no live token left and moves its activity on.
    /// Gives whether anything changed (the run loop looks again).
    pub(super) fn settle_runs(&mut self) -> bool {
        self.leave_runs();
        let dep: &'a super::deploy::Deployed = self.dep;
        let def = &*dep.def;
        for s in def.scopes.iter().filter(|s| s.multi) {
            let Some(m) = self.inst.multi_at(s.node) else {
                continue;
            };
            let tokens = &self.inst.tokens;
            let stray = (0..tokens.len()).rev().find(|&j| {
                let t = tokens[j];
                s.members.contains(t.node.index())
                    && (t.run == 0
                        || m.state.get(usize::from(t.run) - 1) != Some(&ItemState::Running))
            });
            if let Some(j) = stray {
                self.apply(Change::Withdraw { token: j });
                return true;
            }
            if !m.detached && self.waiting_at(s.node).is_none() {
                continue;
            }
            let done = (0..m.state.len()).find(|&k| {
                m.state[k] == ItemState::Running
                    && !tokens
                        .iter()
                        .any(|t| usize::from(t.run) == k + 1 && s.members.contains(t.node.index()))
            });
            let Some(k) = done else {
                continue;
            };
            let item = k as u32;
            let output = def.nodes[s.node.index()]
                .for_each()
                .and_then(|fe| fe.output.as_deref())
                .and_then(|name| {
                    self.inst
                        .item_vars(s.node, item)
                        .and_then(|vars| vars.get(name))
                })
                .cloned()
                .unwrap_or(Value::Null);
            self.apply(Change::Looping(LoopChange::RunDone { node: s.node, item }));
            self.apply(Change::Looping(LoopChange::Done {
                node: s.node,
                item,
                output: Some(Box::new(output)),
            }));
            // A failure (the completion condition) is an incident on the sub-process node.
            let _ = self.advance_items(s.node, None);
            return true;
        }
        false
    }
}
