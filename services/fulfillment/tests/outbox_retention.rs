//! Bounded retention of the outbox at volume, on both backends (issue 16's
//! "done when"): 100,000 events written to Fulfillment's outbox and published
//! by the relay leave the table bounded by the retention window, not 100,000
//! rows. Postgres publishes to Redis Streams, SQLite to the embedded log.
//!
//! Time is the one thing simulated: after each round of 1,000 rows the relay
//! prunes "one window after" the round five rounds back, so the window holds
//! five rounds; what the table keeps is then checked against that exactly.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fulfillment::outbox::OutboxRelay;
use fulfillment::store::{OutboxEvent, for_database};
use kit::bus::{BusConfig, EventBus};
use kit::db::{Backend, Database};
use kit::outbox::OutboxConfig;
use kit::testing::TestDatabase;

const EVENTS: usize = 100_000;
const ROUND: usize = 1_000;
/// Rounds the simulated window holds.
const WINDOW_ROUNDS: usize = 5;
const RETENTION: Duration = Duration::from_secs(3600);

async fn count_rows(db: &Database, published: bool) -> i64 {
    let filter = if published { "published_at IS NOT NULL" } else { "published_at IS NULL" };
    let sql = sqlx::AssertSqlSafe(format!("SELECT count(*) FROM outbox WHERE {filter}"));
    match db {
        Database::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        Database::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
    }
}

/// Writes one round of rows, as `finish` does, in one transaction.
async fn write_round(db: &Database, stream: &str, round: usize) {
    let events: Vec<OutboxEvent> = (0..ROUND)
        .map(|n| OutboxEvent {
            event_id: format!("evt-{round}-{n}"),
            stream: stream.to_string(),
            payload: vec![7; 400],
        })
        .collect();
    match db {
        Database::Postgres(pool) => {
            let mut tx = pool.begin().await.unwrap();
            kit::outbox::postgres::insert(&mut tx, &events, Utc::now()).await.unwrap();
            tx.commit().await.unwrap();
        }
        Database::Sqlite(pool) => {
            let mut tx = pool.begin().await.unwrap();
            kit::outbox::sqlite::insert(&mut tx, &events, Utc::now()).await.unwrap();
            tx.commit().await.unwrap();
        }
    }
}

async fn a_hundred_thousand_events_leave_the_outbox_bounded(backend: Backend) {
    let test_db = TestDatabase::new(backend, fulfillment::NAME).await;
    kit::db::migrate(test_db.config(), &fulfillment::MIGRATIONS).await.expect("migrate");
    let db = Database::open(test_db.config()).expect("open");
    let store = for_database(&db);
    let dir = tempfile::tempdir().unwrap();
    // Nobody reads the stream here: the bus keeps it under its own floor.
    let bus_config = BusConfig { max_len: 1_000, ..BusConfig::default() };
    let redis = (backend == Backend::Postgres).then_some("redis://127.0.0.1:6379");
    let bus: Arc<dyn EventBus> = kit::bus::open_with(redis, &dir.path().join("events.db"), &bus_config).unwrap();
    let stream = format!("outbox-retention-test-{}", uuid::Uuid::new_v4().simple());
    let _cleanup = redis.map(|_| RedisKeys(stream.clone()));
    let mut relay = OutboxRelay::new(Arc::clone(&store) as _, Arc::clone(&bus), Arc::new(tokio::sync::Notify::new()))
        .with_config(OutboxConfig { retention: RETENTION, ..OutboxConfig::default() });
    relay.batch = i64::try_from(ROUND).unwrap();

    let started = Instant::now();
    let mut published_by: Vec<DateTime<Utc>> = Vec::new();
    let mut pruned = 0;
    let mut largest = 0;
    for round in 0..EVENTS / ROUND {
        write_round(&db, &stream, round).await;
        assert_eq!(relay.publish_pending().await.unwrap(), ROUND);
        published_by.push(Utc::now());
        // As if one window had passed since round `round - WINDOW_ROUNDS` was published.
        if let Some(old) = round.checked_sub(WINDOW_ROUNDS) {
            let now = published_by[old] + chrono::Duration::from_std(RETENTION).unwrap();
            pruned += relay.prune(now + chrono::Duration::milliseconds(1)).await.unwrap();
        }
        let kept = count_rows(&db, true).await;
        let window = i64::try_from(ROUND * (round + 1).min(WINDOW_ROUNDS)).unwrap();
        assert_eq!(kept, window, "round {round}: the table keeps the rows published within the window");
        assert_eq!(count_rows(&db, false).await, 0, "round {round}: nothing waits");
        largest = largest.max(kept);
    }
    let took = started.elapsed();
    assert_eq!(pruned, u64::try_from(EVENTS - ROUND * WINDOW_ROUNDS).unwrap());
    let backlog = relay.refresh_backlog(Utc::now()).await.unwrap();
    assert_eq!((backlog.unpublished, backlog.oldest_unpublished), (0, None));
    // Every event reached the bus once.
    let stats = bus.trim(&stream, Utc::now()).await.unwrap();
    assert_eq!(stats.dedupe_markers, u64::try_from(EVENTS).unwrap());
    // And the window passing for the last rounds too empties the table.
    let much_later = Utc::now() + chrono::Duration::from_std(RETENTION).unwrap() + chrono::Duration::seconds(1);
    assert_eq!(relay.prune(much_later).await.unwrap(), u64::try_from(ROUND * WINDOW_ROUNDS).unwrap());
    let left = count_rows(&db, true).await;
    assert_eq!(left, 0);
    let figures = serde_json::json!({
        "suite": "retention",
        "store": format!("{backend:?} outbox").to_lowercase(),
        "events": EVENTS,
        "consumed": EVENTS,
        "window": format!("{} rounds of {ROUND} rows", WINDOW_ROUNDS),
        "largest": largest,
        "left": left,
        "seconds": took.as_secs_f64(),
    });
    println!("RELIABILITY-FIGURES {figures}");
}

/// Removes the test's stream from Redis however the test ends (streams have no expiry).
struct RedisKeys(String);

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open("redis://127.0.0.1:6379") else { return };
        let Ok(mut connection) = client.get_connection() else { return };
        let _: Result<i64, _> =
            redis::cmd("DEL").arg(&self.0).arg(format!("{}:published", self.0)).query(&mut connection);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_hundred_thousand_events_leave_the_outbox_bounded() {
    a_hundred_thousand_events_leave_the_outbox_bounded(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_hundred_thousand_events_leave_the_outbox_bounded() {
    a_hundred_thousand_events_leave_the_outbox_bounded(Backend::Sqlite).await;
}
