//! Stepping one instance: the run-to-completion loop and [`Step::apply`], the one place where
//! instance state changes.
//!
//! **Invariant:** nothing outside [`Step::apply`] writes to an [`Instance`]; each change writes
//! its audit record and emits its events there, so a store can later persist changes at this
//! one seam.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::Deployed;
use super::error::ExecError;

use crate::def::Behaviour;
use crate::hooks::{Control, Event, Hook, ServiceCall};
use crate::ids::{ActorId, NodeId, RoleId, TaskId};
use crate::model::{
    Comment, Entry, Incident, Instance, Record, Status, Task, TaskState, Timer, TimerKind, Token,
    TokenState,
};
use crate::raci::Action;
use crate::vars::Vars;

/// A change to an instance.
pub(crate) enum Change<'c> {
    Started,
    /// A token moves along a flow; `token: None` makes a new token (a fork's extra branch).
    Flow {
        token: Option<usize>,
        from: NodeId,
        to: NodeId,
        actor: Option<&'c str>,
    },
    Route {
        gateway: NodeId,
        to: NodeId,
        route: Option<u32>,
    },
    /// A token arrives at a join and waits there (it is absorbed into the join's count).
    Arrive {
        token: usize,
    },
    Joined {
        join: NodeId,
    },
    End {
        token: usize,
    },
    OpenTask {
        token: usize,
    },
    Claim {
        task: u32,
        actor: &'c str,
    },
    Complete {
        task: u32,
        actor: &'c str,
        overridden: bool,
        output: Vars,
    },
    Reassign {
        task: u32,
        by: &'c str,
        to: &'c str,
    },
    Comment {
        task: u32,
        actor: &'c str,
        text: &'c str,
    },
    Denied {
        task: u32,
        actor: &'c str,
        action: Action,
        allowed: &'c [RoleId],
    },
    Vetoed {
        task: u32,
        actor: &'c str,
        reason: &'c str,
    },
    SetVars(Vars),
    Fail {
        token: Option<usize>,
        node: Option<NodeId>,
        message: &'c str,
    },
    Retry,
    Finish,
    /// Arms a timer.
    Arm(Timer),
    /// A token waits at a timer node until `at`.
    Wait {
        token: usize,
        at: DateTime<Utc>,
    },
    /// Fires the armed timer at `index`.
    Fire {
        index: usize,
        recipients: &'c [RoleId],
    },
    /// A calendar warning (a computation ran past the years a calendar covers).
    Warn {
        message: &'c str,
    },
}

/// One engine call's work on one locked instance.
pub(crate) struct Step<'a> {
    pub(crate) inst: &'a mut Instance,
    pub(crate) dep: &'a Deployed,
    pub(crate) hooks: &'a [Arc<dyn Hook>],
    pub(crate) now: DateTime<Utc>,
    pub(crate) audit: bool,
    /// The first hook failure of this call, turned into an incident by [`Step::finish`].
    hook_failure: Option<String>,
    /// Instants of the timers armed by this call, for the engine's schedule.
    armed: Vec<DateTime<Utc>>,
    /// The last actor id this call recorded: one call's records share it.
    actor: std::cell::RefCell<Option<ActorId>>,
    /// Whether this call applied any change (a store then commits it).
    pub(crate) changed: bool,
}

impl<'a> Step<'a> {
    pub(crate) fn new(
        inst: &'a mut Instance,
        dep: &'a Deployed,
        hooks: &'a [Arc<dyn Hook>],
        now: DateTime<Utc>,
        audit: bool,
    ) -> Step<'a> {
        Step {
            inst,
            dep,
            hooks,
            now,
            audit,
            hook_failure: None,
            armed: Vec::new(),
            actor: std::cell::RefCell::new(None),
            changed: false,
        }
    }

    /// `id` as a shared [`ActorId`], made once per call.
    fn actor_id(&self, id: &str) -> ActorId {
        let mut cached = self.actor.borrow_mut();
        match &*cached {
            Some(a) if a.as_str() == id => a.clone(),
            _ => cached.insert(ActorId::new(id)).clone(),
        }
    }

    /// The instants of the timers this call armed.
    pub(crate) fn take_armed(&mut self) -> Vec<DateTime<Utc>> {
        std::mem::take(&mut self.armed)
    }

    fn node_name(&self, node: NodeId) -> &'a str {
        let dep: &'a Deployed = self.dep;
        &dep.def.nodes[node.index()].id
    }

    fn task_id(&self, seq: u32) -> TaskId {
        TaskId {
            instance: self.inst.id,
            seq,
        }
    }

    /// Appends an audit record (when audit is on). Inlined, and the record is built only after
    /// the vector has room, so it is written in place: building it first and then copying it in
    /// stalled on reloading the just-written bytes (perf put 42% of a linear run there).
    #[inline(always)]
    fn record(&mut self, what: Entry) {
        if self.audit {
            let at = self.now;
            push_small(&mut self.inst.audit, 3, || Record { at, what });
        }
    }

    /// Delivers an event to every hook. Vetoes are ignored here (see [`Step::guard`]); an abort or
    /// a panic is remembered as this call's hook failure.
    fn emit(&mut self, event: Event<'_>) {
        for hook in self.hooks {
            match catch_unwind(AssertUnwindSafe(|| hook.on_event(&event))) {
                Ok(Control::Continue | Control::Veto(_)) => {}
                Ok(Control::Abort(message)) => {
                    self.hook_failure.get_or_insert(message);
                }
                Err(panic) => {
                    self.hook_failure
                        .get_or_insert(format!("hook panicked: {}", panic_message(&panic)));
                }
            }
        }
    }

    /// Asks every hook whether a completion may go ahead. Nothing changes here.
    /// A veto answers `Err(Control::Veto)`; a failing or panicking hook `Err(Control::Abort)`.
    pub(crate) fn guard(&self, event: Event<'_>) -> Result<(), Control> {
        for hook in self.hooks {
            match catch_unwind(AssertUnwindSafe(|| hook.on_event(&event))) {
                Ok(Control::Continue) => {}
                Ok(refusal) => return Err(refusal),
                Err(panic) => {
                    return Err(Control::Abort(format!(
                        "hook panicked: {}",
                        panic_message(&panic)
                    )));
                }
            }
        }
        Ok(())
    }

    /// Applies one change: updates the state, writes the audit record, emits the events.
    pub(crate) fn apply(&mut self, change: Change<'_>) {
        self.changed = true;
        let id = self.inst.id;
        match change {
            Change::Started => {
                self.record(Entry::Started);
                let def = &self.dep.def.key;
                self.emit(Event::InstanceStarted { instance: id, def });
            }
            Change::Flow {
                token,
                from,
                to,
                actor,
            } => {
                let t = Token {
                    node: to,
                    state: TokenState::Ready,
                };
                match token {
                    Some(i) => self.inst.tokens[i] = t,
                    None => self.inst.tokens.push(t),
                }
                self.record(Entry::Transition {
                    from,
                    to,
                    actor: actor.map(|a| self.actor_id(a)),
                });
                if !self.hooks.is_empty() {
                    self.emit(Event::NodeLeft {
                        instance: id,
                        node: self.node_name(from),
                    });
                    self.emit(Event::NodeEntered {
                        instance: id,
                        node: self.node_name(to),
                    });
                }
            }
            Change::Route { gateway, to, route } => {
                self.record(Entry::Route { gateway, to, route });
            }
            Change::Arrive { token } => self.inst.tokens[token].state = TokenState::Joined,
            Change::Joined { join } => {
                self.inst
                    .tokens
                    .retain(|t| !(t.node == join && t.state == TokenState::Joined));
                self.record(Entry::Joined { node: join });
            }
            Change::End { token } => {
                let node = self.inst.tokens.swap_remove(token).node;
                if !self.hooks.is_empty() {
                    self.emit(Event::NodeLeft {
                        instance: id,
                        node: self.node_name(node),
                    });
                }
            }
            Change::OpenTask { token } => {
                let node = self.inst.tokens[token].node;
                self.inst.tokens[token].state = TokenState::Waiting;
                let seq = self.inst.tasks.len() as u32;
                let now = self.now;
                push_small(&mut self.inst.tasks, 1, || Task {
                    seq,
                    node,
                    state: TaskState::Open,
                    claimed_by: None,
                    created_at: now,
                    escalated_to: None,
                    comments: Box::default(),
                });
                let task = self.task_id(seq);
                self.record(Entry::TaskCreated { task: seq, node });
                if !self.hooks.is_empty() {
                    let responsible = self.dep.def.nodes[node.index()]
                        .raci()
                        .map_or(&[][..], |r| r.responsible());
                    self.emit(Event::TaskCreated {
                        task,
                        node: self.node_name(node),
                        responsible,
                    });
                }
            }
            Change::Claim { task, actor } => {
                self.inst.tasks[task as usize].claimed_by = Some(self.actor_id(actor));
                // A claimed task's claim deadline is met.
                if self
                    .inst
                    .timers
                    .iter()
                    .any(|t| t.task == Some(task) && t.kind == TimerKind::ClaimDue)
                {
                    let timers = std::mem::take(&mut self.inst.timers).into_vec();
                    self.inst.timers = timers
                        .into_iter()
                        .filter(|t| !(t.task == Some(task) && t.kind == TimerKind::ClaimDue))
                        .collect();
                }
                let (t, node) = (self.task_id(task), self.task_node(task));
                self.record(Entry::Claimed {
                    task,
                    actor: self.actor_id(actor),
                });
                self.emit(Event::TaskClaimed {
                    task: t,
                    node,
                    actor,
                });
            }
            Change::Complete {
                task,
                actor,
                overridden,
                output,
            } => {
                self.inst.vars.extend(output);
                self.disarm(task);
                let by = self.actor_id(actor);
                let slot = &mut self.inst.tasks[task as usize];
                slot.state = TaskState::Completed { by, at: self.now };
                let node_id = slot.node;
                if let Some(i) = self
                    .inst
                    .tokens
                    .iter()
                    .position(|t| t.node == node_id && t.state == TokenState::Waiting)
                {
                    self.inst.tokens[i].state = TokenState::Ready;
                }
                let (t, node) = (self.task_id(task), self.task_node(task));
                self.record(Entry::Completed {
                    task,
                    actor: self.actor_id(actor),
                    overridden,
                });
                if !self.hooks.is_empty() {
                    self.emit(Event::TaskCompleted {
                        task: t,
                        node,
                        actor,
                        overridden,
                    });
                    let dep: &'a Deployed = self.dep;
                    if let Some(raci) = dep.def.nodes[node_id.index()].raci() {
                        for role in raci.informed() {
                            self.emit(Event::Notify {
                                task: t,
                                node,
                                role,
                                actor,
                            });
                        }
                    }
                }
            }
            Change::Reassign { task, by, to } => {
                self.inst.tasks[task as usize].claimed_by = Some(self.actor_id(to));
                let (t, node) = (self.task_id(task), self.task_node(task));
                self.record(Entry::Reassigned {
                    task,
                    by: self.actor_id(by),
                    to: self.actor_id(to),
                });
                self.emit(Event::TaskReassigned {
                    task: t,
                    node,
                    by,
                    to,
                });
            }
            Change::Comment { task, actor, text } => {
                let comments = &mut self.inst.tasks[task as usize].comments;
                let mut all = std::mem::take(comments).into_vec();
                all.push(Comment {
                    actor: actor.to_owned(),
                    at: self.now,
                    text: text.to_owned(),
                });
                *comments = all.into_boxed_slice();
                let (t, node) = (self.task_id(task), self.task_node(task));
                self.record(Entry::Commented {
                    task,
                    actor: self.actor_id(actor),
                });
                self.emit(Event::TaskCommented {
                    task: t,
                    node,
                    actor,
                    text,
                });
            }
            Change::Denied {
                task,
                actor,
                action,
                allowed,
            } => {
                let (t, node) = (self.task_id(task), self.task_node(task));
                self.record(Entry::Denied {
                    task,
                    actor: self.actor_id(actor),
                    action,
                    allowed: allowed.into(),
                });
                self.emit(Event::AccessDenied {
                    task: t,
                    node,
                    actor,
                    action,
                    allowed,
                });
            }
            Change::Vetoed {
                task,
                actor,
                reason,
            } => {
                self.record(Entry::Vetoed {
                    task,
                    actor: self.actor_id(actor),
                    reason: Box::from(reason),
                });
            }
            Change::SetVars(vars) => self.inst.vars.extend(vars),
            Change::Fail {
                token,
                node,
                message,
            } => {
                if let Some(i) = token {
                    self.inst.tokens[i].state = TokenState::Failed;
                }
                let mut incidents = std::mem::take(&mut self.inst.incidents).into_vec();
                incidents.push(Incident {
                    node,
                    message: message.to_owned(),
                    at: self.now,
                    resolved: false,
                });
                self.inst.incidents = incidents.into_boxed_slice();
                self.record(Entry::Incident {
                    node,
                    message: Box::from(message),
                });
                let name = node.map_or("", |n| self.node_name(n));
                self.emit(Event::Incident {
                    instance: id,
                    node: name,
                    message,
                });
            }
            Change::Retry => {
                for t in &mut self.inst.tokens {
                    if t.state == TokenState::Failed {
                        t.state = TokenState::Ready;
                    }
                }
                for incident in self.inst.incidents.iter_mut() {
                    incident.resolved = true;
                }
                self.record(Entry::Retried);
            }
            Change::Finish => {
                self.inst.timers = Box::default();
                self.inst.status = Status::Completed;
                self.inst.ended_at = Some(self.now);
                self.record(Entry::InstanceCompleted);
                self.emit(Event::InstanceCompleted { instance: id });
            }
            Change::Arm(timer) => {
                self.armed.push(timer.at);
                let mut timers = std::mem::take(&mut self.inst.timers).into_vec();
                timers.push(timer);
                self.inst.timers = timers.into_boxed_slice();
            }
            Change::Wait { token, at } => {
                let node = self.inst.tokens[token].node;
                self.inst.tokens[token].state = TokenState::Waiting;
                let timer = Timer {
                    at,
                    kind: TimerKind::Wait,
                    task: None,
                    node,
                    sla: false,
                    business: false,
                    fired: false,
                };
                self.apply(Change::Arm(timer));
            }
            Change::Fire { index, recipients } => {
                let timer = self.inst.timers[index].clone();
                if timer.kind == TimerKind::Due {
                    // A deadline stays, marked, so that SLA queries still know it.
                    self.inst.timers[index].fired = true;
                } else {
                    let mut timers = std::mem::take(&mut self.inst.timers).into_vec();
                    timers.remove(index);
                    self.inst.timers = timers.into_boxed_slice();
                }
                if let Some(seq) = timer.task {
                    match timer.kind {
                        TimerKind::Timeout => {
                            self.inst.tasks[seq as usize].state =
                                TaskState::TimedOut { at: self.now };
                            self.disarm(seq);
                            self.wake(timer.node);
                        }
                        TimerKind::Escalation { .. } => {
                            if let Some(role) =
                                super::timers::reassign_target(&self.dep.def, &timer)
                            {
                                let index =
                                    self.dep.def.roles.get_index_of(&role).map(|i| i as u16);
                                let task = &mut self.inst.tasks[seq as usize];
                                task.escalated_to = index;
                                task.claimed_by = None;
                            }
                        }
                        _ => {}
                    }
                } else if timer.kind == TimerKind::Wait {
                    self.wake(timer.node);
                }
                self.record(Entry::Timer {
                    kind: timer.kind,
                    task: timer.task,
                    sla: timer.sla,
                });
                let task = timer.task.map(|seq| self.task_id(seq));
                let node = self.node_name(timer.node);
                self.emit(Event::Timer {
                    instance: id,
                    task,
                    node,
                    kind: timer.kind,
                    sla: timer.sla,
                    recipients,
                });
            }
            Change::Warn { message } => self.record(Entry::Warning {
                message: Box::from(message),
            }),
        }
    }

    /// Drops the timers of a task that ended.
    fn disarm(&mut self, seq: u32) {
        if self.inst.timers.iter().any(|t| t.task == Some(seq)) {
            let timers = std::mem::take(&mut self.inst.timers).into_vec();
            self.inst.timers = timers.into_iter().filter(|t| t.task != Some(seq)).collect();
        }
    }

    /// Makes the token waiting at `node` ready to leave it.
    fn wake(&mut self, node: NodeId) {
        if let Some(t) = self
            .inst
            .tokens
            .iter_mut()
            .find(|t| t.node == node && t.state == TokenState::Waiting)
        {
            t.state = TokenState::Ready;
        }
    }

    fn task_node(&self, seq: u32) -> &'a str {
        self.node_name(self.inst.tasks[seq as usize].node)
    }

    /// Runs every ready token until each waits at a user task, has ended, or failed; then
    /// completes the instance if no token is left.
    pub(crate) fn run(&mut self) -> Result<(), ExecError> {
        let dep: &'a Deployed = self.dep;
        let def = &*dep.def;
        let mut failure: Option<ExecError> = None;
        while let Some(i) = self
            .inst
            .tokens
            .iter()
            .position(|t| t.state == TokenState::Ready)
        {
            let at = self.inst.tokens[i].node;
            let node = &def.nodes[at.index()];
            match &node.behaviour {
                Behaviour::Start => self.apply(Change::Flow {
                    token: Some(i),
                    from: at,
                    to: node.next[0],
                    actor: None,
                }),
                Behaviour::End => self.apply(Change::End { token: i }),
                Behaviour::UserTask(_) => {
                    self.apply(Change::OpenTask { token: i });
                    self.arm_task(self.inst.tasks.len() as u32 - 1);
                }
                Behaviour::Timer(wait) => match self.wait_until(wait) {
                    Ok(at) => self.apply(Change::Wait { token: i, at }),
                    Err(message) => {
                        failure.get_or_insert(self.fail_node(i, at, message));
                    }
                },
                Behaviour::ServiceTask { .. } => match self.call_service(at) {
                    Ok(vars) => {
                        if vars.is_empty() {
                            // Dropping even an empty `serde_json::Map` walks a B-tree iterator,
                            // which showed in profiles at about 60 instructions per service
                            // call. An empty map owns no memory, so forgetting it leaks nothing.
                            std::mem::forget(vars);
                        } else {
                            self.apply(Change::SetVars(vars));
                        }
                        self.apply(Change::Flow {
                            token: Some(i),
                            from: at,
                            to: node.next[0],
                            actor: None,
                        });
                    }
                    Err(message) => {
                        failure.get_or_insert(self.fail_node(i, at, message));
                    }
                },
                Behaviour::Exclusive { routes, default } => {
                    let mut chosen = None;
                    let mut error = None;
                    for (n, route) in routes.iter().enumerate() {
                        match route.cond.eval(&def.cel, &self.inst.vars) {
                            Ok(true) => {
                                chosen = Some((route.to, Some(n as u32)));
                                break;
                            }
                            Ok(false) => {}
                            Err(e) => {
                                error = Some(e);
                                break;
                            }
                        }
                    }
                    if error.is_none() && chosen.is_none() {
                        chosen = default.map(|d| (d, None));
                    }
                    match (chosen, error) {
                        (Some((to, route)), None) => {
                            self.apply(Change::Route {
                                gateway: at,
                                to,
                                route,
                            });
                            self.apply(Change::Flow {
                                token: Some(i),
                                from: at,
                                to,
                                actor: None,
                            });
                        }
                        (_, error) => {
                            let message = error.unwrap_or_else(|| {
                                "no route's condition holds and there is no default".into()
                            });
                            failure.get_or_insert(self.fail_node(i, at, message));
                        }
                    }
                }
                Behaviour::Parallel => {
                    let mut token = Some(i);
                    if node.incoming > 1 {
                        self.apply(Change::Arrive { token: i });
                        let arrived = self
                            .inst
                            .tokens
                            .iter()
                            .filter(|t| t.node == at && t.state == TokenState::Joined)
                            .count() as u32;
                        if arrived < node.incoming {
                            continue;
                        }
                        self.apply(Change::Joined { join: at });
                        token = None;
                    }
                    for &to in &node.next {
                        self.apply(Change::Flow {
                            token: token.take(),
                            from: at,
                            to,
                            actor: None,
                        });
                    }
                }
            }
        }
        if self.inst.tokens.is_empty() && self.inst.status == Status::Running {
            self.apply(Change::Finish);
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Marks token `i` at `at` failed with an incident, and gives the error for the caller.
    fn fail_node(&mut self, i: usize, at: NodeId, message: String) -> ExecError {
        self.apply(Change::Fail {
            token: Some(i),
            node: Some(at),
            message: &message,
        });
        let node = self.node_name(at).to_owned();
        ExecError::Incident {
            instance: self.inst.id,
            node,
            message,
        }
    }

    /// Calls a service task's handler and checks what it returns.
    fn call_service(&self, at: NodeId) -> Result<Vars, String> {
        let Some(handler) = &self.dep.handlers[at.index()] else {
            return Err("no handler registered".to_owned());
        };
        let call = ServiceCall {
            instance: self.inst.id,
            node: self.node_name(at),
            vars: &self.inst.vars,
        };
        let vars = match catch_unwind(AssertUnwindSafe(|| handler.call(&call))) {
            Ok(Ok(vars)) => vars,
            Ok(Err(e)) => return Err(format!("handler failed: {e}")),
            Err(panic) => return Err(format!("handler panicked: {}", panic_message(&panic))),
        };
        if vars.is_empty() {
            return Ok(vars);
        }
        let problems = super::check_vars(&self.dep.def, &vars);
        match problems.first() {
            None => Ok(vars),
            Some((name, problem)) => Err(format!(
                "handler returned variable '{name}' that is {problem}"
            )),
        }
    }

    /// Turns a hook failure during this call into an incident and an error.
    pub(crate) fn finish(&mut self, result: Result<(), ExecError>) -> Result<(), ExecError> {
        if let Some(message) = self.hook_failure.take() {
            // Hooks see this incident too; a hook failing again here changes nothing more.
            self.apply(Change::Fail {
                token: None,
                node: None,
                message: &message,
            });
            return result.and(Err(ExecError::Hook {
                instance: self.inst.id,
                message,
            }));
        }
        result
    }
}

/// Pushes with a growth that starts small: most instances hold a handful of tasks and records,
/// and a waiting instance should not carry a vector's default spare capacity.
///
/// The item is made by `make` after room is made, so that it can be built in place.
#[inline(always)]
fn push_small<T>(v: &mut Vec<T>, first: usize, make: impl FnOnce() -> T) {
    if v.len() == v.capacity() {
        v.reserve_exact(v.len().max(first));
    }
    v.push(make());
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}
