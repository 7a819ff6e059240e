//! Three engine replicas in three OS processes on one store (this test binary runs itself as
//! each replica), on a SQLite file opened as shared (`SqliteOptions::shared`) and on a
//! PostgreSQL database: concurrent starts and completions, then concurrent ticks; concurrent
//! messages to instances other replicas started; a replica killed at random moments. On
//! PostgreSQL also: the server restarted while they run; a replica that dies between a commit
//! and its follow-ups; a timer armed on one replica waking another. Every acknowledged call is
//! stored once, each due timer fires in exactly one replica, each message is received once.
//!
//! PostgreSQL needs the feature `postgres` and a server: see tests/common/pg.rs (skipped,
//! saying why, when none is found).

#[path = "common/counted.rs"]
mod counted;
#[cfg(feature = "postgres")]
#[path = "common/pg.rs"]
mod pg;

use std::process::{Command, Stdio};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use std::sync::atomic::{AtomicUsize, Ordering};

#[cfg(feature = "postgres")]
use procflow::PostgresStore;
use procflow::{
    Actor, Clock, Engine, InstanceId, ManualClock, ProcessDef, SqliteStore, Status, Store, Vars,
};

const FLOW: &str = r#"
id: flow
version: 1
name: Flow
roles: { agent: { name: Agent } }
nodes:
  start: { kind: start, next: work }
  work: { kind: user_task, name: Work, raci: { responsible: [agent], accountable: agent }, next: pause }
  pause: { kind: timer, wait: 1h, next: done }
  done: { kind: end }
"#;

const PER_REPLICA: usize = 30;

fn t0() -> DateTime<Utc> {
    "2026-11-23T09:00:00Z".parse().unwrap()
}

/// Orders waiting for two messages at once, each correlated by the order's key.
const ORDER: &str = r#"
id: order
version: 1
name: Order
variables:
  order_id: { type: string }
  paid: { type: string }
  shipped: { type: string }
keys: [order_id]
messages:
  paid: { payload: [order_id, paid], correlate: { order_id: order_id } }
  shipped: { payload: [order_id, shipped], correlate: { order_id: order_id } }
nodes:
  start: { kind: start, next: fork }
  fork: { kind: parallel, next: [pay, ship] }
  pay: { kind: catch, message: paid, next: join }
  ship: { kind: catch, message: shipped, next: join }
  join: { kind: parallel, next: end }
  end: { kind: end }
"#;

/// A task whose completion tells an informed role (a follow-up in the outbox).
const TOLD: &str = r#"
id: told
version: 1
name: Told
roles: { agent: { name: Agent }, boss: { name: Boss } }
nodes:
  start: { kind: start, next: work }
  work: { kind: user_task, name: Work, raci: { responsible: [agent], accountable: agent, informed: [boss] }, next: done }
  done: { kind: end }
"#;

/// A reply that comes before its order starts is kept for an hour (`keep_for`).
const LATE: &str = r#"
id: late
version: 1
name: Late
variables: { order_id: { type: string }, answer: { type: string } }
keys: [order_id]
messages:
  reply: { payload: [order_id, answer], correlate: { order_id: order_id }, keep_for: 1h }
nodes:
  start: { kind: start, next: wait }
  wait: { kind: catch, message: reply, next: end }
  end: { kind: end }
"#;

/// A timer node a second after the start.
const SOON: &str = r#"
id: soon
version: 1
name: Soon
nodes:
  start: { kind: start, next: pause }
  pause: { kind: timer, wait: 1s, next: done }
  done: { kind: end }
"#;

const ORDERS: usize = 15;

/// The restart test holds this exclusively: the others' connections would break with it.
static SERVER_LOCK: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    SERVER_LOCK.read().unwrap_or_else(|e| e.into_inner())
}

/// Opens the store `url` names: `sqlite:PATH` a SQLite file shared by the replicas, anything
/// else a PostgreSQL URL.
fn connect(url: &str) -> Arc<dyn Store> {
    connect_with_lease(url, std::time::Duration::from_secs(30))
}

/// [`connect`], the handle holding the follow-ups its commits leave for `lease`.
fn connect_with_lease(url: &str, lease: std::time::Duration) -> Arc<dyn Store> {
    if let Some(path) = url.strip_prefix("sqlite:") {
        return Arc::new(
            SqliteStore::options()
                .shared(true)
                .lease(lease)
                .create(path)
                .expect("open the shared SQLite file"),
        );
    }
    #[cfg(feature = "postgres")]
    return Arc::new(
        PostgresStore::connect(url)
            .expect("connect")
            .with_lease(lease),
    );
    #[cfg(not(feature = "postgres"))]
    panic!("{url}: PostgreSQL needs the feature `postgres` ({lease:?})");
}

/// The stores the replicas share, each new and created: a SQLite file, and a PostgreSQL
/// database when a server is found.
fn stores() -> Vec<String> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "procflow-replicas-{}-{}.db",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    #[allow(unused_mut)]
    let mut urls = vec![format!("sqlite:{}", path.display())];
    #[cfg(feature = "postgres")]
    if let Some(server) = pg::server() {
        urls.push(server.fresh());
    }
    for url in &urls {
        // Created once, so that the replicas do not race to create the schema (they may:
        // SQLite links a complete file, PostgreSQL creates it under an advisory lock; this
        // keeps the tests about the replicas).
        drop(connect(url));
    }
    urls
}

fn engine(url: &str, clock: &Arc<ManualClock>, conflicts: &Arc<AtomicUsize>) -> Engine {
    // The store a replica uses, counting the commits it refused as conflicts.
    let store = counted::Counted::new(connect(url), Arc::clone(conflicts));
    let mut b = Engine::builder();
    b.clock(Arc::clone(clock));
    let engine = b.open(store).expect("open");
    for def in [FLOW, ORDER, TOLD, SOON, LATE] {
        engine.deploy(ProcessDef::from_yaml(def).unwrap()).unwrap();
    }
    engine
}

fn order_vars(pairs: &[(&str, &str)]) -> Vars {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::json!(v)))
        .collect()
}

/// Waits until an instance with the order key `key` is stored (another replica starts it).
fn await_key(store: &dyn Store, key: &str) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while store.by_key("order_id", key).unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < until,
            "order {key} never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// One replica, when run by [`three_replicas_share_one_database`]; otherwise nothing.
#[test]
fn replica() {
    let (Ok(url), Ok(phase)) = (
        std::env::var("PROCFLOW_REPLICA_URL"),
        std::env::var("PROCFLOW_REPLICA_PHASE"),
    ) else {
        return;
    };
    let clock = Arc::new(ManualClock::new(t0()));
    let conflicts = Arc::new(AtomicUsize::new(0));
    let e = engine(&url, &clock, &conflicts);
    let actor = Actor::new("ann", ["agent"]);
    match phase.as_str() {
        "work" => {
            for _ in 0..PER_REPLICA {
                let id = e.start("flow", Vars::new()).unwrap();
                let task = e.tasks(id).unwrap()[0].id;
                e.complete(task, &actor, Vars::new()).unwrap();
                // Acknowledged: the parent checks each of these is stored.
                println!("ACK {}", id.get());
            }
        }
        "messages" => {
            // Orders of this replica, then the other replicas' orders paid and shipped: each
            // order gets `paid` from one replica and `shipped` from the other, concurrently.
            let me: usize = std::env::var("PROCFLOW_REPLICA_INDEX")
                .unwrap()
                .parse()
                .unwrap();
            for i in 0..ORDERS {
                let key = format!("o{me}-{i}");
                let id = e.start("order", order_vars(&[("order_id", &key)])).unwrap();
                println!("ACK {}", id.get());
            }
            let store = connect(&url);
            for i in 0..ORDERS {
                for (message, of) in [("paid", (me + 1) % 3), ("shipped", (me + 2) % 3)] {
                    let key = format!("o{of}-{i}");
                    await_key(store.as_ref(), &key);
                    let c = e
                        .correlate(message, order_vars(&[("order_id", &key), (message, "yes")]))
                        .unwrap();
                    assert_eq!(c.received.len(), 1, "{message} for {key}: {c:?}");
                    println!("GOT {message} {key} {}", c.received[0].get());
                }
            }
        }
        "restart" => {
            // Starts and completions until told to stop, through a server restart: a call the
            // server's going away failed is not acknowledged, and the replica carries on.
            let until = std::time::Instant::now() + std::time::Duration::from_secs(8);
            while std::time::Instant::now() < until {
                let Ok(id) = e.start("flow", Vars::new()) else {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                };
                println!("ACK {}", id.get());
                let task = e.tasks(id).unwrap()[0].id;
                match e.complete(task, &actor, Vars::new()) {
                    Ok(()) => println!("DONE {}", id.get()),
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
                }
            }
        }
        "die" => {
            // Dies in a hook of the completion: after its commit, before its follow-up (telling
            // the boss) runs.
            let store = connect_with_lease(&url, std::time::Duration::from_millis(500));
            let mut b = Engine::builder();
            b.clock(Arc::clone(&clock));
            b.hook(procflow::hook_fn(|event: &procflow::Event| {
                if matches!(event, procflow::Event::TaskCompleted { .. }) {
                    std::process::exit(0);
                }
            }));
            let e = b.open(store).unwrap();
            e.deploy(ProcessDef::from_yaml(TOLD).unwrap()).unwrap();
            let id = e.start("told", Vars::new()).unwrap();
            println!("ACK {}", id.get());
            let task = e.tasks(id).unwrap()[0].id;
            let _ = e.complete(task, &actor, Vars::new());
            panic!("the hook did not end the replica");
        }
        "kept" => {
            // Replies to orders of the next replica, before any order starts: kept in the
            // store. Then this replica's orders, each started once the reply to it is kept
            // (by the previous replica): the start takes it.
            let me: usize = std::env::var("PROCFLOW_REPLICA_INDEX")
                .unwrap()
                .parse()
                .unwrap();
            let key = |of: usize, i: usize| format!("late{of}-{i}");
            for i in 0..ORDERS {
                let reply = order_vars(&[("order_id", &key((me + 1) % 3, i)), ("answer", "ok")]);
                let c = e.correlate("reply", reply).unwrap();
                assert!(c.kept && c.received.is_empty(), "{c:?}");
            }
            let store = connect(&url);
            for i in 0..ORDERS {
                let key = key(me, i);
                let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
                while !store
                    .parked()
                    .unwrap()
                    .iter()
                    .any(|m| m.vars.get("order_id") == Some(&serde_json::json!(key)))
                {
                    assert!(std::time::Instant::now() < until, "{key} never kept");
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                let id = e.start("late", order_vars(&[("order_id", &key)])).unwrap();
                let status = e.instance(id).unwrap().status();
                println!("STARTED {key} {} {status:?}", id.get());
            }
        }
        "forever" => loop {
            let id = e.start("flow", Vars::new()).unwrap();
            println!("ACK {}", id.get());
            let task = e.tasks(id).unwrap()[0].id;
            e.complete(task, &actor, Vars::new()).unwrap();
            println!("DONE {}", id.get());
        },
        _ => {
            clock.advance(Duration::hours(2));
            let mut fired = 0;
            let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
            let store = connect(&url);
            while std::time::Instant::now() < until {
                fired += e.tick(clock.now()).len();
                if store.running().unwrap().is_empty() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            println!("FIRED {fired}");
            println!("CONFLICTS {}", conflicts.load(Ordering::Relaxed));
        }
    }
}

fn run_replicas(url: &str, phase: &str) -> Vec<String> {
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..3)
        .map(|i| {
            Command::new(&exe)
                .args(["--exact", "replica", "--nocapture", "--test-threads", "1"])
                .env("PROCFLOW_REPLICA_URL", url)
                .env("PROCFLOW_REPLICA_PHASE", phase)
                .env("PROCFLOW_REPLICA_INDEX", i.to_string())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "a replica failed in phase {phase}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect()
}

#[test]
fn three_replicas_share_one_store() {
    if std::env::var("PROCFLOW_REPLICA_URL").is_ok() {
        return;
    }
    let _shared = shared();
    for url in stores() {
        three_replicas_on(&url);
    }
}

fn three_replicas_on(url: &str) {
    let outs = run_replicas(url, "work");
    let mut acked: Vec<u64> = outs
        .iter()
        .flat_map(|o| o.lines())
        .filter_map(|l| l.split("ACK ").nth(1)?.trim().parse().ok())
        .collect();
    assert_eq!(acked.len(), 3 * PER_REPLICA, "every call acknowledged");
    acked.sort_unstable();
    let n = acked.len();
    acked.dedup();
    assert_eq!(acked.len(), n, "no id handed out twice");

    let store = connect(url);
    for &id in &acked {
        let stored = store
            .read(procflow::InstanceId::new(id))
            .unwrap()
            .expect("every acknowledged start is stored");
        assert_eq!(stored.version, 2, "start and completion, each stored once");
        assert_eq!(stored.instance.status(), Status::Running);
    }
    assert_eq!(store.running().unwrap().len(), n);

    let outs = run_replicas(url, "tick");
    let fired: Vec<usize> = outs
        .iter()
        .flat_map(|o| o.lines())
        .filter_map(|l| l.split("FIRED ").nth(1)?.trim().parse().ok())
        .collect();
    assert_eq!(fired.len(), 3);
    assert_eq!(
        fired.iter().sum::<usize>(),
        n,
        "each timer fired in exactly one replica: {fired:?}"
    );
    let conflicts: usize = outs
        .iter()
        .flat_map(|o| o.lines())
        .filter_map(|l| l.split("CONFLICTS ").nth(1)?.trim().parse::<usize>().ok())
        .sum();
    assert_eq!(
        conflicts, 0,
        "{url}: the replicas claimed the timers: none fired one another replica fired"
    );
    for &id in &acked {
        let stored = store.read(procflow::InstanceId::new(id)).unwrap().unwrap();
        assert_eq!(stored.instance.status(), Status::Completed, "i{id}");
        assert_eq!(stored.version, 3, "i{id}: the timer's firing stored once");
    }
}

/// A replica killed with SIGKILL at 20 random moments: after each kill, every call it
/// acknowledged is stored, once, and the next replica carries on.
#[test]
fn a_replica_killed_at_random_moments_loses_no_acknowledged_call() {
    if std::env::var("PROCFLOW_REPLICA_URL").is_ok() {
        return;
    }
    let _shared = shared();
    for url in stores() {
        killed_at_random_moments_on(&url);
    }
}

fn killed_at_random_moments_on(url: &str) {
    let exe = std::env::current_exe().unwrap();
    let mut seed = std::process::id() as u64 ^ 0x9E37_79B9_7F4A_7C15;
    let mut started = Vec::new();
    let mut done = Vec::new();
    for _ in 0..20 {
        let mut child = Command::new(&exe)
            .args(["--exact", "replica", "--nocapture", "--test-threads", "1"])
            .env("PROCFLOW_REPLICA_URL", url)
            .env("PROCFLOW_REPLICA_PHASE", "forever")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let wait = 150 + (seed >> 33) % 400;
        std::thread::sleep(std::time::Duration::from_millis(wait));
        child.kill().unwrap(); // SIGKILL
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines() {
            if let Some(id) = line
                .split("ACK ")
                .nth(1)
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                started.push(id);
            }
            if let Some(id) = line
                .split("DONE ")
                .nth(1)
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                done.push(id);
            }
        }
        let stored = stored_versions(url);
        for &id in &started {
            let Some(&version) = stored.get(&id) else {
                panic!("acknowledged start i{id} lost");
            };
            assert!(version <= 2, "i{id} stored {version} times");
        }
        for &id in &done {
            assert_eq!(stored[&id], 2, "acknowledged completion of i{id}");
        }
    }
    assert!(
        started.len() >= 20,
        "{url}: the replicas got work done: {}",
        started.len()
    );
    let mut unique = started.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), started.len(), "no id handed out twice");
}

/// The version the store holds of each running instance (the instances of `FLOW` wait at its
/// timer once worked), read in one query.
fn stored_versions(url: &str) -> std::collections::HashMap<u64, u64> {
    let store = connect(url);
    let ids = store.running_ids(None).unwrap();
    ids.into_iter().map(|(id, v)| (id.get(), v)).collect()
}

fn lines_with<'a>(outs: &'a [String], tag: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    outs.iter()
        .flat_map(|o| o.lines())
        .filter_map(move |l| l.split(tag).nth(1))
}

/// Each replica starts orders; the two others pay and ship each of them at the same time,
/// finding the orders in the store (they started after the replicas opened it): every message
/// is received once, by the order it names.
#[test]
fn messages_reach_instances_other_replicas_started_once_each() {
    if std::env::var("PROCFLOW_REPLICA_URL").is_ok() {
        return;
    }
    let _shared = shared();
    for url in stores() {
        messages_on(&url);
    }
}

fn messages_on(url: &str) {
    let outs = run_replicas(url, "messages");
    let acked: Vec<u64> = lines_with(&outs, "ACK ")
        .map(|v| v.trim().parse().unwrap())
        .collect();
    assert_eq!(acked.len(), 3 * ORDERS);
    let mut got: Vec<(String, String, u64)> = lines_with(&outs, "GOT ")
        .map(|l| {
            let mut p = l.split_whitespace();
            let (m, k, id) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
            (m.to_owned(), k.to_owned(), id.parse().unwrap())
        })
        .collect();
    assert_eq!(got.len(), 2 * 3 * ORDERS, "every message acknowledged");
    got.sort();
    got.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    assert_eq!(got.len(), 2 * 3 * ORDERS, "no message acknowledged twice");
    let store = connect(url);
    for &id in &acked {
        let stored = store.read(InstanceId::new(id)).unwrap().unwrap();
        assert_eq!(stored.instance.status(), Status::Completed, "i{id}");
        let received: Vec<&str> = stored
            .instance
            .audit()
            .iter()
            .filter_map(|r| match &r.what {
                procflow::Entry::MessageReceived(m) => Some(m.message.as_str()),
                _ => None,
            })
            .collect();
        let mut sorted = received.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, ["paid", "shipped"], "i{id}: each message once");
        // The start, then one commit per message received.
        assert_eq!(stored.version, 3, "i{id}");
    }
    for (_, key, id) in &got {
        let stored = store.read(InstanceId::new(*id)).unwrap().unwrap();
        assert_eq!(
            stored.instance.vars().get("order_id"),
            Some(&serde_json::json!(key)),
            "the message reached the order it names"
        );
    }
    assert!(
        store.unmatched().unwrap().is_empty(),
        "no message unmatched"
    );
}

/// Each replica keeps replies to orders another replica starts later: every order takes the
/// reply kept for it, at its start, from the store (another process kept it), and each reply
/// is taken once.
#[test]
fn messages_kept_by_one_replica_reach_orders_another_starts_once_each() {
    if std::env::var("PROCFLOW_REPLICA_URL").is_ok() {
        return;
    }
    let _shared = shared();
    for url in stores() {
        let outs = run_replicas(&url, "kept");
        let started: Vec<(String, u64, String)> = lines_with(&outs, "STARTED ")
            .map(|l| {
                let mut p = l.split_whitespace();
                let (key, id, status) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
                (key.to_owned(), id.parse().unwrap(), status.to_owned())
            })
            .collect();
        assert_eq!(started.len(), 3 * ORDERS, "{url}");
        let store = connect(&url);
        for (key, id, status) in &started {
            assert_eq!(
                status, "Completed",
                "{url}: {key} took its reply at its start"
            );
            let stored = store.read(InstanceId::new(*id)).unwrap().unwrap();
            assert_eq!(stored.instance.status(), Status::Completed, "{url}: {key}");
            assert_eq!(
                stored.instance.vars().get("answer"),
                Some(&serde_json::json!("ok")),
                "{url}: {key}"
            );
        }
        assert!(
            store.parked().unwrap().is_empty(),
            "{url}: every reply taken"
        );
        assert!(
            store.unmatched().unwrap().is_empty(),
            "{url}: none unmatched"
        );
    }
}

/// Three replicas start and complete instances while the server restarts (fast shutdown:
/// every connection is cut): every acknowledged call is stored once, and every replica
/// acknowledges calls again after the restart.
#[cfg(feature = "postgres")]
#[test]
fn replicas_carry_on_when_the_server_restarts_mid_run() {
    if std::env::var("PROCFLOW_REPLICA_URL").is_ok() {
        return;
    }
    let _alone = SERVER_LOCK.write().unwrap_or_else(|e| e.into_inner());
    let Some(server) = pg::server() else { return };
    let Some(cluster) = &server.cluster else {
        eprintln!("skipped: the server is not the harness's own (PROCFLOW_PG_URL)");
        return;
    };
    let url = server.fresh();
    drop(PostgresStore::connect(&url).unwrap());
    let exe = std::env::current_exe().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(usize, std::time::Instant, String)>();
    let mut children = Vec::new();
    for i in 0..3 {
        let mut child = Command::new(&exe)
            .args(["--exact", "replica", "--nocapture", "--test-threads", "1"])
            .env("PROCFLOW_REPLICA_URL", &url)
            .env("PROCFLOW_REPLICA_PHASE", "restart")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send((i, std::time::Instant::now(), line));
            }
        });
        children.push(child);
    }
    drop(tx);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(cluster.restart(), "pg_ctl stop and start");
    let restarted = std::time::Instant::now();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "a replica failed");
    }
    let lines: Vec<_> = rx.into_iter().collect();
    let stored = stored_versions(&url);
    let mut before = 0;
    for (_, at, line) in &lines {
        if let Some(id) = line.split("ACK ").nth(1) {
            let id: u64 = id.trim().parse().unwrap();
            let version = stored
                .get(&id)
                .unwrap_or_else(|| panic!("acknowledged start i{id} lost"));
            assert!(*version <= 2, "i{id} stored {version} times");
        }
        if let Some(id) = line.split("DONE ").nth(1) {
            let id: u64 = id.trim().parse().unwrap();
            // The start and the completion, each once (the instance waits at its timer).
            assert_eq!(
                stored[&id], 2,
                "acknowledged completion of i{id}, stored once"
            );
            if *at < restarted {
                before += 1;
            }
        }
    }
    assert!(before > 0, "the replicas worked before the restart");
    for i in 0..3 {
        let after = lines
            .iter()
            .filter(|(r, at, l)| *r == i && *at > restarted && l.contains("DONE "))
            .count();
        assert!(after > 0, "replica {i} carried on after the restart");
    }
}

/// A replica that dies after committing a completion and before running its follow-up
/// (telling the informed role) leaves it to another replica once its lease runs out: the
/// other replica's hooks hear it, once, and the instance's outbox is empty.
#[test]
fn follow_ups_a_dead_replica_left_run_in_another_once() {
    if std::env::var("PROCFLOW_REPLICA_URL").is_ok() {
        return;
    }
    let _shared = shared();
    for url in stores() {
        follow_ups_left_on(&url);
    }
}

fn follow_ups_left_on(url: &str) {
    // The surviving replica, open before the other dies.
    let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut b = Engine::builder();
    b.clock(Arc::new(ManualClock::new(t0())));
    let h = Arc::clone(&heard);
    b.hook(procflow::hook_fn(move |event: &procflow::Event| {
        if let procflow::Event::Notify { task, .. } = event {
            h.lock().unwrap().push(task.instance());
        }
    }));
    let survivor = b.open(connect(url)).unwrap();
    survivor
        .deploy(ProcessDef::from_yaml(TOLD).unwrap())
        .unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(&exe)
        .args(["--exact", "replica", "--nocapture", "--test-threads", "1"])
        .env("PROCFLOW_REPLICA_URL", url)
        .env("PROCFLOW_REPLICA_PHASE", "die")
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let id: u64 = text
        .lines()
        .find_map(|l| l.split("ACK ").nth(1)?.trim().parse().ok())
        .expect("the replica started an instance");
    let id = InstanceId::new(id);
    let store = connect(url);
    let stored = store.read(id).unwrap().unwrap();
    assert_eq!(
        stored.instance.status(),
        Status::Completed,
        "the completion is stored"
    );
    assert_eq!(
        stored.instance.pending().len(),
        1,
        "its follow-up is left unrun"
    );
    // Ticks until the lease ran out and the follow-up ran here.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while heard.lock().unwrap().is_empty() && std::time::Instant::now() < until {
        survivor.tick(survivor.now());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // A few more ticks: nothing runs twice.
    for _ in 0..5 {
        survivor.tick(survivor.now());
    }
    assert_eq!(
        *heard.lock().unwrap(),
        vec![id],
        "told once, by the survivor"
    );
    let stored = store.read(id).unwrap().unwrap();
    assert!(stored.instance.pending().is_empty(), "the outbox is empty");
}

/// A timer armed by a commit on one replica fires on another, woken by the store
/// (`LISTEN`/`NOTIFY`), long before that replica's poll interval (a minute) would have
/// looked: the firing replica's hook hears it, and the instance completes.
#[cfg(feature = "postgres")]
#[test]
fn a_timer_armed_on_one_replica_wakes_another() {
    if std::env::var("PROCFLOW_REPLICA_URL").is_ok() {
        return;
    }
    let _shared = shared();
    let Some(server) = pg::server() else { return };
    let url = server.fresh();
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let mut b = Engine::builder();
    b.hook(procflow::hook_fn(move |event: &procflow::Event| {
        if let procflow::Event::Timer { instance, .. } = event {
            let _ = tx.lock().unwrap().send(*instance);
        }
    }));
    let ticker = Arc::new(b.open(PostgresStore::connect(&url).unwrap()).unwrap());
    ticker.deploy(ProcessDef::from_yaml(SOON).unwrap()).unwrap();
    let driver =
        procflow::TimerDriver::spawn(Arc::clone(&ticker), std::time::Duration::from_secs(60));
    // Another replica, started after the ticker opened the store, never ticking.
    let other = Engine::builder()
        .open(PostgresStore::connect(&url).unwrap())
        .unwrap();
    other.deploy(ProcessDef::from_yaml(SOON).unwrap()).unwrap();
    for _ in 0..3 {
        let id = other.start("soon", Vars::new()).unwrap();
        let fired = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the ticker fired the other replica's timer before its poll");
        assert_eq!(fired, id);
        assert_eq!(driver.failures(), 0);
        let stored = PostgresStore::connect(&url)
            .unwrap()
            .read(id)
            .unwrap()
            .unwrap();
        assert_eq!(stored.instance.status(), Status::Completed);
    }
}
