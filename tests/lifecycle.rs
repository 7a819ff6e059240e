//! Issue 14, item 3: the work-item lifecycle (release, delegate and return, suspend and
//! resume, skip), priority and filtered work lists, through the public API.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use procflow::{
    Actor, BusinessCalendar, Call, Clock, Engine, Entry, ExecError, InstanceId, ManualClock,
    ProcessDef, Status, TaskId, TimerKind, Vars, WorkOrder, WorkQuery,
};
use serde_json::json;

const DEF: &str = r#"
id: life
version: 1
name: Lifecycle
accountable: lead
roles: { agent: { name: Agent }, lead: { name: Lead }, other: { name: Other } }
variables:
  priority: { type: string, enum: [low, medium, high, urgent], default: medium }
  region: { type: string }
sla: { due: 24h, accountable: lead }
nodes:
  start: { kind: start, next: handle }
  handle:
    kind: user_task
    name: Handle
    raci: { responsible: [agent], accountable: lead }
    due: 4h
    priority_due: [{ at_least: 4, due: 1h }]
    next: check
  check:
    kind: user_task
    name: Check
    raci: { responsible: [agent], accountable: lead }
    next: end
  end: { kind: end }
"#;

fn t0() -> DateTime<Utc> {
    "2026-03-02T01:00:00Z".parse().unwrap()
}

fn ann() -> Actor {
    Actor::new("ann", ["agent"])
}
fn amy() -> Actor {
    Actor::new("amy", ["agent"])
}
fn oli() -> Actor {
    Actor::new("oli", ["other"])
}
fn lee() -> Actor {
    Actor::new("lee", ["lead"])
}

fn engine() -> (Engine, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = Engine::builder().clock(Arc::clone(&clock)).build();
    engine.deploy(ProcessDef::from_yaml(DEF).unwrap()).unwrap();
    (engine, clock)
}

fn first(engine: &Engine, id: InstanceId) -> TaskId {
    engine.tasks(id).unwrap()[0].id
}

fn due_of(engine: &Engine, task: TaskId) -> Option<DateTime<Utc>> {
    engine
        .instance(task.instance())
        .unwrap()
        .timers()
        .iter()
        .find(|t| t.task == Some(task.seq()) && t.kind == TimerKind::Due)
        .map(|t| t.at)
}

fn refused(engine: &Engine, id: InstanceId) -> Vec<procflow::Refusal> {
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

#[test]
fn release_puts_a_claimed_task_back_in_the_work_lists() {
    let (engine, _) = engine();
    let id = engine.start("life", Vars::new()).unwrap();
    let task = first(&engine, id);
    engine.claim(task, &ann()).unwrap();
    assert!(engine.work_list(&amy()).is_empty());
    // Only the claimant may release it.
    let err = engine.release(task, &amy()).unwrap_err();
    assert!(
        matches!(
            err,
            ExecError::Refused {
                call: Call::Release,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(refused(&engine, id)[0].actor.as_str(), "amy");
    engine.release(task, &ann()).unwrap();
    assert_eq!(engine.tasks(id).unwrap()[0].claimed_by, None);
    assert_eq!(engine.work_list(&amy()).len(), 1);
    assert!(matches!(
        engine.release(task, &ann()),
        Err(ExecError::NotClaimed { .. })
    ));
    assert!(
        engine
            .instance(id)
            .unwrap()
            .audit()
            .iter()
            .any(|r| matches!(&r.what, Entry::Released { actor, .. } if actor.as_str() == "ann"))
    );
    engine.complete(task, &amy(), Vars::new()).unwrap();
}

#[test]
fn delegation_to_an_eligible_person_who_completes_or_returns() {
    let (engine, _) = engine();
    let id = engine.start("life", Vars::new()).unwrap();
    let task = first(&engine, id);
    engine.claim(task, &ann()).unwrap();
    // To someone without a responsible role: refused, audited as the delegator's attempt.
    let err = engine.delegate(task, &ann(), &oli()).unwrap_err();
    assert!(
        matches!(
            err,
            ExecError::Refused {
                call: Call::Delegate,
                ..
            }
        ),
        "{err}"
    );
    let r = refused(&engine, id);
    assert_eq!(r[0].actor.as_str(), "ann");
    assert!(r[0].reason.contains("oli"));
    // Someone who neither holds the claim nor is accountable may not delegate.
    assert!(engine.delegate(task, &amy(), &amy()).is_err());
    engine.delegate(task, &ann(), &amy()).unwrap();
    let view = engine.tasks(id).unwrap().remove(0);
    assert_eq!(view.claimed_by.as_ref().map(|a| a.as_str()), Some("amy"));
    assert_eq!(view.delegated_by.as_ref().map(|a| a.as_str()), Some("ann"));
    assert_eq!(engine.work_list(&amy()).len(), 1);
    // The delegator no longer holds the claim.
    assert!(engine.complete(task, &ann(), Vars::new()).is_err());
    // Only the delegate returns it; the claim goes back.
    assert!(engine.return_task(task, &ann()).is_err());
    engine.return_task(task, &amy()).unwrap();
    let view = engine.tasks(id).unwrap().remove(0);
    assert_eq!(view.claimed_by.as_ref().map(|a| a.as_str()), Some("ann"));
    assert_eq!(view.delegated_by, None);
    assert!(matches!(
        engine.return_task(task, &amy()),
        Err(ExecError::NotDelegated { .. })
    ));
    // The accountable delegates; the delegate completes.
    engine.delegate(task, &lee(), &amy()).unwrap();
    engine.complete(task, &amy(), Vars::new()).unwrap();
    let inst = engine.instance(id).unwrap();
    assert!(inst.audit().iter().any(|r| matches!(
        &r.what,
        Entry::Delegated { by, to, .. } if by.as_str() == "lee" && to.as_str() == "amy"
    )));
    assert!(inst.delegated_by(task.seq()).is_none());
}

#[test]
fn a_suspended_deadline_falls_due_later_by_the_suspended_time() {
    let (engine, clock) = engine();
    let id = engine.start("life", Vars::new()).unwrap();
    let task = first(&engine, id);
    assert_eq!(due_of(&engine, task), Some(t0() + Duration::hours(4)));
    clock.advance(Duration::hours(1));
    // Only the accountable may suspend.
    assert!(matches!(
        engine.suspend(task, &ann()),
        Err(ExecError::Refused {
            call: Call::Suspend,
            ..
        })
    ));
    engine.suspend(task, &lee()).unwrap();
    assert!(matches!(
        engine.suspend(task, &lee()),
        Err(ExecError::Suspended { .. })
    ));
    // Suspended: no claim, no completion, not in the work lists, no deadline firing.
    assert!(matches!(
        engine.claim(task, &ann()),
        Err(ExecError::Suspended { .. })
    ));
    assert!(matches!(
        engine.complete(task, &ann(), Vars::new()),
        Err(ExecError::Suspended { .. })
    ));
    assert!(engine.work_list(&ann()).is_empty());
    assert!(engine.tasks(id).unwrap()[0].suspended);
    clock.advance(Duration::hours(4));
    let fired = engine.tick(clock.now());
    assert!(fired.iter().all(|f| f.task != Some(task)), "{fired:?}");
    // Resumed after 4 hours: the deadline moves by 4 hours.
    engine.resume(task, &lee()).unwrap();
    assert_eq!(due_of(&engine, task), Some(t0() + Duration::hours(8)));
    assert!(matches!(
        engine.resume(task, &lee()),
        Err(ExecError::NotSuspended { .. })
    ));
    engine.claim(task, &ann()).unwrap();
    let audit = engine.instance(id).unwrap().audit().to_vec();
    assert!(
        audit
            .iter()
            .any(|r| matches!(r.what, Entry::Suspended { task: Some(_), .. }))
    );
    assert!(
        audit
            .iter()
            .any(|r| matches!(r.what, Entry::Resumed { task: Some(_), .. }))
    );
}

#[test]
fn a_business_deadline_moves_by_the_suspended_business_time() {
    let clock = Arc::new(ManualClock::new(t0()));
    let mut b = Engine::builder();
    b.clock(Arc::clone(&clock)).calendar(
        "china",
        BusinessCalendar::from_file("process-defs/calendars/china.yaml").unwrap(),
    );
    let engine = b.build();
    let def = DEF
        .replace("sla: { due: 24h, accountable: lead }", "calendar: china")
        .replace("due: 4h\n", "due: 4h business\n");
    engine.deploy(ProcessDef::from_yaml(&def).unwrap()).unwrap();
    // Monday 2 March 2026, 09:00 in Shanghai: 4 business hours are due at 14:00 (lunch).
    let id = engine.start("life", Vars::new()).unwrap();
    let task = first(&engine, id);
    let local = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
    assert_eq!(due_of(&engine, task), Some(local("2026-03-02T06:00:00Z")));
    // Suspended at 10:00 with 3 business hours left, resumed at 16:00: due Tuesday 10:00.
    clock.advance(Duration::hours(1));
    engine.suspend(task, &lee()).unwrap();
    clock.advance(Duration::hours(6));
    engine.resume(task, &lee()).unwrap();
    assert_eq!(due_of(&engine, task), Some(local("2026-03-03T02:00:00Z")));
}

#[test]
fn suspending_an_instance_pauses_its_sla_and_all_its_tasks() {
    let (engine, clock) = engine();
    let id = engine.start("life", Vars::new()).unwrap();
    let task = first(&engine, id);
    let sla = engine.sla_of_instance(id).unwrap().unwrap().due;
    assert!(matches!(
        engine.suspend(id, &ann()),
        Err(ExecError::Refused {
            call: Call::Suspend,
            ..
        })
    ));
    engine.suspend(id, &lee()).unwrap();
    assert!(engine.instance(id).unwrap().instance_suspended());
    assert!(matches!(
        engine.complete(task, &ann(), Vars::new()),
        Err(ExecError::Suspended { .. })
    ));
    // A task suspended with its instance resumes with it.
    assert!(matches!(
        engine.resume(task, &lee()),
        Err(ExecError::NotSuspended { .. })
    ));
    clock.advance(Duration::hours(30));
    assert!(engine.tick(clock.now()).is_empty());
    engine.resume(id, &lee()).unwrap();
    assert_eq!(
        engine.sla_of_instance(id).unwrap().unwrap().due,
        sla + Duration::hours(30)
    );
    assert_eq!(due_of(&engine, task), Some(t0() + Duration::hours(34)));
    engine.complete(task, &ann(), Vars::new()).unwrap();
}

#[test]
fn skip_is_the_accountables_override() {
    let (engine, _) = engine();
    let id = engine.start("life", Vars::new()).unwrap();
    let task = first(&engine, id);
    assert!(matches!(
        engine.skip(task, &ann(), "not needed"),
        Err(ExecError::Refused {
            call: Call::Skip,
            ..
        })
    ));
    engine.skip(task, &lee(), "duplicate ticket").unwrap();
    let inst = engine.instance(id).unwrap();
    let skipped = inst
        .audit()
        .iter()
        .position(
            |r| matches!(&r.what, Entry::Skipped { reason, .. } if &**reason == "duplicate ticket"),
        )
        .unwrap();
    assert!(matches!(
        inst.audit()[skipped + 1].what,
        Entry::Completed {
            overridden: true,
            ..
        }
    ));
    let check = first(&engine, id);
    engine.skip(check, &lee(), "done by phone").unwrap();
    assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
}

#[test]
fn priority_orders_work_lists_and_shortens_deadlines() {
    let (engine, clock) = engine();
    let start = |p: &str, region: &str| {
        let mut v = Vars::new();
        v.insert("priority".into(), json!(p));
        v.insert("region".into(), json!(region));
        let id = engine.start("life", v).unwrap();
        clock.advance(Duration::minutes(1));
        id
    };
    let low = start("low", "b");
    let urgent = start("urgent", "c");
    let high = start("high", "a");
    // An urgent task is due in 1 hour, the others in 4.
    let due =
        |id| due_of(&engine, first(&engine, id)).unwrap() - engine.tasks(id).unwrap()[0].created_at;
    assert_eq!(due(urgent), Duration::hours(1));
    assert_eq!(due(low), Duration::hours(4));
    let order = |q: &WorkQuery| -> Vec<InstanceId> {
        engine
            .work_list_by(&ann(), q)
            .into_iter()
            .map(|t| t.id.instance())
            .collect()
    };
    assert_eq!(
        order(&WorkQuery::new().order(WorkOrder::Priority)),
        [urgent, high, low]
    );
    assert_eq!(order(&WorkQuery::new()), [urgent, low, high]);
    assert_eq!(
        order(&WorkQuery::new().order(WorkOrder::Var("region".into()))),
        [high, low, urgent]
    );
    assert_eq!(order(&WorkQuery::new().min_priority(3)), [urgent, high]);
    assert!(order(&WorkQuery::new().process("other")).is_empty());
    assert_eq!(order(&WorkQuery::new().node("handle")).len(), 3);
    assert_eq!(engine.tasks(low).unwrap()[0].priority, Some(1));
    // The plain work list is unchanged: by deadline.
    let plain: Vec<InstanceId> = engine
        .work_list(&ann())
        .into_iter()
        .map(|t| t.id.instance())
        .collect();
    assert_eq!(plain, [urgent, low, high]);
}

#[test]
fn a_restored_state_with_lifecycle_nonsense_is_rejected() {
    let (engine, _) = engine();
    let id = engine.start("life", Vars::new()).unwrap();
    let task = first(&engine, id);
    engine.claim(task, &ann()).unwrap();
    engine.delegate(task, &ann(), &amy()).unwrap();
    engine.suspend(id, &lee()).unwrap();
    let def = engine.definition_of(id).unwrap();
    let inst = engine.instance(id).unwrap();
    inst.check(&def).unwrap();
    let state: serde_json::Value = serde_json::from_str(&inst.encode()).unwrap();
    // The state round-trips and still fits.
    let back = procflow::Instance::decode(&state.to_string(), Vec::new()).unwrap();
    back.check(&def).unwrap();
    assert!(back.instance_suspended());
    assert_eq!(
        back.delegated_by(task.seq()).map(|a| a.as_str()),
        Some("ann")
    );
    let bad = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut s = state.clone();
        edit(&mut s);
        procflow::Instance::decode(&s.to_string(), Vec::new())
            .unwrap()
            .check(&def)
    };
    // A delegation of a task that does not exist, a suspension twice, an owner without a rule.
    assert!(bad(&|s| s["delegated"][0]["task"] = json!(7)).is_err());
    assert!(
        bad(&|s| {
            let first = s["suspended"][0].clone();
            s["suspended"].as_array_mut().unwrap().push(first);
        })
        .is_err()
    );
    assert!(bad(&|s| s["owner"] = json!("ann")).is_err());
    assert!(bad(&|s| s["suspended"][0]["timers"][0]["node"] = json!(99)).is_err());
}

#[test]
fn an_instance_cancelled_while_suspended_reads_back() {
    let store = procflow::MemoryStore::new();
    let engine = Engine::open(store.clone()).unwrap();
    engine.deploy(ProcessDef::from_yaml(DEF).unwrap()).unwrap();
    let id = engine.start("life", Vars::new()).unwrap();
    engine.suspend(first(&engine, id), &lee()).unwrap();
    engine.suspend(id, &lee()).unwrap();
    engine.cancel(id, &lee(), "withdrawn").unwrap();
    drop(engine);
    let again = Engine::open(store).unwrap();
    let inst = again.instance(id).unwrap();
    assert_eq!(inst.status(), Status::Cancelled);
    assert!(matches!(
        again.resume(id, &lee()),
        Err(ExecError::InstanceCancelled(_))
    ));
}
