//! What-if simulation through the public API: bad models refused with every problem located, a
//! seed gives the same figures twice, more staff never gives longer waiting (common random
//! numbers, a first-come first-served queue), and calibration recovers a known arrival rate and
//! handling time from a store the simulation wrote.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;

use procflow::whatif::{
    Dist, Figures, Model, calibrate, compare_csv, compare_table, memory_store, replicate, run_once,
    simulate,
};
use procflow::{MemoryStore, ProblemKind, SqliteStore, Store};

/// One clerk task: the simplest queue. Due in 2 hours, so that breaches show.
const QUEUE: &str = r#"
id: queue
version: 1
name: A queue
roles:
  clerk: { name: Clerk }
  lead: { name: Lead }
nodes:
  start: { kind: start, next: serve }
  serve:
    kind: user_task
    name: Serve the customer
    raci: { responsible: [clerk], accountable: lead }
    due: 2h
    next: end
  end: { kind: end }
"#;

/// A folder holding `queue.yaml` and the China calendar, for the models' relative paths.
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("procflow-whatif-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("queue.yaml"), QUEUE).unwrap();
    let cal = Path::new(env!("CARGO_MANIFEST_DIR")).join("process-defs/calendars/china.yaml");
    std::fs::copy(cal, d.join("china.yaml")).unwrap();
    d
}

fn model(people: u32, rate: f64, seed: u64, extra: &str) -> String {
    format!(
        r#"
whatif: queue-{people}
definitions: [queue.yaml]
calendars: {{ china: china.yaml }}
start: 2026-03-09T00:00:00+08:00
horizon: 5d
warm_up: 12h
replications: 3
seed: {seed}
arrivals:
  queue: {{ per_business_hour: {rate}, per_other_hour: {rate}, calendar: china }}
staff:
  - {{ role: clerk, people: {people}, shift: always }}
tasks:
  queue:
    serve: {{ handling: {{ lognormal: {{ median: 20m, sigma: 0.5 }} }} }}
{extra}"#
    )
}

fn figures(m: &Model) -> Figures {
    let runs = simulate(m, 2, &|_| {}).unwrap();
    Figures::of(m, &runs)
}

#[test]
fn a_bad_model_is_refused_with_every_problem_located() {
    let d = dir("bad");
    let text = r#"
whatif: bad
definitions: [queue.yaml]
calendars: { china: china.yaml }
start: 2026-03-09T00:00:00+08:00
horizon: 1d
warm_up: 2d
arrivals:
  queue:
    per_business_hour: -3
    mix:
      kind:
        - { p: 0.5, set: { a: 1 } }
        - { p: 0.2, set: { a: 2 } }
  nosuch: { per_business_hour: 1 }
staff:
  - { role: cashier, people: 2 }
tasks:
  queue:
    serve: { handling: { lognormal: { median: 10m } } }
    greet: { handling: { fixed: 5m } }
"#;
    let err = Model::from_yaml(text, &d).unwrap_err();
    let messages: Vec<String> = err.problems.iter().map(|p| p.kind.to_string()).collect();
    let has = |needle: &str| {
        let p = err
            .problems
            .iter()
            .find(|p| p.kind.to_string().contains(needle))
            .unwrap_or_else(|| panic!("no problem saying '{needle}' in {messages:#?}"));
        assert!(matches!(p.kind, ProblemKind::WhatIf(_)));
        p.location.expect("located").line
    };
    // Lines from 1: the text starts with a newline.
    assert_eq!(has("is not longer than the warm-up"), 7);
    assert_eq!(has("a rate must be zero or more, not -3"), 10);
    assert_eq!(has("the probabilities sum to 0.7, not 1"), 12);
    assert_eq!(has("unknown process 'nosuch'"), 15);
    assert_eq!(has("unknown role 'cashier'"), 17);
    assert_eq!(has("a lognormal distribution needs `sigma`"), 20);
    assert_eq!(has("unknown user task 'greet' in process 'queue'"), 21);
    // Nobody staffed holds `clerk`: refused at load, naming the task.
    assert_eq!(has("no staffed person can do task 'serve' of 'queue'"), 17);
    assert_eq!(err.problems.len(), 8, "{messages:#?}");
}

#[test]
fn a_model_that_does_not_parse_is_located() {
    let d = dir("syntax");
    let text = model(2, 3.0, 1, "surprise: 1\n");
    let err = Model::from_yaml(&text, &d).unwrap_err();
    assert_eq!(err.problems.len(), 1);
    assert!(matches!(err.problems[0].kind, ProblemKind::Syntax(_)));
    assert!(err.problems[0].location.is_some());
}

#[test]
fn the_same_seed_gives_the_same_figures_and_another_seed_others() {
    let d = dir("seed");
    let m = Model::from_yaml(&model(2, 4.0, 7, ""), &d).unwrap();
    let a = figures(&m);
    let b = figures(&m);
    assert_eq!(a.to_json(), b.to_json());
    let p = &a.processes[0];
    assert_eq!(p.process, "queue");
    assert!(p.started.mean > 300.0 && p.started.mean < 500.0, "{p:?}");
    assert!(p.cycle_p50.mean > 0.2, "{p:?}");
    let other = Model::from_yaml(&model(2, 4.0, 8, ""), &d).unwrap();
    assert_ne!(figures(&other).to_json(), a.to_json());
}

#[test]
fn the_figures_show_the_staff_the_breaches_and_the_comparison() {
    let d = dir("show");
    let short = Model::from_yaml(&model(1, 3.5, 3, ""), &d).unwrap();
    let more = Model::from_yaml(&model(3, 3.5, 3, ""), &d).unwrap();
    let (a, b) = (figures(&short), figures(&more));
    // One clerk for 3.5 arrivals an hour of 20+ minutes each is overloaded: tasks breach.
    assert!(
        a.timers.get("breach").is_some_and(|e| e.mean > 10.0),
        "{:?}",
        a.timers
    );
    assert!(a.staff[0].utilisation.mean > 90.0, "{:?}", a.staff);
    assert!(b.staff[0].utilisation.mean < a.staff[0].utilisation.mean);
    let table = compare_table(&a, &b);
    assert!(
        table.contains("queue-1") && table.contains("queue-3"),
        "{table}"
    );
    assert!(table.contains("cycle p90 h"), "{table}");
    let csv = compare_csv(&a, &b);
    assert!(csv.starts_with("section,subject,metric,base,base_ci95,other,other_ci95,change\n"));
    assert!(a.to_csv().contains("process,queue,started,"));
}

fn mean_wait(f: &Figures) -> f64 {
    f.nodes
        .iter()
        .find(|n| n.node == "serve")
        .unwrap()
        .waiting
        .mean
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// With the same arrivals and the same handling time per task (common random numbers), a
    /// first-come first-served queue with one more clerk never waits longer.
    #[test]
    fn more_staff_never_gives_longer_waiting(seed in 0u64..1000, people in 1u32..4, rate in 1.0f64..6.0) {
        let d = dir("more");
        let fewer = Model::from_yaml(&model(people, rate, seed, ""), &d).unwrap();
        let more = Model::from_yaml(&model(people + 1, rate, seed, ""), &d).unwrap();
        let (a, b) = (figures(&fewer), figures(&more));
        prop_assert_eq!(a.processes[0].started.mean, b.processes[0].started.mean);
        prop_assert!(mean_wait(&b) <= mean_wait(&a) + 1e-9, "{} > {}", mean_wait(&b), mean_wait(&a));
    }
}

#[test]
fn calibration_recovers_a_known_rate_and_handling_time() {
    let d = dir("fit");
    let mut m = Model::from_yaml(&model(4, 5.0, 11, ""), &d).unwrap();
    m.horizon = 14 * 86_400;
    let db = d.join("history.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let store: Arc<dyn Store> = Arc::new(SqliteStore::create(&db).unwrap());
    run_once(&m, 0, store).unwrap();
    let (fitted, yaml) = calibrate(&db, &m).unwrap();
    let a = &fitted.arrivals[0];
    // 5 an hour day and night for two weeks: about 1680 arrivals.
    assert!(
        (a.per_business_hour - 5.0).abs() < 0.6,
        "{}",
        a.per_business_hour
    );
    assert!((a.per_other_hour - 5.0).abs() < 0.5, "{}", a.per_other_hour);
    // The staff work always: handling is wall-clock time, log-normal around 20 minutes.
    let serve = &fitted.work[&("queue".to_owned(), "serve".to_owned())];
    let Some(Dist::LogNormal { median, sigma }) = serve.handling else {
        panic!("{:?}", serve.handling);
    };
    assert!((median / 60.0 - 20.0).abs() < 2.0, "median {median}");
    assert!((sigma - 0.5).abs() < 0.08, "sigma {sigma}");
    // The written model loads again.
    let again = Model::from_yaml(&yaml, &d).unwrap();
    assert_eq!(again.arrivals.len(), 1);
}

/// `replicate` keeps each person's work list from the store's log of commits and reads again
/// only the instances that changed; `run_once` on another store reads every work list whole at
/// every event. The complaint centre (owners, assignments, four eyes, escalations, customers
/// who do not answer) gives the same figures both ways, digit for digit, on the simulation's
/// store and on `MemoryStore` (which encodes every commit).
#[test]
fn kept_work_lists_give_the_figures_of_whole_readings() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("process-defs/whatif/complaint-centre-more-netops.yaml");
    let mut m = Model::from_file(&file).unwrap();
    m.horizon = 3 * 86_400;
    m.warm_up = 86_400;
    m.replications = 1;
    let csv = |run| Figures::of(&m, &[run]).to_csv();
    let kept = csv(replicate(&m, 0).unwrap());
    assert!(kept.contains("diagnose"), "{kept}");
    assert_eq!(kept, csv(run_once(&m, 0, memory_store()).unwrap()));
    assert_eq!(
        kept,
        csv(run_once(&m, 0, Arc::new(MemoryStore::new())).unwrap())
    );
}

#[test]
fn staff_from_the_organisation_are_its_people_and_its_rules_apply_to_them() {
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("process-defs/whatif/complaint-centre-org.yaml");
    let mut m = Model::from_file(&file).unwrap();
    let netops = m.staff.iter().find(|s| s.label == "network_ops").unwrap();
    assert_eq!(netops.names, ["chen", "lin", "huang", "xu", "ye", "feng"]);
    assert_eq!(netops.people, 6);
    m.horizon = 3 * 86_400;
    m.warm_up = 86_400;
    m.replications = 1;
    // Every figure, the count of refused claims too: a person the engine refused (the one
    // billing clerk cannot approve the credit they drafted: four eyes) does not ask again until
    // the instance changes otherwise, in memory as on a store.
    let csv = |run| Figures::of(&m, &[run]).to_csv();
    let kept = csv(replicate(&m, 0).unwrap());
    // The diagnosis is allocated round robin to the engineers of the case's local network:
    // the simulated people are those engineers, so the diagnoses get done and the faults
    // resolved.
    let figure = |subject: &str, metric: &str| -> f64 {
        kept.lines()
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[1] == subject && f[2] == metric)
            .unwrap_or_else(|| panic!("no {subject} {metric} in {kept}"))[3]
            .parse()
            .unwrap()
    };
    let diagnosed = figure("complaint-handling/diagnose", "opened");
    let resolved = figure("complaint-handling/resolve_fault", "opened");
    assert!(diagnosed > 10.0 && resolved > 0.7 * diagnosed, "{kept}");
    assert!(figure("network_ops", "utilisation %") > 10.0, "{kept}");
    assert!(kept.contains("\nrefused,\"claim: "), "{kept}");
    assert_eq!(
        kept,
        csv(run_once(&m, 0, Arc::new(MemoryStore::new())).unwrap())
    );
}

#[test]
fn organisation_staff_without_an_organisation_or_anyone_is_refused() {
    let d = dir("orgstaff");
    let org = Path::new(env!("CARGO_MANIFEST_DIR")).join("process-defs/org/province.yaml");
    std::fs::copy(org, d.join("org.yaml")).unwrap();
    let text = model(1, 1.0, 1, "").replace(
        "  - { role: clerk, people: 1, shift: always }",
        "  - { role: clerk, people: all }\n  - { role: clerk, people: some }",
    );
    let err = Model::from_yaml(&text, &d).unwrap_err();
    let messages: Vec<String> = err.problems.iter().map(|p| p.kind.to_string()).collect();
    let line = |needle: &str| {
        err.problems
            .iter()
            .find(|p| p.kind.to_string().contains(needle))
            .unwrap_or_else(|| panic!("no problem saying '{needle}' in {messages:#?}"))
            .location
            .expect("located")
            .line
    };
    assert_eq!(line("the model names no `organisation`"), 13);
    assert_eq!(line("people must be a number or `all`, not 'some'"), 14);
    // With the organisation: nobody in it holds `clerk`, and no unit 'mars'.
    let text = text
        .replace("definitions:", "organisation: org.yaml\ndefinitions:")
        .replace(
            "{ role: clerk, people: some }",
            "{ role: clerk, people: all, unit: mars }",
        );
    let err = Model::from_yaml(&text, &d).unwrap_err();
    let messages: Vec<String> = err.problems.iter().map(|p| p.kind.to_string()).collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("no person of the organisation holds clerk")),
        "{messages:#?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("unknown unit 'mars' in the organisation")),
        "{messages:#?}"
    );
}
