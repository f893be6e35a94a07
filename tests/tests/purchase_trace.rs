//! One trace from a purchase recorded to the purchase stored: the consumer
//! continues the trace the producer put in the stream message.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use commerce_mesh::Component;
use kit::shutdown::Shutdown;
use kit::telemetry::TelemetryConfig;
use mesh_tests::collector::Collector;
use proto::commerce::purchases::v1::purchase_history_service_client::PurchaseHistoryServiceClient;
use proto::commerce::purchases::v1::{Purchase, RecordPurchaseRequest};
use tracing::Instrument;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_purchase_continues_the_trace_of_its_recording() {
    let mut collector = Collector::start().await.expect("collector");
    let telemetry = kit::telemetry::init(&TelemetryConfig {
        otlp_endpoint: Some(collector.endpoint().to_string()),
        service_name: "purchase-trace-test".into(),
        ..Default::default()
    })
    .expect("telemetry");

    let data = tempfile::tempdir().expect("tempdir");
    let mut config = commerce_mesh::MeshConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
    config.use_ephemeral_ports();
    let mesh = commerce_mesh::start(config, Shutdown::new()).await.expect("mesh starts");
    let url = mesh.grpc_url(Component::PurchaseHistory);
    mesh_tests::health::wait_serving(&url, Duration::from_secs(30)).await.expect("ready");

    let purchase = Purchase {
        purchase_id: "p-trace".into(),
        lms_user_id: "42".into(),
        username: "ada".into(),
        price: Some(proto::commerce::r#type::v1::Money { currency_code: "USD".into(), amount: "10".into() }),
        purchased_at: Some(prost_types::Timestamp { seconds: 1_763_000_000, nanos: 0 }),
        ..Default::default()
    };
    async {
        let mut client = PurchaseHistoryServiceClient::new(mesh.grpc_channel(Component::PurchaseHistory));
        let request = RecordPurchaseRequest { purchase: Some(purchase), ..Default::default() };
        client.record_purchase(request).await.expect("recorded");
    }
    .instrument(tracing::info_span!("checkout"))
    .await;

    // The consumer stores the purchase in the background; its span arrives with a later export.
    let spans =
        collector.wait_until(Duration::from_secs(30), |spans| spans.iter().any(|s| s.name == "purchase stored")).await;
    let root = spans.iter().find(|s| s.name == "checkout").expect("the root span");
    let recorded = spans
        .iter()
        .find(|s| s.name == "commerce.purchases.v1.PurchaseHistoryService/RecordPurchase" && s.kind == 2)
        .expect("the server span of RecordPurchase");
    let stored = spans.iter().find(|s| s.name == "purchase stored").expect("the consumer's span");
    assert_eq!(stored.trace_id, root.trace_id, "one trace from checkout to the stored purchase");
    assert_eq!(stored.parent_span_id, recorded.span_id, "the message carried the producer's context");
    mesh.stop().await.expect("clean stop");
    tokio::task::spawn_blocking(move || drop(telemetry)).await.unwrap();
}
