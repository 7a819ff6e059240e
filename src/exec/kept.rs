//! Persistent triggers (WCP 24): a message declared `keep: true` under `messages:`, or a signal
//! declared `keep: true` under `signals:`, that comes while nothing in an instance waits for it
//! is kept by the instance (in its `Rare`, oldest first) and consumed by the first catch node or
//! user task boundary event of its name the instance reaches later: the kept payload is set on
//! the instance then, and the token goes straight through.
//!
//! **Invariant:** when a step ends, no kept trigger has a listener waiting for it in a running
//! instance (`Step::run` consumes them before it returns; `Instance::check` rejects a stored
//! state that breaks this).

use petgraph::graph::NodeIndex;
use petgraph::visit::Dfs;

use super::events::listeners;
use super::step::{Change, Step};
use crate::def::{Behaviour, ProcessDef};
use crate::model::Instance;
use crate::model::{Entry, Event, Kept, Status};
use crate::vars::Vars;

/// A change to an instance's kept triggers (see [`Change::Kept`]).
pub(crate) enum KeptChange<'c> {
    /// Keep the signal (`signal: true`) or message `name` with its payload. Boxed, to keep
    /// [`Change`] as small as it was (every change is passed by value on the hot path).
    Keep {
        signal: bool,
        name: &'c str,
        vars: Box<Vars>,
    },
    /// Consume kept trigger `index`: it leaves the list and its payload is set on the instance.
    Consume { index: usize },
}

impl Step<'_> {
    /// Applies a [`KeptChange`] (from [`Step::apply`]).
    #[inline(never)]
    pub(super) fn apply_kept(&mut self, change: KeptChange<'_>) {
        match change {
            KeptChange::Keep { signal, name, vars } => {
                self.inst.rare_mut().kept.push(Kept {
                    signal,
                    name: name.to_owned(),
                    vars: *vars,
                });
                self.record(Entry::TriggerKept {
                    signal,
                    name: Box::from(name),
                });
                if self.heard() {
                    self.emit(Event::TriggerKept {
                        instance: self.inst.id,
                        signal,
                        name: name.to_owned(),
                    });
                }
            }
            KeptChange::Consume { index } => {
                let Some(rare) = self.inst.rare.as_deref_mut() else {
                    return;
                };
                if index >= rare.kept.len() {
                    return;
                }
                let kept = rare.kept.remove(index);
                if !self.dep.def.keys.is_empty() {
                    self.note_keys(&kept.vars);
                }
                self.inst.vars.extend(kept.vars);
                self.record(Entry::TriggerConsumed {
                    signal: kept.signal,
                    name: kept.name.into_boxed_str(),
                });
            }
        }
    }

    /// Hands each kept trigger, oldest first, to the first catch or boundary event of its name
    /// waiting now (from [`Step::run`], when no token is ready). Returns whether any was
    /// consumed (then the instance has ready tokens or changed tasks to run on from).
    pub(super) fn consume_kept(&mut self) -> bool {
        if self.inst.status != Status::Running
            || self.inst.rare.as_deref().is_none_or(|r| r.kept.is_empty())
        {
            return false;
        }
        let dep = self.dep;
        let mut consumed = false;
        let mut k = 0;
        while let Some(kept) = self.inst.rare.as_deref().and_then(|r| r.kept.get(k)) {
            let found = listeners(&dep.def, self.inst, kept.signal, &kept.name, false);
            match found.first() {
                Some(&listener) => {
                    // Consumed, caught, then the catch's or boundary's moves.
                    self.room(4);
                    self.apply(Change::Kept(KeptChange::Consume { index: k }));
                    self.catch(listener);
                    consumed = true;
                    // A catch hands its token on; run it before the next kept trigger, which
                    // may wait for what that token reaches.
                    break;
                }
                None => k += 1,
            }
        }
        consumed
    }
}

/// Whether a catch node or user task boundary event waiting for the signal (`signal: true`) or
/// message `name` lies on or after a node where one of `inst`'s tokens stands: only then is a
/// persistent trigger kept (one nothing can consume any more is refused, as a transient one).
/// Follows the flows only: a later send-back (`rework.rs`) is not foreseen.
pub(crate) fn reachable(def: &ProcessDef, inst: &Instance, signal: bool, name: &str) -> bool {
    let mut dfs = Dfs::empty(&def.graph);
    for t in &inst.tokens {
        if t.node.index() >= def.nodes.len() {
            continue;
        }
        dfs.move_to(NodeIndex::new(t.node.index()));
        while let Some(n) = dfs.next(&def.graph) {
            let node = &def.nodes[n.index()];
            let waits = matches!(&node.behaviour, Behaviour::Catch(c) if c.is(signal, name))
                || node.boundary.iter().any(|b| b.on(signal, name));
            if waits {
                return true;
            }
        }
    }
    false
}
