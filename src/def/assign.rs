//! Allocation rules on user tasks (the resource patterns of Russell et al. 2005): the case owner
//! (`owner: { from: TASK }` at the definition level, WRP 6 case handling), a task's `assign:`
//! (`owner`, direct `{ to: CEL }` WRP 1, deferred `{ candidates: VAR }` WRP 3, retain familiar
//! `{ like: TASK }` WRP 7), separation of duties (`four_eyes: [TASK..]`, WRP 5), and a task's
//! `priority:` with `priority_due:` (shorter deadlines for urgent work).
//!
//! **Invariant:** a compiled rule names only earlier user tasks (an ancestor in the graph) and
//! declared variables; the executor checks only run-time data (who did a task, what a variable
//! holds). A definition with none of these keys has `ProcessDef::allocating` false and pays
//! nothing at run time.

use std::collections::HashMap;
use std::fmt;

use indexmap::IndexMap;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Dfs, Reversed};
use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};

use super::raw::{At, RawDef, RawDuration, RawNode};
use super::timers::{Limits, RawLimits, TimeCx};
use super::{Behaviour, Location, Node, Problem, ProblemKind};
use crate::cond::Condition;
use crate::ids::{NodeId, RoleId};
use crate::vars::{VarSpec, VarType};

/// The name of the instance variable a task without its own `priority:` takes its priority from.
pub(crate) const PRIORITY_VAR: &str = "priority";

/// `owner: { from: TASK }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOwner {
    pub(crate) from: At<String>,
}

/// `assign: owner | { to: CEL } | { candidates: VAR } | { like: TASK }`.
pub(crate) enum RawAssign {
    Owner,
    To(String),
    Candidates(String),
    Like(String),
}

/// One `priority_due:` entry: `{ at_least: N, due: DURATION }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPriorityDue {
    pub(crate) at_least: i64,
    pub(crate) due: At<RawDuration>,
}

impl<'de> Deserialize<'de> for RawAssign {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawAssign;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "'owner', or one of { to: CEL }, { candidates: VARIABLE }, { like: TASK }",
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawAssign, E> {
                match s {
                    "owner" => Ok(RawAssign::Owner),
                    other => Err(de::Error::unknown_variant(other, &["owner"])),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawAssign, A::Error> {
                const KEYS: &[&str] = &["to", "candidates", "like"];
                let mut out = None;
                while let Some(key) = map.next_key::<String>()? {
                    if out.is_some() {
                        return Err(de::Error::custom(
                            "give one of 'to', 'candidates' and 'like'",
                        ));
                    }
                    out = Some(match key.as_str() {
                        "to" => RawAssign::To(map.next_value()?),
                        "candidates" => RawAssign::Candidates(map.next_value()?),
                        "like" => RawAssign::Like(map.next_value()?),
                        other => return Err(de::Error::unknown_field(other, KEYS)),
                    });
                }
                out.ok_or_else(|| {
                    de::Error::custom("an assignment needs 'to', 'candidates' or 'like'")
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Who a user task goes to.
#[derive(Debug)]
pub(crate) enum Assign {
    /// The case owner.
    Owner,
    /// Direct: a CEL expression giving a person id (boxed: a compiled expression is large).
    To(Box<Condition>),
    /// Deferred: a declared list variable of person ids.
    Candidates(String),
    /// Retain familiar: whoever completed the latest task at this earlier node.
    Like(NodeId),
}

/// A user task's allocation: its assignment, separation of duties and priority.
#[derive(Debug, Default)]
pub(crate) struct Allocation {
    pub(crate) assign: Option<Assign>,
    /// Never the performer of these earlier user tasks.
    pub(crate) four_eyes: Vec<NodeId>,
    /// The task's own priority (else the instance's `priority` variable, if declared).
    pub(crate) priority: Option<Condition>,
    /// Deadlines by priority: the first entry whose `at_least` the task's priority reaches
    /// replaces the task's limits (the same limits with that `due`).
    pub(crate) priority_due: Vec<(i64, Limits)>,
}

/// Compiles the definition's `owner:` and every node's allocation keys into `nodes` (index `i`
/// of `raw` is node `i`), reporting every problem. Ancestry is checked only on an acyclic graph.
/// Gives the owner task.
#[allow(clippy::too_many_arguments)] // Mirrors `rules::compile`, plus what time limits need.
pub(super) fn compile(
    def: &RawDef,
    raw: &[&RawNode],
    index: &HashMap<&str, NodeId>,
    graph: &DiGraph<NodeId, ()>,
    acyclic: bool,
    vars: &IndexMap<String, VarSpec>,
    roles: &IndexMap<RoleId, super::Role>,
    nodes: &mut [Node],
    problems: &mut Vec<Problem>,
) -> Option<NodeId> {
    let add = |problems: &mut Vec<Problem>, loc: Location, path: String, kind| {
        problems.push(Problem {
            location: Some(loc),
            path,
            kind,
        });
    };
    let user =
        |n: NodeId, nodes: &[Node]| matches!(nodes[n.index()].behaviour, Behaviour::UserTask(_));
    // The owner task: a known user task.
    let owner = def.owner.as_ref().and_then(|o| {
        let name = &o.value.from;
        match index.get(name.value.as_str()) {
            None => {
                add(
                    problems,
                    name.loc,
                    "owner.from".into(),
                    ProblemKind::UnknownNode(name.value.clone()),
                );
                None
            }
            Some(&n) if !user(n, nodes) => {
                add(
                    problems,
                    name.loc,
                    "owner.from".into(),
                    ProblemKind::BadAllocation {
                        target: name.value.clone(),
                        reason: "it is not a user task, so nobody completes it".into(),
                    },
                );
                None
            }
            Some(&n) => Some(n),
        }
    });
    for (i, r) in raw.iter().enumerate() {
        if r.assign.is_none()
            && r.four_eyes.is_none()
            && r.priority.is_none()
            && r.priority_due.is_none()
        {
            continue;
        }
        let id = nodes[i].id.clone();
        let path = |key: &str| format!("nodes.{id}.{key}");
        let Behaviour::UserTask(raci) = &nodes[i].behaviour else {
            let kind = r.kind.value.as_str();
            let keys = [
                ("assign", r.assign.as_ref().map(|a| a.loc)),
                ("four_eyes", r.four_eyes.as_ref().map(|a| a.loc)),
                ("priority", r.priority.as_ref().map(|a| a.loc)),
                ("priority_due", r.priority_due.as_ref().map(|a| a.loc)),
            ];
            for (key, loc) in keys {
                if let Some(loc) = loc {
                    add(
                        problems,
                        loc,
                        path(key),
                        ProblemKind::KeyNotAllowed { key, kind },
                    );
                }
            }
            continue;
        };
        let raci = raci.clone();
        let earlier = acyclic.then(|| ancestors(graph, i, nodes.len()));
        // An earlier user task, or a problem at `loc`.
        let earlier_task = |name: &str, loc: Location, key: &str, problems: &mut Vec<Problem>| {
            let Some(&n) = index.get(name) else {
                add(
                    problems,
                    loc,
                    path(key),
                    ProblemKind::UnknownNode(name.to_owned()),
                );
                return None;
            };
            let bad = |reason: &str| ProblemKind::BadAllocation {
                target: name.to_owned(),
                reason: reason.to_owned(),
            };
            if n.index() == i {
                add(problems, loc, path(key), bad("it is this task itself"));
                None
            } else if !user(n, nodes) {
                add(
                    problems,
                    loc,
                    path(key),
                    bad("it is not a user task, so nobody performs it"),
                );
                None
            } else if earlier.as_ref().is_some_and(|e| !e[n.index()]) {
                add(
                    problems,
                    loc,
                    path(key),
                    bad("it cannot precede this task: no flow leads from it to this task"),
                );
                None
            } else {
                Some(n)
            }
        };
        let mut alloc = Allocation::default();
        if let (Some(a), Some(_)) = (&r.assign, &r.for_each) {
            add(
                problems,
                a.loc,
                path("assign"),
                ProblemKind::BadAllocation {
                    target: "assign".into(),
                    reason: "a multi-instance task ('for_each') cannot have an assignment (yet)"
                        .into(),
                },
            );
        }
        if let Some(a) = &r.assign {
            alloc.assign = match &a.value {
                RawAssign::Owner => match (&def.owner, owner) {
                    (None, _) => {
                        add(
                            problems,
                            a.loc,
                            path("assign"),
                            ProblemKind::BadAllocation {
                                target: "owner".into(),
                                reason: "the definition has no 'owner: { from: TASK }'".into(),
                            },
                        );
                        None
                    }
                    (Some(o), Some(n)) => {
                        let name = o.value.from.value.clone();
                        earlier_task(&name, a.loc, "assign", problems).map(|_| {
                            debug_assert_eq!(Some(n), index.get(name.as_str()).copied());
                            Assign::Owner
                        })
                    }
                    (Some(_), None) => None,
                },
                RawAssign::To(source) => match Condition::compile(source) {
                    Err(kind) => {
                        add(problems, a.loc, path("assign.to"), kind);
                        None
                    }
                    Ok(cond) => {
                        let mut ok = true;
                        for var in cond.reads() {
                            if !vars.contains_key(var) {
                                ok = false;
                                add(
                                    problems,
                                    a.loc,
                                    path("assign.to"),
                                    ProblemKind::UndeclaredVariable(var.clone()),
                                );
                            }
                        }
                        ok.then(|| Assign::To(Box::new(cond)))
                    }
                },
                RawAssign::Candidates(var) => match vars.get(var) {
                    None => {
                        add(
                            problems,
                            a.loc,
                            path("assign.candidates"),
                            ProblemKind::UnknownVariable {
                                key: "assign.candidates",
                                name: var.clone(),
                            },
                        );
                        None
                    }
                    Some(spec) if !matches!(spec.ty, VarType::Array | VarType::Any) => {
                        add(
                            problems,
                            a.loc,
                            path("assign.candidates"),
                            ProblemKind::NotAList {
                                key: "assign.candidates",
                                name: var.clone(),
                                ty: spec.ty.as_str().to_owned(),
                                expected: "array",
                            },
                        );
                        None
                    }
                    Some(_) => Some(Assign::Candidates(var.clone())),
                },
                RawAssign::Like(task) => {
                    earlier_task(task, a.loc, "assign.like", problems).map(Assign::Like)
                }
            };
        }
        if let Some(f) = &r.four_eyes {
            for (name, loc) in f.value.located(f.loc) {
                if let Some(n) = earlier_task(name, loc, "four_eyes", problems)
                    && !alloc.four_eyes.contains(&n)
                {
                    alloc.four_eyes.push(n);
                }
            }
        }
        if let Some(p) = &r.priority {
            match Condition::compile(&p.value) {
                Err(kind) => add(problems, p.loc, path("priority"), kind),
                Ok(cond) => {
                    let undeclared: Vec<&String> = cond
                        .reads()
                        .iter()
                        .filter(|v| !vars.contains_key(*v))
                        .collect();
                    for var in &undeclared {
                        add(
                            problems,
                            p.loc,
                            path("priority"),
                            ProblemKind::UndeclaredVariable((*var).clone()),
                        );
                    }
                    if undeclared.is_empty() {
                        alloc.priority = Some(cond);
                    }
                }
            }
        }
        if let Some(pd) = &r.priority_due {
            if r.priority.is_none() && !vars.contains_key(PRIORITY_VAR) {
                add(
                    problems,
                    pd.loc,
                    path("priority_due"),
                    ProblemKind::BadAllocation {
                        target: "priority_due".into(),
                        reason: "the task has no 'priority' and the process declares no 'priority' variable".into(),
                    },
                );
            }
            let mut time = TimeCx {
                vars,
                roles,
                has_calendar: def.calendar.is_some(),
                problems,
            };
            for (k, entry) in pd.value.iter().enumerate() {
                let limits = time.limits(
                    RawLimits {
                        due: Some(&entry.value.due),
                        claim_due: r.claim_due.as_ref(),
                        remind: r.remind.as_ref(),
                        escalate: r.escalate.as_ref(),
                        timeout: r.timeout.as_ref().map(|t| &t.value.after),
                    },
                    &format!("nodes.{id}.priority_due[{k}]"),
                    raci.accountable.clone(),
                    raci.informed.clone(),
                    &raci.responsible,
                );
                alloc.priority_due.push((entry.value.at_least, limits));
            }
        }
        nodes[i].alloc = Some(Box::new(alloc));
    }
    owner
}

/// The nodes from which a flow leads to node `i`, by index.
fn ancestors(graph: &DiGraph<NodeId, ()>, i: usize, len: usize) -> Vec<bool> {
    let reversed = Reversed(graph);
    let mut seen = vec![false; len];
    let mut dfs = Dfs::new(reversed, NodeIndex::new(i));
    while let Some(n) = dfs.next(reversed) {
        seen[n.index()] = true;
    }
    seen
}
