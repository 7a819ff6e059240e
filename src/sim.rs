//! Scenarios: scripted runs of one definition, for `procflow simulate` and for tests.
//!
//! A scenario names actors, scripts what each service handler returns, and lists steps with
//! expected outcomes. README.md, "Scenario format", describes the file.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};

use indexmap::IndexMap;
use serde::Deserialize;

use crate::clock::{Clock, ManualClock};
use chrono::{DateTime, Utc};

use crate::def::{LoadError, Problem, ProblemKind, ProcessDef};
use crate::exec::DeployError;
use crate::exec::{Engine, ExecError};
use crate::hooks::{HandlerError, handler_fn, hook_fn};
use crate::ids::{InstanceId, TaskId};
use crate::model::Status;
use crate::model::{Entry, Event};
use crate::raci::Actor;
use crate::time::calendar::BusinessCalendar;
use crate::time::duration::DurationSpec;
use crate::vars::Vars;
use crate::yaml::{At, parse_yaml};

/// A parsed scenario file.
pub struct Scenario {
    raw: RawScenario,
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scenario")
            .field("name", &self.raw.name)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    /// An organisation file, relative to the definition's folder: the engine runs with it
    /// (people's roles, units and skills; `allocate:`), and actors it knows need not be listed
    /// under `actors`.
    #[serde(default)]
    organisation: Option<String>,
    #[serde(default)]
    actors: IndexMap<String, Vec<String>>,
    #[serde(default)]
    services: IndexMap<String, Vec<ServiceResult>>,
    steps: Vec<At<RawStep>>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceResult {
    #[serde(default)]
    vars: Vars,
    #[serde(default)]
    fail: Option<String>,
}

// A scenario holds tens of steps, read once: the size of its largest step (`expect`) is no cost
// worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum RawStep {
    Start {
        #[serde(default)]
        vars: Vars,
        #[serde(default)]
        expect: Outcome,
    },
    Claim {
        task: String,
        actor: String,
        #[serde(default)]
        expect: Outcome,
    },
    Complete {
        task: String,
        actor: String,
        #[serde(default)]
        vars: Vars,
        /// Of several open tasks at `task` (a multi-instance task's, or a multi-instance
        /// sub-process's runs'), the one of this item; the first open one when not given.
        #[serde(default)]
        item: Option<u32>,
        #[serde(default)]
        expect: Outcome,
    },
    Comment {
        task: String,
        actor: String,
        text: String,
        #[serde(default)]
        expect: Outcome,
    },
    Reassign {
        task: String,
        actor: String,
        to: String,
        #[serde(default)]
        expect: Outcome,
    },
    /// Sends the case back from `task` to the earlier user task `to` (退回).
    SendBack {
        task: String,
        actor: String,
        to: String,
        #[serde(default)]
        reason: String,
        #[serde(default)]
        expect: Outcome,
    },
    Retry {
        #[serde(default)]
        expect: Outcome,
    },
    /// Cancels the instance (撤单) as `actor`, who needs the process's accountable role.
    Cancel {
        actor: String,
        reason: String,
        #[serde(default)]
        expect: Outcome,
    },
    /// Delivers a message to the instance ([`Engine::deliver`]).
    Deliver {
        message: String,
        #[serde(default)]
        vars: Vars,
        #[serde(default)]
        expect: Outcome,
    },
    /// Broadcasts a signal ([`Engine::signal`]); `woken` checks how many instances it woke.
    Signal {
        name: String,
        #[serde(default)]
        vars: Vars,
        #[serde(default)]
        woken: Option<usize>,
        #[serde(default)]
        expect: Outcome,
    },
    /// Correlates a message by its payload ([`Engine::correlate`]); `to` checks where it went.
    /// A message that starts an instance (a message start event) makes it the scenario's
    /// instance when none was started yet.
    Correlate {
        message: String,
        #[serde(default)]
        vars: Vars,
        #[serde(default)]
        to: Option<Went>,
        #[serde(default)]
        expect: Outcome,
    },
    /// Adds items to a running multi-instance task ([`Engine::add_items`]).
    AddItems {
        node: String,
        items: Vec<serde_json::Value>,
        #[serde(default)]
        expect: Outcome,
    },
    /// The claimant gives a claimed task back ([`Engine::release`]).
    Release {
        task: String,
        actor: String,
        #[serde(default)]
        expect: Outcome,
    },
    /// Delegates a task to `to` ([`Engine::delegate`]).
    Delegate {
        task: String,
        actor: String,
        to: String,
        #[serde(default)]
        expect: Outcome,
    },
    /// The delegate gives a delegated task back ([`Engine::return_task`]).
    Return {
        task: String,
        actor: String,
        #[serde(default)]
        expect: Outcome,
    },
    /// Suspends a task, or the instance when `task` is left out ([`Engine::suspend`]).
    Suspend {
        #[serde(default)]
        task: Option<String>,
        actor: String,
        #[serde(default)]
        expect: Outcome,
    },
    /// Resumes a task, or the instance when `task` is left out ([`Engine::resume`]).
    Resume {
        #[serde(default)]
        task: Option<String>,
        actor: String,
        #[serde(default)]
        expect: Outcome,
    },
    /// The accountable skips a task ([`Engine::skip`]).
    Skip {
        task: String,
        actor: String,
        #[serde(default)]
        reason: String,
        #[serde(default)]
        expect: Outcome,
    },
    /// Hands the case over to `to` ([`Engine::hand_over`]).
    HandOver {
        actor: String,
        to: String,
        #[serde(default)]
        expect: Outcome,
    },
    /// Moves the clock forward by a wall-time duration (`3h`, `1d`) and ticks.
    Advance(String),
    /// Moves the clock to an RFC 3339 instant and ticks.
    At(String),
    Expect {
        /// The names of the timers the last `advance` or `at` fired, in order.
        #[serde(default)]
        fired: Option<Vec<String>>,
        #[serde(default)]
        status: Option<Status>,
        #[serde(default)]
        open_tasks: Option<Vec<String>>,
        #[serde(default)]
        vars: Option<Vars>,
        /// Per node: how many times a task with `repeat` ran again (`Entry::Repeated`).
        #[serde(default)]
        repeated: Option<IndexMap<String, usize>>,
        /// Per node: how many multi-instance items completed (`Entry::ItemCompleted`).
        #[serde(default)]
        items: Option<IndexMap<String, usize>>,
        /// The persistent triggers the instance keeps, oldest first (`message NAME`, `signal
        /// NAME`: [`Instance::kept`](crate::Instance::kept)).
        #[serde(default)]
        kept: Option<Vec<String>>,
        /// Per sub-process node: how many times its scope completed (`Entry::ScopeCompleted`).
        #[serde(default)]
        scopes: Option<IndexMap<String, usize>>,
        /// Per open task node: who holds its claim (`~` for nobody).
        #[serde(default)]
        claimed: Option<IndexMap<String, Option<String>>>,
        /// A business key value (`{ customer_id: C-1 }`) to look up across the scenario's
        /// instances ([`Engine::find_by_key`]); `instances` says how many must hold it.
        #[serde(default)]
        key: Option<IndexMap<String, serde_json::Value>>,
        /// With `key`: how many instances hold the key value.
        #[serde(default)]
        instances: Option<usize>,
        /// The case owner ([`Instance::owner`](crate::Instance::owner)).
        #[serde(default)]
        owner: Option<String>,
        /// Per open task's node: its assignee (`assign:`).
        #[serde(default)]
        assignee: Option<IndexMap<String, String>>,
        /// Per open task's node: its deadline, as an RFC 3339 instant.
        #[serde(default)]
        due: Option<IndexMap<String, String>>,
    },
}

/// The expected outcome of a scenario step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    #[default]
    Ok,
    /// Refused by RACI (or claimed by someone else).
    Denied,
    /// A node or hook failed: an incident.
    Failed,
    /// Bad variables.
    Invalid,
    /// A hook vetoed.
    Vetoed,
    /// The task's milestones (`while_at`) are not held.
    NotEnabled,
    /// Another task of the task's mutex group is claimed.
    Interleaved,
    /// A send back to a node that is not among the task's `send_back` targets.
    NotSendBackTarget,
    /// The instance has ended (completed or cancelled), or the task is closed.
    Closed,
    /// A message refused: nothing waits for it, the process does not declare it, or the
    /// instance has ended.
    Refused,
    /// The task or the instance is suspended.
    Suspended,
    /// A lifecycle call that does not apply: the task is not claimed, delegated or suspended,
    /// is delegated already, or the process has no case owner rule.
    Inapplicable,
}

/// Where a correlated message went (a `correlate` step's `to`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Went {
    /// A waiting instance received it.
    Received,
    /// It started an instance.
    Started,
    /// It was kept engine-wide (`keep_for`).
    Kept,
    /// Nothing matched it.
    Unmatched,
}

impl Outcome {
    fn of(result: &Result<(), ExecError>) -> Result<Outcome, &ExecError> {
        match result {
            Ok(()) => Ok(Outcome::Ok),
            Err(
                ExecError::Denied { .. }
                | ExecError::AlreadyClaimed { .. }
                | ExecError::CancelDenied { .. }
                | ExecError::ReassignRefused { .. }
                | ExecError::LacksSkills { .. }
                | ExecError::Refused { .. },
            ) => Ok(Outcome::Denied),
            Err(ExecError::Suspended { .. } | ExecError::InstanceSuspended(_)) => {
                Ok(Outcome::Suspended)
            }
            Err(
                ExecError::NotSuspended { .. }
                | ExecError::NotClaimed { .. }
                | ExecError::Delegated { .. }
                | ExecError::NotDelegated { .. }
                | ExecError::NoOwnerRule(_),
            ) => Ok(Outcome::Inapplicable),
            Err(ExecError::Incident { .. } | ExecError::Hook { .. }) => Ok(Outcome::Failed),
            Err(ExecError::Variables { .. }) => Ok(Outcome::Invalid),
            Err(ExecError::Vetoed { .. }) => Ok(Outcome::Vetoed),
            Err(ExecError::NotEnabled { .. }) => Ok(Outcome::NotEnabled),
            Err(ExecError::Interleaved { .. }) => Ok(Outcome::Interleaved),
            Err(ExecError::NotSendBackTarget { .. }) => Ok(Outcome::NotSendBackTarget),
            Err(
                ExecError::InstanceCompleted(_)
                | ExecError::InstanceCancelled(_)
                | ExecError::TaskClosed { .. },
            ) => Ok(Outcome::Closed),
            Err(
                ExecError::NotWaiting { .. }
                | ExecError::UnknownMessage { .. }
                | ExecError::UndeclaredMessage { .. }
                | ExecError::MissingCorrelation { .. }
                | ExecError::AmbiguousMessage { .. },
            ) => Ok(Outcome::Refused),
            Err(other) => Err(other),
        }
    }
}

/// What a scenario run printed and whether it held.
#[derive(Debug, Default)]
pub struct SimReport {
    /// One JSON object per event, in order, each with the step number.
    pub events: Vec<String>,
    /// Every expectation that failed, with the step's location. Empty when the scenario held.
    pub failures: Vec<String>,
}

impl Scenario {
    /// Reads a scenario file.
    ///
    /// # Errors
    /// The file cannot be read or parsed; the problem has a location.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Scenario, LoadError> {
        let path = path.as_ref();
        let text = LoadError::read(path)?;
        Scenario::from_yaml(&text).map_err(|mut e| {
            e.file = Some(path.to_owned());
            e
        })
    }

    /// Parses a scenario.
    ///
    /// # Errors
    /// The problem, with a location.
    pub fn from_yaml(text: &str) -> Result<Scenario, LoadError> {
        let raw = parse_yaml::<RawScenario>(text).map_err(|p| LoadError::new(None, vec![p]))?;
        let problems = check_clock(&raw.steps);
        if !problems.is_empty() {
            return Err(LoadError::new(None, problems));
        }
        Ok(Scenario { raw })
    }

    /// The scenario's name.
    pub fn name(&self) -> &str {
        &self.raw.name
    }

    /// Runs the scenario on `def` with a manual clock, scripted service handlers and a hook that
    /// records every event.
    ///
    /// # Errors
    /// The definition does not deploy (a service task has no scripted result).
    pub fn run(&self, def: ProcessDef) -> Result<SimReport, DeployError> {
        self.run_with(def, Vec::new())
    }

    /// Runs the scenario with business calendars registered under their names.
    ///
    /// # Errors
    /// The definition does not deploy (a service task has no scripted result, a calendar is
    /// missing).
    pub fn run_with(
        &self,
        def: ProcessDef,
        calendars: Vec<(String, BusinessCalendar)>,
    ) -> Result<SimReport, DeployError> {
        self.run_all(vec![def], calendars)
    }

    /// Runs the scenario on several definitions that call each other (call activities): the
    /// first is the one the scenario starts; all are deployed together
    /// ([`Engine::deploy_all`]). A step naming a task finds it on the started instance or, when
    /// that has none open there, on the instances its calls started (depth first).
    ///
    /// # Errors
    /// A definition does not deploy (see [`Scenario::run_with`]); no definition is given.
    pub fn run_all(
        &self,
        defs: Vec<ProcessDef>,
        calendars: Vec<(String, BusinessCalendar)>,
    ) -> Result<SimReport, DeployError> {
        let Some(first) = defs.first() else {
            return Err(DeployError {
                key: crate::ids::DefKey::default(),
                problems: Vec::new(),
            });
        };
        let process = first.key().id.clone();
        let log: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
        let step_no = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut builder = Engine::builder();
        let clock = Arc::new(ManualClock::new(start()));
        builder.clock(Arc::clone(&clock));
        for (name, calendar) in calendars {
            builder.calendar(name, calendar);
        }
        {
            let (log, step_no) = (Arc::clone(&log), Arc::clone(&step_no));
            builder.hook(hook_fn(move |ev: &Event| {
                let mut line = serde_json::to_value(ev).unwrap_or_default();
                if let Some(obj) = line.as_object_mut() {
                    obj.insert(
                        "step".into(),
                        step_no.load(std::sync::atomic::Ordering::Relaxed).into(),
                    );
                }
                log.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(line.to_string());
            }));
        }
        for (name, results) in &self.raw.services {
            let queue = Mutex::new(results.iter().cloned().collect::<VecDeque<_>>());
            builder.handler(
                name.clone(),
                handler_fn(move |_| {
                    let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                    let next = if q.len() > 1 {
                        q.pop_front()
                    } else {
                        q.front().cloned()
                    };
                    match next {
                        Some(ServiceResult {
                            fail: Some(message),
                            ..
                        }) => Err(HandlerError::new(message)),
                        Some(ServiceResult { vars, .. }) => Ok(vars),
                        None => Ok(Vars::new()),
                    }
                }),
            );
        }
        // A handler the scenario does not script fails when called, so that the scenario can
        // leave out services its route never reaches.
        for name in defs
            .iter()
            .flat_map(|d| d.nodes().filter_map(|(_, n)| n.handler()))
        {
            if !self.raw.services.contains_key(name) {
                let message = format!("the scenario scripts no result for handler '{name}'");
                builder.handler(
                    name,
                    handler_fn(move |_| Err(HandlerError::new(message.clone()))),
                );
            }
        }
        if let Some(file) = &self.raw.organisation {
            let base = defs[0]
                .file()
                .and_then(Path::parent)
                .unwrap_or(Path::new("."));
            let org =
                crate::org::Organisation::from_file(base.join(file)).map_err(|e| DeployError {
                    key: defs[0].key().clone(),
                    problems: vec![crate::exec::DeployProblem::Organisation(e)],
                })?;
            builder.organisation(org);
        }
        let engine = builder.build();
        engine.deploy_all(defs)?;
        let mut report = SimReport::default();
        let mut instance: Option<InstanceId> = None;
        let mut fired = Vec::new();
        for (i, step) in self.raw.steps.iter().enumerate() {
            step_no.store(i + 1, std::sync::atomic::Ordering::Relaxed);
            let result = match &step.value {
                RawStep::Advance(by) => advance(&engine, &clock, by, None, &mut fired),
                RawStep::At(to) => advance(&engine, &clock, "", Some(to), &mut fired),
                other => self.step(&engine, &process, &mut instance, other, &fired),
            };
            if let Err(message) = result {
                report
                    .failures
                    .push(format!("{}: step {}: {message}", step.loc, i + 1));
                break;
            }
        }
        report.events = std::mem::take(&mut *log.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(report)
    }

    fn actor(&self, id: &str) -> Result<Actor, String> {
        let roles = match self.raw.actors.get(id) {
            Some(roles) => roles,
            // With an organisation, its people act with the roles it gives them.
            None if self.raw.organisation.is_some() => return Ok(Actor::new(id, [""; 0])),
            None => return Err(format!("unknown actor '{id}' (list it under actors)")),
        };
        Ok(Actor::new(id, roles.iter().cloned()))
    }

    fn task(engine: &Engine, instance: Option<InstanceId>, node: &str) -> Result<TaskId, String> {
        let instance = instance.ok_or("no instance started yet")?;
        let tasks = engine.tasks(instance).map_err(|e| e.to_string())?;
        tasks
            .iter()
            .find(|t| &*t.node_id == node)
            .map(|t| t.id)
            .or_else(|| called_task(engine, instance, node, 0))
            .or_else(|| keyed_task(engine, instance, node))
            .ok_or_else(|| {
                let open: Vec<&str> = tasks.iter().map(|t| &*t.node_id).collect();
                format!("no open task at '{node}' (open: [{}])", open.join(", "))
            })
    }

    /// The open task at `node` of multi-instance item `item`.
    fn item_task(
        engine: &Engine,
        instance: Option<InstanceId>,
        node: &str,
        item: u32,
    ) -> Result<TaskId, String> {
        let instance = instance.ok_or("no instance started yet")?;
        let tasks = engine.tasks(instance).map_err(|e| e.to_string())?;
        tasks
            .iter()
            .find(|t| &*t.node_id == node && t.item == Some(item))
            .map(|t| t.id)
            .ok_or_else(|| format!("no open task at '{node}' for item {item}"))
    }

    fn step(
        &self,
        engine: &Engine,
        process: &str,
        instance: &mut Option<InstanceId>,
        step: &RawStep,
        last_fired: &[String],
    ) -> Result<(), String> {
        let (result, expect) = match step {
            RawStep::Start { vars, expect } => {
                let r = engine.start(process, vars.clone());
                match &r {
                    Ok(id) => *instance = Some(*id),
                    // A start that failed at a node still made the instance.
                    Err(
                        ExecError::Incident { instance: id, .. }
                        | ExecError::Hook { instance: id, .. },
                    ) => {
                        *instance = Some(*id);
                    }
                    Err(_) => {}
                }
                (r.map(|_| ()), *expect)
            }
            RawStep::Claim {
                task,
                actor,
                expect,
            } => (
                engine.claim(Self::task(engine, *instance, task)?, &self.actor(actor)?),
                *expect,
            ),
            RawStep::Complete {
                task,
                actor,
                vars,
                item,
                expect,
            } => (
                engine.complete(
                    match item {
                        Some(item) => Self::item_task(engine, *instance, task, *item)?,
                        None => Self::task(engine, *instance, task)?,
                    },
                    &self.actor(actor)?,
                    vars.clone(),
                ),
                *expect,
            ),
            RawStep::Comment {
                task,
                actor,
                text,
                expect,
            } => (
                engine.comment(
                    Self::task(engine, *instance, task)?,
                    &self.actor(actor)?,
                    text,
                ),
                *expect,
            ),
            RawStep::Reassign {
                task,
                actor,
                to,
                expect,
            } => {
                let t = Self::task(engine, *instance, task)?;
                (
                    engine.reassign(t, &self.actor(actor)?, &self.actor(to)?),
                    *expect,
                )
            }
            RawStep::SendBack {
                task,
                actor,
                to,
                reason,
                expect,
            } => (
                engine.send_back(
                    Self::task(engine, *instance, task)?,
                    &self.actor(actor)?,
                    to,
                    reason,
                ),
                *expect,
            ),
            RawStep::Retry { expect } => (
                engine.retry(instance.ok_or("no instance started yet")?),
                *expect,
            ),
            RawStep::Cancel {
                actor,
                reason,
                expect,
            } => (
                engine.cancel(
                    instance.ok_or("no instance started yet")?,
                    &self.actor(actor)?,
                    reason,
                ),
                *expect,
            ),
            RawStep::Deliver {
                message,
                vars,
                expect,
            } => (
                engine.deliver(
                    instance.ok_or("no instance started yet")?,
                    message,
                    vars.clone(),
                ),
                *expect,
            ),
            RawStep::Signal {
                name,
                vars,
                woken,
                expect,
            } => {
                let r = engine.signal(name, vars.clone());
                if let (Ok(n), Some(want)) = (&r, woken)
                    && n != want
                {
                    return Err(format!("expected signal '{name}' to wake {want}, woke {n}"));
                }
                (r.map(|_| ()), *expect)
            }
            RawStep::Correlate {
                message,
                vars,
                to,
                expect,
            } => {
                let r = engine.correlate(message, vars.clone());
                if let Ok(c) = &r {
                    if instance.is_none()
                        && let Some(id) = c.started.first()
                    {
                        *instance = Some(*id);
                    }
                    let went = if !c.received.is_empty() {
                        Went::Received
                    } else if !c.started.is_empty() {
                        Went::Started
                    } else if c.kept {
                        Went::Kept
                    } else {
                        Went::Unmatched
                    };
                    if let Some(want) = to
                        && *want != went
                    {
                        return Err(format!(
                            "expected message '{message}' to be {want:?}, it was {went:?}"
                        )
                        .to_lowercase());
                    }
                }
                (r.map(|_| ()), *expect)
            }
            RawStep::AddItems {
                node,
                items,
                expect,
            } => (
                engine.add_items(
                    instance.ok_or("no instance started yet")?,
                    node,
                    items.clone(),
                ),
                *expect,
            ),
            RawStep::Release {
                task,
                actor,
                expect,
            } => (
                engine.release(Self::task(engine, *instance, task)?, &self.actor(actor)?),
                *expect,
            ),
            RawStep::Delegate {
                task,
                actor,
                to,
                expect,
            } => (
                engine.delegate(
                    Self::task(engine, *instance, task)?,
                    &self.actor(actor)?,
                    &self.actor(to)?,
                ),
                *expect,
            ),
            RawStep::Return {
                task,
                actor,
                expect,
            } => (
                engine.return_task(Self::task(engine, *instance, task)?, &self.actor(actor)?),
                *expect,
            ),
            RawStep::Suspend {
                task,
                actor,
                expect,
            }
            | RawStep::Resume {
                task,
                actor,
                expect,
            } => {
                let what: crate::exec::WorkItem = match task {
                    Some(t) => Self::task(engine, *instance, t)?.into(),
                    None => instance.ok_or("no instance started yet")?.into(),
                };
                let actor = self.actor(actor)?;
                let r = if matches!(step, RawStep::Suspend { .. }) {
                    engine.suspend(what, &actor)
                } else {
                    engine.resume(what, &actor)
                };
                (r, *expect)
            }
            RawStep::Skip {
                task,
                actor,
                reason,
                expect,
            } => (
                engine.skip(
                    Self::task(engine, *instance, task)?,
                    &self.actor(actor)?,
                    reason,
                ),
                *expect,
            ),
            RawStep::HandOver { actor, to, expect } => (
                engine.hand_over(
                    instance.ok_or("no instance started yet")?,
                    &self.actor(actor)?,
                    &self.actor(to)?,
                ),
                *expect,
            ),
            RawStep::Advance(_) | RawStep::At(_) => return Ok(()),
            RawStep::Expect {
                fired,
                status,
                open_tasks,
                vars,
                repeated,
                items,
                kept,
                scopes,
                claimed,
                key,
                instances,
                owner,
                assignee,
                due,
            } => {
                check_key(engine, key.as_ref(), *instances)?;
                if let Some(want) = fired
                    && want[..] != *last_fired
                {
                    return Err(format!(
                        "expected timers {want:?} to fire, fired {last_fired:?}"
                    ));
                }
                let id = instance.ok_or("no instance started yet")?;
                let inst = engine.instance(id).map_err(|e| e.to_string())?;
                let def = engine.definition_of(id).map_err(|e| e.to_string())?;
                for (what, want) in [("repeated", repeated), ("items", items), ("scopes", scopes)] {
                    for (node, count) in want.iter().flatten() {
                        let at = def
                            .node_id(node)
                            .ok_or_else(|| format!("{what}: no node '{node}'"))?;
                        let found = inst
                            .audit()
                            .iter()
                            .filter(|r| match &r.what {
                                Entry::Repeated { node, .. } if what == "repeated" => *node == at,
                                Entry::ItemCompleted { node, .. } if what == "items" => *node == at,
                                Entry::ScopeCompleted { node } if what == "scopes" => *node == at,
                                _ => false,
                            })
                            .count();
                        if found != *count {
                            return Err(format!(
                                "expected {what} {count} at '{node}', found {found}"
                            ));
                        }
                    }
                }
                if let Some(s) = status
                    && inst.status() != *s
                {
                    return Err(format!("expected status {s:?}, found {:?}", inst.status()));
                }
                if let Some(expected) = open_tasks {
                    let mut open: Vec<String> = engine
                        .tasks(id)
                        .map_err(|e| e.to_string())?
                        .into_iter()
                        .map(|t| t.node_id.to_string())
                        .collect();
                    let mut want = expected.clone();
                    open.sort();
                    want.sort();
                    if open != want {
                        return Err(format!("expected open tasks {want:?}, found {open:?}"));
                    }
                }
                if let Some(want) = claimed {
                    let tasks = engine.tasks(id).map_err(|e| e.to_string())?;
                    for (node, who) in want {
                        let t = tasks
                            .iter()
                            .find(|t| &*t.node_id == node.as_str())
                            .ok_or_else(|| format!("claimed: no open task at '{node}'"))?;
                        let found = t.claimed_by.as_ref().map(|a| a.as_str().to_owned());
                        if found != *who {
                            return Err(format!(
                                "expected '{node}' claimed by {who:?}, found {found:?}"
                            ));
                        }
                    }
                }
                if let Some(want) = kept {
                    let found: Vec<String> = inst.kept().collect();
                    if found != *want {
                        return Err(format!("expected kept triggers {want:?}, found {found:?}"));
                    }
                }
                if let Some(want) = owner {
                    let found = inst.owner().map(|o| o.as_str());
                    if found != Some(want.as_str()) {
                        return Err(format!("expected case owner {want}, found {found:?}"));
                    }
                }
                if assignee.is_some() || due.is_some() {
                    let views = engine.tasks(id).map_err(|e| e.to_string())?;
                    let view = |node: &str| {
                        views
                            .iter()
                            .find(|t| &*t.node_id == node)
                            .ok_or_else(|| format!("no open task at '{node}'"))
                    };
                    for (node, want) in assignee.iter().flatten() {
                        let found = view(node)?.assignee.as_ref().map(|a| a.to_string());
                        if found.as_deref() != Some(want.as_str()) {
                            return Err(format!(
                                "expected '{node}' assigned to {want}, found {found:?}"
                            ));
                        }
                    }
                    for (node, want) in due.iter().flatten() {
                        let want_at = instant(want)?;
                        let found = view(node)?.due;
                        if found != Some(want_at) {
                            return Err(format!(
                                "expected '{node}' due {want}, found {:?}",
                                found.map(|f| f.to_rfc3339())
                            ));
                        }
                    }
                }
                for (k, v) in vars.iter().flatten() {
                    if inst.vars().get(k) != Some(v) {
                        return Err(format!(
                            "expected variable '{k}' = {v}, found {:?}",
                            inst.vars().get(k)
                        ));
                    }
                }
                return Ok(());
            }
        };
        match Outcome::of(&result) {
            Ok(got) if got == expect => Ok(()),
            Ok(got) => Err(format!(
                "expected {expect:?}, got {got:?}{}",
                result.err().map(|e| format!(": {e}")).unwrap_or_default()
            )),
            Err(e) => Err(format!("expected {expect:?}, got error: {e}")),
        }
    }
}

/// Checks an `expect` step's `key` and `instances`: how many instances hold each key value.
fn check_key(
    engine: &Engine,
    key: Option<&IndexMap<String, serde_json::Value>>,
    instances: Option<usize>,
) -> Result<(), String> {
    let Some(key) = key else {
        return match instances {
            Some(_) => Err("'instances' needs 'key': the key value to count".into()),
            None => Ok(()),
        };
    };
    for (name, value) in key {
        let value = crate::exec::KeyValue::from_json(value)
            .ok_or_else(|| format!("key '{name}': {value} is not a string or an integer"))?;
        let found = engine
            .find_by_key(name, value.clone())
            .map_err(|e| e.to_string())?;
        if let Some(want) = instances
            && found.len() != want
        {
            return Err(format!(
                "expected {want} instance(s) with {name} = {value}, found {}",
                found.len()
            ));
        }
    }
    Ok(())
}

/// Where a scenario's clock starts.
fn start() -> DateTime<Utc> {
    DateTime::<Utc>::from_naive_utc_and_offset(
        chrono::NaiveDate::from_ymd_opt(2026, 1, 5)
            .and_then(|d| d.and_hms_opt(9, 0, 0))
            .unwrap_or_default(),
        Utc,
    )
}

/// Checks the clock steps (`advance`, `at`) before a scenario runs: each must parse and keep the
/// clock within the range `chrono` can hold, moving forward. Every problem is located at its step.
fn check_clock(steps: &[At<RawStep>]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut now = start();
    for (i, step) in steps.iter().enumerate() {
        let result = match &step.value {
            RawStep::Advance(by) => advance_by(by).and_then(|d| {
                now.checked_add_signed(d).ok_or_else(|| {
                    format!(
                        "advance '{by}' moves the clock past the last instant it can hold ({})",
                        DateTime::<Utc>::MAX_UTC.to_rfc3339()
                    )
                })
            }),
            RawStep::At(to) => instant(to).and_then(|at| {
                if at < now {
                    Err(format!("'{to}' is before the clock ({})", now.to_rfc3339()))
                } else {
                    Ok(at)
                }
            }),
            _ => continue,
        };
        match result {
            Ok(at) => now = at,
            Err(message) => problems.push(Problem {
                location: Some(step.loc),
                path: format!("steps[{i}]"),
                kind: ProblemKind::BadStep(message),
            }),
        }
    }
    problems
}

/// The wall duration of an `advance` step.
fn advance_by(by: &str) -> Result<chrono::Duration, String> {
    match DurationSpec::parse(by).map_err(|e| e.to_string())? {
        DurationSpec::Wall(d) if d >= chrono::Duration::zero() => Ok(d),
        _ => Err(format!(
            "advance takes a wall-time duration such as '3h', not '{by}'"
        )),
    }
}

/// The instant of an `at` step.
fn instant(to: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(to)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|e| format!("'{to}' is not an RFC 3339 instant: {e}"))
}

/// Moves the clock (by a wall duration, or to an instant) and ticks; `fired` gets the names of
/// what fired.
fn advance(
    engine: &Engine,
    clock: &ManualClock,
    by: &str,
    to: Option<&str>,
    fired: &mut Vec<String>,
) -> Result<(), String> {
    match to {
        Some(to) => {
            let at = instant(to)?;
            if at < clock.now() {
                return Err(format!(
                    "'{to}' is before the clock ({})",
                    clock.now().to_rfc3339()
                ));
            }
            clock.set(at);
        }
        None => {
            clock
                .checked_advance(advance_by(by)?)
                .ok_or_else(|| format!("advance '{by}' moves the clock out of range"))?;
        }
    }
    *fired = engine.tick(clock.now()).iter().map(|f| f.name()).collect();
    Ok(())
}

/// The open task at `node` of an instance that `instance`'s call activities started, depth
/// first (a scenario drives a child's tasks by their node ids).
fn called_task(engine: &Engine, instance: InstanceId, node: &str, depth: u32) -> Option<TaskId> {
    if depth > crate::def::call::MAX_DEPTH {
        return None;
    }
    for child in engine.children(instance).ok()? {
        let tasks = engine.tasks(child).ok()?;
        if let Some(t) = tasks.iter().find(|t| &*t.node_id == node) {
            return Some(t.id);
        }
        if let Some(t) = called_task(engine, child, node, depth + 1) {
            return Some(t);
        }
    }
    None
}

/// The open task at `node` of another running instance that shares a business key with
/// `instance` (one a message from it started, e.g. 3.8 started by 3.7's complaint, flow #41):
/// scenarios across processes find tasks there when the started instance and its calls have none.
fn keyed_task(engine: &Engine, instance: InstanceId, node: &str) -> Option<TaskId> {
    let started = engine.instance(instance).ok()?;
    for (name, value) in &started.vars {
        let Some(text) = value.as_str() else {
            continue;
        };
        let Ok(found) = engine.find_by_key(name, text) else {
            continue;
        };
        for other in found {
            if other.id == instance || other.status != crate::model::Status::Running {
                continue;
            }
            if let Some(t) = engine
                .tasks(other.id)
                .ok()
                .and_then(|tasks| tasks.iter().find(|t| &*t.node_id == node).map(|t| t.id))
            {
                return Some(t);
            }
        }
    }
    None
}
