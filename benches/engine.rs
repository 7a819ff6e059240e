//! Criterion benches for node-transition throughput (issue 5): the hardware floor, linear,
//! complaint, fan-out, complete, deliver, load and threads. Fixtures are built outside the timed loops by `common`.
//!
//! Throughput is in transitions (audit `Transition` records, counted on one instance at setup)
//! unless a bench says it counts instances.

mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput};
use procflow::{Actor, Event, ProcessDef, Vars, hook_fn};
use serde_json::json;

use common::*;

/// The number of service tasks of the linear process.
const LINEAR_STEPS: usize = 10;
/// The number of branches of the fan-out process.
const FANOUT_BRANCHES: usize = 16;
/// The number of nodes of the generated definition of the load bench: about the largest definition accepted: `big_def` overshoots by up to 7 nodes, and
/// `ProcessDef::MAX_NODES` is 1,000.
const BIG_NODES: usize = procflow::ProcessDef::MAX_NODES - 8;

/// The hardware floor for one transition (`floor_ns` in `common`), in the same run as the
/// engine's figures, so that ratios to it need nothing outside this repository.
fn floor(c: &mut Criterion) {
    const INSTANCES: usize = 100_000;
    let mut g = c.benchmark_group("floor");
    g.throughput(Throughput::Elements(
        ((LINEAR_STEPS + 1) * INSTANCES) as u64,
    ));
    g.bench_function("linear_10", |b| {
        b.iter(|| black_box(floor_ns(LINEAR_STEPS, INSTANCES)))
    });
    g.finish();
}

/// Bench 1, linear: start an instance of 10 no-op service tasks and run it to its end.
fn linear(c: &mut Criterion) {
    let yaml = linear_def(LINEAR_STEPS);
    let transitions = count_transitions([parse(&yaml)], |e| run_automatic(e, LINEAR));
    let mut g = c.benchmark_group("linear");
    g.throughput(Throughput::Elements(transitions));
    for audit in [true, false] {
        let engine = engine_with([parse(&yaml)], audit);
        let name = if audit { "audit" } else { "no_audit" };
        g.bench_function(name, |b| {
            b.iter(|| black_box(run_automatic(&engine, LINEAR)))
        });
    }
    g.finish();
}

/// Bench 2, complaint: the shipped 3.8 definition, every user task claimed and completed by an
/// actor holding a responsible role, cycling through its four routes. One iteration runs one
/// instance of each route; the group reports it per instance and per transition.
fn complaint(c: &mut Criterion) {
    let driver = ComplaintDriver::new(&load("complaint-handling.yaml"));
    let transitions: u64 = (0..ComplaintDriver::VARIANTS)
        .map(|v| count_transitions([load("complaint-handling.yaml")], |e| driver.run(e, v)))
        .sum();
    let engine = engine_with([load("complaint-handling.yaml")], true);
    let run_all = || {
        for v in 0..ComplaintDriver::VARIANTS {
            black_box(driver.run(&engine, v));
        }
    };
    let mut g = c.benchmark_group("complaint");
    g.throughput(Throughput::Elements(ComplaintDriver::VARIANTS as u64));
    g.bench_function("instances", |b| b.iter(run_all));
    g.throughput(Throughput::Elements(transitions));
    g.bench_function("transitions", |b| b.iter(run_all));
    g.finish();
}

/// Bench 3, fan-out: a parallel fork into 16 no-op service tasks and a join.
fn fanout(c: &mut Criterion) {
    let yaml = fanout_def(FANOUT_BRANCHES);
    let transitions = count_transitions([parse(&yaml)], |e| run_automatic(e, FANOUT));
    let engine = engine_with([parse(&yaml)], true);
    let mut g = c.benchmark_group("fanout");
    g.throughput(Throughput::Elements(transitions));
    g.bench_function("16", |b| {
        b.iter(|| black_box(run_automatic(&engine, FANOUT)))
    });
    g.finish();
}

/// Bench 4, complete: one `complete` on a waiting, unclaimed task by a responsible actor (RACI
/// checked), with one hook registered and an exclusive gateway and a service task after it.
/// Waiting instances are made in the untimed setup.
fn complete(c: &mut Criterion) {
    let events = AtomicU64::new(0);
    let events = Box::leak(Box::new(events));
    let engine = engine_custom([parse(&complete_def())], config(true), |b| {
        b.hook(hook_fn(|ev: &Event| {
            if matches!(ev, Event::TaskCompleted { .. }) {
                events.fetch_add(1, Ordering::Relaxed);
            }
        }));
    });
    let clerk = Actor::new("ann", ["clerk"]);
    let mut flip = false;
    let mut g = c.benchmark_group("complete");
    g.throughput(Throughput::Elements(1));
    let mut ran = false;
    g.bench_function("raci_hook_gateway", |b| {
        ran = true;
        b.iter_batched(
            || {
                let id = engine.start(COMPLETE, Vars::new()).expect("starts");
                let task = engine.tasks(id).expect("tasks")[0].id;
                flip = !flip;
                let mut out = Vars::new();
                out.insert("approved".into(), json!(flip));
                (task, out)
            },
            |(task, out)| engine.complete(task, &clerk, out).expect("completes"),
            BatchSize::SmallInput,
        )
    });
    g.finish();
    // A filtered run (`cargo bench -- load`) skips the bench; only a run must show completions.
    assert!(
        !ran || events.load(Ordering::Relaxed) > 0,
        "the hook saw completions"
    );
}

/// An instance removed from its engine when dropped.
struct Removed<'e>(&'e procflow::Engine, procflow::InstanceId);

impl Drop for Removed<'_> {
    fn drop(&mut self) {
        let _ = self.0.remove(self.1);
    }
}

/// Bench 4b, deliver: one `Engine::deliver` to an instance waiting at a race (a message catch
/// against a 48-hour timer), deciding it (the timer branch withdrawn) and opening the user task
/// after it. Waiting instances are made in the untimed setup.
fn deliver(c: &mut Criterion) {
    let engine = engine_with([parse(&message_race_def())], true);
    let mut g = c.benchmark_group("deliver");
    g.throughput(Throughput::Elements(1));
    g.bench_function("race_decided", |b| {
        b.iter_batched(
            || engine.start(MESSAGE_RACE, Vars::new()).expect("starts"),
            |id| {
                engine
                    .deliver(id, "confirmed", Vars::new())
                    .expect("delivers");
                // Removed when criterion drops the outputs, outside the timing, so that waiting
                // instances do not pile up.
                Removed(&engine, id)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// Bench 5, load: parse + validate + compile each shipped definition and a generated one of 1,000
/// nodes.
fn load_defs(c: &mut Criterion) {
    let mut g = c.benchmark_group("load");
    for path in shipped_defs() {
        let text = std::fs::read_to_string(&path).expect("readable");
        let name = path.file_stem().expect("a file name").to_string_lossy();
        g.bench_function(name.as_ref(), |b| {
            b.iter(|| ProcessDef::from_yaml(black_box(&text)).expect("valid"))
        });
    }
    let big = big_def(BIG_NODES);
    let nodes = parse(&big).nodes().count();
    g.bench_function(format!("generated_{nodes}_nodes"), |b| {
        b.iter(|| ProcessDef::from_yaml(black_box(&big)).expect("valid"))
    });
    g.finish();
}

/// How many instances, each with one due timer, the timers bench fires per `tick`.
const TIMERS: usize = 100_000;

/// Bench 6, timers: one `tick` that fires 100,000 due deadlines (a breach notice each, with a
/// hook listening), set up outside the timed call on a manual clock.
fn timers(c: &mut Criterion) {
    let yaml = format!(
        "id: timed\nversion: 1\nname: Timed\n{HEADER_ROLES}nodes:
  start: {{ kind: start, next: review }}
  review:
    kind: user_task
    name: Review
    raci: {{ responsible: [clerk], accountable: lead, informed: [audit] }}
    due: 1h
    next: end
  end: {{ kind: end }}
"
    );
    let start: chrono::DateTime<chrono::Utc> = "2026-01-05T09:00:00Z".parse().expect("an instant");
    let mut g = c.benchmark_group("timers");
    g.sample_size(10);
    g.throughput(Throughput::Elements(TIMERS as u64));
    g.bench_function("tick_100k_due", |b| {
        b.iter_batched(
            || {
                let clock = std::sync::Arc::new(procflow::ManualClock::new(start));
                let mut config = config(true);
                config.retain_completed = true;
                let engine = engine_custom([parse(&yaml)], config, |b| {
                    b.clock(std::sync::Arc::clone(&clock));
                    b.hook(hook_fn(|_: &Event| ()));
                });
                for _ in 0..TIMERS {
                    engine.start("timed", Vars::new()).expect("starts");
                }
                engine
            },
            |engine| {
                let fired = engine.tick(start + chrono::Duration::hours(2));
                assert_eq!(fired.len(), TIMERS);
                engine
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// Instances of the linear process each thread runs per iteration of the threads bench.
const PER_THREAD: u64 = 256;

/// Bench 7, threads: instances of the linear process driven from 1, 2 and N (available parallelism)
/// threads on one shared engine. Throughput is in transitions of all threads together.
fn threads(c: &mut Criterion) {
    let yaml = linear_def(LINEAR_STEPS);
    let transitions = count_transitions([parse(&yaml)], |e| run_automatic(e, LINEAR));
    let engine = engine_with([parse(&yaml)], true);
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut counts = vec![1, 2, n];
    counts.sort_unstable();
    counts.dedup();
    let mut g = c.benchmark_group("threads");
    for t in counts {
        g.throughput(Throughput::Elements(transitions * PER_THREAD * t as u64));
        g.bench_function(format!("linear_{t}"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..t {
                        s.spawn(|| {
                            for _ in 0..iters * PER_THREAD {
                                black_box(run_automatic(&engine, LINEAR));
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
    g.finish();
}

fn main() {
    // What `criterion_group!`/`criterion_main!` expand to, without their undocumented public
    // function (the crate denies missing docs).
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    floor(&mut c);
    linear(&mut c);
    complaint(&mut c);
    fanout(&mut c);
    complete(&mut c);
    deliver(&mut c);
    load_defs(&mut c);
    timers(&mut c);
    threads(&mut c);
    c.final_summary();
}
