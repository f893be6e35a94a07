//! PurchaseHistory within the service: RecordPurchase over gRPC appends to the
//! real event bus, the consumer stores each purchase once, and ListPurchases
//! pages it back — on Postgres + Redis Streams and on SQLite + the embedded
//! log. The consumer is driven one round at a time where a test is about what
//! a round does (a crash between insert and ack, redelivery, dead letters).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kit::bus::consumer::{BatchHandler, ConsumerConfig, Verdict};
use kit::bus::{Delivery, EventBus};
use kit::client::TracedChannel;
use kit::db::{Backend, Database};
use kit::serve::GrpcServer;
use kit::shutdown::Shutdown;
use kit::testing::TestDatabase;
use prost::Message;
use proto::commerce::events::v1::{EventEnvelope, PurchaseRecorded, event_envelope::Payload};
use proto::commerce::identity::v1::customer_identity_service_client::CustomerIdentityServiceClient;
use proto::commerce::purchases::v1 as pb;
use proto::commerce::purchases::v1::purchase_history_service_client::PurchaseHistoryServiceClient;
use purchase_history::domain::LearnerKey;
use purchase_history::{Config, PurchaseHistory};
use tonic::Code;

struct Fixture {
    client: PurchaseHistoryServiceClient<TracedChannel>,
    history: Arc<PurchaseHistory>,
    bus: Arc<dyn EventBus>,
    /// This test's own purchases stream, so tests sharing Redis never read each other's entries.
    stream: String,
    shutdown: Shutdown,
    _db: TestDatabase,
    _dir: tempfile::TempDir,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn config(stream: &str) -> Config {
    Config {
        stream: stream.to_string(),
        consumer: ConsumerConfig {
            batch: 100,
            block: Duration::from_millis(100),
            reclaim_idle: Duration::ZERO,
            reclaim_every: Duration::from_secs(3600),
            max_deliveries: 3,
        },
        ..Config::default()
    }
}

async fn fixture(backend: Backend) -> Fixture {
    let db = TestDatabase::new(backend, purchase_history::NAME).await;
    kit::db::migrate(db.config(), &purchase_history::MIGRATIONS).await.expect("migrate");
    let database = Database::open(db.config()).expect("open");
    let dir = tempfile::tempdir().unwrap();
    let redis = matches!(backend, Backend::Postgres).then_some("redis://127.0.0.1:6379");
    let bus = kit::bus::open(redis, &dir.path().join("events.db")).expect("bus");
    // Lists here name the LMS user id; CustomerIdentity is not called.
    let identity = CustomerIdentityServiceClient::new(kit::client::channel("http://127.0.0.1:9").unwrap());
    let stream = format!("test-{}.purchases", uuid::Uuid::new_v4().simple());
    let config = config(&stream);
    let history =
        Arc::new(PurchaseHistory::new(&database, Arc::clone(&bus), identity, &config, &kit::metrics::Metrics::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let shutdown = Shutdown::new();
    tokio::spawn(GrpcServer::new("purchases-test").service(history.service()).run(
        listener,
        async { Ok::<(), std::io::Error>(()) },
        shutdown.clone(),
    ));
    Fixture {
        client: PurchaseHistoryServiceClient::new(kit::client::channel(&url).unwrap()),
        history,
        bus,
        stream,
        shutdown,
        _db: db,
        _dir: dir,
    }
}

/// A learner id no other test (or earlier run) uses, so the shared Redis stream does not mix them.
fn learner() -> i64 {
    i64::from(u32::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..4].try_into().unwrap()) | 1)
}

fn purchase(learner: i64, n: u32) -> pb::Purchase {
    pb::Purchase {
        purchase_id: format!("p-{learner}-{n}"),
        lms_user_id: learner.to_string(),
        username: format!("ada{learner}"),
        order_number: format!("EDX-{n}"),
        product_key: "course-v1:edX+DemoX+T1".into(),
        title: "Demo".into(),
        price: Some(proto::commerce::r#type::v1::Money { currency_code: "USD".into(), amount: "49.00".into() }),
        purchased_at: Some(prost_types::Timestamp { seconds: 1_763_000_000 + i64::from(n), nanos: 0 }),
        source: String::new(),
        ..pb::Purchase::default()
    }
}

impl Fixture {
    async fn record(&self, purchase: pb::Purchase) -> Result<String, tonic::Status> {
        let request = pb::RecordPurchaseRequest { purchase: Some(purchase), ..Default::default() };
        self.client.clone().record_purchase(request).await.map(|r| r.into_inner().purchase_id)
    }

    async fn list(&self, learner: i64, page_size: i32, page_token: String) -> pb::ListPurchasesResponse {
        let request = pb::ListPurchasesRequest {
            learner: Some(pb::list_purchases_request::Learner::LmsUserId(learner.to_string())),
            page_size,
            page_token,
            hide_refunded: false,
        };
        self.client.clone().list_purchases(request).await.unwrap().into_inner()
    }

    /// Consumer rounds until every entry on the stream was handled: read
    /// (blocking on the bus, not sleeping) until a read comes back empty.
    async fn consume(&self, name: &str, handler: &dyn BatchHandler) {
        let consumer = self.history.consumer(name);
        let bus = &self.bus;
        bus.ensure_group(&self.stream, purchase_history::consumer::GROUP).await.unwrap();
        loop {
            let batch = bus
                .read(&self.stream, purchase_history::consumer::GROUP, name, 100, Duration::from_millis(100))
                .await
                .unwrap();
            if batch.is_empty() {
                return;
            }
            consumer.settle(handler, batch).await.unwrap();
        }
    }

    async fn stored(&self, learner: i64) -> Vec<String> {
        let page = self
            .history
            .store()
            .list(&LearnerKey::LmsUserId(vocab::LmsUserId::new(learner).unwrap()), None, 1000)
            .await
            .unwrap();
        page.into_iter().map(|p| p.purchase_id.into()).collect()
    }
}

/// Stores like the real recorder, then "crashes" before the acknowledgement.
struct CrashesBeforeAck {
    inner: purchase_history::consumer::PurchaseRecorder,
    crashed: AtomicBool,
}

#[async_trait::async_trait]
impl BatchHandler for CrashesBeforeAck {
    async fn handle(&self, batch: &[Delivery]) -> Result<Vec<Verdict>, Box<dyn std::error::Error + Send + Sync>> {
        self.inner.handle(batch).await?;
        self.crashed.store(true, Ordering::SeqCst);
        Err("killed after the insert, before the ack".into())
    }
}

async fn a_recorded_purchase_is_stored_once_and_listed(f: Fixture) {
    let learner = learner();
    let id = f.record(purchase(learner, 1)).await.unwrap();
    assert_eq!(f.record(purchase(learner, 1)).await.unwrap(), id, "a repeat answers the same purchase");
    f.consume("c1", &f.history.recorder()).await;
    let listed = f.list(learner, 10, String::new()).await;
    assert_eq!(listed.purchases.len(), 1, "published once, stored once");
    assert_eq!(listed.purchases[0].price.clone().unwrap().amount, "49.00");
}

async fn a_message_delivered_twice_is_stored_once(f: Fixture) {
    let learner = learner();
    for n in 0..3 {
        f.record(purchase(learner, n)).await.unwrap();
    }
    // The same purchases again, under other event ids (another producer, a replay): two deliveries.
    for n in 0..3 {
        let envelope = EventEnvelope {
            event_id: format!("again-{learner}-{n}"),
            event_type: "commerce.events.v1.PurchaseRecorded".into(),
            payload: Some(Payload::PurchaseRecorded(event_of(&purchase(learner, n)))),
            ..Default::default()
        };
        f.bus.publish(&f.stream, &envelope.event_id, &envelope.encode_to_vec()).await.unwrap();
    }
    f.consume("c1", &f.history.recorder()).await;
    assert_eq!(f.stored(learner).await.len(), 3);
}

fn event_of(p: &pb::Purchase) -> PurchaseRecorded {
    PurchaseRecorded {
        purchase_id: p.purchase_id.clone(),
        lms_user_id: p.lms_user_id.clone(),
        username: p.username.clone(),
        order_number: p.order_number.clone(),
        product_key: p.product_key.clone(),
        title: p.title.clone(),
        price: p.price.clone(),
        purchased_at: p.purchased_at,
        source: "test".into(),
    }
}

async fn a_consumer_killed_between_insert_and_ack_causes_no_duplicate(f: Fixture) {
    let learner = learner();
    for n in 0..5 {
        f.record(purchase(learner, n)).await.unwrap();
    }
    let crashing = CrashesBeforeAck { inner: f.history.recorder(), crashed: AtomicBool::new(false) };
    let consumer = f.history.consumer("doomed");
    f.bus.ensure_group(&f.stream, purchase_history::consumer::GROUP).await.unwrap();
    let batch = f
        .bus
        .read(&f.stream, purchase_history::consumer::GROUP, "doomed", 100, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(consumer.settle(&crashing, batch).await.is_err());
    assert!(crashing.crashed.load(Ordering::SeqCst));
    assert_eq!(f.stored(learner).await.len(), 5, "inserted, not acknowledged");
    // Another consumer reclaims what the dead one left pending (reclaim_idle is zero here) and stores it again.
    f.history.consumer("survivor").poll_reclaimed(&f.history.recorder()).await.unwrap();
    assert_eq!(f.stored(learner).await.len(), 5, "no duplicate");
    assert_eq!(
        f.bus.pending(&f.stream, purchase_history::consumer::GROUP).await.unwrap(),
        0,
        "everything acknowledged in the end"
    );
}

async fn invalid_messages_land_in_the_dead_letter_stream_with_reasons(f: Fixture) {
    let learner = learner();
    let mut no_price = event_of(&purchase(learner, 1));
    no_price.price = None;
    let mut bad_user = event_of(&purchase(learner, 2));
    bad_user.lms_user_id = "ada".into();
    let garbage_id = format!("garbage-{learner}");
    for (event_id, bytes) in [
        (
            format!("np-{learner}"),
            EventEnvelope {
                event_id: format!("np-{learner}"),
                payload: Some(Payload::PurchaseRecorded(no_price)),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            format!("bu-{learner}"),
            EventEnvelope {
                event_id: format!("bu-{learner}"),
                payload: Some(Payload::PurchaseRecorded(bad_user)),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (garbage_id.clone(), b"\xff\xfe not protobuf".to_vec()),
    ] {
        f.bus.publish(&f.stream, &event_id, &bytes).await.unwrap();
    }
    f.record(purchase(learner, 3)).await.unwrap();
    f.consume("c1", &f.history.recorder()).await;
    assert_eq!(f.stored(learner).await, [format!("p-{learner}-3")], "the valid one is stored");
    let dead = f.bus.dead_letters(&f.stream, 10_000).await.unwrap();
    let reason = |id: &str| dead.iter().find(|d| d.event_id == id).map(|d| d.reason.clone()).expect("dead-lettered");
    assert!(reason(&format!("np-{learner}")).contains("price"), "{}", reason(&format!("np-{learner}")));
    assert!(reason(&format!("bu-{learner}")).contains("lms_user_id"));
    assert!(reason(&garbage_id).contains("EventEnvelope"));
    let garbage = dead.iter().find(|d| d.event_id == garbage_id).unwrap();
    assert_eq!(garbage.payload, b"\xff\xfe not protobuf", "the original payload is kept");
}

async fn a_message_that_keeps_failing_is_dead_lettered_after_max_deliveries(f: Fixture) {
    struct AlwaysFails;
    #[async_trait::async_trait]
    impl BatchHandler for AlwaysFails {
        async fn handle(&self, _: &[Delivery]) -> Result<Vec<Verdict>, Box<dyn std::error::Error + Send + Sync>> {
            Err("the database is down".into())
        }
    }
    let learner = learner();
    let id = f.record(purchase(learner, 1)).await.unwrap();
    let consumer = f.history.consumer("c1");
    f.bus.ensure_group(&f.stream, purchase_history::consumer::GROUP).await.unwrap();
    let batch = f.bus.read(&f.stream, purchase_history::consumer::GROUP, "c1", 10, Duration::from_millis(100)).await;
    assert!(consumer.settle(&AlwaysFails, batch.unwrap()).await.is_err(), "left pending");
    // Each reclaim delivers it again, until its delivery count passes max_deliveries (3).
    let mut rounds = 0;
    while f.bus.dead_letters(&f.stream, 10).await.unwrap().is_empty() {
        let _ = consumer.poll_reclaimed(&AlwaysFails).await;
        rounds += 1;
        assert!(rounds <= 5, "never dead-lettered");
    }
    assert_eq!(rounds, 3, "deliveries 2 and 3 fail, the 4th is dead-lettered");
    let dead = f.bus.dead_letters(&f.stream, 10).await.unwrap();
    assert_eq!(dead[0].event_id, format!("purchase:{id}"));
    assert!(dead[0].reason.contains("delivered 4 times"), "{}", dead[0].reason);
    assert!(f.stored(learner).await.is_empty());
    assert_eq!(f.bus.pending(&f.stream, purchase_history::consumer::GROUP).await.unwrap(), 0);
}

async fn pages_are_stable_while_new_purchases_arrive(f: Fixture) {
    let learner = learner();
    for n in 0..7 {
        f.record(purchase(learner, n)).await.unwrap();
    }
    f.consume("c1", &f.history.recorder()).await;
    let first = f.list(learner, 3, String::new()).await;
    let ids =
        |page: &pb::ListPurchasesResponse| page.purchases.iter().map(|p| p.purchase_id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&first), [6, 5, 4].map(|n| format!("p-{learner}-{n}")), "newest first");
    // Newer purchases arrive between page fetches.
    for n in 7..10 {
        f.record(purchase(learner, n)).await.unwrap();
    }
    f.consume("c1", &f.history.recorder()).await;
    let second = f.list(learner, 3, first.next_page_token.clone()).await;
    assert_eq!(ids(&second), [3, 2, 1].map(|n| format!("p-{learner}-{n}")));
    let third = f.list(learner, 3, second.next_page_token.clone()).await;
    assert_eq!(ids(&third), [format!("p-{learner}-0")]);
    assert!(third.next_page_token.is_empty());
}

async fn bad_requests_name_their_field(f: Fixture) {
    let mut no_price = purchase(learner(), 1);
    no_price.price = None;
    let status = f.record(no_price).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(kit::error::field_violations(&status).iter().any(|(f, _)| f.contains("price")), "{status:?}");
    let request = pb::ListPurchasesRequest { learner: None, ..Default::default() };
    let status = f.client.clone().list_purchases(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let request = pb::ListPurchasesRequest {
        learner: Some(pb::list_purchases_request::Learner::LmsUserId("1".into())),
        page_size: 0,
        page_token: "not-a-token".into(),
        hide_refunded: false,
    };
    let status = f.client.clone().list_purchases(request).await.unwrap_err();
    assert_eq!(kit::error::field_violations(&status)[0].0, "page_token");
}

macro_rules! suite {
    ($name:ident, $kind:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn a_recorded_purchase_is_stored_once_and_listed() {
                super::a_recorded_purchase_is_stored_once_and_listed(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_message_delivered_twice_is_stored_once() {
                super::a_message_delivered_twice_is_stored_once(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_consumer_killed_between_insert_and_ack_causes_no_duplicate() {
                super::a_consumer_killed_between_insert_and_ack_causes_no_duplicate(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn invalid_messages_land_in_the_dead_letter_stream_with_reasons() {
                super::invalid_messages_land_in_the_dead_letter_stream_with_reasons(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_message_that_keeps_failing_is_dead_lettered_after_max_deliveries() {
                super::a_message_that_keeps_failing_is_dead_lettered_after_max_deliveries(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn pages_are_stable_while_new_purchases_arrive() {
                super::pages_are_stable_while_new_purchases_arrive(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn bad_requests_name_their_field() {
                super::bad_requests_name_their_field(fixture($kind).await).await;
            }
        }
    };
}

suite!(postgres, Backend::Postgres);
suite!(sqlite, Backend::Sqlite);
