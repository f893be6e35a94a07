//! Admission control: a rate quota per key ([`Quotas`]: in process on
//! governor's GCRA, or cluster-wide in Redis) and a concurrency gate that
//! queues briefly, then sheds ([`ConcurrencyGate`]).
//!
//! A quota has governor's semantics wherever it is kept: after a quiet spell
//! `burst` calls pass at once, then one per `1 / rate_per_second`; a refused
//! call learns how long until one would pass.
//!
//! Keys are either known up front with their quotas (`check(key)`: a
//! catalog source) or met as calls arrive, each check naming its quota
//! (`check_with(key, quota)`: the gateway's callers); a key met that way is
//! forgotten in process once idle long enough to have its whole burst again.
//!
//! - [`Throttle`]: governor in this process. What the embedded mesh (`up`)
//!   uses: one process holds the whole quota.
//! - [`RedisQuota`]: the same GCRA in one Redis script on Redis's clock, so
//!   every replica of a service shares one quota per key.
//! - [`ClusterThrottle`]: [`RedisQuota`], and while Redis does not answer
//!   (unreachable, an error, slower than `redis_timeout`) a per-replica
//!   [`Throttle`] of the quota divided by `expected_replicas`, said in a metric
//!   and a log line; it goes back to Redis as soon as Redis answers.
//!
//! ```
//! use std::time::Duration;
//! use kit::throttle::{Quota, Throttle};
//!
//! let throttle = Throttle::new([("exec-ed".to_string(), Quota { rate_per_second: 10, burst: 2 })]);
//! assert!(throttle.check("exec-ed").is_ok());
//! assert!(throttle.check("exec-ed").is_ok());
//! // The burst is spent: the next call is refused with how long to wait.
//! let wait = throttle.check("exec-ed").unwrap_err();
//! assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100));
//! ```

mod redis_gcra;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::RateLimiter;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

pub use self::redis_gcra::{DEFAULT_KEY_PREFIX, RedisQuota};

/// A sustained rate and the burst allowed above it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Calls per second, sustained (at least 1).
    pub rate_per_second: u32,
    /// Calls admitted at once after a quiet spell (at least 1).
    pub burst: u32,
}

impl Quota {
    /// This quota's share for one of `replicas` replicas: the rate and the
    /// burst divided (the rate may become fractional; the burst is at least 1).
    fn governor_share(self, replicas: u32) -> governor::Quota {
        let replicas = replicas.max(1);
        let rate = self.rate_per_second.max(1);
        // One call per `replicas / rate` seconds: exact for a fractional share.
        let period = Duration::from_secs(u64::from(replicas)) / rate;
        let burst = NonZeroU32::new(self.burst / replicas).unwrap_or(NonZeroU32::MIN);
        governor::Quota::with_period(period)
            .unwrap_or_else(|| governor::Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst)
    }
}

/// A check's answer: admitted, or refused with how long until a call would be admitted.
pub type Verdict = Result<(), Duration>;

/// One key's limiter on clock `C`.
type Limiter<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Keys met as calls arrive, all under one quota, on clock `C`.
type KeyedLimiter<C> = RateLimiter<String, DefaultKeyedStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Checks of keys met as calls arrive between two sweeps of their idle keys.
const SWEEP_EVERY_CHECKS: u64 = 4096;

/// A rate quota per key, each key independent of the others, in this process.
pub struct Throttle<C: Clock = DefaultClock> {
    limiters: HashMap<String, Limiter<C>>,
    clock: C,
    /// How many replicas share each quota ([`Throttle::per_replica`]).
    replicas: u32,
    /// Keys met as calls arrive ([`Throttle::check_with`]): one keyed limiter per distinct quota.
    by_quota: Mutex<HashMap<Quota, Arc<KeyedLimiter<C>>>>,
    /// Checks through `by_quota`, to sweep its idle keys now and then.
    keyed_checks: AtomicU64,
}

impl Throttle {
    /// One limiter per key on the system clock; a zero rate or burst counts as one.
    pub fn new(quotas: impl IntoIterator<Item = (String, Quota)>) -> Self {
        Self::with_clock(quotas, DefaultClock::default())
    }

    /// Each key's share when `replicas` replicas split its quota: rate and
    /// burst divided by `replicas` (the burst at least 1).
    pub fn per_replica(quotas: impl IntoIterator<Item = (String, Quota)>, replicas: u32) -> Self {
        Self::shared_with_clock(quotas, replicas, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Throttle<C> {
    /// The same on a given clock (tests use governor's `FakeRelativeClock`).
    pub fn with_clock(quotas: impl IntoIterator<Item = (String, Quota)>, clock: C) -> Self {
        Self::shared_with_clock(quotas, 1, clock)
    }

    /// [`Throttle::per_replica`] on a given clock.
    pub fn shared_with_clock(quotas: impl IntoIterator<Item = (String, Quota)>, replicas: u32, clock: C) -> Self {
        let limiters = quotas
            .into_iter()
            .map(|(key, quota)| (key, RateLimiter::direct_with_clock(quota.governor_share(replicas), clock.clone())))
            .collect();
        Self {
            limiters,
            clock,
            replicas: replicas.max(1),
            by_quota: Mutex::new(HashMap::new()),
            keyed_checks: AtomicU64::new(0),
        }
    }

    /// Admits one call for `key`, or answers how long until one would be
    /// admitted. A key without a quota is admitted.
    pub fn check(&self, key: &str) -> Verdict {
        match self.limiters.get(key) {
            None => Ok(()),
            Some(limiter) => limiter.check().map_err(|not_until| not_until.wait_time_from(self.clock.now())),
        }
    }

    /// Admits one call for `key` under `quota` (this replica's share of it),
    /// or answers how long until one would be admitted: for keys not known
    /// up front. Keys idle long enough to be full again are dropped now and
    /// then, so a stream of one-off keys does not grow the process.
    pub fn check_with(&self, key: &str, quota: Quota) -> Verdict {
        let limiter = {
            let mut by_quota = self.by_quota.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(by_quota.entry(quota).or_insert_with(|| {
                Arc::new(RateLimiter::dashmap_with_clock(quota.governor_share(self.replicas), self.clock.clone()))
            }))
        };
        if self.keyed_checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY_CHECKS == SWEEP_EVERY_CHECKS - 1 {
            self.sweep_idle_keys();
        }
        limiter.check_key(&key.to_string()).map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Drops the keys of [`Throttle::check_with`] whose state is a fresh key's.
    fn sweep_idle_keys(&self) {
        let limiters: Vec<_> = self.by_quota.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
        for limiter in limiters {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// How many keys met through [`Throttle::check_with`] are remembered (after a sweep of idle ones).
    pub fn remembered_keys(&self) -> usize {
        self.sweep_idle_keys();
        self.by_quota.lock().unwrap_or_else(PoisonError::into_inner).values().map(|limiter| limiter.len()).sum()
    }
}

/// How a cluster-wide quota ([`ClusterThrottle`]) behaves when Redis does not answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SharedQuotaConfig {
    /// How many replicas usually share the quota: while Redis does not answer,
    /// each admits its quota divided by this (rate and burst).
    pub expected_replicas: u32,
    /// How long a check waits for Redis before the replica decides alone.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// While Redis does not answer, how often one check tries it again (the
    /// others decide alone meanwhile, without waiting).
    #[serde(with = "humantime_serde")]
    pub retry_every: Duration,
    /// Prefix of the keys in Redis (`<prefix><key>`), so several deployments can share one Redis.
    pub key_prefix: String,
}

impl Default for SharedQuotaConfig {
    fn default() -> Self {
        Self {
            expected_replicas: 1,
            redis_timeout: Duration::from_millis(200),
            retry_every: Duration::from_secs(1),
            key_prefix: DEFAULT_KEY_PREFIX.to_string(),
        }
    }
}

/// Why a quota backend could not be set up or answered.
#[derive(Debug, thiserror::Error)]
pub enum ThrottleError {
    /// Redis refused the URL, could not be reached, or answered an error.
    #[error("quota store: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer within the timeout.
    #[error("quota store: no answer within {0:?}")]
    Timeout(Duration),
    /// The script answered something other than a wait in microseconds.
    #[error("quota store: unexpected answer {0}")]
    Unexpected(i64),
}

/// What a [`ClusterThrottle`] says about itself (register with [`QuotaMetrics::register`]).
#[derive(Clone, Debug, Default)]
pub struct QuotaMetrics {
    /// 1 while Redis does not answer and each replica admits its divided share; else 0.
    pub degraded: Gauge,
    /// Checks decided by the per-replica fallback instead of Redis.
    pub fallback_checks: Counter,
    /// Times the quota went from Redis to the per-replica fallback.
    pub degradations: Counter,
}

impl QuotaMetrics {
    /// Registers `<prefix>_quota_degraded`, `<prefix>_quota_fallback_checks_total`
    /// and `<prefix>_quota_degradations_total`.
    pub fn register(&self, prefix: &str, metrics: &crate::metrics::Metrics) {
        metrics.register(
            format!("{prefix}_quota_degraded"),
            "1 while Redis does not answer and each replica admits its quota divided by expected_replicas",
            self.degraded.clone(),
        );
        metrics.register(
            format!("{prefix}_quota_fallback_checks"),
            "Quota checks decided by the per-replica fallback instead of Redis",
            self.fallback_checks.clone(),
        );
        metrics.register(
            format!("{prefix}_quota_degradations"),
            "Times the quota fell back from Redis to the per-replica share",
            self.degradations.clone(),
        );
    }
}

/// A quota per key shared by every replica through Redis ([`RedisQuota`]),
/// falling back to a per-replica share while Redis does not answer.
pub struct ClusterThrottle {
    quotas: HashMap<String, Quota>,
    redis: RedisQuota,
    fallback: Throttle,
    config: SharedQuotaConfig,
    metrics: QuotaMetrics,
    /// Whether checks are decided by `fallback` (Redis did not answer last time).
    degraded: AtomicBool,
    /// While degraded: when the next check may try Redis again.
    retry_at: Mutex<Instant>,
}

impl ClusterThrottle {
    /// The quotas kept in Redis at `redis_url` (connected lazily: an
    /// unreachable Redis only makes the first checks fall back).
    pub fn new(
        redis_url: &str,
        quotas: impl IntoIterator<Item = (String, Quota)>,
        config: SharedQuotaConfig,
        metrics: QuotaMetrics,
    ) -> Result<Self, ThrottleError> {
        let quotas: HashMap<String, Quota> = quotas.into_iter().collect();
        let redis = RedisQuota::connect(redis_url, config.redis_timeout)?.with_prefix(&config.key_prefix);
        let fallback = Throttle::per_replica(quotas.clone(), config.expected_replicas);
        Ok(Self {
            quotas,
            redis,
            fallback,
            config,
            metrics,
            degraded: AtomicBool::new(false),
            retry_at: Mutex::new(Instant::now()),
        })
    }

    /// Admits one call for `key` against the cluster-wide quota (or, while
    /// Redis does not answer, this replica's share). A key without a quota is admitted.
    pub async fn check(&self, key: &str) -> Verdict {
        let Some(quota) = self.quotas.get(key) else { return Ok(()) };
        self.check_in_redis(key, *quota, || self.fallback.check(key)).await
    }

    /// Admits one call for `key` under `quota`, for keys not known up front
    /// (the gateway's callers): cluster-wide in Redis, or while Redis does not
    /// answer this replica's share of `quota`.
    pub async fn check_with(&self, key: &str, quota: Quota) -> Verdict {
        self.check_in_redis(key, quota, || self.fallback.check_with(key, quota)).await
    }

    /// Asks Redis, or `alone` while Redis does not answer.
    async fn check_in_redis(&self, key: &str, quota: Quota, alone: impl FnOnce() -> Verdict) -> Verdict {
        if self.degraded.load(Ordering::Acquire) && !self.take_retry() {
            return self.decide_alone(alone);
        }
        let asked = tokio::time::timeout(self.config.redis_timeout, self.redis.check(key, quota)).await;
        match asked.unwrap_or(Err(ThrottleError::Timeout(self.config.redis_timeout))) {
            Ok(verdict) => {
                if self.degraded.swap(false, Ordering::AcqRel) {
                    self.metrics.degraded.set(0);
                    tracing::info!("Redis answers again: quotas are cluster-wide again");
                }
                verdict
            }
            Err(error) => {
                self.schedule_retry();
                if !self.degraded.swap(true, Ordering::AcqRel) {
                    self.metrics.degraded.set(1);
                    self.metrics.degradations.inc();
                    tracing::warn!(
                        %error,
                        expected_replicas = self.config.expected_replicas,
                        "Redis does not answer: each replica admits its quota divided by expected_replicas \
                         until it does"
                    );
                }
                self.decide_alone(alone)
            }
        }
    }

    /// Whether Redis did not answer the last check that asked it.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Acquire)
    }

    fn decide_alone(&self, alone: impl FnOnce() -> Verdict) -> Verdict {
        self.metrics.fallback_checks.inc();
        alone()
    }

    /// Whether this check is the one that tries Redis again (at most one per `retry_every`).
    fn take_retry(&self) -> bool {
        let mut retry_at = self.retry_at.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if now < *retry_at {
            return false;
        }
        *retry_at = now + self.config.retry_every;
        true
    }

    fn schedule_retry(&self) {
        *self.retry_at.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now() + self.config.retry_every;
    }
}

/// Per-key quotas, kept where the deployment asks.
pub enum Quotas {
    /// In this process (governor): the embedded mesh, or a single replica without Redis.
    InProcess(Throttle),
    /// Shared by every replica through Redis, with a per-replica fallback.
    Cluster(Box<ClusterThrottle>),
}

impl Quotas {
    /// In-process quotas.
    pub fn in_process(quotas: impl IntoIterator<Item = (String, Quota)>) -> Self {
        Self::InProcess(Throttle::new(quotas))
    }

    /// Cluster-wide quotas in Redis at `redis_url`.
    pub fn cluster(
        redis_url: &str,
        quotas: impl IntoIterator<Item = (String, Quota)>,
        config: SharedQuotaConfig,
        metrics: QuotaMetrics,
    ) -> Result<Self, ThrottleError> {
        Ok(Self::Cluster(Box::new(ClusterThrottle::new(redis_url, quotas, config, metrics)?)))
    }

    /// Admits one call for `key`, or answers how long until one would be admitted.
    pub async fn check(&self, key: &str) -> Verdict {
        match self {
            Quotas::InProcess(throttle) => throttle.check(key),
            Quotas::Cluster(cluster) => cluster.check(key).await,
        }
    }

    /// Admits one call for `key` under `quota`, a key not known up front.
    pub async fn check_with(&self, key: &str, quota: Quota) -> Verdict {
        match self {
            Quotas::InProcess(throttle) => throttle.check_with(key, quota),
            Quotas::Cluster(cluster) => cluster.check_with(key, quota).await,
        }
    }
}

/// At most `limit` holders at once; a caller waits up to `max_wait` for room,
/// then is turned away, so a flood queues briefly instead of piling onto the
/// database.
#[derive(Clone, Debug)]
pub struct ConcurrencyGate {
    permits: Arc<Semaphore>,
    max_wait: Duration,
}

/// Held while a call runs; dropping it lets the next one in.
#[derive(Debug)]
pub struct Admitted(#[allow(dead_code)] OwnedSemaphorePermit);

impl ConcurrencyGate {
    /// A gate for `limit` concurrent calls (at least one) waiting up to `max_wait`.
    pub fn new(limit: usize, max_wait: Duration) -> Self {
        Self { permits: Arc::new(Semaphore::new(limit.max(1))), max_wait }
    }

    /// Room for one call, or None when there was none within `max_wait`.
    pub async fn enter(&self) -> Option<Admitted> {
        match tokio::time::timeout(self.max_wait, Arc::clone(&self.permits).acquire_owned()).await {
            Ok(Ok(permit)) => Some(Admitted(permit)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_throttled_independently_and_unknown_keys_pass() {
        let quota = Quota { rate_per_second: 1, burst: 3 };
        let throttle = Throttle::new([("a".to_string(), quota), ("b".to_string(), quota)]);
        for _ in 0..3 {
            assert!(throttle.check("a").is_ok());
        }
        assert!(throttle.check("a").is_err(), "a's burst is spent");
        assert!(throttle.check("b").is_ok(), "b has its own");
        assert!(throttle.check("c").is_ok());
    }

    #[test]
    fn after_the_burst_the_quota_refills_at_its_rate() {
        let clock = governor::clock::FakeRelativeClock::default();
        let quota = Quota { rate_per_second: 10, burst: 5 };
        let throttle = Throttle::with_clock([("a".to_string(), quota), ("b".to_string(), quota)], clock.clone());
        let admitted = |key: &str| (0..100).take_while(|_| throttle.check(key).is_ok()).count();
        assert_eq!(admitted("a"), 5, "the burst");
        assert_eq!(throttle.check("a"), Err(Duration::from_millis(100)), "one call per 100 ms at 10/s");
        clock.advance(Duration::from_secs(1));
        assert_eq!(admitted("a"), 5, "a second refills 10, capped at the burst");
        for _ in 0..30 {
            clock.advance(Duration::from_millis(100));
            assert_eq!(admitted("a"), 1, "then exactly one per 100 ms");
        }
        assert_eq!(admitted("b"), 5, "b's quota was never touched");
    }

    #[test]
    fn a_replicas_share_divides_rate_and_burst() {
        let clock = governor::clock::FakeRelativeClock::default();
        let quota = Quota { rate_per_second: 10, burst: 6 };
        let throttle = Throttle::shared_with_clock([("a".to_string(), quota)], 3, clock.clone());
        let admitted = || (0..100).take_while(|_| throttle.check("a").is_ok()).count();
        assert_eq!(admitted(), 2, "a third of the burst");
        assert_eq!(throttle.check("a"), Err(Duration::from_millis(300)), "a third of 10/s: one per 300 ms");
        for _ in 0..10 {
            clock.advance(Duration::from_millis(300));
            assert_eq!(admitted(), 1);
        }
        let tiny = Throttle::shared_with_clock([("a".to_string(), Quota { rate_per_second: 1, burst: 1 })], 4, clock);
        assert!(tiny.check("a").is_ok(), "a share never rounds down to nothing");
        assert_eq!(tiny.check("a"), Err(Duration::from_secs(4)));
    }

    #[test]
    fn keys_met_as_calls_arrive_each_get_the_quota_named_and_idle_ones_are_forgotten() {
        let clock = governor::clock::FakeRelativeClock::default();
        let throttle = Throttle::with_clock(std::iter::empty(), clock.clone());
        let small = Quota { rate_per_second: 10, burst: 2 };
        let large = Quota { rate_per_second: 10, burst: 5 };
        let admitted = |key: &str, quota| (0..100).take_while(|_| throttle.check_with(key, quota).is_ok()).count();
        assert_eq!(admitted("caller-a", small), 2);
        assert_eq!(throttle.check_with("caller-a", small), Err(Duration::from_millis(100)));
        assert_eq!(admitted("caller-b", small), 2, "b has its own");
        assert_eq!(admitted("caller-c", large), 5, "c's quota is the one its checks name");
        assert_eq!(throttle.remembered_keys(), 3);
        clock.advance(Duration::from_secs(1));
        assert_eq!(throttle.remembered_keys(), 0, "full again: nothing to remember");
        assert_eq!(admitted("caller-a", small), 2, "and a forgotten key starts with its burst");
        let shared = Throttle::shared_with_clock(std::iter::empty(), 2, clock);
        let admitted = (0..100).take_while(|_| shared.check_with("caller-a", large).is_ok()).count();
        assert_eq!(admitted, 2, "a replica's share of the burst, as for known keys");
    }

    #[tokio::test]
    async fn the_gate_admits_up_to_its_limit_then_sheds_after_the_wait() {
        let gate = ConcurrencyGate::new(2, Duration::from_millis(20));
        let first = gate.enter().await.expect("room");
        let _second = gate.enter().await.expect("room");
        assert!(gate.enter().await.is_none(), "full: shed after the wait");
        drop(first);
        assert!(gate.enter().await.is_some(), "room again");
    }
}
