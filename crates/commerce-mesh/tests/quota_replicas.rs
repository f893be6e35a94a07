//! A source's quota holds across replicas: three `commerce-mesh serve
//! catalog-ingest` processes, on 127.0.0.1, 127.0.0.2 and 127.0.0.3, share one
//! Postgres database and one Redis; a `serve gateway` process reaches them
//! through `dns:///catalog-ingest.quota.test:<port>`, a name that resolves to
//! all three, and balances across them. A source offered three times its
//! quota for 30 s through the gateway gets its quota (burst + rate × time),
//! not three times it, and every process took calls.
//!
//! The name: the gateway resolves `dns:///` names with the system resolver
//! (getaddrinfo), as in a cluster. Rather than edit /etc/hosts, the gateway
//! process runs with nss_wrapper (`LD_PRELOAD=libnss_wrapper.so`,
//! `NSS_WRAPPER_HOSTS`), which answers getaddrinfo from a hosts file of the
//! test's own: the gateway's code path is the production one, from its
//! configuration to the resolver, and nothing outside the test changes.
//! `scripts/services` installs libnss-wrapper.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

mod support;

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kit::db::Backend;
use kit::testing::TestDatabase;
use serde_json::{Value, json};
use support::{nss_wrapper, port_free_on_every, serve, wait_until};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

/// The quota under test: 20 events a second, 10 at once after a quiet spell.
const RATE: u32 = 20;
const BURST: u32 = 10;
/// Offered: three times the rate, for 30 s, by several HTTP clients.
const OFFERED_PER_SECOND: u32 = 3 * RATE;
const SECONDS: u64 = 30;
const CLIENTS: usize = 3;
/// The replicas' addresses: what the name resolves to.
const REPLICAS: [Ipv4Addr; 3] = [Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)];
const NAME: &str = "catalog-ingest.quota.test";
const GATEWAY_SECRET: &str = "quota-replicas-gateway-development-secret";

/// The shipped exec-ed-partner source renamed `source`, with the quota under test.
fn write_source(dir: &Path, source: &str) {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/catalog/sources/exec-ed-partner.toml");
    let text: Vec<String> = std::fs::read_to_string(shipped)
        .expect("the shipped source")
        .lines()
        .map(|line| match line {
            _ if line.starts_with("source =") => format!("source = \"{source}\""),
            _ if line.starts_with("rate_per_second =") => format!("rate_per_second = {RATE}"),
            _ if line.starts_with("burst =") => format!("burst = {BURST}"),
            _ => line.to_string(),
        })
        .collect();
    std::fs::create_dir_all(dir).expect("sources dir");
    std::fs::write(dir.join(format!("{source}.toml")), text.join("\n")).expect("source file");
}

/// The sum of the samples of `name` in an OpenMetrics text whose labels contain every one of `labels`.
fn sample_sum(text: &str, name: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// What the load saw: answers by HTTP status, and when the first and last events were sent.
#[derive(Default)]
struct Offered {
    accepted: u64,
    throttled: u64,
    other: Vec<String>,
}

#[tokio::test]
async fn a_source_gets_its_quota_across_three_replicas_not_three_times_it() {
    let library = nss_wrapper();
    let dir = tempfile::Builder::new().prefix("quota-replicas").tempdir().expect("tempdir");
    let run = uuid::Uuid::new_v4().simple().to_string();
    let source = format!("quota-{}", &run[..12]);
    write_source(&dir.path().join("sources"), &source);
    let db = TestDatabase::new(Backend::Postgres, "catalog_ingest").await;
    let redis_url = std::env::var("MESH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());

    // The three replicas: one port on three addresses, as pods behind a headless service.
    let port = port_free_on_every(&REPLICAS);
    let admin_port = port_free_on_every(&REPLICAS);
    support::migrate(dir.path(), &db.config().url, "catalog-ingest").await;
    let mut children = Vec::new();
    for (i, address) in REPLICAS.iter().enumerate() {
        let env = [
            ("MESH_DATABASE_URL", db.config().url.clone()),
            ("MESH_REDIS_URL", redis_url.clone()),
            ("MESH_DATA_DIR", dir.path().join(format!("data-{i}")).display().to_string()),
            ("MESH_CATALOG_INGEST__LISTEN", format!("{address}:{port}")),
            ("MESH_CATALOG_INGEST__ADMIN_LISTEN", format!("{address}:{admin_port}")),
            ("MESH_CATALOG_INGEST__SOURCES_DIR", dir.path().join("sources").display().to_string()),
            // The default share (1): had the replicas fallen back to deciding alone, the source would get 3×.
            ("MESH_CATALOG_INGEST__QUOTA__KEY_PREFIX", format!("test-{run}:")),
            ("MESH_AUTH__DEVELOPMENT_SECRET", GATEWAY_SECRET.into()),
            ("MESH_TELEMETRY__LOG_FILTER", "info".into()),
        ]
        .map(|(key, value)| (key.to_string(), value));
        children.push(serve("catalog-ingest", dir.path(), &env, &dir.path().join(format!("catalog-{i}.log"))));
    }
    for address in REPLICAS {
        support::wait_serving(&format!("http://{address}:{port}")).await;
    }

    // The gateway, resolving the name to the three replicas.
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, REPLICAS.iter().map(|address| format!("{address} {NAME}\n")).collect::<String>())
        .expect("hosts file");
    let gateway_port = port_free_on_every(&REPLICAS[..1]);
    let gateway_admin = port_free_on_every(&REPLICAS[..1]);
    let env = [
        ("LD_PRELOAD", library.display().to_string()),
        ("NSS_WRAPPER_HOSTS", hosts.display().to_string()),
        ("MESH_GATEWAY__LISTEN", format!("127.0.0.1:{gateway_port}")),
        ("MESH_GATEWAY__ADMIN_LISTEN", format!("127.0.0.1:{gateway_admin}")),
        ("MESH_AUTH__DEVELOPMENT_SECRET", GATEWAY_SECRET.into()),
        ("MESH_GATEWAY__CATALOG_INGEST_URL", format!("dns:///{NAME}:{port}")),
        ("MESH_TELEMETRY__LOG_FILTER", "info".into()),
    ]
    .map(|(key, value)| (key.to_string(), value));
    children.push(serve("gateway", dir.path(), &env, &dir.path().join("gateway.log")));
    let base = format!("http://127.0.0.1:{gateway_port}");

    let mut config = commerce_mesh::MeshConfig::default();
    config.auth.development_secret = Some(kit::auth::Secret::new(GATEWAY_SECRET.to_string()));
    let scopes = vec!["catalog:ingest".to_string(), "catalog:read".to_string()];
    let token =
        Arc::new(commerce_mesh::dev_tokens::mint(&config, "quota-test", scopes, Duration::from_secs(3600)).unwrap());
    let clients: Vec<reqwest::Client> = (0..CLIENTS)
        .map(|_| reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client"))
        .collect();
    // Until the gateway reaches a replica through the name (a read the quota does not count).
    wait_until("the gateway reaches CatalogIngest through the name", || {
        let request = clients[0].get(format!("{base}/v1/products/none")).bearer_auth(token.as_str());
        async move { request.send().await.ok().filter(|r| r.status() == reqwest::StatusCode::NOT_FOUND) }
    })
    .await;

    // The overload: OFFERED_PER_SECOND events a second, each sent on a task of its
    // own so a slow answer never delays the next, round robin over the clients.
    let payload: Value = serde_json::from_str(include_str!(
        "../../../config/catalog/sources/examples/exec-ed-partner/course.upserted.json"
    ))
    .expect("example payload");
    let url = format!("{base}/v1/sources/{source}/events");
    let total = OFFERED_PER_SECOND as u64 * SECONDS;
    let mut interval = tokio::time::interval(Duration::from_secs(1) / OFFERED_PER_SECOND);
    interval.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut sends = JoinSet::new();
    let mut first_sent = None;
    let mut last_sent = Instant::now();
    for i in 0..total {
        interval.tick().await;
        last_sent = Instant::now();
        first_sent.get_or_insert(last_sent);
        let body = json!({
            "event_id": format!("e-{i}"),
            "event_name": "course.upserted",
            "occurred_at": (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339(),
            "payload": payload,
        });
        let request = clients[i as usize % CLIENTS].post(&url).bearer_auth(token.as_str()).json(&body);
        sends.spawn(async move {
            match request.send().await {
                Ok(answer) => {
                    let status = answer.status();
                    (status, answer.text().await.unwrap_or_default())
                }
                Err(error) => (reqwest::StatusCode::IM_A_TEAPOT, format!("no answer: {error}")),
            }
        });
    }
    let offered_for = last_sent - first_sent.expect("sent");
    let mut offered = Offered::default();
    let answers = tokio::time::timeout(support::HANG_GUARD, sends.join_all()).await.expect("every event answered");
    for (status, body) in answers {
        match status.as_u16() {
            200 => offered.accepted += 1,
            429 => offered.throttled += 1,
            _ => offered.other.push(format!("{status}: {body}")),
        }
    }

    eprintln!(
        "offered {total} in {offered_for:?}: {} accepted, {} refused (429), {} other",
        offered.accepted,
        offered.throttled,
        offered.other.len()
    );
    assert!(offered.other.is_empty(), "only 200 and 429: {:?}", &offered.other[..offered.other.len().min(5)]);
    // Burst, then the rate, for as long as the events were offered.
    let expected = f64::from(BURST) + f64::from(RATE) * offered_for.as_secs_f64();
    let accepted = offered.accepted as f64;
    let figures = serde_json::json!({
        "suite": "quota",
        "replicas": REPLICAS.len(),
        "offered": total,
        "seconds": offered_for.as_secs_f64(),
        "accepted": offered.accepted,
        "quota_admits": expected.round(),
        "deviation_percent": (100.0 * (accepted - expected) / expected * 10.0).round() / 10.0,
        "throttled_429": offered.throttled,
        "other": offered.other.len(),
    });
    println!("RELIABILITY-FIGURES {figures}");
    assert!(
        (accepted - expected).abs() <= 0.05 * expected,
        "{} accepted of {total} offered in {offered_for:?}; the quota admits {expected:.0} (±5 %), three replicas \
         each on its own ~{:.0}; {} refused",
        offered.accepted,
        3.0 * expected,
        offered.throttled
    );
    assert_eq!(offered.accepted + offered.throttled, total);

    // What was accepted was recorded, once, in the shared database.
    let pool = sqlx::PgPool::connect(&db.config().url).await.expect("connect");
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM catalog_ingest.ingestions WHERE source = $1")
        .bind(&source)
        .fetch_one(&pool)
        .await
        .expect("count ingestions");
    assert_eq!(recorded as u64, offered.accepted, "every accepted event recorded");
    pool.close().await;

    // Every replica took a share of the calls, and none decided alone.
    let mut calls = Vec::new();
    for address in REPLICAS {
        let text = reqwest::get(format!("http://{address}:{admin_port}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        let ingests = sample_sum(&text, "rpc_server_requests_total", &["rpc_method=\"IngestProductEvent\""]);
        assert!(ingests >= total / 10, "{address} took {ingests} of {total} calls: balanced across the three");
        assert!(text.contains("catalog_ingest_quota_degraded{"), "{address} keeps its quotas in Redis");
        assert_eq!(sample_sum(&text, "catalog_ingest_quota_fallback_checks_total", &[]), 0, "{address} asked Redis");
        assert_eq!(sample_sum(&text, "catalog_ingest_quota_degraded", &[]), 0, "{address}");
        calls.push(ingests);
    }
    eprintln!("calls per replica {calls:?}");
    assert_eq!(calls.iter().sum::<u64>(), total, "every call reached one replica: {calls:?}");

    for mut child in children {
        child.start_kill().expect("kill");
        child.wait().await.expect("exits");
    }
}
