//! Events inside an instance (issue 12, item 4): messages delivered to an instance, signals
//! broadcast by name, race (event-based) gateways and boundary events of user tasks, through the
//! public API.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use procflow::{
    Actor, Clock, Engine, Entry, Event, ExecError, InstanceId, ManualClock, NodeKind, ProblemKind,
    ProcessDef, Status, TaskState, TimerKind, TokenState, VarProblem, Vars, hook_fn,
};

mod common;
use common::open;

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
fn engine(defs: &[&str]) -> (Engine, Arc<ManualClock>, Arc<Mutex<Vec<Event>>>) {
    let clock = Arc::new(ManualClock::new(t0()));
    let heard = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&heard);
    let engine = Engine::builder()
        .clock(Arc::clone(&clock))
        .hook(hook_fn(move |e: &Event| {
            log.lock().unwrap().push(e.clone())
        }))
        .build();
    for d in defs {
        engine.deploy(ProcessDef::from_yaml(d).unwrap()).unwrap();
    }
    (engine, clock, heard)
}

const CONFIRM: &str = r#"
id: confirm
version: 1
name: Confirm
roles: { agent: { name: Agent }, lead: { name: Lead } }
variables:
  confirmed_by: { type: string }
  rating: { type: integer }
  note: { type: string }
messages:
  customer_confirmed:
    name_zh: 客户确认
    payload: [confirmed_by, rating]
  other: {}
nodes:
  start: { kind: start, next: wait }
  wait: { kind: catch, message: customer_confirmed, next: end }
  end: { kind: end }
"#;

#[test]
fn a_delivered_message_moves_the_waiting_token_on_and_sets_its_payload() {
    let (engine, _, heard) = engine(&[CONFIRM]);
    let id = engine.start("confirm", Vars::new()).unwrap();
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Running);
    assert_eq!(inst.tokens()[0].state, TokenState::Waiting);
    assert!(inst.tasks().is_empty() && inst.timers().is_empty());

    engine
        .deliver(
            id,
            "customer_confirmed",
            vars(&[("confirmed_by", "wang".into()), ("rating", 5.into())]),
        )
        .unwrap();
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Completed);
    assert_eq!(inst.vars()["confirmed_by"], "wang");
    let def = engine.definition_of(id).unwrap();
    let wait = def.node_id("wait").unwrap();
    assert!(inst.audit().iter().any(|r| r.what
        == Entry::MessageCaught {
            node: wait,
            message: "customer_confirmed".into()
        }));
    assert!(heard.lock().unwrap().iter().any(|e| matches!(
        e,
        Event::MessageCaught { message, node, .. } if message == "customer_confirmed" && &**node == "wait"
    )));
}

#[test]
fn a_refused_delivery_changes_nothing() {
    let (engine, _, _) = engine(&[CONFIRM]);
    let id = engine.start("confirm", Vars::new()).unwrap();
    let before = engine.instance(id).unwrap();

    // A variable outside the payload, and one of the wrong type.
    let err = engine
        .deliver(
            id,
            "customer_confirmed",
            vars(&[("note", "hi".into()), ("rating", "five".into())]),
        )
        .unwrap_err();
    let ExecError::Variables { problems } = &err else {
        panic!("expected Variables, got {err:?}");
    };
    assert!(problems.contains(&("note".to_owned(), VarProblem::NotInPayload)));
    assert!(
        problems
            .iter()
            .any(|(n, p)| n == "rating" && matches!(p, VarProblem::WrongType { .. }))
    );
    // An undeclared variable.
    assert!(matches!(
        engine.deliver(id, "customer_confirmed", vars(&[("nope", 1.into())])),
        Err(ExecError::Variables { .. })
    ));
    // A message the definition does not declare.
    assert_eq!(
        engine.deliver(id, "unheard_of", Vars::new()),
        Err(ExecError::UnknownMessage {
            instance: id,
            message: "unheard_of".into()
        })
    );
    // A declared message nothing waits for.
    assert_eq!(
        engine.deliver(id, "other", Vars::new()),
        Err(ExecError::NotWaiting {
            instance: id,
            message: "other".into()
        })
    );
    // An unknown instance.
    assert_eq!(
        engine.deliver(InstanceId::new(999_999), "customer_confirmed", Vars::new()),
        Err(ExecError::UnknownInstance(InstanceId::new(999_999)))
    );
    assert_eq!(engine.instance(id).unwrap(), before);
}

#[test]
fn a_message_for_a_finished_instance_is_a_typed_error() {
    let (engine, _, _) = engine(&[CONFIRM]);
    let id = engine.start("confirm", Vars::new()).unwrap();
    engine
        .deliver(id, "customer_confirmed", Vars::new())
        .unwrap();
    let done = engine.instance(id).unwrap();
    assert_eq!(done.status(), Status::Completed);
    assert_eq!(
        engine.deliver(id, "customer_confirmed", Vars::new()),
        Err(ExecError::InstanceCompleted(id))
    );
    assert_eq!(engine.instance(id).unwrap(), done);
}

const RACE: &str = r#"
id: race
version: 1
name: Race
roles: { agent: { name: Agent }, lead: { name: Lead } }
variables: { confirmed_by: { type: string } }
messages: { customer_confirmed: { payload: [confirmed_by] } }
nodes:
  start: { kind: start, next: decide }
  decide: { kind: race, next: [confirmed, timeout, by_phone] }
  confirmed: { kind: catch, message: customer_confirmed, next: done }
  timeout: { kind: timer, wait: 48h, next: chase }
  by_phone:
    kind: user_task
    name: Record a confirmation by phone
    raci: { responsible: [agent], accountable: lead }
    next: done
  chase:
    kind: user_task
    name: Chase the customer
    raci: { responsible: [agent], accountable: lead }
    next: end
  done: { kind: end }
  end: { kind: end }
"#;

fn withdrawn(inst: &procflow::Instance) -> Vec<procflow::NodeId> {
    inst.audit()
        .iter()
        .filter_map(|r| match r.what {
            Entry::Withdrawn { node, .. } => Some(node),
            _ => None,
        })
        .collect()
}

#[test]
fn race_message_wins() {
    let (engine, _, heard) = engine(&[RACE]);
    let id = engine.start("race", Vars::new()).unwrap();
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.tokens().len(), 3);
    assert_eq!(inst.timers().len(), 1);
    assert_eq!(engine.tasks(id).unwrap().len(), 1);

    engine
        .deliver(
            id,
            "customer_confirmed",
            vars(&[("confirmed_by", "li".into())]),
        )
        .unwrap();
    let inst = engine.instance(id).unwrap();
    let def = engine.definition_of(id).unwrap();
    let n = |s: &str| def.node_id(s).unwrap();
    assert_eq!(inst.status(), Status::Completed);
    assert!(
        inst.timers().is_empty(),
        "the timer branch's timer is dropped"
    );
    assert!(matches!(
        inst.tasks()[0].state(),
        TaskState::Cancelled { .. }
    ));
    let mut w = withdrawn(&inst);
    w.sort();
    let mut want = vec![n("timeout"), n("by_phone")];
    want.sort();
    assert_eq!(w, want);
    assert!(inst.audit().iter().any(|r| r.what
        == Entry::RaceWon {
            gateway: n("decide"),
            node: n("confirmed")
        }));
    let heard = heard.lock().unwrap();
    assert!(
        heard
            .iter()
            .any(|e| matches!(e, Event::TaskCancelled { node, .. } if &**node == "by_phone"))
    );
    assert!(
        heard
            .iter()
            .any(|e| matches!(e, Event::RaceWon { node, .. } if &**node == "confirmed"))
    );
}

#[test]
fn race_timer_wins() {
    let (engine, clock, _) = engine(&[RACE]);
    let id = engine.start("race", Vars::new()).unwrap();
    clock.advance(Duration::hours(48));
    let fired = engine.tick(clock.now());
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].kind, TimerKind::Wait);
    let inst = engine.instance(id).unwrap();
    let def = engine.definition_of(id).unwrap();
    assert!(inst.audit().iter().any(|r| r.what
        == Entry::RaceWon {
            gateway: def.node_id("decide").unwrap(),
            node: def.node_id("timeout").unwrap()
        }));
    let open: Vec<String> = engine
        .tasks(id)
        .unwrap()
        .iter()
        .map(|t| t.node_id.to_string())
        .collect();
    assert_eq!(open, ["chase"]);
    assert!(matches!(
        inst.tasks()[0].state(),
        TaskState::Cancelled { .. }
    ));
    // The message's catch was withdrawn: a late confirmation finds nothing waiting.
    assert!(matches!(
        engine.deliver(id, "customer_confirmed", Vars::new()),
        Err(ExecError::NotWaiting { .. })
    ));
}

#[test]
fn race_task_wins() {
    let (engine, clock, heard) = engine(&[RACE]);
    let id = engine.start("race", Vars::new()).unwrap();
    let task = engine.tasks(id).unwrap()[0].id;
    engine.complete(task, &agent(), Vars::new()).unwrap();
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Completed);
    assert!(matches!(
        inst.tasks()[0].state(),
        TaskState::Completed { .. }
    ));
    assert!(inst.timers().is_empty());
    assert_eq!(withdrawn(&inst).len(), 2);
    // The timer never fires.
    clock.advance(Duration::hours(100));
    assert!(engine.tick(clock.now()).is_empty());
    assert!(
        !heard
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::TaskCancelled { .. }))
    );
}

const BOUNDARY: &str = r#"
id: boundary
version: 1
name: Boundary
roles: { agent: { name: Agent }, lead: { name: Lead } }
messages: { withdrawn: {}, called: {} }
nodes:
  start: { kind: start, next: install }
  install:
    kind: user_task
    name: Install
    raci: { responsible: [agent], accountable: lead }
    boundary:
      - { message: withdrawn, to: refund }
      - { timer: 4h, interrupting: false, to: remind }
      - { message: called, interrupting: false, to: note }
      - { signal: outage, to: refund }
    next: end
  remind: { kind: service_task, name: Remind, handler: remind, next: reminded }
  reminded: { kind: end }
  note:
    kind: user_task
    name: Note the call
    raci: { responsible: [agent], accountable: lead }
    next: noted
  noted: { kind: end }
  refund:
    kind: user_task
    name: Refund
    raci: { responsible: [agent], accountable: lead }
    next: end
  end: { kind: end }
"#;

fn boundary_engine() -> (Engine, Arc<ManualClock>, Arc<Mutex<Vec<Event>>>) {
    let clock = Arc::new(ManualClock::new(t0()));
    let heard = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&heard);
    let engine = Engine::builder()
        .clock(Arc::clone(&clock))
        .handler("remind", procflow::handler_fn(|_| Ok(Vars::new())))
        .hook(hook_fn(move |e: &Event| {
            log.lock().unwrap().push(e.clone())
        }))
        .build();
    engine
        .deploy(ProcessDef::from_yaml(BOUNDARY).unwrap())
        .unwrap();
    (engine, clock, heard)
}

#[test]
fn an_interrupting_message_boundary_cancels_the_task() {
    let (engine, _, heard) = boundary_engine();
    let id = engine.start("boundary", Vars::new()).unwrap();
    assert_eq!(engine.instance(id).unwrap().timers().len(), 1);
    engine.deliver(id, "withdrawn", Vars::new()).unwrap();
    let inst = engine.instance(id).unwrap();
    assert!(matches!(
        inst.tasks()[0].state(),
        TaskState::Cancelled { .. }
    ));
    assert!(
        inst.timers().is_empty(),
        "the task's boundary timer is dropped"
    );
    assert_eq!(open(&engine, id), ["refund"]);
    assert!(inst.audit().iter().any(|r| matches!(
        r.what,
        Entry::Boundary {
            task: 0,
            index: 0,
            interrupting: true,
            ..
        }
    )));
    assert!(
        heard
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::TaskCancelled { node, .. } if &**node == "install"))
    );
}

#[test]
fn non_interrupting_boundaries_start_a_token_and_keep_the_task() {
    let (engine, clock, _) = boundary_engine();
    let id = engine.start("boundary", Vars::new()).unwrap();
    // The timer: once, 4 hours after the task opened; the remind path runs to its end.
    clock.advance(Duration::hours(4));
    let fired = engine.tick(clock.now());
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].kind, TimerKind::Boundary { index: 1 });
    clock.advance(Duration::hours(40));
    assert!(engine.tick(clock.now()).is_empty());
    assert_eq!(open(&engine, id), ["install"]);
    // The message, twice: each starts a token at 'note'.
    engine.deliver(id, "called", Vars::new()).unwrap();
    engine.deliver(id, "called", Vars::new()).unwrap();
    assert_eq!(open(&engine, id), ["install", "note", "note"]);
    let install = engine.tasks(id).unwrap()[0].id;
    engine.complete(install, &agent(), Vars::new()).unwrap();
    assert_eq!(engine.instance(id).unwrap().status(), Status::Running);
    for t in engine.tasks(id).unwrap() {
        engine.complete(t.id, &agent(), Vars::new()).unwrap();
    }
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Completed);
    assert_eq!(
        inst.audit()
            .iter()
            .filter(|r| matches!(
                r.what,
                Entry::Boundary {
                    interrupting: false,
                    ..
                }
            ))
            .count(),
        3
    );
}

#[test]
fn a_signal_wakes_every_waiting_instance_and_counts_them() {
    const WAIT: &str = r#"
id: outage_wait
version: 1
name: Wait for the outage to end
variables: { cause: { type: string } }
nodes:
  start: { kind: start, next: wait }
  wait: { kind: catch, signal: outage_over, next: end }
  end: { kind: end }
"#;
    let (engine, _, heard) = engine(&[WAIT, RACE]);
    let a = engine.start("outage_wait", Vars::new()).unwrap();
    let b = engine.start("outage_wait", Vars::new()).unwrap();
    let other = engine.start("race", Vars::new()).unwrap();
    // Variables that do not fit a waiting instance's definition: nothing changes.
    assert!(matches!(
        engine.signal("outage_over", vars(&[("nope", 1.into())])),
        Err(ExecError::Variables { .. })
    ));
    assert_eq!(
        engine
            .signal("outage_over", vars(&[("cause", "fibre cut".into())]))
            .unwrap(),
        2
    );
    for id in [a, b] {
        let inst = engine.instance(id).unwrap();
        assert_eq!(inst.status(), Status::Completed);
        assert_eq!(inst.vars()["cause"], "fibre cut");
    }
    assert_eq!(engine.instance(other).unwrap().status(), Status::Running);
    // Transient: nobody waits now, so it is lost.
    assert_eq!(engine.signal("outage_over", Vars::new()).unwrap(), 0);
    assert_eq!(
        heard
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, Event::SignalCaught { .. }))
            .count(),
        2
    );
}

#[test]
fn an_interrupting_signal_boundary_cancels_the_task() {
    let (engine, _, _) = boundary_engine();
    let id = engine.start("boundary", Vars::new()).unwrap();
    assert_eq!(engine.signal("outage", Vars::new()).unwrap(), 1);
    let inst = engine.instance(id).unwrap();
    assert!(matches!(
        inst.tasks()[0].state(),
        TaskState::Cancelled { .. }
    ));
    assert_eq!(open(&engine, id), ["refund"]);
}

#[test]
fn a_restored_waiting_catch_passes_the_check_and_nonsense_does_not() {
    let (engine, _, _) = engine(&[CONFIRM]);
    let id = engine.start("confirm", Vars::new()).unwrap();
    let def = engine.definition_of(id).unwrap();
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.check(&def), Ok(()));
    // The same waiting token at the end node waits for nothing.
    let text = inst.encode().replace(
        &format!("\"node\":{}", def.node_id("wait").unwrap().index()),
        &format!("\"node\":{}", def.node_id("end").unwrap().index()),
    );
    let bad = procflow::Instance::decode(&text, Vec::new()).unwrap();
    assert!(bad.check(&def).is_err());
}

#[test]
fn misused_events_are_located_load_errors_all_at_once() {
    let text = r#"
id: bad
version: 1
name: Bad
roles: { agent: { name: Agent }, lead: { name: Lead } }
variables: { x: { type: string } }
messages: { m: { payload: [x, y] } }
nodes:
  start: { kind: start, next: decide }
  decide: { kind: race, next: [wait, svc] }
  wait: { kind: catch, message: nope, next: work }
  svc: { kind: service_task, name: Svc, handler: h, next: end }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [agent], accountable: lead }
    boundary: [ { message: m, to: nowhere } ]
    next: both
  both: { kind: catch, message: m, signal: s, next: end }
  end: { kind: end }
"#;
    let err = ProcessDef::from_yaml(text).unwrap_err();
    let kinds: Vec<&ProblemKind> = err.problems.iter().map(|p| &p.kind).collect();
    assert!(
        kinds.contains(&&ProblemKind::UndeclaredVariable("y".into())),
        "{err}"
    );
    assert!(
        kinds.contains(&&ProblemKind::UnknownMessage("nope".into())),
        "{err}"
    );
    assert!(
        kinds.contains(&&ProblemKind::UnknownNode("nowhere".into())),
        "{err}"
    );
    assert!(
        kinds.contains(&&ProblemKind::RaceTarget {
            target: "svc".into(),
            kind: "service_task"
        }),
        "{err}"
    );
    assert!(
        kinds
            .iter()
            .any(|k| matches!(k, ProblemKind::EventShape(_))),
        "{err}"
    );
    assert!(err.problems.iter().all(|p| p.location.is_some()));
    let text = err.to_string();
    assert!(text.contains("nodes.wait.message"), "{text}");
    assert!(text.contains("nodes.work.boundary[0].to"), "{text}");
}

#[test]
fn unsound_event_shapes_are_refused() {
    let base = |nodes: &str| {
        format!(
            r#"
id: shapes
version: 1
name: Shapes
roles: {{ agent: {{ name: Agent }}, lead: {{ name: Lead }} }}
messages: {{ m: {{}} }}
nodes:
  start: {{ kind: start, next: work }}
{nodes}
  end: {{ kind: end }}
"#
        )
    };
    // A non-interrupting boundary path merging into the task's own path.
    let merge = base(
        r#"  work:
    kind: user_task
    name: Work
    raci: { responsible: [agent], accountable: lead }
    boundary: [ { timer: 1h, interrupting: false, to: after } ]
    next: after
  after:
    kind: user_task
    name: After
    raci: { responsible: [agent], accountable: lead }
    next: end"#,
    );
    let err = ProcessDef::from_yaml(&merge).unwrap_err();
    assert!(
        err.problems
            .iter()
            .any(|p| p.kind == ProblemKind::UnsyncedMerge("after".into())),
        "{err}"
    );
    // A race target with a second incoming flow.
    let shared = base(
        r#"  work: { kind: race, next: [a, b] }
  a: { kind: catch, message: m, next: b }
  b: { kind: timer, wait: 1h, next: end }"#,
    );
    let err = ProcessDef::from_yaml(&shared).unwrap_err();
    assert!(
        err.problems.iter().any(|p| matches!(
            &p.kind,
            ProblemKind::RaceTargetIncoming { target, found: 2 } if target == "b"
        )),
        "{err}"
    );
    // Race branches may merge at an ordinary node: only one survives.
    let merging = base(
        r#"  work: { kind: race, next: [a, b] }
  a: { kind: catch, message: m, next: after }
  b: { kind: timer, wait: 1h, next: after }
  after: { kind: service_task, name: After, handler: h, next: end }"#,
    );
    let def = ProcessDef::from_yaml(&merging).unwrap();
    assert_eq!(
        def.node(def.node_id("work").unwrap()).kind(),
        NodeKind::Race
    );
    assert!(def.to_mermaid().contains("race"));
    assert!(def.to_dot().contains("Mdiamond"));
}

#[test]
fn a_waiting_catch_and_a_boundary_timer_survive_a_restart() {
    let store = procflow::MemoryStore::new();
    let clock = Arc::new(ManualClock::new(t0()));
    let build = || {
        Engine::builder()
            .clock(Arc::clone(&clock))
            .handler("remind", procflow::handler_fn(|_| Ok(Vars::new())))
            .open(store.clone())
            .unwrap()
    };
    let (race, boundary) = {
        let engine = build();
        engine.deploy(ProcessDef::from_yaml(RACE).unwrap()).unwrap();
        engine
            .deploy(ProcessDef::from_yaml(BOUNDARY).unwrap())
            .unwrap();
        (
            engine.start("race", Vars::new()).unwrap(),
            engine.start("boundary", Vars::new()).unwrap(),
        )
    };
    let engine = build();
    engine
        .deliver(race, "customer_confirmed", Vars::new())
        .unwrap();
    assert_eq!(engine.instance(race).unwrap().status(), Status::Completed);
    clock.advance(Duration::hours(4));
    let fired = engine.tick(clock.now());
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].kind, TimerKind::Boundary { index: 1 });
    assert_eq!(fired[0].instance, boundary);
    drop(engine);
    // Read back once more: the boundary fired once and is not armed again.
    let engine = build();
    let inst = engine.instance(boundary).unwrap();
    assert!(inst.timers().is_empty());
    assert_eq!(open(&engine, boundary), ["install"]);
}

mod property {
    use super::*;
    use proptest::prelude::*;

    /// One thing that may happen to a waiting race: the message, the task's completion, or
    /// time passing (the timer fires after 48 hours).
    #[derive(Clone, Copy, Debug)]
    enum Act {
        Deliver,
        Complete,
        Advance(i64),
    }

    fn act() -> impl Strategy<Value = Act> {
        prop_oneof![
            Just(Act::Deliver),
            Just(Act::Complete),
            (1i64..30).prop_map(Act::Advance),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever happens in whatever order, exactly one target of the race leaves it: one
        /// `RaceWon`, the other two withdrawn, and the instance ends after the chase task (when
        /// the timer won).
        #[test]
        fn exactly_one_target_wins(acts in prop::collection::vec(act(), 1..8)) {
            let (engine, clock, _) = engine(&[RACE]);
            let id = engine.start("race", Vars::new()).unwrap();
            for a in acts {
                match a {
                    Act::Deliver => {
                        let _ = engine.deliver(id, "customer_confirmed", Vars::new());
                    }
                    Act::Complete => {
                        if let Some(t) = engine.tasks(id).unwrap().first() {
                            engine.complete(t.id, &agent(), Vars::new()).unwrap();
                        }
                    }
                    Act::Advance(h) => {
                        clock.advance(Duration::hours(h));
                        engine.tick(clock.now());
                    }
                }
            }
            // Finish: whatever is left open is completed.
            engine.deliver(id, "customer_confirmed", Vars::new()).ok();
            while let Some(t) = engine.tasks(id).unwrap().first() {
                engine.complete(t.id, &agent(), Vars::new()).unwrap();
            }
            let inst = engine.instance(id).unwrap();
            prop_assert_eq!(inst.status(), Status::Completed);
            let won = inst.audit().iter().filter(|r| matches!(r.what, Entry::RaceWon { .. })).count();
            prop_assert_eq!(won, 1);
            prop_assert_eq!(withdrawn(&inst).len(), 2);
            prop_assert!(inst.timers().is_empty());
        }
    }
}

#[test]
fn a_restored_boundary_timer_must_name_a_timer_boundary() {
    let (engine, _, _) = boundary_engine();
    let id = engine.start("boundary", Vars::new()).unwrap();
    let def = engine.definition_of(id).unwrap();
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.check(&def), Ok(()));
    let text = inst.encode();
    assert!(text.contains(r#""kind":"boundary","index":1"#), "{text}");
    // Boundary 0 is a message boundary, 9 does not exist.
    for index in [0, 9] {
        let bad = text.replace(
            r#""kind":"boundary","index":1"#,
            &format!(r#""kind":"boundary","index":{index}"#),
        );
        let bad = procflow::Instance::decode(&bad, Vec::new()).unwrap();
        assert!(bad.check(&def).is_err(), "index {index}");
    }
}

#[test]
fn a_task_that_runs_more_than_once_cannot_decide_a_race() {
    let text = r#"
id: bad
version: 1
name: Bad
roles: { agent: { name: Agent } }
variables: { done: { type: boolean }, lines: { type: array } }
nodes:
  start: { kind: start, next: decide }
  decide: { kind: race, next: [again, each] }
  again:
    kind: user_task
    name: Again
    raci: { responsible: [agent], accountable: agent }
    repeat: { until: "done == true", max: 3 }
    next: end
  each:
    kind: user_task
    name: Each
    raci: { responsible: [agent], accountable: agent }
    for_each: { in: lines, as: line }
    next: end
  end: { kind: end }
"#;
    let err = ProcessDef::from_yaml(text).unwrap_err();
    for target in ["again", "each"] {
        assert!(
            err.problems.iter().any(|p| p.kind
                == ProblemKind::RaceTarget {
                    target: target.into(),
                    kind: "multi-instance or repeated user_task"
                }),
            "{err}"
        );
    }
}
