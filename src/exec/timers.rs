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
use smallvec::SmallVec;

use super::deploy::Deployed;
use super::seam::{Slot, Stepped};
use super::step::{Change, Step};
use super::{Engine, ExecError};
use crate::def::timers::{Ladder, Limits, RemindAt, Span, TimerWait};
use crate::ids::{InstanceId, NodeId, RoleId, TaskId};
use crate::model::{Fired, Timer, TimerKind, TokenState};
use crate::time::calendar::{BusinessCalendar, Warnings};
use crate::time::duration::DurationSpec;

/// How long a claim on an instance's due timers lasts ([`crate::Store::claim_due`]): an engine
/// that died holding one leaves its timers to the others after this.
const CLAIM_LEASE: StdDuration = StdDuration::from_secs(30);

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
    /// Whether the deadline counts days its business calendar only knows by the statutory rule
    /// (no State Council notice for the year yet): it may move when the calendar is updated
    /// ([`Engine::update_calendar`]).
    pub provisional: bool,
}

/// See [`Sla`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SlaStatus {
    /// More than a quarter of the time is left.
    OnTrack,
    /// A quarter or less of the time is left.
    AtRisk,
    /// The deadline has passed.
    Breached,
}

/// `spec` after `from` on `calendar`: the instant and whether it is provisional, with the
/// calendar's other warnings (rare) added to `warnings` as text; or why it could not be
/// computed. Provisional days mark the timer (and the audit trail, when it is armed) instead of
/// a warning. Allocates nothing on the way (a provisional result included).
pub(super) fn when(
    spec: &DurationSpec,
    from: DateTime<Utc>,
    calendar: Option<&BusinessCalendar>,
    warnings: &mut Vec<String>,
) -> Result<(DateTime<Utc>, bool), String> {
    let mut noted = Warnings::default();
    let at = spec
        .after_noting(from, calendar, &mut noted)
        .map_err(|e| e.to_string())?;
    let provisional = match calendar {
        Some(cal) if !noted.is_empty() => {
            if noted.is_provisional(cal) {
                true
            } else {
                warnings.extend(noted.finish(cal).iter().map(ToString::to_string));
                false
            }
        }
        _ => false,
    };
    Ok((at, provisional))
}

/// Timers computed for arming, and the calendar warnings their computation gave.
#[derive(Default)]
pub(crate) struct Armed {
    /// In firing order for timers due at the same instant (kept inline: a task arms a few).
    pub(super) timers: SmallVec<[Timer; 8]>,
    pub(super) warnings: Vec<String>,
}

/// A resolved duration and the calendar it counts on.
type Resolved<'c> = (DurationSpec, Option<&'c BusinessCalendar>);

/// The calendar a duration counts on: its own, or the process's.
pub(super) fn calendar_of<'c>(dep: &'c Deployed, span: &Span) -> Option<&'c BusinessCalendar> {
    match span.calendar() {
        Some(name) => dep.calendars.get(name).map(|c| &**c),
        None => dep.calendar.as_deref(),
    }
}

impl<'a> Step<'a> {
    /// `spec` after `from`, and whether that is provisional; calendar warnings are collected in
    /// `warnings`.
    fn after(
        &self,
        (spec, calendar): Resolved<'_>,
        from: DateTime<Utc>,
        warnings: &mut Vec<String>,
    ) -> Result<(DateTime<Utc>, bool), String> {
        when(&spec, from, calendar, warnings)
    }

    fn warn(&mut self, warnings: Vec<String>) {
        for w in warnings {
            self.apply(Change::Warn { message: &w });
        }
    }

    /// The timers of `limits`, counted from `from`: a task's (`task: Some`) or the SLA's, with
    /// the calendar warnings their computation gave, into `out` (filled in place: it is a few
    /// hundred bytes). Nothing changes. After an error `out` holds part of them.
    pub(crate) fn limit_timers(
        &self,
        limits: &Limits,
        task: Option<u32>,
        node: NodeId,
        from: DateTime<Utc>,
        out: &mut Armed,
    ) -> Result<(), String> {
        let dep: &'a Deployed = self.dep;
        let def = &*dep.def;
        let vars = &self.inst.vars;
        let sla = task.is_none();
        // A multi-instance item's durations also see its item variable.
        let item = if sla {
            None
        } else {
            self.item_local(task, node)
        };
        let resolve = |span: &Span| {
            match &item {
                None => span.evaluate(&def.cel, vars),
                Some(local) => span.evaluate(
                    &def.cel,
                    &crate::cond::Layered {
                        locals: std::slice::from_ref(local),
                        vars,
                    },
                ),
            }
            .map(|d| (d, calendar_of(dep, span)))
        };
        let Armed { timers, warnings } = out;
        let timer = |(at, provisional): (DateTime<Utc>, bool), kind, business| Timer {
            at,
            kind,
            task,
            node,
            sla,
            business,
            fired: false,
            provisional,
        };
        let due = match limits.due.as_ref().map(resolve).transpose()? {
            Some(r) => Some((self.after(r, from, warnings)?, r)),
            None => None,
        };
        // Timers due at the same instant fire in list order: reminders, then the claim and
        // completion deadlines, then escalations, and the interrupting timeout last. They are
        // computed in the order of the YAML's keys (the first that fails is the error) and
        // pushed in that firing order.
        let mut other = |span: &Option<Span>, kind| -> Result<Option<Timer>, String> {
            let Some(span) = span else {
                return Ok(None);
            };
            let r = resolve(span)?;
            let at = self.after(r, from, warnings)?;
            Ok(Some(timer(at, kind, r.0.is_business())))
        };
        let claim_due = other(&limits.claim_due, TimerKind::ClaimDue)?;
        let timeout = other(&limits.timeout, TimerKind::Timeout)?;
        for (index, remind) in limits.remind.iter().enumerate() {
            let at = match &remind.at {
                RemindAt::AfterStart(span) => self.after(resolve(span)?, from, warnings)?,
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
                    self.after((spec, due_calendar), from, warnings)?
                }
            };
            timers.push(timer(at, TimerKind::Reminder { index: index as u8 }, false));
        }
        timers.extend(claim_due);
        if let Some((at, (spec, _))) = due {
            timers.push(timer(at, TimerKind::Due, spec.is_business()));
        }
        if let Some(((due_at, due_provisional), _)) = due {
            for (level, esc) in limits.escalate.iter().enumerate() {
                let (at, provisional) = self.after(resolve(&esc.after)?, due_at, warnings)?;
                let kind = match esc.action {
                    Ladder::Urge { .. } => TimerKind::Urge {
                        level: level as u8,
                        count: 1,
                    },
                    _ => TimerKind::Escalation { level: level as u8 },
                };
                timers.push(timer((at, provisional || due_provisional), kind, false));
            }
        }
        timers.extend(timeout);
        Ok(())
    }

    /// Arms computed timers and records their warnings.
    pub(crate) fn arm(&mut self, armed: &Armed) {
        for w in &armed.warnings {
            self.apply(Change::Warn { message: w });
        }
        if !armed.timers.is_empty() {
            self.apply(Change::Arm(&armed.timers));
        }
    }

    /// The timers of the task that a token at `node` would open now (it opens as task `seq`),
    /// into `out`.
    pub(crate) fn task_timers(
        &self,
        node: NodeId,
        seq: u32,
        out: &mut Armed,
    ) -> Result<(), String> {
        let dep: &'a Deployed = self.dep;
        let n = &dep.def.nodes[node.index()];
        // A task with `priority_due` counts on the limits its priority picks.
        let chosen = if dep.def.allocating {
            self.limits_for(node)
        } else {
            n.limits.as_deref()
        };
        if let Some(limits) = chosen {
            self.limit_timers(limits, Some(seq), node, self.now, out)?;
        }
        if !n.boundary.is_empty() {
            self.boundary_timers(node, seq, out)?;
        }
        Ok(())
    }

    /// The process-wide SLA's timers, counted from now.
    ///
    /// # Errors
    /// [`ExecError::Deadline`] when a deadline cannot be computed.
    pub(crate) fn sla_timers(&self, out: &mut Armed) -> Result<(), ExecError> {
        let dep: &'a Deployed = self.dep;
        let def = &*dep.def;
        match &def.sla {
            Some(limits) => self
                .limit_timers(limits, None, def.start, self.now, out)
                .map_err(|message| ExecError::Deadline {
                    instance: self.inst.id,
                    node: dep.node(def.start),
                    message,
                }),
            None => Ok(()),
        }
    }

    /// Computes the instance's provisional timers again (its calendar was replaced), from the
    /// instants they counted from: a task's opening, the start, the arrival at a timer node.
    /// A timer whose computation now fails keeps its instant. Later urges (counted from the
    /// previous one) keep theirs too.
    pub(crate) fn retime_provisional(&mut self) {
        let dep: &'a Deployed = self.dep;
        let def = &*dep.def;
        let pending = |t: &Timer| t.provisional && !t.fired;
        if !self.inst.timers.iter().any(pending) {
            return;
        }
        let mut fresh: Vec<Timer> = Vec::new();
        let mut armed = Armed::default();
        if self.inst.timers.iter().any(|t| pending(t) && t.sla)
            && let Some(limits) = &def.sla
            && self
                .limit_timers(limits, None, def.start, self.inst.started_at, &mut armed)
                .is_ok()
        {
            fresh.extend(armed.timers.drain(..));
        }
        for task in &self.inst.tasks {
            let has = self
                .inst
                .timers
                .iter()
                .any(|t| pending(t) && t.task == Some(task.seq));
            if has
                && task.is_open()
                && let Some(limits) = &def.nodes[task.node.index()].limits
            {
                let mut armed = Armed::default();
                if self
                    .limit_timers(
                        limits,
                        Some(task.seq),
                        task.node,
                        task.created_at,
                        &mut armed,
                    )
                    .is_ok()
                {
                    fresh.extend(armed.timers);
                }
            }
        }
        for timer in self
            .inst
            .timers
            .iter()
            .filter(|t| pending(t) && t.kind == TimerKind::Wait)
        {
            // A timer node counts from the token's arrival, which the audit trail holds.
            let arrived = self.inst.audit.iter().rev().find_map(|r| match r.what {
                crate::model::Entry::Transition { to, .. } if to == timer.node => Some(r.at),
                _ => None,
            });
            if let (Some(from), crate::def::Behaviour::Timer(TimerWait::For(span))) =
                (arrived, &def.nodes[timer.node.index()].behaviour)
                && let Ok(spec) = span.evaluate(&def.cel, &self.inst.vars)
                && let Ok((at, provisional)) =
                    when(&spec, from, calendar_of(dep, span), &mut Vec::new())
            {
                fresh.push(Timer {
                    at,
                    provisional,
                    ..timer.clone()
                });
            }
        }
        let mut moves = Vec::new();
        for (index, old) in self.inst.timers.iter().enumerate() {
            if !pending(old) {
                continue;
            }
            let new = fresh.iter().find(|t| {
                t.kind == old.kind && t.task == old.task && t.sla == old.sla && t.node == old.node
            });
            if let Some(new) = new
                && (new.at != old.at || new.provisional != old.provisional)
            {
                moves.push((index, new.at, new.provisional));
            }
        }
        for (index, at, provisional) in moves {
            self.apply(Change::Retime {
                index,
                at,
                provisional,
            });
        }
    }

    /// The instant a timer node waits for, and whether it is provisional.
    pub(crate) fn wait_until(&mut self, wait: &TimerWait) -> Result<(DateTime<Utc>, bool), String> {
        match wait {
            TimerWait::For(span) => {
                let spec = span.evaluate(&self.dep.def.cel, &self.inst.vars)?;
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
                    .map(|t| (t.with_timezone(&Utc), false))
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
                    if let (Some(_), Some(&to)) = (token, node.next.get(1)) {
                        // Through `leave`: the task may be a race's target.
                        self.leave(timer.node, to, None);
                    }
                }
                TimerKind::Wait => {
                    // Through `leave`: a timer node may be a race's target.
                    self.leave(timer.node, node.next[0], None);
                }
                TimerKind::Boundary { index } => {
                    if let Some(seq) = timer.task {
                        self.boundary(seq, index);
                    } else {
                        // A sub-process's (non-interrupting) timer boundary.
                        self.scope_timer_boundary(timer.node, index);
                    }
                }
                TimerKind::ScopeTimeout => self.scope_timeout(timer.node),
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
                        let mut warnings = Vec::new();
                        // An interval that cannot be computed ends the urges with an incident.
                        let item = self.item_local(timer.task, timer.node);
                        let at = match &item {
                            None => every.evaluate(&def.cel, &self.inst.vars),
                            Some(local) => every.evaluate(
                                &def.cel,
                                &crate::cond::Layered {
                                    locals: std::slice::from_ref(local),
                                    vars: &self.inst.vars,
                                },
                            ),
                        }
                        .map_err(String::from)
                        .and_then(|next| {
                            self.after((next, calendar_of(dep, every)), timer.at, &mut warnings)
                        });
                        self.warn(warnings);
                        match at {
                            Ok((at, provisional)) => self.apply(Change::Arm(&[Timer {
                                at,
                                provisional,
                                kind: TimerKind::Urge {
                                    level,
                                    count: count + 1,
                                },
                                ..timer
                            }])),
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
            TimerKind::Wait | TimerKind::Boundary { .. } | TimerKind::ScopeTimeout => Vec::new(),
        }
    }
}

/// The instance's earliest timer yet to fire, at or after `at` (one at `at` is one the firing
/// armed; the ones it fired are gone or marked).
fn next_timer(inst: &crate::model::Instance, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    inst.timers
        .iter()
        .filter(|t| !t.fired && t.at >= at)
        .map(|t| t.at)
        .min()
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

/// How many due entries another engine claimed a tick reads again from the store, at most
/// (one [`Store::read_many`](crate::Store::read_many)).
const REFRESH_BATCH: usize = 64;

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
        crate::telemetry::call!("tick");
        // From a handler or veto: fire nothing, and take nothing off the schedule.
        if super::seam::busy().is_some() {
            return Vec::new();
        }
        // Messages kept engine-wide (`keep_for`) whose time ran out are recorded unmatched (on
        // a shared store, also those another engine kept).
        if self.shares_store() {
            self.reload_parked();
        }
        self.expire_messages(now);
        self.backfill_in_tick();
        let mut fired = Vec::new();
        let mut done: Vec<Stepped> = Vec::new();
        let deferred;
        {
            let mut claimed_elsewhere = super::lock(&self.ticking);
            let mut claimed = self.adopt_due(now);
            // A store shared by replicas: the firings' commits wait for the disk once, at the
            // flush below, before anyone is told.
            deferred = claimed.is_some() && self.store.as_ref().is_some_and(|s| s.defer());
            // Ends deferring however this block ends (a panic in a handler included).
            struct Flush<'s>(Option<&'s dyn crate::Store>);
            impl Drop for Flush<'_> {
                fn drop(&mut self) {
                    if let Some(store) = self.0.take()
                        && std::thread::panicking()
                    {
                        let _ = store.flush();
                    }
                }
            }
            let _flush_on_panic = Flush(self.store.as_deref().filter(|_| deferred));
            // Due entries of instances another engine holds the claim on (or that the claim
            // did not reach yet): looked at again by the next tick (so are those of the last).
            let mut skipped: Vec<(DateTime<Utc>, u64)> = std::mem::take(&mut *claimed_elsewhere);
            loop {
                let fired_by_then = fired.len();
                let mut due: Vec<(DateTime<Utc>, u64)> = std::mem::take(&mut skipped);
                for heap in &*self.timer_heaps {
                    let mut heap = super::lock(heap);
                    while heap
                        .peek()
                        .is_some_and(|std::cmp::Reverse((at, _))| *at <= now)
                    {
                        due.extend(heap.pop().map(|std::cmp::Reverse(entry)| entry));
                    }
                }
                // An instance this engine let go of: nothing of it is left to fire.
                due.retain(|(_, n)| !self.let_go(*n));
                // A store shared by engines that claim: another engine holds the due timers of
                // the instances the claim did not give this engine (or the claim failed); look
                // again later. Only what this engine may fire is put in deadline order: a
                // replica skips most of what is due.
                if let Some(claimed) = &claimed {
                    let (mine, others) = due
                        .into_iter()
                        .partition(|(_, n)| claimed.binary_search(n).is_ok());
                    due = mine;
                    skipped = others;
                }
                let mut due: std::collections::BinaryHeap<_> =
                    due.into_iter().map(std::cmp::Reverse).collect();
                while let Some(std::cmp::Reverse((at, n))) = due.pop() {
                    let id = InstanceId(n);
                    let fired_before = fired.len();
                    // What a timer causes happens at the timer's instant, not the tick's: a
                    // task its timeout route opens is created then, and its own deadlines count
                    // from then. So a late tick gives the same result as timely ones.
                    let stepped = self.with_slot(id, |slot: &mut Slot| {
                        let stepped = self.step_slot(slot, at, |step| step.fire_at(at, &mut fired));
                        (stepped, next_timer(&slot.inst, at))
                    });
                    let (mut stepped, next) = match stepped {
                        Ok(stepped) => stepped,
                        // Gone from memory without a store: nothing is left to fire.
                        Err(ExecError::UnknownInstance(_)) => continue,
                        // Not readable now (the store failed): the timer stays armed; try
                        // again at the next tick.
                        Err(_) => {
                            self.schedule(id, at);
                            continue;
                        }
                    };
                    stepped.armed = None;
                    if stepped.refused {
                        // The store refused: nothing fired. The timer stays armed, so it goes
                        // back on the schedule for the next tick (after a conflict, the
                        // instance read again from the store was scheduled as it stands).
                        fired.truncate(fired_before);
                        self.schedule(id, at);
                    } else if let Some(next) = next {
                        // The instance's next timer (one this firing armed, or an older one):
                        // due now, it fires in this tick, in order.
                        if next <= now {
                            due.push(std::cmp::Reverse((next, n)));
                        } else {
                            self.schedule(id, next);
                        }
                    }
                    done.push(stepped);
                }
                // A store that claims in batches: claim the next batch while the last one
                // fired something (what this engine could not fire stays claimed by it until
                // its lease runs out, and ends the loop).
                match &claimed {
                    Some(batch) if !batch.is_empty() && fired.len() > fired_by_then => {
                        claimed = self.adopt_due(now);
                    }
                    _ => break,
                }
            }
            // Another engine claimed these, and may have fired them since this engine read
            // the instances: newer stored copies replace the held ones (and schedule what they
            // still have armed), read by a tick that fired nothing (so that the reads never
            // slow the firing down). The others are looked at again by the next tick.
            let refreshed = if fired.is_empty() {
                self.refresh_claimed_elsewhere(&mut skipped)
            } else {
                Vec::new()
            };
            claimed_elsewhere.extend(
                skipped
                    .into_iter()
                    .filter(|(_, n)| refreshed.binary_search(n).is_err()),
            );
        }
        if deferred
            && let Some(store) = &self.store
            && store.flush().is_err()
        {
            // The firings may be lost with the server: nobody hears of them, their follow-ups
            // stay in the store (claimed by a replica once their lease runs out), and the
            // instances' next commits find out what the store kept.
            fired.clear();
            for stepped in &mut done {
                stepped.events.clear();
                stepped.follow.clear();
            }
        }
        // Hooks hear what fired once nothing is locked: they may call the engine, `tick`
        // included.
        for stepped in done {
            let _ = self.after(stepped);
        }
        // Follow-ups another engine sharing the store committed and never ran (it died).
        self.run_left_follow_ups();
        fired
    }

    /// With a store that claims follow-ups ([`Store::claim_outbox`](crate::Store::claim_outbox)):
    /// claims those whose engine let the lease run out, reads their instances, and runs them
    /// here as an engine opening the store runs what a crash left (at least once: a follow-up
    /// records that it ran in its instance's next commit). Gives how many instances' follow-ups
    /// ran.
    fn run_left_follow_ups(&self) -> usize {
        let Some(store) = self.store.as_ref() else {
            return 0;
        };
        let Ok(Some(claimed)) = store.claim_outbox(CLAIM_LEASE) else {
            return 0;
        };
        let mut ran = 0;
        for (id, version) in claimed {
            let held = super::lock(self.shard(id)).get(id.0).cloned();
            if held.is_none_or(|slot| super::lock(&slot).version < version) {
                // Not readable now, or not fitting its definition: the claim runs out and it
                // is claimed again.
                if !matches!(self.fetch(id, |_| true), Ok(Some(_))) {
                    continue;
                }
            }
            let Ok((dep, pending)) = self.with_slot(id, |slot| {
                (Arc::clone(&slot.dep), slot.inst.pending().to_vec())
            }) else {
                continue;
            };
            if pending.is_empty() {
                continue;
            }
            // A hook's failure here is the hook's; the follow-up counts as run.
            let _ = self.run_follow_ups(id, &dep, pending);
            ran += 1;
        }
        ran
    }

    /// Reads the stored copies of the oldest `REFRESH_BATCH` of `skipped` (due entries another
    /// engine claimed) in one [`Store::read_many`](crate::Store::read_many), and keeps those
    /// newer than the held copy: the instances whose entries are done with, by id, sorted.
    /// One bounded read, not one a skipped entry: a replica skips most of what is due (what
    /// the others claimed), and a read each made three replicas fire 40% slower.
    fn refresh_claimed_elsewhere(&self, skipped: &mut [(DateTime<Utc>, u64)]) -> Vec<u64> {
        let Some(store) = &self.store else {
            return Vec::new();
        };
        skipped.sort_unstable();
        let ids: Vec<InstanceId> = skipped
            .iter()
            .take(REFRESH_BATCH)
            .map(|(_, n)| InstanceId(*n))
            .collect();
        if ids.is_empty() {
            return Vec::new();
        }
        let let_go = self.let_go_counts();
        // Unreadable now: the next tick tries again.
        let Ok(stored) = store.read_many(&ids) else {
            return Vec::new();
        };
        let mut refreshed = Vec::new();
        for stored in stored {
            let id = stored.instance.id;
            let held = super::lock(self.shard(id)).get(id.0).cloned();
            if held.is_some_and(|slot| stored.version <= super::lock(&slot).version) {
                continue;
            }
            if self
                .keep_read(stored, let_go[(id.0 as usize) % super::SHARDS])
                .is_ok()
            {
                refreshed.push(id.0);
            }
        }
        refreshed.sort_unstable();
        refreshed
    }

    /// With a store: reads the instances with timers due by `now` that this engine does not
    /// hold, or holds at an older version than the store (another engine sharing the store
    /// changed them), so that `tick` fires what is due whichever engine ran the instance. Each
    /// timer still fires once: an engine that fires from a stale copy gets a conflict.
    ///
    /// Returns the instances (sorted ids) whose due timers this engine claimed, when the store
    /// claims ([`Store::claim_due`](crate::Store::claim_due)): `tick` fires only those. `None`:
    /// every due timer this engine holds may fire.
    fn adopt_due(&self, now: DateTime<Utc>) -> Option<Vec<u64>> {
        let store = self.store.as_ref()?;
        let (due, claimed) = match store.claim_due(now, CLAIM_LEASE) {
            Ok(Some(claimed)) => {
                let ids = claimed.iter().map(|(id, _)| id.0).collect();
                (claimed, Some(ids))
            }
            // The store claims but cannot now: fire nothing, ask again at the next tick.
            Err(_) => return Some(Vec::new()),
            // A store that cannot be read now is asked again at the next tick; the timers this
            // engine holds fire meanwhile.
            Ok(None) => match store.due(now) {
                Ok(due) => (due, None),
                Err(_) => return None,
            },
        };
        for (id, version) in due {
            let held = super::lock(self.shard(id)).get(id.0).cloned();
            let stale = held.is_none_or(|slot| super::lock(&slot).version < version);
            if stale {
                // A stored instance that does not fit its definition is refused here and by
                // every call on it; the others fire.
                let _ = self.fetch(id, |_| true);
            }
        }
        claimed
    }

    /// Whether the schedule's entry for instance `n` is stale, to be dropped without reading
    /// the instance: the engine does not hold it and keeps every instance it has not let go
    /// of (no bounded cache), so it finished here (or a host took it out with
    /// [`Engine::remove`]). Reading it back would find nothing to fire; a running instance
    /// in a store with timers due is read again by `tick` through the store's due index
    /// (`adopt_due`) all the same.
    fn let_go(&self, n: u64) -> bool {
        self.config.cache.is_none() && !self.holds(InstanceId(n))
    }

    /// When the earliest armed timer is due, if any. Entries of the schedule whose timer is
    /// gone (its task completed, its claim deadline met, its instance finished and let go of)
    /// are dropped on the way. With a bounded cache ([`Config::cache`](super::Config::cache))
    /// or a store other engines share, the store is asked too ([`Store::next_wake`]): it knows
    /// the timers of instances this engine does not hold (a query; SQLite keeps due instants
    /// rounded up to the millisecond).
    ///
    /// [`Store::next_wake`]: crate::Store::next_wake
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        let held = self.next_held_due();
        let stored = self
            .partial_store()
            .and_then(|s| s.next_wake().ok().flatten())
            .and_then(|w| w.due);
        match (held, stored) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// [`Engine::next_due`] among the timers of the instances the engine holds (the drivers
    /// ask the store themselves, off the engine's call).
    pub(crate) fn next_held_due(&self) -> Option<DateTime<Utc>> {
        loop {
            let (shard, (at, n)) = self
                .timer_heaps
                .iter()
                .enumerate()
                .filter_map(|(i, h)| super::lock(h).peek().map(|std::cmp::Reverse(e)| (i, *e)))
                .min_by_key(|(_, e)| *e)?;
            if self.let_go(n) {
                let mut heap = super::lock(&self.timer_heaps[shard]);
                if heap.peek() == Some(&std::cmp::Reverse((at, n))) {
                    heap.pop();
                }
                continue;
            }
            let armed = self.with_slot(InstanceId(n), |slot| {
                let here = slot.inst.timers.iter().any(|t| t.at == at && !t.fired);
                (here, next_timer(&slot.inst, at))
            });
            let later = match armed {
                Ok((false, later)) => later,
                Err(ExecError::UnknownInstance(_)) => None,
                // Armed, or not knowable now (from a handler or veto, a failing store).
                _ => return Some(at),
            };
            {
                let mut heap = super::lock(&self.timer_heaps[shard]);
                if heap.peek() == Some(&std::cmp::Reverse((at, n))) {
                    heap.pop();
                }
            }
            // The entry stood for the instance's later timers too.
            if let Some(later) = later {
                self.schedule(InstanceId(n), later);
            }
        }
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
            Ok(timer.map(|d| sla(&slot.dep, d, t.created_at, now)))
        })?
    }

    /// How an instance stands against its process-wide SLA; `None` when it has none.
    ///
    /// # Errors
    /// [`ExecError::UnknownInstance`].
    pub fn sla_of_instance(&self, id: InstanceId) -> Result<Option<Sla>, ExecError> {
        let now = self.clock.now();
        self.with_current(id, |slot| {
            let timer = slot
                .inst
                .timers
                .iter()
                .find(|x| x.sla && x.kind == TimerKind::Due);
            timer.map(|d| sla(&slot.dep, d, slot.inst.started_at, now))
        })
    }
}

/// How a deadline timer of an instance of `dep` stands at `now`, counted from `from`.
pub(super) fn sla(dep: &Deployed, due: &Timer, from: DateTime<Utc>, now: DateTime<Utc>) -> Sla {
    let calendar = dep.calendar.as_deref().filter(|_| due.business);
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
        provisional: due.provisional,
    }
}

/// A thread that fires an engine's timers: it sleeps until the next timer is due (at most
/// `poll`, so that timers armed meanwhile are not missed by more than that), then ticks with the
/// engine's clock. Dropping it stops the thread.
///
/// A tick that panics (an engine bug) does not stop the thread: it is counted
/// ([`TimerDriver::failures`]) and its message kept, and the next tick goes on with the other
/// instances' timers.
///
/// # Examples
/// ```
/// # use std::sync::Arc;
/// let engine = Arc::new(procflow::Engine::new());
/// let driver = procflow::TimerDriver::spawn(Arc::clone(&engine), std::time::Duration::from_millis(200));
/// assert_eq!(driver.failures(), 0);
/// drop(driver); // stops and joins the thread
/// ```
pub struct TimerDriver {
    stop: Arc<(Mutex<Wake>, Condvar)>,
    state: Arc<DriverState>,
    thread: Option<JoinHandle<()>>,
}

/// What the driver's thread is woken for.
#[derive(Default)]
struct Wake {
    stopped: bool,
    /// A timer another engine sharing the store armed (the store announced it).
    due: Option<DateTime<Utc>>,
    /// Look at the store now.
    now: bool,
}

#[derive(Default)]
struct DriverState {
    running: AtomicBool,
    failures: std::sync::atomic::AtomicU64,
    last_failure: Mutex<Option<String>>,
}

impl std::fmt::Debug for TimerDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimerDriver")
            .field("running", &self.is_running())
            .field("failures", &self.failures())
            .finish()
    }
}

impl TimerDriver {
    /// Starts the thread.
    ///
    /// With a store several engines share (PostgreSQL), the thread also sleeps until the
    /// earliest timer the store holds that it may claim, whichever engine armed it, and the
    /// store wakes it when another engine arms an earlier one ([`crate::Store::watch`]), so a
    /// timer armed elsewhere fires here without waiting for `poll`; and each tick runs the
    /// follow-ups a dead engine left ([`crate::Store::claim_outbox`]).
    pub fn spawn(engine: Arc<Engine>, poll: StdDuration) -> TimerDriver {
        let stop = Arc::new((Mutex::new(Wake::default()), Condvar::new()));
        let state = Arc::new(DriverState::default());
        state.running.store(true, Ordering::SeqCst);
        if let Some(store) = &engine.store {
            let wake = Arc::downgrade(&stop);
            store.watch(Box::new(move |news| {
                let Some(wake) = wake.upgrade() else {
                    return false;
                };
                let mut w = super::lock(&wake.0);
                if w.stopped {
                    return false;
                }
                if let Some(at) = news.due {
                    w.due = Some(w.due.map_or(at, |d| d.min(at)));
                }
                if news.work_in.is_some_and(|d| d.is_zero()) {
                    w.now = true;
                }
                wake.1.notify_all();
                true
            }));
        }
        let thread = {
            let (stop, state) = (Arc::clone(&stop), Arc::clone(&state));
            std::thread::spawn(move || {
                // Marks the driver stopped however the thread ends.
                struct Stopped(Arc<DriverState>);
                impl Drop for Stopped {
                    fn drop(&mut self) {
                        self.0.running.store(false, Ordering::SeqCst);
                    }
                }
                let _stopped = Stopped(Arc::clone(&state));
                let (flag, wake) = &*stop;
                // What the store said it holds next, and when it said so.
                let mut store_next = crate::store::StoreWake::default();
                let mut told = std::time::Instant::now();
                loop {
                    let until = |at: DateTime<Utc>| {
                        (at - engine.now()).to_std().unwrap_or(StdDuration::ZERO)
                    };
                    let mut wait = poll;
                    for at in engine.next_held_due().into_iter().chain(store_next.due) {
                        wait = wait.min(until(at));
                    }
                    if let Some(work) = store_next.work_in {
                        wait = wait.min(work.saturating_sub(told.elapsed()));
                    }
                    let mut deadline = std::time::Instant::now() + wait;
                    let mut w = super::lock(flag);
                    loop {
                        if w.stopped {
                            return;
                        }
                        if std::mem::take(&mut w.now) {
                            break;
                        }
                        if let Some(at) = w.due.take() {
                            store_next.due = Some(store_next.due.map_or(at, |d| d.min(at)));
                            deadline = deadline.min(std::time::Instant::now() + until(at));
                        }
                        let left = deadline.saturating_duration_since(std::time::Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        w = wake
                            .wait_timeout(w, left)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                    drop(w);
                    let ticked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        engine.tick(engine.now())
                    }));
                    if let Err(panic) = ticked {
                        state.failures.fetch_add(1, Ordering::SeqCst);
                        *super::lock(&state.last_failure) =
                            Some(super::step::panic_message(&panic));
                    }
                    // What the store holds next, now that this engine took what was due.
                    store_next = match engine.partial_store() {
                        Some(store) => store.next_wake().ok().flatten().unwrap_or_default(),
                        None => crate::store::StoreWake::default(),
                    };
                    told = std::time::Instant::now();
                }
            })
        };
        TimerDriver {
            stop,
            state,
            thread: Some(thread),
        }
    }

    /// Whether the thread still runs.
    pub fn is_running(&self) -> bool {
        self.state.running.load(Ordering::SeqCst)
    }

    /// How many ticks failed (panicked) so far.
    pub fn failures(&self) -> u64 {
        self.state.failures.load(Ordering::SeqCst)
    }

    /// What the last failed tick said.
    pub fn last_failure(&self) -> Option<String> {
        super::lock(&self.state.last_failure).clone()
    }
}

impl Drop for TimerDriver {
    fn drop(&mut self) {
        super::lock(&self.stop.0).stopped = true;
        self.stop.1.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
