//! Events out: what a SUCCEEDED job announces ([`completion_events`]), what a
//! recorded refund and a REVOKED job announce ([`refund_recorded_event`],
//! [`revocation_events`]) — each written to the outbox in the same
//! transaction as the state change — and the
//! [`OutboxRelay`] (`kit::outbox::Relay`, shared with every service that has
//! an outbox) that publishes outbox rows to the event bus and deletes them
//! after the retention window.
//!
//! Event ids are derived from the fulfillment id, and the bus publishes an id
//! once: a relay that dies between publishing and stamping a row publishes it
//! again on restart, and nothing new reaches the stream.

use chrono::{DateTime, Utc};
pub use kit::outbox::{Relay as OutboxRelay, RelayError};
use kit::time::to_timestamp;
use kit::trace::TextContext;
use prost::Message;
use proto::commerce::events::v1::{self as events, event_envelope::Payload};
use proto::commerce::r#type::v1::Money;
use vocab::{LmsUserId, LmsUsername};

use crate::domain::{Product, Refund, RefundRequest};
use crate::store::{FulfillmentJob, OutboxEvent};

/// The `FulfillmentCompleted` and `PurchaseRecorded` events of a job that just succeeded.
pub fn completion_events(
    job: &FulfillmentJob,
    entitlement_uuid: Option<&str>,
    completed_at: DateTime<Utc>,
    trace: &TextContext,
) -> Vec<OutboxEvent> {
    let spec = &job.spec;
    let (course_run_key, course_uuid) = product_keys(&spec.line.product);
    let completed = events::FulfillmentCompleted {
        fulfillment_id: job.id.clone(),
        order_number: spec.header.order_number.to_string(),
        line_item_id: spec.line.line_item_id.to_string(),
        lms_user_id: spec.learner.lms_user_id.to_string(),
        lms_username: spec.learner.lms_username.to_string(),
        course_run_key,
        course_uuid,
        mode: spec.line.product.mode().as_str().to_string(),
        entitlement_uuid: entitlement_uuid.unwrap_or_default().to_string(),
        completed_at: Some(to_timestamp(completed_at)),
    };
    // Every field below is a vocab value Fulfillment parsed, so PurchaseHistory,
    // parsing the same fields with the same types, accepts it.
    let purchase = events::PurchaseRecorded {
        purchase_id: purchase_id(job),
        lms_user_id: spec.learner.lms_user_id.to_string(),
        username: spec.learner.lms_username.to_string(),
        order_number: spec.header.order_number.to_string(),
        product_key: spec.line.product.key().to_string(),
        title: spec.line.title.to_string(),
        price: Some(Money::from(&spec.line.price)),
        purchased_at: Some(to_timestamp(spec.header.date_placed)),
        source: spec.header.source_system.as_deref().unwrap_or(crate::NAME).to_string(),
    };
    vec![
        envelope(
            format!("fulfillment-completed:{}", job.id),
            proto::streams::FULFILLMENTS,
            "commerce.events.v1.FulfillmentCompleted",
            completed_at,
            trace,
            Payload::FulfillmentCompleted(completed),
        ),
        envelope(
            format!("purchase-recorded:{}", job.id),
            proto::streams::PURCHASES,
            "commerce.events.v1.PurchaseRecorded",
            completed_at,
            trace,
            Payload::PurchaseRecorded(purchase),
        ),
    ]
}

/// The `PurchaseRefunded` event of a refund recorded for a job that had
/// SUCCEEDED: the purchase its `PurchaseRecorded` announced is refunded.
/// It carries the refunding call's trace.
pub fn refund_recorded_event(job: &FulfillmentJob, refund: &Refund) -> OutboxEvent {
    let spec = &job.spec;
    let refunded = events::PurchaseRefunded {
        purchase_id: purchase_id(job),
        lms_user_id: spec.learner.lms_user_id.to_string(),
        order_number: spec.header.order_number.to_string(),
        line_item_id: spec.line.line_item_id.to_string(),
        refunded_amount: Some(Money::from(refund.terms.amount())),
        reason: refund.terms.reason().to_string(),
        source: refund.terms.source().to_string(),
        refunded_at: Some(to_timestamp(refund.requested_at)),
    };
    let trace = TextContext { traceparent: refund.traceparent.clone(), tracestate: String::new() };
    envelope(
        format!("purchase-refunded:{}", job.id),
        proto::streams::PURCHASES,
        "commerce.events.v1.PurchaseRefunded",
        refund.requested_at,
        &trace,
        Payload::PurchaseRefunded(refunded),
    )
}

/// The `FulfillmentRevoked` event of a job the LMS just revoked (`entitlement_uuid`:
/// the entitlement expired, when the revocation found one the job had not stored).
pub fn revocation_events(
    job: &FulfillmentJob,
    entitlement_uuid: Option<&str>,
    refund: &Refund,
    revoked_at: DateTime<Utc>,
    trace: &TextContext,
) -> Vec<OutboxEvent> {
    let spec = &job.spec;
    let (course_run_key, course_uuid) = product_keys(&spec.line.product);
    let revoked = events::FulfillmentRevoked {
        fulfillment_id: job.id.clone(),
        order_number: spec.header.order_number.to_string(),
        line_item_id: spec.line.line_item_id.to_string(),
        lms_user_id: spec.learner.lms_user_id.to_string(),
        lms_username: spec.learner.lms_username.to_string(),
        course_run_key,
        course_uuid,
        entitlement_uuid: entitlement_uuid.or(job.entitlement_uuid.as_deref()).unwrap_or_default().to_string(),
        refunded_amount: Some(Money::from(refund.terms.amount())),
        reason: refund.terms.reason().to_string(),
        source: refund.terms.source().to_string(),
        revoked_at: Some(to_timestamp(revoked_at)),
    };
    vec![envelope(
        format!("fulfillment-revoked:{}", job.id),
        proto::streams::FULFILLMENTS,
        "commerce.events.v1.FulfillmentRevoked",
        revoked_at,
        trace,
        Payload::FulfillmentRevoked(revoked),
    )]
}

/// The `RefundRequested` event of a refund the LMS asked for, in the asking call's trace.
pub fn refund_requested_event(job: &FulfillmentJob, request: &RefundRequest, traceparent: &str) -> OutboxEvent {
    let spec = &job.spec;
    let (course_run_key, _) = product_keys(&spec.line.product);
    let requested = events::RefundRequested {
        refund_request_id: request.id.clone(),
        fulfillment_id: job.id.clone(),
        order_number: spec.header.order_number.to_string(),
        line_item_id: spec.line.line_item_id.to_string(),
        lms_user_id: spec.learner.lms_user_id.to_string(),
        course_run_key,
        price: Some(Money::from(&spec.line.price)),
        reason: request.reason.to_string(),
        requested_at: Some(to_timestamp(request.requested_at)),
    };
    let trace = TextContext { traceparent: traceparent.to_owned(), tracestate: String::new() };
    envelope(
        format!("refund-requested:{}", job.id),
        proto::streams::FULFILLMENTS,
        "commerce.events.v1.RefundRequested",
        request.requested_at,
        &trace,
        Payload::RefundRequested(requested),
    )
}

/// The event fields of a product: (course run key, course UUID), one of them empty.
fn product_keys(product: &Product) -> (String, String) {
    match product {
        Product::CourseRun { course_run_key, .. } => (course_run_key.to_string(), String::new()),
        Product::Entitlement { course_uuid, .. } => (String::new(), course_uuid.to_string()),
    }
}

/// The purchase a fulfilled job announced.
fn purchase_id(job: &FulfillmentJob) -> String {
    format!("fulfillment:{}", job.id)
}

/// `payload` (an encoded envelope) with the retired learner's username
/// replaced by `placeholder`, when it names learner `lms_user_id`; None when
/// it does not (or is no event of ours, which is left as it is).
pub fn scrub(payload: &[u8], lms_user_id: LmsUserId, placeholder: &LmsUsername) -> Option<Vec<u8>> {
    let mut envelope = events::EventEnvelope::decode(payload).ok()?;
    let learner = lms_user_id.to_string();
    let username = match envelope.payload.as_mut()? {
        Payload::PurchaseRecorded(purchase) if purchase.lms_user_id == learner => &mut purchase.username,
        Payload::FulfillmentCompleted(completed) if completed.lms_user_id == learner => &mut completed.lms_username,
        Payload::FulfillmentRevoked(revoked) if revoked.lms_user_id == learner => &mut revoked.lms_username,
        _ => return None,
    };
    if username == placeholder.as_str() {
        return None;
    }
    *username = placeholder.to_string();
    Some(envelope.encode_to_vec())
}

fn envelope(
    event_id: String,
    stream: &str,
    event_type: &str,
    occurred_at: DateTime<Utc>,
    trace: &TextContext,
    payload: Payload,
) -> OutboxEvent {
    let envelope = events::EventEnvelope {
        event_id: event_id.clone(),
        event_type: event_type.into(),
        occurred_at: Some(to_timestamp(occurred_at)),
        traceparent: trace.traceparent.clone(),
        tracestate: trace.tracestate.clone(),
        payload: Some(payload),
    };
    OutboxEvent { event_id, stream: stream.into(), payload: envelope.encode_to_vec() }
}
