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
//! Nothing grows without bound ([`BusConfig`]): [`EventBus::trim`] drops the
//! entries every consumer group has acknowledged (and, on a stream no group
//! reads, the entries older than the dedupe window), forgets published event
//! ids after the dedupe window, drops dead letters after theirs, and caps every
//! stream at about [`BusConfig::max_len`] entries whatever the groups still
//! need. A [`Retention`] task runs it for every stream a client used.
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

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

mod backend;
pub mod consumer;
mod redis;
mod retention;
mod sqlite;

pub use self::redis::RedisStreams;
pub use self::retention::{
    BusConfig, BusConfigError, DEFAULT_DEDUPE_WINDOW, Retention, RetentionMetrics, StreamLabels, StreamStats,
};
pub use self::sqlite::SqliteLog;

/// One event to append, for [`EventBus::publish_all`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Publication<'a> {
    /// The stream it goes to.
    pub stream: &'a str,
    /// The producer's id of the event: appended once per stream within the dedupe window.
    pub event_id: &'a str,
    /// The event.
    pub payload: &'a [u8],
}

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
///
/// Dead letters written before the bus recorded the group, the delivery count
/// and (on the log) the first sighting read those as `None`: unknown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its id on the dead-letter stream: what [`EventBus::replay_dead_letters`] and
    /// [`EventBus::discard_dead_letters`] take.
    pub id: EntryId,
    /// The id the entry had on its own stream.
    pub original_id: EntryId,
    /// The producer's id of the event.
    pub event_id: String,
    /// The event, as published.
    pub payload: Vec<u8>,
    /// Why the consumer gave up on it.
    pub reason: String,
    /// The consumer group that gave up on it (several groups may read one stream).
    pub group: Option<String>,
    /// How many times the entry had been delivered when it was dead-lettered.
    pub delivery_count: Option<u64>,
    /// When the entry was appended to its stream (first seen).
    pub first_seen: Option<DateTime<Utc>>,
    /// When it was dead-lettered (last seen).
    pub dead_lettered_at: Option<DateTime<Utc>>,
    /// Why the stored entry could not be read whole (fields missing or not text), when so:
    /// listed with what is known rather than failing every listing.
    pub unreadable: Option<String>,
}

/// Which dead letters [`EventBus::list_dead_letters`] answers, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeadLetterQuery {
    /// Only those after this dead-letter id (the previous page's `next`).
    pub after: Option<EntryId>,
    /// Only those whose reason contains this text.
    pub reason: Option<String>,
    /// Only those this group dead-lettered (and those whose group is unknown).
    pub group: Option<String>,
    /// At most this many.
    pub max: usize,
}

impl DeadLetterQuery {
    /// Whether `letter` is one this query asks for (the `after` bound aside).
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        self.reason.as_deref().is_none_or(|reason| letter.reason.contains(reason))
            && match (&self.group, &letter.group) {
                (Some(wanted), Some(group)) => wanted == group,
                _ => true,
            }
    }
}

/// One page of dead letters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeadLetterPage {
    /// The dead letters, oldest first.
    pub letters: Vec<DeadLetter>,
    /// Where the next page starts (its `after`), when there may be more.
    pub next: Option<EntryId>,
}

/// Who discarded dead letters and why: kept with each one discarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discard {
    /// The subject of the caller's token.
    pub by: String,
    /// Why, in the operator's words.
    pub reason: String,
}

/// A discarded dead letter, as kept for the audit (for the dead-letter window).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscardedDeadLetter {
    /// The dead letter as it was.
    pub letter: DeadLetter,
    /// Who discarded it and why.
    pub discard: Discard,
    /// When.
    pub discarded_at: DateTime<Utc>,
}

/// One page of discarded dead letters, in the order they were discarded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiscardedPage {
    /// The audit records, oldest discard first.
    pub records: Vec<DiscardedDeadLetter>,
    /// Where the next page starts (its `after`: a discard record's id), when there may be more.
    pub next: Option<EntryId>,
}

/// How many dead letters one list call examines at most, matching or not: a
/// filtered page may come back short, with `next` to go on from.
pub const DEAD_LETTER_SCAN_LIMIT: usize = 10_000;

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
///
/// [`RedisStreams`] and [`SqliteLog`] share one implementation of it, which keeps what the
/// contract says whatever the storage (a call with nothing to do, the streams used); each
/// backend supplies only its storage's side.
#[async_trait::async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Appends an event. Idempotent per `event_id` on a stream: publishing an id already published
    /// within the dedupe window ([`BusConfig::dedupe_window`], 7 days by default) appends nothing and
    /// answers Ok(false); a new id answers Ok(true). This is what makes an outbox relay "publish once in
    /// effect" across restarts.
    async fn publish(&self, stream: &str, event_id: &str, payload: &[u8]) -> Result<bool, BusError>;
    /// Appends events in order, each as [`publish`](EventBus::publish) would (an id repeated in the
    /// batch is appended once), in one round trip (Redis: a pipeline) or one transaction (the log);
    /// answers one flag per event. On an error some events may have been appended: publish them
    /// again, the dedupe keeps each once.
    async fn publish_all(&self, events: &[Publication<'_>]) -> Result<Vec<bool>, BusError>;
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
    /// Entries on the dead-letter stream of `stream`, oldest first, at most `max` (for tests).
    async fn dead_letters(&self, stream: &str, max: usize) -> Result<Vec<DeadLetter>, BusError> {
        let query = DeadLetterQuery { max, ..DeadLetterQuery::default() };
        Ok(self.list_dead_letters(stream, &query).await?.letters)
    }
    /// A page of the dead letters of `stream` that `query` asks for, oldest first. Examines
    /// at most [`DEAD_LETTER_SCAN_LIMIT`] dead letters per call.
    async fn list_dead_letters(&self, stream: &str, query: &DeadLetterQuery) -> Result<DeadLetterPage, BusError>;
    /// Appends each dead letter named by its id back to `stream` (its event id, its payload),
    /// as a new entry every group reads, and removes it from the dead-letter stream, in one
    /// step per letter. The event id is published again whatever the dedupe window says (its
    /// marker renewed): a replay always appends. Answers, per id, the new entry's id, or `None`
    /// when there is no such dead letter (replayed or discarded already, or never).
    async fn replay_dead_letters(&self, stream: &str, ids: &[EntryId]) -> Result<Vec<Option<EntryId>>, BusError>;
    /// Removes each dead letter named by its id, keeping it with `discard` and the time as an
    /// audit record (for the dead-letter window, like dead letters). Answers, per id, whether
    /// there was such a dead letter.
    async fn discard_dead_letters(
        &self,
        stream: &str,
        ids: &[EntryId],
        discard: &Discard,
    ) -> Result<Vec<bool>, BusError>;
    /// A page of the audit records of the dead letters of `stream` discarded that `query` asks
    /// for, in the order they were discarded; `query.after` and `next` are discard records'
    /// ids. Examines at most [`DEAD_LETTER_SCAN_LIMIT`] records per call.
    async fn discarded_dead_letters(&self, stream: &str, query: &DeadLetterQuery) -> Result<DiscardedPage, BusError>;
    /// Each dead letter of `stream` named by its id, read directly; `None` when there is no
    /// such dead letter (or the id is not one the bus makes).
    async fn dead_letters_by_id(&self, stream: &str, ids: &[EntryId]) -> Result<Vec<Option<DeadLetter>>, BusError>;
    /// Entries in the group not yet acknowledged (pending) — for the stream-lag metric and tests.
    async fn pending(&self, stream: &str, group: &str) -> Result<u64, BusError>;
    /// Takes `consumer` out of `group` when it stops, if it holds no pending entry (Redis:
    /// `XGROUP DELCONSUMER`, checked and done in one script): consumers are named per process,
    /// so without it every restart would leave one behind for ever. A consumer that still holds
    /// entries stays, since deleting it would drop them from the pending list and no other
    /// consumer could reclaim them. Answers whether it is gone (true also when it, its group or
    /// its stream never existed).
    async fn leave(&self, stream: &str, group: &str, consumer: &str) -> Result<bool, BusError>;
    /// Applies the retention of [`BusConfig`] to `stream` as of `now`: drops the entries every
    /// consumer group has acknowledged (a group needs what it has not read and what it has
    /// pending; Redis keeps its last delivered entry too, and trims whole nodes of up to 100
    /// entries), on a stream without groups the entries older than the dedupe window, the entries
    /// beyond about `max_len` (even those a group still needs), the event ids published before the
    /// dedupe window, and the dead letters older than theirs. Each call does a bounded amount of
    /// work per round, a few rounds at most; what is left waits for the next call. Answers what
    /// the stream keeps.
    async fn trim(&self, stream: &str, now: DateTime<Utc>) -> Result<StreamStats, BusError>;
    /// The streams this client has published to or made a group on since it was opened, in name
    /// order: what its [`Retention`] task trims.
    fn streams(&self) -> Vec<String>;
}

/// The dead-letter stream of `stream`.
pub fn dead_letter_stream(stream: &str) -> String {
    format!("{stream}.dead")
}

/// Where the discarded dead letters of `stream` are kept (Redis).
fn discarded_stream(stream: &str) -> String {
    format!("{stream}.dead.discarded")
}

/// The bus a component uses: Redis Streams when `redis_url` is given, else the SQLite log at `log_path`,
/// with the default [`BusConfig`]. Connects lazily either way; fails only on a malformed URL or an
/// uncreatable directory.
pub fn open(redis_url: Option<&str>, log_path: &Path) -> Result<Arc<dyn EventBus>, BusError> {
    open_with(redis_url, log_path, &BusConfig::default())
}

/// [`open`] with the given retention settings.
pub fn open_with(redis_url: Option<&str>, log_path: &Path, config: &BusConfig) -> Result<Arc<dyn EventBus>, BusError> {
    Ok(match redis_url {
        Some(url) => Arc::new(RedisStreams::new(url)?.with_config(*config)),
        None => Arc::new(SqliteLog::open(log_path)?.with_config(*config)),
    })
}

/// The streams a client used, for [`EventBus::streams`].
#[derive(Debug, Default)]
struct KnownStreams(Mutex<BTreeSet<String>>);

impl KnownStreams {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        // A set of names stays whole whatever panicked while holding it.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn note(&self, stream: &str) {
        let mut known = self.lock();
        if !known.contains(stream) {
            known.insert(stream.to_string());
        }
    }

    fn list(&self) -> Vec<String> {
        self.lock().iter().cloned().collect()
    }
}

/// Milliseconds since the epoch, never negative (a cutoff before 1970 keeps everything).
fn epoch_millis(time: DateTime<Utc>) -> i64 {
    time.timestamp_millis().max(0)
}

/// `time - window`, saturating at the epoch.
fn before(time: DateTime<Utc>, window: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(window)
        .ok()
        .and_then(|window| time.checked_sub_signed(window))
        .unwrap_or(DateTime::UNIX_EPOCH)
        .max(DateTime::UNIX_EPOCH)
}
