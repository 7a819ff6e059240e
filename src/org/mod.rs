//! The organisation model: units in a tree (headquarters → province → local network → hall, or
//! any other levels), roles held by people in units (directly or through positions), and
//! skills. An engine given one ([`EngineBuilder::organisation`](crate::EngineBuilder::organisation))
//! looks actors up in it, checks scoped role references (`network_ops@local_network`) and
//! required skills against it, and allocates tasks among its people.
//!
//! **Invariant:** an [`Organisation`] is valid by construction (a tree: every unit reaches a
//! root; every post names a known unit and known roles; every skill is declared) and never
//! changes; engines share it by `Arc`. Like `raci`, this module sits below `def` and knows
//! nothing of definitions or the executor.

mod load;

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::path::{Path, PathBuf};

use crate::ids::{ActorId, RoleId};
use crate::raci::{Actor, AuthContext, Authorizer};
use crate::yaml::{LoadError, Problem, ProblemKind, parse_yaml};

/// A validated organisation: units, roles, skills and people. Immutable, `Send + Sync`.
///
/// # Examples
/// ```
/// let org = procflow::Organisation::from_yaml(r#"
/// organisation: demo
/// levels: [province, local_network]
/// units:
///   gd: { name: Guangdong, level: province }
///   gz: { name: Guangzhou, level: local_network, parent: gd }
/// roles: { network_ops: { name: Network operations } }
/// people:
///   chen: { name: Chen, posts: [{ unit: gz, roles: [network_ops] }] }
/// "#)?;
/// assert!(org.holds_in("chen", "network_ops", "gz"));
/// assert!(org.holds_in("chen", "network_ops", "gd")); // a unit below the scope counts
/// assert_eq!(org.parent("gz"), Some("gd"));
/// # Ok::<(), procflow::LoadError>(())
/// ```
#[derive(Debug)]
pub struct Organisation {
    id: String,
    name: Option<String>,
    name_zh: Option<String>,
    file: Option<PathBuf>,
    levels: Vec<String>,
    units: Vec<Unit>,
    unit_ix: HashMap<String, u32, Fast>,
    roles: Vec<RoleId>,
    skills: Vec<String>,
    people: Vec<Person>,
    person_ix: HashMap<String, u32, Fast>,
    /// Per role: (person, unit) for every holding, in people's file order.
    holders: HashMap<RoleId, Vec<(u32, u32)>>,
}

/// FNV-1a, folded by a multiplication: the organisation's lookups hash short ids on every task
/// call (SipHash was a third of a `complete` with an organisation). The maps hashed with it are
/// keyed by the organisation file's own ids or by small numbers, never filled from call input.
#[derive(Clone, Copy)]
pub(crate) struct FastHasher(u64);

impl Default for FastHasher {
    fn default() -> Self {
        FastHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        let p = u128::from(self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (p as u64) ^ ((p >> 64) as u64)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x0100_0000_01b3).rotate_left(29);
    }
}

/// Builds [`FastHasher`]s.
pub(crate) type Fast = BuildHasherDefault<FastHasher>;

/// A unit of the organisation (总部, 省公司, 本地网, 营业厅, ...).
#[derive(Clone, Debug)]
pub struct Unit {
    id: String,
    name: String,
    name_zh: Option<String>,
    level: Option<u32>,
    parent: Option<u32>,
    depth: u32,
}

impl Unit {
    /// The unit's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The unit's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The unit's Chinese name, if given.
    pub fn name_zh(&self) -> Option<&str> {
        self.name_zh.as_deref()
    }

    /// How many units are above it (0 for a root).
    pub fn depth(&self) -> u32 {
        self.depth
    }
}

/// A person of the organisation.
#[derive(Clone, Debug)]
pub struct Person {
    id: ActorId,
    name: String,
    holds: Vec<Holding>,
    skills: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Holding {
    role: RoleId,
    unit: u32,
}

impl Person {
    /// The person's id: the [`Actor::id`] they act under.
    pub fn id(&self) -> &ActorId {
        &self.id
    }

    /// The person's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Organisation {
    /// Parses and validates an organisation from YAML text.
    ///
    /// # Errors
    /// Every problem found, located: a unit cycle, an unknown parent, unit, role, position or
    /// skill, a repeated id.
    pub fn from_yaml(text: &str) -> Result<Organisation, LoadError> {
        load_org(text, None)
    }

    /// Reads and validates an organisation file. Problems name the file.
    ///
    /// # Errors
    /// The file cannot be read, or every problem found in it.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Organisation, LoadError> {
        let path = path.as_ref();
        let text = LoadError::read(path)?;
        load_org(&text, Some(path.to_owned()))
    }

    #[allow(clippy::too_many_arguments)] // Called once, by the loader, with what it validated.
    fn assemble(
        id: String,
        name: Option<String>,
        name_zh: Option<String>,
        file: Option<PathBuf>,
        levels: Vec<String>,
        units: Vec<Unit>,
        roles: Vec<RoleId>,
        skills: Vec<String>,
        people: Vec<Person>,
    ) -> Organisation {
        let unit_ix = units
            .iter()
            .enumerate()
            .map(|(i, u)| (u.id.clone(), i as u32))
            .collect();
        let person_ix = people
            .iter()
            .enumerate()
            .map(|(i, p)| (p.id.as_str().to_owned(), i as u32))
            .collect();
        let mut holders: HashMap<RoleId, Vec<(u32, u32)>> = HashMap::new();
        for (i, p) in people.iter().enumerate() {
            for h in &p.holds {
                holders
                    .entry(h.role.clone())
                    .or_default()
                    .push((i as u32, h.unit));
            }
        }
        Organisation {
            id,
            name,
            name_zh,
            file,
            levels,
            units,
            unit_ix,
            roles,
            skills,
            people,
            person_ix,
            holders,
        }
    }

    /// The organisation's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The organisation's name, if given.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The organisation's Chinese name, if given.
    pub fn name_zh(&self) -> Option<&str> {
        self.name_zh.as_deref()
    }

    /// The file it was loaded from.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The level names, top first.
    pub fn levels(&self) -> &[String] {
        &self.levels
    }

    /// The units, in file order.
    pub fn units(&self) -> &[Unit] {
        &self.units
    }

    /// The unit with id `id`.
    pub fn unit(&self, id: &str) -> Option<&Unit> {
        self.unit_ix.get(id).map(|&i| &self.units[i as usize])
    }

    /// The level name of a unit, if it has one.
    pub fn level_of(&self, unit: &str) -> Option<&str> {
        let u = self.unit(unit)?;
        u.level.map(|l| self.levels[l as usize].as_str())
    }

    /// The parent of unit `id` (`None` for a root or an unknown unit).
    pub fn parent(&self, id: &str) -> Option<&str> {
        let u = self.unit(id)?;
        u.parent.map(|p| self.units[p as usize].id.as_str())
    }

    /// The units whose parent is `id` (a scan of the units).
    pub(crate) fn children<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let parent = self.unit_ix.get(id).copied();
        self.units
            .iter()
            .filter(move |u| parent.is_some() && u.parent == parent)
            .map(|u| u.id.as_str())
    }

    /// The roles the organisation declares.
    pub fn roles(&self) -> &[RoleId] {
        &self.roles
    }

    /// Whether the organisation declares role `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r.0 == role)
    }

    /// The skills the organisation declares.
    pub fn skills(&self) -> &[String] {
        &self.skills
    }

    /// Whether the organisation declares skill `skill`.
    pub fn has_skill(&self, skill: &str) -> bool {
        self.skills.iter().any(|s| s == skill)
    }

    /// The people, in file order.
    pub fn people(&self) -> &[Person] {
        &self.people
    }

    /// The person with id `id`.
    pub fn person(&self, id: &str) -> Option<&Person> {
        self.person_ix.get(id).map(|&i| &self.people[i as usize])
    }

    /// The actor for person `id`: their id and every role they hold, in any unit (each role
    /// once). `None` for someone the organisation does not know.
    pub fn actor(&self, id: &str) -> Option<Actor> {
        let p = self.person(id)?;
        let mut roles: Vec<RoleId> = Vec::new();
        for h in &p.holds {
            if !roles.contains(&h.role) {
                roles.push(h.role.clone());
            }
        }
        Some(Actor {
            id: p.id.clone(),
            roles,
        })
    }

    /// Whether unit `unit` is `scope` or below it. Unknown units are within nothing.
    pub fn within(&self, unit: &str, scope: &str) -> bool {
        match (self.unit_ix.get(unit), self.unit_ix.get(scope)) {
            (Some(&u), Some(&s)) => self.within_ix(u, s),
            _ => false,
        }
    }

    fn within_ix(&self, mut unit: u32, scope: u32) -> bool {
        let target = self.units[scope as usize].depth;
        // Walk up to the scope's depth, then compare: at most the tree's height.
        loop {
            let u = &self.units[unit as usize];
            if u.depth <= target {
                return unit == scope;
            }
            match u.parent {
                Some(p) => unit = p,
                None => return false,
            }
        }
    }

    /// Whether person `person` holds `role` in unit `scope` or a unit below it.
    pub fn holds_in(&self, person: &str, role: &str, scope: &str) -> bool {
        let (Some(p), Some(&s)) = (self.person(person), self.unit_ix.get(scope)) else {
            return false;
        };
        p.holds
            .iter()
            .any(|h| h.role.0 == role && self.within_ix(h.unit, s))
    }

    /// Whether person `person` holds `role` in any unit.
    pub fn holds_anywhere(&self, person: &str, role: &str) -> bool {
        self.person(person)
            .is_some_and(|p| p.holds.iter().any(|h| h.role.0 == role))
    }

    /// Whether person `person` has every skill in `skills`. Someone the organisation does not
    /// know has no skills.
    pub fn has_skills<S: AsRef<str>>(&self, person: &str, skills: &[S]) -> bool {
        let Some(p) = self.person(person) else {
            return skills.is_empty();
        };
        skills.iter().all(|s| {
            self.skills
                .iter()
                .position(|x| x == s.as_ref())
                .is_some_and(|i| p.skills.contains(&(i as u32)))
        })
    }

    /// The people who hold one of `roles` (in `scope` or below it, when a scope is given) and
    /// have every skill of `skills`, each once, in file order. Allocation picks among them.
    pub fn eligible<S: AsRef<str>>(
        &self,
        roles: &[RoleId],
        scope: Option<&str>,
        skills: &[S],
    ) -> Vec<&Person> {
        let scope_ix = match scope {
            Some(s) => match self.unit_ix.get(s) {
                Some(&i) => Some(i),
                None => return Vec::new(),
            },
            None => None,
        };
        let mut found: Vec<u32> = Vec::new();
        for role in roles {
            for &(p, u) in self.holders.get(role).map_or(&[][..], |v| &v[..]) {
                if scope_ix.is_none_or(|s| self.within_ix(u, s)) && !found.contains(&p) {
                    found.push(p);
                }
            }
        }
        found.sort_unstable();
        found
            .into_iter()
            .map(|p| &self.people[p as usize])
            .filter(|p| self.has_skills(p.id.as_str(), skills))
            .collect()
    }

    /// The position of a role in the organisation's catalogue (the work-list index's key).
    pub(crate) fn role_index(&self, role: &str) -> Option<u32> {
        self.roles
            .iter()
            .position(|r| r.0 == role)
            .map(|i| i as u32)
    }

    /// The position of a unit (the work-list index's key).
    pub(crate) fn unit_index(&self, unit: &str) -> Option<u32> {
        self.unit_ix.get(unit).copied()
    }

    /// For the work-list index: (role, unit) for every role a person holds, for the unit they
    /// hold it in and every unit above it.
    pub(crate) fn reach(&self, person: &str) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        let Some(p) = self.person(person) else {
            return out;
        };
        for h in &p.holds {
            let Some(role) = self.role_index(h.role.as_str()) else {
                continue;
            };
            let mut at = Some(h.unit);
            while let Some(u) = at {
                if !out.contains(&(role, u)) {
                    out.push((role, u));
                }
                at = self.units[u as usize].parent;
            }
        }
        out
    }

    /// [`Organisation::reach`] by ids: each role a person holds with the unit they hold it in
    /// and every unit above it.
    pub(crate) fn reach_named(&self, person: &str) -> Vec<(&RoleId, &str)> {
        self.reach(person)
            .into_iter()
            .filter_map(|(role, unit)| {
                Some((
                    self.roles.get(role as usize)?,
                    self.units.get(unit as usize)?.id.as_str(),
                ))
            })
            .collect()
    }
}

/// With an organisation, a person's roles are what the organisation says they hold; an actor
/// the organisation does not know holds the roles its [`Actor::roles`] lists, in no unit.
impl Authorizer for Organisation {
    fn holds(&self, role: &RoleId, actor: &Actor) -> bool {
        match self.person(actor.id.as_str()) {
            Some(p) => p.holds.iter().any(|h| h.role == *role),
            None => actor.has_role(role),
        }
    }

    fn allows(&self, role: &RoleId, actor: &Actor, cx: &AuthContext<'_>) -> bool {
        match cx.unit {
            None => self.holds(role, actor),
            Some(scope) => self.holds_in(actor.id.as_str(), role.as_str(), scope),
        }
    }
}

/// How a task is allocated when it opens (`allocate:`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Allocation {
    /// The eligible people in turn (file order), one cursor per task node kept by the engine.
    RoundRobin,
    /// The eligible person with the fewest open tasks claimed (ties: file order).
    ShortestQueue,
}

impl Allocation {
    /// The name used in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Allocation::RoundRobin => "round_robin",
            Allocation::ShortestQueue => "shortest_queue",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Allocation> {
        match text {
            "round_robin" => Some(Allocation::RoundRobin),
            "shortest_queue" => Some(Allocation::ShortestQueue),
            _ => None,
        }
    }
}

/// A user task's organisational requirements: the skills its performer needs (`skills:`) and
/// how it is allocated (`allocate:`).
#[derive(Clone, Debug, Default)]
pub(crate) struct TaskOrg {
    pub(crate) skills: Vec<String>,
    pub(crate) allocate: Option<Allocation>,
}

/// Parses and validates on the loader's stack (as definitions are).
fn load_org(text: &str, file: Option<PathBuf>) -> Result<Organisation, LoadError> {
    let compiled = crate::cond::on_loader_stack(|| {
        let raw: load::RawOrg = parse_yaml(text).map_err(|p| vec![p])?;
        load::compile(raw, file.clone())
    });
    match compiled {
        Ok(Ok(org)) => Ok(org),
        Ok(Err(problems)) => Err(LoadError::new(file, problems)),
        Err(message) => Err(LoadError::new(
            file,
            vec![Problem {
                location: None,
                path: String::new(),
                kind: ProblemKind::Io(message),
            }],
        )),
    }
}

/// Whether YAML text looks like an organisation file (its top level names `organisation:`), so
/// that `procflow validate` can tell one from a definition.
pub fn is_organisation(text: &str) -> bool {
    text.lines().any(|l| l.starts_with("organisation:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_send_sync<T: Send + Sync>() {}

    #[test]
    fn org_is_send_sync() {
        is_send_sync::<Organisation>();
    }

    #[test]
    fn cycle_and_unknowns_all_at_once() {
        let e = Organisation::from_yaml(
            "organisation: x\nunits:\n  a: { name: A, parent: b }\n  b: { name: B, parent: a }\n  c: { name: C, parent: zz }\nroles: { r: { name: R } }\nskills: { s: { name: S } }\npeople:\n  p1: { name: P, skills: [t], posts: [{ unit: q, roles: [r, w] }] }\n  p1: { name: P, posts: [{ unit: c, roles: [r] }] }\n",
        )
        .unwrap_err();
        let kinds: Vec<String> = e.problems.iter().map(|p| p.kind.to_string()).collect();
        assert!(kinds.iter().any(|k| k.contains("cycle")), "{kinds:?}");
        assert!(
            kinds.iter().any(|k| k.contains("unknown unit 'zz'")),
            "{kinds:?}"
        );
    }
}
