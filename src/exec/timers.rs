//! Timers: deadlines, reminders, escalation ladders, urges, timeouts, timer nodes and the SLA.
//!
//! **Invariant:** an instance's `timers` list is the truth; the engine's per-shard heaps only say
//! when to look. A timer fires when `tick` finds it in the list at its instant, and firing removes
//! it (a fired deadline stays, marked, so that SLA queries still know it), so each fires once,
//! and a cancelled one (its task or instance ended) cannot fire.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::step::{Change, Step};
use super::{Deployed, Engine, ExecError, Slot, TokenState};
use crate::def::timers::{Ladder, Limits, RemindAt, Span, TimerWait};
use crate::ids::{InstanceId, NodeId, RoleId, TaskId};
use crate::model::{Fired, Timer, TimerKind};
use crate::time::calendar::BusinessCalendar;
use crate::time::calendar::Computed;
use crate::time::duration::DurationSpec;

/// How a task or an instance stands against its deadline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Sla {
    /// The deadline.
    pub due: DateTime<Utc>,
    /// Time used so far (business time when the deadline is in business time).
    pub elapsed: Duration,
    /// Time left (negative once breached).
    pub remaining: Duration,
    /// On track, at risk (a quarter or less of the time left), or breached.
    pub status: SlaStatus,
}

/// See [`Sla`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlaStatus {
    /// More than a quarter of the time is left.
    OnTrack,
    /// A quarter or less of the time is left.
    AtRisk,
    /// The deadline has passed.
    Breached,
}

/// Why an instant could not be computed: an incident message.
fn when(
    computed: Result<Computed<DateTime<Utc>>, crate::time::calendar::CalendarError>,
) -> Result<(DateTime<Utc>, Vec<String>), String> {
    computed
        .map(|c| {
            (
                c.value,
                c.warnings.iter().map(ToString::to_string).collect(),
            )
        })
        .map_err(|e| format!("cannot compute a deadline: {e}"))
}

/// A resolved duration and the calendar it counts on.
type Resolved<'c> = (DurationSpec, Option<&'c BusinessCalendar>);

/// The calendar a duration counts on: its own, or the process's.
fn calendar_of<'c>(dep: &'c Deployed, span: &Span) -> Option<&'c BusinessCalendar> {
    match span.calendar() {
        Some(name) => dep.calendars.get(name).map(|c| &**c),
        None => dep.calendar.as_deref(),
    }
}

impl<'a> Step<'a> {
    /// `spec` after `from`; calendar warnings are collected in `warnings`.
    fn after(
        &self,
        (spec, calendar): Resolved<'_>,
        from: DateTime<Utc>,
        warnings: &mut Vec<String>,
    ) -> Result<DateTime<Utc>, String> {
        let (at, w) = when(spec.after(from, calendar))?;
        warnings.extend(w);
        Ok(at)
    }

    fn warn(&mut self, warnings: Vec<String>) {
        for w in warnings {
            self.apply(Change::Warn { message: &w });
        }
    }

    /// Arms the timers of `limits`, counted from now: a task's (`task: Some`) or the SLA's.
    fn arm_limits(
        &mut self,
        limits: &Limits,
        task: Option<u32>,
        node: NodeId,
    ) -> Result<(), String> {
        let dep: &'a Deployed = self.dep;
        let def = &*dep.def;
        let vars = &self.inst.vars;
        let sla = task.is_none();
        let resolve = |span: &Span| {
            span.resolve(&def.cel, vars)
                .map(|d| (d, calendar_of(dep, span)))
        };
        let now = self.now;
        let mut timers = Vec::new();
        let mut warnings = Vec::new();
        let due_spec = limits.due.as_ref().map(resolve).transpose()?;
        let due = match due_spec {
            Some(r) => Some((self.after(r, now, &mut warnings)?, r)),
            None => None,
        };
        let timer = |at, kind, business| Timer {
            at,
            kind,
            task,
            node,
            sla,
            business,
            fired: false,
        };
        if let Some((at, (spec, _))) = due {
            timers.push(timer(at, TimerKind::Due, spec.is_business()));
        }
        if let Some(span) = &limits.claim_due {
            let r = resolve(span)?;
            timers.push(timer(
                self.after(r, now, &mut warnings)?,
                TimerKind::ClaimDue,
                r.0.is_business(),
            ));
        }
        if let Some(span) = &limits.timeout {
            let r = resolve(span)?;
            timers.push(timer(
                self.after(r, now, &mut warnings)?,
                TimerKind::Timeout,
                r.0.is_business(),
            ));
        }
        for (index, remind) in limits.remind.iter().enumerate() {
            let at = match &remind.at {
                RemindAt::AfterStart(span) => self.after(resolve(span)?, now, &mut warnings)?,
                RemindAt::BeforeDue(span) => {
                    let (before, _) = resolve(span)?;
                    let Some((_, (due_spec, due_calendar))) = due else {
                        continue;
                    };
                    // The reminder is the due's amount less `before`, counted the same way.
                    let lead = (due_spec.amount() - before.amount()).max(Duration::zero());
                    let spec = match (due_spec, before) {
                        (DurationSpec::Business(_), DurationSpec::Business(_)) => {
                            DurationSpec::Business(
                                crate::time::duration::BusinessDuration::new(lead)
                                    .unwrap_or(crate::time::duration::BusinessDuration::ZERO),
                            )
                        }
                        (DurationSpec::Wall(_), DurationSpec::Wall(_)) => DurationSpec::Wall(lead),
                        _ => return Err("'before' and 'due' mix business and wall time".into()),
                    };
                    // Counted on the deadline's calendar, as the deadline is.
                    self.after((spec, due_calendar), now, &mut warnings)?
                }
            };
            timers.push(timer(at, TimerKind::Reminder { index: index as u8 }, false));
        }
        if let Some((due_at, _)) = due {
            for (level, esc) in limits.escalate.iter().enumerate() {
                let at = self.after(resolve(&esc.after)?, due_at, &mut warnings)?;
                let kind = match esc.action {
                    Ladder::Urge { .. } => TimerKind::Urge {
                        level: level as u8,
                        count: 1,
                    },
                    _ => TimerKind::Escalation { level: level as u8 },
                };
                timers.push(timer(at, kind, false));
            }
        }
        self.warn(warnings);
        // Timers due at the same instant fire in list order: reminders, then the claim and
        // completion deadlines, then escalations, and the interrupting timeout last.
        timers.sort_by_key(|t| match t.kind {
            TimerKind::Reminder { .. } => 0,
            TimerKind::ClaimDue => 1,
            TimerKind::Due => 2,
            TimerKind::Escalation { .. } | TimerKind::Urge { .. } => 3,
            TimerKind::Timeout | TimerKind::Wait => 4,
        });
        for t in timers {
            self.apply(Change::Arm(t));
        }
        Ok(())
    }

    /// Arms a new task's timers. A deadline that cannot be computed is an incident.
    pub(crate) fn arm_task(&mut self, seq: u32) {
        let node = self.inst.tasks[seq as usize].node;
        let dep: &'a Deployed = self.dep;
        let def = &*dep.def;
        if let Some(limits) = &def.nodes[node.index()].limits
            && let Err(message) = self.arm_limits(limits, Some(seq), node)
        {
            self.apply(Change::Fail {
                token: None,
                node: Some(node),
                message: &message,
            });
        }
    }

    /// Arms the process-wide SLA at start.
    pub(crate) fn arm_sla(&mut self) {
        let dep: &'a Deployed = self.dep;
        let def = &*dep.def;
        if let Some(limits) = &def.sla
            && let Err(message) = self.arm_limits(limits, None, def.start)
        {
            self.apply(Change::Fail {
                token: None,
                node: None,
                message: &message,
            });
        }
    }

    /// The instant a timer node waits for.
    pub(crate) fn wait_until(&mut self, wait: &TimerWait) -> Result<DateTime<Utc>, String> {
        match wait {
            TimerWait::For(span) => {
                let spec = span.resolve(&self.dep.def.cel, &self.inst.vars)?;
                let mut warnings = Vec::new();
                let at =
                    self.after((spec, calendar_of(self.dep, span)), self.now, &mut warnings)?;
                self.warn(warnings);
                Ok(at)
            }
            TimerWait::Until(var) => {
                let text = self
                    .inst
                    .vars
                    .get(var)
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| format!("variable '{var}' holds no instant"))?;
                DateTime::parse_from_rfc3339(text)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| {
                        format!("variable '{var}' = '{text}' is not an RFC 3339 instant: {e}")
                    })
            }
        }
    }

    /// Fires every armed timer due exactly at `at`, in list order, then runs the instance on.
    pub(crate) fn fire_at(
        &mut self,
        at: DateTime<Utc>,
        fired: &mut Vec<Fired>,
    ) -> Result<(), ExecError> {
        while let Some(i) = self.inst.timers.iter().position(|t| t.at == at && !t.fired) {
            let timer = self.inst.timers[i].clone();
            let recipients = self.recipients(&timer);
            fired.push(Fired {
                instance: self.inst.id,
                task: timer.task.map(|seq| TaskId {
                    instance: self.inst.id,
                    seq,
                }),
                kind: timer.kind,
                sla: timer.sla,
                due: timer.at,
                recipients: recipients.clone(),
            });
            self.apply(Change::Fire {
                index: i,
                recipients: &recipients,
            });
            let dep: &'a Deployed = self.dep;
            let def = &*dep.def;
            let node = &def.nodes[timer.node.index()];
            match timer.kind {
                TimerKind::Timeout => {
                    let token = self
                        .inst
                        .tokens
                        .iter()
                        .position(|t| t.node == timer.node && t.state == TokenState::Ready);
                    if let (Some(token), Some(&to)) = (token, node.next.get(1)) {
                        self.apply(Change::Flow {
                            token: Some(token),
                            from: timer.node,
                            to,
                            actor: None,
                        });
                    }
                }
                TimerKind::Wait => {
                    let token = self
                        .inst
                        .tokens
                        .iter()
                        .position(|t| t.node == timer.node && t.state == TokenState::Ready);
                    if let Some(token) = token {
                        self.apply(Change::Flow {
                            token: Some(token),
                            from: timer.node,
                            to: node.next[0],
                            actor: None,
                        });
                    }
                }
                TimerKind::Urge { level, count } => {
                    let limits = if timer.sla {
                        def.sla.as_deref()
                    } else {
                        node.limits.as_deref()
                    };
                    if let Some(Ladder::Urge { every, max }) = limits
                        .and_then(|l| l.escalate.get(level as usize))
                        .map(|e| &e.action)
                        && count < *max
                    {
                        let next = every.resolve(&def.cel, &self.inst.vars).map_err(|m| {
                            ExecError::Incident {
                                instance: self.inst.id,
                                node: node.id.clone(),
                                message: m,
                            }
                        })?;
                        let mut warnings = Vec::new();
                        let at =
                            self.after((next, calendar_of(dep, every)), timer.at, &mut warnings);
                        self.warn(warnings);
                        match at {
                            Ok(at) => self.apply(Change::Arm(Timer {
                                at,
                                kind: TimerKind::Urge {
                                    level,
                                    count: count + 1,
                                },
                                ..timer
                            })),
                            Err(message) => self.apply(Change::Fail {
                                token: None,
                                node: Some(timer.node),
                                message: &message,
                            }),
                        }
                    }
                }
                _ => {}
            }
        }
        self.run()
    }

    /// The roles a firing timer tells.
    fn recipients(&self, timer: &Timer) -> Vec<RoleId> {
        let def = &self.dep.def;
        let node = &def.nodes[timer.node.index()];
        let limits = if timer.sla {
            def.sla.as_deref()
        } else {
            node.limits.as_deref()
        };
        let Some(limits) = limits else {
            return Vec::new();
        };
        match timer.kind {
            TimerKind::ClaimDue | TimerKind::Timeout => vec![limits.accountable.clone()],
            TimerKind::Reminder { index } => limits
                .remind
                .get(index as usize)
                .map(|r| r.to.clone())
                .unwrap_or_default(),
            TimerKind::Due => limits.informed.clone(),
            TimerKind::Escalation { level } | TimerKind::Urge { level, .. } => limits
                .escalate
                .get(level as usize)
                .map(|e| vec![e.to.clone()])
                .unwrap_or_default(),
            TimerKind::Wait => Vec::new(),
        }
    }
}

/// What an escalation level does, for the audit trail and hooks.
pub(crate) fn reassign_target(def: &crate::ProcessDef, timer: &Timer) -> Option<RoleId> {
    let limits = def.nodes[timer.node.index()].limits.as_deref()?;
    match timer.kind {
        TimerKind::Escalation { level } if !timer.sla => {
            let esc = limits.escalate.get(level as usize)?;
            matches!(esc.action, Ladder::Reassign).then(|| esc.to.clone())
        }
        _ => None,
    }
}

impl Engine {
    /// Now, by the engine's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Fires every timer due at or before `now`, in deadline order (ties: instance order, then
    /// the order they were armed), each exactly once, and returns what fired. A timer is never
    /// fired early; a late call fires each missed timer once, in order. What a timer causes is
    /// stamped with the timer's instant (a task its timeout opens is created then), so a timer
    /// armed while firing (an urge's next repeat, a new task's deadline) fires in the same call
    /// if it is due, and one late call gives the same result as many timely ones.
    ///
    /// A node that fails while a timer runs the instance on records an incident; `tick` goes on
    /// with the other timers.
    pub fn tick(&self, now: DateTime<Utc>) -> Vec<Fired> {
        let _one_at_a_time = super::lock(&self.ticking);
        self.adopt_due(now);
        let mut due = std::collections::BinaryHeap::new();
        for heap in &*self.timer_heaps {
            let mut heap = super::lock(heap);
            while heap
                .peek()
                .is_some_and(|std::cmp::Reverse((at, _))| *at <= now)
            {
                due.extend(heap.pop());
            }
        }
        let mut fired = Vec::new();
        while let Some(std::cmp::Reverse((at, id))) = due.pop() {
            let fired_before = fired.len();
            let stepped = self.with_slot(InstanceId(id), |slot: &mut Slot| {
                let Slot { inst, dep, version } = slot;
                // What a timer causes happens at the timer's instant, not the tick's: a task its
                // timeout route opens is created then, and its own deadlines count from then. So
                // a late tick gives the same result as timely ones.
                self.step_slot(inst, dep, version, at, |step| step.fire_at(at, &mut fired))
            });
            let armed = match stepped {
                Ok(Ok(stepped)) => stepped.armed,
                // The store refused: nothing fired. The timer stays armed, so it goes back on
                // the schedule for the next tick (after a conflict, the instance read again
                // from the store was scheduled as it stands).
                Ok(Err(_)) => {
                    fired.truncate(fired_before);
                    self.schedule(InstanceId(id), at);
                    continue;
                }
                Err(_) => continue,
            };
            for at in armed {
                if at <= now {
                    due.push(std::cmp::Reverse((at, id)));
                } else {
                    self.schedule(InstanceId(id), at);
                }
            }
        }
        fired
    }

    /// With a store: reads the instances with timers due by `now` that this engine does not
    /// hold, or holds at an older version than the store (another engine sharing the store
    /// changed them), so that `tick` fires what is due whichever engine ran the instance. Each
    /// timer still fires once: an engine that fires from a stale copy gets a conflict.
    fn adopt_due(&self, now: DateTime<Utc>) {
        let Some(store) = &self.store else {
            return;
        };
        // A store that cannot be read now is asked again at the next tick; the timers this
        // engine holds fire meanwhile.
        let Ok(due) = store.due(now) else {
            return;
        };
        for (id, version) in due {
            if super::is_held(id) {
                continue;
            }
            let held = super::lock(self.shard(id)).get(&id.0).cloned();
            let stale = held.is_none_or(|slot| super::lock(&slot).version < version);
            if stale && let Ok(Some(stored)) = store.read(id) {
                let _ = self.adopt(stored);
            }
        }
    }

    /// When the earliest armed timer is due, if any. (It may belong to a task that has since
    /// ended; `tick` then finds nothing to fire.)
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.timer_heaps
            .iter()
            .filter_map(|h| super::lock(h).peek().map(|std::cmp::Reverse((at, _))| *at))
            .min()
    }

    /// How an open task stands against its deadline; `None` when it has none.
    ///
    /// # Errors
    /// [`ExecError::UnknownInstance`], [`ExecError::UnknownTask`].
    pub fn sla_of_task(&self, task: TaskId) -> Result<Option<Sla>, ExecError> {
        let now = self.clock.now();
        self.with_slot(task.instance, |slot| {
            let t = slot
                .inst
                .tasks
                .get(task.seq as usize)
                .ok_or(ExecError::UnknownTask(task))?;
            let timer = slot
                .inst
                .timers
                .iter()
                .find(|x| x.task == Some(task.seq) && x.kind == TimerKind::Due);
            Ok(timer.map(|d| sla(slot, d, t.created_at, now)))
        })?
    }

    /// How an instance stands against its process-wide SLA; `None` when it has none.
    ///
    /// # Errors
    /// [`ExecError::UnknownInstance`].
    pub fn sla_of_instance(&self, id: InstanceId) -> Result<Option<Sla>, ExecError> {
        let now = self.clock.now();
        self.with_slot(id, |slot| {
            let timer = slot
                .inst
                .timers
                .iter()
                .find(|x| x.sla && x.kind == TimerKind::Due);
            timer.map(|d| sla(slot, d, slot.inst.started_at, now))
        })
    }
}

fn sla(slot: &Slot, due: &Timer, from: DateTime<Utc>, now: DateTime<Utc>) -> Sla {
    let calendar = slot.dep.calendar.as_deref().filter(|_| due.business);
    let span = |a: DateTime<Utc>, b: DateTime<Utc>| match calendar {
        Some(c) => c
            .business_time_between(a, b)
            .map(|d| d.value.as_duration())
            .unwrap_or_else(|_| b - a),
        None => b - a,
    };
    let elapsed = span(from, now.max(from));
    let remaining = if now <= due.at {
        span(now, due.at)
    } else {
        -span(due.at, now)
    };
    let total = elapsed + remaining;
    let status = if now >= due.at {
        SlaStatus::Breached
    } else if remaining * 4 <= total {
        SlaStatus::AtRisk
    } else {
        SlaStatus::OnTrack
    };
    Sla {
        due: due.at,
        elapsed,
        remaining,
        status,
    }
}

/// A thread that fires an engine's timers: it sleeps until the next timer is due (at most
/// `poll`, so that timers armed meanwhile are not missed by more than that), then ticks with the
/// engine's clock. Dropping it stops the thread.
///
/// # Examples
/// ```
/// # use std::sync::Arc;
/// let engine = Arc::new(procflow::Engine::new());
/// let driver = procflow::TimerDriver::spawn(Arc::clone(&engine), std::time::Duration::from_millis(200));
/// drop(driver); // stops and joins the thread
/// ```
pub struct TimerDriver {
    stop: Arc<(Mutex<bool>, Condvar)>,
    running: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TimerDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimerDriver")
            .field("running", &self.running.load(Ordering::Relaxed))
            .finish()
    }
}

impl TimerDriver {
    /// Starts the thread.
    pub fn spawn(engine: Arc<Engine>, poll: StdDuration) -> TimerDriver {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let running = Arc::new(AtomicBool::new(true));
        let thread = {
            let (stop, running) = (Arc::clone(&stop), Arc::clone(&running));
            std::thread::spawn(move || {
                let (flag, wake) = &*stop;
                loop {
                    let now = engine.now();
                    let wait = engine
                        .next_due()
                        .map(|at| (at - now).to_std().unwrap_or(StdDuration::ZERO))
                        .unwrap_or(poll)
                        .min(poll);
                    let stopped = super::lock(flag);
                    let (stopped, _) = wake
                        .wait_timeout(stopped, wait)
                        .unwrap_or_else(|e| e.into_inner());
                    if *stopped {
                        break;
                    }
                    drop(stopped);
                    engine.tick(engine.now());
                }
                running.store(false, Ordering::Relaxed);
            })
        };
        TimerDriver {
            stop,
            running,
            thread: Some(thread),
        }
    }
}

impl Drop for TimerDriver {
    fn drop(&mut self) {
        *super::lock(&self.stop.0) = true;
        self.stop.1.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
