//! Fulfillment's settings (`MESH_FULFILLMENT__...`) and the checks that refuse
//! settings it cannot run with.

use std::time::Duration;

use kit::bus::consumer::ConsumerConfig;
use kit::outbox::OutboxConfig;
use serde::{Deserialize, Serialize};

use crate::domain::RetryPolicy;
use crate::lms::LmsConfig;
use crate::webhook;
use crate::worker::WorkerConfig;

/// Fulfillment's own settings (`MESH_FULFILLMENT__...`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Config {
    /// The LMS and its OAuth2 client.
    pub lms: LmsConfig,
    /// Backoff and attempts.
    pub retry: RetryPolicy,
    /// Concurrency and leases.
    pub workers: WorkerConfig,
    /// How far in the future `date_placed` may be, for clocks that disagree.
    #[serde(with = "humantime_serde")]
    pub clock_skew: Duration,
    /// Where CustomerIdentity answers, to resolve orders that name only a customer.
    pub customer_identity_url: String,
    /// Whether an order is accepted only for course runs the catalog sells
    /// in the mode bought and still open for enrollment (CatalogIngest's
    /// `GetCourseRun`). Off by default:
    /// the catalog may not hold every run, such as open courses.
    pub check_course_runs: bool,
    /// Where CatalogIngest answers, for `check_course_runs`.
    pub catalog_url: String,
    /// The stream of `CustomerRetired` events, from CustomerIdentity.
    pub customers_stream: String,
    /// How the customers stream is read.
    pub consumer: ConsumerConfig,
    /// How long published outbox rows are kept.
    pub outbox: OutboxConfig,
    /// Outcome webhooks by the order's source system (compared without case):
    /// `[fulfillment.webhooks.<source_system>]` `url`, `secret`. None by default.
    pub webhooks: std::collections::BTreeMap<String, webhook::WebhookTarget>,
    /// How outcome webhooks are sent.
    pub webhook_delivery: webhook::DeliveryConfig,
    /// What Fulfillment presents to CatalogIngest (its own identity, given
    /// by whoever runs it; not a configuration key).
    #[serde(skip)]
    pub identity: kit::credential::Credential,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            lms: LmsConfig::default(),
            retry: RetryPolicy::default(),
            workers: WorkerConfig::default(),
            clock_skew: Duration::from_secs(300),
            customer_identity_url: "http://127.0.0.1:50052".into(),
            check_course_runs: false,
            catalog_url: "http://127.0.0.1:50053".into(),
            customers_stream: proto::streams::CUSTOMERS.into(),
            identity: kit::credential::Credential::none(),
            consumer: ConsumerConfig::default(),
            outbox: OutboxConfig::default(),
            webhooks: std::collections::BTreeMap::new(),
            webhook_delivery: webhook::DeliveryConfig::default(),
        }
    }
}

/// A setting Fulfillment cannot run with, named.
#[derive(Debug, thiserror::Error)]
#[error("fulfillment.{0}")]
pub struct ConfigError(String);

impl ConfigError {
    /// The setting (a path below `fulfillment.`) and what is wrong with it.
    pub(crate) fn new(problem: impl Into<String>) -> Self {
        Self(problem.into())
    }
}

impl Config {
    /// Refuses settings that would make the workers spin, stall or never retry.
    pub fn check(&self) -> Result<(), ConfigError> {
        let problem = |text: &str| Err(ConfigError(text.into()));
        if self.workers.concurrency == 0 {
            return problem("workers.concurrency must be at least 1");
        }
        if self.workers.idle_poll < Duration::from_millis(10) {
            return problem("workers.idle_poll must be at least 10ms");
        }
        if self.workers.lease < Duration::from_secs(1) || self.workers.lease > Duration::from_secs(86_400) {
            return problem("workers.lease must be between 1s and 24h");
        }
        if self.retry.max_attempts == 0 {
            return problem("retry.max_attempts must be at least 1");
        }
        if self.retry.cap > Duration::from_secs(30 * 86_400)
            || self.retry.max_retry_after > Duration::from_secs(30 * 86_400)
        {
            return problem("retry.cap and retry.max_retry_after must be at most 30 days");
        }
        if self.clock_skew > Duration::from_secs(86_400) {
            return problem("clock_skew must be at most 24h");
        }
        self.outbox.check().map_err(|e| ConfigError(e.to_string()))?;
        webhook::check(&self.webhooks, &self.webhook_delivery).map_err(|e| ConfigError(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_would_spin_or_stall_are_refused_by_name() {
        assert!(Config::default().check().is_ok());
        let refused = |change: fn(&mut Config)| {
            let mut config = Config::default();
            change(&mut config);
            config.check().map_err(|e| e.to_string()).expect_err("refused")
        };
        assert!(refused(|c| c.workers.concurrency = 0).contains("workers.concurrency"));
        assert!(refused(|c| c.workers.idle_poll = Duration::ZERO).contains("workers.idle_poll"));
        assert!(refused(|c| c.workers.lease = Duration::ZERO).contains("workers.lease"));
        assert!(refused(|c| c.retry.max_attempts = 0).contains("retry.max_attempts"));
        assert!(refused(|c| c.clock_skew = Duration::from_secs(u64::MAX)).contains("clock_skew"));
        assert!(refused(|c| c.outbox.prune_every = Duration::ZERO).contains("outbox.prune_every"));
    }
}
