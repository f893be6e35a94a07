//! The embedded backend: a durable log in a SQLite file of its own.
//!
//! Entries get a sequence number from one `AUTOINCREMENT` key. SQLite runs one
//! write transaction at a time, so numbers commit in order: a reader that has
//! seen entry `n` committed never later finds a smaller one appear, and a
//! group's position is a single number (`last_delivered_seq`). Reads, acks,
//! reclaims, dead-lettering and trims run in `BEGIN IMMEDIATE` transactions
//! (the write lock first), so two consumers never take the same entry and a
//! trim never drops one a group still needs.
//!
//! Published event ids live in `published` for the dedupe window, apart from
//! the entries: an entry goes as soon as every group acknowledged it, its id
//! stays. The same retention as Redis (`EventBus::trim`).

use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::{Notify, OnceCell};

use super::backend::Backend;
use super::{
    BusConfig, BusError, DeadLetter, DeadLetterPage, DeadLetterQuery, Delivery, Discard, DiscardedDeadLetter,
    DiscardedPage, EntryId, KnownStreams, Publication, StreamStats,
};

mod retention;
mod schema;

/// How often a blocked reader looks for entries published by another process
/// (publishes in this process wake it at once).
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The columns a [`DeadLetter`] is read from, in `dead_letters` and `discarded_dead_letters`.
const DEAD_LETTER_COLUMNS: &str = "original_id, event_id, payload, reason, grp, delivery_count, first_seen, dead_at";

/// The embedded backend: a durable log in a SQLite file (WAL), for embedded mode.
#[derive(Clone)]
pub struct SqliteLog {
    pool: SqlitePool,
    schema: Arc<OnceCell<()>>,
    /// Woken by every publish of this instance, so blocked readers need not wait for a poll.
    published: Arc<Notify>,
    config: BusConfig,
    streams: Arc<KnownStreams>,
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
        Ok(Self {
            pool,
            schema: Arc::new(OnceCell::new()),
            published: Arc::new(Notify::new()),
            config: BusConfig::default(),
            streams: Arc::new(KnownStreams::default()),
        })
    }

    /// The same log with these retention settings.
    pub fn with_config(mut self, config: BusConfig) -> Self {
        self.config = config;
        self
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn ready(&self) -> Result<&SqlitePool, BusError> {
        self.schema.get_or_try_init(|| schema::create(&self.pool)).await?;
        Ok(&self.pool)
    }

    /// Appends `events` in one transaction (one disk flush); answers one flag per event.
    async fn append(&self, events: &[Publication<'_>]) -> Result<Vec<bool>, BusError> {
        let pool = self.ready().await?;
        let now = now_millis();
        let mut appended = Vec::with_capacity(events.len());
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        for event in events {
            let new = sqlx::query(
                "INSERT INTO published (stream, event_id, published_at) VALUES (?, ?, ?)
                 ON CONFLICT (stream, event_id) DO NOTHING",
            )
            .bind(event.stream)
            .bind(event.event_id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            // An id whose marker was pruned while its entry waits unread is still on the stream.
            let added = new
                && sqlx::query(
                    "INSERT INTO entries (stream, event_id, payload, published_at) VALUES (?, ?, ?, ?)
                     ON CONFLICT (stream, event_id) DO NOTHING",
                )
                .bind(event.stream)
                .bind(event.event_id)
                .bind(event.payload)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
            appended.push(added);
        }
        tx.commit().await?;
        if appended.contains(&true) {
            // Wakes readers of every stream; one that finds nothing for its stream waits again.
            self.published.notify_waiters();
        }
        Ok(appended)
    }

    /// The rows of `select` (reading a table of dead letters as `d`) on `stream` that `query`
    /// asks for, after `query.after` by `d.seq`, oldest first, at most `query.max`.
    async fn filtered_page(
        &self,
        select: &str,
        stream: &str,
        query: &DeadLetterQuery,
    ) -> Result<Vec<sqlx::sqlite::SqliteRow>, BusError> {
        // An id the log never made has nothing after it worth guessing at: start at the beginning.
        let after = query.after.as_ref().and_then(|id| id.0.parse::<i64>().ok()).unwrap_or(0);
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{select}
             WHERE d.stream = ?1 AND d.seq > ?2
               AND (?3 IS NULL OR instr(d.reason, ?3) > 0)
               AND (?4 IS NULL OR d.grp IS NULL OR d.grp = ?4)
             ORDER BY d.seq LIMIT ?5"
        )))
        .bind(stream)
        .bind(after)
        .bind(query.reason.as_deref())
        .bind(query.group.as_deref())
        .bind(limit(query.max))
        .fetch_all(self.ready().await?)
        .await?;
        Ok(rows)
    }

    /// One attempt at [`EventBus::read`](crate::bus::EventBus::read), without waiting.
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
        let last = last_delivered(&mut tx, stream, group).await?;
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
        // The rows just read, in one statement: no entry can appear between `last` and
        // `newest` meanwhile, as this transaction holds the write lock.
        sqlx::query(
            "INSERT INTO pending (stream, grp, seq, consumer, delivered_at, delivery_count)
             SELECT stream, ?2, seq, ?3, ?4, 1 FROM entries WHERE stream = ?1 AND seq > ?5 AND seq <= ?6",
        )
        .bind(stream)
        .bind(group)
        .bind(consumer)
        .bind(now_millis())
        .bind(last)
        .bind(newest)
        .execute(&mut *tx)
        .await?;
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

/// The group's position (the last entry it was handed), read in the caller's
/// transaction; [`BusError::NoGroup`] when there is no such group.
async fn last_delivered(tx: &mut sqlx::SqliteConnection, stream: &str, group: &str) -> Result<i64, BusError> {
    let last: Option<i64> =
        sqlx::query_scalar("SELECT last_delivered_seq FROM consumer_groups WHERE stream = ? AND grp = ?")
            .bind(stream)
            .bind(group)
            .fetch_optional(&mut *tx)
            .await?;
    last.ok_or_else(|| BusError::no_group(stream, group))
}

/// A dead letter from a row of [`DEAD_LETTER_COLUMNS`] and its `seq`.
fn dead_letter_row(row: &sqlx::sqlite::SqliteRow) -> Result<DeadLetter, BusError> {
    let seq: i64 = row.try_get("seq")?;
    let count: Option<i64> = row.try_get("delivery_count")?;
    Ok(DeadLetter {
        id: EntryId(seq.to_string()),
        original_id: EntryId(row.try_get("original_id")?),
        event_id: row.try_get("event_id")?,
        payload: row.try_get("payload")?,
        reason: row.try_get("reason")?,
        group: row.try_get("grp")?,
        delivery_count: count.map(|count| u64::try_from(count).unwrap_or(0)),
        first_seen: row.try_get::<Option<i64>, _>("first_seen")?.and_then(time_of),
        dead_lettered_at: time_of(row.try_get("dead_at")?),
        unreadable: None,
    })
}

/// A time the log stored as milliseconds since the epoch.
fn time_of(millis: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(millis)
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
impl Backend for SqliteLog {
    fn known_streams(&self) -> &KnownStreams {
        &self.streams
    }

    async fn append_all(&self, events: &[Publication<'_>]) -> Result<Vec<bool>, BusError> {
        self.append(events).await
    }

    async fn create_group(&self, stream: &str, group: &str) -> Result<(), BusError> {
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

    async fn read_new(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
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

    async fn acknowledge(&self, stream: &str, group: &str, ids: &[EntryId]) -> Result<(), BusError> {
        let seqs = ids.iter().map(|id| seq_of(stream, id)).collect::<Result<Vec<_>, _>>()?;
        // The numbers travel as one JSON array: one statement whatever the batch.
        sqlx::query("DELETE FROM pending WHERE stream = ? AND grp = ? AND seq IN (SELECT value FROM json_each(?))")
            .bind(stream)
            .bind(group)
            .bind(serde_json::Value::from(seqs).to_string())
            .execute(self.ready().await?)
            .await?;
        Ok(())
    }

    async fn claim_idle(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        let mut tx = self.ready().await?.begin_with("BEGIN IMMEDIATE").await?;
        // Only to refuse a group that does not exist.
        last_delivered(&mut tx, stream, group).await?;
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

    async fn bury(&self, stream: &str, group: &str, delivery: &Delivery, reason: &str) -> Result<(), BusError> {
        let seq = seq_of(stream, &delivery.id)?;
        let mut tx = self.ready().await?.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "INSERT INTO dead_letters (stream, original_id, event_id, payload, reason, dead_at, grp, delivery_count, first_seen)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, (SELECT published_at FROM entries WHERE seq = ?9))",
        )
        .bind(stream)
        .bind(&delivery.id.0)
        .bind(&delivery.event_id)
        .bind(&delivery.payload)
        .bind(reason)
        .bind(now_millis())
        .bind(group)
        .bind(i64::try_from(delivery.delivery_count).unwrap_or(i64::MAX))
        .bind(seq)
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

    async fn dead_letter_page(&self, stream: &str, query: &DeadLetterQuery) -> Result<DeadLetterPage, BusError> {
        let rows = self
            .filtered_page(&format!("SELECT d.seq AS seq, {DEAD_LETTER_COLUMNS} FROM dead_letters d"), stream, query)
            .await?;
        let letters = rows.iter().map(dead_letter_row).collect::<Result<Vec<_>, _>>()?;
        let next = (letters.len() >= query.max).then(|| letters.last().map(|letter| letter.id.clone())).flatten();
        Ok(DeadLetterPage { letters, next })
    }

    async fn replay(&self, stream: &str, ids: &[EntryId]) -> Result<Vec<Option<EntryId>>, BusError> {
        let mut tx = self.ready().await?.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_millis();
        let mut replayed = Vec::with_capacity(ids.len());
        for id in ids {
            let Ok(dead_seq) = id.0.parse::<i64>() else {
                replayed.push(None);
                continue;
            };
            let letter: Option<(String, Vec<u8>)> =
                sqlx::query_as("SELECT event_id, payload FROM dead_letters WHERE stream = ? AND seq = ?")
                    .bind(stream)
                    .bind(dead_seq)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some((event_id, payload)) = letter else {
                replayed.push(None);
                continue;
            };
            // `entries` holds an event id once: an entry of it still on the stream (another group
            // has not acknowledged it yet) makes way for the new one, which every group reads,
            // as on Redis, where the replay is a new entry too.
            let old: Option<i64> = sqlx::query_scalar("SELECT seq FROM entries WHERE stream = ? AND event_id = ?")
                .bind(stream)
                .bind(&event_id)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(old) = old {
                sqlx::query("DELETE FROM pending WHERE stream = ? AND seq = ?")
                    .bind(stream)
                    .bind(old)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM entries WHERE seq = ?").bind(old).execute(&mut *tx).await?;
            }
            let seq: i64 = sqlx::query_scalar(
                "INSERT INTO entries (stream, event_id, payload, published_at) VALUES (?, ?, ?, ?) RETURNING seq",
            )
            .bind(stream)
            .bind(&event_id)
            .bind(&payload)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            // The dedupe window starts again: a producer publishing the id once more appends nothing.
            sqlx::query(
                "INSERT INTO published (stream, event_id, published_at) VALUES (?, ?, ?)
                 ON CONFLICT (stream, event_id) DO UPDATE SET published_at = excluded.published_at",
            )
            .bind(stream)
            .bind(&event_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM dead_letters WHERE seq = ?").bind(dead_seq).execute(&mut *tx).await?;
            replayed.push(Some(EntryId(seq.to_string())));
        }
        tx.commit().await?;
        if replayed.iter().any(Option::is_some) {
            self.published.notify_waiters();
        }
        Ok(replayed)
    }

    async fn discard(&self, stream: &str, ids: &[EntryId], discard: &Discard) -> Result<Vec<bool>, BusError> {
        let mut tx = self.ready().await?.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_millis();
        let mut discarded = Vec::with_capacity(ids.len());
        for id in ids {
            let Ok(dead_seq) = id.0.parse::<i64>() else {
                discarded.push(false);
                continue;
            };
            let kept = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO discarded_dead_letters
                     (stream, dead_letter_seq, {DEAD_LETTER_COLUMNS}, discarded_by, discard_reason, discarded_at)
                 SELECT stream, seq, {DEAD_LETTER_COLUMNS}, ?3, ?4, ?5 FROM dead_letters WHERE stream = ?1 AND seq = ?2"
            )))
            .bind(stream)
            .bind(dead_seq)
            .bind(&discard.by)
            .bind(&discard.reason)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if kept {
                sqlx::query("DELETE FROM dead_letters WHERE seq = ?").bind(dead_seq).execute(&mut *tx).await?;
            }
            discarded.push(kept);
        }
        tx.commit().await?;
        Ok(discarded)
    }

    async fn discarded_page(&self, stream: &str, query: &DeadLetterQuery) -> Result<DiscardedPage, BusError> {
        // Paged by the discard record's own sequence: the order they were discarded in.
        let rows = self
            .filtered_page(
                &format!(
                    "SELECT d.seq AS record_seq, d.dead_letter_seq AS seq, {DEAD_LETTER_COLUMNS},
                            discarded_by, discard_reason, discarded_at
                     FROM discarded_dead_letters d"
                ),
                stream,
                query,
            )
            .await?;
        let records = rows
            .iter()
            .map(|row| {
                Ok(DiscardedDeadLetter {
                    letter: dead_letter_row(row)?,
                    discard: Discard { by: row.try_get("discarded_by")?, reason: row.try_get("discard_reason")? },
                    discarded_at: time_of(row.try_get("discarded_at")?).unwrap_or(DateTime::UNIX_EPOCH),
                })
            })
            .collect::<Result<Vec<_>, BusError>>()?;
        let next = match rows.last() {
            Some(row) if records.len() >= query.max => Some(EntryId(row.try_get::<i64, _>("record_seq")?.to_string())),
            _ => None,
        };
        Ok(DiscardedPage { records, next })
    }

    async fn find_dead_letters(&self, stream: &str, ids: &[EntryId]) -> Result<Vec<Option<DeadLetter>>, BusError> {
        let pool = self.ready().await?;
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            let Ok(seq) = id.0.parse::<i64>() else {
                found.push(None);
                continue;
            };
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT seq, {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE stream = ? AND seq = ?"
            )))
            .bind(stream)
            .bind(seq)
            .fetch_optional(pool)
            .await?;
            found.push(row.as_ref().map(dead_letter_row).transpose()?);
        }
        Ok(found)
    }

    async fn pending_count(&self, stream: &str, group: &str) -> Result<u64, BusError> {
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

    async fn leave_group(&self, stream: &str, group: &str, consumer: &str) -> Result<bool, BusError> {
        // The log keeps no list of consumers, only what each holds pending.
        let pool = self.ready().await?;
        let held: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM pending WHERE stream = ? AND grp = ? AND consumer = ?")
                .bind(stream)
                .bind(group)
                .bind(consumer)
                .fetch_one(pool)
                .await?;
        Ok(held == 0)
    }

    async fn trim_stream(&self, stream: &str, now: DateTime<Utc>) -> Result<StreamStats, BusError> {
        self.trim_rounds(stream, now).await
    }
}
