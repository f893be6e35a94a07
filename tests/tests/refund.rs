//! A refund through the whole mesh: an order enrolled in a stub LMS, refunded
//! in Stripe (its signed `charge.refunded` webhook to the gateway), is
//! deactivated in the LMS (REVOKED), and the purchase is listed as refunded in
//! `/buyList` — all one trace, from the webhook request to the LMS call and
//! the purchase update; on embedded storage and on Postgres + Redis. (The
//! REST `:refund` route is the quickstart's.)

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use commerce_mesh::Component;
use gateway::webhooks::signature::sign;
use kit::auth::Secret;
use kit::bus::EventBus;
use kit::shutdown::Shutdown;
use kit::telemetry::TelemetryConfig;
use mesh_tests::collector::Collector;
use mesh_tests::orders::course_run_order;
use mesh_tests::storage::Storage;
use proto::commerce::fulfillment::v1 as pb;
use proto::commerce::fulfillment::v1::fulfillment_service_client::FulfillmentServiceClient;
use serde_json::json;

const GUARD: Duration = Duration::from_secs(30);
const TRACE_ID: &str = "5bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "10f067aa0ba902b7";

/// Waits (on the bus's blocking read) for the event `event_id` on `stream`.
async fn event(bus: &dyn EventBus, stream: &str, event_id: &str) {
    let group = format!("refund-test-{}", uuid::Uuid::new_v4().simple());
    bus.ensure_group(stream, &group).await.unwrap();
    tokio::time::timeout(GUARD, async {
        loop {
            let read = bus.read(stream, &group, "t", 500, Duration::from_secs(1)).await.unwrap();
            if read.iter().any(|d| d.event_id == event_id) {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{event_id} on {stream}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stripe_refund_is_revoked_and_listed_as_refunded_in_one_trace_on_embedded_storage() {
    a_stripe_refund_is_revoked_and_listed_as_refunded_in_one_trace(Storage::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stripe_refund_is_revoked_and_listed_as_refunded_in_one_trace_on_postgres_and_redis() {
    a_stripe_refund_is_revoked_and_listed_as_refunded_in_one_trace(Storage::PostgresAndRedis).await;
}

async fn a_stripe_refund_is_revoked_and_listed_as_refunded_in_one_trace(storage: Storage) {
    // Unique per run: Redis keeps its streams between runs.
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let (number, username, event_id) = (format!("EDX-R-{run}"), format!("ada-{run}"), format!("evt_{run}"));
    let lms_user_id = (u64::from_str_radix(run, 16).unwrap() % 1_000_000_000 + 1).to_string();
    let mut collector = Collector::start().await.expect("collector");
    let telemetry = kit::telemetry::init_with_components(
        &TelemetryConfig {
            otlp_endpoint: Some(collector.endpoint().to_string()),
            service_name: "refund-test".into(),
            ..Default::default()
        },
        Component::span_components(),
    )
    .expect("telemetry");
    let lms = mesh_tests::lms_stub::enrolling().await;

    let data = tempfile::tempdir().expect("tempdir");
    let mut config = commerce_mesh::MeshConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
    config.use_ephemeral_ports();
    config.fulfillment.settings.lms.url = lms.uri();
    config.gateway.http.webhooks.stripe.signing_secrets = vec![Secret::new("whsec_refund_test".into())];
    let _database = storage.configure(&mut config).await;
    let mesh = commerce_mesh::start(config.clone(), Shutdown::new()).await.expect("mesh starts");
    for component in [Component::Fulfillment, Component::PurchaseHistory] {
        mesh_tests::health::wait_serving(&mesh.grpc_url(component), GUARD).await.expect("ready");
    }
    let scopes = ["fulfillment:write", "fulfillment:read", "purchases:read"].map(String::from).to_vec();
    let token = commerce_mesh::dev_tokens::mint(&config, "support", scopes, Duration::from_secs(300)).expect("token");
    let bus = kit::bus::open(config.redis_url.as_deref(), &data.path().join("events.db")).expect("event bus");

    let mut order = course_run_order(&number, "");
    order.learner =
        Some(pb::Learner { lms_user_id: lms_user_id.clone(), lms_username: username.clone(), ..Default::default() });
    order.line_items[0].price =
        Some(proto::commerce::r#type::v1::Money { currency_code: "USD".into(), amount: "149.00".into() });
    let mut fulfillment = FulfillmentServiceClient::new(mesh.grpc_channel(Component::Fulfillment));
    let id =
        fulfillment.fulfill_order(order).await.expect("accepted").into_inner().fulfillments[0].fulfillment_id.clone();
    event(&*bus, proto::streams::FULFILLMENTS, &format!("fulfillment-completed:{id}")).await;

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let gateway = mesh.url(Component::Gateway);
    // Refunded in full in Stripe: the whole order.
    let charge_refunded = serde_json::to_vec(&json!({
        "id": event_id,
        "type": "charge.refunded",
        "data": {"object": {"amount": 14900, "amount_refunded": 14900, "currency": "usd", "metadata": {"order_number": number}}}
    }))
    .unwrap();
    let signed_at = chrono::Utc::now().timestamp();
    let refunded = http
        .post(format!("{gateway}/v1/webhooks/stripe"))
        .header("Stripe-Signature", sign("whsec_refund_test", signed_at, &charge_refunded))
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .body(charge_refunded)
        .send()
        .await
        .unwrap();
    assert_eq!(refunded.status(), 200);
    let answer: serde_json::Value = refunded.json().await.unwrap();
    assert_eq!(answer["fulfillments"][0]["state"], "FULFILLMENT_STATE_REVOKING", "{answer}");
    assert_eq!(answer["created"], true);

    event(&*bus, proto::streams::FULFILLMENTS, &format!("fulfillment-revoked:{id}")).await;
    let job = mesh_tests::orders::fulfillment(&mut fulfillment, &id).await.unwrap();
    assert_eq!(job.state, pb::FulfillmentState::Revoked as i32);
    let calls = lms.received_requests().await.unwrap();
    let deactivations: Vec<serde_json::Value> = calls
        .iter()
        .filter(|r| r.url.path() == "/api/enrollment/v1/enrollment")
        .map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).unwrap())
        .filter(|body| body["is_active"] == json!(false))
        .collect();
    assert_eq!(deactivations.len(), 1, "the learner unenrolled once");
    assert_eq!(deactivations[0]["user"], username.as_str());

    // PurchaseHistory's span for the refund closes the trace: once it is exported, the purchase is marked.
    let flushing = tokio::task::spawn_blocking(move || {
        telemetry.force_flush();
        telemetry
    });
    let telemetry = flushing.await.expect("flush");
    let spans = collector
        .wait_until(GUARD, |spans| spans.iter().any(|s| s.trace_id == TRACE_ID && s.name == "purchase refunded"))
        .await;
    let traced = |name: &str| {
        spans
            .iter()
            .find(|s| s.trace_id == TRACE_ID && s.name == name)
            .unwrap_or_else(|| panic!("{name} in the refund's trace"))
    };
    let request = traced("POST /v1/webhooks/stripe");
    assert_eq!(request.parent_span_id, CALLER_SPAN, "the gateway continues the caller's trace");
    let revocation = traced("fulfillment revocation");
    let unenroll = traced("POST /api/enrollment/v1/enrollment");
    assert_eq!(unenroll.parent_span_id, revocation.span_id, "the LMS call is the revocation's");
    traced("purchase refunded");

    let listed = http.get(format!("{gateway}/buyList/{username}")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(listed.status(), 200);
    let listed: serde_json::Value = listed.json().await.unwrap();
    let listed = listed.as_array().expect("a bare JSON array");
    assert_eq!(listed.len(), 1, "the purchase is kept: {listed:?}");
    assert_eq!(listed[0]["purchase_id"], format!("fulfillment:{id}"));
    assert_eq!(listed[0]["status"], "PURCHASE_STATUS_REFUNDED");
    assert_eq!(listed[0]["refund"]["refunded_amount"]["amount"], "149.00");
    assert_eq!(listed[0]["refund"]["source"], "stripe");
    assert!(listed[0]["refund"]["reason"].as_str().is_some_and(|r| r.contains(&event_id)), "{listed:?}");
    let hidden = http
        .get(format!("{gateway}/v1/purchases?username={username}&hide_refunded=true"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let hidden: serde_json::Value = hidden.json().await.unwrap();
    assert!(hidden["purchases"].as_array().is_none_or(|p| p.is_empty()), "{hidden}");

    mesh.stop().await.expect("clean stop");
    tokio::task::spawn_blocking(move || drop(telemetry)).await.unwrap();
}
