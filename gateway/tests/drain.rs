//! How the gateway stops (`gateway::serve` once its shutdown is cancelled):
//! `/healthz` answers 503 at once while every request is still served, with
//! `Connection: close`, through `shutdown_grace`; then the listener closes,
//! requests in flight finish, and those still running after `drain_timeout`
//! are cut off.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

mod support;

use std::time::Duration;

use kit::shutdown::Shutdown;
use support::{ALL_SCOPES, PATIENCE, Reply, SlowCalls, config, echo_upstream, test_pool, token};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A gateway in front of the echo upstream, stopped by `shutdown`.
struct Stopping {
    base: String,
    slow: SlowCalls,
    shutdown: Shutdown,
    served: JoinHandle<Result<(), gateway::GatewayError>>,
}

impl Stopping {
    async fn start(grace: Duration, drain_timeout: Duration) -> Self {
        let pool = test_pool();
        let upstream = echo_upstream(&pool).await;
        let mut config = config(upstream.address);
        config.shutdown_grace = grace;
        config.drain_timeout = drain_timeout;
        let gateway = gateway::Gateway::new(&pool, config, &kit::metrics::Metrics::new()).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = Shutdown::new();
        let served = tokio::spawn(gateway::serve(listener, gateway, shutdown.clone()));
        Self { base, slow: upstream.slow, shutdown, served }
    }

    fn get(&self, client: &reqwest::Client, path: &str) -> reqwest::RequestBuilder {
        client.get(format!("{}{path}", self.base)).bearer_auth(token(&ALL_SCOPES))
    }

    /// A `Slow` call, held by the upstream until released.
    fn slow_call(&self) -> JoinHandle<reqwest::Result<reqwest::Response>> {
        let request = client().post(format!("{}/v1/slow", self.base)).bearer_auth(token(&ALL_SCOPES)).body("{}");
        tokio::spawn(request.send())
    }

    /// Waits (at most [`PATIENCE`]) until a new connection is refused: the listener closed.
    async fn wait_listener_closed(&self) {
        let address = self.base.trim_start_matches("http://").to_string();
        tokio::time::timeout(PATIENCE, async {
            while tokio::net::TcpStream::connect(&address).await.is_ok() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the listener closes");
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[tokio::test]
async fn asked_to_stop_it_answers_healthz_503_and_serves_every_request_through_the_grace() {
    // A grace far longer than the test: it never ends here.
    let gateway = Stopping::start(Duration::from_secs(3600), Duration::from_secs(1)).await;
    let kept_alive = client();
    let reply = Reply::send(gateway.get(&kept_alive, "/healthz")).await;
    assert_eq!((reply.status, reply.text.as_str()), (200, "ok"));
    let reply = Reply::send(gateway.get(&kept_alive, "/v1/items/before")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.headers.get("connection").is_none(), "kept alive before the shutdown: {reply:?}");

    gateway.shutdown.cancel();
    // The drain begins on the server's task: until then /healthz still answers ok.
    let fresh = client();
    let unhealthy = tokio::time::timeout(PATIENCE, async {
        loop {
            let reply = Reply::send(fresh.get(format!("{}/healthz", gateway.base))).await;
            if reply.status != 200 {
                return reply;
            }
        }
    })
    .await
    .expect("/healthz turns 503");
    assert_eq!(unhealthy.status, 503, "{unhealthy:?}");
    assert_eq!(unhealthy.json["code"], 14, "UNAVAILABLE as a google.rpc.Status: {unhealthy:?}");
    assert_eq!(unhealthy.header("connection"), "close");
    let readyz = Reply::send(fresh.get(format!("{}/readyz", gateway.base))).await;
    assert_eq!(readyz.status, 503, "{readyz:?}");
    assert_eq!(readyz.json["shutting_down"], true, "{readyz:?}");

    // Still served: on the connection kept alive from before, and on new ones,
    // each answer closing its connection.
    for (client, path) in [(&kept_alive, "/v1/items/kept-alive"), (&fresh, "/v1/items/new")] {
        let reply = Reply::send(gateway.get(client, path)).await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        assert_eq!(reply.json["id"], path.rsplit('/').next().unwrap(), "{reply:?}");
        assert_eq!(reply.header("connection"), "close", "{path}");
    }
    assert!(!gateway.served.is_finished(), "still serving within the grace");
}

#[tokio::test]
async fn after_the_grace_the_listener_closes_and_requests_in_flight_finish() {
    let gateway = Stopping::start(Duration::ZERO, Duration::from_secs(3600)).await;
    let held = gateway.slow_call();
    gateway.slow.wait_held(1).await;

    gateway.shutdown.cancel();
    gateway.wait_listener_closed().await;
    assert!(!gateway.served.is_finished(), "the drain waits for the request in flight");
    gateway.slow.release(1);
    let answer = tokio::time::timeout(PATIENCE, held).await.expect("answered").unwrap().expect("an answer");
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["connection"], "close");
    tokio::time::timeout(PATIENCE, gateway.served).await.expect("stops once drained").unwrap().unwrap();
}

#[tokio::test]
async fn requests_still_in_flight_after_the_drain_timeout_are_cut_off() {
    let gateway = Stopping::start(Duration::ZERO, Duration::from_millis(200)).await;
    let held = gateway.slow_call();
    gateway.slow.wait_held(1).await;

    gateway.shutdown.cancel();
    tokio::time::timeout(PATIENCE, gateway.served).await.expect("stops after the drain timeout").unwrap().unwrap();
    let answer = tokio::time::timeout(PATIENCE, held).await.expect("ends").unwrap();
    assert!(answer.is_err(), "the held request was cut off, not answered: {answer:?}");
}
