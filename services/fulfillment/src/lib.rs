//! Fulfillment: paid orders become LMS enrollments and program entitlements,
//! durably and exactly once per line item.
//!
//! Same shape as every service: [`api`] answers gRPC (validation, then the
//! domain, then the store); `domain` holds pure rules; `store/` the Postgres
//! and SQLite backends; `migrations/` their schemas. Its behaviour arrives with
//! issue #4; until then every RPC answers UNIMPLEMENTED while health and
//! reflection work.

pub mod api;

use kit::db::Migrations;
use proto::commerce::fulfillment::v1::fulfillment_service_server::FulfillmentServiceServer;

pub use api::FulfillmentApi;

/// The component's name: in logs, as the Postgres schema, as the SQLite file name.
pub const NAME: &str = "fulfillment";

/// Migrations for both backends, kept in step.
pub static MIGRATIONS: Migrations =
    Migrations { postgres: sqlx::migrate!("migrations/postgres"), sqlite: sqlx::migrate!("migrations/sqlite") };

/// The gRPC service, ready to hand to [`kit::serve::GrpcServer::service`].
pub fn service() -> FulfillmentServiceServer<FulfillmentApi> {
    FulfillmentServiceServer::new(FulfillmentApi)
}
