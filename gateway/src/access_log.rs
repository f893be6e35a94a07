//! The access log: one line per request on the target `gateway::access`, so
//! operators can keep, route or silence it apart from the rest
//! (`RUST_LOG=warn,gateway::access=info`).
//!
//! Each line has `method`, `route` (the template, such as
//! `/v1/orders/{order_number}:fulfill`; `unmatched` when no route matched, so
//! a raw path, which may carry an id or a learner's name, is never written),
//! `status`, `latency_ms`, `request_id`, `trace_id` and `subject` (the
//! verified token's subject; `-` when no token was verified). Never a token,
//! another header, a query string or a body. Probes (`/healthz`, `/readyz`)
//! are logged at DEBUG, every other request at INFO.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::trace::TraceContextExt as _;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::server::REQUEST_ID_HEADER;

/// The target of access log events.
pub const TARGET: &str = "gateway::access";

/// The route written for a request no route matched.
pub const UNMATCHED: &str = "unmatched";

/// Written in place of a subject or trace id there is none of.
const NONE: &str = "-";

/// What the handler learnt about a request that the access log writes:
/// attached to the response's extensions, read (and removed) by [`log_access`].
#[derive(Clone, Debug)]
pub struct AccessNote {
    /// The route template, or [`UNMATCHED`].
    pub route: String,
    /// The verified token's subject.
    pub subject: Option<String>,
    /// The trace the request's server span belongs to.
    pub trace_id: Option<String>,
}

impl AccessNote {
    /// A note of a request on `route` served in `span`, its caller not known yet.
    pub fn in_span(route: &str, span: &Span) -> Self {
        let context = span.context();
        let span_ref = context.span();
        let ids = span_ref.span_context();
        let trace_id = ids.is_valid().then(|| ids.trace_id().to_string());
        Self { route: route.to_string(), subject: None, trace_id }
    }
}

/// Middleware: serves the request, then writes its access log line.
pub async fn log_access(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    // Set (or replaced when unusable) by the request id layers outside this one.
    let request_id =
        request.headers().get(REQUEST_ID_HEADER).and_then(|id| id.to_str().ok()).unwrap_or(NONE).to_string();
    let matched = request.extensions().get::<MatchedPath>().map(|path| path.as_str().to_string());
    let mut response = next.run(request).await;
    let note = response.extensions_mut().remove::<AccessNote>();
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (route, subject, trace_id) = match note {
        Some(note) => (note.route, note.subject, note.trace_id),
        None => (matched.unwrap_or_else(|| UNMATCHED.to_string()), None, None),
    };
    let status = response.status().as_u16();
    let subject = subject.as_deref().unwrap_or(NONE);
    let trace_id = trace_id.as_deref().unwrap_or(NONE);
    if route == "/healthz" || route == "/readyz" {
        tracing::debug!(target: TARGET, method = %method, route, status, latency_ms, request_id, trace_id, subject, "request");
    } else {
        tracing::info!(target: TARGET, method = %method, route, status, latency_ms, request_id, trace_id, subject, "request");
    }
    response
}
