//! One trace across components: a span started in one component, carried
//! through gRPC calls to another, arrives at an OTLP collector with one trace
//! id and the right parent at every hop.
//!
//! test root span ──client──▶ relay component (test service on kit::serve)
//!                              └─client──▶ Fulfillment component of the mesh

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use kit::serve::GrpcServer;
use kit::shutdown::Shutdown;
use kit::telemetry::TelemetryConfig;
use mesh_tests::collector::{Collector, one};
use proto::commerce::fulfillment::v1::GetFulfillmentRequest;
use proto::commerce::fulfillment::v1::fulfillment_service_client::FulfillmentServiceClient;
use proto::commerce::purchases::v1::purchase_history_service_client::PurchaseHistoryServiceClient;
use proto::commerce::purchases::v1::purchase_history_service_server::{
    PurchaseHistoryService, PurchaseHistoryServiceServer,
};
use proto::commerce::purchases::v1::{ListPurchasesRequest, ListPurchasesResponse};
use tracing::Instrument;

/// A component that, to answer ListPurchases, calls Fulfillment: the hop under test.
struct Relay {
    fulfillment: FulfillmentServiceClient<kit::client::TracedChannel>,
}

#[tonic::async_trait]
impl PurchaseHistoryService for Relay {
    async fn list_purchases(
        &self,
        _request: tonic::Request<ListPurchasesRequest>,
    ) -> Result<tonic::Response<ListPurchasesResponse>, tonic::Status> {
        let status = self
            .fulfillment
            .clone()
            .get_fulfillment(GetFulfillmentRequest { fulfillment_id: "f-1".into() })
            .await
            .expect_err("no such fulfillment");
        assert_eq!(status.code(), tonic::Code::NotFound);
        Ok(tonic::Response::new(ListPurchasesResponse::default()))
    }
}

#[tokio::test]
async fn a_span_crosses_components_with_one_trace_and_the_right_parents() {
    let mut collector = Collector::start().await.expect("collector");
    let telemetry = kit::telemetry::init(&TelemetryConfig {
        otlp_endpoint: Some(collector.endpoint().to_string()),
        service_name: "propagation-test".into(),
        ..Default::default()
    })
    .expect("telemetry");
    assert!(telemetry.is_exporting());

    // The mesh, in-process on free ports, with its data in a temporary directory.
    let data = tempfile::tempdir().expect("tempdir");
    let mut config = commerce_mesh::MeshConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
    config.use_ephemeral_ports();
    let mesh = commerce_mesh::start(config, Shutdown::new()).await.expect("mesh starts");
    let fulfillment_url = mesh.grpc_url(commerce_mesh::Component::Fulfillment);
    mesh_tests::health::wait_serving(&fulfillment_url, Duration::from_secs(30)).await.expect("fulfillment ready");

    // The relay component, served the way every component is.
    let relay_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let relay_url = format!("http://{}", relay_listener.local_addr().expect("address"));
    let relay_shutdown = Shutdown::new();
    let relay =
        Relay { fulfillment: FulfillmentServiceClient::new(mesh.grpc_channel(commerce_mesh::Component::Fulfillment)) };
    let relay_task = tokio::spawn(GrpcServer::new("relay").service(PurchaseHistoryServiceServer::new(relay)).run(
        relay_listener,
        async { Ok::<(), std::io::Error>(()) },
        relay_shutdown.clone(),
    ));

    let root = tracing::info_span!("checkout");
    async {
        let mut client = PurchaseHistoryServiceClient::new(kit::client::channel(&relay_url).expect("channel"));
        client.list_purchases(ListPurchasesRequest::default()).await.expect("relay answers");
    }
    .instrument(root)
    .await;

    let flushing = tokio::task::spawn_blocking(move || {
        telemetry.force_flush();
        telemetry
    });
    let telemetry = flushing.await.expect("flush");
    let spans = collector.wait_until(Duration::from_secs(30), |spans| spans.len() >= 5).await;

    let root = one(&spans, "checkout", 1);
    let to_relay = one(&spans, "commerce.purchases.v1.PurchaseHistoryService/ListPurchases", 3);
    let in_relay = one(&spans, "commerce.purchases.v1.PurchaseHistoryService/ListPurchases", 2);
    let to_fulfillment = one(&spans, "commerce.fulfillment.v1.FulfillmentService/GetFulfillment", 3);
    let in_fulfillment = one(&spans, "commerce.fulfillment.v1.FulfillmentService/GetFulfillment", 2);

    for span in [to_relay, in_relay, to_fulfillment, in_fulfillment] {
        assert_eq!(span.trace_id, root.trace_id, "{} is in the root's trace", span.name);
    }
    assert!(root.parent_span_id.is_empty());
    assert_eq!(to_relay.parent_span_id, root.span_id);
    assert_eq!(in_relay.parent_span_id, to_relay.span_id, "the relay continued the caller's context");
    assert_eq!(to_fulfillment.parent_span_id, in_relay.span_id, "the relay's call is a child of its server span");
    assert_eq!(in_fulfillment.parent_span_id, to_fulfillment.span_id, "Fulfillment continued the relay's context");

    // OpenTelemetry RPC conventions.
    assert_eq!(in_fulfillment.attribute("rpc.system"), Some("grpc"));
    assert_eq!(in_fulfillment.attribute("rpc.service"), Some("commerce.fulfillment.v1.FulfillmentService"));
    assert_eq!(in_fulfillment.attribute("rpc.method"), Some("GetFulfillment"));
    assert_eq!(in_fulfillment.attribute("rpc.grpc.status_code"), Some("5"), "NOT_FOUND");
    assert_eq!(to_fulfillment.attribute("rpc.grpc.status_code"), Some("5"));
    assert_eq!(in_relay.attribute("rpc.grpc.status_code"), Some("0"));
    assert_eq!(in_fulfillment.service_name, "propagation-test");

    relay_shutdown.cancel();
    relay_task.await.expect("relay task").expect("relay stops cleanly");
    mesh.stop().await.expect("mesh stops cleanly");
    telemetry.shutdown().await;
}
