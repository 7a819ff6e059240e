//! A simulated call centre: weeks of complaints (process 3.8) and sales orders (3.6) worked by
//! 22 staff on the China business calendar, written to a SQLite store, then reported.
//!
//! The centre is the what-if model `process-defs/whatif/complaint-centre.yaml` (arrivals, the
//! mix of customers, staff and shifts, handling times, branch shares, customers who do not
//! answer), run by `procflow::whatif` on the real engine and a manual clock: the same run as
//! `procflow whatif process-defs/whatif/complaint-centre.yaml --db STORE.db`, with a horizon in
//! weeks, a customer id on every instance (600 customers: `procflow history --key
//! customer_id=C-1001` lists one's complaints and orders) and, with `--not-fixed P`, that share
//! of closing calls where the customer says the fault is not fixed and the ticket is sent back
//! to diagnosis (rework: `--metric rework-rate`). Network operations is short of engineers, so
//! its tasks queue up, breach their deadlines and escalate.
//!
//! At the end it prints the history report read back from the store, the worst node, and writes
//! a heatmap of the complaint process coloured by breach rate (or by mean waiting time, or by
//! rework rate).
//!
//! ```text
//! cargo run --release --example complaint_center -- [--weeks N] [--seed S] [--db PATH]
//!     [--svg PATH] [--metric breach-rate|mean-wait|rework-rate] [--not-fixed P]
//! ```
//!
//! The defaults are 6 weeks after the model's day of warm-up, the model's seed,
//! `target/complaint_center.db` (an existing file is replaced) and
//! `target/complaint_center.svg`. `--weeks 2` is a quick run for CI.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use procflow::whatif::{self, Choice, Model};
use procflow::{Durability, HeatMetric, NodeFigures, Report, ReportOptions, SqliteStore, Vars};
use serde_json::json;

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/process-defs/whatif/complaint-centre.yaml"
);

const USAGE: &str = "usage: complaint_center [--weeks N] [--seed S] [--db PATH] [--svg PATH]
    [--metric breach-rate|mean-wait|rework-rate] [--not-fixed P]";

/// The complaint process, whose heatmap is drawn.
const COMPLAINTS: &str = "complaint-handling";

/// Customers the arrivals are drawn from.
const CUSTOMERS: usize = 600;

struct Args {
    weeks: u32,
    seed: Option<u64>,
    db: PathBuf,
    svg: PathBuf,
    metric: HeatMetric,
    /// The share of closing calls where the customer says the fault is not fixed.
    not_fixed: f64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        weeks: 6,
        seed: None,
        db: PathBuf::from("target/complaint_center.db"),
        svg: PathBuf::from("target/complaint_center.svg"),
        metric: HeatMetric::BreachRate,
        not_fixed: 0.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--weeks" => args.weeks = num(&flag, &value()?)?,
            "--seed" => args.seed = Some(num(&flag, &value()?)?),
            "--db" => args.db = PathBuf::from(value()?),
            "--svg" => args.svg = PathBuf::from(value()?),
            "--metric" => args.metric = value()?.parse().map_err(|e| format!("--metric: {e}"))?,
            "--not-fixed" => args.not_fixed = num(&flag, &value()?)?,
            "-h" | "--help" => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument '{flag}'\n{USAGE}")),
        }
    }
    if !(0.0..=1.0).contains(&args.not_fixed) {
        return Err(format!("--not-fixed must be from 0 to 1\n{USAGE}"));
    }
    if !(1..=104).contains(&args.weeks) {
        return Err(format!("--weeks must be from 1 to 104\n{USAGE}"));
    }
    Ok(args)
}

fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag}: '{v}' is not a valid number"))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("complaint_center: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The model file, changed as the arguments say.
fn model(args: &Args) -> Result<Model, Box<dyn Error>> {
    let mut model = Model::from_file(MODEL)?;
    model.horizon = model.warm_up + i64::from(args.weeks) * 7 * 24 * 3600;
    model.replications = 1;
    if let Some(seed) = args.seed {
        model.seed = seed;
    }
    // Every instance belongs to one of the customers: a business key of both processes.
    let customers: Vec<Choice> = (0..CUSTOMERS)
        .map(|n| Choice {
            p: 1.0 / CUSTOMERS as f64,
            set: vars(json!({ "customer_id": format!("C-{}", 1000 + n) })),
            send_back: None,
        })
        .collect();
    for arrival in &mut model.arrivals {
        arrival.mix.push(("customer".into(), customers.clone()));
    }
    if args.not_fixed > 0.0 {
        let close = model
            .work
            .get_mut(&(COMPLAINTS.into(), "close_ticket".into()))
            .ok_or("the model lists no close_ticket task")?;
        close.branches = vec![
            Choice {
                p: args.not_fixed,
                set: Vars::new(),
                send_back: Some("diagnose".into()),
            },
            Choice {
                p: 1.0 - args.not_fixed,
                set: Vars::new(),
                send_back: None,
            },
        ];
    }
    Ok(model)
}

fn run(args: &Args) -> Result<(), Box<dyn Error>> {
    let wall = Instant::now();
    let model = model(args)?;
    println!(
        "== Complaint centre: {} simulated weeks after a day of warm-up from {} (seed {}), {} staff",
        args.weeks,
        model
            .start
            .with_timezone(&chrono_tz::Asia::Shanghai)
            .format("%a %-d %b %Y"),
        model.seed,
        model.staff.iter().map(|g| g.people).sum::<usize>()
    );
    remove_store_files(&args.db)?;
    // A simulation needs no safety against power loss: commits wait for the operating system.
    let store = Arc::new(
        SqliteStore::options()
            .durability(Durability::Process)
            .create(&args.db)?,
    );
    let run = whatif::run_once(&model, 0, store.clone())?;
    let simulated = wall.elapsed();
    for (timer, fired) in &run.timers {
        println!("  {timer:<22} fired {fired}");
    }
    for (kind, refused) in &run.refused {
        println!("  refused: {kind:<14} {refused}");
    }

    let report = Report::from_store(&*store, &ReportOptions::default())?;
    println!(
        "\n== Report (read back from the store)\n{}",
        report.to_table()
    );
    print_bottleneck(&report);
    let def = model
        .def(COMPLAINTS)
        .ok_or("the model does not run the complaint process")?;
    std::fs::write(&args.svg, report.heatmap(def, args.metric))?;
    println!("\n== Files");
    let size = std::fs::metadata(&args.db).map_or(0, |m| m.len());
    println!(
        "  store:   {} ({:.1} MB)",
        args.db.display(),
        size as f64 / 1e6
    );
    println!(
        "  heatmap: {} (complaint handling, {})",
        args.svg.display(),
        args.metric.as_str()
    );
    println!(
        "  simulation {:.1} s, with the report {:.1} s",
        simulated.as_secs_f64(),
        wall.elapsed().as_secs_f64()
    );
    Ok(())
}

fn vars(value: serde_json::Value) -> Vars {
    serde_json::from_value(value).expect("an object literal is a Vars")
}

/// Deletes a store file left by an earlier run, with SQLite's write-ahead log and shared memory.
fn remove_store_files(db: &Path) -> std::io::Result<()> {
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut path = db.as_os_str().to_owned();
        path.push(suffix);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// The complaint task with the highest breach rate.
fn print_bottleneck(report: &Report) {
    let rate = |n: &NodeFigures| n.breaches as f64 / n.opened as f64;
    let worst = report
        .nodes
        .iter()
        .filter(|n| n.process == COMPLAINTS && n.opened > 0)
        .max_by(|a, b| rate(a).total_cmp(&rate(b)));
    if let Some(n) = worst {
        let wait = n.waiting.mean.map_or("-".to_owned(), |d| {
            format!("{}d{:02}h", d.num_days(), d.num_hours() % 24)
        });
        println!(
            "\n== Bottleneck: '{}' ({}): {} of {} tasks breached ({:.0}%), mean wait {wait}",
            n.node,
            n.name.as_deref().unwrap_or(""),
            n.breaches,
            n.opened,
            100.0 * rate(n)
        );
    }
}
