//! What-if: predicts cycle times, SLA breaches and bottlenecks of a process before changing it
//! (`procflow whatif MODEL.yaml`).
//!
//! A [`Model`] (YAML, validated with located errors) names the definitions, the arrivals, the
//! staff and their shifts, the handling times and the branch probabilities. [`simulate`] runs
//! the REAL engine on a manual clock for each replication (RACI, timers, calendars, escalations
//! and allocation all apply: nothing of the semantics is reimplemented here), driven by a
//! discrete-event loop, and [`Figures`] sums the replications up with 95% confidence intervals.
//! [`fit`](calibrate) writes a model from a store's audit trail.
//!
//! **Layer:** beside `report/` and `sim.rs`, above `exec`; nothing below uses it.

mod fit;
mod model;
mod run;
mod store;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

pub use fit::{CheckLine, calibrate, check, check_table};
pub use model::{Arrival, Choice, Customer, Dist, Model, StaffGroup, Work};
pub use run::{RunResult, replicate, run_once};

use crate::report::Report;
use crate::store::Store;

/// A figure over replications: the mean and the half-width of its 95% confidence interval
/// (Student's t; 0 with one replication).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Estimate {
    /// The mean over the replications that had a value.
    pub mean: f64,
    /// The half-width of the 95% confidence interval.
    pub ci95: f64,
    /// How many replications had a value.
    pub n: usize,
}

impl Estimate {
    /// The estimate of `xs` (values that are not finite are left out).
    pub fn of(xs: impl IntoIterator<Item = f64>) -> Estimate {
        let xs: Vec<f64> = xs.into_iter().filter(|x| x.is_finite()).collect();
        let n = xs.len();
        if n == 0 {
            return Estimate::default();
        }
        let mean = xs.iter().sum::<f64>() / n as f64;
        if n == 1 {
            return Estimate { mean, ci95: 0.0, n };
        }
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        Estimate {
            mean,
            ci95: t95(n - 1) * (var / n as f64).sqrt(),
            n,
        }
    }

    fn show(&self, digits: usize) -> String {
        if self.n == 0 {
            return "-".into();
        }
        if self.ci95 > 0.0 {
            format!("{:.digits$} ±{:.digits$}", self.mean, self.ci95)
        } else {
            format!("{:.digits$}", self.mean)
        }
    }
}

/// Student's t quantile for 97.5%, `df` degrees of freedom.
fn t95(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    T.get(df.saturating_sub(1)).copied().unwrap_or(1.96)
}

/// The figures of one process over the replications; durations in hours, rates in percent.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessStats {
    /// The process id.
    pub process: String,
    /// Instances started after the warm-up.
    pub started: Estimate,
    /// Of those, completed within the horizon.
    pub completed: Estimate,
    /// Cycle time (start to end) of the completed ones: median, hours.
    pub cycle_p50: Estimate,
    /// 90th percentile, hours.
    pub cycle_p90: Estimate,
    /// 99th percentile, hours.
    pub cycle_p99: Estimate,
    /// Share of instances whose process deadline did not fire, percent.
    pub sla_met: Estimate,
}

/// The figures of one user-task node; durations in hours.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStats {
    /// The process id.
    pub process: String,
    /// The node id.
    pub node: String,
    /// Tasks opened.
    pub opened: Estimate,
    /// Mean waiting (opened to first claim), hours.
    pub waiting: Estimate,
    /// Mean handling (claim to completion), hours.
    pub handling: Estimate,
    /// Share of tasks whose deadline fired, percent.
    pub breaches: Estimate,
}

/// The utilisation of one staff group.
#[derive(Clone, Debug, Serialize)]
pub struct StaffStats {
    /// `role[+role][@unit]`.
    pub group: String,
    /// How many people.
    pub people: usize,
    /// Busy time over time on shift, percent.
    pub utilisation: Estimate,
}

/// What a model predicts, over its replications.
#[derive(Clone, Debug, Serialize)]
pub struct Figures {
    /// The model's name.
    pub model: String,
    /// Replications run.
    pub replications: u32,
    /// Hours simulated, and hours of warm-up left out.
    pub horizon_hours: f64,
    /// Hours of warm-up.
    pub warm_up_hours: f64,
    /// Per process.
    pub processes: Vec<ProcessStats>,
    /// Per user-task node.
    pub nodes: Vec<NodeStats>,
    /// Per staff group.
    pub staff: Vec<StaffStats>,
    /// Timer firings per replication, by name: `breach`, `escalation`, `sla_breach`, ...
    pub timers: BTreeMap<String, Estimate>,
    /// Escalations that fired, per role (from the report).
    pub escalations: BTreeMap<String, Estimate>,
    /// Calls the engine refused, per replication, by kind.
    pub refused: BTreeMap<String, Estimate>,
}

fn hours(d: Option<chrono::Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.num_milliseconds() as f64 / 3.6e6)
}

impl Figures {
    /// Sums up the replications of `model`.
    pub fn of(model: &Model, runs: &[RunResult]) -> Figures {
        let reports: Vec<&Report> = runs.iter().map(|r| &r.report).collect();
        let mut processes = Vec::new();
        let mut nodes = Vec::new();
        if let Some(first) = reports.first() {
            for p in &first.processes {
                let each = |f: &dyn Fn(&crate::report::ProcessFigures) -> f64| {
                    Estimate::of(reports.iter().filter_map(|r| r.process(&p.process)).map(f))
                };
                processes.push(ProcessStats {
                    process: p.process.clone(),
                    started: each(&|q| q.started as f64),
                    completed: each(&|q| q.completed as f64),
                    cycle_p50: each(&|q| hours(q.cycle_time.p50)),
                    cycle_p90: each(&|q| hours(q.cycle_time.p90)),
                    cycle_p99: each(&|q| hours(q.cycle_time.p99)),
                    sla_met: each(&|q| q.sla_met_rate.map_or(f64::NAN, |r| 100.0 * r)),
                });
            }
            for n in &first.nodes {
                let each = |f: &dyn Fn(&crate::report::NodeFigures) -> f64| {
                    Estimate::of(
                        reports
                            .iter()
                            .filter_map(|r| r.node(&n.process, &n.node))
                            .map(f),
                    )
                };
                nodes.push(NodeStats {
                    process: n.process.clone(),
                    node: n.node.clone(),
                    opened: each(&|q| q.opened as f64),
                    waiting: each(&|q| hours(q.waiting.mean)),
                    handling: each(&|q| hours(q.handling.mean)),
                    breaches: each(&|q| {
                        if q.opened == 0 {
                            f64::NAN
                        } else {
                            100.0 * q.breaches as f64 / q.opened as f64
                        }
                    }),
                });
            }
        }
        let staff = model
            .staff
            .iter()
            .enumerate()
            .map(|(g, s)| StaffStats {
                group: s.label.clone(),
                people: s.people,
                utilisation: Estimate::of(runs.iter().map(|r| {
                    let (busy, shift) = r.staff[g];
                    if shift > 0.0 {
                        100.0 * busy / shift
                    } else {
                        f64::NAN
                    }
                })),
            })
            .collect();
        let counts = |get: &dyn Fn(&RunResult) -> BTreeMap<String, usize>| {
            let per: Vec<BTreeMap<String, usize>> = runs.iter().map(get).collect();
            let names: std::collections::BTreeSet<&String> =
                per.iter().flat_map(|m| m.keys()).collect();
            names
                .into_iter()
                .map(|k| {
                    (
                        k.clone(),
                        Estimate::of(per.iter().map(|m| m.get(k).copied().unwrap_or(0) as f64)),
                    )
                })
                .collect::<BTreeMap<_, _>>()
        };
        let escalations = counts(&|r: &RunResult| {
            let mut m = BTreeMap::new();
            for role in &r.report.roles {
                if role.escalations > 0 {
                    *m.entry(role.role.clone()).or_default() += role.escalations;
                }
            }
            m
        });
        Figures {
            model: model.name.clone(),
            replications: runs.len() as u32,
            horizon_hours: model.horizon as f64 / 3600.0,
            warm_up_hours: model.warm_up as f64 / 3600.0,
            processes,
            nodes,
            staff,
            timers: counts(&|r: &RunResult| r.timers.clone()),
            escalations,
            refused: counts(&|r: &RunResult| r.refused.clone()),
        }
    }

    /// Every figure as rows: (section, subject, metric, estimate).
    pub fn rows(&self) -> Vec<(String, String, String, Estimate)> {
        let mut rows = Vec::new();
        let mut add = |s: &str, subject: String, metric: &str, e: Estimate| {
            rows.push((s.to_owned(), subject, metric.to_owned(), e));
        };
        for p in &self.processes {
            let s = p.process.clone();
            add("process", s.clone(), "started", p.started);
            add("process", s.clone(), "completed", p.completed);
            add("process", s.clone(), "cycle p50 h", p.cycle_p50);
            add("process", s.clone(), "cycle p90 h", p.cycle_p90);
            add("process", s.clone(), "cycle p99 h", p.cycle_p99);
            add("process", s, "SLA met %", p.sla_met);
        }
        for n in &self.nodes {
            if n.opened.mean == 0.0 {
                continue;
            }
            let s = format!("{}/{}", n.process, n.node);
            add("node", s.clone(), "opened", n.opened);
            add("node", s.clone(), "waiting h", n.waiting);
            add("node", s.clone(), "handling h", n.handling);
            add("node", s, "breached %", n.breaches);
        }
        for st in &self.staff {
            let people = Estimate {
                mean: st.people as f64,
                ci95: 0.0,
                n: 1,
            };
            add("staff", st.group.clone(), "people", people);
            add("staff", st.group.clone(), "utilisation %", st.utilisation);
        }
        for (k, e) in &self.timers {
            add("timers", k.clone(), "fired", *e);
        }
        for (k, e) in &self.escalations {
            add("escalations", k.clone(), "to role", *e);
        }
        for (k, e) in &self.refused {
            add("refused", k.clone(), "calls", *e);
        }
        rows
    }

    /// A plain-text table.
    pub fn to_table(&self) -> String {
        let mut out = format!(
            "== what-if '{}': {} replication(s), {:.0} h simulated after {:.0} h warm-up (mean ±95% CI)\n",
            self.model,
            self.replications,
            self.horizon_hours - self.warm_up_hours,
            self.warm_up_hours
        );
        let mut section = String::new();
        for (s, subject, metric, e) in self.rows() {
            if s != section {
                let _ = writeln!(out, "-- {s}");
                section = s;
            }
            let _ = writeln!(out, "  {subject:<46} {metric:<14} {:>18}", e.show(2));
        }
        out
    }

    /// CSV: `section,subject,metric,mean,ci95,n`.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("section,subject,metric,mean,ci95,n\n");
        for (s, subject, metric, e) in self.rows() {
            let _ = writeln!(
                out,
                "{s},{},{metric},{:.4},{:.4},{}",
                csv(&subject),
                e.mean,
                e.ci95,
                e.n
            );
        }
        out
    }

    /// JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

fn csv(s: &str) -> String {
    if s.contains([',', '"']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Two models side by side: every figure of both and the difference (other − base).
pub fn compare_table(base: &Figures, other: &Figures) -> String {
    let mut out = format!(
        "== what-if comparison: '{}' → '{}', {} replication(s) each, common random numbers\n",
        base.model, other.model, base.replications
    );
    let theirs: BTreeMap<(String, String, String), Estimate> = other
        .rows()
        .into_iter()
        .map(|(s, a, m, e)| ((s, a, m), e))
        .collect();
    let mut section = String::new();
    let mut seen = std::collections::BTreeSet::new();
    for (s, subject, metric, e) in base.rows() {
        if s != section {
            let _ = writeln!(
                out,
                "-- {s:<44} {:<14} {:>16} {:>16} {:>10}",
                "", base.model, other.model, "change"
            );
            section = s.clone();
        }
        let o = theirs.get(&(s.clone(), subject.clone(), metric.clone()));
        seen.insert((s.clone(), subject.clone(), metric.clone()));
        let diff = match o {
            Some(o) if o.n > 0 && e.n > 0 => format!("{:+.2}", o.mean - e.mean),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "  {subject:<44} {metric:<14} {:>16} {:>16} {diff:>10}",
            e.show(2),
            o.map_or("-".into(), |o| o.show(2))
        );
    }
    for (key, e) in &theirs {
        if !seen.contains(key) {
            let _ = writeln!(
                out,
                "  {:<44} {:<14} {:>16} {:>16} {:>10}",
                key.1,
                key.2,
                "-",
                e.show(2),
                "new"
            );
        }
    }
    out
}

/// Two models side by side as CSV: `section,subject,metric,base,other,change`.
pub fn compare_csv(base: &Figures, other: &Figures) -> String {
    let theirs: BTreeMap<(String, String, String), Estimate> = other
        .rows()
        .into_iter()
        .map(|(s, a, m, e)| ((s, a, m), e))
        .collect();
    let mut out = String::from("section,subject,metric,base,base_ci95,other,other_ci95,change\n");
    for (s, subject, metric, e) in base.rows() {
        let o = theirs
            .get(&(s.clone(), subject.clone(), metric.clone()))
            .copied()
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{s},{},{metric},{:.4},{:.4},{:.4},{:.4},{:.4}",
            csv(&subject),
            e.mean,
            e.ci95,
            o.mean,
            o.ci95,
            o.mean - e.mean
        );
    }
    out
}

/// A fresh in-memory store for one replication: like [`MemoryStore`](crate::MemoryStore), but
/// it keeps instances unencoded and indexes the due timers, so a simulated year stays linear.
pub fn memory_store() -> Arc<dyn Store> {
    Arc::new(store::SimStore::default())
}

/// Runs every replication of `model` on `threads` threads (each on its own memory store);
/// `progress` hears each replication done. Replication `r` uses the seed `(seed, r)`, so two
/// models with the same seed share their arrival streams (common random numbers).
///
/// # Errors
/// The engine refused the model's definitions.
pub fn simulate(
    model: &Model,
    threads: usize,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Vec<RunResult>, String> {
    let n = model.replications as usize;
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let mut slots: Vec<Option<Result<RunResult, String>>> = (0..n).map(|_| None).collect();
    let results: std::sync::Mutex<&mut Vec<Option<Result<RunResult, String>>>> =
        std::sync::Mutex::new(&mut slots);
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, n.max(1)) {
            s.spawn(|| {
                loop {
                    let r = next.fetch_add(1, Ordering::Relaxed);
                    if r >= n {
                        break;
                    }
                    let result = replicate(model, r as u32);
                    if let Ok(mut slots) = results.lock() {
                        slots[r] = Some(result);
                    }
                    progress(done.fetch_add(1, Ordering::Relaxed) + 1);
                }
            });
        }
    });
    slots
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("a replication did not run".into())))
        .collect()
}
