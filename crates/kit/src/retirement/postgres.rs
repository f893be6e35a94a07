//! The `retired_learners` table's SQL on Postgres (`TIMESTAMPTZ` times).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use vocab::Retirement;

/// Remembers `retirements` as of `now` (a learner retired already keeps their
/// first row), on the connection of the caller's transaction, after locking
/// the table: every writer that reads it (to refuse or rename a retired
/// learner's row) holds its lock until it commits, so the lock waits for
/// those in flight and holds new ones back until the retirement is
/// committed (they then see it). Retirements are rare; the pause is one
/// short transaction.
pub async fn remember(
    conn: &mut PgConnection,
    retirements: &[Retirement],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let ids: Vec<i64> = retirements.iter().map(|r| r.lms_user_id.get()).collect();
    let names: Vec<&str> = retirements.iter().map(|r| r.retired_username.as_str()).collect();
    sqlx::query("LOCK TABLE retired_learners IN ACCESS EXCLUSIVE MODE").execute(&mut *conn).await?;
    sqlx::query(
        "INSERT INTO retired_learners (lms_user_id, retired_username, retired_at)
         SELECT i, n, $3 FROM unnest($1::int8[], $2::text[]) AS r(i, n)
         ON CONFLICT (lms_user_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&names)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}
