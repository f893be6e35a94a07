//! CatalogIngest: validated, ordered, throttled product events from other lines
//! of business, applied to the catalog in dependency order.
//!
//! Same shape as every service: [`api`] answers gRPC (validation, then the
//! domain, then the store); `domain` holds pure rules; `store/` the Postgres
//! and SQLite backends; `migrations/` their schemas. Its behaviour arrives with
//! issue #5; until then every RPC answers UNIMPLEMENTED while health and
//! reflection work.

pub mod api;

use kit::db::Migrations;
use proto::commerce::catalog::v1::catalog_ingest_service_server::CatalogIngestServiceServer;

pub use api::CatalogIngestApi;

/// The component's name: in logs, as the Postgres schema, as the SQLite file name.
pub const NAME: &str = "catalog_ingest";

/// Migrations for both backends, kept in step.
pub static MIGRATIONS: Migrations =
    Migrations { postgres: sqlx::migrate!("migrations/postgres"), sqlite: sqlx::migrate!("migrations/sqlite") };

/// The gRPC service, ready to hand to [`kit::serve::GrpcServer::service`].
pub fn service() -> CatalogIngestServiceServer<CatalogIngestApi> {
    CatalogIngestServiceServer::new(CatalogIngestApi)
}
