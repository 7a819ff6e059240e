//! Property tests.
//!
//! 1. Random *valid* definitions (nested blocks of tasks, exclusive and parallel gateways) load,
//!    and every run of them, in any completion order, completes with a consistent audit trail;
//!    an actor holding only an informed role is always denied.
//! 2. The loader never panics on mutated shipped definitions nor on hostile inputs.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::TestCaseError;

use procflow::{
    Actor, Engine, Entry, Event, ExecError, ManualClock, ProblemKind, ProcessDef, Status,
    TaskState, Vars, handler_fn, hook_fn,
};

// ---------------------------------------------------------------------------------------------
// Generated definitions
// ---------------------------------------------------------------------------------------------

/// A block of a generated process: one entry node, one exit node.
#[derive(Clone, Debug)]
enum Block {
    User,
    Service,
    Series(Vec<Block>),
    /// An exclusive gateway with one arm per route; `direct` merges the arms straight on the next
    /// node when that node may be a merge point (otherwise on a dedicated service task).
    Exclusive {
        arms: Vec<Block>,
        direct: bool,
    },
    /// A fork into the arms, which all end in the same join.
    Parallel(Vec<Block>),
}

fn block() -> impl Strategy<Value = Block> {
    let leaf = prop_oneof![Just(Block::User), Just(Block::Service)];
    leaf.prop_recursive(5, 40, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..=3).prop_map(Block::Series),
            (prop::collection::vec(inner.clone(), 2..=3), any::<bool>())
                .prop_map(|(arms, direct)| Block::Exclusive { arms, direct }),
            prop::collection::vec(inner, 2..=4).prop_map(Block::Parallel),
        ]
    })
}

/// A rendered block: the YAML node ids of its parts.
#[derive(Clone, Debug)]
enum Shape {
    User(String),
    Service,
    Series(Vec<Shape>),
    Exclusive(Vec<Shape>),
    Parallel(String, Vec<Shape>),
}

/// The kind of a block's entry node, which decides whether exclusive arms may merge on it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    Task,
    Exclusive,
    Fork,
    Join,
    End,
}

#[derive(Default)]
struct Render {
    count: usize,
    nodes: Vec<String>,
}

const RACI: &str = "raci: { responsible: [worker], accountable: lead, informed: [watcher] }";

impl Render {
    fn fresh(&mut self) -> String {
        self.count += 1;
        format!("n{}", self.count)
    }

    fn service(&mut self, id: &str, next: &str) {
        self.nodes.push(format!(
            "  {id}: {{ kind: service_task, name: Service {id}, handler: noop, next: {next} }}"
        ));
    }

    /// Renders `b` so that its exit flows to `next`; returns its shape, entry node and entry kind.
    fn block(&mut self, b: &Block, next: &str, next_kind: EntryKind) -> (Shape, String, EntryKind) {
        match b {
            Block::User => {
                let id = self.fresh();
                self.nodes.push(format!(
                    "  {id}:\n    kind: user_task\n    name: Task {id}\n    {RACI}\n    next: {next}"
                ));
                (Shape::User(id.clone()), id, EntryKind::Task)
            }
            Block::Service => {
                let id = self.fresh();
                self.service(&id, next);
                (Shape::Service, id, EntryKind::Task)
            }
            Block::Series(blocks) => {
                let (mut next, mut next_kind) = (next.to_owned(), next_kind);
                let mut shapes = Vec::new();
                for b in blocks.iter().rev() {
                    let (s, e, k) = self.block(b, &next, next_kind);
                    shapes.push(s);
                    (next, next_kind) = (e, k);
                }
                shapes.reverse();
                (Shape::Series(shapes), next, next_kind)
            }
            Block::Exclusive { arms, direct } => {
                // A parallel gateway with several incoming flows is a join: never merge there.
                let mergeable = !matches!(next_kind, EntryKind::Fork | EntryKind::Join);
                let (target, target_kind) = if *direct && mergeable {
                    (next.to_owned(), next_kind)
                } else {
                    let merge = self.fresh();
                    self.service(&merge, next);
                    (merge, EntryKind::Task)
                };
                let mut shapes = Vec::new();
                let mut entries = Vec::new();
                for arm in arms {
                    let (s, e, _) = self.block(arm, &target, target_kind);
                    shapes.push(s);
                    entries.push(e);
                }
                let gw = self.fresh();
                let n = entries.len();
                let routes: Vec<String> = entries
                    .iter()
                    .enumerate()
                    .map(|(i, to)| {
                        if i + 1 == n {
                            format!("      - {{ default: true, to: {to} }}")
                        } else {
                            format!("      - {{ when: \"v % {n} == {i}\", to: {to} }}")
                        }
                    })
                    .collect();
                self.nodes.push(format!(
                    "  {gw}:\n    kind: exclusive\n    routes:\n{}",
                    routes.join("\n")
                ));
                (Shape::Exclusive(shapes), gw, EntryKind::Exclusive)
            }
            Block::Parallel(arms) => {
                let join = self.fresh();
                self.nodes
                    .push(format!("  {join}: {{ kind: parallel, next: {next} }}"));
                let mut shapes = Vec::new();
                let mut entries = Vec::new();
                for arm in arms {
                    let (s, e, _) = self.block(arm, &join, EntryKind::Join);
                    shapes.push(s);
                    entries.push(e);
                }
                let fork = self.fresh();
                self.nodes.push(format!(
                    "  {fork}: {{ kind: parallel, next: [{}] }}",
                    entries.join(", ")
                ));
                (Shape::Parallel(join, shapes), fork, EntryKind::Fork)
            }
        }
    }
}

/// A generated definition.
#[derive(Clone)]
struct Generated {
    yaml: String,
    shape: Shape,
}

impl fmt::Debug for Generated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "definition:")?;
        f.write_str(&self.yaml)
    }
}

fn render(b: &Block) -> Generated {
    let mut r = Render::default();
    let (shape, entry, _) = r.block(b, "end", EntryKind::End);
    let mut yaml = String::from(
        "id: gen\nversion: 1\nname: Generated\nroles:\n  worker: { name: Worker }\n  \
         lead: { name: Lead }\n  watcher: { name: Watcher }\nvariables:\n  \
         v: { type: integer, required: true }\nnodes:\n",
    );
    yaml.push_str(&format!("  start: {{ kind: start, next: {entry} }}\n"));
    for n in r.nodes.iter().rev() {
        yaml.push_str(n);
        yaml.push('\n');
    }
    yaml.push_str("  end: { kind: end }\n");
    Generated { yaml, shape }
}

fn definition() -> impl Strategy<Value = Generated> {
    block().prop_map(|b| render(&b))
}

/// The route an exclusive gateway with `n` routes takes for `v`.
fn route(v: i64, n: usize) -> usize {
    let n = n as i64;
    (0..n - 1).find(|i| v % n == *i).unwrap_or(n - 1) as usize
}

/// The user tasks and joins a run with `v` must pass.
fn expected(shape: &Shape, v: i64, users: &mut Vec<String>, joins: &mut Vec<String>) {
    match shape {
        Shape::User(id) => users.push(id.clone()),
        Shape::Service => {}
        Shape::Series(s) => s.iter().for_each(|s| expected(s, v, users, joins)),
        Shape::Exclusive(arms) => expected(&arms[route(v, arms.len())], v, users, joins),
        Shape::Parallel(join, arms) => {
            joins.push(join.clone());
            arms.iter().for_each(|s| expected(s, v, users, joins));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running generated definitions
// ---------------------------------------------------------------------------------------------

/// One completion step: which open task, whether the accountable `lead` completes it (else the
/// responsible `worker`), and how many seconds pass before.
type Pick = (Index, bool, u8);

fn load(g: &Generated) -> Result<ProcessDef, TestCaseError> {
    ProcessDef::from_yaml(&g.yaml)
        .map_err(|e| TestCaseError::fail(format!("does not load: {e}\n{}", g.yaml)))
}

fn fail(what: impl fmt::Display) -> TestCaseError {
    TestCaseError::fail(what.to_string())
}

/// Runs `g` with `v`, completing tasks in the order `picks` gives; with `probe`, an actor holding
/// only `watcher` first tries to complete every open task at each step.
fn run(g: &Generated, v: i64, picks: &[Pick], probe: bool) -> Result<(), TestCaseError> {
    let notifies = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&notifies);
    let clock = Arc::new(ManualClock::new("2026-01-01T00:00:00Z".parse().unwrap()));
    let engine = Engine::builder()
        .clock(Arc::clone(&clock))
        .handler("noop", handler_fn(|_| Ok(Vars::new())))
        .hook(hook_fn(move |ev: &Event| {
            if let Event::Notify { .. } = ev {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }))
        .build();
    let def = engine.deploy(load(g)?).map_err(fail)?;
    let mut vars = Vars::new();
    vars.insert("v".into(), v.into());
    let id = engine.start("gen", vars).map_err(fail)?;

    let worker = Actor::new("wendy", ["worker"]);
    let lead = Actor::new("leo", ["lead"]);
    let watcher = Actor::new("walt", ["watcher"]);
    let mut steps = 0;
    while engine.instance(id).map_err(fail)?.status() == Status::Running {
        let open = engine.tasks(id).map_err(fail)?;
        prop_assert!(
            !open.is_empty(),
            "instance is running with no open task: {:?}",
            engine.instance(id)
        );
        prop_assert!(steps <= g.yaml.len(), "too many steps");
        if probe {
            for t in &open {
                let before = serde_json::to_value(engine.instance(id).map_err(fail)?).unwrap();
                let seen = notifies.load(Ordering::SeqCst);
                let r = engine.complete(t.id, &watcher, Vars::new());
                prop_assert!(
                    matches!(r, Err(ExecError::Denied { .. })),
                    "watcher completing {} got {r:?}",
                    t.node_id
                );
                let after_inst = engine.instance(id).map_err(fail)?;
                let last = after_inst.audit().last().map(|r| &r.what);
                prop_assert!(
                    matches!(last, Some(Entry::Denied { task, actor, .. }) if *task == t.id.seq() && &**actor == "walt"),
                    "last record after a denial is {last:?}"
                );
                let mut after = serde_json::to_value(&after_inst).unwrap();
                after["audit"].as_array_mut().unwrap().pop();
                prop_assert_eq!(&before, &after, "a denied completion changed the instance");
                prop_assert_eq!(notifies.load(Ordering::SeqCst), seen);
            }
        }
        let (index, by_lead, secs) = picks[steps % picks.len()];
        let task = &open[index.index(open.len())];
        clock.advance(chrono::Duration::seconds(i64::from(secs % 3)));
        let actor = if by_lead { &lead } else { &worker };
        engine
            .complete(task.id, actor, Vars::new())
            .map_err(|e| fail(format!("completing {} failed: {e}", task.node_id)))?;
        steps += 1;
    }

    let inst = engine.instance(id).map_err(fail)?;
    prop_assert_eq!(inst.status(), Status::Completed);
    prop_assert!(inst.incidents().is_empty(), "{:?}", inst.incidents());
    prop_assert!(inst.tokens().is_empty(), "{:?}", inst.tokens());

    // Every task completed exactly once, and the tasks are exactly those on the taken path.
    let (mut users, mut joins) = (Vec::new(), Vec::new());
    expected(&g.shape, v, &mut users, &mut joins);
    let mut opened: Vec<String> = inst
        .tasks()
        .iter()
        .map(|t| def.node(t.node()).id().to_owned())
        .collect();
    opened.sort();
    users.sort();
    prop_assert_eq!(&opened, &users, "tasks opened vs. user tasks on the path");
    for t in inst.tasks() {
        prop_assert!(
            matches!(t.state(), TaskState::Completed { .. }),
            "task at {} is {:?}",
            def.node(t.node()).id(),
            t.state()
        );
    }
    let audit = inst.audit();
    let mut completed = HashMap::new();
    let mut joined: BTreeMap<String, usize> = BTreeMap::new();
    for r in audit {
        match &r.what {
            Entry::Completed { task, .. } => *completed.entry(*task).or_insert(0) += 1,
            Entry::Joined { node } => {
                *joined.entry(def.node(*node).id().to_owned()).or_default() += 1
            }
            Entry::Transition { from, to, .. } => prop_assert!(
                def.node(*from).next().contains(to),
                "transition {} -> {} is no flow of the definition",
                def.node(*from).id(),
                def.node(*to).id()
            ),
            _ => {}
        }
    }
    prop_assert_eq!(completed.len(), inst.tasks().len());
    prop_assert!(completed.values().all(|c| *c == 1), "{completed:?}");
    prop_assert_eq!(
        completed.values().sum::<usize>(),
        inst.tasks().len(),
        "Completed records vs. tasks"
    );
    prop_assert!(
        joined.values().all(|c| *c <= 1),
        "a join fired twice: {joined:?}"
    );
    joins.sort();
    prop_assert_eq!(
        joined.keys().cloned().collect::<Vec<_>>(),
        joins,
        "joins fired vs. parallel blocks on the path"
    );
    let times: Vec<_> = audit
        .iter()
        .filter(|r| matches!(r.what, Entry::Transition { .. }))
        .map(|r| r.at)
        .collect();
    prop_assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "transition times go back"
    );
    prop_assert!(
        audit.windows(2).all(|w| w[0].at <= w[1].at),
        "record times go back"
    );
    prop_assert!(
        matches!(
            audit.last().map(|r| &r.what),
            Some(Entry::InstanceCompleted)
        ),
        "last record is {:?}",
        audit.last()
    );
    prop_assert_eq!(
        audit
            .iter()
            .filter(|r| matches!(r.what, Entry::InstanceCompleted))
            .count(),
        1
    );
    prop_assert_eq!(
        notifies.load(Ordering::SeqCst),
        inst.tasks().len(),
        "Notify events vs. completed tasks"
    );
    let denied = audit
        .iter()
        .filter(|r| matches!(r.what, Entry::Denied { .. }))
        .count();
    if !probe {
        prop_assert_eq!(denied, 0);
    }
    Ok(())
}

fn picks() -> impl Strategy<Value = Vec<Pick>> {
    prop::collection::vec(any::<Pick>(), 1..48)
}

/// `cases` cases, unless `PROPTEST_CASES` asks for another number.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        // Failures are reported, not persisted: this test writes no files.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn generated_definitions_load(g in definition()) {
        load(&g)?;
    }

    #[test]
    fn generated_runs_complete(g in definition(), v in -1000i64..1000, picks in picks()) {
        run(&g, v, &picks, false)?;
    }

    #[test]
    fn informed_role_is_always_denied(g in definition(), v in -1000i64..1000, picks in picks()) {
        run(&g, v, &picks, true)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Loader robustness
// ---------------------------------------------------------------------------------------------

/// The shipped definitions, read at test time.
fn shipped() -> &'static [(String, Vec<u8>)] {
    static FILES: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/process-defs");
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .expect("process-defs exists")
            .map(|e| e.expect("readable dir entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .map(|p| {
                let bytes = std::fs::read(&p).expect("readable definition");
                (p.display().to_string(), bytes)
            })
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no shipped definitions in {dir}");
        files
    })
}

/// Loads `text`; it may fail, but must not panic, and a failure must be well-formed: problems
/// that display, are not I/O problems, and have a location inside the text. With `strict`, every
/// problem must have a location (`from_yaml` promises "every problem found, with line and
/// column"); otherwise only semantic problems must.
fn check_load(text: &str, strict: bool) -> Result<(), TestCaseError> {
    match ProcessDef::from_yaml(text) {
        Ok(def) => {
            let _ = (def.to_mermaid(), def.to_dot());
        }
        Err(e) => {
            let shown = e.to_string();
            prop_assert!(!e.problems.is_empty(), "an error without problems");
            prop_assert!(!shown.is_empty());
            let lines = text.lines().count() as u32 + 1;
            for p in &e.problems {
                let _ = p.to_string();
                prop_assert!(!matches!(p.kind, ProblemKind::Io(_)), "{p}");
                match p.location {
                    Some(l) => prop_assert!(
                        l.line >= 1 && l.line <= lines,
                        "location {l} outside the text ({lines} lines): {p}"
                    ),
                    None => prop_assert!(
                        !strict && matches!(p.kind, ProblemKind::Syntax(_)),
                        "a problem without location: {p:?}"
                    ),
                }
            }
        }
    }
    Ok(())
}

#[derive(Clone, Debug)]
enum ByteEdit {
    Replace(Index, u8),
    Insert(Index, u8),
    Delete(Index),
}

fn a_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        any::<u8>(),
        select(b":-[]{}&*!|>'\"#\n \t%@`,?~0123456789".to_vec()),
    ]
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        (any::<Index>(), a_byte()).prop_map(|(i, b)| ByteEdit::Replace(i, b)),
        (any::<Index>(), a_byte()).prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        any::<Index>().prop_map(ByteEdit::Delete),
    ]
}

fn apply_bytes(bytes: &[u8], edits: &[ByteEdit]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for e in edits {
        match *e {
            ByteEdit::Replace(i, b) if !out.is_empty() => {
                let i = i.index(out.len());
                out[i] = b;
            }
            ByteEdit::Insert(i, b) => {
                let i = i.index(out.len() + 1);
                out.insert(i, b);
            }
            ByteEdit::Delete(i) if !out.is_empty() => {
                let i = i.index(out.len());
                out.remove(i);
            }
            _ => {}
        }
    }
    out
}

#[derive(Clone, Debug)]
enum LineEdit {
    Delete(Index),
    Duplicate(Index),
    Swap(Index, Index),
    RenameKey(Index, String),
}

const KEYS: &[&str] = &[
    "id",
    "version",
    "name",
    "name_zh",
    "roles",
    "variables",
    "nodes",
    "kind",
    "next",
    "routes",
    "when",
    "default",
    "to",
    "raci",
    "responsible",
    "accountable",
    "consulted",
    "informed",
    "handler",
    "due",
    "remind",
    "escalate",
    "type",
    "enum",
    "required",
    "start",
    "end",
];

fn line_edit() -> impl Strategy<Value = LineEdit> {
    let word = prop_oneof!["[a-z_]{1,12}", select(KEYS).prop_map(str::to_owned)];
    prop_oneof![
        any::<Index>().prop_map(LineEdit::Delete),
        any::<Index>().prop_map(LineEdit::Duplicate),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| LineEdit::Swap(a, b)),
        (any::<Index>(), word).prop_map(|(i, w)| LineEdit::RenameKey(i, w)),
    ]
}

fn apply_lines(text: &str, edits: &[LineEdit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for e in edits {
        if lines.is_empty() {
            break;
        }
        let n = lines.len();
        match e {
            LineEdit::Delete(i) => {
                lines.remove(i.index(n));
            }
            LineEdit::Duplicate(i) => {
                let i = i.index(n);
                lines.insert(i, lines[i].clone());
            }
            LineEdit::Swap(a, b) => lines.swap(a.index(n), b.index(n)),
            LineEdit::RenameKey(i, word) => {
                // The lines with a `key:`, e.g. `  kind: user_task` or `- { when: ..`.
                let keyed: Vec<usize> = (0..n).filter(|&j| lines[j].contains(':')).collect();
                if keyed.is_empty() {
                    continue;
                }
                let line = &mut lines[keyed[i.index(keyed.len())]];
                let indent = line.len() - line.trim_start().len();
                let mut start = indent;
                if line[start..].starts_with("- ") {
                    start += 2;
                }
                if let Some(colon) = line[start..].find(':') {
                    line.replace_range(start..start + colon, word);
                }
            }
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

fn a_file() -> impl Strategy<Value = Index> {
    any::<Index>()
}

#[test]
fn shipped_definitions_load() {
    for (path, bytes) in shipped() {
        let text = std::str::from_utf8(bytes).expect("UTF-8");
        if let Err(e) = ProcessDef::from_yaml(text) {
            panic!("{path} does not load: {e}");
        }
    }
}

proptest! {
    // Parsing is cheap: many cases find rare shapes (a repeated top-level key).
    #![proptest_config(config(512))]

    #[test]
    fn byte_mutations_never_panic(
        file in a_file(),
        edits in prop::collection::vec(byte_edit(), 1..=4),
    ) {
        let (_, bytes) = &shipped()[file.index(shipped().len())];
        let mutated = apply_bytes(bytes, &edits);
        check_load(&String::from_utf8_lossy(&mutated), false)?;
    }

    #[test]
    fn line_mutations_never_panic(
        file in a_file(),
        edits in prop::collection::vec(line_edit(), 1..=3),
    ) {
        let (_, bytes) = &shipped()[file.index(shipped().len())];
        let mutated = apply_lines(&String::from_utf8_lossy(bytes), &edits);
        check_load(&mutated, false)?;
    }

    #[test]
    fn mutation_errors_have_locations(
        file in a_file(),
        bytes in prop::collection::vec(byte_edit(), 0..=2),
        lines in prop::collection::vec(line_edit(), 0..=2),
    ) {
        let (_, original) = &shipped()[file.index(shipped().len())];
        let mutated = apply_bytes(original, &bytes);
        let mutated = apply_lines(&String::from_utf8_lossy(&mutated), &lines);
        check_load(&mutated, true)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile inputs
// ---------------------------------------------------------------------------------------------

/// Loads `text` on another thread (with the default stack) and expects an error within a time
/// limit: no panic, no hang.
fn expect_err(what: &str, text: String) {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let r = ProcessDef::from_yaml(&text).map(|_| ()).map_err(|e| {
            let shown = e.to_string();
            (e, shown)
        });
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Ok(())) => panic!("{what}: loaded"),
        Ok(Err((e, shown))) => {
            assert!(!e.problems.is_empty(), "{what}: no problems");
            assert!(!shown.is_empty(), "{what}: empty message");
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("{what}: hangs"),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            let _ = handle.join();
            panic!("{what}: the loader panicked");
        }
    }
    handle.join().expect("no panic");
}

#[test]
fn alias_bomb_is_refused() {
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    let mut text = format!("a: &a [{}]\n", ["\"lol\""; 9].join(","));
    for w in names.windows(2) {
        let refs = vec![format!("*{}", w[0]); 9].join(",");
        text.push_str(&format!("{}: &{} [{refs}]\n", w[1], w[1]));
    }
    expect_err("billion laughs", text.clone());
    // The same bomb under a key a definition has, expanded where a string is expected.
    let nested = format!(
        "id: x\nversion: 1\nname: *i\nroles:\n{}nodes: {{}}\n",
        text.lines().map(|l| format!("  {l}\n")).collect::<String>()
    );
    expect_err("billion laughs in a definition", nested);
}

/// `from_yaml` promises every problem "with line and column"; a repeated top-level key is a
/// problem the YAML has a location for.
#[test]
fn duplicate_key_has_a_location() {
    let yaml = "id: c\nid: c\nversion: 1\nname: C\nroles: {}\nnodes:\n  \
                start: { kind: start, next: end }\n  end: { kind: end }\n";
    let e = ProcessDef::from_yaml(yaml).expect_err("a repeated key is an error");
    assert!(
        e.problems.iter().all(|p| p.location.is_some()),
        "problems without location: {e:?}"
    );
}

/// A condition doing integer arithmetic on a declared non-negative `integer` variable.
#[test]
fn integer_arithmetic_on_non_negative_values() {
    let yaml = "id: c\nversion: 1\nname: C\nroles: {}\nvariables:\n  \
                v: { type: integer, required: true }\nnodes:\n  \
                start: { kind: start, next: g }\n  \
                g: { kind: exclusive, routes: [{ when: \"v % 2 == 0\", to: end }, { default: true, to: end }] }\n  \
                end: { kind: end }\n";
    let engine = Engine::new();
    engine.deploy(ProcessDef::from_yaml(yaml).unwrap()).unwrap();
    for v in [-4i64, 0, 5] {
        let mut vars = Vars::new();
        vars.insert("v".into(), v.into());
        let started = engine.start("c", vars);
        assert!(started.is_ok(), "v = {v}: {started:?}");
    }
}

#[test]
fn deep_nesting_is_refused() {
    expect_err(
        "10_000 nested flow sequences",
        format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
    );
    expect_err("10_000 unclosed flow sequences", "[".repeat(10_000));
    expect_err(
        "10_000 nested flow mappings",
        format!("{}{}", "{a: ".repeat(10_000), "}".repeat(10_000)),
    );
    expect_err(
        "nested sequences as a definition value",
        format!(
            "id: x\nversion: 1\nname: {}{}\nroles: {{}}\nnodes: {{}}\n",
            "[".repeat(10_000),
            "]".repeat(10_000)
        ),
    );
    let block: String = (0..2_000)
        .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
        .collect();
    expect_err("2_000 nested block mappings", block);
}

#[test]
fn empty_inputs_are_refused() {
    for text in [
        "",
        "---",
        "---\n",
        "...\n",
        "~",
        "null",
        "\n\n",
        "# only a comment\n",
        "---\n---\n",
    ] {
        expect_err(&format!("{text:?}"), text.to_owned());
    }
}
