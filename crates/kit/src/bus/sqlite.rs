//! The embedded backend: a durable log in a SQLite file of its own.
//!
//! Entries get a sequence number from one `AUTOINCREMENT` key. SQLite runs one
//! write transaction at a time, so numbers commit in order: a reader that has
//! seen entry `n` committed never later finds a smaller one appear, and a
//! group's position is a single number (`last_delivered_seq`). Reads, acks,
//! reclaims and dead-lettering run in `BEGIN IMMEDIATE` transactions (the write
//! lock first), so two consumers never take the same entry.

use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::{Notify, OnceCell};

use super::{BusError, DeadLetter, Delivery, EntryId, EventBus};

/// How often a blocked reader looks for entries published by another process
/// (publishes in this process wake it at once).
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The log's own schema, created on first use; the log is not a service database, so no migrations.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS entries (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    stream       TEXT    NOT NULL,
    event_id     TEXT    NOT NULL,
    payload      BLOB    NOT NULL,
    published_at INTEGER NOT NULL,
    UNIQUE (stream, event_id)
);
CREATE INDEX IF NOT EXISTS entries_by_stream ON entries (stream, seq);
CREATE TABLE IF NOT EXISTS consumer_groups (
    stream             TEXT    NOT NULL,
    grp                TEXT    NOT NULL,
    last_delivered_seq INTEGER NOT NULL,
    PRIMARY KEY (stream, grp)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (
    stream         TEXT    NOT NULL,
    grp            TEXT    NOT NULL,
    seq            INTEGER NOT NULL,
    consumer       TEXT    NOT NULL,
    delivered_at   INTEGER NOT NULL,
    delivery_count INTEGER NOT NULL,
    PRIMARY KEY (stream, grp, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    stream      TEXT    NOT NULL,
    original_id TEXT    NOT NULL,
    event_id    TEXT    NOT NULL,
    payload     BLOB    NOT NULL,
    reason      TEXT    NOT NULL,
    dead_at     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_by_stream ON dead_letters (stream, seq);
";

/// The embedded backend: a durable log in a SQLite file (WAL), for embedded mode.
#[derive(Clone)]
pub struct SqliteLog {
    pool: SqlitePool,
    schema: Arc<OnceCell<()>>,
    /// Woken by every publish of this instance, so blocked readers need not wait for a poll.
    published: Arc<Notify>,
}

impl SqliteLog {
    /// The log in the file at `path`. Creates the file's directory now, and
    /// the file and its tables on first use (connections are lazy).
    pub fn open(path: &Path) -> Result<Self, BusError> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|source| BusError::CreateDir { path: dir.display().to_string(), source })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // The log is the only copy of a published event (the outbox row is
            // marked sent once publish answers): a commit must survive power loss too.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        Ok(Self { pool, schema: Arc::new(OnceCell::new()), published: Arc::new(Notify::new()) })
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn ready(&self) -> Result<&SqlitePool, BusError> {
        self.schema.get_or_try_init(|| async { sqlx::raw_sql(SCHEMA).execute(&self.pool).await.map(drop) }).await?;
        Ok(&self.pool)
    }

    /// One attempt at [`EventBus::read`], without waiting.
    async fn read_now(&self, stream: &str, group: &str, consumer: &str, max: usize) -> Result<Vec<Delivery>, BusError> {
        let pool = self.ready().await?;
        // A plain read first: a reader that finds nothing (the common case when
        // polling) never takes the write lock.
        let anything_new: Option<bool> = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM entries e WHERE e.stream = g.stream AND e.seq > g.last_delivered_seq)
             FROM consumer_groups g WHERE g.stream = ? AND g.grp = ?",
        )
        .bind(stream)
        .bind(group)
        .fetch_optional(pool)
        .await?;
        match anything_new {
            None => return Err(BusError::no_group(stream, group)),
            Some(false) => return Ok(Vec::new()),
            Some(true) => {}
        }
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let last: Option<i64> =
            sqlx::query_scalar("SELECT last_delivered_seq FROM consumer_groups WHERE stream = ? AND grp = ?")
                .bind(stream)
                .bind(group)
                .fetch_optional(&mut *tx)
                .await?;
        let last = last.ok_or_else(|| BusError::no_group(stream, group))?;
        let rows: Vec<(i64, String, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, event_id, payload FROM entries WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(stream)
        .bind(last)
        .bind(limit(max))
        .fetch_all(&mut *tx)
        .await?;
        let Some(&(newest, _, _)) = rows.last() else {
            return Ok(Vec::new());
        };
        let now = now_millis();
        for (seq, _, _) in &rows {
            sqlx::query(
                "INSERT INTO pending (stream, grp, seq, consumer, delivered_at, delivery_count) VALUES (?, ?, ?, ?, ?, 1)",
            )
            .bind(stream)
            .bind(group)
            .bind(seq)
            .bind(consumer)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("UPDATE consumer_groups SET last_delivered_seq = ? WHERE stream = ? AND grp = ?")
            .bind(newest)
            .bind(stream)
            .bind(group)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|(seq, event_id, payload)| Delivery {
                id: EntryId(seq.to_string()),
                event_id,
                payload,
                delivery_count: 1,
            })
            .collect())
    }
}

/// The log's sequence number in an [`EntryId`].
fn seq_of(stream: &str, id: &EntryId) -> Result<i64, BusError> {
    id.0.parse().map_err(|_| BusError::malformed(stream, &id.0, "not a log sequence number"))
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A `LIMIT` bind: SQLite integers are i64.
fn limit(max: usize) -> i64 {
    i64::try_from(max).unwrap_or(i64::MAX)
}

#[async_trait::async_trait]
impl EventBus for SqliteLog {
    async fn publish(&self, stream: &str, event_id: &str, payload: &[u8]) -> Result<bool, BusError> {
        let pool = self.ready().await?;
        let appended = sqlx::query(
            "INSERT INTO entries (stream, event_id, payload, published_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (stream, event_id) DO NOTHING",
        )
        .bind(stream)
        .bind(event_id)
        .bind(payload)
        .bind(now_millis())
        .execute(pool)
        .await?
        .rows_affected()
            == 1;
        if appended {
            // Wakes readers of every stream; one that finds nothing for its stream waits again.
            self.published.notify_waiters();
        }
        Ok(appended)
    }

    async fn ensure_group(&self, stream: &str, group: &str) -> Result<(), BusError> {
        let pool = self.ready().await?;
        sqlx::query(
            "INSERT INTO consumer_groups (stream, grp, last_delivered_seq) VALUES (?, ?, 0)
             ON CONFLICT (stream, grp) DO NOTHING",
        )
        .bind(stream)
        .bind(group)
        .execute(pool)
        .await?;
        Ok(())
    }

    async fn read(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + block;
        loop {
            // Registered before looking, so a publish landing between the look
            // and the wait still wakes this reader.
            let mut published = pin!(self.published.notified());
            published.as_mut().enable();
            let found = self.read_now(stream, group, consumer, max).await?;
            let now = tokio::time::Instant::now();
            if !found.is_empty() || now >= deadline {
                return Ok(found);
            }
            // Woken, polled or out of time: all three mean look again.
            let _ = tokio::time::timeout((deadline - now).min(POLL_INTERVAL), published).await;
        }
    }

    async fn ack(&self, stream: &str, group: &str, ids: &[EntryId]) -> Result<(), BusError> {
        if ids.is_empty() {
            return Ok(());
        }
        let seqs = ids.iter().map(|id| seq_of(stream, id)).collect::<Result<Vec<_>, _>>()?;
        let mut tx = self.ready().await?.begin_with("BEGIN IMMEDIATE").await?;
        for seq in seqs {
            sqlx::query("DELETE FROM pending WHERE stream = ? AND grp = ? AND seq = ?")
                .bind(stream)
                .bind(group)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn reclaim(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.ready().await?.begin_with("BEGIN IMMEDIATE").await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM consumer_groups WHERE stream = ? AND grp = ?")
            .bind(stream)
            .bind(group)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(BusError::no_group(stream, group));
        }
        let now = now_millis();
        let idle_since = now.saturating_sub(i64::try_from(min_idle.as_millis()).unwrap_or(i64::MAX));
        let rows: Vec<(i64, String, Vec<u8>, i64)> = sqlx::query_as(
            "SELECT p.seq, e.event_id, e.payload, p.delivery_count
             FROM pending p JOIN entries e ON e.seq = p.seq
             WHERE p.stream = ? AND p.grp = ? AND p.delivered_at <= ?
             ORDER BY p.seq LIMIT ?",
        )
        .bind(stream)
        .bind(group)
        .bind(idle_since)
        .bind(limit(max))
        .fetch_all(&mut *tx)
        .await?;
        let mut deliveries = Vec::with_capacity(rows.len());
        for (seq, event_id, payload, count) in rows {
            sqlx::query(
                "UPDATE pending SET consumer = ?, delivered_at = ?, delivery_count = delivery_count + 1
                 WHERE stream = ? AND grp = ? AND seq = ?",
            )
            .bind(consumer)
            .bind(now)
            .bind(stream)
            .bind(group)
            .bind(seq)
            .execute(&mut *tx)
            .await?;
            deliveries.push(Delivery {
                id: EntryId(seq.to_string()),
                event_id,
                payload,
                delivery_count: u64::try_from(count).unwrap_or(0) + 1,
            });
        }
        tx.commit().await?;
        Ok(deliveries)
    }

    async fn dead_letter(&self, stream: &str, group: &str, delivery: &Delivery, reason: &str) -> Result<(), BusError> {
        let seq = seq_of(stream, &delivery.id)?;
        let mut tx = self.ready().await?.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "INSERT INTO dead_letters (stream, original_id, event_id, payload, reason, dead_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(stream)
        .bind(&delivery.id.0)
        .bind(&delivery.event_id)
        .bind(&delivery.payload)
        .bind(reason)
        .bind(now_millis())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM pending WHERE stream = ? AND grp = ? AND seq = ?")
            .bind(stream)
            .bind(group)
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn dead_letters(&self, stream: &str, max: usize) -> Result<Vec<DeadLetter>, BusError> {
        let pool = self.ready().await?;
        let rows = sqlx::query(
            "SELECT original_id, event_id, payload, reason FROM dead_letters WHERE stream = ? ORDER BY seq LIMIT ?",
        )
        .bind(stream)
        .bind(limit(max))
        .fetch_all(pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DeadLetter {
                    original_id: EntryId(row.try_get("original_id")?),
                    event_id: row.try_get("event_id")?,
                    payload: row.try_get("payload")?,
                    reason: row.try_get("reason")?,
                })
            })
            .collect()
    }

    async fn pending(&self, stream: &str, group: &str) -> Result<u64, BusError> {
        let pool = self.ready().await?;
        let count: Option<i64> = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM pending p WHERE p.stream = g.stream AND p.grp = g.grp)
             FROM consumer_groups g WHERE g.stream = ? AND g.grp = ?",
        )
        .bind(stream)
        .bind(group)
        .fetch_optional(pool)
        .await?;
        count.map(|count| u64::try_from(count).unwrap_or(0)).ok_or_else(|| BusError::no_group(stream, group))
    }
}
