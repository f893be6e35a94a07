//! Every rule form through the running gateway to a recording upstream.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

mod support;

use serde_json::json;
use support::{ALL_SCOPES, start, token};

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
