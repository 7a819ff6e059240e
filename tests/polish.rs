//! Issue 16's polish through the public API: work-list rows and errors serialize (errors as
//! `{kind, fields}`, and with [`procflow::ErrorBody`] also `message`), completions are credited to
//! the role the actor acted in, and the SLA figures agree with the breaches they sit beside.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use procflow::{
    Actor, Engine, ErrorBody, ExecError, ManualClock, ProcessDef, Report, ReportOptions, Vars,
};
use serde_json::json;

fn t0() -> DateTime<Utc> {
    // Monday 2026-03-09 09:00 in Shanghai.
    "2026-03-09T01:00:00Z".parse().unwrap()
}

const TWO_ROLES: &str = r#"
id: two
version: 1
name: Two roles
roles: { agent: { name: Agent }, expert: { name: Expert }, lead: { name: Lead } }
nodes:
  start: { kind: start, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [agent, expert], accountable: lead }
    due: 1h
    next: done
  done: { kind: end }
"#;

fn engine(clock: &Arc<ManualClock>) -> Engine {
    let engine = Engine::builder().clock(Arc::clone(clock)).build();
    engine
        .deploy(ProcessDef::from_yaml(TWO_ROLES).unwrap())
        .unwrap();
    engine
}

#[test]
fn task_views_and_errors_serialize() {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = engine(&clock);
    let id = engine.start("two", Vars::new()).unwrap();
    let tasks = engine.tasks(id).unwrap();
    let row = serde_json::to_value(&tasks[0]).unwrap();
    assert_eq!(row["node_id"], "work");
    assert_eq!(row["name"], "Work");

    let nobody = Actor::new("nobody", ["guest"]);
    let err = engine
        .complete(tasks[0].id, &nobody, Vars::new())
        .unwrap_err();
    assert!(matches!(err, ExecError::Denied { .. }), "{err:?}");
    let plain = serde_json::to_value(&err).unwrap();
    assert_eq!(plain["kind"], "denied");
    assert_eq!(plain["fields"]["actor"], "nobody");
    assert_eq!(
        plain["fields"]["allowed"],
        json!(["agent", "expert", "lead"])
    );
    let body = serde_json::to_value(ErrorBody::new(&err)).unwrap();
    assert_eq!(body["kind"], "denied");
    assert_eq!(body["message"], err.to_string());
    assert_eq!(body["fields"], plain["fields"]);

    // A load error: every problem with its location, path, kind and fields.
    let load = ProcessDef::from_yaml(&TWO_ROLES.replace("accountable: lead", "accountable: boss"))
        .unwrap_err();
    let json = serde_json::to_value(ErrorBody::new(&load)).unwrap();
    assert_eq!(json["message"], load.to_string());
    let problem = &json["problems"][0];
    assert_eq!(problem["path"], "nodes.work.raci.accountable");
    assert!(
        problem["location"]["line"].as_u64().unwrap() > 0,
        "{problem}"
    );
    assert!(problem["kind"].is_string(), "{problem}");

    // A store error.
    let store = procflow::SqliteStore::open("no/such/dir/store.db").unwrap_err();
    let json = serde_json::to_value(ErrorBody::new(&store)).unwrap();
    assert_eq!(json["kind"], "missing", "{json}");
    assert_eq!(json["message"], "no/such/dir/store.db: no such store file");

    // A report error.
    let report = Report::from_store(
        &procflow::MemoryStore::new(),
        &ReportOptions::default().process("nope"),
    )
    .unwrap_err();
    let json = serde_json::to_value(ErrorBody::new(&report)).unwrap();
    assert_eq!(json["kind"], "unknown_process");
    assert_eq!(json["fields"]["process"], "nope");
}

/// Issue 16: a completion is credited to the role the actor acted in (kept in its audit record),
/// not to every responsible role of the task.
#[test]
fn completions_are_credited_to_the_role_acted_in() {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = engine(&clock);
    let agent = Actor::new("ann", ["agent"]);
    let expert = Actor::new("eli", ["expert"]);
    let lead = Actor::new("lee", ["lead"]);
    let mut ids = Vec::new();
    for actor in [&agent, &agent, &expert, &lead] {
        let id = engine.start("two", Vars::new()).unwrap();
        let task = engine.tasks(id).unwrap()[0].id;
        engine.complete(task, actor, Vars::new()).unwrap();
        ids.push(id);
    }
    let def = ProcessDef::from_yaml(TWO_ROLES).unwrap();
    let roles: Vec<&str> = def.roles().map(|(r, _)| r.as_str()).collect();
    let acted: Vec<(String, Option<&str>)> = ids
        .iter()
        .map(|id| {
            let inst = engine.instance(*id).unwrap();
            inst.audit()
                .iter()
                .find_map(|r| match &r.what {
                    procflow::Entry::Completed { role, .. } => {
                        Some((r.describe(&def), role.map(|i| roles[usize::from(i)])))
                    }
                    _ => None,
                })
                .unwrap()
        })
        .collect();
    assert_eq!(
        acted.iter().map(|(_, r)| *r).collect::<Vec<_>>(),
        [Some("agent"), Some("agent"), Some("expert"), Some("lead")]
    );
    assert!(
        acted[0].0.ends_with("completed by ann as agent"),
        "{}",
        acted[0].0
    );
    assert!(
        acted[3]
            .0
            .ends_with("completed by lee as lead (accountable override)"),
        "{}",
        acted[3].0
    );

    let instances: Vec<_> = ids.iter().map(|id| engine.instance(*id).unwrap()).collect();
    let report = Report::compute(&[Arc::new(def)], &instances, &ReportOptions::default());
    let completed = |role: &str| report.role("two", role).unwrap().completed;
    assert_eq!(
        (completed("agent"), completed("expert"), completed("lead")),
        (2, 1, 1)
    );
    assert_eq!(report.role("two", "lead").unwrap().overrides, 1);
}

/// Issue 16: a report showing task breaches must not show 100% met: the instance rate (process
/// deadline) and the task rate (task deadlines) are both shown, each under its own head.
#[test]
fn the_sla_met_rates_agree_with_the_breaches() {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = engine(&clock);
    let ann = Actor::new("ann", ["agent"]);
    let late = engine.start("two", Vars::new()).unwrap();
    let early = engine.start("two", Vars::new()).unwrap();
    let open = engine.start("two", Vars::new()).unwrap();
    let task = |id| engine.tasks(id).unwrap()[0].id;
    engine.complete(task(early), &ann, Vars::new()).unwrap();
    clock.advance(chrono::Duration::hours(2));
    engine.tick(clock_now(&clock));
    engine.complete(task(late), &ann, Vars::new()).unwrap();
    let instances: Vec<_> = [late, early, open]
        .iter()
        .map(|id| engine.instance(*id).unwrap())
        .collect();
    let def = Arc::new(ProcessDef::from_yaml(TWO_ROLES).unwrap());
    let report = Report::compute(&[def], &instances, &ReportOptions::default());
    let p = report.process("two").unwrap();
    // `open` breached too (its deadline fired while it waits): decided.
    assert_eq!(report.node("two", "work").unwrap().breaches, 2);
    assert_eq!((p.task_deadlines, p.task_breached), (3, 2));
    assert_eq!(p.task_met_rate, Some(1.0 / 3.0));
    // No process deadline: no instance rate, rather than 100%.
    assert_eq!((p.sla_instances, p.sla_met_rate), (0, None));
    let table = report.to_table();
    assert!(table.contains("instance met rate"), "{table}");
    assert!(table.contains("task met rate"), "{table}");
    assert!(table.contains("33.3%"), "{table}");
    assert!(!table.contains("100.0%"), "{table}");
    let csv = report.to_csv();
    assert!(
        csv.lines()
            .next()
            .unwrap()
            .ends_with("task_deadlines,task_breached,task_met_rate,calendar")
    );
}

fn clock_now(clock: &ManualClock) -> DateTime<Utc> {
    use procflow::Clock;
    clock.now()
}

const ON_CALENDAR: &str = r#"
id: office
version: 1
name: Office hours
calendar: china
roles: { agent: { name: Agent }, lead: { name: Lead } }
nodes:
  start: { kind: start, next: work }
  work: { kind: user_task, name: Work, raci: { responsible: [agent], accountable: lead }, next: done }
  done: { kind: end }
"#;

/// Issue 16: a process on a business calendar is reported in business time ("1d1h" for about
/// ten business hours was wall-clock time).
#[test]
fn durations_are_business_time_where_the_process_has_a_calendar() {
    let china = procflow::BusinessCalendar::from_file("process-defs/calendars/china.yaml").unwrap();
    // Monday 2026-03-09 17:00 in Shanghai.
    let start: DateTime<Utc> = "2026-03-09T09:00:00Z".parse().unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let engine = Engine::builder()
        .clock(Arc::clone(&clock))
        .calendar("china", china.clone())
        .build();
    engine
        .deploy(ProcessDef::from_yaml(ON_CALENDAR).unwrap())
        .unwrap();
    let ann = Actor::new("ann", ["agent"]);
    let id = engine.start("office", Vars::new()).unwrap();
    let task = engine.tasks(id).unwrap()[0].id;
    // Claimed at 17:30, completed on Tuesday at 12:00: 19 hours on the wall, four at work
    // (17:00-18:00 and 09:00-12:00), of which half an hour waiting.
    clock.advance(chrono::Duration::minutes(30));
    engine.claim(task, &ann).unwrap();
    clock.advance(chrono::Duration::minutes(18 * 60 + 30));
    engine.complete(task, &ann, Vars::new()).unwrap();
    let instances = [engine.instance(id).unwrap()];
    let def = Arc::new(ProcessDef::from_yaml(ON_CALENDAR).unwrap());
    let hours = |h: i64, m: i64| Some(chrono::Duration::minutes(h * 60 + m));

    let wall = Report::compute(
        std::slice::from_ref(&def),
        &instances,
        &ReportOptions::default(),
    );
    assert_eq!(wall.process("office").unwrap().cycle_time.p50, hours(19, 0));
    assert_eq!(wall.process("office").unwrap().calendar, None);
    assert!(wall.to_table().contains("wall-clock"));

    let options = ReportOptions::default().calendar("china", china);
    let business = Report::compute(&[def], &instances, &options);
    let p = business.process("office").unwrap();
    assert_eq!(p.cycle_time.p50, hours(4, 0));
    assert_eq!(p.calendar.as_deref(), Some("china"));
    let work = business.node("office", "work").unwrap();
    assert_eq!(work.waiting.p50, hours(0, 30));
    assert_eq!(work.handling.p50, hours(3, 30));
    let table = business.to_table();
    assert!(table.contains("business (china)"), "{table}");
    assert!(table.contains("4h"), "{table}");
}

const THREE: &str = r#"
id: three
version: 1
name: Three
roles: { agent: { name: Agent }, lead: { name: Lead }, clerk: { name: Clerk } }
variables: { route: { type: string } }
nodes:
  start: { kind: start, next: pick }
  pick:
    kind: exclusive
    routes:
      - { when: "route == 'the first of the long route conditions'", to: a }
      - { when: "route == 'the second of the long route conditions'", to: b }
      - { when: "route == 'the third of the long route conditions'", to: c }
      - { default: true, to: c }
  a: { kind: user_task, name: A, raci: { responsible: [agent], accountable: lead }, next: done }
  b: { kind: user_task, name: B, raci: { responsible: [clerk, agent], accountable: lead }, next: done }
  c: { kind: user_task, name: C, raci: { responsible: [clerk], accountable: lead }, next: done }
  done: { kind: end }
"#;

fn figures(node: &str, opened: usize, breaches: usize) -> procflow::NodeFigures {
    procflow::NodeFigures {
        process: "three".into(),
        node: node.into(),
        name: Some(node.to_uppercase()),
        name_zh: None,
        opened,
        completed: opened,
        open: 0,
        timeouts: 0,
        cancelled: 0,
        breaches,
        denials: 0,
        reworks: 0,
        waiting: Default::default(),
        handling: Default::default(),
        repeated: 0,
        items: 0,
    }
}

/// The `(x, y, width, height)` of every element `<rect class="CLASS" ...>`.
fn rects(svg: &str, class: &str) -> Vec<[f64; 4]> {
    let attr = |tag: &str, name: &str| -> f64 {
        let start = tag.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
        let end = start + tag[start..].find('"').unwrap();
        tag[start..end].parse().unwrap()
    };
    svg.split(&format!("<rect class=\"{class}\""))
        .skip(1)
        .map(|tag| {
            let tag = &tag[..tag.find("/>").unwrap()];
            [
                attr(tag, "x"),
                attr(tag, "y"),
                attr(tag, "width"),
                attr(tag, "height"),
            ]
        })
        .collect()
}

/// The fill of the node whose title is `title`.
fn fill_of<'s>(svg: &'s str, title: &str) -> &'s str {
    let at = svg.find(&format!("<title>{title}")).unwrap();
    let fill = at + svg[at..].find("fill=\"hsl").unwrap() + 6;
    &svg[fill..fill + svg[fill..].find('"').unwrap()]
}

/// Issue 16: the worst node stands out (49% must not look like its 46% neighbour), route labels
/// never overlap each other or a node, and each task shows its owning roles.
#[test]
fn the_heatmap_marks_the_worst_node_separates_labels_and_shows_roles() {
    let def = ProcessDef::from_yaml(THREE).unwrap();
    let report = Report {
        nodes: vec![
            figures("a", 100, 49),
            figures("b", 100, 46),
            figures("c", 100, 10),
        ],
        ..Report::default()
    };
    let svg = report.heatmap(&def, procflow::HeatMetric::BreachRate);
    // One worst node, outlined: a.
    let worst = rects(&svg, "worst");
    assert_eq!(worst.len(), 1, "{svg}");
    let a_at = svg.find("<title>a ").unwrap();
    let worst_at = svg.find("class=\"worst\"").unwrap();
    assert!(
        worst_at > a_at && !svg[a_at + 1..worst_at].contains("<title>"),
        "{svg}"
    );
    // The colours are ranked: the worst red, the next clearly apart, the best green.
    assert_eq!(fill_of(&svg, "a "), "hsl(0,70%,78%)");
    assert_eq!(fill_of(&svg, "b "), "hsl(60,70%,78%)");
    assert_eq!(fill_of(&svg, "c "), "hsl(120,70%,78%)");
    // Each task shows its roles.
    assert!(svg.contains("R clerk, agent · A lead"), "{svg}");
    assert!(svg.contains("R agent · A lead"), "{svg}");

    // Route labels: one per route (three conditions and the default), none overlapping.
    for def in [
        def,
        ProcessDef::from_file("process-defs/complaint-handling.yaml").unwrap(),
        ProcessDef::from_file("process-defs/order-provisioning.yaml").unwrap(),
    ] {
        let svg = Report::default().heatmap(&def, procflow::HeatMetric::MeanWait);
        let labels = rects(&svg, "route");
        assert!(labels.len() >= 2, "{}: {svg}", def.key());
        let overlap = |a: &[f64; 4], b: &[f64; 4]| {
            a[0] < b[0] + b[2] && b[0] < a[0] + a[2] && a[1] < b[1] + b[3] && b[1] < a[1] + a[3]
        };
        for (i, a) in labels.iter().enumerate() {
            for b in &labels[i + 1..] {
                assert!(
                    !overlap(a, b),
                    "{}: labels {a:?} and {b:?} overlap",
                    def.key()
                );
            }
        }
    }
}
