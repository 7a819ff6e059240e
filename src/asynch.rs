//! The async façade for tokio services (feature `tokio`): [`AsyncEngine`] gives the engine's
//! calls as `async fn`s, [`AsyncHandlers`] lets service handlers await, and [`TimerTask`] fires
//! timers from a tokio task.
//!
//! # Where a call runs, and why
//! An engine call is short CPU work under the instance's lock plus, with a durable store, a
//! commit that waits for the disk (an fsync: tenths of a millisecond to milliseconds). Waiting
//! for the disk on a worker thread would stall every task queued on it, so [`Offload`] says where
//! a call runs:
//! - An engine with a store runs its calls in `block_in_place` on a multi-thread runtime's
//!   worker ([`Offload::BlockInPlace`]): tokio first hands the worker's other tasks to another
//!   thread, so nothing queued waits for the disk, and the call itself runs on the calling
//!   thread (about 0.3 µs a call over the synchronous one, `benches/async.rs`). Where tokio
//!   forbids blocking in place (a current-thread runtime, a `LocalSet` on the thread of
//!   `Runtime::block_on`: `tokio::runtime::worker_index` tells a worker apart) the call runs in
//!   `spawn_blocking` instead, which works everywhere but costs two thread wake-ups (about 30 µs
//!   a call on a 2-core VM; [`Offload::SpawnBlocking`] chooses it always). A single dedicated
//!   engine thread fed by a channel was the other choice; it would serialise every call on one
//!   core and put a queue without backpressure in front of the engine, for no gain, as the
//!   engine is already safe to call from many threads.
//! - An engine without a store runs its calls on the calling task ([`Offload::Inline`]): a call
//!   is about a microsecond of CPU work, less than a hand-off to another thread costs, and holds
//!   no lock across an `.await`. Handlers that wait belong in [`AsyncHandlers`]; a synchronous
//!   handler or hook that blocks (on a socket, a sleep, `Handle::block_on`) needs
//!   [`Offload::SpawnBlocking`] or [`Offload::BlockInPlace`].
//!
//! # Async service handlers
//! The engine-side handler that [`AsyncHandlers::register`] installs parks the call and answers
//! [`HandlerError::pending`]: the token waits at the service task and the engine goes on. After
//! the step's commit a hook hands the call to the dispatcher task, which runs the handler's
//! future on the runtime; its answer completes the service task in a commit of its own
//! ([`Engine::complete_service`]), or fails it with an incident that [`Engine::retry`] runs
//! again.
//!
//! # Pitfalls
//! A synchronous handler or hook that calls `tokio::runtime::Handle::block_on` panics when it
//! runs on a runtime worker thread (tokio refuses to block a worker). The engine catches the
//! panic (an incident for a handler, an [`ExecError::Hook`] for a hook) but Rust's panic hook
//! still prints it. Under [`Offload::SpawnBlocking`] and [`Offload::BlockInPlace`] a call runs
//! where `block_on` is allowed; under [`Offload::Inline`] it is not: write such a handler as an
//! async one instead.
//!
//! A service task still waiting for an async handler when the engine stops is dispatched again
//! by the next [`AsyncEngine::with_handlers`] on an engine opened on the same store: handlers
//! run at least once per waiting service task, so make them idempotent.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, mpsc};

use crate::def::NodeKind;
use crate::exec::{Correlation, Engine, EngineBuilder, ExecError, TaskView, WorkItem, WorkQuery};
use crate::hooks::{Control, HandlerError, Hook, ServiceCall, ServiceHandler};
use crate::ids::{InstanceId, TaskId};
use crate::model::{Event, Fired, Instance, Status, TokenState};
use crate::raci::Actor;
use crate::vars::Vars;
use crate::{DeployError, ProcessDef, Sla};

/// Where [`AsyncEngine`] runs an engine call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Offload {
    /// On the calling task: cheapest, for engines without a durable store (a call is a
    /// microsecond of CPU work). A handler must not block on the runtime then.
    Inline,
    /// In `tokio::task::block_in_place` on a multi-thread runtime's worker thread (the worker
    /// hands its other tasks to another thread first); elsewhere, where tokio forbids it (a
    /// current-thread runtime, a `LocalSet` on the thread of `Runtime::block_on`), in
    /// `spawn_blocking`. The default for an engine with a store.
    BlockInPlace,
    /// In `tokio::task::spawn_blocking`, on every runtime: two thread wake-ups a call.
    SpawnBlocking,
}

impl Offload {
    /// Runs `f` where this says (the one place that decides it, for [`AsyncEngine`] and the
    /// HTTP server). `Err` when the blocking pool could not run it or it panicked there.
    pub(crate) async fn run<R: Send + 'static>(
        self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, tokio::task::JoinError> {
        match self {
            Offload::Inline => Ok(f()),
            Offload::BlockInPlace if on_worker() => match in_place(f) {
                Ok(r) => Ok(r),
                Err(f) => spawn_blocking(f).await,
            },
            Offload::BlockInPlace | Offload::SpawnBlocking => spawn_blocking(f).await,
        }
    }
}

thread_local! {
    /// Whether tokio refused `block_in_place` on this thread although it looked like a
    /// multi-thread runtime's worker (see [`in_place`]).
    static REFUSED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is a worker of a multi-thread runtime, where `block_in_place` may block
/// (it hands the worker's other tasks to another thread first). Elsewhere tokio forbids it:
/// on a current-thread runtime, in a `LocalSet` on the thread of `Runtime::block_on`.
fn on_worker() -> bool {
    tokio::runtime::worker_index().is_some()
        && tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
        && !REFUSED.with(std::cell::Cell::get)
}

/// Runs `f` in `block_in_place`, or gives it back when tokio refused to block here. One setup
/// passes [`on_worker`] and is still refused: the thread of a current-thread runtime that
/// entered a multi-thread runtime's handle (`Handle::enter`); tokio's panic says so (once a
/// thread: the thread is remembered) and the call runs in `spawn_blocking`.
fn in_place<R, F: FnOnce() -> R>(f: F) -> Result<R, F> {
    let mut slot = Some(f);
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tokio::task::block_in_place(|| slot.take().map(crate::store::may_block))
    }));
    match (ran, slot) {
        (Ok(Some(r)), _) => Ok(r),
        (Err(_), Some(f)) => {
            REFUSED.with(|r| r.set(true));
            Err(f)
        }
        // `f` itself panicked: as a call on the calling thread would.
        (Err(panic), None) => std::panic::resume_unwind(panic),
        (Ok(None), _) => unreachable!("block_in_place ran its closure, which took f"),
    }
}

/// Runs `f` on tokio's blocking pool, in the caller's span.
async fn spawn_blocking<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, tokio::task::JoinError> {
    #[cfg(feature = "telemetry")]
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        #[cfg(feature = "telemetry")]
        let _entered = span.enter();
        crate::store::may_block(f)
    })
    .await
}

/// A boxed future, as [`AsyncHandler::call`] returns it.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What an async service handler is given: an owned copy of [`ServiceCall`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AsyncServiceCall {
    /// The instance.
    pub instance: InstanceId,
    /// The service task's node id.
    pub node: String,
    /// The instance's variables when the service task was reached.
    pub vars: Vars,
}

/// A service handler that may await. Its answer completes the service task in its own commit:
/// `Ok(vars)` sets them (they must be declared) and moves the token on, `Err` is an incident
/// that [`Engine::retry`] runs again.
pub trait AsyncHandler: Send + Sync + 'static {
    /// Does the work.
    fn call(&self, call: AsyncServiceCall) -> BoxFuture<Result<Vars, HandlerError>>;
}

/// An async handler made from a closure; see [`async_handler_fn`].
pub struct AsyncHandlerFn<F>(F);

impl<F> std::fmt::Debug for AsyncHandlerFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AsyncHandlerFn")
    }
}

impl<F, Fut> AsyncHandler for AsyncHandlerFn<F>
where
    F: Fn(AsyncServiceCall) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vars, HandlerError>> + Send + 'static,
{
    fn call(&self, call: AsyncServiceCall) -> BoxFuture<Result<Vars, HandlerError>> {
        Box::pin((self.0)(call))
    }
}

/// Makes an async service handler from a closure returning a future.
///
/// # Examples
/// ```
/// use procflow::{async_handler_fn, Vars};
/// let lookup = async_handler_fn(|call| async move {
///     tokio::time::sleep(std::time::Duration::from_millis(1)).await;
///     let mut out = Vars::new();
///     out.insert("found".into(), serde_json::json!(call.vars.contains_key("customer")));
///     Ok(out)
/// });
/// # let _ = lookup;
/// ```
pub fn async_handler_fn<F, Fut>(f: F) -> AsyncHandlerFn<F>
where
    F: Fn(AsyncServiceCall) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vars, HandlerError>> + Send + 'static,
{
    AsyncHandlerFn(f)
}

/// One handler call waiting for the dispatcher.
struct Job {
    handler: Arc<dyn AsyncHandler>,
    call: AsyncServiceCall,
}

/// What the engine-side handlers, their hook and the dispatcher share.
struct Shared {
    tx: mpsc::UnboundedSender<Job>,
    /// Calls taken by a step whose commit has not been heard yet, by instance and node.
    parked: Mutex<HashMap<(InstanceId, String), Job>>,
    /// Whether the hook that releases parked calls is registered on a builder.
    hooked: AtomicBool,
    /// The handlers by the name service tasks give, to dispatch again what an engine opened on
    /// a store finds waiting.
    named: Mutex<HashMap<String, Arc<dyn AsyncHandler>>>,
}

/// The async service handlers of one engine: register each on the [`EngineBuilder`] with
/// [`AsyncHandlers::register`], then give them to [`AsyncEngine::with_handlers`], whose
/// dispatcher task runs them.
///
/// A handler call is dispatched only after the commit that left its token waiting (a hook that
/// `register` adds hears [`Event::ServiceAwaiting`](crate::Event::ServiceAwaiting)), so its
/// answer always finds the instance committed, and a step the store refused dispatches nothing.
///
/// [`EngineBuilder`]: crate::EngineBuilder
pub struct AsyncHandlers {
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Job>,
}

impl std::fmt::Debug for AsyncHandlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AsyncHandlers")
    }
}

impl Default for AsyncHandlers {
    fn default() -> AsyncHandlers {
        AsyncHandlers::new()
    }
}

impl AsyncHandlers {
    /// No handlers yet.
    pub fn new() -> AsyncHandlers {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            tx,
            parked: Mutex::new(HashMap::new()),
            hooked: AtomicBool::new(false),
            named: Mutex::new(HashMap::new()),
        });
        AsyncHandlers { shared, rx }
    }

    /// Registers `handler` under `name` on `builder` (the name service tasks give in
    /// `handler:`), and the first time also the hook that dispatches calls after their commit.
    ///
    /// The engine-side handler lets the token wait ([`HandlerError::pending`]) and parks the
    /// call; the dispatcher runs it once the step committed. When no dispatcher runs (no
    /// [`AsyncEngine::with_handlers`] was made with these handlers, or its runtime ended) a call
    /// is an incident ("no dispatcher runs async handlers"), which [`Engine::retry`] runs again.
    /// A `repeat` or `for_each` service task cannot wait: an async handler there is an incident.
    ///
    /// # Examples
    /// ```
    /// use procflow::{async_handler_fn, AsyncHandlers, Engine, Vars};
    /// let handlers = AsyncHandlers::new();
    /// let mut builder = Engine::builder();
    /// handlers.register(&mut builder, "score", async_handler_fn(|_call| async { Ok(Vars::new()) }));
    /// let engine = std::sync::Arc::new(builder.build());
    /// # let _ = (engine, handlers);
    /// ```
    pub fn register(
        &self,
        builder: &mut EngineBuilder,
        name: impl Into<String>,
        handler: impl AsyncHandler,
    ) {
        let name = name.into();
        let handler: Arc<dyn AsyncHandler> = Arc::new(handler);
        lock(&self.shared.named).insert(name.clone(), Arc::clone(&handler));
        builder.handler(
            name,
            Awaiting {
                handler,
                shared: Arc::clone(&self.shared),
            },
        );
        if !self.shared.hooked.swap(true, Ordering::Relaxed) {
            builder.hook(Release {
                shared: Arc::clone(&self.shared),
            });
        }
    }
}

/// The synchronous side of an async handler.
struct Awaiting {
    handler: Arc<dyn AsyncHandler>,
    shared: Arc<Shared>,
}

impl ServiceHandler for Awaiting {
    fn call(&self, call: &ServiceCall<'_>) -> Result<Vars, HandlerError> {
        if call.item.is_some() {
            // A multi-instance item cannot wait alone: the engine records this as an incident.
            return Err(HandlerError::pending());
        }
        if self.shared.tx.is_closed() {
            return Err(HandlerError::new(
                "no dispatcher runs async handlers (no AsyncEngine was made with them)",
            ));
        }
        let job = Job {
            handler: Arc::clone(&self.handler),
            call: AsyncServiceCall {
                instance: call.instance,
                node: call.node.to_owned(),
                vars: call.vars.clone(),
            },
        };
        // A step run again (after a conflict) parks its call again: the newest one stays.
        lock(&self.shared.parked).insert((call.instance, call.node.to_owned()), job);
        Err(HandlerError::pending())
    }
}

/// The hook that hands parked calls to the dispatcher once their step committed.
struct Release {
    shared: Arc<Shared>,
}

impl Hook for Release {
    fn on_event(&self, event: &Event) -> Control {
        if let Event::ServiceAwaiting { instance, node } = event {
            let job = lock(&self.shared.parked).remove(&(*instance, node.to_string()));
            match job {
                Some(job) => {
                    if let Err(lost) = self.shared.tx.send(job) {
                        note_dispatch_failure(
                            *instance,
                            node,
                            "the dispatcher stopped before the call could be handed to it",
                        );
                        drop(lost);
                    }
                }
                None => {
                    note_dispatch_failure(*instance, node, "no parked call for the service task")
                }
            }
        }
        Control::Continue
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The engine's calls as `async fn`s, for tokio services. Cheap to clone (an `Arc`).
///
/// Every call gives what the synchronous one gives, with the same typed [`ExecError`]; a call
/// that the runtime could not run (it is shutting down) gives [`ExecError::Runtime`]. Calls
/// without an `async fn` here go through [`AsyncEngine::run`].
#[derive(Clone, Debug)]
pub struct AsyncEngine {
    engine: Arc<Engine>,
    offload: Offload,
}

impl AsyncEngine {
    /// Wraps an engine, with [`Offload::BlockInPlace`] when it has a store and
    /// [`Offload::Inline`] when it keeps everything in memory.
    pub fn new(engine: Arc<Engine>) -> AsyncEngine {
        let offload = if engine.has_store() {
            Offload::BlockInPlace
        } else {
            Offload::Inline
        };
        AsyncEngine { engine, offload }
    }

    /// Wraps an engine whose async handlers `handlers` made, and spawns their dispatcher on the
    /// current tokio runtime (it ends when the runtime does, or when every engine-side handler
    /// is gone).
    ///
    /// The service tasks the engine already holds waiting for one of these handlers (an engine
    /// opened on a store after the last one stopped with calls underway) are dispatched again,
    /// with the instance's variables as they are now. A handler therefore runs at least once per
    /// waiting service task, and may run twice (a crash after its work, before its answer's
    /// commit): make it idempotent. This looks at every instance the engine holds, once, on the
    /// calling thread.
    ///
    /// # Panics
    /// Outside a tokio runtime (as `tokio::spawn` does).
    pub fn with_handlers(engine: Arc<Engine>, handlers: AsyncHandlers) -> AsyncEngine {
        let this = AsyncEngine::new(engine);
        let AsyncHandlers { shared, mut rx } = handlers;
        let named = std::mem::take(&mut *lock(&shared.named));
        if !named.is_empty() {
            // Calls queued or parked already are dispatched as they are; the rest of what waits
            // is dispatched again. Looked at here, before this wrapper makes any call.
            let mut queued = Vec::new();
            while let Ok(job) = rx.try_recv() {
                queued.push(job);
            }
            let known: std::collections::HashSet<(InstanceId, String)> = queued
                .iter()
                .map(|j| (j.call.instance, j.call.node.clone()))
                .chain(lock(&shared.parked).keys().cloned())
                .collect();
            let again = waiting_jobs(this.engine(), &named)
                .into_iter()
                .filter(|j| !known.contains(&(j.call.instance, j.call.node.clone())));
            for job in queued.into_iter().chain(again) {
                let _ = shared.tx.send(job);
            }
        }
        drop(shared);
        let engine = this.clone();
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                let engine = engine.clone();
                tokio::spawn(async move { engine.dispatch(job).await });
            }
        });
        this
    }

    /// Chooses where calls run.
    pub fn offload(mut self, offload: Offload) -> AsyncEngine {
        self.offload = offload;
        self
    }

    /// Where calls run.
    pub fn offload_mode(&self) -> Offload {
        self.offload
    }

    /// The synchronous engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Runs one handler call and hands its answer in.
    async fn dispatch(&self, job: Job) {
        let Job { handler, call } = job;
        let (instance, node) = (call.instance, call.node.clone());
        // The handler runs as a task of its own, so that a panic in it is an answer (an
        // incident) instead of a token that waits for ever.
        let answer = match tokio::spawn(handler.call(call)).await {
            Ok(answer) => answer,
            Err(e) if e.is_panic() => Err(HandlerError::new(format!(
                "async handler panicked: {}",
                panic_text(e.into_panic())
            ))),
            Err(e) => Err(HandlerError::new(format!(
                "async handler did not finish: {e}"
            ))),
        };
        // The call was dispatched after its commit: the instance is there to answer.
        let result = self.complete_service(instance, &node, answer).await;
        if let Err(e) = result {
            note_dispatch_failure(instance, &node, &e.to_string());
        }
    }

    /// Runs `f` on the engine as [`Offload`] says: for the engine's calls this façade has no
    /// `async fn` of (`find_by_key`, `history_by_key`, `owner`, `children`, `remove`, …).
    ///
    /// # Errors
    /// [`ExecError::Runtime`] when the runtime could not run it (it is shutting down).
    ///
    /// # Examples
    /// ```
    /// # async fn f(engine: procflow::AsyncEngine) -> Result<(), procflow::ExecError> {
    /// let held = engine.run(|e| e.instances().len()).await?;
    /// # let _ = held; Ok(()) }
    /// ```
    pub async fn run<R, F>(&self, f: F) -> Result<R, ExecError>
    where
        F: FnOnce(&Engine) -> R + Send + 'static,
        R: Send + 'static,
    {
        match self.offload {
            // No engine handle to clone: the call borrows it on this task.
            Offload::Inline => Ok(f(&self.engine)),
            offload => {
                let engine = Arc::clone(&self.engine);
                offload
                    .run(move || f(&engine))
                    .await
                    .map_err(|e| ExecError::Runtime(e.to_string()))
            }
        }
    }

    /// [`Engine::deploy`], on the calling task whatever the [`Offload`]: deploying is rare (at
    /// start-up), compiles the definition and, with a store, writes it in one commit. Deploy
    /// through [`AsyncEngine::run`] to keep even that off a worker thread.
    ///
    /// # Errors
    /// As [`Engine::deploy`].
    pub async fn deploy(&self, def: ProcessDef) -> Result<Arc<ProcessDef>, DeployError> {
        self.engine.deploy(def)
    }

    /// [`Engine::start`].
    ///
    /// # Errors
    /// As [`Engine::start`]; [`ExecError::Runtime`] when the runtime could not run it.
    pub async fn start(&self, process: &str, vars: Vars) -> Result<InstanceId, ExecError> {
        let process = process.to_owned();
        self.run(move |e| e.start(&process, vars)).await?
    }

    /// [`Engine::start_version`].
    ///
    /// # Errors
    /// As [`Engine::start_version`]; [`ExecError::Runtime`].
    pub async fn start_version(
        &self,
        process: &str,
        version: Option<u32>,
        vars: Vars,
    ) -> Result<InstanceId, ExecError> {
        let process = process.to_owned();
        self.run(move |e| e.start_version(&process, version, vars))
            .await?
    }

    /// [`Engine::claim`].
    ///
    /// # Errors
    /// As [`Engine::claim`]; [`ExecError::Runtime`].
    pub async fn claim(&self, task: TaskId, actor: &Actor) -> Result<(), ExecError> {
        let actor = actor.clone();
        self.run(move |e| e.claim(task, &actor)).await?
    }

    /// [`Engine::complete`].
    ///
    /// # Errors
    /// As [`Engine::complete`]; [`ExecError::Runtime`].
    pub async fn complete(
        &self,
        task: TaskId,
        actor: &Actor,
        output: Vars,
    ) -> Result<(), ExecError> {
        let actor = actor.clone();
        self.run(move |e| e.complete(task, &actor, output)).await?
    }

    /// [`Engine::comment`].
    ///
    /// # Errors
    /// As [`Engine::comment`]; [`ExecError::Runtime`].
    pub async fn comment(&self, task: TaskId, actor: &Actor, text: &str) -> Result<(), ExecError> {
        let (actor, text) = (actor.clone(), text.to_owned());
        self.run(move |e| e.comment(task, &actor, &text)).await?
    }

    /// [`Engine::reassign`].
    ///
    /// # Errors
    /// As [`Engine::reassign`]; [`ExecError::Runtime`].
    pub async fn reassign(&self, task: TaskId, by: &Actor, to: &Actor) -> Result<(), ExecError> {
        let (by, to) = (by.clone(), to.clone());
        self.run(move |e| e.reassign(task, &by, &to)).await?
    }

    /// [`Engine::release`].
    ///
    /// # Errors
    /// As [`Engine::release`]; [`ExecError::Runtime`].
    pub async fn release(&self, task: TaskId, actor: &Actor) -> Result<(), ExecError> {
        let actor = actor.clone();
        self.run(move |e| e.release(task, &actor)).await?
    }

    /// [`Engine::delegate`].
    ///
    /// # Errors
    /// As [`Engine::delegate`]; [`ExecError::Runtime`].
    pub async fn delegate(&self, task: TaskId, by: &Actor, to: &Actor) -> Result<(), ExecError> {
        let (by, to) = (by.clone(), to.clone());
        self.run(move |e| e.delegate(task, &by, &to)).await?
    }

    /// [`Engine::return_task`].
    ///
    /// # Errors
    /// As [`Engine::return_task`]; [`ExecError::Runtime`].
    pub async fn return_task(&self, task: TaskId, actor: &Actor) -> Result<(), ExecError> {
        let actor = actor.clone();
        self.run(move |e| e.return_task(task, &actor)).await?
    }

    /// [`Engine::send_back`].
    ///
    /// # Errors
    /// As [`Engine::send_back`]; [`ExecError::Runtime`].
    pub async fn send_back(
        &self,
        task: TaskId,
        actor: &Actor,
        to: &str,
        reason: &str,
    ) -> Result<(), ExecError> {
        let (actor, to, reason) = (actor.clone(), to.to_owned(), reason.to_owned());
        self.run(move |e| e.send_back(task, &actor, &to, &reason))
            .await?
    }

    /// [`Engine::skip`].
    ///
    /// # Errors
    /// As [`Engine::skip`]; [`ExecError::Runtime`].
    pub async fn skip(&self, task: TaskId, actor: &Actor, reason: &str) -> Result<(), ExecError> {
        let (actor, reason) = (actor.clone(), reason.to_owned());
        self.run(move |e| e.skip(task, &actor, &reason)).await?
    }

    /// [`Engine::suspend`].
    ///
    /// # Errors
    /// As [`Engine::suspend`]; [`ExecError::Runtime`].
    pub async fn suspend(&self, what: impl Into<WorkItem>, actor: &Actor) -> Result<(), ExecError> {
        let (what, actor) = (what.into(), actor.clone());
        self.run(move |e| e.suspend(what, &actor)).await?
    }

    /// [`Engine::resume`].
    ///
    /// # Errors
    /// As [`Engine::resume`]; [`ExecError::Runtime`].
    pub async fn resume(&self, what: impl Into<WorkItem>, actor: &Actor) -> Result<(), ExecError> {
        let (what, actor) = (what.into(), actor.clone());
        self.run(move |e| e.resume(what, &actor)).await?
    }

    /// [`Engine::hand_over`].
    ///
    /// # Errors
    /// As [`Engine::hand_over`]; [`ExecError::Runtime`].
    pub async fn hand_over(
        &self,
        instance: InstanceId,
        by: &Actor,
        to: &Actor,
    ) -> Result<(), ExecError> {
        let (by, to) = (by.clone(), to.clone());
        self.run(move |e| e.hand_over(instance, &by, &to)).await?
    }

    /// [`Engine::cancel`].
    ///
    /// # Errors
    /// As [`Engine::cancel`]; [`ExecError::Runtime`].
    pub async fn cancel(
        &self,
        instance: InstanceId,
        actor: &Actor,
        reason: &str,
    ) -> Result<(), ExecError> {
        let (actor, reason) = (actor.clone(), reason.to_owned());
        self.run(move |e| e.cancel(instance, &actor, &reason))
            .await?
    }

    /// [`Engine::retry`].
    ///
    /// # Errors
    /// As [`Engine::retry`]; [`ExecError::Runtime`].
    pub async fn retry(&self, instance: InstanceId) -> Result<(), ExecError> {
        self.run(move |e| e.retry(instance)).await?
    }

    /// [`Engine::add_items`].
    ///
    /// # Errors
    /// As [`Engine::add_items`]; [`ExecError::Runtime`].
    pub async fn add_items(
        &self,
        instance: InstanceId,
        node: &str,
        items: Vec<serde_json::Value>,
    ) -> Result<(), ExecError> {
        let node = node.to_owned();
        self.run(move |e| e.add_items(instance, &node, items))
            .await?
    }

    /// [`Engine::deliver`].
    ///
    /// # Errors
    /// As [`Engine::deliver`]; [`ExecError::Runtime`].
    pub async fn deliver(
        &self,
        instance: InstanceId,
        message: &str,
        vars: Vars,
    ) -> Result<(), ExecError> {
        let message = message.to_owned();
        self.run(move |e| e.deliver(instance, &message, vars))
            .await?
    }

    /// [`Engine::correlate`].
    ///
    /// # Errors
    /// As [`Engine::correlate`]; [`ExecError::Runtime`].
    pub async fn correlate(&self, message: &str, vars: Vars) -> Result<Correlation, ExecError> {
        let message = message.to_owned();
        self.run(move |e| e.correlate(&message, vars)).await?
    }

    /// [`Engine::signal`].
    ///
    /// # Errors
    /// As [`Engine::signal`]; [`ExecError::Runtime`].
    pub async fn signal(&self, name: &str, vars: Vars) -> Result<usize, ExecError> {
        let name = name.to_owned();
        self.run(move |e| e.signal(&name, vars)).await?
    }

    /// [`Engine::complete_service`]: the answer of an awaiting handler a host runs itself.
    ///
    /// # Errors
    /// As [`Engine::complete_service`]; [`ExecError::Runtime`].
    pub async fn complete_service(
        &self,
        instance: InstanceId,
        node: &str,
        answer: Result<Vars, HandlerError>,
    ) -> Result<(), ExecError> {
        let node = node.to_owned();
        self.run(move |e| e.complete_service(instance, &node, answer))
            .await?
    }

    /// [`Engine::tick`].
    ///
    /// # Errors
    /// [`ExecError::Runtime`] when the runtime could not run it.
    pub async fn tick(&self, now: DateTime<Utc>) -> Result<Vec<Fired>, ExecError> {
        self.run(move |e| e.tick(now)).await
    }

    /// [`Engine::instance`].
    ///
    /// # Errors
    /// As [`Engine::instance`]; [`ExecError::Runtime`].
    pub async fn instance(&self, id: InstanceId) -> Result<Instance, ExecError> {
        self.run(move |e| e.instance(id)).await?
    }

    /// [`Engine::tasks`].
    ///
    /// # Errors
    /// As [`Engine::tasks`]; [`ExecError::Runtime`].
    pub async fn tasks(&self, instance: InstanceId) -> Result<Vec<TaskView>, ExecError> {
        self.run(move |e| e.tasks(instance)).await?
    }

    /// [`Engine::work_list`].
    ///
    /// # Errors
    /// [`ExecError::Runtime`] when the runtime could not run it.
    pub async fn work_list(&self, actor: &Actor) -> Result<Vec<TaskView>, ExecError> {
        let actor = actor.clone();
        self.run(move |e| e.work_list(&actor)).await
    }

    /// [`Engine::work_list_by`].
    ///
    /// # Errors
    /// [`ExecError::Runtime`] when the runtime could not run it.
    pub async fn work_list_by(
        &self,
        actor: &Actor,
        query: &WorkQuery,
    ) -> Result<Vec<TaskView>, ExecError> {
        let (actor, query) = (actor.clone(), query.clone());
        self.run(move |e| e.work_list_by(&actor, &query)).await
    }

    /// [`Engine::sla_of_task`].
    ///
    /// # Errors
    /// As [`Engine::sla_of_task`]; [`ExecError::Runtime`].
    pub async fn sla_of_task(&self, task: TaskId) -> Result<Option<Sla>, ExecError> {
        self.run(move |e| e.sla_of_task(task)).await?
    }

    /// [`Engine::sla_of_instance`].
    ///
    /// # Errors
    /// As [`Engine::sla_of_instance`]; [`ExecError::Runtime`].
    pub async fn sla_of_instance(&self, id: InstanceId) -> Result<Option<Sla>, ExecError> {
        self.run(move |e| e.sla_of_instance(id)).await?
    }

    /// Starts a [`TimerTask`] for this engine on the current runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime (as `tokio::spawn` does).
    pub fn timers(&self, poll: Duration) -> TimerTask {
        TimerTask::spawn(self.clone(), poll)
    }
}

/// The calls of the service tasks `engine` holds waiting for one of the handlers `named`.
fn waiting_jobs(engine: &Engine, named: &HashMap<String, Arc<dyn AsyncHandler>>) -> Vec<Job> {
    let mut jobs = Vec::new();
    for id in engine.instances() {
        let (Ok(inst), Ok(def)) = (engine.instance(id), engine.definition_of(id)) else {
            continue;
        };
        if inst.status() != Status::Running {
            continue;
        }
        for token in inst.tokens() {
            let node = def.node(token.node);
            if token.state != TokenState::Waiting
                || node.kind() != NodeKind::ServiceTask
                || node.is_multi_instance()
                || node.max_iterations().is_some()
            {
                continue;
            }
            if let Some(handler) = node.handler().and_then(|h| named.get(h)) {
                jobs.push(Job {
                    handler: Arc::clone(handler),
                    call: AsyncServiceCall {
                        instance: id,
                        node: node.id().to_owned(),
                        vars: inst.vars().clone(),
                    },
                });
            }
        }
    }
    jobs
}

/// The text of a panic's payload.
fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_owned(),
            Err(_) => "a panic without a message".to_owned(),
        },
    }
}

/// Logs an async handler call or answer that could not be handed on.
fn note_dispatch_failure(instance: InstanceId, node: &str, error: &str) {
    #[cfg(feature = "telemetry")]
    tracing::warn!(
        target: "procflow",
        instance = %instance,
        node,
        error,
        "an async handler's call or answer could not be handed on"
    );
    #[cfg(not(feature = "telemetry"))]
    let _ = (instance, node, error);
}

/// [`TimerDriver`](crate::TimerDriver) as a tokio task: fires due timers (`tick` at the
/// engine's clock) when the earliest is due, and at least every `poll` (a clock a host moves,
/// like [`ManualClock`](crate::ManualClock), is looked at then, or at once after
/// [`TimerTask::wake`]). Stops when dropped or [`stop`](TimerTask::stop)ped.
pub struct TimerTask {
    wake: Arc<Notify>,
    state: Arc<TaskState>,
    handle: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct TaskState {
    ticks: std::sync::atomic::AtomicU64,
    failures: std::sync::atomic::AtomicU64,
    last_failure: Mutex<Option<String>>,
}

impl std::fmt::Debug for TimerTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimerTask")
            .field("running", &self.is_running())
            .field("failures", &self.failures())
            .finish()
    }
}

impl TimerTask {
    /// Starts the task on the current runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime (as `tokio::spawn` does).
    pub fn spawn(engine: AsyncEngine, poll: Duration) -> TimerTask {
        let wake = Arc::new(Notify::new());
        let state = Arc::new(TaskState::default());
        let handle = {
            let (wake, state) = (Arc::clone(&wake), Arc::clone(&state));
            tokio::spawn(async move {
                loop {
                    let e = engine.engine();
                    let now = e.now();
                    let wait = e
                        .next_held_due()
                        .map(|at| (at - now).to_std().unwrap_or(Duration::ZERO))
                        .unwrap_or(poll)
                        .min(poll);
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = wake.notified() => {}
                    }
                    let now = engine.engine().now();
                    match engine.tick(now).await {
                        Ok(fired) => {
                            state.ticks.fetch_add(1, Ordering::Relaxed);
                            #[cfg(feature = "telemetry")]
                            if !fired.is_empty() {
                                tracing::debug!(target: "procflow", fired = fired.len(), "timers fired");
                            }
                            #[cfg(not(feature = "telemetry"))]
                            let _ = fired;
                        }
                        Err(error) => {
                            state.failures.fetch_add(1, Ordering::Relaxed);
                            *state.last_failure.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some(error.to_string());
                        }
                    }
                }
            })
        };
        TimerTask {
            wake,
            state,
            handle,
        }
    }

    /// Looks at the clock now (after a host moved a manual clock).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Whether the task still runs.
    pub fn is_running(&self) -> bool {
        !self.handle.is_finished()
    }

    /// How many ticks ran.
    pub fn ticks(&self) -> u64 {
        self.state.ticks.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many ticks failed (the runtime could not run them).
    pub fn failures(&self) -> u64 {
        self.state
            .failures
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What the last failed tick said.
    pub fn last_failure(&self) -> Option<String> {
        self.state
            .last_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops the task (a tick underway finishes in its blocking thread).
    pub fn stop(self) {}
}

impl Drop for TimerTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}
