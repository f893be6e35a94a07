//! The workers: claim due jobs from the store, call the LMS, record the outcome
//! under the claim's lease.
//!
//! One claim loop feeds at most `concurrency` attempts at a time. When nothing
//! is due it sleeps until the next job falls due, until new work is announced
//! ([`Workers::wake`], notified by the API in this process and, on Postgres, by
//! `NOTIFY` from other processes), or at most `idle_poll`: never a busy loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use kit::trace::TextContext;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::domain::{AfterFailure, AttemptFailure, ErrorKind, JobError, Product, RetryPolicy};
use crate::lms::{Enrollment, Entitlement, LmsClient, LmsError};
use crate::metrics::FulfillmentMetrics;
use crate::outbox::completion_events;
use crate::store::{Claimed, Finished, Lease, Outcome, Store, stored_time};

/// How the workers run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerConfig {
    /// LMS calls in flight at most.
    pub concurrency: usize,
    /// How long a claim lasts. Longer than the slowest LMS call (token fetch
    /// and request timeouts together): a worker that holds a job this long is
    /// presumed dead and another takes the job.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// The longest an idle worker waits before looking again, for work that
    /// nobody announced.
    #[serde(with = "humantime_serde")]
    pub idle_poll: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self { concurrency: 128, lease: Duration::from_secs(60), idle_poll: Duration::from_secs(5) }
    }
}

/// The pool of workers draining the queue.
pub struct Workers {
    store: Arc<dyn Store>,
    lms: LmsClient,
    policy: RetryPolicy,
    config: WorkerConfig,
    metrics: Arc<FulfillmentMetrics>,
    wake: Arc<Notify>,
    published: Arc<Notify>,
    jitter: fn() -> f64,
}

impl Workers {
    /// Workers over `store` calling `lms`. `wake` announces new work;
    /// `published` is notified when outbox rows were written (it wakes the relay).
    pub fn new(
        store: Arc<dyn Store>,
        lms: LmsClient,
        policy: RetryPolicy,
        config: WorkerConfig,
        metrics: Arc<FulfillmentMetrics>,
        wake: Arc<Notify>,
        published: Arc<Notify>,
    ) -> Self {
        Self { store, lms, policy, config, metrics, wake, published, jitter: rand::random::<f64> }
    }

    /// Replaces the random source of backoff jitter (uniform in [0, 1)); tests
    /// pass `|| 1.0` so every wait is its ceiling and can be checked exactly.
    pub fn with_jitter(mut self, jitter: fn() -> f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Claims and runs jobs until `shutdown`, then waits for the attempts in flight.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(this.config.concurrency.max(1)));
        let mut in_flight = JoinSet::new();
        loop {
            // Wait for room before claiming, so no claimed job waits for a permit
            // while its lease runs.
            let first = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            while let Some(done) = in_flight.try_join_next() {
                report_crash(done);
            }
            if shutdown.is_cancelled() {
                break;
            }
            let room = permits.available_permits() + 1;
            let claimed = match this.store.claim(room, this.config.lease, Utc::now()).await {
                Ok(claimed) => claimed,
                Err(error) => {
                    tracing::warn!(%error, "could not claim fulfillment jobs; retrying");
                    drop(first);
                    this.idle(&shutdown, Some(Duration::from_secs(1))).await;
                    continue;
                }
            };
            if claimed.is_empty() {
                drop(first);
                let due_in = match this.store.next_due().await {
                    Ok(Some(due)) => Some((due - Utc::now()).to_std().unwrap_or_default()),
                    Ok(None) => None,
                    Err(error) => {
                        tracing::warn!(%error, "could not read when the next job is due");
                        None
                    }
                };
                this.idle(&shutdown, due_in).await;
                continue;
            }
            let mut first = Some(first);
            for job in claimed {
                let permit = match first.take() {
                    Some(permit) => permit,
                    // The claim asked for no more than the permits free, and only this loop takes them.
                    None => match permits.clone().try_acquire_owned() {
                        Ok(permit) => permit,
                        Err(_) => match permits.clone().acquire_owned().await {
                            Ok(permit) => permit,
                            Err(_) => break,
                        },
                    },
                };
                let worker = Arc::clone(&this);
                in_flight.spawn(async move {
                    worker.attempt(job).await;
                    drop(permit);
                });
            }
        }
        while let Some(done) = in_flight.join_next().await {
            report_crash(done);
        }
    }

    /// Waits for announced work, the next due job (if sooner than `idle_poll`), or shutdown.
    async fn idle(&self, shutdown: &CancellationToken, due_in: Option<Duration>) {
        let wait = due_in.map_or(self.config.idle_poll, |d| d.min(self.config.idle_poll));
        tokio::select! {
            biased;
            () = shutdown.cancelled() => {}
            () = self.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }

    /// One LMS attempt for one claimed job, its outcome recorded under the lease.
    pub async fn attempt(&self, claimed: Claimed) {
        let Claimed { job, lease } = claimed;
        let span = tracing::info_span!(
            "fulfillment.attempt",
            otel.name = "fulfillment attempt",
            fulfillment.id = %job.id,
            order.number = %job.spec.header.order_number,
            attempt = job.attempts,
            outcome = tracing::field::Empty,
        );
        TextContext { traceparent: job.traceparent.clone(), tracestate: String::new() }.set_parent_of(&span);
        async {
            if job.attempts > self.policy.max_attempts {
                // Claimed again after leases ran out (workers crashing or hanging on it): stop here.
                let error = JobError {
                    kind: ErrorKind::AttemptsExhausted,
                    lms_status: None,
                    message: format!("claimed {} times without an outcome being recorded", job.attempts - 1),
                };
                self.record(&lease, Outcome::Failed { error }, "failed", stored_time(Utc::now())).await;
                return;
            }
            let started = Instant::now();
            // The attempt ends well inside its lease, so no other worker takes the job while it runs.
            let budget = self.config.lease.saturating_sub(self.config.lease / 10);
            let result = match tokio::time::timeout(budget, self.call_lms(&job.spec)).await {
                Ok(result) => result,
                Err(_) => Err(LmsError::Timeout(format!("the attempt took longer than {budget:?}, 90% of its lease"))),
            };
            let answer = match &result {
                Ok((_, status)) => status.to_string(),
                Err(error) => answer_label(error),
            };
            self.metrics.lms_answer(answer, started.elapsed());
            let now = stored_time(Utc::now());
            let (outcome, label) = match result {
                Ok((entitlement_uuid, _)) => {
                    let events = completion_events(&job, entitlement_uuid.as_deref(), now, &TextContext::current());
                    (Outcome::Succeeded { entitlement_uuid, events }, "succeeded")
                }
                Err(error) => {
                    let failure = classify(&error);
                    tracing::warn!(%error, kind = failure.error.kind.as_str(), "LMS attempt failed");
                    match self.policy.after_failure(job.attempts, failure, now, (self.jitter)()) {
                        AfterFailure::RetryAt(at, error) => (Outcome::RetryAt { at, error }, "retry"),
                        AfterFailure::Fail(error) => (Outcome::Failed { error }, "failed"),
                    }
                }
            };
            self.record(&lease, outcome, label, now).await;
        }
        .instrument(span)
        .await;
    }

    /// Records an attempt's outcome under its lease, and counts it.
    async fn record(&self, lease: &Lease, outcome: Outcome, label: &'static str, now: DateTime<Utc>) {
        let succeeded = matches!(outcome, Outcome::Succeeded { .. });
        let retries = matches!(outcome, Outcome::RetryAt { .. });
        match self.store.finish(lease, outcome, now).await {
            Ok(Finished::Recorded(_)) => {
                tracing::Span::current().record("outcome", label);
                self.metrics.attempt(label);
                if succeeded {
                    self.published.notify_one();
                }
                if retries {
                    // The claim loop may be idle until a due time it read before this job
                    // was rescheduled: let it read again, so the retry runs at its backoff.
                    self.wake.notify_one();
                }
            }
            Ok(Finished::LeaseLost) => {
                tracing::Span::current().record("outcome", "lease_lost");
                self.metrics.attempt("lease_lost");
                tracing::warn!(
                    "the lease ran out during the LMS call and another worker took the job; outcome discarded"
                );
            }
            // The lease runs out and another worker repeats the attempt (see `call_lms` on repeats).
            Err(error) => tracing::error!(%error, "could not record the attempt's outcome"),
        }
    }

    /// Enrolls or grants; answers the entitlement UUID (for an entitlement) and
    /// the HTTP status. An enrollment is idempotent per learner and run, so a
    /// repeat is harmless; a grant is not, so the LMS is first asked whether it
    /// already granted this order's entitlement (an earlier attempt may have
    /// been granted without its answer reaching us).
    async fn call_lms(&self, spec: &crate::domain::JobSpec) -> Result<(Option<String>, u16), LmsError> {
        let header = &spec.header;
        let username = spec.learner.lms_username.as_str();
        match &spec.line.product {
            Product::CourseRun { course_run_key, mode, credit_provider_id } => {
                let enrollment = Enrollment {
                    username,
                    mode: mode.as_str(),
                    course_run_key: course_run_key.as_str(),
                    email_opt_in: header.email_opt_in,
                    order_number: &header.order_number,
                    order_id: header.order_id.as_deref().unwrap_or_default(),
                    line_item_id: &spec.line.line_item_id,
                    date_placed: header.date_placed,
                    source_system: header.source_system.as_deref().unwrap_or_default(),
                    credit_provider_id: credit_provider_id.as_deref(),
                };
                self.lms.enroll(&enrollment).await.map(|r| (None, r.status))
            }
            Product::Entitlement { course_uuid, mode } => {
                let entitlement = Entitlement {
                    username,
                    mode: mode.as_str(),
                    course_uuid,
                    order_number: &header.order_number,
                    email_opt_in: header.email_opt_in,
                };
                let found = self.lms.find_entitlement(&entitlement).await?;
                if let Some(uuid) = found.value {
                    return Ok((Some(uuid), found.status));
                }
                self.lms.grant_entitlement(&entitlement).await.map(|r| (Some(r.value), r.status))
            }
        }
    }
}

/// Logs an attempt that panicked: its job's lease runs out and another attempt follows.
fn report_crash(done: Result<(), tokio::task::JoinError>) {
    if let Err(error) = done
        && error.is_panic()
    {
        tracing::error!(%error, "a fulfillment attempt panicked; its job is retried when its lease runs out");
    }
}

/// The class of an LMS failure, which decides whether it is retried.
pub fn classify(error: &LmsError) -> AttemptFailure {
    let (kind, lms_status) = match error {
        LmsError::Status { status, .. } => (ErrorKind::of_status(*status), Some(*status)),
        LmsError::Timeout(_) => (ErrorKind::Timeout, None),
        LmsError::Connection(_) | LmsError::Config(_) => (ErrorKind::Connection, None),
        LmsError::Authentication(_) => (ErrorKind::Authentication, None),
        // The LMS said yes but not in the shape we know: repeating would not
        // help and might grant twice, so an operator looks.
        LmsError::InvalidResponse { status, .. } => (ErrorKind::Rejected, Some(*status)),
    };
    AttemptFailure {
        error: JobError { kind, lms_status, message: error.to_string() },
        retry_after: error.retry_after(),
    }
}

fn answer_label(error: &LmsError) -> String {
    match error {
        LmsError::Status { status, .. } | LmsError::InvalidResponse { status, .. } => status.to_string(),
        LmsError::Timeout(_) => "timeout".into(),
        LmsError::Connection(_) | LmsError::Config(_) => "connection".into(),
        LmsError::Authentication(_) => "authentication".into(),
    }
}
