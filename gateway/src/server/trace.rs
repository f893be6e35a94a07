//! The request's server span and its metrics.

use std::time::Instant;

use super::Gateway;
use axum::extract::Request;
use axum::response::Response;
use opentelemetry::global;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_http::HeaderExtractor;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The server span of a request on `route` (OpenTelemetry HTTP conventions):
/// the root of a trace of the gateway's own, linked to the caller's
/// `traceparent` when it sent one; with `trust_client_traces`, a
/// continuation of the caller's trace.
pub(super) fn server_span(request: &Request, route: Option<&str>, trust_client_traces: bool) -> Span {
    let method = request.method();
    let span = tracing::info_span!(
        "http",
        otel.name = %SpanName { method, route },
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = tracing::field::Empty,
        url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
        request.id = tracing::field::Empty,
    );
    if let Some(route) = route {
        span.record("http.route", route);
    }
    // A disabled span (tracing filtered out) has no trace to continue.
    if span.is_disabled() {
        return span;
    }
    let caller = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(request.headers())));
    if trust_client_traces {
        if let Err(error) = span.set_parent(caller) {
            tracing::debug!(%error, "cannot continue the caller's trace");
        }
    } else {
        // A new root: the gateway's sampler decides, and the trace id is ours.
        // Cut from any trace the task was in, so only the link leads to the caller's.
        if let Err(error) = span.set_parent(opentelemetry::Context::new()) {
            tracing::debug!(%error, "cannot start the request's trace");
        }
        let linked = caller.span().span_context().clone();
        if linked.is_valid() {
            span.add_link(linked);
        }
    }
    span
}

/// Records the answer on the request's span and in the metrics.
pub(super) fn finish_span(
    gateway: &Gateway,
    span: &Span,
    method: &str,
    route: Option<&str>,
    response: &Response,
    started: Instant,
) {
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    if response.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    gateway.0.metrics.observe(method, route.unwrap_or("unmatched"), status, started.elapsed());
}

/// A request span's name, `GET /v1/customers/{customer_id}` (the method alone
/// when no route matched), written only when the span is enabled.
struct SpanName<'a> {
    method: &'a http::Method,
    route: Option<&'a str>,
}

impl std::fmt::Display for SpanName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.route {
            Some(route) => write!(f, "{} {route}", self.method),
            None => f.write_str(self.method.as_str()),
        }
    }
}
