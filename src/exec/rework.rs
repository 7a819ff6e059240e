//! Send back (退回), milestones and interleaving: the engine call and the checks behind a user
//! task's `send_back`, `while_at` and `mutex` (compiled in `def/rules.rs`).
//!
//! - [`Engine::send_back`] withdraws the work after the target (every token at a node a flow
//!   leads to from the target, including the sending task's and those of parallel branches; a
//!   token waiting at a join only when every branch of that join passes through the target) and
//!   opens the target again, claimed by whoever completed it last.
//! - A task with milestones is enabled only while a token of its instance is at one of them.
//! - Within one instance, at most one task of a mutex group is claimed at a time.

use petgraph::Direction;
use petgraph::graph::NodeIndex;

use super::error::ExecError;
use super::step::{Change, Step};
use super::{Engine, TaskId};
use crate::def::ProcessDef;
use crate::def::rules::descendants;
use crate::ids::{ActorId, NodeId};
use crate::model::{Instance, TaskState, Token, TokenState};
use crate::raci::{Action, Actor};

impl Engine {
    /// Sends the case of an open task back to an earlier user task (退回), with a reason.
    ///
    /// Allowed to the task's responsible roles (only its claimant, once claimed) and to its
    /// accountable role. `to` must be one of the task's `send_back` targets. In one change: the
    /// task and every piece of work after `to` are withdrawn (open tasks end
    /// [`TaskState::Cancelled`], their timers are dropped), `to` opens again as a new task,
    /// claimed by whoever completed it last (the accountable role can still reassign it), and the
    /// audit trail records [`Entry::SentBack`](crate::Entry::SentBack) (hooks hear
    /// [`Event::TaskSentBack`](crate::Event::TaskSentBack)). Variables are kept, and the
    /// process-wide SLA keeps running. When the reopened task belongs to a mutex group whose
    /// other task is claimed, it opens unclaimed.
    ///
    /// # Errors
    /// [`ExecError::Denied`] (recorded in the audit trail, nothing else changes);
    /// [`ExecError::NotSendBackTarget`]; [`ExecError::UnknownTask`], [`ExecError::TaskClosed`];
    /// [`ExecError::Deadline`] when the reopened task's deadline cannot be computed (the send
    /// back stands, with an incident).
    ///
    /// # Examples
    /// ```
    /// use procflow::{Actor, Engine, ProcessDef, Vars};
    ///
    /// let engine = Engine::new();
    /// engine.deploy(ProcessDef::from_yaml(r#"
    /// id: fix
    /// version: 1
    /// name: Fix
    /// roles: { eng: { name: Engineer }, cc: { name: Call centre } }
    /// nodes:
    ///   start: { kind: start, next: diagnose }
    ///   diagnose: { kind: user_task, name: Diagnose, raci: { responsible: [eng], accountable: cc }, next: close }
    ///   close:
    ///     kind: user_task
    ///     name: Close
    ///     raci: { responsible: [cc], accountable: cc }
    ///     send_back: [diagnose]
    ///     next: end
    ///   end: { kind: end }
    /// "#)?)?;
    /// let id = engine.start("fix", Vars::new())?;
    /// let (chen, wang) = (Actor::new("chen", ["eng"]), Actor::new("wang", ["cc"]));
    /// engine.complete(engine.tasks(id)?[0].id, &chen, Vars::new())?;
    /// engine.send_back(engine.tasks(id)?[0].id, &wang, "diagnose", "not fixed")?;
    /// let reopened = &engine.tasks(id)?[0];
    /// assert_eq!(&*reopened.node_id, "diagnose");
    /// assert_eq!(reopened.claimed_by.as_deref(), Some("chen"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_back(
        &self,
        task: TaskId,
        actor: &Actor,
        to: &str,
        reason: &str,
    ) -> Result<(), ExecError> {
        crate::telemetry::call!("send_back", instance = %task.instance, task = %task, node = ::tracing::field::Empty, actor = %actor.id);
        self.with_task(task, |step, node| {
            self.authorize(step, task, node, Action::SendBack, actor)?;
            let dep = step.dep;
            let def = &*dep.def;
            let targets = def.nodes[node.index()].send_back();
            let Some(target) = targets
                .iter()
                .copied()
                .find(|t| def.nodes[t.index()].id == to)
            else {
                return Err(ExecError::NotSendBackTarget {
                    task,
                    node: dep.node(node),
                    to: to.to_owned(),
                    allowed: targets
                        .iter()
                        .map(|t| def.nodes[t.index()].id.clone())
                        .collect(),
                });
            };
            let before: Option<ActorId> =
                step.inst.tasks.iter().rev().find_map(|t| match &t.state {
                    TaskState::Completed { by, .. } if t.node == target => Some(by.clone()),
                    _ => None,
                });
            step.apply(Change::SendBack {
                task: task.seq,
                to: target,
                actor: &actor.id,
                reason,
            });
            let ran = step.run();
            if let (Some(by), Some(seq)) = (before, step.open_task_at(target))
                && holder(def, step.inst, seq).is_none()
            {
                step.apply(Change::Claim {
                    task: seq,
                    actor: &by,
                });
            }
            ran
        })
    }
}

impl Step<'_> {
    /// Skips the open tasks whose milestones passed for good: no token is at a milestone and
    /// none is at a node from which a flow leads to one. Such a task could never run again
    /// (WCP 18), and its branch would hold the instance open forever: its token is withdrawn
    /// (the task ends [`TaskState::Cancelled`]) and a token leaves it along its flow. Returns
    /// whether any was skipped (the caller runs the new token).
    ///
    /// Only looks further when a waiting token sits at a task with milestones, so a definition
    /// without them pays one check per waiting token.
    pub(super) fn pass_milestones(&mut self) -> bool {
        let dep = self.dep;
        let def = &*dep.def;
        if !def.milestones {
            return false;
        }
        let tokens = &self.inst.tokens;
        let passed = (0..tokens.len()).find(|&i| {
            let t = tokens[i];
            t.state == TokenState::Waiting && {
                let milestones = def.nodes[t.node.index()].while_at();
                // The task's own token does not count: a milestone only it leads to can only be
                // reached once the task is done, which it never can be.
                !milestones.is_empty()
                    && !(0..tokens.len()).filter(|&k| k != i).any(|k| {
                        let after = descendants(&def.graph, tokens[k].node);
                        milestones.iter().any(|m| after[m.index()])
                    })
            }
        });
        let Some(i) = passed else { return false };
        let from = self.inst.tokens[i].node;
        self.apply(Change::Withdraw { token: i });
        self.apply(Change::Flow {
            token: None,
            from,
            to: def.nodes[from.index()].next[0],
            actor: None,
        });
        true
    }
}

/// The tokens a send back to `to` withdraws, by index, ascending: every token at a node a flow
/// leads to from `to` (`to` included), except a token waiting at a join that also has a branch
/// not through `to` (that branch arrived on its own and does not run again). Validation makes
/// sure no such join lies between `to` and the sending task.
pub(super) fn withdrawn(def: &ProcessDef, tokens: &[Token], to: NodeId) -> Vec<usize> {
    let after = descendants(&def.graph, to);
    tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| after.get(t.node.index()).copied().unwrap_or(false))
        .filter(|(_, t)| {
            t.state != TokenState::Joined
                || def
                    .graph
                    .neighbors_directed(NodeIndex::new(t.node.index()), Direction::Incoming)
                    .all(|p| after[p.index()])
        })
        .map(|(i, _)| i)
        .collect()
}

/// Whether the task at `node` may be claimed and completed now: it has no milestones, or a token
/// of the instance is at one of them.
pub(super) fn enabled(def: &ProcessDef, inst: &Instance, node: NodeId) -> bool {
    let milestones = def.nodes[node.index()].while_at();
    milestones.is_empty() || inst.tokens.iter().any(|t| milestones.contains(&t.node))
}

/// Refuses a task whose milestones are not held.
pub(super) fn check_enabled(step: &Step<'_>, task: TaskId, node: NodeId) -> Result<(), ExecError> {
    let def = &*step.dep.def;
    if enabled(def, step.inst, node) {
        return Ok(());
    }
    Err(ExecError::NotEnabled {
        task,
        node: step.dep.node(node),
        milestones: def.nodes[node.index()]
            .while_at()
            .iter()
            .map(|m| def.nodes[m.index()].id.clone())
            .collect(),
    })
}

/// The other claimed open task of task `seq`'s mutex group, with its claimant.
fn holder<'i>(def: &ProcessDef, inst: &'i Instance, seq: u32) -> Option<(u32, &'i ActorId)> {
    let group = def.nodes[inst.tasks.get(seq as usize)?.node.index()].mutex()?;
    inst.tasks.iter().find_map(|t| match &t.claimed_by {
        Some(by)
            if t.seq != seq && t.is_open() && def.nodes[t.node.index()].mutex() == Some(group) =>
        {
            Some((t.seq, by))
        }
        _ => None,
    })
}

/// Refuses claiming a task (or completing it unclaimed, or giving it to someone) while another
/// task of its mutex group is claimed.
pub(super) fn check_interleaved(
    step: &Step<'_>,
    task: TaskId,
    node: NodeId,
) -> Result<(), ExecError> {
    let def = &*step.dep.def;
    match holder(def, step.inst, task.seq) {
        None => Ok(()),
        Some((seq, by)) => Err(ExecError::Interleaved {
            task,
            node: step.dep.node(node),
            group: def.nodes[node.index()]
                .mutex()
                .unwrap_or_default()
                .to_owned(),
            holder_task: TaskId {
                instance: task.instance,
                seq,
            },
            holder: by.clone(),
        }),
    }
}
