//! What bounds a request: the body's size and read time, the upstream's
//! deadline, the concurrency gate.

use std::time::Duration;

use axum::response::Response;
use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tonic::Code;

use super::Inner;
use crate::status::ErrorRenderer;

/// A request's body, read within the size limit and `body_read_timeout`; else the refusal to answer.
pub(super) async fn read_body(inner: &Inner, headers: &HeaderMap, body: axum::body::Body) -> Result<Bytes, Response> {
    let errors = &inner.errors;
    if let Some(length) = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        && length > inner.config.max_body_bytes
    {
        return Err(too_large(errors, inner.config.max_body_bytes));
    }
    let read = Limited::new(body, inner.config.max_body_bytes).collect();
    let read_timeout = Some(inner.config.body_read_timeout).filter(|timeout| !timeout.is_zero());
    let read = async {
        match read_timeout {
            Some(timeout) => tokio::time::timeout(timeout, read).await,
            None => Ok(read.await),
        }
    };
    match read.await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<LengthLimitError>() => Err(too_large(errors, inner.config.max_body_bytes)),
        Err(_) => Err(body_too_slow(errors, inner.config.body_read_timeout)),
        Ok(Err(error)) => {
            let mut violations = kit::error::BadRequest::new();
            violations.violation(
                "body",
                kit::error::ViolationReason::InvalidFormat,
                format!("cannot read the request body: {error}"),
            );
            Err(errors.response(&violations.into_status()))
        }
    }
}

/// Awaits an upstream call for at most `timeout`; its failure as the gateway
/// answers it. tonic enforces the grpc-timeout it sends (and a tonic service
/// the one it receives) by answering CANCELLED; the gateway cancels nothing
/// else, so past the deadline that CANCELLED is the deadline. A call
/// cancelled before it (a reset stream, a service going away mid-call) is the
/// upstream unavailable, not our bug. Every other answer is the service's
/// own, passed on as it is.
pub(super) async fn within_deadline<T>(
    service: &str,
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    let deadline = tokio::time::Instant::now() + timeout;
    match tokio::time::timeout_at(deadline, call).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(status)) if status.code() != Code::Cancelled => Err(status),
        Ok(Err(status))
            if tokio::time::Instant::now() < deadline
                && kit::error::classify_peer(&status) != kit::error::PeerFailure::Deadline =>
        {
            Err(kit::error::from_peer(service, "answering", &status))
        }
        Ok(Err(_)) | Err(_) => Err(kit::error::with_retry_info(
            Code::DeadlineExceeded,
            format!("{service} did not answer within {timeout:?}"),
            kit::error::RETRY_AFTER,
        )),
    }
}

/// The answer when every permit is taken and the wait for one ran out.
pub(super) fn at_capacity() -> tonic::Status {
    kit::error::with_retry_info(
        Code::Unavailable,
        "the gateway is at its concurrency limit; retry shortly",
        Duration::from_secs(1),
    )
}

/// 408 for a body not sent within `limit`; the connection is closed, as the
/// rest of the body may still be on its way.
fn body_too_slow(errors: &ErrorRenderer, limit: Duration) -> Response {
    let status = tonic::Status::deadline_exceeded(format!("the request body was not sent within {limit:?}"));
    let mut response = errors.response_with(StatusCode::REQUEST_TIMEOUT, &status);
    response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

fn too_large(errors: &ErrorRenderer, limit: usize) -> Response {
    let status = tonic::Status::new(Code::ResourceExhausted, format!("the request body exceeds {limit} bytes"));
    errors.response_with(StatusCode::PAYLOAD_TOO_LARGE, &status)
}
