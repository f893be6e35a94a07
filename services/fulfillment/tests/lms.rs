#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking
//! The LMS client against a mock LMS over real HTTP: request bodies and
//! headers, the token's life (one fetch, refresh margin, one repeat after a
//! 401), and how each kind of failure is reported.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use fulfillment::lms::{Enrollment, Entitlement, LmsClient, LmsConfig, LmsError, LmsResponse};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::Instrument;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const ENROLLMENT: &str = "/api/enrollment/v1/enrollment";
const ENTITLEMENT: &str = "/api/entitlements/v1/entitlements/";
const TOKEN: &str = "/oauth2/access_token";

fn config(url: &str) -> LmsConfig {
    LmsConfig {
        url: url.to_string(),
        client_id: "fulfillment-client".into(),
        client_secret: "s3cret&key=1".into(),
        ..LmsConfig::default()
    }
}

fn client(server: &MockServer) -> LmsClient {
    LmsClient::new(&config(&server.uri())).expect("client")
}

fn token_answer(token: &str, expires_in: u64) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .set_body_json(json!({"access_token": token, "expires_in": expires_in, "token_type": "JWT"}))
}

/// A token endpoint answering `token`, expected to be called `times` times.
async fn mount_token(server: &MockServer, token: &str, times: u64) {
    Mock::given(method("POST"))
        .and(path(TOKEN))
        .respond_with(token_answer(token, 3600))
        .expect(times)
        .named("token endpoint")
        .mount(server)
        .await;
}

fn enrollment(mode: &'static str, credit_provider_id: Option<&'static str>) -> Enrollment<'static> {
    Enrollment {
        username: "ada",
        mode,
        course_run_key: "course-v1:edX+DemoX+Demo_Course",
        email_opt_in: true,
        order_number: "EDX-100042",
        order_id: "42",
        line_item_id: "4201",
        date_placed: Utc.with_ymd_and_hms(2026, 3, 4, 5, 6, 7).unwrap(),
        source_system: "ecommerce",
        credit_provider_id,
    }
}

fn entitlement() -> Entitlement<'static> {
    Entitlement {
        username: "ada",
        mode: "verified",
        course_uuid: "6b8a0e2c-2d9b-4d5e-9d43-7d3a2f1c0b11",
        order_number: "EDX-100043",
        email_opt_in: false,
    }
}

async fn requests_to(server: &MockServer, at: &str) -> Vec<Request> {
    server.received_requests().await.expect("recording").into_iter().filter(|r| r.url.path() == at).collect()
}

fn header_of<'a>(request: &'a Request, name: &str) -> &'a str {
    request.headers.get(name).unwrap_or_else(|| panic!("no {name} header")).to_str().unwrap()
}

fn order_attributes() -> Vec<Value> {
    vec![
        json!({"namespace": "order", "name": "order_number", "value": "EDX-100042"}),
        json!({"namespace": "order", "name": "order_id", "value": "42"}),
        json!({"namespace": "order", "name": "line_item_id", "value": "4201"}),
        json!({"namespace": "order", "name": "date_placed", "value": "2026-03-04T05:06:07Z"}),
        json!({"namespace": "order", "name": "source_system", "value": "ecommerce"}),
    ]
}

#[tokio::test]
async fn an_enrollment_sends_the_exact_body_and_headers() {
    let server = MockServer::start().await;
    mount_token(&server, "tok-1", 1).await;
    Mock::given(method("POST")).and(path(ENROLLMENT)).respond_with(ResponseTemplate::new(200)).mount(&server).await;

    let answer = client(&server).enroll(&enrollment("verified", Some("ignored-outside-credit"))).await.unwrap();

    assert_eq!(answer, LmsResponse { value: (), status: 200 });
    let requests = requests_to(&server, ENROLLMENT).await;
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(
        request.body_json::<Value>().unwrap(),
        json!({
            "user": "ada",
            "mode": "verified",
            "is_active": true,
            "course_details": {"course_id": "course-v1:edX+DemoX+Demo_Course"},
            "email_opt_in": true,
            "enrollment_attributes": order_attributes(),
        })
    );
    assert_eq!(header_of(request, "authorization"), "JWT tok-1");
    assert_eq!(header_of(request, "content-type"), "application/json");
    assert_eq!(header_of(request, "accept"), "application/json");
    assert!(header_of(request, "user-agent").starts_with("commerce-mesh-fulfillment/"));
}

#[tokio::test]
async fn what_the_order_does_not_have_is_left_out_not_sent_empty() {
    let server = MockServer::start().await;
    mount_token(&server, "tok-1", 1).await;
    Mock::given(method("POST")).and(path(ENROLLMENT)).respond_with(ResponseTemplate::new(200)).mount(&server).await;

    let bare = Enrollment { order_id: "", source_system: "", ..enrollment("verified", None) };
    client(&server).enroll(&bare).await.unwrap();

    let body: Value = requests_to(&server, ENROLLMENT).await[0].body_json().unwrap();
    let expected: Vec<Value> =
        order_attributes().into_iter().filter(|a| a["name"] != "order_id" && a["name"] != "source_system").collect();
    assert_eq!(expected.len(), 3, "order_number, line_item_id, date_placed stay");
    assert_eq!(body["enrollment_attributes"], Value::Array(expected));
}

#[tokio::test]
async fn a_credit_enrollment_adds_the_provider_attribute_last() {
    let server = MockServer::start().await;
    mount_token(&server, "tok-1", 1).await;
    Mock::given(method("POST")).and(path(ENROLLMENT)).respond_with(ResponseTemplate::new(200)).mount(&server).await;

    client(&server).enroll(&enrollment("credit", Some("asu"))).await.unwrap();

    let body: Value = requests_to(&server, ENROLLMENT).await[0].body_json().unwrap();
    let mut expected = order_attributes();
    expected.push(json!({"namespace": "credit", "name": "provider_id", "value": "asu"}));
    assert_eq!(body["mode"], "credit");
    assert_eq!(body["enrollment_attributes"], Value::Array(expected));
}

#[tokio::test]
async fn requests_carry_the_trace_context_of_the_span_they_run_in() {
    // A global subscriber with the OpenTelemetry layer and the W3C propagator:
    // the only test in this binary that installs one (nextest runs each test in its own process).
    let _telemetry = kit::telemetry::init(&kit::telemetry::TelemetryConfig::default()).expect("telemetry");
    let server = MockServer::start().await;
    mount_token(&server, "tok-1", 1).await;
    Mock::given(method("POST")).and(path(ENROLLMENT)).respond_with(ResponseTemplate::new(200)).mount(&server).await;

    client(&server).enroll(&enrollment("verified", None)).instrument(tracing::info_span!("fulfil")).await.unwrap();

    let trace_id = |request: &Request| {
        let traceparent = header_of(request, "traceparent").to_owned();
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        assert_eq!((parts[0], parts[1].len(), parts[2].len()), ("00", 32, 16), "{traceparent}");
        parts[1].to_owned()
    };
    let token_trace = trace_id(&requests_to(&server, TOKEN).await[0]);
    let enrollment_trace = trace_id(&requests_to(&server, ENROLLMENT).await[0]);
    assert_eq!(token_trace, enrollment_trace, "the token fetch and the enrollment are one trace");
    assert_ne!(enrollment_trace, "0".repeat(32));
}

#[tokio::test]
async fn an_entitlement_sends_the_exact_body_and_answers_the_uuid() {
    let server = MockServer::start().await;
    mount_token(&server, "tok-1", 1).await;
    Mock::given(method("POST"))
        .and(path(ENTITLEMENT))
        .and(header("authorization", "JWT tok-1"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"uuid": "e-uuid-1", "mode": "verified"})))
        .expect(1)
        .mount(&server)
        .await;

    let answer = client(&server).grant_entitlement(&entitlement()).await.unwrap();

    assert_eq!(answer, LmsResponse { value: "e-uuid-1".to_string(), status: 201 });
    let request = &requests_to(&server, ENTITLEMENT).await[0];
    assert_eq!(
        request.body_json::<Value>().unwrap(),
        json!({
            "user": "ada",
            "mode": "verified",
            "course_uuid": "6b8a0e2c-2d9b-4d5e-9d43-7d3a2f1c0b11",
            "order_number": "EDX-100043",
            "email_opt_in": false,
        })
    );
    assert_eq!(header_of(request, "content-type"), "application/json");
}

#[tokio::test]
async fn an_entitlement_answer_without_uuid_is_an_invalid_response() {
    let server = MockServer::start().await;
    mount_token(&server, "tok-1", 1).await;
    Mock::given(method("POST"))
        .and(path(ENTITLEMENT))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"mode": "verified"})))
        .mount(&server)
        .await;

    let error = client(&server).grant_entitlement(&entitlement()).await.unwrap_err();

    assert!(matches!(error, LmsError::InvalidResponse { status: 201, .. }), "{error:?}");
    assert_eq!(error.status(), Some(201));
}

#[tokio::test]
async fn the_token_request_is_a_client_credentials_form_asking_for_a_jwt() {
    let server = MockServer::start().await;
    mount_token(&server, "tok-1", 1).await;
    Mock::given(method("POST")).and(path(ENROLLMENT)).respond_with(ResponseTemplate::new(200)).mount(&server).await;

    client(&server).enroll(&enrollment("verified", None)).await.unwrap();

    let request = &requests_to(&server, TOKEN).await[0];
    assert_eq!(header_of(request, "content-type"), "application/x-www-form-urlencoded");
    // Decoded by a real form parser: proves the encoding, not just the order of bytes.
    let body = String::from_utf8(request.body.clone()).unwrap();
    let form = reqwest::Url::parse(&format!("http://form.invalid/?{body}")).unwrap();
    let fields: Vec<(String, String)> = form.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let expected = [
        ("grant_type", "client_credentials"),
        ("client_id", "fulfillment-client"),
        ("client_secret", "s3cret&key=1"),
        ("token_type", "jwt"),
    ];
    assert_eq!(fields, expected.map(|(k, v)| (k.to_string(), v.to_string())));
}

#[tokio::test]
async fn one_token_serves_many_calls_even_concurrent_ones() {
    let server = MockServer::start().await;
    mount_token(&server, "tok-1", 1).await;
    Mock::given(method("POST"))
        .and(path(ENROLLMENT))
        .and(header("authorization", "JWT tok-1"))
        .respond_with(ResponseTemplate::new(200))
        .expect(8)
        .mount(&server)
        .await;
    let client = client(&server);
    let e = enrollment("verified", None);

    // Concurrent first calls: one fetch, the others wait for it.
    let first = futures::future::join_all((0..5).map(|_| client.enroll(&e))).await;
    for result in first {
        result.unwrap();
    }
    for _ in 0..3 {
        client.clone().enroll(&e).await.unwrap();
    }
    server.verify().await;
}

#[tokio::test]
async fn a_401_refreshes_the_token_once_and_repeats_the_call() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN))
        .respond_with(token_answer("stale", 3600))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(TOKEN))
        .respond_with(token_answer("fresh", 3600))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(ENROLLMENT))
        .and(header("authorization", "JWT stale"))
        .respond_with(ResponseTemplate::new(401).set_body_string("token expired"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(ENROLLMENT))
        .and(header("authorization", "JWT fresh"))
        .respond_with(ResponseTemplate::new(200))
        .expect(2)
        .mount(&server)
        .await;
    let client = client(&server);

    let answer = client.enroll(&enrollment("verified", None)).await.unwrap();
    assert_eq!(answer.status, 200);
    // The fresh token is the cached one now.
    client.enroll(&enrollment("verified", None)).await.unwrap();
    server.verify().await;
}

#[tokio::test]
async fn a_second_401_is_returned_as_a_401_status() {
    let server = MockServer::start().await;
    mount_token(&server, "tok", 2).await;
    Mock::given(method("POST"))
        .and(path(ENROLLMENT))
        .respond_with(ResponseTemplate::new(401).set_body_string("who are you"))
        .expect(2)
        .mount(&server)
        .await;

    let error = client(&server).enroll(&enrollment("verified", None)).await.unwrap_err();

    assert!(matches!(&error, LmsError::Status { status: 401, body, .. } if body == "who are you"), "{error:?}");
    server.verify().await;
}

#[tokio::test]
async fn a_400_is_a_status_error_with_its_body() {
    let server = MockServer::start().await;
    mount_token(&server, "tok", 1).await;
    let answer = r#"{"message": "Course run is not enrollable"}"#;
    Mock::given(method("POST"))
        .and(path(ENROLLMENT))
        .respond_with(ResponseTemplate::new(400).set_body_string(answer))
        .expect(1)
        .mount(&server)
        .await;

    let error = client(&server).enroll(&enrollment("verified", None)).await.unwrap_err();

    assert!(matches!(&error, LmsError::Status { status: 400, body, retry_after: None } if body == answer), "{error:?}");
    assert_eq!(error.status(), Some(400));
    assert_eq!(error.retry_after(), None);
}

#[tokio::test]
async fn a_status_error_keeps_the_first_1000_characters_of_the_body() {
    let server = MockServer::start().await;
    mount_token(&server, "tok", 1).await;
    Mock::given(method("POST"))
        .and(path(ENROLLMENT))
        .respond_with(ResponseTemplate::new(400).set_body_string("é".repeat(1500)))
        .mount(&server)
        .await;

    let error = client(&server).enroll(&enrollment("verified", None)).await.unwrap_err();

    let LmsError::Status { body, .. } = error else { panic!("{error:?}") };
    assert_eq!(body, "é".repeat(1000));
}

#[tokio::test]
async fn a_503_carries_its_retry_after() {
    let server = MockServer::start().await;
    mount_token(&server, "tok", 1).await;
    Mock::given(method("POST"))
        .and(path(ENROLLMENT))
        .respond_with(ResponseTemplate::new(503).insert_header("Retry-After", "7"))
        .mount(&server)
        .await;

    let error = client(&server).enroll(&enrollment("verified", None)).await.unwrap_err();

    assert!(matches!(error, LmsError::Status { status: 503, .. }), "{error:?}");
    assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn a_500_is_a_status_error() {
    let server = MockServer::start().await;
    mount_token(&server, "tok", 1).await;
    Mock::given(method("POST")).and(path(ENTITLEMENT)).respond_with(ResponseTemplate::new(500)).mount(&server).await;

    let error = client(&server).grant_entitlement(&entitlement()).await.unwrap_err();

    assert!(
        matches!(&error, LmsError::Status { status: 500, body, retry_after: None } if body.is_empty()),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_answer_slower_than_the_request_timeout_is_a_timeout() {
    let server = MockServer::start().await;
    mount_token(&server, "tok", 1).await;
    Mock::given(method("POST"))
        .and(path(ENROLLMENT))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(60)))
        .mount(&server)
        .await;
    let client =
        LmsClient::new(&LmsConfig { request_timeout: Duration::from_secs(1), ..config(&server.uri()) }).unwrap();

    let error = client.enroll(&enrollment("verified", None)).await.unwrap_err();

    assert!(matches!(error, LmsError::Timeout(_)), "{error:?}");
    assert_eq!(error.status(), None);
}

/// An LMS that answers one token request and closes its port before answering
/// it, so the call that follows finds nothing listening; answers its URL.
async fn lms_that_goes_away_after_the_token() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        drop(listener);
        // Read the whole request: closing with unread bytes would reset the connection.
        let mut received = Vec::new();
        let mut chunk = [0_u8; 4096];
        loop {
            let read = socket.read(&mut chunk).await.unwrap();
            assert_ne!(read, 0, "the client hung up before sending its request");
            received.extend_from_slice(&chunk[..read]);
            let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = String::from_utf8_lossy(&received[..end]).to_lowercase();
            let length: usize =
                head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
            if received.len() >= end + 4 + length {
                break;
            }
        }
        let body = r#"{"access_token": "tok", "expires_in": 3600, "token_type": "JWT"}"#;
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(answer.as_bytes()).await.unwrap();
        socket.shutdown().await.unwrap();
    });
    url
}

#[tokio::test]
async fn an_lms_on_a_closed_port_is_a_connection_error() {
    let url = lms_that_goes_away_after_the_token().await;
    let client = LmsClient::new(&config(&url)).unwrap();

    let error = client.enroll(&enrollment("verified", None)).await.unwrap_err();

    assert!(matches!(error, LmsError::Connection(_)), "{error:?}");
}

#[tokio::test]
async fn an_unreachable_token_endpoint_is_an_authentication_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let client = LmsClient::new(&config(&format!("http://127.0.0.1:{port}"))).unwrap();

    let error = client.enroll(&enrollment("verified", None)).await.unwrap_err();

    assert!(matches!(error, LmsError::Authentication(_)), "{error:?}");
}

#[tokio::test]
async fn a_token_endpoint_500_is_an_authentication_error_and_no_call_is_made() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN))
        .respond_with(ResponseTemplate::new(500))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(ENROLLMENT))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&server)
        .await;

    let error = client(&server).enroll(&enrollment("verified", None)).await.unwrap_err();

    assert!(matches!(&error, LmsError::Authentication(message) if message.contains("500")), "{error:?}");
    server.verify().await;
}

#[tokio::test]
async fn an_unparsable_token_answer_is_an_authentication_error() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"token_type": "JWT"})))
        .mount(&server)
        .await;

    let error = client(&server).grant_entitlement(&entitlement()).await.unwrap_err();

    assert!(matches!(error, LmsError::Authentication(_)), "{error:?}");
}

#[tokio::test]
async fn a_token_expiring_within_the_refresh_margin_is_fetched_again() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).and(path(TOKEN)).respond_with(token_answer("short", 30)).expect(2).mount(&server).await;
    Mock::given(method("POST"))
        .and(path(ENROLLMENT))
        .respond_with(ResponseTemplate::new(200))
        .expect(2)
        .mount(&server)
        .await;
    let client =
        LmsClient::new(&LmsConfig { token_refresh_margin: Duration::from_secs(60), ..config(&server.uri()) }).unwrap();

    client.enroll(&enrollment("verified", None)).await.unwrap();
    client.enroll(&enrollment("verified", None)).await.unwrap();

    server.verify().await;
}

#[test]
fn debug_output_never_shows_the_secret() {
    let config = config("http://lms.example.com");
    let shown = format!("{config:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("<redacted>") && shown.contains("fulfillment-client"), "{shown}");
    let client = LmsClient::new(&config).unwrap();
    assert!(!format!("{client:?}").contains("s3cret"));
}

#[test]
fn an_unusable_url_is_a_config_error() {
    for url in ["not a url", "ftp://lms.example.com", "http://user:pass@lms.example.com"] {
        let error = LmsClient::new(&config(url)).unwrap_err();
        assert!(matches!(error, LmsError::Config(_)), "{url}: {error:?}");
    }
    let error = LmsClient::new(&LmsConfig { request_timeout: Duration::ZERO, ..config("http://lms") }).unwrap_err();
    assert!(matches!(error, LmsError::Config(_)), "{error:?}");
}

#[test]
fn config_reads_humane_durations_and_defaults_the_rest() {
    let config: LmsConfig =
        serde_json::from_value(json!({"url": "https://lms.example.com", "request_timeout": "30s"})).unwrap();
    assert_eq!(config.url, "https://lms.example.com");
    assert_eq!(config.request_timeout, Duration::from_secs(30));
    assert_eq!(config.connect_timeout, Duration::from_secs(2));
    assert_eq!(config.token_refresh_margin, Duration::from_secs(60));
    assert_eq!(LmsConfig::default().url, "http://127.0.0.1:18000");
}
