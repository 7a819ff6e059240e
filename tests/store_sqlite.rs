//! The SQLite store through the public API: round trips through a reopen, versions and
//! conflicts, definitions, id blocks shared by two handles, due timers, the files it refuses
//! (missing, garbage, empty, foreign, newer, locked, full) and leaves untouched (with their
//! `-wal` and `-shm` files), the v1 → v2 migration, damaged copies, group commit from many
//! threads, concurrent creation, and a file deleted, moved or replaced while the store is open.
//!
//! Instances come from an in-memory engine; the tests commit them to the store themselves.

#[path = "common/backfill.rs"]
mod backfill;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use procflow::{
    Actor, Commit, DefKey, Durability, Engine, ExecError, Instance, InstanceId, ManualClock,
    ProcessDef, Record, SqliteStore, Status, Store, StoreError, StoredDef, Vars,
};

/// One task with a 30 minute claim deadline and a 4 hour due date: a started instance is
/// running with its earliest timer 30 minutes after its start.
const TASK: &str = r#"
id: task
version: 1
name: Task
roles: { r: { name: R }, a: { name: A } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [r], accountable: a }
    due: 4h
    claim_due: 30m
    next: done
  done: { kind: end }
"#;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 1, 9, 0, 0).unwrap()
}

/// A store file under the temp dir, removed (with its log) when dropped.
struct TempDb(PathBuf);

impl TempDb {
    fn new(name: &str) -> TempDb {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "procflow-sqlite-{}-{n}-{name}.db",
            std::process::id()
        ));
        remove(&path);
        TempDb(path)
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        remove(&self.0);
    }
}

fn remove(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(beside(path, suffix));
    }
}

/// `path` with `suffix` appended: its `-wal`, `-shm` or `-journal` file.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// The bytes of the file and of its `-wal`, `-shm` and `-journal` files (`None`: absent).
fn snapshot(path: &Path) -> Vec<(&'static str, Option<Vec<u8>>)> {
    ["", "-wal", "-shm", "-journal"]
        .into_iter()
        .map(|suffix| (suffix, std::fs::read(beside(path, suffix)).ok()))
        .collect()
}

/// Asserts that the file and its companions are as `before`, byte for byte, none created.
fn assert_untouched(path: &Path, before: &[(&'static str, Option<Vec<u8>>)]) {
    for ((suffix, was), (_, now)) in before.iter().zip(snapshot(path)) {
        let state = |b: &Option<Vec<u8>>| b.as_ref().map(|b| b.len());
        assert!(
            *was == now,
            "{}{suffix} changed: {:?} bytes before, {:?} after",
            path.display(),
            state(was),
            state(&now)
        );
    }
}

/// An engine on a manual clock at [`t0`] with [`TASK`] deployed.
fn engine() -> (Engine, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = Engine::builder().clock(Arc::clone(&clock)).build();
    engine.deploy(ProcessDef::from_yaml(TASK).unwrap()).unwrap();
    (engine, clock)
}

/// Starts `n` instances, one second apart; returns their states right after the start.
fn started(engine: &Engine, clock: &ManualClock, n: usize) -> Vec<Instance> {
    (0..n)
        .map(|_| {
            clock.advance(chrono::Duration::seconds(1));
            let id = engine.start("task", Vars::new()).unwrap();
            engine.instance(id).unwrap()
        })
        .collect()
}

/// Completes the instance's task; returns its new (completed) state.
fn complete(engine: &Engine, id: InstanceId) -> Instance {
    let task = engine.tasks(id).unwrap()[0].id;
    engine
        .complete(task, &Actor::new("ann", ["r"]), Vars::new())
        .unwrap();
    engine.instance(id).unwrap()
}

/// The earliest armed timer.
fn next_due(inst: &Instance) -> Option<DateTime<Utc>> {
    inst.timers()
        .iter()
        .filter(|t| !t.fired && inst.status() == Status::Running)
        .map(|t| t.at)
        .min()
}

/// Commits `inst` as the call that took it from `version` (with `first` records already
/// stored) to the next version.
fn commit(
    store: &dyn Store,
    inst: &Instance,
    version: u64,
    first: usize,
) -> Result<(), StoreError> {
    store.commit(&Commit {
        instance: inst,
        def: inst.def().unwrap(),
        records: &inst.audit()[first..],
        first_record: first,
        version,
        next_due: next_due(inst),
        keys: None,
        offers: None,
        takes: None,
    })
}

fn def(text: &str, id: &str, version: u32) -> StoredDef {
    StoredDef {
        key: DefKey {
            id: id.into(),
            version,
        },
        text: text.into(),
    }
}

/// Creates (or opens) a store with the default options.
fn create(path: &Path) -> SqliteStore {
    SqliteStore::create(path).unwrap()
}

/// Creates (or opens) a store that waits at most 200 ms for another connection's lock.
fn create_impatient(path: &Path) -> SqliteStore {
    SqliteStore::options()
        .busy_timeout(Duration::from_millis(200))
        .create(path)
        .unwrap()
}

#[test]
fn round_trip_through_reopen() {
    let db = TempDb::new("round-trip");
    let (engine, clock) = engine();
    let starts = started(&engine, &clock, 3);
    let done = complete(&engine, starts[1].id());
    {
        let store = create(&db.0);
        store.save_definition(&def(TASK, "task", 1)).unwrap();
        for inst in &starts {
            commit(&store, inst, 0, 0).unwrap();
        }
        commit(&store, &done, 1, starts[1].audit().len()).unwrap();
    }
    let store = SqliteStore::open(&db.0).unwrap();
    assert_eq!(store.definitions().unwrap(), vec![def(TASK, "task", 1)]);

    let read = store.read(done.id()).unwrap().unwrap();
    assert_eq!(read.version, 2);
    assert_eq!(read.instance, done);
    assert!(done.audit().len() > starts[1].audit().len());
    let read = store.read(starts[0].id()).unwrap().unwrap();
    assert_eq!((read.version, &read.instance), (1, &starts[0]));

    let running = store.running().unwrap();
    let ids: Vec<InstanceId> = running.iter().map(|s| s.instance.id()).collect();
    assert_eq!(ids, vec![starts[0].id(), starts[2].id()]);
    assert_eq!(running[1].instance, starts[2]);

    let all = store.history(Some("task"), None).unwrap();
    let ids: Vec<InstanceId> = all.iter().map(|s| s.instance.id()).collect();
    assert_eq!(ids, starts.iter().map(|i| i.id()).collect::<Vec<_>>());
    assert_eq!(all[1].instance, done);
    let later = store.history(None, Some(starts[1].started_at())).unwrap();
    assert_eq!(later.len(), 2);
    assert_eq!(later[0].instance, done);
    assert!(store.history(Some("other"), None).unwrap().is_empty());
    let unknown = started(&engine, &clock, 1).remove(0);
    assert_eq!(store.read(unknown.id()).unwrap(), None);
}

#[test]
fn a_commit_with_another_version_conflicts_and_stores_nothing() {
    let db = TempDb::new("conflicts");
    let (engine, clock) = engine();
    let inst = started(&engine, &clock, 2);
    let store = create(&db.0);
    commit(&store, &inst[0], 0, 0).unwrap();

    // A second start of the same instance.
    let e = commit(&store, &inst[0], 0, 0).unwrap_err();
    assert_eq!(
        e,
        StoreError::Conflict {
            instance: inst[0].id(),
            expected: 0,
            found: Some(1)
        }
    );
    // A stale (and a future) version.
    let done = complete(&engine, inst[0].id());
    let n = inst[0].audit().len();
    for version in [0, 2, 7] {
        let e = commit(&store, &done, version, n).unwrap_err();
        assert_eq!(
            e,
            StoreError::Conflict {
                instance: inst[0].id(),
                expected: version,
                found: Some(1)
            }
        );
    }
    // An update of an instance the store does not know.
    let e = commit(&store, &inst[1], 1, 0).unwrap_err();
    assert_eq!(
        e,
        StoreError::Conflict {
            instance: inst[1].id(),
            expected: 1,
            found: None
        }
    );
    assert_eq!(store.read(inst[1].id()).unwrap(), None);
    let read = store.read(inst[0].id()).unwrap().unwrap();
    assert_eq!((read.version, &read.instance), (1, &inst[0]));

    // The right version goes through, then the next.
    commit(&store, &done, 1, n).unwrap();
    let read = store.read(inst[0].id()).unwrap().unwrap();
    assert_eq!((read.version, &read.instance), (2, &done));
    commit(&store, &done, 2, done.audit().len()).unwrap();
    let read = store.read(inst[0].id()).unwrap().unwrap();
    assert_eq!((read.version, &read.instance), (3, &done));
}

#[test]
fn definitions_are_idempotent_and_refuse_another_text() {
    let db = TempDb::new("definitions");
    let store = create(&db.0);
    store.save_definition(&def("b: 1", "b", 1)).unwrap();
    store.save_definition(&def("a: 2", "a", 2)).unwrap();
    store.save_definition(&def("a: 10", "a", 10)).unwrap();
    store.save_definition(&def("a: 1", "a", 1)).unwrap();
    store.save_definition(&def("a: 1", "a", 1)).unwrap();
    let e = store
        .save_definition(&def("a: changed", "a", 1))
        .unwrap_err();
    assert_eq!(
        e,
        StoreError::DefinitionChanged {
            key: DefKey {
                id: "a".into(),
                version: 1
            }
        }
    );
    drop(store);
    let store = SqliteStore::open(&db.0).unwrap();
    let keys: Vec<(String, u32, String)> = store
        .definitions()
        .unwrap()
        .into_iter()
        .map(|d| (d.key.id, d.key.version, d.text))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("a".into(), 1, "a: 1".into()),
            ("a".into(), 2, "a: 2".into()),
            ("a".into(), 10, "a: 10".into()),
            ("b".into(), 1, "b: 1".into()),
        ]
    );
}

#[test]
fn id_blocks_are_never_handed_out_twice_across_handles() {
    let db = TempDb::new("ids");
    let a = create(&db.0);
    let b = SqliteStore::open(&db.0).unwrap();
    assert_eq!(a.reserve_ids(10).unwrap(), 1);
    assert_eq!(b.reserve_ids(5).unwrap(), 11);
    assert_eq!(a.reserve_ids(0).unwrap(), 16);
    let mut blocks: Vec<(u64, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = [&a, &b]
            .into_iter()
            .enumerate()
            .map(|(i, store)| {
                s.spawn(move || {
                    (0..50)
                        .map(|k| {
                            let n = 1 + (k + i as u64) % 7;
                            (store.reserve_ids(n).unwrap(), n)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    blocks.sort();
    let mut next = 16;
    for (first, n) in &blocks {
        assert_eq!(*first, next, "blocks {blocks:?}");
        next = first + n;
    }
    drop((a, b));
    let c = SqliteStore::open(&db.0).unwrap();
    assert_eq!(c.reserve_ids(1).unwrap(), next);
}

#[test]
fn due_lists_running_instances_with_a_timer_due() {
    let db = TempDb::new("due");
    let (engine, clock) = engine();
    let inst = started(&engine, &clock, 3);
    let store = create(&db.0);
    for i in &inst {
        commit(&store, i, 0, 0).unwrap();
    }
    // Started at t0 + 1 s, 2 s, 3 s: claim deadlines 30 minutes later.
    let deadline = |k: i64| t0() + chrono::Duration::seconds(k) + chrono::Duration::minutes(30);
    assert_eq!(next_due(&inst[0]), Some(deadline(1)));
    assert_eq!(store.due(t0()).unwrap(), vec![]);
    assert_eq!(
        store
            .due(deadline(1) - chrono::Duration::milliseconds(1))
            .unwrap(),
        vec![]
    );
    assert_eq!(store.due(deadline(1)).unwrap(), vec![(inst[0].id(), 1)]);
    // A completed instance is not due, whatever it stored.
    let done = complete(&engine, inst[1].id());
    store
        .commit(&Commit {
            instance: &done,
            def: done.def().unwrap(),
            records: &done.audit()[inst[1].audit().len()..],
            first_record: inst[1].audit().len(),
            version: 1,
            next_due: Some(t0()),
            keys: None,
            offers: None,
            takes: None,
        })
        .unwrap();
    // No timer: not due.
    let n = inst[2].audit().len();
    store
        .commit(&Commit {
            instance: &inst[2],
            def: inst[2].def().unwrap(),
            records: &[],
            first_record: n,
            version: 1,
            next_due: None,
            keys: None,
            offers: None,
            takes: None,
        })
        .unwrap();
    let late = t0() + chrono::Duration::days(1);
    assert_eq!(store.due(late).unwrap(), vec![(inst[0].id(), 1)]);
    // A due instant with a fraction of a millisecond is never reported early.
    let odd = deadline(9) + chrono::Duration::microseconds(500);
    store
        .commit(&Commit {
            instance: &inst[2],
            def: inst[2].def().unwrap(),
            records: &[],
            first_record: n,
            version: 2,
            next_due: Some(odd),
            keys: None,
            offers: None,
            takes: None,
        })
        .unwrap();
    assert_eq!(store.due(deadline(9)).unwrap(), vec![(inst[0].id(), 1)]);
    assert_eq!(
        store
            .due(odd + chrono::Duration::microseconds(500))
            .unwrap(),
        vec![(inst[0].id(), 1), (inst[2].id(), 3)]
    );
}

#[test]
fn a_missing_file_is_missing_unless_created() {
    let db = TempDb::new("missing");
    let e = SqliteStore::open(&db.0).unwrap_err();
    assert_eq!(e, StoreError::Missing { path: db.0.clone() });
    assert!(!db.0.exists());
    create(&db.0);
    SqliteStore::open(&db.0).unwrap();
}

fn assert_corrupt(e: StoreError, path: &Path) {
    match e {
        StoreError::Corrupt { path: p, .. } => assert_eq!(p, path),
        e => panic!("expected Corrupt for {}, got {e:?}", path.display()),
    }
}

#[test]
fn a_garbage_file_is_corrupt() {
    let db = TempDb::new("garbage");
    let garbage: Vec<u8> = (0..20_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&db.0, &garbage).unwrap();
    assert_corrupt(SqliteStore::open(&db.0).unwrap_err(), &db.0);
    assert_corrupt(SqliteStore::create(&db.0).unwrap_err(), &db.0);
    assert_eq!(std::fs::read(&db.0).unwrap(), garbage);
    let e = SqliteStore::open(&db.0).unwrap_err().to_string();
    assert!(e.contains(&db.0.display().to_string()), "{e}");
}

#[test]
fn another_applications_database_is_corrupt_and_untouched() {
    let db = TempDb::new("foreign");
    {
        let conn = rusqlite::Connection::open(&db.0).unwrap();
        conn.execute_batch(
            "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);
             INSERT INTO customers (name) VALUES ('ann'), ('bob');",
        )
        .unwrap();
    }
    let before = std::fs::read(&db.0).unwrap();
    assert_corrupt(SqliteStore::open(&db.0).unwrap_err(), &db.0);
    assert_corrupt(SqliteStore::create(&db.0).unwrap_err(), &db.0);
    assert_eq!(std::fs::read(&db.0).unwrap(), before);

    // A meta table that is not procflow's.
    let other = TempDb::new("foreign-meta");
    {
        let conn = rusqlite::Connection::open(&other.0).unwrap();
        conn.execute_batch(
            "CREATE TABLE meta (key TEXT, value);
             INSERT INTO meta VALUES ('schema_version', 1);",
        )
        .unwrap();
    }
    let before = std::fs::read(&other.0).unwrap();
    assert_corrupt(SqliteStore::create(&other.0).unwrap_err(), &other.0);
    assert_eq!(std::fs::read(&other.0).unwrap(), before);
}

#[test]
fn a_newer_schema_is_refused() {
    let db = TempDb::new("newer");
    drop(create(&db.0));
    {
        let conn = rusqlite::Connection::open(&db.0).unwrap();
        conn.execute(
            "UPDATE meta SET value = 12 WHERE key = 'schema_version'",
            [],
        )
        .unwrap();
    }
    let e = SqliteStore::open(&db.0).unwrap_err();
    assert_eq!(
        e,
        StoreError::NewerSchema {
            path: db.0.clone(),
            found: 12,
            supported: 11
        }
    );
}

#[test]
fn a_file_locked_longer_than_the_busy_timeout_is_locked() {
    let db = TempDb::new("locked");
    let (engine, clock) = engine();
    let inst = started(&engine, &clock, 2);
    let store = create_impatient(&db.0);
    commit(&store, &inst[0], 0, 0).unwrap();

    // Another connection holds the write lock: writes wait, then fail; reads go on.
    let other = rusqlite::Connection::open(&db.0).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started_at = Instant::now();
    let e = commit(&store, &inst[1], 0, 0).unwrap_err();
    assert_eq!(e, StoreError::Locked { path: db.0.clone() });
    assert!(started_at.elapsed() >= Duration::from_millis(150));
    assert_eq!(
        store.reserve_ids(1).unwrap_err(),
        StoreError::Locked { path: db.0.clone() }
    );
    assert_eq!(store.running().unwrap().len(), 1);
    other.execute_batch("ROLLBACK").unwrap();
    commit(&store, &inst[1], 0, 0).unwrap();
    assert_eq!(store.running().unwrap().len(), 2);
    drop(store);

    // An exclusive lock keeps even readers (and so opening) out.
    other
        .execute_batch(
            "PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; \
             UPDATE counters SET value = value WHERE name = 'next_id';",
        )
        .unwrap();
    let e = SqliteStore::options()
        .busy_timeout(Duration::from_millis(100))
        .open(&db.0)
        .unwrap_err();
    assert_eq!(e, StoreError::Locked { path: db.0.clone() });
    other.execute_batch("COMMIT").unwrap();
    drop(other);
    let store = create(&db.0);
    assert_eq!(store.running().unwrap().len(), 2);
}

#[test]
fn a_full_disk_fails_the_commit_and_stores_nothing() {
    let db = TempDb::new("full");
    let (engine, clock) = engine();
    let inst = started(&engine, &clock, 400);
    let mut store = create(&db.0);
    commit(&store, &inst[0], 0, 0).unwrap();
    let size = std::fs::metadata(&db.0).unwrap().len();
    store.limit_size(size + 32 * 1024);
    let mut full_at = None;
    for (k, i) in inst.iter().enumerate().skip(1) {
        match commit(&store, i, 0, 0) {
            Ok(()) => {}
            Err(e) => {
                assert_eq!(e, StoreError::Full { path: db.0.clone() });
                full_at = Some(k);
                break;
            }
        }
    }
    let k = full_at.expect("the size limit was never reached");
    assert!(k > 1, "nothing fit");
    assert_eq!(store.read(inst[k].id()).unwrap(), None);
    assert_eq!(store.running().unwrap().len(), k);
    // Concurrent commits (grouped in batches) while full: each fails alone or is whole.
    let rest = &inst[k + 1..k + 1 + 8 * 10];
    let results: Vec<Result<(), StoreError>> = std::thread::scope(|s| {
        let handles: Vec<_> = rest
            .chunks(10)
            .map(|chunk| {
                let store = &store;
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|i| commit(store, i, 0, 0))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut stored = k;
    for (i, result) in rest.iter().zip(&results) {
        match result {
            Ok(()) => {
                stored += 1;
                assert_eq!(store.read(i.id()).unwrap().unwrap().instance, *i);
            }
            Err(e) => {
                assert_eq!(*e, StoreError::Full { path: db.0.clone() });
                assert_eq!(store.read(i.id()).unwrap(), None);
            }
        }
    }
    assert!(results.iter().any(|r| r.is_err()));
    assert_eq!(store.running().unwrap().len(), stored);
    // Still usable: updates that need no new page may go through, and more room helps.
    store.limit_size(1 << 30);
    commit(&store, &inst[k], 0, 0).unwrap();
    assert_eq!(store.running().unwrap().len(), stored + 1);
    drop(store);
    let reopened = SqliteStore::open(&db.0).unwrap();
    assert_eq!(reopened.running().unwrap().len(), stored + 1);
}

#[test]
fn a_v1_store_migrates_to_v2() {
    let db = TempDb::new("v1");
    let (engine, clock) = engine();
    let inst = started(&engine, &clock, 3);
    let done = complete(&engine, inst[1].id());
    let nanos = |i: &Instance| i.started_at().timestamp_nanos_opt().unwrap();
    // State as v1 wrote it: the instance without its audit trail.
    let state = |i: &Instance| {
        let mut v = serde_json::to_value(i).unwrap();
        v.as_object_mut().unwrap().remove("audit");
        v.to_string()
    };
    {
        let conn = rusqlite::Connection::open(&db.0).unwrap();
        conn.execute_batch(include_str!("fixtures/schema-v1.sql"))
            .unwrap();
        conn.execute(
            "INSERT INTO definitions (id, version, text) VALUES ('task', 1, ?1)",
            [TASK],
        )
        .unwrap();
        let rows = [(&inst[0], 1), (&done, 2), (&inst[2], 1)];
        for (i, version) in rows {
            conn.execute(
                "INSERT INTO instances \
                 (id, process, def_version, running, row_version, started_at, state) \
                 VALUES (?1, 'task', 1, ?2, ?3, ?4, ?5)",
                rusqlite::params![
                    i.id().get() as i64,
                    i.status() == Status::Running,
                    version,
                    nanos(i),
                    state(i)
                ],
            )
            .unwrap();
            // One records row per commit.
            let split = if version == 2 {
                inst[1].audit().len()
            } else {
                1
            };
            let audit = i.audit();
            for (first, batch) in [(0, &audit[..split]), (split, &audit[split..])] {
                if !batch.is_empty() {
                    conn.execute(
                        "INSERT INTO records (instance, first, batch) VALUES (?1, ?2, ?3)",
                        rusqlite::params![
                            i.id().get() as i64,
                            first as i64,
                            serde_json::to_string(batch).unwrap()
                        ],
                    )
                    .unwrap();
                }
            }
        }
    }
    let store = SqliteStore::open(&db.0).unwrap();
    assert_eq!(store.definitions().unwrap(), vec![def(TASK, "task", 1)]);
    assert_eq!(store.read(done.id()).unwrap().unwrap().instance, done);
    assert_eq!(store.read(done.id()).unwrap().unwrap().version, 2);
    let running: Vec<Instance> = store
        .running()
        .unwrap()
        .into_iter()
        .map(|s| s.instance)
        .collect();
    assert_eq!(running, vec![inst[0].clone(), inst[2].clone()]);
    assert_eq!(store.history(None, None).unwrap().len(), 3);
    // The due instants were computed from the stored timers.
    let late = t0() + chrono::Duration::days(1);
    assert_eq!(
        store.due(late).unwrap(),
        vec![(inst[0].id(), 1), (inst[2].id(), 1)]
    );
    assert_eq!(store.due(t0()).unwrap(), vec![]);
    // Stored before the store indexed offers (schema 9): the running instances may offer a
    // task to anyone, so that every work list reads them until a commit changes their offers.
    assert_eq!(
        store.offered(&[]).unwrap(),
        Some(vec![(inst[0].id(), 1), (inst[2].id(), 1)])
    );
    // A commit that says what the first one offers replaces its `*`.
    let r = procflow::Offer {
        role: procflow::RoleId::new("r"),
        unit: None,
    };
    store
        .commit(&Commit {
            instance: &inst[0],
            def: inst[0].def().unwrap(),
            records: &[],
            first_record: inst[0].audit().len(),
            version: 1,
            next_due: next_due(&inst[0]),
            keys: None,
            offers: Some(std::slice::from_ref(&r)),
            takes: None,
        })
        .unwrap();
    assert_eq!(store.offered(&[]).unwrap(), Some(vec![(inst[2].id(), 1)]));
    assert_eq!(
        store.offered(std::slice::from_ref(&r)).unwrap(),
        Some(vec![(inst[0].id(), 2), (inst[2].id(), 1)])
    );
    // The report facts were computed from the stored instances (schema 7): a report sums them
    // to what decoding the instances gives.
    let options = procflow::ReportOptions::default();
    let summed = procflow::Report::from_store(&store, &options).unwrap();
    assert_eq!(
        summed,
        procflow::Report::from_store_decoded(&store, &options).unwrap()
    );
    assert_eq!(
        (summed.processes[0].started, summed.processes[0].completed),
        (3, 1)
    );
    // Ids continue after the largest one v1 stored.
    assert_eq!(store.reserve_ids(1).unwrap(), inst[2].id().get() + 1);
    // And it keeps working as a v2 store.
    let done2 = complete(&engine, inst[2].id());
    commit(&store, &done2, 1, inst[2].audit().len()).unwrap();
    drop(store);
    let store = SqliteStore::open(&db.0).unwrap();
    assert_eq!(store.running().unwrap().len(), 1);
}

/// A store migrated to offers (schema 9) gets them from the engine, in batches and from `tick`.
#[test]
fn a_migrated_store_gets_its_offers_from_the_engine() {
    let db = TempDb::new("backfill");
    let path = db.0.clone();
    backfill::check(
        || Arc::new(SqliteStore::create(&db.0).unwrap()) as Arc<dyn procflow::Store>,
        || {
            // What the migration to schema 9 leaves.
            rusqlite::Connection::open(&path)
                .unwrap()
                .execute_batch(
                    "UPDATE instances SET offers = NULL; DELETE FROM offers; \
                     INSERT INTO offers (offer, instance) SELECT '*', id FROM instances \
                     WHERE running = 1;",
                )
                .unwrap();
        },
        t0(),
    );
}

/// An instance whose state no longer decodes keeps `*` and does not stop the backfill.
#[test]
fn the_offers_backfill_passes_an_instance_that_does_not_decode() {
    let db = TempDb::new("backfill-garbled");
    let (engine, clock) = engine();
    let inst = started(&engine, &clock, 3);
    let store = SqliteStore::create(&db.0).unwrap();
    store.save_definition(&def(TASK, "task", 1)).unwrap();
    for i in &inst {
        commit(&store, i, 0, 0).unwrap();
    }
    drop(store);
    let conn = rusqlite::Connection::open(&db.0).unwrap();
    conn.execute_batch(
        "UPDATE instances SET offers = NULL; DELETE FROM offers; \
         INSERT INTO offers (offer, instance) SELECT '*', id FROM instances WHERE running = 1;",
    )
    .unwrap();
    conn.execute(
        "UPDATE instances SET state = '{\"garbled\": true}' WHERE id = ?1",
        [inst[0].id().get() as i64],
    )
    .unwrap();
    drop(conn);
    let store = Arc::new(SqliteStore::open(&db.0).unwrap());
    let unoffered = store.unoffered(None, 10).unwrap();
    let ids: Vec<_> = unoffered.iter().map(|s| s.instance.id()).collect();
    assert_eq!(ids, [inst[1].id(), inst[2].id()]);
    // A batch of one whose first row does not decode gives the next instead: damaged rows
    // cannot end a backfill early.
    let one: Vec<_> = store
        .unoffered(None, 1)
        .unwrap()
        .iter()
        .map(|s| s.instance.id())
        .collect();
    assert_eq!(one, [inst[1].id()]);
    // With a bounded cache, opening reads no instance (without one it would fail on it).
    let mut config = procflow::Config::default();
    config.cache = Some(64);
    let reopened = procflow::Engine::builder()
        .config(config)
        .open(Arc::clone(&store) as Arc<dyn procflow::Store>)
        .unwrap();
    assert_eq!(reopened.backfill_offers(10).unwrap(), 2);
    assert_eq!(reopened.backfill_offers(10).unwrap(), 0);
    let left: Vec<_> = store
        .offered(&[])
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(left, [inst[0].id()], "it keeps `*`");
}

/// A store of schema version 4 (records keyed by instance and position, without rowid) moves to
/// version 5 (records appended under a sequence, with an index by instance and position) and on
/// to 6 (the outbox index), 7 (the report facts) and 8 (the batches linked from the instance
/// instead of indexed) when
/// opened: every audit trail reads back whole and in order, whatever order its rows were
/// written in, and the store goes on storing commits.
#[test]
fn a_v4_store_migrates_to_v6() {
    let db = TempDb::new("v4");
    let (engine, clock) = engine();
    let inst = started(&engine, &clock, 4);
    let done: Vec<Instance> = [1, 3]
        .iter()
        .map(|&k| complete(&engine, inst[k].id()))
        .collect();
    let nanos = |i: &Instance| i.started_at().timestamp_nanos_opt().unwrap();
    // (instance state, its version, where its second records row starts)
    let rows = [
        (&inst[0], 1, None),
        (&done[0], 2, Some(inst[1].audit().len())),
        (&inst[2], 1, None),
        (&done[1], 2, Some(inst[3].audit().len())),
    ];
    {
        let conn = rusqlite::Connection::open(&db.0).unwrap();
        conn.execute_batch(include_str!("fixtures/schema-v4.sql"))
            .unwrap();
        conn.execute(
            "INSERT INTO definitions (id, version, text) VALUES ('task', 1, ?1)",
            [TASK],
        )
        .unwrap();
        let mut batches = Vec::new();
        for (i, version, split) in rows {
            conn.execute(
                "INSERT INTO instances \
                 (id, process, def_version, running, row_version, started_at, state) \
                 VALUES (?1, 'task', 1, ?2, ?3, ?4, ?5)",
                rusqlite::params![
                    i.id().get() as i64,
                    i.status() == Status::Running,
                    version as i64,
                    nanos(i),
                    i.encode()
                ],
            )
            .unwrap();
            let audit = i.audit();
            let split = split.unwrap_or(audit.len());
            for (first, batch) in [(0, &audit[..split]), (split, &audit[split..])] {
                if !batch.is_empty() {
                    batches.push((
                        i.id().get() as i64,
                        first as i64,
                        Record::encode_batch(batch),
                    ));
                }
            }
        }
        // The later commits first, as a store written in a scattered order holds them.
        batches.reverse();
        for (id, first, batch) in batches {
            conn.execute(
                "INSERT INTO records (instance, first, batch) VALUES (?1, ?2, ?3)",
                rusqlite::params![id, first, batch],
            )
            .unwrap();
        }
        conn.execute(
            "UPDATE counters SET value = ?1 WHERE name = 'next_id'",
            [inst[3].id().get() as i64 + 1],
        )
        .unwrap();
    }
    let store = SqliteStore::open(&db.0).unwrap();
    for (i, version, _) in rows {
        let stored = store.read(i.id()).unwrap().unwrap();
        assert_eq!(&stored.instance, i);
        assert_eq!(stored.version, version);
    }
    let running: Vec<Instance> = store
        .running()
        .unwrap()
        .into_iter()
        .map(|s| s.instance)
        .collect();
    assert_eq!(running, vec![inst[0].clone(), inst[2].clone()]);
    assert_eq!(store.history(None, None).unwrap().len(), 4);
    // It goes on as a version 8 store: a commit appends its records after the migrated ones.
    let done2 = complete(&engine, inst[0].id());
    commit(&store, &done2, 1, inst[0].audit().len()).unwrap();
    assert_eq!(store.read(inst[0].id()).unwrap().unwrap().instance, done2);
    drop(store);
    {
        let conn = rusqlite::Connection::open(&db.0).unwrap();
        let version: i64 = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(version, 11);
        // Schema 8: each batch links to the one before it of its instance, the instance to its
        // newest, and no index by (instance, position) is left.
        let links: Vec<(i64, i64, Option<i64>)> = conn
            .prepare(
                "SELECT r.instance, r.first, p.first FROM records r \
                 LEFT JOIN records p ON p.seq = r.prev ORDER BY r.instance, r.first",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for (k, (instance, first, prev)) in links.iter().enumerate() {
            let before = k
                .checked_sub(1)
                .map(|j| links[j])
                .filter(|l| l.0 == *instance)
                .map(|l| l.1);
            assert_eq!(*prev, before, "the batch at {first} of i{instance}");
        }
        let newest: i64 = conn
            .query_row(
                "SELECT count(*) FROM instances i JOIN records r ON r.seq = i.last_batch \
                 WHERE r.instance = i.id AND r.first = \
                 (SELECT max(first) FROM records WHERE instance = i.id)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(newest, 4);
        let indexes: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name IN \
                 ('records_instance', 'report_facts_groups')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 0);
        // The rows were copied in (instance, position) order; the new one came last.
        let order: Vec<(i64, i64)> = conn
            .prepare("SELECT instance, first FROM records ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let id = |k: usize| inst[k].id().get() as i64;
        let len = |k: usize| inst[k].audit().len() as i64;
        assert_eq!(
            order,
            vec![
                (id(0), 0),
                (id(1), 0),
                (id(1), len(1)),
                (id(2), 0),
                (id(3), 0),
                (id(3), len(3)),
                (id(0), len(0)),
            ]
        );
    }
    let store = SqliteStore::open(&db.0).unwrap();
    assert_eq!(store.running().unwrap().len(), 1);
    assert_eq!(store.read(inst[0].id()).unwrap().unwrap().instance, done2);
}

/// A small deterministic generator (xorshift64*), so damaged copies are the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn damaged_copies_give_errors_not_panics() {
    let db = TempDb::new("damaged-original");
    let (engine, clock) = engine();
    let inst = started(&engine, &clock, 30);
    {
        let store = create(&db.0);
        store.save_definition(&def(TASK, "task", 1)).unwrap();
        for i in &inst {
            commit(&store, i, 0, 0).unwrap();
        }
        for i in inst.iter().step_by(3) {
            let done = complete(&engine, i.id());
            commit(&store, &done, 1, i.audit().len()).unwrap();
        }
        store.reserve_ids(100).unwrap();
    }
    let original = std::fs::read(&db.0).unwrap();
    assert!(original.len() > 4096);
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let (mut ok, mut err) = (0, 0);
    for copy in 0..200 {
        let mut bytes = original.clone();
        match copy % 4 {
            0 => {
                for _ in 0..1 + rng.below(8) {
                    let at = rng.below(bytes.len());
                    bytes[at] ^= 1 << rng.below(8);
                }
            }
            1 => bytes.truncate(rng.below(original.len())),
            2 => {
                let at = rng.below(bytes.len());
                let end = (at + 1 + rng.below(1024)).min(bytes.len());
                let fill = rng.next() as u8;
                bytes[at..end].fill(fill);
            }
            _ => {
                // Within the first pages: the header and the schema.
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(4096.min(bytes.len()));
                    bytes[at] = rng.next() as u8;
                }
            }
        }
        let damaged = TempDb::new("damaged");
        std::fs::write(&damaged.0, &bytes).unwrap();
        let outcome = SqliteStore::options()
            .busy_timeout(Duration::from_millis(50))
            .open(&damaged.0)
            .and_then(|store| {
                store.definitions()?;
                store.running()?;
                store.history(None, None)?;
                store.due(t0() + chrono::Duration::days(1))?;
                for i in inst.iter().take(5) {
                    store.read(i.id())?;
                }
                store.reserve_ids(1)?;
                Ok(())
            });
        match outcome {
            Ok(()) => ok += 1,
            Err(e) => {
                let text = e.to_string();
                assert!(
                    text.contains(&damaged.0.display().to_string()),
                    "an error without the file: {text}"
                );
                err += 1;
            }
        }
    }
    eprintln!("damaged copies: {ok} read fine, {err} gave an error");
    assert_eq!(ok + err, 200);
    assert!(err > 0, "no damage detected at all");
}

/// One thread's results: its own starts, whether it won each shared start, its stale update.
type ThreadResults = (Vec<Result<(), StoreError>>, Vec<bool>, StoreError);

#[test]
fn group_commit_gives_each_commit_its_own_result() {
    const THREADS: usize = 16;
    const EACH: usize = 12;
    let (engine, clock) = engine();
    let own = started(&engine, &clock, THREADS * EACH);
    let shared = started(&engine, &clock, EACH);
    for group in [true, false] {
        let db = TempDb::new("group");
        let store = SqliteStore::options()
            .durability(Durability::Process)
            .group_commit(group)
            .create(&db.0)
            .unwrap();
        let began = Instant::now();
        // Every thread commits its own starts, a start of each shared instance (one of the 16
        // wins each), and a stale update of its first instance (always a conflict).
        let results: Vec<ThreadResults> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (store, own, shared) = (&store, &own, &shared);
                    s.spawn(move || {
                        let mine = &own[t * EACH..(t + 1) * EACH];
                        let mut results = Vec::new();
                        let mut won = Vec::new();
                        for (i, s) in mine.iter().zip(shared) {
                            results.push(commit(store, i, 0, 0));
                            match commit(store, s, 0, 0) {
                                Ok(()) => won.push(true),
                                Err(StoreError::Conflict {
                                    expected: 0,
                                    found: Some(1),
                                    ..
                                }) => won.push(false),
                                Err(e) => panic!("unexpected {e:?}"),
                            }
                        }
                        let stale = commit(store, &mine[0], 5, 0).unwrap_err();
                        (results, won, stale)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let elapsed = began.elapsed();
        for (t, (own_results, _, stale)) in results.iter().enumerate() {
            assert!(own_results.iter().all(|r| r.is_ok()), "{own_results:?}");
            assert_eq!(
                *stale,
                StoreError::Conflict {
                    instance: own[t * EACH].id(),
                    expected: 5,
                    found: Some(1)
                }
            );
        }
        for k in 0..EACH {
            let winners = results.iter().filter(|(_, won, _)| won[k]).count();
            assert_eq!(winners, 1, "shared instance {k}");
        }
        assert_eq!(store.running().unwrap().len(), THREADS * EACH + EACH);
        for i in own.iter().chain(&shared) {
            let read = store.read(i.id()).unwrap().unwrap();
            assert_eq!((read.version, &read.instance), (1, i));
        }
        eprintln!(
            "group commit {group}: {} commits from {THREADS} threads in {elapsed:?}",
            THREADS * EACH * 2 + THREADS
        );
    }
}

/// Many running instances reload quickly. Debug builds use a small count; release builds the
/// full 100,000 (`cargo test --release --test store_sqlite -- --nocapture reload`).
#[test]
fn reload_many_running_instances() {
    let n = if cfg!(debug_assertions) {
        2_000
    } else {
        100_000
    };
    let db = TempDb::new("reload");
    let (engine, clock) = engine();
    {
        let store = SqliteStore::options()
            .durability(Durability::Process)
            .create(&db.0)
            .unwrap();
        let mut firsts = Vec::with_capacity(n);
        let began = Instant::now();
        for _ in 0..n {
            clock.advance(chrono::Duration::milliseconds(10));
            let id = engine.start("task", Vars::new()).unwrap();
            let inst = engine.remove(id).unwrap();
            let split = inst.audit().len().min(1);
            store
                .commit(&Commit {
                    instance: &inst,
                    def: inst.def().unwrap(),
                    records: &inst.audit()[..split],
                    first_record: 0,
                    version: 0,
                    next_due: next_due(&inst),
                    keys: None,
                    offers: None,
                    takes: None,
                })
                .unwrap();
            firsts.push(inst);
        }
        let starts = began.elapsed();
        let began = Instant::now();
        for (version, from) in [(1, 1), (2, 2)] {
            for inst in &firsts {
                let from = from.min(inst.audit().len());
                let to = (from + 1).min(inst.audit().len()).max(from);
                let to = if version == 2 { inst.audit().len() } else { to };
                store
                    .commit(&Commit {
                        instance: inst,
                        def: inst.def().unwrap(),
                        records: &inst.audit()[from..to],
                        first_record: from,
                        version,
                        next_due: next_due(inst),
                        keys: None,
                        offers: None,
                        takes: None,
                    })
                    .unwrap();
            }
        }
        eprintln!(
            "{n} starts in {starts:?} ({:.0}/s), {} updates in {:?}",
            n as f64 / starts.as_secs_f64(),
            2 * n,
            began.elapsed()
        );
    }
    let began = Instant::now();
    let store = SqliteStore::open(&db.0).unwrap();
    let running = store.running().unwrap();
    let elapsed = began.elapsed();
    eprintln!("reopen and running() of {n} instances: {elapsed:?}");
    assert_eq!(running.len(), n);
    assert!(running.iter().all(|s| s.version == 3));
    if !cfg!(debug_assertions) {
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    }
}

/// An engine on the store with [`TASK`] deployed.
fn engine_on(store: SqliteStore) -> Engine {
    let mut b = Engine::builder();
    b.clock(Arc::new(ManualClock::new(t0())));
    let engine = b.open(store).unwrap();
    engine.deploy(ProcessDef::from_yaml(TASK).unwrap()).unwrap();
    engine
}

/// The error of a store whose file was replaced (or its log deleted) while open. (`Other` until
/// `StoreError` has a variant of its own for a file that is gone.)
fn assert_replaced(e: &StoreError, path: &Path) {
    match e {
        StoreError::Moved { path: p, .. } if p == path => {}
        e => panic!(
            "expected the replaced-file error for {}, got {e:?}",
            path.display()
        ),
    }
}

/// Issue 11: deleting the store's file while the engine runs. Before, the next 50 calls
/// returned `Ok` (committed to the deleted file) and were gone at the restart; now each fails,
/// and closing does not bring the file back.
#[test]
fn deleting_the_file_while_open_fails_every_later_call() {
    for (also_logs, group) in [(false, true), (true, true), (false, false)] {
        let db = TempDb::new("deleted");
        let store = SqliteStore::options()
            .group_commit(group)
            .create(&db.0)
            .unwrap();
        let engine = engine_on(store);
        for _ in 0..20 {
            engine.start("task", Vars::new()).unwrap();
        }
        std::fs::remove_file(&db.0).unwrap();
        if also_logs {
            std::fs::remove_file(beside(&db.0, "-wal")).unwrap();
            std::fs::remove_file(beside(&db.0, "-shm")).unwrap();
        }
        let missing = StoreError::Moved {
            path: db.0.clone(),
            what: "the store file",
            how: "deleted",
        };
        for k in 0..50 {
            match engine.start("task", Vars::new()) {
                Err(ExecError::Store(e)) => assert_eq!(e, missing, "call {k}"),
                other => panic!("call {k} after the deletion: {other:?}"),
            }
        }
        drop(engine);
        assert!(!db.0.exists(), "closing the store made a file again");
        assert_eq!(
            SqliteStore::open(&db.0).unwrap_err(),
            StoreError::Missing { path: db.0.clone() }
        );
        // Its log is not left at the path, where SQLite would replay it into the next store.
        assert!(
            !beside(&db.0, "-wal").exists(),
            "the deleted store's log is left"
        );
        let next = create(&db.0);
        assert!(next.running().unwrap().is_empty());
        assert!(next.definitions().unwrap().is_empty());
    }
}

/// A log left at a path without its file (a store deleted while open, killed before it took
/// its log away) is not replayed into a new store there: creating one is refused.
#[test]
fn an_orphaned_log_keeps_a_new_store_from_being_created() {
    let db = TempDb::new("orphan-source");
    let orphan = TempDb::new("orphan");
    let (engine, clock) = engine();
    let inst = started(&engine, &clock, 3);
    let store = create(&db.0);
    for i in &inst {
        commit(&store, i, 0, 0).unwrap();
    }
    std::fs::copy(beside(&db.0, "-wal"), beside(&orphan.0, "-wal")).unwrap();
    let before = snapshot(&orphan.0);
    match SqliteStore::create(&orphan.0).unwrap_err() {
        StoreError::Other { path, detail } => {
            assert_eq!(path, orphan.0);
            assert!(detail.contains("-wal"), "{detail}");
        }
        e => panic!("expected Other, got {e:?}"),
    }
    assert_untouched(&orphan.0, &before);
}

/// Every kind of call stops, reads included, and the first commit after the deletion already
/// fails (no stat is skipped).
#[test]
fn a_deleted_file_stops_reads_definitions_and_id_blocks() {
    let db = TempDb::new("deleted-calls");
    let (engine, clock) = engine();
    let inst = started(&engine, &clock, 3);
    let store = create(&db.0);
    commit(&store, &inst[0], 0, 0).unwrap();
    std::fs::remove_file(&db.0).unwrap();
    let missing = StoreError::Moved {
        path: db.0.clone(),
        what: "the store file",
        how: "deleted",
    };
    assert_eq!(commit(&store, &inst[1], 0, 0).unwrap_err(), missing);
    assert_eq!(
        store.save_definition(&def(TASK, "task", 1)).unwrap_err(),
        missing
    );
    assert_eq!(store.reserve_ids(10).unwrap_err(), missing);
    assert_eq!(store.read(inst[0].id()).unwrap_err(), missing);
    assert_eq!(store.running().unwrap_err(), missing);
    assert_eq!(store.history(None, None).unwrap_err(), missing);
    assert_eq!(store.due(t0()).unwrap_err(), missing);
    assert_eq!(store.definitions().unwrap_err(), missing);
    // Also once a file is back at the path: it is not the store's, and the first error stays.
    drop(create(&db.0));
    assert_eq!(commit(&store, &inst[2], 0, 0).unwrap_err(), missing);
    assert_eq!(store.read(inst[0].id()).unwrap_err(), missing);
}

/// Deleting only the `-wal` file: the commits since the last checkpoint live on in the log the
/// store still has open, so further commits (lost with it at a crash) are refused, and closing
/// the store checkpoints what was acknowledged into the file.
#[test]
fn a_deleted_log_fails_later_commits_and_keeps_the_acknowledged_ones() {
    let db = TempDb::new("deleted-wal");
    let (engine, clock) = engine();
    let inst = started(&engine, &clock, 30);
    let store = create(&db.0);
    for i in &inst[..20] {
        commit(&store, i, 0, 0).unwrap();
    }
    std::fs::remove_file(beside(&db.0, "-wal")).unwrap();
    for i in &inst[20..] {
        assert_replaced(&commit(&store, i, 0, 0).unwrap_err(), &db.0);
    }
    drop(store);
    let reopened = SqliteStore::open(&db.0).unwrap();
    let ids: Vec<InstanceId> = reopened
        .running()
        .unwrap()
        .iter()
        .map(|s| s.instance.id())
        .collect();
    assert_eq!(ids, inst[..20].iter().map(|i| i.id()).collect::<Vec<_>>());
}

/// Another store file moved over the open store's path: the open store stops (its commits would
/// go to the file that was replaced), and closing it leaves the new file intact.
#[test]
fn replacing_the_file_while_open_fails_every_later_call() {
    let db = TempDb::new("replaced");
    let other = TempDb::new("replacement");
    let (engine, clock) = engine();
    let inst = started(&engine, &clock, 9);
    let store = create(&db.0);
    for i in &inst[..3] {
        commit(&store, i, 0, 0).unwrap();
    }
    {
        let replacement = create(&other.0);
        for i in &inst[3..6] {
            commit(&replacement, i, 0, 0).unwrap();
        }
    }
    std::fs::rename(&other.0, &db.0).unwrap();
    for i in &inst[6..] {
        assert_replaced(&commit(&store, i, 0, 0).unwrap_err(), &db.0);
    }
    assert_replaced(&store.running().unwrap_err(), &db.0);
    assert_replaced(&store.reserve_ids(1).unwrap_err(), &db.0);
    drop(store);
    // The file at the path is the replacement, whole, and none of the old store's log was
    // replayed into it.
    {
        let conn = rusqlite::Connection::open(&db.0).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }
    let reopened = SqliteStore::open(&db.0).unwrap();
    let ids: Vec<InstanceId> = reopened
        .running()
        .unwrap()
        .iter()
        .map(|s| s.instance.id())
        .collect();
    assert_eq!(ids, inst[3..6].iter().map(|i| i.id()).collect::<Vec<_>>());
    commit(&reopened, &inst[6], 0, 0).unwrap();
}

/// A store deleted with its `-wal` and `-shm` files while open, and a new store created at the
/// path: closing the old store must not checkpoint and delete the `-wal` and `-shm` files now at
/// the path, which are the new store's (SQLite deletes them by name).
#[test]
fn closing_a_deleted_store_leaves_the_new_stores_log_alone() {
    let db = TempDb::new("recreated");
    let (engine, clock) = engine();
    let inst = started(&engine, &clock, 6);
    let old = create(&db.0);
    for i in &inst[..3] {
        commit(&old, i, 0, 0).unwrap();
    }
    remove(&db.0);
    let new = create(&db.0);
    for i in &inst[3..] {
        commit(&new, i, 0, 0).unwrap();
    }
    assert_replaced(&commit(&old, &inst[0], 1, 0).unwrap_err(), &db.0);
    drop(old);
    assert!(
        beside(&db.0, "-wal").exists(),
        "the new store's log was deleted"
    );
    // A third handle (the new store still open) sees the new store's commits, which are only in
    // its log so far.
    let third = SqliteStore::open(&db.0).unwrap();
    assert_eq!(third.running().unwrap().len(), 3);
    drop(new);
    drop(third);
    let reopened = SqliteStore::open(&db.0).unwrap();
    let ids: Vec<InstanceId> = reopened
        .running()
        .unwrap()
        .iter()
        .map(|s| s.instance.id())
        .collect();
    assert_eq!(ids, inst[3..].iter().map(|i| i.id()).collect::<Vec<_>>());
}

/// Issue 11: a 0-byte file was taken as a new store (and `procflow report` on it printed an
/// empty report and exited 0). A store is created only where no file exists.
#[test]
fn an_empty_file_is_not_a_store_and_is_left_untouched() {
    let db = TempDb::new("empty");
    std::fs::write(&db.0, b"").unwrap();
    let before = snapshot(&db.0);
    assert_corrupt(SqliteStore::open(&db.0).unwrap_err(), &db.0);
    assert_corrupt(SqliteStore::create(&db.0).unwrap_err(), &db.0);
    assert_untouched(&db.0, &before);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_procflow"))
        .arg("report")
        .arg("--store")
        .arg(&db.0)
        .output()
        .unwrap();
    assert!(!out.status.success(), "procflow report exited 0");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&db.0.display().to_string()), "{stderr}");
    assert_untouched(&db.0, &before);
}

/// SQLite databases without procflow's schema are refused and left as they are, also empty
/// ones (in either journal mode) and ones another application marked as its own.
#[test]
fn another_applications_empty_or_marked_database_is_not_a_store() {
    let setups: [(&str, &str); 3] = [
        ("rollback-empty", "PRAGMA user_version = 7;"),
        (
            "wal-empty",
            "PRAGMA journal_mode = WAL; PRAGMA user_version = 7;",
        ),
        (
            "marked",
            "PRAGMA application_id = 1234; CREATE TABLE meta (key TEXT PRIMARY KEY, value); \
             INSERT INTO meta VALUES ('application', 'procflow'), ('schema_version', 2);",
        ),
    ];
    for (name, sql) in setups {
        let db = TempDb::new(name);
        rusqlite::Connection::open(&db.0)
            .unwrap()
            .execute_batch(sql)
            .unwrap();
        let before = snapshot(&db.0);
        assert!(
            before[0].1.as_ref().is_some_and(|b| !b.is_empty()),
            "{name}"
        );
        for e in [
            SqliteStore::open(&db.0).unwrap_err(),
            SqliteStore::create(&db.0).unwrap_err(),
        ] {
            if name == "marked" {
                let text = e.to_string();
                assert!(text.contains("application_id"), "{text}");
            }
            assert_corrupt(e, &db.0);
        }
        assert_untouched(&db.0, &before);
    }
}

/// Another application's WAL-mode database with data only in its `-wal` file (a copy of the
/// database and its log, as a backup has them). Before, the failed open checkpointed the log
/// into the database and deleted it (and SQLite left a `-shm` file); now the file, the log and
/// the index are left byte for byte, with and without an index, and with the application still
/// running.
#[test]
fn a_foreign_wal_database_and_its_log_are_left_untouched() {
    for case in [
        "no index",
        "with index",
        "tables in the file too",
        "running",
    ] {
        let source = TempDb::new("foreign-wal-source");
        let conn = rusqlite::Connection::open(&source.0).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
             CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);",
        )
        .unwrap();
        if case == "tables in the file too" {
            conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
                .unwrap();
        }
        conn.execute_batch("INSERT INTO customers (name) VALUES ('ann'), ('bob');")
            .unwrap();
        let copy = TempDb::new("foreign-wal");
        let db = if case == "running" {
            source.0.clone()
        } else {
            std::fs::copy(&source.0, &copy.0).unwrap();
            std::fs::copy(beside(&source.0, "-wal"), beside(&copy.0, "-wal")).unwrap();
            if case == "with index" {
                std::fs::copy(beside(&source.0, "-shm"), beside(&copy.0, "-shm")).unwrap();
            }
            copy.0.clone()
        };
        let before = snapshot(&db);
        assert!(
            before[1].1.as_ref().is_some_and(|b| b.len() > 32),
            "{case}: no log"
        );
        for e in [
            SqliteStore::open(&db).unwrap_err(),
            SqliteStore::create(&db).unwrap_err(),
        ] {
            assert_corrupt(e, &db);
        }
        if case == "running" {
            // The running application's index is SQLite's to change; file and log are not.
            assert_untouched(&db, &before[..2]);
        } else {
            assert_untouched(&db, &before);
        }
        // The data is intact, read through the log.
        let reader = rusqlite::Connection::open(&db).unwrap();
        let rows: i64 = reader
            .query_row("SELECT count(*) FROM customers", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 2, "{case}");
        drop(reader);
        conn.execute("INSERT INTO customers (name) VALUES ('cy')", [])
            .unwrap();
    }
}

/// The schema-v1 fixture written the way a running older procflow leaves a store: in WAL mode,
/// everything still in the log, no application id.
fn old_store_in_its_log(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;")
        .unwrap();
    conn.execute_batch(include_str!("fixtures/schema-v1.sql"))
        .unwrap();
    conn.execute(
        "INSERT INTO definitions (id, version, text) VALUES ('task', 1, ?1)",
        [TASK],
    )
    .unwrap();
    conn
}

fn application_id(path: &Path) -> i64 {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row("PRAGMA application_id", [], |row| row.get(0))
        .unwrap()
}

/// Stores of older builds have no application id and may have their tables only in their log:
/// they are recognised from the log (the running store's, or a copy's without an index), opened,
/// migrated, and marked; new stores are marked from the start.
#[test]
fn older_stores_are_recognised_from_their_log_and_marked() {
    const PROCFLOW: i64 = 0x5046_6C77;
    for case in ["running", "copy without index"] {
        let source = TempDb::new("old-source");
        let conn = old_store_in_its_log(&source.0);
        let copy = TempDb::new("old-copy");
        let db = if case == "running" {
            source.0.clone()
        } else {
            std::fs::copy(&source.0, &copy.0).unwrap();
            std::fs::copy(beside(&source.0, "-wal"), beside(&copy.0, "-wal")).unwrap();
            copy.0.clone()
        };
        let store = SqliteStore::open(&db).unwrap();
        assert_eq!(
            store.definitions().unwrap(),
            vec![def(TASK, "task", 1)],
            "{case}"
        );
        assert_eq!(store.reserve_ids(1).unwrap(), 1, "{case}");
        drop(store);
        drop(conn);
        assert_eq!(application_id(&db), PROCFLOW, "{case}");
        SqliteStore::open(&db).unwrap();
    }
    let db = TempDb::new("marked");
    drop(create(&db.0));
    assert_eq!(application_id(&db.0), PROCFLOW);
}

/// Processes (here threads) creating one store at once all open the same store, and no
/// temporary file is left beside it.
#[test]
fn concurrent_creators_open_one_store() {
    const CREATORS: usize = 8;
    let db = TempDb::new("concurrent-create");
    let (engine, clock) = engine();
    let inst = started(&engine, &clock, CREATORS);
    let barrier = std::sync::Barrier::new(CREATORS);
    std::thread::scope(|s| {
        for i in &inst {
            let (barrier, path) = (&barrier, &db.0);
            s.spawn(move || {
                barrier.wait();
                let store = SqliteStore::create(path).unwrap();
                commit(&store, i, 0, 0).unwrap();
            });
        }
    });
    let store = SqliteStore::open(&db.0).unwrap();
    assert_eq!(store.running().unwrap().len(), CREATORS);
    let name = db.0.file_name().unwrap().to_string_lossy().into_owned();
    let left: Vec<String> = std::fs::read_dir(db.0.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with(&format!(".{name}")))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

/// The backup the README recommends while engines run: `VACUUM INTO` gives one consistent file,
/// the commits still in the log included, which opens as a store.
#[test]
fn a_vacuum_into_backup_of_a_running_store_opens() {
    let db = TempDb::new("backup-source");
    let backup = TempDb::new("backup");
    let (engine, clock) = engine();
    let inst = started(&engine, &clock, 5);
    let store = create(&db.0);
    store.save_definition(&def(TASK, "task", 1)).unwrap();
    for i in &inst {
        commit(&store, i, 0, 0).unwrap();
    }
    assert!(std::fs::metadata(beside(&db.0, "-wal")).unwrap().len() > 0);
    rusqlite::Connection::open(&db.0)
        .unwrap()
        .execute("VACUUM INTO ?1", [backup.0.to_str().unwrap()])
        .unwrap();
    commit(
        &store,
        &complete(&engine, inst[0].id()),
        1,
        inst[0].audit().len(),
    )
    .unwrap();
    let restored = SqliteStore::open(&backup.0).unwrap();
    assert_eq!(restored.definitions().unwrap(), vec![def(TASK, "task", 1)]);
    assert_eq!(restored.running().unwrap().len(), 5);
}

/// Marking an older store with the application id is a write, but opening one never waits for
/// it: while another process holds the write lock the store opens unmarked (as before the id),
/// and the next open marks it.
#[test]
fn marking_an_older_store_never_holds_up_opening_it() {
    let db = TempDb::new("unmarked");
    drop(create(&db.0));
    let other = rusqlite::Connection::open(&db.0).unwrap();
    other.execute_batch("PRAGMA application_id = 0;").unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let began = Instant::now();
    let store = SqliteStore::options()
        .busy_timeout(Duration::from_secs(5))
        .open(&db.0)
        .unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );
    assert!(store.definitions().unwrap().is_empty());
    other.execute_batch("ROLLBACK").unwrap();
    drop(other);
    drop(store);
    assert_eq!(application_id(&db.0), 0);
    drop(SqliteStore::open(&db.0).unwrap());
    assert_eq!(application_id(&db.0), 0x5046_6C77);
}
