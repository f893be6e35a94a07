//! Bearer-token authentication through the public API: every way a token is
//! refused, and the ways it is accepted, with keys from a JWKS file, a JWKS
//! URL (a wiremock server) and a development secret.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::HeaderValue;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kit::auth::{
    AuthConfig, AuthSetupError, Authenticator, Caller, DevelopmentClaims, JwksError, MintError, Secret,
    Unauthenticated, mint_development_token,
};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY1: &[u8] = include_bytes!("../../crates/kit/tests/keys/key1.pem");
const KEY2: &[u8] = include_bytes!("../../crates/kit/tests/keys/key2.pem");
const KEY1_PUBLIC_PEM: &[u8] = include_bytes!("../../crates/kit/tests/keys/key1.pub.pem");
const KEY1_PUBLIC_PKCS1_DER: &[u8] = include_bytes!("../../crates/kit/tests/keys/key1.pub.pkcs1.der");
const JWKS_KEY1: &str = include_str!("../../crates/kit/tests/keys/jwks-key1.json");
const JWKS_BOTH: &str = include_str!("../../crates/kit/tests/keys/jwks-both.json");
const DEVELOPMENT_SECRET: &str = "development secret, at least 32 bytes";

fn keys_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crates/kit/tests/keys")
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Claims the default configuration accepts.
fn claims() -> Value {
    json!({
        "iss": "commerce-mesh",
        "aud": "commerce-mesh",
        "sub": "learner-42",
        "exp": now() + 600,
        "scopes": ["orders.read", "orders.write"],
    })
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

fn without(mut claims: Value, name: &str) -> Value {
    claims.as_object_mut().unwrap().remove(name);
    claims
}

fn signed(algorithm: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn rs256(private_pem: &[u8], kid: Option<&str>, claims: &Value) -> String {
    signed(Algorithm::RS256, &EncodingKey::from_rsa_pem(private_pem).unwrap(), kid, claims)
}

fn key1_token(claims: &Value) -> String {
    rs256(KEY1, Some("test-key-1"), claims)
}

fn hs256(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    signed(Algorithm::HS256, &EncodingKey::from_secret(secret), kid, claims)
}

/// A token with any header at all, "signed" with `signature`.
fn hand_made(header: &Value, claims: &Value, signature: &[u8]) -> String {
    let part = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    format!("{}.{}.{}", part(header.to_string().as_bytes()), part(claims.to_string().as_bytes()), part(signature))
}

fn bearer(token: &str) -> HeaderValue {
    HeaderValue::try_from(format!("Bearer {token}")).unwrap()
}

fn file_config(jwks: &str) -> AuthConfig {
    AuthConfig { jwks_file: Some(keys_dir().join(jwks)), ..AuthConfig::default() }
}

fn development_config() -> AuthConfig {
    AuthConfig { development_secret: Some(Secret::new(DEVELOPMENT_SECRET.into())), ..AuthConfig::default() }
}

async fn authenticator(config: &AuthConfig) -> Authenticator {
    Authenticator::new(config).await.unwrap()
}

async fn accepted(authenticator: &Authenticator, token: &str) -> Caller {
    authenticator.authenticate(Some(&bearer(token))).await.unwrap_or_else(|rejection| panic!("rejected: {rejection}"))
}

/// Refused with a reason containing `expected`, which never repeats the token.
async fn refused(authenticator: &Authenticator, token: &str, expected: &str) -> Unauthenticated {
    let rejection = authenticator.authenticate(Some(&bearer(token))).await.expect_err("the token is refused");
    assert!(rejection.reason.contains(expected), "reason {:?} lacks {expected:?}", rejection.reason);
    assert!(rejection.token_presented());
    for part in token.split('.').filter(|part| part.len() > 8) {
        assert!(!rejection.reason.contains(part), "the reason repeats the token");
    }
    rejection
}

fn scopes(names: &[&str]) -> std::collections::BTreeSet<String> {
    names.iter().map(|name| name.to_string()).collect()
}

#[tokio::test]
async fn an_rs256_token_checked_against_a_jwks_file_names_its_caller() {
    let authenticator = authenticator(&file_config("jwks-both.json")).await;
    let caller = accepted(&authenticator, &key1_token(&claims())).await;
    assert_eq!(caller, Caller { subject: "learner-42".into(), scopes: scopes(&["orders.read", "orders.write"]) });

    let caller = accepted(&authenticator, &rs256(KEY2, Some("test-key-2"), &claims())).await;
    assert_eq!(caller.subject, "learner-42");
}

#[tokio::test]
async fn a_token_without_kid_uses_the_only_key_and_is_refused_when_there_are_several() {
    let token = rs256(KEY1, None, &claims());
    accepted(&authenticator(&file_config("jwks-key1.json")).await, &token).await;
    refused(&authenticator(&file_config("jwks-both.json")).await, &token, "no key id (kid)").await;
}

#[tokio::test]
async fn a_missing_token_is_refused_without_an_error_code() {
    let authenticator = authenticator(&file_config("jwks-key1.json")).await;
    let rejection = authenticator.authenticate(None).await.unwrap_err();
    assert!(!rejection.token_presented());
    assert!(rejection.reason.contains("no bearer token"), "{}", rejection.reason);
    assert_eq!(rejection.www_authenticate(), "Bearer realm=\"commerce-mesh\"");
}

#[tokio::test]
async fn header_variants() {
    let authenticator = authenticator(&file_config("jwks-key1.json")).await;
    let token = key1_token(&claims());
    let authenticate = |value: HeaderValue| {
        let authenticator = authenticator.clone();
        async move { authenticator.authenticate(Some(&value)).await }
    };

    // The scheme is case-insensitive; extra spaces around the token do no harm.
    for scheme in ["bearer", "BEARER", "Bearer", "bEaReR"] {
        let value = HeaderValue::try_from(format!("{scheme}  {token} ")).unwrap();
        assert_eq!(authenticate(value).await.unwrap().subject, "learner-42", "{scheme}");
    }

    // Another scheme is no bearer token at all: a challenge without an error code.
    for other in ["Basic dXNlcjpwYXNzd29yZA==", "Token abc", "", "Bearertoken"] {
        let rejection = authenticate(HeaderValue::from_static(other)).await.unwrap_err();
        assert!(!rejection.token_presented(), "{other:?}");
        assert!(rejection.reason.contains("Bearer scheme"), "{other:?}: {}", rejection.reason);
        assert_eq!(rejection.www_authenticate(), "Bearer realm=\"commerce-mesh\"");
    }

    let cases: [(HeaderValue, &str); 7] = [
        (HeaderValue::from_static("Bearer"), "no token after Bearer"),
        (HeaderValue::from_static("Bearer    "), "no token after Bearer"),
        (HeaderValue::from_bytes(b"Bearer \xff\xfe.\x80.\x81").unwrap(), "not a JWT"),
        (HeaderValue::from_static("Bearer x"), "not a JWT"),
        (HeaderValue::from_static("Bearer a.b.c.d"), "not a JWT"),
        (HeaderValue::from_static("Bearer !!!.???.###"), "not a JWT"),
        (HeaderValue::from_static("Bearer a.b.c"), "header is not base64url-encoded JSON"),
    ];
    for (value, expected) in cases {
        let rejection = authenticate(value.clone()).await.unwrap_err();
        assert!(rejection.token_presented(), "{value:?}");
        assert!(rejection.reason.contains(expected), "{value:?}: {}", rejection.reason);
        assert!(rejection.www_authenticate().to_str().unwrap().contains("error=\"invalid_token\""));
    }

    let huge = format!("{token}{}", "A".repeat(10_000));
    refused(&authenticator, &huge, "longer than 8192 bytes").await;
}

#[tokio::test]
async fn an_expired_token_is_refused_beyond_the_leeway() {
    let authenticator = authenticator(&file_config("jwks-key1.json")).await;
    let rejection = refused(&authenticator, &key1_token(&with(claims(), "exp", json!(now() - 3600))), "expired").await;
    assert_eq!(
        rejection.www_authenticate(),
        "Bearer realm=\"commerce-mesh\", error=\"invalid_token\", error_description=\"the token has expired\""
    );
    // Within the default 30 s of leeway a clock a little ahead is forgiven.
    accepted(&authenticator, &key1_token(&with(claims(), "exp", json!(now() - 5)))).await;
    refused(&authenticator, &key1_token(&without(claims(), "exp")), "no valid exp claim").await;
    refused(&authenticator, &key1_token(&with(claims(), "exp", json!("tomorrow"))), "no valid exp claim").await;
}

#[tokio::test]
async fn a_token_whose_nbf_is_in_the_future_is_refused() {
    let authenticator = authenticator(&file_config("jwks-key1.json")).await;
    refused(&authenticator, &key1_token(&with(claims(), "nbf", json!(now() + 3600))), "not valid yet").await;
    accepted(&authenticator, &key1_token(&with(claims(), "nbf", json!(now() - 60)))).await;
    accepted(&authenticator, &key1_token(&with(claims(), "nbf", json!(now() + 5)))).await;
}

#[tokio::test]
async fn issuer_and_audience_must_match_the_configuration() {
    let authenticator = authenticator(&file_config("jwks-key1.json")).await;
    refused(&authenticator, &key1_token(&with(claims(), "iss", json!("someone-else"))), "issuer").await;
    refused(&authenticator, &key1_token(&without(claims(), "iss")), "no valid iss claim").await;
    refused(&authenticator, &key1_token(&with(claims(), "aud", json!("another-api"))), "audience").await;
    refused(&authenticator, &key1_token(&with(claims(), "aud", json!(["a", "b"]))), "audience").await;
    refused(&authenticator, &key1_token(&without(claims(), "aud")), "no valid aud claim").await;
    // An audience list only has to contain ours.
    accepted(&authenticator, &key1_token(&with(claims(), "aud", json!(["billing", "commerce-mesh"])))).await;

    let config = AuthConfig {
        issuer: "https://idp.example".into(),
        audience: "mesh-api".into(),
        ..file_config("jwks-key1.json")
    };
    let custom = Authenticator::new(&config).await.unwrap();
    refused(&custom, &key1_token(&claims()), "issuer").await;
    let theirs = with(with(claims(), "iss", json!("https://idp.example")), "aud", json!("mesh-api"));
    accepted(&custom, &key1_token(&theirs)).await;
}

#[tokio::test]
async fn a_token_without_a_subject_is_refused() {
    let authenticator = authenticator(&file_config("jwks-key1.json")).await;
    refused(&authenticator, &key1_token(&without(claims(), "sub")), "no valid sub claim").await;
    refused(&authenticator, &key1_token(&with(claims(), "sub", json!(""))), "no subject (sub)").await;
    refused(&authenticator, &key1_token(&with(claims(), "sub", json!(null))), "no valid sub claim").await;
}

#[tokio::test]
async fn a_token_signed_by_another_key_is_refused() {
    let authenticator = authenticator(&file_config("jwks-key1.json")).await;
    // Key 2 claiming to be key 1, or key 2 with no kid against a one-key set.
    refused(&authenticator, &rs256(KEY2, Some("test-key-1"), &claims()), "signature does not verify").await;
    refused(&authenticator, &rs256(KEY2, None, &claims()), "signature does not verify").await;
    // A kid the file does not hold (a file is read once: no refetch).
    refused(&authenticator, &rs256(KEY2, Some("test-key-2"), &claims()), "names no known signing key").await;

    // A valid token whose claims were edited after signing.
    let token = key1_token(&claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged = URL_SAFE_NO_PAD.encode(with(claims(), "sub", json!("admin")).to_string());
    parts[1] = &forged;
    refused(&authenticator, &parts.join("."), "signature does not verify").await;
}

#[tokio::test]
async fn unsigned_tokens_are_refused() {
    let with_secret = AuthConfig {
        development_secret: Some(Secret::new(DEVELOPMENT_SECRET.into())),
        allow_development_tokens: true,
        ..file_config("jwks-key1.json")
    };
    for config in [file_config("jwks-key1.json"), with_secret] {
        let authenticator = authenticator(&config).await;
        for header in [json!({"alg": "none", "typ": "JWT"}), json!({"alg": "none", "kid": "test-key-1"})] {
            refused(&authenticator, &hand_made(&header, &claims(), b""), "alg none").await;
        }
        refused(&authenticator, &hand_made(&json!({"alg": "NONE"}), &claims(), b""), "algorithm is not accepted").await;
        refused(&authenticator, &hand_made(&json!({"typ": "JWT"}), &claims(), b""), "with an alg").await;
    }
}

#[tokio::test]
async fn an_hs256_token_keyed_with_the_rsa_public_key_is_refused() {
    // The classic algorithm confusion: the public key, known to everyone, used as an HMAC secret.
    let pem_body: String =
        std::str::from_utf8(KEY1_PUBLIC_PEM).unwrap().lines().filter(|line| !line.starts_with("-----")).collect();
    let spki_der = STANDARD.decode(pem_body).unwrap();
    let public_key_forms: [&[u8]; 3] = [KEY1_PUBLIC_PEM, &spki_der, KEY1_PUBLIC_PKCS1_DER];

    let jwks_only = authenticator(&file_config("jwks-key1.json")).await;
    let with_secret = AuthConfig {
        development_secret: Some(Secret::new(DEVELOPMENT_SECRET.into())),
        allow_development_tokens: true,
        ..file_config("jwks-key1.json")
    };
    let jwks_and_secret = authenticator(&with_secret).await;
    for public_key in public_key_forms {
        for kid in [Some("test-key-1"), None] {
            let token = hs256(public_key, kid, &claims());
            refused(&jwks_only, &token, "HS256 tokens are not accepted").await;
            refused(&jwks_and_secret, &token, "signature does not verify").await;
        }
    }
}

#[tokio::test]
async fn other_algorithms_are_refused_even_with_the_right_key() {
    let with_secret = AuthConfig {
        development_secret: Some(Secret::new(DEVELOPMENT_SECRET.into())),
        allow_development_tokens: true,
        ..file_config("jwks-key1.json")
    };
    let authenticator = authenticator(&with_secret).await;
    let key1 = EncodingKey::from_rsa_pem(KEY1).unwrap();
    let secret = EncodingKey::from_secret(DEVELOPMENT_SECRET.as_bytes());
    for (algorithm, key) in [
        (Algorithm::PS256, &key1),
        (Algorithm::RS384, &key1),
        (Algorithm::RS512, &key1),
        (Algorithm::HS384, &secret),
        (Algorithm::HS512, &secret),
    ] {
        let token = signed(algorithm, key, Some("test-key-1"), &claims());
        refused(&authenticator, &token, "signing algorithm is not accepted").await;
    }
    refused(&authenticator, &hand_made(&json!({"alg": "RS256", "crit": ["exp"]}), &claims(), b"sig"), "crit").await;
}

#[tokio::test]
async fn an_hs256_token_signed_with_the_development_secret_is_accepted() {
    let authenticator = authenticator(&development_config()).await;
    let caller = accepted(&authenticator, &hs256(DEVELOPMENT_SECRET.as_bytes(), None, &claims())).await;
    assert_eq!(caller.subject, "learner-42");

    let other_secret = "another development secret, 32 bytes";
    refused(&authenticator, &hs256(other_secret.as_bytes(), None, &claims()), "signature does not verify").await;
    refused(&authenticator, &key1_token(&claims()), "no JWKS is configured").await;
    refused(
        &authenticator,
        &hs256(DEVELOPMENT_SECRET.as_bytes(), None, &with(claims(), "exp", json!(now() - 3600))),
        "expired",
    )
    .await;
}

#[tokio::test]
async fn scopes_come_as_an_array_a_spaced_string_or_the_oauth_scope_claim() {
    let authenticator = authenticator(&file_config("jwks-key1.json")).await;
    let cases = [
        (with(claims(), "scopes", json!(["a", "b", ""])), scopes(&["a", "b"])),
        (with(claims(), "scopes", json!("a  b c")), scopes(&["a", "b", "c"])),
        (with(without(claims(), "scopes"), "scope", json!("x y")), scopes(&["x", "y"])),
        // `scopes` wins when both are there.
        (with(with(claims(), "scopes", json!(["a"])), "scope", json!("x")), scopes(&["a"])),
        (without(claims(), "scopes"), scopes(&[])),
        (with(claims(), "scopes", json!(null)), scopes(&[])),
    ];
    for (claims, expected) in cases {
        let caller = accepted(&authenticator, &key1_token(&claims)).await;
        assert_eq!(caller.scopes, expected, "{claims}");
    }
    refused(&authenticator, &key1_token(&with(claims(), "scopes", json!(["a", 1]))), "scopes claim must hold strings")
        .await;
    refused(&authenticator, &key1_token(&with(claims(), "scopes", json!({"a": true}))), "scopes claim must be").await;
    refused(
        &authenticator,
        &key1_token(&with(without(claims(), "scopes"), "scope", json!(["x"]))),
        "scope claim must be",
    )
    .await;
}

#[tokio::test]
async fn a_caller_missing_a_required_scope_is_forbidden() {
    let authenticator = authenticator(&file_config("jwks-key1.json")).await;
    let caller = accepted(&authenticator, &key1_token(&with(claims(), "scope", json!("ignored")))).await;
    assert_eq!(caller.require(&["orders.read".into(), "orders.write".into()]), Ok(()));

    let forbidden = caller.require(&["orders.read".into(), "admin".into()]).unwrap_err();
    assert_eq!(forbidden.missing, ["admin"]);
    assert_eq!(
        forbidden.www_authenticate(),
        "Bearer realm=\"commerce-mesh\", error=\"insufficient_scope\", scope=\"admin\""
    );
}

#[tokio::test]
async fn a_minted_development_token_round_trips() {
    let secret = Secret::new(DEVELOPMENT_SECRET.into());
    let claims = DevelopmentClaims {
        issuer: "commerce-mesh".into(),
        audience: "commerce-mesh".into(),
        subject: "developer".into(),
        scopes: vec!["fulfillment.write".into(), "catalog.read".into()],
        ttl: Duration::from_secs(3600),
    };
    let token = mint_development_token(&secret, &claims).unwrap();
    let caller = accepted(&authenticator(&development_config()).await, &token).await;
    assert_eq!(caller, Caller { subject: "developer".into(), scopes: scopes(&["catalog.read", "fulfillment.write"]) });

    // A token for another audience is minted as asked, and refused.
    let elsewhere = DevelopmentClaims { audience: "elsewhere".into(), ..claims.clone() };
    let token = mint_development_token(&secret, &elsewhere).unwrap();
    refused(&authenticator(&development_config()).await, &token, "audience").await;

    let short = Secret::new("short".into());
    assert!(matches!(mint_development_token(&short, &claims), Err(MintError::SecretTooShort { length: 5 })));
    let nobody = DevelopmentClaims { subject: String::new(), ..claims.clone() };
    assert!(matches!(mint_development_token(&secret, &nobody), Err(MintError::EmptySubject)));
    let instant = DevelopmentClaims { ttl: Duration::from_millis(500), ..claims.clone() };
    assert!(matches!(mint_development_token(&secret, &instant), Err(MintError::Lifetime)));
    let forever = DevelopmentClaims { ttl: Duration::MAX, ..claims };
    assert!(matches!(mint_development_token(&secret, &forever), Err(MintError::Lifetime)));
}

#[tokio::test]
async fn setup_refuses_configurations_that_cannot_authenticate() {
    let error = Authenticator::new(&AuthConfig::default()).await.unwrap_err();
    assert!(matches!(error, AuthSetupError::NoKeySource), "{error}");

    let error = Authenticator::new(&file_config("no-such-file.json")).await.unwrap_err();
    assert!(matches!(error, AuthSetupError::ReadJwksFile { .. }), "{error}");

    let empty = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(empty.path(), r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).unwrap();
    let config = AuthConfig { jwks_file: Some(empty.path().to_owned()), ..AuthConfig::default() };
    let error = Authenticator::new(&config).await.unwrap_err();
    assert!(matches!(error, AuthSetupError::Jwks { source: JwksError::NoUsableKey, .. }), "{error}");

    let both = AuthConfig { jwks_url: Some("http://127.0.0.1:1/jwks".into()), ..file_config("jwks-key1.json") };
    let error = Authenticator::new(&both).await.unwrap_err();
    assert!(matches!(error, AuthSetupError::TwoJwksSources), "{error}");

    let secret = "s".repeat(20);
    let short = AuthConfig { development_secret: Some(Secret::new(secret.clone())), ..AuthConfig::default() };
    let error = Authenticator::new(&short).await.unwrap_err();
    assert!(matches!(error, AuthSetupError::SecretTooShort { length: 20 }), "{error}");
    assert!(!error.to_string().contains(&secret));

    // A JWKS and a development secret: only when explicitly allowed.
    let both_kinds =
        AuthConfig { development_secret: development_config().development_secret, ..file_config("jwks-key1.json") };
    let error = Authenticator::new(&both_kinds).await.unwrap_err();
    assert!(matches!(error, AuthSetupError::DevelopmentBesideJwks), "{error}");
    assert!(Authenticator::new(&AuthConfig { allow_development_tokens: true, ..both_kinds }).await.is_ok());

    for config in [
        AuthConfig { jwks_refresh: Duration::ZERO, ..development_config() },
        AuthConfig { leeway: Duration::from_secs(2 * 3600), ..development_config() },
        AuthConfig { issuer: String::new(), ..development_config() },
        AuthConfig { audience: String::new(), ..development_config() },
    ] {
        let error = Authenticator::new(&config).await.unwrap_err();
        assert!(matches!(error, AuthSetupError::Setting { .. }), "{error}");
    }
}

async fn jwks_server() -> MockServer {
    MockServer::start().await
}

fn jwks_answer(json: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(json.as_bytes().to_vec(), "application/json")
}

fn url_config(server: &MockServer) -> AuthConfig {
    AuthConfig { jwks_url: Some(format!("{}/.well-known/jwks.json", server.uri())), ..AuthConfig::default() }
}

async fn jwks_requests(server: &MockServer) -> usize {
    server.received_requests().await.expect("wiremock records requests").len()
}

#[tokio::test]
async fn an_rs256_token_checked_against_a_jwks_url_is_accepted() {
    let server = jwks_server().await;
    Mock::given(method("GET"))
        .and(path("/.well-known/jwks.json"))
        .respond_with(jwks_answer(JWKS_KEY1))
        .mount(&server)
        .await;
    let authenticator = authenticator(&url_config(&server)).await;
    assert_eq!(accepted(&authenticator, &key1_token(&claims())).await.subject, "learner-42");
    refused(&authenticator, &rs256(KEY2, Some("test-key-1"), &claims()), "signature does not verify").await;
    // Keys are cached: verifying fetched nothing more.
    assert_eq!(jwks_requests(&server).await, 1);
}

#[tokio::test]
async fn a_jwks_url_that_cannot_be_read_at_start_is_a_setup_error() {
    let server = jwks_server().await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(404)).up_to_n_times(1).mount(&server).await;
    Mock::given(method("GET")).respond_with(jwks_answer("<html>login</html>")).mount(&server).await;

    let error = Authenticator::new(&url_config(&server)).await.unwrap_err();
    assert!(
        matches!(error, AuthSetupError::Jwks { source: JwksError::Status(http::StatusCode::NOT_FOUND), .. }),
        "{error}"
    );
    let error = Authenticator::new(&url_config(&server)).await.unwrap_err();
    assert!(matches!(error, AuthSetupError::Jwks { source: JwksError::Json(_), .. }), "{error}");

    let unreachable = AuthConfig { jwks_url: Some("http://127.0.0.1:1/jwks".into()), ..AuthConfig::default() };
    let error = Authenticator::new(&unreachable).await.unwrap_err();
    assert!(matches!(error, AuthSetupError::Jwks { source: JwksError::Request(_), .. }), "{error}");
}

/// Waits (at most 10 s) until the JWKS server has had `count` requests.
async fn wait_for_jwks_requests(server: &MockServer, count: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while jwks_requests(server).await < count {
        assert!(std::time::Instant::now() < deadline, "the JWKS was never fetched {count} times");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_rotated_key_is_refused_once_and_accepted_after_the_background_fetch() {
    let server = jwks_server().await;
    // First the old set, then the set with the rotated-in key 2.
    Mock::given(method("GET")).respond_with(jwks_answer(JWKS_KEY1)).up_to_n_times(1).mount(&server).await;
    Mock::given(method("GET")).respond_with(jwks_answer(JWKS_BOTH)).mount(&server).await;
    let authenticator = authenticator(&url_config(&server)).await;
    assert_eq!(jwks_requests(&server).await, 1);

    let key2_token = rs256(KEY2, Some("test-key-2"), &claims());
    // Refused at once, without waiting for the fetch it starts.
    refused(&authenticator, &key2_token, "names no known signing key").await;
    wait_for_jwks_requests(&server, 2).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let caller = loop {
        match authenticator.authenticate(Some(&bearer(&key2_token))).await {
            Ok(caller) => break caller,
            Err(rejection) => assert!(std::time::Instant::now() < deadline, "never accepted: {rejection}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(caller.subject, "learner-42");

    // Known now: no more fetches.
    accepted(&authenticator, &key2_token).await;
    accepted(&authenticator, &key1_token(&claims())).await;
    assert_eq!(jwks_requests(&server).await, 2);
}

#[tokio::test]
async fn unknown_kids_refetch_the_jwks_at_most_once_per_cooldown() {
    let server = jwks_server().await;
    // The start and the first refetch see key 1 only; key 2 appears later.
    Mock::given(method("GET")).respond_with(jwks_answer(JWKS_KEY1)).up_to_n_times(2).mount(&server).await;
    Mock::given(method("GET")).respond_with(jwks_answer(JWKS_BOTH)).mount(&server).await;
    let config = AuthConfig { jwks_refetch_cooldown: Duration::from_secs(3600), ..url_config(&server) };
    let authenticator = authenticator(&config).await;
    let key2_token = rs256(KEY2, Some("test-key-2"), &claims());

    refused(&authenticator, &key2_token, "names no known signing key").await;
    wait_for_jwks_requests(&server, 2).await;

    // Within the cooldown, neither the same nor another unknown kid fetches again,
    // even though the server would now answer with key 2.
    for _ in 0..10 {
        refused(&authenticator, &key2_token, "names no known signing key").await;
        refused(&authenticator, &rs256(KEY2, Some("made-up"), &claims()), "names no known signing key").await;
    }
    // No fetch was started (the cooldown is checked before one is spawned);
    // yield anyway, so one wrongly started would have reached the server.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(jwks_requests(&server).await, 2);
    accepted(&authenticator, &key1_token(&claims())).await;
}

#[tokio::test]
async fn without_a_cooldown_unknown_kids_keep_refetching_one_fetch_at_a_time() {
    let server = jwks_server().await;
    Mock::given(method("GET")).respond_with(jwks_answer(JWKS_KEY1)).mount(&server).await;
    let config = AuthConfig { jwks_refetch_cooldown: Duration::ZERO, ..url_config(&server) };
    let authenticator = authenticator(&config).await;
    // Each refusal starts a fetch unless one is still running.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while jwks_requests(&server).await < 5 {
        assert!(std::time::Instant::now() < deadline, "unknown kids stopped causing fetches");
        refused(&authenticator, &rs256(KEY2, Some("test-key-2"), &claims()), "names no known signing key").await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn the_authenticator_can_be_shared_across_tasks() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<Authenticator>();
}
