//! One replication: the real engine on a manual clock, driven by a discrete-event loop (next
//! arrival, next completion of a task in hand, next timer, next customer answer, next shift
//! boundary), with people as resources: a person works one task at a time, within their shift.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use super::model::{Arrival, Choice, Dist, Model, Work, local_hour_day};
use crate::clock::ManualClock;
use crate::def::{NodeKind, ProcessDef};
use crate::exec::{Changed, Config, Engine, ExecError, IdHasher, TaskView, Urgency, urgency};
use crate::hooks::handler_fn;
use crate::ids::{InstanceId, NodeId, TaskId};
use crate::raci::Actor;
use crate::report::{Report, ReportOptions, Tally};
use crate::store::Store;
use crate::vars::Vars;

/// A counter-based generator (SplitMix64): a stream per seed, reproducible, no shared state.
#[derive(Clone)]
pub(crate) struct Rng(u64);

/// Mixes numbers into one seed.
pub(crate) fn mix(parts: &[u64]) -> u64 {
    let mut h = 0x9E37_79B9_7F4A_7C15u64;
    for p in parts {
        h = splitmix(h ^ p.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    }
    h
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix(self.0)
    }

    /// In [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// In (0, 1].
    fn open_unit(&mut self) -> f64 {
        1.0 - self.unit()
    }

    fn exp1(&mut self) -> f64 {
        -self.open_unit().ln()
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.open_unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    fn pick<'a>(&mut self, choices: &'a [Choice]) -> Option<&'a Choice> {
        let mut x = self.unit();
        for c in choices {
            if x < c.p {
                return Some(c);
            }
            x -= c.p;
        }
        choices.last()
    }
}

impl Dist {
    /// A sample, in seconds (never negative).
    pub(crate) fn sample(&self, rng: &mut Rng) -> f64 {
        let x = match self {
            Dist::Fixed(v) => *v,
            Dist::Exponential { mean } => mean * rng.exp1(),
            Dist::LogNormal { median, sigma } => median * (sigma * rng.normal()).exp(),
            Dist::Uniform { min, max } => min + (max - min) * rng.unit(),
            Dist::Empirical(s) => s[((rng.unit() * s.len() as f64) as usize).min(s.len() - 1)],
        };
        x.max(0.0)
    }
}

/// What one replication measured.
pub struct RunResult {
    /// The report over the instances started after the warm-up.
    pub report: Report,
    /// Timer firings after the warm-up, by name (`breach`, `escalation`, `sla_breach`, ...).
    pub timers: BTreeMap<String, usize>,
    /// Per staff group: seconds busy and seconds on shift, after the warm-up.
    pub staff: Vec<(f64, f64)>,
    /// Calls the engine refused, by kind (a timeout moved on while the work was in hand, ...).
    pub refused: BTreeMap<String, usize>,
}

struct Person {
    actor: Actor,
    group: usize,
    job: Option<Job>,
    /// When this person last found nothing to take, and nothing stood in the way but the
    /// tasks themselves (claimed, suspended, waiting for a customer): until the list or a
    /// customer's answer changes, they would find nothing again.
    idle: Option<Idle>,
}

/// A look that found nothing: what was looked at, at which instant, and whether the others of
/// the group would have found nothing either (`mine`).
#[derive(Clone, Copy)]
struct Idle {
    look: Look,
    at: i64,
    mine: bool,
}

/// A look at a work list: which list, as whom (`bit`, `shared`), at which version of it.
#[derive(Clone, Copy, PartialEq)]
struct Look {
    list: usize,
    bit: u64,
    shared: bool,
    version: u64,
}

/// What a person's look at a work list found.
enum Pick {
    Took(TaskId, NodeId),
    /// Nothing; `clean`: only because of the tasks themselves and this person (no claim
    /// refused but by a rule the engine applies again, nothing left out as taken by another
    /// in this round): the same look would find nothing again; `mine`: nothing was left out
    /// for this person alone (the others of the group would find nothing either).
    Nothing {
        clean: bool,
        mine: bool,
    },
}

/// A work list as the engine last showed it, in its order (the most urgent first: by deadline,
/// tasks without one last, then age). On a store, a person's, read whole at each reading; in
/// memory, a team's (the people of a staff group, 64 at most), each task with the people whose
/// list shows it, read again only for the instances changed since, once for the whole team.
#[derive(Default)]
struct Listing {
    tasks: BTreeMap<Key, Listed>,
    /// The keys each instance has in `tasks`.
    of: HashMap<InstanceId, Vec<Key>, BuildHasherDefault<IdHasher>>,
    /// The position in the change log up to which `tasks` is current.
    read: usize,
    /// Counts the changes of `tasks`.
    version: u64,
}

/// A task of a work list, whether it waits for a customer's answer (the model's `customer:` of
/// its node), and whose lists show it (bit `k`: the team's `k`-th person).
struct Listed {
    view: TaskView,
    customer: Customer,
    who: u64,
    /// The people (by index) the engine refused to let claim it (four eyes, a mutex, an
    /// assignment), each with a mark of the instance as the refusal left it: in memory the
    /// position of the refusal's own change in the change log, on a store the instance's
    /// version after it. They do not try again until the instance changes for another reason:
    /// the answer would be the same (and each refusal is one more audit record).
    refused: Vec<(usize, u64)>,
}

/// Whether a task waits for its customer, and when they answer (`None`: never), once drawn
/// (at the first look at the task).
#[derive(Clone, Copy)]
enum Customer {
    No,
    Waits,
    Answers(Option<i64>),
}

/// The order of [`Engine::work_list`].
type Key = Urgency;

impl Listing {
    fn insert(&mut self, view: TaskView, customer: Customer, who: u64) {
        let k = urgency(&view);
        self.version += 1;
        self.of.entry(view.id.instance()).or_default().push(k);
        self.tasks.insert(
            k,
            Listed {
                view,
                customer,
                who,
                refused: Vec::new(),
            },
        );
    }

    /// Forgets the refusals of `instance`'s tasks made before its change at log position
    /// `changed`.
    fn changed(&mut self, instance: InstanceId, changed: usize) {
        let Some(keys) = self.of.get(&instance) else {
            return;
        };
        for k in keys {
            if let Some(l) = self.tasks.get_mut(k) {
                let before = l.refused.len();
                l.refused.retain(|(_, at)| *at >= changed as u64);
                if l.refused.len() != before {
                    self.version += 1;
                }
            }
        }
    }

    fn forget(&mut self, instance: InstanceId) {
        if let Some(keys) = self.of.remove(&instance) {
            self.version += 1;
            for k in keys {
                self.tasks.remove(&k);
            }
        }
    }

    /// Whether the list holds exactly `views` of `instance` (in that order): most changes of
    /// an instance leave a team's part of it as it was.
    fn holds(&self, instance: InstanceId, views: &[(TaskView, u64)]) -> bool {
        let keys = self.of.get(&instance).map_or(&[][..], |k| &k[..]);
        keys.len() == views.len()
            && keys.iter().zip(views).all(|(k, (v, who))| {
                self.tasks
                    .get(k)
                    .is_some_and(|l| l.view == *v && l.who == *who)
            })
    }
}

struct Job {
    task: TaskId,
    process: usize,
    at: NodeId,
    remaining: i64,
}

/// Runs replication `rep` of `model` on `store`.
///
/// # Errors
/// The engine refused to open or to deploy a definition.
pub fn run_once(model: &Model, rep: u32, store: Arc<dyn Store>) -> Result<RunResult, String> {
    Sim::new(model, rep, Some(store))?.run()
}

/// Runs replication `rep` of `model` in memory, without a store: the engine keeps every
/// instance and logs the instances each call changed, and the staff's work lists are read again
/// only for those. The figures are those of [`run_once`] on a store (a test compares them), in
/// a fraction of its time over a long horizon: no commit copies an instance, and no call takes
/// a copy of its instance to put back should a commit fail.
///
/// # Errors
/// The engine refused to deploy a definition.
pub fn replicate(model: &Model, rep: u32) -> Result<RunResult, String> {
    Sim::new(model, rep, None)?.run()
}

struct Sim<'m> {
    model: &'m Model,
    seed: u64,
    engine: Engine,
    clock: Arc<ManualClock>,
    /// The store `run_once` runs on; `None` in memory, with the engine's change log.
    store: Option<Arc<dyn Store>>,
    people: Vec<Person>,
    /// The work lists: each team's in memory (kept current from the change log), each
    /// person's on a store (read whole at each reading).
    lists: Vec<Listing>,
    /// Each person's work list (an index into `lists`) and their bit in it.
    list_of: Vec<(usize, u64)>,
    /// In memory, the people of each team, as the engine reads a team's list.
    teams: Vec<Vec<Actor>>,
    /// Per team and definition, the nodes whose tasks the team's lists may show (bit
    /// `n % 64`, as the change log gives the nodes with open tasks).
    team_nodes: Vec<Vec<u64>>,
    /// The engine's change log as read so far, from `log_base` on.
    log: Vec<Changed>,
    log_base: usize,
    /// From the change log: each running instance's earliest timer, and by instant.
    due: BTreeSet<(DateTime<Utc>, InstanceId)>,
    due_of: HashMap<InstanceId, DateTime<Utc>, BuildHasherDefault<IdHasher>>,
    /// Instances the change log said finished, to sum into the report.
    finished: Vec<InstanceId>,
    /// The instances a work list's reading met already (kept to spare an allocation).
    seen: HashSet<InstanceId, BuildHasherDefault<IdHasher>>,
    on_shift: Vec<bool>,
    /// Seconds since the start.
    now: i64,
    next_arrival: Vec<Option<i64>>,
    arrival_rng: Vec<Rng>,
    /// When the customer of a task answers; `None`: never.
    answers: HashMap<TaskId, Option<i64>, BuildHasherDefault<IdHasher>>,
    answer_times: BinaryHeap<std::cmp::Reverse<i64>>,
    /// The latest answer time taken off `answer_times`.
    answered: i64,
    incidents: VecDeque<(InstanceId, i64)>,
    /// The definition (index into the model's) of each instance started.
    process_of: HashMap<InstanceId, usize, BuildHasherDefault<IdHasher>>,
    /// The model's work by definition, then node (by index).
    work_by_def: Vec<Vec<Option<&'m Work>>>,
    /// The definition of each arrival process.
    def_of_arrival: Vec<usize>,
    timers: BTreeMap<String, usize>,
    busy: Vec<(f64, f64)>,
    refused: BTreeMap<String, usize>,
    rotate: usize,
}

impl<'m> Sim<'m> {
    fn new(model: &'m Model, rep: u32, store: Option<Arc<dyn Store>>) -> Result<Sim<'m>, String> {
        let seed = mix(&[model.seed, u64::from(rep)]);
        let clock = Arc::new(ManualClock::new(model.start));
        // On a store, completed instances leave memory (the store keeps them): work lists scan
        // only running ones. In memory the engine keeps them for the report, and the work
        // lists follow the change log.
        let config = Config {
            retain_completed: store.is_none(),
            ..Config::default()
        };
        let mut b = Engine::builder();
        b.config(config).clock(Arc::clone(&clock));
        if store.is_none() {
            b.log_changes();
        }
        for (name, cal) in &model.calendars {
            b.calendar(name.clone(), cal.clone());
        }
        if let Some(org) = &model.organisation {
            b.organisation(Arc::clone(org));
        }
        // One handler per handler name: what the model says of the service nodes calling it.
        let mut handlers: BTreeMap<String, BTreeMap<String, Work>> = BTreeMap::new();
        for def in &model.defs {
            for (_, node) in def.nodes() {
                if node.kind() != NodeKind::ServiceTask {
                    continue;
                }
                let Some(h) = node.handler() else { continue };
                let work = model
                    .work
                    .get(&(def.key().id.to_owned(), node.id().to_owned()))
                    .cloned()
                    .unwrap_or_default();
                handlers
                    .entry(h.to_owned())
                    .or_default()
                    .insert(node.id().to_owned(), work);
            }
        }
        for (name, nodes) in handlers {
            b.handler(
                name,
                handler_fn(move |call| {
                    let Some(work) = nodes.get(call.node) else {
                        return Ok(Vars::new());
                    };
                    let mut rng = Rng::new(mix(&[seed, call.instance.get(), 0x5E5]));
                    Ok(output(work, &mut rng).0)
                }),
            );
        }
        let engine = match &store {
            Some(store) => b.open(Arc::clone(store)).map_err(|e| e.to_string())?,
            None => b.build(),
        };
        for def in &model.defs {
            let copy = ProcessDef::from_yaml(def.text()).map_err(|e| e.to_string())?;
            engine.deploy(copy).map_err(|e| e.to_string())?;
        }
        let mut people = Vec::new();
        for (g, group) in model.staff.iter().enumerate() {
            for i in 0..group.people {
                // The organisation's people act with the roles it gives them.
                let actor = match (group.names.get(i), &model.organisation) {
                    (Some(name), Some(org)) => org
                        .actor(name)
                        .unwrap_or_else(|| Actor::new(name.clone(), group.roles.clone())),
                    _ => Actor::new(format!("{}.{}", group.prefix, i + 1), group.roles.clone()),
                };
                people.push(Person {
                    actor,
                    group: g,
                    job: None,
                    idle: None,
                });
            }
        }
        // In memory, the people of a staff group share one list, 64 at most to a list.
        let mut list_of = Vec::with_capacity(people.len());
        let mut teams: Vec<Vec<Actor>> = Vec::new();
        for (i, p) in people.iter().enumerate() {
            if store.is_some() {
                list_of.push((i, 1));
                continue;
            }
            let same = i > 0 && people[i - 1].group == p.group;
            match teams.last_mut() {
                Some(team) if same && team.len() < 64 => team.push(p.actor.clone()),
                _ => teams.push(vec![p.actor.clone()]),
            }
            let team = teams.len() - 1;
            list_of.push((team, 1 << (teams[team].len() - 1)));
        }
        let team_nodes = teams
            .iter()
            .map(|team| {
                model
                    .defs
                    .iter()
                    .map(|def| {
                        def.nodes()
                            .filter(|(n, _)| team.iter().any(|a| engine.may_ever_list(def, *n, a)))
                            .fold(0, |m, (n, _)| m | 1 << (n.index() % 64))
                    })
                    .collect()
            })
            .collect();
        let lists = match &store {
            Some(_) => people.iter().map(|_| Listing::default()).collect(),
            None => teams.iter().map(|_| Listing::default()).collect(),
        };
        let arrival_rng = (0..model.arrivals.len())
            .map(|i| Rng::new(mix(&[seed, 0xA77, i as u64])))
            .collect();
        Ok(Sim {
            model,
            seed,
            engine,
            clock,
            store,
            lists,
            list_of,
            teams,
            team_nodes,
            log: Vec::new(),
            log_base: 0,
            due: BTreeSet::new(),
            due_of: HashMap::default(),
            finished: Vec::new(),
            seen: HashSet::default(),
            people,
            on_shift: vec![false; model.staff.len()],
            now: 0,
            next_arrival: vec![None; model.arrivals.len()],
            arrival_rng,
            answers: HashMap::default(),
            answer_times: BinaryHeap::new(),
            answered: i64::MIN,
            incidents: VecDeque::new(),
            process_of: HashMap::default(),
            // The engine deploys copies of these definitions (from the same text): their nodes
            // have the same indices.
            work_by_def: model
                .defs
                .iter()
                .map(|d| {
                    d.nodes()
                        .map(|(_, n)| model.work.get(&(d.key().id.to_owned(), n.id().to_owned())))
                        .collect()
                })
                .collect(),
            def_of_arrival: model
                .arrivals
                .iter()
                .map(|a| {
                    model
                        .defs
                        .iter()
                        .position(|d| d.key().id == a.process)
                        .unwrap_or(usize::MAX)
                })
                .collect(),
            timers: BTreeMap::new(),
            busy: vec![(0.0, 0.0); model.staff.len()],
            refused: BTreeMap::new(),
            rotate: 0,
        })
    }

    fn at(&self, t: i64) -> DateTime<Utc> {
        self.model.start + Duration::seconds(t)
    }

    fn secs(&self, at: DateTime<Utc>) -> i64 {
        let d = at - self.model.start;
        // Round up: an event is handled at or after it is due.
        let s = d.num_seconds();
        if d > Duration::seconds(s) { s + 1 } else { s }
    }

    fn run(mut self) -> Result<RunResult, String> {
        let end = self.model.horizon;
        let model = self.model;
        let options = ReportOptions::default().since(self.at(model.warm_up));
        // In memory, each instance is summed into the report as it finishes and let go (those
        // still running at the end, then): a year does not keep its instances.
        let mut tally = Tally::new(&model.defs, &options);
        for i in 0..self.model.arrivals.len() {
            self.next_arrival[i] = self.draw_arrival(i, 0);
        }
        let mut boundary = 0;
        self.shifts();
        boundary += 1800;
        self.dispatch();
        loop {
            let mut next = end.min(boundary);
            for a in self.next_arrival.iter().flatten() {
                next = next.min(*a);
            }
            for p in &self.people {
                if let Some(j) = &p.job
                    && self.on_shift[p.group]
                {
                    next = next.min(self.now + j.remaining.max(0));
                }
            }
            // In memory, the change log gives each running instance's earliest timer as its
            // last call left it: the engine's schedule, without looking through its heaps.
            let due = match &self.store {
                Some(_) => self.engine.next_due(),
                None => {
                    self.read_log();
                    self.due.first().map(|(at, _)| *at)
                }
            };
            if let Some(due) = due {
                let d = self.secs(due);
                next = next.min(d.max(self.now + 1));
            }
            while let Some(std::cmp::Reverse(t)) = self.answer_times.peek() {
                if *t <= self.now {
                    self.answered = self.answered.max(*t);
                    self.answer_times.pop();
                } else {
                    next = next.min(*t);
                    break;
                }
            }
            if let Some((_, t)) = self.incidents.front() {
                next = next.min((*t).max(self.now));
            }
            let next = next.max(self.now);
            let dt = next - self.now;
            let measured = self.now >= self.model.warm_up;
            for p in &mut self.people {
                if !self.on_shift[p.group] {
                    continue;
                }
                if measured {
                    self.busy[p.group].1 += dt as f64;
                }
                if let Some(j) = &mut p.job {
                    j.remaining -= dt;
                    if measured {
                        self.busy[p.group].0 += dt as f64;
                    }
                }
            }
            self.now = next;
            if self.now >= end {
                break;
            }
            let now_at = self.at(self.now);
            self.clock.set(now_at);
            // In memory, the change log says when the next timer is due: a `tick` before it
            // fires nothing (unless a kept message may expire), and walks every timer heap.
            let fired = if self.store.is_some()
                || self.engine.keeps_messages()
                || self.due.first().is_some_and(|(at, _)| *at <= now_at)
            {
                self.engine.tick(now_at)
            } else {
                Vec::new()
            };
            if self.now >= self.model.warm_up {
                for f in fired {
                    *self.timers.entry(f.name()).or_default() += 1;
                }
            }
            if self.now >= boundary {
                self.shifts();
                while boundary <= self.now {
                    boundary += 1800;
                }
            }
            for i in 0..self.people.len() {
                if self.on_shift[self.people[i].group]
                    && self.people[i]
                        .job
                        .as_ref()
                        .is_some_and(|j| j.remaining <= 0)
                {
                    self.finish(i);
                }
            }
            for i in 0..self.model.arrivals.len() {
                while let Some(t) = self.next_arrival[i]
                    && t <= self.now
                {
                    self.arrive(i);
                    self.next_arrival[i] = self.draw_arrival(i, t);
                }
            }
            self.retry_incidents();
            self.dispatch();
            self.let_go(&mut tally);
        }
        let report = match &self.store {
            Some(store) => Report::from_store(&**store, &options).map_err(|e| e.to_string())?,
            None => {
                self.read_log();
                self.finished.extend(self.engine.instances());
                self.let_go(&mut tally);
                tally.finish()
            }
        };
        Ok(RunResult {
            report,
            timers: self.timers,
            staff: self.busy,
            refused: self.refused,
        })
    }

    fn shifts(&mut self) {
        let at = self.at(self.now);
        for (g, group) in self.model.staff.iter().enumerate() {
            self.on_shift[g] = match group.shift {
                None => true,
                Some(c) => self.model.calendars[c]
                    .1
                    .is_working(at)
                    .is_ok_and(|w| w.value),
            };
        }
    }

    /// Arrivals per hour of process `i` at `t`.
    fn rate(&self, a: &Arrival, t: i64) -> f64 {
        let Some((_, cal)) = self.model.calendars.get(a.calendar) else {
            return a.per_business_hour;
        };
        let at = self.at(t);
        let working = cal.is_working(at).is_ok_and(|w| w.value);
        let (hour, day) = local_hour_day(cal, at);
        let base = if working {
            a.per_business_hour
        } else {
            a.per_other_hour
        };
        base * a.weekday[day] * a.hour[hour]
    }

    /// The next arrival of process `i` after `from`: a Poisson process whose rate is constant
    /// within each half hour.
    fn draw_arrival(&mut self, i: usize, from: i64) -> Option<i64> {
        let a = &self.model.arrivals[i];
        let mut e = self.arrival_rng[i].exp1();
        let mut t = from;
        let start = self.model.start.timestamp();
        while t < self.model.horizon {
            let seg_end = ((start + t) / 1800 + 1) * 1800 - start;
            let rate = self.rate(a, t) / 3600.0;
            let cap = rate * (seg_end - t) as f64;
            if rate > 0.0 && cap >= e {
                return Some(t + ((e / rate).ceil() as i64).max(1));
            }
            e -= cap;
            t = seg_end;
        }
        None
    }

    fn arrive(&mut self, i: usize) {
        let a = &self.model.arrivals[i];
        let rng = &mut self.arrival_rng[i];
        let mut vars = a.vars.clone();
        for (_, choices) in &a.mix {
            if let Some(c) = rng.pick(choices) {
                vars.extend(c.set.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        let id = match self.engine.start(&a.process, vars) {
            Ok(id) => id,
            Err(ExecError::Incident { instance, .. }) => {
                self.incidents.push_back((instance, self.now + 1800));
                instance
            }
            Err(e) => {
                self.refuse("start", &e);
                return;
            }
        };
        if let Some(&d) = self.def_of_arrival.get(i).filter(|d| **d != usize::MAX) {
            self.process_of.insert(id, d);
        }
    }

    fn refuse(&mut self, what: &str, e: &ExecError) {
        let kind = match e {
            ExecError::Denied { .. } => "denied (an escalation gave the task to others)",
            ExecError::AlreadyClaimed { .. } => "already claimed",
            ExecError::TaskClosed { .. } => "task closed (a timeout moved on)",
            ExecError::Variables { .. } => "variables",
            ExecError::Incident { .. } => "incident",
            ExecError::Refused { .. } => "refused (four eyes, a mutex, an assignment)",
            ExecError::Deadline { .. } => "deadline cannot be computed",
            other => {
                let text = format!("{other:?}");
                let name = text
                    .split([' ', '(', '{'])
                    .next()
                    .unwrap_or("other")
                    .to_owned();
                *self.refused.entry(format!("{what}: {name}")).or_default() += 1;
                return;
            }
        };
        *self.refused.entry(format!("{what}: {kind}")).or_default() += 1;
    }

    fn retry_incidents(&mut self) {
        while let Some(&(instance, at)) = self.incidents.front() {
            if at > self.now {
                break;
            }
            self.incidents.pop_front();
            match self.engine.retry(instance) {
                Ok(()) => {}
                Err(ExecError::Incident { .. }) => {
                    self.incidents.push_back((instance, self.now + 1800));
                }
                Err(e) => self.refuse("retry", &e),
            }
        }
    }

    /// The model's work for a task of `instance` at `node`.
    fn work(&mut self, instance: InstanceId, node: NodeId) -> (usize, Option<&'m Work>) {
        let Some(p) = self.process(instance) else {
            return (usize::MAX, None);
        };
        (p, self.work_by_def[p].get(node.index()).copied().flatten())
    }

    /// The definition (an index into the model's) `instance` runs (that of an instance the
    /// simulation did not start, a called one, is looked up once).
    fn process(&mut self, instance: InstanceId) -> Option<usize> {
        match self.process_of.get(&instance) {
            Some(p) => Some(*p),
            None => {
                let found = self
                    .engine
                    .definition_of(instance)
                    .ok()
                    .and_then(|d| self.model.defs.iter().position(|m| m.key() == d.key()));
                if let Some(p) = found {
                    self.process_of.insert(instance, p);
                }
                found
            }
        }
    }

    /// When the customer of task `id` (at `node`, opened at `created`), which waits for them,
    /// answers (`None`: never), drawn at the first look.
    fn answer(&mut self, id: TaskId, node: NodeId, created: DateTime<Utc>) -> Option<i64> {
        let (_, work) = self.work(id.instance(), node);
        let customer = work.and_then(|w| w.customer.as_ref())?;
        let created = self.secs(created);
        let seed = self.seed;
        let now = self.now;
        let answers_at = &mut self.answer_times;
        *self.answers.entry(id).or_insert_with(|| {
            let mut rng = Rng::new(mix(&[
                seed,
                id.instance().get(),
                u64::from(id.seq()),
                0xCA11,
            ]));
            let answer = (rng.unit() >= customer.no_answer)
                .then(|| created + customer.delay.sample(&mut rng).round() as i64);
            // The loop wakes when the customer answers (once: it was pushed at every look at
            // the task before, 3.6 million times over a simulated year).
            if let Some(t) = answer.filter(|t| *t > now) {
                answers_at.push(std::cmp::Reverse(t));
            }
            answer
        })
    }

    /// Brings person `i`'s work list up to date: in memory, reads again (for their whole team)
    /// the instances changed since the team's last reading (those no longer running leave
    /// it); on a store, reads it whole, keeping the refusals of instances that did not change
    /// since.
    fn refresh(&mut self, i: usize) {
        let (l, bit) = self.list_of[i];
        if self.store.is_some() {
            let tasks = self.engine.work_list(&self.people[i].actor);
            let old = std::mem::take(&mut self.lists[l]);
            for t in tasks {
                let customer = self.waits_for_customer(&t);
                self.lists[l].insert(t, customer, bit);
            }
            for Listed { view, refused, .. } in old.tasks.into_values() {
                if refused.is_empty() {
                    continue;
                }
                let now = self.engine.held_version(view.id.instance());
                let Listing { of, tasks, .. } = &mut self.lists[l];
                let keys = of.get(&view.id.instance()).map_or(&[][..], |k| &k[..]);
                let key = keys
                    .iter()
                    .find(|k| tasks.get(*k).is_some_and(|t| t.view.id == view.id));
                if let Some(listed) = key.and_then(|k| tasks.get_mut(k)) {
                    listed.refused = refused
                        .into_iter()
                        .filter(|(_, at)| Some(*at) == now)
                        .collect();
                }
            }
            return;
        }
        self.read_log();
        let from = self.lists[l].read - self.log_base;
        self.lists[l].read = self.log_base + self.log.len();
        // Each instance once, as its latest change left it (a finished instance does not run
        // again), newest first.
        self.seen.clear();
        for k in (from..self.log.len()).rev() {
            let Changed {
                id, running, open, ..
            } = self.log[k];
            if !self.seen.insert(id) {
                continue;
            }
            // An instance without open tasks at nodes the team may see has nothing for it.
            let none = running
                && self
                    .process(id)
                    .is_some_and(|p| open & self.team_nodes[l][p] == 0);
            if !running || none {
                self.lists[l].forget(id);
                continue;
            }
            let views = self.engine.work_lists_of(id, &self.teams[l]);
            if self.lists[l].holds(id, &views) {
                self.lists[l].changed(id, self.log_base + k);
                continue;
            }
            self.lists[l].forget(id);
            for (t, who) in views {
                let customer = self.waits_for_customer(&t);
                self.lists[l].insert(t, customer, who);
            }
        }
    }

    /// Whether the model says task `t` waits for a customer's answer, and when they answer if
    /// that was drawn already.
    fn waits_for_customer(&mut self, t: &TaskView) -> Customer {
        let waits = self
            .work(t.id.instance(), t.node)
            .1
            .is_some_and(|w| w.customer.is_some());
        match self.answers.get(&t.id) {
            _ if !waits => Customer::No,
            Some(answer) => Customer::Answers(*answer),
            None => Customer::Waits,
        }
    }

    /// Sums the instances that finished into `tally` and takes them out of the engine.
    fn let_go(&mut self, tally: &mut Tally<'_>) {
        for id in self.finished.drain(..) {
            if let Ok(inst) = self.engine.remove(id) {
                tally.add(&inst);
            }
        }
    }

    /// Reads the engine's new change log entries: keeps the index of due timers, and notes the
    /// instances that finished.
    fn read_log(&mut self) {
        let from = self.log.len();
        self.engine.take_changes(&mut self.log);
        for c in &self.log[from..] {
            if !c.running {
                self.finished.push(c.id);
            }
            let due = c.next_due.filter(|_| c.running);
            let old = match due {
                Some(at) => self.due_of.insert(c.id, at),
                None => self.due_of.remove(&c.id),
            };
            if old != due {
                if let Some(old) = old {
                    self.due.remove(&(old, c.id));
                }
                if let Some(at) = due {
                    self.due.insert((at, c.id));
                }
            }
        }
    }

    /// Drops the part of the change log every person has read.
    fn trim_log(&mut self) {
        let Some(read) = self.lists.iter().map(|l| l.read).min() else {
            return;
        };
        let done = read - self.log_base;
        if done >= 4096 {
            self.log.drain(..done);
            self.log_base = read;
        }
    }

    fn dispatch(&mut self) {
        let n = self.people.len();
        if n == 0 {
            return;
        }
        self.rotate = (self.rotate + 1) % n;
        // The people of a group hold the same roles: the first idle one reads the work list,
        // the others of the group share that reading (less the tasks taken from it), leaving
        // out the tasks offered to particular people (an owner, candidates), which only their
        // own reading shows (they are first in turn at a later event).
        let mut reader: Vec<Option<usize>> = vec![None; self.model.staff.len()];
        // The tasks taken from each group's reading in this round.
        let mut taken: Vec<Vec<TaskId>> = vec![Vec::new(); self.model.staff.len()];
        // The groups whose reader found nothing, cleanly, in this round: the others of the
        // group, who see part of the reader's list, would find nothing either.
        let mut empty = vec![false; self.model.staff.len()];
        for k in 0..n {
            let i = (k + self.rotate) % n;
            let g = self.people[i].group;
            if self.people[i].job.is_some() || !self.on_shift[g] {
                continue;
            }
            // The organisation's people differ (units, skills, allocation): each reads their
            // own list.
            let (from, shared) = match reader[g] {
                Some(r) if self.model.staff[g].names.is_empty() => (r, true),
                _ => {
                    self.refresh(i);
                    reader[g] = Some(i);
                    (i, false)
                }
            };
            if shared && empty[g] {
                continue;
            }
            // The reader's list as the reader sees it; taken out while it is walked. In memory
            // (where a list counts its changes), a person who found nothing in it, unchanged
            // since, and heard no customer answer since, finds nothing again.
            let (l, bit) = self.list_of[from];
            let look = Look {
                list: l,
                bit,
                shared,
                version: self.lists[l].version,
            };
            let pick = match self.people[i].idle {
                Some(was)
                    if self.store.is_none() && was.look == look && !self.answers_since(was.at) =>
                {
                    Pick::Nothing {
                        clean: true,
                        mine: was.mine,
                    }
                }
                _ => {
                    let mut list = std::mem::take(&mut self.lists[l]);
                    let pick = self.choose(i, &mut list, bit, shared, &taken[g]);
                    self.lists[l] = list;
                    pick
                }
            };
            let (id, at) = match pick {
                Pick::Took(id, at) => (id, at),
                Pick::Nothing { clean, mine } => {
                    if clean {
                        empty[g] |= !shared && mine;
                        self.people[i].idle = Some(Idle {
                            look,
                            at: self.now,
                            mine,
                        });
                    }
                    continue;
                }
            };
            taken[g].push(id);
            let (process, work) = self.work(id.instance(), at);
            let mut rng = Rng::new(mix(&[
                self.seed,
                id.instance().get(),
                u64::from(id.seq()),
                0x4A4D,
            ]));
            let dist = work
                .and_then(|w| w.handling.as_ref())
                .or(self.model.default_handling.as_ref());
            let secs = dist.map_or(600.0, |d| d.sample(&mut rng)).round() as i64;
            self.people[i].job = Some(Job {
                task: id,
                process,
                at,
                remaining: secs.max(1),
            });
        }
        self.trim_log();
    }

    /// The task person `i` takes from `list` (shown to the people of `bit`: the group's
    /// reader), claimed unless they hold it: the most urgent one not suspended, not claimed by
    /// another, not taken in this round, not waiting for a customer, that the engine lets them
    /// claim; a `shared` reading leaves out the tasks offered to particular people.
    fn choose(
        &mut self,
        i: usize,
        list: &mut Listing,
        bit: u64,
        shared: bool,
        taken: &[TaskId],
    ) -> Pick {
        let mut clean = true;
        // Whether nothing was left out but for this person alone (a refusal).
        let mut mine = true;
        for Listed {
            view: t,
            customer,
            who,
            refused,
        } in list.tasks.values_mut()
        {
            let me = &self.people[i].actor.id;
            let personal = t.assignee.is_some() || !t.candidates.is_empty();
            if *who & bit == 0
                || t.suspended
                || t.claimed_by.as_ref().is_some_and(|c| c != me)
                || (shared && personal)
            {
                continue;
            }
            if refused.iter().any(|(p, _)| *p == i) {
                // The same answer again: others of the group may be let.
                mine = false;
                continue;
            }
            if taken.contains(&t.id) {
                clean = false;
                continue;
            }
            let answer = match *customer {
                Customer::No => None,
                Customer::Answers(answer) => Some(answer),
                Customer::Waits => {
                    let answer = self.answer(t.id, t.node, t.created_at);
                    *customer = Customer::Answers(answer);
                    Some(answer)
                }
            };
            if answer.is_some_and(|a| a.is_none_or(|at| at > self.now)) {
                continue;
            }
            if t.claimed_by.is_none()
                && let Err(e) = self.engine.claim(t.id, &self.people[i].actor)
            {
                // Refused to this person (four eyes, a mutex): another may take it.
                self.refuse("claim", &e);
                let mark = match e {
                    ExecError::Refused { .. } if self.store.is_some() => {
                        self.engine.held_version(t.id.instance())
                    }
                    ExecError::Refused { .. } => {
                        // Its record is the instance's latest change.
                        self.read_log();
                        Some((self.log_base + self.log.len().saturating_sub(1)) as u64)
                    }
                    _ => None,
                };
                if let Some(mark) = mark {
                    refused.push((i, mark));
                    mine = false;
                } else {
                    clean = false;
                }
                continue;
            }
            return Pick::Took(t.id, t.node);
        }
        Pick::Nothing { clean, mine }
    }

    /// Whether a customer answered after `at` (and up to now).
    fn answers_since(&self, at: i64) -> bool {
        self.answered > at
            || self
                .answer_times
                .peek()
                .is_some_and(|std::cmp::Reverse(t)| *t <= self.now)
    }

    fn finish(&mut self, i: usize) {
        let Some(job) = self.people[i].job.take() else {
            return;
        };
        let _ = job.process;
        let (_, work) = self.work(job.task.instance(), job.at);
        let mut rng = Rng::new(mix(&[
            self.seed,
            job.task.instance().get(),
            u64::from(job.task.seq()),
            0xB4A,
        ]));
        let (vars, send_back) = match work {
            Some(w) => output(w, &mut rng),
            None => (Vars::new(), None),
        };
        let actor = &self.people[i].actor;
        let result = match &send_back {
            Some(to) => self
                .engine
                .send_back(job.task, actor, to, "what-if: sent back"),
            None => self.engine.complete(job.task, actor, vars),
        };
        self.answers.remove(&job.task);
        match result {
            Ok(()) => {}
            Err(ExecError::Incident { instance, .. }) => {
                self.incidents.push_back((instance, self.now + 1800));
            }
            Err(e) => self.refuse(
                if send_back.is_some() {
                    "send back"
                } else {
                    "complete"
                },
                &e,
            ),
        }
    }
}

/// The variables a completion sets (the fixed ones, then the branch drawn) and the node to send
/// the case back to, if the branch drawn says so.
fn output(work: &Work, rng: &mut Rng) -> (Vars, Option<String>) {
    let mut vars = work.set.clone();
    let mut back = None;
    if let Some(c) = rng.pick(&work.branches) {
        vars.extend(c.set.iter().map(|(k, v)| (k.clone(), v.clone())));
        back = c.send_back.clone();
    }
    (vars, back)
}
