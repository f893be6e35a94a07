//! What the Fulfillment service tests share: a fixture with the gRPC API over
//! a real store (Postgres + Redis Streams, or SQLite + the embedded log), a
//! stub LMS over real HTTP (wiremock), and builders of orders.

// Each test crate uses its own part of this module.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fulfillment::domain::RetryPolicy;
use fulfillment::lms::LmsConfig;
use fulfillment::store::{Claimed, Store};
use fulfillment::worker::WorkerConfig;
use fulfillment::{Config, Fulfillment};
use kit::bus::{Delivery, EventBus};
use kit::client::TracedChannel;
use kit::db::{Backend, Database};
use kit::serve::GrpcServer;
use kit::service::Service as _;
use kit::shutdown::Shutdown;
use kit::testing::TestDatabase;
use proto::commerce::fulfillment::v1 as pb;
use proto::commerce::fulfillment::v1::fulfillment_service_client::FulfillmentServiceClient;
use proto::commerce::identity::v1::customer_identity_service_client::CustomerIdentityServiceClient;
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

pub const ENROLL: &str = "/api/enrollment/v1/enrollment";
pub const ENTITLE: &str = "/api/entitlements/v1/entitlements/";

pub struct Fixture {
    pub client: FulfillmentServiceClient<TracedChannel>,
    pub fulfillment: Arc<Fulfillment>,
    pub bus: Arc<dyn EventBus>,
    pub lms: MockServer,
    pub metrics: kit::metrics::Metrics,
    pub shutdown: Shutdown,
    _db: TestDatabase,
    _dir: tempfile::TempDir,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn policy() -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_secs(2),
        cap: Duration::from_secs(60),
        max_attempts: 5,
        ..RetryPolicy::default()
    }
}

pub async fn fixture(backend: Backend) -> Fixture {
    fixture_with(backend, policy()).await
}

pub async fn fixture_with(backend: Backend, policy: RetryPolicy) -> Fixture {
    fixture_configured(backend, policy, |_| {}).await
}

/// The fixture with its configuration changed by `change` (webhooks, say) before Fulfillment starts.
pub async fn fixture_configured(backend: Backend, policy: RetryPolicy, change: impl FnOnce(&mut Config)) -> Fixture {
    let db = TestDatabase::new(backend, fulfillment::NAME).await;
    kit::db::migrate(db.config(), &fulfillment::MIGRATIONS).await.expect("migrate");
    let database = Database::open(db.config()).expect("open");
    let dir = tempfile::tempdir().unwrap();
    let bus = match backend {
        Backend::Postgres => kit::bus::open(Some("redis://127.0.0.1:6379"), &dir.path().join("events.db")),
        Backend::Sqlite => kit::bus::open(None, &dir.path().join("events.db")),
    }
    .expect("bus");
    let lms = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth2/access_token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "t1", "expires_in": 3600, "token_type": "JWT"})),
        )
        .mount(&lms)
        .await;
    let mut config = Config {
        lms: LmsConfig {
            url: lms.uri(),
            client_id: "fulfillment".into(),
            client_secret: "s3cret".into(),
            request_timeout: Duration::from_millis(500),
            ..LmsConfig::default()
        },
        retry: policy,
        // Long enough that a test finishing depends on being woken, not on polling.
        workers: WorkerConfig { concurrency: 4, lease: Duration::from_secs(30), idle_poll: Duration::from_secs(60) },
        ..Config::default()
    };
    change(&mut config);
    // Orders in these tests name the LMS user directly; CustomerIdentity is not called.
    let identity = CustomerIdentityServiceClient::new(kit::client::channel("http://127.0.0.1:9").unwrap());
    let metrics = kit::metrics::Metrics::new();
    let fulfillment =
        Arc::new(Fulfillment::new(&database, Arc::clone(&bus), identity, &config, &metrics).expect("fulfillment"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let shutdown = Shutdown::new();
    tokio::spawn(GrpcServer::new("fulfillment-test").service(fulfillment.service()).run(
        listener,
        async { Ok::<(), std::io::Error>(()) },
        shutdown.clone(),
    ));
    Fixture {
        client: FulfillmentServiceClient::new(kit::client::channel(&url).expect("channel")),
        fulfillment,
        bus,
        lms,
        metrics,
        shutdown,
        _db: db,
        _dir: dir,
    }
}

impl Fixture {
    pub fn store(&self) -> &Arc<dyn Store> {
        self.fulfillment.store()
    }

    /// Starts the workers, the relay and the gauges in the background.
    pub fn run_background(&self) {
        let fulfillment = Arc::clone(&self.fulfillment);
        let token = self.shutdown.clone();
        tokio::spawn(async move { fulfillment.run_background(token).await });
    }

    /// Claims the job due at `at` and runs one attempt on it.
    pub async fn attempt_at(&self, at: DateTime<Utc>) -> Claimed {
        let claimed = self.claim_at(at).await;
        self.fulfillment.workers().with_jitter(|| 1.0).attempt(claimed.clone()).await;
        claimed
    }

    pub async fn claim_at(&self, at: DateTime<Utc>) -> Claimed {
        let mut claimed = self.store().claim(1, Duration::from_secs(30), at).await.unwrap();
        assert_eq!(claimed.len(), 1, "one job due at {at}");
        claimed.remove(0)
    }

    pub async fn get(&self, id: &str) -> pb::Fulfillment {
        let request = pb::GetFulfillmentRequest { fulfillment_id: id.into() };
        self.client.clone().get_fulfillment(request).await.unwrap().into_inner().fulfillment.unwrap()
    }

    pub async fn fulfill(&self, request: pb::FulfillOrderRequest) -> Result<pb::FulfillOrderResponse, tonic::Status> {
        self.client.clone().fulfill_order(request).await.map(|r| r.into_inner())
    }

    /// Every entry on `stream` whose event id mentions one of `ids`, waiting
    /// (on the bus's blocking read, not a sleep) until there are `expected`.
    pub async fn events_for(&self, stream: &str, ids: &[String], expected: usize) -> Vec<Delivery> {
        let group = format!("test-{}", uuid::Uuid::new_v4().simple());
        self.bus.ensure_group(stream, &group).await.unwrap();
        let mut mine = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), async {
            while mine.len() < expected {
                let read = self.bus.read(stream, &group, "test", 500, Duration::from_millis(200)).await.unwrap();
                mine.extend(read.into_iter().filter(|d| ids.iter().any(|id| d.event_id.contains(id.as_str()))));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{expected} events on {stream}, got {}", mine.len()));
        // Anything more that is already there would be a duplicate.
        let more = self.bus.read(stream, &group, "test", 500, Duration::ZERO).await.unwrap();
        mine.extend(more.into_iter().filter(|d| ids.iter().any(|id| d.event_id.contains(id.as_str()))));
        mine
    }
}

pub fn now() -> DateTime<Utc> {
    fulfillment::store::stored_time(Utc::now())
}

/// When a PENDING fulfillment is due.
pub fn due(job: &pb::Fulfillment) -> DateTime<Utc> {
    kit::time::from_timestamp(job.next_attempt_time.as_ref().expect("a due time")).unwrap()
}

pub fn order_number() -> String {
    format!("EDX-{}", uuid::Uuid::new_v4().simple())
}

pub fn course_run(line: &str, key: &str, mode: &str) -> pb::LineItem {
    pb::LineItem {
        line_item_id: line.into(),
        product: Some(pb::line_item::Product::CourseRun(pb::CourseRunEnrollment {
            course_run_key: key.into(),
            mode: mode.into(),
            credit_provider_id: if mode == "credit" { "asu".into() } else { String::new() },
        })),
        title: "Demo course".into(),
        price: Some(proto::commerce::r#type::v1::Money { currency_code: "USD".into(), amount: "149.00".into() }),
    }
}

pub fn order(number: &str, lines: Vec<pb::LineItem>) -> pb::FulfillOrderRequest {
    pb::FulfillOrderRequest {
        order_number: number.into(),
        order_id: "ct-7f1c".into(),
        order_version: 4,
        date_placed: Some(prost_types::Timestamp { seconds: 1_763_000_000, nanos: 0 }),
        source_system: "commercetools".into(),
        learner: Some(pb::Learner {
            customer_id: String::new(),
            lms_user_id: "4242".into(),
            lms_username: "ada".into(),
        }),
        email_opt_in: true,
        line_items: lines,
    }
}

pub fn one_line(number: &str) -> pb::FulfillOrderRequest {
    order(number, vec![course_run("l1", "course-v1:edX+DemoX+2025_T1", "verified")])
}

pub async fn lms_answers(f: &Fixture, route: &str, template: ResponseTemplate, times: u64) {
    Mock::given(method("POST")).and(path(route)).respond_with(template).up_to_n_times(times).mount(&f.lms).await;
}

pub async fn calls_to(f: &Fixture, route: &str) -> Vec<Request> {
    f.lms.received_requests().await.unwrap_or_default().into_iter().filter(|r| r.url.path() == route).collect()
}

pub fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}
