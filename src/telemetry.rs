//! Telemetry (feature `telemetry`): a `tracing` span for every engine call, an event and a
//! histogram sample for every store commit, an event for every conflict, and the [`Telemetry`]
//! hook that turns the engine's events (denials, incidents, timers, breaches, transitions, open
//! tasks) into `tracing` events and `metrics` counters and gauges.
//!
//! Without the feature the [`call!`] macro and the `record_*` helpers compile to nothing and
//! [`commit`] to the call it wraps, so the hot path is the same code as before.
//! With it and no subscriber or recorder installed, a call costs a disabled span (one cached
//! interest check) and a counter increment on the no-op recorder (one thread-local and one atomic
//! load); the per-event work is in the [`Telemetry`] hook, which a host adds only where it wants
//! it (a hook makes the engine build its event stream).
//!
//! **Invariant:** nothing here changes what a call does; every label is a static string or a
//! node id from a definition (bounded), never an instance, task or actor id.

#[cfg(feature = "telemetry")]
use std::time::Instant;

#[cfg(feature = "telemetry")]
use crate::hooks::{Control, Hook};
use crate::ids::InstanceId;
#[cfg(feature = "telemetry")]
use crate::model::{Event, TimerKind};
use crate::store::StoreError;

/// The target every span and event is logged under.
#[cfg(feature = "telemetry")]
pub(crate) const TARGET: &str = "procflow";

/// Opens the span of one engine call (named after the call, with the fields given; fields not
/// known yet are declared `Empty` and recorded later) for the rest of the enclosing block, and
/// counts the call in `procflow_calls_total{call}`. Compiles to nothing without the feature.
macro_rules! call {
    ($name:literal $(, $($field:tt)+)?) => {
        #[cfg(feature = "telemetry")]
        let _call_span = {
            ::metrics::counter!("procflow_calls_total", "call" => $name).increment(1);
            ::tracing::info_span!(target: "procflow", $name $(, $($field)+)?).entered()
        };
    };
}
pub(crate) use call;

/// Records the node of the current call's span (a task call learns it once the task is found).
/// Called under `#[cfg(feature = "telemetry")]`, so that its argument is not even computed
/// without the feature.
#[cfg(feature = "telemetry")]
pub(crate) fn record_node(node: &str) {
    tracing::Span::current().record("node", node);
}

/// Records the instance of the current call's span (a start learns it once the id is drawn).
#[cfg(feature = "telemetry")]
pub(crate) fn record_instance(id: InstanceId) {
    tracing::Span::current().record("instance", tracing::field::display(id));
}

/// Runs one store commit of `records` audit records for instance `id`: times it into the
/// `procflow_commit_seconds` histogram, logs a `commit` event (debug) or a conflict (warn) or
/// failure (error), and counts conflicts and failures. Without the feature: `commit()`.
#[inline(always)]
pub(crate) fn commit(
    id: InstanceId,
    records: usize,
    commit: impl FnOnce() -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    #[cfg(feature = "telemetry")]
    {
        let began = Instant::now();
        let result = commit();
        committed(id, records, began, &result);
        result
    }
    #[cfg(not(feature = "telemetry"))]
    {
        let _ = (id, records);
        commit()
    }
}

/// One batch of the offers backfill that `tick` runs: how many instances it looked at
/// (debug), or why it failed (warn: the next tick tries again).
pub(crate) fn backfilled<E: std::fmt::Display>(result: &Result<usize, E>) {
    #[cfg(feature = "telemetry")]
    match result {
        Ok(0) => {}
        Ok(instances) => tracing::debug!(target: TARGET, instances, "offers backfilled"),
        Err(error) => tracing::warn!(
            target: TARGET,
            %error,
            "offers backfill failed; the next tick tries again"
        ),
    }
    #[cfg(not(feature = "telemetry"))]
    let _ = result;
}

#[cfg(feature = "telemetry")]
#[cold]
#[inline(never)]
fn committed(id: InstanceId, records: usize, began: Instant, result: &Result<(), StoreError>) {
    let seconds = began.elapsed().as_secs_f64();
    match result {
        Ok(()) => {
            metrics::histogram!("procflow_commit_seconds").record(seconds);
            tracing::debug!(target: TARGET, instance = %id, records, seconds, "commit");
        }
        Err(StoreError::Conflict { .. }) => {
            metrics::counter!("procflow_conflicts_total").increment(1);
            tracing::warn!(
                target: TARGET,
                instance = %id,
                "commit conflict: another engine changed the instance; the call is refused"
            );
        }
        Err(error) => {
            metrics::counter!("procflow_commit_failures_total").increment(1);
            tracing::error!(target: TARGET, instance = %id, %error, "commit failed");
        }
    }
}

/// A hook that turns the engine's events into `tracing` events and `metrics` series (feature
/// `telemetry`); add it with [`EngineBuilder::hook`](crate::EngineBuilder::hook).
///
/// | series | kind | labels | from |
/// |---|---|---|---|
/// | `procflow_transitions_total` | counter | `node` | a token entered a node |
/// | `procflow_open_tasks` | gauge | `node` | tasks created minus tasks completed, cancelled, skipped or sent back |
/// | `procflow_tasks_completed_total` | counter | `node` | |
/// | `procflow_instances_total` | counter | `event` (`started`, `completed`, `cancelled`) | |
/// | `procflow_denials_total` | counter | `kind` (`raci`, `cancel`, `refused`) | a call was refused (RACI, cancel rights, allocation or lifecycle) |
/// | `procflow_incidents_total` | counter | `node` | |
/// | `procflow_timers_fired_total` | counter | `kind` | |
/// | `procflow_breaches_total` | counter | `node`, `scope` (`task`, `sla`) | a deadline passed |
///
/// Denials, incidents and breaches are logged at `warn`, timers at `info`, the rest at `debug`,
/// all under the target `procflow`. The hook moves the gauge by the tasks this engine opens and
/// closes; [`Report::record_open_tasks`](crate::Report::record_open_tasks) sets it to what a
/// store holds (after opening one, and before each scrape when replicas share it).
#[cfg(feature = "telemetry")]
#[derive(Clone, Copy, Debug, Default)]
pub struct Telemetry {
    _private: (),
}

#[cfg(feature = "telemetry")]
impl Telemetry {
    /// The hook.
    pub fn new() -> Telemetry {
        Telemetry::default()
    }
}

#[cfg(feature = "telemetry")]
impl Hook for Telemetry {
    fn on_event(&self, event: &Event) -> Control {
        let node_label = |node: &str| ("node", node.to_owned());
        match event {
            Event::NodeEntered { instance, node } => {
                metrics::counter!("procflow_transitions_total", &[node_label(node)]).increment(1);
                tracing::debug!(target: TARGET, instance = %instance, node = &**node, "node entered");
            }
            Event::TaskCreated { task, node, .. } => {
                metrics::gauge!("procflow_open_tasks", &[node_label(node)]).increment(1.0);
                tracing::debug!(target: TARGET, instance = %task.instance, task = %task, node = &**node, "task created");
            }
            Event::TaskCompleted {
                task, node, actor, ..
            } => {
                metrics::gauge!("procflow_open_tasks", &[node_label(node)]).decrement(1.0);
                metrics::counter!("procflow_tasks_completed_total", &[node_label(node)])
                    .increment(1);
                tracing::debug!(target: TARGET, instance = %task.instance, task = %task, node = &**node, actor = %actor, "task completed");
            }
            Event::TaskCancelled { node, .. }
            | Event::TaskSkipped { node, .. }
            | Event::TaskSentBack { node, .. } => {
                metrics::gauge!("procflow_open_tasks", &[node_label(node)]).decrement(1.0);
            }
            Event::InstanceStarted { instance, .. } => {
                metrics::counter!("procflow_instances_total", "event" => "started").increment(1);
                tracing::debug!(target: TARGET, instance = %instance, "instance started");
            }
            Event::InstanceCompleted { instance } => {
                metrics::counter!("procflow_instances_total", "event" => "completed").increment(1);
                tracing::debug!(target: TARGET, instance = %instance, "instance completed");
            }
            Event::InstanceCancelled {
                instance, actor, ..
            } => {
                metrics::counter!("procflow_instances_total", "event" => "cancelled").increment(1);
                tracing::debug!(target: TARGET, instance = %instance, actor = %actor, "instance cancelled");
            }
            Event::AccessDenied {
                task,
                node,
                actor,
                action,
                ..
            } => {
                metrics::counter!("procflow_denials_total", "kind" => "raci").increment(1);
                tracing::warn!(target: TARGET, instance = %task.instance, task = %task, node = &**node, actor = %actor, action = ?action, "denied");
            }
            Event::CancelDenied {
                instance, actor, ..
            } => {
                metrics::counter!("procflow_denials_total", "kind" => "cancel").increment(1);
                tracing::warn!(target: TARGET, instance = %instance, actor = %actor, "cancel denied");
            }
            Event::CallRefused {
                instance,
                task,
                actor,
                reason,
                ..
            } => {
                metrics::counter!("procflow_denials_total", "kind" => "refused").increment(1);
                let task = task.map(|t| t.to_string());
                tracing::warn!(target: TARGET, instance = %instance, task = task.as_deref(), actor = %actor, reason = &**reason, "call refused");
            }
            Event::Incident {
                instance,
                node,
                message,
            } => {
                let node = node.as_deref().unwrap_or("");
                metrics::counter!("procflow_incidents_total", &[node_label(node)]).increment(1);
                tracing::warn!(target: TARGET, instance = %instance, node, message = &**message, "incident");
            }
            Event::Timer {
                instance,
                task,
                node,
                kind,
                sla,
                ..
            } => {
                let kind_label = timer_kind(kind);
                metrics::counter!("procflow_timers_fired_total", "kind" => kind_label).increment(1);
                let task = task.map(|t| t.to_string());
                tracing::info!(target: TARGET, instance = %instance, task = task.as_deref(), node = &**node, kind = kind_label, sla, "timer fired");
                if *kind == TimerKind::Due {
                    let scope = if *sla { "sla" } else { "task" };
                    metrics::counter!(
                        "procflow_breaches_total",
                        &[node_label(node), ("scope", scope.to_owned())]
                    )
                    .increment(1);
                    tracing::warn!(target: TARGET, instance = %instance, task = task.as_deref(), node = &**node, scope, "deadline breached");
                }
            }
            _ => {}
        }
        Control::Continue
    }
}

/// A timer kind's label.
#[cfg(feature = "telemetry")]
fn timer_kind(kind: &TimerKind) -> &'static str {
    match kind {
        TimerKind::ClaimDue => "claim_due",
        TimerKind::Reminder { .. } => "reminder",
        TimerKind::Due => "due",
        TimerKind::Escalation { .. } => "escalation",
        TimerKind::Urge { .. } => "urge",
        TimerKind::Timeout => "timeout",
        TimerKind::Wait => "wait",
        TimerKind::Boundary { .. } => "boundary",
        _ => "other",
    }
}
