//! `dns:///` channels: requests balanced across every resolved address, and
//! the pool following the resolver as pods come and go.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kit::client::{Resolve, resolved_channel};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A resolver whose answer the test changes.
#[derive(Clone, Default)]
struct Pods(Arc<Mutex<Vec<SocketAddr>>>);

impl Resolve for Pods {
    async fn resolve(&self, _host: &str, _port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(self.0.lock().unwrap().clone())
    }
}

/// A health server on `ip` reporting service "pod" as `status`: the status
/// tells which pod answered.
async fn pod(ip: [u8; 4], status: ServingStatus) -> SocketAddr {
    let listener = TcpListener::bind(SocketAddr::from((ip, 0))).await.unwrap();
    let address = listener.local_addr().unwrap();
    let (reporter, service) = tonic_health::server::health_reporter();
    match status {
        ServingStatus::Serving => reporter.set_service_status("pod", tonic_health::ServingStatus::Serving).await,
        _ => reporter.set_service_status("pod", tonic_health::ServingStatus::NotServing).await,
    }
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
        drop(reporter);
    });
    address
}

async fn statuses_seen(client: &mut HealthClient<tonic::transport::Channel>, calls: usize) -> Vec<i32> {
    let mut seen = Vec::new();
    for _ in 0..calls {
        let answer = client.check(HealthCheckRequest { service: "pod".into() }).await.unwrap().into_inner();
        if !seen.contains(&answer.status) {
            seen.push(answer.status);
        }
    }
    seen.sort();
    seen
}

#[tokio::test]
async fn calls_are_balanced_across_every_resolved_address_and_follow_changes() {
    // Two "pods" on two loopback addresses, as a headless service resolves.
    let first = pod([127, 0, 0, 1], ServingStatus::Serving).await;
    let second = pod([127, 0, 0, 2], ServingStatus::NotServing).await;
    let pods = Pods::default();
    *pods.0.lock().unwrap() = vec![first, second];

    let channel = resolved_channel("pods.example".into(), 0, Duration::from_millis(20), pods.clone());
    let mut client = HealthClient::new(channel);
    let both = vec![ServingStatus::Serving as i32, ServingStatus::NotServing as i32];
    assert_eq!(statuses_seen(&mut client, 200).await, both, "both pods answer");

    // The second pod goes away: once the resolver has been asked again, only
    // the first answers. Bounded wait for the change to be picked up.
    *pods.0.lock().unwrap() = vec![first];
    let mut settled = false;
    for _ in 0..200 {
        if statuses_seen(&mut client, 50).await == vec![ServingStatus::Serving as i32] {
            settled = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(settled, "the removed pod stopped receiving calls");
}

#[test]
fn a_dns_address_needs_a_host_and_port() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _guard = runtime.enter();
    assert!(kit::client::channel("dns:///fulfillment:50051").is_ok());
    assert!(kit::client::channel("dns:///fulfillment").is_err());
    assert!(kit::client::channel("dns:///:50051").is_err());
}

/// A peer that accepts connections and drops them at once, as a process
/// killed mid-call does: the call ends UNAVAILABLE (retry), not UNKNOWN.
#[tokio::test]
async fn a_connection_dropped_by_the_peer_is_unavailable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((connection, _)) = listener.accept().await {
            drop(connection);
        }
    });
    let mut client = HealthClient::new(kit::client::channel(&format!("http://{address}")).unwrap());
    let status = client.check(HealthCheckRequest { service: String::new() }).await.expect_err("no answer");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("connection to the peer failed"), "{}", status.message());
}

/// Nothing listening: UNAVAILABLE too.
#[tokio::test]
async fn a_refused_connection_is_unavailable() {
    let address = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let mut client = HealthClient::new(kit::client::channel(&format!("http://{address}")).unwrap());
    let status = client.check(HealthCheckRequest { service: String::new() }).await.expect_err("no answer");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

/// A health server on `ip` that knows service `name` (so a Check tells which
/// pod answered), with its reporter and a handle that stops it; the whole
/// server (`""`) is SERVING.
async fn named_pod(
    ip: [u8; 4],
    name: &str,
) -> (SocketAddr, tonic_health::server::HealthReporter, kit::shutdown::Shutdown) {
    let listener = TcpListener::bind(SocketAddr::from((ip, 0))).await.unwrap();
    let address = listener.local_addr().unwrap();
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status(name, tonic_health::ServingStatus::Serving).await;
    let stop = kit::shutdown::Shutdown::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stopped.cancelled_owned())
            .await
            .unwrap();
    });
    (address, reporter, stop)
}

/// Which pods answered `calls` Checks of service "first", which only the
/// first pod knows (the second answers NOT_FOUND); any other answer fails the test.
async fn pods_answering(channel: &tonic::transport::Channel, calls: usize) -> Vec<&'static str> {
    let mut seen = std::collections::BTreeSet::new();
    let mut client = HealthClient::new(channel.clone());
    for _ in 0..calls {
        match client.check(HealthCheckRequest { service: "first".into() }).await {
            Ok(_) => seen.insert("first"),
            Err(status) if status.code() == tonic::Code::NotFound => seen.insert("second"),
            Err(status) => panic!("a call failed: {status:?}"),
        };
    }
    seen.into_iter().collect()
}

/// Until `names` (and only they) answer, within a guard: health changes reach
/// the balance through the watchers, which ask again every second.
async fn until_answering(channel: &tonic::transport::Channel, names: &[&str]) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while pods_answering(channel, 50).await != names {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {names:?} answer"));
}

/// Client-side health checking: a replica NOT_SERVING (as one stopping is,
/// through its grace) leaves the balance though the resolver still lists it,
/// and comes back once SERVING; when none is SERVING every one is called;
/// and once a replica that left has closed its listener, no call fails.
#[tokio::test]
async fn replicas_not_serving_leave_the_balance_until_they_serve_again() {
    let (first, first_health, _first_stop) = named_pod([127, 0, 0, 1], "first").await;
    let (second, second_health, second_stop) = named_pod([127, 0, 0, 2], "second").await;
    let pods = Pods::default();
    *pods.0.lock().unwrap() = vec![first, second];
    // Resolved once: the name goes on listing both addresses.
    let channel = resolved_channel("pods.example".into(), 0, Duration::from_secs(3600), pods.clone());
    until_answering(&channel, &["first", "second"]).await;

    second_health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    until_answering(&channel, &["first"]).await;
    second_health.set_service_status("", tonic_health::ServingStatus::Serving).await;
    until_answering(&channel, &["first", "second"]).await;

    // None SERVING: calls go to every replica rather than wait for one.
    second_health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    first_health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    until_answering(&channel, &["first", "second"]).await;
    first_health.set_service_status("", tonic_health::ServingStatus::Serving).await;
    until_answering(&channel, &["first"]).await;

    // The second stops (its listener closes): every call still answered, by the first.
    second_stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), async {
        while tokio::net::TcpStream::connect(second).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the second's listener closes");
    assert_eq!(pods_answering(&channel, 500).await, ["first"]);
}
