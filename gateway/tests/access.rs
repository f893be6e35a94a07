//! Authentication and scopes through HTTP: every way a caller is refused
//! answers 401 or 403 with a challenge and a `google.rpc.Status` body, and the
//! service is never called; an accepted caller reaches it as its subject.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

mod support;

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::{Reply, Running, SECRET, start_with};

const KEY1: &[u8] = include_bytes!("../../crates/kit/tests/keys/key1.pem");
const KEY2: &[u8] = include_bytes!("../../crates/kit/tests/keys/key2.pem");
const KEY1_PUBLIC_PEM: &[u8] = include_bytes!("../../crates/kit/tests/keys/key1.pub.pem");

/// The challenge for a request without a bearer token.
const BARE: &str = "Bearer realm=\"commerce-mesh\"";

/// A gateway trusting key 1 (`jwks-key1.json`) and, when `development`, the development secret.
async fn gateway(development: bool) -> Running {
    start_with(|config| {
        config.auth.jwks_file =
            Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crates/kit/tests/keys/jwks-key1.json"));
        // Both key sources at once only when explicitly allowed.
        config.auth.allow_development_tokens = true;
        if !development {
            config.auth.development_secret = None;
        }
    })
    .await
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Claims the gateway accepts, granting `scopes` to `learner-1`.
fn claims(scopes: &[&str]) -> Value {
    json!({"iss": "commerce-mesh", "aud": "commerce-mesh", "sub": "learner-1", "exp": now() + 600, "scopes": scopes})
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

fn signed(algorithm: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn rs256(private_pem: &[u8], kid: &str, claims: &Value) -> String {
    signed(Algorithm::RS256, &EncodingKey::from_rsa_pem(private_pem).unwrap(), Some(kid), claims)
}

fn hs256(secret: &[u8], claims: &Value) -> String {
    signed(Algorithm::HS256, &EncodingKey::from_secret(secret), None, claims)
}

/// GET /v1/items/a (scope `items:read`) with `authorization`, if any.
async fn get_item(gateway: &Running, authorization: Option<&str>) -> Reply {
    let mut request = gateway.client.get(gateway.url("/v1/items/a"));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    Reply::send(request).await
}

/// Checks a refusal: the status, the code in the body, and a challenge containing `challenge`.
fn assert_refused(case: &str, reply: &Reply, status: u16, code: i32, challenge: &str) {
    assert_eq!(reply.status, status, "{case}: {reply:?}");
    assert_eq!(reply.json["code"], code, "{case}: {reply:?}");
    assert!(reply.json["message"].as_str().is_some_and(|m| !m.is_empty()), "{case}: {reply:?}");
    assert_eq!(reply.json["details"], json!([]), "{case}");
    let sent = reply.header("www-authenticate");
    assert!(sent.starts_with(BARE), "{case}: {sent}");
    assert!(sent.contains(challenge), "{case}: {sent:?} lacks {challenge:?}");
}

#[tokio::test]
async fn every_unauthenticated_request_is_401_with_a_challenge_and_never_reaches_the_service() {
    let gateway = gateway(true).await;
    let read = ["items:read"];
    let alg_none = {
        let part = |value: Value| URL_SAFE_NO_PAD.encode(value.to_string());
        format!("{}.{}.", part(json!({"alg": "none", "typ": "JWT"})), part(claims(&read)))
    };
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, ""),
        ("another scheme", Some("Basic dXNlcjpwYXNzd29yZA==".into()), ""),
        ("malformed", Some("Bearer not-a-jwt".into()), "error=\"invalid_token\""),
        ("empty bearer", Some("Bearer ".into()), "error=\"invalid_token\""),
        (
            "expired",
            Some(format!("Bearer {}", hs256(SECRET.as_bytes(), &with(claims(&read), "exp", json!(now() - 3600))))),
            "expired",
        ),
        (
            "wrong issuer",
            Some(format!("Bearer {}", hs256(SECRET.as_bytes(), &with(claims(&read), "iss", json!("elsewhere"))))),
            "issuer",
        ),
        (
            "wrong audience",
            Some(format!("Bearer {}", hs256(SECRET.as_bytes(), &with(claims(&read), "aud", json!("another-api"))))),
            "audience",
        ),
        (
            "HS256 with another secret",
            Some(format!("Bearer {}", hs256(b"another secret, also 32 bytes or more", &claims(&read)))),
            "signature",
        ),
        (
            "RS256 by key 2 claiming to be key 1",
            Some(format!("Bearer {}", rs256(KEY2, "test-key-1", &claims(&read)))),
            "signature does not verify",
        ),
        (
            "RS256 by key 2 under its own kid",
            Some(format!("Bearer {}", rs256(KEY2, "test-key-2", &claims(&read)))),
            "names no known signing key",
        ),
        ("alg none", Some(format!("Bearer {alg_none}")), "alg none"),
        (
            "HS256 signed with the RSA public key",
            Some(format!("Bearer {}", hs256(KEY1_PUBLIC_PEM, &claims(&read)))),
            "signature",
        ),
    ];
    for (case, authorization, challenge) in cases {
        let reply = get_item(&gateway, authorization.as_deref()).await;
        assert_refused(case, &reply, 401, 16, challenge);
        if authorization.as_deref().is_none_or(|value| !value.starts_with("Bearer")) {
            assert_eq!(reply.header("www-authenticate"), BARE, "{case}: no token, no error code");
        } else {
            assert!(reply.header("www-authenticate").contains("error=\"invalid_token\""), "{case}");
        }
        assert_eq!(gateway.calls.count(), 0, "{case}: the service was called");
    }
}

#[tokio::test]
async fn an_hs256_token_signed_with_the_rsa_public_key_is_refused_without_a_development_secret() {
    let gateway = gateway(false).await;
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("test-key-1".into());
    let confused =
        jsonwebtoken::encode(&header, &claims(&["items:read"]), &EncodingKey::from_secret(KEY1_PUBLIC_PEM)).unwrap();
    let reply = get_item(&gateway, Some(&format!("Bearer {confused}"))).await;
    assert_refused("algorithm confusion", &reply, 401, 16, "HS256 tokens are not accepted");

    // The key it imitates still verifies real RS256 tokens.
    let reply =
        get_item(&gateway, Some(&format!("Bearer {}", rs256(KEY1, "test-key-1", &claims(&["items:read"]))))).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(gateway.calls.count(), 1);
}

#[tokio::test]
async fn a_token_missing_a_scope_is_403_naming_it_and_never_reaches_the_service() {
    let gateway = gateway(true).await;
    let token = hs256(SECRET.as_bytes(), &claims(&["items:write", "other:unused"]));
    let reply = get_item(&gateway, Some(&format!("Bearer {token}"))).await;
    assert_refused("missing scope", &reply, 403, 7, "error=\"insufficient_scope\", scope=\"items:read\"");

    let no_scopes = hs256(
        SECRET.as_bytes(),
        &json!({"iss": "commerce-mesh", "aud": "commerce-mesh", "sub": "s", "exp": now() + 60}),
    );
    let reply = get_item(&gateway, Some(&format!("Bearer {no_scopes}"))).await;
    assert_refused("no scopes at all", &reply, 403, 7, "scope=\"items:read\"");
    assert_eq!(gateway.calls.count(), 0);
}

#[tokio::test]
async fn an_rpc_needing_two_scopes_refuses_a_token_with_one() {
    let gateway = gateway(true).await;
    let archive = |scopes: &[&str]| {
        let token = hs256(SECRET.as_bytes(), &claims(scopes));
        gateway.client.post(gateway.url("/v1/items/a:archive")).bearer_auth(token).body("{}")
    };
    let reply = Reply::send(archive(&["items:write"])).await;
    assert_refused("one of two scopes", &reply, 403, 7, "scope=\"items:archive\"");
    let reply = Reply::send(archive(&["items:archive"])).await;
    assert_refused("the other of two scopes", &reply, 403, 7, "scope=\"items:write\"");
    let reply = Reply::send(archive(&["items:read"])).await;
    assert_refused("neither scope", &reply, 403, 7, "scope=\"items:write items:archive\"");
    assert_eq!(gateway.calls.count(), 0);

    let reply = Reply::send(archive(&["items:write", "items:archive"])).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(gateway.calls.last().method, "ArchiveItem");
}

#[tokio::test]
async fn an_accepted_caller_reaches_the_service_as_its_subject_and_its_token_does_not() {
    let gateway = gateway(true).await;
    let tokens = [
        ("RS256 from the JWKS", rs256(KEY1, "test-key-1", &claims(&["items:read"]))),
        ("HS256 development", hs256(SECRET.as_bytes(), &with(claims(&["items:read"]), "sub", json!("dev-user")))),
    ];
    for (index, (case, token)) in tokens.iter().enumerate() {
        let reply = get_item(&gateway, Some(&format!("Bearer {token}"))).await;
        assert_eq!(reply.status, 200, "{case}: {reply:?}");
        assert!(reply.headers.get("www-authenticate").is_none(), "{case}");
        assert_eq!(gateway.calls.count(), index + 1, "{case}");
        let metadata = gateway.calls.last().metadata;
        let expected = if index == 0 { "learner-1" } else { "dev-user" };
        assert_eq!(metadata["x-authenticated-subject"], expected, "{case}");
        // The service checks the caller again, with the very token the gateway verified.
        assert_eq!(metadata["authorization"], format!("Bearer {token}"), "{case}: the token is passed on");
    }
}

#[tokio::test]
async fn a_caller_cannot_claim_a_subject_with_a_header() {
    let gateway = gateway(true).await;
    let token = hs256(SECRET.as_bytes(), &claims(&["items:read"]));
    let request =
        gateway.client.get(gateway.url("/v1/items/a")).bearer_auth(token).header("x-authenticated-subject", "admin");
    let reply = Reply::send(request).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(gateway.calls.last().metadata["x-authenticated-subject"], "learner-1");
}
