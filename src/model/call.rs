//! What call activities (WCP 22) leave on an instance: the children its calls started
//! ([`Instance::children`]) and the call that started it ([`Instance::parent`]), and their
//! consistency in a restored state.

use super::instance::{Instance, Rare, Status, TokenState};
use crate::def::{Behaviour, ProcessDef};
use crate::ids::{InstanceId, NodeId};

impl Instance {
    /// The instance whose call activity started this one, if any.
    pub fn parent(&self) -> Option<InstanceId> {
        self.rare
            .as_deref()
            .and_then(|r| r.parent.as_ref())
            .map(|p| p.instance)
    }

    /// The parent's call activity node that started this instance (a node of the parent's
    /// definition), if any.
    pub fn parent_node(&self) -> Option<NodeId> {
        self.rare
            .as_deref()
            .and_then(|r| r.parent.as_ref())
            .map(|p| p.node)
    }

    /// How deep in a call chain this instance runs: 0 for one a host started, 1 for its
    /// children, and so on.
    pub fn call_depth(&self) -> u32 {
        self.rare
            .as_deref()
            .and_then(|r| r.parent.as_ref())
            .map_or(0, |p| p.depth)
    }

    /// Every child instance this instance's call activities started, oldest first, with the
    /// call node and whether the call still waits for it.
    pub fn children(&self) -> Vec<(InstanceId, NodeId, bool)> {
        self.rare.as_deref().map_or_else(Vec::new, |r| {
            r.calls.iter().map(|c| (c.child, c.node, c.open)).collect()
        })
    }
}

/// Whether a token waiting at `node` waits for a child (see [`Instance::check`]).
pub(super) fn waits(inst: &Instance, def: &ProcessDef, node: NodeId) -> bool {
    matches!(def.nodes[node.index()].behaviour, Behaviour::Call(_))
        && inst.rare.as_deref().is_some_and(|r| {
            r.calls.iter().any(|c| c.node == node && c.open)
                || r.multi.iter().any(|m| m.node == node)
        })
}

/// Checks a restored instance's calls: each names a call activity, an open call has its token
/// waiting (or failed) there in a running instance, and an incident it names exists.
pub(super) fn check(inst: &Instance, rare: &Rare, def: &ProcessDef) -> Result<(), String> {
    for c in &rare.calls {
        let Some(node) = def.try_node(c.node) else {
            return Err(format!(
                "a call names node {}, which {} lacks",
                c.node.index(),
                def.key
            ));
        };
        if !matches!(node.behaviour, Behaviour::Call(_)) {
            return Err(format!(
                "child {} was started at '{}', which is not a call activity",
                c.child, node.id
            ));
        }
        if c.open
            && inst.status == Status::Running
            && !inst.tokens.iter().any(|t| {
                t.node == c.node && matches!(t.state, TokenState::Waiting | TokenState::Failed)
            })
        {
            return Err(format!(
                "call '{}' waits for child {}, but no token waits there",
                node.id, c.child
            ));
        }
        if c.incident
            .is_some_and(|i| i as usize >= rare.incidents.len())
        {
            return Err(format!(
                "call '{}' names an incident that does not exist",
                node.id
            ));
        }
    }
    // A multi-instance call's running item has its child.
    for m in &rare.multi {
        for (k, s) in m.state.iter().enumerate() {
            if *s == super::instance::ItemState::Called
                && !rare
                    .calls
                    .iter()
                    .any(|c| c.node == m.node && c.open && c.item == Some(k as u32))
            {
                return Err(format!(
                    "item {k} of '{}' waits for a child that no call names",
                    def.nodes.get(m.node.index()).map_or("?", |n| n.id.as_str())
                ));
            }
        }
    }
    if let Some(p) = &rare.parent
        && (p.depth == 0 || p.instance == inst.id)
    {
        return Err(format!(
            "instance {} names itself or depth 0 as its parent call",
            inst.id
        ));
    }
    Ok(())
}
