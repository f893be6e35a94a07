//! The outbox's SQL on SQLite (`INTEGER` microseconds since the epoch).

use chrono::{DateTime, Utc};
use sqlx::{SqliteConnection, SqlitePool};

use super::{Backlog, OutboxEntry, OutboxEvent, OutboxRow};

fn micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

/// Rows one `INSERT` writes at most: four bind parameters each, well under SQLite's limit.
const INSERT_CHUNK: usize = 1_000;

/// Writes `events` at `now`, on the connection of the caller's transaction (a statement per thousand rows).
pub async fn insert(
    conn: &mut SqliteConnection,
    events: &[OutboxEvent],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    for chunk in events.chunks(INSERT_CHUNK) {
        let mut insert = sqlx::QueryBuilder::new("INSERT INTO outbox (event_id, stream, payload, create_time) ");
        insert.push_values(chunk, |mut row, event| {
            row.push_bind(&event.event_id).push_bind(&event.stream).push_bind(&event.payload).push_bind(micros(now));
        });
        insert.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Unpublished rows, oldest first, at most `limit`.
pub async fn unpublished(pool: &SqlitePool, limit: i64) -> Result<Vec<OutboxEntry>, sqlx::Error> {
    let rows: Vec<OutboxRow> = sqlx::query_as(
        "SELECT seq, event_id, stream, payload FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT ?",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(OutboxEntry::from_row).collect())
}

/// Stamps rows published at `now` (rows stamped already keep their time), in one statement.
pub async fn mark_published(pool: &SqlitePool, seqs: &[i64], now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    if seqs.is_empty() {
        return Ok(());
    }
    // The numbers travel as one JSON array: a statement of any batch size, one round trip.
    let seqs = serde_json::Value::from(seqs).to_string();
    sqlx::query(
        "UPDATE outbox SET published_at = ?1
         WHERE published_at IS NULL AND seq IN (SELECT value FROM json_each(?2))",
    )
    .bind(micros(now))
    .bind(seqs)
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes at most `limit` rows published before `published_before` (through `outbox_published`).
pub async fn prune_published(
    pool: &SqlitePool,
    published_before: DateTime<Utc>,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM outbox WHERE seq IN
             (SELECT seq FROM outbox WHERE published_at IS NOT NULL AND published_at < ? LIMIT ?)",
    )
    .bind(micros(published_before))
    .bind(limit)
    .execute(pool)
    .await?
    .rows_affected())
}

/// The unpublished rows at a glance (through `outbox_unpublished`).
pub async fn backlog(pool: &SqlitePool) -> Result<Backlog, sqlx::Error> {
    let (unpublished, oldest): (i64, Option<i64>) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM outbox WHERE published_at IS NULL),
                (SELECT create_time FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT 1)",
    )
    .fetch_one(pool)
    .await?;
    Ok(Backlog {
        unpublished: u64::try_from(unpublished).unwrap_or(0),
        oldest_unpublished: oldest.and_then(DateTime::from_timestamp_micros),
    })
}
