//! The mesh's configuration: defaults, then an optional TOML file
//! (`--config` or `MESH_CONFIG`), then `MESH_*` environment variables.
//!
//! | key | environment | default |
//! |---|---|---|
//! | `data_dir` | `MESH_DATA_DIR` | `./data` (SQLite files, one per service) |
//! | `database_url` | `MESH_DATABASE_URL` | unset: SQLite; a `postgres://` URL puts every service in a schema of its own there |
//! | `redis_url` | `MESH_REDIS_URL` | unset: in-process caches; a `redis://` URL puts them in Redis |
//! | `customer_identity.retirement_salt` | `MESH_CUSTOMER_IDENTITY__RETIREMENT_SALT` | a development value (warned about) |
//! | `customer_identity.cache.ttl` | `MESH_CUSTOMER_IDENTITY__CACHE__TTL` | `5m` (misses: `cache.negative_ttl`, `5s`) |
//! | `<service>.listen` | `MESH_FULFILLMENT__LISTEN`, ... | `127.0.0.1:50051` to `:50054` |
//! | `<service>.database.url` | `MESH_FULFILLMENT__DATABASE__URL`, ... | unset: as above |
//! | `gateway.listen` | `MESH_GATEWAY__LISTEN` | `127.0.0.1:8080` |
//! | `telemetry.log_filter` | `MESH_TELEMETRY__LOG_FILTER` (or `RUST_LOG`) | `info` |
//! | `telemetry.log_format` | `MESH_TELEMETRY__LOG_FORMAT` | `json` (or `text`) |
//! | `telemetry.otlp_endpoint` | `OTEL_EXPORTER_OTLP_ENDPOINT` | unset: no span export |
//! | `serve.shutdown_grace` | `MESH_SERVE__SHUTDOWN_GRACE` | `0s` |
//! | `serve.drain_timeout` | `MESH_SERVE__DRAIN_TIMEOUT` | `4s` |

use std::net::SocketAddr;
use std::path::PathBuf;

use kit::db::DatabaseConfig;
use kit::serve::ServeOptions;
use kit::telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};

use crate::Component;

/// Settings of the whole mesh.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct MeshConfig {
    /// Where embedded storage keeps its files.
    pub data_dir: PathBuf,
    /// A Postgres URL shared by every service that has no database of its own.
    pub database_url: Option<String>,
    /// Redis for caches (and, later, the event bus); unset: in-process.
    pub redis_url: Option<String>,
    /// Logs and traces.
    pub telemetry: TelemetryConfig,
    /// How gRPC components stop.
    pub serve: ServeOptions,
    /// The REST gateway.
    pub gateway: gateway::Config,
    /// Fulfillment.
    pub fulfillment: ServiceConfig,
    /// CustomerIdentity.
    pub customer_identity: ServiceConfig<customer_identity::Config>,
    /// CatalogIngest.
    pub catalog_ingest: ServiceConfig,
    /// PurchaseHistory.
    pub purchase_history: ServiceConfig,
}

/// Where a gRPC service listens and keeps its data, and its own settings
/// (`S`, whose keys sit beside `listen` and `database`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ServiceConfig<S = NoSettings> {
    /// The gRPC listen address.
    pub listen: SocketAddr,
    /// The service's own database; unset: `database_url`, else SQLite in `data_dir`.
    pub database: Option<DatabaseConfig>,
    /// The service's own settings.
    #[serde(flatten)]
    pub settings: S,
}

/// For a service with no settings of its own yet.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NoSettings {}

impl<S: Default> ServiceConfig<S> {
    fn on_port(port: u16) -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], port)), database: None, settings: S::default() }
    }
}

impl<S: Default> Default for ServiceConfig<S> {
    fn default() -> Self {
        Self::on_port(0)
    }
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            database_url: None,
            redis_url: None,
            telemetry: TelemetryConfig::default(),
            serve: ServeOptions::default(),
            gateway: gateway::Config::default(),
            fulfillment: ServiceConfig::on_port(50051),
            customer_identity: ServiceConfig::on_port(50052),
            catalog_ingest: ServiceConfig::on_port(50053),
            purchase_history: ServiceConfig::on_port(50054),
        }
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigProblem {
    /// `database_url` names something other than Postgres.
    #[error(
        "database_url must be a postgres:// URL (every service gets a schema there); \
         for SQLite leave it unset and set data_dir, or set <service>.database.url"
    )]
    SharedDatabaseNotPostgres,
    /// The gateway has no database.
    #[error("the gateway stores nothing and has no database")]
    NoDatabase,
}

impl MeshConfig {
    /// A service's listen address and database, whatever its settings; None for the gateway.
    fn placement(&self, component: Component) -> Option<(SocketAddr, Option<&DatabaseConfig>)> {
        let (listen, database) = match component {
            Component::Gateway => return None,
            Component::Fulfillment => (self.fulfillment.listen, &self.fulfillment.database),
            Component::CustomerIdentity => (self.customer_identity.listen, &self.customer_identity.database),
            Component::CatalogIngest => (self.catalog_ingest.listen, &self.catalog_ingest.database),
            Component::PurchaseHistory => (self.purchase_history.listen, &self.purchase_history.database),
        };
        Some((listen, database.as_ref()))
    }

    /// Where `component` listens.
    pub fn listen(&self, component: Component) -> SocketAddr {
        self.placement(component).map_or(self.gateway.listen, |(listen, _)| listen)
    }

    /// Sets where `component` listens.
    pub fn set_listen(&mut self, component: Component, address: SocketAddr) {
        let listen = match component {
            Component::Gateway => &mut self.gateway.listen,
            Component::Fulfillment => &mut self.fulfillment.listen,
            Component::CustomerIdentity => &mut self.customer_identity.listen,
            Component::CatalogIngest => &mut self.catalog_ingest.listen,
            Component::PurchaseHistory => &mut self.purchase_history.listen,
        };
        *listen = address;
    }

    /// Every component on 127.0.0.1 port 0: free ports, for tests.
    pub fn use_ephemeral_ports(&mut self) {
        for component in Component::ALL {
            self.set_listen(component, SocketAddr::from(([127, 0, 0, 1], 0)));
        }
    }

    /// The database `component` uses: its own, else a schema in the shared
    /// Postgres, else its SQLite file in `data_dir`.
    pub fn database(&self, component: Component) -> Result<DatabaseConfig, ConfigProblem> {
        let ((_, own), name) =
            self.placement(component).zip(component.storage_name()).ok_or(ConfigProblem::NoDatabase)?;
        if let Some(own) = own {
            let mut own = own.clone();
            if own.schema.is_none() && own.backend().is_ok_and(|b| b == kit::db::Backend::Postgres) {
                own.schema = Some(name.to_string());
            }
            return Ok(own);
        }
        match &self.database_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(DatabaseConfig::postgres(url.clone(), name))
            }
            Some(_) => Err(ConfigProblem::SharedDatabaseNotPostgres),
            None => Ok(DatabaseConfig::sqlite_file(self.data_dir.join(format!("{name}.db")))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_by_default_one_sqlite_file_per_service() {
        let config = MeshConfig::default();
        let db = config.database(Component::CustomerIdentity).unwrap();
        assert_eq!(db.url, "sqlite://data/customer_identity.db");
        assert_eq!(db.schema, None);
    }

    #[test]
    fn a_shared_postgres_gives_each_service_its_schema() {
        let config = MeshConfig { database_url: Some("postgres://db/mesh".into()), ..Default::default() };
        let db = config.database(Component::PurchaseHistory).unwrap();
        assert_eq!(db.url, "postgres://db/mesh");
        assert_eq!(db.schema.as_deref(), Some("purchase_history"));
    }

    #[test]
    fn a_service_database_wins_and_keeps_its_schema_default() {
        let mut config = MeshConfig { database_url: Some("postgres://shared/mesh".into()), ..Default::default() };
        config.fulfillment.database = Some(DatabaseConfig { url: "postgres://own/f".into(), ..Default::default() });
        let db = config.database(Component::Fulfillment).unwrap();
        assert_eq!(db.url, "postgres://own/f");
        assert_eq!(db.schema.as_deref(), Some("fulfillment"));
    }

    #[test]
    fn a_shared_sqlite_url_and_the_gateway_database_are_refused() {
        let config = MeshConfig { database_url: Some("sqlite://all.db".into()), ..Default::default() };
        assert!(matches!(config.database(Component::Fulfillment), Err(ConfigProblem::SharedDatabaseNotPostgres)));
        assert!(matches!(MeshConfig::default().database(Component::Gateway), Err(ConfigProblem::NoDatabase)));
    }

    #[test]
    fn default_ports_are_distinct() {
        let config = MeshConfig::default();
        let mut ports: Vec<u16> = Component::ALL.iter().map(|c| config.listen(*c).port()).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports, vec![8080, 50051, 50052, 50053, 50054]);
    }
}
