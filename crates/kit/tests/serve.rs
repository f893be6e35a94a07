//! `kit::serve` lifecycle: NOT_SERVING until ready, SERVING, NOT_SERVING on
//! shutdown, then a clean stop; a failed readiness step stops the server.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use kit::serve::{GrpcServer, ServeError};
use kit::shutdown::Shutdown;
use tokio::net::TcpListener;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

async fn bind() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    (listener, address)
}

#[tokio::test]
async fn health_follows_readiness_and_shutdown() {
    let (listener, address) = bind().await;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = Shutdown::new();
    let server = tokio::spawn(GrpcServer::new("lifecycle").run(
        listener,
        async move { ready_rx.await.map_err(|_| std::io::Error::other("readiness dropped")) },
        shutdown.clone(),
    ));

    let mut health = HealthClient::new(kit::client::channel(&address).expect("channel"));
    let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.expect("watch").into_inner();
    let status = |r: Option<Result<HealthCheckResponse, tonic::Status>>| r.expect("an update").expect("ok").status();

    assert_eq!(status(watch.message().await.transpose()), ServingStatus::NotServing);
    ready_tx.send(()).expect("server waits for readiness");
    assert_eq!(status(watch.message().await.transpose()), ServingStatus::Serving);

    shutdown.cancel();
    assert_eq!(status(watch.message().await.transpose()), ServingStatus::NotServing);
    drop(watch);
    drop(health);
    server.await.expect("task").expect("a clean stop");
}

#[tokio::test]
async fn a_failed_readiness_step_stops_the_server() {
    let (listener, _) = bind().await;
    let result = GrpcServer::new("doomed")
        .run(listener, async { Err(std::io::Error::other("migration 0002 failed")) }, Shutdown::new())
        .await;
    match result {
        Err(ServeError::NotReady(error)) => assert!(error.to_string().contains("migration 0002")),
        other => panic!("expected NotReady, got {other:?}"),
    }
}
