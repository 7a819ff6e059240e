//! The what-if model file: its YAML shape (DTOs with locations) and its validation into a
//! [`Model`]. README.md, "What-if", describes the file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Datelike, Timelike, Utc, Weekday};
use serde::Deserialize;

use crate::def::{LoadError, NodeKind, ProcessDef};
use crate::org::Organisation;
use crate::time::calendar::BusinessCalendar;
use crate::vars::Vars;
use crate::yaml::{At, Entries, Location, ProblemKind, Report, parse_yaml};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    whatif: At<String>,
    definitions: At<Vec<At<String>>>,
    #[serde(default)]
    organisation: Option<At<String>>,
    #[serde(default)]
    calendars: Entries<String>,
    start: At<String>,
    horizon: At<String>,
    #[serde(default)]
    warm_up: Option<At<String>>,
    #[serde(default)]
    replications: Option<At<u32>>,
    #[serde(default)]
    seed: u64,
    arrivals: Entries<RawArrival>,
    staff: At<Vec<At<RawStaff>>>,
    #[serde(default)]
    default_handling: Option<At<RawDist>>,
    #[serde(default)]
    tasks: Entries<Entries<RawWork>>,
    #[serde(default)]
    services: Entries<Entries<RawWork>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArrival {
    per_business_hour: At<f64>,
    #[serde(default)]
    per_other_hour: Option<At<f64>>,
    #[serde(default)]
    calendar: Option<At<String>>,
    #[serde(default)]
    weekday: Entries<f64>,
    #[serde(default)]
    hour: Entries<f64>,
    #[serde(default)]
    vars: Vars,
    #[serde(default)]
    mix: Entries<Vec<At<RawChoice>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChoice {
    p: At<f64>,
    #[serde(default)]
    set: Vars,
    #[serde(default)]
    send_back: Option<At<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStaff {
    #[serde(default)]
    role: Option<At<String>>,
    #[serde(default)]
    roles: Vec<At<String>>,
    people: At<RawPeople>,
    #[serde(default)]
    unit: Option<At<String>>,
    #[serde(default)]
    shift: Option<At<String>>,
    #[serde(default)]
    prefix: Option<String>,
}

/// `people:` of a staff group: how many anonymous people, or `all` (the organisation's).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawPeople {
    Count(i64),
    Word(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWork {
    #[serde(default)]
    handling: Option<At<RawDist>>,
    #[serde(default)]
    set: Vars,
    #[serde(default)]
    branches: Option<At<Vec<At<RawChoice>>>>,
    #[serde(default)]
    customer: Option<At<RawCustomer>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCustomer {
    no_answer: At<f64>,
    #[serde(default)]
    delay: Option<At<RawDist>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDist {
    #[serde(default)]
    fixed: Option<String>,
    #[serde(default)]
    exponential: Option<RawParams>,
    #[serde(default)]
    lognormal: Option<RawParams>,
    #[serde(default)]
    uniform: Option<RawParams>,
    #[serde(default)]
    empirical: Option<RawParams>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawParams {
    #[serde(default)]
    mean: Option<String>,
    #[serde(default)]
    median: Option<String>,
    #[serde(default)]
    sigma: Option<f64>,
    #[serde(default)]
    min: Option<String>,
    #[serde(default)]
    max: Option<String>,
    #[serde(default)]
    store: Option<String>,
    #[serde(default)]
    process: Option<String>,
    #[serde(default)]
    node: Option<String>,
}

/// A random duration, in seconds.
#[derive(Clone, Debug, PartialEq)]
pub enum Dist {
    /// Always the same.
    Fixed(f64),
    /// Exponential with this mean.
    Exponential {
        /// The mean, in seconds.
        mean: f64,
    },
    /// Log-normal: `exp(mu + sigma * N(0,1))`, `mu = ln(median)`.
    LogNormal {
        /// The median, in seconds.
        median: f64,
        /// The standard deviation of the logarithm.
        sigma: f64,
    },
    /// Uniform between two durations.
    Uniform {
        /// The least, in seconds.
        min: f64,
        /// The most, in seconds.
        max: f64,
    },
    /// Drawn from recorded samples (seconds), e.g. a store's handling times.
    Empirical(Arc<[f64]>),
}

/// One alternative of a branch or of a start-variable mix.
#[derive(Clone, Debug)]
pub struct Choice {
    /// Its probability.
    pub p: f64,
    /// The variables it sets.
    pub set: Vars,
    /// For a task: send the case back to this node instead of completing.
    pub send_back: Option<String>,
}

/// How customers answer a task that needs them (a closing call).
#[derive(Clone, Debug)]
pub struct Customer {
    /// The share who never answer (the task then waits for its timeout).
    pub no_answer: f64,
    /// When the others answer, after the task opens.
    pub delay: Dist,
}

/// What the model says of one task or service node.
#[derive(Clone, Debug, Default)]
pub struct Work {
    /// How long a person works on it (user tasks).
    pub handling: Option<Dist>,
    /// Variables always set on completion.
    pub set: Vars,
    /// Alternatives, one drawn on completion (probabilities sum to one).
    pub branches: Vec<Choice>,
    /// The customer the task waits for.
    pub customer: Option<Customer>,
}

/// The arrivals of one process.
#[derive(Clone, Debug)]
pub struct Arrival {
    /// The process id.
    pub process: String,
    /// Mean arrivals per hour in the calendar's working time.
    pub per_business_hour: f64,
    /// Mean arrivals per hour outside it.
    pub per_other_hour: f64,
    /// The calendar that tells working time (an index into [`Model::calendars`]).
    pub calendar: usize,
    /// Multipliers by weekday, Monday first.
    pub weekday: [f64; 7],
    /// Multipliers by hour of the day, in the calendar's time zone.
    pub hour: [f64; 24],
    /// Variables every instance starts with.
    pub vars: Vars,
    /// Independent factors; one alternative of each is drawn per instance.
    pub mix: Vec<(String, Vec<Choice>)>,
}

/// A group of identical staff.
#[derive(Clone, Debug)]
pub struct StaffGroup {
    /// The label in the output: `role[+role...][@unit]`.
    pub label: String,
    /// The roles each person holds.
    pub roles: Vec<String>,
    /// How many people.
    pub people: usize,
    /// Actor id prefix.
    pub prefix: String,
    /// The people of the organisation the group is (`people: all`), by id; empty for a group
    /// of anonymous people named `prefix.1`, `prefix.2`, ...
    pub names: Vec<String>,
    /// The calendar whose working time is the shift (an index into [`Model::calendars`]);
    /// `None`: always on shift.
    pub shift: Option<usize>,
}

/// A validated what-if model.
#[derive(Clone, Debug)]
pub struct Model {
    /// Its name (`whatif:`).
    pub name: String,
    /// The file it was read from.
    pub file: Option<PathBuf>,
    /// The definitions, compiled.
    pub defs: Vec<Arc<ProcessDef>>,
    /// The organisation the engine runs with, if any.
    pub organisation: Option<Arc<Organisation>>,
    /// Calendars by name, as the definitions name them.
    pub calendars: Vec<(String, BusinessCalendar)>,
    /// When the simulation starts.
    pub start: DateTime<Utc>,
    /// Seconds simulated.
    pub horizon: i64,
    /// Seconds at the start left out of the figures.
    pub warm_up: i64,
    /// Replications (independent runs).
    pub replications: u32,
    /// The seed of the first replication.
    pub seed: u64,
    /// Arrivals, by process.
    pub arrivals: Vec<Arrival>,
    /// Staff.
    pub staff: Vec<StaffGroup>,
    /// User tasks and service nodes, by (process, node).
    pub work: BTreeMap<(String, String), Work>,
    /// The handling time of user tasks the model does not list.
    pub default_handling: Option<Dist>,
    /// The definition files, as the model names them joined to its folder.
    pub def_files: Vec<PathBuf>,
    /// The calendar files, by name.
    pub calendar_files: Vec<(String, PathBuf)>,
    /// The organisation file.
    pub org_file: Option<PathBuf>,
}

impl Model {
    /// Reads and validates a model file; relative paths in it are relative to its folder.
    ///
    /// # Errors
    /// Every problem at once, located.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Model, LoadError> {
        let path = path.as_ref();
        let text = LoadError::read(path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Model::load(&text, dir)
            .map(|mut m| {
                m.file = Some(path.to_owned());
                m
            })
            .map_err(|problems| LoadError::new(Some(path.to_owned()), problems))
    }

    /// Reads and validates a model from text; relative paths are relative to `dir`.
    ///
    /// # Errors
    /// Every problem at once, located.
    pub fn from_yaml(text: &str, dir: impl AsRef<Path>) -> Result<Model, LoadError> {
        Model::load(text, dir.as_ref()).map_err(|problems| LoadError::new(None, problems))
    }

    fn load(text: &str, dir: &Path) -> Result<Model, Vec<crate::yaml::Problem>> {
        let raw: RawModel = parse_yaml(text).map_err(|p| vec![p])?;
        let mut report = Report(Vec::new());
        let model = validate(raw, dir, &mut report);
        if report.0.is_empty() {
            model.ok_or_else(Vec::new)
        } else {
            Err(report.0)
        }
    }

    /// The definition of `process`.
    pub fn def(&self, process: &str) -> Option<&Arc<ProcessDef>> {
        self.defs.iter().find(|d| d.key().id == process)
    }
}

/// The people of `org` holding one of `roles` (in `unit` or below, when given), by id; a
/// problem when there are none or the unit is unknown.
fn org_people(
    report: &mut Report,
    org: &Organisation,
    roles: &[String],
    unit: Option<&At<String>>,
    at: Location,
    path: &str,
) -> Vec<String> {
    if let Some(u) = unit
        && org.unit(&u.value).is_none()
    {
        let msg = format!("unknown unit '{}' in the organisation", u.value);
        bad(report, u.loc, format!("{path}.unit"), msg);
        return Vec::new();
    }
    let names: Vec<String> = org
        .people()
        .iter()
        .map(|p| p.id().as_str())
        .filter(|id| {
            roles.iter().any(|r| match unit {
                Some(u) => org.holds_in(id, r, &u.value),
                None => org.holds_anywhere(id, r),
            })
        })
        .map(str::to_owned)
        .collect();
    if names.is_empty() {
        let within = unit.map_or(String::new(), |u| format!(" in unit '{}'", u.value));
        let msg = format!(
            "no person of the organisation holds {}{within}",
            roles.join(" or ")
        );
        bad(report, at, format!("{path}.people"), msg);
    }
    names
}

fn bad(report: &mut Report, loc: Location, path: impl Into<String>, msg: impl Into<String>) {
    report.add(loc, path, ProblemKind::WhatIf(msg.into()));
}

/// Parses `90s`, `25m`, `2h`, `7d`, `1w` (also `1.5h`) into seconds.
pub(crate) fn parse_span(text: &str) -> Option<f64> {
    let t = text.trim();
    let unit = t.chars().last()?;
    let n: f64 = t[..t.len() - unit.len_utf8()].trim().parse().ok()?;
    let scale = match unit {
        's' => 1.0,
        'm' => 60.0,
        'h' => 3600.0,
        'd' => 86_400.0,
        'w' => 604_800.0,
        _ => return None,
    };
    (n.is_finite() && n >= 0.0).then_some(n * scale)
}

fn span(report: &mut Report, at: &At<String>, path: &str) -> Option<f64> {
    let s = parse_span(&at.value);
    if s.is_none() {
        bad(
            report,
            at.loc,
            path,
            format!(
                "'{}' is not a duration: a number and s, m, h, d or w (e.g. 25m, 8h, 7d)",
                at.value
            ),
        );
    }
    s
}

fn validate(raw: RawModel, dir: &Path, report: &mut Report) -> Option<Model> {
    let rel = |p: &str| dir.join(p);
    // Definitions.
    let mut defs: Vec<Arc<ProcessDef>> = Vec::new();
    if raw.definitions.value.is_empty() {
        bad(report, raw.definitions.loc, "definitions", "no definitions");
    }
    for (i, file) in raw.definitions.value.iter().enumerate() {
        match ProcessDef::from_file(rel(&file.value)) {
            Ok(def) => defs.push(Arc::new(def)),
            Err(e) => bad(
                report,
                file.loc,
                format!("definitions[{i}]"),
                format!("definition does not load: {e}"),
            ),
        }
    }
    let organisation = raw.organisation.as_ref().and_then(|o| {
        Organisation::from_file(rel(&o.value))
            .map(Arc::new)
            .map_err(|e| {
                bad(
                    report,
                    o.loc,
                    "organisation",
                    format!("organisation does not load: {e}"),
                )
            })
            .ok()
    });
    let mut calendars: Vec<(String, BusinessCalendar)> = Vec::new();
    for (name, file) in &raw.calendars.0 {
        match BusinessCalendar::from_file(rel(&file.value)) {
            Ok(c) => calendars.push((name.value.clone(), c)),
            Err(e) => bad(
                report,
                file.loc,
                format!("calendars.{}", name.value),
                format!("calendar does not load: {e}"),
            ),
        }
    }
    for def in &defs {
        if let Some(cal) = def.calendar()
            && !calendars.iter().any(|(n, _)| n == cal)
            && !raw.calendars.0.is_empty()
        {
            bad(
                report,
                raw.definitions.loc,
                "calendars",
                format!(
                    "definition '{}' uses calendar '{cal}', which `calendars:` does not name",
                    def.key().id
                ),
            );
        }
    }
    let calendar_index = |report: &mut Report, name: &At<String>, path: &str| {
        let i = calendars.iter().position(|(n, _)| *n == name.value);
        if i.is_none() {
            bad(
                report,
                name.loc,
                path,
                format!(
                    "unknown calendar '{}' (name it under `calendars:`)",
                    name.value
                ),
            );
        }
        i
    };

    let start = match DateTime::parse_from_rfc3339(&raw.start.value) {
        Ok(t) => Some(t.to_utc()),
        Err(_) => {
            bad(
                report,
                raw.start.loc,
                "start",
                format!(
                    "'{}' is not an RFC 3339 instant (2026-03-09T00:00:00+08:00)",
                    raw.start.value
                ),
            );
            None
        }
    };
    let horizon = span(report, &raw.horizon, "horizon");
    let warm_up = match &raw.warm_up {
        Some(w) => span(report, w, "warm_up"),
        None => Some(0.0),
    };
    if let (Some(h), Some(w)) = (horizon, warm_up) {
        if h <= 0.0 {
            bad(
                report,
                raw.horizon.loc,
                "horizon",
                "the horizon must be positive",
            );
        } else if h <= w {
            let loc = raw.warm_up.as_ref().map_or(raw.horizon.loc, |w| w.loc);
            bad(
                report,
                loc,
                "warm_up",
                format!(
                    "the horizon ({}) is not longer than the warm-up ({})",
                    raw.horizon.value,
                    raw.warm_up.as_ref().map_or("0", |w| &w.value)
                ),
            );
        }
    }
    let replications = raw.replications.as_ref().map_or(1, |r| r.value);
    if let Some(r) = &raw.replications
        && r.value == 0
    {
        bad(report, r.loc, "replications", "at least one replication");
    }

    let find_def = |p: &str| defs.iter().find(|d| d.key().id == p);
    let roles: BTreeSet<String> = defs
        .iter()
        .flat_map(|d| d.roles().map(|(r, _)| r.to_string()))
        .collect();

    // Arrivals.
    let mut arrivals = Vec::new();
    if raw.arrivals.0.is_empty() {
        bad(
            report,
            raw.whatif.loc,
            "arrivals",
            "no arrivals: name at least one process",
        );
    }
    for (name, a) in &raw.arrivals.0 {
        let path = format!("arrivals.{}", name.value);
        if !defs.is_empty() && find_def(&name.value).is_none() {
            bad(
                report,
                name.loc,
                &path,
                format!("unknown process '{}'", name.value),
            );
        }
        let a = &a.value;
        let rate = |report: &mut Report, r: &At<f64>, key: &str| {
            if !(r.value.is_finite() && r.value >= 0.0) {
                bad(
                    report,
                    r.loc,
                    format!("{path}.{key}"),
                    format!("a rate must be zero or more, not {}", r.value),
                );
            }
            r.value.max(0.0)
        };
        let per_business_hour = rate(report, &a.per_business_hour, "per_business_hour");
        let per_other_hour = a
            .per_other_hour
            .as_ref()
            .map_or(0.0, |r| rate(report, r, "per_other_hour"));
        let calendar = match &a.calendar {
            Some(c) => calendar_index(report, c, &format!("{path}.calendar")),
            None => {
                if calendars.is_empty() && raw.calendars.0.is_empty() {
                    bad(
                        report,
                        name.loc,
                        &path,
                        "arrivals per business hour need a calendar: name one under `calendars:`",
                    );
                }
                Some(0)
            }
        };
        let mut weekday = [1.0; 7];
        for (k, v) in &a.weekday.0 {
            let p = format!("{path}.weekday.{}", k.value);
            match k.value.parse::<Weekday>() {
                Ok(d) => weekday[d.num_days_from_monday() as usize] = rate(report, v, &p),
                Err(_) => bad(
                    report,
                    k.loc,
                    p,
                    format!("'{}' is not a weekday (mon .. sun)", k.value),
                ),
            }
        }
        let mut hour = [1.0; 24];
        for (k, v) in &a.hour.0 {
            let p = format!("{path}.hour.{}", k.value);
            match k.value.parse::<usize>() {
                Ok(h) if h < 24 => hour[h] = rate(report, v, &p),
                _ => bad(
                    report,
                    k.loc,
                    p,
                    format!("'{}' is not an hour of the day (0 .. 23)", k.value),
                ),
            }
        }
        let mut mix = Vec::new();
        for (factor, choices) in &a.mix.0 {
            let p = format!("{path}.mix.{}", factor.value);
            let c = choices_of(report, &choices.value, factor.loc, &p, None);
            mix.push((factor.value.clone(), c));
        }
        arrivals.push(Arrival {
            process: name.value.clone(),
            per_business_hour,
            per_other_hour,
            calendar: calendar.unwrap_or(0),
            weekday,
            hour,
            vars: a.vars.clone(),
            mix,
        });
    }

    // Staff.
    let mut staff = Vec::new();
    let mut staffed: BTreeSet<String> = BTreeSet::new();
    for (i, s) in raw.staff.value.iter().enumerate() {
        let path = format!("staff[{i}]");
        let sv = &s.value;
        let mut rs: Vec<&At<String>> = sv.roles.iter().collect();
        if let Some(r) = &sv.role {
            rs.insert(0, r);
        }
        if rs.is_empty() {
            bad(
                report,
                s.loc,
                &path,
                "a staff group needs `role` or `roles`",
            );
        }
        for r in &rs {
            if !defs.is_empty() && !roles.contains(&r.value) {
                bad(
                    report,
                    r.loc,
                    format!("{path}.role"),
                    format!("unknown role '{}'", r.value),
                );
            }
        }
        let roles: Vec<String> = rs.iter().map(|r| r.value.clone()).collect();
        let mut names = Vec::new();
        let at = sv.people.loc;
        let people = match &sv.people.value {
            RawPeople::Count(n) if *n < 0 => {
                let msg = format!("people must be zero or more, not {n}");
                bad(report, at, format!("{path}.people"), msg);
                0
            }
            RawPeople::Count(n) => usize::try_from(*n).unwrap_or(0),
            RawPeople::Word(w) if w == "all" => {
                match organisation.as_deref() {
                    None => bad(
                        report,
                        at,
                        format!("{path}.people"),
                        "`people: all` takes the organisation's people: the model names no \
                         `organisation`",
                    ),
                    Some(org) => {
                        names = org_people(report, org, &roles, sv.unit.as_ref(), at, &path);
                    }
                }
                names.len()
            }
            RawPeople::Word(w) => {
                let msg = format!("people must be a number or `all`, not '{w}'");
                bad(report, at, format!("{path}.people"), msg);
                0
            }
        };
        if people > 0 {
            staffed.extend(roles.iter().cloned());
        }
        let shift = match &sv.shift {
            None => Some(0).filter(|_| !calendars.is_empty()),
            Some(sh) if sh.value == "always" => None,
            Some(sh) => calendar_index(report, sh, &format!("{path}.shift")),
        };
        let mut label = roles.join("+");
        if let Some(u) = &sv.unit {
            label = format!("{label}@{}", u.value);
        }
        let prefix = sv.prefix.clone().unwrap_or_else(|| format!("{label}.{i}"));
        staff.push(StaffGroup {
            label,
            roles,
            people,
            prefix,
            shift,
            names,
        });
    }

    // Tasks and services.
    // Empirical handling times count the working time of the first shift calendar.
    let first_cal = staff
        .iter()
        .find_map(|s| s.shift)
        .and_then(|c| calendars.get(c))
        .map(|(_, c)| c);
    let default_handling = raw
        .default_handling
        .as_ref()
        .and_then(|d| dist(report, (dir, first_cal), d, "default_handling"));
    let mut work = BTreeMap::new();
    // Tasks given a handling time (even one with a problem, reported on its own).
    let mut handled: BTreeSet<(String, String)> = BTreeSet::new();
    for (section, entries, kind) in [
        ("tasks", &raw.tasks, NodeKind::UserTask),
        ("services", &raw.services, NodeKind::ServiceTask),
    ] {
        for (process, nodes) in &entries.0 {
            let def = find_def(&process.value);
            if def.is_none() && !defs.is_empty() {
                bad(
                    report,
                    process.loc,
                    format!("{section}.{}", process.value),
                    format!("unknown process '{}'", process.value),
                );
            }
            for (node, w) in &nodes.value.0 {
                let path = format!("{section}.{}.{}", process.value, node.value);
                if let Some(def) = def {
                    let found = def.node_id(&node.value).map(|n| def.node(n).kind());
                    if found != Some(kind) {
                        bad(
                            report,
                            node.loc,
                            &path,
                            format!(
                                "unknown {} '{}' in process '{}'",
                                if kind == NodeKind::UserTask {
                                    "user task"
                                } else {
                                    "service task"
                                },
                                node.value,
                                process.value
                            ),
                        );
                    }
                }
                let w = &w.value;
                if w.handling.is_some() {
                    handled.insert((process.value.clone(), node.value.clone()));
                }
                let handling = w
                    .handling
                    .as_ref()
                    .and_then(|d| dist(report, (dir, first_cal), d, &format!("{path}.handling")));
                let branches = w.branches.as_ref().map_or(Vec::new(), |b| {
                    choices_of(report, &b.value, b.loc, &format!("{path}.branches"), def)
                });
                let customer = w.customer.as_ref().and_then(|c| {
                    let cp = format!("{path}.customer");
                    let p = c.value.no_answer.value;
                    if !(0.0..=1.0).contains(&p) {
                        bad(
                            report,
                            c.value.no_answer.loc,
                            format!("{cp}.no_answer"),
                            format!("a probability is from 0 to 1, not {p}"),
                        );
                    }
                    let delay = match &c.value.delay {
                        Some(d) => dist(report, (dir, first_cal), d, &format!("{cp}.delay"))?,
                        None => Dist::Fixed(0.0),
                    };
                    Some(Customer {
                        no_answer: p,
                        delay,
                    })
                });
                work.insert(
                    (process.value.clone(), node.value.clone()),
                    Work {
                        handling,
                        set: w.set.clone(),
                        branches,
                        customer,
                    },
                );
            }
        }
    }

    // Every user task: a handling time, and someone staffed to do it.
    for def in &defs {
        for (_, node) in def.nodes() {
            if node.kind() != NodeKind::UserTask {
                continue;
            }
            let key = (def.key().id.to_owned(), node.id().to_owned());
            let listed = handled.contains(&key);
            if !listed && default_handling.is_none() && raw.default_handling.is_none() {
                bad(
                    report,
                    raw.whatif.loc,
                    format!("tasks.{}.{}", key.0, key.1),
                    format!(
                        "task '{}' of '{}' has no handling time (give one, or `default_handling`)",
                        key.1, key.0
                    ),
                );
            }
            let responsible: Vec<String> = node
                .raci()
                .map(|r| {
                    r.responsible()
                        .iter()
                        .map(|role| role.0.split('@').next().unwrap_or(&role.0).to_owned())
                        .collect()
                })
                .unwrap_or_default();
            if !responsible.iter().any(|r| staffed.contains(r)) {
                bad(
                    report,
                    raw.staff.loc,
                    "staff",
                    format!(
                        "no staffed person can do task '{}' of '{}' (responsible: {})",
                        key.1,
                        key.0,
                        responsible.join(", ")
                    ),
                );
            }
        }
    }

    Some(Model {
        name: raw.whatif.value,
        file: None,
        defs,
        organisation,
        calendars,
        start: start?,
        horizon: horizon? as i64,
        warm_up: warm_up? as i64,
        replications,
        seed: raw.seed,
        arrivals,
        staff,
        work,
        default_handling,
        def_files: raw
            .definitions
            .value
            .iter()
            .map(|f| rel(&f.value))
            .collect(),
        calendar_files: raw
            .calendars
            .0
            .iter()
            .map(|(n, f)| (n.value.clone(), rel(&f.value)))
            .collect(),
        org_file: raw.organisation.as_ref().map(|o| rel(&o.value)),
    })
}

fn choices_of(
    report: &mut Report,
    raw: &[At<RawChoice>],
    loc: Location,
    path: &str,
    def: Option<&Arc<ProcessDef>>,
) -> Vec<Choice> {
    let mut sum = 0.0;
    let mut out = Vec::new();
    for (i, c) in raw.iter().enumerate() {
        let p = c.value.p.value;
        if !(0.0..=1.0).contains(&p) {
            bad(
                report,
                c.value.p.loc,
                format!("{path}[{i}].p"),
                format!("a probability is from 0 to 1, not {p}"),
            );
        }
        sum += p;
        if let (Some(def), Some(to)) = (def, &c.value.send_back)
            && def.node_id(&to.value).is_none()
        {
            bad(
                report,
                to.loc,
                format!("{path}[{i}].send_back"),
                format!("unknown node '{}'", to.value),
            );
        }
        out.push(Choice {
            p,
            set: c.value.set.clone(),
            send_back: c.value.send_back.as_ref().map(|s| s.value.clone()),
        });
    }
    if (sum - 1.0).abs() > 1e-6 {
        bad(
            report,
            loc,
            path,
            format!("the probabilities sum to {sum}, not 1"),
        );
    }
    out
}

fn dist(
    report: &mut Report,
    (dir, cal): (&Path, Option<&BusinessCalendar>),
    d: &At<RawDist>,
    path: &str,
) -> Option<Dist> {
    let r = &d.value;
    let kinds = [
        r.fixed.is_some(),
        r.exponential.is_some(),
        r.lognormal.is_some(),
        r.uniform.is_some(),
        r.empirical.is_some(),
    ];
    let n = kinds.iter().filter(|k| **k).count();
    if n != 1 {
        bad(
            report,
            d.loc,
            path,
            "a distribution is exactly one of fixed, exponential, lognormal, uniform, empirical",
        );
        return None;
    }
    let mut need = |what: &str, kind: &str, v: &Option<String>| -> Option<f64> {
        match v {
            None => {
                bad(
                    report,
                    d.loc,
                    format!("{path}.{kind}"),
                    format!("a {kind} distribution needs `{what}`"),
                );
                None
            }
            Some(t) => {
                let s = parse_span(t);
                if s.is_none() {
                    bad(
                        report,
                        d.loc,
                        format!("{path}.{kind}.{what}"),
                        format!("'{t}' is not a duration (e.g. 25m, 8h)"),
                    );
                }
                s
            }
        }
    };
    if let Some(f) = &r.fixed {
        return need("fixed", "fixed", &Some(f.clone())).map(Dist::Fixed);
    }
    if let Some(p) = &r.exponential {
        let mean = need("mean", "exponential", &p.mean)?;
        return Some(Dist::Exponential { mean });
    }
    if let Some(p) = &r.lognormal {
        let median = need("median", "lognormal", &p.median);
        let sigma = match p.sigma {
            Some(s) if s.is_finite() && s >= 0.0 => Some(s),
            Some(s) => {
                bad(
                    report,
                    d.loc,
                    format!("{path}.lognormal.sigma"),
                    format!("sigma must be zero or more, not {s}"),
                );
                None
            }
            None => {
                bad(
                    report,
                    d.loc,
                    format!("{path}.lognormal"),
                    "a lognormal distribution needs `sigma`",
                );
                None
            }
        };
        return Some(Dist::LogNormal {
            median: median?,
            sigma: sigma?,
        });
    }
    if let Some(p) = &r.uniform {
        let min = need("min", "uniform", &p.min);
        let max = need("max", "uniform", &p.max);
        let (min, max) = (min?, max?);
        if max < min {
            bad(
                report,
                d.loc,
                format!("{path}.uniform"),
                "max is less than min",
            );
            return None;
        }
        return Some(Dist::Uniform { min, max });
    }
    if let Some(p) = &r.empirical {
        let (Some(store), Some(process), Some(node)) = (&p.store, &p.process, &p.node) else {
            bad(
                report,
                d.loc,
                format!("{path}.empirical"),
                "an empirical distribution needs `store`, `process` and `node`",
            );
            return None;
        };
        match super::fit::handling_samples(&dir.join(store), process, node, cal) {
            Ok(s) if !s.is_empty() => return Some(Dist::Empirical(s.into())),
            Ok(_) => bad(
                report,
                d.loc,
                format!("{path}.empirical"),
                format!("the store holds no handling time of '{node}' in '{process}'"),
            ),
            Err(e) => bad(
                report,
                d.loc,
                format!("{path}.empirical"),
                format!("cannot read the store: {e}"),
            ),
        }
        return None;
    }
    None
}

/// The local hour (0..24) and weekday index (Monday 0) of `at` in `calendar`'s zone.
pub(crate) fn local_hour_day(calendar: &BusinessCalendar, at: DateTime<Utc>) -> (usize, usize) {
    let local = at.with_timezone(&calendar.zone());
    (
        local.hour() as usize,
        local.weekday().num_days_from_monday() as usize,
    )
}
