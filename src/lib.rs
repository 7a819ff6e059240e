//! procflow: an embedded BPM workflow engine.
//!
//! Process definitions are YAML files. The loader parses, validates and compiles one into an
//! immutable [`ProcessDef`] (a petgraph graph plus what the executor needs), shared by `Arc`. An
//! [`Engine`] deploys definitions and runs instances: it starts them, opens user tasks, calls
//! service handlers, routes exclusive and parallel gateways, enforces RACI on every task action,
//! tells [`Hook`]s what happened with owned [`Event`]s after each call's commit, lets them veto
//! completions, and keeps an audit trail per instance.
//!
//! # Example: load a definition
//! ```
//! let def = procflow::ProcessDef::from_file("process-defs/complaint-handling.yaml")?;
//! assert_eq!(def.source(), Some("3.8"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Example: run with a hook
//! ```
//! use std::sync::{Arc, Mutex};
//! use procflow::{hook_fn, Actor, Engine, Event, ProcessDef, Vars};
//!
//! let told = Arc::new(Mutex::new(Vec::new()));
//! let sink = Arc::clone(&told);
//! let engine = Engine::builder()
//!     // Hears owned events after each call's commit, with nothing locked.
//!     .hook(hook_fn(move |ev: &Event| {
//!         if let Event::Notify { role, node, .. } = ev {
//!             sink.lock().unwrap().push(format!("notify {role}: {node} done"));
//!         }
//!     }))
//!     .build();
//! engine.deploy(ProcessDef::from_yaml(r#"
//! id: hello
//! version: 1
//! name: Hello
//! roles: { clerk: { name: Clerk }, lead: { name: Lead }, audit: { name: Audit } }
//! nodes:
//!   start: { kind: start, next: greet }
//!   greet:
//!     kind: user_task
//!     name: Greet the customer
//!     raci: { responsible: [clerk], accountable: lead, informed: [audit] }
//!     next: end
//!   end: { kind: end }
//! "#)?)?;
//! let id = engine.start("hello", Vars::new())?;
//! let task = engine.tasks(id)?[0].id;
//! engine.complete(task, &Actor::new("ann", ["clerk"]), Vars::new())?;
//! assert_eq!(engine.instance(id)?.status(), procflow::Status::Completed);
//! // The informed role was told once the completion was committed.
//! assert_eq!(*told.lock().unwrap(), ["notify audit: greet done"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Crate features
//! - `sqlite` (default): [`SqliteStore`], the embedded durable store (SQLite is built from
//!   source: nothing to install).
//! - `report` (default): [`Report`] and its bottleneck heatmap, read back from any store.
//! - `cli` (default): the `procflow` binary and [`Scenario`], the scripted runs of
//!   `procflow simulate`; implies `sqlite` and `report`.
//! - `postgres` (not default): `PostgresStore`, a store on a PostgreSQL server that several
//!   engines (replicas) share.
//! - `tokio`: [`AsyncEngine`], the engine's calls as `async fn`s, async service handlers
//!   ([`AsyncHandlers`]) and [`TimerTask`], the timer driver as a tokio task.
//! - `telemetry`: a `tracing` span for every engine call, events and a latency histogram for
//!   store commits, a `metrics` counter of calls, and the [`Telemetry`] hook that turns the
//!   engine's events (denials, incidents, timers, breaches, transitions, open tasks) into
//!   `tracing` events and `metrics` series (names in README.md, "Tokio services").
//!
//! With `default-features = false` the crate is the engine with [`MemoryStore`] alone; a host
//! can still bring its own [`Store`].

#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(feature = "tokio")]
mod asynch;
mod clock;
mod cond;
mod def;
mod exec;
mod hooks;
mod ids;
mod model;
mod org;
mod raci;
#[cfg(feature = "report")]
mod report;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "cli")]
mod sim;
mod store;
mod telemetry;
mod time;
mod vars;
#[cfg(feature = "cli")]
pub mod whatif;
mod yaml;

#[cfg(feature = "tokio")]
pub use asynch::{
    AsyncEngine, AsyncHandler, AsyncHandlerFn, AsyncHandlers, AsyncServiceCall, BoxFuture, Offload,
    TimerTask, async_handler_fn,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use def::flows::{Flow, flow_map, flows_to_dot, flows_to_mermaid};
pub use def::{
    LoadError, Location, Message, Node, NodeKind, Problem, ProblemKind, ProcessDef, Role,
    SentMessage, Signal,
};
pub use exec::{
    Config, Correlation, DeployError, DeployProblem, Engine, EngineBuilder, ExecError, KeyRecord,
    KeyValue, KeyedInstance, OpenError, Sla, SlaStatus, TaskView, TimerDriver,
};
pub use exec::{WorkItem, WorkOrder, WorkQuery};
pub use hooks::{
    Completing, Control, HandlerError, HandlerFn, Hook, HookFn, ServiceCall, ServiceHandler,
    VetoFn, handler_fn, hook_fn, veto_fn,
};
pub use ids::{ActorId, DefKey, InstanceId, NodeId, NodeRef, ParseIdError, RoleId, TaskId};
pub use model::{Call, Refusal};
pub use model::{
    Comment, Entry, Event, Fired, FollowUp, Incident, Instance, Pending, Record, SentBack, Status,
    Task, TaskState, Timer, TimerKind, Token, TokenState,
};
pub use model::{Delivered, ParkedMessage, Received};
pub use org::{Allocation, Organisation, Person, Unit, is_organisation};
pub use raci::{Action, Actor, AuthContext, Authorizer, Raci};
#[cfg(feature = "report")]
pub use report::{
    ActorFigures, Durations, HeatMetric, KeyFigures, KeyHistory, NodeFigures, ProcessFigures,
    Report, ReportError, ReportOptions, RoleFigures, UnknownMetric,
};
#[cfg(feature = "cli")]
pub use sim::{Scenario, SimReport};
#[cfg(feature = "postgres")]
pub use store::PostgresStore;
pub use store::{
    BusinessKey, Commit, Fact, MemoryStore, Offer, SpanRow, Store, StoreError, StoreWake,
    StoreWatch, StoredDef, StoredFacts, StoredInstance,
};
#[cfg(feature = "sqlite")]
pub use store::{Durability, SqliteOptions, SqliteStore};
#[cfg(feature = "telemetry")]
pub use telemetry::Telemetry;
pub use time::calendar::{
    Beyond, BusinessCalendar, CalendarError, CalendarWarning, Computed, Holiday,
};
pub use time::duration::{BusinessDuration, DurationError, DurationErrorKind, DurationSpec};
pub use vars::{VarProblem, VarSpec, VarType, Vars};
pub use yaml::ErrorBody;

/// The README's code blocks run as doctests, so the API tour stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
