//! A mutation fuzzer on stable Rust (issue 11): it mutates the shipped definitions, calendars and
//! scenarios (bytes, lines, YAML features, CEL expressions), runs each input in a child process
//! under CPU, wall-time and memory limits, and reports every child that panicked, aborted,
//! overflowed its stack, ran out of memory, hung, or broke an invariant.
//!
//! ```text
//! cargo run --release --example fuzz -- --seconds 45 --seed 1   # replay the regressions, then fuzz
//! cargo run --release --example fuzz -- --regressions            # replay tests/fixtures/fuzz only
//! cargo run --release --example fuzz -- --replay FILE...         # run saved inputs, show their stderr
//! cargo run --release --example fuzz -- --self-test              # each kind of crash is detected
//! target/release/examples/fuzz --child-file FILE                 # one saved input, in this process
//! ```
//!
//! Options: `--jobs N` (children at a time; default: the cores, at most 2), `--cpu-limit S`
//! (5), `--wall-limit S` (20), `--memory-mb M` (2048, the child's address space), `--stack-kb K`
//! (2048, the stack of the thread that drives the library: a `std::thread`'s or a tokio
//! worker's), `--max-depth N` (200,000: the deepest value the driver hands the engine),
//! `--inputs N` (stop after N inputs instead of a time), `--out DIR` (`target/fuzz-failures`),
//! `--verbose` (how often each mutation's inputs load). `FUZZ_LIMITER=prlimit|sh|none` forces
//! how the limits are applied.
//!
//! The child (`--child KIND ... FILE`, run by the parent) loads the input with the loader of its
//! kind and drives what loads: see `fuzz/child.rs`. The mutation sequence is fixed by the seed:
//! input `i` is mutated from what the corpus held before it, and results are folded back into
//! the corpus in input order, so `--inputs N` runs are identical whatever `--jobs`.
//!
//! A failure is saved under `--out` as `SEED-INDEX-CLASS.yaml`: a header line
//! (`# fuzz: def seed=N`, `# fuzz: scenario def=complaint-handling seed=N`, ...; `deep=N` makes
//! the driver hand every call a value nested N levels first) and the input, with a `.txt` beside
//! it giving the mutations, the child's stderr (which names each API call before it is made)
//! and the command that replays it. Copied into `tests/fixtures/fuzz/` it becomes a regression
//! input; `tests/fixtures/fuzz/pending/` holds inputs of bugs not fixed yet, which runs do not
//! replay.

#[path = "fuzz/child.rs"]
mod child;
#[path = "fuzz/mutate.rs"]
mod mutate;
#[path = "fuzz/rng.rs"]
mod rng;
#[path = "fuzz/runner.rs"]
mod runner;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use child::Kind;
use rng::Rng;
use runner::{Input, Limiter, Limits, Ran, Runner, Verdict};

const USAGE: &str = "usage: fuzz [--seconds S | --inputs N] [--seed N] [--jobs N] [--cpu-limit S] \
[--wall-limit S] [--memory-mb M] [--stack-kb K] [--out DIR]
       fuzz --regressions [limits]
       fuzz --replay FILE... [limits]";

/// Inputs mutated and folded back into the corpus together; fixed, so that the run does not
/// depend on `--jobs`.
const BATCH: usize = 8;

/// The most inputs the corpus grows to (shipped files stay; additions are replaced).
const MAX_CORPUS: usize = 1_000;

/// The largest input kept in the corpus.
const MAX_KEPT: usize = 64 << 10;

struct Args {
    seconds: f64,
    inputs: Option<u64>,
    seed: u64,
    regressions_only: bool,
    self_test: bool,
    replay: Vec<PathBuf>,
    limits: Limits,
    jobs: usize,
    out: PathBuf,
    verbose: bool,
}

fn parse_args(args: &[String], root: &Path) -> Result<Args, String> {
    let mut a = Args {
        seconds: 20.0,
        inputs: None,
        seed: 1,
        regressions_only: false,
        self_test: false,
        replay: Vec::new(),
        limits: Limits {
            cpu_secs: 5,
            wall: Duration::from_secs(20),
            memory_mb: 2048,
            stack_kb: 2048,
            max_depth: 200_000,
        },
        jobs: std::thread::available_parallelism().map_or(1, |n| n.get().min(2)),
        out: root.join("target").join("fuzz-failures"),
        verbose: false,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        let number = |v: &String| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: '{v}' is not a number"))
        };
        match flag.as_str() {
            "--seconds" => {
                let v = value()?;
                a.seconds = v
                    .parse()
                    .map_err(|_| format!("--seconds: '{v}' is not a number"))?;
            }
            "--inputs" => a.inputs = Some(number(value()?)?),
            "--seed" => a.seed = number(value()?)?,
            "--jobs" => a.jobs = number(value()?)?.max(1) as usize,
            "--cpu-limit" => a.limits.cpu_secs = number(value()?)?.max(1),
            "--wall-limit" => a.limits.wall = Duration::from_secs(number(value()?)?.max(1)),
            "--memory-mb" => a.limits.memory_mb = number(value()?)?.max(64),
            "--stack-kb" => a.limits.stack_kb = number(value()?)?.max(64) as usize,
            "--max-depth" => a.limits.max_depth = number(value()?)?.max(1) as usize,
            "--out" => a.out = PathBuf::from(value()?),
            "--regressions" => a.regressions_only = true,
            "--verbose" => a.verbose = true,
            "--self-test" => a.self_test = true,
            "--replay" => {
                a.replay.extend(it.by_ref().map(PathBuf::from));
                if a.replay.is_empty() {
                    return Err(format!("--replay needs files\n{USAGE}"));
                }
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(
        args.first().map(String::as_str),
        Some("--child" | "--child-file")
    ) {
        return child_main(&args);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let args = match parse_args(&args, &root) {
        Ok(a) => a,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match parent(&args, &root) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("fuzz: {message}");
            ExitCode::from(2)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The child
// ---------------------------------------------------------------------------------------------

/// Set when a panic other than the harness's own deliberate ones happened, even one the library
/// caught.
static UNEXPECTED_PANIC: AtomicBool = AtomicBool::new(false);

/// The child's settings, from its command line.
struct ChildArgs {
    kind: Kind,
    seed: u64,
    root: PathBuf,
    scratch: PathBuf,
    def: Option<String>,
    deep: Option<usize>,
    fault: Option<String>,
    stack_kb: usize,
    max_depth: usize,
    bytes: Vec<u8>,
}

fn harness(message: String) -> ExitCode {
    eprintln!("harness: {message}");
    ExitCode::from(2)
}

/// `--child KIND [--seed N] [--root DIR] [--scratch DIR] [--def NAME] [--deep N] [--stack-kb K]
/// FILE` (as the parent runs it), or `--child-file SAVED [--stack-kb K]` (a saved input with its
/// header, for running under a debugger).
fn child_args(args: &[String]) -> Result<ChildArgs, String> {
    let mut c = ChildArgs {
        kind: Kind::Def,
        seed: 1,
        root: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        scratch: std::env::temp_dir(),
        def: None,
        deep: None,
        fault: None,
        stack_kb: 2048,
        max_depth: 200_000,
        bytes: Vec::new(),
    };
    let mut file = None;
    let saved = args.first().map(String::as_str) == Some("--child-file");
    let mut it = args.iter().skip(1);
    if !saved {
        c.kind = it
            .next()
            .and_then(|k| Kind::parse(k))
            .ok_or_else(|| format!("--child needs a kind, got {args:?}"))?;
    }
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--seed" => c.seed = value()?.parse().map_err(|_| "bad --seed")?,
            "--root" => c.root = PathBuf::from(value()?),
            "--scratch" => c.scratch = PathBuf::from(value()?),
            "--def" => c.def = Some(value()?),
            "--stack-kb" => c.stack_kb = value()?.parse().map_err(|_| "bad --stack-kb")?,
            "--deep" => c.deep = Some(value()?.parse().map_err(|_| "bad --deep")?),
            "--fault" => c.fault = Some(value()?),
            "--max-depth" => c.max_depth = value()?.parse().map_err(|_| "bad --max-depth")?,
            f if !f.starts_with("--") => file = Some(PathBuf::from(f)),
            f => return Err(format!("bad child argument '{f}'")),
        }
    }
    let file = file.ok_or("the child needs an input file")?;
    let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    if saved {
        let input = Input::parse_file(0, &file.display().to_string(), &bytes)?;
        (c.kind, c.seed, c.def, c.deep, c.fault, c.bytes) = (
            input.kind,
            input.seed,
            input.def,
            input.deep,
            input.fault,
            input.data,
        );
    } else {
        c.bytes = bytes;
    }
    Ok(c)
}

fn child_main(args: &[String]) -> ExitCode {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        // Handlers and hooks panic on purpose now and then: the engine must catch that.
        if !message.starts_with("fuzz: intentional") {
            UNEXPECTED_PANIC.store(true, Ordering::SeqCst);
            default_hook(info);
        }
    }));
    let ChildArgs {
        kind,
        seed,
        root,
        scratch,
        def,
        deep,
        fault,
        stack_kb,
        bytes,
        max_depth,
    } = match child_args(args) {
        Ok(c) => c,
        Err(message) => return harness(message),
    };
    let worker = std::thread::Builder::new()
        .name("fuzz-driver".into())
        .stack_size(stack_kb << 10)
        .spawn(move || {
            if let Some(fault) = fault {
                return commit_fault(&fault);
            }
            let text = String::from_utf8_lossy(&bytes);
            let job = child::Job {
                kind,
                text: &text,
                seed,
                root: &root,
                def: def.as_deref(),
                scratch: &scratch,
                deep,
                max_depth,
                stack_kb,
            };
            child::run(&job)
        });
    let result = match worker.map(std::thread::JoinHandle::join) {
        Ok(Ok(result)) => result,
        Ok(Err(_panic)) => return ExitCode::from(101),
        Err(e) => return harness(format!("cannot start the driver thread: {e}")),
    };
    if UNEXPECTED_PANIC.load(Ordering::SeqCst) {
        eprintln!("a panic was caught inside the library (see above)");
        return ExitCode::from(101);
    }
    match result {
        Ok(outcome) => {
            let mut out = std::io::stdout().lock();
            let mut text = String::new();
            if outcome.loaded {
                text.push_str("loaded\n");
            }
            text.push_str(&format!("calls {}\n", outcome.calls));
            for f in &outcome.features {
                text.push_str(&format!("f {f}\n"));
            }
            let _ = out.write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(message) if message.starts_with("harness") => {
            eprintln!("{message}");
            ExitCode::from(2)
        }
        Err(message) => {
            eprintln!("invariant: {message}");
            ExitCode::from(3)
        }
    }
}

/// Recurses until the stack runs out.
fn recurse(n: u64) -> u64 {
    let frame = std::hint::black_box([n; 64]);
    if n == 0 {
        0
    } else {
        recurse(n - 1).wrapping_add(frame[7])
    }
}

/// `--self-test`: commits a fault of each kind the parent must detect.
fn commit_fault(fault: &str) -> Result<child::Outcome, String> {
    match fault {
        "panic" => panic!("fuzz self-test: a panic"),
        "caught-panic" => {
            // A panic the library would catch (as it catches a handler's): still a failure.
            let _ = std::panic::catch_unwind(|| panic!("fuzz self-test: a caught panic"));
            Ok(child::Outcome::default())
        }
        "stack-overflow" => Ok(child::Outcome {
            calls: recurse(u64::MAX),
            ..child::Outcome::default()
        }),
        "out-of-memory" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                // Zeroed: the pages are never touched, so the address space runs out at once.
                hoard.push(vec![0; 64 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "busy-loop" => loop {
            std::hint::black_box(recurse(1));
        },
        "sleep" => {
            std::thread::sleep(Duration::from_secs(3_600));
            Ok(child::Outcome::default())
        }
        "abort" => std::process::abort(),
        "invariant" => Err("fuzz self-test: a broken invariant".into()),
        "none" => Ok(child::Outcome::default()),
        other => Err(format!("harness: unknown fault '{other}'")),
    }
}

// ---------------------------------------------------------------------------------------------
// The parent
// ---------------------------------------------------------------------------------------------

/// A corpus input.
struct Entry {
    kind: Kind,
    /// Whether it loaded (the shipped files do).
    loaded: bool,
    def: Option<String>,
    name: String,
    data: Vec<u8>,
}

/// The shipped files: every definition, calendar and scenario (paired with its definition as
/// `.ci/run` pairs them: the longest definition name it starts with).
fn shipped(root: &Path) -> Result<Vec<Entry>, String> {
    let list = |dir: &Path| -> Result<Vec<PathBuf>, String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        Ok(files)
    };
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let stem = |p: &Path| {
        p.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let name = |p: &Path| p.strip_prefix(root).unwrap_or(p).display().to_string();
    let defs_dir = root.join("process-defs");
    let defs = list(&defs_dir)?;
    let mut out = Vec::new();
    for p in &defs {
        out.push(Entry {
            kind: Kind::Def,
            loaded: true,
            def: None,
            name: name(p),
            data: read(p)?,
        });
    }
    for p in list(&defs_dir.join("calendars"))? {
        out.push(Entry {
            kind: Kind::Calendar,
            loaded: true,
            def: None,
            name: name(&p),
            data: read(&p)?,
        });
    }
    for p in list(&defs_dir.join("scenarios"))? {
        let s = stem(&p);
        let def = defs
            .iter()
            .map(|d| stem(d))
            .filter(|d| s.starts_with(&format!("{d}-")))
            .max_by_key(String::len)
            .ok_or_else(|| format!("no definition for scenario {}", p.display()))?;
        out.push(Entry {
            kind: Kind::Scenario,
            loaded: true,
            def: Some(def),
            name: name(&p),
            data: read(&p)?,
        });
    }
    Ok(out)
}

/// The regression inputs, in name order.
fn regressions(root: &Path) -> Result<Vec<Input>, String> {
    let dir = root.join("tests").join("fixtures").join("fuzz");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let name = p.strip_prefix(root).unwrap_or(p).display().to_string();
            Input::parse_file(i as u64, &name, &bytes)
        })
        .collect()
}

/// What a run counted.
#[derive(Default)]
struct Stats {
    run: u64,
    loaded: u64,
    calls: u64,
    by_kind: BTreeMap<&'static str, (u64, u64)>,
    /// Inputs run and loaded by mutation applied.
    by_op: BTreeMap<&'static str, (u64, u64)>,
    failures: Vec<(String, String)>,
    /// Failures by class and detail: the first few of each are saved.
    signatures: BTreeMap<String, u64>,
    slowest: Option<(Duration, String)>,
}

impl Stats {
    fn count(&mut self, ran: &Ran) {
        self.run += 1;
        let loaded = matches!(ran.verdict, Verdict::Ok { loaded: true, .. });
        let entry = self.by_kind.entry(ran.input.kind.as_str()).or_default();
        entry.0 += 1;
        entry.1 += u64::from(loaded);
        for op in &ran.input.ops {
            let entry = self.by_op.entry(op).or_default();
            entry.0 += 1;
            entry.1 += u64::from(loaded);
        }
        self.loaded += u64::from(loaded);
        if let Verdict::Ok { calls, .. } = &ran.verdict {
            self.calls += calls;
        }
        if self.slowest.as_ref().is_none_or(|(d, _)| ran.elapsed > *d) {
            self.slowest = Some((
                ran.elapsed,
                format!(
                    "#{} ({}; child {})",
                    ran.input.index,
                    ran.input.origin,
                    ran.input.header()
                ),
            ));
        }
    }
}

/// Reports a failure, saving the input the first few times its signature comes up.
fn report_failure(
    ran: &Ran,
    class: &str,
    detail: &str,
    args: &Args,
    label: &str,
    stats: &mut Stats,
) {
    // Thread ids differ from run to run: `thread 'fuzz-driver' (12345) panicked`.
    let normal: String = detail
        .split(' ')
        .filter(|w| {
            !(w.starts_with('(')
                && w.ends_with(')')
                && w[1..w.len() - 1].bytes().all(|b| b.is_ascii_digit()))
        })
        .collect::<Vec<_>>()
        .join(" ");
    // The call it failed in, by name: `...; last call: complete(t1.0, ...)` gives `complete`.
    let (message, call) = normal.split_once("; last call: ").unwrap_or((&normal, ""));
    let call = call.split(['(', ' ']).next().unwrap_or("");
    let signature = format!(
        "{class}: {} [in {call}]",
        message.chars().take(120).collect::<String>()
    );
    let seen = stats.signatures.entry(signature).or_default();
    *seen += 1;
    let mut line = format!(
        "FAIL [{class}] {label} #{} ({}, {} {}): {detail}",
        ran.input.index,
        ran.input.origin,
        ran.input.kind.as_str(),
        ran.input.data.len()
    );
    if *seen <= 3 {
        let file = args.out.join(format!(
            "{}-{}-{class}.yaml",
            if label == "regression" {
                "regression".to_owned()
            } else {
                args.seed.to_string()
            },
            ran.input.index
        ));
        let saved = std::fs::create_dir_all(&args.out)
            .and_then(|()| std::fs::write(&file, ran.input.file_bytes()))
            .and_then(|()| {
                let notes = format!(
                    "class: {class}\ndetail: {detail}\norigin: {}\nelapsed: {:?}\nreplay: cargo run --release --example fuzz -- --replay {}\n\nstderr (last 8 KiB):\n{}\n",
                    ran.input.origin,
                    ran.elapsed,
                    file.display(),
                    ran.stderr
                );
                std::fs::write(file.with_extension("txt"), notes)
            });
        match saved {
            Ok(()) => line.push_str(&format!("\n    saved {}", file.display())),
            Err(e) => line.push_str(&format!("\n    could not save {}: {e}", file.display())),
        }
        let last_call = ran.stderr.lines().rfind(|l| l.starts_with("call: "));
        let shown = ran.stderr.lines().filter(|l| {
            !l.trim().is_empty() && (!l.starts_with("call: ") || Some(*l) == last_call)
        });
        for l in shown.take(12) {
            line.push_str(&format!("\n    | {l}"));
        }
    }
    println!("{line}");
    stats.failures.push((class.to_owned(), line));
}

fn parent(args: &Args, root: &Path) -> Result<bool, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let scratch = runner::scratch_dir(root);
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let limiter = Limiter::detect();
    if limiter == Limiter::WallOnly {
        eprintln!(
            "fuzz: warning: neither prlimit nor sh's ulimit works here; children run with a wall-time limit only"
        );
    }
    let runner = Runner {
        exe,
        root: root.to_owned(),
        scratch: scratch.clone(),
        limits: args.limits.clone(),
        limiter,
        jobs: args.jobs,
    };
    println!(
        "fuzz: seed {}, {} job(s); child limits: {} s CPU, {:?} wall, {} MiB address space, {} KiB driver stack ({}); values up to {} levels deep",
        args.seed,
        args.jobs,
        args.limits.cpu_secs,
        args.limits.wall,
        args.limits.memory_mb,
        args.limits.stack_kb,
        limiter.describe(),
        args.limits.max_depth
    );
    let result = if args.self_test {
        self_test(&runner)
    } else if !args.replay.is_empty() {
        replay_files(&runner, args)
    } else {
        run(&runner, args, root)
    };
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Checks that every kind of failure is detected and classified: a child commits each fault on
/// purpose, under short limits.
fn self_test(runner: &Runner) -> Result<bool, String> {
    // Without prlimit or ulimit, the wall-time limit catches what the others would.
    let limited = runner.limiter != Limiter::WallOnly;
    let faults = [
        ("none", None),
        ("panic", Some("panic")),
        ("caught-panic", Some("panic")),
        ("stack-overflow", Some("stack-overflow")),
        (
            "out-of-memory",
            Some(if limited { "out-of-memory" } else { "hang" }),
        ),
        ("busy-loop", Some(if limited { "timeout" } else { "hang" })),
        ("sleep", Some("hang")),
        ("abort", Some("abort")),
        ("invariant", Some("invariant")),
    ];
    let mut limits = runner.limits.clone();
    limits.cpu_secs = 1;
    limits.wall = Duration::from_secs(3);
    limits.memory_mb = limits.memory_mb.min(1024);
    let runner = Runner {
        limits,
        ..runner.clone()
    };
    let inputs = faults
        .iter()
        .enumerate()
        .map(|(i, (fault, _))| Input {
            index: i as u64,
            kind: Kind::Def,
            def: None,
            seed: 1,
            deep: None,
            fault: Some((*fault).to_owned()),
            data: Vec::new(),
            origin: format!("self-test {fault}"),
            ops: Vec::new(),
        })
        .collect();
    let mut ok = true;
    for (ran, (fault, want)) in runner.run_all(inputs)?.iter().zip(faults) {
        let got = match &ran.verdict {
            Verdict::Ok { .. } => None,
            Verdict::Failed { class, .. } => Some(*class),
        };
        let good = got == want;
        ok &= good;
        println!(
            "self-test {fault:<15} -> {:<15} {} ({:.1} s)",
            got.unwrap_or("ok"),
            if good { "as expected" } else { "WRONG" },
            ran.elapsed.as_secs_f64()
        );
    }
    Ok(ok)
}

/// Runs saved inputs and shows what each child said.
fn replay_files(runner: &Runner, args: &Args) -> Result<bool, String> {
    let mut inputs = Vec::new();
    for (i, p) in args.replay.iter().enumerate() {
        let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
        inputs.push(Input::parse_file(
            i as u64,
            &p.display().to_string(),
            &bytes,
        )?);
    }
    let mut ok = true;
    for ran in runner.run_all(inputs)? {
        println!(
            "{} ({} bytes, {:?}): {:?}",
            ran.input.origin,
            ran.input.data.len(),
            ran.elapsed,
            ran.verdict
        );
        // The child's stderr, with only the last few of its `call:` lines.
        let lines: Vec<&str> = ran
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        let calls: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].starts_with("call: "))
            .collect();
        let keep_from = calls.len().saturating_sub(5);
        for (i, line) in lines.iter().enumerate() {
            let skipped = line.starts_with("call: ")
                && calls
                    .iter()
                    .position(|&c| c == i)
                    .is_some_and(|k| k < keep_from);
            if !skipped {
                println!("    | {line}");
            }
        }
        ok &= matches!(ran.verdict, Verdict::Ok { .. });
    }
    Ok(ok)
}

fn run(runner: &Runner, args: &Args, root: &Path) -> Result<bool, String> {
    let started = Instant::now();
    // 1. The regressions: every one must run to the end.
    let inputs = regressions(root)?;
    let count = inputs.len();
    let mut stats = Stats::default();
    // The small regression inputs seed the corpus too: short definitions with `any` variables
    // and conditions, good ground for the CEL mutations.
    let mut seeds = Vec::new();
    for ran in runner.run_all(inputs)? {
        match &ran.verdict {
            Verdict::Failed { class, detail } => {
                report_failure(&ran, class, detail, args, "regression", &mut stats)
            }
            Verdict::Ok { loaded, .. } if ran.input.data.len() <= 16 << 10 => seeds.push(Entry {
                kind: ran.input.kind,
                loaded: *loaded,
                def: ran.input.def.clone(),
                name: ran.input.origin.clone(),
                data: ran.input.data.clone(),
            }),
            Verdict::Ok { .. } => {}
        }
    }
    let regression_failures = stats.failures.len();
    println!(
        "regressions: {count} replayed from tests/fixtures/fuzz in {:.1} s, {regression_failures} failed",
        started.elapsed().as_secs_f64()
    );
    if args.regressions_only {
        return Ok(regression_failures == 0);
    }

    // 2. Fuzzing.
    let mut corpus = shipped(root)?;
    corpus.extend(seeds);
    let shipped_count = corpus.len();
    let dict = mutate::Dict::new(
        corpus
            .iter()
            .map(|e| std::str::from_utf8(&e.data).unwrap_or("")),
    );
    let mut seen: HashSet<String> = HashSet::new();
    let mut stats = Stats {
        failures: stats.failures,
        ..Stats::default()
    };
    let fuzz_started = Instant::now();
    let deadline = fuzz_started + Duration::from_secs_f64(args.seconds);
    let mut next_report = fuzz_started + Duration::from_secs(10);
    let mut index = 0u64;
    while args.inputs.map_or(Instant::now() < deadline, |n| index < n) {
        let size = args
            .inputs
            .map_or(BATCH as u64, |n| (n - index).min(BATCH as u64));
        let batch: Vec<Input> = (0..size)
            .map(|k| make_input(args.seed, index + k, &corpus, &dict))
            .collect();
        index += size;
        for ran in runner.run_all(batch)? {
            stats.count(&ran);
            match &ran.verdict {
                Verdict::Failed { class, detail } => {
                    report_failure(&ran, class, detail, args, "input", &mut stats)
                }
                Verdict::Ok {
                    features, loaded, ..
                } => {
                    let new = features
                        .iter()
                        .filter(|f| seen.insert((*f).clone()))
                        .count();
                    // Keep inputs that reached something new (loaded ones especially: most
                    // mutations of a loadable input do not load).
                    if new > 0
                        && ran.input.data.len() <= MAX_KEPT
                        && (*loaded || new > 1 || corpus.len() < shipped_count * 4)
                    {
                        let entry = Entry {
                            kind: ran.input.kind,
                            loaded: *loaded,
                            def: ran.input.def.clone(),
                            name: format!("#{}", ran.input.index),
                            data: ran.input.data.clone(),
                        };
                        if corpus.len() < MAX_CORPUS {
                            corpus.push(entry);
                        } else {
                            let at = shipped_count
                                + (ran.input.index as usize % (MAX_CORPUS - shipped_count));
                            corpus[at] = entry;
                        }
                    }
                }
            }
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(10);
            eprintln!(
                "[{:>4.0} s] {} inputs, {} loaded, corpus {}, features {}, failures {}",
                fuzz_started.elapsed().as_secs_f64(),
                stats.run,
                stats.loaded,
                corpus.len(),
                seen.len(),
                stats.failures.len()
            );
        }
    }
    let secs = fuzz_started.elapsed().as_secs_f64();
    let kinds: Vec<String> = stats
        .by_kind
        .iter()
        .map(|(k, (run, loaded))| format!("{k} {loaded}/{run}"))
        .collect();
    println!(
        "inputs: {} run in {secs:.1} s ({:.0}/s), {} loaded ({}), {} API calls; corpus {shipped_count} -> {}, features {}",
        stats.run,
        stats.run as f64 / secs.max(1e-9),
        stats.loaded,
        kinds.join(", "),
        stats.calls,
        corpus.len(),
        seen.len()
    );
    if args.verbose {
        for (op, (run, loaded)) in &stats.by_op {
            println!(
                "  {op:<28} {run:>7} run, {:>5.1}% loaded",
                100.0 * *loaded as f64 / (*run).max(1) as f64
            );
        }
    }
    if let Some((d, which)) = &stats.slowest {
        println!("slowest input: {which}, {:.0} ms", d.as_secs_f64() * 1e3);
    }
    if stats.failures.is_empty() {
        println!("failures: none");
        Ok(true)
    } else {
        println!(
            "failures: {} (by signature below; inputs saved under {})",
            stats.failures.len(),
            args.out.display()
        );
        for (signature, n) in &stats.signatures {
            println!("  {n:>5} x {signature}");
        }
        Ok(false)
    }
}

/// Input `index` of the run: a corpus entry, mutated (or, now and then, as it is, for another
/// random drive through the API).
fn make_input(seed: u64, index: u64, corpus: &[Entry], dict: &mutate::Dict) -> Input {
    let mut rng = Rng::derive(seed, index);
    // Definitions drive the engine: half the inputs; then scenarios, then calendars.
    let kind = match rng.below(10) {
        0..=4 => Kind::Def,
        5..=7 => Kind::Scenario,
        _ => Kind::Calendar,
    };
    let same: Vec<&Entry> = corpus.iter().filter(|e| e.kind == kind).collect();
    let loaded: Vec<&Entry> = same.iter().copied().filter(|e| e.loaded).collect();
    // Mostly an input that loads: most mutations of one that does not are refused early.
    let entry = if loaded.is_empty() || rng.chance(1, 4) {
        *rng.pick(&same)
    } else {
        *rng.pick(&loaded)
    };
    let other = *rng.pick(&same);
    let (data, ops) = if entry.loaded && rng.chance(1, 10) {
        (entry.data.clone(), vec!["as-is"])
    } else {
        mutate::mutate(&entry.data, &other.data, dict, &mut rng)
    };
    Input {
        index,
        kind: entry.kind,
        def: entry.def.clone(),
        seed: rng.next_u64(),
        deep: None,
        fault: None,
        data,
        origin: format!("{}; {}", entry.name, ops.join(", ")),
        ops,
    }
}
