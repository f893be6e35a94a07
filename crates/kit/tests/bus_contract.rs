//! The event bus contract, run against every backend: Redis Streams and the SQLite log,
//! retention included (trimming what no group needs, the dedupe window, the floor, dead letters).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kit::bus::{BusConfig, BusError, DeadLetterQuery, Delivery, Discard, EntryId, EventBus, Publication, StreamStats};

/// A wait that ends early when the bus works: long enough that a slow machine
/// never fails a test on time alone.
const LONG_BLOCK: Duration = Duration::from_secs(30);

/// Entries an approximate trim may leave beyond its target: Redis trims whole
/// nodes of up to 100 entries (`stream-node-max-entries`); the log trims exactly.
const NODE: u64 = 100;

fn redis_url() -> String {
    std::env::var("MESH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// One backend for one test: streams named under a prefix of its own, so tests
/// run in parallel and clean up after themselves.
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
        Self {
            prefix: prefix(),
            storage: Storage::Sqlite { path: dir.path().join("log").join("events.db"), _dir: dir },
        }
    }

    /// A new client over the same storage (what a restarted process gets).
    fn open(&self) -> Arc<dyn EventBus> {
        self.open_with(&BusConfig::default())
    }

    /// The same with these retention settings.
    fn open_with(&self, config: &BusConfig) -> Arc<dyn EventBus> {
        match &self.storage {
            Storage::Redis => {
                kit::bus::open_with(Some(&redis_url()), &PathBuf::from("unused.db"), config).expect("a valid Redis URL")
            }
            Storage::Sqlite { path, .. } => kit::bus::open_with(None, path, config).expect("the log opens"),
        }
    }

    fn stream(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }
}

fn prefix() -> String {
    format!("bus-test-{}", uuid::Uuid::new_v4().simple())
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Storage::Redis = self.storage {
            // Streams have no expiry: remove this test's keys (best effort).
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

async fn read_now(bus: &Arc<dyn EventBus>, stream: &str, group: &str, consumer: &str, max: usize) -> Vec<Delivery> {
    bus.read(stream, group, consumer, max, Duration::ZERO).await.unwrap()
}

fn event_ids(deliveries: &[Delivery]) -> Vec<&str> {
    deliveries.iter().map(|d| d.event_id.as_str()).collect()
}

async fn publish_read_ack_round_trip(fixture: Fixture) {
    let bus = fixture.open();
    let stream = fixture.stream("orders");
    bus.ensure_group(&stream, "g").await.unwrap();
    // Not UTF-8, with NUL and high bytes: payloads are bytes, not text.
    let payload = [0u8, 159, 146, 150, 255, b'\n', b'"', 0];
    assert!(bus.publish(&stream, "evt-1", &payload).await.unwrap());

    let got = read_now(&bus, &stream, "g", "c1", 10).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event_id, "evt-1");
    assert_eq!(got[0].payload, payload);
    assert_eq!(got[0].delivery_count, 1);
    assert_eq!(bus.pending(&stream, "g").await.unwrap(), 1);

    bus.ack(&stream, "g", &[got[0].id.clone()]).await.unwrap();
    assert_eq!(bus.pending(&stream, "g").await.unwrap(), 0);
    assert!(read_now(&bus, &stream, "g", "c1", 10).await.is_empty());
    assert!(bus.reclaim(&stream, "g", "c2", Duration::ZERO, 10).await.unwrap().is_empty(), "acked is done");
}

async fn a_group_starts_at_the_beginning_of_the_stream(fixture: Fixture) {
    let bus = fixture.open();
    let stream = fixture.stream("orders");
    bus.publish(&stream, "before", b"1").await.unwrap();
    bus.ensure_group(&stream, "g").await.unwrap();
    bus.ensure_group(&stream, "g").await.unwrap(); // idempotent
    bus.publish(&stream, "after", b"2").await.unwrap();
    assert_eq!(event_ids(&read_now(&bus, &stream, "g", "c", 10).await), ["before", "after"]);
}

async fn a_duplicate_event_id_publishes_nothing(fixture: Fixture) {
    let bus = fixture.open();
    let stream = fixture.stream("orders");
    bus.ensure_group(&stream, "g").await.unwrap();
    assert!(bus.publish(&stream, "evt-1", b"first").await.unwrap());
    assert!(!bus.publish(&stream, "evt-1", b"again").await.unwrap(), "a republished id appends nothing");
    assert!(bus.publish(&stream, "evt-2", b"second").await.unwrap());
    assert!(bus.publish(&fixture.stream("other"), "evt-1", b"elsewhere").await.unwrap(), "ids are per stream");

    let got = read_now(&bus, &stream, "g", "c", 10).await;
    assert_eq!(event_ids(&got), ["evt-1", "evt-2"]);
    assert_eq!(got[0].payload, b"first");
}

async fn consumers_of_one_group_split_entries(fixture: Fixture) {
    let bus = fixture.open();
    let stream = fixture.stream("orders");
    bus.ensure_group(&stream, "g").await.unwrap();
    let published: HashSet<String> = (0..30).map(|i| format!("evt-{i}")).collect();
    for id in &published {
        bus.publish(&stream, id, id.as_bytes()).await.unwrap();
    }
    // Two consumers read at the same time until the group has nothing new.
    let readers: Vec<_> = ["c1", "c2"]
        .into_iter()
        .map(|consumer| {
            let (bus, stream) = (bus.clone(), stream.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    let got = bus.read(&stream, "g", consumer, 3, Duration::ZERO).await.unwrap();
                    if got.is_empty() {
                        return seen;
                    }
                    seen.extend(got.into_iter().map(|d| d.event_id));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for reader in readers {
        all.extend(reader.await.unwrap());
    }
    let distinct: HashSet<String> = all.iter().cloned().collect();
    assert_eq!(distinct.len(), all.len(), "no entry went to both consumers: {all:?}");
    assert_eq!(distinct, published, "every entry went to one of them");
    assert_eq!(bus.pending(&stream, "g").await.unwrap(), 30);
}

async fn every_group_sees_every_entry(fixture: Fixture) {
    let bus = fixture.open();
    let stream = fixture.stream("orders");
    bus.ensure_group(&stream, "history").await.unwrap();
    bus.ensure_group(&stream, "analytics").await.unwrap();
    for id in ["a", "b", "c"] {
        bus.publish(&stream, id, id.as_bytes()).await.unwrap();
    }
    let history = read_now(&bus, &stream, "history", "c", 10).await;
    bus.ack(&stream, "history", &history.iter().map(|d| d.id.clone()).collect::<Vec<_>>()).await.unwrap();
    assert_eq!(event_ids(&history), ["a", "b", "c"]);
    assert_eq!(event_ids(&read_now(&bus, &stream, "analytics", "c", 10).await), ["a", "b", "c"]);
    assert_eq!(bus.pending(&stream, "history").await.unwrap(), 0, "acks are per group");
    assert_eq!(bus.pending(&stream, "analytics").await.unwrap(), 3);
}

async fn an_unacked_entry_is_reclaimed_not_reread(fixture: Fixture) {
    let bus = fixture.open();
    let stream = fixture.stream("orders");
    bus.ensure_group(&stream, "g").await.unwrap();
    bus.publish(&stream, "crashed", b"1").await.unwrap();
    bus.publish(&stream, "done", b"2").await.unwrap();
    let got = read_now(&bus, &stream, "g", "c1", 10).await;
    assert_eq!(event_ids(&got), ["crashed", "done"]);
    bus.ack(&stream, "g", &[got[1].id.clone()]).await.unwrap();

    assert!(read_now(&bus, &stream, "g", "c1", 10).await.is_empty(), "read hands out new entries only");
    assert!(read_now(&bus, &stream, "g", "c2", 10).await.is_empty());

    let taken = bus.reclaim(&stream, "g", "c2", Duration::ZERO, 10).await.unwrap();
    assert_eq!(taken.len(), 1, "only the unacked entry: {taken:?}");
    assert_eq!(taken[0].id, got[0].id);
    assert_eq!(taken[0].event_id, "crashed");
    assert_eq!(taken[0].payload, b"1");
    assert_eq!(taken[0].delivery_count, 2);

    let again = bus.reclaim(&stream, "g", "c3", Duration::ZERO, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].delivery_count, 3, "each reclaim is one more delivery");
    assert_eq!(bus.pending(&stream, "g").await.unwrap(), 1);

    bus.ack(&stream, "g", &[again[0].id.clone()]).await.unwrap();
    assert!(bus.reclaim(&stream, "g", "c4", Duration::ZERO, 10).await.unwrap().is_empty());
    assert_eq!(bus.pending(&stream, "g").await.unwrap(), 0);
}

async fn a_consumer_leaves_its_group_only_holding_nothing(fixture: Fixture) {
    let bus = fixture.open();
    let stream = fixture.stream("leaving");
    assert!(bus.leave(&stream, "g", "c1").await.unwrap(), "no group: nothing to leave");
    bus.ensure_group(&stream, "g").await.unwrap();
    bus.publish(&stream, "held", b"1").await.unwrap();
    let got = read_now(&bus, &stream, "g", "c1", 10).await;
    assert!(!bus.leave(&stream, "g", "c1").await.unwrap(), "it holds an entry: it stays");
    assert_eq!(bus.pending(&stream, "g").await.unwrap(), 1, "and the entry stays pending");
    let taken = bus.reclaim(&stream, "g", "c2", Duration::ZERO, 10).await.unwrap();
    assert_eq!(event_ids(&taken), ["held"], "another consumer can still reclaim it");
    assert!(bus.leave(&stream, "g", "c1").await.unwrap(), "holding nothing now: it leaves");
    bus.ack(&stream, "g", &[got[0].id.clone()]).await.unwrap();
    assert!(bus.leave(&stream, "g", "c2").await.unwrap());
    assert!(bus.leave(&stream, "g", "c2").await.unwrap(), "leaving twice is harmless");
    assert_eq!(bus.pending(&stream, "g").await.unwrap(), 0);
}

async fn reclaim_leaves_entries_idle_for_less_than_min_idle(fixture: Fixture) {
    let bus = fixture.open();
    let stream = fixture.stream("orders");
    bus.ensure_group(&stream, "g").await.unwrap();
    bus.publish(&stream, "evt", b"1").await.unwrap();
    assert_eq!(read_now(&bus, &stream, "g", "c1", 10).await.len(), 1);
    let taken = bus.reclaim(&stream, "g", "c2", Duration::from_secs(3600), 10).await.unwrap();
    assert!(taken.is_empty(), "a consumer still working on it keeps it: {taken:?}");
    assert_eq!(bus.pending(&stream, "g").await.unwrap(), 1);
    assert_eq!(bus.reclaim(&stream, "g", "c2", Duration::ZERO, 10).await.unwrap()[0].delivery_count, 2);
}

async fn dead_letter_moves_the_entry_aside(fixture: Fixture) {
    let bus = fixture.open();
    let stream = fixture.stream("orders");
    bus.ensure_group(&stream, "g").await.unwrap();
    assert!(bus.dead_letters(&stream, 10).await.unwrap().is_empty());
    bus.publish(&stream, "poison", &[1, 0, 255]).await.unwrap();
    bus.publish(&stream, "fine", b"ok").await.unwrap();
    let got = read_now(&bus, &stream, "g", "c1", 10).await;

    bus.dead_letter(&stream, "g", &got[0], "cannot parse: bad order").await.unwrap();
    let dead = bus.dead_letters(&stream, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].original_id, got[0].id);
    assert_eq!(dead[0].event_id, "poison");
    assert_eq!(dead[0].payload, [1, 0, 255]);
    assert_eq!(dead[0].reason, "cannot parse: bad order");

    assert_eq!(bus.pending(&stream, "g").await.unwrap(), 1, "no longer pending; the other entry still is");
    let taken = bus.reclaim(&stream, "g", "c2", Duration::ZERO, 10).await.unwrap();
    assert_eq!(event_ids(&taken), ["fine"], "a dead letter is never reclaimed");
    assert!(bus.dead_letters(&fixture.stream("other"), 10).await.unwrap().is_empty());
}

async fn dead_letters_come_oldest_first_and_bounded(fixture: Fixture) {
    let bus = fixture.open();
    let stream = fixture.stream("orders");
    bus.ensure_group(&stream, "g").await.unwrap();
    for id in ["a", "b", "c"] {
        bus.publish(&stream, id, id.as_bytes()).await.unwrap();
    }
    for delivery in read_now(&bus, &stream, "g", "c", 10).await {
        bus.dead_letter(&stream, "g", &delivery, &format!("reason {}", delivery.event_id)).await.unwrap();
    }
    let dead = bus.dead_letters(&stream, 2).await.unwrap();
    assert_eq!(dead.iter().map(|d| d.event_id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(dead[1].reason, "reason b");
    assert_eq!(bus.pending(&stream, "g").await.unwrap(), 0);
}

async fn a_blocked_read_returns_an_entry_published_meanwhile(fixture: Fixture) {
    let bus = fixture.open();
    let stream = fixture.stream("orders");
    bus.ensure_group(&stream, "g").await.unwrap();
    let reader = {
        let (bus, stream) = (bus.clone(), stream.clone());
        tokio::spawn(async move { bus.read(&stream, "g", "c1", 10, LONG_BLOCK).await.unwrap() })
    };
    // The read may start before or after this publish: either way it answers
    // with the entry (and well before LONG_BLOCK).
    assert!(bus.publish(&stream, "late", b"news").await.unwrap());
    let got = reader.await.unwrap();
    assert_eq!(event_ids(&got), ["late"]);
    assert_eq!(got[0].payload, b"news");
}

async fn a_read_with_nothing_new_returns_empty_after_the_block(fixture: Fixture) {
    let bus = fixture.open();
    let stream = fixture.stream("orders");
    bus.ensure_group(&stream, "g").await.unwrap();
    assert!(bus.read(&stream, "g", "c1", 10, Duration::from_millis(300)).await.unwrap().is_empty());
    bus.publish(&stream, "evt", b"1").await.unwrap();
    assert_eq!(read_now(&bus, &stream, "g", "c1", 10).await.len(), 1);
    assert!(bus.read(&stream, "g", "c1", 10, Duration::from_millis(300)).await.unwrap().is_empty());
}

async fn a_missing_group_is_reported(fixture: Fixture) {
    let bus = fixture.open();
    let stream = fixture.stream("orders");
    bus.publish(&stream, "evt", b"1").await.unwrap();
    let read = bus.read(&stream, "nobody", "c", 10, Duration::ZERO).await;
    assert!(matches!(read, Err(BusError::NoGroup { .. })), "{read:?}");
    let pending = bus.pending(&stream, "nobody").await;
    assert!(matches!(pending, Err(BusError::NoGroup { .. })), "{pending:?}");
    let reclaimed = bus.reclaim(&fixture.stream("empty"), "nobody", "c", Duration::ZERO, 10).await;
    assert!(matches!(reclaimed, Err(BusError::NoGroup { .. })), "{reclaimed:?}");
}

async fn state_survives_reopening(fixture: Fixture) {
    let stream = fixture.stream("orders");
    let first_id: EntryId;
    {
        let bus = fixture.open();
        bus.ensure_group(&stream, "g").await.unwrap();
        bus.publish(&stream, "a", b"A").await.unwrap();
        bus.publish(&stream, "b", b"B").await.unwrap();
        let got = read_now(&bus, &stream, "g", "c1", 1).await;
        assert_eq!(event_ids(&got), ["a"]);
        first_id = got[0].id.clone();
    } // the process "restarts"

    let bus = fixture.open();
    assert_eq!(bus.pending(&stream, "g").await.unwrap(), 1, "pending state kept");
    assert!(!bus.publish(&stream, "a", b"A").await.unwrap(), "published ids kept");
    let second = read_now(&bus, &stream, "g", "c2", 10).await;
    assert_eq!(event_ids(&second), ["b"], "the group's position kept");
    bus.ack(&stream, "g", &[second[0].id.clone()]).await.unwrap();
    let taken = bus.reclaim(&stream, "g", "c2", Duration::ZERO, 10).await.unwrap();
    assert_eq!(taken.iter().map(|d| (&d.id, d.delivery_count)).collect::<Vec<_>>(), [(&first_id, 2)]);
    assert_eq!(taken[0].payload, b"A");
}

/// Publishes `count` events `<tag>-<n>` in batches of 500 (one round trip or transaction each).
async fn publish_many(bus: &Arc<dyn EventBus>, stream: &str, tag: &str, count: usize) {
    let ids: Vec<String> = (0..count).map(|n| format!("{tag}-{n}")).collect();
    for chunk in ids.chunks(500) {
        let events: Vec<Publication<'_>> =
            chunk.iter().map(|id| Publication { stream, event_id: id, payload: id.as_bytes() }).collect();
        assert!(bus.publish_all(&events).await.unwrap().iter().all(|appended| *appended));
    }
}

/// Reads everything new for `consumer`, `max` per read.
async fn read_all(bus: &Arc<dyn EventBus>, stream: &str, group: &str, consumer: &str) -> Vec<Delivery> {
    let mut all = Vec::new();
    loop {
        let got = read_now(bus, stream, group, consumer, 500).await;
        if got.is_empty() {
            return all;
        }
        all.extend(got);
    }
}

async fn ack_all(bus: &Arc<dyn EventBus>, stream: &str, group: &str, deliveries: &[Delivery]) {
    for chunk in deliveries.chunks(500) {
        bus.ack(stream, group, &chunk.iter().map(|d| d.id.clone()).collect::<Vec<_>>()).await.unwrap();
    }
}

fn window(config: &BusConfig) -> chrono::Duration {
    chrono::Duration::from_std(config.dedupe_window).unwrap()
}

fn after(now: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(duration).unwrap() + chrono::Duration::seconds(1)
}

async fn publish_all_appends_in_order_each_id_once(fixture: Fixture) {
    let bus = fixture.open();
    let stream = fixture.stream("orders");
    bus.ensure_group(&stream, "g").await.unwrap();
    assert!(bus.publish(&stream, "a", b"A").await.unwrap());
    let other = fixture.stream("other");
    let event = |stream, id: &'static str| Publication { stream, event_id: id, payload: id.as_bytes() };
    let appended = bus
        .publish_all(&[
            event(&stream, "a"),
            event(&stream, "b"),
            event(&other, "b"),
            event(&stream, "c"),
            event(&stream, "b"),
        ])
        .await
        .unwrap();
    assert_eq!(appended, [false, true, true, true, false]);
    assert!(bus.publish_all(&[]).await.unwrap().is_empty());
    assert_eq!(event_ids(&read_now(&bus, &stream, "g", "c", 10).await), ["a", "b", "c"]);
    assert_eq!(bus.streams(), {
        let mut used = vec![stream.clone(), other.clone()];
        used.sort();
        used
    });
}

async fn trimming_keeps_every_entry_a_group_still_needs(fixture: Fixture) {
    let bus = fixture.open();
    let stream = fixture.stream("orders");
    bus.ensure_group(&stream, "fast").await.unwrap();
    bus.ensure_group(&stream, "slow").await.unwrap();
    publish_many(&bus, &stream, "evt", 1000).await;
    let fast = read_all(&bus, &stream, "fast", "f").await;
    ack_all(&bus, &stream, "fast", &fast).await;
    // The slow group has read 600 entries and acknowledged the first 400: it still
    // needs the 200 pending (400..600) and the 400 it never read.
    let mut slow = read_now(&bus, &stream, "slow", "s", 500).await;
    slow.extend(read_now(&bus, &stream, "slow", "s", 100).await);
    ack_all(&bus, &stream, "slow", &slow[..400]).await;

    let kept = bus.trim(&stream, Utc::now()).await.unwrap();
    assert!((600..=600 + NODE).contains(&kept.entries), "{kept:?}");
    assert!(kept.trimmed >= 400 - NODE, "{kept:?}");
    assert_eq!(kept.dedupe_markers, 1000, "ids are remembered for the window, not for the entries' life");
    let oldest = kept.oldest_entry.expect("entries are left");
    assert!((Utc::now() - oldest).num_seconds() < 600, "{oldest}");

    let reclaimed = bus.reclaim(&stream, "slow", "s2", Duration::ZERO, 1000).await.unwrap();
    let expected: Vec<String> = (400..600).map(|n| format!("evt-{n}")).collect();
    assert_eq!(reclaimed.iter().map(|d| d.event_id.clone()).collect::<Vec<_>>(), expected, "pending entries kept");
    ack_all(&bus, &stream, "slow", &reclaimed).await;
    let rest = read_all(&bus, &stream, "slow", "s").await;
    let expected: Vec<String> = (600..1000).map(|n| format!("evt-{n}")).collect();
    assert_eq!(rest.iter().map(|d| d.event_id.clone()).collect::<Vec<_>>(), expected, "unread entries kept");
    ack_all(&bus, &stream, "slow", &rest).await;

    let kept = bus.trim(&stream, Utc::now()).await.unwrap();
    assert!(kept.entries <= 1 + NODE, "everything acknowledged by every group is trimmed: {kept:?}");
    assert_eq!(bus.pending(&stream, "slow").await.unwrap(), 0);
    assert!(!bus.publish(&stream, "evt-5", b"again").await.unwrap(), "a trimmed entry's id is still remembered");
}

async fn a_stream_without_groups_keeps_the_dedupe_window(fixture: Fixture) {
    let config = BusConfig::default();
    let bus = fixture.open_with(&config);
    let stream = fixture.stream("announcements");
    publish_many(&bus, &stream, "evt", 300).await;
    let now = Utc::now();
    assert_eq!(bus.trim(&stream, now).await.unwrap().entries, 300, "nobody read them: kept for the window");
    assert_eq!(bus.trim(&stream, now + window(&config) / 2).await.unwrap().entries, 300);
    let later = bus.trim(&stream, after(now, config.dedupe_window)).await.unwrap();
    assert_eq!((later.entries, later.dedupe_markers, later.oldest_entry), (0, 0, None), "{later:?}");
    assert!(later.trimmed >= 300, "{later:?}");
    // A group created now starts at the oldest entry kept.
    bus.publish(&stream, "fresh", b"1").await.unwrap();
    bus.ensure_group(&stream, "late").await.unwrap();
    assert_eq!(event_ids(&read_now(&bus, &stream, "late", "c", 10).await), ["fresh"]);
}

async fn event_ids_are_forgotten_after_the_dedupe_window(fixture: Fixture) {
    let config = BusConfig { dedupe_window: Duration::from_secs(3600), ..BusConfig::default() };
    let bus = fixture.open_with(&config);
    let stream = fixture.stream("orders");
    bus.ensure_group(&stream, "g").await.unwrap();
    assert!(bus.publish(&stream, "evt-1", b"first").await.unwrap());
    let got = read_now(&bus, &stream, "g", "c", 10).await;
    ack_all(&bus, &stream, "g", &got).await;
    let now = Utc::now();
    let kept = bus.trim(&stream, now + window(&config) / 2).await.unwrap();
    assert_eq!(kept.dedupe_markers, 1, "{kept:?}");
    assert!(!bus.publish(&stream, "evt-1", b"again").await.unwrap(), "within the window: published once");

    let kept = bus.trim(&stream, after(now, config.dedupe_window)).await.unwrap();
    assert_eq!(kept.dedupe_markers, 0, "{kept:?}");
    assert!(bus.publish(&stream, "evt-1", b"much later").await.unwrap(), "after the window the id is new again");
    let got = read_now(&bus, &stream, "g", "c", 10).await;
    assert_eq!((event_ids(&got), got[0].payload.as_slice()), (vec!["evt-1"], &b"much later"[..]));
}

async fn the_floor_caps_a_stream_a_group_stopped_reading(fixture: Fixture) {
    let config = BusConfig { max_len: 200, ..BusConfig::default() };
    let bus = fixture.open_with(&config);
    let stream = fixture.stream("orders");
    bus.ensure_group(&stream, "stalled").await.unwrap();
    publish_many(&bus, &stream, "early", 10).await;
    assert_eq!(read_now(&bus, &stream, "stalled", "c", 10).await.len(), 10, "read, never acknowledged");
    publish_many(&bus, &stream, "evt", 990).await;

    let kept = bus.trim(&stream, Utc::now()).await.unwrap();
    assert!((200..=200 + NODE).contains(&kept.entries), "the floor, not the group, bounds it: {kept:?}");
    // What the floor dropped is lost to the group: never redelivered, no longer pending.
    assert!(bus.reclaim(&stream, "stalled", "c2", Duration::ZERO, 100).await.unwrap().is_empty());
    assert_eq!(bus.pending(&stream, "stalled").await.unwrap(), 0);
    let rest = read_all(&bus, &stream, "stalled", "c").await;
    assert_eq!(rest.len() as u64, kept.entries);
    assert_eq!(rest.last().unwrap().event_id, "evt-989", "the newest entries are the ones kept");
    assert!(!bus.publish(&stream, "early-0", b"again").await.unwrap(), "the floor keeps the ids");
}

async fn dead_letters_are_dropped_after_their_window(fixture: Fixture) {
    let config = BusConfig { dead_letter_window: Duration::from_secs(3600), ..BusConfig::default() };
    let bus = fixture.open_with(&config);
    let stream = fixture.stream("orders");
    bus.ensure_group(&stream, "g").await.unwrap();
    publish_many(&bus, &stream, "poison", 2).await;
    for delivery in read_now(&bus, &stream, "g", "c", 10).await {
        bus.dead_letter(&stream, "g", &delivery, "cannot parse").await.unwrap();
    }
    let now = Utc::now();
    let kept = bus.trim(&stream, now).await.unwrap();
    assert_eq!(kept.dead_letters, 2, "{kept:?}");
    assert_eq!(bus.dead_letters(&stream, 10).await.unwrap().len(), 2);
    let kept = bus.trim(&stream, after(now, config.dead_letter_window)).await.unwrap();
    assert_eq!(kept.dead_letters, 0, "{kept:?}");
    assert!(bus.dead_letters(&stream, 10).await.unwrap().is_empty());
}

async fn a_dead_letter_says_who_gave_up_after_how_many_deliveries_and_when(fixture: Fixture) {
    let bus = fixture.open();
    let stream = fixture.stream("orders");
    bus.ensure_group(&stream, "g").await.unwrap();
    let before = Utc::now() - chrono::Duration::seconds(1);
    bus.publish(&stream, "poison", b"bad").await.unwrap();
    assert_eq!(read_now(&bus, &stream, "g", "c1", 10).await.len(), 1);
    let again = bus.reclaim(&stream, "g", "c2", Duration::ZERO, 10).await.unwrap();
    assert_eq!(again[0].delivery_count, 2);
    bus.dead_letter(&stream, "g", &again[0], "delivered 2 times").await.unwrap();

    let dead = bus.dead_letters(&stream, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    let letter = &dead[0];
    assert_eq!(letter.group.as_deref(), Some("g"));
    assert_eq!(letter.delivery_count, Some(2));
    assert_eq!(letter.original_id, again[0].id);
    let first_seen = letter.first_seen.expect("first seen");
    let dead_at = letter.dead_lettered_at.expect("dead-lettered at");
    assert!(before <= first_seen && first_seen <= dead_at, "{first_seen} then {dead_at}");
    assert!(dead_at <= Utc::now() + chrono::Duration::seconds(1));
}

async fn dead_letters_are_listed_by_reason_and_group_in_pages(fixture: Fixture) {
    let bus = fixture.open();
    let stream = fixture.stream("orders");
    for group in ["g1", "g2"] {
        bus.ensure_group(&stream, group).await.unwrap();
    }
    for n in 0..5 {
        bus.publish(&stream, &format!("evt-{n}"), b"x").await.unwrap();
    }
    for delivery in read_now(&bus, &stream, "g1", "c", 10).await {
        let reason = if delivery.event_id == "evt-4" { "timeout" } else { "invalid price: negative" };
        bus.dead_letter(&stream, "g1", &delivery, reason).await.unwrap();
    }
    let by_g2 = read_now(&bus, &stream, "g2", "c", 1).await;
    bus.dead_letter(&stream, "g2", &by_g2[0], "invalid price: negative").await.unwrap();

    let list = |query: DeadLetterQuery| {
        let bus = bus.clone();
        let stream = stream.clone();
        async move { bus.list_dead_letters(&stream, &query).await.unwrap() }
    };
    let all = list(DeadLetterQuery { max: 100, ..Default::default() }).await;
    assert_eq!(all.letters.len(), 6);
    assert_eq!(all.next, None);
    let price = list(DeadLetterQuery { max: 100, reason: Some("price".into()), ..Default::default() }).await;
    assert_eq!(price.letters.len(), 5);
    assert!(price.letters.iter().all(|letter| letter.reason.contains("price")));
    let g2 = list(DeadLetterQuery { max: 100, group: Some("g2".into()), ..Default::default() }).await;
    assert_eq!(g2.letters.iter().map(|l| l.event_id.as_str()).collect::<Vec<_>>(), ["evt-0"]);
    let g1_price = list(DeadLetterQuery {
        max: 100,
        group: Some("g1".into()),
        reason: Some("price".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(g1_price.letters.len(), 4);

    // Pages of two, oldest first, each going on where the last ended.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = list(DeadLetterQuery { max: 2, after: after.clone(), ..Default::default() }).await;
        assert!(page.letters.len() <= 2);
        seen.extend(page.letters.iter().map(|letter| letter.id.clone()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, all.letters.iter().map(|letter| letter.id.clone()).collect::<Vec<_>>());
}

async fn a_replayed_dead_letter_is_delivered_again_despite_the_dedupe(fixture: Fixture) {
    let bus = fixture.open();
    let stream = fixture.stream("orders");
    bus.ensure_group(&stream, "g").await.unwrap();
    bus.ensure_group(&stream, "other").await.unwrap();
    bus.publish(&stream, "evt-1", b"payload one").await.unwrap();
    let got = read_now(&bus, &stream, "g", "c", 10).await;
    bus.dead_letter(&stream, "g", &got[0], "refused").await.unwrap();
    let other = read_now(&bus, &stream, "other", "c", 10).await;
    bus.ack(&stream, "other", &[other[0].id.clone()]).await.unwrap();
    assert!(!bus.publish(&stream, "evt-1", b"payload one").await.unwrap(), "a publish is deduplicated");

    let dead = bus.dead_letters(&stream, 10).await.unwrap();
    let unknown = EntryId(if dead[0].id.0.contains('-') { "1-1".into() } else { "999999".into() });
    let replayed =
        bus.replay_dead_letters(&stream, &[dead[0].id.clone(), unknown, EntryId("not an id".into())]).await.unwrap();
    assert!(replayed[0].is_some(), "{replayed:?}");
    assert_eq!(replayed[1..], [None, None], "unknown ids are reported, not errors");
    assert!(bus.dead_letters(&stream, 10).await.unwrap().is_empty(), "a replayed dead letter is gone");

    let again = read_now(&bus, &stream, "g", "c", 10).await;
    assert_eq!(event_ids(&again), ["evt-1"]);
    assert_eq!(again[0].payload, b"payload one");
    assert_eq!(again[0].delivery_count, 1, "a new entry");
    assert_eq!(Some(&again[0].id), replayed[0].as_ref());
    bus.ack(&stream, "g", &[again[0].id.clone()]).await.unwrap();
    assert_eq!(event_ids(&read_now(&bus, &stream, "other", "c", 10).await), ["evt-1"], "every group reads it");

    assert_eq!(bus.replay_dead_letters(&stream, &[dead[0].id.clone()]).await.unwrap(), [None], "replayed once");
    assert!(!bus.publish(&stream, "evt-1", b"payload one").await.unwrap(), "the dedupe window starts again");
}

async fn a_dead_letter_is_replayed_after_its_dedupe_window_and_trims(fixture: Fixture) {
    let config = BusConfig { dedupe_window: Duration::from_secs(3600), ..BusConfig::default() };
    let bus = fixture.open_with(&config);
    let stream = fixture.stream("orders");
    bus.ensure_group(&stream, "g").await.unwrap();
    bus.publish(&stream, "evt-1", b"old").await.unwrap();
    let got = read_now(&bus, &stream, "g", "c", 10).await;
    bus.dead_letter(&stream, "g", &got[0], "refused").await.unwrap();
    // Past the dedupe window (the id is forgotten) and the entry, acknowledged, gone.
    let kept = bus.trim(&stream, after(Utc::now(), Duration::from_secs(7200))).await.unwrap();
    assert_eq!(kept.dedupe_markers, 0, "{kept:?}");

    let dead = bus.dead_letters(&stream, 10).await.unwrap();
    assert!(bus.replay_dead_letters(&stream, &[dead[0].id.clone()]).await.unwrap()[0].is_some());
    assert_eq!(event_ids(&read_now(&bus, &stream, "g", "c", 10).await), ["evt-1"]);
}

async fn a_discarded_dead_letter_is_gone_and_kept_for_the_audit(fixture: Fixture) {
    let config = BusConfig { dead_letter_window: Duration::from_secs(3600), ..BusConfig::default() };
    let bus = fixture.open_with(&config);
    let stream = fixture.stream("orders");
    bus.ensure_group(&stream, "g").await.unwrap();
    publish_many(&bus, &stream, "poison", 2).await;
    for delivery in read_now(&bus, &stream, "g", "c", 10).await {
        bus.dead_letter(&stream, "g", &delivery, "cannot parse").await.unwrap();
    }
    let dead = bus.dead_letters(&stream, 10).await.unwrap();
    let discard = Discard { by: "operator@example.com".into(), reason: "a test order, never real".into() };
    let answers =
        bus.discard_dead_letters(&stream, &[dead[0].id.clone(), EntryId("nonsense".into())], &discard).await.unwrap();
    assert_eq!(answers, [true, false]);
    assert_eq!(bus.discard_dead_letters(&stream, &[dead[0].id.clone()], &discard).await.unwrap(), [false]);
    assert_eq!(bus.dead_letters(&stream, 10).await.unwrap(), dead[1..], "the other stays");
    assert_eq!(bus.replay_dead_letters(&stream, &[dead[0].id.clone()]).await.unwrap(), [None], "nor replayable");

    let kept = discarded(&bus, &stream, 10).await;
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].letter, dead[0], "kept as it was");
    assert_eq!(kept[0].discard, discard);
    assert!(kept[0].discarded_at >= dead[0].dead_lettered_at.unwrap());

    let now = Utc::now();
    bus.trim(&stream, now).await.unwrap();
    assert_eq!(discarded(&bus, &stream, 10).await.len(), 1);
    bus.trim(&stream, after(now, config.dead_letter_window)).await.unwrap();
    assert!(discarded(&bus, &stream, 10).await.is_empty(), "kept for the window");
}

async fn discarded(bus: &Arc<dyn EventBus>, stream: &str, max: usize) -> Vec<kit::bus::DiscardedDeadLetter> {
    bus.discarded_dead_letters(stream, &DeadLetterQuery { max, ..Default::default() }).await.unwrap().records
}

/// Every page of the discarded dead letters `query` asks for, by `max` a page.
async fn all_discarded_pages(bus: &Arc<dyn EventBus>, stream: &str, query: DeadLetterQuery) -> Vec<String> {
    let mut seen = Vec::new();
    let mut query = query;
    for _ in 0..100 {
        let page = bus.discarded_dead_letters(stream, &query).await.unwrap();
        assert!(page.records.len() <= query.max, "{page:?}");
        seen.extend(page.records.iter().map(|record| record.letter.event_id.clone()));
        match page.next {
            Some(next) => query.after = Some(next),
            None => return seen,
        }
    }
    panic!("paging never ended: {seen:?}");
}

async fn discarded_dead_letters_are_listed_in_discard_order_by_group_in_pages(fixture: Fixture) {
    let bus = fixture.open();
    let stream = fixture.stream("orders");
    for group in ["g1", "g2"] {
        bus.ensure_group(&stream, group).await.unwrap();
    }
    publish_many(&bus, &stream, "evt", 5).await;
    for delivery in read_now(&bus, &stream, "g1", "c", 10).await {
        bus.dead_letter(&stream, "g1", &delivery, "invalid price").await.unwrap();
    }
    for delivery in read_now(&bus, &stream, "g2", "c", 2).await {
        bus.dead_letter(&stream, "g2", &delivery, "timeout").await.unwrap();
    }
    let dead = bus.dead_letters(&stream, 100).await.unwrap();
    assert_eq!(dead.len(), 7);
    // Discarded newest first: the audit lists them in the order they were discarded.
    let newest_first: Vec<EntryId> = dead.iter().rev().map(|letter| letter.id.clone()).collect();
    let discard = Discard { by: "operator".into(), reason: "test data".into() };
    assert_eq!(bus.discard_dead_letters(&stream, &newest_first, &discard).await.unwrap(), [true; 7]);
    let discard_order: Vec<String> = dead.iter().rev().map(|letter| letter.event_id.clone()).collect();

    let paged = all_discarded_pages(&bus, &stream, DeadLetterQuery { max: 2, ..Default::default() }).await;
    assert_eq!(paged, discard_order, "pages of two reach every discard, in discard order");
    let first = bus.discarded_dead_letters(&stream, &DeadLetterQuery { max: 3, ..Default::default() }).await.unwrap();
    assert_eq!(first.records.len(), 3);
    assert!(first.next.is_some(), "more than a page: a next token");
    assert_eq!(first.records[0].letter, dead[6], "kept as it was");

    let g2 =
        all_discarded_pages(&bus, &stream, DeadLetterQuery { max: 1, group: Some("g2".into()), ..Default::default() })
            .await;
    let g2_order: Vec<String> =
        dead.iter().rev().filter(|l| l.group.as_deref() == Some("g2")).map(|l| l.event_id.clone()).collect();
    assert_eq!((g2.len(), &g2), (2, &g2_order), "only g2's");
    let g1 =
        all_discarded_pages(&bus, &stream, DeadLetterQuery { max: 2, group: Some("g1".into()), ..Default::default() })
            .await;
    assert_eq!(g1.len(), 5, "{g1:?}");
    let timeouts = all_discarded_pages(
        &bus,
        &stream,
        DeadLetterQuery { max: 10, reason: Some("timeout".into()), ..Default::default() },
    )
    .await;
    assert_eq!(timeouts, g2_order);
}

async fn dead_letters_are_read_by_id(fixture: Fixture) {
    let bus = fixture.open();
    let stream = fixture.stream("orders");
    bus.ensure_group(&stream, "g").await.unwrap();
    publish_many(&bus, &stream, "evt", 3).await;
    for delivery in read_now(&bus, &stream, "g", "c", 10).await {
        bus.dead_letter(&stream, "g", &delivery, "refused").await.unwrap();
    }
    let dead = bus.dead_letters(&stream, 10).await.unwrap();
    let unknown = EntryId(if dead[0].id.0.contains('-') { "1-1".into() } else { "999999".into() });
    let ids = [dead[2].id.clone(), unknown, EntryId("not an id".into()), dead[0].id.clone()];
    let found = bus.dead_letters_by_id(&stream, &ids).await.unwrap();
    assert_eq!(found, [Some(dead[2].clone()), None, None, Some(dead[0].clone())]);
    assert_eq!(bus.dead_letters_by_id(&fixture.stream("other"), &ids[..1]).await.unwrap(), [None], "per stream");
    let discard = Discard { by: "operator".into(), reason: "test".into() };
    bus.discard_dead_letters(&stream, &[dead[2].id.clone()], &discard).await.unwrap();
    assert_eq!(bus.dead_letters_by_id(&stream, &ids[..1]).await.unwrap(), [None], "a discarded one is gone");
}

async fn trimming_a_stream_that_does_not_exist_keeps_nothing(fixture: Fixture) {
    let bus = fixture.open();
    let kept = bus.trim(&fixture.stream("nothing"), Utc::now()).await.unwrap();
    assert_eq!(kept, StreamStats::default());
}

macro_rules! contract {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;

            #[tokio::test]
            async fn a_consumer_leaves_its_group_only_holding_nothing() {
                super::a_consumer_leaves_its_group_only_holding_nothing($make).await;
            }
            #[tokio::test]
            async fn publish_read_ack_round_trip() {
                super::publish_read_ack_round_trip($make).await;
            }
            #[tokio::test]
            async fn a_group_starts_at_the_beginning_of_the_stream() {
                super::a_group_starts_at_the_beginning_of_the_stream($make).await;
            }
            #[tokio::test]
            async fn a_duplicate_event_id_publishes_nothing() {
                super::a_duplicate_event_id_publishes_nothing($make).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn consumers_of_one_group_split_entries() {
                super::consumers_of_one_group_split_entries($make).await;
            }
            #[tokio::test]
            async fn every_group_sees_every_entry() {
                super::every_group_sees_every_entry($make).await;
            }
            #[tokio::test]
            async fn an_unacked_entry_is_reclaimed_not_reread() {
                super::an_unacked_entry_is_reclaimed_not_reread($make).await;
            }
            #[tokio::test]
            async fn reclaim_leaves_entries_idle_for_less_than_min_idle() {
                super::reclaim_leaves_entries_idle_for_less_than_min_idle($make).await;
            }
            #[tokio::test]
            async fn dead_letter_moves_the_entry_aside() {
                super::dead_letter_moves_the_entry_aside($make).await;
            }
            #[tokio::test]
            async fn dead_letters_come_oldest_first_and_bounded() {
                super::dead_letters_come_oldest_first_and_bounded($make).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_blocked_read_returns_an_entry_published_meanwhile() {
                super::a_blocked_read_returns_an_entry_published_meanwhile($make).await;
            }
            #[tokio::test]
            async fn a_read_with_nothing_new_returns_empty_after_the_block() {
                super::a_read_with_nothing_new_returns_empty_after_the_block($make).await;
            }
            #[tokio::test]
            async fn a_missing_group_is_reported() {
                super::a_missing_group_is_reported($make).await;
            }
            #[tokio::test]
            async fn state_survives_reopening() {
                super::state_survives_reopening($make).await;
            }
            #[tokio::test]
            async fn publish_all_appends_in_order_each_id_once() {
                super::publish_all_appends_in_order_each_id_once($make).await;
            }
            #[tokio::test]
            async fn trimming_keeps_every_entry_a_group_still_needs() {
                super::trimming_keeps_every_entry_a_group_still_needs($make).await;
            }
            #[tokio::test]
            async fn a_stream_without_groups_keeps_the_dedupe_window() {
                super::a_stream_without_groups_keeps_the_dedupe_window($make).await;
            }
            #[tokio::test]
            async fn event_ids_are_forgotten_after_the_dedupe_window() {
                super::event_ids_are_forgotten_after_the_dedupe_window($make).await;
            }
            #[tokio::test]
            async fn the_floor_caps_a_stream_a_group_stopped_reading() {
                super::the_floor_caps_a_stream_a_group_stopped_reading($make).await;
            }
            #[tokio::test]
            async fn dead_letters_are_dropped_after_their_window() {
                super::dead_letters_are_dropped_after_their_window($make).await;
            }
            #[tokio::test]
            async fn a_dead_letter_says_who_gave_up_after_how_many_deliveries_and_when() {
                super::a_dead_letter_says_who_gave_up_after_how_many_deliveries_and_when($make).await;
            }
            #[tokio::test]
            async fn dead_letters_are_listed_by_reason_and_group_in_pages() {
                super::dead_letters_are_listed_by_reason_and_group_in_pages($make).await;
            }
            #[tokio::test]
            async fn a_replayed_dead_letter_is_delivered_again_despite_the_dedupe() {
                super::a_replayed_dead_letter_is_delivered_again_despite_the_dedupe($make).await;
            }
            #[tokio::test]
            async fn a_dead_letter_is_replayed_after_its_dedupe_window_and_trims() {
                super::a_dead_letter_is_replayed_after_its_dedupe_window_and_trims($make).await;
            }
            #[tokio::test]
            async fn a_discarded_dead_letter_is_gone_and_kept_for_the_audit() {
                super::a_discarded_dead_letter_is_gone_and_kept_for_the_audit($make).await;
            }
            #[tokio::test]
            async fn discarded_dead_letters_are_listed_in_discard_order_by_group_in_pages() {
                super::discarded_dead_letters_are_listed_in_discard_order_by_group_in_pages($make).await;
            }
            #[tokio::test]
            async fn dead_letters_are_read_by_id() {
                super::dead_letters_are_read_by_id($make).await;
            }
            #[tokio::test]
            async fn trimming_a_stream_that_does_not_exist_keeps_nothing() {
                super::trimming_a_stream_that_does_not_exist_keeps_nothing($make).await;
            }
        }
    };
}

contract!(redis_backend, Fixture::redis());
contract!(sqlite_backend, Fixture::sqlite());

/// An entry `publish` did not write (here added by hand) would fail its
/// consumer on every delivery: the bus dead-letters it instead of delivering it.
#[tokio::test]
async fn redis_dead_letters_a_foreign_entry_instead_of_delivering_it() {
    let fixture = Fixture::redis();
    let bus = fixture.open();
    let stream = fixture.stream("orders");
    bus.ensure_group(&stream, "g").await.unwrap();
    let client = redis::Client::open(redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let foreign: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("something")
        .arg("else")
        .query_async(&mut connection)
        .await
        .unwrap();
    bus.publish(&stream, "evt", b"1").await.unwrap();

    assert_eq!(event_ids(&read_now(&bus, &stream, "g", "c", 10).await), ["evt"]);
    let dead = bus.dead_letters(&stream, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].original_id, EntryId(foreign));
    assert!(dead[0].reason.starts_with("malformed entry"), "{}", dead[0].reason);
    assert_eq!(bus.pending(&stream, "g").await.unwrap(), 1, "only the good entry is pending");
}

/// A blocking read holds a connection of its own: publishes and acks of the
/// same client go on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_blocked_read_does_not_stall_other_calls() {
    let fixture = Fixture::redis();
    let bus = fixture.open();
    let (quiet, busy) = (fixture.stream("quiet"), fixture.stream("busy"));
    bus.ensure_group(&quiet, "g").await.unwrap();
    bus.ensure_group(&busy, "g").await.unwrap();
    let blocked = {
        let (bus, quiet) = (bus.clone(), quiet.clone());
        tokio::spawn(async move { bus.read(&quiet, "g", "c", 10, LONG_BLOCK).await.unwrap() })
    };
    // Whether or not the blocked read is under way yet, these answer; if they
    // queued behind it, the last publish (to the quiet stream) would come after
    // its block ran out and the read would answer empty.
    bus.publish(&busy, "evt", b"1").await.unwrap();
    let got = read_now(&bus, &busy, "g", "c", 10).await;
    bus.ack(&busy, "g", &[got[0].id.clone()]).await.unwrap();
    bus.publish(&quiet, "wake", b"2").await.unwrap();
    assert_eq!(event_ids(&blocked.await.unwrap()), ["wake"]);
}

/// Redis keeps a consumer in its group until told: one that left is no
/// longer listed, one still holding entries is.
#[tokio::test]
async fn redis_a_consumer_that_left_is_no_longer_listed() {
    let fixture = Fixture::redis();
    let bus = fixture.open();
    let stream = fixture.stream("listed");
    bus.ensure_group(&stream, "g").await.unwrap();
    bus.publish(&stream, "one", b"1").await.unwrap();
    let got = read_now(&bus, &stream, "g", "holder", 10).await;
    assert!(read_now(&bus, &stream, "g", "idle", 10).await.is_empty());
    assert!(bus.leave(&stream, "g", "idle").await.unwrap());
    assert!(!bus.leave(&stream, "g", "holder").await.unwrap());
    let client = redis::Client::open(redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let consumers: Vec<Vec<redis::Value>> =
        redis::cmd("XINFO").arg("CONSUMERS").arg(&stream).arg("g").query_async(&mut connection).await.unwrap();
    let names: Vec<String> = consumers
        .iter()
        .filter_map(|fields| {
            let at = fields.iter().position(|f| matches!(f, redis::Value::BulkString(b) if b == b"name"))?;
            match fields.get(at + 1)? {
                redis::Value::BulkString(name) => Some(String::from_utf8_lossy(name).into_owned()),
                _ => None,
            }
        })
        .collect();
    assert_eq!(names, ["holder"], "the idle consumer left; the holder stays");
    bus.ack(&stream, "g", &[got[0].id.clone()]).await.unwrap();
    assert!(bus.leave(&stream, "g", "holder").await.unwrap());
}

/// A dead letter Redis kept before the bus recorded groups and delivery counts
/// reads with those unknown, and replays like any other.
#[tokio::test]
async fn redis_reads_dead_letters_of_the_old_shape() {
    let fixture = Fixture::redis();
    let bus = fixture.open();
    let stream = fixture.stream("orders");
    bus.ensure_group(&stream, "g").await.unwrap();
    let client = redis::Client::open(redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg(kit::bus::dead_letter_stream(&stream))
        .arg("*")
        .arg(&["original_id", "1700000000000-0", "event_id", "evt-old", "payload", "old", "reason", "refused"])
        .query_async(&mut connection)
        .await
        .unwrap();
    let dead = bus.dead_letters(&stream, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].group.as_deref(), dead[0].delivery_count), (None, None));
    assert_eq!(dead[0].first_seen, DateTime::from_timestamp_millis(1_700_000_000_000));
    assert!(dead[0].dead_lettered_at.is_some());
    let listed = bus
        .list_dead_letters(&stream, &DeadLetterQuery { max: 10, group: Some("g".into()), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(listed.letters.len(), 1, "an unknown group is any group's");
    assert!(bus.replay_dead_letters(&stream, &[dead[0].id.clone()]).await.unwrap()[0].is_some());
    assert_eq!(event_ids(&read_now(&bus, &stream, "g", "c", 10).await), ["evt-old"]);
}

/// A dead-letter entry the bus did not write (fields missing) is listed with
/// what is known and why it is unreadable, instead of failing every listing,
/// replay of all and discard of the stream's dead letters.
#[tokio::test]
async fn redis_lists_a_malformed_dead_letter_instead_of_failing() {
    let fixture = Fixture::redis();
    let bus = fixture.open();
    let stream = fixture.stream("orders");
    bus.ensure_group(&stream, "g").await.unwrap();
    let client = redis::Client::open(redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let malformed: String = redis::cmd("XADD")
        .arg(kit::bus::dead_letter_stream(&stream))
        .arg("*")
        .arg(&["event_id", "evt-odd", "something", "else"])
        .query_async(&mut connection)
        .await
        .unwrap();
    bus.publish(&stream, "evt-good", b"good").await.unwrap();
    let got = read_now(&bus, &stream, "g", "c", 10).await;
    bus.dead_letter(&stream, "g", &got[0], "refused").await.unwrap();

    let dead = bus.dead_letters(&stream, 10).await.unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0].id, EntryId(malformed.clone()));
    assert_eq!(dead[0].event_id, "evt-odd", "what is known");
    let why = dead[0].unreadable.as_deref().expect("marked unreadable");
    assert!(why.contains("no original_id") && why.contains("no payload"), "{why}");
    assert_eq!((dead[1].event_id.as_str(), dead[1].unreadable.as_deref()), ("evt-good", None));
    let by_id = bus.dead_letters_by_id(&stream, &[EntryId(malformed.clone())]).await.unwrap();
    assert!(by_id[0].as_ref().is_some_and(|letter| letter.unreadable.is_some()), "{by_id:?}");

    // An operator sees it with why it is unreadable where the payload's error goes.
    let ops = kit::dead_letters::DeadLetterOps::new(
        bus.clone(),
        vec![kit::dead_letters::ConsumedStream::new(stream.clone(), "g")],
    );
    let listed = ops
        .list(tonic::Request::new(proto::commerce::ops::v1::ListDeadLettersRequest {
            stream: stream.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.dead_letters.len(), 2);
    assert!(listed.dead_letters[0].payload_error.starts_with("unreadable dead letter"), "{listed:?}");

    // The good one still replays; the bad one can be discarded and its audit listed.
    assert!(bus.replay_dead_letters(&stream, &[dead[1].id.clone()]).await.unwrap()[0].is_some());
    let discard = Discard { by: "operator".into(), reason: "not ours".into() };
    assert_eq!(bus.discard_dead_letters(&stream, &[EntryId(malformed.clone())], &discard).await.unwrap(), [true]);
    let kept = discarded(&bus, &stream, 10).await;
    assert_eq!(kept.len(), 1);
    assert_eq!((kept[0].letter.id.0.as_str(), kept[0].discard.reason.as_str()), (malformed.as_str(), "not ours"));
    assert!(kept[0].letter.unreadable.is_some());
    assert!(bus.dead_letters(&stream, 10).await.unwrap().is_empty());
}

/// A log file an older release wrote (its dead letters without group, count or
/// first sighting) is upgraded on open; its dead letters read with those unknown.
#[tokio::test]
async fn sqlite_reads_dead_letters_of_an_older_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    {
        use sqlx::ConnectOptions;
        let mut connection =
            sqlx::sqlite::SqliteConnectOptions::new().filename(&path).create_if_missing(true).connect().await.unwrap();
        sqlx::raw_sql(
            "CREATE TABLE dead_letters (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL, original_id TEXT NOT NULL,
                 event_id TEXT NOT NULL, payload BLOB NOT NULL, reason TEXT NOT NULL, dead_at INTEGER NOT NULL);
             INSERT INTO dead_letters (stream, original_id, event_id, payload, reason, dead_at)
                 VALUES ('orders', '7', 'evt-old', x'6f6c64', 'refused', 1700000000000);
             PRAGMA user_version = 1;",
        )
        .execute(&mut connection)
        .await
        .unwrap();
    }
    let bus = kit::bus::open(None, &path).unwrap();
    let dead = bus.dead_letters("orders", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].group.as_deref(), dead[0].delivery_count, dead[0].first_seen), (None, None, None));
    assert_eq!(dead[0].dead_lettered_at, DateTime::from_timestamp_millis(1_700_000_000_000));
    assert_eq!(dead[0].payload, b"old");
    bus.ensure_group("orders", "g").await.unwrap();
    assert!(bus.replay_dead_letters("orders", &[dead[0].id.clone()]).await.unwrap()[0].is_some());
    assert_eq!(event_ids(&read_now(&bus, "orders", "g", "c", 10).await), ["evt-old"]);
}
