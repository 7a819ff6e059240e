//! `--store postgres:URL` for the throughput harness (crate feature `postgres`): a store on a
//! reset database, and the server's own floor measured with `pgbench` in the same run.

use std::path::PathBuf;
use std::process::Command;

use procflow::PostgresStore;

/// Drops what an earlier run left in the database (procflow's and pgbench's tables only), then
/// connects.
pub(crate) fn store(url: &str) -> PostgresStore {
    let mut client = postgres::Client::connect(url, postgres::NoTls)
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    client
        .batch_execute(
            "DROP TABLE IF EXISTS procflow_meta, procflow_definitions, procflow_instances, \
             procflow_records, procflow_keys, procflow_messages, procflow_flushes, \
             procflow_report_facts, procflow_offers, pgbench_accounts, \
             pgbench_branches, pgbench_tellers, pgbench_history; \
             DROP SEQUENCE IF EXISTS procflow_ids;",
        )
        .unwrap_or_else(|e| panic!("resetting {url}: {e}"));
    PostgresStore::connect(url).unwrap_or_else(|e| panic!("{e}"))
}

/// Instance commits the run stored: every commit adds one to an instance's version.
pub(crate) fn commits(url: &str) -> u64 {
    let mut client = postgres::Client::connect(url, postgres::NoTls).expect("connect");
    let n: i64 = client
        .query_one(
            "SELECT coalesce(sum(row_version), 0)::bigint FROM procflow_instances",
            &[],
        )
        .expect("count commits")
        .get(0);
    n as u64
}

fn pgbench() -> Option<PathBuf> {
    if Command::new("pgbench").arg("--version").output().is_ok() {
        return Some(PathBuf::from("pgbench"));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin/pgbench")))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop()
}

/// pgbench's simple-update transactions per second (`-N`, prepared statements) on the same
/// database with `clients` clients for `seconds`, after `pgbench -i`; or why there is none
/// (`PROCFLOW_PG_FLOOR=off` skips it, to time the store's own CPU use).
pub(crate) fn floor(url: &str, clients: usize, seconds: f64) -> Result<f64, String> {
    if std::env::var("PROCFLOW_PG_FLOOR").as_deref() == Ok("off") {
        return Err("PROCFLOW_PG_FLOOR=off".into());
    }
    let bin = pgbench().ok_or("no pgbench found")?;
    let init = Command::new(&bin)
        .args(["-i", "-q", "-s", "1", url])
        .output()
        .map_err(|e| e.to_string())?;
    if !init.status.success() {
        return Err(String::from_utf8_lossy(&init.stderr).into_owned());
    }
    let secs = format!("{}", seconds.ceil().max(1.0) as u64);
    let c = clients.to_string();
    let j = clients.min(4).to_string();
    let run = Command::new(&bin)
        .args([
            "-n", "-N", "-M", "prepared", "-c", &c, "-j", &j, "-T", &secs, url,
        ])
        .output()
        .map_err(|e| e.to_string())?;
    let out = String::from_utf8_lossy(&run.stdout);
    out.lines()
        .find_map(|l| {
            let rest = l.strip_prefix("tps = ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .ok_or_else(|| {
            format!(
                "no tps in pgbench's output: {out}{}",
                String::from_utf8_lossy(&run.stderr)
            )
        })
}

const PAUSE: &str = r#"
id: pause
version: 1
name: Pause
nodes:
  start: { kind: start, next: pause }
  pause: { kind: timer, wait: 1h, next: done }
  done: { kind: end }
"#;

/// `--workload timers --store postgres:URL`: `instances` instances wait at a one-hour timer;
/// then `replicas` engines, each on its own store handle (its own connections, claims and
/// flushes, as replicas in separate processes have), tick with their clocks two hours on, each
/// on its own thread, until every timer fired. Prints fired timers per second, and checks that
/// each fired once (every instance completed, at version 2).
pub(crate) fn timers(url: &str, instances: u64, replicas: usize) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use procflow::{Engine, ManualClock, Store, Vars};

    let t0: chrono::DateTime<chrono::Utc> = "2026-11-23T09:00:00Z".parse().expect("t0");
    let seeded = Instant::now();
    {
        let store = Arc::new(store(url));
        let mut b = Engine::builder();
        b.clock(Arc::new(ManualClock::new(t0)));
        let engine = b.open(Arc::clone(&store)).expect("open");
        engine
            .deploy(procflow::ProcessDef::from_yaml(PAUSE).expect("def"))
            .expect("deploy");
        let next = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    // Seeding: the commits wait for the disk once per thread.
                    store.defer();
                    while next.fetch_add(1, Ordering::Relaxed) < instances {
                        engine.start("pause", Vars::new()).expect("start");
                    }
                    store.flush().expect("flush");
                });
            }
        });
    }
    let seeded = seeded.elapsed().as_secs_f64();
    let later = t0 + chrono::Duration::hours(2);
    let engines: Vec<Engine> = (0..replicas)
        .map(|_| {
            let mut b = Engine::builder();
            b.clock(Arc::new(ManualClock::new(later)));
            let e = b
                .open(PostgresStore::connect(url).expect("connect"))
                .expect("open");
            e.deploy(procflow::ProcessDef::from_yaml(PAUSE).expect("def"))
                .expect("deploy");
            e
        })
        .collect();
    let fired = AtomicU64::new(0);
    let per: Vec<AtomicU64> = (0..replicas).map(|_| AtomicU64::new(0)).collect();
    let start = Instant::now();
    let budget = Duration::from_secs(120);
    std::thread::scope(|s| {
        for (e, mine) in engines.iter().zip(&per) {
            let fired = &fired;
            s.spawn(move || {
                while fired.load(Ordering::Relaxed) < instances && start.elapsed() < budget {
                    let n = e.tick(later).len() as u64;
                    mine.fetch_add(n, Ordering::Relaxed);
                    fired.fetch_add(n, Ordering::Relaxed);
                    if n == 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let fired = fired.into_inner();
    let mut client = postgres::Client::connect(url, postgres::NoTls).expect("connect");
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE running), count(*) FILTER (WHERE row_version <> 2) \
             FROM procflow_instances",
            &[],
        )
        .expect("check");
    let (running, other): (i64, i64) = (row.get(0), row.get(1));
    let per: Vec<String> = per
        .iter()
        .map(|n| n.load(Ordering::Relaxed).to_string())
        .collect();
    println!(
        "workload=timers store=postgres replicas={replicas} instances={instances} seed_seconds={seeded:.1} fired={fired} per_replica={} seconds={secs:.3} fired_per_sec={:.0} left_running={running} fired_twice_or_never={other}",
        per.join("/"),
        fired as f64 / secs,
    );
    assert_eq!(fired, instances, "every timer fired, once");
    assert_eq!((running, other), (0, 0), "each instance fired once");
}
