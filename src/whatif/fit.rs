//! Calibration: a model fitted from a store's audit trail (arrival rates, branch probabilities,
//! customers who do not answer, log-normal handling times), and the check that replays it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::model::{Choice, Dist, Model};
use super::{Estimate, Figures};
use crate::def::ProcessDef;
use crate::model::{Entry, Instance};
use crate::report::{Report, ReportOptions};
use crate::store::Store;
use crate::time::calendar::BusinessCalendar;
use crate::vars::Vars;

fn open(path: &Path) -> Result<Box<dyn Store>, String> {
    if !path.exists() {
        return Err(format!("{}: no such store", path.display()));
    }
    crate::store::SqliteStore::open(path)
        .map(|s| Box::new(s) as Box<dyn Store>)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn instances(store: &dyn Store) -> Result<Vec<Instance>, String> {
    Ok(store
        .history(None, None)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|s| s.instance)
        .collect())
}

/// Claim to completion of every task at `node`, in seconds.
///
/// With a calendar, the working time between the two (a person works within the calendar's
/// working time: the night between a claim and a completion is not handling).
fn samples_of(
    insts: &[Instance],
    defs: &[Arc<ProcessDef>],
    process: &str,
    node: &str,
    calendar: Option<&BusinessCalendar>,
) -> Vec<f64> {
    let mut out = Vec::new();
    for inst in insts {
        if inst.def().is_none_or(|k| k.id != process) {
            continue;
        }
        let Some(def) = defs.iter().find(|d| Some(d.key()) == inst.def()) else {
            continue;
        };
        let Some(id) = def.node_id(node) else {
            continue;
        };
        let mut claimed: HashMap<u32, DateTime<Utc>> = HashMap::new();
        let mut at_node: HashMap<u32, bool> = HashMap::new();
        for r in inst.audit() {
            match &r.what {
                Entry::TaskCreated { task, node } => {
                    at_node.insert(*task, *node == id);
                }
                Entry::Claimed { task, .. } => {
                    claimed.entry(*task).or_insert(r.at);
                }
                Entry::Completed { task, .. } if at_node.get(task) == Some(&true) => {
                    if let Some(c) = claimed.get(task) {
                        let d = match calendar {
                            Some(cal) => cal
                                .business_time_between(*c, r.at)
                                .map_or(r.at - *c, |b| b.value.as_duration()),
                            None => r.at - *c,
                        };
                        out.push(d.num_milliseconds() as f64 / 1000.0);
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// The handling times (claim to completion, seconds) a store recorded for `node` of `process`:
/// the samples of an empirical distribution.
///
/// # Errors
/// The store does not open or read.
pub(crate) fn handling_samples(
    path: &Path,
    process: &str,
    node: &str,
    calendar: Option<&BusinessCalendar>,
) -> Result<Vec<f64>, String> {
    let store = open(path)?;
    let defs = Report::definitions(&*store, None).map_err(|e| e.to_string())?;
    Ok(samples_of(
        &instances(&*store)?,
        &defs,
        process,
        node,
        calendar,
    ))
}

/// A log-normal fit of positive samples: (median, sigma) of the logarithms' mean and deviation.
fn lognormal(samples: &[f64]) -> Option<Dist> {
    let logs: Vec<f64> = samples
        .iter()
        .filter(|s| **s > 0.0)
        .map(|s| s.ln())
        .collect();
    if logs.len() < 2 {
        return None;
    }
    let n = logs.len() as f64;
    let mu = logs.iter().sum::<f64>() / n;
    let var = logs.iter().map(|l| (l - mu).powi(2)).sum::<f64>() / (n - 1.0);
    Some(Dist::LogNormal {
        median: mu.exp(),
        sigma: var.sqrt(),
    })
}

fn matches(vars: &Vars, c: &Choice) -> bool {
    !c.set.is_empty() && c.set.iter().all(|(k, v)| vars.get(k) == Some(v))
}

/// Shares of `choices` among `insts` by the variables they hold; `None` when none matched.
fn shares(insts: &[&Instance], choices: &[Choice]) -> Option<Vec<f64>> {
    let mut counts = vec![0usize; choices.len()];
    for inst in insts {
        if let Some(i) = choices.iter().position(|c| matches(inst.vars(), c)) {
            counts[i] += 1;
        }
    }
    let total: usize = counts.iter().sum();
    (total > 0).then(|| counts.iter().map(|c| *c as f64 / total as f64).collect())
}

/// Writes a model whose arrival rates (per business hour and per other hour, from the
/// instances' starts over the span the store covers), start-variable mixes and branch
/// probabilities (from the instances' variables and send-backs), customers' no-answer shares
/// (from task timeouts) and log-normal handling times (claim to completion) are fitted from
/// `store`. What a store's audit trail does not record (the definitions, the staff and their
/// shifts, the variables a branch sets) comes from `base`.
///
/// # Errors
/// The store does not open or read, or holds no instance of the base model's processes.
pub fn calibrate(store: &Path, base: &Model) -> Result<(Model, String), String> {
    let store = open(store)?;
    let defs = Report::definitions(&*store, None).map_err(|e| e.to_string())?;
    let insts = instances(&*store)?;
    let report = Report::compute(&defs, &insts, &ReportOptions::default());
    let mut model = base.clone();
    let first = insts.iter().map(Instance::started_at).min();
    let last = insts
        .iter()
        .flat_map(|i| i.audit().last().map(|r| r.at))
        .max();
    let (Some(first), Some(last)) = (first, last) else {
        return Err("the store holds no instance".into());
    };
    // The span: whole days from the first start's midnight (in the first calendar's zone).
    let zone = base.calendars.first().map(|(_, c)| c.zone());
    let start = match zone {
        Some(z) => first
            .with_timezone(&z)
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .and_then(|d| d.and_local_timezone(z).earliest())
            .map_or(first, |d| d.to_utc()),
        None => first,
    };
    let span = (last - start).num_seconds().max(3600);
    model.start = start;
    model.horizon = span;
    model.warm_up = base.warm_up.min(span / 4);
    model.replications = base.replications.clamp(1, 4);
    for a in &mut model.arrivals {
        let starts: Vec<&Instance> = insts
            .iter()
            .filter(|i| i.def().is_some_and(|k| k.id == a.process) && i_started_by_arrival(i))
            .collect();
        let (mut work_h, mut other_h, mut work_n, mut other_n) = (0.0, 0.0, 0usize, 0usize);
        if let Some((_, cal)) = base.calendars.get(a.calendar) {
            let mut t = start;
            let end = start + Duration::seconds(span);
            while t < end {
                let working = cal.is_working(t).is_ok_and(|w| w.value);
                let next = t + Duration::minutes(30);
                let n = starts
                    .iter()
                    .filter(|i| i.started_at() >= t && i.started_at() < next)
                    .count();
                if working {
                    work_h += 0.5;
                    work_n += n;
                } else {
                    other_h += 0.5;
                    other_n += n;
                }
                t = next;
            }
        } else {
            work_h = span as f64 / 3600.0;
            work_n = starts.len();
        }
        a.per_business_hour = if work_h > 0.0 {
            work_n as f64 / work_h
        } else {
            0.0
        };
        a.per_other_hour = if other_h > 0.0 {
            other_n as f64 / other_h
        } else {
            0.0
        };
        a.weekday = [1.0; 7];
        a.hour = [1.0; 24];
        for (_, choices) in &mut a.mix {
            if let Some(s) = shares(&starts, choices) {
                for (c, p) in choices.iter_mut().zip(s) {
                    c.p = p;
                }
            }
        }
    }
    for ((process, node), work) in &mut model.work {
        let cal = base
            .staff
            .iter()
            .find_map(|s| s.shift)
            .and_then(|c| base.calendars.get(c))
            .map(|(_, c)| c);
        if let Some(d) = lognormal(&samples_of(&insts, &defs, process, node, cal)) {
            work.handling = Some(d);
        }
        let figures = report.node(process, node);
        if let (Some(c), Some(f)) = (&mut work.customer, figures)
            && f.opened > 0
        {
            c.no_answer = f.timeouts as f64 / f.opened as f64;
        }
        if work.branches.is_empty() {
            continue;
        }
        // Instances where the node completed.
        let done: Vec<&Instance> = insts
            .iter()
            .filter(|i| i.def().is_some_and(|k| k.id == *process))
            .filter(|i| {
                defs.iter()
                    .find(|d| Some(d.key()) == i.def())
                    .and_then(|d| d.node_id(node))
                    .is_some_and(|n| {
                        i.tasks().iter().any(|t| {
                            t.node() == n
                                && matches!(t.state(), crate::model::TaskState::Completed { .. })
                        })
                    })
            })
            .collect();
        let sent_back = insts
            .iter()
            .filter(|i| i.def().is_some_and(|k| k.id == *process))
            .flat_map(|i| i.audit())
            .filter(
                |r| matches!(&r.what, Entry::SentBack(b) if node_is(&defs, process, b.from, node)),
            )
            .count() as f64;
        let back_share = if done.is_empty() && sent_back == 0.0 {
            None
        } else {
            Some(sent_back / (done.len() as f64 + sent_back))
        };
        let setters: Vec<usize> = (0..work.branches.len())
            .filter(|i| work.branches[*i].send_back.is_none())
            .collect();
        let backs = work.branches.len() - setters.len();
        let rest = if backs > 0 {
            let b = back_share.unwrap_or(0.0);
            for c in work.branches.iter_mut().filter(|c| c.send_back.is_some()) {
                c.p = b / backs as f64;
            }
            1.0 - b
        } else {
            1.0
        };
        let choices: Vec<Choice> = setters.iter().map(|i| work.branches[*i].clone()).collect();
        match shares(&done, &choices) {
            Some(s) => {
                for (i, p) in setters.iter().zip(s) {
                    work.branches[*i].p = p * rest;
                }
            }
            None => {
                let old: f64 = setters.iter().map(|i| work.branches[*i].p).sum();
                for i in &setters {
                    let p = &mut work.branches[*i].p;
                    *p = if old > 0.0 {
                        *p / old * rest
                    } else {
                        rest / setters.len() as f64
                    };
                }
            }
        }
    }
    let yaml = to_yaml(&model, &format!("{} (fitted)", base.name));
    Ok((model, yaml))
}

/// Instances started by a call activity have a parent; arrivals are the others.
fn i_started_by_arrival(i: &Instance) -> bool {
    i.parent().is_none()
}

fn node_is(defs: &[Arc<ProcessDef>], process: &str, id: crate::ids::NodeId, node: &str) -> bool {
    defs.iter()
        .filter(|d| d.key().id == process)
        .any(|d| d.try_node(id).is_some_and(|n| n.id() == node))
}

fn secs(s: f64) -> String {
    format!("{:.0}s", s.max(0.0))
}

fn dist_yaml(d: &Dist) -> String {
    match d {
        Dist::Fixed(v) => format!("{{ fixed: {} }}", secs(*v)),
        Dist::Exponential { mean } => format!("{{ exponential: {{ mean: {} }} }}", secs(*mean)),
        Dist::LogNormal { median, sigma } => format!(
            "{{ lognormal: {{ median: {}, sigma: {:.3} }} }}",
            secs(*median),
            sigma
        ),
        Dist::Uniform { min, max } => format!(
            "{{ uniform: {{ min: {}, max: {} }} }}",
            secs(*min),
            secs(*max)
        ),
        // Samples are not written back: a fitted log-normal stands for them.
        Dist::Empirical(s) => {
            lognormal(s).map_or_else(|| "{ fixed: 600s }".into(), |d| dist_yaml(&d))
        }
    }
}

fn json(v: &impl Serialize) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

fn path(p: &Path) -> String {
    json(&std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned()))
}

fn choices_yaml(out: &mut String, indent: &str, choices: &[Choice]) {
    // Rounded to 4 places; the last takes the rest, so that they sum to one.
    let mut left: f64 = 1.0;
    for (i, c) in choices.iter().enumerate() {
        let p = if i + 1 == choices.len() {
            (left * 1e4_f64).round() / 1e4
        } else {
            (c.p * 1e4).round() / 1e4
        };
        left -= p;
        let _ = write!(out, "{indent}- {{ p: {p}");
        if !c.set.is_empty() {
            let _ = write!(out, ", set: {}", json(&c.set));
        }
        if let Some(b) = &c.send_back {
            let _ = write!(out, ", send_back: {b}");
        }
        out.push_str(" }\n");
    }
}

/// The model as a model file (paths made absolute).
pub(crate) fn to_yaml(m: &Model, name: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "whatif: {}", json(&name));
    o.push_str("definitions:\n");
    for f in &m.def_files {
        let _ = writeln!(o, "  - {}", path(f));
    }
    if let Some(f) = &m.org_file {
        let _ = writeln!(o, "organisation: {}", path(f));
    }
    if !m.calendar_files.is_empty() {
        o.push_str("calendars:\n");
        for (n, f) in &m.calendar_files {
            let _ = writeln!(o, "  {n}: {}", path(f));
        }
    }
    let _ = writeln!(o, "start: {}", m.start.to_rfc3339());
    let _ = writeln!(o, "horizon: {}", secs(m.horizon as f64));
    let _ = writeln!(o, "warm_up: {}", secs(m.warm_up as f64));
    let _ = writeln!(o, "replications: {}", m.replications);
    let _ = writeln!(o, "seed: {}", m.seed);
    o.push_str("arrivals:\n");
    for a in &m.arrivals {
        let _ = writeln!(o, "  {}:", a.process);
        let _ = writeln!(o, "    per_business_hour: {:.4}", a.per_business_hour);
        let _ = writeln!(o, "    per_other_hour: {:.4}", a.per_other_hour);
        if let Some((n, _)) = m.calendars.get(a.calendar) {
            let _ = writeln!(o, "    calendar: {n}");
        }
        const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
        let days: Vec<String> = (0..7)
            .filter(|d| a.weekday[*d] != 1.0)
            .map(|d| format!("{}: {}", DAYS[d], a.weekday[d]))
            .collect();
        if !days.is_empty() {
            let _ = writeln!(o, "    weekday: {{ {} }}", days.join(", "));
        }
        let hours: Vec<String> = (0..24)
            .filter(|h| a.hour[*h] != 1.0)
            .map(|h| format!("\"{h}\": {}", a.hour[h]))
            .collect();
        if !hours.is_empty() {
            let _ = writeln!(o, "    hour: {{ {} }}", hours.join(", "));
        }
        if !a.vars.is_empty() {
            let _ = writeln!(o, "    vars: {}", json(&a.vars));
        }
        if !a.mix.is_empty() {
            o.push_str("    mix:\n");
            for (f, c) in &a.mix {
                let _ = writeln!(o, "      {f}:");
                choices_yaml(&mut o, "        ", c);
            }
        }
    }
    o.push_str("staff:\n");
    for s in &m.staff {
        let _ = write!(
            o,
            "  - {{ roles: {}, people: {}, prefix: {}",
            json(&s.roles),
            if s.names.is_empty() {
                s.people.to_string()
            } else {
                "all".to_owned()
            },
            json(&s.prefix)
        );
        if let Some((_, unit)) = s.label.split_once('@') {
            let _ = write!(o, ", unit: {}", json(&unit));
        }
        let shift = s
            .shift
            .and_then(|c| m.calendars.get(c))
            .map_or("always", |(n, _)| n.as_str());
        let _ = writeln!(o, ", shift: {shift} }}");
    }
    if let Some(d) = &m.default_handling {
        let _ = writeln!(o, "default_handling: {}", dist_yaml(d));
    }
    for (section, service) in [("tasks", false), ("services", true)] {
        let mut by_process: Vec<(&str, &str, &super::Work)> = Vec::new();
        for ((p, n), w) in &m.work {
            let is_service = m
                .def(p)
                .and_then(|d| d.node_id(n).map(|id| d.node(id).kind()))
                == Some(crate::def::NodeKind::ServiceTask);
            if is_service == service {
                by_process.push((p, n, w));
            }
        }
        if by_process.is_empty() {
            continue;
        }
        let _ = writeln!(o, "{section}:");
        let mut last = "";
        for (p, n, w) in by_process {
            if p != last {
                let _ = writeln!(o, "  {p}:");
                last = p;
            }
            let _ = writeln!(o, "    {n}:");
            if let Some(d) = &w.handling {
                let _ = writeln!(o, "      handling: {}", dist_yaml(d));
            }
            if !w.set.is_empty() {
                let _ = writeln!(o, "      set: {}", json(&w.set));
            }
            if !w.branches.is_empty() {
                o.push_str("      branches:\n");
                choices_yaml(&mut o, "        ", &w.branches);
            }
            if let Some(c) = &w.customer {
                let _ = writeln!(
                    o,
                    "      customer: {{ no_answer: {:.4}, delay: {} }}",
                    c.no_answer,
                    dist_yaml(&c.delay)
                );
            }
            if w.handling.is_none()
                && w.set.is_empty()
                && w.branches.is_empty()
                && w.customer.is_none()
            {
                o.push_str("      {}\n");
            }
        }
    }
    o
}

/// One figure of the calibration check: what the store recorded and what the fitted model
/// simulated.
#[derive(Clone, Debug, Serialize)]
pub struct CheckLine {
    /// What: `complaint-handling started`, `.../diagnose handling h`, ...
    pub what: String,
    /// The recorded figure.
    pub recorded: f64,
    /// The simulated one (mean over replications).
    pub simulated: Estimate,
}

impl CheckLine {
    /// `simulated / recorded - 1`, when the recorded figure is not zero.
    pub fn relative(&self) -> Option<f64> {
        (self.recorded.abs() > 1e-9).then(|| self.simulated.mean / self.recorded - 1.0)
    }
}

/// Compares a fitted model's simulated figures with what `store` recorded after the model's
/// warm-up: instances started and completed, cycle-time median and p90 per process, mean
/// handling and waiting per task node.
///
/// # Errors
/// The store does not open or read.
pub fn check(store: &Path, fitted: &Figures, model: &Model) -> Result<Vec<CheckLine>, String> {
    let store = open(store)?;
    let since = model.start + Duration::seconds(model.warm_up);
    let recorded = Report::from_store(&*store, &ReportOptions::default().since(since))
        .map_err(|e| e.to_string())?;
    let h = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.num_milliseconds() as f64 / 3.6e6);
    let mut out = Vec::new();
    for p in &fitted.processes {
        let Some(r) = recorded.process(&p.process) else {
            continue;
        };
        for (what, rec, sim) in [
            ("started", r.started as f64, p.started),
            ("completed", r.completed as f64, p.completed),
            ("cycle p50 h", h(r.cycle_time.p50), p.cycle_p50),
            ("cycle p90 h", h(r.cycle_time.p90), p.cycle_p90),
        ] {
            out.push(CheckLine {
                what: format!("{} {what}", p.process),
                recorded: rec,
                simulated: sim,
            });
        }
    }
    for n in &fitted.nodes {
        let Some(r) = recorded.node(&n.process, &n.node) else {
            continue;
        };
        if r.opened < 20 {
            continue;
        }
        for (what, rec, sim) in [
            ("handling h", h(r.handling.mean), n.handling),
            ("waiting h", h(r.waiting.mean), n.waiting),
        ] {
            out.push(CheckLine {
                what: format!("{}/{} {what}", n.process, n.node),
                recorded: rec,
                simulated: sim,
            });
        }
    }
    Ok(out)
}

/// The check as a table.
pub fn check_table(lines: &[CheckLine]) -> String {
    let mut o = format!(
        "== calibration check: recorded vs simulated by the fitted model\n  {:<56} {:>10} {:>18} {:>8}\n",
        "figure", "recorded", "simulated", "diff"
    );
    for l in lines {
        let _ = writeln!(
            o,
            "  {:<56} {:>10.2} {:>18} {:>8}",
            l.what,
            l.recorded,
            l.simulated.show(2),
            l.relative()
                .map_or("-".into(), |r| format!("{:+.0}%", 100.0 * r))
        );
    }
    o
}
