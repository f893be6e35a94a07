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
use kit::bus::consumer::{BatchHandler, Verdict};
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

/// A message's event and trace, or why it can never be stored: the
/// consumer's whole parser, public so the seam's property test
/// (`tests/tests/seams.rs`) holds Fulfillment's events against it.
pub fn decode(payload: &[u8]) -> Result<(PurchaseEvent, TextContext), String> {
    let envelope = EventEnvelope::decode(payload).map_err(|e| format!("not an EventEnvelope: {e}"))?;
    let trace = TextContext { traceparent: envelope.traceparent, tracestate: envelope.tracestate };
    let listed = |what: &str, violations: Vec<Violation>| {
        let listed: Vec<String> = violations.iter().map(|v| format!("{}: {}", v.field_path, v.reason)).collect();
        format!("invalid {what}: {}", listed.join("; "))
    };
    let event = match envelope.payload {
        Some(Payload::PurchaseRecorded(event)) => {
            PurchaseEvent::Recorded(Purchase::from_event(&event).map_err(|v| listed("purchase", v))?)
        }
        Some(Payload::PurchaseRefunded(event)) => {
            PurchaseEvent::Refunded(PurchaseRefund::from_event(&event).map_err(|v| listed("refund", v))?)
        }
        Some(_) => return Err(format!("not a purchase or a refund: {}", envelope.event_type)),
        None => return Err("the envelope has no payload".into()),
    };
    Ok((event, trace))
}

#[async_trait::async_trait]
impl BatchHandler for PurchaseRecorder {
    async fn handle(&self, batch: &[Delivery]) -> Result<Vec<Verdict>, Box<dyn std::error::Error + Send + Sync>> {
        let decoded: Vec<Result<(PurchaseEvent, TextContext), String>> =
            batch.iter().map(|delivery| decode(&delivery.payload)).collect();
        let (mut purchases, mut refunds) = (Vec::new(), Vec::new());
        for (event, _) in decoded.iter().flatten() {
            match event {
                PurchaseEvent::Recorded(purchase) => purchases.push(purchase.clone()),
                PurchaseEvent::Refunded(refund) => refunds.push(refund.clone()),
            }
        }
        let stored = self.store.insert_batch(&purchases).await?;
        let refunded = self.store.insert_refunds(&refunds).await?;
        tracing::debug!(received = batch.len(), valid = purchases.len(), new = stored, refunded, "purchases stored");
        Ok(decoded
            .into_iter()
            .map(|result| match result {
                Ok((event, trace)) => {
                    // A span per event, child of the producer's: one trace shows
                    // order → fulfillment → purchase stored (or refund → purchase refunded).
                    let (name, id) = match &event {
                        PurchaseEvent::Recorded(purchase) => ("purchase stored", purchase.purchase_id.to_string()),
                        PurchaseEvent::Refunded(refund) => ("purchase refunded", refund.purchase_id.to_string()),
                    };
                    let span = tracing::info_span!(
                        "purchase stored",
                        otel.name = name,
                        purchase.id = %id,
                        otel.kind = "consumer",
                    );
                    trace.set_parent_of(&span);
                    span.in_scope(|| tracing::debug!("stored"));
                    Verdict::Settled
                }
                Err(reason) => Verdict::Refused(reason),
            })
            .collect())
    }
}

/// Applies `CustomerRetired` events: the learner's purchases get the
/// placeholder username, and so does any purchase of theirs stored later.
pub struct LearnerRetirer {
    store: Arc<dyn Store>,
}

impl LearnerRetirer {
    /// A retirer over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

#[async_trait::async_trait]
impl BatchHandler for LearnerRetirer {
    async fn handle(&self, batch: &[Delivery]) -> Result<Vec<Verdict>, Box<dyn std::error::Error + Send + Sync>> {
        let decoded: Vec<Result<Retirement, vocab::Invalid>> =
            batch.iter().map(|delivery| Retirement::decode(&delivery.payload)).collect();
        let retirements: Vec<Retirement> = decoded.iter().filter_map(|r| r.as_ref().ok().cloned()).collect();
        let changed = self.store.retire_learners(&retirements).await?;
        tracing::info!(retirements = retirements.len(), purchases = changed, "retired learners' usernames replaced");
        Ok(decoded
            .into_iter()
            .map(|result| match result {
                Ok(_) => Verdict::Settled,
                Err(reason) => Verdict::Refused(reason.to_string()),
            })
            .collect())
    }
}
