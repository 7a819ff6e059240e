//! Service tasks whose handler answers later (an *awaiting* handler): the handler takes the
//! call with [`HandlerError::pending`](crate::HandlerError::pending), the token waits at the
//! service task, and [`Engine::complete_service`] hands in the result in a commit of its own.
//!
//! This is what the tokio façade's async handlers stand on (`procflow::AsyncEngine`), but it
//! needs no runtime: any host can queue the work elsewhere and complete it later.
//!
//! **Invariant:** a token waits (`TokenState::Waiting`) at a service task exactly while its
//! handler's answer is outstanding; the answer readies it (its output set, the token moved on)
//! or fails the node with an incident, whose retry calls the handler again.

use super::step::{Change, Step};
use super::{Engine, ExecError, check_vars};
use crate::hooks::HandlerError;
use crate::ids::{InstanceId, NodeId};
use crate::model::{Entry, Event, Status, TokenState};
use crate::vars::Vars;

pub(crate) use crate::hooks::PENDING;

/// A change to a service task that waits for its handler (applied by [`Step::apply`] as
/// [`Change::Awaiting`]).
pub(crate) enum AwaitChange {
    /// Token `token` at service task `node` waits for its handler's answer.
    Wait { token: usize, node: NodeId },
}

impl Step<'_> {
    /// Applies an [`AwaitChange`].
    #[cold]
    #[inline(never)]
    pub(super) fn apply_awaiting(&mut self, change: AwaitChange) {
        match change {
            AwaitChange::Wait { token, node } => {
                self.inst.tokens[token].state = TokenState::Waiting;
                self.record(Entry::ServiceAwaiting { node });
                if self.heard() {
                    self.emit(Event::ServiceAwaiting {
                        instance: self.inst.id,
                        node: self.name(node),
                    });
                }
            }
        }
    }
}

impl Engine {
    /// Whether the engine has a store (the tokio façade offloads its calls then).
    #[cfg(feature = "tokio")]
    pub(crate) fn has_store(&self) -> bool {
        self.store.is_some()
    }

    /// Hands in the answer of an awaiting service handler (one that returned
    /// [`HandlerError::pending`]): with `Ok(vars)` the variables are set and the token moves
    /// on, as if the handler had answered at once; with `Err(e)` the node fails with an incident
    /// (`handler failed: …`), and [`Engine::retry`] calls the handler again. Runs in its own
    /// commit.
    ///
    /// # Errors
    /// [`ExecError::UnknownNode`] when the definition has no node `node`;
    /// [`ExecError::NotAwaiting`] when no token waits at it for its handler (the instance was
    /// cancelled or finished meanwhile, or the answer came twice);
    /// [`ExecError::Incident`] when the answer is a failure or its variables are not declared
    /// (the incident is committed; nothing else changes).
    pub fn complete_service(
        &self,
        instance: InstanceId,
        node: &str,
        answer: Result<Vars, HandlerError>,
    ) -> Result<(), ExecError> {
        crate::telemetry::call!("complete_service", instance = %instance, node);
        // A refused answer may be nested deeper than any variable: dropped without recursion.
        let answer = answer.map(crate::vars::Handed::new);
        let now = self.clock.now();
        self.call(instance, |slot| {
            let Some(at) = slot.dep.def.node_id(node) else {
                return Err(ExecError::UnknownNode {
                    instance,
                    node: node.to_owned(),
                });
            };
            let not_awaiting = || ExecError::NotAwaiting {
                instance,
                node: node.to_owned(),
            };
            let waiting = |slot: &super::Slot| {
                slot.inst
                    .tokens
                    .iter()
                    .position(|t| t.node == at && t.state == TokenState::Waiting)
            };
            if !matches!(
                slot.dep.def.nodes[at.index()].behaviour,
                crate::def::Behaviour::ServiceTask { .. }
            ) {
                return Err(not_awaiting());
            }
            let token = match waiting(slot) {
                Some(i) => i,
                // Another engine sharing the store may have moved it: look again.
                None if self.refresh(slot) => waiting(slot).ok_or_else(not_awaiting)?,
                None => return Err(not_awaiting()),
            };
            if slot.inst.status != Status::Running {
                return Err(not_awaiting());
            }
            let next = slot.dep.def.nodes[at.index()].next[0];
            Ok(self.step_slot(slot, now, |step| {
                let vars = match answer {
                    Ok(vars) => vars,
                    Err(e) => {
                        let message = format!("handler failed: {}", e.describe());
                        return Err(step.fail_node(token, at, message));
                    }
                };
                if let Some((name, problem)) = check_vars(&step.dep.def, &vars).first() {
                    let message = format!("handler returned variable '{name}' that is {problem}");
                    return Err(step.fail_node(token, at, message));
                }
                if !vars.is_empty() {
                    step.apply(Change::SetVars(vars.take()));
                }
                step.apply(Change::Flow {
                    token: Some(token),
                    from: at,
                    to: next,
                    actor: None,
                });
                step.run()
            }))
        })
    }
}
