//! The outbox's SQL on Postgres (`TIMESTAMPTZ` times).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::{Backlog, OutboxEntry, OutboxEvent, OutboxRow};

/// Writes `events` at `now`, on the connection of the caller's transaction (one statement).
pub async fn insert(conn: &mut PgConnection, events: &[OutboxEvent], now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    let streams: Vec<&str> = events.iter().map(|e| e.stream.as_str()).collect();
    let payloads: Vec<&[u8]> = events.iter().map(|e| e.payload.as_slice()).collect();
    sqlx::query(
        "INSERT INTO outbox (event_id, stream, payload, create_time)
         SELECT e, s, p, $4 FROM unnest($1::text[], $2::text[], $3::bytea[]) AS o(e, s, p)",
    )
    .bind(&ids)
    .bind(&streams)
    .bind(&payloads)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Unpublished rows, oldest first, at most `limit`.
pub async fn unpublished(pool: &PgPool, limit: i64) -> Result<Vec<OutboxEntry>, sqlx::Error> {
    let rows: Vec<OutboxRow> = sqlx::query_as(
        "SELECT seq, event_id, stream, payload FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(OutboxEntry::from_row).collect())
}

/// Stamps rows published at `now` (rows stamped already keep their time).
pub async fn mark_published(pool: &PgPool, seqs: &[i64], now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE outbox SET published_at = $2 WHERE seq = ANY($1) AND published_at IS NULL")
        .bind(seqs)
        .bind(now)
        .execute(pool)
        .await?;
    Ok(())
}

/// Deletes at most `limit` rows published before `published_before` (through `outbox_published`).
/// `= ANY(ARRAY(...))` rather than `IN (...)`: the planner then looks each row up by its key
/// instead of hashing a scan of the whole table, which it prefers for a large batch.
pub async fn prune_published(pool: &PgPool, published_before: DateTime<Utc>, limit: i64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM outbox WHERE seq = ANY(ARRAY(SELECT seq FROM outbox WHERE published_at < $1 LIMIT $2))",
    )
    .bind(published_before)
    .bind(limit)
    .execute(pool)
    .await?
    .rows_affected())
}

/// The unpublished rows at a glance (through `outbox_unpublished`).
pub async fn backlog(pool: &PgPool) -> Result<Backlog, sqlx::Error> {
    let (unpublished, oldest): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM outbox WHERE published_at IS NULL),
                (SELECT create_time FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT 1)",
    )
    .fetch_one(pool)
    .await?;
    Ok(Backlog { unpublished: u64::try_from(unpublished).unwrap_or(0), oldest_unpublished: oldest })
}
