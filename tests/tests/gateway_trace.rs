//! Under `up`, a REST request continues the caller's trace (a trusted caller): the gateway's server span is a
//! child of the incoming `traceparent`, and its call to the service carries the
//! trace on, received by an in-process OTLP collector; each component's spans
//! carry its own service name though they share one process.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use commerce_mesh::Component;
use kit::shutdown::Shutdown;
use kit::telemetry::TelemetryConfig;
use mesh_tests::collector::{CollectedSpan, Collector, one};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// Runs `up` (with `trust_client_traces` as given) exporting to an
/// in-process collector, as `up` does: one process, each component's spans
/// under its own service name. Sends `GET /v1/customers/c-404` with
/// `traceparent` and answers the spans once `enough` holds.
async fn spans_of_one_request(
    trust_client_traces: Option<bool>,
    traceparent: &str,
    enough: impl Fn(&[CollectedSpan]) -> bool,
) -> Vec<CollectedSpan> {
    let mut collector = Collector::start().await.expect("collector");
    let telemetry = kit::telemetry::init_with_components(
        &TelemetryConfig {
            otlp_endpoint: Some(collector.endpoint().to_string()),
            service_name: "gateway-trace-test".into(),
            ..Default::default()
        },
        Component::span_components(),
    )
    .expect("telemetry");

    let data = tempfile::tempdir().expect("tempdir");
    let mut config = commerce_mesh::MeshConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
    config.use_ephemeral_ports();
    config.gateway.http.trust_client_traces = trust_client_traces;
    let mesh = commerce_mesh::start(config.clone(), Shutdown::new()).await.expect("mesh starts");
    mesh_tests::health::wait_serving(&mesh.grpc_url(Component::CustomerIdentity), Duration::from_secs(30))
        .await
        .expect("ready");
    let token =
        commerce_mesh::dev_tokens::mint(&config, "tracer", vec!["identity:read".into()], Duration::from_secs(60))
            .expect("token");
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{}/v1/customers/c-404", mesh.url(Component::Gateway)))
        .bearer_auth(token)
        .header("traceparent", traceparent)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    let flushing = tokio::task::spawn_blocking(move || {
        telemetry.force_flush();
        telemetry
    });
    let telemetry = flushing.await.expect("flush");
    let spans = collector.wait_until(Duration::from_secs(30), enough).await;
    mesh.stop().await.expect("mesh stops cleanly");
    telemetry.shutdown().await;
    spans
}

/// Under `up` (unset: trusted), the caller's trace is continued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_request_continues_the_callers_trace_into_the_service() {
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let spans =
        spans_of_one_request(None, &traceparent, |spans| spans.iter().filter(|s| s.trace_id == TRACE_ID).count() >= 3)
            .await;

    let gateway = one(&spans, "GET /v1/customers/{customer_id}", 2);
    let to_service = one(&spans, "commerce.identity.v1.CustomerIdentityService/GetCustomer", 3);
    let in_service = one(&spans, "commerce.identity.v1.CustomerIdentityService/GetCustomer", 2);
    for span in [gateway, to_service, in_service] {
        assert_eq!(span.trace_id, TRACE_ID, "{} continues the caller's trace", span.name);
    }
    assert_eq!(gateway.parent_span_id, CALLER_SPAN, "the gateway's span is the caller's child");
    assert_eq!(to_service.parent_span_id, gateway.span_id);
    assert_eq!(in_service.parent_span_id, to_service.span_id);
    assert_eq!(gateway.service_name, "gateway");
    assert_eq!(to_service.service_name, "gateway", "the gateway's call is the gateway's span");
    assert_eq!(in_service.service_name, "customer-identity");
    // OpenTelemetry HTTP server conventions.
    assert_eq!(gateway.attribute("http.request.method"), Some("GET"));
    assert_eq!(gateway.attribute("http.route"), Some("/v1/customers/{customer_id}"));
    assert_eq!(gateway.attribute("http.response.status_code"), Some("404"));
    assert_eq!(gateway.attribute("url.path"), Some("/v1/customers/c-404"));
}

/// Behind `serve gateway` (callers untrusted), a request is the root of a
/// trace of the gateway's own: the caller's `traceparent` is only linked, so
/// it chooses neither the trace id nor, with its flags, whether the mesh samples.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_callers_trace_is_linked_not_continued() {
    // Not sampled, by the caller's say: were it obeyed, nothing would be recorded.
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-00");
    let spans = spans_of_one_request(Some(false), &traceparent, |spans| {
        spans.iter().any(|s| s.name == "commerce.identity.v1.CustomerIdentityService/GetCustomer" && s.kind == 2)
    })
    .await;
    let gateway = one(&spans, "GET /v1/customers/{customer_id}", 2);
    let in_service = one(&spans, "commerce.identity.v1.CustomerIdentityService/GetCustomer", 2);
    assert_ne!(gateway.trace_id, TRACE_ID, "the gateway's own trace id");
    assert!(gateway.parent_span_id.is_empty(), "a root span: {gateway:?}");
    assert_eq!(gateway.links, [(TRACE_ID.to_string(), CALLER_SPAN.to_string())], "linked to the caller's span");
    assert_eq!(in_service.trace_id, gateway.trace_id, "the mesh's spans are in the gateway's trace");
    assert!(spans.iter().all(|span| span.trace_id != TRACE_ID), "nothing joined the caller's trace");
}
