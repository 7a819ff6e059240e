//! History reports through the public API: exact figures per process, node, role and actor for
//! instances driven on a manual clock, the same figures read back from a store, the CSV and JSON
//! shapes, the heatmap SVG, and the `procflow report` command's errors.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use procflow::{
    Actor, Commit, Durations, Engine, ExecError, HeatMetric, Instance, ManualClock, MemoryStore,
    ProcessDef, Report, ReportOptions, Store, StoredDef, TaskId, Vars,
};

/// `review` is due in 2h, escalates to `boss` an hour after the breach and times out after 6h to
/// `apologise`. The process is due in 8h and escalates to `boss` an hour after that.
const CLAIMS: &str = r#"
id: claims
version: 1
name: Claims
name_zh: 理赔
roles:
  clerk: { name: Clerk, name_zh: 柜员 }
  lead: { name: Lead }
  boss: { name: Boss }
  audit: { name: Audit }
sla:
  due: 8h
  accountable: lead
  informed: [audit]
  escalate: [{ after: 1h, action: notify, to: boss }]
nodes:
  start: { kind: start, next: review }
  review:
    kind: user_task
    name: Review the claim
    name_zh: 审核理赔
    raci: { responsible: [clerk], accountable: lead, informed: [audit] }
    due: 2h
    escalate: [{ after: 1h, action: notify, to: boss }]
    timeout: { after: 6h, to: apologise }
    next: done
  apologise:
    kind: user_task
    name: "Apologise <politely> & close"
    raci: { responsible: [clerk], accountable: lead }
    next: done
  done: { kind: end }
"#;

/// One task, no time limits.
const PLAIN: &str = r#"
id: plain
version: 1
name: Plain
roles: { r: { name: R }, a: { name: A } }
nodes:
  start: { kind: start, next: work }
  work: { kind: user_task, name: Work, raci: { responsible: [r], accountable: a }, next: done }
  done: { kind: end }
"#;

/// Monday 2026-01-05 09:00 UTC.
fn t0() -> DateTime<Utc> {
    "2026-01-05T09:00:00Z".parse().unwrap()
}

fn hm(h: i64, m: i64) -> Duration {
    Duration::hours(h) + Duration::minutes(m)
}

fn task(engine: &Engine, id: procflow::InstanceId) -> TaskId {
    let tasks = engine.tasks(id).unwrap();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    tasks[0].id
}

/// Every instance and definition of a scripted day:
///
/// - i1: claimed by ann at 0:30, completed at 1:30 (wait 30m, handling 1h, cycle 1h30).
/// - i2: claimed by bob at 1:00, breached at 2:00, escalated at 3:00, completed at 3:30 (wait 1h,
///   handling 2h30, cycle 3h30).
/// - i3: eve (audit) is denied at 1:00; breached at 2:00, escalated at 3:00; completed unclaimed
///   by lena (lead) as an override at 4:00 (wait 4h, cycle 4h).
/// - i4: never touched: breached at 2:00, escalated at 3:00, timed out at 6:00 (`apologise`
///   opens), SLA breached at 8:00, SLA escalated at 9:00; still open at 10:00.
/// - p1 (`plain`): started at 5:00, completed by ann at 5:20.
fn day() -> (Vec<Arc<ProcessDef>>, Vec<Instance>) {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = Engine::builder().clock(Arc::clone(&clock)).build();
    for text in [CLAIMS, PLAIN] {
        engine.deploy(ProcessDef::from_yaml(text).unwrap()).unwrap();
    }
    let at = |d: Duration| {
        clock.set(t0() + d);
        engine.tick(t0() + d);
    };
    let ann = Actor::new("ann", ["clerk", "r"]);
    let bob = Actor::new("bob", ["clerk"]);
    let eve = Actor::new("eve", ["audit"]);
    let lena = Actor::new("lena", ["lead"]);
    let ids: Vec<_> = (0..4)
        .map(|_| engine.start("claims", Vars::new()).unwrap())
        .collect();
    let (i1, i2, i3) = (ids[0], ids[1], ids[2]);
    at(hm(0, 30));
    engine.claim(task(&engine, i1), &ann).unwrap();
    at(hm(1, 0));
    engine.claim(task(&engine, i2), &bob).unwrap();
    let denied = engine.complete(task(&engine, i3), &eve, Vars::new());
    assert!(
        matches!(denied, Err(ExecError::Denied { .. })),
        "{denied:?}"
    );
    at(hm(1, 30));
    engine
        .complete(task(&engine, i1), &ann, Vars::new())
        .unwrap();
    at(hm(2, 0));
    at(hm(3, 0));
    at(hm(3, 30));
    engine
        .complete(task(&engine, i2), &bob, Vars::new())
        .unwrap();
    at(hm(4, 0));
    engine
        .complete(task(&engine, i3), &lena, Vars::new())
        .unwrap();
    at(hm(5, 0));
    let p1 = engine.start("plain", Vars::new()).unwrap();
    at(hm(5, 20));
    engine
        .complete(task(&engine, p1), &ann, Vars::new())
        .unwrap();
    at(hm(6, 0));
    at(hm(10, 0));
    let defs = ["claims", "plain"]
        .map(|id| engine.definition(id, None).unwrap())
        .to_vec();
    let instances = engine
        .instances()
        .into_iter()
        .map(|id| engine.instance(id).unwrap())
        .collect();
    (defs, instances)
}

fn report() -> Report {
    let (defs, instances) = day();
    Report::compute(&defs, &instances, &ReportOptions::default())
}

fn some(h: i64, m: i64) -> Option<Duration> {
    Some(hm(h, m))
}

#[test]
fn process_figures() {
    let r = report();
    assert_eq!(r.skipped, 0);
    assert_eq!(
        r.processes.iter().map(|p| &*p.process).collect::<Vec<_>>(),
        ["claims", "plain"]
    );
    let p = r.process("claims").unwrap();
    assert_eq!((p.started, p.completed, p.open), (4, 3, 1));
    assert_eq!(p.versions, [1]);
    assert_eq!(
        (p.name.as_str(), p.name_zh.as_deref()),
        ("Claims", Some("理赔"))
    );
    // Cycle times 1h30, 3h30, 4h: nearest rank 2 of 3, then 3 of 3.
    assert_eq!(
        p.cycle_time,
        Durations {
            count: 3,
            p50: some(3, 30),
            p90: some(4, 0),
            p99: some(4, 0),
            mean: some(3, 0),
        }
    );
    // i1-i3 completed within 8h; i4's deadline fired.
    assert_eq!(
        (p.sla_instances, p.sla_met, p.sla_breached, p.sla_pending),
        (4, 3, 1, 0)
    );
    assert_eq!(p.sla_met_rate, Some(0.75));

    let plain = r.process("plain").unwrap();
    assert_eq!((plain.started, plain.completed, plain.open), (1, 1, 0));
    assert_eq!(plain.cycle_time.p99, some(0, 20));
    assert_eq!((plain.sla_instances, plain.sla_met_rate), (0, None));
}

#[test]
fn node_figures() {
    let r = report();
    let review = r.node("claims", "review").unwrap();
    assert_eq!(
        (
            review.opened,
            review.completed,
            review.open,
            review.timeouts
        ),
        (4, 3, 0, 1)
    );
    assert_eq!((review.breaches, review.denials), (3, 1));
    assert_eq!(review.name_zh.as_deref(), Some("审核理赔"));
    // Waits 30m, 1h, 4h (i3 never claimed: creation to completion); i4 timed out unclaimed.
    assert_eq!(
        review.waiting,
        Durations {
            count: 3,
            p50: some(1, 0),
            p90: some(4, 0),
            p99: some(4, 0),
            mean: some(1, 50),
        }
    );
    // Handling 1h, 2h30: nearest rank 1 of 2, then 2 of 2.
    assert_eq!(review.handling.count, 2);
    assert_eq!(
        (review.handling.p50, review.handling.p90),
        (some(1, 0), some(2, 30))
    );

    let apologise = r.node("claims", "apologise").unwrap();
    assert_eq!(
        (apologise.opened, apologise.completed, apologise.open),
        (1, 0, 1)
    );
    assert_eq!((apologise.breaches, apologise.timeouts), (0, 0));
    assert_eq!(apologise.waiting, Durations::default());

    // Only user tasks, in definition order.
    let ids: Vec<_> = r.nodes.iter().map(|n| (&*n.process, &*n.node)).collect();
    assert_eq!(
        ids,
        [
            ("claims", "review"),
            ("claims", "apologise"),
            ("plain", "work")
        ]
    );
    assert_eq!(r.node("plain", "work").unwrap().waiting.p50, some(0, 20));
}

#[test]
fn role_and_actor_figures() {
    let r = report();
    let role = |id: &str| {
        let f = r.role("claims", id).unwrap();
        (f.completed, f.overrides, f.escalations)
    };
    assert_eq!(role("clerk"), (2, 0, 0));
    assert_eq!(role("lead"), (1, 1, 0));
    // Three task escalations (i2-i4) and i4's SLA escalation.
    assert_eq!(role("boss"), (0, 0, 4));
    assert_eq!(role("audit"), (0, 0, 0));
    assert_eq!(
        r.role("claims", "clerk").unwrap().name_zh.as_deref(),
        Some("柜员")
    );
    assert_eq!(r.role("plain", "r").unwrap().completed, 1);

    let actor = |id: &str| {
        let f = r.actor("claims", id).unwrap();
        (f.completed, f.overrides, f.denials)
    };
    assert_eq!(actor("ann"), (1, 0, 0));
    assert_eq!(actor("bob"), (1, 0, 0));
    assert_eq!(actor("lena"), (1, 1, 0));
    assert_eq!(actor("eve"), (0, 0, 1));
    assert_eq!(r.actor("plain", "ann").unwrap().completed, 1);
}

#[test]
fn options_filter() {
    let (defs, instances) = day();
    let only = Report::compute(
        &defs,
        &instances,
        &ReportOptions::default().process("plain"),
    );
    assert_eq!(only.processes.len(), 1);
    assert!(only.nodes.iter().all(|n| n.process == "plain"));
    let later = Report::compute(
        &defs,
        &instances,
        &ReportOptions::default().since(t0() + hm(1, 0)),
    );
    assert_eq!(later.process("claims").unwrap().started, 0);
    assert_eq!(later.process("plain").unwrap().started, 1);
    // Instances of a definition not given are skipped, and counted.
    let skipped = Report::compute(&defs[1..], &instances, &ReportOptions::default());
    assert_eq!(skipped.skipped, 4);
    assert!(skipped.process("claims").is_none());
}

/// Commits every instance and definition into a fresh store, as an engine with a store would.
fn stored(defs: &[Arc<ProcessDef>], instances: &[Instance]) -> MemoryStore {
    let store = MemoryStore::new();
    for def in defs {
        store
            .save_definition(&StoredDef {
                key: def.key().clone(),
                text: def.text().into(),
            })
            .unwrap();
    }
    for inst in instances {
        store
            .commit(&Commit {
                instance: inst,
                def: inst.def().unwrap(),
                records: inst.audit(),
                first_record: 0,
                version: 0,
                next_due: None,
                keys: None,
                offers: None,
                takes: None,
            })
            .unwrap();
    }
    store
}

#[test]
fn from_store_gives_the_same_figures() {
    let (defs, instances) = day();
    let store = stored(&defs, &instances);
    for options in [
        ReportOptions::default(),
        ReportOptions::default().process("claims"),
        ReportOptions::default().since(t0() + hm(1, 0)),
    ] {
        let from_store = Report::from_store(&store, &options).unwrap();
        assert_eq!(
            from_store,
            Report::compute(&defs, &instances, &options),
            "{options:?}"
        );
    }
    let defs = Report::definitions(&store, Some("claims")).unwrap();
    assert_eq!(defs.len(), 1);
    assert_eq!(defs[0].key().to_string(), "claims@1");
}

#[test]
fn csv_and_json_shapes() {
    let r = report();
    let csv = r.to_csv();
    let sections: Vec<&str> = csv.split("\n\n").collect();
    assert_eq!(sections.len(), 4, "{csv}");
    let rows = |s: &str| s.lines().map(|l| l.split(',').count()).collect::<Vec<_>>();
    for (section, (name, body_rows, columns)) in sections.iter().zip([
        ("processes", 2, 20),
        ("nodes", 3, 19),
        ("roles", 6, 8),
        ("actors", 5, 6),
    ]) {
        assert!(section.starts_with("section,process,"), "{section}");
        assert_eq!(rows(section), vec![columns; body_rows + 1], "{section}");
        assert!(section.lines().skip(1).all(|l| l.starts_with(name)));
    }
    assert!(csv.contains(
        "nodes,claims,review,Review the claim,审核理赔,4,3,0,1,3,1,0,3600,14400,6600,3600,9000,0,0\n"
    ));
    assert!(csv.contains(
        "processes,claims,Claims,理赔,1,4,3,1,12600,14400,14400,4,3,1,0,0.7500,4,3,0.2500,\n"
    ));

    let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    let claims = &json["processes"][0];
    assert_eq!(claims["process"], "claims");
    assert_eq!(claims["cycle_time"]["p50"], 12600.0);
    assert_eq!(claims["sla_met_rate"], 0.75);
    assert_eq!(json["nodes"][0]["waiting"]["mean"], 6600.0);
    assert_eq!(json["nodes"][1]["waiting"]["p50"], serde_json::Value::Null);
    assert_eq!(json["roles"].as_array().unwrap().len(), 6);
    assert_eq!(json["actors"][3]["actor"], "lena");
    assert_eq!(json["skipped"], 0);

    let table = r.to_table();
    assert!(table.contains("Processes\n"), "{table}");
    assert!(table.contains("3h30m"), "{table}");
    assert!(table.contains("75.0%"), "{table}");
}

/// Checks that the tags of an XML document balance and every `&` starts an entity.
fn check_xml(svg: &str) {
    let mut stack: Vec<&str> = Vec::new();
    let mut rest = svg;
    while let Some(open) = rest.find('<') {
        let text = &rest[..open];
        for (i, _) in text.match_indices('&') {
            let entity = &text[i..text[i..].find(';').map_or(text.len(), |e| i + e + 1)];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].contains(&entity),
                "bare & in text: {entity}"
            );
        }
        let close = rest[open..].find('>').expect("unclosed tag") + open;
        let tag = &rest[open + 1..close];
        assert!(!tag.contains('<'), "'<' inside a tag: {tag}");
        let name = tag
            .trim_start_matches('/')
            .split([' ', '\n', '/'])
            .next()
            .unwrap();
        if tag.starts_with('/') {
            assert_eq!(stack.pop(), Some(name), "closing {tag}");
        } else if !tag.ends_with('/') && !tag.starts_with('?') && !tag.starts_with('!') {
            stack.push(name);
        }
        rest = &rest[close + 1..];
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
    assert!(svg.trim_start().starts_with("<svg "));
}

#[test]
fn heatmap_svg() {
    let (defs, instances) = day();
    let r = Report::compute(&defs, &instances, &ReportOptions::default());
    for metric in [HeatMetric::MeanWait, HeatMetric::BreachRate] {
        let svg = r.heatmap(&defs[0], metric);
        check_xml(&svg);
        for (_, node) in defs[0].nodes() {
            assert!(svg.contains(node.id()), "{} missing", node.id());
        }
        assert!(svg.contains("审核理赔"));
        assert!(svg.contains("&lt;politely&gt; &amp; close"));
        assert!(!svg.contains("<politely>"));
        // The timeout route is dashed.
        assert!(svg.contains("stroke-dasharray=\"6 4\" marker-end"));
    }
    // The slowest node is red when coloured by mean wait; by breach rate, the worst node (3 of
    // 4, the only one with breaches) is red too and outlined: colours rank the nodes (issue 16).
    assert!(
        r.heatmap(&defs[0], HeatMetric::MeanWait)
            .contains("fill=\"hsl(0,70%,78%)\"")
    );
    let by_breaches = r.heatmap(&defs[0], HeatMetric::BreachRate);
    assert!(by_breaches.contains("fill=\"hsl(0,70%,78%)\""));
    assert_eq!(by_breaches.matches("class=\"worst\"").count(), 1);

    // A larger shipped definition without any history: every node drawn, in grey.
    let complaint = ProcessDef::from_file("process-defs/complaint-handling.yaml").unwrap();
    let svg = Report::default().heatmap(&complaint, HeatMetric::MeanWait);
    check_xml(&svg);
    for (_, node) in complaint.nodes() {
        assert!(svg.contains(node.id()), "{} missing", node.id());
    }
    assert!(svg.contains("no tasks"));
}

#[test]
fn cli_missing_store() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_procflow"))
        .args(["report", "--store", "no/such/store.db"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "no/such/store.db: no such store file\n"
    );
}
