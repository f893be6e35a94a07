//! The gRPC face of CatalogIngest: admit (source known, within its quota,
//! room under the concurrency gate), answer replays from the first result,
//! then VALIDATE and TRANSFORM with the source's transformer, then the store's
//! ordered writes, then the optional discovery calls. No SQL here.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kit::error::{BadRequest, ViolationReason, with_reason};
use kit::throttle::{ConcurrencyGate, Quotas};
use kit::time::{from_timestamp, to_timestamp};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use proto::commerce::catalog::v1 as pb;
use proto::commerce::catalog::v1::catalog_ingest_service_server::CatalogIngestService;
use sha2::{Digest, Sha256};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::discovery::Discovery;
use crate::domain::{CanonicalEvent, EventName, Pacing, ProductType, Violation};
use crate::store::{Ingestion, IngestionState, NewIngestion, Product, Recorded, Step, StepResult, StepStatus, Store};
use crate::transform::Sources;

/// The page of `ListProducts` when the caller asks for none.
const DEFAULT_PAGE_SIZE: i32 = 50;
/// The largest page of `ListProducts`.
const MAX_PAGE_SIZE: i32 = 500;
/// Longest event id accepted.
const MAX_EVENT_ID_LEN: usize = 200;
/// How long a shed caller is told to wait.
const SHED_RETRY_AFTER: Duration = Duration::from_secs(1);
/// How far in the future `occurred_at` may be unless configured otherwise.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(300);
/// The most of a caller's value repeated in an error message.
const ECHO_CHARS: usize = 100;

/// A caller's value, shortened for an error message.
fn echo(value: &str) -> String {
    if value.chars().count() <= ECHO_CHARS {
        return format!("{value:?}");
    }
    let head: String = value.chars().take(ECHO_CHARS).collect();
    format!("{head:?}…")
}

/// Label: the source of a refused event (only configured sources reach the quota: a bounded set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// The source's name, as in its `config/catalog/sources/<source>.toml`.
    pub source: String,
}

/// Answers `commerce.catalog.v1.CatalogIngestService`.
#[derive(Clone)]
pub struct CatalogIngestApi {
    store: Arc<dyn Store>,
    sources: Arc<Sources>,
    quotas: Arc<Quotas>,
    /// Events refused because their source was over its quota, by source.
    throttled: Family<SourceLabel, Counter>,
    gate: ConcurrencyGate,
    discovery: Option<Discovery>,
    clock_skew: Duration,
}

impl CatalogIngestApi {
    /// The API over `store` with the configured `sources` (each with its
    /// quota, kept in this process), at most `gate`'s ingestions at once, and
    /// the optional `discovery` downstream.
    pub fn new(
        store: Arc<dyn Store>,
        sources: Arc<Sources>,
        gate: ConcurrencyGate,
        discovery: Option<Discovery>,
    ) -> Self {
        let quotas = Arc::new(Quotas::in_process(sources.quotas()));
        let throttled = Family::default();
        Self { store, sources, quotas, throttled, gate, discovery, clock_skew: DEFAULT_CLOCK_SKEW }
    }

    /// The same, counting the events each source had refused over its quota in
    /// `metrics` as `catalog_ingest_source_throttled_total{source}`.
    pub fn with_metrics(self, metrics: &kit::metrics::Metrics) -> Self {
        metrics.register(
            "catalog_ingest_source_throttled",
            "Product events refused because their source was over its quota, by source",
            self.throttled.clone(),
        );
        self
    }

    /// The same with the sources' quotas kept in `quotas` (cluster-wide in
    /// Redis when several replicas run); keyed by source name.
    pub fn with_quotas(mut self, quotas: Quotas) -> Self {
        self.quotas = Arc::new(quotas);
        self
    }

    /// How far in the future `occurred_at` may be (default five minutes): an
    /// event from the far future would make every later one stale.
    pub fn with_clock_skew(mut self, clock_skew: Duration) -> Self {
        self.clock_skew = clock_skew;
        self
    }

    /// Answers a replay: the first result when the payload is the same, else ALREADY_EXISTS.
    fn replay(existing: Ingestion, payload_hash: &str) -> Result<Response<pb::IngestProductEventResponse>, Status> {
        if existing.payload_hash != payload_hash {
            return Err(with_reason(
                Code::AlreadyExists,
                format!(
                    "event {} from {} was already ingested ({}) with a different payload; send a new event_id",
                    existing.event_id, existing.source, existing.id
                ),
                "EVENT_ID_REUSED",
                [("ingestion_id", existing.id.clone()), ("event_id", existing.event_id.clone())],
            ));
        }
        answer(existing)
    }
}

/// The call's answer for a recorded ingestion: OK, or the failed step as INVALID_ARGUMENT.
fn answer(ingestion: Ingestion) -> Result<Response<pb::IngestProductEventResponse>, Status> {
    if ingestion.state != IngestionState::Failed {
        return Ok(Response::new(pb::IngestProductEventResponse { ingestion: Some(ingestion_to_proto(&ingestion)) }));
    }
    let failed = ingestion.steps.iter().find(|s| s.status == StepStatus::Failed);
    let step = failed.map_or(Step::Validate, |s| s.step);
    let violations: Vec<FieldViolation> = ingestion
        .steps
        .iter()
        .filter(|s| s.status == StepStatus::Failed)
        // A source's rules are its own: each names itself in the description.
        .flat_map(|s| {
            violations_of(s)
                .into_iter()
                .map(|v| kit::error::field_violation(v.field_path, ViolationReason::InvalidValue, v.reason))
        })
        .collect();
    let summary: Vec<String> = violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect();
    let mut details = ErrorDetails::with_bad_request(violations);
    details.set_error_info(
        "STEP_FAILED",
        kit::error::ERROR_DOMAIN,
        [("ingestion_id".to_string(), ingestion.id.clone()), ("step".to_string(), step_name(step).to_string())],
    );
    Err(Status::with_error_details(
        Code::InvalidArgument,
        format!("ingestion {} failed at {}: {}", ingestion.id, step_name(step), summary.join("; ")),
        details,
    ))
}

/// A failed step's violations: its reason lists them as `path: reason` lines
/// when there were several (see [`failed_step`]).
fn violations_of(step: &StepResult) -> Vec<Violation> {
    let listed: Vec<Violation> = step
        .reason
        .lines()
        .filter_map(|line| line.strip_prefix("- "))
        .filter_map(|line| line.split_once(": "))
        .map(|(path, reason)| Violation { field_path: path.to_string(), reason: reason.to_string() })
        .collect();
    if listed.is_empty() {
        vec![Violation { field_path: step.field_path.clone(), reason: step.reason.clone() }]
    } else {
        listed
    }
}

/// The result of a step that failed with `violations`: the first one's path,
/// and every one in the reason.
fn failed_step(step: Step, violations: &[Violation]) -> StepResult {
    let reason = match violations {
        [only] => only.reason.clone(),
        many => many.iter().map(|v| format!("- {}: {}", v.field_path, v.reason)).collect::<Vec<_>>().join("\n"),
    };
    StepResult {
        step,
        status: StepStatus::Failed,
        field_path: violations.first().map(|v| v.field_path.clone()).unwrap_or_default(),
        reason,
        call: String::new(),
    }
}

/// The step results of an ingestion that failed at `failed` (earlier steps OK, later SKIPPED).
fn steps_failing_at(failed: StepResult) -> Vec<StepResult> {
    let order = [Step::Validate, Step::Transform, Step::Instructors, Step::Course, Step::CourseRuns, Step::Seats];
    order
        .into_iter()
        .map(|step| {
            let status = match (step as u8).cmp(&(failed.step as u8)) {
                std::cmp::Ordering::Less => StepStatus::Ok,
                std::cmp::Ordering::Equal => return failed.clone(),
                std::cmp::Ordering::Greater => StepStatus::Skipped,
            };
            StepResult { step, status, field_path: String::new(), reason: String::new(), call: String::new() }
        })
        .collect()
}

/// What a caller sent, checked for shape; the source's rules come after.
struct Envelope {
    source: String,
    event_id: String,
    event_name: EventName,
    occurred_at: DateTime<Utc>,
    payload: serde_json::Value,
}

#[allow(clippy::result_large_err)]
fn parse_envelope(
    request: &pb::IngestProductEventRequest,
    now: DateTime<Utc>,
    clock_skew: Duration,
) -> Result<Envelope, Status> {
    let mut bad = BadRequest::new();
    if request.source.is_empty() {
        bad.violation("source", ViolationReason::Required, "is required");
    }
    let id = &request.event_id;
    let id_rule = if id.is_empty() {
        Some(ViolationReason::Required)
    } else if id.chars().count() > MAX_EVENT_ID_LEN {
        Some(ViolationReason::TooLong)
    } else if id.chars().any(char::is_control) {
        Some(ViolationReason::InvalidFormat)
    } else {
        None
    };
    if let Some(rule) = id_rule {
        bad.violation(
            "event_id",
            rule,
            format!("must be 1 to {MAX_EVENT_ID_LEN} characters without control characters"),
        );
    }
    let event_name = EventName::parse(&request.event_name)
        .map_err(|_| {
            let rule =
                if request.event_name.is_empty() { ViolationReason::Required } else { ViolationReason::UnknownValue };
            bad.violation("event_name", rule, format!("unknown event {}", echo(&request.event_name)))
        })
        .ok();
    let latest = now.checked_add_signed(chrono::Duration::from_std(clock_skew).unwrap_or_default()).unwrap_or(now);
    let occurred_at = match &request.occurred_at {
        None => {
            bad.violation("occurred_at", ViolationReason::Required, "is required");
            None
        }
        Some(ts) => match from_timestamp(ts) {
            Err(e) => {
                bad.violation("occurred_at", ViolationReason::OutOfRange, e);
                None
            }
            Ok(at) if at > latest => {
                bad.violation("occurred_at", ViolationReason::OutOfRange, format!("{at} is in the future (now {now})"));
                None
            }
            // Kept to the microsecond, as stored, so a replay compares equal.
            Ok(at) => Some(crate::store::stored_time(at)),
        },
    };
    let payload = match &request.payload {
        None => {
            bad.violation("payload", ViolationReason::Required, "is required");
            None
        }
        Some(payload) => Some(kit::json::from_struct(payload)),
    };
    bad.into_result()?;
    match (event_name, occurred_at, payload) {
        (Some(event_name), Some(occurred_at), Some(payload)) => Ok(Envelope {
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

/// Identifies a payload: the same event sent twice hashes the same (JSON
/// objects are sorted by key).
fn payload_hash(envelope: &Envelope) -> String {
    let canonical = serde_json::json!({
        "event_name": envelope.event_name.as_str(),
        "occurred_at": envelope.occurred_at.timestamp_micros(),
        "payload": envelope.payload,
    });
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

#[tonic::async_trait]
impl CatalogIngestService for CatalogIngestApi {
    async fn ingest_product_event(
        &self,
        request: Request<pb::IngestProductEventRequest>,
    ) -> Result<Response<pb::IngestProductEventResponse>, Status> {
        let envelope = parse_envelope(request.get_ref(), Utc::now(), self.clock_skew)?;
        let Some(transformer) = self.sources.get(&envelope.source) else {
            let known: Vec<&str> = self.sources.names().take(20).collect();
            return Err(Status::not_found(format!(
                "unknown source {}; configured sources: {}",
                echo(&envelope.source),
                known.join(", ")
            )));
        };
        if let Err(wait) = self.quotas.check(&envelope.source).await {
            self.throttled.get_or_create(&SourceLabel { source: envelope.source.clone() }).inc();
            return Err(kit::error::throttled(
                format!("source {} is over its quota; retry after {wait:?}", envelope.source),
                wait,
            ));
        }
        // Admission order: the per-source quota first (cheap, and a flooding
        // source is refused before it takes room), then the shared gate. A
        // replay counts against the quota like any call.
        let Some(admitted) = self.gate.enter().await else {
            return Err(kit::error::throttled("the catalog is busy; retry shortly", SHED_RETRY_AFTER));
        };
        let hash = payload_hash(&envelope);
        if let Some(existing) =
            self.store.find_ingestion(&envelope.source, &envelope.event_id).await.map_err(store_status)?
        {
            return Self::replay(existing, &hash);
        }
        let new = NewIngestion {
            id: uuid::Uuid::now_v7().to_string(),
            source: envelope.source.clone(),
            event_id: envelope.event_id.clone(),
            event_name: envelope.event_name,
            occurred_at: envelope.occurred_at,
            payload_hash: hash.clone(),
        };
        let now = Utc::now();
        let transformed = transformer
            .check(envelope.event_name, &envelope.payload)
            .map_err(|violations| failed_step(Step::Validate, &violations))
            .and_then(|()| {
                transformer
                    .transform(envelope.event_name, &envelope.payload)
                    .map_err(|violations| failed_step(Step::Transform, &violations))
            });
        let event: CanonicalEvent = match transformed {
            Ok(event) => event,
            Err(failed) => {
                let recorded =
                    self.store.record_failure(&new, &steps_failing_at(failed), now).await.map_err(store_status)?;
                drop(admitted);
                return match recorded {
                    Recorded::New(ingestion) => answer(ingestion),
                    Recorded::Existing(existing) => Self::replay(existing, &hash),
                };
            }
        };
        let applied = self.store.apply(&new, &event, now).await.map_err(store_status);
        // The database work is done: the downstream calls must not hold the gate.
        drop(admitted);
        let mut ingestion = match applied? {
            Recorded::New(ingestion) => ingestion,
            Recorded::Existing(existing) => return Self::replay(existing, &hash),
        };
        if ingestion.state == IngestionState::Applied
            && let Some(discovery) = &self.discovery
        {
            let calls = discovery.push(&event).await;
            if !calls.is_empty() {
                if let Err(error) = self.store.append_steps(&ingestion.id, &calls).await {
                    tracing::error!(%error, ingestion = %ingestion.id, "could not record the discovery calls");
                }
                ingestion.steps.extend(calls);
            }
        }
        answer(ingestion)
    }

    async fn get_product(
        &self,
        request: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::GetProductResponse>, Status> {
        let key = required("product_key", &request.get_ref().product_key)?;
        match self.store.get_product(&key).await.map_err(store_status)? {
            Some(product) => Ok(Response::new(pb::GetProductResponse { product: Some(product_to_proto(&product)) })),
            None => Err(Status::not_found(format!("no product {key}"))),
        }
    }

    async fn list_products(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        let request = request.get_ref();
        let mut bad = BadRequest::new();
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => {
                bad.violation("page_size", ViolationReason::OutOfRange, "must not be negative");
                DEFAULT_PAGE_SIZE
            }
            n => n.min(MAX_PAGE_SIZE),
        };
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
        let after = match request.page_token.as_str() {
            "" => None,
            token => match token.strip_prefix("after:") {
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
        let source = Some(request.source.as_str()).filter(|s| !s.is_empty());
        let mut products = self
            .store
            .list_products(source, product_type, after.as_deref(), i64::from(page_size) + 1)
            .await
            .map_err(store_status)?;
        let next_page_token = if products.len() > page_size as usize {
            products.truncate(page_size as usize);
            products.last().map(|p| format!("after:{}", p.course.product_key)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListProductsResponse {
            products: products.iter().map(product_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn get_course_run(
        &self,
        request: Request<pb::GetCourseRunRequest>,
    ) -> Result<Response<pb::GetCourseRunResponse>, Status> {
        let key = required("course_run_key", &request.get_ref().course_run_key)?;
        match self.store.get_course_run(&key).await.map_err(store_status)? {
            Some((run, product_key, retired)) => Ok(Response::new(pb::GetCourseRunResponse {
                course_run: Some(run_to_proto(&run, &product_key)),
                product_retired: retired,
            })),
            None => Err(Status::not_found(format!("no course run {key}"))),
        }
    }

    async fn get_ingestion(
        &self,
        request: Request<pb::GetIngestionRequest>,
    ) -> Result<Response<pb::GetIngestionResponse>, Status> {
        let id = required("ingestion_id", &request.get_ref().ingestion_id)?;
        match self.store.get_ingestion(&id).await.map_err(store_status)? {
            Some(ingestion) => {
                Ok(Response::new(pb::GetIngestionResponse { ingestion: Some(ingestion_to_proto(&ingestion)) }))
            }
            None => Err(Status::not_found(format!("no ingestion {id}"))),
        }
    }
}

#[allow(clippy::result_large_err)]
fn required(field: &str, value: &str) -> Result<String, Status> {
    let mut bad = BadRequest::new();
    let rule = if value.is_empty() { ViolationReason::Required } else { ViolationReason::TooLong };
    if value.is_empty() || value.len() > 255 {
        bad.violation(field, rule, "must be 1 to 255 characters");
    }
    bad.into_result()?;
    Ok(value.to_string())
}

fn store_status(error: crate::store::StoreError) -> Status {
    match error {
        crate::store::StoreError::Database(error) => kit::db::store_status("the catalog store", &error),
        other => {
            tracing::error!(error = %other, "the catalog store could not read a record back");
            Status::internal("the catalog store could not read a record back; this is logged")
        }
    }
}

fn step_name(step: Step) -> &'static str {
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

fn ingestion_to_proto(ingestion: &Ingestion) -> pb::Ingestion {
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

fn run_to_proto(run: &crate::domain::CourseRun, product_key: &str) -> pb::CourseRun {
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

fn product_to_proto(product: &Product) -> pb::Product {
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
