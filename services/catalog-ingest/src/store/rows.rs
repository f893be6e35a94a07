//! Rows as both backends read them, generic over how the backend stores
//! times, and the domain values assembled from them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;

use super::{Ingestion, IngestionState, Product, StepResult, StoreError};
use crate::domain::{Course, CourseRun, Effort, EventName, Instructor, Pacing, Price, ProductType, Seat};

/// The columns every product query selects, in [`ProductRow`]'s order.
macro_rules! product_columns {
    () => {
        "product_key, source, product_type, title, org, number, short_description, long_description, level, \
         subjects, languages, effort_min_hours, effort_max_hours, length_weeks, image_url, retired, \
         source_update_time, create_time, update_time"
    };
}
pub(crate) use product_columns;

/// The columns of a run (table aliased `r`), in [`RunRow`]'s order.
macro_rules! run_columns {
    () => {
        "r.course_run_key, r.product_key, r.start_time, r.end_time, r.enrollment_end_time, r.pacing, r.run_type"
    };
}
pub(crate) use run_columns;

/// The columns of a seat (table aliased `s`), in [`SeatRow`]'s order.
macro_rules! seat_columns {
    () => {
        "s.course_run_key, s.mode, s.price_currency, s.price_amount, s.sku, s.upgrade_deadline"
    };
}
pub(crate) use seat_columns;

/// The columns of an instructor of a product (tables aliased `pi`, `i`), in [`InstructorRow`]'s order.
macro_rules! instructor_columns {
    () => {
        "pi.product_key, i.instructor_key, i.given_name, i.family_name, i.title, i.organization, i.bio, i.image_url"
    };
}
pub(crate) use instructor_columns;

/// The columns every ingestion query selects, in [`IngestionRow`]'s order.
macro_rules! ingestion_columns {
    () => {
        "ingestion_id, source, event_id, event_name, occurred_at, payload_hash, product_key, state, steps, create_time"
    };
}
pub(crate) use ingestion_columns;

/// A row of `products`.
#[derive(sqlx::FromRow)]
pub(crate) struct ProductRow<T> {
    pub(super) product_key: String,
    source: String,
    product_type: String,
    title: String,
    org: String,
    number: String,
    short_description: String,
    long_description: String,
    level: String,
    subjects: Json<Vec<String>>,
    languages: Json<Vec<String>>,
    effort_min_hours: Option<i32>,
    effort_max_hours: Option<i32>,
    length_weeks: Option<i32>,
    image_url: String,
    retired: bool,
    source_update_time: T,
    create_time: T,
    update_time: T,
}

/// An instructor of a product, joined through `product_instructors`.
#[derive(sqlx::FromRow)]
pub(crate) struct InstructorRow {
    product_key: String,
    #[sqlx(flatten)]
    instructor: PlainInstructorRow,
}

/// A row of `instructors`, without its times.
#[derive(sqlx::FromRow)]
pub(crate) struct PlainInstructorRow {
    instructor_key: String,
    given_name: String,
    family_name: String,
    title: String,
    organization: String,
    bio: String,
    image_url: String,
}

impl PlainInstructorRow {
    pub(super) fn into_instructor(self) -> Instructor {
        Instructor {
            instructor_key: self.instructor_key,
            given_name: self.given_name,
            family_name: self.family_name,
            title: self.title,
            organization: self.organization,
            bio: self.bio,
            image_url: self.image_url,
        }
    }
}

/// A row of `course_runs`.
#[derive(sqlx::FromRow)]
pub(crate) struct RunRow<T> {
    course_run_key: String,
    pub(super) product_key: String,
    start_time: T,
    end_time: T,
    enrollment_end_time: Option<T>,
    pacing: String,
    run_type: String,
}

/// A row of `seats`.
#[derive(sqlx::FromRow)]
pub(crate) struct SeatRow<T> {
    course_run_key: String,
    mode: String,
    price_currency: Option<String>,
    price_amount: Option<String>,
    sku: String,
    upgrade_deadline: Option<T>,
}

impl<T> SeatRow<T> {
    pub(super) fn into_seat(self, time: impl Fn(T) -> DateTime<Utc>) -> Seat {
        let price = match (self.price_currency, self.price_amount) {
            (Some(currency_code), Some(amount)) => Some(Price { currency_code, amount }),
            _ => None,
        };
        Seat { mode: self.mode, price, sku: self.sku, upgrade_deadline: self.upgrade_deadline.map(time) }
    }
}

impl<T> RunRow<T> {
    pub(super) fn into_run(self, seats: Vec<Seat>, time: impl Fn(T) -> DateTime<Utc>) -> Result<CourseRun, StoreError> {
        let pacing = Pacing::parse(&self.pacing).ok_or_else(|| StoreError::Corrupt {
            key: self.course_run_key.clone(),
            reason: format!("unknown pacing {:?}", self.pacing),
        })?;
        Ok(CourseRun {
            course_run_key: self.course_run_key,
            start: time(self.start_time),
            end: time(self.end_time),
            enrollment_end: self.enrollment_end_time.map(&time),
            pacing,
            run_type: self.run_type,
            seats,
        })
    }
}

/// A row of `ingestions`.
#[derive(sqlx::FromRow)]
pub(crate) struct IngestionRow<T> {
    ingestion_id: String,
    source: String,
    event_id: String,
    event_name: String,
    occurred_at: T,
    payload_hash: String,
    product_key: Option<String>,
    state: String,
    steps: Json<Vec<StepResult>>,
    create_time: T,
}

impl<T> IngestionRow<T> {
    pub(super) fn into_ingestion(self, time: impl Fn(T) -> DateTime<Utc>) -> Result<Ingestion, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt { key: self.ingestion_id.clone(), reason };
        let event_name = EventName::parse(&self.event_name).map_err(|e| corrupt(e.to_string()))?;
        let state =
            IngestionState::parse(&self.state).ok_or_else(|| corrupt(format!("unknown state {:?}", self.state)))?;
        Ok(Ingestion {
            id: self.ingestion_id,
            source: self.source,
            event_id: self.event_id,
            event_name,
            occurred_at: time(self.occurred_at),
            payload_hash: self.payload_hash,
            product_key: self.product_key,
            state,
            steps: self.steps.0,
            created_at: time(self.create_time),
        })
    }
}

/// Products from their rows and their children's rows (each ordered as read:
/// instructors by position, runs by start, seats by position).
pub(crate) fn assemble<T>(
    products: Vec<ProductRow<T>>,
    instructors: Vec<InstructorRow>,
    runs: Vec<RunRow<T>>,
    seats: Vec<SeatRow<T>>,
    time: impl Fn(T) -> DateTime<Utc> + Copy,
) -> Result<Vec<Product>, StoreError> {
    let mut seats_of: HashMap<String, Vec<Seat>> = HashMap::new();
    for seat in seats {
        seats_of.entry(seat.course_run_key.clone()).or_default().push(seat.into_seat(time));
    }
    let mut runs_of: HashMap<String, Vec<CourseRun>> = HashMap::new();
    for run in runs {
        let seats = seats_of.remove(&run.course_run_key).unwrap_or_default();
        let product_key = run.product_key.clone();
        runs_of.entry(product_key).or_default().push(run.into_run(seats, time)?);
    }
    let mut instructors_of: HashMap<String, Vec<Instructor>> = HashMap::new();
    for row in instructors {
        instructors_of.entry(row.product_key).or_default().push(row.instructor.into_instructor());
    }
    products
        .into_iter()
        .map(|row| {
            let product_type = ProductType::parse(&row.product_type).ok_or_else(|| StoreError::Corrupt {
                key: row.product_key.clone(),
                reason: format!("unknown product type {:?}", row.product_type),
            })?;
            let effort = match (row.effort_min_hours, row.effort_max_hours) {
                (Some(min_hours_per_week), Some(max_hours_per_week)) => {
                    Some(Effort { min_hours_per_week, max_hours_per_week })
                }
                _ => None,
            };
            Ok(Product {
                instructors: instructors_of.remove(&row.product_key).unwrap_or_default(),
                runs: runs_of.remove(&row.product_key).unwrap_or_default(),
                source: row.source,
                retired: row.retired,
                source_update_time: time(row.source_update_time),
                created_at: time(row.create_time),
                updated_at: time(row.update_time),
                course: Course {
                    product_key: row.product_key,
                    product_type,
                    title: row.title,
                    org: row.org,
                    number: row.number,
                    short_description: row.short_description,
                    long_description: row.long_description,
                    level: row.level,
                    subjects: row.subjects.0,
                    languages: row.languages.0,
                    effort,
                    length_weeks: row.length_weeks,
                    image_url: row.image_url,
                },
            })
        })
        .collect()
}

/// A run and its seats from their rows.
pub(crate) fn assemble_run<T>(
    run: RunRow<T>,
    seats: Vec<SeatRow<T>>,
    time: impl Fn(T) -> DateTime<Utc> + Copy,
) -> Result<CourseRun, StoreError> {
    run.into_run(seats.into_iter().map(|s| s.into_seat(time)).collect(), time)
}

pub(super) fn micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

pub(super) fn from_micros(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}
