//! Shared fixtures for the benches and the throughput example: generated definitions, an engine
//! with no-op handlers, drivers that run one instance of each workload, and a transition counter
//! that reads the audit trail. Everything here runs outside the timed loops.
//!
//! Not every target uses every helper.
#![allow(dead_code)] // Shared by several targets, each of which uses only part of it.

use std::fmt::Write as _;
use std::path::PathBuf;

use procflow::{
    Actor, Config, Engine, EngineBuilder, Entry, ExecError, InstanceId, ProcessDef, Vars,
    handler_fn,
};
use serde_json::json;

/// The process id of [`linear_def`].
pub(crate) const LINEAR: &str = "linear";
/// The process id of [`fanout_def`].
pub(crate) const FANOUT: &str = "fanout";
/// The process id of [`waiting_def`].
pub(crate) const WAITING: &str = "waiting";
/// The process id of [`complete_def`].
pub(crate) const COMPLETE: &str = "complete-gate";
/// The process id of [`message_race_def`].
pub(crate) const MESSAGE_RACE: &str = "message-race";
/// The process id of the shipped complaint definition.
pub(crate) const COMPLAINT: &str = "complaint-handling";

/// The path of a file in `process-defs/`.
pub(crate) fn process_def_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("process-defs")
        .join(file)
}

/// Every shipped definition: the `*.yaml` files directly in `process-defs/`, sorted by name.
pub(crate) fn shipped_defs() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("process-defs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("process-defs/ is readable")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Loads a shipped definition, panicking with the loader's message if it is invalid.
pub(crate) fn load(file: &str) -> ProcessDef {
    let path = process_def_path(file);
    ProcessDef::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Parses generated YAML, panicking with the loader's message if it is invalid.
pub(crate) fn parse(yaml: &str) -> ProcessDef {
    ProcessDef::from_yaml(yaml).unwrap_or_else(|e| panic!("generated definition: {e}"))
}

pub(crate) const HEADER_ROLES: &str =
    "roles: { clerk: { name: Clerk }, lead: { name: Lead }, audit: { name: Audit } }\n";

/// start → `n` service tasks with handler `noop` → end.
pub(crate) fn linear_def(n: usize) -> String {
    let mut y = format!("id: {LINEAR}\nversion: 1\nname: Linear {n}\n{HEADER_ROLES}nodes:\n");
    let first = if n == 0 {
        "end".to_owned()
    } else {
        "t1".into()
    };
    writeln!(y, "  start: {{ kind: start, next: {first} }}").unwrap();
    for i in 1..=n {
        let next = if i == n {
            "end".to_owned()
        } else {
            format!("t{}", i + 1)
        };
        writeln!(
            y,
            "  t{i}: {{ kind: service_task, name: Step {i}, handler: noop, next: {next} }}"
        )
        .unwrap();
    }
    y.push_str("  end: { kind: end }\n");
    y
}

/// start → parallel fork into `k` service tasks → join → end.
pub(crate) fn fanout_def(k: usize) -> String {
    let mut y = format!("id: {FANOUT}\nversion: 1\nname: Fan-out {k}\n{HEADER_ROLES}nodes:\n");
    y.push_str("  start: { kind: start, next: fork }\n");
    let branches: Vec<String> = (0..k).map(|i| format!("b{i}")).collect();
    writeln!(
        y,
        "  fork: {{ kind: parallel, next: [{}] }}",
        branches.join(", ")
    )
    .unwrap();
    for b in &branches {
        writeln!(
            y,
            "  {b}: {{ kind: service_task, name: Branch {b}, handler: noop, next: join }}"
        )
        .unwrap();
    }
    y.push_str("  join: { kind: parallel, next: end }\n  end: { kind: end }\n");
    y
}

/// start → one user task → end, with no variables: the instance waits at the task.
pub(crate) fn waiting_def() -> String {
    format!(
        "id: {WAITING}\nversion: 1\nname: Waiting\n{HEADER_ROLES}nodes:
  start: {{ kind: start, next: review }}
  review:
    kind: user_task
    name: Review
    raci: {{ responsible: [clerk], accountable: lead, informed: [audit] }}
    next: end
  end: {{ kind: end }}
"
    )
}

/// start → a race between a catch of message `confirmed` and a 48-hour timer → a user task →
/// end: the instance waits at the race until `Engine::deliver(id, "confirmed", ..)` decides it,
/// then waits at the task.
pub(crate) fn message_race_def() -> String {
    format!(
        "id: {MESSAGE_RACE}\nversion: 1\nname: Message race\n{HEADER_ROLES}messages: {{ confirmed: {{}} }}
nodes:
  start: {{ kind: start, next: race }}
  race: {{ kind: race, next: [confirmed, window] }}
  confirmed: {{ kind: catch, message: confirmed, next: follow_up }}
  window: {{ kind: timer, wait: 48h, next: follow_up }}
  follow_up:
    kind: user_task
    name: Follow up
    raci: {{ responsible: [clerk], accountable: lead }}
    next: end
  end: {{ kind: end }}
"
    )
}

/// start → user task → exclusive gateway on `approved` → one of two service tasks → end: the
/// fixture for the cost of one `complete`.
pub(crate) fn complete_def() -> String {
    format!(
        "id: {COMPLETE}\nversion: 1\nname: Complete then route\n{HEADER_ROLES}variables:
  approved: {{ type: boolean, default: false }}
nodes:
  start: {{ kind: start, next: review }}
  review:
    kind: user_task
    name: Review
    raci: {{ responsible: [clerk], accountable: lead, informed: [audit] }}
    next: gate
  gate:
    kind: exclusive
    routes:
      - {{ when: \"approved == true\", to: accept }}
      - {{ default: true, to: reject }}
  accept: {{ kind: service_task, name: Accept, handler: noop, next: end }}
  reject: {{ kind: service_task, name: Reject, handler: noop, next: end }}
  end: {{ kind: end }}
"
    )
}

/// A generated definition of about `n_nodes` nodes: a chain of blocks cycling through a task, an
/// exclusive block (gateway, two branches of two service tasks, a merging service task) and a
/// parallel block (fork, three branches of two tasks, join). Every tenth task is a user task.
pub(crate) fn big_def(n_nodes: usize) -> String {
    const SIZES: [usize; 3] = [1, 6, 8];
    let mut blocks = 0;
    let mut count = 2; // start and end
    while count < n_nodes {
        count += SIZES[blocks % 3];
        blocks += 1;
    }
    let entry = |b: usize| -> String {
        if b == blocks {
            return "end".into();
        }
        match b % 3 {
            0 => format!("t{b}"),
            1 => format!("x{b}"),
            _ => format!("f{b}"),
        }
    };
    let mut tasks = 0usize;
    let mut task = |y: &mut String, id: &str, next: &str| {
        tasks += 1;
        if tasks.is_multiple_of(10) {
            writeln!(
                y,
                "  {id}:\n    kind: user_task\n    name: Task {id}\n    raci: {{ responsible: [clerk], accountable: lead, informed: [audit] }}\n    next: {next}"
            )
            .unwrap();
        } else {
            writeln!(
                y,
                "  {id}: {{ kind: service_task, name: Task {id}, handler: noop, next: {next} }}"
            )
            .unwrap();
        }
    };
    let mut y = format!(
        "id: big\nversion: 1\nname: Generated {count} nodes\n{HEADER_ROLES}variables:\n  x: {{ type: integer, default: 0 }}\nnodes:\n"
    );
    writeln!(y, "  start: {{ kind: start, next: {} }}", entry(0)).unwrap();
    for b in 0..blocks {
        let next = entry(b + 1);
        match b % 3 {
            0 => task(&mut y, &format!("t{b}"), &next),
            1 => {
                writeln!(
                    y,
                    "  x{b}:\n    kind: exclusive\n    routes:\n      - {{ when: \"x > {b}\", to: x{b}a1 }}\n      - {{ default: true, to: x{b}b1 }}"
                )
                .unwrap();
                for br in ["a", "b"] {
                    task(&mut y, &format!("x{b}{br}1"), &format!("x{b}{br}2"));
                    task(&mut y, &format!("x{b}{br}2"), &format!("x{b}m"));
                }
                task(&mut y, &format!("x{b}m"), &next);
            }
            _ => {
                writeln!(
                    y,
                    "  f{b}: {{ kind: parallel, next: [f{b}a1, f{b}b1, f{b}c1] }}"
                )
                .unwrap();
                for br in ["a", "b", "c"] {
                    task(&mut y, &format!("f{b}{br}1"), &format!("f{b}{br}2"));
                    task(&mut y, &format!("f{b}{br}2"), &format!("j{b}"));
                }
                writeln!(y, "  j{b}: {{ kind: parallel, next: {next} }}").unwrap();
            }
        }
    }
    y.push_str("  end: { kind: end }\n");
    y
}

/// A config with the audit trail on or off and completed instances dropped, so benches do not
/// accumulate them.
pub(crate) fn config(audit: bool) -> Config {
    let mut c = Config::default();
    c.audit = audit;
    c.retain_completed = false;
    c
}

/// Deploys `defs` on an engine with `config`, after `customize` has added hooks (or anything
/// else) to the builder. Registers a no-op handler as `noop` and under every handler name the
/// definitions use.
pub(crate) fn engine_custom(
    defs: impl IntoIterator<Item = ProcessDef>,
    config: Config,
    customize: impl FnOnce(&mut EngineBuilder),
) -> Engine {
    let defs: Vec<ProcessDef> = defs.into_iter().collect();
    let mut b = builder_for(&defs, config);
    customize(&mut b);
    deploy_all(b.build(), defs)
}

/// As [`engine_with`], on `store`.
pub(crate) fn engine_on(
    defs: impl IntoIterator<Item = ProcessDef>,
    audit: bool,
    store: impl procflow::Store + 'static,
) -> Engine {
    let defs: Vec<ProcessDef> = defs.into_iter().collect();
    let engine = builder_for(&defs, config(audit))
        .open(store)
        .unwrap_or_else(|e| panic!("opening the store: {e}"));
    deploy_all(engine, defs)
}

/// A builder with `config`, the China calendar, and a no-op handler as `noop` and under every
/// handler name `defs` use.
pub(crate) fn builder_for(defs: &[ProcessDef], config: Config) -> EngineBuilder {
    let mut b = Engine::builder();
    b.config(config);
    // The shipped definitions count business time on the China calendar.
    let china = procflow::BusinessCalendar::from_file(process_def_path("calendars/china.yaml"))
        .expect("the shipped calendar loads");
    b.calendar("china", china);
    b.handler("noop", handler_fn(|_| Ok(Vars::new())));
    for def in defs {
        for (_, node) in def.nodes() {
            if let Some(h) = node.handler() {
                b.handler(h, handler_fn(|_| Ok(Vars::new())));
            }
        }
    }
    b
}

fn deploy_all(engine: Engine, defs: Vec<ProcessDef>) -> Engine {
    for def in defs {
        engine.deploy(def).expect("deploys");
    }
    engine
}

/// An engine with the audit trail on or off, completed instances dropped, no hooks, and no-op
/// handlers for `defs`.
pub(crate) fn engine_with(defs: impl IntoIterator<Item = ProcessDef>, audit: bool) -> Engine {
    engine_custom(defs, config(audit), |_| {})
}

/// Counts the `Transition` records one instance writes: `drive` runs it on a fresh engine that
/// keeps completed instances and audits, and returns its id.
pub(crate) fn count_transitions(
    defs: impl IntoIterator<Item = ProcessDef>,
    drive: impl FnOnce(&Engine) -> InstanceId,
) -> u64 {
    let mut c = Config::default();
    c.audit = true;
    c.retain_completed = true;
    let engine = engine_custom(defs, c, |_| {});
    let id = drive(&engine);
    let inst = engine.instance(id).expect("the instance is retained");
    assert_eq!(
        inst.status(),
        procflow::Status::Completed,
        "the driver runs the instance to its end"
    );
    inst.audit()
        .iter()
        .filter(|r| matches!(r.what, Entry::Transition { .. }))
        .count() as u64
}

/// Starts one instance of `process`, which runs to its end without waiting.
pub(crate) fn run_automatic(engine: &Engine, process: &str) -> InstanceId {
    engine.start(process, Vars::new()).expect("starts")
}

/// How to drive the complaint definition: an actor per user task (holding the task's first
/// responsible role) and the output that task's completion gives.
pub(crate) struct ComplaintDriver {
    /// Per node index: the actor that claims and completes its task.
    actors: Vec<Option<Actor>>,
    /// The node index of the diagnosis task, whose output picks the reconfiguration route.
    diagnose: usize,
}

impl ComplaintDriver {
    /// A driver for the deployed complaint definition.
    pub(crate) fn new(def: &ProcessDef) -> ComplaintDriver {
        let actors = def
            .nodes()
            .map(|(_, n)| {
                n.raci().map(|r| {
                    let role = r.responsible()[0].as_str();
                    Actor::new(format!("{role}-agent"), [role])
                })
            })
            .collect();
        let diagnose = def.node_id("diagnose").expect("a diagnose task").index();
        ComplaintDriver { actors, diagnose }
    }

    /// The number of route variants [`ComplaintDriver::run`] cycles through.
    pub(crate) const VARIANTS: usize = 4;

    /// Runs one instance to its end: variant bit 0 picks a network- or customer-originated
    /// ticket, bit 1 whether the service needs reconfiguration. Every task is claimed and then
    /// completed by an actor holding a responsible role.
    pub(crate) fn run(&self, engine: &Engine, variant: usize) -> InstanceId {
        let mut start = Vars::new();
        if variant & 1 == 1 {
            start.insert("origin".into(), json!("network"));
        } else {
            start.insert("origin".into(), json!("customer"));
            start.insert("channel".into(), json!("web"));
        }
        let reconfigure = variant & 2 == 2;
        let id = engine.start(COMPLAINT, start).expect("starts");
        loop {
            let open = match engine.tasks(id) {
                Ok(open) => open,
                // A completed instance is dropped when the engine does not retain it.
                Err(ExecError::UnknownInstance(_)) => break,
                Err(e) => panic!("{e}"),
            };
            if open.is_empty() {
                break;
            }
            for t in open {
                let actor = self.actors[t.node.index()]
                    .as_ref()
                    .expect("tasks sit on user tasks");
                engine.claim(t.id, actor).expect("claims");
                let mut out = Vars::new();
                if t.node.index() == self.diagnose {
                    out.insert("needs_reconfiguration".into(), json!(reconfigure));
                }
                engine.complete(t.id, actor, out).expect("completes");
            }
        }
        id
    }
}

/// Reads a `kB` field (`VmRSS`, `VmHWM`) of `/proc/self/status`; 0 where there is none.
pub(crate) fn proc_status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The hardware floor for one node transition: the least work any engine must do to move a
/// token from one node to the next and record it. A linear process of `steps` automatic nodes
/// runs `instances` times; each transition looks up the successor in an adjacency array,
/// updates the position and appends a 16-byte history record. Gives nanoseconds per
/// transition. (The same loop as the workspace's shared floor bench, kept here so that every
/// throughput run measures its own floor.)
pub(crate) fn floor_ns(steps: usize, instances: usize) -> f64 {
    #[derive(Clone, Copy)]
    struct Rec {
        instance: u32,
        from: u16,
        to: u16,
        at: u64,
    }
    let next: Vec<u16> = (0..steps as u16 + 2).map(|i| i + 1).collect();
    let end = steps as u16 + 1;
    let mut history: Vec<Rec> = Vec::with_capacity(1 << 20);
    let mut pos: Vec<u16> = Vec::with_capacity(instances);
    let t0 = std::time::Instant::now();
    let mut transitions: u64 = 0;
    for i in 0..instances {
        pos.push(0);
        let mut cur = 0u16;
        while cur != end {
            let to = next[cur as usize];
            history.push(Rec {
                instance: i as u32,
                from: cur,
                to,
                at: transitions,
            });
            cur = to;
            transitions += 1;
        }
        pos[i] = cur;
        if history.len() > (1 << 20) - 64 {
            std::hint::black_box(&history);
            history.clear();
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    std::hint::black_box((&pos, &history));
    secs * 1e9 / transitions as f64
}

/// The process id of [`lines_def`].
pub(crate) const LINES: &str = "lines";

/// The process id of [`lines_def`] with a user task (`user: true`).
pub(crate) const WAITING_LINES: &str = "waiting-lines";

/// The process id of [`plain_lines_def`].
pub(crate) const PLAIN_LINES: &str = "plain-lines";

/// start → one multi-instance task over `lines` (a list of `n` line numbers by default) → end.
/// With `user: false` a service task with handler `noop` runs per line (issue 12: "a 100-line
/// order, every line automatic"), collecting each line's (empty) output into `done`; with
/// `user: true` a user task opens per line, so the instance waits with `n` open items.
pub(crate) fn lines_def(n: usize, user: bool) -> String {
    let lines: Vec<String> = (0..n).map(|k| k.to_string()).collect();
    let (id, task) = if user {
        (
            WAITING_LINES,
            "kind: user_task, name: Line, raci: { responsible: [clerk], accountable: lead }",
        )
    } else {
        (LINES, "kind: service_task, name: Line, handler: noop")
    };
    format!(
        "id: {id}\nversion: 1\nname: Lines {n}\n{HEADER_ROLES}variables:
  lines: {{ type: array, default: [{}] }}
  out: {{ type: any }}
  done: {{ type: array }}
nodes:
  start: {{ kind: start, next: line }}
  line: {{ {task}, for_each: {{ in: lines, as: line, output: out, collect: done }}, next: end }}
  end: {{ kind: end }}
",
        lines.join(", ")
    )
}

/// As [`lines_def`] with `user: true`, without `for_each`: the same variables, one task. The
/// baseline the bytes per open item are measured against.
pub(crate) fn plain_lines_def(n: usize) -> String {
    lines_def(n, true)
        .replace(WAITING_LINES, PLAIN_LINES)
        .replace(
            ", for_each: { in: lines, as: line, output: out, collect: done }",
            "",
        )
}

/// Counts the steps one instance takes: its `Transition` records plus its multi-instance items
/// (`ItemCompleted` records: an item is one token's run through the task), on a fresh engine
/// as [`count_transitions`] does.
pub(crate) fn count_steps(
    defs: impl IntoIterator<Item = ProcessDef>,
    drive: impl FnOnce(&Engine) -> InstanceId,
) -> (u64, u64) {
    let mut c = Config::default();
    c.audit = true;
    c.retain_completed = true;
    let engine = engine_custom(defs, c, |_| {});
    let id = drive(&engine);
    let inst = engine.instance(id).expect("the instance is retained");
    assert_eq!(inst.status(), procflow::Status::Completed);
    let count = |f: fn(&Entry) -> bool| inst.audit().iter().filter(|r| f(&r.what)).count() as u64;
    (
        count(|e| matches!(e, Entry::Transition { .. })),
        count(|e| matches!(e, Entry::ItemCompleted { .. })),
    )
}

/// The process id of [`scoped_def`].
pub(crate) const SCOPED: &str = "scoped-repair";

/// A repair task for the network operations of the instance's local network, with a skill
/// (issue 14): every organisation check on the way.
pub(crate) fn scoped_def() -> String {
    r#"
id: scoped-repair
version: 1
name: Scoped repair
roles: { network_ops: { name: Network ops }, customer_service: { name: CS } }
variables: { local_network: { type: string } }
nodes:
  start: { kind: start, next: repair }
  repair:
    kind: user_task
    name: Repair
    raci: { responsible: [network_ops@local_network], accountable: customer_service }
    skills: [fiber_splicing]
    next: done
  done: { kind: end }
"#
    .to_owned()
}

/// An organisation of `people` people in `networks` local networks (under provinces of up to 50
/// networks, under one headquarters); person `pN` holds network_ops, with fibre splicing, in
/// network `netN % networks`. With 489 networks the tree has 500 units (1 + 10 + 489).
pub(crate) fn org_yaml(networks: usize, people: usize) -> String {
    let provinces = networks.div_ceil(49).max(1);
    let mut y = String::from(
        "organisation: big\nlevels: [headquarters, province, local_network]\nunits:\n  hq: { name: HQ, level: headquarters }\n",
    );
    for p in 0..provinces {
        let _ = writeln!(
            y,
            "  prov{p}: {{ name: P{p}, level: province, parent: hq }}"
        );
    }
    for n in 0..networks {
        let _ = writeln!(
            y,
            "  net{n}: {{ name: N{n}, level: local_network, parent: prov{} }}",
            n % provinces
        );
    }
    y.push_str("roles: { network_ops: { name: NO }, customer_service: { name: CS } }\n");
    y.push_str("skills: { fiber_splicing: { name: FS } }\npeople:\n");
    for i in 0..people {
        let _ = writeln!(
            y,
            "  p{i}: {{ name: P{i}, skills: [fiber_splicing], posts: [{{ unit: net{}, roles: [network_ops] }}] }}",
            i % networks
        );
    }
    y
}
