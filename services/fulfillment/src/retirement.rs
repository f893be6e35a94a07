//! Retirements in: `CustomerRetired` events from CustomerIdentity replace a
//! retired learner's username in their jobs and their unpublished events
//! ([`Store::retire_learners`]), and refuse their future orders.

use std::sync::Arc;

use kit::bus::Delivery;
use kit::bus::consumer::{BatchHandler, Verdict};
use vocab::Retirement;

use crate::store::Store;

/// The consumer group Fulfillment reads the customers stream in.
pub const GROUP: &str = "fulfillment";

/// Applies each batch of retirements in one transaction.
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
        let now = crate::store::stored_time(chrono::Utc::now());
        let changed = self.store.retire_learners(&retirements, now).await?;
        tracing::info!(retirements = retirements.len(), jobs = changed, "retired learners' usernames replaced");
        Ok(decoded
            .into_iter()
            .map(|decoded| match decoded {
                Ok(_) => Verdict::Settled,
                Err(reason) => Verdict::Refused(reason.to_string()),
            })
            .collect())
    }
}
