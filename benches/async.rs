//! Criterion bench of the tokio façade (feature `tokio`, issue 16: "the async façade adds at
//! most 2 µs per call over the synchronous one"): start an instance of a one-task process and
//! complete its task (two calls, plus the `tasks` read between them), synchronously and through
//! `AsyncEngine` in each offload mode, on an engine without a store.
//!
//! The async variants run all of a sample's iterations inside one `block_on` (`iter_custom`),
//! so the figure is the façade's cost per call pair, not the cost of entering the runtime.
//! The `with_store` group measures the façade's default for an engine with a store
//! (`BlockInPlace`) against the synchronous calls on an engine whose store commits in memory;
//! the `durable` group puts the offload modes beside what such a call costs: the same pair on an
//! engine with a SQLite file (`Durability::Full`, the default: each commit waits for the disk).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use procflow::{Actor, AsyncEngine, Engine, Offload, ProcessDef, Vars};

const ONE_TASK: &str = r#"
id: one
version: 1
name: One task
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [clerk], accountable: lead }
    next: end
  end: { kind: end }
"#;

fn engine() -> Arc<Engine> {
    deployed(Engine::new())
}

/// `engine` with the bench's process deployed.
fn deployed(engine: Engine) -> Arc<Engine> {
    engine
        .deploy(ProcessDef::from_yaml(ONE_TASK).expect("the bench definition is valid"))
        .expect("it deploys");
    Arc::new(engine)
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn sync_pair(engine: &Engine, clerk: &Actor) {
    let id = engine.start("one", Vars::new()).expect("start");
    let task = engine.tasks(id).expect("tasks")[0].id;
    engine.complete(task, clerk, Vars::new()).expect("complete");
}

async fn async_pair(engine: &AsyncEngine, clerk: &Actor) {
    let id = engine.start("one", Vars::new()).await.expect("start");
    let task = engine.tasks(id).await.expect("tasks")[0].id;
    engine
        .complete(task, clerk, Vars::new())
        .await
        .expect("complete");
}

/// `iters` pairs in one task spawned on the runtime (where a service's request handlers run:
/// on a multi-thread runtime, a worker thread), inside one `block_on`: the façade's cost, not
/// the cost of entering the runtime.
fn async_pairs(
    rt: &tokio::runtime::Runtime,
    engine: &AsyncEngine,
    clerk: &Actor,
    iters: u64,
) -> Duration {
    let (engine, clerk) = (engine.clone(), clerk.clone());
    rt.block_on(async move {
        tokio::spawn(async move {
            let began = Instant::now();
            for _ in 0..iters {
                async_pair(black_box(&engine), &clerk).await;
            }
            began.elapsed()
        })
        .await
        .expect("the bench task runs")
    })
}

fn start_complete(c: &mut Criterion) {
    let clerk = Actor::new("ann", ["clerk"]);
    let mut g = c.benchmark_group("start_complete");
    g.throughput(Throughput::Elements(1));
    let sync = engine();
    g.bench_function("sync", |b| b.iter(|| sync_pair(black_box(&sync), &clerk)));
    let runtimes = [
        (
            "current_thread",
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
        ),
        ("multi_thread", multi_thread()),
    ];
    for (flavor, rt) in &runtimes {
        for (mode, offload) in [
            ("inline", Offload::Inline),
            ("spawn_blocking", Offload::SpawnBlocking),
            ("block_in_place", Offload::BlockInPlace),
        ] {
            let engine = AsyncEngine::new(engine()).offload(offload);
            g.bench_function(format!("async_{mode}_{flavor}"), |b| {
                b.iter_custom(|iters| async_pairs(rt, &engine, &clerk, iters))
            });
        }
    }
    g.finish();
}

/// The same pair on an engine with a store that commits in memory (`MemoryStore`: no disk, so
/// the figure is the hand-off alone), synchronously and through the façade's default for an
/// engine with a store and through `SpawnBlocking`, on a multi-thread runtime.
fn with_store(c: &mut Criterion) {
    let clerk = Actor::new("ann", ["clerk"]);
    let stored = || deployed(Engine::open(procflow::MemoryStore::new()).expect("it opens"));
    let rt = multi_thread();
    let mut g = c.benchmark_group("with_store");
    g.throughput(Throughput::Elements(1));
    let sync = stored();
    g.bench_function("sync", |b| b.iter(|| sync_pair(black_box(&sync), &clerk)));
    let engine = AsyncEngine::new(stored());
    assert_eq!(engine.offload_mode(), Offload::BlockInPlace);
    g.bench_function("async_default_multi_thread", |b| {
        b.iter_custom(|iters| async_pairs(&rt, &engine, &clerk, iters))
    });
    let engine = engine.offload(Offload::SpawnBlocking);
    g.bench_function("async_spawn_blocking_multi_thread", |b| {
        b.iter_custom(|iters| async_pairs(&rt, &engine, &clerk, iters))
    });
    g.finish();
}

/// The same pair on a SQLite store with the default durability, synchronously and through the
/// façade's default for an engine with a store, on a multi-thread runtime.
fn durable(c: &mut Criterion) {
    let clerk = Actor::new("ann", ["clerk"]);
    let dir = std::env::temp_dir().join(format!("procflow-bench-async-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    let stored = |name: &str| {
        let store = procflow::SqliteStore::create(dir.join(name)).expect("a SQLite file");
        deployed(Engine::builder().open(store).expect("it opens"))
    };
    let rt = multi_thread();
    let mut g = c.benchmark_group("durable");
    g.throughput(Throughput::Elements(1));
    let sync = stored("sync.db");
    g.bench_function("sync", |b| b.iter(|| sync_pair(black_box(&sync), &clerk)));
    let engine = AsyncEngine::new(stored("async.db"));
    assert_eq!(engine.offload_mode(), Offload::BlockInPlace);
    for (mode, offload) in [
        ("spawn_blocking", Offload::SpawnBlocking),
        ("block_in_place", Offload::BlockInPlace),
    ] {
        let engine = engine.clone().offload(offload);
        g.bench_function(format!("async_{mode}_multi_thread"), |b| {
            b.iter_custom(|iters| async_pairs(&rt, &engine, &clerk, iters))
        });
    }
    g.finish();
    drop((sync, engine));
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    start_complete(&mut c);
    with_store(&mut c);
    durable(&mut c);
    c.final_summary();
}
