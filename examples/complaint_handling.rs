//! A host application for process 3.8, "Handle customer complaints".
//!
//! It loads `process-defs/complaint-handling.yaml`, registers the service handlers the definition
//! names (a network alarm gateway, the OSS reconfiguration adapter and the billing adjustment), a
//! hook that tells informed roles what happened and reports incidents, and then works three
//! complaints through different routes with staff of several departments, the way their desks
//! would: each person looks at their work list, claims a task and completes it.
//!
//! Time runs on a manual clock that the desk moves on with every action, ticking the engine's
//! timers each time: the definition's deadlines, reminders and escalations count business hours
//! on the China calendar (09:00-12:00, 13:00-18:00 Asia/Shanghai, Monday to Friday, 2026
//! holidays). The key-account diagnosis is left to sit past its deadline, so the hook shows a
//! reminder, the breach notice and an escalation to the accountable customer service centre.
//!
//! Run it with `cargo run --release --example complaint_handling`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chrono::Duration;
use chrono_tz::Asia::Shanghai;
use procflow::{
    Actor, BusinessCalendar, Clock, Engine, Entry, Event, HandlerError, InstanceId, ManualClock,
    ProcessDef, ServiceCall, Sla, SlaStatus, Status, TaskId, TimerKind, Vars, handler_fn, hook_fn,
};
use serde_json::{Value, json};

mod common;
use common::{Desk, Result, expect_denied, local, lookup, text, vars};

const DEFINITION: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/process-defs/complaint-handling.yaml"
);
const CALENDAR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/process-defs/calendars/china.yaml"
);

/// What the hook has seen.
#[derive(Default)]
struct Tally {
    events: AtomicUsize,
    incidents: AtomicUsize,
    notifications: Mutex<HashMap<InstanceId, usize>>,
    /// Timer firings by kind (`reminder`, `breach`, `escalation`, ..., `sla_` for the SLA's).
    timers: Mutex<BTreeMap<String, usize>>,
}

impl Tally {
    fn notifications_of(&self, id: InstanceId) -> usize {
        let seen = self.notifications.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(&id).copied().unwrap_or(0)
    }
}

/// `1h05m`, `-30m`.
fn span(d: Duration) -> String {
    let sign = if d < Duration::zero() { "-" } else { "" };
    let m = d.num_minutes().abs();
    match (m / 60, m % 60) {
        (0, m) => format!("{sign}{m}m"),
        (h, 0) => format!("{sign}{h}h"),
        (h, m) => format!("{sign}{h}h{m:02}m"),
    }
}

fn describe_sla(sla: Option<Sla>) -> String {
    let Some(sla) = sla else {
        return "no deadline".to_owned();
    };
    let status = match sla.status {
        SlaStatus::OnTrack => "on track",
        SlaStatus::AtRisk => "AT RISK",
        SlaStatus::Breached => "BREACHED",
        _ => "unknown",
    };
    format!(
        "{status:<8} (due {}, {} business time used, {} left)",
        sla.due.with_timezone(&Shanghai).format("%a %-d %b %H:%M"),
        span(sla.elapsed),
        span(sla.remaining)
    )
}

/// 3.8.2: the network alarm gateway turns a performance alarm into a fault ticket.
fn generate_network_ticket(call: &ServiceCall<'_>) -> Result<Vars, HandlerError> {
    let olt = text(call.vars, &["network_performance", "olt"])
        .ok_or_else(|| HandlerError::new("alarm without an OLT"))?;
    let port = lookup(call.vars, &["network_performance", "port"]).cloned();
    let affected = lookup(call.vars, &["network_performance", "affected_customers"])
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let level = text(call.vars, &["sla_terms", "level"]).unwrap_or("standard");
    Ok(vars(json!({
        "ticket_id": format!("NT-{olt}-{:04}", call.instance.get()),
        "fault_notification": {
            "alarm": format!("{olt} port {} down", port.unwrap_or(Value::Null)),
            "affected_customers": affected,
            "sla_impact": format!("{level} SLA customers affected"),
        },
    })))
}

/// 3.8.1: the OSS adapter moves the customer to a working port or VLAN. The OLT adapter times out
/// on the first request for an instance (as it does in real life), so that instance gets an
/// incident and is retried.
fn reconfigure_service(
    tried: &Mutex<HashSet<InstanceId>>,
    call: &ServiceCall<'_>,
) -> Result<Vars, HandlerError> {
    if let Some(olt) = text(call.vars, &["network_performance", "olt"]) {
        let first_try = tried
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(call.instance);
        if first_try {
            return Err(HandlerError::new(format!(
                "OSS provisioning timeout talking to {olt}"
            )));
        }
        let port = lookup(call.vars, &["network_performance", "port"])
            .and_then(Value::as_u64)
            .unwrap_or(1);
        return Ok(vars(json!({
            "reconfiguration": { "olt": olt, "port": port, "moved_to": port + 2 },
        })));
    }
    let vlan = lookup(call.vars, &["customer_config", "vlan"])
        .and_then(Value::as_u64)
        .ok_or_else(|| HandlerError::new("nothing to reconfigure: no OLT port and no VLAN"))?;
    let profile = text(call.vars, &["sla_terms", "level"]).unwrap_or("standard");
    Ok(vars(json!({
        "reconfiguration": { "vlan": vlan + 10, "qos_profile": profile },
    })))
}

/// 3.8.1: the billing centre credits the customer for the SLA impact of the fault.
fn update_billing(call: &ServiceCall<'_>) -> Result<Vars, HandlerError> {
    let level = text(call.vars, &["sla_terms", "level"]).unwrap_or("standard");
    let priority = text(call.vars, &["priority"]).unwrap_or("medium");
    let (credit, reason) = match (level, priority) {
        ("gold", "high") => (500, "gold SLA breached on a high-priority fault"),
        (_, "high") => (30, "outage longer than the standard restore time"),
        _ => (0, "no SLA impact"),
    };
    Ok(vars(json!({
        "billing_adjustment": { "credit": credit, "reason": reason },
    })))
}

impl Desk<'_> {
    /// Prints how a task and its instance stand against their deadlines.
    fn sla(&self, task: TaskId, node: &str) -> Result<()> {
        println!(
            "           SLA {task} {node:<10} {}",
            describe_sla(self.engine.sla_of_task(task)?)
        );
        println!(
            "           SLA {:<6} complaint  {}",
            task.instance().to_string(),
            describe_sla(self.engine.sla_of_instance(task.instance())?)
        );
        Ok(())
    }
}

fn main() -> Result<()> {
    let def = ProcessDef::from_file(DEFINITION)?;
    println!(
        "== {} ({} v{}, process {})",
        def.name(),
        def.key().id,
        def.key().version,
        def.source().unwrap_or("-")
    );

    let tally = Arc::new(Tally::default());
    // Monday 2 March 2026, 09:00 in Shanghai: the start of a working day.
    let clock = Arc::new(ManualClock::new("2026-03-02T01:00:00Z".parse()?));
    let tried = Mutex::new(HashSet::new());
    let seen = Arc::clone(&tally);
    let engine = Engine::builder()
        .clock(Arc::clone(&clock))
        .calendar("china", BusinessCalendar::from_file(CALENDAR)?)
        .handler(
            "generate_network_ticket",
            handler_fn(generate_network_ticket),
        )
        .handler(
            "reconfigure_service",
            handler_fn(move |call| reconfigure_service(&tried, call)),
        )
        .handler("update_billing", handler_fn(update_billing))
        .hook(hook_fn(move |ev: &Event| {
            seen.events.fetch_add(1, Ordering::Relaxed);
            match ev {
                Event::Notify {
                    task,
                    node,
                    role,
                    actor,
                } => {
                    *seen
                        .notifications
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(task.instance())
                        .or_default() += 1;
                    println!(
                        "             -> notify {role}: '{node}' of {} done by {actor}",
                        task.instance()
                    );
                }
                Event::Incident {
                    instance,
                    node,
                    message,
                } => {
                    seen.incidents.fetch_add(1, Ordering::Relaxed);
                    let at = node.as_deref().unwrap_or("(no node)");
                    println!("           !! INCIDENT on {instance} at '{at}': {message}");
                }
                Event::Timer {
                    instance,
                    task,
                    node,
                    kind,
                    sla,
                    recipients,
                } => {
                    let name = kind.name(*sla);
                    *seen
                        .timers
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(name.clone())
                        .or_default() += 1;
                    let what = match kind {
                        TimerKind::Reminder { .. } => "reminder, to the responsible",
                        TimerKind::Due => "breach notice, to the informed",
                        TimerKind::Escalation { .. } => "escalation, to",
                        TimerKind::Urge { .. } => "urge, to",
                        TimerKind::ClaimDue | TimerKind::Timeout => "to the accountable",
                        _ => "to",
                    };
                    let on = task.map_or_else(|| instance.to_string(), |t| t.to_string());
                    let told: Vec<String> = recipients.iter().map(ToString::to_string).collect();
                    println!(
                        "             ** TIMER {name} on {on} {node} ({what} {})",
                        told.join(", ")
                    );
                }
                _ => {}
            }
        }))
        .build();
    engine.deploy(def)?;
    let desk = Desk {
        engine: &engine,
        clock: &clock,
    };

    // Staff (role ids as in the definition's RACI catalogue).
    let wang = Actor::new("wang.li", ["customer_service"]);
    let chen = Actor::new("chen.jie", ["network_ops"]);
    let sun = Actor::new("sun.hao", ["network_ops"]);
    let zhou = Actor::new("zhou.min", ["billing_centre"]);
    let li = Actor::new("li.na", ["business_hall"]);
    let zhao = Actor::new("zhao.lei", ["key_account_manager"]);
    let ma = Actor::new("ma.rui", ["market_dev"]);

    println!("\n== Three complaints arrive");
    let outage = engine.start(
        "complaint-handling",
        vars(json!({
            "origin": "network",
            "network_performance": { "olt": "OLT-17", "port": 3, "packet_loss": 0.4, "affected_customers": 40 },
            "sla_terms": { "level": "gold", "restore_hours": 4 },
        })),
    )?;
    let web = engine.start(
        "complaint-handling",
        vars(json!({
            "origin": "customer",
            "channel": "web",
            "customer_enquiry": "Internet slow every evening",
        })),
    )?;
    let key_account = engine.start(
        "complaint-handling",
        vars(json!({
            "origin": "customer",
            "channel": "key_account",
            "customer_tier": "key",
            "sla_terms": { "level": "gold", "restore_hours": 4 },
            "customer_config": { "site": "KA-7 HQ", "vlan": 200 },
        })),
    )?;
    let routes = [
        (outage, "network alarm, high, reconfigured (OLT port)"),
        (web, "customer via web, no reconfiguration"),
        (key_account, "key account, diagnosis overdue, reconfigured"),
    ];
    for (id, route) in routes {
        let inst = engine.instance(id)?;
        let ticket = text(inst.vars(), &["ticket_id"]).unwrap_or("to be created at the desk");
        println!("  {id}: {route}; ticket {ticket}");
    }
    for actor in [&wang, &chen] {
        println!("  work list of {}:", actor.id);
        for t in engine.work_list(actor) {
            println!(
                "    {} {:<16} {}",
                t.id,
                t.node_id,
                t.name.as_deref().unwrap_or("")
            );
        }
    }

    println!("\n== {outage}: network-originated outage on OLT-17");
    desk.work(&chen, outage, "open_ticket", json!({}))?;
    desk.work(
        &wang,
        outage,
        "record_problem",
        json!({ "problem_details": "Broadband down for 40 customers on OLT-17 port 3" }),
    )?;
    desk.work(&wang, outage, "set_priority", json!({ "priority": "high" }))?;
    desk.comment(
        &zhou,
        outage,
        "diagnose",
        "Gold SLA: outage credit applies after 4h",
    )?;
    let diagnose = desk.open(outage, "diagnose")?;
    expect_denied(engine.claim(diagnose, &li))?;
    let diagnose = desk.claim(&chen, outage, "diagnose")?;
    let attempt = desk.complete(
        &chen,
        diagnose,
        "diagnose",
        json!({ "diagnosis_report": "Port 3 of OLT-17 faulty", "needs_reconfiguration": true }),
    );
    desk.retry_after_incident(attempt)?;
    println!(
        "           reconfiguration: {}",
        engine
            .instance(outage)?
            .vars()
            .get("reconfiguration")
            .cloned()
            .unwrap_or_default()
    );
    desk.work(
        &chen,
        outage,
        "resolve_fault",
        json!({ "status_report": "Customers moved to port 5; service restored" }),
    )?;
    desk.work(
        &wang,
        outage,
        "notify_customer",
        json!({ "resolution_notice": "Service restored; SLA credit applied" }),
    )?;
    desk.work(&wang, outage, "close_ticket", json!({}))?;

    println!("\n== {web}: customer-created web ticket");
    desk.work(
        &wang,
        web,
        "create_ticket",
        json!({ "ticket_id": "CT-0042" }),
    )?;
    desk.work(
        &wang,
        web,
        "record_problem",
        json!({ "problem_details": "Evening slowdown, Wi-Fi channel congestion suspected" }),
    )?;
    desk.work(&wang, web, "set_priority", json!({ "priority": "low" }))?;
    let diagnose = desk.claim(&chen, web, "diagnose")?;
    expect_denied(desk.complete(
        &sun,
        diagnose,
        "diagnose",
        json!({ "needs_reconfiguration": false }),
    ))?;
    let at = desk.tick(5);
    println!(
        "  {at}  {:<10} reassigns {diagnose} diagnose to {} (chen.jie is off shift)",
        wang.id, sun.id
    );
    engine.reassign(diagnose, &wang, &sun)?;
    desk.complete(
        &sun,
        desk.find(&sun, web, "diagnose")?.id,
        "diagnose",
        json!({ "diagnosis_report": "Home router on a congested channel", "needs_reconfiguration": false }),
    )?;
    desk.work(
        &sun,
        web,
        "resolve_fault",
        json!({ "status_report": "Customer guided to change the Wi-Fi channel" }),
    )?;
    // The customer's reply goes back to whoever took the call (首问负责: wang recorded the
    // problem, so wang owns the case and the notice is assigned to wang, not to the hall).
    expect_denied(engine.claim(desk.open(web, "notify_customer")?, &li))?;
    desk.work(
        &wang,
        web,
        "notify_customer",
        json!({ "resolution_notice": "Resolved by changing the Wi-Fi channel" }),
    )?;
    desk.work(&wang, web, "close_ticket", json!({}))?;

    println!("\n== {key_account}: key-account complaint, owned by the account manager");
    desk.work(
        &wang,
        key_account,
        "create_ticket",
        json!({ "ticket_id": "CT-0100" }),
    )?;
    desk.work(
        &zhao,
        key_account,
        "record_problem",
        json!({ "problem_details": "VPN latency above SLA at KA-7 HQ" }),
    )?;
    desk.work(
        &zhao,
        key_account,
        "set_priority",
        json!({ "priority": "high" }),
    )?;
    expect_denied(engine.claim(desk.open(key_account, "diagnose")?, &zhao))?;
    let diagnose = desk.claim(&chen, key_account, "diagnose")?;
    println!(
        "           chen.jie is called out to a cable cut; the key-account diagnosis (due in 2 business hours) waits"
    );
    desk.sla(diagnose, "diagnose")?;
    // All within Monday's afternoon hours (13:00-18:00): the reminder falls 1 business hour
    // before the deadline, the notify escalation 30 business minutes after it.
    let mut fired = Vec::new();
    for minutes in [60, 45, 90] {
        let by = Duration::minutes(minutes);
        println!(
            "  {}  ({} later; nobody has touched the diagnosis)",
            local(clock.now() + by),
            span(by)
        );
        fired.extend(desk.advance(by));
        desk.sla(diagnose, "diagnose")?;
    }
    let told = |kind: fn(&TimerKind) -> bool| -> Vec<String> {
        fired
            .iter()
            .filter(|f| f.task == Some(diagnose) && kind(&f.kind))
            .flat_map(|f| f.recipients.iter().map(ToString::to_string))
            .collect()
    };
    assert_eq!(
        told(|k| matches!(k, TimerKind::Reminder { .. })),
        ["network_ops"],
        "the responsible engineers were not reminded"
    );
    assert_eq!(
        told(|k| matches!(k, TimerKind::Due)),
        ["key_account_manager"],
        "no breach notice to the informed account manager"
    );
    assert_eq!(
        told(|k| matches!(k, TimerKind::Escalation { .. })),
        ["customer_service"],
        "no escalation to the accountable customer service centre"
    );
    println!(
        "           wang.li (customer service, accountable) got the escalation and calls chen.jie back"
    );
    desk.complete(
        &chen,
        diagnose,
        "diagnose",
        json!({ "diagnosis_report": "Wrong QoS profile on VLAN 200", "needs_reconfiguration": true }),
    )?;
    desk.work(
        &chen,
        key_account,
        "resolve_fault",
        json!({ "status_report": "Moved to VLAN 210 with the gold QoS profile" }),
    )?;
    desk.claim(&zhao, key_account, "notify_customer")?;
    // The customer calls the hotline first: the accountable customer service centre answers and
    // completes the notice although the account manager holds the task.
    desk.complete(
        &wang,
        desk.open(key_account, "notify_customer")?,
        "notify_customer",
        json!({ "resolution_notice": "Latency back within SLA; 500 yuan credit" }),
    )?;
    // The market department has no part in closing a ticket: it reads the complaint analysis
    // (3.8.3), which is periodic reporting over every complaint (procflow report), not a task.
    let close = desk.open(key_account, "close_ticket")?;
    expect_denied(engine.complete(close, &ma, Vars::new()))?;
    desk.work(&zhao, key_account, "close_ticket", json!({}))?;

    println!("\n== Audit trail of {outage}");
    let def = engine.definition_of(outage)?;
    for record in engine.instance(outage)?.audit() {
        println!("  {}", record.describe(&def));
    }

    println!("\n== Summary");
    println!(
        "  {:<4} {:<46} {:<10} {:>5} {:>6} {:>7} {:>7} {:>9}",
        "id", "route", "status", "tasks", "audit", "notify", "denied", "override"
    );
    let (mut notified, mut denied) = (0, 0);
    for (id, route) in routes {
        let inst = engine.instance(id)?;
        let denials = inst
            .audit()
            .iter()
            .filter(|r| matches!(r.what, Entry::Denied { .. }))
            .count();
        let overrides = inst
            .audit()
            .iter()
            .filter(|r| {
                matches!(
                    r.what,
                    Entry::Completed {
                        overridden: true,
                        ..
                    } | Entry::Reassigned { .. }
                )
            })
            .count();
        let notifications = tally.notifications_of(id);
        notified += notifications;
        denied += denials;
        println!(
            "  {:<4} {:<46} {:<10} {:>5} {:>6} {:>7} {:>7} {:>9}",
            id.to_string(),
            route,
            format!("{:?}", inst.status()),
            inst.tasks().len(),
            inst.audit().len(),
            notifications,
            denials,
            overrides
        );
        assert_eq!(
            inst.status(),
            Status::Completed,
            "{id} ({route}) did not complete"
        );
        assert!(
            inst.incidents().iter().all(|i| i.resolved),
            "{id} has an open incident"
        );
    }
    println!(
        "  notifications: {notified}, denials: {denied}, incidents: {} (all retried), hook events: {}",
        tally.incidents.load(Ordering::Relaxed),
        tally.events.load(Ordering::Relaxed)
    );
    let timers = tally.timers.lock().unwrap_or_else(|e| e.into_inner());
    let by_kind: Vec<String> = timers.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!("  timer events: {}", by_kind.join(", "));
    for kind in ["reminder", "breach", "escalation"] {
        assert!(
            timers.get(kind).copied().unwrap_or(0) >= 1,
            "no {kind} fired"
        );
    }
    println!("  all {} complaints completed", routes.len());
    Ok(())
}
