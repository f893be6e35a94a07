//! PurchaseHistory inside the whole mesh: a learner renamed in CustomerIdentity
//! keeps the purchases stored under their old username.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use commerce_mesh::Component;
use kit::shutdown::Shutdown;
use proto::commerce::identity::v1::UpsertCustomerRequest;
use proto::commerce::identity::v1::customer_identity_service_client::CustomerIdentityServiceClient;
use proto::commerce::purchases::v1::purchase_history_service_client::PurchaseHistoryServiceClient;
use proto::commerce::purchases::v1::{ListPurchasesRequest, list_purchases_request};

const GUARD: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_learner_keeps_their_purchase_history() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut config = commerce_mesh::MeshConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
    config.use_ephemeral_ports();
    let database = config.database(Component::PurchaseHistory).expect("purchase history's database");
    let mesh = commerce_mesh::start(config, Shutdown::new()).await.expect("mesh starts");
    for component in [Component::PurchaseHistory, Component::CustomerIdentity] {
        mesh_tests::health::wait_serving(&mesh.grpc_url(component), GUARD).await.expect("ready");
    }
    let mut identity = CustomerIdentityServiceClient::new(mesh.grpc_channel(Component::CustomerIdentity));
    let link = |username: &str| UpsertCustomerRequest {
        customer_id: "cust-9".into(),
        lms_user_id: "909".into(),
        lms_username: username.into(),
        email: String::new(),
        expected_version: None,
    };
    identity.upsert_customer(link("grace")).await.expect("linked");

    // Purchases stored under the old username, as the consumer stores them.
    let store = purchase_history::store::for_database(&kit::db::Database::open(&database).unwrap());
    let purchases: Vec<purchase_history::domain::Purchase> = (0..3)
        .map(|n| purchase_history::domain::Purchase {
            purchase_id: vocab::PurchaseId::parse(&format!("p-{n}")).unwrap(),
            lms_user_id: vocab::LmsUserId::new(909).unwrap(),
            username: vocab::LmsUsername::parse("grace").unwrap(),
            order_number: Some(vocab::OrderNumber::parse(&format!("EDX-{n}")).unwrap()),
            product_key: Some(vocab::ProductKey::parse("course-v1:edX+DemoX+T1").unwrap()),
            title: vocab::Title::parse("Demo").unwrap(),
            price: vocab::Price::parse("USD", "10").unwrap(),
            purchased_at: chrono::DateTime::from_timestamp(1_763_000_000 + n, 0).unwrap(),
            source: Some(vocab::SourceSystem::parse("test").unwrap()),
        })
        .collect();
    assert_eq!(store.insert_batch(&purchases).await.unwrap(), 3);

    identity.upsert_customer(link("grace_h")).await.expect("renamed");
    let mut history = PurchaseHistoryServiceClient::new(mesh.grpc_channel(Component::PurchaseHistory));
    let list = |username: &str| ListPurchasesRequest {
        learner: Some(list_purchases_request::Learner::Username(username.into())),
        page_size: 0,
        page_token: String::new(),
        hide_refunded: false,
    };
    let listed = history.list_purchases(list("grace_h")).await.expect("listed").into_inner();
    let ids: Vec<&str> = listed.purchases.iter().map(|p| p.purchase_id.as_str()).collect();
    assert_eq!(ids, ["p-2", "p-1", "p-0"], "the new name finds the purchases made under the old one");
    // A name CustomerIdentity does not know answers from the stored usernames.
    let unknown = history.list_purchases(list("GRACE")).await.expect("listed").into_inner();
    assert_eq!(unknown.purchases.len(), 3, "the stored username, compared case-insensitively");
    mesh.stop().await.expect("clean stop");
}

/// The purchases stream inside the whole mesh: once the consumer has
/// acknowledged what was recorded, PurchaseHistory's retention task trims the
/// stream to nothing and says so on the admin port (the ids stay remembered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_purchases_stream_is_trimmed_once_consumed_and_reported() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut config = commerce_mesh::MeshConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
    config.use_ephemeral_ports();
    config.bus.trim_every = Duration::from_millis(20);
    let mesh = commerce_mesh::start(config, Shutdown::new()).await.expect("mesh starts");
    let url = mesh.grpc_url(Component::PurchaseHistory);
    mesh_tests::health::wait_serving(&url, GUARD).await.expect("ready");
    let mut history = PurchaseHistoryServiceClient::new(mesh.grpc_channel(Component::PurchaseHistory));
    for n in 0..3 {
        let purchase = proto::commerce::purchases::v1::Purchase {
            purchase_id: format!("p-trim-{n}"),
            lms_user_id: "4242".into(),
            username: "trimmed".into(),
            price: Some(proto::commerce::r#type::v1::Money { currency_code: "USD".into(), amount: "10".into() }),
            purchased_at: Some(prost_types::Timestamp { seconds: 1_763_000_000 + n, nanos: 0 }),
            ..Default::default()
        };
        let request =
            proto::commerce::purchases::v1::RecordPurchaseRequest { purchase: Some(purchase), ..Default::default() };
        history.record_purchase(request).await.expect("recorded");
    }

    let labels = format!(r#"{{component="purchase-history",stream="{}"}}"#, proto::streams::PURCHASES);
    let wanted = [format!("bus_stream_entries{labels} 0"), format!("bus_stream_dedupe_markers{labels} 3")];
    let deadline = std::time::Instant::now() + GUARD;
    let metrics = loop {
        let text = reqwest::get(format!("{}/metrics", mesh.admin_url())).await.unwrap().text().await.unwrap();
        if wanted.iter().all(|line| text.contains(line.as_str())) {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "{wanted:?} never appeared in\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(metrics.contains(&format!("bus_stream_oldest_entry_age_seconds{labels} 0.0")), "{metrics}");
    let listed = history
        .list_purchases(ListPurchasesRequest {
            learner: Some(list_purchases_request::Learner::LmsUserId("4242".into())),
            page_size: 0,
            page_token: String::new(),
            hide_refunded: false,
        })
        .await
        .expect("listed")
        .into_inner();
    assert_eq!(listed.purchases.len(), 3, "consumed before it was trimmed");
    mesh.stop().await.expect("clean stop");
}
