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
pub mod store;

use std::sync::Arc;

use kit::cache::{CacheConfig, ReadThrough};
use kit::db::{Database, Migrations};
use proto::commerce::identity::v1::customer_identity_service_server::CustomerIdentityServiceServer;
use serde::{Deserialize, Serialize};

pub use api::CustomerIdentityApi;

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
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The salt is a secret: a debug print says only whether it is the development one.
        let salt = if self.retirement_salt == DEVELOPMENT_SALT { "<development>" } else { "<set>" };
        f.debug_struct("Config").field("retirement_salt", &salt).field("cache", &self.cache).finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            retirement_salt: DEVELOPMENT_SALT.into(),
            cache: CacheConfig { namespace: NAME.into(), ..CacheConfig::default() },
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

/// The gRPC service, ready to hand to [`kit::serve::GrpcServer::service`].
pub fn service(
    db: &Database,
    cache: Arc<ReadThrough>,
    config: &Config,
) -> CustomerIdentityServiceServer<CustomerIdentityApi> {
    if config.retirement_salt == DEVELOPMENT_SALT {
        tracing::warn!("customer_identity.retirement_salt is the development default; set a secret one in production");
    }
    CustomerIdentityServiceServer::new(CustomerIdentityApi::new(
        store::for_database(db),
        cache,
        &config.retirement_salt,
    ))
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
