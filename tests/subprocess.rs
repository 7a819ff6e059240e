//! Issue 12, item 3: embedded sub-processes (`kind: subprocess`), through the public API.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use procflow::{
    Actor, Clock, Engine, Entry, Event, InstanceId, ManualClock, MemoryStore, NodeKind,
    ProblemKind, ProcessDef, SqliteStore, Status, Store, TaskState, TimerKind, Vars,
};

mod common;
use common::open;
use serde_json::json;

const DEF: &str = r#"
id: scoped
version: 1
name: Scoped
accountable: lead
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
variables:
  two: { type: boolean, default: false }
nodes:
  start: { kind: start, next: fix }
  fix:
    kind: subprocess
    name: Fix the fault
    variables: { note: { type: string } }
    timeout: { after: 2h, to: escalated }
    nodes:
      start: { kind: start, next: gate }
      gate:
        kind: exclusive
        routes:
          - { when: "two == true", to: fork }
          - { default: true, to: repair }
      repair: { kind: user_task, name: Repair, raci: { responsible: [clerk], accountable: lead }, next: done }
      fork: { kind: parallel, next: [left, right] }
      left: { kind: user_task, name: Left, raci: { responsible: [clerk], accountable: lead }, next: join }
      right: { kind: user_task, name: Right, raci: { responsible: [clerk], accountable: lead }, next: join }
      join: { kind: parallel, next: done }
      done: { kind: end }
    next: close
  close: { kind: user_task, name: Close, raci: { responsible: [clerk], accountable: lead }, next: end }
  escalated: { kind: user_task, name: Escalated, raci: { responsible: [clerk], accountable: lead }, next: end }
  end: { kind: end }
"#;

fn t0() -> DateTime<Utc> {
    "2026-03-02T09:00:00Z".parse().unwrap()
}

fn engine_on(store: Option<Arc<dyn Store>>) -> (Engine, Arc<ManualClock>, Arc<Mutex<Vec<Event>>>) {
    let clock = Arc::new(ManualClock::new(t0()));
    let heard = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&heard);
    let mut b = Engine::builder();
    b.clock(Arc::clone(&clock))
        .hook(procflow::hook_fn(move |e: &Event| {
            log.lock().unwrap().push(e.clone())
        }));
    let engine = match store {
        Some(s) => b.open(s).unwrap(),
        None => b.build(),
    };
    engine.deploy(ProcessDef::from_yaml(DEF).unwrap()).unwrap();
    (engine, clock, heard)
}

fn clerk() -> Actor {
    Actor::new("ann", ["clerk"])
}

fn complete(engine: &Engine, id: InstanceId, node: &str, out: Vars) {
    let task = engine
        .tasks(id)
        .unwrap()
        .into_iter()
        .find(|t| &*t.node_id == node)
        .unwrap_or_else(|| panic!("no open task at {node}"))
        .id;
    engine.complete(task, &clerk(), out).unwrap();
}

fn entries(engine: &Engine, id: InstanceId) -> Vec<Entry> {
    engine
        .instance(id)
        .unwrap()
        .audit()
        .iter()
        .map(|r| r.what.clone())
        .collect()
}

fn vars(v: serde_json::Value) -> Vars {
    serde_json::from_value(v).unwrap()
}

#[test]
fn the_definition_flattens_the_scope_with_qualified_ids() {
    let def = ProcessDef::from_yaml(DEF).unwrap();
    let fix = def.node_id("fix").unwrap();
    assert_eq!(def.node(fix).kind(), NodeKind::Subprocess);
    let repair = def.node_id("fix.repair").unwrap();
    assert_eq!(def.node(repair).parent(), Some(fix));
    assert_eq!(def.node(def.node_id("close").unwrap()).parent(), None);
    assert!(def.node_id("repair").is_none());
    let mermaid = def.to_mermaid();
    assert!(mermaid.contains("subgraph n_fix["), "{mermaid}");
    assert!(mermaid.contains("n_fix__repair"), "{mermaid}");
    let dot = def.to_dot();
    assert!(dot.contains("subgraph \"cluster_fix\""), "{dot}");
    assert!(dot.contains("\"fix.repair\""), "{dot}");
}

#[test]
fn entering_and_completing_a_scope() {
    let (engine, _, heard) = engine_on(None);
    let id = engine.start("scoped", Vars::new()).unwrap();
    assert_eq!(open(&engine, id), ["fix.repair"]);
    let def = engine.definition_of(id).unwrap();
    let fix = def.node_id("fix").unwrap();
    assert!(
        entries(&engine, id).contains(&Entry::ScopeEntered { node: fix }),
        "{:?}",
        entries(&engine, id)
    );
    // The local variable is set inside the scope and cleared when it completes.
    complete(&engine, id, "fix.repair", vars(json!({ "note": "cable" })));
    assert_eq!(open(&engine, id), ["close"]);
    let log = entries(&engine, id);
    assert!(log.contains(&Entry::ScopeCompleted { node: fix }));
    assert!(!engine.instance(id).unwrap().vars().contains_key("note"));
    let events = heard.lock().unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::ScopeEntered { node, .. } if &**node == "fix"))
    );
    assert!(events.iter().any(|e| matches!(
        e,
        Event::ScopeLeft { node, interrupted: false, .. } if &**node == "fix"
    )));
    drop(events);
    complete(&engine, id, "close", Vars::new());
    assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
    // The scope's timeout was dropped with the scope.
    assert!(engine.instance(id).unwrap().timers().is_empty());
}

#[test]
fn parallel_branches_inside_a_scope_join_before_it_completes() {
    let (engine, _, _) = engine_on(None);
    let id = engine
        .start("scoped", vars(json!({ "two": true })))
        .unwrap();
    assert_eq!(open(&engine, id), ["fix.left", "fix.right"]);
    complete(&engine, id, "fix.left", Vars::new());
    assert_eq!(open(&engine, id), ["fix.right"]);
    let def = engine.definition_of(id).unwrap();
    let fix = def.node_id("fix").unwrap();
    assert!(!entries(&engine, id).contains(&Entry::ScopeCompleted { node: fix }));
    complete(&engine, id, "fix.right", Vars::new());
    assert_eq!(open(&engine, id), ["close"]);
    assert!(entries(&engine, id).contains(&Entry::ScopeCompleted { node: fix }));
}

#[test]
fn the_timeout_withdraws_the_whole_scope() {
    let (engine, clock, _) = engine_on(None);
    let id = engine
        .start("scoped", vars(json!({ "two": true })))
        .unwrap();
    complete(&engine, id, "fix.left", Vars::new());
    clock.advance(Duration::hours(3));
    let fired = engine.tick(clock.now());
    assert!(fired.iter().any(|f| f.kind == TimerKind::ScopeTimeout));
    assert_eq!(open(&engine, id), ["escalated"]);
    let inst = engine.instance(id).unwrap();
    let right = inst
        .tasks()
        .iter()
        .find(|t| inst_node(&engine, id, t.node()) == "fix.right")
        .unwrap();
    assert!(matches!(right.state(), TaskState::Cancelled { .. }));
    let def = engine.definition_of(id).unwrap();
    let fix = def.node_id("fix").unwrap();
    let log = entries(&engine, id);
    assert!(log.contains(&Entry::ScopeInterrupted { node: fix }));
    assert!(!log.contains(&Entry::ScopeCompleted { node: fix }));
    assert_eq!(inst.tokens().len(), 1);
    inst.check(&def).unwrap();
}

fn inst_node(engine: &Engine, id: InstanceId, node: procflow::NodeId) -> String {
    engine.definition_of(id).unwrap().node(node).id().to_owned()
}

#[test]
fn cancelling_the_instance_withdraws_inner_tasks() {
    let (engine, _, _) = engine_on(None);
    let id = engine
        .start("scoped", vars(json!({ "two": true })))
        .unwrap();
    engine
        .cancel(id, &Actor::new("lee", ["lead"]), "not needed")
        .unwrap();
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Cancelled);
    assert!(inst.tokens().is_empty());
    assert!(inst.timers().is_empty());
    assert_eq!(inst.tasks().len(), 2);
    assert!(
        inst.tasks()
            .iter()
            .all(|t| matches!(t.state(), TaskState::Cancelled { .. }))
    );
}

#[test]
fn a_cancel_region_naming_the_sub_process_withdraws_its_scope() {
    let def = r#"
id: region
version: 1
name: Region
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
nodes:
  start: { kind: start, next: fork }
  fork: { kind: parallel, next: [work, stop] }
  work:
    kind: subprocess
    nodes:
      start: { kind: start, next: task }
      task: { kind: user_task, name: Task, raci: { responsible: [clerk], accountable: lead }, next: end }
      end: { kind: end }
    next: done
  done: { kind: end }
  stop: { kind: user_task, name: Stop, raci: { responsible: [clerk], accountable: lead }, next: halt }
  halt: { kind: end, cancels: work }
"#;
    let engine = Engine::builder().build();
    engine.deploy(ProcessDef::from_yaml(def).unwrap()).unwrap();
    let id = engine.start("region", Vars::new()).unwrap();
    assert_eq!(open(&engine, id), ["stop", "work.task"]);
    complete(&engine, id, "stop", Vars::new());
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Completed);
    assert!(inst.tokens().is_empty());
    assert!(
        inst.tasks()
            .iter()
            .any(|t| matches!(t.state(), TaskState::Cancelled { .. }))
    );
}

#[test]
fn nested_scopes_complete_inside_out() {
    let def = r#"
id: nested
version: 1
name: Nested
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
nodes:
  start: { kind: start, next: outer }
  outer:
    kind: subprocess
    nodes:
      start: { kind: start, next: inner }
      inner:
        kind: subprocess
        nodes:
          start: { kind: start, next: task }
          task: { kind: user_task, name: Task, raci: { responsible: [clerk], accountable: lead }, next: end }
          end: { kind: end }
        next: end
      end: { kind: end }
    next: end
  end: { kind: end }
"#;
    let engine = Engine::builder().build();
    engine.deploy(ProcessDef::from_yaml(def).unwrap()).unwrap();
    let id = engine.start("nested", Vars::new()).unwrap();
    assert_eq!(open(&engine, id), ["outer.inner.task"]);
    complete(&engine, id, "outer.inner.task", Vars::new());
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Completed);
    let completed = inst
        .audit()
        .iter()
        .filter(|r| matches!(r.what, Entry::ScopeCompleted { .. }))
        .count();
    assert_eq!(completed, 2);
}

#[test]
fn load_errors_in_scopes_are_located_and_reported_at_once() {
    let text = r#"id: bad
version: 1
name: Bad
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
nodes:
  start: { kind: start, next: a }
  a:
    kind: subprocess
    nodes:
      task: { kind: user_task, name: T, raci: { responsible: [clerk], accountable: lead }, next: end }
      end: { kind: end }
    next: b
  b:
    kind: subprocess
    nodes:
      s1: { kind: start, next: leave }
      s2: { kind: start, next: nowhere }
      leave: { kind: user_task, name: L, raci: { responsible: [clerk], accountable: lead }, next: after }
    next: after
  after: { kind: end }
"#;
    let err = ProcessDef::from_yaml(text).unwrap_err();
    let kinds: Vec<(u32, String, ProblemKind)> = err
        .problems
        .iter()
        .map(|p| {
            (
                p.location.expect("located").line,
                p.path.clone(),
                p.kind.clone(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&(
            7,
            "nodes.a.nodes".into(),
            ProblemKind::ScopeStartCount {
                scope: "a".into(),
                found: 0
            }
        )),
        "{kinds:#?}"
    );
    assert!(
        kinds.iter().any(|(line, _, k)| *line == 17
            && *k
                == ProblemKind::ScopeStartCount {
                    scope: "b".into(),
                    found: 2
                }),
        "{kinds:#?}"
    );
    assert!(
        kinds
            .iter()
            .any(|(line, _, k)| *line == 17 && *k == ProblemKind::UnknownNode("nowhere".into())),
        "{kinds:#?}"
    );
    assert!(
        kinds.iter().any(|(line, path, k)| *line == 18
            && path == "nodes.b.leave.next"
            && *k
                == ProblemKind::LeavesScope {
                    scope: "b".into(),
                    node: "after".into()
                }),
        "{kinds:#?}"
    );
    // A sub-process without nodes, and nodes on another kind.
    let text = r#"id: bad
version: 1
name: Bad
nodes:
  start: { kind: start, next: a }
  a: { kind: subprocess, next: b }
  b:
    kind: subprocess
    for_each: { in: two, as: it, parallel: false }
    variables: { dup: { type: string }, x: { type: string, required: true } }
    nodes:
      start: { kind: start, next: end }
      end: { kind: end }
    next: end
  end: { kind: end, nodes: { x: { kind: end } } }
"#;
    let text = text.replace(
        "nodes:\n  start",
        "variables: { dup: { type: string } }\nnodes:\n  start",
    );
    let err = ProcessDef::from_yaml(&text).unwrap_err();
    let kinds: Vec<ProblemKind> = err.problems.iter().map(|p| p.kind.clone()).collect();
    assert!(err.problems.iter().all(|p| p.location.is_some()));
    // `for_each` on a sub-process runs its scope per item (tests/multi_subprocess.rs): its list
    // must be declared.
    assert!(
        kinds.contains(&ProblemKind::UnknownVariable {
            key: "for_each.in",
            name: "two".into()
        }),
        "{kinds:#?}"
    );
    assert!(
        kinds
            .iter()
            .any(|k| matches!(k, ProblemKind::Duplicate { id, first, .. } if id == "dup" && first.line == 4)),
        "the duplicate points at the definition's own declaration, line 4: {kinds:#?}"
    );
    assert!(kinds.contains(&ProblemKind::KeyNotAllowed {
        key: "required",
        kind: "sub-process local variable"
    }));
    assert!(kinds.contains(&ProblemKind::KeyMissing {
        key: "nodes",
        kind: "subprocess"
    }));
    assert!(kinds.contains(&ProblemKind::KeyNotAllowed {
        key: "nodes",
        kind: "end"
    }));
}

#[test]
fn a_scope_survives_a_store_reopen() {
    let dir = std::env::temp_dir().join(format!("procflow-subp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("subp.db");
    let _ = std::fs::remove_file(&path);
    for store in [
        Arc::new(MemoryStore::new()) as Arc<dyn Store>,
        Arc::new(SqliteStore::create(&path).unwrap()) as Arc<dyn Store>,
    ] {
        let (engine, clock, _) = engine_on(Some(Arc::clone(&store)));
        let id = engine
            .start("scoped", vars(json!({ "two": true })))
            .unwrap();
        complete(&engine, id, "fix.left", Vars::new());
        let before = engine.instance(id).unwrap();
        drop(engine);
        let again = Engine::builder()
            .clock(Arc::clone(&clock) as Arc<dyn Clock>)
            .open(Arc::clone(&store))
            .unwrap();
        let after = again.instance(id).unwrap();
        assert_eq!(before, after);
        after.check(&again.definition_of(id).unwrap()).unwrap();
        assert_eq!(open(&again, id), ["fix.right"]);
        complete(&again, id, "fix.right", Vars::new());
        assert_eq!(open(&again, id), ["close"]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_heatmap_and_report_draw_inner_nodes() {
    let (engine, _, _) = engine_on(None);
    let id = engine.start("scoped", Vars::new()).unwrap();
    complete(&engine, id, "fix.repair", Vars::new());
    complete(&engine, id, "close", Vars::new());
    let defs = vec![engine.definition_of(id).unwrap()];
    let instances = vec![engine.instance(id).unwrap()];
    let report = procflow::Report::compute(&defs, &instances, &procflow::ReportOptions::default());
    let svg = report.heatmap(&defs[0], procflow::HeatMetric::MeanWait);
    for (_, node) in defs[0].nodes() {
        assert!(svg.contains(node.id()), "{} missing", node.id());
    }
    let p = report.process("scoped").unwrap();
    assert_eq!(p.started, 1);
}

#[test]
fn a_terminating_end_inside_a_scope_ends_the_whole_instance() {
    let def = r#"
id: term
version: 1
name: Term
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
nodes:
  start: { kind: start, next: fork }
  fork: { kind: parallel, next: [scope, other] }
  scope:
    kind: subprocess
    nodes:
      start: { kind: start, next: task }
      task: { kind: user_task, name: Task, raci: { responsible: [clerk], accountable: lead }, next: stop }
      stop: { kind: end, terminate: true }
    next: done
  done: { kind: end }
  other: { kind: user_task, name: Other, raci: { responsible: [clerk], accountable: lead }, next: fin }
  fin: { kind: end }
"#;
    let engine = Engine::builder().build();
    engine.deploy(ProcessDef::from_yaml(def).unwrap()).unwrap();
    let id = engine.start("term", Vars::new()).unwrap();
    assert_eq!(open(&engine, id), ["other", "scope.task"]);
    complete(&engine, id, "scope.task", Vars::new());
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Completed);
    assert!(inst.tokens().is_empty());
    assert!(engine.tasks(id).unwrap().is_empty());
}

mod runs {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Complete(usize),
        Advance(i64),
        Cancel,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..4).prop_map(Op::Complete),
            1 => (1i64..4).prop_map(Op::Advance),
            1 => Just(Op::Cancel),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever happens to a scope (tasks completed in any order, its timeout, a cancel), the
        /// state stays consistent: every token inside a scope has its sub-process's token
        /// waiting, an ended instance holds no token and no open task.
        #[test]
        fn scoped_runs_stay_consistent(two: bool, ops in proptest::collection::vec(op(), 1..12)) {
            let (engine, clock, _) = engine_on(None);
            let id = engine.start("scoped", vars(json!({ "two": two }))).unwrap();
            let def = engine.definition_of(id).unwrap();
            for op in ops {
                match op {
                    Op::Complete(pick) => {
                        let tasks = engine.tasks(id).unwrap();
                        if !tasks.is_empty() {
                            let t = tasks[pick % tasks.len()].id;
                            engine.complete(t, &clerk(), Vars::new()).unwrap();
                        }
                    }
                    Op::Advance(h) => {
                        clock.advance(Duration::hours(h));
                        engine.tick(clock.now());
                    }
                    Op::Cancel => {
                        let _ = engine.cancel(id, &Actor::new("lee", ["lead"]), "stop");
                    }
                }
                let inst = engine.instance(id).unwrap();
                prop_assert!(inst.check(&def).is_ok(), "{:?}", inst.check(&def));
                if inst.status() != Status::Running {
                    prop_assert!(inst.tokens().is_empty());
                    prop_assert!(engine.tasks(id).unwrap().is_empty());
                }
            }
        }
    }
}

#[test]
fn nesting_too_deep_is_one_located_error_and_no_panic() {
    fn scope(d: usize) -> String {
        if d == 0 {
            return "{ start: { kind: start, next: e }, e: { kind: end } }".into();
        }
        format!(
            "{{ start: {{ kind: start, next: s }}, s: {{ kind: subprocess, nodes: {}, next: e }}, e: {{ kind: end }} }}",
            scope(d - 1)
        )
    }
    let ok = format!("id: deep\nversion: 1\nname: Deep\nnodes: {}\n", scope(5));
    let def = ProcessDef::from_yaml(&ok).unwrap();
    assert!(def.node_id("s.s.s.s.s.e").is_some());
    let deep = format!("id: deep\nversion: 1\nname: Deep\nnodes: {}\n", scope(12));
    let err = ProcessDef::from_yaml(&deep).unwrap_err();
    let kinds: Vec<ProblemKind> = err.problems.iter().map(|p| p.kind.clone()).collect();
    assert_eq!(kinds, [ProblemKind::ScopeTooDeep(8)]);
    assert!(err.problems[0].location.is_some());
}

const EVENTS: &str = r#"
id: evented
version: 1
name: Evented
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
variables:
  reason: { type: string }
messages:
  withdrawn: { payload: [reason] }
nodes:
  start: { kind: start, next: work }
  work:
    kind: subprocess
    boundary:
      - { message: withdrawn, to: stopped }
      - { signal: audit_started, to: note, interrupting: false }
    nodes:
      start: { kind: start, next: fork }
      fork: { kind: parallel, next: [a, b] }
      a: { kind: user_task, name: A, raci: { responsible: [clerk], accountable: lead }, next: join }
      b: { kind: user_task, name: B, raci: { responsible: [clerk], accountable: lead }, next: join }
      join: { kind: parallel, next: end }
      end: { kind: end }
    next: done
  note: { kind: user_task, name: Note, raci: { responsible: [clerk], accountable: lead }, next: noted }
  noted: { kind: end }
  stopped: { kind: user_task, name: Stopped, raci: { responsible: [clerk], accountable: lead }, next: done }
  done: { kind: end }
"#;

#[test]
fn message_and_signal_boundaries_on_a_sub_process() {
    let engine = Engine::builder().build();
    engine
        .deploy(ProcessDef::from_yaml(EVENTS).unwrap())
        .unwrap();
    let id = engine.start("evented", Vars::new()).unwrap();
    assert_eq!(open(&engine, id), ["work.a", "work.b"]);
    // Non-interrupting: a token starts beside the scope, which runs on.
    assert_eq!(engine.signal("audit_started", Vars::new()).unwrap(), 1);
    assert_eq!(open(&engine, id), ["note", "work.a", "work.b"]);
    complete(&engine, id, "work.a", Vars::new());
    // Interrupting: the scope's open task is withdrawn and the token goes to `stopped`.
    engine
        .deliver(id, "withdrawn", vars(json!({ "reason": "customer" })))
        .unwrap();
    assert_eq!(open(&engine, id), ["note", "stopped"]);
    let inst = engine.instance(id).unwrap();
    let def = engine.definition_of(id).unwrap();
    let work = def.node_id("work").unwrap();
    let b = def.node_id("work.b").unwrap();
    let log = entries(&engine, id);
    assert!(log.contains(&Entry::ScopeInterrupted { node: work }));
    assert!(log.contains(&Entry::Withdrawn {
        node: b,
        task: Some(1)
    }));
    assert_eq!(inst.vars()["reason"], json!("customer"));
    inst.check(&def).unwrap();
    // A message for a scope that is no longer there is refused.
    assert!(
        engine
            .deliver(id, "withdrawn", vars(json!({ "reason": "again" })))
            .is_err()
    );
    complete(&engine, id, "stopped", Vars::new());
    complete(&engine, id, "note", Vars::new());
    assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
}

#[test]
fn a_timer_in_a_sub_process_boundary_list_is_refused() {
    let text = EVENTS.replace(
        "- { message: withdrawn, to: stopped }",
        "- { timer: 1h, to: stopped }",
    );
    let err = ProcessDef::from_yaml(&text).unwrap_err();
    assert!(
        err.problems
            .iter()
            .any(|p| matches!(p.kind, ProblemKind::EventShape(_)) && p.location.is_some()),
        "{err}"
    );
}

// `repeat` on a sub-process (WCP 21 on a block): the scope runs again until `until` holds.
const LOOPED: &str = r#"
id: looped
version: 1
name: Looped
accountable: lead
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
variables:
  fixed: { type: boolean, default: false }
nodes:
  start: { kind: start, next: fix }
  fix:
    kind: subprocess
    name: Fix until fixed
    variables: { note: { type: string } }
    repeat: { until: "fixed == true", max: 3 }
    timeout: { after: 2h, to: escalated }
    nodes:
      start: { kind: start, next: repair }
      repair: { kind: user_task, name: Repair, raci: { responsible: [clerk], accountable: lead }, next: ask }
      ask: { kind: user_task, name: Ask, raci: { responsible: [clerk], accountable: lead }, next: done }
      done: { kind: end }
    next: close
  close: { kind: user_task, name: Close, raci: { responsible: [clerk], accountable: lead }, next: end }
  escalated: { kind: user_task, name: Escalated, raci: { responsible: [clerk], accountable: lead }, next: end }
  end: { kind: end }
"#;

fn looped_on(store: Option<Arc<dyn Store>>) -> (Engine, Arc<ManualClock>, Arc<Mutex<Vec<Event>>>) {
    let clock = Arc::new(ManualClock::new(t0()));
    let heard = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&heard);
    let mut b = Engine::builder();
    b.clock(Arc::clone(&clock))
        .hook(procflow::hook_fn(move |e: &Event| {
            log.lock().unwrap().push(e.clone())
        }));
    let engine = match store {
        Some(s) => b.open(s).unwrap(),
        None => b.build(),
    };
    engine
        .deploy(ProcessDef::from_yaml(LOOPED).unwrap())
        .unwrap();
    (engine, clock, heard)
}

#[test]
fn a_repeated_sub_process_runs_twice_then_leaves() {
    let (engine, _, heard) = looped_on(None);
    let id = engine.start("looped", Vars::new()).unwrap();
    let def = engine.definition_of(id).unwrap();
    let fix = def.node_id("fix").unwrap();
    assert_eq!(def.node(fix).max_iterations(), Some(3));
    complete(&engine, id, "fix.repair", vars(json!({ "note": "cable" })));
    complete(&engine, id, "fix.ask", Vars::new());
    // Not fixed: the scope runs again, its local cleared, the run number recorded.
    assert_eq!(open(&engine, id), ["fix.repair"]);
    let inst = engine.instance(id).unwrap();
    assert!(!inst.vars().contains_key("note"));
    assert_eq!(inst.iteration(fix), 2);
    inst.check(&def).unwrap();
    let log = entries(&engine, id);
    assert!(log.contains(&Entry::Repeated {
        node: fix,
        iteration: 2
    }));
    assert!(!log.contains(&Entry::ScopeCompleted { node: fix }));
    assert!(
        heard
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::Repeated { node, iteration: 2, .. } if &**node == "fix"))
    );
    complete(&engine, id, "fix.repair", Vars::new());
    complete(&engine, id, "fix.ask", vars(json!({ "fixed": true })));
    assert_eq!(open(&engine, id), ["close"]);
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.iteration(fix), 0, "the loop is over");
    let log = entries(&engine, id);
    assert_eq!(
        log.iter()
            .filter(|e| matches!(e, Entry::Repeated { .. }))
            .count(),
        1
    );
    assert!(log.contains(&Entry::ScopeCompleted { node: fix }));
    assert!(!log.iter().any(|e| matches!(e, Entry::Warning { .. })));
    // The scope's timeout stayed armed across the runs and goes with the scope.
    assert!(inst.timers().is_empty());
    inst.check(&def).unwrap();
    // The report counts the runs again at the sub-process node.
    let report = procflow::Report::compute(&[def], &[inst], &procflow::ReportOptions::default());
    assert_eq!(report.node("looped", "fix").unwrap().repeated, 1);
}

#[test]
fn a_repeated_sub_process_leaves_after_max_with_a_warning() {
    let (engine, _, _) = looped_on(None);
    let id = engine.start("looped", Vars::new()).unwrap();
    let def = engine.definition_of(id).unwrap();
    let fix = def.node_id("fix").unwrap();
    for run in 1..=3 {
        assert_eq!(open(&engine, id), ["fix.repair"], "run {run}");
        complete(&engine, id, "fix.repair", Vars::new());
        complete(&engine, id, "fix.ask", Vars::new());
    }
    assert_eq!(open(&engine, id), ["close"]);
    let log = entries(&engine, id);
    assert!(log.contains(&Entry::Repeated {
        node: fix,
        iteration: 3
    }));
    assert!(!log.contains(&Entry::Repeated {
        node: fix,
        iteration: 4
    }));
    assert!(
        log.iter().any(
            |e| matches!(e, Entry::Warning { message } if message.contains("'fix' ran 3 times"))
        ),
        "{log:?}"
    );
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.iteration(fix), 0);
    inst.check(&def).unwrap();
}

#[test]
fn a_timeout_during_the_second_run_ends_the_loop() {
    let (engine, clock, _) = looped_on(None);
    let id = engine.start("looped", Vars::new()).unwrap();
    let def = engine.definition_of(id).unwrap();
    let fix = def.node_id("fix").unwrap();
    complete(&engine, id, "fix.repair", Vars::new());
    complete(&engine, id, "fix.ask", Vars::new());
    complete(&engine, id, "fix.repair", Vars::new());
    assert_eq!(open(&engine, id), ["fix.ask"]);
    clock.advance(Duration::hours(3));
    let fired = engine.tick(clock.now());
    assert!(fired.iter().any(|f| f.kind == TimerKind::ScopeTimeout));
    assert_eq!(open(&engine, id), ["escalated"]);
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.iteration(fix), 0, "the interrupted loop is forgotten");
    let log = entries(&engine, id);
    assert!(log.contains(&Entry::ScopeInterrupted { node: fix }));
    inst.check(&def).unwrap();
    complete(&engine, id, "escalated", Vars::new());
    assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
}

#[test]
fn cancelling_ends_a_repeated_sub_process() {
    let (engine, _, _) = looped_on(None);
    let id = engine.start("looped", Vars::new()).unwrap();
    let def = engine.definition_of(id).unwrap();
    let fix = def.node_id("fix").unwrap();
    complete(&engine, id, "fix.repair", Vars::new());
    complete(&engine, id, "fix.ask", Vars::new());
    assert_eq!(engine.instance(id).unwrap().iteration(fix), 2);
    engine
        .cancel(id, &Actor::new("lea", ["lead"]), "withdrawn")
        .unwrap();
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Cancelled);
    assert_eq!(inst.iteration(fix), 0);
    inst.check(&def).unwrap();
}

#[test]
fn a_repeated_sub_process_survives_a_store_round_trip() {
    let store = Arc::new(MemoryStore::new()) as Arc<dyn Store>;
    let (engine, clock, _) = looped_on(Some(Arc::clone(&store)));
    let id = engine.start("looped", Vars::new()).unwrap();
    complete(&engine, id, "fix.repair", Vars::new());
    complete(&engine, id, "fix.ask", Vars::new());
    let before = engine.instance(id).unwrap();
    drop(engine);
    let again = Engine::builder()
        .clock(Arc::clone(&clock) as Arc<dyn Clock>)
        .open(Arc::clone(&store))
        .unwrap();
    let after = again.instance(id).unwrap();
    assert_eq!(before, after);
    let def = again.definition_of(id).unwrap();
    let fix = def.node_id("fix").unwrap();
    after.check(&def).unwrap();
    assert_eq!(after.iteration(fix), 2);
    complete(&again, id, "fix.repair", Vars::new());
    complete(&again, id, "fix.ask", vars(json!({ "fixed": true })));
    assert_eq!(open(&again, id), ["close"]);
}

#[test]
fn repeat_on_a_sub_process_is_checked_at_load() {
    let text = LOOPED
        .replace("max: 3", "max: 0")
        .replace("fixed == true", "nope == true");
    let err = ProcessDef::from_yaml(&text).unwrap_err();
    let kinds: Vec<(String, ProblemKind)> = err
        .problems
        .iter()
        .map(|p| (p.path.clone(), p.kind.clone()))
        .collect();
    assert!(err.problems.iter().all(|p| p.location.is_some()));
    assert!(
        kinds.iter().any(|(p, _)| p == "nodes.fix.repeat.max"),
        "{kinds:#?}"
    );
    assert!(
        kinds.iter().any(|(p, k)| p == "nodes.fix.repeat.until"
            && *k == ProblemKind::UndeclaredVariable("nope".into())),
        "{kinds:#?}"
    );
}

#[test]
fn a_restored_loop_of_a_sub_process_nobody_waits_at_is_refused() {
    let (engine, _, _) = looped_on(None);
    let id = engine.start("looped", Vars::new()).unwrap();
    let def = engine.definition_of(id).unwrap();
    let fix = def.node_id("fix").unwrap();
    complete(&engine, id, "fix.repair", Vars::new());
    complete(&engine, id, "fix.ask", Vars::new());
    // Underway: accepted.
    let underway = engine.instance(id).unwrap();
    underway.check(&def).unwrap();
    let loops = serde_json::to_value(&underway).unwrap()["loops"].clone();
    assert_eq!(loops, json!([[fix, 2]]), "the loop is stored");
    complete(&engine, id, "fix.repair", Vars::new());
    complete(&engine, id, "fix.ask", vars(json!({ "fixed": true })));
    // The token has left the sub-process: a loop entry there is nonsense.
    let mut left = serde_json::to_value(engine.instance(id).unwrap()).unwrap();
    left["loops"] = loops;
    let damaged: procflow::Instance = serde_json::from_value(left).unwrap();
    let err = damaged.check(&def).unwrap_err();
    assert!(err.contains("no token waits there"), "{err}");
}

#[test]
fn an_until_that_cannot_be_evaluated_is_an_incident_and_retry_enters_again() {
    let text = LOOPED
        .replace(
            "until: \"fixed == true\"",
            "until: \"fixed == true || int(note) > 0\"",
        )
        .replace("id: looped", "id: unset");
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = Engine::builder().clock(Arc::clone(&clock)).build();
    engine
        .deploy(ProcessDef::from_yaml(&text).unwrap())
        .unwrap();
    let id = engine.start("unset", Vars::new()).unwrap();
    let def = engine.definition_of(id).unwrap();
    let fix = def.node_id("fix").unwrap();
    complete(
        &engine,
        id,
        "fix.repair",
        vars(json!({ "note": "not a number" })),
    );
    // `int(note)` fails: `until` cannot be evaluated, an incident on the sub-process.
    let task = engine.tasks(id).unwrap()[0].id;
    assert!(engine.complete(task, &clerk(), Vars::new()).is_ok());
    let inst = engine.instance(id).unwrap();
    assert!(
        open(&engine, id).is_empty(),
        "{:?} {:?}",
        open(&engine, id),
        entries(&engine, id)
    );
    assert!(!inst.incidents().is_empty(), "{:?}", entries(&engine, id));
    inst.check(&def).unwrap();
    // A retry runs the scope again.
    engine.retry(id).unwrap();
    assert_eq!(open(&engine, id), ["fix.repair"]);
    complete(&engine, id, "fix.repair", Vars::new());
    complete(&engine, id, "fix.ask", vars(json!({ "fixed": true })));
    assert_eq!(open(&engine, id), ["close"]);
    assert_eq!(engine.instance(id).unwrap().iteration(fix), 0);
}
