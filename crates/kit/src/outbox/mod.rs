//! The transactional outbox every producing service shares: a service writes
//! its events to its own `outbox` table in the transaction that changes its
//! state; a [`Relay`] publishes them to the event bus, oldest first, stamps
//! them published, and deletes published rows once they are older than
//! [`OutboxConfig::retention`].
//!
//! What is shared: the rows ([`OutboxEvent`], [`OutboxEntry`]), the store
//! contract the relay needs ([`OutboxStore`]), its SQL for the conventional
//! table on both backends ([`postgres`], [`sqlite`], or [`SqlOutbox`] over a
//! whole [`Database`]), the relay and its metrics. A service's store
//! implements [`OutboxStore`] by calling the SQL here, and inserts rows with
//! [`postgres::insert`] / [`sqlite::insert`] inside its own transactions.
//!
//! The table, created by each service's migrations (SQLite: `INTEGER`
//! microseconds since the epoch for both times, `INTEGER PRIMARY KEY
//! AUTOINCREMENT`, `BLOB`):
//!
//! ```sql
//! CREATE TABLE outbox (
//!     seq          BIGSERIAL   PRIMARY KEY,
//!     event_id     TEXT        NOT NULL UNIQUE,
//!     stream       TEXT        NOT NULL,
//!     payload      BYTEA       NOT NULL,
//!     create_time  TIMESTAMPTZ NOT NULL,
//!     published_at TIMESTAMPTZ
//! );
//! CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;
//! CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
//! ```
//!
//! Both partial indexes keep the relay's queries proportional to what they
//! touch: the unpublished rows, and the published rows old enough to delete.

pub mod postgres;
pub mod sqlite;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::bus::{BusError, EventBus, Publication};
use crate::db::Database;

/// How often the relay reads the backlog into its gauges.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// Published rows one prune statement deletes at most: each statement is short, and a
/// prune after a long pause catches up over several.
const PRUNE_BATCH: i64 = 10_000;

/// An event to publish, written with the state change that caused it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Unique per event; the bus publishes each id once.
    pub event_id: String,
    /// The stream it goes to.
    pub stream: String,
    /// The encoded event.
    pub payload: Vec<u8>,
}

/// An unpublished outbox row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Its place in the outbox: the relay publishes in this order.
    pub seq: i64,
    /// The event.
    pub event: OutboxEvent,
}

/// An outbox row as both stores select it: `seq, event_id, stream, payload`.
type OutboxRow = (i64, String, String, Vec<u8>);

impl OutboxEntry {
    /// The entry of a selected row.
    fn from_row((seq, event_id, stream, payload): OutboxRow) -> Self {
        Self { seq, event: OutboxEvent { event_id, stream, payload } }
    }
}

/// The rows waiting for the relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Rows not yet published.
    pub unpublished: u64,
    /// When the oldest of them (the next to publish) was written; None when there are none.
    pub oldest_unpublished: Option<DateTime<Utc>>,
}

/// Why the outbox could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The database failed.
    #[error("outbox: database: {0}")]
    Database(#[from] sqlx::Error),
}

/// What the relay needs of a service's outbox.
#[async_trait::async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// Unpublished rows, oldest first, at most `limit`.
    async fn unpublished(&self, limit: i64) -> Result<Vec<OutboxEntry>, OutboxError>;

    /// Stamps rows as published at `now`.
    async fn mark_published(&self, seqs: &[i64], now: DateTime<Utc>) -> Result<(), OutboxError>;

    /// Deletes at most `limit` rows published before `published_before`; answers how many.
    async fn prune_published(&self, published_before: DateTime<Utc>, limit: i64) -> Result<u64, OutboxError>;

    /// The unpublished rows at a glance.
    async fn backlog(&self) -> Result<Backlog, OutboxError>;
}

/// The conventional `outbox` table of a service's database, on either backend.
#[derive(Clone, Debug)]
pub struct SqlOutbox {
    db: Database,
}

impl SqlOutbox {
    /// The outbox in `db` (whose Postgres `search_path` is the service's schema).
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

#[async_trait::async_trait]
impl OutboxStore for SqlOutbox {
    async fn unpublished(&self, limit: i64) -> Result<Vec<OutboxEntry>, OutboxError> {
        Ok(match &self.db {
            Database::Postgres(pool) => postgres::unpublished(pool, limit).await?,
            Database::Sqlite(pool) => sqlite::unpublished(pool, limit).await?,
        })
    }

    async fn mark_published(&self, seqs: &[i64], now: DateTime<Utc>) -> Result<(), OutboxError> {
        match &self.db {
            Database::Postgres(pool) => postgres::mark_published(pool, seqs, now).await?,
            Database::Sqlite(pool) => sqlite::mark_published(pool, seqs, now).await?,
        }
        Ok(())
    }

    async fn prune_published(&self, published_before: DateTime<Utc>, limit: i64) -> Result<u64, OutboxError> {
        Ok(match &self.db {
            Database::Postgres(pool) => postgres::prune_published(pool, published_before, limit).await?,
            Database::Sqlite(pool) => sqlite::prune_published(pool, published_before, limit).await?,
        })
    }

    async fn backlog(&self) -> Result<Backlog, OutboxError> {
        Ok(match &self.db {
            Database::Postgres(pool) => postgres::backlog(pool).await?,
            Database::Sqlite(pool) => sqlite::backlog(pool).await?,
        })
    }
}

/// How long published rows are kept, and how often they are deleted
/// (`MESH_<SERVICE>__OUTBOX__...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OutboxConfig {
    /// Published rows are deleted once they were published this long ago
    /// (kept meanwhile to answer "was this event sent, and when").
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How often the relay deletes them.
    #[serde(with = "humantime_serde")]
    pub prune_every: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self { retention: Duration::from_secs(7 * 24 * 60 * 60), prune_every: Duration::from_secs(60) }
    }
}

/// An outbox setting that cannot be used, named.
#[derive(Debug, thiserror::Error)]
#[error("outbox.{0}")]
pub struct OutboxConfigError(String);

impl OutboxConfig {
    /// Refuses a prune interval that would spin or never come.
    pub fn check(&self) -> Result<(), OutboxConfigError> {
        if self.prune_every < Duration::from_millis(10) || self.prune_every > Duration::from_secs(86_400) {
            return Err(OutboxConfigError("prune_every must be between 10ms and 24h".into()));
        }
        Ok(())
    }
}

/// The relay's metrics (register them with [`OutboxMetrics::register`]).
#[derive(Clone, Debug, Default)]
pub struct OutboxMetrics {
    /// Rows not yet published.
    pub unpublished: Gauge,
    /// Seconds the next row to publish has waited; 0 when none waits.
    pub oldest_unpublished_age: Gauge<f64, AtomicU64>,
    /// Published rows deleted after the retention window.
    pub pruned: Counter,
}

impl OutboxMetrics {
    /// Registers the metrics as `<prefix>_unpublished`, `<prefix>_oldest_unpublished_age_seconds`
    /// and `<prefix>_pruned_total` (for example `fulfillment_outbox`).
    pub fn register(&self, prefix: &str, metrics: &crate::metrics::Metrics) {
        metrics.register(
            format!("{prefix}_unpublished"),
            "Outbox events not yet published to the event bus",
            self.unpublished.clone(),
        );
        metrics.register(
            format!("{prefix}_oldest_unpublished_age_seconds"),
            "Seconds the next outbox event to publish has waited",
            self.oldest_unpublished_age.clone(),
        );
        metrics.register(
            format!("{prefix}_pruned"),
            "Published outbox rows deleted after the retention window",
            self.pruned.clone(),
        );
    }
}

/// Publishes outbox rows to the bus, oldest first, stamps them published,
/// deletes them after the retention window, and reports the backlog.
pub struct Relay {
    outbox: Arc<dyn OutboxStore>,
    bus: Arc<dyn EventBus>,
    wake: Arc<Notify>,
    config: OutboxConfig,
    metrics: OutboxMetrics,
    /// How often to look when nobody in this process wakes the relay (rows
    /// written by another process).
    pub poll: Duration,
    /// Rows per round: one pipelined publish, one stamp.
    pub batch: i64,
}

impl Relay {
    /// A relay from `outbox` to `bus`; `wake` is notified whenever this process writes outbox rows.
    /// Default retention, metrics recorded but not registered.
    pub fn new(outbox: Arc<dyn OutboxStore>, bus: Arc<dyn EventBus>, wake: Arc<Notify>) -> Self {
        Self {
            outbox,
            bus,
            wake,
            config: OutboxConfig::default(),
            metrics: OutboxMetrics::default(),
            poll: Duration::from_secs(1),
            batch: 512,
        }
    }

    /// The same relay with this retention.
    pub fn with_config(mut self, config: OutboxConfig) -> Self {
        self.config = config;
        self
    }

    /// The same relay recording into these metrics.
    pub fn with_metrics(mut self, metrics: OutboxMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Publishes until `shutdown`, waiting for work without polling faster than
    /// `poll`; meanwhile reads the backlog every few seconds and prunes every `prune_every`.
    pub async fn run(self, shutdown: CancellationToken) {
        let publish = async {
            let mut failures = 0u32;
            loop {
                let wait = match self.publish_pending().await {
                    Ok(0) => {
                        failures = 0;
                        self.poll
                    }
                    Ok(_) => {
                        failures = 0;
                        continue;
                    }
                    Err(error) => {
                        failures = failures.saturating_add(1);
                        let wait = crate::background::pause_after(failures);
                        tracing::warn!(%error, retry_in = ?wait, "outbox relay could not publish; retrying");
                        wait
                    }
                };
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                }
            }
        };
        let upkeep = async {
            let mut last_prune: Option<Instant> = None;
            loop {
                if let Err(error) = self.refresh_backlog(Utc::now()).await {
                    tracing::warn!(%error, "could not read the outbox backlog");
                }
                if last_prune.is_none_or(|at| at.elapsed() >= self.config.prune_every) {
                    last_prune = Some(Instant::now());
                    if let Err(error) = self.prune(Utc::now()).await {
                        tracing::warn!(%error, "could not delete published outbox rows; trying again later");
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(BACKLOG_EVERY.min(self.config.prune_every)) => {}
                }
            }
        };
        tokio::join!(publish, upkeep);
    }

    /// One round: publishes up to `batch` rows in one call to the bus, then
    /// stamps them; answers how many. If the bus fails, nothing is stamped and
    /// the next round publishes the rows again (the bus keeps each id once).
    pub async fn publish_pending(&self) -> Result<usize, RelayError> {
        let entries = self.outbox.unpublished(self.batch).await?;
        if entries.is_empty() {
            return Ok(0);
        }
        let events: Vec<Publication<'_>> = entries
            .iter()
            .map(|entry| Publication {
                stream: &entry.event.stream,
                event_id: &entry.event.event_id,
                payload: &entry.event.payload,
            })
            .collect();
        self.bus.publish_all(&events).await?;
        let seqs: Vec<i64> = entries.iter().map(|entry| entry.seq).collect();
        self.outbox.mark_published(&seqs, Utc::now()).await?;
        Ok(entries.len())
    }

    /// Deletes the rows published more than `retention` before `now`; answers how many.
    pub async fn prune(&self, now: DateTime<Utc>) -> Result<u64, OutboxError> {
        let cutoff = chrono::Duration::from_std(self.config.retention)
            .ok()
            .and_then(|retention| now.checked_sub_signed(retention))
            .unwrap_or(DateTime::UNIX_EPOCH);
        let mut pruned = 0;
        loop {
            let deleted = self.outbox.prune_published(cutoff, PRUNE_BATCH).await?;
            pruned += deleted;
            self.metrics.pruned.inc_by(deleted);
            if deleted < u64::try_from(PRUNE_BATCH).unwrap_or(u64::MAX) {
                return Ok(pruned);
            }
        }
    }

    /// Reads the backlog into the gauges, as of `now`, and answers it.
    pub async fn refresh_backlog(&self, now: DateTime<Utc>) -> Result<Backlog, OutboxError> {
        let backlog = self.outbox.backlog().await?;
        self.metrics.unpublished.set(i64::try_from(backlog.unpublished).unwrap_or(i64::MAX));
        let age = backlog.oldest_unpublished.map_or(0.0, |oldest| (now - oldest).as_seconds_f64().max(0.0));
        self.metrics.oldest_unpublished_age.set(age);
        Ok(backlog)
    }
}

/// Why a relay round stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The outbox could not be read or stamped.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The bus refused or could not be reached.
    #[error(transparent)]
    Bus(#[from] BusError),
}
