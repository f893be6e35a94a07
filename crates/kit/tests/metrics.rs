//! `kit::metrics` end to end: a `GrpcServer` with metrics answers calls, and
//! the admin port shows them per method and status code.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use kit::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE, serve_admin};
use kit::serve::GrpcServer;
use kit::shutdown::Shutdown;
use tokio::net::TcpListener;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// A listener on a free port, and its `http://` URL.
async fn free_port() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    (listener, url)
}

#[tokio::test]
async fn the_admin_port_counts_each_rpc_by_method_and_status() {
    let (metrics, shutdown) = (Metrics::new(), Shutdown::new());
    let ((grpc_listener, grpc_url), (admin_listener, admin_url)) = (free_port().await, free_port().await);
    let server = GrpcServer::new("metered").metrics(metrics.for_component("metered"));
    let server = tokio::spawn(server.run(grpc_listener, async { Ok::<(), std::io::Error>(()) }, shutdown.clone()));
    let admin = tokio::spawn(serve_admin(admin_listener, metrics, shutdown.clone().cancelled_owned()));

    let mut health = HealthClient::new(kit::client::channel(&grpc_url).expect("channel"));
    health.check(HealthCheckRequest { service: String::new() }).await.expect("the server's own health answers");
    let unknown = health.check(HealthCheckRequest { service: "no.such.Service".into() }).await;
    assert_eq!(unknown.expect_err("not served").code(), tonic::Code::NotFound);

    let http = reqwest::Client::new();
    let response = http.get(format!("{admin_url}/metrics")).send().await.expect("GET /metrics");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], OPENMETRICS_CONTENT_TYPE);
    let text = response.text().await.expect("body");
    let check = r#"component="metered",rpc_service="grpc.health.v1.Health",rpc_method="Check""#;
    assert!(text.contains(&format!("rpc_server_requests_total{{{check},grpc_status=\"0\"}} 1\n")), "{text}");
    assert!(text.contains(&format!("rpc_server_requests_total{{{check},grpc_status=\"5\"}} 1\n")), "{text}");
    assert!(text.contains(&format!("rpc_server_duration_seconds_count{{{check}}} 2\n")), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");

    let healthz = http.get(format!("{admin_url}/healthz")).send().await.expect("GET /healthz");
    assert_eq!(healthz.status(), 200);
    assert_eq!(healthz.text().await.expect("body"), "ok");

    shutdown.cancel();
    drop(health);
    server.await.expect("task").expect("a clean stop");
    admin.await.expect("task").expect("the admin server stops cleanly");
}
