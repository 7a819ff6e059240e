//! Timers through the public API: escalation ladders (reminder, breach, notify, reassign, urge,
//! claim deadline), interrupting timeouts, timer nodes, the process-wide SLA, SLA queries on wall
//! and business time, tick semantics, work-list order, the timer driver, and a proptest against
//! an independent model of when each timer fires.
//!
//! Time is a `ManualClock` and timers fire only on an explicit `engine.tick(now)`.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use procflow::{
    Actor, BusinessCalendar, DeployProblem, Engine, EngineBuilder, Entry, Event, ExecError, Fired,
    InstanceId, ManualClock, NodeRef, ProcessDef, Record, RoleId, Sla, SlaStatus, Status, TaskId,
    TaskState, TimerDriver, TimerKind, TokenState, Vars, hook_fn,
};
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// Definitions
// ---------------------------------------------------------------------------------------------

/// One task with every kind of task timer but the timeout. From creation (unclaimed):
/// 30m claim deadline (to `a`), 2h reminder `after` (to `cs`), 3h reminder `before` (to `r`),
/// 4h breach (to `i`), 4h30 notify (to `a`), 5h notify (to `boss`), 6h reassign (to `lead`),
/// 7h, 7h30, 8h urges (to `a`).
const LADDER: &str = r#"
id: ladder
version: 1
name: Ladder
roles:
  r: { name: R }
  a: { name: A }
  i: { name: I }
  cs: { name: Customer service }
  boss: { name: Boss }
  lead: { name: Lead }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [r], accountable: a, informed: [i] }
    due: 4h
    claim_due: 30m
    remind:
      - { before: 1h }
      - { after: 2h, to: [cs] }
    escalate:
      - { after: 30m, action: notify }
      - { after: 1h, action: notify, to: boss }
      - { after: 2h, action: reassign, to: lead }
      - { after: 3h, action: urge, every: 30m, max: 3 }
    next: done
  done: { kind: end }
"#;

/// A task with an interrupting timeout at 2h30 (after its 1h30 reminder and 2h breach, before
/// its 3h escalation) that routes to `apology`.
const TIMEOUT: &str = r#"
id: timeout
version: 1
name: Timeout
roles: { r: { name: R }, a: { name: A }, i: { name: I }, cs: { name: CS } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [r], accountable: a, informed: [i] }
    due: 2h
    remind: [{ before: 30m }]
    escalate: [{ after: 1h, action: notify }]
    timeout: { after: 2h30m, to: apology }
    next: done
  apology:
    kind: user_task
    name: Apologise
    raci: { responsible: [cs], accountable: a }
    next: done
  done: { kind: end }
"#;

/// Two timer nodes: a 2-day wait, then until the instant in `appointment`.
const WAITS: &str = r#"
id: waits
version: 1
name: Waits
roles: { r: { name: R }, a: { name: A } }
variables: { appointment: { type: string } }
nodes:
  start: { kind: start, next: cool_off }
  cool_off: { kind: timer, wait: 2d, next: visit }
  visit: { kind: timer, until: appointment, next: onsite }
  onsite: { kind: user_task, name: On site, raci: { responsible: [r], accountable: a }, next: done }
  done: { kind: end }
"#;

/// A process-wide SLA of 8h: 6h reminder (to `a`), 8h breach (to `i`), 9h notify (to `a`),
/// 10h notify (to `boss`), 11h and 12h urges (to `a`).
const SLA: &str = r#"
id: sla
version: 1
name: SLA
roles: { r: { name: R }, a: { name: A }, i: { name: I }, boss: { name: Boss } }
sla:
  due: 8h
  accountable: a
  informed: [i]
  remind: [{ before: 2h }]
  escalate:
    - { after: 1h, action: notify }
    - { after: 2h, action: notify, to: boss }
    - { after: 3h, action: urge, every: 1h, max: 2 }
nodes:
  start: { kind: start, next: work }
  work: { kind: user_task, name: Work, raci: { responsible: [r], accountable: a }, next: done }
  done: { kind: end }
"#;

/// Business time on the China calendar: the task is due in 4h business, the process in 8h.
const CN: &str = r#"
id: cn
version: 1
name: CN
calendar: china
roles: { r: { name: R }, a: { name: A }, i: { name: I } }
sla:
  due: 8h business
  accountable: a
  informed: [i]
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [r], accountable: a, informed: [i] }
    due: 4h business
    remind: [{ before: 1h business }]
    escalate: [{ after: 2h business, action: notify }]
    next: done
  done: { kind: end }
"#;

/// `first` has a 30m reminder, a 1h deadline and a notify 30m after it; `second` has no limits.
const SIMPLE: &str = r#"
id: simple
version: 1
name: Simple
roles: { r: { name: R }, a: { name: A }, i: { name: I } }
nodes:
  start: { kind: start, next: first }
  first:
    kind: user_task
    name: First
    raci: { responsible: [r], accountable: a, informed: [i] }
    due: 1h
    remind: [{ after: 30m }]
    escalate: [{ after: 30m, action: notify }]
    next: second
  second: { kind: user_task, name: Second, raci: { responsible: [r], accountable: a }, next: done }
  done: { kind: end }
"#;

/// A deadline computed from a variable.
const TIERED: &str = r#"
id: tiered
version: 1
name: Tiered
roles: { r: { name: R }, a: { name: A } }
variables: { tier: { type: string, default: normal } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [r], accountable: a }
    due: { expr: "tier == 'key' ? '1h' : '4h'" }
    next: done
  done: { kind: end }
"#;

/// A task without a deadline.
const PLAIN: &str = r#"
id: plain
version: 1
name: Plain
roles: { r: { name: R }, a: { name: A } }
nodes:
  start: { kind: start, next: work }
  work: { kind: user_task, name: Work, raci: { responsible: [r], accountable: a }, next: done }
  done: { kind: end }
"#;

const CHINA: &str = "process-defs/calendars/china.yaml";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Monday 2026-01-05 09:00 UTC.
fn t0() -> DateTime<Utc> {
    t("2026-01-05T09:00:00Z")
}

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .to_utc()
}

fn hm(h: i64, m: i64) -> Duration {
    Duration::hours(h) + Duration::minutes(m)
}

fn def(text: &str) -> ProcessDef {
    ProcessDef::from_yaml(text).unwrap_or_else(|e| panic!("test definition is invalid:\n{e}"))
}

/// An engine on a manual clock standing at `start`, built from `builder`, with `defs` deployed.
fn engine_on(
    builder: &mut EngineBuilder,
    start: DateTime<Utc>,
    defs: &[&str],
) -> (Arc<ManualClock>, Engine) {
    let clock = Arc::new(ManualClock::new(start));
    let engine = builder.clock(Arc::clone(&clock)).build();
    for text in defs {
        engine.deploy(def(text)).expect("deploy");
    }
    (clock, engine)
}

fn engine_at(start: DateTime<Utc>, defs: &[&str]) -> (Arc<ManualClock>, Engine) {
    engine_on(&mut Engine::builder(), start, defs)
}

/// Moves the clock to `now` and ticks.
fn tick_at(clock: &ManualClock, engine: &Engine, now: DateTime<Utc>) -> Vec<Fired> {
    clock.set(now);
    engine.tick(now)
}

fn vars(value: serde_json::Value) -> Vars {
    value.as_object().expect("an object").clone()
}

fn roles(ids: &[&str]) -> Vec<RoleId> {
    ids.iter().map(|r| RoleId::new(*r)).collect()
}

/// The node as errors name it.
fn node_ref(engine: &Engine, id: InstanceId, name: &str) -> NodeRef {
    NodeRef {
        id: engine.definition_of(id).unwrap().node_id(name).unwrap(),
        name: name.into(),
    }
}

/// The only open task of an instance.
fn only_task(engine: &Engine, id: InstanceId) -> TaskId {
    let tasks = engine.tasks(id).unwrap();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    tasks[0].id
}

fn task_at(engine: &Engine, id: InstanceId, node: &str) -> TaskId {
    engine
        .tasks(id)
        .unwrap()
        .into_iter()
        .find(|t| &*t.node_id == node)
        .unwrap_or_else(|| panic!("no open task at {node}"))
        .id
}

fn fired(
    instance: InstanceId,
    task: Option<TaskId>,
    kind: TimerKind,
    sla: bool,
    due: DateTime<Utc>,
    recipients: &[&str],
) -> Fired {
    Fired {
        instance,
        task,
        kind,
        sla,
        due,
        recipients: roles(recipients),
    }
}

/// A timer event as a hook sees it.
type TimerEvent = (
    InstanceId,
    Option<TaskId>,
    String,
    TimerKind,
    bool,
    Vec<RoleId>,
);

/// A hook that records every `Event::Timer`.
fn timer_events() -> (Arc<Mutex<Vec<TimerEvent>>>, impl procflow::Hook + 'static) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    let hook = hook_fn(move |ev: &Event| {
        if let Event::Timer {
            instance,
            task,
            node,
            kind,
            sla,
            recipients,
        } = ev
        {
            sink.lock().unwrap().push((
                *instance,
                *task,
                node.to_string(),
                *kind,
                *sla,
                recipients.clone(),
            ));
        }
    });
    (log, hook)
}

/// The hook event each firing should have produced, at `node`.
fn as_event(f: &Fired, node: &str) -> TimerEvent {
    (
        f.instance,
        f.task,
        node.to_owned(),
        f.kind,
        f.sla,
        f.recipients.clone(),
    )
}

/// The `Entry::Timer` records of an instance.
fn timer_records(engine: &Engine, id: InstanceId) -> Vec<Record> {
    engine
        .instance(id)
        .unwrap()
        .audit()
        .iter()
        .filter(|r| matches!(r.what, Entry::Timer { .. }))
        .cloned()
        .collect()
}

fn timer_record(at: DateTime<Utc>, kind: TimerKind, task: Option<u32>, sla: bool) -> Record {
    Record {
        at,
        what: Entry::Timer { kind, task, sla },
    }
}

fn sla(due: DateTime<Utc>, elapsed: Duration, remaining: Duration, status: SlaStatus) -> Sla {
    Sla {
        provisional: false,
        due,
        elapsed,
        remaining,
        status,
    }
}

// ---------------------------------------------------------------------------------------------
// The escalation ladder
// ---------------------------------------------------------------------------------------------

#[test]
fn ladder_fires_every_action_once_in_order_with_hooks_and_audit() {
    let (log, hook) = timer_events();
    let (clock, engine) = engine_on(Engine::builder().hook(hook), t0(), &[LADDER]);
    let id = engine.start("ladder", Vars::new()).unwrap();
    let task = only_task(&engine, id);
    let ann = Actor::new("ann", ["r"]);
    let lou = Actor::new("lou", ["lead"]);
    let at = |d: Duration| t0() + d;
    let f = |kind, d: Duration, to: &[&str]| fired(id, Some(task), kind, false, at(d), to);

    // Nothing before the claim deadline.
    assert_eq!(tick_at(&clock, &engine, at(hm(0, 29))), []);
    assert_eq!(
        tick_at(&clock, &engine, at(hm(0, 30))),
        [f(TimerKind::ClaimDue, hm(0, 30), &["a"])],
        "still unclaimed after 30m: the accountable role is told"
    );
    clock.set(at(hm(0, 45)));
    engine.claim(task, &ann).unwrap();
    assert_eq!(
        tick_at(&clock, &engine, at(hm(2, 0))),
        [f(TimerKind::Reminder { index: 1 }, hm(2, 0), &["cs"])],
        "`after: 2h` goes to its `to`"
    );
    assert_eq!(
        tick_at(&clock, &engine, at(hm(3, 0))),
        [f(TimerKind::Reminder { index: 0 }, hm(3, 0), &["r"])],
        "`before: 1h` of a 4h deadline, to the responsible roles"
    );
    assert_eq!(
        tick_at(&clock, &engine, at(hm(4, 0))),
        [f(TimerKind::Due, hm(4, 0), &["i"])],
        "the breach notice goes to the informed roles"
    );
    assert_eq!(
        tick_at(&clock, &engine, at(hm(4, 30))),
        [f(TimerKind::Escalation { level: 0 }, hm(4, 30), &["a"])],
        "a notify without `to` goes to the accountable role"
    );
    assert_eq!(
        tick_at(&clock, &engine, at(hm(5, 0))),
        [f(TimerKind::Escalation { level: 1 }, hm(5, 0), &["boss"])]
    );

    // Before the reassignment the lead has no business with the task.
    assert_eq!(engine.work_list(&lou), []);
    assert_eq!(
        engine.complete(task, &lou, Vars::new()),
        Err(ExecError::Denied {
            actor: "lou".into(),
            action: procflow::Action::Complete,
            task,
            node: node_ref(&engine, id, "work"),
            allowed: roles(&["r", "a"]),
            claimed_by: Some("ann".into()),
        })
    );
    assert_eq!(
        engine.instance(id).unwrap().tasks()[0].claimed_by(),
        Some("ann")
    );

    assert_eq!(
        tick_at(&clock, &engine, at(hm(6, 0))),
        [f(TimerKind::Escalation { level: 2 }, hm(6, 0), &["lead"])],
        "reassign tells the role it gives the task to"
    );
    assert_eq!(
        engine.instance(id).unwrap().tasks()[0].claimed_by(),
        None,
        "the reassignment cleared ann's claim"
    );
    let listed: Vec<TaskId> = engine.work_list(&lou).into_iter().map(|t| t.id).collect();
    assert_eq!(listed, [task], "the lead now sees the task");
    engine.claim(task, &lou).unwrap();
    assert_eq!(
        engine.complete(task, &ann, Vars::new()),
        Err(ExecError::Denied {
            actor: "ann".into(),
            action: procflow::Action::Complete,
            task,
            node: node_ref(&engine, id, "work"),
            allowed: roles(&["lead", "a"]),
            claimed_by: Some("lou".into()),
        }),
        "the task is the lead's now: the responsible role no longer holds it"
    );

    // Urges: every 30m from 7h, at most 3 times.
    assert_eq!(tick_at(&clock, &engine, at(hm(6, 59))), []);
    for (n, d) in [(1, hm(7, 0)), (2, hm(7, 30)), (3, hm(8, 0))] {
        assert_eq!(
            tick_at(&clock, &engine, at(d)),
            [f(TimerKind::Urge { level: 3, count: n }, d, &["a"])],
            "urge {n}"
        );
    }
    assert_eq!(tick_at(&clock, &engine, at(hm(8, 30))), [], "max: 3");
    assert_eq!(tick_at(&clock, &engine, at(hm(48, 0))), []);
    assert_eq!(
        engine.instance(id).unwrap().tasks()[0].state(),
        &TaskState::Open,
        "escalations do not close the task"
    );

    // Every firing reached the hooks with the same recipients, and has an audit record.
    let all = [
        f(TimerKind::ClaimDue, hm(0, 30), &["a"]),
        f(TimerKind::Reminder { index: 1 }, hm(2, 0), &["cs"]),
        f(TimerKind::Reminder { index: 0 }, hm(3, 0), &["r"]),
        f(TimerKind::Due, hm(4, 0), &["i"]),
        f(TimerKind::Escalation { level: 0 }, hm(4, 30), &["a"]),
        f(TimerKind::Escalation { level: 1 }, hm(5, 0), &["boss"]),
        f(TimerKind::Escalation { level: 2 }, hm(6, 0), &["lead"]),
        f(TimerKind::Urge { level: 3, count: 1 }, hm(7, 0), &["a"]),
        f(TimerKind::Urge { level: 3, count: 2 }, hm(7, 30), &["a"]),
        f(TimerKind::Urge { level: 3, count: 3 }, hm(8, 0), &["a"]),
    ];
    let expected: Vec<TimerEvent> = all.iter().map(|f| as_event(f, "work")).collect();
    assert_eq!(*log.lock().unwrap(), expected);
    let records: Vec<Record> = all
        .iter()
        .map(|f| timer_record(f.due, f.kind, Some(task.seq()), false))
        .collect();
    assert_eq!(timer_records(&engine, id), records);

    clock.set(at(hm(9, 0)));
    engine.complete(task, &lou, Vars::new()).unwrap();
    assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
}

#[test]
fn claim_deadline_fires_only_while_the_task_is_unclaimed() {
    let (clock, engine) = engine_at(t0(), &[LADDER]);
    let claimed = engine.start("ladder", Vars::new()).unwrap();
    let open = engine.start("ladder", Vars::new()).unwrap();
    let (claimed_task, open_task) = (only_task(&engine, claimed), only_task(&engine, open));
    clock.set(t0() + Duration::minutes(10));
    engine
        .claim(claimed_task, &Actor::new("ann", ["r"]))
        .unwrap();
    assert_eq!(
        tick_at(&clock, &engine, t0() + Duration::minutes(30)),
        [fired(
            open,
            Some(open_task),
            TimerKind::ClaimDue,
            false,
            t0() + Duration::minutes(30),
            &["a"]
        )],
        "the task claimed at 10m is not overdue for claiming"
    );
    assert_eq!(timer_records(&engine, claimed), []);
}

#[test]
fn fired_names_follow_their_doc() {
    // `Fired::name`: `reminder`, `breach`, `escalation` (notify or reassign), `urge`, `timeout`,
    // `claim_overdue`, `timer_node`, with `sla_` in front for the SLA's.
    let (clock, engine) = engine_at(t0(), &[LADDER, SLA, TIMEOUT]);
    engine.start("ladder", Vars::new()).unwrap();
    engine.start("sla", Vars::new()).unwrap();
    engine.start("timeout", Vars::new()).unwrap();
    let mut names: Vec<(DateTime<Utc>, String)> = tick_at(&clock, &engine, t0() + hm(24, 0))
        .iter()
        .map(|f| (f.due, f.name()))
        .collect();
    names.sort();
    let names: Vec<String> = names.into_iter().map(|(_, n)| n).collect();
    let mut expected: Vec<(Duration, &str)> = vec![
        // ladder
        (hm(0, 30), "claim_overdue"),
        (hm(2, 0), "reminder"),
        (hm(3, 0), "reminder"),
        (hm(4, 0), "breach"),
        (hm(4, 30), "escalation"),
        (hm(5, 0), "escalation"),
        (hm(6, 0), "escalation"),
        (hm(7, 0), "urge"),
        (hm(7, 30), "urge"),
        (hm(8, 0), "urge"),
        // sla
        (hm(6, 0), "sla_reminder"),
        (hm(8, 0), "sla_breach"),
        (hm(9, 0), "sla_escalation"),
        (hm(10, 0), "sla_escalation"),
        (hm(11, 0), "sla_urge"),
        (hm(12, 0), "sla_urge"),
        // timeout
        (hm(1, 30), "reminder"),
        (hm(2, 0), "breach"),
        (hm(2, 30), "timeout"),
    ];
    expected.sort();
    let expected: Vec<String> = expected.into_iter().map(|(_, n)| n.to_owned()).collect();
    assert_eq!(names, expected);

    let (clock, engine) = engine_at(t0(), &[WAITS]);
    let appointment = (t0() + hm(72, 0)).to_rfc3339();
    engine
        .start("waits", vars(json!({ "appointment": appointment })))
        .unwrap();
    let names: Vec<String> = tick_at(&clock, &engine, t0() + hm(72, 0))
        .iter()
        .map(Fired::name)
        .collect();
    assert_eq!(names, ["timer_node", "timer_node"]);
}

// ---------------------------------------------------------------------------------------------
// Interrupting timeout
// ---------------------------------------------------------------------------------------------

#[test]
fn timeout_cancels_the_task_and_moves_the_token() {
    let (log, hook) = timer_events();
    let (clock, engine) = engine_on(Engine::builder().hook(hook), t0(), &[TIMEOUT]);
    let id = engine.start("timeout", Vars::new()).unwrap();
    let task = only_task(&engine, id);
    let f = |kind, d: Duration, to: &[&str]| fired(id, Some(task), kind, false, t0() + d, to);

    assert_eq!(
        tick_at(&clock, &engine, t0() + hm(2, 0)),
        [
            f(TimerKind::Reminder { index: 0 }, hm(1, 30), &["r"]),
            f(TimerKind::Due, hm(2, 0), &["i"]),
        ]
    );
    assert_eq!(tick_at(&clock, &engine, t0() + hm(2, 29)), []);
    assert_eq!(
        tick_at(&clock, &engine, t0() + hm(2, 30)),
        [f(TimerKind::Timeout, hm(2, 30), &["a"])]
    );

    let inst = engine.instance(id).unwrap();
    assert_eq!(
        inst.tasks()[0].state(),
        &TaskState::TimedOut {
            at: t0() + hm(2, 30)
        }
    );
    assert!(
        inst.timers().iter().all(|x| x.task != Some(task.seq())),
        "the timed-out task's timers are gone: {:?}",
        inst.timers()
    );
    let apology = engine
        .definition_of(id)
        .unwrap()
        .node_id("apology")
        .unwrap();
    assert_eq!(
        inst.tokens()
            .iter()
            .map(|t| (t.node, t.state))
            .collect::<Vec<_>>(),
        [(apology, TokenState::Waiting)]
    );
    let open: Vec<String> = engine
        .tasks(id)
        .unwrap()
        .into_iter()
        .map(|t| t.node_id.to_string())
        .collect();
    assert_eq!(open, ["apology"]);
    let work = engine.definition_of(id).unwrap().node_id("work").unwrap();
    assert!(inst.audit().contains(&Record {
        at: t0() + hm(2, 30),
        what: Entry::Transition {
            from: work,
            to: apology,
            actor: None
        }
    }));

    // The 3h escalation never fires; the task cannot be completed any more.
    assert_eq!(tick_at(&clock, &engine, t0() + hm(3, 0)), []);
    assert_eq!(tick_at(&clock, &engine, t0() + hm(100, 0)), []);
    assert_eq!(
        engine.complete(task, &Actor::new("ann", ["r"]), Vars::new()),
        Err(ExecError::TaskClosed {
            task,
            node: node_ref(&engine, id, "work"),
            state: "timed out",
        })
    );
    assert_eq!(
        *log.lock().unwrap(),
        [
            as_event(
                &f(TimerKind::Reminder { index: 0 }, hm(1, 30), &["r"]),
                "work"
            ),
            as_event(&f(TimerKind::Due, hm(2, 0), &["i"]), "work"),
            as_event(&f(TimerKind::Timeout, hm(2, 30), &["a"]), "work"),
        ]
    );
    assert_eq!(
        timer_records(&engine, id),
        [
            timer_record(
                t0() + hm(1, 30),
                TimerKind::Reminder { index: 0 },
                Some(0),
                false
            ),
            timer_record(t0() + hm(2, 0), TimerKind::Due, Some(0), false),
            timer_record(t0() + hm(2, 30), TimerKind::Timeout, Some(0), false),
        ],
        "audit times are the timers' instants, even when a tick comes late"
    );

    let apology_task = task_at(&engine, id, "apology");
    engine
        .complete(apology_task, &Actor::new("cy", ["cs"]), Vars::new())
        .unwrap();
    assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
}

#[test]
fn a_late_tick_past_the_timeout_fires_what_came_before_it_and_nothing_after() {
    let (clock, engine) = engine_at(t0(), &[TIMEOUT]);
    let id = engine.start("timeout", Vars::new()).unwrap();
    let task = only_task(&engine, id);
    let f = |kind, d: Duration, to: &[&str]| fired(id, Some(task), kind, false, t0() + d, to);
    assert_eq!(
        tick_at(&clock, &engine, t0() + hm(10, 0)),
        [
            f(TimerKind::Reminder { index: 0 }, hm(1, 30), &["r"]),
            f(TimerKind::Due, hm(2, 0), &["i"]),
            f(TimerKind::Timeout, hm(2, 30), &["a"]),
        ],
        "the 3h escalation was cancelled by the 2h30 timeout"
    );
}

// ---------------------------------------------------------------------------------------------
// Timer nodes
// ---------------------------------------------------------------------------------------------

#[test]
fn timer_nodes_wait_for_a_duration_then_until_an_instant() {
    let (log, hook) = timer_events();
    let (clock, engine) = engine_on(Engine::builder().hook(hook), t0(), &[WAITS]);
    // 2026-01-08T17:30:00+08:00 is 09:30Z on the 8th: 3 days and 30 minutes after t0.
    let id = engine
        .start(
            "waits",
            vars(json!({ "appointment": "2026-01-08T17:30:00+08:00" })),
        )
        .unwrap();
    assert_eq!(engine.tasks(id).unwrap(), []);
    assert_eq!(engine.next_due(), Some(t0() + hm(48, 0)));

    assert_eq!(
        tick_at(&clock, &engine, t0() + hm(48, 0) - Duration::seconds(1)),
        []
    );
    assert_eq!(
        tick_at(&clock, &engine, t0() + hm(48, 0)),
        [fired(
            id,
            None,
            TimerKind::Wait,
            false,
            t0() + hm(48, 0),
            &[]
        )]
    );
    let visit = engine.definition_of(id).unwrap().node_id("visit").unwrap();
    let inst = engine.instance(id).unwrap();
    assert_eq!(
        inst.tokens()
            .iter()
            .map(|t| (t.node, t.state))
            .collect::<Vec<_>>(),
        [(visit, TokenState::Waiting)]
    );
    let appointment = t("2026-01-08T09:30:00Z");
    assert_eq!(engine.next_due(), Some(appointment));

    assert_eq!(
        tick_at(&clock, &engine, appointment - Duration::seconds(1)),
        []
    );
    assert_eq!(
        tick_at(&clock, &engine, appointment),
        [fired(id, None, TimerKind::Wait, false, appointment, &[])]
    );
    assert_eq!(task_at(&engine, id, "onsite").seq(), 0);
    assert_eq!(
        *log.lock().unwrap(),
        [
            (
                id,
                None,
                "cool_off".to_owned(),
                TimerKind::Wait,
                false,
                vec![]
            ),
            (id, None, "visit".to_owned(), TimerKind::Wait, false, vec![]),
        ]
    );
    assert_eq!(
        timer_records(&engine, id),
        [
            timer_record(t0() + hm(48, 0), TimerKind::Wait, None, false),
            timer_record(appointment, TimerKind::Wait, None, false),
        ]
    );
}

#[test]
fn a_late_tick_runs_through_both_timer_nodes() {
    let (clock, engine) = engine_at(t0(), &[WAITS]);
    let appointment = t0() + hm(72, 0);
    let id = engine
        .start(
            "waits",
            vars(json!({ "appointment": appointment.to_rfc3339() })),
        )
        .unwrap();
    assert_eq!(
        tick_at(&clock, &engine, t0() + hm(100, 0)),
        [
            fired(id, None, TimerKind::Wait, false, t0() + hm(48, 0), &[]),
            fired(id, None, TimerKind::Wait, false, appointment, &[]),
        ],
        "the second wait, armed while the first fired, fires in the same tick"
    );
    assert_eq!(task_at(&engine, id, "onsite").seq(), 0);
}

#[test]
fn an_until_variable_that_is_not_an_instant_is_an_incident() {
    let (clock, engine) = engine_at(t0(), &[WAITS]);
    let visit = engine.definition("waits", None).unwrap().node_id("visit");
    for (vars, start) in [
        (
            vars(json!({ "appointment": "next tuesday" })),
            "cannot compute a deadline: \
             variable 'appointment' = 'next tuesday' is not an RFC 3339 instant: ",
        ),
        (
            Vars::new(),
            "cannot compute a deadline: variable 'appointment' holds no instant",
        ),
    ] {
        clock.set(t0());
        let id = engine.start("waits", vars).unwrap();
        let now = t0() + hm(48, 0);
        assert_eq!(
            tick_at(&clock, &engine, now),
            [fired(id, None, TimerKind::Wait, false, now, &[])],
            "{start}"
        );
        let inst = engine.instance(id).unwrap();
        assert_eq!(inst.incidents().len(), 1, "{start}");
        let incident = &inst.incidents()[0];
        assert_eq!(incident.node, visit);
        assert!(
            incident.message.starts_with(start),
            "{:?} should start with {start:?}",
            incident.message
        );
        assert_eq!(incident.at, now);
        assert!(!incident.resolved);
        assert_eq!(
            inst.tokens()
                .iter()
                .map(|t| (Some(t.node), t.state))
                .collect::<Vec<_>>(),
            [(visit, TokenState::Failed)]
        );
        assert_eq!(inst.status(), Status::Running);
        assert_eq!(tick_at(&clock, &engine, now + hm(1000, 0)), []);
    }
}

// ---------------------------------------------------------------------------------------------
// Process-wide SLA
// ---------------------------------------------------------------------------------------------

#[test]
fn sla_ladder_and_a_completed_instance_ignores_late_timers() {
    let (log, hook) = timer_events();
    let (clock, engine) = engine_on(Engine::builder().hook(hook), t0(), &[SLA]);
    let id = engine.start("sla", Vars::new()).unwrap();
    let done = engine.start("sla", Vars::new()).unwrap();
    let ann = Actor::new("ann", ["r"]);
    clock.set(t0() + hm(1, 0));
    engine
        .complete(only_task(&engine, done), &ann, Vars::new())
        .unwrap();
    assert_eq!(engine.instance(done).unwrap().status(), Status::Completed);
    assert_eq!(engine.instance(done).unwrap().timers(), []);

    let f = |kind, d: Duration, to: &[&str]| fired(id, None, kind, true, t0() + d, to);
    let all = [
        f(TimerKind::Reminder { index: 0 }, hm(6, 0), &["a"]),
        f(TimerKind::Due, hm(8, 0), &["i"]),
        f(TimerKind::Escalation { level: 0 }, hm(9, 0), &["a"]),
        f(TimerKind::Escalation { level: 1 }, hm(10, 0), &["boss"]),
        f(TimerKind::Urge { level: 2, count: 1 }, hm(11, 0), &["a"]),
        f(TimerKind::Urge { level: 2, count: 2 }, hm(12, 0), &["a"]),
    ];
    assert_eq!(tick_at(&clock, &engine, t0() + hm(5, 59)), []);
    for x in &all {
        assert_eq!(tick_at(&clock, &engine, x.due), std::slice::from_ref(x));
    }
    assert_eq!(tick_at(&clock, &engine, t0() + hm(13, 0)), [], "max: 2");

    let expected: Vec<TimerEvent> = all.iter().map(|f| as_event(f, "start")).collect();
    assert_eq!(*log.lock().unwrap(), expected);
    let records: Vec<Record> = all
        .iter()
        .map(|f| timer_record(f.due, f.kind, None, true))
        .collect();
    assert_eq!(timer_records(&engine, id), records);
    assert_eq!(
        timer_records(&engine, done),
        [],
        "the completed one never fired"
    );

    clock.set(t0() + hm(14, 0));
    engine
        .complete(only_task(&engine, id), &ann, Vars::new())
        .unwrap();
    assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
    assert_eq!(tick_at(&clock, &engine, t0() + hm(100, 0)), []);
}

#[test]
fn completing_the_instance_before_its_sla_cancels_every_sla_timer() {
    let (clock, engine) = engine_at(t0(), &[SLA]);
    let id = engine.start("sla", Vars::new()).unwrap();
    assert_eq!(
        tick_at(&clock, &engine, t0() + hm(6, 0)),
        [fired(
            id,
            None,
            TimerKind::Reminder { index: 0 },
            true,
            t0() + hm(6, 0),
            &["a"]
        )]
    );
    clock.set(t0() + hm(7, 0));
    engine
        .complete(
            only_task(&engine, id),
            &Actor::new("ann", ["r"]),
            Vars::new(),
        )
        .unwrap();
    assert_eq!(tick_at(&clock, &engine, t0() + hm(8, 0)), []);
    assert_eq!(tick_at(&clock, &engine, t0() + hm(500, 0)), []);
}

#[test]
fn sla_of_instance_on_wall_time() {
    let (clock, engine) = engine_at(t0(), &[SLA, PLAIN]);
    let id = engine.start("sla", Vars::new()).unwrap();
    let due = t0() + hm(8, 0);
    let at = |d: Duration| {
        clock.set(t0() + d);
        engine.sla_of_instance(id).unwrap()
    };
    assert_eq!(
        at(Duration::zero()),
        Some(sla(due, Duration::zero(), hm(8, 0), SlaStatus::OnTrack))
    );
    assert_eq!(
        at(hm(1, 0)),
        Some(sla(due, hm(1, 0), hm(7, 0), SlaStatus::OnTrack))
    );
    assert_eq!(
        at(hm(5, 59)),
        Some(sla(due, hm(5, 59), hm(2, 1), SlaStatus::OnTrack))
    );
    assert_eq!(
        at(hm(6, 0)),
        Some(sla(due, hm(6, 0), hm(2, 0), SlaStatus::AtRisk)),
        "a quarter left"
    );
    assert_eq!(
        at(hm(7, 59)),
        Some(sla(due, hm(7, 59), hm(0, 1), SlaStatus::AtRisk))
    );
    assert_eq!(
        at(hm(8, 0)),
        Some(sla(due, hm(8, 0), Duration::zero(), SlaStatus::Breached))
    );
    assert_eq!(
        at(hm(9, 0)),
        Some(sla(due, hm(9, 0), -hm(1, 0), SlaStatus::Breached))
    );
    // Firing the breach keeps the deadline known.
    engine.tick(t0() + hm(9, 0));
    assert_eq!(
        at(hm(9, 30)),
        Some(sla(due, hm(9, 30), -hm(1, 30), SlaStatus::Breached))
    );
    // No task deadline; no SLA on another definition.
    assert_eq!(engine.sla_of_task(only_task(&engine, id)), Ok(None));
    let plain = engine.start("plain", Vars::new()).unwrap();
    assert_eq!(engine.sla_of_instance(plain), Ok(None));
    assert_eq!(engine.sla_of_task(only_task(&engine, plain)), Ok(None));
}

#[test]
fn sla_of_task_on_wall_time() {
    let (clock, engine) = engine_at(t0(), &[SIMPLE]);
    clock.set(t0() + hm(0, 20));
    let id = engine.start("simple", Vars::new()).unwrap();
    let task = only_task(&engine, id);
    let due = t0() + hm(1, 20);
    assert_eq!(engine.tasks(id).unwrap()[0].due, Some(due));
    let at = |d: Duration| {
        clock.set(t0() + d);
        engine.sla_of_task(task).unwrap()
    };
    assert_eq!(
        at(hm(0, 30)),
        Some(sla(due, hm(0, 10), hm(0, 50), SlaStatus::OnTrack))
    );
    assert_eq!(
        at(hm(1, 4)),
        Some(sla(due, hm(0, 44), hm(0, 16), SlaStatus::OnTrack))
    );
    assert_eq!(
        at(hm(1, 5)),
        Some(sla(due, hm(0, 45), hm(0, 15), SlaStatus::AtRisk))
    );
    assert_eq!(
        at(hm(1, 20)),
        Some(sla(due, hm(1, 0), Duration::zero(), SlaStatus::Breached))
    );
    assert_eq!(
        at(hm(2, 0)),
        Some(sla(due, hm(1, 40), -hm(0, 40), SlaStatus::Breached))
    );
}

#[test]
fn sla_on_business_time_on_the_china_calendar() {
    let cal = BusinessCalendar::from_file(CHINA).expect("the shipped calendar loads");
    // Friday 2026-01-09 17:00 in Shanghai.
    let start = t("2026-01-09T17:00:00+08:00");
    let (clock, engine) = engine_on(Engine::builder().calendar("china", cal), start, &[CN]);
    let id = engine.start("cn", Vars::new()).unwrap();
    let task = only_task(&engine, id);
    // 1h on Friday, 3h on Monday morning.
    let task_due = t("2026-01-12T12:00:00+08:00");
    // 1h on Friday, 3h on Monday morning, 4h after lunch.
    let sla_due = t("2026-01-12T17:00:00+08:00");
    assert_eq!(engine.tasks(id).unwrap()[0].due, Some(task_due));

    let task_at = |s: &str| {
        clock.set(t(s));
        engine.sla_of_task(task).unwrap()
    };
    assert_eq!(
        task_at("2026-01-09T17:30:00+08:00"),
        Some(sla(task_due, hm(0, 30), hm(3, 30), SlaStatus::OnTrack))
    );
    assert_eq!(
        task_at("2026-01-10T10:00:00+08:00"),
        Some(sla(task_due, hm(1, 0), hm(3, 0), SlaStatus::OnTrack)),
        "the weekend does not count"
    );
    assert_eq!(
        task_at("2026-01-12T10:59:00+08:00"),
        Some(sla(task_due, hm(2, 59), hm(1, 1), SlaStatus::OnTrack))
    );
    assert_eq!(
        task_at("2026-01-12T11:00:00+08:00"),
        Some(sla(task_due, hm(3, 0), hm(1, 0), SlaStatus::AtRisk))
    );
    assert_eq!(
        task_at("2026-01-12T12:00:00+08:00"),
        Some(sla(
            task_due,
            hm(4, 0),
            Duration::zero(),
            SlaStatus::Breached
        ))
    );
    assert_eq!(
        task_at("2026-01-12T14:00:00+08:00"),
        Some(sla(task_due, hm(5, 0), -hm(1, 0), SlaStatus::Breached)),
        "the lunch break does not count"
    );

    let instance_at = |s: &str| {
        clock.set(t(s));
        engine.sla_of_instance(id).unwrap()
    };
    assert_eq!(
        instance_at("2026-01-11T12:00:00+08:00"),
        Some(sla(sla_due, hm(1, 0), hm(7, 0), SlaStatus::OnTrack))
    );
    assert_eq!(
        instance_at("2026-01-12T13:00:00+08:00"),
        Some(sla(sla_due, hm(4, 0), hm(4, 0), SlaStatus::OnTrack))
    );
    assert_eq!(
        instance_at("2026-01-12T14:59:00+08:00"),
        Some(sla(sla_due, hm(5, 59), hm(2, 1), SlaStatus::OnTrack))
    );
    assert_eq!(
        instance_at("2026-01-12T15:00:00+08:00"),
        Some(sla(sla_due, hm(6, 0), hm(2, 0), SlaStatus::AtRisk))
    );
    assert_eq!(
        instance_at("2026-01-12T18:00:00+08:00"),
        Some(sla(sla_due, hm(9, 0), -hm(1, 0), SlaStatus::Breached))
    );

    // The timers themselves count business time too.
    assert_eq!(tick_at(&clock, &engine, t("2026-01-11T23:59:59+08:00")), []);
    assert_eq!(
        tick_at(&clock, &engine, t("2026-01-12T18:00:00+08:00")),
        [
            fired(
                id,
                Some(task),
                TimerKind::Reminder { index: 0 },
                false,
                t("2026-01-12T11:00:00+08:00"),
                &["r"]
            ),
            fired(id, Some(task), TimerKind::Due, false, task_due, &["i"]),
            fired(
                id,
                Some(task),
                TimerKind::Escalation { level: 0 },
                false,
                t("2026-01-12T15:00:00+08:00"),
                &["a"]
            ),
            fired(id, None, TimerKind::Due, true, sla_due, &["i"]),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Tick semantics
// ---------------------------------------------------------------------------------------------

#[test]
fn never_early_and_exactly_once() {
    let (clock, engine) = engine_at(t0(), &[SIMPLE]);
    let id = engine.start("simple", Vars::new()).unwrap();
    let task = only_task(&engine, id);
    let reminder = fired(
        id,
        Some(task),
        TimerKind::Reminder { index: 0 },
        false,
        t0() + hm(0, 30),
        &["r"],
    );
    let due = fired(
        id,
        Some(task),
        TimerKind::Due,
        false,
        t0() + hm(1, 0),
        &["i"],
    );
    assert_eq!(engine.tick(t0()), []);
    assert_eq!(
        tick_at(&clock, &engine, t0() + hm(0, 30) - Duration::seconds(1)),
        []
    );
    assert_eq!(
        tick_at(&clock, &engine, t0() + hm(0, 30)),
        std::slice::from_ref(&reminder)
    );
    assert_eq!(tick_at(&clock, &engine, t0() + hm(0, 30)), [], "once");
    assert_eq!(
        tick_at(&clock, &engine, t0() + hm(1, 0) - Duration::seconds(1)),
        []
    );
    assert_eq!(
        tick_at(&clock, &engine, t0() + hm(1, 0)),
        std::slice::from_ref(&due)
    );
    assert_eq!(tick_at(&clock, &engine, t0() + hm(1, 0)), [], "once");
    assert_eq!(
        timer_records(&engine, id),
        [
            timer_record(reminder.due, reminder.kind, Some(0), false),
            timer_record(due.due, due.kind, Some(0), false),
        ]
    );
}

#[test]
fn a_late_tick_fires_every_missed_timer_once_in_deadline_order() {
    let (clock, engine) = engine_at(t0(), &[SIMPLE]);
    let mut ids = Vec::new();
    for offset in [0, 10, 20] {
        clock.set(t0() + Duration::minutes(offset));
        let id = engine.start("simple", Vars::new()).unwrap();
        ids.push((id, only_task(&engine, id), Duration::minutes(offset)));
    }
    let got = tick_at(&clock, &engine, t0() + hm(10, 0));
    let mut expected = Vec::new();
    for (kind, d, to) in [
        (TimerKind::Reminder { index: 0 }, hm(0, 30), "r"),
        (TimerKind::Due, hm(1, 0), "i"),
        (TimerKind::Escalation { level: 0 }, hm(1, 30), "a"),
    ] {
        for &(id, task, offset) in &ids {
            expected.push(fired(id, Some(task), kind, false, t0() + offset + d, &[to]));
        }
    }
    assert_eq!(got, expected);
    assert!(got.windows(2).all(|w| w[0].due <= w[1].due));
    assert_eq!(tick_at(&clock, &engine, t0() + hm(10, 0)), []);
    assert_eq!(tick_at(&clock, &engine, t0() + hm(20, 0)), []);
}

#[test]
fn completing_a_task_before_its_deadline_cancels_its_timers() {
    let (clock, engine) = engine_at(t0(), &[SIMPLE]);
    let id = engine.start("simple", Vars::new()).unwrap();
    let other = engine.start("simple", Vars::new()).unwrap();
    let first = only_task(&engine, id);
    let other_first = only_task(&engine, other);
    clock.set(t0() + hm(0, 20));
    engine
        .complete(first, &Actor::new("ann", ["r"]), Vars::new())
        .unwrap();
    assert_eq!(engine.instance(id).unwrap().status(), Status::Running);
    assert_eq!(task_at(&engine, id, "second").seq(), 1);
    assert!(engine.instance(id).unwrap().timers().is_empty());
    let got = tick_at(&clock, &engine, t0() + hm(10, 0));
    assert!(
        got.iter().all(|f| f.instance == other),
        "nothing for the completed task: {got:?}"
    );
    assert_eq!(
        got.iter().map(|f| f.task).collect::<Vec<_>>(),
        [Some(other_first); 3]
    );
    assert_eq!(timer_records(&engine, id), []);
}

#[test]
fn next_due_is_the_earliest_armed_instant() {
    let (clock, engine) = engine_at(t0(), &[SIMPLE, PLAIN]);
    assert_eq!(engine.next_due(), None);
    engine.start("plain", Vars::new()).unwrap();
    assert_eq!(
        engine.next_due(),
        None,
        "a task without limits arms nothing"
    );
    clock.set(t0() + hm(0, 10));
    engine.start("simple", Vars::new()).unwrap();
    assert_eq!(engine.next_due(), Some(t0() + hm(0, 40)));
    clock.set(t0() + hm(0, 20));
    engine.start("simple", Vars::new()).unwrap();
    assert_eq!(engine.next_due(), Some(t0() + hm(0, 40)));
    assert_eq!(tick_at(&clock, &engine, t0() + hm(0, 40)).len(), 1);
    assert_eq!(engine.next_due(), Some(t0() + hm(0, 50)));
    assert_eq!(tick_at(&clock, &engine, t0() + hm(0, 50)).len(), 1);
    assert_eq!(engine.next_due(), Some(t0() + hm(1, 10)));
    assert_eq!(tick_at(&clock, &engine, t0() + hm(5, 0)).len(), 4);
    assert_eq!(engine.next_due(), None);
}

#[test]
fn a_computed_due_differs_per_instance() {
    let (clock, engine) = engine_at(t0(), &[TIERED]);
    let key = engine
        .start("tiered", vars(json!({ "tier": "key" })))
        .unwrap();
    let normal = engine.start("tiered", Vars::new()).unwrap();
    let (key_task, normal_task) = (only_task(&engine, key), only_task(&engine, normal));
    assert_eq!(engine.tasks(key).unwrap()[0].due, Some(t0() + hm(1, 0)));
    assert_eq!(engine.tasks(normal).unwrap()[0].due, Some(t0() + hm(4, 0)));
    assert_eq!(
        tick_at(&clock, &engine, t0() + hm(1, 0)),
        [fired(
            key,
            Some(key_task),
            TimerKind::Due,
            false,
            t0() + hm(1, 0),
            &[]
        )]
    );
    assert_eq!(tick_at(&clock, &engine, t0() + hm(3, 59)), []);
    assert_eq!(
        tick_at(&clock, &engine, t0() + hm(4, 0)),
        [fired(
            normal,
            Some(normal_task),
            TimerKind::Due,
            false,
            t0() + hm(4, 0),
            &[]
        )]
    );
}

#[test]
fn work_list_is_ordered_by_due_time() {
    let (clock, engine) = engine_at(t0(), &[TIERED, PLAIN]);
    let plain = engine.start("plain", Vars::new()).unwrap();
    clock.set(t0() + hm(0, 1));
    let normal = engine.start("tiered", Vars::new()).unwrap();
    clock.set(t0() + hm(0, 2));
    let key = engine
        .start("tiered", vars(json!({ "tier": "key" })))
        .unwrap();
    clock.set(t0() + hm(0, 3));
    let key2 = engine
        .start("tiered", vars(json!({ "tier": "key" })))
        .unwrap();
    let list: Vec<(InstanceId, Option<DateTime<Utc>>)> = engine
        .work_list(&Actor::new("ann", ["r"]))
        .into_iter()
        .map(|t| (t.id.instance(), t.due))
        .collect();
    assert_eq!(
        list,
        [
            (key, Some(t0() + hm(1, 2))),
            (key2, Some(t0() + hm(1, 3))),
            (normal, Some(t0() + hm(4, 1))),
            (plain, None),
        ]
    );
}

#[test]
fn timer_driver_fires_a_timer_on_the_system_clock() {
    let engine = Arc::new(engine_with_system_clock());
    let appointment = (Utc::now() + Duration::milliseconds(50))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    // `cool_off` waits 2 days; go straight to the `until` node with its own definition.
    let id = engine
        .start("soon", vars(json!({ "appointment": appointment })))
        .unwrap();
    assert_eq!(engine.tasks(id).unwrap(), []);
    let driver = TimerDriver::spawn(Arc::clone(&engine), std::time::Duration::from_millis(20));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut opened = false;
    while std::time::Instant::now() < deadline {
        if !engine.tasks(id).unwrap().is_empty() {
            opened = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    drop(driver);
    assert!(opened, "the driver did not fire the timer within 5 s");
    let inst = engine.instance(id).unwrap();
    let records = timer_records(&engine, id);
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].what,
        Entry::Timer {
            kind: TimerKind::Wait,
            task: None,
            sla: false
        }
    );
    assert!(records[0].at >= t(&appointment), "never early");
    assert_eq!(inst.tasks().len(), 1);
}

fn engine_with_system_clock() -> Engine {
    let engine = Engine::new();
    engine
        .deploy(def(r#"
id: soon
version: 1
name: Soon
roles: { r: { name: R }, a: { name: A } }
variables: { appointment: { type: string } }
nodes:
  start: { kind: start, next: visit }
  visit: { kind: timer, until: appointment, next: onsite }
  onsite: { kind: user_task, name: On site, raci: { responsible: [r], accountable: a }, next: done }
  done: { kind: end }
"#))
        .unwrap();
    engine
}

// ---------------------------------------------------------------------------------------------
// Property: a random schedule against an independent model
// ---------------------------------------------------------------------------------------------

/// The task's limits, in minutes.
#[derive(Clone, Debug)]
struct Limits {
    claim: i64,
    due: i64,
    before: i64,
    after: i64,
    notify: i64,
    urge: i64,
    every: i64,
    max: u32,
    timeout: i64,
}

impl Limits {
    fn yaml(&self) -> String {
        let Limits {
            claim,
            due,
            before,
            after,
            notify,
            urge,
            every,
            max,
            timeout,
        } = self;
        format!(
            r#"
id: prop
version: 1
name: Prop
roles: {{ r: {{ name: R }}, a: {{ name: A }}, i: {{ name: I }}, cs: {{ name: CS }}, boss: {{ name: Boss }} }}
nodes:
  start: {{ kind: start, next: work }}
  work:
    kind: user_task
    name: Work
    raci: {{ responsible: [r], accountable: a, informed: [i] }}
    due: {due}m
    claim_due: {claim}m
    remind:
      - {{ before: {before}m }}
      - {{ after: {after}m, to: [cs] }}
    escalate:
      - {{ after: {notify}m, action: notify, to: boss }}
      - {{ after: {urge}m, action: urge, every: {every}m, max: {max} }}
    timeout: {{ after: {timeout}m, to: done }}
    next: done
  done: {{ kind: end }}
"#
        )
    }

    /// Every timer of a task created at `start`, in arming order: (instant, kind, recipients).
    /// Urges after the first are armed later, so they come last.
    fn timers(&self, start: DateTime<Utc>) -> Vec<(DateTime<Utc>, TimerKind, &'static str)> {
        let m = Duration::minutes;
        let due = start + m(self.due);
        let mut out = vec![
            (
                start + m(self.due - self.before),
                TimerKind::Reminder { index: 0 },
                "r",
            ),
            (
                start + m(self.after),
                TimerKind::Reminder { index: 1 },
                "cs",
            ),
            (start + m(self.claim), TimerKind::ClaimDue, "a"),
            (due, TimerKind::Due, "i"),
            (
                due + m(self.notify),
                TimerKind::Escalation { level: 0 },
                "boss",
            ),
            (
                due + m(self.urge),
                TimerKind::Urge { level: 1, count: 1 },
                "a",
            ),
            (start + m(self.timeout), TimerKind::Timeout, "a"),
        ];
        for count in 2..=self.max {
            out.push((
                due + m(self.urge) + m(self.every) * (count as i32 - 1),
                TimerKind::Urge { level: 1, count },
                "a",
            ));
        }
        out
    }
}

fn limits() -> impl Strategy<Value = Limits> {
    (
        1i64..=90,
        10i64..=120,
        1i64..=60,
        (1i64..=200, 1i64..=60, 1i64..=90, 1i64..=30, 1u32..=4),
        1i64..=300,
    )
        .prop_map(
            |(claim, due, before, (after, notify, urge, every, max), timeout)| Limits {
                claim,
                due,
                before: before.min(due - 1),
                after,
                notify,
                urge,
                every,
                max,
                timeout,
            },
        )
}

/// One instance: started this many minutes after t0, its task completed this many minutes
/// after it started (if at all).
#[derive(Clone, Debug)]
struct Plan {
    start: i64,
    complete: Option<i64>,
}

fn plans() -> impl Strategy<Value = Vec<Plan>> {
    prop::collection::vec(
        (0i64..=120, prop::option::of(1i64..=500))
            .prop_map(|(start, complete)| Plan { start, complete }),
        1..=5,
    )
}

/// Tick instants: increasing, as minutes after t0.
fn ticks() -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec(1i64..=120, 1..=12).prop_map(|steps| {
        steps
            .iter()
            .scan(0, |at, step| {
                *at += step;
                Some(*at)
            })
            .collect()
    })
}

/// A sortable key for a firing.
fn key(instance: InstanceId, kind: TimerKind, due: DateTime<Utc>) -> (InstanceId, String, i64) {
    (instance, format!("{kind:?}"), due.timestamp())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Start(usize),
    Tick,
    Complete(usize),
}

fn run_schedule(limits: &Limits, plans: &[Plan], ticks: &[i64]) -> Result<(), TestCaseError> {
    let (clock, engine) = engine_at(t0(), &[&limits.yaml()]);
    let at = |min: i64| t0() + Duration::minutes(min);

    // Everything that happens, in time order; at the same instant starts first, then the tick,
    // then completions.
    let mut actions: Vec<(i64, Action)> = Vec::new();
    for (i, p) in plans.iter().enumerate() {
        actions.push((p.start, Action::Start(i)));
        if let Some(c) = p.complete {
            actions.push((p.start + c, Action::Complete(i)));
        }
    }
    actions.extend(ticks.iter().map(|&t| (t, Action::Tick)));
    actions.sort();

    let mut ids: Vec<Option<(InstanceId, TaskId)>> = vec![None; plans.len()];
    let mut all: Vec<Fired> = Vec::new();
    for (min, action) in actions {
        let now = at(min);
        clock.set(now);
        match action {
            Action::Start(i) => {
                let id = engine.start("prop", Vars::new()).unwrap();
                ids[i] = Some((id, only_task(&engine, id)));
            }
            Action::Complete(i) => {
                let (_, task) = ids[i].unwrap();
                let result = engine.complete(task, &Actor::new("ann", ["r"]), Vars::new());
                let timed_out = all
                    .iter()
                    .any(|f| f.task == Some(task) && f.kind == TimerKind::Timeout);
                if timed_out {
                    prop_assert_eq!(
                        result,
                        Err(ExecError::TaskClosed {
                            task,
                            node: node_ref(&engine, task.instance(), "work"),
                            state: "timed out",
                        })
                    );
                } else {
                    prop_assert_eq!(result, Ok(()));
                }
            }
            Action::Tick => {
                let fired = engine.tick(now);
                for f in &fired {
                    prop_assert!(f.due <= now, "fired early: {:?} at {}", f, now);
                }
                for w in fired.windows(2) {
                    prop_assert!(w[0].due <= w[1].due, "out of order: {:?}", fired);
                }
                all.extend(fired);
            }
        }
    }

    // No timer fires twice (an urge's repeats differ by their count).
    let mut keys: Vec<_> = all
        .iter()
        .map(|f| (f.instance, f.task, format!("{:?}", f.kind)))
        .collect();
    keys.sort();
    let n = keys.len();
    keys.dedup();
    prop_assert_eq!(keys.len(), n, "a timer fired twice: {:?}", all);

    // A task completed before its deadline never breaches nor escalates.
    for (p, ids) in plans.iter().zip(&ids) {
        let (id, _) = ids.unwrap();
        if p.complete
            .is_some_and(|c| c < limits.due && c < limits.timeout)
        {
            for f in all.iter().filter(|f| f.instance == id) {
                prop_assert!(
                    !matches!(
                        f.kind,
                        TimerKind::Due | TimerKind::Escalation { .. } | TimerKind::Urge { .. }
                    ),
                    "completed in time but {:?}",
                    f
                );
            }
        }
    }

    // The model: a timer fires if some tick at or after it came while its task was open. The
    // task ends at its completion (ticks at the same instant come first) or its timeout; timers
    // due with the timeout fire before it, except urge repeats, which are armed after it.
    let mut model = Vec::new();
    for (p, ids) in plans.iter().zip(&ids) {
        let (id, task) = ids.unwrap();
        let start = at(p.start);
        let horizon = ticks
            .iter()
            .map(|&m| at(m))
            .filter(|&m| m >= start && p.complete.is_none_or(|c| m <= start + Duration::minutes(c)))
            .max();
        let Some(horizon) = horizon else { continue };
        let timeout = start + Duration::minutes(limits.timeout);
        let timed_out = timeout <= horizon;
        for (due, kind, to) in limits.timers(start) {
            let fires = due <= horizon
                && (!timed_out
                    || due < timeout
                    || (due == timeout && !matches!(kind, TimerKind::Urge { count: 2.., .. })));
            if fires {
                model.push(fired(id, Some(task), kind, false, due, &[to]));
            }
        }
    }
    let mut got: Vec<_> = all
        .iter()
        .map(|f| (key(f.instance, f.kind, f.due), f.task, f.recipients.clone()))
        .collect();
    let mut want: Vec<_> = model
        .iter()
        .map(|f| (key(f.instance, f.kind, f.due), f.task, f.recipients.clone()))
        .collect();
    got.sort();
    want.sort();
    prop_assert_eq!(all.len(), model.len());
    prop_assert_eq!(got, want);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_schedules_match_the_model(limits in limits(), plans in plans(), ticks in ticks()) {
        run_schedule(&limits, &plans, &ticks)?;
    }
}

/// A Berlin office calendar for one duration in a process that counts on the China calendar.
const BERLIN_DESK: &str = r#"
name: Berlin desk
zone: Europe/Berlin
beyond: error
hours:
  mon: ["09:00-17:00"]
  tue: ["09:00-17:00"]
  wed: ["09:00-17:00"]
  thu: ["09:00-17:00"]
  fri: ["09:00-17:00"]
years:
  2026: {}
"#;

const TWO_CALENDARS: &str = r#"
id: two
version: 1
name: Two calendars
calendar: china
roles: { r: { name: R }, a: { name: A } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [r], accountable: a }
    due: { in: 2h business, calendar: berlin }
    claim_due: 2h business
    next: done
  done: { kind: end }
"#;

#[test]
fn a_single_duration_counts_on_the_calendar_it_names() {
    let china = BusinessCalendar::from_file(CHINA).unwrap();
    let berlin = BusinessCalendar::from_yaml(BERLIN_DESK).unwrap();
    let mut builder = Engine::builder();
    builder.calendar("china", china).calendar("berlin", berlin);
    // Monday 2026-01-05 09:00 UTC: 17:00 in Shanghai, 10:00 in Berlin.
    let (_clock, engine) = engine_on(&mut builder, t0(), &[TWO_CALENDARS]);
    let id = engine.start("two", Vars::new()).unwrap();
    let at = |kind| {
        let inst = engine.instance(id).unwrap();
        inst.timers().iter().find(|t| t.kind == kind).map(|t| t.at)
    };
    // Berlin: 10:00 + 2h = 12:00 Berlin, 11:00 UTC the same Monday.
    assert_eq!(
        at(TimerKind::Due),
        Some("2026-01-05T11:00:00Z".parse().unwrap())
    );
    // China: 17:00-18:00 Monday, then 09:00-10:00 Tuesday Shanghai = Tuesday 02:00 UTC.
    assert_eq!(
        at(TimerKind::ClaimDue),
        Some("2026-01-06T02:00:00Z".parse().unwrap())
    );
}

#[test]
fn a_calendar_a_duration_names_must_be_registered() {
    let mut builder = Engine::builder();
    builder.calendar("china", BusinessCalendar::from_file(CHINA).unwrap());
    let engine = builder.build();
    let err = engine.deploy(def(TWO_CALENDARS)).unwrap_err();
    assert_eq!(err.key.to_string(), "two@1");
    assert_eq!(
        err.problems,
        [DeployProblem::UnknownCalendar {
            name: "berlin".into(),
            node: Some(NodeRef {
                id: def(TWO_CALENDARS).node_id("work").unwrap(),
                name: "work".into(),
            }),
        }],
        "{err}"
    );
    assert!(
        engine.definition("two", None).is_none(),
        "nothing was deployed"
    );
}

/// A task with a business-time deadline on the Berlin desk calendar (which ends with 2026), and
/// the same process with a business-time SLA instead.
const LATE: &str = r#"
id: late
version: 1
name: Late
calendar: berlin
roles: { r: { name: R }, a: { name: A } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [r], accountable: a }
    due: 4h business
    next: done
  done: { kind: end }
"#;

const LATE_SLA: &str = r#"
id: late_sla
version: 1
name: Late SLA
calendar: berlin
roles: { r: { name: R }, a: { name: A } }
sla: { due: 8h business, accountable: a }
nodes:
  start: { kind: start, next: work }
  work: { kind: user_task, name: Work, raci: { responsible: [r], accountable: a }, next: done }
  done: { kind: end }
"#;

fn berlin_engine(start: DateTime<Utc>, defs: &[&str]) -> (Arc<ManualClock>, Engine) {
    let mut builder = Engine::builder();
    builder.calendar("berlin", BusinessCalendar::from_yaml(BERLIN_DESK).unwrap());
    engine_on(&mut builder, start, defs)
}

/// A task deadline that cannot be computed fails the token at the task's node before the task
/// opens; `retry` opens it once the deadline can be computed.
#[test]
fn a_task_deadline_that_cannot_be_computed_fails_the_node_and_retry_opens_the_task() {
    // Thursday 31 December 2026, 16:00 in Berlin: 4h of business time run into 2027, which the
    // calendar does not cover.
    let (clock, engine) = berlin_engine(t("2026-12-31T15:00:00Z"), &[LATE]);
    let err = engine.start("late", Vars::new()).unwrap_err();
    let ids = engine.instances();
    assert_eq!(ids.len(), 1, "the instance exists, with an incident: {err}");
    let id = ids[0];
    let work = node_ref(&engine, id, "work");
    match &err {
        ExecError::Deadline {
            instance,
            node,
            message,
        } => {
            assert_eq!((*instance, node), (id, &work));
            assert!(message.contains("2027"), "{message}");
        }
        other => panic!("expected ExecError::Deadline, got {other:?}"),
    }
    let inst = engine.instance(id).unwrap();
    assert!(inst.tasks().is_empty(), "the task did not open");
    assert_eq!(
        inst.tokens()
            .iter()
            .map(|t| (t.node, t.state))
            .collect::<Vec<_>>(),
        [(work.id, TokenState::Failed)]
    );
    assert_eq!(inst.incidents().len(), 1);
    assert_eq!(inst.incidents()[0].node, Some(work.id));
    assert!(
        inst.incidents()[0]
            .message
            .starts_with("cannot compute a deadline: "),
        "{}",
        inst.incidents()[0].message
    );

    // Still not computable: the retry fails the same way.
    assert!(matches!(
        engine.retry(id),
        Err(ExecError::Deadline { ref node, .. }) if *node == work
    ));
    assert!(engine.tasks(id).unwrap().is_empty());

    // The calendar gains 2027 (a desk that works on New Year's Day): 16:00-17:00 on the 31st,
    // then 09:00-12:00 on Friday 1 January.
    let covered = BERLIN_DESK.replace("  2026: {}", "  2026: {}\n  2027: {}");
    engine
        .update_calendar("berlin", BusinessCalendar::from_yaml(&covered).unwrap())
        .unwrap();
    engine.retry(id).unwrap();
    let tasks = engine.tasks(id).unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(&*tasks[0].node_id, "work");
    assert_eq!(tasks[0].due, Some(t("2027-01-01T11:00:00Z")));
    // A clock set back does not make the task older than its instance's last record.
    clock.set(t("2026-12-28T09:00:00Z"));
    engine
        .complete(tasks[0].id, &Actor::new("ann", ["r"]), Vars::new())
        .unwrap();
    let inst = engine.instance(id).unwrap();
    let opened = inst.tasks()[0].created_at();
    match inst.tasks()[0].state() {
        TaskState::Completed { at, .. } => assert!(*at >= opened, "{at} before {opened}"),
        other => panic!("{other:?}"),
    }
    assert!(inst.audit().windows(2).all(|w| w[0].at <= w[1].at));
    let inst = engine.instance(id).unwrap();
    let resolved: Vec<bool> = inst.incidents().iter().map(|i| i.resolved).collect();
    assert_eq!(resolved, [true, true]);
}

/// An SLA that cannot be computed refuses the start: no instance is left.
#[test]
fn an_sla_that_cannot_be_computed_refuses_the_start() {
    let (clock, engine) = berlin_engine(t("2026-12-31T15:00:00Z"), &[LATE_SLA]);
    let err = engine.start("late_sla", Vars::new()).unwrap_err();
    assert!(
        matches!(&err, ExecError::Deadline { node, .. } if &*node.name == "start"),
        "{err:?}"
    );
    assert!(engine.instances().is_empty(), "{:?}", engine.instances());
    assert_eq!(engine.next_due(), None);

    // Earlier in the year the same start goes through.
    clock.set(t("2026-12-28T09:00:00Z"));
    let id = engine.start("late_sla", Vars::new()).unwrap();
    assert_eq!(engine.instances(), [id]);
}

/// Issue 11: an instance started on 2026-12-31 at 16:00 in Beijing gets a deadline in 2027
/// counted on the statutory holidays, marked provisional in the SLA query; once the calendar
/// gains the year's notice, `update_calendar` recomputes it, commits it and records it.
#[test]
fn a_deadline_past_the_notices_is_provisional_and_moves_when_the_calendar_gains_the_year() {
    let def = r#"
id: year_end
version: 1
name: Year end
calendar: china
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [clerk], accountable: lead }
    due: 8h business
    next: end
  end: { kind: end }
"#;
    let beijing = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
    let clock = Arc::new(ManualClock::new(beijing("2026-12-31T16:00:00+08:00")));
    let store = procflow::MemoryStore::new();
    let engine = Engine::builder()
        .clock(Arc::clone(&clock))
        .calendar("china", BusinessCalendar::china())
        .open(store.clone())
        .unwrap();
    engine.deploy(ProcessDef::from_yaml(def).unwrap()).unwrap();
    let id = engine.start("year_end", Vars::new()).unwrap();
    let task = engine.tasks(id).unwrap()[0].id;
    // Two business hours on the 31st, New Year's Day off, the weekend, six hours on Monday.
    let sla = engine.sla_of_task(task).unwrap().expect("a deadline");
    assert_eq!(sla.due, beijing("2027-01-04T16:00:00+08:00"));
    assert!(sla.provisional);

    // The notice for 2027 arrives (here a made-up one that also gives 4 January off).
    let text = std::fs::read_to_string("process-defs/calendars/china.yaml").unwrap()
        + "  2027:\n    source: a test notice\n    holidays:\n      \
           - { from: 2027-01-01, to: 2027-01-04, name: New Year, name_zh: 元旦 }\n";
    let updated = BusinessCalendar::from_yaml(&text).unwrap();
    assert!(!updated.is_provisional(2027));
    assert_eq!(engine.update_calendar("china", updated).unwrap(), 1);
    let sla = engine.sla_of_task(task).unwrap().expect("a deadline");
    assert_eq!(sla.due, beijing("2027-01-05T16:00:00+08:00"));
    assert!(!sla.provisional);
    let inst = engine.instance(id).unwrap();
    assert!(
        inst.audit().iter().any(|r| matches!(
            r.what,
            Entry::Retimed {
                provisional: false,
                ..
            }
        )),
        "{:?}",
        inst.audit()
    );
    // The new instant is the one that fires, and it was committed.
    assert!(engine.tick(beijing("2027-01-04T16:00:00+08:00")).is_empty());
    let fired = engine.tick(beijing("2027-01-05T16:00:00+08:00"));
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].kind, TimerKind::Due);
    drop(engine);
    let reopened = Engine::builder()
        .calendar("china", BusinessCalendar::china())
        .open(store)
        .unwrap();
    let timers = reopened.instance(id).unwrap().timers().to_vec();
    assert_eq!(timers[0].at, beijing("2027-01-05T16:00:00+08:00"));
    assert!(matches!(
        reopened.update_calendar("berlin", BusinessCalendar::china()),
        Err(ExecError::UnknownCalendar(_))
    ));
}
