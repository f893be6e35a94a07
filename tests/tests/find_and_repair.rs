//! Find and repair through the gateway's REST bindings, inside the whole
//! mesh, on embedded storage and on Postgres + Redis: orders the LMS refused
//! are found with `GET /v1/fulfillments` (repeated `filter.states`, a total),
//! bad filters and bounds answer 400 naming the field, `POST
//! /v1/fulfillments:retry` previews (dry run), refuses more than its bound,
//! then re-drives them, recording the token's subject the gateway verified;
//! and the workers then enrol them.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use commerce_mesh::Component;
use kit::shutdown::Shutdown;
use mesh_tests::storage::Storage;
use proto::commerce::fulfillment::v1 as pb;
use proto::commerce::fulfillment::v1::fulfillment_service_client::FulfillmentServiceClient;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const GUARD: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_orders_are_found_and_repaired_over_rest_on_embedded_storage() {
    refused_orders_are_found_and_repaired_over_rest(Storage::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_orders_are_found_and_repaired_over_rest_on_postgres_and_redis() {
    refused_orders_are_found_and_repaired_over_rest(Storage::PostgresAndRedis).await;
}

/// An LMS that refuses the first `refusals` enrollments (400) and enrols every later one.
async fn refusing_at_first(refusals: u64) -> MockServer {
    let lms = mesh_tests::lms_stub::issuing_tokens().await;
    Mock::given(method("POST"))
        .and(path("/api/enrollment/v1/enrollment"))
        .respond_with(ResponseTemplate::new(400).set_body_string("enrollment closed"))
        .up_to_n_times(refusals)
        .mount(&lms)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/enrollment/v1/enrollment"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&lms)
        .await;
    lms
}

struct Rest {
    http: reqwest::Client,
    gateway: String,
    token: String,
}

impl Rest {
    async fn get(&self, path_and_query: &str) -> (u16, Value) {
        let answer =
            self.http.get(format!("{}{path_and_query}", self.gateway)).bearer_auth(&self.token).send().await.unwrap();
        (answer.status().as_u16(), answer.json().await.unwrap())
    }

    async fn retry(&self, body: Value) -> (u16, Value) {
        let answer = self
            .http
            .post(format!("{}/v1/fulfillments:retry", self.gateway))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        (answer.status().as_u16(), answer.json().await.unwrap())
    }

    /// Lists until `total` fulfillments are in `state`, within the guard.
    async fn until_in(&self, state: &str, run: &str, total: &str) -> Value {
        let query = format!("/v1/fulfillments?filter.states={state}&filter.course_run_key={}", query_value(run));
        tokio::time::timeout(GUARD, async {
            loop {
                let (status, answer) = self.get(&query).await;
                assert_eq!(status, 200, "{answer}");
                if answer["total_size"] == total {
                    return answer;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{total} fulfillments in {state}"))
    }
}

/// `+` is a space in a query string: a run key's must be encoded.
fn query_value(text: &str) -> String {
    text.replace('+', "%2B")
}

/// Who asked for each change of `id` out of FAILED, read in Fulfillment's database.
async fn requested_by(storage: Storage, config: &commerce_mesh::MeshConfig, id: &str) -> Vec<String> {
    const QUERY: &str = "SELECT requested_by FROM fulfillment_transitions
         WHERE fulfillment_id = $1 AND from_state = 'FAILED' AND requested_by IS NOT NULL ORDER BY seq";
    match storage {
        Storage::Embedded => {
            let file = format!("sqlite://{}?mode=ro", config.data_dir.join("fulfillment.db").display());
            let pool = sqlx::SqlitePool::connect(&file).await.unwrap();
            sqlx::query_scalar(QUERY).bind(id).fetch_all(&pool).await.unwrap()
        }
        Storage::PostgresAndRedis => {
            let pool = sqlx::PgPool::connect(config.database_url.as_deref().unwrap()).await.unwrap();
            let mut conn = pool.acquire().await.unwrap();
            sqlx::query("SET search_path TO fulfillment").execute(&mut *conn).await.unwrap();
            sqlx::query_scalar(QUERY).bind(id).fetch_all(&mut *conn).await.unwrap()
        }
    }
}

async fn refused_orders_are_found_and_repaired_over_rest(storage: Storage) {
    // Unique per run: Redis keeps its streams between runs.
    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let run = format!("course-v1:edX+Repair{run_id}+T1");
    let lms = refusing_at_first(2).await;
    let data = tempfile::tempdir().expect("tempdir");
    let mut config = commerce_mesh::MeshConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
    config.use_ephemeral_ports();
    config.fulfillment.settings.lms.url = lms.uri();
    let _database = storage.configure(&mut config).await;
    let mesh = commerce_mesh::start(config.clone(), Shutdown::new()).await.expect("mesh starts");
    mesh_tests::health::wait_serving(&mesh.grpc_url(Component::Fulfillment), GUARD).await.expect("ready");
    let scopes = ["fulfillment:read", "fulfillment:write"].map(String::from).to_vec();
    let token = commerce_mesh::dev_tokens::mint(&config, "support-bob", scopes, Duration::from_secs(300)).unwrap();
    let rest = Rest {
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        gateway: mesh.url(Component::Gateway),
        token,
    };

    let mut fulfillment = FulfillmentServiceClient::new(mesh.grpc_channel(Component::Fulfillment));
    let mut ids = Vec::new();
    for n in 0..2 {
        let mut order = mesh_tests::orders::course_run_order(&format!("EDX-FIX-{run_id}-{n}"), "");
        order.learner =
            Some(pb::Learner { lms_user_id: "4242".into(), lms_username: "ada".into(), ..Default::default() });
        if let Some(pb::line_item::Product::CourseRun(course_run)) = &mut order.line_items[0].product {
            course_run.course_run_key = run.clone();
        }
        let accepted = fulfillment.fulfill_order(order).await.expect("accepted").into_inner();
        ids.push(accepted.fulfillments[0].fulfillment_id.clone());
        // The next order goes in after this one failed, so which changed last
        // does not depend on which worker finished first.
        rest.until_in("FULFILLMENT_STATE_FAILED", &run, &(n + 1).to_string()).await;
    }
    let run_q = query_value(&run);
    let found = rest.until_in("FULFILLMENT_STATE_FAILED", &run, "2").await;
    let listed: Vec<&str> =
        found["fulfillments"].as_array().unwrap().iter().map(|f| f["fulfillment_id"].as_str().unwrap()).collect();
    assert_eq!(listed, [ids[1].as_str(), ids[0].as_str()], "newest change first: {found}");
    assert_eq!(found["fulfillments"][0]["last_error"]["kind"], "FULFILLMENT_ERROR_KIND_REJECTED", "{found}");
    // The state set is a repeated query parameter.
    let (status, either) = rest
        .get(&format!(
            "/v1/fulfillments?filter.states=FULFILLMENT_STATE_SUCCEEDED&filter.states=FULFILLMENT_STATE_FAILED\
             &filter.course_run_key={run_q}&page_size=1"
        ))
        .await;
    assert_eq!((status, &either["total_size"]), (200, &json!("2")), "{either}");
    assert_eq!(either["fulfillments"].as_array().unwrap().len(), 1);
    let next = either["next_page_token"].as_str().unwrap();
    let (_, second) =
        rest.get(&format!("/v1/fulfillments?filter.course_run_key={run_q}&page_size=1&page_token={next}")).await;
    assert_eq!(second["fulfillments"][0]["fulfillment_id"], ids[0].as_str(), "{second}");

    for (query, field) in [
        ("filter.states=99", "filter.states[0]"),
        ("filter.states=FULFILLMENT_STATE_FAILED&filter.states=FULFILLMENT_STATE_FAILED", "filter.states[1]"),
        ("page_size=501", "page_size"),
        ("page_token=nonsense", "page_token"),
        (
            "filter.updated_after=2026-12-03T10:00:00Z&filter.updated_before=2026-12-03T09:00:00Z",
            "filter.updated_after",
        ),
        ("filter.course_run_key=not-a-run", "filter.course_run_key"),
    ] {
        let (status, answer) = rest.get(&format!("/v1/fulfillments?{query}")).await;
        assert_eq!(status, 400, "{query}: {answer}");
        assert!(answer.to_string().contains(&format!("\"{field}\"")), "{query} names {field}: {answer}");
    }
    let (status, answer) = rest.get("/v1/fulfillments?filter.states=STUCK").await;
    assert_eq!(status, 400, "an unknown state name is refused by the gateway: {answer}");
    assert!(answer.to_string().contains("filter.states"), "{answer}");

    let failed = json!({"filter": {"states": ["FULFILLMENT_STATE_FAILED"], "course_run_key": run}});
    let (status, answer) = rest.retry(failed.clone()).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.to_string().contains("\"max_jobs\""), "the missing bound is named: {answer}");
    let (status, answer) =
        rest.retry(json!({"filter": {"states": ["FULFILLMENT_STATE_SUCCEEDED"]}, "max_jobs": 5})).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.to_string().contains("\"filter.states[0]\""), "{answer}");
    let (status, answer) = rest.retry(json!({"filter": failed["filter"], "max_jobs": 1})).await;
    assert_eq!(status, 400, "FAILED_PRECONDITION: {answer}");
    assert!(answer.to_string().contains("TOO_MANY_MATCH"), "{answer}");
    let (status, preview) = rest.retry(json!({"filter": failed["filter"], "max_jobs": 2, "dry_run": true})).await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["retried_count"], 2, "{preview}");
    assert_eq!(preview["dry_run"], true);
    assert_eq!(preview["fulfillment_ids"], json!([ids[1], ids[0]]));
    let (_, still) = rest
        .get(&format!("/v1/fulfillments?filter.states=FULFILLMENT_STATE_FAILED&filter.course_run_key={run_q}"))
        .await;
    assert_eq!(still["total_size"], "2", "neither the refusals nor the dry run changed anything: {still}");
    for id in &ids {
        assert!(requested_by(storage, &config, id).await.is_empty());
    }

    let (status, retried) = rest.retry(json!({"filter": failed["filter"], "max_jobs": 2})).await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!((&retried["retried_count"], &retried["dry_run"]), (&json!(2), &json!(false)), "{retried}");
    // The LMS now enrols: both are repaired.
    rest.until_in("FULFILLMENT_STATE_SUCCEEDED", &run, "2").await;
    for id in &ids {
        assert_eq!(
            requested_by(storage, &config, id).await,
            ["support-bob"],
            "the token's subject, as the gateway verified it"
        );
    }
    mesh.stop().await.expect("clean stop");
}
