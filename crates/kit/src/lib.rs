//! What every component of the mesh shares, written once.
//!
//! - [`config`]: defaults, then an optional TOML file, then `MESH_*` environment;
//! - [`telemetry`]: JSON logs carrying `trace_id`/`span_id`, OTLP span export,
//!   the W3C trace-context propagator;
//! - [`trace`]: tower layers that continue a trace on the server and carry it on
//!   outgoing gRPC and HTTP calls;
//! - [`serve`]: the one way a gRPC component starts (health, reflection,
//!   tracing, graceful shutdown);
//! - [`client`]: traced gRPC channels between components;
//! - [`cache`]: read-through cache, Redis or in-process, never stale after a write;
//! - [`db`]: connecting to and migrating Postgres or SQLite;
//! - [`error`]: `google.rpc.Status` errors with `BadRequest`, `RetryInfo` and
//!   `ErrorInfo` details.

pub mod cache;
pub mod client;
pub mod config;
pub mod db;
pub mod error;
pub mod serve;
pub mod shutdown;
pub mod telemetry;
pub mod trace;

#[cfg(feature = "testing")]
pub mod testing;
