//! The routes, the actor extractor, problem+json and the handlers.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::{HeaderValue, StatusCode, header, request::Parts};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Limits, Tokens};
use crate::asynch::Offload;
use crate::exec::{DeployProblem, Engine, ExecError, TaskView, WorkOrder, WorkQuery};
use crate::ids::{InstanceId, TaskId};
use crate::model::{Status, TokenState};
use crate::org::Organisation;
use crate::raci::Actor;
use crate::store::Store;
use crate::vars::Vars;

#[derive(Clone)]
pub(super) struct State {
    pub(super) engine: Arc<Engine>,
    pub(super) org: Arc<Organisation>,
    pub(super) tokens: Arc<Tokens>,
    pub(super) store: Option<Arc<dyn Store>>,
    pub(super) limits: Limits,
    pub(super) offload: Offload,
    pub(super) in_flight: Arc<tokio::sync::Semaphore>,
    /// The definitions deployed through this server (a store lists them too).
    pub(super) deployed: Arc<Mutex<BTreeSet<(String, u32)>>>,
}

type St = axum::extract::State<State>;

// ---------------------------------------------------------------------------------------------
// problem+json

/// An error answer: RFC 9457 problem details with the typed error's kind.
#[derive(Debug)]
pub(super) struct Problem {
    status: StatusCode,
    kind: String,
    detail: String,
    extra: Option<Value>,
}

impl Problem {
    fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            kind: kind.to_owned(),
            detail: detail.into(),
            extra: None,
        }
    }

    fn with(mut self, extra: Value) -> Problem {
        self.extra = Some(extra);
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("https://procflow.dev/problems/{}", self.kind),
            "title": self.status.canonical_reason().unwrap_or("error"),
            "status": self.status.as_u16(),
            "kind": self.kind,
            "detail": self.detail,
        });
        if let (Some(Value::Object(extra)), Value::Object(b)) = (self.extra, &mut body) {
            b.extend(extra);
        }
        let mut resp = (self.status, body.to_string()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"procflow\""),
            );
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// The variant name of a typed error, from its `Debug` form.
fn variant(debug: &str) -> String {
    debug
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .next()
        .unwrap_or("Error")
        .to_owned()
}

impl From<ExecError> for Problem {
    fn from(e: ExecError) -> Problem {
        let kind = variant(&format!("{e:?}"));
        let status = match kind.as_str() {
            "UnknownProcess" | "UnknownInstance" | "UnknownTask" | "UnknownKey"
            | "UnknownMessage" | "UnknownNode" => StatusCode::NOT_FOUND,
            "Denied" | "Refused" | "CancelDenied" | "ReassignRefused" | "LacksSkills" => {
                StatusCode::FORBIDDEN
            }
            "Variables" | "BadKeyValue" | "NotSendBackTarget" | "UndeclaredMessage"
            | "MissingCorrelation" => StatusCode::UNPROCESSABLE_ENTITY,
            "Store" => StatusCode::SERVICE_UNAVAILABLE,
            // The call took effect and a node failed afterwards, or a hook failed after the
            // commit: the instance exists with an incident.
            "Incident" | "Hook" => StatusCode::OK,
            _ => StatusCode::CONFLICT,
        };
        let status = if status == StatusCode::OK {
            StatusCode::ACCEPTED
        } else {
            status
        };
        Problem::new(status, &kind, e.to_string())
    }
}

/// An engine call, run where [`State::offload`] says: it runs to completion once started. A
/// panic is a 500 (the engine does not panic on any input; this is the last line).
async fn blocking<T: Send + 'static>(
    s: &State,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Problem> {
    let caught = move || std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok();
    s.offload.run(caught).await.ok().flatten().ok_or_else(|| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Panic",
            "the call failed",
        )
    })
}

/// A read, bounded by [`Limits::read_timeout`].
async fn read<T: Send + 'static>(
    s: &State,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Problem> {
    match tokio::time::timeout(s.limits.read_timeout, blocking(s, f)).await {
        Ok(r) => r,
        Err(_) => Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Timeout",
            "the read took too long",
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// the actor

/// The authenticated caller.
pub(super) struct Who {
    actor: Actor,
    operator: bool,
}

impl FromRequestParts<State> for Who {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, s: &State) -> Result<Who, Problem> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                "Unauthenticated",
                "no bearer token: send Authorization: Bearer TOKEN",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or_default();
        let Some(entry) = s.tokens.get(token) else {
            return Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                "Unauthenticated",
                "unknown bearer token",
            ));
        };
        let Some(actor) = s.org.actor(&entry.person) else {
            return Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                "Unauthenticated",
                "the token's person is not in the organisation",
            ));
        };
        Ok(Who {
            actor,
            operator: entry.operator,
        })
    }
}

impl Who {
    fn operator(&self, what: &str) -> Result<(), Problem> {
        if self.operator {
            Ok(())
        } else {
            Err(Problem::new(
                StatusCode::FORBIDDEN,
                "NotOperator",
                format!("only an operator token may {what}"),
            ))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// bodies and parameters

/// A JSON body of `T`: 415 unless JSON, 400 when malformed, 422 when it does not fit `T`
/// (unknown fields, wrong types), 413 when too large.
pub(super) struct JsonBody<T>(T);

impl<T: serde::de::DeserializeOwned> FromRequest<State> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, s: &State) -> Result<JsonBody<T>, Problem> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let bytes = body_bytes(req, s).await?;
        if !json {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                "send Content-Type: application/json",
            ));
        }
        parse_json(&bytes).map(JsonBody)
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    // Every body of the API is an object; serde would also read a struct from an array (its
    // fields in order), so that `[]` would be a body with every field left out.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "InvalidBody",
            "the body is an array; a JSON object was expected",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "InvalidBody",
                e.to_string(),
            ),
            _ => Problem::new(StatusCode::BAD_REQUEST, "MalformedJson", e.to_string()),
        }
    })
}

async fn body_bytes(req: Request, s: &State) -> Result<Bytes, Problem> {
    Bytes::from_request(req, s).await.map_err(|e| {
        let status = e.status();
        let kind = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "PayloadTooLarge"
        } else {
            "BadBody"
        };
        Problem::new(status, kind, e.body_text())
    })
}

/// A body with nothing but optional fields may be empty.
pub(super) struct OptBody<T>(T);

impl<T: serde::de::DeserializeOwned + Default> FromRequest<State> for OptBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, s: &State) -> Result<OptBody<T>, Problem> {
        let bytes = body_bytes(req, s).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptBody(T::default()));
        }
        parse_json(&bytes).map(OptBody)
    }
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, Problem> {
    q.map(|Query(t)| t)
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "InvalidQuery", e.body_text()))
}

fn task_id(text: &str) -> Result<TaskId, Problem> {
    text.parse().map_err(|e: crate::ids::ParseIdError| {
        Problem::new(StatusCode::BAD_REQUEST, "BadId", e.to_string())
    })
}

fn instance_id(text: &str) -> Result<InstanceId, Problem> {
    text.parse().map_err(|e: crate::ids::ParseIdError| {
        Problem::new(StatusCode::BAD_REQUEST, "BadId", e.to_string())
    })
}

fn person(s: &State, id: &str) -> Result<Actor, Problem> {
    s.org.actor(id).ok_or_else(|| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "UnknownPerson",
            format!("'{id}' is not a person of the organisation"),
        )
    })
}

fn svg(text: String) -> Response {
    (
        [(header::CONTENT_TYPE, "image/svg+xml; charset=utf-8")],
        text,
    )
        .into_response()
}

fn ok(v: Value) -> Response {
    axum::Json(v).into_response()
}

fn done() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

type Answer = Result<Response, Problem>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct VarsBody {
    #[serde(default)]
    variables: Vars,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StartBody {
    #[serde(default)]
    variables: Vars,
    #[serde(default)]
    version: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TextBody {
    text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToBody {
    to: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBackBody {
    to: String,
    reason: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct VersionQuery {
    version: Option<u32>,
    instance: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WorkParams {
    scope: Option<String>,
    process: Option<String>,
    node: Option<String>,
    min_priority: Option<i64>,
    order: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct InstanceParams {
    process: Option<String>,
    status: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReportParams {
    process: Option<String>,
    since: Option<String>,
    metric: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// the routes

/// Every route: method and path, as the OpenAPI document lists them.
pub(super) const ROUTES: &[(&str, &str)] = &[
    ("get", "/openapi.json"),
    ("get", "/"),
    ("get", "/app.js"),
    ("get", "/style.css"),
    ("get", "/api/me"),
    ("get", "/api/people"),
    ("get", "/api/processes"),
    ("post", "/api/processes"),
    ("get", "/api/processes/{id}"),
    ("get", "/api/processes/{id}/graph"),
    ("get", "/api/processes/{id}/heatmap"),
    ("post", "/api/processes/{id}/instances"),
    ("get", "/api/instances"),
    ("get", "/api/instances/{id}"),
    ("post", "/api/instances/{id}/cancel"),
    ("post", "/api/instances/{id}/retry"),
    ("post", "/api/messages/{name}"),
    ("get", "/api/work"),
    ("get", "/api/tasks/{task}"),
    ("post", "/api/tasks/{task}/claim"),
    ("post", "/api/tasks/{task}/complete"),
    ("post", "/api/tasks/{task}/comment"),
    ("post", "/api/tasks/{task}/reassign"),
    ("post", "/api/tasks/{task}/delegate"),
    ("post", "/api/tasks/{task}/return"),
    ("post", "/api/tasks/{task}/release"),
    ("post", "/api/tasks/{task}/send-back"),
    ("get", "/api/sla"),
    ("get", "/api/reports"),
    ("get", "/api/keys/{key}/{value}"),
];

fn handler_for(method: &str, path: &str) -> MethodRouter<State> {
    match (method, path) {
        ("get", "/openapi.json") => get(openapi),
        ("get", "/") => get(|| async { static_file("text/html; charset=utf-8", INDEX) }),
        ("get", "/app.js") => get(|| async { static_file("text/javascript; charset=utf-8", APP) }),
        ("get", "/style.css") => get(|| async { static_file("text/css; charset=utf-8", STYLE) }),
        ("get", "/api/me") => get(me),
        ("get", "/api/people") => get(people),
        ("get", "/api/processes") => get(processes),
        ("post", "/api/processes") => post(deploy),
        ("get", "/api/processes/{id}") => get(process),
        ("get", "/api/processes/{id}/graph") => get(graph),
        ("get", "/api/processes/{id}/heatmap") => get(heatmap),
        ("post", "/api/processes/{id}/instances") => post(start),
        ("get", "/api/instances") => get(instances),
        ("get", "/api/instances/{id}") => get(instance),
        ("post", "/api/instances/{id}/cancel") => post(cancel),
        ("post", "/api/instances/{id}/retry") => post(retry),
        ("post", "/api/messages/{name}") => post(correlate),
        ("get", "/api/work") => get(work),
        ("get", "/api/tasks/{task}") => get(task),
        ("post", "/api/tasks/{task}/claim") => post(claim),
        ("post", "/api/tasks/{task}/complete") => post(complete),
        ("post", "/api/tasks/{task}/comment") => post(comment),
        ("post", "/api/tasks/{task}/reassign") => post(reassign),
        ("post", "/api/tasks/{task}/delegate") => post(delegate),
        ("post", "/api/tasks/{task}/return") => post(return_task),
        ("post", "/api/tasks/{task}/release") => post(release),
        ("post", "/api/tasks/{task}/send-back") => post(send_back),
        ("get", "/api/sla") => get(sla),
        ("get", "/api/reports") => get(reports),
        ("get", "/api/keys/{key}/{value}") => get(keys),
        _ => get(not_found),
    }
}

pub(super) fn router(state: State) -> Router {
    let mut r: Router<State> = Router::new();
    for (method, path) in ROUTES {
        r = r.route(path, handler_for(method, path));
    }
    let max_body = state.limits.max_body;
    let body_timeout = state.limits.body_timeout;
    r.fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(max_body))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            body_timeout,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), admit))
        .layer(middleware::map_response(problemize))
        .with_state(state)
}

const INDEX: &str = include_str!("../../console/index.html");
const APP: &str = include_str!("../../console/app.js");
const STYLE: &str = include_str!("../../console/style.css");

fn static_file(ty: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, ty),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], super::OPENAPI).into_response()
}

async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "NoRoute", "no such route")
}

/// Over capacity: 503 with `Retry-After`, before the call touches anything.
async fn admit(axum::extract::State(s): St, req: Request, next: Next) -> Response {
    let Ok(permit) = Arc::clone(&s.in_flight).try_acquire_owned() else {
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Overloaded",
            "too many calls in flight; retry",
        )
        .into_response();
    };
    let resp = next.run(req).await;
    drop(permit);
    resp
}

/// Errors from the framework's layers (413, 405, 408) as problem+json too.
async fn problemize(resp: Response) -> Response {
    let status = resp.status();
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return resp;
    }
    let kind = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "PayloadTooLarge",
        StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowed",
        StatusCode::REQUEST_TIMEOUT => "Timeout",
        _ => "HttpError",
    };
    let allow = resp.headers().get(header::ALLOW).cloned();
    let mut out =
        Problem::new(status, kind, status.canonical_reason().unwrap_or("error")).into_response();
    if let Some(allow) = allow {
        out.headers_mut().insert(header::ALLOW, allow);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// handlers: who and what

async fn me(axum::extract::State(s): St, who: Who) -> Answer {
    let p = s.org.person(who.actor.id.as_str());
    Ok(ok(json!({
        "id": who.actor.id,
        "name": p.map(|p| p.name()),
        "roles": who.actor.roles,
        "operator": who.operator,
        "organisation": { "id": s.org.id(), "name": s.org.name(), "name_zh": s.org.name_zh() },
    })))
}

async fn people(axum::extract::State(s): St, _who: Who) -> Answer {
    let list: Vec<Value> = s
        .org
        .people()
        .iter()
        .map(|p| {
            let roles = s
                .org
                .actor(p.id().as_str())
                .map(|a| a.roles)
                .unwrap_or_default();
            json!({ "id": p.id(), "name": p.name(), "roles": roles })
        })
        .collect();
    Ok(ok(Value::Array(list)))
}

/// Every definition this server knows: the store's (without one, those of the instances in
/// the engine), and those deployed through it.
fn known(s: &State) -> BTreeSet<(String, u32)> {
    let mut out = BTreeSet::new();
    match &s.store {
        Some(store) => {
            if let Ok(defs) = store.definitions() {
                out.extend(defs.into_iter().map(|d| (d.key.id, d.key.version)));
            }
        }
        // Without a store, instances of definitions deployed before the server started.
        None => {
            for id in s.engine.instances() {
                if let Ok(i) = s.engine.instance(id)
                    && let Some(k) = i.def()
                {
                    out.insert((k.id.clone(), k.version));
                }
            }
        }
    }
    out.extend(lock(&s.deployed).iter().cloned());
    out
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn processes(axum::extract::State(s): St, _who: Who) -> Answer {
    let s2 = s.clone();
    let list = read(&s, move || {
        let mut out = Vec::new();
        for (id, version) in known(&s2) {
            let Some(def) = s2.engine.definition(&id, Some(version)) else {
                continue;
            };
            out.push(json!({
                "id": id,
                "version": version,
                "name": def.name(),
                "name_zh": def.name_zh(),
                "description": def.description(),
                "keys": def.keys().collect::<Vec<_>>(),
            }));
        }
        out
    })
    .await?;
    Ok(ok(Value::Array(list)))
}

async fn deploy(axum::extract::State(s): St, who: Who, req: Request) -> Answer {
    who.operator("deploy definitions")?;
    let bytes = body_bytes(req, &s).await?;
    let Ok(text) = String::from_utf8(bytes.to_vec()) else {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "BadBody",
            "the definition is not UTF-8",
        ));
    };
    let def = match crate::def::ProcessDef::from_yaml(&text) {
        Ok(d) => d,
        Err(e) => {
            let problems: Vec<Value> = e
                .problems
                .iter()
                .map(|p| {
                    json!({
                        "line": p.location.map(|l| l.line),
                        "column": p.location.map(|l| l.column),
                        "path": p.path,
                        "message": p.kind.to_string(),
                    })
                })
                .collect();
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "LoadError",
                format!(
                    "the definition does not validate: {} problem(s)",
                    problems.len()
                ),
            )
            .with(json!({ "problems": problems })));
        }
    };
    let engine = Arc::clone(&s.engine);
    match blocking(&s, move || engine.deploy(def)).await? {
        Ok(def) => {
            lock(&s.deployed).insert((def.key().id.clone(), def.key().version));
            let resp =
                json!({ "id": def.key().id, "version": def.key().version, "name": def.name() });
            Ok((StatusCode::CREATED, axum::Json(resp)).into_response())
        }
        Err(e) => {
            let problems: Vec<Value> = e
                .problems
                .iter()
                .map(|p| json!({ "kind": variant(&format!("{p:?}")), "message": p.to_string() }))
                .collect();
            let status = if e
                .problems
                .iter()
                .any(|p| matches!(p, DeployProblem::AlreadyDeployed))
            {
                StatusCode::CONFLICT
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            Err(Problem::new(status, "DeployError", e.to_string())
                .with(json!({ "problems": problems })))
        }
    }
}

fn def_of(
    s: &State,
    id: &str,
    version: Option<u32>,
) -> Result<Arc<crate::def::ProcessDef>, Problem> {
    s.engine.definition(id, version).ok_or_else(|| {
        Problem::from(ExecError::UnknownProcess {
            id: id.to_owned(),
            version,
        })
    })
}

async fn process(
    axum::extract::State(s): St,
    _who: Who,
    Path(id): Path<String>,
    q: Result<Query<VersionQuery>, QueryRejection>,
) -> Answer {
    let q = query(q)?;
    let def = def_of(&s, &id, q.version)?;
    let (s2, of) = (s.clone(), id.clone());
    // The store's definitions: a read.
    let versions: Vec<u32> = read(&s, move || {
        known(&s2)
            .into_iter()
            .filter(|(d, _)| *d == of)
            .map(|(_, v)| v)
            .collect()
    })
    .await?;
    let nodes: Vec<Value> = def
        .nodes()
        .map(|(_, n)| {
            json!({
                "id": n.id(),
                "kind": n.kind().as_str(),
                "name": n.name(),
                "name_zh": n.name_zh(),
                "description": n.description(),
                "responsible": n.raci().map(|r| r.responsible().to_vec()),
                "accountable": n.raci().map(|r| r.accountable().clone()),
                "send_back": n.send_back().iter().map(|t| def.node(*t).id()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let roles: Vec<Value> = def
        .roles()
        .map(|(id, r)| json!({ "id": id, "name": r.name, "name_zh": r.name_zh }))
        .collect();
    Ok(ok(json!({
        "id": def.key().id,
        "version": def.key().version,
        "versions": versions,
        "name": def.name(),
        "name_zh": def.name_zh(),
        "description": def.description(),
        "keys": def.keys().collect::<Vec<_>>(),
        "variables": variables(&def),
        "roles": roles,
        "nodes": nodes,
        "messages": def.messages().map(|(m, _)| m).collect::<Vec<_>>(),
        "mermaid": def.to_mermaid(),
    })))
}

fn variables(def: &crate::def::ProcessDef) -> Vec<Value> {
    def.variables()
        .map(|v| {
            json!({
                "name": v.name(),
                "type": v.ty(),
                "required": v.required(),
                "default": v.default(),
                "enum": v.allowed(),
                "description": v.description(),
            })
        })
        .collect()
}

/// Tokens waiting per node over the running instances of `process` (and version).
fn counts(s: &State, process: &str, version: u32) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for id in s.engine.instances() {
        let Ok(i) = s.engine.instance(id) else {
            continue;
        };
        if i.status() != Status::Running
            || i.def()
                .is_none_or(|k| k.id != process || k.version != version)
        {
            continue;
        }
        let Ok(def) = s.engine.definition_of(id) else {
            continue;
        };
        for t in i.tokens() {
            if matches!(
                t.state,
                TokenState::Waiting | TokenState::Failed | TokenState::Ready
            ) && let Some(n) = def.try_node(t.node)
            {
                *out.entry(n.id().to_owned()).or_insert(0) += 1;
            }
        }
    }
    out
}

async fn graph(
    axum::extract::State(s): St,
    _who: Who,
    Path(id): Path<String>,
    q: Result<Query<VersionQuery>, QueryRejection>,
) -> Answer {
    let q = query(q)?;
    let def = def_of(&s, &id, q.version)?;
    let current = match &q.instance {
        Some(text) => {
            let iid = instance_id(text)?;
            let s2 = s.clone();
            let inst = read(&s, move || s2.engine.instance(iid)).await??;
            inst.tokens()
                .iter()
                .filter(|t| t.state != TokenState::Joined)
                .filter_map(|t| def.try_node(t.node).map(|n| n.id().to_owned()))
                .collect()
        }
        None => Vec::new(),
    };
    let s2 = s.clone();
    let version = def.key().version;
    let counts = read(&s, move || counts(&s2, &id, version)).await?;
    Ok(svg(super::graph_svg(&def, &counts, &current)))
}

fn no_store() -> Problem {
    Problem::new(
        StatusCode::NOT_IMPLEMENTED,
        "NoStore",
        "this server was given no store: reports need one",
    )
}

fn report_of(s: &State, p: &ReportParams) -> Result<crate::report::Report, Problem> {
    let store = s.store.as_ref().ok_or_else(no_store)?;
    let mut options = crate::report::ReportOptions::default();
    if let Some(process) = &p.process {
        options = options.process(process.clone());
    }
    if let Some(since) = &p.since {
        let t = chrono::DateTime::parse_from_rfc3339(since)
            .map(|t| t.to_utc())
            .or_else(|_| {
                chrono::NaiveDate::parse_from_str(since, "%Y-%m-%d")
                    .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
            })
            .map_err(|_| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "InvalidQuery",
                    format!("since '{since}' is neither RFC 3339 nor a date"),
                )
            })?;
        options = options.since(t);
    }
    crate::report::Report::from_store(&**store, &options).map_err(Problem::from)
}

impl From<crate::report::ReportError> for Problem {
    fn from(e: crate::report::ReportError) -> Problem {
        use crate::report::ReportError as E;
        let status = match &e {
            E::UnknownProcess { .. } | E::UnknownKey { .. } => StatusCode::NOT_FOUND,
            E::BadKeyValue { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            // A stored definition that no longer compiles: the server's fault, not the caller's.
            E::Definition { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            E::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        Problem::new(status, &variant(&format!("{e:?}")), e.to_string())
    }
}

async fn heatmap(
    axum::extract::State(s): St,
    _who: Who,
    Path(id): Path<String>,
    q: Result<Query<ReportParams>, QueryRejection>,
) -> Answer {
    let mut q = query(q)?;
    let def = def_of(&s, &id, None)?;
    let metric: crate::report::HeatMetric =
        q.metric.as_deref().unwrap_or("mean-wait").parse().map_err(
            |e: crate::report::UnknownMetric| {
                Problem::new(StatusCode::BAD_REQUEST, "UnknownMetric", e.to_string())
            },
        )?;
    q.process = Some(id);
    let s2 = s.clone();
    let report = read(&s, move || report_of(&s2, &q)).await??;
    Ok(svg(report.heatmap(&def, metric)))
}

async fn reports(
    axum::extract::State(s): St,
    _who: Who,
    q: Result<Query<ReportParams>, QueryRejection>,
) -> Answer {
    let q = query(q)?;
    if q.metric.is_some() {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "InvalidQuery",
            "metric is a heatmap parameter",
        ));
    }
    let s2 = s.clone();
    let report = read(&s, move || report_of(&s2, &q)).await??;
    let body = report.to_json();
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

// ---------------------------------------------------------------------------------------------
// handlers: instances

async fn start(
    axum::extract::State(s): St,
    _who: Who,
    Path(id): Path<String>,
    OptBody(body): OptBody<StartBody>,
) -> Answer {
    let s2 = s.clone();
    let (iid, tasks) = blocking(&s, move || {
        let iid = s2.engine.start_version(&id, body.version, body.variables)?;
        let tasks = s2.engine.tasks(iid).unwrap_or_default();
        Ok::<_, ExecError>((iid, rows(&s2, tasks)))
    })
    .await??;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "instance": iid.to_string(), "tasks": tasks })),
    )
        .into_response())
}

fn summary(s: &State, id: InstanceId) -> Option<Value> {
    let i = s.engine.instance(id).ok()?;
    let def = s.engine.definition_of(id).ok()?;
    let open: Vec<&str> = i
        .tasks()
        .iter()
        .filter(|t| t.is_open())
        .filter_map(|t| def.try_node(t.node()).map(|n| n.id()))
        .collect();
    let keys: serde_json::Map<String, Value> = def
        .keys()
        .filter_map(|k| i.vars().get(k).map(|v| (k.to_owned(), v.clone())))
        .collect();
    Some(json!({
        "instance": id.to_string(),
        "process": def.key().id,
        "version": def.key().version,
        "name": def.name(),
        "name_zh": def.name_zh(),
        "status": i.status(),
        "open_tasks": open,
        "keys": keys,
        "incidents": i.incidents().iter().filter(|x| !x.resolved).collect::<Vec<_>>(),
        "sla": s.engine.sla_of_instance(id).ok().flatten(),
        "started_at": i.started_at(),
        "ended_at": i.ended_at(),
    }))
}

async fn instances(
    axum::extract::State(s): St,
    _who: Who,
    q: Result<Query<InstanceParams>, QueryRejection>,
) -> Answer {
    let q = query(q)?;
    let status = match q.status.as_deref() {
        None | Some("all") => None,
        Some("running") => Some(Status::Running),
        Some("completed") => Some(Status::Completed),
        Some("cancelled") => Some(Status::Cancelled),
        Some(other) => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "InvalidQuery",
                format!("status '{other}': use running, completed, cancelled or all"),
            ));
        }
    };
    let s2 = s.clone();
    let list = read(&s, move || {
        let mut out = Vec::new();
        for id in s2.engine.instances().into_iter().rev() {
            let Some(v) = summary(&s2, id) else { continue };
            if q.process.as_ref().is_some_and(|p| v["process"] != *p) {
                continue;
            }
            if let Some(st) = status
                && v["status"] != json!(st)
            {
                continue;
            }
            out.push(v);
            if out.len() >= 500 {
                break;
            }
        }
        out
    })
    .await?;
    Ok(ok(Value::Array(list)))
}

async fn instance(axum::extract::State(s): St, _who: Who, Path(id): Path<String>) -> Answer {
    let id = instance_id(&id)?;
    let s2 = s.clone();
    let body = read(&s, move || {
        let s = s2;
        let inst = s.engine.instance(id)?;
        let def = s.engine.definition_of(id)?;
        let tasks = s.engine.tasks(id)?;
        let history: Vec<Value> = inst
            .audit()
            .iter()
            .map(|r| json!({ "at": r.at, "what": r.describe(&def) }))
            .collect();
        Ok::<_, ExecError>(json!({
            "summary": summary(&s, id),
            "instance": inst,
            "tasks": rows(&s, tasks),
            "history": history,
        }))
    })
    .await??;
    Ok(ok(body))
}

async fn cancel(
    axum::extract::State(s): St,
    who: Who,
    Path(id): Path<String>,
    OptBody(body): OptBody<ReasonBody>,
) -> Answer {
    let id = instance_id(&id)?;
    let engine = Arc::clone(&s.engine);
    blocking(&s, move || engine.cancel(id, &who.actor, &body.reason)).await??;
    Ok(done())
}

async fn retry(axum::extract::State(s): St, who: Who, Path(id): Path<String>) -> Answer {
    who.operator("retry incidents")?;
    let id = instance_id(&id)?;
    let engine = Arc::clone(&s.engine);
    blocking(&s, move || engine.retry(id)).await??;
    Ok(done())
}

async fn correlate(
    axum::extract::State(s): St,
    _who: Who,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<VarsBody>,
) -> Answer {
    let engine = Arc::clone(&s.engine);
    let c = blocking(&s, move || engine.correlate(&name, body.variables)).await??;
    let ids = |v: &[InstanceId]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    Ok(ok(json!({
        "received": ids(&c.received),
        "started": ids(&c.started),
        "kept": c.kept,
        "unmatched": c.unmatched(),
    })))
}

// ---------------------------------------------------------------------------------------------
// handlers: tasks

/// A task as the API shows it: the library's [`TaskView`], its ids as text, its process's names
/// and its SLA. Serialized straight to the response (no `Value` tree: a work list is the API's
/// most frequent read).
#[derive(Serialize)]
struct Row {
    #[serde(flatten)]
    view: TaskView,
    task: String,
    instance: String,
    #[serde(flatten)]
    names: Option<Names>,
    sla: Option<crate::Sla>,
}

/// The names of a row's process and node.
#[derive(Serialize)]
struct Names {
    process: String,
    process_name: String,
    process_name_zh: Option<String>,
    name_zh: Option<String>,
}

/// Work-list rows of `tasks`, each definition looked up once.
fn rows(s: &State, tasks: Vec<TaskView>) -> Vec<Row> {
    let mut defs: HashMap<InstanceId, Option<Arc<crate::def::ProcessDef>>> = HashMap::new();
    tasks
        .into_iter()
        .map(|view| {
            let def = defs
                .entry(view.id.instance())
                .or_insert_with(|| s.engine.definition_of(view.id.instance()).ok());
            let names = def.as_ref().map(|def| Names {
                process: def.key().id.to_string(),
                process_name: def.name().to_owned(),
                process_name_zh: def.name_zh().map(str::to_owned),
                name_zh: def
                    .try_node(view.node)
                    .and_then(|n| n.name_zh())
                    .map(str::to_owned),
            });
            Row {
                task: view.id.to_string(),
                instance: view.id.instance().to_string(),
                sla: s.engine.sla_of_task(view.id).ok().flatten(),
                names,
                view,
            }
        })
        .collect()
}

async fn work(
    axum::extract::State(s): St,
    who: Who,
    q: Result<Query<WorkParams>, QueryRejection>,
) -> Answer {
    let q = query(q)?;
    let mut wq = WorkQuery::new();
    if let Some(p) = &q.process {
        wq = wq.process(p.clone());
    }
    if let Some(n) = &q.node {
        wq = wq.node(n.clone());
    }
    if let Some(p) = q.min_priority {
        wq = wq.min_priority(p);
    }
    wq = wq.order(match q.order.as_deref() {
        None | Some("due") => WorkOrder::Due,
        Some("priority") => WorkOrder::Priority,
        Some(other) => WorkOrder::Var(other.to_owned()),
    });
    let scope = q.scope.clone().unwrap_or_else(|| "all".to_owned());
    if !matches!(scope.as_str(), "mine" | "groups" | "all") {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "InvalidQuery",
            "scope: use mine, groups or all",
        ));
    }
    let s2 = s.clone();
    let list = read(&s, move || {
        let me = &who.actor.id;
        let list: Vec<TaskView> = s2
            .engine
            .work_list_by(&who.actor, &wq)
            .into_iter()
            .filter(|t| {
                let mine = t.claimed_by.as_ref() == Some(me) || t.assignee.as_ref() == Some(me);
                match scope.as_str() {
                    "mine" => mine,
                    "groups" => !mine,
                    _ => true,
                }
            })
            .collect();
        rows(&s2, list)
    })
    .await?;
    // Sized for the rows up front (about 400 bytes each): growing an 8 KB body from axum's
    // 128 bytes copied it six times.
    let mut body = Vec::with_capacity(512 * list.len() + 2);
    serde_json::to_writer(&mut body, &list)
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "Json", e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn task(axum::extract::State(s): St, _who: Who, Path(text): Path<String>) -> Answer {
    let id = task_id(&text)?;
    let s2 = s.clone();
    let body = read(&s, move || {
        let s = s2;
        let views = s.engine.tasks(id.instance())?;
        let Some(view) = views.into_iter().find(|t| t.id == id) else {
            return Err(ExecError::UnknownTask(id));
        };
        let def = s.engine.definition_of(id.instance())?;
        let inst = s.engine.instance(id.instance())?;
        let node = def.node(view.node);
        let comments = inst
            .tasks()
            .get(id.seq() as usize)
            .map(|t| t.comments().to_vec())
            .unwrap_or_default();
        let row = rows(&s, vec![view]).pop();
        Ok(json!({
            "task": row,
            "description": node.description(),
            "send_back": node.send_back().iter().map(|t| def.node(*t).id()).collect::<Vec<_>>(),
            "sets": node.sets().map(|s| s.collect::<Vec<_>>()),
            "variables": variables(&def),
            "values": inst.vars(),
            "comments": comments,
        }))
    })
    .await??;
    Ok(ok(body))
}

async fn claim(axum::extract::State(s): St, who: Who, Path(t): Path<String>) -> Answer {
    let t = task_id(&t)?;
    let engine = Arc::clone(&s.engine);
    blocking(&s, move || engine.claim(t, &who.actor)).await??;
    Ok(done())
}

async fn complete(
    axum::extract::State(s): St,
    who: Who,
    Path(t): Path<String>,
    OptBody(body): OptBody<VarsBody>,
) -> Answer {
    let t = task_id(&t)?;
    let engine = Arc::clone(&s.engine);
    blocking(&s, move || engine.complete(t, &who.actor, body.variables)).await??;
    Ok(done())
}

async fn comment(
    axum::extract::State(s): St,
    who: Who,
    Path(t): Path<String>,
    JsonBody(body): JsonBody<TextBody>,
) -> Answer {
    let t = task_id(&t)?;
    let engine = Arc::clone(&s.engine);
    blocking(&s, move || engine.comment(t, &who.actor, &body.text)).await??;
    Ok(done())
}

async fn reassign(
    axum::extract::State(s): St,
    who: Who,
    Path(t): Path<String>,
    JsonBody(body): JsonBody<ToBody>,
) -> Answer {
    let t = task_id(&t)?;
    let to = person(&s, &body.to)?;
    let engine = Arc::clone(&s.engine);
    blocking(&s, move || engine.reassign(t, &who.actor, &to)).await??;
    Ok(done())
}

async fn delegate(
    axum::extract::State(s): St,
    who: Who,
    Path(t): Path<String>,
    JsonBody(body): JsonBody<ToBody>,
) -> Answer {
    let t = task_id(&t)?;
    let to = person(&s, &body.to)?;
    let engine = Arc::clone(&s.engine);
    blocking(&s, move || engine.delegate(t, &who.actor, &to)).await??;
    Ok(done())
}

async fn return_task(axum::extract::State(s): St, who: Who, Path(t): Path<String>) -> Answer {
    let t = task_id(&t)?;
    let engine = Arc::clone(&s.engine);
    blocking(&s, move || engine.return_task(t, &who.actor)).await??;
    Ok(done())
}

async fn release(axum::extract::State(s): St, who: Who, Path(t): Path<String>) -> Answer {
    let t = task_id(&t)?;
    let engine = Arc::clone(&s.engine);
    blocking(&s, move || engine.release(t, &who.actor)).await??;
    Ok(done())
}

async fn send_back(
    axum::extract::State(s): St,
    who: Who,
    Path(t): Path<String>,
    JsonBody(body): JsonBody<SendBackBody>,
) -> Answer {
    let t = task_id(&t)?;
    let engine = Arc::clone(&s.engine);
    blocking(&s, move || {
        engine.send_back(t, &who.actor, &body.to, &body.reason)
    })
    .await??;
    Ok(done())
}

// ---------------------------------------------------------------------------------------------
// handlers: SLA and keys

async fn sla(axum::extract::State(s): St, _who: Who) -> Answer {
    let s2 = s.clone();
    let list = read(&s, move || {
        let mut out = Vec::new();
        for id in s2.engine.instances() {
            let Some(v) = summary(&s2, id) else { continue };
            if v["status"] != json!(Status::Running) {
                continue;
            }
            let tasks: Vec<Row> = rows(&s2, s2.engine.tasks(id).unwrap_or_default())
                .into_iter()
                .filter(|t| t.sla.is_some())
                .collect();
            if v["sla"].is_null() && tasks.is_empty() {
                continue;
            }
            out.push(json!({ "instance": v, "tasks": tasks }));
        }
        out
    })
    .await?;
    Ok(ok(Value::Array(list)))
}

async fn keys(
    axum::extract::State(s): St,
    _who: Who,
    Path((key, value)): Path<(String, String)>,
) -> Answer {
    let engine = Arc::clone(&s.engine);
    let (found, history) = read(&s, move || {
        let found = engine.find_by_key(&key, value.as_str())?;
        let history = engine.history_by_key(&key, value.as_str())?;
        Ok::<_, ExecError>((found, history))
    })
    .await??;
    let found: Vec<Value> = found
        .into_iter()
        .map(|k| {
            let mut v = serde_json::to_value(&k).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("instance".into(), json!(k.id.to_string()));
            }
            v
        })
        .collect();
    Ok(ok(json!({ "instances": found, "history": history })))
}
