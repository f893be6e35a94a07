//! The Postgres store. An event takes its product's row lock (`FOR UPDATE`)
//! before deciding anything, so events for one product apply one at a time;
//! events for different products run side by side. Each step is one set-based
//! statement (`unnest` arrays, `INSERT ... ON CONFLICT DO UPDATE`): a
//! `product.upserted` of a known product costs six round trips whatever its
//! size — begin, lock, instructors + course, runs + seats, the record, commit;
//! creating a product adds two (an advisory lock, and the look again).

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Postgres};

use super::rows::{
    IngestionRow, InstructorRow, PlainInstructorRow, ProductRow, RunRow, SeatRow, assemble, assemble_run,
    ingestion_columns, instructor_columns, product_columns, run_columns, seat_columns,
};
use super::{
    Attempt, Backend, Current, Ending, Ingestion, NewIngestion, Product, Recorded, StepResult, Store, StoreError,
    distinct_instructors, failure_record, record_alone, run_owned_elsewhere, stale_reason,
};
use crate::domain::{CanonicalEvent, Course, CourseRun, Instructor, ProductType};

/// The catalog in Postgres.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// A store over `pool` (whose search_path is the service's schema).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Products with their children, read from one snapshot.
    async fn load(&self, rows: Vec<PgProductRow>, tx: &mut PgConnection) -> Result<Vec<Product>, StoreError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<&str> = rows.iter().map(|r| r.product_key.as_str()).collect();
        let instructors: Vec<InstructorRow> = sqlx::query_as(concat!(
            "SELECT ",
            instructor_columns!(),
            " FROM product_instructors pi
              JOIN instructors i ON i.source = pi.instructor_source AND i.instructor_key = pi.instructor_key
              WHERE pi.product_key = ANY($1) ORDER BY pi.product_key, pi.position"
        ))
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await?;
        let runs: Vec<PgRunRow> = sqlx::query_as(concat!(
            "SELECT ",
            run_columns!(),
            " FROM course_runs r WHERE r.product_key = ANY($1) ORDER BY r.product_key, r.start_time, r.course_run_key"
        ))
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await?;
        let seats: Vec<PgSeatRow> = sqlx::query_as(concat!(
            "SELECT ",
            seat_columns!(),
            " FROM seats s JOIN course_runs r ON r.course_run_key = s.course_run_key
              WHERE r.product_key = ANY($1) ORDER BY s.course_run_key, s.position"
        ))
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await?;
        assemble(rows, instructors, runs, seats, |t| t)
    }
}

type PgProductRow = ProductRow<DateTime<Utc>>;
type PgRunRow = RunRow<DateTime<Utc>>;
type PgSeatRow = SeatRow<DateTime<Utc>>;
type PgIngestionRow = IngestionRow<DateTime<Utc>>;

/// A snapshot for reads that span several statements, so a product's runs and
/// seats come from the same moment.
const READ_SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn find_ingestion(&self, source: &str, event_id: &str) -> Result<Option<Ingestion>, StoreError> {
        sqlx::query_as::<_, PgIngestionRow>(concat!(
            "SELECT ",
            ingestion_columns!(),
            " FROM ingestions WHERE source = $1 AND event_id = $2"
        ))
        .bind(source)
        .bind(event_id)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| row.into_ingestion(|t| t))
        .transpose()
    }

    async fn get_ingestion(&self, id: &str) -> Result<Option<Ingestion>, StoreError> {
        sqlx::query_as::<_, PgIngestionRow>(concat!(
            "SELECT ",
            ingestion_columns!(),
            " FROM ingestions WHERE ingestion_id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| row.into_ingestion(|t| t))
        .transpose()
    }

    async fn apply(
        &self,
        ingestion: &NewIngestion,
        event: &CanonicalEvent,
        now: DateTime<Utc>,
    ) -> Result<Recorded, StoreError> {
        super::apply(self, ingestion, event, now).await
    }

    async fn record_failure(
        &self,
        ingestion: &NewIngestion,
        steps: &[StepResult],
        now: DateTime<Utc>,
    ) -> Result<Recorded, StoreError> {
        record_alone(self, failure_record(ingestion, steps, now)).await
    }

    async fn append_steps(&self, id: &str, steps: &[StepResult]) -> Result<(), StoreError> {
        // jsonb array concatenation: appended in place, no read-modify-write race.
        sqlx::query("UPDATE ingestions SET steps = steps || $2 WHERE ingestion_id = $1")
            .bind(id)
            .bind(Json(steps))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn get_product(&self, key: &str) -> Result<Option<Product>, StoreError> {
        let mut tx = self.pool.begin_with(READ_SNAPSHOT).await?;
        let rows: Vec<PgProductRow> =
            sqlx::query_as(concat!("SELECT ", product_columns!(), " FROM products WHERE product_key = $1"))
                .bind(key)
                .fetch_all(&mut *tx)
                .await?;
        let products = self.load(rows, &mut tx).await?;
        tx.commit().await?;
        Ok(products.into_iter().next())
    }

    async fn list_products(
        &self,
        source: Option<&str>,
        product_type: Option<ProductType>,
        after_key: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Product>, StoreError> {
        let mut tx = self.pool.begin_with(READ_SNAPSHOT).await?;
        let rows: Vec<PgProductRow> = sqlx::query_as(concat!(
            "SELECT ",
            product_columns!(),
            " FROM products
              WHERE ($1::text IS NULL OR source = $1) AND ($2::text IS NULL OR product_type = $2)
                AND ($3::text IS NULL OR product_key > $3)
              ORDER BY product_key LIMIT $4"
        ))
        .bind(source)
        .bind(product_type.map(ProductType::as_str))
        .bind(after_key)
        .bind(limit.max(0))
        .fetch_all(&mut *tx)
        .await?;
        let products = self.load(rows, &mut tx).await?;
        tx.commit().await?;
        Ok(products)
    }

    async fn get_course_run(&self, key: &str) -> Result<Option<(CourseRun, String, bool)>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct Row {
            #[sqlx(flatten)]
            run: PgRunRow,
            retired: bool,
        }
        let mut tx = self.pool.begin_with(READ_SNAPSHOT).await?;
        let row: Option<Row> = sqlx::query_as(concat!(
            "SELECT ",
            run_columns!(),
            ", p.retired FROM course_runs r JOIN products p ON p.product_key = r.product_key
               WHERE r.course_run_key = $1"
        ))
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let seats: Vec<PgSeatRow> = sqlx::query_as(concat!(
            "SELECT ",
            seat_columns!(),
            " FROM seats s WHERE s.course_run_key = $1 ORDER BY s.position"
        ))
        .bind(key)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let product_key = row.run.product_key.clone();
        Ok(Some((assemble_run(row.run, seats, |t| t)?, product_key, row.retired)))
    }

    async fn get_instructor(&self, source: &str, key: &str) -> Result<Option<Instructor>, StoreError> {
        let row: Option<PlainInstructorRow> = sqlx::query_as(
            "SELECT instructor_key, given_name, family_name, title, organization, bio, image_url
             FROM instructors WHERE source = $1 AND instructor_key = $2",
        )
        .bind(source)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(PlainInstructorRow::into_instructor))
    }
}

/// `ON CONFLICT` for an instructor row: a newer row (from a later
/// `instructor.upserted`) keeps its fields.
macro_rules! instructor_conflict {
    () => {
        " ON CONFLICT (source, instructor_key) DO UPDATE SET
              given_name = EXCLUDED.given_name, family_name = EXCLUDED.family_name, title = EXCLUDED.title,
              organization = EXCLUDED.organization, bio = EXCLUDED.bio, image_url = EXCLUDED.image_url,
              source_update_time = EXCLUDED.source_update_time, update_time = EXCLUDED.update_time
          WHERE instructors.source_update_time <= EXCLUDED.source_update_time"
    };
}

#[async_trait::async_trait]
impl Backend for PostgresStore {
    type Db = Postgres;

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }

    /// A concurrent insert of the same pair waits here until that one commits.
    async fn insert_ingestion(conn: &mut PgConnection, ingestion: &Ingestion) -> Result<bool, StoreError> {
        let inserted: Option<String> = sqlx::query_scalar(
            "INSERT INTO ingestions (ingestion_id, source, event_id, event_name, occurred_at, payload_hash, product_key,
                                     state, steps, create_time)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (source, event_id) DO NOTHING
             RETURNING ingestion_id",
        )
        .bind(&ingestion.id)
        .bind(&ingestion.source)
        .bind(&ingestion.event_id)
        .bind(ingestion.event_name.as_str())
        .bind(ingestion.occurred_at)
        .bind(&ingestion.payload_hash)
        .bind(ingestion.product_key.as_deref())
        .bind(ingestion.state.as_str())
        .bind(Json(&ingestion.steps))
        .bind(ingestion.created_at)
        .fetch_optional(&mut *conn)
        .await?;
        Ok(inserted.is_some())
    }

    /// Held to commit: no other event for this product decides or writes meanwhile.
    async fn current(tx: &mut PgConnection, key: &str) -> Result<Option<Current>, StoreError> {
        let current = lock_product(tx, key).await?;
        if current.is_some() {
            return Ok(current);
        }
        // No row to lock yet: writers that would create the product take turns
        // on an advisory lock instead, then look again. Without it, two creators
        // could each hold what the other waits for (one the instructors it
        // already upserted, the other the product row it found once the first
        // committed), or write in the wrong order.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('catalog_ingest.products:' || $1, 0))")
            .bind(key)
            .execute(&mut *tx)
            .await?;
        lock_product(tx, key).await
    }

    async fn upsert_instructor(
        tx: &mut PgConnection,
        source: &str,
        instructor: &Instructor,
        occurred_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Ending, StoreError> {
        let written: Option<String> = sqlx::query_scalar(concat!(
            "INSERT INTO instructors (source, instructor_key, given_name, family_name, title, organization, bio,
                                      image_url, source_update_time, create_time, update_time)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)",
            instructor_conflict!(),
            " RETURNING instructor_key"
        ))
        .bind(source)
        .bind(&instructor.instructor_key)
        .bind(&instructor.given_name)
        .bind(&instructor.family_name)
        .bind(&instructor.title)
        .bind(&instructor.organization)
        .bind(&instructor.bio)
        .bind(&instructor.image_url)
        .bind(occurred_at)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        if written.is_some() {
            return Ok(Ending::Applied);
        }
        // The conflicting row is locked by the upsert above: its time holds until commit.
        let reflects: DateTime<Utc> =
            sqlx::query_scalar("SELECT source_update_time FROM instructors WHERE source = $1 AND instructor_key = $2")
                .bind(source)
                .bind(&instructor.instructor_key)
                .fetch_one(&mut *tx)
                .await?;
        Ok(Ending::Stale(stale_reason("instructor", reflects)))
    }

    async fn write(
        tx: &mut PgConnection,
        source: &str,
        key: &str,
        event: &CanonicalEvent,
        occurred_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Attempt, StoreError> {
        match event {
            CanonicalEvent::ProductUpserted { course, instructors, runs } => {
                if !upsert_product(tx, source, course, Some(instructors), occurred_at, now).await? {
                    return Ok(Attempt::Raced);
                }
                if let Some(owner) = upsert_runs(tx, key, runs, None, now).await? {
                    return Ok(Attempt::Ended(Ending::Failed(run_owned_elsewhere(event, &owner.0, &owner.1))));
                }
            }
            CanonicalEvent::CourseUpserted { course } => {
                if !upsert_product(tx, source, course, None, occurred_at, now).await? {
                    return Ok(Attempt::Raced);
                }
            }
            CanonicalEvent::CourseRunUpserted { run, .. } => {
                if let Some(owner) = upsert_runs(tx, key, std::slice::from_ref(run), Some(occurred_at), now).await? {
                    return Ok(Attempt::Ended(Ending::Failed(run_owned_elsewhere(event, &owner.0, &owner.1))));
                }
            }
            CanonicalEvent::ProductRetired { .. } => {
                sqlx::query(
                    "UPDATE products SET retired = TRUE, source_update_time = $2, update_time = $3 WHERE product_key = $1",
                )
                .bind(key)
                .bind(occurred_at)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            CanonicalEvent::InstructorUpserted { .. } => {}
        }
        Ok(Attempt::Ended(Ending::Applied))
    }
}

/// Reads and locks the product's row, if there is one.
async fn lock_product(tx: &mut PgConnection, key: &str) -> Result<Option<Current>, StoreError> {
    let row: Option<(String, DateTime<Utc>)> =
        sqlx::query_as("SELECT source, source_update_time FROM products WHERE product_key = $1 FOR UPDATE")
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
    Ok(row.map(|(source, source_update_time)| Current { source, source_update_time }))
}

/// Upserts the product's course fields ($1–$17); answers its key. No row: the
/// key belongs to another source or is newer — only possible when a concurrent
/// transaction created the product after this one found none.
macro_rules! product_upsert {
    () => {
        "INSERT INTO products (product_key, source, product_type, title, org, number, short_description,
                               long_description, level, subjects, languages, effort_min_hours, effort_max_hours,
                               length_weeks, image_url, retired, source_update_time, create_time, update_time)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, FALSE, $16, $17, $17)
         ON CONFLICT (product_key) DO UPDATE SET
             product_type = EXCLUDED.product_type, title = EXCLUDED.title, org = EXCLUDED.org,
             number = EXCLUDED.number, short_description = EXCLUDED.short_description,
             long_description = EXCLUDED.long_description, level = EXCLUDED.level, subjects = EXCLUDED.subjects,
             languages = EXCLUDED.languages, effort_min_hours = EXCLUDED.effort_min_hours,
             effort_max_hours = EXCLUDED.effort_max_hours, length_weeks = EXCLUDED.length_weeks,
             image_url = EXCLUDED.image_url, source_update_time = EXCLUDED.source_update_time,
             update_time = EXCLUDED.update_time
         WHERE products.source = EXCLUDED.source AND products.source_update_time <= EXCLUDED.source_update_time
         RETURNING product_key"
    };
}

/// The INSTRUCTORS and COURSE steps of `product.upserted` in one statement:
/// the instructors ($18–$24), the course, and the product's instructor list
/// ($25, replaced: positions past its end deleted, the rest upserted). Foreign
/// keys are checked at the end of the statement, after every part has run.
const PRODUCT_WITH_INSTRUCTORS: &str = concat!(
    "WITH instructor AS (
         INSERT INTO instructors (source, instructor_key, given_name, family_name, title, organization, bio,
                                  image_url, source_update_time, create_time, update_time)
         SELECT $2, k, g, f, t, o, b, i, $16, $17, $17
         FROM unnest($18::text[], $19::text[], $20::text[], $21::text[], $22::text[], $23::text[], $24::text[])
              AS n(k, g, f, t, o, b, i)",
    instructor_conflict!(),
    "), product AS (",
    product_upsert!(),
    "), gone AS (
         DELETE FROM product_instructors WHERE product_key = $1 AND position >= cardinality($25::text[])
     ), linked AS (
         INSERT INTO product_instructors (product_key, position, instructor_source, instructor_key)
         SELECT product.product_key, n.ord - 1, $2, n.k
         FROM product, unnest($25::text[]) WITH ORDINALITY AS n(k, ord)
         ON CONFLICT (product_key, position) DO UPDATE SET
             instructor_source = EXCLUDED.instructor_source, instructor_key = EXCLUDED.instructor_key
     )
     SELECT product_key FROM product"
);

/// The course fields alone (`course.upserted`).
const PRODUCT_ONLY: &str = product_upsert!();

/// Writes the course (and, for `product.upserted`, its instructors and
/// instructor list). False: a concurrent transaction created the product first.
async fn upsert_product(
    tx: &mut PgConnection,
    source: &str,
    course: &Course,
    instructors: Option<&[Instructor]>,
    occurred_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let query =
        sqlx::query_scalar::<_, String>(if instructors.is_some() { PRODUCT_WITH_INSTRUCTORS } else { PRODUCT_ONLY })
            .bind(&course.product_key)
            .bind(source)
            .bind(course.product_type.as_str())
            .bind(&course.title)
            .bind(&course.org)
            .bind(&course.number)
            .bind(&course.short_description)
            .bind(&course.long_description)
            .bind(&course.level)
            .bind(Json(&course.subjects))
            .bind(Json(&course.languages))
            .bind(course.effort.map(|e| e.min_hours_per_week))
            .bind(course.effort.map(|e| e.max_hours_per_week))
            .bind(course.length_weeks)
            .bind(&course.image_url)
            .bind(occurred_at)
            .bind(now);
    let query = match instructors {
        None => query,
        Some(list) => {
            let distinct = distinct_instructors(list);
            let column = |f: fn(&Instructor) -> &str| distinct.iter().map(|i| f(i)).collect::<Vec<&str>>();
            query
                .bind(column(|i| &i.instructor_key))
                .bind(column(|i| &i.given_name))
                .bind(column(|i| &i.family_name))
                .bind(column(|i| &i.title))
                .bind(column(|i| &i.organization))
                .bind(column(|i| &i.bio))
                .bind(column(|i| &i.image_url))
                .bind(list.iter().map(|i| i.instructor_key.as_str()).collect::<Vec<&str>>())
        }
    };
    Ok(query.fetch_optional(&mut *tx).await?.is_some())
}

/// The COURSE_RUNS and SEATS steps in one statement: the runs ($2–$7) and, for
/// each run written, its seats replaced ($9–$15: modes not sent deleted, the
/// rest upserted). A run key held by another product is not written (and gets
/// no seats). With $17, the product's source_update_time moves to $16
/// (`course_run.upserted`; `product.upserted` did it with the course).
const RUNS_AND_SEATS: &str = "WITH run AS (
         INSERT INTO course_runs (course_run_key, product_key, start_time, end_time, enrollment_end_time, pacing,
                                  run_type, create_time, update_time)
         SELECT k, $1, s, e, x, p, t, $8, $8
         FROM unnest($2::text[], $3::timestamptz[], $4::timestamptz[], $5::timestamptz[], $6::text[], $7::text[])
              AS n(k, s, e, x, p, t)
         ON CONFLICT (course_run_key) DO UPDATE SET
             start_time = EXCLUDED.start_time, end_time = EXCLUDED.end_time,
             enrollment_end_time = EXCLUDED.enrollment_end_time, pacing = EXCLUDED.pacing,
             run_type = EXCLUDED.run_type, update_time = EXCLUDED.update_time
         WHERE course_runs.product_key = EXCLUDED.product_key
         RETURNING course_run_key
     ), gone AS (
         -- `= ANY($2)` hands the planner the keys, so it probes the seats key
         -- index; joining `run` alone was planned as a scan of every seat.
         DELETE FROM seats
         WHERE seats.course_run_key = ANY($2::text[])
           AND seats.course_run_key IN (SELECT course_run_key FROM run)
           AND (seats.course_run_key, seats.mode) NOT IN (SELECT r, m FROM unnest($9::text[], $10::text[]) AS n(r, m))
     ), seat AS (
         INSERT INTO seats (course_run_key, mode, position, price_currency, price_amount, sku, upgrade_deadline)
         SELECT r, m, i, c, a, u, d
         FROM unnest($9::text[], $10::text[], $11::int[], $12::text[], $13::text[], $14::text[],
                     $15::timestamptz[]) AS n(r, m, i, c, a, u, d)
         WHERE r IN (SELECT course_run_key FROM run)
         ON CONFLICT (course_run_key, mode) DO UPDATE SET
             position = EXCLUDED.position, price_currency = EXCLUDED.price_currency,
             price_amount = EXCLUDED.price_amount, sku = EXCLUDED.sku, upgrade_deadline = EXCLUDED.upgrade_deadline
     ), touched AS (
         UPDATE products SET source_update_time = $16, update_time = $8 WHERE product_key = $1 AND $17
     )
     SELECT course_run_key FROM run";

/// Writes `runs` of `product_key` and their seats; `touch`: also moves the
/// product's source_update_time there. Some((run key, owner)) when a run key
/// belongs to another product (the caller rolls back).
async fn upsert_runs(
    tx: &mut PgConnection,
    product_key: &str,
    runs: &[CourseRun],
    touch: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Option<(String, String)>, StoreError> {
    if runs.is_empty() {
        return Ok(None);
    }
    // Key order, so two writers of the same rows lock them in the same order.
    let mut sorted: Vec<&CourseRun> = runs.iter().collect();
    sorted.sort_by(|a, b| a.course_run_key.cmp(&b.course_run_key));
    let mut seats = Vec::new();
    for run in &sorted {
        let mut of_run: Vec<(usize, &crate::domain::Seat)> = run.seats.iter().enumerate().collect();
        of_run.sort_by(|a, b| a.1.mode.cmp(&b.1.mode));
        seats.extend(of_run.into_iter().map(|(position, seat)| (run.course_run_key.as_str(), position, seat)));
    }
    // Planned with this event's values every time (an unnamed statement), not
    // from a cached generic plan: a generic plan costed while `seats` was
    // small keeps scanning every seat after the table has grown.
    let written: Vec<String> = sqlx::query_scalar(RUNS_AND_SEATS)
        .persistent(false)
        .bind(product_key)
        .bind(sorted.iter().map(|r| r.course_run_key.as_str()).collect::<Vec<_>>())
        .bind(sorted.iter().map(|r| r.start).collect::<Vec<_>>())
        .bind(sorted.iter().map(|r| r.end).collect::<Vec<_>>())
        .bind(sorted.iter().map(|r| r.enrollment_end).collect::<Vec<_>>())
        .bind(sorted.iter().map(|r| r.pacing.as_str()).collect::<Vec<_>>())
        .bind(sorted.iter().map(|r| r.run_type.as_str()).collect::<Vec<_>>())
        .bind(now)
        .bind(seats.iter().map(|(run, _, _)| *run).collect::<Vec<_>>())
        .bind(seats.iter().map(|(_, _, s)| s.mode.as_str()).collect::<Vec<_>>())
        .bind(seats.iter().map(|(_, position, _)| i32::try_from(*position).unwrap_or(i32::MAX)).collect::<Vec<_>>())
        .bind(seats.iter().map(|(_, _, s)| s.price.as_ref().map(|p| p.currency_code.as_str())).collect::<Vec<_>>())
        .bind(seats.iter().map(|(_, _, s)| s.price.as_ref().map(|p| p.amount.as_str())).collect::<Vec<_>>())
        .bind(seats.iter().map(|(_, _, s)| s.sku.as_str()).collect::<Vec<_>>())
        .bind(seats.iter().map(|(_, _, s)| s.upgrade_deadline).collect::<Vec<_>>())
        .bind(touch.unwrap_or(now))
        .bind(touch.is_some())
        .fetch_all(&mut *tx)
        .await?;
    if written.len() == runs.len() {
        return Ok(None);
    }
    let Some(refused) = runs.iter().find(|r| !written.contains(&r.course_run_key)) else {
        return Ok(None);
    };
    let owner: String = sqlx::query_scalar("SELECT product_key FROM course_runs WHERE course_run_key = $1")
        .bind(&refused.course_run_key)
        .fetch_one(&mut *tx)
        .await?;
    Ok(Some((refused.course_run_key.clone(), owner)))
}
