//! Property: whatever a caller sends — any method, path, query, body or
//! Authorization header — the gateway answers, promptly, and never with a 5xx
//! of its own (the upstream is up and answers normally), and every refusal is
//! a `google.rpc.Status` body.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

mod support;

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value};
use support::{ALL_SCOPES, Running, start_with, token};

/// Field names of the echo service's messages, proto and JSON spellings, some dotted.
const FIELD_NAMES: [&str; 30] = [
    "id",
    "title",
    "count",
    "color",
    "colors",
    "tags",
    "created_at",
    "createdAt",
    "ttl",
    "rank",
    "active",
    "weight",
    "blob",
    "shelf",
    "shelf.name",
    "name",
    "item",
    "item.id",
    "item.shelf.name",
    "validate_only",
    "validateOnly",
    "page_size",
    "pageSize",
    "page_token",
    "path",
    "label",
    "message",
    "field",
    "retry_after_seconds",
    "@type",
];

/// Texts the gateway reads specially somewhere: enum names, times, durations, numbers at the edges.
const SPECIAL_TEXTS: [&str; 16] = [
    "COLOR_RED",
    "COLOR_GREEN",
    "2",
    "2026-01-01T00:00:00Z",
    "10000-01-01T00:00:00Z",
    "1.5s",
    "-315576000001s",
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "9223372036854775808",
    "-2147483649",
    "AQI=",
    "true",
    "",
];

const METHODS: [&str; 10] = ["GET", "POST", "PUT", "PATCH", "DELETE", "SEARCH", "OPTIONS", "HEAD", "TRACE", "BREW"];

/// One piece of a path or query text: printable ASCII, a percent escape (valid or not), or any character.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[ -~]",
        2 => "%[0-9A-Fa-f]{2}",
        1 => "%[0-9A-Za-z%]{0,2}",
        2 => any::<char>().prop_map(String::from),
        1 => prop::sample::select(&SPECIAL_TEXTS[..]).prop_map(String::from),
    ]
}

fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 0..max).prop_map(|pieces| pieces.concat())
}

/// The echo routes and the fixed paths, each with its method; `{}` is a value to fill.
const ROUTES: [(&str, &str); 18] = [
    ("GET", "/v1/items/{}"),
    ("DELETE", "/v1/items/{}"),
    ("POST", "/v1/items/{}:archive"),
    ("POST", "/v1/items/{}:{}"),
    ("POST", "/v1/shelves/{}/items"),
    ("PUT", "/v1/shelves/{}/items/{}"),
    ("PATCH", "/v1/shelves/{}/items/{}"),
    ("POST", "/v1/shelves/{}/items:import"),
    ("GET", "/v1/{}/{}/books/{}"),
    ("GET", "/v1/shelves/{}/books/{}"),
    ("GET", "/v1/files/{}/{}"),
    ("GET", "/v1/items"),
    ("SEARCH", "/v1/items"),
    ("POST", "/v1/slow"),
    ("POST", "/v1/fail"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
];

/// A route's template filled with arbitrary values.
fn filled_route() -> impl Strategy<Value = (&'static str, String)> {
    (prop::sample::select(&ROUTES[..]), prop::collection::vec(text(8), 3)).prop_map(|((method, template), values)| {
        let mut path = template.to_string();
        for value in values {
            path = path.replacen("{}", &value, 1);
        }
        (method, path)
    })
}

/// A method and path: a route with arbitrary values under its own method or
/// another, or arbitrary segments under any method.
fn method_and_path() -> impl Strategy<Value = (&'static str, String)> {
    let method = prop::sample::select(&METHODS[..]);
    let segments = prop::collection::vec(text(10), 0..6).prop_map(|segments| format!("/{}", segments.join("/")));
    prop_oneof![
        3 => filled_route(),
        1 => (method.clone(), filled_route()).prop_map(|(method, (_, path))| (method, path)),
        1 => (method, segments),
    ]
}

fn query() -> impl Strategy<Value = String> {
    let key = prop_oneof![3 => prop::sample::select(&FIELD_NAMES[..]).prop_map(String::from), 1 => text(6)];
    let pair =
        (key, text(8), any::<bool>()).prop_map(|(key, value, bare)| if bare { key } else { format!("{key}={value}") });
    prop_oneof![
        2 => Just(String::new()),
        3 => prop::collection::vec(pair, 1..5).prop_map(|pairs| pairs.join("&")),
        1 => text(20),
    ]
}

/// Any JSON value, with object keys mostly from the real field names.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(&SPECIAL_TEXTS[..]).prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        let key = prop_oneof![3 => prop::sample::select(&FIELD_NAMES[..]).prop_map(String::from), 1 => ".{0,6}"];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key, inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// An object with real keys at the top level.
fn json_object() -> impl Strategy<Value = Value> {
    prop::collection::vec((prop::sample::select(&FIELD_NAMES[..]), json_value()), 0..6)
        .prop_map(|entries| Value::Object(entries.into_iter().map(|(key, value)| (key.to_string(), value)).collect()))
}

fn body() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        2 => Just(None),
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Some),
        2 => json_value().prop_map(|value| Some(value.to_string().into_bytes())),
        3 => json_object().prop_map(|value| Some(value.to_string().into_bytes())),
        // Newline-delimited, for the client-streaming route.
        1 => prop::collection::vec(json_object(), 0..4).prop_map(|lines| {
            Some(lines.iter().map(Value::to_string).collect::<Vec<_>>().join("\n").into_bytes())
        }),
    ]
}

fn authorization(valid: String) -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        6 => Just(Some(format!("Bearer {valid}").into_bytes())),
        1 => Just(None),
        1 => prop::collection::vec(any::<u8>(), 0..80).prop_map(Some),
        1 => "(Bearer |bearer |Basic |)[A-Za-z0-9_=-]{0,40}\\.[A-Za-z0-9_=-]{0,80}\\.[A-Za-z0-9_=-]{0,40}"
            .prop_map(|text| Some(text.into_bytes())),
    ]
}

/// One arbitrary request.
#[derive(Clone, Debug)]
struct Request {
    method: &'static str,
    path: String,
    query: String,
    body: Option<Vec<u8>>,
    authorization: Option<Vec<u8>>,
}

fn request(valid_token: String) -> impl Strategy<Value = Request> {
    (method_and_path(), query(), body(), authorization(valid_token))
        .prop_map(|((method, path), query, body, authorization)| Request { method, path, query, body, authorization })
}

/// The echo upstream and a gateway on a runtime of their own, shared by every case of one test.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    gateway: Running,
}

impl Fixture {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let gateway = runtime.block_on(start_with(|config| config.request_timeout = Duration::from_secs(5)));
        // Slow calls answer at once: here nobody is holding them.
        gateway.slow.let_all_through();
        Self { runtime, gateway }
    }

    /// Sends `request` and checks the answer: prompt, not a 5xx the upstream did not ask for, errors as Status JSON.
    fn check(&self, request: &Request) -> Result<(), TestCaseError> {
        let gateway = &self.gateway;
        let query = if request.query.is_empty() { String::new() } else { format!("?{}", request.query) };
        // What the URL parser cannot take, no HTTP client sends.
        let Ok(url) = reqwest::Url::parse(&format!("{}{}{query}", gateway.base, request.path)) else {
            return Ok(());
        };
        let mut builder = gateway.client.request(reqwest::Method::from_bytes(request.method.as_bytes()).unwrap(), url);
        if let Some(value) = &request.authorization {
            let Ok(value) = reqwest::header::HeaderValue::from_bytes(value) else { return Ok(()) };
            builder = builder.header("authorization", value);
        }
        if let Some(body) = &request.body {
            builder = builder.body(body.clone());
        }
        let calls_before = gateway.calls.count();
        let exchange = async {
            let response = builder.send().await?;
            let status = response.status().as_u16();
            let text = response.text().await?;
            Ok::<_, reqwest::Error>((status, text))
        };
        let answer = self.runtime.block_on(async { tokio::time::timeout(Duration::from_secs(10), exchange).await });
        let (status, text) = answer
            .map_err(|_| TestCaseError::fail("no answer within 10 s"))?
            .map_err(|error| TestCaseError::fail(format!("the connection failed: {error}")))?;

        let upstream_failed_on_request = gateway.calls.count() > calls_before && gateway.calls.last().method == "Fail";
        prop_assert!(status < 500 || upstream_failed_on_request, "answered {status}: {text}");
        if status >= 400 && request.method != "HEAD" {
            let json: Value = serde_json::from_str(&text)
                .map_err(|_| TestCaseError::fail(format!("{status} with a body that is not JSON: {text:?}")))?;
            prop_assert!(json["code"].is_i64() && json["message"].is_string(), "{status}: {text}");
        }
        Ok(())
    }
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() })
}

#[test]
fn no_request_whatsoever_gets_a_5xx_or_hangs() {
    let fixture = Fixture::new();
    let result = runner(256).run(&request(token(&ALL_SCOPES)), |request| fixture.check(&request));
    if let Err(error) = result {
        panic!("{error}");
    }
}

#[test]
fn no_body_sent_to_a_real_route_gets_a_5xx_or_hangs() {
    let fixture = Fixture::new();
    let valid = token(&ALL_SCOPES);
    let routes = prop::sample::select(
        &[
            ("POST", "/v1/shelves/s1/items"),
            ("PUT", "/v1/shelves/s1/items/i1"),
            ("PATCH", "/v1/shelves/s1/items/i1"),
            ("POST", "/v1/items/i1:archive"),
            ("POST", "/v1/shelves/s1/items:import"),
            ("POST", "/v1/slow"),
            ("GET", "/v1/items/i1"),
            ("SEARCH", "/v1/items"),
        ][..],
    );
    let strategy = (routes, query(), body()).prop_map(move |((method, path), query, body)| Request {
        method,
        path: path.to_string(),
        query,
        body,
        authorization: Some(format!("Bearer {valid}").into_bytes()),
    });
    let result = runner(256).run(&strategy, |request| fixture.check(&request));
    if let Err(error) = result {
        panic!("{error}");
    }
}

#[test]
fn no_path_value_or_query_on_a_real_route_gets_a_5xx_or_hangs() {
    let fixture = Fixture::new();
    let valid = token(&ALL_SCOPES);
    let strategy = (filled_route(), query()).prop_map(move |((method, path), query)| Request {
        method,
        path,
        query,
        body: None,
        authorization: Some(format!("Bearer {valid}").into_bytes()),
    });
    let result = runner(256).run(&strategy, |request| fixture.check(&request));
    if let Err(error) = result {
        panic!("{error}");
    }
}
