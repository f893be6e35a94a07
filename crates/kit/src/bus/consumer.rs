//! The consumer loop every stream reader shares: read a batch, hand it to the
//! service, acknowledge what it settled, dead-letter what it refused, and
//! reclaim entries a dead consumer left pending.
//!
//! Delivery is at least once: the handler commits its effect before the
//! entries are acknowledged, so a consumer that dies in between leaves them
//! pending, and whoever reclaims them hands them to the handler again — which
//! must therefore be idempotent (store by a unique id). An entry delivered more
//! than `max_deliveries` times is dead-lettered without another try.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{BusError, Delivery, EntryId, EventBus};

/// How a consumer reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConsumerConfig {
    /// Entries per batch at most.
    pub batch: usize,
    /// How long a read waits for new entries.
    #[serde(with = "humantime_serde")]
    pub block: Duration,
    /// Entries pending this long with another consumer are taken over.
    #[serde(with = "humantime_serde")]
    pub reclaim_idle: Duration,
    /// How often to look for such entries.
    #[serde(with = "humantime_serde")]
    pub reclaim_every: Duration,
    /// Deliveries after which an entry is dead-lettered instead of handled again.
    pub max_deliveries: u64,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            // A round costs a few round trips (read, store, commit, acknowledge),
            // so larger batches go faster: 1,000 gave 26-28 k events/s per
            // consumer on Postgres (docs/BENCHMARKS.md).
            batch: 1000,
            block: Duration::from_secs(1),
            reclaim_idle: Duration::from_secs(30),
            reclaim_every: Duration::from_secs(10),
            max_deliveries: 5,
        }
    }
}

/// What the handler decided for one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Its effect is committed: acknowledge it.
    Settled,
    /// It can never be handled: move it to the dead-letter stream with this reason.
    Refused(String),
}

/// The service's side of a consumer: settle a batch, answering one verdict per
/// entry in order. An error leaves the whole batch pending (it is reclaimed and
/// tried again later).
#[async_trait::async_trait]
pub trait BatchHandler: Send + Sync {
    /// Handles `batch`; the answer has one verdict per entry, in order.
    async fn handle(&self, batch: &[Delivery]) -> Result<Vec<Verdict>, Box<dyn std::error::Error + Send + Sync>>;
}

/// A batch's payloads decoded one by one: the events that decoded, in order,
/// and one verdict per delivery for once they are applied ([`Verdict::Refused`]
/// with the decoder's reason where a payload did not decode).
#[derive(Debug)]
pub struct DecodedBatch<T> {
    /// The events that decoded, in the batch's order.
    pub events: Vec<T>,
    /// One verdict per delivery, in order.
    pub verdicts: Vec<Verdict>,
}

/// Decodes each delivery's payload with `decode`, for a handler that applies the
/// valid events together and refuses the rest.
pub fn decode_batch<T, E: std::fmt::Display>(
    batch: &[Delivery],
    decode: impl Fn(&[u8]) -> Result<T, E>,
) -> DecodedBatch<T> {
    let mut decoded =
        DecodedBatch { events: Vec::with_capacity(batch.len()), verdicts: Vec::with_capacity(batch.len()) };
    for delivery in batch {
        match decode(&delivery.payload) {
            Ok(event) => {
                decoded.events.push(event);
                decoded.verdicts.push(Verdict::Settled);
            }
            Err(reason) => decoded.verdicts.push(Verdict::Refused(reason.to_string())),
        }
    }
    decoded
}

/// The consumer's metrics (register them with [`ConsumerMetrics::register`]).
#[derive(Clone, Debug)]
pub struct ConsumerMetrics {
    /// Entries read but not acknowledged, in the group (sampled after each batch).
    pub pending: Gauge,
    /// Entries moved to the dead-letter stream.
    pub dead_letters: Counter,
    /// Entries the handler refused as invalid: a producer wrote what this
    /// consumer cannot read, a seam failure worth paging on (also counted in
    /// `dead_letters`).
    pub refused: Counter,
    /// Entries per handled batch.
    pub batch_size: Histogram,
    /// Seconds to handle and acknowledge a batch.
    pub batch_seconds: Histogram,
}

impl Default for ConsumerMetrics {
    fn default() -> Self {
        Self {
            pending: Gauge::default(),
            dead_letters: Counter::default(),
            refused: Counter::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            batch_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
        }
    }
}

impl ConsumerMetrics {
    /// Registers the metrics as `<prefix>_pending`, `<prefix>_dead_letters_total`, …
    pub fn register(&self, prefix: &str, metrics: &crate::metrics::Metrics) {
        metrics.register(
            format!("{prefix}_pending"),
            "Stream entries read but not yet acknowledged",
            self.pending.clone(),
        );
        metrics.register(
            format!("{prefix}_dead_letters"),
            "Entries moved to the dead-letter stream",
            self.dead_letters.clone(),
        );
        metrics.register(
            format!("{prefix}_refused"),
            "Entries the consumer refused as invalid (a producer and this consumer disagree: a seam failure)",
            self.refused.clone(),
        );
        metrics.register(format!("{prefix}_batch_size"), "Entries per handled batch", self.batch_size.clone());
        metrics.register(
            format!("{prefix}_batch_seconds"),
            "Time to handle and acknowledge a batch",
            self.batch_seconds.clone(),
        );
    }
}

/// One consumer of one group on one stream.
pub struct Consumer {
    bus: Arc<dyn EventBus>,
    stream: String,
    group: String,
    name: String,
    config: ConsumerConfig,
    metrics: ConsumerMetrics,
    /// When the pending gauge was last sampled.
    pending_sampled: std::sync::Mutex<Option<Instant>>,
}

/// The longest a stopping consumer waits to leave its group (the bus may be down).
const LEAVE_WITHIN: Duration = Duration::from_secs(2);

/// How often the pending gauge is read from the bus, at most.
const PENDING_EVERY: Duration = Duration::from_secs(1);

impl Consumer {
    /// Consumer `name` of `group` on `stream`.
    pub fn new(
        bus: Arc<dyn EventBus>,
        stream: &str,
        group: &str,
        name: &str,
        config: ConsumerConfig,
        metrics: ConsumerMetrics,
    ) -> Self {
        Self {
            bus,
            stream: stream.into(),
            group: group.into(),
            name: name.into(),
            config,
            metrics,
            pending_sampled: std::sync::Mutex::new(None),
        }
    }

    /// Consumes until `shutdown`. Bus and handler failures are logged and
    /// retried with a growing pause; nothing acknowledged is ever handled again.
    /// Then leaves the group if it holds nothing pending ([`EventBus::leave`]).
    pub async fn run(&self, handler: &dyn BatchHandler, shutdown: CancellationToken) {
        self.consume(handler, shutdown).await;
        match tokio::time::timeout(LEAVE_WITHIN, self.bus.leave(&self.stream, &self.group, &self.name)).await {
            Ok(Ok(true)) => tracing::debug!(stream = %self.stream, consumer = %self.name, "left the consumer group"),
            Ok(Ok(false)) => tracing::info!(
                stream = %self.stream,
                consumer = %self.name,
                "stays in the consumer group: it holds pending entries, which another consumer reclaims"
            ),
            Ok(Err(error)) => tracing::warn!(%error, stream = %self.stream, "cannot leave the consumer group"),
            Err(_) => tracing::warn!(stream = %self.stream, "leaving the consumer group took too long; left as is"),
        }
    }

    async fn consume(&self, handler: &dyn BatchHandler, shutdown: CancellationToken) {
        let mut failures = 0u32;
        let mut last_reclaim: Option<Instant> = None;
        // The group is made sure of once, and again after any failure (a
        // restarted or flushed Redis loses it): not a round trip per batch.
        let mut group_ready = false;
        // A batch read while the previous one was being settled.
        let mut ahead: Option<Vec<Delivery>> = None;
        while !shutdown.is_cancelled() {
            let round = async {
                if !group_ready {
                    self.bus.ensure_group(&self.stream, &self.group).await?;
                    group_ready = true;
                }
                if last_reclaim.is_none_or(|at| at.elapsed() >= self.config.reclaim_every) {
                    last_reclaim = Some(Instant::now());
                    self.poll_reclaimed(handler).await?;
                }
                let batch = match ahead.take() {
                    Some(batch) => batch,
                    None => self.read().await?,
                };
                if batch.is_empty() {
                    return self.settle(handler, batch).await;
                }
                // The next read's round trip overlaps this batch's handling
                // and acknowledgement: batches stay handled one at a time, in order.
                let (settled, next) = tokio::join!(self.settle(handler, batch), self.read());
                // Read but not handled: handled next round (after the pause if this one failed).
                let read = next.map(|batch| ahead = Some(batch));
                settled?;
                read.map_err(ConsumerError::from)
            };
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
                result = round => result,
            };
            match result {
                Ok(()) => failures = 0,
                Err(error) => {
                    group_ready = false;
                    failures = failures.saturating_add(1);
                    let pause = crate::background::pause_after(failures);
                    tracing::warn!(%error, stream = %self.stream, retry_in = ?pause, "consumer round failed");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }

    /// New entries for this consumer, waiting up to `block` for some.
    async fn read(&self) -> Result<Vec<Delivery>, BusError> {
        self.bus.read(&self.stream, &self.group, &self.name, self.config.batch, self.config.block).await
    }

    /// Takes over and handles entries other consumers left pending.
    pub async fn poll_reclaimed(&self, handler: &dyn BatchHandler) -> Result<(), ConsumerError> {
        loop {
            let batch = self
                .bus
                .reclaim(&self.stream, &self.group, &self.name, self.config.reclaim_idle, self.config.batch)
                .await?;
            let full = batch.len() >= self.config.batch;
            self.settle(handler, batch).await?;
            if !full {
                return Ok(());
            }
        }
    }

    /// Handles one batch: dead-letters the over-delivered, hands the rest to
    /// the handler, acknowledges what it settled and dead-letters what it refused.
    pub async fn settle(&self, handler: &dyn BatchHandler, batch: Vec<Delivery>) -> Result<(), ConsumerError> {
        if batch.is_empty() {
            return self.sample_pending().await;
        }
        let started = Instant::now();
        let (worn_out, fresh): (Vec<Delivery>, Vec<Delivery>) =
            batch.into_iter().partition(|d| d.delivery_count > self.config.max_deliveries);
        for delivery in &worn_out {
            let reason = format!("delivered {} times without being settled", delivery.delivery_count);
            self.dead_letter(delivery, &reason).await?;
        }
        if !fresh.is_empty() {
            let verdicts = handler.handle(&fresh).await.map_err(ConsumerError::Handler)?;
            if verdicts.len() != fresh.len() {
                return Err(ConsumerError::Handler(
                    format!("{} verdicts for {} entries", verdicts.len(), fresh.len()).into(),
                ));
            }
            let mut settled: Vec<EntryId> = Vec::with_capacity(fresh.len());
            for (delivery, verdict) in fresh.iter().zip(verdicts) {
                match verdict {
                    Verdict::Settled => settled.push(delivery.id.clone()),
                    Verdict::Refused(reason) => {
                        // Every producer parses with the same vocabulary, so this should never happen:
                        // say so loudly, with what an operator needs to find and replay the event.
                        tracing::error!(
                            stream = %self.stream,
                            group = %self.group,
                            entry = %delivery.id,
                            event_id = %delivery.event_id,
                            %reason,
                            "seam failure: a consumer refused an event; it is in the dead-letter stream"
                        );
                        self.metrics.refused.inc();
                        self.dead_letter(delivery, &reason).await?
                    }
                }
            }
            self.bus.ack(&self.stream, &self.group, &settled).await?;
            self.metrics.batch_size.observe(fresh.len() as f64);
        }
        self.metrics.batch_seconds.observe(started.elapsed().as_secs_f64());
        self.sample_pending().await
    }

    /// Reads the pending gauge, at most once a [`PENDING_EVERY`] (after a
    /// batch, and after an empty read, so an idle consumer's gauge settles
    /// too): not a round trip per batch.
    async fn sample_pending(&self) -> Result<(), ConsumerError> {
        let due = self.pending_sampled.lock().map(|mut at| {
            let due = at.is_none_or(|at: Instant| at.elapsed() >= PENDING_EVERY);
            if due {
                *at = Some(Instant::now());
            }
            due
        });
        if due.unwrap_or(true) {
            let pending = self.bus.pending(&self.stream, &self.group).await?;
            self.metrics.pending.set(i64::try_from(pending).unwrap_or(i64::MAX));
        }
        Ok(())
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), ConsumerError> {
        tracing::warn!(stream = %self.stream, entry = %delivery.id, event_id = %delivery.event_id, reason, "dead-lettered");
        self.bus.dead_letter(&self.stream, &self.group, delivery, reason).await?;
        self.metrics.dead_letters.inc();
        Ok(())
    }
}

/// Why a consumer round stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The handler failed; the batch stays pending.
    #[error("handler: {0}")]
    Handler(Box<dyn std::error::Error + Send + Sync>),
}
