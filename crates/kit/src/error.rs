//! Errors as `google.rpc.Status` with the details callers branch on.
//!
//! Invalid input names every field at fault:
//!
//! ```
//! use kit::error::{BadRequest, ViolationReason};
//!
//! let mut bad = BadRequest::new();
//! bad.violation("line_items[0].mode", ViolationReason::UnknownValue, "unknown mode \"gold\"");
//! let status = bad.into_result().unwrap_err();
//! assert_eq!(status.code(), tonic::Code::InvalidArgument);
//! assert!(status.message().contains("line_items[0].mode"));
//! let reasons = kit::error::violation_reasons(&status);
//! assert_eq!(reasons, [("line_items[0].mode".to_string(), "UNKNOWN_VALUE".to_string())]);
//! ```
//!
//! Every violation carries a stable `reason` ([`ViolationReason`], the same
//! list in every service) for callers that branch; the description is for people.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
pub use vocab::ViolationReason;

/// The `domain` of every `ErrorInfo` the mesh sends.
pub const ERROR_DOMAIN: &str = "commerce-mesh";

/// A parser's refusal: the description for people and the rule it broke.
pub trait Refusal: std::fmt::Display {
    /// The rule broken; a refusal that names none broke one of its own (`INVALID_VALUE`).
    fn rule(&self) -> ViolationReason {
        ViolationReason::InvalidValue
    }
}

impl Refusal for vocab::Invalid {
    fn rule(&self) -> ViolationReason {
        vocab::Invalid::rule(self)
    }
}

impl Refusal for vocab::MoneyError {
    fn rule(&self) -> ViolationReason {
        self.invalid.rule()
    }
}

impl Refusal for String {}
impl Refusal for &str {}

/// One field at fault: where, which rule, why.
#[derive(Debug, Clone)]
struct Violation {
    field: String,
    reason: ViolationReason,
    description: String,
}

/// Field violations collected while validating a request.
#[derive(Debug, Default, Clone)]
pub struct BadRequest {
    violations: Vec<Violation>,
}

impl BadRequest {
    /// No violations yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` (a path such as `order.line_items[2].price`) broke
    /// `reason`, for the reason `description` gives people.
    pub fn violation(
        &mut self,
        field: impl Into<String>,
        reason: ViolationReason,
        description: impl Into<String>,
    ) -> &mut Self {
        self.violations.push(Violation { field: field.into(), reason, description: description.into() });
        self
    }

    /// Records that `field` is invalid by a rule of its own (`INVALID_VALUE`);
    /// prefer [`BadRequest::violation`] with the rule it broke.
    pub fn field(&mut self, field: impl Into<String>, description: impl Into<String>) -> &mut Self {
        self.violation(field, ViolationReason::InvalidValue, description)
    }

    /// The value of a parse that succeeded; otherwise records `field` with the
    /// parser's reason and rule and answers `None`, so every bad field of a
    /// request is named in one answer.
    pub fn check<T, E: Refusal>(&mut self, field: impl Into<String>, parsed: Result<T, E>) -> Option<T> {
        match parsed {
            Ok(value) => Some(value),
            Err(refusal) => {
                self.violation(field, refusal.rule(), refusal.to_string());
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
        let message =
            self.violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; ");
        let details = ErrorDetails::with_bad_request(
            self.violations.into_iter().map(|v| field_violation(v.field, v.reason, v.description)).collect::<Vec<_>>(),
        );
        Status::with_error_details(Code::InvalidArgument, format!("invalid request: {message}"), details)
    }
}

/// A `google.rpc.BadRequest.FieldViolation` with its stable reason, for code
/// that builds a `BadRequest` detail beside others.
pub fn field_violation(
    field: impl Into<String>,
    reason: ViolationReason,
    description: impl Into<String>,
) -> tonic_types::FieldViolation {
    tonic_types::FieldViolation {
        field: field.into(),
        description: description.into(),
        reason: reason.as_str().to_string(),
        localized_message: None,
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

/// The `ErrorInfo` reason of the UNAVAILABLE a call ends with when no
/// connection to the peer could be made (refused, no such host, TLS): nothing
/// answered. Metadata `cause`: the deepest cause, such as `Connection refused (os error 111)`.
pub const CONNECTION_FAILED: &str = "CONNECTION_FAILED";

/// When `status` says no connection to the peer could be made ([`CONNECTION_FAILED`]):
/// why, in the words of the deepest cause.
pub fn connection_failure(status: &Status) -> Option<String> {
    let info = status.get_details_error_info().filter(|info| info.reason == CONNECTION_FAILED)?;
    Some(info.metadata.get("cause").cloned().unwrap_or_default())
}

/// An error and its causes joined by `: `, each said once: a cause whose
/// text the one before already says (a wrapper that displays its source) is left out.
pub fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut previous = text.clone();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let said = inner.to_string();
        if !previous.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        previous = said;
        cause = inner.source();
    }
    text
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

/// The `(field, reason)` pairs of a status's `BadRequest` detail.
pub fn violation_reasons(status: &Status) -> Vec<(String, String)> {
    status
        .get_details_bad_request()
        .map(|bad| bad.field_violations.into_iter().map(|v| (v.field, v.reason)).collect())
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
        bad.violation("order_number", ViolationReason::Required, "must not be empty")
            .field("line_items", "at least one");
        bad.check("price", vocab::Price::parse("USD", "-1"));
        let status = bad.into_status();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            field_violations(&status),
            vec![
                ("order_number".to_string(), "must not be empty".to_string()),
                ("line_items".to_string(), "at least one".to_string()),
                ("price".to_string(), "amount: must not be negative".to_string()),
            ]
        );
        let reasons: Vec<(String, String)> = violation_reasons(&status);
        let reasons: Vec<(&str, &str)> = reasons.iter().map(|(f, r)| (f.as_str(), r.as_str())).collect();
        assert_eq!(
            reasons,
            [("order_number", "REQUIRED"), ("line_items", "INVALID_VALUE"), ("price", "OUT_OF_RANGE")],
            "every violation carries its rule"
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

    /// An error that displays `text` and has `source`.
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as &(dyn std::error::Error + 'static))
        }
    }

    #[test]
    fn causes_are_said_once() {
        // tonic's ConnectError displays hyper's, which has the same text: said once.
        let refused = Layer("Connection refused (os error 111)", None);
        let hyper = Layer("tcp connect error", Some(Box::new(refused)));
        let wrapper = Layer("tcp connect error", Some(Box::new(hyper)));
        let transport = Layer("transport error", Some(Box::new(wrapper)));
        assert_eq!(causes(&transport), "transport error: tcp connect error: Connection refused (os error 111)");
    }

    #[test]
    fn a_connection_failure_is_told_apart_by_its_reason() {
        let status = with_reason(Code::Unavailable, "no", CONNECTION_FAILED, [("cause", "Connection refused")]);
        assert_eq!(connection_failure(&status).as_deref(), Some("Connection refused"));
        assert_eq!(connection_failure(&Status::unavailable("shedding")), None, "a peer that answered");
    }

    #[test]
    fn throttled_carries_retry_info() {
        let status = throttled("over quota for source acme", Duration::from_millis(1500));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(retry_after(&status), Some(Duration::from_millis(1500)));
    }
}
