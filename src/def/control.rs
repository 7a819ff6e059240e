//! Cancellation, termination and the joins that do not wait for every flow: what a node's
//! `wait_for`, `cancel_rest`, `terminate` and `cancels` keys compile to, and the regions the
//! executor scans for inclusive joins (OR-joins) and cancelling partial joins.
//!
//! **Invariant:** a [`NodeControl`] exists only on nodes that use one of these keys or are an
//! inclusive join; every other node pays one null pointer for them.

use std::collections::HashMap;

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Dfs, Reversed};

use super::raw::{At, RawKind, RawNode};
use super::{Behaviour, Location, Node, Problem, ProblemKind};
use crate::ids::{NodeId, RoleId};

/// What a node does beyond its kind.
#[derive(Debug, Default)]
pub(crate) struct NodeControl {
    /// A partial join: it fires once this many branches arrived.
    pub(crate) wait_for: Option<u32>,
    /// With `wait_for`: the branches that did not arrive are withdrawn when it fires.
    pub(crate) cancel_rest: bool,
    /// A terminating end: reaching it withdraws every other token and completes the instance.
    pub(crate) terminate: bool,
    /// A cancel region: entering the node withdraws every live token at these nodes.
    pub(crate) cancels: Vec<NodeId>,
    /// For an inclusive join or a cancelling partial join: the nodes strictly between its split
    /// and it (those from which it is reachable, inside the split's region).
    pub(crate) region: Bits,
}

/// A set of node indices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Bits(Vec<u64>);

impl Bits {
    pub(crate) fn with_len(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }

    pub(crate) fn insert(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }

    pub(crate) fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

fn add(problems: &mut Vec<Problem>, loc: Location, path: String, kind: ProblemKind) {
    problems.push(Problem {
        location: Some(loc),
        path,
        kind,
    });
}

/// Compiles a node's control keys (before the graph exists: `wait_for` is checked against the
/// number of incoming flows later, in [`finish`]).
pub(super) fn compile_node(
    id: &str,
    raw: &RawNode,
    index: &HashMap<&str, NodeId>,
    problems: &mut Vec<Problem>,
) -> Option<Box<NodeControl>> {
    let kind = raw.kind.value;
    let path = |key: &str| format!("nodes.{id}.{key}");
    let not_allowed = |key: &'static str, loc: Location, problems: &mut Vec<Problem>| {
        add(
            problems,
            loc,
            path(key),
            ProblemKind::KeyNotAllowed {
                key,
                kind: kind.as_str(),
            },
        );
    };
    let mut control = NodeControl::default();
    let mut any = kind == RawKind::Inclusive;
    if let Some(w) = &raw.wait_for {
        any = true;
        if kind == RawKind::Parallel {
            control.wait_for = Some(w.value);
        } else {
            not_allowed("wait_for", w.loc, problems);
        }
    }
    if let Some(c) = &raw.cancel_rest {
        any = true;
        if kind != RawKind::Parallel {
            not_allowed("cancel_rest", c.loc, problems);
        } else if raw.wait_for.is_none() {
            add(
                problems,
                c.loc,
                path("cancel_rest"),
                ProblemKind::ControlShape("'cancel_rest' needs 'wait_for' (a partial join)"),
            );
        }
        control.cancel_rest = c.value;
    }
    if let Some(t) = &raw.terminate {
        any = true;
        if kind == RawKind::End {
            control.terminate = t.value;
        } else {
            not_allowed("terminate", t.loc, problems);
        }
    }
    if let Some(cancels) = &raw.cancels {
        any = true;
        for (name, loc) in cancels.value.located(cancels.loc) {
            match index.get(name) {
                None => add(
                    problems,
                    loc,
                    path("cancels"),
                    ProblemKind::UnknownNode(name.to_owned()),
                ),
                Some(_) if name == id => add(
                    problems,
                    loc,
                    path("cancels"),
                    ProblemKind::CancelsItself(id.to_owned()),
                ),
                Some(n) if control.cancels.contains(n) => {}
                Some(n) => control.cancels.push(*n),
            }
        }
    }
    any.then(|| Box::new(control))
}

/// The process's accountable role (who may cancel an instance): `accountable:`, else the SLA's.
pub(super) fn accountable(
    raw: Option<&At<String>>,
    sla: Option<&RoleId>,
    roles: &indexmap::IndexMap<RoleId, super::Role>,
    problems: &mut Vec<Problem>,
) -> Option<RoleId> {
    match raw {
        Some(a) => {
            let role = RoleId(a.value.clone());
            if roles.contains_key(&role) {
                Some(role)
            } else {
                add(
                    problems,
                    a.loc,
                    "accountable".into(),
                    ProblemKind::UnknownRole(a.value.clone()),
                );
                None
            }
        }
        None => sla.filter(|r| !r.as_str().is_empty()).cloned(),
    }
}

/// After the graph and the join check: checks `wait_for` against the incoming flows and gives
/// each inclusive join and cancelling partial join its region. `splits` maps a join to the
/// split whose branches it joins (absent when the join check found none). Returns the
/// inclusive joins.
pub(super) fn finish(
    graph: &DiGraph<NodeId, ()>,
    nodes: &mut [Node],
    splits: &HashMap<NodeIndex, NodeIndex>,
    problems: &mut Vec<Problem>,
) -> Vec<NodeId> {
    let mut or_joins = Vec::new();
    for i in 0..nodes.len() {
        let node = &nodes[i];
        let Some(control) = &node.control else {
            continue;
        };
        let inclusive_join =
            matches!(node.behaviour, Behaviour::Inclusive { .. }) && node.incoming > 1;
        if let Some(n) = control.wait_for
            && (n == 0 || n >= node.incoming)
        {
            add(
                problems,
                node.location,
                format!("nodes.{}.wait_for", node.id),
                ProblemKind::WaitFor {
                    found: n,
                    incoming: node.incoming,
                },
            );
        }
        let needs_region = inclusive_join || (control.wait_for.is_some() && control.cancel_rest);
        if inclusive_join {
            or_joins.push(NodeId(i as u32));
        }
        if !needs_region {
            continue;
        }
        let Some(&split) = splits.get(&NodeIndex::new(i)) else {
            continue;
        };
        let mut below = Bits::with_len(nodes.len());
        let mut dfs = Dfs::new(graph, split);
        while let Some(n) = dfs.next(graph) {
            below.insert(n.index());
        }
        let mut region = Bits::with_len(nodes.len());
        let reversed = Reversed(graph);
        let mut dfs = Dfs::new(reversed, NodeIndex::new(i));
        while let Some(n) = dfs.next(reversed) {
            if n.index() != i && n != split && below.contains(n.index()) {
                region.insert(n.index());
            }
        }
        if let Some(control) = &mut nodes[i].control {
            control.region = region;
        }
    }
    or_joins
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_hold_what_was_inserted() {
        let mut b = Bits::with_len(130);
        b.insert(0);
        b.insert(64);
        b.insert(129);
        b.insert(1000);
        assert!(b.contains(0) && b.contains(64) && b.contains(129));
        assert!(!b.contains(1) && !b.contains(128) && !b.contains(1000));
    }
}
