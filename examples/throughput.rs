//! Throughput harness (issue 5): runs a named workload for a given time on a given number of
//! threads against one shared engine and prints one machine-readable line.
//!
//! ```text
//! cargo run --release --example throughput -- --workload linear|complaint|fanout \
//!     --seconds S --threads N [--no-audit]
//! cargo run --release --example throughput -- --workload waiting --instances 1000000 [--no-audit]
//! cargo run --release --example throughput -- --workload message --seconds S [--no-audit]
//! cargo run --release --example throughput -- --workload linear --seconds 3 --store sqlite:PATH \
//!     [--durability process|full] [--commit group|single] [--shared]
//! cargo run --release --example throughput -- --workload reopen --instances 100000 --store sqlite:PATH \
//!     [--reuse] [--cache N] [--receivers] [--clerk-list]
//! cargo run --release --example throughput -- --workload lines --seconds S [--lines 100]
//! cargo run --release --example throughput -- --workload waiting-lines --instances 2000 [--lines 100]
//! cargo run --release --example throughput -- --workload waiting-keys --instances 200000
//! cargo run --release --example throughput -- --workload correlate --instances 1000000 \
//!     [--store sqlite:PATH --instances 100000 --threads N]
//! cargo run --release --example throughput -- --workload call --seconds S [--no-audit]
//! cargo run --release --features postgres --example throughput -- --workload timers \
//!     --instances 30000 --threads 3 --store postgres:URL
//! ```
//!
//! `timers` (PostgreSQL only) seeds `--instances` instances waiting at a one-hour timer, then
//! `--threads` engines, each on its own store handle (a replica), tick two hours later until
//! every timer fired, and prints fired timers per second (claimed with `FOR UPDATE SKIP
//! LOCKED`, each fired once: checked in the database afterwards).
//!
//! `correlate` starts `--instances` instances waiting at a catch of a correlated message (key
//! `order_id`, each its own value), then correlates one message to each by key
//! (`Engine::correlate`, in a scattered order): in memory it prints the median and mean
//! nanoseconds per correlate (the median over batches of 1,000) and the resident memory per
//! waiting instance beside the same instances waiting at an uncorrelated catch (the index's
//! cost); with `--store` it correlates on `--threads` threads and prints messages per second.
//! `--deployed N` deploys N more definitions beside it, each with a message of its own, as an
//! operator's engine holds its other processes (the receivers of a message are looked up, not
//! every definition scanned).
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
//! memory the open items add, per item. `waiting-keys` starts `--instances` instances waiting at
//! a user task whose definition lists two business keys (`customer_id`, shared by four instances
//! each, and `order_id`, one per instance), and as many of a definition with the same variables
//! and no `keys:`, and prints the resident memory the key index adds, per key per instance.
//!
//! With `--store`, every call commits to a SQLite file (deleted first); the default durability
//! here is `process` (a killed process loses nothing; see `procflow::Durability`); `--shared`
//! opens it as a file several processes share (`SqliteOptions::shared`). `reopen`
//! starts `--instances` instances that wait at a user task, then times `EngineBuilder::open`
//! resuming them (with `--receivers`, instances waiting at a catch of a message correlated by
//! `order_id`, each its own value; after opening, the engine correlates 10,000 messages to
//! instances it does not hold, in a scattered order, and the line says `messages_per_sec`).
//! It also times a lead's work list before and after `Engine::backfill_offers` (which has
//! work only on a store migrated from before stores indexed offers: `--reuse` on a store an
//! older build filled), and with `--clerk-list` the work list of a clerk, to whom every waiting
//! task is offered (every instance is read from the store).
//! `message` starts instances waiting at a race (a message catch against a
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

use procflow::{Actor, Durability, Engine, Organisation, ProcessDef, SqliteStore, Vars};

use common::*;

#[cfg(feature = "postgres")]
#[path = "throughput/pg.rs"]
mod pg;

const USAGE: &str = "usage: throughput --workload linear|complaint|fanout|waiting|reopen|message|lines|waiting-lines|waiting-keys|correlate|worklist|call|timers \
[--seconds S] [--threads N] [--no-audit] [--instances N] [--store sqlite:PATH|postgres:URL] [--reuse] [--cache N] [--receivers] [--clerk-list] \
[--durability process|full] [--commit group|single] [--shared] [--lines N] [--deployed N]";

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
    /// `--shared`: the SQLite file is opened as shared by several processes
    /// (`SqliteOptions::shared`).
    shared: bool,
    /// Order lines per instance for `lines` and `waiting-lines`.
    lines: usize,
    /// The database URL, with `--store postgres:URL` (feature `postgres`).
    postgres: Option<String>,
    /// `reopen`: reopen the store a previous run filled instead of filling a new one.
    reuse: bool,
    /// `reopen`: the engine's cache capacity (`Config::cache`); 0 keeps every instance.
    cache: usize,
    /// `reopen`: the instances wait at a catch of a correlated message instead of a user task.
    receivers: bool,
    /// `reopen`: also time the work list of a clerk, to whom every waiting task is offered
    /// (every instance is read).
    clerk_list: bool,
    /// `correlate`: more definitions deployed beside the receiver's.
    deployed: u32,
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
        shared: false,
        lines: 100,
        postgres: None,
        reuse: false,
        cache: 10_000,
        receivers: false,
        deployed: 0,
        clerk_list: false,
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
            "--reuse" => args.reuse = true,
            "--receivers" => args.receivers = true,
            "--clerk-list" => args.clerk_list = true,
            "--cache" => args.cache = num(&flag, &value()?)?,
            "--store" => {
                let v = value()?;
                if let Some(url) = v.strip_prefix("postgres:") {
                    if !cfg!(feature = "postgres") {
                        return Err("--store postgres:URL needs --features postgres".into());
                    }
                    args.postgres = Some(url.to_owned());
                    continue;
                }
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
            "--shared" => args.shared = true,
            "--deployed" => args.deployed = num(&flag, &value()?)?,
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
        "worklist" => worklist(&args),
        "waiting-keys" => waiting_keys(&args),
        "correlate" => correlate(&args),
        "call" => call(&args),
        #[cfg(feature = "postgres")]
        "timers" if args.postgres.is_some() => {
            let url = args.postgres.as_deref().unwrap_or_default();
            pg::timers(url, args.instances, args.threads);
        }
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
    #[cfg(feature = "postgres")]
    if let Some(url) = &args.postgres {
        return engine_on(defs, args.audit, pg::store(url));
    }
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
        .shared(args.shared)
        .create(path)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The engine settings of `reopen`: `--cache N` bounds the instances it keeps (0: all).
fn reopen_config(args: &Args) -> procflow::Config {
    let mut config = procflow::Config::default();
    config.audit = args.audit;
    config.cache = (args.cache > 0).then_some(args.cache);
    config
}

/// Starts `args.instances` instances waiting at a user task on a new store (`--threads`
/// threads, through an engine with a bounded cache so that the filling process stays small),
/// unless `--reuse` reopens what an earlier run filled; then, with the peak RSS reset, times
/// opening an engine on the store (`--cache`), and what it then answers from the store: the
/// running instances' ids, a work list of a role none of the waiting tasks is offered to, and one
/// completion of a task of an instance it did not hold.
fn reopen(args: &Args) -> Result<(), String> {
    let defs = || {
        [parse(&if args.receivers {
            correlate_def(true)
        } else {
            waiting_def()
        })]
    };
    let process = if args.receivers {
        "correlated"
    } else {
        WAITING
    };
    let open_store = || -> Result<std::sync::Arc<dyn procflow::Store>, String> {
        #[cfg(feature = "postgres")]
        if let Some(url) = &args.postgres {
            return procflow::PostgresStore::connect(url)
                .map(|s| std::sync::Arc::new(s) as std::sync::Arc<dyn procflow::Store>)
                .map_err(|e| e.to_string());
        }
        let path = args
            .store
            .as_deref()
            .ok_or("--workload reopen needs --store sqlite:PATH or postgres:URL")?;
        SqliteStore::options()
            .durability(args.durability)
            .shared(args.shared)
            .open(path)
            .map(|s| std::sync::Arc::new(s) as std::sync::Arc<dyn procflow::Store>)
            .map_err(|e| e.to_string())
    };
    if !args.reuse {
        let fill_start = Instant::now();
        let mut config = reopen_config(args);
        config.cache = Some(10_000);
        let store: std::sync::Arc<dyn procflow::Store> = {
            #[cfg(feature = "postgres")]
            let pg = args.postgres.as_ref().map(|url| pg::store(url));
            #[cfg(not(feature = "postgres"))]
            let pg: Option<SqliteStore> = None;
            match (pg, &args.store) {
                (Some(pg), _) => std::sync::Arc::new(pg),
                (None, Some(path)) => std::sync::Arc::new(sqlite(args, path)),
                (None, None) => {
                    return Err(
                        "--workload reopen needs --store sqlite:PATH or postgres:URL".into(),
                    );
                }
            }
        };
        let engine = builder_for(&defs(), config)
            .open(store)
            .map_err(|e| e.to_string())?;
        for def in defs() {
            engine.deploy(def).map_err(|e| e.to_string())?;
        }
        let left = AtomicU64::new(args.instances);
        std::thread::scope(|s| {
            for _ in 0..args.threads {
                s.spawn(|| {
                    while let Ok(n) = left
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    {
                        let vars = if args.receivers {
                            order_key(n - 1)
                        } else {
                            Vars::new()
                        };
                        engine.start(process, vars).expect("start");
                    }
                });
            }
        });
        eprintln!(
            "filled {} instances in {:.1} s",
            args.instances,
            fill_start.elapsed().as_secs_f64()
        );
    }
    // The peak RSS from here on (Linux: writing 5 to clear_refs resets VmHWM).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_before = proc_status_kb("VmRSS");
    let start = Instant::now();
    let engine = builder_for(&defs(), reopen_config(args))
        .open(open_store()?)
        .map_err(|e| e.to_string())?;
    let secs = start.elapsed().as_secs_f64();
    let open_rss = proc_status_kb("VmHWM");
    let start = Instant::now();
    let ids = engine.instances();
    let list_secs = start.elapsed().as_secs_f64();
    let resumed = ids.len() as u64;
    // A work list whose actor none of the waiting tasks is offered to (they are the clerks'):
    // what a store that indexes offers answers without reading an instance.
    let start = Instant::now();
    let lead_tasks = engine.work_list(&Actor::new("lee", ["lead"])).len();
    let lead_list_ms = start.elapsed().as_secs_f64() * 1e3;
    // A store migrated from before it indexed offers: every running instance matches every
    // work list until the engine gives it its offers (nothing to do on a store filled by this
    // build). Then the same work list again.
    let start = Instant::now();
    let mut backfilled = 0;
    loop {
        match engine.backfill_offers(10_000).map_err(|e| e.to_string())? {
            0 => break,
            n => backfilled += n,
        }
    }
    let backfill_secs = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let after_backfill = engine.work_list(&Actor::new("lee", ["lead"])).len();
    let lead_list_after_ms = start.elapsed().as_secs_f64() * 1e3;
    assert_eq!(
        after_backfill, lead_tasks,
        "the backfill changes no work list"
    );
    // A clerk's work list: every waiting instance, none held, read from the store.
    let (clerk_tasks, clerk_list_ms) = if args.clerk_list {
        let start = Instant::now();
        let n = engine.work_list(&Actor::new("cat", ["clerk"])).len();
        (n, start.elapsed().as_secs_f64() * 1e3)
    } else {
        (0, 0.0)
    };
    // A call on an instance the engine did not read at opening: read on demand.
    let start = Instant::now();
    let last = *ids.last().ok_or("no instance")?;
    let (call_ms, messages_per_sec, received) = if args.receivers {
        // The fill counted down: the newest instance waits for order 0. Then messages to
        // 10,000 more orders, scattered over the store, none of them held; an order an earlier
        // run (`--reuse`) answered matches nobody.
        let c = engine
            .correlate("reply", reply(0))
            .map_err(|e| e.to_string())?;
        let call_ms = start.elapsed().as_secs_f64() * 1e3;
        let n = args.instances.min(10_000);
        let order = scattered(args.instances);
        let mut received = c.received.len();
        let start = Instant::now();
        for j in 1..=n {
            let c = engine
                .correlate("reply", reply(order(j)))
                .map_err(|e| e.to_string())?;
            received += c.received.len();
        }
        (call_ms, n as f64 / start.elapsed().as_secs_f64(), received)
    } else {
        let task = engine.tasks(last).map_err(|e| e.to_string())?[0].id;
        engine
            .complete(task, &Actor::new("ann", ["clerk"]), Vars::new())
            .map_err(|e| e.to_string())?;
        (start.elapsed().as_secs_f64() * 1e3, 0.0, 0)
    };
    println!(
        "workload=reopen store={} instances={} cache={} resumed={resumed} reopen_seconds={secs:.3} \
         open_peak_rss_kb={open_rss} rss_before_open_kb={rss_before} instances_query_seconds={list_secs:.3} \
         lead_work_list_ms={lead_list_ms:.2} lead_tasks={lead_tasks} \
         backfilled={backfilled} backfill_seconds={backfill_secs:.3} \
         lead_work_list_after_backfill_ms={lead_list_after_ms:.2} \
         clerk_work_list_ms={clerk_list_ms:.1} clerk_tasks={clerk_tasks} \
         first_call_ms={call_ms:.2} messages_per_sec={messages_per_sec:.0} received={received} peak_rss_kb={}",
        if args.postgres.is_some() {
            "postgres"
        } else {
            "sqlite"
        },
        args.instances,
        args.cache,
        proc_status_kb("VmHWM"),
    );
    // A reused store lost one running instance per earlier run (the completion above).
    if !args.reuse && resumed < args.instances {
        return Err(format!("resumed {resumed} of {} instances", args.instances));
    }
    Ok(())
}

/// Runs `one` (one instance; it returns the instance's transitions) on `args.threads` threads
/// until `args.seconds` have passed, then prints the line.
fn timed(args: &Args, engine: &Engine, one: impl Fn(&Engine, u64) -> u64 + Sync) {
    let instances = AtomicU64::new(0);
    let transitions = AtomicU64::new(0);
    let cpu_ns = AtomicU64::new(0);
    let budget = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..args.threads {
            s.spawn(|| {
                let (mut n, mut t) = (0u64, 0u64);
                let cpu = thread_cpu_ns();
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
                cpu_ns.fetch_add(thread_cpu_ns().saturating_sub(cpu), Ordering::Relaxed);
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
    // On CPU time: what the threads' own running took, without the time the shared cores ran
    // other processes.
    let cpu_ns = cpu_ns.into_inner() as f64 / transitions as f64;
    println!(
        "workload={} threads={} instances={} transitions={} seconds={:.3} transitions_per_sec={:.0} peak_rss_kb={} audit={} thread_ns_per_transition={:.1} cpu_ns_per_transition={cpu_ns:.1} cpu_transitions_per_sec={:.0} floor_ns_per_transition={floor:.2} ratio_to_floor={:.1}{}",
        args.workload,
        args.threads,
        instances,
        transitions,
        secs,
        transitions as f64 / secs,
        proc_status_kb("VmHWM"),
        args.audit,
        thread_ns,
        args.threads as f64 * 1e9 / cpu_ns.max(f64::MIN_POSITIVE),
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
    #[cfg(feature = "postgres")]
    if let Some(url) = &args.postgres {
        let commits = pg::commits(url);
        let commits_per_sec = commits as f64 / secs;
        let (floor, ratio) = match pg::floor(url, args.threads, args.seconds) {
            Ok(tps) => (format!("{tps:.0}"), format!("{:.2}", commits_per_sec / tps)),
            Err(why) => {
                eprintln!("no pgbench floor: {why}");
                ("none".into(), "none".into())
            }
        };
        println!(
            "store=postgres threads={} transitions_per_sec={:.0} commits={commits} commits_per_sec={commits_per_sec:.0} pgbench_simple_update_tps={floor} ratio_to_pgbench={ratio}",
            args.threads,
            transitions as f64 / secs,
        );
    }
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

/// Issue 14: `work_list` for one person over `args.instances` waiting instances, each at a task
/// for the network operations of its local network (489 networks, 10,000 people): first the
/// scan of an engine without an organisation, then the index of an engine with one.
fn worklist(args: &Args) {
    let def = scoped_def().replace("    skills: [fiber_splicing]\n", "");
    let start_all = |engine: &Engine| {
        for i in 0..args.instances {
            let mut vars = Vars::new();
            vars.insert(
                "local_network".into(),
                serde_json::json!(format!("net{}", i % 489)),
            );
            engine.start(SCOPED, vars).expect("starts");
        }
    };
    // The median of a few calls, in milliseconds, and the list's length.
    let time = |engine: &Engine, actor: &Actor| {
        let mut ms = Vec::new();
        let mut len = 0;
        for _ in 0..5 {
            let t = Instant::now();
            len = engine.work_list(actor).len();
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        ms.sort_by(f64::total_cmp);
        (ms[ms.len() / 2], len)
    };
    let scan = {
        let engine = engine_with([parse(&def)], args.audit);
        start_all(&engine);
        // Someone with no task among them: the scan visits every instance and keeps none.
        let idle = time(&engine, &Actor::new("cs", ["customer_service"]));
        let ops = time(&engine, &Actor::new("p7", ["network_ops"]));
        (idle, ops)
    };
    let org = Organisation::from_yaml(&org_yaml(489, 10_000)).expect("the organisation loads");
    let engine = Engine::builder().organisation(org).build();
    engine.deploy(parse(&def)).expect("deploys");
    let t = Instant::now();
    start_all(&engine);
    let start_ns = t.elapsed().as_secs_f64() * 1e9 / args.instances as f64;
    let (indexed_ms, indexed_len) = time(&engine, &Actor::new("p7", [""; 0]));
    let (idle_ms, _) = time(&engine, &Actor::new("cs", ["customer_service"]));
    println!(
        "workload=worklist instances={} scan_idle_ms={:.2} scan_ops_ms={:.2} scan_ops_tasks={} indexed_ms={indexed_ms:.3} indexed_tasks={indexed_len} indexed_idle_ms={idle_ms:.3} start_ns_with_org={start_ns:.0} peak_rss_kb={}",
        args.instances,
        scan.0.0,
        scan.1.0,
        scan.1.1,
        proc_status_kb("VmHWM"),
    );
}

/// A user task waiting for a clerk, with a customer and an order number; `keys` lists them as
/// business keys or not.
fn keyed_def(id: &str, keys: bool) -> String {
    format!(
        "id: {id}\nversion: 1\nname: Keyed\n{HEADER_ROLES}{}variables:
  customer_id: {{ type: string }}
  order_id: {{ type: string }}
nodes:
  start: {{ kind: start, next: review }}
  review:
    kind: user_task
    name: Review
    raci: {{ responsible: [clerk], accountable: lead, informed: [audit] }}
    next: end
  end: {{ kind: end }}
",
        if keys {
            "keys: [customer_id, order_id]\n"
        } else {
            ""
        }
    )
}

/// Starts `args.instances` instances holding two business keys, and as many with the same
/// variables of a definition without `keys:`, and prints the resident memory the key index
/// adds per key per waiting instance: the difference between the two, per key.
fn waiting_keys(args: &Args) {
    const PLAIN: &str = "unkeyed";
    const KEYED: &str = "keyed";
    // One engine each, so that their instance maps grow alike (a map's resize falls in the same
    // place of both runs); the first stays alive while the second runs.
    let plain_engine = engine_with([parse(&keyed_def(PLAIN, false))], args.audit);
    let keyed_engine = engine_with([parse(&keyed_def(KEYED, true))], args.audit);
    let n = args.instances.max(1);
    let vars = |i: u64| -> Vars {
        [
            ("customer_id".to_owned(), format!("C-{:08}", i / 4).into()),
            ("order_id".to_owned(), format!("ORD-{i:010}").into()),
        ]
        .into_iter()
        .collect()
    };
    // Warm the allocator and the engines' maps with one of each.
    plain_engine
        .start(PLAIN, vars(u64::MAX / 2))
        .expect("starts");
    keyed_engine
        .start(KEYED, vars(u64::MAX / 2))
        .expect("starts");
    let measure = |engine: &Engine, process: &str| {
        let before = proc_status_kb("VmRSS");
        let start = Instant::now();
        for i in 0..n {
            engine.start(process, vars(i)).expect("starts");
        }
        let ns = start.elapsed().as_secs_f64() * 1e9 / n as f64;
        let bytes = (proc_status_kb("VmRSS").saturating_sub(before) * 1024) as f64 / n as f64;
        (bytes, ns)
    };
    let (plain, plain_ns) = measure(&plain_engine, PLAIN);
    let (keyed, keyed_ns) = measure(&keyed_engine, KEYED);
    let found = keyed_engine
        .find_by_key("customer_id", format!("C-{:08}", (n - 1) / 4))
        .expect("a declared key");
    assert!(!found.is_empty(), "the last customer's orders are found");
    println!(
        "workload=waiting-keys instances={n} keys_per_instance=2 bytes_per_plain_instance={plain:.0} bytes_per_keyed_instance={keyed:.0} bytes_per_key={:.1} start_ns_plain={plain_ns:.0} start_ns_keyed={keyed_ns:.0} peak_rss_kb={} audit={}",
        (keyed - plain) / 2.0,
        proc_status_kb("VmHWM"),
        args.audit,
    );
}

/// A process whose instances wait at a catch of a message correlated by `order_id` (or, with
/// `correlated: false`, the same catch of an uncorrelated message).
fn correlate_def(correlated: bool) -> String {
    let (id, rule) = if correlated {
        ("correlated", ", correlate: { order_id: order_id }")
    } else {
        ("uncorrelated", "")
    };
    format!(
        "id: {id}
version: 1
name: Correlated wait
variables: {{ order_id: {{ type: integer }}, answer: {{ type: string }} }}
keys: [order_id]
messages:
  reply: {{ flow: 55, payload: [order_id, answer]{rule} }}
nodes:
  start: {{ kind: start, next: wait }}
  wait: {{ kind: catch, message: reply, next: end }}
  end: {{ kind: end }}
"
    )
}

/// Another process, `other{k}`, with a message of its own (`--deployed`).
fn other_def(k: u32) -> String {
    format!(
        "id: other{k}
version: 1
name: Another process
variables: {{ order_id: {{ type: integer }} }}
keys: [order_id]
messages:
  note{k}: {{ payload: [order_id], correlate: {{ order_id: order_id }} }}
nodes:
  start: {{ kind: start, next: wait }}
  wait: {{ kind: catch, message: note{k}, next: end }}
  end: {{ kind: end }}
"
    )
}

/// The start variables of a waiting instance of `correlate_def`: its order number.
fn order_key(i: u64) -> Vars {
    let mut v = Vars::new();
    v.insert("order_id".into(), (i as i64).into());
    v
}

/// The message that answers order `i`.
fn reply(i: u64) -> Vars {
    let mut v = order_key(i);
    v.insert("answer".into(), "paid".into());
    v
}

/// A scattered order of `0..n`: `j` times a stride coprime with `n`, modulo `n`.
fn scattered(n: u64) -> impl Fn(u64) -> u64 {
    let stride = (0..)
        .map(|k| 7_919 + k)
        .find(|s| gcd(*s, n) == 1)
        .unwrap_or(1);
    move |j| j.wrapping_mul(stride) % n.max(1)
}

/// Starts `args.instances` instances waiting for a correlated message, then correlates one
/// message to each by key (see the module docs).
fn correlate(args: &Args) {
    let n = args.instances;
    let (key, message) = (order_key, reply);
    let order = &scattered(n);
    // In memory, first the same instances at an uncorrelated catch (kept while the others
    // start, so that their memory is not reused): what the correlation index adds.
    let plain = args
        .store
        .is_none()
        .then(|| engine_with([parse(&correlate_def(false))], args.audit));
    let mut plain_bytes = 0.0;
    if let Some(plain) = &plain {
        plain.start("uncorrelated", key(0)).expect("starts");
        let before = proc_status_kb("VmRSS");
        for i in 1..=n {
            plain.start("uncorrelated", key(i)).expect("starts");
        }
        plain_bytes = (proc_status_kb("VmRSS").saturating_sub(before) * 1024) as f64 / n as f64;
    }
    let others = (0..args.deployed).map(|k| parse(&other_def(k)));
    let engine = engine(
        args,
        std::iter::once(parse(&correlate_def(true))).chain(others),
    );
    let before = proc_status_kb("VmRSS");
    let start = Instant::now();
    for i in 0..n {
        engine.start("correlated", key(i)).expect("starts");
    }
    let start_secs = start.elapsed().as_secs_f64();
    let bytes = (proc_status_kb("VmRSS").saturating_sub(before) * 1024) as f64 / n as f64;
    if let Some(path) = &args.store {
        let done = AtomicU64::new(0);
        let threads = args.threads as u64;
        let start = Instant::now();
        std::thread::scope(|s| {
            for t in 0..threads {
                let (engine, done) = (&engine, &done);
                s.spawn(move || {
                    let mut j = t;
                    while j < n {
                        let c = engine
                            .correlate("reply", message(order(j)))
                            .expect("correlates");
                        assert_eq!(c.received.len(), 1, "one waiting instance per key");
                        j += threads;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        let secs = start.elapsed().as_secs_f64();
        let done = done.into_inner();
        println!(
            "workload=correlate store=sqlite:{} shared={} durability={:?} commit={} threads={} waiting={n} messages={done} seconds={secs:.3} messages_per_sec={:.0} start_per_sec={:.0} peak_rss_kb={} audit={}",
            path.display(),
            args.shared,
            args.durability,
            if args.group_commit { "group" } else { "single" },
            args.threads,
            done as f64 / secs,
            n as f64 / start_secs,
            proc_status_kb("VmHWM"),
            args.audit,
        );
        return;
    }
    const BATCH: u64 = 1_000;
    let mut batches: Vec<f64> = Vec::with_capacity((n / BATCH + 1) as usize);
    let mut total = Duration::ZERO;
    let mut cpu_ns = 0u64;
    let mut j = 0;
    while j < n {
        let end = (j + BATCH).min(n);
        let msgs: Vec<Vars> = (j..end).map(|k| message(order(k))).collect();
        let cpu = thread_cpu_ns();
        let start = Instant::now();
        for m in msgs {
            let c = engine.correlate("reply", m).expect("correlates");
            debug_assert_eq!(c.received.len(), 1);
        }
        let spent = start.elapsed();
        cpu_ns += thread_cpu_ns().saturating_sub(cpu);
        total += spent;
        batches.push(spent.as_secs_f64() * 1e9 / (end - j) as f64);
        j = end;
    }
    batches.sort_by(f64::total_cmp);
    let median = batches[batches.len() / 2];
    assert!(
        engine.instances().is_empty(),
        "every instance received its message"
    );
    println!(
        "workload=correlate waiting={n} median_ns_per_correlate={median:.0} mean_ns_per_correlate={:.0} cpu_ns_per_correlate={:.0} correlates_per_sec={:.0} bytes_per_waiting_instance={bytes:.0} bytes_per_uncorrelated_waiting_instance={plain_bytes:.0} start_ns={:.0} peak_rss_kb={} audit={}",
        total.as_secs_f64() * 1e9 / n as f64,
        cpu_ns as f64 / n as f64,
        n as f64 / total.as_secs_f64(),
        start_secs * 1e9 / n as f64,
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
        let cpu = thread_cpu_ns();
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < budget {
            for _ in 0..1_000 {
                engine.start(process, Vars::new()).expect("starts");
            }
            n += 1_000;
        }
        let wall = start.elapsed().as_secs_f64() * 1e9 / n as f64;
        (wall, thread_cpu_ns().saturating_sub(cpu) as f64 / n as f64)
    };
    let (caller, caller_cpu) = time("caller");
    let (plain, plain_cpu) = time("plain");
    let mut floors: Vec<f64> = (0..3).map(|_| floor_ns(10, 2_000_000)).collect();
    floors.sort_by(f64::total_cmp);
    println!(
        "workload=call ns_per_parent_instance={caller:.0} ns_per_plain_instance={plain:.0} ns_per_round_trip={:.0} cpu_ns_per_round_trip={:.0} floor_ns_per_transition={:.2} peak_rss_kb={} audit={}",
        caller - plain,
        caller_cpu - plain_cpu,
        floors[1],
        proc_status_kb("VmHWM"),
        args.audit,
    );
}

/// Nanoseconds this thread has run on a CPU (`/proc/thread-self/schedstat`, first field): on
/// the shared machine a figure of CPU time leaves out the time other processes held the core
/// (caches they evicted still count). 0 where there is none.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}
