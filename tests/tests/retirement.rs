//! Retirement reaches every service: after `RetireCustomer`, the learner's old
//! username and email are in no answer of any service, and in no row or stream
//! entry written after the retirement was applied, on embedded storage and on
//! Postgres + Redis. History stays listable by `lms_user_id`.
//!
//! What is allowed to keep the old name: what was written before the
//! retirement and is never rewritten — stream entries already published and
//! outbox rows already published (both trimmed or pruned after their windows,
//! docs/OPERATIONS.md).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::path::Path;
use std::time::Duration;

use commerce_mesh::{Component, MeshConfig};
use kit::client::TracedChannel;
use kit::shutdown::Shutdown;
use kit::testing::TestDatabase;
use mesh_tests::orders::course_run_order;
use proto::commerce::fulfillment::v1 as pb;
use proto::commerce::fulfillment::v1::fulfillment_service_client::FulfillmentServiceClient;
use proto::commerce::identity::v1 as identity;
use proto::commerce::identity::v1::customer_identity_service_client::CustomerIdentityServiceClient;
use proto::commerce::purchases::v1 as purchases;
use proto::commerce::purchases::v1::purchase_history_service_client::PurchaseHistoryServiceClient;
use sqlx::Row;

/// A stream entry as XRANGE answers it: its id and its field-value pairs.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// What a sweep looked at, and where it found the learner.
#[derive(Default)]
struct Scan {
    /// Rows, entries, keys or answers read.
    scanned: usize,
    /// Where the old username or email was found (empty when nothing leaked).
    leaked: Vec<String>,
}

impl Scan {
    fn check(&mut self, place: impl FnOnce() -> String, text: &str) {
        self.scanned += 1;
        if leaks(text) {
            self.leaked.push(format!("{}: {text}", place()));
        }
    }
}

/// Guards against a hang, not a timing assertion: generous on purpose.
const GUARD: Duration = Duration::from_secs(60);
/// Names no other row of the test holds, so finding them means a leak.
const USERNAME: &str = "zelda_retiree_q7";
const EMAIL: &str = "zelda.q7.secret@example.org";
const LMS_USER_ID: &str = "7070";
/// The Redis logical database of this test: services publish to fixed stream names.
const REDIS_DB: u32 = 11;

enum Storage {
    Embedded,
    PostgresAndRedis,
}

struct Clients {
    identity: CustomerIdentityServiceClient<TracedChannel>,
    fulfillment: FulfillmentServiceClient<TracedChannel>,
    history: PurchaseHistoryServiceClient<TracedChannel>,
}

/// Polls `check` until it answers Some, within [`GUARD`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    tokio::time::timeout(GUARD, async {
        loop {
            if let Some(value) = check().await {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} within {GUARD:?}"))
}

async fn purchases_of(history: &mut PurchaseHistoryServiceClient<TracedChannel>) -> Vec<purchases::Purchase> {
    let request = purchases::ListPurchasesRequest {
        learner: Some(purchases::list_purchases_request::Learner::LmsUserId(LMS_USER_ID.into())),
        page_size: 0,
        page_token: String::new(),
        hide_refunded: false,
    };
    history.list_purchases(request).await.expect("listed").into_inner().purchases
}

async fn order_jobs(fulfillment: &mut FulfillmentServiceClient<TracedChannel>, number: &str) -> Vec<pb::Fulfillment> {
    let request = pb::ListOrderFulfillmentsRequest { order_number: number.into(), ..Default::default() };
    fulfillment.list_order_fulfillments(request).await.expect("listed").into_inner().fulfillments
}

/// Everything a caller can ask about the learner, as text.
async fn every_answer(clients: &mut Clients) -> String {
    let mut answers = String::new();
    let customer = clients
        .identity
        .get_customer(identity::GetCustomerRequest { customer_id: "cust-zelda".into() })
        .await
        .expect("the customer stays");
    answers.push_str(&format!("{customer:?}"));
    let by_old_name = clients
        .identity
        .lookup_customer(identity::LookupCustomerRequest {
            key: Some(identity::lookup_customer_request::Key::LmsUsername(USERNAME.into())),
        })
        .await;
    assert_eq!(by_old_name.map(|_| ()).unwrap_err().code(), tonic::Code::NotFound, "the old name finds nobody");
    for job in order_jobs(&mut clients.fulfillment, "EDX-RET-1").await {
        answers.push_str(&format!("{job:?}"));
        let one = mesh_tests::orders::fulfillment(&mut clients.fulfillment, &job.fulfillment_id).await.unwrap();
        answers.push_str(&format!("{one:?}"));
    }
    answers.push_str(&format!("{:?}", purchases_of(&mut clients.history).await));
    let by_old_name = clients
        .history
        .list_purchases(purchases::ListPurchasesRequest {
            learner: Some(purchases::list_purchases_request::Learner::Username(USERNAME.into())),
            page_size: 0,
            page_token: String::new(),
            hide_refunded: false,
        })
        .await
        .expect("listed")
        .into_inner();
    assert!(by_old_name.purchases.is_empty(), "the old name lists nothing: {by_old_name:?}");
    answers
}

fn leaks(text: &str) -> bool {
    text.contains(USERNAME) || text.contains(EMAIL) || text.contains(&hex(USERNAME)) || text.contains(&hex(EMAIL))
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

async fn retirement_reaches_every_service(storage: Storage) {
    let storage_name = match storage {
        Storage::Embedded => "embedded",
        Storage::PostgresAndRedis => "postgres+redis",
    };
    let data = tempfile::tempdir().unwrap();
    let mut config = MeshConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
    config.use_ephemeral_ports();
    config.dev_lms.enabled = true;
    config.customer_identity.settings.retirement_salt = "retirement-test-salt".into();
    let database = match storage {
        Storage::Embedded => None,
        Storage::PostgresAndRedis => {
            let database = TestDatabase::postgres("unused").await;
            config.database_url = Some(database.config().url.clone());
            let redis = std::env::var("MESH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
            let url = format!("{}/{REDIS_DB}", redis.trim_end_matches('/'));
            let mut connection =
                redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
            let () = redis::cmd("FLUSHDB").query_async(&mut connection).await.unwrap();
            config.redis_url = Some(url);
            Some(database)
        }
    };
    let mesh = commerce_mesh::start(config.clone(), Shutdown::new()).await.expect("mesh starts");
    for component in Component::SERVICES {
        mesh_tests::health::wait_serving(&mesh.grpc_url(component), GUARD).await.expect("ready");
    }
    let channel = |component| mesh.grpc_channel(component);
    let mut clients = Clients {
        identity: CustomerIdentityServiceClient::new(channel(Component::CustomerIdentity)),
        fulfillment: FulfillmentServiceClient::new(channel(Component::Fulfillment)),
        history: PurchaseHistoryServiceClient::new(channel(Component::PurchaseHistory)),
    };

    // A learner with an order fulfilled and its purchase in their history.
    clients
        .identity
        .upsert_customer(identity::UpsertCustomerRequest {
            customer_id: "cust-zelda".into(),
            lms_user_id: LMS_USER_ID.into(),
            lms_username: USERNAME.into(),
            email: EMAIL.into(),
            expected_version: None,
        })
        .await
        .expect("linked");
    clients.fulfillment.fulfill_order(course_run_order("EDX-RET-1", "cust-zelda")).await.expect("accepted");
    eventually("the purchase is in the history", || {
        let mut history = clients.history.clone();
        async move { purchases_of(&mut history).await.first().filter(|p| p.username == USERNAME).map(|_| ()) }
    })
    .await;

    // Retire, and wait until every service applied it.
    let retired = clients
        .identity
        .retire_customer(identity::RetireCustomerRequest {
            key: Some(identity::retire_customer_request::Key::CustomerId("cust-zelda".into())),
        })
        .await
        .expect("retired")
        .into_inner()
        .customer
        .unwrap();
    let placeholder = retired.lms_username.clone();
    assert!(placeholder.starts_with("retired__user_") && retired.email.is_empty(), "{retired:?}");
    eventually("PurchaseHistory applies the retirement", || {
        let (mut history, placeholder) = (clients.history.clone(), placeholder.clone());
        async move { purchases_of(&mut history).await.iter().all(|p| p.username == placeholder).then_some(()) }
    })
    .await;
    eventually("Fulfillment applies the retirement", || {
        let (mut fulfillment, placeholder) = (clients.fulfillment.clone(), placeholder.clone());
        async move {
            let jobs = order_jobs(&mut fulfillment, "EDX-RET-1").await;
            jobs.iter().all(|job| job.learner.as_ref().is_some_and(|l| l.lms_username == placeholder)).then_some(())
        }
    })
    .await;
    let applied = chrono::Utc::now();
    let streams_before = stream_positions(&config).await;

    // After it: the retired learner cannot be enrolled under the old name, and a
    // purchase naming it is recorded under the placeholder.
    let mut by_name = course_run_order("EDX-RET-2", "");
    by_name.learner = Some(pb::Learner {
        customer_id: String::new(),
        lms_user_id: LMS_USER_ID.into(),
        lms_username: USERNAME.into(),
    });
    let refused = clients.fulfillment.fulfill_order(by_name).await.unwrap_err();
    assert_eq!(
        (refused.code(), kit::error::reason(&refused).as_deref()),
        (tonic::Code::FailedPrecondition, Some("CUSTOMER_RETIRED")),
        "{refused:?}"
    );
    let refused = clients.fulfillment.fulfill_order(course_run_order("EDX-RET-3", "cust-zelda")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    clients
        .history
        .record_purchase(purchases::RecordPurchaseRequest {
            purchase: Some(purchases::Purchase {
                purchase_id: "late-purchase".into(),
                lms_user_id: LMS_USER_ID.into(),
                username: USERNAME.into(),
                price: Some(proto::commerce::r#type::v1::Money { currency_code: "USD".into(), amount: "5".into() }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("recorded");
    eventually("the late purchase is listed", || {
        let mut history = clients.history.clone();
        async move {
            let listed = purchases_of(&mut history).await;
            listed.iter().any(|p| p.purchase_id == "late-purchase").then_some(listed)
        }
    })
    .await;

    // No answer names the learner.
    let answers = every_answer(&mut clients).await;
    let mut in_answers = Scan::default();
    in_answers.check(|| "the services' answers".into(), &answers);
    assert!(answers.contains(&placeholder));

    // No row, and no stream entry written after the retirement, names them.
    let rows = match &database {
        Some(database) => postgres_rows(&database.config().url, applied).await,
        None => sqlite_rows(data.path(), applied).await,
    };
    let entries = stream_entries(&config, &streams_before).await;
    mesh.stop().await.expect("clean stop");

    let figures = serde_json::json!({
        "suite": "retirement",
        "storage": storage_name,
        "answers_checked": answers.len(),
        "rows_scanned": rows.scanned,
        "stream_entries_and_keys_scanned": entries.scanned,
        "leaked": in_answers.leaked.len() + rows.leaked.len() + entries.leaked.len(),
        "refused_after_retirement": 2,
    });
    println!("RELIABILITY-FIGURES {figures}");
    assert!(in_answers.leaked.is_empty(), "an answer leaks the retired learner: {:?}", in_answers.leaked);
    assert!(rows.leaked.is_empty(), "rows name the learner: {:?}", rows.leaked);
    assert!(entries.leaked.is_empty(), "stream entries or keys name the learner: {:?}", entries.leaked);
}

/// Every stream's last entry id now (Redis ids, or the embedded log's sequence numbers).
async fn stream_positions(config: &MeshConfig) -> std::collections::BTreeMap<String, String> {
    let mut positions = std::collections::BTreeMap::new();
    match &config.redis_url {
        Some(url) => {
            let mut connection =
                redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
            let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut connection).await.unwrap();
            for key in keys {
                let kind: String = redis::cmd("TYPE").arg(&key).query_async(&mut connection).await.unwrap();
                if kind == "stream" {
                    let last: Vec<StreamEntry> = redis::cmd("XREVRANGE")
                        .arg(&key)
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1)
                        .query_async(&mut connection)
                        .await
                        .unwrap();
                    positions.insert(key, last.first().map(|(id, _)| id.clone()).unwrap_or_else(|| "0-0".into()));
                }
            }
        }
        None => {
            let log = sqlite_pool(&config.data_dir.join("events.db")).await;
            let last: i64 =
                sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM entries").fetch_one(&log).await.unwrap();
            positions.insert("log".into(), last.to_string());
        }
    }
    positions
}

/// Every Redis key, and every stream entry written after `before`, or the embedded log's entries after it.
async fn stream_entries(config: &MeshConfig, before: &std::collections::BTreeMap<String, String>) -> Scan {
    let mut scan = Scan::default();
    match &config.redis_url {
        Some(url) => {
            let mut connection =
                redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
            let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut connection).await.unwrap();
            for key in keys {
                scan.check(|| "a Redis key".into(), &key);
                let kind: String = redis::cmd("TYPE").arg(&key).query_async(&mut connection).await.unwrap();
                match kind.as_str() {
                    "stream" => {
                        let start = match before.get(&key) {
                            Some(last) => format!("({last}"),
                            None => "-".into(),
                        };
                        let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
                            .arg(&key)
                            .arg(&start)
                            .arg("+")
                            .query_async(&mut connection)
                            .await
                            .unwrap();
                        for (id, fields) in entries {
                            for (_, value) in fields {
                                scan.check(|| format!("{key} {id}"), &String::from_utf8_lossy(&value));
                            }
                        }
                    }
                    "string" => {
                        let value: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut connection).await.unwrap();
                        scan.check(|| key.clone(), &String::from_utf8_lossy(&value));
                    }
                    "zset" => {
                        let members: Vec<String> =
                            redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).query_async(&mut connection).await.unwrap();
                        for member in members {
                            scan.check(|| key.clone(), &member);
                        }
                    }
                    _ => {}
                }
            }
        }
        None => {
            let log = sqlite_pool(&config.data_dir.join("events.db")).await;
            let after: i64 = before["log"].parse().unwrap();
            let payloads: Vec<Vec<u8>> = sqlx::query_scalar("SELECT payload FROM entries WHERE seq > ?1")
                .bind(after)
                .fetch_all(&log)
                .await
                .unwrap();
            assert!(!payloads.is_empty(), "the late purchase went through the log");
            for payload in payloads {
                scan.check(|| "a log entry after the retirement".into(), &String::from_utf8_lossy(&payload));
            }
        }
    }
    scan
}

async fn sqlite_pool(path: &Path) -> sqlx::SqlitePool {
    sqlx::SqlitePool::connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(path).read_only(true))
        .await
        .unwrap()
}

/// Every row of every service's SQLite file, as text (BLOBs as their bytes).
async fn sqlite_rows(data: &Path, applied: chrono::DateTime<chrono::Utc>) -> Scan {
    let mut scan = Scan::default();
    for service in ["fulfillment", "customer_identity", "catalog_ingest", "purchase_history"] {
        let pool = sqlite_pool(&data.join(format!("{service}.db"))).await;
        let tables: Vec<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'").fetch_all(&pool).await.unwrap();
        for table in tables {
            let columns: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA table_info(\"{table}\")")))
                .fetch_all(&pool)
                .await
                .unwrap()
                .iter()
                .map(|row| row.get::<String, _>("name"))
                .collect();
            let text = columns
                .iter()
                .map(|c| format!("COALESCE(CAST(\"{c}\" AS TEXT), '')"))
                .collect::<Vec<_>>()
                .join(" || '|' || ");
            // Outbox rows published before the retirement keep what they carried (pruned after the window).
            let filter = if table == "outbox" {
                format!("WHERE published_at IS NULL OR create_time >= {}", applied.timestamp_micros())
            } else {
                String::new()
            };
            let rows: Vec<Vec<u8>> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT CAST({text} AS BLOB) FROM \"{table}\" {filter}"
            )))
            .fetch_all(&pool)
            .await
            .unwrap();
            for row in rows {
                scan.check(|| format!("{service}.{table}"), &String::from_utf8_lossy(&row));
            }
        }
    }
    scan
}

/// Every row of every service's schema, as text (bytea as hex, which [`leaks`] also looks for).
async fn postgres_rows(url: &str, applied: chrono::DateTime<chrono::Utc>) -> Scan {
    let mut scan = Scan::default();
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables
          WHERE table_schema IN ('fulfillment', 'customer_identity', 'catalog_ingest', 'purchase_history')",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(tables.len() > 8, "{tables:?}");
    for (schema, table) in tables {
        let filter = if table == "outbox" {
            "WHERE published_at IS NULL OR create_time >= $1"
        } else {
            "WHERE $1::timestamptz IS NOT NULL"
        };
        let rows: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT t::text FROM \"{schema}\".\"{table}\" t {filter}")))
                .bind(applied)
                .fetch_all(&pool)
                .await
                .unwrap();
        for row in rows {
            scan.check(|| format!("{schema}.{table}"), &row);
        }
    }
    pool.close().await;
    scan
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retirement_reaches_every_service_embedded() {
    retirement_reaches_every_service(Storage::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retirement_reaches_every_service_on_postgres_and_redis() {
    retirement_reaches_every_service(Storage::PostgresAndRedis).await;
}
