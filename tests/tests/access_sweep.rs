//! Access sweep: every operation the gateway documents in `/openapi.json`,
//! sent without a token, with a malformed `Authorization` header, with an
//! expired, forged, wrong-audience, wrong-issuer or unsigned (`alg: none`)
//! token, and with a token holding every scope but the operation's. Each is
//! refused (401 with a Bearer challenge, or 403) with a `google.rpc.Status`
//! body, and no service counts a call (`rpc_server_requests_total` on the
//! admin port). Afterwards one valid request per operation does reach its
//! service: the sweep's requests were well-formed and the counters count.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use commerce_mesh::{Component, MeshConfig};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kit::shutdown::Shutdown;
use serde_json::{Value, json};

/// Bounds a hung start, not a timing assertion.
const GUARD: Duration = Duration::from_secs(30);
/// The HTTP methods OpenAPI 3.1 has path item fields for.
const VERBS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
/// Far past the gateway's leeway (30 s by default).
const EXPIRED_AGO_SECS: i64 = 3600;

/// One documented operation, ready to send.
struct Operation {
    method: reqwest::Method,
    /// The OpenAPI path, `/v1/customers/{customer_id}`.
    template: String,
    /// The path with every variable filled in.
    path: String,
    scopes: Vec<String>,
    /// The RPC it calls, from its operationId (`CustomerIdentityService_GetCustomer`).
    rpc_method: String,
    /// The content type of its request body, when it has one.
    body_type: Option<String>,
}

impl Operation {
    fn label(&self) -> String {
        format!("{} {}", self.method, self.template)
    }
}

/// How a probe must be refused.
#[derive(Clone, Copy)]
enum Expect {
    /// 401; `token_presented` decides whether the challenge carries `error="invalid_token"`;
    /// the status message contains `reason`.
    Unauthenticated { token_presented: bool, reason: &'static str },
    /// 403, naming the operation's scopes.
    Forbidden,
}

struct Probe {
    name: &'static str,
    authorization: Option<String>,
    expect: Expect,
}

/// Claims that would be accepted, but for what the caller changes.
fn claims(issuer: &str, audience: &str, scopes: &[String], expires_in: i64) -> Value {
    let now = i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap();
    json!({
        "iss": issuer,
        "aud": audience,
        "sub": "access-sweep",
        "iat": now.min(now + expires_in) - 60,
        "exp": now + expires_in,
        "scopes": scopes,
    })
}

fn hs256(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// base64url without padding (RFC 7515 §2); jsonwebtoken will not encode `alg: none`, so it is built here.
fn base64url(bytes: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
}

/// An unsigned JWS (`alg: none`, empty signature) carrying `claims`.
fn unsigned(claims: &Value) -> String {
    let header = base64url(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = base64url(claims.to_string().as_bytes());
    format!("{header}.{payload}.")
}

/// A plausible value for a path variable, by the field it binds.
fn path_value(variable: &str) -> &'static str {
    match variable {
        "customer_id" => "c-access-1",
        "order_number" => "EDX-ACCESS-1",
        "fulfillment_id" | "ingestion_id" => "0190f0c4-7b4e-7000-8000-000000000001",
        "course_run_key" => "course-v1:edX+DemoX+2025_T1",
        "product_key" => "course-v1:edX+DemoX",
        "source" => "bootcamp-hub",
        "username" => "ada",
        _ => "access-sweep",
    }
}

/// `template` with each `{variable}` filled in, and an anonymous `*` or `**` segment too.
fn fill(template: &str) -> String {
    let mut path = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        path.push_str(&rest[..open]);
        let close = rest[open..].find('}').map(|close| open + close).expect("a closed variable");
        path.push_str(path_value(&rest[open + 1..close]));
        rest = &rest[close + 1..];
    }
    path.push_str(rest);
    path.split('/').map(|segment| if segment.starts_with('*') { "any" } else { segment }).collect::<Vec<_>>().join("/")
}

/// Every operation of the document, in path order.
fn operations(openapi: &Value) -> Vec<Operation> {
    let mut found = Vec::new();
    for (template, item) in openapi["paths"].as_object().expect("paths") {
        for (verb, operation) in item.as_object().expect("a path item") {
            if !VERBS.contains(&verb.as_str()) {
                continue;
            }
            // A webhook is signed, not bearer-authenticated: it declares no security and a signature header.
            if operation["security"] == serde_json::json!([]) {
                let signed = operation["parameters"].as_array().is_some_and(|parameters| {
                    parameters
                        .iter()
                        .any(|p| p["in"] == "header" && p["name"] == "Stripe-Signature" && p["required"] == true)
                });
                assert!(signed, "{verb} {template} takes no bearer token and no signature");
                continue;
            }
            let scopes: Vec<String> = operation["x-required-scopes"]
                .as_array()
                .unwrap_or_else(|| panic!("{verb} {template} has x-required-scopes"))
                .iter()
                .map(|scope| scope.as_str().expect("a scope string").to_string())
                .collect();
            let operation_id = operation["operationId"].as_str().expect("operationId");
            // `<Service>_<Method>`, or `<Service>_<Method>_<n>` for an additional binding.
            let rpc_method = operation_id
                .rsplit('_')
                .find(|part| !part.chars().all(|c| c.is_ascii_digit()))
                .expect("a method in the operationId")
                .to_string();
            let body_type = operation["requestBody"]["content"]
                .as_object()
                .map(|content| content.keys().next().expect("a request body media type").to_string());
            found.push(Operation {
                method: reqwest::Method::from_bytes(verb.to_ascii_uppercase().as_bytes()).unwrap(),
                template: template.clone(),
                path: fill(template),
                scopes,
                rpc_method,
                body_type,
            });
        }
    }
    found
}

/// Every `rpc_server_requests_total` series of a service (not the gateway),
/// by its label text. Health checks are left out: the readiness waits' watch
/// streams are counted when they close, whenever that is.
async fn service_calls(client: &reqwest::Client, admin: &str) -> BTreeMap<String, u64> {
    let text = client.get(format!("{admin}/metrics")).send().await.unwrap().text().await.unwrap();
    let mut series = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("rpc_server_requests_total{") else { continue };
        let (labels, value) = rest.split_once("} ").expect("labels then a value");
        if labels.contains("component=\"gateway\"") || labels.contains("rpc_service=\"grpc.health.v1.Health\"") {
            continue;
        }
        let value: u64 = value.split_whitespace().next().expect("a value").parse().expect("a whole count");
        series.insert(labels.to_string(), value);
    }
    series
}

fn calls_of(series: &BTreeMap<String, u64>, rpc_method: &str) -> u64 {
    let label = format!("rpc_method=\"{rpc_method}\"");
    series.iter().filter(|(labels, _)| labels.contains(&label)).map(|(_, value)| value).sum()
}

async fn send(
    client: &reqwest::Client,
    base: &str,
    operation: &Operation,
    authorization: Option<&str>,
) -> reqwest::Response {
    let mut request = client.request(operation.method.clone(), format!("{base}{}", operation.path));
    if let Some(authorization) = authorization {
        request = request.header(reqwest::header::AUTHORIZATION, authorization);
    }
    if let Some(content_type) = &operation.body_type {
        request = request.header(reqwest::header::CONTENT_TYPE, content_type).body("{}");
    }
    request.send().await.unwrap()
}

/// Checks one refusal; answers its HTTP status.
async fn check_refusal(operation: &Operation, probe: &Probe, response: reqwest::Response) -> u16 {
    let what = format!("{} with {}", operation.label(), probe.name);
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .map(|value| value.to_str().expect("a visible ASCII challenge").to_string());
    let content_type = response.headers().get(reqwest::header::CONTENT_TYPE).cloned();
    let body: Value = response.json().await.unwrap_or_else(|e| panic!("{what}: the body is JSON: {e}"));
    assert!(
        content_type.is_some_and(|value| value.to_str().is_ok_and(|v| v.starts_with("application/json"))),
        "{what}: a JSON body"
    );
    let message = body["message"].as_str().unwrap_or_else(|| panic!("{what}: a google.rpc.Status body: {body}"));
    let challenge = challenge.unwrap_or_else(|| panic!("{what}: a WWW-Authenticate header ({status} {body})"));
    match probe.expect {
        Expect::Unauthenticated { token_presented, reason } => {
            assert_eq!(status, 401, "{what}: {body}");
            assert_eq!(body["code"], 16, "{what}: UNAUTHENTICATED: {body}");
            assert!(message.contains(reason), "{what}: refused because {reason:?}, not {message:?}");
            if token_presented {
                assert!(
                    challenge.starts_with("Bearer realm=\"commerce-mesh\", error=\"invalid_token\""),
                    "{what}: {challenge}"
                );
            } else {
                assert_eq!(challenge, "Bearer realm=\"commerce-mesh\"", "{what}");
            }
        }
        Expect::Forbidden => {
            assert_eq!(status, 403, "{what}: {body}");
            assert_eq!(body["code"], 7, "{what}: PERMISSION_DENIED: {body}");
            let scopes = operation.scopes.join(" ");
            assert_eq!(
                challenge,
                format!("Bearer realm=\"commerce-mesh\", error=\"insufficient_scope\", scope=\"{scopes}\""),
                "{what}"
            );
        }
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_refuses_every_bad_credential_and_never_reaches_a_service() {
    let data = tempfile::tempdir().unwrap();
    let mut config = MeshConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
    config.use_ephemeral_ports();
    // A fresh random secret, set explicitly as an operator would.
    let secret = commerce_mesh::dev_tokens::load_or_create_secret(&data.path().join("secret")).unwrap();
    let secret_bytes = secret.expose().as_bytes().to_vec();
    config.auth.development_secret = Some(secret);
    // Nothing in the sweep should enqueue LMS work; if it did, it goes nowhere.
    config.fulfillment.settings.lms.url = "http://127.0.0.1:9".into();
    let issuer = config.auth.issuer.clone();
    let audience = config.auth.audience.clone();

    let mesh = commerce_mesh::start(config.clone(), Shutdown::new()).await.expect("mesh starts");
    for component in
        [Component::CustomerIdentity, Component::PurchaseHistory, Component::Fulfillment, Component::CatalogIngest]
    {
        mesh_tests::health::wait_serving(&mesh.grpc_url(component), GUARD).await.expect("ready");
    }
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = mesh.url(Component::Gateway);
    let admin = mesh.admin_url();

    let openapi: Value = client.get(format!("{base}/openapi.json")).send().await.unwrap().json().await.unwrap();
    let operations = operations(&openapi);
    let documented_scopes: BTreeSet<String> = operations.iter().flat_map(|op| op.scopes.clone()).collect();
    let every_scope: BTreeSet<String> = commerce_mesh::dev_tokens::every_scope().into_iter().collect();
    assert_eq!(documented_scopes, every_scope, "every scope an RPC requires belongs to a documented operation");
    for operation in &operations {
        assert!(!operation.scopes.is_empty(), "{} requires some scope", operation.label());
    }
    let all_scopes: Vec<String> = every_scope.iter().cloned().collect();

    // Each token is wrong in exactly one way and otherwise grants every scope.
    let valid = claims(&issuer, &audience, &all_scopes, 600);
    let bearer = |token: String| Some(format!("Bearer {token}"));
    let common_probes = [
        Probe {
            name: "no Authorization",
            authorization: None,
            expect: Expect::Unauthenticated { token_presented: false, reason: "no bearer token" },
        },
        Probe {
            name: "another scheme (Basic)",
            authorization: Some("Basic YWNjZXNzOnN3ZWVw".into()),
            expect: Expect::Unauthenticated { token_presented: false, reason: "Bearer scheme" },
        },
        Probe {
            name: "a bearer value that is not a JWT",
            authorization: Some("Bearer not-a-jwt".into()),
            expect: Expect::Unauthenticated { token_presented: true, reason: "not a JWT" },
        },
        Probe {
            name: "an expired token",
            authorization: bearer(hs256(&secret_bytes, &claims(&issuer, &audience, &all_scopes, -EXPIRED_AGO_SECS))),
            expect: Expect::Unauthenticated { token_presented: true, reason: "expired" },
        },
        Probe {
            name: "a forged token (another secret)",
            authorization: bearer(hs256(b"not the gateway's secret, though 32+ bytes long", &valid)),
            expect: Expect::Unauthenticated { token_presented: true, reason: "signature does not verify" },
        },
        Probe {
            name: "a token for another audience",
            authorization: bearer(hs256(&secret_bytes, &claims(&issuer, "another-api", &all_scopes, 600))),
            expect: Expect::Unauthenticated { token_presented: true, reason: "audience" },
        },
        Probe {
            name: "a token from another issuer",
            authorization: bearer(hs256(&secret_bytes, &claims("another-issuer", &audience, &all_scopes, 600))),
            expect: Expect::Unauthenticated { token_presented: true, reason: "issuer" },
        },
        Probe {
            name: "an unsigned token (alg none)",
            authorization: bearer(unsigned(&valid)),
            expect: Expect::Unauthenticated { token_presented: true, reason: "alg none" },
        },
    ];

    let before = service_calls(&client, &admin).await;
    let started = std::time::Instant::now();
    let (mut requests, mut refused_401, mut refused_403) = (0u64, 0u64, 0u64);
    for operation in &operations {
        let others: Vec<String> =
            every_scope.iter().filter(|scope| !operation.scopes.contains(scope)).cloned().collect();
        let lacking = Probe {
            name: "a valid token without the operation's scopes",
            authorization: bearer(hs256(&secret_bytes, &claims(&issuer, &audience, &others, 600))),
            expect: Expect::Forbidden,
        };
        for probe in common_probes.iter().chain([&lacking]) {
            let response = send(&client, &base, operation, probe.authorization.as_deref()).await;
            requests += 1;
            match check_refusal(operation, probe, response).await {
                401 => refused_401 += 1,
                _ => refused_403 += 1,
            }
        }
    }
    let sweep_time = started.elapsed();
    let after = service_calls(&client, &admin).await;
    let reached: u64 =
        after.iter().map(|(labels, value)| value.saturating_sub(before.get(labels).copied().unwrap_or(0))).sum();
    assert_eq!(after, before, "no refused request reached a service");

    // Positive control: with every scope, each operation's request reaches its RPC (whatever the
    // service answers to `{}`), so the sweep's requests were routable and the counters count.
    let token = commerce_mesh::dev_tokens::mint(&config, "access-sweep", all_scopes.clone(), Duration::from_secs(600))
        .expect("a development token");
    let authorization = format!("Bearer {token}");
    for operation in &operations {
        let counted = calls_of(&service_calls(&client, &admin).await, &operation.rpc_method);
        let response = send(&client, &base, operation, Some(&authorization)).await;
        let status = response.status().as_u16();
        assert!(!matches!(status, 401 | 403), "{}: a valid token is accepted ({status})", operation.label());
        let now = calls_of(&service_calls(&client, &admin).await, &operation.rpc_method);
        assert!(now > counted, "{} reached {} ({status})", operation.label(), operation.rpc_method);
    }

    println!("access sweep: {} operations, {requests} refused requests in {sweep_time:?}", operations.len());
    // Written by hand to keep the keys in this order.
    println!(
        "RELIABILITY-FIGURES {{\"suite\":\"access\",\"operations\":{},\"requests\":{requests},\
         \"refused_401\":{refused_401},\"refused_403\":{refused_403},\"reached_service\":{reached}}}",
        operations.len()
    );
    mesh.stop().await.expect("clean stop");
}

/// Sends an empty message to `path` on `url` over HTTP/2, as any gRPC client
/// could; answers the `grpc-status` of a refusal (trailers-only, in the
/// headers), or None when the call reached its handler and answered in trailers.
async fn grpc_status(client: &reqwest::Client, url: &str, path: &str, authorization: Option<&str>) -> Option<i32> {
    let mut request = client
        .post(format!("{url}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(vec![0u8; 5]);
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(response.status(), 200, "{path}: gRPC answers HTTP 200");
    response.headers().get("grpc-status").map(|status| status.to_str().unwrap().parse().unwrap())
}

/// The component serving `path` (`/package.Service/Method`).
fn component_of(path: &str) -> Component {
    let service = path.trim_start_matches('/').split('/').next().unwrap();
    // The four services, then the dead-letter services beside Fulfillment and PurchaseHistory.
    let components = [
        Component::Fulfillment,
        Component::CustomerIdentity,
        Component::CatalogIngest,
        Component::PurchaseHistory,
        Component::Fulfillment,
        Component::PurchaseHistory,
    ];
    let index =
        proto::COMMERCE_SERVICES.iter().chain(&proto::DEAD_LETTER_SERVICES).position(|name| *name == service).unwrap();
    components[index]
}

/// The same sweep without the gateway: every RPC of every service, called
/// directly over gRPC. No token, a bad one, a token lacking the RPC's
/// scopes, or a peer's identity the configuration does not let call it is
/// refused (UNAUTHENTICATED, PERMISSION_DENIED) before any handler runs;
/// with the right scopes the call reaches its handler. Reflection is on in
/// `up` (a laptop), and the mesh's own peer calls go through (the order that
/// names only a customer is resolved by Fulfillment calling CustomerIdentity).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_called_directly_checks_its_caller() {
    const UNAUTHENTICATED: i32 = 16;
    const PERMISSION_DENIED: i32 = 7;
    let data = tempfile::tempdir().unwrap();
    let mut config = MeshConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
    config.use_ephemeral_ports();
    let secret = commerce_mesh::dev_tokens::load_or_create_secret(&data.path().join("secret")).unwrap();
    let secret_bytes = secret.expose().as_bytes().to_vec();
    config.auth.development_secret = Some(secret);
    config.fulfillment.settings.lms.url = "http://127.0.0.1:9".into();
    let (issuer, audience) = (config.auth.issuer.clone(), config.auth.audience.clone());
    let peers = config.auth.peers.clone();
    let mesh = commerce_mesh::start(config.clone(), Shutdown::new()).await.expect("mesh starts");
    for component in
        [Component::CustomerIdentity, Component::PurchaseHistory, Component::Fulfillment, Component::CatalogIngest]
    {
        mesh_tests::health::wait_serving(&mesh.grpc_url(component), GUARD).await.expect("ready");
    }
    let client = reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().unwrap();
    let rules = proto::access_rules().unwrap();
    let every_scope: Vec<String> = commerce_mesh::dev_tokens::every_scope();
    assert!(rules.len() >= 20, "every RPC of the four services has a rule: {}", rules.len());

    let bearer = |claims: &Value| format!("Bearer {}", hs256(&secret_bytes, claims));
    let peer = |component: &str| {
        let mut claims = claims(&peers.issuer, &peers.audience, &[], 600);
        claims["sub"] = json!(kit::access::peer_subject("development", component));
        bearer(&claims)
    };
    let grants = config.peer_grants();
    let (mut refused, mut reached) = (0u32, 0u32);
    for (path, scopes) in &rules {
        let url = mesh.grpc_url(component_of(path));
        let others: Vec<String> = every_scope.iter().filter(|scope| !scopes.contains(scope)).cloned().collect();
        let expired = bearer(&claims(&issuer, &audience, &every_scope, -EXPIRED_AGO_SECS));
        let forged = format!(
            "Bearer {}",
            hs256(b"not the mesh's secret, though 32+ bytes long", &claims(&issuer, &audience, &every_scope, 600))
        );
        let probes: [(&str, Option<String>, i32); 6] = [
            ("no token", None, UNAUTHENTICATED),
            ("not a JWT", Some("Bearer not-a-jwt".into()), UNAUTHENTICATED),
            ("expired", Some(expired), UNAUTHENTICATED),
            ("forged", Some(forged), UNAUTHENTICATED),
            (
                "an unsigned token",
                Some(format!("Bearer {}", unsigned(&claims(&issuer, &audience, &every_scope, 600)))),
                UNAUTHENTICATED,
            ),
            ("every scope but the RPC's", Some(bearer(&claims(&issuer, &audience, &others, 600))), PERMISSION_DENIED),
        ];
        for (probe, authorization, expected) in probes {
            let status = grpc_status(&client, &url, path, authorization.as_deref()).await;
            assert_eq!(status, Some(expected), "{path}, {probe}");
            refused += 1;
        }
        // Each component's own identity: what its configuration lets it call, and nothing else.
        for component in Component::ALL.map(Component::name) {
            let granted = grants.get(component).cloned().unwrap_or_default();
            let allowed = scopes.iter().all(|scope| granted.contains(scope));
            let status = grpc_status(&client, &url, path, Some(&peer(component))).await;
            if allowed {
                assert!(
                    !matches!(status, Some(UNAUTHENTICATED | PERMISSION_DENIED)),
                    "{path}: {component} may call it"
                );
            } else {
                assert_eq!(status, Some(PERMISSION_DENIED), "{path}: {component} may not call it");
                refused += 1;
            }
        }
        let status = grpc_status(&client, &url, path, Some(&bearer(&claims(&issuer, &audience, scopes, 600)))).await;
        assert!(
            !matches!(status, Some(UNAUTHENTICATED | PERMISSION_DENIED)),
            "{path}: its scopes admit the call ({status:?})"
        );
        reached += 1;
    }
    // A peer of another namespace, or a subject that is no service account, is no peer.
    let mut elsewhere = claims(&peers.issuer, &peers.audience, &[], 600);
    elsewhere["sub"] = json!("someone-else");
    let path = "/commerce.identity.v1.CustomerIdentityService/GetCustomer";
    let status =
        grpc_status(&client, &mesh.grpc_url(Component::CustomerIdentity), path, Some(&bearer(&elsewhere))).await;
    assert_eq!(status, Some(UNAUTHENTICATED));

    // The right scopes: OK, through generated clients as internal callers use them.
    use proto::commerce::catalog::v1::catalog_ingest_service_client::CatalogIngestServiceClient;
    use proto::commerce::identity::v1::customer_identity_service_client::CustomerIdentityServiceClient;
    let mut identity = CustomerIdentityServiceClient::new(mesh.grpc_channel(Component::CustomerIdentity));
    let upserted = identity
        .upsert_customer(proto::commerce::identity::v1::UpsertCustomerRequest {
            customer_id: "c-direct".into(),
            lms_user_id: "77".into(),
            lms_username: "direct_learner".into(),
            email: String::new(),
            expected_version: None,
        })
        .await
        .expect("OK with identity:write");
    assert!(upserted.into_inner().created);
    let mut catalog = CatalogIngestServiceClient::new(mesh.grpc_channel(Component::CatalogIngest));
    catalog
        .list_products(proto::commerce::catalog::v1::ListProductsRequest::default())
        .await
        .expect("OK with catalog:read");
    // Reflection is on under `up`, open like health.
    let reflection = grpc_status(
        &client,
        &mesh.grpc_url(Component::CustomerIdentity),
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        None,
    )
    .await;
    assert_ne!(reflection, Some(UNAUTHENTICATED), "reflection needs no token in up");
    println!("direct gRPC sweep: {} RPCs, {refused} refused calls, {reached} admitted", rules.len());
    mesh.stop().await.expect("clean stop");
}

/// `up` beside a JWKS (callers' tokens from a real issuer, no development
/// tokens): the components still call each other, with development
/// identities of their own that no caller can present. An order naming only
/// a customer is resolved by Fulfillment calling CustomerIdentity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beside_a_jwks_up_still_calls_its_own_components() {
    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/kit/tests/keys");
    let data = tempfile::tempdir().unwrap();
    let mut config = MeshConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
    config.use_ephemeral_ports();
    config.auth.jwks_file = Some(keys.join("jwks-key1.json"));
    config.fulfillment.settings.lms.url = "http://127.0.0.1:9".into();
    let (issuer, audience) = (config.auth.issuer.clone(), config.auth.audience.clone());
    let mesh = commerce_mesh::start(config, Shutdown::new()).await.expect("mesh starts");
    for component in [Component::CustomerIdentity, Component::Fulfillment] {
        mesh_tests::health::wait_serving(&mesh.grpc_url(component), GUARD).await.expect("ready");
    }
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("test-key-1".into());
    let key = EncodingKey::from_rsa_pem(&std::fs::read(keys.join("key1.pem")).unwrap()).unwrap();
    let scopes: Vec<String> = ["identity:write", "fulfillment:write"].map(String::from).to_vec();
    let token = jsonwebtoken::encode(&header, &claims(&issuer, &audience, &scopes, 600), &key).unwrap();
    let caller = |component| {
        let credential = kit::credential::Credential::bearer(&token).unwrap();
        kit::client::channel_as(&mesh.grpc_url(component), credential).unwrap()
    };
    use proto::commerce::fulfillment::v1 as fulfillment;
    use proto::commerce::identity::v1::customer_identity_service_client::CustomerIdentityServiceClient;
    let mut identity = CustomerIdentityServiceClient::new(caller(Component::CustomerIdentity));
    identity
        .upsert_customer(proto::commerce::identity::v1::UpsertCustomerRequest {
            customer_id: "c-jwks".into(),
            lms_user_id: "4343".into(),
            lms_username: "jwks_learner".into(),
            email: String::new(),
            expected_version: None,
        })
        .await
        .expect("an RS256 caller's token is accepted");
    let order = fulfillment::FulfillOrderRequest {
        order_number: "EDX-JWKS".into(),
        date_placed: Some(kit::time::to_timestamp(chrono::Utc::now())),
        learner: Some(fulfillment::Learner { customer_id: "c-jwks".into(), ..Default::default() }),
        line_items: vec![fulfillment::LineItem {
            line_item_id: "l1".into(),
            product: Some(fulfillment::line_item::Product::CourseRun(fulfillment::CourseRunEnrollment {
                course_run_key: "course-v1:edX+Jwks+T1".into(),
                mode: "verified".into(),
                credit_provider_id: String::new(),
            })),
            price: Some(proto::commerce::r#type::v1::Money { currency_code: "USD".into(), amount: "10.00".into() }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut orders =
        fulfillment::fulfillment_service_client::FulfillmentServiceClient::new(caller(Component::Fulfillment));
    let accepted = orders.fulfill_order(order).await.expect("Fulfillment resolved the customer as a peer");
    let learner = accepted.into_inner().fulfillments[0].learner.clone().unwrap();
    assert_eq!(learner.lms_username, "jwks_learner");
    // Callers need the issuer's tokens here: `grpc_channel` has no development token to offer.
    let mut developer = CustomerIdentityServiceClient::new(mesh.grpc_channel(Component::CustomerIdentity));
    let refused = developer
        .get_customer(proto::commerce::identity::v1::GetCustomerRequest { customer_id: "c-jwks".into() })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    mesh.stop().await.expect("clean stop");
}
