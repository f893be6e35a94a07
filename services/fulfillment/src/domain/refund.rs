//! What a refund does to a line in each state, and which line a refund request of the LMS is for.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use vocab::{LmsUserId, LmsUsername, Price, RefundReason, SourceSystem};

use super::{JobError, JobState};

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
    /// ([`state_after_attempt`](super::state_after_attempt)).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ErrorKind;

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
}
