//! The SQLite store for the embedded mesh: one writer at a time, so every
//! change runs in a `BEGIN IMMEDIATE` transaction and reads inside it see what
//! it is about to change. Times are microseconds since the epoch.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kit::outbox::{Backlog, OutboxEntry, OutboxError, OutboxStore};
use sqlx::{QueryBuilder, Sqlite, SqlitePool};
use vocab::{CourseRunKey, LmsUserId, LmsUsername, Retirement};

use super::flow::{self, JobTx, RefundChange, TransitionOf, Written};
use super::{
    BulkRedriven, Claimed, FilterSql, Finished, Found, FulfillmentJob, JobRow, Lease, NewJob, NewRefundRequest,
    OutboxEvent, Outcome, QueueStats, Redriven, RefundOf, RefundRequestRow, RefundRequested, Refunded, Store,
    StoreError, Transition, TransitionRow, duration_micros, from_micros, job_columns, learner_query, micros,
    push_filter, retired_name, scrubbed_outbox,
};
use crate::domain::{JobState, LearnerKey, RefundRequest};
use crate::filter::{JobFilter, PageCursor};
use crate::webhook::store::NewDelivery;

/// Fulfillment jobs in SQLite.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    webhooks: crate::webhook::WebhookSources,
}

impl SqliteStore {
    /// A store over `pool`.
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool, webhooks: Default::default() }
    }

    /// The same store, writing an outcome webhook delivery for the orders of these source systems.
    pub fn with_webhooks(mut self, webhooks: crate::webhook::WebhookSources) -> Self {
        self.webhooks = webhooks;
        self
    }

    /// A writing transaction: the only one until it ends.
    async fn begin(&self) -> Result<LiteTx, StoreError> {
        Ok(LiteTx(self.pool.begin_with("BEGIN IMMEDIATE").await?))
    }
}

type LiteJobRow = JobRow<i64>;

fn job(row: LiteJobRow) -> Result<FulfillmentJob, StoreError> {
    row.into_job(from_micros)
}

/// The job filter in this backend's SQL.
const FILTER_SQL: FilterSql = FilterSql {
    always: "1",
    course_run_key: "json_extract(spec, '$.line.product.course_run_key')",
    source_system: "json_extract(spec, '$.header.source_system')",
};

/// One SQLite transaction of the shared flows: `BEGIN IMMEDIATE`, so what it reads is what it changes.
struct LiteTx(sqlx::Transaction<'static, Sqlite>);

#[async_trait::async_trait]
impl JobTx for LiteTx {
    async fn locked_job(&mut self, id: &str) -> Result<Option<FulfillmentJob>, StoreError> {
        sqlx::query_as::<_, LiteJobRow>(concat!(
            "SELECT ",
            job_columns!(),
            " FROM fulfillments WHERE fulfillment_id = ?1"
        ))
        .bind(id)
        .fetch_optional(&mut *self.0)
        .await?
        .map(job)
        .transpose()
    }

    async fn held(&mut self, lease: &Lease) -> Result<Option<(String, bool, i32)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT state, refund IS NOT NULL, attempts FROM fulfillments
             WHERE fulfillment_id = ?1 AND lease_token = ?2 AND state IN ('IN_PROGRESS', 'REVOKING')",
        )
        .bind(&lease.job_id)
        .bind(&lease.token)
        .fetch_optional(&mut *self.0)
        .await?)
    }

    async fn write_outcome(
        &mut self,
        job_id: &str,
        written: &Written<'_>,
        now: DateTime<Utc>,
    ) -> Result<FulfillmentJob, StoreError> {
        job(sqlx::query_as(concat!(
            "UPDATE fulfillments
             SET state = ?2, next_attempt_at = ?3, lease_token = NULL, lease_expires_at = NULL,
                 attempts = CASE WHEN ?9 THEN 0 ELSE attempts END,
                 last_error_kind = COALESCE(?4, last_error_kind),
                 last_error_status = CASE WHEN ?4 IS NULL THEN last_error_status ELSE ?5 END,
                 last_error_message = COALESCE(?6, last_error_message),
                 entitlement_uuid = COALESCE(?7, entitlement_uuid), update_time = ?8
             WHERE fulfillment_id = ?1
             RETURNING ",
            job_columns!()
        ))
        .bind(job_id)
        .bind(written.state.as_str())
        .bind(written.next_attempt_at.map(micros))
        .bind(written.error.map(|e| e.kind.as_str()))
        .bind(written.error.and_then(|e| e.lms_status).map(i32::from))
        .bind(written.error.map(|e| e.message.as_str()))
        .bind(written.entitlement_uuid)
        .bind(micros(now))
        .bind(written.revokes_next)
        .fetch_one(&mut *self.0)
        .await?)
    }

    async fn write_refund(
        &mut self,
        job_id: &str,
        change: &RefundChange,
        now: DateTime<Utc>,
    ) -> Result<FulfillmentJob, StoreError> {
        job(sqlx::query_as(concat!(
            "UPDATE fulfillments
             SET state = ?2, attempts = CASE WHEN ?3 THEN 0 ELSE attempts END, next_attempt_at = ?4,
                 refund = ?5, update_time = ?6
             WHERE fulfillment_id = ?1 RETURNING ",
            job_columns!()
        ))
        .bind(job_id)
        .bind(change.state.as_str())
        .bind(change.reset_attempts)
        .bind(change.next_attempt_at.map(micros))
        .bind(&change.refund)
        .bind(micros(now))
        .fetch_one(&mut *self.0)
        .await?)
    }

    async fn redrive_job(&mut self, id: &str, now: DateTime<Utc>) -> Result<Option<FulfillmentJob>, StoreError> {
        sqlx::query_as::<_, LiteJobRow>(concat!(
            "UPDATE fulfillments
             SET state = CASE state WHEN 'FAILED' THEN 'PENDING' ELSE 'REVOKING' END,
                 attempts = 0, next_attempt_at = ?2, update_time = ?2
             WHERE fulfillment_id = ?1 AND state IN ('FAILED', 'REVOKE_FAILED') RETURNING ",
            job_columns!()
        ))
        .bind(id)
        .bind(micros(now))
        .fetch_optional(&mut *self.0)
        .await?
        .map(job)
        .transpose()
    }

    async fn transition(&mut self, change: &TransitionOf<'_>, now: DateTime<Utc>) -> Result<(), StoreError> {
        insert_transition(&mut self.0, change, now).await
    }

    async fn insert_events(&mut self, events: &[OutboxEvent], now: DateTime<Utc>) -> Result<(), StoreError> {
        Ok(kit::outbox::sqlite::insert(&mut self.0, events, now).await?)
    }

    async fn insert_deliveries(&mut self, deliveries: &[NewDelivery], now: DateTime<Utc>) -> Result<(), StoreError> {
        Ok(crate::webhook::store::sqlite::insert(&mut self.0, deliveries, now).await?)
    }

    async fn learner_jobs(
        &mut self,
        learner: &LearnerKey,
        course_run_key: &CourseRunKey,
    ) -> Result<Vec<FulfillmentJob>, StoreError> {
        macro_rules! learner_jobs {
            ($learner:literal) => {
                concat!(
                    "SELECT ",
                    job_columns!(),
                    " FROM fulfillments WHERE json_extract(spec, '$.learner.",
                    $learner,
                    "') = ?1 AND json_extract(spec, '$.line.product.course_run_key') = ?2
                     ORDER BY create_time DESC, fulfillment_id DESC"
                )
            };
        }
        let (query, key) = learner_query(learner, learner_jobs!("lms_user_id"), learner_jobs!("lms_username"));
        let rows: Vec<LiteJobRow> =
            sqlx::query_as(query).bind(key).bind(course_run_key.as_str()).fetch_all(&mut *self.0).await?;
        rows.into_iter().map(job).collect()
    }

    async fn refund_requests(&mut self, job_ids: &[&str]) -> Result<Vec<RefundRequest>, StoreError> {
        let ids = serde_json::to_string(job_ids)
            .map_err(|e| StoreError::Corrupt { id: String::new(), reason: e.to_string() })?;
        let rows: Vec<RefundRequestRow<i64>> = sqlx::query_as(
            "SELECT refund_request_id, fulfillment_id, reason, requested_at FROM refund_requests
             WHERE fulfillment_id IN (SELECT value FROM json_each(?1))",
        )
        .bind(ids)
        .fetch_all(&mut *self.0)
        .await?;
        rows.into_iter().map(|row| row.into_request(from_micros)).collect()
    }

    async fn insert_refund_request(&mut self, request: &RefundRequest) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO refund_requests (refund_request_id, fulfillment_id, reason, requested_at)
             VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(&request.id)
        .bind(&request.fulfillment_id)
        .bind(request.reason.as_str())
        .bind(micros(request.requested_at))
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn commit(self) -> Result<(), StoreError> {
        Ok(self.0.commit().await?)
    }
}

/// Records a state change in `conn`'s transaction.
async fn insert_transition(
    conn: &mut sqlx::SqliteConnection,
    change: &TransitionOf<'_>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO fulfillment_transitions
             (fulfillment_id, from_state, to_state, attempt, lease_token, requested_by, at)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(change.job_id)
    .bind(change.from.map(JobState::as_str))
    .bind(change.to.as_str())
    .bind(i64::from(change.attempt))
    .bind(change.lease_token)
    .bind(change.requested_by)
    .bind(micros(now))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn order_fingerprints(&self, order_number: &str) -> Result<Vec<(String, String)>, StoreError> {
        Ok(sqlx::query_as("SELECT line_item_id, fingerprint FROM fulfillments WHERE order_number = ?")
            .bind(order_number)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn insert_order(&self, jobs: &[NewJob], now: DateTime<Utc>) -> Result<bool, StoreError> {
        let Some(learner) = jobs.first().map(|job| job.spec.learner.lms_user_id) else { return Ok(true) };
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let retired: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM retired_learners WHERE lms_user_id = ?1)")
            .bind(learner.get())
            .fetch_one(&mut *tx)
            .await?;
        if retired {
            tx.rollback().await?;
            return Err(StoreError::LearnerRetired(learner));
        }
        for new in jobs {
            let spec = serde_json::to_string(&new.spec)
                .map_err(|e| StoreError::Corrupt { id: new.id.clone(), reason: e.to_string() })?;
            let stored = sqlx::query(
                "INSERT INTO fulfillments (fulfillment_id, order_number, line_item_id, position, spec, fingerprint,
                                           state, next_attempt_at, traceparent, create_time, update_time)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'PENDING', ?7, ?8, ?7, ?7)
                 ON CONFLICT (order_number, line_item_id) DO NOTHING",
            )
            .bind(&new.id)
            .bind(new.spec.header.order_number.as_str())
            .bind(new.spec.line.line_item_id.as_str())
            .bind(new.spec.position)
            .bind(spec)
            .bind(&new.spec.fingerprint)
            .bind(micros(now))
            .bind(&new.traceparent)
            .execute(&mut *tx)
            .await?;
            if stored.rows_affected() == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            let change = TransitionOf {
                job_id: &new.id,
                from: None,
                to: JobState::Pending,
                attempt: 0,
                lease_token: None,
                requested_by: None,
            };
            insert_transition(&mut tx, &change, now).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn get(&self, id: &str) -> Result<Option<FulfillmentJob>, StoreError> {
        sqlx::query_as::<_, LiteJobRow>(concat!(
            "SELECT ",
            job_columns!(),
            " FROM fulfillments WHERE fulfillment_id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .map(job)
        .transpose()
    }

    async fn list_order(
        &self,
        order_number: &str,
        from_position: i32,
        limit: i64,
    ) -> Result<Vec<FulfillmentJob>, StoreError> {
        sqlx::query_as::<_, LiteJobRow>(concat!(
            "SELECT ",
            job_columns!(),
            " FROM fulfillments WHERE order_number = ? AND position >= ? ORDER BY position LIMIT ?"
        ))
        .bind(order_number)
        .bind(from_position)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(job)
        .collect()
    }

    async fn claim(&self, max: usize, lease: Duration, now: DateTime<Utc>) -> Result<Vec<Claimed>, StoreError> {
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let expires = micros(now).saturating_add(duration_micros(lease));
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let picked: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT fulfillment_id, state, refunded FROM (
                 SELECT fulfillment_id, state, refund IS NOT NULL AS refunded, 0 AS rank, lease_expires_at AS t
                 FROM fulfillments
                 WHERE state IN ('IN_PROGRESS', 'REVOKING') AND lease_expires_at <= ?1
                 UNION ALL
                 SELECT fulfillment_id, state, refund IS NOT NULL, 1, next_attempt_at FROM fulfillments
                 WHERE state IN ('PENDING', 'REVOKING') AND next_attempt_at <= ?1
             ) ORDER BY rank, t LIMIT ?2",
        )
        .bind(micros(now))
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let mut claimed = Vec::with_capacity(picked.len());
        for (id, from, refunded) in picked {
            let token = uuid::Uuid::new_v4().to_string();
            // A revocation stays REVOKING while leased; an enrollment becomes IN_PROGRESS,
            // unless it was refunded while a worker that died held it: then it is revoked.
            let leased =
                if from == JobState::Revoking.as_str() || refunded { JobState::Revoking } else { JobState::InProgress };
            // A refunded enrollment reclaimed for revocation starts its attempts afresh.
            let afresh = refunded && from != JobState::Revoking.as_str();
            let row: LiteJobRow = sqlx::query_as(concat!(
                "UPDATE fulfillments
                 SET state = ?, attempts = CASE WHEN ? THEN 1 ELSE attempts + 1 END, next_attempt_at = NULL,
                     lease_token = ?, lease_expires_at = ?, update_time = ?
                 WHERE fulfillment_id = ? RETURNING ",
                job_columns!()
            ))
            .bind(leased.as_str())
            .bind(afresh)
            .bind(&token)
            .bind(expires)
            .bind(micros(now))
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
            let job = job(row)?;
            let change = TransitionOf {
                job_id: &id,
                from: JobState::parse(&from),
                to: leased,
                attempt: job.attempts,
                lease_token: Some(&token),
                requested_by: None,
            };
            insert_transition(&mut tx, &change, now).await?;
            claimed.push(Claimed { lease: Lease { job_id: id, token }, job });
        }
        tx.commit().await?;
        Ok(claimed)
    }

    async fn finish(&self, lease: &Lease, outcome: Outcome, now: DateTime<Utc>) -> Result<Finished, StoreError> {
        flow::finish(self.begin().await?, lease, outcome, &self.webhooks, now).await
    }

    async fn refund(
        &self,
        refunds: &[RefundOf],
        traceparent: &str,
        now: DateTime<Utc>,
    ) -> Result<Refunded, StoreError> {
        flow::refund(self.begin().await?, refunds, traceparent, now).await
    }

    async fn request_refund(
        &self,
        asked: &NewRefundRequest,
        now: DateTime<Utc>,
    ) -> Result<RefundRequested, StoreError> {
        flow::request_refund(self.begin().await?, asked, now).await
    }

    async fn retire_learners(&self, retirements: &[Retirement], now: DateTime<Utc>) -> Result<u64, StoreError> {
        if retirements.is_empty() {
            return Ok(0);
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        kit::retirement::sqlite::remember(&mut tx, retirements, now).await?;
        let mut changed = 0;
        for retirement in retirements {
            changed += sqlx::query(
                "UPDATE fulfillments
                    SET spec = json_set(spec, '$.learner.lms_username', ?2),
                        last_error_message = replace(last_error_message, json_extract(spec, '$.learner.lms_username'), ?2),
                        update_time = ?3
                  WHERE json_extract(spec, '$.learner.lms_user_id') = ?1
                    AND json_extract(spec, '$.learner.lms_username') <> ?2",
            )
            .bind(retirement.lms_user_id.to_string())
            .bind(retirement.retired_username.as_str())
            .bind(micros(now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        let unpublished: Vec<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT seq, payload FROM outbox WHERE published_at IS NULL ORDER BY seq")
                .fetch_all(&mut *tx)
                .await?;
        for (seq, payload) in scrubbed_outbox(unpublished, retirements) {
            sqlx::query("UPDATE outbox SET payload = ?2 WHERE seq = ?1")
                .bind(seq)
                .bind(payload)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    async fn retired_username(&self, lms_user_id: LmsUserId) -> Result<Option<LmsUsername>, StoreError> {
        let name = sqlx::query_scalar("SELECT retired_username FROM retired_learners WHERE lms_user_id = ?1")
            .bind(lms_user_id.get())
            .fetch_optional(&self.pool)
            .await?;
        retired_name(lms_user_id, name)
    }

    async fn redrive(&self, id: &str, requested_by: Option<&str>, now: DateTime<Utc>) -> Result<Redriven, StoreError> {
        flow::redrive(self.begin().await?, self, id, requested_by, now).await
    }

    async fn list(&self, filter: &JobFilter, after: Option<&PageCursor>, limit: i64) -> Result<Found, StoreError> {
        // A read transaction: the page and the count see one snapshot (WAL).
        let mut tx = self.pool.begin().await?;
        let mut query = QueryBuilder::<Sqlite>::new(concat!("SELECT ", job_columns!(), " FROM fulfillments"));
        push_filter(&mut query, &FILTER_SQL, filter, after, micros);
        query.push(" ORDER BY update_time DESC, fulfillment_id DESC LIMIT ").push_bind(limit);
        let rows: Vec<LiteJobRow> = query.build_query_as().fetch_all(&mut *tx).await?;
        let mut count = QueryBuilder::<Sqlite>::new("SELECT count(*) FROM fulfillments");
        push_filter(&mut count, &FILTER_SQL, filter, None, micros);
        let total: i64 = count.build_query_scalar().fetch_one(&mut *tx).await?;
        tx.commit().await?;
        let jobs = rows.into_iter().map(job).collect::<Result<_, _>>()?;
        Ok(Found { jobs, total: u64::try_from(total).unwrap_or_default() })
    }

    async fn redrive_matching(
        &self,
        filter: &JobFilter,
        max: u32,
        requested_by: Option<&str>,
        dry_run: bool,
        now: DateTime<Utc>,
    ) -> Result<BulkRedriven, StoreError> {
        // One writer at a time: what is read here is what is changed.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut query = QueryBuilder::<Sqlite>::new("SELECT fulfillment_id, state FROM fulfillments");
        push_filter(&mut query, &FILTER_SQL, filter, None, micros);
        query
            .push(" AND state IN ('FAILED', 'REVOKE_FAILED') ORDER BY update_time DESC, fulfillment_id DESC LIMIT ")
            .push_bind(i64::from(max) + 1);
        let matched: Vec<(String, String)> = query.build_query_as().fetch_all(&mut *tx).await?;
        if matched.len() > max as usize {
            let mut count = QueryBuilder::<Sqlite>::new("SELECT count(*) FROM fulfillments");
            push_filter(&mut count, &FILTER_SQL, filter, None, micros);
            count.push(" AND state IN ('FAILED', 'REVOKE_FAILED')");
            let matched: i64 = count.build_query_scalar().fetch_one(&mut *tx).await?;
            tx.rollback().await?;
            return Ok(BulkRedriven::TooMany { matched: u64::try_from(matched).unwrap_or_default() });
        }
        if dry_run {
            tx.rollback().await?;
            return Ok(BulkRedriven::Redriven(matched.into_iter().map(|(id, _)| id).collect()));
        }
        let mut ids = Vec::with_capacity(matched.len());
        for (id, state) in matched {
            let Some(from) = JobState::parse(&state) else { continue };
            let Some(to) = from.redriven() else { continue };
            sqlx::query(
                "UPDATE fulfillments SET state = ?2, attempts = 0, next_attempt_at = ?3, update_time = ?3
                 WHERE fulfillment_id = ?1",
            )
            .bind(&id)
            .bind(to.as_str())
            .bind(micros(now))
            .execute(&mut *tx)
            .await?;
            let change =
                TransitionOf { job_id: &id, from: Some(from), to, attempt: 0, lease_token: None, requested_by };
            insert_transition(&mut tx, &change, now).await?;
            ids.push(id);
        }
        tx.commit().await?;
        Ok(BulkRedriven::Redriven(ids))
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let due: Option<i64> = sqlx::query_scalar(
            "SELECT min(t) FROM (
                 SELECT min(next_attempt_at) AS t FROM fulfillments WHERE state IN ('PENDING', 'REVOKING')
                 UNION ALL
                 SELECT min(lease_expires_at) FROM fulfillments WHERE state IN ('IN_PROGRESS', 'REVOKING')
             )",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(due.map(from_micros))
    }

    async fn transitions(&self, id: &str) -> Result<Vec<Transition>, StoreError> {
        let rows: Vec<TransitionRow<i64>> = sqlx::query_as(
            "SELECT from_state, to_state, attempt, lease_token, requested_by, at FROM fulfillment_transitions
             WHERE fulfillment_id = ? ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().filter_map(|r| r.into_transition(from_micros)).collect())
    }

    async fn stats(&self, now: DateTime<Utc>) -> Result<QueueStats, StoreError> {
        // Each count uses a partial index: SUCCEEDED rows, which only grow, are
        // never scanned. SQLite uses a partial index only for a WHERE that
        // repeats its predicate, hence the grouped counts.
        let mut counts: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state, count(*) FROM fulfillments WHERE state IN ('PENDING', 'REVOKING') GROUP BY state",
        )
        .fetch_all(&self.pool)
        .await?;
        counts.extend(
            sqlx::query_as::<_, (String, i64)>(
                "SELECT state, count(*) FROM fulfillments WHERE state IN ('FAILED', 'REVOKE_FAILED') GROUP BY state",
            )
            .fetch_all(&self.pool)
            .await?,
        );
        counts.extend(
            sqlx::query_as::<_, (String, i64)>(
                "SELECT state, count(*) FROM fulfillments WHERE state IN ('IN_PROGRESS', 'REVOKING')
                 AND state = 'IN_PROGRESS' GROUP BY state",
            )
            .fetch_all(&self.pool)
            .await?,
        );
        let count = |state: JobState| counts.iter().find(|(s, _)| s == state.as_str()).map_or(0, |(_, n)| *n);
        let by_state =
            [JobState::Pending, JobState::InProgress, JobState::Failed, JobState::Revoking, JobState::RevokeFailed]
                .into_iter()
                .map(|state| (state, count(state)))
                .collect();
        let oldest_due: Option<i64> = sqlx::query_scalar(
            "SELECT min(next_attempt_at) FROM fulfillments WHERE state IN ('PENDING', 'REVOKING') AND next_attempt_at <= ?",
        )
        .bind(micros(now))
        .fetch_one(&self.pool)
        .await?;
        Ok(QueueStats { by_state, oldest_due: oldest_due.map(from_micros) })
    }
}

/// The outbox's SQL is `kit::outbox`'s, shared with every service that has one.
#[async_trait::async_trait]
impl OutboxStore for SqliteStore {
    async fn unpublished(&self, limit: i64) -> Result<Vec<OutboxEntry>, OutboxError> {
        Ok(kit::outbox::sqlite::unpublished(&self.pool, limit).await?)
    }

    async fn mark_published(&self, seqs: &[i64], now: DateTime<Utc>) -> Result<(), OutboxError> {
        Ok(kit::outbox::sqlite::mark_published(&self.pool, seqs, now).await?)
    }

    async fn prune_published(&self, published_before: DateTime<Utc>, limit: i64) -> Result<u64, OutboxError> {
        Ok(kit::outbox::sqlite::prune_published(&self.pool, published_before, limit).await?)
    }

    async fn backlog(&self) -> Result<Backlog, OutboxError> {
        Ok(kit::outbox::sqlite::backlog(&self.pool).await?)
    }
}
