//! CustomerIdentity's settings (`MESH_CUSTOMER_IDENTITY__...`).

use std::sync::Arc;

use kit::cache::{CacheConfig, ReadThrough};
use kit::outbox::OutboxConfig;
use kit::secret::Secret;
use serde::{Deserialize, Serialize};

use crate::NAME;

/// The salt used when none is configured: fine for development, not for production.
pub const DEVELOPMENT_SALT: &str = "commerce-mesh-development-retirement-salt";

/// CustomerIdentity's own settings.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Config {
    /// Keys the hash that replaces a retired learner's username. Keep it
    /// secret and stable (`MESH_CUSTOMER_IDENTITY__RETIREMENT_SALT`).
    pub retirement_salt: Secret,
    /// The read-through cache (Redis when the mesh has `redis_url`, else in-process).
    pub cache: CacheConfig,
    /// How long published outbox rows (retirement events) are kept, and how often they are pruned.
    pub outbox: OutboxConfig,
}

impl Config {
    /// Whether the retirement salt is the development one anyone can read in this repository.
    pub fn is_development_salt(&self) -> bool {
        self.retirement_salt.expose() == DEVELOPMENT_SALT
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The salt is a secret: a debug print says only whether it is the development one.
        let salt = if self.is_development_salt() { "<development>" } else { "<set>" };
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
