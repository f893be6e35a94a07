//! Admission control: a rate quota per key ([`Throttle`], on governor's GCRA)
//! and a concurrency gate that queues briefly, then sheds ([`ConcurrencyGate`]).
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

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::RateLimiter;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A sustained rate and the burst allowed above it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Calls per second, sustained (at least 1).
    pub rate_per_second: u32,
    /// Calls admitted at once after a quiet spell (at least 1).
    pub burst: u32,
}

/// One key's limiter on clock `C`.
type Limiter<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A rate quota per key, each key independent of the others.
pub struct Throttle<C: Clock = DefaultClock> {
    limiters: HashMap<String, Limiter<C>>,
    clock: C,
}

impl Throttle {
    /// One limiter per key on the system clock; a zero rate or burst counts as one.
    pub fn new(quotas: impl IntoIterator<Item = (String, Quota)>) -> Self {
        Self::with_clock(quotas, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Throttle<C> {
    /// The same on a given clock (tests use governor's `FakeRelativeClock`).
    pub fn with_clock(quotas: impl IntoIterator<Item = (String, Quota)>, clock: C) -> Self {
        let limiters = quotas
            .into_iter()
            .map(|(key, quota)| {
                let rate = NonZeroU32::new(quota.rate_per_second).unwrap_or(NonZeroU32::MIN);
                let burst = NonZeroU32::new(quota.burst).unwrap_or(NonZeroU32::MIN);
                let quota = governor::Quota::per_second(rate).allow_burst(burst);
                (key, RateLimiter::direct_with_clock(quota, clock.clone()))
            })
            .collect();
        Self { limiters, clock }
    }

    /// Admits one call for `key`, or answers how long until one would be
    /// admitted. A key without a quota is admitted.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        match self.limiters.get(key) {
            None => Ok(()),
            Some(limiter) => limiter.check().map_err(|not_until| not_until.wait_time_from(self.clock.now())),
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
