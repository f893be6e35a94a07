//! The transaction flows both backends share, written once: the order of the
//! statements and what is decided between them live here, and each backend
//! supplies only its SQL, as a [`JobTx`] (one transaction of it).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use vocab::CourseRunKey;

use super::{
    Finished, FulfillmentJob, Lease, NewRefundRequest, OutboxEvent, Outcome, Redriven, RefundOf, RefundRequested,
    Refunded, Store, StoreError,
};
use crate::domain::{
    JobError, JobState, LearnerKey, Refund, RefundEffect, RefundRequest, RequestTarget, may_have_granted,
    refund_effect, refund_request_target, state_after_attempt,
};
use crate::webhook::store::NewDelivery;

/// One transaction of a backend: the statements the flows below run, in its SQL.
#[async_trait::async_trait]
pub(super) trait JobTx: Send + Sized {
    /// The job, locked (Postgres: `FOR UPDATE`) until the transaction ends.
    async fn locked_job(&mut self, id: &str) -> Result<Option<FulfillmentJob>, StoreError>;

    /// The state the job was claimed in, whether it is refunded, and its attempts, while `lease`
    /// is still its lease (locked: a refund of it waits, or is seen).
    async fn held(&mut self, lease: &Lease) -> Result<Option<(String, bool, i32)>, StoreError>;

    /// Writes an attempt's outcome to the job's row and releases its lease: the row as written.
    async fn write_outcome(
        &mut self,
        job_id: &str,
        written: &Written<'_>,
        now: DateTime<Utc>,
    ) -> Result<FulfillmentJob, StoreError>;

    /// Writes a refund's change to the job's row: the row as written.
    async fn write_refund(
        &mut self,
        job_id: &str,
        change: &RefundChange,
        now: DateTime<Utc>,
    ) -> Result<FulfillmentJob, StoreError>;

    /// Re-drives a FAILED job to PENDING, a REVOKE_FAILED one to REVOKING (due now, attempts
    /// reset): the row as written, or None when the job is neither.
    async fn redrive_job(&mut self, id: &str, now: DateTime<Utc>) -> Result<Option<FulfillmentJob>, StoreError>;

    /// Records a state change.
    async fn transition(&mut self, change: &TransitionOf<'_>, now: DateTime<Utc>) -> Result<(), StoreError>;

    /// Adds events to the outbox.
    async fn insert_events(&mut self, events: &[OutboxEvent], now: DateTime<Utc>) -> Result<(), StoreError>;

    /// Adds outcome webhook deliveries.
    async fn insert_deliveries(&mut self, deliveries: &[NewDelivery], now: DateTime<Utc>) -> Result<(), StoreError>;

    /// The learner's jobs of the course run, newest first, locked.
    async fn learner_jobs(
        &mut self,
        learner: &LearnerKey,
        course_run_key: &CourseRunKey,
    ) -> Result<Vec<FulfillmentJob>, StoreError>;

    /// The refund requests recorded for these jobs.
    async fn refund_requests(&mut self, job_ids: &[&str]) -> Result<Vec<RefundRequest>, StoreError>;

    /// Records a refund request.
    async fn insert_refund_request(&mut self, request: &RefundRequest) -> Result<(), StoreError>;

    /// Commits the transaction.
    async fn commit(self) -> Result<(), StoreError>;
}

/// One row of `fulfillment_transitions` to write.
pub(super) struct TransitionOf<'a> {
    /// The job.
    pub job_id: &'a str,
    /// The state before; None when the job was created.
    pub from: Option<JobState>,
    /// The state after.
    pub to: JobState,
    /// The attempt number at the time.
    pub attempt: u32,
    /// The lease it happened under, if any.
    pub lease_token: Option<&'a str>,
    /// Who asked for it, when an operator's call made it.
    pub requested_by: Option<&'a str>,
}

/// Records an attempt's outcome in `tx` ([`Store::finish`]), with its transitions, events and webhook deliveries.
pub(super) async fn finish<T: JobTx>(
    mut tx: T,
    lease: &Lease,
    outcome: Outcome,
    webhooks: &crate::webhook::WebhookSources,
    now: DateTime<Utc>,
) -> Result<Finished, StoreError> {
    let Some((claimed, refunded, claimed_attempts)) = tx.held(lease).await? else {
        return Ok(Finished::LeaseLost);
    };
    let claimed = JobState::parse(&claimed)
        .ok_or_else(|| StoreError::Corrupt { id: lease.job_id.clone(), reason: format!("state {claimed:?}") })?;
    let written = Written::of(claimed, &outcome, refunded, now);
    let job = tx.write_outcome(&lease.job_id, &written, now).await?;
    let mut from = claimed;
    for to in &written.path {
        let attempt = u32::try_from(written.attempt_of(*to, claimed_attempts)).unwrap_or_default();
        let change = TransitionOf {
            job_id: &job.id,
            from: Some(from),
            to: *to,
            attempt,
            lease_token: Some(&lease.token),
            requested_by: None,
        };
        tx.transition(&change, now).await?;
        from = *to;
    }
    let mut events = events_for(&job, written.events);
    if written.announces_refund {
        events.extend(revoking_events(&job));
    }
    let (failures, deliveries) = crate::outbox::outcome_announcements(&job, &written.path, webhooks, now);
    events.extend(failures);
    tx.insert_events(&events, now).await?;
    tx.insert_deliveries(&deliveries, now).await?;
    tx.commit().await?;
    Ok(Finished::Recorded(Box::new(job)))
}

/// Records refunds in `tx` ([`Store::refund`]), all or none.
pub(super) async fn refund<T: JobTx>(
    mut tx: T,
    refunds: &[RefundOf],
    traceparent: &str,
    now: DateTime<Utc>,
) -> Result<Refunded, StoreError> {
    // Locked in id order, whatever order the lines were named in: two
    // refunds of one order naming its lines differently cannot deadlock.
    let mut by_id: Vec<&RefundOf> = refunds.iter().collect();
    by_id.sort_by(|a, b| a.job_id.cmp(&b.job_id));
    let mut found = HashMap::with_capacity(refunds.len());
    for asked in by_id {
        match tx.locked_job(&asked.job_id).await? {
            Some(job) => found.insert(asked.job_id.as_str(), job),
            None => return Ok(Refunded::NotFound(asked.job_id.clone())),
        };
    }
    let locked: Vec<FulfillmentJob> =
        refunds.iter().filter_map(|asked| found.get(asked.job_id.as_str()).cloned()).collect();
    let changes = match plan_refunds(&locked, refunds, traceparent, now)? {
        Ok(changes) => changes,
        Err(refused) => return Ok(refused),
    };
    let mut created = false;
    let mut jobs = Vec::with_capacity(locked.len());
    for (before, change) in locked.into_iter().zip(changes) {
        let Some(change) = change else {
            jobs.push(before);
            continue;
        };
        let after = tx.write_refund(&before.id, &change, now).await?;
        if let Some(from) = change.from {
            let change = TransitionOf {
                job_id: &after.id,
                from: Some(from),
                to: after.state,
                attempt: after.attempts,
                lease_token: None,
                requested_by: None,
            };
            tx.transition(&change, now).await?;
        }
        if change.announces {
            tx.insert_events(&revoking_events(&after), now).await?;
        }
        created = true;
        jobs.push(after);
    }
    tx.commit().await?;
    Ok(Refunded::Recorded { jobs, created })
}

/// Records a refund request of the LMS in `tx` ([`Store::request_refund`]).
pub(super) async fn request_refund<T: JobTx>(
    mut tx: T,
    asked: &NewRefundRequest,
    now: DateTime<Utc>,
) -> Result<RefundRequested, StoreError> {
    let jobs = tx.learner_jobs(&asked.learner, &asked.course_run_key).await?;
    let ids: Vec<&str> = jobs.iter().map(|job| job.id.as_str()).collect();
    let recorded = tx.refund_requests(&ids).await?;
    let (answer, insert) = plan_refund_request(jobs, recorded, asked, now);
    if let Some((request, event)) = insert {
        tx.insert_refund_request(&request).await?;
        tx.insert_events(&[event], now).await?;
    }
    tx.commit().await?;
    Ok(answer)
}

/// Re-drives a failed job in `tx` ([`Store::redrive`]); a job that is not failed is read from `store` as it is.
pub(super) async fn redrive<T: JobTx, S: Store + ?Sized>(
    mut tx: T,
    store: &S,
    id: &str,
    requested_by: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Redriven, StoreError> {
    let Some(job) = tx.redrive_job(id, now).await? else {
        drop(tx);
        return Ok(match store.get(id).await? {
            Some(job) => Redriven::NotFailed(Box::new(job)),
            None => Redriven::NotFound,
        });
    };
    let from = if job.state == JobState::Pending { JobState::Failed } else { JobState::RevokeFailed };
    let change =
        TransitionOf { job_id: id, from: Some(from), to: job.state, attempt: 0, lease_token: None, requested_by };
    tx.transition(&change, now).await?;
    tx.commit().await?;
    Ok(Redriven::Pending(Box::new(job)))
}

/// The events a finished job writes, with the placeholder in place of the
/// username when the job's learner was retired while its attempt ran (the
/// events were built from the spec the worker claimed; `job` is the row as
/// the finishing statement left it).
fn events_for(job: &FulfillmentJob, events: &[OutboxEvent]) -> Vec<OutboxEvent> {
    let learner = &job.spec.learner;
    if !learner.lms_username.is_retired() {
        return events.to_vec();
    }
    events
        .iter()
        .map(|event| match crate::outbox::scrub(&event.payload, learner.lms_user_id, &learner.lms_username) {
            Some(payload) => OutboxEvent { payload, ..event.clone() },
            None => event.clone(),
        })
        .collect()
}

/// How recording a refund changes a job's row: the state, whether the
/// attempts start again, when it is due, and the state it leaves (for the
/// transition; None when the state stays).
pub(super) struct RefundChange {
    pub(super) state: JobState,
    pub(super) reset_attempts: bool,
    pub(super) next_attempt_at: Option<DateTime<Utc>>,
    pub(super) from: Option<JobState>,
    /// The line SUCCEEDED, so its purchase was announced: announce the refund (`PurchaseRefunded`).
    pub(super) announces: bool,
    /// The refund as the `refund` column holds it (JSON).
    pub(super) refund: String,
}

/// The row change of a refund with `effect` on `job` (`refund`: the column's
/// JSON); None when nothing changes.
fn refund_change(
    job: &FulfillmentJob,
    effect: RefundEffect,
    now: DateTime<Utc>,
    refund: String,
) -> Option<RefundChange> {
    let (state, reset_attempts, next_attempt_at) = match effect {
        RefundEffect::Revoke => (JobState::Revoking, true, Some(now)),
        RefundEffect::Cancel => (JobState::Cancelled, false, None),
        // The attempt in flight decides; only the refund is recorded.
        RefundEffect::AwaitAttempt => (job.state, false, job.next_attempt_at),
        RefundEffect::Repeat | RefundEffect::Conflict => return None,
    };
    let from = (state != job.state).then_some(job.state);
    let announces = state == JobState::Revoking && job.state == JobState::Succeeded;
    Some(RefundChange { state, reset_attempts, next_attempt_at, from, announces, refund })
}

/// Decides every refund against the jobs as locked (`jobs[i]` for
/// `refunds[i]`): the first refusal, or each job's change (None: unchanged).
fn plan_refunds(
    jobs: &[FulfillmentJob],
    refunds: &[RefundOf],
    traceparent: &str,
    now: DateTime<Utc>,
) -> Result<Result<Vec<Option<RefundChange>>, Refunded>, StoreError> {
    let mut changes = Vec::with_capacity(jobs.len());
    for (job, asked) in jobs.iter().zip(refunds) {
        let granted = may_have_granted(job.attempts, job.last_error.as_ref());
        let effect = refund_effect(job.state, granted, job.refund.as_ref().map(|r| &r.terms), &asked.terms);
        if effect == RefundEffect::Conflict {
            return Ok(Err(Refunded::Refused { job: Box::new(job.clone()) }));
        }
        let refund = Refund { terms: asked.terms.clone(), requested_at: now, traceparent: traceparent.to_owned() };
        let refund = serde_json::to_string(&refund)
            .map_err(|e| StoreError::Corrupt { id: job.id.clone(), reason: e.to_string() })?;
        changes.push(refund_change(job, effect, now, refund));
    }
    Ok(Ok(changes))
}

/// The events of a job that just became REVOKING from SUCCEEDED (a refund recorded,
/// or an enrollment refunded while it ran succeeded): `PurchaseRefunded`, with
/// the job's learner as stored now.
fn revoking_events(job: &FulfillmentJob) -> Vec<OutboxEvent> {
    match (&job.refund, job.state) {
        (Some(refund), JobState::Revoking) => vec![crate::outbox::refund_recorded_event(job, refund)],
        _ => Vec::new(),
    }
}

/// Decides a refund request among the learner's `jobs` of the run (newest
/// first) and the requests already recorded for them: what to answer, and the
/// request to insert (with its event) when there is none.
fn plan_refund_request(
    jobs: Vec<FulfillmentJob>,
    recorded: Vec<RefundRequest>,
    asked: &NewRefundRequest,
    now: DateTime<Utc>,
) -> (RefundRequested, Option<(RefundRequest, OutboxEvent)>) {
    let seen: Vec<(JobState, bool, bool)> = jobs
        .iter()
        .map(|job| (job.state, job.refund.is_some(), recorded.iter().any(|r| r.fulfillment_id == job.id)))
        .collect();
    let mut jobs = jobs;
    match refund_request_target(&seen) {
        RequestTarget::Repeat(i) => {
            let job = jobs.swap_remove(i);
            let request = recorded.into_iter().find(|r| r.fulfillment_id == job.id);
            match request {
                Some(request) => (RefundRequested::Recorded { request, job: Box::new(job), created: false }, None),
                None => (RefundRequested::NoFulfilledLine, None),
            }
        }
        RequestTarget::New(i) => {
            let job = jobs.swap_remove(i);
            let request = RefundRequest {
                id: asked.id.clone(),
                fulfillment_id: job.id.clone(),
                reason: asked.reason.clone(),
                requested_at: now,
            };
            let event = crate::outbox::refund_requested_event(&job, &request, &asked.traceparent);
            (
                RefundRequested::Recorded { request: request.clone(), job: Box::new(job), created: true },
                Some((request, event)),
            )
        }
        RequestTarget::AlreadyRefunded(i) => (RefundRequested::AlreadyRefunded(Box::new(jobs.swap_remove(i))), None),
        RequestTarget::NoFulfilledLine => (RefundRequested::NoFulfilledLine, None),
    }
}

/// The columns `finish` writes for an outcome, and the states the job passes through.
pub(super) struct Written<'a> {
    pub(super) state: JobState,
    /// The states after the claimed one, in order (two when an enrollment
    /// refunded meanwhile succeeds: SUCCEEDED, then REVOKING).
    pub(super) path: Vec<JobState>,
    pub(super) next_attempt_at: Option<DateTime<Utc>>,
    /// An enrollment refunded while it ran is revoked next (it enrolled, or
    /// may have), its attempts counted afresh.
    pub(super) revokes_next: bool,
    /// It enrolled: its refund is announced (`PurchaseRefunded`) after its purchase.
    pub(super) announces_refund: bool,
    pub(super) error: Option<&'a JobError>,
    pub(super) entitlement_uuid: Option<&'a str>,
    pub(super) events: &'a [OutboxEvent],
}

impl<'a> Written<'a> {
    /// What an `outcome` of an attempt claimed in `claimed` writes, `refunded` or not by now.
    fn of(claimed: JobState, outcome: &'a Outcome, refunded: bool, now: DateTime<Utc>) -> Self {
        let state = state_after_attempt(claimed, outcome.end(), refunded);
        let (error, entitlement_uuid, events) = match outcome {
            Outcome::Succeeded { entitlement_uuid, events } => (None, entitlement_uuid.as_deref(), events.as_slice()),
            Outcome::RetryAt { error, .. } | Outcome::Failed { error } => (Some(error), None, &[][..]),
        };
        let revokes_next = claimed == JobState::InProgress && state == JobState::Revoking;
        let announces_refund = revokes_next && matches!(outcome, Outcome::Succeeded { .. });
        let next_attempt_at = match (state, outcome) {
            // Refunded while it enrolled: the revocation is due at once, or when the LMS asked to be left alone.
            (JobState::Revoking, Outcome::RetryAt { at, .. }) if revokes_next => Some((*at).max(now)),
            (JobState::Revoking, _) if revokes_next => Some(now),
            (JobState::Pending | JobState::Revoking, Outcome::RetryAt { at, .. }) => Some(*at),
            _ => None,
        };
        let path = if announces_refund { vec![JobState::Succeeded, JobState::Revoking] } else { vec![state] };
        Written { state, path, next_attempt_at, revokes_next, announces_refund, error, entitlement_uuid, events }
    }

    /// The attempt number a transition to `to` records: the claim's, but a
    /// revocation starting afresh counts from 0.
    fn attempt_of(&self, to: JobState, claimed_attempts: i32) -> i32 {
        if self.revokes_next && to == JobState::Revoking { 0 } else { claimed_attempts }
    }
}
