//! Pictures of a definition: Mermaid flowcharts and Graphviz DOT.

use std::fmt::Write;

use super::{Behaviour, Node, ProcessDef};

fn label(node: &Node) -> String {
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

fn join(roles: &[crate::RoleId]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Mermaid node ids must not clash with keywords such as `end`, so every id gets a prefix.
fn mid(node: &Node) -> String {
    format!("n_{}", node.id.replace('-', "_"))
}

pub(super) fn mermaid(def: &ProcessDef) -> String {
    let mut out = String::from("flowchart TD\n");
    for node in &def.nodes {
        let (open, close) = match node.behaviour {
            Behaviour::Start | Behaviour::End => ("((", "))"),
            Behaviour::UserTask(_) => ("[", "]"),
            Behaviour::ServiceTask { .. } => ("[[", "]]"),
            Behaviour::Exclusive { .. } | Behaviour::Parallel => ("{", "}"),
            Behaviour::Timer(_) => ("{{", "}}"),
        };
        let text = match node.behaviour {
            Behaviour::Exclusive { .. } => format!("X {}", label(node)),
            Behaviour::Parallel => format!("+ {}", label(node)),
            _ => label(node),
        };
        let _ = writeln!(out, "    {}{open}\"{text}\"{close}", mid(node));
    }
    for node in &def.nodes {
        for (cond, to) in edges(node) {
            let to = mid(&def.nodes[to]);
            match cond {
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
    }
    out
}

pub(super) fn dot(def: &ProcessDef) -> String {
    let mut out = format!("digraph \"{}\" {{\n    rankdir=TB;\n", def.key.id);
    for node in &def.nodes {
        let shape = match node.behaviour {
            Behaviour::Start | Behaviour::End => "circle",
            Behaviour::UserTask(_) => "box",
            Behaviour::ServiceTask { .. } => "box3d",
            Behaviour::Exclusive { .. } | Behaviour::Parallel => "diamond",
            Behaviour::Timer(_) => "hexagon",
        };
        let _ = writeln!(
            out,
            "    \"{}\" [shape={shape}, label=\"{}\"];",
            node.id,
            label(node)
        );
    }
    for node in &def.nodes {
        for (cond, to) in edges(node) {
            let to = &def.nodes[to].id;
            match cond {
                Some(c) => {
                    let _ = writeln!(
                        out,
                        "    \"{}\" -> \"{to}\" [label=\"{}\"];",
                        node.id,
                        c.replace('"', "'")
                    );
                }
                None => {
                    let _ = writeln!(out, "    \"{}\" -> \"{to}\";", node.id);
                }
            }
        }
    }
    out.push_str("}\n");
    out
}

/// Outgoing flows with their condition (`default` for an exclusive gateway's default route).
fn edges(node: &Node) -> Vec<(Option<String>, usize)> {
    match &node.behaviour {
        Behaviour::Exclusive { routes, default } => routes
            .iter()
            .map(|r| (Some(r.cond.source().to_owned()), r.to.index()))
            .chain(default.map(|d| (Some("default".to_owned()), d.index())))
            .collect(),
        // A user task's second flow is its timeout route.
        Behaviour::UserTask(_) => node
            .next
            .iter()
            .enumerate()
            .map(|(i, n)| ((i > 0).then(|| "timeout".to_owned()), n.index()))
            .collect(),
        _ => node.next.iter().map(|n| (None, n.index())).collect(),
    }
}
