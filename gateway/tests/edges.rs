//! What surrounds each call: request ids, CORS, health and readiness, the
//! OpenAPI document, metrics, trace context, and the concurrency limit.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

mod support;

use std::time::Duration;

use serde_json::json;
use support::{ECHO_SERVICE, Reply, closed_port, start, start_with};
use tonic_health::ServingStatus;

#[tokio::test]
async fn a_request_id_sent_is_kept_returned_and_passed_to_the_service() {
    let gateway = start().await;
    let reply = Reply::send(gateway.request("GET", "/v1/items/a").header("x-request-id", "req-42.abc")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("x-request-id"), "req-42.abc");
    assert_eq!(gateway.calls.last().metadata["x-request-id"], "req-42.abc");
}

#[tokio::test]
async fn an_unusable_request_id_is_replaced_by_a_fresh_one() {
    let gateway = start().await;
    for unusable in ["x".repeat(gateway::server::MAX_REQUEST_ID_LEN + 1), "two words".to_string()] {
        let reply = Reply::send(gateway.request("GET", "/v1/items/a").header("x-request-id", unusable.as_str())).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        let id = reply.header("x-request-id");
        uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("{id:?} replaced {unusable:?} with a UUID: {e}"));
        assert_eq!(gateway.calls.last().metadata["x-request-id"], id);
    }
}

#[tokio::test]
async fn a_request_without_an_id_gets_a_uuid_returned_and_passed_to_the_service() {
    let gateway = start().await;
    let reply = gateway.send("GET", "/v1/items/a", None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let id = reply.header("x-request-id");
    uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("{id:?} is not a UUID: {e}"));
    assert_eq!(gateway.calls.last().metadata["x-request-id"], id);

    let again = gateway.send("GET", "/v1/items/a", None).await;
    assert_ne!(again.header("x-request-id"), id, "each request gets its own id");

    // Refusals carry one too.
    for reply in
        [gateway.send("GET", "/nowhere", None).await, Reply::send(gateway.client.get(gateway.url("/v1/items/a"))).await]
    {
        assert!(reply.status == 404 || reply.status == 401, "{reply:?}");
        uuid::Uuid::parse_str(reply.header("x-request-id")).unwrap();
    }
}

fn preflight(gateway: &support::Running, origin: &str) -> reqwest::RequestBuilder {
    gateway
        .client
        .request(reqwest::Method::OPTIONS, gateway.url("/v1/items/a:archive"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization,content-type")
}

#[tokio::test]
async fn cors_answers_allowed_origins_only() {
    let gateway = start_with(|config| {
        config.cors.allowed_origins = vec!["https://app.example".into()];
        config.cors.max_age = Duration::from_secs(600);
    })
    .await;

    let reply = Reply::send(preflight(&gateway, "https://app.example")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("access-control-allow-origin"), "https://app.example");
    assert_eq!(reply.header("access-control-max-age"), "600");
    let methods = reply.header("access-control-allow-methods");
    assert!(methods == "*" || methods.contains("POST"), "{methods}");
    let headers = reply.header("access-control-allow-headers").to_ascii_lowercase();
    for header in ["authorization", "content-type", "x-request-id"] {
        assert!(headers.contains(header), "{header} in {headers}");
    }

    let reply = Reply::send(preflight(&gateway, "https://evil.example")).await;
    assert!(reply.headers.get("access-control-allow-origin").is_none(), "{reply:?}");

    // A real request from the allowed origin may read the request id and the challenge.
    let reply = Reply::send(gateway.request("GET", "/v1/items/a").header("origin", "https://app.example")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("access-control-allow-origin"), "https://app.example");
    let exposed = reply.header("access-control-expose-headers").to_ascii_lowercase();
    for header in ["x-request-id", "retry-after", "www-authenticate"] {
        assert!(exposed.contains(header), "{header} in {exposed}");
    }
    let reply = Reply::send(gateway.request("GET", "/v1/items/a").header("origin", "https://evil.example")).await;
    assert!(reply.headers.get("access-control-allow-origin").is_none(), "{reply:?}");
    assert_eq!(gateway.calls.count(), 2, "preflights never reach the service");
}

#[tokio::test]
async fn without_cors_settings_no_cors_headers_are_sent() {
    let gateway = start().await;
    let preflight = Reply::send(preflight(&gateway, "https://app.example")).await;
    assert_eq!(preflight.status, 405, "a preflight is just an OPTIONS request: {preflight:?}");
    let request = Reply::send(gateway.request("GET", "/v1/items/a").header("origin", "https://app.example")).await;
    assert_eq!(request.status, 200, "{request:?}");
    for reply in [preflight, request] {
        let cors = reply.headers.keys().find(|name| name.as_str().starts_with("access-control-"));
        assert!(cors.is_none(), "{reply:?}");
    }
}

#[tokio::test]
async fn healthz_answers_ok_without_a_token() {
    let gateway = start().await;
    let reply = Reply::send(gateway.client.get(gateway.url("/healthz"))).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.text, "ok");
}

#[tokio::test]
async fn readyz_follows_the_upstream_health() {
    let gateway = start().await;
    let readyz = || Reply::send(gateway.client.get(gateway.url("/readyz")));

    let reply = readyz().await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json, json!({"ready": true, "upstreams": {ECHO_SERVICE: "SERVING"}}));

    gateway.health.set_service_status(ECHO_SERVICE, ServingStatus::NotServing).await;
    let reply = readyz().await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.json, json!({"ready": false, "upstreams": {ECHO_SERVICE: "NOT_SERVING"}}));

    gateway.health.set_service_status(ECHO_SERVICE, ServingStatus::Serving).await;
    assert_eq!(readyz().await.status, 200);
}

#[tokio::test]
async fn readyz_is_503_when_the_upstream_is_unreachable() {
    let down = closed_port().await;
    let gateway = start_with(|config| {
        config.upstreams.insert(ECHO_SERVICE.into(), format!("http://{down}"));
    })
    .await;
    let reply = Reply::send(gateway.client.get(gateway.url("/readyz"))).await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.json["ready"], false);
    let answer = reply.json["upstreams"][ECHO_SERVICE].as_str().unwrap();
    assert_ne!(answer, "SERVING");
}

#[tokio::test]
async fn openapi_json_documents_the_echo_routes() {
    let gateway = start().await;
    let reply = Reply::send(gateway.client.get(gateway.url("/openapi.json"))).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("content-type"), "application/json");
    let paths = reply.json["paths"].as_object().unwrap_or_else(|| panic!("no paths: {}", reply.text));
    for (path, method) in [
        ("/v1/items/{id}", "get"),
        ("/v1/items/{id}", "delete"),
        ("/v1/items/{id}:archive", "post"),
        ("/v1/shelves/{shelf}/items", "post"),
        ("/v1/shelves/{shelf}/items/{item.id}", "put"),
        ("/v1/shelves/{shelf}/items/{item.id}", "patch"),
        ("/v1/files/{path}", "get"),
        ("/v1/items", "get"),
        ("/v1/fail", "post"),
    ] {
        assert!(paths.get(path).and_then(|item| item.get(method)).is_some(), "{method} {path} in {:?}", paths.keys());
    }
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_on_the_admin_port_only() {
    let gateway = start().await;
    assert_eq!(gateway.send("GET", "/v1/items/abc", None).await.status, 200);
    assert_eq!(gateway.send("GET", "/v1/items/def", None).await.status, 200);
    assert_eq!(gateway.send("GET", "/nowhere/at/all", None).await.status, 404);
    let public = Reply::send(gateway.client.get(gateway.url("/metrics"))).await;
    assert_eq!(public.status, 404, "metrics are not on the public port: {public:?}");
    assert!(!public.text.contains("gateway_http_requests"), "{public:?}");
    let reply = Reply::send(gateway.client.get(format!("{}/metrics", gateway.admin))).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let text = &reply.text;
    let line = |needle: &str| text.lines().find(|line| line.contains(needle) && !line.starts_with('#'));
    let ok = line("route=\"/v1/items/{id}\",status=\"200\"").unwrap_or_else(|| panic!("{text}"));
    assert!(ok.starts_with("gateway_http_requests"), "{ok}");
    assert!(ok.ends_with(" 2"), "two requests, one series: {ok}");
    assert!(line("route=\"unmatched\",status=\"404\"").is_some(), "{text}");
    assert!(!text.contains("abc") && !text.contains("nowhere"), "no raw paths in labels: {text}");
    assert!(text.contains("gateway_http_request_duration_seconds"), "{text}");
}

#[tokio::test]
async fn a_trusted_callers_trace_continues_to_the_service_and_an_untrusted_one_does_not() {
    // The process-wide subscriber and W3C propagator every component installs;
    // no exporter, as no endpoint is set.
    let config =
        kit::telemetry::TelemetryConfig { log_filter: "warn,gateway=info,kit=info".into(), ..Default::default() };
    let _telemetry = kit::telemetry::init(&config).unwrap();
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let parent = "b7ad6b7169203331";
    // What reached the service: (trace id, parent span id).
    let sent = |trust: Option<bool>| async move {
        let gateway = start_with(|config| config.trust_client_traces = trust).await;
        let request = gateway.request("GET", "/v1/items/a").header("traceparent", format!("00-{trace_id}-{parent}-01"));
        let reply = Reply::send(request).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        let traceparent =
            gateway.calls.last().metadata.get("traceparent").cloned().expect("a traceparent reached the service");
        let parts: Vec<String> = traceparent.split('-').map(String::from).collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        (parts[1].clone(), parts[2].clone())
    };
    let (trusted_trace, trusted_parent) = sent(Some(true)).await;
    assert_eq!(trusted_trace, trace_id, "a trusted caller's trace is continued");
    assert_ne!(trusted_parent, parent, "a span of the gateway's own is the parent");
    // By default callers are not trusted: the gateway starts a trace of its own (linked to theirs).
    let (own_trace, own_parent) = sent(None).await;
    assert_ne!(own_trace, trace_id, "an untrusted caller does not pick the trace id");
    assert_ne!(own_parent, parent);
}

#[tokio::test]
async fn over_the_concurrency_limit_a_request_is_shed_with_retry_after() {
    let gateway = start_with(|config| {
        config.max_concurrent_requests = 1;
        config.queue_timeout = Duration::from_millis(50);
    })
    .await;
    let held = tokio::spawn(gateway.request("POST", "/v1/slow").body("{}").send());
    gateway.slow.wait_held(1).await;

    let reply = gateway.send("GET", "/v1/items/a", None).await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.header("retry-after"), "1");
    assert_eq!(reply.json["code"], 14);
    assert_eq!(gateway.calls.count(), 1, "the shed request never reached the service");
    // Probes are not behind the limit.
    assert_eq!(Reply::send(gateway.client.get(gateway.url("/healthz"))).await.status, 200);

    gateway.slow.release(1);
    let slow = held.await.unwrap().unwrap();
    assert_eq!(slow.status(), 200);
    let reply = gateway.send("GET", "/v1/items/a", None).await;
    assert_eq!(reply.status, 200, "the slot is free again: {reply:?}");
}

#[tokio::test]
async fn other_methods_on_the_fixed_paths_are_405_with_a_status_body() {
    let gateway = start().await;
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        let reply = Reply::send(gateway.client.post(gateway.url(path))).await;
        assert_eq!(reply.status, 405, "{path}");
        assert_eq!(reply.json["code"], 12, "{path}: {}", reply.text);
        assert_eq!(reply.header("allow"), "GET,HEAD");
    }
}

#[tokio::test]
async fn an_unknown_route_says_where_the_api_is_described() {
    let gateway = start().await;
    let reply = gateway.send("GET", "/v1/nowhere", None).await;
    assert_eq!(reply.status, 404, "{reply:?}");
    assert_eq!(reply.json["code"], 5, "NOT_FOUND: {reply:?}");
    let message = reply.json["message"].as_str().unwrap();
    assert!(message.contains("GET /v1/nowhere"), "names what was asked: {message}");
    assert!(message.contains("/openapi.json"), "and where the routes are: {message}");
    let described = Reply::send(gateway.client.get(gateway.url("/openapi.json"))).await;
    assert_eq!(described.status, 200, "and that is served: {described:?}");
}
