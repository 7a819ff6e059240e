//! Pictures of a definition: Mermaid flowcharts and Graphviz DOT.

use std::fmt::Write;

use super::{Behaviour, Node, ProcessDef};

fn label(def: &ProcessDef, node: &Node) -> String {
    let mut text = node.name.clone().unwrap_or_else(|| node.id.clone());
    if let Some(zh) = &node.name_zh {
        text.push_str(" / ");
        text.push_str(zh);
    }
    if let Some(raci) = node.raci() {
        text.push_str(&format!(
            " [R: {}; A: {}]",
            join(raci.responsible()),
            raci.accountable()
        ));
    }
    if let Some(handler) = node.handler() {
        text.push_str(&format!(" [{handler}]"));
    }
    if let Some(group) = node.mutex() {
        text.push_str(&format!(" [mutex: {group}]"));
    }
    if let Some(trigger) = node.trigger() {
        text.push_str(&format!(" [{trigger}]"));
    }
    if let Some(message) = node.sends() {
        text.push_str(&format!(" [send {message}]"));
    }
    if matches!(node.behaviour, Behaviour::Start) && node.parent.is_none() {
        // Every message that starts an instance (`message:` and `messages:`).
        let messages: Vec<&str> = def.start_messages().collect();
        if !messages.is_empty() {
            text.push_str(&format!(" [on message {}]", messages.join(", ")));
        }
    }
    if let Some(f) = node.for_each() {
        let how = if f.parallel { "parallel" } else { "sequential" };
        text.push_str(&format!(" [for each {} in {}, {how}]", f.item, f.list));
    }
    if let Some(r) = node.repeat() {
        text.push_str(&format!(
            " [repeat until {}, max {}]",
            r.until.source(),
            r.max
        ));
    }
    text.replace('"', "'")
}

/// How a sub-process's scope is titled: one that runs per item is a multi-instance one.
fn scope_kind(node: &Node) -> &'static str {
    if node.for_each().is_some() {
        "multi-instance sub-process"
    } else {
        "sub-process"
    }
}

fn join(roles: &[crate::RoleId]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Mermaid node ids must not clash with keywords such as `end`, so every id gets a prefix.
fn mid(node: &Node) -> String {
    // A node inside a sub-process has a qualified id (`fix.repair`); Mermaid ids take no `.`.
    format!("n_{}", node.id.replace('-', "_").replace('.', "__"))
}

pub(super) fn mermaid(def: &ProcessDef) -> String {
    let mut out = String::from("flowchart TD\n");
    mermaid_nodes(def, None, 1, &mut out);
    mermaid_edges(def, &mut out);
    out
}

/// Declares the nodes of one scope (`None`: the top level); a sub-process is a `subgraph`
/// holding its scope's nodes.
fn mermaid_nodes(
    def: &ProcessDef,
    scope: Option<crate::ids::NodeId>,
    depth: usize,
    out: &mut String,
) {
    let pad = "    ".repeat(depth);
    for (i, node) in def.nodes.iter().enumerate() {
        if node.parent != scope {
            continue;
        }
        if let Behaviour::Subprocess { .. } = node.behaviour {
            let text = label(def, node);
            let _ = writeln!(
                out,
                "{pad}subgraph {}[\"{} {text}\"]",
                mid(node),
                scope_kind(node)
            );
            let _ = writeln!(out, "{pad}    direction TB");
            mermaid_nodes(def, Some(crate::ids::NodeId(i as u32)), depth + 1, out);
            let _ = writeln!(out, "{pad}end");
            continue;
        }
        let (open, close) = match node.behaviour {
            Behaviour::End if terminates(node) => ("(((", ")))"),
            Behaviour::Start | Behaviour::End => ("((", "))"),
            Behaviour::UserTask(_) => ("[", "]"),
            Behaviour::ServiceTask { .. } => ("[[", "]]"),
            Behaviour::Exclusive { .. } | Behaviour::Parallel | Behaviour::Inclusive { .. } => {
                ("{", "}")
            }
            Behaviour::Timer(_) => ("{{", "}}"),
            Behaviour::Catch(_) => (">", "]"),
            Behaviour::Race => ("{", "}"),
            Behaviour::Subprocess { .. } => ("[", "]"),
            // A send leans forward: a parallelogram.
            Behaviour::Send(_) => ("[/", "/]"),
            // A call activity is a subroutine: it runs another definition.
            Behaviour::Call(_) => ("[[", "]]"),
        };
        let text = gateway_label(def, node);
        let _ = writeln!(out, "{pad}{}{open}\"{text}\"{close}", mid(node));
    }
}

fn mermaid_edges(def: &ProcessDef, out: &mut String) {
    for node in &def.nodes {
        for (cond, to) in edges(node) {
            let to = mid(&def.nodes[to]);
            match cond {
                // A non-interrupting boundary's flow is dashed.
                Some(c) if c.ends_with(NON_INTERRUPTING) => {
                    let _ = writeln!(
                        out,
                        "    {} -.->|\"{}\"| {to}",
                        mid(node),
                        c.replace('"', "'")
                    );
                }
                Some(c) => {
                    let _ = writeln!(
                        out,
                        "    {} -->|\"{}\"| {to}",
                        mid(node),
                        c.replace('"', "'")
                    );
                }
                None => {
                    let _ = writeln!(out, "    {} --> {to}", mid(node));
                }
            }
        }
        for to in cancels(node) {
            let _ = writeln!(
                out,
                "    {} -.->|\"cancels\"| {}",
                mid(node),
                mid(&def.nodes[to.index()])
            );
        }
    }
    // Send-back and milestone links are not flows: dotted, against the direction of the flows.
    for node in &def.nodes {
        for to in node.send_back() {
            let to = mid(&def.nodes[to.index()]);
            let _ = writeln!(out, "    {} -.->|\"send back\"| {to}", mid(node));
        }
        for at in node.while_at() {
            let at = mid(&def.nodes[at.index()]);
            let _ = writeln!(out, "    {at} -.-|\"while at\"| {}", mid(node));
        }
    }
}

/// Whether a node is a terminating end.
fn terminates(node: &Node) -> bool {
    node.control.as_ref().is_some_and(|c| c.terminate)
}

/// The nodes a node's cancel region names.
fn cancels(node: &Node) -> &[crate::ids::NodeId] {
    node.control.as_ref().map_or(&[], |c| &c.cancels[..])
}

/// A node's label with the mark of its gateway kind: `X` exclusive, `+` parallel (`+ 2 of 3`
/// for a partial join, `cancel rest` when it withdraws the others), `O` inclusive.
fn gateway_label(def: &ProcessDef, node: &Node) -> String {
    match node.behaviour {
        Behaviour::Exclusive { .. } => format!("X {}", label(def, node)),
        Behaviour::Parallel => match node
            .control
            .as_ref()
            .and_then(|c| c.wait_for.map(|n| (n, c)))
        {
            Some((n, c)) => format!(
                "+ {n} of {}{} {}",
                node.incoming,
                if c.cancel_rest { ", cancel rest" } else { "" },
                label(def, node)
            ),
            None => format!("+ {}", label(def, node)),
        },
        Behaviour::Inclusive { .. } => format!("O {}", label(def, node)),
        Behaviour::Race => format!("race {}", label(def, node)),
        Behaviour::Call(ref c) => format!(
            "call {}{}{}: {}",
            c.process,
            c.version.map(|v| format!("@{v}")).unwrap_or_default(),
            c.flow.map(|f| format!(" (flow {f})")).unwrap_or_default(),
            label(def, node)
        ),
        Behaviour::End if terminates(node) => format!("terminate {}", label(def, node)),
        _ => label(def, node),
    }
}

pub(super) fn dot(def: &ProcessDef) -> String {
    let mut out = format!("digraph \"{}\" {{\n    rankdir=TB;\n", def.key.id);
    dot_nodes(def, None, 1, &mut out);
    dot_edges(def, &mut out);
    out.push_str("}\n");
    out
}

/// Declares the nodes of one scope (`None`: the top level); a sub-process is a `cluster`
/// holding its own node (where its flows start and end) and its scope's nodes.
fn dot_nodes(def: &ProcessDef, scope: Option<crate::ids::NodeId>, depth: usize, out: &mut String) {
    let pad = "    ".repeat(depth);
    for (i, node) in def.nodes.iter().enumerate() {
        if node.parent != scope {
            continue;
        }
        if let Behaviour::Subprocess { .. } = node.behaviour {
            let _ = writeln!(
                out,
                "{pad}subgraph \"cluster_{}\" {{\n{pad}    label=\"{} {}\";\n{pad}    style={};",
                node.id,
                scope_kind(node),
                label(def, node),
                if node.for_each().is_some() {
                    "\"rounded,dashed\""
                } else {
                    "rounded"
                }
            );
            let _ = writeln!(
                out,
                "{pad}    \"{}\" [shape=box, style=\"rounded,bold\", label=\"{}\"];",
                node.id,
                label(def, node)
            );
            dot_nodes(def, Some(crate::ids::NodeId(i as u32)), depth + 1, out);
            let _ = writeln!(out, "{pad}}}");
            continue;
        }
        let shape = match node.behaviour {
            Behaviour::End if terminates(node) => "doublecircle",
            Behaviour::Start | Behaviour::End => "circle",
            Behaviour::UserTask(_) => "box",
            Behaviour::ServiceTask { .. } => "box3d",
            Behaviour::Exclusive { .. } | Behaviour::Parallel | Behaviour::Inclusive { .. } => {
                "diamond"
            }
            Behaviour::Timer(_) => "hexagon",
            Behaviour::Catch(_) => "cds",
            Behaviour::Race => "Mdiamond",
            Behaviour::Subprocess { .. } => "box",
            Behaviour::Send(_) => "rarrow",
            // A call activity: a double box (see the `peripheries` below).
            Behaviour::Call(_) => "box, peripheries=2",
        };
        let _ = writeln!(
            out,
            "{pad}\"{}\" [shape={shape}, label=\"{}\"];",
            node.id,
            // Exclusive and parallel gateways are told apart by shape alone in DOT; the marks
            // say what the shape cannot (inclusive, partial join, terminating end).
            if node.control.is_some() || matches!(node.behaviour, Behaviour::Call(_)) {
                gateway_label(def, node)
            } else {
                label(def, node)
            }
        );
    }
}

fn dot_edges(def: &ProcessDef, out: &mut String) {
    for node in &def.nodes {
        // A sub-process enters its scope at the scope's start.
        if let Behaviour::Subprocess { start, .. } = node.behaviour {
            let _ = writeln!(
                out,
                "    \"{}\" -> \"{}\" [style=dotted, label=\"enter\"];",
                node.id,
                def.nodes[start.index()].id
            );
        }
        for (cond, to) in edges(node) {
            let to = &def.nodes[to].id;
            match cond {
                Some(c) => {
                    let style = if c.ends_with(NON_INTERRUPTING) {
                        ", style=dashed"
                    } else {
                        ""
                    };
                    let _ = writeln!(
                        out,
                        "    \"{}\" -> \"{to}\" [label=\"{}\"{style}];",
                        node.id,
                        c.replace('"', "'")
                    );
                }
                None => {
                    let _ = writeln!(out, "    \"{}\" -> \"{to}\";", node.id);
                }
            }
        }
        for to in cancels(node) {
            let _ = writeln!(
                out,
                "    \"{}\" -> \"{}\" [style=dashed, label=\"cancels\"];",
                node.id,
                def.nodes[to.index()].id
            );
        }
    }
    // Send-back and milestone links are not flows: dashed or dotted, and not ranked.
    for node in &def.nodes {
        for to in node.send_back() {
            let _ = writeln!(
                out,
                "    \"{}\" -> \"{}\" [label=\"send back\", style=dashed, constraint=false];",
                node.id,
                def.nodes[to.index()].id
            );
        }
        for at in node.while_at() {
            let _ = writeln!(
                out,
                "    \"{}\" -> \"{}\" [label=\"while at\", style=dotted, arrowhead=none, constraint=false];",
                def.nodes[at.index()].id,
                node.id
            );
        }
    }
}

/// How a non-interrupting boundary's label ends ([`super::events::Boundary::label`]).
const NON_INTERRUPTING: &str = "(non-interrupting)";

/// Outgoing flows with their condition (`default` for an exclusive gateway's default route).
fn edges(node: &Node) -> Vec<(Option<String>, usize)> {
    match &node.behaviour {
        Behaviour::Exclusive { routes, default } | Behaviour::Inclusive { routes, default } => {
            routes
                .iter()
                .map(|r| (Some(r.cond.source().to_owned()), r.to.index()))
                .chain(default.map(|d| (Some("default".to_owned()), d.index())))
                .collect()
        }
        // A user task's second flow is its timeout route; its boundary events' flows follow.
        // A sub-process's likewise.
        Behaviour::UserTask(_) | Behaviour::Subprocess { .. } => node
            .next
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let boundary = node.boundary.iter().find(|b| b.flow as usize == i);
                let label = match boundary {
                    Some(b) => Some(b.label()),
                    None => (i > 0).then(|| "timeout".to_owned()),
                };
                (label, n.index())
            })
            .collect(),
        _ => node.next.iter().map(|n| (None, n.index())).collect(),
    }
}
