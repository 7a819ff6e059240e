//! Stored state that decodes but does not fit its definition (damaged or edited data), and a
//! stale copy of an instance another engine moved on: typed errors and fresh reads, never a
//! panic, never a wrong answer.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use procflow::{
    Actor, Commit, Engine, ExecError, Instance, ManualClock, MemoryStore, OpenError, ProcessDef,
    Store, StoreError, TimerDriver, Vars,
};

const DEF: &str = r#"
id: fix
version: 1
name: Fix
roles: { agent: { name: Agent }, lead: { name: Lead } }
nodes:
  start: { kind: start, next: first }
  first:
    kind: user_task
    name: First
    raci: { responsible: [agent], accountable: lead }
    due: 2h
    next: second
  second:
    kind: user_task
    name: Second
    raci: { responsible: [agent], accountable: lead }
    next: end
  end: { kind: end }
"#;

fn t0() -> DateTime<Utc> {
    "2026-03-02T09:00:00Z".parse().unwrap()
}

fn agent() -> Actor {
    Actor::new("ann", ["agent"])
}

/// Writes `edit(state)` over the stored state of the one instance, as a damaged medium or a
/// hand edit would.
fn tamper(store: &MemoryStore, edit: impl Fn(serde_json::Value) -> serde_json::Value) {
    let stored = store.running().unwrap().remove(0);
    let state: serde_json::Value = serde_json::from_str(&stored.instance.encode()).unwrap();
    let bad = Instance::decode(&edit(state).to_string(), Vec::new()).expect("still decodes");
    store
        .commit(&Commit {
            instance: &bad,
            def: stored.instance.def().unwrap(),
            records: &[],
            first_record: stored.instance.audit().len(),
            version: stored.version,
            next_due: Some(t0()),
            keys: None,
            offers: None,
            takes: None,
        })
        .unwrap();
}

fn started(store: &MemoryStore) -> procflow::InstanceId {
    let engine = Engine::builder()
        .clock(ManualClock::new(t0()))
        .open(store.clone())
        .unwrap();
    engine.deploy(ProcessDef::from_yaml(DEF).unwrap()).unwrap();
    engine.start("fix", Vars::new()).unwrap()
}

#[test]
fn a_stored_state_that_does_not_fit_its_definition_is_refused_typed() {
    type Edit = fn(serde_json::Value) -> serde_json::Value;
    let edits: [(&str, Edit); 3] = [
        ("a timer naming node 999", |mut s| {
            s["timers"][0]["node"] = 999.into();
            s
        }),
        ("a waiting token without its task", |mut s| {
            s["tasks"] = serde_json::json!([]);
            s["timers"] = serde_json::json!([]);
            s
        }),
        ("a task at a node that is not a user task", |mut s| {
            s["tasks"][0]["node"] = 0.into();
            s
        }),
    ];
    for (what, edit) in edits {
        let store = MemoryStore::new();
        started(&store);
        tamper(&store, edit);
        let err = Engine::builder()
            .clock(ManualClock::new(t0()))
            .open(store.clone())
            .expect_err(what);
        assert!(
            matches!(err, OpenError::Store(StoreError::Decode { .. })),
            "{what}: {err}"
        );
    }
}

#[test]
fn an_instance_read_on_demand_is_checked_and_the_timer_driver_survives() {
    let store = MemoryStore::new();
    let id = started(&store);
    // A healthy second instance, then damage the first.
    let engine = Arc::new(
        Engine::builder()
            .clock(ManualClock::new(t0()))
            .open(store.clone())
            .unwrap(),
    );
    let healthy = engine.start("fix", Vars::new()).unwrap();
    engine.remove(id).unwrap();
    let all = store.running().unwrap();
    let victim = all.iter().find(|s| s.instance.id() == id).unwrap();
    let mut state: serde_json::Value = serde_json::from_str(&victim.instance.encode()).unwrap();
    state["timers"][0]["node"] = 999.into();
    let bad = Instance::decode(&state.to_string(), Vec::new()).unwrap();
    store
        .commit(&Commit {
            instance: &bad,
            def: victim.instance.def().unwrap(),
            records: &[],
            first_record: victim.instance.audit().len(),
            version: victim.version,
            next_due: Some(t0()),
            keys: None,
            offers: None,
            takes: None,
        })
        .unwrap();
    // Every call on it is a typed error; the others go on.
    for result in [
        engine.tasks(id).map(|_| ()),
        engine.instance(id).map(|_| ()),
        engine.complete(procflow::TaskId::new(id, 0), &agent(), Vars::new()),
    ] {
        assert!(
            matches!(result, Err(ExecError::Store(StoreError::Decode { .. }))),
            "{result:?}"
        );
    }
    let driver = TimerDriver::spawn(Arc::clone(&engine), std::time::Duration::from_millis(5));
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(driver.is_running());
    assert_eq!(driver.failures(), 0);
    let fired = engine.tick("2026-03-02T12:00:00Z".parse().unwrap());
    assert!(fired.iter().all(|f| f.instance == healthy), "{fired:?}");
    assert!(
        engine
            .work_list(&agent())
            .iter()
            .all(|t| t.id.instance() == healthy)
    );
}

/// Engine B moves an instance on while engine A holds an older copy: A's call on the task B
/// opened reads the stored state and works, instead of answering "unknown task".
#[test]
fn a_call_on_a_stale_copy_reads_the_stored_state() {
    let store = MemoryStore::new();
    let id = started(&store);
    let a = Engine::builder()
        .clock(ManualClock::new(t0()))
        .open(store.clone())
        .unwrap();
    let b = Engine::builder()
        .clock(ManualClock::new(t0()))
        .open(store.clone())
        .unwrap();
    assert_eq!(a.tasks(id).unwrap().len(), 1);
    let first = b.tasks(id).unwrap()[0].id;
    b.complete(first, &agent(), Vars::new()).unwrap();
    let second = b.tasks(id).unwrap()[0].id;
    assert_eq!(second.seq(), 1);
    // A still holds the copy with only the first task open; the second is unknown to it.
    a.complete(second, &agent(), Vars::new())
        .expect("A reads the stored state");
    assert!(a.tasks(id).unwrap().is_empty());
    // And a completion of the first task from A's side is a closed task, not a panic.
    assert!(matches!(
        a.complete(first, &agent(), Vars::new()),
        Err(ExecError::TaskClosed { .. })
    ));
}
