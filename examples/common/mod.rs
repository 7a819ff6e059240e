//! Shared by the host-application examples (`complaint_handling`, `order_provisioning`): the
//! result alias, helpers that build and read instance variables, and the staff's [`Desk`], which
//! works tasks on a manual clock and prints what each person does in local (Shanghai) time.

use std::error::Error;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Asia::Shanghai;
use procflow::{
    Actor, Clock, Engine, ExecError, Fired, InstanceId, ManualClock, TaskId, TaskView, Vars,
};
use serde_json::Value;

/// The examples' result: any error by default.
pub(crate) type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

/// Turns a `json!({...})` object into instance variables.
pub(crate) fn vars(value: Value) -> Vars {
    match value {
        Value::Object(map) => map,
        other => panic!("variables must be a JSON object, not {other}"),
    }
}

/// The string at `path` (object keys, outermost first) in `vars`, if there is one.
pub(crate) fn text<'v>(vars: &'v Vars, path: &[&str]) -> Option<&'v str> {
    lookup(vars, path).and_then(Value::as_str)
}

/// The value at `path` (object keys, outermost first) in `vars`, if there is one.
pub(crate) fn lookup<'v>(vars: &'v Vars, path: &[&str]) -> Option<&'v Value> {
    let (first, rest) = path.split_first()?;
    rest.iter().try_fold(vars.get(*first)?, |v, key| v.get(key))
}

/// Local (Asia/Shanghai) time, the way the staff read it.
pub(crate) fn local(at: DateTime<Utc>) -> String {
    at.with_timezone(&Shanghai).format("%a %H:%M").to_string()
}

/// The staff's desk: finds tasks on work lists, claims and completes them, and moves the clock a
/// little for each action so the audit trail reads like a working day. Every move of the clock
/// ticks the engine, which fires the timers that fell due meanwhile (the hook prints them).
pub(crate) struct Desk<'a> {
    /// The engine the staff work with.
    pub(crate) engine: &'a Engine,
    /// The engine's clock, moved on by the desk.
    pub(crate) clock: &'a ManualClock,
}

impl Desk<'_> {
    /// Moves the clock on and fires what fell due; returns what fired.
    pub(crate) fn advance(&self, by: Duration) -> Vec<Fired> {
        self.clock.advance(by);
        self.engine.tick(self.clock.now())
    }

    /// Moves the clock on by `minutes`, fires what fell due, and gives the new local time.
    pub(crate) fn tick(&self, minutes: i64) -> String {
        self.advance(Duration::minutes(minutes));
        local(self.clock.now())
    }

    /// The task at `node` of `instance` on `actor`'s work list.
    pub(crate) fn find(&self, actor: &Actor, instance: InstanceId, node: &str) -> Result<TaskView> {
        self.engine
            .work_list(actor)
            .into_iter()
            .find(|t| t.id.instance() == instance && &*t.node_id == node)
            .ok_or_else(|| {
                format!("'{node}' of {instance} is not on {}'s work list", actor.id).into()
            })
    }

    /// The open task at `node` of `instance`, whoever may work on it.
    pub(crate) fn open(&self, instance: InstanceId, node: &str) -> Result<TaskId> {
        self.engine
            .tasks(instance)?
            .into_iter()
            .find(|t| &*t.node_id == node)
            .map(|t| t.id)
            .ok_or_else(|| format!("{instance} has no open task at '{node}'").into())
    }

    /// Claims the task at `node` of `instance` from `actor`'s work list.
    pub(crate) fn claim(&self, actor: &Actor, instance: InstanceId, node: &str) -> Result<TaskId> {
        let task = self.find(actor, instance, node)?;
        let at = self.tick(3);
        println!("  {at}  {:<10} claims    {} {node}", actor.id, task.id);
        self.engine.claim(task.id, actor)?;
        Ok(task.id)
    }

    /// Completes `task` (at `node`) as `actor` with `output`, a JSON object of variables to set.
    pub(crate) fn complete(
        &self,
        actor: &Actor,
        task: TaskId,
        node: &str,
        output: Value,
    ) -> Result<(), ExecError> {
        let output = vars(output);
        let at = self.tick(12);
        let sets: Vec<&str> = output.keys().map(String::as_str).collect();
        let sets = if sets.is_empty() {
            String::new()
        } else {
            format!("  (sets {})", sets.join(", "))
        };
        println!("  {at}  {:<10} completes {task} {node}{sets}", actor.id);
        self.engine.complete(task, actor, output)
    }

    /// Takes a task from the actor's work list, claims it and completes it.
    pub(crate) fn work(
        &self,
        actor: &Actor,
        instance: InstanceId,
        node: &str,
        output: Value,
    ) -> Result<()> {
        let task = self.claim(actor, instance, node)?;
        self.complete(actor, task, node, output)?;
        Ok(())
    }

    /// Expects a completion to have run into a failing service task; the operator retries the
    /// instance a little later.
    pub(crate) fn retry_after_incident(&self, attempt: Result<(), ExecError>) -> Result<()> {
        let Err(ExecError::Incident { instance, node, .. }) = attempt else {
            return Err(format!("expected an incident, got {attempt:?}").into());
        };
        let open: Vec<String> = self
            .engine
            .tasks(instance)?
            .into_iter()
            .map(|t| t.node_id.to_string())
            .collect();
        let open = if open.is_empty() {
            "none".to_owned()
        } else {
            open.join(", ")
        };
        println!(
            "           the completion stands, but '{node}' failed; open tasks of {instance}: {open}"
        );
        let at = self.tick(20);
        println!("  {at}  operator   retries   {instance}");
        self.engine.retry(instance)?;
        Ok(())
    }

    /// Adds `actor`'s comment `text` to the open task at `node` of `instance`.
    pub(crate) fn comment(
        &self,
        actor: &Actor,
        instance: InstanceId,
        node: &str,
        text: &str,
    ) -> Result<()> {
        let task = self.open(instance, node)?;
        let at = self.tick(2);
        println!(
            "  {at}  {:<10} comments  {task} {node}: \"{text}\"",
            actor.id
        );
        self.engine.comment(task, actor, text)?;
        Ok(())
    }
}

/// Expects an attempt to be refused (by RACI, or by an allocation rule) and prints why.
pub(crate) fn expect_denied(attempt: Result<(), ExecError>) -> Result<()> {
    match attempt {
        Err(e @ (ExecError::Denied { .. } | ExecError::Refused { .. })) => {
            println!("           DENIED: {e}");
            Ok(())
        }
        other => Err(format!("expected a denial, got {other:?}").into()),
    }
}
