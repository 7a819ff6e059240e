//! The engine's side of the organisation model: authorization in context (scoped role
//! references, `role@up` escalations, required skills), automatic allocation when a task opens
//! (`allocate: round_robin | shortest_queue`), and the work-list index by role and unit.
//!
//! Engines without an organisation pay nothing here but one context built per role check:
//! allocation needs `ProcessDef::auto_allocating`, and the index exists only with an organisation.
//!
//! State kept engine-side, in memory: the round-robin cursors (one per definition version, task
//! node and scope unit) and the index. After a restart ([`EngineBuilder::open`](crate::EngineBuilder::open))
//! the cursors start again from the first eligible person; the index is rebuilt from the
//! instances the engine resumes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::step::{Change, Step};
use super::{Engine, ExecError, SHARDS, TaskView, lock, open_tasks, rework};
use crate::def::Node;
use crate::def::timers::Ladder;
use crate::ids::{ActorId, InstanceId, NodeId, RoleId, TaskId};
use crate::model::{Entry, Event, Instance, Task};
use crate::org::{Allocation, Fast, Organisation};
use crate::raci::{Actor, AuthContext, Authorizer, Raci};
use crate::vars::Vars;

/// The organisation as the default authorizer of an engine built with one.
pub(super) struct OrgAuthorizer(pub(super) Arc<Organisation>);

impl Authorizer for OrgAuthorizer {
    fn holds(&self, role: &RoleId, actor: &Actor) -> bool {
        self.0.holds(role, actor)
    }

    fn allows(&self, role: &RoleId, actor: &Actor, cx: &AuthContext<'_>) -> bool {
        self.0.allows(role, actor, cx)
    }
}

/// An index key: a role of the organisation and the unit a task's reference to it is scoped to
/// (their positions in the organisation; [`UNSCOPED`] or [`NO_UNIT`] for the unit).
type Key = (u32, u32);

/// The unit of an unscoped reference.
const UNSCOPED: u32 = u32::MAX;
/// The unit of a reference scoped to a unit the organisation does not have (or to nothing).
const NO_UNIT: u32 = u32::MAX - 1;
/// The role of a reference to a role the organisation does not have.
const NO_ROLE: u32 = u32::MAX;

/// One open task as the index holds it.
#[derive(Clone, PartialEq, Eq)]
struct Indexed {
    seq: u32,
    escalated: Option<u16>,
    claimant: Option<ActorId>,
    keys: Vec<Key>,
}

#[derive(Default)]
struct IndexShard {
    by_key: HashMap<Key, HashSet<(u64, u32), Fast>, Fast>,
    of_instance: HashMap<u64, Vec<Indexed>, Fast>,
}

/// An engine's organisation, its allocation cursors and its work-list index.
pub(crate) struct OrgCx {
    pub(crate) org: Arc<Organisation>,
    /// Round-robin cursors by (process id, version, node, scope unit): each pool its own turn.
    cursors: Mutex<HashMap<(String, u32, u32, String), usize>>,
    /// Open tasks claimed, per person (for `shortest_queue`).
    load: Mutex<HashMap<ActorId, u32>>,
    shards: Box<[Mutex<IndexShard>]>,
}

impl OrgCx {
    pub(super) fn new(org: Arc<Organisation>) -> OrgCx {
        OrgCx {
            org,
            cursors: Mutex::new(HashMap::new()),
            load: Mutex::new(HashMap::new()),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(IndexShard::default()))
                .collect(),
        }
    }

    fn shard(&self, id: InstanceId) -> &Mutex<IndexShard> {
        &self.shards[(id.0 % SHARDS as u64) as usize]
    }

    /// Brings the index up to date with an instance's open tasks (after a commit, or when an
    /// instance is resumed).
    pub(super) fn reindex(&self, inst: &Instance, def: &crate::def::ProcessDef) {
        let mut shard = lock(self.shard(inst.id));
        let old = shard.of_instance.get(&inst.id.0);
        let open = inst.tasks.iter().filter(|t| t.is_open());
        // Unchanged (same open tasks, claims and escalations): nothing to do.
        if let Some(old) = old
            && old.len() == open.clone().count()
            && old.iter().zip(open.clone()).all(|(o, t)| {
                o.seq == t.seq && o.escalated == t.escalated_to && o.claimant == t.claimed_by
            })
        {
            return;
        }
        if old.is_none() && open.clone().next().is_none() {
            return;
        }
        let new: Vec<Indexed> = open
            .map(|t| {
                let keep = old.and_then(|o| {
                    o.iter()
                        .find(|x| x.seq == t.seq && x.escalated == t.escalated_to)
                });
                Indexed {
                    seq: t.seq,
                    escalated: t.escalated_to,
                    claimant: t.claimed_by.clone(),
                    keys: match keep {
                        Some(k) => k.keys.clone(),
                        None => keys_of(&self.org, def, inst, t),
                    },
                }
            })
            .collect();
        let old = shard.of_instance.remove(&inst.id.0).unwrap_or_default();
        let claims = old.iter().chain(&new).any(|x| x.claimant.is_some());
        let mut load = claims.then(|| lock(&self.load));
        for o in &old {
            for k in &o.keys {
                if let Some(set) = shard.by_key.get_mut(k) {
                    set.remove(&(inst.id.0, o.seq));
                    if set.is_empty() {
                        shard.by_key.remove(k);
                    }
                }
            }
            if let (Some(c), Some(load)) = (&o.claimant, load.as_mut())
                && let Some(n) = load.get_mut(c)
            {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    load.remove(c);
                }
            }
        }
        for n in &new {
            for k in &n.keys {
                shard
                    .by_key
                    .entry(*k)
                    .or_default()
                    .insert((inst.id.0, n.seq));
            }
            if let (Some(c), Some(load)) = (&n.claimant, load.as_mut()) {
                *load.entry(c.clone()).or_default() += 1;
            }
        }
        if !new.is_empty() {
            shard.of_instance.insert(inst.id.0, new);
        }
    }

    /// Drops an instance from the index (removed from the engine).
    pub(super) fn forget(&self, id: InstanceId) {
        let mut shard = lock(self.shard(id));
        let Some(old) = shard.of_instance.remove(&id.0) else {
            return;
        };
        for o in &old {
            for k in &o.keys {
                if let Some(set) = shard.by_key.get_mut(k) {
                    set.remove(&(id.0, o.seq));
                    if set.is_empty() {
                        shard.by_key.remove(k);
                    }
                }
            }
        }
        let mut load = lock(&self.load);
        for c in old.iter().filter_map(|o| o.claimant.as_ref()) {
            if let Some(n) = load.get_mut(c) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    load.remove(c);
                }
            }
        }
    }

    /// How many open tasks `person` has claimed, across the engine.
    fn load_of(&self, person: &ActorId) -> u32 {
        lock(&self.load).get(person).copied().unwrap_or(0)
    }
}

/// The index keys of an open task: each role that may work it, with the unit its reference is
/// scoped to.
fn keys_of(
    org: &Organisation,
    def: &crate::def::ProcessDef,
    inst: &Instance,
    t: &Task,
) -> Vec<Key> {
    task_roles(Some(org), def, inst, t)
        .map(|(r, scope)| {
            let role = org.role_index(r.as_str()).unwrap_or(NO_ROLE);
            let unit = match scope {
                Scope::Unscoped => UNSCOPED,
                Scope::Unit(u) => org.unit_index(u).unwrap_or(NO_UNIT),
                Scope::Above(u) => org
                    .parent(u)
                    .and_then(|p| org.unit_index(p))
                    .unwrap_or(NO_UNIT),
            };
            (role, unit)
        })
        .collect()
}

/// Where a task's reference to a role lies in the organisation.
#[derive(Clone, Copy)]
enum Scope<'a> {
    /// Not scoped (and every reference of an engine without an organisation).
    Unscoped,
    /// In this unit (`""` when the scope variable names no unit of the organisation: no
    /// actor's reach holds it).
    Unit(&'a str),
    /// One level above this unit: an escalation `role@up` gave the task there.
    Above(&'a str),
}

/// The roles that may work open task `t` (its responsible roles, or the one an escalation gave
/// it to), each with where its reference is scoped: always unscoped without an organisation,
/// whose authorizer counts a role as held in every unit.
fn task_roles<'a>(
    org: Option<&'a Organisation>,
    def: &'a crate::def::ProcessDef,
    inst: &'a Instance,
    t: &Task,
) -> impl Iterator<Item = (&'a RoleId, Scope<'a>)> {
    let node = &def.nodes[t.node.index()];
    let raci = node.raci();
    let escalated = t
        .escalated_to
        .and_then(|i| def.roles.get_index(i as usize))
        .map(|(r, _)| r);
    let roles: &'a [RoleId] = match (raci, escalated) {
        (None, _) => &[],
        (Some(_), Some(r)) => std::slice::from_ref(r),
        (Some(raci), None) => raci.responsible(),
    };
    roles.iter().map(move |r| {
        let scope = match (org, raci) {
            (Some(org), Some(raci)) => {
                let up = escalated == Some(r) && escalated_up(node, r);
                // The scope's own unit (without an organisation `scope_unit` does not go up).
                match scope_unit(None, raci, r, &inst.vars, up) {
                    None => Scope::Unscoped,
                    // A value that names no unit lies under no actor's reach: offered as no
                    // unit, so that an offer is a short text whatever the variable holds
                    // (PostgreSQL indexes at most 2,704 bytes, and no U+0000).
                    Some(unit) if org.unit(unit).is_none() => Scope::Unit(""),
                    Some(unit) if up => Scope::Above(unit),
                    Some(unit) => Scope::Unit(unit),
                }
            }
            _ => Scope::Unscoped,
        };
        (r, scope)
    })
}

/// What marks an offer's unit as the one below the unit the task was escalated to
/// (`role@^unit`); unit ids never hold it.
pub(super) const ABOVE: char = '^';

/// The roles the open tasks of running instance `inst` are offered to, sorted and without
/// repeats ([`Offer`]): what a store indexes for work lists ([`Store::offered`]). None for an
/// instance that is not running.
///
/// [`Offer`]: crate::store::Offer
/// [`Store::offered`]: crate::store::Store::offered
pub(super) fn offers(
    org: Option<&Organisation>,
    def: &crate::def::ProcessDef,
    inst: &Instance,
) -> Vec<crate::store::Offer> {
    if inst.status != crate::model::Status::Running {
        return Vec::new();
    }
    let mut out: Vec<crate::store::Offer> = inst
        .tasks
        .iter()
        .filter(|t| t.is_open())
        .flat_map(|t| task_roles(org, def, inst, t))
        .map(|(role, scope)| crate::store::Offer {
            role: role.clone(),
            unit: match scope {
                Scope::Unscoped => None,
                Scope::Unit(unit) => Some(unit.to_owned()),
                // Named by the unit below, not the parent: a work list asks for the children
                // of the units its actor reaches, in its own organisation, so that a unit
                // moved to another parent takes its escalated tasks along at once.
                Scope::Above(unit) => Some(format!("{ABOVE}{unit}")),
            },
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether a task's escalation gave it to `role` one level up (`role@up`).
pub(super) fn escalated_up(node: &Node, role: &RoleId) -> bool {
    node.limits.as_deref().is_some_and(|l| {
        l.escalate
            .iter()
            .any(|e| e.up && e.to == *role && matches!(e.action, Ladder::Reassign))
    })
}

/// The unit a task's reference to `role` is scoped to: the value of its scope variable (for
/// `role@up`, that of the task's first scoped reference, and then the parent unit). `None` when
/// the reference is not scoped; `Some("")` when the variable is unset or not a string, or the
/// unit has no parent.
pub(super) fn scope_unit<'a>(
    org: Option<&'a Organisation>,
    raci: &'a Raci,
    role: &RoleId,
    vars: &'a Vars,
    up: bool,
) -> Option<&'a str> {
    let var = match raci.scope_of(role) {
        Some(v) => v,
        None if up => raci.scopes.first().map(|(_, v)| v.as_str())?,
        None => return None,
    };
    let base = vars.get(var).and_then(Value::as_str).unwrap_or("");
    if !up {
        return Some(base);
    }
    // Without an organisation the parent is unknown: the authorizer sees the scope's own unit.
    match org {
        Some(org) => Some(org.parent(base).unwrap_or("")),
        None => Some(base),
    }
}

/// What the organisation model changes on an instance (see [`Change::Org`]).
pub(crate) enum OrgChange<'c> {
    /// Allocation gave a task that just opened to a person: it is claimed for them.
    Allocated { task: u32, actor: ActorId },
    /// The accountable tried to reassign a task to someone who may not work it.
    ReassignRefused {
        task: u32,
        by: &'c ActorId,
        to: &'c ActorId,
        allowed: &'c [RoleId],
    },
    /// The actor lacks a skill the task requires.
    LacksSkills {
        task: u32,
        actor: &'c ActorId,
        action: crate::raci::Action,
        missing: &'c [String],
    },
}

impl Step<'_> {
    pub(super) fn apply_org(&mut self, change: OrgChange<'_>) {
        match change {
            OrgChange::Allocated { task, actor } => {
                self.inst.tasks[task as usize].claimed_by = Some(actor.clone());
                // An allocated task is claimed: its claim deadline is met.
                self.inst.timers.retain(|t| {
                    !(t.task == Some(task) && t.kind == crate::model::TimerKind::ClaimDue)
                });
                self.record(Entry::Allocated {
                    task,
                    actor: actor.clone(),
                });
                if self.heard() {
                    let (t, node) = (self.task_id(task), self.task_name(task));
                    self.emit(Event::TaskAllocated {
                        task: t,
                        node,
                        actor,
                    });
                }
            }
            OrgChange::ReassignRefused {
                task,
                by,
                to,
                allowed,
            } => {
                self.record(Entry::ReassignRefused {
                    task,
                    by: by.clone(),
                    to: to.clone(),
                });
                if self.heard() {
                    let (t, node) = (self.task_id(task), self.task_name(task));
                    self.emit(Event::AccessDenied {
                        task: t,
                        node,
                        actor: by.clone(),
                        action: crate::raci::Action::Reassign,
                        allowed: allowed.to_vec(),
                    });
                }
            }
            OrgChange::LacksSkills {
                task,
                actor,
                action,
                missing,
            } => {
                self.record(Entry::LacksSkills {
                    task,
                    actor: actor.clone(),
                    action,
                    missing: missing.iter().map(|s| Box::from(s.as_str())).collect(),
                });
                if self.heard() {
                    let (t, node) = (self.task_id(task), self.task_name(task));
                    self.emit(Event::AccessDenied {
                        task: t,
                        node,
                        actor: actor.clone(),
                        action,
                        allowed: Vec::new(),
                    });
                }
            }
        }
    }

    /// Opens the user task of token `i` at `at` for the person its `allocate:` rule picks.
    /// Nobody eligible is an incident naming the task (the token fails; a retry tries again),
    /// not a task nobody is offered.
    pub(super) fn open_allocated(
        &mut self,
        i: usize,
        at: NodeId,
        armed: &super::timers::Armed,
    ) -> Result<(), ExecError> {
        if self.org.is_none() {
            // Without an organisation there is nobody to pick: the task is offered to its
            // roles as any other.
            self.apply(Change::OpenTask { token: i });
            self.arm(armed);
            return Ok(());
        }
        // Nobody eligible: no task opens unassigned; the token fails with an incident naming
        // the task, and a retry tries again.
        let person = match self.pick(at) {
            Ok(p) => p,
            Err(message) => return Err(self.fail_node(i, at, message)),
        };
        self.apply(Change::OpenTask { token: i });
        self.arm(armed);
        let seq = self.inst.tasks.len() as u32 - 1;
        self.apply(Change::Org(OrgChange::Allocated {
            task: seq,
            actor: person,
        }));
        Ok(())
    }

    /// The person allocation picks for a task at `at`, or why nobody.
    fn pick(&self, at: NodeId) -> Result<ActorId, String> {
        let node = &self.dep.def.nodes[at.index()];
        let name = &node.id;
        let Some(cx) = self.org else {
            return Err(format!(
                "task '{name}' is allocated automatically, but the engine has no organisation"
            ));
        };
        let (Some(raci), Some(rule)) = (node.raci(), node.allocation()) else {
            return Err(format!("task '{name}' has no allocation rule"));
        };
        let skills = node.skills();
        let mut people: Vec<&crate::org::Person> = Vec::new();
        for role in raci.responsible() {
            let scope = scope_unit(Some(&cx.org), raci, role, &self.inst.vars, false);
            for p in cx.org.eligible(std::slice::from_ref(role), scope, skills) {
                if !people.iter().any(|q| std::ptr::eq(*q, p)) {
                    people.push(p);
                }
            }
        }
        if people.is_empty() {
            let roles: Vec<String> = raci
                .responsible()
                .iter()
                .map(
                    |r| match scope_unit(Some(&cx.org), raci, r, &self.inst.vars, false) {
                        Some(u) => format!("{r} in unit '{u}'"),
                        None => r.to_string(),
                    },
                )
                .collect();
            let skills = if skills.is_empty() {
                String::new()
            } else {
                format!(" with skills {}", skills.join(", "))
            };
            return Err(format!(
                "no eligible person for task '{name}': nobody holds {}{skills}",
                roles.join(" or ")
            ));
        }
        let chosen = match rule {
            Allocation::RoundRobin => {
                let unit = raci
                    .responsible()
                    .iter()
                    .find_map(|r| scope_unit(Some(&cx.org), raci, r, &self.inst.vars, false))
                    .unwrap_or("");
                let key = (
                    self.dep.key.id.clone(),
                    self.dep.key.version,
                    at.index() as u32,
                    unit.to_owned(),
                );
                let mut cursors = lock(&cx.cursors);
                let cursor = cursors.entry(key).or_insert(0);
                let chosen = people[*cursor % people.len()];
                *cursor = cursor.wrapping_add(1);
                chosen
            }
            Allocation::ShortestQueue => people
                .iter()
                .copied()
                .min_by_key(|p| cx.load_of(p.id()))
                .unwrap_or(people[0]),
        };
        Ok(chosen.id().clone())
    }
}

impl Engine {
    /// [`offers`] of `inst` with this engine's organisation.
    pub(super) fn offers(
        &self,
        dep: &super::deploy::Deployed,
        inst: &Instance,
    ) -> Vec<crate::store::Offer> {
        offers(self.org.as_ref().map(|o| &*o.org), &dep.def, inst)
    }

    /// Whether `actor` acts in `role` on task `task` at `node` of an instance with `vars`,
    /// with the task's scope (and escalation) in the context.
    #[allow(clippy::too_many_arguments)] // The pieces of one task, borrowed from its step.
    pub(super) fn allows(
        &self,
        node: &Node,
        raci: &Raci,
        vars: &Vars,
        task: TaskId,
        escalated: Option<&RoleId>,
        role: &RoleId,
        actor: &Actor,
    ) -> bool {
        if !self.contextual {
            // The default authorizer reads the actor's roles alone.
            return self.authorizer.holds(role, actor);
        }
        let mut cx = AuthContext::new(task, &node.id, vars);
        let up = escalated == Some(role) && escalated_up(node, role);
        if up || !raci.scopes.is_empty() {
            cx.unit = scope_unit(self.org.as_ref().map(|o| &*o.org), raci, role, vars, up);
        }
        self.authorizer.allows(role, actor, &cx)
    }

    /// The skills of `node` that `actor` lacks (all of them without an organisation).
    pub(super) fn missing_skills(&self, node: &Node, actor: &Actor) -> Vec<String> {
        let skills = node.skills();
        if skills.is_empty() {
            return Vec::new();
        }
        match &self.org {
            Some(cx) => skills
                .iter()
                .filter(|s| {
                    !cx.org
                        .has_skills(actor.id.as_str(), std::slice::from_ref(s))
                })
                .cloned()
                .collect(),
            None => skills.to_vec(),
        }
    }

    /// Refuses `action` when `actor` lacks a skill of the task, recording the refusal.
    pub(super) fn check_skills(
        &self,
        step: &mut Step<'_>,
        task: TaskId,
        node: NodeId,
        action: crate::raci::Action,
        actor: &Actor,
    ) -> Result<(), ExecError> {
        let missing = self.missing_skills(&step.dep.def.nodes[node.index()], actor);
        if missing.is_empty() {
            return Ok(());
        }
        step.apply(Change::Org(OrgChange::LacksSkills {
            task: task.seq,
            actor: &actor.id,
            action,
            missing: &missing,
        }));
        Err(ExecError::LacksSkills {
            actor: actor.id.clone(),
            action,
            task,
            node: step.dep.node(node),
            missing,
        })
    }

    /// Whether `actor` may work open task `t` of `slot` as the work list counts it.
    pub(super) fn may_work(&self, slot: &super::seam::Slot, t: &Task, actor: &Actor) -> bool {
        let def = &slot.dep.def;
        let node = &def.nodes[t.node.index()];
        let Some(raci) = node.raci() else {
            return false;
        };
        let escalated = t
            .escalated_to
            .and_then(|i| def.roles.get_index(i as usize))
            .map(|(r, _)| r);
        let id = t.id(slot.inst.id);
        let vars = &slot.inst.vars;
        // A task an escalation gave to a role is that role's work alone.
        let responsible = match escalated {
            Some(role) => self.allows(node, raci, vars, id, escalated, role, actor),
            None => raci
                .responsible()
                .iter()
                .any(|role| self.allows(node, raci, vars, id, None, role, actor)),
        };
        responsible
            && t.claimed_by.as_ref().is_none_or(|c| **c == *actor.id)
            && self.missing_skills(node, actor).is_empty()
            && rework::enabled(def, &slot.inst, t.node)
    }

    /// [`Engine::work_list`] through the index: the tasks keyed by a role the actor holds, in a
    /// unit at or above where they hold it (or unscoped), each checked as the scan checks it.
    pub(super) fn work_list_indexed(&self, cx: &OrgCx, actor: &Actor) -> Vec<TaskView> {
        let mut keys: Vec<Key> = Vec::new();
        let roles: Vec<u32> = match cx.org.actor(actor.id.as_str()) {
            Some(me) => me
                .roles
                .iter()
                .filter_map(|r| cx.org.role_index(r.as_str()))
                .collect(),
            None => actor
                .roles
                .iter()
                .filter_map(|r| cx.org.role_index(r.as_str()))
                .collect(),
        };
        for role in roles {
            keys.push((role, UNSCOPED));
        }
        keys.extend(cx.org.reach(actor.id.as_str()));
        let mut found: Vec<(u64, u32)> = Vec::new();
        for shard in &*cx.shards {
            let shard = lock(shard);
            for k in &keys {
                if let Some(set) = shard.by_key.get(k) {
                    found.extend(set.iter().copied());
                }
            }
        }
        found.sort_unstable();
        found.dedup();
        let mut out = Vec::new();
        let mut i = 0;
        while i < found.len() {
            let id = found[i].0;
            let mut seqs = Vec::new();
            while i < found.len() && found[i].0 == id {
                seqs.push(found[i].1);
                i += 1;
            }
            let slot = lock(self.shard(InstanceId(id))).get(id).cloned();
            let Some(slot) = slot else {
                continue;
            };
            let slot = lock(&slot);
            out.extend(open_tasks(&slot, |t| {
                seqs.contains(&t.seq) && self.may_work(&slot, t, actor)
            }));
        }
        // Unordered: `work_list` orders the whole list.
        out
    }
}
