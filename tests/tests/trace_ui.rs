//! `up --with-trace-ui` in process: the mesh's own spans reach the in-memory
//! trace store, and the Jaeger query API beside the UI answers with one trace
//! per REST order holding spans of the gateway and all four services, each
//! component a process (service) of its own, on embedded storage and on
//! Postgres + Redis.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::OnceLock;
use std::time::Duration;

use commerce_mesh::trace_ui::{TraceStore, TraceUiConfig};
use commerce_mesh::{Component, RunningMesh};
use kit::shutdown::Shutdown;
use kit::telemetry::TelemetryConfig;
use kit::testing::TestDatabase;
use mesh_tests::quickstart::{CATALOG_EVENTS, COURSE_RUN, MODE, QuickstartRun, SOURCE, mesh_config};
use mesh_tests::storage::Storage;
use reqwest::Method;
use serde_json::{Value, json};

/// Guards against a hang, not a timing assertion: generous on purpose.
const GUARD: Duration = Duration::from_secs(60);
const FULFILL_ROUTE: &str = "POST /v1/orders/{order_number}:fulfill";

/// The store this process's telemetry feeds, made once per process (`cargo
/// test` runs both storages in one process; telemetry is installed once),
/// with telemetry kept alive on a runtime of its own.
fn trace_store() -> &'static TraceStore {
    static STORE: OnceLock<(TraceStore, kit::telemetry::Telemetry)> = OnceLock::new();
    &STORE
        .get_or_init(|| {
            std::thread::spawn(|| {
                let runtime = Box::leak(Box::new(
                    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap(),
                ));
                runtime.block_on(async {
                    let store = TraceStore::new(&TraceUiConfig::default());
                    // As `up --with-trace-ui` does: each component's spans under its own service name.
                    let telemetry = commerce_mesh::trace_ui::init_telemetry(
                        &TelemetryConfig { service_name: "trace-ui-test".into(), ..Default::default() },
                        Component::span_components(),
                        Some(&store),
                    )
                    .expect("telemetry");
                    (store, telemetry)
                })
            })
            .join()
            .expect("the trace store starts")
        })
        .0
}

struct Mesh {
    mesh: RunningMesh,
    base: String,
    ui: String,
    client: reqwest::Client,
    token: String,
    _data: tempfile::TempDir,
    _database: Option<TestDatabase>,
}

impl Mesh {
    async fn start(storage: Storage) -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut config = mesh_config(data.path());
        config.trace_ui.enabled = true;
        let database = storage.configure(&mut config).await;
        let mesh = commerce_mesh::start_with_trace_store(config.clone(), Shutdown::new(), Some(trace_store().clone()))
            .await
            .expect("mesh starts");
        for component in Component::SERVICES {
            mesh_tests::health::wait_serving(&mesh.grpc_url(component), GUARD).await.expect("ready");
        }
        let token = commerce_mesh::dev_tokens::mint(
            &config,
            "trace-ui",
            commerce_mesh::dev_tokens::every_scope(),
            Duration::from_secs(600),
        )
        .expect("a development token");
        let base = mesh.url(Component::Gateway);
        let ui = mesh.trace_ui_url().expect("the trace UI runs");
        assert!(mesh.banner().contains(&ui), "up prints where the trace UI is: {}", mesh.banner());
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        Self { mesh, base, ui, client, token, _data: data, _database: database }
    }

    /// Sends a request to the gateway; answers the status and the JSON body.
    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Repeats a GET every 50 ms until `done` holds for its 200 answer; gives up after [`GUARD`].
    async fn poll(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        tokio::time::timeout(GUARD, async {
            loop {
                let (status, body) = self.send(Method::GET, path, None).await;
                assert_eq!(status, 200, "GET {path}: {body}");
                if done(&body) {
                    return body;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("GET {path} did not reach the expected state within {GUARD:?}"))
    }

    /// A GET of the trace UI: status, content type and body.
    async fn ui_get(&self, path: &str) -> (u16, String, String) {
        let response = self.client.get(format!("{}{path}", self.ui)).send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (status, content_type, response.text().await.unwrap())
    }

    /// A JSON answer of the UI's query API.
    async fn api(&self, path: &str) -> Value {
        let (status, _, body) = self.ui_get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
    }
}

/// Jaeger's JSON for one trace, read for assertions.
struct JaegerTrace<'a>(&'a Value);

impl JaegerTrace<'_> {
    fn spans(&self) -> &Vec<Value> {
        self.0["spans"].as_array().expect("spans")
    }

    /// The service name of a span's process.
    fn service<'s>(&'s self, span: &'s Value) -> &'s str {
        let process = span["processID"].as_str().expect("a process id");
        self.0["processes"][process]["serviceName"].as_str().expect("the process has a service name")
    }

    fn services(&self) -> BTreeSet<&str> {
        self.spans().iter().map(|span| self.service(span)).collect()
    }

    fn tag<'s>(span: &'s Value, key: &str) -> Option<&'s Value> {
        span["tags"].as_array()?.iter().find(|tag| tag["key"] == key).map(|tag| &tag["value"])
    }

    /// The spans of `service` named `operation`.
    fn find(&self, service: &str, operation: &str) -> Vec<&Value> {
        self.spans().iter().filter(|s| self.service(s) == service && s["operationName"] == operation).collect()
    }

    /// The span this one is a child of, if any.
    fn parent_id(span: &Value) -> Option<&str> {
        span["references"].as_array()?.iter().find(|r| r["refType"] == "CHILD_OF")?["spanID"].as_str()
    }
}

/// The order's trace in the query API, once it holds spans of every service in `wanted`.
async fn order_trace(mesh: &Mesh, order_number: &str, wanted: &[&str]) -> Value {
    let search = reqwest::Url::parse_with_params(
        &format!("{}/api/traces", mesh.ui),
        [("service", "gateway"), ("operation", FULFILL_ROUTE), ("limit", "20")],
    )
    .unwrap();
    let search = format!("{}?{}", search.path(), search.query().unwrap_or_default());
    let path = format!("/v1/orders/{order_number}:fulfill");
    let mut last = Value::Null;
    let found = tokio::time::timeout(GUARD, async {
        loop {
            last = mesh.api(&search).await;
            let trace = last["data"].as_array().into_iter().flatten().find(|trace| {
                JaegerTrace(trace).spans().iter().any(|span| JaegerTrace::tag(span, "url.path") == Some(&json!(path)))
            });
            if let Some(trace) = trace
                && wanted.iter().all(|service| JaegerTrace(trace).services().contains(service))
            {
                return trace.clone();
            }
            // The store takes spans every half second; nothing signals it here.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    found
        .unwrap_or_else(|_| panic!("no trace of {path} with spans of {wanted:?} within {GUARD:?}; last answer: {last}"))
}

async fn an_order_is_one_trace_in_the_trace_ui(storage: Storage) {
    let mesh = Mesh::start(storage).await;
    let ids = QuickstartRun::new();
    let QuickstartRun { run, customer_id, username, lms_user_id } = &ids;
    let order_number = format!("TUI-{run}");

    // The catalog, the customer and the order, over REST as the quickstart has them.
    for (i, event) in CATALOG_EVENTS.into_iter().enumerate() {
        let body = ids.catalog_event(i, event);
        let (status, answer) = mesh.send(Method::POST, &format!("/v1/sources/{SOURCE}/events"), Some(body)).await;
        assert_eq!(status, 200, "{event}: {answer}");
    }
    let link = json!({"lms_user_id": lms_user_id, "lms_username": username, "email": "ada@example.org"});
    let (status, linked) = mesh.send(Method::PUT, &format!("/v1/customers/{customer_id}"), Some(link)).await;
    assert_eq!(status, 200, "{linked}");
    let order = json!({
        "date_placed": (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339(),
        "learner": {"customer_id": customer_id},
        "line_items": [{
            "line_item_id": "1",
            "course_run": {"course_run_key": COURSE_RUN, "mode": MODE},
            "title": "Leading Strategic Change",
            "price": {"currency_code": "USD", "amount": "2650.00"},
        }],
    });
    let (status, accepted) = mesh.send(Method::POST, &format!("/v1/orders/{order_number}:fulfill"), Some(order)).await;
    assert_eq!(status, 200, "{accepted}");
    let fulfillments = mesh
        .poll(&format!("/v1/orders/{order_number}/fulfillments"), |body| {
            matches!(
                body["fulfillments"][0]["state"].as_str(),
                Some("FULFILLMENT_STATE_SUCCEEDED" | "FULFILLMENT_STATE_FAILED")
            )
        })
        .await;
    assert_eq!(fulfillments["fulfillments"][0]["state"], "FULFILLMENT_STATE_SUCCEEDED", "{fulfillments}");
    mesh.poll(&format!("/buyList/{username}"), |body| body.as_array().is_some_and(|a| !a.is_empty())).await;

    // One trace, found by searching the gateway's traces as the UI does.
    let services = ["gateway", "fulfillment", "customer-identity", "catalog-ingest", "purchase-history", "dev-lms"];
    let found = order_trace(&mesh, &order_number, &services).await;
    let trace = JaegerTrace(&found);
    let trace_id = found["traceID"].as_str().expect("a trace id").to_string();
    assert_eq!(trace_id.len(), 32, "{found}");
    for (service, operation) in [
        ("gateway", FULFILL_ROUTE),
        ("fulfillment", "commerce.fulfillment.v1.FulfillmentService/FulfillOrder"),
        ("customer-identity", "commerce.identity.v1.CustomerIdentityService/GetCustomer"),
        ("catalog-ingest", "commerce.catalog.v1.CatalogIngestService/GetCourseRun"),
        ("fulfillment", "fulfillment attempt"),
        ("dev-lms", "POST /api/enrollment/v1/enrollment"),
        ("purchase-history", "purchase stored"),
    ] {
        assert!(!trace.find(service, operation).is_empty(), "no {service} span {operation} in {found:#}");
    }
    // Each component is a process of its own: one per service name, not one for the whole mesh.
    let processes = found["processes"].as_object().expect("processes");
    let process_services: Vec<&str> = processes.values().filter_map(|p| p["serviceName"].as_str()).collect();
    let distinct: HashSet<&str> = process_services.iter().copied().collect();
    assert_eq!(distinct.len(), process_services.len(), "one process per service: {processes:#?}");
    assert!(services.iter().all(|s| distinct.contains(s)), "{processes:#?}");
    for process in processes.values().filter(|p| services.iter().any(|s| p["serviceName"] == *s)) {
        let instance = process["tags"].as_array().into_iter().flatten().find(|t| t["key"] == "service.instance.id");
        let instance = instance.and_then(|t| t["value"].as_str()).expect("a service.instance.id");
        let service = process["serviceName"].as_str().unwrap();
        assert!(instance.ends_with(&format!("/{service}")), "{service}'s instance is its own: {instance}");
    }
    // One tree: the gateway's request is the root, every other span's parent is in the trace.
    let ids: HashSet<&str> = trace.spans().iter().filter_map(|s| s["spanID"].as_str()).collect();
    let roots: Vec<&Value> = trace.spans().iter().filter(|s| JaegerTrace::parent_id(s).is_none()).collect();
    assert_eq!(roots.len(), 1, "one root: {roots:#?}");
    assert_eq!((trace.service(roots[0]), roots[0]["operationName"].as_str()), ("gateway", Some(FULFILL_ROUTE)));
    let orphans: Vec<&Value> =
        trace.spans().iter().filter(|s| JaegerTrace::parent_id(s).is_some_and(|p| !ids.contains(p))).collect();
    assert!(orphans.is_empty(), "spans whose parent is not in the trace: {orphans:#?}");
    let by_id: HashMap<&str, &Value> = trace.spans().iter().map(|s| (s["spanID"].as_str().unwrap(), s)).collect();
    let stored = trace.find("purchase-history", "purchase stored")[0];
    let attempt = by_id[JaegerTrace::parent_id(stored).expect("a parent")];
    assert_eq!(attempt["operationName"], "fulfillment attempt", "the purchase is stored under the attempt");

    // The same trace by its id, as the UI's /trace/<id> page asks for it.
    let by_id_answer = mesh.api(&format!("/api/traces/{trace_id}")).await;
    assert_eq!(by_id_answer["data"][0]["traceID"], trace_id.as_str());
    assert_eq!(by_id_answer["data"][0]["spans"].as_array().map(Vec::len), Some(trace.spans().len()));
    let services_answer = mesh.api("/api/services").await;
    assert!(
        services_answer["data"].as_array().is_some_and(|s| s.contains(&json!("gateway"))),
        "the gateway starts traces: {services_answer}"
    );
    let operations = mesh.api("/api/services/gateway/operations").await;
    assert!(operations["data"].as_array().is_some_and(|o| o.contains(&json!(FULFILL_ROUTE))), "{operations}");
    let (status, _, body) = mesh.ui_get(&format!("/api/traces/{}", "0".repeat(32))).await;
    assert_eq!(status, 404, "an unknown trace: {body}");

    // The UI's pages: the Jaeger UI, a page (200) whatever the route.
    for page in [format!("/trace/{trace_id}"), "/search?service=gateway".into(), "/".into()] {
        let (status, content_type, body) = mesh.ui_get(&page).await;
        assert_eq!(status, 200, "{page}");
        assert!(content_type.starts_with("text/html"), "{page}: {content_type}");
        assert!(body.contains("<title>Jaeger UI</title>"), "{page}: {body}");
    }

    mesh.mesh.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_one_trace_in_the_trace_ui_on_embedded_storage() {
    an_order_is_one_trace_in_the_trace_ui(Storage::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_one_trace_in_the_trace_ui_on_postgres_and_redis() {
    an_order_is_one_trace_in_the_trace_ui(Storage::PostgresAndRedis).await;
}
