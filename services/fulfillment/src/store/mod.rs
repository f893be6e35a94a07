//! Where fulfillment jobs and their outbox are kept: the [`Store`] trait and its
//! backends, [`postgres::PostgresStore`] and [`sqlite::SqliteStore`]. One
//! contract suite (`tests/store_contract.rs`) runs against both.
//!
//! The jobs table is the queue. A worker [`Store::claim`]s due jobs, which gives
//! each a fresh [`Lease`]; every later change to the job names that lease and
//! is refused with [`Finished::LeaseLost`] once another worker has claimed the
//! job after the lease ran out. So however many workers touch a job, only the
//! holder of the current lease records its outcome — one SUCCEEDED transition,
//! one set of outbox events.

mod flow;
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kit::db::Database;
pub use kit::outbox::{OutboxEntry, OutboxEvent};
use kit::outbox::{OutboxError, OutboxStore};
use sqlx::QueryBuilder;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use vocab::{LmsUserId, LmsUsername, Retirement};

use crate::domain::{
    AttemptEnd, ErrorKind, JobError, JobSpec, JobState, LearnerKey, Refund, RefundRequest, RefundTerms,
};
use crate::filter::{JobFilter, PageCursor};
use vocab::{CourseRunKey, RefundReason};

/// One fulfillment job as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FulfillmentJob {
    /// Its id.
    pub id: String,
    /// The line item as accepted, with the resolved learner.
    pub spec: JobSpec,
    /// Where it stands.
    pub state: JobState,
    /// LMS calls made (claims), since accepted or last re-driven.
    pub attempts: u32,
    /// The most recent failure.
    pub last_error: Option<JobError>,
    /// When a PENDING job is due.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The LMS's entitlement UUID, for a SUCCEEDED entitlement.
    pub entitlement_uuid: Option<String>,
    /// The line's refund, once one was recorded.
    pub refund: Option<Refund>,
    /// The W3C traceparent of the call that accepted it; may be empty.
    pub traceparent: String,
    /// When accepted.
    pub created_at: DateTime<Utc>,
    /// When last changed.
    pub updated_at: DateTime<Utc>,
}

impl FulfillmentJob {
    /// The job as `insert_order` stores it at `now`: PENDING, due at once.
    pub fn accepted(new: &NewJob, now: DateTime<Utc>) -> Self {
        Self {
            id: new.id.clone(),
            spec: new.spec.clone(),
            state: JobState::Pending,
            attempts: 0,
            last_error: None,
            next_attempt_at: Some(now),
            entitlement_uuid: None,
            refund: None,
            traceparent: new.traceparent.clone(),
            created_at: now,
            updated_at: now,
        }
    }
}

/// A job to store for a new order.
#[derive(Clone, Debug)]
pub struct NewJob {
    /// The id to give it.
    pub id: String,
    /// What to fulfil.
    pub spec: JobSpec,
    /// The accepting call's traceparent.
    pub traceparent: String,
}

/// A claim on a job: only its holder may record the job's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The job.
    pub job_id: String,
    /// Unique per claim.
    pub token: String,
}

/// A job a worker claimed.
#[derive(Clone, Debug)]
pub struct Claimed {
    /// The job with this claim's attempt counted: IN_PROGRESS to enrol, REVOKING to revoke.
    pub job: FulfillmentJob,
    /// The claim.
    pub lease: Lease,
}

/// How an attempt ended, as the holder of the lease records it. The state it
/// leads to also depends on the phase and on a refund recorded meanwhile
/// ([`state_after_attempt`](crate::domain::state_after_attempt)).
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The LMS confirmed: SUCCEEDED (or REVOKED), and these events go to the outbox.
    Succeeded {
        /// For an entitlement, the LMS's UUID.
        entitlement_uuid: Option<String>,
        /// `FulfillmentCompleted` and `PurchaseRecorded`, or `FulfillmentRevoked`.
        events: Vec<OutboxEvent>,
    },
    /// A transient failure: PENDING (or REVOKING) again, due at `at`.
    RetryAt {
        /// When it is due.
        at: DateTime<Utc>,
        /// What went wrong.
        error: JobError,
    },
    /// FAILED.
    Failed {
        /// Why.
        error: JobError,
    },
}

/// What recording an outcome did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finished {
    /// Recorded; the job as it is now.
    Recorded(Box<FulfillmentJob>),
    /// The lease ran out and another worker claimed the job: nothing recorded.
    LeaseLost,
}

impl Outcome {
    /// How the attempt ended, whatever the phase.
    pub fn end(&self) -> AttemptEnd {
        match self {
            Outcome::Succeeded { .. } => AttemptEnd::Succeeded,
            Outcome::RetryAt { .. } => AttemptEnd::Retry,
            Outcome::Failed { error } if error.is_refusal() => AttemptEnd::Refused,
            Outcome::Failed { .. } => AttemptEnd::Failed,
        }
    }
}

/// One line's refund to record.
#[derive(Clone, Debug)]
pub struct RefundOf {
    /// The job refunded.
    pub job_id: String,
    /// What was refunded.
    pub terms: RefundTerms,
}

/// What recording refunds did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refunded {
    /// Recorded, or repeats of refunds recorded before: the jobs as they are
    /// now, in the order asked; `created` when any of them changed.
    Recorded {
        /// The refunded jobs.
        jobs: Vec<FulfillmentJob>,
        /// Whether this call changed anything.
        created: bool,
    },
    /// Refused, and nothing changed: this job was refunded before on other
    /// terms (a [`RefundEffect::Conflict`](crate::domain::RefundEffect::Conflict)).
    Refused {
        /// The job at fault, as it is, with its recorded refund.
        job: Box<FulfillmentJob>,
    },
    /// No job with this id.
    NotFound(String),
}

/// A refund request to record (`RequestRefund`).
#[derive(Clone, Debug)]
pub struct NewRefundRequest {
    /// The id to give it.
    pub id: String,
    /// The learner, as the LMS names them.
    pub learner: LearnerKey,
    /// The course run unenrolled from.
    pub course_run_key: CourseRunKey,
    /// Why.
    pub reason: RefundReason,
    /// The asking call's traceparent, carried by `RefundRequested`.
    pub traceparent: String,
}

/// What recording a refund request did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefundRequested {
    /// Recorded now (`created`), or recorded before for the same fulfillment.
    Recorded {
        /// The request.
        request: RefundRequest,
        /// Its fulfillment, as it is.
        job: Box<FulfillmentJob>,
        /// Whether this call recorded it.
        created: bool,
    },
    /// The learner's line of that run was refunded already.
    AlreadyRefunded(Box<FulfillmentJob>),
    /// No line of that run was fulfilled for the learner.
    NoFulfilledLine,
}

/// What `RetryFulfillment` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Redriven {
    /// Back to PENDING (or REVOKING), attempts reset.
    Pending(Box<FulfillmentJob>),
    /// Not FAILED nor REVOKE_FAILED: left as it is.
    NotFailed(Box<FulfillmentJob>),
    /// No such job.
    NotFound,
}

/// A page of the jobs a filter matches, and how many match in all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The page.
    pub jobs: Vec<FulfillmentJob>,
    /// Every job the filter matches, on every page.
    pub total: u64,
}

/// What `RetryFulfillments` did, or on a dry run would do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BulkRedriven {
    /// Every matching job re-driven (none when none matched): their ids, the most recently changed first.
    Redriven(Vec<String>),
    /// More jobs match than the bound: none was changed.
    TooMany {
        /// How many match.
        matched: u64,
    },
}

/// One state change of a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The state before; None when the job was created.
    pub from: Option<JobState>,
    /// The state after.
    pub to: JobState,
    /// The attempt number at the time.
    pub attempt: u32,
    /// The lease it happened under, if any.
    pub lease_token: Option<String>,
    /// Who asked for it (a token's subject), when an operator's call made it.
    pub requested_by: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// The queue at a glance, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Jobs per unfinished state (PENDING, IN_PROGRESS) and FAILED; SUCCEEDED
    /// jobs, which only accumulate, are counted by the attempts metric instead.
    pub by_state: Vec<(JobState, i64)>,
    /// The due time of the PENDING job that has waited longest past it.
    pub oldest_due: Option<DateTime<Utc>>,
}

/// Why a store operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The order's learner was retired: nothing was stored.
    #[error("learner {0} is retired and cannot be enrolled")]
    LearnerRetired(LmsUserId),
    /// A stored row could not be read back.
    #[error("corrupt row for fulfillment {id}: {reason}")]
    Corrupt {
        /// The job.
        id: String,
        /// What was wrong.
        reason: String,
    },
}

impl From<OutboxError> for StoreError {
    fn from(error: OutboxError) -> Self {
        match error {
            OutboxError::Database(error) => Self::Database(error),
        }
    }
}

/// Fulfillment jobs, their transitions and the outbox (read, stamped and pruned through
/// [`OutboxStore`], whose SQL is `kit::outbox`'s).
#[async_trait::async_trait]
pub trait Store: OutboxStore {
    /// (line_item_id, fingerprint) of every job stored for an order.
    async fn order_fingerprints(&self, order_number: &str) -> Result<Vec<(String, String)>, StoreError>;

    /// Stores the jobs of a new order in one transaction, PENDING and due now.
    /// Answers false, storing nothing, when a job of that order and line item
    /// exists (a concurrent acceptance won the race).
    /// [`StoreError::LearnerRetired`], storing nothing, when the jobs' learner was retired.
    async fn insert_order(&self, jobs: &[NewJob], now: DateTime<Utc>) -> Result<bool, StoreError>;

    /// One job.
    async fn get(&self, id: &str) -> Result<Option<FulfillmentJob>, StoreError>;

    /// An order's jobs in line order, from `from_position` on, at most `limit`.
    async fn list_order(
        &self,
        order_number: &str,
        from_position: i32,
        limit: i64,
    ) -> Result<Vec<FulfillmentJob>, StoreError>;

    /// Claims up to `max` jobs that are due (PENDING with `next_attempt_at` past)
    /// or whose lease ran out, counting an attempt on each and leasing each for `lease`.
    async fn claim(&self, max: usize, lease: Duration, now: DateTime<Utc>) -> Result<Vec<Claimed>, StoreError>;

    /// Records an attempt's outcome, if `lease` is still the job's current lease.
    /// An enrollment refunded while it ran goes on to REVOKING (with the
    /// `PurchaseRefunded` event) when it enrolled, to CANCELLED when it did not.
    async fn finish(&self, lease: &Lease, outcome: Outcome, now: DateTime<Utc>) -> Result<Finished, StoreError>;

    /// Records the refunds of some jobs in one transaction, all or none, each
    /// as [`refund_effect`](crate::domain::refund_effect) decides under the job's lock: SUCCEEDED jobs go to
    /// REVOKING (due now, attempts reset, `PurchaseRefunded` in the outbox),
    /// PENDING ones to CANCELLED, IN_PROGRESS ones keep the refund for the
    /// attempt's end. `traceparent` is the refunding call's.
    async fn refund(&self, refunds: &[RefundOf], traceparent: &str, now: DateTime<Utc>)
    -> Result<Refunded, StoreError>;

    /// Records a refund request of the LMS for the learner's newest SUCCEEDED
    /// job of the run ([`refund_request_target`](crate::domain::refund_request_target)), with `RefundRequested` in
    /// the outbox, in one transaction; a request recorded before is answered again.
    async fn request_refund(&self, asked: &NewRefundRequest, now: DateTime<Utc>)
    -> Result<RefundRequested, StoreError>;

    /// Re-drives a FAILED job to PENDING, or a REVOKE_FAILED one to REVOKING: due now, attempts reset;
    /// the transition records `requested_by` (who asked).
    async fn redrive(&self, id: &str, requested_by: Option<&str>, now: DateTime<Utc>) -> Result<Redriven, StoreError>;

    /// The jobs `filter` matches, the most recently changed first (update
    /// time, then id, descending), those after `after` only, at most `limit`;
    /// and how many match in all, read in the same snapshot.
    async fn list(&self, filter: &JobFilter, after: Option<&PageCursor>, limit: i64) -> Result<Found, StoreError>;

    /// Re-drives, as [`Store::redrive`] does, every FAILED or REVOKE_FAILED
    /// job `filter` matches (other states never match), in one transaction:
    /// all of them, or none when more than `max` match. A `dry_run` decides
    /// the same and changes nothing.
    async fn redrive_matching(
        &self,
        filter: &JobFilter,
        max: u32,
        requested_by: Option<&str>,
        dry_run: bool,
        now: DateTime<Utc>,
    ) -> Result<BulkRedriven, StoreError>;

    /// Applies retirements in one transaction: each learner's jobs get the
    /// placeholder username (in the spec, and in the last LMS error where it
    /// was echoed), so do their events still in the outbox, and the learner
    /// is remembered ([`Store::retired_username`]). Idempotent; answers how
    /// many jobs changed.
    async fn retire_learners(&self, retirements: &[Retirement], now: DateTime<Utc>) -> Result<u64, StoreError>;

    /// The placeholder of a retired learner, or None.
    async fn retired_username(&self, lms_user_id: LmsUserId) -> Result<Option<LmsUsername>, StoreError>;

    /// When the next job falls due: the earliest PENDING due time or lease expiry.
    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// A job's state changes, oldest first.
    async fn transitions(&self, id: &str) -> Result<Vec<Transition>, StoreError>;

    /// Counts for metrics, as of `now`.
    async fn stats(&self, now: DateTime<Utc>) -> Result<QueueStats, StoreError>;

    /// Notifies `wake` whenever another process stores work, until `shutdown`
    /// (Postgres: `LISTEN`). Returns at once where only this process writes (SQLite).
    async fn listen_for_work(&self, wake: Arc<Notify>, shutdown: CancellationToken) {
        let _ = (wake, shutdown);
    }
}

/// Unpublished outbox payloads rewritten for `retirements`: (seq, new payload).
fn scrubbed_outbox(rows: Vec<(i64, Vec<u8>)>, retirements: &[Retirement]) -> Vec<(i64, Vec<u8>)> {
    rows.into_iter()
        .filter_map(|(seq, payload)| {
            retirements
                .iter()
                .find_map(|r| crate::outbox::scrub(&payload, r.lms_user_id, &r.retired_username))
                .map(|scrubbed| (seq, scrubbed))
        })
        .collect()
}

/// A row of `refund_requests`.
#[derive(sqlx::FromRow)]
struct RefundRequestRow<T> {
    refund_request_id: String,
    fulfillment_id: String,
    reason: String,
    requested_at: T,
}

impl<T> RefundRequestRow<T> {
    fn into_request(self, time: impl Fn(T) -> DateTime<Utc>) -> Result<RefundRequest, StoreError> {
        Ok(RefundRequest {
            reason: RefundReason::parse(&self.reason).map_err(|e| StoreError::Corrupt {
                id: self.fulfillment_id.clone(),
                reason: format!("refund request reason {e}"),
            })?,
            id: self.refund_request_id,
            fulfillment_id: self.fulfillment_id,
            requested_at: time(self.requested_at),
        })
    }
}

/// A retired learner's placeholder as stored (`name`), checked.
fn retired_name(lms_user_id: LmsUserId, name: Option<String>) -> Result<Option<LmsUsername>, StoreError> {
    name.map(|name| {
        LmsUsername::parse(&name)
            .map_err(|e| StoreError::Corrupt { id: lms_user_id.to_string(), reason: format!("retired_username {e}") })
    })
    .transpose()
}

/// The store for the service's database.
pub fn for_database(db: &Database) -> Arc<dyn Store> {
    for_database_with_webhooks(db, crate::webhook::WebhookSources::default())
}

/// The store for the service's database, writing outcome webhook deliveries for these source systems' orders.
pub fn for_database_with_webhooks(db: &Database, webhooks: crate::webhook::WebhookSources) -> Arc<dyn Store> {
    match db {
        Database::Postgres(pool) => Arc::new(postgres::PostgresStore::new(pool.clone()).with_webhooks(webhooks)),
        Database::Sqlite(pool) => Arc::new(sqlite::SqliteStore::new(pool.clone()).with_webhooks(webhooks)),
    }
}

/// Rounds to the microsecond, what both backends keep, so a value read back equals the value written.
pub fn stored_time(time: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(time.timestamp_micros()).unwrap_or(time)
}

/// The columns every job query selects, in [`JobRow`]'s order.
macro_rules! job_columns {
    () => {
        "fulfillment_id, spec, state, attempts, next_attempt_at, last_error_kind, last_error_status, \
         last_error_message, entitlement_uuid, refund, traceparent, create_time, update_time"
    };
}
pub(crate) use job_columns;

/// A row of `fulfillments`, generic over how the backend stores times.
#[derive(sqlx::FromRow)]
struct JobRow<T> {
    fulfillment_id: String,
    spec: sqlx::types::Json<JobSpec>,
    state: String,
    attempts: i32,
    next_attempt_at: Option<T>,
    last_error_kind: Option<String>,
    last_error_status: Option<i32>,
    last_error_message: Option<String>,
    entitlement_uuid: Option<String>,
    refund: Option<sqlx::types::Json<Refund>>,
    traceparent: String,
    create_time: T,
    update_time: T,
}

impl<T> JobRow<T> {
    fn into_job(self, time: impl Fn(T) -> DateTime<Utc>) -> Result<FulfillmentJob, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt { id: self.fulfillment_id.clone(), reason };
        let state = JobState::parse(&self.state).ok_or_else(|| corrupt(format!("unknown state {:?}", self.state)))?;
        let last_error = match self.last_error_kind {
            None => None,
            Some(kind) => Some(JobError {
                kind: ErrorKind::parse(&kind).ok_or_else(|| corrupt(format!("unknown error kind {kind:?}")))?,
                lms_status: self.last_error_status.and_then(|s| u16::try_from(s).ok()),
                message: self.last_error_message.unwrap_or_default(),
            }),
        };
        Ok(FulfillmentJob {
            spec: self.spec.0,
            state,
            attempts: u32::try_from(self.attempts).unwrap_or_default(),
            last_error,
            next_attempt_at: self.next_attempt_at.map(&time),
            entitlement_uuid: self.entitlement_uuid,
            refund: self.refund.map(|refund| refund.0),
            traceparent: self.traceparent,
            created_at: time(self.create_time),
            updated_at: time(self.update_time),
            id: self.fulfillment_id,
        })
    }
}

/// A row of `fulfillment_transitions`.
#[derive(sqlx::FromRow)]
struct TransitionRow<T> {
    from_state: Option<String>,
    to_state: String,
    attempt: i32,
    lease_token: Option<String>,
    requested_by: Option<String>,
    at: T,
}

impl<T> TransitionRow<T> {
    fn into_transition(self, time: impl Fn(T) -> DateTime<Utc>) -> Option<Transition> {
        Some(Transition {
            from: match self.from_state {
                Some(s) => Some(JobState::parse(&s)?),
                None => None,
            },
            to: JobState::parse(&self.to_state)?,
            attempt: u32::try_from(self.attempt).ok()?,
            lease_token: self.lease_token,
            requested_by: self.requested_by,
            at: time(self.at),
        })
    }
}

/// How a backend spells the conditions of a [`JobFilter`]: the expressions
/// its indexes (migrations 0006-0009) are built on.
struct FilterSql {
    /// A condition always true, to start the WHERE clause with.
    always: &'static str,
    /// A job's course run key, in its spec.
    course_run_key: &'static str,
    /// A job's source system, in its spec.
    source_system: &'static str,
}

/// Pushes the WHERE clause of `filter` (and of the page after `after`) in
/// `sql`'s spelling, times bound as `time` stores them. A single state is an
/// equality, so its index range is read in order and a page stops at its limit.
fn push_filter<DB, T>(
    query: &mut QueryBuilder<DB>,
    sql: &FilterSql,
    filter: &JobFilter,
    after: Option<&PageCursor>,
    time: impl Fn(DateTime<Utc>) -> T,
) where
    DB: sqlx::Database,
    for<'t> &'static str: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> T: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    query.push(" WHERE ").push(sql.always);
    match filter.states.as_slice() {
        [] => {}
        [state] => {
            query.push(" AND state = ").push_bind(state.as_str());
        }
        states => {
            query.push(" AND state IN (");
            let mut listed = query.separated(", ");
            for state in states {
                listed.push_bind(state.as_str());
            }
            query.push(")");
        }
    }
    if let Some(key) = &filter.course_run_key {
        query.push(" AND ").push(sql.course_run_key).push(" = ").push_bind(key.as_str().to_owned());
    }
    if let Some(kind) = filter.error_kind {
        query.push(" AND last_error_kind = ").push_bind(kind.as_str());
    }
    if let Some(source) = &filter.source_system {
        query.push(" AND ").push(sql.source_system).push(" = ").push_bind(source.as_str().to_owned());
    }
    if let Some(after) = filter.updated.after() {
        query.push(" AND update_time >= ").push_bind(time(after));
    }
    if let Some(before) = filter.updated.before() {
        query.push(" AND update_time < ").push_bind(time(before));
    }
    if let Some(cursor) = after {
        query
            .push(" AND (update_time, fulfillment_id) < (")
            .push_bind(time(cursor.updated_at))
            .push(", ")
            .push_bind(cursor.id.clone())
            .push(")");
    }
}

/// Of a backend's two queries for a learner's jobs (by the spec's
/// `lms_user_id`, by its `lms_username`), the one `learner` names, with the
/// value to bind.
fn learner_query(learner: &LearnerKey, by_id: &'static str, by_username: &'static str) -> (&'static str, String) {
    match learner {
        LearnerKey::LmsUserId(id) => (by_id, id.to_string()),
        LearnerKey::Username(name) => (by_username, name.to_string()),
    }
}

fn micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

fn from_micros(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

fn duration_micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}
