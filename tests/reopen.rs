//! Reopen-equivalence: a random run on a store, closed and reopened, gives the same state:
//! every instance equal to the one the first engine held, the same timers due, the same work.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use procflow::{
    Actor, Clock, Engine, ManualClock, MemoryStore, ProcessDef, SqliteStore, Store, Vars,
};
use proptest::prelude::*;
use serde_json::json;

const DEF: &str = r#"
id: reopen
version: 1
name: Reopen
accountable: lead
roles: { agent: { name: Agent }, lead: { name: Lead }, audit: { name: Audit } }
variables:
  urgent: { type: boolean, default: false }
sla: { due: 8h, informed: [audit] }
nodes:
  start: { kind: start, next: triage }
  triage:
    kind: user_task
    name: Triage
    raci: { responsible: [agent], accountable: lead, informed: [audit] }
    due: 2h
    claim_due: 30m
    remind: [{ before: 1h }]
    escalate: [{ after: 30m, action: notify }]
    timeout: { after: 6h, to: done }
    next: route
  route:
    kind: exclusive
    routes:
      - { when: "urgent", to: split }
      - { default: true, to: done }
  split: { kind: parallel, next: [fix, check] }
  fix:
    kind: user_task
    name: Fix
    raci: { responsible: [agent], accountable: lead }
    due: 1h
    next: join
  check:
    kind: user_task
    name: Check
    raci: { responsible: [lead], accountable: lead }
    next: join
  join: { kind: parallel, next: [done] }
  done: { kind: end }
"#;

#[derive(Clone, Debug)]
enum Op {
    Start {
        urgent: bool,
    },
    Claim {
        pick: usize,
        lead: bool,
    },
    Complete {
        pick: usize,
        lead: bool,
        urgent: bool,
    },
    Advance {
        minutes: i64,
    },
    /// A lifecycle call (issue 14): 0 release, 1 delegate, 2 return, 3 suspend, 4 resume,
    /// 5 suspend the instance, 6 resume the instance.
    Life {
        pick: usize,
        call: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => any::<bool>().prop_map(|urgent| Op::Start { urgent }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, lead)| Op::Claim { pick, lead }),
        4 => (any::<usize>(), any::<bool>(), any::<bool>())
            .prop_map(|(pick, lead, urgent)| Op::Complete { pick, lead, urgent }),
        2 => (1i64..300).prop_map(|minutes| Op::Advance { minutes }),
        2 => (any::<usize>(), 0u8..7).prop_map(|(pick, call)| Op::Life { pick, call }),
    ]
}

fn t0() -> DateTime<Utc> {
    "2026-03-02T09:00:00Z".parse().unwrap()
}

fn actor(lead: bool) -> Actor {
    if lead {
        Actor::new("lee", ["lead"])
    } else {
        Actor::new("ann", ["agent"])
    }
}

/// The `pick`-th open task of the engine (modulo their number), if any is open.
fn open_task(engine: &Engine, pick: usize) -> Option<procflow::TaskId> {
    let open: Vec<_> = engine
        .instances()
        .into_iter()
        .flat_map(|i| engine.tasks(i).unwrap())
        .collect();
    (!open.is_empty()).then(|| open[pick % open.len()].id)
}

/// Runs `ops` on an engine over `store`, then checks a second engine on it sees the same.
fn check(store: Arc<dyn Store>, ops: &[Op]) -> Result<(), TestCaseError> {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = Engine::builder()
        .clock(Arc::clone(&clock))
        .open(Arc::clone(&store))
        .unwrap();
    engine.deploy(ProcessDef::from_yaml(DEF).unwrap()).unwrap();
    for op in ops {
        // Refusals (a denied claim, a closed task) are part of the run: they are recorded or
        // change nothing, and the reopened engine must agree either way.
        match *op {
            Op::Start { urgent } => {
                let mut vars = Vars::new();
                vars.insert("urgent".into(), json!(urgent));
                engine.start("reopen", vars).unwrap();
            }
            Op::Claim { pick, lead } => {
                if let Some(task) = open_task(&engine, pick) {
                    let _ = engine.claim(task, &actor(lead));
                }
            }
            Op::Complete { pick, lead, urgent } => {
                if let Some(task) = open_task(&engine, pick) {
                    let mut out = Vars::new();
                    out.insert("urgent".into(), json!(urgent));
                    let _ = engine.complete(task, &actor(lead), out);
                }
            }
            Op::Life { pick, call } => {
                if let Some(task) = open_task(&engine, pick) {
                    let other = Actor::new("amy", ["agent"]);
                    let _ = match call {
                        0 => engine.release(task, &actor(false)),
                        1 => engine.delegate(task, &actor(true), &other),
                        2 => engine.return_task(task, &other),
                        3 => engine.suspend(task, &actor(true)),
                        4 => engine.resume(task, &actor(true)),
                        5 => engine.suspend(task.instance(), &actor(true)),
                        _ => engine.resume(task.instance(), &actor(true)),
                    };
                }
            }
            Op::Advance { minutes } => {
                clock.advance(Duration::minutes(minutes));
                engine.tick(clock.now());
            }
        }
    }
    let ids = engine.instances();
    let before: Vec<_> = ids.iter().map(|&i| engine.instance(i).unwrap()).collect();
    let due = engine.next_due();
    let work = (
        engine.work_list(&actor(false)),
        engine.work_list(&actor(true)),
    );
    drop(engine);

    let again = Engine::builder()
        .clock(Arc::clone(&clock))
        .open(Arc::clone(&store))
        .unwrap();
    let after: Vec<_> = ids.iter().map(|&i| again.instance(i).unwrap()).collect();
    prop_assert_eq!(&before, &after);
    prop_assert_eq!(due, again.next_due());
    prop_assert_eq!(
        work,
        (
            again.work_list(&actor(false)),
            again.work_list(&actor(true))
        )
    );
    // And both go on alike: the next tick fires the same in each.
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn reopened_memory_store_gives_the_same_state(ops in proptest::collection::vec(op(), 1..40)) {
        check(Arc::new(MemoryStore::new()), &ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn reopened_sqlite_store_gives_the_same_state(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = std::env::temp_dir().join(format!("procflow-reopen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}.db", rand_name()));
        let store = Arc::new(SqliteStore::create(&path).unwrap());
        let result = check(store, &ops);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        result?;
    }
}

/// A name no other case of this run uses.
fn rand_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("case{}", N.fetch_add(1, Ordering::Relaxed))
}
