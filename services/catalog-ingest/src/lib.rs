//! CatalogIngest: validated, ordered, throttled product events from other lines
//! of business, applied to the catalog in dependency order.
//!
//! Same shape as every service: [`api`] answers gRPC (admission, replays, then
//! the steps); [`domain`] holds the canonical model and its rules; [`transform`]
//! maps each source's payloads to it, as declared in the source's file
//! (`config/catalog/sources/<source>.toml`); [`store`] writes it in dependency
//! order in one transaction (Postgres and SQLite); [`discovery`] pushes applied
//! events downstream when configured.
//!
//! ```text
//! IngestProductEvent ─► source known? ─► quota (per source: Redis GCRA, else governor) ─► gate (global concurrency)
//!   ─► replay? ─► VALIDATE ─► TRANSFORM ─► [instructors ─► course ─► course runs ─► seats] ─► discovery
//!                                          └──────────── one transaction ────────────┘
//! ```

pub mod api;
pub mod config;
mod convert;
pub mod discovery;
pub mod domain;
mod service;
pub mod store;
pub mod transform;

use kit::db::Migrations;

pub use api::CatalogIngestApi;
pub use config::Config;
pub use service::CatalogIngest;

/// The component's name: in logs, as the Postgres schema, as the SQLite file name.
pub const NAME: &str = "catalog_ingest";

/// Migrations for both backends, kept in step.
pub static MIGRATIONS: Migrations =
    Migrations { postgres: sqlx::migrate!("migrations/postgres"), sqlite: sqlx::migrate!("migrations/sqlite") };
