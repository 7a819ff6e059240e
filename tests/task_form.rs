//! A user task's form (`sets:`): the declared variables its completion may set. A completion
//! that sets another is refused, names the variable, and changes nothing; a task without `sets:`
//! may set any declared variable; a `sets:` naming an undeclared variable, or on a node that is
//! not a user task, is a located load error.

use procflow::{Actor, Engine, ExecError, ProblemKind, ProcessDef, TaskState, VarProblem, Vars};
use serde_json::json;

const FORM: &str = r#"
id: form
version: 1
name: Form
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
variables:
  problem: { type: string }
  priority: { type: integer }
  note: { type: string }
nodes:
  start: { kind: start, next: record }
  record:
    kind: user_task
    name: Record
    raci: { responsible: [clerk], accountable: lead }
    sets: [problem, note]
    next: rate
  rate:
    kind: user_task
    name: Rate
    raci: { responsible: [clerk], accountable: lead }
    next: end
  end: { kind: end }
"#;

fn vars(v: serde_json::Value) -> Vars {
    serde_json::from_value(v).unwrap()
}

fn clerk() -> Actor {
    Actor::new("ann", ["clerk"])
}

#[test]
fn a_completion_sets_only_what_its_form_lists() {
    let def = ProcessDef::from_yaml(FORM).unwrap();
    let record = def.node(def.node_id("record").unwrap());
    assert_eq!(
        record.sets().map(|s| s.collect::<Vec<_>>()),
        Some(vec!["problem", "note"])
    );
    assert!(def.node(def.node_id("rate").unwrap()).sets().is_none());
    let engine = Engine::new();
    engine.deploy(def).unwrap();
    let id = engine.start("form", Vars::new()).unwrap();
    let task = engine.tasks(id).unwrap()[0].id;
    let audit = engine.instance(id).unwrap().audit().len();

    // priority is declared but not on the form; 'ghost' is not declared at all.
    let err = engine
        .complete(
            task,
            &clerk(),
            vars(json!({ "problem": "no dial tone", "priority": 3, "ghost": 1 })),
        )
        .unwrap_err();
    let ExecError::Variables { mut problems } = err else {
        panic!("{err:?}")
    };
    problems.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        problems,
        vec![
            ("ghost".to_owned(), VarProblem::Undeclared),
            ("priority".to_owned(), VarProblem::NotSetByTask),
        ]
    );
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.tasks()[0].state(), &TaskState::Open, "nothing changed");
    assert!(inst.vars().get("problem").is_none());
    assert_eq!(inst.audit().len(), audit);

    engine
        .complete(task, &clerk(), vars(json!({ "problem": "no dial tone" })))
        .unwrap();
    // A task without a form may set any declared variable.
    let task = engine.tasks(id).unwrap()[0].id;
    engine
        .complete(task, &clerk(), vars(json!({ "priority": 3, "note": "ok" })))
        .unwrap();
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.vars()["problem"], json!("no dial tone"));
    assert_eq!(inst.vars()["priority"], json!(3));
}

#[test]
fn a_form_of_undeclared_variables_or_off_a_user_task_is_a_located_load_error() {
    let yaml = FORM
        .replace("sets: [problem, note]", "sets: [problem, nope]")
        .replace("  end: { kind: end }", "  end: { kind: end, sets: [note] }");
    let err = ProcessDef::from_yaml(&yaml).unwrap_err();
    let text = err.to_string();
    let found: Vec<(u32, &str, &ProblemKind)> = err
        .problems
        .iter()
        .map(|p| (p.location.unwrap().line, p.path.as_str(), &p.kind))
        .collect();
    assert!(
        found.iter().any(|(line, path, k)| *line == 16
            && *path == "nodes.record.sets"
            && matches!(k, ProblemKind::UnknownVariable { key: "sets", name } if name == "nope")),
        "{text}"
    );
    assert!(
        found.iter().any(|(line, path, k)| *line == 23
            && *path == "nodes.end.sets"
            && matches!(
                k,
                ProblemKind::KeyNotAllowed {
                    key: "sets",
                    kind: "end"
                }
            )),
        "{text}"
    );
    assert_eq!(found.len(), 2, "{text}");
}
