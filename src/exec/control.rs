//! Cancellation and the control-flow constructs that withdraw or wait for a subset of the
//! branches: [`Engine::cancel`], inclusive gateways (OR-split, OR-join), partial joins
//! (`wait_for`, `cancel_rest`), terminating ends and cancel regions.
//!
//! **Invariant:** every change here goes through [`Step::apply`]; a token is withdrawn only by
//! [`Change::Withdraw`], so its open task ends `Cancelled` and its timers go with it.
//!
//! The inclusive join's rule holds because the graph is acyclic and validation matched each
//! inclusive join with its split: the join fires once tokens arrived and no live token of the
//! instance sits in the region between the split and the join (nodes from which the join is
//! reachable). It is checked at the end of each run-to-completion pass, when every token waits,
//! has failed, or is joined.

use super::step::{Change, Step};
use super::{Engine, ExecError};
use crate::def::control::NodeControl;
use crate::def::{Behaviour, Node};
use crate::ids::{InstanceId, NodeId, RoleId};
use crate::model::{Status, Token, TokenState};
use crate::raci::Actor;

impl Engine {
    /// Cancels an instance (撤单): withdraws every token, so that its open tasks end
    /// [`TaskState::Cancelled`](crate::TaskState::Cancelled) and their timers are dropped, drops
    /// the SLA's timers, and ends the instance as [`Status::Cancelled`]. Allowed to the process's
    /// accountable role: the definition's `accountable:`, else its SLA's `accountable`.
    ///
    /// The audit trail records [`Entry::Cancelled`](crate::Entry::Cancelled) with `reason`;
    /// hooks hear [`Event::TaskCancelled`](crate::Event::TaskCancelled) per open task and
    /// [`Event::InstanceCancelled`](crate::Event::InstanceCancelled); the SLA's informed roles and
    /// those of the cancelled tasks are told through the outbox
    /// ([`Event::CancelNotice`](crate::Event::CancelNotice)).
    ///
    /// # Errors
    /// [`ExecError::CancelDenied`] when `actor` does not hold the accountable role (the attempt
    /// is recorded as [`Entry::CancelDenied`](crate::Entry::CancelDenied), nothing else
    /// changes); [`ExecError::NoAccountable`] when the process names no accountable role;
    /// [`ExecError::InstanceCompleted`] or [`ExecError::InstanceCancelled`] when it has ended;
    /// [`ExecError::UnknownInstance`].
    pub fn cancel(
        &self,
        instance: InstanceId,
        actor: &Actor,
        reason: &str,
    ) -> Result<(), ExecError> {
        crate::telemetry::call!("cancel", instance = %instance, actor = %actor.id);
        let now = self.clock.now();
        self.call(instance, |slot| {
            match slot.inst.status {
                Status::Completed => return Err(ExecError::InstanceCompleted(instance)),
                Status::Cancelled => return Err(ExecError::InstanceCancelled(instance)),
                _ => {}
            }
            let Some(role) = slot.dep.def.accountable.clone() else {
                return Err(ExecError::NoAccountable(instance));
            };
            if !self.authorizer.holds(&role, actor) {
                let allowed = vec![role];
                return Ok(self.step_slot(slot, now, |step| {
                    step.apply(Change::CancelDenied {
                        actor: &actor.id,
                        allowed: &allowed,
                    });
                    Err(ExecError::CancelDenied {
                        instance,
                        actor: actor.id.clone(),
                        allowed: allowed.clone(),
                    })
                }));
            }
            Ok(self.step_slot(slot, now, |step| {
                step.cancel_instance(actor, reason);
                Ok(())
            }))
        })
    }
}

impl Step<'_> {
    /// Withdraws every token and cancels the instance.
    pub(super) fn cancel_instance(&mut self, actor: &Actor, reason: &str) {
        let def = &*self.dep.def;
        // Told: the SLA's informed roles and those of every task still open.
        let mut informed: Vec<RoleId> = def
            .sla
            .as_deref()
            .map(|s| s.informed.clone())
            .unwrap_or_default();
        for task in self.inst.tasks.iter().filter(|t| t.is_open()) {
            if let Some(raci) = def.nodes[task.node.index()].raci() {
                for role in raci.informed() {
                    if !informed.contains(role) {
                        informed.push(role.clone());
                    }
                }
            }
        }
        if self.inst.has_detached() {
            // Items that run without their token (`wait: false`) go too.
            self.drop_detached(|_| true);
        }
        while let Some(last) = self.inst.tokens.len().checked_sub(1) {
            self.apply(Change::Withdraw { token: last });
        }
        self.apply(Change::Cancel {
            actor: &actor.id,
            reason,
            informed: &informed,
        });
    }

    /// Withdraws every token `pick` chooses except token `keep` (`usize::MAX` keeps none).
    /// Gives where `keep` is afterwards (withdrawing moves the last token into the gap) and how
    /// many were withdrawn.
    fn withdraw_others(&mut self, keep: usize, pick: impl Fn(&Token) -> bool) -> (usize, usize) {
        let (mut keep, mut withdrawn) = (keep, 0);
        let mut j = self.inst.tokens.len();
        while j > 0 {
            j -= 1;
            if j == keep || !pick(&self.inst.tokens[j]) {
                continue;
            }
            let last = self.inst.tokens.len() - 1;
            self.apply(Change::Withdraw { token: j });
            if keep == last {
                keep = j;
            }
            withdrawn += 1;
        }
        (keep, withdrawn)
    }

    /// What a node's control does when ready token `i` is there: withdraws its cancel region,
    /// terminates at a terminating end, joins at a partial join. Gives the token's index when
    /// the node's ordinary behaviour is still to run, `None` when the token was dealt with.
    pub(super) fn enter_control(
        &mut self,
        i: usize,
        at: NodeId,
        node: &Node,
        control: &NodeControl,
        failure: &mut Option<ExecError>,
    ) -> Option<usize> {
        let mut i = i;
        if !control.cancels.is_empty() {
            self.apply(Change::RegionCancelled { node: at });
            if self.inst.has_detached() {
                self.drop_detached(|n| control.cancels.contains(&n));
            }
            i = self
                .withdraw_others(i, |t| control.cancels.contains(&t.node))
                .0;
        }
        match node.behaviour {
            Behaviour::End if control.terminate => {
                self.apply(Change::Terminate { node: at });
                if self.inst.has_detached() {
                    self.drop_detached(|_| true);
                }
                let (i, _) = self.withdraw_others(i, |_| true);
                self.apply(Change::End { token: i });
                None
            }
            Behaviour::Parallel if node.incoming > 1 => match control.wait_for {
                Some(n) => {
                    self.partial_join(i, at, node, control, n);
                    None
                }
                None => Some(i),
            },
            Behaviour::Inclusive { .. } => {
                self.inclusive(i, at, node, failure);
                None
            }
            _ => Some(i),
        }
    }

    /// A token at a partial join: absorbed when the join already fired, else it arrives; the
    /// `n`th arrival fires the join and withdraws the rest (`cancel_rest`) or leaves them to be
    /// absorbed.
    fn partial_join(&mut self, i: usize, at: NodeId, node: &Node, control: &NodeControl, n: u32) {
        let absorbing = self
            .inst
            .rare
            .as_deref()
            .is_some_and(|r| r.absorbing.iter().any(|a| a.node == at && a.left > 0));
        if absorbing {
            self.apply(Change::Absorb { token: i });
            return;
        }
        if self.arrive(i, at) < n {
            return;
        }
        self.apply(Change::Joined { join: at });
        if control.cancel_rest {
            // The rest: the branches still in the region, and those that reached the join in
            // this pass but have not arrived yet (a ready token at the join itself).
            self.withdraw_others(usize::MAX, |t| {
                control.region.contains(t.node.index())
                    || (t.node == at && t.state == TokenState::Ready)
            });
        } else if node.incoming > n {
            self.apply(Change::Absorbing {
                join: at,
                left: node.incoming - n,
            });
        }
        for &to in &node.next {
            self.apply(Change::Flow {
                token: None,
                from: at,
                to,
                actor: None,
            });
        }
    }

    /// A token at an inclusive gateway: at a join it arrives (the join fires at the end of the
    /// pass, see [`Step::fire_or_join`]); otherwise it leaves by the routes that hold.
    pub(super) fn inclusive(
        &mut self,
        i: usize,
        at: NodeId,
        node: &Node,
        failure: &mut Option<ExecError>,
    ) {
        if node.incoming > 1 {
            self.apply(Change::Arrive { token: i });
        } else {
            self.leave_inclusive(i, at, node, failure);
        }
    }

    /// Token `i` leaves an inclusive gateway: by every route whose condition holds (one token
    /// each), by the default route when none holds, or by its one flow when it only joins.
    fn leave_inclusive(
        &mut self,
        i: usize,
        at: NodeId,
        node: &Node,
        failure: &mut Option<ExecError>,
    ) {
        let Behaviour::Inclusive { routes, default } = &node.behaviour else {
            return;
        };
        let def = &*self.dep.def;
        let mut chosen: Vec<(NodeId, Option<u32>)> = Vec::new();
        if routes.is_empty() && default.is_none() {
            match node.next.first() {
                Some(&to) => chosen.push((to, None)),
                None => {
                    let message = "an inclusive gateway without routes or 'next'".to_owned();
                    failure.get_or_insert(self.fail_node(i, at, message));
                    return;
                }
            }
        } else {
            for (n, route) in routes.iter().enumerate() {
                match route.cond.eval(&def.cel, &self.inst.vars) {
                    Ok(true) => chosen.push((route.to, Some(n as u32))),
                    Ok(false) => {}
                    Err(message) => {
                        failure.get_or_insert(self.fail_node(i, at, message));
                        return;
                    }
                }
            }
            if chosen.is_empty() {
                match default {
                    Some(d) => chosen.push((*d, None)),
                    None => {
                        let message =
                            "no route's condition holds and there is no default".to_owned();
                        failure.get_or_insert(self.fail_node(i, at, message));
                        return;
                    }
                }
            }
            for &(to, route) in &chosen {
                self.apply(Change::Route {
                    gateway: at,
                    to,
                    route,
                });
            }
        }
        let mut token = Some(i);
        for (to, _) in chosen {
            self.apply(Change::Flow {
                token: token.take(),
                from: at,
                to,
                actor: None,
            });
        }
    }

    /// The first ready token; when there is none, fires an inclusive join that has nothing
    /// left to wait for (its token is then ready, or failed) and looks again.
    #[inline(always)]
    pub(super) fn next_ready(&mut self, failure: &mut Option<ExecError>) -> Option<usize> {
        loop {
            let ready = self
                .inst
                .tokens
                .iter()
                .position(|t| t.state == TokenState::Ready);
            // Embedded sub-processes whose scope ended (see `scope.rs`).
            if ready.is_none() && !self.dep.def.scopes.is_empty() && self.settle_scopes() {
                continue;
            }
            if ready.is_some() || self.dep.def.or_joins.is_empty() || !self.fire_or_join(failure) {
                return ready;
            }
        }
    }

    /// Fires the first inclusive join that has arrivals and no live token left in its region,
    /// and runs its token out of it. Gives whether one fired.
    pub(super) fn fire_or_join(&mut self, failure: &mut Option<ExecError>) -> bool {
        let dep = self.dep;
        let def = &*dep.def;
        for &join in &def.or_joins {
            let node = &def.nodes[join.index()];
            let Some(control) = node.control.as_deref() else {
                continue;
            };
            let tokens = &self.inst.tokens;
            let arrived = tokens
                .iter()
                .any(|t| t.node == join && t.state == TokenState::Joined);
            if !arrived
                || tokens
                    .iter()
                    .any(|t| control.region.contains(t.node.index()))
            {
                continue;
            }
            self.apply(Change::OrJoined { join });
            if let Some(i) = self
                .inst
                .tokens
                .iter()
                .position(|t| t.node == join && t.state == TokenState::Ready)
            {
                self.leave_inclusive(i, join, node, failure);
            }
            return true;
        }
        false
    }
}
