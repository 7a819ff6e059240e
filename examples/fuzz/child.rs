//! The child side: loads one input with its loader and drives what loads through the public API
//! with random calls, checking the documented invariants on the way. An `Err` is a broken
//! invariant; a panic, abort or hang is seen by the parent in the child's exit status.
//!
//! What it saw (load results, error variants, events, timers fired) comes back as a set of
//! feature names, which the parent uses to keep inputs that reach something new.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use procflow::{
    Actor, BusinessCalendar, BusinessDuration, Clock, Control, Durability, DurationSpec, Engine,
    EngineBuilder, Event, ExecError, HandlerError, Instance, InstanceId, ManualClock, MemoryStore,
    Organisation, ProcessDef, Record, Scenario, SqliteStore, TaskId, TaskView, VarType, Vars,
    handler_fn, hook_fn, veto_fn,
};
use serde_json::{Value, json};

use super::rng::Rng;

/// What an input is, and so which loader reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// A process definition (`ProcessDef::from_yaml`).
    Def,
    /// A business calendar (`BusinessCalendar::from_yaml`).
    Calendar,
    /// A scenario (`Scenario::from_yaml`), run against a shipped definition.
    Scenario,
}

impl Kind {
    /// The kind's name in headers and on the command line.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Def => "def",
            Kind::Calendar => "calendar",
            Kind::Scenario => "scenario",
        }
    }

    /// The kind named `name`.
    pub(crate) fn parse(name: &str) -> Option<Kind> {
        match name {
            "def" => Some(Kind::Def),
            "calendar" => Some(Kind::Calendar),
            "scenario" => Some(Kind::Scenario),
            _ => None,
        }
    }
}

/// One input for the child.
pub(crate) struct Job<'a> {
    pub(crate) kind: Kind,
    pub(crate) text: &'a str,
    pub(crate) seed: u64,
    /// The project directory (for the shipped definitions, scenarios and calendars).
    pub(crate) root: &'a Path,
    /// For a scenario: the shipped definition it runs against (`complaint-handling`).
    pub(crate) def: Option<&'a str>,
    /// A directory for scratch files (SQLite stores).
    pub(crate) scratch: &'a Path,
    /// `deep=N` from the header: see `Driver::deep_first`.
    pub(crate) deep: Option<usize>,
    /// The deepest value to build otherwise.
    pub(crate) max_depth: usize,
    /// The driver thread's stack, which a second driver thread gets too.
    pub(crate) stack_kb: usize,
}

/// What the child saw.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) loaded: bool,
    pub(crate) features: BTreeSet<String>,
    pub(crate) calls: u64,
}

/// Features, shared with hooks and handlers.
type Features = Arc<Mutex<BTreeSet<String>>>;

fn note(features: &Features, feature: String) {
    features
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(feature);
}

/// The name of an enum value's variant: its `Debug` text up to the first bracket or space.
fn variant<T: std::fmt::Debug>(value: &T) -> String {
    let text = format!("{value:?}");
    let end = text.find(['(', ' ', '{']).unwrap_or(text.len());
    text[..end.min(48)].to_owned()
}

/// Says on stderr which call is about to run: a stack overflow, an abort or a hang leaves no
/// backtrace, and the parent reads the last of these lines to tell such failures apart.
fn crumb(call: impl std::fmt::Display) {
    eprintln!("call: {call}");
}

/// The number of variables and how deep the deepest is, without recursion.
fn shape(vars: &Vars) -> String {
    let mut stack: Vec<(&Value, usize)> = vars.values().map(|v| (v, 1)).collect();
    let mut deepest = 0;
    while let Some((value, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        match value {
            Value::Array(items) => stack.extend(items.iter().map(|v| (v, depth + 1))),
            Value::Object(map) => stack.extend(map.values().map(|v| (v, depth + 1))),
            _ => {}
        }
    }
    format!("{} vars, {deepest} levels deep", vars.len())
}

fn outcome<T>(result: &Result<T, ExecError>) -> String {
    match result {
        Ok(_) => "ok".to_owned(),
        Err(e) => variant(e),
    }
}

/// Runs one job.
///
/// # Errors
/// A broken invariant, or a harness problem (a shipped file that does not load), as a sentence.
pub(crate) fn run(job: &Job<'_>) -> Result<Outcome, String> {
    let features: Features = Arc::default();
    let mut rng = Rng::new(job.seed);
    DEEP.with(|d| d.set(job.deep));
    MAX_DEPTH.with(|d| d.set(job.max_depth));
    let mut out = Outcome::default();
    match job.kind {
        Kind::Def => match loading("ProcessDef::from_yaml", ProcessDef::from_yaml, job.text) {
            Err(e) => load_error(&features, &e),
            Ok(def) => {
                out.loaded = true;
                note(&features, "load:ok".into());
                out.calls = drive_def(def, job, &mut rng, &features)?;
            }
        },
        Kind::Calendar => match loading(
            "BusinessCalendar::from_yaml",
            BusinessCalendar::from_yaml,
            job.text,
        ) {
            Err(e) => load_error(&features, &e),
            Ok(cal) => {
                out.loaded = true;
                note(&features, "load:ok".into());
                out.calls = drive_calendar(&cal, job, &mut rng, &features)?;
            }
        },
        Kind::Scenario => match loading("Scenario::from_yaml", Scenario::from_yaml, job.text) {
            Err(e) => load_error(&features, &e),
            Ok(scenario) => {
                out.loaded = true;
                note(&features, "load:ok".into());
                let name = job.def.ok_or("a scenario needs def=NAME in its header")?;
                let def = shipped_def(job.root, name)?;
                run_scenario(&scenario, def, None, job.root, &features)?;
                out.calls = 1;
            }
        },
    }
    out.features = std::mem::take(&mut *features.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(out)
}

/// Says which loader runs, then runs it.
fn loading<T>(name: &str, load: fn(&str) -> T, text: &str) -> T {
    crumb(name);
    load(text)
}

fn load_error(features: &Features, e: &procflow::LoadError) {
    // Rendering the error must not panic either.
    let _ = e.to_string();
    for p in &e.problems {
        note(features, format!("load:{}", variant(&p.kind)));
        // Where, with the ids left out: `nodes.*.routes[].when`.
        let shape: Vec<&str> = p
            .path
            .split('.')
            .enumerate()
            .map(|(i, part)| {
                let part = part.split('[').next().unwrap_or(part);
                let keyed = i > 0
                    && matches!(
                        p.path.split('.').next(),
                        Some("nodes" | "roles" | "variables" | "years" | "actors" | "services")
                    );
                if keyed && i == 1 { "*" } else { part }
            })
            .collect();
        note(
            features,
            format!("load:{}@{}", variant(&p.kind), shape.join(".")),
        );
        if p.location.is_none() {
            note(features, format!("load-unlocated:{}", variant(&p.kind)));
        }
    }
}

fn shipped_def(root: &Path, name: &str) -> Result<ProcessDef, String> {
    let path = root.join("process-defs").join(format!("{name}.yaml"));
    ProcessDef::from_file(&path)
        .map_err(|e| format!("harness: the shipped {} does not load: {e}", path.display()))
}

/// The shipped definition (in `process-defs/`) whose id is `id`.
fn shipped_by_id(root: &Path, id: &str) -> Option<ProcessDef> {
    std::fs::read_dir(root.join("process-defs"))
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "yaml"))
        .filter_map(|e| ProcessDef::from_file(e.path()).ok())
        .find(|d| d.key().id == id)
}

/// The calendars a definition names, loaded as `procflow simulate` does (the file beside the
/// definitions), or the China calendar when there is no such file; `given` replaces them.
fn calendars_for(
    def: &ProcessDef,
    given: Option<&BusinessCalendar>,
    root: &Path,
) -> Vec<(String, BusinessCalendar)> {
    let Some(name) = def.calendar() else {
        return Vec::new();
    };
    let cal = match given {
        Some(cal) => cal.clone(),
        None => BusinessCalendar::from_file(
            root.join("process-defs/calendars")
                .join(format!("{name}.yaml")),
        )
        .unwrap_or_else(|_| BusinessCalendar::china()),
    };
    vec![(name.to_owned(), cal)]
}

fn run_scenario(
    scenario: &Scenario,
    def: ProcessDef,
    calendar: Option<&BusinessCalendar>,
    root: &Path,
    features: &Features,
) -> Result<(), String> {
    let _ = scenario.name();
    let calendars = calendars_for(&def, calendar, root);
    crumb(format!("Scenario::run_with({})", def.key()));
    match scenario.run_with(def, calendars) {
        Ok(report) => {
            let held = if report.failures.is_empty() {
                "held"
            } else {
                "failed"
            };
            note(features, format!("sim:{held}"));
            note(
                features,
                format!("sim:events:{}", report.events.len().min(200) / 20),
            );
        }
        Err(e) => note(
            features,
            format!(
                "sim:deploy:{}",
                e.problems.iter().map(variant).collect::<Vec<_>>().join(",")
            ),
        ),
    }
    Ok(())
}

/// The shipped scenarios of a definition id.
fn scenarios_of(root: &Path, id: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(root.join("process-defs/scenarios"))
        .map(|dir| {
            dir.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{id}-")) && n.ends_with(".yaml"))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

// ---------------------------------------------------------------------------------------------
// Random data
// ---------------------------------------------------------------------------------------------

const ACTORS: &[&str] = &["ann", "bob", "cai", "dan", "", "王丽", "x\u{0}y"];

const STRINGS: &[&str] = &[
    "",
    "g\u{0}z",
    "4h",
    "-5h",
    "tomorrow",
    "0s",
    "4h business",
    "99999999d",
    "key",
    "public",
    "network",
    "customer",
    "web",
    "中文",
    "😀",
    "\u{202e}",
    "a'b\"c",
    "true",
    "null",
    "1",
    "high",
    "normal",
];

thread_local! {
    /// The header's `deep=N`: every deep value is nested exactly N levels.
    static DEEP: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
    /// `--max-depth`: the deepest value built otherwise.
    static MAX_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(200_000) };
}

/// How deep a deep value is: around the 32-level bound, well past it, or far past what a stack
/// holds when dropped recursively (a 2 MiB stack holds about 12,000 levels).
fn deep_levels(rng: &mut Rng) -> usize {
    DEEP.with(std::cell::Cell::get)
        .unwrap_or_else(|| match rng.below(4) {
            0 | 1 => rng.range(30, 34),
            2 => rng.size(3_000).min(MAX_DEPTH.with(std::cell::Cell::get)),
            _ => rng.size(MAX_DEPTH.with(std::cell::Cell::get)),
        })
}

/// A value nested `levels` deep, built without recursion: a list of lists or an object of
/// objects. The harness never drops one itself: dropping recurses once per level.
fn deep(levels: usize, list: bool) -> Value {
    // Not `json!({ "b": v })`: that serializes `v` again at every level.
    (0..levels).fold(json!(1), |v, _| {
        if list {
            Value::Array(vec![v])
        } else {
            Value::Object(Vars::from_iter([("b".to_owned(), v)]))
        }
    })
}

fn string_value(rng: &mut Rng) -> Value {
    match rng.below(9) {
        0 => {
            // Around the 64 KiB bound on a value.
            let n = 65_536 - 8 + rng.below(16);
            Value::String("x".repeat(n))
        }
        1 => Value::String(rng.pick(&["中", "a", "'", "\\"]).repeat(rng.size(30_000))),
        // Text no compression shortens (an index entry on PostgreSQL takes at most 2,704
        // bytes), around the bound on a business key's value, with a NUL now and then.
        2 => {
            let n = rng.range(1_000, 4_000);
            let mut s: String = (0..n)
                .map(|_| char::from(b'!' + (rng.next_u64() % 90) as u8))
                .collect();
            if rng.chance(1, 4) {
                s.insert(rng.below(n), '\u{0}');
            }
            Value::String(s)
        }
        _ => Value::String((*rng.pick(STRINGS)).to_owned()),
    }
}

fn number_value(rng: &mut Rng, integer: bool) -> Value {
    if integer {
        json!(*rng.pick(&[
            0i64,
            1,
            -1,
            42,
            i64::MAX,
            i64::MIN,
            i64::from(u32::MAX),
            100,
            101
        ]))
    } else {
        json!(*rng.pick(&[
            0.0,
            -0.0,
            1.5,
            1e308,
            -1e308,
            f64::MIN_POSITIVE,
            0.1,
            1e-300
        ]))
    }
}

/// Any value, `depth` levels of lists and objects at most, now and then with a deep value
/// inside.
fn any_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth == 0 { 5 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.chance(1, 2)),
        2 => {
            let integer = rng.chance(1, 2);
            number_value(rng, integer)
        }
        3 | 4 => string_value(rng),
        5 if rng.chance(1, 8) => wide(rng),
        5 => Value::Array(
            (0..rng.size(8))
                .map(|_| any_value(rng, depth - 1))
                .collect(),
        ),
        6 => {
            // Distinct keys: a value replaced in a map would be dropped here.
            let keys = ["b", "lines", "qty", "tags", "x", ""];
            let n = rng.size(keys.len());
            Value::Object(
                keys[..n]
                    .iter()
                    .map(|k| ((*k).to_owned(), any_value(rng, depth - 1)))
                    .collect(),
            )
        }
        _ => {
            let levels = deep_levels(rng);
            deep(levels, rng.chance(1, 2))
        }
    }
}

/// A value about as large as a variable may hold (64 KiB as JSON): a list of some 32,000 small
/// items, a list of lists, or an object with thousands of keys. The costliest conditions walk
/// these.
fn wide(rng: &mut Rng) -> Value {
    match rng.below(4) {
        0 => Value::Array((0..rng.range(16_000, 32_767)).map(|_| json!(0)).collect()),
        1 => Value::Array(
            (0..rng.range(100, 160))
                .map(|_| Value::Array((0..100).map(|i| json!(i % 3)).collect()))
                .collect(),
        ),
        2 => Value::Array(
            (0..rng.range(5_000, 12_000))
                .map(|i| json!(format!("{}", i % 10)))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.range(1_000, 6_000))
                .map(|i| (format!("k{i}"), json!(i)))
                .collect(),
        ),
    }
}

/// What the driver knows of a declared variable.
#[derive(Clone, Debug)]
struct VarInfo {
    name: String,
    ty: VarType,
    allowed: Option<Vec<Value>>,
    required: bool,
}

fn value_for(var: &VarInfo, rng: &mut Rng) -> Value {
    if let Some(allowed) = var.allowed.as_ref().filter(|a| !a.is_empty())
        && rng.chance(3, 4)
    {
        return rng.pick(allowed).clone();
    }
    if rng.chance(1, 10) {
        return any_value(rng, 3);
    }
    match var.ty {
        VarType::String => string_value(rng),
        VarType::Integer => number_value(rng, true),
        VarType::Number => {
            let integer = rng.chance(1, 2);
            number_value(rng, integer)
        }
        VarType::Boolean => json!(rng.chance(1, 2)),
        VarType::Object if rng.chance(1, 8) => deep(deep_levels(rng), false),
        VarType::Object => {
            // Built by hand: `json!` with a value inside would serialize (copy) it and drop it.
            let mut object = Vars::new();
            object.insert(
                "b".into(),
                json!({ "lines": [{ "qty": 101, "tags": ["x"] }] }),
            );
            object.insert("x".into(), any_value(rng, 2));
            Value::Object(object)
        }
        VarType::Array if rng.chance(1, 8) => deep(deep_levels(rng), true),
        VarType::Array if rng.chance(1, 8) => wide(rng),
        VarType::Array => Value::Array((0..rng.size(6)).map(|_| any_value(rng, 2)).collect()),
        _ => any_value(rng, 3),
    }
}

/// A small value that fits the declaration: one of the allowed values, or a plain value of the
/// type. Most calls get these, so that instances get somewhere.
fn good_value(var: &VarInfo, rng: &mut Rng) -> Value {
    if let Some(allowed) = var.allowed.as_ref().filter(|a| !a.is_empty()) {
        return rng.pick(allowed).clone();
    }
    match var.ty {
        VarType::String => json!(*rng.pick(&["x", "4h", "中文", "high", "key"])),
        VarType::Integer => json!(rng.below(200)),
        VarType::Number => json!(rng.below(1000) as f64 / 10.0),
        VarType::Boolean => json!(rng.chance(1, 2)),
        VarType::Object => json!({ "b": 1, "lines": [{ "qty": 101, "tags": ["x"] }] }),
        VarType::Array => json!([0, 1, 2]),
        _ => json!(*rng.pick(&["x", "1", "true"])),
    }
}

/// Variables that fit the declarations: the required ones (if `required`) and a random subset
/// of the others.
fn good_vars(vars: &[VarInfo], required: bool, rng: &mut Rng) -> Vars {
    let mut out = Vars::new();
    for var in vars {
        if (required && var.required) || rng.chance(1, 4) {
            out.insert(var.name.clone(), good_value(var, rng));
        }
    }
    out
}

/// Variables to start or complete with: the required ones (if `required`) and a random subset
/// of the others, sometimes with an undeclared one; their values often do not fit.
fn vars_for(vars: &[VarInfo], required: bool, rng: &mut Rng) -> Vars {
    let mut out = Vars::new();
    for var in vars {
        if (required && var.required) || rng.chance(1, 4) {
            // Never replace a value: the old one would be dropped here.
            out.entry(var.name.clone())
                .or_insert_with(|| value_for(var, rng));
        }
    }
    if rng.chance(1, 20) {
        out.entry("undeclared").or_insert_with(|| json!(1));
    }
    out
}

fn instant(rng: &mut Rng) -> DateTime<Utc> {
    let base: DateTime<Utc> = "2026-01-05T09:00:00Z".parse().unwrap_or_default();
    match rng.below(16) {
        0 => DateTime::<Utc>::MIN_UTC,
        1 => DateTime::<Utc>::MAX_UTC,
        2 => "2100-12-31T15:30:00Z".parse().unwrap_or_default(),
        3 => "2026-09-30T08:00:00Z".parse().unwrap_or_default(),
        4 => "1900-02-28T12:00:00Z".parse().unwrap_or_default(),
        5 => base + Duration::days(rng.below(200_000) as i64 - 100_000),
        _ => base + Duration::minutes(rng.below(2_000_000) as i64 - 200_000),
    }
}

/// `t + by`, stopping at the ends of the range of an instant.
fn later(t: DateTime<Utc>, by: Duration) -> DateTime<Utc> {
    t.checked_add_signed(by)
        .unwrap_or(if by < Duration::zero() {
            DateTime::<Utc>::MIN_UTC
        } else {
            DateTime::<Utc>::MAX_UTC
        })
}

fn advance(rng: &mut Rng) -> Duration {
    match rng.below(12) {
        0 => Duration::days(99_999_999),
        1 => -Duration::hours(rng.range(1, 48) as i64),
        2 => Duration::days(rng.size(3_000) as i64),
        3 | 4 => Duration::hours(rng.range(1, 96) as i64),
        5 => Duration::seconds(rng.range(1, 120) as i64),
        _ => Duration::minutes(rng.size(600) as i64),
    }
}

// ---------------------------------------------------------------------------------------------
// Definitions: an engine driven with random calls
// ---------------------------------------------------------------------------------------------

/// How an engine is put together; kept to build a second engine on the same store.
#[derive(Clone)]
struct Setup {
    vars: Vec<VarInfo>,
    /// The shipped organisation, for a definition whose roles it has (now and then).
    org: Option<Arc<Organisation>>,
    handlers: Vec<String>,
    calendars: BTreeSet<String>,
    clock: Arc<ManualClock>,
    features: Features,
    seed: u64,
}

thread_local! {
    /// Whether a hook or handler of this thread is calling back into the engine already.
    static REENTERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` on the engine from a hook or handler, once per nesting.
fn reenter(engine: &OnceLock<Weak<Engine>>, f: impl FnOnce(&Engine) -> String) -> Option<String> {
    if REENTERED.with(std::cell::Cell::get) {
        return None;
    }
    let engine = engine.get()?.upgrade()?;
    REENTERED.with(|r| r.set(true));
    let what = f(&engine);
    REENTERED.with(|r| r.set(false));
    Some(what)
}

impl Setup {
    fn builder(&self, key: &str, seed: u64, me: &Arc<OnceLock<Weak<Engine>>>) -> EngineBuilder {
        let mut builder = Engine::builder();
        builder.clock(Arc::clone(&self.clock));
        if let Some(org) = &self.org {
            builder.organisation(Arc::clone(org));
        }
        for name in &self.calendars {
            builder.calendar(name.clone(), BusinessCalendar::china());
        }
        for (i, name) in self.handlers.iter().enumerate() {
            let rng = Mutex::new(Rng::new(
                seed ^ (i as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407),
            ));
            let vars = self.vars.clone();
            let me = Arc::clone(me);
            let key = key.to_owned();
            builder.handler(
                name.clone(),
                handler_fn(move |call| {
                    let roll = rng.lock().unwrap_or_else(|e| e.into_inner()).below(40);
                    let _ = (call.instance, call.node, call.vars.len());
                    match roll {
                        0..=2 => Err(HandlerError::new("fuzz: the handler failed")),
                        3 => panic!("fuzz: intentional handler panic"),
                        4 => {
                            // Handlers must not call the engine: each call answers Reentrant
                            // (or works on another instance); it must not deadlock.
                            reenter(&me, |e| {
                                let started = outcome(&e.start(&key, Vars::new()));
                                let _ = e.work_list(&Actor::new("ann", ["r"]));
                                let _ = e.tick(e.now());
                                started
                            });
                            Ok(Vars::new())
                        }
                        5..=12 => {
                            let mut rng = rng.lock().unwrap_or_else(|e| e.into_inner());
                            Ok(vars_for(&vars, false, &mut rng))
                        }
                        // The answer comes later, through `complete_service`.
                        13..=15 => Err(HandlerError::pending()),
                        _ => {
                            let mut rng = rng.lock().unwrap_or_else(|e| e.into_inner());
                            Ok(good_vars(&vars, false, &mut rng))
                        }
                    }
                }),
            );
        }
        let features = Arc::clone(&self.features);
        let rng = Mutex::new(Rng::new(seed ^ 0x0EE7));
        let me_hook = Arc::clone(me);
        builder.hook(hook_fn(move |ev: &Event| {
            note(&features, format!("event:{}", variant(ev)));
            let _ = serde_json::to_string(ev);
            let roll = rng.lock().unwrap_or_else(|e| e.into_inner()).below(60);
            match roll {
                0 => Control::Abort("fuzz: the hook aborted".into()),
                1 => panic!("fuzz: intentional hook panic"),
                2..=4 => {
                    // Hooks may call the engine, `tick` included.
                    if let Some(what) = reenter(&me_hook, |e| {
                        let fired = e.tick(e.now()).len();
                        let _ = e.work_list(&Actor::new("bob", ["r"]));
                        let _ = e.next_due();
                        format!("hook-reenter:tick:{}", fired.min(1))
                    }) {
                        note(&features, what);
                    }
                    Control::Continue
                }
                _ => Control::Continue,
            }
        }));
        let rng = Mutex::new(Rng::new(seed ^ 0x7E70));
        builder.hook(veto_fn(move |c| {
            let _ = (c.task, c.node, c.actor, c.output.len(), c.vars.len());
            match rng.lock().unwrap_or_else(|e| e.into_inner()).below(30) {
                0..=2 => Control::Veto("fuzz: vetoed".into()),
                3 => panic!("fuzz: intentional veto panic"),
                _ => Control::Continue,
            }
        }));
        builder
    }
}

/// Which store the engine commits to.
enum StoreKind {
    None,
    Memory(MemoryStore),
    /// A file, and whether it is opened as shared by several processes
    /// (`SqliteOptions::shared`).
    Sqlite(PathBuf, bool),
    /// A schema of its own on the server `PROCFLOW_PG_URL` names (feature `postgres`): the
    /// URL with its `search_path`, and the schema.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Postgres(String, String),
}

/// A fresh schema on the server `PROCFLOW_PG_URL` names, when it is set (feature `postgres`).
#[cfg(feature = "postgres")]
fn pg_schema() -> Option<Result<StoreKind, String>> {
    let url = std::env::var("PROCFLOW_PG_URL").ok()?;
    let schema = format!("fuzz_{}", std::process::id());
    let made = postgres::Client::connect(&url, postgres::NoTls).and_then(|mut admin| {
        admin.batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        ))
    });
    Some(match made {
        Ok(()) => {
            let sep = if url.contains('?') { '&' } else { '?' };
            let with = format!("{url}{sep}options=-c%20search_path%3D{schema}");
            Ok(StoreKind::Postgres(with, schema))
        }
        Err(e) => Err(format!("harness: cannot make a schema on {url}: {e}")),
    })
}

#[cfg(not(feature = "postgres"))]
fn pg_schema() -> Option<Result<StoreKind, String>> {
    None
}

/// Removes what the run left, however it ends: the SQLite files, the PostgreSQL schema.
impl Drop for StoreKind {
    fn drop(&mut self) {
        match self {
            StoreKind::Sqlite(path, _) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            #[cfg(feature = "postgres")]
            StoreKind::Postgres(_, schema) => {
                if let Ok(url) = std::env::var("PROCFLOW_PG_URL")
                    && let Ok(mut admin) = postgres::Client::connect(&url, postgres::NoTls)
                {
                    let _ = admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
                }
            }
            _ => {}
        }
    }
}

struct Driver {
    engine: Arc<Engine>,
    def: Arc<ProcessDef>,
    key: String,
    roles: Vec<String>,
    setup: Setup,
    rng: Rng,
    calls: u64,
    /// The last call made, for the note on slow steps.
    last: String,
    /// The memory store, when the engine has one: it refuses commits now and then.
    memory: Option<MemoryStore>,
    /// A second engine on the same store (a replica), in half the runs with a store: each step
    /// goes to either, so that each acts on copies the other made stale.
    peer: Option<Arc<Engine>>,
    /// The task completions acknowledged (instance, task number): each must be in the stored
    /// audit trail when a fresh engine reads it at the end.
    acked: Vec<(InstanceId, u32)>,
    /// Every task timer fired so far (task, kind, SLA, due), by any engine or thread: none
    /// twice.
    fired: Arc<Mutex<BTreeSet<String>>>,
    /// Whether another thread drives the same instances at the same time: then two reads
    /// in a row may see different states, and only what each call promises is checked.
    concurrent: bool,
    /// The driver thread's stack, in KiB (for a second driver thread).
    stack_kb: usize,
    /// The first call a healthy store failed (SQLite, PostgreSQL: nothing injects failures
    /// there), to report after the step.
    store_failed: Option<String>,
}

fn drive_def(
    def: ProcessDef,
    job: &Job<'_>,
    rng: &mut Rng,
    features: &Features,
) -> Result<u64, String> {
    // Reading and rendering a loaded definition must not panic.
    let _ = (
        def.to_mermaid(),
        def.to_dot(),
        def.name(),
        def.name_zh(),
        def.source(),
        def.description(),
    );
    let _ = (
        def.file(),
        def.graph().node_count(),
        def.start(),
        def.text().len(),
    );
    for (id, node) in def.nodes() {
        let _ = (
            node.id(),
            node.name(),
            node.kind().as_str(),
            node.location(),
            node.next(),
            node.routes(),
        );
        let _ = (
            def.node(id).handler(),
            def.try_node(id).is_some(),
            def.node_id(node.id()),
        );
        note(features, format!("node:{}", node.kind().as_str()));
    }
    let process = def.key().id.clone();
    let mut calendars: BTreeSet<String> = def.calendar().map(str::to_owned).into_iter().collect();
    let handlers: BTreeSet<String> = def
        .nodes()
        .filter_map(|(_, n)| n.handler().map(str::to_owned))
        .collect();
    let vars: Vec<VarInfo> = def
        .variables()
        .map(|v| {
            let _ = (v.description(), v.default());
            VarInfo {
                name: v.name().to_owned(),
                ty: v.ty(),
                allowed: v.allowed().map(<[Value]>::to_vec),
                required: v.required(),
            }
        })
        .collect();
    let roles: Vec<String> = def
        .roles()
        .map(|(id, role)| {
            let _ = role;
            id.as_str().to_owned()
        })
        .collect();
    let text = def.text().to_owned();
    let start = match rng.below(24) {
        0 => "2026-09-30T08:00:00Z",
        1 => "2100-12-31T09:00:00Z",
        2 => "2026-12-31T15:59:59Z",
        3 => "1970-01-01T00:00:00Z",
        4 => "+262000-01-01T00:00:00Z",
        _ => "2026-01-05T09:00:00Z",
    };
    let clock = Arc::new(ManualClock::new(start.parse().unwrap_or_default()));
    let store = match rng.below(16) {
        0 => StoreKind::Sqlite(
            job.scratch.join(format!("child-{}.db", std::process::id())),
            rng.chance(1, 2),
        ),
        // With a server named, one run in sixteen on PostgreSQL.
        1 if std::env::var_os("PROCFLOW_PG_URL").is_some() => match pg_schema() {
            Some(made) => made?,
            None => StoreKind::Memory(MemoryStore::new()),
        },
        1..=3 => StoreKind::Memory(MemoryStore::new()),
        _ => StoreKind::None,
    };
    note(
        features,
        format!(
            "store:{}",
            match &store {
                StoreKind::None => "none",
                StoreKind::Memory(_) => "memory",
                StoreKind::Sqlite(_, false) => "sqlite",
                StoreKind::Sqlite(_, true) => "sqlite-shared",
                StoreKind::Postgres(..) => "postgres",
            }
        ),
    );
    let org = Organisation::from_file(job.root.join("process-defs/org/province.yaml"))
        .ok()
        .filter(|org| rng.chance(1, 3) && def.check_organisation(org).is_ok())
        .map(Arc::new);
    note(features, format!("org:{}", org.is_some()));
    let mut setup = Setup {
        vars,
        org,
        handlers: handlers.into_iter().collect(),
        calendars: calendars.clone(),
        clock,
        features: Arc::clone(features),
        seed: job.seed,
    };
    // Deploy; a duration naming its own calendar needs that name registered too, so a deploy
    // refused for unknown calendars is tried again on an engine that has them.
    // A call activity naming a shipped definition that is not deployed: that one is deployed
    // first (with handlers for its service tasks), and the deploy tried again.
    let mut def = def;
    let mut called: Vec<ProcessDef> = Vec::new();
    let (engine, deployed, setup) = loop {
        let engine = build(&setup, &process, &store, 0)?;
        let mut problems = Vec::new();
        for c in &called {
            crumb(format!("deploy the called '{}'", c.key().id));
            if let Err(e) = engine.deploy(reload(c.text())?) {
                problems.extend(e.problems);
            }
        }
        crumb("deploy");
        match engine.deploy(def) {
            Ok(deployed) => {
                note(features, "deploy:ok".into());
                break (engine, deployed, setup);
            }
            Err(e) => {
                let _ = e.to_string();
                problems.extend(e.problems);
                let mut handlers = setup.handlers.clone();
                let known = called.len();
                for p in &problems {
                    note(features, format!("deploy:{}", variant(p)));
                    match p {
                        procflow::DeployProblem::UnknownCalendar { name, .. } => {
                            calendars.insert(name.clone());
                        }
                        procflow::DeployProblem::UnknownCalledProcess { process, .. } => {
                            if let Some(c) = shipped_by_id(job.root, process)
                                .filter(|_| !called.iter().any(|c| c.key().id == *process))
                            {
                                handlers.extend(
                                    c.nodes()
                                        .filter_map(|(_, n)| n.handler().map(str::to_owned)),
                                );
                                calendars.extend(c.calendar().map(str::to_owned));
                                called.push(c);
                            }
                        }
                        _ => {}
                    }
                }
                if calendars == setup.calendars && called.len() == known {
                    return Ok(1);
                }
                handlers.sort();
                handlers.dedup();
                setup = Setup {
                    calendars: calendars.clone(),
                    handlers,
                    ..setup
                };
                def = reload(&text)?;
            }
        }
    };
    // Deploying the same text again is allowed.
    crumb("deploy (the same text again)");
    if let Err(e) = engine.deploy(reload(&text)?) {
        return Err(format!("deploying the same text twice was refused: {e}"));
    }
    // Half the runs with a store get a replica: a second engine opened on it after the deploys
    // (it reads the definitions from the store).
    // With an organisation, now and then the replica's has a unit moved to another parent
    // (Tianhe's hall from Guangzhou to Shenzhen): replicas whose organisations differ.
    let peer = if !matches!(store, StoreKind::None) && rng.chance(1, 2) {
        note(features, "replica:on".into());
        let moved = setup
            .org
            .as_ref()
            .filter(|_| rng.chance(1, 2))
            .and_then(|_| {
                let text = std::fs::read_to_string(job.root.join("process-defs/org/province.yaml"))
                    .ok()?;
                let text =
                    text.replacen("level: hall, parent: gz }", "level: hall, parent: sz }", 1);
                Organisation::from_yaml(&text).ok()
            });
        let setup = match moved {
            Some(org) => {
                note(features, "replica:moved-unit".into());
                Setup {
                    org: Some(Arc::new(org)),
                    ..setup.clone()
                }
            }
            None => setup.clone(),
        };
        Some(build(&setup, &process, &store, 1)?)
    } else {
        None
    };
    let mut driver = Driver {
        engine,
        def: deployed,
        key: process,
        roles,
        setup,
        rng: rng.clone(),
        calls: 0,
        last: String::new(),
        memory: match &store {
            StoreKind::Memory(m) => Some(m.clone()),
            _ => None,
        },
        peer,
        acked: Vec::new(),
        fired: Arc::default(),
        concurrent: false,
        stack_kb: job.stack_kb,
        store_failed: None,
    };
    driver.run()?;
    // A second engine on the same store resumes what the first one left.
    if !matches!(store, StoreKind::None) {
        let Driver {
            engine,
            peer,
            setup,
            key: process,
            calls,
            acked,
            ..
        } = driver;
        drop((engine, peer));
        let reopened = build(&setup, &process, &store, 2);
        match reopened {
            Ok(engine) => {
                note(features, "reopen:ok".into());
                let ids = engine.instances();
                for id in &ids {
                    check(&engine, *id, "reopen", features)?;
                }
                // Nothing acknowledged is lost, whichever engine acknowledged it.
                for (id, task) in acked {
                    if !engine.instance(id).is_ok_and(|inst| completed(&inst, task)) {
                        return Err(format!(
                            "the acknowledged completion of task {task} of instance {id} is not in \
                             the stored audit trail"
                        ));
                    }
                }
                crumb("tick (the reopened engine)");
                let fired = engine.tick(later(setup.clock.now(), Duration::days(30)));
                note(features, format!("reopen:fired:{}", fired.len().min(1)));
            }
            // The store holds only what this engine wrote, with the same handlers and
            // calendars: a second engine must resume it.
            Err(e) => return Err(format!("a second engine could not open the store: {e}")),
        }
        return Ok(calls);
    }
    // Now and then, a shipped scenario of this process on the mutated definition.
    let scenarios = scenarios_of(job.root, &driver.key);
    if !scenarios.is_empty() && driver.rng.chance(1, 3) {
        let path = driver.rng.pick(&scenarios).clone();
        let scenario =
            Scenario::from_file(&path).map_err(|e| format!("harness: {}: {e}", path.display()))?;
        run_scenario(&scenario, reload(&text)?, None, job.root, features)?;
    }
    Ok(driver.calls)
}

/// Whether the audit trail of `inst` records the completion of task number `task`.
fn completed(inst: &Instance, task: u32) -> bool {
    inst.audit()
        .iter()
        .any(|r| matches!(&r.what, procflow::Entry::Completed { task: t, .. } if *t == task))
}

/// A second copy of a loaded definition, from its own text.
fn reload(text: &str) -> Result<ProcessDef, String> {
    ProcessDef::from_yaml(text)
        .map_err(|e| format!("the text of a loaded definition no longer loads: {e}"))
}

fn build(setup: &Setup, key: &str, store: &StoreKind, round: u64) -> Result<Arc<Engine>, String> {
    let me: Arc<OnceLock<Weak<Engine>>> = Arc::default();
    let mut builder = setup.builder(key, setup.seed.wrapping_add(round), &me);
    let engine = match store {
        StoreKind::None => builder.build(),
        StoreKind::Memory(store) => match builder.open(store.clone()) {
            Ok(engine) => engine,
            Err(e) => return Err(format!("cannot open an engine on a memory store: {e}")),
        },
        StoreKind::Sqlite(path, shared) => {
            let sqlite = SqliteStore::options()
                .durability(Durability::Process)
                .shared(*shared)
                .create(path)
                .map_err(|e| format!("harness: cannot create {}: {e}", path.display()))?;
            builder
                .open(sqlite)
                .map_err(|e| format!("cannot open an engine on SQLite: {e}"))?
        }
        #[cfg(feature = "postgres")]
        StoreKind::Postgres(url, _) => {
            let pg = procflow::PostgresStore::connect(url)
                .map_err(|e| format!("harness: cannot connect to {url}: {e}"))?;
            builder
                .open(pg)
                .map_err(|e| format!("cannot open an engine on PostgreSQL: {e}"))?
        }
        #[cfg(not(feature = "postgres"))]
        StoreKind::Postgres(..) => return Err("harness: built without PostgreSQL".into()),
    };
    let engine = Arc::new(engine);
    let _ = me.set(Arc::downgrade(&engine));
    Ok(engine)
}

/// Checks what the engine promises about an instance: it fits its definition
/// (`Instance::check`), and its state and audit trail survive the store's encoding.
fn check(engine: &Engine, id: InstanceId, after: &str, features: &Features) -> Result<(), String> {
    crumb(format_args!("instance({id}) and its checks, after {after}"));
    let Ok(inst) = engine.instance(id) else {
        return Ok(());
    };
    // The definition the copy names (another thread may finish the instance meanwhile).
    let def = inst
        .def()
        .and_then(|key| engine.definition(&key.id, Some(key.version)))
        .ok_or_else(|| format!("instance {id} exists but its definition does not"))?;
    inst.check(&def)
        .map_err(|e| format!("Instance::check after {after}: {e}"))?;
    let encoded = inst.encode();
    let back = Instance::decode(&encoded, inst.audit().to_vec())
        .map_err(|e| format!("Instance::decode of Instance::encode after {after}: {e}"))?;
    if back.encode() != encoded {
        return Err(format!(
            "Instance::encode does not round-trip after {after}"
        ));
    }
    let batch = Record::encode_batch(inst.audit());
    let records = Record::decode_batch(&batch)
        .map_err(|e| format!("Record::decode_batch after {after}: {e}"))?;
    if records.len() != inst.audit().len() {
        return Err(format!(
            "Record::encode_batch does not round-trip after {after}"
        ));
    }
    for record in inst.audit() {
        let _ = record.describe(&def);
        note(features, format!("audit:{}", variant(&record.what)));
    }
    for token in inst.tokens() {
        note(
            features,
            format!(
                "token:{}:{}",
                def.node(token.node).kind().as_str(),
                variant(&token.state)
            ),
        );
    }
    for task in inst.tasks() {
        note(features, format!("task:{}", variant(task.state())));
    }
    for incident in inst.incidents() {
        // The message's first words, numbers and quoted names left out.
        let words: Vec<&str> = incident
            .message
            .split_whitespace()
            .take_while(|w| !w.contains(['\'', '"', ':']))
            .filter(|w| !w.starts_with(|c: char| c.is_ascii_digit()))
            .take(5)
            .collect();
        note(features, format!("incident:{}", words.join(" ")));
    }
    let _ = (
        inst.status(),
        inst.vars().len(),
        inst.tokens(),
        inst.tasks(),
        inst.incidents(),
    );
    let _ = (
        inst.timers(),
        inst.pending(),
        inst.started_at(),
        inst.ended_at(),
        inst.def(),
    );
    Ok(())
}

impl Driver {
    fn note(&self, feature: String) {
        note(&self.setup.features, feature);
    }

    fn record<T>(&mut self, what: &str, result: &Result<T, ExecError>) {
        self.calls += 1;
        if let Err(e) = result {
            let _ = e.to_string();
        }
        // A store that refuses what another store takes, or cannot read back what it wrote.
        if let Err(ExecError::Store(
            e @ (procflow::StoreError::Other { .. }
            | procflow::StoreError::Server { .. }
            | procflow::StoreError::Decode { .. }),
        )) = result
            && self.memory.is_none()
        {
            self.store_failed
                .get_or_insert_with(|| format!("a healthy store failed {what}: {e}"));
        }
        self.last = format!("{what}:{}", outcome(result));
        self.note(self.last.clone());
    }

    fn open_tasks(&self) -> Vec<TaskView> {
        let mut tasks: Vec<TaskView> = Vec::new();
        for id in self.engine.instances() {
            if let Ok(mut t) = self.engine.tasks(id) {
                tasks.append(&mut t);
            }
        }
        tasks
    }

    /// An actor: most often one holding a role the task's RACI names for `part`
    /// (`r`esponsible, `a`ccountable, `c`onsulted), else random roles of the definition.
    fn actor(&mut self, task: Option<&TaskView>, part: char) -> Actor {
        if let Some(org) = self.setup.org.clone()
            && self.rng.chance(2, 3)
        {
            // A person of the organisation, with the roles it gives them; now and then the
            // task's claimant.
            let claimant = task.and_then(|t| t.claimed_by.clone());
            let id = match claimant {
                Some(by) if self.rng.chance(1, 2) => by.as_str().to_owned(),
                _ => self.rng.pick(org.people()).id().as_str().to_owned(),
            };
            if let Some(actor) = org.actor(&id) {
                return actor;
            }
        }
        let id = (*self.rng.pick(ACTORS)).to_owned();
        let raci = task
            .and_then(|t| self.def.try_node(t.node))
            .and_then(|n| n.raci());
        if let Some(raci) = raci.filter(|_| self.rng.chance(2, 3)) {
            let roles: Vec<String> = match part {
                'a' => vec![raci.accountable().as_str().to_owned()],
                'c' => raci
                    .consulted()
                    .iter()
                    .map(|r| r.as_str().to_owned())
                    .collect(),
                _ => raci
                    .responsible()
                    .iter()
                    .map(|r| r.as_str().to_owned())
                    .collect(),
            };
            if !roles.is_empty() {
                let role = self.rng.pick(&roles).clone();
                // The claimant, when there is one, so that completing a claimed task works.
                let id = match task.and_then(|t| t.claimed_by.clone()) {
                    Some(by) if self.rng.chance(3, 4) => by,
                    _ => id.into(),
                };
                return Actor::new(id, [role]);
            }
        }
        let mut roles = Vec::new();
        for _ in 0..self.rng.below(3) {
            if !self.roles.is_empty() {
                roles.push(self.rng.pick(&self.roles).clone());
            }
        }
        if self.rng.chance(1, 10) {
            roles.push("ghost".into());
        }
        Actor::new(id, roles)
    }

    fn pick_task(&mut self) -> Option<TaskView> {
        let tasks = self.open_tasks();
        if tasks.is_empty() || self.rng.chance(1, 30) {
            // A task that does not exist, or a closed one.
            let instance = InstanceId::new(self.rng.below(1 << 20) as u64);
            let _ = TaskId::new(instance, 0).to_string().parse::<TaskId>();
            return Some(TaskView {
                id: TaskId::new(instance, self.rng.below(4) as u32),
                node: self.def.start(),
                node_id: "".into(),
                name: None,
                claimed_by: None,
                created_at: self.setup.clock.now(),
                due: None,
                item: None,
                parent: None,
                assignee: None,
                candidates: Vec::new(),
                priority: None,
                suspended: false,
                delegated_by: None,
            });
        }
        Some(self.rng.pick(&tasks).clone())
    }

    /// A node's id: mostly one that `likely` holds for, now and then any, or an unknown one when
    /// none is picked.
    fn pick_node(&mut self, likely: impl Fn(&procflow::Node) -> bool) -> String {
        let def = Arc::clone(&self.def);
        let nodes: Vec<&str> = def
            .nodes()
            .filter(|(_, n)| likely(n) || self.rng.chance(1, 10))
            .map(|(_, n)| n.id())
            .collect();
        if nodes.is_empty() {
            "nowhere".to_owned()
        } else {
            (*self.rng.pick(&nodes)).to_owned()
        }
    }

    fn pick_instance(&mut self) -> InstanceId {
        let ids = self.engine.instances();
        if ids.is_empty() || self.rng.chance(1, 30) {
            InstanceId::new(self.rng.below(1 << 20) as u64)
        } else {
            *self.rng.pick(&ids)
        }
    }

    fn start(&mut self, first: bool) -> Result<(), String> {
        let mut vars = if first || self.rng.chance(1, 2) {
            good_vars(&self.setup.vars, true, &mut self.rng)
        } else {
            vars_for(&self.setup.vars, self.rng.chance(3, 4), &mut self.rng)
        };
        // With an organisation, its units and people as string values (scopes, owners).
        if let Some(org) = self.setup.org.clone() {
            for var in &self.setup.vars {
                if var.ty == VarType::String && var.allowed.is_none() && self.rng.chance(1, 2) {
                    let value = if self.rng.chance(2, 3) {
                        self.rng.pick(org.units()).id().to_owned()
                    } else {
                        self.rng.pick(org.people()).id().as_str().to_owned()
                    };
                    if let Some(Value::String(old)) = vars.get_mut(&var.name) {
                        *old = value;
                    } else if !vars.contains_key(&var.name) {
                        vars.insert(var.name.clone(), Value::String(value));
                    }
                }
            }
        }
        let key = self.key.clone();
        let result = if self.rng.chance(1, 10) {
            let version = *self
                .rng
                .pick(&[None, Some(0), Some(1), Some(2), Some(u32::MAX)]);
            crumb(format!(
                "start_version('{key}', {version:?}, {})",
                shape(&vars)
            ));
            self.engine.start_version(&key, version, vars)
        } else {
            crumb(format!("start('{key}', {})", shape(&vars)));
            self.engine.start(&key, vars)
        };
        self.record("start", &result);
        match result {
            Ok(id) => check(&self.engine, id, "start", &self.setup.features),
            Err(
                ExecError::Incident { instance, .. }
                | ExecError::Deadline { instance, .. }
                | ExecError::Hook { instance, .. },
            ) => check(&self.engine, instance, "start", &self.setup.features),
            Err(_) => Ok(()),
        }
    }

    fn after(&self, task: &TaskView, what: &str) -> Result<(), String> {
        check(&self.engine, task.id.instance(), what, &self.setup.features)
    }

    fn step(&mut self) -> Result<(), String> {
        if let Some(peer) = &mut self.peer
            && self.rng.chance(1, 3)
        {
            crumb("switch to the other engine on the store");
            std::mem::swap(&mut self.engine, peer);
        }
        match self.rng.below(125) {
            100.. => self.between()?,
            0..=7 => self.start(false)?,
            8..=22 => {
                let Some(task) = self.pick_task() else {
                    return Ok(());
                };
                let actor = self.actor(Some(&task), 'r');
                crumb(format!("claim({}, {:?})", task.id, actor.roles));
                let r = self.engine.claim(task.id, &actor);
                self.record("claim", &r);
                self.after(&task, "claim")?;
            }
            23..=44 => {
                let Some(task) = self.pick_task() else {
                    return Ok(());
                };
                let part = if self.rng.chance(1, 5) { 'a' } else { 'r' };
                let actor = self.actor(Some(&task), part);
                let output = match self.rng.below(10) {
                    0..=4 => Vars::new(),
                    5..=7 => good_vars(&self.setup.vars, false, &mut self.rng),
                    _ => vars_for(&self.setup.vars, false, &mut self.rng),
                };
                crumb(format!(
                    "complete({}, {:?}, {})",
                    task.id,
                    actor.roles,
                    shape(&output)
                ));
                let r = self.engine.complete(task.id, &actor, output);
                self.record("complete", &r);
                if r.is_ok() {
                    self.acked.push((task.id.instance(), task.id.seq()));
                }
                self.after(&task, "complete")?;
            }
            45..=49 => {
                let Some(task) = self.pick_task() else {
                    return Ok(());
                };
                let actor = self.actor(Some(&task), 'c');
                let text = match self.rng.below(4) {
                    0 => "中".repeat(self.rng.size(100_000)),
                    1 => String::new(),
                    _ => "fuzz comment".to_owned(),
                };
                crumb(format!(
                    "comment({}, {:?}, {} bytes)",
                    task.id,
                    actor.roles,
                    text.len()
                ));
                let r = self.engine.comment(task.id, &actor, &text);
                self.record("comment", &r);
                self.after(&task, "comment")?;
            }
            53..=54 => {
                let Some(task) = self.pick_task() else {
                    return Ok(());
                };
                let part = if self.rng.chance(1, 4) { 'a' } else { 'r' };
                let actor = self.actor(Some(&task), part);
                // Most often one of the task's targets, else any node, else no node at all.
                let targets: Vec<String> = self
                    .def
                    .try_node(task.node)
                    .map(|n| n.send_back())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|t| self.def.try_node(*t).map(|n| n.id().to_owned()))
                    .collect();
                let to = match self.rng.below(4) {
                    0..=1 if !targets.is_empty() => self.rng.pick(&targets).clone(),
                    2 => {
                        let nodes: Vec<String> =
                            self.def.nodes().map(|(_, n)| n.id().to_owned()).collect();
                        self.rng.pick(&nodes).clone()
                    }
                    _ => "nowhere".to_owned(),
                };
                crumb(format!("send_back({}, {:?}, '{to}')", task.id, actor.roles));
                let r = self.engine.send_back(task.id, &actor, &to, "fuzz");
                self.record("send_back", &r);
                self.after(&task, "send_back")?;
            }
            50..=52 => {
                let Some(task) = self.pick_task() else {
                    return Ok(());
                };
                let by = self.actor(Some(&task), 'a');
                let to = self.actor(Some(&task), 'r');
                crumb(format!(
                    "reassign({}, {:?}, {:?})",
                    task.id, by.roles, to.roles
                ));
                let r = self.engine.reassign(task.id, &by, &to);
                self.record("reassign", &r);
                self.after(&task, "reassign")?;
            }
            55..=69 => self.tick()?,
            70..=74 => {
                let id = self.pick_instance();
                crumb(format!("retry({id})"));
                let r = self.engine.retry(id);
                self.record("retry", &r);
                check(&self.engine, id, "retry", &self.setup.features)?;
            }
            75..=79 => {
                let actor = self.actor(None, 'r');
                crumb(format!("work_list({:?})", actor.roles));
                let list = self.engine.work_list(&actor);
                self.calls += 1;
                self.note(format!("work_list:{}", list.len().min(3)));
                // Each listed task is open in its instance, once, and shown as it is there
                // (unless another thread may have changed it since).
                let mut seen = BTreeSet::new();
                for t in list.iter().filter(|_| !self.concurrent) {
                    let open = self.engine.tasks(t.id.instance()).unwrap_or_default();
                    let here = open.iter().find(|o| o.id == t.id);
                    if !seen.insert(t.id.to_string())
                        || here.is_none_or(|o| o.claimed_by != t.claimed_by || o.node != t.node)
                    {
                        return Err(format!(
                            "work_list lists task {} that is not open as listed ({:?}), or twice",
                            t.id,
                            here.map(|o| &o.claimed_by)
                        ));
                    }
                }
            }
            80..=86 => {
                if self.rng.chance(1, 2) {
                    let Some(task) = self.pick_task() else {
                        return Ok(());
                    };
                    crumb(format!("sla_of_task({})", task.id));
                    let r = self.engine.sla_of_task(task.id);
                    self.sla("sla_of_task", &r);
                } else {
                    let id = self.pick_instance();
                    crumb(format!("sla_of_instance({id})"));
                    let r = self.engine.sla_of_instance(id);
                    self.sla("sla_of_instance", &r);
                }
            }
            87..=89 => {
                crumb("next_due");
                let _ = self.engine.next_due();
                self.calls += 1;
            }
            90..=93 => {
                let id = self.pick_instance();
                check(&self.engine, id, "a read", &self.setup.features)?;
                self.calls += 1;
            }
            94 => {
                let id = self.pick_instance();
                crumb(format!("remove({id})"));
                let r = self.engine.remove(id);
                self.record("remove", &r);
            }
            95..=96 => {
                let names: Vec<String> = self
                    .setup
                    .calendars
                    .iter()
                    .cloned()
                    .chain(["nowhere".to_owned()])
                    .collect();
                let name = self.rng.pick(&names).clone();
                crumb(format!("update_calendar('{name}')"));
                let r = self
                    .engine
                    .update_calendar(&name, BusinessCalendar::china());
                self.record("update_calendar", &r);
                for id in self.engine.instances() {
                    check(&self.engine, id, "update_calendar", &self.setup.features)?;
                }
            }
            97 if self.memory.is_some() => {
                // The next commits fail, as on a full disk: the calls fail typed, and nothing
                // of theirs may stay.
                let n = self.rng.range(1, 3) as u32;
                crumb(format!("MemoryStore::refuse_commits({n})"));
                if let Some(m) = &self.memory {
                    m.refuse_commits(n);
                }
                self.note("store:refusing".into());
            }
            _ => {
                let _ = self.engine.unavailable();
                let _ = self.engine.definition(&self.key, None);
                let _ = self.engine.definition(&self.key, Some(u32::MAX));
                let _ = self.engine.now();
                self.calls += 1;
            }
        }
        Ok(())
    }

    /// A payload for `names` (a message's or a signal's declared variables): values copied from
    /// a running instance (so that correlations match), values that fit, or values that do not.
    fn payload(&mut self, names: &[String]) -> Vars {
        let source = self.pick_instance();
        let held = self
            .engine
            .instance(source)
            .map(|i| i.vars().clone())
            .unwrap_or_default();
        let mut out = Vars::new();
        for name in names {
            if self.rng.chance(1, 8) {
                continue;
            }
            let info = self.setup.vars.iter().find(|v| v.name == *name).cloned();
            let value = match (held.get(name), info) {
                (Some(v), _) if self.rng.chance(2, 3) => v.clone(),
                (_, Some(info)) if self.rng.chance(3, 4) => good_value(&info, &mut self.rng),
                (_, Some(info)) => value_for(&info, &mut self.rng),
                (_, None) => any_value(&mut self.rng, 2),
            };
            out.insert(name.clone(), value);
        }
        if self.rng.chance(1, 10) {
            out.insert("undeclared".into(), any_value(&mut self.rng, 2));
        }
        out
    }

    /// Checks a key query's answer against the instances the engine holds: each running one
    /// whose definition lists the key and that holds the value is found, and each found one
    /// the engine can read holds it.
    fn check_key(
        &self,
        key: &str,
        value: &str,
        found: &[procflow::KeyedInstance],
    ) -> Result<(), String> {
        // A replica answers key queries from the store and instances from its copies, which the
        // other engine may have made stale; another thread may change the instance between the
        // two reads: nothing to compare then.
        if self.peer.is_some() || self.concurrent {
            return Ok(());
        }
        let holds = |inst: &Instance| match inst.vars().get(key) {
            Some(Value::String(s)) => s == value,
            Some(Value::Number(n)) => n.as_i64().is_some_and(|n| n.to_string() == value),
            _ => false,
        };
        for id in self.engine.instances() {
            let (Ok(inst), Ok(def)) = (self.engine.instance(id), self.engine.definition_of(id))
            else {
                continue;
            };
            if inst.status() == procflow::Status::Running
                && def.keys().any(|k| k == key)
                && holds(&inst)
                && !found.iter().any(|k| k.id == id)
            {
                return Err(format!(
                    "find_by_key('{key}', {} bytes) misses running instance {id}, which holds it",
                    value.len()
                ));
            }
        }
        for k in found {
            if let Ok(inst) = self.engine.instance(k.id)
                && !holds(&inst)
            {
                return Err(format!(
                    "find_by_key('{key}', {} bytes) finds instance {}, which does not hold it",
                    value.len(),
                    k.id
                ));
            }
        }
        Ok(())
    }

    /// Checks every instance the engine holds (a message or a signal may change any of them).
    fn check_all(&self, after: &str) -> Result<(), String> {
        for id in self.engine.instances() {
            check(&self.engine, id, after, &self.setup.features)?;
        }
        Ok(())
    }

    /// The calls between processes and on a case as a whole: messages, signals, cancelling,
    /// suspending, delegating, skipping, handing over, key queries and order lines.
    fn between(&mut self) -> Result<(), String> {
        let messages: Vec<(String, Vec<String>)> = self
            .def
            .messages()
            .map(|(name, m)| (name.to_owned(), m.payload().to_vec()))
            .collect();
        match self.rng.below(28) {
            25..=27 => {
                // The answer of a service task waiting for its handler (or of one that is not).
                let id = self.pick_instance();
                let node = self.pick_node(|n| n.handler().is_some());
                let answer = match self.rng.below(4) {
                    0 => Err(HandlerError::new("fuzz: the late answer failed")),
                    1 => Ok(vars_for(&self.setup.vars, false, &mut self.rng)),
                    _ => Ok(good_vars(&self.setup.vars, false, &mut self.rng)),
                };
                crumb(format!(
                    "complete_service({id}, '{node}', {})",
                    answer.is_ok()
                ));
                let r = self.engine.complete_service(id, &node, answer);
                self.record("complete_service", &r);
                self.check_all("complete_service")?;
            }
            0..=5 => {
                let (name, payload) = match self.rng.below(8) {
                    0 => ("nope".to_owned(), Vec::new()),
                    _ if !messages.is_empty() => self.rng.pick(&messages).clone(),
                    _ => ("nope".to_owned(), Vec::new()),
                };
                let vars = self.payload(&payload);
                crumb(format!("correlate('{name}', {})", shape(&vars)));
                let r = self.engine.correlate(&name, vars);
                self.record("correlate", &r);
                if let Ok(c) = &r {
                    self.note(format!(
                        "correlate:received:{}:started:{}:kept:{}",
                        c.received.len().min(2),
                        c.started.len().min(1),
                        c.kept
                    ));
                }
                self.check_all("correlate")?;
            }
            6..=7 => {
                let (name, payload) = match self.rng.below(4) {
                    0 => ("nope".to_owned(), Vec::new()),
                    _ if !messages.is_empty() => self.rng.pick(&messages).clone(),
                    _ => ("nope".to_owned(), Vec::new()),
                };
                let id = self.pick_instance();
                let vars = self.payload(&payload);
                crumb(format!("deliver({id}, '{name}', {})", shape(&vars)));
                let r = self.engine.deliver(id, &name, vars);
                self.record("deliver", &r);
                check(&self.engine, id, "deliver", &self.setup.features)?;
            }
            8..=9 => {
                let signals: Vec<String> = self
                    .def
                    .signals()
                    .map(|(name, _)| name.to_owned())
                    .collect();
                let name = if signals.is_empty() || self.rng.chance(1, 5) {
                    "nope".to_owned()
                } else {
                    self.rng.pick(&signals).clone()
                };
                let names: Vec<String> = self.setup.vars.iter().map(|v| v.name.clone()).collect();
                let vars = self.payload(&names);
                crumb(format!("signal('{name}', {})", shape(&vars)));
                let r = self.engine.signal(&name, vars);
                self.record("signal", &r);
                self.check_all("signal")?;
            }
            10..=11 => {
                let id = self.pick_instance();
                let actor = self.actor(None, 'a');
                crumb(format!("cancel({id}, {:?})", actor.roles));
                let r = self.engine.cancel(id, &actor, "fuzz");
                self.record("cancel", &r);
                self.check_all("cancel")?;
            }
            12..=14 => {
                let Some(task) = self.pick_task() else {
                    return Ok(());
                };
                let actor = self.actor(Some(&task), 'a');
                let what: procflow::WorkItem = if self.rng.chance(1, 2) {
                    task.id.into()
                } else {
                    task.id.instance().into()
                };
                let r = if self.rng.chance(1, 2) {
                    crumb(format!("suspend({what:?}, {:?})", actor.roles));
                    self.engine.suspend(what, &actor)
                } else {
                    crumb(format!("resume({what:?}, {:?})", actor.roles));
                    self.engine.resume(what, &actor)
                };
                self.record("suspension", &r);
                self.after(&task, "suspend or resume")?;
            }
            15..=18 => {
                let Some(task) = self.pick_task() else {
                    return Ok(());
                };
                let part = if self.rng.chance(1, 3) { 'a' } else { 'r' };
                let actor = self.actor(Some(&task), part);
                let r = match self.rng.below(4) {
                    0 => {
                        let to = self.actor(Some(&task), 'r');
                        crumb(format!(
                            "delegate({}, {:?}, {:?})",
                            task.id, actor.roles, to.roles
                        ));
                        self.engine.delegate(task.id, &actor, &to)
                    }
                    1 => {
                        crumb(format!("release({}, {:?})", task.id, actor.roles));
                        self.engine.release(task.id, &actor)
                    }
                    2 => {
                        crumb(format!("return_task({}, {:?})", task.id, actor.roles));
                        self.engine.return_task(task.id, &actor)
                    }
                    _ => {
                        crumb(format!("skip({}, {:?})", task.id, actor.roles));
                        self.engine.skip(task.id, &actor, "fuzz")
                    }
                };
                self.record("task_call", &r);
                self.after(&task, "a task call")?;
            }
            19 => {
                let id = self.pick_instance();
                let by = self.actor(None, 'a');
                let to = self.actor(None, 'r');
                crumb(format!("hand_over({id}, {:?}, {:?})", by.roles, to.roles));
                let r = self.engine.hand_over(id, &by, &to);
                self.record("hand_over", &r);
                check(&self.engine, id, "hand_over", &self.setup.features)?;
            }
            20..=21 => {
                let keys: Vec<String> = self.def.keys().map(str::to_owned).collect();
                let key = if keys.is_empty() || self.rng.chance(1, 5) {
                    "nope".to_owned()
                } else {
                    self.rng.pick(&keys).clone()
                };
                let id = self.pick_instance();
                let value = match self
                    .engine
                    .instance(id)
                    .ok()
                    .and_then(|i| i.vars().get(&key).cloned())
                {
                    Some(Value::String(s)) if self.rng.chance(3, 4) => s,
                    Some(other) if self.rng.chance(3, 4) => other.to_string(),
                    _ => (*self.rng.pick(STRINGS)).to_owned(),
                };
                crumb(format!("find_by_key('{key}', {} bytes)", value.len()));
                let found = self.engine.find_by_key(&key, value.as_str());
                self.record("find_by_key", &found);
                crumb(format!("history_by_key('{key}', {} bytes)", value.len()));
                let history = self.engine.history_by_key(&key, value.as_str());
                self.record("history_by_key", &history);
                if let Ok(found) = &found {
                    self.note(format!("find_by_key:{}", found.len().min(2)));
                    self.check_key(&key, &value, found)?;
                }
            }
            22 => {
                let id = self.pick_instance();
                let node = self.pick_node(procflow::Node::is_multi_instance);
                let items: Vec<Value> = (0..self.rng.size(4))
                    .map(|_| any_value(&mut self.rng, 2))
                    .collect();
                crumb(format!("add_items({id}, '{node}', {} items)", items.len()));
                let r = self.engine.add_items(id, &node, items);
                self.record("add_items", &r);
                check(&self.engine, id, "add_items", &self.setup.features)?;
            }
            _ => {
                let id = self.pick_instance();
                crumb(format!("children, owner and kept messages of {id}"));
                let _ = self.engine.children(id);
                let _ = self.engine.owner(id);
                let _ = self.engine.kept_messages();
                let _ = self.engine.unmatched();
                self.calls += 1;
            }
        }
        Ok(())
    }

    fn sla(&mut self, what: &str, r: &Result<Option<procflow::Sla>, ExecError>) {
        self.record(what, r);
        if let Ok(Some(sla)) = r {
            let _ = serde_json::to_string(sla);
            self.note(format!(
                "{what}:{}:{}",
                variant(&sla.status),
                sla.provisional
            ));
        }
    }

    fn tick(&mut self) -> Result<(), String> {
        let by = advance(&mut self.rng);
        self.setup.clock.advance(by);
        let now = if self.rng.chance(1, 20) {
            later(self.setup.clock.now(), -Duration::days(1))
        } else {
            self.setup.clock.now()
        };
        crumb(format!("tick({now}) after advancing {by}"));
        let fired = self.engine.tick(now);
        self.calls += 1;
        self.last = format!("tick by {by} to {now}: {} fired", fired.len());
        for f in &fired {
            let _ = serde_json::to_string(f);
            self.note(format!("fired:{}", f.kind.name(f.sla)));
            if let Some(task) = f.task
                && !self
                    .fired
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(format!("{task} {:?} {} {}", f.kind, f.sla, f.due))
            {
                return Err(format!(
                    "timer {:?} (SLA: {}) of task {task}, due {}, fired twice",
                    f.kind, f.sla, f.due
                ));
            }
        }
        for f in &fired {
            check(&self.engine, f.instance, "tick", &self.setup.features)?;
        }
        Ok(())
    }

    /// With `deep=N`: hands a value nested N levels to every call that takes variables, on
    /// the paths that refuse it for another reason first (an unknown process or version, an
    /// unknown task, an actor without a role) and on the one that checks it.
    fn deep_first(&mut self, levels: usize) -> Result<(), String> {
        let name = self
            .setup
            .vars
            .first()
            .map_or("v".to_owned(), |v| v.name.clone());
        let deep_vars = |list| Vars::from_iter([(name.clone(), deep(levels, list))]);
        let key = self.key.clone();
        // Each call is said on stderr first: a stack overflow leaves no backtrace.
        crumb(format!("start('{key}', {{{name}: {levels} levels}})"));
        let r = self.engine.start(&key, deep_vars(true));
        self.record("deep:start", &r);
        crumb(format!(
            "start('no-such-process', {{{name}: {levels} levels}})"
        ));
        let r = self.engine.start("no-such-process", deep_vars(false));
        self.record("deep:start-unknown", &r);
        crumb(format!(
            "start_version('{key}', Some(u32::MAX), {{{name}: {levels} levels}})"
        ));
        let r = self
            .engine
            .start_version(&key, Some(u32::MAX), deep_vars(true));
        self.record("deep:start-version", &r);
        self.start(true)?;
        for task in self.open_tasks() {
            let nobody = Actor::new("nobody", ["ghost"]);
            crumb(format!(
                "complete({}, actor without a role, {{{name}: {levels} levels}})",
                task.id
            ));
            let r = self.engine.complete(task.id, &nobody, deep_vars(false));
            self.record("deep:complete-denied", &r);
            let unknown = TaskId::new(task.id.instance(), 9_999);
            crumb(format!(
                "complete({unknown} (no such task), {{{name}: {levels} levels}})"
            ));
            let r = self.engine.complete(unknown, &nobody, deep_vars(true));
            self.record("deep:complete-unknown", &r);
            let actor = self.actor(Some(&task), 'r');
            crumb(format!(
                "complete({}, {:?}, {{{name}: {levels} levels}})",
                task.id, actor.roles
            ));
            let r = self.engine.complete(task.id, &actor, deep_vars(false));
            self.record("deep:complete", &r);
            self.after(&task, "a deep completion")?;
        }
        crumb("deep values: done");
        Ok(())
    }

    fn run(&mut self) -> Result<(), String> {
        if let Some(levels) = DEEP.with(std::cell::Cell::get) {
            self.deep_first(levels)?;
        }
        self.start(true)?;
        if let Some(failed) = self.store_failed.take() {
            return Err(failed);
        }
        let steps = self.rng.range(10, 80);
        // A third of the runs drive the same engine (or the replica) from a second thread at
        // the same time.
        if DEEP.with(std::cell::Cell::get).is_none() && self.rng.chance(1, 3) {
            self.note("threads:2".into());
            let mut other = self.second();
            self.concurrent = true;
            let other_steps = self.rng.range(10, 80);
            let max_depth = MAX_DEPTH.with(std::cell::Cell::get);
            let joined = std::thread::scope(|s| {
                let thread = std::thread::Builder::new()
                    .name("fuzz-driver-2".into())
                    .stack_size(self.stack_kb << 10)
                    .spawn_scoped(s, || {
                        MAX_DEPTH.with(|d| d.set(max_depth));
                        other.steps(other_steps)
                    })
                    .map_err(|e| format!("harness: cannot start a second driver: {e}"))?;
                let mine = self.steps(steps);
                let theirs = thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                mine.and(theirs)
            });
            joined?;
            self.concurrent = false;
            self.calls += other.calls;
            self.acked.append(&mut other.acked);
        } else {
            self.steps(steps)?;
        }
        // Let every timer left run out: an hour, a day, a month, a year and more.
        for by in [
            Duration::hours(1),
            Duration::days(1),
            Duration::days(31),
            Duration::days(400),
            Duration::days(40_000),
        ] {
            self.setup.clock.advance(by);
            crumb(format!("tick({}) at the end", self.setup.clock.now()));
            let fired = self.engine.tick(self.setup.clock.now());
            for f in &fired {
                self.note(format!("fired:{}", f.kind.name(f.sla)));
            }
            self.calls += 1;
        }
        for id in self.engine.instances() {
            check(&self.engine, id, "the last tick", &self.setup.features)?;
            if let Ok(inst) = self.engine.instance(id) {
                self.note(format!("status:{}", variant(&inst.status())));
            }
        }
        // An acknowledged completion is in the audit trail of every copy the engine still
        // answers for (a store's is checked by the engine that reopens it; a replica's copies
        // may be older than the store's).
        for &(id, task) in self.acked.iter().filter(|_| self.peer.is_none()) {
            if let Ok(inst) = self.engine.instance(id)
                && !completed(&inst, task)
            {
                return Err(format!(
                    "the acknowledged completion of task {task} of instance {id} is not in its \
                     audit trail"
                ));
            }
        }
        Ok(())
    }

    fn steps(&mut self, steps: usize) -> Result<(), String> {
        for _ in 0..steps {
            let started = std::time::Instant::now();
            self.last = "?".into();
            self.step()?;
            if let Some(failed) = self.store_failed.take() {
                return Err(failed);
            }
            let took = started.elapsed();
            if took > std::time::Duration::from_millis(100) {
                eprintln!(
                    "slow step ({took:?}): {} at {}",
                    self.last,
                    self.setup.clock.now()
                );
            }
        }
        Ok(())
    }

    /// A driver for a second thread: the replica when there is one, else the same engine,
    /// with a random sequence of its own.
    fn second(&mut self) -> Driver {
        Driver {
            engine: Arc::clone(self.peer.as_ref().unwrap_or(&self.engine)),
            def: Arc::clone(&self.def),
            key: self.key.clone(),
            roles: self.roles.clone(),
            setup: self.setup.clone(),
            rng: Rng::new(self.rng.next_u64()),
            calls: 0,
            last: String::new(),
            memory: self.memory.clone(),
            peer: None,
            acked: Vec::new(),
            fired: Arc::clone(&self.fired),
            concurrent: true,
            stack_kb: self.stack_kb,
            store_failed: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Calendars
// ---------------------------------------------------------------------------------------------

fn business(rng: &mut Rng) -> BusinessDuration {
    let d = match rng.below(6) {
        0 => Duration::zero(),
        1 => Duration::minutes(rng.size(600) as i64),
        2 => Duration::hours(rng.size(2_000) as i64),
        3 => Duration::hours(rng.size(2_000_000) as i64),
        4 => Duration::seconds(rng.size(100_000) as i64),
        _ => Duration::hours(rng.range(1, 48) as i64),
    };
    BusinessDuration::new(d).unwrap_or(BusinessDuration::ZERO)
}

fn drive_calendar(
    cal: &BusinessCalendar,
    job: &Job<'_>,
    rng: &mut Rng,
    features: &Features,
) -> Result<u64, String> {
    let _ = (
        cal.name(),
        cal.name_zh(),
        cal.file(),
        cal.zone(),
        cal.beyond(),
    );
    let years: Vec<i32> = cal.years().collect();
    for y in &years {
        let _ = cal.is_provisional(*y);
    }
    let mut calls = 0;
    let rounds = rng.range(5, 30);
    for _ in 0..rounds {
        let t = instant(rng);
        let (a, b) = (business(rng), business(rng));
        calls += 4;
        let _ = (
            cal.local(t),
            cal.rfc3339(t),
            cal.is_working(t).map(|w| w.value),
        );
        if let Some(date) = NaiveDate::from_ymd_opt(years.first().copied().unwrap_or(2026), 1, 1)
            .and_then(|d| d.checked_add_signed(Duration::days(rng.below(800) as i64)))
        {
            let _ = cal.holiday(date).map(|h| (h.name.len(), h.name_zh.clone()));
        }
        crumb(format!("BusinessCalendar::add({t}, {a:?})"));
        let at = cal.add(t, a);
        note(
            features,
            format!(
                "cal:add:{}",
                at.as_ref()
                    .map_or_else(variant, |c| format!("ok:{}", c.is_provisional()))
            ),
        );
        // Documented: `add` is monotonic in the duration and additive.
        if let (Ok(ta), Some(sum)) = (&at, a.checked_add(b)) {
            let _ = ta.provisional_years().count();
            crumb(format!(
                "BusinessCalendar::add({}, {b:?}) and add({t}, {sum:?})",
                ta.value
            ));
            if let (Ok(tab), Ok(t_sum)) = (cal.add(ta.value, b), cal.add(t, sum)) {
                if tab.value != t_sum.value {
                    return Err(format!(
                        "BusinessCalendar::add is not additive: add(add({t}, {a:?}), {b:?}) = {} but add({t}, {sum:?}) = {}",
                        tab.value, t_sum.value
                    ));
                }
                if t_sum.value < ta.value {
                    return Err(format!(
                        "BusinessCalendar::add is not monotonic: add({t}, {sum:?}) = {} is before add({t}, {a:?}) = {}",
                        t_sum.value, ta.value
                    ));
                }
            }
        }
        let u = if rng.chance(1, 2) {
            instant(rng)
        } else {
            later(t, Duration::hours(rng.size(100_000) as i64))
        };
        crumb(format!("BusinessCalendar::business_time_between({t}, {u})"));
        let between = cal.business_time_between(t, u);
        note(
            features,
            format!(
                "cal:between:{}",
                between.as_ref().map_or_else(variant, |_| "ok".into())
            ),
        );
        let spec = *rng.pick(&[
            "4h business",
            "0h business",
            "1h",
            "-5h",
            "99999999d",
            "40h business",
            "tomorrow",
            "",
            "2d",
            "1000000h business",
        ]);
        if let Ok(spec) = DurationSpec::parse(spec) {
            let _ = (spec.amount(), spec.is_business(), spec.to_string());
            let _ = spec.after(t, Some(cal));
        }
    }
    // The shipped order-provisioning scenarios on this calendar.
    if rng.chance(1, 2) {
        let scenarios = scenarios_of(job.root, "order-provisioning");
        if !scenarios.is_empty() {
            let path = rng.pick(&scenarios).clone();
            let scenario = Scenario::from_file(&path)
                .map_err(|e| format!("harness: {}: {e}", path.display()))?;
            run_scenario(
                &scenario,
                shipped_def(job.root, "order-provisioning")?,
                Some(cal),
                job.root,
                features,
            )?;
            calls += 1;
        }
    }
    Ok(calls)
}
