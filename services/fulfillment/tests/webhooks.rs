//! Outcome webhooks within the service, on Postgres + Redis Streams and on
//! SQLite + the embedded log: a stub LMS and a stub receiver over real HTTP
//! (wiremock). The signature is checked here with an HMAC computed
//! independently of the service's code; the FAILED outcome's event is read off
//! the stream. Deliveries are driven one round at a time where the test is
//! about what each round does (so backoff needs no waiting), and by the
//! running sender where it is about the loop.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use fulfillment::webhook::WebhookTarget;
use fulfillment::webhook::store::DeliveryState;
use hmac::{Hmac, KeyInit, Mac};
use kit::db::Backend;
use prost::Message;
use proto::commerce::events::v1::{EventEnvelope, event_envelope::Payload};
use proto::commerce::fulfillment::v1 as pb;
use serde_json::{Value, json};
use sha2::Sha256;
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

mod common;
use common::*;

const SECRET: &str = "whsec_outcomes_0123456789abcdef";
const RECEIVER: &str = "/hooks/fulfillment";
const GUARD: Duration = Duration::from_secs(30);

/// The fixture with the `commercetools` webhook (the source system of `common::order`) pointed at `receiver`.
async fn with_webhook(backend: Backend, receiver: &MockServer, source_system: &str) -> Fixture {
    let url = format!("{}{RECEIVER}", receiver.uri());
    let source_system = source_system.to_owned();
    fixture_configured(backend, policy(), move |config| {
        config.webhooks.insert(source_system, WebhookTarget { url, secret: kit::auth::Secret::new(SECRET.into()) });
    })
    .await
}

/// The receiver answers `status`, `times` times.
async fn receiver_answers(receiver: &MockServer, status: u16, times: u64) {
    Mock::given(method("POST"))
        .and(path(RECEIVER))
        .respond_with(ResponseTemplate::new(status))
        .up_to_n_times(times)
        .mount(receiver)
        .await;
}

async fn received(receiver: &MockServer) -> Vec<Request> {
    receiver.received_requests().await.unwrap_or_default()
}

/// Waits (polling the receiver's log, with a deadline) until it got `n` requests.
async fn received_at_least(receiver: &MockServer, n: usize) -> Vec<Request> {
    tokio::time::timeout(GUARD, async {
        loop {
            let got = received(receiver).await;
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{n} webhook requests within {GUARD:?}"))
}

/// Checks the signature header the way a receiver would (HMAC-SHA256 of
/// "<t>.<body>" under the secret, hex) and answers the body.
fn verified(request: &Request) -> Value {
    let header = request.headers.get("x-commerce-mesh-signature").expect("signed").to_str().unwrap();
    let (t, v1) = header.split_once(',').unwrap();
    let t: i64 = t.strip_prefix("t=").unwrap().parse().unwrap();
    let v1 = v1.strip_prefix("v1=").unwrap();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&request.body);
    assert_eq!(hex::encode(mac.finalize().into_bytes()), v1, "the signature verifies");
    assert!((chrono::Utc::now().timestamp() - t).abs() < 300, "a fresh timestamp: {t}");
    assert_eq!(request.headers.get("content-type").unwrap(), "application/json");
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(request.headers.get("x-commerce-mesh-event-id").unwrap().to_str().unwrap(), body["event_id"]);
    body
}

async fn succeeded_and_failed_outcomes_reach_the_receiver_signed(backend: Backend) {
    let receiver = MockServer::start().await;
    receiver_answers(&receiver, 200, 10).await;
    let f = with_webhook(backend, &receiver, "commercetools").await;
    // The LMS enrolls l1 and refuses l2.
    Mock::given(method("POST"))
        .and(path(ENROLL))
        .and(body_partial_json(json!({"course_details": {"course_id": "course-v1:edX+DemoX+2025_T1"}})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"is_active": true})))
        .mount(&f.lms)
        .await;
    Mock::given(method("POST"))
        .and(path(ENROLL))
        .and(body_partial_json(json!({"course_details": {"course_id": "course-v1:edX+Gone+2025_T1"}})))
        .respond_with(ResponseTemplate::new(400).set_body_string(r#"{"message": "no such run for ada"}"#))
        .mount(&f.lms)
        .await;
    f.run_background();
    let number = order_number();
    let accepted = f
        .fulfill(order(
            &number,
            vec![
                course_run("l1", "course-v1:edX+DemoX+2025_T1", "verified"),
                course_run("l2", "course-v1:edX+Gone+2025_T1", "verified"),
            ],
        ))
        .await
        .unwrap();
    let (ok, refused) =
        (accepted.fulfillments[0].fulfillment_id.clone(), accepted.fulfillments[1].fulfillment_id.clone());

    let requests = received_at_least(&receiver, 2).await;
    let mut bodies: Vec<Value> = requests.iter().map(verified).collect();
    bodies.sort_by_key(|body| body["line_item_id"].as_str().unwrap().to_owned());
    let succeeded = &bodies[0];
    assert_eq!(succeeded["event_id"], format!("fulfillment-completed:{ok}"));
    assert_eq!(
        (&succeeded["fulfillment_id"], &succeeded["order_number"], &succeeded["order_id"]),
        (&json!(ok), &json!(number), &json!("ct-7f1c"))
    );
    assert_eq!((&succeeded["state"], &succeeded["source_system"]), (&json!("SUCCEEDED"), &json!("commercetools")));
    assert!(succeeded.get("error").is_none());
    assert!(chrono::DateTime::parse_from_rfc3339(succeeded["occurred_at"].as_str().unwrap()).is_ok());
    let failed = &bodies[1];
    assert_eq!((&failed["state"], &failed["line_item_id"]), (&json!("FAILED"), &json!("l2")));
    assert!(failed["event_id"].as_str().unwrap().starts_with(&format!("fulfillment-failed:{refused}:")));
    assert_eq!((&failed["error"]["kind"], &failed["error"]["lms_status"]), (&json!("REJECTED"), &json!(400)));
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(message.contains("no such run for <learner>"), "the username left out: {message}");

    // The FAILED line is announced on the fulfillments stream, and nothing of it on the purchases stream.
    let events = f.events_for(proto::streams::FULFILLMENTS, std::slice::from_ref(&refused), 1).await;
    assert_eq!(events.len(), 1, "one event for the refused line");
    let envelope = EventEnvelope::decode(events[0].payload.as_slice()).unwrap();
    assert_eq!(envelope.event_type, "commerce.events.v1.FulfillmentFailed");
    assert_eq!(events[0].event_id, failed["event_id"].as_str().unwrap(), "the webhook names the event");
    let Some(Payload::FulfillmentFailed(event)) = envelope.payload else { panic!("{envelope:?}") };
    assert_eq!((event.fulfillment_id.as_str(), event.line_item_id.as_str()), (refused.as_str(), "l2"));
    assert_eq!((event.lms_user_id.as_str(), event.source_system.as_str()), ("4242", "commercetools"));
    let error = event.error.unwrap();
    assert_eq!((error.kind.as_str(), error.lms_status), ("REJECTED", 400));
    assert_eq!(event.attempts, 1);
    let purchases = f.events_for(proto::streams::PURCHASES, &[ok.clone(), refused.clone()], 1).await;
    assert!(purchases.iter().all(|p| p.event_id.contains(&ok)), "no purchase for the refused line");

    // Recorded as delivered, once each, and counted.
    let outbox = f.fulfillment.webhook_sender().unwrap().outbox();
    for id in [&ok, &refused] {
        let rows = outbox.of_fulfillment(id).await.unwrap();
        assert_eq!(rows.len(), 1, "{id}");
        assert_eq!((rows[0].state, rows[0].attempts), (DeliveryState::Delivered, 1));
    }
    f.fulfillment.webhook_sender().unwrap().refresh_backlog(chrono::Utc::now()).await.unwrap();
    let text = f.metrics.encode();
    for line in [
        r#"fulfillment_webhook_deliveries_total{source_system="commercetools",outcome="delivered"} 2"#,
        r#"fulfillment_webhook_undelivered{source_system="commercetools"} 0"#,
        r#"fulfillment_webhook_oldest_undelivered_age_seconds{source_system="commercetools"} 0"#,
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    assert_eq!(received(&receiver).await.len(), 2, "each outcome sent once");
}

async fn a_receiver_answering_500_gets_the_outcome_again_until_it_takes_it(backend: Backend) {
    let receiver = MockServer::start().await;
    receiver_answers(&receiver, 500, 1).await;
    receiver_answers(&receiver, 200, 1).await;
    let f = with_webhook(backend, &receiver, "commercetools").await;
    lms_answers(&f, ENROLL, ResponseTemplate::new(200).set_body_json(json!({"is_active": true})), 1).await;
    let id = f.fulfill(one_line(&order_number())).await.unwrap().fulfillments[0].fulfillment_id.clone();
    f.attempt_at(now()).await;
    let sender = f.fulfillment.webhook_sender().unwrap();

    let first = now();
    assert_eq!(sender.deliver_due(first).await.unwrap(), 1);
    let rows = sender.outbox().of_fulfillment(&id).await.unwrap();
    assert_eq!((rows[0].state, rows[0].attempts), (DeliveryState::Pending, 1), "kept for another attempt");
    let (kind, status, _) = rows[0].last_error.clone().unwrap();
    assert_eq!((kind.as_str(), status), ("UNAVAILABLE", Some(500)));
    assert_eq!(sender.deliver_due(first).await.unwrap(), 0, "not due again before its backoff");

    // Its backoff is at most the first ceiling (2 s): an hour on, it is due.
    assert_eq!(sender.deliver_due(now() + secs(3600)).await.unwrap(), 1);
    let rows = sender.outbox().of_fulfillment(&id).await.unwrap();
    assert_eq!((rows[0].state, rows[0].attempts), (DeliveryState::Delivered, 2));
    let requests = received(&receiver).await;
    assert_eq!(requests.len(), 2);
    let (first_body, second_body) = (verified(&requests[0]), verified(&requests[1]));
    assert_eq!(first_body, second_body, "the same outcome, the same event id");
    let text = f.metrics.encode();
    for line in [
        r#"fulfillment_webhook_deliveries_total{source_system="commercetools",outcome="retry"} 1"#,
        r#"fulfillment_webhook_deliveries_total{source_system="commercetools",outcome="delivered"} 1"#,
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}

async fn a_receiver_refusing_with_400_is_given_up_without_holding_the_job(backend: Backend) {
    let receiver = MockServer::start().await;
    receiver_answers(&receiver, 400, 10).await;
    let f = with_webhook(backend, &receiver, "commercetools").await;
    lms_answers(&f, ENROLL, ResponseTemplate::new(200).set_body_json(json!({"is_active": true})), 1).await;
    let id = f.fulfill(one_line(&order_number())).await.unwrap().fulfillments[0].fulfillment_id.clone();
    f.attempt_at(now()).await;
    // The job's transition is committed before anything is sent.
    assert_eq!(f.get(&id).await.state, pb::FulfillmentState::Succeeded as i32);
    assert!(received(&receiver).await.is_empty());

    let sender = f.fulfillment.webhook_sender().unwrap();
    assert_eq!(sender.deliver_due(now()).await.unwrap(), 1);
    let rows = sender.outbox().of_fulfillment(&id).await.unwrap();
    assert_eq!((rows[0].state, rows[0].attempts), (DeliveryState::GaveUp, 1));
    let (kind, status, _) = rows[0].last_error.clone().unwrap();
    assert_eq!((kind.as_str(), status), ("REJECTED", Some(400)));
    assert_eq!(sender.deliver_due(now() + secs(86_400)).await.unwrap(), 0, "never again");
    assert_eq!(received(&receiver).await.len(), 1);
    assert_eq!(f.get(&id).await.state, pb::FulfillmentState::Succeeded as i32, "the job is as it was");
    let text = f.metrics.encode();
    let line = r#"fulfillment_webhook_deliveries_total{source_system="commercetools",outcome="gave_up"} 1"#;
    assert!(text.contains(line), "{line} in\n{text}");
}

async fn an_unreachable_receiver_is_retried_and_the_backlog_reported(backend: Backend) {
    // Nothing listens on port 9: every attempt is a connection failure. Receivers put tokens in query
    // strings: the error stored (and logged) must not carry the URL.
    let f = fixture_configured(backend, policy(), |config| {
        config.webhooks.insert(
            "CommerceTools".into(),
            WebhookTarget {
                url: "http://127.0.0.1:9/hooks?token=receiver-token-42".into(),
                secret: kit::auth::Secret::new(SECRET.into()),
            },
        );
    })
    .await;
    lms_answers(&f, ENROLL, ResponseTemplate::new(200).set_body_json(json!({"is_active": true})), 1).await;
    let id = f.fulfill(one_line(&order_number())).await.unwrap().fulfillments[0].fulfillment_id.clone();
    f.attempt_at(now()).await;
    assert_eq!(f.get(&id).await.state, pb::FulfillmentState::Succeeded as i32);
    let sender = f.fulfillment.webhook_sender().unwrap();
    assert_eq!(sender.deliver_due(now()).await.unwrap(), 1, "source systems compare without case");
    let rows = sender.outbox().of_fulfillment(&id).await.unwrap();
    assert_eq!((rows[0].state, rows[0].last_error.clone().unwrap().0.as_str()), (DeliveryState::Pending, "CONNECTION"));
    let message = rows[0].last_error.clone().unwrap().2;
    assert!(message.starts_with("could not reach the receiver"), "{message}");
    assert!(!message.contains("receiver-token-42") && !message.contains("/hooks"), "no URL: {message}");
    sender.refresh_backlog(chrono::Utc::now() + secs(60)).await.unwrap();
    let text = f.metrics.encode();
    assert!(text.contains(r#"fulfillment_webhook_undelivered{source_system="commercetools"} 1"#), "{text}");
    let age: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"fulfillment_webhook_oldest_undelivered_age_seconds{source_system="commercetools"} "#)
        })
        .expect("the age gauge")
        .parse()
        .unwrap();
    assert!(age >= 59.0, "the undelivered outcome has waited a minute: {age}");
}

async fn an_unconfigured_source_system_is_sent_nothing(backend: Backend) {
    let receiver = MockServer::start().await;
    receiver_answers(&receiver, 200, 10).await;
    let f = with_webhook(backend, &receiver, "another-platform").await;
    lms_answers(&f, ENROLL, ResponseTemplate::new(200).set_body_json(json!({"is_active": true})), 1).await;
    let id = f.fulfill(one_line(&order_number())).await.unwrap().fulfillments[0].fulfillment_id.clone();
    f.attempt_at(now()).await;
    assert_eq!(f.get(&id).await.state, pb::FulfillmentState::Succeeded as i32);
    let sender = f.fulfillment.webhook_sender().unwrap();
    assert!(sender.outbox().of_fulfillment(&id).await.unwrap().is_empty(), "no delivery written");
    assert_eq!(sender.deliver_due(now() + secs(3600)).await.unwrap(), 0);
    assert!(received(&receiver).await.is_empty());

    // Without any webhook there is no sender at all.
    let plain = fixture(backend).await;
    assert!(plain.fulfillment.webhook_sender().is_none());
}

async fn a_revoked_line_is_reported_too(backend: Backend) {
    let receiver = MockServer::start().await;
    receiver_answers(&receiver, 200, 10).await;
    let f = with_webhook(backend, &receiver, "commercetools").await;
    lms_answers(&f, ENROLL, ResponseTemplate::new(200).set_body_json(json!({})), 2).await;
    let id = f.fulfill(one_line(&order_number())).await.unwrap().fulfillments[0].fulfillment_id.clone();
    f.attempt_at(now()).await;
    let refund = pb::RevokeFulfillmentRequest {
        fulfillment_id: id.clone(),
        refunded_amount: Some(proto::commerce::r#type::v1::Money {
            currency_code: "USD".into(),
            amount: "149.00".into(),
        }),
        reason: "requested_by_customer".into(),
        source: "commercetools".into(),
    };
    f.client.clone().revoke_fulfillment(refund).await.unwrap();
    f.attempt_at(now()).await;
    assert_eq!(f.get(&id).await.state, pb::FulfillmentState::Revoked as i32);
    let sender = f.fulfillment.webhook_sender().unwrap();
    assert_eq!(sender.deliver_due(now()).await.unwrap(), 2);
    let mut states: Vec<Value> = received(&receiver).await.iter().map(|r| verified(r)["state"].clone()).collect();
    states.sort_by_key(ToString::to_string);
    assert_eq!(states, vec![json!("REVOKED"), json!("SUCCEEDED")]);
}

async fn a_line_failing_again_after_a_retry_is_reported_again(backend: Backend) {
    let receiver = MockServer::start().await;
    receiver_answers(&receiver, 200, 10).await;
    let f = with_webhook(backend, &receiver, "commercetools").await;
    lms_answers(&f, ENROLL, ResponseTemplate::new(400).set_body_string("closed"), 2).await;
    let id = f.fulfill(one_line(&order_number())).await.unwrap().fulfillments[0].fulfillment_id.clone();
    f.attempt_at(now()).await;
    let retry = pb::RetryFulfillmentRequest { fulfillment_id: id.clone() };
    f.client.clone().retry_fulfillment(retry).await.unwrap();
    f.attempt_at(now()).await;
    assert_eq!(f.get(&id).await.state, pb::FulfillmentState::Failed as i32, "failed twice, recorded twice");
    let sender = f.fulfillment.webhook_sender().unwrap();
    assert_eq!(sender.deliver_due(now()).await.unwrap(), 2);
    let bodies: Vec<Value> = received(&receiver).await.iter().map(verified).collect();
    assert_eq!(bodies.len(), 2);
    assert!(bodies.iter().all(|b| b["state"] == "FAILED"));
    assert_ne!(bodies[0]["event_id"], bodies[1]["event_id"], "each failure is an outcome of its own");
    f.fulfillment.relay().publish_pending().await.unwrap();
    let events = f.events_for(proto::streams::FULFILLMENTS, std::slice::from_ref(&id), 2).await;
    assert_eq!(events.len(), 2, "two FulfillmentFailed events");
}

/// A delivery whose event id is already owed (a job succeeding again after a revocation repeats its
/// completed event id) is skipped, not refused: a refusal would roll back `finish`'s transaction forever.
async fn a_webhook_outcome_owed_twice_is_recorded_once(backend: Backend) {
    use fulfillment::webhook::store::{NewDelivery, WebhookOutbox, postgres, sqlite};
    use kit::db::Database;

    let db = kit::testing::TestDatabase::new(backend, fulfillment::NAME).await;
    kit::db::migrate(db.config(), &fulfillment::MIGRATIONS).await.expect("migrate");
    let database = Database::open(db.config()).expect("open");
    let delivery = |body: &str| NewDelivery {
        event_id: "evt-completed-1".into(),
        source_system: "commercetools".into(),
        fulfillment_id: "ful-1".into(),
        body: body.into(),
        traceparent: String::new(),
    };
    for body in ["first", "again"] {
        let deliveries = [delivery(body)];
        match &database {
            Database::Postgres(pool) => {
                let mut tx = pool.begin().await.unwrap();
                postgres::insert(&mut tx, &deliveries, now()).await.unwrap();
                tx.commit().await.unwrap();
            }
            Database::Sqlite(pool) => {
                let mut tx = pool.begin().await.unwrap();
                sqlite::insert(&mut tx, &deliveries, now()).await.unwrap();
                tx.commit().await.unwrap();
            }
        }
    }
    let recorded = WebhookOutbox::new(database).of_fulfillment("ful-1").await.unwrap();
    assert_eq!(recorded.len(), 1, "one delivery per event id: {recorded:?}");
    assert_eq!(recorded[0].body, "first", "the delivery already owed is kept");
}

macro_rules! suite {
    ($name:ident, $kind:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn succeeded_and_failed_outcomes_reach_the_receiver_signed() {
                super::succeeded_and_failed_outcomes_reach_the_receiver_signed($kind).await;
            }
            #[tokio::test]
            async fn a_receiver_answering_500_gets_the_outcome_again_until_it_takes_it() {
                super::a_receiver_answering_500_gets_the_outcome_again_until_it_takes_it($kind).await;
            }
            #[tokio::test]
            async fn a_receiver_refusing_with_400_is_given_up_without_holding_the_job() {
                super::a_receiver_refusing_with_400_is_given_up_without_holding_the_job($kind).await;
            }
            #[tokio::test]
            async fn an_unreachable_receiver_is_retried_and_the_backlog_reported() {
                super::an_unreachable_receiver_is_retried_and_the_backlog_reported($kind).await;
            }
            #[tokio::test]
            async fn an_unconfigured_source_system_is_sent_nothing() {
                super::an_unconfigured_source_system_is_sent_nothing($kind).await;
            }
            #[tokio::test]
            async fn a_line_failing_again_after_a_retry_is_reported_again() {
                super::a_line_failing_again_after_a_retry_is_reported_again($kind).await;
            }
            #[tokio::test]
            async fn a_revoked_line_is_reported_too() {
                super::a_revoked_line_is_reported_too($kind).await;
            }
            #[tokio::test]
            async fn a_webhook_outcome_owed_twice_is_recorded_once() {
                super::a_webhook_outcome_owed_twice_is_recorded_once($kind).await;
            }
        }
    };
}

suite!(postgres, Backend::Postgres);
suite!(sqlite, Backend::Sqlite);
