//! Fulfillment inside the whole mesh: an order naming only a commerce customer
//! is resolved through the real CustomerIdentity over gRPC, enrolled in a stub
//! LMS over HTTP, and announced on the embedded event log.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use commerce_mesh::Component;
use kit::shutdown::Shutdown;
use prost::Message;
use proto::commerce::events::v1::{EventEnvelope, event_envelope::Payload};
use proto::commerce::fulfillment::v1 as pb;
use proto::commerce::fulfillment::v1::fulfillment_service_client::FulfillmentServiceClient;
use proto::commerce::identity::v1::customer_identity_service_client::CustomerIdentityServiceClient;
use proto::commerce::identity::v1::{RetireCustomerRequest, UpsertCustomerRequest, retire_customer_request};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const GUARD: Duration = Duration::from_secs(30);

fn order(number: &str, customer_id: &str) -> pb::FulfillOrderRequest {
    pb::FulfillOrderRequest {
        order_number: number.into(),
        date_placed: Some(prost_types::Timestamp { seconds: 1_763_000_000, nanos: 0 }),
        learner: Some(pb::Learner { customer_id: customer_id.into(), ..Default::default() }),
        line_items: vec![pb::LineItem {
            line_item_id: "1".into(),
            product: Some(pb::line_item::Product::CourseRun(pb::CourseRunEnrollment {
                course_run_key: "course-v1:edX+DemoX+2025_T1".into(),
                mode: "verified".into(),
                credit_provider_id: String::new(),
            })),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_for_a_customer_is_resolved_enrolled_and_announced() {
    let lms = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth2/access_token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"access_token": "t", "expires_in": 3600})))
        .mount(&lms)
        .await;
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
    let mut identity =
        CustomerIdentityServiceClient::new(kit::client::channel(&mesh.grpc_url(Component::CustomerIdentity)).unwrap());
    let mut fulfillment =
        FulfillmentServiceClient::new(kit::client::channel(&mesh.grpc_url(Component::Fulfillment)).unwrap());

    let unknown = fulfillment.fulfill_order(order("EDX-404", "nobody")).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::FailedPrecondition, "{unknown:?}");
    assert_eq!(kit::error::reason(&unknown).as_deref(), Some("UNKNOWN_CUSTOMER"));

    identity
        .upsert_customer(UpsertCustomerRequest {
            customer_id: "cust-7".into(),
            lms_user_id: "4242".into(),
            lms_username: "ada".into(),
            email: "ada@example.org".into(),
            expected_version: None,
        })
        .await
        .expect("customer linked");
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
