//! PurchaseHistory's dead-letter service over gRPC, on Postgres + Redis
//! Streams and on SQLite + the embedded log: a purchase the consumer cannot
//! settle (its store fails) is dead-lettered after its deliveries and an
//! invalid one at once; both are listed decoded with reason and delivery
//! count; once the cause is fixed a replay stores the purchase; a discard
//! with a reason removes the invalid one and keeps who, when and why.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kit::bus::consumer::{BatchHandler, Consumer, ConsumerConfig, ConsumerMetrics, Verdict};
use kit::bus::{Delivery, EventBus};
use kit::client::TracedChannel;
use kit::db::{Backend, Database};
use kit::serve::GrpcServer;
use kit::shutdown::Shutdown;
use kit::testing::TestDatabase;
use prost::Message;
use proto::commerce::events::v1::{EventEnvelope, PurchaseRecorded, event_envelope::Payload};
use proto::commerce::identity::v1::customer_identity_service_client::CustomerIdentityServiceClient;
use proto::commerce::ops::v1 as ops;
use proto::commerce::purchases::v1::purchase_history_dead_letter_service_client::PurchaseHistoryDeadLetterServiceClient;
use purchase_history::consumer::GROUP;
use purchase_history::domain::LearnerKey;
use purchase_history::{Config, PurchaseHistory};
use tonic::Code;

struct Fixture {
    client: PurchaseHistoryDeadLetterServiceClient<TracedChannel>,
    history: Arc<PurchaseHistory>,
    bus: Arc<dyn EventBus>,
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

async fn fixture(backend: Backend) -> Fixture {
    let db = TestDatabase::new(backend, purchase_history::NAME).await;
    kit::db::migrate(db.config(), &purchase_history::MIGRATIONS).await.expect("migrate");
    let database = Database::open(db.config()).expect("open");
    let dir = tempfile::tempdir().unwrap();
    let redis = matches!(backend, Backend::Postgres).then_some("redis://127.0.0.1:6379");
    let bus = kit::bus::open(redis, &dir.path().join("events.db")).expect("bus");
    let identity = CustomerIdentityServiceClient::new(kit::client::channel("http://127.0.0.1:9").unwrap());
    let stream = format!("test-{}.purchases", uuid::Uuid::new_v4().simple());
    let config = Config { stream: stream.clone(), ..Config::default() };
    let history =
        Arc::new(PurchaseHistory::new(&database, Arc::clone(&bus), identity, &config, &kit::metrics::Metrics::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let shutdown = Shutdown::new();
    tokio::spawn(GrpcServer::new("dead-letters-test").service(history.dead_letter_service()).run(
        listener,
        async { Ok::<(), std::io::Error>(()) },
        shutdown.clone(),
    ));
    Fixture {
        client: PurchaseHistoryDeadLetterServiceClient::new(kit::client::channel(&url).unwrap()),
        history,
        bus,
        stream,
        shutdown,
        _db: db,
        _dir: dir,
    }
}

/// The real recorder behind a switch: while `broken`, every batch fails (the
/// store is down), so the consumer leaves it pending until it is dead-lettered.
struct Recorder {
    inner: purchase_history::consumer::PurchaseRecorder,
    broken: AtomicBool,
}

#[async_trait::async_trait]
impl BatchHandler for Recorder {
    async fn handle(&self, batch: &[Delivery]) -> Result<Vec<Verdict>, Box<dyn std::error::Error + Send + Sync>> {
        if self.broken.load(Ordering::SeqCst) {
            return Err("the database is down".into());
        }
        self.inner.handle(batch).await
    }
}

fn envelope(event_id: &str, purchase: PurchaseRecorded) -> Vec<u8> {
    EventEnvelope {
        event_id: event_id.into(),
        event_type: "commerce.events.v1.PurchaseRecorded".into(),
        payload: Some(Payload::PurchaseRecorded(purchase)),
        ..Default::default()
    }
    .encode_to_vec()
}

fn purchase(id: &str, learner: i64) -> PurchaseRecorded {
    PurchaseRecorded {
        purchase_id: id.into(),
        lms_user_id: learner.to_string(),
        username: format!("ada{learner}"),
        order_number: "EDX-1".into(),
        product_key: "course-v1:edX+DemoX+T1".into(),
        title: "Demo".into(),
        price: Some(proto::commerce::r#type::v1::Money { currency_code: "USD".into(), amount: "49.00".into() }),
        purchased_at: Some(prost_types::Timestamp { seconds: 1_763_000_000, nanos: 0 }),
        source: "test".into(),
    }
}

impl Fixture {
    fn consumer(&self) -> Consumer {
        let config = ConsumerConfig {
            batch: 100,
            block: Duration::from_millis(50),
            reclaim_idle: Duration::ZERO,
            reclaim_every: Duration::from_secs(3600),
            max_deliveries: 2,
        };
        Consumer::new(Arc::clone(&self.bus), &self.stream, GROUP, "c1", config, ConsumerMetrics::default())
    }

    /// Reads, then reclaims, until nothing is left pending or new (each round's
    /// failures leave entries pending; past `max_deliveries` they are dead-lettered).
    async fn consume(&self, handler: &dyn BatchHandler) {
        let consumer = self.consumer();
        self.bus.ensure_group(&self.stream, GROUP).await.unwrap();
        for _ in 0..10 {
            let batch = self.bus.read(&self.stream, GROUP, "c1", 100, Duration::from_millis(50)).await.unwrap();
            let _ = consumer.settle(handler, batch).await;
            let _ = consumer.poll_reclaimed(handler).await;
            if self.bus.pending(&self.stream, GROUP).await.unwrap() == 0 {
                return;
            }
        }
        panic!("entries left pending after ten rounds");
    }

    async fn list(&self, discarded: bool) -> Vec<ops::DeadLetter> {
        let request = ops::ListDeadLettersRequest { stream: self.stream.clone(), discarded, ..Default::default() };
        self.client.clone().list_dead_letters(request).await.unwrap().into_inner().dead_letters
    }

    async fn stored(&self, learner: i64) -> Vec<String> {
        let key = LearnerKey::LmsUserId(vocab::LmsUserId::new(learner).unwrap());
        let page = self.history.store().list(&key, None, 100).await.unwrap();
        page.into_iter().map(|p| p.purchase_id.into()).collect()
    }
}

fn fields(status: &tonic::Status) -> Vec<String> {
    kit::error::field_violations(status).into_iter().map(|(field, _)| field).collect()
}

async fn dead_letters_are_listed_replayed_once_fixed_and_discarded(f: Fixture) {
    let learner = i64::from(u32::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..4].try_into().unwrap()) | 1);
    let good = format!("p-{learner}-good");
    f.bus.publish(&f.stream, "evt-good", &envelope("evt-good", purchase(&good, learner))).await.unwrap();
    let mut no_price = purchase(&format!("p-{learner}-bad"), learner);
    no_price.price = None;
    f.bus.publish(&f.stream, "evt-bad", &envelope("evt-bad", no_price)).await.unwrap();

    // The store is down: the good one is dead-lettered once over-delivered.
    let recorder = Recorder { inner: f.history.recorder(), broken: AtomicBool::new(true) };
    f.consume(&recorder).await;
    assert!(f.stored(learner).await.is_empty());
    // The store is back: the invalid one is refused at once.
    recorder.broken.store(false, Ordering::SeqCst);
    let listed = f.list(false).await;
    assert_eq!(listed.len(), 2, "both over-delivered while the store was down: {listed:?}");
    let worn = listed.iter().find(|l| l.event_id == "evt-good").unwrap();
    assert_eq!(worn.group, GROUP);
    assert_eq!(worn.delivery_count, Some(3));
    assert!(worn.reason.contains("delivered 3 times"), "{}", worn.reason);
    assert_eq!(worn.event_type, "commerce.events.v1.PurchaseRecorded");
    let payload = kit::dead_letters::struct_to_json(worn.payload.as_ref().unwrap());
    assert_eq!(payload["purchase_recorded"]["purchase_id"], good.as_str(), "{payload}");
    assert_eq!(payload["purchase_recorded"]["price"]["amount"], "49.00");
    let (first, last) = (worn.first_seen.unwrap(), worn.dead_lettered_at.unwrap());
    assert!((first.seconds, first.nanos) <= (last.seconds, last.nanos));

    // Replayed now that the cause is fixed: both handled again; the good one is
    // stored, the invalid one refused for good (a new dead letter).
    let ids: Vec<String> = listed.iter().map(|l| l.id.clone()).collect();
    let replayed = f
        .client
        .clone()
        .replay_dead_letters(ops::ReplayDeadLettersRequest {
            stream: f.stream.clone(),
            ids: ids.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(replayed.outcomes.iter().all(|o| o.found && !o.new_entry_id.is_empty()), "{replayed:?}");
    f.consume(&recorder).await;
    assert_eq!(f.stored(learner).await, [good], "processed once fixed");
    let left = f.list(false).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].event_id, "evt-bad");
    assert!(left[0].reason.contains("price"), "{}", left[0].reason);
    assert_eq!(left[0].delivery_count, Some(1));
    assert!(!ids.contains(&left[0].id), "a new dead letter");

    // Replaying the same ids again finds nothing: reported per id.
    let again = f
        .client
        .clone()
        .replay_dead_letters(ops::ReplayDeadLettersRequest {
            stream: f.stream.clone(),
            ids: ids.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.outcomes.iter().all(|o| !o.found), "{again:?}");

    // Bad input names the field and changes nothing.
    let mut client = f.client.clone();
    let status = client
        .discard_dead_letters(ops::DiscardDeadLettersRequest {
            stream: f.stream.clone(),
            ids: vec![left[0].id.clone()],
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!((status.code(), fields(&status)), (Code::InvalidArgument, vec!["reason".to_string()]));
    let status = client
        .list_dead_letters(ops::ListDeadLettersRequest {
            stream: "commerce.fulfillments.v1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!((status.code(), fields(&status)), (Code::InvalidArgument, vec!["stream".to_string()]));
    assert_eq!(f.list(false).await.len(), 1);

    // Discarded with a reason, by whom the call says.
    let mut request = tonic::Request::new(ops::DiscardDeadLettersRequest {
        stream: f.stream.clone(),
        ids: vec![left[0].id.clone()],
        reason: "a test purchase without a price".into(),
    });
    request.metadata_mut().insert(kit::access::SUBJECT_METADATA, "ops-alice".parse().unwrap());
    let discarded = client.discard_dead_letters(request).await.unwrap().into_inner();
    assert!(discarded.outcomes[0].found);
    assert!(f.list(false).await.is_empty(), "gone");
    let kept = f.list(true).await;
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].event_id, "evt-bad");
    let record = kept[0].discard.as_ref().unwrap();
    assert_eq!(record.discarded_by, "ops-alice");
    assert_eq!(record.reason, "a test purchase without a price");
    assert!(record.discarded_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_and_redis_dead_letters_are_listed_replayed_once_fixed_and_discarded() {
    dead_letters_are_listed_replayed_once_fixed_and_discarded(fixture(Backend::Postgres).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_dead_letters_are_listed_replayed_once_fixed_and_discarded() {
    dead_letters_are_listed_replayed_once_fixed_and_discarded(fixture(Backend::Sqlite).await).await;
}
