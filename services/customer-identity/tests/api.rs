//! CustomerIdentity over gRPC, as callers see it: bad input, conflicts,
//! read-after-write through the cache, retirement, import. Postgres with
//! Redis, and SQLite with the in-process cache.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use customer_identity::{Config, CustomerIdentity};
use kit::cache::{CacheConfig, ReadThrough};
use kit::client::TracedChannel;
use kit::db::{Backend, Database};
use kit::serve::GrpcServer;
use kit::shutdown::Shutdown;
use kit::testing::TestDatabase;
use proto::commerce::identity::v1 as pb;
use proto::commerce::identity::v1::customer_identity_service_client::CustomerIdentityServiceClient;
use tonic::Code;

type Client = CustomerIdentityServiceClient<TracedChannel>;

struct Fixture {
    client: Client,
    shutdown: Shutdown,
    _db: TestDatabase,
    _bus_dir: tempfile::TempDir,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn fixture(backend: Backend) -> Fixture {
    let db = TestDatabase::new(backend, customer_identity::NAME).await;
    kit::db::migrate(db.config(), &customer_identity::MIGRATIONS).await.expect("migrate");
    let database = Database::open(db.config()).expect("open");
    let config = Config {
        retirement_salt: "test-salt".into(),
        cache: CacheConfig {
            namespace: format!("identity-test-{}", uuid::Uuid::new_v4().simple()),
            ..Default::default()
        },
        ..Config::default()
    };
    let cache = Arc::new(match backend {
        Backend::Postgres => ReadThrough::redis("redis://127.0.0.1:6379", &config.cache).expect("redis url"),
        Backend::Sqlite => ReadThrough::memory(&config.cache),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let shutdown = Shutdown::new();
    let bus_dir = tempfile::tempdir().expect("temporary directory");
    let bus = kit::bus::open(None, &bus_dir.path().join("events.db")).expect("event log");
    let identity = CustomerIdentity::new(&database, cache, bus, &config, &kit::metrics::Metrics::new());
    tokio::spawn(GrpcServer::new("identity-test").service(identity.service()).run(
        listener,
        async { Ok::<(), std::io::Error>(()) },
        shutdown.clone(),
    ));
    Fixture {
        client: CustomerIdentityServiceClient::new(kit::client::channel(&url).expect("channel")),
        shutdown,
        _db: db,
        _bus_dir: bus_dir,
    }
}

fn upsert(customer: &str, lms_user_id: &str, username: &str) -> pb::UpsertCustomerRequest {
    pb::UpsertCustomerRequest {
        customer_id: customer.into(),
        lms_user_id: lms_user_id.into(),
        lms_username: username.into(),
        email: format!("{username}@example.org"),
        expected_version: None,
    }
}

fn get(customer: &str) -> pb::GetCustomerRequest {
    pb::GetCustomerRequest { customer_id: customer.into() }
}

fn by_lms_user_id(id: &str) -> pb::LookupCustomerRequest {
    pb::LookupCustomerRequest { key: Some(pb::lookup_customer_request::Key::LmsUserId(id.into())) }
}

fn by_username(name: &str) -> pb::LookupCustomerRequest {
    pb::LookupCustomerRequest { key: Some(pb::lookup_customer_request::Key::LmsUsername(name.into())) }
}

fn assert_invalid(status: &tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let fields: Vec<String> = kit::error::field_violations(status).into_iter().map(|(f, _)| f).collect();
    assert!(fields.iter().any(|f| f == field), "{field} is named in {fields:?}");
}

async fn every_class_of_bad_input_is_refused_naming_the_field_and_writes_nothing(mut f: Fixture) {
    let long_id = "c".repeat(101);
    let cases = [
        (upsert("", "1", "ada"), "customer_id"),
        (upsert(&long_id, "1", "ada"), "customer_id"),
        (upsert("c1", "", "ada"), "lms_user_id"),
        (upsert("c1", "12x", "ada"), "lms_user_id"),
        (upsert("c1", "-4", "ada"), "lms_user_id"),
        (upsert("c1", "1", "a"), "lms_username"),
        (upsert("c1", "1", &"a".repeat(31)), "lms_username"),
        (upsert("c1", "1", "ada lovelace"), "lms_username"),
        (pb::UpsertCustomerRequest { email: "not-an-email".into(), ..upsert("c1", "1", "ada") }, "email"),
        (pb::UpsertCustomerRequest { expected_version: Some(-1), ..upsert("c1", "1", "ada") }, "expected_version"),
    ];
    for (request, field) in cases {
        let status = f.client.upsert_customer(request).await.expect_err(field);
        assert_invalid(&status, field);
    }
    assert_eq!(f.client.get_customer(get("c1")).await.unwrap_err().code(), Code::NotFound, "nothing was written");
    assert_invalid(&f.client.get_customer(get("")).await.unwrap_err(), "customer_id");
    assert_invalid(&f.client.lookup_customer(by_lms_user_id("abc")).await.unwrap_err(), "lms_user_id");
    assert_invalid(&f.client.lookup_customer(by_username("x")).await.unwrap_err(), "lms_username");
    assert_invalid(&f.client.lookup_customer(pb::LookupCustomerRequest { key: None }).await.unwrap_err(), "key");

    let key = |id: &str| pb::CustomerKey { key: Some(pb::customer_key::Key::LmsUserId(id.into())) };
    let too_many = pb::BatchLookupCustomersRequest { keys: (1..=1001).map(|i| key(&i.to_string())).collect() };
    assert_invalid(&f.client.batch_lookup_customers(too_many).await.unwrap_err(), "keys");
    let one_bad = pb::BatchLookupCustomersRequest { keys: vec![key("1"), key("x1"), pb::CustomerKey { key: None }] };
    let status = f.client.batch_lookup_customers(one_bad).await.unwrap_err();
    assert_invalid(&status, "keys[1].lms_user_id");
    assert_invalid(&status, "keys[2]");
    assert_invalid(&f.client.retire_customer(pb::RetireCustomerRequest { key: None }).await.unwrap_err(), "key");
}

async fn conflicts_and_versions_carry_reasons(mut f: Fixture) {
    let created = f.client.upsert_customer(upsert("c1", "10", "ada")).await.unwrap().into_inner();
    assert!(created.created);
    let status = f.client.upsert_customer(upsert("c2", "10", "grace")).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(kit::error::reason(&status).as_deref(), Some("LMS_USER_ID_TAKEN"));
    assert!(status.message().contains("c1"), "names the owner: {}", status.message());
    let status = f.client.upsert_customer(upsert("c2", "11", "ADA")).await.unwrap_err();
    assert_eq!(kit::error::reason(&status).as_deref(), Some("LMS_USERNAME_TAKEN"));

    let stale = pb::UpsertCustomerRequest { expected_version: Some(0), ..upsert("c1", "10", "ada2") };
    let status = f.client.upsert_customer(stale).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(kit::error::reason(&status).as_deref(), Some("VERSION_MISMATCH"));
    let current = pb::UpsertCustomerRequest { expected_version: Some(1), ..upsert("c1", "10", "ada2") };
    assert_eq!(f.client.upsert_customer(current).await.unwrap().into_inner().customer.unwrap().version, 2);
}

async fn concurrent_upserts_claiming_one_lms_user_id_have_one_winner(f: Fixture) {
    let claims = (0..6).map(|i| {
        let mut client = f.client.clone();
        tokio::spawn(async move { client.upsert_customer(upsert(&format!("c{i}"), "777", &format!("user{i}"))).await })
    });
    let results: Vec<_> = futures::future::join_all(claims).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "exactly one wins");
    for status in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
        assert_eq!(kit::error::reason(status).as_deref(), Some("LMS_USER_ID_TAKEN"));
    }
}

/// Readers hammer every key (filling the cache, racing the writer); after
/// each acknowledged write, every key answers the new value.
async fn a_read_after_an_acknowledged_write_is_never_stale(mut f: Fixture) {
    f.client.upsert_customer(upsert("c1", "4242", "name0")).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let (mut client, stop) = (f.client.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let _ = client.get_customer(get("c1")).await;
                    let _ = client.lookup_customer(by_lms_user_id("4242")).await;
                    let _ = client.lookup_customer(by_username(&format!("name{i}"))).await;
                }
            })
        })
        .collect();
    for round in 1..=40 {
        let name = format!("name{round}");
        f.client.upsert_customer(upsert("c1", "4242", &name)).await.unwrap();
        let by_id = f.client.get_customer(get("c1")).await.unwrap().into_inner().customer.unwrap();
        let by_lms = f.client.lookup_customer(by_lms_user_id("4242")).await.unwrap().into_inner().customer.unwrap();
        let by_name = f.client.lookup_customer(by_username(&name)).await.unwrap().into_inner().customer.unwrap();
        assert_eq!((by_id.lms_username.as_str(), by_id.version), (name.as_str(), round + 1), "round {round}");
        assert_eq!(by_lms.lms_username, name, "round {round}");
        assert_eq!(by_name.customer_id, "c1", "round {round}");
        let old = f.client.lookup_customer(by_username(&format!("name{}", round - 1))).await.unwrap_err();
        assert_eq!(old.code(), Code::NotFound, "the previous name no longer finds the customer (round {round})");
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await.unwrap();
    }
}

async fn retirement_through_the_api(mut f: Fixture) {
    f.client.upsert_customer(upsert("c1", "55", "ada")).await.unwrap();
    // Cache the soon-retired name and id.
    f.client.lookup_customer(by_username("ada")).await.unwrap();
    f.client.lookup_customer(by_lms_user_id("55")).await.unwrap();
    let retire = |key| pb::RetireCustomerRequest { key: Some(key) };
    let retired = f
        .client
        .retire_customer(retire(pb::retire_customer_request::Key::LmsUsername("ada".into())))
        .await
        .unwrap()
        .into_inner()
        .customer
        .unwrap();
    assert!(retired.retired && retired.email.is_empty());
    assert!(retired.lms_username.starts_with("retired__user_"));
    assert_eq!(f.client.lookup_customer(by_username("ada")).await.unwrap_err().code(), Code::NotFound);
    let by_lms = f.client.lookup_customer(by_lms_user_id("55")).await.unwrap().into_inner().customer.unwrap();
    assert_eq!(by_lms, retired, "purchase history still joins on lms_user_id");
    let again = f
        .client
        .retire_customer(retire(pb::retire_customer_request::Key::CustomerId("c1".into())))
        .await
        .unwrap()
        .into_inner()
        .customer
        .unwrap();
    assert_eq!(again, retired, "idempotent");
    let status = f.client.upsert_customer(upsert("c1", "55", "ada")).await.unwrap_err();
    assert_eq!(kit::error::reason(&status).as_deref(), Some("RETIRED"));
}

/// One row of an import, without an email.
fn record(customer: &str, lms_user_id: &str, username: &str) -> pb::CustomerRecord {
    pb::CustomerRecord {
        customer_id: customer.into(),
        lms_user_id: lms_user_id.into(),
        lms_username: username.into(),
        email: String::new(),
    }
}

async fn import_streams_counts_and_reasons(mut f: Fixture) {
    f.client.upsert_customer(upsert("owner", "900", "owner")).await.unwrap();
    // A miss cached before the import must not hide the imported row.
    assert_eq!(f.client.get_customer(get("i1")).await.unwrap_err().code(), Code::NotFound);
    let batches = vec![
        pb::ImportCustomersRequest { customers: vec![record("i1", "1", "imp_one"), record("i2", "x", "imp_two")] },
        pb::ImportCustomersRequest { customers: vec![] },
        pb::ImportCustomersRequest {
            customers: vec![record("i3", "900", "imp_three"), record("owner", "900", "owner"), record("i4", "4", "a")],
        },
    ];
    let answer = f.client.import_customers(tokio_stream::iter(batches)).await.unwrap().into_inner();
    // The owner's row clears its email: updated.
    assert_eq!((answer.inserted, answer.updated, answer.unchanged, answer.rejected), (1, 1, 0, 3));
    let rejected: Vec<(i64, &str, &str)> =
        answer.rejections.iter().map(|r| (r.row, r.customer_id.as_str(), r.field.as_str())).collect();
    assert_eq!(rejected, [(2, "i2", "lms_user_id"), (3, "i3", "lms_user_id"), (5, "i4", "lms_username")]);
    assert!(answer.rejections[1].reason.contains("owner"), "{:?}", answer.rejections[1]);
    assert_eq!(f.client.get_customer(get("i1")).await.unwrap().into_inner().customer.unwrap().lms_username, "imp_one");
    // The stored rows again: unchanged, not updated, and their versions stay.
    let again = vec![pb::ImportCustomersRequest {
        customers: vec![record("i1", "1", "imp_one"), record("owner", "900", "owner")],
    }];
    let answer = f.client.import_customers(tokio_stream::iter(again)).await.unwrap().into_inner();
    assert_eq!((answer.inserted, answer.updated, answer.unchanged, answer.rejected), (0, 0, 2, 0));
    assert_eq!(f.client.get_customer(get("i1")).await.unwrap().into_inner().customer.unwrap().version, 1);
}

/// Into an empty table the import stages the stream and writes it at the end
/// (indexes built after); the answer is the one batch by batch would give,
/// and a miss cached before is gone.
async fn a_first_load_answers_as_batch_by_batch_would(mut f: Fixture) {
    assert_eq!(f.client.get_customer(get("f1")).await.unwrap_err().code(), Code::NotFound);
    let clean = vec![
        pb::ImportCustomersRequest { customers: vec![record("f1", "1", "first_one"), record("f2", "x", "bad_id")] },
        pb::ImportCustomersRequest { customers: vec![] },
        pb::ImportCustomersRequest { customers: vec![record("f3", "3", "first_three")] },
    ];
    let answer = f.client.import_customers(tokio_stream::iter(clean)).await.unwrap().into_inner();
    assert_eq!((answer.inserted, answer.updated, answer.unchanged, answer.rejected), (2, 0, 0, 1));
    let rejected: Vec<(i64, &str)> = answer.rejections.iter().map(|r| (r.row, r.field.as_str())).collect();
    assert_eq!(rejected, [(2, "lms_user_id")]);
    let found = f.client.get_customer(get("f1")).await.expect("the cached miss was cleared").into_inner();
    assert_eq!(found.customer.unwrap().lms_username, "first_one");
    let taken = f.client.upsert_customer(upsert("other", "3", "other")).await.unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists, "the unique keys hold after the load: {taken:?}");
}

/// A first load whose rows share keys falls back to batch by batch: the same
/// repeats, taken keys and updates as into a table that had rows.
async fn a_first_load_with_shared_keys_answers_as_batch_by_batch_would(mut f: Fixture) {
    let stream = vec![
        pb::ImportCustomersRequest {
            customers: vec![record("s1", "1", "ann"), record("s2", "2", "bob"), record("s1", "9", "ann_again")],
        },
        pb::ImportCustomersRequest {
            customers: vec![record("s3", "2", "cat"), record("s1", "1", "ann_renamed"), record("s4", "y", "dan")],
        },
    ];
    let answer = f.client.import_customers(tokio_stream::iter(stream)).await.unwrap().into_inner();
    // Row 3 repeats s1 in its batch; row 4 claims bob's id; row 5 updates s1; row 6 is invalid.
    assert_eq!((answer.inserted, answer.updated, answer.unchanged, answer.rejected), (2, 1, 0, 3));
    let rejected: Vec<(i64, &str, &str)> =
        answer.rejections.iter().map(|r| (r.row, r.customer_id.as_str(), r.field.as_str())).collect();
    assert_eq!(rejected, [(3, "s1", "customer_id"), (4, "s3", "lms_user_id"), (6, "s4", "lms_user_id")]);
    let s1 = f.client.get_customer(get("s1")).await.unwrap().into_inner().customer.unwrap();
    assert_eq!((s1.lms_username.as_str(), s1.version), ("ann_renamed", 2));
}

async fn batch_lookup_answers_in_order(mut f: Fixture) {
    f.client.upsert_customer(upsert("c1", "1", "ada")).await.unwrap();
    f.client.upsert_customer(upsert("c2", "2", "grace")).await.unwrap();
    use pb::customer_key::Key;
    let keys = vec![
        pb::CustomerKey { key: Some(Key::LmsUsername("GRACE".into())) },
        pb::CustomerKey { key: Some(Key::CustomerId("nobody".into())) },
        pb::CustomerKey { key: Some(Key::LmsUserId("1".into())) },
    ];
    for _ in 0..2 {
        // The second time, from the cache.
        let results =
            f.client.batch_lookup_customers(pb::BatchLookupCustomersRequest { keys: keys.clone() }).await.unwrap();
        let found: Vec<Option<String>> =
            results.into_inner().results.into_iter().map(|r| r.customer.map(|c| c.customer_id)).collect();
        assert_eq!(found, [Some("c2".to_string()), None, Some("c1".to_string())]);
    }
}

macro_rules! suite {
    ($backend:ident, $kind:expr) => {
        mod $backend {
            use super::*;

            #[tokio::test]
            async fn every_class_of_bad_input_is_refused_naming_the_field_and_writes_nothing() {
                super::every_class_of_bad_input_is_refused_naming_the_field_and_writes_nothing(fixture($kind).await)
                    .await;
            }
            #[tokio::test]
            async fn conflicts_and_versions_carry_reasons() {
                super::conflicts_and_versions_carry_reasons(fixture($kind).await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_upserts_claiming_one_lms_user_id_have_one_winner() {
                super::concurrent_upserts_claiming_one_lms_user_id_have_one_winner(fixture($kind).await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn a_read_after_an_acknowledged_write_is_never_stale() {
                super::a_read_after_an_acknowledged_write_is_never_stale(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn retirement_through_the_api() {
                super::retirement_through_the_api(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn import_streams_counts_and_reasons() {
                super::import_streams_counts_and_reasons(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_first_load_answers_as_batch_by_batch_would() {
                super::a_first_load_answers_as_batch_by_batch_would(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_first_load_with_shared_keys_answers_as_batch_by_batch_would() {
                super::a_first_load_with_shared_keys_answers_as_batch_by_batch_would(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn batch_lookup_answers_in_order() {
                super::batch_lookup_answers_in_order(fixture($kind).await).await;
            }
        }
    };
}

suite!(postgres_and_redis, Backend::Postgres);
suite!(sqlite_and_memory, Backend::Sqlite);
