//! Calls racing on one instance while it completes, with `retain_completed = false` (the engine
//! lets a completed instance go) and `remove`: a reader never hears `UnknownInstance` for an
//! instance the store holds, and one engine never conflicts with itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use procflow::{Actor, Config, Engine, ExecError, MemoryStore, ProcessDef, Status, Vars};

const DEF: &str = r#"
id: quick
version: 1
name: Quick
roles: { agent: { name: Agent }, lead: { name: Lead } }
nodes:
  start: { kind: start, next: work }
  work: { kind: user_task, name: Work, raci: { responsible: [agent], accountable: lead }, next: end }
  end: { kind: end }
"#;

#[test]
fn readers_racing_a_completion_and_a_removal_always_find_the_instance() {
    let mut config = Config::default();
    config.retain_completed = false;
    let engine = Arc::new(
        Engine::builder()
            .config(config)
            .open(MemoryStore::new())
            .unwrap(),
    );
    engine.deploy(ProcessDef::from_yaml(DEF).unwrap()).unwrap();
    for round in 0..300 {
        let id = engine.start("quick", Vars::new()).unwrap();
        let task = engine.tasks(id).unwrap()[0].id;
        let done = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|k| {
                let (engine, done) = (Arc::clone(&engine), Arc::clone(&done));
                std::thread::spawn(move || {
                    let mut reads = 0;
                    while !done.load(Ordering::Acquire) || reads < 20 {
                        let seen = if k == 0 {
                            engine.tasks(id).map(|_| ())
                        } else {
                            engine.instance(id).map(|_| ())
                        };
                        assert_eq!(seen, Ok(()), "round {round}, reader {k}");
                        if reads % 7 == 3 {
                            // Letting the instance go is never a reader's failure either.
                            let _ = engine.remove(id);
                        }
                        reads += 1;
                    }
                })
            })
            .collect();
        let completed = engine.complete(task, &Actor::new("ann", ["agent"]), Vars::new());
        assert!(
            !matches!(completed, Err(ExecError::Conflict(_))),
            "round {round}: the engine conflicted with itself"
        );
        // A removal racing it may make the completion find its copy gone: it reads the store.
        if let Err(e) = completed {
            panic!("round {round}: {e}");
        }
        done.store(true, Ordering::Release);
        for r in readers {
            r.join().unwrap();
        }
        assert_eq!(engine.instance(id).unwrap().status(), Status::Completed);
    }
}
