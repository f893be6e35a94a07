//! Tower layers that carry one trace across every hop.
//!
//! - [`grpc_server_layer`]: a server span per RPC, continuing the caller's W3C
//!   `traceparent`, named and attributed by the OpenTelemetry RPC conventions;
//! - [`grpc_client_layer`] with [`InjectTraceContextLayer`]: a client span per
//!   outgoing RPC whose context travels in the request's metadata (see
//!   [`crate::client::channel`], which stacks both on a tonic channel);
//! - [`inject_current_context`]: the same for outgoing HTTP requests (reqwest);
//! - [`TextContext`]: the same carried as text through a database row or a
//!   stream message, and made a span's parent on the other side.

use std::num::NonZeroI32;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, Request, Response};
use opentelemetry::global;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use tower::{Layer, Service};
use tower_http::classify::{GrpcErrorsAsFailures, GrpcFailureClass, SharedClassifier};
use tower_http::trace::{MakeSpan, OnEos, OnFailure, OnResponse, TraceLayer};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Which end of an RPC a span describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The component answering the RPC.
    Server,
    /// The component making the RPC.
    Client,
}

/// The tower-http trace layer configured for one side of gRPC calls.
pub type GrpcTraceLayer =
    TraceLayer<SharedClassifier<GrpcErrorsAsFailures>, RpcSpan, (), RecordStatus, (), RecordStatus, RecordStatus>;

/// A server span per RPC, continuing any trace context the caller sent.
/// Health checks and reflection are not traced: probes would flood the traces.
pub fn grpc_server_layer() -> GrpcTraceLayer {
    grpc_layer(Side::Server, None)
}

/// [`grpc_server_layer`] for a named component: its spans say so in
/// `mesh.component` (see [`crate::component_spans`]).
pub fn grpc_server_layer_for(component: &str) -> GrpcTraceLayer {
    grpc_layer(Side::Server, Some(component.into()))
}

/// A client span per outgoing RPC. Stack [`InjectTraceContextLayer`] inside it
/// so the span's context reaches the server.
pub fn grpc_client_layer() -> GrpcTraceLayer {
    grpc_layer(Side::Client, None)
}

/// [`grpc_client_layer`] for calls a named component makes.
pub fn grpc_client_layer_for(component: &str) -> GrpcTraceLayer {
    grpc_layer(Side::Client, Some(component.into()))
}

fn grpc_layer(side: Side, component: Option<Arc<str>>) -> GrpcTraceLayer {
    TraceLayer::new_for_grpc()
        .make_span_with(RpcSpan { side, component })
        .on_request(())
        .on_response(RecordStatus { side })
        .on_body_chunk(())
        .on_eos(RecordStatus { side })
        .on_failure(RecordStatus { side })
}

/// Makes the span of one RPC from its `:path`, `/package.Service/Method`.
#[derive(Clone, Debug)]
pub struct RpcSpan {
    side: Side,
    /// The component whose span it is, when known.
    component: Option<Arc<str>>,
}

impl<B> MakeSpan<B> for RpcSpan {
    fn make_span(&mut self, request: &Request<B>) -> Span {
        let path = request.uri().path();
        let (service, method) = split_rpc_path(path);
        if self.side == Side::Server && is_infrastructure(service) {
            return Span::none();
        }
        let name = path.trim_start_matches('/');
        let kind = match self.side {
            Side::Server => "server",
            Side::Client => "client",
        };
        let span = tracing::info_span!(
            "grpc",
            otel.name = name,
            otel.kind = kind,
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
            server.address = tracing::field::Empty,
            mesh.component = tracing::field::Empty,
        );
        if let Some(component) = &self.component {
            span.record("mesh.component", component.as_ref());
        }
        if self.side == Side::Client
            && let Some(host) = request.uri().host()
        {
            span.record("server.address", host);
        }
        if self.side == Side::Server {
            let parent = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(request.headers())));
            if let Err(error) = span.set_parent(parent) {
                tracing::debug!(%error, "cannot continue the caller's trace");
            }
        }
        span
    }
}

/// Records `rpc.grpc.status_code` (and an error status where the conventions
/// call one) from response headers, trailers, or a failure classification.
#[derive(Clone, Copy, Debug)]
pub struct RecordStatus {
    side: Side,
}

impl RecordStatus {
    fn record(&self, code: i32, span: &Span) {
        span.record("rpc.grpc.status_code", code);
        // Server spans are errors only for codes that mean the server failed;
        // client spans for any code but OK (OpenTelemetry RPC conventions).
        let server_fault = matches!(code, 2 | 4 | 12 | 13 | 14 | 15);
        if code != 0 && (self.side == Side::Client || server_fault) {
            span.record("otel.status_code", "ERROR");
        }
    }
}

impl<B> OnResponse<B> for RecordStatus {
    fn on_response(self, response: &Response<B>, _latency: Duration, span: &Span) {
        if let Some(code) = grpc_status(response.headers()) {
            self.record(code, span);
        }
    }
}

impl OnEos for RecordStatus {
    fn on_eos(self, trailers: Option<&HeaderMap>, _duration: Duration, span: &Span) {
        if let Some(code) = trailers.and_then(grpc_status) {
            self.record(code, span);
        }
    }
}

impl OnFailure<GrpcFailureClass> for RecordStatus {
    fn on_failure(&mut self, failure: GrpcFailureClass, _latency: Duration, span: &Span) {
        match failure {
            GrpcFailureClass::Code(code) => self.record(NonZeroI32::get(code), span),
            GrpcFailureClass::Error(error) => {
                span.record("otel.status_code", "ERROR");
                tracing::debug!(parent: span, %error, "rpc failed");
            }
        }
    }
}

/// The gRPC status code in response headers (a trailers-only answer) or trailers.
pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// `("package.Service", "Method")` from `/package.Service/Method`.
pub fn split_rpc_path(path: &str) -> (&str, &str) {
    let trimmed = path.trim_start_matches('/');
    trimmed.split_once('/').unwrap_or((trimmed, ""))
}

fn is_infrastructure(service: &str) -> bool {
    service == "grpc.health.v1.Health" || service.starts_with("grpc.reflection.")
}

/// Writes the current span's trace context (W3C `traceparent`, `tracestate`)
/// into outgoing headers, gRPC metadata or HTTP alike.
pub fn inject_current_context(headers: &mut HeaderMap) {
    let context = Span::current().context();
    global::get_text_map_propagator(|p| p.inject_context(&context, &mut HeaderInjector(headers)));
}

/// A W3C trace context in text form, for carrying a trace through a database
/// row or a stream message, where there are no headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextContext {
    /// `00-<trace-id>-<span-id>-<flags>`; empty when there is no trace.
    pub traceparent: String,
    /// The accompanying `tracestate`; usually empty.
    pub tracestate: String,
}

impl TextContext {
    /// The current span's context.
    pub fn current() -> Self {
        let mut headers = HeaderMap::new();
        inject_current_context(&mut headers);
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        Self { traceparent: text("traceparent"), tracestate: text("tracestate") }
    }

    /// Makes `span` a child of this context (nothing happens when it is empty or malformed).
    pub fn set_parent_of(&self, span: &Span) {
        if self.traceparent.is_empty() {
            return;
        }
        let mut headers = HeaderMap::new();
        for (name, value) in [("traceparent", &self.traceparent), ("tracestate", &self.tracestate)] {
            if let Ok(value) = http::HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        }
        let parent = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(&headers)));
        // Fails only when the span is disabled, and then there is nothing to link.
        let _ = span.set_parent(parent);
    }
}

/// Injects the current span's trace context into every request.
#[derive(Clone, Copy, Debug, Default)]
pub struct InjectTraceContextLayer;

impl<S> Layer<S> for InjectTraceContextLayer {
    type Service = InjectTraceContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InjectTraceContext { inner }
    }
}

/// The service made by [`InjectTraceContextLayer`].
#[derive(Clone, Debug)]
pub struct InjectTraceContext<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for InjectTraceContext<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        inject_current_context(request.headers_mut());
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_paths_split_into_service_and_method() {
        assert_eq!(
            split_rpc_path("/commerce.fulfillment.v1.FulfillmentService/FulfillOrder"),
            ("commerce.fulfillment.v1.FulfillmentService", "FulfillOrder")
        );
        assert_eq!(split_rpc_path("/odd"), ("odd", ""));
    }

    #[test]
    fn health_and_reflection_are_infrastructure() {
        assert!(is_infrastructure("grpc.health.v1.Health"));
        assert!(is_infrastructure("grpc.reflection.v1.ServerReflection"));
        assert!(!is_infrastructure("commerce.identity.v1.CustomerIdentityService"));
    }
}
