//! Follow-ups through the commit: a notification is committed with the completion that causes
//! it, runs after the commit, and survives a process killed between the two.

use std::process::Command;
use std::sync::{Arc, Mutex};

use procflow::{
    Actor, Engine, Event, FollowUp, MemoryStore, ProcessDef, SqliteStore, Status, Store, Vars,
    hook_fn,
};

const DEF: &str = r#"
id: notice
version: 1
name: Notice
roles: { clerk: { name: Clerk }, lead: { name: Lead }, audit: { name: Audit }, boss: { name: Boss } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [clerk], accountable: lead, informed: [audit, boss] }
    next: end
  end: { kind: end }
"#;

const CHILD: &str = "PROCFLOW_OUTBOX_CHILD";

type Heard = Arc<Mutex<Vec<String>>>;

/// An engine on `store` whose hook writes down every notification it hears.
fn engine_on(store: impl Store + 'static, heard: &Heard) -> Engine {
    let sink = Arc::clone(heard);
    Engine::builder()
        .hook(hook_fn(move |ev: &Event| {
            if let Event::Notify { task, role, .. } = ev {
                sink.lock().unwrap().push(format!("{task} {role}"));
            }
        }))
        .open(store)
        .unwrap()
}

/// The child: completes the task, and is killed (SIGKILL, by `kill -9` on itself) as soon as
/// the completion is committed and before its follow-ups run.
#[test]
fn child_completes_and_dies() {
    let Ok(path) = std::env::var(CHILD) else {
        return;
    };
    let engine = Engine::builder()
        .hook(hook_fn(|ev: &Event| {
            if let Event::TaskCompleted { .. } = ev {
                let me = std::process::id().to_string();
                let _ = Command::new("kill").args(["-9", &me]).status();
                // SIGKILL is not delivered at once on every system: do not go on meanwhile.
                std::thread::sleep(std::time::Duration::from_secs(60));
            }
        }))
        .open(SqliteStore::open(&path).unwrap())
        .unwrap();
    let id = engine.instances()[0];
    let task = engine.tasks(id).unwrap()[0].id;
    engine
        .complete(task, &Actor::new("ann", ["clerk"]), Vars::new())
        .unwrap();
    unreachable!("the hook kills this process");
}

#[test]
fn a_follow_up_survives_a_kill_between_its_commit_and_its_run() {
    let dir = std::env::temp_dir().join(format!("procflow-outbox-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("store.db");
    let _ = std::fs::remove_file(&path);
    let heard: Heard = Arc::default();
    let id = {
        let engine = engine_on(SqliteStore::create(&path).unwrap(), &heard);
        engine.deploy(ProcessDef::from_yaml(DEF).unwrap()).unwrap();
        engine.start("notice", Vars::new()).unwrap()
    };
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_completes_and_dies", "--nocapture"])
        .env(CHILD, &path)
        .status()
        .unwrap();
    assert!(!status.success(), "the child was to be killed");

    // The completion is stored, and so are its two notifications, not yet run.
    let store = Arc::new(SqliteStore::open(&path).unwrap());
    let pending = store.outbox().unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].instance.status(), Status::Completed);
    let roles: Vec<String> = pending[0]
        .instance
        .pending()
        .iter()
        .map(|p| match &p.what {
            FollowUp::Notify { role, .. } => role.to_string(),
            other => panic!("unexpected follow-up {other:?}"),
        })
        .collect();
    assert_eq!(roles, ["audit", "boss"]);

    // The next engine to open the store runs them, once.
    let engine = engine_on(Arc::clone(&store), &heard);
    assert_eq!(
        *heard.lock().unwrap(),
        [format!("{id}.t0 audit"), format!("{id}.t0 boss")]
    );
    assert!(store.outbox().unwrap().is_empty());
    assert!(engine.instance(id).unwrap().pending().is_empty());
    drop(engine);
    heard.lock().unwrap().clear();
    let _again = engine_on(Arc::clone(&store), &heard);
    assert!(heard.lock().unwrap().is_empty(), "a follow-up ran twice");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without a crash, the follow-ups run right after the commit and leave the outbox, on every
/// store and without one.
#[test]
fn follow_ups_run_after_the_commit_and_leave_the_outbox() {
    let heard: Heard = Arc::default();
    let store = MemoryStore::new();
    let engine = engine_on(store.clone(), &heard);
    engine.deploy(ProcessDef::from_yaml(DEF).unwrap()).unwrap();
    let id = engine.start("notice", Vars::new()).unwrap();
    let task = engine.tasks(id).unwrap()[0].id;
    engine
        .complete(task, &Actor::new("ann", ["clerk"]), Vars::new())
        .unwrap();
    assert_eq!(heard.lock().unwrap().len(), 2);
    assert!(store.outbox().unwrap().is_empty());
    assert!(engine.instance(id).unwrap().pending().is_empty());

    let plain: Heard = Arc::default();
    let sink = Arc::clone(&plain);
    let engine = Engine::builder()
        .hook(hook_fn(move |ev: &Event| {
            if let Event::Notify { role, .. } = ev {
                sink.lock().unwrap().push(role.to_string());
            }
        }))
        .build();
    engine.deploy(ProcessDef::from_yaml(DEF).unwrap()).unwrap();
    let id = engine.start("notice", Vars::new()).unwrap();
    let task = engine.tasks(id).unwrap()[0].id;
    engine
        .complete(task, &Actor::new("ann", ["clerk"]), Vars::new())
        .unwrap();
    assert_eq!(*plain.lock().unwrap(), ["audit", "boss"]);
    assert!(engine.instance(id).unwrap().pending().is_empty());
}
