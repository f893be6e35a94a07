//! What the load harnesses (`services/*/examples/*_load.rs`) share: latency
//! percentiles, the way they print figures, and CPU use read from /proc. Behind the `bench` feature,
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

use std::collections::HashMap;
use std::time::{Duration, Instant};

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
/// `application_name` set (so a harness can tell its connections apart);
/// its other parameters (`sslmode`, ...) kept.
///
/// ```
/// assert_eq!(
///     kit::bench::with_database("postgres://pg@127.0.0.1:5432/postgres?sslmode=disable", "bench", "harness"),
///     "postgres://pg@127.0.0.1:5432/bench?sslmode=disable&application_name=harness",
/// );
/// ```
pub fn with_database(url: &str, database: &str, application: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        // Not a URL: left as given, for the connect to name the problem.
        return url.to_string();
    };
    let kept: Vec<(String, String)> =
        parsed.query_pairs().filter(|(key, _)| key != "application_name").map(|(k, v)| (k.into(), v.into())).collect();
    parsed.set_path(&format!("/{database}"));
    parsed.query_pairs_mut().clear().extend_pairs(kept).append_pair("application_name", application);
    parsed.to_string()
}

/// Cumulative CPU ticks of the machine, and of this process, Postgres and
/// Redis by pid (from /proc): two snapshots give who used the CPU between them.
pub struct CpuSnapshot {
    /// When it was taken.
    pub at: Instant,
    /// Ticks the machine was busy (neither idle nor waiting on IO).
    pub busy: u64,
    /// Ticks waiting on IO.
    pub iowait: u64,
    /// All ticks.
    pub total: u64,
    /// Per pid: who it is (`this_process`, "Postgres", "Redis") and its user + system ticks.
    pub by_pid: HashMap<u32, (&'static str, u64)>,
}

/// Reads /proc now; this process is labelled `this_process`.
pub fn cpu_snapshot(this_process: &'static str) -> CpuSnapshot {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0);
    let iowait = fields.get(4).copied().unwrap_or(0);
    let me = std::process::id();
    let mut by_pid = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let who = if pid == me {
            this_process
        } else if comm == "postgres" {
            "Postgres"
        } else if comm.starts_with("redis-server") {
            "Redis"
        } else {
            continue;
        };
        // After the comm: state is field 3; utime and stime are fields 14 and 15.
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = rest.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + rest.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        by_pid.insert(pid, (who, ticks));
    }
    CpuSnapshot { at: Instant::now(), busy: total - idle - iowait, iowait, total, by_pid }
}

/// Drops (forcing out its connections) and creates the database `name`
/// through `admin`, so every benchmark run starts empty.
pub async fn recreate_database(admin: &sqlx::PgPool, name: &str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).execute(admin).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(admin).await?;
    Ok(())
}

/// The label [`connection_states`] gives a connection running no query.
pub const IDLE: &str = "idle (no query)";

/// What the Postgres connections named `application` are doing right now,
/// counted by state: `active, on CPU`, `active, waiting on <type>:<event>`,
/// `idle in transaction (waiting for the service)`, [`IDLE`], ... Sampled
/// every ~100 ms during a run, it shows where the service's database time goes.
pub async fn connection_states(admin: &sqlx::PgPool, application: &str) -> Result<Vec<(String, u64)>, sqlx::Error> {
    let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT coalesce(state, ''), coalesce(wait_event_type, ''), coalesce(wait_event, ''), count(*)
         FROM pg_stat_activity WHERE application_name = $1 GROUP BY 1, 2, 3",
    )
    .bind(application)
    .fetch_all(admin)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(state, kind, event, n)| {
            let label = match state.as_str() {
                "active" if kind.is_empty() => "active, on CPU".to_string(),
                "active" => format!("active, waiting on {kind}:{event}"),
                "idle in transaction" => "idle in transaction (waiting for the service)".to_string(),
                "idle" => IDLE.to_string(),
                other => other.to_string(),
            };
            (label, n.unsigned_abs())
        })
        .collect())
}
