//! The tokio façade (feature `tokio`) through the public API: concurrent async calls, awaiting
//! service handlers that complete their task in a commit of their own, the timer task on a
//! manual clock, and typed errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use procflow::{
    Actor, AsyncEngine, AsyncHandlers, Engine, Entry, ExecError, HandlerError, InstanceId,
    ManualClock, MemoryStore, Offload, ProcessDef, Status, Store, TokenState, Vars,
    async_handler_fn, handler_fn,
};
use tokio::sync::Notify;

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

/// A service task (`lookup`) before a user task.
const LOOKUP: &str = r#"
id: lookup
version: 1
name: Lookup
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
variables: { customer: { type: string }, score: { type: integer } }
nodes:
  start: { kind: start, next: fetch }
  fetch: { kind: service_task, name: Fetch the score, handler: score, next: review }
  review:
    kind: user_task
    name: Review
    raci: { responsible: [clerk], accountable: lead }
    next: end
  end: { kind: end }
"#;

/// A two-day wait before a user task.
const WAIT: &str = r#"
id: wait
version: 1
name: Wait
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
nodes:
  start: { kind: start, next: cool_off }
  cool_off: { kind: timer, wait: 2d, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [clerk], accountable: lead }
    next: end
  end: { kind: end }
"#;

fn def(text: &str) -> ProcessDef {
    ProcessDef::from_yaml(text).unwrap_or_else(|e| panic!("test definition is invalid:\n{e}"))
}

fn clerk() -> Actor {
    Actor::new("ann", ["clerk"])
}

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-05T09:00:00Z")
        .unwrap()
        .to_utc()
}

fn vars(pairs: &[(&str, serde_json::Value)]) -> Vars {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// Waits (up to two seconds) until `done` holds.
async fn eventually(done: impl FnMut() -> bool) {
    eventually_within(StdDuration::from_secs(2), done).await;
}

/// Waits (up to `limit`) until `done` holds.
async fn eventually_within(limit: StdDuration, mut done: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + limit;
    while std::time::Instant::now() < until {
        if done() {
            return;
        }
        tokio::time::sleep(StdDuration::from_millis(5)).await;
    }
    assert!(done(), "the condition never held within {limit:?}");
}

async fn start_and_complete_many(engine: AsyncEngine) {
    let mut runs = Vec::new();
    for _ in 0..64 {
        let engine = engine.clone();
        runs.push(tokio::spawn(async move {
            let id = engine.start("one", Vars::new()).await?;
            let task = engine.tasks(id).await?[0].id;
            engine.claim(task, &clerk()).await?;
            engine.complete(task, &clerk(), Vars::new()).await?;
            Ok::<InstanceId, ExecError>(id)
        }));
    }
    for run in runs {
        let id = run.await.expect("joined").expect("the calls succeed");
        let inst = engine.instance(id).await.expect("instance");
        assert_eq!(inst.status(), Status::Completed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_run_in_every_offload_mode() {
    for offload in [
        Offload::Inline,
        Offload::BlockInPlace,
        Offload::SpawnBlocking,
    ] {
        let engine = Arc::new(Engine::new());
        engine.deploy(def(ONE_TASK)).unwrap();
        let engine = AsyncEngine::new(engine).offload(offload);
        start_and_complete_many(engine).await;
    }
    // With a store the default is block_in_place.
    let engine = Arc::new(Engine::open(MemoryStore::new()).unwrap());
    engine.deploy(def(ONE_TASK)).unwrap();
    let engine = AsyncEngine::new(engine);
    assert_eq!(engine.offload_mode(), Offload::BlockInPlace);
    start_and_complete_many(engine).await;
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_calls_run_in_every_offload_mode_on_a_current_thread_runtime() {
    // BlockInPlace falls back to spawn_blocking here (block_in_place needs a multi-thread one).
    for offload in [
        Offload::Inline,
        Offload::BlockInPlace,
        Offload::SpawnBlocking,
    ] {
        let engine = Arc::new(Engine::new());
        engine.deploy(def(ONE_TASK)).unwrap();
        let engine = AsyncEngine::new(engine).offload(offload);
        start_and_complete_many(engine).await;
    }
    let engine = Arc::new(Engine::open(MemoryStore::new()).unwrap());
    engine.deploy(def(ONE_TASK)).unwrap();
    start_and_complete_many(AsyncEngine::new(engine)).await;
}

/// An engine with a slow async `score` handler (it sleeps `slow` on the runtime's timer) on a
/// store; gives the engine and how many answers the handler gave.
fn slow_engine(slow: StdDuration) -> (AsyncEngine, Arc<AtomicU32>) {
    let handlers = AsyncHandlers::new();
    let answered = Arc::new(AtomicU32::new(0));
    let count = Arc::clone(&answered);
    let mut builder = Engine::builder();
    handlers.register(
        &mut builder,
        "score",
        async_handler_fn(move |_call| {
            let count = Arc::clone(&count);
            async move {
                tokio::time::sleep(slow).await;
                count.fetch_add(1, Ordering::SeqCst);
                Ok(vars(&[("score", serde_json::json!(1))]))
            }
        }),
    );
    let engine = Arc::new(builder.open(MemoryStore::new()).unwrap());
    engine.deploy(def(LOOKUP)).unwrap();
    engine.deploy(def(ONE_TASK)).unwrap();
    (AsyncEngine::with_handlers(engine, handlers), answered)
}

/// Starts a `lookup` instance whose handler is slow, runs 64 other instances through while it
/// waits, and checks that they all finished before the handler answered, which then completes
/// its service task.
async fn a_slow_handler_blocks_no_other_call() {
    let (engine, answered) = slow_engine(StdDuration::from_millis(1500));
    let slow = engine.start("lookup", Vars::new()).await.unwrap();
    let started = std::time::Instant::now();
    start_and_complete_many(engine.clone()).await;
    assert_eq!(
        answered.load(Ordering::SeqCst),
        0,
        "the other calls took {:?}: they waited for the slow handler",
        started.elapsed()
    );
    assert!(engine.tasks(slow).await.unwrap().is_empty());
    let sync = Arc::clone(engine.engine());
    eventually_within(StdDuration::from_secs(5), || {
        !sync.tasks(slow).unwrap().is_empty()
    })
    .await;
    assert_eq!(answered.load(Ordering::SeqCst), 1);
    assert_eq!(
        engine.instance(slow).await.unwrap().vars()["score"],
        serde_json::json!(1)
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_slow_async_handler_does_not_block_other_calls_on_a_current_thread_runtime() {
    a_slow_handler_blocks_no_other_call().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_async_handler_does_not_block_other_calls_on_a_multi_thread_runtime() {
    a_slow_handler_blocks_no_other_call().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_async_handlers_on_a_store_each_complete_their_task() {
    // Handlers that answer at once race the commit of the call that reached them: the call is
    // dispatched only after that commit, so every answer finds its instance.
    let (engine, answered) = slow_engine(StdDuration::ZERO);
    let mut runs = Vec::new();
    for _ in 0..100 {
        let engine = engine.clone();
        runs.push(tokio::spawn(async move {
            engine.start("lookup", Vars::new()).await
        }));
    }
    let mut ids = Vec::new();
    for run in runs {
        ids.push(run.await.unwrap().unwrap());
    }
    let sync = Arc::clone(engine.engine());
    eventually_within(StdDuration::from_secs(10), || {
        ids.iter().all(|id| sync.tasks(*id).unwrap().len() == 1)
    })
    .await;
    assert_eq!(answered.load(Ordering::SeqCst), 100);
    for id in ids {
        let inst = engine.instance(id).await.unwrap();
        assert!(inst.incidents().is_empty(), "{:?}", inst.incidents());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_async_handler_is_an_incident() {
    let handlers = AsyncHandlers::new();
    let mut builder = Engine::builder();
    handlers.register(
        &mut builder,
        "score",
        async_handler_fn(|call| async move {
            if call.node == "fetch" {
                panic!("scoring exploded");
            }
            Ok(Vars::new())
        }),
    );
    let engine = Arc::new(builder.build());
    engine.deploy(def(LOOKUP)).unwrap();
    let engine = AsyncEngine::with_handlers(engine, handlers);
    let id = engine.start("lookup", Vars::new()).await.unwrap();
    let sync = Arc::clone(engine.engine());
    eventually(|| !sync.instance(id).unwrap().incidents().is_empty()).await;
    let inst = engine.instance(id).await.unwrap();
    assert_eq!(
        inst.incidents()[0].message,
        "handler failed: async handler panicked: scoring exploded"
    );
    assert_eq!(inst.tokens()[0].state, TokenState::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_awaiting_handler_completes_its_service_task_in_its_own_commit() {
    let store = Arc::new(MemoryStore::new());
    let handlers = AsyncHandlers::new();
    let go = Arc::new(Notify::new());
    let calls = Arc::new(AtomicU32::new(0));
    let (gate, count) = (Arc::clone(&go), Arc::clone(&calls));
    let mut builder = Engine::builder();
    handlers.register(
        &mut builder,
        "score",
        async_handler_fn(move |call| {
            let (gate, count) = (Arc::clone(&gate), Arc::clone(&count));
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                gate.notified().await;
                let name = call.vars["customer"].as_str().unwrap_or_default().len();
                Ok(vars(&[("score", serde_json::json!(name as i64 * 10))]))
            }
        }),
    );
    let engine = Arc::new(builder.open(Arc::clone(&store)).unwrap());
    engine.deploy(def(LOOKUP)).unwrap();
    engine.deploy(def(ONE_TASK)).unwrap();
    let engine = AsyncEngine::with_handlers(engine, handlers);

    let id = engine
        .start("lookup", vars(&[("customer", serde_json::json!("wang"))]))
        .await
        .unwrap();
    // The start returned while the handler waits: the token waits at the service task.
    let inst = engine.instance(id).await.unwrap();
    assert_eq!(inst.status(), Status::Running);
    assert_eq!(inst.tokens().len(), 1);
    assert_eq!(inst.tokens()[0].state, TokenState::Waiting);
    assert!(
        inst.audit()
            .iter()
            .any(|r| matches!(r.what, Entry::ServiceAwaiting { .. }))
    );
    assert!(engine.tasks(id).await.unwrap().is_empty());
    let committed = store.read(id).unwrap().unwrap().version;
    // The engine is not blocked: other calls go on meanwhile.
    let other = engine.start("one", Vars::new()).await.unwrap();
    let task = engine.tasks(other).await.unwrap()[0].id;
    engine.complete(task, &clerk(), Vars::new()).await.unwrap();
    eventually(|| calls.load(Ordering::SeqCst) == 1).await;

    go.notify_one();
    let sync = Arc::clone(engine.engine());
    eventually(|| !sync.tasks(id).unwrap().is_empty()).await;
    let inst = engine.instance(id).await.unwrap();
    assert_eq!(inst.vars()["score"], serde_json::json!(40));
    // The answer was a commit of its own, after the start's.
    assert!(store.read(id).unwrap().unwrap().version > committed);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let task = engine.tasks(id).await.unwrap()[0].id;
    engine.complete(task, &clerk(), Vars::new()).await.unwrap();
    assert_eq!(
        engine.instance(id).await.unwrap().status(),
        Status::Completed
    );
    // A second answer finds nothing waiting: a typed error, nothing changed.
    let again = engine.complete_service(id, "fetch", Ok(Vars::new())).await;
    assert!(
        matches!(again, Err(ExecError::NotAwaiting { instance, ref node }) if instance == id && node == "fetch"),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_awaiting_handler_is_an_incident_that_a_retry_runs_again() {
    let handlers = AsyncHandlers::new();
    let calls = Arc::new(AtomicU32::new(0));
    let count = Arc::clone(&calls);
    let mut builder = Engine::builder();
    handlers.register(
        &mut builder,
        "score",
        async_handler_fn(move |_call| {
            let n = count.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::task::yield_now().await;
                if n == 0 {
                    Err(HandlerError::new("the scoring service is down"))
                } else {
                    Ok(vars(&[("score", serde_json::json!(7))]))
                }
            }
        }),
    );
    let engine = Arc::new(builder.build());
    engine.deploy(def(LOOKUP)).unwrap();
    let engine = AsyncEngine::with_handlers(engine, handlers);
    let id = engine.start("lookup", Vars::new()).await.unwrap();
    let sync = Arc::clone(engine.engine());
    eventually(|| !sync.instance(id).unwrap().incidents().is_empty()).await;
    let inst = engine.instance(id).await.unwrap();
    assert_eq!(
        inst.incidents()[0].message,
        "handler failed: the scoring service is down"
    );
    assert_eq!(inst.tokens()[0].state, TokenState::Failed);
    engine.retry(id).await.unwrap();
    eventually(|| !sync.tasks(id).unwrap().is_empty()).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        engine.instance(id).await.unwrap().vars()["score"],
        serde_json::json!(7)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_awaiting_answer_with_undeclared_variables_is_an_incident() {
    let handlers = AsyncHandlers::new();
    let mut builder = Engine::builder();
    handlers.register(
        &mut builder,
        "score",
        async_handler_fn(|_call| async { Ok(vars(&[("nonsense", serde_json::json!(1))])) }),
    );
    let engine = Arc::new(builder.build());
    engine.deploy(def(LOOKUP)).unwrap();
    let engine = AsyncEngine::with_handlers(engine, handlers);
    let id = engine.start("lookup", Vars::new()).await.unwrap();
    let sync = Arc::clone(engine.engine());
    eventually(|| !sync.instance(id).unwrap().incidents().is_empty()).await;
    let inst = engine.instance(id).await.unwrap();
    assert!(
        inst.incidents()[0].message.contains("'nonsense'"),
        "{}",
        inst.incidents()[0].message
    );
    assert!(!inst.vars().contains_key("nonsense"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_handlers_without_a_dispatcher_are_an_incident() {
    let handlers = AsyncHandlers::new();
    let mut builder = Engine::builder();
    handlers.register(
        &mut builder,
        "score",
        async_handler_fn(|_call| async { Ok(Vars::new()) }),
    );
    drop(handlers);
    let engine = Arc::new(builder.build());
    engine.deploy(def(LOOKUP)).unwrap();
    let engine = AsyncEngine::new(engine);
    let err = engine.start("lookup", Vars::new()).await;
    // The instance starts with an incident at the service task.
    let id = err.as_ref().map(|id| *id).or_else(|e| match e {
        ExecError::Incident {
            instance,
            node,
            message,
        } => {
            assert_eq!(&*node.name, "fetch");
            assert!(message.contains("no dispatcher"), "{message}");
            Ok(*instance)
        }
        other => Err(other.clone()),
    });
    let id = id.expect("an incident, not another error");
    assert_eq!(
        engine.instance(id).await.unwrap().tokens()[0].state,
        TokenState::Failed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosts_own_pending_handler_is_answered_through_complete_service() {
    // No runtime needed on the engine side: a synchronous handler takes the call to answer later.
    let mut builder = Engine::builder();
    builder.handler("score", handler_fn(|_call| Err(HandlerError::pending())));
    let engine = Arc::new(builder.build());
    engine.deploy(def(LOOKUP)).unwrap();
    let engine = AsyncEngine::new(engine);
    let id = engine.start("lookup", Vars::new()).await.unwrap();
    assert!(engine.tasks(id).await.unwrap().is_empty());
    // Typed refusals change nothing.
    assert!(matches!(
        engine.complete_service(id, "nope", Ok(Vars::new())).await,
        Err(ExecError::UnknownNode { .. })
    ));
    assert!(matches!(
        engine.complete_service(id, "review", Ok(Vars::new())).await,
        Err(ExecError::NotAwaiting { .. })
    ));
    assert!(matches!(
        engine
            .complete_service(InstanceId::new(999_999), "fetch", Ok(Vars::new()))
            .await,
        Err(ExecError::UnknownInstance(_))
    ));
    engine
        .complete_service(id, "fetch", Ok(vars(&[("score", serde_json::json!(3))])))
        .await
        .unwrap();
    assert_eq!(engine.tasks(id).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_may_block_on_the_runtime_when_calls_are_offloaded() {
    let mut builder = Engine::builder();
    builder.handler(
        "score",
        handler_fn(|_call| {
            let score = tokio::runtime::Handle::current().block_on(async {
                tokio::task::yield_now().await;
                5
            });
            Ok(vars(&[("score", serde_json::json!(score))]))
        }),
    );
    let engine = Arc::new(builder.build());
    engine.deploy(def(LOOKUP)).unwrap();
    for offload in [Offload::SpawnBlocking, Offload::BlockInPlace] {
        let engine = AsyncEngine::new(Arc::clone(&engine)).offload(offload);
        let id = engine.start("lookup", Vars::new()).await.unwrap();
        assert_eq!(
            engine.instance(id).await.unwrap().vars()["score"],
            serde_json::json!(5)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timer_task_fires_timers_on_a_manual_clock() {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = Arc::new(Engine::builder().clock(Arc::clone(&clock)).build());
    engine.deploy(def(WAIT)).unwrap();
    let engine = AsyncEngine::new(engine);
    let timers = engine.timers(StdDuration::from_secs(3600));
    let id = engine.start("wait", Vars::new()).await.unwrap();
    assert!(engine.tasks(id).await.unwrap().is_empty());
    clock.advance(Duration::days(2) + Duration::minutes(1));
    timers.wake();
    let sync = Arc::clone(engine.engine());
    eventually(|| !sync.tasks(id).unwrap().is_empty()).await;
    assert!(timers.is_running());
    assert_eq!(timers.failures(), 0);
    assert!(timers.ticks() >= 1);
    timers.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_the_synchronous_calls_typed_errors() {
    let engine = Arc::new(Engine::new());
    engine.deploy(def(ONE_TASK)).unwrap();
    let engine = AsyncEngine::new(engine).offload(Offload::SpawnBlocking);
    assert!(matches!(
        engine.start("nope", Vars::new()).await,
        Err(ExecError::UnknownProcess { .. })
    ));
    let id = engine.start("one", Vars::new()).await.unwrap();
    let task = engine.tasks(id).await.unwrap()[0].id;
    let trainee = Actor::new("tom", ["trainee"]);
    assert!(matches!(
        engine.complete(task, &trainee, Vars::new()).await,
        Err(ExecError::Denied { .. })
    ));
    assert_eq!(engine.tasks(id).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_task_left_waiting_by_a_stopped_engine_is_dispatched_again_on_reopen() {
    let store = MemoryStore::new();
    // The first engine's handler never answers (the process stops while the call is underway).
    let id = {
        let handlers = AsyncHandlers::new();
        let mut builder = Engine::builder();
        handlers.register(
            &mut builder,
            "score",
            async_handler_fn(|_call| std::future::pending()),
        );
        let engine = Arc::new(builder.open(store.clone()).unwrap());
        engine.deploy(def(LOOKUP)).unwrap();
        let engine = AsyncEngine::with_handlers(engine, handlers);
        engine
            .start("lookup", vars(&[("customer", serde_json::json!("li"))]))
            .await
            .unwrap()
    };
    // The next engine on the store finds the token waiting and runs its own handler for it.
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let handlers = AsyncHandlers::new();
    let mut builder = Engine::builder();
    handlers.register(
        &mut builder,
        "score",
        async_handler_fn(move |call| {
            sink.lock()
                .unwrap()
                .push((call.instance, call.node.clone()));
            async { Ok(vars(&[("score", serde_json::json!(9))])) }
        }),
    );
    let engine = Arc::new(builder.open(store.clone()).unwrap());
    assert_eq!(
        engine.instance(id).unwrap().tokens()[0].state,
        TokenState::Waiting
    );
    let engine = AsyncEngine::with_handlers(engine, handlers);
    let sync = Arc::clone(engine.engine());
    eventually(|| !sync.tasks(id).unwrap().is_empty()).await;
    assert_eq!(*seen.lock().unwrap(), vec![(id, "fetch".to_owned())]);
    assert_eq!(
        engine.instance(id).await.unwrap().vars()["score"],
        serde_json::json!(9)
    );
}

/// The default with a store blocks in place only on a multi-thread runtime's workers, where
/// tokio allows it: in a `LocalSet` on the thread of `Runtime::block_on`, and on a
/// current-thread runtime's thread that entered a multi-thread runtime (tokio refuses there
/// although the thread looks like a worker), the calls run on the blocking pool instead.
#[test]
fn the_default_with_a_store_runs_where_tokio_forbids_blocking_in_place() {
    let stored = || {
        let engine = Arc::new(Engine::open(MemoryStore::new()).unwrap());
        engine.deploy(def(ONE_TASK)).unwrap();
        let engine = AsyncEngine::new(engine);
        assert_eq!(engine.offload_mode(), Offload::BlockInPlace);
        engine
    };
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let engine = stored();
    multi.block_on(local.run_until(async move {
        let id = engine.start("one", Vars::new()).await.unwrap();
        let e = engine.clone();
        tokio::task::spawn_local(async move { e.tasks(id).await.unwrap() })
            .await
            .unwrap();
        assert_eq!(engine.instance(id).await.unwrap().status(), Status::Running);
    }));
    let handle = multi.handle().clone();
    let engine = stored();
    std::thread::spawn(move || {
        let current = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        current.block_on(async move {
            let _entered = handle.enter();
            for _ in 0..2 {
                let id = engine.start("one", Vars::new()).await.unwrap();
                let task = engine.tasks(id).await.unwrap()[0].id;
                engine.complete(task, &clerk(), Vars::new()).await.unwrap();
            }
        });
    })
    .join()
    .unwrap();
}
