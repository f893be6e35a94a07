//! [`CustomerIdentity`]: the service's one public face ([`kit::service::Service`]):
//! the API over its store and read-through cache, and the outbox relay that
//! publishes retirements.

use std::sync::Arc;

use kit::bus::EventBus;
use kit::cache::ReadThrough;
use kit::db::{Database, Migrations};
use kit::outbox::{OutboxMetrics, Relay, SqlOutbox};
use kit::serve::GrpcServer;
use kit::service::{Dependencies, Service, SetupError};
use proto::commerce::identity::v1::customer_identity_service_server::CustomerIdentityServiceServer;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::api::CustomerIdentityApi;
use crate::config::{Config, cache};
use crate::domain::RetirementKey;
use crate::store::{self, Store};
use crate::{MIGRATIONS, NAME};

/// The running parts of CustomerIdentity: the API over its store and cache,
/// and the outbox relay that publishes retirements to the event bus.
pub struct CustomerIdentity {
    store: Arc<dyn Store>,
    cache: Arc<ReadThrough>,
    bus: Arc<dyn EventBus>,
    outbox: Arc<SqlOutbox>,
    config: Config,
    outbox_metrics: OutboxMetrics,
    published: Arc<Notify>,
}

impl CustomerIdentity {
    /// CustomerIdentity over the service's database and `cache`, publishing
    /// retirements to `bus`; its metrics go to `metrics`.
    pub fn new(
        db: &Database,
        cache: Arc<ReadThrough>,
        bus: Arc<dyn EventBus>,
        config: &Config,
        metrics: &kit::metrics::Metrics,
    ) -> Self {
        if config.is_development_salt() {
            tracing::warn!(
                "customer_identity.retirement_salt is the development default; set a secret one in production"
            );
        }
        let outbox_metrics = OutboxMetrics::default();
        outbox_metrics.register("customer_identity_outbox", metrics);
        cache.register_metrics("customer_identity_cache", metrics);
        Self {
            store: store::for_database(db),
            cache,
            bus,
            outbox: Arc::new(SqlOutbox::new(db.clone())),
            config: config.clone(),
            outbox_metrics,
            published: Arc::new(Notify::new()),
        }
    }

    /// The gRPC service, ready to hand to [`kit::serve::GrpcServer::service`].
    pub fn service(&self) -> CustomerIdentityServiceServer<CustomerIdentityApi> {
        CustomerIdentityServiceServer::new(CustomerIdentityApi::new(
            Arc::clone(&self.store),
            Arc::clone(&self.cache),
            RetirementKey::new(self.config.retirement_salt.expose()),
            Arc::clone(&self.published),
        ))
    }

    /// The outbox relay (not yet running), with `outbox` retention.
    pub fn relay(&self) -> Relay {
        Relay::new(Arc::clone(&self.outbox) as _, Arc::clone(&self.bus), Arc::clone(&self.published))
            .with_config(self.config.outbox)
            .with_metrics(self.outbox_metrics.clone())
    }

    /// Runs the relay until `shutdown`, then publishes what is left once.
    async fn run_relay(&self, shutdown: CancellationToken) {
        self.relay().run(shutdown).await;
        if let Err(error) = self.relay().publish_pending().await {
            tracing::warn!(%error, "outbox rows left for the next start: the relay could not publish them");
        }
    }

    /// The store (for tests and tools).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}

impl Service for CustomerIdentity {
    type Config = Config;

    const NAME: &'static str = NAME;

    fn migrations() -> &'static Migrations {
        &MIGRATIONS
    }

    /// CustomerIdentity over its database, its cache (Redis when the mesh has
    /// it, else in-process) and the mesh's bus.
    fn build(config: &Config, dependencies: &Dependencies<'_>) -> Result<Self, SetupError> {
        let cache = cache(config, dependencies.redis_url)?;
        Ok(Self::new(dependencies.db, cache, dependencies.bus()?, config, dependencies.metrics))
    }

    fn serve(&self, server: GrpcServer) -> GrpcServer {
        server.service(self.service())
    }

    fn run_background(&self, shutdown: CancellationToken) -> impl Future<Output = ()> + Send {
        self.run_relay(shutdown)
    }
}
