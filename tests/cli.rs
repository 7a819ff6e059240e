//! The `procflow` command line as a user meets it (issue 16, "polish found by the newcomer
//! walk"): help and version on stdout with status 0, a wrong command line refused with its usage
//! on stderr and status 2, no panic when the reader of stdout goes away, and an unknown process
//! or store named in a clear error.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use procflow::{Actor, Engine, ManualClock, ProcessDef, SqliteStore, Vars};

#[cfg(feature = "postgres")]
#[path = "common/pg.rs"]
mod pg;

fn procflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_procflow"))
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every subcommand the usage must name.
const SUBCOMMANDS: [&str; 6] = [
    "validate", "graph", "simulate", "calendar", "report", "history",
];

#[test]
fn help_goes_to_stdout_with_status_0() {
    for args in [&["--help"][..], &["-h"], &["help"]] {
        let out = procflow(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let stdout = text(&out.stdout);
        assert!(stdout.starts_with("usage:\n"), "{args:?}: {stdout}");
        for sub in SUBCOMMANDS {
            assert!(
                stdout.contains(&format!("procflow {sub} ")),
                "{sub}: {stdout}"
            );
        }
        assert!(stdout.contains("--version"), "{stdout}");
        assert_eq!(text(&out.stderr), "", "{args:?}");
    }
}

#[test]
fn each_subcommand_has_its_own_help() {
    for sub in SUBCOMMANDS {
        for args in [vec![sub, "--help"], vec![sub, "-h"], vec!["help", sub]] {
            let out = procflow(&args);
            assert_eq!(out.status.code(), Some(0), "{args:?}");
            let stdout = text(&out.stdout);
            assert!(stdout.contains(&format!("procflow {sub} ")), "{stdout}");
            // Only that subcommand's usage.
            let others = SUBCOMMANDS.iter().filter(|s| **s != sub);
            for other in others {
                assert!(!stdout.contains(&format!("procflow {other} ")), "{stdout}");
            }
        }
    }
}

#[test]
fn version() {
    for flag in ["--version", "-V"] {
        let out = procflow(&[flag]);
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(text(&out.stdout), "procflow 0.1.0\n");
    }
}

#[test]
fn a_wrong_command_line_gives_the_usage_on_stderr_and_status_2() {
    let cases: [(&[&str], &str); 5] = [
        (&[], "usage:"),
        (&["frobnicate"], "unknown subcommand 'frobnicate'"),
        (&["--frobnicate"], "unknown flag '--frobnicate'"),
        (
            &["report", "--store", "x.db", "--bogus", "1"],
            "unknown flag '--bogus' for procflow report",
        ),
        (&["help", "nothing"], "unknown subcommand 'nothing'"),
    ];
    for (args, message) in cases {
        let out = procflow(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(text(&out.stdout), "", "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(stderr.contains("usage:"), "{args:?}: {stderr}");
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("procflow-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

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

/// A store holding process `plain` with `n` instances, half of them completed.
fn store(dir: &TempDir, n: usize) -> String {
    let path = dir.0.join("store.db");
    let t0: DateTime<Utc> = "2026-01-05T09:00:00Z".parse().unwrap();
    let clock = Arc::new(ManualClock::new(t0));
    let engine = Engine::builder()
        .clock(Arc::clone(&clock))
        .open(SqliteStore::create(&path).unwrap())
        .unwrap();
    engine
        .deploy(ProcessDef::from_yaml(PLAIN).unwrap())
        .unwrap();
    let ann = Actor::new("ann", ["r"]);
    for i in 0..n {
        let id = engine.start("plain", Vars::new()).unwrap();
        clock.advance(chrono::Duration::minutes(7));
        if i % 2 == 0 {
            let task = engine.tasks(id).unwrap()[0].id;
            engine.complete(task, &ann, Vars::new()).unwrap();
        }
    }
    path.to_str().unwrap().to_owned()
}

/// The reader of stdout stops after 100 bytes: `procflow report --format json | head -c 100`.
fn read_100_and_close(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_procflow"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 100];
    // What comes first, up to 100 bytes (short outputs end sooner).
    let _ = stdout.read(&mut first).unwrap();
    drop(stdout);
    child.wait_with_output().unwrap()
}

#[test]
fn a_closed_pipe_ends_quietly() {
    let dir = TempDir::new("pipe");
    let db = store(&dir, 1);
    // A long chain of tasks, so that the graph outgrows a pipe's buffer (64 KiB): the write
    // after the reader left surely fails.
    let mut yaml = String::from(
        "id: long\nversion: 1\nname: Long\nroles: { r: { name: R }, a: { name: A } }\nnodes:\n  start: { kind: start, next: t0 }\n",
    );
    for i in 0..900 {
        yaml.push_str(&format!(
            "  t{i}: {{ kind: user_task, name: 'Task number {i} of the long chain of tasks, named at length to fill the graph', raci: {{ responsible: [r], accountable: a }}, next: {} }}\n",
            if i == 899 { "done".to_owned() } else { format!("t{}", i + 1) }
        ));
    }
    yaml.push_str("  done: { kind: end }\n");
    let def = dir.0.join("long.yaml");
    std::fs::write(&def, yaml).unwrap();
    let def = def.to_str().unwrap();
    let long = procflow(&["graph", def]);
    assert_eq!(long.status.code(), Some(0), "{}", text(&long.stderr));
    assert!(long.stdout.len() > 100_000, "{}", long.stdout.len());
    let cases: Vec<Vec<&str>> = vec![
        vec!["graph", def],
        vec!["graph", def, "--format", "dot"],
        vec!["graph", "--flows", def],
        vec!["validate", def, def, def],
        vec!["report", "--store", &db, "--format", "json"],
        vec!["report", "--store", &db],
        vec!["report", "--store", &db, "--format", "csv"],
        vec!["--help"],
    ];
    for args in cases {
        let out = read_100_and_close(&args);
        let stderr = text(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(stderr, "", "{args:?}");
        assert_eq!(out.status.code(), Some(0), "{args:?}");
    }
}

#[test]
fn an_unknown_process_is_named_in_an_error() {
    let dir = TempDir::new("process");
    let db = store(&dir, 2);
    let out = procflow(&["report", "--store", &db, "--process", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        text(&out.stderr),
        format!("{db}: unknown process 'nope': the store holds only 'plain'\n")
    );
    // The heatmap path too.
    let svg = dir.0.join("h.svg");
    let out = procflow(&[
        "report",
        "--store",
        &db,
        "--process",
        "nope",
        "--heatmap",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown process 'nope'"));
    assert!(!svg.exists());
    // The known one works.
    let out = procflow(&["report", "--store", &db, "--process", "plain"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("plain"));
}

#[test]
fn a_missing_store_is_named_in_an_error() {
    let dir = TempDir::new("missing");
    let db = dir.0.join("no-such.db");
    let db = db.to_str().unwrap();
    for sub in ["report", "history"] {
        let mut args = vec![sub, "--store", db];
        if sub == "history" {
            args.extend(["--key", "k=v"]);
        }
        let out = procflow(&args);
        assert_eq!(out.status.code(), Some(1), "{sub}");
        assert_eq!(text(&out.stdout), "", "{sub}");
        assert_eq!(text(&out.stderr), format!("{db}: no such store file\n"));
    }
    assert!(!std::path::Path::new(db).exists(), "a store was created");
}

/// A `procflow serve` child, killed when dropped, and the address it listens on.
#[cfg(feature = "server")]
struct Served {
    child: std::process::Child,
    addr: String,
}

#[cfg(feature = "server")]
impl Served {
    /// Serves the shipped definitions on a free port with `args`; waits for its first line.
    fn start(args: &[&str]) -> Served {
        use std::io::BufRead;
        let defs = concat!(env!("CARGO_MANIFEST_DIR"), "/process-defs");
        let mut child = Command::new(env!("CARGO_BIN_EXE_procflow"))
            .arg("serve")
            .args(args)
            .args(["--listen", "127.0.0.1:0", defs])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        std::io::BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let addr = first
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("no address in {first:?}"))
            .to_owned();
        Served { child, addr }
    }

    /// One HTTP/1.1 request with `token`: the status and the body as JSON (`null` when empty).
    fn call(&self, method: &str, path: &str, token: &str, body: &str) -> (u16, serde_json::Value) {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(&self.addr).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        // A chunked body is one chunk here: the JSON between its size line and the end.
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body.split_once("\r\n").map_or("", |(_, rest)| rest)
        } else {
            body
        };
        let json = body.trim_end_matches("\r\n0\r\n\r\n").trim();
        (
            status,
            serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
        )
    }
}

#[cfg(feature = "server")]
impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two `procflow serve` processes on one store, as behind a load balancer (a SQLite file with
/// `--shared`, and a PostgreSQL database when the binary has it and a server is found): a
/// complaint started on one is listed, claimed and completed on the other, and the first
/// answers about it as the second left it.
#[cfg(feature = "server")]
#[test]
fn two_servers_share_one_store() {
    let dir = TempDir::new("serve-shared");
    #[allow(unused_mut)]
    let mut stores = vec![format!("sqlite:{}", dir.0.join("shared.db").display())];
    #[cfg(feature = "postgres")]
    if let Some(server) = pg::server() {
        let url = server.fresh();
        // Created before the servers start, so that they do not race to create it.
        drop(procflow::PostgresStore::connect(&url).unwrap());
        stores.push(url);
    }
    for store in stores {
        two_servers_on(&store);
    }
}

#[cfg(feature = "server")]
fn two_servers_on(store: &str) {
    let a = Served::start(&["--store", store, "--shared"]);
    let b = Served::start(&["--store", store, "--shared"]);
    const WANG: &str = "agent-wang-demo";
    let (status, started) = a.call(
        "POST",
        "/api/processes/complaint-handling/instances",
        WANG,
        r#"{"variables":{"customer_id":"C-1001","channel":"call_centre","account_unit":"gz","local_network":"gz"}}"#,
    );
    assert_eq!(status, 201, "{started}");
    let instance = started["instance"].as_str().unwrap().to_owned();
    let task = started["tasks"][0]["task"].as_str().unwrap().to_owned();
    let (_, work) = b.call("GET", "/api/work", WANG, "");
    assert!(
        work.as_array()
            .unwrap()
            .iter()
            .any(|t| t["task"] == task.as_str()),
        "B lists the task A opened: {work}"
    );
    let (status, body) = b.call("POST", &format!("/api/tasks/{task}/claim"), WANG, "{}");
    assert_eq!(status, 204, "{body}");
    let (status, body) = b.call("POST", &format!("/api/tasks/{task}/complete"), WANG, "{}");
    assert_eq!(status, 204, "{body}");
    // A answers from the stored version: the task is no longer open there either.
    let (status, seen) = a.call("GET", &format!("/api/instances/{instance}"), WANG, "");
    assert_eq!(status, 200, "{seen}");
    assert!(
        seen["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["task"] != task.as_str()),
        "A answers as B left it: {seen}"
    );
}
