//! CustomerIdentity: links commerce customers to LMS users, unique in both
//! directions and fast at tens of millions of users.
//!
//! Same shape as every service: [`api`] answers gRPC (parsing requests into
//! [`domain`] values, then the cache and the [`store`]); [`domain`] holds the
//! pure rules; [`store`] the Postgres and SQLite backends; `migrations/` their
//! schemas. Reads go through a read-through cache ([`kit::cache`]) that every
//! write invalidates before it answers.

pub mod api;
pub mod config;
mod convert;
pub mod domain;
pub mod events;
mod service;
pub mod store;

use kit::db::Migrations;

pub use api::CustomerIdentityApi;
pub use config::Config;
pub use service::CustomerIdentity;

/// The component's name: in logs, as the Postgres schema, as the SQLite file name.
pub const NAME: &str = "customer_identity";

/// Migrations for both backends, kept in step.
pub static MIGRATIONS: Migrations =
    Migrations { postgres: sqlx::migrate!("migrations/postgres"), sqlite: sqlx::migrate!("migrations/sqlite") };
