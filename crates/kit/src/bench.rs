//! What the load harnesses (`services/*/examples/*_load.rs`) share: latency
//! percentiles and the way they print figures. Behind the `bench` feature,
//! enabled only from dev-dependencies.
//!
//! ```
//! use std::time::Duration;
//! use kit::bench::{ms, percentile, thousands};
//!
//! let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
//! assert_eq!(percentile(&sorted, 0.99), Duration::from_millis(99));
//! assert_eq!(ms(Duration::from_micros(1500)), "1.50 ms");
//! assert_eq!(thousands(12345.6), "12,346");
//! ```

use std::time::Duration;

/// The `p` quantile (0 to 1) of latencies sorted ascending, nearest rank; zero when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// A duration in milliseconds with two decimals: `"1.50 ms"`.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// A count with thousands separators, rounded: 12345.6 → `"12,346"`.
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A Postgres `url` with its database replaced by `database` and
/// `application_name` set (so a harness can tell its connections apart).
pub fn with_database(url: &str, database: &str, application: &str) -> String {
    let base = url.split('?').next().unwrap_or(url);
    let slash = base.rfind('/').filter(|&at| at > "postgres://".len()).unwrap_or(base.len());
    format!("{}/{database}?application_name={application}", &base[..slash])
}
