//! Executor behaviour through the public API: RACI, routing, joins, hooks, handlers, variables,
//! re-entrancy, versions, clock, threads, work lists and serde.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use chrono::{DateTime, Duration, Utc};
use procflow::{
    Action, Actor, Completing, Control, DefKey, Engine, EngineBuilder, Entry, Event, ExecError,
    HandlerError, Hook, Instance, InstanceId, ManualClock, NodeRef, ProcessDef, Record, RoleId,
    Status, TaskId, TaskState, TimerKind, Token, TokenState, VarProblem, VarType, Vars, handler_fn,
    hook_fn, veto_fn,
};

mod common;
use common::open;
use serde_json::json;

/// One user task with all four RACI letters; `x` is a role with no letter.
const RACI: &str = r#"
id: raci
version: 1
name: RACI
roles: { r: { name: R }, a: { name: A }, c: { name: C }, i: { name: I }, x: { name: X } }
variables: { note: { type: string } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [r], accountable: a, consulted: [c], informed: [i] }
    next: done
  done: { kind: end }
"#;

/// An exclusive gateway; `ROUTE_NO_DEFAULT` is the same without the default route.
const ROUTE: &str = r#"
id: route
version: 1
name: Route
roles: { r: { name: R }, a: { name: A } }
variables: { amount: { type: number } }
nodes:
  start: { kind: start, next: gw }
  gw:
    kind: exclusive
    routes:
      - { when: "amount > 100", to: big }
      - { when: "amount > 10", to: medium }
      - { default: true, to: small }
  big: { kind: user_task, name: Big, raci: { responsible: [r], accountable: a }, next: done }
  medium: { kind: user_task, name: Medium, raci: { responsible: [r], accountable: a }, next: done }
  small: { kind: user_task, name: Small, raci: { responsible: [r], accountable: a }, next: done }
  done: { kind: end }
"#;

const ROUTE_NO_DEFAULT: &str = r#"
id: route
version: 1
name: Route
roles: { r: { name: R }, a: { name: A } }
variables: { amount: { type: number } }
nodes:
  start: { kind: start, next: gw }
  gw:
    kind: exclusive
    routes:
      - { when: "amount > 100", to: big }
      - { when: "amount > 10", to: medium }
  big: { kind: user_task, name: Big, raci: { responsible: [r], accountable: a }, next: done }
  medium: { kind: user_task, name: Medium, raci: { responsible: [r], accountable: a }, next: done }
  done: { kind: end }
"#;

/// A fork into tasks for two different roles, and a join.
const PARALLEL: &str = r#"
id: par
version: 1
name: Parallel
roles: { r: { name: R }, s: { name: S }, a: { name: A } }
variables: { note: { type: string } }
nodes:
  start: { kind: start, next: fork }
  fork: { kind: parallel, next: [left, right] }
  left: { kind: user_task, name: Left, raci: { responsible: [r], accountable: a }, next: join }
  right: { kind: user_task, name: Right, raci: { responsible: [s], accountable: a }, next: join }
  join: { kind: parallel, next: after }
  after: { kind: user_task, name: After, raci: { responsible: [r], accountable: a }, next: done }
  done: { kind: end }
"#;

/// A fork inside a branch of another fork.
const NESTED: &str = r#"
id: nested
version: 1
name: Nested
roles: { r: { name: R }, a: { name: A } }
nodes:
  start: { kind: start, next: f1 }
  f1: { kind: parallel, next: [a, f2] }
  f2: { kind: parallel, next: [b, c] }
  a: { kind: user_task, name: A, raci: { responsible: [r], accountable: a }, next: j1 }
  b: { kind: user_task, name: B, raci: { responsible: [r], accountable: a }, next: j2 }
  c: { kind: user_task, name: C, raci: { responsible: [r], accountable: a }, next: j2 }
  j2: { kind: parallel, next: d }
  d: { kind: user_task, name: D, raci: { responsible: [r], accountable: a }, next: j1 }
  j1: { kind: parallel, next: after }
  after: { kind: user_task, name: After, raci: { responsible: [r], accountable: a }, next: done }
  done: { kind: end }
"#;

/// A service task, then a user task.
const SERVICE: &str = r#"
id: svc
version: 1
name: Service
roles: { r: { name: R }, a: { name: A } }
variables: { score: { type: integer } }
nodes:
  start: { kind: start, next: check }
  check: { kind: service_task, name: Check, handler: credit, next: review }
  review: { kind: user_task, name: Review, raci: { responsible: [r], accountable: a }, next: done }
  done: { kind: end }
"#;

const VARS: &str = r#"
id: vars
version: 1
name: Vars
roles: {}
variables:
  severity: { type: string, enum: [low, high], required: true }
  amount: { type: number, default: 0 }
  note: { type: string }
nodes:
  start: { kind: start, next: done }
  done: { kind: end }
"#;

fn def(text: &str) -> ProcessDef {
    ProcessDef::from_yaml(text).unwrap_or_else(|e| panic!("test definition is invalid:\n{e}"))
}

fn engine_with(builder: &mut EngineBuilder, defs: &[&str]) -> Engine {
    let engine = builder.build();
    for text in defs {
        engine.deploy(def(text)).expect("deploy");
    }
    engine
}

fn engine(defs: &[&str]) -> Engine {
    engine_with(&mut Engine::builder(), defs)
}

fn vars(value: serde_json::Value) -> Vars {
    value.as_object().expect("an object").clone()
}

fn roles(ids: &[&str]) -> Vec<RoleId> {
    ids.iter().map(|r| RoleId::new(*r)).collect()
}

/// The open task at `node`.
fn task_at(engine: &Engine, id: InstanceId, node: &str) -> TaskId {
    engine
        .tasks(id)
        .unwrap()
        .into_iter()
        .find(|t| &*t.node_id == node)
        .unwrap_or_else(|| panic!("no open task at {node}"))
        .id
}

fn node(engine: &Engine, id: InstanceId, node: &str) -> procflow::NodeId {
    engine
        .definition_of(id)
        .unwrap()
        .node_id(node)
        .unwrap_or_else(|| panic!("no node {node}"))
}

/// The node as errors name it.
fn node_ref(engine: &Engine, id: InstanceId, name: &str) -> NodeRef {
    NodeRef {
        id: node(engine, id, name),
        name: name.into(),
    }
}

/// `after` is `before` plus exactly the audit entries `added`.
fn assert_only_audit_added(before: &Instance, after: &Instance, added: &[Entry]) {
    assert_eq!(after.status(), before.status());
    assert_eq!(after.vars(), before.vars());
    assert_eq!(after.tokens(), before.tokens());
    assert_eq!(after.tasks(), before.tasks());
    assert_eq!(after.incidents(), before.incidents());
    assert_eq!(after.ended_at(), before.ended_at());
    let n = before.audit().len();
    assert_eq!(&after.audit()[..n], before.audit());
    let new: Vec<&Entry> = after.audit()[n..].iter().map(|r| &r.what).collect();
    assert_eq!(new, added.iter().collect::<Vec<_>>());
}

fn audit_entries(inst: &Instance) -> Vec<Entry> {
    inst.audit().iter().map(|r| r.what.clone()).collect()
}

// ---------------------------------------------------------------------------------------------
// RACI

#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    R,
    A,
    C,
    I,
    Nobody,
}

impl Who {
    fn actor(self) -> Actor {
        let role = match self {
            Who::R => "r",
            Who::A => "a",
            Who::C => "c",
            Who::I => "i",
            Who::Nobody => "x",
        };
        Actor::new("p", [role])
    }
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Allowed,
    Denied(&'static [&'static str]),
    AlreadyClaimed,
}

/// The RACI rules of the doc comments on `Engine::claim`, `complete`, `comment` and `reassign`.
fn expected(action: Action, who: Who, claimed_by_other: bool) -> Outcome {
    use Outcome::*;
    match action {
        // Issue 14: an actor without R is refused (and audited) for the role, claim or not.
        Action::Claim if claimed_by_other && who == Who::R => AlreadyClaimed,
        Action::Claim if who == Who::R => Allowed,
        Action::Claim => Denied(&["r"]),
        Action::Complete if who == Who::A => Allowed,
        Action::Complete if who == Who::R && !claimed_by_other => Allowed,
        Action::Complete => Denied(&["r", "a"]),
        Action::Comment if matches!(who, Who::R | Who::A | Who::C) => Allowed,
        Action::Comment => Denied(&["r", "a", "c"]),
        Action::Reassign if who == Who::A => Allowed,
        Action::Reassign => Denied(&["a"]),
        other => panic!("no rule for {other:?}: add it to this table"),
    }
}

#[test]
fn raci_matrix() {
    let engine = engine(&[RACI]);
    for action in [
        Action::Claim,
        Action::Complete,
        Action::Comment,
        Action::Reassign,
    ] {
        for who in [Who::R, Who::A, Who::C, Who::I, Who::Nobody] {
            for claimed in [false, true] {
                let case = format!("{action:?} by {who:?}, claimed by another: {claimed}");
                let id = engine.start("raci", Vars::new()).unwrap();
                let task = task_at(&engine, id, "work");
                if claimed {
                    engine.claim(task, &Actor::new("other", ["r"])).unwrap();
                }
                let before = engine.instance(id).unwrap();
                let actor = who.actor();
                let result = match action {
                    Action::Claim => engine.claim(task, &actor),
                    Action::Complete => engine.complete(task, &actor, Vars::new()),
                    Action::Comment => engine.comment(task, &actor, "looks fine"),
                    Action::Reassign => engine.reassign(task, &actor, &Actor::new("target", ["r"])),
                    other => panic!("no call for {other:?}"),
                };
                let after = engine.instance(id).unwrap();
                match expected(action, who, claimed) {
                    Outcome::Denied(allowed) => {
                        assert_eq!(
                            result,
                            Err(ExecError::Denied {
                                actor: "p".into(),
                                action,
                                task,
                                node: node_ref(&engine, id, "work"),
                                allowed: roles(allowed),
                                claimed_by: claimed.then(|| "other".into()),
                            }),
                            "{case}"
                        );
                        assert_only_audit_added(
                            &before,
                            &after,
                            &[Entry::Denied {
                                task: task.seq(),
                                actor: "p".into(),
                                action,
                                allowed: roles(allowed).into(),
                            }],
                        );
                    }
                    Outcome::AlreadyClaimed => {
                        assert_eq!(
                            result,
                            Err(ExecError::AlreadyClaimed {
                                task,
                                node: node_ref(&engine, id, "work"),
                                by: "other".into()
                            }),
                            "{case}"
                        );
                        assert_eq!(after, before, "{case}");
                    }
                    Outcome::Allowed => {
                        assert_eq!(result, Ok(()), "{case}");
                        let t = &after.tasks()[0];
                        let last = &after.audit().last().unwrap().what;
                        match action {
                            Action::Claim => {
                                assert_eq!(t.claimed_by(), Some("p"), "{case}");
                                assert_eq!(
                                    *last,
                                    Entry::Claimed {
                                        task: task.seq(),
                                        actor: "p".into()
                                    },
                                    "{case}"
                                );
                            }
                            Action::Complete => {
                                assert_eq!(after.status(), Status::Completed, "{case}");
                                assert!(
                                    matches!(t.state(), TaskState::Completed { by, .. } if &**by == "p"),
                                    "{case}"
                                );
                                let completed: Vec<&Entry> = after
                                    .audit()
                                    .iter()
                                    .map(|r| &r.what)
                                    .filter(|e| matches!(e, Entry::Completed { .. }))
                                    .collect();
                                assert_eq!(
                                    completed,
                                    [&Entry::Completed {
                                        task: task.seq(),
                                        actor: "p".into(),
                                        overridden: who == Who::A,
                                        // The role acted in: a (1) overriding, else r (0).
                                        role: Some(if who == Who::A { 1 } else { 0 }),
                                    }],
                                    "{case}"
                                );
                            }
                            Action::Comment => {
                                assert_eq!(t.comments().len(), 1, "{case}");
                                assert_eq!(t.comments()[0].actor, "p");
                                assert_eq!(t.comments()[0].text, "looks fine");
                                assert_eq!(
                                    *last,
                                    Entry::Commented {
                                        task: task.seq(),
                                        actor: "p".into()
                                    },
                                    "{case}"
                                );
                            }
                            Action::Reassign => {
                                assert_eq!(t.claimed_by(), Some("target"), "{case}");
                                assert_eq!(
                                    *last,
                                    Entry::Reassigned {
                                        task: task.seq(),
                                        by: "p".into(),
                                        to: "target".into()
                                    },
                                    "{case}"
                                );
                            }
                            other => panic!("no check for {other:?}"),
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn claim_by_the_claimant_again_is_allowed() {
    let engine = engine(&[RACI]);
    let id = engine.start("raci", Vars::new()).unwrap();
    let task = task_at(&engine, id, "work");
    let ann = Actor::new("ann", ["r"]);
    engine.claim(task, &ann).unwrap();
    assert_eq!(engine.claim(task, &ann), Ok(()));
    assert_eq!(
        engine.instance(id).unwrap().tasks()[0].claimed_by(),
        Some("ann")
    );
}

#[test]
fn reassign_to_an_actor_without_a_responsible_role_is_denied() {
    let engine = engine(&[RACI]);
    let id = engine.start("raci", Vars::new()).unwrap();
    let task = task_at(&engine, id, "work");
    let before = engine.instance(id).unwrap();
    let result = engine.reassign(task, &Actor::new("boss", ["a"]), &Actor::new("carl", ["c"]));
    // Issue 14: the refusal is the accountable's refused reassign, naming who attempted it,
    // not carl's failed claim.
    assert_eq!(
        result,
        Err(ExecError::ReassignRefused {
            by: "boss".into(),
            to: "carl".into(),
            task,
            node: node_ref(&engine, id, "work"),
            allowed: roles(&["r"]),
        })
    );
    let after = engine.instance(id).unwrap();
    assert_only_audit_added(
        &before,
        &after,
        &[Entry::ReassignRefused {
            task: task.seq(),
            by: "boss".into(),
            to: "carl".into(),
        }],
    );
}

#[test]
fn actions_on_a_completed_task_are_refused() {
    let engine = engine(&[RACI]);
    let id = engine.start("raci", Vars::new()).unwrap();
    let task = task_at(&engine, id, "work");
    let ann = Actor::new("ann", ["r"]);
    engine.complete(task, &ann, Vars::new()).unwrap();
    let closed = Err(ExecError::TaskClosed {
        task,
        node: node_ref(&engine, id, "work"),
        state: "already completed",
    });
    assert_eq!(engine.claim(task, &ann), closed);
    assert_eq!(engine.complete(task, &ann, Vars::new()), closed);
    assert_eq!(engine.comment(task, &ann, "late"), closed);
}

/// Logs every event, and every completion its veto check sees as `completing ...`.
struct Collect(Arc<Mutex<Vec<String>>>);

impl Hook for Collect {
    fn on_event(&self, ev: &Event) -> Control {
        let line = match ev {
            Event::InstanceStarted { def, .. } => format!("started {def}"),
            Event::InstanceCompleted { .. } => "instance completed".to_owned(),
            Event::NodeEntered { node, .. } => format!("enter {node}"),
            Event::NodeLeft { node, .. } => format!("leave {node}"),
            Event::TaskCreated {
                node, responsible, ..
            } => format!("created {node} for {responsible:?}"),
            Event::TaskClaimed { node, actor, .. } => format!("claimed {node} by {actor}"),
            Event::TaskCompleted {
                node,
                actor,
                overridden,
                ..
            } => format!("completed {node} by {actor} overridden={overridden}"),
            Event::Notify {
                node, role, actor, ..
            } => format!("notify {role}: {node} done by {actor}"),
            other => format!("{other:?}"),
        };
        self.0.lock().unwrap().push(line);
        Control::Continue
    }

    fn on_completing(&self, c: &Completing<'_>) -> Control {
        self.0
            .lock()
            .unwrap()
            .push(format!("completing {} by {}", c.node, c.actor));
        Control::Continue
    }
}

fn collect_events() -> (Arc<Mutex<Vec<String>>>, impl procflow::Hook + 'static) {
    let log = Arc::new(Mutex::new(Vec::new()));
    (Arc::clone(&log), Collect(log))
}

#[test]
fn informed_roles_are_notified_on_completion() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    let engine = engine_with(
        Engine::builder().hook(hook_fn(move |ev: &Event| {
            if let Event::Notify {
                task,
                node,
                role,
                actor,
            } = ev
            {
                sink.lock().unwrap().push((
                    *task,
                    node.to_string(),
                    (*role).clone(),
                    actor.to_string(),
                ));
            }
        })),
        &[RACI],
    );
    let id = engine.start("raci", Vars::new()).unwrap();
    let task = task_at(&engine, id, "work");
    engine
        .claim(task, &Actor::new("ann", ["r"]))
        .expect("claim");
    assert!(
        log.lock().unwrap().is_empty(),
        "nobody is told before completion"
    );
    engine
        .complete(task, &Actor::new("ann", ["r"]), Vars::new())
        .unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        vec![(task, "work".to_owned(), RoleId::new("i"), "ann".to_owned())]
    );
}

#[test]
fn hook_event_order() {
    let (log, hook) = collect_events();
    let engine = engine_with(Engine::builder().hook(hook), &[RACI]);
    let ann = Actor::new("ann", ["r"]);
    let id = engine.start("raci", Vars::new()).unwrap();
    let task = task_at(&engine, id, "work");
    engine.claim(task, &ann).unwrap();
    engine.complete(task, &ann, Vars::new()).unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        [
            "started raci@1",
            "leave start",
            "enter work",
            "created work for [RoleId(\"r\")]",
            "claimed work by ann",
            "completing work by ann",
            "completed work by ann overridden=false",
            "leave work",
            "enter done",
            "leave done",
            "instance completed",
            // A follow-up from the outbox: after the call's other events.
            "notify i: work done by ann",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Gateways

#[test]
fn exclusive_takes_the_first_true_route_in_order() {
    let engine = engine(&[ROUTE]);
    // The route is named by its position in the gateway's routes: 0 is `amount > 100`, 1 is
    // `amount > 10`, and `None` the default.
    for (amount, to, condition) in [
        (json!(500), "big", Some(0)),
        (json!(150.5), "big", Some(0)),
        (json!(50), "medium", Some(1)),
        (json!(5), "small", None),
    ] {
        let id = engine
            .start("route", vars(json!({ "amount": amount })))
            .unwrap_or_else(|e| panic!("amount {amount}: {e}"));
        assert_eq!(open(&engine, id), [to], "amount {amount}");
        let inst = engine.instance(id).unwrap();
        let routes: Vec<&Entry> = inst
            .audit()
            .iter()
            .map(|r| &r.what)
            .filter(|e| matches!(e, Entry::Route { .. }))
            .collect();
        assert_eq!(
            routes,
            [&Entry::Route {
                gateway: node(&engine, id, "gw"),
                to: node(&engine, id, to),
                route: condition,
            }],
            "amount {amount}"
        );
    }
}

#[test]
fn exclusive_without_a_matching_route_is_an_incident() {
    let engine = engine(&[ROUTE_NO_DEFAULT]);
    let result = engine.start("route", vars(json!({ "amount": 5 })));
    let ids = engine.instances();
    assert_eq!(ids.len(), 1, "the instance exists, with an incident");
    let id = ids[0];
    let message = "no route's condition holds and there is no default";
    let incident = Err(ExecError::Incident {
        instance: id,
        node: node_ref(&engine, id, "gw"),
        message: message.into(),
    });
    assert_eq!(result, incident.clone().map(|()| id));
    let gw = node(&engine, id, "gw");
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Running);
    assert_eq!(
        inst.tokens(),
        [Token {
            node: gw,
            state: TokenState::Failed,
            run: 0,
        }]
    );
    assert_eq!(inst.incidents().len(), 1);
    assert_eq!(inst.incidents()[0].node, Some(gw));
    assert_eq!(inst.incidents()[0].message, message);
    assert!(!inst.incidents()[0].resolved);
    assert_eq!(
        inst.audit().last().unwrap().what,
        Entry::Incident {
            node: Some(gw),
            message: message.into()
        }
    );

    // The variables are the same, so the retry fails the same way: the old incident is resolved
    // and a new one is open.
    assert_eq!(engine.retry(id), incident);
    let inst = engine.instance(id).unwrap();
    let resolved: Vec<bool> = inst.incidents().iter().map(|i| i.resolved).collect();
    assert_eq!(resolved, [true, false]);
    assert_eq!(inst.tokens()[0].state, TokenState::Failed);
    assert!(engine.tasks(id).unwrap().is_empty());
}

#[test]
fn parallel_fork_and_join() {
    let engine = engine(&[PARALLEL]);
    let ann = Actor::new("ann", ["r"]);
    let sue = Actor::new("sue", ["s"]);
    let id = engine.start("par", Vars::new()).unwrap();
    assert_eq!(open(&engine, id), ["left", "right"]);

    engine
        .complete(task_at(&engine, id, "left"), &ann, Vars::new())
        .unwrap();
    assert_eq!(
        open(&engine, id),
        ["right"],
        "the join waits for the other branch"
    );
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Running);
    assert!(!audit_entries(&inst).contains(&Entry::Joined {
        node: node(&engine, id, "join")
    }));

    engine
        .complete(task_at(&engine, id, "right"), &sue, Vars::new())
        .unwrap();
    assert_eq!(open(&engine, id), ["after"]);
    let inst = engine.instance(id).unwrap();
    let nodes: Vec<String> = inst
        .tasks()
        .iter()
        .map(|t| {
            engine
                .definition_of(id)
                .unwrap()
                .node(t.node())
                .id()
                .to_owned()
        })
        .collect();
    assert_eq!(
        nodes,
        ["left", "right", "after"],
        "`after` opened exactly once"
    );
    let joined = audit_entries(&inst)
        .into_iter()
        .filter(|e| matches!(e, Entry::Joined { .. }))
        .count();
    assert_eq!(joined, 1);

    engine
        .complete(task_at(&engine, id, "after"), &ann, Vars::new())
        .unwrap();
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Completed);
    assert!(inst.tokens().is_empty());
}

#[test]
fn nested_fork_inside_a_fork() {
    let engine = engine(&[NESTED]);
    let ann = Actor::new("ann", ["r"]);
    let id = engine.start("nested", Vars::new()).unwrap();
    let done = |node: &str| {
        engine
            .complete(task_at(&engine, id, node), &ann, Vars::new())
            .unwrap();
        open(&engine, id)
    };
    assert_eq!(open(&engine, id), ["a", "b", "c"]);
    assert_eq!(done("b"), ["a", "c"]);
    assert_eq!(done("c"), ["a", "d"], "the inner join fired");
    assert_eq!(done("a"), ["d"], "the outer join waits for d");
    assert_eq!(done("d"), ["after"]);
    assert_eq!(done("after"), Vec::<String>::new());
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Completed);
    assert_eq!(inst.tasks().len(), 5, "every task opened exactly once");
    let joined: Vec<Entry> = audit_entries(&inst)
        .into_iter()
        .filter(|e| matches!(e, Entry::Joined { .. }))
        .collect();
    assert_eq!(
        joined,
        [
            Entry::Joined {
                node: node(&engine, id, "j2")
            },
            Entry::Joined {
                node: node(&engine, id, "j1")
            }
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Hooks

#[test]
fn veto_keeps_the_task_open() {
    let engine = engine_with(
        Engine::builder().hook(veto_fn(|c: &Completing<'_>| {
            assert_eq!((c.node, c.actor), ("work", "ann"));
            assert_eq!(c.output, &vars(json!({ "note": "done" })));
            assert!(c.vars.is_empty(), "nothing changed yet");
            Control::Veto("four-eyes check missing".into())
        })),
        &[RACI],
    );
    let id = engine.start("raci", Vars::new()).unwrap();
    let task = task_at(&engine, id, "work");
    let before = engine.instance(id).unwrap();
    let result = engine.complete(
        task,
        &Actor::new("ann", ["r"]),
        vars(json!({ "note": "done" })),
    );
    assert_eq!(
        result,
        Err(ExecError::Vetoed {
            task,
            node: node_ref(&engine, id, "work"),
            reason: "four-eyes check missing".into()
        })
    );
    let after = engine.instance(id).unwrap();
    assert_eq!(after.tasks()[0].state(), &TaskState::Open);
    assert!(after.vars().is_empty());
    assert_only_audit_added(
        &before,
        &after,
        &[Entry::Vetoed {
            task: task.seq(),
            actor: "ann".into(),
            reason: "four-eyes check missing".into(),
        }],
    );
}

/// Every hook that hears the events, in registration order.
fn listener(name: &'static str, log: &Arc<Mutex<Vec<String>>>) -> impl Hook + 'static {
    let sink = Arc::clone(log);
    hook_fn(move |ev: &Event| {
        if let Event::TaskCreated { node, .. } | Event::TaskClaimed { node, .. } = ev {
            sink.lock().unwrap().push(format!("{name} {node}"));
        }
    })
}

/// An observing hook that aborts fails the call, but the call's change is committed and stays,
/// no incident is recorded, and the other hooks still hear the event.
#[test]
fn aborting_hook_fails_the_call_but_the_change_stays() {
    let aborted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&aborted);
    let heard = Arc::new(Mutex::new(Vec::new()));
    let engine = engine_with(
        Engine::builder()
            .hook(listener("before", &heard))
            .hook(hook_fn(move |ev: &Event| match ev {
                Event::TaskCreated { .. } if !flag.swap(true, Ordering::SeqCst) => {
                    Control::Abort("mail server down".into())
                }
                _ => Control::Continue,
            }))
            .hook(listener("after", &heard)),
        &[RACI],
    );
    let result = engine.start("raci", Vars::new());
    let id = engine.instances()[0];
    assert_eq!(
        result,
        Err(ExecError::Hook {
            instance: id,
            message: "mail server down".into()
        })
    );
    assert_eq!(
        *heard.lock().unwrap(),
        ["before work", "after work"],
        "the other hooks heard the event"
    );
    let inst = engine.instance(id).unwrap();
    assert!(inst.incidents().is_empty(), "{:?}", inst.incidents());
    assert_eq!(open(&engine, id), ["work"], "the change the hook saw stays");

    let ann = Actor::new("ann", ["r"]);
    engine
        .complete(task_at(&engine, id, "work"), &ann, Vars::new())
        .unwrap();
    assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
    let second = engine.start("raci", Vars::new()).unwrap();
    assert_eq!(open(&engine, second), ["work"]);
}

#[test]
fn panicking_hook_fails_the_call_but_the_change_stays() {
    let heard = Arc::new(Mutex::new(Vec::new()));
    let engine = engine_with(
        Engine::builder()
            .hook(hook_fn(|ev: &Event| {
                if let Event::TaskClaimed { .. } = ev {
                    panic!("hook bug");
                }
            }))
            .hook(listener("other", &heard)),
        &[RACI],
    );
    let ann = Actor::new("ann", ["r"]);
    let id = engine.start("raci", Vars::new()).unwrap();
    let task = task_at(&engine, id, "work");
    assert_eq!(
        engine.claim(task, &ann),
        Err(ExecError::Hook {
            instance: id,
            message: "hook panicked: hook bug".into()
        })
    );
    assert_eq!(*heard.lock().unwrap(), ["other work", "other work"]);
    let inst = engine.instance(id).unwrap();
    assert_eq!(
        inst.tasks()[0].claimed_by(),
        Some("ann"),
        "the claim stands"
    );
    assert!(inst.incidents().is_empty(), "{:?}", inst.incidents());

    engine.complete(task, &ann, Vars::new()).unwrap();
    assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
}

/// `Control::Abort` from `on_completing` is a hook failure, not a veto: the completion is
/// refused, the instance records an incident and the caller gets `ExecError::Hook`.
#[test]
fn aborting_veto_hook_is_a_hook_failure_not_a_veto() {
    let engine = engine_with(
        Engine::builder().hook(veto_fn(|_: &Completing<'_>| {
            Control::Abort("audit store down".into())
        })),
        &[RACI],
    );
    let id = engine.start("raci", Vars::new()).unwrap();
    let task = task_at(&engine, id, "work");
    let result = engine.complete(task, &Actor::new("ann", ["r"]), Vars::new());
    assert_eq!(
        result,
        Err(ExecError::Hook {
            instance: id,
            message: "audit store down".into()
        })
    );
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.tasks()[0].state(), &TaskState::Open, "not completed");
    assert_eq!(inst.incidents().len(), 1);
    assert_eq!(inst.incidents()[0].node, None);
    assert_eq!(inst.incidents()[0].message, "audit store down");
    assert!(
        !audit_entries(&inst)
            .iter()
            .any(|e| matches!(e, Entry::Vetoed { .. }))
    );
}

#[test]
fn panicking_veto_hook_refuses_the_completion_with_an_incident() {
    let engine = engine_with(
        Engine::builder().hook(veto_fn(|_: &Completing<'_>| panic!("veto bug"))),
        &[RACI],
    );
    let id = engine.start("raci", Vars::new()).unwrap();
    let task = task_at(&engine, id, "work");
    let result = engine.complete(task, &Actor::new("ann", ["r"]), Vars::new());
    assert!(
        matches!(&result, Err(ExecError::Hook { instance, message })
            if *instance == id && message.contains("veto bug")),
        "{result:?}"
    );
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.tasks()[0].state(), &TaskState::Open, "not completed");
    assert_eq!(inst.incidents().len(), 1);
    assert!(inst.incidents()[0].message.contains("veto bug"));
}

// ---------------------------------------------------------------------------------------------
// Service handlers

/// A `credit` handler that fails (by `fail`) on its first call and then returns a score.
fn flaky(fail: fn() -> Result<Vars, HandlerError>) -> (Arc<AtomicUsize>, Engine) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let engine = engine_with(
        Engine::builder().handler(
            "credit",
            handler_fn(move |call| {
                assert_eq!(call.node, "check");
                if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                    fail()
                } else {
                    Ok(vars(json!({ "score": 700 })))
                }
            }),
        ),
        &[SERVICE],
    );
    (calls, engine)
}

fn check_failed_then_retry(
    engine: &Engine,
    calls: &AtomicUsize,
    result: Result<InstanceId, ExecError>,
    message: &str,
) {
    let id = engine.instances()[0];
    assert_eq!(
        result,
        Err(ExecError::Incident {
            instance: id,
            node: node_ref(engine, id, "check"),
            message: message.into()
        })
    );
    let check = node(engine, id, "check");
    let inst = engine.instance(id).unwrap();
    assert_eq!(
        inst.tokens(),
        [Token {
            node: check,
            state: TokenState::Failed,
            run: 0,
        }]
    );
    assert_eq!(inst.incidents().len(), 1);
    assert_eq!(inst.incidents()[0].node, Some(check));
    assert_eq!(inst.incidents()[0].message, message);
    assert!(!inst.incidents()[0].resolved);
    assert!(inst.tasks().is_empty());

    assert_eq!(engine.retry(id), Ok(()));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.vars(), &vars(json!({ "score": 700 })));
    assert!(inst.incidents()[0].resolved);
    assert!(audit_entries(&inst).contains(&Entry::Retried));
    assert_eq!(open(engine, id), ["review"]);
    assert_eq!(engine.retry(id), Err(ExecError::NothingToRetry(id)));

    engine
        .complete(
            task_at(engine, id, "review"),
            &Actor::new("ann", ["r"]),
            Vars::new(),
        )
        .unwrap();
    assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
    assert_eq!(engine.retry(id), Err(ExecError::InstanceCompleted(id)));
}

#[test]
fn handler_error_is_an_incident_and_retry_proceeds() {
    let (calls, engine) = flaky(|| Err(HandlerError::new("bureau unreachable")));
    let result = engine.start("svc", Vars::new());
    check_failed_then_retry(
        &engine,
        &calls,
        result,
        "handler failed: bureau unreachable",
    );
}

#[test]
fn handler_panic_is_an_incident_and_retry_proceeds() {
    let (calls, engine) = flaky(|| panic!("bureau exploded"));
    let result = engine.start("svc", Vars::new());
    check_failed_then_retry(&engine, &calls, result, "handler panicked: bureau exploded");
}

#[test]
fn handler_returning_an_undeclared_variable_is_an_incident() {
    let engine = engine_with(
        Engine::builder().handler("credit", handler_fn(|_| Ok(vars(json!({ "bogus": 1 }))))),
        &[SERVICE],
    );
    let result = engine.start("svc", Vars::new());
    let id = engine.instances()[0];
    let message = "handler returned variable 'bogus' that is not declared by the process";
    assert_eq!(
        result,
        Err(ExecError::Incident {
            instance: id,
            node: node_ref(&engine, id, "check"),
            message: message.into()
        })
    );
    let inst = engine.instance(id).unwrap();
    assert!(
        inst.vars().is_empty(),
        "nothing the handler returned was set"
    );
    assert_eq!(inst.tokens()[0].state, TokenState::Failed);
    assert_eq!(inst.incidents()[0].message, message);
}

// ---------------------------------------------------------------------------------------------
// Variables

#[test]
fn start_rejects_bad_variables_and_creates_nothing() {
    let engine = engine(&[VARS]);
    let cases = [
        (
            json!({ "severity": "low", "colour": "red" }),
            vec![("colour", VarProblem::Undeclared)],
        ),
        (
            json!({ "severity": 5 }),
            vec![(
                "severity",
                VarProblem::WrongType {
                    expected: VarType::String,
                },
            )],
        ),
        (
            json!({ "severity": "mid" }),
            vec![("severity", VarProblem::NotAllowed)],
        ),
        (json!({}), vec![("severity", VarProblem::Missing)]),
        (
            json!({ "amount": "a lot" }),
            vec![
                (
                    "amount",
                    VarProblem::WrongType {
                        expected: VarType::Number,
                    },
                ),
                ("severity", VarProblem::Missing),
            ],
        ),
    ];
    for (given, problems) in cases {
        let result = engine.start("vars", vars(given.clone()));
        assert_eq!(
            result,
            Err(ExecError::Variables {
                problems: problems
                    .into_iter()
                    .map(|(n, p)| (n.to_owned(), p))
                    .collect()
            }),
            "{given}"
        );
        assert!(engine.instances().is_empty(), "{given}: nothing started");
    }
}

#[test]
fn start_applies_defaults() {
    let engine = engine(&[VARS]);
    let id = engine
        .start("vars", vars(json!({ "severity": "high" })))
        .unwrap();
    assert_eq!(
        engine.instance(id).unwrap().vars(),
        &vars(json!({ "severity": "high", "amount": 0 }))
    );
    let id = engine
        .start(
            "vars",
            vars(json!({ "severity": "low", "amount": 12.5, "note": "n" })),
        )
        .unwrap();
    assert_eq!(
        engine.instance(id).unwrap().vars(),
        &vars(json!({ "severity": "low", "amount": 12.5, "note": "n" }))
    );
}

#[test]
fn complete_with_bad_output_changes_nothing() {
    let engine = engine(&[RACI]);
    let id = engine.start("raci", Vars::new()).unwrap();
    let task = task_at(&engine, id, "work");
    let ann = Actor::new("ann", ["r"]);
    engine.claim(task, &ann).unwrap();
    let before = engine.instance(id).unwrap();
    assert_eq!(
        engine.complete(task, &ann, vars(json!({ "bogus": true }))),
        Err(ExecError::Variables {
            problems: vec![("bogus".into(), VarProblem::Undeclared)]
        })
    );
    assert_eq!(engine.instance(id).unwrap(), before);
    assert_eq!(
        engine.complete(task, &ann, vars(json!({ "note": 5 }))),
        Err(ExecError::Variables {
            problems: vec![(
                "note".into(),
                VarProblem::WrongType {
                    expected: VarType::String
                }
            )]
        })
    );
    assert_eq!(engine.instance(id).unwrap(), before);
    engine
        .complete(task, &ann, vars(json!({ "note": "ok" })))
        .unwrap();
    assert_eq!(
        engine.instance(id).unwrap().vars(),
        &vars(json!({ "note": "ok" }))
    );
}

// ---------------------------------------------------------------------------------------------
// Re-entrancy

/// Hooks hear events after the call's commit, with no instance locked: a hook may call the
/// engine for its own instance (which it sees as committed) and for others, and the events of
/// its own call are delivered to it in turn.
#[test]
fn hook_may_call_back_into_the_engine_after_the_commit() {
    let cell: Arc<OnceLock<Weak<Engine>>> = Arc::new(OnceLock::new());
    let seen: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let (hook_cell, sink) = (Arc::clone(&cell), Arc::clone(&seen));
    let engine = Arc::new(engine_with(
        Engine::builder().hook(hook_fn(move |ev: &Event| match ev {
            Event::TaskCreated { task, .. } => {
                let engine = hook_cell.get().and_then(Weak::upgrade).expect("engine");
                let id = task.instance();
                // No lock is held here, the hook's own included: this must not deadlock.
                let tasks = engine.tasks(id).map(|t| t.len());
                let claim = engine.claim(*task, &Actor::new("ann", ["r"]));
                let others: Vec<_> = engine
                    .instances()
                    .into_iter()
                    .filter(|o| *o != id)
                    .map(|o| engine.instance(o).map(|i| i.id()))
                    .collect();
                sink.lock().unwrap().push(format!(
                    "{id}: tasks {tasks:?}, claim {claim:?}, others {others:?}"
                ));
            }
            Event::TaskClaimed { task, actor, .. } => {
                sink.lock()
                    .unwrap()
                    .push(format!("{}: claimed by {actor}", task.instance()));
            }
            _ => {}
        })),
        &[RACI],
    ));
    cell.set(Arc::downgrade(&engine)).unwrap();
    let first = engine.start("raci", Vars::new()).unwrap();
    let second = engine.start("raci", Vars::new()).unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            format!("{first}: claimed by ann"),
            format!("{first}: tasks Ok(1), claim Ok(()), others []"),
            format!("{second}: claimed by ann"),
            format!("{second}: tasks Ok(1), claim Ok(()), others [Ok({first:?})]"),
        ]
    );
    for id in [first, second] {
        assert_eq!(
            engine.instance(id).unwrap().tasks()[0].claimed_by(),
            Some("ann")
        );
    }
}

/// A task with a 1h deadline, so that `tick` has something to fire.
fn raci_due() -> String {
    RACI.replace("    next: done", "    due: 1h\n    next: done")
}

/// A veto runs while its instance is locked: every engine call from it is refused (for any
/// instance), `work_list` is empty there and `tick` fires nothing.
#[test]
fn veto_calling_back_into_the_engine_is_refused_not_deadlocked() {
    let t0: DateTime<Utc> = "2026-01-05T09:00:00Z".parse().unwrap();
    let clock = Arc::new(ManualClock::new(t0));
    let cell: Arc<OnceLock<Weak<Engine>>> = Arc::new(OnceLock::new());
    let seen: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let (hook_cell, sink) = (Arc::clone(&cell), Arc::clone(&seen));
    let later = t0 + Duration::hours(2);
    let engine = Arc::new(engine_with(
        Engine::builder()
            .clock(Arc::clone(&clock))
            .hook(veto_fn(move |c: &Completing<'_>| {
                let engine = hook_cell.get().and_then(Weak::upgrade).expect("engine");
                let id = c.task.instance();
                let other = engine
                    .instances()
                    .into_iter()
                    .find(|o| *o != id)
                    .expect("another instance");
                let ann = Actor::new("ann", ["r"]);
                let lines = vec![
                    format!("{:?}", engine.instance(id).map(|i| i.id())),
                    format!("{:?}", engine.instance(other).map(|i| i.id())),
                    format!("{:?}", engine.claim(TaskId::new(other, 0), &ann)),
                    format!("{:?}", engine.start("raci", Vars::new())),
                    format!("work list {}", engine.work_list(&ann).len()),
                    format!("fired {}", engine.tick(later).len()),
                ];
                sink.lock().unwrap().extend(lines);
                Control::Continue
            })),
        &[&raci_due()],
    ));
    cell.set(Arc::downgrade(&engine)).unwrap();
    let first = engine.start("raci", Vars::new()).unwrap();
    let second = engine.start("raci", Vars::new()).unwrap();
    let ann = Actor::new("ann", ["r"]);
    engine
        .complete(task_at(&engine, first, "work"), &ann, Vars::new())
        .unwrap();
    let refused = format!("{:?}", Err::<(), _>(ExecError::Reentrant(first)));
    assert_eq!(
        *seen.lock().unwrap(),
        [
            refused.clone(),
            refused.clone(),
            refused.clone(),
            refused,
            "work list 0".to_owned(),
            "fired 0".to_owned(),
        ]
    );
    assert_eq!(engine.instance(first).unwrap().status(), Status::Completed);
    assert_eq!(
        engine.instances(),
        [first, second],
        "the veto started nothing"
    );
    assert_eq!(
        engine.instance(second).unwrap().tasks()[0].claimed_by(),
        None
    );
    // The deadline the veto's tick did not fire is still armed.
    clock.set(later);
    let fired = engine.tick(later);
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].task, Some(TaskId::new(second, 0)));
    assert_eq!(fired[0].kind, TimerKind::Due);
}

#[test]
fn handler_calling_back_into_its_instance_is_refused_not_deadlocked() {
    let cell: Arc<OnceLock<Weak<Engine>>> = Arc::new(OnceLock::new());
    let seen: Arc<Mutex<Vec<Result<usize, ExecError>>>> = Arc::new(Mutex::new(Vec::new()));
    let (handler_cell, sink) = (Arc::clone(&cell), Arc::clone(&seen));
    let engine = Arc::new(engine_with(
        Engine::builder().handler(
            "credit",
            handler_fn(move |call| {
                let engine = handler_cell.get().and_then(Weak::upgrade).expect("engine");
                let own = engine.tasks(call.instance).map(|t| t.len());
                // Any call, not only one on the handler's own instance.
                let start = engine.start("svc", Vars::new()).map(|_| 0);
                sink.lock().unwrap().extend([own, start]);
                Ok(vars(json!({ "score": 1 })))
            }),
        ),
        &[SERVICE],
    ));
    cell.set(Arc::downgrade(&engine)).unwrap();
    let id = engine.start("svc", Vars::new()).unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [Err(ExecError::Reentrant(id)), Err(ExecError::Reentrant(id))]
    );
    assert_eq!(open(&engine, id), ["review"]);
    assert_eq!(engine.instances(), [id], "the handler started nothing");
}

// ---------------------------------------------------------------------------------------------
// Versions, clock, threads

#[test]
fn start_uses_the_newest_version_unless_one_is_named() {
    let v2 = RACI
        .replace("version: 1", "version: 2")
        .replace("name: Work", "name: Work v2");
    let engine = engine(&[RACI, &v2]);
    let id = engine.start("raci", Vars::new()).unwrap();
    let key = |version| DefKey {
        id: "raci".into(),
        version,
    };
    assert_eq!(engine.instance(id).unwrap().def(), Some(&key(2)));
    assert_eq!(
        engine.tasks(id).unwrap()[0].name.as_deref(),
        Some("Work v2")
    );
    let old = engine.start_version("raci", Some(1), Vars::new()).unwrap();
    assert_eq!(engine.instance(old).unwrap().def(), Some(&key(1)));
    assert_eq!(engine.tasks(old).unwrap()[0].name.as_deref(), Some("Work"));
    assert_eq!(engine.definition_of(old).unwrap().key(), &key(1));
    assert_eq!(
        engine.start_version("raci", Some(3), Vars::new()),
        Err(ExecError::UnknownProcess {
            id: "raci".into(),
            version: Some(3)
        })
    );
    assert_eq!(
        engine.start("nope", Vars::new()),
        Err(ExecError::UnknownProcess {
            id: "nope".into(),
            version: None
        })
    );
}

#[test]
fn audit_times_come_from_the_injected_clock() {
    let t0: DateTime<Utc> = "2026-01-05T09:00:00Z".parse().unwrap();
    let clock = Arc::new(ManualClock::new(t0));
    let engine = engine_with(Engine::builder().clock(Arc::clone(&clock)), &[RACI]);
    let ann = Actor::new("ann", ["r"]);
    let id = engine.start("raci", Vars::new()).unwrap();
    let task = task_at(&engine, id, "work");
    let t1 = t0 + Duration::hours(1);
    clock.set(t1);
    engine.claim(task, &ann).unwrap();
    let t2 = t1 + Duration::minutes(30);
    clock.advance(Duration::minutes(30));
    engine.complete(task, &ann, Vars::new()).unwrap();

    let (start, work, done) = (
        node(&engine, id, "start"),
        node(&engine, id, "work"),
        node(&engine, id, "done"),
    );
    let inst = engine.instance(id).unwrap();
    let at = |at, what| Record { at, what };
    assert_eq!(
        inst.audit(),
        [
            at(t0, Entry::Started),
            at(
                t0,
                Entry::Transition {
                    from: start,
                    to: work,
                    actor: None
                }
            ),
            at(
                t0,
                Entry::TaskCreated {
                    task: task.seq(),
                    node: work
                }
            ),
            at(
                t1,
                Entry::Claimed {
                    task: task.seq(),
                    actor: "ann".into()
                }
            ),
            at(
                t2,
                Entry::Completed {
                    task: task.seq(),
                    actor: "ann".into(),
                    overridden: false,
                    role: Some(0),
                }
            ),
            at(
                t2,
                Entry::Transition {
                    from: work,
                    to: done,
                    actor: Some("ann".into())
                }
            ),
            at(t2, Entry::InstanceCompleted),
        ]
    );
    assert_eq!(inst.started_at(), t0);
    assert_eq!(inst.ended_at(), Some(t2));
    assert_eq!(inst.tasks()[0].created_at(), t0);
    assert_eq!(
        inst.tasks()[0].state(),
        &TaskState::Completed {
            by: "ann".into(),
            at: t2
        }
    );
}

#[test]
fn many_instances_from_four_threads() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 50;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let engine = engine_with(
        Engine::builder().handler(
            "credit",
            handler_fn(move |_| {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(vars(json!({ "score": 1 })))
            }),
        ),
        &[SERVICE],
    );
    std::thread::scope(|s| {
        for n in 0..THREADS {
            let engine = &engine;
            s.spawn(move || {
                let actor = Actor::new(format!("worker{n}"), ["r"]);
                for _ in 0..PER_THREAD {
                    let id = engine.start("svc", Vars::new()).unwrap();
                    let task = task_at(engine, id, "review");
                    engine.claim(task, &actor).unwrap();
                    engine.complete(task, &actor, Vars::new()).unwrap();
                    assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
                }
            });
        }
    });
    let ids = engine.instances();
    assert_eq!(ids.len(), THREADS * PER_THREAD);
    assert_eq!(calls.load(Ordering::SeqCst), THREADS * PER_THREAD);
    for id in ids {
        assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
    }
}

// ---------------------------------------------------------------------------------------------
// Work list, serde

#[test]
fn work_list_shows_responsible_unclaimed_or_own_tasks() {
    let t0: DateTime<Utc> = "2026-01-05T09:00:00Z".parse().unwrap();
    let clock = Arc::new(ManualClock::new(t0));
    let engine = engine_with(Engine::builder().clock(Arc::clone(&clock)), &[PARALLEL]);
    let first = engine.start("par", Vars::new()).unwrap();
    clock.advance(Duration::minutes(1));
    let second = engine.start("par", Vars::new()).unwrap();
    let list = |actor: &Actor| -> Vec<(InstanceId, String, Option<String>)> {
        engine
            .work_list(actor)
            .into_iter()
            .map(|t| {
                let by = t.claimed_by.map(|c| c.to_string());
                (t.id.instance(), t.node_id.to_string(), by)
            })
            .collect()
    };
    let item = |id, node: &str, by: Option<&str>| (id, node.to_owned(), by.map(str::to_owned));
    let ann = Actor::new("ann", ["r"]);
    let bob = Actor::new("bob", ["r"]);
    let sue = Actor::new("sue", ["s"]);

    assert_eq!(
        list(&ann),
        [item(first, "left", None), item(second, "left", None)]
    );
    assert_eq!(
        list(&sue),
        [item(first, "right", None), item(second, "right", None)]
    );

    engine.claim(task_at(&engine, first, "left"), &bob).unwrap();
    assert_eq!(list(&ann), [item(second, "left", None)], "claimed by bob");
    assert_eq!(
        list(&bob),
        [item(first, "left", Some("bob")), item(second, "left", None)]
    );
    assert_eq!(
        list(&Actor::new("both", ["r", "s"])),
        [
            item(first, "right", None),
            item(second, "left", None),
            item(second, "right", None)
        ]
    );
    assert_eq!(
        list(&Actor::new("lead", ["a"])),
        [],
        "accountable is not responsible"
    );
}

#[test]
fn instance_round_trips_through_serde_json() {
    let engine = engine(&[PARALLEL]);
    let ann = Actor::new("ann", ["r"]);
    let id = engine.start("par", Vars::new()).unwrap();
    let left = task_at(&engine, id, "left");
    let right = task_at(&engine, id, "right");
    engine
        .comment(right, &ann, "I can't do this one")
        .unwrap_err();
    engine.claim(left, &ann).unwrap();
    engine.comment(left, &ann, "on it").unwrap();
    engine
        .complete(left, &ann, vars(json!({ "note": "left done" })))
        .unwrap();
    engine.claim(right, &Actor::new("sue", ["s"])).unwrap();

    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Running, "waiting at the join");
    let json = serde_json::to_string(&inst).unwrap();
    let back: Instance = serde_json::from_str(&json).unwrap();
    assert_eq!(back, inst);
    // And the round trip is stable.
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
}
