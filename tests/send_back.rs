//! Send back (退回), milestones (WCP 18) and mutex groups (WCP 17, 39, 40) through the public
//! API: what a send back withdraws and reopens, who may do it, what the audit trail, the hooks
//! and the reports see; when a milestone task is enabled; one claimed task per mutex group; and
//! the located load errors of each construct.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use procflow::{
    Action, Actor, Clock, Engine, Entry, Event, ExecError, HeatMetric, Instance, InstanceId,
    ManualClock, NodeId, ProblemKind, ProcessDef, Report, ReportOptions, Status, TaskId, TaskState,
    TimerKind, TokenState, Vars, hook_fn,
};

const REWORK: &str = r#"
id: rework
version: 1
name: Rework
roles:
  clerk: { name: Clerk }
  eng: { name: Engineer }
  billing: { name: Billing }
  lead: { name: Lead }
nodes:
  start: { kind: start, next: intake }
  intake:
    kind: user_task
    name: Intake
    raci: { responsible: [clerk], accountable: lead }
    next: diagnose
  diagnose:
    kind: user_task
    name: Diagnose
    raci: { responsible: [eng], accountable: lead }
    next: fork
  fork: { kind: parallel, next: [repair, bill, cool_down] }
  repair:
    kind: user_task
    name: Repair
    raci: { responsible: [eng], accountable: lead }
    due: 2h
    send_back: [diagnose]
    next: join
  bill:
    kind: user_task
    name: Bill
    raci: { responsible: [billing], accountable: lead }
    next: join
  cool_down: { kind: timer, wait: 1h, next: join }
  join: { kind: parallel, next: close }
  close:
    kind: user_task
    name: Close
    raci: { responsible: [clerk], accountable: lead }
    send_back: [diagnose, intake]
    next: end
  end: { kind: end }
"#;

fn t0() -> DateTime<Utc> {
    "2026-03-02T09:00:00Z".parse().unwrap()
}

fn ann() -> Actor {
    Actor::new("ann", ["clerk"])
}
fn chen() -> Actor {
    Actor::new("chen", ["eng"])
}
fn sun() -> Actor {
    Actor::new("sun", ["eng"])
}
fn bo() -> Actor {
    Actor::new("bo", ["billing"])
}
fn lead() -> Actor {
    Actor::new("lin", ["lead"])
}

struct Rig {
    engine: Engine,
    clock: Arc<ManualClock>,
    events: Arc<Mutex<Vec<Event>>>,
}

fn rig(yaml: &str) -> Rig {
    let clock = Arc::new(ManualClock::new(t0()));
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&events);
    let engine = Engine::builder()
        .clock(Arc::clone(&clock))
        .hook(hook_fn(move |e: &Event| {
            seen.lock().unwrap().push(e.clone())
        }))
        .build();
    engine.deploy(ProcessDef::from_yaml(yaml).unwrap()).unwrap();
    Rig {
        engine,
        clock,
        events,
    }
}

impl Rig {
    fn task(&self, id: InstanceId, node: &str) -> TaskId {
        self.engine
            .tasks(id)
            .unwrap()
            .into_iter()
            .find(|t| &*t.node_id == node)
            .unwrap_or_else(|| panic!("no open task at {node}"))
            .id
    }

    fn open(&self, id: InstanceId) -> Vec<String> {
        let mut open: Vec<String> = self
            .engine
            .tasks(id)
            .unwrap()
            .into_iter()
            .map(|t| t.node_id.to_string())
            .collect();
        open.sort();
        open
    }

    fn node(&self, id: InstanceId, name: &str) -> NodeId {
        self.engine
            .definition_of(id)
            .unwrap()
            .node_id(name)
            .unwrap()
    }

    fn take_events(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }

    /// Starts an instance and runs it to the fork: repair and bill open, the cool-down armed.
    fn to_fork(&self) -> InstanceId {
        let id = self.engine.start("rework", Vars::new()).unwrap();
        self.engine
            .complete(self.task(id, "intake"), &ann(), Vars::new())
            .unwrap();
        self.engine
            .complete(self.task(id, "diagnose"), &chen(), Vars::new())
            .unwrap();
        id
    }
}

/// The instance without its audit trail, to compare states.
fn state(inst: &Instance) -> String {
    inst.encode()
}

#[test]
fn send_back_withdraws_the_work_between_and_reopens_the_target_for_its_performer() {
    let rig = rig(REWORK);
    let id = rig.to_fork();
    assert_eq!(rig.open(id), ["bill", "repair"]);
    // The billing branch arrives at the join; the cool-down timer is still armed.
    rig.engine
        .complete(rig.task(id, "bill"), &bo(), Vars::new())
        .unwrap();
    let repair = rig.task(id, "repair");
    rig.engine.claim(repair, &chen()).unwrap();
    let before = rig.engine.instance(id).unwrap();
    assert!(
        before
            .tokens()
            .iter()
            .any(|t| t.state == TokenState::Joined)
    );
    assert!(
        before
            .timers()
            .iter()
            .any(|t| t.kind == TimerKind::Wait && t.task.is_none())
    );
    rig.take_events();

    rig.engine
        .send_back(repair, &chen(), "diagnose", "wrong part ordered")
        .unwrap();

    let inst = rig.engine.instance(id).unwrap();
    let diagnose = rig.node(id, "diagnose");
    // One token left, waiting at the reopened diagnosis.
    assert_eq!(inst.tokens().len(), 1, "{:?}", inst.tokens());
    assert_eq!(inst.tokens()[0].node, diagnose);
    assert_eq!(inst.tokens()[0].state, TokenState::Waiting);
    // The repair is cancelled, the bill stays completed, the diagnosis reopens claimed by chen.
    let tasks = inst.tasks();
    assert!(matches!(
        tasks[repair.seq() as usize].state(),
        TaskState::Cancelled { .. }
    ));
    assert!(tasks.iter().any(
        |t| rig.engine.definition_of(id).unwrap().node(t.node()).id() == "bill"
            && matches!(t.state(), TaskState::Completed { .. })
    ));
    let reopened = tasks.last().unwrap();
    assert_eq!(reopened.node(), diagnose);
    assert_eq!(reopened.state(), &TaskState::Open);
    assert_eq!(reopened.claimed_by(), Some("chen"));
    assert_eq!(rig.open(id), ["diagnose"]);
    // The repair's deadline and the cool-down are gone.
    assert!(
        inst.timers().iter().all(|t| t.sla),
        "timers left: {:?}",
        inst.timers()
    );
    assert_eq!(inst.status(), Status::Running);

    // The audit trail: the send back, the three withdrawals (repair, cool-down, the billing
    // branch waiting at the join), the reopened task and its claim.
    let added = &inst.audit()[before.audit().len()..];
    let what: Vec<&Entry> = added.iter().map(|r| &r.what).collect();
    assert_eq!(
        what[0],
        &Entry::SentBack(Box::new(procflow::SentBack {
            task: repair.seq(),
            from: rig.node(id, "repair"),
            to: diagnose,
            actor: "chen".into(),
            reason: "wrong part ordered".into(),
        }))
    );
    let withdrawn: Vec<NodeId> = what
        .iter()
        .filter_map(|e| match e {
            Entry::Withdrawn { node, .. } => Some(*node),
            _ => None,
        })
        .collect();
    let mut expected = vec![
        rig.node(id, "repair"),
        rig.node(id, "cool_down"),
        rig.node(id, "join"),
    ];
    let mut got = withdrawn.clone();
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    assert!(what.iter().any(
        |e| matches!(e, Entry::TaskCreated { node, task } if *node == diagnose && *task == reopened.id(id).seq())
    ));
    assert!(
        what.iter()
            .any(|e| matches!(e, Entry::Claimed { actor, .. } if &**actor == "chen"))
    );
    let described =
        inst.audit()[before.audit().len()].describe(&rig.engine.definition_of(id).unwrap());
    assert!(
        described.ends_with("sent back to diagnose by chen: wrong part ordered"),
        "{described}"
    );

    // The hooks hear it.
    let events = rig.take_events();
    assert!(events.iter().any(|e| matches!(e,
        Event::TaskSentBack { task, node, to, actor, reason }
            if *task == repair && &**node == "repair" && &**to == "diagnose"
                && &**actor == "chen" && reason == "wrong part ordered")));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::TaskCancelled { task, .. } if *task == repair))
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::NodeEntered { node, .. } if &**node == "diagnose"))
    );
    let position = |f: &dyn Fn(&Event) -> bool| events.iter().position(f).unwrap();
    assert!(
        position(&|e| matches!(e, Event::TaskSentBack { .. }))
            < position(&|e| matches!(e, Event::TaskCancelled { .. }))
    );
    assert!(
        position(&|e| matches!(e, Event::TaskCreated { .. }))
            < position(&|e| matches!(e, Event::TaskClaimed { .. }))
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::TaskClaimed { node, actor, .. } if &**node == "diagnose" && &**actor == "chen"))
    );

    // The case runs on: diagnosis again, the branches again, then close sends back to intake.
    rig.engine
        .complete(rig.task(id, "diagnose"), &chen(), Vars::new())
        .unwrap();
    assert_eq!(rig.open(id), ["bill", "repair"]);
    rig.engine
        .complete(rig.task(id, "repair"), &chen(), Vars::new())
        .unwrap();
    rig.engine
        .complete(rig.task(id, "bill"), &bo(), Vars::new())
        .unwrap();
    rig.clock.advance(Duration::hours(1));
    rig.engine.tick(rig.clock.now());
    assert_eq!(rig.open(id), ["close"]);
    // The accountable may send back too (here: no one claimed the close).
    rig.engine
        .send_back(rig.task(id, "close"), &lead(), "intake", "wrong customer")
        .unwrap();
    assert_eq!(rig.open(id), ["intake"]);
    let views = rig.engine.tasks(id).unwrap();
    assert_eq!(views[0].claimed_by.as_deref(), Some("ann"));
    // After intake the diagnosis opens as new work (not a send-back target): unclaimed.
    for (node, actor) in [
        ("intake", ann()),
        ("diagnose", sun()),
        ("repair", sun()),
        ("bill", bo()),
    ] {
        rig.engine
            .complete(rig.task(id, node), &actor, Vars::new())
            .unwrap();
    }
    rig.clock.advance(Duration::hours(1));
    rig.engine.tick(rig.clock.now());
    rig.engine
        .complete(rig.task(id, "close"), &ann(), Vars::new())
        .unwrap();
    let inst = rig.engine.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Completed);
    let def = rig.engine.definition_of(id).unwrap();
    assert_eq!(inst.check(&def), Ok(()));

    // Rework per node in the report, and the heatmap by rework rate.
    let report = Report::compute(&[Arc::clone(&def)], &[inst], &ReportOptions::default());
    let diagnose = report.node("rework", "diagnose").unwrap();
    assert_eq!((diagnose.opened, diagnose.reworks), (3, 1));
    let intake = report.node("rework", "intake").unwrap();
    assert_eq!((intake.opened, intake.reworks), (2, 1));
    assert_eq!(report.node("rework", "repair").unwrap().reworks, 0);
    assert_eq!(report.node("rework", "repair").unwrap().cancelled, 1);
    assert!(report.to_table().contains("reworks"));
    let svg = report.heatmap(&def, HeatMetric::ReworkRate);
    assert!(svg.contains("rework rate"), "{svg}");
    assert!(svg.contains("sent back here 1"), "{svg}");
    assert_eq!(
        "rework-rate".parse::<HeatMetric>(),
        Ok(HeatMetric::ReworkRate)
    );
}

#[test]
fn a_send_back_by_an_actor_without_r_or_a_is_denied_audited_and_changes_nothing_else() {
    let rig = rig(REWORK);
    let id = rig.to_fork();
    let repair = rig.task(id, "repair");
    rig.engine.claim(repair, &chen()).unwrap();
    let before = rig.engine.instance(id).unwrap();
    rig.take_events();

    // Billing holds no role on the repair; sun is responsible but chen holds the claim.
    let err = rig
        .engine
        .send_back(repair, &bo(), "diagnose", "not mine")
        .unwrap_err();
    match &err {
        ExecError::Denied {
            action, allowed, ..
        } => {
            assert_eq!(*action, Action::SendBack);
            let allowed: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
            assert_eq!(allowed, ["eng", "lead"]);
        }
        other => panic!("expected Denied, got {other:?}"),
    }
    assert!(err.to_string().contains("may not send back"), "{err}");
    let err = rig
        .engine
        .send_back(repair, &sun(), "diagnose", "not mine")
        .unwrap_err();
    assert!(
        matches!(&err, ExecError::Denied { claimed_by: Some(c), .. } if &**c == "chen"),
        "{err:?}"
    );

    let after = rig.engine.instance(id).unwrap();
    assert_eq!(state(&after), state(&before));
    let added: Vec<&Entry> = after.audit()[before.audit().len()..]
        .iter()
        .map(|r| &r.what)
        .collect();
    assert_eq!(added.len(), 2);
    assert!(added.iter().all(|e| matches!(
        e,
        Entry::Denied {
            action: Action::SendBack,
            ..
        }
    )));
    let events = rig.take_events();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| matches!(e, Event::AccessDenied { .. }))
    );
}

#[test]
fn a_target_the_task_does_not_name_is_a_typed_error_that_changes_nothing() {
    let rig = rig(REWORK);
    let id = rig.to_fork();
    let before = rig.engine.instance(id).unwrap();
    let repair = rig.task(id, "repair");
    let err = rig
        .engine
        .send_back(repair, &chen(), "intake", "x")
        .unwrap_err();
    match &err {
        ExecError::NotSendBackTarget {
            task,
            node,
            to,
            allowed,
        } => {
            assert_eq!(*task, repair);
            assert_eq!(&*node.name, "repair");
            assert_eq!(to, "intake");
            assert_eq!(allowed, &["diagnose".to_owned()]);
        }
        other => panic!("expected NotSendBackTarget, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!("task {repair} at 'repair' cannot be sent back to 'intake'; allowed: diagnose")
    );
    // A task without send_back targets.
    let err = rig
        .engine
        .send_back(rig.task(id, "bill"), &bo(), "diagnose", "x")
        .unwrap_err();
    assert!(
        err.to_string().ends_with("it names no send_back targets"),
        "{err}"
    );
    let after = rig.engine.instance(id).unwrap();
    assert_eq!(state(&after), state(&before));
    assert_eq!(after.audit().len(), before.audit().len());
}

const MILESTONE: &str = r#"
id: milestone
version: 1
name: Milestone
roles: { clerk: { name: Clerk }, eng: { name: Engineer }, lead: { name: Lead } }
nodes:
  start: { kind: start, next: fork }
  fork: { kind: parallel, next: [prepare, notice] }
  prepare:
    kind: user_task
    name: Prepare
    raci: { responsible: [eng], accountable: lead }
    next: install
  install:
    kind: user_task
    name: Install
    raci: { responsible: [eng], accountable: lead }
    next: join
  notice:
    kind: user_task
    name: Status notice
    raci: { responsible: [clerk], accountable: lead }
    while_at: [install]
    next: join
  join: { kind: parallel, next: close }
  close:
    kind: user_task
    name: Close
    raci: { responsible: [clerk], accountable: lead }
    next: end
  end: { kind: end }
"#;

#[test]
fn a_milestone_task_runs_only_while_the_milestone_is_held_and_is_skipped_once_it_passed() {
    let rig = rig(MILESTONE);
    let id = rig.engine.start("milestone", Vars::new()).unwrap();
    assert_eq!(rig.open(id), ["notice", "prepare"]);
    let notice = rig.task(id, "notice");
    let before = rig.engine.instance(id).unwrap();

    // Not yet: the installation has not begun. Open, but disabled and off the work list.
    let err = rig.engine.claim(notice, &ann()).unwrap_err();
    match &err {
        ExecError::NotEnabled {
            task,
            node,
            milestones,
        } => {
            assert_eq!(*task, notice);
            assert_eq!(&*node.name, "notice");
            assert_eq!(milestones, &["install".to_owned()]);
        }
        other => panic!("expected NotEnabled, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!("task {notice} at 'notice' is not enabled: no token is at its milestone install")
    );
    assert!(matches!(
        rig.engine.complete(notice, &ann(), Vars::new()),
        Err(ExecError::NotEnabled { .. })
    ));
    assert!(rig.engine.work_list(&ann()).is_empty());
    let after = rig.engine.instance(id).unwrap();
    assert_eq!(state(&after), state(&before));
    assert_eq!(after.audit().len(), before.audit().len());

    // The installation is under way: enabled.
    rig.engine
        .complete(rig.task(id, "prepare"), &chen(), Vars::new())
        .unwrap();
    assert_eq!(rig.engine.work_list(&ann()).len(), 1);
    rig.engine.claim(notice, &ann()).unwrap();
    rig.engine.complete(notice, &ann(), Vars::new()).unwrap();
    rig.engine
        .complete(rig.task(id, "install"), &chen(), Vars::new())
        .unwrap();
    assert_eq!(rig.open(id), ["close"]);

    // Another case: the installation finishes first, so the notice's milestone passed for good.
    let id = rig.engine.start("milestone", Vars::new()).unwrap();
    let notice = rig.task(id, "notice");
    rig.engine
        .complete(rig.task(id, "prepare"), &chen(), Vars::new())
        .unwrap();
    rig.take_events();
    rig.engine
        .complete(rig.task(id, "install"), &chen(), Vars::new())
        .unwrap();
    assert_eq!(rig.open(id), ["close"]);
    let inst = rig.engine.instance(id).unwrap();
    assert!(matches!(
        inst.tasks()[notice.seq() as usize].state(),
        TaskState::Cancelled { .. }
    ));
    assert!(inst.audit().iter().any(|r| matches!(
        r.what,
        Entry::Withdrawn { task: Some(t), .. } if t == notice.seq()
    )));
    assert!(
        rig.take_events()
            .iter()
            .any(|e| matches!(e, Event::TaskCancelled { task, .. } if *task == notice))
    );
    assert!(matches!(
        rig.engine.claim(notice, &ann()),
        Err(ExecError::TaskClosed { .. })
    ));
    rig.engine
        .complete(rig.task(id, "close"), &ann(), Vars::new())
        .unwrap();
    assert_eq!(rig.engine.instance(id).unwrap().status(), Status::Completed);
}

const MUTEX: &str = r#"
id: mutex
version: 1
name: Mutex
roles: { clerk: { name: Clerk }, eng: { name: Engineer }, lead: { name: Lead } }
nodes:
  start: { kind: start, next: fork }
  fork: { kind: parallel, next: [call, visit, paperwork] }
  call:
    kind: user_task
    name: Call the customer
    raci: { responsible: [clerk], accountable: lead }
    mutex: customer_contact
    next: join
  visit:
    kind: user_task
    name: Visit the customer
    raci: { responsible: [eng], accountable: lead }
    mutex: customer_contact
    next: join
  paperwork:
    kind: user_task
    name: Paperwork
    raci: { responsible: [clerk], accountable: lead }
    next: join
  join: { kind: parallel, next: end }
  end: { kind: end }
"#;

#[test]
fn a_mutex_group_has_one_claimed_task_at_a_time() {
    let rig = rig(MUTEX);
    let id = rig.engine.start("mutex", Vars::new()).unwrap();
    let (call, visit, paperwork) = (
        rig.task(id, "call"),
        rig.task(id, "visit"),
        rig.task(id, "paperwork"),
    );
    rig.engine.claim(visit, &chen()).unwrap();
    // Claiming again by the holder is fine; other groups are unaffected.
    rig.engine.claim(visit, &chen()).unwrap();
    rig.engine.claim(paperwork, &ann()).unwrap();
    let before = rig.engine.instance(id).unwrap();

    let err = rig.engine.claim(call, &ann()).unwrap_err();
    match &err {
        ExecError::Interleaved {
            task,
            node,
            group,
            holder_task,
            holder,
        } => {
            assert_eq!(*task, call);
            assert_eq!(&*node.name, "call");
            assert_eq!(group, "customer_contact");
            assert_eq!(*holder_task, visit);
            assert_eq!(&**holder, "chen");
        }
        other => panic!("expected Interleaved, got {other:?}"),
    }
    assert!(err.to_string().contains("mutex group 'customer_contact'"));
    // Completing unclaimed claims on the way; a reassignment gives it to someone: both refused.
    assert!(matches!(
        rig.engine.complete(call, &ann(), Vars::new()),
        Err(ExecError::Interleaved { .. })
    ));
    assert!(matches!(
        rig.engine.complete(call, &lead(), Vars::new()),
        Err(ExecError::Interleaved { .. })
    ));
    assert!(matches!(
        rig.engine.reassign(call, &lead(), &ann()),
        Err(ExecError::Interleaved { .. })
    ));
    let after = rig.engine.instance(id).unwrap();
    assert_eq!(state(&after), state(&before));
    assert_eq!(after.audit().len(), before.audit().len());

    // A restored state with two claimed tasks of one group is refused.
    let def = rig.engine.definition_of(id).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&after.encode()).unwrap();
    json["tasks"][call.seq() as usize]["claimed_by"] = "ann".into();
    let damaged = Instance::decode(&json.to_string(), Vec::new()).unwrap();
    let problem = damaged.check(&def).unwrap_err();
    assert!(
        problem.contains("mutex group 'customer_contact'"),
        "{problem}"
    );
    assert_eq!(after.check(&def), Ok(()));

    // Once the visit is done, the call may go ahead.
    rig.engine.complete(visit, &chen(), Vars::new()).unwrap();
    rig.engine.claim(call, &ann()).unwrap();
    rig.engine.complete(call, &ann(), Vars::new()).unwrap();
    rig.engine.complete(paperwork, &ann(), Vars::new()).unwrap();
    assert_eq!(rig.engine.instance(id).unwrap().status(), Status::Completed);
}

#[test]
fn misused_constructs_are_located_load_errors_all_at_once() {
    let yaml = r#"
id: bad
version: 1
name: Bad
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
nodes:
  start: { kind: start, next: first }
  first:
    kind: user_task
    name: First
    raci: { responsible: [clerk], accountable: lead }
    send_back: [later, first]
    next: fork
  fork: { kind: parallel, next: [left, right] }
  left:
    kind: user_task
    name: Left
    raci: { responsible: [clerk], accountable: lead }
    next: join
  right:
    kind: service_task
    name: Right
    handler: right
    send_back: [first]
    next: join
  join: { kind: parallel, next: later }
  later:
    kind: user_task
    name: Later
    raci: { responsible: [clerk], accountable: lead }
    send_back: [left, fork, nowhere, first]
    while_at: [ghost, start, later, left]
    mutex: Not An Id
    next: end
  end: { kind: end }
"#;
    let err = ProcessDef::from_yaml(yaml).unwrap_err();
    let text = err.to_string();
    let found: Vec<(u32, &str, &ProblemKind)> = err
        .problems
        .iter()
        .map(|p| (p.location.unwrap().line, p.path.as_str(), &p.kind))
        .collect();
    let bad = |target: &str| {
        found
            .iter()
            .find(
                |(_, _, k)| matches!(k, ProblemKind::BadSendBack { target: t, .. } if t == target),
            )
            .unwrap_or_else(|| panic!("no BadSendBack for {target}: {text}"))
    };
    // first: 'later' is not earlier; a task cannot send back to itself.
    assert_eq!(bad("later").0, 12);
    assert_eq!(bad("later").1, "nodes.first.send_back");
    assert!(text.contains("cannot send back to 'later': it is not an earlier task"));
    assert!(text.contains("cannot send back to 'first': it is this task itself"));
    // later: 'left' is inside a branch of the fork joined on the way; 'fork' is no user task.
    assert!(
        text.contains("parallel join 'join' between them also waits for branches"),
        "{text}"
    );
    assert!(text.contains("cannot send back to 'fork': it is a parallel node, not a user task"));
    assert!(found.iter().any(|(line, path, k)| *line == 31
        && *path == "nodes.later.send_back"
        && matches!(k, ProblemKind::UnknownNode(n) if n == "nowhere")));
    // A service task takes no send_back.
    assert!(found.iter().any(|(line, path, k)| *line == 24
        && *path == "nodes.right.send_back"
        && matches!(
            k,
            ProblemKind::KeyNotAllowed {
                key: "send_back",
                kind: "service_task"
            }
        )));
    // Milestones: unknown, a node where no token waits, the task itself.
    assert!(found.iter().any(|(line, path, k)| *line == 32
        && *path == "nodes.later.while_at"
        && matches!(k, ProblemKind::UnknownNode(n) if n == "ghost")));
    assert!(
        text.contains("'start' cannot be a milestone: no token waits at a start node"),
        "{text}"
    );
    assert!(text.contains("'later' cannot be a milestone: it is this task itself"));
    assert!(
        text.contains("'left' cannot be a milestone: it comes before this task"),
        "{text}"
    );
    assert!(found.iter().any(|(line, path, k)| *line == 33
        && *path == "nodes.later.mutex"
        && matches!(k, ProblemKind::InvalidId(_))));
    // 'first' from 'later' is fine: the join's branches all pass through it.
    assert!(!found.iter().any(|(line, _, k)| *line == 31
        && matches!(k, ProblemKind::BadSendBack { target, .. } if target == "first")));
    assert_eq!(found.len(), 11, "{text}");
}

#[test]
fn the_graph_draws_send_back_and_milestone_links() {
    let def = ProcessDef::from_yaml(REWORK).unwrap();
    assert_eq!(def.node(def.node_id("close").unwrap()).send_back().len(), 2);
    let mermaid = def.to_mermaid();
    assert!(
        mermaid.contains("n_close -.->|\"send back\"| n_intake"),
        "{mermaid}"
    );
    let dot = ProcessDef::from_yaml(MILESTONE).unwrap().to_dot();
    assert!(
        dot.contains("\"install\" -> \"notice\" [label=\"while at\""),
        "{dot}"
    );
    let def = ProcessDef::from_yaml(MUTEX).unwrap();
    assert_eq!(
        def.node(def.node_id("call").unwrap()).mutex(),
        Some("customer_contact")
    );
    assert!(def.to_mermaid().contains("[mutex: customer_contact]"));
}

/// One action of a generated run: complete the `k`-th open task, send it back to its `t`-th
/// target, or let an hour pass.
#[derive(Clone, Debug)]
enum Op {
    Complete(usize),
    SendBack(usize, usize),
    Hour,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        (0..4usize).prop_map(Op::Complete),
        (0..4usize, 0..2usize).prop_map(|(k, t)| Op::SendBack(k, t)),
        Just(Op::Hour),
    ]
}

/// Every open task has exactly one token waiting at its node, and the state checks.
fn consistent(rig: &Rig, id: InstanceId) -> Result<(), String> {
    let inst = rig.engine.instance(id).map_err(|e| e.to_string())?;
    let def = rig.engine.definition_of(id).map_err(|e| e.to_string())?;
    inst.check(&def)?;
    for task in inst
        .tasks()
        .iter()
        .filter(|t| t.state() == &TaskState::Open)
    {
        let waiting = inst
            .tokens()
            .iter()
            .filter(|t| t.node == task.node() && t.state == TokenState::Waiting)
            .count();
        if waiting != 1 {
            return Err(format!("{waiting} tokens wait at open task {:?}", task));
        }
    }
    Ok(())
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(64))]

    /// Whatever is completed or sent back in whatever order, the state stays consistent, the
    /// case can always be finished, and the report counts each send back once, at its target.
    #[test]
    fn send_backs_in_any_order_keep_the_instance_sound(ops in proptest::collection::vec(op(), 0..24)) {
        let rig = rig(REWORK);
        let id = rig.engine.start("rework", Vars::new()).unwrap();
        let def = rig.engine.definition_of(id).unwrap();
        let mut sent: std::collections::HashMap<String, usize> = Default::default();
        for op in ops {
            let open = rig.engine.tasks(id).unwrap();
            match op {
                Op::Complete(k) if !open.is_empty() => {
                    let t = &open[k % open.len()];
                    rig.engine.complete(t.id, &lead(), Vars::new()).unwrap();
                }
                Op::SendBack(k, n) if !open.is_empty() => {
                    let t = &open[k % open.len()];
                    let targets = def.node(t.node).send_back();
                    if targets.is_empty() {
                        let refused = rig.engine.send_back(t.id, &lead(), "intake", "x");
                        proptest::prop_assert!(
                            matches!(refused, Err(ExecError::NotSendBackTarget { .. })),
                            "{refused:?}"
                        );
                    } else {
                        let to = def.node(targets[n % targets.len()]).id().to_owned();
                        rig.engine.send_back(t.id, &lead(), &to, "again").unwrap();
                        *sent.entry(to).or_default() += 1;
                    }
                }
                _ => {
                    rig.clock.advance(Duration::hours(1));
                    rig.engine.tick(rig.clock.now());
                }
            }
            consistent(&rig, id).map_err(proptest::test_runner::TestCaseError::fail)?;
        }
        // Finish the case.
        for _ in 0..20 {
            if rig.engine.instance(id).unwrap().status() == Status::Completed {
                break;
            }
            for t in rig.engine.tasks(id).unwrap() {
                rig.engine.complete(t.id, &lead(), Vars::new()).unwrap();
            }
            rig.clock.advance(Duration::hours(1));
            rig.engine.tick(rig.clock.now());
            consistent(&rig, id).map_err(proptest::test_runner::TestCaseError::fail)?;
        }
        let inst = rig.engine.instance(id).unwrap();
        proptest::prop_assert_eq!(inst.status(), Status::Completed);
        let report = Report::compute(&[Arc::clone(&def)], &[inst], &ReportOptions::default());
        for node in ["intake", "diagnose", "repair", "bill", "close"] {
            proptest::prop_assert_eq!(
                report.node("rework", node).unwrap().reworks,
                sent.get(node).copied().unwrap_or(0),
                "{}", node
            );
        }
    }
}

#[test]
fn a_send_back_inside_one_branch_keeps_the_other_branch_waiting_at_the_join() {
    let rig = rig(r#"
id: branch
version: 1
name: Branch
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
nodes:
  start: { kind: start, next: fork }
  fork: { kind: parallel, next: [draft, check] }
  draft: { kind: user_task, name: Draft, raci: { responsible: [clerk], accountable: lead }, next: review }
  review:
    kind: user_task
    name: Review
    raci: { responsible: [clerk], accountable: lead }
    send_back: [draft]
    next: join
  check: { kind: user_task, name: Check, raci: { responsible: [clerk], accountable: lead }, next: join }
  join: { kind: parallel, next: end }
  end: { kind: end }
"#);
    let id = rig.engine.start("branch", Vars::new()).unwrap();
    rig.engine
        .complete(rig.task(id, "check"), &ann(), Vars::new())
        .unwrap();
    rig.engine
        .complete(rig.task(id, "draft"), &ann(), Vars::new())
        .unwrap();
    rig.engine
        .send_back(rig.task(id, "review"), &ann(), "draft", "typos")
        .unwrap();
    let inst = rig.engine.instance(id).unwrap();
    // The check's arrival at the join stays: only the draft branch runs again.
    assert!(
        inst.tokens()
            .iter()
            .any(|t| t.node == rig.node(id, "join") && t.state == TokenState::Joined)
    );
    assert_eq!(rig.open(id), ["draft"]);
    rig.engine
        .complete(rig.task(id, "draft"), &ann(), Vars::new())
        .unwrap();
    rig.engine
        .complete(rig.task(id, "review"), &ann(), Vars::new())
        .unwrap();
    assert_eq!(rig.engine.instance(id).unwrap().status(), Status::Completed);
}

#[test]
fn a_send_back_survives_a_restart_on_a_store() {
    let store = procflow::MemoryStore::new();
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = Engine::builder()
        .clock(Arc::clone(&clock))
        .open(store.clone())
        .unwrap();
    engine
        .deploy(ProcessDef::from_yaml(REWORK).unwrap())
        .unwrap();
    let id = engine.start("rework", Vars::new()).unwrap();
    let task = |engine: &Engine, node: &str| {
        engine
            .tasks(id)
            .unwrap()
            .into_iter()
            .find(|t| &*t.node_id == node)
            .unwrap()
            .id
    };
    engine
        .complete(task(&engine, "intake"), &ann(), Vars::new())
        .unwrap();
    engine
        .complete(task(&engine, "diagnose"), &chen(), Vars::new())
        .unwrap();
    engine
        .send_back(task(&engine, "repair"), &chen(), "diagnose", "wrong part")
        .unwrap();
    let before = engine.instance(id).unwrap();
    drop(engine);

    let engine = Engine::builder()
        .clock(Arc::clone(&clock))
        .open(store)
        .unwrap();
    let after = engine.instance(id).unwrap();
    assert_eq!(after, before);
    assert!(
        after
            .audit()
            .iter()
            .any(|r| matches!(&r.what, Entry::SentBack(s) if &*s.reason == "wrong part"))
    );
    let views = engine.tasks(id).unwrap();
    assert_eq!(views.len(), 1);
    assert_eq!(
        (&*views[0].node_id, views[0].claimed_by.as_deref()),
        ("diagnose", Some("chen"))
    );
    engine.complete(views[0].id, &chen(), Vars::new()).unwrap();
    assert_eq!(
        {
            let mut open: Vec<String> = engine
                .tasks(id)
                .unwrap()
                .into_iter()
                .map(|t| t.node_id.to_string())
                .collect();
            open.sort();
            open
        },
        ["bill", "repair"]
    );
}
