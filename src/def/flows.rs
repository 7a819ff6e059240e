//! The flow map of several definitions (`procflow graph --flows`): which process sends which
//! message to which, and which calls which, labelled with the information-flow numbers
//! (shared/domain/processes.md §3).
//!
//! A message flow is a name declared under `sends:` in one definition and under `messages:` in
//! another; a call flow is a `kind: call` node naming another definition's id.

use std::fmt::Write as _;

use super::ProcessDef;

/// One arrow of the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// The sending (or calling) definition's id.
    pub from: String,
    /// The receiving (or called) definition's id.
    pub to: String,
    /// The flow number, if declared (the sender's, else the receiver's).
    pub number: Option<u32>,
    /// The message name, or `call` for a call activity.
    pub label: String,
}

/// The arrows among `defs` and the warnings found (a flow number that differs between sender
/// and receiver, a call of a definition that is not among `defs`).
pub fn flow_map(defs: &[ProcessDef]) -> (Vec<Flow>, Vec<String>) {
    let mut flows = Vec::new();
    let mut warnings = Vec::new();
    for sender in defs {
        let from = sender.key().id.to_string();
        for (name, sent) in sender.sends() {
            let mut matched = false;
            for receiver in defs {
                let Some((_, received)) = receiver.messages().find(|(n, _)| *n == name) else {
                    continue;
                };
                matched = true;
                let to = receiver.key().id.to_string();
                let (a, b) = (sent.flow(), received.flow());
                if let (Some(a), Some(b)) = (a, b)
                    && a != b
                {
                    warnings.push(format!(
                        "message '{name}': {from} sends it as flow #{a}, {to} receives it as flow #{b}"
                    ));
                }
                flows.push(Flow {
                    from: from.clone(),
                    to,
                    number: a.or(b).map(u32::from),
                    label: name.to_string(),
                });
            }
            if !matched {
                warnings.push(format!(
                    "message '{name}' sent by {from} is received by none of these definitions"
                ));
            }
        }
        for (_, node) in sender.nodes() {
            let Some(callee) = node.called_process() else {
                continue;
            };
            if !defs.iter().any(|d| d.key().id.as_str() == callee) {
                warnings.push(format!(
                    "{from} node '{}' calls '{callee}', which is not among these definitions",
                    node.id()
                ));
            }
            let flow = Flow {
                from: from.clone(),
                to: callee.to_string(),
                number: node.flow(),
                label: "call".to_string(),
            };
            if !flows.contains(&flow) {
                flows.push(flow);
            }
        }
    }
    (flows, warnings)
}

fn label(flow: &Flow) -> String {
    match flow.number {
        Some(n) => format!("#{n} {}", flow.label),
        None => flow.label.clone(),
    }
}

fn boxed(def: &ProcessDef) -> String {
    let id = def.key().id.to_string();
    let name = def.name();
    if name == id {
        id
    } else {
        format!("{id}: {name}")
    }
}

fn safe(id: &str) -> String {
    id.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The map as a Mermaid flowchart: one box per definition, one labelled arrow per flow.
pub fn flows_to_mermaid(defs: &[ProcessDef], flows: &[Flow]) -> String {
    let mut out = String::from("flowchart LR\n");
    for def in defs {
        let id = def.key().id.to_string();
        let text = boxed(def).replace('"', "'");
        let _ = writeln!(out, "    {}[\"{text}\"]", safe(&id));
    }
    for f in flows {
        let _ = writeln!(
            out,
            "    {} -->|\"{}\"| {}",
            safe(&f.from),
            label(f).replace('"', "'"),
            safe(&f.to)
        );
    }
    out
}

/// The map as a Graphviz DOT digraph.
pub fn flows_to_dot(defs: &[ProcessDef], flows: &[Flow]) -> String {
    let mut out = String::from("digraph flows {\n    rankdir=LR;\n    node [shape=box];\n");
    for def in defs {
        let id = def.key().id.to_string();
        let text = boxed(def).replace('"', "\\\"");
        let _ = writeln!(out, "    \"{id}\" [label=\"{text}\"];");
    }
    for f in flows {
        let style = if f.label == "call" {
            ", style=bold"
        } else {
            ", style=dashed"
        };
        let _ = writeln!(
            out,
            "    \"{}\" -> \"{}\" [label=\"{}\"{style}];",
            f.from,
            f.to,
            label(f).replace('"', "\\\"")
        );
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SENDER: &str = r#"
id: a
name: A
version: 1
keys: [customer_id]
variables:
  customer_id: { type: string }
sends:
  hello: { flow: 41, payload: [customer_id] }
nodes:
  s: { kind: start, next: tell }
  tell: { kind: send, message: hello, next: child }
  child: { kind: call, process: b, flow: 48, next: e }
  e: { kind: end }
"#;

    const RECEIVER: &str = r#"
id: b
name: B
version: 1
keys: [customer_id]
variables:
  customer_id: { type: string }
messages:
  hello: { flow: 42, payload: [customer_id], correlate: { customer_id: customer_id } }
nodes:
  s: { kind: start, next: w }
  w: { kind: catch, message: hello, next: e }
  e: { kind: end }
"#;

    #[test]
    fn maps_messages_and_calls_and_warns_on_mismatched_numbers() {
        let a = ProcessDef::from_yaml(SENDER).expect("sender loads");
        let b = ProcessDef::from_yaml(RECEIVER).expect("receiver loads");
        let defs = [a, b];
        let (flows, warnings) = flow_map(&defs);
        assert_eq!(flows.len(), 2, "{flows:?}");
        assert_eq!(flows[0].label, "hello");
        assert_eq!((flows[0].from.as_str(), flows[0].to.as_str()), ("a", "b"));
        assert_eq!(flows[0].number, Some(41));
        assert_eq!(flows[1].label, "call");
        assert_eq!(flows[1].number, Some(48));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("#41") && warnings[0].contains("#42"));
        let mermaid = flows_to_mermaid(&defs, &flows);
        assert!(mermaid.contains("a -->|\"#41 hello\"| b"), "{mermaid}");
        assert!(mermaid.contains("a -->|\"#48 call\"| b"), "{mermaid}");
        let dot = flows_to_dot(&defs, &flows);
        assert!(dot.contains("\"a\" -> \"b\" [label=\"#41 hello\""), "{dot}");
    }
}
