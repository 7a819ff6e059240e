//! Rules on user tasks beyond their RACI and time limits: send back (退回, `send_back`),
//! milestones (`while_at`, WCP 18), interleaving groups (`mutex`, WCP 17, 39, 40) and the
//! variables a completion may set (`sets`, the task's form).
//!
//! **Invariant:** a compiled `send_back` target is an earlier user task of the same node (a flow
//! leads from it to the task), and no parallel join between the two waits for a branch that
//! does not pass through the target: sending back withdraws everything after the target and
//! runs it again, so a join there would otherwise wait for a branch that never comes again.

use std::collections::HashMap;

use indexmap::IndexMap;

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Dfs, Reversed};

use super::raw::{At, Names, RawNode};
use super::{Behaviour, Location, Node, Problem, ProblemKind};
use crate::ids::NodeId;
use crate::vars::VarSpec;

/// A user task's send-back targets, milestones and interleaving group.
#[derive(Debug, Default)]
pub(crate) struct TaskRules {
    /// The earlier user tasks the case may be sent back to from this task.
    pub(crate) send_back: Vec<NodeId>,
    /// The task is enabled only while a token of its instance is at one of these nodes (empty:
    /// always).
    pub(crate) while_at: Vec<NodeId>,
    /// At most one task of this group is claimed at a time within an instance.
    pub(crate) mutex: Option<Box<str>>,
    /// The declared variables a completion may set (`None`: any declared variable).
    pub(crate) sets: Option<Vec<Box<str>>>,
}

/// Compiles every node's rules into `nodes` (index `i` of `raw` is node `i`), reporting every
/// problem. Ancestry and joins are only checked on an acyclic graph (a cycle is reported alone).
pub(super) fn compile(
    raw: &[&RawNode],
    vars: &IndexMap<String, VarSpec>,
    index: &HashMap<&str, NodeId>,
    graph: &DiGraph<NodeId, ()>,
    acyclic: bool,
    nodes: &mut [Node],
    problems: &mut Vec<Problem>,
) {
    for (i, raw) in raw.iter().enumerate() {
        if raw.send_back.is_none()
            && raw.while_at.is_none()
            && raw.mutex.is_none()
            && raw.sets.is_none()
        {
            continue;
        }
        let id = nodes[i].id.clone();
        let mut add = |loc: Location, key: &str, kind: ProblemKind| {
            problems.push(Problem {
                location: Some(loc),
                path: format!("nodes.{id}.{key}"),
                kind,
            });
        };
        if !matches!(nodes[i].behaviour, Behaviour::UserTask(_)) {
            let kind = raw.kind.value.as_str();
            let keys = [
                ("send_back", raw.send_back.as_ref().map(|a| a.loc)),
                ("while_at", raw.while_at.as_ref().map(|a| a.loc)),
                ("mutex", raw.mutex.as_ref().map(|a| a.loc)),
                ("sets", raw.sets.as_ref().map(|a| a.loc)),
            ];
            for (key, loc) in keys {
                if let Some(loc) = loc {
                    add(loc, key, ProblemKind::KeyNotAllowed { key, kind });
                }
            }
            continue;
        }
        let mut rules = TaskRules::default();
        let here = NodeIndex::new(i);
        // The nodes from which a flow leads here.
        let earlier = acyclic.then(|| {
            let reversed = Reversed(graph);
            let mut seen = vec![false; nodes.len()];
            let mut dfs = Dfs::new(reversed, here);
            while let Some(n) = dfs.next(reversed) {
                seen[n.index()] = true;
            }
            seen
        });
        for (name, loc) in names(raw.send_back.as_ref()) {
            let Some(&target) = index.get(name) else {
                add(loc, "send_back", ProblemKind::UnknownNode(name.to_owned()));
                continue;
            };
            let bad = |reason: String| ProblemKind::BadSendBack {
                target: name.to_owned(),
                reason,
            };
            let node = &nodes[target.index()];
            if target.index() == i {
                add(loc, "send_back", bad("it is this task itself".into()));
            } else if !matches!(node.behaviour, Behaviour::UserTask(_)) {
                let kind = node.kind().as_str();
                add(
                    loc,
                    "send_back",
                    bad(format!(
                        "it is {} {kind} node, not a user task",
                        article(kind)
                    )),
                );
            } else if let Some(earlier) = &earlier {
                if !earlier[target.index()] {
                    let reason = "it is not an earlier task: no flow leads from it to this task";
                    add(loc, "send_back", bad(reason.into()));
                } else if let Some(join) = crossed_join(graph, nodes, target, earlier) {
                    add(
                        loc,
                        "send_back",
                        bad(format!(
                            "parallel join '{}' between them also waits for branches that do not \
                             pass through it, and those would not run again",
                            nodes[join.index()].id
                        )),
                    );
                } else if !rules.send_back.contains(&target) {
                    rules.send_back.push(target);
                }
            }
        }
        for (name, loc) in names(raw.while_at.as_ref()) {
            let Some(&target) = index.get(name) else {
                add(loc, "while_at", ProblemKind::UnknownNode(name.to_owned()));
                continue;
            };
            let bad = |reason: String| ProblemKind::BadMilestone {
                target: name.to_owned(),
                reason,
            };
            let node = &nodes[target.index()];
            let rests = match node.behaviour {
                Behaviour::Start
                | Behaviour::End
                | Behaviour::Exclusive { .. }
                | Behaviour::ServiceTask { .. } => false,
                Behaviour::Parallel => node.incoming > 1,
                _ => true,
            };
            if target.index() == i {
                add(loc, "while_at", bad("it is this task itself".into()));
            } else if !rests {
                let kind = node.kind().as_str();
                add(
                    loc,
                    "while_at",
                    bad(format!(
                        "no token waits at {} {kind} node; a milestone is a user task, a timer or \
                         a parallel join",
                        article(kind)
                    )),
                );
            } else if earlier.as_ref().is_some_and(|e| e[target.index()]) {
                add(
                    loc,
                    "while_at",
                    bad(
                        "it comes before this task, so no token is there while the task is open"
                            .into(),
                    ),
                );
            } else if !rules.while_at.contains(&target) {
                rules.while_at.push(target);
            }
        }
        if let Some(group) = &raw.mutex {
            if super::validate::valid_id(&group.value) {
                rules.mutex = Some(Box::from(group.value.as_str()));
            } else {
                add(
                    group.loc,
                    "mutex",
                    ProblemKind::InvalidId(group.value.clone()),
                );
            }
        }
        if raw.sets.is_some() {
            let mut sets: Vec<Box<str>> = Vec::new();
            for (name, loc) in names(raw.sets.as_ref()) {
                if !vars.contains_key(name) {
                    let name = name.to_owned();
                    add(
                        loc,
                        "sets",
                        ProblemKind::UnknownVariable { key: "sets", name },
                    );
                } else if !sets.iter().any(|s| &**s == name) {
                    sets.push(Box::from(name));
                }
            }
            rules.sets = Some(sets);
        }
        nodes[i].rules = Some(Box::new(rules));
    }
}

/// "a" or "an" before a node kind.
fn article(kind: &str) -> &'static str {
    if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// Each name with its location.
fn names(names: Option<&At<Names>>) -> impl Iterator<Item = (&str, Location)> {
    names.into_iter().flat_map(|n| n.value.located(n.loc))
}

/// A parallel join on a path from `target` to the task (`earlier`: the nodes that lead to the
/// task) that has an incoming flow not from `target` or after it.
fn crossed_join(
    graph: &DiGraph<NodeId, ()>,
    nodes: &[Node],
    target: NodeId,
    earlier: &[bool],
) -> Option<NodeIndex> {
    let after = descendants(graph, target);
    (0..nodes.len())
        .filter(|&j| after[j] && earlier[j])
        .filter(|&j| matches!(nodes[j].behaviour, Behaviour::Parallel) && nodes[j].incoming > 1)
        .map(NodeIndex::new)
        .find(|&j| {
            graph
                .neighbors_directed(j, Direction::Incoming)
                .any(|p| !after[p.index()])
        })
}

/// `node` and every node a flow leads to from it, by index.
pub(crate) fn descendants(graph: &DiGraph<NodeId, ()>, node: NodeId) -> Vec<bool> {
    let mut seen = vec![false; graph.node_count()];
    let mut dfs = Dfs::new(graph, NodeIndex::new(node.index()));
    while let Some(n) = dfs.next(graph) {
        seen[n.index()] = true;
    }
    seen
}
