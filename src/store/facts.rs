//! What a history report counts of one instance ([`facts`]), as rows a store keeps beside the
//! instance so that a report over a database store is a `GROUP BY` instead of a decoding of every
//! stored state ([`Store::report_facts`](super::Store::report_facts)).
//!
//! Every figure of a report (but the grouping by a business key, which a store answers with its
//! key index) is a sum of these counts over the instances, or an order statistic of these spans;
//! `Report::compute` folds the facts of decoded instances through the same code, so a report
//! read from facts and one computed from the instances agree by construction.
//!
//! **Invariant:** the numbers of [`Fact`] are stored; never renumber one, add new ones. Number 1
//! is not used: an instance's start is not a row of its own (every instance of a known
//! definition has exactly one of `Completed`, `Open`, `Cancelled`, which sum to the started).

// Without a database store only `Fact`, `StoredFacts` and the fold a report runs over decoded
// instances are used: the rows, the per-instance counts and the definition cache serve SQLite
// and PostgreSQL.
#![cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use super::StoreError;
use crate::def::ProcessDef;
use crate::ids::DefKey;
use crate::model::{Entry, Instance, Status, TaskState, TimerKind};

/// What one count or span row of an instance's facts says. Process-wide facts have an empty
/// subject; node facts name the node's YAML id, role facts the role id, actor facts the actor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Fact {
    /// The instance's definition is not stored: the report skips it.
    Skipped = 0,
    /// Completed.
    Completed = 2,
    /// Running.
    Open = 3,
    /// Cancelled.
    Cancelled = 4,
    /// Has a process deadline (and was not withdrawn before deciding it).
    SlaInstances = 5,
    /// Completed without the process deadline firing.
    SlaMet = 6,
    /// The process deadline fired.
    SlaBreached = 7,
    /// Running, the process deadline not fired.
    SlaPending = 8,
    /// Task deadlines decided.
    TaskDeadlines = 9,
    /// Task deadlines breached.
    TaskBreached = 10,
    /// An SLA deadline fired, as a key query reports it (any SLA `Due` record or fired timer).
    KeyBreached = 11,
    /// Tasks of the node in the timed-out state (`opened` is this plus `NodeCompleted`,
    /// `NodeOpen` and `NodeCancelled`: each task is in one state, so no row counts it opened).
    NodeTimedOut = 20,
    /// Tasks of the node completed.
    NodeCompleted = 21,
    /// Tasks of the node open.
    NodeOpen = 22,
    /// Tasks of the node cancelled by its timeout route.
    NodeTimeouts = 23,
    /// Tasks of the node withdrawn.
    NodeCancelled = 24,
    /// Task deadlines of the node that fired.
    NodeBreaches = 25,
    /// Refused attempts on the node's tasks.
    NodeDenials = 26,
    /// Cases sent back to the node.
    NodeReworks = 27,
    /// Runs again of the node's task.
    NodeRepeated = 28,
    /// Items of the node's multi-instance task completed.
    NodeItems = 29,
    /// Completions credited to the role.
    RoleCompleted = 40,
    /// Overrides credited to the role.
    RoleOverrides = 41,
    /// Escalation levels that fired to the role.
    RoleEscalations = 42,
    /// Completions by the actor.
    ActorCompleted = 60,
    /// Overrides by the actor.
    ActorOverrides = 61,
    /// Refused attempts of the actor.
    ActorDenials = 62,
    /// Span: start to end of a completed instance (stored as the end, `till`, of its `Completed`
    /// row, whose `started_at` is the start).
    Cycle = 100,
    /// Span: a task's creation to its first claim (or completion).
    Waiting = 101,
    /// Span: a task's first claim to its completion.
    Handling = 102,
}

impl Fact {
    const ALL: [Fact; 30] = [
        Fact::Skipped,
        Fact::Completed,
        Fact::Open,
        Fact::Cancelled,
        Fact::SlaInstances,
        Fact::SlaMet,
        Fact::SlaBreached,
        Fact::SlaPending,
        Fact::TaskDeadlines,
        Fact::TaskBreached,
        Fact::KeyBreached,
        Fact::NodeTimedOut,
        Fact::NodeCompleted,
        Fact::NodeOpen,
        Fact::NodeTimeouts,
        Fact::NodeCancelled,
        Fact::NodeBreaches,
        Fact::NodeDenials,
        Fact::NodeReworks,
        Fact::NodeRepeated,
        Fact::NodeItems,
        Fact::RoleCompleted,
        Fact::RoleOverrides,
        Fact::RoleEscalations,
        Fact::ActorCompleted,
        Fact::ActorOverrides,
        Fact::ActorDenials,
        Fact::Cycle,
        Fact::Waiting,
        Fact::Handling,
    ];

    /// The number a store keeps.
    pub fn code(self) -> i64 {
        self as i64
    }

    /// The fact a stored number names, if any (a newer build's facts are ignored).
    pub fn from_code(code: i64) -> Option<Fact> {
        Fact::ALL.into_iter().find(|f| f.code() == code)
    }

    /// Whether this is a span (from, to) rather than a count.
    pub fn is_span(self) -> bool {
        self.code() >= 100
    }
}

/// The facts of one instance: counts by (fact, subject), and spans.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct InstanceFacts {
    /// Sums by fact and subject; no zero counts.
    pub(crate) counts: BTreeMap<(Fact, String), i64>,
    /// `(fact, subject, from, to)`: a cycle (subject empty), a waiting or a handling time.
    pub(crate) spans: Vec<(Fact, String, DateTime<Utc>, DateTime<Utc>)>,
}

impl InstanceFacts {
    fn add(&mut self, fact: Fact, subject: &str, n: i64) {
        if n != 0 {
            *self.counts.entry((fact, subject.to_owned())).or_insert(0) += n;
        }
    }

    /// The facts of an instance whose definition is not stored.
    pub(crate) fn skipped() -> InstanceFacts {
        let mut f = InstanceFacts::default();
        f.add(Fact::Skipped, "", 1);
        f
    }
}

/// What an instance's audit trail says of one of its tasks.
#[derive(Clone, Default)]
struct TaskTrail {
    first_claim: Option<DateTime<Utc>>,
    /// Its completion was an override.
    overridden: bool,
    /// The role its completion was recorded in (an index into the definition's roles).
    acted: Option<u16>,
    timed_out: bool,
    breached: bool,
}

/// The facts of `inst`, which runs `def`.
///
/// Complexity: linear in the instance's tasks, timers and audit records.
pub(crate) fn facts(def: &ProcessDef, inst: &Instance) -> InstanceFacts {
    let mut out = InstanceFacts::default();
    match inst.status() {
        Status::Completed => {
            out.add(Fact::Completed, "", 1);
            if let Some(end) = inst.ended_at() {
                out.spans
                    .push((Fact::Cycle, String::new(), inst.started_at(), end));
            }
        }
        Status::Running => out.add(Fact::Open, "", 1),
        Status::Cancelled => out.add(Fact::Cancelled, "", 1),
    }
    let node_id = |n: crate::ids::NodeId| def.try_node(n).map(|n| n.id().to_owned());

    // What the audit trail says, per task (by its number: tasks are numbered from 0).
    let mut per_task = vec![TaskTrail::default(); inst.tasks().len()];
    let mut sla_breached = false;
    let mut sla_recorded = false;
    let mut key_breached = false;
    let task_node = |seq: u32| inst.tasks().get(seq as usize).map(|t| t.node());
    for record in inst.audit() {
        match &record.what {
            Entry::Claimed { task, .. } => {
                if let Some(t) = per_task.get_mut(*task as usize) {
                    t.first_claim.get_or_insert(record.at);
                }
            }
            Entry::Completed {
                task,
                overridden: o,
                role,
                ..
            } => {
                if let Some(t) = per_task.get_mut(*task as usize) {
                    t.overridden = *o;
                    if let Some(role) = role {
                        t.acted = Some(*role);
                    }
                }
            }
            Entry::Repeated { node, .. } => {
                if let Some(n) = node_id(*node) {
                    out.add(Fact::NodeRepeated, &n, 1);
                }
            }
            Entry::ItemCompleted { node, .. } => {
                if let Some(n) = node_id(*node) {
                    out.add(Fact::NodeItems, &n, 1);
                }
            }
            // Every refused attempt counts: RACI, a missing skill, a refused reassign.
            Entry::Denied { task, actor, .. }
            | Entry::LacksSkills { task, actor, .. }
            | Entry::ReassignRefused {
                task, by: actor, ..
            } => {
                out.add(Fact::ActorDenials, actor, 1);
                if let Some(n) = task_node(*task).and_then(node_id) {
                    out.add(Fact::NodeDenials, &n, 1);
                }
            }
            Entry::SentBack(s) => {
                if let Some(n) = node_id(s.to) {
                    out.add(Fact::NodeReworks, &n, 1);
                }
            }
            Entry::Timer { kind, task, sla } => {
                if *sla && *kind == TimerKind::Due {
                    key_breached = true;
                }
                if *sla && task.is_none() && *kind == TimerKind::Due {
                    sla_breached = true;
                }
                if *sla {
                    sla_recorded = true;
                }
                match (kind, task) {
                    (TimerKind::Due, Some(t)) => {
                        if let Some(t) = per_task.get_mut(*t as usize) {
                            t.breached = true;
                        }
                        if let Some(n) = task_node(*t).and_then(node_id) {
                            out.add(Fact::NodeBreaches, &n, 1);
                        }
                    }
                    (TimerKind::Timeout, Some(t)) => {
                        if let Some(t) = per_task.get_mut(*t as usize) {
                            t.timed_out = true;
                        }
                    }
                    (TimerKind::Escalation { level }, _) => {
                        let limits = if *sla {
                            def.sla.as_deref()
                        } else {
                            task.and_then(task_node)
                                .and_then(|n| def.try_node(n))
                                .and_then(|n| n.limits.as_deref())
                        };
                        if let Some(e) = limits.and_then(|l| l.escalate.get(*level as usize)) {
                            out.add(Fact::RoleEscalations, e.to.as_str(), 1);
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    // The SLA.
    let sla_timer = inst
        .timers()
        .iter()
        .find(|t| t.sla && t.kind == TimerKind::Due);
    sla_breached |= sla_timer.is_some_and(|t| t.fired);
    key_breached |= inst
        .timers()
        .iter()
        .any(|t| t.sla && t.kind == TimerKind::Due && t.fired);
    if key_breached {
        out.add(Fact::KeyBreached, "", 1);
    }
    let has_sla =
        def.sla.as_ref().is_some_and(|l| l.due.is_some()) || sla_timer.is_some() || sla_recorded;
    if has_sla {
        match (sla_breached, inst.status()) {
            (true, _) => out.add(Fact::SlaBreached, "", 1),
            (false, Status::Completed) => out.add(Fact::SlaMet, "", 1),
            (false, Status::Running) => out.add(Fact::SlaPending, "", 1),
            // A withdrawn case neither met nor broke its deadline.
            (false, Status::Cancelled) => {}
        }
        if sla_breached || inst.status() != Status::Cancelled {
            out.add(Fact::SlaInstances, "", 1);
        }
    }

    // The tasks.
    for (task, trail) in inst.tasks().iter().zip(&per_task) {
        let seq = task.id(inst.id()).seq();
        let Some(node) = def.try_node(task.node()) else {
            continue;
        };
        let id = node.id();
        let claim = trail.first_claim;
        // The task's own deadline: decided once breached or the task is closed.
        let has_due = node.limits.as_deref().is_some_and(|l| l.due.is_some())
            || inst
                .timers()
                .iter()
                .any(|t| t.task == Some(seq) && !t.sla && t.kind == TimerKind::Due);
        if trail.breached {
            out.add(Fact::TaskDeadlines, "", 1);
            out.add(Fact::TaskBreached, "", 1);
        } else if has_due && !matches!(task.state(), TaskState::Open) {
            out.add(Fact::TaskDeadlines, "", 1);
        }
        let done = match task.state() {
            TaskState::Completed { by, at } => Some((by.clone(), *at)),
            _ => None,
        };
        let wait_end = claim.or(done.as_ref().map(|(_, at)| *at));
        if let Some(end) = wait_end {
            out.spans
                .push((Fact::Waiting, id.to_owned(), task.created_at(), end));
        }
        if let (Some(c), Some((_, at))) = (claim, &done) {
            out.spans.push((Fact::Handling, id.to_owned(), c, *at));
        }
        match task.state() {
            TaskState::Open => out.add(Fact::NodeOpen, id, 1),
            TaskState::Completed { .. } => out.add(Fact::NodeCompleted, id, 1),
            TaskState::TimedOut { .. } => out.add(Fact::NodeTimedOut, id, 1),
            TaskState::Cancelled { .. } => out.add(Fact::NodeCancelled, id, 1),
        }
        if matches!(task.state(), TaskState::TimedOut { .. }) || trail.timed_out {
            out.add(Fact::NodeTimeouts, id, 1);
        }
        let Some((by, _)) = done else { continue };
        let over = trail.overridden;
        out.add(Fact::ActorCompleted, &by, 1);
        out.add(Fact::ActorOverrides, &by, i64::from(over));
        let Some(raci) = node.raci() else { continue };
        let escalated = task.escalated_to(def);
        let recorded = trail
            .acted
            .and_then(|i| def.roles().nth(usize::from(i)))
            .map(|(r, _)| r);
        let credited: Vec<&str> = match (recorded, over, escalated) {
            // The audit record names the role the actor acted in.
            (Some(role), _, _) => vec![role.as_str()],
            // Older records: the rule the role check applies.
            (None, true, _) => vec![raci.accountable().as_str()],
            (None, false, Some(role)) => vec![role.as_str()],
            (None, false, None) => raci.responsible().iter().map(|r| r.as_str()).collect(),
        };
        for role in credited {
            out.add(Fact::RoleCompleted, role, 1);
            out.add(Fact::RoleOverrides, role, i64::from(over));
        }
    }
    out
}

/// `(process, fact, subject, from, to)`: one span of [`StoredFacts::spans`].
pub type SpanRow = (String, Fact, String, DateTime<Utc>, DateTime<Utc>);

/// A store's facts, summed in the database for a report ([`Store::report_facts`](super::Store::report_facts)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredFacts {
    /// `(process, fact, subject, sum)` of the counts of the instances asked for.
    pub counts: Vec<(String, Fact, String, i64)>,
    /// `(process, fact, subject, from, to)`: every span of those instances.
    pub spans: Vec<SpanRow>,
    /// With a key: `(value, process, fact, sum)` of the process-wide counts of the instances
    /// holding each value of it.
    pub key_counts: Vec<(String, String, Fact, i64)>,
    /// With a key: `(value, from, to)`, the cycle of each completed instance holding the value.
    pub key_cycles: Vec<(String, DateTime<Utc>, DateTime<Utc>)>,
}

/// One stored fact row: a count (`n`, `till` empty) or a span (`n` from, `till` to, both in
/// nanoseconds since the epoch, clamped to the years 1677 to 2262).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct FactRow {
    pub(crate) kind: i64,
    pub(crate) subject: String,
    pub(crate) n: i64,
    pub(crate) till: Option<i64>,
}

/// The facts of an instance as the database stores keep them in its row: a JSON array of
/// `[kind, subject, n, till]`, each subject written as `subject` gives it.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn encode_facts<'r>(
    rows: &'r [FactRow],
    subject: impl Fn(&'r str) -> std::borrow::Cow<'r, str>,
) -> String {
    let rows: Vec<(i64, std::borrow::Cow<'r, str>, i64, Option<i64>)> = rows
        .iter()
        .map(|r| (r.kind, subject(&r.subject), r.n, r.till))
        .collect();
    serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into())
}

impl InstanceFacts {
    /// The rows a store keeps, sorted. The cycle is no row of its own: the `Completed` row
    /// carries its end in `till` (its start is the row's `started_at`), one row less per
    /// completed instance to write.
    pub(crate) fn rows(&self) -> Vec<FactRow> {
        let end = self
            .spans
            .iter()
            .find(|(fact, ..)| *fact == Fact::Cycle)
            .map(|(.., to)| nanos(*to));
        let mut rows: Vec<FactRow> = self
            .counts
            .iter()
            .map(|((fact, subject), n)| FactRow {
                kind: fact.code(),
                subject: subject.clone(),
                n: *n,
                till: if *fact == Fact::Completed { end } else { None },
            })
            .chain(
                self.spans
                    .iter()
                    .filter(|(fact, ..)| *fact != Fact::Cycle)
                    .map(|(fact, subject, from, to)| FactRow {
                        kind: fact.code(),
                        subject: subject.clone(),
                        n: nanos(*from),
                        till: Some(nanos(*to)),
                    }),
            )
            .collect();
        rows.sort();
        rows
    }
}

/// Nanoseconds since the epoch, clamped to the range of `i64` (about the years 1677 to 2262).
pub(crate) fn nanos(at: DateTime<Utc>) -> i64 {
    at.timestamp_nanos_opt().unwrap_or(if at.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

/// The instant of [`nanos`].
pub(crate) fn instant(nanos: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(nanos)
}

impl StoredFacts {
    /// Adds a summed count row as a store reads it; an unknown kind is left out.
    pub(crate) fn count(&mut self, process: String, kind: i64, subject: String, n: i64) {
        if let Some(fact) = Fact::from_code(kind).filter(|f| !f.is_span()) {
            self.counts.push((process, fact, subject, n));
        }
    }

    /// Adds a span row as a store reads it; an unknown kind is left out.
    pub(crate) fn span(&mut self, process: String, kind: i64, subject: String, from: i64, to: i64) {
        if let Some(fact) = Fact::from_code(kind).filter(|f| f.is_span()) {
            self.spans
                .push((process, fact, subject, instant(from), instant(to)));
        }
    }
}

/// The compiled definitions a store computes facts with, by key: compiled once each, on the
/// first commit that names one. A definition the store does not hold is looked up again next
/// time; one that does not compile counts as not held.
#[derive(Default)]
pub(crate) struct DefCache {
    defs: Mutex<HashMap<DefKey, Option<Arc<ProcessDef>>>>,
}

impl DefCache {
    /// The facts a commit of `instance` on `key` stores: [`facts`], or a skipped instance when
    /// `load` (the stored text of the definition) finds none.
    pub(crate) fn facts(
        &self,
        key: &DefKey,
        instance: &Instance,
        load: impl FnOnce() -> Result<Option<String>, StoreError>,
    ) -> Result<InstanceFacts, StoreError> {
        let cached = self
            .defs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .cloned();
        let def = match cached {
            Some(def) => def,
            None => match load()? {
                Some(text) => {
                    let def = ProcessDef::from_yaml(&text).ok().map(Arc::new);
                    self.defs
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(key.clone(), def.clone());
                    def
                }
                None => None,
            },
        };
        Ok(match def {
            Some(def) => facts(&def, instance),
            None => InstanceFacts::skipped(),
        })
    }
}
