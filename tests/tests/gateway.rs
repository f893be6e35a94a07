//! The REST gateway in front of the real services, inside `commerce_mesh::start`,
//! on embedded storage and on Postgres + Redis: customers linked and looked up,
//! a bulk import as newline-delimited JSON, the legacy purchase API
//! (`POST /buy`, `GET /buyList/{username}`), errors with their details, and
//! `/readyz` and `/openapi.json` over the real upstreams.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use commerce_mesh::{Component, MeshConfig, RunningMesh};
use kit::shutdown::Shutdown;
use kit::testing::TestDatabase;
use serde_json::{Value, json};

const GUARD: Duration = Duration::from_secs(30);

enum Storage {
    Embedded,
    PostgresAndRedis,
}

struct Mesh {
    mesh: RunningMesh,
    base: String,
    client: reqwest::Client,
    token: String,
    _data: tempfile::TempDir,
    _database: Option<TestDatabase>,
}

impl Mesh {
    async fn start(storage: Storage) -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut config = MeshConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
        config.use_ephemeral_ports();
        let database = match storage {
            Storage::Embedded => None,
            Storage::PostgresAndRedis => {
                let database = TestDatabase::postgres("unused").await;
                config.database_url = Some(database.config().url.clone());
                config.redis_url = Some("redis://127.0.0.1:6379".into());
                // Redis is shared by every test: a stream of our own.
                config.purchase_history.settings.stream = format!("test.purchases.{}", uuid::Uuid::new_v4().simple());
                Some(database)
            }
        };
        let mesh = commerce_mesh::start(config.clone(), Shutdown::new()).await.expect("mesh starts");
        for component in
            [Component::CustomerIdentity, Component::PurchaseHistory, Component::Fulfillment, Component::CatalogIngest]
        {
            mesh_tests::health::wait_serving(&mesh.grpc_url(component), GUARD).await.expect("ready");
        }
        // `up` made a development secret under data_dir: mint with it, as a user would.
        let token = commerce_mesh::dev_tokens::mint(
            &config,
            "backend-1",
            commerce_mesh::dev_tokens::every_scope(),
            Duration::from_secs(600),
        )
        .expect("a development token");
        let base = mesh.url(Component::Gateway);
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        Self { mesh, base, client, token, _data: data, _database: database }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

async fn customers_purchases_and_errors_through_rest(storage: Storage) {
    let mesh = Mesh::start(storage).await;
    use reqwest::Method;

    // Ready once every upstream answers SERVING.
    let ready = mesh.client.get(format!("{}/readyz", mesh.base)).send().await.unwrap();
    assert_eq!(ready.status(), 200, "{:?}", ready.text().await);

    // Nothing without a token.
    let anonymous = mesh.client.get(format!("{}/v1/customers/c-1", mesh.base)).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().contains_key("www-authenticate"));

    // Link a customer (PUT, body "*", id from the path), read it back both ways.
    let (status, linked) = mesh
        .send(
            Method::PUT,
            "/v1/customers/c-1",
            Some(json!({"lmsUserId": "4242", "lms_username": "ada", "email": "ada@example.com"})),
        )
        .await;
    assert_eq!(status, 200, "{linked}");
    assert_eq!(linked["created"], true);
    assert_eq!(linked["customer"]["customer_id"], "c-1");
    assert_eq!(linked["customer"]["version"], "1", "int64 as a string");
    let (status, found) = mesh.send(Method::GET, "/v1/customers:lookup?lms_username=ada", None).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["customer"]["lms_user_id"], "4242");
    let (status, missing) = mesh.send(Method::GET, "/v1/customers/nobody", None).await;
    assert_eq!((status, missing["code"].as_i64()), (404, Some(5)));

    // The database refuses a second customer for the same LMS user: 409 with the reason.
    let (status, taken) =
        mesh.send(Method::PUT, "/v1/customers/c-2", Some(json!({"lms_user_id": "4242", "lms_username": "ada2"}))).await;
    assert_eq!(status, 409, "{taken}");
    assert!(taken["details"].as_array().unwrap().iter().any(|d| d["@type"].as_str().unwrap().ends_with("ErrorInfo")));

    // Invalid input names the field, from the gateway and from the service alike.
    let (status, bad) = mesh.send(Method::GET, "/v1/purchases?page_size=many", None).await;
    assert_eq!(status, 400);
    assert_eq!(bad["details"][0]["field_violations"][0]["field"], "page_size");
    let (status, bad) =
        mesh.send(Method::PUT, "/v1/customers/c-3", Some(json!({"lms_user_id": "x", "lms_username": "eve"}))).await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["details"][0]["field_violations"][0]["field"], "lms_user_id");

    // Bulk import: newline-delimited JSON, one ImportCustomersRequest a line.
    let ndjson = concat!(
        r#"{"customers": [{"customer_id": "c-10", "lms_user_id": "10", "lms_username": "grace"}]}"#,
        "\n\n",
        r#"{"customers": [{"customer_id": "c-11", "lms_user_id": "11", "lms_username": "alan"},"#,
        r#" {"customer_id": "c-12", "lms_user_id": "not-a-number", "lms_username": "bad"}]}"#,
        "\n",
    );
    let imported = mesh
        .client
        .post(format!("{}/v1/customers:import", mesh.base))
        .bearer_auth(&mesh.token)
        .header("content-type", "application/x-ndjson")
        .body(ndjson)
        .send()
        .await
        .unwrap();
    assert_eq!(imported.status(), 200);
    let imported: Value = imported.json().await.unwrap();
    assert_eq!((imported["inserted"].as_str(), imported["rejected"].as_str()), (Some("2"), Some("1")), "{imported}");

    // The legacy purchase API: POST /buy, then GET /buyList/{username} answers a bare array.
    let (status, bought) = mesh
        .send(
            Method::POST,
            "/buy",
            Some(json!({"username": "grace", "userid": 10, "price": 19.99, "timestamp": "2026-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(status, 200, "{bought}");
    let purchase_id = bought["purchase_id"].as_str().unwrap().to_string();
    assert!(!purchase_id.is_empty());
    // The consumer stores it asynchronously: bounded wait until it is listed.
    let deadline = tokio::time::Instant::now() + GUARD;
    let listed = loop {
        let (status, listed) = mesh.send(Method::GET, "/buyList/grace", None).await;
        assert_eq!(status, 200, "{listed}");
        if listed.as_array().is_some_and(|a| !a.is_empty()) || tokio::time::Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let listed = listed.as_array().expect("a JSON array");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["purchase_id"], purchase_id.as_str());
    assert_eq!(listed[0]["price"]["amount"], "19.99");
    assert_eq!(listed[0]["source"], "legacy-buy");

    // The same list by the v1 path and the LMS user id, with its page token field.
    let (status, page) = mesh.send(Method::GET, "/v1/purchases?lms_user_id=10&page_size=10", None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["purchases"][0]["purchase_id"], purchase_id.as_str());
    assert_eq!(page["next_page_token"], "");

    // Every RPC's binding is in the document the gateway serves.
    let (status, openapi) = mesh.send(Method::GET, "/openapi.json", None).await;
    assert_eq!(status, 200);
    for path in ["/buy", "/buyList/{username}", "/v1/orders/{order_number}:fulfill", "/v1/customers:import"] {
        assert!(openapi["paths"].get(path).is_some(), "{path} documented");
    }

    mesh.mesh.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_the_real_services_on_embedded_storage() {
    customers_purchases_and_errors_through_rest(Storage::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_the_real_services_on_postgres_and_redis() {
    customers_purchases_and_errors_through_rest(Storage::PostgresAndRedis).await;
}
