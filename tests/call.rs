//! Call activities (`kind: call`, WCP 22) through the public API (issue 13, item 3): a child
//! instance per call with mapped inputs and outputs, failures and cancellation across the two,
//! the depth limit, multi-instance calls, deploy and load checks, and a crash between the
//! parent's commit and the child's start.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use procflow::{
    Actor, Config, DeployProblem, Engine, Entry, Event, ExecError, InstanceId, NodeKind,
    ProblemKind, ProcessDef, SqliteStore, Status, Store, TokenState, Vars, handler_fn, hook_fn,
};
use serde_json::{Value, json};

const PARENT: &str = r#"
id: complaint
version: 1
name: Complaint
roles: { clerk: { name: Clerk }, boss: { name: Boss } }
accountable: boss
variables:
  reconfiguration_lines: { type: array }
  customer_id: { type: string }
  order_status: { type: string }
nodes:
  start: { kind: start, next: reconfigure }
  reconfigure:
    kind: call
    name: Service reconfiguration order (3.6)
    process: order
    flow: 48
    in: { order_lines: reconfiguration_lines, customer_id: customer_id }
    out: { order_status: reconfiguration }
    next: resolve
  resolve:
    kind: user_task
    name: Resolve
    raci: { responsible: [clerk], accountable: boss }
    next: end
  end: { kind: end }
"#;

/// The called definition: `WORK` is replaced by a service task or a user task.
const CHILD: &str = r#"
id: order
version: 1
name: Order
roles: { fitter: { name: Fitter }, boss: { name: Boss } }
accountable: boss
variables:
  order_lines: { type: array }
  customer_id: { type: string, required: true }
  reconfiguration: { type: string }
nodes:
  start: { kind: start, next: work }
  WORK
  end: { kind: end }
"#;

const SERVICE: &str =
    "work: { kind: service_task, name: Provision, handler: provision, next: end }";
const HUMAN: &str = "work: { kind: user_task, name: Fit, raci: { responsible: [fitter], accountable: boss }, next: end }";

fn child(work: &str) -> ProcessDef {
    ProcessDef::from_yaml(&CHILD.replace("WORK", work)).unwrap()
}

/// An engine whose `provision` handler fails while `down` is set and otherwise answers
/// `reconfiguration: "done for CUSTOMER"`.
fn engine(down: &Arc<AtomicBool>) -> Engine {
    let down = Arc::clone(down);
    Engine::builder()
        .handler(
            "provision",
            handler_fn(move |call| {
                if down.load(Ordering::SeqCst) {
                    return Err(procflow::HandlerError::new("network down"));
                }
                let customer = call.vars["customer_id"].as_str().unwrap_or("?").to_owned();
                let mut out = Vars::new();
                out.insert(
                    "reconfiguration".into(),
                    json!(format!("done for {customer}")),
                );
                Ok(out)
            }),
        )
        .build()
}

fn vars(pairs: &[(&str, Value)]) -> Vars {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn boss() -> Actor {
    Actor::new("bea", ["boss"])
}

#[test]
fn a_round_trip_maps_inputs_in_and_outputs_out() {
    let down = Arc::new(AtomicBool::new(false));
    let heard = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&heard);
    let engine = Engine::builder()
        .handler(
            "provision",
            handler_fn(|call| {
                let customer = call.vars["customer_id"].as_str().unwrap_or("?").to_owned();
                let lines = call.vars["order_lines"].as_array().map_or(0, Vec::len);
                let mut out = Vars::new();
                out.insert(
                    "reconfiguration".into(),
                    json!(format!("{lines} lines done for {customer}")),
                );
                Ok(out)
            }),
        )
        .hook(hook_fn(move |ev: &Event| match ev {
            Event::CallStarted { node, .. } => sink.lock().unwrap().push(format!("started {node}")),
            Event::CallReturned { node, .. } => {
                sink.lock().unwrap().push(format!("returned {node}"))
            }
            _ => {}
        }))
        .build();
    drop(down);
    engine.deploy(child(SERVICE)).unwrap();
    let def = engine
        .deploy(ProcessDef::from_yaml(PARENT).unwrap())
        .unwrap();
    let node = def.node(def.node_id("reconfigure").unwrap());
    assert_eq!(node.kind(), NodeKind::Call);
    assert_eq!(node.called_process(), Some("order"));
    assert_eq!(node.called_version(), None);
    assert_eq!(node.flow(), Some(48));

    let parent = engine
        .start(
            "complaint",
            vars(&[
                ("reconfiguration_lines", json!(["a", "b"])),
                ("customer_id", json!("c-7")),
            ]),
        )
        .unwrap();
    let p = engine.instance(parent).unwrap();
    assert_eq!(p.vars()["order_status"], json!("2 lines done for c-7"));
    let tasks = engine.tasks(parent).unwrap();
    assert_eq!(&*tasks[0].node_id, "resolve");
    let children = engine.children(parent).unwrap();
    assert_eq!(children.len(), 1);
    let c = engine.instance(children[0]).unwrap();
    assert_eq!(c.status(), Status::Completed);
    assert_eq!(c.def().unwrap().id, "order");
    assert_eq!(c.parent(), Some(parent));
    assert_eq!(engine.parent(children[0]).unwrap(), Some(parent));
    assert_eq!(c.call_depth(), 1);
    assert_eq!(p.call_depth(), 0);
    assert_eq!(p.parent(), None);
    // Only the mapped variables go in.
    assert_eq!(c.vars().len(), 3);
    assert_eq!(c.vars()["order_lines"], json!(["a", "b"]));
    assert!(p.audit().iter().any(|r| matches!(
        r.what,
        Entry::CallStarted { child, .. } if child == children[0]
    )));
    assert!(p.audit().iter().any(|r| matches!(
        r.what,
        Entry::CallReturned { child, .. } if child == children[0]
    )));
    assert_eq!(
        *heard.lock().unwrap(),
        ["started reconfigure", "returned reconfigure"]
    );
    assert!(p.pending().is_empty() && c.pending().is_empty());
}

#[test]
fn a_child_failure_is_an_incident_of_the_parent_until_the_child_is_retried() {
    let down = Arc::new(AtomicBool::new(true));
    let engine = engine(&down);
    engine.deploy(child(SERVICE)).unwrap();
    engine
        .deploy(ProcessDef::from_yaml(PARENT).unwrap())
        .unwrap();
    let parent = engine
        .start("complaint", vars(&[("customer_id", json!("c-1"))]))
        .unwrap();
    let kid = engine.children(parent).unwrap()[0];
    let c = engine.instance(kid).unwrap();
    assert_eq!(c.incidents().len(), 1);
    let p = engine.instance(parent).unwrap();
    assert_eq!(p.status(), Status::Running);
    assert_eq!(p.incidents().len(), 1, "{:?}", p.incidents());
    let incident = &p.incidents()[0];
    assert!(!incident.resolved);
    assert!(
        incident
            .message
            .contains(&format!("child instance {kid} failed"))
            && incident.message.contains("network down"),
        "{}",
        incident.message
    );
    // The parent's token still waits for the child: retrying the parent has nothing to do.
    assert_eq!(p.tokens()[0].state, TokenState::Waiting);
    assert!(matches!(
        engine.retry(parent),
        Err(ExecError::NothingToRetry(_))
    ));

    down.store(false, Ordering::SeqCst);
    engine.retry(kid).unwrap();
    assert_eq!(engine.instance(kid).unwrap().status(), Status::Completed);
    let p = engine.instance(parent).unwrap();
    assert!(p.incidents()[0].resolved);
    assert_eq!(p.vars()["order_status"], json!("done for c-1"));
    assert_eq!(&*engine.tasks(parent).unwrap()[0].node_id, "resolve");
    assert_eq!(engine.children(parent).unwrap(), [kid], "no second child");
}

#[test]
fn cancelling_the_parent_cancels_the_child() {
    let down = Arc::new(AtomicBool::new(false));
    let engine = engine(&down);
    engine.deploy(child(HUMAN)).unwrap();
    engine
        .deploy(ProcessDef::from_yaml(PARENT).unwrap())
        .unwrap();
    let parent = engine
        .start("complaint", vars(&[("customer_id", json!("c-2"))]))
        .unwrap();
    let kid = engine.children(parent).unwrap()[0];
    assert_eq!(engine.tasks(kid).unwrap().len(), 1);
    engine.cancel(parent, &boss(), "customer withdrew").unwrap();
    assert_eq!(engine.instance(parent).unwrap().status(), Status::Cancelled);
    let c = engine.instance(kid).unwrap();
    assert_eq!(c.status(), Status::Cancelled);
    assert!(engine.tasks(kid).unwrap().is_empty());
    assert!(
        engine
            .instance(parent)
            .unwrap()
            .audit()
            .iter()
            .any(|r| matches!(r.what, Entry::CallCancelled { child, .. } if child == kid))
    );
    // The child's cancellation does not reach back as an incident of the ended parent.
    assert!(engine.instance(parent).unwrap().incidents().is_empty());
}

#[test]
fn completing_the_child_later_resumes_the_parent() {
    let down = Arc::new(AtomicBool::new(false));
    let engine = engine(&down);
    engine.deploy(child(HUMAN)).unwrap();
    engine
        .deploy(ProcessDef::from_yaml(PARENT).unwrap())
        .unwrap();
    let parent = engine
        .start("complaint", vars(&[("customer_id", json!("c-3"))]))
        .unwrap();
    let kid = engine.children(parent).unwrap()[0];
    assert!(engine.tasks(parent).unwrap().is_empty());
    let view = &engine.tasks(kid).unwrap()[0];
    assert_eq!(view.parent, Some(parent));
    let task = view.id;
    engine
        .complete(
            task,
            &Actor::new("fay", ["fitter"]),
            vars(&[("reconfiguration", json!("late"))]),
        )
        .unwrap();
    assert_eq!(
        engine.instance(parent).unwrap().vars()["order_status"],
        json!("late")
    );
    assert_eq!(&*engine.tasks(parent).unwrap()[0].node_id, "resolve");
}

const RECURSIVE: &str = r#"
id: nest
version: 1
name: Nest
nodes:
  start: { kind: start, next: again }
  again: { kind: call, name: Again, process: nest, max_depth: 3, next: end }
  end: { kind: end }
"#;

#[test]
fn the_depth_limit_stops_runaway_recursion() {
    let engine = Engine::new();
    engine
        .deploy(ProcessDef::from_yaml(RECURSIVE).unwrap())
        .unwrap();
    let top = engine.start("nest", Vars::new()).unwrap();
    // The top, and children at depths 1, 2 and 3; the one at depth 3 may not call deeper.
    let mut chain = vec![top];
    while let Some(next) = engine.children(*chain.last().unwrap()).unwrap().first() {
        chain.push(*next);
    }
    assert_eq!(chain.len(), 4);
    let deepest = engine.instance(chain[3]).unwrap();
    assert_eq!(deepest.call_depth(), 3);
    assert_eq!(deepest.incidents().len(), 1);
    assert!(
        deepest.incidents()[0]
            .message
            .contains("call depth limit 3"),
        "{}",
        deepest.incidents()[0].message
    );
    // The failure climbs the chain: each parent has an incident naming its child.
    for pair in chain.windows(2) {
        let p = engine.instance(pair[0]).unwrap();
        assert_eq!(p.status(), Status::Running);
        assert!(
            p.incidents()[0]
                .message
                .contains(&format!("child instance {} failed", pair[1]))
        );
    }
}

#[test]
fn the_engine_default_limits_calls_without_their_own() {
    // Two definitions calling down a chain longer than the engine's limit of 2.
    let a = r#"
id: a
version: 1
name: A
nodes:
  start: { kind: start, next: call }
  call: { kind: call, name: Call, process: PROC, next: end }
  end: { kind: end }
"#;
    let mut config = Config::default();
    config.max_call_depth = 2;
    let engine = Engine::builder().config(config).build();
    let leaf = a
        .replace("id: a", "id: d")
        .replace(
            "  call: { kind: call, name: Call, process: PROC, next: end }\n",
            "",
        )
        .replace("next: call", "next: end");
    engine
        .deploy(ProcessDef::from_yaml(&leaf).unwrap())
        .unwrap();
    for (id, calls) in [("c", "d"), ("b", "c"), ("a", "b")] {
        let text = a
            .replace("id: a", &format!("id: {id}"))
            .replace("PROC", calls);
        engine
            .deploy(ProcessDef::from_yaml(&text).unwrap())
            .unwrap();
    }
    let top = engine.start("a", Vars::new()).unwrap();
    let b = engine.children(top).unwrap()[0];
    let c = engine.children(b).unwrap()[0];
    assert!(engine.children(c).unwrap().is_empty());
    let ci = engine.instance(c).unwrap();
    assert!(ci.incidents()[0].message.contains("call depth limit 2"));
}

const MULTI: &str = r#"
id: bulk
version: 1
name: Bulk
variables:
  lines: { type: array }
  customer_id: { type: string }
  status: { type: string }
  statuses: { type: array }
nodes:
  start: { kind: start, next: each }
  each:
    kind: call
    name: One order per line
    process: order
    for_each: { in: lines, as: line, parallel: PARALLEL, output: status, collect: statuses }
    in: { order_lines: line, customer_id: customer_id }
    out: { status: reconfiguration }
    next: end
  end: { kind: end }
"#;

fn multi_call(parallel: bool) {
    let down = Arc::new(AtomicBool::new(false));
    let engine = engine(&down);
    engine.deploy(child(HUMAN)).unwrap();
    let text = MULTI.replace("PARALLEL", &parallel.to_string());
    engine
        .deploy(ProcessDef::from_yaml(&text).unwrap())
        .unwrap();
    let parent = engine
        .start(
            "bulk",
            vars(&[
                ("lines", json!([["x"], ["y"], ["z"]])),
                ("customer_id", json!("c-9")),
            ]),
        )
        .unwrap();
    let fitter = Actor::new("fay", ["fitter"]);
    let mut done = Vec::new();
    loop {
        let kids = engine.children(parent).unwrap();
        let open: Vec<InstanceId> = kids
            .iter()
            .copied()
            .filter(|k| engine.instance(*k).unwrap().status() == Status::Running)
            .collect();
        if open.is_empty() {
            break;
        }
        if parallel {
            assert_eq!(kids.len(), 3, "one child per item at once");
        } else {
            assert_eq!(open.len(), 1, "one child at a time");
        }
        // Complete the newest running child first: outputs still come back in item order.
        let kid = *open.last().unwrap();
        let lines = engine.instance(kid).unwrap().vars()["order_lines"].clone();
        let task = engine.tasks(kid).unwrap()[0].id;
        engine
            .complete(
                task,
                &fitter,
                vars(&[("reconfiguration", json!(format!("fitted {lines}")))]),
            )
            .unwrap();
        done.push(kid);
    }
    let p = engine.instance(parent).unwrap();
    assert_eq!(p.status(), Status::Completed);
    assert_eq!(
        p.vars()["statuses"],
        json!([r#"fitted ["x"]"#, r#"fitted ["y"]"#, r#"fitted ["z"]"#])
    );
    assert_eq!(engine.children(parent).unwrap().len(), 3);
    assert!(!p.vars().contains_key("status"), "the item output is local");
}

#[test]
fn a_parallel_multi_instance_call_starts_one_child_per_item_and_collects_in_order() {
    multi_call(true);
}

#[test]
fn a_sequential_multi_instance_call_runs_one_child_after_another() {
    multi_call(false);
}

#[test]
fn cancelling_a_multi_instance_call_cancels_every_child() {
    let down = Arc::new(AtomicBool::new(false));
    let engine = engine(&down);
    engine.deploy(child(HUMAN)).unwrap();
    let text = MULTI.replace("PARALLEL", "true").replace(
        "name: Bulk",
        "name: Bulk\nroles: { boss: { name: Boss } }\naccountable: boss",
    );
    engine
        .deploy(ProcessDef::from_yaml(&text).unwrap())
        .unwrap();
    let parent = engine
        .start("bulk", vars(&[("lines", json!([[1], [2]]))]))
        .unwrap_err();
    // `customer_id` is required by the child: the call is an incident naming the variable.
    let ExecError::Incident {
        instance, message, ..
    } = parent
    else {
        panic!("{parent:?}")
    };
    assert!(message.contains("customer_id"), "{message}");
    assert!(engine.children(instance).unwrap().is_empty());

    let parent = engine
        .start(
            "bulk",
            vars(&[("lines", json!([[1], [2]])), ("customer_id", json!("c"))]),
        )
        .unwrap();
    let kids = engine.children(parent).unwrap();
    assert_eq!(kids.len(), 2);
    engine.cancel(parent, &boss(), "stop").unwrap();
    for kid in kids {
        assert_eq!(engine.instance(kid).unwrap().status(), Status::Cancelled);
    }
}

#[test]
fn deploy_refuses_a_call_to_a_definition_that_is_not_deployed() {
    let engine = Engine::new();
    let err = engine
        .deploy(
            ProcessDef::from_yaml(
                &PARENT.replace("process: order", "process: order\n    version: 2"),
            )
            .unwrap(),
        )
        .unwrap_err();
    assert_eq!(err.problems.len(), 1, "{err}");
    match &err.problems[0] {
        DeployProblem::UnknownCalledProcess {
            node,
            process,
            version,
            location,
        } => {
            assert_eq!(&*node.name, "reconfigure");
            assert_eq!(process, "order");
            assert_eq!(*version, Some(2));
            assert_eq!(location.line, 16);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("'order' version 2"), "{err}");
    assert!(engine.definition("complaint", None).is_none());

    // Deployed, but its variables do not fit the mappings.
    let other = CHILD.replace("WORK", SERVICE).replace(
        "customer_id: { type: string, required: true }",
        "customer: { type: string }",
    );
    let down = Arc::new(AtomicBool::new(false));
    let engine = self::engine(&down);
    engine
        .deploy(ProcessDef::from_yaml(&other).unwrap())
        .unwrap();
    let err = engine
        .deploy(ProcessDef::from_yaml(PARENT).unwrap())
        .unwrap_err();
    assert!(
        matches!(
            &err.problems[..],
            [DeployProblem::CallVariable { key: "in", variable, .. }] if variable == "customer_id"
        ),
        "{err}"
    );
}

#[test]
fn deploy_refuses_a_cycle_of_calls_without_a_depth_limit() {
    let engine = Engine::new();
    let err = engine
        .deploy(ProcessDef::from_yaml(&RECURSIVE.replace(", max_depth: 3", "")).unwrap())
        .unwrap_err();
    assert_eq!(
        err.problems,
        [DeployProblem::CallCycle {
            cycle: vec!["nest@1".into(), "nest@1".into()]
        }]
    );

    let ping = r#"
id: ping
version: 1
name: Ping
nodes:
  start: { kind: start, next: call }
  call: { kind: call, name: Call, process: pong LIMIT, next: end }
  end: { kind: end }
"#;
    let pong = ping
        .replace("id: ping", "id: pong")
        .replace("process: pong", "process: ping");
    let defs = |limit: &str| {
        vec![
            ProcessDef::from_yaml(&ping.replace("LIMIT", limit)).unwrap(),
            ProcessDef::from_yaml(&pong.replace("LIMIT", "")).unwrap(),
        ]
    };
    // Each names the other: neither deploys alone.
    assert!(matches!(
        engine.deploy(defs("").remove(0)).unwrap_err().problems[..],
        [DeployProblem::UnknownCalledProcess { .. }]
    ));
    let err = engine.deploy_all(defs("")).unwrap_err();
    assert!(
        err.to_string()
            .contains("a cycle without a depth limit: ping@1 -> pong@1 -> ping@1"),
        "{err}"
    );
    assert!(engine.definition("ping", None).is_none());
    // A depth limit on one call of the cycle lets both deploy together.
    let deployed = engine.deploy_all(defs(", max_depth: 4")).unwrap();
    assert_eq!(deployed.len(), 2);
    let top = engine.start("ping", Vars::new()).unwrap();
    assert_eq!(engine.instance(top).unwrap().status(), Status::Running);
}

#[test]
fn load_errors_are_located_and_reported_together() {
    let text = r#"
id: bad
version: 1
name: Bad
variables:
  a: { type: string }
nodes:
  start: { kind: start, next: call }
  call:
    kind: call
    name: Call
    in: { x: nope }
    out: { missing: y }
    max_depth: 0
    next: task
  task:
    kind: service_task
    name: Task
    handler: h
    process: other
    next: end
  end: { kind: end }
"#;
    let err = ProcessDef::from_yaml(text).unwrap_err();
    let found: Vec<(u32, String, ProblemKind)> = err
        .problems
        .iter()
        .map(|p| (p.location.unwrap().line, p.path.clone(), p.kind.clone()))
        .collect();
    assert_eq!(
        found,
        [
            (
                9,
                "nodes.call.process".to_owned(),
                ProblemKind::KeyMissing {
                    key: "process",
                    kind: "call"
                }
            ),
            (
                12,
                "nodes.call.in".to_owned(),
                ProblemKind::UnknownVariable {
                    key: "in",
                    name: "nope".into()
                }
            ),
            (
                13,
                "nodes.call.out".to_owned(),
                ProblemKind::UnknownVariable {
                    key: "out",
                    name: "missing".into()
                }
            ),
            (
                14,
                "nodes.call.max_depth".to_owned(),
                ProblemKind::CallShape("'max_depth' must be between 1 and 64")
            ),
            (
                20,
                "nodes.task.process".to_owned(),
                ProblemKind::KeyNotAllowed {
                    key: "process",
                    kind: "service_task"
                }
            ),
        ],
        "{err}"
    );
}

#[test]
fn graphs_draw_a_call_as_a_subroutine_naming_the_called_process() {
    let def = ProcessDef::from_yaml(PARENT).unwrap();
    let mermaid = def.to_mermaid();
    assert!(
        mermaid.contains("[[\"call order (flow 48): Service reconfiguration order (3.6)\"]]"),
        "{mermaid}"
    );
    let dot = def.to_dot();
    assert!(dot.contains("shape=box, peripheries=2"), "{dot}");
    assert!(dot.contains("call order (flow 48)"), "{dot}");
}

const KILL: &str = "PROCFLOW_CALL_CHILD";

fn sqlite_engine(path: &std::path::Path, create: bool) -> Engine {
    let store = if create {
        SqliteStore::create(path).unwrap()
    } else {
        SqliteStore::open(path).unwrap()
    };
    Engine::builder()
        .handler(
            "provision",
            handler_fn(|_| {
                let mut out = Vars::new();
                out.insert("reconfiguration".into(), json!("done"));
                Ok(out)
            }),
        )
        .open(store)
        .unwrap()
}

/// The process that is killed (SIGKILL) as soon as the parent's call is committed, before
/// its follow-up starts the child.
#[test]
fn parent_calls_and_dies() {
    let Ok(path) = std::env::var(KILL) else {
        return;
    };
    let engine = Engine::builder()
        .handler("provision", handler_fn(|_| Ok(Vars::new())))
        .hook(hook_fn(|ev: &Event| {
            if let Event::CallStarted { .. } = ev {
                let me = std::process::id().to_string();
                let _ = Command::new("kill").args(["-9", &me]).status();
                std::thread::sleep(std::time::Duration::from_secs(60));
            }
        }))
        .open(SqliteStore::open(&path).unwrap())
        .unwrap();
    let _ = engine.start("complaint", vars(&[("customer_id", json!("c-5"))]));
    unreachable!("the hook kills this process");
}

#[test]
fn a_crash_between_the_parents_commit_and_the_childs_start_leaves_exactly_one_child() {
    let dir = std::env::temp_dir().join(format!("procflow-call-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("store.db");
    let _ = std::fs::remove_file(&path);
    {
        let engine = sqlite_engine(&path, true);
        engine.deploy(child(SERVICE)).unwrap();
        engine
            .deploy(ProcessDef::from_yaml(PARENT).unwrap())
            .unwrap();
    }
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "parent_calls_and_dies", "--nocapture"])
        .env(KILL, &path)
        .status()
        .unwrap();
    assert!(!status.success(), "the process was to be killed");

    // The parent is stored waiting, its follow-up not run, no child yet.
    let store = SqliteStore::open(&path).unwrap();
    let pending = store.outbox().unwrap();
    assert_eq!(pending.len(), 1);
    let parent = pending[0].instance.id();
    assert_eq!(pending[0].instance.children().len(), 1);
    let kid = pending[0].instance.children()[0].0;
    assert!(store.read(kid).unwrap().is_none());
    drop(store);

    // The next engine starts it, once; the child runs to its end and resumes the parent.
    let engine = sqlite_engine(&path, false);
    assert_eq!(engine.children(parent).unwrap(), [kid]);
    assert_eq!(engine.instance(kid).unwrap().status(), Status::Completed);
    let p = engine.instance(parent).unwrap();
    assert_eq!(p.vars()["order_status"], json!("done"));
    assert!(p.pending().is_empty());
    drop(engine);
    let store = SqliteStore::open(&path).unwrap();
    assert!(store.outbox().unwrap().is_empty());
    let instances = store.running().unwrap();
    assert_eq!(instances.len(), 1, "the parent waits at its user task");
    drop(store);
    // Opening again starts nothing more.
    let engine = sqlite_engine(&path, false);
    assert_eq!(engine.children(parent).unwrap(), [kid]);
    assert_eq!(engine.instances(), [parent], "only the parent runs");
    assert_eq!(engine.instance(kid).unwrap().status(), Status::Completed);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reports_and_the_heatmap_take_parents_and_children_each_under_its_own_definition() {
    let down = Arc::new(AtomicBool::new(false));
    let engine = engine(&down);
    let order = engine.deploy(child(HUMAN)).unwrap();
    let complaint = engine
        .deploy(ProcessDef::from_yaml(PARENT).unwrap())
        .unwrap();
    let mut ids = Vec::new();
    for n in 0..3 {
        let parent = engine
            .start(
                "complaint",
                vars(&[("customer_id", json!(format!("c-{n}")))]),
            )
            .unwrap();
        let kid = engine.children(parent).unwrap()[0];
        if n > 0 {
            let task = engine.tasks(kid).unwrap()[0].id;
            engine
                .complete(task, &Actor::new("fay", ["fitter"]), Vars::new())
                .unwrap();
        }
        ids.extend([parent, kid]);
    }
    let instances: Vec<procflow::Instance> =
        ids.iter().map(|id| engine.instance(*id).unwrap()).collect();
    let defs = [Arc::clone(&complaint), Arc::clone(&order)];
    let report = procflow::Report::compute(&defs, &instances, &procflow::ReportOptions::default());
    assert_eq!(report.skipped, 0);
    assert_eq!(report.process("complaint").unwrap().started, 3);
    assert_eq!(report.process("order").unwrap().started, 3);
    assert_eq!(report.node("order", "work").unwrap().opened, 3);
    assert_eq!(report.node("complaint", "resolve").unwrap().opened, 2);
    for def in [&complaint, &order] {
        let svg = report.heatmap(def, procflow::HeatMetric::MeanWait);
        assert!(svg.starts_with("<svg"), "{svg}");
    }
    assert!(report.to_table().contains("complaint"));
}

#[test]
fn a_scenario_runs_a_call_across_definitions() {
    let scenario = procflow::Scenario::from_yaml(
        r#"
name: one order per line, each fitted by hand, collected in line order
actors:
  fay: [fitter]
steps:
  - start: { vars: { lines: [["a"], ["b"]], customer_id: c-1 } }
  - expect: { status: running, open_tasks: [] }
  # The children's tasks, found through the parent's calls.
  - complete: { task: work, actor: fay, vars: { reconfiguration: "first" } }
  - complete: { task: work, actor: fay, vars: { reconfiguration: "second" } }
  - expect: { status: completed, vars: { statuses: [first, second] } }
"#,
    )
    .unwrap();
    let defs = vec![
        ProcessDef::from_yaml(&MULTI.replace("PARALLEL", "false")).unwrap(),
        child(HUMAN),
    ];
    let report = scenario.run_all(defs, Vec::new()).unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(
        report
            .events
            .iter()
            .any(|e| e.contains(r#""event":"call_returned""#)),
        "{:?}",
        report.events
    );
}

#[test]
fn a_waiting_call_survives_a_reopen_and_resumes_when_the_child_completes() {
    let dir = std::env::temp_dir().join(format!("procflow-call-reopen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("store.db");
    let _ = std::fs::remove_file(&path);
    let (parent, kid) = {
        let engine = sqlite_engine(&path, true);
        engine.deploy(child(HUMAN)).unwrap();
        engine
            .deploy(ProcessDef::from_yaml(&MULTI.replace("PARALLEL", "true")).unwrap())
            .unwrap();
        let parent = engine
            .start(
                "bulk",
                vars(&[("lines", json!([[1], [2]])), ("customer_id", json!("c"))]),
            )
            .unwrap();
        // The first child is done before the reopen; the second still runs.
        let kids = engine.children(parent).unwrap();
        let task = engine.tasks(kids[0]).unwrap()[0].id;
        engine
            .complete(
                task,
                &Actor::new("fay", ["fitter"]),
                vars(&[("reconfiguration", json!("one"))]),
            )
            .unwrap();
        (parent, kids[1])
    };
    let engine = sqlite_engine(&path, false);
    let p = engine.instance(parent).unwrap();
    assert_eq!(p.status(), Status::Running);
    assert_eq!(p.children().iter().filter(|(_, _, open)| *open).count(), 1);
    let task = engine.tasks(kid).unwrap()[0].id;
    engine
        .complete(
            task,
            &Actor::new("fay", ["fitter"]),
            vars(&[("reconfiguration", json!("two"))]),
        )
        .unwrap();
    let p = engine.instance(parent).unwrap();
    assert_eq!(p.status(), Status::Completed);
    assert_eq!(p.vars()["statuses"], json!(["one", "two"]));
    drop(engine);
    let store = SqliteStore::open(&path).unwrap();
    assert!(store.outbox().unwrap().is_empty());
    assert!(store.running().unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
