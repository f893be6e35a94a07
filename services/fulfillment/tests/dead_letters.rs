//! Fulfillment's dead-letter service over gRPC, on Postgres + Redis Streams and
//! on SQLite + the embedded log: retirements the retirements consumer cannot
//! settle (its store fails) are dead-lettered after their deliveries, listed
//! decoded with reason and delivery count; once the cause is fixed a replay is
//! settled (a valid one) or refused for good (an invalid one), which a discard
//! with a reason then removes, keeping who, when and why.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fulfillment::retirement::{GROUP, LearnerRetirer};
use kit::bus::consumer::{BatchHandler, Consumer, ConsumerConfig, ConsumerMetrics, Verdict};
use kit::bus::{Delivery, EventBus};
use kit::client::TracedChannel;
use kit::db::{Backend, Database};
use kit::serve::GrpcServer;
use kit::shutdown::Shutdown;
use kit::testing::TestDatabase;
use prost::Message;
use proto::commerce::events::v1::{CustomerRetired, EventEnvelope, event_envelope::Payload};
use proto::commerce::fulfillment::v1::fulfillment_dead_letter_service_client::FulfillmentDeadLetterServiceClient;
use proto::commerce::ops::v1 as ops;
use tonic::Code;

struct Fixture {
    client: FulfillmentDeadLetterServiceClient<TracedChannel>,
    retirer: LearnerRetirer,
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
    let db = TestDatabase::new(backend, fulfillment::NAME).await;
    kit::db::migrate(db.config(), &fulfillment::MIGRATIONS).await.expect("migrate");
    let store = fulfillment::store::for_database(&Database::open(db.config()).expect("open"));
    let dir = tempfile::tempdir().unwrap();
    let redis = matches!(backend, Backend::Postgres).then_some("redis://127.0.0.1:6379");
    let bus = kit::bus::open(redis, &dir.path().join("events.db")).expect("bus");
    let stream = format!("test-{}.customers", uuid::Uuid::new_v4().simple());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let shutdown = Shutdown::new();
    let service = fulfillment::dead_letters::service(Arc::clone(&bus), &stream);
    tokio::spawn(GrpcServer::new("dead-letters-test").service(service).run(
        listener,
        async { Ok::<(), std::io::Error>(()) },
        shutdown.clone(),
    ));
    Fixture {
        client: FulfillmentDeadLetterServiceClient::new(kit::client::channel(&url).unwrap()),
        retirer: LearnerRetirer::new(store),
        bus,
        stream,
        shutdown,
        _db: db,
        _dir: dir,
    }
}

/// The real retirer behind a switch: while `broken`, every batch fails.
struct Switched<'a> {
    inner: &'a LearnerRetirer,
    broken: AtomicBool,
}

#[async_trait::async_trait]
impl BatchHandler for Switched<'_> {
    async fn handle(&self, batch: &[Delivery]) -> Result<Vec<Verdict>, Box<dyn std::error::Error + Send + Sync>> {
        if self.broken.load(Ordering::SeqCst) {
            return Err("the database is down".into());
        }
        self.inner.handle(batch).await
    }
}

fn retirement(event_id: &str, lms_user_id: &str) -> Vec<u8> {
    EventEnvelope {
        event_id: event_id.into(),
        event_type: "commerce.events.v1.CustomerRetired".into(),
        payload: Some(Payload::CustomerRetired(CustomerRetired {
            customer_id: "c-1".into(),
            lms_user_id: lms_user_id.into(),
            retired_username: format!("{}{}", vocab::RETIRED_PREFIX, "ab".repeat(20)),
            retired_at: Some(prost_types::Timestamp { seconds: 1_763_000_000, nanos: 0 }),
        })),
        ..Default::default()
    }
    .encode_to_vec()
}

impl Fixture {
    /// Reads, then reclaims, until nothing is left pending.
    async fn consume(&self, handler: &dyn BatchHandler) {
        let config = ConsumerConfig {
            batch: 100,
            block: Duration::from_millis(50),
            reclaim_idle: Duration::ZERO,
            reclaim_every: Duration::from_secs(3600),
            max_deliveries: 2,
        };
        let consumer =
            Consumer::new(Arc::clone(&self.bus), &self.stream, GROUP, "c1", config, ConsumerMetrics::default());
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
}

async fn retirements_dead_lettered_are_replayed_once_fixed_and_discarded(f: Fixture) {
    f.bus.publish(&f.stream, "retired-good", &retirement("retired-good", "42")).await.unwrap();
    f.bus.publish(&f.stream, "retired-bad", &retirement("retired-bad", "forty-two")).await.unwrap();
    let retirer = Switched { inner: &f.retirer, broken: AtomicBool::new(true) };
    f.consume(&retirer).await;

    let listed = f.list(false).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    for letter in &listed {
        assert_eq!(letter.group, GROUP);
        assert_eq!(letter.delivery_count, Some(3));
        assert!(letter.reason.contains("delivered 3 times"), "{}", letter.reason);
        assert_eq!(letter.event_type, "commerce.events.v1.CustomerRetired");
        let payload = kit::dead_letters::struct_to_json(letter.payload.as_ref().unwrap());
        assert_eq!(payload["customer_retired"]["customer_id"], "c-1", "{payload}");
        assert!(letter.first_seen.is_some() && letter.dead_lettered_at.is_some());
    }

    // Fixed; replayed by reason: the valid one is settled, the invalid one refused for good.
    retirer.broken.store(false, Ordering::SeqCst);
    let replayed = f
        .client
        .clone()
        .replay_dead_letters(ops::ReplayDeadLettersRequest {
            stream: f.stream.clone(),
            reason: "delivered 3 times".into(),
            all_matching_reason: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed.outcomes.iter().filter(|o| o.found).count(), 2, "{replayed:?}");
    f.consume(&retirer).await;
    let left = f.list(false).await;
    assert_eq!(left.len(), 1, "the valid retirement was settled: {left:?}");
    assert_eq!(left[0].event_id, "retired-bad");
    assert!(left[0].reason.contains("lms_user_id"), "{}", left[0].reason);
    assert_eq!(left[0].delivery_count, Some(1));

    // Bad input names the field.
    let status = f
        .client
        .clone()
        .replay_dead_letters(ops::ReplayDeadLettersRequest { stream: f.stream.clone(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(kit::error::field_violations(&status)[0].0, "ids");

    let mut request = tonic::Request::new(ops::DiscardDeadLettersRequest {
        stream: f.stream.clone(),
        ids: vec![left[0].id.clone()],
        reason: "no such learner".into(),
    });
    request.metadata_mut().insert(kit::access::SUBJECT_METADATA, "ops-bob".parse().unwrap());
    let discarded = f.client.clone().discard_dead_letters(request).await.unwrap().into_inner();
    assert!(discarded.outcomes[0].found);
    assert!(f.list(false).await.is_empty());
    let kept = f.list(true).await;
    assert_eq!(kept.len(), 1);
    let record = kept[0].discard.as_ref().unwrap();
    assert_eq!((record.discarded_by.as_str(), record.reason.as_str()), ("ops-bob", "no such learner"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_and_redis_retirements_dead_lettered_are_replayed_once_fixed_and_discarded() {
    retirements_dead_lettered_are_replayed_once_fixed_and_discarded(fixture(Backend::Postgres).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_retirements_dead_lettered_are_replayed_once_fixed_and_discarded() {
    retirements_dead_lettered_are_replayed_once_fixed_and_discarded(fixture(Backend::Sqlite).await).await;
}
