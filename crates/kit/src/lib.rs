//! What every component of the mesh shares, written once.
//!
//! - [`config`]: defaults, then an optional TOML file, then `MESH_*` environment;
//! - [`telemetry`]: JSON logs carrying `trace_id`/`span_id`, OTLP span export,
//!   the W3C trace-context propagator;
//! - [`trace`]: tower layers that continue a trace on the server and carry it on
//!   outgoing gRPC and HTTP calls;
//! - [`serve`]: the one way a gRPC component starts (health, reflection,
//!   tracing, graceful shutdown);
//! - [`service`]: the one face every service crate shows (built from its settings and
//!   [`service::Dependencies`], serving gRPC, working in the background);
//! - [`protect`]: a deadline on every call and load shedding past a concurrency
//!   limit, as one tower layer that [`serve`] puts in front of every service;
//! - [`client`]: traced gRPC channels between components;
//! - [`metrics`]: the Prometheus registry, RED per RPC, and the admin port
//!   (`/metrics`, `/healthz`);
//! - [`cache`]: read-through cache, Redis or in-process, never stale after a write;
//! - [`bus`]: the event bus (Redis Streams or a SQLite log): idempotent publish, consumer groups, reclaim, dead letters,
//!   bounded retention;
//! - [`outbox`]: the transactional outbox's rows, SQL and relay (publish, stamp, prune after a window);
//! - [`db`]: connecting to and migrating Postgres or SQLite;
//! - [`error`]: `google.rpc.Status` errors with `BadRequest`, `RetryInfo` and
//!   `ErrorInfo` details;
//! - [`background`]: the pause a background loop takes after consecutive failures;
//! - [`page`]: the page size a list RPC allows and its next-page token;
//! - [`retirement`]: retired learners in from the customers stream, and the `retired_learners` table's SQL;
//! - [`time`]: protobuf `Timestamp` to and from `chrono`, range-checked;
//! - [`json`]: protobuf `Struct` to and from JSON;
//! - [`secret`]: the one secret type, never printed and zeroized on drop;
//! - [`throttle`]: a rate quota per key, in process (governor) or shared by every
//!   replica (Redis), and a concurrency gate that queues briefly, then sheds.

pub mod access;
pub mod auth;
pub mod background;
pub mod bus;
pub mod cache;
pub mod client;
pub mod component_spans;
pub mod config;
pub mod credential;
pub mod db;
pub mod dead_letters;
pub mod error;
pub mod json;
pub mod metrics;
pub mod outbox;
pub mod page;
pub mod protect;
mod redis_tcp;
pub mod retirement;
pub mod secret;
pub mod serve;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod throttle;
pub mod time;
pub mod trace;

#[cfg(feature = "testing")]
pub mod testing;

#[cfg(feature = "bench")]
pub mod bench;
