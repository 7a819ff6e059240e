//! Load-time (and deploy-time) validation: every `ProblemKind`, with its exact line, column and
//! key path.
//!
//! Inline definitions start on the line after `r#"` (the leading newline is stripped), so line 1
//! is the first line of YAML and columns are the columns of the Rust source (the YAML is not
//! indented).

use procflow::{
    DeployProblem, Engine, LoadError, Location, NodeRef, ProblemKind, ProcessDef, handler_fn,
};

/// The YAML text of an inline definition: the raw string minus its leading newline.
fn yaml(text: &str) -> &str {
    text.strip_prefix('\n').unwrap_or(text)
}

fn load_err(text: &str) -> LoadError {
    match ProcessDef::from_yaml(yaml(text)) {
        Ok(def) => panic!("definition {} should be rejected", def.key()),
        Err(e) => e,
    }
}

fn at(line: u32, column: u32) -> Location {
    Location { line, column }
}

/// Every problem as (line, column, path, kind).
fn problems(err: &LoadError) -> Vec<(u32, u32, String, ProblemKind)> {
    err.problems
        .iter()
        .map(|p| {
            let loc = p
                .location
                .unwrap_or_else(|| panic!("problem without a location: {p}"));
            (loc.line, loc.column, p.path.clone(), p.kind.clone())
        })
        .collect()
}

/// One test per definition: loading it fails with exactly these (line, column, path, kind).
macro_rules! syntaxerr {
    ($($name:ident: $text:expr => [$(($line:expr, $col:expr, $path:expr, $kind:expr)),* $(,)?];)*) => {
        $(
            #[test]
            fn $name() {
                let err = load_err($text);
                let expected: Vec<(u32, u32, String, ProblemKind)> =
                    vec![$(($line, $col, String::from($path), $kind)),*];
                assert_eq!(problems(&err), expected, "\n{err}");
            }
        )*
    };
}

syntaxerr! {
    duplicate_node_id: r#"
id: t
version: 1
name: T
roles: { clerk: { name: Clerk } }
nodes:
  start: { kind: start, next: done }
  done: { kind: end }
  done: { kind: end }
"# => [(8, 3, "nodes.done", ProblemKind::Duplicate { what: "node", id: "done".into(), first: at(7, 3) })];

    duplicate_role_id: r#"
id: t
version: 1
name: T
roles:
  clerk: { name: Clerk }
  clerk: { name: Lead }
nodes:
  start: { kind: start, next: done }
  done: { kind: end }
"# => [(6, 3, "roles.clerk", ProblemKind::Duplicate { what: "role", id: "clerk".into(), first: at(5, 3) })];

    duplicate_variable_id: r#"
id: t
version: 1
name: T
roles: {}
variables:
  x: { type: integer }
  x: { type: string }
nodes:
  start: { kind: start, next: done }
  done: { kind: end }
"# => [(7, 3, "variables.x", ProblemKind::Duplicate { what: "variable", id: "x".into(), first: at(6, 3) })];

    invalid_ids: r#"
id: Bad
version: 1
name: T
roles: { Clerk: { name: Clerk } }
nodes:
  start: { kind: start, next: End }
  End: { kind: end }
"# => [
        (1, 5, "id", ProblemKind::InvalidId("Bad".into())),
        (4, 10, "roles.Clerk", ProblemKind::InvalidId("Clerk".into())),
        (7, 3, "nodes.End", ProblemKind::InvalidId("End".into())),
    ];

    // README.md, "Definition format": role ids and node ids are `[a-z0-9_]+` (only the process id may have '-').
    node_and_role_ids_reject_hyphen: r#"
id: my-process
version: 1
name: T
roles: { desk-clerk: { name: Clerk } }
nodes:
  start: { kind: start, next: the-end }
  the-end: { kind: end }
"# => [
        (4, 10, "roles.desk-clerk", ProblemKind::InvalidId("desk-clerk".into())),
        (7, 3, "nodes.the-end", ProblemKind::InvalidId("the-end".into())),
    ];

    version_zero: r#"
id: t
version: 0
name: T
roles: {}
nodes:
  start: { kind: start, next: done }
  done: { kind: end }
"# => [(2, 10, "version", ProblemKind::Syntax("version must be 1 or more".into()))];

    unknown_next_target: r#"
id: t
version: 1
name: T
roles: {}
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: fork }
  fork: { kind: parallel, next: [done, nowhere] }
  done: { kind: end }
"# => [(8, 40, "nodes.fork.next", ProblemKind::UnknownNode("nowhere".into()))];

    unknown_route_target: r#"
id: t
version: 1
name: T
roles: {}
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: gw }
  gw:
    kind: exclusive
    routes:
      - { when: "x > 1", to: nowhere }
      - { default: true, to: done }
  done: { kind: end }
"# => [(11, 30, "nodes.gw.routes[0].to", ProblemKind::UnknownNode("nowhere".into()))];

    unknown_roles_in_raci: r#"
id: t
version: 1
name: T
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [clark], accountable: boss, informed: [auditor] }
    next: done
  done: { kind: end }
"# => [
        (11, 27, "nodes.work.raci.responsible", ProblemKind::UnknownRole("clark".into())),
        (11, 48, "nodes.work.raci.accountable", ProblemKind::UnknownRole("boss".into())),
        (11, 65, "nodes.work.raci.informed", ProblemKind::UnknownRole("auditor".into())),
    ];

    no_responsible_key: r#"
id: t
version: 1
name: T
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { accountable: lead }
    next: done
  done: { kind: end }
"# => [(11, 11, "nodes.work.raci.responsible", ProblemKind::NoResponsible)];

    empty_responsible_list: r#"
id: t
version: 1
name: T
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [], accountable: lead }
    next: done
  done: { kind: end }
"# => [(11, 26, "nodes.work.raci.responsible", ProblemKind::NoResponsible)];

    no_accountable: r#"
id: t
version: 1
name: T
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [clerk] }
    next: done
  done: { kind: end }
"# => [(11, 11, "nodes.work.raci.accountable", ProblemKind::AccountableCount(0))];

    two_accountable: r#"
id: t
version: 1
name: T
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [clerk], accountable: [clerk, lead] }
    next: done
  done: { kind: end }
"# => [(11, 48, "nodes.work.raci.accountable", ProblemKind::AccountableCount(2))];

    missing_raci: r#"
id: t
version: 1
name: T
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    next: done
  done: { kind: end }
"# => [(8, 3, "nodes.work.raci", ProblemKind::MissingRaci)];

    handler_not_allowed_on_user_task: r#"
id: t
version: 1
name: T
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [clerk], accountable: lead }
    handler: send_mail
    next: done
  done: { kind: end }
"# => [(12, 14, "nodes.work.handler", ProblemKind::KeyNotAllowed { key: "handler", kind: "user_task" })];

    raci_not_allowed_on_service_task: r#"
id: t
version: 1
name: T
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: svc }
  svc:
    kind: service_task
    name: Svc
    handler: send_mail
    raci: { responsible: [clerk], accountable: lead }
    next: done
  done: { kind: end }
"# => [(12, 11, "nodes.svc.raci", ProblemKind::KeyNotAllowed { key: "raci", kind: "service_task" })];

    next_not_allowed_on_end: r#"
id: t
version: 1
name: T
roles: {}
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: done }
  done: { kind: end, next: start }
"# => [(8, 28, "nodes.done.next", ProblemKind::KeyNotAllowed { key: "next", kind: "end" })];

    service_task_without_handler: r#"
id: t
version: 1
name: T
roles: {}
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: svc }
  svc:
    kind: service_task
    name: Svc
    next: done
  done: { kind: end }
"# => [(8, 3, "nodes.svc.handler", ProblemKind::KeyMissing { key: "handler", kind: "service_task" })];

    user_task_without_name: r#"
id: t
version: 1
name: T
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    raci: { responsible: [clerk], accountable: lead }
    next: done
  done: { kind: end }
"# => [(8, 3, "nodes.work.name", ProblemKind::KeyMissing { key: "name", kind: "user_task" })];

    user_task_with_two_next: r#"
id: t
version: 1
name: T
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [clerk], accountable: lead }
    next: [done, other]
  done: { kind: end }
  other: { kind: end }
"# => [(12, 11, "nodes.work.next", ProblemKind::NextCount { kind: "user_task", found: 2 })];

    // A node with no `next` is a dead end: no end is reachable from it or from what leads to it.
    no_end_reachable: r#"
id: t
version: 1
name: T
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [clerk], accountable: lead }
"# => [
        (7, 3, "nodes.start", ProblemKind::NoEnd("start".into())),
        (8, 3, "nodes.work.next", ProblemKind::NextCount { kind: "user_task", found: 0 }),
        (8, 3, "nodes.work", ProblemKind::NoEnd("work".into())),
    ];

    no_start: r#"
id: t
version: 1
name: T
roles: {}
variables: { x: { type: integer } }
nodes:
  done: { kind: end }
"# => [(1, 1, "nodes", ProblemKind::StartCount(0))];

    two_starts: r#"
id: t
version: 1
name: T
roles: {}
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: done }
  again: { kind: start, next: done }
  done: { kind: end }
"# => [(8, 3, "nodes", ProblemKind::StartCount(2))];

    unreachable_node: r#"
id: t
version: 1
name: T
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: done }
  orphan:
    kind: user_task
    name: Orphan
    raci: { responsible: [clerk], accountable: lead }
    next: done
  done: { kind: end }
"# => [(8, 3, "nodes.orphan", ProblemKind::Unreachable("orphan".into()))];

    cycle_names_its_nodes_in_order: r#"
id: t
version: 1
name: T
roles: {}
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: a }
  a: { kind: parallel, next: b }
  b: { kind: parallel, next: gw }
  gw:
    kind: exclusive
    routes:
      - { when: "x > 1", to: a }
      - { default: true, to: done }
  done: { kind: end }
"# => [(8, 3, "nodes.a", ProblemKind::Cycle(vec!["a".into(), "b".into(), "gw".into(), "a".into()]))];

    join_fed_through_exclusive: r#"
id: t
version: 1
name: T
roles: {}
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: gw }
  gw:
    kind: exclusive
    routes:
      - { when: "x > 1", to: a }
      - { default: true, to: b }
  a: { kind: parallel, next: join }
  b: { kind: parallel, next: join }
  join: { kind: parallel, next: done }
  done: { kind: end }
"# => [(15, 3, "nodes.join", ProblemKind::BadJoin {
        node: "join".into(),
        reason: "a flow arrives through exclusive gateway 'gw', so the join may wait for a branch that never comes".into(),
    })];

    parallel_merge_without_join: r#"
id: t
version: 1
name: T
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: fork }
  fork: { kind: parallel, next: [a, b] }
  a: { kind: parallel, next: work }
  b: { kind: parallel, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [clerk], accountable: lead }
    next: done
  done: { kind: end }
"# => [(11, 3, "nodes.work", ProblemKind::UnsyncedMerge("work".into()))];

    two_defaults: r#"
id: t
version: 1
name: T
roles: {}
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: gw }
  gw:
    kind: exclusive
    routes:
      - { default: true, to: done }
      - { default: true, to: done }
  done: { kind: end }
"# => [(12, 9, "nodes.gw.routes[1]", ProblemKind::TwoDefaults)];

    // With no routes the gateway is a dead end, so no end is reachable from it either.
    no_routes: r#"
id: t
version: 1
name: T
roles: {}
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: gw }
  gw: { kind: exclusive, routes: [] }
"# => [
        (7, 3, "nodes.start", ProblemKind::NoEnd("start".into())),
        (8, 3, "nodes.gw", ProblemKind::NoEnd("gw".into())),
        (8, 34, "nodes.gw.routes", ProblemKind::NoRoutes),
    ];

    route_with_both_or_neither_when_and_default: r#"
id: t
version: 1
name: T
roles: {}
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: gw }
  gw:
    kind: exclusive
    routes:
      - { when: "x > 1", default: true, to: done }
      - { to: done }
      - { default: true, to: done }
  done: { kind: end }
"# => [
        (11, 9, "nodes.gw.routes[0]", ProblemKind::RouteShape),
        (12, 9, "nodes.gw.routes[1]", ProblemKind::RouteShape),
    ];

    condition_with_undeclared_variable: r#"
id: t
version: 1
name: T
roles: {}
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: gw }
  gw:
    kind: exclusive
    routes:
      - { when: "y > 1 && x > 1", to: done }
      - { default: true, to: done }
  done: { kind: end }
"# => [(11, 17, "nodes.gw.routes[0].when", ProblemKind::UndeclaredVariable("y".into()))];

    bad_default_and_enum_values: r#"
id: t
version: 1
name: T
roles: {}
variables:
  n: { type: integer, default: "ten" }
  s: { type: string, enum: [low, 2] }
  e: { type: string, enum: [low, high], default: mid }
nodes:
  start: { kind: start, next: done }
  done: { kind: end }
"# => [
        (6, 32, "variables.n.default", ProblemKind::BadValue { value: "\"ten\"".into(), ty: "integer".into() }),
        (7, 28, "variables.s.enum", ProblemKind::BadValue { value: "2".into(), ty: "string".into() }),
        (8, 50, "variables.e.default", ProblemKind::BadValue { value: "\"mid\"".into(), ty: "the enum".into() }),
    ];

    // A cycle with no way out is reported as the cycle, without a "no end is reachable" for
    // every node before it.
    cycle_without_an_exit: r#"
id: t
version: 1
name: T
roles: {}
nodes:
  start: { kind: start, next: a }
  a: { kind: parallel, next: b }
  b: { kind: parallel, next: a }
  done: { kind: end }
"# => [
        (7, 3, "nodes.a", ProblemKind::Cycle(vec!["a".into(), "b".into(), "a".into()])),
        (9, 3, "nodes.done", ProblemKind::Unreachable("done".into())),
    ];

    // Every time-limit rule at once (regression for the time issue).
    time_limit_problems: r#"
id: t
version: 1
name: T
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [clerk], accountable: lead }
    due: 4h business
    remind: [{ before: 1h, after: 2h }]
    escalate:
      - { after: 1h, action: reassign }
      - { after: 1h, action: urge }
      - { after: 2h, action: notify, to: boss }
    timeout: { after: 1h, to: nowhere }
    next: done
  done: { kind: end }
"# => [
        (12, 10, "nodes.work.due", ProblemKind::NeedsCalendar),
        (13, 14, "nodes.work.remind[0]", ProblemKind::RemindShape),
        (15, 30, "nodes.work.escalate[0]", ProblemKind::EscalationShape("'reassign' needs 'to', the role to give the task to")),
        (16, 30, "nodes.work.escalate[1]", ProblemKind::EscalationShape("'urge' needs 'every' and 'max'")),
        (17, 42, "nodes.work.escalate[2].to", ProblemKind::UnknownRole("boss".into())),
        (18, 31, "nodes.work.timeout.to", ProblemKind::UnknownNode("nowhere".into())),
    ];

    timer_nodes_and_keys_on_the_wrong_kind: r#"
id: t
version: 1
name: T
roles: {}
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: wait }
  wait: { kind: timer, next: call }
  call: { kind: service_task, name: Call, handler: h, due: 1h, next: later }
  later: { kind: timer, until: x, next: done }
  done: { kind: end }
"# => [
        (8, 3, "nodes.wait.kind", ProblemKind::TimerShape),
        (9, 60, "nodes.call.due", ProblemKind::KeyNotAllowed { key: "due", kind: "service_task" }),
        (10, 32, "nodes.later.until", ProblemKind::BadValue { value: "x".into(), ty: "string (an RFC 3339 instant)".into() }),
    ];

    several_semantic_problems_at_once: r#"
id: t
version: 1
name: T
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [clerk], accountable: boss }
    next: gw
  gw:
    kind: exclusive
    routes:
      - { when: "x > 1", to: work }
      - { default: true, to: done }
  done: { kind: end }
  done: { kind: end }
"# => [
        (8, 3, "nodes.work", ProblemKind::Cycle(vec!["work".into(), "gw".into(), "work".into()])),
        (11, 48, "nodes.work.raci.accountable", ProblemKind::UnknownRole("boss".into())),
        (19, 3, "nodes.done", ProblemKind::Duplicate { what: "node", id: "done".into(), first: at(18, 3) }),
    ];
}

#[test]
fn join_fed_by_two_forks() {
    let err = load_err(
        r#"
id: t
version: 1
name: T
roles: {}
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: f1 }
  f1: { kind: parallel, next: [a, f2] }
  f2: { kind: parallel, next: [b, c] }
  a: { kind: parallel, next: join }
  b: { kind: parallel, next: join }
  c: { kind: parallel, next: join }
  join: { kind: parallel, next: done }
  done: { kind: end }
"#,
    );
    // The message names both forks; which comes first depends on the traversal order.
    let reasons = ["'f1' and 'f2'", "'f2' and 'f1'"]
        .map(|forks| format!("its branches come from different forks {forks}"));
    let got = problems(&err);
    assert_eq!(got.len(), 1, "{err}");
    let (line, column, path, kind) = &got[0];
    assert_eq!((*line, *column, path.as_str()), (13, 3, "nodes.join"));
    match kind {
        ProblemKind::BadJoin { node, reason } => {
            assert_eq!(node, "join");
            assert!(reasons.contains(reason), "{reason}");
        }
        other => panic!("expected BadJoin, got {other:?}"),
    }
}

/// The one problem of a file that does not parse: its location, path and message.
fn syntax_problem(text: &str) -> (Location, String, String) {
    let err = load_err(text);
    assert_eq!(
        err.problems.len(),
        1,
        "a syntax error stops the parser:\n{err}"
    );
    let p = &err.problems[0];
    match &p.kind {
        ProblemKind::Syntax(message) => (
            p.location.expect("a syntax error has a location"),
            p.path.clone(),
            message.clone(),
        ),
        other => panic!("expected a syntax problem, got {other:?}"),
    }
}

#[test]
fn yaml_syntax_error() {
    let (loc, path, message) = syntax_problem(
        r#"
id: t
version: 1
name: T: U
roles: {}
nodes:
  start: { kind: start, next: done }
  done: { kind: end }
"#,
    );
    assert_eq!((loc, path.as_str()), (at(3, 8), ""));
    assert!(
        message.contains("mapping values are not allowed"),
        "{message}"
    );
}

#[test]
fn unknown_key_is_a_syntax_error_at_the_key() {
    // `nxt` is a typo; the parser stops there, so the missing `next` is not reported.
    let (loc, path, message) = syntax_problem(
        r#"
id: t
version: 1
name: T
roles: {}
nodes:
  start: { kind: start, nxt: done }
  done: { kind: end }
  done: { kind: end }
"#,
    );
    assert_eq!((loc, path.as_str()), (at(6, 25), ""));
    assert!(message.contains("unknown field"), "{message}");
    assert!(message.contains("nxt"), "{message}");
}

#[test]
fn wrong_value_type_is_a_syntax_error() {
    let (loc, path, message) = syntax_problem(
        r#"
id: t
version: one
name: T
roles: {}
nodes:
  start: { kind: start, next: done }
  done: { kind: end }
"#,
    );
    assert_eq!((loc, path.as_str()), (at(2, 10), ""));
    assert!(!message.is_empty());
}

#[test]
fn condition_that_does_not_compile() {
    let err = load_err(
        r#"
id: t
version: 1
name: T
roles: {}
variables: { x: { type: integer } }
nodes:
  start: { kind: start, next: gw }
  gw:
    kind: exclusive
    routes:
      - { when: "x >", to: done }
      - { default: true, to: done }
  done: { kind: end }
"#,
    );
    assert_eq!(err.problems.len(), 1, "{err}");
    let p = &err.problems[0];
    assert_eq!(p.location, Some(at(11, 17)));
    assert_eq!(p.path, "nodes.gw.routes[0].when");
    match &p.kind {
        ProblemKind::BadCondition(message) => assert!(!message.is_empty()),
        other => panic!("expected BadCondition, got {other:?}"),
    }
}

const WITH_SERVICE: &str = r#"
id: svc
version: 1
name: Service
roles: {}
nodes:
  start: { kind: start, next: check }
  check:
    kind: service_task
    name: Credit check
    handler: credit_check
    next: done
  done: { kind: end }
"#;

#[test]
fn deploy_rejects_unregistered_handler() {
    let def = ProcessDef::from_yaml(yaml(WITH_SERVICE)).expect("the definition itself is valid");
    let check = def.node_id("check").unwrap();
    let err = Engine::new()
        .deploy(def)
        .expect_err("no handler is registered");
    assert_eq!(err.key.to_string(), "svc@1");
    assert_eq!(
        err.problems,
        vec![DeployProblem::UnknownHandler {
            node: NodeRef {
                id: check,
                name: "check".into()
            },
            handler: "credit_check".into(),
            location: at(10, 14),
        }]
    );
    assert_eq!(
        err.to_string(),
        "svc@1: 10:14: service task 'check' needs handler 'credit_check', which is not registered"
    );
}

#[test]
fn deploy_accepts_registered_handler() {
    let def = ProcessDef::from_yaml(yaml(WITH_SERVICE)).expect("valid");
    let engine = Engine::builder()
        .handler("credit_check", handler_fn(|_| Ok(procflow::Vars::new())))
        .build();
    let deployed = engine.deploy(def).expect("the handler is registered");
    assert_eq!(deployed.key().to_string(), "svc@1");
}

const HELLO: &str = r#"
id: hello
version: 1
name: Hello
roles: { clerk: { name: Clerk } }
nodes:
  start: { kind: start, next: done }
  done: { kind: end }
"#;

#[test]
fn deploy_same_id_and_version_twice() {
    let engine = Engine::new();
    engine
        .deploy(ProcessDef::from_yaml(yaml(HELLO)).unwrap())
        .expect("first deploy");
    // The same text again is no change (hosts deploy at every start).
    engine
        .deploy(ProcessDef::from_yaml(yaml(HELLO)).unwrap())
        .expect("second deploy of the same text");
    let changed = yaml(HELLO).replace("name: Hello", "name: Hello again");
    assert_ne!(changed, yaml(HELLO));
    let err = engine
        .deploy(ProcessDef::from_yaml(&changed).unwrap())
        .expect_err("another text as hello@1");
    assert_eq!(err.key.to_string(), "hello@1");
    assert_eq!(err.problems, [DeployProblem::AlreadyDeployed], "{err}");
    assert_eq!(
        engine.definition("hello", Some(1)).unwrap().name(),
        "Hello",
        "the first text stays"
    );
    // Another version of the same id deploys.
    let v2 = yaml(HELLO).replace("version: 1", "version: 2");
    engine
        .deploy(ProcessDef::from_yaml(&v2).unwrap())
        .expect("hello@2 is new");
}

fn tmp_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, text).expect("write temp file");
    path
}

#[test]
fn display_of_file_errors_is_file_line_col_path_message() {
    let path = tmp_file(
        "validation-display.yaml",
        yaml(
            r#"
id: t
version: 1
name: T
roles: { clerk: { name: Clerk } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [clerk], accountable: boss }
    next: done
  done: { kind: end }
  done: { kind: end }
"#,
        ),
    );
    let err = ProcessDef::from_file(&path).expect_err("two problems");
    assert_eq!(err.file.as_deref(), Some(path.as_path()));
    let file = path.display();
    assert_eq!(
        err.to_string(),
        format!(
            "{file}:10:48: nodes.work.raci.accountable: unknown role 'boss'\n\
             {file}:13:3: nodes.done: duplicate node id 'done' (first defined at 12:3)"
        )
    );
}

#[test]
fn display_of_unreadable_file() {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("does-not-exist.yaml");
    let err = ProcessDef::from_file(&path).expect_err("no such file");
    assert_eq!(err.problems.len(), 1);
    assert!(matches!(err.problems[0].kind, ProblemKind::Io(_)));
    assert_eq!(err.problems[0].location, None);
    let shown = err.to_string();
    let prefix = format!("{}: cannot read file: ", path.display());
    assert!(
        shown.starts_with(&prefix),
        "{shown:?} should start with {prefix:?}"
    );
}

#[test]
fn shipped_definitions_load() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("process-defs");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("process-defs exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no definitions in {}", dir.display());
    for file in files {
        let def = ProcessDef::from_file(&file).unwrap_or_else(|e| panic!("{e}"));
        let stem = file.file_stem().unwrap().to_str().unwrap();
        assert_eq!(
            def.key().id,
            stem,
            "{} names another process",
            file.display()
        );
    }
}

#[test]
fn bad_duration_names_the_text_and_place() {
    let err = load_err(
        r#"
id: t
version: 1
name: T
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
nodes:
  start: { kind: start, next: work }
  work: { kind: user_task, name: Work, raci: { responsible: [clerk], accountable: lead }, due: 2x, next: done }
  done: { kind: end }
"#,
    );
    let problems = problems(&err);
    assert_eq!(problems.len(), 1, "{err}");
    let (line, col, path, kind) = &problems[0];
    assert_eq!(
        (*line, *col, path.as_str()),
        (7, 96, "nodes.work.due"),
        "{err}"
    );
    assert!(
        matches!(kind, ProblemKind::BadDuration(e) if e.text() == "2x"),
        "{err}"
    );
}

#[test]
fn business_keys_must_be_declared_string_or_integer_variables_named_once() {
    let yaml = r#"id: keyed
version: 1
name: Keyed
keys: [customer_id, missing, notes, customer_id]
roles:
  r: { name: R }
variables:
  customer_id: { type: string }
  notes: { type: object }
nodes:
  start: { kind: start, next: done }
  done: { kind: end }
"#;
    let err = ProcessDef::from_yaml(yaml).unwrap_err();
    let kinds = err.kinds();
    assert_eq!(kinds.len(), 3, "{err}");
    assert!(
        matches!(kinds[0], ProblemKind::UnknownVariable { key: "keys", name } if name == "missing")
    );
    assert!(matches!(kinds[1], ProblemKind::BadKeyType { name, .. } if name == "notes"));
    assert!(
        matches!(kinds[2], ProblemKind::Duplicate { what: "key", id, .. } if id == "customer_id")
    );
    let line4 = err
        .problems
        .iter()
        .all(|p| p.location.is_some_and(|l| l.line == 4));
    assert!(line4, "{err}");

    let ok = yaml.replace(
        "keys: [customer_id, missing, notes, customer_id]",
        "keys: [customer_id]",
    );
    let def = ProcessDef::from_yaml(&ok).unwrap();
    assert_eq!(def.keys().collect::<Vec<_>>(), ["customer_id"]);

    // A key's default longer than a key may be is refused where it stands.
    let long = format!(
        "customer_id: {{ type: string, default: {} }}",
        "c".repeat(procflow::VarSpec::MAX_KEY_BYTES + 1)
    );
    let err = load_err(&ok.replace("customer_id: { type: string }", &long));
    let problems = problems(&err);
    assert_eq!(problems.len(), 1, "{err}");
    let (line, _, path, kind) = &problems[0];
    assert_eq!((*line, path.as_str()), (8, "variables.customer_id.default"));
    assert!(
        matches!(kind, ProblemKind::BadDefault { name, .. } if name == "customer_id"),
        "{err}"
    );
    assert!(err.to_string().contains("longer than 1024 bytes"), "{err}");
}

#[test]
fn ids_are_at_most_128_bytes() {
    // Stores index ids (PostgreSQL at most 2,704 bytes per entry): a 3,000-byte process id
    // deployed on SQLite and failed on PostgreSQL.
    let def = |process: &str, node: &str| {
        format!(
            "id: {process}\nversion: 1\nname: T\nroles: {{ r: {{ name: R }} }}\nnodes:\n  start: {{ kind: start, next: {node} }}\n  {node}: {{ kind: end }}\n"
        )
    };
    let (ok, long) = ("a".repeat(128), "a".repeat(129));
    ProcessDef::from_yaml(&def(&ok, &ok)).unwrap();
    let dashed = format!("{}-{}", "a".repeat(64), "b".repeat(64));
    let err = load_err(&def(&dashed, "done"));
    assert!(
        matches!(&err.kinds()[..], [ProblemKind::InvalidId(id)] if *id == dashed),
        "{err}"
    );
    let err = load_err(&def(&long, &long));
    let problems = problems(&err);
    let paths: Vec<&str> = problems.iter().map(|p| p.2.as_str()).collect();
    assert_eq!(paths.len(), 2, "{err}");
    assert_eq!(paths[0], "id", "{err}");
    assert!(paths[1].starts_with("nodes."), "{err}");
    assert!(
        problems
            .iter()
            .all(|p| matches!(&p.3, ProblemKind::InvalidId(id) if *id == long)),
        "{err}"
    );
    assert!(err.to_string().contains("at most 128"), "{err}");
}
