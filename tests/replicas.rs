//! Three engine replicas in three OS processes on one PostgreSQL database (this test binary
//! runs itself as each replica): concurrent starts and completions, then concurrent ticks.
//! Every acknowledged call is stored once, and each due timer fires in exactly one replica.
//!
//! Needs a server: see tests/common/pg.rs (skipped, saying why, when none is found).

#[path = "common/pg.rs"]
mod pg;

use std::process::{Command, Stdio};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use std::sync::atomic::{AtomicUsize, Ordering};

use procflow::{
    Actor, Clock, Commit, Engine, InstanceId, ManualClock, PostgresStore, ProcessDef, Status,
    Store, StoreError, StoredDef, StoredInstance, Vars,
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

/// The store a replica uses, counting the commits it refused as conflicts.
struct Counting {
    inner: PostgresStore,
    conflicts: Arc<AtomicUsize>,
}

impl Store for Counting {
    fn save_definition(&self, def: &StoredDef) -> Result<(), StoreError> {
        self.inner.save_definition(def)
    }
    fn definitions(&self) -> Result<Vec<StoredDef>, StoreError> {
        self.inner.definitions()
    }
    fn commit(&self, commit: &Commit<'_>) -> Result<(), StoreError> {
        let result = self.inner.commit(commit);
        if let Err(StoreError::Conflict { .. }) = &result {
            self.conflicts.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
    fn read(&self, id: InstanceId) -> Result<Option<StoredInstance>, StoreError> {
        self.inner.read(id)
    }
    fn running(&self) -> Result<Vec<StoredInstance>, StoreError> {
        self.inner.running()
    }
    fn history(
        &self,
        process: Option<&str>,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<StoredInstance>, StoreError> {
        self.inner.history(process, since)
    }
    fn due(&self, now: DateTime<Utc>) -> Result<Vec<(InstanceId, u64)>, StoreError> {
        self.inner.due(now)
    }
    fn outbox(&self) -> Result<Vec<StoredInstance>, StoreError> {
        self.inner.outbox()
    }
    fn reserve_ids(&self, count: u64) -> Result<u64, StoreError> {
        self.inner.reserve_ids(count)
    }
    fn by_key(&self, key: &str, value: &str) -> Result<Vec<InstanceId>, StoreError> {
        self.inner.by_key(key, value)
    }
    fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease: std::time::Duration,
    ) -> Result<Option<Vec<(InstanceId, u64)>>, StoreError> {
        self.inner.claim_due(now, lease)
    }
}

fn engine(url: &str, clock: &Arc<ManualClock>, conflicts: &Arc<AtomicUsize>) -> Engine {
    let store = Counting {
        inner: PostgresStore::connect(url).expect("connect"),
        conflicts: Arc::clone(conflicts),
    };
    let mut b = Engine::builder();
    b.clock(Arc::clone(clock));
    let engine = b.open(store).expect("open");
    engine.deploy(ProcessDef::from_yaml(FLOW).unwrap()).unwrap();
    engine
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
            let store = PostgresStore::connect(&url).unwrap();
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
        .map(|_| {
            Command::new(&exe)
                .args(["--exact", "replica", "--nocapture", "--test-threads", "1"])
                .env("PROCFLOW_REPLICA_URL", url)
                .env("PROCFLOW_REPLICA_PHASE", phase)
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
fn three_replicas_share_one_database() {
    if std::env::var("PROCFLOW_REPLICA_URL").is_ok() {
        return;
    }
    let Some(server) = pg::server() else { return };
    let url = server.fresh();
    // Created once, so that the replicas do not race to create the schema (they may: it is
    // under an advisory lock; this keeps the test about the replicas).
    drop(PostgresStore::connect(&url).unwrap());

    let outs = run_replicas(&url, "work");
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

    let store = PostgresStore::connect(&url).unwrap();
    for &id in &acked {
        let stored = store
            .read(procflow::InstanceId::new(id))
            .unwrap()
            .expect("every acknowledged start is stored");
        assert_eq!(stored.version, 2, "start and completion, each stored once");
        assert_eq!(stored.instance.status(), Status::Running);
    }
    assert_eq!(store.running().unwrap().len(), n);

    let outs = run_replicas(&url, "tick");
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
        "the replicas claimed the timers: none fired one another replica fired"
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
    let Some(server) = pg::server() else { return };
    let url = server.fresh();
    drop(PostgresStore::connect(&url).unwrap());
    let exe = std::env::current_exe().unwrap();
    let mut seed = std::process::id() as u64 ^ 0x9E37_79B9_7F4A_7C15;
    let mut started = Vec::new();
    let mut done = Vec::new();
    for _ in 0..20 {
        let mut child = Command::new(&exe)
            .args(["--exact", "replica", "--nocapture", "--test-threads", "1"])
            .env("PROCFLOW_REPLICA_URL", &url)
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
        let store = PostgresStore::connect(&url).unwrap();
        for &id in &started {
            let stored = store.read(InstanceId::new(id)).unwrap();
            let Some(stored) = stored else {
                panic!("acknowledged start i{id} lost");
            };
            assert!(stored.version <= 2, "i{id} stored {} times", stored.version);
        }
        for &id in &done {
            let stored = store.read(InstanceId::new(id)).unwrap().unwrap();
            assert_eq!(stored.version, 2, "acknowledged completion of i{id}");
        }
    }
    assert!(
        started.len() >= 20,
        "the replicas got work done: {}",
        started.len()
    );
    let mut unique = started.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), started.len(), "no id handed out twice");
}
