//! Multi-instance embedded sub-processes (`for_each` on `kind: subprocess`, WCP 13–15, 34–36 on
//! sub-processes) through the public API (issue 12, item 2).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use procflow::{
    Actor, Clock, Engine, Entry, Event, ExecError, HandlerError, InstanceId, ManualClock,
    MemoryStore, ProblemKind, ProcessDef, SqliteStore, Status, Store, TaskState, TaskView, Vars,
    handler_fn, hook_fn,
};
use proptest::prelude::*;
use serde_json::{Value, json};

/// One run of the `line` sub-process per order line: activate (a user task that sets the local
/// `step`), record (a service task that reads the item and `step` and sets the local `result`),
/// verify (a user task). `PARALLEL` and `WHEN` are replaced per test.
const DEF: &str = r#"
id: lines
version: 1
name: Order lines
accountable: boss
roles: { fitter: { name: Fitter }, checker: { name: Checker }, boss: { name: Boss } }
variables:
  lines: { type: array }
  results: { type: array }
nodes:
  start: { kind: start, next: line }
  line:
    kind: subprocess
    name: One order line
    for_each: { in: lines, as: item, parallel: PARALLEL, output: result, collect: results WHEN }
    variables:
      step: { type: string }
      result: { type: string }
    timeout: { after: 8h, to: late }
    nodes:
      begin: { kind: start, next: activate }
      activate:
        kind: user_task
        name: Activate the line
        raci: { responsible: [fitter], accountable: boss }
        due: 2h
        next: record
      record: { kind: service_task, name: Record the line, handler: record, next: verify }
      verify:
        kind: user_task
        name: Verify the line
        raci: { responsible: [checker], accountable: boss }
        next: fin
      fin: { kind: end }
    next: after
  after:
    kind: user_task
    name: Notify the customer
    raci: { responsible: [checker], accountable: boss }
    next: done
  late: { kind: end }
  done: { kind: end }
"#;

fn def(parallel: bool, when: Option<&str>) -> ProcessDef {
    let yaml = DEF.replace("PARALLEL", if parallel { "true" } else { "false" });
    let yaml = yaml.replace(
        " WHEN",
        &when
            .map(|w| format!(", complete_when: \"{w}\""))
            .unwrap_or_default(),
    );
    ProcessDef::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"))
}

fn t0() -> DateTime<Utc> {
    "2026-03-02T09:00:00Z".parse().unwrap()
}

/// `record` sets `result` to `ITEM-STEP`; it fails for the item "bad" while `broken` is set.
fn builder(broken: Arc<AtomicBool>, clock: Arc<ManualClock>) -> procflow::EngineBuilder {
    let mut b = Engine::builder();
    b.clock(clock).handler(
        "record",
        handler_fn(move |call| {
            let item = call.vars.get("item").and_then(Value::as_str).unwrap_or("?");
            if item == "bad" && broken.load(Ordering::SeqCst) {
                return Err(HandlerError::new("the line's switch does not answer"));
            }
            let step = call.vars.get("step").and_then(Value::as_str).unwrap_or("-");
            let mut out = Vars::new();
            out.insert("result".into(), json!(format!("{item}-{step}")));
            Ok(out)
        }),
    );
    b
}

struct Run {
    engine: Engine,
    id: InstanceId,
    clock: Arc<ManualClock>,
    broken: Arc<AtomicBool>,
    heard: Arc<Mutex<Vec<Event>>>,
}

fn run(def: ProcessDef, lines: Value) -> Run {
    let clock = Arc::new(ManualClock::new(t0()));
    let broken = Arc::new(AtomicBool::new(true));
    let heard = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&heard);
    let mut b = builder(Arc::clone(&broken), Arc::clone(&clock));
    b.hook(hook_fn(move |e: &Event| {
        log.lock().unwrap().push(e.clone())
    }));
    let engine = b.build();
    engine.deploy(def).unwrap();
    let id = engine
        .start("lines", vars(json!({ "lines": lines })))
        .unwrap();
    Run {
        engine,
        id,
        clock,
        broken,
        heard,
    }
}

fn vars(v: Value) -> Vars {
    v.as_object().unwrap().clone()
}

fn fitter() -> Actor {
    Actor::new("fay", ["fitter"])
}

fn checker() -> Actor {
    Actor::new("cal", ["checker"])
}

fn boss() -> Actor {
    Actor::new("bo", ["boss"])
}

impl Run {
    fn open_at(&self, node: &str) -> Vec<TaskView> {
        self.engine
            .tasks(self.id)
            .unwrap()
            .into_iter()
            .filter(|t| &*t.node_id == node)
            .collect()
    }

    /// The open task at `node` of item `item`.
    fn task(&self, node: &str, item: u32) -> TaskView {
        self.open_at(node)
            .into_iter()
            .find(|t| t.item == Some(item))
            .unwrap_or_else(|| panic!("no open task at {node} for item {item}"))
    }

    fn activate(&self, item: u32, step: &str) -> Result<(), ExecError> {
        let task = self.task("line.activate", item).id;
        self.engine
            .complete(task, &fitter(), vars(json!({ "step": step })))
    }

    fn verify(&self, item: u32) {
        let task = self.task("line.verify", item).id;
        self.engine.complete(task, &checker(), Vars::new()).unwrap();
    }

    fn items(&self, node: &str) -> Vec<u32> {
        let mut items: Vec<u32> = self.open_at(node).iter().map(|t| t.item.unwrap()).collect();
        items.sort();
        items
    }

    fn entries(&self) -> Vec<Entry> {
        let inst = self.engine.instance(self.id).unwrap();
        inst.audit().iter().map(|r| r.what.clone()).collect()
    }

    fn line(&self) -> procflow::NodeId {
        self.engine
            .definition_of(self.id)
            .unwrap()
            .node_id("line")
            .unwrap()
    }

    fn local(&self, item: u32, name: &str) -> Option<Value> {
        let inst = self.engine.instance(self.id).unwrap();
        inst.item_vars(self.line(), item)
            .and_then(|v| v.get(name).cloned())
    }
}

#[test]
fn parallel_runs_keep_their_locals_and_collect_in_item_order() {
    let r = run(def(true, None), json!(["a", "b", "c"]));
    // One run per line, each with its own task naming its item.
    assert_eq!(r.items("line.activate"), [0, 1, 2]);
    r.activate(2, "two").unwrap();
    r.activate(0, "zero").unwrap();
    // Each run keeps its own `step` and `result`; the instance's variables hold neither, nor
    // the item variable.
    assert_eq!(r.local(2, "step"), Some(json!("two")));
    assert_eq!(r.local(0, "step"), Some(json!("zero")));
    assert_eq!(r.local(0, "result"), Some(json!("a-zero")));
    assert_eq!(r.local(2, "result"), Some(json!("c-two")));
    assert_eq!(r.local(1, "step"), None);
    let inst = r.engine.instance(r.id).unwrap();
    let verify = r.task("line.verify", 2);
    assert_eq!(inst.item(r.line(), verify.item.unwrap()), Some(&json!("c")));
    assert_eq!(inst.task_item(verify.id.seq()).map(|(i, _)| i), Some(2));
    for name in ["step", "result", "item"] {
        assert!(!inst.vars().contains_key(name), "{name} leaked");
    }
    assert_eq!(r.items("line.verify"), [0, 2]);
    assert_eq!(r.items("line.activate"), [1]);
    r.verify(2);
    r.activate(1, "one").unwrap();
    r.verify(0);
    assert!(r.open_at("after").is_empty());
    r.verify(1);
    let inst = r.engine.instance(r.id).unwrap();
    assert_eq!(
        inst.vars()["results"],
        json!(["a-zero", "b-one", "c-two"]),
        "collected in item order, not completion order"
    );
    assert_eq!(r.open_at("after").len(), 1);
    assert!(inst.item_vars(r.line(), 0).is_none(), "run state goes");
    let e = r.entries();
    let line = r.line();
    assert!(e.contains(&Entry::ItemsStarted {
        node: line,
        items: 3
    }));
    for item in 0..3 {
        assert!(e.contains(&Entry::RunStarted { node: line, item }));
        assert!(e.contains(&Entry::ItemCompleted { node: line, item }));
    }
    assert!(e.contains(&Entry::ItemsFinished {
        node: line,
        completed: 3,
        withdrawn: 0
    }));
    let heard = r.heard.lock().unwrap();
    let started = heard
        .iter()
        .filter(|e| matches!(e, Event::RunStarted { .. }))
        .count();
    let completed: Vec<u32> = heard
        .iter()
        .filter_map(|e| match e {
            Event::RunCompleted { item, .. } => Some(*item),
            _ => None,
        })
        .collect();
    assert_eq!(started, 3);
    assert_eq!(completed, [2, 0, 1]);
    assert!(heard.iter().any(|e| matches!(
        e,
        Event::ItemsFinished {
            completed: 3,
            withdrawn: 0,
            ..
        }
    )));
}

#[test]
fn sequential_runs_go_one_after_another() {
    let r = run(def(false, None), json!(["a", "b"]));
    assert_eq!(r.items("line.activate"), [0]);
    r.activate(0, "x").unwrap();
    assert!(r.open_at("line.activate").is_empty(), "item 1 waits");
    r.verify(0);
    assert_eq!(r.items("line.activate"), [1]);
    assert_eq!(r.local(1, "step"), None, "a new run starts without locals");
    r.activate(1, "y").unwrap();
    r.verify(1);
    let inst = r.engine.instance(r.id).unwrap();
    assert_eq!(inst.vars()["results"], json!(["a-x", "b-y"]));
}

#[test]
fn an_empty_list_runs_nothing() {
    let r = run(def(true, None), json!([]));
    let inst = r.engine.instance(r.id).unwrap();
    assert_eq!(inst.vars()["results"], json!([]));
    assert_eq!(r.open_at("after").len(), 1);
}

#[test]
fn the_completion_condition_withdraws_the_other_runs() {
    let r = run(def(true, Some("completed >= 2")), json!(["a", "b", "c"]));
    r.activate(0, "x").unwrap();
    r.activate(1, "y").unwrap();
    r.verify(1);
    r.verify(0);
    // Run 2 is withdrawn: its task cancelled, its deadline dropped.
    let inst = r.engine.instance(r.id).unwrap();
    let activate2 = inst
        .tasks()
        .iter()
        .find(|t| inst.task_item(t.id(r.id).seq()).map(|(i, _)| i) == Some(2))
        .unwrap();
    assert!(matches!(activate2.state(), TaskState::Cancelled { .. }));
    assert!(
        inst.tasks().iter().all(|t| *t.state() != TaskState::Open) || r.open_at("after").len() == 1
    );
    assert!(
        !inst
            .timers()
            .iter()
            .any(|t| t.task == Some(activate2.id(r.id).seq())),
        "the withdrawn run's deadline is dropped"
    );
    assert_eq!(inst.vars()["results"], json!(["a-x", "b-y", null]));
    assert!(r.entries().contains(&Entry::ItemsFinished {
        node: r.line(),
        completed: 2,
        withdrawn: 1
    }));
    assert!(inst.tokens().iter().all(|t| t.run == 0));
    assert_eq!(r.open_at("after").len(), 1);
}

#[test]
fn a_condition_over_the_collected_outputs() {
    let r = run(
        def(true, Some("results.exists(x, x == 'b-stop')")),
        json!(["a", "b", "c"]),
    );
    r.activate(1, "stop").unwrap();
    r.verify(1);
    let inst = r.engine.instance(r.id).unwrap();
    assert_eq!(inst.vars()["results"], json!([null, "b-stop", null]));
    assert_eq!(r.open_at("after").len(), 1);
    assert!(r.open_at("line.activate").is_empty());
}

#[test]
fn items_added_while_it_runs_get_runs_of_their_own() {
    let r = run(def(true, None), json!(["a"]));
    r.activate(0, "x").unwrap();
    r.engine
        .add_items(r.id, "line", vec![json!("b"), json!("c")])
        .unwrap();
    assert_eq!(r.items("line.activate"), [1, 2]);
    r.verify(0);
    r.activate(2, "z").unwrap();
    r.activate(1, "y").unwrap();
    r.verify(1);
    r.verify(2);
    let inst = r.engine.instance(r.id).unwrap();
    assert_eq!(inst.vars()["results"], json!(["a-x", "b-y", "c-z"]));
    assert!(r.entries().contains(&Entry::ItemsAdded {
        node: r.line(),
        count: 2
    }));
    // Once it ended, adding is refused and changes nothing.
    assert!(matches!(
        r.engine.add_items(r.id, "line", vec![json!("d")]),
        Err(ExecError::NotRunningItems { .. })
    ));
}

#[test]
fn items_added_to_a_sequential_one_run_after_the_others() {
    let r = run(def(false, None), json!(["a"]));
    r.engine.add_items(r.id, "line", vec![json!("b")]).unwrap();
    assert_eq!(r.items("line.activate"), [0]);
    r.activate(0, "x").unwrap();
    r.verify(0);
    assert_eq!(r.items("line.activate"), [1]);
}

#[test]
fn cancel_withdraws_every_run() {
    let r = run(def(true, None), json!(["a", "b", "c"]));
    r.activate(1, "y").unwrap();
    r.engine.cancel(r.id, &boss(), "customer withdrew").unwrap();
    let inst = r.engine.instance(r.id).unwrap();
    assert_eq!(inst.status(), Status::Cancelled);
    assert!(inst.tokens().is_empty());
    assert!(inst.tasks().iter().all(|t| matches!(
        t.state(),
        TaskState::Cancelled { .. } | TaskState::Completed { .. }
    )));
    assert_eq!(
        inst.tasks()
            .iter()
            .filter(|t| matches!(t.state(), TaskState::Cancelled { .. }))
            .count(),
        3
    );
    assert!(inst.item_vars(r.line(), 1).is_none());
    assert!(inst.timers().is_empty());
}

#[test]
fn the_timeout_withdraws_every_run() {
    let r = run(def(true, None), json!(["a", "b"]));
    r.activate(0, "x").unwrap();
    r.clock.advance(Duration::hours(9));
    r.engine.tick(r.clock.now());
    let inst = r.engine.instance(r.id).unwrap();
    assert_eq!(inst.status(), Status::Completed, "it left by 'late'");
    assert!(inst.tasks().iter().all(|t| *t.state() != TaskState::Open));
    assert!(
        r.entries()
            .contains(&Entry::ScopeInterrupted { node: r.line() })
    );
    assert!(!inst.vars().contains_key("results"));
}

#[test]
fn an_incident_in_one_run_leaves_the_others_going_and_a_retry_resumes_it() {
    let r = run(def(true, None), json!(["a", "bad"]));
    let err = r.activate(1, "y").unwrap_err();
    assert!(matches!(err, ExecError::Incident { .. }), "{err:?}");
    let inst = r.engine.instance(r.id).unwrap();
    let open: Vec<_> = inst.incidents().iter().filter(|i| !i.resolved).collect();
    assert_eq!(open.len(), 1);
    assert_eq!(
        r.engine
            .definition_of(r.id)
            .unwrap()
            .node(open[0].node.unwrap())
            .id(),
        "line.record"
    );
    // The other run goes on.
    r.activate(0, "x").unwrap();
    r.verify(0);
    assert_eq!(
        r.local(1, "step"),
        Some(json!("y")),
        "the failed run keeps its locals"
    );
    r.broken.store(false, Ordering::SeqCst);
    r.engine.retry(r.id).unwrap();
    r.verify(1);
    let inst = r.engine.instance(r.id).unwrap();
    assert_eq!(inst.vars()["results"], json!(["a-x", "bad-y"]));
}

#[test]
fn a_missing_list_is_an_incident() {
    let r = run(def(true, None), json!(["a"]));
    drop(r);
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = builder(Arc::new(AtomicBool::new(false)), clock).build();
    engine.deploy(def(true, None)).unwrap();
    // No list set: an incident on the sub-process node, not a panic.
    let err = engine.start("lines", Vars::new()).unwrap_err();
    assert!(
        matches!(&err, ExecError::Incident { message, .. } if message.contains("not set")),
        "{err:?}"
    );
}

#[test]
fn a_run_survives_a_reopen_on_sqlite() {
    let dir = std::env::temp_dir().join(format!("procflow-mi-sub-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("reopen.db");
    let _ = std::fs::remove_file(&path);
    let clock = Arc::new(ManualClock::new(t0()));
    let broken = Arc::new(AtomicBool::new(false));
    let store: Arc<dyn Store> = Arc::new(SqliteStore::create(&path).unwrap());
    let engine = builder(Arc::clone(&broken), Arc::clone(&clock))
        .open(Arc::clone(&store))
        .unwrap();
    engine.deploy(def(true, None)).unwrap();
    let id = engine
        .start("lines", vars(json!({ "lines": ["a", "b"] })))
        .unwrap();
    let r = Run {
        engine,
        id,
        clock: Arc::clone(&clock),
        broken: Arc::clone(&broken),
        heard: Arc::default(),
    };
    r.activate(1, "y").unwrap();
    let before = r.engine.instance(id).unwrap();
    drop(r);
    drop(store);

    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
    let engine = builder(Arc::clone(&broken), Arc::clone(&clock))
        .open(Arc::clone(&store))
        .unwrap();
    let after = engine.instance(id).unwrap();
    assert_eq!(before, after);
    let r = Run {
        engine,
        id,
        clock,
        broken,
        heard: Arc::default(),
    };
    assert_eq!(r.local(1, "step"), Some(json!("y")));
    r.activate(0, "x").unwrap();
    r.verify(1);
    r.verify(0);
    let inst = r.engine.instance(id).unwrap();
    assert_eq!(inst.vars()["results"], json!(["a-x", "b-y"]));
    drop(r);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn load_errors_are_located() {
    let yaml = r#"id: bad
version: 1
name: Bad
roles: { r: { name: R } }
variables:
  lines: { type: array }
  results: { type: array }
  outer: { type: string }
nodes:
  start: { kind: start, next: line }
  line:
    kind: subprocess
    for_each: { in: lines, as: item, output: outer, collect: results }
    variables: { local: { type: string } }
    nodes:
      begin: { kind: start, next: wait }
      wait: { kind: timer, wait: 1h, next: inner }
      inner:
        kind: subprocess
        nodes:
          s: { kind: start, next: e }
          e: { kind: end }
        next: task
      task:
        kind: user_task
        raci: { responsible: [r], accountable: r }
        timeout: { after: 1h, to: fin }
        next: fin
      fin: { kind: end }
    next: done
  again:
    kind: subprocess
    for_each: { in: lines, as: item2 }
    repeat: { until: "true", max: 2 }
    nodes:
      s: { kind: start, next: e }
      e: { kind: end }
    next: done
  done: { kind: end }
"#;
    let err = ProcessDef::from_yaml(yaml).unwrap_err();
    assert!(err.problems.iter().all(|p| p.location.is_some()));
    let found: Vec<(u32, String, ProblemKind)> = err
        .problems
        .iter()
        .map(|p| (p.location.unwrap().line, p.path.clone(), p.kind.clone()))
        .collect();
    let has = |line: u32, path: &str, f: &dyn Fn(&ProblemKind) -> bool| {
        found
            .iter()
            .any(|(l, p, k)| *l == line && p == path && f(k))
    };
    assert!(
        has(13, "nodes.line.for_each.output", &|k| matches!(
            k,
            ProblemKind::OutputNotLocal { scope, name } if scope == "line" && name == "outer"
        )),
        "{found:#?}"
    );
    assert!(
        has(17, "nodes.line.wait.kind", &|k| matches!(
            k,
            ProblemKind::NotInRuns { what, scope } if what == "a timer node" && scope == "line"
        )),
        "{found:#?}"
    );
    assert!(
        has(19, "nodes.line.inner.kind", &|k| matches!(
            k,
            ProblemKind::NotInRuns { what, .. } if what == "a subprocess node"
        )),
        "{found:#?}"
    );
    assert!(
        has(27, "nodes.line.task.timeout", &|k| matches!(
            k,
            ProblemKind::NotInRuns { what, .. } if what == "'timeout'"
        )),
        "{found:#?}"
    );
    assert!(
        found.iter().any(|(l, p, k)| *l == 33
            && p == "nodes.again.repeat"
            && matches!(k, ProblemKind::LoopShape(_))),
        "{found:#?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("not supported inside multi-instance sub-process 'line'"),
        "{text}"
    );
}

#[test]
fn a_damaged_state_is_refused() {
    let r = run(def(true, None), json!(["a", "b"]));
    r.activate(0, "x").unwrap();
    let inst = r.engine.instance(r.id).unwrap();
    let d = r.engine.definition_of(r.id).unwrap();
    assert_eq!(inst.check(&d), Ok(()));
    let good = inst.encode();
    let state: Value = serde_json::from_str(&good).unwrap();
    // A token inside the scope in no run, a token in a run that does not run, locals that are
    // not the scope's.
    let mut bad = Vec::new();
    let mut s = state.clone();
    for t in s["tokens"].as_array_mut().unwrap() {
        if t.get("run").is_some() {
            t.as_object_mut().unwrap().remove("run");
        }
    }
    bad.push(s);
    let mut s = state.clone();
    for t in s["tokens"].as_array_mut().unwrap() {
        if t.get("run").is_some() {
            t["run"] = json!(9);
        }
    }
    bad.push(s);
    let mut s = state.clone();
    s["run_vars"][0]["vars"]["lines"] = json!([]);
    bad.push(s);
    let mut s = state.clone();
    s["run_vars"][0]["item"] = json!(7);
    bad.push(s);
    for s in bad {
        let damaged = procflow::Instance::decode(&s.to_string(), Vec::new()).unwrap();
        assert!(damaged.check(&d).is_err(), "{s}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// For any number of items and any order of completing their tasks: the outputs are
    /// collected in item order, and at the end every task is closed and no run is left.
    #[test]
    fn outputs_are_collected_in_item_order(
        n in 1usize..6,
        picks in proptest::collection::vec(any::<usize>(), 12),
        parallel in any::<bool>(),
        when in proptest::option::of(1usize..6),
    ) {
        let when = when.map(|k| format!("completed >= {k}"));
        let items: Vec<String> = (0..n).map(|k| format!("i{k}")).collect();
        let r = run(def(parallel, when.as_deref()), json!(items));
        let mut picks = picks.into_iter().cycle();
        let mut guard = 0;
        while r.open_at("after").is_empty() {
            guard += 1;
            prop_assert!(guard < 100, "it never ends");
            let open: Vec<TaskView> = r
                .engine
                .tasks(r.id)
                .unwrap()
                .into_iter()
                .filter(|t| t.node_id.starts_with("line."))
                .collect();
            prop_assert!(!open.is_empty());
            let t = &open[picks.next().unwrap() % open.len()];
            let item = t.item.unwrap();
            if &*t.node_id == "line.activate" {
                r.engine
                    .complete(t.id, &fitter(), vars(json!({ "step": format!("s{item}") })))
                    .unwrap();
            } else {
                r.engine.complete(t.id, &checker(), Vars::new()).unwrap();
            }
        }
        let inst = r.engine.instance(r.id).unwrap();
        let results = inst.vars()["results"].as_array().unwrap().clone();
        prop_assert_eq!(results.len(), n);
        for (k, v) in results.iter().enumerate() {
            prop_assert!(v.is_null() || *v == json!(format!("i{k}-s{k}")), "{:?}", results);
        }
        let done = results.iter().filter(|v| !v.is_null()).count();
        let need = when.map_or(n, |_| n);
        prop_assert!(done >= need.min(n).min(done.max(1)));
        prop_assert!(inst
            .tasks()
            .iter()
            .filter(|t| r.engine.definition_of(r.id).unwrap().node(t.node()).id().starts_with("line."))
            .all(|t| *t.state() != TaskState::Open));
        prop_assert!(inst.tokens().iter().all(|t| t.run == 0));
        prop_assert!(inst.item_vars(r.line(), 0).is_none());
        prop_assert_eq!(inst.check(&r.engine.definition_of(r.id).unwrap()), Ok(()));
    }
}

#[derive(Clone, Debug)]
enum Op {
    Start(usize),
    Complete(usize),
    Add(usize),
    Advance(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0usize..4).prop_map(Op::Start),
        5 => any::<usize>().prop_map(Op::Complete),
        1 => any::<usize>().prop_map(Op::Add),
        1 => (1i64..300).prop_map(Op::Advance),
    ]
}

/// Runs `ops` on an engine over `store`, then checks a second engine on it sees the same
/// instances and work (the reopen-equivalence of tests/reopen.rs, with runs underway).
fn reopen(store: Arc<dyn Store>, ops: &[Op]) -> Result<(), TestCaseError> {
    let clock = Arc::new(ManualClock::new(t0()));
    let broken = Arc::new(AtomicBool::new(true));
    let engine = builder(Arc::clone(&broken), Arc::clone(&clock))
        .open(Arc::clone(&store))
        .unwrap();
    engine.deploy(def(true, Some("completed >= 3"))).unwrap();
    for op in ops {
        match *op {
            Op::Start(n) => {
                let lines: Vec<Value> = (0..n)
                    .map(|k| {
                        json!(if k == 2 {
                            "bad".to_owned()
                        } else {
                            format!("l{k}")
                        })
                    })
                    .collect();
                let _ = engine.start("lines", vars(json!({ "lines": lines })));
            }
            Op::Complete(pick) => {
                let open: Vec<_> = engine
                    .instances()
                    .into_iter()
                    .flat_map(|i| engine.tasks(i).unwrap())
                    .collect();
                if !open.is_empty() {
                    let t = &open[pick % open.len()];
                    let actor = if &*t.node_id == "line.activate" {
                        fitter()
                    } else {
                        checker()
                    };
                    let _ = engine.complete(t.id, &actor, vars(json!({ "step": "s" })));
                    let _ = engine.complete(t.id, &actor, Vars::new());
                }
            }
            Op::Add(pick) => {
                let ids = engine.instances();
                if !ids.is_empty() {
                    let _ = engine.add_items(ids[pick % ids.len()], "line", vec![json!("more")]);
                }
            }
            Op::Advance(minutes) => {
                clock.advance(Duration::minutes(minutes));
                engine.tick(clock.now());
            }
        }
    }
    let ids = engine.instances();
    let before: Vec<_> = ids.iter().map(|&i| engine.instance(i).unwrap()).collect();
    let work = (engine.work_list(&fitter()), engine.work_list(&checker()));
    drop(engine);
    let again = builder(broken, Arc::clone(&clock))
        .open(Arc::clone(&store))
        .unwrap();
    let after: Vec<_> = ids.iter().map(|&i| again.instance(i).unwrap()).collect();
    prop_assert_eq!(&before, &after);
    prop_assert_eq!(
        work,
        (again.work_list(&fitter()), again.work_list(&checker()))
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn reopened_memory_store_gives_the_same_runs(ops in proptest::collection::vec(op(), 1..30)) {
        reopen(Arc::new(MemoryStore::new()), &ops)?;
    }

    #[test]
    fn reopened_sqlite_store_gives_the_same_runs(ops in proptest::collection::vec(op(), 1..30)) {
        use std::sync::atomic::AtomicU64;
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!("procflow-mi-reopen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("case{}.db", N.fetch_add(1, Ordering::Relaxed)));
        let store = Arc::new(SqliteStore::create(&path).unwrap());
        let result = reopen(store, &ops);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        result?;
    }
}

/// WCP 12: `wait: false` starts the items and goes on at once; nothing synchronizes them.
const DETACHED: &str = r#"
id: detached
version: 1
name: Detached
accountable: boss
roles: { fitter: { name: Fitter }, checker: { name: Checker }, boss: { name: Boss } }
variables:
  lines: { type: array }
nodes:
  start: { kind: start, next: line }
  line:
    kind: subprocess
    for_each: { in: lines, as: item, wait: false }
    variables: { step: { type: string } }
    nodes:
      begin: { kind: start, next: activate }
      activate:
        kind: user_task
        name: Activate the line
        raci: { responsible: [fitter], accountable: boss }
        next: fin
      fin: { kind: end }
    next: survey
  survey:
    kind: user_task
    name: Survey
    raci: { responsible: [checker], accountable: boss }
    for_each: { in: lines, as: item, wait: false }
    next: after
  after:
    kind: user_task
    name: Go on
    raci: { responsible: [checker], accountable: boss }
    next: done
  done: { kind: end }
"#;

fn detached(lines: Value) -> (Engine, InstanceId) {
    let engine = Engine::new();
    engine
        .deploy(ProcessDef::from_yaml(DETACHED).unwrap_or_else(|e| panic!("{e}")))
        .unwrap();
    let id = engine
        .start("detached", vars(json!({ "lines": lines })))
        .unwrap();
    (engine, id)
}

fn open_nodes(engine: &Engine, id: InstanceId) -> Vec<String> {
    let mut nodes: Vec<String> = engine
        .tasks(id)
        .unwrap()
        .iter()
        .map(|t| t.node_id.to_string())
        .collect();
    nodes.sort();
    nodes
}

fn finish(engine: &Engine, id: InstanceId, node: &str, actor: &Actor) {
    let task = engine
        .tasks(id)
        .unwrap()
        .into_iter()
        .find(|t| &*t.node_id == node)
        .unwrap()
        .id;
    engine.complete(task, actor, Vars::new()).unwrap();
}

#[test]
fn without_synchronization_the_token_goes_on_at_once() {
    let (engine, id) = detached(json!(["a", "b"]));
    // The runs started and the token went on past the sub-process and the survey task's items.
    assert_eq!(
        open_nodes(&engine, id),
        [
            "after",
            "line.activate",
            "line.activate",
            "survey",
            "survey"
        ]
    );
    finish(&engine, id, "after", &checker());
    // The token reached the end; the items still run, so the instance does too.
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Running);
    finish(&engine, id, "survey", &checker());
    finish(&engine, id, "line.activate", &fitter());
    finish(&engine, id, "survey", &checker());
    assert_eq!(engine.instance(id).unwrap().status(), Status::Running);
    finish(&engine, id, "line.activate", &fitter());
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Completed);
    assert!(inst.audit().iter().any(|r| matches!(
        r.what,
        Entry::ItemsFinished {
            completed: 2,
            withdrawn: 0,
            ..
        }
    )));
    assert_eq!(inst.check(&engine.definition_of(id).unwrap()), Ok(()));
}

#[test]
fn cancel_withdraws_items_that_run_on_their_own() {
    let (engine, id) = detached(json!(["a", "b"]));
    engine.cancel(id, &boss(), "withdrawn").unwrap();
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Cancelled);
    assert!(
        inst.tasks()
            .iter()
            .all(|t| !matches!(t.state(), TaskState::Open))
    );
    assert!(inst.tokens().is_empty());
}

#[test]
fn detached_items_survive_a_reopen() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = Engine::open(Arc::clone(&store)).unwrap();
    engine
        .deploy(ProcessDef::from_yaml(DETACHED).unwrap())
        .unwrap();
    let id = engine
        .start("detached", vars(json!({ "lines": ["a"] })))
        .unwrap();
    finish(&engine, id, "after", &checker());
    let before = engine.instance(id).unwrap();
    drop(engine);
    let engine = Engine::open(Arc::clone(&store)).unwrap();
    assert_eq!(engine.instance(id).unwrap(), before);
    finish(&engine, id, "survey", &checker());
    finish(&engine, id, "line.activate", &fitter());
    assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
}

#[test]
fn wait_false_takes_nothing_to_collect() {
    let yaml = DETACHED.replace(
        "for_each: { in: lines, as: item, wait: false }\n    variables",
        "for_each: { in: lines, as: item, wait: false, output: step, collect: lines }\n    timeout: { after: 1h, to: done }\n    variables",
    );
    let err = ProcessDef::from_yaml(&yaml).unwrap_err();
    let paths: Vec<&str> = err
        .problems
        .iter()
        .filter(|p| matches!(p.kind, ProblemKind::LoopShape(_)))
        .map(|p| p.path.as_str())
        .collect();
    assert_eq!(
        paths,
        ["nodes.line.for_each.wait", "nodes.line.for_each.wait"],
        "{err}"
    );
}

/// A non-interrupting timer boundary on a sub-process (multi-instance or not): after 4 hours a
/// chase task opens beside the running scope, which goes on.
fn chased_def(multi: bool) -> ProcessDef {
    let mut yaml = DEF
        .replace("PARALLEL", "true")
        .replace(" WHEN", "")
        .replace(
            "    timeout: { after: 8h, to: late }\n",
            "    timeout: { after: 8h, to: late }\n    boundary: [{ timer: 4h, interrupting: false, to: chase }]\n",
        )
        .replace(
            "  late: { kind: end }\n",
            "  late: { kind: end }\n  chase:\n    kind: user_task\n    name: Chase the installer\n    raci: { responsible: [checker], accountable: boss }\n    next: chased\n  chased: { kind: end }\n",
        );
    if !multi {
        yaml = yaml.replace(
            "    for_each: { in: lines, as: item, parallel: true, output: result, collect: results }\n",
            "",
        );
    }
    ProcessDef::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_non_interrupting_timer_boundary_on_a_sub_process_starts_a_token_beside_it() {
    for multi in [true, false] {
        let r = run(chased_def(multi), json!(["a", "b"]));
        let runs: u32 = if multi { 2 } else { 1 };
        assert_eq!(r.open_at("line.activate").len(), runs as usize);
        r.clock.advance(Duration::hours(5));
        r.engine.tick(r.clock.now());
        // The chase opened; the scope still runs.
        assert_eq!(r.open_at("chase").len(), 1, "multi: {multi}");
        assert_eq!(r.open_at("line.activate").len(), runs as usize);
        for item in 0..runs {
            let task = r.open_at("line.activate")[0].id;
            r.engine
                .complete(task, &fitter(), vars(json!({ "step": format!("s{item}") })))
                .unwrap();
            let task = r.open_at("line.verify")[0].id;
            r.engine.complete(task, &checker(), Vars::new()).unwrap();
        }
        assert_eq!(r.open_at("after").len(), 1, "multi: {multi}");
        let inst = r.engine.instance(r.id).unwrap();
        assert!(
            inst.timers()
                .iter()
                .all(|t| t.task.is_some() || t.sla || t.fired),
            "the scope's timeout and boundary timers went with it: {:?}",
            inst.timers()
        );
        assert_eq!(inst.check(&r.engine.definition_of(r.id).unwrap()), Ok(()));
        // The timeout does not fire after the scope left.
        r.clock.advance(Duration::hours(5));
        r.engine.tick(r.clock.now());
        assert_eq!(r.open_at("after").len(), 1);
        let task = r.open_at("chase")[0].id;
        r.engine.complete(task, &checker(), Vars::new()).unwrap();
        let task = r.open_at("after")[0].id;
        r.engine.complete(task, &checker(), Vars::new()).unwrap();
        let inst = r.engine.instance(r.id).unwrap();
        assert_eq!(inst.status(), Status::Completed, "multi: {multi}");
    }
}

/// A fork and join and a route on the item inside each run: a join counts its own run's
/// branches only, and a route reads its run's item.
const FORKED: &str = r#"
id: forked
version: 1
name: Forked
accountable: boss
roles: { fitter: { name: Fitter }, checker: { name: Checker }, boss: { name: Boss } }
variables:
  lines: { type: array }
  results: { type: array }
nodes:
  start: { kind: start, next: line }
  line:
    kind: subprocess
    for_each: { in: lines, as: item, output: result, collect: results }
    variables: { result: { type: string } }
    nodes:
      begin: { kind: start, next: route }
      route:
        kind: exclusive
        routes:
          - { when: "item.fork == true", to: fork }
          - { default: true, to: single }
      fork: { kind: parallel, next: [left, right] }
      left: { kind: user_task, name: Left, raci: { responsible: [fitter], accountable: boss }, next: join }
      right: { kind: user_task, name: Right, raci: { responsible: [checker], accountable: boss }, next: join }
      join: { kind: parallel, next: fin }
      single: { kind: user_task, name: Single, raci: { responsible: [fitter], accountable: boss }, next: fin }
      fin: { kind: end }
    next: done
  done: { kind: end }
"#;

#[test]
fn a_join_inside_a_run_counts_its_own_branches() {
    let engine = Engine::new();
    engine
        .deploy(ProcessDef::from_yaml(FORKED).unwrap_or_else(|e| panic!("{e}")))
        .unwrap();
    let lines = json!([{ "fork": true }, { "fork": false }, { "fork": true }]);
    let id = engine
        .start("forked", vars(json!({ "lines": lines })))
        .unwrap();
    let task = |node: &str, item: u32| {
        engine
            .tasks(id)
            .unwrap()
            .into_iter()
            .find(|t| &*t.node_id == node && t.item == Some(item))
            .unwrap_or_else(|| panic!("no {node} for item {item}"))
            .id
    };
    let done = |node: &str, item: u32, out: Value| {
        let actor = if node == "line.right" {
            checker()
        } else {
            fitter()
        };
        engine
            .complete(task(node, item), &actor, vars(out))
            .unwrap();
    };
    // Items 0 and 2 forked, item 1 did not.
    let mut open: Vec<(String, Option<u32>)> = engine
        .tasks(id)
        .unwrap()
        .iter()
        .map(|t| (t.node_id.to_string(), t.item))
        .collect();
    open.sort();
    assert_eq!(
        open,
        [
            ("line.left".into(), Some(0)),
            ("line.left".into(), Some(2)),
            ("line.right".into(), Some(0)),
            ("line.right".into(), Some(2)),
            ("line.single".into(), Some(1)),
        ]
    );
    // One branch of run 0 and the other of run 2: no join fires.
    done("line.left", 0, json!({ "result": "L0" }));
    done("line.right", 2, json!({ "result": "R2" }));
    let inst = engine.instance(id).unwrap();
    assert!(
        !inst
            .audit()
            .iter()
            .any(|r| matches!(r.what, Entry::Joined { .. }))
    );
    assert_eq!(engine.tasks(id).unwrap().len(), 3);
    done("line.single", 1, json!({ "result": "S1" }));
    done("line.right", 0, json!({}));
    done("line.left", 2, json!({}));
    let inst = engine.instance(id).unwrap();
    assert_eq!(
        inst.audit()
            .iter()
            .filter(|r| matches!(r.what, Entry::Joined { .. }))
            .count(),
        2
    );
    assert_eq!(inst.status(), Status::Completed);
    assert_eq!(inst.vars()["results"], json!(["L0", "S1", "R2"]));
}
