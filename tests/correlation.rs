//! Messages between processes (issue 13, item 2): `Engine::correlate` by business key, send
//! nodes through the outbox, message start events, messages kept engine-wide (`keep_for`) and
//! recorded unmatched, and exactly-once delivery across a crash.

use std::process::Command;
use std::sync::{Arc, Mutex};

use chrono::Duration;
use procflow::{
    Actor, Engine, Entry, Event, ExecError, FollowUp, InstanceId, ManualClock, MemoryStore,
    ProblemKind, ProcessDef, SqliteStore, Status, Store, VarProblem, VarType, Vars, hook_fn,
};
use serde_json::json;

mod common;

const REPAIR: &str = r#"
id: repair
version: 1
name: Repair
variables:
  ticket_id: { type: string }
  fault_status: { type: string }
keys: [ticket_id]
roles: { clerk: { name: Clerk } }
messages:
  fault_status: { flow: 45, payload: [fault_status, ticket_id], correlate: { ticket_id: ticket_id } }
nodes:
  start: { kind: start, next: wait }
  wait: { kind: catch, message: fault_status, next: check }
  check: { kind: user_task, name: Check, raci: { responsible: [clerk], accountable: clerk }, next: end }
  end: { kind: end }
"#;

const NETWORK: &str = r#"
id: network
version: 1
name: Network
variables:
  ticket_id: { type: string }
  fault_status: { type: string }
keys: [ticket_id]
roles: { tech: { name: Technician } }
sends:
  fault_status: { flow: 45, payload: [fault_status, ticket_id], name_zh: 故障状态, description: "The fault's status, back to 3.7" }
nodes:
  start: { kind: start, next: fix }
  fix: { kind: user_task, name: Fix, raci: { responsible: [tech], accountable: tech }, next: tell }
  tell: { kind: send, message: fault_status, next: end }
  end: { kind: end }
"#;

fn vars(pairs: &[(&str, serde_json::Value)]) -> Vars {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn ticket(id: &str) -> Vars {
    vars(&[("ticket_id", json!(id))])
}

fn status(ticket: &str, status: &str) -> Vars {
    vars(&[
        ("ticket_id", json!(ticket)),
        ("fault_status", json!(status)),
    ])
}

fn engine_with(defs: &[&str]) -> Engine {
    let engine = Engine::new();
    for d in defs {
        engine.deploy(ProcessDef::from_yaml(d).unwrap()).unwrap();
    }
    engine
}

fn received(engine: &Engine, id: InstanceId) -> Vec<(String, Option<InstanceId>)> {
    engine
        .instance(id)
        .unwrap()
        .audit()
        .iter()
        .filter_map(|r| match &r.what {
            Entry::MessageReceived(m) => Some((m.message.clone(), m.from)),
            _ => None,
        })
        .collect()
}

#[test]
fn correlates_by_key_to_one_of_many_waiting_instances() {
    let engine = engine_with(&[REPAIR]);
    let ids: Vec<InstanceId> = (0..50)
        .map(|i| engine.start("repair", ticket(&format!("T-{i}"))).unwrap())
        .collect();
    let c = engine
        .correlate("fault_status", status("T-17", "cleared"))
        .unwrap();
    assert_eq!(c.received, vec![ids[17]]);
    assert!(c.started.is_empty() && !c.kept && !c.unmatched());
    assert_eq!(common::open(&engine, ids[17]), ["check"]);
    assert_eq!(
        engine.instance(ids[17]).unwrap().vars()["fault_status"],
        json!("cleared")
    );
    assert_eq!(received(&engine, ids[17]), [("fault_status".into(), None)]);
    for (i, id) in ids.iter().enumerate() {
        if i != 17 {
            assert!(common::open(&engine, *id).is_empty(), "instance {i} moved");
        }
    }
    // It no longer waits: the same message again matches nobody.
    let again = engine
        .correlate("fault_status", status("T-17", "cleared"))
        .unwrap();
    assert!(again.unmatched());
}

#[test]
fn the_definition_exposes_flows_and_correlation() {
    let def = ProcessDef::from_yaml(REPAIR).unwrap();
    let (name, m) = def.messages().next().unwrap();
    assert_eq!(name, "fault_status");
    assert_eq!(m.flow(), Some(45));
    assert_eq!(
        m.correlate().collect::<Vec<_>>(),
        [("ticket_id", "ticket_id")]
    );
    assert!(!m.many() && m.keep_for().is_none());
    let net = ProcessDef::from_yaml(NETWORK).unwrap();
    let (name, s) = net.sends().next().unwrap();
    assert_eq!(
        (name, s.flow(), s.name_zh()),
        ("fault_status", Some(45), Some("故障状态"))
    );
    assert_eq!(s.payload(), ["fault_status", "ticket_id"]);
    assert_eq!(
        net.node(net.node_id("tell").unwrap()).kind(),
        procflow::NodeKind::Send
    );
}

#[test]
fn several_matches_are_an_error_naming_them_and_change_nothing() {
    let engine = engine_with(&[REPAIR]);
    let a = engine.start("repair", ticket("T-1")).unwrap();
    let b = engine.start("repair", ticket("T-1")).unwrap();
    let before_a = engine.instance(a).unwrap();
    match engine.correlate("fault_status", status("T-1", "cleared")) {
        Err(ExecError::AmbiguousMessage {
            message,
            candidates,
        }) => {
            assert_eq!(message, "fault_status");
            assert_eq!(candidates, vec![a, b]);
        }
        other => panic!("expected an ambiguous match, got {other:?}"),
    }
    assert_eq!(engine.instance(a).unwrap(), before_a);
    assert!(common::open(&engine, b).is_empty());
}

#[test]
fn many_true_delivers_to_every_match() {
    let def = REPAIR.replace(
        "correlate: { ticket_id: ticket_id } }",
        "correlate: { ticket_id: ticket_id }, many: true }",
    );
    let engine = engine_with(&[&def]);
    let a = engine.start("repair", ticket("T-1")).unwrap();
    let b = engine.start("repair", ticket("T-1")).unwrap();
    let c = engine.start("repair", ticket("T-2")).unwrap();
    let got = engine
        .correlate("fault_status", status("T-1", "cleared"))
        .unwrap();
    assert_eq!(got.received, vec![a, b]);
    assert_eq!(common::open(&engine, a), ["check"]);
    assert_eq!(common::open(&engine, b), ["check"]);
    assert!(common::open(&engine, c).is_empty());
}

#[test]
fn refused_messages_change_nothing() {
    let engine = engine_with(&[REPAIR]);
    let id = engine.start("repair", ticket("T-1")).unwrap();
    let before = engine.instance(id).unwrap();

    // Missing correlation value.
    match engine.correlate("fault_status", vars(&[("fault_status", json!("x"))])) {
        Err(ExecError::MissingCorrelation { message, field }) => {
            assert_eq!(
                (message.as_str(), field.as_str()),
                ("fault_status", "ticket_id")
            );
        }
        other => panic!("expected a missing correlation value, got {other:?}"),
    }
    // A payload variable of the wrong type.
    match engine.correlate(
        "fault_status",
        vars(&[("ticket_id", json!("T-1")), ("fault_status", json!(7))]),
    ) {
        Err(ExecError::Variables { problems }) => assert_eq!(
            problems,
            vec![(
                "fault_status".to_owned(),
                VarProblem::WrongType {
                    expected: VarType::String
                }
            )]
        ),
        other => panic!("expected a wrong type, got {other:?}"),
    }
    // A variable outside the payload.
    match engine.correlate(
        "fault_status",
        vars(&[("ticket_id", json!("T-1")), ("other", json!(1))]),
    ) {
        Err(ExecError::Variables { problems }) => {
            assert_eq!(
                problems,
                vec![("other".to_owned(), VarProblem::NotInPayload)]
            )
        }
        other => panic!("expected a variable outside the payload, got {other:?}"),
    }
    // A message no deployed definition declares.
    match engine.correlate("no_such", ticket("T-1")) {
        Err(ExecError::UndeclaredMessage { message }) => assert_eq!(message, "no_such"),
        other => panic!("expected an unknown message, got {other:?}"),
    }
    assert_eq!(engine.instance(id).unwrap(), before);
}

const ALARM: &str = r#"
id: complaint
version: 1
name: Complaint
variables:
  ticket_id: { type: string }
  severity: { type: integer }
keys: [ticket_id]
roles: { clerk: { name: Clerk } }
messages:
  alarm: { flow: 48, payload: [ticket_id, severity], correlate: { ticket_id: ticket_id } }
nodes:
  start: { kind: start, message: alarm, next: handle }
  handle: { kind: user_task, name: Handle, raci: { responsible: [clerk], accountable: clerk }, next: end }
  end: { kind: end }
"#;

#[test]
fn a_message_start_event_starts_an_instance_with_the_payload() {
    let engine = engine_with(&[ALARM]);
    let def = engine.definition("complaint", None).unwrap();
    assert_eq!(def.start_message(), Some("alarm"));
    let c = engine
        .correlate(
            "alarm",
            vars(&[("ticket_id", json!("T-9")), ("severity", json!(2))]),
        )
        .unwrap();
    assert!(c.received.is_empty());
    assert_eq!(c.started.len(), 1);
    let id = c.started[0];
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.vars()["ticket_id"], json!("T-9"));
    assert_eq!(inst.vars()["severity"], json!(2));
    assert_eq!(received(&engine, id), [("alarm".into(), None)]);
    assert_eq!(common::open(&engine, id), ["handle"]);
    // It can still be started by the host.
    let by_host = engine.start("complaint", ticket("T-10")).unwrap();
    assert_eq!(common::open(&engine, by_host), ["handle"]);
}

const KEPT: &str = r#"
id: order
version: 1
name: Order
variables:
  order_id: { type: integer }
  answer: { type: string }
keys: [order_id]
roles: { clerk: { name: Clerk } }
messages:
  billing_reply: { flow: 55, payload: [order_id, answer], correlate: { order_id: order_id }, keep_for: 24h }
nodes:
  start: { kind: start, next: prepare }
  prepare: { kind: user_task, name: Prepare, raci: { responsible: [clerk], accountable: clerk }, next: wait }
  wait: { kind: catch, message: billing_reply, next: done }
  done: { kind: user_task, name: Done, raci: { responsible: [clerk], accountable: clerk }, next: end }
  end: { kind: end }
"#;

fn clock_engine(clock: &Arc<ManualClock>, heard: &Arc<Mutex<Vec<Event>>>) -> Engine {
    let sink = Arc::clone(heard);
    Engine::builder()
        .clock(Arc::clone(clock))
        .hook(hook_fn(move |ev: &Event| {
            sink.lock().unwrap().push(ev.clone());
        }))
        .build()
}

#[test]
fn a_kept_message_goes_to_the_first_instance_that_waits_for_it() {
    let clock = Arc::new(ManualClock::new("2026-12-01T09:00:00Z".parse().unwrap()));
    let heard = Arc::default();
    let engine = clock_engine(&clock, &heard);
    engine.deploy(ProcessDef::from_yaml(KEPT).unwrap()).unwrap();
    let id = engine
        .start("order", vars(&[("order_id", json!(42))]))
        .unwrap();
    // The reply comes before the order waits for it: kept engine-wide.
    let c = engine
        .correlate(
            "billing_reply",
            vars(&[("order_id", json!(42)), ("answer", json!("paid"))]),
        )
        .unwrap();
    assert!(c.kept && c.received.is_empty());
    assert_eq!(engine.kept_messages().len(), 1);
    clock.advance(Duration::hours(2));
    let task = engine.tasks(id).unwrap()[0].id;
    engine
        .complete(task, &Actor::new("ann", ["clerk"]), Vars::new())
        .unwrap();
    // Waiting now, it received the kept message at once.
    assert_eq!(common::open(&engine, id), ["done"]);
    assert_eq!(engine.instance(id).unwrap().vars()["answer"], json!("paid"));
    assert!(engine.kept_messages().is_empty());
    assert_eq!(received(&engine, id), [("billing_reply".into(), None)]);
    // Much later, nothing expires: it was consumed.
    clock.advance(Duration::days(2));
    engine.tick(procflow::Clock::now(&*clock));
    assert!(engine.unmatched().unwrap().is_empty());
    assert!(
        !heard
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::MessageUnmatched { .. }))
    );
}

#[test]
fn a_kept_message_expires_to_unmatched_and_survives_a_restart() {
    let clock = Arc::new(ManualClock::new("2026-12-01T09:00:00Z".parse().unwrap()));
    let heard: Arc<Mutex<Vec<Event>>> = Arc::default();
    let store = MemoryStore::new();
    let sink = Arc::clone(&heard);
    let engine = Engine::builder()
        .clock(Arc::clone(&clock))
        .hook(hook_fn(move |ev: &Event| {
            sink.lock().unwrap().push(ev.clone());
        }))
        .open(store.clone())
        .unwrap();
    engine.deploy(ProcessDef::from_yaml(KEPT).unwrap()).unwrap();
    let c = engine
        .correlate(
            "billing_reply",
            vars(&[("order_id", json!(7)), ("answer", json!("paid"))]),
        )
        .unwrap();
    assert!(c.kept);
    assert_eq!(store.parked().unwrap().len(), 1);
    // The kept message survives a restart.
    drop(engine);
    let engine = Engine::builder()
        .clock(Arc::clone(&clock))
        .open(store.clone())
        .unwrap();
    assert_eq!(engine.kept_messages().len(), 1);
    clock.advance(Duration::hours(23));
    engine.tick(procflow::Clock::now(&*clock));
    assert_eq!(engine.kept_messages().len(), 1, "expired early");
    drop(engine);
    let sink = Arc::clone(&heard);
    let engine = Engine::builder()
        .clock(Arc::clone(&clock))
        .hook(hook_fn(move |ev: &Event| {
            sink.lock().unwrap().push(ev.clone());
        }))
        .open(store.clone())
        .unwrap();
    clock.advance(Duration::hours(2));
    engine.tick(procflow::Clock::now(&*clock));
    assert!(engine.kept_messages().is_empty());
    let unmatched = engine.unmatched().unwrap();
    assert_eq!(unmatched.len(), 1);
    assert_eq!(unmatched[0].message, "billing_reply");
    assert_eq!(unmatched[0].vars["order_id"], json!(7));
    assert!(heard.lock().unwrap().iter().any(|e| matches!(
        e,
        Event::MessageUnmatched { message, from: None, .. } if message == "billing_reply"
    )));
    // An instance that waits later does not get it.
    let id = engine
        .start("order", vars(&[("order_id", json!(7))]))
        .unwrap();
    let task = engine.tasks(id).unwrap()[0].id;
    engine
        .complete(task, &Actor::new("ann", ["clerk"]), Vars::new())
        .unwrap();
    assert!(common::open(&engine, id).is_empty());
    // Recorded unmatched, in the store, after a restart too.
    drop(engine);
    let engine = Engine::open(store.clone()).unwrap();
    assert_eq!(engine.unmatched().unwrap().len(), 1);
}

#[test]
fn a_send_node_delivers_to_the_correlated_receiver_and_both_trails_record_it() {
    let heard: Arc<Mutex<Vec<Event>>> = Arc::default();
    let sink = Arc::clone(&heard);
    let store = MemoryStore::new();
    let engine = Engine::builder()
        .hook(hook_fn(move |ev: &Event| {
            sink.lock().unwrap().push(ev.clone());
        }))
        .open(store.clone())
        .unwrap();
    engine
        .deploy(ProcessDef::from_yaml(REPAIR).unwrap())
        .unwrap();
    engine
        .deploy(ProcessDef::from_yaml(NETWORK).unwrap())
        .unwrap();
    let receiver = engine.start("repair", ticket("T-5")).unwrap();
    let other = engine.start("repair", ticket("T-6")).unwrap();
    let sender = engine.start("network", ticket("T-5")).unwrap();
    let task = engine.tasks(sender).unwrap()[0].id;
    engine
        .complete(
            task,
            &Actor::new("bob", ["tech"]),
            vars(&[("fault_status", json!("repaired"))]),
        )
        .unwrap();
    assert_eq!(engine.instance(sender).unwrap().status(), Status::Completed);
    assert_eq!(common::open(&engine, receiver), ["check"]);
    assert!(common::open(&engine, other).is_empty());
    assert_eq!(
        engine.instance(receiver).unwrap().vars()["fault_status"],
        json!("repaired")
    );
    assert_eq!(
        received(&engine, receiver),
        [("fault_status".into(), Some(sender))]
    );
    let trail = engine.instance(sender).unwrap();
    let sent: Vec<&Entry> = trail
        .audit()
        .iter()
        .map(|r| &r.what)
        .filter(|w| matches!(w, Entry::MessageSent { .. } | Entry::MessageDelivered(_)))
        .collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    match sent[1] {
        Entry::MessageDelivered(d) => {
            assert_eq!(d.received, vec![receiver]);
            assert!(d.started.is_empty() && !d.kept);
        }
        other => panic!("expected the delivery, got {other:?}"),
    }
    assert!(trail.pending().is_empty());
    assert!(store.outbox().unwrap().is_empty());
    let heard = heard.lock().unwrap();
    assert!(heard.iter().any(|e| matches!(e, Event::MessageSent { instance, received, .. } if *instance == sender && *received == vec![receiver])));
    assert!(heard.iter().any(|e| matches!(e, Event::MessageReceived { instance, from: Some(f), .. } if *instance == receiver && *f == sender)));
    // The receiver's state survives its store round trip.
    drop(heard);
    drop(engine);
    let engine = Engine::open(store).unwrap();
    assert_eq!(
        received(&engine, receiver),
        [("fault_status".into(), Some(sender))]
    );
}

#[test]
fn a_send_without_a_store_delivers_too() {
    let engine = engine_with(&[REPAIR, NETWORK]);
    let receiver = engine.start("repair", ticket("T-5")).unwrap();
    let sender = engine.start("network", ticket("T-5")).unwrap();
    let task = engine.tasks(sender).unwrap()[0].id;
    engine
        .complete(
            task,
            &Actor::new("bob", ["tech"]),
            vars(&[("fault_status", json!("repaired"))]),
        )
        .unwrap();
    assert_eq!(common::open(&engine, receiver), ["check"]);
    assert!(
        engine
            .instance(sender)
            .unwrap()
            .audit()
            .iter()
            .any(|r| matches!(&r.what, Entry::MessageDelivered(d) if d.received == vec![receiver]))
    );
}

#[test]
fn a_wait_on_a_boundary_event_is_correlated_too() {
    let def = r#"
id: survey
version: 1
name: Survey
variables: { ticket_id: { type: string }, fault_status: { type: string } }
keys: [ticket_id]
roles: { clerk: { name: Clerk } }
messages:
  fault_status: { payload: [fault_status, ticket_id], correlate: { ticket_id: ticket_id } }
nodes:
  start: { kind: start, next: ask }
  ask:
    kind: user_task
    name: Ask
    raci: { responsible: [clerk], accountable: clerk }
    boundary: [{ message: fault_status, to: stop }]
    next: end
  stop: { kind: end }
  end: { kind: end }
"#;
    let engine = engine_with(&[def]);
    let id = engine.start("survey", ticket("T-3")).unwrap();
    let c = engine
        .correlate("fault_status", status("T-3", "closed"))
        .unwrap();
    assert_eq!(c.received, vec![id]);
    assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
}

#[test]
fn load_errors_are_located_and_all_reported() {
    let bad = r#"
id: bad
version: 1
name: Bad
variables: { ticket_id: { type: string }, x: { type: string } }
keys: [ticket_id]
messages:
  m1: { flow: 99, payload: [x, nope], correlate: { order_id: x, ticket_id: y }, keep_for: 2h business }
sends:
  s1: { payload: [missing] }
nodes:
  start: { kind: start, message: unknown_start, next: wait }
  wait: { kind: catch, message: never_declared, next: out }
  out: { kind: send, message: not_a_send, next: end }
  end: { kind: end }
"#;
    let problems = match ProcessDef::from_yaml(bad) {
        Err(e) => e.problems,
        Ok(_) => panic!("the definition loaded"),
    };
    let kinds: Vec<&ProblemKind> = problems.iter().map(|p| &p.kind).collect();
    let has = |k: ProblemKind| kinds.contains(&&k);
    assert!(has(ProblemKind::FlowNumber(99)), "{problems:#?}");
    assert!(has(ProblemKind::UndeclaredVariable("nope".into())));
    assert!(has(ProblemKind::CorrelationKey("order_id".into())));
    assert!(has(ProblemKind::CorrelationField("y".into())));
    assert!(has(ProblemKind::KeepFor("2h business".into())));
    assert!(has(ProblemKind::UndeclaredVariable("missing".into())));
    assert!(has(ProblemKind::UnknownMessage("unknown_start".into())));
    assert!(has(ProblemKind::UnknownMessage("never_declared".into())));
    assert!(has(ProblemKind::UnknownSend("not_a_send".into())));
    assert!(
        problems.iter().all(|p| p.location.is_some()),
        "{problems:#?}"
    );
    let text = problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("messages.m1.correlate.order_id"), "{text}");
    assert!(text.contains("nodes.out.message"), "{text}");
}

/// A receiver that still waits after it received the message (a non-interrupting boundary
/// event), and lets every waiting instance of a ticket have it (`many: true`): a follow-up run
/// again must skip the receivers that have it already.
const WATCH: &str = r#"
id: watch
version: 1
name: Watch
variables: { ticket_id: { type: string }, fault_status: { type: string } }
keys: [ticket_id]
roles: { clerk: { name: Clerk } }
messages:
  fault_status: { payload: [fault_status, ticket_id], correlate: { ticket_id: ticket_id }, many: true }
nodes:
  start: { kind: start, next: follow }
  follow:
    kind: user_task
    name: Follow
    raci: { responsible: [clerk], accountable: clerk }
    boundary: [{ message: fault_status, to: noted, interrupting: false }]
    next: end
  noted: { kind: end }
  end: { kind: end }
"#;

const CHILD: &str = "PROCFLOW_CORRELATION_CHILD";

/// The child: completes the sender's task, and is killed as soon as the first receiver
/// committed the message (the second has not received it, and the sender's follow-up is not
/// marked done).
#[test]
fn child_sends_and_dies() {
    let Ok(path) = std::env::var(CHILD) else {
        return;
    };
    let engine = Engine::builder()
        .hook(hook_fn(|ev: &Event| {
            if let Event::MessageReceived { .. } = ev {
                let me = std::process::id().to_string();
                let _ = Command::new("kill").args(["-9", &me]).status();
                std::thread::sleep(std::time::Duration::from_secs(60));
            }
        }))
        .open(SqliteStore::open(&path).unwrap())
        .unwrap();
    let sender = engine
        .instances()
        .into_iter()
        .find(|id| engine.definition_of(*id).unwrap().key().id == "network")
        .unwrap();
    let task = engine.tasks(sender).unwrap()[0].id;
    engine
        .complete(
            task,
            &Actor::new("bob", ["tech"]),
            vars(&[("fault_status", json!("repaired"))]),
        )
        .unwrap();
    unreachable!("the hook kills this process");
}

/// A new SQLite store in a folder of its own (`name`) with `defs` deployed: the folder, the
/// file and the engine on it.
fn fresh_store(name: &str, defs: &[&str]) -> (std::path::PathBuf, std::path::PathBuf, Engine) {
    let dir = std::env::temp_dir().join(format!(
        "procflow-correlation-{name}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("store.db");
    let _ = std::fs::remove_file(&path);
    let engine = Engine::open(SqliteStore::create(&path).unwrap()).unwrap();
    for d in defs {
        engine.deploy(ProcessDef::from_yaml(d).unwrap()).unwrap();
    }
    (dir, path, engine)
}

/// Runs `child_sends_and_dies` on the store at `path` in a child process, which is killed.
fn send_and_die(path: &std::path::Path) {
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_sends_and_dies", "--nocapture"])
        .env(CHILD, path)
        .status()
        .unwrap();
    assert!(!status.success(), "the child was to be killed");
}

/// Who received each message `sender` sent, as its audit trail records them.
fn delivered(engine: &Engine, sender: InstanceId) -> Vec<Vec<InstanceId>> {
    engine
        .instance(sender)
        .unwrap()
        .audit()
        .iter()
        .filter_map(|r| match &r.what {
            Entry::MessageDelivered(d) => Some(d.received.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_send_is_received_once_by_each_receiver_across_a_crash() {
    let (dir, path, engine) = fresh_store("crash", &[WATCH, NETWORK]);
    let first = engine.start("watch", ticket("T-5")).unwrap();
    let second = engine.start("watch", ticket("T-5")).unwrap();
    let sender = engine.start("network", ticket("T-5")).unwrap();
    drop(engine);
    send_and_die(&path);

    // The sender committed with its send in the outbox; the first receiver committed the
    // message, the second did not get it.
    let store = Arc::new(SqliteStore::open(&path).unwrap());
    let pending = store.outbox().unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].instance.id(), sender);
    assert!(matches!(
        &pending[0].instance.pending()[0].what,
        FollowUp::Send { message, .. } if message == "fault_status"
    ));
    let count = |id: InstanceId| {
        store
            .read(id)
            .unwrap()
            .unwrap()
            .instance
            .audit()
            .iter()
            .filter(|r| matches!(r.what, Entry::MessageReceived(_)))
            .count()
    };
    assert_eq!((count(first), count(second)), (1, 0));

    // The next engine runs the follow-up again: the second receiver gets it, the first (still
    // waiting for more) not again.
    let engine = Engine::open(Arc::clone(&store)).unwrap();
    assert!(store.outbox().unwrap().is_empty());
    assert_eq!(
        received(&engine, first),
        [("fault_status".into(), Some(sender))],
        "received twice"
    );
    assert_eq!(
        received(&engine, second),
        [("fault_status".into(), Some(sender))]
    );
    assert_eq!(delivered(&engine, sender), vec![vec![first, second]]);
    drop(engine);
    let engine = Engine::open(Arc::clone(&store)).unwrap();
    assert_eq!(received(&engine, first).len(), 1);
    assert_eq!(received(&engine, second).len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A receiver that took a message and went on before the crash (it waits no more): the next
/// engine runs the sender's follow-up again and finds that receiver by its receipt, held or not
/// (a bounded cache loads nothing when it opens), instead of recording the message unmatched.
#[test]
fn a_send_whose_receiver_went_on_is_not_delivered_again_across_a_crash() {
    for cache in [None, Some(64)] {
        let name = format!("went-on-{}", cache.is_some());
        let (dir, path, engine) = fresh_store(&name, &[REPAIR, NETWORK]);
        let receiver = engine.start("repair", ticket("T-7")).unwrap();
        let sender = engine.start("network", ticket("T-7")).unwrap();
        drop(engine);
        send_and_die(&path);
        let store = Arc::new(SqliteStore::open(&path).unwrap());
        assert_eq!(store.outbox().unwrap().len(), 1, "the send is left to run");

        let mut config = procflow::Config::default();
        config.cache = cache;
        let engine = Engine::builder()
            .config(config)
            .open(Arc::clone(&store))
            .unwrap();
        assert!(store.outbox().unwrap().is_empty());
        assert_eq!(
            received(&engine, receiver),
            [("fault_status".into(), Some(sender))],
            "{cache:?}"
        );
        assert_eq!(engine.tasks(receiver).unwrap().len(), 1, "{cache:?}");
        assert!(engine.unmatched().unwrap().is_empty(), "{cache:?}");
        assert_eq!(
            delivered(&engine, sender),
            vec![vec![receiver]],
            "{cache:?}"
        );
        drop(engine);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// With a bounded cache, opening loads no waiting receiver and the cache lets them go; a
/// message finds each through the store's key table, once.
#[test]
fn a_bounded_cache_lets_receivers_go_and_messages_find_them() {
    let path = std::env::temp_dir().join(format!(
        "procflow-correlation-cache-{}.db",
        std::process::id()
    ));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let stores: Vec<Arc<dyn Store>> = vec![
        Arc::new(MemoryStore::new()),
        Arc::new(SqliteStore::create(&path).unwrap()),
    ];
    for store in stores {
        let mut config = procflow::Config::default();
        // One instance per shard.
        config.cache = Some(64);
        let ids: Vec<InstanceId> = {
            let engine = Engine::builder()
                .config(config.clone())
                .open(Arc::clone(&store))
                .unwrap();
            engine
                .deploy(ProcessDef::from_yaml(REPAIR).unwrap())
                .unwrap();
            (0..300)
                .map(|i| engine.start("repair", ticket(&format!("T-{i}"))).unwrap())
                .collect()
        };
        let engine = Engine::builder()
            .config(config)
            .open(Arc::clone(&store))
            .unwrap();
        for (i, id) in ids.iter().enumerate().rev() {
            let c = engine
                .correlate("fault_status", status(&format!("T-{i}"), "cleared"))
                .unwrap();
            assert_eq!(c.received, vec![*id]);
        }
        // Each went on to its task: the same message again matches nobody.
        let again = engine
            .correlate("fault_status", status("T-0", "cleared"))
            .unwrap();
        assert!(again.unmatched(), "{again:?}");
        assert_eq!(engine.work_list(&Actor::new("cy", ["clerk"])).len(), 300);
    }
    let _ = std::fs::remove_file(&path);
}

#[test]
fn the_index_is_rebuilt_when_an_engine_opens_a_store() {
    let store = MemoryStore::new();
    let id = {
        let engine = Engine::open(store.clone()).unwrap();
        engine
            .deploy(ProcessDef::from_yaml(REPAIR).unwrap())
            .unwrap();
        engine.start("repair", ticket("T-1")).unwrap();
        engine.start("repair", ticket("T-2")).unwrap()
    };
    let engine = Engine::open(store).unwrap();
    let c = engine
        .correlate("fault_status", status("T-2", "cleared"))
        .unwrap();
    assert_eq!(c.received, vec![id]);
}

#[test]
fn a_scenario_correlates_messages() {
    let scenario = procflow::Scenario::from_yaml(
        r#"
name: an alarm starts a complaint, a second alarm for the ticket is refused
actors: { ann: [clerk] }
steps:
  - correlate: { message: alarm, vars: { ticket_id: T-1, severity: 2 }, to: started }
  - expect: { status: running, open_tasks: [handle], vars: { ticket_id: T-1 } }
  - correlate: { message: alarm, vars: { severity: 2 }, expect: refused }
  - correlate: { message: alarm, vars: { ticket_id: T-2, severity: "high" }, expect: invalid }
"#,
    )
    .unwrap();
    let report = scenario.run(ProcessDef::from_yaml(ALARM).unwrap()).unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);

    let wrong = procflow::Scenario::from_yaml(
        "name: wrong\nsteps:\n  - correlate: { message: alarm, vars: { ticket_id: T-1 }, to: received }\n",
    )
    .unwrap();
    let report = wrong.run(ProcessDef::from_yaml(ALARM).unwrap()).unwrap();
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
}

#[test]
fn a_send_that_cannot_be_correlated_is_recorded_with_the_error() {
    let engine = engine_with(&[REPAIR, NETWORK]);
    let a = engine.start("repair", ticket("T-5")).unwrap();
    let b = engine.start("repair", ticket("T-5")).unwrap();
    let sender = engine.start("network", ticket("T-5")).unwrap();
    let task = engine.tasks(sender).unwrap()[0].id;
    engine
        .complete(
            task,
            &Actor::new("bob", ["tech"]),
            vars(&[("fault_status", json!("repaired"))]),
        )
        .unwrap();
    assert!(common::open(&engine, a).is_empty() && common::open(&engine, b).is_empty());
    let errors: Vec<String> = engine
        .instance(sender)
        .unwrap()
        .audit()
        .iter()
        .filter_map(|r| match &r.what {
            Entry::MessageDelivered(d) => d.error.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("matches several"), "{errors:?}");
}

#[test]
fn a_send_node_inside_a_sub_process_sends_and_its_start_may_not_listen() {
    let def = NETWORK.replace(
        "  tell: { kind: send, message: fault_status, next: end }",
        "  tell:\n    kind: subprocess\n    next: end\n    nodes:\n      s: { kind: start, next: out }\n      out: { kind: send, message: fault_status, next: e }\n      e: { kind: end }",
    );
    let engine = engine_with(&[REPAIR, &def]);
    let receiver = engine.start("repair", ticket("T-5")).unwrap();
    let sender = engine.start("network", ticket("T-5")).unwrap();
    let task = engine.tasks(sender).unwrap()[0].id;
    engine
        .complete(
            task,
            &Actor::new("bob", ["tech"]),
            vars(&[("fault_status", json!("repaired"))]),
        )
        .unwrap();
    assert_eq!(common::open(&engine, receiver), ["check"]);
    let bad = def.replace(
        "s: { kind: start, next: out }",
        "s: { kind: start, message: fault_status, next: out }",
    );
    let problems = ProcessDef::from_yaml(&bad).unwrap_err().problems;
    assert!(
        problems.iter().any(|p| p.kind
            == ProblemKind::KeyNotAllowed {
                key: "message",
                kind: "start"
            }),
        "{problems:#?}"
    );
}

mod model {
    //! The index agrees with a scan: after any sequence of starts, correlations and
    //! cancellations-by-completion, a correlation matches exactly the instances a scan of the
    //! waiting ones finds (one receives it, none is unmatched, several are ambiguous).

    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Start(u8),
        Correlate(u8),
        Check(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..4).prop_map(Op::Start),
            3 => (0u8..4).prop_map(Op::Correlate),
            1 => (0usize..64).prop_map(Op::Check),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn correlation_matches_a_scan(ops in proptest::collection::vec(op(), 1..40)) {
            let engine = engine_with(&[REPAIR]);
            let clerk = Actor::new("c", ["clerk"]);
            // Instances waiting at the catch, by key.
            let mut waiting: Vec<(InstanceId, u8)> = Vec::new();
            // Instances past the catch, at the `check` task.
            let mut checking: Vec<InstanceId> = Vec::new();
            for op in ops {
                match op {
                    Op::Start(k) => {
                        let id = engine.start("repair", ticket(&format!("K{k}"))).unwrap();
                        waiting.push((id, k));
                    }
                    Op::Correlate(k) => {
                        let want: Vec<InstanceId> =
                            waiting.iter().filter(|(_, w)| *w == k).map(|(id, _)| *id).collect();
                        let got = engine.correlate("fault_status", status(&format!("K{k}"), "s"));
                        match want.len() {
                            0 => prop_assert!(got.unwrap().unmatched()),
                            1 => {
                                prop_assert_eq!(got.unwrap().received, want.clone());
                                waiting.retain(|(id, _)| *id != want[0]);
                                checking.push(want[0]);
                            }
                            _ => {
                                let is_ambiguous = matches!(
                                    got,
                                    Err(ExecError::AmbiguousMessage { ref candidates, .. })
                                        if *candidates == want
                                );
                                prop_assert!(is_ambiguous);
                            }
                        }
                    }
                    Op::Check(i) => {
                        // Completing a `check` task ends that instance.
                        if !checking.is_empty() {
                            let id = checking.remove(i % checking.len());
                            let task = engine.tasks(id).unwrap()[0].id;
                            engine.complete(task, &clerk, Vars::new()).unwrap();
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn a_send_node_is_drawn_with_its_message() {
    let def = ProcessDef::from_yaml(NETWORK).unwrap();
    let tell = def.node(def.node_id("tell").unwrap());
    assert_eq!(tell.sends(), Some("fault_status"));
    let mermaid = def.to_mermaid();
    assert!(
        mermaid.contains(r#"n_tell[/"tell [send fault_status]"/]"#),
        "{mermaid}"
    );
}

#[test]
fn a_start_node_is_drawn_with_the_messages_that_start_it() {
    let def = ProcessDef::from_yaml(ALARM).unwrap();
    assert!(
        def.to_mermaid().contains("[on message alarm]"),
        "{}",
        def.to_mermaid()
    );
    assert!(
        def.to_dot().contains("[on message alarm]"),
        "{}",
        def.to_dot()
    );
    let shipped = ProcessDef::from_file("process-defs/complaint-handling.yaml").unwrap();
    assert!(
        shipped
            .to_mermaid()
            .contains("[on message complaint_raised, service_quality_reported]"),
        "{}",
        shipped.to_mermaid()
    );
}
