//! Events inside an instance at run time: [`Engine::deliver`] (a message to one instance),
//! [`Engine::signal`] (a broadcast to every instance waiting for it), race gateways decided by
//! the first target to leave its node, and boundary events of user tasks.
//!
//! **Invariant:** a token leaves a race target only through [`Step::leave`], which withdraws the
//! race's other targets first; so exactly one target of a race ever leaves.

use std::cell::Cell;
use std::sync::{Arc, Mutex};

use super::kept::KeptChange;
use super::seam::{Slot, Stepped};
use super::step::{Change, Step};
use super::timers::Armed;
use super::{Engine, ExecError, check_vars, lock};
use crate::def::ProcessDef;
use crate::def::events::BoundaryOn;
use smallvec::SmallVec;

use super::deploy::Deployed;
use crate::def::Behaviour;
use crate::ids::{ActorId, InstanceId, NodeId};
use crate::model::{Instance, Status, Timer, TimerKind, TokenState};
use crate::vars::{Handed, VarProblem, Vars};

/// Something in an instance that waits for a message or signal.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Listener {
    /// A token waiting at a catch node (a race's target or not).
    Catch(NodeId),
    /// Boundary event `index` of open task `task`.
    Boundary { task: u32, index: u8 },
    /// Boundary event `index` of the sub-process `node` a token waits at (see `scope.rs`).
    Scope { node: NodeId, index: u8 },
}

/// What in `inst` waits for the signal (`signal: true`) or message `name` now: catches in token
/// order, then boundary events of open tasks in task order; only the first unless `all`.
pub(crate) fn listeners(
    def: &ProcessDef,
    inst: &Instance,
    signal: bool,
    name: &str,
    all: bool,
) -> SmallVec<[Listener; 2]> {
    let mut out = SmallVec::new();
    for t in &inst.tokens {
        if t.state == TokenState::Waiting
            && let Some(node) = def.try_node(t.node)
            && matches!(&node.behaviour, Behaviour::Catch(c) if c.is(signal, name))
        {
            out.push(Listener::Catch(t.node));
            if !all {
                return out;
            }
        }
    }
    if !def.scopes.is_empty() {
        for t in &inst.tokens {
            let Some(node) = def.try_node(t.node) else {
                continue;
            };
            if t.state != TokenState::Waiting
                || !matches!(node.behaviour, Behaviour::Subprocess { .. })
            {
                continue;
            }
            for (index, b) in node.boundary.iter().enumerate() {
                if b.on(signal, name) {
                    out.push(Listener::Scope {
                        node: t.node,
                        index: index as u8,
                    });
                    if !all {
                        return out;
                    }
                }
            }
        }
    }
    for task in inst.tasks.iter().filter(|t| t.is_open()) {
        let Some(node) = def.try_node(task.node) else {
            continue;
        };
        for (index, b) in node.boundary.iter().enumerate() {
            if b.on(signal, name) {
                out.push(Listener::Boundary {
                    task: task.seq,
                    index: index as u8,
                });
                if !all {
                    return out;
                }
            }
        }
    }
    out
}

impl<'a> Step<'a> {
    /// Moves the ready token at `from` along the flow to `to`. When `from` is a race's target,
    /// the race is decided first: the tokens at its other targets are withdrawn (their tasks
    /// cancelled, their timers dropped).
    pub(crate) fn leave(&mut self, from: NodeId, to: NodeId, actor: Option<&ActorId>) {
        let dep = self.dep;
        if let Some(gateway) = dep.def.nodes[from.index()].race {
            // Caught (already written), one `Withdrawn` per other target, won, moved on, and
            // the next node's records.
            self.room(dep.def.nodes[gateway.index()].next.len() + 4);
            let mut losers: SmallVec<[usize; 4]> = dep.def.nodes[gateway.index()]
                .next
                .iter()
                .filter(|&&n| n != from)
                .filter_map(|&n| self.inst.tokens.iter().position(|t| t.node == n))
                .collect();
            // Highest index first: withdrawing moves the last token into the gap.
            losers.sort_unstable_by(|a, b| b.cmp(a));
            for token in losers {
                self.apply(Change::Withdraw { token });
            }
            self.apply(Change::RaceWon {
                gateway,
                node: from,
            });
        }
        if let Some(i) = self
            .inst
            .tokens
            .iter()
            .position(|t| t.node == from && t.state == TokenState::Ready)
        {
            self.apply(Change::Flow {
                token: Some(i),
                from,
                to,
                actor,
            });
        }
    }

    /// Hands a message or signal to one listener, if it still waits. Returns whether it did.
    pub(crate) fn catch(&mut self, listener: Listener) -> bool {
        let dep: &'a Deployed = self.dep;
        match listener {
            Listener::Catch(node) => {
                let Some(i) = self.waiting_at(node) else {
                    return false;
                };
                let Behaviour::Catch(trigger) = &dep.def.nodes[node.index()].behaviour else {
                    return false;
                };
                self.apply(Change::Caught {
                    token: Some(i),
                    node,
                    trigger,
                });
                self.leave(node, dep.def.nodes[node.index()].next[0], None);
                true
            }
            Listener::Scope { node, index } => self.scope_boundary(node, index),
            Listener::Boundary { task, index } => {
                let Some(t) = self.inst.tasks.get(task as usize).filter(|t| t.is_open()) else {
                    return false;
                };
                let node = t.node;
                let Some(BoundaryOn::Event(trigger)) = dep.def.nodes[node.index()]
                    .boundary
                    .get(index as usize)
                    .map(|b| &b.on)
                else {
                    return false;
                };
                self.apply(Change::Caught {
                    token: None,
                    node,
                    trigger,
                });
                self.boundary(task, index);
                true
            }
        }
    }

    /// Fires boundary event `index` of open task `task`: an interrupting one ends the task and
    /// moves its token to the boundary's target (deciding a race the task is a target of); a
    /// non-interrupting one starts a token there and leaves the task open.
    pub(crate) fn boundary(&mut self, task: u32, index: u8) {
        let dep = self.dep;
        let Some(t) = self.inst.tasks.get(task as usize).filter(|t| t.is_open()) else {
            return;
        };
        let node = t.node;
        let Some(b) = dep.def.nodes[node.index()].boundary.get(index as usize) else {
            return;
        };
        self.apply(Change::Boundary { task, index });
        if b.interrupting {
            self.leave(node, b.to, None);
        } else {
            self.apply(Change::Flow {
                token: None,
                from: node,
                to: b.to,
                actor: None,
            });
        }
    }

    /// The timers of task `seq`'s timer boundary events, counted from now, into `out`.
    pub(crate) fn boundary_timers(
        &self,
        node: NodeId,
        seq: u32,
        out: &mut Armed,
    ) -> Result<(), String> {
        let dep = self.dep;
        for (index, b) in dep.def.nodes[node.index()].boundary.iter().enumerate() {
            let BoundaryOn::Timer(span) = &b.on else {
                continue;
            };
            let spec = span.evaluate(&dep.def.cel, &self.inst.vars)?;
            let business = spec.is_business();
            let calendar = super::timers::calendar_of(dep, span);
            let (at, provisional) =
                super::timers::when(&spec, self.now, calendar, &mut out.warnings)?;
            out.timers.push(Timer {
                at,
                kind: TimerKind::Boundary { index: index as u8 },
                task: Some(seq),
                node,
                sla: false,
                business,
                fired: false,
                provisional,
            });
        }
        Ok(())
    }
}

impl Engine {
    /// Delivers a message to an instance: the first catch node (a race's target or not) or open
    /// task's boundary event waiting for it receives it, its variables are set on the instance,
    /// and the instance runs on. One delivery wakes one waiter.
    ///
    /// A message nothing waits for now is refused, unless its declaration says `keep: true`
    /// (a persistent trigger, WCP 24) and a catch node or boundary event of it lies ahead of
    /// one of the instance's tokens (along the flows): then the instance keeps it with its
    /// payload and the call returns `Ok` at once (audit `Entry::TriggerKept`). The first catch
    /// or boundary event of that name the instance reaches consumes it (`Entry::TriggerConsumed`,
    /// then the payload is set and the token goes straight through). Each delivery is kept:
    /// two deliveries are consumed by two catches, oldest first. Correlation (which instance)
    /// stays the caller's.
    ///
    /// `vars` may set only the variables the message's declared `payload` lists, each fitting its
    /// declaration.
    ///
    /// # Errors
    /// Nothing changed: [`ExecError::UnknownInstance`]; [`ExecError::InstanceCompleted`] when the
    /// instance has ended (completed or cancelled); [`ExecError::UnknownMessage`] when its
    /// definition declares no such message; [`ExecError::Variables`] when `vars` names a
    /// variable outside the payload ([`VarProblem::NotInPayload`]) or does not fit the
    /// declarations; [`ExecError::NotWaiting`] when nothing waits for the message now and it
    /// is not kept (not declared `keep: true`, or no catch of it lies ahead). The
    /// delivery stands: [`ExecError::Incident`] or [`ExecError::Deadline`] when a later node
    /// failed, [`ExecError::Hook`].
    ///
    /// # Examples
    /// ```
    /// use procflow::{Engine, ProcessDef, Status, Vars};
    ///
    /// let engine = Engine::new();
    /// engine.deploy(ProcessDef::from_yaml(r#"
    /// id: confirm
    /// version: 1
    /// name: Confirm
    /// variables: { ok: { type: boolean } }
    /// messages: { confirmed: { payload: [ok] } }
    /// nodes:
    ///   start: { kind: start, next: wait }
    ///   wait: { kind: catch, message: confirmed, next: end }
    ///   end: { kind: end }
    /// "#)?)?;
    /// let id = engine.start("confirm", Vars::new())?;
    /// let mut vars = Vars::new();
    /// vars.insert("ok".into(), true.into());
    /// engine.deliver(id, "confirmed", vars)?;
    /// assert_eq!(engine.instance(id)?.status(), Status::Completed);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn deliver(
        &self,
        instance: InstanceId,
        message: &str,
        vars: Vars,
    ) -> Result<(), ExecError> {
        crate::telemetry::call!("deliver", instance = %instance, message);
        // A refused delivery drops what it was given without recursing through it.
        let vars = Handed::new(vars);
        let now = self.clock.now();
        self.call(instance, |slot| {
            let mut found = check_message(slot, instance, message, &vars)?;
            if found.is_none() && self.refresh(slot) {
                // A stale copy (another engine sharing the store moved the instance on).
                found = check_message(slot, instance, message, &vars)?;
            }
            let Some(listener) = found else {
                if slot.dep.def.keeps(false, message)
                    && super::kept::reachable(&slot.dep.def, &slot.inst, false, message)
                {
                    // A persistent message (WCP 24): kept until a catch of it is reached.
                    return Ok(self.step_slot(slot, now, |step| {
                        step.apply(Change::Kept(KeptChange::Keep {
                            signal: false,
                            name: message,
                            vars: Box::new(vars.take()),
                        }));
                        Ok(())
                    }));
                }
                return Err(ExecError::NotWaiting {
                    instance,
                    message: message.to_owned(),
                });
            };
            Ok(self.step_slot(slot, now, |step| {
                if !vars.is_empty() {
                    step.apply(Change::SetVars(vars.take()));
                }
                step.catch(listener);
                step.run()
            }))
        })
    }

    /// Broadcasts a signal: every live instance (of any definition) with a catch node, race
    /// branch or open task's boundary event waiting for `name` receives it, each in its own
    /// commit, and runs on; `vars` are set on each. Returns how many instances were woken. A
    /// signal nothing waits for is lost (a transient trigger, WCP 23), unless it is persistent
    /// (WCP 24): a live instance this engine holds whose definition declares the signal under
    /// `signals:` with `keep: true`, which does not wait for it now but has a catch node or
    /// boundary event of it ahead of a token, keeps it with `vars` (audit `Entry::TriggerKept`,
    /// not counted as woken) until the first catch or boundary event of it that it reaches
    /// consumes it; every such signal is kept, consumed oldest first.
    ///
    /// Complexity: a scan of every live instance in memory. With a store shared by several
    /// engines, the instances this engine has read (as [`Engine::work_list`]).
    ///
    /// # Errors
    /// Nothing changed: [`ExecError::Variables`] when `vars` does not fit the declarations of a
    /// waiting (or keeping) instance's definition; [`ExecError::Reentrant`]. An instance whose
    /// own step then fails (an incident at a later node) counts as woken; one whose commit the
    /// store refuses does not.
    pub fn signal(&self, name: &str, vars: Vars) -> Result<usize, ExecError> {
        crate::telemetry::call!("signal", signal = name);
        let vars = Handed::new(vars);
        self.not_busy()?;
        // First, which instances wait, and whether the variables fit each one's definition.
        let mut waiting: Vec<InstanceId> = Vec::new();
        for shard in &*self.shards {
            let slots: Vec<(u64, Arc<Mutex<Slot>>)> = lock(shard)
                .iter()
                .map(|(k, v)| (k, Arc::clone(v)))
                .collect();
            for (id, slot) in slots {
                let slot = lock(&slot);
                if slot.inst.status != Status::Running
                    || (listeners(&slot.dep.def, &slot.inst, true, name, false).is_empty()
                        && !keeps_signal(&slot.dep.def, &slot.inst, name))
                {
                    continue;
                }
                let problems = check_vars(&slot.dep.def, &vars);
                if !problems.is_empty() {
                    return Err(ExecError::Variables { problems });
                }
                waiting.push(InstanceId(id));
            }
        }
        waiting.sort_unstable();
        let now = self.clock.now();
        let mut woken = 0;
        for id in waiting {
            let caught = Cell::new(false);
            let result = self.call(id, |slot| {
                let found = listeners(&slot.dep.def, &slot.inst, true, name, true);
                if slot.inst.status != Status::Running {
                    return Ok(Stepped::nothing(id));
                }
                if found.is_empty() {
                    if !keeps_signal(&slot.dep.def, &slot.inst, name) {
                        return Ok(Stepped::nothing(id));
                    }
                    // A persistent signal (WCP 24): kept until a catch of it is reached.
                    return Ok(self.step_slot(slot, now, |step| {
                        step.apply(Change::Kept(KeptChange::Keep {
                            signal: true,
                            name,
                            vars: Box::new(vars.clone()),
                        }));
                        Ok(())
                    }));
                }
                let stepped = self.step_slot(slot, now, |step| {
                    if !vars.is_empty() {
                        step.apply(Change::SetVars(vars.clone()));
                    }
                    for listener in found {
                        step.catch(listener);
                    }
                    step.run()
                });
                caught.set(!stepped.refused);
                Ok(stepped)
            });
            let _ = result;
            if caught.get() {
                woken += 1;
            }
        }
        Ok(woken)
    }
}

/// Whether `inst` keeps signal `name` that nothing in it waits for now: its definition declares
/// the signal persistent and a catch of it lies ahead of a token.
fn keeps_signal(def: &ProcessDef, inst: &Instance, name: &str) -> bool {
    def.keeps(true, name) && super::kept::reachable(def, inst, true, name)
}

/// Checks a delivery against the instance and its definition; gives the listener, or `None`
/// when nothing waits.
fn check_message(
    slot: &Slot,
    instance: InstanceId,
    message: &str,
    vars: &Vars,
) -> Result<Option<Listener>, ExecError> {
    if slot.inst.status != Status::Running {
        return Err(ExecError::InstanceCompleted(instance));
    }
    let def = &slot.dep.def;
    let Some(spec) = def.messages.get(message) else {
        return Err(ExecError::UnknownMessage {
            instance,
            message: message.to_owned(),
        });
    };
    let mut problems = check_vars(def, vars);
    for name in vars.keys() {
        if def.vars.contains_key(name) && !spec.payload.iter().any(|p| p == name) {
            problems.push((name.clone(), VarProblem::NotInPayload));
        }
    }
    if !problems.is_empty() {
        return Err(ExecError::Variables { problems });
    }
    Ok(listeners(def, &slot.inst, false, message, false)
        .into_iter()
        .next())
}
