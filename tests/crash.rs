//! Crash recovery on the SQLite store, with real processes.
//!
//! - `killed_children_lose_nothing`: a child process (this test binary, run again) drives starts,
//!   claims, completions and ticks against a store file and logs every call it saw succeed; the
//!   test kills it with SIGKILL after a varying number of acknowledged calls, 24 times, and after
//!   each kill opens the store
//!   and checks that every acknowledged call is there, nothing is recorded twice, every instance
//!   is in a state its definition allows, and the pending timers are intact.
//! - `two_processes_complete_one_task`: two processes complete the same task at once; exactly one
//!   succeeds and the other gets the conflict error.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use procflow::{
    Actor, Clock, Durability, Engine, Entry, ExecError, Instance, InstanceId, ManualClock,
    NodeKind, ProcessDef, SqliteStore, Status, TaskState, TimerKind, TokenState, Vars,
};
use serde_json::json;

const DEF: &str = r#"
id: crash
version: 1
name: Crash
roles: { agent: { name: Agent }, lead: { name: Lead }, audit: { name: Audit } }
variables:
  urgent: { type: boolean, default: false }
nodes:
  start: { kind: start, next: triage }
  triage:
    kind: user_task
    name: Triage
    raci: { responsible: [agent], accountable: lead, informed: [audit] }
    due: 2h
    claim_due: 30m
    remind: [{ before: 1h }]
    escalate: [{ after: 30m, action: notify }]
    next: route
  route:
    kind: exclusive
    routes:
      - { when: "urgent", to: fix }
      - { default: true, to: done }
  fix:
    kind: user_task
    name: Fix
    raci: { responsible: [agent], accountable: lead }
    due: 1h
    next: done
  done: { kind: end }
"#;

const CHILD: &str = "PROCFLOW_CRASH_CHILD";
const RACER: &str = "PROCFLOW_CRASH_RACER";

fn t0() -> DateTime<Utc> {
    "2026-11-02T09:00:00Z".parse().unwrap()
}

fn temp(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("procflow-{name}-{}", std::process::id()));
    remove_store(&path);
    path
}

fn remove_store(path: &Path) {
    for suffix in ["", "-wal", "-shm", ".log"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

fn store(path: &Path) -> SqliteStore {
    SqliteStore::options()
        .durability(Durability::Process)
        .create(path)
        .expect("store")
}

fn open(path: &Path, clock: &Arc<ManualClock>) -> Engine {
    let mut b = Engine::builder();
    b.clock(Arc::clone(clock));
    let engine = b.open(store(path)).expect("open");
    engine
        .deploy(ProcessDef::from_yaml(DEF).unwrap())
        .expect("deploy");
    engine
}

/// A small xorshift generator: the test needs no more.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

// ---------------------------------------------------------------------------------------------
// The child: drives the workload until it is killed.
// ---------------------------------------------------------------------------------------------

/// Runs only as the child of `killed_children_lose_nothing` (the variable names the store, the
/// log, the run's number and a seed); as a plain test it does nothing.
#[test]
fn crash_child() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let parts: Vec<&str> = spec.split(',').collect();
    let (db, log, run, seed) = (
        Path::new(parts[0]),
        parts[1],
        parts[2].parse::<i64>().unwrap(),
        parts[3].parse::<u64>().unwrap(),
    );
    // Each run has its own month of simulated time, so that time only moves forward.
    let clock = Arc::new(ManualClock::new(t0() + Duration::days(30 * run)));
    let engine = open(db, &clock);
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut rng = Rng(seed | 1);
    let agent = Actor::new("ann", ["agent"]);
    loop {
        clock.advance(Duration::minutes(rng.below(20) as i64));
        let line = match rng.below(10) {
            0..=2 => {
                let urgent = rng.below(2) == 0;
                let vars: Vars = [("urgent".to_owned(), json!(urgent))].into_iter().collect();
                engine
                    .start("crash", vars)
                    .map(|id| format!("start {}", id.get()))
            }
            3..=7 => {
                let work = engine.work_list(&agent);
                if work.is_empty() {
                    continue;
                }
                let task = work[rng.below(work.len() as u64) as usize].id;
                if rng.below(3) == 0 && work.iter().any(|t| t.id == task && t.claimed_by.is_none())
                {
                    engine
                        .claim(task, &agent)
                        .map(|()| format!("claim {} {}", task.instance().get(), task.seq()))
                } else {
                    engine
                        .complete(task, &agent, Vars::new())
                        .map(|()| format!("complete {} {}", task.instance().get(), task.seq()))
                }
            }
            _ => {
                let fired = engine.tick(clock.now());
                Ok(fired
                    .iter()
                    .map(|f| format!("fired {} {}\n", f.instance.get(), f.name()))
                    .collect::<String>()
                    .trim_end()
                    .to_owned())
            }
        };
        match line {
            Ok(line) if line.is_empty() => {}
            // Written after the call returned: the call is acknowledged. One `write` call per
            // line, so that a kill never leaves half a line for the next child to append to.
            Ok(line) => log.write_all(format!("{line}\n").as_bytes()).unwrap(),
            Err(e) => panic!("the child's call failed: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The parent: kills children and checks the store.
// ---------------------------------------------------------------------------------------------

fn spawn(env: &str, value: String) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            if env == CHILD {
                "crash_child"
            } else {
                "racer_child"
            },
            "--nocapture",
            "--test-threads=1",
        ])
        .env(env, value)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child")
}

/// What the log says the children saw succeed.
#[derive(Default)]
struct Acknowledged {
    starts: HashSet<u64>,
    claims: HashSet<(u64, u32)>,
    completions: HashSet<(u64, u32)>,
    fired: usize,
}

/// How many complete lines the log holds.
fn lines(path: &str) -> usize {
    std::fs::read(path).map_or(0, |bytes| bytes.iter().filter(|b| **b == b'\n').count())
}

fn read_log(path: &str) -> Acknowledged {
    let mut ack = Acknowledged::default();
    let Ok(file) = std::fs::File::open(path) else {
        return ack;
    };
    for line in std::io::BufReader::new(file).lines() {
        let line = line.unwrap();
        let words: Vec<&str> = line.split(' ').collect();
        // A line cut by the kill is not complete; skip it.
        let num = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
        match (words[0], num(1), num(2)) {
            ("start", Some(i), _) => {
                ack.starts.insert(i);
            }
            ("claim", Some(i), Some(t)) => {
                ack.claims.insert((i, t as u32));
            }
            ("complete", Some(i), Some(t)) => {
                ack.completions.insert((i, t as u32));
            }
            ("fired", Some(_), _) => ack.fired += 1,
            _ => {}
        }
    }
    ack
}

#[test]
fn killed_children_lose_nothing() {
    let db = temp("crash.db");
    let log = format!("{}.log", db.display());
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let started = Instant::now();
    let mut checked = 0;
    for run in 0..24 {
        // Kill after a number of acknowledged calls, not after a time: on a loaded machine a
        // sleep may end before the child made any call at all.
        let before = lines(&log);
        let wanted = before + 20 + rng.below(200) as usize;
        let mut child = spawn(CHILD, format!("{},{log},{run},{}", db.display(), run + 1));
        let deadline = Instant::now() + StdDuration::from_secs(120);
        while lines(&log) < wanted {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("run {run}: the child stopped by itself ({status}) before it was killed");
            }
            assert!(
                Instant::now() < deadline,
                "run {run}: the child acknowledged {} calls in 120 s",
                lines(&log) - before
            );
            std::thread::sleep(StdDuration::from_micros(200));
        }
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        checked = check(&db, &read_log(&log), run);
    }
    eprintln!(
        "24 kills, {checked} acknowledged calls checked in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        checked > 200,
        "the children did too little to test anything: {checked}"
    );
    remove_store(&db);
}

/// Opens the store after a kill and checks it against the acknowledged calls; gives how many
/// calls it checked.
fn check(db: &Path, ack: &Acknowledged, run: i64) -> usize {
    // The clock stands where the killed run's month began: nothing is due that was not before.
    let clock = Arc::new(ManualClock::new(t0() + Duration::days(30 * run)));
    let engine = open(db, &clock);
    let def = engine.definition("crash", None).unwrap();
    // Every instance an acknowledged call names. (A start killed after its commit but before
    // its log line is stored but not acknowledged; a later child may still claim or complete its
    // tasks, and those calls are acknowledged.)
    let named = ack
        .starts
        .iter()
        .chain(ack.claims.iter().map(|(i, _)| i))
        .chain(ack.completions.iter().map(|(i, _)| i));
    let mut instances: BTreeMap<u64, Instance> = BTreeMap::new();
    for id in named {
        let inst = engine
            .instance(InstanceId::new(*id))
            .unwrap_or_else(|e| panic!("run {run}: acknowledged instance i{id} is lost: {e}"));
        instances.insert(*id, inst);
    }
    for (i, t) in &ack.claims {
        let task = instances
            .get(i)
            .and_then(|inst| inst.tasks().get(*t as usize));
        assert!(
            task.is_some_and(|task| task.claimed_by() == Some("ann")
                || matches!(task.state(), TaskState::Completed { .. })),
            "run {run}: acknowledged claim of i{i}.t{t} is lost"
        );
    }
    for (i, t) in &ack.completions {
        let task = instances
            .get(i)
            .and_then(|inst| inst.tasks().get(*t as usize));
        assert!(
            task.is_some_and(|task| matches!(task.state(), TaskState::Completed { .. })),
            "run {run}: acknowledged completion of i{i}.t{t} is lost"
        );
    }
    let mut earliest: Option<DateTime<Utc>> = None;
    for id in engine.instances() {
        let inst = engine.instance(id).unwrap();
        check_instance(&def, &inst, run);
        if inst.status() == Status::Running {
            for timer in inst.timers().iter().filter(|t| !t.fired) {
                earliest = Some(earliest.map_or(timer.at, |e| e.min(timer.at)));
            }
        }
    }
    assert_eq!(
        engine.next_due(),
        earliest,
        "run {run}: the resumed schedule is not the earliest pending timer"
    );
    ack.starts.len() + ack.claims.len() + ack.completions.len() + ack.fired
}

/// Checks one instance against its definition and its own audit trail.
fn check_instance(def: &ProcessDef, inst: &Instance, run: i64) {
    let id = inst.id();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for record in inst.audit() {
        let key = match &record.what {
            Entry::Started => Some("started".to_owned()),
            Entry::TaskCreated { task, .. } => Some(format!("created {task}")),
            Entry::Completed { task, .. } => Some(format!("completed {task}")),
            Entry::InstanceCompleted => Some("instance completed".to_owned()),
            Entry::Timer { kind, task, sla } => Some(format!("timer {kind:?} {task:?} {sla}")),
            Entry::Transition { from, to, .. } => {
                let node = def.node(*from);
                let routes: Vec<_> = node.routes().into_iter().map(|(_, to)| to).collect();
                assert!(
                    node.next().contains(to) || routes.contains(to),
                    "run {run}: {id} moved {} -> {}, which is no flow",
                    node.id(),
                    def.node(*to).id()
                );
                None
            }
            _ => None,
        };
        if let Some(key) = key {
            let n = seen.entry(key.clone()).or_default();
            *n += 1;
            assert_eq!(*n, 1, "run {run}: {id} recorded '{key}' twice");
        }
    }
    assert_eq!(
        seen.get("started"),
        Some(&1),
        "run {run}: {id} has no start"
    );
    // Waiting tokens and open tasks match, one for one.
    let waiting: Vec<_> = inst
        .tokens()
        .iter()
        .filter(|t| t.state == TokenState::Waiting)
        .map(|t| t.node)
        .collect();
    let open: Vec<_> = inst
        .tasks()
        .iter()
        .filter(|t| *t.state() == TaskState::Open)
        .map(|t| t.node())
        .collect();
    assert_eq!(waiting, open, "run {run}: {id} tokens and tasks disagree");
    for node in &waiting {
        assert_eq!(def.node(*node).kind(), NodeKind::UserTask);
    }
    // Open tasks keep their deadline; closed tasks have no pending timer.
    for task in inst.tasks() {
        let timers: Vec<_> = inst
            .timers()
            .iter()
            .filter(|t| t.task == Some(task.id(id).seq()))
            .collect();
        if *task.state() == TaskState::Open {
            assert!(
                timers.iter().any(|t| t.kind == TimerKind::Due),
                "run {run}: open task {} lost its deadline",
                task.id(id)
            );
        } else {
            assert!(
                timers.iter().all(|t| t.fired),
                "run {run}: closed task {} has a pending timer",
                task.id(id)
            );
        }
    }
    if inst.status() == Status::Completed {
        assert!(
            inst.tokens().is_empty(),
            "run {run}: {id} completed with tokens"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Two processes, one task.
// ---------------------------------------------------------------------------------------------

/// Runs only as a child of `two_processes_complete_one_task`: reads the task, writes its
/// `ready` file, waits for the go file, completes the task, and writes `ok` or `conflict` to its
/// `out` file. (Files, not stdout: the test harness captures a test's output.)
#[test]
fn racer_child() {
    let Ok(spec) = std::env::var(RACER) else {
        return;
    };
    let parts: Vec<&str> = spec.split(',').collect();
    let (db, go, instance, me) = (
        Path::new(parts[0]),
        parts[1],
        parts[2].parse::<u64>().unwrap(),
        parts[3],
    );
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = open(db, &clock);
    let task = engine.tasks(InstanceId::new(instance)).unwrap()[0].id;
    std::fs::write(format!("{go}.{me}.ready"), "").unwrap();
    let waiting = Instant::now();
    while !Path::new(go).exists() && waiting.elapsed() < StdDuration::from_secs(60) {
        std::thread::sleep(StdDuration::from_micros(100));
    }
    let result = match engine.complete(task, &Actor::new("ann", ["agent"]), Vars::new()) {
        Ok(()) => "ok".to_owned(),
        Err(ExecError::Conflict(_)) => "conflict".to_owned(),
        Err(e) => format!("error {e}"),
    };
    // Written aside and renamed, so that the parent never reads a half-written file.
    std::fs::write(format!("{go}.{me}.tmp"), result).unwrap();
    std::fs::rename(format!("{go}.{me}.tmp"), format!("{go}.{me}.out")).unwrap();
}

/// Waits (at most a minute) for a file a racer writes, and reads it.
fn wait_for(path: &str) -> Option<String> {
    let start = Instant::now();
    while start.elapsed() < StdDuration::from_secs(60) {
        if let Ok(text) = std::fs::read_to_string(path) {
            return Some(text);
        }
        std::thread::sleep(StdDuration::from_millis(1));
    }
    None
}

#[test]
fn two_processes_complete_one_task() {
    let db = temp("race.db");
    for round in 0..5 {
        let clock = Arc::new(ManualClock::new(t0()));
        let id = open(&db, &clock).start("crash", Vars::new()).unwrap();
        let go = format!("{}.go{round}", db.display());
        let children: Vec<Child> = (0..2)
            .map(|me| spawn(RACER, format!("{},{go},{},{me}", db.display(), id.get())))
            .collect();
        for me in 0..2 {
            let ready = wait_for(&format!("{go}.{me}.ready"));
            assert!(
                ready.is_some(),
                "round {round}: racer {me} did not get ready"
            );
        }
        std::fs::write(&go, "").unwrap();
        let mut results: Vec<String> = (0..2)
            .map(|me| wait_for(&format!("{go}.{me}.out")).unwrap_or_default())
            .collect();
        for mut c in children {
            c.wait().unwrap();
        }
        results.sort();
        assert_eq!(results, ["conflict", "ok"], "round {round}");
        for file in [go.clone()]
            .into_iter()
            .chain((0..2).flat_map(|me| [format!("{go}.{me}.ready"), format!("{go}.{me}.out")]))
        {
            let _ = std::fs::remove_file(file);
        }
        // One completion is stored.
        let inst = open(&db, &clock).instance(id).unwrap();
        let completed = inst
            .audit()
            .iter()
            .filter(|r| matches!(r.what, Entry::Completed { .. }))
            .count();
        assert_eq!(completed, 1, "round {round}");
    }
    remove_store(&db);
}
