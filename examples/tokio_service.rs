//! A small tokio service on the async façade (features `tokio` and `telemetry`): complaints are
//! started concurrently, an async service handler scores each one (it awaits, as a call to
//! another service would), a one-second cooling-off timer is fired by the `TimerTask`, agents
//! work the queue (a trainee's attempts are denied), tasks left over breach their one-second
//! deadline, and the engine's metrics are served in Prometheus format on a local port, which the
//! example then reads back over HTTP and prints. `tracing` events go to stderr.
//!
//! ```text
//! cargo run --release --example tokio_service -- [--seconds 2] [--quiet]
//! ```
//!
//! `--quiet` logs only warnings (denials, incidents, breaches); the default logs timers too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use procflow::{
    Actor, AsyncEngine, AsyncHandlers, Engine, ExecError, MemoryStore, ProcessDef, Report,
    ReportOptions, Telemetry, Vars, async_handler_fn,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const COMPLAINT: &str = r#"
id: complaint
version: 1
name: Complaint
roles:
  agent: { name: Agent }
  lead: { name: Team lead }
variables:
  customer: { type: string }
  score: { type: integer }
nodes:
  start: { kind: start, next: score }
  score: { kind: service_task, name: Score the customer, handler: score, next: cool_off }
  cool_off: { kind: timer, wait: 1s, next: handle }
  handle:
    kind: user_task
    name: Handle the complaint
    raci: { responsible: [agent], accountable: lead, informed: [lead] }
    due: 1s
    next: end
  end: { kind: end }
"#;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut seconds = 2.0_f64;
    let mut quiet = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|s: &f64| *s > 0.0 && *s <= 600.0)
                    .ok_or("--seconds needs a number of seconds (0 < s <= 600)")?;
            }
            "--quiet" => quiet = true,
            other => return Err(format!("unknown argument '{other}'").into()),
        }
    }
    tracing_subscriber::fmt()
        .with_max_level(if quiet {
            tracing::Level::WARN
        } else {
            tracing::Level::INFO
        })
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let prometheus = PrometheusBuilder::new().build_recorder();
    let metrics_page = prometheus.handle();
    metrics::set_global_recorder(prometheus)?;
    let address = serve_metrics(metrics_page).await?;

    // The engine, with an async handler that awaits (a stand-in for an HTTP call).
    let handlers = AsyncHandlers::new();
    let mut builder = Engine::builder();
    builder.hook(Telemetry::new());
    handlers.register(
        &mut builder,
        "score",
        async_handler_fn(|call| async move {
            tokio::time::sleep(Duration::from_millis(25)).await;
            let name = call.vars.get("customer").and_then(|v| v.as_str());
            let mut out = Vars::new();
            out.insert(
                "score".into(),
                serde_json::json!(name.map_or(0, |n| n.len() as i64 * 7 % 100)),
            );
            Ok(out)
        }),
    );
    let store = MemoryStore::new();
    let engine = Arc::new(builder.open(store.clone())?);
    engine.deploy(ProcessDef::from_yaml(COMPLAINT)?)?;
    // The open-tasks gauge starts from what the store holds (the hook then moves it).
    Report::from_store(&store, &ReportOptions::default())?.record_open_tasks();
    let engine = AsyncEngine::with_handlers(engine, handlers);
    let timers = engine.timers(Duration::from_millis(50));

    let began = Instant::now();
    let run_for = Duration::from_secs_f64(seconds);
    let started = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let denied = Arc::new(AtomicU64::new(0));

    // Customers: a complaint every 10 ms.
    let customers = {
        let (engine, started) = (engine.clone(), Arc::clone(&started));
        tokio::spawn(async move {
            let mut n = 0u64;
            while began.elapsed() < run_for {
                n += 1;
                let mut vars = Vars::new();
                vars.insert(
                    "customer".into(),
                    serde_json::json!(format!("customer-{n}")),
                );
                engine.start("complaint", vars).await?;
                started.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok::<(), ExecError>(())
        })
    };
    // Two agents work the queue, slower than complaints arrive; what is left breaches.
    let mut agents = Vec::new();
    for who in ["ann", "bo", "tom"] {
        let (engine, completed, denied) =
            (engine.clone(), Arc::clone(&completed), Arc::clone(&denied));
        agents.push(tokio::spawn(async move {
            let me = if who == "tom" {
                Actor::new(who, ["trainee"])
            } else {
                Actor::new(who, ["agent"])
            };
            let lead = Actor::new("lee", ["agent"]);
            while began.elapsed() < run_for {
                // The trainee sees nothing in a work list; he tries the lead's list.
                let list = engine
                    .work_list(if who == "tom" { &lead } else { &me })
                    .await?;
                let Some(task) = list.first() else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                match engine.complete(task.id, &me, Vars::new()).await {
                    Ok(()) => {
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(ExecError::Denied { .. }) => {
                        denied.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    // Another agent took it first.
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            Ok::<(), ExecError>(())
        }));
    }
    customers.await??;
    for agent in agents {
        agent.await??;
    }
    // Let the last cooling-off timers and the deadlines of what is left fall due.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let left = engine.work_list(&Actor::new("lee", ["agent"])).await?.len();
    let waiting = started.load(Ordering::Relaxed) - completed.load(Ordering::Relaxed) - left as u64;

    println!(
        "ran {:.1} s on a 2-worker tokio runtime: {} complaints started, each scored by an async \
         handler (25 ms await) and held 1 s by a timer the TimerTask fired; {} completed by \
         agents, {} attempts by a trainee denied, {} tasks left open (breaches below), {} \
         instances still scoring or cooling off; timer task: {} ticks, {} failures",
        began.elapsed().as_secs_f64(),
        started.load(Ordering::Relaxed),
        completed.load(Ordering::Relaxed),
        denied.load(Ordering::Relaxed),
        left,
        waiting,
        timers.ticks(),
        timers.failures(),
    );
    // Before a scrape, the gauge is set again from the store (what other replicas sharing
    // it changed included).
    Report::from_store(&store, &ReportOptions::default())?.record_open_tasks();
    let page = get(address, "/metrics").await?;
    println!("GET http://{address}/metrics (procflow series):");
    for line in page
        .lines()
        .filter(|l| l.starts_with("procflow_") && !l.contains("_bucket") && !l.contains("quantile"))
    {
        println!("  {line}");
    }
    timers.stop();
    if completed.load(Ordering::Relaxed) == 0 || !page.contains("procflow_commit_seconds") {
        return Err("the service completed nothing, or its metrics page lacks the engine's".into());
    }
    Ok(())
}

/// Serves `GET /metrics` in Prometheus' text format on a local port; gives the address.
async fn serve_metrics(
    page: PrometheusHandle,
) -> Result<std::net::SocketAddr, Box<dyn std::error::Error>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let page = page.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 1024];
                let n = stream.read(&mut request).await.unwrap_or(0);
                let ok = request[..n].starts_with(b"GET /metrics ");
                let (status, body) = if ok {
                    ("200 OK", page.render())
                } else {
                    ("404 Not Found", String::from("not found\n"))
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok(address)
}

/// A minimal HTTP/1.1 GET; gives the body.
async fn get(
    address: std::net::SocketAddr,
    path: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let mut stream = TcpStream::connect(address).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await?;
    let (head, body) = reply.split_once("\r\n\r\n").ok_or("no HTTP header")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("GET {path}: {}", head.lines().next().unwrap_or("")).into());
    }
    Ok(body.to_owned())
}
