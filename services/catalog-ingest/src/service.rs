//! [`CatalogIngest`]: the service's one public face ([`kit::service::Service`]):
//! the API over its sources, quotas, concurrency gate, store and discovery
//! client. It has no background work.

use std::sync::Arc;

use kit::db::Migrations;
use kit::serve::GrpcServer;
use kit::service::{Dependencies, Service, SetupError};
use kit::throttle::{ConcurrencyGate, QuotaMetrics, Quotas};
use proto::commerce::catalog::v1::catalog_ingest_service_server::CatalogIngestServiceServer;

use crate::api::CatalogIngestApi;
use crate::config::{Config, ConfigError, sources};
use crate::discovery::Discovery;
use crate::{MIGRATIONS, NAME, store};

/// The running parts of CatalogIngest: its API, ready to serve.
pub struct CatalogIngest {
    api: CatalogIngestApi,
}

impl CatalogIngest {
    /// The gRPC service, ready to hand to [`kit::serve::GrpcServer::service`].
    pub fn service(&self) -> CatalogIngestServiceServer<CatalogIngestApi> {
        CatalogIngestServiceServer::new(self.api.clone())
    }
}

impl Service for CatalogIngest {
    type Config = Config;

    const NAME: &'static str = NAME;

    fn migrations() -> &'static Migrations {
        &MIGRATIONS
    }

    /// CatalogIngest over its database and the configured sources. With Redis
    /// the sources' quotas are cluster-wide (the quota's metrics registered);
    /// without, in this process.
    fn build(config: &Config, dependencies: &Dependencies<'_>) -> Result<Self, SetupError> {
        let sources = Arc::new(sources(config).map_err(SetupError::setting)?);
        let quotas = match dependencies.redis_url {
            Some(url) => {
                let quota_metrics = QuotaMetrics::default();
                quota_metrics.register(NAME, dependencies.metrics);
                Quotas::cluster(url, sources.quotas(), config.quota.clone(), quota_metrics)
                    .map_err(|e| SetupError::setting(ConfigError::from(e)))?
            }
            None => Quotas::in_process(sources.quotas()),
        };
        let gate = ConcurrencyGate::new(config.max_concurrent_ingests, config.max_queue_wait);
        let discovery = Discovery::new(&config.discovery).map_err(|e| SetupError::setting(ConfigError::from(e)))?;
        let api = CatalogIngestApi::new(store::for_database(dependencies.db), sources, gate, discovery)
            .with_quotas(quotas)
            .with_metrics(dependencies.metrics);
        Ok(Self { api })
    }

    fn serve(&self, server: GrpcServer) -> GrpcServer {
        server.service(self.service())
    }
}
