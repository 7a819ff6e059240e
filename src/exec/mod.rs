//! The executor: an [`Engine`] owns deployed definitions and running instances, and steps
//! instances when hosts call it.
//!
//! **Invariant:** every call locks exactly one instance (never two), and never takes an engine-wide
//! lock while stepping it; independent instances run in parallel on several threads. Hooks hear a
//! call's events after its commit, with nothing locked (see `seam.rs`).

mod allot;
mod awaiting;
mod cache;
mod call;
mod control;
mod correlate;
mod deploy;
mod error;
mod events;
mod idmap;
mod kept;
mod keys;
mod lifecycle;
mod multi;
mod rework;
mod runs;
mod scope;
mod seam;
mod step;
mod timers;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use chrono::{DateTime, Utc};

pub use correlate::Correlation;
pub use error::{DeployError, DeployProblem, ExecError, OpenError};
pub use keys::{KeyRecord, KeyValue, KeyedInstance};
#[cfg(feature = "report")]
pub(crate) use keys::{key_records, keyed_view, sort_history};
pub use lifecycle::{WorkItem, WorkOrder, WorkQuery};
pub use timers::{Sla, SlaStatus, TimerDriver};

use crate::clock::{Clock, SystemClock};
use crate::def::ProcessDef;
use crate::hooks::{Completing, Control, Hook, ServiceHandler};
use crate::ids::{ActorId, InstanceId, NodeId, RoleId, TaskId};
use crate::model::{Instance, Status, Task, TimerKind, Token, TokenState};
use crate::org::Organisation;
use crate::raci::{self, Action, Actor, Authorizer, Grant};
use crate::store::{Store, StoreError, StoredInstance};
use crate::time::calendar::BusinessCalendar;
use crate::vars::{VarProblem, Vars};
use deploy::{Catalog, Install};
use seam::Slot;
use step::{Change, Step};

/// Engine settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// Whether instances keep an audit trail. This is enabled by default.
    pub audit: bool,
    /// Whether completed instances stay in memory (readable with [`Engine::instance`]) until
    /// [`Engine::remove`]. This is enabled by default; a host that archives instances through a
    /// hook can turn it off.
    pub retain_completed: bool,
    /// The deepest call chain a call activity without its own `max_depth` may start: a child
    /// that would run deeper is not started, and the call is an incident of its parent. The
    /// default is 8.
    pub max_call_depth: u32,
    /// With a store: how many instances the engine keeps in memory at most (each of its 64
    /// shards keeps its share), reading the others from the store when a call, a `tick` or a
    /// query needs them; and opening the store loads no instance (a message finds a waiting
    /// receiver the engine does not hold through the store's key table). `None` (the default):
    /// the engine keeps every instance it starts or reads, and opening loads every running one.
    /// Without a store the engine keeps everything either way.
    pub cache: Option<usize>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            audit: true,
            retain_completed: true,
            max_call_depth: 8,
            cache: None,
        }
    }
}

pub(crate) const SHARDS: usize = 64;

/// Numbers engines, for [`NEXT_IDS`].
static ENGINES: AtomicU64 = AtomicU64::new(1);

/// Instance ids are handed to threads in blocks, so that threads starting instances do not
/// all write one shared counter.
const ID_BLOCK: u64 = 1024;

/// One of the maps from instance number to its slot.
pub(crate) type Shard = Mutex<Held>;

/// The slots of one shard, and how many it let go of: an instance read from the store while
/// that count stands is as new as anything this engine committed (it commits only what it
/// holds), so keeping it needs no second read (`Engine::fetch`).
#[derive(Default)]
pub(crate) struct Held {
    slots: idmap::IdMap<Arc<Mutex<Slot>>>,
    let_go: u64,
}

impl Held {
    /// Takes a slot out of the shard (the one way out, so that the count is kept).
    pub(crate) fn let_go(&mut self, n: u64) -> Option<Arc<Mutex<Slot>>> {
        self.let_go += 1;
        self.slots.remove(n)
    }

    /// How many slots the shard let go of.
    pub(crate) fn let_go_count(&self) -> u64 {
        self.let_go
    }
}

impl std::ops::Deref for Held {
    type Target = idmap::IdMap<Arc<Mutex<Slot>>>;

    fn deref(&self) -> &Self::Target {
        &self.slots
    }
}

impl std::ops::DerefMut for Held {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.slots
    }
}

/// The hasher of the in-memory indexes' values (correlation values, business keys), which
/// callers choose: seeded at random once per process, so that nobody can pick values that
/// pile up in one run of an [`idmap::IdMap`] (a fixed hash would let them: the table probes
/// linearly). A collision costs a look, never a wrong answer; the hashes never leave the
/// process.
pub(crate) fn index_hasher() -> impl std::hash::Hasher {
    use std::hash::BuildHasher;
    static STATE: std::sync::OnceLock<foldhash::fast::RandomState> = std::sync::OnceLock::new();
    STATE.get_or_init(Default::default).build_hasher()
}

/// Hashes instance numbers with one folded multiplication. The default SipHash was about a
/// third of a `complete` call's own time; ids are the engine's own numbers, not input an
/// attacker picks. Folding the 128-bit product mixes the high bits into the low ones, which the
/// table indexes by (all numbers in one shard share their low six bits).
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b) ^ self.0.rotate_left(8));
        }
    }

    fn write_u64(&mut self, n: u64) {
        let product = u128::from(n ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

/// The workflow engine a host application owns. `Send + Sync`: share it by `Arc` and drive
/// independent instances from as many threads as you like.
pub struct Engine {
    config: Config,
    clock: Arc<dyn Clock>,
    hooks: Vec<Arc<dyn Hook>>,
    handlers: HashMap<String, Arc<dyn ServiceHandler>>,
    authorizer: Arc<dyn Authorizer>,
    /// Deployed definitions. Starts read it without a lock or a shared write; deploys replace it.
    defs: ArcSwap<Catalog>,
    /// Serializes deploys.
    deploying: Mutex<()>,
    /// Tells engines apart in the thread-local id blocks.
    uid: u64,
    shards: Box<[Shard]>,
    next_id: AtomicU64,
    /// The calendars definitions may name; replaced one by one by
    /// [`Engine::update_calendar`].
    calendars: Mutex<HashMap<String, Arc<BusinessCalendar>>>,
    /// When armed timers are due, by instance shard: (instant, instance).
    timer_heaps: Box<[Mutex<TimerHeap>]>,
    /// One `tick` at a time, so that timers fire in deadline order. It guards the due entries
    /// the last tick left to another engine that claimed them: looked at again by the next
    /// tick, and not counted by [`Engine::next_due`] (the store says when a claim ends), so
    /// that a driver does not wake at once, again and again, for what it may not fire.
    ticking: Mutex<Vec<(DateTime<Utc>, u64)>>,
    /// Where every call's changes are committed; `None` keeps everything in memory.
    store: Option<Arc<dyn Store>>,
    /// How far [`Engine::backfill_offers`] got: the last instance it looked at, and whether
    /// none is left (then `tick` no longer asks the store).
    backfill: Mutex<(Option<InstanceId>, bool)>,
    /// The organisation, its allocation cursors and the work-list index
    /// ([`EngineBuilder::organisation`]).
    org: Option<Arc<allot::OrgCx>>,
    /// Whether the authorizer may look at a call's context (an organisation, or a host's
    /// authorizer): without, scoped units are not worked out, as nothing would read them.
    contextual: bool,
    /// The business keys of the instances held (see `keys.rs`).
    keys: keys::KeyIndex,
    /// Messages between processes: the correlation index and the messages kept engine-wide
    /// (see `correlate.rs`).
    between: correlate::Between,
    /// With [`EngineBuilder::log_changes`]: the instances each call changed, in order.
    changes: Option<Mutex<Vec<Changed>>>,
}

/// One call's change of one instance, as the engine's change log keeps it
/// ([`EngineBuilder::log_changes`]): what a simulation needs to know without a store.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(feature = "cli"), allow(dead_code))] // What-if alone reads it.
pub(crate) struct Changed {
    pub(crate) id: InstanceId,
    /// Whether it is still running after the call.
    pub(crate) running: bool,
    /// Its earliest timer yet to fire, while it runs.
    pub(crate) next_due: Option<DateTime<Utc>>,
    /// The nodes where it has open tasks after the call: bit `n % 64` for node index `n`.
    pub(crate) open: u64,
}

/// A min-heap of (due instant, instance number).
type TimerHeap = BinaryHeap<Reverse<(DateTime<Utc>, u64)>>;

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Builds an [`Engine`]: handlers, hooks, clock, authorizer and config are fixed when it is
/// built, so the hot path reads them without locks.
pub struct EngineBuilder {
    config: Config,
    clock: Arc<dyn Clock>,
    hooks: Vec<Arc<dyn Hook>>,
    handlers: HashMap<String, Arc<dyn ServiceHandler>>,
    authorizer: Arc<dyn Authorizer>,
    calendars: HashMap<String, Arc<BusinessCalendar>>,
    org: Option<Arc<Organisation>>,
    /// Whether the host set an authorizer (else an organisation is the authorizer).
    custom_authorizer: bool,
    /// Whether the engine keeps a change log ([`EngineBuilder::log_changes`]).
    log_changes: bool,
}

impl std::fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Default for EngineBuilder {
    fn default() -> Self {
        EngineBuilder {
            config: Config::default(),
            clock: Arc::new(SystemClock),
            hooks: Vec::new(),
            handlers: HashMap::new(),
            authorizer: Arc::new(raci::by_actor_roles),
            calendars: HashMap::new(),
            org: None,
            custom_authorizer: false,
            log_changes: false,
        }
    }
}

impl EngineBuilder {
    /// Sets the config. See [`Config`] for the defaults.
    pub fn config(&mut self, config: Config) -> &mut Self {
        self.config = config;
        self
    }

    /// Sets the clock. The default is [`SystemClock`].
    pub fn clock(&mut self, clock: impl Clock + 'static) -> &mut Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Adds a hook; hooks see events in the order they were added.
    pub fn hook(&mut self, hook: impl Hook + 'static) -> &mut Self {
        self.hooks.push(Arc::new(hook));
        self
    }

    /// Registers a service handler under `name` (replacing one of the same name).
    pub fn handler(
        &mut self,
        name: impl Into<String>,
        handler: impl ServiceHandler + 'static,
    ) -> &mut Self {
        self.handlers.insert(name.into(), Arc::new(handler));
        self
    }

    /// Sets how role membership is decided. The default checks [`Actor::roles`].
    pub fn authorizer(&mut self, authorizer: impl Authorizer + 'static) -> &mut Self {
        self.authorizer = Arc::new(authorizer);
        self.custom_authorizer = true;
        self
    }

    /// Gives the engine an organisation. Its people's roles (in their units) and skills decide
    /// who may act on tasks, unless an [`EngineBuilder::authorizer`] is set, which then decides
    /// roles (and sees scoped units in its [`AuthContext`](crate::AuthContext)); skills and
    /// `allocate:` always use the organisation. Deploying checks that a definition's roles
    /// and skills are the organisation's. Work lists use an index by role and unit instead of
    /// a scan. There is no organisation by default.
    pub fn organisation(&mut self, org: impl Into<Arc<Organisation>>) -> &mut Self {
        self.org = Some(org.into());
        self
    }

    /// Registers a business calendar under `name`; definitions name it with `calendar:`.
    pub fn calendar(&mut self, name: impl Into<String>, calendar: BusinessCalendar) -> &mut Self {
        self.calendars.insert(name.into(), Arc::new(calendar));
        self
    }

    /// Makes the engine log the instances each call changes ([`Engine::take_changes`]): a
    /// simulation without a store reads its work lists and its next timer from it.
    #[cfg(feature = "cli")] // What-if alone asks it.
    pub(crate) fn log_changes(&mut self) -> &mut Self {
        self.log_changes = true;
        self
    }

    /// Builds the engine.
    pub fn build(&mut self) -> Engine {
        let b = std::mem::take(self);
        let contextual = b.org.is_some() || b.custom_authorizer;
        let authorizer: Arc<dyn Authorizer> = match &b.org {
            Some(org) if !b.custom_authorizer => Arc::new(allot::OrgAuthorizer(Arc::clone(org))),
            _ => b.authorizer,
        };
        Engine {
            config: b.config,
            clock: b.clock,
            hooks: b.hooks,
            handlers: b.handlers,
            authorizer,
            defs: ArcSwap::from_pointee(Catalog::default()),
            deploying: Mutex::new(()),
            uid: ENGINES.fetch_add(1, Ordering::Relaxed),
            shards: (0..SHARDS).map(|_| Mutex::new(Held::default())).collect(),
            next_id: AtomicU64::new(1),
            calendars: Mutex::new(b.calendars),
            timer_heaps: (0..SHARDS).map(|_| Mutex::new(BinaryHeap::new())).collect(),
            ticking: Mutex::new(Vec::new()),
            backfill: Mutex::new((None, false)),
            store: None,
            org: b.org.map(|o| Arc::new(allot::OrgCx::new(o))),
            contextual,
            keys: keys::KeyIndex::default(),
            between: correlate::Between::default(),
            changes: b.log_changes.then(|| Mutex::new(Vec::new())),
        }
    }

    /// Builds an engine on a store and resumes what it holds: every stored definition version
    /// is compiled again from its stored text and deployed (so the handlers and calendars they
    /// name must be registered on this builder), and every running instance is loaded with its
    /// tokens, claims, incidents and timers. Timers that fell due while no engine ran fire on
    /// the next [`Engine::tick`], once each, in order.
    ///
    /// From then on every call that changes an instance commits its changes to the store before
    /// it returns; see [`Store`].
    ///
    /// # Errors
    /// [`OpenError::Store`] when the store fails; [`OpenError::Definition`] when a stored
    /// definition no longer deploys; [`OpenError::UnknownDefinition`] when a stored instance
    /// names a definition the store does not hold.
    ///
    /// # Examples
    /// ```
    /// use procflow::{Actor, Engine, MemoryStore, ProcessDef, Vars};
    ///
    /// let store = MemoryStore::new();
    /// let engine = Engine::builder().open(store.clone())?;
    /// engine.deploy(ProcessDef::from_yaml(r#"
    /// id: hello
    /// version: 1
    /// name: Hello
    /// roles: { clerk: { name: Clerk } }
    /// nodes:
    ///   start: { kind: start, next: greet }
    ///   greet: { kind: user_task, name: Greet, raci: { responsible: [clerk], accountable: clerk }, next: end }
    ///   end: { kind: end }
    /// "#)?)?;
    /// let id = engine.start("hello", Vars::new())?;
    /// drop(engine);
    ///
    /// // Later, in another engine (on a durable store: after a restart).
    /// let engine = Engine::builder().open(store)?;
    /// let task = engine.tasks(id)?[0].id;
    /// engine.complete(task, &Actor::new("ann", ["clerk"]), Vars::new())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(&mut self, store: impl Store + 'static) -> Result<Engine, OpenError> {
        let mut engine = self.build();
        let store: Arc<dyn Store> = Arc::new(store);
        engine.store = Some(Arc::clone(&store));
        for stored in store.definitions()? {
            let def =
                ProcessDef::from_yaml(&stored.text).map_err(|error| OpenError::Definition {
                    key: stored.key.clone(),
                    error,
                })?;
            // What does not resolve here (a retired handler) only refuses to open when a
            // running instance needs it, below.
            let _ = engine.install(def, Install::Resume);
        }
        // Keeps a stored instance, or says why an engine cannot resume it. Read before anything
        // ran (`opening`), it is not read again.
        let resume = |stored: StoredInstance, opening: bool| {
            let id = stored.instance.id;
            let key = stored.instance.def.as_deref().cloned().unwrap_or_default();
            let kept = if opening {
                engine.adopt_opening(stored)
            } else {
                engine.adopt(stored)
            };
            let slot = kept.map_err(|e| match e {
                ExecError::Store(e) => OpenError::Store(e),
                _ => OpenError::UnknownDefinition { instance: id, key },
            })?;
            Ok::<_, OpenError>((id, slot))
        };
        // With a bounded cache nothing is loaded: calls, ticks, queries and messages read
        // the instances they need (see `cache.rs`).
        if engine.config.cache.is_none() {
            for stored in store.running()? {
                let (id, slot) = resume(stored, true)?;
                if let Some(error) = &lock(&slot).dep.missing {
                    return Err(OpenError::Unavailable {
                        instance: id,
                        error: error.clone(),
                    });
                }
            }
        }
        // The correlation index, the messages kept engine-wide, and what receivers have.
        engine.resume_between()?;
        // Follow-ups a crash left between their commit and their run.
        for stored in store.outbox()? {
            // Follow-ups run in this loop may have changed the instances listed after theirs.
            let (id, slot) = resume(stored, false)?;
            let (dep, pending) = {
                let slot = lock(&slot);
                (Arc::clone(&slot.dep), slot.inst.pending().to_vec())
            };
            // A hook's failure here is the hook's; the follow-up counts as run.
            let _ = engine.run_follow_ups(id, &dep, pending);
        }
        engine.resumed_between();
        Ok(engine)
    }
}

/// An open task as a work list shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TaskView {
    /// The task.
    pub id: TaskId,
    /// The node.
    pub node: NodeId,
    /// The node's YAML id (shared with the definition: a work list copies no text).
    pub node_id: Arc<str>,
    /// The node's name.
    pub name: Option<Arc<str>>,
    /// Who claimed it.
    pub claimed_by: Option<ActorId>,
    /// When it opened.
    pub created_at: DateTime<Utc>,
    /// Its completion deadline, if it has one.
    pub due: Option<DateTime<Utc>>,
    /// For a multi-instance task (`for_each`): the index of the item it runs (its value is
    /// [`Instance::task_item`]).
    pub item: Option<u32>,
    /// The instance whose call activity started this task's instance, if any
    /// ([`Instance::parent`]).
    pub parent: Option<InstanceId>,
    /// The person the task is assigned to (`assign:` direct, owner or retain familiar).
    pub assignee: Option<ActorId>,
    /// The people the task is offered to (`assign: { candidates: .. }`); empty when it is not.
    pub candidates: Vec<ActorId>,
    /// Its priority (`priority:`, or the instance's `priority` variable), higher first.
    pub priority: Option<i64>,
    /// Whether it is suspended ([`Engine::suspend`]), on its own or with its instance.
    pub suspended: bool,
    /// Who delegated it, while it is delegated ([`Engine::delegate`]).
    pub delegated_by: Option<ActorId>,
}

thread_local! {
    /// This thread's block of instance ids: (engine uid, next id, end of the block).
    static NEXT_IDS: std::cell::Cell<(u64, u64, u64)> = const { std::cell::Cell::new((0, 0, 0)) };
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic inside the engine never leaves a half-applied change (handlers and hooks run under
    // catch_unwind), so a poisoned lock still guards consistent data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Checks variables against a definition's declarations.
pub(crate) fn check_vars(def: &ProcessDef, vars: &Vars) -> Vec<(String, VarProblem)> {
    let mut problems = Vec::new();
    for (name, value) in vars {
        match def.vars.get(name) {
            None => problems.push((name.clone(), VarProblem::Undeclared)),
            Some(spec) => {
                if let Some(p) = spec.reject(value) {
                    problems.push((name.clone(), p));
                }
            }
        }
    }
    problems
}

impl Default for Engine {
    fn default() -> Self {
        Engine::builder().build()
    }
}

impl Engine {
    /// An engine with the default config, the system clock, and no handlers or hooks.
    pub fn new() -> Engine {
        Engine::default()
    }

    /// An engine with the defaults on `store`, resuming what it holds; see
    /// [`EngineBuilder::open`] (which a host with handlers, hooks or calendars uses).
    ///
    /// # Errors
    /// As [`EngineBuilder::open`].
    pub fn open(store: impl Store + 'static) -> Result<Engine, OpenError> {
        Engine::builder().open(store)
    }

    /// A builder for an engine with handlers, hooks, a clock or a config.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// The next instance id, from this thread's block. With a store, blocks are reserved in
    /// the store, so that engines sharing it never hand out the same id.
    fn next_instance_id(&self) -> Result<InstanceId, StoreError> {
        NEXT_IDS.with(|ids| {
            let (uid, next, end) = ids.get();
            if uid == self.uid && next < end {
                ids.set((uid, next + 1, end));
                return Ok(InstanceId(next));
            }
            let first = match &self.store {
                Some(store) => store.reserve_ids(ID_BLOCK)?,
                None => self.next_id.fetch_add(ID_BLOCK, Ordering::Relaxed),
            };
            ids.set((self.uid, first + 1, first + ID_BLOCK));
            Ok(InstanceId(first))
        })
    }

    /// Starts an instance of the newest version of `process` and runs it until every token waits
    /// at a user task or has ended.
    ///
    /// # Errors
    /// [`ExecError::UnknownProcess`]; [`ExecError::Variables`] when `vars` names an undeclared
    /// variable, has a value of the wrong type or outside the enum, or misses a required one;
    /// [`ExecError::Deadline`] when the process-wide SLA cannot be computed (in these cases
    /// nothing is started); [`ExecError::Incident`] or [`ExecError::Deadline`] when a node
    /// failed (the instance exists, with an incident); [`ExecError::Hook`] when a hook failed
    /// after the start committed.
    pub fn start(&self, process: &str, vars: Vars) -> Result<InstanceId, ExecError> {
        self.start_version(process, None, vars)
    }

    /// Starts an instance of a named version; see [`Engine::start`].
    ///
    /// # Errors
    /// As [`Engine::start`].
    pub fn start_version(
        &self,
        process: &str,
        version: Option<u32>,
        vars: Vars,
    ) -> Result<InstanceId, ExecError> {
        crate::telemetry::call!("start", process, instance = ::tracing::field::Empty);
        self.start_from(process, version, vars, None)
    }

    /// [`Engine::start_version`], recording in the start's commit the message that started it
    /// (a message start event, `correlate.rs`).
    fn start_from(
        &self,
        process: &str,
        version: Option<u32>,
        vars: Vars,
        mut received: Option<Box<correlate::BetweenChange>>,
    ) -> Result<InstanceId, ExecError> {
        // A refused start drops what it was given without recursing through it.
        let mut vars = crate::vars::Handed::new(vars);
        self.not_busy()?;
        let catalog = self.defs.load();
        let dep = deploy::find(&catalog, process, version)?;
        dep.runnable()?;
        let def = &dep.def;
        let mut problems = check_vars(def, &vars);
        for spec in def.vars.values() {
            // Most declared variables have no default and are optional: nothing to look up.
            if (spec.default.is_some() || spec.required) && !vars.contains_key(&spec.name) {
                match &spec.default {
                    Some(d) => {
                        vars.insert(spec.name.clone(), d.clone());
                    }
                    None if spec.required => {
                        problems.push((spec.name.clone(), VarProblem::Missing))
                    }
                    None => {}
                }
            }
        }
        if !problems.is_empty() {
            return Err(ExecError::Variables { problems });
        }
        let id = self.next_instance_id()?;
        #[cfg(feature = "telemetry")]
        crate::telemetry::record_instance(id);
        let now = self.clock.now();
        let mut inst = Instance {
            id,
            def: self.store.as_ref().map(|_| Arc::clone(&dep.key)),
            status: Status::Running,
            vars: vars.take(),
            tokens: smallvec::smallvec![Token {
                node: def.start,
                state: TokenState::Ready,
                run: 0,
            }],
            tasks: Vec::new(),
            timers: Vec::new(),
            audit: Vec::with_capacity(if self.config.audit {
                dep.first_records.load(Ordering::Relaxed)
            } else {
                0
            }),
            started_at: now,
            ended_at: None,
            rare: None,
        };
        let mut version = 0;
        let mut sla_failed = false;
        let stepped = {
            let _held = seam::hold(id);
            self.step_parts(&mut inst, dep, &mut version, now, |step| {
                let mut sla = timers::Armed::default();
                step.sla_timers(&mut sla)
                    .inspect_err(|_| sla_failed = true)?;
                step.apply(Change::Started);
                if let Some(r) = received.take() {
                    step.apply(Change::Between(r));
                }
                step.arm(&sla);
                step.run()
            })
        };
        let stepped = match stepped {
            Ok(stepped) if !sla_failed => stepped,
            // A start the store refused, or whose SLA cannot be computed, leaves no instance.
            Ok(stepped) => return self.after(stepped).map(|()| id),
            Err(error) => return self.after(self.refusal(id, error)).map(|()| id),
        };
        // Remember how many records a start writes, so that the next start allocates its audit
        // trail once. Written only when it changes, so threads starting instances of the same
        // definition do not fight over the cache line.
        let records = inst.audit.len();
        if dep.first_records.load(Ordering::Relaxed) != records {
            dep.first_records.store(records, Ordering::Relaxed);
        }
        // Shares the definition only when the instance is kept: a start that completes at
        // once touches no reference count shared between threads.
        if inst.status == Status::Running || self.config.retain_completed {
            if inst.def.is_none() {
                inst.def = Some(Arc::clone(&dep.key));
            }
            if !dep.def.keys.is_empty() {
                self.index_keys(&inst, &dep.def);
            }
            let slot = Slot::new(inst, Arc::clone(dep), version);
            lock(self.shard(id)).insert(id.0, Arc::new(Mutex::new(slot)));
            if self.config.cache.is_some() {
                self.trim(id);
            }
        }
        self.after(stepped).map(|()| id)
    }

    /// Runs `f` with a step on the instance of `task`, after checking the task is open.
    fn with_task(
        &self,
        task: TaskId,
        f: impl FnOnce(&mut Step<'_>, NodeId) -> Result<(), ExecError>,
    ) -> Result<(), ExecError> {
        let now = self.clock.now();
        self.call(task.instance, |slot| {
            let node = self.open_task(slot, task)?;
            #[cfg(feature = "telemetry")]
            crate::telemetry::record_node(&slot.dep.names[node.index()]);
            Ok(self.step_slot(slot, now, |step| f(step, node)))
        })
    }

    /// Checks RACI for `action` and records a refusal.
    fn authorize(
        &self,
        step: &mut Step<'_>,
        task: TaskId,
        node: NodeId,
        action: Action,
        actor: &Actor,
    ) -> Result<Grant, ExecError> {
        self.authorize_in(step, task, node, action, actor, false)
    }

    /// [`Engine::authorize`]; with `ignore_claim`, as if the task were not claimed (a claim on
    /// a task someone else holds is first checked for the role).
    fn authorize_in(
        &self,
        step: &mut Step<'_>,
        task: TaskId,
        node: NodeId,
        action: Action,
        actor: &Actor,
        ignore_claim: bool,
    ) -> Result<Grant, ExecError> {
        let t = &step.inst.tasks[task.seq as usize];
        let def_node = &step.dep.def.nodes[t.node.index()];
        let raci = def_node.raci().ok_or(ExecError::UnknownTask(task))?;
        let escalated = t
            .escalated_to
            .and_then(|i| step.dep.def.roles.get_index(i as usize))
            .map(|(r, _)| r);
        let vars = &step.inst.vars;
        let holds = |r: &RoleId| self.allows(def_node, raci, vars, task, escalated, r, actor);
        let claimant = if ignore_claim {
            None
        } else {
            t.claimed_by.as_deref()
        };
        match raci::check_with(&holds, raci, action, actor, claimant, escalated) {
            Ok(grant) => Ok(grant),
            Err(allowed) => {
                let claimant = t.claimed_by.clone();
                step.apply(Change::Denied {
                    task: task.seq,
                    actor: &actor.id,
                    action,
                    allowed: &allowed,
                });
                Err(ExecError::Denied {
                    actor: actor.id.clone(),
                    action,
                    task,
                    node: step.dep.node(node),
                    allowed,
                    claimed_by: claimant.filter(|c| **c != *actor.id),
                })
            }
        }
    }

    /// The role `actor` acts in on `task` under `grant` (its position in the role catalogue):
    /// the accountable role for an override, the role an escalation gave the task to, else the
    /// first responsible role the actor holds. For the audit record of a completion.
    fn acted_role(
        &self,
        step: &Step<'_>,
        task: TaskId,
        grant: Grant,
        actor: &Actor,
    ) -> Option<u16> {
        if grant == Grant::Override {
            return step.accountable_role(task.seq);
        }
        let t = &step.inst.tasks[task.seq as usize];
        if let Some(i) = t.escalated_to {
            return Some(i);
        }
        let def_node = &step.dep.def.nodes[t.node.index()];
        let raci = def_node.raci()?;
        let vars = &step.inst.vars;
        let role = raci
            .responsible()
            .iter()
            .find(|r| self.allows(def_node, raci, vars, task, None, r, actor))?;
        step.dep.def.roles.get_index_of(role).map(|i| i as u16)
    }

    /// Claims an open task for `actor`, who must hold a responsible role.
    ///
    /// # Errors
    /// [`ExecError::Denied`] (recorded in the audit trail), [`ExecError::AlreadyClaimed`],
    /// [`ExecError::UnknownTask`], [`ExecError::TaskClosed`]; [`ExecError::NotEnabled`] when the
    /// task's milestones (`while_at`) are not held; [`ExecError::Interleaved`] when another task
    /// of its mutex group is claimed.
    pub fn claim(&self, task: TaskId, actor: &Actor) -> Result<(), ExecError> {
        crate::telemetry::call!("claim", instance = %task.instance, task = %task, node = ::tracing::field::Empty, actor = %actor.id);
        self.with_task(task, |step, node| {
            if let Some(by) = &step.inst.tasks[task.seq as usize].claimed_by
                && **by != *actor.id
            {
                // Someone without a responsible role is refused (and recorded) for that, not
                // for the claim: every refused attempt is audited.
                self.authorize_in(step, task, node, Action::Claim, actor, true)?;
                let by = step.inst.tasks[task.seq as usize]
                    .claimed_by
                    .clone()
                    .unwrap_or_else(|| actor.id.clone());
                return Err(ExecError::AlreadyClaimed {
                    task,
                    node: step.dep.node(node),
                    by: by.clone(),
                });
            }
            let grant = self.authorize(step, task, node, Action::Claim, actor)?;
            self.check_skills(step, task, node, Action::Claim, actor)?;
            step.check_allocation(
                task,
                &actor.id,
                crate::model::Call::Claim,
                grant == Grant::Regular,
            )?;
            rework::check_enabled(step, task, node)?;
            rework::check_interleaved(step, task, node)?;
            step.apply(Change::Claim {
                task: task.seq,
                actor: &actor.id,
            });
            Ok(())
        })
    }

    /// Completes a task with output variables and runs the instance on.
    ///
    /// A responsible actor may complete an unclaimed task or one it claimed; the accountable role
    /// may complete any open task, which the audit trail marks as an override. Hooks may veto
    /// ([`Hook::on_completing`]).
    ///
    /// # Errors
    /// [`ExecError::Denied`], [`ExecError::Variables`], [`ExecError::Vetoed`] (nothing changed
    /// but the audit record); [`ExecError::NotEnabled`] when the task's milestones are not held,
    /// [`ExecError::Interleaved`] when it is unclaimed and another task of its mutex group is
    /// claimed (nothing changed); [`ExecError::TaskClosed`] for a completed or timed-out task;
    /// [`ExecError::Incident`], [`ExecError::Deadline`] or [`ExecError::Hook`] when a later
    /// node or a hook failed (the completion stands).
    pub fn complete(&self, task: TaskId, actor: &Actor, output: Vars) -> Result<(), ExecError> {
        crate::telemetry::call!("complete", instance = %task.instance, task = %task, node = ::tracing::field::Empty, actor = %actor.id);
        // A refused completion drops what it was given without recursing through it.
        let output = crate::vars::Handed::new(output);
        self.with_task(task, |step, node| {
            let grant = self.authorize(step, task, node, Action::Complete, actor)?;
            if step.dep.def.nodes[node.index()].org.is_some() {
                self.check_skills(step, task, node, Action::Complete, actor)?;
            }
            step.check_allocation(
                task,
                &actor.id,
                crate::model::Call::Complete,
                grant == Grant::Regular,
            )?;
            rework::check_enabled(step, task, node)?;
            if step.inst.tasks[task.seq as usize].claimed_by.is_none() {
                // Completing an unclaimed task claims it on the way.
                rework::check_interleaved(step, task, node)?;
            }
            let mut problems = check_vars(&step.dep.def, &output);
            if let Some(sets) = step.dep.def.nodes[node.index()].sets() {
                let sets: Vec<&str> = sets.collect();
                problems.extend(
                    output
                        .keys()
                        .filter(|name| {
                            !sets.contains(&name.as_str()) && step.dep.def.vars.contains_key(*name)
                        })
                        .map(|name| (name.clone(), VarProblem::NotSetByTask)),
                );
            }
            let for_each = step.dep.def.nodes[node.index()].for_each();
            if let Some(fe) = for_each {
                problems.extend(multi::item_problems(step.inst, fe, task.seq, &output));
            }
            if !problems.is_empty() {
                return Err(ExecError::Variables { problems });
            }
            let verdict = step.guard(&Completing {
                task,
                node: &step.dep.def.nodes[node.index()].id,
                actor: &actor.id,
                output: &output,
                vars: &step.inst.vars,
            });
            if let Err(Control::Abort(message)) = verdict {
                // A failing guard refuses the completion too, but as an incident, not a veto.
                step.apply(Change::Fail {
                    token: None,
                    node: None,
                    message: &message,
                });
                return Err(ExecError::Hook {
                    instance: task.instance,
                    message,
                });
            }
            if let Err(Control::Veto(reason)) = verdict {
                step.apply(Change::Vetoed {
                    task: task.seq,
                    actor: &actor.id,
                    reason: &reason,
                });
                return Err(ExecError::Vetoed {
                    task,
                    node: step.dep.node(node),
                    reason,
                });
            }
            let overridden = grant == Grant::Override;
            let role = self.acted_role(step, task, grant, actor);
            if step.dep.def.allocating {
                step.completing(task.seq, &actor.id);
            }
            step.finish_task(task.seq, &actor.id, overridden, output.take(), role)
        })
    }

    /// Adds a comment to an open task. Responsible, accountable and consulted roles may comment.
    ///
    /// # Errors
    /// [`ExecError::Denied`], [`ExecError::UnknownTask`], [`ExecError::TaskClosed`].
    pub fn comment(&self, task: TaskId, actor: &Actor, text: &str) -> Result<(), ExecError> {
        crate::telemetry::call!("comment", instance = %task.instance, task = %task, node = ::tracing::field::Empty, actor = %actor.id);
        self.with_task(task, |step, node| {
            self.authorize(step, task, node, Action::Comment, actor)?;
            step.apply(Change::Comment {
                task: task.seq,
                actor: &actor.id,
                text,
            });
            Ok(())
        })
    }

    /// Gives an open task to `to` as an override by the accountable role. `to` must be able to
    /// work it: hold a responsible role (in the task's scope, when the reference is scoped) or,
    /// after an escalation gave the task to a role, that role; and have the task's skills.
    ///
    /// # Errors
    /// [`ExecError::Denied`] when `by` is not accountable; [`ExecError::ReassignRefused`] when
    /// `to` may not work the task (recorded as `by`'s refused reassign);
    /// [`ExecError::Interleaved`] when another task of its mutex group is claimed.
    pub fn reassign(&self, task: TaskId, by: &Actor, to: &Actor) -> Result<(), ExecError> {
        crate::telemetry::call!("reassign", instance = %task.instance, task = %task, node = ::tracing::field::Empty, actor = %by.id, to = %to.id);
        self.with_task(task, |step, node| {
            self.authorize(step, task, node, Action::Reassign, by)?;
            // The new holder must be able to do the work. The old claim does not stand in the
            // way; overriding it is the point.
            let t = &step.inst.tasks[task.seq as usize];
            let def_node = &step.dep.def.nodes[t.node.index()];
            let raci = def_node.raci().ok_or(ExecError::UnknownTask(task))?;
            let escalated = t
                .escalated_to
                .and_then(|i| step.dep.def.roles.get_index(i as usize))
                .map(|(r, _)| r);
            let vars = &step.inst.vars;
            // After an escalation the task is the escalation role's work: its holders qualify.
            let allowed: Vec<RoleId> = match escalated {
                Some(role) => vec![role.clone()],
                None => raci.responsible().to_vec(),
            };
            let eligible = allowed
                .iter()
                .any(|r| self.allows(def_node, raci, vars, task, escalated, r, to))
                && self.missing_skills(def_node, to).is_empty();
            if !eligible {
                step.apply(Change::Org(allot::OrgChange::ReassignRefused {
                    task: task.seq,
                    by: &by.id,
                    to: &to.id,
                    allowed: &allowed,
                }));
                return Err(ExecError::ReassignRefused {
                    by: by.id.clone(),
                    to: to.id.clone(),
                    task,
                    node: step.dep.node(node),
                    allowed,
                });
            }
            rework::check_interleaved(step, task, node)?;
            step.apply(Change::Reassign {
                task: task.seq,
                by: &by.id,
                to: &to.id,
            });
            Ok(())
        })
    }

    /// Runs failed nodes again (a service task whose handler failed, a gateway with no route, a
    /// task or timer node whose deadline could not be computed).
    ///
    /// # Errors
    /// [`ExecError::NothingToRetry`], or the next failure.
    pub fn retry(&self, instance: InstanceId) -> Result<(), ExecError> {
        crate::telemetry::call!("retry", instance = %instance);
        let now = self.clock.now();
        self.call(instance, |slot| {
            if slot.inst.status == Status::Completed {
                return Err(ExecError::InstanceCompleted(instance));
            }
            if slot.inst.status == Status::Cancelled {
                return Err(ExecError::InstanceCancelled(instance));
            }
            if !slot
                .inst
                .tokens
                .iter()
                .any(|t| t.state == TokenState::Failed)
            {
                return Err(ExecError::NothingToRetry(instance));
            }
            Ok(self.step_slot(slot, now, |step| {
                step.apply(Change::Retry);
                step.run()
            }))
        })
    }

    /// Adds items to a running multi-instance task (WCP 15 and 36: the number of items is
    /// known only while it runs). A parallel user task opens a task for each new item at once; a
    /// sequential one runs them after the others; a service task whose items stopped at a
    /// failing one runs them on [`Engine::retry`]. The activity's `total` grows, and the new
    /// items' outputs are collected after the others'.
    ///
    /// # Errors
    /// [`ExecError::UnknownNode`] when the definition has no node `node`;
    /// [`ExecError::NotRunningItems`] when it is not a multi-instance task or none of its
    /// activity is underway; [`ExecError::Variables`] when an item is too large or deep to be a
    /// variable value. Nothing changes then.
    pub fn add_items(
        &self,
        instance: InstanceId,
        node: &str,
        items: Vec<serde_json::Value>,
    ) -> Result<(), ExecError> {
        crate::telemetry::call!("add_items", instance = %instance, node);
        // Refused items may be nested deeper than any variable: dropped without recursion.
        let items = crate::vars::Handed::new(items);
        let now = self.clock.now();
        self.call(instance, |slot| {
            let def = &slot.dep.def;
            let Some(at) = def.node_id(node) else {
                return Err(ExecError::UnknownNode {
                    instance,
                    node: node.to_owned(),
                });
            };
            let Some(fe) = def.nodes[at.index()].for_each() else {
                return Err(ExecError::NotRunningItems {
                    instance,
                    node: slot.dep.node(at),
                });
            };
            if slot.inst.status != Status::Running || slot.inst.multi_at(at).is_none() {
                return Err(ExecError::NotRunningItems {
                    instance,
                    node: slot.dep.node(at),
                });
            }
            // The items, old and new, must stay a list a variable could hold.
            let all: Vec<&serde_json::Value> = slot
                .inst
                .multi_at(at)
                .map(|m| m.items.iter())
                .into_iter()
                .flatten()
                .chain(items.iter())
                .collect();
            if let Err(problem) = crate::vars::list_bounds(&all) {
                return Err(ExecError::Variables {
                    problems: vec![(fe.list.clone(), problem)],
                });
            }
            // A user task opens the new items' tasks, a sub-process starts their runs.
            let user = def.nodes[at.index()].raci().is_some()
                || matches!(
                    def.nodes[at.index()].behaviour,
                    crate::def::Behaviour::Subprocess { .. }
                );
            Ok(self.step_slot(slot, now, |step| {
                step.apply(Change::Looping(multi::LoopChange::Add {
                    node: at,
                    items: items.take(),
                }));
                if user {
                    step.advance_items(at, None)?;
                }
                step.run()
            }))
        })
    }

    /// A copy of an instance's state. On a store that replicas share
    /// ([`Store::is_shared`](crate::store::Store::is_shared): PostgreSQL) it is the stored
    /// state when another engine committed since this one read it (one read of the store per
    /// call); on others, the copy this engine holds (see "Persistence" in the README).
    ///
    /// # Errors
    /// [`ExecError::UnknownInstance`].
    pub fn instance(&self, id: InstanceId) -> Result<Instance, ExecError> {
        crate::telemetry::call!("instance", instance = %id);
        self.with_current(id, |slot| slot.inst.clone())
    }

    /// The definition an instance runs.
    ///
    /// # Errors
    /// [`ExecError::UnknownInstance`].
    pub fn definition_of(&self, id: InstanceId) -> Result<Arc<ProcessDef>, ExecError> {
        self.with_slot(id, |slot| Arc::clone(&slot.dep.def))
    }

    /// Removes an instance from the engine's memory and returns its final state. A store keeps
    /// it (and any later call on it reads it back).
    ///
    /// # Errors
    /// [`ExecError::UnknownInstance`], [`ExecError::Reentrant`].
    pub fn remove(&self, id: InstanceId) -> Result<Instance, ExecError> {
        self.not_busy()?;
        loop {
            let slot = lock(self.shard(id))
                .get(id.0)
                .cloned()
                .ok_or(ExecError::UnknownInstance(id))?;
            // Taken out of its shard only under its own lock: a call in flight on it commits
            // first, so whoever reads the instance next reads what that call stored.
            let mut guard = lock(&slot);
            {
                let mut shard = lock(self.shard(id));
                if !shard.get(id.0).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                    continue;
                }
                shard.let_go(id.0);
            }
            if let Some(org) = &self.org {
                org.forget(id);
            }
            guard.retire();
            if !guard.dep.def.keys.is_empty() {
                self.unindex_keys(&guard.inst, &guard.dep.def);
            }
            drop(guard);
            // Out of its shard, the slot is held by nobody else but a caller that looked it up
            // before (and finds it retired): the instance moves out, else it is copied.
            return Ok(match Arc::try_unwrap(slot) {
                Ok(slot) => {
                    slot.into_inner()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .inst
                }
                Err(slot) => lock(&slot).inst.clone(),
            });
        }
    }

    /// The open tasks of an instance, including those whose milestones (`while_at`) are not
    /// held now (see [`Engine::work_list`]). Read as [`Engine::instance`] reads the instance.
    ///
    /// # Errors
    /// [`ExecError::UnknownInstance`].
    pub fn tasks(&self, instance: InstanceId) -> Result<Vec<TaskView>, ExecError> {
        crate::telemetry::call!("tasks", instance = %instance);
        self.with_current(instance, |slot| open_tasks(slot, |_| true))
    }

    /// The open tasks that `actor`'s roles make it responsible for (unclaimed, or claimed by
    /// it), across all instances, oldest first. A task whose milestones (`while_at`) are not held
    /// is left out until they are.
    ///
    /// With a store the list covers every running instance the store holds, also those another
    /// engine sharing it started or changed and those the cache ([`Config::cache`]) let go:
    /// the store lists its running instances with their versions (an index, no state decoded),
    /// and each one this engine does not hold, or holds at an older version, is read from the
    /// store for the list (and not kept). A store that cannot be read now leaves the list at
    /// what this engine holds.
    ///
    /// Complexity: a scan of every instance held, plus with a store one query and one read per
    /// running instance not held. Called from a handler or veto it answers an empty list. A
    /// caller that keeps a list and hears which instances changed reads those alone with
    /// [`Engine::work_list_of`].
    pub fn work_list(&self, actor: &Actor) -> Vec<TaskView> {
        crate::telemetry::call!("work_list", actor = %actor.id);
        let mut out = Vec::new();
        if seam::busy().is_some() {
            return out;
        }
        if let Some(org) = &self.org {
            out = self.work_list_indexed(org, actor);
        } else {
            for shard in &*self.shards {
                let slots: Vec<Arc<Mutex<Slot>>> = lock(shard).values().cloned().collect();
                for slot in slots {
                    let slot = lock(&slot);
                    out.extend(open_tasks(&slot, |t| self.may_list(&slot, t, actor)));
                }
            }
        }
        // With a store: the instances held elsewhere (or newer there), read from it.
        self.work_list_stored(actor, &mut out);
        out.sort_by_key(urgency);
        out
    }

    /// Moves the change log's entries to `out`, oldest first (nothing without
    /// [`EngineBuilder::log_changes`]).
    #[cfg(feature = "cli")] // What-if alone asks it.
    pub(crate) fn take_changes(&self, out: &mut Vec<Changed>) {
        if let Some(log) = &self.changes {
            out.append(&mut lock(log));
        }
    }

    /// The version of `id` in the store as this engine holds it (0 without a store): what
    /// changes with each of its commits.
    #[cfg(feature = "cli")] // What-if alone asks it.
    pub(crate) fn held_version(&self, id: InstanceId) -> Option<u64> {
        self.with_slot(id, |slot| slot.version).ok()
    }

    /// The ids of every instance in the engine and, with a store, of every running instance
    /// the store holds (also those another engine sharing it started), by id.
    pub fn instances(&self) -> Vec<InstanceId> {
        let mut ids: Vec<InstanceId> = self
            .shards
            .iter()
            .flat_map(|s| lock(s).keys().map(InstanceId).collect::<Vec<_>>())
            .collect();
        ids.extend(self.stored_elsewhere().into_iter().map(InstanceId));
        ids.sort();
        ids.dedup();
        ids
    }
}

/// Where a task stands in a work list: the most urgent first, by deadline (tasks without one
/// last), then age.
pub(crate) type Urgency = (bool, Option<DateTime<Utc>>, DateTime<Utc>, TaskId);

/// The order of every work list ([`Engine::work_list`]): the key of [`Urgency`].
pub(crate) fn urgency(t: &TaskView) -> Urgency {
    (t.due.is_none(), t.due, t.created_at, t.id)
}

fn open_tasks(slot: &Slot, keep: impl Fn(&Task) -> bool) -> Vec<TaskView> {
    slot.inst
        .tasks
        .iter()
        .filter(|t| t.is_open() && keep(t))
        .map(|t| task_view(slot, t))
        .collect()
}

/// How a work list shows open task `t` of `slot` (the same to every actor).
fn task_view(slot: &Slot, t: &Task) -> TaskView {
    let i = t.node.index();
    let mut view = TaskView {
        id: t.id(slot.inst.id),
        node: t.node,
        node_id: Arc::clone(&slot.dep.names[i]),
        name: slot.dep.titles[i].clone(),
        claimed_by: t.claimed_by.clone(),
        created_at: t.created_at,
        due: slot
            .inst
            .timers
            .iter()
            .find(|x| x.task == Some(t.seq) && x.kind == TimerKind::Due)
            .map(|x| x.at),
        item: slot.inst.task_item(t.seq).map(|(item, _)| item),
        parent: slot.inst.parent(),
        assignee: None,
        candidates: Vec::new(),
        priority: None,
        suspended: false,
        delegated_by: None,
    };
    lifecycle::view(slot, t, &mut view);
    view
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_send_sync<T: Send + Sync>() {}

    #[test]
    fn engine_is_send_sync() {
        is_send_sync::<Engine>();
    }
}
