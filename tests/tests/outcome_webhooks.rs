//! Outcomes reach the order system, through the whole mesh: an order placed
//! over REST at the gateway, one line enrolled by a stub LMS and one refused
//! by it, produces a signed SUCCEEDED and a signed FAILED webhook at the
//! order's source system (a stub receiver), and a `FulfillmentFailed` event on
//! `commerce.fulfillments.v1` — on embedded storage and on Postgres + Redis.
//! The signature is checked with the gateway's Stripe verifier, an
//! implementation of the same scheme that shares no code with the sender.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use commerce_mesh::Component;
use fulfillment::webhook::WebhookTarget;
use kit::auth::Secret;
use kit::shutdown::Shutdown;
use mesh_tests::storage::Storage;
use prost::Message;
use proto::commerce::events::v1::{EventEnvelope, event_envelope::Payload};
use serde_json::{Value, json};
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const GUARD: Duration = Duration::from_secs(60);
const SECRET: &str = "whsec_order_system_0123456789";
const ENROLLED_RUN: &str = "course-v1:edX+DemoX+2025_T1";
const REFUSED_RUN: &str = "course-v1:edX+Closed+2024_T1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_placed_at_the_gateway_reaches_the_order_system_signed_on_embedded_storage() {
    an_order_placed_at_the_gateway_reaches_the_order_system_signed(Storage::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_placed_at_the_gateway_reaches_the_order_system_signed_on_postgres_and_redis() {
    an_order_placed_at_the_gateway_reaches_the_order_system_signed(Storage::PostgresAndRedis).await;
}

/// A stub LMS that enrolls in [`ENROLLED_RUN`] and refuses [`REFUSED_RUN`] with a 400.
async fn choosy_lms() -> MockServer {
    let lms = mesh_tests::lms_stub::issuing_tokens().await;
    for (run, status) in [(ENROLLED_RUN, 200), (REFUSED_RUN, 400)] {
        Mock::given(method("POST"))
            .and(path("/api/enrollment/v1/enrollment"))
            .and(body_partial_json(json!({"course_details": {"course_id": run}})))
            .respond_with(ResponseTemplate::new(status).set_body_json(json!({"message": "enrollment closed"})))
            .mount(&lms)
            .await;
    }
    lms
}

async fn an_order_placed_at_the_gateway_reaches_the_order_system_signed(storage: Storage) {
    // Unique per run: Redis keeps its streams between runs.
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let number = format!("EDX-O-{run}");
    let lms = choosy_lms().await;
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/commerce/line-states"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&receiver)
        .await;

    let data = tempfile::tempdir().expect("tempdir");
    let mut config = commerce_mesh::MeshConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
    config.use_ephemeral_ports();
    config.fulfillment.settings.lms.url = lms.uri();
    config.fulfillment.settings.webhooks.insert(
        "commercetools".into(),
        WebhookTarget { url: format!("{}/commerce/line-states", receiver.uri()), secret: Secret::new(SECRET.into()) },
    );
    let _database = storage.configure(&mut config).await;
    let mesh = commerce_mesh::start(config.clone(), Shutdown::new()).await.expect("mesh starts");
    mesh_tests::health::wait_serving(&mesh.grpc_url(Component::Fulfillment), GUARD).await.expect("ready");
    let scopes = ["fulfillment:write", "fulfillment:read"].map(String::from).to_vec();
    let token = commerce_mesh::dev_tokens::mint(&config, "order-system", scopes, Duration::from_secs(300)).unwrap();
    let bus = kit::bus::open(config.redis_url.as_deref(), &data.path().join("events.db")).expect("event bus");
    let group = format!("outcomes-test-{run}");
    bus.ensure_group(proto::streams::FULFILLMENTS, &group).await.unwrap();

    let line = |id: &str, run: &str| {
        json!({
            "line_item_id": id,
            "course_run": {"course_run_key": run, "mode": "verified"},
            "title": "A course",
            "price": {"currency_code": "USD", "amount": "49.00"},
        })
    };
    let order = json!({
        "order_id": format!("ct-{run}"),
        "date_placed": (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339(),
        "source_system": "commercetools",
        "learner": {"lms_user_id": "4242", "lms_username": format!("ada-{run}")},
        "line_items": [line("l1", ENROLLED_RUN), line("l2", REFUSED_RUN)],
    });
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let gateway = mesh.url(Component::Gateway);
    let ready = tokio::time::timeout(GUARD, async {
        while !http.get(format!("{gateway}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if ready.is_err() {
        let said = match http.get(format!("{gateway}/readyz")).send().await {
            Ok(answer) => answer.text().await.unwrap_or_default(),
            Err(error) => error.to_string(),
        };
        panic!("the gateway is not ready within {GUARD:?}: {said}");
    }
    let accepted = http
        .post(format!("{gateway}/v1/orders/{number}:fulfill"))
        .bearer_auth(&token)
        .json(&order)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200);
    let accepted: Value = accepted.json().await.unwrap();
    let id_of = |line: &str| -> String {
        let lines = accepted["fulfillments"].as_array().unwrap();
        let found = lines.iter().find(|f| f["line_item_id"] == line).unwrap_or_else(|| panic!("{accepted}"));
        found["fulfillment_id"].as_str().unwrap().to_owned()
    };
    let (enrolled, refused) = (id_of("l1"), id_of("l2"));

    // Both outcomes arrive at the order system (polled with a deadline; the mesh works in the background).
    let requests = tokio::time::timeout(GUARD, async {
        loop {
            let got = receiver.received_requests().await.unwrap_or_default();
            if got.len() >= 2 {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("two outcome webhooks");
    assert_eq!(requests.len(), 2, "one per line");
    let now = chrono::Utc::now().timestamp();
    let mut bodies: Vec<Value> = requests
        .iter()
        .map(|request| {
            let header = request.headers.get("x-commerce-mesh-signature").expect("signed").to_str().unwrap();
            gateway::webhooks::signature::verify(Some(header), &request.body, &[SECRET], now, 300)
                .unwrap_or_else(|e| panic!("the signature verifies: {e}"));
            assert!(
                gateway::webhooks::signature::verify(Some(header), &request.body, &["whsec_someone_else"], now, 300)
                    .is_err()
            );
            serde_json::from_slice(&request.body).unwrap()
        })
        .collect();
    bodies.sort_by_key(|body| body["line_item_id"].as_str().unwrap().to_owned());
    assert_eq!(
        (&bodies[0]["state"], &bodies[0]["fulfillment_id"], &bodies[0]["order_number"], &bodies[0]["source_system"]),
        (&json!("SUCCEEDED"), &json!(enrolled), &json!(number), &json!("commercetools"))
    );
    assert_eq!(bodies[0]["event_id"], format!("fulfillment-completed:{enrolled}"));
    assert_eq!((&bodies[1]["state"], &bodies[1]["fulfillment_id"]), (&json!("FAILED"), &json!(refused)));
    assert_eq!((&bodies[1]["error"]["kind"], &bodies[1]["error"]["lms_status"]), (&json!("REJECTED"), &json!(400)));

    // The refused line is announced on the fulfillments stream as FulfillmentFailed, under the webhook's id.
    let failed_id = bodies[1]["event_id"].as_str().unwrap().to_owned();
    let failed = tokio::time::timeout(GUARD, async {
        loop {
            let read = bus.read(proto::streams::FULFILLMENTS, &group, "t", 500, Duration::from_secs(1)).await.unwrap();
            if let Some(delivery) = read.into_iter().find(|d| d.event_id == failed_id) {
                return delivery;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{failed_id} on the fulfillments stream"));
    let envelope = EventEnvelope::decode(failed.payload.as_slice()).unwrap();
    assert_eq!(envelope.event_type, "commerce.events.v1.FulfillmentFailed");
    let Some(Payload::FulfillmentFailed(event)) = envelope.payload else { panic!("{envelope:?}") };
    assert_eq!((event.fulfillment_id.as_str(), event.order_number.as_str()), (refused.as_str(), number.as_str()));
    assert_eq!(event.error.unwrap().lms_status, 400);

    // Fulfillment's metrics on the admin port count both deliveries (once each attempt is recorded).
    let delivered = |metrics: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with("fulfillment_webhook_deliveries_total") && l.contains(r#"outcome="delivered""#))
            .map(str::to_owned)
    };
    tokio::time::timeout(GUARD, async {
        loop {
            let metrics = http.get(format!("{}/metrics", mesh.admin_url())).send().await.unwrap().text().await.unwrap();
            if delivered(&metrics).is_some_and(|line| line.ends_with(" 2")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("fulfillment_webhook_deliveries_total{outcome=\"delivered\"} 2");
    mesh.stop().await.expect("clean stop");
}
