//! Fulfillment inside the whole mesh: an order naming only a commerce customer
//! is resolved through the real CustomerIdentity over gRPC, enrolled in a stub
//! LMS over HTTP, and announced on the embedded event log.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use commerce_mesh::Component;
use kit::shutdown::Shutdown;
use mesh_tests::orders::{course_run_order as order, link_ada};
use mesh_tests::storage::Storage;
use prost::Message;
use proto::commerce::catalog::v1::IngestProductEventRequest;
use proto::commerce::catalog::v1::catalog_ingest_service_client::CatalogIngestServiceClient;
use proto::commerce::events::v1::{EventEnvelope, event_envelope::Payload};
use proto::commerce::fulfillment::v1 as pb;
use proto::commerce::fulfillment::v1::fulfillment_service_client::FulfillmentServiceClient;
use proto::commerce::identity::v1::customer_identity_service_client::CustomerIdentityServiceClient;
use proto::commerce::identity::v1::{RetireCustomerRequest, UpsertCustomerRequest, retire_customer_request};
use tonic_types::StatusExt;
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

const GUARD: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_for_a_customer_is_resolved_enrolled_and_announced() {
    let lms = mesh_tests::lms_stub::issuing_tokens().await;
    Mock::given(method("POST"))
        .and(path("/api/enrollment/v1/enrollment"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&lms)
        .await;

    let data = tempfile::tempdir().expect("tempdir");
    let mut config = commerce_mesh::MeshConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
    config.use_ephemeral_ports();
    config.fulfillment.settings.lms.url = lms.uri();
    let mesh = commerce_mesh::start(config, Shutdown::new()).await.expect("mesh starts");
    for component in [Component::Fulfillment, Component::CustomerIdentity] {
        mesh_tests::health::wait_serving(&mesh.grpc_url(component), GUARD).await.expect("ready");
    }
    let mut identity = CustomerIdentityServiceClient::new(mesh.grpc_channel(Component::CustomerIdentity));
    let mut fulfillment = FulfillmentServiceClient::new(mesh.grpc_channel(Component::Fulfillment));

    let unknown = fulfillment.fulfill_order(order("EDX-404", "nobody")).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::FailedPrecondition, "{unknown:?}");
    assert_eq!(kit::error::reason(&unknown).as_deref(), Some("UNKNOWN_CUSTOMER"));

    identity.upsert_customer(link_ada("cust-7")).await.expect("customer linked");
    identity
        .upsert_customer(UpsertCustomerRequest {
            customer_id: "cust-gone".into(),
            lms_user_id: "99".into(),
            lms_username: "gone".into(),
            email: String::new(),
            expected_version: None,
        })
        .await
        .expect("customer linked");
    identity
        .retire_customer(RetireCustomerRequest {
            key: Some(retire_customer_request::Key::CustomerId("cust-gone".into())),
        })
        .await
        .expect("retired");
    let retired = fulfillment.fulfill_order(order("EDX-410", "cust-gone")).await.unwrap_err();
    assert_eq!(retired.code(), tonic::Code::FailedPrecondition, "{retired:?}");
    assert_eq!(kit::error::reason(&retired).as_deref(), Some("CUSTOMER_RETIRED"));

    let accepted = fulfillment.fulfill_order(order("EDX-200", "cust-7")).await.expect("accepted").into_inner();
    let learner = accepted.fulfillments[0].learner.clone().unwrap();
    assert_eq!(
        (learner.customer_id.as_str(), learner.lms_user_id.as_str(), learner.lms_username.as_str()),
        ("cust-7", "4242", "ada")
    );

    // The mesh publishes to the embedded log in its data directory; read it as a consumer would.
    let bus = kit::bus::open(None, &data.path().join("events.db")).expect("event log");
    bus.ensure_group(proto::streams::PURCHASES, "test").await.unwrap();
    let delivered = tokio::time::timeout(GUARD, async {
        loop {
            let read = bus.read(proto::streams::PURCHASES, "test", "t", 10, Duration::from_secs(1)).await.unwrap();
            if !read.is_empty() {
                return read;
            }
        }
    })
    .await
    .expect("a purchase is published");
    assert_eq!(delivered.len(), 1);
    let envelope = EventEnvelope::decode(delivered[0].payload.as_slice()).unwrap();
    let Some(Payload::PurchaseRecorded(purchase)) = envelope.payload else { panic!("{envelope:?}") };
    assert_eq!((purchase.username.as_str(), purchase.order_number.as_str()), ("ada", "EDX-200"));

    let requests = lms.received_requests().await.unwrap();
    let request = requests.iter().find(|r| r.url.path() == "/api/enrollment/v1/enrollment").expect("enrolled");
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["user"], "ada", "the LMS enrolls the user CustomerIdentity resolved");
    mesh.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_course_run_checks_only_what_the_catalog_sells_is_accepted_embedded() {
    only_what_the_catalog_sells_is_accepted(Storage::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_course_run_checks_only_what_the_catalog_sells_is_accepted_postgres() {
    only_what_the_catalog_sells_is_accepted(Storage::PostgresAndRedis).await;
}

/// Fulfillment asking the real CatalogIngest (`check_course_runs`): unknown
/// runs, modes not sold and runs whose enrollment has closed are refused
/// FAILED_PRECONDITION, naming the line; the example product's on-demand run is accepted.
async fn only_what_the_catalog_sells_is_accepted(storage: Storage) {
    let data = tempfile::tempdir().expect("tempdir");
    let mut config = commerce_mesh::MeshConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
    config.use_ephemeral_ports();
    config.fulfillment.settings.check_course_runs = true;
    let _database = storage.configure(&mut config).await;
    let mesh = commerce_mesh::start(config, Shutdown::new()).await.expect("mesh starts");
    for component in [Component::Fulfillment, Component::CatalogIngest] {
        mesh_tests::health::wait_serving(&mesh.grpc_url(component), GUARD).await.expect("ready");
    }
    // The catalog learns a product from a line of business (one of the built-in example sources).
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/catalog/sources/examples");
    let payload: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(examples.join("exec-ed-partner/product.upserted.json")).unwrap())
            .unwrap();
    let mut catalog = CatalogIngestServiceClient::new(mesh.grpc_channel(Component::CatalogIngest));
    catalog
        .ingest_product_event(IngestProductEventRequest {
            source: "exec-ed-partner".into(),
            event_id: "evt-1".into(),
            event_name: "product.upserted".into(),
            occurred_at: Some(prost_types::Timestamp { seconds: 1_763_000_000, nanos: 0 }),
            payload: kit::json::to_struct(&payload),
        })
        .await
        .expect("ingested");

    let mut fulfillment = FulfillmentServiceClient::new(mesh.grpc_channel(Component::Fulfillment));
    let order_for = |number: &str, run: &str, mode: &str| {
        let mut order = order(number, "");
        order.learner = Some(pb::Learner { lms_user_id: "7".into(), lms_username: "ada".into(), ..Default::default() });
        order.line_items[0].product = Some(pb::line_item::Product::CourseRun(pb::CourseRunEnrollment {
            course_run_key: run.into(),
            mode: mode.into(),
            credit_provider_id: String::new(),
        }));
        order
    };
    // Open for enrollment until 2099 (no enroll_by: until the run ends).
    let sold = "course-v1:NorthbridgeX+LSC-201+ON-DEMAND";
    // Enrollment closed on 2026-02-23 (enroll_by); the 2026-SP run closed when it ended, 2026-08-31.
    let closed = "course-v1:NorthbridgeX+LSC-201+2026-03";
    let ended = "course-v1:NorthbridgeX+LSC-201+2026-SP";
    for (number, run, mode, reason) in [
        ("EDX-1", "course-v1:NorthbridgeX+LSC-201+1999", "paid-executive-education", "COURSE_RUN_UNKNOWN"),
        ("EDX-2", sold, "verified", "MODE_NOT_SOLD"),
        ("EDX-4", closed, "paid-executive-education", "ENROLLMENT_CLOSED"),
        ("EDX-5", ended, "paid-executive-education", "ENROLLMENT_CLOSED"),
    ] {
        let refused = fulfillment.fulfill_order(order_for(number, run, mode)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
        assert_eq!(kit::error::reason(&refused).as_deref(), Some(reason), "{number}: {refused:?}");
    }
    let refused = fulfillment.fulfill_order(order_for("EDX-6", closed, "paid-executive-education")).await.unwrap_err();
    let message = refused.message();
    assert!(message.starts_with("line_items[0].course_run.course_run_key: line item "), "{message}");
    assert!(
        message.contains(&format!("enrollment in course run {closed} closed at 2026-02-23T00:00:00Z")),
        "{message}"
    );
    let info = refused.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.metadata.get("course_run_key").map(String::as_str), Some(closed));
    assert_eq!(info.metadata.get("enrollment_end_time").map(String::as_str), Some("2026-02-23T00:00:00Z"));
    assert!(info.metadata.contains_key("line_item_id"), "{info:?}");
    let nothing = fulfillment
        .list_order_fulfillments(pb::ListOrderFulfillmentsRequest {
            order_number: "EDX-6".into(),
            ..Default::default()
        })
        .await
        .expect("listed");
    assert!(nothing.into_inner().fulfillments.is_empty(), "a refused order stores nothing");
    let accepted = fulfillment.fulfill_order(order_for("EDX-3", sold, "paid-executive-education")).await;
    assert!(accepted.expect("sold in that mode").into_inner().created);
    mesh.stop().await.expect("clean stop");
}
