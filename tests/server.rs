//! The HTTP API (feature `server`): every endpoint through the router, the bearer-token actors
//! and RACI, and bad input answered 4xx problem+json with nothing changed.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use procflow::server::{Limits, Server, Tokens};
use procflow::{Engine, MemoryStore, Offload, Organisation, Status, Store};
use serde_json::{Value, json};
use tower::ServiceExt;

const ORG: &str = "process-defs/org/province.yaml";
const TOKENS: &str = "process-defs/org/tokens.yaml";

const WANG: &str = "agent-wang-demo"; // customer_service, Guangzhou
const SUN: &str = "agent-sun-demo"; // customer_service, Guangzhou
const GUO: &str = "agent-guo-demo"; // customer_service, Shenzhen
const CHEN: &str = "engineer-chen-demo"; // network_ops, Guangzhou
const XIAO: &str = "trainee-xiao-demo"; // no role
const SONG: &str = "operator-song-demo"; // operator

const REPAIR: &str = r#"
id: repair
version: 1
name: Repair a line
name_zh: 修复线路
accountable: customer_service
roles:
  customer_service: { name: Customer service, name_zh: 客服 }
  network_ops: { name: Network operations, name_zh: 网管 }
keys: [customer_id]
variables:
  customer_id: { type: string }
  account_unit: { type: string }
  note: { type: string, description: what the agent recorded }
nodes:
  start: { kind: start, next: record }
  record:
    kind: user_task
    name: Record the fault
    name_zh: 记录故障
    raci: { responsible: [customer_service@account_unit], accountable: customer_service }
    due: 2h
    next: fix
  fix:
    kind: user_task
    name: Fix the line
    name_zh: 修复
    raci: { responsible: [network_ops], accountable: customer_service }
    send_back: [record]
    next: end
  end: { kind: end }
"#;

struct Api {
    router: Router,
    engine: Arc<Engine>,
}

fn api_with(limits: Limits) -> Api {
    api_on(limits, Offload::SpawnBlocking)
}

fn api_on(limits: Limits, offload: Offload) -> Api {
    let org = Arc::new(Organisation::from_file(ORG).unwrap());
    let tokens = Tokens::from_file(TOKENS, &org).unwrap();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut b = Engine::builder();
    b.organisation(Arc::clone(&org));
    let engine = Arc::new(b.open(Arc::clone(&store)).unwrap());
    engine
        .deploy(procflow::ProcessDef::from_yaml(REPAIR).unwrap())
        .unwrap();
    let router = Server::new(Arc::clone(&engine), org, tokens)
        .store(store)
        .limits(limits)
        .offload(offload)
        .router();
    Api { router, engine }
}

fn api() -> Api {
    api_with(Limits::default())
}

struct Answer {
    status: StatusCode,
    content_type: String,
    body: Value,
    text: String,
}

impl Api {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, String)>,
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some((ty, text)) => req.header(header::CONTENT_TYPE, ty).body(Body::from(text)),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            content_type,
            body,
            text,
        }
    }

    async fn get(&self, path: &str, token: &str) -> Answer {
        self.call("GET", path, Some(token), None).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.call(
            "POST",
            path,
            Some(token),
            Some(("application/json", body.to_string())),
        )
        .await
    }

    /// Starts a repair in Guangzhou; its first task's id.
    async fn start(&self) -> (String, String) {
        let a = self
            .post(
                "/api/processes/repair/instances",
                WANG,
                json!({ "variables": { "customer_id": "C-1", "account_unit": "gz" } }),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        let instance = a.body["instance"].as_str().unwrap().to_owned();
        let task = a.body["tasks"][0]["task"].as_str().unwrap().to_owned();
        (instance, task)
    }

    fn audit_len(&self, instance: &str) -> usize {
        self.engine
            .instance(instance.parse().unwrap())
            .unwrap()
            .audit()
            .len()
    }
}

fn problem(a: &Answer, status: StatusCode, kind: &str) {
    assert_eq!(a.status, status, "{}", a.text);
    assert_eq!(a.content_type, "application/problem+json", "{}", a.text);
    assert_eq!(a.body["kind"], kind, "{}", a.text);
    assert_eq!(a.body["status"], status.as_u16());
    assert!(a.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
}

#[tokio::test]
async fn the_work_cycle_claim_comment_complete_send_back_and_leave_the_list() {
    work_cycle(api()).await;
}

/// The same calls with the engine run on the request's own task (what `procflow serve --store
/// memory` does), on a multi-thread runtime and in `block_in_place`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_work_cycle_inline_and_in_place() {
    work_cycle(api_on(Limits::default(), Offload::Inline)).await;
    work_cycle(api_on(Limits::default(), Offload::BlockInPlace)).await;
}

async fn work_cycle(api: Api) {
    let (instance, task) = api.start().await;
    // wang's groups' work holds it; wang's own does not yet
    let groups = api.get("/api/work?scope=groups", WANG).await;
    assert_eq!(groups.body[0]["task"], task.as_str());
    assert_eq!(groups.body[0]["name_zh"], "记录故障");
    assert_eq!(groups.body[0]["process_name_zh"], "修复线路");
    assert_eq!(groups.body[0]["sla"]["status"], "on_track");
    assert_eq!(api.get("/api/work?scope=mine", WANG).await.body, json!([]));
    let a = api
        .post(&format!("/api/tasks/{task}/claim"), WANG, json!({}))
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    assert_eq!(
        api.get("/api/work?scope=mine", WANG).await.body[0]["task"],
        task.as_str()
    );
    // sun no longer sees it: it is wang's
    assert_eq!(api.get("/api/work", SUN).await.body, json!([]));
    let a = api
        .post(
            &format!("/api/tasks/{task}/comment"),
            WANG,
            json!({ "text": "customer called twice" }),
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    let detail = api.get(&format!("/api/tasks/{task}"), WANG).await;
    assert_eq!(detail.body["comments"][0]["text"], "customer called twice");
    assert!(
        detail.body["variables"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "note")
    );
    let a = api
        .post(
            &format!("/api/tasks/{task}/complete"),
            WANG,
            json!({ "variables": { "note": "no dial tone" } }),
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    assert_eq!(api.get("/api/work", WANG).await.body, json!([]));
    // the engineer has the fix and sends it back to recording
    let work = api.get("/api/work", CHEN).await;
    let fix = work.body[0]["task"].as_str().unwrap().to_owned();
    assert_eq!(work.body[0]["node_id"], "fix");
    let a = api
        .post(
            &format!("/api/tasks/{fix}/send-back"),
            CHEN,
            json!({ "to": "record", "reason": "which line?" }),
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    let inst = api.get(&format!("/api/instances/{instance}"), WANG).await;
    assert_eq!(inst.body["summary"]["open_tasks"], json!(["record"]));
    assert!(inst.body["history"].as_array().unwrap().len() > 3);
    // instance list, graph with the token on record
    let list = api
        .get("/api/instances?process=repair&status=running", WANG)
        .await;
    assert_eq!(list.body[0]["instance"], instance.as_str());
    let svg = api
        .get(
            &format!("/api/processes/repair/graph?instance={instance}"),
            WANG,
        )
        .await;
    assert_eq!(svg.content_type, "image/svg+xml; charset=utf-8");
    assert!(
        svg.text
            .contains(r#"class="node current" data-node="record" data-count="1""#),
        "{}",
        svg.text
    );
}

#[tokio::test]
async fn release_delegate_return_reassign_and_cancel() {
    let api = api();
    let (instance, task) = api.start().await;
    let claim = format!("/api/tasks/{task}/claim");
    assert_eq!(
        api.post(&claim, WANG, json!({})).await.status,
        StatusCode::NO_CONTENT
    );
    let a = api
        .post(&format!("/api/tasks/{task}/release"), WANG, json!({}))
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    assert_eq!(
        api.post(&claim, WANG, json!({})).await.status,
        StatusCode::NO_CONTENT
    );
    let a = api
        .post(
            &format!("/api/tasks/{task}/delegate"),
            WANG,
            json!({ "to": "sun" }),
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    assert_eq!(
        api.get("/api/work?scope=mine", SUN).await.body[0]["delegated_by"],
        "wang"
    );
    let a = api
        .post(&format!("/api/tasks/{task}/return"), SUN, json!({}))
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    let a = api
        .post(
            &format!("/api/tasks/{task}/reassign"),
            WANG,
            json!({ "to": "sun" }),
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    assert_eq!(
        api.get("/api/work?scope=mine", SUN).await.body[0]["task"],
        task.as_str()
    );
    // the trainee may not cancel; the accountable centre may
    let cancel = format!("/api/instances/{instance}/cancel");
    problem(
        &api.post(&cancel, XIAO, json!({ "reason": "test" })).await,
        StatusCode::FORBIDDEN,
        "CancelDenied",
    );
    let a = api
        .post(&cancel, WANG, json!({ "reason": "customer withdrew" }))
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    let id = instance.parse().unwrap();
    assert_eq!(api.engine.instance(id).unwrap().status(), Status::Cancelled);
    problem(
        &api.post(&cancel, WANG, json!({})).await,
        StatusCode::CONFLICT,
        "InstanceCancelled",
    );
}

#[tokio::test]
async fn auth_is_required_and_raci_applies() {
    let api = api();
    let (instance, task) = api.start().await;
    let claim = format!("/api/tasks/{task}/claim");
    let before = api.audit_len(&instance);
    // missing and forged tokens
    let a = api.call("POST", &claim, None, None).await;
    problem(&a, StatusCode::UNAUTHORIZED, "Unauthenticated");
    let a = api
        .call("GET", "/api/work", Some("forged-token-123"), None)
        .await;
    problem(&a, StatusCode::UNAUTHORIZED, "Unauthenticated");
    let a = api.call("GET", "/api/me", None, None).await;
    problem(&a, StatusCode::UNAUTHORIZED, "Unauthenticated");
    assert_eq!(
        api.audit_len(&instance),
        before,
        "an unauthenticated call touched nothing"
    );
    // the trainee holds no role: refused, audited, nothing else changed
    let a = api.post(&claim, XIAO, json!({})).await;
    problem(&a, StatusCode::FORBIDDEN, "Denied");
    assert_eq!(api.get("/api/work", XIAO).await.body, json!([]));
    // an agent of Shenzhen on a task scoped to Guangzhou
    let a = api.post(&claim, GUO, json!({})).await;
    problem(&a, StatusCode::FORBIDDEN, "Denied");
    assert_eq!(api.get("/api/work", GUO).await.body, json!([]));
    let inst = api.engine.instance(instance.parse().unwrap()).unwrap();
    assert!(
        inst.tasks()[0].claimed_by().is_none(),
        "nobody holds the claim"
    );
    // deploy and retry are operators' only
    let a = api
        .call(
            "POST",
            "/api/processes",
            Some(WANG),
            Some(("application/yaml", REPAIR.to_owned())),
        )
        .await;
    problem(&a, StatusCode::FORBIDDEN, "NotOperator");
    problem(
        &api.post(&format!("/api/instances/{instance}/retry"), WANG, json!({}))
            .await,
        StatusCode::FORBIDDEN,
        "NotOperator",
    );
    problem(
        &api.post(&format!("/api/instances/{instance}/retry"), SONG, json!({}))
            .await,
        StatusCode::CONFLICT,
        "NothingToRetry",
    );
    let me = api.get("/api/me", XIAO).await;
    assert_eq!(me.body["id"], "xiao");
    assert_eq!(me.body["roles"], json!([]));
}

#[tokio::test]
async fn bad_input_is_a_4xx_problem_and_changes_nothing() {
    let api = api_with(Limits {
        max_body: 1024,
        ..Limits::default()
    });
    let (instance, task) = api.start().await;
    let complete = format!("/api/tasks/{task}/complete");
    assert_eq!(
        api.post(&format!("/api/tasks/{task}/claim"), WANG, json!({}))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let before = api.audit_len(&instance);
    let json_ty = "application/json";
    let a = api
        .call(
            "POST",
            &complete,
            Some(WANG),
            Some((json_ty, "{\"variables\": {".into())),
        )
        .await;
    problem(&a, StatusCode::BAD_REQUEST, "MalformedJson");
    let a = api
        .call(
            "POST",
            &complete,
            Some(WANG),
            Some((json_ty, json!({ "variables": {}, "extra": 1 }).to_string())),
        )
        .await;
    problem(&a, StatusCode::UNPROCESSABLE_ENTITY, "InvalidBody");
    let a = api
        .call(
            "POST",
            &complete,
            Some(WANG),
            Some((json_ty, json!({ "variables": [1, 2] }).to_string())),
        )
        .await;
    problem(&a, StatusCode::UNPROCESSABLE_ENTITY, "InvalidBody");
    // An array where the body is an object (serde would read a struct's fields from it in
    // order: `[]` was a completion without variables).
    for body in ["[]", " [{}]"] {
        let a = api
            .call("POST", &complete, Some(WANG), Some((json_ty, body.into())))
            .await;
        problem(&a, StatusCode::UNPROCESSABLE_ENTITY, "InvalidBody");
    }
    let big = json!({ "variables": { "note": "x".repeat(4096) } }).to_string();
    let a = api
        .call("POST", &complete, Some(WANG), Some((json_ty, big)))
        .await;
    problem(&a, StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge");
    // undeclared variable and wrong type: the engine's typed error
    let a = api
        .post(&complete, WANG, json!({ "variables": { "nope": 1 } }))
        .await;
    problem(&a, StatusCode::UNPROCESSABLE_ENTITY, "Variables");
    let a = api
        .post(&complete, WANG, json!({ "variables": { "note": 5 } }))
        .await;
    problem(&a, StatusCode::UNPROCESSABLE_ENTITY, "Variables");
    let a = api
        .call(
            "POST",
            &format!("/api/tasks/{task}/comment"),
            Some(WANG),
            Some(("text/plain", "hi".into())),
        )
        .await;
    problem(
        &a,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UnsupportedMediaType",
    );
    problem(
        &api.post("/api/tasks/nonsense/claim", WANG, json!({})).await,
        StatusCode::BAD_REQUEST,
        "BadId",
    );
    problem(
        &api.post("/api/tasks/i999.t0/claim", WANG, json!({})).await,
        StatusCode::NOT_FOUND,
        "UnknownInstance",
    );
    problem(
        &api.get("/api/work?scope=everyone", WANG).await,
        StatusCode::BAD_REQUEST,
        "InvalidQuery",
    );
    problem(
        &api.get("/api/work?bogus=1", WANG).await,
        StatusCode::BAD_REQUEST,
        "InvalidQuery",
    );
    problem(
        &api.get("/api/nowhere", WANG).await,
        StatusCode::NOT_FOUND,
        "NoRoute",
    );
    problem(
        &api.get("/api/tasks/i1.t0/claim", WANG).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
    );
    problem(
        &api.post(
            &format!("/api/tasks/{task}/delegate"),
            WANG,
            json!({ "to": "../../etc/passwd" }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "UnknownPerson",
    );
    problem(
        &api.post("/api/processes/nope/instances", WANG, json!({}))
            .await,
        StatusCode::NOT_FOUND,
        "UnknownProcess",
    );
    assert_eq!(
        api.audit_len(&instance),
        before,
        "no bad call changed the instance"
    );
    let inst = api.engine.instance(instance.parse().unwrap()).unwrap();
    assert_eq!(*inst.tasks()[0].state(), procflow::TaskState::Open);
    assert!(inst.vars().get("note").is_none());
}

#[tokio::test]
async fn deploy_answers_located_problems() {
    let api = api();
    let yaml = |text: &str| Some(("application/yaml", text.to_owned()));
    let broken = REPAIR
        .replace("version: 1", "version: 2")
        .replace("next: end", "next: nowhere");
    let a = api
        .call("POST", "/api/processes", Some(SONG), yaml(&broken))
        .await;
    problem(&a, StatusCode::UNPROCESSABLE_ENTITY, "LoadError");
    let problems = a.body["problems"].as_array().unwrap();
    let p = problems
        .iter()
        .find(|p| p["path"] == "nodes.fix.next")
        .expect("the bad next");
    assert_eq!(
        (p["line"].as_u64(), p["column"].as_u64()),
        (Some(30), Some(11)),
        "{}",
        a.text
    );
    assert!(
        p["message"].as_str().unwrap().contains("nowhere"),
        "{}",
        a.text
    );
    assert!(api.engine.definition("repair", Some(2)).is_none());
    // another text under a deployed version
    let other = REPAIR.replace("Repair a line", "Repair");
    problem(
        &api.call("POST", "/api/processes", Some(SONG), yaml(&other))
            .await,
        StatusCode::CONFLICT,
        "DeployError",
    );
    let v2 = REPAIR.replace("version: 1", "version: 2");
    let a = api
        .call("POST", "/api/processes", Some(SONG), yaml(&v2))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let list = api.get("/api/processes", WANG).await;
    let versions: Vec<u64> = list
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2]);
    let def = api.get("/api/processes/repair?version=1", WANG).await;
    assert_eq!(def.body["versions"], json!([1, 2]));
    assert_eq!(def.body["name_zh"], "修复线路");
    assert!(
        def.body["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == "fix" && n["name_zh"] == "修复")
    );
}

#[tokio::test]
async fn queries_messages_sla_keys_reports_heatmap() {
    let api = api();
    let (instance, _) = api.start().await;
    let sla = api.get("/api/sla", WANG).await;
    assert_eq!(sla.body[0]["instance"]["instance"], instance.as_str());
    assert_eq!(sla.body[0]["tasks"][0]["sla"]["status"], "on_track");
    let keys = api.get("/api/keys/customer_id/C-1", WANG).await;
    assert_eq!(
        keys.body["instances"][0]["instance"],
        instance.as_str(),
        "{}",
        keys.text
    );
    assert!(!keys.body["history"].as_array().unwrap().is_empty());
    problem(
        &api.get("/api/keys/order_id/O-1", WANG).await,
        StatusCode::NOT_FOUND,
        "UnknownKey",
    );
    // no definition receives this message
    let a = api
        .post(
            "/api/messages/fault_status",
            WANG,
            json!({ "variables": {} }),
        )
        .await;
    assert!(a.status.is_client_error(), "{}", a.text);
    assert_eq!(a.content_type, "application/problem+json");
    let report = api.get("/api/reports?process=repair", WANG).await;
    assert_eq!(report.status, StatusCode::OK, "{}", report.text);
    assert!(
        report.body.is_object() || report.body.is_array(),
        "{}",
        report.text
    );
    let heat = api
        .get("/api/processes/repair/heatmap?metric=breach-rate", WANG)
        .await;
    assert!(heat.text.contains("<svg"), "{}", heat.text);
    problem(
        &api.get("/api/processes/repair/heatmap?metric=nope", WANG)
            .await,
        StatusCode::BAD_REQUEST,
        "UnknownMetric",
    );
    // A report of a process the store does not hold is the caller's mistake (schemathesis
    // found it answered 503, as if the store were down).
    for process in ["nope", ""] {
        problem(
            &api.get(&format!("/api/reports?process={process}"), WANG)
                .await,
            StatusCode::NOT_FOUND,
            "UnknownProcess",
        );
    }
    let people = api.get("/api/people", WANG).await;
    assert!(
        people
            .body
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == "xiao")
    );
}

#[tokio::test]
async fn over_capacity_is_503_with_retry_after() {
    let api = api_with(Limits {
        max_in_flight: 0,
        ..Limits::default()
    });
    let req = Request::get("/api/me")
        .header(header::AUTHORIZATION, format!("Bearer {WANG}"))
        .body(Body::empty())
        .unwrap();
    let resp = api.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
}

#[tokio::test]
async fn the_console_is_served() {
    let api = api();
    let page = api.call("GET", "/", None, None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text.contains("procflow"));
    assert!(
        api.call("GET", "/app.js", None, None)
            .await
            .text
            .contains("fetch(")
    );
}

/// Every route the router has is in the OpenAPI document, and every path of the document is
/// a route (each answers something other than "no route").
#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routes() {
    let api = api();
    let doc = api.call("GET", "/openapi.json", None, None).await;
    assert_eq!(doc.status, StatusCode::OK);
    let mut documented = BTreeSet::new();
    for (path, item) in doc.body["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    let routed: BTreeSet<(String, String)> = procflow::server::routes()
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
        .collect();
    assert_eq!(documented, routed);
    for (method, path) in &routed {
        let concrete = path
            .replace("{task}", "i1.t0")
            .replace("{id}", "x")
            .replace("{name}", "x")
            .replace("{key}", "x")
            .replace("{value}", "x");
        let a = api
            .call(&method.to_uppercase(), &concrete, Some(WANG), None)
            .await;
        assert_ne!(a.body["kind"], "NoRoute", "{method} {path} is not routed");
        assert_ne!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(!a.status.is_server_error(), "{method} {path}: {}", a.text);
    }
}
