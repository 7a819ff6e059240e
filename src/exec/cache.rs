//! What an engine on a store holds of the stored instances, and what it reads from the store
//! instead: the bounded cache ([`Config::cache`](super::Config::cache)), opening without
//! loading every running instance, and the queries that list instances the engine does not
//! hold (another engine sharing the store started them, or the cache let them go).
//!
//! **Invariant:** an instance leaves the engine only under its own lock, retired
//! ([`Slot::retire`]) and after its last commit, so a caller that finds it gone reads it back
//! from the store as that commit left it. Without a store nothing leaves.

use std::sync::{Arc, Mutex};

use super::deploy::Deployed;
use super::seam::Slot;
use super::{Engine, ExecError, SHARDS, TaskView, lock, open_tasks};
use crate::ids::{InstanceId, RoleId};
use crate::model::{Instance, Task};
use crate::raci::Actor;
use crate::store::StoredInstance;

/// How many slots of a shard the cache looks at for one to let go, at most, per insertion.
const LOOK: usize = 8;

/// How many instances a work list reads from the store per [`Store::read_many`].
///
/// [`Store::read_many`]: crate::store::Store::read_many
const READ_BATCH: usize = 1_000;

impl Engine {
    /// With a bounded cache and a store: after an instance was put into its shard, lets other
    /// instances of that shard go until the shard holds at most its share of the capacity.
    /// The slots let go are those the shard's table yields first (an arbitrary order: random
    /// replacement) among those that are not locked now and have no follow-ups left to run.
    /// A waiting receiver of messages leaves the correlation index with it; a message finds
    /// it again through the store's key table. At most [`LOOK`] slots are looked at per call.
    pub(crate) fn trim(&self, kept: InstanceId) {
        let Some(capacity) = self.config.cache else {
            return;
        };
        if self.store.is_none() {
            return;
        }
        let share = (capacity / SHARDS).max(1);
        let mut gone = Vec::new();
        {
            let mut shard = lock(self.shard(kept));
            let Some(excess) = shard.len().checked_sub(share).filter(|n| *n > 0) else {
                return;
            };
            let mut victims = Vec::new();
            for (n, slot) in shard.iter().filter(|(n, _)| *n != kept.0).take(LOOK) {
                if victims.len() >= excess {
                    break;
                }
                // Never waits for an instance's lock under the shard lock.
                let Ok(mut guard) = slot.try_lock() else {
                    continue;
                };
                if guard.is_retired() || !guard.inst.pending().is_empty() {
                    continue;
                }
                guard.retire();
                victims.push(n);
            }
            for n in victims {
                gone.extend(shard.let_go(n));
            }
        }
        for slot in gone {
            let guard = lock(&slot);
            if let Some(org) = &self.org {
                org.forget(guard.inst.id);
            }
            if !guard.dep.def.keys.is_empty() {
                self.unindex_keys(&guard.inst, &guard.dep.def);
            }
            if !guard.dep.def.correlated.is_empty() {
                self.unindex_waits(&guard);
            }
        }
    }

    /// Whether the engine holds `id` now (read without its lock: a hint).
    pub(crate) fn holds(&self, id: InstanceId) -> bool {
        lock(self.shard(id)).contains_key(id.0)
    }

    /// The store, when the engine may not hold every running instance it keeps: other engines
    /// share it, or the bounded cache ([`Config::cache`](super::Config::cache)) lets
    /// instances go. Then receivers and timers are looked up in the store too.
    pub(crate) fn partial_store(&self) -> Option<&Arc<dyn crate::store::Store>> {
        self.store
            .as_ref()
            .filter(|s| s.is_shared() || self.config.cache.is_some())
    }

    /// With a store: the running instances the store holds that this engine does not hold, or
    /// holds at an older version (another engine committed since), by id. Empty without a
    /// store, or when the store cannot be read now.
    pub(crate) fn stored_elsewhere(&self) -> Vec<u64> {
        let Some(store) = &self.store else {
            return Vec::new();
        };
        let Ok(running) = store.running_ids(None) else {
            return Vec::new();
        };
        self.not_current(running)
    }

    /// Of `stored` (ids with their stored versions, by id), those this engine does not hold, or
    /// holds at an older version, by id.
    fn not_current(&self, stored: Vec<(InstanceId, u64)>) -> Vec<u64> {
        stored
            .into_iter()
            .filter(|(id, version)| {
                let held = lock(self.shard(*id)).get(id.0).cloned();
                held.is_none_or(|slot| {
                    let slot = lock(&slot);
                    slot.is_retired() || slot.version < *version
                })
            })
            .map(|(id, _)| id.0)
            .collect()
    }

    /// Gives instances a store migrated from before it indexed offers (SQLite schema 9,
    /// PostgreSQL schema 5) the offers of their open tasks ([`Store::offered`]): until then each
    /// of them carries the offer every query matches, and every work list on a shared store or
    /// with a bounded cache reads it. Looks at up to `limit` of them per call, each read once
    /// from the store and written back only where its stored version has not moved since
    /// ([`Store::reoffer`]); a call goes on where the one before stopped. Gives how many it
    /// looked at: 0 when none is left (then `tick` stops asking). An instance of a definition
    /// this engine cannot load keeps the offer every query matches: the work lists stay right,
    /// only slower.
    ///
    /// [`tick`](Engine::tick) runs it, 1,000 instances at a time, until none is left: a host
    /// with a [`TimerDriver`](crate::TimerDriver) need not call it. Engines sharing a store may
    /// all run it: each write is conditional on the version read.
    ///
    /// # Errors
    /// [`ExecError::Store`]: the batch is written whole or not at all; the next call reads it
    /// again.
    ///
    /// [`Store::offered`]: crate::store::Store::offered
    /// [`Store::reoffer`]: crate::store::Store::reoffer
    pub fn backfill_offers(&self, limit: usize) -> Result<usize, ExecError> {
        let Some(store) = &self.store else {
            return Ok(0);
        };
        let mut cursor = lock(&self.backfill);
        let stored = store.unoffered(cursor.0, limit)?;
        let Some(last) = stored.last().map(|s| s.instance.id) else {
            cursor.1 = true;
            return Ok(0);
        };
        let looked = stored.len();
        let offers: Vec<_> = stored
            .into_iter()
            .filter_map(|stored| self.detached(stored).ok())
            .map(|slot| {
                (
                    slot.inst.id,
                    slot.version,
                    self.offers(&slot.dep, &slot.inst),
                )
            })
            .collect();
        store.reoffer(&offers)?;
        cursor.0 = Some(last);
        Ok(looked)
    }

    /// [`Engine::backfill_offers`] from `tick`: one batch while any is left. A failure is
    /// logged and left for the next tick.
    pub(crate) fn backfill_in_tick(&self) {
        const BATCH: usize = 1_000;
        if self.store.is_some() && !lock(&self.backfill).1 {
            crate::telemetry::backfilled(&self.backfill_offers(BATCH));
        }
    }

    /// A stored instance as a slot this engine does not keep (for a query): checked against
    /// its definition, deployed again from the store when another engine deployed it since.
    fn detached(&self, stored: StoredInstance) -> Result<Slot, ExecError> {
        let (inst, dep, version) = self.fitted(stored)?;
        Ok(Slot::new(inst, dep, version))
    }

    /// [`Engine::fit`], deploying the definitions from the store first when another engine
    /// deployed the instance's after this one opened.
    fn fitted(&self, stored: StoredInstance) -> Result<(Instance, Arc<Deployed>, u64), ExecError> {
        self.deploy_stored_for(&stored)?;
        self.fit(stored)
    }

    /// The slot of `stored`'s instance when this engine holds it at an older version (another
    /// engine committed since); `None` when it does not hold it, or holds it current or retired
    /// (whose version counts past every stored one).
    fn held_older(&self, stored: &StoredInstance) -> Option<Arc<Mutex<Slot>>> {
        let id = stored.instance.id;
        let held = lock(self.shard(id)).get(id.0).cloned()?;
        let older = lock(&held).version < stored.version;
        older.then_some(held)
    }

    /// Takes the stored state into the [`held_older`](Engine::held_older) copy, so that what
    /// the engine answers next about the instance is what the work list showed, and gives the
    /// open tasks it shows `actor` (none when the stored state does not fit its definition).
    fn adopted(&self, held: &Mutex<Slot>, stored: StoredInstance, actor: &Actor) -> Vec<TaskView> {
        let Ok((instance, dep, version)) = self.fitted(stored) else {
            return Vec::new();
        };
        let mut slot = lock(held);
        self.replace_held(&mut slot, instance, dep, version);
        self.offered(&slot, actor)
    }

    /// Adds to `out` (the work list of `actor` from the instances this engine holds) the open
    /// tasks of the instances the store holds that this engine does not hold, or holds at an
    /// older version (another engine committed since), read from the store. A store that indexes
    /// offers ([`Store::offered`](crate::store::Store::offered)) names the instances that may
    /// offer the actor a task, and only those are read; a listed task of an instance it does not
    /// name is dropped (its stored version offers the actor nothing). Otherwise every running
    /// instance not held current is read, and a listed task of one that no longer runs there
    /// is dropped.
    pub(crate) fn work_list_stored(&self, actor: &Actor, out: &mut Vec<TaskView>) {
        let Some(store) = &self.store else {
            return;
        };
        // The running instances that may show the actor a task: those the store names, or
        // every one. Without an organisation an engine cannot tell which units a scoped offer
        // (`role@unit`, written by an engine that has one) lies under for the actor, so with
        // scoped definitions deployed it asks for its roles in any unit.
        let offers = self.offers_to(actor);
        let offered = if self.org.is_none() && self.scoped_defs() {
            let roles: Vec<RoleId> = offers.into_iter().map(|o| o.role).collect();
            store.offered_anywhere(&roles)
        } else {
            store.offered(&offers)
        };
        let found = match offered {
            Ok(Some(found)) => found,
            Ok(None) => match store.running_ids(None) {
                Ok(running) => running,
                Err(_) => return,
            },
            // Unreadable now: the list shows what the engine holds.
            Err(_) => return,
        };
        // A held instance the store does not name offers the actor nothing at its stored
        // version (or finished there).
        out.retain(|t| {
            found
                .binary_search_by_key(&t.id.instance, |(id, _)| *id)
                .is_ok()
        });
        let elsewhere = self.not_current(found);
        if elsewhere.is_empty() {
            return;
        }
        out.retain(|t| elsewhere.binary_search(&t.id.instance.0).is_err());
        // Read a thousand at a time (one round trip each on a server). Instances that cannot
        // be read now (or no longer fit their definition) are left out; a call on one says why.
        let elsewhere: Vec<InstanceId> = elsewhere.into_iter().map(InstanceId).collect();
        for ids in elsewhere.chunks(READ_BATCH) {
            let Ok(stored) = store.read_many(ids) else {
                continue;
            };
            for stored in stored {
                if let Some(held) = self.held_older(&stored) {
                    out.extend(self.adopted(&held, stored, actor));
                } else if let Ok(slot) = self.detached(stored) {
                    out.extend(self.offered(&slot, actor));
                }
            }
        }
    }

    /// Whether a node of a deployed definition passes `f`.
    fn any_deployed_node(&self, f: impl Fn(&crate::def::Node) -> bool) -> bool {
        self.defs
            .load()
            .values()
            .flat_map(|v| v.values())
            .any(|dep| dep.def.nodes.iter().any(&f))
    }

    /// Whether a deployed definition escalates a task one level up (`role@up`).
    fn escalates_up(&self) -> bool {
        self.any_deployed_node(|n| {
            n.limits
                .as_deref()
                .is_some_and(|l| l.escalate.iter().any(|e| e.up))
        })
    }

    /// Whether a deployed definition scopes a role reference to a unit (`role@variable`).
    fn scoped_defs(&self) -> bool {
        self.any_deployed_node(|n| n.raci().is_some_and(|r| !r.scopes.is_empty()))
    }

    /// The offers whose instances may show `actor` a task ([`Store::offered`]): with an
    /// organisation, each role it holds unscoped and scoped to every unit its work list reaches;
    /// without one, each role it lists or that the authorizer says it holds among the roles of
    /// the deployed definitions.
    ///
    /// [`Store::offered`]: crate::store::Store::offered
    fn offers_to(&self, actor: &Actor) -> Vec<crate::store::Offer> {
        use crate::store::Offer;
        let mut out: Vec<Offer> = actor
            .roles
            .iter()
            .map(|role| Offer {
                role: role.clone(),
                unit: None,
            })
            .collect();
        match &self.org {
            Some(cx) => {
                // Tasks escalated one level up are offered by the unit below
                // (`role@^unit`): ask for the children of each unit the actor reaches.
                let up = self.escalates_up();
                for (role, unit) in cx.org.reach_named(actor.id.as_str()) {
                    out.push(Offer {
                        role: role.clone(),
                        unit: None,
                    });
                    out.push(Offer {
                        role: role.clone(),
                        unit: Some(unit.to_owned()),
                    });
                    if up {
                        out.extend(cx.org.children(unit).map(|child| Offer {
                            role: role.clone(),
                            unit: Some(format!("{}{child}", super::allot::ABOVE)),
                        }));
                    }
                }
            }
            None => {
                let catalog = self.defs.load();
                for dep in catalog.values().flat_map(|versions| versions.values()) {
                    for role in dep.def.roles.keys() {
                        if self.authorizer.holds(role, actor) {
                            out.push(Offer {
                                role: role.clone(),
                                unit: None,
                            });
                        }
                    }
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The open tasks of a running instance that the work list of `actor` shows; none of one
    /// that finished.
    fn offered(&self, slot: &Slot, actor: &Actor) -> Vec<TaskView> {
        if slot.inst.status != crate::model::Status::Running {
            return Vec::new();
        }
        open_tasks(slot, |t| self.may_list(slot, t, actor))
    }

    /// The open tasks of one instance that the work list of `actor` ([`Engine::work_list`])
    /// shows, in the instance's task order: for a caller that keeps work lists of its own and
    /// reads again only the instances that changed (a simulation hearing the store's commits,
    /// a console hearing an instance's events), instead of every running instance at every
    /// reading. Empty for an instance that is not running or not known, and from a handler or
    /// veto.
    ///
    /// On a store that other engines share ([`Store::is_shared`](crate::store::Store::is_shared)), or
    /// for an instance this engine does not hold, the instance is read from the store (and
    /// not kept) unless this engine holds it at the stored version.
    ///
    /// Complexity: one lookup of the instance and a scan of its tasks, plus a store read when
    /// not held (or on a shared store).
    pub fn work_list_of(&self, instance: InstanceId, actor: &Actor) -> Vec<TaskView> {
        crate::telemetry::call!("work_list_of", instance = %instance, actor = %actor.id);
        if super::seam::busy().is_some() {
            return Vec::new();
        }
        let held = lock(self.shard(instance)).get(instance.0).cloned();
        if let Some(offered) = self.current(held.as_ref(), |slot| self.offered(slot, actor)) {
            return offered;
        }
        let Some(store) = &self.store else {
            return Vec::new();
        };
        // An instance that cannot be read now (or no longer fits its definition) is left out,
        // as in the work list; a call on it says why.
        let Ok(Some(stored)) = store.read(instance) else {
            return Vec::new();
        };
        if let Some(held) = &held {
            let slot = lock(held);
            if !slot.is_retired() && slot.version >= stored.version {
                return self.offered(&slot, actor);
            }
            // Older (a retired slot's version counts past every stored one).
            if slot.version < stored.version {
                drop(slot);
                return self.adopted(held, stored, actor);
            }
        }
        match self.detached(stored) {
            Ok(slot) => self.offered(&slot, actor),
            Err(_) => Vec::new(),
        }
    }

    /// [`Engine::work_list_of`] for a team of at most 64 actors at once: each open task of
    /// `instance` that the work list of one of `actors` at least shows, with the set of those
    /// actors (bit `k` for `actors[k]`), in the instance's task order. One lookup and one view
    /// per task, instead of one per actor: for a caller that keeps one work list for a team
    /// (a simulation's staff group, in memory). Actors past the 64th are left out. Empty for an
    /// instance this engine does not hold current (one a store must be read for: ask
    /// [`Engine::work_list_of`]).
    #[cfg(feature = "cli")] // What-if alone asks it.
    pub(crate) fn work_lists_of(
        &self,
        instance: InstanceId,
        actors: &[Actor],
    ) -> Vec<(TaskView, u64)> {
        if super::seam::busy().is_some() {
            return Vec::new();
        }
        let actors = &actors[..actors.len().min(64)];
        let held = lock(self.shard(instance)).get(instance.0).cloned();
        self.current(held.as_ref(), |slot| {
            if slot.inst.status != crate::model::Status::Running {
                return Vec::new();
            }
            slot.inst
                .tasks
                .iter()
                .filter(|t| t.is_open())
                .filter_map(|t| {
                    let who = actors.iter().enumerate().fold(0u64, |who, (k, a)| {
                        if self.may_list(slot, t, a) {
                            who | 1 << k
                        } else {
                            who
                        }
                    });
                    (who != 0).then(|| (super::task_view(slot, t), who))
                })
                .collect()
        })
        .unwrap_or_default()
    }

    /// `f` of `held` when it is current: this engine holds it (not retired) and no other
    /// engine shares the store; `None` when it must be read from the store.
    fn current<T>(&self, held: Option<&Arc<Mutex<Slot>>>, f: impl FnOnce(&Slot) -> T) -> Option<T> {
        let shared = self.store.as_ref().is_some_and(|s| s.is_shared());
        let slot = lock(held?);
        (!slot.is_retired() && !shared).then(|| f(&slot))
    }

    /// Whether the work list of `actor` could ever show a task at `node` of `def`: `false`
    /// only when it holds none of the node's responsible roles and none of the roles an
    /// escalation can give the task to. Always `true` with an organisation (whose scopes and
    /// skills it does not weigh).
    #[cfg(feature = "cli")] // What-if alone asks it.
    pub(crate) fn may_ever_list(
        &self,
        def: &crate::def::ProcessDef,
        node: crate::ids::NodeId,
        actor: &Actor,
    ) -> bool {
        if self.org.is_some() {
            return true;
        }
        let Some(n) = def.try_node(node) else {
            return true;
        };
        let responsible = n.raci().is_some_and(|r| {
            r.responsible()
                .iter()
                .any(|role| self.authorizer.holds(role, actor))
        });
        responsible
            || n.limits.as_deref().is_some_and(|l| {
                l.escalate.iter().any(|e| {
                    matches!(e.action, crate::def::timers::Ladder::Reassign)
                        && self.authorizer.holds(&e.to, actor)
                })
            })
    }

    /// Whether the work list of `actor` shows open task `t` of `slot`.
    pub(crate) fn may_list(&self, slot: &Slot, t: &Task, actor: &Actor) -> bool {
        if self.org.is_some() {
            return self.may_work(slot, t, actor);
        }
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
        responsible
            && t.claimed_by.as_ref().is_none_or(|c| **c == *actor.id)
            && super::rework::enabled(&slot.dep.def, &slot.inst, t.node)
            && super::lifecycle::offered(slot, t, actor)
    }
}
