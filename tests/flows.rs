//! The operator's processes wired together: the flow map of process-defs/ and the end-to-end
//! scenario across 3.7 and 3.8 (flows #41 and #45).

use procflow::{BusinessCalendar, ProcessDef, Scenario, flow_map, flows_to_dot, flows_to_mermaid};

fn shipped() -> Vec<ProcessDef> {
    let mut files: Vec<_> = std::fs::read_dir("process-defs")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| ProcessDef::from_file(f).unwrap())
        .collect()
}

#[test]
fn the_flow_map_of_the_shipped_definitions_carries_the_flow_numbers() {
    let defs = shipped();
    let (flows, warnings) = flow_map(&defs);
    assert!(warnings.is_empty(), "{warnings:?}");
    let mut numbers: Vec<u32> = flows.iter().filter_map(|f| f.number).collect();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(
        numbers,
        [
            37, 38, 39, 41, 42, 43, 44, 45, 46, 48, 50, 51, 53, 54, 55, 57
        ]
    );
    let complaint = flows
        .iter()
        .find(|f| f.number == Some(41))
        .expect("flow 41");
    assert_eq!(
        (complaint.from.as_str(), complaint.to.as_str()),
        ("customer-interactions", "complaint-handling")
    );
    let mermaid = flows_to_mermaid(&defs, &flows);
    assert!(mermaid.starts_with("flowchart LR"));
    assert!(
        mermaid.contains("customer_interactions -->|\"#41 complaint_raised\"| complaint_handling")
    );
    assert!(
        mermaid.contains("complaint_handling -->|\"#45 fault_resolved\"| customer_interactions")
    );
    let dot = flows_to_dot(&defs, &flows);
    assert!(dot.contains(
        "\"complaint-handling\" -> \"customer-interactions\" [label=\"#45 fault_resolved\""
    ));
}

#[test]
fn the_end_to_end_complaint_scenario_runs_across_3_7_and_3_8() {
    let mut defs = shipped();
    // 3.7 first: the scenario starts it.
    let first = defs
        .iter()
        .position(|d| d.key().id == "customer-interactions")
        .unwrap();
    let hub = defs.remove(first);
    defs.insert(0, hub);
    let scenario =
        Scenario::from_file("process-defs/scenarios/customer-interactions-e2e-complaint.yaml")
            .unwrap();
    let china = BusinessCalendar::from_file("process-defs/calendars/china.yaml").unwrap();
    let report = scenario
        .run_all(defs, vec![("china".to_string(), china)])
        .unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let joined = report.events.join("\n");
    // 3.8 was started by the message (flow #41) and its resolution reached 3.7 (flow #45).
    assert!(
        joined.contains("\"message\":\"complaint_raised\",\"received\":[],\"started\":[2]"),
        "{joined}"
    );
    assert!(
        joined.contains("\"message\":\"fault_resolved\",\"received\":[1]"),
        "{joined}"
    );
}

/// The fifteen flows among 3.6-3.11 that issue 13 lists, and #42 (3.7 to 3.10, the sixteenth
/// flow among them), each with its sender and receiver.
const CARRIED: [(u32, &str, &str); 16] = [
    (37, "order-provisioning", "customer-interactions"),
    (38, "order-provisioning", "billing-accounts"),
    (39, "customer-interactions", "order-provisioning"),
    (41, "customer-interactions", "complaint-handling"),
    (42, "customer-interactions", "sla-management"),
    (43, "customer-interactions", "retention"),
    (44, "customer-interactions", "billing-accounts"),
    (45, "complaint-handling", "customer-interactions"),
    (46, "complaint-handling", "billing-accounts"),
    (48, "complaint-handling", "order-provisioning"),
    (50, "retention", "billing-accounts"),
    (51, "sla-management", "complaint-handling"),
    (53, "sla-management", "billing-accounts"),
    (54, "billing-accounts", "customer-interactions"),
    (55, "billing-accounts", "retention"),
    (57, "billing-accounts", "complaint-handling"),
];

#[test]
fn every_flow_among_3_6_to_3_11_is_sent_by_a_send_node_and_acted_on_by_the_receiver() {
    let defs = shipped();
    let def = |id: &str| defs.iter().find(|d| d.key().id == id).expect(id);
    for (number, from, to) in CARRIED {
        let (sender, receiver) = (def(from), def(to));
        // The messages of this flow the sender declares and the receiver declares, by name.
        let sent: Vec<&str> = sender
            .sends()
            .filter(|(_, s)| s.flow() == Some(number as u8))
            .map(|(name, _)| name)
            .filter(|name| receiver.messages().any(|(m, _)| m == *name))
            .collect();
        assert!(
            !sent.is_empty(),
            "#{number}: {from} declares no send that {to} declares"
        );
        for name in sent {
            let (_, declared) = receiver.messages().find(|(m, _)| *m == name).unwrap();
            assert_eq!(
                declared.flow(),
                Some(number as u8),
                "#{number} {name}: flow number in {to}"
            );
            // The sender has a send node for it.
            assert!(
                sender.nodes().any(|(_, n)| n.sends() == Some(name)),
                "#{number} {name}: no send node in {from}"
            );
            // The receiver starts an instance on it or waits for it (catch or boundary event),
            // and what waits for it is correlated on a business key of the receiver.
            let starts = receiver.start_messages().any(|m| m == name);
            let caught = receiver
                .nodes()
                .any(|(_, n)| n.caught_messages().contains(&name));
            assert!(
                starts || caught,
                "#{number} {name}: {to} neither starts on it nor catches it"
            );
            if caught {
                let keys: Vec<&str> = declared.correlate().map(|(k, _)| k).collect();
                assert!(
                    !keys.is_empty(),
                    "#{number} {name}: {to} catches it uncorrelated"
                );
                for k in keys {
                    assert!(
                        receiver.keys().any(|key| key == k),
                        "#{number}: {k} is not a key of {to}"
                    );
                }
            }
            // Every payload field the sender sends is in the receiver's payload.
            let (_, s) = sender.sends().find(|(m, _)| *m == name).unwrap();
            for field in s.payload() {
                assert!(
                    declared.payload().contains(field),
                    "#{number} {name}: {from} sends {field}, {to} does not receive it"
                );
            }
        }
    }
}

#[test]
fn customer_response_calls_order_provisioning_and_complaint_handling() {
    let defs = shipped();
    let response = defs
        .iter()
        .find(|d| d.key().id == "customer-response")
        .unwrap();
    let called: Vec<(&str, Option<u32>)> = response
        .nodes()
        .filter_map(|(_, n)| n.called_process().map(|p| (p, n.flow())))
        .collect();
    assert_eq!(
        called,
        [
            ("order-provisioning", Some(39)),
            ("complaint-handling", Some(41))
        ]
    );
}

#[test]
fn every_end_to_end_scenario_holds_with_all_shipped_definitions() {
    let mut scenarios: Vec<_> = std::fs::read_dir("process-defs/scenarios")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("-e2e-"))
        .collect();
    scenarios.sort();
    // One chain per group of flows: 3.7/3.8 (#41, #45), 3.7/3.6/3.11 (#39, #37, #38), 3.7/3.10
    // (#39, #42), 3.7/3.11
    // (#44, #54), 3.8/3.6/3.11 (#48, #46, #57), 3.10 (#51, #53), 3.11/3.9 (#55, #50), and
    // customer-response's calls of 3.6 and 3.8.
    assert!(scenarios.len() >= 9, "{scenarios:?}");
    for path in scenarios {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let mut defs = shipped();
        // The definition whose id prefixes the scenario's name goes first: the scenario starts it.
        let first = defs
            .iter()
            .enumerate()
            .filter(|(_, d)| name.starts_with(&format!("{}-", d.key().id)))
            .max_by_key(|(_, d)| d.key().id.len())
            .map(|(i, _)| i)
            .unwrap_or_else(|| panic!("no definition for {name}"));
        let def = defs.remove(first);
        defs.insert(0, def);
        let china = BusinessCalendar::from_file("process-defs/calendars/china.yaml").unwrap();
        let report = Scenario::from_file(&path)
            .unwrap()
            .run_all(defs, vec![("china".to_string(), china)])
            .unwrap();
        assert!(report.failures.is_empty(), "{name}: {:?}", report.failures);
        // Every chain sends at least one message or starts a child across processes.
        let joined = report.events.join("\n");
        assert!(
            joined.contains("\"event\":\"message_sent\"")
                || joined.contains("\"event\":\"call_started\""),
            "{name}"
        );
    }
}

const TWO_STARTS: &str = r#"
id: order
version: 1
name: Order
roles: { clerk: { name: Clerk } }
variables:
  customer_id: { type: string }
  sales_order: { type: object }
  reconfiguration: { type: object }
messages:
  sales_order_placed: { flow: 39, payload: [customer_id, sales_order] }
  reconfiguration_ordered: { flow: 48, payload: [customer_id, reconfiguration] }
nodes:
  start: { kind: start, message: sales_order_placed, messages: [reconfiguration_ordered], next: kind }
  kind:
    kind: exclusive
    routes:
      - { when: "reconfiguration != null", to: reconfigured }
      - { default: true, to: ordered }
  ordered: { kind: user_task, name: Ordered, raci: { responsible: [clerk], accountable: clerk }, next: end }
  reconfigured: { kind: user_task, name: Reconfigured, raci: { responsible: [clerk], accountable: clerk }, next: end }
  end: { kind: end }
"#;

#[test]
fn a_start_node_may_listen_for_several_messages() {
    use procflow::{Engine, Vars};
    let engine = Engine::new();
    engine
        .deploy(ProcessDef::from_yaml(TWO_STARTS).unwrap())
        .unwrap();
    let def = engine.definition("order", None).unwrap();
    assert_eq!(def.start_message(), Some("sales_order_placed"));
    assert_eq!(
        def.start_messages().collect::<Vec<_>>(),
        ["sales_order_placed", "reconfiguration_ordered"]
    );
    let vars = |pairs: &[(&str, serde_json::Value)]| -> Vars {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect()
    };
    for (message, field) in [
        ("sales_order_placed", "sales_order"),
        ("reconfiguration_ordered", "reconfiguration"),
    ] {
        let c = engine
            .correlate(
                message,
                vars(&[
                    ("customer_id", serde_json::json!("C-1")),
                    (field, serde_json::json!({ "line": 1 })),
                ]),
            )
            .unwrap();
        assert_eq!(c.started.len(), 1, "{message}");
        let inst = engine.instance(c.started[0]).unwrap();
        assert_eq!(inst.vars()[field], serde_json::json!({ "line": 1 }));
        // The payload that came says which start it was.
        let ended = if field == "reconfiguration" {
            "reconfigured"
        } else {
            "ordered"
        };
        let open: Vec<String> = engine
            .tasks(c.started[0])
            .unwrap()
            .iter()
            .map(|t| t.node_id.to_string())
            .collect();
        assert_eq!(open, [ended], "{message}");
    }
}

#[test]
fn a_start_messages_list_is_checked_at_load() {
    let unknown = TWO_STARTS.replace("messages: [reconfiguration_ordered]", "messages: [nope]");
    let problems = ProcessDef::from_yaml(&unknown).unwrap_err().problems;
    assert!(
        problems.iter().any(
            |p| p.kind == procflow::ProblemKind::UnknownMessage("nope".into())
                && p.path == "nodes.start.messages"
                && p.location.is_some()
        ),
        "{problems:#?}"
    );
    let misplaced = TWO_STARTS.replace(
        "  end: { kind: end }",
        "  end: { kind: end, messages: [sales_order_placed] }",
    );
    let problems = ProcessDef::from_yaml(&misplaced).unwrap_err().problems;
    assert!(
        problems.iter().any(|p| p.path == "nodes.end.messages"),
        "{problems:#?}"
    );
}
