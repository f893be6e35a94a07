//! The event bus every service shares: one contract, two backends — Redis
//! Streams in production ([`RedisStreams`]), a durable log in a SQLite file
//! embedded ([`SqliteLog`]).
//!
//! Delivery is at least once: a consumer reads entries, commits their effect,
//! then acknowledges them; an entry read but never acknowledged (the consumer
//! crashed) stays pending until another consumer [`reclaim`](EventBus::reclaim)s
//! it, and one that keeps failing is [`dead_letter`](EventBus::dead_letter)ed.
//! Publishing is idempotent per event id, so an outbox relay that publishes a
//! row again after a crash appends nothing: with idempotent consumers, every
//! event takes effect once.
//!
//! A read cancelled while it waits (a `select!` on shutdown) may leave entries
//! pending for its consumer without returning them: they are reclaimed later,
//! like the entries of a consumer that crashed.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), kit::bus::BusError> {
//! use std::time::Duration;
//!
//! let dir = std::env::temp_dir().join(format!("bus-doc-{}", uuid::Uuid::new_v4().simple()));
//! let bus = kit::bus::open(None, &dir.join("events.db"))?;
//! bus.ensure_group("orders.paid", "purchase-history").await?;
//! assert!(bus.publish("orders.paid", "evt-1", b"order 42").await?);
//! assert!(!bus.publish("orders.paid", "evt-1", b"order 42").await?, "published once");
//! let got = bus.read("orders.paid", "purchase-history", "worker-1", 10, Duration::ZERO).await?;
//! assert_eq!(got[0].payload, b"order 42");
//! // ... commit the effect, then:
//! bus.ack("orders.paid", "purchase-history", &[got[0].id.clone()]).await?;
//! assert_eq!(bus.pending("orders.paid", "purchase-history").await?, 0);
//! # let _ = std::fs::remove_dir_all(dir);
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub mod consumer;
mod redis;
mod sqlite;

pub use self::redis::{DEFAULT_DEDUPE_WINDOW, RedisStreams};
pub use self::sqlite::SqliteLog;

/// One entry as a consumer receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Where the entry sits on its stream; what [`EventBus::ack`] takes.
    pub id: EntryId,
    /// The producer's id of the event (the outbox row's), for idempotent consumers.
    pub event_id: String,
    /// The event, as published.
    pub payload: Vec<u8>,
    /// How many times the entry was handed to a consumer: 1 on first read, more after reclaims.
    pub delivery_count: u64,
}

/// A stream entry's id as the backend assigned it (Redis `1700000000000-0`, or the log's sequence number as a string).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EntryId(pub String);

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An entry moved to a stream's dead-letter stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The id the entry had on its own stream.
    pub original_id: EntryId,
    /// The producer's id of the event.
    pub event_id: String,
    /// The event, as published.
    pub payload: Vec<u8>,
    /// Why the consumer gave up on it.
    pub reason: String,
}

/// Why the bus failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Redis failed or is unreachable.
    #[error("event bus: redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// The SQLite log failed.
    #[error("event bus: sqlite log: {0}")]
    Sqlite(#[from] sqlx::Error),
    /// The SQLite log's directory could not be created.
    #[error("event bus: cannot create {path}: {source}")]
    CreateDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The consumer group does not exist (yet, or any more): call [`EventBus::ensure_group`].
    #[error("event bus: no consumer group {group:?} on stream {stream:?}")]
    NoGroup {
        /// The stream.
        stream: String,
        /// The group.
        group: String,
    },
    /// An entry, an entry id or a reply is not what the bus writes.
    #[error("event bus: malformed entry {id:?} on stream {stream:?}: {reason}")]
    Malformed {
        /// The stream.
        stream: String,
        /// The entry's id, as far as known.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl BusError {
    fn malformed(stream: &str, id: &str, reason: impl Into<String>) -> Self {
        Self::Malformed { stream: stream.to_string(), id: id.to_string(), reason: reason.into() }
    }

    fn no_group(stream: &str, group: &str) -> Self {
        Self::NoGroup { stream: stream.to_string(), group: group.to_string() }
    }
}

/// A stream of events with consumer groups. Every backend passes the same contract suite (`tests/bus_contract.rs`).
#[async_trait::async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Appends an event. Idempotent per `event_id` on a stream: publishing an id already published
    /// (within the dedupe window, default 7 days on Redis, forever in the log) appends nothing and answers Ok(false);
    /// a new id answers Ok(true). This is what makes an outbox relay "publish once in effect" across restarts.
    async fn publish(&self, stream: &str, event_id: &str, payload: &[u8]) -> Result<bool, BusError>;
    /// Creates the consumer group if missing, starting at the beginning of the stream (creating the stream too).
    async fn ensure_group(&self, stream: &str, group: &str) -> Result<(), BusError>;
    /// New entries for this consumer, at most `max`, waiting up to `block` when there are none
    /// (Redis: XREADGROUP BLOCK; log: wakes when a publish in this process lands, polls every 250 ms otherwise — no busy loop).
    /// Read entries are pending for this consumer until acknowledged. [`BusError::NoGroup`] without a group.
    async fn read(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, BusError>;
    /// Acknowledges entries (after the consumer committed its effect).
    async fn ack(&self, stream: &str, group: &str, ids: &[EntryId]) -> Result<(), BusError>;
    /// Takes over entries another consumer read but did not acknowledge for at least `min_idle`
    /// (Redis: XAUTOCLAIM), incrementing their delivery count.
    async fn reclaim(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>, BusError>;
    /// Moves an entry to the dead-letter stream `<stream>.dead` (with the reason and the original id) and acknowledges it.
    async fn dead_letter(&self, stream: &str, group: &str, delivery: &Delivery, reason: &str) -> Result<(), BusError>;
    /// Entries on the dead-letter stream of `stream`, oldest first, at most `max` (for operators and tests).
    async fn dead_letters(&self, stream: &str, max: usize) -> Result<Vec<DeadLetter>, BusError>;
    /// Entries in the group not yet acknowledged (pending) — for the stream-lag metric and tests.
    async fn pending(&self, stream: &str, group: &str) -> Result<u64, BusError>;
}

/// The dead-letter stream of `stream`.
pub fn dead_letter_stream(stream: &str) -> String {
    format!("{stream}.dead")
}

/// The bus a component uses: Redis Streams when `redis_url` is given, else the SQLite log at `log_path`.
/// Connects lazily either way; fails only on a malformed URL or an uncreatable directory.
pub fn open(redis_url: Option<&str>, log_path: &Path) -> Result<Arc<dyn EventBus>, BusError> {
    Ok(match redis_url {
        Some(url) => Arc::new(RedisStreams::new(url)?),
        None => Arc::new(SqliteLog::open(log_path)?),
    })
}
