//! `procflow`: validate definitions, draw them, simulate scenarios, check calendar
//! computations, report on a store's history, and predict with what-if models.

use std::process::ExitCode;

use std::path::Path;

use procflow::{
    BusinessCalendar, DurationSpec, HeatMetric, Organisation, ProcessDef, Report, ReportOptions,
    Scenario, Store, StoreError, whatif,
};

/// `print!` that ends the program quietly when stdout is closed (`procflow report | head`)
/// instead of panicking: the reader has what it wanted.
macro_rules! out {
    ($($arg:tt)*) => {
        write_out(format_args!($($arg)*))
    };
}

/// `println!`, as [`out!`].
macro_rules! outln {
    ($($arg:tt)*) => {
        write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` that ignores a closed stderr instead of panicking.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Writes to stdout; a closed pipe ends the program with status 0, another write error with 1
/// (after a line on stderr).
fn write_out(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        errln!("cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// One subcommand: its name, its usage lines (the first names it), the flags it takes and
/// the function that runs it. Adding a subcommand is one entry in [`COMMANDS`].
struct Command {
    name: &'static str,
    usage: &'static str,
    /// Every flag it takes, e.g. `--format` (`--help` and `-h` are always taken).
    flags: &'static [&'static str],
    run: fn(&[String]) -> Result<ExitCode, String>,
}

const COMMANDS: &[Command] = &[
    Command {
        name: "validate",
        usage: "procflow validate [--org ORGANISATION] FILE...
                  an organisation file (its top level names `organisation:`) is validated as
                  one; definitions are then also checked against every organisation given",
        flags: &["--org"],
        run: validate,
    },
    Command {
        name: "graph",
        usage: "procflow graph FILE [--format mermaid|dot]
  procflow graph --flows DIR|FILE... [--format mermaid|dot]",
        flags: &["--format", "--flows"],
        run: graph,
    },
    Command {
        name: "simulate",
        usage: "procflow simulate FILE [FILE...] --scenario SCENARIO [--calendar CALENDAR]
                  the first FILE is the one started; the others are definitions its
                  call activities call",
        flags: &["--scenario", "--calendar"],
        run: simulate,
    },
    Command {
        name: "calendar",
        usage: "procflow calendar CALENDAR --add DURATION --from INSTANT
                  prints the instant alone on stdout; on stderr, a line that it is
                  provisional (it uses a year computed from the statutory holidays)",
        flags: &["--add", "--from"],
        run: calendar,
    },
    Command {
        name: "report",
        usage: "procflow report --store FILE|postgres://URL [--process ID] [--since RFC3339|YYYY-MM-DD]
                  [--format table|csv|json] [--heatmap OUT.svg] [--metric mean-wait|breach-rate|rework-rate]
                  [--by KEY]   also groups the instances by a business key's value
                  [--calendars DIR]   where a process's calendar NAME is, as DIR/NAME.yaml
                  (by default process-defs/calendars): its durations are then business time",
        flags: &[
            "--store",
            "--process",
            "--since",
            "--format",
            "--heatmap",
            "--metric",
            "--by",
            "--calendars",
        ],
        run: report,
    },
    Command {
        name: "history",
        usage: "procflow history --store FILE|postgres://URL --key KEY=VALUE [--format table|json]
                  every instance holding the business key value, and their records in time order",
        flags: &["--store", "--key", "--format"],
        run: history,
    },
    Command {
        name: "whatif",
        usage: "procflow whatif MODEL.yaml [--compare OTHER.yaml] [--format table|csv|json]
                  [--heatmap OUT.svg] [--replications N] [--threads N] [--db STORE.db]
                  runs the model's replications on the engine (a manual clock), prints cycle
                  times, SLA met rate, waiting and handling per task, utilisation, escalations;
                  --compare runs OTHER with the same random numbers and prints the differences;
                  --db writes the first replication to a new SQLite store
  procflow whatif --from-store STORE.db --base MODEL.yaml --out FITTED.yaml [--check]
                  fits arrival rates, branch probabilities and log-normal handling times from
                  the store (staff, shifts and definitions from the base model); --check replays
                  the fitted model and compares its figures with the recorded ones",
        flags: &[
            "--compare",
            "--format",
            "--heatmap",
            "--replications",
            "--threads",
            "--db",
            "--from-store",
            "--base",
            "--out",
            "--check",
        ],
        run: whatif,
    },
    Command {
        name: "serve",
        usage: "procflow serve --store sqlite:PATH|postgres://URL|memory [--shared] [--org FILE] [--tokens FILE] [--listen ADDR] DEFS...
                  the HTTP API and the web console (built with --features server; PostgreSQL
                  also with --features postgres); DEFS are definition files or folders (a
                  folder's calendars/*.yaml are its calendars, its org/province.yaml and
                  org/tokens.yaml the default --org and --tokens); --shared: other processes
                  serve the same SQLite file (PostgreSQL is always shared); --listen with port 0
                  takes a free port, printed at start",
        flags: &["--store", "--org", "--tokens", "--listen", "--shared"],
        run: serve,
    },
];

/// The flags that take no value.
const SWITCHES: &[&str] = &["--flows", "--check", "--shared"];

/// The whole usage text: every subcommand's usage, then the general options.
fn usage() -> String {
    let mut text = String::from("usage:\n");
    for command in COMMANDS {
        text.push_str("  ");
        text.push_str(command.usage);
        text.push('\n');
    }
    text.push_str(
        "  procflow help [SUBCOMMAND] | --help | -h    this text (or one subcommand's) on stdout
  procflow --version | -V                      the version
exit status: 0 done, 1 the input is bad (errors on stderr), 2 the command line is wrong",
    );
    text
}

/// One subcommand's usage text.
fn usage_of(command: &Command) -> String {
    format!("usage:\n  {}", command.usage)
}

/// The usage text of the subcommand named `name`.
fn usage_for(name: &str) -> String {
    COMMANDS
        .iter()
        .find(|c| c.name == name)
        .map_or_else(usage, usage_of)
}

/// `procflow serve`, when built with the `server` feature.
fn serve(args: &[String]) -> Result<ExitCode, String> {
    #[cfg(feature = "server")]
    return serve::serve(args);
    #[cfg(not(feature = "server"))]
    {
        let _ = args;
        Err(
            "procflow serve: this binary was built without the server feature \
             (cargo run --release --features server --bin procflow -- serve ...)"
                .to_owned(),
        )
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let first = args.first().map(String::as_str);
    let command = first.and_then(|name| COMMANDS.iter().find(|c| c.name == name));
    let result = match (first, command) {
        (None, _) => Err(usage()),
        (Some("--help" | "-h"), _) => {
            outln!("{}", usage());
            Ok(ExitCode::SUCCESS)
        }
        (Some("help"), _) => match args.get(1) {
            None => {
                outln!("{}", usage());
                Ok(ExitCode::SUCCESS)
            }
            Some(name) => match COMMANDS.iter().find(|c| c.name == name) {
                Some(command) => {
                    outln!("{}", usage_of(command));
                    Ok(ExitCode::SUCCESS)
                }
                None => Err(format!("unknown subcommand '{name}'\n{}", usage())),
            },
        },
        (Some("--version" | "-V"), _) => {
            outln!("procflow {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        (Some(_), Some(command)) => run(command, &args[1..]),
        (Some(other), None) if other.starts_with('-') => {
            Err(format!("unknown flag '{other}'\n{}", usage()))
        }
        (Some(other), None) => Err(format!("unknown subcommand '{other}'\n{}", usage())),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            errln!("{message}");
            ExitCode::from(2)
        }
    }
}

/// Runs `command` on its arguments: `--help` prints its usage; an unknown flag is refused.
fn run(command: &Command, args: &[String]) -> Result<ExitCode, String> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        outln!("{}", usage_of(command));
        return Ok(ExitCode::SUCCESS);
    }
    if args.is_empty() {
        return Err(usage_of(command));
    }
    // A flag's value may itself start with `--` only where the flag is known; the values of
    // known flags are skipped.
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if command.flags.contains(&arg.as_str()) {
            if !SWITCHES.contains(&arg.as_str()) {
                rest.next();
            }
        } else if arg.starts_with("--") || (arg.starts_with('-') && arg.len() > 1) {
            return Err(format!(
                "unknown flag '{arg}' for procflow {}\n{}",
                command.name,
                usage_of(command)
            ));
        }
    }
    (command.run)(args)
}

fn validate(args: &[String]) -> Result<ExitCode, String> {
    let mut failed = false;
    let mut orgs: Vec<(String, Organisation)> = Vec::new();
    let mut defs: Vec<&String> = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (file, forced) = if arg == "--org" {
            (args.next().ok_or("--org needs a file")?, true)
        } else {
            (arg, false)
        };
        let is_org =
            forced || std::fs::read_to_string(file).is_ok_and(|t| procflow::is_organisation(&t));
        if !is_org {
            defs.push(file);
            continue;
        }
        match Organisation::from_file(file) {
            Ok(org) => {
                outln!(
                    "{file}: ok (organisation {}, {} units, {} people)",
                    org.id(),
                    org.units().len(),
                    org.people().len()
                );
                orgs.push((file.clone(), org));
            }
            Err(e) => {
                failed = true;
                errln!("{e}");
            }
        }
    }
    for file in defs {
        match ProcessDef::from_file(file) {
            Ok(def) => {
                let mut fits = true;
                for (org_file, org) in &orgs {
                    if let Err(e) = def.check_organisation(org) {
                        fits = false;
                        errln!("{e}\n  (against organisation {org_file})");
                    }
                }
                if fits {
                    outln!("{file}: ok ({}, {} nodes)", def.key(), def.nodes().count());
                } else {
                    failed = true;
                }
            }
            Err(e) => {
                failed = true;
                errln!("{e}");
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The value after `flag`, if the flag is present.
fn option<'a>(args: &'a [String], flag: &str) -> Result<Option<&'a str>, String> {
    match args.iter().position(|a| a == flag) {
        None => Ok(None),
        Some(i) => args
            .get(i + 1)
            .map(|v| Some(v.as_str()))
            .ok_or_else(|| format!("{flag} needs a value\n{}", usage())),
    }
}

fn load(file: Option<&String>) -> Result<Result<ProcessDef, ExitCode>, String> {
    let file = file.filter(|f| !f.starts_with("--")).ok_or_else(usage)?;
    Ok(ProcessDef::from_file(file).map_err(|e| {
        errln!("{e}");
        ExitCode::FAILURE
    }))
}

fn graph(args: &[String]) -> Result<ExitCode, String> {
    let format = option(args, "--format")?.unwrap_or("mermaid");
    if args.first().map(String::as_str) == Some("--flows") {
        return flows(&args[1..], format);
    }
    let def = match load(args.first())? {
        Ok(def) => def,
        Err(code) => return Ok(code),
    };
    match format {
        "mermaid" => out!("{}", def.to_mermaid()),
        "dot" => out!("{}", def.to_dot()),
        other => return Err(format!("unknown format '{other}': use mermaid or dot")),
    }
    Ok(ExitCode::SUCCESS)
}

/// `procflow graph --flows DIR|FILE...`: the message and call map of several definitions.
fn flows(args: &[String], format: &str) -> Result<ExitCode, String> {
    if !matches!(format, "mermaid" | "dot") {
        return Err(format!("unknown format '{format}': use mermaid or dot"));
    }
    let mut files = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--format" {
            rest.next();
            continue;
        }
        let path = std::path::Path::new(arg);
        if path.is_dir() {
            let mut found: Vec<_> = std::fs::read_dir(path)
                .map_err(|e| format!("{arg}: {e}"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.to_path_buf());
        }
    }
    if files.is_empty() {
        return Err(format!(
            "graph --flows needs a folder or files\n{}",
            usage()
        ));
    }
    let mut defs = Vec::new();
    let mut failed = false;
    for file in &files {
        match ProcessDef::from_file(file) {
            Ok(def) => defs.push(def),
            Err(e) => {
                failed = true;
                errln!("{e}");
            }
        }
    }
    if failed {
        return Ok(ExitCode::FAILURE);
    }
    let (map, warnings) = procflow::flow_map(&defs);
    for w in &warnings {
        errln!("warning: {w}");
    }
    match format {
        "dot" => out!("{}", procflow::flows_to_dot(&defs, &map)),
        _ => out!("{}", procflow::flows_to_mermaid(&defs, &map)),
    }
    Ok(ExitCode::SUCCESS)
}

fn simulate(args: &[String]) -> Result<ExitCode, String> {
    let scenario_file = option(args, "--scenario")?.ok_or_else(usage)?;
    let def = match load(args.first())? {
        Ok(def) => def,
        Err(code) => return Ok(code),
    };
    // The definitions the first one's call activities call: the other files before a flag.
    let mut called = Vec::new();
    for file in args[1..].iter().take_while(|a| !a.starts_with("--")) {
        match load(Some(file))? {
            Ok(def) => called.push(def),
            Err(code) => return Ok(code),
        }
    }
    let scenario = match Scenario::from_file(scenario_file) {
        Ok(s) => s,
        Err(e) => {
            errln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    // The calendar a definition names is `--calendar`, or calendars/NAME.yaml beside the file.
    let mut calendars = Vec::new();
    let mut names: Vec<String> = std::iter::once(&def)
        .chain(&called)
        .filter_map(|d| d.calendar().map(str::to_owned))
        .collect();
    names.sort();
    names.dedup();
    for name in names {
        let path = match option(args, "--calendar")? {
            Some(path) => std::path::PathBuf::from(path),
            None => std::path::Path::new(&args[0])
                .with_file_name("calendars")
                .join(format!("{name}.yaml")),
        };
        match BusinessCalendar::from_file(&path) {
            Ok(calendar) => calendars.push((name, calendar)),
            Err(e) => {
                errln!("{e}");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    let report = match scenario.run_all(std::iter::once(def).chain(called).collect(), calendars) {
        Ok(r) => r,
        Err(e) => {
            errln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    for line in &report.events {
        outln!("{line}");
    }
    for failure in &report.failures {
        errln!("{scenario_file}:{failure}");
    }
    if report.failures.is_empty() {
        errln!("{scenario_file}: scenario '{}' held", scenario.name());
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::FAILURE)
    }
}

/// Prints `INSTANT + DURATION` on the calendar, in the calendar's zone, alone on stdout so that
/// scripts can read it; warnings, and that the instant is provisional, go to stderr.
fn calendar(args: &[String]) -> Result<ExitCode, String> {
    let file = args
        .first()
        .filter(|f| !f.starts_with("--"))
        .ok_or_else(usage)?;
    let duration = option(args, "--add")?.ok_or_else(usage)?;
    let from = option(args, "--from")?.ok_or_else(usage)?;
    let fail = |message: String| {
        errln!("{message}");
        Ok(ExitCode::FAILURE)
    };
    let cal = match BusinessCalendar::from_file(file) {
        Ok(cal) => cal,
        Err(e) => return fail(e.to_string()),
    };
    let spec = match DurationSpec::parse(duration) {
        Ok(spec) => spec,
        Err(e) => return fail(e.to_string()),
    };
    let from = match chrono::DateTime::parse_from_rfc3339(from) {
        Ok(t) => t.to_utc(),
        Err(e) => {
            return fail(format!(
                "invalid instant '{from}': {e}; use RFC 3339, e.g. 2026-09-30T16:00:00+08:00"
            ));
        }
    };
    match spec.after(from, Some(&cal)) {
        Ok(due) => {
            outln!("{}", cal.rfc3339(due.value));
            for warning in &due.warnings {
                match warning {
                    // Not a problem, a status: e.g. "(provisional: 2027 computed from ...)".
                    procflow::CalendarWarning::Provisional { .. } => errln!("({warning})"),
                    _ => errln!("warning: {warning}"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => fail(format!("{file}: {e}")),
    }
}

/// Opens the SQLite store in `path`, which must exist; or, with a `postgres://` (or
/// `postgresql://`) URL, the PostgreSQL store it names (built with the `postgres` feature).
fn open_store(path: &Path) -> Result<Box<dyn Store>, StoreError> {
    let text = path.to_string_lossy();
    if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        #[cfg(feature = "postgres")]
        return Ok(Box::new(procflow::PostgresStore::connect(&text)?));
        #[cfg(not(feature = "postgres"))]
        return Err(StoreError::Other {
            path: path.to_path_buf(),
            detail: "this procflow was built without PostgreSQL: build it with --features postgres"
                .into(),
        });
    }
    Ok(Box::new(procflow::SqliteStore::open(path)?))
}

/// `--since`: an RFC 3339 instant, or a date (its midnight, UTC).
fn since(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.to_utc());
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
        .map_err(|_| {
            format!(
                "invalid --since '{text}': use RFC 3339 (2026-01-05T09:00:00+08:00) or a date (2026-01-05)"
            )
        })
}

/// Prints a store's history report; with `--heatmap`, also draws the process.
fn report(args: &[String]) -> Result<ExitCode, String> {
    let store_path = option(args, "--store")?.ok_or_else(usage)?;
    let process = option(args, "--process")?;
    let format = option(args, "--format")?.unwrap_or("table");
    if !matches!(format, "table" | "csv" | "json") {
        return Err(format!("unknown format '{format}': use table, csv or json"));
    }
    let heatmap = option(args, "--heatmap")?;
    let metric: HeatMetric = option(args, "--metric")?
        .unwrap_or("mean-wait")
        .parse()
        .map_err(|e| format!("{e}"))?;
    if heatmap.is_some() && process.is_none() {
        return Err(format!("--heatmap needs --process ID\n{}", usage()));
    }
    let mut options = ReportOptions::default();
    if let Some(p) = process {
        options = options.process(p);
    }
    if let Some(s) = option(args, "--since")? {
        options = options.since(since(s)?);
    }
    if let Some(key) = option(args, "--by")? {
        options = options.by_key(key);
    }
    let fail = |message: String| {
        errln!("{message}");
        Ok(ExitCode::FAILURE)
    };
    let store = match open_store(Path::new(store_path)) {
        Ok(store) => store,
        Err(e) => return fail(e.to_string()),
    };
    // The calendars the reported processes name: their durations are then business time.
    let defs = match Report::definitions(&*store, process) {
        Ok(defs) => defs,
        Err(e) => return fail(format!("{store_path}: {e}")),
    };
    let dir = Path::new(option(args, "--calendars")?.unwrap_or("process-defs/calendars"));
    let mut names: Vec<&str> = defs.iter().filter_map(|d| d.calendar()).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let path = dir.join(format!("{name}.yaml"));
        if !path.is_file() {
            errln!(
                "warning: no calendar '{name}' at {}: the processes on it are reported in wall-clock time (give --calendars DIR)",
                path.display()
            );
            continue;
        }
        match BusinessCalendar::from_file(&path) {
            Ok(calendar) => options = options.calendar(name, calendar),
            Err(e) => return fail(e.to_string()),
        }
    }
    let report = match Report::from_store(&*store, &options) {
        Ok(r) => r,
        Err(e) => return fail(format!("{store_path}: {e}")),
    };
    match format {
        "csv" => out!("{}", report.to_csv()),
        "json" => outln!("{}", report.to_json()),
        _ => out!("{}", report.to_table()),
    }
    if let (Some(out), Some(process)) = (heatmap, process) {
        let defs = match Report::definitions(&*store, Some(process)) {
            Ok(defs) => defs,
            Err(e) => return fail(format!("{store_path}: {e}")),
        };
        // The newest version is drawn: definitions come ordered by version.
        let Some(def) = defs.last() else {
            return fail(format!(
                "{store_path}: no definition of process '{process}' in the store"
            ));
        };
        if let Err(e) = std::fs::write(out, report.heatmap(def, metric)) {
            return fail(format!("{out}: cannot write the heatmap: {e}"));
        }
        errln!("{out}: heatmap of {} by {}", def.key(), metric.as_str());
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a business key value's history: the instances holding it and their records.
fn history(args: &[String]) -> Result<ExitCode, String> {
    let store_path = option(args, "--store")?.ok_or_else(usage)?;
    let pair = option(args, "--key")?.ok_or_else(usage)?;
    let Some((key, value)) = pair.split_once('=') else {
        return Err(format!(
            "--key takes KEY=VALUE, e.g. customer_id=C-1001, not '{pair}'"
        ));
    };
    let format = option(args, "--format")?.unwrap_or("table");
    if !matches!(format, "table" | "json") {
        return Err(format!("unknown format '{format}': use table or json"));
    }
    let fail = |message: String| {
        errln!("{message}");
        Ok(ExitCode::FAILURE)
    };
    let store = match open_store(Path::new(store_path)) {
        Ok(store) => store,
        Err(e) => return fail(e.to_string()),
    };
    let history = match Report::key_history(&*store, key, value) {
        Ok(h) => h,
        Err(e) => return fail(format!("{store_path}: {e}")),
    };
    match format {
        "json" => outln!("{}", history.to_json()),
        _ => out!("{}", history.to_table()),
    }
    Ok(ExitCode::SUCCESS)
}

/// `procflow whatif MODEL.yaml [--compare OTHER.yaml] [--format table|csv|json]
/// [--heatmap OUT.svg] [--replications N] [--threads N] [--db STORE]`, and
/// `procflow whatif --from-store STORE --base MODEL.yaml --out FITTED.yaml [--check]`: predicts
/// cycle times, SLA breaches and bottlenecks by running the engine on a simulated clock.
fn whatif(args: &[String]) -> Result<ExitCode, String> {
    let load = |file: &str| {
        whatif::Model::from_file(file).map_err(|e| {
            errln!("{e}");
        })
    };
    let threads = match option(args, "--threads")? {
        Some(n) => n
            .parse()
            .map_err(|_| format!("--threads: '{n}' is not a number"))?,
        None => std::thread::available_parallelism().map_or(2, usize::from),
    };
    let replications: Option<u32> = match option(args, "--replications")? {
        Some(n) if n.parse::<u32>().is_ok_and(|n| n > 0) => n.parse().ok(),
        Some(n) => return Err(format!("--replications: '{n}' is not a positive number")),
        None => None,
    };
    let progress = |name: String, total: u32| {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        move |done: usize| {
            if tty || done == total as usize {
                use std::io::Write as _;
                let _ = write!(
                    std::io::stderr(),
                    "\r  {name}: [{:<30}] {done}/{total} replications",
                    "=".repeat(done * 30 / (total as usize).max(1))
                );
                if done == total as usize {
                    errln!();
                }
            }
        }
    };
    let run = |model: &whatif::Model| -> Result<whatif::Figures, String> {
        let bar = progress(model.name.clone(), model.replications);
        let runs = whatif::simulate(model, threads, &bar)?;
        Ok(whatif::Figures::of(model, &runs))
    };

    if let Some(store) = option(args, "--from-store")? {
        let base = option(args, "--base")?
            .ok_or("--from-store needs --base MODEL.yaml (the staff, shifts and definitions)")?;
        let Ok(base) = load(base) else {
            return Ok(ExitCode::FAILURE);
        };
        let (mut fitted, yaml) = whatif::calibrate(Path::new(store), &base)?;
        if let Some(out) = option(args, "--out")? {
            std::fs::write(out, &yaml).map_err(|e| format!("{out}: {e}"))?;
            errln!("fitted model written to {out}");
        } else {
            out!("{yaml}");
        }
        if args.iter().any(|a| a == "--check") {
            if let Some(r) = replications {
                fitted.replications = r;
            }
            let figures = run(&fitted)?;
            let lines = whatif::check(Path::new(store), &figures, &fitted)?;
            out!("{}", whatif::check_table(&lines));
        }
        return Ok(ExitCode::SUCCESS);
    }

    let file = args
        .first()
        .filter(|f| !f.starts_with("--"))
        .ok_or_else(|| usage_for("whatif"))?;
    let Ok(mut model) = load(file) else {
        return Ok(ExitCode::FAILURE);
    };
    if let Some(r) = replications {
        model.replications = r;
    }
    let format = option(args, "--format")?.unwrap_or("table");
    if !matches!(format, "table" | "csv" | "json") {
        return Err(format!("unknown format '{format}': use table, csv or json"));
    }
    if let Some(db) = option(args, "--db")? {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{db}{suffix}"));
        }
        let store = procflow::SqliteStore::options()
            .durability(procflow::Durability::Process)
            .create(db)
            .map_err(|e| format!("{db}: {e}"))?;
        whatif::run_once(&model, 0, std::sync::Arc::new(store))?;
        errln!("replication 1 written to the store {db}");
    }
    let figures = run(&model)?;
    let other = match option(args, "--compare")? {
        Some(f) => {
            let Ok(mut other) = load(f) else {
                return Ok(ExitCode::FAILURE);
            };
            other.replications = model.replications;
            other.seed = model.seed;
            Some((run(&other)?, other))
        }
        None => None,
    };
    match (format, &other) {
        ("json", None) => outln!("{}", figures.to_json()),
        ("json", Some((o, _))) => outln!(
            "{{\"base\": {}, \"other\": {}}}",
            figures.to_json(),
            o.to_json()
        ),
        ("csv", None) => out!("{}", figures.to_csv()),
        ("csv", Some((o, _))) => out!("{}", whatif::compare_csv(&figures, o)),
        (_, None) => out!("{}", figures.to_table()),
        // Side by side: both sets of figures and their differences.
        (_, Some((o, _))) => out!("{}", whatif::compare_table(&figures, o)),
    }
    if let Some(svg) = option(args, "--heatmap")? {
        // The bottlenecks of the first process with arrivals, from a replication's report.
        let mut written = Vec::new();
        let models: Vec<(&whatif::Model, String)> = match &other {
            None => vec![(&model, svg.to_owned())],
            Some((_, o)) => vec![
                (&model, svg.to_owned()),
                (o, svg.replace(".svg", "") + "-compare.svg"),
            ],
        };
        for (m, path) in models {
            let run = whatif::replicate(m, 0)?;
            let Some(def) = m.arrivals.first().and_then(|a| m.def(&a.process)) else {
                continue;
            };
            std::fs::write(&path, run.report.heatmap(def, HeatMetric::BreachRate))
                .map_err(|e| format!("{path}: {e}"))?;
            written.push(path);
        }
        errln!(
            "heatmap (breach rate, replication 1): {}",
            written.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "server")]
mod serve {
    //! `procflow serve`: the HTTP API and the web console over an engine.

    use std::path::{Path, PathBuf};
    use std::process::ExitCode;
    use std::sync::Arc;

    use procflow::server::{Server, Tokens};
    use procflow::{
        BusinessCalendar, Engine, MemoryStore, Offload, Organisation, ProcessDef, SqliteStore,
        Store, TimerDriver, Vars, handler_fn,
    };

    use super::{option, usage_for};

    fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Runs the server until interrupted.
    pub(super) fn serve(args: &[String]) -> Result<ExitCode, String> {
        let store_arg = option(args, "--store")?.ok_or_else(|| usage_for("serve"))?;
        let listen = option(args, "--listen")?.unwrap_or("127.0.0.1:8080");
        let mut org_file = option(args, "--org")?.map(PathBuf::from);
        let mut tokens_file = option(args, "--tokens")?.map(PathBuf::from);
        let mut positional = Vec::new();
        let mut skip = false;
        let shared = args.iter().any(|a| a == "--shared");
        for a in args {
            if skip {
                skip = false;
            } else if a == "--shared" {
            } else if a.starts_with("--") {
                skip = true;
            } else {
                positional.push(PathBuf::from(a));
            }
        }
        if positional.is_empty() {
            return Err(format!(
                "serve needs definition files or folders\n{}",
                usage_for("serve")
            ));
        }
        let mut files = Vec::new();
        let mut calendars = Vec::new();
        for p in &positional {
            if p.is_dir() {
                files.extend(yaml_files(p)?);
                let cal = p.join("calendars");
                if cal.is_dir() {
                    calendars.extend(yaml_files(&cal)?);
                }
                let org = p.join("org");
                if org_file.is_none() && org.join("province.yaml").is_file() {
                    org_file = Some(org.join("province.yaml"));
                }
                if tokens_file.is_none() && org.join("tokens.yaml").is_file() {
                    tokens_file = Some(org.join("tokens.yaml"));
                }
            } else {
                files.push(p.clone());
            }
        }
        let org_file = org_file.ok_or("serve needs --org FILE (the organisation)")?;
        let tokens_file = tokens_file.ok_or("serve needs --tokens FILE (the bearer tokens)")?;
        let org = Arc::new(Organisation::from_file(&org_file).map_err(|e| e.to_string())?);
        let tokens = Tokens::from_file(&tokens_file, &org)
            .map_err(|e| format!("{}: {e}", tokens_file.display()))?;
        let mut defs = Vec::new();
        for f in &files {
            defs.push(ProcessDef::from_file(f).map_err(|e| e.to_string())?);
        }
        let store: Arc<dyn Store> = match store_arg {
            "memory" => Arc::new(MemoryStore::new()),
            s if s.starts_with("postgres://") || s.starts_with("postgresql://") => {
                #[cfg(feature = "postgres")]
                {
                    Arc::new(procflow::PostgresStore::connect(s).map_err(|e| e.to_string())?)
                }
                #[cfg(not(feature = "postgres"))]
                return Err(
                    "this procflow was built without PostgreSQL: build it with --features postgres"
                        .into(),
                );
            }
            s => match s.strip_prefix("sqlite:") {
                // Opens the file, or creates a store where there is none.
                Some(path) => Arc::new(
                    SqliteStore::options()
                        .shared(shared)
                        .create(path)
                        .map_err(|e| format!("{path}: {e}"))?,
                ),
                None => {
                    return Err(format!(
                        "unknown store '{s}': use sqlite:PATH, postgres://URL or memory"
                    ));
                }
            },
        };
        let mut builder = Engine::builder();
        builder.organisation(Arc::clone(&org));
        for c in &calendars {
            let name = c
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_owned();
            let cal =
                BusinessCalendar::from_file(c).map_err(|e| format!("{}: {e}", c.display()))?;
            builder.calendar(name, cal);
        }
        // The shipped definitions name service handlers this binary has no systems behind: each
        // is registered as a pass-through that returns no variables (said at start).
        let mut handlers: Vec<String> = defs
            .iter()
            .flat_map(|d| {
                d.nodes()
                    .filter_map(|(_, n)| n.handler().map(str::to_owned))
                    .collect::<Vec<_>>()
            })
            .collect();
        handlers.sort();
        handlers.dedup();
        for h in &handlers {
            builder.handler(h.clone(), handler_fn(|_| Ok(Vars::new())));
        }
        let engine = Arc::new(
            builder
                .open(Arc::clone(&store))
                .map_err(|e| e.to_string())?,
        );
        engine.deploy_all(defs).map_err(|e| e.to_string())?;
        let _timers = TimerDriver::spawn(Arc::clone(&engine), std::time::Duration::from_secs(1));
        // The memory store never waits for a disk: calls run on the request's own task.
        let offload = if store_arg == "memory" {
            Offload::Inline
        } else {
            Offload::SpawnBlocking
        };
        let app = Server::new(engine, org, tokens)
            .store(store)
            .offload(offload)
            .router();
        let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| format!("{listen}: {e}"))?;
            let bound = listener
                .local_addr()
                .map_err(|e| format!("{listen}: {e}"))?;
            eprintln!(
                "procflow serve: http://{bound}/ ({} definitions, {} pass-through handlers: {})",
                files.len(),
                handlers.len(),
                handlers.join(", ")
            );
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
                .map_err(|e| e.to_string())
        })?;
        Ok(ExitCode::SUCCESS)
    }
}
