//! PurchaseHistory: purchase events from the stream, stored once each, listed
//! per learner.
//!
//! Same shape as every service: [`api`] answers gRPC (`RecordPurchase` appends
//! to the stream; `ListPurchases` resolves the learner, then pages the store);
//! [`domain`] holds the pure rules (what a valid purchase is, legacy fields,
//! page tokens); [`store`] the Postgres and SQLite backends; [`consumer`] reads
//! the purchases stream through [`kit::bus::consumer`] and stores each purchase
//! once before acknowledging it.

pub mod api;
pub mod consumer;
pub mod dead_letters;
pub mod domain;
pub mod refund;
pub mod store;

use std::sync::Arc;

use kit::bus::EventBus;
use kit::bus::consumer::{Consumer, ConsumerConfig, ConsumerMetrics};
use kit::client::TracedChannel;
use kit::db::{Database, Migrations};
use proto::commerce::identity::v1::customer_identity_service_client::CustomerIdentityServiceClient;
use proto::commerce::purchases::v1::purchase_history_service_server::PurchaseHistoryServiceServer;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use api::PurchaseHistoryApi;

use crate::consumer::{GROUP, LearnerRetirer, PurchaseRecorder};
use crate::store::Store;

/// The component's name: in logs, as the Postgres schema, as the SQLite file name.
pub const NAME: &str = "purchase_history";

/// Migrations for both backends, kept in step.
pub static MIGRATIONS: Migrations =
    Migrations { postgres: sqlx::migrate!("migrations/postgres"), sqlite: sqlx::migrate!("migrations/sqlite") };

/// PurchaseHistory's own settings (`MESH_PURCHASE_HISTORY__...`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Config {
    /// The purchases stream (tests give each run its own).
    pub stream: String,
    /// The stream of `CustomerRetired` events, from CustomerIdentity.
    pub customers_stream: String,
    /// How the purchases stream is read.
    pub consumer: ConsumerConfig,
    /// Where CustomerIdentity answers, to resolve usernames.
    pub customer_identity_url: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            stream: proto::streams::PURCHASES.into(),
            customers_stream: proto::streams::CUSTOMERS.into(),
            consumer: ConsumerConfig::default(),
            customer_identity_url: "http://127.0.0.1:50052".into(),
        }
    }
}

/// The running parts of PurchaseHistory: the API and the stream consumer, over one store.
pub struct PurchaseHistory {
    store: Arc<dyn Store>,
    bus: Arc<dyn EventBus>,
    identity: CustomerIdentityServiceClient<TracedChannel>,
    config: Config,
    consumer_metrics: ConsumerMetrics,
    retirement_metrics: ConsumerMetrics,
}

impl PurchaseHistory {
    /// PurchaseHistory over the service's database, reading and appending to
    /// `bus`, resolving usernames through `identity`; its metrics go to `metrics`.
    pub fn new(
        db: &Database,
        bus: Arc<dyn EventBus>,
        identity: CustomerIdentityServiceClient<TracedChannel>,
        config: &Config,
        metrics: &kit::metrics::Metrics,
    ) -> Self {
        Self::with_store(store::for_database(db), bus, identity, config, metrics)
    }

    /// The same over a given store.
    pub fn with_store(
        store: Arc<dyn Store>,
        bus: Arc<dyn EventBus>,
        identity: CustomerIdentityServiceClient<TracedChannel>,
        config: &Config,
        metrics: &kit::metrics::Metrics,
    ) -> Self {
        let consumer_metrics = ConsumerMetrics::default();
        consumer_metrics.register("purchase_history_consumer", metrics);
        let retirement_metrics = ConsumerMetrics::default();
        retirement_metrics.register("purchase_history_retirements", metrics);
        Self { store, bus, identity, config: config.clone(), consumer_metrics, retirement_metrics }
    }

    /// The gRPC service, ready to hand to [`kit::serve::GrpcServer::service`].
    pub fn service(&self) -> PurchaseHistoryServiceServer<PurchaseHistoryApi> {
        PurchaseHistoryServiceServer::new(PurchaseHistoryApi::new(
            Arc::clone(&self.store),
            Arc::clone(&self.bus),
            self.identity.clone(),
            &self.config.stream,
        ))
    }

    /// The operators' dead-letter service of the streams PurchaseHistory consumes.
    pub fn dead_letter_service(
        &self,
    ) -> proto::commerce::purchases::v1::purchase_history_dead_letter_service_server::PurchaseHistoryDeadLetterServiceServer<
        dead_letters::PurchaseHistoryDeadLetters,
    >{
        dead_letters::service(Arc::clone(&self.bus), &self.config.stream, &self.config.customers_stream)
    }

    /// The consumer of the purchases stream, named `name` in its group (unique
    /// per process: what a dead process left pending is reclaimed after `reclaim_idle`).
    pub fn consumer(&self, name: &str) -> Consumer {
        Consumer::new(
            Arc::clone(&self.bus),
            &self.config.stream,
            GROUP,
            name,
            self.config.consumer,
            self.consumer_metrics.clone(),
        )
    }

    /// What the consumer hands each batch to.
    pub fn recorder(&self) -> PurchaseRecorder {
        PurchaseRecorder::new(Arc::clone(&self.store))
    }

    /// The consumer of the customers stream (retirements), named `name` in its group.
    pub fn retirements_consumer(&self, name: &str) -> Consumer {
        Consumer::new(
            Arc::clone(&self.bus),
            &self.config.customers_stream,
            GROUP,
            name,
            self.config.consumer,
            self.retirement_metrics.clone(),
        )
    }

    /// What the retirements consumer hands each batch to.
    pub fn retirer(&self) -> LearnerRetirer {
        LearnerRetirer::new(Arc::clone(&self.store))
    }

    /// Consumes the purchases and customers streams until `shutdown`.
    pub async fn run_background(&self, shutdown: CancellationToken) {
        let name = format!("{}-{}", NAME, uuid::Uuid::new_v4().simple());
        let (purchases, recorder) = (self.consumer(&name), self.recorder());
        let (retirements, retirer) = (self.retirements_consumer(&name), self.retirer());
        tokio::join!(purchases.run(&recorder, shutdown.clone()), retirements.run(&retirer, shutdown));
    }

    /// The store (for tests and tools).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}
