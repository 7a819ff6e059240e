//! The store a replication runs on: in memory like `MemoryStore`, but it keeps instances as
//! they are (no JSON, which a simulation would encode at every commit and decode for the
//! report) and indexes the due timers (`MemoryStore::due` scans every instance at every tick:
//! quadratic over a simulated year) and the running instances (the engine's work list asks the
//! store for them at every call: without the index, a week cost 5 s of CPU cloning every
//! instance the store held).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};

use crate::ids::InstanceId;
use crate::model::{Instance, Status};
use crate::store::{Commit, Store, StoreError, StoredDef, StoredInstance};

struct Row {
    instance: Instance,
    version: u64,
    running: bool,
    next_due: Option<DateTime<Utc>>,
}

#[derive(Default)]
struct Inner {
    defs: Vec<StoredDef>,
    rows: HashMap<u64, Row>,
    due: BTreeSet<(DateTime<Utc>, u64)>,
    /// The running instances: id → version, in id order.
    running: BTreeMap<u64, u64>,
    next_id: u64,
    keys: HashMap<(String, String), BTreeSet<u64>>,
    keys_of: HashMap<u64, Vec<(String, String)>>,
}

/// An in-memory store for simulations.
#[derive(Default)]
pub(crate) struct SimStore(Mutex<Inner>);

impl SimStore {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn select(&self, keep: impl Fn(&Row) -> bool) -> Vec<StoredInstance> {
        let inner = self.lock();
        let mut out: Vec<StoredInstance> = inner
            .rows
            .values()
            .filter(|r| keep(r))
            .map(|r| StoredInstance {
                instance: r.instance.clone(),
                version: r.version,
            })
            .collect();
        out.sort_by_key(|s| (s.instance.started_at(), s.instance.id()));
        out
    }
}

impl Store for SimStore {
    fn save_definition(&self, def: &StoredDef) -> Result<(), StoreError> {
        let mut inner = self.lock();
        match inner.defs.iter().find(|d| d.key == def.key) {
            Some(d) if d.text != def.text => Err(StoreError::DefinitionChanged {
                key: def.key.clone(),
            }),
            Some(_) => Ok(()),
            None => {
                inner.defs.push(def.clone());
                inner
                    .defs
                    .sort_by(|a, b| (&a.key.id, a.key.version).cmp(&(&b.key.id, b.key.version)));
                Ok(())
            }
        }
    }

    fn definitions(&self) -> Result<Vec<StoredDef>, StoreError> {
        Ok(self.lock().defs.clone())
    }

    fn commit(&self, commit: &Commit<'_>) -> Result<(), StoreError> {
        let id = commit.instance.id();
        let mut guard = self.lock();
        let inner = &mut *guard;
        let found = inner.rows.get(&id.get()).map(|r| r.version);
        let expected = (commit.version > 0).then_some(commit.version);
        if found != expected {
            return Err(StoreError::Conflict {
                instance: id,
                expected: commit.version,
                found,
            });
        }
        let running = commit.instance.status() == Status::Running;
        if let Some(old) = inner.rows.get(&id.get()).and_then(|r| r.next_due) {
            inner.due.remove(&(old, id.get()));
        }
        if running && let Some(at) = commit.next_due {
            inner.due.insert((at, id.get()));
        }
        if running {
            inner.running.insert(id.get(), commit.new_version());
        } else {
            inner.running.remove(&id.get());
        }
        inner.rows.insert(
            id.get(),
            Row {
                instance: commit.instance.clone(),
                version: commit.new_version(),
                running,
                next_due: commit.next_due.filter(|_| running),
            },
        );
        if let Some(keys) = commit.keys {
            for old in inner.keys_of.remove(&id.get()).unwrap_or_default() {
                if let Some(set) = inner.keys.get_mut(&old) {
                    set.remove(&id.get());
                }
            }
            let new: Vec<(String, String)> = keys
                .iter()
                .map(|k| (k.name.clone(), k.value.clone()))
                .collect();
            for k in &new {
                inner.keys.entry(k.clone()).or_default().insert(id.get());
            }
            inner.keys_of.insert(id.get(), new);
        }
        Ok(())
    }

    fn read(&self, id: InstanceId) -> Result<Option<StoredInstance>, StoreError> {
        Ok(self.lock().rows.get(&id.get()).map(|r| StoredInstance {
            instance: r.instance.clone(),
            version: r.version,
        }))
    }

    fn running(&self) -> Result<Vec<StoredInstance>, StoreError> {
        Ok(self.select(|r| r.running))
    }

    fn running_ids(&self, process: Option<&str>) -> Result<Vec<(InstanceId, u64)>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .running
            .iter()
            .filter(|(id, _)| {
                process.is_none_or(|p| {
                    inner
                        .rows
                        .get(id)
                        .and_then(|r| r.instance.def())
                        .is_some_and(|k| k.id == p)
                })
            })
            .map(|(id, version)| (InstanceId(*id), *version))
            .collect())
    }

    fn history(
        &self,
        process: Option<&str>,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<StoredInstance>, StoreError> {
        Ok(self.select(|r| {
            process.is_none_or(|p| r.instance.def().is_some_and(|k| k.id == p))
                && since.is_none_or(|s| r.instance.started_at() >= s)
        }))
    }

    fn due(&self, now: DateTime<Utc>) -> Result<Vec<(InstanceId, u64)>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .due
            .iter()
            .take_while(|(at, _)| *at <= now)
            .filter_map(|(_, id)| inner.rows.get(id).map(|r| (InstanceId(*id), r.version)))
            .collect())
    }

    fn outbox(&self) -> Result<Vec<StoredInstance>, StoreError> {
        Ok(self.select(|r| !r.instance.pending().is_empty()))
    }

    fn reserve_ids(&self, count: u64) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        let first = inner.next_id.max(1);
        inner.next_id = first + count;
        Ok(first)
    }

    fn by_key(&self, key: &str, value: &str) -> Result<Vec<InstanceId>, StoreError> {
        Ok(self
            .lock()
            .keys
            .get(&(key.to_owned(), value.to_owned()))
            .map(|s| s.iter().map(|id| InstanceId(*id)).collect())
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::def::ProcessDef;
    use crate::exec::Engine;
    use std::sync::Arc;

    const DEF: &str = r#"
id: p
version: 1
name: A queue
roles:
  clerk: { name: Clerk }
  lead: { name: Lead }
nodes:
  start: { kind: start, next: serve }
  serve:
    kind: user_task
    name: Serve
    raci: { responsible: [clerk], accountable: lead }
    next: end
  end: { kind: end }
"#;

    #[test]
    fn running_ids_follow_commits_in_id_order() {
        let store = Arc::new(SimStore::default());
        let engine = Engine::builder().open(store.clone()).unwrap();
        engine.deploy(ProcessDef::from_yaml(DEF).unwrap()).unwrap();
        let a = engine.start("p", crate::vars::Vars::new()).unwrap();
        let b = engine.start("p", crate::vars::Vars::new()).unwrap();
        let ids: Vec<InstanceId> = store
            .running_ids(None)
            .unwrap()
            .into_iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(ids, vec![a.min(b), a.max(b)]);
        assert_eq!(store.running_ids(Some("other")).unwrap(), vec![]);
        let actor = crate::raci::Actor::new("c", ["clerk"]);
        let task = engine
            .work_list(&actor)
            .into_iter()
            .find(|t| t.id.instance() == a)
            .unwrap();
        engine.claim(task.id, &actor).unwrap();
        engine
            .complete(task.id, &actor, crate::vars::Vars::new())
            .unwrap();
        let left = store.running_ids(Some("p")).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, b);
        // The versions are the stored ones (what the engine compares with what it holds).
        assert_eq!(left[0].1, store.read(b).unwrap().unwrap().version);
    }
}
