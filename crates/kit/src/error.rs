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
    fn throttled_carries_retry_info() {
        let status = throttled("over quota for source acme", Duration::from_millis(1500));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(retry_after(&status), Some(Duration::from_millis(1500)));
    }
}
