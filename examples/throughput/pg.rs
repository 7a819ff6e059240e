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
             procflow_records, procflow_keys, procflow_messages, pgbench_accounts, \
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
/// database with `clients` clients for `seconds`, after `pgbench -i`; or why there is none.
pub(crate) fn floor(url: &str, clients: usize, seconds: f64) -> Result<f64, String> {
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
