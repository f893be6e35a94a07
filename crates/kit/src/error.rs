//! Errors as `google.rpc.Status` with the details callers branch on.
//!
//! Invalid input names every field at fault:
//!
//! ```
//! use kit::error::BadRequest;
//!
//! let mut bad = BadRequest::new();
//! bad.field("line_items[0].mode", "unknown mode \"gold\"");
//! let status = bad.into_result().unwrap_err();
//! assert_eq!(status.code(), tonic::Code::InvalidArgument);
//! assert!(status.message().contains("line_items[0].mode"));
//! ```

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `domain` of every `ErrorInfo` the mesh sends.
pub const ERROR_DOMAIN: &str = "commerce-mesh";

/// Field violations collected while validating a request.
#[derive(Debug, Default, Clone)]
pub struct BadRequest {
    violations: Vec<(String, String)>,
}

impl BadRequest {
    /// No violations yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` (a path such as `order.line_items[2].price`) is invalid.
    pub fn field(&mut self, field: impl Into<String>, description: impl Into<String>) -> &mut Self {
        self.violations.push((field.into(), description.into()));
        self
    }

    /// The value of a parse that succeeded; otherwise records `field` with the
    /// parser's reason and answers `None`, so every bad field of a request is
    /// named in one answer.
    pub fn check<T, E: std::fmt::Display>(&mut self, field: impl Into<String>, parsed: Result<T, E>) -> Option<T> {
        match parsed {
            Ok(value) => Some(value),
            Err(reason) => {
                self.field(field, reason.to_string());
                None
            }
        }
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.violations.is_empty()
    }

    /// `Ok(())` when nothing was recorded, else the INVALID_ARGUMENT status.
    #[allow(clippy::result_large_err)]
    pub fn into_result(self) -> Result<(), Status> {
        if self.is_empty() { Ok(()) } else { Err(self.into_status()) }
    }

    /// INVALID_ARGUMENT with a `BadRequest` detail; the message lists every violation.
    pub fn into_status(self) -> Status {
        let message = self
            .violations
            .iter()
            .map(|(field, description)| format!("{field}: {description}"))
            .collect::<Vec<_>>()
            .join("; ");
        let details = ErrorDetails::with_bad_request(
            self.violations
                .into_iter()
                .map(|(field, description)| tonic_types::FieldViolation::new(field, description))
                .collect::<Vec<_>>(),
        );
        Status::with_error_details(Code::InvalidArgument, format!("invalid request: {message}"), details)
    }
}

/// A status carrying `ErrorInfo` with a stable `reason` (UPPER_SNAKE_CASE) and metadata.
pub fn with_reason<K, V>(
    code: Code,
    message: impl Into<String>,
    reason: &str,
    metadata: impl IntoIterator<Item = (K, V)>,
) -> Status
where
    K: Into<String>,
    V: Into<String>,
{
    let metadata: HashMap<String, String> = metadata.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
    let details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata);
    Status::with_error_details(code, message, details)
}

/// RESOURCE_EXHAUSTED with `RetryInfo`: the caller may try again after `retry_after`.
pub fn throttled(message: impl Into<String>, retry_after: Duration) -> Status {
    with_retry_info(Code::ResourceExhausted, message, retry_after)
}

/// `code` with `RetryInfo`: the caller may try again after `retry_after`.
pub fn with_retry_info(code: Code, message: impl Into<String>, retry_after: Duration) -> Status {
    let details = ErrorDetails::with_retry_info(Some(retry_after));
    Status::with_error_details(code, message, details)
}

/// How long a caller is told to wait before repeating a call that failed for
/// a reason that passes (a peer or a store down or slow).
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// What a peer's failed answer means for the caller of the call that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerFailure {
    /// The peer did not answer in time: our deadline (tonic answers CANCELLED
    /// "Timeout expired") or the peer's own DEADLINE_EXCEEDED.
    Deadline,
    /// The peer is down, unreachable, overloaded or shedding, or lost the
    /// connection: repeating later may succeed (after its `RetryInfo`, if it sent one).
    Unavailable(Option<Duration>),
    /// Anything else: the peer refused what we sent, or failed itself. Not the
    /// caller's to repeat: a bug between us and the peer.
    Refused,
}

/// Classifies a peer's status. The one place that knows which codes mean
/// "slow or down" (transient) and which mean "refused" (a bug between us).
pub fn classify_peer(status: &Status) -> PeerFailure {
    match status.code() {
        Code::DeadlineExceeded => PeerFailure::Deadline,
        // tonic ends a call past the deadline we gave it CANCELLED, "Timeout expired".
        Code::Cancelled if status.message().contains("Timeout expired") => PeerFailure::Deadline,
        Code::Cancelled | Code::Unavailable | Code::ResourceExhausted | Code::Aborted => {
            PeerFailure::Unavailable(retry_after(status))
        }
        _ => PeerFailure::Refused,
    }
}

/// Our status for a call to `peer` (`"CustomerIdentity"`) that failed while
/// `doing` something (`"resolving customer c-1"`): DEADLINE_EXCEEDED or
/// UNAVAILABLE with `RetryInfo` (the gateway's 504 or 503 with Retry-After)
/// when it may pass, INTERNAL when it will not. Never the peer's own message:
/// it is logged here instead.
///
/// ```
/// let lost = tonic::Status::cancelled("Timeout expired");
/// let ours = kit::error::from_peer("CustomerIdentity", "resolving customer c-1", &lost);
/// assert_eq!(ours.code(), tonic::Code::DeadlineExceeded);
/// assert_eq!(kit::error::retry_after(&ours), Some(kit::error::RETRY_AFTER));
/// ```
pub fn from_peer(peer: &str, doing: &str, status: &Status) -> Status {
    let failure = classify_peer(status);
    tracing::warn!(peer, doing, code = ?status.code(), message = status.message(), ?failure, "a peer call failed");
    match failure {
        PeerFailure::Deadline => with_retry_info(
            Code::DeadlineExceeded,
            format!("{peer} did not answer in time while {doing}; repeat the request"),
            RETRY_AFTER,
        ),
        PeerFailure::Unavailable(wait) => with_retry_info(
            Code::Unavailable,
            format!("{peer} is unavailable while {doing}; repeat the request"),
            wait.unwrap_or(RETRY_AFTER),
        ),
        PeerFailure::Refused => {
            Status::internal(format!("{peer} refused a call while {doing} ({:?}); this is logged", status.code()))
        }
    }
}

/// The `ErrorInfo` reason of a status, if it carries one.
pub fn reason(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

/// The `(field, description)` pairs of a status's `BadRequest` detail.
pub fn field_violations(status: &Status) -> Vec<(String, String)> {
    status
        .get_details_bad_request()
        .map(|bad| bad.field_violations.into_iter().map(|v| (v.field, v.description)).collect())
        .unwrap_or_default()
}

/// The delay a status's `RetryInfo` asks for, if any.
pub fn retry_after(status: &Status) -> Option<Duration> {
    status.get_details_retry_info().and_then(|info| info.retry_delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_request_round_trips_every_violation() {
        let mut bad = BadRequest::new();
        bad.field("order_number", "must not be empty").field("line_items", "at least one is required");
        let status = bad.into_status();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            field_violations(&status),
            vec![
                ("order_number".to_string(), "must not be empty".to_string()),
                ("line_items".to_string(), "at least one is required".to_string()),
            ]
        );
        assert!(status.message().contains("order_number: must not be empty"));
    }

    #[test]
    fn empty_bad_request_is_ok() {
        assert!(BadRequest::new().into_result().is_ok());
    }

    #[test]
    fn reason_and_metadata_survive() {
        let status = with_reason(Code::Aborted, "stale", "VERSION_MISMATCH", [("expected", "3"), ("actual", "4")]);
        assert_eq!(status.code(), Code::Aborted);
        assert_eq!(reason(&status).as_deref(), Some("VERSION_MISMATCH"));
        let info = status.get_details_error_info().expect("error info");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.metadata.get("actual").map(String::as_str), Some("4"));
    }

    #[test]
    fn peers_slow_or_down_are_ours_to_repeat_never_internal() {
        let transient = [
            (Status::cancelled("Timeout expired"), Code::DeadlineExceeded),
            (Status::deadline_exceeded("late"), Code::DeadlineExceeded),
            (Status::unavailable("the connection to the peer failed"), Code::Unavailable),
            (Status::cancelled("h2 reset"), Code::Unavailable),
            (Status::resource_exhausted("shed"), Code::Unavailable),
            (Status::aborted("conflict"), Code::Unavailable),
        ];
        for (peer, ours) in transient {
            let status = from_peer("Peer", "testing", &peer);
            assert_eq!(status.code(), ours, "{peer:?}");
            assert_eq!(retry_after(&status), Some(RETRY_AFTER));
            assert!(!status.message().contains(peer.message()), "the peer's text stays in the log");
        }
        let shedding = with_retry_info(Code::Unavailable, "busy", Duration::from_secs(7));
        assert_eq!(retry_after(&from_peer("Peer", "testing", &shedding)), Some(Duration::from_secs(7)));
        for refused in [Status::invalid_argument("x"), Status::internal("db said: relation foo"), Status::unknown("?")]
        {
            let status = from_peer("Peer", "testing", &refused);
            assert_eq!(status.code(), Code::Internal);
            assert!(!status.message().contains("relation foo"));
        }
    }

    #[test]
    fn throttled_carries_retry_info() {
        let status = throttled("over quota for source acme", Duration::from_millis(1500));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(retry_after(&status), Some(Duration::from_millis(1500)));
    }
}
