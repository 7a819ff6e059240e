//! Issue 11: inputs a mutation fuzzer found that took the host process down (stack overflows,
//! panics, unbounded work). Each is now a located load error or a typed runtime error; these
//! tests use only the public API.

use std::sync::Arc;
use std::time::{Duration, Instant};

use procflow::{
    Actor, Clock, Engine, ExecError, LoadError, Location, ManualClock, ProblemKind, ProcessDef,
    Scenario, Status, VarProblem, VarSpec, Vars, WorkItem, handler_fn,
};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A definition with one exclusive gateway routing on `when` (to `yes`, else `no`), variables
/// `v` and `w` of type `any` and `items` of type `array`.
fn gateway(when: &str) -> String {
    format!(
        r#"id: gate
version: 1
name: Gate
roles: {{ r: {{ name: R }} }}
variables:
  v: {{ type: any }}
  w: {{ type: any }}
  items: {{ type: array }}
nodes:
  start: {{ kind: start, next: check }}
  check:
    kind: exclusive
    routes:
      - when: {when}
        to: yes
      - default: true
        to: no
  yes: {{ kind: end }}
  no: {{ kind: end }}
"#,
        when = yaml_string(when)
    )
}

/// `text` as a double-quoted YAML scalar.
fn yaml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

/// The one problem of a failed load (besides nodes left unreachable by a refused route): its
/// kind, location and path.
fn one_problem(result: Result<ProcessDef, LoadError>) -> (ProblemKind, Option<Location>, String) {
    let err = result.expect_err("the definition must be refused");
    let mut problems: Vec<_> = err
        .problems
        .iter()
        .filter(|p| !matches!(p.kind, ProblemKind::Unreachable(_)))
        .cloned()
        .collect();
    assert_eq!(problems.len(), 1, "{err}");
    let p = problems.remove(0);
    (p.kind, p.location, p.path)
}

/// The 1-based column of the first `needle` on `line` (1-based) of `text`.
fn column_of(text: &str, line: usize, needle: &str) -> Location {
    let body = text.lines().nth(line - 1).unwrap();
    let column = body[..body.find(needle).unwrap()].chars().count() + 1;
    Location {
        line: line as u32,
        column: column as u32,
    }
}

/// Where the gateway's `when` value is in [`gateway`]'s text.
const WHEN: Location = Location {
    line: 14,
    column: 15,
};

/// `[[...[leaf]...]]`, `levels` deep.
fn nested_list(levels: usize, leaf: Value) -> Value {
    (0..levels).fold(leaf, |v, _| Value::Array(vec![v]))
}

/// `{"b": {"b": ... leaf}}`, `levels` deep.
fn nested_object(levels: usize, leaf: Value) -> Value {
    // Built by hand: `json!` would serialize (copy) the value inside, recursively.
    (0..levels).fold(leaf, |v, _| {
        Value::Object(Vars::from_iter([("b".to_owned(), v)]))
    })
}

fn vars(value: Value) -> Vars {
    value.as_object().unwrap().clone()
}

fn engine_with(def: &str) -> Engine {
    let engine = Engine::new();
    engine.deploy(ProcessDef::from_yaml(def).unwrap()).unwrap();
    engine
}

/// Runs `f` on a thread with `stack` bytes of stack.
fn on_stack<T: Send + 'static>(stack: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(stack)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

/// Which route an instance of `gate` took.
fn route(engine: &Engine, v: Value, w: Value) -> &'static str {
    let id = engine
        .start("gate", vars(json!({ "v": v, "w": w })))
        .unwrap();
    taken(&engine.instance(id).unwrap())
}

/// Which route a completed instance of `gate` took: `yes` (the condition held) or `no`.
fn taken(inst: &procflow::Instance) -> &'static str {
    assert_eq!(inst.status(), Status::Completed, "{:?}", inst.incidents());
    let routes: Vec<_> = inst
        .audit()
        .iter()
        .filter_map(|r| match r.what {
            procflow::Entry::Route { route, .. } => Some(route),
            _ => None,
        })
        .collect();
    match routes[..] {
        [Some(0)] => "yes",
        [None] => "no",
        _ => panic!("{routes:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Values: depth and size
// ---------------------------------------------------------------------------------------------

const ANY: &str = r#"
id: anyvar
version: 1
name: Any
roles: { r: { name: R } }
variables:
  v: { type: any }
  s: { type: string }
nodes:
  start: { kind: start, next: work }
  work: { kind: user_task, name: Work, raci: { responsible: [r], accountable: r }, next: end }
  end: { kind: end }
"#;

#[test]
fn a_value_nested_too_deeply_is_refused_at_start() {
    let engine = engine_with(ANY);
    for levels in [33, 126, 500, 100_000] {
        let err = engine
            // Built in place: cloning or dropping it in the test would recurse too.
            .start(
                "anyvar",
                Vars::from_iter([("v".to_owned(), nested_list(levels, json!(1)))]),
            )
            .unwrap_err();
        match err {
            ExecError::Variables { problems } => assert_eq!(
                problems,
                vec![(
                    "v".to_owned(),
                    VarProblem::TooDeep {
                        limit: VarSpec::MAX_VALUE_DEPTH
                    }
                )]
            ),
            other => panic!("{levels} levels: {other}"),
        }
    }
    // The deepest value allowed is taken, and stays readable.
    let deepest = nested_object(VarSpec::MAX_VALUE_DEPTH, json!("leaf"));
    let id = engine
        .start("anyvar", vars(json!({ "v": deepest.clone() })))
        .unwrap();
    assert_eq!(engine.instance(id).unwrap().vars()["v"], deepest);
    assert_eq!(
        VarProblem::TooDeep { limit: 32 }.to_string(),
        "nested more than 32 levels deep"
    );
}

#[test]
fn a_value_too_large_is_refused_on_completion_for_every_type() {
    let engine = engine_with(ANY);
    let id = engine.start("anyvar", Vars::new()).unwrap();
    let task = engine.tasks(id).unwrap()[0].id;
    let actor = procflow::Actor::new("ann", ["r"]);
    let big = "x".repeat(VarSpec::MAX_VALUE_BYTES);
    for (name, value) in [
        ("s", json!(big)),
        ("v", json!([big])),
        ("v", json!({ "k": big })),
    ] {
        let err = engine
            .complete(task, &actor, vars(json!({ name: value })))
            .unwrap_err();
        match err {
            ExecError::Variables { problems } => assert_eq!(
                problems,
                vec![(
                    name.to_owned(),
                    VarProblem::TooLarge {
                        limit: VarSpec::MAX_VALUE_BYTES
                    }
                )]
            ),
            other => panic!("{other}"),
        }
    }
    // Just under the limit (the quotes count) is fine.
    let fits = "x".repeat(VarSpec::MAX_VALUE_BYTES - 2);
    engine
        .complete(task, &actor, vars(json!({ "s": fits })))
        .unwrap();
}

#[test]
fn a_handler_returning_a_value_too_deep_is_an_incident() {
    let def = r#"
id: svc
version: 1
name: Svc
variables: { v: { type: object } }
nodes:
  start: { kind: start, next: call }
  call: { kind: service_task, name: Call, handler: deep, next: end }
  end: { kind: end }
"#;
    let engine = Engine::builder()
        .handler(
            "deep",
            handler_fn(|_| Ok(vars(json!({ "v": nested_object(40, json!(1)) })))),
        )
        .build();
    engine.deploy(ProcessDef::from_yaml(def).unwrap()).unwrap();
    match engine.start("svc", Vars::new()).unwrap_err() {
        ExecError::Incident { message, .. } => {
            assert!(
                message.contains("nested more than 32 levels deep"),
                "{message}"
            )
        }
        other => panic!("{other}"),
    }
}

/// A message receiver with an order-line task: what `correlate` and `add_items` take.
const RECEIVER: &str = r#"
id: receiver
version: 1
name: Receiver
variables:
  ticket_id: { type: string }
  v: { type: object }
  lines: { type: array }
keys: [ticket_id]
roles: { r: { name: R } }
messages:
  status: { payload: [ticket_id, v], correlate: { ticket_id: ticket_id } }
nodes:
  start: { kind: start, next: fit }
  fit:
    kind: user_task
    name: Fit
    raci: { responsible: [r], accountable: r }
    for_each: { in: lines, as: line }
    next: wait
  wait: { kind: catch, message: status, next: end }
  end: { kind: end }
"#;

#[test]
fn a_value_nested_too_deeply_is_refused_by_correlate_and_add_items() {
    let receiver = |levels: usize| {
        on_stack(1024 * 1024, move || {
            let engine = engine_with(RECEIVER);
            let id = engine
                .start(
                    "receiver",
                    vars(json!({ "ticket_id": "T-1", "lines": [1, 2] })),
                )
                .unwrap();
            let before = engine.instance(id).unwrap();
            // Built in place: dropping them here would recurse once per level.
            let message = Vars::from_iter([
                ("ticket_id".to_owned(), json!("T-1")),
                ("v".to_owned(), nested_object(levels, json!(1))),
            ]);
            let sent = engine.correlate("status", message).map(|_| ());
            let unknown = engine
                .correlate(
                    "nope",
                    Vars::from_iter([("v".to_owned(), nested_list(levels, json!(1)))]),
                )
                .map(|_| ());
            let added = engine.add_items(id, "fit", vec![nested_list(levels, json!(1))]);
            let elsewhere = engine.add_items(id, "nowhere", vec![nested_list(levels, json!(1))]);
            let after = engine.instance(id).unwrap();
            (sent, unknown, added, elsewhere, before == after)
        })
    };
    for levels in [33, 100_000] {
        let (sent, unknown, added, elsewhere, unchanged) = receiver(levels);
        assert!(
            matches!(&sent, Err(ExecError::Variables { problems }) if problems[0].1 == VarProblem::TooDeep { limit: VarSpec::MAX_VALUE_DEPTH }),
            "{levels} levels: {sent:?}"
        );
        assert!(matches!(unknown, Err(ExecError::UndeclaredMessage { .. })));
        assert!(
            matches!(added, Err(ExecError::Variables { .. })),
            "{added:?}"
        );
        assert!(matches!(elsewhere, Err(ExecError::UnknownNode { .. })));
        assert!(
            unchanged,
            "{levels} levels: a refused call changed the instance"
        );
    }
}

#[test]
fn a_late_service_answer_nested_too_deeply_is_an_incident() {
    const LATE: &str = r#"
id: late
version: 1
name: Late
variables: { v: { type: object } }
nodes:
  start: { kind: start, next: score }
  score: { kind: service_task, name: Score, handler: score, next: end }
  end: { kind: end }
"#;
    let incident = on_stack(1024 * 1024, || {
        let mut builder = Engine::builder();
        builder.handler(
            "score",
            handler_fn(|_| Err(procflow::HandlerError::pending())),
        );
        let engine = builder.build();
        engine.deploy(ProcessDef::from_yaml(LATE).unwrap()).unwrap();
        let id = engine.start("late", Vars::new()).unwrap();
        // Built in place: dropping it here would recurse once per level.
        let answer = Vars::from_iter([("v".to_owned(), nested_object(100_000, json!(1)))]);
        let r = engine.complete_service(id, "score", Ok(answer));
        (r.is_err(), engine.instance(id).unwrap().incidents().len())
    });
    assert_eq!(incident, (true, 1));
}

/// A delegated task that escalates by reassignment: the escalation's role works it, and the
/// delegation, whose claim it took, ends; so does a reassignment by the accountable.
#[test]
fn an_escalation_ends_the_delegation_of_the_task_it_takes() {
    let def = r#"
id: esc
version: 1
name: Esc
roles: { r: { name: R }, lead: { name: Lead } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [r], accountable: r }
    due: 1h
    escalate: [{ after: 1h, action: reassign, to: lead }]
    next: done
  done: { kind: end }
"#;
    let clock = Arc::new(ManualClock::new("2026-12-31T08:00:00Z".parse().unwrap()));
    let engine = Engine::builder()
        .clock(Arc::clone(&clock) as Arc<dyn Clock>)
        .build();
    engine.deploy(ProcessDef::from_yaml(def).unwrap()).unwrap();
    let id = engine.start("esc", Vars::new()).unwrap();
    let task = engine.tasks(id).unwrap()[0].id;
    let (ann, bob) = (Actor::new("ann", ["r"]), Actor::new("bob", ["r"]));
    engine.claim(task, &ann).unwrap();
    engine.delegate(task, &ann, &bob).unwrap();
    clock.advance(chrono::Duration::hours(2));
    engine.tick(engine.now());
    let inst = engine.instance(id).unwrap();
    inst.check(&engine.definition_of(id).unwrap()).unwrap();
    let view = &engine.tasks(id).unwrap()[0];
    assert_eq!(
        (view.claimed_by.as_ref(), view.delegated_by.as_ref()),
        (None, None)
    );
    let lena = Actor::new("lena", ["lead"]);
    // Delegated again, then reassigned by the accountable: the override ends the delegation.
    let (lisa, boss) = (Actor::new("lisa", ["lead"]), Actor::new("boss", ["r"]));
    engine.claim(task, &lena).unwrap();
    engine.delegate(task, &lena, &lisa).unwrap();
    engine.reassign(task, &boss, &lena).unwrap();
    let view = &engine.tasks(id).unwrap()[0];
    assert_eq!(
        (
            view.claimed_by.as_ref().map(|c| c.as_str()),
            view.delegated_by.as_ref()
        ),
        (Some("lena"), None)
    );
    assert!(matches!(
        engine.return_task(task, &lena),
        Err(ExecError::NotDelegated { .. })
    ));
    engine.complete(task, &lena, Vars::new()).unwrap();
    assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
    // Suspended near the end of time and resumed later than its escalation could move: the
    // deadline and the escalation wait at the end of time.
    let end = chrono::DateTime::<chrono::Utc>::MAX_UTC;
    clock.set(end - chrono::Duration::hours(2));
    let id = engine.start("esc", Vars::new()).unwrap();
    let task = WorkItem::Task(engine.tasks(id).unwrap()[0].id);
    engine.suspend(task, &ann).unwrap();
    clock.set(end);
    engine.resume(task, &ann).unwrap();
    let inst = engine.instance(id).unwrap();
    assert_eq!(
        inst.timers().iter().map(|t| t.at).collect::<Vec<_>>(),
        [end, end]
    );
}

#[test]
fn a_default_or_enum_value_beyond_the_bounds_is_a_located_load_error() {
    let deep = serde_json::to_string(&nested_list(33, json!(1))).unwrap();
    let def = format!(
        "id: d\nversion: 1\nname: D\nvariables:\n  v: {{ type: array, default: {deep} }}\nnodes:\n  start: {{ kind: start, next: end }}\n  end: {{ kind: end }}\n"
    );
    let (kind, location, path) = one_problem(ProcessDef::from_yaml(&def));
    assert_eq!(kind, ProblemKind::ValueTooDeep { limit: 32 });
    assert_eq!(location, Some(column_of(&def, 5, "[[")));
    assert_eq!(path, "variables.v.default");

    let big = "y".repeat(VarSpec::MAX_VALUE_BYTES);
    let def = format!(
        "id: d\nversion: 1\nname: D\nvariables:\n  v: {{ type: string, enum: [a, {big}] }}\nnodes:\n  start: {{ kind: start, next: end }}\n  end: {{ kind: end }}\n"
    );
    let (kind, _, path) = one_problem(ProcessDef::from_yaml(&def));
    assert_eq!(
        kind,
        ProblemKind::ValueTooLarge {
            limit: VarSpec::MAX_VALUE_BYTES
        }
    );
    assert_eq!(path, "variables.v.enum");
}

// ---------------------------------------------------------------------------------------------
// 2. CEL: size and depth, checked before the parser; the stack measurement
// ---------------------------------------------------------------------------------------------

#[test]
fn a_long_expression_is_refused_before_parsing() {
    for when in [
        format!("{}1 == 2", "1 + ".repeat(20_000)),
        format!("{}1 == 2", "1 + ".repeat(10_000)),
        format!("v == '{}'", "中".repeat(130_000)),
        "#".repeat(30_000),
        format!("v == {}1", " ".repeat(70_000)),
    ] {
        let started = Instant::now();
        let (kind, location, path) = one_problem(ProcessDef::from_yaml(&gateway(&when)));
        assert_eq!(
            kind,
            ProblemKind::ExpressionTooLong {
                bytes: when.len(),
                limit: ProcessDef::MAX_EXPRESSION_BYTES
            }
        );
        assert_eq!(location, Some(WHEN));
        assert_eq!(path, "nodes.check.routes[0].when");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

#[test]
fn a_deep_expression_is_refused_with_its_location() {
    // A chain of binary operators: short enough, but its tree is 2,000 levels deep.
    let chain = format!("{}1 == 2", "1+".repeat(2_000));
    let (kind, location, _) = one_problem(ProcessDef::from_yaml(&gateway(&chain)));
    assert!(
        matches!(kind, ProblemKind::ExpressionTooDeep { depth, limit: 24 } if depth > 24),
        "{kind:?}"
    );
    assert_eq!(location, Some(WHEN));

    // Brackets: counted before parsing.
    let brackets = format!("{}1{} == 1", "(".repeat(25), ")".repeat(25));
    let (kind, _, _) = one_problem(ProcessDef::from_yaml(&gateway(&brackets)));
    assert_eq!(
        kind,
        ProblemKind::ExpressionTooDeep {
            depth: 25,
            limit: 24
        }
    );
    // Brackets inside string literals do not count, raw or not.
    let quoted = format!(
        "v == '{0}' || v == r'\\' || v == \"\"\"{0}\"\"\" || v == '\\'{0}'",
        "(".repeat(100)
    );
    ProcessDef::from_yaml(&gateway(&quoted)).unwrap();
    // A nested value read 2,000 levels deep: the path alone is too deep.
    let path = format!("v{} == 1", ".b".repeat(2_000));
    let (kind, _, _) = one_problem(ProcessDef::from_yaml(&gateway(&path)));
    assert!(
        matches!(kind, ProblemKind::ExpressionTooDeep { .. }),
        "{kind:?}"
    );
}

/// The deepest expression of a shape that loads: `make(n)` for the largest `n` accepted.
fn deepest(make: impl Fn(usize) -> String) -> String {
    let mut last = None;
    for n in 1..200 {
        match ProcessDef::from_yaml(&gateway(&make(n))) {
            Ok(_) => last = Some(make(n)),
            Err(e) => {
                assert!(
                    matches!(
                        e.kinds()[..],
                        [
                            ProblemKind::ExpressionTooDeep { .. }
                                | ProblemKind::ExpressionTooCostly { .. },
                            ..
                        ]
                    ),
                    "{}: {e}",
                    make(n)
                );
                break;
            }
        }
    }
    last.expect("some depth loads")
}

#[test]
fn maximal_expression_on_maximal_value_fits_a_small_stack() {
    let depth = VarSpec::MAX_VALUE_DEPTH;
    let list = nested_list(depth, json!(1));
    let object = nested_object(depth, json!(1));
    // (shape, v, w, the route it takes)
    let shapes: Vec<(String, Value, Value, &str)> = vec![
        (
            deepest(|n| format!("{}1 > 0", "1 + ".repeat(n))),
            json!(0),
            json!(0),
            "yes",
        ),
        (
            deepest(|n| format!("{}v{} == 1", "int(".repeat(n), ")".repeat(n))),
            json!(1),
            json!(0),
            "yes",
        ),
        (
            deepest(|n| format!("v{} == [1]", "[0]".repeat(n))),
            list.clone(),
            json!(0),
            "no",
        ),
        (
            deepest(|n| format!("v{} == w", ".b".repeat(n))),
            object.clone(),
            object.clone(),
            "no",
        ),
        (
            deepest(|n| format!("size({}1{}) == 1", "[".repeat(n), "]".repeat(n))),
            json!(0),
            json!(0),
            "yes",
        ),
        (
            deepest(|n| {
                let mut e = "v == w".to_owned();
                for i in 0..n {
                    e = format!("[1].all(x{i}, {e})");
                }
                e
            }),
            list.clone(),
            list.clone(),
            "yes",
        ),
        (
            deepest(|n| {
                let mut e = "true".to_owned();
                for i in 0..n {
                    let outer = if i + 1 == n {
                        "v".to_owned()
                    } else {
                        format!("x{}", i + 1)
                    };
                    e = format!("{outer}.all(x{i}, {e})");
                }
                e
            }),
            list.clone(),
            json!(0),
            "yes",
        ),
        (
            deepest(|n| format!("{}true{}", "true ? (".repeat(n), ") : false".repeat(n))),
            json!(0),
            json!(0),
            "yes",
        ),
        ("v == w && w == v".to_owned(), list.clone(), list, "yes"),
        ("v == w".to_owned(), object.clone(), object, "yes"),
    ];
    for (when, v, w, want) in shapes {
        let engine = engine_with(&gateway(&when));
        let got = on_stack(
            std::env::var("PF_STACK")
                .map(|s| s.parse().unwrap())
                .unwrap_or(ProcessDef::EVAL_STACK),
            move || route(&engine, v, w),
        );
        assert_eq!(got, want, "{when}");
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Syntax errors: our own bounded message
// ---------------------------------------------------------------------------------------------

#[test]
fn a_syntax_error_message_is_short_and_positioned() {
    let (kind, location, _) = one_problem(ProcessDef::from_yaml(&gateway(&"#".repeat(4_000))));
    let ProblemKind::BadCondition(message) = kind else {
        panic!("{kind:?}")
    };
    assert!(message.len() < 300, "{message}");
    assert!(
        message.starts_with("token recognition error at: '#' at column 1 of the expression"),
        "{message}"
    );
    assert!(message.contains("(and 4000 more errors)"), "{message}");
    assert_eq!(location, Some(WHEN));

    let (kind, _, _) = one_problem(ProcessDef::from_yaml(&gateway("v == )")));
    let ProblemKind::BadCondition(message) = kind else {
        panic!("{kind:?}")
    };
    assert!(message.starts_with("mismatched input ')'"), "{message}");
    assert!(
        message.ends_with("at column 6 of the expression"),
        "{message}"
    );
    assert!(message.len() < 200, "{message}");
    assert!(!message.contains('\n'), "{message}");
    assert!(!message.ends_with('.'), "{message}");
}

// ---------------------------------------------------------------------------------------------
// 4. Cost: nested macros over variable values
// ---------------------------------------------------------------------------------------------

#[test]
fn nested_macros_over_a_variable_are_too_costly() {
    for when in [
        "items.all(a, items.all(b, items.all(c, a == b)))",
        "items.all(a, items.all(b, true))",
        "items.exists(a, a in items)",
        "items.map(a, items + items).size() > 0",
    ] {
        let (kind, location, _) = one_problem(ProcessDef::from_yaml(&gateway(when)));
        assert!(
            matches!(kind, ProblemKind::ExpressionTooCostly { cost, limit }
                if limit == ProcessDef::MAX_EXPRESSION_COST && cost > limit),
            "{when}: {kind:?}"
        );
        assert_eq!(location, Some(WHEN));
    }
}

#[test]
fn the_costliest_accepted_expressions_run_in_bounded_time() {
    // A list as long as a value may hold, and a nested one with as many items in all.
    let flat: Vec<Value> = (0..32_000).map(|_| json!(0)).collect();
    let per = 100;
    let nested: Vec<Value> = (0..(16_000 / per))
        .map(|_| Value::Array((0..per).map(|_| json!(0)).collect()))
        .collect();
    for (when, items, want) in [
        ("items.all(a, a == 0 && a < 1 && a + 1 > 0)", &flat, "yes"),
        (
            "items.map(a, a + 1).filter(b, b == 1).size() == 32000",
            &flat,
            "yes",
        ),
        ("items.exists(a, a.exists(b, b != 0))", &nested, "no"),
        ("items.all(a, a in [0, 1, 2]) && 0 in items", &flat, "yes"),
        ("[1, 2, 3].all(x, items.all(a, a != x))", &flat, "yes"),
    ] {
        let text = gateway(when).replace("items: { type: array }", "items: { type: any }");
        let engine = engine_with(&text);
        let started = Instant::now();
        let id = engine
            .start("gate", vars(json!({ "items": items })))
            .unwrap();
        let elapsed = started.elapsed();
        assert_eq!(taken(&engine.instance(id).unwrap()), want, "{when}");
        assert!(elapsed < Duration::from_secs(20), "{when}: {elapsed:?}");
    }
}

#[test]
fn the_costliest_accepted_macro_body_runs_in_bounded_time() {
    // The longest body one macro over a variable's largest list may have.
    let make = |k: usize| {
        let body: Vec<String> = (1..=k).map(|i| format!("a != {i}")).collect();
        format!("items.all(a, {})", body.join(" && "))
    };
    let mut k = 1;
    while ProcessDef::from_yaml(&gateway(&make(k + 1))).is_ok() {
        k += 1;
    }
    let (kind, _, _) = one_problem(ProcessDef::from_yaml(&gateway(&make(k + 1))));
    assert!(
        matches!(kind, ProblemKind::ExpressionTooCostly { .. }),
        "{kind:?}"
    );
    let engine = engine_with(&gateway(&make(k)));
    let items: Vec<Value> = (0..32_000).map(|_| json!(0)).collect();
    let started = Instant::now();
    let id = engine
        .start("gate", vars(json!({ "items": items })))
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(taken(&engine.instance(id).unwrap()), "yes");
    eprintln!("{k} terms over 32,000 items: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
}

#[test]
fn nested_macros_over_parts_of_a_variable_are_accepted() {
    ProcessDef::from_yaml(&gateway(
        "items.exists(o, o.lines.exists(l, l.qty > 100 && l.tags.exists(t, t == 'x')))",
    ))
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// 5, 6. Escalation ladders, reminders, counts
// ---------------------------------------------------------------------------------------------

/// A task with `extra` keys under it (indented for the task's mapping).
fn task_with(extra: &str) -> String {
    format!(
        r#"id: t
version: 1
name: T
roles: {{ r: {{ name: R }}, boss: {{ name: Boss }} }}
variables: {{ every: {{ type: string }} }}
nodes:
  start: {{ kind: start, next: work }}
  work:
    kind: user_task
    name: Work
    raci: {{ responsible: [r], accountable: boss }}
    due: 4h
{extra}    next: end
  end: {{ kind: end }}
"#
    )
}

#[test]
fn an_urge_every_zero_or_with_a_huge_max_is_refused() {
    let def = task_with("    escalate:\n      - { after: 1h, action: urge, every: 0s, max: 5 }\n");
    let (kind, location, path) = one_problem(ProcessDef::from_yaml(&def));
    assert_eq!(
        kind,
        ProblemKind::IntervalTooShort {
            key: "every",
            min: "1m"
        }
    );
    assert_eq!(location, Some(column_of(&def, 14, "0s")));
    assert_eq!(path, "nodes.work.escalate[0].every");

    let def =
        task_with("    escalate:\n      - { after: 1h, action: urge, every: 1m, max: 1000000 }\n");
    let (kind, location, path) = one_problem(ProcessDef::from_yaml(&def));
    assert_eq!(
        kind,
        ProblemKind::TooMany {
            what: "urges",
            found: 1_000_000,
            limit: u64::from(ProcessDef::MAX_URGES)
        }
    );
    assert_eq!(location, Some(column_of(&def, 14, "1000000")));
    assert_eq!(path, "nodes.work.escalate[0].max");
    ProcessDef::from_yaml(&task_with(
        "    escalate:\n      - { after: 1h, action: urge, every: 1m, max: 100 }\n",
    ))
    .unwrap();
}

#[test]
fn a_computed_urge_interval_below_the_minimum_fails_when_it_is_armed() {
    let def = task_with(
        "    escalate:\n      - { after: 1h, action: urge, every: { expr: 'every' }, max: 3 }\n",
    );
    let clock = Arc::new(ManualClock::new("2026-01-05T09:00:00Z".parse().unwrap()));
    let engine = Engine::builder().clock(Arc::clone(&clock)).build();
    engine.deploy(ProcessDef::from_yaml(&def).unwrap()).unwrap();
    let id = engine.start("t", vars(json!({ "every": "0s" }))).unwrap();
    clock.advance(chrono::Duration::hours(6));
    let fired = engine.tick(clock.now());
    // The first urge fires 1h after the deadline; the next is not armed 0s later, over and over.
    let urges = fired
        .iter()
        .filter(|f| matches!(f.kind, procflow::TimerKind::Urge { .. }))
        .count();
    assert_eq!(urges, 1, "{fired:?}");
    let _ = id;
}

#[test]
fn too_many_reminders_or_escalation_levels_are_refused() {
    let reminders: String = (0..257)
        .map(|i| format!("      - {{ after: {}m }}\n", i + 1))
        .collect();
    let def = task_with(&format!("    remind:\n{reminders}"));
    let (kind, location, path) = one_problem(ProcessDef::from_yaml(&def));
    assert_eq!(
        kind,
        ProblemKind::TooMany {
            what: "reminders",
            found: 257,
            limit: ProcessDef::MAX_REMINDERS as u64
        }
    );
    assert_eq!(location, Some(column_of(&def, 14, "- {")));
    assert_eq!(path, "nodes.work.remind");

    let levels: String = (0..65)
        .map(|i| format!("      - {{ after: {}m, action: notify }}\n", i + 1))
        .collect();
    let def = task_with(&format!("    escalate:\n{levels}"));
    let (kind, _, path) = one_problem(ProcessDef::from_yaml(&def));
    assert_eq!(
        kind,
        ProblemKind::TooMany {
            what: "escalation levels",
            found: 65,
            limit: ProcessDef::MAX_ESCALATIONS as u64
        }
    );
    assert_eq!(path, "nodes.work.escalate");

    let reminders: String = (0..ProcessDef::MAX_REMINDERS)
        .map(|i| format!("      - {{ after: {}m }}\n", i + 1))
        .collect();
    ProcessDef::from_yaml(&task_with(&format!("    remind:\n{reminders}"))).unwrap();
}

#[test]
fn too_many_roles_nodes_or_routes_are_refused() {
    let roles: String = (0..=ProcessDef::MAX_ROLES)
        .map(|i| format!("  r{i}: {{ name: R }}\n"))
        .collect();
    let def = format!(
        "id: many\nversion: 1\nname: Many\nroles:\n{roles}nodes:\n  start: {{ kind: start, next: end }}\n  end: {{ kind: end }}\n"
    );
    let (kind, location, path) = one_problem(ProcessDef::from_yaml(&def));
    assert_eq!(
        kind,
        ProblemKind::TooMany {
            what: "roles",
            found: 10_001,
            limit: 10_000
        }
    );
    assert_eq!(
        location,
        Some(Location {
            line: 10_005,
            column: 3
        })
    );
    assert_eq!(path, "roles.r10000");

    let nodes: String = (0..ProcessDef::MAX_NODES)
        .map(|i| format!("  n{i}: {{ kind: end }}\n"))
        .collect();
    let def = format!(
        "id: many\nversion: 1\nname: Many\nnodes:\n  start: {{ kind: start, next: n0 }}\n{nodes}"
    );
    let (kind, _, path) = one_problem(ProcessDef::from_yaml(&def));
    assert_eq!(
        kind,
        ProblemKind::TooMany {
            what: "nodes",
            found: 1_001,
            limit: 1_000
        }
    );
    assert_eq!(path, "nodes.n999");

    let routes: String = (0..=ProcessDef::MAX_FLOWS)
        .map(|i| format!("      - {{ when: 'v == {i}', to: end }}\n"))
        .collect();
    let def = format!(
        "id: many\nversion: 1\nname: Many\nvariables: {{ v: {{ type: integer }} }}\nnodes:\n  start: {{ kind: start, next: gw }}\n  gw:\n    kind: exclusive\n    routes:\n{routes}  end: {{ kind: end }}\n"
    );
    let err = ProcessDef::from_yaml(&def).unwrap_err();
    assert!(
        err.kinds().contains(&&ProblemKind::TooMany {
            what: "routes",
            found: 101,
            limit: 100
        }),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. The manual clock and scenarios
// ---------------------------------------------------------------------------------------------

#[test]
fn advancing_the_manual_clock_out_of_range_does_not_panic() {
    let start = "2026-01-05T09:00:00Z".parse().unwrap();
    let clock = ManualClock::new(start);
    assert_eq!(
        clock.checked_advance(chrono::Duration::days(99_999_999)),
        None
    );
    assert_eq!(clock.now(), start);
    clock.advance(chrono::Duration::days(99_999_999));
    assert_eq!(clock.now(), chrono::DateTime::<chrono::Utc>::MAX_UTC);
    clock.advance(chrono::Duration::days(-999_999_999));
    assert_eq!(clock.now(), chrono::DateTime::<chrono::Utc>::MIN_UTC);
    assert_eq!(
        clock.checked_advance(chrono::Duration::hours(1)),
        Some(chrono::DateTime::<chrono::Utc>::MIN_UTC + chrono::Duration::hours(1))
    );
}

const SCENARIO_OUT_OF_RANGE: &str = "name: far\nsteps:\n  - start: {}\n  - advance: 99999999d\n";

#[test]
fn a_scenario_advancing_out_of_range_is_a_located_load_error() {
    let err = Scenario::from_yaml(SCENARIO_OUT_OF_RANGE).unwrap_err();
    assert_eq!(err.problems.len(), 1, "{err}");
    let p = &err.problems[0];
    assert!(
        matches!(&p.kind, ProblemKind::BadStep(m) if m.contains("advance '99999999d' moves the clock past")),
        "{p}"
    );
    assert_eq!(p.location, Some(Location { line: 4, column: 5 }));
    assert_eq!(p.path, "steps[1]");
    // Many small steps that add up past the range too.
    let steps: String = (0..30).map(|_| "  - advance: 9999999d\n").collect();
    let err = Scenario::from_yaml(&format!("name: far\nsteps:\n{steps}")).unwrap_err();
    assert!(
        matches!(err.kinds()[..], [ProblemKind::BadStep(_), ..]),
        "{err}"
    );
    // An instant before the clock, or not an instant.
    let err =
        Scenario::from_yaml("name: back\nsteps:\n  - at: 2020-01-01T00:00:00Z\n  - at: tomorrow\n")
            .unwrap_err();
    assert_eq!(err.problems.len(), 2, "{err}");
}

#[test]
fn procflow_simulate_reports_the_step_instead_of_panicking() {
    let dir = std::env::temp_dir().join(format!("procflow-hardening-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let scenario = dir.join("far.yaml");
    std::fs::write(&scenario, SCENARIO_OUT_OF_RANGE).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_procflow"))
        .args([
            "simulate",
            "process-defs/complaint-handling.yaml",
            "--scenario",
        ])
        .arg(&scenario)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("far.yaml:4:5: steps[1]: advance '99999999d' moves the clock past"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// 8. A computed `due` giving garbage
// ---------------------------------------------------------------------------------------------

#[test]
fn a_computed_due_that_is_not_a_duration_fails_the_call_typed() {
    let def = r#"
id: due
version: 1
name: Due
roles: { r: { name: R } }
variables: { d: { type: string } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [r], accountable: r }
    due: { expr: "d" }
    next: end
  end: { kind: end }
"#;
    let engine = engine_with(def);
    for (d, want) in [
        (
            "-5h",
            "expression 'd' gave a negative duration '-5h'; a duration counts forward",
        ),
        (
            "",
            "expression 'd' gave an invalid duration '': it is empty",
        ),
        (
            "tomorrow",
            "expression 'd' gave an invalid duration 'tomorrow': unexpected",
        ),
        ("4h", ""),
    ] {
        let result = engine.start("due", vars(json!({ "d": d })));
        if want.is_empty() {
            result.unwrap();
            continue;
        }
        // The call fails typed; the instance keeps its token failed at the task (not opened),
        // with an incident that a retry clears once the data gives a duration.
        match result {
            Err(ExecError::Deadline {
                instance,
                node,
                message,
            }) => {
                assert!(message.starts_with(want), "{d:?}: {message}");
                assert_eq!(&*node.name, "work");
                let inst = engine.instance(instance).unwrap();
                assert!(inst.tasks().is_empty(), "{d:?}: the task opened");
                assert_eq!(inst.incidents().len(), 1);
                assert!(matches!(
                    engine.retry(instance),
                    Err(ExecError::Deadline { .. })
                ));
            }
            other => panic!("{d:?}: {other:?}"),
        }
    }
}
