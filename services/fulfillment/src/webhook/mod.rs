//! Outcome webhooks: each line's SUCCEEDED, FAILED, REVOKED and REVOKE_FAILED
//! reach the order's source system (`fulfillment.webhooks.<source_system>`:
//! `url`, `secret`), signed ([`notice`]), as the coordinator once wrote line
//! states back to the commerce platform.
//!
//! ```text
//! Store::finish ─► job's terminal state + webhook_deliveries row, one transaction
//!                                 │
//!        WebhookSender ─claim (lease)─► POST url, X-Commerce-Mesh-Signature
//!            2xx: DELIVERED   408/429/5xx/timeout/connect: again with backoff   other: GAVE_UP
//! ```
//!
//! The job never waits for the receiver: its transition commits with the
//! row, and the sender works the rows off in the background, with the LMS
//! calls' retry classes and backoff (`webhook_delivery.retry`). A receiver
//! may see an outcome more than once (a sender dying between the answer and
//! the record): the body's `event_id` is the same each time.

pub mod notice;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use kit::auth::Secret;
use kit::trace::TextContext;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::domain::{AfterFailure, AttemptFailure, ErrorKind, JobError, RetryPolicy};
use store::{Attempted, Claim, WebhookOutbox};

/// One source system's receiver (`fulfillment.webhooks.<source_system>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookTarget {
    /// Where each outcome is POSTed: an `http` or `https` URL.
    pub url: String,
    /// The key of the signature (`MESH_FULFILLMENT__WEBHOOKS__<SOURCE>__SECRET`); never logged.
    pub secret: Secret,
}

impl Default for WebhookTarget {
    fn default() -> Self {
        Self { url: String::new(), secret: Secret::new(String::new()) }
    }
}

/// How outcome webhooks are sent (`fulfillment.webhook_delivery`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeliveryConfig {
    /// The longest a receiver may take to answer; then the attempt is a timeout, retried.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The longest a connection may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Backoff and attempts: the LMS's classes (408/429/5xx, timeouts and
    /// connection failures retried; other answers given up at once).
    pub retry: RetryPolicy,
    /// Deliveries in flight at most.
    pub concurrency: usize,
    /// How long a claimed delivery is held before another sender may take it.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// The longest an idle sender waits before looking again (for rows another process wrote).
    #[serde(with = "humantime_serde")]
    pub poll: Duration,
    /// Delivered and given-up rows are deleted this long after.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            // About three hours of trying (full jitter halves the ceilings on average).
            retry: RetryPolicy {
                base: Duration::from_secs(2),
                cap: Duration::from_secs(900),
                max_attempts: 30,
                max_retry_after: Duration::from_secs(3600),
            },
            concurrency: 16,
            lease: Duration::from_secs(60),
            poll: Duration::from_secs(1),
            retention: Duration::from_secs(7 * 24 * 60 * 60),
        }
    }
}

/// The source systems that have a webhook, compared without case: the stores
/// write deliveries only for their orders.
#[derive(Clone, Debug, Default)]
pub struct WebhookSources(Arc<BTreeSet<String>>);

impl WebhookSources {
    /// The source systems of `targets`.
    pub fn of(targets: &BTreeMap<String, WebhookTarget>) -> Self {
        Self(Arc::new(targets.keys().map(|key| key.to_lowercase()).collect()))
    }

    /// Whether `source_system` has a webhook.
    pub fn includes(&self, source_system: &str) -> bool {
        !self.0.is_empty() && self.0.contains(&source_system.to_lowercase())
    }

    /// Whether none has.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Why the webhook settings were refused, named by the key under `fulfillment.`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WebhookConfigError {
    /// Two webhooks for one source system.
    #[error("webhooks.{0}: named twice (source systems are compared without case)")]
    NamedTwice(String),
    /// A URL a delivery could not be sent to.
    #[error("webhooks.{0}.url must be an http or https URL")]
    Url(String),
    /// A secret too short to sign with.
    #[error("webhooks.{0}.secret must be set, at least 16 characters")]
    Secret(String),
    /// A delivery setting that would spin or stall: the key under `webhook_delivery.` and the rule.
    #[error("webhook_delivery.{0}")]
    Delivery(&'static str),
}

/// Refuses webhooks that could not be sent or verified, and delivery settings that would spin or stall;
/// the problem is named by its key under `fulfillment.`.
pub fn check(targets: &BTreeMap<String, WebhookTarget>, delivery: &DeliveryConfig) -> Result<(), WebhookConfigError> {
    use WebhookConfigError::Delivery;
    let mut seen = BTreeSet::new();
    for (source, target) in targets {
        if !seen.insert(source.to_lowercase()) {
            return Err(WebhookConfigError::NamedTwice(source.clone()));
        }
        match reqwest::Url::parse(&target.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
            _ => return Err(WebhookConfigError::Url(source.clone())),
        }
        if target.secret.expose().len() < 16 {
            return Err(WebhookConfigError::Secret(source.clone()));
        }
    }
    if delivery.concurrency == 0 {
        return Err(Delivery("concurrency must be at least 1"));
    }
    if delivery.request_timeout.is_zero() || delivery.connect_timeout.is_zero() {
        return Err(Delivery("request_timeout and connect_timeout must be more than 0s"));
    }
    if delivery.lease <= delivery.request_timeout + delivery.connect_timeout {
        return Err(Delivery("lease must be longer than request_timeout and connect_timeout together"));
    }
    if delivery.poll < Duration::from_millis(10) {
        return Err(Delivery("poll must be at least 10ms"));
    }
    if delivery.retry.max_attempts == 0 {
        return Err(Delivery("retry.max_attempts must be at least 1"));
    }
    if delivery.retry.cap > Duration::from_secs(30 * 86_400)
        || delivery.retry.max_retry_after > Duration::from_secs(30 * 86_400)
    {
        return Err(Delivery("retry.cap and retry.max_retry_after must be at most 30 days"));
    }
    Ok(())
}

/// Labels: a delivery attempt's source system and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// The order's source system (as configured, lower case).
    pub source_system: String,
    /// delivered, retry or gave_up.
    pub outcome: String,
}

/// Label: a source system.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// The source system (as configured, lower case).
    pub source_system: String,
}

/// The sender's metrics.
#[derive(Clone, Debug, Default)]
pub struct WebhookMetrics {
    /// Attempts by source system and outcome.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// Outcomes not yet delivered nor given up, per source system.
    pub undelivered: Family<SourceLabel, Gauge>,
    /// Seconds the oldest of them has waited, per source system; 0 when none waits.
    pub oldest_undelivered_age: Family<SourceLabel, Gauge<f64, AtomicU64>>,
}

impl WebhookMetrics {
    /// Registers `fulfillment_webhook_deliveries_total`, `fulfillment_webhook_undelivered` and
    /// `fulfillment_webhook_oldest_undelivered_age_seconds`.
    pub fn register(&self, metrics: &kit::metrics::Metrics) {
        metrics.register(
            "fulfillment_webhook_deliveries",
            "Outcome webhook attempts by source system and outcome (delivered, retry, gave_up)",
            self.deliveries.clone(),
        );
        metrics.register(
            "fulfillment_webhook_undelivered",
            "Outcome webhooks waiting to be delivered, per source system",
            self.undelivered.clone(),
        );
        metrics.register(
            "fulfillment_webhook_oldest_undelivered_age_seconds",
            "Seconds the oldest outcome webhook waiting to be delivered has waited, per source system",
            self.oldest_undelivered_age.clone(),
        );
    }

    fn count(&self, source_system: &str, outcome: &str) {
        let labels = DeliveryLabels { source_system: source_system.to_lowercase(), outcome: outcome.into() };
        self.deliveries.get_or_create(&labels).inc();
    }
}

/// Why the sender could not be built.
#[derive(Debug, thiserror::Error)]
#[error("webhook HTTP client: {0}")]
pub struct SenderError(#[from] reqwest::Error);

/// A configured receiver, parsed.
#[derive(Clone, Debug)]
struct Receiver {
    url: reqwest::Url,
    secret: Secret,
}

/// Works off the webhook outbox: claims due deliveries, POSTs them signed,
/// records how each ended; reports the backlog; deletes old finished rows.
pub struct WebhookSender {
    outbox: WebhookOutbox,
    receivers: BTreeMap<String, Receiver>,
    client: reqwest::Client,
    config: DeliveryConfig,
    metrics: WebhookMetrics,
    wake: Arc<Notify>,
    jitter: fn() -> f64,
}

/// How often the backlog gauges are read.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);
/// How often finished rows past the retention window are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Rows one prune statement deletes at most.
const PRUNE_BATCH: i64 = 10_000;

impl WebhookSender {
    /// A sender over `outbox` to the `targets` (checked by [`check`]); `wake` is notified when outcomes are recorded.
    pub fn new(
        outbox: WebhookOutbox,
        targets: &BTreeMap<String, WebhookTarget>,
        config: DeliveryConfig,
        metrics: WebhookMetrics,
        wake: Arc<Notify>,
    ) -> Result<Self, SenderError> {
        let receivers = targets
            .iter()
            .filter_map(|(source, target)| {
                let url = reqwest::Url::parse(&target.url).ok()?;
                Some((source.to_lowercase(), Receiver { url, secret: target.secret.clone() }))
            })
            .collect();
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            // A redirect would turn the POST into a GET elsewhere: a 3xx is an answer, given up.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("commerce-mesh-fulfillment/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { outbox, receivers, client, config, metrics, wake, jitter: rand::random::<f64> })
    }

    /// Replaces the random source of backoff jitter (uniform in [0, 1)); tests pass `|| 1.0`.
    pub fn with_jitter(mut self, jitter: fn() -> f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// The rows it works off (for tests and tools).
    pub fn outbox(&self) -> &WebhookOutbox {
        &self.outbox
    }

    /// Sends until `shutdown`: then finishes the deliveries in flight (each within
    /// `request_timeout`) and stops; what is still due is sent by the next start
    /// (or another replica). Meanwhile reports the backlog and prunes.
    pub async fn run(&self, shutdown: CancellationToken) {
        let send = async {
            let mut failures = 0u32;
            loop {
                if shutdown.is_cancelled() {
                    return;
                }
                let wait = match self.deliver_due(Utc::now()).await {
                    Ok(0) => {
                        failures = 0;
                        self.idle_wait().await
                    }
                    Ok(_) => {
                        failures = 0;
                        continue;
                    }
                    Err(error) => {
                        failures = failures.saturating_add(1);
                        let wait = kit::background::pause_after(failures);
                        tracing::warn!(%error, retry_in = ?wait, "could not claim outcome webhooks; retrying");
                        wait
                    }
                };
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return,
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                }
            }
        };
        let upkeep = async {
            let mut last_prune: Option<Instant> = None;
            loop {
                if let Err(error) = self.refresh_backlog(Utc::now()).await {
                    tracing::warn!(%error, "could not read the outcome webhook backlog");
                }
                if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                    last_prune = Some(Instant::now());
                    if let Err(error) = self.prune(Utc::now()).await {
                        tracing::warn!(%error, "could not delete finished outcome webhook rows; trying again later");
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(BACKLOG_EVERY) => {}
                }
            }
        };
        tokio::join!(send, upkeep);
    }

    /// How long to sleep when nothing is due: until the next due row, at most `poll`.
    async fn idle_wait(&self) -> Duration {
        match self.outbox.next_due().await {
            Ok(Some(due)) => (due - Utc::now()).to_std().unwrap_or_default().min(self.config.poll),
            Ok(None) => self.config.poll,
            Err(error) => {
                tracing::warn!(%error, "could not read when the next outcome webhook is due");
                self.config.poll
            }
        }
    }

    /// One round: claims up to `concurrency` due deliveries and sends them at once; answers how many.
    pub async fn deliver_due(&self, now: DateTime<Utc>) -> Result<usize, sqlx::Error> {
        let lease = chrono::Duration::from_std(self.config.lease).unwrap_or(chrono::Duration::MAX);
        let claimed = self.outbox.claim(self.config.concurrency, now, now + lease).await?;
        futures::future::join_all(claimed.iter().map(|claim| self.deliver(claim))).await;
        Ok(claimed.len())
    }

    /// One attempt of one delivery, recorded.
    async fn deliver(&self, claim: &Claim) {
        let span = tracing::info_span!(
            "fulfillment.webhook",
            otel.name = "fulfillment webhook",
            otel.kind = "client",
            fulfillment.id = %claim.fulfillment_id,
            webhook.source_system = %claim.source_system,
            webhook.event_id = %claim.event_id,
            attempt = claim.attempts,
            outcome = tracing::field::Empty,
        );
        TextContext { traceparent: claim.traceparent.clone(), tracestate: String::new() }.set_parent_of(&span);
        async {
            let result = match self.receivers.get(&claim.source_system.to_lowercase()) {
                Some(receiver) => self.send(receiver, claim).await,
                None => Err(AttemptFailure {
                    error: JobError {
                        kind: ErrorKind::Rejected,
                        lms_status: None,
                        message: format!("no webhook is configured for source system {:?} any more", claim.source_system),
                    },
                    retry_after: None,
                }),
            };
            let now = Utc::now();
            let attempt = u32::try_from(claim.attempts).unwrap_or(u32::MAX);
            let decision = match result {
                Ok(()) => None,
                Err(failure) => Some(self.config.retry.after_failure(attempt, failure, now, (self.jitter)())),
            };
            let (attempted, outcome, error) = match &decision {
                None => (Attempted::Delivered, "delivered", None),
                Some(AfterFailure::RetryAt(at, error)) => (Attempted::RetryAt(*at, error), "retry", Some(error)),
                Some(AfterFailure::Fail(error)) => (Attempted::GaveUp(error), "gave_up", Some(error)),
            };
            tracing::Span::current().record("outcome", outcome);
            self.metrics.count(&claim.source_system, outcome);
            match &error {
                Some(error) if outcome == "gave_up" => tracing::warn!(
                    kind = error.kind.as_str(),
                    status = error.lms_status,
                    error = %error.message,
                    "gave up on an outcome webhook; the receiver never got it"
                ),
                Some(error) => tracing::info!(kind = error.kind.as_str(), status = error.lms_status, error = %error.message, "outcome webhook failed; retrying"),
                None => tracing::debug!("outcome webhook delivered"),
            }
            match self.outbox.record(claim, attempted, stored(now)).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!("an outcome webhook's claim ran out while it was sent; another sender has it"),
                // The claim runs out and the delivery is attempted again.
                Err(error) => tracing::error!(%error, "could not record an outcome webhook's attempt"),
            }
        }
        .instrument(span)
        .await;
    }

    /// POSTs the body, signed now; Ok on a 2xx.
    async fn send(&self, receiver: &Receiver, claim: &Claim) -> Result<(), AttemptFailure> {
        let timestamp = Utc::now().timestamp();
        let mut headers = http::HeaderMap::new();
        kit::trace::inject_current_context(&mut headers);
        let sent = self
            .client
            .post(receiver.url.clone())
            .headers(headers)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                notice::SIGNATURE_HEADER,
                notice::signature(receiver.secret.expose(), timestamp, claim.body.as_bytes()),
            )
            .header(notice::EVENT_ID_HEADER, &claim.event_id)
            .body(claim.body.clone())
            .send()
            .await;
        let failure = |kind, status, message| AttemptFailure {
            error: JobError { kind, lms_status: status, message },
            retry_after: None,
        };
        match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                tracing::Span::current().record("http.response.status_code", status);
                let Some(kind) = notice::class_of_status(status) else { return Ok(()) };
                let retry_after = response
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| crate::lms::parse_retry_after(v, Utc::now()));
                let text = response.text().await.unwrap_or_default();
                let start: String = text.chars().take(200).collect();
                Err(AttemptFailure {
                    retry_after,
                    ..failure(kind, Some(status), format!("the receiver answered {status}: {start}"))
                })
            }
            // Without the URL: receivers put tokens in query strings, and this text is logged and stored.
            Err(error) if error.is_timeout() => {
                Err(failure(ErrorKind::Timeout, None, format!("no answer in time: {}", error.without_url())))
            }
            Err(error) => Err(failure(
                ErrorKind::Connection,
                None,
                format!("could not reach the receiver: {}", error.without_url()),
            )),
        }
    }

    /// Reads the backlog into the gauges, as of `now`: every configured source
    /// system gets a value, 0 when nothing of it waits.
    pub async fn refresh_backlog(&self, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
        let backlog = self.outbox.undelivered().await?;
        let mut sources: BTreeSet<String> = self.receivers.keys().cloned().collect();
        sources.extend(backlog.iter().map(|u| u.source_system.to_lowercase()));
        for source in sources {
            let label = SourceLabel { source_system: source.clone() };
            let waiting: Vec<_> = backlog.iter().filter(|u| u.source_system.to_lowercase() == source).collect();
            let count: u64 = waiting.iter().map(|u| u.count).sum();
            let oldest = waiting.iter().map(|u| u.oldest).min();
            self.metrics.undelivered.get_or_create(&label).set(i64::try_from(count).unwrap_or(i64::MAX));
            let age = oldest.map_or(0.0, |oldest| (now - oldest).as_seconds_f64().max(0.0));
            self.metrics.oldest_undelivered_age.get_or_create(&label).set(age);
        }
        Ok(())
    }

    /// Deletes finished rows older than the retention window; answers how many.
    pub async fn prune(&self, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
        let cutoff = chrono::Duration::from_std(self.config.retention)
            .ok()
            .and_then(|retention| now.checked_sub_signed(retention))
            .unwrap_or(DateTime::UNIX_EPOCH);
        let mut pruned = 0;
        loop {
            let deleted = self.outbox.prune(cutoff, PRUNE_BATCH).await?;
            pruned += deleted;
            if deleted < u64::try_from(PRUNE_BATCH).unwrap_or(u64::MAX) {
                return Ok(pruned);
            }
        }
    }
}

/// Rounded to the microsecond, as both backends keep times.
fn stored(time: DateTime<Utc>) -> DateTime<Utc> {
    crate::store::stored_time(time)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn target(url: &str, secret: &str) -> WebhookTarget {
        WebhookTarget { url: url.into(), secret: Secret::new(secret.into()) }
    }

    #[test]
    fn webhooks_that_cannot_be_sent_or_verified_are_refused_by_name() {
        let refused = |targets: &[(&str, WebhookTarget)]| {
            let targets: BTreeMap<String, WebhookTarget> =
                targets.iter().map(|(k, v)| ((*k).to_string(), v.clone())).collect();
            check(&targets, &DeliveryConfig::default()).unwrap_err().to_string()
        };
        let good = target("https://orders.example.com/hooks", "0123456789abcdef");
        assert!(check(&BTreeMap::from([("commercetools".into(), good.clone())]), &DeliveryConfig::default()).is_ok());
        assert!(refused(&[("ct", target("", "0123456789abcdef"))]).contains("webhooks.ct.url"));
        assert!(refused(&[("ct", target("ftp://x/y", "0123456789abcdef"))]).contains("webhooks.ct.url"));
        assert!(refused(&[("ct", target("https://x/y", ""))]).contains("webhooks.ct.secret"));
        assert!(refused(&[("ct", target("https://x/y", "short"))]).contains("webhooks.ct.secret"));
        assert!(refused(&[("CT", good.clone()), ("ct", good.clone())]).contains("named twice"));
    }

    #[test]
    fn delivery_settings_that_would_spin_or_stall_are_refused_by_name() {
        let refused = |change: fn(&mut DeliveryConfig)| {
            let mut config = DeliveryConfig::default();
            change(&mut config);
            check(&BTreeMap::new(), &config).unwrap_err().to_string()
        };
        assert!(refused(|c| c.concurrency = 0).contains("webhook_delivery.concurrency"));
        assert!(refused(|c| c.lease = c.request_timeout).contains("webhook_delivery.lease"));
        assert!(refused(|c| c.poll = Duration::ZERO).contains("webhook_delivery.poll"));
        assert!(refused(|c| c.retry.max_attempts = 0).contains("webhook_delivery.retry.max_attempts"));
        assert!(refused(|c| c.request_timeout = Duration::ZERO).contains("webhook_delivery.request_timeout"));
    }

    #[test]
    fn source_systems_are_matched_without_case() {
        let sources = WebhookSources::of(&BTreeMap::from([(
            "CommerceTools".to_string(),
            target("https://x/y", "0123456789abcdef"),
        )]));
        assert!(sources.includes("commercetools") && sources.includes("COMMERCETOOLS"));
        assert!(!sources.includes("shopify"));
        assert!(WebhookSources::default().is_empty() && !WebhookSources::default().includes("commercetools"));
    }
}
