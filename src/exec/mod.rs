//! The executor: an [`Engine`] owns deployed definitions and running instances, and steps
//! instances when hosts call it.
//!
//! **Invariant:** every call locks exactly one instance (never two), and never takes an engine-wide
//! lock while stepping it; independent instances run in parallel on several threads.

mod error;
mod step;
mod timers;

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use chrono::{DateTime, Utc};

pub use error::{ExecError, OpenError};
pub use timers::{Sla, SlaStatus, TimerDriver};

use crate::clock::{Clock, SystemClock};
use crate::def::{Behaviour, LoadError, Problem, ProblemKind, ProcessDef};
use crate::hooks::{Control, Event, Hook, ServiceHandler};
use crate::ids::{DefKey, InstanceId, NodeId, TaskId};
use crate::model::{Instance, Status, Task, TimerKind, Token, TokenState};
use crate::raci::{self, Action, Actor, Authorizer, Grant};
use crate::store::{Commit, Store, StoreError, StoredDef, StoredInstance};
use crate::time::calendar::BusinessCalendar;
use crate::vars::{VarProblem, Vars};
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
}

impl Default for Config {
    fn default() -> Config {
        Config {
            audit: true,
            retain_completed: true,
        }
    }
}

/// A deployed definition with its service handlers resolved per node.
pub(crate) struct Deployed {
    pub(crate) def: Arc<ProcessDef>,
    /// Shared by every instance of this definition.
    pub(crate) key: Arc<DefKey>,
    pub(crate) handlers: Vec<Option<Arc<dyn ServiceHandler>>>,
    /// The business calendar the definition names.
    pub(crate) calendar: Option<Arc<BusinessCalendar>>,
    /// Calendars that single durations name for themselves.
    pub(crate) calendars: HashMap<String, Arc<BusinessCalendar>>,
    /// How many audit records the last start of this definition wrote.
    pub(crate) first_records: std::sync::atomic::AtomicUsize,
}

struct Slot {
    inst: Instance,
    dep: Arc<Deployed>,
    /// The version of the instance in the store (0 without a store).
    version: u64,
}

const SHARDS: usize = 64;

/// Deployed definitions by id, then version.
type Catalog = HashMap<String, BTreeMap<u32, Arc<Deployed>>>;

/// Numbers engines, for [`NEXT_IDS`].
static ENGINES: AtomicU64 = AtomicU64::new(1);

/// Instance ids are handed to threads in blocks, so that threads starting instances do not
/// all write one shared counter.
const ID_BLOCK: u64 = 1024;

/// One of the maps from instance number to its slot.
type Shard = Mutex<HashMap<u64, Arc<Mutex<Slot>>, BuildHasherDefault<IdHasher>>>;

/// Hashes instance numbers with one folded multiplication. The default SipHash was about a
/// third of a `complete` call's own time; ids are the engine's own numbers, not input an
/// attacker picks. Folding the 128-bit product mixes the high bits into the low ones, which the
/// table indexes by (all numbers in one shard share their low six bits).
#[derive(Default)]
struct IdHasher(u64);

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
    calendars: HashMap<String, Arc<BusinessCalendar>>,
    /// When armed timers are due, by instance shard: (instant, instance).
    timer_heaps: Box<[Mutex<TimerHeap>]>,
    /// One `tick` at a time, so that timers fire in deadline order.
    ticking: Mutex<()>,
    /// Where every call's changes are committed; `None` keeps everything in memory.
    store: Option<Arc<dyn Store>>,
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
        self
    }

    /// Registers a business calendar under `name`; definitions name it with `calendar:`.
    pub fn calendar(&mut self, name: impl Into<String>, calendar: BusinessCalendar) -> &mut Self {
        self.calendars.insert(name.into(), Arc::new(calendar));
        self
    }

    /// Builds the engine.
    pub fn build(&mut self) -> Engine {
        let b = std::mem::take(self);
        Engine {
            config: b.config,
            clock: b.clock,
            hooks: b.hooks,
            handlers: b.handlers,
            authorizer: b.authorizer,
            defs: ArcSwap::from_pointee(Catalog::new()),
            deploying: Mutex::new(()),
            uid: ENGINES.fetch_add(1, Ordering::Relaxed),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            next_id: AtomicU64::new(1),
            calendars: b.calendars,
            timer_heaps: (0..SHARDS).map(|_| Mutex::new(BinaryHeap::new())).collect(),
            ticking: Mutex::new(()),
            store: None,
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
            engine
                .install(def, false)
                .map_err(|error| OpenError::Definition {
                    key: stored.key.clone(),
                    error,
                })?;
        }
        for stored in store.running()? {
            let id = stored.instance.id;
            engine
                .adopt(stored)
                .map_err(|key| OpenError::UnknownDefinition { instance: id, key })?;
        }
        Ok(engine)
    }
}

/// An open task as a work list shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskView {
    /// The task.
    pub id: TaskId,
    /// The node.
    pub node: NodeId,
    /// The node's YAML id.
    pub node_id: String,
    /// The node's name.
    pub name: Option<String>,
    /// Who claimed it.
    pub claimed_by: Option<String>,
    /// When it opened.
    pub created_at: DateTime<Utc>,
    /// Its completion deadline, if it has one.
    pub due: Option<DateTime<Utc>>,
}

thread_local! {
    /// This thread's block of instance ids: (engine uid, next id, end of the block).
    static NEXT_IDS: std::cell::Cell<(u64, u64, u64)> = const { std::cell::Cell::new((0, 0, 0)) };
    /// Instances this thread holds locked, to refuse re-entrant calls instead of deadlocking.
    static HELD: RefCell<Vec<InstanceId>> = const { RefCell::new(Vec::new()) };
}

struct Held(InstanceId);

impl Drop for Held {
    fn drop(&mut self) {
        HELD.with(|h| h.borrow_mut().retain(|i| *i != self.0));
    }
}

fn is_held(id: InstanceId) -> bool {
    HELD.with(|h| h.borrow().contains(&id))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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

    /// Deploys a definition. Instances started afterwards use the newest version unless one is
    /// named.
    ///
    /// # Errors
    /// A service task names a handler that is not registered, or this id and version is already
    /// deployed.
    pub fn deploy(&self, def: ProcessDef) -> Result<Arc<ProcessDef>, LoadError> {
        self.install(def, true)
    }

    /// Deploys `def`, and with `save` keeps its text in the store (when there is one).
    fn install(&self, def: ProcessDef, save: bool) -> Result<Arc<ProcessDef>, LoadError> {
        let mut problems = Vec::new();
        let handlers = def
            .nodes
            .iter()
            .map(|n| match &n.behaviour {
                Behaviour::ServiceTask { handler, location } => {
                    let found = self.handlers.get(handler).cloned();
                    if found.is_none() {
                        problems.push(Problem {
                            location: Some(*location),
                            path: format!("nodes.{}.handler", n.id),
                            kind: ProblemKind::UnknownHandler(handler.clone()),
                        });
                    }
                    found
                }
                _ => None,
            })
            .collect();
        let calendar = def.calendar.as_ref().and_then(|name| {
            let found = self.calendars.get(name).cloned();
            if found.is_none() {
                problems.push(Problem {
                    location: None,
                    path: "calendar".into(),
                    kind: ProblemKind::UnknownCalendar(name.clone()),
                });
            }
            found
        });
        // Calendars that single durations name for themselves.
        let mut calendars = HashMap::new();
        for (node, span) in def.spans() {
            let Some(name) = span.calendar() else {
                continue;
            };
            match self.calendars.get(name) {
                Some(c) => {
                    calendars.insert(name.to_owned(), Arc::clone(c));
                }
                None => problems.push(Problem {
                    location: node.map(|n| n.location),
                    path: node.map_or_else(|| "sla".to_owned(), |n| format!("nodes.{}", n.id)),
                    kind: ProblemKind::UnknownCalendar(name.to_owned()),
                }),
            }
        }
        let _deploying = lock(&self.deploying);
        let mut catalog: Catalog = (**self.defs.load()).clone();
        let versions = catalog.entry(def.key.id.clone()).or_default();
        if let Some(deployed) = versions.get(&def.key.version) {
            if deployed.def.text == def.text && problems.is_empty() {
                // Hosts deploy their definitions at every start: the same text is no change.
                return Ok(Arc::clone(&deployed.def));
            }
            problems.push(Problem {
                location: None,
                path: "version".into(),
                kind: ProblemKind::AlreadyDeployed {
                    id: def.key.id.clone(),
                    version: def.key.version,
                },
            });
        }
        if problems.is_empty()
            && save
            && let Some(store) = &self.store
        {
            let stored = StoredDef {
                key: def.key.clone(),
                text: def.text.clone(),
            };
            match store.save_definition(&stored) {
                Ok(()) => {}
                Err(StoreError::DefinitionChanged { key }) => problems.push(Problem {
                    location: None,
                    path: "version".into(),
                    kind: ProblemKind::AlreadyDeployed {
                        id: key.id,
                        version: key.version,
                    },
                }),
                Err(e) => problems.push(Problem {
                    location: None,
                    path: String::new(),
                    kind: ProblemKind::NotStored(e.to_string()),
                }),
            }
        }
        if !problems.is_empty() {
            return Err(LoadError::new(def.file.clone(), problems));
        }
        let def = Arc::new(def);
        versions.insert(
            def.key.version,
            Arc::new(Deployed {
                key: Arc::new(def.key.clone()),
                def: Arc::clone(&def),
                handlers,
                calendar,
                calendars,
                first_records: 0.into(),
            }),
        );
        self.defs.store(Arc::new(catalog));
        Ok(def)
    }

    /// A deployed definition: the newest version, or the one named.
    pub fn definition(&self, id: &str, version: Option<u32>) -> Option<Arc<ProcessDef>> {
        self.deployed(id, version).ok().map(|d| Arc::clone(&d.def))
    }

    fn deployed(&self, id: &str, version: Option<u32>) -> Result<Arc<Deployed>, ExecError> {
        find(&self.defs.load(), id, version).cloned()
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
    /// variable, has a value of the wrong type or outside the enum, or misses a required one
    /// (nothing is started); [`ExecError::Incident`] or [`ExecError::Hook`] when a node or hook
    /// failed (the instance exists, with an incident).
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
        mut vars: Vars,
    ) -> Result<InstanceId, ExecError> {
        let catalog = self.defs.load();
        let dep = find(&catalog, process, version)?;
        let def = &dep.def;
        let mut problems = check_vars(def, &vars);
        for spec in def.vars.values() {
            if !vars.contains_key(&spec.name) {
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
        let now = self.clock.now();
        let mut inst = Instance {
            id,
            def: None,
            status: Status::Running,
            vars,
            tokens: smallvec::smallvec![Token {
                node: def.start,
                state: TokenState::Ready,
            }],
            tasks: Vec::new(),
            incidents: Box::default(),
            timers: Box::default(),
            audit: Vec::with_capacity(if self.config.audit {
                dep.first_records.load(Ordering::Relaxed)
            } else {
                0
            }),
            started_at: now,
            ended_at: None,
        };
        let _held = self.hold(id);
        let (result, armed) = {
            let mut step = Step::new(&mut inst, dep, &self.hooks, now, self.config.audit);
            step.apply(Change::Started);
            step.arm_sla();
            let result = step.run();
            let result = step.finish(result);
            (result, step.take_armed())
        };
        let mut version = 0;
        if let Some(store) = &self.store {
            // A start the store refuses leaves no instance behind.
            inst.def = Some(Arc::clone(&dep.key));
            version = self
                .commit(&**store, &inst, &dep.key, 0, 0)
                .map_err(|e| match e {
                    StoreError::Conflict { instance, .. } => ExecError::Conflict(instance),
                    e => ExecError::Store(e),
                })?;
        }
        for at in armed {
            self.schedule(id, at);
        }
        // Remember how many records a start writes, so that the next start allocates its audit
        // trail once. Written only when it changes, so threads starting instances of the same
        // definition do not fight over the cache line.
        let records = inst.audit.len();
        if dep.first_records.load(Ordering::Relaxed) != records {
            dep.first_records.store(records, Ordering::Relaxed);
        }
        if inst.status == Status::Running || self.config.retain_completed {
            if inst.def.is_none() {
                inst.def = Some(Arc::clone(&dep.key));
            }
            let slot = Arc::new(Mutex::new(Slot {
                inst,
                dep: Arc::clone(dep),
                version,
            }));
            lock(self.shard(id)).insert(id.0, slot);
        }
        result.map(|()| id)
    }

    /// Notes that `id` has a timer due at `at`.
    fn schedule(&self, id: InstanceId, at: DateTime<Utc>) {
        lock(&self.timer_heaps[(id.0 as usize) % SHARDS]).push(Reverse((at, id.0)));
    }

    fn shard(&self, id: InstanceId) -> &Shard {
        &self.shards[(id.0 as usize) % SHARDS]
    }

    fn hold(&self, id: InstanceId) -> Held {
        HELD.with(|h| h.borrow_mut().push(id));
        Held(id)
    }

    /// Runs `f` on the locked instance.
    fn with_slot<R>(&self, id: InstanceId, f: impl FnOnce(&mut Slot) -> R) -> Result<R, ExecError> {
        if is_held(id) {
            return Err(ExecError::Reentrant(id));
        }
        let found = lock(self.shard(id)).get(&id.0).cloned();
        let slot = match found {
            Some(slot) => slot,
            None => self.read_stored(id)?,
        };
        let _held = self.hold(id);
        let mut guard = lock(&slot);
        let out = f(&mut guard);
        let drop_it = !self.config.retain_completed && guard.inst.status == Status::Completed;
        drop(guard);
        if drop_it {
            lock(self.shard(id)).remove(&id.0);
        }
        Ok(out)
    }

    /// Runs `f` with a step on the instance of `task`, after checking the task is open.
    fn with_task(
        &self,
        task: TaskId,
        f: impl FnOnce(&mut Step<'_>, &str) -> Result<(), ExecError>,
    ) -> Result<(), ExecError> {
        let now = self.clock.now();
        self.with_slot(task.instance, |slot| {
            let Slot { inst, dep, version } = slot;
            let dep: &Deployed = dep;
            let t = inst
                .tasks
                .get(task.seq as usize)
                .ok_or(ExecError::UnknownTask(task))?;
            let node = dep.def.nodes[t.node.index()].id.as_str();
            if !t.is_open() {
                return Err(ExecError::TaskClosed {
                    task,
                    node: node.to_owned(),
                });
            }
            self.step_slot(inst, dep, version, now, |step| f(step, node))?
                .schedule(self)
        })?
    }

    /// Checks RACI for `action` and records a refusal.
    fn authorize(
        &self,
        step: &mut Step<'_>,
        task: TaskId,
        node: &str,
        action: Action,
        actor: &Actor,
    ) -> Result<Grant, ExecError> {
        let t = &step.inst.tasks[task.seq as usize];
        let claimant = t.claimed_by.clone();
        let raci = step.dep.def.nodes[t.node.index()]
            .raci()
            .expect("tasks sit on user task nodes");
        let escalated = t
            .escalated_to
            .and_then(|i| step.dep.def.roles.get_index(i as usize))
            .map(|(r, _)| r);
        match raci::check(
            &*self.authorizer,
            raci,
            action,
            actor,
            claimant.as_deref(),
            escalated,
        ) {
            Ok(grant) => Ok(grant),
            Err(allowed) => {
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
                    node: node.to_owned(),
                    allowed,
                    claimed_by: claimant.filter(|c| **c != *actor.id).map(|c| c.to_string()),
                })
            }
        }
    }

    /// Claims an open task for `actor`, who must hold a responsible role.
    ///
    /// # Errors
    /// [`ExecError::Denied`] (recorded in the audit trail), [`ExecError::AlreadyClaimed`],
    /// [`ExecError::UnknownTask`], [`ExecError::TaskClosed`].
    pub fn claim(&self, task: TaskId, actor: &Actor) -> Result<(), ExecError> {
        self.with_task(task, |step, node| {
            if let Some(by) = &step.inst.tasks[task.seq as usize].claimed_by
                && **by != *actor.id
            {
                return Err(ExecError::AlreadyClaimed {
                    task,
                    node: node.to_owned(),
                    by: by.to_string(),
                });
            }
            self.authorize(step, task, node, Action::Claim, actor)?;
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
    /// may complete any open task, which the audit trail marks as an override. Hooks may veto.
    ///
    /// # Errors
    /// [`ExecError::Denied`], [`ExecError::Variables`], [`ExecError::Vetoed`] (nothing changed
    /// but the audit record); [`ExecError::Incident`] or [`ExecError::Hook`] when a later node or
    /// a hook failed (the completion stands).
    pub fn complete(&self, task: TaskId, actor: &Actor, output: Vars) -> Result<(), ExecError> {
        self.with_task(task, |step, node| {
            let grant = self.authorize(step, task, node, Action::Complete, actor)?;
            let problems = check_vars(&step.dep.def, &output);
            if !problems.is_empty() {
                return Err(ExecError::Variables { problems });
            }
            let verdict = step.guard(Event::TaskCompleting {
                task,
                node,
                actor: &actor.id,
                output: &output,
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
                    node: node.to_owned(),
                    reason,
                });
            }
            let overridden = grant == Grant::Override;
            step.apply(Change::Complete {
                task: task.seq,
                actor: &actor.id,
                overridden,
                output,
            });
            let from = step.inst.tasks[task.seq as usize].node;
            let to = step.dep.def.nodes[from.index()].next[0];
            let i = step
                .inst
                .tokens
                .iter()
                .position(|t| t.node == from && t.state == TokenState::Ready)
                .expect("a completed task's token is ready");
            step.apply(Change::Flow {
                token: Some(i),
                from,
                to,
                actor: Some(&actor.id),
            });
            step.run()
        })
    }

    /// Adds a comment to an open task. Responsible, accountable and consulted roles may comment.
    ///
    /// # Errors
    /// [`ExecError::Denied`], [`ExecError::UnknownTask`], [`ExecError::TaskClosed`].
    pub fn comment(&self, task: TaskId, actor: &Actor, text: &str) -> Result<(), ExecError> {
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

    /// Gives an open task to `to` as an override by the accountable role. `to` must hold a
    /// responsible role.
    ///
    /// # Errors
    /// [`ExecError::Denied`] when `by` is not accountable or `to` is not responsible.
    pub fn reassign(&self, task: TaskId, by: &Actor, to: &Actor) -> Result<(), ExecError> {
        self.with_task(task, |step, node| {
            self.authorize(step, task, node, Action::Reassign, by)?;
            // The new holder must be able to do the work: it needs a responsible role. The old
            // claim does not stand in the way; overriding it is the point.
            let raci = step.dep.def.nodes[step.inst.tasks[task.seq as usize].node.index()]
                .raci()
                .expect("tasks sit on user task nodes");
            if !raci
                .responsible()
                .iter()
                .any(|r| self.authorizer.holds(r, to))
            {
                let allowed = raci.responsible().to_vec();
                step.apply(Change::Denied {
                    task: task.seq,
                    actor: &to.id,
                    action: Action::Claim,
                    allowed: &allowed,
                });
                return Err(ExecError::Denied {
                    actor: to.id.clone(),
                    action: Action::Claim,
                    task,
                    node: node.to_owned(),
                    allowed,
                    claimed_by: None,
                });
            }
            step.apply(Change::Reassign {
                task: task.seq,
                by: &by.id,
                to: &to.id,
            });
            Ok(())
        })
    }

    /// Runs failed nodes again (a service task whose handler failed, a gateway with no route).
    ///
    /// # Errors
    /// [`ExecError::NothingToRetry`], or the next failure.
    pub fn retry(&self, instance: InstanceId) -> Result<(), ExecError> {
        let now = self.clock.now();
        self.with_slot(instance, |slot| {
            if slot.inst.status == Status::Completed {
                return Err(ExecError::InstanceCompleted(instance));
            }
            if !slot
                .inst
                .tokens
                .iter()
                .any(|t| t.state == TokenState::Failed)
            {
                return Err(ExecError::NothingToRetry(instance));
            }
            let Slot { inst, dep, version } = slot;
            self.step_slot(inst, dep, version, now, |step| {
                step.apply(Change::Retry);
                step.run()
            })?
            .schedule(self)
        })?
    }

    /// A copy of an instance's state.
    ///
    /// # Errors
    /// [`ExecError::UnknownInstance`].
    pub fn instance(&self, id: InstanceId) -> Result<Instance, ExecError> {
        self.with_slot(id, |slot| slot.inst.clone())
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
        if is_held(id) {
            return Err(ExecError::Reentrant(id));
        }
        let slot = lock(self.shard(id))
            .remove(&id.0)
            .ok_or(ExecError::UnknownInstance(id))?;
        let inst = lock(&slot).inst.clone();
        Ok(inst)
    }

    /// The open tasks of an instance.
    ///
    /// # Errors
    /// [`ExecError::UnknownInstance`].
    pub fn tasks(&self, instance: InstanceId) -> Result<Vec<TaskView>, ExecError> {
        self.with_slot(instance, |slot| open_tasks(slot, |_| true))
    }

    /// The open tasks that `actor`'s roles make it responsible for (unclaimed, or claimed by
    /// it), across all instances, oldest first.
    ///
    /// Complexity: a scan of every live instance. Instances locked by the calling thread (when
    /// called from a hook) are skipped. With a store shared by several engines, the list holds
    /// the instances this engine has read: one another engine started appears once this engine
    /// reads it (a call on it, or a `tick` that finds it due).
    pub fn work_list(&self, actor: &Actor) -> Vec<TaskView> {
        let mut out = Vec::new();
        for shard in &*self.shards {
            let slots: Vec<(u64, Arc<Mutex<Slot>>)> = lock(shard)
                .iter()
                .map(|(k, v)| (*k, Arc::clone(v)))
                .collect();
            for (id, slot) in slots {
                if is_held(InstanceId(id)) {
                    continue;
                }
                let slot = lock(&slot);
                out.extend(open_tasks(&slot, |t| {
                    let raci = slot.dep.def.nodes[t.node.index()].raci();
                    let escalated = t
                        .escalated_to
                        .and_then(|i| slot.dep.def.roles.get_index(i as usize))
                        .map(|(r, _)| r);
                    // A task an escalation gave to a role is that role's work alone.
                    let responsible = match escalated {
                        Some(role) => self.authorizer.holds(role, actor),
                        None => raci.is_some_and(|r| {
                            r.responsible()
                                .iter()
                                .any(|role| self.authorizer.holds(role, actor))
                        }),
                    };
                    responsible && t.claimed_by.as_ref().is_none_or(|c| **c == *actor.id)
                }));
            }
        }
        // The most urgent first: by deadline (tasks without one last), then age.
        out.sort_by_key(|t| (t.due.is_none(), t.due, t.created_at, t.id));
        out
    }

    /// The ids of every instance in the engine.
    pub fn instances(&self) -> Vec<InstanceId> {
        let mut ids: Vec<InstanceId> = self
            .shards
            .iter()
            .flat_map(|s| lock(s).keys().map(|k| InstanceId(*k)).collect::<Vec<_>>())
            .collect();
        ids.sort();
        ids
    }
}

/// What one call did to a locked instance: its result, and the timers it armed (for the
/// engine's schedule).
struct Stepped {
    instance: InstanceId,
    result: Result<(), ExecError>,
    armed: Vec<DateTime<Utc>>,
}

impl Stepped {
    /// Puts the armed timers on the engine's schedule and gives the call's result.
    fn schedule(self, engine: &Engine) -> Result<(), ExecError> {
        for at in self.armed {
            engine.schedule(self.instance, at);
        }
        self.result
    }
}

impl Engine {
    /// Runs one call's step on a locked instance. With a store, what the call changed is
    /// committed before this returns; when the store refuses, the instance is put back as it
    /// was (on a conflict: as the store holds it now) and the call fails with nothing changed.
    fn step_slot(
        &self,
        inst: &mut Instance,
        dep: &Deployed,
        version: &mut u64,
        now: DateTime<Utc>,
        f: impl FnOnce(&mut Step<'_>) -> Result<(), ExecError>,
    ) -> Result<Stepped, ExecError> {
        let before = self.store.as_ref().map(|_| inst.clone());
        let first = inst.audit.len();
        let mut step = Step::new(inst, dep, &self.hooks, now, self.config.audit);
        let result = f(&mut step);
        let result = step.finish(result);
        let (armed, changed) = (step.take_armed(), step.changed);
        if let (Some(store), Some(before), true) = (&self.store, before, changed) {
            match self.commit(&**store, inst, &dep.key, *version, first) {
                Ok(v) => *version = v,
                Err(e) => return Err(self.refused(inst, dep, version, before, e)),
            }
        }
        Ok(Stepped {
            instance: inst.id,
            result,
            armed,
        })
    }

    /// Undoes a call whose commit the store refused, and says why.
    fn refused(
        &self,
        inst: &mut Instance,
        dep: &Deployed,
        version: &mut u64,
        before: Instance,
        error: StoreError,
    ) -> ExecError {
        *inst = before;
        let id = inst.id;
        let StoreError::Conflict { .. } = error else {
            return ExecError::Store(error);
        };
        // Another engine changed the instance: take the stored state, so that the caller can
        // look at it and retry.
        if let Some(store) = &self.store
            && let Ok(Some(stored)) = store.read(id)
            && stored.instance.def.as_deref() == Some(&*dep.key)
        {
            *inst = stored.instance;
            inst.def = Some(Arc::clone(&dep.key));
            *version = stored.version;
            self.schedule_pending(inst);
        }
        ExecError::Conflict(id)
    }

    /// Reads an instance this engine does not hold from the store (one another engine started,
    /// or a completed one this engine let go) and keeps it.
    fn read_stored(&self, id: InstanceId) -> Result<Arc<Mutex<Slot>>, ExecError> {
        let Some(store) = &self.store else {
            return Err(ExecError::UnknownInstance(id));
        };
        let stored = store.read(id)?.ok_or(ExecError::UnknownInstance(id))?;
        if let Some(key) = stored.instance.def.as_deref()
            && find(&self.defs.load(), &key.id, Some(key.version)).is_err()
        {
            // Another engine deployed it after this one opened.
            self.load_definitions()?;
        }
        self.adopt(stored)
            .map_err(|key| ExecError::UnknownProcess {
                id: key.id,
                version: Some(key.version),
            })?;
        lock(self.shard(id))
            .get(&id.0)
            .cloned()
            .ok_or(ExecError::UnknownInstance(id))
    }

    /// Deploys the stored definitions this engine does not have.
    fn load_definitions(&self) -> Result<(), ExecError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        for stored in store.definitions()? {
            if find(&self.defs.load(), &stored.key.id, Some(stored.key.version)).is_ok() {
                continue;
            }
            // A stored definition that no longer deploys is reported by `open`; here it only
            // leaves its instances unreadable, which the caller hears as an unknown process.
            if let Ok(def) = ProcessDef::from_yaml(&stored.text) {
                let _ = self.install(def, false);
            }
        }
        Ok(())
    }

    /// Keeps a stored instance (replacing an older copy of it) and schedules its pending
    /// timers. Fails with the definition's key when that is not deployed.
    fn adopt(&self, stored: StoredInstance) -> Result<(), DefKey> {
        let StoredInstance {
            mut instance,
            version,
        } = stored;
        let key = instance.def.as_deref().cloned().unwrap_or(DefKey {
            id: String::new(),
            version: 0,
        });
        let dep = find(&self.defs.load(), &key.id, Some(key.version))
            .cloned()
            .map_err(|_| key)?;
        instance.def = Some(Arc::clone(&dep.key));
        let id = instance.id;
        self.schedule_pending(&instance);
        // The shard lock is never held while waiting for an instance's lock.
        let held = lock(self.shard(id)).get(&id.0).cloned();
        match held {
            Some(_) if is_held(id) => {}
            Some(slot) => {
                let mut slot = lock(&slot);
                if slot.version < version {
                    *slot = Slot {
                        inst: instance,
                        dep,
                        version,
                    };
                }
            }
            None => {
                lock(self.shard(id)).entry(id.0).or_insert_with(|| {
                    Arc::new(Mutex::new(Slot {
                        inst: instance,
                        dep,
                        version,
                    }))
                });
            }
        }
        Ok(())
    }

    /// Commits what a call changed on `inst`, which it read at `version`; `first` is the
    /// position of the call's first audit record. Tells the hooks whether it was stored, and
    /// gives the new version.
    fn commit(
        &self,
        store: &dyn Store,
        inst: &Instance,
        key: &DefKey,
        version: u64,
        first: usize,
    ) -> Result<u64, StoreError> {
        let commit = Commit {
            instance: inst,
            def: key,
            records: &inst.audit[first..],
            first_record: first,
            version,
            next_due: inst.timers.iter().filter(|t| !t.fired).map(|t| t.at).min(),
        };
        match store.commit(&commit) {
            Ok(()) => {
                self.announce(Event::Committed {
                    instance: inst.id,
                    version: commit.new_version(),
                });
                Ok(commit.new_version())
            }
            Err(e) => {
                self.announce(Event::Refused {
                    instance: inst.id,
                    reason: &e.to_string(),
                });
                Err(e)
            }
        }
    }

    /// Tells every hook of a call's commit. The call is over: what hooks answer, and a hook
    /// that fails, change nothing.
    fn announce(&self, event: Event<'_>) {
        for hook in &self.hooks {
            let _ =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook.on_event(&event)));
        }
    }

    /// Puts every timer of `inst` that has yet to fire on the schedule.
    fn schedule_pending(&self, inst: &Instance) {
        for timer in inst.timers.iter().filter(|t| !t.fired) {
            self.schedule(inst.id, timer.at);
        }
    }
}

/// The newest version of `id`, or the one named.
fn find<'c>(
    catalog: &'c Catalog,
    id: &str,
    version: Option<u32>,
) -> Result<&'c Arc<Deployed>, ExecError> {
    let versions = catalog.get(id);
    let found = match version {
        Some(v) => versions.and_then(|vs| vs.get(&v)),
        None => versions.and_then(|vs| vs.values().next_back()),
    };
    found.ok_or_else(|| ExecError::UnknownProcess {
        id: id.to_owned(),
        version,
    })
}

fn open_tasks(slot: &Slot, keep: impl Fn(&Task) -> bool) -> Vec<TaskView> {
    slot.inst
        .tasks
        .iter()
        .filter(|t| t.is_open() && keep(t))
        .map(|t| {
            let node = &slot.dep.def.nodes[t.node.index()];
            TaskView {
                id: t.id(slot.inst.id),
                node: t.node,
                node_id: node.id.clone(),
                name: node.name.clone(),
                claimed_by: t.claimed_by.as_deref().map(str::to_owned),
                created_at: t.created_at,
                due: slot
                    .inst
                    .timers
                    .iter()
                    .find(|x| x.task == Some(t.seq) && x.kind == TimerKind::Due)
                    .map(|x| x.at),
            }
        })
        .collect()
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
