//! Throughput harness (issue 5): runs a named workload for a given time on a given number of
//! threads against one shared engine and prints one machine-readable line.
//!
//! ```text
//! cargo run --release --example throughput -- --workload linear|complaint|fanout \
//!     --seconds S --threads N [--no-audit]
//! cargo run --release --example throughput -- --workload waiting --instances 1000000 [--no-audit]
//! ```
//!
//! Transitions are the audit trail's `Transition` records, counted on one instance per route
//! at setup. Peak RSS is `VmHWM` from `/proc/self/status`.

#[path = "../benches/common/mod.rs"]
mod common;

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use procflow::{Engine, Vars};

use common::*;

const USAGE: &str = "usage: throughput --workload linear|complaint|fanout|waiting \
[--seconds S] [--threads N] [--no-audit] [--instances N]";

struct Args {
    workload: String,
    seconds: f64,
    threads: usize,
    audit: bool,
    instances: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        workload: "linear".into(),
        seconds: 3.0,
        threads: 1,
        audit: true,
        instances: 1_000_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--workload" => args.workload = value()?,
            "--seconds" => args.seconds = num(&flag, &value()?)?,
            "--threads" => args.threads = num(&flag, &value()?)?,
            "--instances" => args.instances = num(&flag, &value()?)?,
            "--no-audit" => args.audit = false,
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
            let engine = engine_with([parse(&yaml)], args.audit);
            timed(&args, &engine, |e, _| {
                run_automatic(e, LINEAR);
                per
            });
        }
        "fanout" => {
            let yaml = fanout_def(16);
            let per = count_transitions([parse(&yaml)], |e| run_automatic(e, FANOUT));
            let engine = engine_with([parse(&yaml)], args.audit);
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
            let engine = engine_with([load("complaint-handling.yaml")], args.audit);
            timed(&args, &engine, |e, i| {
                let v = (i % ComplaintDriver::VARIANTS as u64) as usize;
                driver.run(e, v);
                per[v]
            });
        }
        "waiting" => waiting(&args),
        other => {
            eprintln!("unknown workload '{other}'\n{USAGE}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
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
    println!(
        "workload={} threads={} instances={} transitions={} seconds={:.3} transitions_per_sec={:.0} peak_rss_kb={} audit={} thread_ns_per_transition={:.1}",
        args.workload,
        args.threads,
        instances.into_inner(),
        transitions,
        secs,
        transitions as f64 / secs,
        proc_status_kb("VmHWM"),
        args.audit,
        secs * 1e9 * args.threads as f64 / transitions as f64,
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
