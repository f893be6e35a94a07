//! Fulfillment end to end within the service: the gRPC API over a real store,
//! workers calling a stub LMS over real HTTP (wiremock), and the outbox relay
//! publishing to a real event bus — on Postgres + Redis Streams and on
//! SQLite + the embedded log.
//!
//! Attempts are driven one at a time where the test is about what happens
//! after each (claims at an explicit time, so backoff needs no waiting); the
//! full worker loop runs where the test is about the loop.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use fulfillment::domain::{JobState, RetryPolicy};
use kit::bus::{BusError, Delivery, EventBus, Publication};
use kit::db::Backend;
use prost::Message;
use proto::commerce::events::v1::{EventEnvelope, event_envelope::Payload};
use proto::commerce::fulfillment::v1 as pb;
use serde_json::json;
use tonic::Code;
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

mod common;
use common::*;

async fn an_order_is_enrolled_with_the_exact_request_and_announced(f: Fixture) {
    lms_answers(&f, ENROLL, ResponseTemplate::new(200).set_body_json(json!({"is_active": true})), 10).await;
    f.run_background();
    let number = order_number();
    let accepted =
        f.fulfill(order(&number, vec![course_run("l1", "course-v1:edX+DemoX+2025_T1", "credit")])).await.unwrap();
    assert!(accepted.created);
    let id = accepted.fulfillments[0].fulfillment_id.clone();
    assert_eq!(accepted.fulfillments[0].state, pb::FulfillmentState::Pending as i32);

    // The worker is woken by the acceptance (idle_poll is a minute), calls the
    // LMS, and the relay publishes: wait for the events.
    let completed = f.events_for(proto::streams::FULFILLMENTS, std::slice::from_ref(&id), 1).await;
    let purchases = f.events_for(proto::streams::PURCHASES, std::slice::from_ref(&id), 1).await;
    assert_eq!((completed.len(), purchases.len()), (1, 1), "each event published once");

    let job = f.get(&id).await;
    assert_eq!((job.state, job.attempts), (pb::FulfillmentState::Succeeded as i32, 1));
    let calls = calls_to(&f, ENROLL).await;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].headers.get("authorization").unwrap(), "JWT t1");
    let body: serde_json::Value = serde_json::from_slice(&calls[0].body).unwrap();
    assert_eq!(
        body,
        json!({
            "user": "ada",
            "mode": "credit",
            "is_active": true,
            "course_details": {"course_id": "course-v1:edX+DemoX+2025_T1"},
            "email_opt_in": true,
            "enrollment_attributes": [
                {"namespace": "order", "name": "order_number", "value": number},
                {"namespace": "order", "name": "order_id", "value": "ct-7f1c"},
                {"namespace": "order", "name": "line_item_id", "value": "l1"},
                {"namespace": "order", "name": "date_placed", "value": "2025-11-13T02:13:20Z"},
                {"namespace": "order", "name": "source_system", "value": "commercetools"},
                {"namespace": "credit", "name": "provider_id", "value": "asu"},
            ]
        })
    );

    let envelope = EventEnvelope::decode(purchases[0].payload.as_slice()).unwrap();
    assert_eq!(envelope.event_type, "commerce.events.v1.PurchaseRecorded");
    let Some(Payload::PurchaseRecorded(purchase)) = envelope.payload else { panic!("{envelope:?}") };
    assert_eq!(
        (purchase.lms_user_id.as_str(), purchase.order_number.as_str(), purchase.product_key.as_str()),
        ("4242", number.as_str(), "course-v1:edX+DemoX+2025_T1")
    );
    assert_eq!(purchase.price.unwrap().amount, "149.00");
    let envelope = EventEnvelope::decode(completed[0].payload.as_slice()).unwrap();
    let Some(Payload::FulfillmentCompleted(done)) = envelope.payload else { panic!("{envelope:?}") };
    assert_eq!((done.fulfillment_id, done.mode.as_str()), (id, "credit"));
}

async fn a_repeated_order_enqueues_nothing_and_a_changed_one_is_refused(f: Fixture) {
    let number = order_number();
    let first = f
        .fulfill(order(
            &number,
            vec![
                course_run("l1", "course-v1:edX+DemoX+T1", "verified"),
                course_run("l2", "course-v1:edX+Two+T1", "audit"),
            ],
        ))
        .await
        .unwrap();
    assert!(first.created);
    let again = f
        .fulfill(order(
            &number,
            vec![
                course_run("l1", "course-v1:edX+DemoX+T1", "verified"),
                course_run("l2", "course-v1:edX+Two+T1", "audit"),
            ],
        ))
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.fulfillments, first.fulfillments, "the fulfillments stored the first time");
    let claimed = f.store().claim(100, Duration::from_secs(30), now()).await.unwrap();
    assert_eq!(claimed.len(), 2, "the repeat queued nothing");

    let changed = f
        .fulfill(order(
            &number,
            vec![
                course_run("l1", "course-v1:edX+DemoX+T1", "verified"),
                course_run("l2", "course-v1:edX+Two+T1", "verified"),
            ],
        ))
        .await
        .unwrap_err();
    assert_eq!(changed.code(), Code::AlreadyExists);
    assert!(changed.message().contains("l2"), "{}", changed.message());
    assert_eq!(kit::error::reason(&changed).as_deref(), Some("ORDER_CONTENT_MISMATCH"));
    let listed = f
        .client
        .clone()
        .list_order_fulfillments(pb::ListOrderFulfillmentsRequest {
            order_number: number,
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.fulfillments.len(), 1);
    assert_eq!(listed.fulfillments[0].line_item_id, "l1");
    assert!(!listed.next_page_token.is_empty());
}

async fn concurrent_repeats_of_one_order_store_it_once(f: Fixture) {
    let number = order_number();
    let calls = (0..8).map(|_| {
        let f_client = f.client.clone();
        let request = one_line(&number);
        tokio::spawn(async move { f_client.clone().fulfill_order(request).await.map(|r| r.into_inner()) })
    });
    let mut created = 0;
    let mut ids = HashSet::new();
    for call in calls.collect::<Vec<_>>() {
        let answer = call.await.unwrap().unwrap();
        created += usize::from(answer.created);
        ids.insert(answer.fulfillments[0].fulfillment_id.clone());
    }
    assert_eq!((created, ids.len()), (1, 1), "one acceptance stored it; every caller saw the same fulfillment");
}

async fn bad_orders_are_refused_naming_each_field_and_store_nothing(f: Fixture) {
    let number = order_number();
    type Breakage = Box<dyn Fn(&mut pb::FulfillOrderRequest)>;
    let cases: Vec<(&str, Breakage)> = vec![
        ("order_number", Box::new(|o| o.order_number.clear())),
        ("line_items", Box::new(|o| o.line_items.clear())),
        ("line_items[1].line_item_id", Box::new(|o| o.line_items.push(o.line_items[0].clone()))),
        (
            "line_items[0].course_run.course_run_key",
            Box::new(|o| o.line_items[0] = course_run("l1", "edX/DemoX/T1", "verified")),
        ),
        ("line_items[0].course_run.mode", Box::new(|o| o.line_items[0] = course_run("l1", "course-v1:a+b+c", "gold"))),
        (
            "line_items[0].course_run.credit_provider_id",
            Box::new(|o| {
                o.line_items[0].product = Some(pb::line_item::Product::CourseRun(pb::CourseRunEnrollment {
                    course_run_key: "course-v1:a+b+c".into(),
                    mode: "credit".into(),
                    credit_provider_id: String::new(),
                }))
            }),
        ),
        ("line_items[0].product", Box::new(|o| o.line_items[0].product = None)),
        ("line_items[0].price", Box::new(|o| o.line_items[0].price = None)),
        ("line_items[0].price.amount", Box::new(|o| o.line_items[0].price.as_mut().unwrap().amount = "1e3".into())),
        ("date_placed", Box::new(|o| o.date_placed = None)),
        (
            "date_placed",
            Box::new(|o| {
                o.date_placed = Some(prost_types::Timestamp { seconds: Utc::now().timestamp() + 3600, nanos: 0 })
            }),
        ),
        (
            "date_placed",
            Box::new(|o| o.date_placed = Some(prost_types::Timestamp { seconds: 0, nanos: 1_500_000_000 })),
        ),
        ("date_placed", Box::new(|o| o.date_placed = Some(prost_types::Timestamp { seconds: i64::MAX, nanos: 0 }))),
        (
            "line_items",
            Box::new(|o| {
                o.line_items = (0..101).map(|i| course_run(&format!("l{i}"), "course-v1:a+b+c", "verified")).collect();
            }),
        ),
        ("learner", Box::new(|o| o.learner = None)),
        ("learner.lms_username", Box::new(|o| o.learner.as_mut().unwrap().lms_username.clear())),
        ("learner.lms_user_id", Box::new(|o| o.learner.as_mut().unwrap().lms_user_id = "-4".into())),
        (
            "line_items[0].entitlement.course_uuid",
            Box::new(|o| {
                o.line_items[0].product = Some(pb::line_item::Product::Entitlement(pb::ProgramEntitlement {
                    course_uuid: "not-a-uuid".into(),
                    mode: "verified".into(),
                }))
            }),
        ),
    ];
    for (field, break_it) in cases {
        let mut request = one_line(&number);
        break_it(&mut request);
        let status = f.fulfill(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        let fields: Vec<String> = kit::error::field_violations(&status).into_iter().map(|(f, _)| f).collect();
        assert!(fields.contains(&field.to_string()), "expected {field} in {fields:?}");
    }
    assert!(
        f.store().claim(100, Duration::from_secs(30), now() + secs(3600)).await.unwrap().is_empty(),
        "nothing stored"
    );
}

async fn transient_failures_back_off_with_growing_delays_and_then_succeed(f: Fixture) {
    lms_answers(&f, ENROLL, ResponseTemplate::new(503).set_body_string("maintenance"), 1).await;
    lms_answers(&f, ENROLL, ResponseTemplate::new(500), 1).await;
    lms_answers(&f, ENROLL, ResponseTemplate::new(200).set_delay(Duration::from_secs(5)), 1).await;
    lms_answers(&f, ENROLL, ResponseTemplate::new(429).insert_header("Retry-After", "120"), 1).await;
    lms_answers(&f, ENROLL, ResponseTemplate::new(200), 1).await;
    let accepted = f.fulfill(one_line(&order_number())).await.unwrap();
    let id = accepted.fulfillments[0].fulfillment_id.clone();

    let mut at = now();
    let mut waits = Vec::new();
    let mut kinds = Vec::new();
    for _ in 0..4 {
        f.attempt_at(at).await;
        let job = f.get(&id).await;
        assert_eq!(job.state, pb::FulfillmentState::Pending as i32, "{job:?}");
        let updated = kit::time::from_timestamp(job.update_time.as_ref().unwrap()).unwrap();
        waits.push((due(&job) - updated).num_seconds());
        let error = job.last_error.clone().unwrap();
        kinds.push((error.kind, error.lms_status));
        at = due(&job);
    }
    // base 2 s doubling (jitter pinned to its ceiling), then the LMS's Retry-After.
    assert_eq!(waits, [2, 4, 8, 120]);
    use pb::FulfillmentErrorKind as K;
    assert_eq!(
        kinds,
        [
            (K::Unavailable as i32, 503),
            (K::Unavailable as i32, 500),
            (K::Timeout as i32, 0),
            (K::Unavailable as i32, 429)
        ]
    );
    f.attempt_at(at).await;
    let job = f.get(&id).await;
    assert_eq!((job.state, job.attempts), (pb::FulfillmentState::Succeeded as i32, 5));
    assert_eq!(f.store().transitions(&id).await.unwrap().iter().filter(|t| t.to == JobState::Succeeded).count(), 1);
}

/// The workers idle for up to `idle_poll` (a minute here) or until the next
/// due job; a job rescheduled by a failed attempt must wake them, or its retry
/// waits for the lease or the poll instead of its backoff (50 ms here).
async fn a_retry_runs_at_its_backoff_not_at_the_next_poll(f: Fixture) {
    lms_answers(&f, ENROLL, ResponseTemplate::new(503).set_body_string("maintenance"), 1).await;
    lms_answers(&f, ENROLL, ResponseTemplate::new(200).set_body_json(json!({"is_active": true})), 1).await;
    f.run_background();
    let accepted = f.fulfill(one_line(&order_number())).await.unwrap();
    let id = accepted.fulfillments[0].fulfillment_id.clone();
    // A guard far below the lease (30 s) and the poll (60 s), far above the backoff.
    let completed = tokio::time::timeout(
        Duration::from_secs(10),
        f.events_for(proto::streams::FULFILLMENTS, std::slice::from_ref(&id), 1),
    )
    .await
    .expect("the retry ran at its backoff, not after the lease or the poll");
    assert_eq!(completed.len(), 1);
    let job = f.get(&id).await;
    assert_eq!((job.state, job.attempts), (pb::FulfillmentState::Succeeded as i32, 2));
}

async fn a_rejection_fails_at_once_with_the_lms_answer_recorded(f: Fixture) {
    lms_answers(&f, ENROLL, ResponseTemplate::new(400).set_body_string(r#"{"message": "Course run not found"}"#), 1)
        .await;
    let accepted = f.fulfill(one_line(&order_number())).await.unwrap();
    let id = accepted.fulfillments[0].fulfillment_id.clone();
    f.attempt_at(now()).await;
    let job = f.get(&id).await;
    assert_eq!((job.state, job.attempts), (pb::FulfillmentState::Failed as i32, 1));
    let error = job.last_error.unwrap();
    assert_eq!((error.kind, error.lms_status), (pb::FulfillmentErrorKind::Rejected as i32, 400));
    assert!(error.message.contains("Course run not found"), "{}", error.message);
    assert!(job.next_attempt_time.is_none());
    assert!(
        f.store().claim(10, Duration::from_secs(30), now() + secs(86_400)).await.unwrap().is_empty(),
        "not retried"
    );
}

async fn attempts_run_out_and_retry_fulfillment_redrives(f: Fixture) {
    lms_answers(&f, ENROLL, ResponseTemplate::new(502), 2).await;
    lms_answers(&f, ENROLL, ResponseTemplate::new(200), 1).await;
    let accepted = f.fulfill(one_line(&order_number())).await.unwrap();
    let id = accepted.fulfillments[0].fulfillment_id.clone();
    f.attempt_at(now()).await;
    f.attempt_at(due(&f.get(&id).await)).await;
    let job = f.get(&id).await;
    assert_eq!((job.state, job.attempts), (pb::FulfillmentState::Failed as i32, 2));
    assert_eq!(job.last_error.unwrap().kind, pb::FulfillmentErrorKind::AttemptsExhausted as i32);

    let mut client = f.client.clone();
    let redriven = client
        .retry_fulfillment(pb::RetryFulfillmentRequest { fulfillment_id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    let job = redriven.fulfillment.unwrap();
    assert_eq!((job.state, job.attempts), (pb::FulfillmentState::Pending as i32, 0));
    let again = client.retry_fulfillment(pb::RetryFulfillmentRequest { fulfillment_id: id.clone() }).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert_eq!(kit::error::reason(&again).as_deref(), Some("NOT_FAILED"));
    let unknown =
        client.retry_fulfillment(pb::RetryFulfillmentRequest { fulfillment_id: "nope".into() }).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    f.attempt_at(now()).await;
    assert_eq!(f.get(&id).await.state, pb::FulfillmentState::Succeeded as i32);
}

async fn a_job_whose_worker_vanished_is_finished_once_by_another(f: Fixture) {
    lms_answers(&f, ENROLL, ResponseTemplate::new(200), 10).await;
    let accepted = f.fulfill(one_line(&order_number())).await.unwrap();
    let id = accepted.fulfillments[0].fulfillment_id.clone();
    let start = now();
    // Worker A claims the job and vanishes mid-call: its lease (30 s) runs out.
    let vanished = f.claim_at(start).await;
    // Worker B finds the expired lease, claims the job and finishes it.
    f.attempt_at(start + secs(31)).await;
    // A comes back and completes its (repeated, harmless) LMS call: its outcome is discarded.
    f.fulfillment.workers().attempt(vanished).await;

    let transitions = f.store().transitions(&id).await.unwrap();
    assert_eq!(transitions.iter().filter(|t| t.to == JobState::Succeeded).count(), 1, "{transitions:?}");
    let outbox = f.store().unpublished(100).await.unwrap();
    let ids: Vec<&str> = outbox.iter().map(|e| e.event.event_id.as_str()).collect();
    assert_eq!(ids.len(), 2, "one set of events: {ids:?}");
    assert!(ids.iter().all(|e| e.ends_with(&id)));
    assert_eq!(calls_to(&f, ENROLL).await.len(), 2, "the vanished worker's call is the only duplicate");
    assert_eq!(f.get(&id).await.attempts, 2);
}

/// Publishes to the real bus but reports failure once `fail_after` events
/// were published: a relay that crashed after publishing, before stamping.
struct LostAcknowledgements {
    bus: Arc<dyn EventBus>,
    published: AtomicUsize,
    fail_after: usize,
}

impl LostAcknowledgements {
    fn answer<T>(&self, published: usize, appended: T) -> Result<T, BusError> {
        if self.published.fetch_add(published, Ordering::SeqCst) + published >= self.fail_after {
            return Err(BusError::Malformed {
                stream: String::new(),
                id: String::new(),
                reason: "connection lost".into(),
            });
        }
        Ok(appended)
    }
}

#[async_trait::async_trait]
impl EventBus for LostAcknowledgements {
    async fn publish(&self, stream: &str, event_id: &str, payload: &[u8]) -> Result<bool, BusError> {
        let appended = self.bus.publish(stream, event_id, payload).await?;
        self.answer(1, appended)
    }
    async fn publish_all(&self, events: &[Publication<'_>]) -> Result<Vec<bool>, BusError> {
        let appended = self.bus.publish_all(events).await?;
        self.answer(events.len(), appended)
    }
    async fn trim(&self, stream: &str, now: DateTime<Utc>) -> Result<kit::bus::StreamStats, BusError> {
        self.bus.trim(stream, now).await
    }
    fn streams(&self) -> Vec<String> {
        self.bus.streams()
    }
    async fn ensure_group(&self, stream: &str, group: &str) -> Result<(), BusError> {
        self.bus.ensure_group(stream, group).await
    }
    async fn read(&self, s: &str, g: &str, c: &str, max: usize, block: Duration) -> Result<Vec<Delivery>, BusError> {
        self.bus.read(s, g, c, max, block).await
    }
    async fn ack(&self, stream: &str, group: &str, ids: &[kit::bus::EntryId]) -> Result<(), BusError> {
        self.bus.ack(stream, group, ids).await
    }
    async fn reclaim(&self, s: &str, g: &str, c: &str, idle: Duration, max: usize) -> Result<Vec<Delivery>, BusError> {
        self.bus.reclaim(s, g, c, idle, max).await
    }
    async fn dead_letter(&self, stream: &str, group: &str, delivery: &Delivery, reason: &str) -> Result<(), BusError> {
        self.bus.dead_letter(stream, group, delivery, reason).await
    }
    async fn dead_letters(&self, stream: &str, max: usize) -> Result<Vec<kit::bus::DeadLetter>, BusError> {
        self.bus.dead_letters(stream, max).await
    }
    async fn list_dead_letters(
        &self,
        stream: &str,
        query: &kit::bus::DeadLetterQuery,
    ) -> Result<kit::bus::DeadLetterPage, BusError> {
        self.bus.list_dead_letters(stream, query).await
    }
    async fn replay_dead_letters(
        &self,
        stream: &str,
        ids: &[kit::bus::EntryId],
    ) -> Result<Vec<Option<kit::bus::EntryId>>, BusError> {
        self.bus.replay_dead_letters(stream, ids).await
    }
    async fn discard_dead_letters(
        &self,
        stream: &str,
        ids: &[kit::bus::EntryId],
        discard: &kit::bus::Discard,
    ) -> Result<Vec<bool>, BusError> {
        self.bus.discard_dead_letters(stream, ids, discard).await
    }
    async fn discarded_dead_letters(
        &self,
        stream: &str,
        query: &kit::bus::DeadLetterQuery,
    ) -> Result<kit::bus::DiscardedPage, BusError> {
        self.bus.discarded_dead_letters(stream, query).await
    }
    async fn dead_letters_by_id(
        &self,
        stream: &str,
        ids: &[kit::bus::EntryId],
    ) -> Result<Vec<Option<kit::bus::DeadLetter>>, BusError> {
        self.bus.dead_letters_by_id(stream, ids).await
    }
    async fn pending(&self, stream: &str, group: &str) -> Result<u64, BusError> {
        self.bus.pending(stream, group).await
    }
    async fn leave(&self, stream: &str, group: &str, consumer: &str) -> Result<bool, BusError> {
        self.bus.leave(stream, group, consumer).await
    }
}

async fn outbox_events_are_published_once_across_a_relay_restart(f: Fixture) {
    lms_answers(&f, ENROLL, ResponseTemplate::new(200), 10).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let accepted = f.fulfill(one_line(&order_number())).await.unwrap();
        ids.push(accepted.fulfillments[0].fulfillment_id.clone());
    }
    for _ in 0..3 {
        f.attempt_at(now()).await;
    }
    assert_eq!(f.store().unpublished(100).await.unwrap().len(), 6);

    // The first relay publishes two batches of two events, but the second batch's acknowledgement is lost.
    let mut crashing = fulfillment::outbox::OutboxRelay::new(
        Arc::clone(f.store()) as _,
        Arc::new(LostAcknowledgements { bus: Arc::clone(&f.bus), published: AtomicUsize::new(0), fail_after: 3 }),
        Arc::new(tokio::sync::Notify::new()),
    );
    crashing.batch = 2;
    assert_eq!(crashing.publish_pending().await.unwrap(), 2);
    assert!(crashing.publish_pending().await.is_err());
    assert_eq!(
        f.store().unpublished(100).await.unwrap().len(),
        4,
        "two stamped, the next two published but not stamped"
    );

    // A new relay (the restart) publishes the rest, those two again: the bus keeps each once.
    let restarted = f.fulfillment.relay();
    assert_eq!(restarted.publish_pending().await.unwrap(), 4);
    assert_eq!(restarted.publish_pending().await.unwrap(), 0);

    let completed = f.events_for(proto::streams::FULFILLMENTS, &ids, 3).await;
    let purchases = f.events_for(proto::streams::PURCHASES, &ids, 3).await;
    let mut seen: Vec<String> = completed.iter().chain(&purchases).map(|d| d.event_id.clone()).collect();
    let total = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!((total, seen.len()), (6, 6), "every event exactly once on the streams");
}

async fn an_entitlement_keeps_the_uuid_the_lms_returned(f: Fixture) {
    let granted = "5b1c9c1e-7d0f-4d8e-9d59-3a3f7b0f2a11";
    Mock::given(method("GET"))
        .and(path(ENTITLE))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"results": []})))
        .mount(&f.lms)
        .await;
    lms_answers(&f, ENTITLE, ResponseTemplate::new(201).set_body_json(json!({"uuid": granted})), 1).await;
    let course = "8a1f5f9e-0c55-4a53-9d6e-6b8c8d0e1f20";
    let mut request = one_line(&order_number());
    request.line_items[0].product = Some(pb::line_item::Product::Entitlement(pb::ProgramEntitlement {
        course_uuid: course.into(),
        mode: "verified".into(),
    }));
    let id = f.fulfill(request.clone()).await.unwrap().fulfillments[0].fulfillment_id.clone();
    f.attempt_at(now()).await;
    let job = f.get(&id).await;
    assert_eq!((job.state, job.entitlement_uuid.as_str()), (pb::FulfillmentState::Succeeded as i32, granted));
    let calls = calls_to(&f, ENTITLE).await;
    assert_eq!(calls.len(), 2, "asked first, then granted");
    assert_eq!(calls[0].method.as_str(), "GET");
    let query: Vec<(String, String)> = calls[0].url.query_pairs().into_owned().collect();
    assert!(query.contains(&("user".into(), "ada".into())) && query.contains(&("course_uuid".into(), course.into())));
    let body: serde_json::Value = serde_json::from_slice(&calls[1].body).unwrap();
    assert_eq!(
        body,
        json!({"user": "ada", "mode": "verified", "course_uuid": course, "order_number": request.order_number, "email_opt_in": true})
    );
}

async fn metrics_count_jobs_attempts_and_lms_answers(f: Fixture) {
    lms_answers(&f, ENROLL, ResponseTemplate::new(503), 1).await;
    lms_answers(&f, ENROLL, ResponseTemplate::new(200), 1).await;
    let id = f.fulfill(one_line(&order_number())).await.unwrap().fulfillments[0].fulfillment_id.clone();
    f.attempt_at(now()).await;
    f.attempt_at(due(&f.get(&id).await)).await;
    // A second order waits, due since it was accepted.
    f.fulfill(one_line(&order_number())).await.unwrap();
    f.fulfillment.refresh_metrics().await.unwrap();
    let text = f.metrics.encode();
    for line in [
        r#"fulfillment_jobs{state="PENDING"} 1"#,
        r#"fulfillment_jobs{state="IN_PROGRESS"} 0"#,
        r#"fulfillment_jobs{state="FAILED"} 0"#,
        r#"fulfillment_attempts_total{outcome="retry"} 1"#,
        r#"fulfillment_attempts_total{outcome="succeeded"} 1"#,
        r#"fulfillment_lms_answers_total{status="503"} 1"#,
        r#"fulfillment_lms_answers_total{status="200"} 1"#,
        "fulfillment_lms_duration_seconds_count 2",
        "fulfillment_outbox_unpublished 2",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    let waited: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("fulfillment_oldest_pending_age_seconds "))
        .expect("the age gauge")
        .parse()
        .unwrap();
    assert!(waited > 0.0, "the second order is due and waiting: {waited}");
}

async fn an_entitlement_the_lms_already_granted_is_not_granted_again(f: Fixture) {
    let course = "8a1f5f9e-0c55-4a53-9d6e-6b8c8d0e1f20";
    let mut request = one_line(&order_number());
    request.line_items[0].product = Some(pb::line_item::Product::Entitlement(pb::ProgramEntitlement {
        course_uuid: course.into(),
        mode: "verified".into(),
    }));
    // An earlier attempt's grant went through but its answer was lost.
    let listed = json!({"results": [
        {"uuid": "11111111-0000-0000-0000-000000000000", "order_number": "ANOTHER-ORDER"},
        {"uuid": "22222222-0000-0000-0000-000000000000", "order_number": request.order_number},
    ]});
    Mock::given(method("GET"))
        .and(path(ENTITLE))
        .respond_with(ResponseTemplate::new(200).set_body_json(listed))
        .mount(&f.lms)
        .await;
    let id = f.fulfill(request).await.unwrap().fulfillments[0].fulfillment_id.clone();
    f.attempt_at(now()).await;
    let job = f.get(&id).await;
    assert_eq!(
        (job.state, job.entitlement_uuid.as_str()),
        (pb::FulfillmentState::Succeeded as i32, "22222222-0000-0000-0000-000000000000")
    );
    let posts = calls_to(&f, ENTITLE).await.into_iter().filter(|r| r.method.as_str() == "POST").count();
    assert_eq!(posts, 0, "no second grant");
}

async fn a_redirect_is_an_answer_not_a_success(f: Fixture) {
    lms_answers(&f, ENROLL, ResponseTemplate::new(302).insert_header("Location", "/login"), 1).await;
    let id = f.fulfill(one_line(&order_number())).await.unwrap().fulfillments[0].fulfillment_id.clone();
    f.attempt_at(now()).await;
    let job = f.get(&id).await;
    assert_eq!(job.state, pb::FulfillmentState::Failed as i32);
    assert_eq!(job.last_error.unwrap().lms_status, 302);
    assert_eq!(f.lms.received_requests().await.unwrap().iter().filter(|r| r.url.path() == "/login").count(), 0);
}

async fn the_order_trace_reaches_the_attempt_and_the_events(f: Fixture) {
    // Trace context only exists with a propagator and an OpenTelemetry layer: the process's telemetry.
    let _telemetry = kit::telemetry::init(&kit::telemetry::TelemetryConfig::default()).expect("telemetry");
    lms_answers(&f, ENROLL, ResponseTemplate::new(200), 1).await;
    let id = f.fulfill(one_line(&order_number())).await.unwrap().fulfillments[0].fulfillment_id.clone();
    let stored = f.store().get(&id).await.unwrap().unwrap();
    let trace_id = stored.traceparent.split('-').nth(1).expect("a traceparent was stored").to_string();
    assert_eq!(trace_id.len(), 32);
    f.attempt_at(now()).await;
    let lms_call = &calls_to(&f, ENROLL).await[0];
    let sent = lms_call.headers.get("traceparent").expect("traceparent to the LMS").to_str().unwrap();
    assert_eq!(sent.split('-').nth(1), Some(trace_id.as_str()), "the LMS call is in the order's trace");
    for entry in f.store().unpublished(10).await.unwrap() {
        let envelope = EventEnvelope::decode(entry.event.payload.as_slice()).unwrap();
        assert_eq!(
            envelope.traceparent.split('-').nth(1),
            Some(trace_id.as_str()),
            "{} carries the trace",
            envelope.event_type
        );
    }
}

async fn unknown_fulfillments_are_not_found(f: Fixture) {
    let status = f.client.clone().get_fulfillment(pb::GetFulfillmentRequest { fulfillment_id: "nope".into() }).await;
    assert_eq!(status.unwrap_err().code(), Code::NotFound);
    let status = f.client.clone().get_fulfillment(pb::GetFulfillmentRequest { fulfillment_id: String::new() }).await;
    assert_eq!(status.unwrap_err().code(), Code::InvalidArgument);
}

macro_rules! suite {
    ($name:ident, $kind:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_order_is_enrolled_with_the_exact_request_and_announced() {
                super::an_order_is_enrolled_with_the_exact_request_and_announced(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_repeated_order_enqueues_nothing_and_a_changed_one_is_refused() {
                super::a_repeated_order_enqueues_nothing_and_a_changed_one_is_refused(fixture($kind).await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_repeats_of_one_order_store_it_once() {
                super::concurrent_repeats_of_one_order_store_it_once(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn bad_orders_are_refused_naming_each_field_and_store_nothing() {
                super::bad_orders_are_refused_naming_each_field_and_store_nothing(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn transient_failures_back_off_with_growing_delays_and_then_succeed() {
                super::transient_failures_back_off_with_growing_delays_and_then_succeed(fixture($kind).await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_retry_runs_at_its_backoff_not_at_the_next_poll() {
                let policy =
                    RetryPolicy { base: Duration::from_millis(50), cap: Duration::from_millis(100), ..policy() };
                super::a_retry_runs_at_its_backoff_not_at_the_next_poll(fixture_with($kind, policy).await).await;
            }
            #[tokio::test]
            async fn a_rejection_fails_at_once_with_the_lms_answer_recorded() {
                super::a_rejection_fails_at_once_with_the_lms_answer_recorded(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn attempts_run_out_and_retry_fulfillment_redrives() {
                let policy = RetryPolicy { max_attempts: 2, ..policy() };
                super::attempts_run_out_and_retry_fulfillment_redrives(fixture_with($kind, policy).await).await;
            }
            #[tokio::test]
            async fn a_job_whose_worker_vanished_is_finished_once_by_another() {
                super::a_job_whose_worker_vanished_is_finished_once_by_another(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn outbox_events_are_published_once_across_a_relay_restart() {
                super::outbox_events_are_published_once_across_a_relay_restart(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn an_entitlement_keeps_the_uuid_the_lms_returned() {
                super::an_entitlement_keeps_the_uuid_the_lms_returned(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn metrics_count_jobs_attempts_and_lms_answers() {
                super::metrics_count_jobs_attempts_and_lms_answers(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn an_entitlement_the_lms_already_granted_is_not_granted_again() {
                super::an_entitlement_the_lms_already_granted_is_not_granted_again(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_redirect_is_an_answer_not_a_success() {
                super::a_redirect_is_an_answer_not_a_success(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn the_order_trace_reaches_the_attempt_and_the_events() {
                super::the_order_trace_reaches_the_attempt_and_the_events(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn unknown_fulfillments_are_not_found() {
                super::unknown_fulfillments_are_not_found(fixture($kind).await).await;
            }
        }
    };
}

suite!(postgres, Backend::Postgres);
suite!(sqlite, Backend::Sqlite);
