//! The `retired_learners` table's SQL on SQLite (times in microseconds since the epoch).

use chrono::{DateTime, Utc};
use sqlx::SqliteConnection;
use vocab::Retirement;

/// Remembers `retirements` as of `now` (a learner retired already keeps their
/// first row), on the connection of the caller's transaction (which should be
/// `BEGIN IMMEDIATE`, taking the write lock up front).
pub async fn remember(
    conn: &mut SqliteConnection,
    retirements: &[Retirement],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    for retirement in retirements {
        sqlx::query(
            "INSERT INTO retired_learners (lms_user_id, retired_username, retired_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (lms_user_id) DO NOTHING",
        )
        .bind(retirement.lms_user_id.get())
        .bind(retirement.retired_username.as_str())
        .bind(now.timestamp_micros())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
