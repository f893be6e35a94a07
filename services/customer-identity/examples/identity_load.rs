//! Load harness for CustomerIdentity at scale: bulk import through
//! `ImportCustomers`, then lookups at a fixed rate, cache misses and hits, by
//! LMS user id and by username, against one server process. Prints the
//! figures as Markdown for docs/BENCHMARKS.md.
//!
//! ```sh
//! cargo build --release -p commerce-mesh
//! cargo run --release -p customer-identity --example identity_load -- --rows 53000000
//! ```
//!
//! The server is `commerce-mesh serve customer-identity` on Postgres
//! (database `identity_bench`, or `--database`, recreated unless
//! `--skip-import`) with its cache in Redis; with `--embedded DIR`, on SQLite
//! in DIR (emptied unless `--skip-import`) with its cache in process, as `up`
//! runs it. Row i is customer `uuid(mix(i))`, LMS user id i+1, username `u<i>`.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a harness, not a service: fail loudly

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The development secret the server verifies the harness's tokens with.
const BENCH_SECRET: &str = "identity-load-development-secret-of-32-bytes";

use clap::Parser;
use kit::bench::percentile;
use proto::commerce::identity::v1 as pb;
use proto::commerce::identity::v1::customer_identity_service_client::CustomerIdentityServiceClient;
use tokio_stream::StreamExt;

#[derive(Parser, Debug)]
struct Args {
    /// Identities to import.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Reuse the loaded database: skip the import.
    #[arg(long)]
    skip_import: bool,
    /// Stop after the import: no lookup phases.
    #[arg(long)]
    skip_lookups: bool,
    /// Concurrent import streams. Into an empty table the first stream to
    /// end is a first load (indexes built after); the others then merge.
    #[arg(long, default_value_t = 1)]
    streams: u64,
    /// Store one customer before the import, so the table is not empty and
    /// every batch merges as it arrives (the path of a load into a filled table).
    #[arg(long)]
    merge: bool,
    /// Rows per streamed message (one transaction each on the server).
    #[arg(long, default_value_t = 20000)]
    batch: u64,
    /// Lookups per second in each phase.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Seconds per lookup phase.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// The mesh binary to run the server with.
    #[arg(long, default_value = "target/release/commerce-mesh")]
    mesh_binary: String,
    /// Postgres server (admin connection).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres: String,
    /// Redis for the cache.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// The Postgres database to (re)create and load.
    #[arg(long, default_value = "identity_bench")]
    database: String,
    /// Embedded storage instead, as `up` runs it: SQLite in this directory
    /// (emptied first unless --skip-import), the cache in process.
    #[arg(long)]
    embedded: Option<std::path::PathBuf>,
}

fn customer_id(i: u64) -> String {
    // A bijection of i spread over 128 bits: random-looking UUIDs, like a commerce platform's.
    uuid::Uuid::from_u128((i as u128 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)).to_string()
}

fn record(i: u64) -> pb::CustomerRecord {
    pb::CustomerRecord {
        customer_id: customer_id(i),
        lms_user_id: (i + 1).to_string(),
        lms_username: format!("u{i}"),
        email: format!("u{i}@example.org"),
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

struct Phase {
    name: &'static str,
    sent: usize,
    errors: usize,
    achieved: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    /// The failures by gRPC code, such as `DeadlineExceeded 12, Unavailable 3`.
    codes: String,
}

/// Sends `rate` lookups a second for `seconds`, open loop (each at its
/// scheduled time, whatever the earlier ones are doing); latency from send to answer.
async fn lookup_phase(
    name: &'static str,
    client: &CustomerIdentityServiceClient<kit::client::TracedChannel>,
    rate: u64,
    seconds: u64,
    key_of: impl Fn(u64) -> pb::lookup_customer_request::Key,
) -> Phase {
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut handles = Vec::with_capacity(total as usize);
    for n in 0..total {
        tokio::time::sleep_until(start + interval * n as u32).await;
        let mut client = client.clone();
        let key = key_of(n);
        handles.push(tokio::spawn(async move {
            let sent = Instant::now();
            let answer = client.lookup_customer(pb::LookupCustomerRequest { key: Some(key) }).await;
            (sent.elapsed(), answer.err().map(|status| status.code()))
        }));
    }
    let mut latencies = Vec::with_capacity(handles.len());
    let mut errors = 0;
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for handle in handles {
        let (latency, failed) = handle.await.unwrap();
        latencies.push(latency);
        if let Some(code) = failed {
            errors += 1;
            *codes.entry(format!("{code:?}")).or_default() += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    Phase {
        name,
        sent: latencies.len(),
        errors,
        codes: codes.iter().map(|(code, n)| format!("{code} {n}")).collect::<Vec<_>>().join(", "),
        achieved: latencies.len() as f64 / elapsed,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        max: latencies.last().copied().unwrap_or_default(),
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let admin = match args.embedded {
        Some(_) => None,
        None => Some(sqlx::PgPool::connect(&args.postgres).await.expect("Postgres reachable")),
    };
    if let (Some(admin), false) = (&admin, args.skip_import) {
        kit::bench::recreate_database(admin, &args.database).await.expect("bench database recreated");
    }
    if let (Some(dir), false) = (&args.embedded, args.skip_import) {
        std::fs::remove_dir_all(dir).ok();
        std::fs::create_dir_all(dir).expect("embedded data directory created");
    }
    let database_url = {
        let mut url = args.postgres.clone();
        let slash = url.rfind('/').unwrap();
        url.truncate(slash + 1);
        url + &args.database
    };

    // `serve` applies no migration: the schema first, as the migrations Job does.
    let mut migrate = tokio::process::Command::new(&args.mesh_binary);
    migrate.args(["migrate", "customer-identity"]);
    match &args.embedded {
        Some(dir) => migrate.env("MESH_DATA_DIR", dir).env_remove("MESH_DATABASE_URL"),
        None => migrate.env("MESH_DATABASE_URL", &database_url),
    };
    let migrated = migrate.output().await.expect("run commerce-mesh migrate");
    assert!(migrated.status.success(), "migrate: {}", String::from_utf8_lossy(&migrated.stderr));

    // A free port for the server.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut command = tokio::process::Command::new(&args.mesh_binary);
    command.args(["serve", "customer-identity"]);
    match &args.embedded {
        Some(dir) => command.env("MESH_DATA_DIR", dir).env_remove("MESH_DATABASE_URL").env_remove("MESH_REDIS_URL"),
        None => command.env("MESH_DATABASE_URL", &database_url).env("MESH_REDIS_URL", &args.redis),
    };
    let mut server = command
        .env("MESH_CUSTOMER_IDENTITY__LISTEN", format!("127.0.0.1:{port}"))
        .env("MESH_CUSTOMER_IDENTITY__RETIREMENT_SALT", "bench")
        .env("MESH_AUTH__DEVELOPMENT_SECRET", BENCH_SECRET)
        .env("MESH_CUSTOMER_IDENTITY__CACHE__NAMESPACE", format!("bench-{}", uuid::Uuid::new_v4().simple()))
        .env("MESH_TELEMETRY__LOG_FILTER", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {} (build it with --release first): {e}", args.mesh_binary));
    let pid = server.id().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let mut health = tonic_health::pb::health_client::HealthClient::new(kit::client::channel(&url).unwrap());
    let mut updates = loop {
        // The process is starting: connection refused until it listens.
        match health.watch(tonic_health::pb::HealthCheckRequest { service: String::new() }).await {
            Ok(stream) => break stream.into_inner(),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    while let Some(update) = updates.next().await {
        if update.unwrap().status() == tonic_health::pb::health_check_response::ServingStatus::Serving {
            break;
        }
    }
    let rss_start = rss_kib(pid);
    // The server checks its callers: a development token with what the harness calls.
    let claims = kit::auth::DevelopmentClaims {
        issuer: "commerce-mesh".into(),
        audience: "commerce-mesh".into(),
        subject: "identity-load".into(),
        scopes: vec!["identity:read".into(), "identity:import".into(), "identity:write".into()],
        ttl: Duration::from_secs(24 * 60 * 60),
    };
    let credential = kit::credential::Credential::development(kit::auth::Secret::new(BENCH_SECRET.into()), claims)
        .expect("a development credential");
    let client = CustomerIdentityServiceClient::new(kit::client::channel_as(&url, credential).unwrap())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);

    let mut report = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    report.push_str(&format!(
        "Machine: {} cores ({cpu}), {} GiB RAM; PostgreSQL and Redis on the same machine.\n\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| s
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok()))
            .map_or(0, |kib| kib / 1024 / 1024)
    ));

    if args.merge && !args.skip_import {
        let seed = pb::UpsertCustomerRequest {
            customer_id: "seed".into(),
            lms_user_id: (args.rows + 1).to_string(),
            lms_username: "seed".into(),
            ..Default::default()
        };
        client.clone().upsert_customer(seed).await.unwrap();
    }
    if !args.skip_import {
        let done = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let per_stream = args.rows.div_ceil(args.streams);
        let progress = {
            let done = done.clone();
            let rows = args.rows;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    let n = done.load(Ordering::Relaxed);
                    eprintln!(
                        "import: {n}/{rows} rows, {:.0} rows/s, server RSS {}",
                        n as f64 / started.elapsed().as_secs_f64(),
                        mib(rss_kib(pid))
                    );
                }
            })
        };
        let streams: Vec<_> = (0..args.streams)
            .map(|s| {
                let mut client = client.clone();
                let (from, to) = (s * per_stream, ((s + 1) * per_stream).min(args.rows));
                let (batch, done) = (args.batch, done.clone());
                tokio::spawn(async move {
                    let batches = futures::stream::iter((from..to).step_by(batch as usize)).map(move |first| {
                        let last = (first + batch).min(to);
                        done.fetch_add(last - first, Ordering::Relaxed);
                        pb::ImportCustomersRequest { customers: (first..last).map(record).collect() }
                    });
                    client.import_customers(batches).await.unwrap().into_inner()
                })
            })
            .collect();
        let mut total = pb::ImportCustomersResponse::default();
        for stream in streams {
            let answer = stream.await.unwrap();
            total.inserted += answer.inserted;
            total.updated += answer.updated;
            total.rejected += answer.rejected;
        }
        progress.abort();
        let seconds = started.elapsed().as_secs_f64();
        let size: u64 = match (&admin, &args.embedded) {
            (Some(admin), _) => sqlx::query_scalar::<_, i64>("SELECT pg_database_size($1)")
                .bind(&args.database)
                .fetch_one(admin)
                .await
                .unwrap() as u64,
            (None, Some(dir)) => std::fs::read_dir(dir)
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(customer_identity::NAME))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum(),
            (None, None) => 0,
        };
        report.push_str(&format!(
            "### Import\n\n| rows | path | streams × rows/message | inserted | rejected | time | rows/s | database size |\n|---|---|---|---|---|---|---|---|\n| {} | {} | {} × {} | {} | {} | {:.0} s | **{:.0}** | {:.1} GiB |\n\n",
            args.rows,
            if args.merge { "merge (table not empty)" } else { "first load" },
            args.streams,
            args.batch,
            total.inserted,
            total.rejected,
            seconds,
            args.rows as f64 / seconds,
            size as f64 / (1u64 << 30) as f64
        ));
    }
    let rows: i64 = match &args.embedded {
        None => {
            let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
            sqlx::query_scalar("SELECT count(*) FROM customer_identity.customers").fetch_one(&pool).await.unwrap()
        }
        Some(dir) => {
            let file = dir.join(format!("{}.db", customer_identity::NAME));
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", file.display())).await.unwrap();
            sqlx::query_scalar("SELECT count(*) FROM customers").fetch_one(&pool).await.unwrap()
        }
    };
    let rss_rest = rss_kib(pid);
    if args.skip_lookups {
        println!("{report}");
        server.kill().await.ok();
        return;
    }

    // RSS under load: sampled while the lookup phases run.
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let n = rows as u64;
    // Cold keys, spread over the table: cache misses (a repeat among 53 M is rare).
    let random = |salt: u64| move |k: u64| (k.wrapping_add(salt).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 7) % n;
    let hot: Vec<u64> = (0..1000).map(random(7)).collect();
    let mut phases = Vec::new();
    {
        let r = random(1);
        phases.push(
            lookup_phase("miss, by lms_user_id", &client, args.rate, args.seconds, move |k| {
                pb::lookup_customer_request::Key::LmsUserId((r(k) + 1).to_string())
            })
            .await,
        );
        let r = random(2);
        phases.push(
            lookup_phase("miss, by username", &client, args.rate, args.seconds, move |k| {
                pb::lookup_customer_request::Key::LmsUsername(format!("u{}", r(k)))
            })
            .await,
        );
    }
    // Warm the hot set, then hit it.
    for &i in &hot {
        let mut c = client.clone();
        c.lookup_customer(pb::LookupCustomerRequest {
            key: Some(pb::lookup_customer_request::Key::LmsUserId((i + 1).to_string())),
        })
        .await
        .unwrap();
        c.lookup_customer(pb::LookupCustomerRequest {
            key: Some(pb::lookup_customer_request::Key::LmsUsername(format!("u{i}"))),
        })
        .await
        .unwrap();
    }
    let hot = Arc::new(hot);
    {
        let h = hot.clone();
        phases.push(
            lookup_phase("hit, by lms_user_id", &client, args.rate, args.seconds, move |k| {
                pb::lookup_customer_request::Key::LmsUserId((h[(k % 1000) as usize] + 1).to_string())
            })
            .await,
        );
        let h = hot.clone();
        phases.push(
            lookup_phase("hit, by username", &client, args.rate, args.seconds, move |k| {
                pb::lookup_customer_request::Key::LmsUsername(format!("u{}", h[(k % 1000) as usize]))
            })
            .await,
        );
    }
    sampler.abort();

    report.push_str(&format!(
        "### Lookups at {} rows ({} s a phase, open loop at {} /s)\n\n| phase | sent | errors | achieved /s | p50 | p99 | max |\n|---|---|---|---|---|---|---|\n",
        rows, args.seconds, args.rate
    ));
    for p in &phases {
        report.push_str(&format!(
            "| {} | {} | {}{} | {:.0} | {:.2} ms | **{:.2} ms** | {:.2} ms |\n",
            p.name,
            p.sent,
            p.errors,
            if p.codes.is_empty() { String::new() } else { format!(" ({})", p.codes) },
            p.achieved,
            p.p50.as_secs_f64() * 1e3,
            p.p99.as_secs_f64() * 1e3,
            p.max.as_secs_f64() * 1e3
        ));
    }
    report.push_str(&format!(
        "\nServer resident memory: {} after start, {} at rest after the import, {} peak under lookup load.\n",
        mib(rss_start),
        mib(rss_rest),
        mib(peak.load(Ordering::Relaxed))
    ));
    println!("{report}");
    server.kill().await.ok();
}
