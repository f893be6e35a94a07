//! PurchaseHistory: purchase events from the stream, stored once each, listed
//! per learner.
//!
//! Same shape as every service: [`api`] answers gRPC (`RecordPurchase` appends
//! to the stream; `ListPurchases` resolves the learner, then pages the store);
//! [`domain`] holds the pure rules (what a valid purchase is, legacy fields,
//! page tokens); [`store`] the Postgres and SQLite backends; [`consumer`] reads
//! the purchases stream through [`kit::bus::consumer`] and stores each purchase
//! once before acknowledging it.

pub mod api;
pub mod config;
pub mod consumer;
mod convert;
pub mod dead_letters;
pub mod domain;
pub mod refund;
mod service;
pub mod store;

use kit::db::Migrations;

pub use api::PurchaseHistoryApi;
pub use config::Config;
pub use service::PurchaseHistory;

/// The component's name: in logs, as the Postgres schema, as the SQLite file name.
pub const NAME: &str = "purchase_history";

/// Migrations for both backends, kept in step.
pub static MIGRATIONS: Migrations =
    Migrations { postgres: sqlx::migrate!("migrations/postgres"), sqlite: sqlx::migrate!("migrations/sqlite") };
