//! Throughput harness (issue 5): runs a named workload for a given time on a given number of
//! threads against one shared engine and prints one machine-readable line.
//!
//! ```text
//! cargo run --release --example throughput -- --workload linear|complaint|fanout \
//!     --seconds S --threads N [--no-audit]
//! cargo run --release --example throughput -- --workload waiting --instances 1000000 [--no-audit]
//! cargo run --release --example throughput -- --workload message --seconds S [--no-audit]
//! cargo run --release --example throughput -- --workload linear --seconds 3 --store sqlite:PATH \
//!     [--durability process|full] [--commit group|single]
//! cargo run --release --example throughput -- --workload reopen --instances 100000 --store sqlite:PATH
//! cargo run --release --example throughput -- --workload lines --seconds S [--lines 100]
//! cargo run --release --example throughput -- --workload waiting-lines --instances 2000 [--lines 100]
//! cargo run --release --example throughput -- --workload call --seconds S [--no-audit]
//! ```
//!
//! `call` times call activity round trips on one thread: a parent whose only work is a call
//! activity starts a child that runs from its start to its end, and resumes; it prints the
//! nanoseconds per parent instance, per plain instance (start to end, no call) and their
//! difference, the round trip (the child's start, run and end, and the parent's resume, through
//! the outbox), with the floor.
//!
//! `lines` runs an order of `--lines` lines (default 100) through one multi-instance service
//! task: its transitions are the `Transition` records plus one per line (`ItemCompleted`: an
//! item is one run of the task), and the line also says `items_per_sec`. `waiting-lines` starts
//! `--instances` instances waiting at a multi-instance user task with `--lines` open items each,
//! and as many waiting at a plain user task with the same variables, and prints the resident
//! memory the open items add, per item.
//!
//! With `--store`, every call commits to a SQLite file (deleted first); the default durability
//! here is `process` (a killed process loses nothing; see `procflow::Durability`). `reopen`
//! starts `--instances` instances that wait at a user task, then times `EngineBuilder::open`
//! resuming them. `message` starts instances waiting at a race (a message catch against a
//! 48-hour timer) in untimed batches, then times `Engine::deliver` deciding each race (one
//! thread), and prints the nanoseconds per delivery.
//!
//! Transitions are the audit trail's `Transition` records, counted on one instance per route
//! at setup. Peak RSS is `VmHWM` from `/proc/self/status`. Every timed run also measures the
//! hardware floor for one transition in the same process (`floor_ns` in `benches/common`) and
//! prints the ratio of a thread's time per transition to it.

#[path = "../benches/common/mod.rs"]
mod common;

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::path::{Path, PathBuf};

use procflow::{Durability, Engine, ProcessDef, SqliteStore, Vars};

use common::*;

const USAGE: &str = "usage: throughput --workload linear|complaint|fanout|waiting|reopen|message|lines|waiting-lines|call \
[--seconds S] [--threads N] [--no-audit] [--instances N] [--store sqlite:PATH] \
[--durability process|full] [--commit group|single] [--lines N]";

struct Args {
    workload: String,
    seconds: f64,
    threads: usize,
    audit: bool,
    instances: u64,
    /// The SQLite file, with `--store sqlite:PATH`.
    store: Option<PathBuf>,
    durability: Durability,
    group_commit: bool,
    /// Order lines per instance for `lines` and `waiting-lines`.
    lines: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        workload: "linear".into(),
        seconds: 3.0,
        threads: 1,
        audit: true,
        instances: 1_000_000,
        store: None,
        durability: Durability::Process,
        group_commit: true,
        lines: 100,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--workload" => args.workload = value()?,
            "--seconds" => args.seconds = num(&flag, &value()?)?,
            "--threads" => args.threads = num(&flag, &value()?)?,
            "--instances" => args.instances = num(&flag, &value()?)?,
            "--lines" => args.lines = num(&flag, &value()?)?,
            "--no-audit" => args.audit = false,
            "--store" => {
                let v = value()?;
                let path = v
                    .strip_prefix("sqlite:")
                    .ok_or_else(|| format!("--store takes sqlite:PATH, not '{v}'"))?;
                args.store = Some(PathBuf::from(path));
            }
            "--durability" => {
                args.durability = match value()?.as_str() {
                    "process" => Durability::Process,
                    "full" => Durability::Full,
                    v => return Err(format!("--durability takes process or full, not '{v}'")),
                }
            }
            "--commit" => {
                args.group_commit = match value()?.as_str() {
                    "group" => true,
                    "single" => false,
                    v => return Err(format!("--commit takes group or single, not '{v}'")),
                }
            }
            "-h" | "--help" => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument '{flag}'\n{USAGE}")),
        }
    }
    if args.threads == 0 || args.seconds <= 0.0 || args.instances == 0 {
        return Err(format!(
            "--threads, --seconds and --instances must be positive\n{USAGE}"
        ));
    }
    Ok(args)
}

fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag}: '{v}' is not a valid number"))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match args.workload.as_str() {
        "linear" => {
            let yaml = linear_def(10);
            let per = count_transitions([parse(&yaml)], |e| run_automatic(e, LINEAR));
            let engine = engine(&args, [parse(&yaml)]);
            timed(&args, &engine, |e, _| {
                run_automatic(e, LINEAR);
                per
            });
        }
        "fanout" => {
            let yaml = fanout_def(16);
            let per = count_transitions([parse(&yaml)], |e| run_automatic(e, FANOUT));
            let engine = engine(&args, [parse(&yaml)]);
            timed(&args, &engine, |e, _| {
                run_automatic(e, FANOUT);
                per
            });
        }
        "complaint" => {
            let driver = ComplaintDriver::new(&load("complaint-handling.yaml"));
            let per: Vec<u64> = (0..ComplaintDriver::VARIANTS)
                .map(|v| count_transitions([load("complaint-handling.yaml")], |e| driver.run(e, v)))
                .collect();
            let engine = engine(&args, [load("complaint-handling.yaml")]);
            timed(&args, &engine, |e, i| {
                let v = (i % ComplaintDriver::VARIANTS as u64) as usize;
                driver.run(e, v);
                per[v]
            });
        }
        "waiting" => waiting(&args),
        "message" => message(&args),
        "lines" => {
            let yaml = lines_def(args.lines, false);
            let (transitions, items) = count_steps([parse(&yaml)], |e| run_automatic(e, LINES));
            assert_eq!(items, args.lines as u64, "one item per line");
            let per = transitions + items;
            let engine = engine(&args, [parse(&yaml)]);
            timed(&args, &engine, |e, _| {
                run_automatic(e, LINES);
                per
            });
        }
        "waiting-lines" => waiting_lines(&args),
        "call" => call(&args),
        "reopen" => {
            if let Err(e) = reopen(&args) {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
        other => {
            eprintln!("unknown workload '{other}'\n{USAGE}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// An engine with `defs` deployed: in memory, or on a new SQLite file with `--store`.
fn engine(args: &Args, defs: impl IntoIterator<Item = ProcessDef>) -> Engine {
    match &args.store {
        None => engine_with(defs, args.audit),
        Some(path) => engine_on(defs, args.audit, sqlite(args, path)),
    }
}

/// A new store file at `path` (an old one and its `-wal` and `-shm` files are deleted).
fn sqlite(args: &Args, path: &Path) -> SqliteStore {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    SqliteStore::options()
        .durability(args.durability)
        .group_commit(args.group_commit)
        .create(path)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Starts `args.instances` instances waiting at a user task on a new store, then times opening
/// an engine that resumes them all.
fn reopen(args: &Args) -> Result<(), String> {
    let path = args
        .store
        .as_deref()
        .ok_or("--workload reopen needs --store sqlite:PATH")?;
    let defs = || [parse(&waiting_def())];
    {
        let engine = engine_on(defs(), args.audit, sqlite(args, path));
        for _ in 0..args.instances {
            engine
                .start(WAITING, Vars::new())
                .map_err(|e| e.to_string())?;
        }
    }
    let start = Instant::now();
    let store = SqliteStore::options()
        .durability(args.durability)
        .open(path)
        .map_err(|e| e.to_string())?;
    let engine = builder_for(&defs(), procflow::Config::default())
        .open(store)
        .map_err(|e| e.to_string())?;
    let secs = start.elapsed().as_secs_f64();
    let resumed = engine.instances().len() as u64;
    println!(
        "workload=reopen instances={} resumed={resumed} reopen_seconds={secs:.3} peak_rss_kb={}",
        args.instances,
        proc_status_kb("VmHWM"),
    );
    if resumed != args.instances {
        return Err(format!("resumed {resumed} of {} instances", args.instances));
    }
    Ok(())
}

/// Runs `one` (one instance; it returns the instance's transitions) on `args.threads` threads
/// until `args.seconds` have passed, then prints the line.
fn timed(args: &Args, engine: &Engine, one: impl Fn(&Engine, u64) -> u64 + Sync) {
    let instances = AtomicU64::new(0);
    let transitions = AtomicU64::new(0);
    let budget = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..args.threads {
            s.spawn(|| {
                let (mut n, mut t) = (0u64, 0u64);
                'run: loop {
                    // Read the clock once per batch to keep it off the measured path.
                    for _ in 0..64 {
                        t += one(engine, n);
                        n += 1;
                    }
                    if start.elapsed() >= budget {
                        break 'run;
                    }
                }
                instances.fetch_add(n, Ordering::Relaxed);
                transitions.fetch_add(t, Ordering::Relaxed);
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let transitions = transitions.into_inner();
    let instances = instances.into_inner();
    let items = if args.workload == "lines" {
        format!(
            " lines={} items_per_sec={:.0}",
            args.lines,
            (instances * args.lines as u64) as f64 / secs
        )
    } else {
        String::new()
    };
    // The floor, measured in this run, after the workload (on the same warm core): the median
    // of three short runs.
    let mut floors: Vec<f64> = (0..3).map(|_| floor_ns(10, 2_000_000)).collect();
    floors.sort_by(f64::total_cmp);
    let floor = floors[1];
    let thread_ns = secs * 1e9 * args.threads as f64 / transitions as f64;
    println!(
        "workload={} threads={} instances={} transitions={} seconds={:.3} transitions_per_sec={:.0} peak_rss_kb={} audit={} thread_ns_per_transition={:.1} floor_ns_per_transition={floor:.2} ratio_to_floor={:.1}{}",
        args.workload,
        args.threads,
        instances,
        transitions,
        secs,
        transitions as f64 / secs,
        proc_status_kb("VmHWM"),
        args.audit,
        thread_ns,
        thread_ns / floor,
        items
            + &match &args.store {
                Some(path) => format!(
                    " store=sqlite:{} durability={:?} commit={} instances_per_sec={:.0}",
                    path.display(),
                    args.durability,
                    if args.group_commit { "group" } else { "single" },
                    instances as f64 / secs,
                ),
                None => String::new(),
            },
    );
}

/// Starts `args.instances` instances that wait at a user task and prints the resident memory
/// they add, per instance.
fn waiting(args: &Args) {
    let engine = engine_with([parse(&waiting_def())], args.audit);
    // Warm the allocator and the engine's maps, then measure from there.
    engine.start(WAITING, Vars::new()).expect("starts");
    let before = proc_status_kb("VmRSS");
    let start = Instant::now();
    for _ in 0..args.instances {
        engine.start(WAITING, Vars::new()).expect("starts");
    }
    let secs = start.elapsed().as_secs_f64();
    let after = proc_status_kb("VmRSS");
    let bytes = (after.saturating_sub(before) * 1024) as f64 / args.instances as f64;
    println!(
        "workload=waiting instances={} bytes_per_waiting_instance={:.0} peak_rss_kb={} audit={} start_ns={:.0}",
        args.instances,
        bytes,
        proc_status_kb("VmHWM"),
        args.audit,
        secs * 1e9 / args.instances as f64,
    );
    assert_eq!(engine.instances().len() as u64, args.instances + 1);
}

/// Starts instances waiting at a race (message against timer) in batches outside the clock, then
/// times delivering the message to each: one `deliver` per instance, each deciding its race (the
/// timer branch withdrawn, its timer dropped) and moving the token on to the user task after it.
/// The instances are removed after each batch, outside the clock. Prints ns per delivery.
fn message(args: &Args) {
    const BATCH: usize = 100_000;
    let engine = engine_with([parse(&message_race_def())], args.audit);
    let budget = Duration::from_secs_f64(args.seconds);
    let (mut delivered, mut spent) = (0u64, Duration::ZERO);
    let mut ids = Vec::with_capacity(BATCH);
    while spent < budget {
        ids.clear();
        for _ in 0..BATCH {
            ids.push(engine.start(MESSAGE_RACE, Vars::new()).expect("starts"));
        }
        let start = Instant::now();
        for &id in &ids {
            engine
                .deliver(id, "confirmed", Vars::new())
                .expect("delivers");
        }
        spent += start.elapsed();
        delivered += ids.len() as u64;
        for &id in &ids {
            let inst = engine.remove(id).expect("still held");
            assert_eq!(inst.tasks().len(), 1, "the race was decided by the message");
        }
    }
    println!(
        "workload=message deliveries={delivered} seconds={:.3} ns_per_delivery={:.0} deliveries_per_sec={:.0} peak_rss_kb={} audit={}",
        spent.as_secs_f64(),
        spent.as_secs_f64() * 1e9 / delivered as f64,
        delivered as f64 / spent.as_secs_f64(),
        proc_status_kb("VmHWM"),
        args.audit,
    );
}

/// Starts `args.instances` instances waiting at a plain user task, then as many waiting at a
/// multi-instance user task with `args.lines` open items each (the same variables), and prints
/// the resident memory per open item: the difference between the two, per item.
fn waiting_lines(args: &Args) {
    let n = args.lines.max(1);
    let engine = engine_with(
        [parse(&plain_lines_def(n)), parse(&lines_def(n, true))],
        args.audit,
    );
    // Warm the allocator and the engine's maps with one of each.
    engine.start(PLAIN_LINES, Vars::new()).expect("starts");
    engine.start(WAITING_LINES, Vars::new()).expect("starts");
    let measure = |process: &str| {
        let before = proc_status_kb("VmRSS");
        for _ in 0..args.instances {
            engine.start(process, Vars::new()).expect("starts");
        }
        (proc_status_kb("VmRSS").saturating_sub(before) * 1024) as f64 / args.instances as f64
    };
    let plain = measure(PLAIN_LINES);
    let multi = measure(WAITING_LINES);
    let id = *engine.instances().last().expect("instances");
    assert_eq!(
        engine.tasks(id).expect("instance").len(),
        n,
        "one open task per line"
    );
    println!(
        "workload=waiting-lines instances={} lines={n} bytes_per_plain_instance={plain:.0} bytes_per_multi_instance={multi:.0} bytes_per_open_item={:.0} peak_rss_kb={} audit={}",
        args.instances,
        (multi - plain) / n as f64,
        proc_status_kb("VmHWM"),
        args.audit,
    );
}

/// Times call activity round trips (see the module docs): parents that call a child running
/// start to end, against plain instances running start to end, on one thread.
fn call(args: &Args) {
    const CALLEE: &str = "id: callee\nversion: 1\nname: Callee\nnodes:\n  start: { kind: start, next: end }\n  end: { kind: end }\n";
    const CALLER: &str = "id: caller\nversion: 1\nname: Caller\nnodes:\n  start: { kind: start, next: call }\n  call: { kind: call, name: Call, process: callee, next: end }\n  end: { kind: end }\n";
    let plain = CALLEE.replace("id: callee", "id: plain");
    let engine = engine_with([parse(CALLEE), parse(CALLER), parse(&plain)], args.audit);
    let time = |process: &str| {
        // Warm up, then batches until half the budget has passed.
        for _ in 0..10_000 {
            engine.start(process, Vars::new()).expect("starts");
        }
        let budget = Duration::from_secs_f64(args.seconds / 2.0);
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < budget {
            for _ in 0..1_000 {
                engine.start(process, Vars::new()).expect("starts");
            }
            n += 1_000;
        }
        start.elapsed().as_secs_f64() * 1e9 / n as f64
    };
    let caller = time("caller");
    let plain = time("plain");
    let mut floors: Vec<f64> = (0..3).map(|_| floor_ns(10, 2_000_000)).collect();
    floors.sort_by(f64::total_cmp);
    println!(
        "workload=call ns_per_parent_instance={caller:.0} ns_per_plain_instance={plain:.0} ns_per_round_trip={:.0} floor_ns_per_transition={:.2} peak_rss_kb={} audit={}",
        caller - plain,
        floors[1],
        proc_status_kb("VmHWM"),
        args.audit,
    );
}
