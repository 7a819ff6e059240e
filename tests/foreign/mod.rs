//! A store written outside the crate, with nothing but procflow's public API: the proof that
//! hosts can bring their own. It keeps what a database would, as text: each instance's encoded
//! state and one encoded batch of audit records per commit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use procflow::{
    Commit, DefKey, Instance, InstanceId, Record, Status, Store, StoreError, StoredDef,
    StoredInstance,
};

/// A store in a host's own data structures.
#[derive(Debug, Default)]
pub(crate) struct TextStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    defs: BTreeMap<DefKey, String>,
    rows: BTreeMap<u64, Row>,
    next_id: u64,
    /// Business keys: (name, value) to the instances holding them.
    keys: BTreeMap<(String, String), BTreeSet<u64>>,
}

#[derive(Debug)]
struct Row {
    version: u64,
    process: String,
    running: bool,
    outbox: bool,
    started_at: DateTime<Utc>,
    next_due: Option<DateTime<Utc>>,
    state: String,
    batches: Vec<String>,
    keys: Vec<(String, String)>,
}

fn decode(id: u64, row: &Row) -> Result<StoredInstance, StoreError> {
    let fail = |what: &str, e: serde_json::Error| StoreError::Decode {
        what: format!("{what} of instance i{id}"),
        detail: e.to_string(),
    };
    let mut audit: Vec<Record> = Vec::new();
    for batch in &row.batches {
        audit.extend(Record::decode_batch(batch).map_err(|e| fail("records", e))?);
    }
    let instance = Instance::decode(&row.state, audit).map_err(|e| fail("state", e))?;
    Ok(StoredInstance {
        instance,
        version: row.version,
    })
}

impl TextStore {
    fn select(&self, keep: impl Fn(&Row) -> bool) -> Result<Vec<StoredInstance>, StoreError> {
        let inner = self.inner.lock().unwrap();
        inner
            .rows
            .iter()
            .filter(|(_, row)| keep(row))
            .map(|(id, row)| decode(*id, row))
            .collect()
    }
}

impl Store for TextStore {
    fn save_definition(&self, def: &StoredDef) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().unwrap();
        match inner.defs.get(&def.key) {
            Some(text) if *text == def.text => Ok(()),
            Some(_) => Err(StoreError::DefinitionChanged {
                key: def.key.clone(),
            }),
            None => {
                inner.defs.insert(def.key.clone(), def.text.clone());
                Ok(())
            }
        }
    }

    fn definitions(&self) -> Result<Vec<StoredDef>, StoreError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .defs
            .iter()
            .map(|(key, text)| StoredDef {
                key: key.clone(),
                text: text.clone(),
            })
            .collect())
    }

    fn commit(&self, commit: &Commit<'_>) -> Result<(), StoreError> {
        let id = commit.instance.id();
        let state = commit.instance.encode();
        let batch = Record::encode_batch(commit.records);
        let mut guard = self.inner.lock().unwrap();
        let inner = &mut *guard;
        let found = inner.rows.get(&id.get()).map(|r| r.version);
        if found != (commit.version > 0).then_some(commit.version) {
            return Err(StoreError::Conflict {
                instance: id,
                expected: commit.version,
                found,
            });
        }
        let row = inner.rows.entry(id.get()).or_insert_with(|| Row {
            version: 0,
            process: commit.def.id.clone(),
            running: true,
            outbox: false,
            started_at: commit.instance.started_at(),
            next_due: None,
            state: String::new(),
            batches: Vec::new(),
            keys: Vec::new(),
        });
        row.version = commit.new_version();
        row.running = commit.instance.status() == Status::Running;
        row.outbox = !commit.instance.pending().is_empty();
        row.next_due = commit.next_due;
        row.state = state;
        if !commit.records.is_empty() {
            row.batches.push(batch);
        }
        if let Some(keys) = commit.keys {
            let new: Vec<(String, String)> = keys
                .iter()
                .map(|k| (k.name.clone(), k.value.clone()))
                .collect();
            for pair in std::mem::replace(&mut row.keys, new.clone()) {
                if let Some(ids) = inner.keys.get_mut(&pair) {
                    ids.remove(&id.get());
                }
            }
            for pair in new {
                inner.keys.entry(pair).or_default().insert(id.get());
            }
        }
        Ok(())
    }

    fn read(&self, id: InstanceId) -> Result<Option<StoredInstance>, StoreError> {
        let inner = self.inner.lock().unwrap();
        inner
            .rows
            .get(&id.get())
            .map(|r| decode(id.get(), r))
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

    fn due(&self, now: DateTime<Utc>) -> Result<Vec<(InstanceId, u64)>, StoreError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .rows
            .iter()
            .filter(|(_, row)| row.running && row.next_due.is_some_and(|at| at <= now))
            .map(|(id, row)| (InstanceId::new(*id), row.version))
            .collect())
    }

    fn outbox(&self) -> Result<Vec<StoredInstance>, StoreError> {
        self.select(|row| row.outbox)
    }

    fn reserve_ids(&self, count: u64) -> Result<u64, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let first = inner.next_id.max(1);
        inner.next_id = first + count;
        Ok(first)
    }

    fn by_key(&self, key: &str, value: &str) -> Result<Vec<InstanceId>, StoreError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .keys
            .get(&(key.to_owned(), value.to_owned()))
            .into_iter()
            .flatten()
            .map(|id| InstanceId::new(*id))
            .collect())
    }
}
