//! Where a job stands, and the state an LMS attempt leaves it in.

use std::fmt;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
