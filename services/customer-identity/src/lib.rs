//! CustomerIdentity: links commerce customers to LMS users, unique in both
//! directions and fast at tens of millions of users.
//!
//! Same shape as every service: [`api`] answers gRPC (validation, then the
//! domain, then the store); `domain` holds pure rules; `store/` the Postgres
//! and SQLite backends; `migrations/` their schemas. Its behaviour arrives with
//! issue #3; until then every RPC answers UNIMPLEMENTED while health and
//! reflection work.

pub mod api;

use kit::db::Migrations;
use proto::commerce::identity::v1::customer_identity_service_server::CustomerIdentityServiceServer;

pub use api::CustomerIdentityApi;

/// The component's name: in logs, as the Postgres schema, as the SQLite file name.
pub const NAME: &str = "customer_identity";

/// Migrations for both backends, kept in step.
pub static MIGRATIONS: Migrations =
    Migrations { postgres: sqlx::migrate!("migrations/postgres"), sqlite: sqlx::migrate!("migrations/sqlite") };

/// The gRPC service, ready to hand to [`kit::serve::GrpcServer::service`].
pub fn service() -> CustomerIdentityServiceServer<CustomerIdentityApi> {
    CustomerIdentityServiceServer::new(CustomerIdentityApi)
}
