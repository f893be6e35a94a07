//! Events out: what a SUCCEEDED job announces ([`completion_events`]), what a
//! recorded refund and a REVOKED job announce ([`refund_recorded_event`],
//! [`revocation_events`]), what a FAILED or REVOKE_FAILED one announces
//! ([`failure_events`]), and the outcome webhooks a finished job owes its
//! source system ([`outcome_announcements`]) — each written in the same
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

use crate::domain::{JobState, Product, Refund, RefundRequest};
use crate::store::{FulfillmentJob, OutboxEvent};
use crate::webhook::store::NewDelivery;
use crate::webhook::{WebhookSources, notice};

/// The event `events::$event` of `$job`'s line: the fields naming the line
/// ([`LineFields`]), which the outcome events all carry, then the event's own.
macro_rules! line_event {
    ($event:ident, $job:expr, { $($field:ident: $value:expr),* $(,)? }) => {{
        let line = LineFields::of($job);
        events::$event {
            fulfillment_id: line.fulfillment_id,
            order_number: line.order_number,
            line_item_id: line.line_item_id,
            lms_user_id: line.lms_user_id,
            lms_username: line.lms_username,
            course_run_key: line.course_run_key,
            course_uuid: line.course_uuid,
            $($field: $value),*
        }
    }};
}

/// The `FulfillmentCompleted` and `PurchaseRecorded` events of a job that just succeeded.
pub fn completion_events(
    job: &FulfillmentJob,
    entitlement_uuid: Option<&str>,
    completed_at: DateTime<Utc>,
    trace: &TextContext,
) -> Vec<OutboxEvent> {
    let spec = &job.spec;
    let completed = line_event!(FulfillmentCompleted, job, {
        mode: spec.line.product.mode().as_str().to_string(),
        entitlement_uuid: entitlement_uuid.unwrap_or_default().to_string(),
        completed_at: Some(to_timestamp(completed_at)),
    });
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
            completed_event_id(&job.id),
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
    let LineFields { order_number, line_item_id, lms_user_id, .. } = LineFields::of(job);
    let RefundFields { refunded_amount, reason, source } = RefundFields::of(refund);
    let refunded = events::PurchaseRefunded {
        purchase_id: purchase_id(job),
        lms_user_id,
        order_number,
        line_item_id,
        refunded_amount,
        reason,
        source,
        refunded_at: Some(to_timestamp(refund.requested_at)),
    };
    let trace = trace_of(&refund.traceparent);
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
    let RefundFields { refunded_amount, reason, source } = RefundFields::of(refund);
    let revoked = line_event!(FulfillmentRevoked, job, {
        entitlement_uuid: entitlement_uuid.or(job.entitlement_uuid.as_deref()).unwrap_or_default().to_string(),
        refunded_amount: refunded_amount,
        reason: reason,
        source: source,
        revoked_at: Some(to_timestamp(revoked_at)),
    });
    vec![envelope(
        revoked_event_id(&job.id),
        proto::streams::FULFILLMENTS,
        "commerce.events.v1.FulfillmentRevoked",
        revoked_at,
        trace,
        Payload::FulfillmentRevoked(revoked),
    )]
}

/// The `RefundRequested` event of a refund the LMS asked for, in the asking call's trace.
pub fn refund_requested_event(job: &FulfillmentJob, request: &RefundRequest, traceparent: &str) -> OutboxEvent {
    let LineFields { fulfillment_id, order_number, line_item_id, lms_user_id, course_run_key, .. } =
        LineFields::of(job);
    let requested = events::RefundRequested {
        refund_request_id: request.id.clone(),
        fulfillment_id,
        order_number,
        line_item_id,
        lms_user_id,
        course_run_key,
        price: Some(Money::from(&job.spec.line.price)),
        reason: request.reason.to_string(),
        requested_at: Some(to_timestamp(request.requested_at)),
    };
    let trace = trace_of(traceparent);
    envelope(
        format!("refund-requested:{}", job.id),
        proto::streams::FULFILLMENTS,
        "commerce.events.v1.RefundRequested",
        request.requested_at,
        &trace,
        Payload::RefundRequested(requested),
    )
}

/// The id of job `id`'s `FulfillmentCompleted` (its SUCCEEDED webhook carries it too).
pub fn completed_event_id(id: &str) -> String {
    format!("fulfillment-completed:{id}")
}

/// The id of job `id`'s `FulfillmentRevoked` (its REVOKED webhook carries it too).
pub fn revoked_event_id(id: &str) -> String {
    format!("fulfillment-revoked:{id}")
}

/// The id of the event (and webhook) announcing that job `id` reached `state` at `at`;
/// None for a state nobody is told of. A job fails again after `RetryFulfillment`,
/// so a failure's id names its time: each failure is an event of its own.
pub fn outcome_event_id(id: &str, state: JobState, at: DateTime<Utc>) -> Option<String> {
    match state {
        JobState::Succeeded => Some(completed_event_id(id)),
        JobState::Revoked => Some(revoked_event_id(id)),
        JobState::Failed => Some(format!("fulfillment-failed:{id}:{}", at.timestamp_micros())),
        JobState::RevokeFailed => Some(format!("fulfillment-revocation-failed:{id}:{}", at.timestamp_micros())),
        _ => None,
    }
}

/// The `FulfillmentFailed` (at FAILED) or `FulfillmentRevocationFailed` (at
/// REVOKE_FAILED) event of a job as it was just recorded; none in another state.
pub fn failure_events(job: &FulfillmentJob, failed_at: DateTime<Utc>, trace: &TextContext) -> Vec<OutboxEvent> {
    let spec = &job.spec;
    let error = Some(events::FulfillmentError {
        kind: job.last_error.as_ref().map(|e| e.kind.as_str()).unwrap_or_default().to_string(),
        lms_status: job.last_error.as_ref().and_then(|e| e.lms_status).map_or(0, i32::from),
        message: redacted_error_message(job),
    });
    let source_system = spec.header.source_system.as_deref().unwrap_or_default().to_string();
    let attempts = i32::try_from(job.attempts).unwrap_or(i32::MAX);
    let Some(event_id) = outcome_event_id(&job.id, job.state, failed_at) else { return Vec::new() };
    let (event_type, payload) = match job.state {
        JobState::Failed => (
            "commerce.events.v1.FulfillmentFailed",
            Payload::FulfillmentFailed(line_event!(FulfillmentFailed, job, {
                mode: spec.line.product.mode().as_str().to_string(),
                source_system: source_system,
                error: error,
                attempts: attempts,
                failed_at: Some(to_timestamp(failed_at)),
            })),
        ),
        JobState::RevokeFailed => (
            "commerce.events.v1.FulfillmentRevocationFailed",
            Payload::FulfillmentRevocationFailed(line_event!(FulfillmentRevocationFailed, job, {
                source_system: source_system,
                error: error,
                attempts: attempts,
                failed_at: Some(to_timestamp(failed_at)),
            })),
        ),
        _ => return Vec::new(),
    };
    vec![envelope(event_id, proto::streams::FULFILLMENTS, event_type, failed_at, trace, payload)]
}

/// What a job that just finished an attempt announces besides the worker's
/// events, for each state it passed through (`path`, the last being
/// `job.state`): the failure event of FAILED or REVOKE_FAILED, and, when its
/// order's source system has a webhook, one delivery per outcome (SUCCEEDED,
/// FAILED, REVOKED, REVOKE_FAILED) for the webhook sender. In the current span's trace.
pub fn outcome_announcements(
    job: &FulfillmentJob,
    path: &[JobState],
    webhooks: &WebhookSources,
    now: DateTime<Utc>,
) -> (Vec<OutboxEvent>, Vec<NewDelivery>) {
    let trace = TextContext::current();
    let events = failure_events(job, now, &trace);
    let deliveries = match job.spec.header.source_system.as_deref() {
        Some(source) if webhooks.includes(source) => path
            .iter()
            .filter_map(|&state| {
                let event_id = outcome_event_id(&job.id, state, now)?;
                let failed = matches!(state, JobState::Failed | JobState::RevokeFailed);
                let error = job.last_error.as_ref().filter(|_| failed).map(|e| notice::NoticeError {
                    kind: e.kind.as_str().to_string(),
                    lms_status: e.lms_status,
                    message: redacted_error_message(job),
                });
                let notice = notice::OutcomeNotice {
                    event_id: event_id.clone(),
                    fulfillment_id: job.id.clone(),
                    order_number: job.spec.header.order_number.to_string(),
                    order_id: job.spec.header.order_id.as_ref().map(ToString::to_string),
                    line_item_id: job.spec.line.line_item_id.to_string(),
                    source_system: source.to_string(),
                    state: state.as_str().to_string(),
                    error,
                    occurred_at: now,
                };
                Some(NewDelivery {
                    event_id,
                    source_system: source.to_string(),
                    fulfillment_id: job.id.clone(),
                    body: notice.to_json(),
                    traceparent: trace.traceparent.clone(),
                })
            })
            .collect(),
        _ => Vec::new(),
    };
    (events, deliveries)
}

/// The job's last error message with the learner's username, where the LMS
/// echoed it, replaced by `<learner>`: what leaves the mesh names the line, not the learner.
fn redacted_error_message(job: &FulfillmentJob) -> String {
    let message = job.last_error.as_ref().map(|e| e.message.as_str()).unwrap_or_default();
    let username = job.spec.learner.lms_username.as_str();
    if username.is_empty() { message.to_string() } else { message.replace(username, "<learner>") }
}

/// The fields naming a job's line that its events carry, as the events spell them.
struct LineFields {
    fulfillment_id: String,
    order_number: String,
    line_item_id: String,
    lms_user_id: String,
    lms_username: String,
    /// The course run key, or empty for an entitlement.
    course_run_key: String,
    /// The course UUID of an entitlement, or empty.
    course_uuid: String,
}

impl LineFields {
    fn of(job: &FulfillmentJob) -> Self {
        let spec = &job.spec;
        let (course_run_key, course_uuid) = match &spec.line.product {
            Product::CourseRun { course_run_key, .. } => (course_run_key.to_string(), String::new()),
            Product::Entitlement { course_uuid, .. } => (String::new(), course_uuid.to_string()),
        };
        Self {
            fulfillment_id: job.id.clone(),
            order_number: spec.header.order_number.to_string(),
            line_item_id: spec.line.line_item_id.to_string(),
            lms_user_id: spec.learner.lms_user_id.to_string(),
            lms_username: spec.learner.lms_username.to_string(),
            course_run_key,
            course_uuid,
        }
    }
}

/// The fields of a refund its events carry.
struct RefundFields {
    refunded_amount: Option<Money>,
    reason: String,
    source: String,
}

impl RefundFields {
    fn of(refund: &Refund) -> Self {
        Self {
            refunded_amount: Some(Money::from(refund.terms.amount())),
            reason: refund.terms.reason().to_string(),
            source: refund.terms.source().to_string(),
        }
    }
}

/// The trace of a call that recorded `traceparent` (no vendor state is kept).
fn trace_of(traceparent: &str) -> TextContext {
    TextContext { traceparent: traceparent.to_owned(), tracestate: String::new() }
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
        Payload::FulfillmentFailed(failed) if failed.lms_user_id == learner => &mut failed.lms_username,
        Payload::FulfillmentRevocationFailed(failed) if failed.lms_user_id == learner => &mut failed.lms_username,
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
