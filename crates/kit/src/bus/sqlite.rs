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

use super::{
    BusConfig, BusError, DeadLetter, DeadLetterPage, DeadLetterQuery, Delivery, Discard, DiscardedDeadLetter,
    DiscardedPage, EntryId, EventBus, KnownStreams, Publication, StreamStats, before, epoch_millis,
};

/// How often a blocked reader looks for entries published by another process
/// (publishes in this process wake it at once).
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Rows one trim transaction deletes at most from each table: the write lock
/// is held briefly, so publishers and readers wait little.
const TRIM_LIMIT: i64 = 10_000;

/// Trim transactions one [`EventBus::trim`] runs at most; what is left waits for the next trim.
const TRIM_ROUNDS: usize = 20;

/// The log's own schema, created on first use; the log is not a service database, so no migrations
/// (`PRAGMA user_version` says which of [`UPGRADES`] a file has had).
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
CREATE INDEX IF NOT EXISTS dead_letters_by_age ON dead_letters (stream, dead_at);
CREATE TABLE IF NOT EXISTS published (
    stream       TEXT    NOT NULL,
    event_id     TEXT    NOT NULL,
    published_at INTEGER NOT NULL,
    PRIMARY KEY (stream, event_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS published_by_age ON published (stream, published_at);
";

/// What a log file written by an older release needs, in order; the n-th runs once, when
/// `user_version` is below n. 1: ids published before `published` existed were kept by
/// `entries` alone, which trimming now empties. 2: dead letters say which group gave up,
/// after how many deliveries, and when the entry was published (older ones: NULL, unknown);
/// discarded dead letters are kept for the audit.
const UPGRADES: &[&str] = &[
    "INSERT OR IGNORE INTO published (stream, event_id, published_at) SELECT stream, event_id, published_at FROM entries",
    "ALTER TABLE dead_letters ADD COLUMN grp TEXT;
     ALTER TABLE dead_letters ADD COLUMN delivery_count INTEGER;
     ALTER TABLE dead_letters ADD COLUMN first_seen INTEGER;
     CREATE TABLE IF NOT EXISTS discarded_dead_letters (
         seq             INTEGER PRIMARY KEY AUTOINCREMENT,
         stream          TEXT    NOT NULL,
         dead_letter_seq INTEGER NOT NULL,
         original_id     TEXT    NOT NULL,
         event_id        TEXT    NOT NULL,
         payload         BLOB    NOT NULL,
         reason          TEXT    NOT NULL,
         grp             TEXT,
         delivery_count  INTEGER,
         first_seen      INTEGER,
         dead_at         INTEGER NOT NULL,
         discarded_by    TEXT    NOT NULL,
         discard_reason  TEXT    NOT NULL,
         discarded_at    INTEGER NOT NULL
     );
     CREATE INDEX IF NOT EXISTS discarded_dead_letters_by_stream ON discarded_dead_letters (stream, seq);",
];

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
        self.schema.get_or_try_init(|| self.create_schema()).await?;
        Ok(&self.pool)
    }

    /// Creates the tables, then upgrades a file an older release wrote. Another
    /// process may do the same at once: the upgrade checks the version under the write lock.
    async fn create_schema(&self) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(SCHEMA).execute(&self.pool).await?;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let version: i64 = sqlx::query_scalar("PRAGMA user_version").fetch_one(&mut *tx).await?;
        let done = usize::try_from(version).unwrap_or(0);
        if done < UPGRADES.len() {
            for upgrade in &UPGRADES[done..] {
                sqlx::raw_sql(*upgrade).execute(&mut *tx).await?;
            }
            // PRAGMA takes no bind parameters; the number is ours.
            let set = format!("PRAGMA user_version = {}", UPGRADES.len());
            sqlx::raw_sql(sqlx::AssertSqlSafe(set)).execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    /// Appends `events` in one transaction (one disk flush); answers one flag per event.
    async fn append(&self, events: &[Publication<'_>]) -> Result<Vec<bool>, BusError> {
        let pool = self.ready().await?;
        let now = now_millis();
        let mut appended = Vec::with_capacity(events.len());
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        for event in events {
            self.streams.note(event.stream);
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

    /// One trim transaction: at most [`TRIM_LIMIT`] rows from each table. Answers
    /// whether it hit a limit (more may be left), and the rows deleted from the
    /// stream and its dead letters.
    async fn trim_round(&self, stream: &str, now: DateTime<Utc>) -> Result<(bool, u64), BusError> {
        let window_cutoff = epoch_millis(before(now, self.config.dedupe_window));
        let dead_cutoff = epoch_millis(before(now, self.config.dead_letter_window));
        let max_len = i64::try_from(self.config.max_len.max(1)).unwrap_or(i64::MAX);
        let mut tx = self.ready().await?.begin_with("BEGIN IMMEDIATE").await?;
        // What a group still needs starts after its last delivered entry, or at its oldest
        // pending one. (Redis keeps the last delivered entry too; here the acknowledged
        // entry goes, so its id, kept unique by `entries`, is free once the window ends.)
        let groups_need: Option<i64> = sqlx::query_scalar(
            "SELECT min(min(g.last_delivered_seq + 1,
                            coalesce((SELECT min(p.seq) FROM pending p WHERE p.stream = g.stream AND p.grp = g.grp),
                                     g.last_delivered_seq + 1)))
             FROM consumer_groups g WHERE g.stream = ?",
        )
        .bind(stream)
        .fetch_one(&mut *tx)
        .await?;
        // Without groups, the entries of the dedupe window: from the first one published since.
        let keep_from = match groups_need {
            Some(seq) => seq,
            None => sqlx::query_scalar(
                "SELECT coalesce((SELECT seq FROM entries WHERE stream = ?1 AND published_at >= ?2 ORDER BY seq LIMIT 1),
                                 (SELECT max(seq) + 1 FROM entries WHERE stream = ?1), 0)",
            )
            .bind(stream)
            .bind(window_cutoff)
            .fetch_one(&mut *tx)
            .await?,
        };
        // The floor: the newest `max_len` entries stay whatever the groups need.
        let floor = floor_seq(&mut tx, "entries", stream, max_len).await?;
        let keep_from = keep_from.max(floor.unwrap_or(0));
        let removed = sqlx::query(
            "DELETE FROM entries WHERE seq IN
                 (SELECT seq FROM entries WHERE stream = ? AND seq < ? ORDER BY seq LIMIT ?)",
        )
        .bind(stream)
        .bind(keep_from)
        .bind(TRIM_LIMIT)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // Only the floor drops entries a group has pending: their pending rows go with them
        // (Redis's XAUTOCLAIM forgets such entries the same way).
        if let Some(floor) = floor {
            sqlx::query("DELETE FROM pending WHERE stream = ? AND seq < ?")
                .bind(stream)
                .bind(floor)
                .execute(&mut *tx)
                .await?;
        }
        let dead_floor = floor_seq(&mut tx, "dead_letters", stream, max_len).await?;
        let dead_removed = sqlx::query(
            "DELETE FROM dead_letters WHERE seq IN
                 (SELECT seq FROM dead_letters WHERE stream = ?1 AND (dead_at < ?2 OR seq < ?3) LIMIT ?4)",
        )
        .bind(stream)
        .bind(dead_cutoff)
        .bind(dead_floor.unwrap_or(0))
        .bind(TRIM_LIMIT)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // The audit of discarded dead letters is kept as long as dead letters are.
        let discarded_removed = sqlx::query(
            "DELETE FROM discarded_dead_letters WHERE seq IN
                 (SELECT seq FROM discarded_dead_letters WHERE stream = ?1 AND discarded_at < ?2 LIMIT ?3)",
        )
        .bind(stream)
        .bind(dead_cutoff)
        .bind(TRIM_LIMIT)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let markers_removed = sqlx::query(
            "DELETE FROM published WHERE stream = ?1 AND event_id IN
                 (SELECT event_id FROM published WHERE stream = ?1 AND published_at < ?2 LIMIT ?3)",
        )
        .bind(stream)
        .bind(window_cutoff)
        .bind(TRIM_LIMIT)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        let limit = u64::try_from(TRIM_LIMIT).unwrap_or(u64::MAX);
        let more = removed >= limit || dead_removed >= limit || discarded_removed >= limit || markers_removed >= limit;
        Ok((more, removed + dead_removed))
    }

    /// What `stream` keeps.
    async fn stats(&self, stream: &str, trimmed: u64) -> Result<StreamStats, BusError> {
        let pool = self.ready().await?;
        let (entries, oldest, markers, dead_letters): (i64, Option<i64>, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM entries WHERE stream = ?1),
                    (SELECT published_at FROM entries WHERE stream = ?1 ORDER BY seq LIMIT 1),
                    (SELECT count(*) FROM published WHERE stream = ?1),
                    (SELECT count(*) FROM dead_letters WHERE stream = ?1)",
        )
        .bind(stream)
        .fetch_one(pool)
        .await?;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok(StreamStats {
            entries: count(entries),
            oldest_entry: oldest.and_then(DateTime::from_timestamp_millis),
            dedupe_markers: count(markers),
            dead_letters: count(dead_letters),
            trimmed,
        })
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

/// The oldest of the newest `max_len` rows of `stream` in `table` (`entries` or
/// `dead_letters`), when there are more. Sequence numbers are shared by every
/// stream, so a span of at most `max_len` numbers proves there are not more
/// without counting (the common case, which costs two index probes).
async fn floor_seq(
    tx: &mut sqlx::SqliteConnection,
    table: &'static str,
    stream: &str,
    max_len: i64,
) -> Result<Option<i64>, sqlx::Error> {
    // Apart, each aggregate is one probe of the (stream, seq) index.
    let span: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT (SELECT max(seq) FROM {table} WHERE stream = ?1) - (SELECT min(seq) FROM {table} WHERE stream = ?1) + 1"
    )))
    .bind(stream)
    .fetch_one(&mut *tx)
    .await?;
    if span.is_none_or(|span| span <= max_len) {
        return Ok(None);
    }
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT seq FROM {table} WHERE stream = ? ORDER BY seq DESC LIMIT 1 OFFSET ?"
    )))
    .bind(stream)
    .bind(max_len - 1)
    .fetch_optional(&mut *tx)
    .await
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
impl EventBus for SqliteLog {
    async fn publish(&self, stream: &str, event_id: &str, payload: &[u8]) -> Result<bool, BusError> {
        let appended = self.append(&[Publication { stream, event_id, payload }]).await?;
        Ok(appended.first() == Some(&true))
    }

    async fn publish_all(&self, events: &[Publication<'_>]) -> Result<Vec<bool>, BusError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.append(events).await
    }

    async fn ensure_group(&self, stream: &str, group: &str) -> Result<(), BusError> {
        self.streams.note(stream);
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
        // The numbers travel as one JSON array: one statement whatever the batch.
        sqlx::query("DELETE FROM pending WHERE stream = ? AND grp = ? AND seq IN (SELECT value FROM json_each(?))")
            .bind(stream)
            .bind(group)
            .bind(serde_json::Value::from(seqs).to_string())
            .execute(self.ready().await?)
            .await?;
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

    async fn list_dead_letters(&self, stream: &str, query: &DeadLetterQuery) -> Result<DeadLetterPage, BusError> {
        if query.max == 0 {
            return Ok(DeadLetterPage::default());
        }
        // An id the log never made has nothing after it worth guessing at: start at the beginning.
        let after = query.after.as_ref().and_then(|id| id.0.parse::<i64>().ok()).unwrap_or(0);
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT seq, {DEAD_LETTER_COLUMNS} FROM dead_letters
             WHERE stream = ?1 AND seq > ?2
               AND (?3 IS NULL OR instr(reason, ?3) > 0)
               AND (?4 IS NULL OR grp IS NULL OR grp = ?4)
             ORDER BY seq LIMIT ?5"
        )))
        .bind(stream)
        .bind(after)
        .bind(query.reason.as_deref())
        .bind(query.group.as_deref())
        .bind(limit(query.max))
        .fetch_all(self.ready().await?)
        .await?;
        let letters = rows.iter().map(dead_letter_row).collect::<Result<Vec<_>, _>>()?;
        let next = (letters.len() >= query.max).then(|| letters.last().map(|letter| letter.id.clone())).flatten();
        Ok(DeadLetterPage { letters, next })
    }

    async fn replay_dead_letters(&self, stream: &str, ids: &[EntryId]) -> Result<Vec<Option<EntryId>>, BusError> {
        self.streams.note(stream);
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

    async fn discard_dead_letters(
        &self,
        stream: &str,
        ids: &[EntryId],
        discard: &Discard,
    ) -> Result<Vec<bool>, BusError> {
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

    async fn discarded_dead_letters(&self, stream: &str, query: &DeadLetterQuery) -> Result<DiscardedPage, BusError> {
        if query.max == 0 {
            return Ok(DiscardedPage::default());
        }
        // Paged by the discard record's own sequence: the order they were discarded in.
        let after = query.after.as_ref().and_then(|id| id.0.parse::<i64>().ok()).unwrap_or(0);
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT d.seq AS record_seq, d.dead_letter_seq AS seq, {DEAD_LETTER_COLUMNS},
                    discarded_by, discard_reason, discarded_at
             FROM discarded_dead_letters d
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

    async fn dead_letters_by_id(&self, stream: &str, ids: &[EntryId]) -> Result<Vec<Option<DeadLetter>>, BusError> {
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

    async fn leave(&self, stream: &str, group: &str, consumer: &str) -> Result<bool, BusError> {
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

    async fn trim(&self, stream: &str, now: DateTime<Utc>) -> Result<StreamStats, BusError> {
        let mut trimmed = 0;
        for _ in 0..TRIM_ROUNDS {
            let (more, removed) = self.trim_round(stream, now).await?;
            trimmed += removed;
            if !more {
                break;
            }
        }
        self.stats(stream, trimmed).await
    }

    fn streams(&self) -> Vec<String> {
        self.streams.list()
    }
}
