//! An in-process OTLP/gRPC trace collector (opentelemetry-proto's
//! `TraceService`), recording every span it is sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

/// One received span, flattened for assertions.
#[derive(Clone, Debug)]
pub struct CollectedSpan {
    /// Hex trace id.
    pub trace_id: String,
    /// Hex span id.
    pub span_id: String,
    /// Hex parent span id; empty for a root span.
    pub parent_span_id: String,
    /// The span's name.
    pub name: String,
    /// OTLP span kind (1 internal, 2 server, 3 client).
    pub kind: i32,
    /// String and integer attributes, as text.
    pub attributes: HashMap<String, String>,
    /// The resource's `service.name`.
    pub service_name: String,
    /// The span's links, as (hex trace id, hex span id).
    pub links: Vec<(String, String)>,
}

impl CollectedSpan {
    /// An attribute's value as text, if present.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// The one span in `spans` with `name` and `kind` (panics naming what was
/// found otherwise: for tests).
#[allow(clippy::panic)]
pub fn one<'a>(spans: &'a [CollectedSpan], name: &str, kind: i32) -> &'a CollectedSpan {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name && s.kind == kind).collect();
    match found.as_slice() {
        [span] => span,
        _ => panic!("expected one {name} span of kind {kind}, found {} in {spans:#?}", found.len()),
    }
}

#[derive(Clone)]
struct Recorder {
    spans: Arc<Mutex<Vec<CollectedSpan>>>,
    count: watch::Sender<usize>,
}

#[tonic::async_trait]
impl TraceService for Recorder {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service_name = resource_spans
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref().and_then(|v| v.value.as_ref()).map(text))
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                let attributes = span
                    .attributes
                    .iter()
                    .filter_map(|kv| Some((kv.key.clone(), text(kv.value.as_ref()?.value.as_ref()?))))
                    .collect();
                received.push(CollectedSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    kind: span.kind,
                    attributes,
                    service_name: service_name.clone(),
                    links: span.links.iter().map(|link| (hex(&link.trace_id), hex(&link.span_id))).collect(),
                });
            }
        }
        let total = {
            let mut spans = self.spans.lock().map_err(|_| tonic::Status::internal("poisoned"))?;
            spans.extend(received);
            spans.len()
        };
        self.count.send_replace(total);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A running collector.
pub struct Collector {
    endpoint: String,
    spans: Arc<Mutex<Vec<CollectedSpan>>>,
    count: watch::Receiver<usize>,
}

impl Collector {
    /// Starts a collector on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let spans = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, count) = watch::channel(0);
        let recorder = Recorder { spans: spans.clone(), count: count_tx };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(recorder))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Ok(Self { endpoint, spans, count })
    }

    /// The OTLP/gRPC endpoint, for `telemetry.otlp_endpoint`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<CollectedSpan> {
        self.spans.lock().map(|spans| spans.clone()).unwrap_or_default()
    }

    /// Waits until `done` holds for the spans received, or `guard` passes
    /// (then answers what arrived, for the test to report).
    pub async fn wait_until(&mut self, guard: Duration, done: impl Fn(&[CollectedSpan]) -> bool) -> Vec<CollectedSpan> {
        let spans = self.spans.clone();
        let check = |spans: &Arc<Mutex<Vec<CollectedSpan>>>| spans.lock().map(|s| done(&s)).unwrap_or(false);
        let _ = tokio::time::timeout(guard, async {
            while !check(&spans) {
                if self.count.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        self.spans()
    }
}
