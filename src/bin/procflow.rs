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
  procflow report --store FILE|postgres://URL [--process ID] [--since RFC3339|YYYY-MM-DD]
                  [--format table|csv|json] [--heatmap OUT.svg] [--metric mean-wait|breach-rate|rework-rate]
                  [--by KEY]   also groups the instances by a business key's value
  procflow history --store FILE --key KEY=VALUE [--format table|json]
                  every instance holding the business key value, and their records in time order";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("validate") if args.len() > 1 => validate(&args[1..]),
        Some("graph") => graph(&args[1..]),
        Some("simulate") => simulate(&args[1..]),
        Some("calendar") => calendar(&args[1..]),
        Some("report") => report(&args[1..]),
        Some("history") => history(&args[1..]),
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
