//! [`MemoryStore`]: the store rules (versions, conflicts, idempotent definitions) in memory,
//! with the state kept serialized as a durable store keeps it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};

use super::{
    Commit, Offer, Store, StoreError, StoredDef, StoredInstance, decode_records, decode_state,
    encode_records, encode_state,
};
use crate::ids::{DefKey, InstanceId, RoleId};
use crate::model::{ParkedMessage, Status};

/// A store in memory: nothing survives the process, but everything survives the engine, so a
/// test can drop an engine and open another on the same store. States and records are kept as
/// the JSON a durable store writes, so a round trip through it is a real one.
///
/// Clones share the same contents.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    /// How many of the next commits to refuse (see [`MemoryStore::refuse_commits`]).
    refuse: Arc<AtomicU32>,
}

#[derive(Debug, Default)]
struct Inner {
    defs: BTreeMap<(String, u32), String>,
    instances: BTreeMap<u64, Row>,
    next_id: u64,
    /// Business keys: (name, value) to the instances holding them.
    keys: BTreeMap<(String, String), BTreeSet<u64>>,
    /// Offers of open tasks ([`super::Offer::render`]) to the instances holding them.
    offers: BTreeMap<String, BTreeSet<u64>>,
    /// Messages kept engine-wide (`false`) or recorded unmatched (`true`), as JSON, by id.
    messages: BTreeMap<u64, (bool, String)>,
    /// The running instances (`running_ids` walks these, not every instance stored).
    running: BTreeSet<u64>,
    /// The running instances' earliest timers, by instant (`due` reads a prefix).
    due: BTreeSet<(DateTime<Utc>, u64)>,
}

impl Inner {
    /// The running instances among the sets `found`, with their versions, in id order.
    fn running_of<'a>(
        &self,
        found: impl Iterator<Item = &'a BTreeSet<u64>>,
    ) -> Vec<(InstanceId, u64)> {
        let ids: BTreeSet<u64> = found
            .flatten()
            .filter(|id| self.running.contains(id))
            .copied()
            .collect();
        ids.into_iter()
            .filter_map(|id| Some((InstanceId(id), self.instances.get(&id)?.version)))
            .collect()
    }
}

#[derive(Debug)]
struct Row {
    version: u64,
    process: String,
    running: bool,
    started_at: DateTime<Utc>,
    state: String,
    next_due: Option<DateTime<Utc>>,
    /// Whether the state holds follow-ups that have yet to run.
    outbox: bool,
    /// One JSON array of records per commit, by the position of its first record.
    records: HashMap<usize, String>,
    /// The business keys it holds (see `Inner::keys`).
    keys: Vec<(String, String)>,
    /// The offers of its open tasks, rendered (see `Inner::offers`).
    offers: Vec<String>,
}

impl MemoryStore {
    /// The instances holding `key` with `value` (the running ones only, with `running`).
    fn keyed(&self, key: &str, value: &str, running: bool) -> Vec<InstanceId> {
        let inner = self.lock();
        inner
            .keys
            .get(&(key.to_owned(), value.to_owned()))
            .into_iter()
            .flatten()
            .filter(|id| !running || inner.running.contains(id))
            .map(|id| InstanceId(*id))
            .collect()
    }

    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Makes the next `count` commits fail with [`StoreError::Other`], as a full disk or a lost
    /// connection would: for testing how a host (and the engine) handles a refused commit.
    pub fn refuse_commits(&self, count: u32) {
        self.refuse.store(count, Ordering::SeqCst);
    }

    /// Every stored instance whose row `keep` accepts, in id order.
    fn select(&self, keep: impl Fn(&Row) -> bool) -> Result<Vec<StoredInstance>, StoreError> {
        let inner = self.lock();
        inner
            .instances
            .iter()
            .filter(|(_, row)| keep(row))
            .map(|(id, row)| stored(*id, row))
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every write below is a single insert after all checks passed: a poisoned lock still
        // guards consistent data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Makes instance `id` stand in `index` under exactly `new`, `held` being where it stood.
fn reindex<K: Ord + Clone>(
    index: &mut BTreeMap<K, BTreeSet<u64>>,
    held: &mut Vec<K>,
    new: Vec<K>,
    id: u64,
) {
    for k in std::mem::take(held) {
        if let Some(ids) = index.get_mut(&k) {
            ids.remove(&id);
            if ids.is_empty() {
                index.remove(&k);
            }
        }
    }
    for k in &new {
        index.entry(k.clone()).or_default().insert(id);
    }
    *held = new;
}

fn stored(id: u64, row: &Row) -> Result<StoredInstance, StoreError> {
    let mut firsts: Vec<&usize> = row.records.keys().collect();
    firsts.sort();
    let mut audit = Vec::new();
    for first in firsts {
        decode_records(id, &row.records[first], &mut audit)?;
    }
    Ok(StoredInstance {
        instance: decode_state(id, &row.state, audit)?,
        version: row.version,
    })
}

impl Store for MemoryStore {
    fn save_definition(&self, def: &StoredDef) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let key = (def.key.id.clone(), def.key.version);
        match inner.defs.get(&key) {
            Some(text) if *text == def.text => Ok(()),
            Some(_) => Err(StoreError::DefinitionChanged {
                key: def.key.clone(),
            }),
            None => {
                inner.defs.insert(key, def.text.clone());
                Ok(())
            }
        }
    }

    fn definitions(&self) -> Result<Vec<StoredDef>, StoreError> {
        Ok(self
            .lock()
            .defs
            .iter()
            .map(|((id, version), text)| StoredDef {
                key: DefKey {
                    id: id.clone(),
                    version: *version,
                },
                text: text.clone(),
            })
            .collect())
    }

    fn commit(&self, commit: &Commit<'_>) -> Result<(), StoreError> {
        let id = commit.instance.id();
        let refuse = self
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if refuse.is_ok() {
            return Err(StoreError::Other {
                path: Default::default(),
                detail: "commit refused (MemoryStore::refuse_commits)".into(),
            });
        }
        let state = encode_state(commit.instance);
        let records = encode_records(commit.records);
        let mut guard = self.lock();
        let inner = &mut *guard;
        let found = inner.instances.get(&id.get()).map(|r| r.version);
        let expected = (commit.version > 0).then_some(commit.version);
        if found != expected {
            return Err(StoreError::Conflict {
                instance: id,
                expected: commit.version,
                found,
            });
        }
        let running = commit.instance.status() == Status::Running;
        let next_due = commit.next_due.filter(|_| running);
        let row = inner.instances.entry(id.get()).or_insert_with(|| Row {
            version: 0,
            process: commit.def.id.clone(),
            running,
            started_at: commit.instance.started_at(),
            state: String::new(),
            next_due: None,
            outbox: false,
            records: HashMap::new(),
            keys: Vec::new(),
            offers: Vec::new(),
        });
        let was_due = std::mem::replace(&mut row.next_due, next_due);
        row.version = commit.new_version();
        row.running = running;
        row.state = state;
        row.outbox = !commit.instance.pending().is_empty();
        if !commit.records.is_empty() {
            row.records.insert(commit.first_record, records);
        }
        if was_due != next_due {
            if let Some(at) = was_due {
                inner.due.remove(&(at, id.get()));
            }
            if let Some(at) = next_due {
                inner.due.insert((at, id.get()));
            }
        }
        if running {
            inner.running.insert(id.get());
        } else {
            inner.running.remove(&id.get());
        }
        if let Some(keys) = commit.keys {
            let new = keys
                .iter()
                .map(|k| (k.name.clone(), k.value.clone()))
                .collect();
            reindex(&mut inner.keys, &mut row.keys, new, id.get());
        }
        if let Some(offers) = commit.offers {
            let new = offers.iter().map(super::Offer::render).collect();
            reindex(&mut inner.offers, &mut row.offers, new, id.get());
        }
        Ok(())
    }

    fn read(&self, id: InstanceId) -> Result<Option<StoredInstance>, StoreError> {
        let inner = self.lock();
        inner
            .instances
            .get(&id.get())
            .map(|row| stored(id.get(), row))
            .transpose()
    }

    fn running(&self) -> Result<Vec<StoredInstance>, StoreError> {
        self.select(|row| row.running)
    }

    fn history(
        &self,
        process: Option<&str>,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<StoredInstance>, StoreError> {
        let mut out = self.select(|row| {
            process.is_none_or(|p| row.process == p) && since.is_none_or(|s| row.started_at >= s)
        })?;
        out.sort_by_key(|s| (s.instance.started_at(), s.instance.id()));
        Ok(out)
    }

    fn running_ids(&self, process: Option<&str>) -> Result<Vec<(InstanceId, u64)>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .running
            .iter()
            .filter_map(|id| Some((*id, inner.instances.get(id)?)))
            .filter(|(_, row)| process.is_none_or(|p| row.process == p))
            .map(|(id, row)| (InstanceId(id), row.version))
            .collect())
    }

    fn due(&self, now: DateTime<Utc>) -> Result<Vec<(InstanceId, u64)>, StoreError> {
        let inner = self.lock();
        let mut out: Vec<(InstanceId, u64)> = inner
            .due
            .iter()
            .take_while(|(at, _)| *at <= now)
            .filter_map(|(_, id)| Some((InstanceId(*id), inner.instances.get(id)?.version)))
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    fn outbox(&self) -> Result<Vec<StoredInstance>, StoreError> {
        self.select(|row| row.outbox)
    }

    fn next_wake(&self) -> Result<Option<super::StoreWake>, StoreError> {
        Ok(Some(super::StoreWake {
            due: self.lock().due.first().map(|(at, _)| *at),
            work_in: None,
        }))
    }

    fn reserve_ids(&self, count: u64) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        let first = inner.next_id.max(1);
        inner.next_id = first + count;
        Ok(first)
    }

    fn by_key(&self, key: &str, value: &str) -> Result<Vec<InstanceId>, StoreError> {
        Ok(self.keyed(key, value, false))
    }

    fn running_by_key(&self, key: &str, value: &str) -> Result<Vec<InstanceId>, StoreError> {
        Ok(self.keyed(key, value, true))
    }

    fn offered(&self, to: &[Offer]) -> Result<Option<Vec<(InstanceId, u64)>>, StoreError> {
        let inner = self.lock();
        let found = to
            .iter()
            .filter_map(|offer| inner.offers.get(&offer.render()));
        Ok(Some(inner.running_of(found)))
    }

    fn offered_anywhere(
        &self,
        roles: &[RoleId],
    ) -> Result<Option<Vec<(InstanceId, u64)>>, StoreError> {
        let inner = self.lock();
        // `role`, and every `role@unit`: the keys from `role@` up to `role` followed by the
        // character after `@`.
        let found = roles.iter().flat_map(|role| {
            let role = role.as_str();
            let scoped = inner.offers.range(format!("{role}@")..format!("{role}A"));
            inner
                .offers
                .get(role)
                .into_iter()
                .chain(scoped.map(|(_, ids)| ids))
        });
        Ok(Some(inner.running_of(found)))
    }

    fn park(&self, message: &ParkedMessage) -> Result<(), StoreError> {
        let json = super::encode_message(message);
        self.lock().messages.insert(message.id, (false, json));
        Ok(())
    }

    fn settle(&self, id: u64, unmatched: Option<&ParkedMessage>) -> Result<(), StoreError> {
        let mut inner = self.lock();
        match unmatched {
            Some(m) => {
                let kept = inner.messages.get(&id).is_some_and(|(u, _)| !u);
                // An expired kept message another engine delivered meanwhile is not unmatched.
                if !kept && m.until.is_some() {
                    return Err(StoreError::Taken { message: id });
                }
                inner.messages.remove(&id);
                inner
                    .messages
                    .insert(m.id, (true, super::encode_message(m)));
            }
            None => {
                if inner.messages.get(&id).is_some_and(|(u, _)| !u) {
                    inner.messages.remove(&id);
                }
            }
        }
        Ok(())
    }

    fn parked(&self) -> Result<Vec<ParkedMessage>, StoreError> {
        let inner = self.lock();
        inner
            .messages
            .values()
            .filter(|(u, _)| !u)
            .map(|(_, json)| super::decode_message(json))
            .collect()
    }

    fn unmatched(&self) -> Result<Vec<ParkedMessage>, StoreError> {
        let inner = self.lock();
        inner
            .messages
            .values()
            .filter(|(u, _)| *u)
            .map(|(_, json)| super::decode_message(json))
            .collect()
    }
}
