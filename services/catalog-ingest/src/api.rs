//! The gRPC face of the service: request validation, then the domain, then
//! the store. No SQL here.

use proto::commerce::catalog::v1::catalog_ingest_service_server::CatalogIngestService;

/// Answers `commerce.catalog.v1.CatalogIngestService`.
#[derive(Clone, Debug, Default)]
pub struct CatalogIngestApi;

// Every RPC keeps the generated default (UNIMPLEMENTED) until the service is built.
#[tonic::async_trait]
impl CatalogIngestService for CatalogIngestApi {}
