//! The SQLite store for the embedded mesh: one writer at a time, so every
//! event runs in a `BEGIN IMMEDIATE` transaction and what it reads before
//! deciding cannot change under it. Rows are written one statement each (no
//! round trips to save in-process). Times are microseconds since the epoch.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{Sqlite, SqliteConnection, SqlitePool};

use super::rows::{
    IngestionRow, InstructorRow, PlainInstructorRow, ProductRow, RunRow, SeatRow, assemble, assemble_run, from_micros,
    ingestion_columns, instructor_columns, micros, product_columns, run_columns, seat_columns,
};
use super::{
    Attempt, Backend, Current, Ending, Ingestion, NewIngestion, Product, Recorded, StepResult, Store, StoreError,
    distinct_instructors, failure_record, record_alone, run_owned_elsewhere, stale_reason,
};
use crate::domain::{CanonicalEvent, Course, CourseRun, Instructor, ProductType};

/// The catalog in SQLite.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

type LiteProductRow = ProductRow<i64>;
type LiteRunRow = RunRow<i64>;
type LiteSeatRow = SeatRow<i64>;
type LiteIngestionRow = IngestionRow<i64>;

impl SqliteStore {
    /// A store over `pool`.
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }
}

/// Products with their children, inside one read transaction (a snapshot in WAL mode).
async fn load(rows: Vec<LiteProductRow>, tx: &mut SqliteConnection) -> Result<Vec<Product>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // SQLite has no arrays: the keys go in as one JSON array, read with json_each.
    let keys = serde_json::Value::from(rows.iter().map(|r| r.product_key.as_str()).collect::<Vec<_>>()).to_string();
    let instructors: Vec<InstructorRow> = sqlx::query_as(concat!(
        "SELECT ",
        instructor_columns!(),
        " FROM product_instructors pi
          JOIN instructors i ON i.source = pi.instructor_source AND i.instructor_key = pi.instructor_key
          WHERE pi.product_key IN (SELECT value FROM json_each(?1)) ORDER BY pi.product_key, pi.position"
    ))
    .bind(&keys)
    .fetch_all(&mut *tx)
    .await?;
    let runs: Vec<LiteRunRow> = sqlx::query_as(concat!(
        "SELECT ",
        run_columns!(),
        " FROM course_runs r WHERE r.product_key IN (SELECT value FROM json_each(?1))
          ORDER BY r.product_key, r.start_time, r.course_run_key"
    ))
    .bind(&keys)
    .fetch_all(&mut *tx)
    .await?;
    let seats: Vec<LiteSeatRow> = sqlx::query_as(concat!(
        "SELECT ",
        seat_columns!(),
        " FROM seats s JOIN course_runs r ON r.course_run_key = s.course_run_key
          WHERE r.product_key IN (SELECT value FROM json_each(?1)) ORDER BY s.course_run_key, s.position"
    ))
    .bind(&keys)
    .fetch_all(&mut *tx)
    .await?;
    assemble(rows, instructors, runs, seats, from_micros)
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn find_ingestion(&self, source: &str, event_id: &str) -> Result<Option<Ingestion>, StoreError> {
        sqlx::query_as::<_, LiteIngestionRow>(concat!(
            "SELECT ",
            ingestion_columns!(),
            " FROM ingestions WHERE source = ?1 AND event_id = ?2"
        ))
        .bind(source)
        .bind(event_id)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| row.into_ingestion(from_micros))
        .transpose()
    }

    async fn get_ingestion(&self, id: &str) -> Result<Option<Ingestion>, StoreError> {
        sqlx::query_as::<_, LiteIngestionRow>(concat!(
            "SELECT ",
            ingestion_columns!(),
            " FROM ingestions WHERE ingestion_id = ?1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| row.into_ingestion(from_micros))
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
        // Read and write under the writer lock, so concurrent appends both land.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let stored: Option<Json<Vec<StepResult>>> =
            sqlx::query_scalar("SELECT steps FROM ingestions WHERE ingestion_id = ?1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(Json(mut all)) = stored else { return Ok(()) };
        all.extend_from_slice(steps);
        sqlx::query("UPDATE ingestions SET steps = ?2 WHERE ingestion_id = ?1")
            .bind(id)
            .bind(Json(&all))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_product(&self, key: &str) -> Result<Option<Product>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<LiteProductRow> =
            sqlx::query_as(concat!("SELECT ", product_columns!(), " FROM products WHERE product_key = ?1"))
                .bind(key)
                .fetch_all(&mut *tx)
                .await?;
        let products = load(rows, &mut tx).await?;
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
        let mut tx = self.pool.begin().await?;
        let rows: Vec<LiteProductRow> = sqlx::query_as(concat!(
            "SELECT ",
            product_columns!(),
            " FROM products
              WHERE (?1 IS NULL OR source = ?1) AND (?2 IS NULL OR product_type = ?2)
                AND (?3 IS NULL OR product_key > ?3)
              ORDER BY product_key LIMIT ?4"
        ))
        .bind(source)
        .bind(product_type.map(ProductType::as_str))
        .bind(after_key)
        .bind(limit.max(0))
        .fetch_all(&mut *tx)
        .await?;
        let products = load(rows, &mut tx).await?;
        tx.commit().await?;
        Ok(products)
    }

    async fn get_course_run(&self, key: &str) -> Result<Option<(CourseRun, String, bool)>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct Row {
            #[sqlx(flatten)]
            run: LiteRunRow,
            retired: bool,
        }
        let mut tx = self.pool.begin().await?;
        let row: Option<Row> = sqlx::query_as(concat!(
            "SELECT ",
            run_columns!(),
            ", p.retired FROM course_runs r JOIN products p ON p.product_key = r.product_key
               WHERE r.course_run_key = ?1"
        ))
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let seats: Vec<LiteSeatRow> = sqlx::query_as(concat!(
            "SELECT ",
            seat_columns!(),
            " FROM seats s WHERE s.course_run_key = ?1 ORDER BY s.position"
        ))
        .bind(key)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let product_key = row.run.product_key.clone();
        Ok(Some((assemble_run(row.run, seats, from_micros)?, product_key, row.retired)))
    }

    async fn get_instructor(&self, source: &str, key: &str) -> Result<Option<Instructor>, StoreError> {
        let row: Option<PlainInstructorRow> = sqlx::query_as(
            "SELECT instructor_key, given_name, family_name, title, organization, bio, image_url
             FROM instructors WHERE source = ?1 AND instructor_key = ?2",
        )
        .bind(source)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(PlainInstructorRow::into_instructor))
    }
}

#[async_trait::async_trait]
impl Backend for SqliteStore {
    type Db = Sqlite;

    /// `BEGIN IMMEDIATE`: the writer lock from the start, so what is read
    /// before deciding cannot change.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    async fn insert_ingestion(conn: &mut SqliteConnection, ingestion: &Ingestion) -> Result<bool, StoreError> {
        let inserted: Option<String> = sqlx::query_scalar(
            "INSERT INTO ingestions (ingestion_id, source, event_id, event_name, occurred_at, payload_hash, product_key,
                                     state, steps, create_time)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (source, event_id) DO NOTHING
             RETURNING ingestion_id",
        )
        .bind(&ingestion.id)
        .bind(&ingestion.source)
        .bind(&ingestion.event_id)
        .bind(ingestion.event_name.as_str())
        .bind(micros(ingestion.occurred_at))
        .bind(&ingestion.payload_hash)
        .bind(ingestion.product_key.as_deref())
        .bind(ingestion.state.as_str())
        .bind(Json(&ingestion.steps))
        .bind(micros(ingestion.created_at))
        .fetch_optional(&mut *conn)
        .await?;
        Ok(inserted.is_some())
    }

    async fn current(tx: &mut SqliteConnection, key: &str) -> Result<Option<Current>, StoreError> {
        let current: Option<(String, i64)> =
            sqlx::query_as("SELECT source, source_update_time FROM products WHERE product_key = ?1")
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
        Ok(current.map(|(source, time)| Current { source, source_update_time: from_micros(time) }))
    }

    async fn upsert_instructor(
        tx: &mut SqliteConnection,
        source: &str,
        instructor: &Instructor,
        occurred_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Ending, StoreError> {
        if write_instructor(tx, source, instructor, occurred_at, now).await? {
            return Ok(Ending::Applied);
        }
        let reflects: i64 =
            sqlx::query_scalar("SELECT source_update_time FROM instructors WHERE source = ?1 AND instructor_key = ?2")
                .bind(source)
                .bind(&instructor.instructor_key)
                .fetch_one(&mut *tx)
                .await?;
        Ok(Ending::Stale(stale_reason("instructor", from_micros(reflects))))
    }

    async fn write(
        tx: &mut SqliteConnection,
        source: &str,
        key: &str,
        event: &CanonicalEvent,
        occurred_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Attempt, StoreError> {
        match event {
            CanonicalEvent::ProductUpserted { course, instructors, runs } => {
                // Step order: instructors, then the course, then the product's list of them.
                for instructor in distinct_instructors(instructors) {
                    write_instructor(tx, source, instructor, occurred_at, now).await?;
                }
                if !upsert_course(tx, source, course, occurred_at, now).await? {
                    return Ok(Attempt::Raced);
                }
                link_instructors(tx, source, key, instructors).await?;
                if let Some((run_key, owner)) = upsert_runs(tx, key, runs, now).await? {
                    return Ok(Attempt::Ended(Ending::Failed(run_owned_elsewhere(event, &run_key, &owner))));
                }
            }
            CanonicalEvent::CourseUpserted { course } => {
                if !upsert_course(tx, source, course, occurred_at, now).await? {
                    return Ok(Attempt::Raced);
                }
            }
            CanonicalEvent::CourseRunUpserted { run, .. } => {
                if let Some((run_key, owner)) = upsert_runs(tx, key, std::slice::from_ref(run), now).await? {
                    return Ok(Attempt::Ended(Ending::Failed(run_owned_elsewhere(event, &run_key, &owner))));
                }
                sqlx::query("UPDATE products SET source_update_time = ?2, update_time = ?3 WHERE product_key = ?1")
                    .bind(key)
                    .bind(micros(occurred_at))
                    .bind(micros(now))
                    .execute(&mut *tx)
                    .await?;
            }
            CanonicalEvent::ProductRetired { .. } => {
                sqlx::query(
                    "UPDATE products SET retired = 1, source_update_time = ?2, update_time = ?3 WHERE product_key = ?1",
                )
                .bind(key)
                .bind(micros(occurred_at))
                .bind(micros(now))
                .execute(&mut *tx)
                .await?;
            }
            CanonicalEvent::InstructorUpserted { .. } => {}
        }
        Ok(Attempt::Ended(Ending::Applied))
    }
}

/// Upserts an instructor unless the stored one is newer; true when written.
async fn write_instructor(
    tx: &mut SqliteConnection,
    source: &str,
    instructor: &Instructor,
    occurred_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let written: Option<String> = sqlx::query_scalar(
        "INSERT INTO instructors (source, instructor_key, given_name, family_name, title, organization, bio,
                                  image_url, source_update_time, create_time, update_time)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)
         ON CONFLICT (source, instructor_key) DO UPDATE SET
             given_name = excluded.given_name, family_name = excluded.family_name, title = excluded.title,
             organization = excluded.organization, bio = excluded.bio, image_url = excluded.image_url,
             source_update_time = excluded.source_update_time, update_time = excluded.update_time
         WHERE instructors.source_update_time <= excluded.source_update_time
         RETURNING instructor_key",
    )
    .bind(source)
    .bind(&instructor.instructor_key)
    .bind(&instructor.given_name)
    .bind(&instructor.family_name)
    .bind(&instructor.title)
    .bind(&instructor.organization)
    .bind(&instructor.bio)
    .bind(&instructor.image_url)
    .bind(micros(occurred_at))
    .bind(micros(now))
    .fetch_optional(&mut *tx)
    .await?;
    Ok(written.is_some())
}

/// Writes the course fields; false when the row belongs to another source or
/// is newer (ruled out by the check made under the same lock).
async fn upsert_course(
    tx: &mut SqliteConnection,
    source: &str,
    course: &Course,
    occurred_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let written: Option<String> = sqlx::query_scalar(
        "INSERT INTO products (product_key, source, product_type, title, org, number, short_description,
                               long_description, level, subjects, languages, effort_min_hours, effort_max_hours,
                               length_weeks, image_url, retired, source_update_time, create_time, update_time)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, 0, ?16, ?17, ?17)
         ON CONFLICT (product_key) DO UPDATE SET
             product_type = excluded.product_type, title = excluded.title, org = excluded.org,
             number = excluded.number, short_description = excluded.short_description,
             long_description = excluded.long_description, level = excluded.level, subjects = excluded.subjects,
             languages = excluded.languages, effort_min_hours = excluded.effort_min_hours,
             effort_max_hours = excluded.effort_max_hours, length_weeks = excluded.length_weeks,
             image_url = excluded.image_url, source_update_time = excluded.source_update_time,
             update_time = excluded.update_time
         WHERE products.source = excluded.source AND products.source_update_time <= excluded.source_update_time
         RETURNING product_key",
    )
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
    .bind(micros(occurred_at))
    .bind(micros(now))
    .fetch_optional(&mut *tx)
    .await?;
    Ok(written.is_some())
}

/// Replaces the product's instructor list: positions past its end deleted, the rest upserted.
async fn link_instructors(
    tx: &mut SqliteConnection,
    source: &str,
    product_key: &str,
    instructors: &[Instructor],
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM product_instructors WHERE product_key = ?1 AND position >= ?2")
        .bind(product_key)
        .bind(i64::try_from(instructors.len()).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
    for (position, instructor) in instructors.iter().enumerate() {
        sqlx::query(
            "INSERT INTO product_instructors (product_key, position, instructor_source, instructor_key)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (product_key, position) DO UPDATE SET
                 instructor_source = excluded.instructor_source, instructor_key = excluded.instructor_key",
        )
        .bind(product_key)
        .bind(i64::try_from(position).unwrap_or(i64::MAX))
        .bind(source)
        .bind(&instructor.instructor_key)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Writes `runs` of `product_key`, then each one's seats (replaced). Some((run
/// key, owner)) when a run key belongs to another product (the caller rolls back).
async fn upsert_runs(
    tx: &mut SqliteConnection,
    product_key: &str,
    runs: &[CourseRun],
    now: DateTime<Utc>,
) -> Result<Option<(String, String)>, StoreError> {
    for run in runs {
        let written: Option<String> = sqlx::query_scalar(
            "INSERT INTO course_runs (course_run_key, product_key, start_time, end_time, enrollment_end_time, pacing,
                                      run_type, create_time, update_time)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
             ON CONFLICT (course_run_key) DO UPDATE SET
                 start_time = excluded.start_time, end_time = excluded.end_time,
                 enrollment_end_time = excluded.enrollment_end_time, pacing = excluded.pacing,
                 run_type = excluded.run_type, update_time = excluded.update_time
             WHERE course_runs.product_key = excluded.product_key
             RETURNING course_run_key",
        )
        .bind(&run.course_run_key)
        .bind(product_key)
        .bind(micros(run.start))
        .bind(micros(run.end))
        .bind(run.enrollment_end.map(micros))
        .bind(run.pacing.as_str())
        .bind(&run.run_type)
        .bind(micros(now))
        .fetch_optional(&mut *tx)
        .await?;
        if written.is_none() {
            let owner: String = sqlx::query_scalar("SELECT product_key FROM course_runs WHERE course_run_key = ?1")
                .bind(&run.course_run_key)
                .fetch_one(&mut *tx)
                .await?;
            return Ok(Some((run.course_run_key.clone(), owner)));
        }
    }
    for run in runs {
        let modes = serde_json::Value::from(run.seats.iter().map(|s| s.mode.as_str()).collect::<Vec<_>>()).to_string();
        sqlx::query("DELETE FROM seats WHERE course_run_key = ?1 AND mode NOT IN (SELECT value FROM json_each(?2))")
            .bind(&run.course_run_key)
            .bind(modes)
            .execute(&mut *tx)
            .await?;
        for (position, seat) in run.seats.iter().enumerate() {
            sqlx::query(
                "INSERT INTO seats (course_run_key, mode, position, price_currency, price_amount, sku,
                                    upgrade_deadline)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (course_run_key, mode) DO UPDATE SET
                     position = excluded.position, price_currency = excluded.price_currency,
                     price_amount = excluded.price_amount, sku = excluded.sku,
                     upgrade_deadline = excluded.upgrade_deadline",
            )
            .bind(&run.course_run_key)
            .bind(&seat.mode)
            .bind(i64::try_from(position).unwrap_or(i64::MAX))
            .bind(seat.price.as_ref().map(|p| p.currency_code.as_str()))
            .bind(seat.price.as_ref().map(|p| p.amount.as_str()))
            .bind(&seat.sku)
            .bind(seat.upgrade_deadline.map(micros))
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(None)
}
