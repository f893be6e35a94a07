//! CatalogIngest: validated, ordered, throttled product events from other lines
//! of business, applied to the catalog in dependency order.
//!
//! Same shape as every service: [`api`] answers gRPC (admission, replays, then
//! the steps); [`domain`] holds the canonical model and its rules; [`transform`]
//! maps each source's payloads to it, as declared in the source's file
//! (`config/catalog/sources/<source>.toml`); [`store`] writes it in dependency
//! order in one transaction (Postgres and SQLite); [`discovery`] pushes applied
//! events downstream when configured.
//!
//! ```text
//! IngestProductEvent ─► source known? ─► quota (per source: Redis GCRA, else governor) ─► gate (global concurrency)
//!   ─► replay? ─► VALIDATE ─► TRANSFORM ─► [instructors ─► course ─► course runs ─► seats] ─► discovery
//!                                          └──────────── one transaction ────────────┘
//! ```

pub mod api;
pub mod discovery;
pub mod domain;
pub mod store;
pub mod transform;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kit::db::{Database, Migrations};
use kit::metrics::Metrics;
use kit::throttle::{ConcurrencyGate, QuotaMetrics, Quotas, SharedQuotaConfig};
use proto::commerce::catalog::v1::catalog_ingest_service_server::CatalogIngestServiceServer;
use serde::{Deserialize, Serialize};

pub use api::CatalogIngestApi;

use crate::discovery::{Discovery, DiscoveryConfig};
use crate::transform::Sources;

/// The component's name: in logs, as the Postgres schema, as the SQLite file name.
pub const NAME: &str = "catalog_ingest";

/// Migrations for both backends, kept in step.
pub static MIGRATIONS: Migrations =
    Migrations { postgres: sqlx::migrate!("migrations/postgres"), sqlite: sqlx::migrate!("migrations/sqlite") };

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
pub enum SetupError {
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
pub fn sources(config: &Config) -> Result<Sources, SetupError> {
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

/// The gRPC service over the service's database, ready to hand to
/// [`kit::serve::GrpcServer::service`]. With `redis_url` the sources' quotas
/// are cluster-wide in Redis (the quota's metrics registered in `metrics`);
/// without, in this process.
pub fn service(
    db: &Database,
    config: &Config,
    redis_url: Option<&str>,
    metrics: &Metrics,
) -> Result<CatalogIngestServiceServer<CatalogIngestApi>, SetupError> {
    let sources = Arc::new(sources(config)?);
    let quotas = match redis_url {
        Some(url) => {
            let quota_metrics = QuotaMetrics::default();
            quota_metrics.register(NAME, metrics);
            Quotas::cluster(url, sources.quotas(), config.quota.clone(), quota_metrics)?
        }
        None => Quotas::in_process(sources.quotas()),
    };
    let gate = ConcurrencyGate::new(config.max_concurrent_ingests, config.max_queue_wait);
    let discovery = Discovery::new(&config.discovery)?;
    let api = CatalogIngestApi::new(store::for_database(db), sources, gate, discovery)
        .with_quotas(quotas)
        .with_metrics(metrics);
    Ok(CatalogIngestServiceServer::new(api))
}
