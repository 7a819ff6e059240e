//! The organisation model through the public API (issue 14): the organisation file and its
//! located errors, scoped role references, `role@up` escalations, skills, automatic allocation,
//! the work-list index, and the three RACI deviations the probes found.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use procflow::{
    Action, Actor, AuthContext, Authorizer, DeployProblem, Engine, Entry, Event, ExecError,
    ManualClock, Organisation, ProblemKind, ProcessDef, RoleId, Scenario, Status, TaskId, Vars,
    hook_fn,
};
use proptest::prelude::*;
use serde_json::json;

const ORG: &str = "process-defs/org/province.yaml";

fn org() -> Organisation {
    Organisation::from_file(ORG).expect("the shipped organisation loads")
}

fn vars(pairs: &[(&str, serde_json::Value)]) -> Vars {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// A person of the organisation, as a host passes them (the organisation gives the roles).
fn who(id: &str) -> Actor {
    Actor::new(id, [""; 0])
}

fn t0() -> DateTime<Utc> {
    "2026-03-02T09:00:00Z".parse().unwrap()
}

/// A fault task for the network operations of the instance's local network.
const SCOPED: &str = include_str!("fixtures/scoped.yaml");

fn engine_with(org: Organisation, defs: &[&str]) -> (Engine, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = Engine::builder()
        .clock(Arc::clone(&clock))
        .organisation(org)
        .build();
    for d in defs {
        engine.deploy(ProcessDef::from_yaml(d).unwrap()).unwrap();
    }
    (engine, clock)
}

fn task_at(engine: &Engine, id: procflow::InstanceId, node: &str) -> TaskId {
    engine
        .tasks(id)
        .unwrap()
        .into_iter()
        .find(|t| &*t.node_id == node)
        .unwrap_or_else(|| panic!("no open task at {node}"))
        .id
}

// The organisation file

#[test]
fn the_shipped_organisation_has_four_levels_and_two_local_networks() {
    let org = org();
    assert_eq!(org.id(), "guangdong");
    assert_eq!(org.parent("gz_tianhe"), Some("gz"));
    assert_eq!(org.parent("gz"), Some("gd"));
    assert_eq!(org.parent("gd"), Some("hq"));
    assert_eq!(org.parent("hq"), None);
    assert_eq!(org.level_of("sz"), Some("local_network"));
    assert!(org.within("gz_tianhe", "gd"));
    assert!(!org.within("gz_tianhe", "sz"));
    let chen = org.actor("chen").unwrap();
    assert_eq!(chen.roles, [RoleId::new("network_ops")]);
    assert!(org.actor("nobody").is_none());
    assert!(org.holds_in("huang", "network_ops", "gz"));
    assert!(!org.holds_in("xu", "network_ops", "gz"));
    assert!(org.has_skills("chen", &["fiber_splicing", "olt_config"]));
    assert!(!org.has_skills("lin", &["fiber_splicing"]));
}

#[test]
fn every_role_of_the_shipped_definitions_is_in_the_organisation() {
    let org = org();
    for file in [
        "process-defs/complaint-handling.yaml",
        "process-defs/order-provisioning.yaml",
        "process-defs/customer-response.yaml",
    ] {
        let def = ProcessDef::from_file(file).unwrap();
        def.check_organisation(&org).unwrap();
        for (role, _) in def.roles() {
            let holders = org
                .people()
                .iter()
                .filter(|p| org.holds_anywhere(p.id().as_str(), role.as_str()))
                .count();
            assert!(holders > 0, "{file}: nobody holds {role}");
        }
    }
}

#[test]
fn planted_faults_in_a_copy_of_the_organisation_are_all_reported_with_locations() {
    let text = std::fs::read_to_string(ORG).unwrap();
    let planted = text
        // A cycle: headquarters under the province.
        .replace(
            "hq:         { name: Headquarters, name_zh: 总部, level: headquarters }",
            "hq:         { name: Headquarters, name_zh: 总部, parent: gd }",
        )
        // A person in an unknown unit.
        .replace(
            "he:    { name: 何静, posts: [{ unit: gz_yuexiu,",
            "he:    { name: 何静, posts: [{ unit: gz_haizhu,",
        )
        // An unknown skill and an unknown role.
        .replace(
            "skills: [fiber_splicing, olt_config], posts",
            "skills: [welding, olt_config], posts",
        )
        .replace("roles: [key_account_manager] }", "roles: [kam] }")
        // A duplicate person.
        .replace("  guo:   {", "  wang:  {");
    assert_ne!(planted, text);
    let dir = std::env::temp_dir().join(format!("procflow-org-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("province.yaml");
    std::fs::write(&file, &planted).unwrap();
    let e = Organisation::from_file(&file).unwrap_err();
    let kinds: Vec<&ProblemKind> = e.kinds();
    assert!(
        kinds
            .iter()
            .any(|k| matches!(k, ProblemKind::UnitCycle(u) if u.contains(&"hq".to_owned()))),
        "{e}"
    );
    assert!(
        kinds.contains(&&ProblemKind::UnknownUnit("gz_haizhu".into())),
        "{e}"
    );
    assert!(
        kinds.contains(&&ProblemKind::UnknownSkill("welding".into())),
        "{e}"
    );
    assert!(
        kinds.contains(&&ProblemKind::UnknownRole("kam".into())),
        "{e}"
    );
    assert!(
        kinds.iter().any(
            |k| matches!(k, ProblemKind::Duplicate { what: "person", id, .. } if id == "wang")
        ),
        "{e}"
    );
    // Each is located: file:line:column, at the line that has the fault.
    let shown = e.to_string();
    let lines: Vec<&str> = planted.lines().collect();
    for (needle, word) in [
        ("unit cycle", "hq:"),
        ("unknown unit 'gz_haizhu'", "gz_haizhu"),
        ("unknown skill 'welding'", "welding"),
        ("unknown role 'kam'", "kam"),
        ("duplicate person id 'wang'", "wang:  {"),
    ] {
        let line = shown
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no '{needle}' in {shown}"));
        let rest = line
            .strip_prefix(&format!("{}:", file.display()))
            .unwrap_or_else(|| panic!("not located in the file: {line}"));
        let mut parts = rest.splitn(3, ':');
        let l: usize = parts.next().unwrap().parse().unwrap();
        let c: usize = parts.next().unwrap().parse().unwrap();
        assert!(c >= 1, "{line}");
        let at = lines[l - 1];
        if word == "wang:  {" {
            // The second `wang`, which is guo's line.
            assert!(at.contains("郭芳"), "{line} points at {at}");
        } else {
            assert!(at.contains(word), "{line} points at {at}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn definitions_are_checked_against_the_organisation() {
    let def = ProcessDef::from_yaml(
        r#"
id: alien
version: 1
name: Alien
roles: { wizard: { name: Wizard }, network_ops: { name: NO } }
nodes:
  start: { kind: start, next: spell }
  spell:
    kind: user_task
    name: Spell
    raci: { responsible: [wizard, network_ops], accountable: network_ops }
    skills: [levitation]
    next: done
  done: { kind: end }
"#,
    )
    .unwrap();
    let e = def.check_organisation(&org()).unwrap_err();
    assert_eq!(
        e.kinds(),
        [
            &ProblemKind::RoleNotInOrganisation("wizard".into()),
            &ProblemKind::UnknownSkill("levitation".into())
        ]
    );
    assert_eq!(e.problems[0].location.unwrap().line, 5);
    assert_eq!(e.problems[1].location.unwrap().line, 12);
    // An engine with the organisation refuses to deploy it.
    let engine = Engine::builder().organisation(org()).build();
    let refused = engine.deploy(def).unwrap_err();
    assert!(matches!(
        refused.problems[..],
        [DeployProblem::Organisation(_)]
    ));
}

#[test]
fn scoped_references_need_a_declared_string_variable_and_up_needs_a_scope() {
    let e = ProcessDef::from_yaml(
        r#"
id: bad
version: 1
name: Bad
roles: { r: { name: R } }
variables: { count: { type: integer } }
nodes:
  start: { kind: start, next: a }
  a:
    kind: user_task
    name: A
    raci: { responsible: [r@nowhere, r@count], accountable: r }
    next: b
  b:
    kind: user_task
    name: B
    raci: { responsible: [r], accountable: r }
    due: 1h
    escalate: [{ after: 1h, action: reassign, to: r@up }]
    allocate: by_lottery
    next: done
  done: { kind: end }
"#,
    )
    .unwrap_err();
    let shown = e.to_string();
    assert!(
        shown.contains("12:") && shown.contains("undeclared variable 'nowhere'"),
        "{shown}"
    );
    assert!(
        shown.contains("scope variable 'count' must be of type string"),
        "{shown}"
    );
    assert!(shown.contains("no role of this task is scoped"), "{shown}");
    assert!(shown.contains("unknown allocation 'by_lottery'"), "{shown}");
    assert_eq!(e.problems.len(), 4, "{shown}");
}

// Scoped roles and escalation one level up

#[test]
fn network_ops_of_the_instances_local_network_may_work_its_task_others_are_denied() {
    let (engine, _) = engine_with(org(), &[SCOPED]);
    let id = engine
        .start("scoped", vars(&[("local_network", json!("gz"))]))
        .unwrap();
    let task = task_at(&engine, id, "repair");
    // xu is network ops of Shenzhen: denied, and the refusal is recorded.
    let before = engine.instance(id).unwrap().audit().len();
    let denied = engine.claim(task, &who("xu"));
    assert!(matches!(denied, Err(ExecError::Denied { ref actor, .. }) if actor.as_str() == "xu"));
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.audit().len(), before + 1);
    assert!(
        matches!(&inst.audit()[before].what, Entry::Denied { actor, action: Action::Claim, .. } if actor.as_str() == "xu")
    );
    // A host passing the role on the actor does not get around the organisation.
    assert!(
        engine
            .claim(task, &Actor::new("xu", ["network_ops"]))
            .is_err()
    );
    // feng holds network_ops in the province, above the scope: not the local network's work.
    assert!(engine.claim(task, &who("feng")).is_err());
    // huang works in a hall below Guangzhou: within the scope.
    engine.claim(task, &who("huang")).unwrap();
    engine.complete(task, &who("huang"), Vars::new()).unwrap();
    assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
}

#[test]
fn an_escalation_to_role_at_up_gives_the_task_to_the_role_in_the_parent_unit() {
    let (engine, clock) = engine_with(org(), &[SCOPED]);
    let id = engine
        .start("scoped", vars(&[("local_network", json!("gz"))]))
        .unwrap();
    let task = task_at(&engine, id, "repair");
    engine.claim(task, &who("chen")).unwrap();
    clock.advance(Duration::hours(5));
    engine.tick(engine.now());
    let inst = engine.instance(id).unwrap();
    assert_eq!(
        inst.tasks()[0].claimed_by(),
        None,
        "the escalation took the claim away"
    );
    // One level up: network ops of the province (gd) or below; Shenzhen's engineers now qualify
    // as well, since they are below the province.
    engine.claim(task, &who("feng")).unwrap();
    engine.complete(task, &who("feng"), Vars::new()).unwrap();
    assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
}

#[test]
fn an_authorizer_sees_the_task_the_instance_and_the_scoped_unit() {
    /// What the authorizer saw: the node, the scoped unit, the scope variable.
    type Sighting = (String, Option<String>, Option<serde_json::Value>);
    struct Seen(Mutex<Vec<Sighting>>);
    impl Authorizer for Seen {
        fn holds(&self, _: &RoleId, _: &Actor) -> bool {
            true
        }
        fn allows(&self, role: &RoleId, actor: &Actor, cx: &AuthContext<'_>) -> bool {
            self.0.lock().unwrap().push((
                cx.node.to_owned(),
                cx.unit.map(str::to_owned),
                cx.vars.get("local_network").cloned(),
            ));
            self.holds(role, actor) && cx.unit != Some("sz")
        }
    }
    let seen = Arc::new(Seen(Mutex::new(Vec::new())));
    let shared = Arc::clone(&seen);
    let engine = Engine::builder()
        .authorizer(move |r: &RoleId, a: &Actor| shared.holds(r, a))
        .build();
    // The closure authorizer keeps working (it sees no context): any actor holds the role.
    engine
        .deploy(ProcessDef::from_yaml(SCOPED).unwrap())
        .unwrap();
    let id = engine
        .start("scoped", vars(&[("local_network", json!("sz"))]))
        .unwrap();
    engine
        .claim(task_at(&engine, id, "repair"), &who("anyone"))
        .unwrap();
    // A trait authorizer sees the context and may use the unit.
    struct Fwd(Arc<Seen>);
    impl Authorizer for Fwd {
        fn holds(&self, r: &RoleId, a: &Actor) -> bool {
            self.0.holds(r, a)
        }
        fn allows(&self, r: &RoleId, a: &Actor, cx: &AuthContext<'_>) -> bool {
            self.0.allows(r, a, cx)
        }
    }
    let engine = Engine::builder().authorizer(Fwd(Arc::clone(&seen))).build();
    engine
        .deploy(ProcessDef::from_yaml(SCOPED).unwrap())
        .unwrap();
    let id = engine
        .start("scoped", vars(&[("local_network", json!("sz"))]))
        .unwrap();
    let task = task_at(&engine, id, "repair");
    assert!(engine.claim(task, &who("anyone")).is_err());
    let seen = seen.0.lock().unwrap();
    assert!(
        seen.contains(&("repair".into(), Some("sz".into()), Some(json!("sz")))),
        "{seen:?}"
    );
}

// Skills

const SKILLED: &str = r#"
id: skilled
version: 1
name: Skilled
roles: { network_ops: { name: NO }, customer_service: { name: CS } }
variables: { local_network: { type: string } }
nodes:
  start: { kind: start, next: splice }
  splice:
    kind: user_task
    name: Splice
    raci: { responsible: [network_ops@local_network], accountable: customer_service }
    skills: [fiber_splicing]
    next: done
  done: { kind: end }
"#;

#[test]
fn only_people_with_the_skills_may_claim_or_complete_and_refusals_are_audited() {
    let (engine, _) = engine_with(org(), &[SKILLED]);
    let id = engine
        .start("skilled", vars(&[("local_network", json!("gz"))]))
        .unwrap();
    let task = task_at(&engine, id, "splice");
    // lin is network ops of Guangzhou but cannot splice fibre.
    let e = engine.claim(task, &who("lin")).unwrap_err();
    assert!(
        matches!(e, ExecError::LacksSkills { ref missing, action: Action::Claim, .. } if missing == &["fiber_splicing"]),
        "{e}"
    );
    let e = engine.complete(task, &who("lin"), Vars::new()).unwrap_err();
    assert!(
        matches!(
            e,
            ExecError::LacksSkills {
                action: Action::Complete,
                ..
            }
        ),
        "{e}"
    );
    let inst = engine.instance(id).unwrap();
    let refused = inst
        .audit()
        .iter()
        .filter(|r| matches!(&r.what, Entry::LacksSkills { actor, .. } if actor.as_str() == "lin"))
        .count();
    assert_eq!(refused, 2);
    // The accountable may not hand it to lin either.
    let e = engine
        .reassign(task, &who("wang"), &who("lin"))
        .unwrap_err();
    assert!(matches!(e, ExecError::ReassignRefused { .. }), "{e}");
    engine.complete(task, &who("chen"), Vars::new()).unwrap();
    assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
}

#[test]
fn without_an_organisation_nobody_has_skills() {
    let engine = Engine::new();
    engine
        .deploy(ProcessDef::from_yaml(SKILLED).unwrap())
        .unwrap();
    let id = engine
        .start("skilled", vars(&[("local_network", json!("gz"))]))
        .unwrap();
    let task = task_at(&engine, id, "splice");
    let e = engine
        .complete(task, &Actor::new("chen", ["network_ops"]), Vars::new())
        .unwrap_err();
    assert!(matches!(e, ExecError::LacksSkills { .. }), "{e}");
}

// Allocation

fn allocating(rule: &str) -> String {
    SKILLED
        .replace("id: skilled", "id: allocating")
        .replace("skills: [fiber_splicing]", &format!("allocate: {rule}"))
}

#[test]
fn round_robin_gives_each_new_task_to_the_next_eligible_person_audited_and_heard() {
    let heard = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&heard);
    let engine = Engine::builder()
        .organisation(org())
        .hook(hook_fn(move |ev: &Event| {
            if let Event::TaskAllocated { actor, .. } = ev {
                sink.lock().unwrap().push(actor.as_str().to_owned());
            }
        }))
        .build();
    engine
        .deploy(ProcessDef::from_yaml(&allocating("round_robin")).unwrap())
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        let id = engine
            .start("allocating", vars(&[("local_network", json!("gz"))]))
            .unwrap();
        let inst = engine.instance(id).unwrap();
        let who = inst.tasks()[0].claimed_by().unwrap().to_owned();
        assert!(
            inst.audit().iter().any(
                |r| matches!(&r.what, Entry::Allocated { actor, .. } if actor.as_str() == who)
            )
        );
        got.push(who);
    }
    // Guangzhou's network ops in file order: chen, lin (gz) and huang (a hall below gz).
    assert_eq!(got, ["chen", "lin", "huang", "chen"]);
    assert_eq!(*heard.lock().unwrap(), got);
    // The allocated person works it; someone else eligible is told it is claimed.
    let id = engine
        .start("allocating", vars(&[("local_network", json!("sz"))]))
        .unwrap();
    let task = task_at(&engine, id, "splice");
    let holder = engine.instance(id).unwrap().tasks()[0]
        .claimed_by()
        .unwrap()
        .to_owned();
    assert_eq!(holder, "xu");
    assert!(matches!(
        engine.claim(task, &who("ye")),
        Err(ExecError::AlreadyClaimed { .. })
    ));
    engine.complete(task, &who("xu"), Vars::new()).unwrap();
}

#[test]
fn shortest_queue_gives_the_task_to_whoever_holds_the_fewest_open_tasks() {
    let (engine, _) = engine_with(org(), &[&allocating("shortest_queue"), SCOPED]);
    // chen already holds two open tasks, lin one.
    for person in ["chen", "chen", "lin"] {
        let id = engine
            .start("scoped", vars(&[("local_network", json!("gz"))]))
            .unwrap();
        engine
            .claim(task_at(&engine, id, "repair"), &who(person))
            .unwrap();
    }
    let id = engine
        .start("allocating", vars(&[("local_network", json!("gz"))]))
        .unwrap();
    assert_eq!(
        engine.instance(id).unwrap().tasks()[0].claimed_by(),
        Some("huang")
    );
    let id = engine
        .start("allocating", vars(&[("local_network", json!("gz"))]))
        .unwrap();
    // huang has one now, as lin: the first in file order of the least loaded.
    assert_eq!(
        engine.instance(id).unwrap().tasks()[0].claimed_by(),
        Some("lin")
    );
}

#[test]
fn nobody_eligible_is_an_incident_naming_the_task_not_an_unassigned_task() {
    let (engine, _) = engine_with(org(), &[&allocating("round_robin")]);
    let e = engine
        .start("allocating", vars(&[("local_network", json!("hz"))]))
        .unwrap_err();
    let ExecError::Incident {
        instance,
        node,
        message,
    } = e
    else {
        panic!("expected an incident, got {e}");
    };
    assert_eq!(&*node.name, "splice");
    assert!(
        message.contains("no eligible person for task 'splice'"),
        "{message}"
    );
    let inst = engine.instance(instance).unwrap();
    assert!(inst.tasks().is_empty(), "no task opened unassigned");
    assert_eq!(inst.incidents().len(), 1);
    assert!(engine.tasks(instance).unwrap().is_empty());
}

// Work lists by index

/// Every open task of `ids` that `person` may claim now, worked out from the organisation
/// directly (the tasks here are scoped to `local_network` for network_ops).
fn scan(
    engine: &Engine,
    org: &Organisation,
    ids: &[procflow::InstanceId],
    person: &str,
) -> Vec<TaskId> {
    let mut scan = Vec::new();
    for id in ids {
        let inst = engine.instance(*id).unwrap();
        let def = engine.definition_of(*id).unwrap();
        for t in engine.tasks(*id).unwrap() {
            let node = def.node(t.node);
            let scope = node.raci().unwrap().scope_of(&RoleId::new("network_ops"));
            let unit = scope
                .and_then(|v| inst.vars().get(v))
                .and_then(|v| v.as_str());
            let role_ok = unit.is_some_and(|u| org.holds_in(person, "network_ops", u));
            let skills_ok = org.has_skills(person, node.skills());
            let claim_ok = t.claimed_by.as_ref().is_none_or(|c| c.as_str() == person);
            if role_ok && skills_ok && claim_ok {
                scan.push(t.id);
            }
        }
    }
    scan.sort();
    scan
}

#[test]
fn indexed_work_lists_hold_what_a_scan_holds() {
    let (engine, clock) = engine_with(org(), &[SCOPED, SKILLED]);
    let mut ids = Vec::new();
    for (i, net) in ["gz", "sz", "gz", "nowhere", "sz", "gz"].iter().enumerate() {
        let def = if i % 2 == 0 { "scoped" } else { "skilled" };
        ids.push(
            engine
                .start(def, vars(&[("local_network", json!(net))]))
                .unwrap(),
        );
        clock.advance(Duration::minutes(1));
    }
    engine
        .claim(task_at(&engine, ids[0], "repair"), &who("lin"))
        .unwrap();
    engine
        .complete(
            task_at(&engine, ids[2], "repair"),
            &who("huang"),
            Vars::new(),
        )
        .unwrap();
    let directory = org();
    let people: Vec<String> = directory
        .people()
        .iter()
        .map(|p| p.id().as_str().to_owned())
        .collect();
    for person in &people {
        let list = engine.work_list(&who(person));
        // The most urgent first: by deadline (none last), then age.
        let order: Vec<_> = list
            .iter()
            .map(|t| (t.due.is_none(), t.due, t.created_at))
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] <= w[1]),
            "{person}: {order:?}"
        );
        let mut listed: Vec<TaskId> = list.iter().map(|t| t.id).collect();
        listed.sort();
        let scan = scan(&engine, &directory, &ids, person);
        assert_eq!(listed, scan, "{person}");
    }
    assert_eq!(
        engine.work_list(&who("chen")).len(),
        1,
        "the sixth: a splice in gz"
    );
    assert_eq!(
        engine.work_list(&who("lin")).len(),
        1,
        "its claim; it cannot splice"
    );
    assert_eq!(
        engine.work_list(&who("xu")).len(),
        2,
        "the two Shenzhen tasks"
    );
}

// The RACI deviations (issue 14)

#[test]
fn deviation_1_a_refused_reassign_is_the_accountables() {
    let (engine, _) = engine_with(org(), &[SCOPED]);
    let id = engine
        .start("scoped", vars(&[("local_network", json!("gz"))]))
        .unwrap();
    let task = task_at(&engine, id, "repair");
    // xu is network ops, but of Shenzhen: wang (accountable) may not give it to him.
    let e = engine.reassign(task, &who("wang"), &who("xu")).unwrap_err();
    assert!(
        matches!(&e, ExecError::ReassignRefused { by, to, .. } if by.as_str() == "wang" && to.as_str() == "xu"),
        "{e}"
    );
    let inst = engine.instance(id).unwrap();
    let last = &inst.audit().last().unwrap().what;
    assert!(
        matches!(last, Entry::ReassignRefused { by, to, .. } if by.as_str() == "wang" && to.as_str() == "xu"),
        "{last:?}"
    );
    assert!(
        !inst
            .audit()
            .iter()
            .any(|r| matches!(&r.what, Entry::Denied { actor, .. } if actor.as_str() == "xu"))
    );
}

#[test]
fn deviation_2_an_escalated_task_can_be_handed_to_a_named_holder_of_the_escalation_role() {
    let def = r#"
id: esc
version: 1
name: Esc
roles: { r: { name: R }, a: { name: A }, lead: { name: Lead } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [r], accountable: a }
    due: 1h
    escalate: [{ after: 1h, action: reassign, to: lead }]
    next: done
  done: { kind: end }
"#;
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = Engine::builder().clock(Arc::clone(&clock)).build();
    engine.deploy(ProcessDef::from_yaml(def).unwrap()).unwrap();
    let id = engine.start("esc", Vars::new()).unwrap();
    let task = task_at(&engine, id, "work");
    clock.advance(Duration::hours(3));
    engine.tick(engine.now());
    let boss = Actor::new("boss", ["a"]);
    let lena = Actor::new("lena", ["lead"]);
    engine.reassign(task, &boss, &lena).unwrap();
    assert_eq!(
        engine.instance(id).unwrap().tasks()[0].claimed_by(),
        Some("lena")
    );
    engine.complete(task, &lena, Vars::new()).unwrap();
    assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
}

#[test]
fn deviation_3_a_claim_without_r_on_a_claimed_task_is_denied_and_audited() {
    let (engine, _) = engine_with(org(), &[SCOPED]);
    let id = engine
        .start("scoped", vars(&[("local_network", json!("gz"))]))
        .unwrap();
    let task = task_at(&engine, id, "repair");
    engine.claim(task, &who("chen")).unwrap();
    let before = engine.instance(id).unwrap().audit().len();
    let e = engine.claim(task, &who("zhou")).unwrap_err();
    assert!(
        matches!(&e, ExecError::Denied { actor, claimed_by: Some(c), .. } if actor.as_str() == "zhou" && c.as_str() == "chen"),
        "{e}"
    );
    let inst = engine.instance(id).unwrap();
    assert_eq!(inst.audit().len(), before + 1);
    // A responsible actor is told it is claimed (nothing to audit but the claim it lost).
    let e = engine.claim(task, &who("lin")).unwrap_err();
    assert!(matches!(e, ExecError::AlreadyClaimed { .. }), "{e}");
}

// The shipped complaint process with the organisation

#[test]
fn the_complaint_scenarios_with_the_organisation_hold() {
    for name in ["round-robin", "local-network", "key-account-manager"] {
        let file = format!("process-defs/scenarios/complaint-handling-org-{name}.yaml");
        let scenario = Scenario::from_file(&file).unwrap();
        let def = ProcessDef::from_file("process-defs/complaint-handling.yaml").unwrap();
        let calendar =
            procflow::BusinessCalendar::from_file("process-defs/calendars/china.yaml").unwrap();
        let report = scenario
            .run_with(def, vec![("china".to_owned(), calendar)])
            .unwrap();
        assert!(report.failures.is_empty(), "{file}: {:?}", report.failures);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever starts, claims, reassigns and completions happened, the indexed work list of
    /// every person holds exactly the tasks a direct check of the organisation gives.
    #[test]
    fn the_index_agrees_with_the_organisation(
        ops in prop::collection::vec((0u8..4, 0usize..6, 0usize..20), 1..30)
    ) {
        let (engine, _) = engine_with(org(), &[SCOPED, SKILLED]);
        let directory = org();
        let people: Vec<String> = directory
            .people()
            .iter()
            .map(|p| p.id().as_str().to_owned())
            .collect();
        let nets = ["gz", "sz", "gz_tianhe", "nowhere"];
        let mut ids = Vec::new();
        for (op, a, b) in ops {
            match op {
                0 => {
                    let def = if a % 2 == 0 { "scoped" } else { "skilled" };
                    ids.push(
                        engine
                            .start(def, vars(&[("local_network", json!(nets[b % nets.len()]))]))
                            .unwrap(),
                    );
                }
                _ if ids.is_empty() => {}
                1..=3 => {
                    let id = ids[a % ids.len()];
                    let Some(t) = engine.tasks(id).unwrap().first().map(|t| t.id) else {
                        continue;
                    };
                    let person = who(&people[b % people.len()]);
                    // Refusals are fine: the index must agree either way.
                    let _ = match op {
                        1 => engine.claim(t, &person),
                        2 => engine.reassign(t, &who("wang"), &person),
                        _ => engine.complete(t, &person, Vars::new()),
                    };
                }
                _ => unreachable!(),
            }
        }
        for person in &people {
            let mut listed: Vec<TaskId> =
                engine.work_list(&who(person)).iter().map(|t| t.id).collect();
            listed.sort();
            prop_assert_eq!(listed, scan(&engine, &directory, &ids, person), "{}", person);
        }
    }
}

#[test]
fn a_removed_instance_leaves_the_index_and_the_queue_counts() {
    let (engine, _) = engine_with(org(), &[SCOPED, &allocating("shortest_queue")]);
    let id = engine
        .start("scoped", vars(&[("local_network", json!("gz"))]))
        .unwrap();
    engine
        .claim(task_at(&engine, id, "repair"), &who("chen"))
        .unwrap();
    assert_eq!(engine.work_list(&who("chen")).len(), 1);
    engine.remove(id).unwrap();
    assert!(engine.work_list(&who("chen")).is_empty());
    // chen's claim no longer counts: the shortest queue starts with chen again.
    let id = engine
        .start("allocating", vars(&[("local_network", json!("gz"))]))
        .unwrap();
    assert_eq!(
        engine.instance(id).unwrap().tasks()[0].claimed_by(),
        Some("chen")
    );
}
