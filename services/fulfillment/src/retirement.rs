//! Retirements in: `CustomerRetired` events from CustomerIdentity replace a
//! retired learner's username in their jobs and their unpublished events
//! ([`Store::retire_learners`]), and refuse their future orders. The consumer
//! is kit's ([`kit::retirement::LearnerRetirer`]) over this service's store.

use vocab::Retirement;

use crate::store::Store;

/// The consumer group Fulfillment reads the customers stream in.
pub const GROUP: &str = "fulfillment";

/// Applies each batch of retirements in one transaction.
pub type LearnerRetirer = kit::retirement::LearnerRetirer<dyn Store>;

#[async_trait::async_trait]
impl kit::retirement::RetireLearners for dyn Store {
    const CHANGED_ROWS: &'static str = "jobs";

    async fn retire_learners(
        &self,
        retirements: &[Retirement],
    ) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
        let now = crate::store::stored_time(chrono::Utc::now());
        Ok(Store::retire_learners(self, retirements, now).await?)
    }
}
