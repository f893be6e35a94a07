//! `kit::serve` lifecycle: NOT_SERVING until ready, SERVING, NOT_SERVING on
//! shutdown, then a clean stop; a failed readiness step stops the server.
//! Protection, through a real client: a call past `rpc_timeout` ends
//! DEADLINE_EXCEEDED, and past `max_concurrent_rpcs` one is shed with
//! UNAVAILABLE and `RetryInfo` while health still answers.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use kit::serve::{GrpcServer, ServeError, ServeOptions};
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

/// A service, `test.v1.Hang`, whose every call waits until the test lets it
/// answer; it counts the calls waiting.
#[derive(Clone)]
struct Hang {
    waiting: Arc<tokio::sync::watch::Sender<usize>>,
    release: Arc<tokio::sync::Semaphore>,
}

impl Hang {
    fn new() -> Self {
        Self { waiting: Arc::new(tokio::sync::watch::channel(0).0), release: Arc::new(tokio::sync::Semaphore::new(0)) }
    }

    async fn wait_for_waiting(&self, count: usize) {
        let mut waiting = self.waiting.subscribe();
        tokio::time::timeout(Duration::from_secs(10), waiting.wait_for(|waiting| *waiting == count))
            .await
            .unwrap_or_else(|_| panic!("{count} calls never waited at once"))
            .unwrap();
    }
}

impl tonic::server::NamedService for Hang {
    const NAME: &'static str = "test.v1.Hang";
}

impl tonic::server::UnaryService<()> for Hang {
    type Response = ();
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<()>, tonic::Status>> + Send>>;

    fn call(&mut self, _: tonic::Request<()>) -> Self::Future {
        let hang = self.clone();
        Box::pin(async move {
            hang.waiting.send_modify(|waiting| *waiting += 1);
            // Counted off however the call ends: answered, or dropped by the server.
            let _counted = Uncount(Arc::clone(&hang.waiting));
            let released = hang.release.acquire().await.map(|permit| permit.forget());
            released.map(tonic::Response::new).map_err(|_| tonic::Status::aborted("closed"))
        })
    }
}

/// Takes one waiting call off the count when dropped.
struct Uncount(Arc<tokio::sync::watch::Sender<usize>>);

impl Drop for Uncount {
    fn drop(&mut self) {
        self.0.send_modify(|waiting| *waiting -= 1);
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Hang {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let hang = self.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<(), ()>::default());
            Ok(grpc.unary(hang, request).await)
        })
    }
}

/// Calls `test.v1.Hang/Wait` on `url`, without a deadline of the caller's.
async fn wait_call(url: &str) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(kit::client::channel(url).expect("channel"));
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static("/test.v1.Hang/Wait");
    grpc.unary(tonic::Request::new(()), path, tonic_prost::ProstCodec::<(), ()>::default()).await.map(drop)
}

/// A `GrpcServer` serving `hang` with `options`, SERVING at once.
async fn serve_hang(hang: &Hang, options: ServeOptions) -> (String, Shutdown) {
    let (listener, url) = bind().await;
    let shutdown = Shutdown::new();
    let server = GrpcServer::new("protected").service(hang.clone()).options(options);
    tokio::spawn(server.run(listener, async { Ok::<(), std::io::Error>(()) }, shutdown.clone()));
    (url, shutdown)
}

#[tokio::test]
async fn a_call_past_the_rpc_timeout_ends_deadline_exceeded() {
    let hang = Hang::new();
    let options = ServeOptions { rpc_timeout: Duration::from_millis(200), ..ServeOptions::default() };
    let (url, shutdown) = serve_hang(&hang, options).await;

    let call = tokio::time::timeout(Duration::from_secs(10), wait_call(&url));
    let status = call.await.expect("the server ends the call").expect_err("the call never answers by itself");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("server's limit of 200ms"), "{status:?}");
    // The handler was dropped with the call, not left running.
    hang.wait_for_waiting(0).await;
    shutdown.cancel();
}

#[tokio::test]
async fn past_max_concurrent_rpcs_a_call_is_shed_with_retry_info_while_health_answers() {
    let hang = Hang::new();
    let options = ServeOptions { max_concurrent_rpcs: 2, ..ServeOptions::default() };
    let (url, shutdown) = serve_hang(&hang, options).await;
    let held: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn({
                let url = url.clone();
                async move { wait_call(&url).await }
            })
        })
        .collect();
    hang.wait_for_waiting(2).await;

    let shed = wait_call(&url).await.expect_err("no room");
    assert_eq!(shed.code(), tonic::Code::Unavailable, "{shed:?}");
    assert_eq!(kit::error::retry_after(&shed), Some(kit::protect::SHED_RETRY_AFTER), "{shed:?}");
    let mut health = HealthClient::new(kit::client::channel(&url).expect("channel"));
    for service in ["", "test.v1.Hang"] {
        let answer = health.check(HealthCheckRequest { service: service.into() }).await.expect("health is never shed");
        assert_eq!(answer.into_inner().status(), ServingStatus::Serving);
    }

    hang.release.add_permits(2);
    for call in held {
        call.await.expect("task").expect("the held calls answer once released");
    }
    hang.release.add_permits(1);
    wait_call(&url).await.expect("room again");
    shutdown.cancel();
}
