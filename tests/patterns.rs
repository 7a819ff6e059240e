//! Workflow patterns of issue 12 built by this branch, through the public API: the persistent
//! trigger (WCP 24): a message declared `keep: true`, or a signal declared under `signals:`
//! with `keep: true`, that comes before anything waits for it is kept by the instance and
//! consumed by the first catch or boundary event of its name the instance reaches.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use procflow::{
    Actor, Engine, Entry, Event, ExecError, Instance, InstanceId, ManualClock, ProblemKind,
    ProcessDef, Status, TaskState, Vars, hook_fn,
};

fn t0() -> DateTime<Utc> {
    "2026-03-02T09:00:00Z".parse().unwrap()
}

fn agent() -> Actor {
    Actor::new("ann", ["agent"])
}

fn vars(pairs: &[(&str, serde_json::Value)]) -> Vars {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// An engine on a manual clock, with a hook that records every event.
fn engine(defs: &[&str]) -> (Engine, Arc<Mutex<Vec<Event>>>) {
    let clock = Arc::new(ManualClock::new(t0()));
    let heard = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&heard);
    let engine = Engine::builder()
        .clock(clock)
        .hook(hook_fn(move |e: &Event| {
            log.lock().unwrap().push(e.clone())
        }))
        .build();
    for d in defs {
        engine.deploy(ProcessDef::from_yaml(d).unwrap()).unwrap();
    }
    (engine, heard)
}

fn complete(engine: &Engine, id: InstanceId, node: &str) {
    let task = engine
        .tasks(id)
        .unwrap()
        .into_iter()
        .find(|t| &*t.node_id == node)
        .unwrap_or_else(|| panic!("no open task at {node}"))
        .id;
    engine.complete(task, &agent(), Vars::new()).unwrap();
}

fn kept(engine: &Engine, id: InstanceId) -> Vec<String> {
    engine.instance(id).unwrap().kept().collect()
}

fn count(engine: &Engine, id: InstanceId, f: impl Fn(&Entry) -> bool) -> usize {
    engine
        .instance(id)
        .unwrap()
        .audit()
        .iter()
        .filter(|r| f(&r.what))
        .count()
}

/// A task, then a catch of the persistent message `confirmed`, then a second catch of it.
const KEEP: &str = r#"
id: keep
version: 1
name: Keep
roles: { agent: { name: Agent }, lead: { name: Lead } }
variables:
  by: { type: string }
  rating: { type: integer }
messages:
  confirmed: { payload: [by, rating], keep: true }
  transient: { payload: [by] }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [agent], accountable: lead }
    next: first
  first: { kind: catch, message: confirmed, next: second }
  second: { kind: catch, message: confirmed, next: end }
  end: { kind: end }
"#;

#[test]
fn a_persistent_message_is_kept_and_consumed_by_the_catch_reached_later() {
    let (engine, heard) = engine(&[KEEP]);
    let id = engine.start("keep", Vars::new()).unwrap();
    // Nothing waits yet: kept, Ok, the payload not set yet.
    engine
        .deliver(id, "confirmed", vars(&[("by", "wang".into())]))
        .unwrap();
    assert_eq!(kept(&engine, id), ["message confirmed"]);
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.vars().get("by"), None);
    assert_eq!(inst.status(), Status::Running);
    assert_eq!(
        count(&engine, id, |e| matches!(
            e,
            Entry::TriggerKept { signal: false, name } if &**name == "confirmed"
        )),
        1
    );
    assert!(heard.lock().unwrap().iter().any(|e| matches!(
        e,
        Event::TriggerKept { instance, signal: false, name } if *instance == id && name == "confirmed"
    )));

    // The task completes: the first catch consumes the kept message, the second waits.
    complete(&engine, id, "work");
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Running);
    assert_eq!(inst.vars().get("by"), Some(&"wang".into()));
    assert!(kept(&engine, id).is_empty());
    let whats: Vec<&Entry> = inst.audit().iter().map(|r| &r.what).collect();
    let consumed = whats
        .iter()
        .position(|e| matches!(e, Entry::TriggerConsumed { signal: false, name } if &**name == "confirmed"))
        .expect("consumed");
    assert!(
        matches!(whats[consumed + 1], Entry::MessageCaught { message, .. } if &**message == "confirmed")
    );
    assert_eq!(
        count(&engine, id, |e| matches!(e, Entry::MessageCaught { .. })),
        1
    );
    // The second catch waits now: a delivery reaches it directly.
    engine
        .deliver(id, "confirmed", vars(&[("rating", 4.into())]))
        .unwrap();
    assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
}

#[test]
fn two_kept_messages_are_consumed_in_order_by_two_catches() {
    let (engine, _) = engine(&[KEEP]);
    let id = engine.start("keep", Vars::new()).unwrap();
    engine
        .deliver(id, "confirmed", vars(&[("by", "first".into())]))
        .unwrap();
    engine
        .deliver(id, "confirmed", vars(&[("by", "second".into())]))
        .unwrap();
    assert_eq!(
        kept(&engine, id),
        ["message confirmed", "message confirmed"]
    );
    complete(&engine, id, "work");
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Completed);
    // Oldest first: the second payload was set last.
    assert_eq!(inst.vars().get("by"), Some(&"second".into()));
    assert_eq!(
        count(&engine, id, |e| matches!(e, Entry::TriggerConsumed { .. })),
        2
    );
}

#[test]
fn deliveries_that_are_not_kept_are_refused_and_change_nothing() {
    let (engine, _) = engine(&[KEEP]);
    let id = engine.start("keep", Vars::new()).unwrap();
    let before = engine.instance(id).unwrap();
    // Transient: refused as before.
    assert!(matches!(
        engine.deliver(id, "transient", Vars::new()),
        Err(ExecError::NotWaiting { .. })
    ));
    assert!(matches!(
        engine.deliver(id, "nope", Vars::new()),
        Err(ExecError::UnknownMessage { .. })
    ));
    // A bad payload is refused before anything is kept.
    assert!(matches!(
        engine.deliver(id, "confirmed", vars(&[("rating", "five".into())])),
        Err(ExecError::Variables { .. })
    ));
    assert_eq!(engine.instance(id).unwrap(), before);
    assert!(kept(&engine, id).is_empty());

    // Both catches passed: nothing of the message lies ahead, so it is refused, not kept.
    complete(&engine, id, "work");
    engine.deliver(id, "confirmed", Vars::new()).unwrap();
    engine.deliver(id, "confirmed", Vars::new()).unwrap();
    assert!(matches!(
        engine.deliver(id, "confirmed", Vars::new()),
        Err(ExecError::InstanceCompleted(_))
    ));
}

const AFTER: &str = r#"
id: after
version: 1
name: After
roles: { agent: { name: Agent }, lead: { name: Lead } }
messages:
  confirmed: { keep: true }
nodes:
  start: { kind: start, next: wait }
  wait: { kind: catch, message: confirmed, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [agent], accountable: lead }
    next: end
  end: { kind: end }
"#;

#[test]
fn a_persistent_message_with_no_catch_ahead_is_refused() {
    let (engine, _) = engine(&[AFTER]);
    let id = engine.start("after", Vars::new()).unwrap();
    engine.deliver(id, "confirmed", Vars::new()).unwrap();
    // The token is at `work`, past the catch.
    assert_eq!(engine.tasks(id).unwrap().len(), 1);
    assert!(matches!(
        engine.deliver(id, "confirmed", Vars::new()),
        Err(ExecError::NotWaiting { .. })
    ));
    assert!(kept(&engine, id).is_empty());
}

const BOUNDARY: &str = r#"
id: boundary
version: 1
name: Boundary
roles: { agent: { name: Agent }, lead: { name: Lead } }
messages:
  withdrawn: { keep: true }
nodes:
  start: { kind: start, next: prepare }
  prepare:
    kind: user_task
    name: Prepare
    raci: { responsible: [agent], accountable: lead }
    next: work
  work:
    kind: user_task
    name: Work
    raci: { responsible: [agent], accountable: lead }
    boundary: [ { message: withdrawn, to: cancelled } ]
    next: end
  cancelled: { kind: end }
  end: { kind: end }
"#;

#[test]
fn a_kept_message_fires_the_boundary_event_of_the_task_when_it_opens() {
    let (engine, _) = engine(&[BOUNDARY]);
    let id = engine.start("boundary", Vars::new()).unwrap();
    engine.deliver(id, "withdrawn", Vars::new()).unwrap();
    assert_eq!(kept(&engine, id), ["message withdrawn"]);
    complete(&engine, id, "prepare");
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Completed);
    let work = inst.tasks().last().unwrap();
    assert!(matches!(work.state(), TaskState::Cancelled { .. }));
    assert_eq!(
        count(&engine, id, |e| matches!(e, Entry::Boundary { .. })),
        1
    );
    assert!(kept(&engine, id).is_empty());
}

const SIGNALLED: &str = r#"
id: signalled
version: 1
name: Signalled
roles: { agent: { name: Agent }, lead: { name: Lead } }
variables: { reason: { type: string } }
signals:
  recall: { name_zh: 召回, keep: true }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [agent], accountable: lead }
    next: wait
  wait: { kind: catch, signal: recall, next: end }
  end: { kind: end }
"#;

#[test]
fn a_persistent_signal_is_kept_by_instances_declaring_it_and_lost_by_the_others() {
    let transient = SIGNALLED
        .replace("id: signalled", "id: transient")
        .replace("keep: true", "keep: false");
    let (engine, _) = engine(&[SIGNALLED, &transient]);
    let keeps = engine.start("signalled", Vars::new()).unwrap();
    let loses = engine.start("transient", Vars::new()).unwrap();
    // Nothing waits yet: none woken, one kept.
    let woken = engine
        .signal("recall", vars(&[("reason", "batch".into())]))
        .unwrap();
    assert_eq!(woken, 0);
    assert_eq!(kept(&engine, keeps), ["signal recall"]);
    assert!(kept(&engine, loses).is_empty());
    assert_eq!(
        count(&engine, keeps, |e| matches!(
            e,
            Entry::TriggerKept { signal: true, .. }
        )),
        1
    );
    complete(&engine, keeps, "work");
    complete(&engine, loses, "work");
    let inst = engine.instance(keeps).unwrap();
    assert_eq!(inst.status(), Status::Completed);
    assert_eq!(inst.vars().get("reason"), Some(&"batch".into()));
    assert_eq!(engine.instance(loses).unwrap().status(), Status::Running);
    // The transient one waits now: a signal wakes it (and the finished one keeps nothing).
    assert_eq!(engine.signal("recall", Vars::new()).unwrap(), 1);
    assert_eq!(engine.instance(loses).unwrap().status(), Status::Completed);
    assert!(kept(&engine, keeps).is_empty());
}

#[test]
fn a_restored_kept_trigger_round_trips_and_nonsense_is_rejected() {
    let (engine, _) = engine(&[KEEP]);
    let id = engine.start("keep", Vars::new()).unwrap();
    engine
        .deliver(id, "confirmed", vars(&[("by", "wang".into())]))
        .unwrap();
    let inst = engine.instance(id).unwrap();
    let def = engine.definition_of(id).unwrap();
    let back = Instance::decode(&inst.encode(), inst.audit().to_vec()).unwrap();
    assert_eq!(back, inst);
    back.check(&def).unwrap();

    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut state: serde_json::Value = serde_json::from_str(&inst.encode()).unwrap();
        f(&mut state);
        Instance::decode(&state.to_string(), Vec::new()).unwrap()
    };
    // A message that is not persistent.
    let bad = edit(&|s| s["kept"][0]["name"] = "transient".into());
    assert!(bad.check(&def).is_err());
    // A payload outside the message's.
    let bad = edit(&|s| s["kept"][0]["vars"] = serde_json::json!({ "nope": 1 }));
    assert!(bad.check(&def).is_err());
    // A kept message while its catch waits (it would have been consumed).
    complete(&engine, id, "work");
    let waiting = engine.instance(id).unwrap();
    let mut state: serde_json::Value = serde_json::from_str(&waiting.encode()).unwrap();
    state["kept"] = serde_json::json!([{ "name": "confirmed" }]);
    let bad = Instance::decode(&state.to_string(), Vec::new()).unwrap();
    assert!(bad.check(&def).is_err());
}

#[test]
fn declared_signals_are_checked_with_located_errors() {
    let text = r#"
id: bad
version: 1
name: Bad
signals:
  "not an id": { keep: true }
  ok: { keep: true, nonsense: 1 }
nodes:
  start: { kind: start, next: end }
  end: { kind: end }
"#;
    let err = ProcessDef::from_yaml(text).unwrap_err();
    assert!(!err.problems.is_empty(), "{err}");
    let text = r#"
id: bad
version: 1
name: Bad
signals:
  "not an id": { keep: true }
nodes:
  start: { kind: start, next: end }
  end: { kind: end }
"#;
    let err = ProcessDef::from_yaml(text).unwrap_err();
    let p = err
        .problems
        .iter()
        .find(|p| p.kind == ProblemKind::InvalidId("not an id".into()))
        .unwrap_or_else(|| panic!("{err}"));
    assert_eq!(p.location.map(|l| l.line), Some(6));
    let def = ProcessDef::from_yaml(SIGNALLED).unwrap();
    let (name, signal) = def.signals().next().unwrap();
    assert_eq!(
        (name, signal.keep(), signal.name_zh()),
        ("recall", true, Some("召回"))
    );
    assert!(def.messages().next().is_none());
}
