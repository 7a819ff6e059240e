//! Consistency of the state the control-flow constructs leave on an instance: joined tokens,
//! partial joins absorbing late branches, and cancelled instances.

use super::instance::{Instance, Status, TokenState};
use crate::def::{Behaviour, ProcessDef};

impl Instance {
    /// Checks what cancellation and the joins leave (see [`Instance::check`]): a token joined
    /// only at a join, a partial join absorbing only as many branches as it did not wait for,
    /// and a cancelled instance with no token, open task or armed timer left and an end time.
    pub(crate) fn check_control(&self, def: &ProcessDef) -> Result<(), String> {
        for t in &self.tokens {
            if t.state == TokenState::Joined {
                let node = &def.nodes[t.node.index()];
                let joins = node.incoming > 1
                    && matches!(
                        node.behaviour,
                        Behaviour::Parallel | Behaviour::Inclusive { .. }
                    );
                if !joins {
                    return Err(format!(
                        "a token is joined at '{}', which is not a join",
                        node.id
                    ));
                }
            }
        }
        for a in self.rare.as_deref().map_or(&[][..], |r| &r.absorbing[..]) {
            let Some(node) = def.try_node(a.node) else {
                return Err(format!(
                    "a partial join names node {}, which {} lacks",
                    a.node.index(),
                    def.key
                ));
            };
            let wait_for = node
                .control
                .as_ref()
                .filter(|c| !c.cancel_rest)
                .and_then(|c| c.wait_for);
            match wait_for {
                Some(n) if a.left >= 1 && a.left <= node.incoming.saturating_sub(n) => {}
                Some(_) => {
                    return Err(format!(
                        "partial join '{}' absorbs {} more branches, more than it has",
                        node.id, a.left
                    ));
                }
                None => {
                    return Err(format!(
                        "'{}' absorbs late branches but is not a partial join",
                        node.id
                    ));
                }
            }
        }
        if self.status == Status::Cancelled {
            if !self.tokens.is_empty() {
                return Err("a cancelled instance still has tokens".to_owned());
            }
            if self.tasks.iter().any(|t| t.is_open()) {
                return Err("a cancelled instance still has an open task".to_owned());
            }
            if self.timers.iter().any(|t| !t.fired) {
                return Err("a cancelled instance still has an armed timer".to_owned());
            }
            if self.ended_at.is_none() {
                return Err("a cancelled instance has no end time".to_owned());
            }
        }
        Ok(())
    }
}
