//! CatalogIngest over gRPC, on Postgres and on SQLite, with the shipped
//! example sources and their example payloads: the steps and their order,
//! replays, stale events, failures that write nothing, the per-source throttle,
//! the concurrency gate, reads, and the optional discovery downstream (a
//! wiremock server over real HTTP).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use catalog_ingest::CatalogIngestApi;
use catalog_ingest::discovery::{Discovery, DiscoveryConfig};
use catalog_ingest::transform::Sources;
use kit::client::TracedChannel;
use kit::db::{Backend, Database};
use kit::serve::GrpcServer;
use kit::shutdown::Shutdown;
use kit::testing::TestDatabase;
use kit::throttle::ConcurrencyGate;
use proto::commerce::catalog::v1 as pb;
use proto::commerce::catalog::v1::catalog_ingest_service_client::CatalogIngestServiceClient;
use proto::commerce::catalog::v1::catalog_ingest_service_server::CatalogIngestServiceServer;
use tonic::Code;
use tonic_types::StatusExt;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

type Client = CatalogIngestServiceClient<TracedChannel>;

struct Fixture {
    client: Client,
    gate: ConcurrencyGate,
    shutdown: Shutdown,
    _db: TestDatabase,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn sources_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config/catalog/sources")
}

fn example(source: &str, event: &str) -> serde_json::Value {
    let file = sources_dir().join("examples").join(source).join(format!("{event}.json"));
    serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap()
}

/// The shipped sources, with quotas tightened for the throttle test.
fn sources(tight_quotas: bool) -> Sources {
    let files = ["exec-ed-partner", "bootcamp-hub"].map(|name| {
        let text = std::fs::read_to_string(sources_dir().join(format!("{name}.toml"))).unwrap();
        let text = if tight_quotas { tighten(&text) } else { text };
        (format!("{name}.toml"), text)
    });
    Sources::from_files(files).unwrap()
}

/// Sets the file's quota to 1/s with a burst of 3.
fn tighten(text: &str) -> String {
    text.lines()
        .map(|line| {
            if line.starts_with("rate_per_second") {
                "rate_per_second = 1".to_string()
            } else if line.starts_with("burst") {
                "burst = 3".to_string()
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn fixture(backend: Backend) -> Fixture {
    fixture_with(backend, sources(false), None).await
}

async fn fixture_with(backend: Backend, sources: Sources, discovery: Option<&MockServer>) -> Fixture {
    let db = TestDatabase::new(backend, catalog_ingest::NAME).await;
    kit::db::migrate(db.config(), &catalog_ingest::MIGRATIONS).await.expect("migrate");
    let database = Database::open(db.config()).expect("open");
    let gate = ConcurrencyGate::new(4, Duration::from_millis(50));
    let discovery = discovery.map(|server| {
        Discovery::new(&DiscoveryConfig { url: Some(server.uri()), timeout: None }).unwrap().expect("configured")
    });
    let api = CatalogIngestApi::new(
        catalog_ingest::store::for_database(&database),
        Arc::new(sources),
        gate.clone(),
        discovery,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let shutdown = Shutdown::new();
    tokio::spawn(GrpcServer::new("catalog-test").service(CatalogIngestServiceServer::new(api)).run(
        listener,
        async { Ok::<(), std::io::Error>(()) },
        shutdown.clone(),
    ));
    Fixture { client: CatalogIngestServiceClient::new(kit::client::channel(&url).unwrap()), gate, shutdown, _db: db }
}

fn to_struct(json: &serde_json::Value) -> prost_types::Struct {
    kit::json::to_struct(json).expect("an object")
}

fn event(
    source: &str,
    event_id: &str,
    name: &str,
    seconds: i64,
    payload: &serde_json::Value,
) -> pb::IngestProductEventRequest {
    pb::IngestProductEventRequest {
        source: source.into(),
        event_id: event_id.into(),
        event_name: name.into(),
        occurred_at: Some(prost_types::Timestamp { seconds, nanos: 0 }),
        payload: Some(to_struct(payload)),
    }
}

const EXEC: &str = "exec-ed-partner";
const PRODUCT: &str = "NorthbridgeX+LSC-201";
const RUN: &str = "course-v1:NorthbridgeX+LSC-201+2026-03";

impl Fixture {
    async fn ingest(&self, request: pb::IngestProductEventRequest) -> Result<pb::Ingestion, tonic::Status> {
        self.client.clone().ingest_product_event(request).await.map(|r| r.into_inner().ingestion.unwrap())
    }

    async fn product(&self, key: &str) -> Result<pb::Product, tonic::Status> {
        let request = pb::GetProductRequest { product_key: key.into() };
        self.client.clone().get_product(request).await.map(|r| r.into_inner().product.unwrap())
    }
}

fn statuses(ingestion: &pb::Ingestion) -> Vec<(pb::IngestStep, pb::StepStatus)> {
    ingestion.steps.iter().map(|s| (s.step(), s.status())).collect()
}

fn failure(status: &tonic::Status) -> (String, Vec<String>) {
    let info = status.get_details_error_info().expect("ErrorInfo");
    let fields = kit::error::field_violations(status).into_iter().map(|(f, _)| f).collect();
    (info.metadata.get("step").cloned().unwrap_or_default(), fields)
}

use pb::IngestStep as S;
use pb::StepStatus as St;

async fn a_product_is_applied_step_by_step_and_reads_back(f: Fixture) {
    let ingestion =
        f.ingest(event(EXEC, "e-1", "product.upserted", 1_000, &example(EXEC, "product.upserted"))).await.unwrap();
    assert_eq!(ingestion.state(), pb::IngestionState::Applied);
    assert_eq!(
        statuses(&ingestion),
        [
            (S::Validate, St::Ok),
            (S::Transform, St::Ok),
            (S::Instructors, St::Ok),
            (S::Course, St::Ok),
            (S::CourseRuns, St::Ok),
            (S::Seats, St::Ok),
        ]
    );
    assert_eq!(ingestion.product_key, PRODUCT);

    let product = f.product(PRODUCT).await.unwrap();
    assert_eq!((product.title.as_str(), product.source.as_str()), ("Leading Strategic Change", EXEC));
    assert_eq!(product.r#type(), pb::ProductType::ExecutiveEducation);
    assert_eq!(product.instructors.len(), 2);
    assert_eq!(product.course_runs.len(), 3, "2026-03, 2026-SP and ON-DEMAND");
    assert_eq!(product.source_update_time.unwrap().seconds, 1_000);

    let run = f
        .client
        .clone()
        .get_course_run(pb::GetCourseRunRequest { course_run_key: RUN.into() })
        .await
        .unwrap()
        .into_inner();
    assert!(!run.product_retired);
    let run = run.course_run.unwrap();
    assert_eq!(run.pacing(), pb::Pacing::InstructorPaced);
    let price = run.seats[0].price.clone().unwrap();
    assert_eq!((price.currency_code.as_str(), price.amount.as_str()), ("USD", "2450.00"), "exact decimal, coerced");

    let read = f
        .client
        .clone()
        .get_ingestion(pb::GetIngestionRequest { ingestion_id: ingestion.ingestion_id.clone() })
        .await
        .unwrap()
        .into_inner()
        .ingestion
        .unwrap();
    assert_eq!(read, ingestion);
}

async fn a_replay_answers_the_first_result_and_a_changed_one_is_refused(f: Fixture) {
    let payload = example(EXEC, "product.upserted");
    let first = f.ingest(event(EXEC, "e-2", "product.upserted", 1_000, &payload)).await.unwrap();
    let again = f.ingest(event(EXEC, "e-2", "product.upserted", 1_000, &payload)).await.unwrap();
    assert_eq!(again, first, "the first result, not a second application");
    let mut changed = payload.clone();
    changed["course"]["title"] = "Another title".into();
    let refused = f.ingest(event(EXEC, "e-2", "product.upserted", 1_000, &changed)).await.unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists);
    assert_eq!(f.product(PRODUCT).await.unwrap().title, "Leading Strategic Change");
}

async fn an_older_event_is_recorded_and_skipped(f: Fixture) {
    let payload = example(EXEC, "product.upserted");
    f.ingest(event(EXEC, "new", "product.upserted", 2_000, &payload)).await.unwrap();
    let mut older = payload.clone();
    older["course"]["title"] = "An outdated title".into();
    let stale = f.ingest(event(EXEC, "old", "product.upserted", 1_000, &older)).await.unwrap();
    assert_eq!(stale.state(), pb::IngestionState::SkippedStale);
    let product = f.product(PRODUCT).await.unwrap();
    assert_eq!(product.title, "Leading Strategic Change", "never applied over newer data");
    assert_eq!(product.source_update_time.unwrap().seconds, 2_000);
    let mut newer = payload.clone();
    newer["course"]["title"] = "A newer title".into();
    f.ingest(event(EXEC, "newer", "product.upserted", 3_000, &newer)).await.unwrap();
    assert_eq!(f.product(PRODUCT).await.unwrap().title, "A newer title");
}

async fn a_payload_missing_what_the_source_requires_fails_validate_and_writes_nothing(f: Fixture) {
    let mut payload = example(EXEC, "product.upserted");
    payload["course"].as_object_mut().unwrap().remove("title");
    let status = f.ingest(event(EXEC, "bad-1", "product.upserted", 1_000, &payload)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let (step, fields) = failure(&status);
    assert_eq!(step, "VALIDATE");
    assert!(fields.iter().any(|f| f.contains("title")), "{fields:?}");
    assert_eq!(f.product(PRODUCT).await.unwrap_err().code(), Code::NotFound, "nothing written");
    // The failure is recorded, and a replay answers it again.
    let again = f.ingest(event(EXEC, "bad-1", "product.upserted", 1_000, &payload)).await.unwrap_err();
    assert_eq!(failure(&again), failure(&status));
}

async fn a_run_ending_before_it_starts_fails_transform_naming_the_field(f: Fixture) {
    let mut payload = example(EXEC, "product.upserted");
    payload["variants"][1]["ends_on"] = "2026-01-01".into();
    let status = f.ingest(event(EXEC, "bad-2", "product.upserted", 1_000, &payload)).await.unwrap_err();
    let (step, fields) = failure(&status);
    assert_eq!(step, "TRANSFORM");
    assert!(fields.iter().any(|f| f.contains("[1]") && f.contains("end")), "{fields:?}");
    assert_eq!(f.product(PRODUCT).await.unwrap_err().code(), Code::NotFound);
}

async fn text_the_database_cannot_hold_is_refused_before_any_write(f: Fixture) {
    let mut payload = example(EXEC, "product.upserted");
    payload["course"]["title"] = "Leading\u{0}Change".into();
    payload["course"]["code"] = "X".repeat(300).into();
    let status = f.ingest(event(EXEC, "nul", "product.upserted", 1_000, &payload)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let (step, fields) = failure(&status);
    assert_eq!(step, "TRANSFORM");
    for field in ["title", "product_key", "number"] {
        assert!(fields.contains(&field.to_string()), "{field} in {fields:?}");
    }
}

async fn a_failing_write_step_leaves_nothing_written(f: Fixture) {
    // A run for a product the catalog does not have: the COURSE_RUNS step fails.
    let status = f
        .ingest(event(EXEC, "orphan", "course_run.upserted", 1_000, &example(EXEC, "course_run.upserted")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let (step, _) = failure(&status);
    assert_eq!(step, "COURSE_RUNS");
    let info = status.get_details_error_info().unwrap();
    let recorded = f
        .client
        .clone()
        .get_ingestion(pb::GetIngestionRequest { ingestion_id: info.metadata["ingestion_id"].clone() })
        .await
        .unwrap()
        .into_inner()
        .ingestion
        .unwrap();
    assert_eq!(recorded.state(), pb::IngestionState::Failed);
    let failed: Vec<_> = recorded.steps.iter().filter(|s| s.status() == St::Failed).collect();
    assert_eq!((failed.len(), failed[0].step()), (1, S::CourseRuns));
    let run_key = recorded.steps.iter().find(|s| s.step() == S::CourseRuns).unwrap();
    assert!(!run_key.reason.is_empty());
    let missing = f.client.clone().get_course_run(pb::GetCourseRunRequest { course_run_key: RUN.into() }).await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound);
}

async fn bad_envelopes_and_unknown_sources_are_refused(f: Fixture) {
    let payload = example(EXEC, "product.upserted");
    let unknown = f.ingest(event("nobody", "e", "product.upserted", 1, &payload)).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(unknown.message().contains(EXEC), "names the configured sources: {}", unknown.message());
    for (field, request) in [
        ("event_name", event(EXEC, "e", "product.deleted", 1, &payload)),
        ("event_id", event(EXEC, "", "product.upserted", 1, &payload)),
        (
            "occurred_at",
            pb::IngestProductEventRequest { occurred_at: None, ..event(EXEC, "e", "product.upserted", 1, &payload) },
        ),
        (
            "payload",
            pb::IngestProductEventRequest { payload: None, ..event(EXEC, "e", "product.upserted", 1, &payload) },
        ),
        (
            "occurred_at",
            pb::IngestProductEventRequest {
                // Far in the future, it would make every later event stale.
                occurred_at: Some(prost_types::Timestamp { seconds: 253_402_300_799, nanos: 0 }),
                ..event(EXEC, "e", "product.upserted", 1, &payload)
            },
        ),
        (
            "occurred_at",
            pb::IngestProductEventRequest {
                occurred_at: Some(prost_types::Timestamp { seconds: 0, nanos: -1 }),
                ..event(EXEC, "e", "product.upserted", 1, &payload)
            },
        ),
    ] {
        let status = f.ingest(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        let fields: Vec<String> = kit::error::field_violations(&status).into_iter().map(|(f, _)| f).collect();
        assert!(fields.contains(&field.to_string()), "{field} in {fields:?}");
    }
}

async fn each_source_gets_its_burst_then_its_quota_independently(f: Fixture) {
    let exec = example(EXEC, "course.upserted");
    let started = std::time::Instant::now();
    let mut admitted = 0;
    let throttled = loop {
        match f.ingest(event(EXEC, &format!("t-{admitted}"), "course.upserted", 1_000 + admitted, &exec)).await {
            Ok(_) => admitted += 1,
            Err(status) => break status,
        }
        assert!(admitted <= 20, "never throttled");
    };
    // The burst of 3, plus what the 1/s quota refilled meanwhile (normally nothing).
    let refilled = started.elapsed().as_secs() as i64;
    assert!((3..=3 + refilled).contains(&admitted), "{admitted} admitted in {:?}", started.elapsed());
    assert_eq!(throttled.code(), Code::ResourceExhausted);
    let wait = kit::error::retry_after(&throttled).expect("RetryInfo");
    assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
    // The other source has its own quota.
    let bootcamp = example("bootcamp-hub", "course.upserted");
    f.ingest(event("bootcamp-hub", "b-0", "course.upserted", 1_000, &bootcamp)).await.unwrap();
}

async fn a_full_gate_sheds_with_retry_info(f: Fixture) {
    let mut held = Vec::new();
    while let Some(admitted) = f.gate.enter().await {
        held.push(admitted);
    }
    let shed =
        f.ingest(event(EXEC, "shed", "course.upserted", 1, &example(EXEC, "course.upserted"))).await.unwrap_err();
    assert_eq!(shed.code(), Code::ResourceExhausted);
    assert!(kit::error::retry_after(&shed).is_some());
    drop(held);
    f.ingest(event(EXEC, "shed", "course.upserted", 1, &example(EXEC, "course.upserted"))).await.unwrap();
}

async fn products_list_by_source_and_type_in_pages(f: Fixture) {
    f.ingest(event(EXEC, "l-1", "product.upserted", 1, &example(EXEC, "product.upserted"))).await.unwrap();
    f.ingest(event("bootcamp-hub", "l-2", "product.upserted", 1, &example("bootcamp-hub", "product.upserted")))
        .await
        .unwrap();
    let list = |source: &str, product_type: pb::ProductType, page_token: String| {
        let mut client = f.client.clone();
        let request =
            pb::ListProductsRequest { source: source.into(), r#type: product_type as i32, page_size: 1, page_token };
        async move { client.list_products(request).await.unwrap().into_inner() }
    };
    let first = list("", pb::ProductType::Unspecified, String::new()).await;
    assert_eq!(first.products.len(), 1);
    assert!(!first.next_page_token.is_empty());
    let second = list("", pb::ProductType::Unspecified, first.next_page_token.clone()).await;
    assert_eq!(second.products.len(), 1);
    assert!(first.products[0].product_key < second.products[0].product_key, "by key");
    assert!(
        second.next_page_token.is_empty()
            || list("", pb::ProductType::Unspecified, second.next_page_token).await.products.is_empty()
    );
    let exec_only = list(EXEC, pb::ProductType::Unspecified, String::new()).await;
    assert!(exec_only.products.iter().all(|p| p.source == EXEC) && !exec_only.products.is_empty());
    let bootcamps = list("", pb::ProductType::Bootcamp, String::new()).await;
    assert!(bootcamps.products.iter().all(|p| p.source == "bootcamp-hub") && !bootcamps.products.is_empty());
}

async fn discovery_gets_the_same_changes_in_order_and_a_failure_names_its_call(backend: Backend) {
    let discovery = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path(format!("/api/v1/courses/{PRODUCT}/")))
        .respond_with(ResponseTemplate::new(200))
        .mount(&discovery)
        .await;
    Mock::given(method("PUT"))
        .and(path(format!("/api/v1/course_runs/{RUN}/")))
        .respond_with(ResponseTemplate::new(500).set_body_string("boom"))
        .mount(&discovery)
        .await;
    Mock::given(method("PUT")).respond_with(ResponseTemplate::new(200)).mount(&discovery).await;
    let f = fixture_with(backend, sources(false), Some(&discovery)).await;
    let ingestion =
        f.ingest(event(EXEC, "d-1", "product.upserted", 1, &example(EXEC, "product.upserted"))).await.unwrap();
    assert_eq!(ingestion.state(), pb::IngestionState::Applied, "the catalog committed before the downstream calls");
    let calls: Vec<(String, St)> =
        ingestion.steps.iter().filter(|s| s.step() == S::Discovery).map(|s| (s.call.clone(), s.status())).collect();
    assert_eq!(calls[0], (format!("PUT /api/v1/courses/{PRODUCT}/"), St::Ok));
    assert_eq!(calls[1], (format!("PUT /api/v1/course_runs/{RUN}/"), St::Failed));
    assert!(calls[2..].iter().all(|(_, s)| *s == St::Skipped));
    let failed = ingestion.steps.iter().find(|s| s.status() == St::Failed).unwrap();
    assert!(failed.reason.contains("500"), "{}", failed.reason);
    let requests = discovery.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2, "nothing after the failed call");
}

macro_rules! suite {
    ($name:ident, $kind:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn a_product_is_applied_step_by_step_and_reads_back() {
                super::a_product_is_applied_step_by_step_and_reads_back(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_replay_answers_the_first_result_and_a_changed_one_is_refused() {
                super::a_replay_answers_the_first_result_and_a_changed_one_is_refused(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn an_older_event_is_recorded_and_skipped() {
                super::an_older_event_is_recorded_and_skipped(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_payload_missing_what_the_source_requires_fails_validate_and_writes_nothing() {
                super::a_payload_missing_what_the_source_requires_fails_validate_and_writes_nothing(
                    fixture($kind).await,
                )
                .await;
            }
            #[tokio::test]
            async fn a_run_ending_before_it_starts_fails_transform_naming_the_field() {
                super::a_run_ending_before_it_starts_fails_transform_naming_the_field(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn text_the_database_cannot_hold_is_refused_before_any_write() {
                super::text_the_database_cannot_hold_is_refused_before_any_write(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_failing_write_step_leaves_nothing_written() {
                super::a_failing_write_step_leaves_nothing_written(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn bad_envelopes_and_unknown_sources_are_refused() {
                super::bad_envelopes_and_unknown_sources_are_refused(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn each_source_gets_its_burst_then_its_quota_independently() {
                let f = fixture_with($kind, sources(true), None).await;
                super::each_source_gets_its_burst_then_its_quota_independently(f).await;
            }
            #[tokio::test]
            async fn a_full_gate_sheds_with_retry_info() {
                super::a_full_gate_sheds_with_retry_info(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn products_list_by_source_and_type_in_pages() {
                super::products_list_by_source_and_type_in_pages(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn discovery_gets_the_same_changes_in_order_and_a_failure_names_its_call() {
                super::discovery_gets_the_same_changes_in_order_and_a_failure_names_its_call($kind).await;
            }
        }
    };
}

suite!(postgres, Backend::Postgres);
suite!(sqlite, Backend::Sqlite);

/// Two replicas of the API over one database, their quotas in one Redis: a
/// source's burst is spent across both, not once per replica.
#[tokio::test]
async fn replicas_sharing_redis_share_each_source_quota() {
    use kit::throttle::{QuotaMetrics, Quotas, SharedQuotaConfig};
    let db = TestDatabase::new(Backend::Postgres, catalog_ingest::NAME).await;
    kit::db::migrate(db.config(), &catalog_ingest::MIGRATIONS).await.expect("migrate");
    let redis_url = std::env::var("MESH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    // Keys of this test only, so parallel runs do not share a quota.
    let config =
        SharedQuotaConfig { key_prefix: format!("test-{}:", uuid::Uuid::new_v4().simple()), ..Default::default() };
    let shutdown = Shutdown::new();
    let mut replicas = Vec::new();
    // A registry per replica, as each process has its own.
    let registries = [kit::metrics::Metrics::new(), kit::metrics::Metrics::new()];
    for metrics in &registries {
        let sources = Arc::new(sources(true));
        let quotas = Quotas::cluster(&redis_url, sources.quotas(), config.clone(), QuotaMetrics::default()).unwrap();
        let database = Database::open(db.config()).expect("open");
        let api = CatalogIngestApi::new(
            catalog_ingest::store::for_database(&database),
            sources,
            ConcurrencyGate::new(4, Duration::from_millis(50)),
            None,
        )
        .with_quotas(quotas)
        .with_metrics(&metrics.for_component("catalog-ingest"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(GrpcServer::new("catalog-test").service(CatalogIngestServiceServer::new(api)).run(
            listener,
            async { Ok::<(), std::io::Error>(()) },
            shutdown.clone(),
        ));
        replicas.push(CatalogIngestServiceClient::new(kit::client::channel(&url).unwrap()));
    }
    let exec = example(EXEC, "course.upserted");
    let started = std::time::Instant::now();
    let (mut admitted, mut throttled) = (0, Vec::new());
    // Alternate between the replicas until both have refused.
    while throttled.len() < 2 {
        for client in &replicas {
            let request = event(EXEC, &format!("r-{admitted}-{}", throttled.len()), "course.upserted", 1_000, &exec);
            match client.clone().ingest_product_event(request).await {
                Ok(_) => admitted += 1,
                Err(status) => throttled.push(status),
            }
        }
        assert!(admitted <= 20, "never throttled");
    }
    shutdown.cancel();
    // The tightened quota's burst of 3 between both, plus what 1/s refilled meanwhile.
    let refilled = started.elapsed().as_secs() as i64;
    assert!((3..=3 + refilled).contains(&admitted), "{admitted} admitted by two replicas");
    // Each replica counts the refusals it made, by source (the dashboard's throttled-per-source panel).
    let text: String = registries.iter().map(kit::metrics::Metrics::encode).collect();
    let counted: u64 = text
        .lines()
        .filter(|line| line.starts_with("catalog_ingest_source_throttled_total{") && line.contains(EXEC))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(counted, throttled.len() as u64, "{text}");
    for status in throttled {
        assert_eq!(status.code(), Code::ResourceExhausted);
        let wait = kit::error::retry_after(&status).expect("RetryInfo");
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
    }
}
