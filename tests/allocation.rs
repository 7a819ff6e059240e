//! Issue 14, item 2: allocation declared per task (case owner, direct, deferred, retain
//! familiar, four eyes), through the public API.

use procflow::{
    Actor, Call, Engine, Entry, ExecError, InstanceId, ProblemKind, ProcessDef, Status, TaskId,
    Vars,
};
use serde_json::json;

mod common;
use common::open;

const DEF: &str = r#"
id: alloc
version: 1
name: Allocation
accountable: lead
owner: { from: first_contact }
roles: { agent: { name: Agent }, billing: { name: Billing }, lead: { name: Lead } }
variables:
  manager_id: { type: string }
  team: { type: array }
nodes:
  start: { kind: start, next: first_contact }
  first_contact:
    kind: user_task
    name: Task
    raci: { responsible: [agent], accountable: lead }
    next: draft_credit
  draft_credit:
    kind: user_task
    name: Task
    raci: { responsible: [billing], accountable: lead }
    next: approve_credit
  approve_credit:
    kind: user_task
    name: Task
    four_eyes: [draft_credit]
    raci: { responsible: [billing], accountable: lead }
    next: review
  review:
    kind: user_task
    name: Task
    assign: { to: "manager_id" }
    raci: { responsible: [billing, lead], accountable: lead }
    next: dispatch
  dispatch:
    kind: user_task
    name: Task
    assign: { candidates: team }
    raci: { responsible: [billing], accountable: lead }
    next: draft_again
  draft_again:
    kind: user_task
    name: Task
    assign: { like: draft_credit }
    raci: { responsible: [billing], accountable: lead }
    next: reply
  reply:
    kind: user_task
    name: Task
    assign: owner
    raci: { responsible: [agent], accountable: lead }
    next: end
  end: { kind: end }
"#;

fn ann() -> Actor {
    Actor::new("ann", ["agent"])
}
fn amy() -> Actor {
    Actor::new("amy", ["agent"])
}
fn bob() -> Actor {
    Actor::new("bob", ["billing"])
}
fn bea() -> Actor {
    Actor::new("bea", ["billing"])
}
fn lee() -> Actor {
    Actor::new("lee", ["lead"])
}

fn engine() -> Engine {
    let engine = Engine::new();
    engine.deploy(ProcessDef::from_yaml(DEF).unwrap()).unwrap();
    engine
}

fn task_at(engine: &Engine, id: InstanceId, node: &str) -> TaskId {
    engine
        .tasks(id)
        .unwrap()
        .into_iter()
        .find(|t| &*t.node_id == node)
        .unwrap_or_else(|| panic!("no open task at {node}"))
        .id
}

fn vars(pairs: &[(&str, serde_json::Value)]) -> Vars {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn started(engine: &Engine, v: Vars) -> InstanceId {
    engine.start("alloc", v).unwrap()
}

fn refusals(engine: &Engine, id: InstanceId) -> Vec<procflow::Refusal> {
    engine
        .instance(id)
        .unwrap()
        .audit()
        .iter()
        .filter_map(|r| match &r.what {
            Entry::Refused(r) => Some((**r).clone()),
            _ => None,
        })
        .collect()
}

/// Drives an instance to `node` with the usual actors.
fn to_review(engine: &Engine, id: InstanceId) {
    engine
        .complete(task_at(engine, id, "first_contact"), &ann(), Vars::new())
        .unwrap();
    engine
        .complete(task_at(engine, id, "draft_credit"), &bob(), Vars::new())
        .unwrap();
    engine
        .complete(task_at(engine, id, "approve_credit"), &bea(), Vars::new())
        .unwrap();
}

#[test]
fn the_first_contact_owns_the_case_and_the_reply_goes_back_to_them() {
    let engine = engine();
    let id = started(
        &engine,
        vars(&[
            ("manager_id", json!("lee")),
            ("team", json!(["bob", "bea"])),
        ]),
    );
    assert_eq!(engine.owner(id).unwrap(), None);
    engine
        .complete(task_at(&engine, id, "first_contact"), &ann(), Vars::new())
        .unwrap();
    assert_eq!(engine.owner(id).unwrap().unwrap().as_str(), "ann");
    let inst = engine.instance(id).unwrap();
    assert!(inst.audit().iter().any(
        |r| matches!(&r.what, Entry::OwnerSet { owner, by: None } if owner.as_str() == "ann")
    ));
    to_review_rest(&engine, id);
    let reply = task_at(&engine, id, "reply");
    let view = engine
        .tasks(id)
        .unwrap()
        .into_iter()
        .find(|t| t.id == reply)
        .unwrap();
    assert_eq!(view.assignee.as_ref().map(|a| a.as_str()), Some("ann"));
    // Another agent may not take it, and the refusal is audited.
    let err = engine.claim(reply, &amy()).unwrap_err();
    assert!(
        matches!(
            err,
            ExecError::Refused {
                call: Call::Claim,
                ..
            }
        ),
        "{err}"
    );
    assert!(engine.work_list(&amy()).is_empty());
    assert_eq!(engine.work_list(&ann()).len(), 1);
    let r = refusals(&engine, id);
    assert_eq!(r.last().unwrap().actor.as_str(), "amy");
    assert!(r.last().unwrap().reason.contains("assigned to ann"));
    engine.complete(reply, &ann(), Vars::new()).unwrap();
    assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
}

/// From after `first_contact` to the reply.
fn to_review_rest(engine: &Engine, id: InstanceId) {
    engine
        .complete(task_at(engine, id, "draft_credit"), &bob(), Vars::new())
        .unwrap();
    engine
        .complete(task_at(engine, id, "approve_credit"), &bea(), Vars::new())
        .unwrap();
    engine
        .complete(task_at(engine, id, "review"), &lee(), Vars::new())
        .unwrap();
    engine
        .complete(task_at(engine, id, "dispatch"), &bea(), Vars::new())
        .unwrap();
    engine
        .complete(task_at(engine, id, "draft_again"), &bob(), Vars::new())
        .unwrap();
}

#[test]
fn four_eyes_refuses_the_drafter_on_claim_and_complete() {
    let engine = engine();
    let id = started(&engine, vars(&[("manager_id", json!("lee"))]));
    engine
        .complete(task_at(&engine, id, "first_contact"), &ann(), Vars::new())
        .unwrap();
    engine
        .complete(task_at(&engine, id, "draft_credit"), &bob(), Vars::new())
        .unwrap();
    let approve = task_at(&engine, id, "approve_credit");
    for err in [
        engine.claim(approve, &bob()).unwrap_err(),
        engine.complete(approve, &bob(), Vars::new()).unwrap_err(),
    ] {
        let ExecError::Refused { actor, reason, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(actor.as_str(), "bob");
        assert!(
            reason.contains("draft_credit") && reason.contains("bob"),
            "{reason}"
        );
    }
    // Not even the accountable's override makes one person both draft and approve.
    let both = Actor::new("bob", ["billing", "lead"]);
    assert!(matches!(
        engine.complete(approve, &both, Vars::new()),
        Err(ExecError::Refused { .. })
    ));
    let r = refusals(&engine, id);
    assert_eq!(r.len(), 3);
    assert_eq!(r[0].call, Call::Claim);
    assert_eq!(r[1].call, Call::Complete);
    assert_eq!(r[0].task, Some(approve.seq()));
    assert_eq!(open(&engine, id), ["approve_credit"]);
    engine.complete(approve, &bea(), Vars::new()).unwrap();
}

#[test]
fn direct_assignment_reads_a_variable_and_nobody_is_an_incident() {
    let engine = engine();
    let id = started(&engine, vars(&[("manager_id", json!("lee"))]));
    to_review(&engine, id);
    let review = engine
        .tasks(id)
        .unwrap()
        .into_iter()
        .find(|t| &*t.node_id == "review")
        .unwrap();
    assert_eq!(review.assignee.as_ref().map(|a| a.as_str()), Some("lee"));
    // A billing clerk holds a responsible role, but the task is the manager's.
    assert!(matches!(
        engine.claim(review.id, &bob()),
        Err(ExecError::Refused { .. })
    ));
    engine.claim(review.id, &lee()).unwrap();

    // No manager: an incident at the task, no silent unassigned task.
    let id = started(&engine, Vars::new());
    let err = {
        engine
            .complete(task_at(&engine, id, "first_contact"), &ann(), Vars::new())
            .unwrap();
        engine
            .complete(task_at(&engine, id, "draft_credit"), &bob(), Vars::new())
            .unwrap();
        engine
            .complete(task_at(&engine, id, "approve_credit"), &bea(), Vars::new())
            .unwrap_err()
    };
    assert!(
        matches!(&err, ExecError::Incident { node, .. } if &*node.name == "review"),
        "{err}"
    );
    assert!(open(&engine, id).is_empty());
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.incidents().len(), 1);
    // After the fix (a retry once the data is right would open it): retry fails again alike.
    assert!(engine.retry(id).is_err());
}

#[test]
fn deferred_candidates_and_retain_familiar() {
    let engine = engine();
    let id = started(
        &engine,
        vars(&[
            ("manager_id", json!("lee")),
            ("team", json!(["bea", "zoe"])),
        ]),
    );
    to_review(&engine, id);
    engine
        .complete(task_at(&engine, id, "review"), &lee(), Vars::new())
        .unwrap();
    let dispatch = engine
        .tasks(id)
        .unwrap()
        .into_iter()
        .find(|t| &*t.node_id == "dispatch")
        .unwrap();
    let c: Vec<&str> = dispatch.candidates.iter().map(|a| a.as_str()).collect();
    assert_eq!(c, ["bea", "zoe"]);
    assert!(dispatch.assignee.is_none());
    assert!(matches!(
        engine.claim(dispatch.id, &bob()),
        Err(ExecError::Refused { .. })
    ));
    engine.complete(dispatch.id, &bea(), Vars::new()).unwrap();
    // Retain familiar: whoever drafted the credit drafts again.
    let again = engine
        .tasks(id)
        .unwrap()
        .into_iter()
        .find(|t| &*t.node_id == "draft_again")
        .unwrap();
    assert_eq!(again.assignee.as_ref().map(|a| a.as_str()), Some("bob"));
    assert!(matches!(
        engine.complete(again.id, &bea(), Vars::new()),
        Err(ExecError::Refused { .. })
    ));
    engine.complete(again.id, &bob(), Vars::new()).unwrap();
}

#[test]
fn an_empty_or_wrong_candidates_list_is_an_incident() {
    let engine = engine();
    for team in [json!([]), json!([1, 2])] {
        let id = started(
            &engine,
            vars(&[("manager_id", json!("lee")), ("team", team)]),
        );
        to_review(&engine, id);
        let err = engine
            .complete(task_at(&engine, id, "review"), &lee(), Vars::new())
            .unwrap_err();
        assert!(
            matches!(&err, ExecError::Incident { node, message, .. } if &*node.name == "dispatch" && message.contains("team")),
            "{err}"
        );
        assert!(open(&engine, id).is_empty());
    }
}

#[test]
fn hand_over_moves_the_case_and_is_refused_to_others() {
    let engine = engine();
    let id = started(
        &engine,
        vars(&[
            ("manager_id", json!("lee")),
            ("team", json!(["bob", "bea"])),
        ]),
    );
    engine
        .complete(task_at(&engine, id, "first_contact"), &ann(), Vars::new())
        .unwrap();
    // Another agent may not take the case.
    let err = engine.hand_over(id, &amy(), &amy()).unwrap_err();
    assert!(
        matches!(
            err,
            ExecError::Refused {
                call: Call::HandOver,
                ..
            }
        ),
        "{err}"
    );
    // Nor may it go to someone who could not have done the first contact.
    assert!(engine.hand_over(id, &ann(), &bob()).is_err());
    assert_eq!(refusals(&engine, id).len(), 2);
    // The owner hands it over.
    engine.hand_over(id, &ann(), &amy()).unwrap();
    assert_eq!(engine.owner(id).unwrap().unwrap().as_str(), "amy");
    assert!(engine.instance(id).unwrap().audit().iter().any(|r| matches!(
        &r.what,
        Entry::OwnerSet { owner, by: Some(by) } if owner.as_str() == "amy" && by.as_str() == "ann"
    )));
    // The accountable may too.
    engine.hand_over(id, &lee(), &ann()).unwrap();
    engine.hand_over(id, &ann(), &amy()).unwrap();
    to_review_rest(&engine, id);
    let reply = task_at(&engine, id, "reply");
    assert!(engine.complete(reply, &ann(), Vars::new()).is_err());
    engine.complete(reply, &amy(), Vars::new()).unwrap();
}

#[test]
fn hand_over_needs_an_owner_rule() {
    let engine = Engine::new();
    engine
        .deploy(
            ProcessDef::from_yaml(
                r#"
id: plain
version: 1
name: Plain
accountable: lead
roles: { agent: { name: Agent }, lead: { name: Lead } }
nodes:
  start: { kind: start, next: t }
  t: { kind: user_task, name: T, raci: { responsible: [agent], accountable: lead }, next: end }
  end: { kind: end }
"#,
            )
            .unwrap(),
        )
        .unwrap();
    let id = engine.start("plain", Vars::new()).unwrap();
    assert!(matches!(
        engine.hand_over(id, &lee(), &ann()),
        Err(ExecError::NoOwnerRule(_))
    ));
}

#[test]
fn bad_rules_are_located_load_errors_all_at_once() {
    let text = r#"
id: bad
version: 1
name: Bad
owner: { from: nowhere }
roles: { agent: { name: Agent }, lead: { name: Lead } }
variables:
  team: { type: string }
nodes:
  start: { kind: start, next: a }
  a:
    kind: user_task
    name: Task
    assign: { to: "boss_id" }
    raci: { responsible: [agent], accountable: lead }
    next: b
  b:
    kind: user_task
    name: Task
    four_eyes: [c, ghost]
    assign: { like: c }
    raci: { responsible: [agent], accountable: lead }
    next: c
  c:
    kind: user_task
    name: Task
    assign: { candidates: team }
    raci: { responsible: [agent], accountable: lead }
    next: d
  d:
    kind: user_task
    name: Task
    assign: owner
    priority: "level + 1"
    raci: { responsible: [agent], accountable: lead }
    next: end
  end: { kind: end, assign: owner }
"#;
    let err = ProcessDef::from_yaml(text).unwrap_err();
    let problems = &err.problems;
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for want in [
        "owner.from",
        "nodes.a.assign.to",
        "nodes.b.four_eyes",
        "nodes.b.assign.like",
        "nodes.c.assign.candidates",
        "nodes.d.priority",
        "nodes.end.assign",
    ] {
        assert!(paths.contains(&want), "{want} missing from {paths:?}");
    }
    // Every problem is located.
    assert!(problems.iter().all(|p| p.location.is_some()));
    assert!(problems.iter().any(|p| matches!(
        &p.kind,
        ProblemKind::UndeclaredVariable(v) if v == "boss_id"
    )));
    assert!(problems.iter().any(|p| matches!(
        &p.kind,
        ProblemKind::BadAllocation { target, reason } if target == "c" && reason.contains("cannot precede")
    )));
    assert!(
        problems
            .iter()
            .any(|p| matches!(&p.kind, ProblemKind::UnknownNode(n) if n == "ghost"))
    );
}
