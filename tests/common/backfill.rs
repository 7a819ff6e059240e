//! The offers backfill on a store as its migration to offers leaves it: every running instance
//! carries `*` (which every work-list query matches) and its row lists no offers. Shared by the
//! SQLite and PostgreSQL tests, which each know how to put a store back in that state.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use procflow::{
    Actor, Engine, InstanceId, ManualClock, Offer, ProcessDef, RoleId, Store, StoreError, Vars,
};

const REVIEW: &str = include_str!("../fixtures/review.yaml");

fn offer(role: &str) -> Offer {
    Offer {
        role: RoleId::new(role),
        unit: None,
    }
}

fn ids(found: Result<Option<Vec<(InstanceId, u64)>>, StoreError>) -> Vec<InstanceId> {
    found
        .unwrap()
        .expect("the store indexes offers")
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

/// Runs 30 review instances (every third at the leads' approval, one finished) on `open()`,
/// calls `migrate` (which gives every running instance `*` and clears what rows list), then
/// checks that `Engine::backfill_offers` gives each its offers in batches, leaves the one a
/// commit moved between the read and the write for the next pass, and that `tick` finishes
/// the job: afterwards a lead's work-list query names exactly the instances at approval.
pub(crate) fn check(open: impl Fn() -> Arc<dyn Store>, migrate: impl FnOnce(), t0: DateTime<Utc>) {
    let clock = Arc::new(ManualClock::new(t0));
    let mut b = Engine::builder();
    b.clock(Arc::clone(&clock));
    let engine = b.open(open()).unwrap();
    engine
        .deploy(ProcessDef::from_yaml(REVIEW).unwrap())
        .unwrap();
    let agent = Actor::new("ann", ["agent"]);
    let lead = Actor::new("lee", ["lead"]);
    let started: Vec<InstanceId> = (0..30)
        .map(|_| engine.start("review", Vars::new()).unwrap())
        .collect();
    let mut approving: Vec<InstanceId> = started.iter().step_by(3).copied().collect();
    for id in &approving {
        let t = engine.tasks(*id).unwrap()[0].id;
        engine.complete(t, &agent, Vars::new()).unwrap();
    }
    // One goes on to the end.
    let done = approving.pop().unwrap();
    let t = engine.tasks(done).unwrap()[0].id;
    engine.complete(t, &lead, Vars::new()).unwrap();
    drop(engine);
    migrate();
    let store = open();
    assert_eq!(
        ids(store.offered(&[])).len(),
        29,
        "every running one matches"
    );

    let engine = b.open(Arc::clone(&store)).unwrap();
    // The first batch: ten instances looked at and given their offers.
    assert_eq!(engine.backfill_offers(10).unwrap(), 10);
    assert_eq!(ids(store.offered(&[])).len(), 19);
    // One of the next batch moves on after it was read: the commit that changes its offers
    // replaces its `*`, and the offers read before are not written over them.
    let moved = started[10];
    let unoffered = store.unoffered(Some(started[9]), 10).unwrap();
    assert_eq!(unoffered.len(), 10);
    assert!(unoffered.iter().all(|s| s.instance.audit().is_empty()));
    let read: Vec<(InstanceId, u64, Vec<Offer>)> = unoffered
        .iter()
        .map(|s| {
            let id = s.instance.id();
            let role = if approving.contains(&id) {
                "lead"
            } else {
                "agent"
            };
            (id, s.version, vec![offer(role)])
        })
        .collect();
    let t = engine.tasks(moved).unwrap()[0].id;
    engine.complete(t, &agent, Vars::new()).unwrap();
    assert!(!ids(store.offered(&[])).contains(&moved));
    assert!(ids(store.offered(&[offer("lead")])).contains(&moved));
    assert_eq!(
        store.reoffer(&read).unwrap(),
        9,
        "all but the one that moved"
    );
    assert!(!ids(store.offered(&[offer("agent")])).contains(&moved));
    assert_eq!(ids(store.offered(&[])).len(), 9);
    // Offers computed from a version that is no longer stored are not written.
    let next = &store.unoffered(Some(started[19]), 1).unwrap()[0];
    let stale = (next.instance.id(), next.version + 1, vec![offer("agent")]);
    assert_eq!(store.reoffer(&[stale]).unwrap(), 0);
    assert_eq!(ids(store.offered(&[])).len(), 9);
    approving.push(moved);
    approving.sort();
    // A tick does the rest, from where the engine's last batch stopped.
    engine.tick(t0);
    assert_eq!(ids(store.offered(&[])), vec![]);
    assert_eq!(engine.backfill_offers(100).unwrap(), 0, "none left");
    assert_eq!(ids(store.offered(&[offer("lead")])), approving);
    assert_eq!(
        ids(store.offered(&[offer("agent")])).len(),
        29 - approving.len()
    );
    let mut listed: Vec<InstanceId> = engine
        .work_list(&lead)
        .into_iter()
        .map(|t| t.id.instance())
        .collect();
    listed.sort();
    assert_eq!(listed, approving);
}
