//! Every TCP connection the mesh opens to Postgres and Redis has Nagle's
//! algorithm off. Without `TCP_NODELAY`, a message written in more than one
//! piece waits for the server's delayed ACK (up to 40 ms per round trip):
//! sqlx 0.9.0 lost the option (see `vendor/sqlx-core-0.9.0-tcp-nodelay`), and
//! redis-rs never sets it by default. These tests read the option off the
//! process's own sockets, so they fail if a dependency upgrade loses it again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::Duration;

use kit::bus::EventBus;
use kit::db::Database;
use kit::testing::TestDatabase;
use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};
use sqlx::postgres::PgListener;

/// This process's TCP sockets connected to `port`, duplicated through a pidfd
/// (no unsafe code: the kernel hands out a new descriptor for the same socket).
fn sockets_to(port: u16) -> Vec<OwnedFd> {
    let pidfd = pidfd_open(getpid(), PidfdFlags::empty()).expect("pidfd_open on this process");
    let mut sockets = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd") {
        let entry = entry.expect("fd entry");
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let Ok(raw) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(fd) = pidfd_getfd(&pidfd, raw, PidfdGetfdFlags::empty()) else { continue };
        let peer = rustix::net::getpeername(&fd).ok().flatten().and_then(|peer| SocketAddr::try_from(peer).ok());
        if peer.is_some_and(|peer| peer.port() == port) {
            sockets.push(fd);
        }
    }
    sockets
}

/// How many of `sockets` have `TCP_NODELAY` set.
fn with_nodelay(sockets: &[OwnedFd]) -> usize {
    sockets.iter().filter(|fd| rustix::net::sockopt::tcp_nodelay(fd).expect("getsockopt TCP_NODELAY")).count()
}

/// The TCP port of a `postgres://` or `redis://` URL (the scheme's default when it names none).
fn port_of(url: &str, default: u16) -> u16 {
    let url = url::Url::parse(url).expect("a URL");
    assert!(url.host().is_some(), "{url} names a TCP host (these tests read TCP sockets)");
    url.port().unwrap_or(default)
}

#[tokio::test]
async fn pooled_postgres_connections_and_the_listen_connection_set_tcp_nodelay() {
    let database = TestDatabase::postgres("nodelay").await;
    let port = port_of(&database.config().url, 5432);
    let Database::Postgres(pool) = Database::open(database.config()).unwrap() else { panic!("a Postgres pool") };

    // Hold three pooled connections at once, so the pool must open three sockets.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut connection = pool.acquire().await.unwrap();
        sqlx::query("SELECT 1").execute(&mut *connection).await.unwrap();
        held.push(connection);
    }
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen("nodelay_test").await.unwrap();

    let sockets = sockets_to(port);
    assert!(
        sockets.len() >= 4,
        "expected the 3 pooled and the LISTEN connection on port {port}, found {}",
        sockets.len()
    );
    assert_eq!(with_nodelay(&sockets), sockets.len(), "every Postgres connection has TCP_NODELAY");

    drop(listener);
    drop(held);
    pool.close().await;
}

#[tokio::test]
async fn redis_bus_connections_set_tcp_nodelay() {
    let url = std::env::var("MESH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
    let port = port_of(&url, 6379);
    let bus = kit::bus::RedisStreams::new(&url).unwrap();
    let stream = format!("nodelay-test-{}", uuid::Uuid::new_v4().simple());
    bus.ensure_group(&stream, "g").await.unwrap();
    bus.publish(&stream, "e-1", b"{}").await.unwrap();
    let read = bus.read(&stream, "g", "c", 10, Duration::from_millis(10)).await.unwrap();
    assert_eq!(read.len(), 1);

    let sockets = sockets_to(port);
    assert!(!sockets.is_empty(), "expected a connection to Redis on port {port}");
    assert_eq!(with_nodelay(&sockets), sockets.len(), "every Redis connection has TCP_NODELAY");
}
