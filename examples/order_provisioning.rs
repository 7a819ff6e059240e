//! A host application for process 3.6, "Provision products and services" (order handling).
//!
//! It loads `process-defs/order-provisioning.yaml`, registers the service handlers the definition
//! names (credit authorisation against the billing system, a network-resource query, service
//! activation on the switch, and the billing set-up), a hook that tells informed roles what
//! happened and reports incidents, and then works three sales orders through different routes:
//! one is activated (after a switch timeout and a retry), one is refused on credit, and one is
//! found not feasible because the exchange has no free ports.
//!
//! The desk moves a manual clock on with every action and ticks the engine's timers; deadlines
//! count business hours on the China calendar (09:00-12:00, 13:00-18:00 Asia/Shanghai). The
//! orders arrive at 17:00, so the fixed-line feasibility check, left unclaimed for an hour, is
//! reported to the accountable local network.
//!
//! Run it with `cargo run --release --example order_provisioning`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chrono_tz::Asia::Shanghai;
use procflow::{
    Actor, BusinessCalendar, Engine, Entry, Event, HandlerError, InstanceId, ManualClock,
    ProcessDef, ServiceCall, Status, TimerKind, Vars, handler_fn, hook_fn,
};
use serde_json::{Value, json};

mod common;
use common::{Desk, Result, expect_denied, lookup, text, vars};

const DEFINITION: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/process-defs/order-provisioning.yaml"
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
    timers: AtomicUsize,
}

impl Tally {
    fn notifications_of(&self, id: InstanceId) -> usize {
        let seen = self.notifications.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(&id).copied().unwrap_or(0)
    }
}

/// The billing system's view of a customer: credit limit and arrears, in yuan.
fn customer_account(vars: &Vars) -> (u64, u64) {
    let channel = text(vars, &["channel"]).unwrap_or("customer_service");
    let default_limit = if channel == "key_account" {
        20_000
    } else {
        2_000
    };
    let limit = lookup(vars, &["customer_profile", "credit_limit"])
        .and_then(Value::as_u64)
        .unwrap_or(default_limit);
    let arrears = lookup(vars, &["customer_profile", "arrears"])
        .and_then(Value::as_u64)
        .unwrap_or(0);
    (limit, arrears)
}

/// 3.6.1: credit authorisation. An order passes when the customer has no arrears and the order's
/// amount fits the credit limit.
fn credit_check(call: &ServiceCall<'_>) -> Result<Vars, HandlerError> {
    let amount = lookup(call.vars, &["sales_order", "price"])
        .and_then(Value::as_f64)
        .ok_or_else(|| HandlerError::new("sales order without a price"))?;
    let (limit, arrears) = customer_account(call.vars);
    let credit_ok = arrears == 0 && amount <= limit as f64;
    Ok(vars(
        json!({ "credit_ok": credit_ok, "credit_limit": limit }),
    ))
}

/// The free ports per exchange, as the network-management system reports them.
type Inventory = Mutex<HashMap<String, u64>>;

fn exchange_of(vars: &Vars) -> Result<&str, HandlerError> {
    text(vars, &["sales_order", "exchange"])
        .ok_or_else(|| HandlerError::new("sales order without an exchange"))
}

/// 3.6.1: asks the network-management system for free ports at the order's exchange.
fn network_resource_check(
    inventory: &Inventory,
    call: &ServiceCall<'_>,
) -> Result<Vars, HandlerError> {
    let exchange = exchange_of(call.vars)?;
    let free = inventory
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(exchange)
        .copied()
        .ok_or_else(|| HandlerError::new(format!("unknown exchange {exchange}")))?;
    Ok(vars(json!({
        "resources_available": free > 0,
        "network_resources": { "exchange": exchange, "free_ports": free },
    })))
}

/// 3.6.3: activates one order line (the call's item) on the exchange's switch and takes a port.
/// The switch does not answer the first activation request of an instance in time, so that
/// instance gets an incident and is retried.
fn activate_service(
    inventory: &Inventory,
    tried: &Mutex<HashSet<InstanceId>>,
    call: &ServiceCall<'_>,
) -> Result<Vars, HandlerError> {
    let exchange = exchange_of(call.vars)?;
    if tried
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(call.instance)
    {
        return Err(HandlerError::new(format!(
            "switch timeout at {exchange} after 30s"
        )));
    }
    let mut ports = inventory.lock().unwrap_or_else(|e| e.into_inner());
    let free = ports
        .get_mut(exchange)
        .filter(|free| **free > 0)
        .ok_or_else(|| HandlerError::new(format!("no free port left at {exchange}")))?;
    *free -= 1;
    let line = call.item_index.unwrap_or(0);
    Ok(vars(json!({
        "activation": {
            "product": call.item.and_then(|l| l.get("product")),
            "service_id": format!("SVC-{:04}-{line}", 1000 + call.instance.get()),
        },
    })))
}

/// 3.6.3: confirms with the network that every order line is active.
fn activation_check(call: &ServiceCall<'_>) -> Result<Vars, HandlerError> {
    let lines = call
        .vars
        .get("activations")
        .and_then(|a| a.as_array())
        .map_or(0, Vec::len);
    Ok(vars(json!({
        "service_id": format!("SVC-{:04}", 1000 + call.instance.get()),
        "activated": lines > 0,
    })))
}

/// 3.6.3: sends the billing requirements to the billing centre (flow #38 to 3.11).
fn billing_setup(call: &ServiceCall<'_>) -> Result<Vars, HandlerError> {
    let order = call
        .vars
        .get("sales_order")
        .ok_or_else(|| HandlerError::new("no sales order"))?;
    Ok(vars(json!({
        "billing_requirements": {
            "customer": order.get("customer"),
            "plan": order.get("product"),
            "monthly_fee": order.get("price"),
            "cycle": "monthly",
        },
    })))
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
    let clock = Arc::new(ManualClock::new("2026-03-02T09:00:00Z".parse()?));
    let inventory: Arc<Inventory> = Arc::new(Mutex::new(HashMap::from([
        ("HZ-XH-01".to_owned(), 12),
        ("HZ-BJ-03".to_owned(), 0),
    ])));
    let tried = Mutex::new(HashSet::new());
    let (nms, switch) = (Arc::clone(&inventory), Arc::clone(&inventory));
    let seen = Arc::clone(&tally);
    let engine = Engine::builder()
        .clock(Arc::clone(&clock))
        .calendar("china", BusinessCalendar::from_file(CALENDAR)?)
        .handler("credit_check", handler_fn(credit_check))
        .handler(
            "network_resource_check",
            handler_fn(move |call| network_resource_check(&nms, call)),
        )
        .handler(
            "activate_service",
            handler_fn(move |call| activate_service(&switch, &tried, call)),
        )
        .handler("activation_check", handler_fn(activation_check))
        .handler("billing_setup", handler_fn(billing_setup))
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
                    node,
                    kind,
                    recipients,
                    ..
                } => {
                    seen.timers.fetch_add(1, Ordering::Relaxed);
                    let what = match kind {
                        TimerKind::ClaimDue => "still unclaimed",
                        TimerKind::Reminder { .. } => "reminder",
                        TimerKind::Due => "deadline passed",
                        TimerKind::Escalation { .. } => "escalated",
                        _ => "timer",
                    };
                    let told: Vec<String> = recipients.iter().map(ToString::to_string).collect();
                    println!(
                        "             ** TIMER {what}: '{node}' of {instance} -> {}",
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
    let li = Actor::new("li.na", ["business_hall"]);
    let zhao = Actor::new("zhao.lei", ["key_account_manager"]);
    let qian = Actor::new("qian.ming", ["key_account_manager"]);
    let chen = Actor::new("chen.jie", ["network_ops"]);
    let zhou = Actor::new("zhou.min", ["billing_centre"]);
    let liu = Actor::new("liu.yang", ["local_network"]);

    println!("\n== Three sales orders arrive");
    let broadband = engine.start(
        "order-provisioning",
        vars(json!({
            "product_spec": { "product": "broadband", "bandwidth_mbps": 100 },
            "sales_order": { "customer": "C-88", "product": "broadband-100M", "price": 120,
                             "exchange": "HZ-XH-01", "delivery_date": "2026-03-06" },
            "customer_profile": { "segment": "residential", "arrears": 0 },
            "channel": "customer_service",
        })),
    )?;
    let leased_line = engine.start(
        "order-provisioning",
        vars(json!({
            "product_spec": { "product": "leased line", "bandwidth_mbps": 1000 },
            "sales_order": { "customer": "KA-7", "product": "leased-line-1G", "price": 9000,
                             "exchange": "HZ-XH-01", "sla": "gold" },
            "customer_profile": { "segment": "key account", "arrears": 12_400 },
            "channel": "key_account",
        })),
    )?;
    let fixed_line = engine.start(
        "order-provisioning",
        vars(json!({
            "product_spec": { "product": "fixed line" },
            "sales_order": { "customer": "C-301", "product": "fixed-line", "price": 25,
                             "exchange": "HZ-BJ-03" },
            "channel": "business_hall",
        })),
    )?;
    let routes = [
        (broadband, "broadband: activated after a retry"),
        (leased_line, "leased line: refused on credit"),
        (fixed_line, "fixed line: not feasible (exchange full)"),
    ];
    for (id, route) in routes {
        let inst = engine.instance(id)?;
        let v = inst.vars();
        println!(
            "  {id}: {route}; credit_ok={} (limit {}), resources_available={}",
            v["credit_ok"],
            v.get("credit_limit").unwrap_or(&Value::Null),
            v["resources_available"]
        );
    }
    for actor in [&chen, &zhao] {
        println!("  work list of {}:", actor.id);
        for t in engine.work_list(actor) {
            println!(
                "    {} {:<20} {}",
                t.id,
                t.node_id,
                t.name.as_deref().unwrap_or("")
            );
        }
    }

    println!("\n== {broadband}: broadband order for C-88");
    desk.comment(
        &zhou,
        broadband,
        "confirm_feasibility",
        "No arrears on the customer's account",
    )?;
    expect_denied(engine.complete(
        desk.open(broadband, "confirm_feasibility")?,
        &zhou,
        vars(json!({ "feasible": true })),
    ))?;
    desk.work(
        &chen,
        broadband,
        "confirm_feasibility",
        json!({ "feasible": true }),
    )?;
    desk.work(
        &wang,
        broadband,
        "receive_order",
        json!({ "order_id": "ORD-1001", "order_status": "received" }),
    )?;
    let release = desk.claim(&chen, broadband, "release_order")?;
    let attempt = desk.complete(&chen, release, "release_order", json!({}));
    desk.retry_after_incident(attempt)?;
    {
        let inst = engine.instance(broadband)?;
        println!(
            "           service_id={}, billing_requirements={}",
            inst.vars()["service_id"],
            inst.vars()["billing_requirements"]
        );
        // The order's SLA (40 business hours) counts only working time: the evening is free.
        if let Some(sla) = engine.sla_of_instance(broadband)? {
            println!(
                "           order SLA: {:?}, due {}, {}m business time used",
                sla.status,
                sla.due.with_timezone(&Shanghai).format("%a %-d %b %H:%M"),
                sla.elapsed.num_minutes()
            );
        }
    }
    desk.work(
        &wang,
        broadband,
        "notify_status",
        json!({ "order_status": "in_progress" }),
    )?;
    desk.work(
        &chen,
        broadband,
        "track_order",
        json!({ "order_status": "activated" }),
    )?;
    // 客户确认: the customer confirms in the app, which wins the race against the phone
    // confirmation and the 48-hour window (both withdrawn).
    let at = desk.tick(20);
    println!(
        "  {at}  customer   confirms the working service in the app (message customer_confirmed)"
    );
    engine.deliver(
        broadband,
        "customer_confirmed",
        vars(json!({ "confirmation": "app", "customer_feedback": "works fine" })),
    )?;
    desk.work(
        &wang,
        broadband,
        "notify_completion",
        json!({
            "activation_notice": "Broadband 100M active since 2026-03-02",
            "order_status": "completed",
        }),
    )?;

    println!("\n== {leased_line}: key-account leased line for KA-7");
    let notice = desk.claim(&zhao, leased_line, "notify_rejection")?;
    expect_denied(desk.complete(
        &wang,
        notice,
        "notify_rejection",
        json!({ "order_status": "rejected" }),
    ))?;
    desk.comment(
        &chen,
        leased_line,
        "notify_rejection",
        "Network could have served it: HZ-XH-01 has free ports",
    )?;
    let at = desk.tick(5);
    println!(
        "  {at}  {:<10} reassigns {notice} notify_rejection to {} (zhao.lei is travelling)",
        liu.id, qian.id
    );
    engine.reassign(notice, &liu, &qian)?;
    desk.complete(
        &qian,
        desk.find(&qian, leased_line, "notify_rejection")?.id,
        "notify_rejection",
        json!({
            "order_status": "rejected",
            "rejection_reason": "credit refused: 12400 yuan in arrears",
        }),
    )?;

    println!("\n== {fixed_line}: fixed line for C-301 at the business hall");
    let confirm = desk.open(fixed_line, "confirm_feasibility")?;
    expect_denied(engine.complete(confirm, &li, vars(json!({ "feasible": false }))))?;
    // The local network, accountable and told at 18:00 that nobody had claimed the check, decides
    // without waiting for network ops.
    desk.complete(
        &liu,
        confirm,
        "confirm_feasibility",
        json!({
            "feasible": false,
            "rejection_reason": "no free ports at exchange HZ-BJ-03",
        }),
    )?;
    desk.work(
        &li,
        fixed_line,
        "notify_rejection",
        json!({ "order_status": "rejected" }),
    )?;

    println!("\n== Audit trail of {broadband}");
    let def = engine.definition_of(broadband)?;
    for record in engine.instance(broadband)?.audit() {
        println!("  {}", record.describe(&def));
    }

    println!("\n== Summary");
    println!(
        "  {:<4} {:<42} {:<10} {:<10} {:>5} {:>6} {:>7} {:>7} {:>9}",
        "id", "route", "status", "order", "tasks", "audit", "notify", "denied", "override"
    );
    let (mut notified, mut denied) = (0, 0);
    for (id, route) in routes {
        let inst = engine.instance(id)?;
        let count = |f: fn(&Entry) -> bool| inst.audit().iter().filter(|r| f(&r.what)).count();
        let denials = count(|e| matches!(e, Entry::Denied { .. }));
        let overrides = count(|e| {
            matches!(
                e,
                Entry::Completed {
                    overridden: true,
                    ..
                } | Entry::Reassigned { .. }
            )
        });
        let notifications = tally.notifications_of(id);
        notified += notifications;
        denied += denials;
        println!(
            "  {:<4} {:<42} {:<10} {:<10} {:>5} {:>6} {:>7} {:>7} {:>9}",
            id.to_string(),
            route,
            format!("{:?}", inst.status()),
            text(inst.vars(), &["order_status"]).unwrap_or("-"),
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
        "  notifications: {notified}, denials: {denied}, incidents: {} (all retried), timers: {}, hook events: {}",
        tally.incidents.load(Ordering::Relaxed),
        tally.timers.load(Ordering::Relaxed),
        tally.events.load(Ordering::Relaxed)
    );
    let ports = inventory.lock().unwrap_or_else(|e| e.into_inner());
    println!(
        "  free ports left: HZ-XH-01 {}, HZ-BJ-03 {}",
        ports["HZ-XH-01"], ports["HZ-BJ-03"]
    );
    println!("  all {} orders completed", routes.len());
    Ok(())
}
