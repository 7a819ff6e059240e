//! `procflow`: validate definitions, draw them, simulate scenarios, and check calendar
//! computations.

use std::process::ExitCode;

use procflow::{BusinessCalendar, DurationSpec, ProcessDef, Scenario};

const USAGE: &str = "usage:
  procflow validate FILE...
  procflow graph FILE [--format mermaid|dot]
  procflow simulate FILE --scenario SCENARIO [--calendar CALENDAR]
  procflow calendar CALENDAR --add DURATION --from INSTANT";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("validate") if args.len() > 1 => validate(&args[1..]),
        Some("graph") => graph(&args[1..]),
        Some("simulate") => simulate(&args[1..]),
        Some("calendar") => calendar(&args[1..]),
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

fn validate(files: &[String]) -> Result<ExitCode, String> {
    let mut failed = false;
    for file in files {
        match ProcessDef::from_file(file) {
            Ok(def) => println!("{file}: ok ({}, {} nodes)", def.key(), def.nodes().count()),
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

fn simulate(args: &[String]) -> Result<ExitCode, String> {
    let scenario_file = option(args, "--scenario")?.ok_or(USAGE)?;
    let def = match load(args.first())? {
        Ok(def) => def,
        Err(code) => return Ok(code),
    };
    let scenario = match Scenario::from_file(scenario_file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    // The calendar a definition names is `--calendar`, or calendars/NAME.yaml beside the file.
    let mut calendars = Vec::new();
    if let Some(name) = def.calendar().map(str::to_owned) {
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
    let report = match scenario.run_with(def, calendars) {
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

/// Prints `INSTANT + DURATION` on the calendar, in the calendar's zone; warnings go to stderr.
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
            for warning in &due.warnings {
                eprintln!("warning: {warning}");
            }
            println!("{}", cal.rfc3339(due.value));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => fail(format!("{file}: {e}")),
    }
}
