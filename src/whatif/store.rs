//! The store a replication runs on: in memory like `MemoryStore`, but it keeps instances as
//! they are (no JSON, which a simulation would encode at every commit and decode for the
//! report) and indexes the due timers (`MemoryStore::due` scans every instance at every tick:
//! quadratic over a simulated year) and the running instances (the engine's work list asks the
//! store for them at every call: without the index, a week cost 5 s of CPU cloning every
//! instance the store held). It keeps each instance's audit trail beside its state and appends
//! a commit's new records to it (copying the whole trail at every commit cost a year of
//! simulation an eighth of its time). [`replicate`](super::replicate) runs without a store;
//! this one serves [`run_once`](super::run_once) on [`memory_store`](super::memory_store).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};

use crate::ids::InstanceId;
use crate::model::{Instance, Record, Status};
use crate::store::{Commit, Store, StoreError, StoredDef, StoredInstance};

struct Row {
    /// The state, without its audit trail (`audit` holds it).
    instance: Instance,
    audit: Vec<Record>,
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

impl Row {
    fn stored(&self) -> StoredInstance {
        let mut instance = self.instance.clone();
        instance.audit = self.audit.clone();
        StoredInstance {
            instance,
            version: self.version,
        }
    }
}

/// Makes `to` (an instance without its audit trail) a copy of `from` without its audit trail,
/// copying only the parts that differ: most commits change a task or a timer, and copying the
/// variables at each cost a year of simulation a tenth of its time.
fn update(to: &mut Instance, from: &Instance) {
    to.id = from.id;
    if to.def != from.def {
        to.def.clone_from(&from.def);
    }
    to.status = from.status;
    if to.vars != from.vars {
        to.vars.clone_from(&from.vars);
    }
    to.tokens.clone_from(&from.tokens);
    to.tasks.truncate(from.tasks.len());
    for (i, t) in from.tasks.iter().enumerate() {
        match to.tasks.get_mut(i) {
            Some(old) if old == t => {}
            Some(old) => old.clone_from(t),
            None => to.tasks.push(t.clone()),
        }
    }
    to.timers.clone_from(&from.timers);
    to.started_at = from.started_at;
    to.ended_at = from.ended_at;
    if to.rare != from.rare {
        to.rare.clone_from(&from.rare);
    }
}

/// A copy of `i` without its audit trail.
fn without_audit(i: &Instance) -> Instance {
    Instance {
        id: i.id,
        def: i.def.clone(),
        status: i.status,
        vars: i.vars.clone(),
        tokens: i.tokens.clone(),
        tasks: i.tasks.clone(),
        timers: i.timers.clone(),
        audit: Vec::new(),
        started_at: i.started_at,
        ended_at: i.ended_at,
        rare: i.rare.clone(),
    }
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
            .map(Row::stored)
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
        // The trail so far, and this commit's records after it (the whole trail when what
        // the store holds does not end where the commit's records start).
        let row = match inner.rows.entry(id.get()) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let row = e.into_mut();
                update(&mut row.instance, commit.instance);
                row
            }
            std::collections::hash_map::Entry::Vacant(e) => e.insert(Row {
                instance: without_audit(commit.instance),
                audit: Vec::new(),
                version: 0,
                running,
                next_due: None,
            }),
        };
        if row.audit.len() == commit.first_record
            && commit.first_record + commit.records.len() == commit.instance.audit.len()
        {
            row.audit.extend_from_slice(commit.records);
        } else {
            row.audit.clone_from(&commit.instance.audit);
        }
        row.version = commit.new_version();
        row.running = running;
        row.next_due = commit.next_due.filter(|_| running);
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
        Ok(self.lock().rows.get(&id.get()).map(Row::stored))
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
    use crate::ids::TaskId;
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

    /// A task the work list shows is what `work_list_of` shows of its instance, claimed or
    /// not, and nothing once the instance finished (or for an unknown one).
    #[test]
    fn work_list_of_an_instance_is_its_part_of_the_work_list() {
        let engine = Engine::builder().log_changes().build();
        engine.deploy(ProcessDef::from_yaml(DEF).unwrap()).unwrap();
        let a = engine.start("p", crate::vars::Vars::new()).unwrap();
        let b = engine.start("p", crate::vars::Vars::new()).unwrap();
        let c1 = crate::raci::Actor::new("c1", ["clerk"]);
        let c2 = crate::raci::Actor::new("c2", ["clerk"]);
        let lead = crate::raci::Actor::new("l", ["lead"]);
        let of = |actor: &crate::raci::Actor| -> Vec<TaskId> {
            let mut ids: Vec<TaskId> = [a, b]
                .iter()
                .flat_map(|i| engine.work_list_of(*i, actor))
                .map(|t| t.id)
                .collect();
            ids.sort();
            ids
        };
        let whole = |actor: &crate::raci::Actor| -> Vec<TaskId> {
            let mut ids: Vec<TaskId> = engine.work_list(actor).into_iter().map(|t| t.id).collect();
            ids.sort();
            ids
        };
        assert_eq!(of(&c1).len(), 2);
        assert_eq!(of(&lead), vec![]);
        let task = engine.work_list_of(a, &c1)[0].id;
        engine.claim(task, &c1).unwrap();
        for actor in [&c1, &c2, &lead] {
            assert_eq!(of(actor), whole(actor), "{}", actor.id);
        }
        assert_eq!(of(&c2).len(), 1);
        engine
            .complete(task, &c1, crate::vars::Vars::new())
            .unwrap();
        assert_eq!(engine.work_list_of(a, &c1), vec![]);
        assert_eq!(engine.work_list_of(InstanceId(999), &c1), vec![]);
        assert_eq!(of(&c1), whole(&c1));
        // The change log has each call that changed an instance: two starts, a claim, a
        // completion that finished `a`; each read once.
        let mut log = Vec::new();
        engine.take_changes(&mut log);
        let seen: Vec<(InstanceId, bool)> = log.iter().map(|c| (c.id, c.running)).collect();
        assert_eq!(seen, vec![(a, true), (b, true), (a, true), (a, false)]);
        engine.take_changes(&mut log);
        assert_eq!(log.len(), 4);
    }

    /// A store that counts its reads.
    struct Counting(SimStore, std::sync::atomic::AtomicUsize);

    impl Store for Counting {
        fn save_definition(&self, def: &StoredDef) -> Result<(), StoreError> {
            self.0.save_definition(def)
        }
        fn definitions(&self) -> Result<Vec<StoredDef>, StoreError> {
            self.0.definitions()
        }
        fn commit(&self, commit: &Commit<'_>) -> Result<(), StoreError> {
            self.0.commit(commit)
        }
        fn read(&self, id: InstanceId) -> Result<Option<StoredInstance>, StoreError> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.read(id)
        }
        fn running(&self) -> Result<Vec<StoredInstance>, StoreError> {
            self.0.running()
        }
        fn running_ids(&self, process: Option<&str>) -> Result<Vec<(InstanceId, u64)>, StoreError> {
            self.0.running_ids(process)
        }
        fn history(
            &self,
            process: Option<&str>,
            since: Option<DateTime<Utc>>,
        ) -> Result<Vec<StoredInstance>, StoreError> {
            self.0.history(process, since)
        }
        fn due(&self, now: DateTime<Utc>) -> Result<Vec<(InstanceId, u64)>, StoreError> {
            self.0.due(now)
        }
        fn outbox(&self) -> Result<Vec<StoredInstance>, StoreError> {
            self.0.outbox()
        }
        fn reserve_ids(&self, count: u64) -> Result<u64, StoreError> {
            self.0.reserve_ids(count)
        }
        fn by_key(&self, key: &str, value: &str) -> Result<Vec<InstanceId>, StoreError> {
            self.0.by_key(key, value)
        }
    }

    /// The schedule entry of an instance that finished is dropped by `next_due` and `tick`
    /// without reading the instance back from the store.
    #[test]
    fn finished_instances_leave_the_schedule_unread() {
        let timed = DEF.replace("next: end\n  end:", "due: 2h\n    next: end\n  end:");
        assert_ne!(timed, DEF);
        let store = Arc::new(Counting(
            SimStore::default(),
            std::sync::atomic::AtomicUsize::new(0),
        ));
        let t0 = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 3, 9, 1, 0, 0).unwrap();
        let clock = Arc::new(crate::clock::ManualClock::new(t0));
        let mut b = Engine::builder();
        b.config(crate::exec::Config {
            retain_completed: false,
            ..crate::exec::Config::default()
        })
        .clock(Arc::clone(&clock));
        let engine = b.open(store.clone()).unwrap();
        engine
            .deploy(ProcessDef::from_yaml(&timed).unwrap())
            .unwrap();
        let a = engine.start("p", crate::vars::Vars::new()).unwrap();
        clock.set(t0 + chrono::Duration::hours(1));
        let b = engine.start("p", crate::vars::Vars::new()).unwrap();
        assert_eq!(engine.next_due(), Some(t0 + chrono::Duration::hours(2)));
        let actor = crate::raci::Actor::new("c", ["clerk"]);
        let task = engine.work_list_of(a, &actor)[0].id;
        engine.claim(task, &actor).unwrap();
        engine
            .complete(task, &actor, crate::vars::Vars::new())
            .unwrap();
        let reads = store.1.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(engine.next_due(), Some(t0 + chrono::Duration::hours(3)));
        let fired = engine.tick(t0 + chrono::Duration::hours(4));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].instance, b);
        assert_eq!(store.1.load(std::sync::atomic::Ordering::Relaxed), reads);
    }
}
