//! [`PurchaseHistory`]: the service's one public face ([`kit::service::Service`]):
//! the API and the consumers of the purchases and customers streams, over one store.

use std::sync::Arc;

use kit::bus::EventBus;
use kit::bus::consumer::{Consumer, ConsumerMetrics};
use kit::client::TracedChannel;
use kit::db::{Database, Migrations};
use kit::serve::GrpcServer;
use kit::service::{Dependencies, Service, SetupError};
use proto::commerce::identity::v1::customer_identity_service_client::CustomerIdentityServiceClient;
use proto::commerce::purchases::v1::purchase_history_dead_letter_service_server::PurchaseHistoryDeadLetterServiceServer;
use proto::commerce::purchases::v1::purchase_history_service_server::PurchaseHistoryServiceServer;
use tokio_util::sync::CancellationToken;

use crate::api::PurchaseHistoryApi;
use crate::config::Config;
use crate::consumer::{GROUP, LearnerRetirer, PurchaseRecorder};
use crate::store::{self, Store};
use crate::{MIGRATIONS, NAME, dead_letters};

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
    ) -> PurchaseHistoryDeadLetterServiceServer<dead_letters::PurchaseHistoryDeadLetters> {
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
    async fn consume(&self, shutdown: CancellationToken) {
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

impl Service for PurchaseHistory {
    type Config = Config;

    const NAME: &'static str = NAME;

    fn migrations() -> &'static Migrations {
        &MIGRATIONS
    }

    /// PurchaseHistory over its database and the mesh's bus, resolving usernames
    /// through CustomerIdentity at `customer_identity_url` as `dependencies.credential`.
    fn build(config: &Config, dependencies: &Dependencies<'_>) -> Result<Self, SetupError> {
        let bus = dependencies.bus()?;
        let identity = CustomerIdentityServiceClient::new(
            dependencies.peer("purchase_history.customer_identity_url", &config.customer_identity_url)?,
        );
        Ok(Self::new(dependencies.db, bus, identity, config, dependencies.metrics))
    }

    fn serve(&self, server: GrpcServer) -> GrpcServer {
        server.service(self.service()).service(self.dead_letter_service())
    }

    fn run_background(&self, shutdown: CancellationToken) -> impl Future<Output = ()> + Send {
        self.consume(shutdown)
    }
}
