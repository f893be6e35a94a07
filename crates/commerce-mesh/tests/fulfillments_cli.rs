//! `commerce-mesh fulfillments list|retry` as an operator runs it, against a
//! running mesh whose LMS cannot be reached (so every order FAILS), on
//! embedded storage and on Postgres + Redis: the table and `--json`, the
//! filters, bad flags and bounds named, a dry run, the bound enforced, and a
//! retry whose transitions (read in the database) name the token's subject.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

mod support;

use std::time::Duration;

use commerce_mesh::{Component, MeshConfig};
use proto::commerce::fulfillment::v1 as pb;
use proto::commerce::fulfillment::v1::fulfillment_service_client::FulfillmentServiceClient;
use support::{HANG_GUARD, mesh_command, wait_serving};

const RUN_A: &str = "course-v1:edX+CliA+T1";
const RUN_B: &str = "course-v1:edX+CliB+T1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fulfillments_list_and_retry_on_embedded_storage() {
    fulfillments_list_and_retry(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fulfillments_list_and_retry_on_postgres_and_redis() {
    fulfillments_list_and_retry(true).await;
}

fn order(number: &str, run: &str) -> pb::FulfillOrderRequest {
    pb::FulfillOrderRequest {
        order_number: number.into(),
        date_placed: Some(kit::time::to_timestamp(chrono::Utc::now())),
        source_system: "commercetools".into(),
        learner: Some(pb::Learner { lms_user_id: "7".into(), lms_username: "ada".into(), ..Default::default() }),
        line_items: vec![pb::LineItem {
            line_item_id: "l1".into(),
            product: Some(pb::line_item::Product::CourseRun(pb::CourseRunEnrollment {
                course_run_key: run.into(),
                mode: "verified".into(),
                credit_provider_id: String::new(),
            })),
            price: Some(proto::commerce::r#type::v1::Money { currency_code: "USD".into(), amount: "10.00".into() }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Fulfillment's database, read beside the running mesh.
enum Database {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

impl Database {
    /// Who asked for each transition of `id` out of FAILED that someone asked for, in order.
    async fn requested_by(&self, id: &str) -> Vec<String> {
        const QUERY: &str = "SELECT requested_by FROM fulfillment_transitions
             WHERE fulfillment_id = $1 AND from_state = 'FAILED' AND requested_by IS NOT NULL ORDER BY seq";
        match self {
            Database::Postgres(pool) => {
                let mut conn = pool.acquire().await.unwrap();
                sqlx::query("SET search_path TO fulfillment").execute(&mut *conn).await.unwrap();
                sqlx::query_scalar(QUERY).bind(id).fetch_all(&mut *conn).await.unwrap()
            }
            Database::Sqlite(pool) => sqlx::query_scalar(QUERY).bind(id).fetch_all(pool).await.unwrap(),
        }
    }
}

async fn fulfillments_list_and_retry(on_postgres: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = MeshConfig { data_dir: dir.path().join("data"), ..Default::default() };
    config.use_ephemeral_ports();
    // Nothing listens there: each attempt fails at once, and one attempt is all there is.
    config.fulfillment.settings.lms.url = "http://127.0.0.1:9".into();
    config.fulfillment.settings.retry.max_attempts = 1;
    let database = match on_postgres {
        false => None,
        true => {
            let database = kit::testing::TestDatabase::postgres("unused").await;
            config.database_url = Some(database.config().url.clone());
            config.redis_url = Some("redis://127.0.0.1:6379/9".into());
            Some(database)
        }
    };
    let mesh = commerce_mesh::start(config.clone(), kit::shutdown::Shutdown::new()).await.expect("mesh starts");
    let url = mesh.grpc_url(Component::Fulfillment);
    wait_serving(&url).await;
    let mut client = FulfillmentServiceClient::new(mesh.grpc_channel(Component::Fulfillment));
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let mut ids = Vec::new();
    // The workers fail each at once. One order at a time, each FAILED before the
    // next is placed, so their update times follow the order they were placed in.
    let failed = pb::FulfillmentFilter { states: vec![pb::FulfillmentState::Failed as i32], ..Default::default() };
    for (n, course_run) in [RUN_A, RUN_A, RUN_B].into_iter().enumerate() {
        let accepted = client.fulfill_order(order(&format!("EDX-CLI-{run}-{n}"), course_run)).await.expect("accepted");
        ids.push(accepted.into_inner().fulfillments[0].fulfillment_id.clone());
        tokio::time::timeout(HANG_GUARD, async {
            loop {
                let request = pb::ListFulfillmentsRequest { filter: Some(failed.clone()), ..Default::default() };
                if client.list_fulfillments(request).await.expect("listed").into_inner().total_size == n as i64 + 1 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the order FAILED");
    }

    let run_cli = |args: &[&str]| {
        let mut command = mesh_command(dir.path());
        command.arg("fulfillments").args(args).args(["--fulfillment", &url]);
        // The development secret `up` wrote is found through the data directory.
        command.env("MESH_DATA_DIR", dir.path().join("data"));
        async move { command.output().await.expect("run commerce-mesh fulfillments") }
    };
    let listed = run_cli(&["list", "--state", "FAILED", "--since", "1h"]).await;
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&listed.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("COURSE RUN") && lines[0].contains("ERROR KIND"),
        "{stdout}"
    );
    assert_eq!(lines.len(), 5, "a header, three rows, the count: {stdout}");
    for (line, id) in lines[1..4].iter().zip(ids.iter().rev()) {
        assert!(line.starts_with(id.as_str()), "newest first: {stdout}");
        assert!(line.contains("FAILED") && line.contains("ATTEMPTS_EXHAUSTED"), "{stdout}");
    }
    let state_column = lines[0].find("STATE").unwrap();
    assert!(lines[1..4].iter().all(|line| line[state_column..].starts_with("FAILED")), "aligned: {stdout}");
    assert_eq!(lines[4], "3 of 3 matching fulfillments shown");

    let one = run_cli(&["list", "--state", "failed", "--limit", "1"]).await;
    assert!(String::from_utf8_lossy(&one.stdout).contains("1 of 3 matching"), "{one:?}");
    let as_json = run_cli(&["list", "--course-run", RUN_A, "--error-kind", "attempts_exhausted", "--json"]).await;
    assert!(as_json.status.success(), "{}", String::from_utf8_lossy(&as_json.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&as_json.stdout).expect("JSON");
    assert_eq!(answer["total_size"], 2, "{answer}");
    let listed_ids: Vec<&str> =
        answer["fulfillments"].as_array().unwrap().iter().map(|f| f["fulfillment_id"].as_str().unwrap()).collect();
    assert_eq!(listed_ids, [ids[1].as_str(), ids[0].as_str()]);
    assert_eq!(answer["fulfillments"][0]["state"], "FAILED");
    let elsewhere = run_cli(&["list", "--source-system", "shopify"]).await;
    assert!(String::from_utf8_lossy(&elsewhere.stdout).contains("0 of 0 matching"), "{elsewhere:?}");

    let unknown = run_cli(&["list", "--state", "stuck"]).await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("--state stuck"), "{unknown:?}");
    let unbounded = run_cli(&["retry", "--state", "FAILED", "--max", "0"]).await;
    assert_eq!(unbounded.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unbounded.stderr).contains("max_jobs"), "the bound is named: {unbounded:?}");
    let bad_run = run_cli(&["retry", "--course-run", "not-a-run", "--max", "5"]).await;
    assert!(String::from_utf8_lossy(&bad_run.stderr).contains("filter.course_run_key"), "{bad_run:?}");

    let retry_a = ["retry", "--state", "FAILED", "--course-run", RUN_A];
    let over = run_cli(&[&retry_a[..], &["--max", "1"]].concat()).await;
    assert_eq!(over.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&over.stderr);
    assert!(stderr.contains("2 failed fulfillments match"), "{stderr}");
    let preview = run_cli(&[&retry_a[..], &["--max", "5", "--dry-run"]].concat()).await;
    let stdout = String::from_utf8_lossy(&preview.stdout);
    assert!(preview.status.success(), "{stdout}{}", String::from_utf8_lossy(&preview.stderr));
    assert_eq!(stdout, format!("dry run: would retry 2 fulfillments; nothing was changed\n{}\n{}\n", ids[1], ids[0]));

    let scopes = ["fulfillment:read", "fulfillment:write"].map(String::from).to_vec();
    let token = commerce_mesh::dev_tokens::mint(&config, "sre-alice", scopes, Duration::from_secs(300)).expect("token");
    let retried = run_cli(&[&retry_a[..], &["--max", "5", "--json", "--token", &token]].concat()).await;
    assert!(retried.status.success(), "{}", String::from_utf8_lossy(&retried.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&retried.stdout).expect("JSON");
    assert_eq!(answer["retried_count"], 2, "{answer}");
    assert_eq!(answer["dry_run"], false);
    assert_eq!(answer["fulfillment_ids"], serde_json::json!([ids[1], ids[0]]));

    // The retries are in the database, each naming who asked; the other run's job was not touched.
    let fulfillment_db = match &database {
        Some(database) => Database::Postgres(sqlx::PgPool::connect(&database.config().url).await.unwrap()),
        None => {
            let file = format!("sqlite://{}?mode=ro", dir.path().join("data/fulfillment.db").display());
            Database::Sqlite(sqlx::SqlitePool::connect(&file).await.unwrap())
        }
    };
    for id in &ids[..2] {
        assert_eq!(fulfillment_db.requested_by(id).await, ["sre-alice"], "the retry of {id} names who asked");
    }
    assert!(fulfillment_db.requested_by(&ids[2]).await.is_empty(), "the other course run's job was not retried");
    mesh.stop().await.expect("clean stop");
}
