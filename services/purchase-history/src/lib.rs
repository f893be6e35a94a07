//! PurchaseHistory: purchase events from the stream, stored once each, listed
//! per learner.
//!
//! Same shape as every service: [`api`] answers gRPC (validation, then the
//! domain, then the store); `domain` holds pure rules; `store/` the Postgres
//! and SQLite backends; `migrations/` their schemas. Its behaviour arrives with
//! issue #6; until then every RPC answers UNIMPLEMENTED while health and
//! reflection work.

pub mod api;

use kit::db::Migrations;
use proto::commerce::purchases::v1::purchase_history_service_server::PurchaseHistoryServiceServer;

pub use api::PurchaseHistoryApi;

/// The component's name: in logs, as the Postgres schema, as the SQLite file name.
pub const NAME: &str = "purchase_history";

/// Migrations for both backends, kept in step.
pub static MIGRATIONS: Migrations =
    Migrations { postgres: sqlx::migrate!("migrations/postgres"), sqlite: sqlx::migrate!("migrations/sqlite") };

/// The gRPC service, ready to hand to [`kit::serve::GrpcServer::service`].
pub fn service() -> PurchaseHistoryServiceServer<PurchaseHistoryApi> {
    PurchaseHistoryServiceServer::new(PurchaseHistoryApi)
}
