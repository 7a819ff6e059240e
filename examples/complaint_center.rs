//! A simulated call centre: several weeks of complaints (process 3.8) and sales orders (3.6)
//! worked by a staff of about twenty on a manual clock, written to a store, then reported.
//!
//! Complaints and orders arrive at random, mostly in office hours. Each member of staff holds
//! roles of the definitions' RACI catalogue; on shift (working hours of the China business
//! calendar) they take the most urgent task from their work list, claim it and complete it after
//! a random handling time. Customers answer the closing call after a random delay, or not at all
//! (the task then times out); with `--not-fixed P`, that share says the fault is not fixed and
//! the ticket is sent back to diagnosis (rework: `--metric rework-rate`). Network operations is deliberately short of engineers, so its
//! tasks queue up, breach their deadlines and escalate; a trainee without the right role tries
//! to claim tasks now and then and is refused. The engine is ticked every simulated ten minutes,
//! so reminders, breaches, escalations and timeouts fire as they fall due.
//!
//! Everything goes to a SQLite store file. At the end it prints what happened, the history
//! report read back from the store, and writes a heatmap of the complaint process coloured by
//! breach rate (or by mean waiting time).
//!
//! ```text
//! cargo run --release --example complaint_center -- [--weeks N] [--seed S] [--db PATH]
//!     [--svg PATH] [--metric breach-rate|mean-wait|rework-rate] [--not-fixed P]
//! ```
//!
//! The same centre as a what-if model file is `process-defs/whatif/complaint-centre.yaml`:
//! `procflow whatif` runs it with replications and confidence intervals, compares staffing plans
//! on common random numbers (`--compare`) and writes a store like this one (`--db`).
//!
//! The defaults are 6 weeks, seed 1, `target/complaint_center.db` (an existing file is replaced)
//! and `target/complaint_center.svg`. `--weeks 2` is a quick run for CI. The simulation starts
//! on Monday 9 March 2026 and may run at most 40 weeks: the China calendar covers 2026 only.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Asia::Shanghai;
use indicatif::{ProgressBar, ProgressStyle};
use procflow::{
    Actor, BusinessCalendar, Clock, Config, Durability, Engine, ExecError, HandlerError,
    HeatMetric, InstanceId, ManualClock, ProcessDef, Report, ReportOptions, ServiceCall,
    SqliteStore, Store, StoreError, TaskId, TaskView, Vars, handler_fn,
};
use serde_json::{Value, json};

const COMPLAINTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/process-defs/complaint-handling.yaml"
);
const ORDERS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/process-defs/order-provisioning.yaml"
);
const CALENDAR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/process-defs/calendars/china.yaml"
);

const USAGE: &str = "usage: complaint_center [--weeks N] [--seed S] [--db PATH] [--svg PATH] \
[--metric breach-rate|mean-wait|rework-rate] [--not-fixed P]";

/// Monday 9 March 2026, 00:00 in Shanghai.
const FIRST_DAY: &str = "2026-03-08T16:00:00Z";

/// The China calendar covers 2026 only; deadlines of the last week must still fall inside it.
const MAX_WEEKS: u32 = 40;

/// One step of the simulated clock, in minutes.
const STEP_MINUTES: i64 = 10;

/// Mean arrivals per step of complaints and orders: in working hours, and outside them.
const COMPLAINTS_PER_STEP: (f64, f64) = (0.75, 0.04);
const ORDERS_PER_STEP: (f64, f64) = (0.33, 0.006);

/// The staff: actor id and roles. Network operations has too few engineers for its load.
const STAFF: &[(&str, &str)] = &[
    ("wang.li", "customer_service"),
    ("zhang.wei", "customer_service"),
    ("liu.fang", "customer_service"),
    ("chen.jing", "customer_service"),
    ("yang.xiu", "customer_service"),
    ("huang.lei", "customer_service"),
    ("li.na", "business_hall"),
    ("wu.hao", "business_hall"),
    ("xu.ming", "business_hall"),
    ("zhao.lei", "key_account_manager"),
    ("qian.ming", "key_account_manager"),
    ("chen.jie", "network_ops"),
    ("sun.tao", "network_ops"),
    ("ma.chao", "network_ops"),
    ("zhu.hong", "network_ops"),
    ("hu.bin", "network_ops"),
    ("guo.yong", "network_ops"),
    ("lin.feng", "network_ops"),
    ("liu.yang", "local_network"),
    ("he.ping", "local_network"),
];

/// The trainee: in market development, responsible for none of the tasks it tries.
const TRAINEE: (&str, &str) = ("tian.xin", "market_dev");

/// Creates the store the simulation writes to, at `path`. A simulation needs no safety against
/// power loss, so commits wait for the operating system, not for the disk.
fn open_store(path: &Path) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(
        SqliteStore::options()
            .durability(Durability::Process)
            .create(path)?,
    ))
}

struct Args {
    weeks: u32,
    seed: u64,
    db: PathBuf,
    svg: PathBuf,
    metric: HeatMetric,
    /// The share of closing calls where the customer says the fault is not fixed.
    not_fixed: f64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        weeks: 6,
        seed: 1,
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
            "--seed" => args.seed = num(&flag, &value()?)?,
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
    if args.weeks == 0 || args.weeks > MAX_WEEKS {
        return Err(format!(
            "--weeks must be from 1 to {MAX_WEEKS} (the calendar covers 2026 only)\n{USAGE}"
        ));
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

fn run(args: &Args) -> Result<(), Box<dyn Error>> {
    let wall = Instant::now();
    remove_store_files(&args.db)?;
    let store = open_store(&args.db)?;
    let clock = Arc::new(ManualClock::new(FIRST_DAY.parse()?));
    let engine = build_engine(&store, &clock)?;
    let complaint_def = engine.deploy(ProcessDef::from_file(COMPLAINTS)?)?;
    engine.deploy(ProcessDef::from_file(ORDERS)?)?;

    let mut sim = Sim {
        engine,
        clock,
        calendar: BusinessCalendar::from_file(CALENDAR)?,
        rng: Rng::new(args.seed),
        not_fixed: (
            args.not_fixed,
            Rng::new(args.seed.rotate_left(32) ^ 0x6E6F_7466_6978),
        ),
        staff: STAFF
            .iter()
            .map(|(id, role)| Staff::new(Actor::new(*id, [*role])))
            .collect(),
        trainee: Actor::new(TRAINEE.0, [TRAINEE.1]),
        customers: HashMap::new(),
        incidents: VecDeque::new(),
        recent: VecDeque::new(),
        counts: Counts::default(),
    };
    println!(
        "== Complaint centre: {} simulated weeks from {} (seed {}), {} staff and a trainee",
        args.weeks,
        local(sim.clock.now(), "%a %-d %b %Y"),
        args.seed,
        sim.staff.len()
    );
    sim.run(i64::from(args.weeks) * 7 * 24 * 60 / STEP_MINUTES);
    let simulated = wall.elapsed();

    let report = Report::from_store(&*store, &ReportOptions::default())?;
    sim.print_counts(&report);
    println!(
        "\n== Report (read back from the store)\n{}",
        report.to_table()
    );
    print_bottleneck(&report);
    std::fs::write(&args.svg, report.heatmap(&complaint_def, args.metric))?;
    println!("\n== Files");
    match std::fs::metadata(&args.db) {
        Ok(meta) => println!(
            "  store:   {} ({:.1} MB)",
            args.db.display(),
            meta.len() as f64 / 1e6
        ),
        Err(_) => println!(
            "  store:   {} not written: `open_store` keeps the store in memory",
            args.db.display()
        ),
    }
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

/// The engine on `store`, with the simulation's clock, the China calendar and the service
/// handlers both definitions name. Completed instances leave memory (the store keeps them), so
/// work lists scan only running ones.
fn build_engine(
    store: &Arc<dyn Store>,
    clock: &Arc<ManualClock>,
) -> Result<Engine, Box<dyn Error>> {
    let mut config = Config::default();
    config.retain_completed = false;
    // The OSS adapter and the switch time out on the first request of some instances; the
    // operator retries them (see `Sim::retry_incidents`).
    let reconfigured = Mutex::new(HashSet::new());
    let activated = Mutex::new(HashSet::new());
    let engine = Engine::builder()
        .config(config)
        .clock(Arc::clone(clock))
        .calendar("china", BusinessCalendar::from_file(CALENDAR)?)
        .handler(
            "generate_network_ticket",
            handler_fn(|call| {
                Ok(vars(json!({
                    "ticket_id": format!("NT-{:05}", call.instance.get()),
                    "fault_notification": { "alarm": "OLT port down" },
                })))
            }),
        )
        .handler(
            "reconfigure_service",
            handler_fn(move |call| {
                first_try_fails(&reconfigured, call, 13, "OSS provisioning timeout")?;
                Ok(vars(json!({ "reconfiguration": { "vlan_moved": true } })))
            }),
        )
        .handler(
            "update_billing",
            handler_fn(|_| Ok(vars(json!({ "billing_adjustment": { "credit": 0 } })))),
        )
        .handler("credit_check", handler_fn(credit_check))
        .handler(
            "network_resource_check",
            handler_fn(|call| {
                let free = !call.instance.get().is_multiple_of(23);
                Ok(vars(json!({
                    "resources_available": free,
                    "network_resources": { "free_ports": if free { 8 } else { 0 } },
                })))
            }),
        )
        .handler(
            "activate_service",
            handler_fn(move |call| {
                first_try_fails(&activated, call, 11, "switch timeout after 30s")?;
                Ok(vars(json!({
                    "activation": { "service_id": format!("SVC-{:05}", call.instance.get()) },
                })))
            }),
        )
        .handler(
            "activation_check",
            handler_fn(|call| {
                Ok(vars(json!({
                    "service_id": format!("SVC-{:05}", call.instance.get()),
                    "activated": true,
                })))
            }),
        )
        .handler(
            "billing_setup",
            handler_fn(|_| {
                Ok(vars(
                    json!({ "billing_requirements": { "cycle": "monthly" } }),
                ))
            }),
        )
        .open(Arc::clone(store))?;
    Ok(engine)
}

/// Fails the first call for every `every`-th instance, as a flaky adapter does.
fn first_try_fails(
    tried: &Mutex<HashSet<InstanceId>>,
    call: &ServiceCall<'_>,
    every: u64,
    message: &str,
) -> Result<(), HandlerError> {
    if !call.instance.get().is_multiple_of(every) {
        return Ok(());
    }
    let first = tried
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(call.instance);
    if first {
        return Err(HandlerError::new(message));
    }
    Ok(())
}

/// 3.6.1: credit passes unless the customer is in arrears.
fn credit_check(call: &ServiceCall<'_>) -> Result<Vars, HandlerError> {
    let arrears = call
        .vars
        .get("customer_profile")
        .and_then(|p| p.get("arrears"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    Ok(vars(
        json!({ "credit_ok": arrears == 0, "credit_limit": 5000 }),
    ))
}

/// Turns a `json!({...})` object into instance variables.
fn vars(value: Value) -> Vars {
    match value {
        Value::Object(map) => map,
        _ => Vars::new(),
    }
}

/// Local (Shanghai) time in `format`.
fn local(at: DateTime<Utc>, format: &str) -> String {
    at.with_timezone(&Shanghai).format(format).to_string()
}

/// A seeded xorshift64* generator: reproducible runs without another crate.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Zero is xorshift's fixed point; mix the seed so nearby seeds differ at once.
        Rng((seed ^ 0x9E37_79B9_7F4A_7C15).max(1))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as i64
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next_u64() % items.len() as u64) as usize]
    }

    /// A Poisson-distributed count with mean `mean` (Knuth's method; the means here are small).
    fn poisson(&mut self, mean: f64) -> u32 {
        let limit = (-mean).exp();
        let (mut count, mut product) = (0, self.unit());
        while product > limit {
            count += 1;
            product *= self.unit();
        }
        count
    }
}

/// A member of staff and the task in hand.
struct Staff {
    actor: Actor,
    job: Option<Job>,
    /// Minutes spent on tasks, and minutes on shift.
    busy: i64,
    on_shift: i64,
    completed: usize,
}

impl Staff {
    fn new(actor: Actor) -> Staff {
        Staff {
            actor,
            job: None,
            busy: 0,
            on_shift: 0,
            completed: 0,
        }
    }
}

/// A claimed task and the work left on it.
struct Job {
    task: TaskId,
    node: String,
    minutes_left: i64,
}

/// What happened, counted.
#[derive(Default)]
struct Counts {
    started: BTreeMap<&'static str, usize>,
    claims: usize,
    completions: usize,
    /// Closing calls where the customer said the fault is not fixed: sent back to diagnosis.
    sent_back: usize,
    /// The trainee's refused attempts.
    denied: usize,
    /// Timer firings by name (`breach`, `sla_escalation`, ...).
    timers: BTreeMap<String, usize>,
    incidents: usize,
    retried: usize,
    /// Calls the engine refused, by what they were and why.
    errors: BTreeMap<String, usize>,
}

impl Counts {
    fn error(&mut self, what: &str, e: &ExecError) {
        self.note(&format!("{what}: {}", kind(e)));
    }

    fn note(&mut self, what: &str) {
        *self.errors.entry(what.to_owned()).or_default() += 1;
    }
}

/// A short name for an engine error, for counting.
fn kind(e: &ExecError) -> &'static str {
    match e {
        ExecError::Denied { .. } => "denied",
        ExecError::AlreadyClaimed { .. } => "already claimed",
        ExecError::TaskClosed {
            state: "timed out", ..
        } => "task closed (a timeout moved on)",
        ExecError::TaskClosed { .. } => "task closed (already completed)",
        ExecError::UnknownTask(_) | ExecError::UnknownInstance(_) => "unknown task or instance",
        ExecError::Variables { .. } => "variables",
        ExecError::Vetoed { .. } => "vetoed",
        ExecError::Incident { .. } => "incident",
        ExecError::Deadline { .. } => "deadline cannot be computed",
        ExecError::Hook { .. } => "hook",
        ExecError::Unavailable(_) => "definition unavailable",
        ExecError::InstanceCompleted(_) => "instance completed",
        ExecError::NothingToRetry(_) => "nothing to retry",
        ExecError::Conflict(_) => "store conflict",
        ExecError::Store(_) => "store",
        _ => "other",
    }
}

/// The simulation's state.
struct Sim {
    engine: Engine,
    clock: Arc<ManualClock>,
    /// The calendar the shifts follow (the engine holds its own copy for deadlines).
    calendar: BusinessCalendar,
    rng: Rng,
    /// The share of customers who say the fault is not fixed, and the stream that decides which
    /// (its own, so that a run with a share of 0 is the run without rework).
    not_fixed: (f64, Rng),
    staff: Vec<Staff>,
    trainee: Actor,
    /// When the customer answers a closing call, by task; `None`: never.
    customers: HashMap<TaskId, Option<DateTime<Utc>>>,
    /// Instances with an incident, and when the operator looks at them.
    incidents: VecDeque<(InstanceId, DateTime<Utc>)>,
    /// The latest instances started, which the trainee pokes at.
    recent: VecDeque<InstanceId>,
    counts: Counts,
}

impl Sim {
    /// Runs `steps` steps of the clock with a progress bar over simulated time.
    fn run(&mut self, steps: i64) {
        let bar = ProgressBar::new(steps as u64);
        if let Ok(style) =
            ProgressStyle::with_template("  {msg:28} [{bar:40}] {percent:>3}% {elapsed}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        for step in 1..=steps {
            self.clock.advance(Duration::minutes(STEP_MINUTES));
            let now = self.clock.now();
            let working = self.calendar.is_working(now).is_ok_and(|w| w.value);
            self.arrivals(now, working);
            for fired in self.engine.tick(now) {
                *self.counts.timers.entry(fired.name()).or_default() += 1;
            }
            if working {
                self.shift(now);
                self.trainee_tries();
            }
            self.retry_incidents(now);
            bar.set_position(step as u64);
            if step % 6 == 0 {
                bar.set_message(format!(
                    "{}  {} running",
                    local(now, "%a %-d %b %H:%M"),
                    self.engine.instances().len()
                ));
            }
        }
        bar.finish_and_clear();
    }

    /// Starts the complaints and orders that arrive in this step.
    fn arrivals(&mut self, now: DateTime<Utc>, working: bool) {
        let pick = |(day, night): (f64, f64)| if working { day } else { night };
        for _ in 0..self.rng.poisson(pick(COMPLAINTS_PER_STEP)) {
            let vars = complaint(&mut self.rng, working);
            self.start("complaint-handling", vars, now);
        }
        for _ in 0..self.rng.poisson(pick(ORDERS_PER_STEP)) {
            let vars = order(&mut self.rng);
            self.start("order-provisioning", vars, now);
        }
    }

    fn start(&mut self, process: &'static str, mut vars: Vars, now: DateTime<Utc>) {
        // Six hundred customers, each calling or ordering about three times over the weeks
        // (a business key of both processes: `procflow history --key customer_id=C-1001`).
        // Not from the random stream, so the simulation's other figures stay as they were.
        let n: usize = self.counts.started.values().sum();
        vars.insert("customer_id".into(), json!(format!("C-{}", 1000 + n % 600)));
        let id = match self.engine.start(process, vars) {
            Ok(id) => id,
            // The instance exists; a service task at its start failed.
            Err(ExecError::Incident { instance, .. }) => {
                self.incident(instance, now);
                instance
            }
            Err(e) => {
                self.counts.error("start", &e);
                return;
            }
        };
        *self.counts.started.entry(process).or_default() += 1;
        self.recent.push_back(id);
        if self.recent.len() > 64 {
            self.recent.pop_front();
        }
    }

    /// Every member of staff works this step's minutes, in a random order.
    fn shift(&mut self, now: DateTime<Utc>) {
        let mut order: Vec<usize> = (0..self.staff.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, self.rng.range(0, i as i64) as usize);
        }
        for i in order {
            self.staff[i].on_shift += STEP_MINUTES;
            let mut minutes = STEP_MINUTES;
            while minutes > 0 {
                if self.staff[i].job.is_none() && !self.take_task(i, now) {
                    break;
                }
                let staff = &mut self.staff[i];
                let Some(job) = staff.job.as_mut() else {
                    break;
                };
                let spent = job.minutes_left.min(minutes);
                job.minutes_left -= spent;
                let done = job.minutes_left == 0;
                minutes -= spent;
                staff.busy += spent;
                if done {
                    self.finish_task(i, now);
                }
            }
        }
    }

    /// Claims the most urgent task on the work list that can be done now. `false` when there is
    /// none (or the claim was refused: the worker looks again next step).
    fn take_task(&mut self, i: usize, now: DateTime<Utc>) -> bool {
        let list = self.engine.work_list(&self.staff[i].actor);
        let Some(task) = list
            .into_iter()
            .filter(|t| t.claimed_by.is_none())
            .find(|t| self.customer_ready(t, now))
        else {
            return false;
        };
        let staff = &mut self.staff[i];
        if let Err(e) = self.engine.claim(task.id, &staff.actor) {
            self.counts.error("claim", &e);
            return false;
        }
        self.counts.claims += 1;
        let (least, most) = handling_minutes(&task.node_id);
        let mut minutes = self.rng.range(least, most);
        // One task in twelve is a hard case.
        if self.rng.chance(1.0 / 12.0) {
            minutes *= 3;
        }
        staff.job = Some(Job {
            task: task.id,
            node: task.node_id.to_string(),
            minutes_left: minutes,
        });
        true
    }

    /// Whether a task can be worked now: a closing call needs the customer on the line.
    fn customer_ready(&mut self, task: &TaskView, now: DateTime<Utc>) -> bool {
        // The phone confirmation (客户确认) waits for the customer to call; one who never does
        // leaves the order to its 48-hour window.
        if !matches!(
            &*task.node_id,
            "close_ticket" | "notify_completion" | "confirm_by_phone"
        ) {
            return true;
        }
        let rng = &mut self.rng;
        let answers = *self.customers.entry(task.id).or_insert_with(|| {
            // One customer in twenty never confirms; the rest do within a few hours.
            (!rng.chance(0.05)).then(|| task.created_at + Duration::minutes(rng.range(10, 240)))
        });
        answers.is_some_and(|at| at <= now)
    }

    /// Completes the task in hand with the output its node sets.
    fn finish_task(&mut self, i: usize, now: DateTime<Utc>) {
        let Some(job) = self.staff[i].job.take() else {
            return;
        };
        // With `--not-fixed P`, that share of customers says the fault is not fixed: the ticket
        // goes back to diagnosis (退回), to the engineer who diagnosed it, and counts as rework.
        if job.node == "close_ticket"
            && self.not_fixed.0 > 0.0
            && self.not_fixed.1.chance(self.not_fixed.0)
        {
            let reason = "customer says the fault is not fixed";
            match self
                .engine
                .send_back(job.task, &self.staff[i].actor, "diagnose", reason)
            {
                Ok(()) => self.counts.sent_back += 1,
                Err(e) => self.counts.error("send back", &e),
            }
            self.customers.remove(&job.task);
            return;
        }
        let output = task_output(&mut self.rng, &job.node);
        match self.engine.complete(job.task, &self.staff[i].actor, output) {
            Ok(()) => {}
            // The completion stands; a service task after it failed.
            Err(ExecError::Incident { instance, .. }) => self.incident(instance, now),
            // While the work was in hand, an escalation gave the task to a role (the whole
            // back office, or the customer service centre) and someone there claimed it.
            Err(ExecError::Denied { .. }) => {
                self.counts
                    .note("complete: refused, an escalation had given the task to others");
                return;
            }
            Err(e) => {
                // Most often the task's timeout moved the instance on while the work was in hand.
                self.counts.error("complete", &e);
                return;
            }
        }
        self.counts.completions += 1;
        self.staff[i].completed += 1;
        self.customers.remove(&job.task);
    }

    /// Now and then the trainee tries to claim a task of a recent instance, and is refused.
    fn trainee_tries(&mut self) {
        if self.recent.is_empty() || !self.rng.chance(0.05) {
            return;
        }
        let id = *self.rng.pick(self.recent.make_contiguous());
        // An instance that has completed has left the engine: nothing to try.
        let Ok(tasks) = self.engine.tasks(id) else {
            return;
        };
        let Some(task) = tasks.iter().find(|t| t.claimed_by.is_none()) else {
            return;
        };
        match self.engine.claim(task.id, &self.trainee) {
            Err(ExecError::Denied { .. }) => self.counts.denied += 1,
            Ok(()) => self.counts.note("trainee claim: allowed (unexpected)"),
            Err(e) => self.counts.error("trainee claim", &e),
        }
    }

    /// Notes an incident for the operator, who retries half an hour later.
    fn incident(&mut self, instance: InstanceId, now: DateTime<Utc>) {
        self.counts.incidents += 1;
        self.incidents
            .push_back((instance, now + Duration::minutes(30)));
    }

    /// The operator retries the instances whose incidents are due for a look.
    fn retry_incidents(&mut self, now: DateTime<Utc>) {
        while let Some(&(instance, at)) = self.incidents.front() {
            if at > now {
                break;
            }
            self.incidents.pop_front();
            match self.engine.retry(instance) {
                Ok(()) => self.counts.retried += 1,
                // Failed again: another look later.
                Err(ExecError::Incident { .. }) => self.incident(instance, now),
                Err(e) => self.counts.error("retry", &e),
            }
        }
    }

    fn print_counts(&self, report: &Report) {
        let c = &self.counts;
        println!("\n== What happened");
        for p in &report.processes {
            println!(
                "  {:<20} started {:>5}  completed {:>5}  open {:>4}  SLA met {:>5}, breached {}",
                p.process, p.started, p.completed, p.open, p.sla_met, p.sla_breached
            );
        }
        let started: Vec<String> = c.started.iter().map(|(p, n)| format!("{p} {n}")).collect();
        println!("  started by the simulation: {}", started.join(", "));
        println!(
            "  claims {}, completions {}; trainee refused by RACI {} times",
            c.claims, c.completions, c.denied
        );
        if self.not_fixed.0 > 0.0 {
            println!(
                "  closing calls sent back to diagnosis (not fixed): {}",
                c.sent_back
            );
        }
        println!(
            "  incidents {} (adapter timeouts), retried successfully {}",
            c.incidents, c.retried
        );
        let timers: Vec<String> = c.timers.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!("  timer firings: {}", timers.join(", "));
        if c.errors.is_empty() {
            println!("  refused calls: none");
        }
        for (what, n) in &c.errors {
            println!("  refused call: {what}: {n}");
        }
        println!("\n== Staff load (working hours only)");
        let mut roles: BTreeMap<&str, (usize, usize, i64, i64)> = BTreeMap::new();
        for (s, (_, role)) in self.staff.iter().zip(STAFF) {
            let r = roles.entry(role).or_default();
            *r = (r.0 + 1, r.1 + s.completed, r.2 + s.busy, r.3 + s.on_shift);
        }
        for (role, (people, done, busy, shift)) in roles {
            println!(
                "  {role:<20} {people:>2} staff  {done:>5} tasks  busy {:>3.0}%",
                100.0 * busy as f64 / shift.max(1) as f64
            );
        }
    }
}

/// How long a task at `node` takes, in minutes: (least, most).
fn handling_minutes(node: &str) -> (i64, i64) {
    match node {
        "create_ticket" => (4, 12),
        "open_ticket" => (5, 15),
        "record_problem" => (8, 20),
        "set_priority" => (3, 8),
        "diagnose" => (15, 35),
        "resolve_fault" => (15, 40),
        "notify_customer" => (5, 12),
        "close_ticket" => (3, 8),
        "notify_closure" => (3, 8),
        "confirm_feasibility" => (15, 40),
        "notify_rejection" => (5, 10),
        "receive_order" => (8, 15),
        "release_order" => (8, 20),
        "notify_status" => (3, 8),
        "track_order" => (10, 25),
        "notify_completion" => (4, 10),
        "notify_in_writing" => (3, 8),
        _ => (10, 20),
    }
}

/// The variables a worker sets when completing a task at `node`.
fn task_output(rng: &mut Rng, node: &str) -> Vars {
    vars(match node {
        "create_ticket" => json!({ "ticket_id": format!("CT-{:06}", rng.range(0, 999_999)) }),
        "record_problem" => json!({ "problem_details": "no dial tone / slow broadband" }),
        "set_priority" => json!({ "priority": rng.pick(&["low", "medium", "medium", "high"]) }),
        "diagnose" => json!({
            "diagnosis_report": "line card fault",
            "needs_reconfiguration": rng.chance(0.25),
        }),
        "resolve_fault" => json!({ "status_report": "fixed" }),
        "notify_customer" => json!({ "resolution_notice": "your service works again" }),
        "notify_closure" => json!({ "resolution_notice": "SMS: ticket closed" }),
        "confirm_feasibility" => {
            if rng.chance(0.92) {
                json!({ "feasible": true })
            } else {
                json!({ "feasible": false, "rejection_reason": "no coverage at the address" })
            }
        }
        "notify_rejection" => json!({ "order_status": "rejected" }),
        "receive_order" => json!({
            "order_id": format!("ORD-{:06}", rng.range(0, 999_999)),
            "order_status": "received",
        }),
        "notify_status" => json!({ "order_status": "in_progress" }),
        "track_order" => json!({ "order_status": "activated" }),
        "notify_completion" => json!({
            "activation_notice": "your service is active",
            "order_status": "completed",
        }),
        "notify_in_writing" => json!({
            "activation_notice": "SMS: your service is active",
            "order_status": "completed",
        }),
        _ => json!({}),
    })
}

/// A new complaint. Outside office hours most come from network alarms.
fn complaint(rng: &mut Rng, working: bool) -> Vars {
    let tier = tier(rng);
    let network = rng.chance(if working { 0.15 } else { 0.6 });
    vars(if network {
        json!({
            "origin": "network",
            "customer_tier": tier,
            "network_performance": { "olt": "HZ-XH-01", "port": rng.range(1, 48) },
        })
    } else {
        json!({
            "origin": "customer",
            "channel": rng.pick(&["call_centre", "call_centre", "web", "sms", "business_hall"]),
            "customer_tier": tier,
            "customer_enquiry": "my line does not work",
        })
    })
}

/// Where orders come in: half of them through the hotline.
const ORDER_CHANNELS: [&str; 4] = [
    "customer_service",
    "customer_service",
    "business_hall",
    "key_account",
];

/// A new sales order; one customer in twenty is in arrears.
fn order(rng: &mut Rng) -> Vars {
    let arrears = if rng.chance(0.05) { 300 } else { 0 };
    vars(json!({
        "product_spec": { "product": rng.pick(&["broadband", "fixed line", "IPTV"]) },
        "sales_order": { "price": rng.range(20, 300) },
        "customer_profile": { "arrears": arrears },
        "channel": rng.pick(&ORDER_CHANNELS),
        "customer_tier": tier(rng),
    }))
}

/// Key accounts are one customer in ten, business customers a quarter.
fn tier(rng: &mut Rng) -> &'static str {
    let x = rng.unit();
    if x < 0.1 {
        "key"
    } else if x < 0.35 {
        "business"
    } else {
        "public"
    }
}

/// Prints the complaint node with the highest breach rate: the bottleneck the heatmap shows.
fn print_bottleneck(report: &Report) {
    let worst = report
        .nodes
        .iter()
        .filter(|n| n.process == "complaint-handling" && n.opened > 0)
        .max_by(|a, b| {
            let rate = |n: &procflow::NodeFigures| n.breaches as f64 / n.opened as f64;
            rate(a).total_cmp(&rate(b))
        });
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
            100.0 * n.breaches as f64 / n.opened as f64
        );
    }
}
