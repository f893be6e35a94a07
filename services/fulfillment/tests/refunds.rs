//! Refunds within the service: a refunded line's access is taken away in a
//! stub LMS over real HTTP (wiremock), exactly once, with the same retry
//! classes as enrolling — on Postgres + Redis Streams and on SQLite + the
//! embedded log.
//!
//! Attempts are driven one at a time (claims at an explicit time), so a
//! refund can be made to arrive exactly while an enrollment is in flight.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use fulfillment::domain::JobState;
use kit::db::Backend;
use prost::Message;
use proto::commerce::events::v1::{EventEnvelope, event_envelope::Payload};
use proto::commerce::fulfillment::v1 as pb;
use proto::commerce::r#type::v1::Money;
use serde_json::json;
use tonic::Code;
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, Request, ResponseTemplate};

mod common;
use common::*;

fn usd(amount: &str) -> Option<Money> {
    Some(Money { currency_code: "USD".into(), amount: amount.into() })
}

fn revoke(id: &str, amount: Option<Money>) -> pb::RevokeFulfillmentRequest {
    pb::RevokeFulfillmentRequest {
        fulfillment_id: id.into(),
        refunded_amount: amount,
        reason: "requested_by_customer".into(),
        source: "commercetools".into(),
    }
}

impl Fixture {
    async fn revoke(
        &self,
        request: pb::RevokeFulfillmentRequest,
    ) -> Result<pb::RevokeFulfillmentResponse, tonic::Status> {
        self.client.clone().revoke_fulfillment(request).await.map(|r| r.into_inner())
    }

    async fn refund_order(&self, request: pb::RefundOrderRequest) -> Result<pb::RefundOrderResponse, tonic::Status> {
        self.client.clone().refund_order(request).await.map(|r| r.into_inner())
    }

    /// Accepts a one-line order and enrolls it (one attempt, the LMS answering 200); answers its id.
    async fn fulfilled(&self) -> String {
        let id = self.fulfill(one_line(&order_number())).await.unwrap().fulfillments[0].fulfillment_id.clone();
        self.attempt_at(now()).await;
        assert_eq!(self.get(&id).await.state, pb::FulfillmentState::Succeeded as i32);
        id
    }

    /// The states a job went through, in order.
    async fn path(&self, id: &str) -> Vec<(Option<JobState>, JobState)> {
        self.store().transitions(id).await.unwrap().into_iter().map(|t| (t.from, t.to)).collect()
    }
}

/// The LMS answers every enrollment POST (activating or deactivating) with `status`, `times` times.
async fn enrollments_answer(f: &Fixture, status: u16, times: u64) {
    lms_answers(f, ENROLL, ResponseTemplate::new(status).set_body_json(json!({})), times).await;
}

/// Deactivations only (`"is_active": false`) answer `status`, `times` times.
async fn unenrollments_answer(f: &Fixture, status: u16, times: u64) {
    Mock::given(method("POST"))
        .and(path(ENROLL))
        .and(body_partial_json(json!({"is_active": false})))
        .respond_with(ResponseTemplate::new(status).set_body_json(json!({"detail": "no"})))
        .up_to_n_times(times)
        .mount(&f.lms)
        .await;
}

async fn unenrollments(f: &Fixture) -> Vec<Request> {
    calls_to(f, ENROLL)
        .await
        .into_iter()
        .filter(|call| serde_json::from_slice::<serde_json::Value>(&call.body).unwrap()["is_active"] == json!(false))
        .collect()
}

fn state(job: &pb::Fulfillment) -> pb::FulfillmentState {
    pb::FulfillmentState::try_from(job.state).unwrap()
}

async fn a_refund_of_one_line_deactivates_that_enrollment_only_and_is_announced(f: Fixture) {
    enrollments_answer(&f, 200, 10).await;
    f.run_background();
    let number = order_number();
    let accepted = f
        .fulfill(order(
            &number,
            vec![
                course_run("l1", "course-v1:edX+DemoX+2025_T1", "verified"),
                course_run("l2", "course-v1:edX+Two+2025_T1", "verified"),
            ],
        ))
        .await
        .unwrap();
    let ids: Vec<String> = accepted.fulfillments.iter().map(|j| j.fulfillment_id.clone()).collect();
    f.events_for(proto::streams::FULFILLMENTS, &ids, 2).await;

    let refunded = f
        .refund_order(pb::RefundOrderRequest {
            order_number: number.clone(),
            lines: vec![pb::RefundedLine { line_item_id: "l1".into(), refunded_amount: usd("100.00") }],
            reason: "requested_by_customer".into(),
            source: "commercetools".into(),
        })
        .await
        .unwrap();
    assert!(refunded.created);
    assert_eq!(refunded.fulfillments.len(), 1);
    assert_eq!(state(&refunded.fulfillments[0]), pb::FulfillmentState::Revoking);
    let refund = refunded.fulfillments[0].refund.clone().unwrap();
    assert_eq!(refund.refunded_amount, usd("100.00"));
    assert_eq!((refund.reason.as_str(), refund.source.as_str()), ("requested_by_customer", "commercetools"));

    // The worker is woken by the refund, unenrolls, and the relay publishes.
    let fulfillment_events = f.events_for(proto::streams::FULFILLMENTS, std::slice::from_ref(&ids[0]), 2).await;
    let purchase_events = f.events_for(proto::streams::PURCHASES, std::slice::from_ref(&ids[0]), 2).await;
    assert_eq!((fulfillment_events.len(), purchase_events.len()), (2, 2), "each event once");
    assert_eq!(state(&f.get(&ids[0]).await), pb::FulfillmentState::Revoked);
    assert_eq!(state(&f.get(&ids[1]).await), pb::FulfillmentState::Succeeded, "the other line keeps its access");

    let unenrolled = unenrollments(&f).await;
    assert_eq!(unenrolled.len(), 1, "one deactivation, of l1");
    assert_eq!(unenrolled[0].headers.get("authorization").unwrap(), "JWT t1");
    let body: serde_json::Value = serde_json::from_slice(&unenrolled[0].body).unwrap();
    let attributes = body["enrollment_attributes"].as_array().unwrap().clone();
    let refunded_at = attributes.iter().find(|a| a["name"] == "date_refunded").unwrap()["value"].clone();
    assert_eq!(
        body,
        json!({
            "user": "ada",
            "mode": "verified",
            "is_active": false,
            "course_details": {"course_id": "course-v1:edX+DemoX+2025_T1"},
            "email_opt_in": true,
            "enrollment_attributes": [
                {"namespace": "order", "name": "order_number", "value": number},
                {"namespace": "order", "name": "order_id", "value": "ct-7f1c"},
                {"namespace": "order", "name": "line_item_id", "value": "l1"},
                {"namespace": "order", "name": "date_placed", "value": "2025-11-13T02:13:20Z"},
                {"namespace": "order", "name": "source_system", "value": "commercetools"},
                {"namespace": "refund", "name": "amount", "value": "100.00"},
                {"namespace": "refund", "name": "currency", "value": "USD"},
                {"namespace": "refund", "name": "reason", "value": "requested_by_customer"},
                {"namespace": "refund", "name": "source", "value": "commercetools"},
                {"namespace": "refund", "name": "date_refunded", "value": refunded_at},
            ]
        })
    );

    let revoked = fulfillment_events.iter().find(|e| e.event_id.starts_with("fulfillment-revoked:")).unwrap();
    let Some(Payload::FulfillmentRevoked(revoked)) = EventEnvelope::decode(revoked.payload.as_slice()).unwrap().payload
    else {
        panic!("not a FulfillmentRevoked")
    };
    assert_eq!((revoked.line_item_id.as_str(), revoked.course_run_key.as_str()), ("l1", "course-v1:edX+DemoX+2025_T1"));
    assert_eq!(revoked.refunded_amount, usd("100.00"));
    let refunded = purchase_events.iter().find(|e| e.event_id.starts_with("purchase-refunded:")).unwrap();
    let Some(Payload::PurchaseRefunded(refunded)) = EventEnvelope::decode(refunded.payload.as_slice()).unwrap().payload
    else {
        panic!("not a PurchaseRefunded")
    };
    assert_eq!(refunded.purchase_id, format!("fulfillment:{}", ids[0]), "the purchase PurchaseRecorded announced");
    assert_eq!((refunded.refunded_amount, refunded.source.as_str()), (usd("100.00"), "commercetools"));
}

async fn a_repeated_refund_revokes_once_and_a_different_one_is_refused(f: Fixture) {
    enrollments_answer(&f, 200, 10).await;
    let id = f.fulfilled().await;
    let first = f.revoke(revoke(&id, None)).await.unwrap();
    assert!(first.created);
    let job = first.fulfillment.unwrap();
    assert_eq!(state(&job), pb::FulfillmentState::Revoking);
    assert_eq!(job.refund.as_ref().unwrap().refunded_amount, usd("149.00"), "no amount is the whole price");

    let again = f.revoke(revoke(&id, usd("149"))).await.unwrap();
    assert!(!again.created, "the same refund, however the amount is written");
    assert_eq!(again.fulfillment.unwrap().refund, job.refund);

    let different = f.revoke(revoke(&id, usd("10.00"))).await.unwrap_err();
    assert_eq!(different.code(), Code::AlreadyExists);
    assert_eq!(kit::error::reason(&different).as_deref(), Some("REFUND_MISMATCH"));
    assert!(different.message().contains("l1"), "{}", different.message());
    assert_eq!(f.get(&id).await.refund, job.refund, "nothing changed");

    f.attempt_at(now()).await;
    assert_eq!(state(&f.get(&id).await), pb::FulfillmentState::Revoked);
    let after = f.revoke(revoke(&id, None)).await.unwrap();
    assert!(!after.created);
    assert_eq!(state(&after.fulfillment.unwrap()), pb::FulfillmentState::Revoked);
    assert!(f.store().claim(10, std::time::Duration::from_secs(30), now() + secs(3600)).await.unwrap().is_empty());
    assert_eq!(unenrollments(&f).await.len(), 1, "revoked once");

    assert_eq!(f.fulfillment.relay().publish_pending().await.unwrap(), 4, "completed, recorded, refunded, revoked");
    let purchases = f.events_for(proto::streams::PURCHASES, std::slice::from_ref(&id), 2).await;
    assert_eq!(purchases.len(), 2, "recorded once, refunded once");
}

async fn a_refund_of_a_pending_line_cancels_it_and_the_lms_is_never_called(f: Fixture) {
    enrollments_answer(&f, 200, 10).await;
    let id = f.fulfill(one_line(&order_number())).await.unwrap().fulfillments[0].fulfillment_id.clone();
    let cancelled = f.revoke(revoke(&id, None)).await.unwrap();
    assert!(cancelled.created);
    let job = cancelled.fulfillment.unwrap();
    assert_eq!(state(&job), pb::FulfillmentState::Cancelled);
    assert!(job.next_attempt_time.is_none());
    assert!(f.store().claim(10, std::time::Duration::from_secs(30), now() + secs(3600)).await.unwrap().is_empty());
    assert!(calls_to(&f, ENROLL).await.is_empty(), "the LMS was never called");
    assert_eq!(f.path(&id).await, [(None, JobState::Pending), (Some(JobState::Pending), JobState::Cancelled)]);
    assert_eq!(f.fulfillment.relay().publish_pending().await.unwrap(), 0, "nothing was bought, nothing to announce");
}

async fn a_refund_racing_an_inflight_enrollment_ends_with_the_learner_unenrolled(f: Fixture) {
    enrollments_answer(&f, 200, 10).await;
    let id = f.fulfill(one_line(&order_number())).await.unwrap().fulfillments[0].fulfillment_id.clone();
    // A worker has claimed the job and is about to call the LMS when the refund arrives.
    let claimed = f.claim_at(now()).await;
    let during = f.revoke(revoke(&id, None)).await.unwrap();
    assert!(during.created);
    let job = during.fulfillment.unwrap();
    assert_eq!(state(&job), pb::FulfillmentState::InProgress, "the attempt in flight decides");
    assert!(job.refund.is_some());

    f.fulfillment.workers().with_jitter(|| 1.0).attempt(claimed).await;
    let job = f.get(&id).await;
    assert_eq!((state(&job), job.attempts), (pb::FulfillmentState::Revoking, 0), "enrolled, so revoked next");
    f.attempt_at(now()).await;
    assert_eq!(state(&f.get(&id).await), pb::FulfillmentState::Revoked);

    let calls: Vec<serde_json::Value> =
        calls_to(&f, ENROLL).await.iter().map(|c| serde_json::from_slice(&c.body).unwrap()).collect();
    let active: Vec<&serde_json::Value> = calls.iter().map(|c| &c["is_active"]).collect();
    assert_eq!(active, [&json!(true), &json!(false)], "enrolled, then unenrolled: the learner ends unenrolled");
    use JobState::*;
    assert_eq!(
        f.path(&id).await,
        [
            (None, Pending),
            (Some(Pending), InProgress),
            (Some(InProgress), Succeeded),
            (Some(Succeeded), Revoking),
            (Some(Revoking), Revoking),
            (Some(Revoking), Revoked),
        ]
    );
}

async fn a_refunded_line_the_lms_may_have_enrolled_is_revoked_and_one_it_refused_is_cancelled(f: Fixture) {
    // A 503 while the refund arrives: the LMS may have enrolled before failing, so it is revoked.
    enrollments_answer(&f, 503, 1).await;
    let id = f.fulfill(one_line(&order_number())).await.unwrap().fulfillments[0].fulfillment_id.clone();
    let claimed = f.claim_at(now()).await;
    f.revoke(revoke(&id, None)).await.unwrap();
    f.fulfillment.workers().with_jitter(|| 1.0).attempt(claimed).await;
    let job = f.get(&id).await;
    assert_eq!((state(&job), job.attempts), (pb::FulfillmentState::Revoking, 0), "may have enrolled: revoked");
    assert_eq!(job.last_error.unwrap().lms_status, 503);
    assert_eq!(f.path(&id).await.last(), Some(&(Some(JobState::InProgress), JobState::Revoking)));
    // A line PENDING after a timeout or a 5xx is revoked too, not cancelled.
    enrollments_answer(&f, 503, 1).await;
    let retried = f.fulfill(one_line(&order_number())).await.unwrap().fulfillments[0].fulfillment_id.clone();
    let mut claimed = f.store().claim(10, std::time::Duration::from_secs(30), now()).await.unwrap();
    let claimed = claimed.remove(claimed.iter().position(|c| c.job.id == retried).unwrap());
    f.fulfillment.workers().with_jitter(|| 1.0).attempt(claimed).await;
    assert_eq!(state(&f.get(&retried).await), pb::FulfillmentState::Pending);
    let refunded = f.revoke(revoke(&retried, None)).await.unwrap().fulfillment.unwrap();
    assert_eq!(state(&refunded), pb::FulfillmentState::Revoking);

    // A 400 while the refund arrives: the LMS refused, nothing was granted: cancelled.
    enrollments_answer(&f, 400, 1).await;
    let refused = f.fulfill(one_line(&order_number())).await.unwrap().fulfillments[0].fulfillment_id.clone();
    let mut claimed = f.store().claim(10, std::time::Duration::from_secs(30), now()).await.unwrap();
    let claimed = claimed.remove(claimed.iter().position(|c| c.job.id == refused).unwrap());
    f.revoke(revoke(&refused, None)).await.unwrap();
    f.fulfillment.workers().with_jitter(|| 1.0).attempt(claimed).await;
    assert_eq!(state(&f.get(&refused).await), pb::FulfillmentState::Cancelled);
    // No purchase was announced for any of them, so no refund is.
    let outbox = f.store().unpublished(1000).await.unwrap();
    assert!(outbox.iter().all(|entry| !entry.event.event_id.starts_with("purchase-")), "{outbox:?}");
}

async fn revocation_retries_5xx_fails_on_4xx_and_is_redriven(f: Fixture) {
    enrollments_answer(&f, 200, 1).await;
    let id = f.fulfilled().await;
    unenrollments_answer(&f, 503, 1).await;
    unenrollments_answer(&f, 403, 1).await;
    enrollments_answer(&f, 200, 10).await;
    f.revoke(revoke(&id, None)).await.unwrap();

    f.attempt_at(now()).await;
    let job = f.get(&id).await;
    assert_eq!((state(&job), job.attempts), (pb::FulfillmentState::Revoking, 1), "5xx: retried");
    let error = job.last_error.clone().unwrap();
    assert_eq!((error.kind, error.lms_status), (pb::FulfillmentErrorKind::Unavailable as i32, 503));

    f.attempt_at(due(&job)).await;
    let job = f.get(&id).await;
    assert_eq!(state(&job), pb::FulfillmentState::RevokeFailed, "4xx: permanent");
    let error = job.last_error.clone().unwrap();
    assert_eq!((error.kind, error.lms_status), (pb::FulfillmentErrorKind::Rejected as i32, 403));
    assert!(job.next_attempt_time.is_none());

    let retried = f
        .client
        .clone()
        .retry_fulfillment(pb::RetryFulfillmentRequest { fulfillment_id: id.clone() })
        .await
        .unwrap()
        .into_inner()
        .fulfillment
        .unwrap();
    assert_eq!((state(&retried), retried.attempts), (pb::FulfillmentState::Revoking, 0));
    f.attempt_at(now()).await;
    assert_eq!(state(&f.get(&id).await), pb::FulfillmentState::Revoked);
    assert_eq!(unenrollments(&f).await.len(), 3);
}

async fn a_refunded_entitlement_is_expired_in_the_lms(f: Fixture) {
    let granted = "5b1c9c1e-7d0f-4d8e-9d59-3a3f7b0f2a11";
    Mock::given(method("GET"))
        .and(path(ENTITLE))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"results": []})))
        .mount(&f.lms)
        .await;
    lms_answers(&f, ENTITLE, ResponseTemplate::new(201).set_body_json(json!({"uuid": granted})), 1).await;
    let expire = format!("{ENTITLE}{granted}/");
    Mock::given(method("DELETE"))
        .and(path(expire.as_str()))
        .respond_with(ResponseTemplate::new(204))
        .mount(&f.lms)
        .await;
    let mut request = one_line(&order_number());
    request.line_items[0].product = Some(pb::line_item::Product::Entitlement(pb::ProgramEntitlement {
        course_uuid: "8a1f5f9e-0c55-4a53-9d6e-6b8c8d0e1f20".into(),
        mode: "verified".into(),
    }));
    let id = f.fulfill(request).await.unwrap().fulfillments[0].fulfillment_id.clone();
    f.attempt_at(now()).await;
    f.revoke(revoke(&id, None)).await.unwrap();
    f.attempt_at(now()).await;
    let job = f.get(&id).await;
    assert_eq!((state(&job), job.entitlement_uuid.as_str()), (pb::FulfillmentState::Revoked, granted));
    let deletes: Vec<Request> =
        f.lms.received_requests().await.unwrap().into_iter().filter(|r| r.method.as_str() == "DELETE").collect();
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].url.path(), expire);
    assert_eq!(deletes[0].headers.get("authorization").unwrap(), "JWT t1");
}

async fn bad_refunds_are_refused_naming_the_field_and_change_nothing(f: Fixture) {
    enrollments_answer(&f, 200, 1).await;
    let id = f.fulfilled().await;
    let number = f.get(&id).await.order_number;
    let cases: Vec<(&str, pb::RevokeFulfillmentRequest)> = vec![
        ("refunded_amount", revoke(&id, usd("149.01"))),
        ("refunded_amount", revoke(&id, Some(Money { currency_code: "EUR".into(), amount: "1".into() }))),
        ("refunded_amount.amount", revoke(&id, usd("-1"))),
        ("refunded_amount.currency_code", revoke(&id, Some(Money { currency_code: "usd".into(), amount: "1".into() }))),
        ("source", pb::RevokeFulfillmentRequest { source: String::new(), ..revoke(&id, None) }),
        ("reason", pb::RevokeFulfillmentRequest { reason: "a\u{7}".into(), ..revoke(&id, None) }),
        ("fulfillment_id", revoke("", None)),
    ];
    for (field, request) in cases {
        let refused = f.revoke(request).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{field}: {refused:?}");
        let fields: Vec<String> = kit::error::field_violations(&refused).into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, [field], "{refused:?}");
    }
    assert_eq!(f.revoke(revoke("no-such-job", None)).await.unwrap_err().code(), Code::NotFound);

    let refund = |number: &str, lines: Vec<pb::RefundedLine>| pb::RefundOrderRequest {
        order_number: number.into(),
        lines,
        reason: String::new(),
        source: "support".into(),
    };
    let line = |id: &str| pb::RefundedLine { line_item_id: id.into(), refunded_amount: None };
    let unknown_order = f.refund_order(refund("EDX-none", vec![line("l1")])).await.unwrap_err();
    assert_eq!(unknown_order.code(), Code::NotFound);
    let unknown_line = f.refund_order(refund(&number, vec![line("l9")])).await.unwrap_err();
    assert_eq!(unknown_line.code(), Code::NotFound);
    assert!(unknown_line.message().contains("lines[0].line_item_id"), "{}", unknown_line.message());
    let twice = f.refund_order(refund(&number, vec![line("l1"), line("l1")])).await.unwrap_err();
    assert_eq!(kit::error::field_violations(&twice)[0].0, "lines[1].line_item_id");
    let none = f.refund_order(refund(&number, vec![])).await.unwrap_err();
    assert_eq!(kit::error::field_violations(&none)[0].0, "lines");

    let job = f.get(&id).await;
    assert!(job.refund.is_none(), "nothing changed");
    assert_eq!(state(&job), pb::FulfillmentState::Succeeded);

    // A line that FAILED because the LMS refused it was never granted: its
    // refund is recorded and it is cancelled, so no re-drive can enrol it later.
    lms_answers(&f, ENROLL, ResponseTemplate::new(400), 1).await;
    let failed = f.fulfill(one_line(&order_number())).await.unwrap().fulfillments[0].fulfillment_id.clone();
    f.attempt_at(now()).await;
    let cancelled = f.revoke(revoke(&failed, None)).await.unwrap().fulfillment.unwrap();
    assert_eq!(state(&cancelled), pb::FulfillmentState::Cancelled);
    let redrive = pb::RetryFulfillmentRequest { fulfillment_id: failed.clone() };
    let refused = f.client.clone().retry_fulfillment(redrive).await.unwrap_err();
    assert_eq!(kit::error::reason(&refused).as_deref(), Some("NOT_FAILED"));
}

async fn a_refund_of_an_order_is_all_or_nothing(f: Fixture) {
    enrollments_answer(&f, 200, 10).await;
    let number = order_number();
    let accepted = f
        .fulfill(order(
            &number,
            vec![
                course_run("l1", "course-v1:edX+A+T1", "verified"),
                course_run("l2", "course-v1:edX+B+T1", "verified"),
            ],
        ))
        .await
        .unwrap();
    let ids: Vec<String> = accepted.fulfillments.iter().map(|j| j.fulfillment_id.clone()).collect();
    // l2 was refunded before, on other terms: refunding both now refuses l2 and leaves l1 alone.
    f.revoke(revoke(&ids[1], usd("1.00"))).await.unwrap();
    let refused = f
        .refund_order(pb::RefundOrderRequest {
            order_number: number.clone(),
            lines: vec![
                pb::RefundedLine { line_item_id: "l1".into(), refunded_amount: None },
                pb::RefundedLine { line_item_id: "l2".into(), refunded_amount: None },
            ],
            reason: "requested_by_customer".into(),
            source: "commercetools".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists);
    assert!(refused.message().contains("l2"), "{}", refused.message());
    let l1 = f.get(&ids[0]).await;
    assert_eq!((state(&l1), l1.refund), (pb::FulfillmentState::Pending, None), "l1 unchanged");
}

async fn the_lms_asks_for_a_refund_once_and_it_is_announced(f: Fixture) {
    enrollments_answer(&f, 200, 10).await;
    let id = f.fulfilled().await;
    let ask = |learner: pb::request_refund_request::Learner, run: &str| pb::RequestRefundRequest {
        learner: Some(learner),
        course_run_key: run.into(),
        reason: "unenrolled within the refund window".into(),
    };
    let by_name = pb::request_refund_request::Learner::LmsUsername("ada".into());
    let by_id = pb::request_refund_request::Learner::LmsUserId("4242".into());
    let run = "course-v1:edX+DemoX+2025_T1";
    let first = f.client.clone().request_refund(ask(by_name.clone(), run)).await.unwrap().into_inner();
    assert!(first.created);
    assert_eq!(first.fulfillment.as_ref().unwrap().fulfillment_id, id);
    let again = f.client.clone().request_refund(ask(by_id, run)).await.unwrap().into_inner();
    assert_eq!((again.created, again.refund_request_id.as_str()), (false, first.refund_request_id.as_str()));
    assert_eq!(
        state(&f.get(&id).await),
        pb::FulfillmentState::Succeeded,
        "a request moves no money and revokes nothing"
    );

    assert!(f.fulfillment.relay().publish_pending().await.unwrap() >= 3);
    let published = f.events_for(proto::streams::FULFILLMENTS, std::slice::from_ref(&id), 2).await;
    let requested = published.iter().find(|e| e.event_id == format!("refund-requested:{id}")).expect("announced once");
    let Some(Payload::RefundRequested(requested)) =
        EventEnvelope::decode(requested.payload.as_slice()).unwrap().payload
    else {
        panic!("not a RefundRequested")
    };
    assert_eq!(requested.refund_request_id, first.refund_request_id);
    assert_eq!((requested.course_run_key.as_str(), requested.line_item_id.as_str()), (run, "l1"));
    assert_eq!(requested.price, usd("149.00"));

    let unknown = f.client.clone().request_refund(ask(by_name.clone(), "course-v1:edX+Other+T1")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(kit::error::reason(&unknown).as_deref(), Some("NO_FULFILLED_LINE"));
    f.revoke(revoke(&id, None)).await.unwrap();
    let mut other = one_line(&order_number());
    other.line_items[0] = course_run("l1", "course-v1:edX+Two+2025_T1", "verified");
    let other_id = f.fulfill(other).await.unwrap().fulfillments[0].fulfillment_id.clone();
    f.revoke(revoke(&other_id, None)).await.unwrap();
    let refunded = f.client.clone().request_refund(ask(by_name, "course-v1:edX+Two+2025_T1")).await.unwrap_err();
    assert_eq!(refunded.code(), Code::FailedPrecondition);
    assert_eq!(kit::error::reason(&refunded).as_deref(), Some("ALREADY_REFUNDED"));

    let bad = pb::RequestRefundRequest { learner: None, course_run_key: "edX/Demo/T1".into(), reason: String::new() };
    let refused = f.client.clone().request_refund(bad).await.unwrap_err();
    let mut fields: Vec<String> = kit::error::field_violations(&refused).into_iter().map(|(f, _)| f).collect();
    fields.sort();
    assert_eq!(fields, ["course_run_key", "learner"]);
}

macro_rules! suite {
    ($name:ident, $kind:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_refund_of_one_line_deactivates_that_enrollment_only_and_is_announced() {
                super::a_refund_of_one_line_deactivates_that_enrollment_only_and_is_announced(fixture($kind).await)
                    .await;
            }
            #[tokio::test]
            async fn a_repeated_refund_revokes_once_and_a_different_one_is_refused() {
                super::a_repeated_refund_revokes_once_and_a_different_one_is_refused(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_refund_of_a_pending_line_cancels_it_and_the_lms_is_never_called() {
                super::a_refund_of_a_pending_line_cancels_it_and_the_lms_is_never_called(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_refund_racing_an_inflight_enrollment_ends_with_the_learner_unenrolled() {
                super::a_refund_racing_an_inflight_enrollment_ends_with_the_learner_unenrolled(fixture($kind).await)
                    .await;
            }
            #[tokio::test]
            async fn a_refunded_line_the_lms_may_have_enrolled_is_revoked_and_one_it_refused_is_cancelled() {
                super::a_refunded_line_the_lms_may_have_enrolled_is_revoked_and_one_it_refused_is_cancelled(
                    fixture($kind).await,
                )
                .await;
            }
            #[tokio::test]
            async fn revocation_retries_5xx_fails_on_4xx_and_is_redriven() {
                super::revocation_retries_5xx_fails_on_4xx_and_is_redriven(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_refunded_entitlement_is_expired_in_the_lms() {
                super::a_refunded_entitlement_is_expired_in_the_lms(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn bad_refunds_are_refused_naming_the_field_and_change_nothing() {
                super::bad_refunds_are_refused_naming_the_field_and_change_nothing(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn the_lms_asks_for_a_refund_once_and_it_is_announced() {
                super::the_lms_asks_for_a_refund_once_and_it_is_announced(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_refund_of_an_order_is_all_or_nothing() {
                super::a_refund_of_an_order_is_all_or_nothing(fixture($kind).await).await;
            }
        }
    };
}

suite!(postgres, Backend::Postgres);
suite!(sqlite, Backend::Sqlite);
