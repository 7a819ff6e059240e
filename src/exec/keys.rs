//! Business keys: the engine's index of the keys (`keys:`) its instances hold, kept as calls
//! change them, and the queries across processes that read it ([`Engine::find_by_key`],
//! [`Engine::history_by_key`]).
//!
//! **Invariant:** every instance the engine holds in a slot whose definition lists `keys:` is in
//! the index under each key it holds, by the hash of (key name, canonical value), and under
//! nothing else. It enters when it is put in a slot (a start that keeps it, an adoption from the
//! store), moves when a committed call changed a key variable (`Step::note_keys`, called by every
//! change that writes variables: completions, `Change::SetVars`, consumed triggers), and leaves
//! with its slot. A definition without `keys:` never reaches this module.
//!
//! The index holds 64-bit hashes, not values: a query checks each candidate's variable, so a
//! collision costs a look, never a wrong answer. It costs one `(hash, id)` entry, 16 bytes, per
//! key per instance in a hash table (a value several instances share keeps the others in a side
//! table; about 33-35 bytes with the table's slack, see README "Business keys"), in 64 shards so
//! that starts on several threads seldom meet.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::deploy::{Deployed, find};
use super::step::Step;
use super::{Engine, ExecError, SHARDS, Sla, lock};
use crate::def::ProcessDef;
use crate::ids::{DefKey, InstanceId};
use crate::model::{Entry, Instance, Record, Status, TimerKind};
use crate::store::BusinessKey;
use crate::vars::{VarType, Vars};

/// A business key's value as a query names it: text or an integer. Both render canonically
/// (see [`BusinessKey::render`]): `KeyValue::from(1001)` and `KeyValue::from("1001")` name the
/// same value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyValue {
    /// A string value, e.g. `C-1001`.
    Text(String),
    /// An integer value.
    Integer(i64),
}

impl KeyValue {
    /// The value of a JSON string or integer; `None` for any other JSON value.
    pub fn from_json(value: &serde_json::Value) -> Option<KeyValue> {
        match value {
            serde_json::Value::String(s) => Some(KeyValue::Text(s.clone())),
            serde_json::Value::Number(n) => n.as_i64().map(KeyValue::Integer),
            _ => None,
        }
    }

    /// The canonical text: a string as it is, an integer in decimal digits.
    pub fn render(&self) -> String {
        match self {
            KeyValue::Text(s) => s.clone(),
            KeyValue::Integer(n) => n.to_string(),
        }
    }
}

impl std::fmt::Display for KeyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render())
    }
}

impl From<&str> for KeyValue {
    fn from(s: &str) -> KeyValue {
        KeyValue::Text(s.to_owned())
    }
}

impl From<String> for KeyValue {
    fn from(s: String) -> KeyValue {
        KeyValue::Text(s)
    }
}

impl From<i64> for KeyValue {
    fn from(n: i64) -> KeyValue {
        KeyValue::Integer(n)
    }
}

impl From<i32> for KeyValue {
    fn from(n: i32) -> KeyValue {
        KeyValue::Integer(n.into())
    }
}

impl From<u32> for KeyValue {
    fn from(n: u32) -> KeyValue {
        KeyValue::Integer(n.into())
    }
}

/// One instance holding a business key value, as [`Engine::find_by_key`] reports it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct KeyedInstance {
    /// The instance.
    pub id: InstanceId,
    /// Its definition (id and version).
    pub definition: DefKey,
    /// Running, completed or cancelled.
    pub status: Status,
    /// The node ids of its open tasks, in the order they opened.
    pub open_tasks: Vec<String>,
    /// How it stands against its process-wide SLA while it runs (`None` when it has none, has
    /// ended, or its definition is not deployed where it was read).
    pub sla: Option<Sla>,
    /// Whether its process-wide SLA deadline fired (running or ended).
    pub sla_breached: bool,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub ended_at: Option<DateTime<Utc>>,
}

/// One line of a business key's history ([`Engine::history_by_key`]): an audit record of an
/// instance holding the key value.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct KeyRecord {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The instance.
    pub instance: InstanceId,
    /// Its definition.
    pub definition: DefKey,
    /// What happened, as one line ([`Record::describe`]).
    pub what: String,
    /// The record itself.
    pub record: Record,
}

/// One shard of the index: (hash of key and value) → instance numbers, in a hash table (a
/// B-tree of pairs cost a cache miss per level at a million keys: a fifth of a `correlate`),
/// and the removals not made yet.
///
/// Removals wait in `gone` until [`GONE_BATCH`] of them or the shard's next insert or read,
/// which makes them first, in order: every operation on the shard sees the index as if each
/// removal had been made at once. A batch first reads the table entry of every removal, so
/// that their cache misses overlap (at a million instances an instance's removal was a miss
/// of its own, a tenth of a `correlate` that finished one).
#[derive(Default)]
struct KeyShard {
    index: super::correlate::Multi,
    gone: Vec<(u64, u64)>,
}

/// How many removals a shard keeps before making them.
const GONE_BATCH: usize = 32;

impl KeyShard {
    fn settle(&mut self) {
        if self.gone.is_empty() {
            return;
        }
        self.index.touch(self.gone.iter().map(|(hash, _)| *hash));
        for (hash, id) in self.gone.drain(..) {
            self.index.remove(hash, id);
        }
    }
}

/// The engine's index: (key, value) hashes to instance numbers, in 64 shards by hash.
pub(crate) struct KeyIndex {
    shards: Box<[Mutex<KeyShard>]>,
}

impl Default for KeyIndex {
    fn default() -> KeyIndex {
        KeyIndex {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl KeyIndex {
    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, KeyShard> {
        lock(&self.shards[(hash >> 58) as usize % SHARDS])
    }

    fn insert(&self, hash: u64, id: u64) {
        let mut shard = self.shard(hash);
        shard.settle();
        shard.index.insert(hash, id);
    }

    fn remove(&self, hash: u64, id: u64) {
        let mut shard = self.shard(hash);
        shard.gone.push((hash, id));
        if shard.gone.len() >= GONE_BATCH {
            shard.settle();
        }
    }

    fn ids(&self, hash: u64) -> Vec<u64> {
        let mut out = smallvec::SmallVec::<[u64; 2]>::new();
        let mut shard = self.shard(hash);
        shard.settle();
        shard.index.get(hash, &mut out);
        out.into_vec()
    }

    #[cfg(debug_assertions)]
    fn contains(&self, hash: u64, id: u64) -> bool {
        self.ids(hash).contains(&id)
    }
}

/// The index hash of key `name` with canonical value `value`.
fn key_hash(name: &str, value: &str) -> u64 {
    let mut h = super::index_hasher();
    name.hash(&mut h);
    value.hash(&mut h);
    h.finish()
}

/// [`key_hash`] of variable `name` with its canonical value, if it holds one, without
/// rendering the value into a new string.
fn var_hash(vars: &Vars, name: &str) -> Option<u64> {
    match vars.get(name)? {
        serde_json::Value::String(s) => Some(key_hash(name, s)),
        serde_json::Value::Number(n) => {
            // The decimal digits of an integer (as `BusinessKey::render` writes them), written
            // from the end of a buffer on the stack: at most 20 digits and a sign. (Through
            // `write!` this was about 5% of a correlate by key.)
            let (negative, mut rest) = match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => (i < 0, i.unsigned_abs()),
                (None, Some(u)) => (false, u),
                (None, None) => return None,
            };
            let mut buf = [0u8; 24];
            let mut at = buf.len();
            loop {
                at -= 1;
                buf[at] = b'0' + (rest % 10) as u8;
                rest /= 10;
                if rest == 0 {
                    break;
                }
            }
            if negative {
                at -= 1;
                buf[at] = b'-';
            }
            Some(key_hash(name, std::str::from_utf8(&buf[at..]).ok()?))
        }
        _ => None,
    }
}

/// The canonical value of variable `name`, if it holds one.
fn value_of(vars: &Vars, name: &str) -> Option<String> {
    BusinessKey::render(vars.get(name)?)
}

/// The key changes of one call: (index in the definition's `keys`, index hash of the value
/// before the call). The index holds hashes, so equal hashes are an unchanged entry.
pub(crate) type KeyNotes = Vec<(usize, Option<u64>)>;

impl Step<'_> {
    /// Notes the business keys that `vars` is about to set, with their values before: call it
    /// before merging `vars` into the instance's variables. Does nothing for a definition
    /// without `keys:`.
    pub(crate) fn note_keys(&mut self, vars: &Vars) {
        self.note_keys_in(|name| vars.contains_key(name));
    }

    /// [`Step::note_keys`] for the variables named by `sets`.
    pub(crate) fn note_keys_in(&mut self, sets: impl Fn(&str) -> bool) {
        let keys = &self.dep.def.keys;
        if keys.is_empty() {
            return;
        }
        for (i, name) in keys.iter().enumerate() {
            if sets(name) && !self.key_notes.iter().any(|(j, _)| *j == i) {
                let before = var_hash(&self.inst.vars, name);
                self.key_notes.push((i, before));
            }
        }
    }
}

impl Engine {
    /// Puts a held instance of a keyed definition in the index.
    pub(crate) fn index_keys(&self, inst: &Instance, def: &ProcessDef) {
        for name in &def.keys {
            if let Some(hash) = var_hash(&inst.vars, name) {
                self.keys.insert(hash, inst.id.0);
            }
        }
    }

    /// Takes an instance that leaves its slot out of the index.
    pub(crate) fn unindex_keys(&self, inst: &Instance, def: &ProcessDef) {
        for name in &def.keys {
            if let Some(hash) = var_hash(&inst.vars, name) {
                self.keys.remove(hash, inst.id.0);
            }
        }
    }

    /// Moves a held instance in the index after a committed call changed its keys.
    pub(crate) fn rekey(&self, inst: &Instance, def: &ProcessDef, notes: KeyNotes) {
        for (i, before) in notes {
            let Some(name) = def.keys.get(i) else {
                continue;
            };
            let now = var_hash(&inst.vars, name);
            if now == before {
                continue;
            }
            if let Some(v) = before {
                self.keys.remove(v, inst.id.0);
            }
            if let Some(v) = now {
                self.keys.insert(v, inst.id.0);
            }
        }
    }

    /// Checks (in debug builds) that a held instance is indexed under every key it holds: a
    /// change that writes variables without `Step::note_keys` breaks it.
    #[cfg(debug_assertions)]
    pub(crate) fn check_indexed(&self, inst: &Instance, def: &ProcessDef) {
        for name in &def.keys {
            if let Some(value) = value_of(&inst.vars, name) {
                debug_assert_eq!(var_hash(&inst.vars, name), Some(key_hash(name, &value)));
                debug_assert!(
                    self.keys.contains(key_hash(name, &value), inst.id.0),
                    "instance {} holds key {name} = {value} but is not indexed under it: a \
                     change wrote variables without Step::note_keys",
                    inst.id
                );
            }
        }
    }

    /// The instances, running or ended, of any process, that hold business key `key` with
    /// `value`: their status, open tasks, SLA and times, oldest first. With a store, the store's
    /// index answers and the instances are read from it (not kept), so instances this engine
    /// never held or let go are found, and changes other engines sharing the store made count;
    /// without one, the engine's own index answers.
    ///
    /// # Errors
    /// [`ExecError::UnknownKey`] when no deployed definition lists `key` under `keys:`;
    /// [`ExecError::BadKeyValue`] when every definition declaring it declares an integer and
    /// `value` is text that is not one; [`ExecError::Store`]; [`ExecError::Reentrant`] from a
    /// handler or veto.
    ///
    /// Complexity: one index look-up (a store query), then the instances found read from the
    /// store with their audit trails (one [`Store::read_many`](crate::Store::read_many): one
    /// query on PostgreSQL).
    ///
    /// # Examples
    /// See [`Engine::history_by_key`].
    pub fn find_by_key(
        &self,
        key: &str,
        value: impl Into<KeyValue>,
    ) -> Result<Vec<KeyedInstance>, ExecError> {
        self.not_busy()?;
        let value = self.key_text(key, value.into())?;
        let now = self.clock.now();
        let mut out = Vec::new();
        self.holders(key, &value, |inst, dep, def| {
            let sla = dep
                .filter(|_| inst.status == Status::Running)
                .and_then(|dep| {
                    inst.timers
                        .iter()
                        .find(|t| t.sla && t.kind == TimerKind::Due)
                        .map(|t| super::timers::sla(dep, t, inst.started_at, now))
                });
            out.push(keyed_view(inst, def, sla));
        })?;
        out.sort_by_key(|k| (k.started_at, k.id));
        Ok(out)
    }

    /// A business key value's history, e.g. a customer's interactions across processes: every
    /// audit record of every instance (running or ended, of any process) that holds `key` with
    /// `value`, in time order (by instant, then instance, then the order the instance recorded
    /// them). Each line names its instance and definition and says what happened
    /// ([`Record::describe`]).
    ///
    /// # Errors
    /// As [`Engine::find_by_key`].
    ///
    /// # Examples
    /// ```
    /// use procflow::{Engine, ProcessDef, Vars};
    /// use serde_json::json;
    ///
    /// let engine = Engine::new();
    /// engine.deploy(ProcessDef::from_yaml(r#"
    /// id: hello
    /// version: 1
    /// name: Hello
    /// roles: { clerk: { name: Clerk } }
    /// keys: [customer_id]
    /// variables: { customer_id: { type: string } }
    /// nodes:
    ///   start: { kind: start, next: greet }
    ///   greet: { kind: user_task, name: Greet, raci: { responsible: [clerk], accountable: clerk }, next: end }
    ///   end: { kind: end }
    /// "#)?)?;
    /// let vars: Vars = [("customer_id".to_owned(), json!("C-1001"))].into_iter().collect();
    /// let id = engine.start("hello", vars)?;
    ///
    /// let found = engine.find_by_key("customer_id", "C-1001")?;
    /// assert_eq!(found[0].id, id);
    /// assert_eq!(found[0].open_tasks, ["greet"]);
    /// for line in engine.history_by_key("customer_id", "C-1001")? {
    ///     println!("{} {} {}: {}", line.at, line.instance, line.definition, line.what);
    /// }
    /// assert!(engine.find_by_key("customer_id", "C-9999")?.is_empty());
    /// assert!(engine.find_by_key("order_id", "O-1").is_err()); // no definition lists it
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn history_by_key(
        &self,
        key: &str,
        value: impl Into<KeyValue>,
    ) -> Result<Vec<KeyRecord>, ExecError> {
        self.not_busy()?;
        let value = self.key_text(key, value.into())?;
        let mut out = Vec::new();
        self.holders(key, &value, |inst, _, def| key_records(inst, def, &mut out))?;
        sort_history(&mut out);
        Ok(out)
    }

    /// Checks `key` names a business key of a deployed definition and gives `value`'s
    /// canonical text.
    fn key_text(&self, key: &str, value: KeyValue) -> Result<String, ExecError> {
        let mut types = key_types(&self.defs.load(), key);
        if types.is_empty() && self.store.is_some() {
            // Another engine sharing the store may have deployed it.
            self.load_definitions()?;
            types = key_types(&self.defs.load(), key);
        }
        if types.is_empty() {
            return Err(ExecError::UnknownKey {
                key: key.to_owned(),
            });
        }
        match value {
            KeyValue::Integer(n) => Ok(n.to_string()),
            KeyValue::Text(text) if types.iter().all(|t| *t == VarType::Integer) => {
                match text.trim().parse::<i64>() {
                    Ok(n) => Ok(n.to_string()),
                    Err(_) => Err(ExecError::BadKeyValue {
                        key: key.to_owned(),
                        value: text,
                        expected: "an integer",
                    }),
                }
            }
            KeyValue::Text(text) => Ok(text),
        }
    }

    /// Calls `f` on every instance holding `key` = `value`, once each, with its deployed
    /// definition when there is one. With a store, the store answers, and each instance is read
    /// from it (not kept): the store holds every commit, also those of other engines sharing it,
    /// which a copy this engine holds may not have seen yet. Without one, the engine's index
    /// answers, and each instance is read under its lock.
    fn holders(
        &self,
        key: &str,
        value: &str,
        mut f: impl FnMut(&Instance, Option<&Deployed>, Option<&ProcessDef>),
    ) -> Result<(), ExecError> {
        let holds = |inst: &Instance, def: Option<&ProcessDef>| {
            def.is_none_or(|d| d.keys.iter().any(|k| k == key))
                && value_of(&inst.vars, key).as_deref() == Some(value)
        };
        if let Some(store) = &self.store {
            for stored in store.read_many(&store.by_key(key, value)?)? {
                let inst = stored.instance;
                let dep: Option<Arc<Deployed>> = inst.def.as_deref().and_then(|k| {
                    find(&self.defs.load(), &k.id, Some(k.version))
                        .ok()
                        .cloned()
                });
                let def = dep.as_ref().map(|d| &*d.def);
                if holds(&inst, def) {
                    f(&inst, dep.as_deref(), def);
                }
            }
            return Ok(());
        }
        let mut ids = self.keys.ids(key_hash(key, value));
        ids.sort_unstable();
        for n in ids {
            let Some(slot) = lock(self.shard(InstanceId(n))).get(n).cloned() else {
                continue;
            };
            let slot = lock(&slot);
            if !slot.is_retired() && holds(&slot.inst, Some(&slot.dep.def)) {
                f(&slot.inst, Some(&slot.dep), Some(&slot.dep.def));
            }
        }
        Ok(())
    }
}

/// The types the deployed definitions listing `key` under `keys:` declare it with.
fn key_types(catalog: &super::deploy::Catalog, key: &str) -> Vec<VarType> {
    catalog
        .values()
        .flat_map(|versions| versions.values())
        .filter(|d| d.def.keys.iter().any(|k| k == key))
        .filter_map(|d| d.def.vars.get(key).map(|spec| spec.ty))
        .collect()
}

/// An instance as a key query reports it; `def` names its open tasks (by node number without
/// it).
pub(crate) fn keyed_view(
    inst: &Instance,
    def: Option<&ProcessDef>,
    sla: Option<Sla>,
) -> KeyedInstance {
    let node = |t: &crate::model::Task| match def.and_then(|d| d.try_node(t.node)) {
        Some(n) => n.id().to_owned(),
        None => format!("#{}", t.node.index()),
    };
    let breached = inst
        .timers
        .iter()
        .any(|t| t.sla && t.kind == TimerKind::Due && t.fired)
        || inst.audit.iter().any(|r| {
            matches!(
                r.what,
                Entry::Timer {
                    kind: TimerKind::Due,
                    sla: true,
                    ..
                }
            )
        });
    KeyedInstance {
        id: inst.id,
        definition: inst.def.as_deref().cloned().unwrap_or_default(),
        status: inst.status,
        open_tasks: inst
            .tasks
            .iter()
            .filter(|t| t.is_open())
            .map(node)
            .collect(),
        sla,
        sla_breached: breached,
        started_at: inst.started_at,
        ended_at: inst.ended_at,
    }
}

/// Appends the history lines of one instance.
pub(crate) fn key_records(inst: &Instance, def: Option<&ProcessDef>, out: &mut Vec<KeyRecord>) {
    let definition = inst.def.as_deref().cloned().unwrap_or_default();
    for record in &inst.audit {
        out.push(KeyRecord {
            at: record.at,
            instance: inst.id,
            definition: definition.clone(),
            what: match def {
                // Without the instant `describe` starts with.
                Some(def) => {
                    let line = record.describe(def);
                    match line.split_once(' ') {
                        Some((_, what)) => what.to_owned(),
                        None => line,
                    }
                }
                None => format!("{:?}", record.what),
            },
            record: record.clone(),
        });
    }
}

/// Puts history lines in time order: by instant, then instance (the stable sort keeps each
/// instance's own order).
pub(crate) fn sort_history(lines: &mut [KeyRecord]) {
    lines.sort_by_key(|l| (l.at, l.instance));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_integer_hashes_as_its_rendered_digits() {
        for n in [
            serde_json::json!(0),
            serde_json::json!(7),
            serde_json::json!(-7),
            serde_json::json!(1_000_000),
            serde_json::json!(i64::MIN),
            serde_json::json!(i64::MAX),
            serde_json::json!(u64::MAX),
        ] {
            let mut vars = Vars::new();
            vars.insert("k".into(), n.clone());
            let rendered = BusinessKey::render(&n).expect("an integer renders");
            assert_eq!(var_hash(&vars, "k"), Some(key_hash("k", &rendered)), "{n}");
        }
    }

    /// Removals wait in batches, and every read and insert sees them made, in order: a key
    /// that moves away and back is indexed once, and a batch that fills is made.
    #[test]
    fn removals_in_batches_are_made_before_reads_and_inserts() {
        let index = KeyIndex::default();
        let hash = key_hash("customer_id", "C-1");
        for id in 1..=100 {
            index.insert(hash, id);
        }
        for id in 1..=70 {
            index.remove(hash, id);
        }
        // Two batches were made without a read; the rest is made by the read.
        assert_eq!(
            lock(&index.shards[(hash >> 58) as usize % SHARDS])
                .gone
                .len(),
            70 - 64
        );
        let sorted = |mut ids: Vec<u64>| {
            ids.sort_unstable();
            ids
        };
        assert_eq!(sorted(index.ids(hash)), (71..=100).collect::<Vec<_>>());
        // Away and back before anything reads: indexed once, where it is now.
        let other = key_hash("customer_id", "C-2");
        index.remove(hash, 100);
        index.insert(other, 100);
        index.remove(other, 100);
        index.insert(hash, 100);
        assert_eq!(index.ids(other), Vec::<u64>::new());
        assert_eq!(sorted(index.ids(hash)), (71..=100).collect::<Vec<_>>());
    }
}
