//! Load harness for whole orders (issue 17): orders placed over REST through
//! the gateway, each enrolled in a development LMS that answers after
//! `--lms-latency`, until every line item is SUCCEEDED. Prints the figures as
//! Markdown for docs/BENCHMARKS.md.
//!
//! ```sh
//! cargo run --release -p commerce-mesh --example orders_load -- --orders 5000
//! cargo run --release -p commerce-mesh --example orders_load -- --orders 5000 \
//!     --postgres postgres://postgres@127.0.0.1:5432/postgres --redis redis://127.0.0.1:6379/14
//! ```
//!
//! The whole mesh runs in this process (`commerce_mesh::start`, every port
//! 127.0.0.1:0, the development LMS in process with `dev_lms.answer_delay`),
//! on embedded storage in a temporary directory or on `--postgres` (database
//! `orders_bench`, recreated) and `--redis` (flushed first: a database of its
//! own). Its runtime is its own; the callers run on this thread.
//!
//! 1. `--customers` learners are linked (`PUT /v1/customers/{id}`).
//! 2. `--clients` callers place `--orders` orders (`POST
//!    /v1/orders/{number}:fulfill`, `--lines` course-run line items each,
//!    naming the learner by customer id, so Fulfillment asks CustomerIdentity)
//!    as fast as they are answered (closed loop). The accept latency runs from
//!    send to answer.
//! 3. The clock runs until every line item is SUCCEEDED (read from
//!    Fulfillment's store every 100 ms). Accept → SUCCEEDED per line item is
//!    its `fulfillment_transitions` SUCCEEDED time minus its `create_time`.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a harness, not a service: fail loudly

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use clap::Parser;
use commerce_mesh::{Component, MeshConfig, RunningMesh};
use kit::auth::Secret;
use kit::bench::{cpu_snapshot, ms, percentile, thousands};
use kit::shutdown::Shutdown;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "Whole orders through the gateway until SUCCEEDED, against a development LMS with latency")]
struct Args {
    /// Orders to place.
    #[arg(long, default_value_t = 2_000)]
    orders: usize,
    /// Course-run line items per order.
    #[arg(long, default_value_t = 2)]
    lines: usize,
    /// Concurrent callers placing orders.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Learners the orders are spread over.
    #[arg(long, default_value_t = 200)]
    customers: usize,
    /// How long the LMS takes to answer each enrollment, in milliseconds.
    #[arg(long, default_value_t = 50)]
    lms_latency_ms: u64,
    /// Fulfillment's concurrent LMS calls (`fulfillment.workers.concurrency`); default: the service's.
    #[arg(long)]
    workers: Option<usize>,
    /// Give up waiting for SUCCEEDED after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// A Postgres server (admin connection): the services get schemas in the
    /// database `orders_bench` there, recreated. Unset: SQLite.
    #[arg(long)]
    postgres: Option<String>,
    /// Redis for caches and the event bus (its database is flushed first). Unset: in-process.
    #[arg(long)]
    redis: Option<String>,
    /// The log filter of the whole process.
    #[arg(long, default_value = "warn")]
    log_filter: String,
}

const DATABASE: &str = "orders_bench";
const COURSE_RUN: &str = "course-v1:BenchX+Orders101+2026";

async fn mesh_config(args: &Args, data_dir: &std::path::Path) -> MeshConfig {
    let mut config = MeshConfig { data_dir: data_dir.to_path_buf(), ..MeshConfig::default() };
    config.use_ephemeral_ports();
    config.telemetry.log_filter = args.log_filter.clone();
    config.auth.development_secret =
        Some(Secret::new(format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())));
    config.dev_lms.enabled = true;
    config.dev_lms.answer_delay = Duration::from_millis(args.lms_latency_ms);
    if let Some(workers) = args.workers {
        config.fulfillment.settings.workers.concurrency = workers;
    }
    if let Some(admin_url) = &args.postgres {
        let admin = sqlx::PgPool::connect(admin_url).await.expect("Postgres reachable");
        kit::bench::recreate_database(&admin, DATABASE).await.expect("bench database recreated");
        config.database_url = Some(kit::bench::with_database(admin_url, DATABASE, "orders-bench"));
        config.customer_identity.settings.retirement_salt = "orders-bench".into();
    }
    if let Some(redis) = &args.redis {
        let mut connection =
            redis::Client::open(redis.as_str()).unwrap().get_multiplexed_async_connection().await.expect("Redis");
        let () = redis::cmd("FLUSHDB").query_async(&mut connection).await.unwrap();
        config.redis_url = Some(redis.clone());
    }
    config
}

/// Fulfillment's store, read as the harness needs it.
enum Jobs {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

impl Jobs {
    async fn open(args: &Args, data_dir: &std::path::Path) -> Self {
        match &args.postgres {
            Some(admin_url) => Self::Postgres(
                sqlx::PgPool::connect(&kit::bench::with_database(admin_url, DATABASE, "orders-bench-reader"))
                    .await
                    .unwrap(),
            ),
            None => Self::Sqlite(
                sqlx::SqlitePool::connect_with(
                    sqlx::sqlite::SqliteConnectOptions::new().filename(data_dir.join("fulfillment.db")).read_only(true),
                )
                .await
                .unwrap(),
            ),
        }
    }

    async fn succeeded(&self) -> i64 {
        match self {
            Self::Postgres(pool) => {
                sqlx::query_scalar("SELECT count(*) FROM fulfillment.fulfillments WHERE state = 'SUCCEEDED'")
                    .fetch_one(pool)
                    .await
                    .unwrap()
            }
            Self::Sqlite(pool) => sqlx::query_scalar("SELECT count(*) FROM fulfillments WHERE state = 'SUCCEEDED'")
                .fetch_one(pool)
                .await
                .unwrap(),
        }
    }

    /// Accept → SUCCEEDED of every SUCCEEDED line item.
    async fn accept_to_succeeded(&self) -> Vec<Duration> {
        let micros: Vec<i64> = match self {
            Self::Postgres(pool) => sqlx::query_scalar(
                "SELECT (extract(epoch FROM t.at - f.create_time) * 1000000)::int8
                   FROM fulfillment.fulfillments f
                   JOIN fulfillment.fulfillment_transitions t
                     ON t.fulfillment_id = f.fulfillment_id AND t.to_state = 'SUCCEEDED'",
            )
            .fetch_all(pool)
            .await
            .unwrap(),
            Self::Sqlite(pool) => sqlx::query_scalar(
                "SELECT t.at - f.create_time FROM fulfillments f
                   JOIN fulfillment_transitions t ON t.fulfillment_id = f.fulfillment_id AND t.to_state = 'SUCCEEDED'",
            )
            .fetch_all(pool)
            .await
            .unwrap(),
        };
        let mut latencies: Vec<Duration> =
            micros.into_iter().map(|m| Duration::from_micros(u64::try_from(m).unwrap_or(0))).collect();
        latencies.sort();
        latencies
    }
}

async fn run(args: Args, mesh_runtime: tokio::runtime::Handle) {
    let _telemetry = kit::telemetry::init(&kit::telemetry::TelemetryConfig {
        log_filter: args.log_filter.clone(),
        log_format: kit::telemetry::LogFormat::Text,
        ..Default::default()
    })
    .unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    let config = mesh_config(&args, data_dir.path()).await;
    let token = commerce_mesh::dev_tokens::mint(
        &config,
        "orders-bench",
        commerce_mesh::dev_tokens::every_scope(),
        Duration::from_secs(3600),
    )
    .unwrap();
    let storage = match (&args.postgres, &args.redis) {
        (Some(_), Some(_)) => "Postgres + Redis",
        (Some(_), None) => "Postgres, in-process cache and event log",
        (None, _) => "embedded (SQLite, in-process cache, event log)",
    };
    let mesh: RunningMesh =
        mesh_runtime.spawn(commerce_mesh::start(config, Shutdown::new())).await.unwrap().expect("mesh starts");
    let base = mesh.url(Component::Gateway);
    let http = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(args.clients).build().unwrap();
    let ready = Instant::now() + Duration::from_secs(60);
    while !http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < ready, "the mesh was not ready within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let send = |method: reqwest::Method, path: String, body: serde_json::Value| {
        http.request(method, format!("{base}{path}")).bearer_auth(&token).json(&body).send()
    };
    for i in 0..args.customers {
        let body = json!({"lms_user_id": (10_000 + i).to_string(), "lms_username": format!("bench-{i}")});
        let answer = send(reqwest::Method::PUT, format!("/v1/customers/bench-customer-{i}"), body).await.unwrap();
        assert!(answer.status().is_success(), "customer {i}: {}", answer.text().await.unwrap_or_default());
    }

    let jobs = Jobs::open(&args, data_dir.path()).await;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    let cpu = cpu_snapshot("harness");
    let callers = (0..args.clients).map(|_| async {
        let mut latencies = Vec::new();
        let mut errors = Vec::new();
        loop {
            let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n >= args.orders {
                return (latencies, errors);
            }
            let lines: Vec<_> = (0..args.lines)
                .map(|l| {
                    json!({
                        "line_item_id": (l + 1).to_string(),
                        "course_run": {"course_run_key": COURSE_RUN, "mode": "verified"},
                        "title": "Orders at load",
                        "price": {"currency_code": "USD", "amount": "10.00"},
                    })
                })
                .collect();
            let body = json!({
                "date_placed": (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339(),
                "learner": {"customer_id": format!("bench-customer-{}", n % args.customers)},
                "line_items": lines,
            });
            let sent = Instant::now();
            let answer = send(reqwest::Method::POST, format!("/v1/orders/OB-{run}-{n}:fulfill"), body).await;
            match answer {
                Ok(answer) if answer.status().is_success() => latencies.push(sent.elapsed()),
                Ok(answer) => errors.push(format!("{}: {}", answer.status(), answer.text().await.unwrap_or_default())),
                Err(error) => errors.push(error.to_string()),
            }
        }
    });
    let results = futures::future::join_all(callers).await;
    let accepted_in = started.elapsed();
    let mut accept: Vec<Duration> = results.iter().flat_map(|(l, _)| l.iter().copied()).collect();
    let errors: Vec<String> = results.into_iter().flat_map(|(_, e)| e).collect();
    accept.sort();
    let expected = i64::try_from(accept.len() * args.lines).unwrap();
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut succeeded = 0;
    while succeeded < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        succeeded = jobs.succeeded().await;
    }
    let total = started.elapsed();
    let end = cpu_snapshot("harness");
    let busy = (end.busy - cpu.busy) as f64 / (end.total - cpu.total).max(1) as f64;
    let end_to_end = jobs.accept_to_succeeded().await;

    let mut report = String::new();
    let _ = writeln!(
        report,
        "### Whole orders: {storage}, LMS answering in {}\n",
        ms(Duration::from_millis(args.lms_latency_ms))
    );
    let _ = writeln!(
        report,
        "{} orders × {} line items from {} callers over REST; {} learners; Fulfillment workers: {}.\n",
        thousands(args.orders as f64),
        args.lines,
        args.clients,
        args.customers,
        args.workers.map_or("the default".to_string(), |w| w.to_string()),
    );
    let _ = writeln!(report, "| figure | value |\n|---|---|");
    let _ = writeln!(report, "| orders accepted | {} ({} refused or failed) |", accept.len(), errors.len());
    let _ = writeln!(
        report,
        "| accepting: orders/s | {} (all accepted in {:.1} s) |",
        thousands(accept.len() as f64 / accepted_in.as_secs_f64()),
        accepted_in.as_secs_f64()
    );
    let _ = writeln!(
        report,
        "| accept latency p50 / p99 | {} / {} |",
        ms(percentile(&accept, 0.5)),
        ms(percentile(&accept, 0.99))
    );
    let _ = writeln!(
        report,
        "| line items SUCCEEDED | {succeeded} of {expected} in {:.1} s: **{} line items/s**, {} orders/s |",
        total.as_secs_f64(),
        thousands(succeeded as f64 / total.as_secs_f64()),
        thousands(succeeded as f64 / args.lines as f64 / total.as_secs_f64()),
    );
    let _ = writeln!(
        report,
        "| accept → SUCCEEDED p50 / p99 / max | {} / {} / {} |",
        ms(percentile(&end_to_end, 0.5)),
        ms(percentile(&end_to_end, 0.99)),
        ms(end_to_end.last().copied().unwrap_or_default())
    );
    let _ = writeln!(
        report,
        "| machine CPU busy | {:.0} % of {} cores |",
        busy * 100.0,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for error in errors.iter().take(5) {
        let _ = writeln!(report, "\nerror: {error}");
    }
    println!("{report}");
    mesh_runtime.spawn(mesh.stop()).await.unwrap().unwrap();
}

fn main() {
    let args = Args::parse();
    let mesh = tokio::runtime::Builder::new_multi_thread().thread_name("mesh").enable_all().build().unwrap();
    let load = tokio::runtime::Builder::new_current_thread().thread_name("load").enable_all().build().unwrap();
    load.block_on(run(args, mesh.handle().clone()));
    drop(load);
    mesh.shutdown_timeout(Duration::from_secs(5));
}
