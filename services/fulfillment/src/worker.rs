//! The workers: claim due jobs from the store, call the LMS (to enrol, or to
//! revoke a refunded line), record the outcome under the claim's lease.
//!
//! One claim loop feeds at most `concurrency` attempts at a time. When nothing
//! is due it sleeps until the next job falls due, until new work is announced
//! (`Workers::wake`, notified by the API in this process and, on Postgres, by
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

use crate::domain::{AfterFailure, AttemptFailure, ErrorKind, JobError, JobSpec, JobState, Mode, Product, RetryPolicy};
use crate::lms::{Enrollment, Entitlement, LmsClient, LmsError, RefundNote};
use crate::metrics::FulfillmentMetrics;
use crate::outbox::{completion_events, revocation_events};
use crate::store::{Claimed, Finished, FulfillmentJob, Lease, Outcome, Store, stored_time};
use vocab::{CourseRunKey, CourseUuid};

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
    outcomes: Arc<Notify>,
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
        let outcomes = Arc::new(Notify::new());
        Self { store, lms, policy, config, metrics, wake, published, outcomes, jitter: rand::random::<f64> }
    }

    /// Notifies `outcomes` whenever an attempt's end is recorded for good (it wakes the webhook sender).
    pub fn waking_on_outcomes(mut self, outcomes: Arc<Notify>) -> Self {
        self.outcomes = outcomes;
        self
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

    /// One LMS attempt for one claimed job, its outcome recorded under the
    /// lease: an enrollment (or grant) for an IN_PROGRESS job, a revocation
    /// for a REVOKING one, which continues the refund's trace.
    pub async fn attempt(&self, claimed: Claimed) {
        let Claimed { job, lease } = claimed;
        let revoking = job.state == JobState::Revoking;
        let span = tracing::info_span!(
            "fulfillment.attempt",
            otel.name = if revoking { "fulfillment revocation" } else { "fulfillment attempt" },
            fulfillment.id = %job.id,
            order.number = %job.spec.header.order_number,
            attempt = job.attempts,
            outcome = tracing::field::Empty,
        );
        let parent = match (&job.refund, revoking) {
            (Some(refund), true) if !refund.traceparent.is_empty() => refund.traceparent.clone(),
            _ => job.traceparent.clone(),
        };
        TextContext { traceparent: parent, tracestate: String::new() }.set_parent_of(&span);
        let labels = if revoking { ["revoked", "retry", "revoke_failed"] } else { ["succeeded", "retry", "failed"] };
        async {
            if job.attempts > self.policy.max_attempts {
                // Claimed again after leases ran out (workers crashing or hanging on it): stop here.
                let error = JobError {
                    kind: ErrorKind::AttemptsExhausted,
                    lms_status: None,
                    message: format!("claimed {} times without an outcome being recorded", job.attempts - 1),
                };
                self.record(&lease, Outcome::Failed { error }, labels[2], stored_time(Utc::now())).await;
                return;
            }
            let started = Instant::now();
            // The attempt ends well inside its lease, so no other worker takes the job while it runs.
            let budget = self.config.lease.saturating_sub(self.config.lease / 10);
            let call = async { if revoking { self.revoke_in_lms(&job).await } else { self.call_lms(&job.spec).await } };
            let result = match tokio::time::timeout(budget, call).await {
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
                    let trace = TextContext::current();
                    let events = match (&job.refund, revoking) {
                        (Some(refund), true) => {
                            revocation_events(&job, entitlement_uuid.as_deref(), refund, now, &trace)
                        }
                        _ => completion_events(&job, entitlement_uuid.as_deref(), now, &trace),
                    };
                    (Outcome::Succeeded { entitlement_uuid, events }, labels[0])
                }
                Err(error) => {
                    let failure = classify(&error);
                    tracing::warn!(%error, kind = failure.error.kind.as_str(), "LMS attempt failed");
                    match self.policy.after_failure(job.attempts, failure, now, (self.jitter)()) {
                        AfterFailure::RetryAt(at, error) => (Outcome::RetryAt { at, error }, labels[1]),
                        AfterFailure::Fail(error) => (Outcome::Failed { error }, labels[2]),
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
        let retries = matches!(outcome, Outcome::RetryAt { .. });
        match self.store.finish(lease, outcome, now).await {
            Ok(Finished::Recorded(job)) => {
                tracing::Span::current().record("outcome", label);
                self.metrics.attempt(label);
                if !retries {
                    // Events (completion, revocation or failure) and maybe webhooks were written.
                    self.published.notify_one();
                    self.outcomes.notify_one();
                }
                if job.state == JobState::Revoking && !retries {
                    // Refunded while it enrolled: its revocation is due now.
                    self.wake.notify_one();
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
    async fn call_lms(&self, spec: &JobSpec) -> Result<(Option<String>, u16), LmsError> {
        match &spec.line.product {
            Product::CourseRun { course_run_key, mode, credit_provider_id } => {
                let enrollment = enrollment(spec, course_run_key, *mode, credit_provider_id.as_deref());
                self.lms.enroll(&enrollment).await.map(|r| (None, r.status))
            }
            Product::Entitlement { course_uuid, mode } => {
                let entitlement = entitlement(spec, course_uuid, *mode);
                let found = self.lms.find_entitlement(&entitlement).await?;
                if let Some(uuid) = found.value {
                    return Ok((Some(uuid), found.status));
                }
                self.lms.grant_entitlement(&entitlement).await.map(|r| (Some(r.value), r.status))
            }
        }
    }
}

impl Workers {
    /// Takes a refunded line's access away: deactivates the enrollment, or
    /// expires the entitlement (found in the LMS first if its uuid was never
    /// stored; none found is nothing to revoke).
    async fn revoke_in_lms(&self, job: &FulfillmentJob) -> Result<(Option<String>, u16), LmsError> {
        let Some(refund) = &job.refund else {
            return Err(LmsError::InvalidResponse {
                status: 0,
                message: format!("fulfillment {} is REVOKING without a recorded refund", job.id),
            });
        };
        let spec = &job.spec;
        match &spec.line.product {
            Product::CourseRun { course_run_key, mode, credit_provider_id } => {
                let enrollment = enrollment(spec, course_run_key, *mode, credit_provider_id.as_deref());
                let amount = refund.terms.amount().amount_text();
                let note = RefundNote {
                    amount: &amount,
                    currency: refund.terms.amount().currency_code(),
                    reason: refund.terms.reason().as_str(),
                    source: refund.terms.source().as_str(),
                    refunded_at: refund.requested_at,
                };
                self.lms.unenroll(&enrollment, &note).await.map(|r| (None, r.status))
            }
            Product::Entitlement { course_uuid, mode } => {
                let uuid = match &job.entitlement_uuid {
                    Some(uuid) => uuid.clone(),
                    None => {
                        let found = self.lms.find_entitlement(&entitlement(spec, course_uuid, *mode)).await?;
                        match found.value {
                            Some(uuid) => uuid,
                            None => return Ok((None, found.status)),
                        }
                    }
                };
                // Answered as the entitlement revoked, so a uuid found only now is kept and announced.
                self.lms.revoke_entitlement(&uuid).await.map(|r| (Some(uuid), r.status))
            }
        }
    }
}

/// The enrollment request of a course-run line.
fn enrollment<'a>(
    spec: &'a JobSpec,
    course_run_key: &'a CourseRunKey,
    mode: Mode,
    credit_provider_id: Option<&'a str>,
) -> Enrollment<'a> {
    let header = &spec.header;
    Enrollment {
        username: spec.learner.lms_username.as_str(),
        mode: mode.as_str(),
        course_run_key: course_run_key.as_str(),
        email_opt_in: header.email_opt_in,
        order_number: &header.order_number,
        order_id: header.order_id.as_deref().unwrap_or_default(),
        line_item_id: &spec.line.line_item_id,
        date_placed: header.date_placed,
        source_system: header.source_system.as_deref().unwrap_or_default(),
        credit_provider_id,
    }
}

/// The entitlement request of an entitlement line.
fn entitlement<'a>(spec: &'a JobSpec, course_uuid: &'a CourseUuid, mode: Mode) -> Entitlement<'a> {
    Entitlement {
        username: spec.learner.lms_username.as_str(),
        mode: mode.as_str(),
        course_uuid,
        order_number: &spec.header.order_number,
        email_opt_in: spec.header.email_opt_in,
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
