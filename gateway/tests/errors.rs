//! Every error a caller can get, as HTTP: each gRPC code from the service
//! mapped to its status with a `google.rpc.Status` body, and each refusal the
//! gateway makes itself, naming what was wrong.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

mod support;

use std::time::Duration;

use serde_json::json;
use support::{ALL_SCOPES, ECHO_SERVICE, Reply, closed_port, raw_http, start, start_with, token};

/// Every non-OK gRPC code, the HTTP status it maps to, and its name.
const TABLE: [(i32, u16, &str); 16] = [
    (1, 499, "CANCELLED"),
    (2, 500, "UNKNOWN"),
    (3, 400, "INVALID_ARGUMENT"),
    (4, 504, "DEADLINE_EXCEEDED"),
    (5, 404, "NOT_FOUND"),
    (6, 409, "ALREADY_EXISTS"),
    (7, 403, "PERMISSION_DENIED"),
    (8, 429, "RESOURCE_EXHAUSTED"),
    (9, 400, "FAILED_PRECONDITION"),
    (10, 409, "ABORTED"),
    (11, 400, "OUT_OF_RANGE"),
    (12, 501, "UNIMPLEMENTED"),
    (13, 500, "INTERNAL"),
    (14, 503, "UNAVAILABLE"),
    (15, 500, "DATA_LOSS"),
    (16, 401, "UNAUTHENTICATED"),
];

#[tokio::test]
async fn every_grpc_code_from_the_service_maps_to_its_http_status_with_a_status_body() {
    let gateway = start().await;
    // CANCELLED is no answer of the service's: the call was cut (below).
    for (code, http, name) in TABLE.into_iter().filter(|(code, _, _)| *code != 1) {
        let message = format!("the service says {name}");
        let reply = gateway.send("POST", "/v1/fail", Some(json!({"code": code, "message": message}))).await;
        assert_eq!(reply.status, http, "{name}: {reply:?}");
        assert_eq!(reply.header("content-type"), "application/json", "{name}");
        assert_eq!(reply.json, json!({"code": code, "message": message, "details": []}), "{name}");
        assert!(reply.headers.get("retry-after").is_none(), "{name}: no RetryInfo, no Retry-After");
    }
    // A call the upstream cancelled before the deadline (a reset stream, a
    // server going away) is the upstream unavailable: 503, retry, not 499.
    let reply = gateway.send("POST", "/v1/fail", Some(json!({"code": 1, "message": "cancelled"}))).await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.json["code"], 14, "{reply:?}");
    assert!(reply.headers.get("retry-after").is_some(), "{reply:?}");
    assert!(!reply.json["message"].as_str().unwrap_or_default().contains("cancelled"), "the upstream's text is logged");
    assert_eq!(gateway.calls.count(), TABLE.len());
}

#[tokio::test]
async fn bad_request_details_arrive_with_their_field_violations() {
    let gateway = start().await;
    let reply =
        gateway.send("POST", "/v1/fail", Some(json!({"code": 3, "message": "invalid", "field": "item.title"}))).await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(
        reply.json,
        json!({
            "code": 3,
            "message": "invalid",
            "details": [{
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "field_violations": [{"field": "item.title", "description": "is wrong", "reason": ""}],
            }],
        })
    );
}

#[tokio::test]
async fn retry_info_becomes_a_retry_after_header() {
    let gateway = start().await;
    let reply = gateway
        .send("POST", "/v1/fail", Some(json!({"code": 8, "message": "slow down", "retry_after_seconds": 7})))
        .await;
    assert_eq!(reply.status, 429, "{reply:?}");
    assert_eq!(reply.header("retry-after"), "7");
    assert_eq!(reply.json["details"][0]["@type"], "type.googleapis.com/google.rpc.RetryInfo");
    assert_eq!(reply.json["details"][0]["retry_delay"], "7s");

    // Also on other codes: Unavailable with a hint.
    let reply = gateway.send("POST", "/v1/fail", Some(json!({"code": 14, "retry_after_seconds": 2}))).await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.header("retry-after"), "2");
}

#[tokio::test]
async fn an_unknown_path_is_404_and_nothing_is_called() {
    let gateway = start().await;
    for path in ["/v2/items/a", "/v1/items/a/b", "/v1/items/", "/", "/v1/item/a"] {
        let reply = gateway.send("GET", path, None).await;
        assert_eq!(reply.status, 404, "{path}: {reply:?}");
        assert_eq!(reply.json["code"], 5, "{path}");
        assert!(reply.json["message"].as_str().unwrap().contains("no route"), "{path}: {reply:?}");
    }
    assert_eq!(gateway.calls.count(), 0);
}

#[tokio::test]
async fn a_method_the_path_does_not_serve_is_405_with_allow() {
    let gateway = start().await;
    let reply = gateway.send("PUT", "/v1/items/a", Some(json!({}))).await;
    assert_eq!(reply.status, 405, "{reply:?}");
    assert_eq!(reply.header("allow"), "DELETE, GET");
    assert_eq!(reply.json["code"], 12);

    let reply = gateway.send("DELETE", "/v1/items", None).await;
    assert_eq!(reply.status, 405, "{reply:?}");
    assert_eq!(reply.header("allow"), "GET, SEARCH");
    assert_eq!(gateway.calls.count(), 0);
}

/// Requests the gateway refuses as invalid, and the field each refusal names.
#[tokio::test]
async fn invalid_input_is_400_naming_the_field() {
    let gateway = start().await;
    let raw = |method: &str, path: &str, body: &str| gateway.request(method, path).body(body.to_string());
    let cases = [
        ("malformed JSON", raw("POST", "/v1/items/a:archive", "{\"title\": "), "title"),
        ("not JSON", raw("POST", "/v1/items/a:archive", "title=x"), "body"),
        ("malformed JSON in a body field", raw("POST", "/v1/shelves/s/items", "[1, 2"), "item"),
        ("trailing garbage", raw("POST", "/v1/items/a:archive", "{} {}"), "body"),
        ("wrong type", raw("POST", "/v1/shelves/s/items", "{\"count\": true}"), "item.count"),
        ("wrong type, nested", raw("PATCH", "/v1/shelves/s/items/i", "{\"item\": {\"tags\": [1]}}"), "item.tags[0]"),
        ("unknown field", raw("POST", "/v1/shelves/s/items", "{\"nope\": 1}"), "item.nope"),
        ("unknown field, top", raw("POST", "/v1/items/a:archive", "{\"nope\": 1}"), "nope"),
        ("bad enum", raw("POST", "/v1/shelves/s/items", "{\"color\": \"COLOR_GREEN\"}"), "item.color"),
        ("bad enum in the query", raw("GET", "/v1/items?colors=GREEN", ""), "colors"),
        ("bad timestamp", raw("POST", "/v1/items/a:archive", "{\"createdAt\": \"yesterday\"}"), "created_at"),
        ("bad integer in the query", raw("GET", "/v1/items/a?count=x", ""), "count"),
        ("unknown query parameter", raw("GET", "/v1/items/a?colour=red", ""), "colour"),
        ("a path value that is not UTF-8", raw("GET", "/v1/items/%FF", ""), "id"),
        ("a singular query parameter twice", raw("GET", "/v1/items/a?title=x&title=y", ""), "title"),
        ("a query parameter the path sets", raw("GET", "/v1/items/a?id=b", ""), "id"),
        ("a body where none is taken", raw("GET", "/v1/items/a", "{}"), "body"),
    ];
    let mut wrong = Vec::new();
    for (case, request, field) in cases {
        let reply = Reply::send(request).await;
        let violation = &reply.json["details"][0]["field_violations"][0];
        let named = (reply.status, reply.json["code"].clone(), violation["field"].clone());
        if named != (400, json!(3), json!(field)) || violation["description"].as_str().is_none_or(str::is_empty) {
            wrong.push(format!("{case}: expected 400 naming {field}, got {reply:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(gateway.calls.count(), 0, "no invalid request reaches the service");
}

/// A POST to `path` whose body is sent in `chunks` with chunked transfer encoding, no Content-Length.
fn chunked<'a>(path: &str, chunks: impl Iterator<Item = &'a [u8]>) -> String {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer {}\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        token(&ALL_SCOPES)
    );
    for chunk in chunks {
        request.push_str(&format!("{:x}\r\n{}\r\n", chunk.len(), String::from_utf8_lossy(chunk)));
    }
    request.push_str("0\r\n\r\n");
    request
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_with_or_without_a_content_length() {
    let gateway = start_with(|config| config.max_body_bytes = 64).await;
    let big = json!({"title": "x".repeat(100)}).to_string();

    let reply = Reply::send(gateway.request("POST", "/v1/items/a:archive").body(big.clone())).await;
    assert_eq!(reply.status, 413, "{reply:?}");
    assert_eq!(reply.json["code"], 8);
    assert!(reply.json["message"].as_str().unwrap().contains("64 bytes"), "{reply:?}");

    // Chunked, no Content-Length: the limit applies as the body streams in.
    let answer = raw_http(&gateway.base, &chunked("/v1/items/a:archive", big.as_bytes().chunks(40))).await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains("\"code\":8"), "{answer}");
    assert_eq!(gateway.calls.count(), 0);
    // The same form under the limit goes through.
    let small = r#"{"title": "tea"}"#;
    let answer = raw_http(&gateway.base, &chunked("/v1/items/a:archive", small.as_bytes().chunks(5))).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(gateway.calls.last().request["title"], "tea");

    // At the limit is fine.
    let fits = json!({"title": "x".repeat(64 - r#"{"title":""}"#.len())}).to_string();
    assert_eq!(fits.len(), 64);
    let reply = Reply::send(gateway.request("POST", "/v1/items/a:archive").body(fits)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[tokio::test]
async fn an_upstream_that_is_down_is_503() {
    let down = closed_port().await;
    let gateway = start_with(|config| {
        config.upstreams.insert(ECHO_SERVICE.into(), format!("http://{down}"));
    })
    .await;
    let reply = gateway.send("GET", "/v1/items/a", None).await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.json["code"], 14);
}

/// A grpc-timeout value (`<digits><unit>`) as a duration.
fn grpc_timeout(text: &str) -> Duration {
    let (digits, unit) = text.split_at(text.len() - 1);
    let amount: u64 = digits.parse().unwrap();
    match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        other => panic!("unknown grpc-timeout unit {other}"),
    }
}

#[tokio::test]
async fn an_upstream_slower_than_the_request_timeout_is_504_and_saw_the_deadline() {
    let timeout = Duration::from_millis(200);
    let gateway = start_with(|config| config.request_timeout = timeout).await;
    // The upstream holds the call until released, which this test never does.
    let reply = gateway.send("POST", "/v1/slow", Some(json!({"label": "held"}))).await;
    assert_eq!(reply.status, 504, "{reply:?}");
    assert_eq!(reply.json["code"], 4);
    assert!(reply.json["message"].as_str().unwrap().contains("did not answer within 200ms"), "{reply:?}");
    let call = gateway.calls.last();
    assert_eq!(call.method, "Slow");
    let deadline = grpc_timeout(&call.metadata["grpc-timeout"]);
    assert!(deadline > Duration::ZERO && deadline <= timeout, "grpc-timeout {deadline:?}");
}
