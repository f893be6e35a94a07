//! How attempts fail, and when to try again (the retry policy).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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
