//! Events out: what a SUCCEEDED job announces ([`completion_events`], written
//! to the outbox in the same transaction as the state change), and the
//! [`OutboxRelay`] that publishes outbox rows to the event bus.
//!
//! Event ids are derived from the fulfillment id, and the bus publishes an id
//! once: a relay that dies between publishing and stamping a row publishes it
//! again on restart, and nothing new reaches the stream.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kit::bus::EventBus;
use kit::time::to_timestamp;
use kit::trace::TextContext;
use prost::Message;
use proto::commerce::events::v1::{self as events, event_envelope::Payload};
use proto::commerce::r#type::v1::Money;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::domain::Product;
use crate::store::{FulfillmentJob, OutboxEvent, Store};

/// The `FulfillmentCompleted` and `PurchaseRecorded` events of a job that just succeeded.
pub fn completion_events(
    job: &FulfillmentJob,
    entitlement_uuid: Option<&str>,
    completed_at: DateTime<Utc>,
    trace: &TextContext,
) -> Vec<OutboxEvent> {
    let spec = &job.spec;
    let (course_run_key, course_uuid) = match &spec.line.product {
        Product::CourseRun { course_run_key, .. } => (course_run_key.as_str().to_string(), String::new()),
        Product::Entitlement { course_uuid, .. } => (String::new(), course_uuid.clone()),
    };
    let completed = events::FulfillmentCompleted {
        fulfillment_id: job.id.clone(),
        order_number: spec.header.order_number.clone(),
        line_item_id: spec.line.line_item_id.clone(),
        lms_user_id: spec.learner.lms_user_id.clone(),
        lms_username: spec.learner.lms_username.clone(),
        course_run_key,
        course_uuid,
        mode: spec.line.product.mode().as_str().to_string(),
        entitlement_uuid: entitlement_uuid.unwrap_or_default().to_string(),
        completed_at: Some(to_timestamp(completed_at)),
    };
    let purchase = events::PurchaseRecorded {
        purchase_id: format!("fulfillment:{}", job.id),
        lms_user_id: spec.learner.lms_user_id.clone(),
        username: spec.learner.lms_username.clone(),
        order_number: spec.header.order_number.clone(),
        product_key: spec.line.product.key().to_string(),
        title: spec.line.title.clone(),
        price: spec
            .line
            .price
            .as_ref()
            .map(|p| Money { currency_code: p.currency_code.clone(), amount: p.amount.clone() }),
        purchased_at: Some(to_timestamp(spec.header.date_placed)),
        source: if spec.header.source_system.is_empty() {
            crate::NAME.into()
        } else {
            spec.header.source_system.clone()
        },
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

/// Publishes outbox rows to the bus, oldest first, and stamps them published.
pub struct OutboxRelay {
    store: Arc<dyn Store>,
    bus: Arc<dyn EventBus>,
    wake: Arc<Notify>,
    /// How often to look when nobody in this process wakes the relay (rows
    /// written by another process).
    pub poll: Duration,
    /// Rows per round.
    pub batch: i64,
}

impl OutboxRelay {
    /// A relay from `store` to `bus`; `wake` is notified whenever this process writes outbox rows.
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn EventBus>, wake: Arc<Notify>) -> Self {
        Self { store, bus, wake, poll: Duration::from_secs(1), batch: 256 }
    }

    /// Publishes until `shutdown`, waiting for work without polling faster than `poll`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let wait = match self.publish_pending().await {
                Ok(0) => {
                    failures = 0;
                    self.poll
                }
                Ok(_) => {
                    failures = 0;
                    continue;
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let wait = Duration::from_millis(100).saturating_mul(2u32.saturating_pow(failures.min(6)));
                    tracing::warn!(%error, retry_in = ?wait, "outbox relay could not publish; retrying");
                    wait
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One round: publishes up to `batch` rows and answers how many.
    pub async fn publish_pending(&self) -> Result<usize, RelayError> {
        let entries = self.store.unpublished(self.batch).await?;
        let mut published = Vec::with_capacity(entries.len());
        for entry in &entries {
            let result = self.bus.publish(&entry.event.stream, &entry.event.event_id, &entry.event.payload).await;
            if let Err(error) = result {
                // Stamp what did go out, so it is not offered to the bus again.
                self.store.mark_published(&published, Utc::now()).await?;
                return Err(error.into());
            }
            published.push(entry.seq);
        }
        if !published.is_empty() {
            self.store.mark_published(&published, Utc::now()).await?;
        }
        Ok(published.len())
    }
}

/// Why a relay round stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The outbox could not be read or stamped.
    #[error("outbox: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The bus refused or could not be reached.
    #[error("event bus: {0}")]
    Bus(#[from] kit::bus::BusError),
}
