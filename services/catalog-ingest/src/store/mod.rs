//! Where the catalog and the record of every ingestion are kept: the [`Store`]
//! trait and its backends, [`postgres::PostgresStore`] and
//! [`sqlite::SqliteStore`]. One contract suite (`tests/store_contract.rs`)
//! runs against both.
//!
//! An event is applied in one transaction, in dependency order: instructors,
//! course, course runs, seats. The ingestion record is written in that same
//! transaction, so a catalog change never exists without its record, and the
//! unique `(source, event_id)` makes a replay (even a concurrent one) change
//! nothing. Staleness and ownership are decided under the product's lock
//! (Postgres) or the single writer (SQLite) before anything is written.

pub mod postgres;
mod rows;
pub mod sqlite;

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use kit::db::Database;
use serde::{Deserialize, Serialize};

use crate::domain::{CanonicalEvent, Course, CourseRun, EventName, Instructor, ProductType};

/// How an ingestion ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IngestionState {
    /// Every step succeeded; the catalog reflects the event.
    Applied,
    /// A step failed; nothing was written.
    Failed,
    /// Older than what the catalog reflects: recorded, not applied.
    SkippedStale,
}

impl IngestionState {
    /// The stored name (as in the proto enum, without its prefix).
    pub fn as_str(self) -> &'static str {
        match self {
            IngestionState::Applied => "APPLIED",
            IngestionState::Failed => "FAILED",
            IngestionState::SkippedStale => "SKIPPED_STALE",
        }
    }

    /// The state a stored name stands for.
    pub fn parse(raw: &str) -> Option<Self> {
        [IngestionState::Applied, IngestionState::Failed, IngestionState::SkippedStale]
            .into_iter()
            .find(|s| s.as_str() == raw)
    }
}

/// The steps of an ingestion, in the order they run (the proto's `IngestStep` order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Step {
    /// The payload has what the source's transformer requires.
    Validate,
    /// The payload mapped to the canonical model.
    Transform,
    /// Instructors written.
    Instructors,
    /// The course (product) written.
    Course,
    /// Course runs written.
    CourseRuns,
    /// Seats and prices written.
    Seats,
    /// A call to the downstream discovery API, after commit.
    Discovery,
}

/// How a step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StepStatus {
    /// Done.
    Ok,
    /// Failed; see the field path and reason.
    Failed,
    /// Not run: an earlier step failed, the event was stale, or it has nothing for the step.
    Skipped,
}

/// The result of one step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResult {
    /// Which step.
    pub step: Step,
    /// How it ended.
    pub status: StepStatus,
    /// On failure, the field at fault, such as `course_runs[1].course_run_key`.
    pub field_path: String,
    /// Why it failed or was skipped.
    pub reason: String,
    /// For discovery calls, the call made.
    pub call: String,
}

impl StepResult {
    fn new(step: Step, status: StepStatus, field_path: &str, reason: impl Into<String>) -> Self {
        Self { step, status, field_path: field_path.to_string(), reason: reason.into(), call: String::new() }
    }
}

/// An event to record, as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewIngestion {
    /// The id to give the record.
    pub id: String,
    /// The sending line of business.
    pub source: String,
    /// The source's id for the event.
    pub event_id: String,
    /// What happened.
    pub event_name: EventName,
    /// When it happened at the source.
    pub occurred_at: DateTime<Utc>,
    /// Identifies the payload, so a replay with another payload can be told apart.
    pub payload_hash: String,
}

/// The record of one ingested event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ingestion {
    /// Its id.
    pub id: String,
    /// The sending line of business.
    pub source: String,
    /// The source's id for the event.
    pub event_id: String,
    /// What happened.
    pub event_name: EventName,
    /// When it happened at the source.
    pub occurred_at: DateTime<Utc>,
    /// Identifies the payload.
    pub payload_hash: String,
    /// The product the event is about, once known (None for an instructor or before transform).
    pub product_key: Option<String>,
    /// The outcome.
    pub state: IngestionState,
    /// Every step's result, in the order they ran.
    pub steps: Vec<StepResult>,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
}

/// A product as the catalog holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Product {
    /// The line of business that owns it.
    pub source: String,
    /// The course fields, with the key and type.
    pub course: Course,
    /// Its instructors, in display order.
    pub instructors: Vec<Instructor>,
    /// Its runs by start time, each with its seats in the order last sent.
    pub runs: Vec<CourseRun>,
    /// True once a `product.retired` event was applied.
    pub retired: bool,
    /// The `occurred_at` of the newest event applied to it.
    pub source_update_time: DateTime<Utc>,
    /// When the catalog first stored it.
    pub created_at: DateTime<Utc>,
    /// When an applied event last changed it.
    pub updated_at: DateTime<Utc>,
}

/// What recording an ingestion did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded now (and, for an applied event, written to the catalog).
    New(Ingestion),
    /// `(source, event_id)` was already recorded: nothing written; the first record.
    /// The caller compares `payload_hash` to tell a replay from a reused id.
    Existing(Ingestion),
}

/// Why a store operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored row could not be read back, or the store found itself in a state it rules out.
    #[error("corrupt catalog record {key}: {reason}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// What was wrong.
        reason: String,
    },
}

/// The catalog and the ingestion records.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The record of `(source, event_id)`, if any.
    async fn find_ingestion(&self, source: &str, event_id: &str) -> Result<Option<Ingestion>, StoreError>;

    /// One ingestion record by id.
    async fn get_ingestion(&self, id: &str) -> Result<Option<Ingestion>, StoreError>;

    /// Records `ingestion` and, unless stale, applies `event` step by step
    /// (instructors → course → course runs → seats), all in one transaction.
    ///
    /// Steps: VALIDATE and TRANSFORM OK (the caller did them); each write step
    /// OK, or SKIPPED when the event has nothing for it; DISCOVERY not included.
    /// What each event writes:
    /// - `product.upserted`: its instructors (per source), the course fields,
    ///   the product's instructor list (replaced), its runs and, for each run in
    ///   the event, its seats (replaced). Runs the event does not name are kept.
    /// - `course.upserted`: the course fields only (creating the product if new).
    /// - `course_run.upserted`: one run of an existing product, its seats replaced.
    /// - `instructor.upserted`: one instructor of the source.
    /// - `product.retired`: the product is retired (it stays retired).
    ///
    /// Every applied product event sets the product's `source_update_time` to
    /// `occurred_at`. An event strictly older than the product's (or, for
    /// `instructor.upserted`, the instructor's) `source_update_time` is stale:
    /// nothing written, state SKIPPED_STALE, write steps SKIPPED with reason
    /// `stale: the product reflects <time>`. Equal times are applied again.
    /// Within `product.upserted`, an instructor changed by a newer
    /// `instructor.upserted` keeps its newer fields.
    ///
    /// A step that cannot be done fails: `course_run.upserted` or
    /// `product.retired` for an unknown product (COURSE_RUNS / COURSE,
    /// `product_key`, `no product <key>`); a product of another source (the
    /// event's first product step, `product_key`, `belongs to source <x>`); a run
    /// key that belongs to another product. The catalog writes are rolled back
    /// and the ingestion is recorded FAILED with the step results (earlier steps
    /// OK, the failed one FAILED, later ones SKIPPED), in a new transaction.
    ///
    /// If `(source, event_id)` is already recorded, nothing is written and the
    /// answer is [`Recorded::Existing`] — also when a concurrent call won the race.
    async fn apply(
        &self,
        ingestion: &NewIngestion,
        event: &CanonicalEvent,
        now: DateTime<Utc>,
    ) -> Result<Recorded, StoreError>;

    /// Records an ingestion that failed before any write (VALIDATE or
    /// TRANSFORM) with its step results; [`Recorded::Existing`] as for [`Store::apply`].
    async fn record_failure(
        &self,
        ingestion: &NewIngestion,
        steps: &[StepResult],
        now: DateTime<Utc>,
    ) -> Result<Recorded, StoreError>;

    /// Appends step results (the discovery calls, made after commit) to a
    /// recorded ingestion. An unknown id changes nothing.
    async fn append_steps(&self, id: &str, steps: &[StepResult]) -> Result<(), StoreError>;

    /// A product with its instructors, runs and seats.
    async fn get_product(&self, key: &str) -> Result<Option<Product>, StoreError>;

    /// Products by key after `after_key`, only of `source` and of `product_type` when given, at most `limit`.
    async fn list_products(
        &self,
        source: Option<&str>,
        product_type: Option<ProductType>,
        after_key: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Product>, StoreError>;

    /// A run with its seats, its product's key, and whether that product is retired.
    async fn get_course_run(&self, key: &str) -> Result<Option<(CourseRun, String, bool)>, StoreError>;

    /// An instructor of a source, as last applied.
    async fn get_instructor(&self, source: &str, key: &str) -> Result<Option<Instructor>, StoreError>;
}

/// The store for the service's database.
pub fn for_database(db: &Database) -> Arc<dyn Store> {
    match db {
        Database::Postgres(pool) => Arc::new(postgres::PostgresStore::new(pool.clone())),
        Database::Sqlite(pool) => Arc::new(sqlite::SqliteStore::new(pool.clone())),
    }
}

/// Rounds to the microsecond, what both backends keep, so a value read back equals the value written.
pub fn stored_time(time: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(time.timestamp_micros()).unwrap_or(time)
}

// ---- What an event does, decided the same way by both backends ----

/// The write steps, in the order they run.
const WRITE_STEPS: [Step; 4] = [Step::Instructors, Step::Course, Step::CourseRuns, Step::Seats];

/// Whether `event` has anything for `step` to write.
fn has_work(event: &CanonicalEvent, step: Step) -> bool {
    match (event, step) {
        // The instructor list is replaced even when empty: an empty list clears it.
        (CanonicalEvent::ProductUpserted { .. }, Step::Instructors | Step::Course) => true,
        (CanonicalEvent::ProductUpserted { runs, .. }, Step::CourseRuns | Step::Seats) => !runs.is_empty(),
        (CanonicalEvent::CourseUpserted { .. } | CanonicalEvent::ProductRetired { .. }, Step::Course) => true,
        (CanonicalEvent::CourseRunUpserted { .. }, Step::CourseRuns | Step::Seats) => true,
        (CanonicalEvent::InstructorUpserted { .. }, Step::Instructors) => true,
        _ => false,
    }
}

/// A write step that cannot be done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StepFailure {
    step: Step,
    field_path: String,
    reason: String,
}

impl StepFailure {
    fn new(step: Step, field_path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { step, field_path: field_path.into(), reason: reason.into() }
    }
}

/// How an attempt to apply an event ended.
pub(crate) enum Ending {
    /// Written.
    Applied,
    /// Not written: older than what the catalog reflects (the reason says what).
    Stale(String),
    /// Not written: a step failed.
    Failed(StepFailure),
}

impl Ending {
    fn state(&self) -> IngestionState {
        match self {
            Ending::Applied => IngestionState::Applied,
            Ending::Stale(_) => IngestionState::SkippedStale,
            Ending::Failed(_) => IngestionState::Failed,
        }
    }
}

/// The step results of an event that ended as `ending`.
pub(crate) fn step_results(event: &CanonicalEvent, ending: &Ending) -> Vec<StepResult> {
    let mut results = vec![
        StepResult::new(Step::Validate, StepStatus::Ok, "", ""),
        StepResult::new(Step::Transform, StepStatus::Ok, "", ""),
    ];
    let mut failed = false;
    for step in WRITE_STEPS {
        results.push(match ending {
            Ending::Stale(reason) => StepResult::new(step, StepStatus::Skipped, "", reason.as_str()),
            Ending::Failed(_) if failed => StepResult::new(step, StepStatus::Skipped, "", "an earlier step failed"),
            Ending::Failed(failure) if failure.step == step => {
                failed = true;
                StepResult::new(step, StepStatus::Failed, &failure.field_path, failure.reason.as_str())
            }
            _ if has_work(event, step) => StepResult::new(step, StepStatus::Ok, "", ""),
            _ => StepResult::new(step, StepStatus::Skipped, "", "the event has nothing for this step"),
        });
    }
    results
}

/// What the catalog holds of a product, for the decisions made before writing.
pub(crate) struct Current {
    source: String,
    source_update_time: DateTime<Utc>,
}

/// The reason given for a stale event.
fn stale_reason(what: &str, reflects: DateTime<Utc>) -> String {
    format!("stale: the {what} reflects {}", reflects.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// Whether a product event may be written over `current` (None: no such
/// product), before anything is written. Instructor events are decided by
/// their own upsert.
pub(crate) fn decide(
    source: &str,
    event: &CanonicalEvent,
    occurred_at: DateTime<Utc>,
    current: Option<&Current>,
) -> Option<Ending> {
    let (key, first_step, must_exist) = match event {
        CanonicalEvent::ProductUpserted { course, .. } | CanonicalEvent::CourseUpserted { course } => {
            (&course.product_key, Step::Course, false)
        }
        CanonicalEvent::CourseRunUpserted { product_key, .. } => (product_key, Step::CourseRuns, true),
        CanonicalEvent::ProductRetired { product_key } => (product_key, Step::Course, true),
        CanonicalEvent::InstructorUpserted { .. } => return None,
    };
    match current {
        None if must_exist => {
            Some(Ending::Failed(StepFailure::new(first_step, "product_key", format!("no product {key}"))))
        }
        Some(c) if c.source != source => {
            Some(Ending::Failed(StepFailure::new(first_step, "product_key", format!("belongs to source {}", c.source))))
        }
        Some(c) if occurred_at < c.source_update_time => {
            Some(Ending::Stale(stale_reason("product", c.source_update_time)))
        }
        _ => repeated(event).map(Ending::Failed),
    }
}

/// A run key or seat mode the event names twice: the set-based writes would
/// touch one row twice, so it fails its step instead. (The domain's validation
/// already refuses repeated modes; repeated run keys reach the store.)
fn repeated(event: &CanonicalEvent) -> Option<StepFailure> {
    let (runs, prefix): (&[CourseRun], Option<&str>) = match event {
        CanonicalEvent::ProductUpserted { runs, .. } => (runs, None),
        CanonicalEvent::CourseRunUpserted { run, .. } => (std::slice::from_ref(run), Some("course_run")),
        _ => return None,
    };
    for (i, run) in runs.iter().enumerate() {
        if runs[..i].iter().any(|earlier| earlier.course_run_key == run.course_run_key) {
            return Some(StepFailure::new(
                Step::CourseRuns,
                format!("{}.course_run_key", run_path(prefix, i)),
                format!("{:?} appears twice", run.course_run_key),
            ));
        }
    }
    for (i, run) in runs.iter().enumerate() {
        for (j, seat) in run.seats.iter().enumerate() {
            if run.seats[..j].iter().any(|earlier| earlier.mode == seat.mode) {
                return Some(StepFailure::new(
                    Step::Seats,
                    format!("{}.seats[{j}].mode", run_path(prefix, i)),
                    format!("{:?} appears twice", seat.mode),
                ));
            }
        }
    }
    None
}

/// The canonical path of run `i`: `course_runs[i]` in a product, `course_run` alone.
fn run_path(single: Option<&str>, i: usize) -> String {
    single.map_or_else(|| format!("course_runs[{i}]"), str::to_string)
}

/// The failure of a run write the database refused because the key belongs to `owner`.
pub(crate) fn run_owned_elsewhere(event: &CanonicalEvent, run_key: &str, owner: &str) -> StepFailure {
    let (path, i) = match event {
        CanonicalEvent::ProductUpserted { runs, .. } => {
            (None, runs.iter().position(|r| r.course_run_key == run_key).unwrap_or_default())
        }
        _ => (Some("course_run"), 0),
    };
    StepFailure::new(
        Step::CourseRuns,
        format!("{}.course_run_key", run_path(path, i)),
        format!("belongs to product {owner}"),
    )
}

/// The instructors to upsert: each key once (its first occurrence), in key
/// order so concurrent writers lock rows in the same order and never deadlock.
pub(crate) fn distinct_instructors(instructors: &[Instructor]) -> Vec<&Instructor> {
    let mut distinct: Vec<&Instructor> = Vec::with_capacity(instructors.len());
    for instructor in instructors {
        if !distinct.iter().any(|d| d.instructor_key == instructor.instructor_key) {
            distinct.push(instructor);
        }
    }
    distinct.sort_by(|a, b| a.instructor_key.cmp(&b.instructor_key));
    distinct
}

/// The record of `new` as written.
pub(crate) fn record(new: &NewIngestion, event: &CanonicalEvent, ending: &Ending, now: DateTime<Utc>) -> Ingestion {
    let product_key = event.product_key().map(str::to_string);
    recorded(new, product_key, ending.state(), step_results(event, ending), now)
}

/// The record of an ingestion that failed before any write.
pub(crate) fn failure_record(new: &NewIngestion, steps: &[StepResult], now: DateTime<Utc>) -> Ingestion {
    recorded(new, None, IngestionState::Failed, steps.to_vec(), now)
}

/// The record of `new` with its outcome, its times as stored.
fn recorded(
    new: &NewIngestion,
    product_key: Option<String>,
    state: IngestionState,
    steps: Vec<StepResult>,
    now: DateTime<Utc>,
) -> Ingestion {
    Ingestion {
        id: new.id.clone(),
        source: new.source.clone(),
        event_id: new.event_id.clone(),
        event_name: new.event_name,
        occurred_at: stored_time(new.occurred_at),
        payload_hash: new.payload_hash.clone(),
        product_key,
        state,
        steps,
        created_at: stored_time(now),
    }
}

// ---- The write flow, the same on both backends; they supply the SQL ----

/// What one attempt at applying an event came to.
pub(crate) enum Attempt {
    /// Decided: written (still to commit), stale, or failed (to roll back).
    Ended(Ending),
    /// The product changed between the look and the write: start over. Ruled
    /// out by the locks each backend takes; handled all the same.
    Raced,
}

/// What a backend supplies to [`apply`]: its transactions and its statements.
#[async_trait::async_trait]
pub(crate) trait Backend: Store {
    /// The backend's database.
    type Db: sqlx::Database;

    /// A transaction that will write.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Self::Db>, StoreError>;

    /// Records an ingestion unless `(source, event_id)` already is: false then.
    async fn insert_ingestion(conn: &mut Connection<Self>, ingestion: &Ingestion) -> Result<bool, StoreError>;

    /// What the catalog holds of product `key`, read so that it cannot change
    /// before the transaction ends.
    async fn current(conn: &mut Connection<Self>, key: &str) -> Result<Option<Current>, StoreError>;

    /// `instructor.upserted`: applied, or stale when the stored instructor is newer.
    async fn upsert_instructor(
        conn: &mut Connection<Self>,
        source: &str,
        instructor: &Instructor,
        occurred_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Ending, StoreError>;

    /// Writes the steps of product event `event` (product `key`), decided to apply.
    async fn write(
        conn: &mut Connection<Self>,
        source: &str,
        key: &str,
        event: &CanonicalEvent,
        occurred_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Attempt, StoreError>;
}

/// A backend's connection.
pub(crate) type Connection<B> = <<B as Backend>::Db as sqlx::Database>::Connection;

/// How many times an apply starts over when the product changed between its
/// look and its write (ruled out by the locks taken; a guard, not a path).
const MAX_ATTEMPTS: usize = 3;

/// [`Store::apply`] on `backend`: decide and write in one transaction with
/// the record; a failure is recorded on its own, a replay changes nothing.
pub(crate) async fn apply<B: Backend>(
    backend: &B,
    ingestion: &NewIngestion,
    event: &CanonicalEvent,
    now: DateTime<Utc>,
) -> Result<Recorded, StoreError> {
    let occurred_at = stored_time(ingestion.occurred_at);
    for _ in 0..MAX_ATTEMPTS {
        let mut tx = backend.begin_write().await?;
        let ending = match attempt::<B>(&mut tx, &ingestion.source, event, occurred_at, now).await? {
            Attempt::Raced => {
                tx.rollback().await?;
                continue;
            }
            Attempt::Ended(ending) => ending,
        };
        let recorded = record(ingestion, event, &ending, now);
        if let Ending::Failed(_) = ending {
            // Whatever the earlier steps wrote goes; the failure is recorded on its own.
            tx.rollback().await?;
            return record_alone(backend, recorded).await;
        }
        if B::insert_ingestion(&mut tx, &recorded).await? {
            tx.commit().await?;
            return Ok(Recorded::New(recorded));
        }
        // A replay, or a concurrent call with the same event id that committed first.
        tx.rollback().await?;
        return existing(backend, &ingestion.source, &ingestion.event_id).await;
    }
    Err(StoreError::Corrupt {
        key: event.product_key().unwrap_or_default().to_string(),
        reason: format!("the product changed under {MAX_ATTEMPTS} attempts in a row"),
    })
}

/// Decides and, unless stale or failed, writes the event's steps inside `conn`'s transaction.
async fn attempt<B: Backend>(
    conn: &mut Connection<B>,
    source: &str,
    event: &CanonicalEvent,
    occurred_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Attempt, StoreError> {
    let key = match event {
        CanonicalEvent::InstructorUpserted { instructor } => {
            return B::upsert_instructor(conn, source, instructor, occurred_at, now).await.map(Attempt::Ended);
        }
        CanonicalEvent::ProductUpserted { course, .. } | CanonicalEvent::CourseUpserted { course } => {
            &course.product_key
        }
        CanonicalEvent::CourseRunUpserted { product_key, .. } | CanonicalEvent::ProductRetired { product_key } => {
            product_key
        }
    };
    let current = B::current(conn, key).await?;
    if let Some(ending) = decide(source, event, occurred_at, current.as_ref()) {
        return Ok(Attempt::Ended(ending));
    }
    B::write(conn, source, key, event, occurred_at, now).await
}

/// Stores `ingestion` in a transaction of its own ([`Store::record_failure`],
/// and a failed [`apply`]).
pub(crate) async fn record_alone<B: Backend>(backend: &B, ingestion: Ingestion) -> Result<Recorded, StoreError> {
    let mut tx = backend.begin_write().await?;
    if B::insert_ingestion(&mut tx, &ingestion).await? {
        tx.commit().await?;
        return Ok(Recorded::New(ingestion));
    }
    tx.rollback().await?;
    existing(backend, &ingestion.source, &ingestion.event_id).await
}

/// The record that took `(source, event_id)` first.
async fn existing<S: Store>(store: &S, source: &str, event_id: &str) -> Result<Recorded, StoreError> {
    match store.find_ingestion(source, event_id).await? {
        Some(first) => Ok(Recorded::Existing(first)),
        // Records are never deleted: a conflict names one that stays.
        None => Err(StoreError::Corrupt {
            key: format!("{source}/{event_id}"),
            reason: "already recorded, yet the record cannot be read".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).unwrap_or_default()
    }

    fn retired(key: &str) -> CanonicalEvent {
        CanonicalEvent::ProductRetired { product_key: key.into() }
    }

    #[test]
    fn steps_after_a_failure_are_skipped_and_before_it_as_planned() {
        let failure = StepFailure::new(Step::Course, "product_key", "no product X");
        let steps = step_results(&retired("X"), &Ending::Failed(failure));
        let statuses: Vec<(Step, StepStatus)> = steps.iter().map(|s| (s.step, s.status)).collect();
        assert_eq!(
            statuses,
            [
                (Step::Validate, StepStatus::Ok),
                (Step::Transform, StepStatus::Ok),
                (Step::Instructors, StepStatus::Skipped),
                (Step::Course, StepStatus::Failed),
                (Step::CourseRuns, StepStatus::Skipped),
                (Step::Seats, StepStatus::Skipped),
            ]
        );
        assert_eq!((steps[3].field_path.as_str(), steps[3].reason.as_str()), ("product_key", "no product X"));
        assert_eq!(steps[4].reason, "an earlier step failed");
    }

    #[test]
    fn ownership_comes_before_staleness_and_equal_times_apply() {
        let theirs = Current { source: "other".into(), source_update_time: at(10) };
        assert!(matches!(
            decide("mine", &retired("X"), at(5), Some(&theirs)),
            Some(Ending::Failed(StepFailure { step: Step::Course, .. }))
        ));
        let mine = Current { source: "mine".into(), source_update_time: at(10) };
        assert!(matches!(decide("mine", &retired("X"), at(9), Some(&mine)), Some(Ending::Stale(_))));
        assert!(decide("mine", &retired("X"), at(10), Some(&mine)).is_none());
        assert!(matches!(decide("mine", &retired("X"), at(10), None), Some(Ending::Failed(_))));
    }

    #[test]
    fn states_and_steps_round_trip() {
        for state in [IngestionState::Applied, IngestionState::Failed, IngestionState::SkippedStale] {
            assert_eq!(IngestionState::parse(state.as_str()), Some(state));
        }
        let json =
            serde_json::to_string(&StepResult::new(Step::CourseRuns, StepStatus::Ok, "", "")).unwrap_or_default();
        assert!(json.contains("\"COURSE_RUNS\""), "{json}");
    }
}
