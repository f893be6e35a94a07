//! Fulfillment's rules, pure and unit-tested: what a valid order is, when two
//! acceptances of one line item are "the same", what happens after each
//! LMS attempt (the retry policy), and what a refund does to a line in each
//! state.
//!
//! Parse, don't validate: each value below is built only by its `parse`, so an
//! invalid one cannot exist past `api.rs`.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vocab::{
    CourseRunKey, CourseUuid, CreditProviderId, CustomerId, Invalid, LineItemId, LmsUserId, LmsUsername, OrderId,
    OrderNumber, Price, ProductKey, RefundReason, SourceSystem, Title, ViolationReason,
};

/// Most line items in one order.
pub const MAX_LINE_ITEMS: usize = 100;

/// An enrollment mode the LMS knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Mode {
    /// `audit`
    Audit,
    /// `honor`
    Honor,
    /// `verified`
    Verified,
    /// `professional`
    Professional,
    /// `no-id-professional`
    NoIdProfessional,
    /// `credit`: needs a credit provider.
    Credit,
    /// `masters`
    Masters,
    /// `executive-education`
    ExecutiveEducation,
    /// `paid-executive-education`
    PaidExecutiveEducation,
    /// `paid-bootcamp`
    PaidBootcamp,
}

impl Mode {
    /// Every mode, in the order the API documents them.
    pub const ALL: [Mode; 10] = [
        Mode::Audit,
        Mode::Honor,
        Mode::Verified,
        Mode::Professional,
        Mode::NoIdProfessional,
        Mode::Credit,
        Mode::Masters,
        Mode::ExecutiveEducation,
        Mode::PaidExecutiveEducation,
        Mode::PaidBootcamp,
    ];

    /// The LMS's name for the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Audit => "audit",
            Mode::Honor => "honor",
            Mode::Verified => "verified",
            Mode::Professional => "professional",
            Mode::NoIdProfessional => "no-id-professional",
            Mode::Credit => "credit",
            Mode::Masters => "masters",
            Mode::ExecutiveEducation => "executive-education",
            Mode::PaidExecutiveEducation => "paid-executive-education",
            Mode::PaidBootcamp => "paid-bootcamp",
        }
    }

    /// Accepts exactly one of the LMS's mode names.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        Mode::ALL.into_iter().find(|m| m.as_str() == raw).ok_or_else(|| {
            let known: Vec<&str> = Mode::ALL.iter().map(|m| m.as_str()).collect();
            let shown: String = raw.chars().take(40).collect();
            let rule = if raw.is_empty() { ViolationReason::Required } else { ViolationReason::UnknownValue };
            Invalid::because(rule, format!("unknown mode {shown:?}; expected one of {}", known.join(", ")))
        })
    }
}

impl From<Mode> for String {
    fn from(mode: Mode) -> Self {
        mode.as_str().to_string()
    }
}

impl TryFrom<String> for Mode {
    type Error = Invalid;
    fn try_from(raw: String) -> Result<Self, Invalid> {
        Mode::parse(&raw)
    }
}

/// What a line item gives the learner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Product {
    /// Enrollment in a course run.
    CourseRun {
        /// The run.
        course_run_key: CourseRunKey,
        /// The mode.
        mode: Mode,
        /// Set exactly when `mode` is credit.
        credit_provider_id: Option<CreditProviderId>,
    },
    /// An entitlement to a course of a program.
    Entitlement {
        /// The course's UUID.
        course_uuid: CourseUuid,
        /// The mode.
        mode: Mode,
    },
}

impl Product {
    /// A course-run enrollment; credit mode needs a provider, other modes must not have one.
    pub fn course_run(key: CourseRunKey, mode: Mode, credit_provider_id: &str) -> Result<Self, Invalid> {
        let credit_provider_id = match (mode, credit_provider_id) {
            (Mode::Credit, "") => {
                return Err(Invalid::because(ViolationReason::Required, "is required when mode is credit"));
            }
            (Mode::Credit, id) => Some(CreditProviderId::parse(id)?),
            (_, "") => None,
            (_, _) => return Err(Invalid::because(ViolationReason::Conflict, "must be empty unless mode is credit")),
        };
        Ok(Product::CourseRun { course_run_key: key, mode, credit_provider_id })
    }

    /// The mode, whichever the product.
    pub fn mode(&self) -> Mode {
        match self {
            Product::CourseRun { mode, .. } | Product::Entitlement { mode, .. } => *mode,
        }
    }

    /// The key purchase history shows: the course run key or the course UUID.
    pub fn key(&self) -> ProductKey {
        match self {
            Product::CourseRun { course_run_key, .. } => ProductKey::from(course_run_key),
            Product::Entitlement { course_uuid, .. } => ProductKey::from(course_uuid),
        }
    }
}

/// The learner as the order names them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LearnerRef {
    /// Only the commerce customer: resolved through CustomerIdentity.
    Customer {
        /// The commerce customer id.
        customer_id: CustomerId,
    },
    /// The LMS user directly (with the customer id when the order had one).
    Lms(Learner),
}

/// A learner resolved to their LMS account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Learner {
    /// The commerce customer id, when known.
    pub customer_id: Option<CustomerId>,
    /// The LMS user id.
    pub lms_user_id: LmsUserId,
    /// The LMS username the enrollment API identifies the learner by.
    pub lms_username: LmsUsername,
}

/// The order-level facts every line item's job carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderHeader {
    /// The order number shown to the learner.
    pub order_number: OrderNumber,
    /// The platform's internal id, when given.
    #[serde(with = "vocab::empty_as_none")]
    pub order_id: Option<OrderId>,
    /// The order's version when paid.
    pub order_version: i64,
    /// When the order was placed.
    pub date_placed: DateTime<Utc>,
    /// Which commerce system sent it, when given.
    #[serde(with = "vocab::empty_as_none")]
    pub source_system: Option<SourceSystem>,
    /// Passed to the LMS.
    pub email_opt_in: bool,
}

/// One line item as accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// Unique within the order.
    pub line_item_id: LineItemId,
    /// What the learner gets.
    pub product: Product,
    /// The title as sold; may be empty.
    pub title: Title,
    /// The price paid (`"0"` for a free line).
    pub price: Price,
}

/// A validated order, the learner not yet resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    /// Order-level facts.
    pub header: OrderHeader,
    /// The learner as named.
    pub learner: LearnerRef,
    /// At least one line, ids unique.
    pub lines: Vec<OrderLine>,
}

impl Order {
    /// The fingerprint of each line as accepted, in line order: two acceptances
    /// of the same (order_number, line_item_id) are "the same order" exactly
    /// when their fingerprints are equal. It covers what reaches the LMS and
    /// purchase history, not `order_version` (a platform may resend a paid
    /// order with a later version). The learner counts as named, not as
    /// resolved, so a repeat is recognised without asking CustomerIdentity.
    pub fn fingerprints(&self) -> Vec<String> {
        #[derive(Serialize)]
        struct Fingerprinted<'a> {
            order_id: &'a str,
            date_placed: &'a DateTime<Utc>,
            source_system: &'a str,
            email_opt_in: bool,
            learner: &'a LearnerRef,
            line: &'a OrderLine,
        }
        let header = &self.header;
        self.lines
            .iter()
            .map(|line| {
                let fingerprinted = Fingerprinted {
                    // Absent as "", as fingerprints were first computed.
                    order_id: header.order_id.as_ref().map_or("", OrderId::as_str),
                    date_placed: &header.date_placed,
                    source_system: header.source_system.as_ref().map_or("", SourceSystem::as_str),
                    email_opt_in: header.email_opt_in,
                    learner: &self.learner,
                    line,
                };
                // Serializing these plain structs cannot fail.
                let canonical = serde_json::to_vec(&fingerprinted).unwrap_or_default();
                hex::encode(Sha256::digest(canonical))
            })
            .collect()
    }

    /// The jobs to store for this order, once the learner is resolved.
    pub fn jobs(&self, learner: &Learner) -> Vec<JobSpec> {
        self.lines
            .iter()
            .zip(self.fingerprints())
            .enumerate()
            .map(|(position, (line, fingerprint))| JobSpec {
                header: self.header.clone(),
                learner: learner.clone(),
                line: line.clone(),
                position: position as i32,
                fingerprint,
            })
            .collect()
    }
}

/// Everything a worker needs to fulfil one line item; stored with the job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Order-level facts.
    pub header: OrderHeader,
    /// The learner, resolved.
    pub learner: Learner,
    /// The line item.
    pub line: OrderLine,
    /// The line's index in the order, for listing in line order.
    pub position: i32,
    /// See [`Order::fingerprints`].
    pub fingerprint: String,
}

/// How a repeat of an order compares with what was stored the first time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repeat {
    /// Nothing stored for this order yet.
    New,
    /// Every line matches what was stored: answer the stored jobs.
    Same,
    /// This line item differs from (or is missing from) what was stored.
    Conflict {
        /// The line item at fault.
        line_item_id: String,
    },
}

/// Compares an order's lines with the (line_item_id, fingerprint) pairs already stored for its number.
pub fn compare_repeat(order: &Order, stored: &[(String, String)]) -> Repeat {
    if stored.is_empty() {
        return Repeat::New;
    }
    for (line, fingerprint) in order.lines.iter().zip(order.fingerprints()) {
        match stored.iter().find(|(id, _)| id == line.line_item_id.as_str()) {
            Some((_, stored_fingerprint)) if *stored_fingerprint == fingerprint => {}
            _ => return Repeat::Conflict { line_item_id: line.line_item_id.to_string() },
        }
    }
    match stored.iter().find(|(id, _)| !order.lines.iter().any(|l| l.line_item_id.as_str() == id)) {
        Some((missing, _)) => Repeat::Conflict { line_item_id: missing.clone() },
        None => Repeat::Same,
    }
}

/// Where a job stands (see the proto's `FulfillmentState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Waiting for a worker.
    Pending,
    /// A worker holds the lease.
    InProgress,
    /// Enrolled. Final unless refunded.
    Succeeded,
    /// Given up; `RetryFulfillment` re-drives it.
    Failed,
    /// Refunded: waiting for a worker to revoke, or being revoked under a lease.
    Revoking,
    /// Refunded and revoked in the LMS. Final.
    Revoked,
    /// Refunded, revocation given up; `RetryFulfillment` re-drives it.
    RevokeFailed,
    /// Refunded before it was fulfilled; the LMS was not called. Final.
    Cancelled,
}

impl JobState {
    /// Every state.
    pub const ALL: [JobState; 8] = [
        JobState::Pending,
        JobState::InProgress,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Revoking,
        JobState::Revoked,
        JobState::RevokeFailed,
        JobState::Cancelled,
    ];

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "PENDING",
            JobState::InProgress => "IN_PROGRESS",
            JobState::Succeeded => "SUCCEEDED",
            JobState::Failed => "FAILED",
            JobState::Revoking => "REVOKING",
            JobState::Revoked => "REVOKED",
            JobState::RevokeFailed => "REVOKE_FAILED",
            JobState::Cancelled => "CANCELLED",
        }
    }

    /// The state `RetryFulfillment` re-drives this one to, if it is a failure.
    pub fn redriven(self) -> Option<JobState> {
        match self {
            JobState::Failed => Some(JobState::Pending),
            JobState::RevokeFailed => Some(JobState::Revoking),
            _ => None,
        }
    }

    /// The state a stored name stands for.
    pub fn parse(raw: &str) -> Option<Self> {
        JobState::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a refund says about one line: how much, why, from where. Two refunds
/// of a line are "the same refund" exactly when their terms are equal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundTerms {
    amount: Price,
    reason: RefundReason,
    source: SourceSystem,
}

/// Why refund terms do not fit the line they refund.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefundMismatch {
    /// Another currency than the line's price.
    #[error("is in {asked}, but the line was paid in {paid}")]
    Currency {
        /// The refund's currency.
        asked: String,
        /// The price's currency.
        paid: String,
    },
    /// More than the line's price.
    #[error("{asked} is more than the line's price, {paid}")]
    AboveThePrice {
        /// The refund's amount.
        asked: String,
        /// The price.
        paid: String,
    },
}

impl RefundTerms {
    /// The terms of a refund of a line paid `price`: `amount` (None for the
    /// whole price) in the price's currency and at most the price.
    pub fn for_line(
        price: &Price,
        amount: Option<Price>,
        reason: RefundReason,
        source: SourceSystem,
    ) -> Result<Self, RefundMismatch> {
        let amount = amount.unwrap_or(*price);
        if amount.currency() != price.currency() {
            return Err(RefundMismatch::Currency {
                asked: amount.currency_code().to_string(),
                paid: price.currency_code().to_string(),
            });
        }
        if amount.amount() > price.amount() {
            return Err(RefundMismatch::AboveThePrice { asked: amount.amount_text(), paid: price.amount_text() });
        }
        Ok(Self { amount, reason, source })
    }

    /// The amount refunded.
    pub fn amount(&self) -> &Price {
        &self.amount
    }

    /// Why.
    pub fn reason(&self) -> &RefundReason {
        &self.reason
    }

    /// Which system refunded.
    pub fn source(&self) -> &SourceSystem {
        &self.source
    }

    /// Whether `other` is the same refund: equal amounts however written
    /// (`"49"` and `"49.00"`), the same reason and source.
    pub fn same_as(&self, other: &RefundTerms) -> bool {
        self.amount.currency() == other.amount.currency()
            && self.amount.amount() == other.amount.amount()
            && self.reason == other.reason
            && self.source == other.source
    }
}

/// A refund as recorded with its job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    /// What was refunded.
    #[serde(flatten)]
    pub terms: RefundTerms,
    /// When it was first recorded.
    pub requested_at: DateTime<Utc>,
    /// The W3C traceparent of the call that recorded it, so the revocation joins its trace.
    #[serde(default)]
    pub traceparent: String,
}

/// What a refund does to a line, by the line's state (decided under the row's lock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefundEffect {
    /// Record it, REVOKING, due now: SUCCEEDED, or PENDING or FAILED after an
    /// LMS call that may have enrolled the learner (a timeout, a 5xx).
    Revoke,
    /// Record it, CANCELLED: PENDING and never sent to the LMS, or FAILED
    /// because the LMS refused it (nothing was granted).
    Cancel,
    /// IN_PROGRESS: record it; the attempt in flight decides when it ends
    /// ([`state_after_attempt`]).
    AwaitAttempt,
    /// Already refunded on the same terms: change nothing, answer as it stands.
    Repeat,
    /// Already refunded on other terms: refuse.
    Conflict,
}

/// Whether the LMS may have granted a line that did not succeed: it was sent
/// at least once, and its latest answer was not a refusal. The enrollment API
/// is idempotent, so a line granted by an earlier attempt whose answer was
/// lost is answered 2xx, never 4xx, by the next one.
pub fn may_have_granted(attempts: u32, last_error: Option<&JobError>) -> bool {
    match last_error {
        None => attempts > 0,
        Some(error) => !error.is_refusal(),
    }
}

/// What a refund on `asked` terms does to a line in `state` (`granted`: see
/// [`may_have_granted`]), refunded before on `recorded` terms or not.
pub fn refund_effect(
    state: JobState,
    granted: bool,
    recorded: Option<&RefundTerms>,
    asked: &RefundTerms,
) -> RefundEffect {
    match recorded {
        Some(recorded) if recorded.same_as(asked) => RefundEffect::Repeat,
        Some(_) => RefundEffect::Conflict,
        None => match state {
            JobState::InProgress => RefundEffect::AwaitAttempt,
            JobState::Succeeded => RefundEffect::Revoke,
            JobState::Pending | JobState::Failed if granted => RefundEffect::Revoke,
            JobState::Pending | JobState::Failed => RefundEffect::Cancel,
            // Every refunded state has its refund recorded: a row without one was not refunded here.
            JobState::Revoking | JobState::Revoked | JobState::RevokeFailed | JobState::Cancelled => {
                RefundEffect::Conflict
            }
        },
    }
}

/// How an LMS attempt ended, before the refund (if any) is taken into account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptEnd {
    /// The LMS did what was asked.
    Succeeded,
    /// A transient failure with attempts left.
    Retry,
    /// The LMS refused (4xx): nothing was granted.
    Refused,
    /// Attempts exhausted on transient failures: the LMS may have acted.
    Failed,
}

/// The state a job moves to when an attempt begun in `claimed` (IN_PROGRESS
/// to enrol, REVOKING to revoke) ends so, `refunded` or not by then. An
/// enrollment refunded while it ran is cancelled if the LMS refused it, and
/// revoked otherwise: it enrolled, or may have (a timeout, a 5xx).
pub fn state_after_attempt(claimed: JobState, end: AttemptEnd, refunded: bool) -> JobState {
    match (claimed, end) {
        (JobState::Revoking, AttemptEnd::Succeeded) => JobState::Revoked,
        (JobState::Revoking, AttemptEnd::Retry) => JobState::Revoking,
        (JobState::Revoking, AttemptEnd::Refused | AttemptEnd::Failed) => JobState::RevokeFailed,
        (_, AttemptEnd::Refused) if refunded => JobState::Cancelled,
        (_, _) if refunded => JobState::Revoking,
        (_, AttemptEnd::Succeeded) => JobState::Succeeded,
        (_, AttemptEnd::Retry) => JobState::Pending,
        (_, AttemptEnd::Refused | AttemptEnd::Failed) => JobState::Failed,
    }
}

/// A learner as the LMS names them when it asks for a refund.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LearnerKey {
    /// By LMS user id.
    LmsUserId(LmsUserId),
    /// By the LMS username the order was fulfilled for.
    Username(LmsUsername),
}

/// A refund the LMS asked for (`RequestRefund`), as recorded: one per fulfillment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundRequest {
    /// Its id.
    pub id: String,
    /// The fulfillment it is for.
    pub fulfillment_id: String,
    /// Why, as the LMS said.
    pub reason: RefundReason,
    /// When it was first recorded.
    pub requested_at: DateTime<Utc>,
}

/// Which of a learner's jobs of one course run a refund request is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestTarget {
    /// A request was recorded before for the job at this index: answer it again.
    Repeat(usize),
    /// The newest SUCCEEDED job, at this index: record a request for it.
    New(usize),
    /// None SUCCEEDED, but the one at this index was refunded already.
    AlreadyRefunded(usize),
    /// No job of the run was fulfilled.
    NoFulfilledLine,
}

/// The target among `jobs` (newest first: their state, whether they were
/// refunded, whether a request was recorded for them). A request for a line
/// refunded since does not answer for a newer purchase of the same run, but
/// is answered again when there is none.
pub fn refund_request_target(jobs: &[(JobState, bool, bool)]) -> RequestTarget {
    if let Some(i) = jobs.iter().position(|(_, refunded, requested)| *requested && !refunded) {
        return RequestTarget::Repeat(i);
    }
    if let Some(i) = jobs.iter().position(|(state, refunded, _)| *state == JobState::Succeeded && !refunded) {
        return RequestTarget::New(i);
    }
    if let Some(i) = jobs.iter().position(|(_, _, requested)| *requested) {
        return RequestTarget::Repeat(i);
    }
    match jobs.iter().position(|(_, refunded, _)| *refunded) {
        Some(i) => RequestTarget::AlreadyRefunded(i),
        None => RequestTarget::NoFulfilledLine,
    }
}

/// Classes of attempt failure (see the proto's `FulfillmentErrorKind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// 4xx other than 408/429: permanent.
    Rejected,
    /// 408, 429, 5xx: retried.
    Unavailable,
    /// No answer in time: retried.
    Timeout,
    /// Unreachable: retried.
    Connection,
    /// No access token: retried.
    Authentication,
    /// Out of attempts.
    AttemptsExhausted,
}

impl ErrorKind {
    /// Every kind.
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Rejected,
        ErrorKind::Unavailable,
        ErrorKind::Timeout,
        ErrorKind::Connection,
        ErrorKind::Authentication,
        ErrorKind::AttemptsExhausted,
    ];

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Rejected => "REJECTED",
            ErrorKind::Unavailable => "UNAVAILABLE",
            ErrorKind::Timeout => "TIMEOUT",
            ErrorKind::Connection => "CONNECTION",
            ErrorKind::Authentication => "AUTHENTICATION",
            ErrorKind::AttemptsExhausted => "ATTEMPTS_EXHAUSTED",
        }
    }

    /// The kind a stored name stands for.
    pub fn parse(raw: &str) -> Option<Self> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == raw)
    }

    /// Whether another attempt may succeed.
    pub fn is_transient(self) -> bool {
        !matches!(self, ErrorKind::Rejected | ErrorKind::AttemptsExhausted)
    }

    /// The class of an LMS answer's HTTP status that is not a success.
    pub fn of_status(status: u16) -> Self {
        match status {
            408 | 429 | 500..=599 => ErrorKind::Unavailable,
            _ => ErrorKind::Rejected,
        }
    }
}

/// Why an attempt (or the job) failed, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobError {
    /// The class.
    pub kind: ErrorKind,
    /// The LMS's HTTP status when it answered.
    pub lms_status: Option<u16>,
    /// What happened, with the start of the LMS's body.
    pub message: String,
}

impl JobError {
    /// Whether the LMS answered a refusal (a 4xx other than 408/429): it did not act.
    pub fn is_refusal(&self) -> bool {
        self.kind == ErrorKind::Rejected && self.lms_status.is_some_and(|status| (400..500).contains(&status))
    }
}

/// What one failed attempt told us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptFailure {
    /// The error to record.
    pub error: JobError,
    /// The LMS's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
}

/// When to try again, and how often at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    /// The first retry waits up to this long; each one after up to twice as long.
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    /// No retry waits longer than this (unless the LMS's Retry-After says so).
    #[serde(with = "humantime_serde")]
    pub cap: Duration,
    /// Attempts in all, the first included, before a job FAILS.
    pub max_attempts: u32,
    /// The longest `Retry-After` honoured: a longer one (or a nonsensical one)
    /// would park the job where `RetryFulfillment` cannot reach it.
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(600),
            max_attempts: 8,
            max_retry_after: Duration::from_secs(3600),
        }
    }
}

/// What to do with a job after a failed attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// Back to PENDING, due at this time.
    RetryAt(DateTime<Utc>, JobError),
    /// FAILED, with this error.
    Fail(JobError),
}

impl RetryPolicy {
    /// Decides after attempt number `attempt` (1 for the first) failed.
    ///
    /// Full jitter: the wait is `jitter` (uniform in [0, 1)) times
    /// `min(cap, base * 2^(attempt-1))`, so many jobs failing together do not
    /// retry together; never shorter than the LMS's Retry-After (up to
    /// `max_retry_after`).
    pub fn after_failure(
        &self,
        attempt: u32,
        failure: AttemptFailure,
        now: DateTime<Utc>,
        jitter: f64,
    ) -> AfterFailure {
        let AttemptFailure { error, retry_after } = failure;
        if !error.kind.is_transient() {
            return AfterFailure::Fail(error);
        }
        if attempt >= self.max_attempts {
            let message = format!("gave up after {attempt} attempts; the last: {}", error.message);
            return AfterFailure::Fail(JobError { kind: ErrorKind::AttemptsExhausted, message, ..error });
        }
        let wait = self.backoff(attempt, jitter).max(retry_after.unwrap_or_default().min(self.max_retry_after));
        let wait = chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
        AfterFailure::RetryAt(now.checked_add_signed(wait).unwrap_or(DateTime::<Utc>::MAX_UTC), error)
    }

    /// The jittered wait after attempt number `attempt`.
    pub fn backoff(&self, attempt: u32, jitter: f64) -> Duration {
        let ceiling = self.base.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1))).min(self.cap);
        ceiling.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(lines: &[(&str, &str)]) -> Order {
        Order {
            header: OrderHeader {
                order_number: OrderNumber::parse("EDX-1").unwrap(),
                order_id: Some(OrderId::parse("o-1").unwrap()),
                order_version: 1,
                date_placed: DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
                source_system: Some(SourceSystem::parse("commercetools").unwrap()),
                email_opt_in: false,
            },
            learner: LearnerRef::Customer { customer_id: CustomerId::parse("c-1").unwrap() },
            lines: lines
                .iter()
                .map(|(id, key)| OrderLine {
                    line_item_id: LineItemId::parse(id).unwrap(),
                    product: Product::course_run(CourseRunKey::parse(key).unwrap(), Mode::Verified, "").unwrap(),
                    title: Title::default(),
                    price: Price::parse("USD", "49.00").unwrap(),
                })
                .collect(),
        }
    }

    #[test]
    fn modes_round_trip_and_unknown_ones_are_named() {
        for mode in Mode::ALL {
            assert_eq!(Mode::parse(mode.as_str()), Ok(mode));
        }
        let error = Mode::parse("premium").unwrap_err().to_string();
        assert!(error.contains("premium") && error.contains("no-id-professional"), "{error}");
    }

    #[test]
    fn credit_mode_needs_a_provider_and_only_credit_has_one() {
        let key = || CourseRunKey::parse("course-v1:a+b+c").unwrap();
        assert!(Product::course_run(key(), Mode::Credit, "").is_err());
        assert!(Product::course_run(key(), Mode::Credit, "asu").is_ok());
        assert!(Product::course_run(key(), Mode::Verified, "asu").is_err());
    }

    const FINGERPRINT_BEFORE_VOCAB: &str = "ea4e27679b28dc2b1575d2fdebc420592b555ca6edbc1ce28562c0ac59de5e70";

    #[test]
    fn fingerprints_keep_the_form_they_were_first_stored_in() {
        // Computed by the release before the shared vocabulary, for the same order:
        // a repeat of an order accepted then is still recognised as the same order.
        let fingerprints = order(&[("1", "course-v1:a+b+c")]).fingerprints();
        assert_eq!(fingerprints, [FINGERPRINT_BEFORE_VOCAB]);
    }

    #[test]
    fn a_repeat_matches_line_by_line() {
        let first = order(&[("1", "course-v1:a+b+c"), ("2", "course-v1:a+b+d")]);
        let stored: Vec<(String, String)> =
            first.lines.iter().map(|l| l.line_item_id.to_string()).zip(first.fingerprints()).collect();
        assert_eq!(compare_repeat(&first, &[]), Repeat::New);
        assert_eq!(compare_repeat(&first, &stored), Repeat::Same);

        let changed = order(&[("1", "course-v1:a+b+c"), ("2", "course-v1:a+b+CHANGED")]);
        assert_eq!(compare_repeat(&changed, &stored), Repeat::Conflict { line_item_id: "2".into() });
        let extra = order(&[("1", "course-v1:a+b+c"), ("2", "course-v1:a+b+d"), ("3", "course-v1:a+b+e")]);
        assert_eq!(compare_repeat(&extra, &stored), Repeat::Conflict { line_item_id: "3".into() });
        let fewer = order(&[("1", "course-v1:a+b+c")]);
        assert_eq!(compare_repeat(&fewer, &stored), Repeat::Conflict { line_item_id: "2".into() });
    }

    #[test]
    fn a_later_order_version_is_the_same_order() {
        let first = order(&[("1", "course-v1:a+b+c")]);
        let mut resent = first.clone();
        resent.header.order_version += 1;
        assert_eq!(first.fingerprints(), resent.fingerprints());
        resent.header.email_opt_in = !resent.header.email_opt_in;
        assert_ne!(first.fingerprints(), resent.fingerprints());
    }

    fn terms(amount: &str, reason: &str) -> RefundTerms {
        let price = Price::parse("USD", "149.00").unwrap();
        let amount = Some(Price::parse("USD", amount).unwrap());
        RefundTerms::for_line(
            &price,
            amount,
            RefundReason::parse(reason).unwrap(),
            SourceSystem::parse("stripe").unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn a_refund_fits_its_line_or_says_why_not() {
        let price = Price::parse("USD", "149.00").unwrap();
        let (reason, source) = (RefundReason::default(), SourceSystem::parse("support").unwrap());
        let whole = RefundTerms::for_line(&price, None, reason.clone(), source.clone()).unwrap();
        assert_eq!(whole.amount(), &price, "no amount is the whole price");
        let above = Some(Price::parse("USD", "149.01").unwrap());
        assert!(matches!(
            RefundTerms::for_line(&price, above, reason.clone(), source.clone()),
            Err(RefundMismatch::AboveThePrice { .. })
        ));
        let euros = Some(Price::parse("EUR", "10").unwrap());
        assert!(matches!(RefundTerms::for_line(&price, euros, reason, source), Err(RefundMismatch::Currency { .. })));
        assert!(terms("49", "x").same_as(&terms("49.00", "x")), "equal amounts however written");
        assert!(!terms("49", "x").same_as(&terms("49", "y")));
    }

    #[test]
    fn a_refund_does_what_the_line_state_allows() {
        let asked = terms("149.00", "requested_by_customer");
        assert_eq!(refund_effect(JobState::Pending, false, None, &asked), RefundEffect::Cancel);
        assert_eq!(refund_effect(JobState::Pending, true, None, &asked), RefundEffect::Revoke, "sent before");
        assert_eq!(refund_effect(JobState::InProgress, true, None, &asked), RefundEffect::AwaitAttempt);
        assert_eq!(refund_effect(JobState::Succeeded, true, None, &asked), RefundEffect::Revoke);
        assert_eq!(refund_effect(JobState::Failed, false, None, &asked), RefundEffect::Cancel, "the LMS refused it");
        assert_eq!(refund_effect(JobState::Failed, true, None, &asked), RefundEffect::Revoke, "it may have enrolled");
        for state in [JobState::Revoking, JobState::Revoked, JobState::RevokeFailed, JobState::Cancelled] {
            assert_eq!(refund_effect(state, true, Some(&asked), &asked), RefundEffect::Repeat, "{state}");
            assert_eq!(refund_effect(state, true, Some(&terms("1", "x")), &asked), RefundEffect::Conflict, "{state}");
        }
        assert_eq!(refund_effect(JobState::InProgress, true, Some(&asked), &asked), RefundEffect::Repeat);
        let refused = JobError { kind: ErrorKind::Rejected, lms_status: Some(400), message: String::new() };
        let lost = JobError { kind: ErrorKind::Timeout, lms_status: None, message: String::new() };
        assert!(!may_have_granted(0, None));
        assert!(may_have_granted(1, None));
        assert!(!may_have_granted(3, Some(&refused)));
        assert!(may_have_granted(0, Some(&lost)), "a re-driven line whose earlier answer was lost");
    }

    #[test]
    fn an_attempt_ends_in_the_state_its_phase_and_the_refund_say() {
        use JobState::{Cancelled, InProgress, Pending, RevokeFailed, Revoked, Revoking};
        let (ok, retry, fail) = (AttemptEnd::Succeeded, AttemptEnd::Retry, AttemptEnd::Failed);
        let refused = AttemptEnd::Refused;
        let cases = [
            (InProgress, ok, false, JobState::Succeeded),
            (InProgress, retry, false, Pending),
            (InProgress, fail, false, JobState::Failed),
            (InProgress, refused, false, JobState::Failed),
            (InProgress, ok, true, Revoking),
            (InProgress, retry, true, Revoking),
            (InProgress, fail, true, Revoking),
            (InProgress, refused, true, Cancelled),
            (Revoking, ok, true, Revoked),
            (Revoking, retry, true, Revoking),
            (Revoking, fail, true, RevokeFailed),
            (Revoking, refused, true, RevokeFailed),
        ];
        for (claimed, end, refunded, expected) in cases {
            assert_eq!(state_after_attempt(claimed, end, refunded), expected, "{claimed} {end:?} {refunded}");
        }
        assert_eq!(JobState::Failed.redriven(), Some(Pending));
        assert_eq!(RevokeFailed.redriven(), Some(Revoking));
        assert_eq!(Revoked.redriven(), None);
    }

    #[test]
    fn a_refund_request_finds_the_newest_fulfilled_line_once() {
        use JobState::{Pending, Revoked, Succeeded};
        assert_eq!(refund_request_target(&[]), RequestTarget::NoFulfilledLine);
        assert_eq!(refund_request_target(&[(Pending, false, false)]), RequestTarget::NoFulfilledLine);
        assert_eq!(refund_request_target(&[(Pending, false, false), (Succeeded, false, false)]), RequestTarget::New(1));
        assert_eq!(
            refund_request_target(&[(Succeeded, false, false), (Succeeded, false, true)]),
            RequestTarget::Repeat(1),
            "a request recorded before is answered again"
        );
        assert_eq!(
            refund_request_target(&[(Succeeded, false, false), (Revoked, true, true)]),
            RequestTarget::New(0),
            "bought again after a refund: a new request"
        );
        assert_eq!(refund_request_target(&[(Revoked, true, false)]), RequestTarget::AlreadyRefunded(0));
        assert_eq!(
            refund_request_target(&[(Revoked, true, true)]),
            RequestTarget::Repeat(0),
            "the LMS repeating its request after the refund gets the request it made"
        );
    }

    #[test]
    fn statuses_are_classified() {
        assert_eq!(ErrorKind::of_status(400), ErrorKind::Rejected);
        assert_eq!(ErrorKind::of_status(404), ErrorKind::Rejected);
        assert_eq!(ErrorKind::of_status(408), ErrorKind::Unavailable);
        assert_eq!(ErrorKind::of_status(429), ErrorKind::Unavailable);
        assert_eq!(ErrorKind::of_status(503), ErrorKind::Unavailable);
    }

    fn failure(kind: ErrorKind, retry_after: Option<Duration>) -> AttemptFailure {
        AttemptFailure { error: JobError { kind, lms_status: None, message: "x".into() }, retry_after }
    }

    #[test]
    fn backoff_grows_to_the_cap_with_full_jitter() {
        let policy =
            RetryPolicy { base: Duration::from_secs(1), cap: Duration::from_secs(10), ..RetryPolicy::default() };
        assert_eq!(policy.backoff(1, 1.0), Duration::from_secs(1));
        assert_eq!(policy.backoff(2, 1.0), Duration::from_secs(2));
        assert_eq!(policy.backoff(4, 1.0), Duration::from_secs(8));
        assert_eq!(policy.backoff(5, 1.0), Duration::from_secs(10));
        assert_eq!(policy.backoff(60, 1.0), Duration::from_secs(10));
        assert_eq!(policy.backoff(3, 0.0), Duration::ZERO);
        assert_eq!(policy.backoff(3, 0.5), Duration::from_secs(2));
    }

    #[test]
    fn after_failure_retries_transient_errors_and_honours_retry_after() {
        let policy = RetryPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(10),
            max_attempts: 3,
            max_retry_after: Duration::from_secs(60),
        };
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let at = |secs| now + chrono::Duration::seconds(secs);
        match policy.after_failure(1, failure(ErrorKind::Unavailable, None), now, 1.0) {
            AfterFailure::RetryAt(when, _) => assert_eq!(when, at(1)),
            other => panic!("{other:?}"),
        }
        match policy.after_failure(1, failure(ErrorKind::Unavailable, Some(Duration::from_secs(30))), now, 1.0) {
            AfterFailure::RetryAt(when, _) => assert_eq!(when, at(30)),
            other => panic!("{other:?}"),
        }
        let forever = Some(Duration::from_secs(9_999_999_999));
        match policy.after_failure(1, failure(ErrorKind::Unavailable, forever), now, 1.0) {
            AfterFailure::RetryAt(when, _) => assert_eq!(when, at(60), "capped at max_retry_after"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            policy.after_failure(1, failure(ErrorKind::Rejected, None), now, 1.0),
            AfterFailure::Fail(JobError { kind: ErrorKind::Rejected, .. })
        ));
        assert!(matches!(
            policy.after_failure(3, failure(ErrorKind::Timeout, None), now, 1.0),
            AfterFailure::Fail(JobError { kind: ErrorKind::AttemptsExhausted, .. })
        ));
    }
}
