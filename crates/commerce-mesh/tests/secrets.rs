//! Secrets never reach the logs: the binary's `up`, logging at `debug`, with
//! every secret set through the environment (the gateway's development
//! secret, the LMS client secret, the retirement salt, a Postgres password in
//! `MESH_DATABASE_URL`), is exercised so that each is used: tokens valid and
//! not through the gateway, an order whose enrollment makes Fulfillment fetch
//! an LMS token with the client secret and then fail, a customer retired with
//! the salt. Afterwards neither stdout nor stderr holds a secret, a bearer
//! token sent, or the access token the LMS issued, while the logs do record
//! what happened. Once with JSON log lines, once with text lines (which print
//! the fields of the spans an event is in, not only the event's).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

mod support;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;
use support::{HANG_GUARD, mesh_command, wait_serving};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use kit::auth::{DevelopmentClaims, Secret};
use serde_json::{Value, json};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// What the LMS answers every enrollment: a transient failure Fulfillment logs and retries.
const LMS_OUTAGE: &str = "the LMS is down for maintenance";
/// What Fulfillment logs when an LMS call fails (services/fulfillment/src/worker.rs).
const LMS_FAILURE_LOG: &str = "LMS attempt failed";

/// Something distinctive and random: a match in the logs can only be a leak.
fn random_secret(prefix: &str) -> String {
    format!("{prefix}{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// Where `MESH_DATABASE_URL` carries the password.
#[derive(Clone, Copy, Debug)]
enum PasswordIn {
    /// `postgres://role:password@host/db`.
    Userinfo,
    /// `postgres://role@host/db?password=password`, which sqlx accepts too.
    Query,
}

/// A Postgres role with a password and a database it owns, both dropped with this value.
struct PasswordDatabase {
    role: String,
    /// `postgres://role:password@host:port/database`, or with `?password=`.
    url: String,
}

impl PasswordDatabase {
    async fn create(password: &str, password_in: PasswordIn) -> Self {
        let admin_url = kit::testing::postgres_admin_url();
        let role = format!("mesh_secret_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnectOptions::from_str(&admin_url).unwrap().connect().await.expect("test Postgres");
        // Names and password are hex made here, so quoting them inline is safe.
        for statement in [
            format!("CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'"),
            format!("CREATE DATABASE \"{role}\" OWNER \"{role}\""),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut admin).await.expect("create role and database");
        }
        admin.close().await.ok();
        let mut url = reqwest::Url::parse(&admin_url).expect("admin URL parses");
        url.set_username(&role).unwrap();
        url.set_path(&role);
        match password_in {
            PasswordIn::Userinfo => url.set_password(Some(password)).unwrap(),
            PasswordIn::Query => drop(url.query_pairs_mut().append_pair("password", password)),
        }
        Self { role, url: url.to_string() }
    }
}

impl Drop for PasswordDatabase {
    fn drop(&mut self) {
        let role = self.role.clone();
        let admin_url = kit::testing::postgres_admin_url();
        // Drop runs outside any async context we can rely on: a thread with its own runtime.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let mut admin = PgConnectOptions::from_str(&admin_url).ok()?.connect().await.ok()?;
                for statement in [
                    format!("DROP DATABASE IF EXISTS \"{role}\" WITH (FORCE)"),
                    format!("DROP ROLE IF EXISTS \"{role}\""),
                ] {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut admin).await.ok()?;
                }
                Some(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("note: the Postgres role and database {} were left behind", self.role);
        }
    }
}

/// What the stand-in LMS was asked.
#[derive(Debug)]
enum LmsCall {
    /// `POST /oauth2/access_token`, with its form body.
    Token { form: String },
    /// `POST /api/enrollment/v1/enrollment`, with its `Authorization` header.
    Enrollment { authorization: Option<String> },
}

#[derive(Clone)]
struct LmsState {
    calls: mpsc::UnboundedSender<LmsCall>,
    access_token: String,
}

async fn issue_token(State(lms): State<LmsState>, form: String) -> axum::Json<Value> {
    let _ = lms.calls.send(LmsCall::Token { form });
    axum::Json(json!({"access_token": lms.access_token, "token_type": "JWT", "expires_in": 3600}))
}

async fn refuse_enrollment(State(lms): State<LmsState>, headers: HeaderMap) -> (StatusCode, &'static str) {
    let authorization = headers.get("authorization").and_then(|value| value.to_str().ok()).map(String::from);
    let _ = lms.calls.send(LmsCall::Enrollment { authorization });
    (StatusCode::SERVICE_UNAVAILABLE, LMS_OUTAGE)
}

/// An LMS that issues `access_token` to any client, then fails every enrollment (503).
async fn failing_lms(access_token: String) -> (String, mpsc::UnboundedReceiver<LmsCall>, tokio::task::JoinHandle<()>) {
    let (calls, received) = mpsc::unbounded_channel();
    let app = axum::Router::new()
        .route("/oauth2/access_token", post(issue_token))
        .route("/api/enrollment/v1/enrollment", post(refuse_enrollment))
        .with_state(LmsState { calls, access_token });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, received, server)
}

async fn next_call(calls: &mut mpsc::UnboundedReceiver<LmsCall>) -> LmsCall {
    tokio::time::timeout(HANG_GUARD, calls.recv()).await.expect("the LMS is called").expect("the LMS runs")
}

/// The running binary's stdout, a line at a time as it comes, and all of it at the end.
struct Output {
    lines: mpsc::UnboundedReceiver<String>,
    stdout: tokio::task::JoinHandle<Vec<String>>,
    stderr: tokio::task::JoinHandle<String>,
}

impl Output {
    fn capture(child: &mut Child) -> Self {
        let (sender, lines) = mpsc::unbounded_channel();
        let mut reader = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let stdout = tokio::spawn(async move {
            let mut all = Vec::new();
            while let Ok(Some(line)) = reader.next_line().await {
                let _ = sender.send(line.clone());
                all.push(line);
            }
            all
        });
        let mut stderr_pipe = child.stderr.take().expect("stderr");
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr_pipe.read_to_string(&mut text).await;
            text
        });
        Self { lines, stdout, stderr }
    }

    /// Reads lines until one satisfies `wanted`; answers it.
    async fn wait_for(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        tokio::time::timeout(HANG_GUARD, async {
            while let Some(line) = self.lines.recv().await {
                if wanted(&line) {
                    return line;
                }
            }
            panic!("stdout ended before {what}");
        })
        .await
        .unwrap_or_else(|_| panic!("no {what} on stdout"))
    }
}

async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `text` without ANSI colour sequences (`ESC [ ... m`), as the text log format writes them.
fn without_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

async fn secrets_stay_out_of_the_logs(log_format: &str, password_in: PasswordIn) {
    let development_secret = random_secret("gwsecret");
    let client_secret = random_secret("lmsclientsecret");
    let retirement_salt = random_secret("retirementsalt");
    let database_password = random_secret("dbpassword");
    let lms_access_token = random_secret("lmsaccesstoken");
    let database = PasswordDatabase::create(&database_password, password_in).await;
    let (lms_url, mut lms_calls, lms_server) = failing_lms(lms_access_token.clone()).await;

    // Tokens are secrets too: the valid one and every one the gateway refuses.
    let claims = |audience: &str| DevelopmentClaims {
        issuer: "commerce-mesh".into(),
        audience: audience.into(),
        subject: "secrets-test".into(),
        scopes: commerce_mesh::dev_tokens::every_scope(),
        ttl: Duration::from_secs(600),
    };
    let mint = |secret: &str, audience: &str| {
        kit::auth::mint_development_token(&Secret::new(secret.to_string()), &claims(audience)).unwrap()
    };
    let valid_token = mint(&development_secret, "commerce-mesh");
    // The signature's first character: all six of its bits are signature (the last one's are not all).
    let mut tampered_token = valid_token.clone();
    let first = tampered_token.rfind('.').unwrap() + 1;
    let replacement = if tampered_token[first..].starts_with('A') { "B" } else { "A" };
    tampered_token.replace_range(first..=first, replacement);
    let refused_tokens = [
        ("forged", mint(&random_secret("anothersecret"), "commerce-mesh")),
        ("wrong audience", mint(&development_secret, "another-api")),
        ("tampered signature", tampered_token),
    ];

    let dir = tempfile::tempdir().unwrap();
    let mut command = mesh_command(dir.path());
    command.arg("up");
    let settings = [
        ("MESH_DATA_DIR", dir.path().join("data").display().to_string()),
        ("MESH_ADMIN_LISTEN", "127.0.0.1:0".into()),
        ("MESH_GATEWAY__LISTEN", "127.0.0.1:0".into()),
        ("MESH_FULFILLMENT__LISTEN", "127.0.0.1:0".into()),
        ("MESH_CUSTOMER_IDENTITY__LISTEN", "127.0.0.1:0".into()),
        ("MESH_CATALOG_INGEST__LISTEN", "127.0.0.1:0".into()),
        ("MESH_PURCHASE_HISTORY__LISTEN", "127.0.0.1:0".into()),
        ("MESH_TELEMETRY__LOG_FILTER", "debug".into()),
        ("MESH_TELEMETRY__LOG_FORMAT", log_format.into()),
        ("MESH_AUTH__DEVELOPMENT_SECRET", development_secret.clone()),
        ("MESH_FULFILLMENT__LMS__URL", lms_url.clone()),
        ("MESH_FULFILLMENT__LMS__CLIENT_ID", "commerce-mesh-secrets-test".into()),
        ("MESH_FULFILLMENT__LMS__CLIENT_SECRET", client_secret.clone()),
        ("MESH_CUSTOMER_IDENTITY__RETIREMENT_SALT", retirement_salt.clone()),
        ("MESH_DATABASE_URL", database.url.clone()),
    ];
    command.envs(settings.iter().map(|(name, value)| (name, value)));
    let mut child = command.spawn().expect("spawn");
    let mut output = Output::capture(&mut child);

    // The banner: `name  scheme://address` a component.
    let mut urls = BTreeMap::new();
    while urls.len() < 6 {
        let line = output.wait_for("the banner", |line| line.starts_with("  ")).await;
        let mut words = line.split_whitespace();
        if let (Some(name), Some(url), None) = (words.next(), words.next(), words.next())
            && (url.starts_with("grpc://") || url.starts_with("http://"))
        {
            urls.insert(name.to_string(), url.replacen("grpc://", "http://", 1));
        }
    }
    for service in ["fulfillment", "customer-identity", "catalog-ingest", "purchase-history"] {
        wait_serving(&urls[service]).await;
    }
    let gateway = &urls["gateway"];
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    use reqwest::Method;

    // Tokens through the gateway: the valid one reaches the service, the others are refused.
    let (status, missing) =
        call(&client, Method::GET, format!("{gateway}/v1/customers/nobody"), &valid_token, None).await;
    assert_eq!(status, 404, "{missing}");
    for (name, token) in &refused_tokens {
        let (status, refused) = call(&client, Method::GET, format!("{gateway}/v1/customers/nobody"), token, None).await;
        assert_eq!(status, 401, "{name}: {refused}");
    }

    // An order: Fulfillment fetches an LMS token with the client secret, then the enrollment fails.
    let (status, linked) = call(
        &client,
        Method::PUT,
        format!("{gateway}/v1/customers/c-secret-1"),
        &valid_token,
        Some(json!({"lms_user_id": "5150", "lms_username": "grace", "email": "grace@example.org"})),
    )
    .await;
    assert_eq!(status, 200, "{linked}");
    let order = json!({
        "order_id": "ct-secrets-1",
        "date_placed": (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339(),
        "source_system": "secrets-test",
        "learner": {"customer_id": "c-secret-1"},
        "line_items": [{
            "line_item_id": "1",
            "course_run": {"course_run_key": "course-v1:edX+DemoX+2025_T1", "mode": "verified"},
            "price": {"currency_code": "USD", "amount": "49.00"},
        }],
    });
    let (status, accepted) =
        call(&client, Method::POST, format!("{gateway}/v1/orders/EDX-SECRET-1:fulfill"), &valid_token, Some(order))
            .await;
    assert_eq!(status, 200, "{accepted}");
    match next_call(&mut lms_calls).await {
        LmsCall::Token { form } => {
            assert!(form.contains(&format!("client_secret={client_secret}")), "the configured secret is sent: {form}")
        }
        other => panic!("a token request first, not {other:?}"),
    }
    match next_call(&mut lms_calls).await {
        LmsCall::Enrollment { authorization } => {
            assert_eq!(authorization, Some(format!("JWT {lms_access_token}")), "the issued token is used")
        }
        other => panic!("then an enrollment, not {other:?}"),
    }
    let failure = output.wait_for("the LMS failure logged", |line| line.contains(LMS_FAILURE_LOG)).await;
    assert!(failure.contains("503"), "the failure names the LMS's answer: {failure}");

    // A retirement: the username becomes the hash salted with the configured salt.
    let (status, linked) = call(
        &client,
        Method::PUT,
        format!("{gateway}/v1/customers/c-secret-2"),
        &valid_token,
        Some(json!({"lms_user_id": "5151", "lms_username": "retiree", "email": "retiree@example.org"})),
    )
    .await;
    assert_eq!(status, 200, "{linked}");
    let (status, retired) = call(
        &client,
        Method::POST,
        format!("{gateway}/v1/customers:retire"),
        &valid_token,
        Some(json!({"customer_id": "c-secret-2"})),
    )
    .await;
    assert_eq!(status, 200, "{retired}");
    let placeholder = customer_identity::domain::LmsUsername::parse("retiree")
        .expect("a username")
        .retired(&customer_identity::domain::RetirementKey::new(&retirement_salt));
    assert_eq!(retired["customer"]["lms_username"], placeholder.as_str(), "retired with the configured salt");

    let pid = child.id().expect("running").to_string();
    let kill = Command::new("kill").args(["-TERM", &pid]).status().await.expect("kill runs");
    assert!(kill.success());
    let exit = tokio::time::timeout(HANG_GUARD, child.wait()).await.expect("exits after SIGTERM").expect("wait");
    lms_server.abort();
    let stdout = output.stdout.await.unwrap();
    let stderr = output.stderr.await.unwrap();
    assert_eq!(exit.code(), Some(0), "SIGTERM ends the mesh with exit 0; stderr: {stderr}");

    // The logs are there and say what happened. (The gateway writes no log line for a request,
    // refused or not, so the tokens' use shows only in the answers above.)
    let text = without_ansi(&format!("{}\n{stderr}", stdout.join("\n")));
    let debug_marker = if log_format == "json" { "\"level\":\"DEBUG\"" } else { " DEBUG " };
    let masked_url = match password_in {
        PasswordIn::Userinfo => format!("postgres://{}:***@", database.role),
        PasswordIn::Query => format!("/{}?password=***", database.role),
    };
    for (what, evidence) in [
        ("the LMS failure", LMS_FAILURE_LOG),
        ("the LMS's answer", LMS_OUTAGE),
        ("the storage, its password masked", masked_url.as_str()),
        ("debug lines (the filter took)", debug_marker),
        ("the shutdown", "SIGTERM"),
    ] {
        assert!(text.contains(evidence), "the logs show {what} ({evidence:?})");
    }
    assert!(!text.contains("retirement_salt is the development default"), "the configured salt is in use");

    // And hold no secret.
    let mut secrets = vec![
        ("gateway development secret", development_secret.clone()),
        ("LMS client secret", client_secret.clone()),
        ("retirement salt", retirement_salt.clone()),
        ("database password", database_password.clone()),
        ("LMS access token", lms_access_token.clone()),
    ];
    let signature = |token: &str| token.rsplit('.').next().unwrap().to_string();
    secrets.push(("valid bearer token", valid_token.clone()));
    secrets.push(("valid bearer token's signature", signature(&valid_token)));
    for (name, token) in &refused_tokens {
        secrets.push((name, token.clone()));
        secrets.push((name, signature(token)));
    }
    let leaks: Vec<String> = secrets
        .iter()
        .flat_map(|(name, secret)| {
            text.lines()
                .filter(|line| line.contains(secret.as_str()))
                .map(move |line| format!("{name}: {}", line.chars().take(400).collect::<String>()))
        })
        .collect();
    assert!(leaks.is_empty(), "secrets in the {log_format} logs:\n{}", leaks.join("\n"));
    println!(
        "secrets ({log_format} logs, password in the URL's {password_in:?}): {} stdout lines, {} stderr bytes, \
         {} secret values checked, none logged",
        stdout.len(),
        stderr.len(),
        secrets.len()
    );
    println!(
        "RELIABILITY-FIGURES {}",
        serde_json::json!({
            "suite": "secrets",
            "logs": format!("{log_format}, password in the URL's {password_in:?}"),
            "log_lines": text.lines().count(),
            "secret_values_checked": secrets.len(),
            "found_in_logs": leaks.len(),
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_json_logs_at_debug() {
    secrets_stay_out_of_the_logs("json", PasswordIn::Userinfo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_text_logs_at_debug() {
    secrets_stay_out_of_the_logs("text", PasswordIn::Userinfo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_the_database_url_query_is_not_logged_either() {
    secrets_stay_out_of_the_logs("json", PasswordIn::Query).await;
}
