//! What every background loop shares (the outbox relay, stream consumers,
//! Fulfillment's webhook sender): how long to pause after consecutive failures,
//! so a dependency that is down is retried soon, then less often.
//!
//! ```
//! use std::time::Duration;
//! use kit::background::pause_after;
//!
//! assert_eq!(pause_after(1), Duration::from_millis(200));
//! assert_eq!(pause_after(100), Duration::from_millis(6_400));
//! ```

use std::time::Duration;

/// The pause after `failures` consecutive failures: 100 ms doubled per failure,
/// at most 6.4 s (from the sixth failure on).
pub fn pause_after(failures: u32) -> Duration {
    Duration::from_millis(100).saturating_mul(2u32.saturating_pow(failures.min(6)))
}
