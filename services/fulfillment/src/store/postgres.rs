//! The Postgres store: workers claim with `FOR UPDATE SKIP LOCKED`, so many
//! workers in many processes share the queue without waiting on each other;
//! each claim, outcome and outbox write is one statement or one transaction.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kit::outbox::{Backlog, OutboxEntry, OutboxError, OutboxStore};
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Postgres, QueryBuilder};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use vocab::{CourseRunKey, LmsUserId, LmsUsername, Retirement};

use super::flow::{self, JobTx, RefundChange, TransitionOf, Written};
use super::{
    BulkRedriven, Claimed, FilterSql, Finished, Found, FulfillmentJob, JobRow, Lease, NewJob, NewRefundRequest,
    OutboxEvent, Outcome, QueueStats, Redriven, RefundOf, RefundRequestRow, RefundRequested, Refunded, Store,
    StoreError, Transition, TransitionRow, job_columns, learner_query, push_filter, retired_name, scrubbed_outbox,
};
use crate::domain::{JobState, LearnerKey, RefundRequest};
use crate::filter::{JobFilter, PageCursor};
use crate::webhook::store::NewDelivery;

/// The channel a new or re-driven job is announced on, so idle workers in
/// other processes wake at once (`LISTEN fulfillment_jobs`).
pub const WAKE_CHANNEL: &str = "fulfillment_jobs";

/// The fewest milliseconds between two announcements of new work: a burst of
/// acceptances is announced once, at most this much after its first.
const ANNOUNCE_EVERY: Duration = Duration::from_millis(5);

/// Fulfillment jobs in Postgres.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
    announcer: Arc<WorkAnnouncer>,
    webhooks: crate::webhook::WebhookSources,
}

impl PostgresStore {
    /// A store over `pool` (whose search_path is the service's schema).
    pub fn new(pool: PgPool) -> Self {
        Self { announcer: Arc::new(WorkAnnouncer::new(pool.clone())), pool, webhooks: Default::default() }
    }

    /// The same store, writing an outcome webhook delivery for the orders of these source systems.
    pub fn with_webhooks(mut self, webhooks: crate::webhook::WebhookSources) -> Self {
        self.webhooks = webhooks;
        self
    }
}

/// Tells idle workers in every process that work was stored (`NOTIFY
/// fulfillment_jobs`), after the commit and coalesced: a NOTIFY inside each
/// accepting transaction takes Postgres's notify-queue lock at commit, which
/// serialises every acceptance (seen as `Lock:object` waits under load). A
/// request for an announcement made while one is being sent, or within
/// [`ANNOUNCE_EVERY`] of it, is served by one more announcement after it, so
/// work stored is always announced after its commit.
#[derive(Debug)]
struct WorkAnnouncer {
    pool: PgPool,
    wanted: Arc<Notify>,
    started: std::sync::OnceLock<CancellationToken>,
}

impl WorkAnnouncer {
    fn new(pool: PgPool) -> Self {
        Self { pool, wanted: Arc::new(Notify::new()), started: std::sync::OnceLock::new() }
    }

    /// Asks for an announcement (call after the commit). Starts the sender on first use.
    fn announce(&self) {
        self.started.get_or_init(|| {
            let stop = CancellationToken::new();
            let (pool, wanted, stopped) = (self.pool.clone(), Arc::clone(&self.wanted), stop.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = stopped.cancelled() => return,
                        () = wanted.notified() => {}
                    }
                    if let Err(error) = sqlx::query("SELECT pg_notify($1, '')").bind(WAKE_CHANNEL).execute(&pool).await
                    {
                        tracing::warn!(%error, "could not announce new work; other processes' workers poll for it");
                    }
                    tokio::time::sleep(ANNOUNCE_EVERY).await;
                }
            });
            stop
        });
        self.wanted.notify_one();
    }
}

impl Drop for WorkAnnouncer {
    fn drop(&mut self) {
        if let Some(stop) = self.started.get() {
            stop.cancel();
        }
    }
}

type PgJobRow = JobRow<DateTime<Utc>>;

fn job(row: PgJobRow) -> Result<FulfillmentJob, StoreError> {
    row.into_job(|t| t)
}

/// The job filter in this backend's SQL.
const FILTER_SQL: FilterSql = FilterSql {
    always: "TRUE",
    course_run_key: "spec -> 'line' -> 'product' ->> 'course_run_key'",
    source_system: "spec -> 'header' ->> 'source_system'",
};

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn order_fingerprints(&self, order_number: &str) -> Result<Vec<(String, String)>, StoreError> {
        Ok(sqlx::query_as("SELECT line_item_id, fingerprint FROM fulfillments WHERE order_number = $1")
            .bind(order_number)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn insert_order(&self, jobs: &[NewJob], now: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut ids = Vec::with_capacity(jobs.len());
        let mut orders = Vec::with_capacity(jobs.len());
        let mut lines = Vec::with_capacity(jobs.len());
        let mut positions = Vec::with_capacity(jobs.len());
        let mut specs = Vec::with_capacity(jobs.len());
        let mut fingerprints = Vec::with_capacity(jobs.len());
        let mut traceparents = Vec::with_capacity(jobs.len());
        for job in jobs {
            ids.push(job.id.as_str());
            orders.push(job.spec.header.order_number.as_str());
            lines.push(job.spec.line.line_item_id.as_str());
            positions.push(job.spec.position);
            specs.push(
                serde_json::to_string(&job.spec)
                    .map_err(|e| StoreError::Corrupt { id: job.id.clone(), reason: e.to_string() })?,
            );
            fingerprints.push(job.spec.fingerprint.as_str());
            traceparents.push(job.traceparent.as_str());
        }
        let Some(learner) = jobs.first().map(|job| job.spec.learner.lms_user_id) else { return Ok(true) };
        let mut tx = self.pool.begin().await?;
        // One statement stores the jobs and their first transition; a line that
        // already exists is skipped, and then the whole order is rolled back.
        // Nothing is stored for a retired learner; reading retired_learners here
        // holds a retirement back until this commits (see retire_learners).
        let inserted: Vec<String> = sqlx::query_scalar(
            "WITH new AS (
                 INSERT INTO fulfillments (fulfillment_id, order_number, line_item_id, position, spec, fingerprint,
                                           state, next_attempt_at, traceparent, create_time, update_time)
                 SELECT id, o, l, p, s::jsonb, f, 'PENDING', $8, t, $8, $8
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[], $7::text[])
                      AS j(id, o, l, p, s, f, t)
                 WHERE NOT EXISTS (SELECT 1 FROM retired_learners WHERE lms_user_id = $9)
                 ON CONFLICT (order_number, line_item_id) DO NOTHING
                 RETURNING fulfillment_id
             ), logged AS (
                 INSERT INTO fulfillment_transitions (fulfillment_id, from_state, to_state, attempt, at)
                 SELECT fulfillment_id, NULL, 'PENDING', 0, $8 FROM new
             )
             SELECT fulfillment_id FROM new",
        )
        .bind(&ids)
        .bind(&orders)
        .bind(&lines)
        .bind(&positions)
        .bind(&specs)
        .bind(&fingerprints)
        .bind(&traceparents)
        .bind(now)
        .bind(learner.get())
        .fetch_all(&mut *tx)
        .await?;
        if inserted.len() != jobs.len() {
            let retired: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM retired_learners WHERE lms_user_id = $1)")
                    .bind(learner.get())
                    .fetch_one(&mut *tx)
                    .await?;
            tx.rollback().await?;
            return if retired { Err(StoreError::LearnerRetired(learner)) } else { Ok(false) };
        }
        tx.commit().await?;
        self.announcer.announce();
        Ok(true)
    }

    async fn get(&self, id: &str) -> Result<Option<FulfillmentJob>, StoreError> {
        sqlx::query_as::<_, PgJobRow>(concat!(
            "SELECT ",
            job_columns!(),
            " FROM fulfillments WHERE fulfillment_id = $1"
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
        sqlx::query_as::<_, PgJobRow>(concat!(
            "SELECT ",
            job_columns!(),
            " FROM fulfillments WHERE order_number = $1 AND position >= $2 ORDER BY position LIMIT $3"
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
        #[derive(sqlx::FromRow)]
        struct ClaimRow {
            #[sqlx(flatten)]
            job: PgJobRow,
            lease_token: String,
        }
        let expires = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        // Expired leases first (a worker died holding them), then due jobs in due
        // order; rows another worker is claiming right now are skipped, not waited for.
        // A revocation stays REVOKING while leased; an enrollment becomes IN_PROGRESS,
        // unless it was refunded while a worker that died held it: then it is revoked.
        let rows: Vec<ClaimRow> = sqlx::query_as(concat!(
            "WITH expired AS (
                 SELECT fulfillment_id, state FROM fulfillments
                 WHERE state IN ('IN_PROGRESS', 'REVOKING') AND lease_expires_at <= $1
                 ORDER BY lease_expires_at LIMIT $2 FOR UPDATE SKIP LOCKED
             ), due AS (
                 SELECT fulfillment_id, state FROM fulfillments
                 WHERE state IN ('PENDING', 'REVOKING') AND next_attempt_at <= $1
                 ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED
             ), picked AS (
                 SELECT * FROM (SELECT * FROM expired UNION ALL SELECT * FROM due) c LIMIT $2
             ), claimed AS (
                 UPDATE fulfillments f
                 SET state = CASE WHEN picked.state = 'REVOKING' OR f.refund IS NOT NULL
                                  THEN 'REVOKING' ELSE 'IN_PROGRESS' END,
                     -- A refunded enrollment reclaimed for revocation starts its attempts afresh.
                     attempts = CASE WHEN picked.state <> 'REVOKING' AND f.refund IS NOT NULL
                                     THEN 1 ELSE f.attempts + 1 END,
                     next_attempt_at = NULL,
                     lease_token = gen_random_uuid()::text, lease_expires_at = $3, update_time = $1
                 FROM picked WHERE f.fulfillment_id = picked.fulfillment_id
                 RETURNING f.*, picked.state AS from_state
             ), logged AS (
                 INSERT INTO fulfillment_transitions (fulfillment_id, from_state, to_state, attempt, lease_token, at)
                 SELECT fulfillment_id, from_state, state, attempts, lease_token, $1 FROM claimed
             )
             SELECT ",
            job_columns!(),
            ", lease_token FROM claimed"
        ))
        .bind(now)
        .bind(limit)
        .bind(expires)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                let job = job(row.job)?;
                Ok(Claimed { lease: Lease { job_id: job.id.clone(), token: row.lease_token }, job })
            })
            .collect()
    }

    async fn finish(&self, lease: &Lease, outcome: Outcome, now: DateTime<Utc>) -> Result<Finished, StoreError> {
        let finished = flow::finish(PgTx(self.pool.begin().await?), lease, outcome, &self.webhooks, now).await?;
        if matches!(&finished, Finished::Recorded(job) if job.state == JobState::Revoking) {
            self.announcer.announce();
        }
        Ok(finished)
    }

    async fn refund(
        &self,
        refunds: &[RefundOf],
        traceparent: &str,
        now: DateTime<Utc>,
    ) -> Result<Refunded, StoreError> {
        let refunded = flow::refund(PgTx(self.pool.begin().await?), refunds, traceparent, now).await?;
        // A repeat changes nothing: only a call that recorded a refund may have work for the workers.
        if matches!(&refunded, Refunded::Recorded { jobs, created: true } if jobs.iter().any(|job| job.state == JobState::Revoking))
        {
            self.announcer.announce();
        }
        Ok(refunded)
    }

    async fn request_refund(
        &self,
        asked: &NewRefundRequest,
        now: DateTime<Utc>,
    ) -> Result<RefundRequested, StoreError> {
        flow::request_refund(PgTx(self.pool.begin().await?), asked, now).await
    }

    async fn retire_learners(&self, retirements: &[Retirement], now: DateTime<Utc>) -> Result<u64, StoreError> {
        if retirements.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = retirements.iter().map(|r| r.lms_user_id.get()).collect();
        let mut tx = self.pool.begin().await?;
        // Orders are refused for a learner in this table, and remembering locks
        // it: a retirement does not interleave with an acceptance that checked
        // it a moment earlier.
        kit::retirement::postgres::remember(&mut tx, retirements, now).await?;
        // Row locks on the jobs order this with a worker finishing one: whichever
        // is second sees the other's change (see events_for).
        let changed = sqlx::query(
            "UPDATE fulfillments f
                SET spec = jsonb_set(f.spec, '{learner,lms_username}', to_jsonb(r.retired_username)),
                    last_error_message = replace(f.last_error_message, f.spec -> 'learner' ->> 'lms_username',
                                                 r.retired_username),
                    update_time = $2
               FROM retired_learners r
              WHERE r.lms_user_id = ANY($1)
                AND f.spec -> 'learner' ->> 'lms_user_id' = r.lms_user_id::text
                AND f.spec -> 'learner' ->> 'lms_username' <> r.retired_username",
        )
        .bind(&ids)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let unpublished: Vec<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT seq, payload FROM outbox WHERE published_at IS NULL ORDER BY seq FOR UPDATE")
                .fetch_all(&mut *tx)
                .await?;
        for (seq, payload) in scrubbed_outbox(unpublished, retirements) {
            sqlx::query("UPDATE outbox SET payload = $2 WHERE seq = $1")
                .bind(seq)
                .bind(payload)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    async fn retired_username(&self, lms_user_id: LmsUserId) -> Result<Option<LmsUsername>, StoreError> {
        let name = sqlx::query_scalar("SELECT retired_username FROM retired_learners WHERE lms_user_id = $1")
            .bind(lms_user_id.get())
            .fetch_optional(&self.pool)
            .await?;
        retired_name(lms_user_id, name)
    }

    async fn redrive(&self, id: &str, requested_by: Option<&str>, now: DateTime<Utc>) -> Result<Redriven, StoreError> {
        let redriven = flow::redrive(PgTx(self.pool.begin().await?), self, id, requested_by, now).await?;
        if matches!(redriven, Redriven::Pending(_)) {
            self.announcer.announce();
        }
        Ok(redriven)
    }

    async fn list(&self, filter: &JobFilter, after: Option<&PageCursor>, limit: i64) -> Result<Found, StoreError> {
        // One snapshot for the page and the count, so the total is of the jobs listed.
        let mut tx = self.pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
        let mut query = QueryBuilder::<Postgres>::new(concat!("SELECT ", job_columns!(), " FROM fulfillments"));
        push_filter(&mut query, &FILTER_SQL, filter, after, |t| t);
        query.push(" ORDER BY update_time DESC, fulfillment_id DESC LIMIT ").push_bind(limit);
        let rows: Vec<PgJobRow> = query.build_query_as().fetch_all(&mut *tx).await?;
        let mut count = QueryBuilder::<Postgres>::new("SELECT count(*) FROM fulfillments");
        push_filter(&mut count, &FILTER_SQL, filter, None, |t| t);
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
        let mut tx = self.pool.begin().await?;
        // Locked in id order, as refunds lock theirs, so the two cannot deadlock;
        // one more than the bound is enough to know there are too many.
        let mut query = QueryBuilder::<Postgres>::new("SELECT fulfillment_id, update_time FROM fulfillments");
        push_filter(&mut query, &FILTER_SQL, filter, None, |t| t);
        query
            .push(" AND state IN ('FAILED', 'REVOKE_FAILED') ORDER BY fulfillment_id LIMIT ")
            .push_bind(i64::from(max) + 1);
        if !dry_run {
            query.push(" FOR UPDATE");
        }
        let mut matched: Vec<(String, DateTime<Utc>)> = query.build_query_as().fetch_all(&mut *tx).await?;
        if matched.len() > max as usize {
            let mut count = QueryBuilder::<Postgres>::new("SELECT count(*) FROM fulfillments");
            push_filter(&mut count, &FILTER_SQL, filter, None, |t| t);
            count.push(" AND state IN ('FAILED', 'REVOKE_FAILED')");
            let matched: i64 = count.build_query_scalar().fetch_one(&mut *tx).await?;
            tx.rollback().await?;
            return Ok(BulkRedriven::TooMany { matched: u64::try_from(matched).unwrap_or_default() });
        }
        matched.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
        let ids: Vec<String> = matched.into_iter().map(|(id, _)| id).collect();
        if dry_run || ids.is_empty() {
            tx.rollback().await?;
            return Ok(BulkRedriven::Redriven(ids));
        }
        sqlx::query(
            "WITH redriven AS (
                 UPDATE fulfillments
                 SET state = CASE state WHEN 'FAILED' THEN 'PENDING' ELSE 'REVOKING' END,
                     attempts = 0, next_attempt_at = $2, update_time = $2
                 WHERE fulfillment_id = ANY($1) AND state IN ('FAILED', 'REVOKE_FAILED')
                 RETURNING fulfillment_id, state
             )
             INSERT INTO fulfillment_transitions (fulfillment_id, from_state, to_state, attempt, requested_by, at)
             SELECT fulfillment_id, CASE state WHEN 'PENDING' THEN 'FAILED' ELSE 'REVOKE_FAILED' END, state, 0, $3, $2
             FROM redriven",
        )
        .bind(&ids)
        .bind(now)
        .bind(requested_by)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.announcer.announce();
        Ok(BulkRedriven::Redriven(ids))
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT min(t) FROM (
                 (SELECT next_attempt_at AS t FROM fulfillments WHERE state IN ('PENDING', 'REVOKING')
                  AND next_attempt_at IS NOT NULL ORDER BY next_attempt_at LIMIT 1)
                 UNION ALL
                 (SELECT lease_expires_at FROM fulfillments WHERE state IN ('IN_PROGRESS', 'REVOKING')
                  AND lease_expires_at IS NOT NULL ORDER BY lease_expires_at LIMIT 1)
             ) d",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    async fn transitions(&self, id: &str) -> Result<Vec<Transition>, StoreError> {
        let rows: Vec<TransitionRow<DateTime<Utc>>> = sqlx::query_as(
            "SELECT from_state, to_state, attempt, lease_token, requested_by, at FROM fulfillment_transitions
             WHERE fulfillment_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().filter_map(|r| r.into_transition(|t| t)).collect())
    }

    async fn stats(&self, now: DateTime<Utc>) -> Result<QueueStats, StoreError> {
        // Each count uses a partial index: SUCCEEDED rows, which only grow, are never scanned.
        type Counts = (i64, i64, i64, i64, i64, Option<DateTime<Utc>>);
        let (pending, in_progress, failed, revoking, revoke_failed, oldest_due): Counts = sqlx::query_as(
            "SELECT (SELECT count(*) FROM fulfillments WHERE state = 'PENDING'),
                    (SELECT count(*) FROM fulfillments WHERE state = 'IN_PROGRESS'),
                    (SELECT count(*) FROM fulfillments WHERE state = 'FAILED'),
                    (SELECT count(*) FROM fulfillments WHERE state = 'REVOKING'),
                    (SELECT count(*) FROM fulfillments WHERE state = 'REVOKE_FAILED'),
                    (SELECT min(next_attempt_at) FROM fulfillments
                     WHERE state IN ('PENDING', 'REVOKING') AND next_attempt_at <= $1)",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(QueueStats {
            by_state: vec![
                (JobState::Pending, pending),
                (JobState::InProgress, in_progress),
                (JobState::Failed, failed),
                (JobState::Revoking, revoking),
                (JobState::RevokeFailed, revoke_failed),
            ],
            oldest_due,
        })
    }

    async fn listen_for_work(&self, wake: Arc<Notify>, shutdown: CancellationToken) {
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            let listened = async {
                let mut listener = PgListener::connect_with(&self.pool).await?;
                listener.listen(WAKE_CHANNEL).await?;
                failures = 0;
                loop {
                    listener.recv().await?;
                    wake.notify_one();
                }
            };
            let result: Result<Infallible, sqlx::Error> = tokio::select! {
                () = shutdown.cancelled() => return,
                result = listened => result,
            };
            let Err(error) = result;
            failures = failures.saturating_add(1);
            tracing::warn!(%error, "lost the Postgres LISTEN connection; workers poll until it is back");
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(u64::from(failures.min(30)))) => {}
            }
        }
    }
}

/// One Postgres transaction of the shared flows: rows are locked `FOR UPDATE`.
struct PgTx(sqlx::Transaction<'static, Postgres>);

#[async_trait::async_trait]
impl JobTx for PgTx {
    async fn locked_job(&mut self, id: &str) -> Result<Option<FulfillmentJob>, StoreError> {
        sqlx::query_as::<_, PgJobRow>(concat!(
            "SELECT ",
            job_columns!(),
            " FROM fulfillments WHERE fulfillment_id = $1 FOR UPDATE"
        ))
        .bind(id)
        .fetch_optional(&mut *self.0)
        .await?
        .map(job)
        .transpose()
    }

    async fn held(&mut self, lease: &Lease) -> Result<Option<(String, bool, i32)>, StoreError> {
        // The lock orders this with a refund of the same job: whichever is second sees the other's change.
        Ok(sqlx::query_as(
            "SELECT state, refund IS NOT NULL, attempts FROM fulfillments
             WHERE fulfillment_id = $1 AND lease_token = $2 AND state IN ('IN_PROGRESS', 'REVOKING') FOR UPDATE",
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
             SET state = $2, next_attempt_at = $3, lease_token = NULL, lease_expires_at = NULL,
                 attempts = CASE WHEN $9 THEN 0 ELSE attempts END,
                 last_error_kind = COALESCE($4, last_error_kind),
                 last_error_status = CASE WHEN $4 IS NULL THEN last_error_status ELSE $5 END,
                 last_error_message = COALESCE($6, last_error_message),
                 entitlement_uuid = COALESCE($7, entitlement_uuid), update_time = $8
             WHERE fulfillment_id = $1
             RETURNING ",
            job_columns!()
        ))
        .bind(job_id)
        .bind(written.state.as_str())
        .bind(written.next_attempt_at)
        .bind(written.error.map(|e| e.kind.as_str()))
        .bind(written.error.and_then(|e| e.lms_status).map(i32::from))
        .bind(written.error.map(|e| e.message.as_str()))
        .bind(written.entitlement_uuid)
        .bind(now)
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
             SET state = $2, attempts = CASE WHEN $3 THEN 0 ELSE attempts END, next_attempt_at = $4,
                 refund = $5::jsonb, update_time = $6
             WHERE fulfillment_id = $1 RETURNING ",
            job_columns!()
        ))
        .bind(job_id)
        .bind(change.state.as_str())
        .bind(change.reset_attempts)
        .bind(change.next_attempt_at)
        .bind(&change.refund)
        .bind(now)
        .fetch_one(&mut *self.0)
        .await?)
    }

    async fn redrive_job(&mut self, id: &str, now: DateTime<Utc>) -> Result<Option<FulfillmentJob>, StoreError> {
        sqlx::query_as::<_, PgJobRow>(concat!(
            "UPDATE fulfillments
             SET state = CASE state WHEN 'FAILED' THEN 'PENDING' ELSE 'REVOKING' END,
                 attempts = 0, next_attempt_at = $2, update_time = $2
             WHERE fulfillment_id = $1 AND state IN ('FAILED', 'REVOKE_FAILED') RETURNING ",
            job_columns!()
        ))
        .bind(id)
        .bind(now)
        .fetch_optional(&mut *self.0)
        .await?
        .map(job)
        .transpose()
    }

    async fn transition(&mut self, change: &TransitionOf<'_>, now: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO fulfillment_transitions
                 (fulfillment_id, from_state, to_state, attempt, lease_token, requested_by, at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(change.job_id)
        .bind(change.from.map(JobState::as_str))
        .bind(change.to.as_str())
        .bind(i32::try_from(change.attempt).unwrap_or(i32::MAX))
        .bind(change.lease_token)
        .bind(change.requested_by)
        .bind(now)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn insert_events(&mut self, events: &[OutboxEvent], now: DateTime<Utc>) -> Result<(), StoreError> {
        Ok(kit::outbox::postgres::insert(&mut self.0, events, now).await?)
    }

    async fn insert_deliveries(&mut self, deliveries: &[NewDelivery], now: DateTime<Utc>) -> Result<(), StoreError> {
        Ok(crate::webhook::store::postgres::insert(&mut self.0, deliveries, now).await?)
    }

    async fn learner_jobs(
        &mut self,
        learner: &LearnerKey,
        course_run_key: &CourseRunKey,
    ) -> Result<Vec<FulfillmentJob>, StoreError> {
        // Newest first, locked: a concurrent request for the same line waits and then sees this one.
        macro_rules! learner_jobs {
            ($learner:literal) => {
                concat!(
                    "SELECT ",
                    job_columns!(),
                    " FROM fulfillments WHERE spec -> 'learner' ->> '",
                    $learner,
                    "' = $1 AND spec -> 'line' -> 'product' ->> 'course_run_key' = $2
                     ORDER BY create_time DESC, fulfillment_id DESC FOR UPDATE"
                )
            };
        }
        let (query, key) = learner_query(learner, learner_jobs!("lms_user_id"), learner_jobs!("lms_username"));
        let rows: Vec<PgJobRow> =
            sqlx::query_as(query).bind(key).bind(course_run_key.as_str()).fetch_all(&mut *self.0).await?;
        rows.into_iter().map(job).collect()
    }

    async fn refund_requests(&mut self, job_ids: &[&str]) -> Result<Vec<RefundRequest>, StoreError> {
        let rows: Vec<RefundRequestRow<DateTime<Utc>>> = sqlx::query_as(
            "SELECT refund_request_id, fulfillment_id, reason, requested_at FROM refund_requests
             WHERE fulfillment_id = ANY($1)",
        )
        .bind(job_ids)
        .fetch_all(&mut *self.0)
        .await?;
        rows.into_iter().map(|row| row.into_request(|t| t)).collect()
    }

    async fn insert_refund_request(&mut self, request: &RefundRequest) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO refund_requests (refund_request_id, fulfillment_id, reason, requested_at)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&request.id)
        .bind(&request.fulfillment_id)
        .bind(request.reason.as_str())
        .bind(request.requested_at)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn commit(self) -> Result<(), StoreError> {
        Ok(self.0.commit().await?)
    }
}

/// The outbox's SQL is `kit::outbox`'s, shared with every service that has one.
#[async_trait::async_trait]
impl OutboxStore for PostgresStore {
    async fn unpublished(&self, limit: i64) -> Result<Vec<OutboxEntry>, OutboxError> {
        Ok(kit::outbox::postgres::unpublished(&self.pool, limit).await?)
    }

    async fn mark_published(&self, seqs: &[i64], now: DateTime<Utc>) -> Result<(), OutboxError> {
        Ok(kit::outbox::postgres::mark_published(&self.pool, seqs, now).await?)
    }

    async fn prune_published(&self, published_before: DateTime<Utc>, limit: i64) -> Result<u64, OutboxError> {
        Ok(kit::outbox::postgres::prune_published(&self.pool, published_before, limit).await?)
    }

    async fn backlog(&self) -> Result<Backlog, OutboxError> {
        Ok(kit::outbox::postgres::backlog(&self.pool).await?)
    }
}
