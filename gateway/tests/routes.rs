//! Every rule form through the running gateway to a recording upstream: the
//! exact message the service received and the JSON the caller got back; and
//! the rule sets the gateway refuses to start with.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

mod support;

use std::path::Path;

use prost_reflect::DescriptorPool;
use serde_json::{Value, json};
use support::{ALL_SCOPES, Reply, Running, start, token};

/// The upstream's record of an `Item` with `fields` set and every other field at its default.
fn item(fields: Value) -> Value {
    let mut item = json!({
        "id": "", "title": "", "count": "0", "color": "COLOR_UNSPECIFIED", "tags": [],
        "active": false, "weight": 0.0, "blob": "",
    });
    for (name, value) in fields.as_object().unwrap() {
        item[name] = value.clone();
    }
    item
}

/// The last call's RPC and request, after checking it arrived as `count`-th call.
fn last_call(gateway: &Running, count: usize) -> (String, Value) {
    assert_eq!(gateway.calls.count(), count, "calls: {:#?}", gateway.calls.all());
    let call = gateway.calls.last();
    (call.method, call.request)
}

#[tokio::test]
async fn a_get_fills_the_path_variable_and_answers_proto_json() {
    let gateway = start().await;
    let response =
        gateway.client.get(gateway.url("/v1/items/abc")).bearer_auth(token(&ALL_SCOPES)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["id"], "abc");
    assert_eq!(body["count"], "0", "int64 as a string, defaults emitted");
    let call = gateway.calls.last();
    assert_eq!(call.request["id"], json!("abc"));
    assert_eq!(call.metadata["x-authenticated-subject"], "tester");
}

#[tokio::test]
async fn responses_use_proto_names_and_emit_defaults() {
    let gateway = start().await;
    let reply = gateway.send("GET", "/v1/items/abc", None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.json, item(json!({"id": "abc"})));
    assert!(!reply.text.contains("createdAt"), "proto names, not lowerCamel: {}", reply.text);

    let reply = gateway.send("PATCH", "/v1/shelves/s1/items/i1", Some(json!({}))).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json, json!({"shelf": "s1", "item": item(json!({"id": "i1"})), "validate_only": false}));
}

#[tokio::test]
async fn a_post_takes_its_body_field_and_the_path_variable() {
    let gateway = start().await;
    let reply = gateway
        .send("POST", "/v1/shelves/s1/items?validate_only=true", Some(json!({"id": "i1", "title": "Tea", "count": 3})))
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let expected = json!({
        "shelf": "s1",
        "item": item(json!({"id": "i1", "title": "Tea", "count": "3"})),
        "validate_only": true,
    });
    assert_eq!(last_call(&gateway, 1), ("CreateItem".into(), expected.clone()));
    assert_eq!(reply.json, expected);
}

#[tokio::test]
async fn a_put_fills_a_field_inside_the_body_field_from_the_path_and_refuses_a_contradiction() {
    let gateway = start().await;
    let reply = gateway.send("PUT", "/v1/shelves/s1/items/i9", Some(json!({"title": "Tea"}))).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let expected = json!({"shelf": "s1", "item": item(json!({"id": "i9", "title": "Tea"})), "validate_only": false});
    assert_eq!(last_call(&gateway, 1), ("CreateItem".into(), expected.clone()));

    // The body may repeat the path's value...
    let reply = gateway.send("PUT", "/v1/shelves/s1/items/i9", Some(json!({"id": "i9", "title": "Tea"}))).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(last_call(&gateway, 2), ("CreateItem".into(), expected));

    // ...but not contradict it.
    let reply = gateway.send("PUT", "/v1/shelves/s1/items/i9", Some(json!({"id": "other"}))).await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.violated_field(), "item.id");
    assert_eq!(reply.json["code"], 3);
    assert_eq!(gateway.calls.count(), 2, "a refused request never reaches the service");
}

#[tokio::test]
async fn a_patch_with_body_star_reads_the_whole_message_from_the_body() {
    let gateway = start().await;
    let body = json!({"item": {"title": "Tea", "tags": ["a", "b"]}, "validateOnly": true});
    let reply = gateway.send("PATCH", "/v1/shelves/s1/items/i9", Some(body)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let expected = json!({
        "shelf": "s1",
        "item": item(json!({"id": "i9", "title": "Tea", "tags": ["a", "b"]})),
        "validate_only": true,
    });
    assert_eq!(last_call(&gateway, 1), ("CreateItem".into(), expected.clone()));
    assert_eq!(reply.json, expected);

    // Every field comes from the body, so there is nothing left for a query parameter.
    let reply = gateway.send("PATCH", "/v1/shelves/s1/items/i9?validate_only=true", Some(json!({}))).await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.violated_field(), "validate_only");
    assert_eq!(gateway.calls.count(), 1);
}

#[tokio::test]
async fn a_delete_sends_the_path_variable_and_answers_an_empty_object() {
    let gateway = start().await;
    let reply = gateway.send("DELETE", "/v1/items/i1", None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json, json!({}));
    assert_eq!(last_call(&gateway, 1), ("DeleteItem".into(), item(json!({"id": "i1"}))));
}

#[tokio::test]
async fn a_custom_verb_routes_to_its_rpc() {
    let gateway = start().await;
    let reply = gateway.send("POST", "/v1/items/i1:archive", Some(json!({"title": "old"}))).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let expected = item(json!({"id": "i1", "title": "old"}));
    assert_eq!(last_call(&gateway, 1), ("ArchiveItem".into(), expected.clone()));
    assert_eq!(reply.json, expected);

    // Without the verb the same path is GetItem's, which takes no POST.
    let reply = gateway.send("POST", "/v1/items/i1", Some(json!({}))).await;
    assert_eq!(reply.status, 405, "{reply:?}");
}

#[tokio::test]
async fn a_nested_variable_with_a_segment_pattern_captures_the_matched_segments() {
    let gateway = start().await;
    let reply = gateway.send("GET", "/v1/shelves/s1/books/b1", None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let expected = json!({"shelf": {"name": "shelves/s1"}, "title": "b1", "path": ""});
    assert_eq!(last_call(&gateway, 1), ("GetBook".into(), expected.clone()));
    assert_eq!(reply.json, expected);

    // The pattern wants the literal `shelves`.
    let reply = gateway.send("GET", "/v1/racks/s1/books/b1", None).await;
    assert_eq!(reply.status, 404, "{reply:?}");
}

#[tokio::test]
async fn a_double_wildcard_captures_the_rest_of_the_path() {
    let gateway = start().await;
    let reply = gateway.send("GET", "/v1/files/a/b/c", None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(last_call(&gateway, 1), ("GetBook".into(), json!({"title": "", "path": "a/b/c"})));

    // An encoded slash stays encoded in a multi-segment value: it is not a separator.
    let reply = gateway.send("GET", "/v1/files/a%2Fb/c%20d", None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(last_call(&gateway, 2).1["path"], "a%2Fb/c d");
}

#[tokio::test]
async fn a_custom_http_method_routes_to_its_rpc() {
    let gateway = start().await;
    let reply = gateway.send("SEARCH", "/v1/items?page_token=p1", None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(last_call(&gateway, 1), ("ListItems".into(), json!({"page_size": 0, "page_token": "p1", "colors": []})));
    // The whole response: no response_body on this binding.
    assert_eq!(
        reply.json,
        json!({"items": [item(json!({"id": "a"})), item(json!({"id": "b"}))], "next_page_token": "p1next"})
    );
}

#[tokio::test]
async fn response_body_answers_only_that_field() {
    let gateway = start().await;
    let reply = gateway.send("GET", "/v1/items", None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json, json!([item(json!({"id": "a"})), item(json!({"id": "b"}))]));
    assert_eq!(gateway.calls.last().method, "ListItems");
}

#[tokio::test]
async fn additional_bindings_reach_the_same_rpc() {
    let gateway = start().await;
    let bindings = [
        ("POST", "/v1/shelves/s1/items", json!({"title": "t"})),
        ("PUT", "/v1/shelves/s1/items/i1", json!({"title": "t"})),
        ("PATCH", "/v1/shelves/s1/items/i1", json!({"item": {"title": "t"}})),
    ];
    for (index, (method, path, body)) in bindings.into_iter().enumerate() {
        let reply = gateway.send(method, path, Some(body)).await;
        assert_eq!(reply.status, 200, "{method} {path}: {reply:?}");
        let (rpc, request) = last_call(&gateway, index + 1);
        assert_eq!(rpc, "CreateItem", "{method} {path}");
        assert_eq!(request["item"]["title"], "t", "{method} {path}");
    }
    for (path, rpc) in [("/v1/items", "ListItems"), ("/v1/files/x", "GetBook"), ("/v1/shelves/s/books/b", "GetBook")] {
        let reply = gateway.send("GET", path, None).await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        assert_eq!(gateway.calls.last().method, rpc, "{path}");
    }
}

#[tokio::test]
async fn query_parameters_fill_scalars_nested_fields_lists_enums_and_well_known_types() {
    let gateway = start().await;
    let query = [
        "title=two+words%21",
        "count=-3",
        "shelf.name=s%2F1",
        "tags=a",
        "tags=b",
        "color=COLOR_BLUE",
        "createdAt=2026-01-02T03:04:05.5Z",
        "ttl=1.5s",
        "rank=7",
        "active=true",
        "weight=2.5",
        "blob=AQI%3D",
    ]
    .join("&");
    let reply = gateway.send("GET", &format!("/v1/items/i1?{query}"), None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let expected = item(json!({
        "id": "i1",
        "title": "two words!",
        "count": "-3",
        "shelf": {"name": "s/1"},
        "tags": ["a", "b"],
        "color": "COLOR_BLUE",
        "created_at": "2026-01-02T03:04:05.500Z",
        "ttl": "1.500s",
        "rank": 7,
        "active": true,
        "weight": 2.5,
        "blob": "AQI=",
    }));
    assert_eq!(last_call(&gateway, 1), ("GetItem".into(), expected.clone()));
    assert_eq!(reply.json, expected);

    // Repeated enums by name or number, lowerCamel names.
    let reply = gateway.send("GET", "/v1/items?colors=COLOR_RED&colors=2&pageSize=5", None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        last_call(&gateway, 2).1,
        json!({"page_size": 5, "page_token": "", "colors": ["COLOR_RED", "COLOR_BLUE"]})
    );
}

#[tokio::test]
async fn body_keys_may_be_lower_camel_or_snake_case() {
    let gateway = start().await;
    let camel = json!({"item": {"createdAt": "2026-01-02T03:04:05Z", "ttl": "2s"}, "validateOnly": true});
    let snake = json!({"item": {"created_at": "2026-01-02T03:04:05Z", "ttl": "2s"}, "validate_only": true});
    let expected = json!({
        "shelf": "s1",
        "item": item(json!({"id": "i1", "created_at": "2026-01-02T03:04:05Z", "ttl": "2s"})),
        "validate_only": true,
    });
    for (count, body) in [camel, snake].into_iter().enumerate() {
        let reply = gateway.send("PATCH", "/v1/shelves/s1/items/i1", Some(body.clone())).await;
        assert_eq!(reply.status, 200, "{body}: {reply:?}");
        assert_eq!(last_call(&gateway, count + 1), ("CreateItem".into(), expected.clone()), "{body}");
    }
}

#[tokio::test]
async fn path_values_are_percent_decoded() {
    let gateway = start().await;
    let reply = gateway.send("GET", "/v1/items/a%20b%2Fc%C3%A9", None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(last_call(&gateway, 1).1["id"], "a b/cé");
    assert_eq!(reply.json["id"], "a b/cé");
}

#[tokio::test]
async fn a_course_run_key_with_colon_and_plus_is_one_value() {
    let gateway = start().await;
    let reply = gateway.send("GET", "/v1/items/course-v1:edX+DemoX+2024", None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(last_call(&gateway, 1), ("GetItem".into(), item(json!({"id": "course-v1:edX+DemoX+2024"}))));

    // With the custom verb after it, the last `:` splits off the verb.
    let reply = gateway.send("POST", "/v1/items/course-v1:edX+DemoX+2024:archive", Some(json!({}))).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(last_call(&gateway, 2), ("ArchiveItem".into(), item(json!({"id": "course-v1:edX+DemoX+2024"}))));
}

#[tokio::test]
async fn a_client_streaming_rpc_takes_newline_delimited_json_one_message_a_line() {
    let gateway = start().await;
    let body =
        "{\"id\": \"a\"}\n\n  \n{\"id\": \"b\", \"title\": \"B\"}\r\n{\"id\": \"c\", \"shelf\": {\"name\": \"s1\"}}";
    let reply = Reply::send(gateway.request("POST", "/v1/shelves/s1/items:import").body(body)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json, json!({"ids": ["a", "b", "c"], "shelves": ["s1", "s1", "s1"]}));
    let shelf = json!({"name": "s1"});
    let expected = json!([
        item(json!({"id": "a", "shelf": shelf})),
        item(json!({"id": "b", "title": "B", "shelf": shelf})),
        item(json!({"id": "c", "shelf": shelf})),
    ]);
    assert_eq!(last_call(&gateway, 1), ("ImportItems".into(), expected));

    // A bad line is named by its number, and nothing is sent.
    let body = "{\"id\": \"a\"}\n{\"id\": \"b\"}\n{\"count\": \"many\"}\n";
    let reply = Reply::send(gateway.request("POST", "/v1/shelves/s1/items:import").body(body)).await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.violated_field(), "body[line 3].count");
    let body = "{\"id\": \"a\", \"shelf\": {\"name\": \"s2\"}}";
    let reply = Reply::send(gateway.request("POST", "/v1/shelves/s1/items:import").body(body)).await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.violated_field(), "body[line 1].shelf.name");
    assert_eq!(gateway.calls.count(), 1);

    // No lines: the stream is empty.
    let reply = Reply::send(gateway.request("POST", "/v1/shelves/s1/items:import").body("\n")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json, json!({"ids": [], "shelves": []}));
    assert_eq!(last_call(&gateway, 2), ("ImportItems".into(), json!([])));
}

/// Compiles `source` next to the mesh's own protos, keeping custom options.
fn pool_with(source: &str) -> DescriptorPool {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("extra.proto"), source).expect("write proto");
    let mesh_protos = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let mut compiler = protox::Compiler::new([dir.path(), mesh_protos.as_path()]).expect("includes");
    compiler.include_imports(true);
    compiler.open_file("extra.proto").expect("the test proto compiles");
    DescriptorPool::decode(compiler.encode_file_descriptor_set().as_slice()).expect("decode")
}

/// A one-service proto whose service body is `rpcs`.
fn extra_service(rpcs: &str) -> String {
    format!(
        r#"
syntax = "proto3";
package commerce.extra.v1;
import "commerce/auth/v1/auth.proto";
import "google/api/annotations.proto";
message Thing {{ string id = 1; string name = 2; }}
service ExtraService {{
{rpcs}
}}
"#
    )
}

/// The error `Gateway::new` answers for `pool`, which must be refused.
async fn start_up_error(pool: &DescriptorPool) -> gateway::GatewayError {
    let mut config = support::config("127.0.0.1:9".parse().unwrap());
    config.upstreams.insert("commerce.extra.v1.ExtraService".into(), "http://127.0.0.1:9".into());
    match gateway::Gateway::new(pool, config, &kit::metrics::Metrics::new()).await {
        Ok(_) => panic!("the gateway started"),
        Err(error) => error,
    }
}

#[tokio::test]
async fn two_rules_that_match_one_request_stop_the_gateway_naming_both() {
    let pool = pool_with(&extra_service(
        r#"
  rpc GetThing(Thing) returns (Thing) {
    option (google.api.http) = {get: "/v1/things/{id}"};
    option (commerce.auth.v1.access) = {scopes: ["things:read"]};
  }
  rpc FindThing(Thing) returns (Thing) {
    option (google.api.http) = {get: "/v1/things/{name=*}"};
    option (commerce.auth.v1.access) = {scopes: ["things:read"]};
  }
  rpc PutThing(Thing) returns (Thing) {
    option (google.api.http) = {put: "/v1/things/{id}" body: "*"};
    option (commerce.auth.v1.access) = {scopes: ["things:write"]};
  }"#,
    ));
    let error = start_up_error(&pool).await;
    let gateway::GatewayError::Conflicts(conflicts) = &error else { panic!("not a conflict: {error}") };
    assert_eq!(conflicts.0.len(), 1, "{error}");
    let message = error.to_string();
    assert!(message.contains("commerce.extra.v1.ExtraService.GetThing (GET /v1/things/{id})"), "{message}");
    assert!(message.contains("commerce.extra.v1.ExtraService.FindThing (GET /v1/things/{name=*})"), "{message}");
    assert!(!message.contains("PutThing"), "{message}");
}

#[tokio::test]
async fn a_bound_server_streaming_rpc_stops_the_gateway() {
    let pool = pool_with(&extra_service(
        r#"
  rpc WatchThings(Thing) returns (stream Thing) {
    option (google.api.http) = {get: "/v1/things:watch"};
    option (commerce.auth.v1.access) = {scopes: ["things:read"]};
  }"#,
    ));
    let error = start_up_error(&pool).await;
    assert!(
        matches!(&error, gateway::GatewayError::Rule { method, .. } if method == "commerce.extra.v1.ExtraService.WatchThings"),
        "{error}"
    );
    assert!(error.to_string().contains("server-streaming"), "{error}");
}
