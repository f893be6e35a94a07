//! Dead letters inside the whole mesh, through the gateway's REST bindings and
//! over gRPC, on embedded storage and on Postgres + Redis: a poison retirement
//! on the customers stream is dead-lettered by both of its consumers
//! (Fulfillment and PurchaseHistory), each lists its own with the payload
//! decoded, a replay is handled again (and refused again: a new dead letter),
//! a discard removes it and keeps who, when and why; bad streams, ids and
//! reasons are 400 naming the field; the operators' scopes are required.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use commerce_mesh::{Component, MeshConfig};
use kit::shutdown::Shutdown;
use mesh_tests::storage::Storage;
use prost::Message;
use proto::commerce::events::v1::{CustomerRetired, EventEnvelope, event_envelope::Payload};
use proto::commerce::ops::v1 as ops;
use proto::commerce::purchases::v1::purchase_history_dead_letter_service_client::PurchaseHistoryDeadLetterServiceClient;
use serde_json::{Value, json};

const GUARD: Duration = Duration::from_secs(30);

struct Rest {
    base: String,
    client: reqwest::Client,
    token: String,
}

impl Rest {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.send_as(&self.token, method, path, body).await
    }

    async fn send_as(&self, token: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The dead letters `component` lists on `stream`, once there are `count`.
    async fn wait_for(&self, component: &str, stream: &str, count: usize) -> Vec<Value> {
        let deadline = std::time::Instant::now() + GUARD;
        loop {
            let (status, body) =
                self.send(reqwest::Method::GET, &format!("/v1/{component}/dead-letters?stream={stream}"), None).await;
            assert_eq!(status, 200, "{body}");
            let letters = body["dead_letters"].as_array().cloned().unwrap_or_default();
            if letters.len() >= count {
                return letters;
            }
            assert!(std::time::Instant::now() < deadline, "{component} never listed {count} dead letters: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An RFC 3339 time of a JSON answer.
fn time(value: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(value.as_str().unwrap_or_default()).unwrap_or_else(|e| panic!("{value}: {e}"))
}

fn violated_fields(body: &Value) -> Vec<String> {
    body["details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|detail| detail["field_violations"].as_array().cloned().unwrap_or_default())
        .map(|violation| violation["field"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn poison_retirements_are_listed_replayed_and_discarded(storage: Storage) {
    let data = tempfile::tempdir().unwrap();
    let mut config = MeshConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
    config.use_ephemeral_ports();
    let _database = storage.configure(&mut config).await;
    // Streams of this test's own: Redis is shared by every test.
    let customers = format!("test.customers.{}", uuid::Uuid::new_v4().simple());
    config.fulfillment.settings.customers_stream = customers.clone();
    config.purchase_history.settings.customers_stream = customers.clone();
    let mesh = commerce_mesh::start(config.clone(), Shutdown::new()).await.expect("mesh starts");
    for component in [Component::Fulfillment, Component::PurchaseHistory, Component::CustomerIdentity] {
        mesh_tests::health::wait_serving(&mesh.grpc_url(component), GUARD).await.expect("ready");
    }
    let token = |subject: &str, scopes: Vec<String>| {
        commerce_mesh::dev_tokens::mint(&config, subject, scopes, Duration::from_secs(600)).unwrap()
    };
    let rest = Rest {
        base: mesh.url(Component::Gateway),
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
        token: token("ops-tester", vec!["ops:read".into(), "ops:write".into()]),
    };

    // A retirement no consumer can read: an LMS user id that is not one.
    let envelope = EventEnvelope {
        event_id: "customer-retired:poison".into(),
        event_type: "commerce.events.v1.CustomerRetired".into(),
        payload: Some(Payload::CustomerRetired(CustomerRetired {
            customer_id: "cust-poison".into(),
            lms_user_id: "not-a-number".into(),
            retired_username: "retired_user_x".into(),
            retired_at: Some(prost_types::Timestamp { seconds: 1_763_000_000, nanos: 0 }),
        })),
        ..Default::default()
    };
    let bus = kit::bus::open(config.redis_url.as_deref(), &data.path().join("events.db")).unwrap();
    assert!(bus.publish(&customers, &envelope.event_id, &envelope.encode_to_vec()).await.unwrap());

    // Each consumer dead-letters it; each component lists its own, decoded.
    let fulfillment = rest.wait_for("fulfillment", &customers, 1).await;
    let history = rest.wait_for("purchase-history", &customers, 1).await;
    assert_eq!(fulfillment.len(), 1, "only Fulfillment's own: {fulfillment:?}");
    let letter = &fulfillment[0];
    assert_eq!(letter["group"], "fulfillment");
    assert_eq!(history[0]["group"], "purchase-history");
    assert_eq!(letter["stream"], customers.as_str());
    assert_eq!(letter["event_id"], "customer-retired:poison");
    assert_eq!(letter["delivery_count"], "1");
    assert!(letter["reason"].as_str().unwrap().contains("lms_user_id"), "{letter}");
    assert_eq!(letter["event_type"], "commerce.events.v1.CustomerRetired");
    assert_eq!(letter["payload"]["customer_retired"]["customer_id"], "cust-poison", "{letter}");
    assert_eq!(letter["payload_error"], "");
    assert!(time(&letter["first_seen"]) <= time(&letter["dead_lettered_at"]), "{letter}");

    // The same over gRPC, straight to PurchaseHistory.
    let mut grpc = PurchaseHistoryDeadLetterServiceClient::new(mesh.grpc_channel(Component::PurchaseHistory));
    let listed = grpc
        .list_dead_letters(ops::ListDeadLettersRequest {
            stream: customers.clone(),
            reason: "lms_user_id".into(),
            ..Default::default()
        })
        .await
        .expect("listed")
        .into_inner();
    assert_eq!(listed.dead_letters.len(), 1);
    assert_eq!(listed.dead_letters[0].id, history[0]["id"].as_str().unwrap());
    assert_eq!(listed.dead_letters[0].delivery_count, Some(1));

    // Bad input names its field and changes nothing.
    let (status, body) =
        rest.send(reqwest::Method::GET, "/v1/fulfillment/dead-letters?stream=commerce.purchases.v1", None).await;
    assert_eq!((status, violated_fields(&body)), (400, vec!["stream".to_string()]), "{body}");
    let id = letter["id"].as_str().unwrap().to_string();
    let discard = |ids: Value, reason: &str| json!({ "stream": customers, "ids": ids, "reason": reason });
    let (status, body) =
        rest.send(reqwest::Method::POST, "/v1/fulfillment/dead-letters:discard", Some(discard(json!([id]), ""))).await;
    assert_eq!((status, violated_fields(&body)), (400, vec!["reason".to_string()]), "{body}");
    let (status, body) = rest
        .send(
            reqwest::Method::POST,
            "/v1/fulfillment/dead-letters:replay",
            Some(json!({ "stream": customers, "ids": ["x y"] })),
        )
        .await;
    assert_eq!((status, violated_fields(&body)), (400, vec!["ids[0]".to_string()]), "{body}");
    // Only operators: a token without the ops scopes is refused.
    let reader = token("support", vec!["purchases:read".into(), "fulfillment:read".into()]);
    let (status, _) = rest
        .send_as(&reader, reqwest::Method::GET, &format!("/v1/fulfillment/dead-letters?stream={customers}"), None)
        .await;
    assert_eq!(status, 403);
    // Another component's dead letter is not Fulfillment's to discard.
    let theirs = history[0]["id"].clone();
    let (status, body) = rest
        .send(reqwest::Method::POST, "/v1/fulfillment/dead-letters:discard", Some(discard(json!([theirs]), "not ours")))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcomes"][0]["found"], false, "{body}");
    assert_eq!(rest.wait_for("purchase-history", &customers, 1).await.len(), 1, "still there");
    // Nor Fulfillment's to replay.
    let (status, body) = rest
        .send(
            reqwest::Method::POST,
            "/v1/fulfillment/dead-letters:replay",
            Some(json!({ "stream": customers, "ids": [theirs] })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcomes"][0]["found"], false, "{body}");
    assert_eq!(body["outcomes"][0]["new_entry_id"], "", "{body}");
    let still = rest.wait_for("purchase-history", &customers, 1).await;
    assert_eq!((still.len(), &still[0]["id"]), (1, &theirs), "still there");

    // Replayed: Fulfillment handles it again, refuses it again: a new dead letter.
    let (status, body) = rest
        .send(
            reqwest::Method::POST,
            "/v1/fulfillment/dead-letters:replay",
            Some(json!({ "stream": customers, "ids": [id] })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcomes"][0]["found"], true, "{body}");
    assert_ne!(body["outcomes"][0]["new_entry_id"], "");
    let deadline = std::time::Instant::now() + GUARD;
    let again = loop {
        let letters = rest.wait_for("fulfillment", &customers, 1).await;
        if letters.iter().any(|l| l["id"] != id.as_str()) {
            break letters;
        }
        assert!(std::time::Instant::now() < deadline, "never dead-lettered again: {letters:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(again.len(), 1, "the replayed one is gone, the new one is there: {again:?}");
    assert_eq!(again[0]["event_id"], "customer-retired:poison");
    assert!(time(&again[0]["dead_lettered_at"]) >= time(&letter["dead_lettered_at"]));

    // Discarded with a reason: gone, and kept with who, when and why.
    let new_id = again[0]["id"].clone();
    let (status, body) = rest
        .send(
            reqwest::Method::POST,
            "/v1/fulfillment/dead-letters:discard",
            Some(discard(json!([new_id, "12345"]), "the learner was never real")),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcomes"][0]["found"], true);
    assert_eq!(body["outcomes"][1]["found"], false, "an unknown id is reported: {body}");
    let (_, body) =
        rest.send(reqwest::Method::GET, &format!("/v1/fulfillment/dead-letters?stream={customers}"), None).await;
    assert_eq!(body["dead_letters"], json!([]), "{body}");
    let (_, body) = rest
        .send(reqwest::Method::GET, &format!("/v1/fulfillment/dead-letters?stream={customers}&discarded=true"), None)
        .await;
    let kept = &body["dead_letters"][0];
    assert_eq!(kept["id"], new_id, "{body}");
    assert_eq!(kept["discard"]["discarded_by"], "ops-tester");
    assert_eq!(kept["discard"]["reason"], "the learner was never real");
    assert!(kept["discard"]["discarded_at"].as_str().is_some_and(|at| !at.is_empty()), "{body}");
    mesh.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_through_rest_and_grpc_on_embedded_storage() {
    poison_retirements_are_listed_replayed_and_discarded(Storage::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_through_rest_and_grpc_on_postgres_and_redis() {
    poison_retirements_are_listed_replayed_and_discarded(Storage::PostgresAndRedis).await;
}
