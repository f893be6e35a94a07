//! The gRPC face of CatalogIngest: admit (source known, within its quota,
//! room under the concurrency gate), answer replays from the first result,
//! then VALIDATE and TRANSFORM with the source's transformer, then the store's
//! ordered writes, then the optional discovery calls. No SQL here, and no
//! field-by-field parsing: requests become values in `convert`.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use kit::error::{ViolationReason, with_reason};
use kit::throttle::{ConcurrencyGate, Quotas};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use proto::commerce::catalog::v1 as pb;
use proto::commerce::catalog::v1::catalog_ingest_service_server::CatalogIngestService;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::convert::{
    Envelope, ProductQuery, echo, ingestion_to_proto, lookup_key, product_to_proto, run_to_proto, step_name,
};
use crate::discovery::Discovery;
use crate::domain::{CanonicalEvent, Violation};
use crate::store::{Ingestion, IngestionState, Recorded, Step, StepResult, StepStatus, Store};
use crate::transform::{SourceTransformer, Sources};

/// How long a shed caller is told to wait.
const SHED_RETRY_AFTER: Duration = Duration::from_secs(1);
/// How far in the future `occurred_at` may be unless configured otherwise.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(300);

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

    /// The source's transformer; NOT_FOUND for a source no file declares.
    #[allow(clippy::result_large_err)]
    fn transformer(&self, source: &str) -> Result<&SourceTransformer, Status> {
        self.sources.get(source).ok_or_else(|| {
            let known: Vec<&str> = self.sources.names().take(20).collect();
            Status::not_found(format!("unknown source {}; configured sources: {}", echo(source), known.join(", ")))
        })
    }

    /// RESOURCE_EXHAUSTED (counted by source) when the source is over its quota.
    async fn within_quota(&self, source: &str) -> Result<(), Status> {
        self.quotas.check(source).await.map_err(|wait| {
            self.throttled.get_or_create(&SourceLabel { source: source.to_string() }).inc();
            kit::error::throttled(format!("source {source} is over its quota; retry after {wait:?}"), wait)
        })
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

#[tonic::async_trait]
impl CatalogIngestService for CatalogIngestApi {
    async fn ingest_product_event(
        &self,
        request: Request<pb::IngestProductEventRequest>,
    ) -> Result<Response<pb::IngestProductEventResponse>, Status> {
        let envelope = Envelope::parse(request.get_ref(), Utc::now(), self.clock_skew)?;
        let transformer = self.transformer(envelope.source())?;
        self.within_quota(envelope.source()).await?;
        // Admission order: the per-source quota first (cheap, and a flooding
        // source is refused before it takes room), then the shared gate. A
        // replay counts against the quota like any call.
        let Some(admitted) = self.gate.enter().await else {
            return Err(kit::error::throttled("the catalog is busy; retry shortly", SHED_RETRY_AFTER));
        };
        let new = envelope.new_ingestion();
        if let Some(existing) =
            self.store.find_ingestion(envelope.source(), envelope.event_id()).await.map_err(store_status)?
        {
            return Self::replay(existing, &new.payload_hash);
        }
        let now = Utc::now();
        let event = match validate_and_transform(transformer, &envelope) {
            Ok(event) => event,
            Err(failed) => {
                let recorded =
                    self.store.record_failure(&new, &steps_failing_at(failed), now).await.map_err(store_status)?;
                drop(admitted);
                return match recorded {
                    Recorded::New(ingestion) => answer(ingestion),
                    Recorded::Existing(existing) => Self::replay(existing, &new.payload_hash),
                };
            }
        };
        let applied = self.store.apply(&new, &event, now).await.map_err(store_status);
        // The database work is done: the downstream calls must not hold the gate.
        drop(admitted);
        let mut ingestion = match applied? {
            Recorded::New(ingestion) => ingestion,
            Recorded::Existing(existing) => return Self::replay(existing, &new.payload_hash),
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
        let key = lookup_key("product_key", &request.get_ref().product_key)?;
        match self.store.get_product(&key).await.map_err(store_status)? {
            Some(product) => Ok(Response::new(pb::GetProductResponse { product: Some(product_to_proto(&product)) })),
            None => Err(Status::not_found(format!("no product {key}"))),
        }
    }

    async fn list_products(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        let query = ProductQuery::try_from(request.get_ref())?;
        let rows = self
            .store
            .list_products(query.source(), query.product_type(), query.after_key(), query.page_size().rows_to_read())
            .await
            .map_err(store_status)?;
        let (products, next_page_token) = query.page(rows);
        Ok(Response::new(pb::ListProductsResponse {
            products: products.iter().map(product_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn get_course_run(
        &self,
        request: Request<pb::GetCourseRunRequest>,
    ) -> Result<Response<pb::GetCourseRunResponse>, Status> {
        let key = lookup_key("course_run_key", &request.get_ref().course_run_key)?;
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
        let id = lookup_key("ingestion_id", &request.get_ref().ingestion_id)?;
        match self.store.get_ingestion(&id).await.map_err(store_status)? {
            Some(ingestion) => {
                Ok(Response::new(pb::GetIngestionResponse { ingestion: Some(ingestion_to_proto(&ingestion)) }))
            }
            None => Err(Status::not_found(format!("no ingestion {id}"))),
        }
    }
}

/// VALIDATE, then TRANSFORM, with the source's transformer: the canonical
/// event, or the result of the step that failed.
fn validate_and_transform(transformer: &SourceTransformer, envelope: &Envelope) -> Result<CanonicalEvent, StepResult> {
    transformer
        .check(envelope.event_name(), envelope.payload())
        .map_err(|violations| failed_step(Step::Validate, &violations))?;
    transformer
        .transform(envelope.event_name(), envelope.payload())
        .map_err(|violations| failed_step(Step::Transform, &violations))
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
