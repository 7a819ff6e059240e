//! Issue 12, items 1 and 5: inclusive gateways (OR-split, OR-join), partial joins, cancellation
//! by the accountable role, terminating ends and cancel regions, through the public API.

use std::sync::{Arc, Mutex};

use procflow::{
    Actor, Engine, Entry, Event, ExecError, InstanceId, ProblemKind, ProcessDef, Status, TaskState,
    Vars, handler_fn, hook_fn,
};

mod common;
use common::open;
use proptest::prelude::*;
use serde_json::json;

const OR: &str = r#"
id: or
version: 1
name: Inclusive
accountable: lead
roles: { clerk: { name: Clerk }, lead: { name: Lead }, audit: { name: Audit } }
variables:
  a: { type: boolean, default: false }
  b: { type: boolean, default: false }
  c: { type: boolean, default: false }
nodes:
  start: { kind: start, next: split }
  split:
    kind: inclusive
    routes:
      - { when: "a == true", to: task_a }
      - { when: "b == true", to: svc_b }
      - { when: "c == true", to: task_c }
      - { default: true, to: join }
  task_a: { kind: user_task, name: A, raci: { responsible: [clerk], accountable: lead }, next: join }
  svc_b: { kind: service_task, name: B, handler: b, next: join }
  task_c: { kind: user_task, name: C, raci: { responsible: [clerk], accountable: lead }, next: join }
  join: { kind: inclusive, next: after }
  after: { kind: user_task, name: After, raci: { responsible: [clerk], accountable: lead }, next: end }
  end: { kind: end }
"#;

fn engine(defs: &[&str]) -> Engine {
    let mut b = Engine::builder();
    b.handler("b", handler_fn(|_| Ok(Vars::new())));
    let engine = b.build();
    for d in defs {
        engine.deploy(ProcessDef::from_yaml(d).unwrap()).unwrap();
    }
    engine
}

/// An engine whose hook keeps every event.
fn heard(defs: &[&str]) -> (Engine, Arc<Mutex<Vec<Event>>>) {
    let log: Arc<Mutex<Vec<Event>>> = Arc::default();
    let mut b = Engine::builder();
    b.handler("b", handler_fn(|_| Ok(Vars::new())));
    let l = Arc::clone(&log);
    b.hook(hook_fn(move |ev: &Event| {
        l.lock().unwrap().push(ev.clone())
    }));
    let engine = b.build();
    for d in defs {
        engine.deploy(ProcessDef::from_yaml(d).unwrap()).unwrap();
    }
    (engine, log)
}

fn clerk() -> Actor {
    Actor::new("ann", ["clerk"])
}

fn lead() -> Actor {
    Actor::new("lee", ["lead"])
}

fn vars(v: serde_json::Value) -> Vars {
    serde_json::from_value(v).unwrap()
}

fn complete(engine: &Engine, id: InstanceId, node: &str) {
    let task = engine
        .tasks(id)
        .unwrap()
        .into_iter()
        .find(|t| &*t.node_id == node)
        .unwrap_or_else(|| panic!("no open task at {node}"))
        .id;
    engine.complete(task, &clerk(), Vars::new()).unwrap();
}

/// How many audit records of the instance match.
fn count(engine: &Engine, id: InstanceId, f: impl Fn(&Entry) -> bool) -> usize {
    engine
        .instance(id)
        .unwrap()
        .audit()
        .iter()
        .filter(|r| f(&r.what))
        .count()
}

fn joined_at(engine: &Engine, id: InstanceId, node: &str) -> usize {
    let def = engine.definition_of(id).unwrap();
    let n = def.node_id(node).unwrap();
    count(
        engine,
        id,
        |e| matches!(e, Entry::Joined { node } if *node == n),
    )
}

#[test]
fn or_split_with_one_condition_true_starts_one_branch() {
    let engine = engine(&[OR]);
    let id = engine.start("or", vars(json!({ "a": true }))).unwrap();
    assert_eq!(open(&engine, id), ["task_a"]);
    assert_eq!(count(&engine, id, |e| matches!(e, Entry::Route { .. })), 1);
    complete(&engine, id, "task_a");
    assert_eq!(open(&engine, id), ["after"]);
    assert_eq!(joined_at(&engine, id, "join"), 1);
}

#[test]
fn or_join_waits_for_both_started_user_tasks() {
    let engine = engine(&[OR]);
    let id = engine
        .start("or", vars(json!({ "a": true, "c": true })))
        .unwrap();
    assert_eq!(open(&engine, id), ["task_a", "task_c"]);
    complete(&engine, id, "task_c");
    // One branch arrived; the other waits at its user task: the join waits.
    assert_eq!(open(&engine, id), ["task_a"]);
    assert_eq!(joined_at(&engine, id, "join"), 0);
    complete(&engine, id, "task_a");
    assert_eq!(open(&engine, id), ["after"]);
    assert_eq!(joined_at(&engine, id, "join"), 1);
    complete(&engine, id, "after");
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Completed);
    assert_eq!(joined_at(&engine, id, "join"), 1);
}

#[test]
fn or_split_with_three_conditions_true_runs_the_service_and_waits_for_the_tasks() {
    let engine = engine(&[OR]);
    let id = engine
        .start("or", vars(json!({ "a": true, "b": true, "c": true })))
        .unwrap();
    assert_eq!(open(&engine, id), ["task_a", "task_c"]);
    assert_eq!(count(&engine, id, |e| matches!(e, Entry::Route { .. })), 3);
    // The service branch already arrived at the join.
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.tokens().len(), 3);
    complete(&engine, id, "task_a");
    assert_eq!(joined_at(&engine, id, "join"), 0);
    complete(&engine, id, "task_c");
    assert_eq!(open(&engine, id), ["after"]);
    assert_eq!(joined_at(&engine, id, "join"), 1);
    assert_eq!(engine.instance(id).unwrap().tokens().len(), 1);
}

#[test]
fn or_split_takes_the_default_when_no_condition_holds() {
    let engine = engine(&[OR]);
    let id = engine.start("or", Vars::new()).unwrap();
    assert_eq!(open(&engine, id), ["after"]);
    let inst = engine.instance(id).unwrap();
    let routes: Vec<&Entry> = inst
        .audit()
        .iter()
        .map(|r| &r.what)
        .filter(|e| matches!(e, Entry::Route { .. }))
        .collect();
    assert!(
        matches!(routes[..], [Entry::Route { route: None, .. }]),
        "{routes:?}"
    );
    assert_eq!(joined_at(&engine, id, "join"), 1);
}

#[test]
fn or_split_with_only_the_service_branch_joins_at_once() {
    let engine = engine(&[OR]);
    let id = engine.start("or", vars(json!({ "b": true }))).unwrap();
    assert_eq!(open(&engine, id), ["after"]);
    assert_eq!(joined_at(&engine, id, "join"), 1);
}

#[test]
fn or_split_without_default_and_no_condition_is_an_incident() {
    let def = OR.replace("      - { default: true, to: join }\n", "");
    // Without the default route the join receives three flows, still all of the split's.
    let engine = engine(&[&def]);
    let err = engine.start("or", Vars::new()).unwrap_err();
    assert!(matches!(err, ExecError::Incident { .. }), "{err}");
}

const PARTIAL: &str = r#"
id: partial
version: 1
name: Two of three
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
nodes:
  start: { kind: start, next: fork }
  fork: { kind: parallel, next: [x, y, z] }
  x: { kind: user_task, name: X, raci: { responsible: [clerk], accountable: lead }, next: join }
  y: { kind: user_task, name: Y, raci: { responsible: [clerk], accountable: lead }, next: join }
  z: { kind: user_task, name: Z, raci: { responsible: [clerk], accountable: lead }, due: 4h, next: join }
  join: { kind: parallel, wait_for: 2, cancel_rest: CANCEL, next: after }
  after: { kind: user_task, name: After, raci: { responsible: [clerk], accountable: lead }, next: end }
  end: { kind: end }
"#;

#[test]
fn partial_join_with_cancel_rest_withdraws_the_last_branch() {
    let (engine, log) = heard(&[&PARTIAL.replace("CANCEL", "true")]);
    let id = engine.start("partial", Vars::new()).unwrap();
    complete(&engine, id, "x");
    assert_eq!(open(&engine, id), ["y", "z"]);
    complete(&engine, id, "y");
    assert_eq!(open(&engine, id), ["after"]);
    let inst = engine.instance(id).unwrap();
    let z = inst.tasks().iter().find(|t| t.node().index() == 4).unwrap();
    assert!(matches!(z.state(), TaskState::Cancelled { .. }));
    // Its deadline went with it.
    assert!(inst.timers().iter().all(|t| t.task != Some(2)));
    assert_eq!(
        count(&engine, id, |e| matches!(e, Entry::Withdrawn { .. })),
        1
    );
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::TaskCancelled { node, .. } if &**node == "z"))
    );
    complete(&engine, id, "after");
    assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
    assert_eq!(joined_at(&engine, id, "join"), 1);
}

#[test]
fn partial_join_without_cancel_rest_absorbs_the_late_branch() {
    let engine = engine(&[&PARTIAL.replace("CANCEL", "false")]);
    let id = engine.start("partial", Vars::new()).unwrap();
    complete(&engine, id, "z");
    complete(&engine, id, "x");
    assert_eq!(open(&engine, id), ["after", "y"]);
    complete(&engine, id, "after");
    // The late branch is still out: the instance runs on.
    assert_eq!(engine.instance(id).unwrap().status(), Status::Running);
    complete(&engine, id, "y");
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Completed);
    assert_eq!(joined_at(&engine, id, "join"), 1);
    assert_eq!(
        count(&engine, id, |e| matches!(e, Entry::Absorbed { .. })),
        1
    );
    // `after` ran once.
    assert_eq!(inst.tasks().len(), 4);
}

#[test]
fn a_restored_partial_join_state_round_trips_and_is_checked() {
    let engine = engine(&[&PARTIAL.replace("CANCEL", "false")]);
    let id = engine.start("partial", Vars::new()).unwrap();
    complete(&engine, id, "x");
    complete(&engine, id, "y");
    let inst = engine.instance(id).unwrap();
    let def = engine.definition_of(id).unwrap();
    let back = procflow::Instance::decode(&inst.encode(), inst.audit().to_vec()).unwrap();
    assert_eq!(back, inst);
    back.check(&def).unwrap();
    // Nonsense: more late branches than the join has.
    let state = inst.encode().replace("\"left\":1", "\"left\":7");
    assert_ne!(state, inst.encode());
    let bad = procflow::Instance::decode(&state, Vec::new()).unwrap();
    assert!(bad.check(&def).is_err());
}

const CANCELLABLE: &str = r#"
id: order
version: 1
name: Order
calendar: null
roles:
  clerk: { name: Clerk }
  owner: { name: Owner }
  audit: { name: Audit }
  billing: { name: Billing }
sla:
  due: 48h
  accountable: owner
  informed: [audit]
nodes:
  start: { kind: start, next: fork }
  fork: { kind: parallel, next: [install, bill] }
  install:
    kind: user_task
    name: Install
    raci: { responsible: [clerk], accountable: owner, informed: [billing] }
    due: 4h
    next: join
  bill: { kind: user_task, name: Bill, raci: { responsible: [clerk], accountable: owner }, next: join }
  join: { kind: parallel, next: end }
  end: { kind: end }
"#;

#[test]
fn the_accountable_role_cancels_an_instance_with_open_work_in_two_branches() {
    let def = CANCELLABLE.replace("calendar: null\n", "");
    let (engine, log) = heard(&[&def]);
    let id = engine.start("order", Vars::new()).unwrap();
    assert_eq!(open(&engine, id), ["bill", "install"]);
    assert!(!engine.instance(id).unwrap().timers().is_empty());
    log.lock().unwrap().clear();
    engine
        .cancel(
            id,
            &Actor::new("olga", ["owner"]),
            "customer withdrew the order",
        )
        .unwrap();
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Cancelled);
    assert!(inst.ended_at().is_some());
    assert!(inst.tokens().is_empty());
    assert!(inst.timers().is_empty(), "SLA and task timers dropped");
    assert!(
        inst.tasks()
            .iter()
            .all(|t| matches!(t.state(), TaskState::Cancelled { .. }))
    );
    assert!(engine.tasks(id).unwrap().is_empty());
    assert!(inst.audit().iter().any(|r| matches!(
        &r.what,
        Entry::Cancelled { actor, reason } if &**actor == "olga" && &**reason == "customer withdrew the order"
    )));
    assert_eq!(
        count(&engine, id, |e| matches!(e, Entry::Withdrawn { .. })),
        2
    );
    let events = log.lock().unwrap().clone();
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::TaskCancelled { .. }))
            .count(),
        2
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::InstanceCancelled { instance, .. } if *instance == id))
    );
    // The SLA's informed role and the cancelled install task's are told, from the outbox.
    let mut told: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::CancelNotice { role, .. } => Some(role.as_str()),
            _ => None,
        })
        .collect();
    told.sort();
    assert_eq!(told, ["audit", "billing"]);
    assert!(engine.instance(id).unwrap().pending().is_empty());
    inst.check(&engine.definition_of(id).unwrap()).unwrap();
}

#[test]
fn cancel_by_an_actor_without_the_role_is_denied_audited_and_changes_nothing_else() {
    let def = CANCELLABLE.replace("calendar: null\n", "");
    let (engine, log) = heard(&[&def]);
    let id = engine.start("order", Vars::new()).unwrap();
    let before = engine.instance(id).unwrap();
    log.lock().unwrap().clear();
    let err = engine.cancel(id, &clerk(), "not mine").unwrap_err();
    match &err {
        ExecError::CancelDenied {
            instance,
            actor,
            allowed,
        } => {
            assert_eq!(*instance, id);
            assert_eq!(&**actor, "ann");
            assert_eq!(
                allowed.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                ["owner"]
            );
        }
        other => panic!("expected CancelDenied, got {other:?}"),
    }
    let after = engine.instance(id).unwrap();
    assert_eq!(after.status(), Status::Running);
    assert_eq!(after.tokens(), before.tokens());
    assert_eq!(after.tasks(), before.tasks());
    assert_eq!(after.timers(), before.timers());
    assert_eq!(after.audit().len(), before.audit().len() + 1);
    assert!(matches!(
        &after.audit().last().unwrap().what,
        Entry::CancelDenied { actor, .. } if &**actor == "ann"
    ));
    assert!(matches!(
        &log.lock().unwrap()[..],
        [Event::CancelDenied { .. }]
    ));
}

#[test]
fn calls_on_a_cancelled_instance_are_typed_errors() {
    let def = CANCELLABLE.replace("calendar: null\n", "");
    let engine = engine(&[&def]);
    let id = engine.start("order", Vars::new()).unwrap();
    let task = engine.tasks(id).unwrap()[0].id;
    let owner = Actor::new("olga", ["owner"]);
    engine.cancel(id, &owner, "withdrawn").unwrap();
    let closed = |r: Result<(), ExecError>| {
        assert!(
            matches!(
                r,
                Err(ExecError::TaskClosed {
                    state: "cancelled",
                    ..
                })
            ),
            "{r:?}"
        )
    };
    closed(engine.complete(task, &clerk(), Vars::new()));
    closed(engine.claim(task, &clerk()));
    closed(engine.comment(task, &clerk(), "hello?"));
    closed(engine.reassign(task, &owner, &clerk()));
    assert_eq!(engine.retry(id), Err(ExecError::InstanceCancelled(id)));
    assert_eq!(
        engine.cancel(id, &owner, "again"),
        Err(ExecError::InstanceCancelled(id))
    );
    // Time passing fires nothing on it.
    let fired = engine.tick(chrono::Utc::now() + chrono::Duration::days(30));
    assert!(fired.iter().all(|f| f.instance != id));
    assert_eq!(engine.instance(id).unwrap().status(), Status::Cancelled);
}

#[test]
fn a_completed_instance_cannot_be_cancelled_nor_one_without_accountable() {
    let engine = engine(&[OR, &PARTIAL.replace("CANCEL", "true")]);
    let id = engine.start("or", Vars::new()).unwrap();
    complete(&engine, id, "after");
    assert_eq!(
        engine.cancel(id, &lead(), "late"),
        Err(ExecError::InstanceCompleted(id))
    );
    let id = engine.start("partial", Vars::new()).unwrap();
    assert_eq!(
        engine.cancel(id, &lead(), "who may?"),
        Err(ExecError::NoAccountable(id))
    );
    assert_eq!(engine.instance(id).unwrap().status(), Status::Running);
}

#[test]
fn a_cancelled_instance_leaves_memory_when_completed_ones_do() {
    let def = CANCELLABLE.replace("calendar: null\n", "");
    let mut b = Engine::builder();
    let mut config = procflow::Config::default();
    config.retain_completed = false;
    b.config(config);
    let engine = b.build();
    engine.deploy(ProcessDef::from_yaml(&def).unwrap()).unwrap();
    let id = engine.start("order", Vars::new()).unwrap();
    engine
        .cancel(id, &Actor::new("olga", ["owner"]), "gone")
        .unwrap();
    assert_eq!(engine.instance(id), Err(ExecError::UnknownInstance(id)));
}

const TERMINATE: &str = r#"
id: term
version: 1
name: Terminate
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
nodes:
  start: { kind: start, next: fork }
  fork: { kind: parallel, next: [work, fast] }
  work: { kind: user_task, name: Work, raci: { responsible: [clerk], accountable: lead }, due: 1h, next: done }
  fast: { kind: user_task, name: Fast, raci: { responsible: [clerk], accountable: lead }, next: stop }
  done: { kind: end }
  stop: { kind: end, terminate: true }
"#;

#[test]
fn a_terminating_end_withdraws_the_other_branches_and_completes() {
    let engine = engine(&[TERMINATE]);
    let id = engine.start("term", Vars::new()).unwrap();
    assert_eq!(open(&engine, id), ["fast", "work"]);
    complete(&engine, id, "fast");
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Completed);
    assert!(inst.tokens().is_empty() && inst.timers().is_empty());
    assert!(matches!(
        inst.tasks()[0].state(),
        TaskState::Cancelled { .. }
    ));
    assert_eq!(
        count(&engine, id, |e| matches!(e, Entry::Terminated { .. })),
        1
    );
    assert_eq!(
        count(&engine, id, |e| matches!(e, Entry::Withdrawn { .. })),
        1
    );
}

#[test]
fn reaching_the_ordinary_end_first_leaves_the_other_branch_running() {
    let engine = engine(&[TERMINATE]);
    let id = engine.start("term", Vars::new()).unwrap();
    complete(&engine, id, "work");
    assert_eq!(engine.instance(id).unwrap().status(), Status::Running);
    complete(&engine, id, "fast");
    assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
}

const REGION: &str = r#"
id: region
version: 1
name: Region
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
nodes:
  start: { kind: start, next: fork }
  fork: { kind: parallel, next: [work, check, wait] }
  work: { kind: user_task, name: Work, raci: { responsible: [clerk], accountable: lead }, next: done }
  wait: { kind: timer, wait: 2h, next: done }
  check: { kind: user_task, name: Check, raci: { responsible: [clerk], accountable: lead }, next: abort }
  abort:
    kind: user_task
    name: Abort
    raci: { responsible: [clerk], accountable: lead }
    cancels: [work, wait]
    next: done
  done: { kind: end }
"#;

#[test]
fn entering_a_node_withdraws_its_cancel_region() {
    let engine = engine(&[REGION]);
    let id = engine.start("region", Vars::new()).unwrap();
    assert_eq!(open(&engine, id), ["check", "work"]);
    assert_eq!(engine.instance(id).unwrap().timers().len(), 1);
    complete(&engine, id, "check");
    assert_eq!(open(&engine, id), ["abort"]);
    let inst = engine.instance(id).unwrap();
    assert!(
        inst.timers().is_empty(),
        "the timer node's wait is withdrawn"
    );
    assert!(matches!(
        inst.tasks()[0].state(),
        TaskState::Cancelled { .. }
    ));
    assert_eq!(
        count(&engine, id, |e| matches!(e, Entry::RegionCancelled { .. })),
        1
    );
    assert_eq!(
        count(&engine, id, |e| matches!(e, Entry::Withdrawn { .. })),
        2
    );
    complete(&engine, id, "abort");
    assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
}

#[test]
fn load_errors_are_located_and_reported_all_at_once() {
    let text = r#"
id: bad
version: 1
name: Bad
accountable: boss
roles: { clerk: { name: Clerk } }
nodes:
  start: { kind: start, next: fork }
  fork: { kind: parallel, next: [a, b] }
  a: { kind: user_task, name: A, raci: { responsible: [clerk], accountable: clerk }, cancels: [ghost, a], next: orjoin }
  b: { kind: user_task, name: B, raci: { responsible: [clerk], accountable: clerk }, next: orjoin }
  orjoin: { kind: inclusive, next: fork2 }
  fork2: { kind: parallel, next: [c, d, e] }
  c: { kind: user_task, name: C, raci: { responsible: [clerk], accountable: clerk }, next: pjoin }
  d: { kind: user_task, name: D, raci: { responsible: [clerk], accountable: clerk }, next: pjoin }
  e: { kind: user_task, name: E, raci: { responsible: [clerk], accountable: clerk }, next: pjoin }
  pjoin: { kind: parallel, wait_for: 3, next: g }
  g: { kind: parallel, cancel_rest: true, next: done }
  done: { kind: end, terminate: true }
"#;
    let err = ProcessDef::from_yaml(text).unwrap_err();
    let got: Vec<(u32, String, ProblemKind)> = err
        .problems
        .iter()
        .map(|p| (p.location.unwrap().line, p.path.clone(), p.kind.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                5,
                "accountable".into(),
                ProblemKind::UnknownRole("boss".into())
            ),
            (
                10,
                "nodes.a.cancels".into(),
                ProblemKind::UnknownNode("ghost".into())
            ),
            (
                10,
                "nodes.a.cancels".into(),
                ProblemKind::CancelsItself("a".into())
            ),
            (
                12,
                "nodes.orjoin".into(),
                ProblemKind::OrJoinWithoutSplit("orjoin".into())
            ),
            (
                17,
                "nodes.pjoin.wait_for".into(),
                ProblemKind::WaitFor {
                    found: 3,
                    incoming: 3
                }
            ),
            (
                18,
                "nodes.g.cancel_rest".into(),
                ProblemKind::ControlShape("'cancel_rest' needs 'wait_for' (a partial join)")
            ),
        ],
        "{err}"
    );
}

#[test]
fn inclusive_branches_must_meet_at_their_inclusive_join() {
    // Arms of an inclusive split merging at a task would run it once per arm.
    let unsynced = OR.replace(
        "  join: { kind: inclusive, next: after }",
        "  join: { kind: user_task, name: J, raci: { responsible: [clerk], accountable: lead }, next: after }",
    );
    let err = ProcessDef::from_yaml(&unsynced).unwrap_err();
    assert_eq!(
        err.kinds(),
        [&ProblemKind::UnsyncedMerge("join".into())],
        "{err}"
    );
    // A parallel join cannot wait for an inclusive split's arms (some never come).
    let parallel = OR.replace(
        "  join: { kind: inclusive, next: after }",
        "  join: { kind: parallel, next: after }",
    );
    let err = ProcessDef::from_yaml(&parallel).unwrap_err();
    assert!(
        matches!(err.kinds()[..], [ProblemKind::BadJoin { .. }]),
        "{err}"
    );
    // wait_for of 0, and keys on the wrong kinds.
    let zero = PARTIAL
        .replace("CANCEL", "true")
        .replace("wait_for: 2", "wait_for: 0");
    let err = ProcessDef::from_yaml(&zero).unwrap_err();
    assert_eq!(
        err.kinds(),
        [&ProblemKind::WaitFor {
            found: 0,
            incoming: 3
        }]
    );
    let misplaced = TERMINATE.replace(
        "  done: { kind: end }",
        "  done: { kind: end, wait_for: 1 }",
    );
    let err = ProcessDef::from_yaml(&misplaced).unwrap_err();
    assert_eq!(
        err.kinds(),
        [&ProblemKind::KeyNotAllowed {
            key: "wait_for",
            kind: "end"
        }]
    );
}

#[test]
fn graphs_draw_the_new_kinds() {
    let def = ProcessDef::from_yaml(OR).unwrap();
    assert!(def.to_mermaid().contains("{\"O "), "{}", def.to_mermaid());
    let def = ProcessDef::from_yaml(REGION).unwrap();
    assert!(def.to_mermaid().contains("-.->|\"cancels\"|"));
    assert!(def.to_dot().contains("style=dashed, label=\"cancels\""));
    let def = ProcessDef::from_yaml(TERMINATE).unwrap();
    assert!(def.to_dot().contains("doublecircle"));
    let def = ProcessDef::from_yaml(&PARTIAL.replace("CANCEL", "true")).unwrap();
    assert!(def.to_mermaid().contains("+ 2 of 3, cancel rest"));
}

/// An inclusive split over `n` branches, each a user task or a service task.
fn generated(kinds: &[bool]) -> String {
    let mut text = String::from(
        "id: gen\nversion: 1\nname: Gen\nroles: { clerk: { name: Clerk } }\nvariables:\n",
    );
    for i in 0..kinds.len() {
        text.push_str(&format!("  v{i}: {{ type: boolean, default: false }}\n"));
    }
    text.push_str("nodes:\n  start: { kind: start, next: split }\n  split:\n    kind: inclusive\n    routes:\n");
    for i in 0..kinds.len() {
        text.push_str(&format!("      - {{ when: \"v{i} == true\", to: n{i} }}\n"));
    }
    text.push_str("      - { default: true, to: join }\n");
    for (i, user) in kinds.iter().enumerate() {
        if *user {
            text.push_str(&format!("  n{i}: {{ kind: user_task, name: N{i}, raci: {{ responsible: [clerk], accountable: clerk }}, next: join }}\n"));
        } else {
            text.push_str(&format!(
                "  n{i}: {{ kind: service_task, name: N{i}, handler: b, next: join }}\n"
            ));
        }
    }
    text.push_str("  join: { kind: inclusive, next: after }\n  after: { kind: user_task, name: After, raci: { responsible: [clerk], accountable: clerk }, next: end }\n  end: { kind: end }\n");
    text
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever routes hold, the join fires exactly once, and only after every started branch
    /// arrived, in whatever order the started user tasks complete.
    #[test]
    fn or_join_fires_once_after_exactly_the_started_branches(
        branches in proptest::collection::vec((any::<bool>(), any::<bool>()), 1..6),
        order in any::<u64>(),
    ) {
        let kinds: Vec<bool> = branches.iter().map(|(user, _)| *user).collect();
        let engine = engine(&[&generated(&kinds)]);
        let mut v = Vars::new();
        for (i, (_, on)) in branches.iter().enumerate() {
            v.insert(format!("v{i}"), json!(on));
        }
        let id = engine.start("gen", v).unwrap();
        let started: Vec<usize> = (0..branches.len()).filter(|i| branches[*i].1).collect();
        let routes = count(&engine, id, |e| matches!(e, Entry::Route { .. }));
        prop_assert_eq!(routes, started.len().max(1));
        let mut waiting: Vec<String> =
            started.iter().filter(|i| kinds[**i]).map(|i| format!("n{i}")).collect();
        // A deterministic shuffle from `order`.
        let mut seed = order;
        for k in (1..waiting.len()).rev() {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            waiting.swap(k, (seed >> 33) as usize % (k + 1));
        }
        while let Some(node) = waiting.pop() {
            prop_assert_eq!(joined_at(&engine, id, "join"), 0);
            prop_assert!(!open(&engine, id).contains(&"after".to_owned()));
            complete(&engine, id, &node);
        }
        prop_assert_eq!(joined_at(&engine, id, "join"), 1);
        prop_assert_eq!(open(&engine, id), vec!["after".to_owned()]);
        complete(&engine, id, "after");
        prop_assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
        prop_assert_eq!(joined_at(&engine, id, "join"), 1);
    }
}

#[test]
fn the_heatmap_draws_inclusive_gateways_and_counts_a_cancelled_instance() {
    let def = CANCELLABLE.replace("calendar: null\n", "");
    let engine = engine(&[OR, &def]);
    let or = engine.start("or", vars(json!({ "a": true }))).unwrap();
    complete(&engine, or, "task_a");
    let order = engine.start("order", Vars::new()).unwrap();
    engine
        .cancel(order, &Actor::new("olga", ["owner"]), "withdrawn")
        .unwrap();
    let defs = vec![
        engine.definition_of(or).unwrap(),
        engine.definition_of(order).unwrap(),
    ];
    let instances = vec![
        engine.instance(or).unwrap(),
        engine.instance(order).unwrap(),
    ];
    let report = procflow::Report::compute(&defs, &instances, &procflow::ReportOptions::default());
    let svg = report.heatmap(&defs[0], procflow::HeatMetric::MeanWait);
    assert!(svg.contains(">○</text>"), "the inclusive gateways' mark");
    for (_, node) in defs[0].nodes() {
        assert!(svg.contains(node.id()), "{} missing", node.id());
    }
    let order = report.process("order").unwrap();
    assert_eq!((order.started, order.cancelled, order.open), (1, 1, 0));
}

/// A block of a generated definition with the constructs of this file nested in each other.
#[derive(Clone, Debug)]
enum Block {
    User,
    Service,
    Series(Vec<Block>),
    /// An inclusive split and join: each arm with whether its condition holds, and whether the
    /// split has a default route.
    Or(Vec<(bool, Block)>, bool),
    /// A parallel fork and join; `Some((n, cancel_rest))` makes the join partial.
    And(Vec<Block>, Option<(u32, bool)>),
}

fn block() -> impl Strategy<Value = Block> {
    let leaf = prop_oneof![Just(Block::User), Just(Block::Service)];
    leaf.prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 1..3).prop_map(Block::Series),
            (
                proptest::collection::vec((any::<bool>(), inner.clone()), 1..4),
                any::<bool>()
            )
                .prop_map(|(arms, default)| Block::Or(arms, default)),
            (
                proptest::collection::vec(inner, 2..4),
                any::<Option<(u32, bool)>>()
            )
                .prop_map(|(arms, partial)| {
                    let partial = partial.map(|(n, c)| (1 + n % (arms.len() as u32 - 1), c));
                    Block::And(arms, partial)
                }),
        ]
    })
}

#[derive(Default)]
struct Gen {
    count: usize,
    nodes: Vec<String>,
}

impl Gen {
    fn fresh(&mut self) -> String {
        self.count += 1;
        format!("n{}", self.count)
    }

    /// Renders `b` flowing to `next`; gives its entry node.
    fn block(&mut self, b: &Block, next: &str) -> String {
        let id = self.fresh();
        match b {
            Block::User => self.nodes.push(format!(
                "  {id}: {{ kind: user_task, name: T, raci: {{ responsible: [clerk], accountable: clerk }}, next: {next} }}"
            )),
            Block::Service => self.nodes.push(format!(
                "  {id}: {{ kind: service_task, name: S, handler: b, next: {next} }}"
            )),
            Block::Series(blocks) => {
                let mut next = next.to_owned();
                for b in blocks.iter().rev() {
                    next = self.block(b, &next);
                }
                self.nodes
                    .push(format!("  {id}: {{ kind: service_task, name: S, handler: b, next: {next} }}"));
            }
            Block::Or(arms, default) => {
                let join = self.fresh();
                self.nodes
                    .push(format!("  {join}: {{ kind: inclusive, next: {next} }}"));
                let mut routes = Vec::new();
                for (on, arm) in arms {
                    let entry = self.block(arm, &join);
                    let when = if *on { "1 == 1" } else { "1 == 2" };
                    routes.push(format!("      - {{ when: \"{when}\", to: {entry} }}"));
                }
                if *default {
                    routes.push(format!("      - {{ default: true, to: {join} }}"));
                }
                self.nodes.push(format!(
                    "  {id}:\n    kind: inclusive\n    routes:\n{}",
                    routes.join("\n")
                ));
            }
            Block::And(arms, partial) => {
                let join = self.fresh();
                let extra = match partial {
                    Some((n, cancel)) => format!(", wait_for: {n}, cancel_rest: {cancel}"),
                    None => String::new(),
                };
                self.nodes
                    .push(format!("  {join}: {{ kind: parallel{extra}, next: {next} }}"));
                let entries: Vec<String> = arms.iter().map(|a| self.block(a, &join)).collect();
                self.nodes.push(format!(
                    "  {id}: {{ kind: parallel, next: [{}] }}",
                    entries.join(", ")
                ));
            }
        }
        id
    }
}

/// Whether a generated instance can get stuck by design: an inclusive split whose conditions
/// all fail and that has no default is an incident, not a bug.
fn may_fail(b: &Block) -> bool {
    match b {
        Block::User | Block::Service => false,
        Block::Series(bs) => bs.iter().any(may_fail),
        Block::Or(arms, default) => {
            (!default && arms.iter().all(|(on, _)| !on)) || arms.iter().any(|(_, a)| may_fail(a))
        }
        Block::And(arms, _) => arms.iter().any(may_fail),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Nested inclusive gateways and (partial) parallel joins: completing whatever task is open
    /// ends every instance completed, no join fires twice, and every state on the way is one
    /// `Instance::check` accepts after a round trip through the encoding.
    #[test]
    fn nested_joins_complete_and_fire_at_most_once(b in block(), pick in any::<u64>()) {
        let mut g = Gen::default();
        let entry = g.block(&b, "end");
        let text = format!(
            "id: nest\nversion: 1\nname: Nest\nroles: {{ clerk: {{ name: Clerk }} }}\nnodes:\n  start: {{ kind: start, next: {entry} }}\n{}\n  end: {{ kind: end }}\n",
            g.nodes.join("\n")
        );
        let def = ProcessDef::from_yaml(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let engine = engine(&[]);
        engine.deploy(def).unwrap();
        let started = engine.start("nest", Vars::new());
        if may_fail(&b) {
            return Ok(());
        }
        let id = started.map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let def = engine.definition_of(id).unwrap();
        let mut seed = pick;
        for _ in 0..200 {
            let inst = engine.instance(id).unwrap();
            let back = procflow::Instance::decode(&inst.encode(), Vec::new()).unwrap();
            prop_assert!(back.check(&def).is_ok(), "{:?}", back.check(&def));
            let open = engine.tasks(id).unwrap();
            if open.is_empty() {
                break;
            }
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let t = &open[(seed >> 33) as usize % open.len()];
            engine.complete(t.id, &clerk(), Vars::new()).unwrap();
        }
        let inst = engine.instance(id).unwrap();
        prop_assert_eq!(inst.status(), Status::Completed, "{}", text);
        let mut fired = std::collections::HashMap::new();
        for r in inst.audit() {
            if let Entry::Joined { node } = r.what {
                *fired.entry(node).or_insert(0) += 1;
            }
        }
        prop_assert!(fired.values().all(|n| *n == 1), "{:?}\n{}", fired, text);
    }
}

#[test]
fn a_cancelled_instance_is_stored_as_ended_and_reads_back_cancelled() {
    let def = CANCELLABLE.replace("calendar: null\n", "");
    let store = procflow::MemoryStore::new();
    let id = {
        let engine = Engine::builder().open(store.clone()).unwrap();
        engine.deploy(ProcessDef::from_yaml(&def).unwrap()).unwrap();
        let id = engine.start("order", Vars::new()).unwrap();
        engine.cancel(id, &clerk(), "denied first").unwrap_err();
        engine
            .cancel(id, &Actor::new("olga", ["owner"]), "withdrawn")
            .unwrap();
        id
    };
    use procflow::Store;
    assert!(
        store
            .running()
            .unwrap()
            .iter()
            .all(|s| s.instance.id() != id)
    );
    assert!(store.outbox().unwrap().is_empty());
    let engine = Engine::builder().open(store).unwrap();
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Cancelled);
    assert!(
        inst.audit()
            .iter()
            .any(|r| matches!(r.what, Entry::CancelDenied { .. }))
    );
    assert!(
        inst.audit()
            .iter()
            .any(|r| matches!(r.what, Entry::Cancelled { .. }))
    );
    assert_eq!(
        engine.cancel(id, &Actor::new("olga", ["owner"]), "again"),
        Err(ExecError::InstanceCancelled(id))
    );
}
