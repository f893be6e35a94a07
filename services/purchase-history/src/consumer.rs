//! Events in: purchases ([`PurchaseRecorder`]) and retirements
//! ([`LearnerRetirer`]).
//!
//! Purchases in from the stream: each batch is decoded and validated, the
//! valid purchases are stored in one idempotent insert, and only then
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

use crate::domain::Purchase;
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

/// A message's purchase and trace, or why it can never be stored: the
/// consumer's whole parser, public so the seam's property test
/// (`tests/tests/seams.rs`) holds Fulfillment's events against it.
pub fn decode(payload: &[u8]) -> Result<(Purchase, TextContext), String> {
    let envelope = EventEnvelope::decode(payload).map_err(|e| format!("not an EventEnvelope: {e}"))?;
    let trace = TextContext { traceparent: envelope.traceparent, tracestate: envelope.tracestate };
    match envelope.payload {
        Some(Payload::PurchaseRecorded(event)) => {
            Purchase::from_event(&event).map(|purchase| (purchase, trace)).map_err(|violations| {
                let listed: Vec<String> =
                    violations.iter().map(|v| format!("{}: {}", v.field_path, v.reason)).collect();
                format!("invalid purchase: {}", listed.join("; "))
            })
        }
        Some(_) => Err(format!("not a purchase: {}", envelope.event_type)),
        None => Err("the envelope has no payload".into()),
    }
}

#[async_trait::async_trait]
impl BatchHandler for PurchaseRecorder {
    async fn handle(&self, batch: &[Delivery]) -> Result<Vec<Verdict>, Box<dyn std::error::Error + Send + Sync>> {
        let decoded: Vec<Result<(Purchase, TextContext), String>> =
            batch.iter().map(|delivery| decode(&delivery.payload)).collect();
        let purchases: Vec<Purchase> = decoded.iter().filter_map(|d| d.as_ref().ok().map(|(p, _)| p.clone())).collect();
        let stored = self.store.insert_batch(&purchases).await?;
        tracing::debug!(received = batch.len(), valid = purchases.len(), new = stored, "purchases stored");
        Ok(decoded
            .into_iter()
            .map(|result| match result {
                Ok((purchase, trace)) => {
                    // A span per purchase, child of the producer's: one trace shows
                    // order → fulfillment → purchase stored.
                    let span = tracing::info_span!(
                        "purchase stored",
                        otel.name = "purchase stored",
                        purchase.id = %purchase.purchase_id,
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
