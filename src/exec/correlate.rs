//! Messages between processes at run time: [`Engine::correlate`] (the host's entry point), send
//! nodes (a [`FollowUp::Send`] in the sender's outbox, correlated after its commit), message
//! start events, and messages kept engine-wide (`keep_for`) until a receiver comes or they
//! expire as unmatched.
//!
//! The engine keeps an index from (message, correlation value) to the instances waiting for it
//! (catch nodes and message boundary events of correlated messages). It is kept by the seam:
//! after every commit of an instance whose definition waits for a correlated message, the
//! waits before and after the step are compared (definitions without one never pay). The index
//! holds a 64-bit hash of the message name and the values, never the values: a hit is checked
//! against the instance under its lock, so a collision or a stale entry costs a look, never a
//! wrong delivery.
//!
//! **Invariant:** a receiver is changed in its own commit, and a message from a sender's outbox
//! (sender, follow-up number) is recorded in the receiver's receipts in that commit, so a
//! follow-up run again after a crash does not deliver it twice to that receiver.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde_json::Value;
use smallvec::SmallVec;

use super::deploy::Deployed;
use super::events::{Listener, listeners};
use super::idmap::IdMap;
use super::seam::Slot;
use super::step::{Change, Step};
use super::{Engine, ExecError, IdHasher, lock};
use crate::def::ProcessDef;
use crate::ids::{InstanceId, NodeId};
use crate::model::{
    Delivered, Entry, Event, FollowUp, Instance, ParkedMessage, Receipt, Received, Status,
};
use crate::vars::{VarProblem, Vars};

/// What [`Engine::correlate`] (or a send node's message) did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Correlation {
    /// The waiting instances that received it (each in its own commit).
    pub received: Vec<InstanceId>,
    /// The instances it started (definitions whose start node listens for it).
    pub started: Vec<InstanceId>,
    /// Whether nothing matched and it was kept engine-wide (`keep_for`) for a receiver to come.
    pub kept: bool,
}

impl Correlation {
    /// Whether nothing received it, nothing started and it was not kept: it was recorded as
    /// unmatched ([`Event::MessageUnmatched`], [`Engine::unmatched`]).
    pub fn unmatched(&self) -> bool {
        self.received.is_empty() && self.started.is_empty() && !self.kept
    }
}

/// A change to an instance by a message between processes (see [`Change::Between`]).
#[derive(Clone)]
pub(crate) enum BetweenChange {
    /// The instance received a message: its payload is set, its receipt kept, and it is
    /// recorded. The catch (or start) follows as its own change.
    Received {
        message: String,
        from: Option<InstanceId>,
        /// The payload's variables (a list: no map is built for a moment's use).
        vars: Vec<(String, Value)>,
        receipt: Option<Receipt>,
    },
    /// A send node: the message's payload leaves in the outbox.
    Send { node: NodeId, message: String },
    /// A sent message was correlated: who received it.
    Delivered(Delivered),
}

/// Number of index shards (a power of two).
const SHARDS: usize = 64;

type Ids<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// One shard of a hash index (this module's, and the business keys'): most hashes have one
/// instance, kept in a 16-byte entry of an [`IdMap`] (key beside value: one cache line a
/// lookup); the others beyond the first are in `more` (a waiting instance costs about 36 bytes
/// of index at a million, against 69 with a small vector per entry). Instance numbers start at
/// 1; a 0 would go to `more`.
#[derive(Default)]
pub(super) struct Multi {
    one: IdMap<NonZeroU64>,
    more: Ids<Vec<u64>>,
}

impl Multi {
    pub(super) fn insert(&mut self, hash: u64, id: u64) {
        let Multi { one, more } = self;
        let first = one.get(hash).map(|f| f.get());
        match (first, NonZeroU64::new(id)) {
            (None, Some(nz)) => {
                one.insert(hash, nz);
            }
            (Some(first), _) if first == id => {}
            _ => {
                let rest = more.entry(hash).or_default();
                if !rest.contains(&id) {
                    rest.push(id);
                }
            }
        }
    }

    pub(super) fn remove(&mut self, hash: u64, id: u64) {
        let Multi { one, more } = self;
        match one.get_mut(hash) {
            Some(first) if first.get() == id => {
                // The next one, if any, takes the first place.
                match more
                    .get_mut(&hash)
                    .and_then(|rest| rest.iter().rposition(|i| *i != 0).map(|at| rest.remove(at)))
                    .and_then(NonZeroU64::new)
                {
                    Some(next) => *first = next,
                    None => {
                        one.remove(hash);
                    }
                }
            }
            _ => {
                if let Some(rest) = more.get_mut(&hash) {
                    rest.retain(|i| *i != id);
                }
            }
        }
        if !more.is_empty() && more.get(&hash).is_some_and(Vec::is_empty) {
            more.remove(&hash);
        }
    }

    /// Reads the table entry where each of `hashes` would be, so that a batch of operations
    /// on them meets their cache misses at once rather than one after another.
    pub(super) fn touch(&self, hashes: impl Iterator<Item = u64>) {
        let mut seen = 0;
        for hash in hashes {
            seen ^= self.one.touch(hash);
        }
        std::hint::black_box(seen);
    }

    /// Adds the instances under `hash` to `out` (once each).
    pub(super) fn get(&self, hash: u64, out: &mut SmallVec<[u64; 2]>) {
        let rest = if self.more.is_empty() {
            &[][..]
        } else {
            self.more.get(&hash).map_or(&[][..], |v| &v[..])
        };
        let first = self.one.get(hash).map(|f| f.get());
        for id in first.iter().chain(rest) {
            if !out.contains(id) {
                out.push(*id);
            }
        }
    }
}

/// Who received each (sender, follow-up number), among the running instances.
type Receipts = HashMap<(u64, u64), Vec<InstanceId>>;

/// The engine's state for messages between processes.
pub(crate) struct Between {
    /// (message, correlation value) hash → instances waiting.
    index: Box<[Mutex<Multi>]>,
    /// Messages kept engine-wide (`keep_for`), oldest first.
    parked: Mutex<Vec<ParkedMessage>>,
    /// How many are parked: read without the lock on every wait that may match one.
    parked_len: AtomicUsize,
    /// Messages expired unmatched (without a store; a store keeps its own).
    unmatched: Mutex<Vec<ParkedMessage>>,
    /// While an engine opens a store: the receipts of every running instance, so that a send
    /// follow-up a crash left behind skips receivers (and starts) it already reached.
    pub(crate) resumed: Mutex<Option<Receipts>>,
    /// The next number for a parked message, for an engine without a store (with one, the
    /// store's id sequence numbers them).
    next_parked: std::sync::atomic::AtomicU64,
}

impl Default for Between {
    fn default() -> Between {
        Between {
            index: (0..SHARDS).map(|_| Mutex::new(Multi::default())).collect(),
            parked: Mutex::new(Vec::new()),
            parked_len: AtomicUsize::new(0),
            unmatched: Mutex::new(Vec::new()),
            resumed: Mutex::new(None),
            next_parked: std::sync::atomic::AtomicU64::new(1),
        }
    }
}

impl Between {
    fn shard(&self, hash: u64) -> &Mutex<Multi> {
        &self.index[(hash >> 58) as usize % SHARDS]
    }

    fn insert(&self, hash: u64, id: u64) {
        lock(self.shard(hash)).insert(hash, id);
    }

    fn remove(&self, hash: u64, id: u64) {
        lock(self.shard(hash)).remove(hash, id);
    }

    fn get(&self, hash: u64, out: &mut SmallVec<[u64; 2]>) {
        lock(self.shard(hash)).get(hash, out);
    }

    /// Updates the index after a commit of `id`: the waits it had before and has now.
    /// Gives the waits that are new.
    pub(crate) fn reindex(
        &self,
        id: InstanceId,
        before: &[u64],
        after: &[u64],
    ) -> SmallVec<[u64; 2]> {
        for h in before {
            if !after.contains(h) {
                self.remove(*h, id.0);
            }
        }
        let mut fresh = SmallVec::new();
        for h in after {
            if !before.contains(h) {
                self.insert(*h, id.0);
                fresh.push(*h);
            }
        }
        fresh
    }

    /// Whether any message is kept engine-wide.
    pub(crate) fn has_parked(&self) -> bool {
        self.parked_len.load(Ordering::Relaxed) > 0
    }

    fn set_parked(&self, parked: &[ParkedMessage]) {
        self.parked_len.store(parked.len(), Ordering::Relaxed);
    }
}

/// Feeds one correlation value into a hash: strings and integers (what keys hold) as such,
/// anything else as its JSON text.
fn hash_value(h: &mut impl Hasher, v: &Value) {
    match v {
        Value::String(s) => {
            0u8.hash(h);
            s.hash(h);
        }
        Value::Number(n) if n.as_i64().is_some() => {
            1u8.hash(h);
            n.as_i64().hash(h);
        }
        other => {
            2u8.hash(h);
            other.to_string().hash(h);
        }
    }
}

/// The hash of a message name and its correlation values; `None` when a value is missing.
fn correlation_hash<'v>(
    message: &str,
    values: impl Iterator<Item = Option<&'v Value>>,
) -> Option<u64> {
    let mut h = super::index_hasher();
    message.hash(&mut h);
    for v in values {
        match v {
            Some(Value::Null) | None => return None,
            Some(v) => hash_value(&mut h, v),
        }
    }
    Some(h.finish())
}

/// By node of `def`: whether a token or an open task there may wait for a correlated message
/// (a catch of one, or a boundary event on one). Empty for a definition without any.
pub(crate) fn listening(def: &ProcessDef) -> Box<[bool]> {
    if def.correlated.is_empty() {
        return Box::default();
    }
    let correlated = |m: &str| def.correlated.iter().any(|c| c == m);
    def.nodes
        .iter()
        .map(|node| {
            let catch = matches!(
                &node.behaviour,
                crate::def::Behaviour::Catch(crate::def::events::Trigger::Message(m)) if correlated(m)
            );
            catch
                || node.boundary.iter().any(|b| {
                    matches!(
                        &b.on,
                        crate::def::events::BoundaryOn::Event(
                            crate::def::events::Trigger::Message(m)
                        ) if correlated(m)
                    )
                })
        })
        .collect()
}

/// The (message, correlation value) hashes `inst` waits for now: one per correlated message a
/// catch or boundary event of it waits for. Empty for a definition without any.
pub(crate) fn waits(dep: &Deployed, inst: &Instance) -> SmallVec<[u64; 2]> {
    let mut out = SmallVec::new();
    let def = &*dep.def;
    if def.correlated.is_empty() || inst.status != Status::Running {
        return out;
    }
    // Most steps of such a definition are elsewhere: no token waits and no task is open at a
    // node that listens, and nothing is compared or hashed.
    let at = |node: NodeId| dep.listens.get(node.index()).copied().unwrap_or(true);
    if !inst
        .tokens
        .iter()
        .any(|t| t.state == crate::model::TokenState::Waiting && at(t.node))
        && !inst.tasks.iter().any(|t| t.is_open() && at(t.node))
    {
        return out;
    }
    for name in &def.correlated {
        if listeners(def, inst, false, name, false).is_empty() {
            continue;
        }
        let Some(m) = def.messages.get(name) else {
            continue;
        };
        let rule = &m.between.correlate;
        if let Some(h) = correlation_hash(name, rule.iter().map(|(k, _)| inst.vars.get(k))) {
            out.push(h);
        }
    }
    out
}

/// A definition that receives a message, and what the message's payload means to it.
struct Receiver {
    dep: Arc<Deployed>,
    /// The message's place in the definition's `messages` (looked up once).
    message: usize,
}

impl Receiver {
    fn decl(&self) -> &crate::def::events::Message {
        &self.dep.def.messages[self.message]
    }
}

/// What [`Engine::correlate`] found out before changing anything.
struct Plan {
    receivers: SmallVec<[Receiver; 2]>,
    /// The distinct (message, value) hashes of the receivers' correlation rules.
    hashes: SmallVec<[u64; 2]>,
    /// Whether a match of several instances is allowed (every receiver says `many: true`).
    many: bool,
    /// The longest `keep_for` of the receivers.
    keep_for: Option<chrono::Duration>,
}

/// Where a message comes from: a sender's outbox, or the host.
#[derive(Clone, Copy)]
struct Origin {
    from: Option<InstanceId>,
    receipt: Option<Receipt>,
    /// The kept message delivered, when it is one ([`ParkedMessage::id`]).
    kept: Option<u64>,
}

/// Whether `slot`'s instance waits for `message` with a matching key: gives the listener and
/// the definition's declaration of the message.
fn matches<'s>(
    slot: &'s Slot,
    message: &str,
    vars: &Vars,
) -> Option<(Listener, &'s crate::def::events::Message)> {
    if slot.inst.status != Status::Running {
        return None;
    }
    let def = &slot.dep.def;
    let m = def.messages.get(message)?;
    if m.between.correlate.is_empty() {
        return None;
    }
    let equal = m.between.correlate.iter().all(|(key, field)| {
        match (slot.inst.vars.get(key), vars.get(field)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    });
    if !equal {
        return None;
    }
    listeners(def, &slot.inst, false, message, false)
        .into_iter()
        .next()
        .map(|l| (l, m))
}

/// The instances the store indexes under each receiver's correlation key (its rule's first
/// key) with the message's value, once each: the running ones (`running`), or all. Empty where
/// the store cannot be read now (the in-memory index still answers for the instances the
/// engine holds).
fn keyed_in_store(
    store: &dyn crate::store::Store,
    plan: &Plan,
    vars: &Vars,
    running: bool,
) -> Vec<InstanceId> {
    let mut out = Vec::new();
    for (key, value) in keys_asked(plan, vars) {
        let ids = if running {
            store.running_by_key(key, &value)
        } else {
            store.by_key(key, &value)
        };
        let Ok(ids) = ids else {
            continue;
        };
        for id in ids {
            if !out.contains(&id) {
                out.push(id);
            }
        }
    }
    out
}

/// The (key, value) pairs a store is asked for a message's receivers: each receiver's first
/// correlation key with the message's value for it, once each.
fn keys_asked<'p>(plan: &'p Plan, vars: &Vars) -> SmallVec<[(&'p str, String); 2]> {
    let mut asked: SmallVec<[(&str, String); 2]> = SmallVec::new();
    for r in &plan.receivers {
        let Some((key, field)) = r.decl().between.correlate.first() else {
            continue;
        };
        let Some(value) = vars.get(field).and_then(crate::store::BusinessKey::render) else {
            continue;
        };
        if !asked.iter().any(|(k, v)| k == key && *v == value) {
            asked.push((key.as_str(), value));
        }
    }
    asked
}

/// Whether `inst` received the message of `receipt` already.
fn has_receipt(inst: &Instance, receipt: Option<Receipt>) -> bool {
    receipt.is_some_and(|r| {
        inst.rare
            .as_deref()
            .is_some_and(|rare| rare.receipts.contains(&r))
    })
}

/// The part of `vars` a message's payload (`m`) lists, as a list, less the variables the
/// instance holds (`held`) with the same value already (the keys the message was correlated
/// by, most often): setting them would change nothing.
fn payload_list(m: &crate::def::events::Message, vars: &Vars, held: &Vars) -> Vec<(String, Value)> {
    vars.iter()
        .filter(|(k, v)| m.payload.iter().any(|p| p == *k) && held.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The part of `vars` a definition's message payload lists.
fn payload_of(def: &ProcessDef, message: &str, vars: &Vars) -> Vars {
    let Some(m) = def.messages.get(message) else {
        return Vars::new();
    };
    vars.iter()
        .filter(|(k, _)| m.payload.iter().any(|p| p == *k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl Step<'_> {
    /// Applies a [`BetweenChange`] (from [`Step::apply`]).
    #[inline(never)]
    pub(super) fn apply_between(&mut self, change: BetweenChange) {
        let id = self.inst.id;
        match change {
            BetweenChange::Received {
                message,
                from,
                vars,
                receipt,
            } => {
                self.note_keys_in(|name| vars.iter().any(|(k, _)| k == name));
                for (k, v) in vars {
                    match self.inst.vars.get_mut(&k) {
                        Some(old) => *old = v,
                        None => {
                            self.inst.vars.insert(k, v);
                        }
                    }
                }
                if let Some(r) = receipt {
                    let receipts = &mut self.inst.rare_mut().receipts;
                    if receipts.len() >= Receipt::LIMIT {
                        receipts.remove(0);
                    }
                    receipts.push(r);
                }
                if self.heard() {
                    self.emit(Event::MessageReceived {
                        instance: id,
                        message: message.clone(),
                        from,
                    });
                }
                self.record(Entry::MessageReceived(Box::new(Received { message, from })));
            }
            BetweenChange::Send { node, message } => {
                let dep = self.dep;
                let vars: Vars = dep
                    .def
                    .sends
                    .get(&message)
                    .map(|s| {
                        s.payload
                            .iter()
                            .filter_map(|p| self.inst.vars.get(p).map(|v| (p.clone(), v.clone())))
                            .collect()
                    })
                    .unwrap_or_default();
                self.follow(FollowUp::Send {
                    message: message.clone(),
                    vars,
                });
                self.record(Entry::MessageSent {
                    node,
                    message: message.into_boxed_str(),
                });
            }
            BetweenChange::Delivered(d) => {
                if self.heard() {
                    self.emit(Event::MessageSent {
                        instance: id,
                        message: d.message.clone(),
                        received: d.received.clone(),
                        started: d.started.clone(),
                        kept: d.kept,
                    });
                }
                self.record(Entry::MessageDelivered(Box::new(d)));
            }
        }
    }

    /// A token at send node `at`: the message leaves in the outbox, the token moves on.
    pub(super) fn send(&mut self, i: usize, at: NodeId, message: &str) {
        let dep = self.dep;
        self.apply(Change::Between(Box::new(BetweenChange::Send {
            node: at,
            message: message.to_owned(),
        })));
        self.apply(Change::Flow {
            token: Some(i),
            from: at,
            to: dep.def.nodes[at.index()].next[0],
            actor: None,
        });
    }
}

impl Engine {
    /// Correlates a message from the host (a network management system raising an alarm, a
    /// billing system answering) with the instances waiting for it.
    ///
    /// Every deployed definition that declares `message` under `messages:` is a receiver. For
    /// each receiver whose declaration has a `correlate` rule (receiver key → payload field),
    /// the instances of it that wait for the message now (a catch node or a message boundary
    /// event) and whose keys equal the payload's fields match; they are found through an index,
    /// not a scan. Then:
    /// - one match (or several, when every receiver says `many: true`): each receives it in its
    ///   own commit (its payload variables set, [`Entry::MessageReceived`] then
    ///   [`Entry::MessageCaught`]) and runs on;
    /// - no match: a new instance of the newest version of each definition whose start node
    ///   listens for the message (`kind: start, message: NAME`) starts, with the payload as
    ///   its variables;
    /// - nothing to start either: when a receiver says `keep_for`, the message is kept
    ///   engine-wide that long and given to the first instance that starts waiting for it with
    ///   matching keys; when it expires (or without `keep_for`) it is recorded as unmatched
    ///   ([`Event::MessageUnmatched`], [`Engine::unmatched`]).
    ///
    /// With a store shared by several engines, the index holds the instances this engine
    /// holds.
    ///
    /// Complexity: a hash lookup per correlation rule, then a lock of each candidate.
    ///
    /// # Errors
    /// Nothing changed: [`ExecError::UndeclaredMessage`] when no deployed definition declares
    /// the message; [`ExecError::MissingCorrelation`] when `vars` lacks a correlation field;
    /// [`ExecError::Variables`] when a variable is in no receiver's payload
    /// ([`VarProblem::NotInPayload`]) or does not fit a receiver's declaration
    /// ([`VarProblem::WrongType`] names the type); [`ExecError::AmbiguousMessage`] when
    /// several instances match and a receiver does not say `many: true`;
    /// [`ExecError::Reentrant`]. A receiver whose own step fails (an incident at a later node)
    /// still counts as having received it.
    ///
    /// # Examples
    /// ```
    /// use procflow::{Engine, ProcessDef, Status, Vars};
    /// use serde_json::json;
    ///
    /// let engine = Engine::new();
    /// engine.deploy(ProcessDef::from_yaml(r#"
    /// id: repair
    /// version: 1
    /// name: Repair
    /// variables: { ticket_id: { type: string }, fault_status: { type: string } }
    /// keys: [ticket_id]
    /// messages:
    ///   fault_status: { flow: 45, payload: [fault_status, ticket_id], correlate: { ticket_id: ticket_id } }
    /// nodes:
    ///   start: { kind: start, next: wait }
    ///   wait: { kind: catch, message: fault_status, next: end }
    ///   end: { kind: end }
    /// "#)?)?;
    /// let mut vars = Vars::new();
    /// vars.insert("ticket_id".into(), json!("T-1"));
    /// let id = engine.start("repair", vars)?;
    /// let mut msg = Vars::new();
    /// msg.insert("ticket_id".into(), json!("T-1"));
    /// msg.insert("fault_status".into(), json!("cleared"));
    /// let c = engine.correlate("fault_status", msg)?;
    /// assert_eq!(c.received, vec![id]);
    /// assert_eq!(engine.instance(id)?.status(), Status::Completed);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn correlate(&self, message: &str, vars: Vars) -> Result<Correlation, ExecError> {
        crate::telemetry::call!("correlate", message);
        // Refused values may be nested deeper than any variable: dropped without recursion.
        let vars = crate::vars::Handed::new(vars);
        self.not_busy()?;
        let now = self.clock.now();
        self.expire_messages(now);
        let plan = self.plan(message, &vars)?;
        self.route(
            &plan,
            message,
            vars.take(),
            Origin {
                from: None,
                receipt: None,
                kept: None,
            },
        )
    }

    /// The messages kept engine-wide (`keep_for`) that expired before any instance matched
    /// them, oldest first: from the store when the engine has one (they survive a restart).
    ///
    /// # Errors
    /// [`ExecError::Store`].
    pub fn unmatched(&self) -> Result<Vec<ParkedMessage>, ExecError> {
        match &self.store {
            Some(store) => Ok(store.unmatched()?),
            None => Ok(lock(&self.between.unmatched).clone()),
        }
    }

    /// Whether any message is kept engine-wide now (`keep_for`): a `tick` may expire it.
    #[cfg(feature = "cli")] // What-if alone asks it.
    pub(crate) fn keeps_messages(&self) -> bool {
        self.between.has_parked()
    }

    /// The messages kept engine-wide now (`keep_for`), oldest first.
    pub fn kept_messages(&self) -> Vec<ParkedMessage> {
        lock(&self.between.parked).clone()
    }

    /// Checks a message against the deployed definitions that receive it.
    fn plan(&self, message: &str, vars: &Vars) -> Result<Plan, ExecError> {
        let catalog = self.defs.load();
        let receivers: SmallVec<[Receiver; 2]> = catalog
            .receivers(message)
            .iter()
            .map(|(dep, at)| Receiver {
                dep: Arc::clone(dep),
                message: *at,
            })
            .collect();
        if receivers.is_empty() {
            return Err(ExecError::UndeclaredMessage {
                message: message.to_owned(),
            });
        }
        let mut problems = Vec::new();
        for (name, value) in vars {
            let mut listed = false;
            for r in &receivers {
                let def = &r.dep.def;
                let m = r.decl();
                if !m.payload.iter().any(|p| p == name) {
                    continue;
                }
                listed = true;
                if let Some(p) = def.vars.get(name).and_then(|spec| spec.reject(value))
                    && !problems
                        .iter()
                        .any(|(n, _): &(String, VarProblem)| n == name)
                {
                    problems.push((name.clone(), p));
                }
            }
            if !listed {
                problems.push((name.clone(), VarProblem::NotInPayload));
            }
        }
        if !problems.is_empty() {
            return Err(ExecError::Variables { problems });
        }
        let mut hashes = SmallVec::new();
        let mut many = true;
        let mut keep_for: Option<chrono::Duration> = None;
        for r in &receivers {
            let m = r.decl();
            let rule = &m.between.correlate;
            if rule.is_empty() {
                continue;
            }
            many &= m.between.many;
            if let Some(k) = m.between.keep_for {
                keep_for = Some(keep_for.map_or(k, |o| o.max(k)));
            }
            for (_, field) in rule {
                if vars.get(field).is_none_or(Value::is_null) {
                    return Err(ExecError::MissingCorrelation {
                        message: message.to_owned(),
                        field: field.clone(),
                    });
                }
            }
            if let Some(h) = correlation_hash(message, rule.iter().map(|(_, f)| vars.get(f)))
                && !hashes.contains(&h)
            {
                hashes.push(h);
            }
        }
        Ok(Plan {
            receivers,
            hashes,
            many,
            keep_for,
        })
    }

    /// The instances that match a message now (checked under each one's lock).
    fn matching(&self, plan: &Plan, message: &str, vars: &Vars) -> SmallVec<[InstanceId; 2]> {
        self.candidates(plan, message, vars, false)
    }

    /// The instances the index names for a message; checked under each one's lock, unless
    /// `lazy` and there is only one (then delivering checks it, under the same lock: one lock
    /// instead of two for the common case).
    fn candidates(
        &self,
        plan: &Plan,
        message: &str,
        vars: &Vars,
        lazy: bool,
    ) -> SmallVec<[InstanceId; 2]> {
        let mut candidates: SmallVec<[u64; 2]> = SmallVec::new();
        for h in &plan.hashes {
            self.between.get(*h, &mut candidates);
        }
        self.receivers_in_store(plan, vars, &mut candidates);
        if lazy && candidates.len() == 1 {
            return smallvec::smallvec![InstanceId(candidates[0])];
        }
        let mut out: SmallVec<[InstanceId; 2]> = candidates
            .into_iter()
            .map(InstanceId)
            .filter(|id| {
                self.with_slot(*id, |slot| matches(slot, message, vars).is_some())
                    .unwrap_or(false)
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// When the engine may not hold every waiting receiver (other engines share the store, or
    /// a bounded cache let instances go), or holds none (`out` empty: another engine may have
    /// opened a store that does not say so, as two processes on one SQLite file): the running
    /// instances the store indexes under each receiver's correlation key. On a shared store
    /// each is read and held at its stored version (another engine may have started it, or
    /// moved it to the catch since this engine read it); otherwise one the engine holds is
    /// taken as current (not read again: a key may name many instances), and the others are
    /// read. A receiver held on a store alone asks nothing more; an unmatched message, one key
    /// query.
    fn receivers_in_store(&self, plan: &Plan, vars: &Vars, out: &mut SmallVec<[u64; 2]>) {
        let Some(store) = self
            .partial_store()
            .or_else(|| self.store.as_ref().filter(|_| out.is_empty()))
        else {
            return;
        };
        let shared = store.is_shared();
        if shared && self.read_receivers(store.as_ref(), plan, vars, out) {
            return;
        }
        for id in keyed_in_store(store.as_ref(), plan, vars, true) {
            if out.contains(&id.0) {
                continue;
            }
            if !shared && self.holds(id) {
                out.push(id.0);
            } else if let Ok(Some(_)) = self.fetch(id, |s| s.instance.status() == Status::Running) {
                out.push(id.0);
            }
        }
    }

    /// [`Engine::receivers_in_store`] on a store shared with other engines, which reads every
    /// candidate: each key asked is read whole in one round trip
    /// ([`Store::read_running_by_key`](crate::store::Store::read_running_by_key)). Gives
    /// `false`, having added nothing, when the store cannot.
    fn read_receivers(
        &self,
        store: &dyn crate::store::Store,
        plan: &Plan,
        vars: &Vars,
        out: &mut SmallVec<[u64; 2]>,
    ) -> bool {
        let mut read = Vec::new();
        let counts = self.let_go_counts();
        for (key, value) in keys_asked(plan, vars) {
            match store.read_running_by_key(key, &value) {
                Ok(Some(found)) => read.extend(found),
                Ok(None) => return false,
                // Unreadable now: no receiver from the store.
                Err(_) => {}
            }
        }
        for stored in read {
            let id = stored.instance.id;
            if out.contains(&id.0) {
                continue;
            }
            let let_go = counts[(id.0 as usize) % SHARDS];
            if self.keep_read(stored, let_go).is_ok() {
                out.push(id.0);
            }
        }
        true
    }

    /// While an engine opens a store it may not hold every receiver of: the instances, running
    /// or finished, that hold `receipt` among those the store indexes under each receiver's
    /// correlation key (a send follow-up a crash left behind must not reach another receiver,
    /// or start an instance, when its receiver already has it and went on).
    fn receipts_in_store(&self, plan: &Plan, vars: &Vars, receipt: Receipt) -> Vec<InstanceId> {
        let Some(store) = self.partial_store() else {
            return Vec::new();
        };
        keyed_in_store(store.as_ref(), plan, vars, false)
            .into_iter()
            .filter(|id| match store.read(*id) {
                Ok(Some(stored)) => has_receipt(&stored.instance, Some(receipt)),
                _ => false,
            })
            .collect()
    }

    /// Delivers, starts, keeps or records a checked message.
    fn route(
        &self,
        plan: &Plan,
        message: &str,
        vars: Vars,
        origin: Origin,
    ) -> Result<Correlation, ExecError> {
        let matched = self.candidates(plan, message, &vars, true);
        if matched.len() > 1 && !plan.many {
            return Err(ExecError::AmbiguousMessage {
                message: message.to_owned(),
                candidates: matched.into_vec(),
            });
        }
        let mut out = Correlation::default();
        // A send follow-up run again after a crash: who received it already?
        let mut had: Vec<InstanceId> = origin
            .receipt
            .and_then(|r| {
                lock(&self.between.resumed)
                    .as_ref()
                    .and_then(|m| m.get(&(r.from, r.seq)).cloned())
            })
            .unwrap_or_default();
        if let Some(receipt) = origin.receipt
            && lock(&self.between.resumed).is_some()
        {
            for id in self.receipts_in_store(plan, &vars, receipt) {
                if !had.contains(&id) {
                    had.push(id);
                }
            }
        }
        let resumed = !had.is_empty();
        out.received = had;
        if resumed && !plan.many {
            return Ok(out);
        }
        for id in matched {
            if self.receive(id, message, &vars, origin) && !out.received.contains(&id) {
                out.received.push(id);
            }
        }
        if !out.received.is_empty() {
            out.received.sort_unstable();
            return Ok(out);
        }
        out.started = self.start_by_message(plan, message, &vars, origin);
        if !out.started.is_empty() {
            return Ok(out);
        }
        let vars_for_late = match plan.keep_for {
            Some(_) => vars.clone(),
            None => Vars::new(),
        };
        let id = match &self.store {
            // Kept messages are numbered from the store's id sequence: a number of this
            // engine's own could be another's on the same store (another process on one SQLite
            // file, a replica) and overwrite its kept message.
            Some(store) => store.reserve_ids(1)?,
            None => self.between.next_parked.fetch_add(1, Ordering::Relaxed),
        };
        let parked = ParkedMessage {
            id,
            message: message.to_owned(),
            vars,
            from: origin.from,
            from_seq: origin.receipt.map(|r| r.seq),
            until: plan
                .keep_for
                .and_then(|k| self.clock.now().checked_add_signed(k)),
        };
        match plan.keep_for {
            Some(_) => {
                self.park(parked)?;
                out.kept = true;
                // An instance that started waiting between the look above and the parking
                // found nothing to take: offer it now.
                for id in self.matching(plan, message, &vars_for_late) {
                    if self.offer_parked(id, &plan.hashes) {
                        out.received.push(id);
                        out.kept = false;
                        break;
                    }
                }
            }
            None => self.record_unmatched(parked)?,
        }
        Ok(out)
    }

    /// Gives a message to one matching instance in its own commit. Gives whether it has it
    /// (now, or from an earlier run of the same follow-up).
    fn receive(&self, id: InstanceId, message: &str, vars: &Vars, origin: Origin) -> bool {
        // Another engine sharing the store committed the instance meanwhile: the conflict put
        // back the stored state; look again whether it still waits.
        for _ in 0..4 {
            match self.receive_once(id, message, vars, origin) {
                Some(got) => return got,
                None => continue,
            }
        }
        false
    }

    /// One attempt of [`Engine::receive`]; `None` when the commit met a conflict.
    fn receive_once(
        &self,
        id: InstanceId,
        message: &str,
        vars: &Vars,
        origin: Origin,
    ) -> Option<bool> {
        let now = self.clock.now();
        let mut got = false;
        let mut conflict = false;
        let stepped = self.with_slot(id, |slot| {
            if has_receipt(&slot.inst, origin.receipt) {
                got = true;
                return None;
            }
            let (listener, m) = matches(slot, message, vars)?;
            let payload = payload_list(m, vars, &slot.inst.vars);
            // On a shared store the kept message is taken in the receiver's commit (so that
            // one replica delivers it); other stores are told after it (`settle`).
            let takes = origin.kept.filter(|_| self.shares_store());
            let stepped = self.step_slot(slot, now, |step| {
                step.takes = takes;
                step.room(4);
                step.apply(Change::Between(Box::new(BetweenChange::Received {
                    message: message.to_owned(),
                    from: origin.from,
                    vars: payload,
                    receipt: origin.receipt,
                })));
                step.catch(listener);
                step.run()
            });
            got = !stepped.refused;
            conflict = matches!(stepped.result, Err(ExecError::Conflict(_)));
            Some(stepped)
        });
        if let Ok(Some(stepped)) = stepped {
            // The receiver's own failures (an incident further on) are its own.
            let _ = self.after(stepped);
        }
        (!conflict).then_some(got)
    }

    /// Starts an instance of the newest version of each definition whose start node listens
    /// for `message`.
    fn start_by_message(
        &self,
        plan: &Plan,
        message: &str,
        vars: &Vars,
        origin: Origin,
    ) -> Vec<InstanceId> {
        let mut newest: HashMap<&str, &Arc<Deployed>> = HashMap::new();
        for r in &plan.receivers {
            if !r.dep.def.starts_on(message) {
                continue;
            }
            let e = newest.entry(r.dep.key.id.as_str()).or_insert(&r.dep);
            if r.dep.key.version > e.key.version {
                *e = &r.dep;
            }
        }
        let mut ids: Vec<&str> = newest.keys().copied().collect();
        ids.sort_unstable();
        let mut out = Vec::new();
        for process in ids {
            let dep = newest[process];
            let payload = payload_of(&dep.def, message, vars);
            let received = BetweenChange::Received {
                message: message.to_owned(),
                from: origin.from,
                vars: Vec::new(),
                receipt: origin.receipt,
            };
            match self.start_from(
                process,
                Some(dep.key.version),
                payload,
                Some(Box::new(received)),
            ) {
                Ok(id) => out.push(id),
                // Started, but a later node failed: the instance exists.
                Err(ExecError::Incident { instance, .. }) => out.push(instance),
                Err(ExecError::Hook { instance, .. }) => out.push(instance),
                Err(_) => {}
            }
        }
        out
    }

    /// Keeps a message engine-wide (in the store too, when there is one).
    fn park(&self, parked: ParkedMessage) -> Result<(), ExecError> {
        let mut list = lock(&self.between.parked);
        // A send follow-up run again after a crash parks its message once.
        if parked.from.is_some()
            && list
                .iter()
                .any(|p| p.from == parked.from && p.from_seq == parked.from_seq)
        {
            return Ok(());
        }
        if let Some(store) = &self.store {
            store.park(&parked)?;
        }
        list.push(parked);
        self.between.set_parked(&list);
        Ok(())
    }

    /// Records a message that matched nobody: the hooks hear it, the store keeps it.
    fn record_unmatched(&self, parked: ParkedMessage) -> Result<(), ExecError> {
        if let Some(store) = &self.store {
            store.settle(parked.id, Some(&parked))?;
        } else {
            lock(&self.between.unmatched).push(parked.clone());
        }
        self.tell_unmatched(parked);
        Ok(())
    }

    fn tell_unmatched(&self, parked: ParkedMessage) {
        if self.hooks.is_empty() {
            return;
        }
        let event = Event::MessageUnmatched {
            from: parked.from,
            message: parked.message,
            vars: parked.vars,
        };
        for hook in &self.hooks {
            let _ =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook.on_event(&event)));
        }
    }

    /// Records the kept messages whose time ran out as unmatched (from `tick` and
    /// `correlate`).
    pub(crate) fn expire_messages(&self, now: DateTime<Utc>) {
        if !self.between.has_parked() {
            return;
        }
        let expired: Vec<ParkedMessage> = {
            let mut list = lock(&self.between.parked);
            let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut *list)
                .into_iter()
                .partition(|p| p.until.is_some_and(|u| u <= now));
            *list = kept;
            self.between.set_parked(&list);
            gone
        };
        for parked in expired {
            if let Some(store) = &self.store {
                // Taken: another engine sharing the store delivered (or expired) it meanwhile,
                // and the store refuses to record it. Otherwise it stays kept in the store when
                // this fails, and an engine expires it later (this one after reading the
                // store's list again: at its next open, or tick when shared).
                if store.settle(parked.id, Some(&parked)).is_err() {
                    continue;
                }
            } else {
                lock(&self.between.unmatched).push(parked.clone());
            }
            self.tell_unmatched(parked);
        }
    }

    /// Reads the kept messages from a shared store: other engines keep and take them too (and
    /// one that stopped leaves its kept messages to the others to offer and expire).
    pub(crate) fn reload_parked(&self) {
        if let Some(Ok(kept)) = self.store.as_ref().map(|s| s.parked()) {
            let mut list = lock(&self.between.parked);
            *list = kept;
            self.between.set_parked(&list);
        }
    }

    /// The store, when other engines may share it (and keep and take messages in it).
    fn shared_store(&self) -> Option<&Arc<dyn crate::store::Store>> {
        self.store.as_ref().filter(|s| s.is_shared())
    }

    /// Whether other engines may share the store.
    pub(crate) fn shares_store(&self) -> bool {
        self.shared_store().is_some()
    }

    /// A bounded cache lets an instance go: its waits leave the correlation index (the store's
    /// key table finds it again).
    pub(crate) fn unindex_waits(&self, slot: &Slot) {
        let before = waits(&slot.dep, &slot.inst);
        self.between.reindex(slot.inst.id, &before, &[]);
    }

    /// Offers the kept messages to an instance that started waiting for `fresh` (correlation
    /// hashes): the first that matches it is delivered, in its own commit.
    pub(crate) fn offer_parked(&self, id: InstanceId, fresh: &[u64]) -> bool {
        let now = self.clock.now();
        let shared = self.shares_store();
        if shared {
            // Other engines keep and take messages too: the store's list is the one to offer.
            self.reload_parked();
        }
        self.expire_messages(now);
        let candidates: Vec<ParkedMessage> = lock(&self.between.parked).clone();
        for parked in candidates {
            let Ok(plan) = self.plan(&parked.message, &parked.vars) else {
                continue;
            };
            if !plan.hashes.iter().any(|h| fresh.contains(h)) {
                continue;
            }
            // Taken off the list before it is offered, so that two instances starting to wait
            // at once do not both receive it; put back when this one does not take it.
            {
                let mut list = lock(&self.between.parked);
                let Some(at) = list.iter().position(|p| p.id == parked.id) else {
                    continue;
                };
                list.remove(at);
                self.between.set_parked(&list);
            }
            let origin = Origin {
                from: parked.from,
                receipt: Some(Receipt {
                    from: 0,
                    seq: parked.id,
                }),
                kept: Some(parked.id),
            };
            if self.receive(id, &parked.message, &parked.vars, origin) {
                if let Some(store) = self.store.as_ref().filter(|_| !shared) {
                    // Stays kept in the store when this fails: offered again after a restart
                    // (the receiver's receipt keeps it from taking it twice).
                    let _ = store.settle(parked.id, None);
                }
                // One message per wait: the instance waits no more.
                return true;
            }
            if shared {
                // Maybe taken by another engine: the store's list, read at the next offer, says.
                continue;
            }
            let mut list = lock(&self.between.parked);
            let at = list.partition_point(|p| p.id < parked.id);
            list.insert(at, parked);
            self.between.set_parked(&list);
        }
        false
    }

    /// Runs the send follow-ups of `instance` (after its commit): each message is correlated;
    /// gives what each did, for the sender's audit trail.
    pub(crate) fn run_sends(
        &self,
        instance: InstanceId,
        sends: &[(u64, String, Vars)],
    ) -> Vec<BetweenChange> {
        let mut out = Vec::new();
        for (seq, message, vars) in sends {
            let origin = Origin {
                from: Some(instance),
                receipt: Some(Receipt {
                    from: instance.0,
                    seq: *seq,
                }),
                kept: None,
            };
            let result = self
                .plan(message, vars)
                .and_then(|plan| self.route(&plan, message, vars.clone(), origin));
            match result {
                Ok(c) => out.push(BetweenChange::Delivered(Delivered {
                    message: message.clone(),
                    received: c.received,
                    started: c.started,
                    kept: c.kept,
                    error: None,
                })),
                Err(e) => out.push(BetweenChange::Delivered(Delivered {
                    message: message.clone(),
                    received: Vec::new(),
                    started: Vec::new(),
                    kept: false,
                    error: Some(e.to_string()),
                })),
            }
        }
        out
    }

    /// Rebuilds the index and the kept messages when an engine opens a store; notes every
    /// running instance's receipts for the send follow-ups a crash left.
    pub(crate) fn resume_between(&self) -> Result<(), crate::store::StoreError> {
        let mut receipts = HashMap::new();
        for shard in &*self.shards {
            let slots: Vec<Arc<Mutex<Slot>>> = lock(shard).values().cloned().collect();
            for slot in slots {
                let slot = lock(&slot);
                let after = waits(&slot.dep, &slot.inst);
                self.between.reindex(slot.inst.id, &[], &after);
                if let Some(rare) = slot.inst.rare.as_deref() {
                    for r in &rare.receipts {
                        receipts
                            .entry((r.from, r.seq))
                            .or_insert_with(Vec::new)
                            .push(slot.inst.id);
                    }
                }
            }
        }
        *lock(&self.between.resumed) = Some(receipts);
        if let Some(store) = &self.store {
            let parked = store.parked()?;
            let next = parked.iter().map(|p| p.id + 1).max().unwrap_or(1);
            let next = next.max(
                store
                    .unmatched()?
                    .iter()
                    .map(|p| p.id + 1)
                    .max()
                    .unwrap_or(1),
            );
            // Kept messages are numbered from the store's id sequence; a store written before
            // numbered them by engine, from 1: the sequence moves past every stored number.
            if next > 1 {
                let first = store.reserve_ids(1)?;
                if first < next {
                    store.reserve_ids(next - first)?;
                }
            }
            let mut list = lock(&self.between.parked);
            *list = parked;
            self.between.set_parked(&list);
        }
        Ok(())
    }

    /// Ends what [`Engine::resume_between`] noted, once the left follow-ups ran.
    pub(crate) fn resumed_between(&self) {
        *lock(&self.between.resumed) = None;
    }
}
