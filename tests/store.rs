//! The engine on a store, through the public API: every kind of state survives closing and
//! opening, overdue timers fire once each after a restart, definition versions stay apart, two
//! engines sharing a store conflict instead of overwriting, and a commit the store refuses
//! changes nothing. Each test runs on every store that ships, and on one written outside the
//! crate with the public API alone ([`stores`]).

#[path = "common/counted.rs"]
mod counted;
mod foreign;
#[cfg(feature = "postgres")]
#[path = "common/pg.rs"]
mod pg;

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use counted::Counted;
use procflow::{
    Actor, Clock, DeployError, DeployProblem, Engine, EngineBuilder, ExecError, HandlerError,
    InstanceId, ManualClock, MemoryStore, Offer, OpenError, ProcessDef, SqliteStore, Status, Store,
    TaskId, TaskState, TokenState, Vars, handler_fn,
};
use serde_json::json;

/// Two user tasks in parallel (one with deadlines), a service task that fails while
/// `fail` is set, and a timer node.
const CASE: &str = r#"
id: case
version: 1
name: Case
roles: { agent: { name: Agent }, lead: { name: Lead }, audit: { name: Audit } }
variables:
  fail: { type: boolean, default: false }
  note: { type: string }
nodes:
  start: { kind: start, next: fork }
  fork: { kind: parallel, next: [triage, check] }
  triage:
    kind: user_task
    name: Triage
    raci: { responsible: [agent], accountable: lead, informed: [audit] }
    due: 2h
    remind: [{ before: 1h }]
    next: join
  check:
    kind: user_task
    name: Check
    raci: { responsible: [agent], accountable: lead }
    next: call
  call: { kind: service_task, name: Call, handler: flaky, next: pause }
  pause: { kind: timer, wait: 3h, next: join }
  join: { kind: parallel, next: done }
  done: { kind: end }
"#;

fn t0() -> DateTime<Utc> {
    "2026-11-23T09:00:00Z".parse().unwrap()
}

fn agent() -> Actor {
    Actor::new("ann", ["agent"])
}

/// Every store under test, each a fresh one, as a function that opens an engine on it. The
/// SQLite store is opened through a new handle each time, as a restarted process would.
/// Opens a new handle on one store.
type Reopen = Box<dyn Fn() -> Arc<dyn Store>>;

fn stores() -> Vec<(&'static str, Reopen)> {
    let memory = MemoryStore::new();
    let path = temp_db();
    // The same file opened by engines that say they share it (as processes do).
    let shared = temp_db();
    // A store written outside the crate with the public API alone (tests/foreign).
    let foreign = Arc::new(foreign::TextStore::default());
    #[allow(unused_mut)]
    let mut all: Vec<(&'static str, Reopen)> = vec![
        (
            "foreign",
            Box::new(move || Arc::clone(&foreign) as Arc<dyn Store>),
        ),
        (
            "memory",
            Box::new(move || Arc::new(memory.clone()) as Arc<dyn Store>),
        ),
        (
            "sqlite",
            Box::new(move || {
                Arc::new(SqliteStore::create(&path).expect("sqlite store")) as Arc<dyn Store>
            }),
        ),
        (
            "sqlite-shared",
            Box::new(move || {
                Arc::new(
                    SqliteStore::options()
                        .shared(true)
                        .create(&shared)
                        .expect("shared sqlite store"),
                ) as Arc<dyn Store>
            }),
        ),
    ];
    // PostgreSQL when a server is found (tests/common/pg.rs): a new schema, a new connection
    // (pool) each time, as a restarted replica would.
    #[cfg(feature = "postgres")]
    if let Some(server) = pg::server() {
        let url = server.fresh();
        all.push((
            "postgres",
            Box::new(move || {
                Arc::new(procflow::PostgresStore::connect(&url).expect("postgres store"))
                    as Arc<dyn Store>
            }),
        ));
    }
    all
}

fn temp_db() -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("procflow-store-{}-{n}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

/// Opens an engine on `store` with the `flaky` handler (failing while `fail` is set) and
/// `clock`.
fn open(store: Arc<dyn Store>, clock: &Arc<ManualClock>) -> Engine {
    builder(clock).open(store).expect("open")
}

/// [`open`], with the definition `yaml` deployed.
fn deployed(store: Arc<dyn Store>, clock: &Arc<ManualClock>, yaml: &str) -> Engine {
    let engine = open(store, clock);
    engine.deploy(ProcessDef::from_yaml(yaml).unwrap()).unwrap();
    engine
}

/// [`builder`] with a bounded cache of 64 instances: one per shard.
fn cached(clock: &Arc<ManualClock>) -> EngineBuilder {
    let mut config = procflow::Config::default();
    config.cache = Some(64);
    let mut b = builder(clock);
    b.config(config);
    b
}

fn builder(clock: &Arc<ManualClock>) -> EngineBuilder {
    let mut b = Engine::builder();
    b.clock(Arc::clone(clock));
    b.handler(
        "flaky",
        handler_fn(|call| {
            if call.vars.get("fail") == Some(&json!(true)) {
                Err(HandlerError::new("the network is down"))
            } else {
                Ok(Vars::new())
            }
        }),
    );
    b
}

fn vars(pairs: &[(&str, serde_json::Value)]) -> Vars {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn task(engine: &Engine, id: InstanceId, node: &str) -> TaskId {
    engine
        .tasks(id)
        .unwrap()
        .into_iter()
        .find(|t| &*t.node_id == node)
        .unwrap_or_else(|| panic!("no open task at {node}"))
        .id
}

#[test]
fn every_kind_of_state_survives_close_and_open() {
    for (name, store) in stores() {
        let clock = Arc::new(ManualClock::new(t0()));
        let engine = open(store(), &clock);
        engine.deploy(ProcessDef::from_yaml(CASE).unwrap()).unwrap();
        // One instance with a claim, a comment and a failed service task (an incident).
        let a = engine
            .start(
                "case",
                vars(&[("fail", json!(true)), ("note", json!("first"))]),
            )
            .unwrap();
        let triage = task(&engine, a, "triage");
        engine.claim(triage, &agent()).unwrap();
        engine.comment(triage, &agent(), "looking").unwrap();
        clock.advance(Duration::minutes(10));
        let check = task(&engine, a, "check");
        let err = engine.complete(check, &agent(), Vars::new()).unwrap_err();
        assert!(matches!(err, ExecError::Incident { .. }), "{name}: {err}");
        // Another that waits at the timer node, and a denied attempt in its audit trail.
        let b = engine.start("case", Vars::new()).unwrap();
        let denied = engine.complete(
            task(&engine, b, "check"),
            &Actor::new("eve", ["audit"]),
            Vars::new(),
        );
        assert!(matches!(denied, Err(ExecError::Denied { .. })), "{name}");
        engine
            .complete(task(&engine, b, "check"), &agent(), Vars::new())
            .unwrap();
        let before: Vec<_> = [a, b]
            .iter()
            .map(|id| engine.instance(*id).unwrap())
            .collect();
        let work = engine.work_list(&agent());
        let next_due = engine.next_due();
        drop(engine);

        let engine = open(store(), &clock);
        let after: Vec<_> = [a, b]
            .iter()
            .map(|id| engine.instance(*id).unwrap())
            .collect();
        assert_eq!(before, after, "{name}: instances differ after reopening");
        assert_eq!(work, engine.work_list(&agent()), "{name}");
        assert_eq!(next_due, engine.next_due(), "{name}");
        assert_eq!(after[0].incidents().len(), 1, "{name}");
        assert_eq!(after[0].tasks()[0].claimed_by(), Some("ann"), "{name}");
        assert_eq!(after[0].tasks()[0].comments().len(), 1, "{name}");
        assert!(
            after[1]
                .tokens()
                .iter()
                .any(|t| t.state == TokenState::Waiting),
            "{name}"
        );
        // The resumed engine goes on where the first stopped: a retry, then both tasks.
        engine.retry(a).unwrap_err(); // still failing: `fail` is set
        assert_eq!(engine.instance(a).unwrap().incidents().len(), 2, "{name}");
        engine.complete(triage, &agent(), Vars::new()).unwrap();
        drop(engine);
        let engine = open(store(), &clock);
        let inst = engine.instance(a).unwrap();
        assert!(matches!(
            inst.tasks()[0].state(),
            TaskState::Completed { .. }
        ));
        assert_eq!(inst.status(), Status::Running, "{name}");
    }
}

#[test]
fn overdue_timers_fire_once_each_in_order_after_a_restart() {
    for (name, store) in stores() {
        let clock = Arc::new(ManualClock::new(t0()));
        let engine = open(store(), &clock);
        engine.deploy(ProcessDef::from_yaml(CASE).unwrap()).unwrap();
        let first = engine.start("case", Vars::new()).unwrap();
        clock.advance(Duration::minutes(30));
        let second = engine.start("case", Vars::new()).unwrap();
        drop(engine);

        // Down for three hours: both reminders (at 1h and 1h30) and both deadlines (2h, 2h30)
        // fell due meanwhile.
        clock.set(t0() + Duration::hours(3));
        let engine = open(store(), &clock);
        let fired = engine.tick(clock.now());
        let seen: Vec<(InstanceId, String, DateTime<Utc>)> = fired
            .iter()
            .map(|f| (f.instance, f.name(), f.due))
            .collect();
        let h = |m: i64| t0() + Duration::minutes(m);
        assert_eq!(
            seen,
            vec![
                (first, "reminder".to_owned(), h(60)),
                (second, "reminder".to_owned(), h(90)),
                (first, "breach".to_owned(), h(120)),
                (second, "breach".to_owned(), h(150)),
            ],
            "{name}"
        );
        assert!(engine.tick(clock.now()).is_empty(), "{name}: fired twice");
        drop(engine);
        // Fired is stored: a third engine fires nothing again.
        let engine = open(store(), &clock);
        assert!(
            engine.tick(clock.now()).is_empty(),
            "{name}: fired again after reopening"
        );
    }
}

#[test]
fn versions_stay_apart_and_keep_their_text() {
    for (name, store) in stores() {
        let clock = Arc::new(ManualClock::new(t0()));
        let engine = open(store(), &clock);
        engine.deploy(ProcessDef::from_yaml(CASE).unwrap()).unwrap();
        let old = engine.start("case", Vars::new()).unwrap();
        let v2 = CASE
            .replace("version: 1", "version: 2")
            .replace("name: Triage", "name: Triage (v2)");
        engine.deploy(ProcessDef::from_yaml(&v2).unwrap()).unwrap();
        // Deploying the same text again is no change; another text under a deployed version is.
        engine.deploy(ProcessDef::from_yaml(&v2).unwrap()).unwrap();
        let err = engine
            .deploy(ProcessDef::from_yaml(&v2.replace("(v2)", "(v2b)")).unwrap())
            .unwrap_err();
        assert_eq!(err.key.to_string(), "case@2", "{name}");
        assert_eq!(
            err.problems,
            [DeployProblem::AlreadyDeployed],
            "{name}: {err}"
        );
        let new = engine.start("case", Vars::new()).unwrap();
        drop(engine);

        let engine = open(store(), &clock);
        assert_eq!(
            engine.definition_of(old).unwrap().key().version,
            1,
            "{name}"
        );
        assert_eq!(engine.definition_of(old).unwrap().text(), CASE, "{name}");
        assert_eq!(
            engine.definition_of(new).unwrap().key().version,
            2,
            "{name}"
        );
        let newest = engine.start("case", Vars::new()).unwrap();
        assert_eq!(engine.definition_of(newest).unwrap().key().version, 2);
        let named = engine.start_version("case", Some(1), Vars::new()).unwrap();
        assert_eq!(engine.definition_of(named).unwrap().key().version, 1);
        // Ids are not handed out twice across engines.
        assert!(![old, new].contains(&newest) && newest != named, "{name}");
    }
}

#[test]
fn two_engines_sharing_a_store_conflict_instead_of_overwriting() {
    for (name, store) in stores() {
        let clock = Arc::new(ManualClock::new(t0()));
        let one = open(store(), &clock);
        one.deploy(ProcessDef::from_yaml(CASE).unwrap()).unwrap();
        let two = open(store(), &clock);
        let id = one.start("case", Vars::new()).unwrap();
        // The second engine reads the instance the first started on demand.
        let check = task(&two, id, "check");
        let triage = task(&two, id, "triage");
        one.complete(check, &agent(), Vars::new()).unwrap();
        // The second engine's copy is stale: its completion of the same task conflicts.
        let err = two.complete(check, &agent(), Vars::new()).unwrap_err();
        assert_eq!(err, ExecError::Conflict(id), "{name}");
        // It has read the instance again: the task is closed now, and other work goes on.
        let err = two.complete(check, &agent(), Vars::new()).unwrap_err();
        assert!(matches!(err, ExecError::TaskClosed { .. }), "{name}: {err}");
        two.complete(triage, &agent(), Vars::new()).unwrap();
        // And now the first engine's copy is the stale one.
        let err = one.claim(triage, &agent()).unwrap_err();
        assert_eq!(err, ExecError::Conflict(id), "{name}");
        let stored = open(store(), &clock).instance(id).unwrap();
        let completions = stored
            .tasks()
            .iter()
            .filter(|t| matches!(t.state(), TaskState::Completed { .. }))
            .count();
        assert_eq!(completions, 2, "{name}");
        // Each engine's ids are its own.
        let a = one.start("case", Vars::new()).unwrap();
        let b = two.start("case", Vars::new()).unwrap();
        assert_ne!(a, b, "{name}");
    }
}

#[test]
fn timers_fire_once_whichever_engine_ticks() {
    for (name, store) in stores() {
        let clock = Arc::new(ManualClock::new(t0()));
        let one = open(store(), &clock);
        one.deploy(ProcessDef::from_yaml(CASE).unwrap()).unwrap();
        let two = open(store(), &clock);
        let id = one.start("case", Vars::new()).unwrap();
        // The second engine learns of the instance only from the store's due list.
        clock.advance(Duration::minutes(61));
        let by_two = two.tick(clock.now());
        let by_one = one.tick(clock.now());
        assert_eq!(
            by_two.len() + by_one.len(),
            1,
            "{name}: {by_one:?} {by_two:?}"
        );
        assert_eq!(
            by_two.len(),
            1,
            "{name}: the engine that ticked first fires it"
        );
        assert_eq!(by_two[0].instance, id);
        clock.advance(Duration::hours(1));
        let both = one.tick(clock.now()).len() + two.tick(clock.now()).len();
        assert_eq!(both, 1, "{name}: the breach fires once");
    }
}

#[test]
fn a_refused_commit_changes_nothing() {
    let store = MemoryStore::new();
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = open(Arc::new(store.clone()), &clock);
    engine.deploy(ProcessDef::from_yaml(CASE).unwrap()).unwrap();
    let id = engine.start("case", Vars::new()).unwrap();
    let check = task(&engine, id, "check");

    // A completion.
    let before = engine.instance(id).unwrap();
    store.refuse_commits(1);
    let err = engine.complete(check, &agent(), Vars::new()).unwrap_err();
    assert!(matches!(err, ExecError::Store(_)), "{err}");
    assert_eq!(
        engine.instance(id).unwrap(),
        before,
        "memory holds what the store refused"
    );
    let reopened = open(Arc::new(store.clone()), &clock);
    assert_eq!(reopened.instance(id).unwrap(), before);
    drop(reopened);

    // A start leaves no instance behind.
    store.refuse_commits(1);
    let ids = engine.instances();
    assert!(matches!(
        engine.start("case", Vars::new()),
        Err(ExecError::Store(_))
    ));
    assert_eq!(engine.instances(), ids);

    // A tick fires nothing, and fires it at the next tick instead.
    clock.advance(Duration::minutes(61));
    store.refuse_commits(1);
    assert!(engine.tick(clock.now()).is_empty());
    assert_eq!(engine.instance(id).unwrap(), before);
    let fired = engine.tick(clock.now());
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].name(), "reminder");

    // The call goes through once the store takes it.
    engine.complete(check, &agent(), Vars::new()).unwrap();
    let reopened = open(Arc::new(store), &clock);
    assert!(matches!(
        reopened.instance(id).unwrap().tasks()[1].state(),
        TaskState::Completed { .. }
    ));
}

/// The one problem of `CASE` on a host without the `flaky` handler.
fn assert_flaky_missing(error: &DeployError) {
    assert_eq!(error.key.to_string(), "case@1");
    assert_eq!(error.problems.len(), 1, "{error}");
    assert!(
        matches!(&error.problems[0], DeployProblem::UnknownHandler { node, handler, .. }
            if &*node.name == "call" && handler == "flaky"),
        "{error}"
    );
}

/// A stored definition whose handler this host does not register does not keep the engine
/// from opening while no running instance needs it: it is listed as unavailable, and starting
/// it is refused.
#[test]
fn a_stored_definition_that_no_longer_deploys_is_listed_as_unavailable() {
    let store = MemoryStore::new();
    let clock = Arc::new(ManualClock::new(t0()));
    open(Arc::new(store.clone()), &clock)
        .deploy(ProcessDef::from_yaml(CASE).unwrap())
        .unwrap();
    // This host forgot the `flaky` handler.
    let engine = Engine::builder()
        .clock(Arc::clone(&clock))
        .open(store.clone())
        .expect("no running instance needs the definition");
    let unavailable = engine.unavailable();
    assert_eq!(unavailable.len(), 1, "{unavailable:?}");
    assert_flaky_missing(&unavailable[0]);
    match engine.start("case", Vars::new()) {
        Err(ExecError::Unavailable(error)) => {
            assert_eq!(error, unavailable[0]);
        }
        other => panic!("expected ExecError::Unavailable, got {other:?}"),
    }
    assert!(engine.instances().is_empty());
    // A host with the handler still runs it.
    let engine = open(Arc::new(store), &clock);
    assert!(engine.unavailable().is_empty());
    engine.start("case", Vars::new()).unwrap();
}

/// A running instance whose definition no longer deploys keeps the engine from opening, and
/// the error names the instance.
#[test]
fn a_running_instance_whose_definition_no_longer_deploys_is_named() {
    let store = MemoryStore::new();
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = open(Arc::new(store.clone()), &clock);
    engine.deploy(ProcessDef::from_yaml(CASE).unwrap()).unwrap();
    let id = engine.start("case", Vars::new()).unwrap();
    drop(engine);
    let err = Engine::builder().open(store).unwrap_err();
    let OpenError::Unavailable { instance, error } = &err else {
        panic!("{err}");
    };
    assert_eq!(*instance, id);
    assert_flaky_missing(error);
}

/// With a store, hooks hear a call's events after its commit: a call the store refused is
/// heard only as `refused`.
#[test]
fn hooks_hear_only_stored_calls() {
    let store = MemoryStore::new();
    let clock = Arc::new(ManualClock::new(t0()));
    let heard = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut b = builder(&clock);
    let sink = Arc::clone(&heard);
    b.hook(procflow::hook_fn(move |ev: &procflow::Event| {
        let name = serde_json::to_value(ev).unwrap()["event"]
            .as_str()
            .unwrap()
            .to_owned();
        sink.lock().unwrap().push(name);
    }));
    let engine = b.open(store.clone()).unwrap();
    engine.deploy(ProcessDef::from_yaml(CASE).unwrap()).unwrap();
    let take = || std::mem::take(&mut *heard.lock().unwrap());
    let id = engine.start("case", Vars::new()).unwrap();
    let events = take();
    assert_eq!(events.first().map(String::as_str), Some("instance_started"));
    assert!(events.contains(&"task_created".to_owned()), "{events:?}");
    assert!(!events.contains(&"refused".to_owned()), "{events:?}");

    let check = task(&engine, id, "check");
    store.refuse_commits(1);
    engine.complete(check, &agent(), Vars::new()).unwrap_err();
    assert_eq!(take(), ["refused"], "nothing of the refused call is heard");

    // A refused start: no instance, and only `refused` is heard.
    store.refuse_commits(1);
    let ids = engine.instances();
    engine.start("case", Vars::new()).unwrap_err();
    assert_eq!(take(), ["refused"]);
    assert_eq!(engine.instances(), ids);

    engine.complete(check, &agent(), Vars::new()).unwrap();
    let events = take();
    assert!(events.contains(&"task_completed".to_owned()), "{events:?}");
    assert!(!events.contains(&"refused".to_owned()), "{events:?}");
}

/// A definition with business keys: a customer given at the start, an order number set later.
const KEYED: &str = r#"
id: keyed
version: 1
name: Keyed
roles: { agent: { name: Agent } }
keys: [customer_id, order_id]
variables:
  customer_id: { type: string }
  order_id: { type: integer }
nodes:
  start: { kind: start, next: take }
  take: { kind: user_task, name: Take, raci: { responsible: [agent], accountable: agent }, next: ship }
  ship: { kind: user_task, name: Ship, raci: { responsible: [agent], accountable: agent }, next: end }
  end: { kind: end }
"#;

#[test]
fn business_keys_are_indexed_and_survive_reopening() {
    for (name, store) in stores() {
        let clock = Arc::new(ManualClock::new(t0()));
        let engine = deployed(store(), &clock, KEYED);
        let a = engine
            .start("keyed", vars(&[("customer_id", json!("C-1"))]))
            .unwrap();
        let b = engine
            .start("keyed", vars(&[("customer_id", json!("C-1"))]))
            .unwrap();
        engine
            .complete(
                task(&engine, a, "take"),
                &agent(),
                vars(&[("order_id", json!(7))]),
            )
            .unwrap();
        engine
            .complete(
                task(&engine, a, "ship"),
                &agent(),
                vars(&[("order_id", json!(8))]),
            )
            .unwrap();
        let s = store();
        assert_eq!(s.by_key("customer_id", "C-1").unwrap(), [a, b], "{name}");
        assert_eq!(s.by_key("order_id", "8").unwrap(), [a], "{name}");
        assert!(
            s.by_key("order_id", "7").unwrap().is_empty(),
            "{name}: moved"
        );
        assert!(s.by_key("customer_id", "C-2").unwrap().is_empty(), "{name}");
        // The shipped stores leave the finished instance out; the foreign one keeps the
        // default (`by_key`).
        let running = s.running_by_key("customer_id", "C-1").unwrap();
        if name == "foreign" {
            assert_eq!(running, [a, b]);
        } else {
            assert_eq!(running, [b], "{name}");
        }
        drop(engine);
        let engine = open(store(), &clock);
        let found = engine.find_by_key("customer_id", "C-1").unwrap();
        let got: Vec<(InstanceId, Status)> = found.iter().map(|k| (k.id, k.status)).collect();
        let ids =
            |found: Vec<procflow::KeyedInstance>| found.iter().map(|k| k.id).collect::<Vec<_>>();
        assert_eq!(
            got,
            [(a, Status::Completed), (b, Status::Running)],
            "{name}"
        );
        assert_eq!(found[1].open_tasks, ["take"], "{name}");
        // The reopened engine's commits keep the store's index.
        engine
            .complete(
                task(&engine, b, "take"),
                &agent(),
                vars(&[("order_id", json!(9))]),
            )
            .unwrap();
        assert_eq!(store().by_key("order_id", "9").unwrap(), [b], "{name}");
        assert_eq!(
            ids(engine.find_by_key("order_id", 9).unwrap()),
            [b],
            "{name}"
        );
    }
}

/// A message kept engine-wide (`keep_for`) and then recorded unmatched is in the store: an
/// engine opened later has it (stores that do not override `Store::park` and the rest, as the
/// foreign one, keep nothing).
#[test]
fn kept_and_unmatched_messages_survive_close_and_open() {
    const KEPT: &str = include_str!("fixtures/kept-reply.yaml");
    for (name, store) in stores() {
        let clock = Arc::new(ManualClock::new(t0()));
        let engine = open(store(), &clock);
        engine.deploy(ProcessDef::from_yaml(KEPT).unwrap()).unwrap();
        for n in [1, 2] {
            let c = engine
                .correlate(
                    "reply",
                    vars(&[("order_id", json!(n)), ("answer", json!("ok"))]),
                )
                .unwrap();
            assert!(c.kept, "{name}");
        }
        drop(engine);
        let engine = open(store(), &clock);
        if name == "foreign" {
            assert!(engine.kept_messages().is_empty());
            continue;
        }
        assert_eq!(engine.kept_messages().len(), 2, "{name}");
        // One is taken by an instance that waits for it; the other expires.
        let id = engine
            .start("order", vars(&[("order_id", json!(1))]))
            .unwrap();
        assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
        clock.advance(Duration::hours(2));
        engine.tick(clock.now());
        drop(engine);
        let engine = open(store(), &clock);
        assert!(engine.kept_messages().is_empty(), "{name}");
        let unmatched = engine.unmatched().unwrap();
        assert_eq!(unmatched.len(), 1, "{name}");
        assert_eq!(unmatched[0].vars["order_id"], json!(2), "{name}");
        assert_eq!(unmatched[0].message, "reply", "{name}");
    }
}

#[test]
fn a_replica_lists_and_completes_what_another_started() {
    for (name, store) in stores() {
        let clock = Arc::new(ManualClock::new(t0()));
        let first = store();
        let shared = first.is_shared();
        let a = open(first, &clock);
        a.deploy(ProcessDef::from_yaml(CASE).unwrap()).unwrap();
        // Replica B opened before A started anything: it has read nothing of it.
        let b = open(store(), &clock);
        let id = a.start("case", Vars::new()).unwrap();
        assert!(b.instances().contains(&id), "{name}: B lists A's instance");
        let listed: Vec<_> = b
            .work_list(&agent())
            .into_iter()
            .filter(|t| t.id.instance() == id)
            .collect();
        let mut nodes: Vec<&str> = listed.iter().map(|t| &*t.node_id).collect();
        nodes.sort_unstable();
        assert_eq!(nodes, ["check", "triage"], "{name}: B's work list");
        // The deadline is read from the stored state too.
        let triage = listed.iter().find(|t| &*t.node_id == "triage").unwrap();
        assert_eq!(triage.due, Some(t0() + Duration::hours(2)), "{name}");
        let check = listed.iter().find(|t| &*t.node_id == "check").unwrap().id;
        b.complete(check, &agent(), Vars::new()).unwrap();
        let open_on = |e: &Engine| -> Vec<String> {
            e.tasks(id)
                .unwrap()
                .into_iter()
                .map(|t| t.node_id.to_string())
                .collect()
        };
        // On a store that says replicas share it (PostgreSQL), A's answer about the instance
        // reads the store: B's completion shows at once, before any work list. (Other stores
        // do not say: A answers from its copy until a work list or a conflict reads it.)
        if shared {
            assert_eq!(
                open_on(&a),
                ["triage"],
                "{name}: A's answer after B's completion"
            );
            assert_eq!(
                a.instance(id).unwrap().audit().len(),
                b.instance(id).unwrap().audit().len(),
                "{name}: A's copy is B's"
            );
        }
        // A holds an older copy: its list is read from the store, without the completed task.
        let on_a: Vec<_> = a
            .work_list(&agent())
            .into_iter()
            .filter(|t| t.id.instance() == id)
            .map(|t| t.node_id.to_string())
            .collect();
        assert_eq!(
            on_a,
            ["triage"],
            "{name}: A's work list after B's completion"
        );
        // The list's read of the stored state replaced A's older copy: A answers about the
        // instance as its list showed it, and completes the other task without a conflict.
        assert_eq!(
            open_on(&a),
            ["triage"],
            "{name}: A's copy after its work list"
        );
        a.complete(triage.id, &agent(), Vars::new()).unwrap();
        assert!(b.work_list(&agent()).iter().all(|t| t.id.instance() != id));
        clock.advance(Duration::hours(3));
        a.tick(clock.now());
        b.tick(clock.now());
        let done = open(store(), &clock).instance(id).unwrap();
        assert_eq!(done.status(), Status::Completed, "{name}");
    }
}

/// Waits for a message correlated by order number.
const RECEIVER: &str = r#"
id: receiver
version: 1
name: Receiver
keys: [order_id]
variables: { order_id: { type: integer }, answer: { type: string } }
messages:
  reply: { flow: 55, payload: [order_id, answer], correlate: { order_id: order_id } }
nodes:
  start: { kind: start, next: wait }
  wait: { kind: catch, message: reply, next: end }
  end: { kind: end }
"#;

#[test]
fn a_message_reaches_a_receiver_another_engine_started() {
    for (name, store) in stores() {
        let clock = Arc::new(ManualClock::new(t0()));
        let a = open(store(), &clock);
        a.deploy(ProcessDef::from_yaml(RECEIVER).unwrap()).unwrap();
        let b = open(store(), &clock);
        let id = b
            .start("receiver", vars(&[("order_id", json!(7))]))
            .unwrap();
        // A holds no receiver: it asks the store, which has B's waiting instance (on a store
        // that does not say replicas share it too: two processes on one SQLite file). Before,
        // the message was recorded unmatched there.
        let c = a
            .correlate(
                "reply",
                vars(&[("order_id", json!(7)), ("answer", json!("paid"))]),
            )
            .unwrap();
        assert_eq!(c.received, [id], "{name}");
        assert!(!c.unmatched(), "{name}");
        let done = open(store(), &clock).instance(id).unwrap();
        assert_eq!(done.status(), Status::Completed, "{name}");
        assert_eq!(done.vars().get("answer"), Some(&json!("paid")), "{name}");
        // A message for an order nobody waits for is still recorded unmatched.
        let c = a
            .correlate(
                "reply",
                vars(&[("order_id", json!(8)), ("answer", json!("paid"))]),
            )
            .unwrap();
        assert!(c.received.is_empty() && c.unmatched(), "{name}");
    }
}

#[test]
fn a_bounded_cache_reads_back_what_it_let_go() {
    for (name, store) in stores() {
        let clock = Arc::new(ManualClock::new(t0()));
        let engine = cached(&clock).open(store()).unwrap();
        engine.deploy(ProcessDef::from_yaml(CASE).unwrap()).unwrap();
        let ids: Vec<InstanceId> = (0..300)
            .map(|_| engine.start("case", Vars::new()).unwrap())
            .collect();
        assert_eq!(engine.instances(), ids, "{name}");
        assert_eq!(engine.work_list(&agent()).len(), 600, "{name}");
        // A replica opening with a cache (which loads no instance) still lists everything.
        let other = cached(&clock).open(store()).unwrap();
        // It holds nothing, but the store knows the first reminder (the foreign store does
        // not say: `Store::next_wake` keeps its default).
        let first = (name != "foreign").then(|| t0() + Duration::hours(1));
        assert_eq!(other.next_due(), first, "{name}");
        assert_eq!(other.instances(), ids, "{name}");
        for t in other.work_list(&agent()) {
            other.complete(t.id, &agent(), Vars::new()).unwrap();
        }
        assert!(engine.work_list(&agent()).is_empty(), "{name}");
        // The timer nodes fire once each, read from the store when due.
        clock.advance(Duration::hours(3));
        let fired = other.tick(clock.now()).len() + engine.tick(clock.now()).len();
        assert_eq!(fired, 300, "{name}");
        for id in &ids {
            assert_eq!(
                engine.instance(*id).unwrap().status(),
                Status::Completed,
                "{name}"
            );
        }
    }
}

/// A triage by agents, then an approval by leads.
/// Triage by an agent, then approval by a lead.
const REVIEW: &str = include_str!("fixtures/review.yaml");

fn lead() -> Actor {
    Actor::new("lee", ["lead"])
}

#[test]
fn a_work_list_reads_only_the_instances_offered_to_its_actor() {
    for (name, store) in stores() {
        let indexed = name != "foreign";
        let clock = Arc::new(ManualClock::new(t0()));
        let a = cached(&clock).open(store()).unwrap();
        a.deploy(ProcessDef::from_yaml(REVIEW).unwrap()).unwrap();
        let ids: Vec<InstanceId> = (0..200)
            .map(|_| a.start("review", Vars::new()).unwrap())
            .collect();
        // Twenty of them go on to the leads.
        let mut approving: Vec<InstanceId> = ids.iter().step_by(10).copied().collect();
        for id in &approving {
            let t = a.tasks(*id).unwrap()[0].id;
            a.complete(t, &agent(), Vars::new()).unwrap();
        }
        let offered = |role: &str| {
            store()
                .offered(&[Offer {
                    role: procflow::RoleId::new(role),
                    unit: None,
                }])
                .unwrap()
                .map(|found| found.into_iter().map(|(id, _)| id).collect::<Vec<_>>())
        };
        if indexed {
            assert_eq!(offered("lead"), Some(approving.clone()), "{name}");
            assert_eq!(offered("agent").map(|f| f.len()), Some(180), "{name}");
            assert_eq!(offered("audit"), Some(vec![]), "{name}");
        } else {
            assert_eq!(offered("lead"), None, "{name}: keeps no index");
        }
        // A replica that holds nothing reads, for a lead's work list, the twenty instances
        // offered to leads and no other (every running one from a store without the index).
        let counted = Counted::new(store(), Default::default());
        let b = cached(&clock)
            .open(Arc::clone(&counted) as Arc<dyn Store>)
            .unwrap();
        let before = counted.reads();
        let mut listed: Vec<InstanceId> = b
            .work_list(&lead())
            .into_iter()
            .map(|t| t.id.instance())
            .collect();
        listed.sort();
        assert_eq!(listed, approving, "{name}");
        let reads = counted.reads() - before;
        if indexed {
            assert_eq!(reads, 20, "{name}");
        } else {
            assert_eq!(reads, 200, "{name}");
        }
        assert_eq!(b.work_list(&agent()).len(), 180, "{name}");
        // Each approval takes its instance out of the leads' offers, also when A holds an
        // older copy of it.
        let last = approving.pop().unwrap();
        let t = b.tasks(last).unwrap()[0].id;
        b.complete(t, &lead(), Vars::new()).unwrap();
        assert_eq!(b.instance(last).unwrap().status(), Status::Completed);
        let on_a: Vec<InstanceId> = a
            .work_list(&lead())
            .into_iter()
            .map(|t| t.id.instance())
            .collect();
        assert_eq!(on_a.len(), 19, "{name}");
        assert!(!on_a.contains(&last), "{name}");
        if indexed {
            assert_eq!(offered("lead"), Some(approving), "{name}");
        }
    }
}

/// A repair for the network operations of the instance's local network, escalated to those of
/// the unit above an hour after its deadline.
const SCOPED: &str = include_str!("fixtures/scoped.yaml");

#[test]
fn a_work_list_reads_only_the_instances_of_the_units_it_reaches() {
    let org = || procflow::Organisation::from_file("process-defs/org/province.yaml").unwrap();
    let who = |id: &str| Actor::new(id, [""; 0]);
    for (name, store) in stores() {
        let indexed = name != "foreign";
        let clock = Arc::new(ManualClock::new(t0()));
        let a = cached(&clock).organisation(org()).open(store()).unwrap();
        a.deploy(ProcessDef::from_yaml(SCOPED).unwrap()).unwrap();
        let start = |network: &str| {
            let vars: Vars = [("local_network".to_owned(), json!(network))]
                .into_iter()
                .collect();
            a.start("scoped", vars).unwrap()
        };
        let gz: Vec<InstanceId> = (0..30).map(|_| start("gz")).collect();
        let sz: Vec<InstanceId> = (0..30).map(|_| start("sz")).collect();
        let counted = Counted::new(store(), Default::default());
        let b = cached(&clock)
            .organisation(org())
            .open(Arc::clone(&counted) as Arc<dyn Store>)
            .unwrap();
        // Each engineer's list, and how many instances it read.
        let list = |person: &str| {
            let before = counted.reads();
            let mut ids: Vec<InstanceId> = b
                .work_list(&who(person))
                .into_iter()
                .map(|t| t.id.instance())
                .collect();
            ids.sort();
            (ids, counted.reads() - before)
        };
        let (huang, read) = list("huang");
        assert_eq!(huang, gz, "{name}: a hall below Guangzhou");
        assert_eq!(read, if indexed { 30 } else { 60 }, "{name}");
        let (xu, read) = list("xu");
        assert_eq!(xu, sz, "{name}: Shenzhen");
        assert_eq!(read, if indexed { 30 } else { 60 }, "{name}");
        let (feng, read) = list("feng");
        assert!(feng.is_empty(), "{name}: the province is above the scope");
        assert_eq!(read, if indexed { 0 } else { 60 }, "{name}");
        // The escalation gives every repair to the province's network operations.
        clock.advance(Duration::hours(6));
        a.tick(clock.now());
        let (feng, read) = list("feng");
        assert_eq!(feng.len(), 60, "{name}: escalated one level up");
        assert_eq!(read, 60, "{name}");
        // An engine without the organisation (its authorizer reads the actor's roles alone)
        // cannot tell which units an offer's unit lies under: it asks for the actor's roles in
        // any unit, and lists the 60 to anyone holding the role; an actor holding only a role
        // no task is offered to reads nothing (a store without the index: every instance).
        let counted = Counted::new(store(), Default::default());
        let c = cached(&clock)
            .open(Arc::clone(&counted) as Arc<dyn Store>)
            .unwrap();
        let without = |actor: &Actor| {
            let before = counted.reads();
            (c.work_list(actor).len(), counted.reads() - before)
        };
        let ops = Actor::new("ops", ["network_ops"]);
        assert_eq!(without(&ops), (60, 60), "{name}: without the organisation");
        let lead = Actor::new("lead", ["customer_service"]);
        let read = if indexed { 0 } else { 60 };
        assert_eq!(without(&lead), (0, read), "{name}: accountable only");
    }
}

#[test]
fn an_escalated_task_follows_its_unit_to_a_new_parent() {
    // Tianhe's hall moves from Guangzhou to Shenzhen after a repair scoped to it was escalated
    // one level up: an engine with the new organisation offers it to Shenzhen's engineers at
    // once, without waiting for the instance to change.
    let text = std::fs::read_to_string("process-defs/org/province.yaml").unwrap();
    let old = || procflow::Organisation::from_yaml(&text).unwrap();
    let moved = text.replacen("level: hall, parent: gz }", "level: hall, parent: sz }", 1);
    assert_ne!(moved, text);
    let new = || procflow::Organisation::from_yaml(&moved).unwrap();
    let who = |id: &str| Actor::new(id, [""; 0]);
    for (name, store) in stores() {
        let clock = Arc::new(ManualClock::new(t0()));
        let a = cached(&clock).organisation(old()).open(store()).unwrap();
        a.deploy(ProcessDef::from_yaml(SCOPED).unwrap()).unwrap();
        let vars: Vars = [("local_network".to_owned(), json!("gz_tianhe"))]
            .into_iter()
            .collect();
        let id = a.start("scoped", vars).unwrap();
        clock.advance(Duration::hours(6));
        a.tick(clock.now());
        let lists = |engine: &Engine, person: &str| {
            engine
                .work_list(&who(person))
                .iter()
                .any(|t| t.id.instance() == id)
        };
        // Before the move: Guangzhou's engineer (chen), not Shenzhen's (xu).
        assert!(lists(&a, "chen") && !lists(&a, "xu"), "{name}: before");
        let b = cached(&clock).organisation(new()).open(store()).unwrap();
        assert!(
            lists(&b, "xu"),
            "{name}: Shenzhen's engineer after the move"
        );
        assert!(
            !lists(&b, "chen"),
            "{name}: Guangzhou's engineer after the move"
        );
    }
}

#[test]
fn read_many_gives_what_read_gives_for_each_known_instance_in_id_order() {
    for (name, store) in stores() {
        let clock = Arc::new(ManualClock::new(t0()));
        let engine = deployed(store(), &clock, REVIEW);
        let ids: Vec<InstanceId> = (0..5)
            .map(|_| engine.start("review", Vars::new()).unwrap())
            .collect();
        let t = engine.tasks(ids[2]).unwrap()[0].id;
        engine.complete(t, &agent(), Vars::new()).unwrap();
        let s = store();
        // Asked out of order, with an unknown id and one twice.
        let asked = [ids[3], InstanceId::new(999_999), ids[0], ids[2], ids[0]];
        let many = s.read_many(&asked).unwrap();
        let one_by_one: Vec<_> = [ids[0], ids[2], ids[3]]
            .iter()
            .map(|id| s.read(*id).unwrap().unwrap())
            .collect();
        let got: Vec<(InstanceId, u64)> =
            many.iter().map(|m| (m.instance.id(), m.version)).collect();
        let want: Vec<(InstanceId, u64)> = one_by_one
            .iter()
            .map(|m| (m.instance.id(), m.version))
            .collect();
        assert_eq!(got, want, "{name}");
        for (m, o) in many.iter().zip(&one_by_one) {
            assert_eq!(m.instance, o.instance, "{name}");
        }
        assert_eq!(many[1].version, 2, "{name}: the completed task's commit");
        assert_eq!(s.read_many(&[]).unwrap().len(), 0, "{name}");
    }
}

#[test]
fn a_key_value_holding_any_character_is_stored_and_found() {
    // PostgreSQL's text cannot hold U+0000; a string variable can.
    let odd = ["C\u{0}1", "\u{1}0", "C\u{1}\u{0}", "中\u{0}"];
    for (name, store) in stores() {
        let clock = Arc::new(ManualClock::new(t0()));
        let engine = deployed(store(), &clock, KEYED);
        let ids: Vec<InstanceId> = odd
            .iter()
            .map(|v| {
                engine
                    .start("keyed", vars(&[("customer_id", json!(v))]))
                    .unwrap_or_else(|e| panic!("{name}: start with {v:?}: {e}"))
            })
            .collect();
        let s = store();
        for (v, id) in odd.iter().zip(&ids) {
            assert_eq!(s.by_key("customer_id", v).unwrap(), [*id], "{name}: {v:?}");
            let found = engine.find_by_key("customer_id", *v).unwrap();
            assert_eq!(found.len(), 1, "{name}: {v:?}");
            assert_eq!(found[0].id, *id, "{name}: {v:?}");
        }
        assert!(s.by_key("customer_id", "C").unwrap().is_empty(), "{name}");
        // A report grouped by the key names each value as it is.
        let report = procflow::Report::from_store(
            &*s,
            &procflow::ReportOptions::default().by_key("customer_id"),
        )
        .unwrap();
        let json = serde_json::to_string(&report).unwrap();
        for v in odd {
            assert!(
                json.contains(&serde_json::to_string(v).unwrap()),
                "{name}: {v:?} in the report by key"
            );
        }
    }
}

#[test]
fn an_actor_id_holding_any_character_is_stored_and_reported() {
    // Found by the fuzzer: PostgreSQL's text cannot hold U+0000, and a report fact names the
    // actor who completed a task.
    for (name, store) in stores() {
        let clock = Arc::new(ManualClock::new(t0()));
        let engine = open(store(), &clock);
        engine.deploy(ProcessDef::from_yaml(CASE).unwrap()).unwrap();
        let id = engine.start("case", Vars::new()).unwrap();
        let odd = Actor::new("a\u{0}n\u{1}", ["agent"]);
        let check = task(&engine, id, "check");
        engine
            .claim(check, &odd)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        engine
            .complete(check, &odd, Vars::new())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let report =
            procflow::Report::from_store(&*store(), &procflow::ReportOptions::default()).unwrap();
        let json = serde_json::to_string(&report).unwrap();
        assert!(
            json.contains("a\\u0000n\\u0001"),
            "{name}: the actor in the report"
        );
    }
}

/// `n` printable characters no compression shortens (PostgreSQL compresses index entries
/// before it counts them against the 2,704 bytes an entry may take).
fn incompressible(n: usize) -> String {
    let mut x: u64 = 88_172_645_463_325_252;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'!' + (x % 90) as u8)
        })
        .collect()
}

#[test]
fn a_key_value_longer_than_the_bound_is_refused_on_every_store() {
    let text = incompressible;
    let bound = procflow::VarSpec::MAX_KEY_BYTES;
    for (name, store) in stores() {
        let clock = Arc::new(ManualClock::new(t0()));
        let engine = deployed(store(), &clock, KEYED);
        let longest = text(bound);
        let id = engine
            .start("keyed", vars(&[("customer_id", json!(longest))]))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let found = engine.find_by_key("customer_id", longest.as_str()).unwrap();
        assert_eq!(found.len(), 1, "{name}");
        assert_eq!(found[0].id, id, "{name}");
        for n in [bound + 1, 3_000, 60_000] {
            let err = engine
                .start("keyed", vars(&[("customer_id", json!(text(n)))]))
                .unwrap_err();
            assert_eq!(
                err,
                ExecError::Variables {
                    problems: vec![(
                        "customer_id".into(),
                        procflow::VarProblem::KeyTooLong { limit: bound }
                    )]
                },
                "{name}: {n} bytes"
            );
        }
        assert_eq!(engine.instances(), [id], "{name}: nothing else started");
    }
}

#[test]
fn a_scope_naming_no_unit_is_offered_to_no_unit_on_every_store() {
    // A scope variable is any string: the offer `role@value` must stay storable (PostgreSQL's
    // index takes at most 2,704 bytes per entry, and no U+0000).
    let org = || procflow::Organisation::from_file("process-defs/org/province.yaml").unwrap();
    let long = incompressible(3_000);
    for (name, store) in stores() {
        let clock = Arc::new(ManualClock::new(t0()));
        let a = cached(&clock).organisation(org()).open(store()).unwrap();
        a.deploy(ProcessDef::from_yaml(SCOPED).unwrap()).unwrap();
        let start = |network: &str| {
            let vars: Vars = [("local_network".to_owned(), json!(network))]
                .into_iter()
                .collect();
            a.start("scoped", vars)
                .unwrap_or_else(|e| panic!("{name}: {} bytes: {e}", network.len()))
        };
        let odd = [start(&long), start("g\u{0}z")];
        let gz = start("gz");
        // On another engine (reading the store), Guangzhou's engineer sees Guangzhou's repair
        // only; an engine without the organisation lists all three to the role.
        let b = cached(&clock).organisation(org()).open(store()).unwrap();
        let listed: Vec<InstanceId> = b
            .work_list(&Actor::new("huang", [""; 0]))
            .into_iter()
            .map(|t| t.id.instance())
            .collect();
        assert_eq!(listed, [gz], "{name}");
        let c = cached(&clock).open(store()).unwrap();
        let mut all: Vec<InstanceId> = c
            .work_list(&Actor::new("ops", ["network_ops"]))
            .into_iter()
            .map(|t| t.id.instance())
            .collect();
        all.sort();
        assert_eq!(all, [odd[0], odd[1], gz], "{name}");
    }
}

/// An order waiting for a reply correlated by its order id; a reply no order waits for is
/// kept for an hour.
const KEPT: &str = include_str!("fixtures/kept-reply.yaml");

fn reply(order: i64) -> Vars {
    vars(&[("order_id", json!(order)), ("answer", json!("ok"))])
}

/// The stores that say engines share them (`Store::is_shared`): a SQLite file opened with
/// `SqliteOptions::shared`, PostgreSQL.
fn shared_stores() -> Vec<(&'static str, Reopen)> {
    stores()
        .into_iter()
        .filter(|(_, store)| store().is_shared())
        .collect()
}

/// Messages kept by two engines sharing a store are both kept (each under its own id); an
/// instance that starts waiting on one engine takes the message the other kept, and only once:
/// a third instance that starts waiting for the same message later finds it gone.
#[test]
fn messages_kept_on_one_engine_reach_instances_waiting_on_another_once() {
    let shared = shared_stores();
    assert!(shared.iter().any(|(name, _)| *name == "sqlite-shared"));
    for (name, store) in shared {
        let clock = Arc::new(ManualClock::new(t0()));
        let a = open(store(), &clock);
        a.deploy(ProcessDef::from_yaml(KEPT).unwrap()).unwrap();
        let b = open(store(), &clock);
        assert!(a.correlate("reply", reply(1)).unwrap().kept, "{name}");
        assert!(b.correlate("reply", reply(2)).unwrap().kept, "{name}");
        let look = store();
        let orders = |list: Vec<procflow::ParkedMessage>| -> Vec<i64> {
            let mut orders: Vec<i64> = list
                .iter()
                .map(|m| m.vars["order_id"].as_i64().unwrap())
                .collect();
            orders.sort_unstable();
            orders
        };
        assert_eq!(orders(look.parked().unwrap()), [1, 2], "{name}: both kept");

        // b waits for the message a kept, and a for b's.
        let on_b = b.start("order", reply(1)).unwrap();
        assert_eq!(
            b.instance(on_b).unwrap().status(),
            Status::Completed,
            "{name}"
        );
        let on_a = a.start("order", reply(2)).unwrap();
        assert_eq!(
            a.instance(on_a).unwrap().status(),
            Status::Completed,
            "{name}"
        );
        assert!(look.parked().unwrap().is_empty(), "{name}: both taken");
        // a still lists its own kept message, taken meanwhile on b: a third instance waiting
        // for it does not get it again.
        let again = a.start("order", reply(1)).unwrap();
        assert_eq!(
            a.instance(again).unwrap().status(),
            Status::Running,
            "{name}"
        );
        // A message a keeps and never offers again (a stops) expires on b.
        assert!(a.correlate("reply", reply(3)).unwrap().kept, "{name}");
        drop(a);
        clock.advance(Duration::hours(2));
        b.tick(clock.now());
        assert_eq!(
            orders(look.unmatched().unwrap()),
            [3],
            "{name}: delivered messages are not unmatched"
        );
    }
}

/// A commit that takes a kept message removes it in its own transaction, and one that takes a
/// message no longer kept is refused whole (`StoreError::Taken`): the instance stays as it was.
#[test]
fn a_commit_takes_a_kept_message_once() {
    for (name, store) in shared_stores() {
        let clock = Arc::new(ManualClock::new(t0()));
        let engine = open(store(), &clock);
        engine.deploy(ProcessDef::from_yaml(KEPT).unwrap()).unwrap();
        engine.deploy(ProcessDef::from_yaml(CASE).unwrap()).unwrap();
        assert!(engine.correlate("reply", reply(1)).unwrap().kept, "{name}");
        let id = engine.start("case", Vars::new()).unwrap();
        let store = store();
        let kept = store.parked().unwrap()[0].id;
        let stored = store.read(id).unwrap().unwrap();
        let commit = |version: u64| procflow::Commit {
            instance: &stored.instance,
            def: stored.instance.def().unwrap(),
            records: &[],
            first_record: stored.instance.audit().len(),
            version,
            next_due: None,
            keys: None,
            offers: None,
            takes: Some(kept),
        };
        store.commit(&commit(stored.version)).unwrap();
        assert!(store.parked().unwrap().is_empty(), "{name}");
        assert_eq!(
            store.commit(&commit(stored.version + 1)),
            Err(procflow::StoreError::Taken { message: kept }),
            "{name}"
        );
        assert_eq!(
            store.read(id).unwrap().unwrap().version,
            stored.version + 1,
            "{name}: the refused commit changed nothing"
        );
    }
}

/// Two engines on one store (two processes on one SQLite file, replicas) each keep a message:
/// both are kept. Each engine used to number its kept messages from 1, and the second
/// overwrote the first's on SQLite.
#[test]
fn messages_two_engines_keep_on_one_store_are_both_kept() {
    // The foreign store keeps no message (`Store::park`'s default).
    for (name, store) in stores().into_iter().filter(|(n, _)| *n != "foreign") {
        let clock = Arc::new(ManualClock::new(t0()));
        let a = open(store(), &clock);
        a.deploy(ProcessDef::from_yaml(KEPT).unwrap()).unwrap();
        let b = open(store(), &clock);
        assert!(a.correlate("reply", reply(1)).unwrap().kept, "{name}");
        assert!(b.correlate("reply", reply(2)).unwrap().kept, "{name}");
        let mut kept: Vec<i64> = store()
            .parked()
            .unwrap()
            .iter()
            .map(|m| m.vars["order_id"].as_i64().unwrap())
            .collect();
        kept.sort_unstable();
        assert_eq!(kept, [1, 2], "{name}: both kept");
        // A message kept under the number the store's sequence gives next (as an engine that
        // numbered kept messages itself left them): an engine opened after it moves the
        // sequence past it, and keeps a fourth beside the three.
        let mut old = store().parked().unwrap().remove(0);
        old.id = store().reserve_ids(1).unwrap() + 1;
        old.vars.insert("order_id".into(), json!(3));
        store().park(&old).unwrap();
        let c = open(store(), &clock);
        assert!(c.correlate("reply", reply(4)).unwrap().kept, "{name}");
        assert_eq!(store().parked().unwrap().len(), 4, "{name}");
    }
}

/// A kept message that expires on one engine after another engine sharing the store delivered
/// it is not recorded unmatched: the store refuses to (`StoreError::Taken`), and the first
/// engine's hooks hear nothing of it.
#[test]
fn a_message_delivered_elsewhere_is_not_recorded_unmatched_when_it_expires() {
    for (name, store) in shared_stores() {
        let clock = Arc::new(ManualClock::new(t0()));
        let a = open(store(), &clock);
        a.deploy(ProcessDef::from_yaml(KEPT).unwrap()).unwrap();
        assert!(a.correlate("reply", reply(1)).unwrap().kept, "{name}");
        let look = store();
        let mut kept = look.parked().unwrap().remove(0);
        // Another engine's commit takes it (as a delivery does)...
        let b = open(store(), &clock);
        let id = b.start("order", reply(2)).unwrap();
        let stored = look.read(id).unwrap().unwrap();
        look.commit(&procflow::Commit {
            instance: &stored.instance,
            def: stored.instance.def().unwrap(),
            records: &[],
            first_record: stored.instance.audit().len(),
            version: stored.version,
            next_due: None,
            keys: None,
            offers: None,
            takes: Some(kept.id),
        })
        .unwrap();
        // ... before the engine that kept it records it expired.
        kept.until = Some(t0());
        assert_eq!(
            look.settle(kept.id, Some(&kept)),
            Err(procflow::StoreError::Taken { message: kept.id }),
            "{name}"
        );
        assert!(look.unmatched().unwrap().is_empty(), "{name}");
        // One that was never kept (`until` unset: it matched nobody and keeps for no time) is
        // recorded unmatched all the same.
        let mut fresh = kept.clone();
        fresh.id = look.reserve_ids(1).unwrap();
        fresh.until = None;
        look.settle(fresh.id, Some(&fresh)).unwrap();
        assert_eq!(look.unmatched().unwrap(), [fresh], "{name}");
    }
    // Every store that keeps messages refuses to record as expired one it does not keep.
    for (name, store) in stores().into_iter().filter(|(n, _)| *n != "foreign") {
        let clock = Arc::new(ManualClock::new(t0()));
        let a = open(store(), &clock);
        a.deploy(ProcessDef::from_yaml(KEPT).unwrap()).unwrap();
        assert!(a.correlate("reply", reply(1)).unwrap().kept, "{name}");
        let look = store();
        let mut ghost = look.parked().unwrap().remove(0);
        ghost.id = look.reserve_ids(1).unwrap();
        assert_eq!(
            look.settle(ghost.id, Some(&ghost)),
            Err(procflow::StoreError::Taken { message: ghost.id }),
            "{name}"
        );
        assert!(look.unmatched().unwrap().is_empty(), "{name}");
    }
}

/// A pause of an hour.
const PAUSE: &str = r#"
id: pause
version: 1
name: Pause
nodes:
  start: { kind: start, next: wait }
  wait: { kind: timer, wait: 1h, next: end }
  end: { kind: end }
"#;

/// On a store engines share, a due timer is claimed by one store handle at a time: another
/// handle gets nothing until the claim's lease runs out (its engine died), and the claiming
/// handle's engine fires it, once.
#[test]
fn a_due_timer_is_claimed_by_one_handle_until_its_lease_runs_out() {
    use std::time::Duration as Lease;
    for (name, store) in shared_stores() {
        let clock = Arc::new(ManualClock::new(t0()));
        let engine = deployed(store(), &clock, PAUSE);
        let id = engine.start("pause", Vars::new()).unwrap();
        let (one, two) = (store(), store());
        let now = t0() + Duration::hours(2);
        let ids = |claimed: Option<Vec<(InstanceId, u64)>>| -> Vec<InstanceId> {
            claimed.unwrap().into_iter().map(|(id, _)| id).collect()
        };
        assert!(
            ids(one.claim_due(t0(), Lease::from_secs(30)).unwrap()).is_empty(),
            "{name}: not due yet"
        );
        assert_eq!(
            ids(one.claim_due(now, Lease::ZERO).unwrap()),
            [id],
            "{name}"
        );
        // Its lease ran out at once: another handle may claim it, and then holds it.
        assert_eq!(
            ids(two.claim_due(now, Lease::from_secs(30)).unwrap()),
            [id],
            "{name}"
        );
        assert!(
            ids(one.claim_due(now, Lease::from_secs(30)).unwrap()).is_empty(),
            "{name}"
        );
        assert_eq!(
            ids(two.claim_due(now, Lease::from_secs(30)).unwrap()),
            [id],
            "{name}: renewed"
        );
        // The engine on the first handle's store fires nothing another handle claimed; one
        // opened on the claiming handle fires it.
        clock.advance(Duration::hours(2));
        assert!(engine.tick(clock.now()).is_empty(), "{name}");
        let claimer = open(two, &clock);
        assert_eq!(claimer.tick(clock.now()).len(), 1, "{name}");
        assert_eq!(
            claimer.instance(id).unwrap().status(),
            Status::Completed,
            "{name}"
        );
        // The firing's commit ended the claim; nothing is due any more.
        assert!(
            ids(one.claim_due(now, Lease::from_secs(30)).unwrap()).is_empty(),
            "{name}"
        );
    }
}

/// An engine that holds an instance whose due timer another engine claimed is not told to
/// wake for it (a driver would tick again and again at once, firing nothing): `next_due`
/// leaves it out while the claim lives, and once the other engine fired it, the next tick
/// reads the newer copy.
#[test]
fn an_engine_is_not_woken_for_a_timer_another_engine_claimed() {
    use std::time::Duration as Lease;
    for (name, store) in shared_stores() {
        let clock = Arc::new(ManualClock::new(t0()));
        let engine = deployed(store(), &clock, PAUSE);
        let id = engine.start("pause", Vars::new()).unwrap();
        clock.advance(Duration::hours(2));
        // Another handle claims it and has not fired it yet.
        let other = store();
        let claimed = other.claim_due(clock.now(), Lease::from_secs(30)).unwrap();
        assert_eq!(claimed.unwrap().len(), 1, "{name}");
        assert!(
            engine.tick(clock.now()).is_empty(),
            "{name}: claimed elsewhere"
        );
        assert!(
            engine.next_due().is_none_or(|at| at > clock.now()),
            "{name}: not due for this engine: {:?}",
            engine.next_due()
        );
        // The other engine fires it; this engine's next tick reads the finished instance.
        let firing = open(other, &clock);
        assert_eq!(firing.tick(clock.now()).len(), 1, "{name}");
        assert!(engine.tick(clock.now()).is_empty(), "{name}");
        assert_eq!(engine.next_due(), None, "{name}");
        assert_eq!(
            engine.instance(id).unwrap().status(),
            Status::Completed,
            "{name}: the newer copy"
        );
    }
}
