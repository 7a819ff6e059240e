//! `procflow`: validate definitions, draw them, simulate scenarios, check calendar
//! computations, and report on a store's history.

use std::process::ExitCode;

use std::path::Path;

use procflow::{
    BusinessCalendar, DurationSpec, HeatMetric, Organisation, ProcessDef, Report, ReportOptions,
    Scenario, Store, StoreError,
};

const USAGE: &str = "usage:
  procflow validate [--org ORGANISATION] FILE...
                  an organisation file (its top level names `organisation:`) is validated as
                  one; definitions are then also checked against every organisation given
  procflow graph FILE [--format mermaid|dot]
  procflow graph --flows DIR|FILE... [--format mermaid|dot]
  procflow simulate FILE [FILE...] --scenario SCENARIO [--calendar CALENDAR]
                  the first FILE is the one started; the others are definitions its
                  call activities call
  procflow calendar CALENDAR --add DURATION --from INSTANT
                  prints the instant alone on stdout; on stderr, a line that it is
                  provisional (it uses a year computed from the statutory holidays)
  procflow report --store FILE [--process ID] [--since RFC3339|YYYY-MM-DD]
                  [--format table|csv|json] [--heatmap OUT.svg] [--metric mean-wait|breach-rate|rework-rate]
                  [--by KEY]   also groups the instances by a business key's value
  procflow history --store FILE --key KEY=VALUE [--format table|json]
                  every instance holding the business key value, and their records in time order
  procflow serve --store sqlite:PATH|memory [--org FILE] [--tokens FILE] [--listen ADDR] DEFS...
                  the HTTP API and the web console (built with --features server); DEFS are
                  definition files or folders (a folder's calendars/*.yaml are its calendars,
                  its org/province.yaml and org/tokens.yaml the default --org and --tokens)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("validate") if args.len() > 1 => validate(&args[1..]),
        Some("graph") => graph(&args[1..]),
        Some("simulate") => simulate(&args[1..]),
        Some("calendar") => calendar(&args[1..]),
        Some("report") => report(&args[1..]),
        Some("history") => history(&args[1..]),
        #[cfg(feature = "server")]
        Some("serve") => serve::serve(&args[1..]),
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(2)
        }
    }
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
                println!(
                    "{file}: ok (organisation {}, {} units, {} people)",
                    org.id(),
                    org.units().len(),
                    org.people().len()
                );
                orgs.push((file.clone(), org));
            }
            Err(e) => {
                failed = true;
                eprintln!("{e}");
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
                        eprintln!("{e}\n  (against organisation {org_file})");
                    }
                }
                if fits {
                    println!("{file}: ok ({}, {} nodes)", def.key(), def.nodes().count());
                } else {
                    failed = true;
                }
            }
            Err(e) => {
                failed = true;
                eprintln!("{e}");
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
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}")),
    }
}

fn load(file: Option<&String>) -> Result<Result<ProcessDef, ExitCode>, String> {
    let file = file.filter(|f| !f.starts_with("--")).ok_or(USAGE)?;
    Ok(ProcessDef::from_file(file).map_err(|e| {
        eprintln!("{e}");
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
        "mermaid" => print!("{}", def.to_mermaid()),
        "dot" => print!("{}", def.to_dot()),
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
        return Err(format!("graph --flows needs a folder or files\n{USAGE}"));
    }
    let mut defs = Vec::new();
    let mut failed = false;
    for file in &files {
        match ProcessDef::from_file(file) {
            Ok(def) => defs.push(def),
            Err(e) => {
                failed = true;
                eprintln!("{e}");
            }
        }
    }
    if failed {
        return Ok(ExitCode::FAILURE);
    }
    let (map, warnings) = procflow::flow_map(&defs);
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    match format {
        "dot" => print!("{}", procflow::flows_to_dot(&defs, &map)),
        _ => print!("{}", procflow::flows_to_mermaid(&defs, &map)),
    }
    Ok(ExitCode::SUCCESS)
}

fn simulate(args: &[String]) -> Result<ExitCode, String> {
    let scenario_file = option(args, "--scenario")?.ok_or(USAGE)?;
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
            eprintln!("{e}");
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
                eprintln!("{e}");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    let report = match scenario.run_all(std::iter::once(def).chain(called).collect(), calendars) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    for line in &report.events {
        println!("{line}");
    }
    for failure in &report.failures {
        eprintln!("{scenario_file}:{failure}");
    }
    if report.failures.is_empty() {
        eprintln!("{scenario_file}: scenario '{}' held", scenario.name());
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::FAILURE)
    }
}

/// Prints `INSTANT + DURATION` on the calendar, in the calendar's zone, alone on stdout so that
/// scripts can read it; warnings, and that the instant is provisional, go to stderr.
fn calendar(args: &[String]) -> Result<ExitCode, String> {
    let file = args.first().filter(|f| !f.starts_with("--")).ok_or(USAGE)?;
    let duration = option(args, "--add")?.ok_or(USAGE)?;
    let from = option(args, "--from")?.ok_or(USAGE)?;
    let fail = |message: String| {
        eprintln!("{message}");
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
            println!("{}", cal.rfc3339(due.value));
            for warning in &due.warnings {
                match warning {
                    // Not a problem, a status: e.g. "(provisional: 2027 computed from ...)".
                    procflow::CalendarWarning::Provisional { .. } => eprintln!("({warning})"),
                    _ => eprintln!("warning: {warning}"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => fail(format!("{file}: {e}")),
    }
}

/// Opens the SQLite store in `path`, which must exist.
fn open_store(path: &Path) -> Result<Box<dyn Store>, StoreError> {
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
    let store_path = option(args, "--store")?.ok_or(USAGE)?;
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
        return Err(format!("--heatmap needs --process ID\n{USAGE}"));
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
        eprintln!("{message}");
        Ok(ExitCode::FAILURE)
    };
    let store = match open_store(Path::new(store_path)) {
        Ok(store) => store,
        Err(e) => return fail(e.to_string()),
    };
    let report = match Report::from_store(&*store, &options) {
        Ok(r) => r,
        Err(e) => return fail(format!("{store_path}: {e}")),
    };
    match format {
        "csv" => print!("{}", report.to_csv()),
        "json" => println!("{}", report.to_json()),
        _ => print!("{}", report.to_table()),
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
        eprintln!("{out}: heatmap of {} by {}", def.key(), metric.as_str());
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a business key value's history: the instances holding it and their records.
fn history(args: &[String]) -> Result<ExitCode, String> {
    let store_path = option(args, "--store")?.ok_or(USAGE)?;
    let pair = option(args, "--key")?.ok_or(USAGE)?;
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
        eprintln!("{message}");
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
        "json" => println!("{}", history.to_json()),
        _ => print!("{}", history.to_table()),
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
        BusinessCalendar, Engine, MemoryStore, Organisation, ProcessDef, SqliteStore, Store,
        TimerDriver, Vars, handler_fn,
    };

    use super::{USAGE, option};

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
        let store_arg = option(args, "--store")?.ok_or(USAGE)?;
        let listen = option(args, "--listen")?.unwrap_or("127.0.0.1:8080");
        let mut org_file = option(args, "--org")?.map(PathBuf::from);
        let mut tokens_file = option(args, "--tokens")?.map(PathBuf::from);
        let mut positional = Vec::new();
        let mut skip = false;
        for a in args {
            if skip {
                skip = false;
            } else if a.starts_with("--") {
                skip = true;
            } else {
                positional.push(PathBuf::from(a));
            }
        }
        if positional.is_empty() {
            return Err(format!("serve needs definition files or folders\n{USAGE}"));
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
            s => match s.strip_prefix("sqlite:") {
                Some(path) if Path::new(path).exists() => {
                    Arc::new(SqliteStore::open(path).map_err(|e| format!("{path}: {e}"))?)
                }
                Some(path) => {
                    Arc::new(SqliteStore::create(path).map_err(|e| format!("{path}: {e}"))?)
                }
                None => return Err(format!("unknown store '{s}': use sqlite:PATH or memory")),
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
        let app = Server::new(engine, org, tokens).store(store).router();
        let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| format!("{listen}: {e}"))?;
            eprintln!(
                "procflow serve: http://{listen}/ ({} definitions, {} pass-through handlers: {})",
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
