//! Retirements in, as every service that holds learners' names applies them:
//! `CustomerRetired` events decoded from the customers stream and handed to the
//! service's store ([`LearnerRetirer`]), which remembers each retired learner
//! in its `retired_learners` table ([`postgres::remember`], [`sqlite::remember`])
//! and replaces their username in its own rows.

pub mod postgres;
pub mod sqlite;

use std::sync::Arc;

use vocab::Retirement;

use crate::bus::Delivery;
use crate::bus::consumer::{BatchHandler, DecodedBatch, Verdict, decode_batch};

/// A store that applies retirements: a service's side of [`LearnerRetirer`].
#[async_trait::async_trait]
pub trait RetireLearners: Send + Sync {
    /// What the count [`RetireLearners::retire_learners`] answers counts (`jobs`, `purchases`), for the log.
    const CHANGED_ROWS: &'static str;

    /// Applies `retirements` in one transaction, idempotently; answers how many
    /// of the service's rows changed.
    async fn retire_learners(
        &self,
        retirements: &[Retirement],
    ) -> Result<u64, Box<dyn std::error::Error + Send + Sync>>;
}

/// Applies each batch of retirements in one transaction of the store's.
pub struct LearnerRetirer<S: ?Sized> {
    store: Arc<S>,
}

impl<S: ?Sized> LearnerRetirer<S> {
    /// A retirer over `store`.
    pub fn new(store: Arc<S>) -> Self {
        Self { store }
    }
}

#[async_trait::async_trait]
impl<S: RetireLearners + ?Sized> BatchHandler for LearnerRetirer<S> {
    async fn handle(&self, batch: &[Delivery]) -> Result<Vec<Verdict>, Box<dyn std::error::Error + Send + Sync>> {
        let DecodedBatch { events: retirements, verdicts } = decode_batch(batch, Retirement::decode);
        let changed = self.store.retire_learners(&retirements).await?;
        tracing::info!(
            retirements = retirements.len(),
            changed,
            rows = S::CHANGED_ROWS,
            "retired learners' usernames replaced"
        );
        Ok(verdicts)
    }
}
