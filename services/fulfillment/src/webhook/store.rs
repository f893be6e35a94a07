//! The webhook outbox: `webhook_deliveries`, one row per outcome owed to a
//! source system's webhook, inserted in the transaction that records the
//! outcome ([`postgres::insert`], [`sqlite::insert`], called by the stores'
//! `finish`) and worked off by the sender through [`WebhookOutbox`]: claimed
//! when due (the claim pushes `next_attempt_at` one lease ahead, so a sender
//! that dies leaves the row due again), then DELIVERED, rescheduled, or
//! GAVE_UP. Every change after a claim names the claim's attempt number, so a
//! sender whose claim ran out cannot overwrite another's outcome. Finished
//! rows are deleted after the retention window.

use chrono::{DateTime, Utc};
use kit::db::Database;

use crate::domain::JobError;

/// A delivery to write with an outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDelivery {
    /// The outcome's event id (unique): the body's `event_id`.
    pub event_id: String,
    /// The order's source system, as the order named it.
    pub source_system: String,
    /// The fulfillment.
    pub fulfillment_id: String,
    /// The JSON body, exactly as it is signed and sent.
    pub body: String,
    /// The trace the outcome was recorded in; may be empty.
    pub traceparent: String,
}

/// A claimed delivery.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Claim {
    /// The row.
    pub seq: i64,
    /// The outcome's event id.
    pub event_id: String,
    /// The order's source system.
    pub source_system: String,
    /// The fulfillment.
    pub fulfillment_id: String,
    /// The body to send.
    pub body: String,
    /// The outcome's trace.
    pub traceparent: String,
    /// Attempts with this claim's counted (1 for the first).
    pub attempts: i32,
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryState {
    /// Waiting for its next attempt (or being attempted).
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Refused for good, or out of attempts.
    GaveUp,
}

impl DeliveryState {
    /// The name stored.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "PENDING",
            DeliveryState::Delivered => "DELIVERED",
            DeliveryState::GaveUp => "GAVE_UP",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        [DeliveryState::Pending, DeliveryState::Delivered, DeliveryState::GaveUp]
            .into_iter()
            .find(|s| s.as_str() == raw)
    }
}

/// A delivery as stored (for operators' tools and tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// The outcome's event id.
    pub event_id: String,
    /// The order's source system.
    pub source_system: String,
    /// The fulfillment.
    pub fulfillment_id: String,
    /// The body.
    pub body: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made.
    pub attempts: u32,
    /// The last failure: its class, the receiver's status, what happened.
    pub last_error: Option<(String, Option<u16>, String)>,
}

/// Undelivered rows of one source system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Undelivered {
    /// The source system.
    pub source_system: String,
    /// PENDING rows.
    pub count: u64,
    /// When the oldest was written.
    pub oldest: DateTime<Utc>,
}

/// What a finished attempt leads to.
#[derive(Clone, Debug)]
pub enum Attempted<'a> {
    /// 2xx.
    Delivered,
    /// Again at this time.
    RetryAt(DateTime<Utc>, &'a JobError),
    /// Never again.
    GaveUp(&'a JobError),
}

/// The webhook outbox of Fulfillment's database, on either backend.
#[derive(Clone, Debug)]
pub struct WebhookOutbox {
    db: Database,
}

fn micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

fn from_micros(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

impl WebhookOutbox {
    /// The outbox in `db` (Fulfillment's database, migrated).
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Claims up to `limit` due deliveries, oldest due first: counts an attempt on each and makes it due
    /// again at `lease_until` (should the sender not record how it ended).
    pub async fn claim(
        &self,
        limit: usize,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<Claim>, sqlx::Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match &self.db {
            Database::Postgres(pool) => {
                sqlx::query_as(
                    "WITH due AS (
                         SELECT seq FROM webhook_deliveries WHERE state = 'PENDING' AND next_attempt_at <= $1
                         ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED
                     )
                     UPDATE webhook_deliveries w SET attempts = w.attempts + 1, next_attempt_at = $3, update_time = $1
                     FROM due WHERE w.seq = due.seq
                     RETURNING w.seq, w.event_id, w.source_system, w.fulfillment_id, w.body, w.traceparent, w.attempts",
                )
                .bind(now)
                .bind(limit)
                .bind(lease_until)
                .fetch_all(pool)
                .await
            }
            Database::Sqlite(pool) => {
                sqlx::query_as(
                    "UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt_at = ?3, update_time = ?1
                     WHERE seq IN (SELECT seq FROM webhook_deliveries WHERE state = 'PENDING' AND next_attempt_at <= ?1
                                   ORDER BY next_attempt_at LIMIT ?2)
                     RETURNING seq, event_id, source_system, fulfillment_id, body, traceparent, attempts",
                )
                .bind(micros(now))
                .bind(limit)
                .bind(micros(lease_until))
                .fetch_all(pool)
                .await
            }
        }
    }

    /// Records how the attempt of `claim` ended; false when the claim was overtaken (nothing recorded).
    pub async fn record(
        &self,
        claim: &Claim,
        attempted: Attempted<'_>,
        now: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        let (state, due, error) = match attempted {
            Attempted::Delivered => (DeliveryState::Delivered, None, None),
            Attempted::RetryAt(at, error) => (DeliveryState::Pending, Some(at), Some(error)),
            Attempted::GaveUp(error) => (DeliveryState::GaveUp, None, Some(error)),
        };
        let kind = error.map(|e| e.kind.as_str());
        let status = error.and_then(|e| e.lms_status).map(i32::from);
        let message = error.map(|e| e.message.as_str());
        let changed = match &self.db {
            Database::Postgres(pool) => sqlx::query(
                "UPDATE webhook_deliveries
                 SET state = $3, next_attempt_at = $4, last_error_kind = COALESCE($5, last_error_kind),
                     last_status = CASE WHEN $5 IS NULL THEN last_status ELSE $6 END,
                     last_error = COALESCE($7, last_error), update_time = $8
                 WHERE seq = $1 AND attempts = $2 AND state = 'PENDING'",
            )
            .bind(claim.seq)
            .bind(claim.attempts)
            .bind(state.as_str())
            .bind(due)
            .bind(kind)
            .bind(status)
            .bind(message)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected(),
            Database::Sqlite(pool) => sqlx::query(
                "UPDATE webhook_deliveries
                 SET state = ?3, next_attempt_at = ?4, last_error_kind = COALESCE(?5, last_error_kind),
                     last_status = CASE WHEN ?5 IS NULL THEN last_status ELSE ?6 END,
                     last_error = COALESCE(?7, last_error), update_time = ?8
                 WHERE seq = ?1 AND attempts = ?2 AND state = 'PENDING'",
            )
            .bind(claim.seq)
            .bind(claim.attempts)
            .bind(state.as_str())
            .bind(due.map(micros))
            .bind(kind)
            .bind(status)
            .bind(message)
            .bind(micros(now))
            .execute(pool)
            .await?
            .rows_affected(),
        };
        Ok(changed == 1)
    }

    /// When the next PENDING delivery falls due.
    pub async fn next_due(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        const NEXT: &str = "SELECT min(next_attempt_at) FROM webhook_deliveries WHERE state = 'PENDING'";
        Ok(match &self.db {
            Database::Postgres(pool) => sqlx::query_scalar(NEXT).fetch_one(pool).await?,
            Database::Sqlite(pool) => {
                sqlx::query_scalar::<_, Option<i64>>(NEXT).fetch_one(pool).await?.map(from_micros)
            }
        })
    }

    /// The PENDING rows per source system, with the oldest's creation time.
    pub async fn undelivered(&self) -> Result<Vec<Undelivered>, sqlx::Error> {
        const BACKLOG: &str = "SELECT source_system, count(*), min(create_time) FROM webhook_deliveries
                               WHERE state = 'PENDING' GROUP BY source_system";
        Ok(match &self.db {
            Database::Postgres(pool) => sqlx::query_as::<_, (String, i64, DateTime<Utc>)>(BACKLOG)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|(source_system, count, oldest)| Undelivered {
                    source_system,
                    count: u64::try_from(count).unwrap_or(0),
                    oldest,
                })
                .collect(),
            Database::Sqlite(pool) => sqlx::query_as::<_, (String, i64, i64)>(BACKLOG)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|(source_system, count, oldest)| Undelivered {
                    source_system,
                    count: u64::try_from(count).unwrap_or(0),
                    oldest: from_micros(oldest),
                })
                .collect(),
        })
    }

    /// Deletes at most `limit` DELIVERED or GAVE_UP rows last changed before `before`; answers how many.
    pub async fn prune(&self, before: DateTime<Utc>, limit: i64) -> Result<u64, sqlx::Error> {
        Ok(match &self.db {
            Database::Postgres(pool) => sqlx::query(
                "DELETE FROM webhook_deliveries WHERE seq = ANY(ARRAY(
                     SELECT seq FROM webhook_deliveries WHERE state <> 'PENDING' AND update_time < $1 LIMIT $2))",
            )
            .bind(before)
            .bind(limit)
            .execute(pool)
            .await?
            .rows_affected(),
            Database::Sqlite(pool) => sqlx::query(
                "DELETE FROM webhook_deliveries WHERE seq IN (
                     SELECT seq FROM webhook_deliveries WHERE state <> 'PENDING' AND update_time < ? LIMIT ?)",
            )
            .bind(micros(before))
            .bind(limit)
            .execute(pool)
            .await?
            .rows_affected(),
        })
    }

    /// Every delivery of a fulfillment, oldest first.
    pub async fn of_fulfillment(&self, fulfillment_id: &str) -> Result<Vec<DeliveryRecord>, sqlx::Error> {
        type Row = (String, String, String, String, String, i32, Option<String>, Option<i32>, Option<String>);
        macro_rules! of {
            ($param:literal) => {
                concat!(
                    "SELECT event_id, source_system, fulfillment_id, body, state, attempts,
                            last_error_kind, last_status, last_error
                     FROM webhook_deliveries WHERE fulfillment_id = ",
                    $param,
                    " ORDER BY seq"
                )
            };
        }
        let rows: Vec<Row> = match &self.db {
            Database::Postgres(pool) => sqlx::query_as(of!("$1")).bind(fulfillment_id).fetch_all(pool).await?,
            Database::Sqlite(pool) => sqlx::query_as(of!("?1")).bind(fulfillment_id).fetch_all(pool).await?,
        };
        Ok(rows
            .into_iter()
            .filter_map(|(event_id, source_system, fulfillment_id, body, state, attempts, kind, status, message)| {
                Some(DeliveryRecord {
                    event_id,
                    source_system,
                    fulfillment_id,
                    body,
                    state: DeliveryState::parse(&state)?,
                    attempts: u32::try_from(attempts).unwrap_or_default(),
                    last_error: kind
                        .map(|kind| (kind, status.and_then(|s| u16::try_from(s).ok()), message.unwrap_or_default())),
                })
            })
            .collect())
    }
}

/// The SQL on Postgres, for the stores' transactions.
pub mod postgres {
    use chrono::{DateTime, Utc};
    use sqlx::PgConnection;

    use super::NewDelivery;

    /// Writes `deliveries`, due at `now`, on the connection of the caller's transaction; an event id
    /// already owed is skipped, so finishing the same outcome again cannot fail the job's finish.
    pub async fn insert(
        conn: &mut PgConnection,
        deliveries: &[NewDelivery],
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        for delivery in deliveries {
            sqlx::query(
                "INSERT INTO webhook_deliveries (event_id, source_system, fulfillment_id, body, traceparent,
                                                 next_attempt_at, create_time, update_time)
                 VALUES ($1, $2, $3, $4, $5, $6, $6, $6)
                 ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(&delivery.event_id)
            .bind(&delivery.source_system)
            .bind(&delivery.fulfillment_id)
            .bind(&delivery.body)
            .bind(&delivery.traceparent)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

/// The SQL on SQLite, for the stores' transactions.
pub mod sqlite {
    use chrono::{DateTime, Utc};
    use sqlx::SqliteConnection;

    use super::{NewDelivery, micros};

    /// Writes `deliveries`, due at `now`, on the connection of the caller's transaction; an event id
    /// already owed is skipped, so finishing the same outcome again cannot fail the job's finish.
    pub async fn insert(
        conn: &mut SqliteConnection,
        deliveries: &[NewDelivery],
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        for delivery in deliveries {
            sqlx::query(
                "INSERT INTO webhook_deliveries (event_id, source_system, fulfillment_id, body, traceparent,
                                                 next_attempt_at, create_time, update_time)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?6)
                 ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(&delivery.event_id)
            .bind(&delivery.source_system)
            .bind(&delivery.fulfillment_id)
            .bind(&delivery.body)
            .bind(&delivery.traceparent)
            .bind(micros(now))
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}
