//! Timers as instance state: what is armed, what it does when it fires, and what `tick` reports.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{InstanceId, NodeId, RoleId, TaskId};

/// A timer armed on an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timer {
    /// When it fires.
    pub at: DateTime<Utc>,
    /// What it does.
    pub kind: TimerKind,
    /// The task it belongs to (by its number in the instance); `None` for the SLA and timer nodes.
    pub task: Option<u32>,
    /// The node: the task's, the timer node's, or the start node for the SLA.
    pub node: NodeId,
    /// Whether it belongs to the process-wide SLA.
    pub sla: bool,
    /// Whether its duration was business time (for SLA queries).
    pub business: bool,
    /// Whether it already fired (only deadlines stay in the list after firing).
    pub fired: bool,
    /// Whether its instant counts days of a year its business calendar only knows by the
    /// statutory rule (no State Council notice yet): it may move when the calendar gains the
    /// year ([`Engine::update_calendar`](crate::Engine::update_calendar)).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub provisional: bool,
}

/// What a timer does when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[non_exhaustive]
pub enum TimerKind {
    /// The task is still unclaimed: tell the accountable role.
    ClaimDue,
    /// A reminder (the `index`-th of the task's or SLA's `remind` list).
    Reminder {
        /// Its position in `remind`.
        index: u8,
    },
    /// The deadline passed: a breach notice to the informed roles.
    Due,
    /// An escalation level (notify or reassign).
    Escalation {
        /// Its position in `escalate`.
        level: u8,
    },
    /// One urge of an `urge` level.
    Urge {
        /// Its position in `escalate`.
        level: u8,
        /// Which urge this is, from 1.
        count: u32,
    },
    /// The task's interrupting timeout.
    Timeout,
    /// A timer node's wait is over.
    Wait,
    /// A user task's timer boundary event (the `index`-th of its `boundary` list).
    Boundary {
        /// Its position in `boundary`.
        index: u8,
    },
    /// An embedded sub-process's timeout: its scope is withdrawn and its token leaves by the
    /// timeout route.
    ScopeTimeout,
}

/// A timer that `tick` fired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Fired {
    /// The instance.
    pub instance: InstanceId,
    /// The task, for task timers.
    pub task: Option<TaskId>,
    /// What fired.
    pub kind: TimerKind,
    /// Whether it belongs to the SLA.
    pub sla: bool,
    /// When it was due (a late tick fires it later, never earlier).
    pub due: DateTime<Utc>,
    /// Who was told.
    pub recipients: Vec<RoleId>,
}

impl TimerKind {
    /// A short name: `reminder`, `breach`, `escalation` (notify or reassign), `urge`, `timeout`,
    /// `claim_overdue`, `timer_node`, `boundary_timer`, with `sla_` in front for the SLA's.
    pub fn name(self, sla: bool) -> String {
        let base = match self {
            TimerKind::ClaimDue => "claim_overdue",
            TimerKind::Reminder { .. } => "reminder",
            TimerKind::Due => "breach",
            TimerKind::Escalation { .. } => "escalation",
            TimerKind::Urge { .. } => "urge",
            TimerKind::Timeout => "timeout",
            TimerKind::Wait => "timer_node",
            TimerKind::Boundary { .. } => "boundary_timer",
            TimerKind::ScopeTimeout => "scope_timeout",
        };
        if sla {
            format!("sla_{base}")
        } else {
            base.to_owned()
        }
    }
}

impl Fired {
    /// What fired, by name; see [`TimerKind::name`].
    pub fn name(&self) -> String {
        self.kind.name(self.sla)
    }
}
