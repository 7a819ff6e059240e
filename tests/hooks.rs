//! Hooks after the commit: a hook may call the engine for any instance, its own included, and
//! `tick`, from any thread, without deadlock and without losing a timer; a veto or a handler
//! that calls the engine gets `Reentrant`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, Weak};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use procflow::{
    Actor, Clock, Control, Engine, Event, ExecError, InstanceId, ManualClock, ProcessDef, Status,
    TaskId, TimerKind, Vars, handler_fn, hook_fn, veto_fn,
};

const TWO_STEPS: &str = r#"
id: two
version: 1
name: Two steps
roles: { clerk: { name: Clerk }, lead: { name: Lead }, audit: { name: Audit } }
nodes:
  start: { kind: start, next: first }
  first:
    kind: user_task
    name: First
    raci: { responsible: [clerk], accountable: lead, informed: [audit] }
    next: second
  second:
    kind: user_task
    name: Second
    raci: { responsible: [clerk], accountable: lead }
    next: end
  end: { kind: end }
"#;

const TIMED: &str = r#"
id: timed
version: 1
name: Timed
roles: { clerk: { name: Clerk }, lead: { name: Lead }, audit: { name: Audit } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [clerk], accountable: lead, informed: [audit] }
    due: 2h
    remind: [{ after: 1h, to: [clerk] }]
    next: end
  end: { kind: end }
"#;

fn t0() -> DateTime<Utc> {
    "2026-03-02T09:00:00Z".parse().unwrap()
}

fn clerk() -> Actor {
    Actor::new("ann", ["clerk"])
}

/// The engine as its own hooks reach it (`Arc::new_cyclic` makes it before the hooks run).
type Handle = Weak<Engine>;

fn engine_of(handle: &Handle) -> Arc<Engine> {
    handle.upgrade().expect("the engine is alive")
}

fn first_task(engine: &Engine, id: InstanceId) -> TaskId {
    engine.tasks(id).unwrap()[0].id
}

/// Two threads each complete a task whose hook reads the other thread's instance (and the work
/// list): with hooks under the instance lock, both calls hung forever. 1,000 rounds; every call
/// must return within a second (a deadlock never returns; a loaded machine takes microseconds).
#[test]
fn hooks_on_two_threads_read_each_others_instances() {
    // Which instance each instance's hook reads: its partner of the round.
    let partners: Arc<Mutex<std::collections::HashMap<InstanceId, InstanceId>>> = Arc::default();
    let reads = Arc::new(AtomicUsize::new(0));
    let engine = {
        let (partners, reads) = (Arc::clone(&partners), Arc::clone(&reads));
        Arc::new_cyclic(|handle: &Handle| {
            let handle = handle.clone();
            Engine::builder()
                .hook(hook_fn(move |ev: &Event| {
                    if let Event::TaskCompleted { task, .. } = ev {
                        let engine = engine_of(&handle);
                        let partner = partners.lock().unwrap().get(&task.instance()).copied();
                        if let Some(other) = partner {
                            engine.instance(other).expect("the partner exists");
                            engine.tasks(other).expect("the partner's tasks");
                            engine.work_list(&clerk());
                            reads.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }))
                .build()
        })
    };
    engine
        .deploy(ProcessDef::from_yaml(TWO_STEPS).unwrap())
        .unwrap();
    const ROUNDS: usize = 1_000;
    let barrier = Arc::new(Barrier::new(2));
    let mut pairs = Vec::new();
    for _ in 0..ROUNDS {
        let a = engine.start("two", Vars::new()).unwrap();
        let b = engine.start("two", Vars::new()).unwrap();
        partners.lock().unwrap().extend([(a, b), (b, a)]);
        pairs.push((a, b));
    }
    let pairs = Arc::new(pairs);
    let threads: Vec<_> = (0..2)
        .map(|side| {
            let (engine, barrier, pairs) = (
                Arc::clone(&engine),
                Arc::clone(&barrier),
                Arc::clone(&pairs),
            );
            std::thread::spawn(move || {
                let mut slowest = StdDuration::ZERO;
                for &(a, b) in pairs.iter() {
                    let mine = if side == 0 { a } else { b };
                    barrier.wait();
                    let began = Instant::now();
                    engine
                        .complete(first_task(&engine, mine), &clerk(), Vars::new())
                        .unwrap();
                    slowest = slowest.max(began.elapsed());
                }
                slowest
            })
        })
        .collect();
    // A deadlock shows as threads that never finish: wait with a bound instead of forever.
    let deadline = Instant::now() + StdDuration::from_secs(120);
    while threads.iter().any(|t| !t.is_finished()) {
        assert!(
            Instant::now() < deadline,
            "the threads did not finish: deadlock"
        );
        std::thread::sleep(StdDuration::from_millis(10));
    }
    for t in threads {
        let slowest = t.join().unwrap();
        assert!(
            slowest < StdDuration::from_secs(1),
            "a call took {slowest:?}"
        );
    }
    assert_eq!(reads.load(Ordering::Relaxed), 2 * ROUNDS);
}

/// A hook calls `tick` while a tick delivers its events, and on the instance the event is
/// about: nothing deadlocks, no timer is lost, and the later timer still fires.
#[test]
fn a_hook_may_call_tick_and_no_timer_is_lost() {
    let clock = Arc::new(ManualClock::new(t0()));
    let nested = Arc::new(Mutex::new(Vec::new()));
    let engine = {
        let (clock, nested) = (Arc::clone(&clock), Arc::clone(&nested));
        Arc::new_cyclic(|handle: &Handle| {
            let handle = handle.clone();
            Engine::builder()
                .clock(Arc::clone(&clock))
                .hook(hook_fn(move |ev: &Event| {
                    if let Event::Timer { instance, .. } = ev {
                        let engine = engine_of(&handle);
                        // The outer tick is over by now: this one fires what is due anew.
                        let fired = engine.tick(clock.now());
                        nested.lock().unwrap().push(fired.len());
                        engine.instance(*instance).expect("readable from the hook");
                        engine.work_list(&clerk());
                    }
                }))
                .build()
        })
    };
    engine
        .deploy(ProcessDef::from_yaml(TIMED).unwrap())
        .unwrap();
    let id = engine.start("timed", Vars::new()).unwrap();
    assert_eq!(engine.next_due(), Some(t0() + Duration::hours(1)));

    clock.advance(Duration::hours(1));
    let fired = engine.tick(clock.now());
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert!(matches!(fired[0].kind, TimerKind::Reminder { .. }));
    assert_eq!(*nested.lock().unwrap(), [0]);
    // The deadline is still armed and scheduled.
    assert_eq!(engine.next_due(), Some(t0() + Duration::hours(2)));
    let due: Vec<_> = engine.instance(id).unwrap().timers().to_vec();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].kind, TimerKind::Due);

    clock.advance(Duration::hours(1));
    let fired = engine.tick(clock.now());
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].kind, TimerKind::Due);
    assert_eq!(engine.next_due(), None);
}

/// A hook calls `tick` from the start's own delivery, for an instant past both timers: they
/// fire in that nested tick, once each.
#[test]
fn a_hook_ticking_on_its_own_instance_fires_each_timer_once() {
    let fired_in_hook = Arc::new(Mutex::new(Vec::new()));
    let engine = {
        let fired_in_hook = Arc::clone(&fired_in_hook);
        Arc::new_cyclic(|handle: &Handle| {
            let handle = handle.clone();
            Engine::builder()
                .clock(ManualClock::new(t0()))
                .hook(hook_fn(move |ev: &Event| {
                    if let Event::TaskCreated { .. } = ev {
                        let engine = engine_of(&handle);
                        let fired = engine.tick(t0() + Duration::hours(3));
                        fired_in_hook
                            .lock()
                            .unwrap()
                            .extend(fired.into_iter().map(|f| f.kind));
                    }
                }))
                .build()
        })
    };
    engine
        .deploy(ProcessDef::from_yaml(TIMED).unwrap())
        .unwrap();
    let id = engine.start("timed", Vars::new()).unwrap();
    let kinds = fired_in_hook.lock().unwrap().clone();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert!(matches!(kinds[0], TimerKind::Reminder { .. }));
    assert_eq!(kinds[1], TimerKind::Due);
    assert!(engine.tick(t0() + Duration::hours(4)).is_empty());
    assert_eq!(engine.next_due(), None);
    let inst = engine.instance(id).unwrap();
    assert!(inst.timers().iter().all(|t| t.fired));
}

/// A hook completes the task its own instance just opened: the instance runs to its end.
#[test]
fn a_hook_may_work_its_own_instance() {
    let engine = {
        Arc::new_cyclic(|handle: &Handle| {
            let handle = handle.clone();
            Engine::builder()
                .hook(hook_fn(move |ev: &Event| {
                    if let Event::TaskCreated { task, .. } = ev {
                        engine_of(&handle)
                            .complete(*task, &clerk(), Vars::new())
                            .expect("the hook completes the new task");
                    }
                }))
                .build()
        })
    };
    engine
        .deploy(ProcessDef::from_yaml(TWO_STEPS).unwrap())
        .unwrap();
    let id = engine.start("two", Vars::new()).unwrap();
    assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
}

/// Hooks hear a call's events after its commit, in order, with the notification last.
#[test]
fn events_arrive_in_order_after_the_call() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let engine = {
        let seen = Arc::clone(&seen);
        Engine::builder()
            .hook(hook_fn(move |ev: &Event| {
                let name = serde_json::to_value(ev).unwrap()["event"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                seen.lock().unwrap().push(name);
            }))
            .build()
    };
    engine
        .deploy(ProcessDef::from_yaml(TWO_STEPS).unwrap())
        .unwrap();
    let id = engine.start("two", Vars::new()).unwrap();
    seen.lock().unwrap().clear();
    engine
        .complete(first_task(&engine, id), &clerk(), Vars::new())
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "task_completed",
            "node_left",
            "node_entered",
            "task_created",
            "notify"
        ]
    );
    // Events are owned values: they round-trip through JSON.
    let event = Event::NodeLeft {
        instance: id,
        node: "first".into(),
    };
    let back: Event = serde_json::from_str(&serde_json::to_string(&event).unwrap()).unwrap();
    assert_eq!(back, event);
}

/// A veto runs under the instance's lock: an engine call from it is refused, `tick` from it
/// fires nothing and loses nothing, and the work list is empty.
#[test]
fn a_veto_calling_the_engine_is_refused() {
    let answers = Arc::new(Mutex::new(Vec::new()));
    let engine = {
        let answers = Arc::clone(&answers);
        Arc::new_cyclic(|handle: &Handle| {
            let handle = handle.clone();
            Engine::builder()
                .clock(ManualClock::new(t0()))
                .hook(veto_fn(move |c| {
                    let engine = engine_of(&handle);
                    let mut a = answers.lock().unwrap();
                    a.push(format!(
                        "{:?}",
                        engine.instance(c.task.instance()).map(|_| ())
                    ));
                    a.push(format!(
                        "{:?}",
                        engine.start("timed", Vars::new()).map(|_| ())
                    ));
                    a.push(format!("{}", engine.tick(t0() + Duration::days(1)).len()));
                    a.push(format!("{}", engine.work_list(&clerk()).len()));
                    Control::Continue
                }))
                .build()
        })
    };
    engine
        .deploy(ProcessDef::from_yaml(TIMED).unwrap())
        .unwrap();
    let id = engine.start("timed", Vars::new()).unwrap();
    engine
        .complete(first_task(&engine, id), &clerk(), Vars::new())
        .unwrap();
    let refused = format!("{:?}", Err::<(), _>(ExecError::Reentrant(id)));
    assert_eq!(
        *answers.lock().unwrap(),
        [refused.clone(), refused, "0".into(), "0".into()]
    );
    assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
}

/// A handler runs under the instance's lock too: calling the engine from it is refused for
/// any instance (with locks held on two instances, two threads could deadlock).
#[test]
fn a_handler_calling_the_engine_is_refused() {
    let answer = Arc::new(Mutex::new(None));
    let engine = {
        let answer = Arc::clone(&answer);
        Arc::new_cyclic(|handle: &Handle| {
            let handle = handle.clone();
            Engine::builder()
                .handler(
                    "peek",
                    handler_fn(move |call| {
                        let engine = engine_of(&handle);
                        let other = InstanceId::new(call.instance.get() + 1000);
                        *answer.lock().unwrap() = Some(engine.instance(other).map(|_| ()));
                        Ok(Vars::new())
                    }),
                )
                .build()
        })
    };
    engine
        .deploy(
            ProcessDef::from_yaml(
                r#"
id: svc
version: 1
name: Service
nodes:
  start: { kind: start, next: peek }
  peek: { kind: service_task, name: Peek, handler: peek, next: end }
  end: { kind: end }
"#,
            )
            .unwrap(),
        )
        .unwrap();
    let id = engine.start("svc", Vars::new()).unwrap();
    assert_eq!(*answer.lock().unwrap(), Some(Err(ExecError::Reentrant(id))));
}
