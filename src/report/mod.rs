//! History reports: figures per process, per user-task node, per role and per actor, computed
//! from instances and their audit trails, and a heatmap of a process graph ([`heatmap`]).
//!
//! [`Report::compute`] is pure: definitions and instances in, figures out.
//! [`Report::from_store`] compiles a [`Store`]'s definitions and reads its history first.
//!
//! The figures are defined on [`Report`].

pub(crate) mod heatmap;
mod keys;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use indexmap::IndexMap;
use serde::{Serialize, Serializer};

pub use heatmap::{HeatMetric, UnknownMetric};
pub use keys::{KeyFigures, KeyHistory};

use crate::def::{LoadError, ProcessDef};
use crate::ids::DefKey;
use crate::model::Instance;
use crate::store::{Fact, InstanceFacts, Store, StoreError, StoredFacts, facts};
use crate::time::calendar::BusinessCalendar;

/// What a report covers.
///
/// # Examples
/// ```
/// let options = procflow::ReportOptions::default()
///     .process("complaint-handling")
///     .since("2026-01-01T00:00:00Z".parse()?);
/// assert_eq!(options.process.as_deref(), Some("complaint-handling"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReportOptions {
    /// Only this process id. By default every process.
    pub process: Option<String>,
    /// Only instances started at or after this instant. By default all.
    pub since: Option<DateTime<Utc>>,
    /// Also group the instances by the value of this business key ([`Report::keys`]). By
    /// default no grouping.
    pub by_key: Option<String>,
    /// Business calendars by the name definitions give them (`calendar: NAME`). A process whose
    /// calendar is here has its durations (cycle, waiting and handling times) counted in
    /// business time on it; other processes in wall-clock time. By default none.
    pub calendars: Vec<(String, Arc<BusinessCalendar>)>,
}

impl ReportOptions {
    /// Limits the report to the process `id`.
    pub fn process(mut self, id: impl Into<String>) -> ReportOptions {
        self.process = Some(id.into());
        self
    }

    /// Limits the report to instances started at or after `since`.
    pub fn since(mut self, since: DateTime<Utc>) -> ReportOptions {
        self.since = Some(since);
        self
    }

    /// Also groups the instances by the value of business key `key` (e.g. `customer_id`),
    /// across processes: [`Report::keys`].
    pub fn by_key(mut self, key: impl Into<String>) -> ReportOptions {
        self.by_key = Some(key.into());
        self
    }

    /// Counts the durations of processes on calendar `name` in business time on `calendar`
    /// ([`ReportOptions::calendars`]).
    pub fn calendar(
        mut self,
        name: impl Into<String>,
        calendar: BusinessCalendar,
    ) -> ReportOptions {
        self.calendars.push((name.into(), Arc::new(calendar)));
        self
    }
}

/// Why [`Report::from_store`] could not read a store.
#[derive(Debug, thiserror::Error, Serialize)]
#[serde(tag = "kind", content = "fields", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReportError {
    /// The store failed (its message names the file).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored definition does not compile (any more).
    #[error("stored definition {key} does not compile:\n{source}")]
    Definition {
        /// The definition.
        key: DefKey,
        /// Its problems.
        source: LoadError,
    },
    /// The store holds no definition of this process.
    #[error("unknown process '{process}': the store holds {}", known_list(known))]
    UnknownProcess {
        /// The process id asked for.
        process: String,
        /// The process ids the store holds, sorted.
        known: Vec<String>,
    },
    /// No stored definition lists this business key under `keys:`.
    #[error("unknown business key '{key}': no stored definition lists it under keys")]
    UnknownKey {
        /// The key's name.
        key: String,
    },
    /// Every stored definition listing this key declares it an integer; the value is not one.
    #[error("business key '{key}' takes an integer, not '{value}'")]
    BadKeyValue {
        /// The key's name.
        key: String,
        /// The value given.
        value: String,
    },
}

/// History figures per process, node, role and actor.
///
/// # The figures
///
/// Instances are grouped by process id (every version together); nodes by their YAML id, roles
/// by their role id. An instance whose definition is not among those given is counted in
/// [`Report::skipped`] and nowhere else. Durations are business time for a process whose
/// calendar (`calendar: NAME`) the options hold ([`ReportOptions::calendar`]), and wall-clock
/// time otherwise; [`ProcessFigures::calendar`] says which.
///
/// **Per process** ([`ProcessFigures`]):
/// - `started`: instances started (at or after `since`, when given); `completed` and `open`
///   split them by status.
/// - `cycle_time`: `ended_at - started_at` of the completed instances.
/// - SLA: an instance *has a deadline* when its definition has an `sla.due` (or it carries an
///   SLA deadline timer or record). It is *breached* when its SLA deadline fired (an
///   `Entry::Timer { kind: Due, sla: true }` record, or a fired SLA `Due` timer); *met* when it
///   completed without a breach; *pending* when it is still running without a breach.
///   `sla_met_rate = met / (met + breached)`: pending instances are undecided and left out.
///   This rate is **per instance** and counts the process deadline only; task deadlines have
///   their own, **per task**: `task_deadlines` counts the tasks with a `due` that are decided
///   (breached, or closed without a breach), `task_breached` those whose deadline fired (the sum
///   of the nodes' `breaches`), `task_met_rate = (task_deadlines - task_breached) /
///   task_deadlines`. The table heads them "instance met rate" and "task met rate".
///
/// **Per user-task node** ([`NodeFigures`]), and per service-task node with `for_each` or
/// `repeat`:
/// - `opened`, `completed`, `open`: tasks by state; `timeouts`: tasks its timeout route
///   cancelled (`TaskState::TimedOut`, or an `Entry::Timer { kind: Timeout }` record).
/// - `breaches`: task deadlines that fired (`Entry::Timer { kind: Due, task: Some(..) }`).
/// - `denials`: refused attempts on its tasks (`Entry::Denied`, `Entry::LacksSkills`,
///   `Entry::ReassignRefused`).
/// - `reworks`: how many times a case was sent back to it (`Entry::SentBack { to }`).
/// - `waiting`: from the task's creation to its first claim, or to its completion when it was
///   never claimed. Tasks still waiting, and tasks that timed out unclaimed, have no waiting time
///   yet and are left out.
/// - `handling`: from the first claim to the completion, for claimed tasks that completed.
/// - `repeated`: runs again of a task with `repeat` (`Entry::Repeated`); `items`: completed items
///   of a task with `for_each` (`Entry::ItemCompleted`).
///
/// **Per role** ([`RoleFigures`]). A completion is credited to the role the actor acted in, as
/// its audit record keeps it (`Entry::Completed { role }`: the accountable role for an override,
/// the role an escalation gave the task to, else the first of the node's responsible roles the
/// actor holds), so each completion is credited once. Records written before procflow kept the
/// role are credited by the same rule without the actor's roles: an override to the accountable
/// role, an escalated task to the escalation's role, otherwise to each of the node's responsible
/// roles. `completed` counts every credited
/// completion, overrides included; `overrides` counts the overrides. `escalations` counts the
/// escalation levels that fired (`Entry::Timer { kind: Escalation }`, not reminders or urges)
/// for the role the definition's level names (`to:`, defaulting to the accountable role).
///
/// **Per actor** ([`ActorFigures`]): what the audit trail records by actor id: completions,
/// overrides and denials.
///
/// **Percentiles** are nearest-rank: the `p`-th percentile of `n` sorted samples is the sample
/// at rank `ceil(p / 100 * n)` (from 1); there are none without samples. The mean is the
/// arithmetic mean, to the millisecond.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    /// One entry per process with a definition (matching the process filter), by id.
    pub processes: Vec<ProcessFigures>,
    /// One entry per user-task node, by process, then in the newest definition's order.
    pub nodes: Vec<NodeFigures>,
    /// One entry per role of the catalogue, by process, then in catalogue order.
    pub roles: Vec<RoleFigures>,
    /// One entry per actor the audit trails name, by process, then actor id.
    pub actors: Vec<ActorFigures>,
    /// Instances left out because their definition was not given (or they name none).
    pub skipped: usize,
    /// With [`ReportOptions::by_key`]: one entry per value of the key, by value (instances
    /// whose definition does not list the key, or that hold no value, are left out).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyFigures>,
}

/// Nearest-rank percentiles and the mean of a set of durations. Serialized in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Durations {
    /// How many samples.
    pub count: usize,
    /// The median.
    #[serde(serialize_with = "secs")]
    pub p50: Option<Duration>,
    /// The 90th percentile.
    #[serde(serialize_with = "secs")]
    pub p90: Option<Duration>,
    /// The 99th percentile.
    #[serde(serialize_with = "secs")]
    pub p99: Option<Duration>,
    /// The mean, to the millisecond.
    #[serde(serialize_with = "secs")]
    pub mean: Option<Duration>,
}

/// The figures of one process (every version together).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProcessFigures {
    /// The process id.
    pub process: String,
    /// The newest version's English name.
    pub name: String,
    /// The newest version's Chinese name.
    pub name_zh: Option<String>,
    /// The versions with a definition, ascending.
    pub versions: Vec<u32>,
    /// Instances started.
    pub started: usize,
    /// Of those, completed.
    pub completed: usize,
    /// Of those, still running.
    pub open: usize,
    /// Of those, cancelled ([`Engine::cancel`](crate::Engine::cancel)).
    pub cancelled: usize,
    /// `ended_at - started_at` of the completed instances.
    pub cycle_time: Durations,
    /// Instances with a process deadline.
    pub sla_instances: usize,
    /// Completed without their deadline firing.
    pub sla_met: usize,
    /// Whose deadline fired.
    pub sla_breached: usize,
    /// Running, deadline not yet fired.
    pub sla_pending: usize,
    /// `sla_met / (sla_met + sla_breached)`, from 0 to 1; `None` when both are 0. Per
    /// instance: the process deadline (`sla.due`) only.
    pub sla_met_rate: Option<f64>,
    /// Tasks with a deadline of their own (`due`) that are decided: completed (or timed out,
    /// cancelled) in time, or breached.
    pub task_deadlines: usize,
    /// Of those, breached: their deadline fired.
    pub task_breached: usize,
    /// `(task_deadlines - task_breached) / task_deadlines`, from 0 to 1; `None` without task
    /// deadlines. Per task: a process can meet every instance deadline and still breach tasks.
    pub task_met_rate: Option<f64>,
    /// The business calendar its durations are counted on, or `None` for wall-clock time.
    pub calendar: Option<String>,
}

/// The figures of one user-task node.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeFigures {
    /// The process id.
    pub process: String,
    /// The node's YAML id.
    pub node: String,
    /// Its English name.
    pub name: Option<String>,
    /// Its Chinese name.
    pub name_zh: Option<String>,
    /// Tasks opened.
    pub opened: usize,
    /// Of those, completed.
    pub completed: usize,
    /// Of those, still open.
    pub open: usize,
    /// Of those, cancelled by the timeout route.
    pub timeouts: usize,
    /// Of those, withdrawn before they were done (`TaskState::Cancelled`).
    pub cancelled: usize,
    /// Task deadlines that fired.
    pub breaches: usize,
    /// Refused attempts on its tasks.
    pub denials: usize,
    /// Rework: how many times a case was sent back to this node (`Entry::SentBack`); each
    /// reopened the node as a new task, counted in `opened`.
    pub reworks: usize,
    /// Creation to first claim (or to completion, when never claimed).
    pub waiting: Durations,
    /// First claim to completion.
    pub handling: Durations,
    /// Runs again of a task with `repeat` (`Entry::Repeated`): a task that ran three times
    /// counts 2.
    pub repeated: usize,
    /// Items of a multi-instance task (`for_each`) that completed (`Entry::ItemCompleted`).
    pub items: usize,
}

/// The figures of one role.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RoleFigures {
    /// The process id.
    pub process: String,
    /// The role id.
    pub role: String,
    /// Its English name.
    pub name: String,
    /// Its Chinese name.
    pub name_zh: Option<String>,
    /// Completions credited to it, overrides included.
    pub completed: usize,
    /// Of those, accountable overrides.
    pub overrides: usize,
    /// Escalation levels that fired to it.
    pub escalations: usize,
}

/// The figures of one actor, as the audit trail names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ActorFigures {
    /// The process id.
    pub process: String,
    /// The actor id.
    pub actor: String,
    /// Tasks it completed, overrides included.
    pub completed: usize,
    /// Of those, as an accountable override.
    pub overrides: usize,
    /// Its refused attempts.
    pub denials: usize,
}

impl Durations {
    /// The nearest-rank p50, p90, p99 and the mean of `samples`.
    ///
    /// # Examples
    /// ```
    /// use chrono::Duration;
    /// let d = procflow::Durations::of([3, 1, 2].map(Duration::minutes));
    /// assert_eq!(d.p50, Some(Duration::minutes(2)));
    /// assert_eq!(d.p90, Some(Duration::minutes(3)));
    /// assert_eq!(d.mean, Some(Duration::minutes(2)));
    /// ```
    ///
    /// Complexity: a sort, O(n log n).
    pub fn of(samples: impl IntoIterator<Item = Duration>) -> Durations {
        let mut sorted: Vec<Duration> = samples.into_iter().collect();
        sorted.sort();
        let n = sorted.len();
        if n == 0 {
            return Durations::default();
        }
        let rank = |p: usize| sorted[(p * n).div_ceil(100).clamp(1, n) - 1];
        let total: i64 = sorted.iter().map(Duration::num_milliseconds).sum();
        Durations {
            count: n,
            p50: Some(rank(50)),
            p90: Some(rank(90)),
            p99: Some(rank(99)),
            mean: Some(Duration::milliseconds(total / n as i64)),
        }
    }
}

impl Report {
    /// Computes the figures of `instances` run on `defs`. Instances of another process than
    /// `options.process`, or started before `options.since`, are left out; so are instances
    /// whose definition is not in `defs` (counted in [`Report::skipped`]).
    ///
    /// Complexity: linear in the instances' tasks and audit records, plus sorting the samples.
    pub fn compute(
        defs: &[Arc<ProcessDef>],
        instances: &[Instance],
        options: &ReportOptions,
    ) -> Report {
        let mut tally = Tally::new(defs, options);
        for inst in instances {
            tally.add(inst);
        }
        tally.finish()
    }

    /// The report of the facts a store summed ([`Store::report_facts`]) on `defs`, as
    /// [`Report::compute`] makes it of the same instances.
    fn from_facts(
        defs: &[Arc<ProcessDef>],
        stored: StoredFacts,
        options: &ReportOptions,
    ) -> Report {
        let mut accs = Report::accs(defs, options);
        let mut skipped = 0;
        for (process, fact, subject, n) in &stored.counts {
            let n = usize::try_from(*n).unwrap_or(0);
            if *fact == Fact::Skipped {
                skipped += n;
            } else if let Some(acc) = accs.get_mut(process.as_str()) {
                acc.count(*fact, subject, n);
            }
        }
        for (process, fact, subject, from, to) in &stored.spans {
            if let Some(acc) = accs.get_mut(process.as_str()) {
                acc.span_fact(*fact, subject, *from, *to);
            }
        }
        let keys = options
            .by_key
            .as_deref()
            .map(|k| keys::ByKey::of_facts(&stored).finish(k))
            .unwrap_or_default();
        Report::finish(accs, skipped, keys)
    }

    /// An empty accumulator per process of `defs` (matching the process filter), by id.
    fn accs<'d>(defs: &'d [Arc<ProcessDef>], options: &ReportOptions) -> BTreeMap<&'d str, Acc> {
        let wanted = |id: &str| options.process.as_deref().is_none_or(|p| p == id);
        // Processes by id, newest version first in each.
        let mut groups: BTreeMap<&str, Vec<&ProcessDef>> = BTreeMap::new();
        for def in defs.iter().filter(|d| wanted(&d.key().id)) {
            groups.entry(&def.key().id).or_default().push(def);
        }
        groups
            .into_iter()
            .map(|(id, mut versions)| {
                versions.sort_by_key(|d| std::cmp::Reverse(d.key().version));
                let mut acc = Acc::new(&versions);
                // The newest version's calendar, when the options hold it.
                acc.calendar = versions[0].calendar().and_then(|name| {
                    options
                        .calendars
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(n, c)| (n.clone(), Arc::clone(c)))
                });
                (id, acc)
            })
            .collect()
    }

    fn finish(accs: BTreeMap<&str, Acc>, skipped: usize, keys: Vec<KeyFigures>) -> Report {
        let mut report = Report {
            skipped,
            keys,
            ..Report::default()
        };
        for (id, acc) in accs {
            acc.finish(id, &mut report);
        }
        report
    }

    /// Reads `store`'s definitions and history and computes the report. A store that keeps
    /// report facts ([`Store::report_facts`]: SQLite, PostgreSQL) sums them in the database;
    /// another one has its instances read and decoded ([`Store::history`]). Both give the
    /// report [`Report::compute`] gives of the same instances.
    ///
    /// # Errors
    /// [`ReportError::Store`] when the store fails; [`ReportError::Definition`] when a stored
    /// definition of a reported process does not compile.
    pub fn from_store(store: &dyn Store, options: &ReportOptions) -> Result<Report, ReportError> {
        let defs = Report::definitions(store, options.process.as_deref())?;
        if let Some(stored) = store.report_facts(
            options.process.as_deref(),
            options.since,
            options.by_key.as_deref(),
        )? {
            return Ok(Report::from_facts(&defs, stored, options));
        }
        Report::from_history(store, &defs, options)
    }

    /// [`Report::from_store`] by reading and decoding every instance, whatever the store keeps:
    /// what a report over a store without facts does, and what the facts are tested against.
    ///
    /// # Errors
    /// As [`Report::from_store`].
    pub fn from_store_decoded(
        store: &dyn Store,
        options: &ReportOptions,
    ) -> Result<Report, ReportError> {
        let defs = Report::definitions(store, options.process.as_deref())?;
        Report::from_history(store, &defs, options)
    }

    fn from_history(
        store: &dyn Store,
        defs: &[Arc<ProcessDef>],
        options: &ReportOptions,
    ) -> Result<Report, ReportError> {
        let history = store.history(options.process.as_deref(), options.since)?;
        let instances: Vec<Instance> = history.into_iter().map(|s| s.instance).collect();
        Ok(Report::compute(defs, &instances, options))
    }

    /// Compiles `store`'s definitions (of `process` only, when given), every version, ordered
    /// by id then version: what [`Report::compute`] and [`Report::heatmap`] need.
    ///
    /// # Errors
    /// As [`Report::from_store`].
    pub fn definitions(
        store: &dyn Store,
        process: Option<&str>,
    ) -> Result<Vec<Arc<ProcessDef>>, ReportError> {
        let stored = store.definitions()?;
        if let Some(p) = process
            && !stored.iter().any(|d| d.key.id == p)
        {
            let mut known: Vec<String> = stored.iter().map(|d| d.key.id.clone()).collect();
            known.sort();
            known.dedup();
            return Err(ReportError::UnknownProcess {
                process: p.to_owned(),
                known,
            });
        }
        stored
            .into_iter()
            .filter(|d| process.is_none_or(|p| p == d.key.id))
            .map(|d| {
                ProcessDef::from_yaml(&d.text)
                    .map(Arc::new)
                    .map_err(|source| ReportError::Definition { key: d.key, source })
            })
            .collect()
    }

    /// The figures of process `id`.
    pub fn process(&self, id: &str) -> Option<&ProcessFigures> {
        self.processes.iter().find(|p| p.process == id)
    }

    /// The figures of node `node` of process `process`.
    pub fn node(&self, process: &str, node: &str) -> Option<&NodeFigures> {
        self.nodes
            .iter()
            .find(|n| n.process == process && n.node == node)
    }

    /// The figures of role `role` of process `process`.
    pub fn role(&self, process: &str, role: &str) -> Option<&RoleFigures> {
        self.roles
            .iter()
            .find(|r| r.process == process && r.role == role)
    }

    /// The figures of actor `actor` in process `process`.
    pub fn actor(&self, process: &str, actor: &str) -> Option<&ActorFigures> {
        self.actors
            .iter()
            .find(|a| a.process == process && a.actor == actor)
    }

    /// Sets the `procflow_open_tasks` gauge of every node the report counts to its open tasks
    /// (feature `telemetry`; a node id several processes share counts theirs together, as the
    /// [`Telemetry`](crate::Telemetry) hook counts them). The hook moves the gauge by what its
    /// own engine changes; it cannot know what a store held when the engine opened it, nor what
    /// other replicas change. A host sets the gauge from a report over every instance (no
    /// `since`, no process filter) after opening the store, and again before each scrape when
    /// replicas share the store: [`Report::from_store`] sums the facts in the database
    /// (SQLite, PostgreSQL), 0.6-1.2 s over 1,000,000 instances.
    #[cfg(feature = "telemetry")]
    pub fn record_open_tasks(&self) {
        let mut open: BTreeMap<&str, usize> = BTreeMap::new();
        for n in &self.nodes {
            *open.entry(n.node.as_str()).or_default() += n.open;
        }
        for (node, n) in open {
            metrics::gauge!("procflow_open_tasks", "node" => node.to_owned()).set(n as f64);
        }
    }

    /// The report as JSON (pretty-printed): the fields of [`Report`], durations in seconds.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report is plain serde data")
    }

    /// The report as CSV: four tables (processes, nodes, roles, actors) separated by an empty
    /// line, each with its own header row. Every row's first field names its table, so
    /// `grep '^nodes,'` extracts one. Durations are in seconds, rates from 0 to 1, missing
    /// values empty.
    pub fn to_csv(&self) -> String {
        let mut out = String::new();
        for (i, (header, rows)) in self.sections(Style::Csv).into_iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            for row in std::iter::once(header).chain(rows) {
                let fields: Vec<String> = row.iter().map(|f| csv_field(f)).collect();
                out.push_str(&fields.join(","));
                out.push('\n');
            }
        }
        out
    }

    /// The report as aligned text tables, one per section, durations humanised (`1h30m`).
    pub fn to_table(&self) -> String {
        let by_key = self
            .keys
            .first()
            .map(|k| format!("By {}", k.key))
            .unwrap_or_default();
        let titles = [
            "Processes",
            "Nodes (user tasks, and tasks with for_each or repeat)",
            "Roles",
            "Actors",
            &by_key,
        ];
        let mut out = String::new();
        for (i, (header, rows)) in self.sections(Style::Table).into_iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            let _ = writeln!(out, "{}", titles[i]);
            if rows.is_empty() {
                out.push_str("  (none)\n");
                continue;
            }
            // The first column names the table in CSV; text tables have titles instead.
            let rows: Vec<Vec<String>> = std::iter::once(header)
                .chain(rows)
                .map(|r| r.into_iter().skip(1).collect())
                .collect();
            out.push_str(&align(&rows));
        }
        if self.skipped > 0 {
            let _ = writeln!(
                out,
                "\n{} instance(s) skipped: their definition is unknown",
                self.skipped
            );
        }
        out
    }

    /// The rows of each section, header first.
    fn sections(&self, style: Style) -> Vec<(Vec<String>, Vec<Vec<String>>)> {
        // Business durations are written in hours: a business day is no 24 hours.
        let business = |process: &str| self.process(process).is_some_and(|p| p.calendar.is_some());
        let d = |d: Option<Duration>, business: bool| style.duration(d, business);
        let n = |n: usize| n.to_string();
        let s = |s: &str| s.to_owned();
        let header = |cols: &[&str]| cols.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>();
        let processes = self
            .processes
            .iter()
            .map(|p| {
                let versions: Vec<String> = p.versions.iter().map(u32::to_string).collect();
                vec![
                    s("processes"),
                    p.process.clone(),
                    style.name(&p.name, p.name_zh.as_deref()),
                    versions.join(" "),
                    n(p.started),
                    n(p.completed),
                    n(p.open),
                    d(p.cycle_time.p50, business(&p.process)),
                    d(p.cycle_time.p90, business(&p.process)),
                    d(p.cycle_time.p99, business(&p.process)),
                    n(p.sla_instances),
                    n(p.sla_met),
                    n(p.sla_breached),
                    n(p.sla_pending),
                    style.rate(p.sla_met_rate),
                    n(p.task_deadlines),
                    n(p.task_breached),
                    style.rate(p.task_met_rate),
                    match (&p.calendar, style) {
                        (Some(c), Style::Table) => format!("business ({c})"),
                        (Some(c), Style::Csv) => c.clone(),
                        (None, Style::Table) => "wall-clock".to_owned(),
                        (None, Style::Csv) => String::new(),
                    },
                ]
            })
            .collect();
        let nodes = self
            .nodes
            .iter()
            .map(|x| {
                vec![
                    s("nodes"),
                    x.process.clone(),
                    x.node.clone(),
                    style.name(x.name.as_deref().unwrap_or(""), x.name_zh.as_deref()),
                    n(x.opened),
                    n(x.completed),
                    n(x.open),
                    n(x.timeouts),
                    n(x.breaches),
                    n(x.denials),
                    n(x.reworks),
                    d(x.waiting.p50, business(&x.process)),
                    d(x.waiting.p90, business(&x.process)),
                    d(x.waiting.mean, business(&x.process)),
                    d(x.handling.p50, business(&x.process)),
                    d(x.handling.p90, business(&x.process)),
                    n(x.repeated),
                    n(x.items),
                ]
            })
            .collect();
        let roles = self
            .roles
            .iter()
            .map(|r| {
                vec![
                    s("roles"),
                    r.process.clone(),
                    r.role.clone(),
                    style.name(&r.name, r.name_zh.as_deref()),
                    n(r.completed),
                    n(r.overrides),
                    n(r.escalations),
                ]
            })
            .collect();
        let actors = self
            .actors
            .iter()
            .map(|a| {
                vec![
                    s("actors"),
                    a.process.clone(),
                    a.actor.clone(),
                    n(a.completed),
                    n(a.overrides),
                    n(a.denials),
                ]
            })
            .collect();
        let (process_cols, node_cols): (&[&str], &[&str]) = match style {
            Style::Csv => (
                &[
                    "section",
                    "process",
                    "name",
                    "name_zh",
                    "versions",
                    "started",
                    "completed",
                    "open",
                    "cycle_p50_s",
                    "cycle_p90_s",
                    "cycle_p99_s",
                    "sla_instances",
                    "sla_met",
                    "sla_breached",
                    "sla_pending",
                    "sla_met_rate",
                    "task_deadlines",
                    "task_breached",
                    "task_met_rate",
                    "calendar",
                ],
                &[
                    "section",
                    "process",
                    "node",
                    "name",
                    "name_zh",
                    "opened",
                    "completed",
                    "open",
                    "timeouts",
                    "breaches",
                    "denials",
                    "reworks",
                    "wait_p50_s",
                    "wait_p90_s",
                    "wait_mean_s",
                    "handling_p50_s",
                    "handling_p90_s",
                    "repeated",
                    "items",
                ],
            ),
            Style::Table => (
                &[
                    "",
                    "process",
                    "name",
                    "versions",
                    "started",
                    "completed",
                    "open",
                    "cycle p50",
                    "p90",
                    "p99",
                    "SLA instances",
                    "met",
                    "breached",
                    "pending",
                    "instance met rate",
                    "task deadlines",
                    "breached",
                    "task met rate",
                    "durations",
                ],
                &[
                    "",
                    "process",
                    "node",
                    "name",
                    "opened",
                    "completed",
                    "open",
                    "timeouts",
                    "breaches",
                    "denials",
                    "reworks",
                    "wait p50",
                    "p90",
                    "mean",
                    "handling p50",
                    "p90",
                    "repeated",
                    "items",
                ],
            ),
        };
        let role_cols: &[&str] = match style {
            Style::Csv => &[
                "section",
                "process",
                "role",
                "name",
                "name_zh",
                "completed",
                "overrides",
                "escalations",
            ],
            Style::Table => &[
                "",
                "process",
                "role",
                "name",
                "completed",
                "overrides",
                "escalations",
            ],
        };
        let actor_cols = [
            "section",
            "process",
            "actor",
            "completed",
            "overrides",
            "denials",
        ];
        let mut sections = vec![
            (header(process_cols), processes),
            (header(node_cols), nodes),
            (header(role_cols), roles),
            (header(&actor_cols), actors),
        ];
        if !self.keys.is_empty() {
            sections.push(keys::section(&self.keys, matches!(style, Style::Csv)));
        }
        sections
    }

    /// The process graph of `def` as a self-contained SVG, each user-task node coloured by
    /// its rank among the nodes by `metric` (green the best, red the worst; the worst node also
    /// outlined and marked ▲), labelled with its owning roles and its figures from this report
    /// (nodes without figures are grey). Route labels are placed clear of nodes and of each
    /// other. See [`HeatMetric`].
    pub fn heatmap(&self, def: &ProcessDef, metric: HeatMetric) -> String {
        heatmap::svg(self, def, metric)
    }
}

/// How [`Report::sections`] writes values.
#[derive(Clone, Copy)]
enum Style {
    Csv,
    Table,
}

impl Style {
    fn duration(self, d: Option<Duration>, business: bool) -> String {
        match (self, d) {
            (_, None) => String::new(),
            (Style::Csv, Some(d)) => seconds_text(d),
            (Style::Table, Some(d)) if business => human_hours(d),
            (Style::Table, Some(d)) => human(d),
        }
    }

    fn rate(self, r: Option<f64>) -> String {
        match (self, r) {
            (_, None) => String::new(),
            (Style::Csv, Some(r)) => format!("{r:.4}"),
            (Style::Table, Some(r)) => format!("{:.1}%", r * 100.0),
        }
    }

    /// CSV: two fields (name, name_zh); a table: one.
    fn name(self, name: &str, zh: Option<&str>) -> String {
        match (self, zh) {
            (Style::Csv, _) => format!("{name}\u{0}{}", zh.unwrap_or("")),
            (Style::Table, Some(zh)) if !name.is_empty() => format!("{name} / {zh}"),
            (Style::Table, Some(zh)) => zh.to_owned(),
            (Style::Table, None) => name.to_owned(),
        }
    }
}

/// `a, b and c`, or `no definition`.
fn known_list(known: &[String]) -> String {
    match known {
        [] => "no definition".to_owned(),
        [one] => format!("only '{one}'"),
        _ => {
            let quoted: Vec<String> = known.iter().map(|k| format!("'{k}'")).collect();
            quoted.join(", ")
        }
    }
}

/// Seconds, with milliseconds only when there are any.
fn seconds_text(d: Duration) -> String {
    let ms = d.num_milliseconds();
    if ms % 1000 == 0 {
        (ms / 1000).to_string()
    } else {
        format!("{:.3}", ms as f64 / 1000.0)
    }
}

/// As [`human`], but in hours past a day (`29h`, `13h30m`): for business time, whose days are
/// working days, not 24 hours.
pub(crate) fn human_hours(d: Duration) -> String {
    let hours = d.num_hours().abs();
    if hours < 24 {
        return human(d);
    }
    let sign = if d < Duration::zero() { "-" } else { "" };
    let mins = d.num_minutes().abs() % 60;
    if mins > 0 {
        format!("{sign}{hours}h{mins}m")
    } else {
        format!("{sign}{hours}h")
    }
}

/// `2d3h`, `1h30m`, `45m10s`, `12s`.
pub(crate) fn human(d: Duration) -> String {
    let sign = if d < Duration::zero() { "-" } else { "" };
    let s = d.num_seconds().abs();
    let (days, hours, mins, secs) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    let text = if days > 0 {
        if hours > 0 {
            format!("{days}d{hours}h")
        } else {
            format!("{days}d")
        }
    } else if hours > 0 {
        if mins > 0 {
            format!("{hours}h{mins}m")
        } else {
            format!("{hours}h")
        }
    } else if mins > 0 {
        if secs > 0 {
            format!("{mins}m{secs}s")
        } else {
            format!("{mins}m")
        }
    } else if s == 0 && d.num_milliseconds() != 0 {
        format!("{}ms", d.num_milliseconds().abs())
    } else {
        format!("{secs}s")
    };
    format!("{sign}{text}")
}

fn secs<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.num_milliseconds() as f64 / 1000.0),
        None => s.serialize_none(),
    }
}

/// One CSV field; the name pair of [`Style::name`] becomes two fields.
fn csv_field(f: &str) -> String {
    f.split('\u{0}')
        .map(|part| {
            if part.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", part.replace('"', "\"\""))
            } else {
                part.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// How many columns `s` takes in a terminal: East Asian wide characters take two.
pub(crate) fn display_width(s: &str) -> usize {
    s.chars().map(|c| if is_wide(c) { 2 } else { 1 }).sum()
}

pub(crate) fn is_wide(c: char) -> bool {
    matches!(c as u32,
        0x1100..=0x115F | 0x2E80..=0x303E | 0x3041..=0x33FF | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF | 0xA000..=0xA4CF | 0xAC00..=0xD7A3 | 0xF900..=0xFAFF
        | 0xFE30..=0xFE4F | 0xFF00..=0xFF60 | 0xFFE0..=0xFFE6 | 0x20000..=0x3FFFD)
}

/// Aligns rows (the first is the header) in columns: text left, numbers and durations right.
fn align(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| display_width(s))
                .max()
                .unwrap_or(0)
        })
        .collect();
    // A column is numeric when every body cell starts with a digit or is empty.
    let numeric: Vec<bool> = (0..cols)
        .map(|c| {
            rows.iter()
                .skip(1)
                .filter_map(|r| r.get(c))
                .all(|s| s.is_empty() || s.starts_with(|ch: char| ch.is_ascii_digit() || ch == '-'))
        })
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let mut line = String::from("  ");
        for (c, cell) in row.iter().enumerate() {
            let cell = if cell.is_empty() && i > 0 { "-" } else { cell };
            let pad = " ".repeat(width[c].saturating_sub(display_width(cell)));
            if c > 0 {
                line.push_str("  ");
            }
            if numeric[c] {
                line.push_str(&pad);
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&pad);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A report summed one instance at a time: [`Report::compute`] adds every instance it is
/// given; a simulation adds each instance as it finishes and lets it go.
pub(crate) struct Tally<'d> {
    options: &'d ReportOptions,
    defs: HashMap<&'d DefKey, &'d ProcessDef>,
    accs: BTreeMap<&'d str, Acc>,
    skipped: usize,
    grouped: keys::ByKey,
}

impl<'d> Tally<'d> {
    /// Nothing summed yet, of instances run on `defs`.
    pub(crate) fn new(defs: &'d [Arc<ProcessDef>], options: &'d ReportOptions) -> Tally<'d> {
        let wanted = |id: &str| options.process.as_deref().is_none_or(|p| p == id);
        Tally {
            options,
            defs: defs
                .iter()
                .filter(|d| wanted(&d.key().id))
                .map(|d| (d.key(), &**d))
                .collect(),
            accs: Report::accs(defs, options),
            skipped: 0,
            grouped: keys::ByKey::default(),
        }
    }

    /// Adds an instance: one of another process than `options.process`, or started before
    /// `options.since`, is left out; so is one whose definition is not known (counted in
    /// [`Report::skipped`]).
    pub(crate) fn add(&mut self, inst: &Instance) {
        let Some(key) = inst.def() else {
            self.skipped += 1;
            return;
        };
        let options = self.options;
        if options.process.as_deref().is_some_and(|p| p != key.id)
            || options.since.is_some_and(|s| inst.started_at() < s)
        {
            return;
        }
        match (self.defs.get(key), self.accs.get_mut(key.id.as_str())) {
            (Some(def), Some(acc)) => {
                acc.add(&facts(def, inst));
                if let Some(k) = &options.by_key {
                    self.grouped.add(k, def, inst);
                }
            }
            _ => self.skipped += 1,
        }
    }

    /// The report of the instances added.
    pub(crate) fn finish(self) -> Report {
        let keys = self
            .options
            .by_key
            .as_deref()
            .map(|k| self.grouped.finish(k))
            .unwrap_or_default();
        Report::finish(self.accs, self.skipped, keys)
    }
}

/// The figures of one process as they accumulate.
struct Acc {
    name: String,
    name_zh: Option<String>,
    versions: Vec<u32>,
    started: usize,
    completed: usize,
    open: usize,
    cancelled: usize,
    cycles: Vec<Duration>,
    sla_instances: usize,
    sla_met: usize,
    sla_breached: usize,
    sla_pending: usize,
    task_deadlines: usize,
    task_breached: usize,
    /// The calendar durations count on (by name), or wall-clock time.
    calendar: Option<(String, Arc<BusinessCalendar>)>,
    nodes: IndexMap<String, NodeAcc>,
    roles: IndexMap<String, RoleAcc>,
    actors: BTreeMap<String, ActorFigures>,
}

struct NodeAcc {
    name: Option<String>,
    name_zh: Option<String>,
    opened: usize,
    completed: usize,
    open: usize,
    timeouts: usize,
    cancelled: usize,
    breaches: usize,
    denials: usize,
    reworks: usize,
    waits: Vec<Duration>,
    handling: Vec<Duration>,
    repeated: usize,
    items: usize,
}

struct RoleAcc {
    name: String,
    name_zh: Option<String>,
    completed: usize,
    overrides: usize,
    escalations: usize,
}

impl Acc {
    /// `versions`: newest first. Nodes and roles take their names from the newest version
    /// that has them.
    fn new(versions: &[&ProcessDef]) -> Acc {
        let newest = versions[0];
        let mut acc = Acc {
            name: newest.name().to_owned(),
            name_zh: newest.name_zh().map(str::to_owned),
            versions: versions.iter().rev().map(|d| d.key().version).collect(),
            started: 0,
            completed: 0,
            open: 0,
            cancelled: 0,
            cycles: Vec::new(),
            sla_instances: 0,
            sla_met: 0,
            sla_breached: 0,
            sla_pending: 0,
            task_deadlines: 0,
            task_breached: 0,
            calendar: None,
            nodes: IndexMap::new(),
            roles: IndexMap::new(),
            actors: BTreeMap::new(),
        };
        for def in versions {
            for (_, node) in def.nodes().filter(|(_, n)| {
                n.raci().is_some() || n.is_multi_instance() || n.max_iterations().is_some()
            }) {
                acc.nodes
                    .entry(node.id().to_owned())
                    .or_insert_with(|| NodeAcc {
                        name: node.name().map(str::to_owned),
                        name_zh: node.name_zh().map(str::to_owned),
                        opened: 0,
                        completed: 0,
                        open: 0,
                        timeouts: 0,
                        cancelled: 0,
                        breaches: 0,
                        denials: 0,
                        reworks: 0,
                        waits: Vec::new(),
                        handling: Vec::new(),
                        repeated: 0,
                        items: 0,
                    });
            }
            for (id, role) in def.roles() {
                acc.roles
                    .entry(id.as_str().to_owned())
                    .or_insert_with(|| RoleAcc {
                        name: role.name.clone(),
                        name_zh: role.name_zh.clone(),
                        completed: 0,
                        overrides: 0,
                        escalations: 0,
                    });
            }
        }
        acc
    }

    /// The time from `a` to `b`: business time on the process's calendar when it has one
    /// (wall-clock time where the calendar cannot tell, e.g. past the years it covers).
    fn span(&self, a: DateTime<Utc>, b: DateTime<Utc>) -> Duration {
        let wall = b - a;
        match &self.calendar {
            Some((_, cal)) if a <= b => cal
                .business_time_between(a, b)
                .map_or(wall, |d| d.value.as_duration()),
            _ => wall,
        }
    }

    /// Adds `n` to what `fact` counts for `subject` (a node, role or actor the process has;
    /// others are not reported).
    fn count(&mut self, fact: Fact, subject: &str, n: usize) {
        if let Some(node) = self.nodes.get_mut(subject) {
            if matches!(
                fact,
                Fact::NodeTimedOut | Fact::NodeCompleted | Fact::NodeOpen | Fact::NodeCancelled
            ) {
                // Each task is in one state: together they are the tasks opened.
                node.opened += n;
            }
            let field = match fact {
                Fact::NodeTimedOut => return,
                Fact::NodeCompleted => Some(&mut node.completed),
                Fact::NodeOpen => Some(&mut node.open),
                Fact::NodeTimeouts => Some(&mut node.timeouts),
                Fact::NodeCancelled => Some(&mut node.cancelled),
                Fact::NodeBreaches => Some(&mut node.breaches),
                Fact::NodeDenials => Some(&mut node.denials),
                Fact::NodeReworks => Some(&mut node.reworks),
                Fact::NodeRepeated => Some(&mut node.repeated),
                Fact::NodeItems => Some(&mut node.items),
                _ => None,
            };
            if let Some(field) = field {
                *field += n;
                return;
            }
        }
        if let Some(role) = self.roles.get_mut(subject) {
            let field = match fact {
                Fact::RoleCompleted => Some(&mut role.completed),
                Fact::RoleOverrides => Some(&mut role.overrides),
                Fact::RoleEscalations => Some(&mut role.escalations),
                _ => None,
            };
            if let Some(field) = field {
                *field += n;
                return;
            }
        }
        if matches!(
            fact,
            Fact::ActorCompleted | Fact::ActorOverrides | Fact::ActorDenials
        ) {
            let actor = self
                .actors
                .entry(subject.to_owned())
                .or_insert_with(|| ActorFigures {
                    process: String::new(),
                    actor: subject.to_owned(),
                    completed: 0,
                    overrides: 0,
                    denials: 0,
                });
            match fact {
                Fact::ActorCompleted => actor.completed += n,
                Fact::ActorOverrides => actor.overrides += n,
                _ => actor.denials += n,
            }
            return;
        }
        if matches!(fact, Fact::Completed | Fact::Open | Fact::Cancelled) {
            // Each instance has one of them: together they are the instances started.
            self.started += n;
        }
        let field = match fact {
            Fact::Completed => &mut self.completed,
            Fact::Open => &mut self.open,
            Fact::Cancelled => &mut self.cancelled,
            Fact::SlaInstances => &mut self.sla_instances,
            Fact::SlaMet => &mut self.sla_met,
            Fact::SlaBreached => &mut self.sla_breached,
            Fact::SlaPending => &mut self.sla_pending,
            Fact::TaskDeadlines => &mut self.task_deadlines,
            Fact::TaskBreached => &mut self.task_breached,
            _ => return,
        };
        *field += n;
    }

    /// Adds a span of `fact` (a cycle, or a waiting or handling time of node `subject`).
    fn span_fact(&mut self, fact: Fact, subject: &str, from: DateTime<Utc>, to: DateTime<Utc>) {
        let d = self.span(from, to);
        match fact {
            Fact::Cycle => self.cycles.push(d),
            Fact::Waiting => {
                if let Some(n) = self.nodes.get_mut(subject) {
                    n.waits.push(d);
                }
            }
            Fact::Handling => {
                if let Some(n) = self.nodes.get_mut(subject) {
                    n.handling.push(d);
                }
            }
            _ => {}
        }
    }

    /// Adds the facts of one instance.
    fn add(&mut self, facts: &InstanceFacts) {
        for ((fact, subject), n) in &facts.counts {
            self.count(*fact, subject, usize::try_from(*n).unwrap_or(0));
        }
        for (fact, subject, from, to) in &facts.spans {
            self.span_fact(*fact, subject, *from, *to);
        }
    }

    fn finish(self, id: &str, report: &mut Report) {
        report.processes.push(ProcessFigures {
            process: id.to_owned(),
            name: self.name,
            name_zh: self.name_zh,
            versions: self.versions,
            started: self.started,
            completed: self.completed,
            open: self.open,
            cancelled: self.cancelled,
            cycle_time: Durations::of(self.cycles),
            sla_instances: self.sla_instances,
            sla_met: self.sla_met,
            sla_breached: self.sla_breached,
            sla_pending: self.sla_pending,
            sla_met_rate: (self.sla_met + self.sla_breached > 0)
                .then(|| self.sla_met as f64 / (self.sla_met + self.sla_breached) as f64),
            task_deadlines: self.task_deadlines,
            task_breached: self.task_breached,
            calendar: self.calendar.map(|(name, _)| name),
            task_met_rate: (self.task_deadlines > 0).then(|| {
                (self.task_deadlines - self.task_breached) as f64 / self.task_deadlines as f64
            }),
        });
        for (node, n) in self.nodes {
            report.nodes.push(NodeFigures {
                process: id.to_owned(),
                node,
                name: n.name,
                name_zh: n.name_zh,
                opened: n.opened,
                completed: n.completed,
                open: n.open,
                cancelled: n.cancelled,
                timeouts: n.timeouts,
                breaches: n.breaches,
                denials: n.denials,
                reworks: n.reworks,
                waiting: Durations::of(n.waits),
                handling: Durations::of(n.handling),
                repeated: n.repeated,
                items: n.items,
            });
        }
        for (role, r) in self.roles {
            report.roles.push(RoleFigures {
                process: id.to_owned(),
                role,
                name: r.name,
                name_zh: r.name_zh,
                completed: r.completed,
                overrides: r.overrides,
                escalations: r.escalations,
            });
        }
        for (_, mut a) in self.actors {
            a.process = id.to_owned();
            report.actors.push(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let m = Duration::minutes;
        let d = Durations::of((1..=10).map(m));
        assert_eq!((d.p50, d.p90, d.p99), (Some(m(5)), Some(m(9)), Some(m(10))));
        let one = Durations::of([m(7)]);
        assert_eq!((one.p50, one.p99, one.count), (Some(m(7)), Some(m(7)), 1));
        assert_eq!(Durations::of([]), Durations::default());
    }

    #[test]
    fn human_durations() {
        let cases = [
            (Duration::seconds(12), "12s"),
            (Duration::seconds(610), "10m10s"),
            (Duration::minutes(90), "1h30m"),
            (Duration::hours(3), "3h"),
            (Duration::hours(51), "2d3h"),
            (Duration::milliseconds(250), "250ms"),
        ];
        for (d, text) in cases {
            assert_eq!(human(d), text);
        }
    }

    #[test]
    fn business_durations_in_hours() {
        assert_eq!(human_hours(Duration::hours(29)), "29h");
        assert_eq!(human_hours(Duration::minutes(25 * 60 + 30)), "25h30m");
        assert_eq!(human_hours(Duration::minutes(90)), "1h30m");
        assert_eq!(human(Duration::hours(29)), "1d5h");
    }

    #[test]
    fn csv_quotes() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("x\u{0}y"), "x,y");
    }

    #[test]
    fn wide_columns() {
        assert_eq!(display_width("审核 ok"), 7);
    }
}
