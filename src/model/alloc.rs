//! Allocation and work-item lifecycle state of an instance (kept in its `Rare`: most instances
//! have none): the case owner, each task's assignment, delegations and suspensions.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::instance::{Instance, Rare};
use super::timer::Timer;
use crate::def::ProcessDef;
use crate::ids::ActorId;

/// A call on a task or an instance that allocation or its lifecycle refused, as
/// [`Entry::Refused`](super::Entry::Refused) records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Call {
    /// [`Engine::claim`](crate::Engine::claim).
    Claim,
    /// [`Engine::complete`](crate::Engine::complete).
    Complete,
    /// [`Engine::release`](crate::Engine::release).
    Release,
    /// [`Engine::delegate`](crate::Engine::delegate).
    Delegate,
    /// [`Engine::return_task`](crate::Engine::return_task).
    Return,
    /// [`Engine::suspend`](crate::Engine::suspend).
    Suspend,
    /// [`Engine::resume`](crate::Engine::resume).
    Resume,
    /// [`Engine::skip`](crate::Engine::skip).
    Skip,
    /// [`Engine::hand_over`](crate::Engine::hand_over).
    HandOver,
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Call::Claim => "claim",
            Call::Complete => "complete",
            Call::Release => "release",
            Call::Delegate => "delegate",
            Call::Return => "return",
            Call::Suspend => "suspend",
            Call::Resume => "resume",
            Call::Skip => "skip",
            Call::HandOver => "hand over",
        })
    }
}

/// A refused call, as [`Entry::Refused`](super::Entry::Refused) records it (boxed: records stay
/// 48 bytes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The task, for a task call.
    pub task: Option<u32>,
    /// Who tried.
    pub actor: ActorId,
    /// What.
    pub call: Call,
    /// Why, as a sentence naming the rule (the earlier task and its performer for four eyes).
    pub reason: String,
}

/// Who an open task is assigned to, computed when it opened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Assigned {
    pub(crate) task: u32,
    /// One person (direct, owner, retain familiar) or the candidates (deferred).
    pub(crate) to: Vec<ActorId>,
    /// Whether `to` are candidates (any one of them may take it) rather than the assignee.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) candidates: bool,
}

/// A delegated task: its claim is the delegate's until it completes or returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Delegation {
    pub(crate) task: u32,
    /// Who delegated it (stays accountable).
    pub(crate) by: ActorId,
    /// The claim before the delegation, which a return puts back.
    pub(crate) from: Option<ActorId>,
}

/// A suspended task (`task: Some`) or instance: its timers are kept here, out of the armed
/// list, until it resumes; they then fire later by the suspended time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Suspension {
    pub(crate) task: Option<u32>,
    pub(crate) since: DateTime<Utc>,
    pub(crate) by: ActorId,
    #[serde(default)]
    pub(crate) timers: Vec<Timer>,
}

impl Instance {
    /// The case owner (`owner:` in the definition), once set.
    pub fn owner(&self) -> Option<&ActorId> {
        self.rare.as_deref().and_then(|r| r.owner.as_ref())
    }

    /// Whether the task (by its number) is suspended, on its own or with its instance.
    pub fn is_suspended(&self, task: u32) -> bool {
        self.rare.as_deref().is_some_and(|r| {
            r.suspended
                .iter()
                .any(|s| s.task.is_none() || s.task == Some(task))
        })
    }

    /// Whether the whole instance is suspended.
    pub fn instance_suspended(&self) -> bool {
        self.rare
            .as_deref()
            .is_some_and(|r| r.suspended.iter().any(|s| s.task.is_none()))
    }

    /// Who delegated the task (by its number), while it is delegated.
    pub fn delegated_by(&self, task: u32) -> Option<&ActorId> {
        self.rare
            .as_deref()
            .and_then(|r| r.delegated.iter().find(|d| d.task == task))
            .map(|d| &d.by)
    }

    /// Who the task (by its number) is assigned to and whether they are candidates.
    pub(crate) fn assigned(&self, task: u32) -> Option<&Assigned> {
        self.rare
            .as_deref()
            .and_then(|r| r.assigned.iter().find(|a| a.task == task))
    }
}

/// Checks the allocation state of a restored instance (see [`Instance::check`]): each names an
/// existing task, delegations and task suspensions name open tasks at most once each, at most one
/// instance suspension (an instance that ended while suspended keeps it, harmlessly), an owner
/// only under an `owner:` rule, and suspended timers that belong to what is suspended.
pub(crate) fn check(inst: &Instance, rare: &Rare, def: &ProcessDef) -> Result<(), String> {
    let open = |t: u32| inst.tasks.get(t as usize).is_some_and(|k| k.is_open());
    if rare.owner.is_some() && def.owner.is_none() {
        return Err(format!(
            "the instance has an owner but {} has no owner rule",
            def.key
        ));
    }
    for a in &rare.assigned {
        if a.task as usize >= inst.tasks.len() || a.to.is_empty() {
            return Err(format!("an assignment names task {} or nobody", a.task));
        }
    }
    for (i, d) in rare.delegated.iter().enumerate() {
        if !open(d.task) || rare.delegated[..i].iter().any(|e| e.task == d.task) {
            return Err(format!(
                "a delegation names task {}, which is not open or is delegated twice",
                d.task
            ));
        }
        if inst.tasks[d.task as usize].claimed_by.is_none() {
            return Err(format!("delegated task {} has no claim", d.task));
        }
    }
    for (i, s) in rare.suspended.iter().enumerate() {
        if rare.suspended[..i].iter().any(|e| e.task == s.task) {
            return Err("a task or the instance is suspended twice".into());
        }
        match s.task {
            Some(t) if !open(t) => {
                return Err(format!("a suspension names task {t}, which is not open"));
            }
            _ => {}
        }
        for timer in &s.timers {
            let fits = match s.task {
                Some(t) => timer.task == Some(t),
                None => true,
            };
            if !fits
                || timer.node.index() >= def.nodes.len()
                || timer.task.is_some_and(|t| !open(t))
            {
                return Err("a suspended timer does not belong to what is suspended".into());
            }
        }
    }
    Ok(())
}
