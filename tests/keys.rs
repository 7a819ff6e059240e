//! Business keys (issue 13, item 1): the engine indexes the keys its instances hold, on the
//! start and whenever a call sets a key variable; queries find every instance of any process
//! holding a key value, running or finished (from the store when there is one), and a key
//! value's history merges their audit trails in time order.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use procflow::{
    Actor, BusinessKey, Clock, Config, Engine, ExecError, KeyValue, ManualClock, MemoryStore,
    ProcessDef, SqliteStore, Status, Store, Vars, handler_fn,
};
use serde_json::json;

/// Orders: a customer and an order number (an integer), the order number often given later
/// by the first task's output.
const ORDERS: &str = r#"
id: orders
version: 1
name: Orders
roles: { clerk: { name: Clerk } }
sla: { due: 4h, accountable: clerk }
keys: [customer_id, order_id]
variables:
  customer_id: { type: string }
  order_id: { type: integer }
  note: { type: string }
nodes:
  start: { kind: start, next: take }
  take: { kind: user_task, name: Take, raci: { responsible: [clerk], accountable: clerk }, next: ship }
  ship: { kind: user_task, name: Ship, raci: { responsible: [clerk], accountable: clerk }, next: end }
  end: { kind: end }
"#;

/// Tickets: a customer and a ticket id that a service task sets.
const TICKETS: &str = r#"
id: tickets
version: 1
name: Tickets
roles: { agent: { name: Agent } }
keys: [customer_id, ticket_id]
variables:
  customer_id: { type: string }
  ticket_id: { type: string }
nodes:
  start: { kind: start, next: open }
  open: { kind: service_task, name: Open ticket, handler: open_ticket, next: fix }
  fix: { kind: user_task, name: Fix, raci: { responsible: [agent], accountable: agent }, next: end }
  end: { kind: end }
"#;

/// A definition without keys: it pays nothing and is never found.
const PLAIN: &str = r#"
id: plain
version: 1
name: Plain
roles: { clerk: { name: Clerk } }
variables:
  customer_id: { type: string }
nodes:
  start: { kind: start, next: take }
  take: { kind: user_task, name: Take, raci: { responsible: [clerk], accountable: clerk }, next: end }
  end: { kind: end }
"#;

fn t0() -> DateTime<Utc> {
    "2026-11-23T09:00:00Z".parse().unwrap()
}

fn clerk() -> Actor {
    Actor::new("ann", ["clerk"])
}

fn agent() -> Actor {
    Actor::new("bob", ["agent"])
}

fn vars(pairs: &[(&str, serde_json::Value)]) -> Vars {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn builder(clock: &Arc<ManualClock>) -> procflow::EngineBuilder {
    let mut b = Engine::builder();
    b.clock(Arc::clone(clock));
    b.handler(
        "open_ticket",
        handler_fn(|call| {
            let n = call.instance.get();
            Ok(vars(&[("ticket_id", json!(format!("T-{n}")))]))
        }),
    );
    b
}

fn deploy(engine: &Engine) {
    for yaml in [ORDERS, TICKETS, PLAIN] {
        engine.deploy(ProcessDef::from_yaml(yaml).unwrap()).unwrap();
    }
}

fn engine(clock: &Arc<ManualClock>) -> Engine {
    let engine = builder(clock).build();
    deploy(&engine);
    engine
}

fn complete(engine: &Engine, id: procflow::InstanceId, node: &str, output: Vars) {
    let task = engine
        .tasks(id)
        .unwrap()
        .into_iter()
        .find(|t| &*t.node_id == node)
        .unwrap_or_else(|| panic!("no open task at {node}"))
        .id;
    let actor = if node == "fix" { agent() } else { clerk() };
    engine.complete(task, &actor, output).unwrap();
}

fn ids(found: &[procflow::KeyedInstance]) -> Vec<procflow::InstanceId> {
    found.iter().map(|k| k.id).collect()
}

#[test]
fn an_instance_is_indexed_on_its_start_and_when_a_task_output_sets_a_key() {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = engine(&clock);
    let a = engine
        .start("orders", vars(&[("customer_id", json!("C-1"))]))
        .unwrap();
    assert_eq!(ids(&engine.find_by_key("customer_id", "C-1").unwrap()), [a]);
    assert!(engine.find_by_key("order_id", 7).unwrap().is_empty());
    // The first task gives the order number.
    complete(&engine, a, "take", vars(&[("order_id", json!(7))]));
    assert_eq!(ids(&engine.find_by_key("order_id", 7).unwrap()), [a]);
    // Integer keys: text that is the same number finds it too.
    assert_eq!(ids(&engine.find_by_key("order_id", "7").unwrap()), [a]);
    // A later output changes it: the old value no longer finds it.
    complete(&engine, a, "ship", vars(&[("order_id", json!(8))]));
    assert!(engine.find_by_key("order_id", 7).unwrap().is_empty());
    let found = engine.find_by_key("order_id", 8).unwrap();
    assert_eq!(ids(&found), [a]);
    assert_eq!(found[0].status, Status::Completed);
    assert!(found[0].open_tasks.is_empty());
    // A service task's output sets a key too.
    let t = engine
        .start("tickets", vars(&[("customer_id", json!("C-1"))]))
        .unwrap();
    let ticket = format!("T-{}", t.get());
    assert_eq!(
        ids(&engine.find_by_key("ticket_id", ticket.as_str()).unwrap()),
        [t]
    );
}

#[test]
fn a_query_finds_running_and_finished_instances_of_every_process() {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = engine(&clock);
    let order = engine
        .start(
            "orders",
            vars(&[("customer_id", json!("C-1")), ("order_id", json!(1))]),
        )
        .unwrap();
    clock.advance(Duration::minutes(5));
    let ticket = engine
        .start("tickets", vars(&[("customer_id", json!("C-1"))]))
        .unwrap();
    let other = engine
        .start("orders", vars(&[("customer_id", json!("C-2"))]))
        .unwrap();
    // An instance of a definition without keys is not found, though its variable matches.
    engine
        .start("plain", vars(&[("customer_id", json!("C-1"))]))
        .unwrap();
    clock.advance(Duration::minutes(5));
    complete(&engine, order, "take", Vars::new());
    complete(&engine, order, "ship", Vars::new());
    clock.advance(Duration::hours(5));
    engine.tick(clock.now());

    let found = engine.find_by_key("customer_id", "C-1").unwrap();
    assert_eq!(ids(&found), [order, ticket]);
    let (o, t) = (&found[0], &found[1]);
    assert_eq!(o.definition.id, "orders");
    assert_eq!(o.status, Status::Completed);
    assert_eq!(o.ended_at, Some(t0() + Duration::minutes(10)));
    assert!(o.sla.is_none() && !o.sla_breached);
    assert_eq!(t.definition.id, "tickets");
    assert_eq!(t.status, Status::Running);
    assert_eq!(t.open_tasks, ["fix"]);
    assert_eq!(t.started_at, t0() + Duration::minutes(5));
    // Only orders has an SLA: C-2's order breached it (4h) while it waited.
    let c2 = engine.find_by_key("customer_id", "C-2").unwrap();
    assert_eq!(ids(&c2), [other]);
    assert!(c2[0].sla_breached);
    assert_eq!(
        c2[0].sla.as_ref().map(|s| s.status),
        Some(procflow::SlaStatus::Breached)
    );
    assert!(engine.find_by_key("customer_id", "C-3").unwrap().is_empty());
}

#[test]
fn a_removed_instance_leaves_the_index_and_a_cancelled_one_stays() {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = engine(&clock);
    let a = engine
        .start("orders", vars(&[("customer_id", json!("C-1"))]))
        .unwrap();
    let b = engine
        .start("orders", vars(&[("customer_id", json!("C-1"))]))
        .unwrap();
    engine.remove(a).unwrap();
    assert_eq!(ids(&engine.find_by_key("customer_id", "C-1").unwrap()), [b]);
    engine.cancel(b, &clerk(), "customer withdrew").unwrap();
    let found = engine.find_by_key("customer_id", "C-1").unwrap();
    assert_eq!(found[0].status, Status::Cancelled);
}

#[test]
fn history_merges_the_audit_trails_in_time_order() {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = engine(&clock);
    let order = engine
        .start("orders", vars(&[("customer_id", json!("C-1"))]))
        .unwrap();
    clock.advance(Duration::minutes(1));
    let ticket = engine
        .start("tickets", vars(&[("customer_id", json!("C-1"))]))
        .unwrap();
    clock.advance(Duration::minutes(1));
    complete(&engine, order, "take", Vars::new());
    clock.advance(Duration::minutes(1));
    complete(&engine, ticket, "fix", Vars::new());
    engine
        .start("orders", vars(&[("customer_id", json!("C-2"))]))
        .unwrap();

    let lines = engine.history_by_key("customer_id", "C-1").unwrap();
    assert!(
        lines.windows(2).all(|w| w[0].at <= w[1].at),
        "in time order"
    );
    let whose: Vec<_> = lines.iter().map(|l| l.instance).collect();
    // Every record of both instances, and nothing of C-2's.
    let expected = engine.instance(order).unwrap().audit().len()
        + engine.instance(ticket).unwrap().audit().len();
    assert_eq!(lines.len(), expected);
    assert_eq!(whose.first(), Some(&order));
    assert_eq!(whose.last(), Some(&ticket));
    assert_eq!(lines[0].what, "instance started");
    assert_eq!(lines[0].definition.id, "orders");
    // The order's completion of `take` comes between the ticket's start and its fix.
    let at = |inst, text: &str| {
        lines
            .iter()
            .position(|l| l.instance == inst && l.what.contains(text))
            .unwrap_or_else(|| panic!("no '{text}' of {inst}: {lines:#?}"))
    };
    assert!(at(ticket, "instance started") < at(order, "take -> ship"));
    assert!(at(order, "take -> ship") < at(ticket, "fix -> end"));
    assert_eq!(
        lines.last().map(|l| l.what.as_str()),
        Some("instance completed")
    );
}

#[test]
fn an_unknown_key_and_a_value_of_the_wrong_shape_are_typed_errors() {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = engine(&clock);
    // `note` is a variable, not a key; `customer` is nothing.
    for key in ["note", "customer"] {
        assert_eq!(
            engine.find_by_key(key, "x").unwrap_err(),
            ExecError::UnknownKey { key: key.into() }
        );
        assert!(matches!(
            engine.history_by_key(key, "x"),
            Err(ExecError::UnknownKey { .. })
        ));
    }
    // order_id is an integer in every definition that lists it.
    assert_eq!(
        engine.find_by_key("order_id", "O-7").unwrap_err(),
        ExecError::BadKeyValue {
            key: "order_id".into(),
            value: "O-7".into(),
            expected: "an integer",
        }
    );
    assert_eq!(
        engine
            .find_by_key("order_id", "O-7")
            .unwrap_err()
            .to_string(),
        "business key 'order_id' takes an integer, not 'O-7'"
    );
    // An engine with nothing deployed knows no key.
    assert!(matches!(
        Engine::new().find_by_key("customer_id", "C-1"),
        Err(ExecError::UnknownKey { .. })
    ));
    assert_eq!(KeyValue::from_json(&json!(1.5)), None);
}

/// On a store, a finished instance the engine let go is found (read from the store), and a new
/// engine on the store (a restart) finds everything.
fn finished_instances_are_found_on(store: Arc<dyn Store>, reopen: impl Fn() -> Arc<dyn Store>) {
    let clock = Arc::new(ManualClock::new(t0()));
    let mut b = builder(&clock);
    b.config({
        let mut c = Config::default();
        c.retain_completed = false;
        c
    });
    let engine = b.open(store).unwrap();
    deploy(&engine);
    let done = engine
        .start("orders", vars(&[("customer_id", json!("C-1"))]))
        .unwrap();
    complete(&engine, done, "take", vars(&[("order_id", json!(42))]));
    complete(&engine, done, "ship", Vars::new());
    assert!(engine.instances().is_empty() || !engine.instances().contains(&done));
    let running = engine
        .start("tickets", vars(&[("customer_id", json!("C-1"))]))
        .unwrap();
    let found = engine.find_by_key("customer_id", "C-1").unwrap();
    assert_eq!(ids(&found), [done, running]);
    assert_eq!(found[0].status, Status::Completed);
    assert_eq!(ids(&engine.find_by_key("order_id", 42).unwrap()), [done]);
    let lines = engine.history_by_key("customer_id", "C-1").unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.instance == done && l.what == "instance completed")
    );
    drop(engine);

    let store = reopen();
    assert_eq!(store.by_key("order_id", "42").unwrap(), [done]);
    assert_eq!(store.by_key("customer_id", "C-1").unwrap(), [done, running]);
    assert_eq!(
        store.running_by_key("customer_id", "C-1").unwrap(),
        [running]
    );
    assert!(store.running_by_key("order_id", "42").unwrap().is_empty());
    let engine = builder(&clock).open(store).unwrap();
    let found = engine.find_by_key("customer_id", "C-1").unwrap();
    assert_eq!(ids(&found), [done, running]);
    assert_eq!(found[1].open_tasks, ["fix"]);
    assert_eq!(
        engine.history_by_key("customer_id", "C-1").unwrap().len(),
        lines.len()
    );
}

#[test]
fn finished_instances_are_found_in_a_memory_store() {
    let store = MemoryStore::new();
    let again = store.clone();
    finished_instances_are_found_on(Arc::new(store), move || Arc::new(again.clone()));
}

#[test]
fn finished_instances_are_found_in_a_sqlite_store_after_reopening() {
    let path = temp_db("reopen");
    let store = SqliteStore::create(&path).unwrap();
    let p = path.clone();
    finished_instances_are_found_on(Arc::new(store), move || {
        Arc::new(SqliteStore::open(&p).unwrap())
    });
    remove_db(&path);
}

fn temp_db(name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("procflow-keys-{name}-{}.db", std::process::id()));
    remove_db(&path);
    path
}

fn remove_db(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// A store of the first schema (v1) whose instances carry keys is indexed when it is opened:
/// the migrations run from v1 to the keys table, which is filled from the stored states.
#[test]
fn a_v1_store_gets_its_keys_indexed_when_migrated() {
    let clock = Arc::new(ManualClock::new(t0()));
    let memory = MemoryStore::new();
    let engine = builder(&clock).open(memory.clone()).unwrap();
    deploy(&engine);
    let a = engine
        .start(
            "orders",
            vars(&[("customer_id", json!("C-1")), ("order_id", json!(5))]),
        )
        .unwrap();
    let b = engine
        .start("tickets", vars(&[("customer_id", json!("C-1"))]))
        .unwrap();
    let c = engine
        .start("plain", vars(&[("customer_id", json!("C-1"))]))
        .unwrap();
    drop(engine);
    let path = temp_db("v1");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(include_str!("fixtures/schema-v1.sql"))
            .unwrap();
        for def in memory.definitions().unwrap() {
            conn.execute(
                "INSERT INTO definitions (id, version, text) VALUES (?1, ?2, ?3)",
                rusqlite::params![def.key.id, def.key.version, def.text],
            )
            .unwrap();
        }
        for id in [a, b, c] {
            let stored = memory.read(id).unwrap().unwrap();
            let inst = &stored.instance;
            let key = inst.def().unwrap();
            conn.execute(
                "INSERT INTO instances \
                 (id, process, def_version, running, row_version, started_at, state) \
                 VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6)",
                rusqlite::params![
                    id.get() as i64,
                    key.id,
                    key.version,
                    stored.version as i64,
                    inst.started_at().timestamp_nanos_opt().unwrap(),
                    inst.encode()
                ],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO records (instance, first, batch) VALUES (?1, 0, ?2)",
                rusqlite::params![
                    id.get() as i64,
                    procflow::Record::encode_batch(inst.audit())
                ],
            )
            .unwrap();
        }
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.by_key("customer_id", "C-1").unwrap(), [a, b]);
    assert_eq!(store.by_key("order_id", "5").unwrap(), [a]);
    let engine = builder(&clock).open(store).unwrap();
    assert_eq!(
        ids(&engine.find_by_key("customer_id", "C-1").unwrap()),
        [a, b]
    );
    drop(engine);
    remove_db(&path);
}

#[test]
fn business_keys_render_canonically() {
    assert_eq!(
        BusinessKey::of(
            ["customer_id", "order_id", "missing"],
            &vars(&[("customer_id", json!("C-1")), ("order_id", json!(12))])
        ),
        [
            BusinessKey {
                name: "customer_id".into(),
                value: "C-1".into()
            },
            BusinessKey {
                name: "order_id".into(),
                value: "12".into()
            }
        ]
    );
    assert_eq!(KeyValue::from(12).render(), "12");
    assert_eq!(KeyValue::from("C-1").to_string(), "C-1");
}

/// Reports group instance figures by a key's value, and `procflow history` prints a customer's
/// history from a store file.
#[test]
fn reports_group_by_key_and_the_cli_prints_a_history() {
    let path = temp_db("report");
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = builder(&clock)
        .open(SqliteStore::create(&path).unwrap())
        .unwrap();
    deploy(&engine);
    let c1 = vars(&[("customer_id", json!("C-1"))]);
    let a = engine.start("orders", c1.clone()).unwrap();
    let b = engine.start("tickets", c1.clone()).unwrap();
    engine
        .start("orders", vars(&[("customer_id", json!("C-2"))]))
        .unwrap();
    engine.start("orders", Vars::new()).unwrap();
    clock.advance(Duration::hours(1));
    complete(&engine, a, "take", vars(&[("order_id", json!(3))]));
    complete(&engine, a, "ship", Vars::new());
    drop(engine);

    let store = SqliteStore::open(&path).unwrap();
    let options = procflow::ReportOptions::default().by_key("customer_id");
    let report = procflow::Report::from_store(&store, &options).unwrap();
    let rows: Vec<(&str, usize, usize, usize, Vec<String>)> = report
        .keys
        .iter()
        .map(|k| {
            (
                k.value.as_str(),
                k.started,
                k.completed,
                k.open,
                k.processes.clone(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("C-1", 2, 1, 1, vec!["orders".into(), "tickets".into()]),
            ("C-2", 1, 0, 1, vec!["orders".into()]),
        ]
    );
    assert_eq!(report.keys[0].cycle_time.p50, Some(Duration::hours(1)));
    assert!(
        report.to_table().contains("By customer_id"),
        "{}",
        report.to_table()
    );
    assert!(
        report
            .to_csv()
            .lines()
            .any(|l| l.starts_with("keys,customer_id,C-1,"))
    );
    // Without the option, no grouping.
    let plain = procflow::Report::from_store(&store, &Default::default()).unwrap();
    assert!(plain.keys.is_empty());

    let history = procflow::Report::key_history(&store, "customer_id", "C-1").unwrap();
    assert_eq!(
        history.instances.iter().map(|i| i.id).collect::<Vec<_>>(),
        [a, b]
    );
    assert!(history.records.windows(2).all(|w| w[0].at <= w[1].at));
    assert!(matches!(
        procflow::Report::key_history(&store, "nothing", "x"),
        Err(procflow::ReportError::UnknownKey { .. })
    ));
    assert!(matches!(
        procflow::Report::key_history(&store, "order_id", "O-3"),
        Err(procflow::ReportError::BadKeyValue { .. })
    ));
    drop(store);

    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_procflow"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let db = path.to_str().unwrap();
    let (ok, stdout, stderr) = cli(&["history", "--store", db, "--key", "customer_id=C-1"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("Instances with customer_id = C-1"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{a} orders@1: instance completed")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{b} tickets@1: instance started")),
        "{stdout}"
    );
    let (ok, stdout, _) = cli(&["report", "--store", db, "--by", "customer_id"]);
    assert!(ok);
    assert!(stdout.contains("By customer_id"), "{stdout}");
    let (ok, _, stderr) = cli(&["history", "--store", db, "--key", "customer=C-1"]);
    assert!(!ok);
    assert!(
        stderr.contains("unknown business key 'customer'"),
        "{stderr}"
    );
    remove_db(&path);
}

/// One step of the property below.
#[derive(Clone, Debug)]
enum Op {
    /// Start an order of customer `c` (with order number `o`, if given).
    Start(u8, Option<u8>),
    /// Complete the `n`-th instance's open task, setting the order number `o` if given.
    Complete(usize, Option<u8>),
    /// Remove the `n`-th instance from the engine.
    Remove(usize),
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        (0u8..4, proptest::option::of(0u8..4)).prop_map(|(c, o)| Op::Start(c, o)),
        (0usize..16, proptest::option::of(0u8..4)).prop_map(|(n, o)| Op::Complete(n, o)),
        (0usize..16).prop_map(Op::Remove),
    ]
}

/// Runs `ops`, then checks that a key query finds exactly the instances whose variable holds
/// the value: the held ones, and on a store also the ones the engine let go.
fn check_holders(ops: Vec<Op>, on_store: bool) -> Result<(), proptest::test_runner::TestCaseError> {
    let clock = Arc::new(ManualClock::new(t0()));
    let store = MemoryStore::new();
    let engine = if on_store {
        builder(&clock).open(store.clone()).unwrap()
    } else {
        builder(&clock).build()
    };
    deploy(&engine);
    let mut started = Vec::new();
    for op in ops {
        match op {
            Op::Start(c, o) => {
                let mut v = vars(&[("customer_id", json!(format!("C-{c}")))]);
                if let Some(o) = o {
                    v.insert("order_id".into(), json!(o));
                }
                started.push(engine.start("orders", v).unwrap());
            }
            Op::Complete(n, o) => {
                let Some(&id) = started.get(n % started.len().max(1)) else {
                    continue;
                };
                let Ok(tasks) = engine.tasks(id) else {
                    continue;
                };
                let Some(task) = tasks.first() else {
                    continue;
                };
                let out = o
                    .map(|o| vars(&[("order_id", json!(o))]))
                    .unwrap_or_default();
                engine.complete(task.id, &clerk(), out).unwrap();
            }
            Op::Remove(n) => {
                if let Some(&id) = started.get(n % started.len().max(1)) {
                    let _ = engine.remove(id);
                }
            }
        }
    }
    let state = |id| match on_store {
        true => store.read(id).unwrap().map(|s| s.instance),
        false => engine.instance(id).ok(),
    };
    let customers = (0..4).map(|c| json!(format!("C-{c}"))).collect::<Vec<_>>();
    let orders = (0..4).map(|o| json!(o)).collect::<Vec<_>>();
    for (key, values) in [("customer_id", customers), ("order_id", orders)] {
        for value in values {
            let want: Vec<_> = started
                .iter()
                .copied()
                .filter(|id| state(*id).is_some_and(|i| i.vars().get(key) == Some(&value)))
                .collect();
            let kv = KeyValue::from_json(&value).unwrap();
            let found = engine.find_by_key(key, kv.clone()).unwrap();
            proptest::prop_assert_eq!(ids(&found), want.clone());
            if on_store {
                proptest::prop_assert_eq!(store.by_key(key, &kv.render()).unwrap(), want);
            }
        }
    }
    Ok(())
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 64, ..Default::default() })]

    /// Whatever the calls, a key query finds exactly the instances holding the value (up to
    /// 96 calls: the index keeps removals waiting until the next read, and long runs leave
    /// many waiting).
    #[test]
    fn a_key_query_finds_exactly_the_holders(ops in proptest::collection::vec(op(), 1..96)) {
        check_holders(ops.clone(), false)?;
        check_holders(ops, true)?;
    }
}

/// Two engines share a store: one sets a key on an instance the other holds; the other finds it
/// by the new value (through the store), and once it reads the new state (a conflict), its own
/// index holds the new value too.
#[test]
fn two_engines_on_one_store_agree_on_keys() {
    let clock = Arc::new(ManualClock::new(t0()));
    let store = MemoryStore::new();
    let first = builder(&clock).open(store.clone()).unwrap();
    deploy(&first);
    let id = first
        .start("orders", vars(&[("customer_id", json!("C-1"))]))
        .unwrap();
    let second = builder(&clock).open(store.clone()).unwrap();
    complete(&second, id, "take", vars(&[("order_id", json!(5))]));
    assert_eq!(ids(&first.find_by_key("order_id", 5).unwrap()), [id]);
    assert_eq!(ids(&second.find_by_key("order_id", 5).unwrap()), [id]);
    // The first engine's copy is stale: its call conflicts and it reads the stored state.
    let stale = procflow::TaskId::new(id, 0);
    assert!(matches!(
        first.complete(stale, &clerk(), Vars::new()),
        Err(ExecError::TaskClosed { .. } | ExecError::Conflict(_))
    ));
    complete(&first, id, "ship", vars(&[("order_id", json!(6))]));
    assert!(first.find_by_key("order_id", 5).unwrap().is_empty());
    assert_eq!(ids(&first.find_by_key("order_id", 6).unwrap()), [id]);
    assert_eq!(store.by_key("order_id", "6").unwrap(), [id]);
}
