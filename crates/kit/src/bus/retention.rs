//! How long the bus keeps what it keeps ([`BusConfig`]), what a stream holds
//! after a trim ([`StreamStats`]), and the task that trims every stream a
//! client used, periodically, and reports it ([`Retention`]).
//!
//! Why a task per bus client rather than trimming in the consumer: a stream
//! may have no consumer at all (`commerce.fulfillments.v1` today), yet its
//! dedupe memory must still be pruned; and every component that publishes or
//! consumes owns such a client. So each component's client trims the streams
//! it published to or read, every [`BusConfig::trim_every`]. Several pods
//! trimming one stream is harmless: a trim decides from the state it sees
//! (Redis: inside one script; the log: inside one write transaction), so
//! none can drop an entry a group still needs, and a trim with nothing to do
//! costs a few reads.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{BusError, EventBus};

/// How long a published event id is remembered by default.
pub const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// What the bus keeps, and for how long (`MESH_BUS__...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BusConfig {
    /// How long a published event id is remembered: publishing it again within
    /// this window appends nothing. Entries of a stream that no consumer group
    /// reads are kept this long too, so a group created later still finds them.
    #[serde(with = "humantime_serde")]
    pub dedupe_window: Duration,
    /// The safety net: a stream (and its dead-letter stream) keeps about this
    /// many entries at most, even those a group has not read or acknowledged
    /// yet, so a consumer group that stopped reading cannot grow Redis without
    /// bound. Entries beyond it are lost to that group. Approximate: Redis
    /// trims whole nodes of up to 100 entries (`stream-node-max-entries`).
    pub max_len: u64,
    /// How long dead letters are kept (for operators to read and replay).
    #[serde(with = "humantime_serde")]
    pub dead_letter_window: Duration,
    /// How often each component trims the streams it uses.
    #[serde(with = "humantime_serde")]
    pub trim_every: Duration,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            dedupe_window: DEFAULT_DEDUPE_WINDOW,
            max_len: 2_000_000,
            dead_letter_window: DEFAULT_DEDUPE_WINDOW,
            trim_every: Duration::from_secs(30),
        }
    }
}

/// A bus setting that cannot be used, named.
#[derive(Debug, thiserror::Error)]
#[error("bus.{0}")]
pub struct BusConfigError(String);

impl BusConfig {
    /// Refuses settings that would forget at once, trim nothing, or spin.
    pub fn check(&self) -> Result<(), BusConfigError> {
        let problem = |text: &str| Err(BusConfigError(text.into()));
        if self.dedupe_window < Duration::from_secs(1) {
            return problem("dedupe_window must be at least 1s");
        }
        if self.dead_letter_window < Duration::from_secs(1) {
            return problem("dead_letter_window must be at least 1s");
        }
        if self.max_len < 100 {
            return problem("max_len must be at least 100 (Redis trims whole nodes of up to 100 entries)");
        }
        if self.trim_every < Duration::from_millis(10) || self.trim_every > Duration::from_secs(86_400) {
            return problem("trim_every must be between 10ms and 24h");
        }
        Ok(())
    }
}

/// What a stream keeps after a [`EventBus::trim`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Entries on the stream.
    pub entries: u64,
    /// When the oldest of them was appended; None when there are none.
    pub oldest_entry: Option<DateTime<Utc>>,
    /// Published event ids remembered for the dedupe window.
    pub dedupe_markers: u64,
    /// Entries on the dead-letter stream.
    pub dead_letters: u64,
    /// Entries this trim removed, from the stream and its dead-letter stream.
    pub trimmed: u64,
}

/// Labels of the per-stream metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    /// The component whose bus client reports it (several may report one stream).
    pub component: Option<String>,
    /// The stream.
    pub stream: String,
}

/// The per-stream metrics of [`Retention`]: one family each, shared by every
/// component of the process ([`crate::metrics::Metrics::shared`]), labelled
/// `component` and `stream`.
#[derive(Clone, Debug)]
pub struct RetentionMetrics {
    component: Option<String>,
    /// `bus_stream_entries`: entries on the stream after the last trim.
    pub entries: Family<StreamLabels, Gauge>,
    /// `bus_stream_oldest_entry_age_seconds`: age of its oldest entry; 0 when empty.
    pub oldest_entry_age: Family<StreamLabels, Gauge<f64, AtomicU64>>,
    /// `bus_stream_dedupe_markers`: event ids remembered.
    pub dedupe_markers: Family<StreamLabels, Gauge>,
    /// `bus_dead_letter_stream_entries`: entries on the dead-letter stream.
    pub dead_letters: Family<StreamLabels, Gauge>,
    /// `bus_stream_trimmed_entries_total`: entries trimmed.
    pub trimmed: Family<StreamLabels, Counter>,
}

impl RetentionMetrics {
    /// The families of `metrics`' registry, registered there once, recording as `metrics`' component.
    pub fn new(metrics: &crate::metrics::Metrics) -> Self {
        Self {
            component: metrics.component().map(str::to_string),
            entries: metrics.shared("bus_stream_entries", "Entries on an event stream", Family::default),
            oldest_entry_age: metrics.shared(
                "bus_stream_oldest_entry_age_seconds",
                "Age of the oldest entry an event stream keeps",
                Family::default,
            ),
            dedupe_markers: metrics.shared(
                "bus_stream_dedupe_markers",
                "Published event ids an event stream remembers for its dedupe window",
                Family::default,
            ),
            dead_letters: metrics.shared(
                "bus_dead_letter_stream_entries",
                "Entries on an event stream's dead-letter stream",
                Family::default,
            ),
            trimmed: metrics.shared(
                "bus_stream_trimmed_entries",
                "Entries trimmed from an event stream and its dead-letter stream",
                Family::default,
            ),
        }
    }

    /// Records what `stream` keeps as of `now`.
    pub fn record(&self, stream: &str, stats: &StreamStats, now: DateTime<Utc>) {
        let labels = StreamLabels { component: self.component.clone(), stream: stream.to_string() };
        self.entries.get_or_create(&labels).set(gauge_value(stats.entries));
        let age = stats.oldest_entry.map_or(0.0, |oldest| (now - oldest).as_seconds_f64().max(0.0));
        self.oldest_entry_age.get_or_create(&labels).set(age);
        self.dedupe_markers.get_or_create(&labels).set(gauge_value(stats.dedupe_markers));
        self.dead_letters.get_or_create(&labels).set(gauge_value(stats.dead_letters));
        self.trimmed.get_or_create(&labels).inc_by(stats.trimmed);
    }
}

fn gauge_value(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// Trims every stream a bus client used ([`EventBus::streams`]), every
/// `trim_every`, and records what each keeps.
pub struct Retention {
    bus: Arc<dyn EventBus>,
    every: Duration,
    metrics: RetentionMetrics,
}

impl Retention {
    /// The task for `bus`, trimming every `every` and recording into `metrics` (the component's handle).
    pub fn new(bus: Arc<dyn EventBus>, every: Duration, metrics: &crate::metrics::Metrics) -> Self {
        Self { bus, every, metrics: RetentionMetrics::new(metrics) }
    }

    /// Trims every stream the client used, once, as of `now`; answers what each keeps.
    /// A stream that fails is logged and skipped (the next round tries again); the first
    /// failure is answered after the others were trimmed.
    pub async fn trim_all(&self, now: DateTime<Utc>) -> Result<Vec<(String, StreamStats)>, BusError> {
        let mut kept = Vec::new();
        let mut failure = None;
        for stream in self.bus.streams() {
            match self.bus.trim(&stream, now).await {
                Ok(stats) => {
                    self.metrics.record(&stream, &stats, now);
                    kept.push((stream, stats));
                }
                Err(error) => {
                    failure.get_or_insert(error);
                }
            }
        }
        failure.map_or(Ok(kept), Err)
    }

    /// Trims every `every` until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            if let Err(error) = self.trim_all(Utc::now()).await {
                tracing::warn!(%error, retry_in = ?self.every, "could not trim the event streams");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.every) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_would_forget_at_once_or_spin_are_refused_by_name() {
        assert!(BusConfig::default().check().is_ok());
        let refused = |change: fn(&mut BusConfig)| {
            let mut config = BusConfig::default();
            change(&mut config);
            config.check().map_err(|e| e.to_string()).expect_err("refused")
        };
        assert!(refused(|c| c.dedupe_window = Duration::ZERO).contains("bus.dedupe_window"));
        assert!(refused(|c| c.dead_letter_window = Duration::ZERO).contains("bus.dead_letter_window"));
        assert!(refused(|c| c.max_len = 10).contains("bus.max_len"));
        assert!(refused(|c| c.trim_every = Duration::ZERO).contains("bus.trim_every"));
    }

    #[test]
    fn a_stream_is_recorded_with_its_component_and_age() {
        let metrics = crate::metrics::Metrics::new();
        let recorder = RetentionMetrics::new(&metrics.for_component("purchase-history"));
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let stats = StreamStats {
            entries: 3,
            oldest_entry: Some(now - chrono::Duration::seconds(90)),
            dedupe_markers: 7,
            dead_letters: 1,
            trimmed: 5,
        };
        recorder.record("orders", &stats, now);
        let text = metrics.encode();
        let labels = r#"{component="purchase-history",stream="orders"}"#;
        for line in [
            format!("bus_stream_entries{labels} 3"),
            format!("bus_stream_oldest_entry_age_seconds{labels} 90.0"),
            format!("bus_stream_dedupe_markers{labels} 7"),
            format!("bus_dead_letter_stream_entries{labels} 1"),
            format!("bus_stream_trimmed_entries_total{labels} 5"),
        ] {
            assert!(text.contains(&line), "{line} in\n{text}");
        }
    }
}
