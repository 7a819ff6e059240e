//! Telemetry (feature `telemetry`) through the public API: the spans of engine calls carry the
//! instance, task, node and actor; denials, incidents, timers, breaches and commits are logged;
//! the `Telemetry` hook and the seam feed `metrics` series (read back in Prometheus format).

use std::io::Write;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use metrics_exporter_prometheus::PrometheusBuilder;
use procflow::{
    Actor, Engine, HandlerError, ManualClock, MemoryStore, ProcessDef, Report, ReportOptions,
    Telemetry, Vars, handler_fn,
};

const DESK: &str = r#"
id: desk
version: 1
name: Desk
roles: { clerk: { name: Clerk }, lead: { name: Lead } }
nodes:
  start: { kind: start, next: fetch }
  fetch: { kind: service_task, name: Fetch, handler: fetch, next: work }
  work:
    kind: user_task
    name: Work
    raci: { responsible: [clerk], accountable: lead, informed: [lead] }
    due: 4h
    next: end
  end: { kind: end }
"#;

/// A log sink shared with the subscriber.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-05T09:00:00Z")
        .unwrap()
        .to_utc()
}

/// The value of the Prometheus line that starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Tracing caches at each call site whether anyone listens: a test running beside another
/// without a subscriber of its own can make the other's events go unheard. One at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn calls_are_spans_and_events_and_metrics() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let recorder = PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();

    let id = tracing::subscriber::with_default(subscriber, || {
        metrics::with_local_recorder(&recorder, || {
            let clock = Arc::new(ManualClock::new(t0()));
            let fails = Arc::new(Mutex::new(true));
            let failing = Arc::clone(&fails);
            let mut builder = Engine::builder();
            builder
                .clock(Arc::clone(&clock))
                .hook(Telemetry::new())
                .handler(
                    "fetch",
                    handler_fn(move |_call| {
                        if std::mem::replace(&mut *failing.lock().unwrap(), false) {
                            Err(HandlerError::new("backend down"))
                        } else {
                            Ok(Vars::new())
                        }
                    }),
                );
            let engine = builder.open(MemoryStore::new()).unwrap();
            engine.deploy(ProcessDef::from_yaml(DESK).unwrap()).unwrap();

            // An incident, then a retry that gets through to the user task.
            let failed = engine.start("desk", Vars::new());
            let id = match failed {
                Err(procflow::ExecError::Incident { instance, .. }) => instance,
                other => panic!("expected an incident, got {other:?}"),
            };
            engine.retry(id).unwrap();
            let task = engine.tasks(id).unwrap()[0].id;
            // A denial, then the deadline passes, then the clerk completes.
            let trainee = Actor::new("tom", ["trainee"]);
            assert!(engine.complete(task, &trainee, Vars::new()).is_err());
            clock.advance(Duration::hours(5));
            assert!(!engine.tick(engine.now()).is_empty());
            engine
                .complete(task, &Actor::new("ann", ["clerk"]), Vars::new())
                .unwrap();
            (id, task)
        })
    });
    let (id, task) = id;

    let log = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    // The denied call's span names instance, task, node and actor; the event says denied.
    let denied = log
        .lines()
        .find(|l| l.contains("denied") && l.contains("complete{"))
        .unwrap_or_else(|| panic!("no denial in the log:\n{log}"));
    for field in [
        format!("instance={id}"),
        format!("task={task}"),
        "node=\"work\"".to_owned(),
        "actor=tom".to_owned(),
    ] {
        assert!(denied.contains(&field), "{field} missing: {denied}");
    }
    for wanted in [
        "incident".to_owned(),
        "backend down".to_owned(),
        "timer fired".to_owned(),
        "deadline breached".to_owned(),
        " commit ".to_owned(),
        format!("retry{{instance={id}}}"),
        format!("start{{process=\"desk\" instance={id}}}"),
        "task completed".to_owned(),
    ] {
        assert!(
            log.contains(&wanted),
            "{wanted:?} missing from the log:\n{log}"
        );
    }

    let text = prometheus.render();
    let expect = |series: &str, value: f64| {
        assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
    };
    expect("procflow_calls_total{call=\"start\"}", 1.0);
    expect("procflow_calls_total{call=\"complete\"}", 2.0);
    expect("procflow_calls_total{call=\"retry\"}", 1.0);
    expect("procflow_denials_total{kind=\"raci\"}", 1.0);
    expect("procflow_incidents_total{node=\"fetch\"}", 1.0);
    expect("procflow_breaches_total{node=\"work\",scope=\"task\"}", 1.0);
    expect("procflow_timers_fired_total{kind=\"due\"}", 1.0);
    expect("procflow_open_tasks{node=\"work\"}", 0.0);
    expect("procflow_tasks_completed_total{node=\"work\"}", 1.0);
    expect("procflow_instances_total{event=\"completed\"}", 1.0);
    assert!(
        sample(&text, "procflow_transitions_total{node=\"end\"}") == Some(1.0),
        "{text}"
    );
    // Every change was a commit to the store: start, retry, the refusal's audit record, the
    // breach and the completion.
    let commits = sample(&text, "procflow_commit_seconds_count").expect(&text);
    assert!(commits >= 4.0, "{commits} commits:\n{text}");
}

/// The open-tasks gauge of an engine that opened a store already holding open tasks: the hook
/// alone would count from zero (and go below it); a report over the store sets it, then the
/// hook moves it.
#[test]
fn a_report_sets_the_open_tasks_a_store_holds() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let recorder = PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    let store = MemoryStore::new();
    let handlers = |b: &mut procflow::EngineBuilder| {
        b.handler("fetch", handler_fn(|_call| Ok(Vars::new())));
    };
    // A first engine leaves two tasks open at `work`.
    {
        let mut b = Engine::builder();
        handlers(&mut b);
        let engine = b.open(store.clone()).unwrap();
        engine.deploy(ProcessDef::from_yaml(DESK).unwrap()).unwrap();
        engine.start("desk", Vars::new()).unwrap();
        engine.start("desk", Vars::new()).unwrap();
    }
    metrics::with_local_recorder(&recorder, || {
        let mut b = Engine::builder();
        b.hook(Telemetry::new());
        handlers(&mut b);
        let engine = b.open(store.clone()).unwrap();
        Report::from_store(&store, &ReportOptions::default())
            .unwrap()
            .record_open_tasks();
        let gauge = || sample(&prometheus.render(), "procflow_open_tasks{node=\"work\"}");
        assert_eq!(gauge(), Some(2.0));
        let id = engine.instances()[0];
        let task = engine.tasks(id).unwrap()[0].id;
        engine
            .complete(task, &Actor::new("ann", ["clerk"]), Vars::new())
            .unwrap();
        assert_eq!(gauge(), Some(1.0));
        engine.start("desk", Vars::new()).unwrap();
        Report::from_store(&store, &ReportOptions::default())
            .unwrap()
            .record_open_tasks();
        assert_eq!(gauge(), Some(2.0));
    });
}
