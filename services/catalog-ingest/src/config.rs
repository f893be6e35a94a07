//! CatalogIngest's settings (`MESH_CATALOG_INGEST__...`) and the source files they name.

use std::path::PathBuf;
use std::time::Duration;

use kit::throttle::SharedQuotaConfig;
use serde::{Deserialize, Serialize};

use crate::discovery::{self, DiscoveryConfig};
use crate::transform::{self, Sources};

/// Where sources are read from when nothing else is configured.
pub const DEFAULT_SOURCES_DIR: &str = "config/catalog/sources";

/// The example sources, built in: used when the default directory does not
/// exist (the binary run outside the repository), so `commerce-mesh up` works anywhere.
const BUILT_IN_SOURCES: [(&str, &str); 2] = [
    ("exec-ed-partner.toml", include_str!("../../../config/catalog/sources/exec-ed-partner.toml")),
    ("bootcamp-hub.toml", include_str!("../../../config/catalog/sources/bootcamp-hub.toml")),
];

/// CatalogIngest's own settings (`MESH_CATALOG_INGEST__...`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Config {
    /// The directory of source files, one `<source>.toml` per line of business.
    pub sources_dir: PathBuf,
    /// Ingestions running at once; more wait up to `max_queue_wait`, then are shed.
    pub max_concurrent_ingests: usize,
    /// How long an ingestion waits for room before it is shed with RESOURCE_EXHAUSTED.
    #[serde(with = "humantime_serde")]
    pub max_queue_wait: Duration,
    /// The optional downstream discovery API.
    pub discovery: DiscoveryConfig,
    /// The sources' quotas when Redis keeps them (`redis_url` set): shared by
    /// every replica; while Redis does not answer, each replica admits its
    /// quota divided by `quota.expected_replicas`.
    pub quota: SharedQuotaConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            sources_dir: PathBuf::from(DEFAULT_SOURCES_DIR),
            max_concurrent_ingests: 32,
            max_queue_wait: Duration::from_millis(250),
            discovery: DiscoveryConfig::default(),
            quota: SharedQuotaConfig::default(),
        }
    }
}

/// Why CatalogIngest cannot start with its settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source file is missing, malformed or inconsistent.
    #[error(transparent)]
    Sources(#[from] transform::SourceConfigError),
    /// The discovery settings are unusable.
    #[error(transparent)]
    Discovery(#[from] discovery::DiscoveryError),
    /// The quota store cannot be used (a malformed Redis URL).
    #[error(transparent)]
    Quota(#[from] kit::throttle::ThrottleError),
}

/// The configured sources: `sources_dir`, or the built-in examples when the
/// default directory is absent.
pub fn sources(config: &Config) -> Result<Sources, ConfigError> {
    if config.sources_dir == std::path::Path::new(DEFAULT_SOURCES_DIR) && !config.sources_dir.is_dir() {
        tracing::warn!(
            dir = DEFAULT_SOURCES_DIR,
            "no source directory here; using the built-in example sources (set catalog_ingest.sources_dir)"
        );
        let files = BUILT_IN_SOURCES.iter().map(|(name, text)| (name.to_string(), text.to_string()));
        return Ok(Sources::from_files(files)?);
    }
    Ok(Sources::load_dir(&config.sources_dir)?)
}
