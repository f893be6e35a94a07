//! Bounded retention at volume, on both backends (issue 16's "done when"):
//! 100,000 events published and consumed leave the stream bounded by the
//! configured floor, never near 100,000; a group that never reads cannot
//! grow it past the floor either. The real consumer loop and retention task
//! run meanwhile; the test trims too, to look at the stream.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use kit::bus::consumer::{BatchHandler, Consumer, ConsumerConfig, ConsumerMetrics, Verdict};
use kit::bus::{BusConfig, Delivery, EventBus, Publication, Retention};
use kit::metrics::Metrics;
use tokio_util::sync::CancellationToken;

const EVENTS: usize = 100_000;
const BATCH: usize = 1_000;
/// The configured floor (`bus.max_len`): small, so a bound of it means something.
const FLOOR: u64 = 5_000;
/// Entries an approximate Redis trim may leave beyond its target (one stream node).
const NODE: u64 = 100;
/// Generous: the test ends as soon as the condition holds.
const DEADLINE: Duration = Duration::from_secs(120);

fn redis_url() -> String {
    std::env::var("MESH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A backend with streams under a prefix of its own (tests run in parallel), removed afterwards.
struct Fixture {
    prefix: String,
    storage: Storage,
}

enum Storage {
    Redis,
    Sqlite { path: PathBuf, _dir: tempfile::TempDir },
}

impl Fixture {
    fn redis() -> Self {
        Self { prefix: prefix(), storage: Storage::Redis }
    }

    fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        Self { prefix: prefix(), storage: Storage::Sqlite { path: dir.path().join("events.db"), _dir: dir } }
    }

    fn open_with(&self, config: &BusConfig) -> Arc<dyn EventBus> {
        match &self.storage {
            Storage::Redis => {
                kit::bus::open_with(Some(&redis_url()), &PathBuf::from("unused.db"), config).expect("a valid Redis URL")
            }
            Storage::Sqlite { path, .. } => kit::bus::open_with(None, path, config).expect("the log opens"),
        }
    }

    /// The backend's name in the suite's figures.
    fn backend(&self) -> &'static str {
        match self.storage {
            Storage::Redis => "redis-streams",
            Storage::Sqlite { .. } => "sqlite-log",
        }
    }

    fn stream(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }
}

fn prefix() -> String {
    format!("retention-test-{}", uuid::Uuid::new_v4().simple())
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Storage::Redis = self.storage {
            let Ok(client) = redis::Client::open(redis_url()) else { return };
            let Ok(mut connection) = client.get_connection() else { return };
            let keys: Vec<String> =
                redis::cmd("KEYS").arg(format!("{}*", self.prefix)).query(&mut connection).unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query(&mut connection);
            }
        }
    }
}

/// Settles every entry and remembers its event id.
#[derive(Default)]
struct Recorder {
    seen: Mutex<HashSet<String>>,
}

impl Recorder {
    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

#[async_trait::async_trait]
impl BatchHandler for Recorder {
    async fn handle(&self, batch: &[Delivery]) -> Result<Vec<Verdict>, Box<dyn std::error::Error + Send + Sync>> {
        self.seen.lock().unwrap().extend(batch.iter().map(|d| d.event_id.clone()));
        Ok(vec![Verdict::Settled; batch.len()])
    }
}

/// Polls `done` until it holds; fails the test after [`DEADLINE`].
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < DEADLINE, "gave up waiting until {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Publishes events `evt-<from>` .. `evt-<from + BATCH>` in one call.
async fn publish_batch(bus: &Arc<dyn EventBus>, stream: &str, from: usize) {
    let ids: Vec<String> = (from..from + BATCH).map(|n| format!("evt-{n}")).collect();
    let events: Vec<Publication<'_>> =
        ids.iter().map(|id| Publication { stream, event_id: id, payload: id.as_bytes() }).collect();
    let appended = bus.publish_all(&events).await.unwrap();
    assert!(appended.iter().all(|appended| *appended), "every id is new");
}

async fn a_hundred_thousand_events_leave_the_stream_bounded(fixture: Fixture) {
    let config = BusConfig { max_len: FLOOR, trim_every: Duration::from_millis(50), ..BusConfig::default() };
    let bus = fixture.open_with(&config);
    let stream = fixture.stream("purchases");
    bus.ensure_group(&stream, "history").await.unwrap();
    let metrics = Metrics::new().for_component("retention-test");
    let shutdown = CancellationToken::new();
    let recorder = Arc::new(Recorder::default());
    let consumer = Consumer::new(
        Arc::clone(&bus),
        &stream,
        "history",
        "c1",
        ConsumerConfig { batch: BATCH, block: Duration::from_millis(200), ..ConsumerConfig::default() },
        ConsumerMetrics::default(),
    );
    let consuming = {
        let (recorder, shutdown) = (Arc::clone(&recorder), shutdown.clone());
        tokio::spawn(async move { consumer.run(recorder.as_ref(), shutdown).await })
    };
    let trimming = tokio::spawn(Retention::new(Arc::clone(&bus), config.trim_every, &metrics).run(shutdown.clone()));

    let started = Instant::now();
    let mut longest = 0;
    for from in (0..EVENTS).step_by(BATCH) {
        publish_batch(&bus, &stream, from).await;
        // The publisher stays at most half the floor ahead of the consumer, so
        // the floor never drops an entry before it was read.
        let published = from + BATCH;
        let half_floor = usize::try_from(FLOOR / 2).unwrap();
        wait_until("the consumer is close behind", || recorder.count() + half_floor >= published).await;
        let kept = bus.trim(&stream, Utc::now()).await.unwrap();
        assert!(kept.entries <= FLOOR + NODE, "after {published} events the stream holds {kept:?}");
        longest = longest.max(kept.entries);
    }
    wait_until("every event is consumed", || recorder.count() == EVENTS).await;
    // The consumer acknowledges a batch right after handling it.
    let deadline = Instant::now() + DEADLINE;
    while bus.pending(&stream, "history").await.unwrap() > 0 {
        assert!(Instant::now() < deadline, "the last batch is acknowledged");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let kept = bus.trim(&stream, Utc::now()).await.unwrap();
    let took = started.elapsed();
    shutdown.cancel();
    consuming.await.unwrap();
    trimming.await.unwrap();

    assert!(kept.entries <= 1 + NODE, "all consumed: the stream is trimmed to (about) nothing: {kept:?}");
    assert_eq!(kept.dedupe_markers, EVENTS as u64, "ids are remembered for the dedupe window");
    let after_window = Utc::now() + chrono::Duration::from_std(config.dedupe_window).unwrap();
    assert_eq!(bus.trim(&stream, after_window).await.unwrap().dedupe_markers, 0, "and forgotten after it");
    let text = metrics.encode();
    let labels = format!(r#"{{component="retention-test",stream="{stream}"}}"#);
    assert!(text.contains(&format!("bus_stream_entries{labels}")), "the task reports the stream:\n{text}");
    let figures = serde_json::json!({
        "suite": "retention",
        "store": fixture.backend(),
        "events": EVENTS,
        "consumed": recorder.count(),
        "window": format!("floor {FLOOR} entries, dedupe {} s", config.dedupe_window.as_secs()),
        "largest": longest,
        "left": kept.entries,
        "seconds": took.as_secs_f64(),
    });
    println!("RELIABILITY-FIGURES {figures}");
}

async fn a_group_that_never_reads_cannot_grow_the_stream_past_the_floor(fixture: Fixture) {
    let config = BusConfig { max_len: FLOOR, ..BusConfig::default() };
    let bus = fixture.open_with(&config);
    let stream = fixture.stream("purchases");
    bus.ensure_group(&stream, "stalled").await.unwrap();
    for from in (0..EVENTS).step_by(BATCH) {
        publish_batch(&bus, &stream, from).await;
        let kept = bus.trim(&stream, Utc::now()).await.unwrap();
        assert!(kept.entries <= FLOOR + NODE, "after {} events the stream holds {kept:?}", from + BATCH);
    }
    let kept = bus.trim(&stream, Utc::now()).await.unwrap();
    assert!(kept.entries >= FLOOR, "the newest {FLOOR} are kept: {kept:?}");
    let mut read = Vec::new();
    loop {
        let got = bus.read(&stream, "stalled", "late", BATCH, Duration::ZERO).await.unwrap();
        if got.is_empty() {
            break;
        }
        read.extend(got);
    }
    assert_eq!(read.len() as u64, kept.entries, "the group reads what the floor kept");
    assert_eq!(read.last().unwrap().event_id, format!("evt-{}", EVENTS - 1));
}

macro_rules! retention {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_hundred_thousand_events_leave_the_stream_bounded() {
                super::a_hundred_thousand_events_leave_the_stream_bounded($make).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_group_that_never_reads_cannot_grow_the_stream_past_the_floor() {
                super::a_group_that_never_reads_cannot_grow_the_stream_past_the_floor($make).await;
            }
        }
    };
}

retention!(redis_backend, Fixture::redis());
retention!(sqlite_backend, Fixture::sqlite());
