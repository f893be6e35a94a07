//! Stripe's `charge.refunded` webhook through the whole mesh, on embedded
//! storage and on Postgres + Redis: only a request signed with a configured
//! secret, within the tolerance, over the exact body, refunds anything; every
//! refused one (and a replay) is checked to have changed nothing in
//! Fulfillment's database.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::sync::Arc;
use std::time::Duration;

use commerce_mesh::{Component, MeshConfig, RunningMesh};
use fulfillment::store::{FulfillmentJob, Store, Transition};
use gateway::webhooks::signature::sign;
use kit::auth::Secret;
use kit::bus::EventBus;
use kit::shutdown::Shutdown;
use kit::testing::TestDatabase;
use mesh_tests::storage::Storage;
use proto::commerce::fulfillment::v1 as pb;
use proto::commerce::fulfillment::v1::fulfillment_service_client::FulfillmentServiceClient;
use serde_json::{Value, json};
use wiremock::MockServer;

const GUARD: Duration = Duration::from_secs(30);
const OLD_SECRET: &str = "whsec_old_0123456789";
const NEW_SECRET: &str = "whsec_new_0123456789";

struct Fixture {
    mesh: RunningMesh,
    http: reqwest::Client,
    webhook: String,
    store: Arc<dyn Store>,
    bus: Arc<dyn EventBus>,
    fulfillment: FulfillmentServiceClient<kit::client::TracedChannel>,
    _lms: MockServer,
    _data: tempfile::TempDir,
    _database: Option<TestDatabase>,
}

async fn start(storage: Storage) -> Fixture {
    let lms = mesh_tests::lms_stub::enrolling().await;
    let data = tempfile::tempdir().unwrap();
    let mut config = MeshConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
    config.use_ephemeral_ports();
    config.fulfillment.settings.lms.url = lms.uri();
    // Both secrets, as while one is rotated.
    config.gateway.http.webhooks.stripe.signing_secrets =
        vec![Secret::new(NEW_SECRET.into()), Secret::new(OLD_SECRET.into())];
    let database = storage.configure(&mut config).await;
    let mesh = commerce_mesh::start(config.clone(), Shutdown::new()).await.expect("mesh starts");
    mesh_tests::health::wait_serving(&mesh.grpc_url(Component::Fulfillment), GUARD).await.expect("ready");
    let db = kit::db::Database::open(&config.database(Component::Fulfillment).unwrap()).expect("database");
    let bus = kit::bus::open(config.redis_url.as_deref(), &data.path().join("events.db")).expect("bus");
    let fulfillment = FulfillmentServiceClient::new(mesh.grpc_channel(Component::Fulfillment));
    Fixture {
        webhook: format!("{}/v1/webhooks/stripe", mesh.url(Component::Gateway)),
        mesh,
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        store: fulfillment::store::for_database(&db),
        bus,
        fulfillment,
        _lms: lms,
        _data: data,
        _database: database,
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A `charge.refunded` event for `order_number`: `refunded` of 298.00 USD, the lines named.
fn charge_refunded(event_id: &str, order_number: &str, refunded: i64, line_item_ids: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": event_id,
        "object": "event",
        "type": "charge.refunded",
        "data": {"object": {
            "id": "ch_1", "object": "charge", "amount": 29800, "amount_refunded": refunded, "currency": "usd",
            "metadata": {"order_number": order_number, "line_item_ids": line_item_ids},
            "refunds": {"object": "list", "data": [{"id": "re_1", "reason": "requested_by_customer"}]}
        }}
    }))
    .unwrap()
}

impl Fixture {
    /// Posts `body` with `signature` (or none); answers the status and the JSON body.
    async fn deliver(&self, body: &[u8], signature: Option<String>) -> (u16, Value) {
        let mut request = self.http.post(&self.webhook).header("content-type", "application/json").body(body.to_vec());
        if let Some(signature) = signature {
            request = request.header("Stripe-Signature", signature);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    /// Every job of the order and its transitions, as stored.
    async fn stored(&self, ids: &[String]) -> Vec<(FulfillmentJob, Vec<Transition>)> {
        let mut stored = Vec::new();
        for id in ids {
            stored.push((self.store.get(id).await.unwrap().unwrap(), self.store.transitions(id).await.unwrap()));
        }
        stored
    }

    /// Waits (on the bus's blocking read) for the event `event_id` on the fulfillments stream.
    async fn event(&self, event_id: &str) {
        let group = format!("webhook-test-{}", uuid::Uuid::new_v4().simple());
        self.bus.ensure_group(proto::streams::FULFILLMENTS, &group).await.unwrap();
        tokio::time::timeout(GUARD, async {
            loop {
                let read = self.bus.read(proto::streams::FULFILLMENTS, &group, "t", 500, Duration::from_secs(1)).await;
                if read.unwrap().iter().any(|d| d.event_id == event_id) {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{event_id} published"));
    }
}

async fn only_a_signed_fresh_exact_delivery_refunds_and_a_replay_changes_nothing(storage: Storage) {
    let f = start(storage).await;
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let number = format!("EDX-W-{run}");
    let mut order = mesh_tests::orders::course_run_order(&number, "");
    order.learner = Some(pb::Learner { lms_user_id: "4242".into(), lms_username: "ada".into(), ..Default::default() });
    order.line_items[0].line_item_id = "l1".into();
    order.line_items[0].price =
        Some(proto::commerce::r#type::v1::Money { currency_code: "USD".into(), amount: "149.00".into() });
    let mut second = order.line_items[0].clone();
    second.line_item_id = "l2".into();
    order.line_items.push(second);
    let accepted = f.fulfillment.clone().fulfill_order(order).await.unwrap().into_inner();
    let ids: Vec<String> = accepted.fulfillments.iter().map(|j| j.fulfillment_id.clone()).collect();
    for id in &ids {
        f.event(&format!("fulfillment-completed:{id}")).await;
    }
    let before = f.stored(&ids).await;
    assert!(before.iter().all(|(job, _)| job.refund.is_none()));

    let event_id = format!("evt_{run}");
    let body = charge_refunded(&event_id, &number, 14900, "l1");
    let refusals: Vec<(&str, Option<String>, Vec<u8>, u16)> = vec![
        ("missing header", None, body.clone(), 400),
        ("wrong secret", Some(sign("whsec_someone_else", now(), &body)), body.clone(), 401),
        ("tampered body", Some(sign(NEW_SECRET, now(), &body)), charge_refunded(&event_id, &number, 29800, "l1"), 401),
        ("stale timestamp", Some(sign(NEW_SECRET, now() - 3600, &body)), body.clone(), 400),
        ("malformed header", Some("v1=deadbeef".into()), body.clone(), 400),
    ];
    for (case, signature, sent, expected) in refusals {
        let (status, answer) = f.deliver(&sent, signature).await;
        assert_eq!(status, expected, "{case}: {answer}");
        assert!(answer["message"].as_str().is_some_and(|m| m.contains("Stripe-Signature")), "{case}: {answer}");
        assert_eq!(f.stored(&ids).await, before, "{case}: nothing changed");
    }

    // Signed with the secret being rotated out: still accepted. A partial refund of l1 by the amount.
    let (status, answer) = f.deliver(&body, Some(sign(OLD_SECRET, now(), &body))).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["created"], true);
    assert_eq!(answer["fulfillments"][0]["line_item_id"], "l1");
    f.event(&format!("fulfillment-revoked:{}", ids[0])).await;
    let after = f.stored(&ids).await;
    let refund = after[0].0.refund.as_ref().expect("l1 refunded");
    assert_eq!(refund.terms.amount().amount_text(), "149.00");
    assert_eq!(refund.terms.source().as_str(), "stripe");
    assert!(refund.terms.reason().as_str().contains(&event_id), "{:?}", refund.terms.reason());
    assert_eq!(after[0].0.state, fulfillment::domain::JobState::Revoked);
    assert_eq!(after[1], before[1], "l2 untouched");

    // The same event again (Stripe retries), signed with the new secret: a repeat, nothing changes.
    let (status, answer) = f.deliver(&body, Some(sign(NEW_SECRET, now(), &body))).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["created"], false, "{answer}");
    assert_eq!(f.stored(&ids).await, after, "a replayed event changes nothing");

    // Another event refunding l1 again cannot change its refund: acknowledged, not applied, so
    // Stripe does not retry it for days; nothing changes.
    let again = charge_refunded(&format!("evt_again_{run}"), &number, 14900, "l1");
    let (status, answer) = f.deliver(&again, Some(sign(NEW_SECRET, now(), &again))).await;
    assert_eq!((status, answer["applied"].as_bool()), (200, Some(false)), "{answer}");
    assert!(answer["reason"].as_str().is_some_and(|r| r.contains("l1")), "{answer}");
    assert_eq!(f.stored(&ids).await, after, "nothing changed");

    // Another event type is acknowledged and ignored.
    let other =
        serde_json::to_vec(&json!({"id": "evt_other", "type": "charge.succeeded", "data": {"object": {}}})).unwrap();
    let (status, answer) = f.deliver(&other, Some(sign(NEW_SECRET, now(), &other))).await;
    assert_eq!((status, answer["ignored"].as_str()), (200, Some("charge.succeeded")), "{answer}");
    // A partial refund that names no line can never be applied: acknowledged, naming the field.
    let unnamed = charge_refunded("evt_unnamed", &number, 100, "");
    let (status, answer) = f.deliver(&unnamed, Some(sign(NEW_SECRET, now(), &unnamed))).await;
    assert_eq!((status, answer["applied"].as_bool()), (200, Some(false)), "{answer}");
    assert!(answer["reason"].as_str().is_some_and(|r| r.contains("line_item_ids")), "{answer}");
    assert_eq!(f.stored(&ids).await, after, "nothing changed");

    f.mesh.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stripe_webhook_on_embedded_storage() {
    only_a_signed_fresh_exact_delivery_refunds_and_a_replay_changes_nothing(Storage::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stripe_webhook_on_postgres_and_redis() {
    only_a_signed_fresh_exact_delivery_refunds_and_a_replay_changes_nothing(Storage::PostgresAndRedis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_signing_secret_the_webhook_is_not_there() {
    let data = tempfile::tempdir().unwrap();
    let mut config = MeshConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
    config.use_ephemeral_ports();
    let mesh = commerce_mesh::start(config, Shutdown::new()).await.expect("mesh starts");
    let body = charge_refunded("evt_1", "EDX-1", 29800, "");
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{}/v1/webhooks/stripe", mesh.url(Component::Gateway)))
        .header("Stripe-Signature", sign(NEW_SECRET, now(), &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    mesh.stop().await.expect("clean stop");
}
