//! Embedded sub-processes at run time (compiled in `def/scope.rs`).
//!
//! - A token reaching a sub-process node waits there ([`TokenState::Waiting`]) and a new token
//!   starts at the scope's start (`Entry::ScopeEntered`); the scope's local variables are
//!   cleared, and its timeout (if any) is armed.
//! - When the run loop has no ready token left, each waiting sub-process whose scope holds no
//!   token completes (`Entry::ScopeCompleted`): its local variables are cleared and its token
//!   leaves by its `next`. Inner tokens that lost their sub-process's token (the sub-process was
//!   withdrawn: a cancel region, a partial join's `cancel_rest`, a send back) are withdrawn.
//! - A sub-process with `repeat` evaluates `until` when its scope completes a run (before
//!   its locals are cleared); when it does not hold and fewer than `max` runs were made, the
//!   scope runs again (`Entry::Repeated`, the run number kept in `Rare::loops`): locals
//!   cleared, a new token at its start, its token still waiting, its timeout still armed (it
//!   counts from the first entry). After `max` runs it leaves with an `Entry::Warning`.
//! - The timeout, or an interrupting message or signal boundary, withdraws every token of the
//!   scope (open tasks end cancelled) and the token leaves by that route
//!   (`Entry::ScopeInterrupted`); a non-interrupting boundary starts a token beside the scope.
//!
//! Definitions without sub-processes never get here: `next_ready` looks only when
//! `ProcessDef::scopes` is not empty.

use crate::def::Behaviour;
use crate::def::timers::TimerWait;
use crate::ids::NodeId;
use crate::model::{Entry, Event, Timer, TimerKind, Token, TokenState};

use super::error::ExecError;
use super::step::{Change, Step};

/// A change to an instance's scopes (applied in [`Step::apply`]).
pub(crate) enum ScopeChange {
    /// Token `token` at a sub-process waits there and a token starts its scope.
    Enter { token: usize, scope: u32 },
    /// The scope of the sub-process where token `token` waits completed.
    Complete { token: usize, scope: u32 },
    /// The timeout of the sub-process where token `token` waits fired (its scope's tokens were
    /// withdrawn).
    Interrupt { token: usize, scope: u32 },
    /// The scope of the sub-process where token `token` waits completed and its `repeat` runs
    /// it again, as run number `iteration`: its locals are cleared and a token starts it.
    Repeat {
        token: usize,
        scope: u32,
        iteration: u32,
    },
}

impl Step<'_> {
    /// [`Step::apply`] for scope changes: kept out of `apply`, as the rare changes are, so that
    /// the hot path stays small.
    #[cold]
    #[inline(never)]
    pub(super) fn apply_scope(&mut self, change: ScopeChange) {
        let def = &*self.dep.def;
        let (token, scope) = match change {
            ScopeChange::Enter { token, scope }
            | ScopeChange::Complete { token, scope }
            | ScopeChange::Interrupt { token, scope }
            | ScopeChange::Repeat { token, scope, .. } => (token, scope),
        };
        let Some(s) = def.scopes.get(scope as usize) else {
            return;
        };
        for local in &s.locals {
            self.inst.vars.remove(local);
        }
        let node = s.node;
        let id = self.inst.id;
        match change {
            ScopeChange::Enter { .. } => {
                self.inst.tokens[token].state = TokenState::Waiting;
                if let Behaviour::Subprocess { start, .. } = def.nodes[node.index()].behaviour {
                    self.inst.tokens.push(Token {
                        node: start,
                        state: TokenState::Ready,
                        run: 0,
                    });
                }
                self.record(Entry::ScopeEntered { node });
                if self.heard() {
                    let node = self.name(node);
                    self.emit(Event::ScopeEntered { instance: id, node });
                }
            }
            ScopeChange::Repeat { iteration, .. } => {
                if let Behaviour::Subprocess { start, .. } = def.nodes[node.index()].behaviour {
                    self.inst.tokens.push(Token {
                        node: start,
                        state: TokenState::Ready,
                        run: 0,
                    });
                }
                let loops = &mut self.inst.rare_mut().loops;
                match loops.iter_mut().find(|(n, _)| *n == node) {
                    Some(entry) => entry.1 = iteration,
                    None => loops.push((node, iteration)),
                }
                self.record(Entry::Repeated { node, iteration });
                if self.heard() {
                    let node = self.name(node);
                    self.emit(Event::Repeated {
                        instance: id,
                        node,
                        iteration,
                    });
                }
            }
            ScopeChange::Complete { .. } | ScopeChange::Interrupt { .. } => {
                if let Some(rare) = self.inst.rare.as_deref_mut() {
                    rare.loops.retain(|(n, _)| *n != node);
                }
                let interrupted = matches!(change, ScopeChange::Interrupt { .. });
                self.inst.timers.retain(|t| {
                    !(t.task.is_none()
                        && t.node == node
                        && matches!(t.kind, TimerKind::ScopeTimeout | TimerKind::Boundary { .. }))
                });
                self.record(if interrupted {
                    Entry::ScopeInterrupted { node }
                } else {
                    Entry::ScopeCompleted { node }
                });
                if self.heard() {
                    let node = self.name(node);
                    self.emit(Event::ScopeLeft {
                        instance: id,
                        node,
                        interrupted,
                    });
                }
            }
        }
    }

    /// Token `i` reaches sub-process `at`: it waits there and a token starts the scope. A
    /// timeout that cannot be computed fails the node (a retry enters again).
    #[inline(never)]
    pub(super) fn enter_scope(
        &mut self,
        i: usize,
        at: NodeId,
        scope: u32,
        timeout: Option<&TimerWait>,
        failure: &mut Option<ExecError>,
    ) {
        let multi = self
            .dep
            .def
            .scopes
            .get(scope as usize)
            .is_some_and(|s| s.multi);
        let due = match timeout.map(|w| self.wait_until(w)) {
            None => None,
            Some(Ok(due)) => Some(due),
            Some(Err(message)) => {
                let e = self.fail_deadline(i, at, message);
                failure.get_or_insert(e);
                return;
            }
        };
        // Non-interrupting timer boundary events, counted from the entry (as the timeout).
        let mut boundary = super::timers::Armed::default();
        if !self.dep.def.nodes[at.index()].boundary.is_empty() {
            if let Err(message) = self.boundary_timers(at, 0, &mut boundary) {
                let e = self.fail_deadline(i, at, message);
                failure.get_or_insert(e);
                return;
            }
            // A sub-process's boundary timers belong to no task.
            for t in boundary.timers.iter_mut() {
                t.task = None;
            }
        }
        // A multi-instance sub-process's timeout is armed once, for all its runs; a retry
        // resumes its items (see `runs.rs`).
        let resumed = multi && self.inst.multi_at(at).is_some();
        if multi {
            if let Err(e) = self.enter_runs(i, at) {
                failure.get_or_insert(e);
            }
            if resumed
                || self.waiting_at(at).is_none()
                || self.inst.multi_at(at).is_some_and(|m| m.detached)
            {
                return;
            }
        } else {
            self.apply(Change::Scope(ScopeChange::Enter { token: i, scope }));
        }
        if let Some((when, provisional)) = due {
            self.apply(Change::Arm(&[Timer {
                at: when,
                kind: TimerKind::ScopeTimeout,
                task: None,
                node: at,
                sla: false,
                business: false,
                fired: false,
                provisional,
            }]));
        }
        self.arm(&boundary);
    }

    /// Timer boundary event `index` of sub-process `node` fired (a non-interrupting one: the
    /// interrupting timer boundary of a sub-process is its `timeout`): while a token waits
    /// there, a token starts at its target beside the running scope.
    pub(super) fn scope_timer_boundary(&mut self, node: NodeId, index: u8) {
        let n = &self.dep.def.nodes[node.index()];
        let Some(b) = n.boundary.get(index as usize) else {
            return;
        };
        if b.interrupting || self.waiting_at(node).is_none() {
            return;
        }
        let to = b.to;
        self.fork_run = 0;
        self.apply(Change::Flow {
            token: None,
            from: node,
            to,
            actor: None,
        });
    }

    /// Withdraws the tokens whose sub-process is no longer waiting, then completes the first
    /// scope with no token left. Gives whether anything changed (the run loop looks again).
    #[inline(never)]
    pub(super) fn settle_scopes(&mut self) -> bool {
        let def = &*self.dep.def;
        if def.multi_scopes {
            // What happens from here on is outside any run (see `runs.rs`).
            self.leave_runs();
        }
        let tokens = &self.inst.tokens;
        // A sub-process whose token failed (a multi-instance one's completion condition) keeps
        // its scope's tokens for the retry.
        let orphan = (0..tokens.len()).rev().find(|&j| {
            def.nodes[tokens[j].node.index()].parent.is_some_and(|p| {
                !tokens.iter().any(|t| {
                    t.node == p && matches!(t.state, TokenState::Waiting | TokenState::Failed)
                }) && !self.inst.multi_at(p).is_some_and(|m| m.detached)
            })
        });
        if let Some(j) = orphan {
            self.apply(Change::Withdraw { token: j });
            return true;
        }
        if def.multi_scopes && self.settle_runs() {
            return true;
        }
        for (n, s) in def.scopes.iter().enumerate() {
            if s.multi {
                continue;
            }
            let tokens = &self.inst.tokens;
            let Some(i) = self.waiting_at(s.node) else {
                continue;
            };
            if tokens.iter().any(|t| s.members.contains(t.node.index())) {
                continue;
            }
            if def.nodes[s.node.index()].repeat().is_some() && self.repeat_scope(i, n as u32) {
                return true;
            }
            self.apply(Change::Scope(ScopeChange::Complete {
                token: i,
                scope: n as u32,
            }));
            self.apply(Change::Flow {
                token: Some(i),
                from: s.node,
                to: def.nodes[s.node.index()].next[0],
                actor: None,
            });
            return true;
        }
        false
    }

    /// The scope of sub-process `scope` (with `repeat`), where token `i` waits, completed a
    /// run: evaluates `until` (the scope's locals still hold the run's values) and runs the
    /// scope again when it does not hold and fewer than `max` runs were made. Gives whether it
    /// was handled here (run again, or failed: an `until` that cannot be evaluated is an
    /// incident on the sub-process node); `false` when the scope is to be left by its `next`.
    fn repeat_scope(&mut self, i: usize, scope: u32) -> bool {
        let def = &*self.dep.def;
        let Some(s) = def.scopes.get(scope as usize) else {
            return false;
        };
        let node = &def.nodes[s.node.index()];
        let Some(repeat) = node.repeat() else {
            return false;
        };
        let runs = self.inst.iteration(s.node).max(1);
        let done = match repeat.until.eval(&def.cel, &self.inst.vars) {
            Ok(done) => done,
            Err(message) => {
                self.fail_node(i, s.node, message);
                return true;
            }
        };
        if !done && runs < repeat.max {
            self.apply(Change::Scope(ScopeChange::Repeat {
                token: i,
                scope,
                iteration: runs + 1,
            }));
            return true;
        }
        if !done {
            let message = format!(
                "'{}' ran {runs} times, its most, and its 'until' still does not hold",
                node.id
            );
            self.apply(Change::Warn { message: &message });
        }
        false
    }

    /// A message or signal for boundary event `index` of sub-process `node`, where a token
    /// waits: an interrupting one withdraws the scope as the timeout does; a non-interrupting
    /// one starts a token at its target beside the scope. Gives whether it was taken.
    pub(super) fn scope_boundary(&mut self, node: NodeId, index: u8) -> bool {
        let def = &*self.dep.def;
        let n = &def.nodes[node.index()];
        let Some(b) = n.boundary.get(index as usize) else {
            return false;
        };
        let crate::def::events::BoundaryOn::Event(trigger) = &b.on else {
            return false;
        };
        if self.waiting_at(node).is_none() {
            return false;
        }
        self.apply(Change::Caught {
            token: None,
            node,
            trigger,
        });
        if b.interrupting {
            self.interrupt_scope(node, b.to);
        } else {
            self.apply(Change::Flow {
                token: None,
                from: node,
                to: b.to,
                actor: None,
            });
        }
        true
    }

    /// Sub-process `node`'s timeout fired: every token of its scope is withdrawn and its token
    /// leaves by the timeout route.
    pub(super) fn scope_timeout(&mut self, node: NodeId) {
        let n = &self.dep.def.nodes[node.index()];
        if let Some(&to) = n.next.get(1) {
            self.interrupt_scope(node, to);
        }
    }

    /// Withdraws every token of sub-process `node`'s scope and moves its token to `to`.
    fn interrupt_scope(&mut self, node: NodeId, to: NodeId) {
        let def = &*self.dep.def;
        let n = &def.nodes[node.index()];
        let Behaviour::Subprocess { scope, .. } = &n.behaviour else {
            return;
        };
        let Some(s) = def.scopes.get(*scope as usize) else {
            return;
        };
        if self.waiting_at(node).is_none() {
            return;
        }
        // Highest index first: a withdrawn token's place is taken by the last one.
        for j in (0..self.inst.tokens.len()).rev() {
            if s.members.contains(self.inst.tokens[j].node.index()) {
                self.apply(Change::Withdraw { token: j });
            }
        }
        if s.multi {
            // Every run was withdrawn with its tokens: the items go.
            self.withdraw_items(node);
        }
        let Some(i) = self.waiting_at(node) else {
            return;
        };
        self.apply(Change::Scope(ScopeChange::Interrupt {
            token: i,
            scope: *scope,
        }));
        self.apply(Change::Flow {
            token: Some(i),
            from: node,
            to,
            actor: None,
        });
    }
}
