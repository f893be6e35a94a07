//! The edge of the API: each request message parsed once into the value the
//! RPC works on, every field violation collected into one INVALID_ARGUMENT
//! (field paths and reasons are part of the contract), and the records the
//! store answers turned back into messages. [`crate::api`] reads as parse →
//! domain → store → answer.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kit::error::{BadRequest, ViolationReason};
use kit::page::PageSize;
use kit::time::{from_timestamp, to_timestamp};
use proto::commerce::catalog::v1 as pb;
use sha2::{Digest, Sha256};
use tonic::Status;

use crate::domain::{CourseRun, EventName, Pacing, ProductType};
use crate::store::{Ingestion, IngestionState, NewIngestion, Product, Step, StepStatus};

/// Longest event id accepted.
const MAX_EVENT_ID_LEN: usize = 200;
/// Longest key (product, run, ingestion id) a lookup accepts.
const MAX_LOOKUP_KEY_LEN: usize = 255;
/// The most of a caller's value repeated in an error message.
const ECHO_CHARS: usize = 100;
/// What a `next_page_token` of `ListProducts` starts with; the last key follows.
const PAGE_TOKEN_PREFIX: &str = "after:";

/// A caller's value, shortened for an error message.
pub(crate) fn echo(value: &str) -> String {
    if value.chars().count() <= ECHO_CHARS {
        return format!("{value:?}");
    }
    let head: String = value.chars().take(ECHO_CHARS).collect();
    format!("{head:?}…")
}

/// An `IngestProductEvent` request checked for shape; the source's own rules
/// (VALIDATE, TRANSFORM) come after.
#[derive(Clone, Debug)]
pub(crate) struct Envelope {
    source: String,
    event_id: String,
    event_name: EventName,
    occurred_at: DateTime<Utc>,
    payload: serde_json::Value,
}

impl Envelope {
    /// Parses `request` as received at `now`: `occurred_at` may be at most
    /// `clock_skew` in the future. Every violation is reported at once.
    #[allow(clippy::result_large_err)]
    pub(crate) fn parse(
        request: &pb::IngestProductEventRequest,
        now: DateTime<Utc>,
        clock_skew: Duration,
    ) -> Result<Self, Status> {
        let mut bad = BadRequest::new();
        if request.source.is_empty() {
            bad.violation("source", ViolationReason::Required, "is required");
        }
        check_event_id(&request.event_id, &mut bad);
        let event_name = EventName::parse(&request.event_name)
            .map_err(|_| {
                let rule = if request.event_name.is_empty() {
                    ViolationReason::Required
                } else {
                    ViolationReason::UnknownValue
                };
                bad.violation("event_name", rule, format!("unknown event {}", echo(&request.event_name)))
            })
            .ok();
        let occurred_at = occurred_at(request.occurred_at.as_ref(), now, clock_skew, &mut bad);
        let payload = match &request.payload {
            None => {
                bad.violation("payload", ViolationReason::Required, "is required");
                None
            }
            Some(payload) => Some(kit::json::from_struct(payload)),
        };
        bad.into_result()?;
        match (event_name, occurred_at, payload) {
            (Some(event_name), Some(occurred_at), Some(payload)) => Ok(Self {
                source: request.source.clone(),
                event_id: request.event_id.clone(),
                event_name,
                occurred_at,
                payload,
            }),
            // Unreachable: every None above recorded a violation.
            _ => Err(Status::invalid_argument("invalid event")),
        }
    }

    /// The sending line of business.
    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    /// The source's id for the event.
    pub(crate) fn event_id(&self) -> &str {
        &self.event_id
    }

    /// What happened.
    pub(crate) fn event_name(&self) -> EventName {
        self.event_name
    }

    /// The source's payload, as JSON.
    pub(crate) fn payload(&self) -> &serde_json::Value {
        &self.payload
    }

    /// Identifies the payload: the same event sent twice hashes the same (JSON
    /// objects are sorted by key).
    fn payload_hash(&self) -> String {
        let canonical = serde_json::json!({
            "event_name": self.event_name.as_str(),
            "occurred_at": self.occurred_at.timestamp_micros(),
            "payload": self.payload,
        });
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }

    /// The record to write for this event, under a new id.
    pub(crate) fn new_ingestion(&self) -> NewIngestion {
        NewIngestion {
            id: uuid::Uuid::now_v7().to_string(),
            source: self.source.clone(),
            event_id: self.event_id.clone(),
            event_name: self.event_name,
            occurred_at: self.occurred_at,
            payload_hash: self.payload_hash(),
        }
    }
}

/// `event_id`: 1 to [`MAX_EVENT_ID_LEN`] characters without control characters.
fn check_event_id(id: &str, bad: &mut BadRequest) {
    let rule = if id.is_empty() {
        Some(ViolationReason::Required)
    } else if id.chars().count() > MAX_EVENT_ID_LEN {
        Some(ViolationReason::TooLong)
    } else if id.chars().any(char::is_control) {
        Some(ViolationReason::InvalidFormat)
    } else {
        None
    };
    if let Some(rule) = rule {
        bad.violation(
            "event_id",
            rule,
            format!("must be 1 to {MAX_EVENT_ID_LEN} characters without control characters"),
        );
    }
}

/// `occurred_at`: present, a valid time, not later than `clock_skew` past `now`;
/// kept to the microsecond, as stored, so a replay compares equal.
fn occurred_at(
    sent: Option<&prost_types::Timestamp>,
    now: DateTime<Utc>,
    clock_skew: Duration,
    bad: &mut BadRequest,
) -> Option<DateTime<Utc>> {
    let latest = now.checked_add_signed(chrono::Duration::from_std(clock_skew).unwrap_or_default()).unwrap_or(now);
    let Some(ts) = sent else {
        bad.violation("occurred_at", ViolationReason::Required, "is required");
        return None;
    };
    match from_timestamp(ts) {
        Err(e) => {
            bad.violation("occurred_at", ViolationReason::OutOfRange, e);
            None
        }
        Ok(at) if at > latest => {
            bad.violation("occurred_at", ViolationReason::OutOfRange, format!("{at} is in the future (now {now})"));
            None
        }
        Ok(at) => Some(crate::store::stored_time(at)),
    }
}

/// A `ListProducts` request: which products, from where, how many.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProductQuery {
    source: Option<String>,
    product_type: Option<ProductType>,
    after_key: Option<String>,
    page_size: PageSize,
}

impl ProductQuery {
    /// Only this source's products, when given.
    pub(crate) fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }

    /// Only products of this type, when given.
    pub(crate) fn product_type(&self) -> Option<ProductType> {
        self.product_type
    }

    /// Products after this key (the page token's), when given.
    pub(crate) fn after_key(&self) -> Option<&str> {
        self.after_key.as_deref()
    }

    /// How many products one page holds.
    pub(crate) fn page_size(&self) -> PageSize {
        self.page_size
    }

    /// The page out of `rows` (read with the page size's `rows_to_read`) and its next-page token.
    pub(crate) fn page(&self, rows: Vec<Product>) -> (Vec<Product>, String) {
        self.page_size.split(rows, |last| format!("{PAGE_TOKEN_PREFIX}{}", last.course.product_key))
    }
}

impl TryFrom<&pb::ListProductsRequest> for ProductQuery {
    type Error = Status;

    fn try_from(request: &pb::ListProductsRequest) -> Result<Self, Status> {
        let mut bad = BadRequest::new();
        let page_size = PageSize::clamped(request.page_size, &mut bad);
        let product_type = match pb::ProductType::try_from(request.r#type) {
            Ok(pb::ProductType::Unspecified) => None,
            Ok(t) => Some(type_from_proto(t)),
            Err(_) => {
                bad.violation(
                    "type",
                    ViolationReason::UnknownValue,
                    format!("unknown product type {}", request.r#type),
                );
                None
            }
        };
        let after_key = match request.page_token.as_str() {
            "" => None,
            token => match token.strip_prefix(PAGE_TOKEN_PREFIX) {
                Some(key) if !key.is_empty() => Some(key.to_string()),
                _ => {
                    bad.violation(
                        "page_token",
                        ViolationReason::UnknownValue,
                        "is not a next_page_token this service gave",
                    );
                    None
                }
            },
        };
        bad.into_result()?;
        let source = Some(request.source.clone()).filter(|s| !s.is_empty());
        Ok(Self { source, product_type, after_key, page_size })
    }
}

/// A lookup key (`field` of a Get request): 1 to 255 characters.
#[allow(clippy::result_large_err)]
pub(crate) fn lookup_key(field: &str, value: &str) -> Result<String, Status> {
    let mut bad = BadRequest::new();
    let rule = if value.is_empty() { ViolationReason::Required } else { ViolationReason::TooLong };
    if value.is_empty() || value.len() > MAX_LOOKUP_KEY_LEN {
        bad.violation(field, rule, "must be 1 to 255 characters");
    }
    bad.into_result()?;
    Ok(value.to_string())
}

/// A step's name in messages and error details.
pub(crate) fn step_name(step: Step) -> &'static str {
    match step {
        Step::Validate => "VALIDATE",
        Step::Transform => "TRANSFORM",
        Step::Instructors => "INSTRUCTORS",
        Step::Course => "COURSE",
        Step::CourseRuns => "COURSE_RUNS",
        Step::Seats => "SEATS",
        Step::Discovery => "DISCOVERY",
    }
}

/// An ingestion record as the API answers it.
pub(crate) fn ingestion_to_proto(ingestion: &Ingestion) -> pb::Ingestion {
    pb::Ingestion {
        ingestion_id: ingestion.id.clone(),
        source: ingestion.source.clone(),
        event_id: ingestion.event_id.clone(),
        event_name: ingestion.event_name.as_str().to_string(),
        occurred_at: Some(to_timestamp(ingestion.occurred_at)),
        product_key: ingestion.product_key.clone().unwrap_or_default(),
        state: match ingestion.state {
            IngestionState::Applied => pb::IngestionState::Applied,
            IngestionState::Failed => pb::IngestionState::Failed,
            IngestionState::SkippedStale => pb::IngestionState::SkippedStale,
        } as i32,
        steps: ingestion
            .steps
            .iter()
            .map(|s| pb::StepResult {
                step: match s.step {
                    Step::Validate => pb::IngestStep::Validate,
                    Step::Transform => pb::IngestStep::Transform,
                    Step::Instructors => pb::IngestStep::Instructors,
                    Step::Course => pb::IngestStep::Course,
                    Step::CourseRuns => pb::IngestStep::CourseRuns,
                    Step::Seats => pb::IngestStep::Seats,
                    Step::Discovery => pb::IngestStep::Discovery,
                } as i32,
                status: match s.status {
                    StepStatus::Ok => pb::StepStatus::Ok,
                    StepStatus::Failed => pb::StepStatus::Failed,
                    StepStatus::Skipped => pb::StepStatus::Skipped,
                } as i32,
                field_path: s.field_path.clone(),
                reason: s.reason.clone(),
                call: s.call.clone(),
            })
            .collect(),
        create_time: Some(to_timestamp(ingestion.created_at)),
    }
}

fn type_from_proto(t: pb::ProductType) -> ProductType {
    match t {
        pb::ProductType::Unspecified | pb::ProductType::Course => ProductType::Course,
        pb::ProductType::ExecutiveEducation => ProductType::ExecutiveEducation,
        pb::ProductType::Bootcamp => ProductType::Bootcamp,
        pb::ProductType::Degree => ProductType::Degree,
        pb::ProductType::Program => ProductType::Program,
    }
}

fn type_to_proto(t: ProductType) -> pb::ProductType {
    match t {
        ProductType::Course => pb::ProductType::Course,
        ProductType::ExecutiveEducation => pb::ProductType::ExecutiveEducation,
        ProductType::Bootcamp => pb::ProductType::Bootcamp,
        ProductType::Degree => pb::ProductType::Degree,
        ProductType::Program => pb::ProductType::Program,
    }
}

/// A run of `product_key` as the API answers it.
pub(crate) fn run_to_proto(run: &CourseRun, product_key: &str) -> pb::CourseRun {
    pb::CourseRun {
        course_run_key: run.course_run_key.clone(),
        product_key: product_key.to_string(),
        start_time: Some(to_timestamp(run.start)),
        end_time: Some(to_timestamp(run.end)),
        enrollment_end_time: run.enrollment_end.map(to_timestamp),
        pacing: match run.pacing {
            Pacing::InstructorPaced => pb::Pacing::InstructorPaced,
            Pacing::SelfPaced => pb::Pacing::SelfPaced,
        } as i32,
        run_type: run.run_type.clone(),
        seats: run
            .seats
            .iter()
            .map(|seat| pb::Seat {
                mode: seat.mode.clone(),
                price: seat.price.as_ref().map(|p| proto::commerce::r#type::v1::Money {
                    currency_code: p.currency_code.clone(),
                    amount: p.amount.clone(),
                }),
                sku: seat.sku.clone(),
                upgrade_deadline_time: seat.upgrade_deadline.map(to_timestamp),
            })
            .collect(),
    }
}

/// A product as the API answers it.
pub(crate) fn product_to_proto(product: &Product) -> pb::Product {
    let course = &product.course;
    pb::Product {
        product_key: course.product_key.clone(),
        source: product.source.clone(),
        r#type: type_to_proto(course.product_type) as i32,
        title: course.title.clone(),
        org: course.org.clone(),
        number: course.number.clone(),
        short_description: course.short_description.clone(),
        long_description: course.long_description.clone(),
        level: course.level.clone(),
        subjects: course.subjects.clone(),
        languages: course.languages.clone(),
        effort: course
            .effort
            .map(|e| pb::Effort { min_hours_per_week: e.min_hours_per_week, max_hours_per_week: e.max_hours_per_week }),
        length_weeks: course.length_weeks.unwrap_or_default(),
        image_url: course.image_url.clone(),
        instructors: product
            .instructors
            .iter()
            .map(|i| pb::Instructor {
                instructor_key: i.instructor_key.clone(),
                given_name: i.given_name.clone(),
                family_name: i.family_name.clone(),
                title: i.title.clone(),
                organization: i.organization.clone(),
                bio: i.bio.clone(),
                image_url: i.image_url.clone(),
            })
            .collect(),
        course_runs: product.runs.iter().map(|r| run_to_proto(r, &course.product_key)).collect(),
        retired: product.retired,
        source_update_time: Some(to_timestamp(product.source_update_time)),
        create_time: Some(to_timestamp(product.created_at)),
        update_time: Some(to_timestamp(product.updated_at)),
    }
}
