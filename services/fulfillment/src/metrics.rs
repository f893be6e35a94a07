//! Fulfillment's own Prometheus metrics: the queue (jobs by state, age of the
//! oldest pending job), attempts by outcome, and the LMS's latency and
//! answers. The outbox's (`fulfillment_outbox_*`) are the relay's,
//! `kit::outbox::OutboxMetrics`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use chrono::Utc;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Label: a job state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// PENDING, IN_PROGRESS, FAILED, REVOKING or REVOKE_FAILED (the states that do not only accumulate).
    pub state: String,
}

/// Label: how an attempt ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// succeeded, retry, failed or lease_lost; revoked or revoke_failed for a revocation.
    pub outcome: String,
}

/// Label: what the LMS answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LmsAnswerLabel {
    /// The HTTP status, or timeout, connection or authentication.
    pub status: String,
}

/// Every metric Fulfillment reports.
#[derive(Clone, Debug)]
pub struct FulfillmentMetrics {
    /// Jobs per state: PENDING, IN_PROGRESS, FAILED, REVOKING and REVOKE_FAILED (refreshed from the
    /// store every few seconds; successes are `attempts{outcome="succeeded"}`).
    pub jobs: Family<StateLabel, Gauge>,
    /// Seconds the longest-waiting due PENDING (or REVOKING) job has waited past its due time; 0 when none.
    pub oldest_pending_age: Gauge<f64, AtomicU64>,
    /// LMS attempts by outcome.
    pub attempts: Family<OutcomeLabel, Counter>,
    /// LMS call latency in seconds.
    pub lms_duration: Histogram,
    /// LMS answers by status.
    pub lms_answers: Family<LmsAnswerLabel, Counter>,
}

impl Default for FulfillmentMetrics {
    fn default() -> Self {
        Self {
            jobs: Family::default(),
            oldest_pending_age: Gauge::default(),
            attempts: Family::default(),
            lms_duration: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            lms_answers: Family::default(),
        }
    }
}

impl FulfillmentMetrics {
    /// Registers every metric with the component's registry.
    pub fn register(&self, metrics: &kit::metrics::Metrics) {
        metrics.register(
            "fulfillment_jobs",
            "Fulfillment jobs that are PENDING, IN_PROGRESS, FAILED, REVOKING or REVOKE_FAILED",
            self.jobs.clone(),
        );
        metrics.register(
            "fulfillment_oldest_pending_age_seconds",
            "Seconds the longest-waiting due PENDING or REVOKING fulfillment job has waited for a worker",
            self.oldest_pending_age.clone(),
        );
        metrics.register("fulfillment_attempts", "LMS attempts by outcome", self.attempts.clone());
        metrics.register("fulfillment_lms_duration_seconds", "LMS call latency", self.lms_duration.clone());
        metrics.register("fulfillment_lms_answers", "LMS answers by HTTP status or failure", self.lms_answers.clone());
    }

    /// Counts an attempt's outcome.
    pub fn attempt(&self, outcome: &str) {
        self.attempts.get_or_create(&OutcomeLabel { outcome: outcome.into() }).inc();
    }

    /// Records one LMS call.
    pub fn lms_answer(&self, status: String, took: Duration) {
        self.lms_duration.observe(took.as_secs_f64());
        self.lms_answers.get_or_create(&LmsAnswerLabel { status }).inc();
    }

    /// Reads the queue's counts from the store into the gauges.
    pub async fn refresh(&self, store: &dyn Store) -> Result<(), crate::store::StoreError> {
        let now = Utc::now();
        let stats = store.stats(now).await?;
        for (state, count) in stats.by_state {
            self.jobs.get_or_create(&StateLabel { state: state.as_str().into() }).set(count);
        }
        let age = stats.oldest_due.map_or(0.0, |due| (now - due).as_seconds_f64().max(0.0));
        self.oldest_pending_age.set(age);
        Ok(())
    }

    /// Refreshes the queue gauges every `every` until `shutdown`.
    pub async fn refresh_every(self: Arc<Self>, store: Arc<dyn Store>, every: Duration, shutdown: CancellationToken) {
        loop {
            if let Err(error) = self.refresh(store.as_ref()).await {
                tracing::warn!(%error, "could not read fulfillment queue statistics");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}
