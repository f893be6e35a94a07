//! What one client cannot take from the others: connections that trickle
//! their headers or bodies, or sit idle, are cut off and never hold a
//! concurrency permit; a flood of bad tokens, even naming key ids the JWKS
//! does not hold, is refused without taking a permit or waiting for the
//! identity provider.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kit::bench::percentile;
use serde_json::json;
use support::{ALL_SCOPES, PATIENCE, Reply, Running, start_with, token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How a slow connection misbehaves.
#[derive(Clone, Copy, Debug)]
enum Slowness {
    /// Sends the request line, then one header byte at a time, never ending the headers.
    Headers,
    /// Sends whole headers with a good token, then one body byte at a time.
    Body,
    /// Connects and sends nothing.
    Idle,
}

/// How long the slow connections wait between two bytes.
const TRICKLE: Duration = Duration::from_millis(100);

/// A slow connection: opened and its first bytes sent (so the gateway has
/// them) before this returns; its task trickles until the gateway closes the
/// connection, and answers what the gateway sent.
async fn slow_connection(gateway: &Running, slowness: Slowness) -> tokio::task::JoinHandle<String> {
    let address = gateway.base.trim_start_matches("http://").to_string();
    let stream = TcpStream::connect(&address).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let opening = match slowness {
        Slowness::Headers => "GET /v1/items/a HTTP/1.1\r\nhost: gateway\r\nx-slow: ".to_string(),
        Slowness::Body => format!(
            "POST /v1/items/a:archive HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\ncontent-length: 100000\r\n\r\n{{",
            token(&ALL_SCOPES)
        ),
        Slowness::Idle => String::new(),
    };
    writer.write_all(opening.as_bytes()).await.unwrap();
    tokio::spawn(async move {
        let trickle = async {
            let mut pace = tokio::time::interval(TRICKLE);
            loop {
                pace.tick().await;
                let byte: &[u8] = match slowness {
                    Slowness::Idle => continue,
                    Slowness::Headers => b"a",
                    Slowness::Body => b" ",
                };
                if writer.write_all(byte).await.is_err() {
                    // Closed by the gateway: the reader sees it too.
                    std::future::pending::<()>().await;
                }
            }
        };
        let answer = async {
            let mut answer = Vec::new();
            // An error (a reset) ends the connection as surely as an EOF.
            let _ = reader.read_to_end(&mut answer).await;
            String::from_utf8_lossy(&answer).into_owned()
        };
        let cut_off = async {
            tokio::select! {
                answer = answer => answer,
                () = trickle => unreachable!("the trickle never ends by itself"),
            }
        };
        tokio::time::timeout(PATIENCE, cut_off)
            .await
            .unwrap_or_else(|_| panic!("a {slowness:?} connection was never cut off"))
    })
}

/// Sends `count` ordinary requests one after another; answers each one's latency.
async fn ordinary_requests(gateway: &Running, count: usize) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(count);
    for n in 0..count {
        let started = Instant::now();
        let reply = gateway.send("POST", &format!("/v1/items/{n}:archive"), Some(json!({}))).await;
        latencies.push(started.elapsed());
        assert_eq!(reply.status, 200, "an ordinary request was not served: {reply:?}");
    }
    latencies
}

fn summary(latencies: &mut [Duration]) -> String {
    latencies.sort_unstable();
    let sorted: &[Duration] = latencies;
    let at = |q: f64| percentile(sorted, q);
    format!("p50 {:?}, p90 {:?}, max {:?}", at(0.5), at(0.9), at(1.0))
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_hold_nothing_while_others_are_served() {
    const LIMIT: usize = 4;
    let gateway = start_with(|config| {
        config.max_concurrent_requests = LIMIT;
        config.queue_timeout = Duration::from_millis(50);
        config.header_read_timeout = Duration::from_secs(3);
        config.body_read_timeout = Duration::from_secs(3);
    })
    .await;
    let mut baseline = ordinary_requests(&gateway, 50).await;

    // Three times the permits' worth of connections of each kind, all open at once.
    let mut slow = Vec::new();
    for slowness in [Slowness::Headers, Slowness::Body, Slowness::Idle] {
        for _ in 0..3 * LIMIT {
            slow.push((slowness, slow_connection(&gateway, slowness).await));
        }
    }
    let mut loaded = ordinary_requests(&gateway, 50).await;
    println!("ordinary requests alone:                 {}", summary(&mut baseline));
    println!("beside {} slow connections:             {}", slow.len(), summary(&mut loaded));

    for (slowness, connection) in slow {
        let answer = connection.await.unwrap();
        match slowness {
            // Cut off without an answer: there was no request to answer.
            Slowness::Headers | Slowness::Idle => assert_eq!(answer, "", "{slowness:?}"),
            Slowness::Body => {
                assert!(answer.starts_with("HTTP/1.1 408"), "a stalled body is answered 408: {answer}");
                assert!(answer.contains("\"code\":4"), "DEADLINE_EXCEEDED in the status body: {answer}");
            }
        }
    }
    assert_eq!(gateway.calls.count(), 100, "only the ordinary requests reached the service");
    // `summary` sorted both.
    let p99 = |latencies: &[Duration]| percentile(latencies, 0.99);
    let figures = json!({
        "suite": "slow-clients",
        "slow_connections": 9 * LIMIT,
        "permits": LIMIT,
        "ordinary_requests": baseline.len() + loaded.len(),
        "ordinary_served": gateway.calls.count(),
        "p99_ms_alone": p99(&baseline).as_secs_f64() * 1e3,
        "p99_ms_beside_slow": p99(&loaded).as_secs_f64() * 1e3,
    });
    println!("RELIABILITY-FIGURES {figures}");
}

#[tokio::test]
async fn a_kept_alive_connection_is_closed_once_idle_for_the_header_timeout() {
    let gateway = start_with(|config| config.header_read_timeout = Duration::from_millis(500)).await;
    let address = gateway.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.unwrap();
    let request = "GET /healthz HTTP/1.1\r\nhost: gateway\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the idle connection was never closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "the request itself was served, keep-alive: {answer}");
    assert!(answer.ends_with("ok"), "{answer}");
}

#[tokio::test]
async fn bad_tokens_are_refused_without_taking_a_permit() {
    let gateway = start_with(|config| {
        config.max_concurrent_requests = 1;
        config.queue_timeout = Duration::from_millis(50);
    })
    .await;
    // The only permit, held by a call the upstream keeps waiting.
    let held = tokio::spawn(gateway.request("POST", "/v1/slow").body("{}").send());
    gateway.slow.wait_held(1).await;

    let ours = gateway.send("GET", "/v1/items/a", None).await;
    assert_eq!(ours.status, 503, "a good caller waits for the permit and is shed: {ours:?}");
    let refusals = (0..20).map(|n| {
        let request = gateway.client.get(gateway.url(&format!("/v1/items/{n}")));
        let request = match n % 3 {
            0 => request,
            1 => request.bearer_auth("not-a-token"),
            _ => request.bearer_auth(token(&[])),
        };
        Reply::send(request)
    });
    for reply in futures::future::join_all(refusals).await {
        // 401 and 403 rather than 503: nobody waited for the permit.
        assert!(matches!(reply.status, 401 | 403), "{reply:?}");
    }

    gateway.slow.release(1);
    assert_eq!(held.await.unwrap().unwrap().status(), 200);
    assert_eq!(gateway.send("GET", "/v1/items/a", None).await.status, 200);
    assert_eq!(gateway.calls.count(), 2, "no refused request reached the service");
}

const KEY2: &[u8] = include_bytes!("../../crates/kit/tests/keys/key2.pem");
const JWKS_KEY1: &str = include_str!("../../crates/kit/tests/keys/jwks-key1.json");
const JWKS_BOTH: &str = include_str!("../../crates/kit/tests/keys/jwks-both.json");

/// A JWKS server that answers key 1 at once, then holds every later fetch
/// until released, and answers both keys.
struct StalledJwks {
    url: String,
    fetches: Arc<AtomicUsize>,
    release: Arc<tokio::sync::Semaphore>,
}

async fn stalled_jwks() -> StalledJwks {
    let fetches = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get({
            let (fetches, release) = (fetches.clone(), release.clone());
            move || async move {
                if fetches.fetch_add(1, Ordering::SeqCst) == 0 {
                    return JWKS_KEY1;
                }
                let _released = release.acquire().await;
                JWKS_BOTH
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    StalledJwks { url, fetches, release }
}

fn key2_token() -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("test-key-2".into());
    let claims = json!({
        "iss": "commerce-mesh", "aud": "commerce-mesh", "sub": "rotated",
        "exp": jsonwebtoken::get_current_timestamp() + 600, "scopes": ALL_SCOPES,
    });
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_pem(KEY2).unwrap()).unwrap()
}

#[tokio::test]
async fn unknown_key_ids_are_refused_at_once_while_the_jwks_is_fetched_in_the_background() {
    let jwks = stalled_jwks().await;
    let gateway = start_with(|config| {
        config.auth.jwks_url = Some(jwks.url.clone());
        config.auth.allow_development_tokens = true;
        config.auth.jwks_refetch_cooldown = Duration::ZERO;
        config.max_concurrent_requests = 2;
        config.queue_timeout = Duration::from_millis(50);
    })
    .await;
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1, "fetched once at start");

    // A flood naming a key the gateway does not know yet: each refused at
    // once, although the fetch it caused is held by the JWKS server.
    let flood = (0..40)
        .map(|n| Reply::send(gateway.client.get(gateway.url(&format!("/v1/items/{n}"))).bearer_auth(key2_token())));
    let replies = tokio::time::timeout(PATIENCE, futures::future::join_all(flood))
        .await
        .expect("refusals never waited for the JWKS fetch");
    for reply in replies {
        assert_eq!(reply.status, 401, "{reply:?}");
        assert!(reply.json["message"].as_str().unwrap().contains("names no known signing key"), "{reply:?}");
    }
    // The background fetch reaches the JWKS server (it may not have yet) and is held there.
    let deadline = Instant::now() + PATIENCE;
    while jwks.fetches.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "no background fetch reached the JWKS server");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let again = Reply::send(gateway.client.get(gateway.url("/v1/items/b")).bearer_auth(key2_token())).await;
    assert_eq!(again.status, 401, "{again:?}");
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 2, "one background fetch at a time, however many unknown kids");
    assert_eq!(gateway.send("GET", "/v1/items/a", None).await.status, 200, "good callers are served meanwhile");

    // Once the fetch answers, the rotated-in key is accepted on a retry.
    jwks.release.add_permits(1);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let reply = Reply::send(gateway.client.get(gateway.url("/v1/items/a")).bearer_auth(key2_token())).await;
        if reply.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the rotated-in key never became known: {reply:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gateway.calls.last().metadata["x-authenticated-subject"], "rotated");
}
