//! The `commerce-mesh` binary as a user runs it: `up` with no configuration
//! (and its metrics), `serve` of one component, `migrate all` on Postgres, and
//! a bad setting.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use support::{HANG_GUARD, mesh_command, wait_serving};

/// The development secret `serve` processes verify tokens with (services refuse to start without a key source).
const SERVE_SECRET: &str = "binary-tests-development-secret-of-32-bytes";

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    tokio::time::timeout(HANG_GUARD, lines.next_line())
        .await
        .expect("the process keeps writing")
        .expect("stdout readable")
        .expect("the process is still running")
}

async fn listed_services(url: &str) -> BTreeSet<String> {
    let mut reflection = ServerReflectionClient::new(kit::client::channel(url).expect("channel"));
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses =
        reflection.server_reflection_info(tokio_stream::once(request)).await.expect("reflection").into_inner();
    let response = responses.next().await.expect("a response").expect("ok");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("expected a service list, got {other:?}"),
    }
}

async fn terminate_and_wait(child: &mut Child) -> (std::process::ExitStatus, Duration) {
    let pid = child.id().expect("running").to_string();
    let sent = Instant::now();
    let kill = Command::new("kill").args(["-TERM", &pid]).status().await.expect("kill runs");
    assert!(kill.success());
    let status = tokio::time::timeout(HANG_GUARD, child.wait()).await.expect("exits after SIGTERM").expect("wait");
    (status, sent.elapsed())
}

async fn http_get(address: &str, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
}

#[tokio::test]
async fn up_with_no_configuration_serves_every_service_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    // stderr passes through: if `up` stops early (a default port taken), the failure shows why.
    let mut child = mesh_command(dir.path()).arg("up").stderr(std::process::Stdio::inherit()).spawn().expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();

    // The banner: one line per component, `name  scheme://address`, then `metrics  http://address/metrics`.
    let mut urls = std::collections::BTreeMap::new();
    while urls.len() < 6 {
        let line = next_line(&mut lines).await;
        let mut words = line.split_whitespace();
        if let (Some(name), Some(url), None) = (words.next(), words.next(), words.next())
            && let Some(address) = url.strip_prefix("grpc://").or_else(|| url.strip_prefix("http://"))
        {
            urls.insert(name.to_string(), address.to_string());
        }
    }
    // Keep draining logs so the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    assert_eq!(urls["gateway"], "127.0.0.1:8080");
    let services = [
        ("fulfillment", "127.0.0.1:50051", "commerce.fulfillment.v1.FulfillmentService"),
        ("customer-identity", "127.0.0.1:50052", "commerce.identity.v1.CustomerIdentityService"),
        ("catalog-ingest", "127.0.0.1:50053", "commerce.catalog.v1.CatalogIngestService"),
        ("purchase-history", "127.0.0.1:50054", "commerce.purchases.v1.PurchaseHistoryService"),
    ];
    let mut every_listed = BTreeSet::new();
    for (name, default_address, service) in services {
        assert_eq!(urls[name], default_address, "{name} listens on its default port");
        let url = format!("http://{default_address}");
        wait_serving(&url).await;
        let listed = listed_services(&url).await;
        // A component that consumes a stream serves its dead-letter service beside its own.
        let dead_letters =
            proto::DEAD_LETTER_SERVICES.iter().copied().filter(|dead| dead.starts_with(service_package(service)));
        let expected: BTreeSet<String> =
            [service, "grpc.health.v1.Health"].into_iter().chain(dead_letters).map(String::from).collect();
        assert_eq!(listed, expected, "{name} lists what it serves");
        every_listed.extend(listed);
    }
    for service in proto::COMMERCE_SERVICES.iter().chain(&proto::DEAD_LETTER_SERVICES) {
        assert!(every_listed.contains(*service), "{service} is listed by reflection");
    }

    // Fulfillment answers over its embedded store.
    let mut fulfillment = proto::commerce::fulfillment::v1::fulfillment_service_client::FulfillmentServiceClient::new(
        kit::client::channel_as(
            "http://127.0.0.1:50051",
            support::developer(
                &commerce_mesh::MeshConfig { data_dir: dir.path().join("data"), ..Default::default() },
                &["fulfillment:read"],
            ),
        )
        .expect("channel"),
    );
    let status = fulfillment
        .get_fulfillment(proto::commerce::fulfillment::v1::GetFulfillmentRequest { fulfillment_id: "f-1".into() })
        .await
        .expect_err("no such fulfillment");
    assert_eq!(status.code(), tonic::Code::NotFound);

    assert!(http_get(&urls["gateway"], "/healthz").await.starts_with("HTTP/1.1 200"));

    // One admin port for the whole mesh, each component's RPCs apart, by method and status code.
    assert_eq!(urls["metrics"], "127.0.0.1:9090/metrics");
    let check = |url: &'static str, service: &str| {
        let request = HealthCheckRequest { service: service.to_string() };
        async move { HealthClient::new(kit::client::channel(url).expect("channel")).check(request).await }
    };
    check("http://127.0.0.1:50052", "").await.expect("identity is healthy");
    let unknown = check("http://127.0.0.1:50051", "no.such.Service").await.expect_err("not served");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let metrics = http_get("127.0.0.1:9090", "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("content-type: application/openmetrics-text; version=1.0.0"), "{metrics}");
    for (component, status) in [("customer-identity", 0), ("fulfillment", 5)] {
        let line = format!(
            "rpc_server_requests_total{{component=\"{component}\",rpc_service=\"grpc.health.v1.Health\",\
             rpc_method=\"Check\",grpc_status=\"{status}\"}} 1\n"
        );
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    assert!(http_get("127.0.0.1:9090", "/healthz").await.starts_with("HTTP/1.1 200"));

    // Embedded storage: one SQLite file per service under ./data (besides the event log, events.db, which
    // appears with the first publish or consumer round).
    let mut files: Vec<String> = std::fs::read_dir(dir.path().join("data"))
        .expect("./data exists")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".db") && name != "events.db")
        .collect();
    files.sort();
    assert_eq!(files, ["catalog_ingest.db", "customer_identity.db", "fulfillment.db", "purchase_history.db"]);

    let (status, elapsed) = terminate_and_wait(&mut child).await;
    println!("exit after SIGTERM took {elapsed:?}");
    assert_eq!(status.code(), Some(0), "SIGTERM ends the mesh with exit 0");
}

/// `serve` applies no migration: a service on a database not migrated yet
/// listens, says what it waits for and stays NOT_SERVING until `migrate` ran.
#[tokio::test]
async fn serve_runs_one_component_waits_for_its_migrations_and_logs_json_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = mesh_command(dir.path())
        .args(["serve", "customer-identity"])
        .env("MESH_CUSTOMER_IDENTITY__LISTEN", "127.0.0.1:0")
        .env("MESH_CUSTOMER_IDENTITY__ADMIN_LISTEN", "127.0.0.1:0")
        .env("MESH_AUTH__DEVELOPMENT_SECRET", SERVE_SECRET)
        .env("MESH_SERVE__REFLECTION", "true")
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut address = None;
    let waiting = loop {
        let line = next_line(&mut lines).await;
        let log: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?} is JSON: {e}"));
        assert!(log["timestamp"].is_string() && log["level"].is_string(), "{line}");
        if log["message"] == "listening" {
            address = Some(log["fields"]["address"].as_str().expect("address field").to_string());
        }
        if log["message"] == "not ready" {
            break log["fields"]["waiting_for"].as_str().expect("what it waits for").to_string();
        }
    };
    assert!(waiting.contains("commerce-mesh migrate customer-identity"), "says what to run: {waiting}");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let url = format!("http://{}", address.expect("listening before waiting"));
    let mut health = HealthClient::new(kit::client::channel(&url).expect("channel"));
    let status = health.check(HealthCheckRequest { service: String::new() }).await.expect("health answers");
    assert_eq!(status.into_inner().status(), ServingStatus::NotServing, "not ready before its migrations");

    let migrated = mesh_command(dir.path()).args(["migrate", "customer-identity"]).output().await.expect("migrate");
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
    wait_serving(&url).await;
    assert!(listed_services(&url).await.contains("commerce.identity.v1.CustomerIdentityService"));
    let (status, _) = terminate_and_wait(&mut child).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn serve_customer_identity_on_postgres_refuses_the_development_salt() {
    let test_db = kit::testing::TestDatabase::postgres("unused").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let serve = |salt: Option<&str>| {
        let mut command = mesh_command(dir.path());
        command
            .args(["serve", "customer-identity"])
            .env("MESH_AUTH__DEVELOPMENT_SECRET", SERVE_SECRET)
            .env("MESH_DATABASE_URL", &test_db.config().url)
            .env("MESH_CUSTOMER_IDENTITY__LISTEN", "127.0.0.1:0")
            .env("MESH_CUSTOMER_IDENTITY__ADMIN_LISTEN", "127.0.0.1:0");
        if let Some(salt) = salt {
            command.env("MESH_CUSTOMER_IDENTITY__RETIREMENT_SALT", salt);
        }
        command
    };
    let output = serve(None).output().await.expect("run serve");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "refused: {said}");
    assert!(said.contains("MESH_CUSTOMER_IDENTITY__RETIREMENT_SALT"), "names the setting: {said}");

    // With a salt of its own it serves.
    let mut child = serve(Some("a-secret-of-this-deployment")).spawn().expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    loop {
        let line = next_line(&mut lines).await;
        if line.contains("\"listening\"") {
            break;
        }
    }
    let (status, _) = terminate_and_wait(&mut child).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn migrate_all_on_postgres_gives_every_service_its_schema() {
    let test_db = kit::testing::TestDatabase::postgres("unused").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let output = mesh_command(dir.path())
        .args(["migrate", "all"])
        .env("MESH_DATABASE_URL", &test_db.config().url)
        .output()
        .await
        .expect("run migrate");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let pool = sqlx::PgPool::connect(&test_db.config().url).await.expect("connect");
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT table_schema::text FROM information_schema.tables WHERE table_name = '_sqlx_migrations' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("catalog");
    assert_eq!(schemas, ["catalog_ingest", "customer_identity", "fulfillment", "purchase_history"]);
    pool.close().await;
    assert!(!dir.path().join("data").exists(), "nothing embedded was created");
}

#[tokio::test]
async fn wait_for_migrations_returns_once_migrate_has_run_and_gives_up_naming_what_is_missing() {
    let test_db = kit::testing::TestDatabase::postgres("unused").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = &test_db.config().url;

    let output = mesh_command(dir.path())
        .args(["wait-for-migrations", "fulfillment", "--timeout", "1s"])
        .env("MESH_DATABASE_URL", url)
        .output()
        .await
        .expect("run wait-for-migrations");
    assert_eq!(output.status.code(), Some(1), "nothing was migrated");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("fulfillment: migrations [1"), "names the service and versions: {stderr}");

    let mut waiting = mesh_command(dir.path())
        .args(["wait-for-migrations", "all", "--timeout", "5m"])
        .env("MESH_DATABASE_URL", url)
        .spawn()
        .expect("spawn wait-for-migrations");
    let migrated = mesh_command(dir.path())
        .args(["migrate", "all"])
        .env("MESH_DATABASE_URL", url)
        .output()
        .await
        .expect("migrate");
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
    let waited = tokio::time::timeout(HANG_GUARD, waiting.wait()).await.expect("no hang").expect("wait");
    assert!(waited.success(), "the waiter exits 0 once every migration is applied");
}

#[tokio::test]
async fn a_bad_setting_fails_at_once_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = mesh_command(dir.path())
        .arg("up")
        .env("MESH_FULFILLMENT__LISTEN", "not-an-address")
        .output()
        .await
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("FULFILLMENT.LISTEN"), "names the key: {stderr}");
    assert!(stderr.contains("MESH_"), "names where it came from: {stderr}");
    assert_eq!(stderr.matches("invalid socket address").count(), 1, "says it once: {stderr}");
}

#[tokio::test]
async fn a_taken_port_fails_at_once_naming_the_component_and_the_setting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to hold");
    let address = taken.local_addr().expect("bound").to_string();
    // `up` with every listen address ephemeral but `variable`'s, which is the taken one.
    let up_on_the_taken_port = |variable: &str| {
        let mut command = mesh_command(dir.path());
        command.arg("up");
        for key in ["GATEWAY__LISTEN", "FULFILLMENT__LISTEN", "CUSTOMER_IDENTITY__LISTEN", "CATALOG_INGEST__LISTEN"]
            .into_iter()
            .chain(["PURCHASE_HISTORY__LISTEN", "ADMIN_LISTEN"])
        {
            command.env(format!("MESH_{key}"), "127.0.0.1:0");
        }
        command.env(variable, &address);
        command
    };
    let output = up_on_the_taken_port("MESH_FULFILLMENT__LISTEN").output().await.expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("fulfillment: cannot listen on {address}")), "names what and where: {stderr}");
    assert!(stderr.contains("MESH_FULFILLMENT__LISTEN"), "names the setting that moves it: {stderr}");

    // The admin port too (9090 is Prometheus's own default).
    let output = up_on_the_taken_port("MESH_ADMIN_LISTEN").output().await.expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("admin port {address}")), "names what and where: {stderr}");
    assert!(stderr.contains("MESH_ADMIN_LISTEN"), "names the setting that moves it: {stderr}");
}

#[tokio::test]
async fn import_customers_streams_a_csv_and_reports_rejections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = commerce_mesh::MeshConfig { data_dir: dir.path().join("data"), ..Default::default() };
    config.use_ephemeral_ports();
    let mesh = commerce_mesh::start(config, kit::shutdown::Shutdown::new()).await.expect("mesh starts");
    let identity = mesh.grpc_url(commerce_mesh::Component::CustomerIdentity);
    wait_serving(&identity).await;

    let csv = dir.path().join("customers.csv");
    std::fs::write(
        &csv,
        "lms_username,customer_id,lms_user_id,email\n\
         ada,c1,1,ada@example.org\n\
         grace,c2,not-a-number,\n\
         short_row\n\
         alan,c3,3,alan@example.org\n",
    )
    .expect("write csv");
    let output = mesh_command(dir.path())
        .args(["import-customers", csv.to_str().expect("utf-8 path"), "--identity", &identity, "--batch-size", "2"])
        .output()
        .await
        .expect("run import");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Rows were rejected: a script sees it in the exit status (documented: 3).
    assert_eq!(output.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(stderr.contains("2 row(s) rejected; the others are stored"), "{stderr}");
    assert!(stdout.contains("imported: 2 inserted, 0 updated, 0 unchanged, 2 rejected"), "{stdout}");
    assert!(stdout.contains("row 2 (line 3) customer \"c2\": lms_user_id:"), "{stdout}");
    assert!(stdout.contains("row 3 (line 4) customer \"\": customer_id:"), "{stdout}");

    // The stored rows again, one changed: nothing rejected, exit 0, the same rows unchanged.
    std::fs::write(
        &csv,
        "customer_id,lms_user_id,lms_username,email\nc1,1,ada,ada@example.org\nc3,3,alan,new@example.org\n",
    )
    .expect("write csv");
    let import = || {
        mesh_command(dir.path())
            .args(["import-customers", csv.to_str().expect("utf-8 path"), "--identity", &identity])
            .output()
    };
    let output = import().await.expect("run import");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("imported: 0 inserted, 1 updated, 1 unchanged, 0 rejected"), "{stdout}");
    let output = import().await.expect("run import");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("imported: 0 inserted, 0 updated, 2 unchanged, 0 rejected"),
        "a file imported twice: {stdout}"
    );

    use proto::commerce::identity::v1::customer_identity_service_client::CustomerIdentityServiceClient;
    let mut client = CustomerIdentityServiceClient::new(mesh.grpc_channel(commerce_mesh::Component::CustomerIdentity));
    let found = client
        .get_customer(proto::commerce::identity::v1::GetCustomerRequest { customer_id: "c3".into() })
        .await
        .expect("c3 was imported")
        .into_inner();
    assert_eq!(found.customer.expect("customer").lms_username, "alan");
    mesh.stop().await.expect("clean stop");
}

#[tokio::test]
async fn import_customers_with_nothing_listening_says_it_could_not_connect_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("customers.csv");
    std::fs::write(&csv, "customer_id,lms_user_id,lms_username\nc1,1,ada\n").expect("write csv");
    // A port nothing listens on: bound, then released.
    let address = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address");
    let url = format!("http://{address}");
    let output = mesh_command(dir.path())
        .args(["import-customers", csv.to_str().expect("utf-8 path"), "--identity", &url, "--token", "t"])
        .output()
        .await
        .expect("run import");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("could not connect to CustomerIdentity at {url}: ")), "{stderr}");
    assert!(stderr.contains("Connection refused"), "the cause: {stderr}");
    assert!(!stderr.contains("answered"), "nothing answered: {stderr}");
    assert_eq!(stderr.matches("tcp connect error").count(), 0, "no wrapper's text: {stderr}");
    assert_eq!(stderr.matches("Connection refused").count(), 1, "said once: {stderr}");
}

#[tokio::test]
async fn token_refuses_a_scope_no_rpc_requires_and_lists_the_known_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = mesh_command(dir.path())
        .args(["token", "--scopes", "identity:read,bogus:scope"])
        .env("MESH_AUTH__DEVELOPMENT_SECRET", "a-development-secret-of-the-test")
        .output()
        .await
        .expect("run token");
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty(), "no token printed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no RPC requires bogus:scope; the scopes are: "), "{stderr}");
    for scope in commerce_mesh::dev_tokens::every_scope() {
        assert!(stderr.contains(&scope), "{scope} listed: {stderr}");
    }
    let output = mesh_command(dir.path())
        .args(["token", "--scopes", "identity:read"])
        .env("MESH_AUTH__DEVELOPMENT_SECRET", "a-development-secret-of-the-test")
        .output()
        .await
        .expect("run token");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[tokio::test]
async fn import_customers_names_a_missing_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("customers.csv");
    std::fs::write(&csv, "customer_id,lms_username\nc1,ada\n").expect("write csv");
    let output = mesh_command(dir.path())
        .args(["import-customers", csv.to_str().expect("utf-8 path"), "--identity", "http://127.0.0.1:1"])
        .output()
        .await
        .expect("run import");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("the header row has no lms_user_id column"), "{stderr}");
}

#[tokio::test]
async fn dev_lms_prints_its_url_answers_there_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = mesh_command(dir.path()).args(["dev-lms", "--listen", "127.0.0.1:0"]).spawn().expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    // Logs share stdout: the URL line is the one that starts so.
    let mut line = next_line(&mut lines).await;
    while !line.starts_with("commerce-mesh development LMS on ") {
        line = next_line(&mut lines).await;
    }
    assert!(line.contains("not for production"), "{line}");
    let address = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_string();
    let root = http_get(&address, "/").await;
    assert!(root.starts_with("HTTP/1.1 200"), "{root}");
    assert!(root.contains("DEVELOPMENT LMS"), "{root}");
    let (status, _) = terminate_and_wait(&mut child).await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn refund_refunds_the_lines_named_or_the_whole_order_and_prints_where_each_stands() {
    use proto::commerce::fulfillment::v1 as pb;
    use proto::commerce::fulfillment::v1::fulfillment_service_client::FulfillmentServiceClient;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = commerce_mesh::MeshConfig { data_dir: dir.path().join("data"), ..Default::default() };
    config.use_ephemeral_ports();
    config.dev_lms.enabled = true;
    let mesh = commerce_mesh::start(config.clone(), kit::shutdown::Shutdown::new()).await.expect("mesh starts");
    let url = mesh.grpc_url(commerce_mesh::Component::Fulfillment);
    wait_serving(&url).await;
    let line = |id: &str| pb::LineItem {
        line_item_id: id.into(),
        product: Some(pb::line_item::Product::CourseRun(pb::CourseRunEnrollment {
            course_run_key: format!("course-v1:edX+{id}+T1"),
            mode: "verified".into(),
            credit_provider_id: String::new(),
        })),
        price: Some(proto::commerce::r#type::v1::Money { currency_code: "EUR".into(), amount: "99.00".into() }),
        ..Default::default()
    };
    let order = pb::FulfillOrderRequest {
        order_number: "EDX-CLI".into(),
        date_placed: Some(kit::time::to_timestamp(chrono::Utc::now())),
        learner: Some(pb::Learner { lms_user_id: "7".into(), lms_username: "ada".into(), ..Default::default() }),
        line_items: vec![line("l1"), line("l2")],
        ..Default::default()
    };
    let mut client = FulfillmentServiceClient::new(mesh.grpc_channel(commerce_mesh::Component::Fulfillment));
    let ids: Vec<String> = client
        .fulfill_order(order)
        .await
        .expect("accepted")
        .into_inner()
        .fulfillments
        .into_iter()
        .map(|f| f.fulfillment_id)
        .collect();
    // Enrolled in the development LMS: both completions are on the embedded log.
    let bus = kit::bus::open(None, &dir.path().join("data/events.db")).expect("event log");
    bus.ensure_group(proto::streams::FULFILLMENTS, "cli-test").await.expect("group");
    let mut completed = 0;
    tokio::time::timeout(HANG_GUARD, async {
        while completed < 2 {
            let read = bus.read(proto::streams::FULFILLMENTS, "cli-test", "t", 10, Duration::from_secs(1)).await;
            completed +=
                read.expect("read").iter().filter(|d| d.event_id.starts_with("fulfillment-completed:")).count();
        }
    })
    .await
    .expect("both lines enrolled");

    let run = |args: &[&str]| {
        let mut command = mesh_command(dir.path());
        command.arg("refund").args(args).args(["--fulfillment", &url]);
        async move { command.output().await.expect("run refund") }
    };
    let partly = run(&["EDX-CLI", "--line", "l1", "--amount", "49.50", "--reason", "goodwill"]).await;
    let stdout = String::from_utf8_lossy(&partly.stdout);
    assert!(partly.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&partly.stderr));
    assert!(stdout.starts_with("refund recorded"), "{stdout}");
    assert!(stdout.contains(&ids[0]) && stdout.contains("REVOKING") && stdout.contains("49.50 EUR"), "{stdout}");
    assert!(!stdout.contains(&ids[1]), "only the line named: {stdout}");

    let rest = run(&["EDX-CLI"]).await;
    let stdout = String::from_utf8_lossy(&rest.stderr);
    assert_eq!(rest.status.code(), Some(1), "l1 was refunded by 49.50, not its price: {stdout}");
    assert!(stdout.contains("REFUND_MISMATCH") || stdout.contains("already refunded"), "{stdout}");
    let l2 = run(&["EDX-CLI", "--line", "l2"]).await;
    let stdout = String::from_utf8_lossy(&l2.stdout);
    assert!(l2.status.success() && stdout.contains(&ids[1]) && stdout.contains("99.00 EUR"), "{stdout}");

    let no_line = run(&["EDX-CLI", "--amount", "1"]).await;
    assert_eq!(no_line.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_line.stderr).contains("--amount refunds one line"));
    let bad_amount = run(&["EDX-CLI", "--line", "l2", "--amount", "lots"]).await;
    let stderr = String::from_utf8_lossy(&bad_amount.stderr);
    assert_eq!(bad_amount.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("lines[0].refunded_amount.amount"), "the field is named: {stderr}");
    mesh.stop().await.expect("clean stop");
}

/// A rollback: the database holds a migration of a newer release, which this
/// binary does not know. Every service still starts on it, serves and reports ready.
#[tokio::test]
async fn serve_starts_every_service_on_a_schema_a_newer_release_migrated() {
    let test_db = kit::testing::TestDatabase::postgres("unused").await;
    let dir = tempfile::tempdir().expect("tempdir");
    support::migrate(dir.path(), &test_db.config().url, "all").await;
    let pool = sqlx::PgPool::connect(&test_db.config().url).await.expect("connect");
    for schema in ["catalog_ingest", "customer_identity", "fulfillment", "purchase_history"] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "INSERT INTO \"{schema}\"._sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES (99990101000000, 'from a newer release', true, '\\x00', 0)"
        )))
        .execute(&pool)
        .await
        .expect("a newer release's migration");
    }
    pool.close().await;

    let mut children = Vec::new();
    for (component, prefix) in [
        ("fulfillment", "FULFILLMENT"),
        ("customer-identity", "CUSTOMER_IDENTITY"),
        ("catalog-ingest", "CATALOG_INGEST"),
        ("purchase-history", "PURCHASE_HISTORY"),
    ] {
        let mut child = mesh_command(dir.path())
            .args(["serve", component])
            .env("MESH_AUTH__DEVELOPMENT_SECRET", SERVE_SECRET)
            .env("MESH_DATABASE_URL", &test_db.config().url)
            .env(format!("MESH_{prefix}__LISTEN"), "127.0.0.1:0")
            .env(format!("MESH_{prefix}__ADMIN_LISTEN"), "127.0.0.1:0")
            .env("MESH_CUSTOMER_IDENTITY__RETIREMENT_SALT", "a-secret-of-this-deployment")
            .spawn()
            .expect("spawn");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let address = loop {
            let line = next_line(&mut lines).await;
            let log: serde_json::Value = serde_json::from_str(&line).unwrap_or(serde_json::Value::Null);
            if log["message"] == "listening" {
                break log["fields"]["address"].as_str().expect("address field").to_string();
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let url = format!("http://{address}");
        wait_serving(&url).await;
        // `serve` does not describe its API to whoever reaches the port: reflection is off.
        let mut reflection = ServerReflectionClient::new(kit::client::channel(&url).expect("channel"));
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let refused = reflection.server_reflection_info(tokio_stream::once(request)).await.expect_err("no reflection");
        assert_eq!(refused.code(), tonic::Code::Unimplemented, "{component}: {refused:?}");
        children.push(child);
    }
    for mut child in children {
        let (status, _) = terminate_and_wait(&mut child).await;
        assert_eq!(status.code(), Some(0));
    }
}

/// `gateway.auth` moved to the top-level `[auth]`: an old key stops the
/// binary, naming where it went, rather than being ignored (a JWKS unused).
#[tokio::test]
async fn an_old_gateway_auth_key_is_refused_naming_its_new_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = mesh_command(dir.path())
        .args(["serve", "gateway"])
        .env("MESH_GATEWAY__AUTH__JWKS_URL", "https://issuer.example/jwks.json")
        .env("MESH_AUTH__DEVELOPMENT_SECRET", SERVE_SECRET)
        .output()
        .await
        .expect("run serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "refused: {stderr}");
    assert!(stderr.contains("MESH_AUTH__"), "names the new place: {stderr}");
}

/// `commerce.purchases.v1.` of `commerce.purchases.v1.PurchaseHistoryService`.
fn service_package(service: &str) -> &str {
    &service[..=service.rfind('.').unwrap_or(0)]
}
