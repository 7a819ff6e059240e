//! The PostgreSQL store alone (the shared suite in tests/store.rs runs on it too): bad input
//! gives typed errors naming the server and the database and leaves other data untouched, the
//! schema migrates from the first version, ids never repeat across replicas, and the store
//! carries on after the server restarts.
//!
//! Needs a server: see tests/common/pg.rs (skipped, saying why, when none is found).

#[path = "common/backfill.rs"]
mod backfill;
#[path = "common/pg.rs"]
mod pg;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use procflow::{
    Actor, Engine, ManualClock, PostgresStore, ProcessDef, Status, Store, StoreError, StoredDef,
    Vars,
};

const FLOW: &str = r#"
id: flow
version: 1
name: Flow
roles: { agent: { name: Agent } }
nodes:
  start: { kind: start, next: work }
  work: { kind: user_task, name: Work, raci: { responsible: [agent], accountable: agent }, next: done }
  done: { kind: end }
"#;

/// The restart test holds this exclusively: the others' connections would break with it.
static SERVER_LOCK: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    SERVER_LOCK.read().unwrap_or_else(|e| e.into_inner())
}

fn t0() -> DateTime<Utc> {
    "2026-11-23T09:00:00Z".parse().unwrap()
}

fn engine(url: &str) -> Engine {
    let store = PostgresStore::connect(url).expect("connect");
    let mut b = Engine::builder();
    b.clock(Arc::new(ManualClock::new(t0())));
    let engine = b.open(store).expect("open");
    engine.deploy(ProcessDef::from_yaml(FLOW).unwrap()).unwrap();
    engine
}

#[test]
fn a_refused_connection_is_typed_and_names_the_server() {
    // No server needed: nothing listens on this socket.
    let err =
        PostgresStore::connect("postgresql:///procflow?host=/nonexistent-dir&port=1").unwrap_err();
    match &err {
        StoreError::Unreachable {
            server, database, ..
        } => {
            assert_eq!(server, "/nonexistent-dir:1");
            assert_eq!(database, "procflow");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.is_retryable());
    assert!(err.to_string().contains("/nonexistent-dir:1"), "{err}");
    let err = PostgresStore::connect("postgres://[not a url").unwrap_err();
    assert!(matches!(err, StoreError::Server { .. }), "{err:?}");
}

#[test]
fn a_missing_database_or_role_is_denied() {
    let _shared = shared();
    let Some(server) = pg::server() else { return };
    let url = server.url.replace("/postgres?", "/no_such_db?");
    let err = PostgresStore::connect(&url).unwrap_err();
    assert!(
        matches!(&err, StoreError::Denied { database, .. } if database == "no_such_db"),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    if server.cluster.is_some() {
        let url = server.url.replace("user=postgres", "user=nobody_here");
        let err = PostgresStore::connect(&url).unwrap_err();
        assert!(matches!(err, StoreError::Denied { .. }), "{err:?}");
    }
}

#[test]
fn another_applications_database_is_refused_and_left_untouched() {
    let _shared = shared();
    let Some(server) = pg::server() else { return };
    let url = server.fresh();
    let mut admin = server.client(&url);
    admin
        .batch_execute("CREATE TABLE orders (id INT); INSERT INTO orders VALUES (7)")
        .unwrap();
    let err = PostgresStore::connect(&url).unwrap_err();
    assert!(
        matches!(&err, StoreError::ForeignDatabase { detail, .. } if detail.contains("orders")),
        "{err:?}"
    );
    let tables: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        tables, 1,
        "nothing was created beside the other application's table"
    );
    let kept: i32 = admin
        .query_one("SELECT id FROM orders", &[])
        .unwrap()
        .get(0);
    assert_eq!(kept, 7);
}

#[test]
fn a_schema_from_a_newer_procflow_is_refused() {
    let _shared = shared();
    let Some(server) = pg::server() else { return };
    let url = server.fresh();
    drop(PostgresStore::connect(&url).unwrap());
    let mut admin = server.client(&url);
    admin
        .batch_execute("UPDATE procflow_meta SET value = '99' WHERE key = 'schema_version'")
        .unwrap();
    let err = PostgresStore::connect(&url).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NewerDatabaseSchema {
                found: 99,
                supported: 7,
                ..
            }
        ),
        "{err:?}"
    );
    let v: String = admin
        .query_one(
            "SELECT value FROM procflow_meta WHERE key = 'schema_version'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(v, "99", "left untouched");
}

#[test]
fn a_first_version_schema_is_migrated_and_keeps_its_data() {
    let _shared = shared();
    let Some(server) = pg::server() else { return };
    let url = server.fresh();
    let mut admin = server.client(&url);
    // The database exactly as the first PostgreSQL store wrote it.
    admin
        .batch_execute(include_str!("../src/store/postgres/v1.sql"))
        .unwrap();
    admin
        .execute(
            "INSERT INTO procflow_definitions (id, version, text) VALUES ('flow', 1, $1)",
            &[&FLOW],
        )
        .unwrap();
    // A running instance (id 1000, past any the sequence hands out here), as it stored one.
    let memory = Engine::builder()
        .clock(Arc::new(ManualClock::new(t0())))
        .build();
    memory.deploy(ProcessDef::from_yaml(FLOW).unwrap()).unwrap();
    for _ in 0..1000 {
        memory.start("flow", Vars::new()).unwrap();
    }
    let old = memory.instance(procflow::InstanceId::new(1000)).unwrap();
    admin
        .execute(
            "INSERT INTO procflow_instances \
             (id, process, def_version, running, row_version, started_at, state) \
             VALUES (1000, 'flow', 1, true, 1, $1, $2)",
            &[
                &old.started_at().timestamp_nanos_opt().unwrap(),
                &old.encode(),
            ],
        )
        .unwrap();
    admin
        .execute(
            "INSERT INTO procflow_records (instance, first, batch) VALUES (1000, 0, $1)",
            &[&procflow::Record::encode_batch(old.audit())],
        )
        .unwrap();
    let store = PostgresStore::connect(&url).unwrap();
    assert_eq!(
        store.definitions().unwrap(),
        vec![StoredDef {
            key: procflow::DefKey {
                id: "flow".into(),
                version: 1
            },
            text: FLOW.into()
        }]
    );
    let v: String = admin
        .query_one(
            "SELECT value FROM procflow_meta WHERE key = 'schema_version'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(v, "7");
    // Stored before the store indexed offers (schema 5): the running instance may offer a task
    // to anyone, so that every work list reads it until a commit changes its offers.
    assert_eq!(
        store.offered(&[]).unwrap(),
        Some(vec![(procflow::InstanceId::new(1000), 1)])
    );
    // A commit that says what it offers replaces its `*`.
    let agent = procflow::Offer {
        role: procflow::RoleId::new("agent"),
        unit: None,
    };
    store
        .commit(&procflow::Commit {
            instance: &old,
            def: old.def().unwrap(),
            records: &[],
            first_record: old.audit().len(),
            version: 1,
            next_due: None,
            keys: None,
            offers: Some(std::slice::from_ref(&agent)),
            takes: None,
        })
        .unwrap();
    assert_eq!(store.offered(&[]).unwrap(), Some(vec![]));
    assert_eq!(
        store.offered(std::slice::from_ref(&agent)).unwrap(),
        Some(vec![(procflow::InstanceId::new(1000), 2)])
    );
    // And an engine runs on it.
    let mut b = Engine::builder();
    b.clock(Arc::new(ManualClock::new(t0())));
    let engine = b.open(store).unwrap();
    let id = engine.start("flow", Vars::new()).unwrap();
    assert_eq!(engine.instance(id).unwrap().status(), Status::Running);
    let mut listed: Vec<u64> = engine
        .work_list(&Actor::new("ann", ["agent"]))
        .into_iter()
        .map(|t| t.id.instance().get())
        .collect();
    listed.sort();
    assert_eq!(listed, [id.get(), 1000]);
}

/// A store migrated to offers (schema 5) gets them from the engine, in batches and from `tick`.
#[test]
fn a_migrated_store_gets_its_offers_from_the_engine() {
    let _shared = shared();
    let Some(server) = pg::server() else { return };
    let url = server.fresh();
    backfill::check(
        || Arc::new(PostgresStore::connect(&url).unwrap()) as Arc<dyn procflow::Store>,
        || {
            // What the migration to schema 5 leaves.
            server
                .client(&url)
                .batch_execute(
                    "UPDATE procflow_instances SET offers = NULL; DELETE FROM procflow_offers; \
                     INSERT INTO procflow_offers (offer, instance) \
                     SELECT '*', id FROM procflow_instances WHERE running;",
                )
                .unwrap();
        },
        t0(),
    );
}

#[test]
fn ids_are_never_handed_out_twice_across_replicas() {
    let _shared = shared();
    let Some(server) = pg::server() else { return };
    let url = server.fresh();
    let stores: Vec<Arc<PostgresStore>> = (0..4)
        .map(|_| Arc::new(PostgresStore::connect(&url).unwrap()))
        .collect();
    let handles: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let s = Arc::clone(s);
            std::thread::spawn(move || {
                let mut got = Vec::new();
                for n in 0..50u64 {
                    let count = 1 + (n + i as u64) % 7;
                    let first = s.reserve_ids(count).unwrap();
                    got.extend(first..first + count);
                }
                got
            })
        })
        .collect();
    let mut all: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), n, "an id was handed out twice");
}

#[test]
fn concurrent_starts_and_completions_on_two_replicas_are_all_stored() {
    let _shared = shared();
    let Some(server) = pg::server() else { return };
    let url = server.fresh();
    let a = Arc::new(engine(&url));
    let b = Arc::new(engine(&url));
    let handles: Vec<_> = [&a, &b, &a, &b]
        .into_iter()
        .map(|e| {
            let e = Arc::clone(e);
            std::thread::spawn(move || {
                let actor = Actor::new("ann", ["agent"]);
                let mut ids = Vec::new();
                for _ in 0..25 {
                    let id = e.start("flow", Vars::new()).unwrap();
                    let task = e.tasks(id).unwrap()[0].id;
                    e.complete(task, &actor, Vars::new()).unwrap();
                    ids.push(id);
                }
                ids
            })
        })
        .collect();
    let ids: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let store = PostgresStore::connect(&url).unwrap();
    let history = store.history(None, None).unwrap();
    assert_eq!(history.len(), 100);
    for id in ids {
        let stored = store.read(id).unwrap().expect("stored");
        assert_eq!(stored.instance.status(), Status::Completed);
        assert_eq!(stored.version, 2);
    }
}

/// Commits several threads make at once on one store handle are each conditional on their own
/// version: of two engines on the same handle completing the same task at once, one is stored
/// and the other fails with a conflict alone, and every other concurrent commit is stored.
#[test]
fn concurrent_commits_on_one_handle_are_each_conditional() {
    let _shared = shared();
    let Some(server) = pg::server() else { return };
    let url = server.fresh();
    let store = Arc::new(PostgresStore::connect(&url).unwrap());
    let open = || {
        let mut b = Engine::builder();
        b.clock(Arc::new(ManualClock::new(t0())));
        let engine = b.open(Arc::clone(&store)).expect("open");
        engine.deploy(ProcessDef::from_yaml(FLOW).unwrap()).unwrap();
        Arc::new(engine)
    };
    let a = open();
    const N: usize = 96;
    let ids: Vec<_> = (0..N)
        .map(|_| a.start("flow", Vars::new()).unwrap())
        .collect();
    // Opened after the starts: it holds every instance at the version `a` holds.
    let b = open();
    let tasks: Arc<Vec<_>> = Arc::new(ids.iter().map(|&id| a.tasks(id).unwrap()[0].id).collect());
    const THREADS: usize = 8;
    let barrier = Arc::new(std::sync::Barrier::new(2 * THREADS));
    let handles: Vec<_> = (0..2 * THREADS)
        .map(|t| {
            let (engine, tasks, barrier) = (
                Arc::clone(if t % 2 == 0 { &a } else { &b }),
                Arc::clone(&tasks),
                Arc::clone(&barrier),
            );
            std::thread::spawn(move || {
                let actor = Actor::new("ann", ["agent"]);
                let mut results = Vec::new();
                // Thread pairs (one per engine) race for the same tasks, all pairs at once.
                for task in tasks.iter().skip(t / 2).step_by(THREADS) {
                    barrier.wait();
                    results.push((task.instance(), engine.complete(*task, &actor, Vars::new())));
                }
                results
            })
        })
        .collect();
    let mut won = std::collections::HashMap::new();
    for h in handles {
        for (instance, result) in h.join().unwrap() {
            match result {
                Ok(()) => *won.entry(instance).or_insert(0) += 1,
                Err(procflow::ExecError::Conflict(id)) => assert_eq!(id, instance),
                Err(other) => panic!("{instance}: {other:?}"),
            }
        }
    }
    assert_eq!(
        won.len(),
        N,
        "each instance's completion stored by one engine"
    );
    assert!(won.values().all(|&n| n == 1), "{won:?}");
    let check = PostgresStore::connect(&url).unwrap();
    for id in ids {
        let stored = check.read(id).unwrap().expect("stored");
        assert_eq!(stored.instance.status(), Status::Completed);
        assert_eq!(stored.version, 2);
    }
}

/// A process with a business key and two tasks for two roles.
const KEYED: &str = r#"
id: keyed
version: 1
name: Keyed
roles: { agent: { name: Agent }, lead: { name: Lead } }
keys: [ref]
variables: { ref: { type: string } }
nodes:
  start: { kind: start, next: triage }
  triage: { kind: user_task, name: Triage, raci: { responsible: [agent], accountable: lead }, next: approve }
  approve: { kind: user_task, name: Approve, raci: { responsible: [lead], accountable: lead }, next: done }
  done: { kind: end }
"#;

/// The commits threads make at once on one store handle go to the server in groups, one
/// statement each with the parts its commits need: starts with and without a business key,
/// completions that move a task to another role and change the key, completions that end an
/// instance. An engine on another handle reads back what each commit wrote: the keys (the
/// old value gone), the work lists (the first task's offers gone), the statuses.
#[test]
fn grouped_commits_write_keys_offers_and_states_as_lone_ones_do() {
    let _shared = shared();
    let Some(server) = pg::server() else { return };
    let url = server.fresh();
    let a = Arc::new(engine(&url));
    a.deploy(ProcessDef::from_yaml(KEYED).unwrap()).unwrap();
    const THREADS: usize = 8;
    const EACH: usize = 8;
    let text = |v: String| -> Vars {
        [("ref".to_owned(), serde_json::json!(v))]
            .into_iter()
            .collect()
    };
    let barrier = Arc::new(std::sync::Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (a, barrier) = (Arc::clone(&a), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let agent = Actor::new("ann", ["agent"]);
                let lead = Actor::new("lee", ["lead"]);
                let mut mine = Vec::new();
                for i in 0..EACH {
                    barrier.wait();
                    let keyed = (t + i) % 3 != 0;
                    let id = if keyed {
                        a.start("keyed", text(format!("r-{t}-{i}")))
                    } else {
                        a.start("flow", Vars::new())
                    };
                    mine.push((id.unwrap(), keyed));
                }
                for (i, &(id, keyed)) in mine.iter().enumerate() {
                    barrier.wait();
                    let task = a.tasks(id).unwrap()[0].id;
                    let output = if keyed {
                        text(format!("s-{t}-{i}"))
                    } else {
                        Vars::new()
                    };
                    a.complete(task, &agent, output).unwrap();
                }
                for (i, &(id, keyed)) in mine.iter().enumerate() {
                    barrier.wait();
                    if keyed && i % 2 == 0 {
                        let task = a.tasks(id).unwrap()[0].id;
                        a.complete(task, &lead, Vars::new()).unwrap();
                    }
                }
                mine
            })
        })
        .collect();
    let mut waiting = std::collections::BTreeSet::new();
    let b = Engine::builder()
        .open(PostgresStore::connect(&url).unwrap())
        .unwrap();
    for (t, h) in handles.into_iter().enumerate() {
        for (i, (id, keyed)) in h.join().unwrap().into_iter().enumerate() {
            let stored = b.instance(id).unwrap();
            if keyed {
                let found: Vec<_> = b.find_by_key("ref", format!("s-{t}-{i}")).unwrap();
                assert_eq!(found.iter().map(|k| k.id).collect::<Vec<_>>(), [id]);
                assert!(
                    b.find_by_key("ref", format!("r-{t}-{i}"))
                        .unwrap()
                        .is_empty()
                );
            }
            if keyed && i % 2 == 1 {
                assert_eq!(stored.status(), Status::Running, "{id}");
                waiting.insert(id);
            } else {
                assert_eq!(stored.status(), Status::Completed, "{id}");
            }
        }
    }
    assert!(b.work_list(&Actor::new("ann", ["agent"])).is_empty());
    let approvals: std::collections::BTreeSet<_> = b
        .work_list(&Actor::new("lee", ["lead"]))
        .into_iter()
        .map(|task| task.id.instance())
        .collect();
    assert_eq!(approvals, waiting);
}

#[test]
fn the_store_carries_on_after_the_server_restarts() {
    let _alone = SERVER_LOCK.write().unwrap_or_else(|e| e.into_inner());
    let Some(server) = pg::server() else { return };
    let Some(cluster) = &server.cluster else {
        eprintln!("skipped: the server is not the harness's own (PROCFLOW_PG_URL)");
        return;
    };
    let url = server.fresh();
    let e = engine(&url);
    let first = e.start("flow", Vars::new()).unwrap();
    assert!(cluster.restart(), "pg_ctl restart");
    // The pooled connections died with the server: the next calls connect anew.
    let second = e.start("flow", Vars::new()).unwrap();
    let task = e.tasks(first).unwrap()[0].id;
    e.complete(task, &Actor::new("ann", ["agent"]), Vars::new())
        .unwrap();
    let store = PostgresStore::connect(&url).unwrap();
    assert_eq!(
        store.read(first).unwrap().unwrap().instance.status(),
        Status::Completed
    );
    assert!(store.read(second).unwrap().is_some());
}

/// The synchronous engine called from async code, on a runtime's own threads (a tokio host
/// that does not use the async façade; the HTTP server once did for some reads): the
/// PostgreSQL driver would panic there, and abort the process as it unwound through its
/// connections. Each call works, on both kinds of runtime, and so do connecting and dropping
/// the store there.
#[test]
fn the_engine_on_postgresql_works_when_called_on_a_runtime_thread() {
    let _shared = shared();
    let Some(server) = pg::server() else { return };
    let url = server.fresh();
    let work = |url: String| async move {
        let engine = engine(&url);
        let id = engine.start("flow", Vars::new()).unwrap();
        let task = engine.tasks(id).unwrap()[0].id;
        engine
            .complete(task, &Actor::new("ann", ["agent"]), Vars::new())
            .unwrap();
        assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
        drop(engine);
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(work(url.clone()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async { tokio::spawn(work(url)).await.unwrap() });
}
