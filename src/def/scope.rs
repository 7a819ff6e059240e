//! Embedded sub-processes (`kind: subprocess`): a scope with its own start, nodes and ends,
//! declared inline under the sub-process node's `nodes`.
//!
//! The loader flattens a scope's nodes into the definition's one node list, each with a
//! qualified id (`fix.repair`) and the sub-process node as its `parent`. Names inside a scope
//! (`next`, routes, `timeout.to`, cancel regions) resolve inside that scope; a flow naming an
//! outer node is refused ([`ProblemKind::LeavesScope`]). For the graph checks the sub-process
//! node gets one extra edge to its scope's start, so reachability, "an end is reachable" and
//! the cycle check see the scope; the join check labels the scope's flows on their own (a
//! scope's forks join inside it).
//!
//! At run time the sub-process node's token waits there while the scope runs; when no token is
//! left inside the scope it leaves by its `next` (see `exec/scope.rs`).

use std::collections::{HashMap, HashSet};

use super::control::Bits;
use super::raw::{At, Entries, RawKind, RawNode, RawVar};
use super::validate::{MAX_NODES, Report, unique};
use super::{Behaviour, Node, ProblemKind};
use crate::def::Location;
use crate::ids::NodeId;
use crate::vars::VarSpec;

/// How deep sub-processes may nest.
pub(super) const MAX_DEPTH: usize = 8;

/// A compiled scope.
#[derive(Debug)]
pub(crate) struct Scope {
    /// The sub-process node.
    pub(crate) node: NodeId,
    /// Every node inside it, nested scopes' nodes included.
    pub(crate) members: Bits,
    /// Its local variables: cleared when the scope is entered and when it is left. In a
    /// multi-instance sub-process, each run has its own (see `exec/runs.rs`).
    pub(crate) locals: Vec<String>,
    /// Whether the sub-process has `for_each`: its scope runs once per item, each run's tokens
    /// marked with the run ([`crate::Token::run`]).
    pub(crate) multi: bool,
}

/// One node of the flattened list.
pub(super) struct Flat<'a> {
    /// The qualified id (`fix.repair`).
    pub(super) id: String,
    /// The id inside its scope (`repair`).
    pub(super) local: &'a str,
    pub(super) loc: Location,
    pub(super) node: &'a RawNode,
    /// The index (in the flat list) of the sub-process whose scope it is in.
    pub(super) parent: Option<usize>,
    /// A sub-process nested too deep: its scope was not read (and is reported as that alone).
    pub(super) too_deep: bool,
}

/// Flattens the nodes, scope by scope: a sub-process node comes before its scope's nodes.
/// Reports duplicate and invalid ids per scope, and too deep or too many nodes.
pub(super) fn flatten<'a>(nodes: &'a Entries<RawNode>, report: &mut Report) -> Vec<Flat<'a>> {
    let mut out = Vec::new();
    walk(nodes, None, "", "nodes", 0, &mut out, report);
    out
}

fn walk<'a>(
    nodes: &'a Entries<RawNode>,
    parent: Option<usize>,
    prefix: &str,
    section: &str,
    depth: usize,
    out: &mut Vec<Flat<'a>>,
    report: &mut Report,
) {
    for (key, node) in unique(nodes, "node", section, report) {
        if out.len() >= MAX_NODES {
            report.add(
                key.loc,
                format!("{section}.{}", key.value),
                ProblemKind::TooMany {
                    what: "nodes",
                    found: out.len() as u64 + 1,
                    limit: MAX_NODES as u64,
                },
            );
            return;
        }
        let id = format!("{prefix}{}", key.value);
        let me = out.len();
        out.push(Flat {
            id: id.clone(),
            local: &key.value,
            loc: key.loc,
            node: &node.value,
            parent,
            too_deep: false,
        });
        if let Some(inner) = &node.value.nodes
            && node.value.kind.value == RawKind::Subprocess
        {
            if depth + 1 >= MAX_DEPTH {
                report.add(
                    inner.loc,
                    format!("{section}.{}.nodes", key.value),
                    ProblemKind::ScopeTooDeep(MAX_DEPTH),
                );
                out[me].too_deep = true;
                continue;
            }
            walk(
                &inner.value,
                Some(me),
                &format!("{id}."),
                &format!("{section}.{}.nodes", key.value),
                depth + 1,
                out,
                report,
            );
        }
    }
}

/// The names each scope resolves (`None`: the top level), by local id.
pub(super) fn indices<'a>(
    flat: &'a [Flat<'a>],
) -> HashMap<Option<usize>, HashMap<&'a str, NodeId>> {
    let mut out: HashMap<Option<usize>, HashMap<&str, NodeId>> = HashMap::new();
    for (i, f) in flat.iter().enumerate() {
        out.entry(f.parent)
            .or_default()
            .insert(f.local, NodeId(i as u32));
    }
    out
}

/// For each scope, the names of its enclosing scopes (to tell "leaves the scope" from
/// "unknown").
pub(super) fn outer_names<'a>(flat: &'a [Flat<'a>]) -> HashMap<usize, HashSet<&'a str>> {
    let mut out: HashMap<usize, HashSet<&str>> = HashMap::new();
    for f in flat {
        let Some(p) = f.parent else { continue };
        if out.contains_key(&p) {
            continue;
        }
        let mut names = HashSet::new();
        let mut at = flat[p].parent;
        // The sub-process's own scope and every scope around it.
        loop {
            names.extend(flat.iter().filter(|g| g.parent == at).map(|g| g.local));
            match at {
                Some(a) => at = flat[a].parent,
                None => break,
            }
        }
        out.insert(p, names);
    }
    out
}

/// Declares each scope's local variables beside the definition's, refusing a name already
/// declared and a `required` local (a local has no value until its scope sets one).
pub(super) fn locals(
    flat: &[Flat<'_>],
    declared: &Entries<RawVar>,
    vars: &mut indexmap::IndexMap<String, VarSpec>,
    report: &mut Report,
) -> HashMap<usize, Vec<String>> {
    let mut out: HashMap<usize, Vec<String>> = HashMap::new();
    // The item names of multi-instance sub-processes (several may share one).
    let mut items: HashSet<String> = HashSet::new();
    // Where each name was first declared, for a duplicate's message.
    let mut first: HashMap<String, Location> = declared
        .0
        .iter()
        .map(|(k, _)| (k.value.clone(), k.loc))
        .collect();
    for (i, f) in flat.iter().enumerate() {
        if f.node.kind.value != RawKind::Subprocess {
            continue;
        }
        if let Some(fe) = &f.node.for_each {
            item_var(&f.id, &fe.value.item, &mut items, vars, report);
        }
        let Some(declared) = &f.node.variables else {
            continue;
        };
        let section = format!("nodes.{}.variables", f.id);
        for (k, v) in unique(&declared.value, "variable", &section, report) {
            let path = format!("{section}.{}", k.value);
            if vars.contains_key(&k.value) || first.contains_key(&k.value) {
                report.add(
                    k.loc,
                    &path,
                    ProblemKind::Duplicate {
                        what: "variable",
                        id: k.value.clone(),
                        first: first.get(&k.value).copied().unwrap_or(k.loc),
                    },
                );
                continue;
            }
            first.insert(k.value.clone(), k.loc);
            let RawVar {
                ty,
                required,
                default,
                allowed,
                description,
            } = &v.value;
            if *required {
                report.add(
                    v.loc,
                    format!("{path}.required"),
                    ProblemKind::KeyNotAllowed {
                        key: "required",
                        kind: "sub-process local variable",
                    },
                );
            }
            if let Some(d) = default {
                report.add(
                    d.loc,
                    format!("{path}.default"),
                    ProblemKind::KeyNotAllowed {
                        key: "default",
                        kind: "sub-process local variable",
                    },
                );
            }
            vars.insert(
                k.value.clone(),
                VarSpec {
                    name: k.value.clone(),
                    ty: *ty,
                    required: false,
                    default: None,
                    allowed: allowed
                        .as_ref()
                        .map(|a: &At<Vec<serde_json::Value>>| a.value.clone()),
                    description: description.clone(),
                    key: false,
                },
            );
            out.entry(i).or_default().push(k.value.clone());
        }
    }
    out
}

/// Declares the item of multi-instance sub-process `id` (its `for_each.as`) as a variable of
/// any type, so that the conditions inside its scope may read it; at run time it is local to
/// each run (see `exec/runs.rs`). A name already declared otherwise is refused.
fn item_var(
    id: &str,
    item: &At<String>,
    items: &mut HashSet<String>,
    vars: &mut indexmap::IndexMap<String, VarSpec>,
    report: &mut Report,
) {
    let name = &item.value;
    if items.contains(name) {
        return;
    }
    if vars.contains_key(name) {
        report.add(
            item.loc,
            format!("nodes.{id}.for_each.as"),
            ProblemKind::ItemClash(name.clone()),
        );
        return;
    }
    items.insert(name.clone());
    vars.insert(
        name.clone(),
        VarSpec {
            name: name.clone(),
            ty: crate::vars::VarType::Any,
            required: false,
            default: None,
            allowed: None,
            description: Some(format!("{ITEM_VAR} '{id}' (local to each of its runs)")),
            key: false,
        },
    );
}

/// How the description of a multi-instance sub-process's item variable begins.
const ITEM_VAR: &str = "the item of multi-instance sub-process";

/// Whether `spec` is the item of a multi-instance sub-process (declared by [`locals`]): a
/// multi-instance task may use the same name for its own item.
pub(super) fn is_item_var(spec: &VarSpec) -> bool {
    spec.ty == crate::vars::VarType::Any
        && spec
            .description
            .as_deref()
            .is_some_and(|d| d.starts_with(ITEM_VAR))
}

/// Checks each scope's start count, links each sub-process node to its scope's start and
/// builds the scopes. Returns the scopes and the extra graph edges (sub-process → inner start).
pub(super) fn finish(
    flat: &[Flat<'_>],
    nodes: &mut [Node],
    mut locals: HashMap<usize, Vec<String>>,
    report: &mut Report,
) -> (Vec<super::scope::Scope>, Vec<(usize, usize)>) {
    let mut scopes = Vec::new();
    let mut edges = Vec::new();
    for (i, f) in flat.iter().enumerate() {
        nodes[i].parent = f.parent.map(|p| NodeId(p as u32));
    }
    for i in 0..nodes.len() {
        if !matches!(nodes[i].behaviour, Behaviour::Subprocess { .. }) {
            continue;
        }
        let starts: Vec<usize> = (0..nodes.len())
            .filter(|&j| {
                flat[j].parent == Some(i) && matches!(nodes[j].behaviour, Behaviour::Start)
            })
            .collect();
        if starts.len() != 1 && !flat[i].too_deep {
            let loc = starts
                .get(1)
                .map_or(nodes[i].location, |&s| nodes[s].location);
            report.add(
                loc,
                format!("nodes.{}.nodes", nodes[i].id),
                ProblemKind::ScopeStartCount {
                    scope: nodes[i].id.clone(),
                    found: starts.len(),
                },
            );
        }
        let mut members = Bits::with_len(nodes.len());
        for j in i + 1..nodes.len() {
            // Flattening puts a scope's nodes (nested ones too) right after its node.
            let mut at = flat[j].parent;
            let mut inside = false;
            while let Some(a) = at {
                if a == i {
                    inside = true;
                    break;
                }
                at = flat[a].parent;
            }
            if inside {
                members.insert(j);
            }
        }
        let scope = scopes.len() as u32;
        let start = starts.first().copied();
        if let Behaviour::Subprocess {
            start: s, scope: n, ..
        } = &mut nodes[i].behaviour
        {
            *n = scope;
            if let Some(start) = start {
                *s = NodeId(start as u32);
                edges.push((i, start));
            }
        }
        let locals = locals.remove(&i).unwrap_or_default();
        let multi = nodes[i].for_each().is_some();
        if multi {
            check_runs(flat, nodes, i, &members, &locals, report);
        }
        scopes.push(Scope {
            node: NodeId(i as u32),
            members,
            locals,
            multi,
        });
    }
    (scopes, edges)
}

/// A cancel region naming a sub-process withdraws its whole scope: adds the scope's nodes.
pub(super) fn widen_regions(nodes: &mut [Node], scopes: &[Scope]) {
    if scopes.is_empty() {
        return;
    }
    let len = nodes.len();
    for node in nodes.iter_mut() {
        let Some(control) = node.control.as_deref_mut() else {
            continue;
        };
        let mut extra = Vec::new();
        for s in scopes {
            if control.cancels.contains(&s.node) {
                extra.extend(
                    (0..len)
                        .filter(|&j| s.members.contains(j))
                        .map(|j| NodeId(j as u32)),
                );
            }
        }
        for n in extra {
            if !control.cancels.contains(&n) {
                control.cancels.push(n);
            }
        }
    }
}

/// Checks what stands inside multi-instance sub-process `i`'s scope: its runs take start, end,
/// user and service tasks and exclusive and parallel gateways (every token of a run is found by
/// its node and its run; the constructs that find tokens or tasks by node alone are refused), and
/// its `for_each.output` is one of its local variables.
fn check_runs(
    flat: &[Flat<'_>],
    nodes: &[Node],
    i: usize,
    members: &Bits,
    locals: &[String],
    report: &mut Report,
) {
    let scope = &nodes[i].id;
    if let Some(fe) = flat[i].node.for_each.as_ref()
        && let Some(output) = &fe.value.output
        && !locals.contains(&output.value)
    {
        report.add(
            output.loc,
            format!("nodes.{scope}.for_each.output"),
            ProblemKind::OutputNotLocal {
                scope: scope.clone(),
                name: output.value.clone(),
            },
        );
    }
    for j in (0..nodes.len()).filter(|&j| members.contains(j) && flat[j].parent == Some(i)) {
        let node = &nodes[j];
        let raw = flat[j].node;
        let refuse = |what: String, loc: Location, key: &str, report: &mut Report| {
            let path = if key.is_empty() {
                format!("nodes.{}", node.id)
            } else {
                format!("nodes.{}.{key}", node.id)
            };
            report.add(
                loc,
                path,
                ProblemKind::NotInRuns {
                    what,
                    scope: scope.clone(),
                },
            );
        };
        if !matches!(
            node.behaviour,
            Behaviour::Start
                | Behaviour::End
                | Behaviour::UserTask(_)
                | Behaviour::ServiceTask { .. }
                | Behaviour::Exclusive { .. }
                | Behaviour::Parallel
        ) {
            refuse(
                format!("a {} node", raw.kind.value.as_str()),
                raw.kind.loc,
                "kind",
                report,
            );
            continue;
        }
        let keys = [
            ("for_each", raw.for_each.as_ref().map(|k| k.loc)),
            ("repeat", raw.repeat.as_ref().map(|k| k.loc)),
            ("boundary", raw.boundary.as_ref().map(|k| k.loc)),
            ("timeout", raw.timeout.as_ref().map(|k| k.loc)),
            ("send_back", raw.send_back.as_ref().map(|k| k.loc)),
            ("while_at", raw.while_at.as_ref().map(|k| k.loc)),
            ("wait_for", raw.wait_for.as_ref().map(|k| k.loc)),
            ("cancels", raw.cancels.as_ref().map(|k| k.loc)),
            ("terminate", raw.terminate.as_ref().map(|k| k.loc)),
        ];
        for (key, loc) in keys {
            if let Some(loc) = loc {
                refuse(format!("'{key}'"), loc, key, report);
            }
        }
    }
}
