//! Events in: purchases and their refunds ([`PurchaseRecorder`]) and
//! retirements ([`LearnerRetirer`]).
//!
//! Purchases in from the stream: each batch is decoded and validated, the
//! valid purchases are stored in one idempotent insert (and the refunds in
//! another; a refund may arrive before its purchase), and only then
//! acknowledged (by [`kit::bus::consumer::Consumer`]); an undecodable or
//! invalid message is refused with its reason and goes to the dead-letter
//! stream. Each stored purchase continues its producer's trace.

use std::sync::Arc;

use kit::bus::Delivery;
use kit::bus::consumer::{BatchHandler, DecodedBatch, Verdict, decode_batch};
use kit::trace::TextContext;
use prost::Message;
use proto::commerce::events::v1::{EventEnvelope, event_envelope::Payload};

use vocab::Retirement;

use crate::domain::{Purchase, Violation};
use crate::refund::PurchaseRefund;
use crate::store::Store;

/// The consumer group PurchaseHistory reads the purchases stream in.
pub const GROUP: &str = "purchase-history";

/// Stores the purchases of each batch once.
pub struct PurchaseRecorder {
    store: Arc<dyn Store>,
}

impl PurchaseRecorder {
    /// A recorder into `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

/// What a message on the purchases stream says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PurchaseEvent {
    /// A purchase to store (`PurchaseRecorded`).
    Recorded(Purchase),
    /// A purchase refunded (`PurchaseRefunded`).
    Refunded(PurchaseRefund),
}

/// Why a message on the purchases stream can never be stored (its text is the dead letter's reason).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Not an envelope at all.
    #[error("not an EventEnvelope: {0}")]
    NotAnEnvelope(#[from] prost::DecodeError),
    /// A purchase or a refund with bad fields, every one named.
    #[error("invalid {what}: {}", listed(violations))]
    Invalid {
        /// `purchase` or `refund`.
        what: &'static str,
        /// The bad fields.
        violations: Vec<Violation>,
    },
    /// Another event type.
    #[error("not a purchase or a refund: {0}")]
    OtherEvent(String),
    /// An envelope without its event.
    #[error("the envelope has no payload")]
    NoPayload,
}

/// Each violation as `path: reason`, joined.
fn listed(violations: &[Violation]) -> String {
    let listed: Vec<String> = violations.iter().map(|v| format!("{}: {}", v.field_path, v.reason)).collect();
    listed.join("; ")
}

/// A message's event and trace, or why it can never be stored: the
/// consumer's whole parser, public so the seam's property test
/// (`tests/tests/seams.rs`) holds Fulfillment's events against it.
pub fn decode(payload: &[u8]) -> Result<(PurchaseEvent, TextContext), Refused> {
    let envelope = EventEnvelope::decode(payload)?;
    let trace = TextContext { traceparent: envelope.traceparent, tracestate: envelope.tracestate };
    let invalid = |what: &'static str| move |violations| Refused::Invalid { what, violations };
    let event = match envelope.payload {
        Some(Payload::PurchaseRecorded(event)) => {
            PurchaseEvent::Recorded(Purchase::from_event(&event).map_err(invalid("purchase"))?)
        }
        Some(Payload::PurchaseRefunded(event)) => {
            PurchaseEvent::Refunded(PurchaseRefund::from_event(&event).map_err(invalid("refund"))?)
        }
        Some(_) => return Err(Refused::OtherEvent(envelope.event_type)),
        None => return Err(Refused::NoPayload),
    };
    Ok((event, trace))
}

#[async_trait::async_trait]
impl BatchHandler for PurchaseRecorder {
    async fn handle(&self, batch: &[Delivery]) -> Result<Vec<Verdict>, Box<dyn std::error::Error + Send + Sync>> {
        let DecodedBatch { events, verdicts } = decode_batch(batch, decode);
        let (mut purchases, mut refunds) = (Vec::new(), Vec::new());
        for (event, _) in &events {
            match event {
                PurchaseEvent::Recorded(purchase) => purchases.push(purchase.clone()),
                PurchaseEvent::Refunded(refund) => refunds.push(refund.clone()),
            }
        }
        let stored = self.store.insert_batch(&purchases).await?;
        let refunded = self.store.insert_refunds(&refunds).await?;
        tracing::debug!(received = batch.len(), valid = purchases.len(), new = stored, refunded, "purchases stored");
        for (event, trace) in &events {
            // A span per event, child of the producer's: one trace shows
            // order → fulfillment → purchase stored (or refund → purchase refunded).
            let (name, id) = match event {
                PurchaseEvent::Recorded(purchase) => ("purchase stored", purchase.purchase_id.to_string()),
                PurchaseEvent::Refunded(refund) => ("purchase refunded", refund.purchase_id().to_string()),
            };
            let span = tracing::info_span!(
                "purchase stored",
                otel.name = name,
                purchase.id = %id,
                otel.kind = "consumer",
            );
            trace.set_parent_of(&span);
            span.in_scope(|| tracing::debug!("stored"));
        }
        Ok(verdicts)
    }
}

/// Applies `CustomerRetired` events: the learner's purchases get the
/// placeholder username, and so does any purchase of theirs stored later.
pub type LearnerRetirer = kit::retirement::LearnerRetirer<dyn Store>;

#[async_trait::async_trait]
impl kit::retirement::RetireLearners for dyn Store {
    const CHANGED_ROWS: &'static str = "purchases";

    async fn retire_learners(
        &self,
        retirements: &[Retirement],
    ) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Store::retire_learners(self, retirements).await?)
    }
}
