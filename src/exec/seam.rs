//! The one seam every change to an instance passes: lock the instance, step it, commit what the
//! step changed, unlock, then tell the hooks and run the follow-ups the commit left.
//!
//! **Invariant:** hooks ([`Hook::on_event`](crate::Hook::on_event)) and follow-ups run only
//! after the commit and after the instance's lock is released; the thread-local `HELD` list is
//! non-empty exactly while this thread runs a handler or a veto inside a locked instance, and
//! every engine call then answers [`ExecError::Reentrant`].

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use super::deploy::{Deployed, find};
use super::step::{Change, Step};
use super::{Engine, ExecError, SHARDS, Shard, lock};
use crate::hooks::Control;
use crate::ids::{InstanceId, NodeId, TaskId};
use crate::model::{Event, FollowUp, Instance, Pending, Status};
use crate::store::{BusinessKey, Commit, StoreError, StoredInstance};

/// One instance as the engine holds it.
pub(crate) struct Slot {
    pub(crate) inst: Instance,
    pub(crate) dep: Arc<Deployed>,
    /// The version of the instance in the store (0 without a store), or [`RETIRED`].
    pub(crate) version: u64,
}

/// The version of a slot that left its shard (set under its lock): a caller that locked it
/// after that looks the instance up again. A version, not a flag, to keep a waiting instance
/// small; no store counts to it, and no version compares newer than it.
const RETIRED: u64 = u64::MAX;

impl Slot {
    /// Marks the slot as gone from its shard.
    pub(crate) fn retire(&mut self) {
        self.version = RETIRED;
    }

    pub(crate) fn is_retired(&self) -> bool {
        self.version == RETIRED
    }

    pub(crate) fn new(inst: Instance, dep: Arc<Deployed>, version: u64) -> Slot {
        Slot { inst, dep, version }
    }
}

thread_local! {
    /// The instance this thread holds locked while a handler or veto runs, to refuse re-entrant
    /// calls instead of deadlocking. One at most: every engine call refuses while it is set.
    static HELD: Cell<Option<InstanceId>> = const { Cell::new(None) };
}

/// Holds an instance for this thread until dropped; puts back what was held before.
pub(crate) struct Held(Option<InstanceId>);

impl Drop for Held {
    fn drop(&mut self) {
        HELD.with(|h| h.set(self.0));
    }
}

/// The instance this thread holds, when it runs inside a handler or a veto.
pub(crate) fn busy() -> Option<InstanceId> {
    HELD.with(Cell::get)
}

pub(crate) fn hold(id: InstanceId) -> Held {
    Held(HELD.with(|h| h.replace(Some(id))))
}

/// What one call did to a locked instance, for what happens after the lock is released.
pub(crate) struct Stepped {
    pub(crate) instance: InstanceId,
    pub(crate) result: Result<(), ExecError>,
    /// The earliest timer the call armed, for the engine's schedule.
    pub(crate) armed: Option<DateTime<Utc>>,
    /// The instance's earliest timer yet to fire before the call, which the schedule already
    /// holds an entry for (at or before it): a timer armed at or after it needs none.
    pub(crate) scheduled: Option<DateTime<Utc>>,
    /// The call's events, or only [`Event::Refused`] when the store refused it.
    pub(crate) events: Vec<Event>,
    /// The follow-ups the call committed, to run now.
    pub(crate) follow: Vec<Pending>,
    /// The definition, when there are follow-ups (they name nodes).
    pub(crate) dep: Option<Arc<Deployed>>,
    /// Whether the store refused the commit (nothing happened).
    pub(crate) refused: bool,
    /// The business keys the call changed, with their values before (see `keys.rs`).
    pub(crate) key_notes: super::keys::KeyNotes,
    /// The correlated messages the instance started waiting for in this call (their
    /// correlation hashes), to offer the messages kept engine-wide (see `correlate.rs`).
    pub(crate) fresh_waits: smallvec::SmallVec<[u64; 2]>,
}

impl Stepped {
    /// A call that changed nothing and has nothing to tell.
    pub(crate) fn nothing(instance: InstanceId) -> Stepped {
        Stepped::only(instance, Ok(()))
    }

    fn only(instance: InstanceId, result: Result<(), ExecError>) -> Stepped {
        Stepped {
            instance,
            result,
            armed: None,
            scheduled: None,
            events: Vec::new(),
            follow: Vec::new(),
            dep: None,
            refused: false,
            key_notes: Vec::new(),
            fresh_waits: smallvec::SmallVec::new(),
        }
    }
}

/// Whether keeping a stored instance reads it again under its shard's lock (see `Engine::keep`).
#[derive(Clone, Copy)]
enum Again {
    Always,
    Never,
    /// Unless the shard let nothing go since it counted this many (read before the store).
    UnlessSince(u64),
}

impl Engine {
    pub(crate) fn shard(&self, id: InstanceId) -> &Shard {
        &self.shards[(id.0 as usize) % SHARDS]
    }

    /// Notes that `id` has a timer due at `at`.
    pub(crate) fn schedule(&self, id: InstanceId, at: DateTime<Utc>) {
        lock(&self.timer_heaps[(id.0 as usize) % SHARDS]).push(std::cmp::Reverse((at, id.0)));
    }

    /// Puts the earliest timer of `inst` that has yet to fire on the schedule (firing it
    /// schedules the next).
    pub(crate) fn schedule_pending(&self, inst: &Instance) {
        if let Some(at) = inst.timers.iter().filter(|t| !t.fired).map(|t| t.at).min() {
            self.schedule(inst.id, at);
        }
    }

    /// Refuses a call made from inside a handler or a veto.
    pub(crate) fn not_busy(&self) -> Result<(), ExecError> {
        match busy() {
            Some(id) => Err(ExecError::Reentrant(id)),
            None => Ok(()),
        }
    }

    /// Runs `f` on the locked instance. Nothing else runs under the lock but `f`.
    pub(crate) fn with_slot<R>(
        &self,
        id: InstanceId,
        f: impl FnOnce(&mut Slot) -> R,
    ) -> Result<R, ExecError> {
        self.not_busy()?;
        loop {
            let found = lock(self.shard(id)).get(id.0).cloned();
            let slot = match found {
                Some(slot) => slot,
                None => self.read_stored(id)?,
            };
            let mut guard = lock(&slot);
            if guard.is_retired() {
                // Another call let it go between the lookup and the lock: look again.
                continue;
            }
            let held = hold(id);
            let out = f(&mut guard);
            drop(held);
            // A cancelled instance is finished as a completed one is.
            if !self.config.retain_completed
                && matches!(guard.inst.status, Status::Completed | Status::Cancelled)
            {
                guard.retire();
                if !guard.dep.def.keys.is_empty() {
                    self.unindex_keys(&guard.inst, &guard.dep.def);
                }
                let mut shard = lock(self.shard(id));
                if shard.get(id.0).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                    shard.let_go(id.0);
                }
            }
            return Ok(out);
        }
    }

    /// [`Engine::with_slot`] for a query about one instance: on a store other engines change
    /// ([`Store::is_shared`](crate::store::Store::is_shared)), a held copy is first brought up
    /// to date (one read of the store), so that a replica answers what another committed
    /// since it last read the instance. An instance not held is read from the store anyway.
    pub(crate) fn with_current<R>(
        &self,
        id: InstanceId,
        f: impl FnOnce(&mut Slot) -> R,
    ) -> Result<R, ExecError> {
        let look = self.shares_store() && self.holds(id);
        self.with_slot(id, |slot| {
            if look {
                self.refresh(slot);
            }
            f(slot)
        })
    }

    /// Runs a call's work on the instance and everything after: commit, unlock, schedule, tell
    /// the hooks, run the follow-ups. Gives the call's result.
    pub(crate) fn call(
        &self,
        id: InstanceId,
        f: impl FnOnce(&mut Slot) -> Result<Stepped, ExecError>,
    ) -> Result<(), ExecError> {
        let stepped = self.with_slot(id, f)??;
        self.after(stepped)
    }

    /// Runs one call's step on a locked instance. With a store, what the call changed is
    /// committed before this returns; when the store refuses, the instance is put back as it
    /// was (on a conflict: as the store holds it now) and the result says so.
    pub(crate) fn step_slot(
        &self,
        slot: &mut Slot,
        now: DateTime<Utc>,
        f: impl FnOnce(&mut Step<'_>) -> Result<(), ExecError>,
    ) -> Stepped {
        let Slot { inst, dep, version } = slot;
        match self.step_parts(inst, dep, version, now, f) {
            Ok(mut stepped) => {
                if !stepped.key_notes.is_empty() {
                    let notes = std::mem::take(&mut stepped.key_notes);
                    self.rekey(&slot.inst, &slot.dep.def, notes);
                }
                #[cfg(debug_assertions)]
                if !slot.dep.def.keys.is_empty() {
                    self.check_indexed(&slot.inst, &slot.dep.def);
                }
                stepped
            }
            Err(error) => {
                if let StoreError::Conflict { .. } = error {
                    // Another engine changed the instance: take the stored state, so that the
                    // caller can look at it and retry.
                    self.refresh(slot);
                }
                self.refusal(slot.inst.id, error)
            }
        }
    }

    /// [`Engine::step_slot`] on an instance that may not be in a slot yet (a start): the
    /// definition is borrowed, so that a start that is not kept touches no reference count
    /// shared between threads.
    ///
    /// # Errors
    /// The store refused the commit; the instance is as it was before the call.
    pub(crate) fn step_parts(
        &self,
        inst: &mut Instance,
        dep: &Arc<Deployed>,
        version: &mut u64,
        now: DateTime<Utc>,
        f: impl FnOnce(&mut Step<'_>) -> Result<(), ExecError>,
    ) -> Result<Stepped, StoreError> {
        let id = inst.id;
        if let Err(e) = dep.runnable() {
            return Ok(Stepped::only(id, Err(e)));
        }
        // An instance's time never runs backwards: a clock behind the instance's last record
        // (set back, or another engine's clock) counts as that record's instant, so that nothing
        // is recorded before what caused it (a completion before its task opened).
        let now = now.max(inst.latest());
        // The schedule holds an entry at or before the instance's earliest timer yet to fire
        // (firing or dropping that entry schedules the next one): a timer this step arms at or
        // after it needs no entry of its own.
        let scheduled = inst.timers.iter().filter(|t| !t.fired).map(|t| t.at).min();
        let snapshot = self.store.as_ref().map(|_| inst.snapshot());
        // The roles the instance's open tasks are offered to before the step, which the store
        // indexes for work lists (nothing to index without a store).
        let offers_before = self.store.as_ref().map(|_| self.offers(dep, inst));
        // What the instance waits for by correlation before the step (nothing to look at for a
        // definition without a correlated catch).
        let correlated = !dep.def.correlated.is_empty();
        let waits_before = if correlated {
            super::correlate::waits(dep, inst)
        } else {
            smallvec::SmallVec::new()
        };
        let first = inst.audit.len();
        let first_follow = inst.next_follow_up();
        let mut step = Step::new(inst, dep, &self.hooks, now, self.config.audit);
        step.org = self.org.as_deref();
        step.engine = Some(self);
        let result = f(&mut step);
        let key_notes = std::mem::take(&mut step.key_notes);
        let takes = step.takes;
        let (armed, events, changed) = (step.take_armed(), step.events, step.changed);
        let follow = fresh(inst, first_follow, self.store.is_none());
        if let (Some(store), Some(snapshot), true) = (&self.store, snapshot, changed) {
            // A start that holds keys, or a call that set a key variable, carries the keys.
            let keys = (!dep.def.keys.is_empty() && (*version == 0 || !key_notes.is_empty()))
                .then(|| BusinessKey::of(dep.def.keys(), &inst.vars))
                // A new instance has no keys stored: none to replace.
                .filter(|keys| *version > 0 || !keys.is_empty());
            let offers = offers_before
                .map(|before| (before, self.offers(dep, inst)))
                .filter(|(before, after)| before != after)
                .map(|(_, after)| after);
            let commit = Commit {
                instance: inst,
                def: &dep.key,
                records: &inst.audit[first..],
                first_record: first,
                version: *version,
                next_due: inst.timers.iter().filter(|t| !t.fired).map(|t| t.at).min(),
                keys: keys.as_deref(),
                offers: offers.as_deref(),
                takes,
            };
            match crate::telemetry::commit(id, commit.records.len(), || store.commit(&commit)) {
                Ok(()) => *version = commit.new_version(),
                Err(e) => {
                    inst.restore(snapshot, first);
                    return Err(e);
                }
            }
        }
        if let (Some(log), true) = (&self.changes, changed) {
            let running = inst.status == Status::Running;
            lock(log).push(super::Changed {
                id,
                running,
                next_due: inst
                    .timers
                    .iter()
                    .filter(|t| !t.fired && running)
                    .map(|t| t.at)
                    .min(),
                open: inst
                    .tasks
                    .iter()
                    .filter(|t| t.is_open())
                    .fold(0, |open, t| open | 1 << (t.node.index() % 64)),
            });
        }
        let fresh_waits = if correlated {
            let after = super::correlate::waits(dep, inst);
            self.between.reindex(id, &waits_before, &after)
        } else {
            smallvec::SmallVec::new()
        };
        if let (Some(org), true) = (&self.org, changed) {
            org.reindex(inst, &dep.def);
        }
        Ok(Stepped {
            instance: id,
            result,
            armed,
            scheduled,
            events,
            dep: (!follow.is_empty()).then(|| Arc::clone(dep)),
            follow,
            refused: false,
            key_notes,
            fresh_waits,
        })
    }

    /// A call whose commit the store refused: nothing of it happened, and hooks hear only that.
    pub(crate) fn refusal(&self, id: InstanceId, error: StoreError) -> Stepped {
        let reason = error.to_string();
        let error = match error {
            StoreError::Conflict { .. } => ExecError::Conflict(id),
            e => ExecError::Store(e),
        };
        let mut stepped = Stepped::only(id, Err(error));
        stepped.refused = true;
        if !self.hooks.is_empty() {
            stepped.events.push(Event::Refused {
                instance: id,
                reason,
            });
        }
        stepped
    }

    /// Replaces a slot's instance with the stored one when the store has a newer version.
    /// Gives whether it did.
    pub(crate) fn refresh(&self, slot: &mut Slot) -> bool {
        let Some(store) = &self.store else {
            return false;
        };
        match store.read(slot.inst.id) {
            Ok(Some(stored)) if stored.version > slot.version => match self.fit(stored) {
                Ok((instance, dep, version)) => self.replace_held(slot, instance, dep, version),
                Err(_) => false,
            },
            _ => false,
        }
    }

    /// Puts a fitted stored state in a held slot when it is newer than the held copy (another
    /// engine committed since) and the slot is not retired: its timers scheduled, its offers
    /// and keys indexed again. Gives whether it did.
    pub(crate) fn replace_held(
        &self,
        slot: &mut Slot,
        instance: Instance,
        dep: Arc<Deployed>,
        version: u64,
    ) -> bool {
        if slot.is_retired() || slot.version >= version {
            return false;
        }
        self.schedule_pending(&instance);
        if let Some(org) = &self.org {
            org.reindex(&instance, &dep.def);
        }
        if !slot.dep.def.keys.is_empty() {
            self.unindex_keys(&slot.inst, &slot.dep.def);
        }
        if !dep.def.keys.is_empty() {
            self.index_keys(&instance, &dep.def);
        }
        *slot = Slot::new(instance, dep, version);
        true
    }

    /// What happens after a call released its instance: schedules its timers, tells the hooks,
    /// runs its follow-ups, and gives the call's result (or [`ExecError::Hook`] when a hook
    /// failed on a call that succeeded).
    pub(crate) fn after(&self, stepped: Stepped) -> Result<(), ExecError> {
        let Stepped {
            instance,
            result,
            armed,
            scheduled,
            events,
            follow,
            dep,
            fresh_waits,
            ..
        } = stepped;
        if let Some(at) = armed
            && scheduled.is_none_or(|s| at < s)
        {
            self.schedule(instance, at);
        }
        let mut failure = self.tell(&events);
        if !fresh_waits.is_empty() && (self.between.has_parked() || self.shares_store()) {
            // A message kept engine-wide (by any engine sharing the store) may be what the
            // instance now waits for.
            self.offer_parked(instance, &fresh_waits);
        }
        if let Some(dep) = dep
            && let Some(f) = self.run_follow_ups(instance, &dep, follow)
        {
            failure.get_or_insert(f);
        }
        match (result, failure) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(message)) => Err(ExecError::Hook { instance, message }),
            (Ok(()), None) => Ok(()),
        }
    }

    /// Delivers events to every hook, in order; gives the first failure.
    fn tell(&self, events: &[Event]) -> Option<String> {
        let mut failure = None;
        for event in events {
            for hook in &self.hooks {
                match catch_unwind(AssertUnwindSafe(|| hook.on_event(event))) {
                    Ok(Control::Abort(message)) => {
                        failure.get_or_insert(message);
                    }
                    Ok(_) => {}
                    Err(panic) => {
                        failure.get_or_insert(format!(
                            "hook panicked: {}",
                            super::step::panic_message(&panic)
                        ));
                    }
                }
            }
        }
        failure
    }

    /// Runs committed follow-ups, then (with a store) commits that they ran. A follow-up whose
    /// completion cannot be committed stays in the store and runs again when an engine next
    /// opens it: a hook may hear a notification twice, never zero times.
    pub(crate) fn run_follow_ups(
        &self,
        instance: InstanceId,
        dep: &Deployed,
        follow: Vec<Pending>,
    ) -> Option<String> {
        // Messages to other processes: correlated now, each receiver in its own commit.
        let sends: Vec<(u64, String, crate::vars::Vars)> = follow
            .iter()
            .filter_map(|p| match &p.what {
                FollowUp::Send { message, vars } => Some((p.seq, message.clone(), vars.clone())),
                _ => None,
            })
            .collect();
        let mut delivered = if sends.is_empty() {
            Vec::new()
        } else {
            self.run_sends(instance, &sends)
        };
        // Calls between instances (see `call.rs`): run, not told.
        let kept = self.run_calls(instance, &follow);
        let events: Vec<Event> = follow
            .iter()
            .filter(|p| !super::call::is_call(&p.what))
            .filter_map(|p| match &p.what {
                FollowUp::Notify {
                    task,
                    node,
                    role,
                    actor,
                } => Some(Event::Notify {
                    task: *task,
                    node: Arc::clone(&dep.names[node.index()]),
                    role: role.clone(),
                    actor: actor.clone(),
                }),
                FollowUp::CancelNotice {
                    role,
                    actor,
                    reason,
                } => Some(Event::CancelNotice {
                    instance,
                    role: role.clone(),
                    actor: actor.clone(),
                    reason: reason.clone(),
                }),
                _ => None,
            })
            .collect();
        let mut failure = self.tell(&events);
        if self.store.is_none() && !delivered.is_empty() {
            // Where the messages went, in the sender's audit trail.
            let stepped = self.with_slot(instance, |slot| {
                let now = self.clock.now();
                self.step_slot(slot, now, |step| {
                    for d in delivered.drain(..) {
                        step.apply(Change::Between(Box::new(d)));
                    }
                    Ok(())
                })
            });
            if let Ok(s) = stepped
                && let Some(f) = self.tell(&s.events)
            {
                failure.get_or_insert(f);
            }
        }
        if self.store.is_some() {
            let done: Vec<u64> = follow
                .iter()
                .map(|p| p.seq)
                .filter(|s| !kept.contains(s))
                .collect();
            // A conflict means another engine committed the instance meanwhile (with these
            // follow-ups still in it): the stored state was read again, so try once more.
            for _ in 0..3 {
                let stepped = self.with_slot(instance, |slot| {
                    let now = self.clock.now();
                    self.step_slot(slot, now, |step| {
                        step.apply(Change::Done { seqs: &done });
                        // Where the messages went, in the same commit (see `correlate.rs`).
                        for d in &delivered {
                            step.apply(Change::Between(Box::new(d.clone())));
                        }
                        Ok(())
                    })
                });
                match stepped {
                    Ok(s) if matches!(s.result, Err(ExecError::Conflict(_))) => continue,
                    Ok(s) => {
                        if let Some(f) = self.tell(&s.events) {
                            failure.get_or_insert(f);
                        }
                        break;
                    }
                    _ => break,
                }
            }
        }
        failure
    }

    /// Reads an instance this engine does not hold from the store (one another engine started,
    /// or a completed one this engine let go) and keeps it.
    fn read_stored(&self, id: InstanceId) -> Result<Arc<Mutex<Slot>>, ExecError> {
        self.fetch(id, |_| true)?
            .ok_or(ExecError::UnknownInstance(id))
    }

    /// Reads an instance from the store and keeps it when `wanted` says so (and it fits its
    /// definition, deployed again from the store when another engine deployed it since this
    /// one opened). `None`: the store does not have it, or it was not wanted.
    pub(crate) fn fetch(
        &self,
        id: InstanceId,
        wanted: impl FnOnce(&StoredInstance) -> bool,
    ) -> Result<Option<Arc<Mutex<Slot>>>, ExecError> {
        let Some(store) = &self.store else {
            return Err(ExecError::UnknownInstance(id));
        };
        let let_go = lock(self.shard(id)).let_go_count();
        let Some(stored) = store.read(id)?.filter(|s| wanted(s)) else {
            return Ok(None);
        };
        self.keep_read(stored, let_go).map(Some)
    }

    /// How many slots each shard let go so far, by shard: counted before a read of instances
    /// not known in advance, for [`Engine::keep_read`].
    pub(crate) fn let_go_counts(&self) -> Vec<u64> {
        self.shards
            .iter()
            .map(|shard| lock(shard).let_go_count())
            .collect()
    }

    /// Keeps an instance read from the store after its shard had let `let_go` slots go (see
    /// [`Engine::fetch`]), deploying its definition from the store when another engine
    /// deployed it after this one opened.
    pub(crate) fn keep_read(
        &self,
        stored: StoredInstance,
        let_go: u64,
    ) -> Result<Arc<Mutex<Slot>>, ExecError> {
        self.deploy_stored_for(&stored)?;
        self.keep(stored, Again::UnlessSince(let_go))
    }

    /// Deploys the definitions the store holds when `stored` runs one this engine has not
    /// deployed (another engine deployed it after this one opened).
    pub(crate) fn deploy_stored_for(&self, stored: &StoredInstance) -> Result<(), ExecError> {
        if let Some(key) = stored.instance.def.as_deref()
            && find(&self.defs.load(), &key.id, Some(key.version)).is_err()
        {
            self.load_definitions()?;
        }
        Ok(())
    }

    /// Keeps a stored instance (replacing an older copy of it) and schedules its pending
    /// timers; gives its slot.
    ///
    /// # Errors
    /// [`ExecError::UnknownProcess`] when its definition is not deployed;
    /// [`ExecError::Store`] with [`StoreError::Decode`] when the state does not fit it.
    pub(crate) fn adopt(&self, stored: StoredInstance) -> Result<Arc<Mutex<Slot>>, ExecError> {
        self.keep(stored, Again::Always)
    }

    /// [`Engine::adopt`] for what an engine opening a store reads before it runs anything: no
    /// copy of an instance can have left its shard yet, so the instance is not read again (on
    /// PostgreSQL that read was two queries per running instance at every opening).
    pub(crate) fn adopt_opening(
        &self,
        stored: StoredInstance,
    ) -> Result<Arc<Mutex<Slot>>, ExecError> {
        self.keep(stored, Again::Never)
    }

    fn keep(&self, stored: StoredInstance, again: Again) -> Result<Arc<Mutex<Slot>>, ExecError> {
        let id = stored.instance.id;
        // The shard lock is never held while waiting for an instance's lock.
        let held = lock(self.shard(id)).get(id.0).cloned();
        if let Some(slot) = held {
            let (instance, dep, version) = self.fit(stored)?;
            self.replace_held(&mut lock(&slot), instance, dep, version);
            return Ok(slot);
        }
        let mut shard = lock(self.shard(id));
        if let Some(slot) = shard.get(id.0) {
            return Ok(Arc::clone(slot));
        }
        // Read again under the shard lock: a copy of the instance that left the shard since
        // `stored` was read left it after its last commit, so this read has that commit, and
        // no stale copy is ever put back. Not needed when nothing left the shard since the
        // read (`fetch`), nor for an opening engine's reads, as nothing of theirs can have
        // left yet.
        let read_again = match again {
            Again::Always => true,
            Again::Never => false,
            Again::UnlessSince(count) => shard.let_go_count() != count,
        };
        let stored = match &self.store {
            Some(store) if read_again => match store.read(id)? {
                Some(again) if again.version >= stored.version => again,
                _ => stored,
            },
            _ => stored,
        };
        let (instance, dep, version) = self.fit(stored)?;
        self.schedule_pending(&instance);
        if let Some(org) = &self.org {
            org.reindex(&instance, &dep.def);
        }
        if !dep.def.keys.is_empty() {
            self.index_keys(&instance, &dep.def);
        }
        let slot = Arc::new(Mutex::new(Slot::new(instance, dep, version)));
        shard.insert(id.0, Arc::clone(&slot));
        drop(shard);
        if self.config.cache.is_some() {
            self.trim(id);
        }
        Ok(slot)
    }

    /// A stored instance with its deployed definition, checked to fit it.
    ///
    /// # Errors
    /// [`ExecError::UnknownProcess`] when its definition is not deployed;
    /// [`ExecError::Store`] with [`StoreError::Decode`] when the state does not fit it.
    pub(crate) fn fit(
        &self,
        stored: StoredInstance,
    ) -> Result<(Instance, Arc<Deployed>, u64), ExecError> {
        let StoredInstance {
            mut instance,
            version,
        } = stored;
        let id = instance.id;
        let key = instance.def.as_deref().cloned().unwrap_or_default();
        let dep = find(&self.defs.load(), &key.id, Some(key.version))
            .cloned()
            .map_err(|_| ExecError::UnknownProcess {
                id: key.id.clone(),
                version: Some(key.version),
            })?;
        instance
            .check(&dep.def)
            .map_err(|detail| StoreError::Decode {
                what: format!("instance {id} of {key}"),
                detail,
            })?;
        instance.def = Some(Arc::clone(&dep.key));
        Ok((instance, dep, version))
    }

    /// Checks a task is open and gives its node; on a stale copy (another engine sharing the
    /// store moved the instance on) reads the stored state first.
    pub(crate) fn open_task(&self, slot: &mut Slot, task: TaskId) -> Result<NodeId, ExecError> {
        let open = |slot: &Slot| {
            slot.inst
                .tasks
                .get(task.seq as usize)
                .filter(|t| matches!(t.state, crate::model::TaskState::Open))
                .map(|t| t.node)
        };
        if let Some(node) = open(slot) {
            return Ok(node);
        }
        if self.refresh(slot)
            && let Some(node) = open(slot)
        {
            return Ok(node);
        }
        let t = slot
            .inst
            .tasks
            .get(task.seq as usize)
            .ok_or(ExecError::UnknownTask(task))?;
        let node = slot.dep.node(t.node);
        match t.state {
            crate::model::TaskState::Open => Ok(node.id),
            crate::model::TaskState::TimedOut { .. } => Err(ExecError::TaskClosed {
                task,
                node,
                state: "timed out",
            }),
            crate::model::TaskState::Cancelled { .. } => Err(ExecError::TaskClosed {
                task,
                node,
                state: "cancelled",
            }),
            _ => Err(ExecError::TaskClosed {
                task,
                node,
                state: "already completed",
            }),
        }
    }
}

/// The follow-ups a call added (numbered from `first`), for running after its commit. Without a
/// store they leave the outbox now: nothing needs to know they ran.
fn fresh(inst: &mut Instance, first: u64, take: bool) -> Vec<Pending> {
    let Some(outbox) = inst.rare.as_deref_mut().map(|r| &mut r.outbox) else {
        return Vec::new();
    };
    if take {
        let keep = outbox.pending.iter().take_while(|p| p.seq < first).count();
        outbox.pending.split_off(keep)
    } else {
        outbox
            .pending
            .iter()
            .filter(|p| p.seq >= first)
            .cloned()
            .collect()
    }
}
