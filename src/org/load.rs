//! The organisation file: YAML DTOs and their validation into an [`Organisation`].
//!
//! Every problem is reported at once, located: a unit cycle, a parent, a person's unit, role,
//! position or skill that is not declared, a repeated id.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{Holding, Organisation, Person, Unit};
use crate::ids::{ActorId, RoleId};
use crate::yaml::{At, Entries, Problem, ProblemKind, Report, unique, valid_id};

/// The most units, people, roles, skills or positions an organisation file may declare.
pub(super) const MAX_ENTRIES: usize = 1_000_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOrg {
    pub(super) organisation: At<String>,
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) name_zh: Option<String>,
    /// The names of the levels, top first (e.g. headquarters, province, local_network, hall).
    #[serde(default)]
    pub(super) levels: Option<At<Vec<At<String>>>>,
    pub(super) units: Entries<RawUnit>,
    #[serde(default)]
    pub(super) roles: Entries<RawNamed>,
    #[serde(default)]
    pub(super) skills: Entries<RawNamed>,
    #[serde(default)]
    pub(super) positions: Entries<RawPosition>,
    #[serde(default)]
    pub(super) people: Entries<RawPerson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUnit {
    pub(super) name: String,
    #[serde(default)]
    pub(super) name_zh: Option<String>,
    #[serde(default)]
    pub(super) level: Option<At<String>>,
    #[serde(default)]
    pub(super) parent: Option<At<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Names document the file; the model keeps only ids.
pub(super) struct RawNamed {
    pub(super) name: String,
    #[serde(default)]
    pub(super) name_zh: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Names document the file; the model keeps only ids.
pub(super) struct RawPosition {
    pub(super) name: String,
    #[serde(default)]
    pub(super) name_zh: Option<String>,
    pub(super) roles: Vec<At<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPerson {
    pub(super) name: String,
    #[serde(default)]
    pub(super) skills: Vec<At<String>>,
    /// Where the person works and in which capacity.
    pub(super) posts: Vec<At<RawPost>>,
}

/// A post: a unit and the roles held there, directly or through a position.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPost {
    pub(super) unit: At<String>,
    #[serde(default)]
    pub(super) position: Option<At<String>>,
    #[serde(default)]
    pub(super) roles: Vec<At<String>>,
}

/// A person's id: a staff number or login, without spaces or control characters.
fn valid_person(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && !id.chars().any(|c| c.is_whitespace() || c.is_control())
}

pub(super) fn compile(raw: RawOrg, file: Option<PathBuf>) -> Result<Organisation, Vec<Problem>> {
    let mut report = Report(Vec::new());
    let counts = [
        ("units", raw.units.0.len()),
        ("people", raw.people.0.len()),
        ("roles", raw.roles.0.len()),
        ("skills", raw.skills.0.len()),
        ("positions", raw.positions.0.len()),
    ];
    for (what, n) in counts {
        if n > MAX_ENTRIES {
            report.add(
                raw.organisation.loc,
                what,
                ProblemKind::TooMany {
                    what,
                    found: n as u64,
                    limit: MAX_ENTRIES as u64,
                },
            );
            return Err(report.0);
        }
    }
    if !valid_id(&raw.organisation.value) {
        report.add(
            raw.organisation.loc,
            "organisation",
            ProblemKind::InvalidId(raw.organisation.value.clone()),
        );
    }
    let levels: Vec<String> = match &raw.levels {
        Some(l) => {
            let mut out: Vec<String> = Vec::new();
            for (i, level) in l.value.iter().enumerate() {
                let path = format!("levels[{i}]");
                if !valid_id(&level.value) {
                    report.add(
                        level.loc,
                        &path,
                        ProblemKind::InvalidId(level.value.clone()),
                    );
                } else if out.contains(&level.value) {
                    report.add(
                        level.loc,
                        &path,
                        ProblemKind::OrgShape(format!("level '{}' is listed twice", level.value)),
                    );
                } else {
                    out.push(level.value.clone());
                }
            }
            out
        }
        None => Vec::new(),
    };
    let roles: Vec<RoleId> = unique(&raw.roles, "role", "roles", valid_id, &mut report)
        .into_iter()
        .map(|(k, _)| RoleId(k.value.clone()))
        .collect();
    let skills: Vec<String> = unique(&raw.skills, "skill", "skills", valid_id, &mut report)
        .into_iter()
        .map(|(k, _)| k.value.clone())
        .collect();
    let role_known = |r: &str| roles.iter().any(|x| x.0 == r);
    // Positions: a name for a bundle of roles.
    let mut positions: HashMap<&str, Vec<RoleId>> = HashMap::new();
    for (key, p) in unique(
        &raw.positions,
        "position",
        "positions",
        valid_id,
        &mut report,
    ) {
        let mut held = Vec::new();
        for (i, r) in p.value.roles.iter().enumerate() {
            if role_known(&r.value) {
                held.push(RoleId(r.value.clone()));
            } else {
                report.add(
                    r.loc,
                    format!("positions.{}.roles[{i}]", key.value),
                    ProblemKind::UnknownRole(r.value.clone()),
                );
            }
        }
        positions.insert(&key.value, held);
    }
    // Units, then their parents, then the tree's cycles.
    let units_raw = unique(&raw.units, "unit", "units", valid_id, &mut report);
    let index: HashMap<&str, u32> = units_raw
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.value.as_str(), i as u32))
        .collect();
    let mut units: Vec<Unit> = Vec::with_capacity(units_raw.len());
    for (key, u) in &units_raw {
        let path = format!("units.{}", key.value);
        let mut parent = None;
        if let Some(p) = &u.value.parent {
            match index.get(p.value.as_str()) {
                Some(&i) => parent = Some(i),
                None => report.add(
                    p.loc,
                    format!("{path}.parent"),
                    ProblemKind::UnknownUnit(p.value.clone()),
                ),
            }
        }
        let mut level = None;
        if let Some(l) = &u.value.level {
            match levels.iter().position(|x| *x == l.value) {
                Some(i) => level = Some(i as u32),
                None => report.add(
                    l.loc,
                    format!("{path}.level"),
                    ProblemKind::OrgShape(format!(
                        "unknown level '{}': declare it under 'levels'",
                        l.value
                    )),
                ),
            }
        }
        units.push(Unit {
            id: key.value.clone(),
            name: u.value.name.clone(),
            name_zh: u.value.name_zh.clone(),
            level,
            parent,
            depth: 0,
        });
    }
    // Every unit must reach a root: a walk longer than the number of units is a cycle. Each
    // cycle is reported once, at its first unit in file order.
    let mut on_cycle = vec![false; units.len()];
    for start in 0..units.len() {
        let mut seen = vec![start as u32];
        let mut at = units[start].parent;
        while let Some(p) = at {
            if p as usize == start {
                if !seen.iter().any(|&u| on_cycle[u as usize]) {
                    let names: Vec<String> = seen
                        .iter()
                        .chain(std::iter::once(&(start as u32)))
                        .map(|&u| units[u as usize].id.clone())
                        .collect();
                    let (key, u) = &units_raw[start];
                    let loc = u.value.parent.as_ref().map_or(key.loc, |p| p.loc);
                    report.add(
                        loc,
                        format!("units.{}.parent", key.value),
                        ProblemKind::UnitCycle(names),
                    );
                }
                for &u in &seen {
                    on_cycle[u as usize] = true;
                }
                break;
            }
            if seen.len() > units.len() || seen.contains(&p) {
                // Reaches a cycle it is not part of; that cycle is reported from its own units.
                break;
            }
            seen.push(p);
            at = units[p as usize].parent;
        }
    }
    // Depths and levels mean nothing in a cyclic tree: they are left out, people are checked.
    let cyclic = on_cycle.iter().any(|&c| c);
    for i in (0..units.len()).filter(|_| !cyclic) {
        let mut depth = 0;
        let mut at = units[i].parent;
        while let Some(p) = at {
            depth += 1;
            at = units[p as usize].parent;
        }
        units[i].depth = depth;
    }
    // A child sits at a deeper level than its parent.
    for (i, (key, u)) in units_raw.iter().enumerate() {
        if !cyclic
            && let (Some(l), Some(p)) = (units[i].level, units[i].parent)
            && let Some(pl) = units[p as usize].level
            && pl >= l
        {
            let loc = u.value.level.as_ref().map_or(key.loc, |l| l.loc);
            report.add(
                loc,
                format!("units.{}.level", key.value),
                ProblemKind::OrgShape(format!(
                    "level '{}' is not below its parent's level '{}'",
                    levels[l as usize], levels[pl as usize]
                )),
            );
        }
    }
    // People.
    let mut people: Vec<Person> = Vec::new();
    for (key, p) in unique(&raw.people, "person", "people", valid_person, &mut report) {
        let path = format!("people.{}", key.value);
        let mut person_skills = Vec::new();
        for (i, s) in p.value.skills.iter().enumerate() {
            match skills.iter().position(|x| *x == s.value) {
                Some(ix) => person_skills.push(ix as u32),
                None => report.add(
                    s.loc,
                    format!("{path}.skills[{i}]"),
                    ProblemKind::UnknownSkill(s.value.clone()),
                ),
            }
        }
        if p.value.posts.is_empty() {
            report.add(
                key.loc,
                format!("{path}.posts"),
                ProblemKind::OrgShape("a person needs at least one post".to_owned()),
            );
        }
        let mut holds = Vec::new();
        for (i, post) in p.value.posts.iter().enumerate() {
            let ppath = format!("{path}.posts[{i}]");
            let unit = match index.get(post.value.unit.value.as_str()) {
                Some(&u) => Some(u),
                None => {
                    report.add(
                        post.value.unit.loc,
                        format!("{ppath}.unit"),
                        ProblemKind::UnknownUnit(post.value.unit.value.clone()),
                    );
                    None
                }
            };
            let mut roles_here: Vec<RoleId> = Vec::new();
            if let Some(pos) = &post.value.position {
                match positions.get(pos.value.as_str()) {
                    Some(r) => roles_here.extend(r.iter().cloned()),
                    None => report.add(
                        pos.loc,
                        format!("{ppath}.position"),
                        ProblemKind::OrgShape(format!("unknown position '{}'", pos.value)),
                    ),
                }
            }
            for (j, r) in post.value.roles.iter().enumerate() {
                if role_known(&r.value) {
                    roles_here.push(RoleId(r.value.clone()));
                } else {
                    report.add(
                        r.loc,
                        format!("{ppath}.roles[{j}]"),
                        ProblemKind::UnknownRole(r.value.clone()),
                    );
                }
            }
            if post.value.position.is_none() && post.value.roles.is_empty() {
                report.add(
                    post.loc,
                    &ppath,
                    ProblemKind::OrgShape("a post needs a 'position' or 'roles'".to_owned()),
                );
            }
            if let Some(unit) = unit {
                for role in roles_here {
                    let h = Holding { role, unit };
                    if !holds.contains(&h) {
                        holds.push(h);
                    }
                }
            }
        }
        people.push(Person {
            id: ActorId::new(key.value.clone()),
            name: p.value.name.clone(),
            holds,
            skills: person_skills,
        });
    }
    if !report.0.is_empty() {
        return Err(report.0);
    }
    Ok(Organisation::assemble(
        raw.organisation.value,
        raw.name,
        raw.name_zh,
        file,
        levels,
        units,
        roles,
        skills,
        people,
    ))
}
