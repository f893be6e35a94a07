//! The access log, read as operators read it: the JSON lines the mesh's log
//! layer writes (`kit::telemetry::JsonLogLayer`), with OpenTelemetry spans so
//! requests have trace ids. One line per request on `gateway::access`, with
//! the route template, the verified subject, the request and trace ids, and
//! never a token, a header's value, a raw path or a body.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use serde_json::Value;
use support::{PATIENCE, Reply, start, token_for};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

/// Everything the process logged, as JSON lines.
#[derive(Clone, Default)]
struct Logged(Arc<Mutex<Vec<u8>>>);

impl Write for Logged {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Logged {
    type Writer = Logged;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Logged {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// The access line of the request with `request_id`, waited for at most
    /// [`PATIENCE`] (it is written before the answer leaves, so at once).
    async fn access_line(&self, request_id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let found = self.text().lines().map(|line| serde_json::from_str::<Value>(line).unwrap()).find(|line| {
                line["target"] == gateway::access_log::TARGET && line["fields"]["request_id"] == request_id
            });
            if let Some(line) = found {
                return line;
            }
            assert!(tokio::time::Instant::now() < deadline, "no access line for {request_id}:\n{}", self.text());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The process's subscriber, installed once: JSON lines into memory, spans with trace ids.
fn logged() -> Logged {
    static LOGGED: OnceLock<Logged> = OnceLock::new();
    LOGGED
        .get_or_init(|| {
            let logged = Logged::default();
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
            // As every component: the trace context travels to the service in `traceparent`.
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            let subscriber = tracing_subscriber::registry()
                .with(tracing_subscriber::EnvFilter::new("info"))
                .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
                .with(kit::telemetry::JsonLogLayer::new(logged.clone()));
            tracing::subscriber::set_global_default(subscriber).unwrap();
            logged
        })
        .clone()
}

#[tokio::test]
async fn each_request_gets_one_access_line_with_its_route_template_subject_and_ids() {
    let logged = logged();
    let gateway = start().await;
    let token = token_for("support-tool", &["items:read", "items:write", "items:archive"]);
    let request = gateway
        .client
        .post(gateway.url("/v1/items/EDX-SECRET-ID:archive"))
        .bearer_auth(&token)
        .header("x-request-id", "access-1")
        .header("x-api-note", "HEADER-SECRET")
        .header("content-type", "application/json")
        .body(r#"{"title": "BODY-SECRET", "tags": ["learner@example.com"]}"#);
    let reply = Reply::send(request).await;
    assert_eq!(reply.status, 200, "{reply:?}");

    let line = logged.access_line("access-1").await;
    assert_eq!(line["level"], "INFO");
    let fields = &line["fields"];
    assert_eq!(fields["method"], "POST");
    assert_eq!(fields["route"], "/v1/items/{id}:archive", "the template, not the path");
    assert_eq!(fields["status"], 200);
    assert_eq!(fields["subject"], "support-tool", "the verified subject");
    assert!(fields["latency_ms"].as_f64().unwrap() > 0.0, "{line}");
    let trace_id = fields["trace_id"].as_str().unwrap();
    assert_eq!(trace_id.len(), 32, "{line}");
    // The trace the service was called in.
    let traceparent = gateway.calls.last().metadata["traceparent"].clone();
    assert_eq!(traceparent.split('-').nth(1), Some(trace_id), "{traceparent}");
    let lines_of_request = logged.text().lines().filter(|l| l.contains("\"access-1\"")).count();
    assert_eq!(lines_of_request, 1, "one line per request:\n{}", logged.text());

    let query = gateway
        .client
        .get(gateway.url("/v1/items/EDX-SECRET-ID?title=QUERY-SECRET"))
        .bearer_auth(&token)
        .header("x-request-id", "access-2");
    assert_eq!(Reply::send(query).await.status, 200);
    let line = logged.access_line("access-2").await;
    assert_eq!(line["fields"]["route"], "/v1/items/{id}", "{line}");
    assert_ne!(line["fields"]["trace_id"], fields["trace_id"], "each request its own trace");

    let text = logged.text();
    for secret in [token.as_str(), "EDX-SECRET-ID", "QUERY-SECRET", "HEADER-SECRET", "BODY-SECRET", "learner@example"] {
        assert!(!text.contains(secret), "{secret} was logged:\n{text}");
    }
}

#[tokio::test]
async fn refused_and_unknown_requests_are_logged_without_a_subject_or_a_raw_path() {
    let logged = logged();
    let gateway = start().await;

    let unknown = gateway.request("GET", "/v2/learners/jane-doe").header("x-request-id", "access-404");
    assert_eq!(Reply::send(unknown).await.status, 404);
    let line = logged.access_line("access-404").await;
    assert_eq!(line["fields"]["route"], gateway::access_log::UNMATCHED);
    assert_eq!(line["fields"]["status"], 404);
    assert_eq!(line["fields"]["subject"], "-", "an unknown route checks no token, so names no caller");

    let forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.FORGED-SIGNATURE";
    let bad_token =
        gateway.client.get(gateway.url("/v1/items/a")).bearer_auth(forged).header("x-request-id", "access-401");
    assert_eq!(Reply::send(bad_token).await.status, 401);
    let line = logged.access_line("access-401").await;
    assert_eq!(line["fields"]["route"], "/v1/items/{id}");
    assert_eq!(line["fields"]["status"], 401);
    assert_eq!(line["fields"]["subject"], "-", "a subject the token only claims is not written");

    let forbidden = gateway
        .client
        .delete(gateway.url("/v1/items/a"))
        .bearer_auth(token_for("reader", &["items:read"]))
        .header("x-request-id", "access-403");
    assert_eq!(Reply::send(forbidden).await.status, 403);
    let line = logged.access_line("access-403").await;
    assert_eq!(line["fields"]["subject"], "reader", "verified, though lacking the scope");

    let text = logged.text();
    for secret in [forged, "FORGED-SIGNATURE", "jane-doe"] {
        assert!(!text.contains(secret), "{secret} was logged:\n{text}");
    }
}

#[tokio::test]
async fn fixed_paths_are_logged_by_their_path_and_probes_only_at_debug() {
    let logged = logged();
    let gateway = start().await;
    let openapi = gateway.client.get(gateway.url("/openapi.json")).header("x-request-id", "access-openapi");
    assert_eq!(Reply::send(openapi).await.status, 200);
    let line = logged.access_line("access-openapi").await;
    assert_eq!(line["fields"]["route"], "/openapi.json");
    assert_eq!(line["fields"]["subject"], "-");

    let probe = gateway.client.get(gateway.url("/healthz")).header("x-request-id", "access-probe");
    assert_eq!(Reply::send(probe).await.status, 200);
    // A line is written before its answer leaves: had the probe's been written, it would be there now.
    assert!(!logged.text().contains("\"access-probe\""), "probes are DEBUG, below the info filter");
}
