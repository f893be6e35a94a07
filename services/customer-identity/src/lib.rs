//! CustomerIdentity: links commerce customers to LMS users, unique in both
//! directions and fast at tens of millions of users.
//!
//! Same shape as every service: [`api`] answers gRPC (parsing requests into
//! [`domain`] values, then the cache and the [`store`]); [`domain`] holds the
//! pure rules; [`store`] the Postgres and SQLite backends; `migrations/` their
//! schemas. Reads go through a read-through cache ([`kit::cache`]) that every
//! write invalidates before it answers.

pub mod api;
pub mod domain;
pub mod events;
pub mod store;

use std::sync::Arc;

use kit::bus::EventBus;
use kit::cache::{CacheConfig, ReadThrough};
use kit::db::{Database, Migrations};
use kit::outbox::{OutboxConfig, OutboxMetrics, Relay, SqlOutbox};
use proto::commerce::identity::v1::customer_identity_service_server::CustomerIdentityServiceServer;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use api::CustomerIdentityApi;

use crate::domain::RetirementKey;
use crate::store::Store;

/// The component's name: in logs, as the Postgres schema, as the SQLite file name.
pub const NAME: &str = "customer_identity";

/// The salt used when none is configured: fine for development, not for production.
pub const DEVELOPMENT_SALT: &str = "commerce-mesh-development-retirement-salt";

/// Migrations for both backends, kept in step.
pub static MIGRATIONS: Migrations =
    Migrations { postgres: sqlx::migrate!("migrations/postgres"), sqlite: sqlx::migrate!("migrations/sqlite") };

/// CustomerIdentity's own settings.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Config {
    /// Keys the hash that replaces a retired learner's username. Keep it
    /// secret and stable (`MESH_CUSTOMER_IDENTITY__RETIREMENT_SALT`).
    pub retirement_salt: String,
    /// The read-through cache (Redis when the mesh has `redis_url`, else in-process).
    pub cache: CacheConfig,
    /// How long published outbox rows (retirement events) are kept, and how often they are pruned.
    pub outbox: OutboxConfig,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The salt is a secret: a debug print says only whether it is the development one.
        let salt = if self.retirement_salt == DEVELOPMENT_SALT { "<development>" } else { "<set>" };
        f.debug_struct("Config")
            .field("retirement_salt", &salt)
            .field("cache", &self.cache)
            .field("outbox", &self.outbox)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            retirement_salt: DEVELOPMENT_SALT.into(),
            cache: CacheConfig { namespace: NAME.into(), ..CacheConfig::default() },
            outbox: OutboxConfig::default(),
        }
    }
}

/// The cache this configuration asks for: Redis at `redis_url`, or in-process.
pub fn cache(config: &Config, redis_url: Option<&str>) -> Result<Arc<ReadThrough>, kit::cache::CacheError> {
    Ok(Arc::new(match redis_url {
        Some(url) => ReadThrough::redis(url, &config.cache)?,
        None => ReadThrough::memory(&config.cache),
    }))
}

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
        if config.retirement_salt == DEVELOPMENT_SALT {
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
            RetirementKey::new(&self.config.retirement_salt),
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
    pub async fn run_background(&self, shutdown: CancellationToken) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_debug_print_never_shows_the_retirement_salt() {
        let config = Config { retirement_salt: "s3cret-salt".into(), ..Config::default() };
        let printed = format!("{config:?}");
        assert!(!printed.contains("s3cret-salt"), "{printed}");
        assert!(printed.contains("<set>"), "{printed}");
        assert!(format!("{:?}", Config::default()).contains("<development>"));
    }
}
