//! Fulfillment: paid orders become LMS enrollments and program entitlements,
//! durably and exactly once per line item.
//!
//! Same shape as every service: [`api`] answers gRPC (parsing requests into
//! [`domain`] values, then the [`store`]); [`domain`] holds the pure rules
//! (validation, repeat detection, the retry policy); [`store`] the Postgres and
//! SQLite backends, whose jobs table is the queue; `migrations/` their schemas.
//! Behind the API run the [`worker`]s, which call the LMS through [`lms`], and
//! the [`outbox`] relay, which publishes what succeeded (or failed) to the event bus and
//! deletes published rows after `outbox.retention`, and the [`webhook`] sender,
//! which tells each order's source system how its lines ended.
//!
//! ```text
//! FulfillOrder ─► jobs table (PENDING) ─► Workers ─claim/lease─► LMS
//!                                            │
//!                      SUCCEEDED + outbox rows (one transaction)
//!                                            │
//!                                 OutboxRelay ─► EventBus
//! ```

pub mod api;
pub mod dead_letters;
pub mod domain;
pub mod filter;
pub mod lms;
pub mod metrics;
pub mod outbox;
pub mod retirement;
pub mod store;
pub mod webhook;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use kit::bus::EventBus;
use kit::bus::consumer::{Consumer, ConsumerConfig, ConsumerMetrics};
use kit::client::TracedChannel;
use kit::db::{Database, Migrations};
use kit::outbox::{OutboxConfig, OutboxMetrics};
use proto::commerce::catalog::v1::catalog_ingest_service_client::CatalogIngestServiceClient;
use proto::commerce::fulfillment::v1::fulfillment_service_server::FulfillmentServiceServer;
use proto::commerce::identity::v1::customer_identity_service_client::CustomerIdentityServiceClient;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use api::FulfillmentApi;

use crate::domain::RetryPolicy;
use crate::lms::{LmsClient, LmsConfig};
use crate::metrics::FulfillmentMetrics;
use crate::outbox::OutboxRelay;
use crate::retirement::LearnerRetirer;
use crate::store::Store;
use crate::worker::{WorkerConfig, Workers};

/// The component's name: in logs, as the Postgres schema, as the SQLite file name.
pub const NAME: &str = "fulfillment";

/// Migrations for both backends, kept in step.
pub static MIGRATIONS: Migrations =
    Migrations { postgres: sqlx::migrate!("migrations/postgres"), sqlite: sqlx::migrate!("migrations/sqlite") };

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
        webhook::check(&self.webhooks, &self.webhook_delivery).map_err(ConfigError)?;
        Ok(())
    }
}

/// The running parts of Fulfillment: the API, the workers and the relay, over one store.
pub struct Fulfillment {
    store: Arc<dyn Store>,
    lms: LmsClient,
    bus: Arc<dyn EventBus>,
    identity: CustomerIdentityServiceClient<TracedChannel>,
    catalog: Option<CatalogIngestServiceClient<TracedChannel>>,
    config: Config,
    metrics: Arc<FulfillmentMetrics>,
    outbox_metrics: OutboxMetrics,
    retirement_metrics: ConsumerMetrics,
    wake: Arc<Notify>,
    published: Arc<Notify>,
    /// The outcome webhooks' sender, when any source system has one.
    webhooks: Option<Arc<webhook::WebhookSender>>,
    /// Notified when outcomes are recorded: wakes the webhook sender.
    outcomes: Arc<Notify>,
}

impl Fulfillment {
    /// Fulfillment over the service's database, publishing to `bus` and
    /// resolving customers through `identity`; its metrics go to `metrics`.
    pub fn new(
        db: &Database,
        bus: Arc<dyn EventBus>,
        identity: CustomerIdentityServiceClient<TracedChannel>,
        config: &Config,
        metrics: &kit::metrics::Metrics,
    ) -> Result<Self, ConfigError> {
        config.check()?;
        let sources = webhook::WebhookSources::of(&config.webhooks);
        let mut fulfillment =
            Self::with_store(store::for_database_with_webhooks(db, sources.clone()), bus, identity, config, metrics)?;
        // Registered with or without webhooks, so dashboards and alerts find the names.
        let webhook_metrics = webhook::WebhookMetrics::default();
        webhook_metrics.register(metrics);
        if !sources.is_empty() {
            let sender = webhook::WebhookSender::new(
                webhook::store::WebhookOutbox::new(db.clone()),
                &config.webhooks,
                config.webhook_delivery,
                webhook_metrics,
                Arc::clone(&fulfillment.outcomes),
            )
            .map_err(|e| ConfigError(format!("webhooks: {e}")))?;
            fulfillment.webhooks = Some(Arc::new(sender));
        }
        Ok(fulfillment)
    }

    /// The same over a given store, without the outcome webhooks' sender (`new` builds
    /// the store and the sender from `webhooks`).
    pub fn with_store(
        store: Arc<dyn Store>,
        bus: Arc<dyn EventBus>,
        identity: CustomerIdentityServiceClient<TracedChannel>,
        config: &Config,
        registry: &kit::metrics::Metrics,
    ) -> Result<Self, ConfigError> {
        config.check()?;
        let catalog = match config.check_course_runs {
            true => Some(CatalogIngestServiceClient::new(
                kit::client::channel_from(NAME, &config.catalog_url, config.identity.clone())
                    .map_err(|e| ConfigError(format!("catalog_url: {e}")))?,
            )),
            false => None,
        };
        let metrics = Arc::new(FulfillmentMetrics::default());
        metrics.register(registry);
        let outbox_metrics = OutboxMetrics::default();
        outbox_metrics.register("fulfillment_outbox", registry);
        let retirement_metrics = ConsumerMetrics::default();
        retirement_metrics.register("fulfillment_retirements", registry);
        Ok(Self {
            store,
            lms: LmsClient::new(&config.lms).map_err(|e| ConfigError(format!("lms: {e}")))?,
            bus,
            identity,
            catalog,
            config: config.clone(),
            metrics,
            outbox_metrics,
            retirement_metrics,
            wake: Arc::new(Notify::new()),
            published: Arc::new(Notify::new()),
            webhooks: None,
            outcomes: Arc::new(Notify::new()),
        })
    }

    /// The gRPC service, ready to hand to [`kit::serve::GrpcServer::service`].
    pub fn service(&self) -> FulfillmentServiceServer<FulfillmentApi> {
        let api = FulfillmentApi::new(
            Arc::clone(&self.store),
            self.identity.clone(),
            Arc::clone(&self.wake),
            self.config.clock_skew,
        );
        FulfillmentServiceServer::new(match &self.catalog {
            Some(catalog) => api.checking_catalog(catalog.clone()),
            None => api,
        })
    }

    /// The operators' dead-letter service of the streams Fulfillment consumes.
    pub fn dead_letter_service(
        &self,
    ) -> proto::commerce::fulfillment::v1::fulfillment_dead_letter_service_server::FulfillmentDeadLetterServiceServer<
        dead_letters::FulfillmentDeadLetters,
    >{
        dead_letters::service(Arc::clone(&self.bus), &self.config.customers_stream)
    }

    /// The workers (not yet running).
    pub fn workers(&self) -> Workers {
        Workers::new(
            Arc::clone(&self.store),
            self.lms.clone(),
            self.config.retry,
            self.config.workers,
            Arc::clone(&self.metrics),
            Arc::clone(&self.wake),
            Arc::clone(&self.published),
        )
        .waking_on_outcomes(Arc::clone(&self.outcomes))
    }

    /// The outbox relay (not yet running), with `outbox` retention.
    pub fn relay(&self) -> OutboxRelay {
        OutboxRelay::new(Arc::clone(&self.store) as _, Arc::clone(&self.bus), Arc::clone(&self.published))
            .with_config(self.config.outbox)
            .with_metrics(self.outbox_metrics.clone())
    }

    /// The consumer of the customers stream (retirements), named `name` in its group.
    pub fn retirements_consumer(&self, name: &str) -> Consumer {
        Consumer::new(
            Arc::clone(&self.bus),
            &self.config.customers_stream,
            retirement::GROUP,
            name,
            self.config.consumer,
            self.retirement_metrics.clone(),
        )
    }

    /// Runs the workers, the relay (publishing, pruning), the retirements consumer and the queue gauges
    /// until `shutdown`. The workers finish the attempts in flight, then the
    /// relay publishes what they recorded before it stops.
    pub async fn run_background(&self, shutdown: CancellationToken) {
        let gauges =
            Arc::clone(&self.metrics).refresh_every(Arc::clone(&self.store), Duration::from_secs(5), shutdown.clone());
        let listen = self.store.listen_for_work(Arc::clone(&self.wake), shutdown.clone());
        let workers_done = CancellationToken::new();
        let workers = async {
            self.workers().run(shutdown.clone()).await;
            workers_done.cancel();
        };
        let relay = async {
            self.relay().run(workers_done.clone()).await;
            if let Err(error) = self.relay().publish_pending().await {
                tracing::warn!(%error, "outbox rows left for the next start: the relay could not publish them");
            }
        };
        let name = format!("{}-{}", NAME, uuid::Uuid::new_v4().simple());
        let (retirements, retirer) = (self.retirements_consumer(&name), LearnerRetirer::new(Arc::clone(&self.store)));
        let retire = retirements.run(&retirer, shutdown.clone());
        // Outcome webhooks go on while the workers finish their attempts, like the relay.
        let webhooks = async {
            if let Some(sender) = &self.webhooks {
                sender.run(workers_done.clone()).await;
            }
        };
        tokio::join!(workers, relay, gauges, listen, retire, webhooks);
    }

    /// Reads the queue and outbox gauges from the store now (they refresh every few seconds while running).
    pub async fn refresh_metrics(&self) -> Result<(), store::StoreError> {
        self.metrics.refresh(self.store.as_ref()).await?;
        self.relay().refresh_backlog(chrono::Utc::now()).await?;
        Ok(())
    }

    /// The store (for tests and tools).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The outcome webhooks' sender, when a source system has a webhook (for tests and tools).
    pub fn webhook_sender(&self) -> Option<&Arc<webhook::WebhookSender>> {
        self.webhooks.as_ref()
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
