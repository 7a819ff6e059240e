//! The parent side: runs each input in a child process (this binary again, with `--child`)
//! under a CPU-time, wall-time and address-space limit, a few at a time, and classifies how each
//! child ended.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::child::Kind;

/// The limits a child runs under.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    pub(crate) cpu_secs: u64,
    pub(crate) wall: Duration,
    pub(crate) memory_mb: u64,
    pub(crate) stack_kb: usize,
    /// The deepest value the driver builds (it hands the engine values far deeper than the
    /// 32 levels it accepts).
    pub(crate) max_depth: usize,
}

/// How the limits are applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limiter {
    /// `prlimit --as --cpu --core=0 -- child...` (util-linux).
    Prlimit,
    /// `sh -c 'ulimit -v; ulimit -t; exec child...'`.
    Shell,
    /// Neither works: the wall-time limit alone (the parent still survives a crash).
    WallOnly,
}

impl Limiter {
    /// The first of prlimit, a shell's `ulimit`, or nothing, that works here; the environment
    /// variable `FUZZ_LIMITER` (`prlimit`, `sh`, `none`) picks one, to try the fallbacks.
    pub(crate) fn detect() -> Limiter {
        match std::env::var("FUZZ_LIMITER").as_deref() {
            Ok("prlimit") => return Limiter::Prlimit,
            Ok("sh") => return Limiter::Shell,
            Ok("none") => return Limiter::WallOnly,
            _ => {}
        }
        let quiet = |c: &mut Command| {
            c.stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if quiet(Command::new("prlimit").args([
            "--as=2147483648",
            "--cpu=5",
            "--core=0",
            "--",
            "true",
        ])) {
            Limiter::Prlimit
        } else if quiet(
            Command::new("sh").args(["-c", "ulimit -v 2097152 && ulimit -t 5 && exec true"]),
        ) {
            Limiter::Shell
        } else {
            Limiter::WallOnly
        }
    }

    /// A short description for the summary line.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Limiter::Prlimit => "prlimit",
            Limiter::Shell => "sh ulimit",
            Limiter::WallOnly => "no prlimit or ulimit: wall time only",
        }
    }
}

/// One input to run.
#[derive(Clone, Debug)]
pub(crate) struct Input {
    /// Its number in the run (or in the regression list).
    pub(crate) index: u64,
    pub(crate) kind: Kind,
    /// For a scenario: the shipped definition it runs against.
    pub(crate) def: Option<String>,
    /// The seed of the child's random API calls.
    pub(crate) seed: u64,
    /// `deep=N`: every deep value the driver makes is nested N levels, and it first hands one
    /// to each call that takes variables.
    pub(crate) deep: Option<usize>,
    /// `fault=NAME` (`--self-test`): the child commits this fault instead of running the input.
    pub(crate) fault: Option<String>,
    pub(crate) data: Vec<u8>,
    /// Where it came from: a corpus file and the mutations applied.
    pub(crate) origin: String,
    /// The mutations applied.
    pub(crate) ops: Vec<&'static str>,
}

impl Input {
    /// The first line of a saved input: what the replay needs to run it the same way.
    pub(crate) fn header(&self) -> String {
        let def = self
            .def
            .as_ref()
            .map(|d| format!(" def={d}"))
            .unwrap_or_default();
        let deep = self.deep.map(|n| format!(" deep={n}")).unwrap_or_default();
        let fault = self
            .fault
            .as_ref()
            .map(|f| format!(" fault={f}"))
            .unwrap_or_default();
        format!(
            "# fuzz: {}{def} seed={}{deep}{fault}",
            self.kind.as_str(),
            self.seed
        )
    }

    /// A saved input: the header line, then the input.
    pub(crate) fn file_bytes(&self) -> Vec<u8> {
        let mut out = self.header().into_bytes();
        out.push(b'\n');
        out.extend_from_slice(&self.data);
        out
    }

    /// Reads a saved input (a regression file or a saved failure).
    ///
    /// # Errors
    /// The file has no `# fuzz: KIND [def=NAME] [seed=N]` first line.
    pub(crate) fn parse_file(index: u64, name: &str, bytes: &[u8]) -> Result<Input, String> {
        let split = bytes
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(bytes.len());
        let header = String::from_utf8_lossy(&bytes[..split]);
        let rest = header
            .strip_prefix("# fuzz:")
            .ok_or_else(|| format!("{name}: the first line must be '# fuzz: def|calendar|scenario [def=NAME] [seed=N] [deep=N]'"))?;
        let mut words = rest.split_whitespace();
        let kind = words
            .next()
            .and_then(Kind::parse)
            .ok_or_else(|| format!("{name}: unknown kind in '{header}'"))?;
        let (mut def, mut seed, mut deep, mut fault) = (None, 1, None, None);
        for word in words {
            match word.split_once('=') {
                Some(("def", d)) => def = Some(d.to_owned()),
                Some(("seed", s)) => {
                    seed = s.parse().map_err(|_| format!("{name}: bad seed '{s}'"))?
                }
                Some(("deep", n)) => {
                    deep = Some(n.parse().map_err(|_| format!("{name}: bad deep '{n}'"))?)
                }
                Some(("fault", f)) => fault = Some(f.to_owned()),
                _ => return Err(format!("{name}: unknown word '{word}' in the header")),
            }
        }
        if kind == Kind::Scenario && def.is_none() {
            return Err(format!(
                "{name}: a scenario needs def=NAME (a file in process-defs/)"
            ));
        }
        Ok(Input {
            index,
            kind,
            def,
            seed,
            deep,
            fault,
            data: bytes.get(split + 1..).unwrap_or_default().to_vec(),
            origin: name.to_owned(),
            ops: Vec::new(),
        })
    }
}

/// How a child ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It ran to the end: whether the input loaded, the API calls made, the features seen.
    Ok {
        loaded: bool,
        calls: u64,
        features: Vec<String>,
    },
    /// It failed: a short class (`panic`, `stack-overflow`, `hang`, ...) and the details.
    Failed { class: &'static str, detail: String },
}

/// A finished child.
#[derive(Debug)]
pub(crate) struct Ran {
    pub(crate) input: Input,
    pub(crate) verdict: Verdict,
    pub(crate) elapsed: Duration,
    /// The child's stderr, cut to its last 8 KiB.
    pub(crate) stderr: String,
}

struct Running {
    input: Input,
    child: Child,
    started: Instant,
    slot: usize,
}

/// Runs children: this binary with `--child`.
#[derive(Clone)]
pub(crate) struct Runner {
    pub(crate) exe: PathBuf,
    pub(crate) root: PathBuf,
    pub(crate) scratch: PathBuf,
    pub(crate) limits: Limits,
    pub(crate) limiter: Limiter,
    pub(crate) jobs: usize,
}

impl Runner {
    fn file(&self, slot: usize, what: &str) -> PathBuf {
        self.scratch.join(format!("slot{slot}.{what}"))
    }

    fn spawn(&self, input: Input, slot: usize) -> Result<Running, String> {
        let path = self.file(slot, "yaml");
        std::fs::write(&path, &input.data).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut args: Vec<String> = vec![
            "--child".into(),
            input.kind.as_str().into(),
            "--seed".into(),
            input.seed.to_string(),
            "--root".into(),
            self.root.display().to_string(),
            "--scratch".into(),
            self.scratch.display().to_string(),
            "--stack-kb".into(),
            self.limits.stack_kb.to_string(),
            "--max-depth".into(),
            self.limits.max_depth.to_string(),
        ];
        if let Some(def) = &input.def {
            args.extend(["--def".into(), def.clone()]);
        }
        if let Some(deep) = input.deep {
            args.extend(["--deep".into(), deep.to_string()]);
        }
        if let Some(fault) = &input.fault {
            args.extend(["--fault".into(), fault.clone()]);
        }
        args.push(path.display().to_string());
        let mut command = match self.limiter {
            Limiter::Prlimit => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--as={}", self.limits.memory_mb << 20))
                    // SIGXCPU at the soft limit (a timeout), SIGKILL a second later.
                    .arg(format!(
                        "--cpu={}:{}",
                        self.limits.cpu_secs,
                        self.limits.cpu_secs + 1
                    ))
                    .args(["--core=0", "--"])
                    .arg(&self.exe);
                c
            }
            Limiter::Shell => {
                let mut c = Command::new("sh");
                let script = "ulimit -v \"$1\"; ulimit -S -t \"$2\"; ulimit -H -t $(($2 + 1)); ulimit -c 0; shift 2; exec \"$@\"";
                c.args(["-c", script, "sh"])
                    .arg((self.limits.memory_mb << 10).to_string())
                    .arg(self.limits.cpu_secs.to_string())
                    .arg(&self.exe);
                c
            }
            Limiter::WallOnly => Command::new(&self.exe),
        };
        let open = |what| File::create(self.file(slot, what)).map_err(|e| format!("{what}: {e}"));
        command
            .args(&args)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(open("out")?)
            .stderr(open("err")?);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start a child: {e}"))?;
        Ok(Running {
            input,
            child,
            started: Instant::now(),
            slot,
        })
    }

    /// Runs every input, `jobs` at a time; results come back in input order.
    ///
    /// # Errors
    /// A child cannot be started, or its files written.
    pub(crate) fn run_all(&self, inputs: Vec<Input>) -> Result<Vec<Ran>, String> {
        let total = inputs.len();
        let mut queue = inputs.into_iter().enumerate();
        let mut running: Vec<(usize, Running)> = Vec::new();
        let mut done: Vec<Option<Ran>> = (0..total).map(|_| None).collect();
        let mut free: Vec<usize> = (0..self.jobs.max(1)).rev().collect();
        let mut pause = Duration::from_micros(100);
        loop {
            while let Some(slot) = free.pop() {
                match queue.next() {
                    Some((i, input)) => running.push((i, self.spawn(input, slot)?)),
                    None => {
                        free.push(slot);
                        break;
                    }
                }
            }
            if running.is_empty() {
                break;
            }
            let mut progressed = false;
            let mut k = 0;
            while k < running.len() {
                let (_, r) = &mut running[k];
                let status = r
                    .child
                    .try_wait()
                    .map_err(|e| format!("waiting for a child: {e}"))?;
                let over = r.started.elapsed() > self.limits.wall;
                if status.is_none() && !over {
                    k += 1;
                    continue;
                }
                let (i, mut r) = running.swap_remove(k);
                let (status, hung) = match status {
                    Some(s) => (s, false),
                    None => {
                        let _ = r.child.kill();
                        (
                            r.child
                                .wait()
                                .map_err(|e| format!("waiting for a child: {e}"))?,
                            true,
                        )
                    }
                };
                free.push(r.slot);
                done[i] = Some(self.finish(r, status, hung));
                progressed = true;
            }
            if progressed {
                pause = Duration::from_micros(100);
            } else {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(5));
            }
        }
        Ok(done.into_iter().flatten().collect())
    }

    fn finish(&self, r: Running, status: ExitStatus, hung: bool) -> Ran {
        let elapsed = r.started.elapsed();
        let stdout = std::fs::read_to_string(self.file(r.slot, "out")).unwrap_or_default();
        let stderr = std::fs::read(self.file(r.slot, "err")).unwrap_or_default();
        let tail = stderr.len().saturating_sub(8 << 10);
        let stderr = String::from_utf8_lossy(&stderr[tail..]).into_owned();
        let verdict = classify(status, hung, &stdout, &stderr, &self.limits);
        Ran {
            input: r.input,
            verdict,
            elapsed,
            stderr,
        }
    }
}

fn signal_of(status: ExitStatus) -> Option<i32> {
    #[cfg(unix)]
    {
        std::os::unix::process::ExitStatusExt::signal(&status)
    }
    #[cfg(not(unix))]
    {
        let _ = status;
        None
    }
}

/// How a child ended, from its exit status, its output and whether it was killed for time.
fn classify(
    status: ExitStatus,
    hung: bool,
    stdout: &str,
    stderr: &str,
    limits: &Limits,
) -> Verdict {
    // Where it stopped: the child says each call before it makes it.
    let during = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("call: "))
        .map(|c| format!("; last call: {}", c.chars().take(200).collect::<String>()))
        .unwrap_or_default();
    let failed = |class, detail: String| Verdict::Failed {
        class,
        detail: format!("{detail}{during}"),
    };
    if hung {
        return failed(
            "hang",
            format!("still running after {:?} (wall time)", limits.wall),
        );
    }
    let overflow = stderr.contains("has overflowed its stack");
    let oom = stderr.contains("memory allocation of") || stderr.contains("capacity overflow");
    match (status.code(), signal_of(status)) {
        (Some(0), _) => {
            let mut loaded = false;
            let mut calls = 0;
            let mut features = Vec::new();
            for line in stdout.lines() {
                if let Some(f) = line.strip_prefix("f ") {
                    features.push(f.to_owned());
                } else if let Some(n) = line.strip_prefix("calls ") {
                    calls = n.parse().unwrap_or(0);
                } else if line == "loaded" {
                    loaded = true;
                }
            }
            Verdict::Ok {
                loaded,
                calls,
                features,
            }
        }
        (Some(101), _) => failed("panic", first_panic(stderr)),
        (Some(3), _) => failed("invariant", last_line(stderr)),
        (Some(2), _) => failed("harness", last_line(stderr)),
        (Some(code), _) => failed(
            "crash",
            format!("exit status {code}: {}", last_line(stderr)),
        ),
        (None, Some(6)) if overflow => {
            failed("stack-overflow", first_line_with(stderr, "overflowed"))
        }
        (None, Some(6)) if oom => failed(
            "out-of-memory",
            first_line_with(stderr, "memory allocation"),
        ),
        (None, Some(6)) => failed("abort", last_line(stderr)),
        (None, Some(11 | 7)) if overflow => {
            failed("stack-overflow", first_line_with(stderr, "overflowed"))
        }
        (None, Some(24)) => failed(
            "timeout",
            format!("over {} s of CPU time (SIGXCPU)", limits.cpu_secs),
        ),
        (None, Some(9)) => failed(
            "killed",
            format!(
                "SIGKILL (the CPU hard limit or the OOM killer): {}",
                last_line(stderr)
            ),
        ),
        (None, Some(sig)) => failed("signal", format!("signal {sig}: {}", last_line(stderr))),
        (None, None) => failed("crash", "no exit status".into()),
    }
}

fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .take(300)
        .collect()
}

fn first_line_with(text: &str, needle: &str) -> String {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or("")
        .chars()
        .take(300)
        .collect()
}

/// The panic's location line and message.
fn first_panic(stderr: &str) -> String {
    let mut lines = stderr.lines().skip_while(|l| !l.contains("panicked at"));
    let at = lines.next().unwrap_or("");
    let message = lines.next().unwrap_or("");
    format!("{at} {message}").chars().take(400).collect()
}

/// The scratch directory of one parent process.
pub(crate) fn scratch_dir(root: &Path) -> PathBuf {
    root.join("target")
        .join("fuzz-work")
        .join(std::process::id().to_string())
}
