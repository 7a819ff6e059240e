//! A PostgreSQL server for the tests (crate feature `postgres`).
//!
//! - `PROCFLOW_PG_URL` set (a `postgres://` URL of a database the tests may create schemas in):
//!   that server is used.
//! - Otherwise a throwaway cluster is started from the installed binaries (`initdb` and
//!   `pg_ctl` of `/usr/lib/postgresql/*/bin`, or of `pg_config --bindir`) in a folder under
//!   `target/`, listening on a Unix socket only, as the `postgres` user when the tests run as
//!   root. A watchdog stops it and deletes the folder when the test process ends.
//! - Neither: [`server`] prints why the PostgreSQL tests are skipped and returns `None`, unless
//!   `PROCFLOW_PG_REQUIRED=1`, which makes that a failure.
//!
//! Each [`Server::fresh`] is a new schema (`search_path`), so tests never see each other's
//! tables.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// A server the tests may use.
pub(crate) struct Server {
    /// The URL of its database (a `postgres://` URL with a query part or none).
    pub(crate) url: String,
    /// The throwaway cluster's folder, when the harness started one.
    pub(crate) cluster: Option<Cluster>,
}

/// A cluster started by the harness.
pub(crate) struct Cluster {
    pub(crate) dir: PathBuf,
    pub(crate) bin: PathBuf,
    pub(crate) port: u16,
    /// The server's options (`pg_ctl -o`).
    pub(crate) options: String,
    /// Whether commands run as the `postgres` user.
    pub(crate) as_postgres: bool,
}

impl Cluster {
    /// Runs one of the cluster's binaries (as `postgres` when needed) and says whether it
    /// succeeded.
    pub(crate) fn run(&self, tool: &str, args: &[&str]) -> bool {
        run_as(&self.bin.join(tool), args, self.as_postgres)
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Stops the server (fast shutdown) and starts it again: what a server restart looks like
    /// to the engines.
    pub(crate) fn restart(&self) -> bool {
        let dir = self.dir.to_string_lossy().into_owned();
        let log = format!("{dir}/server.log");
        // Not `pg_ctl restart`: it would forget the log file and hold our output pipe open.
        self.run("pg_ctl", &["-D", &dir, "-m", "fast", "-w", "stop"])
            && self.run(
                "pg_ctl",
                &[
                    "-D",
                    &dir,
                    "-o",
                    &self.options,
                    "-l",
                    &log,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            )
    }
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static SCHEMA: AtomicU32 = AtomicU32::new(0);

/// The server, started once per test process; `None` (printed, with why) when there is none.
///
/// # Panics
/// When there is none and `PROCFLOW_PG_REQUIRED=1`.
pub(crate) fn server() -> Option<&'static Server> {
    let found = SERVER.get_or_init(find);
    match found {
        Ok(server) => Some(server),
        Err(why) => {
            if std::env::var("PROCFLOW_PG_REQUIRED").as_deref() == Ok("1") {
                panic!("PROCFLOW_PG_REQUIRED=1 but no PostgreSQL: {why}");
            }
            eprintln!("PostgreSQL tests skipped: {why}");
            None
        }
    }
}

impl Server {
    /// The URL of a new, empty schema of the database (the connection's `search_path`).
    pub(crate) fn fresh(&self) -> String {
        let n = SCHEMA.fetch_add(1, Ordering::Relaxed);
        let schema = format!("t{}_{n}", std::process::id());
        let mut admin = postgres::Client::connect(&self.url, postgres::NoTls)
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.url));
        admin
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
            ))
            .expect("create schema");
        with_schema(&self.url, &schema)
    }

    /// A client on the database of `url` (the admin's view, for checks and fixtures).
    pub(crate) fn client(&self, url: &str) -> postgres::Client {
        postgres::Client::connect(url, postgres::NoTls).expect("connect")
    }
}

/// `url` with `search_path` set to `schema`.
pub(crate) fn with_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
}

fn find() -> Result<Server, String> {
    if let Ok(url) = std::env::var("PROCFLOW_PG_URL")
        && !url.is_empty()
    {
        postgres::Client::connect(&url, postgres::NoTls)
            .map_err(|e| format!("PROCFLOW_PG_URL={url}: {e}"))?;
        return Ok(Server { url, cluster: None });
    }
    let bin = bindir().ok_or_else(|| {
        "no PostgreSQL installed (no /usr/lib/postgresql/*/bin/initdb, no pg_config on PATH) \
         and PROCFLOW_PG_URL is not set"
            .to_string()
    })?;
    start(&bin)
}

fn bindir() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
        .collect();
    found.sort();
    if let Some(b) = found.pop() {
        return Some(b);
    }
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let b = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    b.join("initdb").exists().then_some(b)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn run_as(tool: &Path, args: &[&str], as_postgres: bool) -> std::io::Result<std::process::Output> {
    if as_postgres {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(tool)
            .args(args)
            .output()
    } else {
        Command::new(tool).args(args).output()
    }
}

fn start(bin: &Path) -> Result<Server, String> {
    let as_postgres = is_root();
    let pid = std::process::id();
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    // The cluster's folder must be reachable by `postgres`: under target/ when it is, else in
    // the system's temporary folder.
    let base = if !as_postgres || reachable_by_postgres(&target) {
        target
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("pg-test-{pid}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if as_postgres {
        let ok = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Err(format!(
                "cannot give {} to the postgres user",
                dir.display()
            ));
        }
    }
    let d = dir.to_string_lossy().into_owned();
    let out = run_as(
        &bin.join("initdb"),
        &[
            "-D",
            &d,
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        ],
        as_postgres,
    )
    .map_err(|e| format!("initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let port = 20_000 + (pid % 20_000) as u16;
    let options = format!(
        "-c listen_addresses='' -c unix_socket_directories='{d}' -c port={port} \
         -c max_connections=400 -c fsync=off -c full_page_writes=off"
    );
    let log = format!("{d}/server.log");
    let out = run_as(
        &bin.join("pg_ctl"),
        &[
            "-D", &d, "-o", &options, "-l", &log, "-w", "-t", "60", "start",
        ],
        as_postgres,
    )
    .map_err(|e| format!("pg_ctl: {e}"))?;
    if !out.status.success() {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        return Err(format!(
            "pg_ctl start failed: {}{log}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    watchdog(bin, &dir, as_postgres);
    let url = format!("postgresql:///postgres?host={d}&port={port}&user=postgres");
    Ok(Server {
        url,
        cluster: Some(Cluster {
            dir,
            bin: bin.to_path_buf(),
            port,
            options,
            as_postgres,
        }),
    })
}

/// Stops the cluster and deletes its folder once this process has ended.
fn watchdog(bin: &Path, dir: &Path, as_postgres: bool) {
    let pg_ctl = bin.join("pg_ctl");
    let stop = if as_postgres {
        format!(
            "runuser -u postgres -- {} -D {} -m immediate stop",
            pg_ctl.display(),
            dir.display()
        )
    } else {
        format!(
            "{} -D {} -m immediate stop",
            pg_ctl.display(),
            dir.display()
        )
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        dir = dir.display()
    );
    let _ = Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

fn reachable_by_postgres(dir: &Path) -> bool {
    let _ = std::fs::create_dir_all(dir);
    Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
