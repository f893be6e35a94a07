//! Every field violation carries a stable `reason` (`kit::error::ViolationReason`),
//! from each service over gRPC and through the gateway's JSON (the services'
//! violations and the gateway's own 400s), on embedded storage and on Postgres + Redis.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use commerce_mesh::{Component, MeshConfig, RunningMesh};
use kit::shutdown::Shutdown;
use kit::testing::TestDatabase;
use mesh_tests::storage::Storage;
use proto::commerce::catalog::v1::IngestProductEventRequest;
use proto::commerce::catalog::v1::catalog_ingest_service_client::CatalogIngestServiceClient;
use proto::commerce::fulfillment::v1::FulfillOrderRequest;
use proto::commerce::fulfillment::v1::fulfillment_service_client::FulfillmentServiceClient;
use proto::commerce::identity::v1::UpsertCustomerRequest;
use proto::commerce::identity::v1::customer_identity_service_client::CustomerIdentityServiceClient;
use proto::commerce::purchases::v1::purchase_history_service_client::PurchaseHistoryServiceClient;
use proto::commerce::purchases::v1::{ListPurchasesRequest, list_purchases_request};
use serde_json::Value;

const GUARD: Duration = Duration::from_secs(30);

struct Mesh {
    mesh: RunningMesh,
    token: String,
    _data: tempfile::TempDir,
    _database: Option<TestDatabase>,
}

impl Mesh {
    async fn start(storage: Storage) -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut config = MeshConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
        config.use_ephemeral_ports();
        let database = storage.configure(&mut config).await;
        let mesh = commerce_mesh::start(config.clone(), Shutdown::new()).await.expect("mesh starts");
        for component in Component::SERVICES {
            mesh_tests::health::wait_serving(&mesh.grpc_url(component), GUARD).await.expect("ready");
        }
        let token = commerce_mesh::dev_tokens::mint(
            &config,
            "reasons",
            commerce_mesh::dev_tokens::every_scope(),
            Duration::from_secs(600),
        )
        .expect("a development token");
        Self { mesh, token, _data: data, _database: database }
    }

    /// POSTs `body` (raw) to the gateway; answers the status and the JSON error.
    async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let response = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!("{}{path}", self.mesh.url(Component::Gateway)))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// The reason the status gives `field`.
fn reason_of(status: &tonic::Status, field: &str) -> String {
    kit::error::violation_reasons(status)
        .into_iter()
        .find(|(f, _)| f == field)
        .unwrap_or_else(|| panic!("no violation of {field} in {status:?}"))
        .1
}

/// The reason a JSON error body gives `field`.
fn json_reason_of(body: &Value, field: &str) -> String {
    body["details"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|detail| detail["field_violations"].as_array())
        .flatten()
        .find(|v| v["field"] == field)
        .unwrap_or_else(|| panic!("no violation of {field} in {body}"))["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn every_violation_has_a_stable_reason(storage: Storage) {
    let mesh = Mesh::start(storage).await;

    // Fulfillment: an order without a number, learner or lines.
    let mut fulfillment = FulfillmentServiceClient::new(mesh.mesh.grpc_channel(Component::Fulfillment));
    let refused = fulfillment.fulfill_order(FulfillOrderRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(reason_of(&refused, "order_number"), "REQUIRED");
    assert_eq!(reason_of(&refused, "line_items"), "REQUIRED");

    // CustomerIdentity: an LMS user id that is not a number, a username too short.
    let mut identity = CustomerIdentityServiceClient::new(mesh.mesh.grpc_channel(Component::CustomerIdentity));
    let link = UpsertCustomerRequest {
        customer_id: "c-1".into(),
        lms_user_id: "forty-two".into(),
        lms_username: "a".into(),
        ..Default::default()
    };
    let refused = identity.upsert_customer(link).await.unwrap_err();
    assert_eq!(reason_of(&refused, "lms_user_id"), "INVALID_FORMAT");
    assert_eq!(reason_of(&refused, "lms_username"), "TOO_SHORT");

    // CatalogIngest: an event name it does not know.
    let mut catalog = CatalogIngestServiceClient::new(mesh.mesh.grpc_channel(Component::CatalogIngest));
    let event = IngestProductEventRequest {
        source: "exec-ed-partner".into(),
        event_id: "evt-1".into(),
        event_name: "product.exploded".into(),
        occurred_at: Some(prost_types::Timestamp { seconds: 1_763_000_000, nanos: 0 }),
        payload: Some(prost_types::Struct::default()),
    };
    let refused = catalog.ingest_product_event(event).await.unwrap_err();
    assert_eq!(reason_of(&refused, "event_name"), "UNKNOWN_VALUE");

    // PurchaseHistory: a negative page size.
    let mut purchases = PurchaseHistoryServiceClient::new(mesh.mesh.grpc_channel(Component::PurchaseHistory));
    let listing = ListPurchasesRequest {
        learner: Some(list_purchases_request::Learner::Username("ada".into())),
        page_size: -1,
        ..Default::default()
    };
    let refused = purchases.list_purchases(listing).await.unwrap_err();
    assert_eq!(reason_of(&refused, "page_size"), "OUT_OF_RANGE");

    // Through the gateway: a service's violations keep their reasons in the JSON.
    let (status, body) = mesh.post("/v1/orders/EDX-1:fulfill", r#"{"line_items": []}"#).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(json_reason_of(&body, "line_items"), "REQUIRED", "{body}");
    assert_eq!(json_reason_of(&body, "date_placed"), "REQUIRED", "{body}");

    // The gateway's own 400: a body that is not the message's JSON.
    let (status, body) = mesh.post("/v1/orders/EDX-1:fulfill", r#"{"line_items": 7}"#).await;
    assert_eq!(status, 400, "{body}");
    let violations = body["details"][0]["field_violations"].as_array().expect("field violations");
    assert!(!violations.is_empty(), "{body}");
    assert!(violations.iter().all(|v| v["reason"] == "INVALID_FORMAT"), "{body}");
    let (status, body) = mesh.post("/v1/orders/EDX-1:fulfill", "{not json").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["details"][0]["field_violations"][0]["reason"], "INVALID_FORMAT", "{body}");

    // Every reason on the wire is one of the documented list.
    let known: Vec<&str> = vocab::ViolationReason::ALL.iter().map(|r| r.as_str()).collect();
    for (field, reason) in kit::error::violation_reasons(&refused) {
        assert!(known.contains(&reason.as_str()), "{field}: {reason}");
    }
    mesh.mesh.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_violation_has_a_stable_reason_embedded() {
    every_violation_has_a_stable_reason(Storage::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_violation_has_a_stable_reason_on_postgres_and_redis() {
    every_violation_has_a_stable_reason(Storage::PostgresAndRedis).await;
}
