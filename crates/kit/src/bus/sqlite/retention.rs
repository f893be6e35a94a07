//! The log's retention: what [`EventBus::trim`](crate::bus::EventBus::trim) does on SQLite,
//! a few bounded write transactions.

use chrono::{DateTime, Utc};

use super::super::{StreamStats, before, epoch_millis};
use super::{BusError, SqliteLog};

/// Rows one trim transaction deletes at most from each table: the write lock
/// is held briefly, so publishers and readers wait little.
const TRIM_LIMIT: i64 = 10_000;

/// Trim transactions one [`EventBus::trim`](crate::bus::EventBus::trim) runs at most; what is left waits for the next trim.
const TRIM_ROUNDS: usize = 20;

impl SqliteLog {
    /// Trims `stream` as of `now`, a few rounds at most, and answers what it keeps.
    pub(super) async fn trim_rounds(&self, stream: &str, now: DateTime<Utc>) -> Result<StreamStats, BusError> {
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
