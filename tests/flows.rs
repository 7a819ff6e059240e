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
        [37, 38, 39, 41, 43, 44, 45, 46, 48, 50, 51, 53, 54, 55, 57]
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
