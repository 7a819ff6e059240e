//! Multi-instance tasks (`for_each`, WCP 12–15, 26, 27, 34–36) and structured loops (`repeat`,
//! WCP 21) through the public API (issue 12, items 2 and 3).

use std::sync::{Arc, Mutex};

use procflow::{
    Actor, Engine, Entry, Event, ExecError, HandlerError, InstanceId, ProblemKind, ProcessDef,
    Status, TaskState, TaskView, TokenState, VarProblem, Vars, handler_fn, hook_fn,
};
use proptest::prelude::*;
use serde_json::{Value, json};

/// A user task run once per order line; `PARALLEL` and `WHEN` are replaced per test.
const LINES: &str = r#"
id: lines
version: 1
name: Lines
roles: { fitter: { name: Fitter }, boss: { name: Boss }, clerk: { name: Clerk } }
variables:
  lines: { type: array }
  result: { type: string }
  results: { type: array }
  note: { type: string }
nodes:
  start: { kind: start, next: fit }
  fit:
    kind: user_task
    name: Fit one line
    raci: { responsible: [fitter], accountable: boss, informed: [clerk] }
    for_each: { in: lines, as: line, parallel: PARALLEL, output: result, collect: results WHEN }
    next: after
  after:
    kind: user_task
    name: After
    raci: { responsible: [clerk], accountable: boss }
    next: done
  done: { kind: end }
"#;

fn lines_def(parallel: bool, when: Option<&str>) -> ProcessDef {
    let yaml = LINES.replace("PARALLEL", if parallel { "true" } else { "false" });
    let yaml = yaml.replace(
        " WHEN",
        &when
            .map(|w| format!(", complete_when: \"{w}\""))
            .unwrap_or_default(),
    );
    ProcessDef::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"))
}

fn engine_with(def: ProcessDef) -> Engine {
    let engine = Engine::new();
    engine.deploy(def).expect("deploys");
    engine
}

fn vars(v: Value) -> Vars {
    v.as_object().expect("an object").clone()
}

fn fitter() -> Actor {
    Actor::new("fay", ["fitter"])
}

fn open_at(engine: &Engine, id: InstanceId, node: &str) -> Vec<TaskView> {
    engine
        .tasks(id)
        .expect("instance")
        .into_iter()
        .filter(|t| &*t.node_id == node)
        .collect()
}

fn entries(engine: &Engine, id: InstanceId) -> Vec<Entry> {
    engine
        .instance(id)
        .expect("instance")
        .audit()
        .iter()
        .map(|r| r.what.clone())
        .collect()
}

#[test]
fn parallel_items_each_get_a_task_naming_the_item_and_outputs_are_collected_in_item_order() {
    let engine = engine_with(lines_def(true, None));
    let id = engine
        .start("lines", vars(json!({ "lines": ["a", "b", "c"] })))
        .unwrap();
    let open = open_at(&engine, id, "fit");
    assert_eq!(open.len(), 3, "one task per item at once");
    assert_eq!(
        open.iter().map(|t| t.item).collect::<Vec<_>>(),
        [Some(0), Some(1), Some(2)]
    );
    // The work list names the items too.
    let work = engine.work_list(&fitter());
    assert_eq!(work.len(), 3);
    assert!(work.iter().all(|t| t.item.is_some()));
    let inst = engine.instance(id).unwrap();
    assert_eq!(
        inst.task_item(open[1].id.seq()),
        Some((1, Some(&json!("b")))),
        "the item's value is looked up from the activity"
    );
    // The item variable is local: it never lands in the instance's variables.
    assert!(!inst.vars().contains_key("line"));

    // Completed out of order: c, a, b.
    for (k, out) in [(2, "C"), (0, "A")] {
        engine
            .complete(open[k].id, &fitter(), vars(json!({ "result": out })))
            .unwrap();
    }
    let inst = engine.instance(id).unwrap();
    assert!(
        !inst.vars().contains_key("result"),
        "an item's output is local to it"
    );
    assert_eq!(open_at(&engine, id, "fit").len(), 1);
    engine
        .complete(open[1].id, &fitter(), vars(json!({ "result": "B" })))
        .unwrap();
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.vars()["results"], json!(["A", "B", "C"]));
    assert!(!inst.vars().contains_key("result"));
    assert_eq!(open_at(&engine, id, "after").len(), 1);
    let audit = entries(&engine, id);
    assert!(audit.contains(&Entry::ItemsStarted {
        node: inst.tasks()[0].node(),
        items: 3
    }));
    assert!(audit.contains(&Entry::ItemsFinished {
        node: inst.tasks()[0].node(),
        completed: 3,
        withdrawn: 0
    }));
}

#[test]
fn each_item_task_has_its_own_raci_check() {
    let engine = engine_with(lines_def(true, None));
    let id = engine
        .start("lines", vars(json!({ "lines": [1, 2] })))
        .unwrap();
    let open = open_at(&engine, id, "fit");
    let clerk = Actor::new("cleo", ["clerk"]);
    let err = engine
        .complete(open[0].id, &clerk, vars(json!({ "result": "x" })))
        .unwrap_err();
    assert!(matches!(err, ExecError::Denied { .. }), "{err}");
    engine.claim(open[0].id, &fitter()).unwrap();
    let other = Actor::new("fred", ["fitter"]);
    assert!(matches!(
        engine.complete(open[0].id, &other, Vars::new()),
        Err(ExecError::Denied {
            claimed_by: Some(_),
            ..
        })
    ));
    // The other item is not claimed by the first item's claim.
    engine.complete(open[1].id, &other, Vars::new()).unwrap();
    // The accountable may override.
    engine
        .complete(open[0].id, &Actor::new("bo", ["boss"]), Vars::new())
        .unwrap();
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.vars()["results"], json!([null, null]));
}

#[test]
fn an_item_sets_only_its_output() {
    let engine = engine_with(lines_def(true, None));
    let id = engine
        .start("lines", vars(json!({ "lines": [1] })))
        .unwrap();
    let task = open_at(&engine, id, "fit")[0].id;
    let err = engine
        .complete(task, &fitter(), vars(json!({ "result": "r", "note": "n" })))
        .unwrap_err();
    assert_eq!(
        err,
        ExecError::Variables {
            problems: vec![("note".into(), VarProblem::NotItemOutput)]
        }
    );
    assert!(engine.instance(id).unwrap().tasks()[0].state() == &TaskState::Open);
}

#[test]
fn sequential_items_run_one_after_another() {
    let engine = engine_with(lines_def(false, None));
    let id = engine
        .start("lines", vars(json!({ "lines": ["x", "y", "z"] })))
        .unwrap();
    for (k, out) in ["X", "Y", "Z"].iter().enumerate() {
        let open = open_at(&engine, id, "fit");
        assert_eq!(open.len(), 1, "one item at a time");
        assert_eq!(open[0].item, Some(k as u32));
        engine
            .complete(open[0].id, &fitter(), vars(json!({ "result": out })))
            .unwrap();
    }
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.vars()["results"], json!(["X", "Y", "Z"]));
    assert_eq!(open_at(&engine, id, "after").len(), 1);
}

#[test]
fn completion_condition_n_of_m_withdraws_the_rest() {
    let engine = engine_with(lines_def(true, Some("completed >= 2")));
    let id = engine
        .start("lines", vars(json!({ "lines": [1, 2, 3, 4] })))
        .unwrap();
    let open = open_at(&engine, id, "fit");
    engine
        .complete(open[3].id, &fitter(), vars(json!({ "result": "d" })))
        .unwrap();
    assert_eq!(open_at(&engine, id, "fit").len(), 3);
    engine
        .complete(open[1].id, &fitter(), vars(json!({ "result": "b" })))
        .unwrap();
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.vars()["results"], json!([null, "b", null, "d"]));
    let states: Vec<&TaskState> = inst.tasks()[..4].iter().map(|t| t.state()).collect();
    assert!(matches!(states[0], TaskState::Cancelled { .. }));
    assert!(matches!(states[1], TaskState::Completed { .. }));
    assert!(matches!(states[2], TaskState::Cancelled { .. }));
    assert!(matches!(states[3], TaskState::Completed { .. }));
    let node = inst.tasks()[0].node();
    let audit = entries(&engine, id);
    assert!(audit.contains(&Entry::ItemsFinished {
        node,
        completed: 2,
        withdrawn: 2
    }));
    assert!(audit.contains(&Entry::Withdrawn {
        node,
        task: Some(0)
    }));
    assert_eq!(open_at(&engine, id, "after").len(), 1);
    assert!(matches!(
        engine.complete(open[0].id, &fitter(), Vars::new()),
        Err(ExecError::TaskClosed { .. })
    ));
}

#[test]
fn completion_condition_over_the_results_so_far() {
    let engine = engine_with(lines_def(true, Some("results.exists(r, r == 'stop')")));
    let id = engine
        .start("lines", vars(json!({ "lines": [1, 2, 3] })))
        .unwrap();
    let open = open_at(&engine, id, "fit");
    engine
        .complete(open[0].id, &fitter(), vars(json!({ "result": "go" })))
        .unwrap();
    assert_eq!(open_at(&engine, id, "fit").len(), 2);
    engine
        .complete(open[2].id, &fitter(), vars(json!({ "result": "stop" })))
        .unwrap();
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.vars()["results"], json!(["go", null, "stop"]));
    assert!(open_at(&engine, id, "fit").is_empty());
}

#[test]
fn items_added_while_running() {
    let engine = engine_with(lines_def(true, None));
    let id = engine
        .start("lines", vars(json!({ "lines": ["a"] })))
        .unwrap();
    engine
        .add_items(id, "fit", vec![json!("b"), json!("c")])
        .unwrap();
    let open = open_at(&engine, id, "fit");
    assert_eq!(
        open.iter().map(|t| t.item).collect::<Vec<_>>(),
        [Some(0), Some(1), Some(2)]
    );
    for (k, t) in open.iter().enumerate().rev() {
        engine
            .complete(t.id, &fitter(), vars(json!({ "result": format!("r{k}") })))
            .unwrap();
    }
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.vars()["results"], json!(["r0", "r1", "r2"]));
    assert!(entries(&engine, id).contains(&Entry::ItemsAdded {
        node: inst.tasks()[0].node(),
        count: 2
    }));
    // Now nothing runs there.
    assert!(matches!(
        engine.add_items(id, "fit", vec![json!(1)]),
        Err(ExecError::NotRunningItems { .. })
    ));
    assert!(matches!(
        engine.add_items(id, "nope", vec![json!(1)]),
        Err(ExecError::UnknownNode { .. })
    ));
    assert!(matches!(
        engine.add_items(id, "after", vec![json!(1)]),
        Err(ExecError::NotRunningItems { .. })
    ));
}

#[test]
fn sequential_items_added_run_after_the_others() {
    let engine = engine_with(lines_def(false, None));
    let id = engine
        .start("lines", vars(json!({ "lines": ["a"] })))
        .unwrap();
    engine.add_items(id, "fit", vec![json!("b")]).unwrap();
    assert_eq!(open_at(&engine, id, "fit").len(), 1);
    let first = open_at(&engine, id, "fit")[0].id;
    engine.complete(first, &fitter(), Vars::new()).unwrap();
    let open = open_at(&engine, id, "fit");
    assert_eq!(open[0].item, Some(1));
}

#[test]
fn a_non_list_is_an_incident_not_a_panic() {
    const ANY: &str = r#"
id: anylist
version: 1
name: Any list
roles: { r: { name: R }, a: { name: A } }
variables: { things: { type: any } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [r], accountable: a }
    for_each: { in: things, as: thing }
    next: done
  done: { kind: end }
"#;
    let engine = engine_with(ProcessDef::from_yaml(ANY).unwrap());
    let err = engine
        .start("anylist", vars(json!({ "things": "not a list" })))
        .unwrap_err();
    let ExecError::Incident {
        instance, message, ..
    } = err
    else {
        panic!("expected an incident, got {err}");
    };
    assert!(message.contains("not a list"), "{message}");
    let inst = engine.instance(instance).unwrap();
    assert_eq!(inst.incidents().len(), 1);
    assert_eq!(inst.tokens()[0].state, TokenState::Failed);
    assert_eq!(inst.status(), Status::Running);
}

#[test]
fn an_empty_list_completes_at_once_with_an_empty_collection() {
    let engine = engine_with(lines_def(true, None));
    let id = engine.start("lines", vars(json!({ "lines": [] }))).unwrap();
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.vars()["results"], json!([]));
    assert!(open_at(&engine, id, "fit").is_empty());
    assert_eq!(open_at(&engine, id, "after").len(), 1);
}

/// A service task per item; the handler echoes the item.
const SERVICE: &str = r#"
id: svc
version: 1
name: Service lines
variables:
  lines: { type: array }
  out: { type: any }
  outs: { type: array }
nodes:
  start: { kind: start, next: each }
  each:
    kind: service_task
    name: Each
    handler: echo
    for_each: { in: lines, as: line, output: out, collect: outs WHEN }
    next: done
  done: { kind: end }
"#;

fn service_engine(when: Option<&str>, fail_on: Option<i64>) -> (Engine, Arc<Mutex<Vec<Value>>>) {
    let yaml = SERVICE.replace(
        " WHEN",
        &when
            .map(|w| format!(", complete_when: \"{w}\""))
            .unwrap_or_default(),
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let fail = Arc::new(Mutex::new(fail_on));
    let engine = Engine::builder()
        .handler(
            "echo",
            handler_fn(move |call| {
                let item = call.item.cloned().unwrap_or(Value::Null);
                assert!(!call.vars.contains_key("line"));
                log.lock().unwrap().push(item.clone());
                let mut f = fail.lock().unwrap();
                if *f == item.as_i64() && f.is_some() {
                    *f = None;
                    return Err(HandlerError::new("down"));
                }
                let mut out = Vars::new();
                out.insert(
                    "out".into(),
                    json!({ "item": item, "index": call.item_index }),
                );
                Ok(out)
            }),
        )
        .build();
    engine
        .deploy(ProcessDef::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}")))
        .unwrap();
    (engine, seen)
}

#[test]
fn service_items_get_their_item_and_collect_in_order() {
    let (engine, seen) = service_engine(None, None);
    let id = engine
        .start("svc", vars(json!({ "lines": [10, 20, 30] })))
        .unwrap();
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Completed);
    assert_eq!(
        inst.vars()["outs"],
        json!([
            { "item": 10, "index": 0 },
            { "item": 20, "index": 1 },
            { "item": 30, "index": 2 }
        ])
    );
    assert!(!inst.vars().contains_key("out"));
    assert_eq!(*seen.lock().unwrap(), [json!(10), json!(20), json!(30)]);
    let done = entries(&engine, id)
        .iter()
        .filter(|e| matches!(e, Entry::ItemCompleted { .. }))
        .count();
    assert_eq!(done, 3);
}

#[test]
fn a_failing_service_item_resumes_at_that_item_on_retry() {
    let (engine, seen) = service_engine(None, Some(20));
    let err = engine
        .start("svc", vars(json!({ "lines": [10, 20, 30] })))
        .unwrap_err();
    let ExecError::Incident { instance: id, .. } = err else {
        panic!("{err}");
    };
    engine.add_items(id, "each", vec![json!(40)]).unwrap();
    engine.retry(id).unwrap();
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Completed);
    // 10 once, 20 twice (failed, then retried), 30 and the added 40 once.
    assert_eq!(
        *seen.lock().unwrap(),
        [json!(10), json!(20), json!(20), json!(30), json!(40)]
    );
    let items: Vec<Value> = inst.vars()["outs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["item"].clone())
        .collect();
    assert_eq!(items, [json!(10), json!(20), json!(30), json!(40)]);
}

#[test]
fn service_completion_condition_stops_calling() {
    let (engine, seen) = service_engine(Some("completed == 2"), None);
    let id = engine
        .start("svc", vars(json!({ "lines": [1, 2, 3, 4] })))
        .unwrap();
    let inst = engine.instance(id).unwrap();
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert_eq!(inst.vars()["outs"].as_array().unwrap().len(), 4);
    assert_eq!(inst.vars()["outs"][2], Value::Null);
    assert!(entries(&engine, id).iter().any(|e| matches!(
        e,
        Entry::ItemsFinished {
            completed: 2,
            withdrawn: 2,
            ..
        }
    )));
}

const REPEAT: &str = r#"
id: again
version: 1
name: Again
roles: { r: { name: R }, a: { name: A } }
variables: { ok: { type: boolean, default: false }, tries: { type: integer, default: 0 } }
nodes:
  start: { kind: start, next: check }
  check:
    kind: user_task
    name: Check
    raci: { responsible: [r], accountable: a }
    repeat: { until: "ok == true", max: 3 }
    next: activate
  activate:
    kind: service_task
    name: Activate
    handler: activate
    repeat: { until: "tries >= 2", max: 5 }
    next: done
  done: { kind: end }
"#;

#[test]
fn repeat_runs_again_until_the_condition_holds_with_iterations_in_the_audit() {
    let heard = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&heard);
    let engine = Engine::builder()
        .handler(
            "activate",
            handler_fn(|call| {
                let tries = call.vars.get("tries").and_then(Value::as_i64).unwrap_or(0);
                let mut out = Vars::new();
                out.insert("tries".into(), json!(tries + 1));
                Ok(out)
            }),
        )
        .hook(hook_fn(move |e: &Event| {
            if let Event::Repeated { iteration, .. } = e {
                log.lock().unwrap().push(*iteration);
            }
        }))
        .build();
    engine
        .deploy(ProcessDef::from_yaml(REPEAT).unwrap())
        .unwrap();
    let def = ProcessDef::from_yaml(REPEAT).unwrap();
    let check = def.node_id("check").unwrap();
    let activate = def.node_id("activate").unwrap();
    let id = engine.start("again", Vars::new()).unwrap();
    let r = Actor::new("rita", ["r"]);
    let t1 = engine.tasks(id).unwrap()[0].id;
    engine.complete(t1, &r, Vars::new()).unwrap();
    assert_eq!(engine.instance(id).unwrap().iteration(check), 2);
    let t2 = engine.tasks(id).unwrap()[0].id;
    assert_ne!(t1, t2, "a new task for the second run");
    engine
        .complete(t2, &r, vars(json!({ "ok": true })))
        .unwrap();
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Completed);
    assert_eq!(inst.vars()["tries"], json!(2));
    let repeats: Vec<Entry> = entries(&engine, id)
        .into_iter()
        .filter(|e| matches!(e, Entry::Repeated { .. }))
        .collect();
    assert_eq!(
        repeats,
        [
            Entry::Repeated {
                node: check,
                iteration: 2
            },
            Entry::Repeated {
                node: activate,
                iteration: 2
            },
        ]
    );
    assert_eq!(*heard.lock().unwrap(), [2, 2]);
    let report = procflow::Report::compute(
        &[Arc::new(def)],
        &[inst],
        &procflow::ReportOptions::default(),
    );
    let figures = |n: &str| report.node("again", n).map(|f| f.repeated).unwrap();
    assert_eq!(figures("check"), 1);
    assert_eq!(figures("activate"), 1);
}

#[test]
fn repeat_stops_at_max_with_a_warning() {
    let engine = Engine::builder()
        .handler("activate", handler_fn(|_| Ok(Vars::new())))
        .build();
    engine
        .deploy(ProcessDef::from_yaml(REPEAT).unwrap())
        .unwrap();
    let id = engine.start("again", Vars::new()).unwrap();
    let r = Actor::new("rita", ["r"]);
    for _ in 0..3 {
        let t = engine.tasks(id).unwrap()[0].id;
        engine.complete(t, &r, Vars::new()).unwrap();
    }
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Completed);
    let audit = entries(&engine, id);
    assert_eq!(
        audit
            .iter()
            .filter(|e| matches!(e, Entry::Repeated { .. }))
            .count(),
        2 + 4
    );
    assert!(audit.iter().any(|e| matches!(e, Entry::Warning { .. })));
    assert_eq!(
        inst.tasks().len(),
        3,
        "max 3 runs of the user task, then on"
    );
}

#[test]
fn misuse_is_located_and_reported_all_at_once() {
    let yaml = r#"
id: bad
version: 1
name: Bad
roles: { r: { name: R }, a: { name: A } }
variables:
  text: { type: string }
  list: { type: array }
  one: { type: string }
nodes:
  start: { kind: start, next: a }
  a:
    kind: user_task
    name: A
    raci: { responsible: [r], accountable: a }
    for_each: { in: missing, as: one, output: one, collect: text, complete_when: "one == 'x'" }
    next: b
  b:
    kind: user_task
    name: B
    raci: { responsible: [r], accountable: a }
    for_each: { in: text, as: item }
    repeat: { until: "one == 'y'" }
    next: g
  g:
    kind: exclusive
    for_each: { in: list, as: x }
    routes: [{ default: true, to: done }]
  done: { kind: end }
"#;
    let err = ProcessDef::from_yaml(yaml).unwrap_err();
    let problems = &err.problems;
    let kinds: Vec<&ProblemKind> = err.kinds();
    let has = |f: &dyn Fn(&ProblemKind) -> bool| kinds.iter().any(|k| f(k));
    assert!(has(
        &|k| matches!(k, ProblemKind::UnknownVariable { key: "for_each.in", name } if name == "missing")
    ));
    assert!(has(
        &|k| matches!(k, ProblemKind::ItemClash(n) if n == "one")
    ));
    assert!(has(&|k| matches!(
        k,
        ProblemKind::NotAList {
            key: "for_each.collect",
            ..
        }
    )));
    assert!(has(&|k| matches!(k, ProblemKind::CompletionReadsNothing)));
    assert!(has(&|k| matches!(
        k,
        ProblemKind::NotAList {
            key: "for_each.in",
            ..
        }
    )));
    assert!(has(&|k| matches!(k, ProblemKind::LoopWithoutMax)));
    assert!(has(&|k| matches!(k, ProblemKind::LoopShape(_))));
    assert!(has(&|k| matches!(
        k,
        ProblemKind::KeyNotAllowed {
            key: "for_each",
            kind: "exclusive"
        }
    )));
    assert!(problems.iter().all(|p| p.location.is_some()));
    let text = err.to_string();
    assert!(text.contains("nodes.b.repeat.max"), "{text}");
    assert!(text.contains("nodes.a.for_each.in"), "{text}");
}

#[test]
fn a_running_activity_survives_encode_and_decode() {
    let def = lines_def(true, None);
    let engine = engine_with(lines_def(true, None));
    let id = engine
        .start("lines", vars(json!({ "lines": ["a", "b"] })))
        .unwrap();
    let first = open_at(&engine, id, "fit")[0].id;
    engine
        .complete(first, &fitter(), vars(json!({ "result": "A" })))
        .unwrap();
    let inst = engine.instance(id).unwrap();
    let back = procflow::Instance::decode(&inst.encode(), inst.audit().to_vec()).unwrap();
    assert_eq!(back, inst);
    back.check(&def).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever the number of items and the order their tasks complete in, the collected list
    /// is the items' outputs in item order.
    #[test]
    fn collected_outputs_follow_item_order(
        n in 0usize..12,
        order in proptest::collection::vec(any::<u32>(), 12),
        parallel in any::<bool>(),
    ) {
        let engine = engine_with(lines_def(parallel, None));
        let items: Vec<Value> = (0..n).map(|k| json!(format!("item-{k}"))).collect();
        let id = engine.start("lines", vars(json!({ "lines": items }))).unwrap();
        let mut step = 0;
        loop {
            let open = open_at(&engine, id, "fit");
            if open.is_empty() {
                break;
            }
            let pick = &open[order[step % order.len()] as usize % open.len()];
            step += 1;
            let k = pick.item.unwrap();
            let inst = engine.instance(id).unwrap();
            let (_, value) = inst.task_item(pick.id.seq()).unwrap();
            let out = format!("out-{}", value.unwrap().as_str().unwrap());
            prop_assert_eq!(out.clone(), format!("out-item-{k}"));
            engine.complete(pick.id, &fitter(), vars(json!({ "result": out }))).unwrap();
        }
        let inst = engine.instance(id).unwrap();
        let want: Vec<Value> = (0..n).map(|k| json!(format!("out-item-{k}"))).collect();
        prop_assert_eq!(&inst.vars()["results"], &Value::Array(want));
        prop_assert_eq!(open_at(&engine, id, "after").len(), 1);
    }
}

#[test]
fn an_items_deadline_sees_its_item() {
    const DUE: &str = r#"
id: due
version: 1
name: Due per item
roles: { r: { name: R }, a: { name: A } }
variables: { lines: { type: array } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [r], accountable: a }
    for_each: { in: lines, as: line }
    due: { expr: "line.urgent == true ? '1h' : '4h'" }
    next: done
  done: { kind: end }
"#;
    let engine = engine_with(ProcessDef::from_yaml(DUE).unwrap_or_else(|e| panic!("{e}")));
    let id = engine
        .start(
            "due",
            vars(json!({ "lines": [{ "urgent": false }, { "urgent": true }] })),
        )
        .unwrap();
    let open = open_at(&engine, id, "work");
    let hours: Vec<i64> = open
        .iter()
        .map(|t| (t.due.unwrap() - t.created_at).num_hours())
        .collect();
    assert_eq!(hours, [4, 1]);
    // Outside a multi-instance task the name is unknown: a located load error.
    let bad = DUE.replace("    for_each: { in: lines, as: line }\n", "");
    let err = ProcessDef::from_yaml(&bad).unwrap_err();
    assert!(
        err.kinds()
            .iter()
            .any(|k| matches!(k, ProblemKind::UndeclaredVariable(v) if v == "line"))
    );
}

#[test]
fn open_items_survive_a_reopen_of_the_store() {
    let store = procflow::MemoryStore::new();
    let id = {
        let engine = Engine::builder().open(store.clone()).unwrap();
        engine.deploy(lines_def(false, None)).unwrap();
        let id = engine
            .start("lines", vars(json!({ "lines": ["a", "b", "c"] })))
            .unwrap();
        let first = open_at(&engine, id, "fit")[0].id;
        engine
            .complete(first, &fitter(), vars(json!({ "result": "A" })))
            .unwrap();
        id
    };
    let engine = Engine::builder().open(store).unwrap();
    let open = open_at(&engine, id, "fit");
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].item, Some(1));
    engine.add_items(id, "fit", vec![json!("d")]).unwrap();
    for out in ["B", "C", "D"] {
        let t = open_at(&engine, id, "fit")[0].id;
        engine
            .complete(t, &fitter(), vars(json!({ "result": out })))
            .unwrap();
    }
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.vars()["results"], json!(["A", "B", "C", "D"]));
}

#[test]
fn hooks_hear_withdrawn_items_and_the_end_of_the_activity() {
    let heard = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&heard);
    let engine = Engine::builder()
        .hook(hook_fn(move |e: &Event| match e {
            Event::TaskCancelled { task, .. } => log
                .lock()
                .unwrap()
                .push(format!("cancelled {}", task.seq())),
            Event::ItemsFinished {
                completed,
                withdrawn,
                ..
            } => log
                .lock()
                .unwrap()
                .push(format!("finished {completed}/{withdrawn}")),
            _ => {}
        }))
        .build();
    engine
        .deploy(lines_def(true, Some("completed == 1")))
        .unwrap();
    let id = engine
        .start("lines", vars(json!({ "lines": [1, 2, 3] })))
        .unwrap();
    let open = open_at(&engine, id, "fit");
    engine.complete(open[1].id, &fitter(), Vars::new()).unwrap();
    assert_eq!(
        *heard.lock().unwrap(),
        ["cancelled 0", "cancelled 2", "finished 1/2"]
    );
}

#[test]
fn a_service_item_setting_another_variable_is_an_incident() {
    let engine = Engine::builder()
        .handler("echo", handler_fn(|_| Ok(vars(json!({ "lines": [] })))))
        .build();
    engine
        .deploy(ProcessDef::from_yaml(&SERVICE.replace(" WHEN", "")).unwrap())
        .unwrap();
    let err = engine
        .start("svc", vars(json!({ "lines": [1, 2] })))
        .unwrap_err();
    let ExecError::Incident {
        instance, message, ..
    } = err
    else {
        panic!("{err}");
    };
    assert!(message.contains("'lines'"), "{message}");
    let inst = engine.instance(instance).unwrap();
    assert_eq!(
        inst.vars()["lines"],
        json!([1, 2]),
        "nothing leaked out of the item"
    );
    assert_eq!(inst.tokens()[0].state, TokenState::Failed);
}

#[test]
fn a_damaged_activity_is_refused_when_read() {
    let def = lines_def(true, None);
    let engine = engine_with(lines_def(true, None));
    let id = engine
        .start("lines", vars(json!({ "lines": ["a", "b"] })))
        .unwrap();
    let inst = engine.instance(id).unwrap();
    let mut state: Value = serde_json::from_str(&inst.encode()).unwrap();
    assert!(state.get("multi").is_some() && state.get("item_tasks").is_some());
    for damage in [
        |s: &mut Value| s["item_tasks"] = json!([]),
        |s: &mut Value| s["multi"][0]["state"] = json!(["pending", "pending"]),
        |s: &mut Value| s["multi"][0]["items"] = json!(["a"]),
        |s: &mut Value| s["multi"][0]["completed"] = json!(1),
        |s: &mut Value| s["multi"][0]["node"] = json!(0),
        |s: &mut Value| s["loops"] = json!([[1, 9]]),
    ] {
        let mut bad = state.clone();
        damage(&mut bad);
        let back = procflow::Instance::decode(&bad.to_string(), Vec::new()).unwrap();
        assert!(back.check(&def).is_err(), "{bad}");
    }
    state["multi"] = json!([]);
    let back = procflow::Instance::decode(&state.to_string(), Vec::new()).unwrap();
    assert!(
        back.check(&def).is_err(),
        "open item tasks without their activity"
    );
}

#[test]
fn the_collected_list_stays_within_a_variables_bounds() {
    let big = "x".repeat(40 * 1024);
    // A user task: the second large output is refused, and nothing changes.
    let engine = engine_with(lines_def(true, None));
    let id = engine
        .start("lines", vars(json!({ "lines": [1, 2] })))
        .unwrap();
    let open = open_at(&engine, id, "fit");
    engine
        .complete(open[0].id, &fitter(), vars(json!({ "result": big })))
        .unwrap();
    let err = engine
        .complete(open[1].id, &fitter(), vars(json!({ "result": big })))
        .unwrap_err();
    assert!(
        matches!(&err, ExecError::Variables { problems } if problems[0].0 == "results"
            && matches!(problems[0].1, VarProblem::TooLarge { .. })),
        "{err}"
    );
    assert_eq!(open_at(&engine, id, "fit").len(), 1);
    // Items added past the bound are refused.
    let err = engine
        .add_items(id, "fit", vec![json!(big), json!(big)])
        .unwrap_err();
    assert!(matches!(err, ExecError::Variables { .. }), "{err}");
    // A service task: an incident at the item that would overflow it.
    let engine = Engine::builder()
        .handler(
            "echo",
            handler_fn(move |_| Ok(vars(json!({ "out": "y".repeat(40 * 1024) })))),
        )
        .build();
    engine
        .deploy(ProcessDef::from_yaml(&SERVICE.replace(" WHEN", "")).unwrap())
        .unwrap();
    let err = engine
        .start("svc", vars(json!({ "lines": [1, 2] })))
        .unwrap_err();
    let ExecError::Incident { message, .. } = &err else {
        panic!("{err}");
    };
    assert!(
        message.contains("item 1") && message.contains("outs"),
        "{message}"
    );
}
