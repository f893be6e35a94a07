//! Quotas in Redis (`kit::throttle::RedisQuota`, the GCRA script) against the
//! real Redis: burst then rate, refill, per-key independence, the wait a
//! refusal names, two clients sharing one quota, idle keys expiring; and the
//! cluster throttle's fallback (`ClusterThrottle`) when Redis is unreachable or
//! slow, its metrics, and its return to Redis.
//!
//! Clocks are real here, so counts are bounded by what the elapsed time could
//! have refilled (never a fixed-time assertion): an upper bound the server
//! enforces, and lower bounds that only more time could raise.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kit::metrics::Metrics;
use kit::throttle::{ClusterThrottle, Quota, QuotaMetrics, RedisQuota, SharedQuotaConfig, Verdict};
use tokio::net::{TcpListener, TcpStream};

/// Guards against a hang, not a timing assertion.
const GUARD: Duration = Duration::from_secs(30);

fn redis_url() -> String {
    std::env::var("MESH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A prefix no other test (or run) uses.
fn unique_prefix() -> String {
    format!("test-quota-{}:", uuid::Uuid::new_v4().simple())
}

fn redis_quota() -> RedisQuota {
    RedisQuota::connect(&redis_url(), Duration::from_secs(2)).expect("a valid Redis URL").with_prefix(&unique_prefix())
}

async fn check(quota: &RedisQuota, key: &str, limit: Quota) -> Verdict {
    quota.check(key, limit).await.expect("Redis answers")
}

/// Calls as fast as they answer until one is refused: how many were admitted,
/// the refusal's wait, and how long it took.
async fn until_refused(quota: &RedisQuota, key: &str, limit: Quota) -> (u64, Duration, Duration) {
    let started = Instant::now();
    let mut admitted = 0;
    loop {
        match check(quota, key, limit).await {
            Ok(()) => admitted += 1,
            Err(wait) => return (admitted, wait, started.elapsed()),
        }
        assert!(admitted < 10_000, "never refused");
    }
}

/// Calls `limit` can have refilled in `elapsed`: the k-th call past the burst
/// passes no sooner than k intervals after the first.
fn refilled(limit: Quota, elapsed: Duration) -> u64 {
    (elapsed.as_secs_f64() * f64::from(limit.rate_per_second)).floor() as u64
}

#[tokio::test]
async fn a_key_gets_its_burst_then_one_call_per_interval_and_the_wait_is_exact_enough_to_pass() {
    let quota = redis_quota();
    let limit = Quota { rate_per_second: 10, burst: 5 };
    let (admitted, wait, elapsed) = until_refused(&quota, "a", limit).await;
    assert!((5..=5 + refilled(limit, elapsed)).contains(&admitted), "{admitted} admitted in {elapsed:?}");
    assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100), "one call per 100 ms: {wait:?}");

    // After the burst, the refusal's wait is when the next call passes; a
    // window of such calls admits no more than the rate allows.
    let window = Instant::now();
    let mut wait = wait;
    let mut admitted = 0;
    for _ in 0..10 {
        tokio::time::sleep(wait).await;
        assert_eq!(check(&quota, "a", limit).await, Ok(()), "admitted once the named wait has passed");
        admitted += 1;
        let (more, next_wait, _) = until_refused(&quota, "a", limit).await;
        admitted += more;
        assert!(next_wait <= Duration::from_millis(100), "{next_wait:?}");
        wait = next_wait;
    }
    let elapsed = window.elapsed();
    // The first of the window was due at most one interval after it began.
    assert!(admitted <= 2 + refilled(limit, elapsed), "{admitted} admitted at 10/s in {elapsed:?}");
}

#[tokio::test]
async fn after_a_quiet_spell_the_burst_is_whole_again_and_no_more() {
    let quota = redis_quota();
    let limit = Quota { rate_per_second: 20, burst: 4 };
    let (first, _, _) = until_refused(&quota, "a", limit).await;
    assert!(first >= 4);
    // Long enough to refill the whole burst, and much more: the burst caps it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (again, _, elapsed) = until_refused(&quota, "a", limit).await;
    assert!((4..=4 + refilled(limit, elapsed)).contains(&again), "{again} admitted after a quiet spell");
}

#[tokio::test]
async fn keys_are_independent() {
    let quota = redis_quota();
    let limit = Quota { rate_per_second: 1, burst: 3 };
    let (a, _, elapsed) = until_refused(&quota, "a", limit).await;
    assert!((3..=3 + refilled(limit, elapsed)).contains(&a));
    let (b, _, elapsed) = until_refused(&quota, "b", limit).await;
    assert!((3..=3 + refilled(limit, elapsed)).contains(&b), "b's quota was never touched: {b}");
}

#[tokio::test]
async fn two_clients_of_one_key_share_one_quota() {
    let prefix = unique_prefix();
    let url = redis_url();
    let first = RedisQuota::connect(&url, Duration::from_secs(2)).unwrap().with_prefix(&prefix);
    let second = RedisQuota::connect(&url, Duration::from_secs(2)).unwrap().with_prefix(&prefix);
    let limit = Quota { rate_per_second: 1, burst: 10 };
    let started = Instant::now();
    let (mut admitted, mut refused) = (0, 0);
    // Alternate until both are refused: one burst between them, not one each.
    while refused < 2 {
        for client in [&first, &second] {
            match check(client, "shared", limit).await {
                Ok(()) => admitted += 1,
                Err(_) => refused += 1,
            }
        }
        assert!(admitted < 1_000, "never refused");
    }
    let elapsed = started.elapsed();
    assert!((10..=10 + refilled(limit, elapsed)).contains(&admitted), "{admitted} admitted by two clients");
}

#[tokio::test]
async fn an_idle_key_expires_once_its_quota_is_whole_again() {
    let quota = redis_quota();
    let limit = Quota { rate_per_second: 10, burst: 5 };
    check(&quota, "a", limit).await.unwrap();
    let client = redis::Client::open(redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("PTTL").arg(quota.redis_key("a")).query_async(&mut connection).await.unwrap();
    assert!((1..=100).contains(&ttl), "one call's interval: {ttl} ms");
    until_refused(&quota, "a", limit).await;
    let ttl: i64 = redis::cmd("PTTL").arg(quota.redis_key("a")).query_async(&mut connection).await.unwrap();
    assert!((1..=500).contains(&ttl), "at most the whole burst's refill: {ttl} ms");
}

// ---------------------------------------------------------------- fallback

const LIMIT: Quota = Quota { rate_per_second: 10, burst: 6 };

fn metrics() -> Metrics {
    Metrics::new().for_component("test")
}

fn cluster(url: &str, config: SharedQuotaConfig, metrics: &Metrics) -> ClusterThrottle {
    let quota_metrics = QuotaMetrics::default();
    quota_metrics.register("test", metrics);
    let config = SharedQuotaConfig { key_prefix: unique_prefix(), ..config };
    ClusterThrottle::new(url, [("a".to_string(), LIMIT)], config, quota_metrics).expect("a valid URL")
}

/// Checks until one is refused: how many were admitted, and how long it took.
async fn cluster_until_refused(throttle: &ClusterThrottle) -> (u64, Duration) {
    let started = Instant::now();
    let mut admitted = 0;
    while throttle.check("a").await.is_ok() {
        admitted += 1;
        assert!(admitted < 10_000, "never refused");
    }
    (admitted, started.elapsed())
}

fn metric(metrics: &Metrics, name: &str) -> u64 {
    let text = metrics.encode();
    let prefix = format!("{name}{{component=\"test\"}} ");
    let line = text.lines().find(|line| line.starts_with(&prefix)).unwrap_or_else(|| panic!("{name} in\n{text}"));
    line[prefix.len()..].parse().unwrap()
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn unreachable_redis_falls_back_to_the_quota_divided_by_the_expected_replicas() {
    let metrics = metrics();
    let config = SharedQuotaConfig { expected_replicas: 3, retry_every: Duration::from_secs(60), ..Default::default() };
    let throttle = cluster(&format!("redis://127.0.0.1:{}", closed_port().await), config, &metrics);
    let (admitted, elapsed) = cluster_until_refused(&throttle).await;
    // A third of the burst of 6, plus what a third of 10/s refilled meanwhile.
    let share = Quota { rate_per_second: 10, burst: 2 };
    assert!((2..=2 + refilled(share, elapsed / 3)).contains(&admitted), "{admitted} admitted in {elapsed:?}");
    assert!(throttle.is_degraded());
    assert_eq!(metric(&metrics, "test_quota_degraded"), 1);
    assert_eq!(metric(&metrics, "test_quota_fallback_checks_total"), admitted + 1, "every check decided alone");
    assert_eq!(metric(&metrics, "test_quota_degradations_total"), 1, "one transition, however many checks");
    // A refusal by the fallback still says how long to wait: a third of 10/s.
    let wait = throttle.check("a").await.unwrap_err();
    assert!(wait > Duration::ZERO && wait <= Duration::from_millis(300), "{wait:?}");
    assert!(throttle.check("no quota").await.is_ok(), "a key without a quota passes");
}

#[tokio::test]
async fn a_redis_slower_than_the_timeout_counts_as_unreachable() {
    // Accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let metrics = metrics();
    let config = SharedQuotaConfig {
        expected_replicas: 2,
        redis_timeout: Duration::from_millis(50),
        retry_every: Duration::from_secs(60),
        ..Default::default()
    };
    let throttle = cluster(&format!("redis://127.0.0.1:{port}"), config, &metrics);
    let answered = tokio::time::timeout(GUARD, throttle.check("a")).await.expect("answers despite a silent Redis");
    assert_eq!(answered, Ok(()));
    assert!(throttle.is_degraded());
    assert_eq!(metric(&metrics, "test_quota_degraded"), 1);
    let (more, elapsed) = cluster_until_refused(&throttle).await;
    let share = Quota { rate_per_second: 5, burst: 3 };
    assert!((2..=2 + refilled(share, elapsed)).contains(&more), "half the burst of 6 in all: {}", more + 1);
}

/// A TCP proxy to the test Redis that drops every connection until opened.
async fn gated_proxy() -> (u16, Arc<AtomicBool>) {
    let target = url::Url::parse(&redis_url()).unwrap();
    let upstream = format!("{}:{}", target.host_str().unwrap(), target.port().unwrap_or(6379));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let open = Arc::new(AtomicBool::new(false));
    let gate = open.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            if !gate.load(Ordering::SeqCst) {
                continue; // dropped: the client sees the connection closed
            }
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    (port, open)
}

#[tokio::test]
async fn once_redis_answers_again_the_quota_is_cluster_wide_again() {
    let (port, open) = gated_proxy().await;
    let metrics = metrics();
    let config = SharedQuotaConfig {
        expected_replicas: 3,
        redis_timeout: Duration::from_millis(500),
        retry_every: Duration::from_millis(20),
        ..Default::default()
    };
    let mut url = url::Url::parse(&redis_url()).unwrap();
    url.set_port(Some(port)).unwrap();
    let throttle = cluster(url.as_str(), config, &metrics);
    let _ = throttle.check("a").await;
    assert!(throttle.is_degraded(), "Redis closed the connection");
    assert_eq!(metric(&metrics, "test_quota_degraded"), 1);

    open.store(true, Ordering::SeqCst);
    tokio::time::timeout(GUARD, async {
        while throttle.is_degraded() {
            let _ = throttle.check("a").await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("back on Redis once it answers");
    assert_eq!(metric(&metrics, "test_quota_degraded"), 0);
    assert_eq!(metric(&metrics, "test_quota_degradations_total"), 1);
    // Redis's quota: the whole burst of 6 (less what the probe took), not a third of it.
    let (admitted, elapsed) = cluster_until_refused(&throttle).await;
    assert!(admitted >= 5 && admitted <= 6 + refilled(LIMIT, elapsed), "{admitted} admitted from Redis");
    assert!(!throttle.is_degraded());
}
