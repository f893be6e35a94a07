//! Fulfillment: paid orders become LMS enrollments and program entitlements,
//! durably and exactly once per line item.
//!
//! Same shape as every service: [`api`] answers gRPC (parsing requests into
//! [`domain`] values, then the [`store`]); [`domain`] holds the pure rules
//! (validation, repeat detection, the retry policy); [`store`] the Postgres and
//! SQLite backends, whose jobs table is the queue; `migrations/` their schemas.
//! Behind the API run the [`worker`]s, which call the LMS through [`lms`], and
//! the [`outbox`] relay, which publishes what succeeded (or failed) to the event bus and
//! deletes published rows after `outbox.retention`, and the [`webhook`] sender,
//! which tells each order's source system how its lines ended.
//!
//! ```text
//! FulfillOrder ─► jobs table (PENDING) ─► Workers ─claim/lease─► LMS
//!                                            │
//!                      SUCCEEDED + outbox rows (one transaction)
//!                                            │
//!                                 OutboxRelay ─► EventBus
//! ```

pub mod api;
pub mod config;
mod convert;
pub mod dead_letters;
pub mod domain;
pub mod filter;
pub mod lms;
pub mod metrics;
pub mod outbox;
pub mod retirement;
mod service;
pub mod store;
pub mod webhook;
pub mod worker;

use kit::db::Migrations;

pub use api::FulfillmentApi;
pub use config::Config;
pub use service::Fulfillment;

/// The component's name: in logs, as the Postgres schema, as the SQLite file name.
pub const NAME: &str = "fulfillment";

/// Migrations for both backends, kept in step.
pub static MIGRATIONS: Migrations =
    Migrations { postgres: sqlx::migrate!("migrations/postgres"), sqlite: sqlx::migrate!("migrations/sqlite") };
