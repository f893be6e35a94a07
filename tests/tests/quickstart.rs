//! The README quickstart, driven over REST through the gateway of the whole
//! mesh (with the development LMS), on embedded storage and on Postgres +
//! Redis: ingest a product from an example source, link a customer, place an
//! order, watch its fulfillment reach SUCCEEDED, list the purchase by username,
//! refund it and watch it reach REVOKED with the purchase marked refunded.
//! The spans an in-process OTLP collector receives show one trace per order:
//! gateway → Fulfillment → CustomerIdentity and CatalogIngest → LMS (HTTP) →
//! event bus → PurchaseHistory, and one per listing: gateway → PurchaseHistory
//! → CustomerIdentity.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::Duration;

use commerce_mesh::{Component, RunningMesh};
use kit::shutdown::Shutdown;
use kit::telemetry::{Telemetry, TelemetryConfig};
use kit::testing::TestDatabase;
use mesh_tests::collector::{CollectedSpan, Collector, one};
use mesh_tests::quickstart::{CATALOG_EVENTS, COURSE_RUN, MODE, QuickstartRun, SOURCE, mesh_config};
use mesh_tests::storage::Storage;
use reqwest::Method;
use serde_json::{Value, json};

/// Guards against a hang, not a timing assertion: generous on purpose.
const GUARD: Duration = Duration::from_secs(60);
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// The collector and the process-wide telemetry feeding it, shared by every
/// test of this process (`cargo test` runs both modes in one process; telemetry
/// can be installed once).
struct TraceSink {
    collector: tokio::sync::Mutex<Collector>,
    telemetry: Telemetry,
}

/// Starts the sink once per process, on a runtime of its own: the collector's
/// server and the exporter's channel must outlive any one test's runtime.
fn trace_sink() -> &'static TraceSink {
    static SINK: OnceLock<TraceSink> = OnceLock::new();
    SINK.get_or_init(|| {
        // A fresh thread: a runtime cannot be blocked on from inside a test's runtime.
        std::thread::spawn(|| {
            let runtime = Box::leak(Box::new(
                tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap(),
            ));
            runtime.block_on(async {
                let collector = Collector::start().await.expect("collector");
                // As `up` does: one process, each component's spans under its own service name.
                let telemetry = kit::telemetry::init_with_components(
                    &TelemetryConfig {
                        otlp_endpoint: Some(collector.endpoint().to_string()),
                        service_name: "quickstart-test".into(),
                        ..Default::default()
                    },
                    Component::span_components(),
                )
                .expect("telemetry");
                TraceSink { collector: tokio::sync::Mutex::new(collector), telemetry }
            })
        })
        .join()
        .expect("trace sink starts")
    })
}

impl TraceSink {
    /// Exports every finished span, then waits until the spans of `trace_id`
    /// satisfy `done` (or the guard passes); answers the spans of that trace.
    async fn trace(&'static self, trace_id: &str, done: impl Fn(&[CollectedSpan]) -> bool) -> Vec<CollectedSpan> {
        tokio::task::spawn_blocking(|| self.telemetry.force_flush()).await.expect("flush");
        let of_trace = |spans: &[CollectedSpan]| -> Vec<CollectedSpan> {
            spans.iter().filter(|s| s.trace_id == trace_id).cloned().collect()
        };
        let spans = self.collector.lock().await.wait_until(GUARD, |spans| done(&of_trace(spans))).await;
        of_trace(&spans)
    }
}

/// The mesh, up as the quickstart has it, and a REST client holding a development token.
struct Quickstart {
    mesh: RunningMesh,
    base: String,
    lms_url: String,
    client: reqwest::Client,
    token: String,
    _data: tempfile::TempDir,
    _database: Option<TestDatabase>,
}

impl Quickstart {
    async fn start(storage: Storage) -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut config = mesh_config(data.path());
        let database = storage.configure(&mut config).await;
        let mesh = commerce_mesh::start(config.clone(), Shutdown::new()).await.expect("mesh starts");
        for component in Component::SERVICES {
            mesh_tests::health::wait_serving(&mesh.grpc_url(component), GUARD).await.expect("ready");
        }
        let token = commerce_mesh::dev_tokens::mint(
            &config,
            "quickstart",
            commerce_mesh::dev_tokens::every_scope(),
            Duration::from_secs(600),
        )
        .expect("a development token");
        let base = mesh.url(Component::Gateway);
        let lms_url = mesh.dev_lms_url().expect("the dev LMS runs");
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        Self { mesh, base, lms_url, client, token, _data: data, _database: database }
    }

    /// Sends a request to the gateway; answers the status and the JSON body.
    async fn send(&self, method: Method, path: &str, body: Option<Value>, traceparent: Option<&str>) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Repeats a GET every 50 ms until `done` holds for its 200 answer; gives up after [`GUARD`].
    async fn poll(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        tokio::time::timeout(GUARD, async {
            loop {
                let (status, body) = self.send(Method::GET, path, None, None).await;
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
}

/// A random W3C trace id and caller span id, and the `traceparent` carrying them (sampled).
fn caller_context() -> (String, String, String) {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let span_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
    let traceparent = format!("00-{trace_id}-{span_id}-01");
    (trace_id, span_id, traceparent)
}

/// The spans of one service with a name and kind.
fn find<'a>(spans: &'a [CollectedSpan], service: &str, name: &str, kind: i32) -> Vec<&'a CollectedSpan> {
    spans.iter().filter(|s| s.service_name == service && s.name == name && s.kind == kind).collect()
}

/// Whether the trace holds a span of each `(service, name, kind)`.
fn has_all(spans: &[CollectedSpan], wanted: &[(&str, &str, i32)]) -> bool {
    wanted.iter().all(|(service, name, kind)| !find(spans, service, name, *kind).is_empty())
}

/// The parent of `span`, within `spans`.
fn parent<'a>(spans: &'a [CollectedSpan], span: &CollectedSpan) -> &'a CollectedSpan {
    spans
        .iter()
        .find(|s| s.span_id == span.parent_span_id)
        .unwrap_or_else(|| panic!("the parent of {} ({}) is not in the trace", span.name, span.service_name))
}

/// One connected tree: exactly one span is the caller's child, and every other
/// span's parent is in the trace.
fn assert_one_tree(spans: &[CollectedSpan], caller_span: &str) {
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let roots: Vec<_> = spans.iter().filter(|s| s.parent_span_id == caller_span).collect();
    assert_eq!(roots.len(), 1, "one span continues the caller's: {roots:#?}");
    let orphans: Vec<_> =
        spans.iter().filter(|s| s.parent_span_id != caller_span && !ids.contains(s.parent_span_id.as_str())).collect();
    assert!(orphans.is_empty(), "spans whose parent is not in the trace: {orphans:#?}");
}

async fn the_quickstart(storage: Storage) {
    let sink = trace_sink();
    let quickstart = Quickstart::start(storage).await;
    let ids = QuickstartRun::new();
    let QuickstartRun { run, customer_id, username, lms_user_id } = &ids;
    let order_number = format!("QS-{run}");

    // 1. The example source's events, in dependency order, each applied.
    for (i, event) in CATALOG_EVENTS.into_iter().enumerate() {
        let body = ids.catalog_event(i, event);
        let (status, answer) =
            quickstart.send(Method::POST, &format!("/v1/sources/{SOURCE}/events"), Some(body), None).await;
        assert_eq!(status, 200, "{event}: {answer}");
        assert_eq!(answer["ingestion"]["state"], "INGESTION_STATE_APPLIED", "{event}: {answer}");
        assert_eq!(answer["ingestion"]["event_name"], event);
    }
    let (status, course_run) = quickstart.send(Method::GET, &format!("/v1/course-runs/{COURSE_RUN}"), None, None).await;
    assert_eq!(status, 200, "{course_run}");
    assert_eq!(course_run["course_run"]["seats"][0]["mode"], MODE, "{course_run}");

    // 2. The customer, linked to an LMS user.
    let (status, linked) = quickstart
        .send(
            Method::PUT,
            &format!("/v1/customers/{customer_id}"),
            Some(json!({"lms_user_id": lms_user_id, "lms_username": username, "email": "ada@example.org"})),
            None,
        )
        .await;
    assert_eq!(status, 200, "{linked}");
    assert_eq!(linked["created"], true);

    // 3. The order, in a trace the caller started.
    let (trace_id, caller_span, traceparent) = caller_context();
    let date_placed = (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();
    let order = json!({
        "order_id": format!("ct-{run}"),
        "date_placed": date_placed,
        "source_system": "quickstart",
        "learner": {"customer_id": customer_id},
        "line_items": [{
            "line_item_id": "1",
            "course_run": {"course_run_key": COURSE_RUN, "mode": MODE},
            "title": "Leading Strategic Change",
            "price": {"currency_code": "USD", "amount": "2650.00"},
        }],
    });
    let (status, accepted) = quickstart
        .send(Method::POST, &format!("/v1/orders/{order_number}:fulfill"), Some(order), Some(&traceparent))
        .await;
    assert_eq!(status, 200, "{accepted}");
    assert_eq!(accepted["created"], true);
    let fulfillment_id = accepted["fulfillments"][0]["fulfillment_id"].as_str().expect("a fulfillment id").to_string();

    // 4. The worker enrolls the learner in the dev LMS in the background.
    let fulfillments = quickstart
        .poll(&format!("/v1/orders/{order_number}/fulfillments"), |body| {
            matches!(
                body["fulfillments"][0]["state"].as_str(),
                Some("FULFILLMENT_STATE_SUCCEEDED" | "FULFILLMENT_STATE_FAILED")
            )
        })
        .await;
    let fulfillment = &fulfillments["fulfillments"][0];
    assert_eq!(fulfillment["state"], "FULFILLMENT_STATE_SUCCEEDED", "{fulfillments}");
    assert_eq!(fulfillment["fulfillment_id"], fulfillment_id.as_str());
    assert_eq!(fulfillment["learner"]["lms_username"], username.as_str(), "resolved through CustomerIdentity");
    let enrollments: Value = quickstart
        .client
        .get(format!("{}/dev/enrollments", quickstart.lms_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let enrollments = enrollments.as_array().expect("a JSON array");
    assert_eq!(enrollments.len(), 1, "{enrollments:?}");
    assert_eq!(enrollments[0]["user"], username.as_str());
    assert_eq!(enrollments[0]["mode"], MODE);
    assert_eq!(enrollments[0]["course_details"]["course_id"], COURSE_RUN);

    // 5. PurchaseHistory stores the purchase from the stream; both listings by username show it.
    let listed =
        quickstart.poll(&format!("/buyList/{username}"), |body| body.as_array().is_some_and(|a| !a.is_empty())).await;
    let listed = listed.as_array().expect("a bare JSON array");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["purchase_id"], format!("fulfillment:{fulfillment_id}"));
    assert_eq!(listed[0]["order_number"], order_number.as_str());
    assert_eq!(listed[0]["product_key"], COURSE_RUN);
    assert_eq!(listed[0]["price"]["currency_code"], "USD");
    assert_eq!(listed[0]["price"]["amount"], "2650.00");
    assert_eq!(listed[0]["lms_user_id"], lms_user_id.as_str());
    let (list_trace_id, list_caller_span, list_traceparent) = caller_context();
    let (status, page) = quickstart
        .send(Method::GET, &format!("/v1/purchases?username={username}"), None, Some(&list_traceparent))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["purchases"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(page["purchases"][0]["order_number"], order_number.as_str());
    assert_eq!(page["purchases"][0]["price"]["amount"], "2650.00");

    // 6. One trace for the order, from the caller's span to the stored purchase.
    let fulfill_route = "/v1/orders/{order_number}:fulfill";
    let fulfill_gateway = format!("POST {fulfill_route}");
    let enroll = "POST /api/enrollment/v1/enrollment";
    let fulfill_rpc = "commerce.fulfillment.v1.FulfillmentService/FulfillOrder";
    let get_customer = "commerce.identity.v1.CustomerIdentityService/GetCustomer";
    let get_course_run = "commerce.catalog.v1.CatalogIngestService/GetCourseRun";
    let wanted = [
        ("gateway", fulfill_gateway.as_str(), SERVER),
        ("gateway", fulfill_rpc, CLIENT),
        ("fulfillment", fulfill_rpc, SERVER),
        ("customer-identity", get_customer, SERVER),
        ("catalog-ingest", get_course_run, SERVER),
        ("fulfillment", enroll, CLIENT),
        ("dev-lms", enroll, SERVER),
        ("purchase-history", "purchase stored", 5),
    ];
    let spans = sink.trace(&trace_id, |spans| has_all(spans, &wanted)).await;
    for (service, name, kind) in wanted {
        assert!(!find(&spans, service, name, kind).is_empty(), "no {service} span {name} (kind {kind}) in {spans:#?}");
    }
    assert_one_tree(&spans, &caller_span);
    let gateway = one(&spans, &fulfill_gateway, SERVER);
    assert_eq!(gateway.service_name, "gateway");
    assert_eq!(gateway.parent_span_id, caller_span, "the gateway continues the caller's trace");
    assert_eq!(gateway.attribute("http.request.method"), Some("POST"));
    assert_eq!(gateway.attribute("http.route"), Some(fulfill_route));
    assert_eq!(gateway.attribute("http.response.status_code"), Some("200"));
    let in_fulfillment = one(&spans, fulfill_rpc, SERVER);
    let to_fulfillment = parent(&spans, in_fulfillment);
    assert_eq!((to_fulfillment.name.as_str(), to_fulfillment.kind), (fulfill_rpc, CLIENT));
    assert_eq!(to_fulfillment.parent_span_id, gateway.span_id, "the gateway's call is a child of its request");
    assert_eq!(in_fulfillment.attribute("rpc.system"), Some("grpc"));
    assert_eq!(in_fulfillment.attribute("rpc.service"), Some("commerce.fulfillment.v1.FulfillmentService"));
    assert_eq!(in_fulfillment.attribute("rpc.method"), Some("FulfillOrder"));
    assert_eq!(in_fulfillment.attribute("rpc.grpc.status_code"), Some("0"));
    // Fulfillment's lookups happen while it handles the request.
    for rpc in [get_customer, get_course_run] {
        let server = one(&spans, rpc, SERVER);
        let client = parent(&spans, server);
        assert_eq!((client.service_name.as_str(), client.kind), ("fulfillment", CLIENT), "{rpc}");
        assert_eq!(client.parent_span_id, in_fulfillment.span_id, "{rpc} is called by FulfillOrder");
    }
    // The worker's LMS call, and the dev LMS continuing it over HTTP.
    let to_lms = one(&spans, enroll, CLIENT);
    let in_lms = one(&spans, enroll, SERVER);
    assert_eq!(in_lms.parent_span_id, to_lms.span_id, "the traceparent header reached the LMS");
    assert_eq!(to_lms.attribute("http.request.method"), Some("POST"));
    assert_eq!(to_lms.attribute("http.response.status_code"), in_lms.attribute("http.response.status_code"));
    assert_eq!(in_lms.attribute("http.route"), Some("/api/enrollment/v1/enrollment"));
    assert!(
        in_lms.attribute("http.response.status_code").is_some_and(|code| code.starts_with('2')),
        "the enrollment succeeded: {in_lms:?}"
    );
    // The purchase stored from the stream message, under the attempt that succeeded.
    let stored = find(&spans, "purchase-history", "purchase stored", 5);
    let attempt = parent(&spans, stored[0]);
    assert_eq!((attempt.service_name.as_str(), attempt.name.as_str()), ("fulfillment", "fulfillment attempt"));
    assert_eq!(parent(&spans, to_lms).span_id, attempt.span_id, "the LMS call is the attempt's");

    // 7. The listing by username is a trace of its own: PurchaseHistory asks CustomerIdentity.
    let list_purchases = "commerce.purchases.v1.PurchaseHistoryService/ListPurchases";
    let lookup = "commerce.identity.v1.CustomerIdentityService/LookupCustomer";
    let wanted = [
        ("gateway", "GET /v1/purchases", SERVER),
        ("purchase-history", list_purchases, SERVER),
        ("purchase-history", lookup, CLIENT),
        ("customer-identity", lookup, SERVER),
    ];
    let spans = sink.trace(&list_trace_id, |spans| has_all(spans, &wanted)).await;
    for (service, name, kind) in wanted {
        assert!(!find(&spans, service, name, kind).is_empty(), "no {service} span {name} (kind {kind}) in {spans:#?}");
    }
    assert_one_tree(&spans, &list_caller_span);
    let listing = one(&spans, "GET /v1/purchases", SERVER);
    assert_eq!(listing.parent_span_id, list_caller_span);
    assert_eq!(listing.attribute("http.route"), Some("/v1/purchases"));
    let in_history = one(&spans, list_purchases, SERVER);
    assert_eq!(parent(&spans, parent(&spans, in_history)).span_id, listing.span_id, "gateway → PurchaseHistory");
    let to_identity = one(&spans, lookup, CLIENT);
    let in_identity = one(&spans, lookup, SERVER);
    assert_eq!(to_identity.parent_span_id, in_history.span_id, "ListPurchases calls LookupCustomer");
    assert_eq!(in_identity.parent_span_id, to_identity.span_id);
    assert_eq!(in_identity.attribute("rpc.service"), Some("commerce.identity.v1.CustomerIdentityService"));
    assert_eq!(in_identity.attribute("rpc.grpc.status_code"), Some("0"));

    // 8. The refund, in a trace of its own: the learner is unenrolled, the purchase kept and marked refunded.
    let (refund_trace_id, refund_caller_span, refund_traceparent) = caller_context();
    let refund = json!({
        "lines": [{"line_item_id": "1", "refunded_amount": {"currency_code": "USD", "amount": "2650.00"}}],
        "reason": "requested_by_customer",
        "source": "support",
    });
    let (status, refunded) = quickstart
        .send(Method::POST, &format!("/v1/orders/{order_number}:refund"), Some(refund), Some(&refund_traceparent))
        .await;
    assert_eq!(status, 200, "{refunded}");
    assert_eq!(refunded["fulfillments"][0]["state"], "FULFILLMENT_STATE_REVOKING", "{refunded}");
    let fulfillments = quickstart
        .poll(&format!("/v1/orders/{order_number}/fulfillments"), |body| {
            matches!(
                body["fulfillments"][0]["state"].as_str(),
                Some("FULFILLMENT_STATE_REVOKED" | "FULFILLMENT_STATE_REVOKE_FAILED")
            )
        })
        .await;
    assert_eq!(fulfillments["fulfillments"][0]["state"], "FULFILLMENT_STATE_REVOKED", "{fulfillments}");
    let enrollments: Value = quickstart
        .client
        .get(format!("{}/dev/enrollments", quickstart.lms_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(enrollments[0]["is_active"], false, "the dev LMS deactivated the enrollment: {enrollments}");
    let listed =
        quickstart.poll(&format!("/buyList/{username}"), |body| body[0]["status"] == "PURCHASE_STATUS_REFUNDED").await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "the purchase is kept: {listed}");
    assert_eq!(listed[0]["refund"]["refunded_amount"]["amount"], "2650.00");
    let refund_route = "POST /v1/orders/{order_number}:refund";
    let wanted = [
        ("gateway", refund_route, SERVER),
        ("fulfillment", "fulfillment revocation", 1),
        ("fulfillment", enroll, CLIENT),
        ("dev-lms", enroll, SERVER),
        ("purchase-history", "purchase refunded", 5),
    ];
    let spans = sink.trace(&refund_trace_id, |spans| has_all(spans, &wanted)).await;
    assert_one_tree(&spans, &refund_caller_span);
    let revocation = one(&spans, "fulfillment revocation", 1);
    assert_eq!(
        parent(&spans, one(&spans, enroll, CLIENT)).span_id,
        revocation.span_id,
        "the LMS call is the revocation's"
    );
    assert_eq!(one(&spans, refund_route, SERVER).parent_span_id, refund_caller_span);

    quickstart.mesh.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_works_with_one_trace_per_order_on_embedded_storage() {
    the_quickstart(Storage::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_works_with_one_trace_per_order_on_postgres_and_redis() {
    the_quickstart(Storage::PostgresAndRedis).await;
}
