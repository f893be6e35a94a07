//! Load harness for Fulfillment (issue #4): how fast `FulfillOrder` accepts
//! line items on Postgres, and how fast the workers drain the queue against an
//! LMS that answers in `--lms-latency`, enrolling each job once. Prints the
//! figures as Markdown for docs/BENCHMARKS.md.
//!
//! ```sh
//! cargo run --release -p fulfillment --example fulfillment_load -- --orders 20000 --clients 32 --concurrency 64
//! ```
//!
//! Everything runs in this process, as `tests/service.rs` assembles it: the
//! Fulfillment gRPC server on 127.0.0.1:0 over Postgres (database
//! `fulfillment_bench`, recreated unless `--skip-accept`, schema `fulfillment`)
//! and the event bus on Redis Streams; the callers, over real gRPC; and a stub
//! LMS (axum) that answers each enrollment after `--lms-latency` and counts the
//! enrollments it receives per (user, course, order number, line item).
//!
//! 1. **Accept** (workers stopped): `--clients` callers send `FulfillOrder` until
//!    `--orders` orders of `--lines-per-order` course-run lines are stored.
//!    Order i names LMS user i+1 (`bench_u<i>`) directly, so CustomerIdentity
//!    is not called; line j enrolls in `course-v1:Bench+C<j>+2026_T1`.
//! 2. **Drain**: the workers (`--concurrency`), the outbox relay and the gauges
//!    start (`Fulfillment::run_background`); the clock runs until no job is
//!    PENDING or IN_PROGRESS, then until the outbox is empty.
//!
//! During each phase the harness samples, every 100 ms, what the service's
//! Postgres connections are doing (`pg_stat_activity`, by `application_name`),
//! and reads the CPU time of this process, of Postgres and of Redis from /proc.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a harness, not a service: fail loudly

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use clap::Parser;
use fulfillment::lms::LmsConfig;
use fulfillment::worker::WorkerConfig;
use fulfillment::{Config, Fulfillment};
use kit::bench::{CpuSnapshot, cpu_snapshot, ms, percentile, thousands, with_database};
use kit::db::{Database, DatabaseConfig};
use kit::serve::GrpcServer;
use kit::service::Service as _;
use kit::shutdown::Shutdown;
use proto::commerce::fulfillment::v1 as pb;
use proto::commerce::fulfillment::v1::fulfillment_service_client::FulfillmentServiceClient;
use proto::commerce::identity::v1::customer_identity_service_client::CustomerIdentityServiceClient;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser, Debug)]
#[command(about = "Fulfillment load harness: FulfillOrder throughput, then the workers draining against a stub LMS")]
struct Args {
    /// Postgres server (admin connection); the harness (re)creates the database `fulfillment_bench` there.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    database_url: String,
    /// Redis for the event bus. A database of its own (`/15`), so the bench's
    /// streams do not slow down tests that read the same stream names from the start.
    #[arg(long, default_value = "redis://127.0.0.1:6379/15")]
    redis: String,
    /// Orders to accept.
    #[arg(long, default_value_t = 20_000)]
    orders: u64,
    /// Course-run line items per order (each one job).
    #[arg(long, default_value_t = 2)]
    lines_per_order: u32,
    /// Concurrent gRPC callers of FulfillOrder (over one HTTP/2 connection).
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Open loop instead of `--clients`: line items a second, each order sent
    /// at its scheduled time whatever the earlier ones are doing; latency from
    /// that time to the answer.
    #[arg(long)]
    rate: Option<u64>,
    /// Worker concurrency (LMS calls in flight at most).
    #[arg(long, default_value_t = WorkerConfig::default().concurrency)]
    concurrency: usize,
    /// How long the stub LMS takes to answer an enrollment (`50ms`, `0.2s`).
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    lms_latency: Duration,
    /// The service's Postgres pool size (`database.max_connections`).
    #[arg(long, default_value_t = DatabaseConfig::default().max_connections)]
    db_connections: u32,
    /// Ping every pooled connection as it is taken (`database.ping_after_idle = 0s`, sqlx's
    /// own check) instead of only those idle for a second: the before of that change.
    #[arg(long)]
    ping_every_checkout: bool,
    /// Reuse `fulfillment_bench` as it is and only drain what is PENDING there.
    #[arg(long)]
    skip_accept: bool,
    /// Accept only: leave the jobs PENDING (drain them later with `--skip-accept`).
    #[arg(long)]
    skip_drain: bool,
    /// Give up draining after this long.
    #[arg(long, default_value = "10min", value_parser = parse_duration)]
    drain_timeout: Duration,
}

const DATABASE: &str = "fulfillment_bench";
/// `application_name` of the service's connections, to tell them apart in `pg_stat_activity`.
const SERVICE_APP: &str = "fulfillment-service";
const HARNESS_APP: &str = "fulfillment-bench";

/// `50ms`, `1.5s`, `2min`, `250us`; a bare number is milliseconds.
fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (number, unit) = raw.find(|c: char| c.is_ascii_alphabetic()).map_or((raw, "ms"), |at| raw.split_at(at));
    let value: f64 = number.trim().parse().map_err(|e| format!("{raw:?}: {e}"))?;
    let seconds = match unit {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" | "min" => value * 60.0,
        other => return Err(format!("{raw:?}: unknown unit {other:?} (us, ms, s, min)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{raw:?}: {e}"))
}

// ---------------------------------------------------------------- orders

fn order(i: u64, lines: u32, placed: i64) -> pb::FulfillOrderRequest {
    pb::FulfillOrderRequest {
        order_number: format!("BENCH-{i:08}"),
        order_id: format!("ct-{i}"),
        order_version: 1,
        date_placed: Some(prost_types::Timestamp { seconds: placed, nanos: 0 }),
        source_system: "commercetools".into(),
        learner: Some(pb::Learner {
            customer_id: String::new(),
            lms_user_id: (i + 1).to_string(),
            lms_username: format!("bench_u{i}"),
        }),
        email_opt_in: i.is_multiple_of(2),
        line_items: (0..lines)
            .map(|j| pb::LineItem {
                line_item_id: format!("l{j}"),
                product: Some(pb::line_item::Product::CourseRun(pb::CourseRunEnrollment {
                    course_run_key: format!("course-v1:Bench+C{j}+2026_T1"),
                    mode: "verified".into(),
                    credit_provider_id: String::new(),
                })),
                title: format!("Benchmark course {j}"),
                price: Some(proto::commerce::r#type::v1::Money {
                    currency_code: "USD".into(),
                    amount: "149.00".into(),
                }),
            })
            .collect(),
    }
}

// ---------------------------------------------------------------- stub LMS

/// The stub LMS: a token for anyone, and enrollments answered after `latency`, counted per key.
struct Stub {
    latency: Duration,
    tokens: AtomicU64,
    calls: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    /// Enrollment requests received per "user|course_id|order_number|line_item_id".
    keys: Mutex<HashMap<String, u32>>,
}

impl Stub {
    fn reset(&self) {
        self.tokens.store(0, Ordering::Relaxed);
        self.calls.store(0, Ordering::Relaxed);
        self.max_in_flight.store(0, Ordering::Relaxed);
        self.keys.lock().unwrap().clear();
    }
}

async fn token(State(stub): State<Arc<Stub>>) -> axum::Json<Value> {
    stub.tokens.fetch_add(1, Ordering::Relaxed);
    axum::Json(json!({"access_token": "t", "expires_in": 3600, "token_type": "JWT"}))
}

async fn enroll(State(stub): State<Arc<Stub>>, body: axum::body::Bytes) -> axum::Json<Value> {
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let attribute = |name: &str| {
        body["enrollment_attributes"]
            .as_array()
            .and_then(|attributes| {
                attributes.iter().find(|a| a["namespace"] == "order" && a["name"] == name).map(|a| a["value"].clone())
            })
            .unwrap_or_default()
    };
    // Counted on receipt: a call the LMS saw counts even if its caller gave up waiting.
    let key = format!(
        "{}|{}|{}|{}",
        body["user"],
        body["course_details"]["course_id"],
        attribute("order_number"),
        attribute("line_item_id")
    );
    stub.calls.fetch_add(1, Ordering::Relaxed);
    *stub.keys.lock().unwrap().entry(key).or_default() += 1;
    let now = stub.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    stub.max_in_flight.fetch_max(now, Ordering::Relaxed);
    tokio::time::sleep(stub.latency).await;
    stub.in_flight.fetch_sub(1, Ordering::Relaxed);
    axum::Json(json!({}))
}

async fn start_stub(latency: Duration) -> (Arc<Stub>, String) {
    let stub = Arc::new(Stub {
        latency,
        tokens: AtomicU64::new(0),
        calls: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        max_in_flight: AtomicU64::new(0),
        keys: Mutex::new(HashMap::new()),
    });
    let app = Router::new()
        .route("/oauth2/access_token", post(token))
        .route("/api/enrollment/v1/enrollment", post(enroll))
        .with_state(Arc::clone(&stub));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (stub, url)
}

// ---------------------------------------------------------------- observation

/// What the service's Postgres connections did, sampled every 100 ms during a phase.
struct Sampler {
    stop: Shutdown,
    task: tokio::task::JoinHandle<(u64, HashMap<String, u64>)>,
    cpu: CpuSnapshot,
}

impl Sampler {
    fn start(admin: &PgPool) -> Self {
        let stop = Shutdown::new();
        let admin = admin.clone();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut samples = 0u64;
            let mut counts: HashMap<String, u64> = HashMap::new();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    () = stopped.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let Ok(states) = kit::bench::connection_states(&admin, SERVICE_APP).await else { continue };
                samples += 1;
                for (label, n) in states {
                    *counts.entry(label).or_default() += n;
                }
            }
            (samples, counts)
        });
        Self { stop, task, cpu: cpu_snapshot("this process (service + harness + stub LMS)") }
    }

    /// Markdown: CPU per process and the wait profile of the service's connections.
    async fn finish(self) -> String {
        let end = cpu_snapshot("this process (service + harness + stub LMS)");
        self.stop.cancel();
        let (samples, counts) = self.task.await.unwrap();
        let seconds = end.at.duration_since(self.cpu.at).as_secs_f64().max(1e-9);
        // Linux reports process CPU time in USER_HZ, 100 a second.
        let mut per: HashMap<&str, u64> = HashMap::new();
        for (pid, (who, ticks)) in &end.by_pid {
            let before = self.cpu.by_pid.get(pid).map_or(0, |(_, t)| *t);
            *per.entry(who).or_default() += ticks.saturating_sub(before);
        }
        let mut out = String::new();
        let total = (end.total - self.cpu.total).max(1) as f64;
        let _ = write!(
            out,
            "CPU (100 % = one core): machine busy {:.0} % of {} cores (iowait {:.0} %)",
            (end.busy - self.cpu.busy) as f64 / total * 100.0,
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            (end.iowait - self.cpu.iowait) as f64 / total * 100.0,
        );
        let mut per: Vec<_> = per.into_iter().collect();
        per.sort_by_key(|&(_, ticks)| std::cmp::Reverse(ticks));
        let mut listed = 0.0;
        for (who, ticks) in per {
            let share = ticks as f64 / 100.0 / seconds * 100.0;
            listed += share;
            let _ = write!(out, "; {who} {share:.0} %");
        }
        // Whatever else ran (another build, say): large here means the figures are not this service's alone.
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        let busy = (end.busy - self.cpu.busy) as f64 / total * 100.0 * cores;
        let _ = write!(out, "; everything else {:.0} %", (busy - listed).max(0.0));
        out.push_str(".\n\n");
        let mut counts: Vec<_> = counts.into_iter().collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let _ = writeln!(
            out,
            "The service's Postgres connections, sampled every 100 ms ({samples} samples; average connections in each state):\n"
        );
        out.push_str("| state | average connections |\n|---|---|\n");
        for (label, n) in counts {
            let _ = writeln!(out, "| {label} | {:.2} |", n as f64 / samples.max(1) as f64);
        }
        out
    }
}

/// `redis_version` from INFO, over a bare RESP exchange.
async fn redis_version(url: &str) -> String {
    let address = url.trim_start_matches("redis://").split(['/', '?']).next().unwrap_or("127.0.0.1:6379");
    let address = address.rsplit('@').next().unwrap_or(address).to_string();
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(&address).await.ok()?;
        stream.write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n").await.ok()?;
        let mut buffer = vec![0u8; 16 << 10];
        let mut read = 0;
        while read < buffer.len() {
            let n = stream.read(&mut buffer[read..]).await.ok()?;
            if n == 0 {
                break;
            }
            read += n;
            let text = String::from_utf8_lossy(&buffer[..read]);
            if let Some(line) = text.lines().find(|l| l.starts_with("redis_version:"))
                && text.contains("\r\nos:")
            {
                return Some(line.trim_start_matches("redis_version:").to_string());
            }
        }
        None
    };
    tokio::time::timeout(Duration::from_secs(2), exchange).await.ok().flatten().unwrap_or_else(|| "unknown".into())
}

async fn setting(admin: &PgPool, name: &str) -> String {
    sqlx::query_scalar::<_, String>("SELECT current_setting($1)").bind(name).fetch_one(admin).await.unwrap_or_default()
}

// ---------------------------------------------------------------- phases

#[derive(Default)]
struct Accepted {
    orders: u64,
    errors: u64,
    not_created: u64,
    first_error: Option<String>,
    seconds: f64,
    latencies: Vec<Duration>,
    /// `--rate` only: how late each send left its schedule (the timer's
    /// millisecond steps, a busy runtime); part of the latency.
    send_lags: Vec<Duration>,
}

/// `--rate`: every order sent at its scheduled time, none repeated.
async fn accept_at_rate(
    args: &Args,
    rate: u64,
    client: FulfillmentServiceClient<kit::client::TracedChannel>,
) -> Accepted {
    let placed = chrono::Utc::now().timestamp() - 3600;
    let lines = args.lines_per_order;
    let interval = Duration::from_secs_f64(f64::from(lines) / rate.max(1) as f64);
    let start = tokio::time::Instant::now();
    let mut calls = Vec::with_capacity(args.orders as usize);
    let mut lags = Vec::with_capacity(args.orders as usize);
    for i in 0..args.orders {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        lags.push(due.elapsed());
        let mut client = client.clone();
        calls.push(tokio::spawn(async move {
            let answer = client.fulfill_order(order(i, lines, placed)).await;
            (due.elapsed(), answer.map(|a| a.into_inner().created))
        }));
    }
    let mut result = Accepted::default();
    for call in calls {
        let (latency, answer) = call.await.unwrap();
        match answer {
            Ok(created) => {
                result.latencies.push(latency);
                result.not_created += u64::from(!created);
            }
            Err(status) => {
                result.errors += 1;
                result.first_error.get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
            }
        }
    }
    result.seconds = start.elapsed().as_secs_f64();
    result.orders = result.latencies.len() as u64;
    result.latencies.sort();
    lags.sort();
    result.send_lags = lags;
    result
}

async fn accept(args: &Args, client: FulfillmentServiceClient<kit::client::TracedChannel>) -> Accepted {
    if let Some(rate) = args.rate {
        return accept_at_rate(args, rate, client).await;
    }
    let next = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let placed = chrono::Utc::now().timestamp() - 3600;
    let started = Instant::now();
    let progress = {
        let (accepted, orders) = (Arc::clone(&accepted), args.orders);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let n = accepted.load(Ordering::Relaxed);
                eprintln!("accept: {n}/{orders} orders, {:.0} orders/s", n as f64 / started.elapsed().as_secs_f64());
            }
        })
    };
    let callers: Vec<_> = (0..args.clients)
        .map(|_| {
            let (next, accepted, mut client) = (Arc::clone(&next), Arc::clone(&accepted), client.clone());
            let (orders, lines) = (args.orders, args.lines_per_order);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let (mut errors, mut not_created, mut first_error) = (0u64, 0u64, None);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= orders {
                        break;
                    }
                    // A failed call is repeated (FulfillOrder is idempotent per order number).
                    for _ in 0..5 {
                        let sent = Instant::now();
                        match client.fulfill_order(order(i, lines, placed)).await {
                            Ok(answer) => {
                                latencies.push(sent.elapsed());
                                not_created += u64::from(!answer.into_inner().created);
                                accepted.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Err(status) => {
                                errors += 1;
                                first_error.get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                }
                (latencies, errors, not_created, first_error)
            })
        })
        .collect();
    let mut result = Accepted::default();
    for caller in callers {
        let (latencies, errors, not_created, first_error) = caller.await.unwrap();
        result.latencies.extend(latencies);
        result.errors += errors;
        result.not_created += not_created;
        if result.first_error.is_none() {
            result.first_error = first_error;
        }
    }
    result.seconds = started.elapsed().as_secs_f64();
    progress.abort();
    result.orders = result.latencies.len() as u64;
    result.latencies.sort();
    result
}

/// Jobs PENDING, IN_PROGRESS, and outbox rows unpublished: cheap counts over the partial indexes.
async fn open_work(probe: &PgPool) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM fulfillment.fulfillments WHERE state = 'PENDING'),
                (SELECT count(*) FROM fulfillment.fulfillments WHERE state = 'IN_PROGRESS'),
                (SELECT count(*) FROM fulfillment.outbox WHERE published_at IS NULL)",
    )
    .fetch_one(probe)
    .await
    .unwrap()
}

struct Drained {
    jobs: i64,
    drained: Option<f64>,
    unpublished_at_drain: i64,
    relay_done: Option<f64>,
    in_flight_average: f64,
    /// When the workers started (database clock), to pick this run's transitions.
    started_at: chrono::DateTime<chrono::Utc>,
}

async fn drain(args: &Args, fulfillment: &Arc<Fulfillment>, probe: &PgPool, stub: &Stub) -> Drained {
    let (pending, in_progress, _) = open_work(probe).await;
    let jobs = pending + in_progress;
    let started_at = chrono::Utc::now();
    let stop = Shutdown::new();
    let started = Instant::now();
    let background = {
        let (fulfillment, stop) = (Arc::clone(fulfillment), stop.clone());
        tokio::spawn(async move { fulfillment.run_background(stop).await })
    };
    let mut result =
        Drained { jobs, drained: None, unpublished_at_drain: 0, relay_done: None, in_flight_average: 0.0, started_at };
    let (mut samples, mut in_flight_sum) = (0u64, 0u64);
    let mut last_report = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while started.elapsed() < args.drain_timeout {
        tick.tick().await;
        let (pending, in_progress, unpublished) = open_work(probe).await;
        let elapsed = started.elapsed().as_secs_f64();
        if result.drained.is_none() {
            samples += 1;
            in_flight_sum += stub.in_flight.load(Ordering::Relaxed);
            if pending + in_progress == 0 {
                result.drained = Some(elapsed);
                result.unpublished_at_drain = unpublished;
            }
        }
        if result.drained.is_some() && unpublished == 0 {
            result.relay_done = Some(elapsed);
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            let done = jobs - pending - in_progress;
            eprintln!(
                "drain: {done}/{jobs} jobs done, {:.0} jobs/s; {in_progress} in progress; {unpublished} outbox rows unpublished; \
                 {} LMS calls in flight",
                done as f64 / elapsed,
                stub.in_flight.load(Ordering::Relaxed)
            );
        }
    }
    result.in_flight_average = in_flight_sum as f64 / samples.max(1) as f64;
    stop.cancel();
    if tokio::time::timeout(Duration::from_secs(30), background).await.is_err() {
        eprintln!("drain: the workers did not stop within 30 s of shutdown");
    }
    result
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let _telemetry = kit::telemetry::init(&kit::telemetry::TelemetryConfig {
        log_filter: "warn".into(),
        log_format: kit::telemetry::LogFormat::Text,
        ..Default::default()
    })
    .unwrap();

    // The database, fresh unless reused.
    let admin = PgPoolOptions::new().max_connections(2).connect(&args.database_url).await.expect("Postgres reachable");
    if !args.skip_accept {
        kit::bench::recreate_database(&admin, DATABASE).await.expect("bench database recreated");
    }
    let db_config = DatabaseConfig {
        url: with_database(&args.database_url, DATABASE, SERVICE_APP),
        schema: Some(fulfillment::NAME.into()),
        max_connections: args.db_connections,
        ping_after_idle: if args.ping_every_checkout {
            Duration::ZERO
        } else {
            DatabaseConfig::default().ping_after_idle
        },
        ..DatabaseConfig::default()
    };
    kit::db::migrate(&db_config, &fulfillment::MIGRATIONS).await.expect("migrate");
    let database = Database::open(&db_config).expect("open");
    let probe = PgPoolOptions::new()
        .max_connections(1)
        .connect(&with_database(&args.database_url, DATABASE, HARNESS_APP))
        .await
        .unwrap();

    // The service, assembled as tests/service.rs does, with the stub LMS behind it.
    let dir = tempfile::tempdir().unwrap();
    let bus = kit::bus::open(Some(&args.redis), &dir.path().join("events.db")).expect("bus");
    let (stub, lms_url) = start_stub(args.lms_latency).await;
    let config = Config {
        lms: LmsConfig {
            url: lms_url,
            client_id: "fulfillment-bench".into(),
            client_secret: "bench".into(),
            ..LmsConfig::default()
        },
        workers: WorkerConfig { concurrency: args.concurrency, ..WorkerConfig::default() },
        ..Config::default()
    };
    // Orders name the LMS user directly: CustomerIdentity is never called.
    let identity = CustomerIdentityServiceClient::new(kit::client::channel("http://127.0.0.1:9").unwrap());
    let fulfillment = Arc::new(
        Fulfillment::new(&database, Arc::clone(&bus), identity, &config, &kit::metrics::Metrics::new())
            .expect("fulfillment"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = Shutdown::new();
    tokio::spawn(GrpcServer::new("fulfillment-bench").service(fulfillment.service()).run(
        listener,
        async { Ok::<(), std::io::Error>(()) },
        shutdown.clone(),
    ));
    let client = FulfillmentServiceClient::new(kit::client::channel(&url).unwrap());

    // The machine.
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(str::trim)
                .map(str::to_string)
        })
        .unwrap_or_default();
    let ram_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok()))
        .map_or(0, |kib| kib / 1024 / 1024);
    let mut report = String::new();
    let _ = writeln!(
        report,
        "Machine: {cores} cores ({cpu_model}), {ram_gib} GiB RAM; PostgreSQL {} (fsync {}, synchronous_commit {}, \
         wal_sync_method {}, shared_buffers {}) and Redis {}, both local. Service pool: {} Postgres connections.\n",
        setting(&admin, "server_version").await,
        setting(&admin, "fsync").await,
        setting(&admin, "synchronous_commit").await,
        setting(&admin, "wal_sync_method").await,
        setting(&admin, "shared_buffers").await,
        redis_version(&args.redis).await,
        args.db_connections,
    );
    let _ = writeln!(
        report,
        "Run: `--orders {} --lines-per-order {} --clients {} --concurrency {} --lms-latency {:?} --db-connections {}`{}{}{}{}\n",
        args.orders,
        args.lines_per_order,
        args.clients,
        args.concurrency,
        args.lms_latency,
        args.db_connections,
        if args.skip_accept { " --skip-accept" } else { "" },
        if args.skip_drain { " --skip-drain" } else { "" },
        args.rate.map_or_else(String::new, |rate| format!(" --rate {rate}")),
        if args.ping_every_checkout { " --ping-every-checkout" } else { "" },
    );

    if !args.skip_accept {
        let sampler = Sampler::start(&admin);
        let a = accept(&args, client.clone()).await;
        let observed = sampler.finish().await;
        let stored: i64 =
            sqlx::query_scalar("SELECT count(*) FROM fulfillment.fulfillments").fetch_one(&probe).await.unwrap();
        let lines = a.orders * u64::from(args.lines_per_order);
        let _ = writeln!(
            report,
            "#### Accepting: FulfillOrder, workers stopped\n\n\
             | orders | line items | clients | failed calls | time | orders/s | line items/s | p50 | p90 | p99 | max |\n\
             |---|---|---|---|---|---|---|---|---|---|---|\n\
             | {} | {} | {} | {} | {:.1} s | {} | **{}** | {} | {} | **{}** | {} |\n",
            thousands(a.orders as f64),
            thousands(lines as f64),
            args.rate.map_or_else(|| args.clients.to_string(), |rate| format!("open loop at {rate} items/s")),
            a.errors,
            a.seconds,
            thousands(a.orders as f64 / a.seconds),
            thousands(lines as f64 / a.seconds),
            ms(percentile(&a.latencies, 0.50)),
            ms(percentile(&a.latencies, 0.90)),
            ms(percentile(&a.latencies, 0.99)),
            ms(a.latencies.last().copied().unwrap_or_default()),
        );
        let _ = writeln!(report, "Jobs stored: {stored}; answers with created=false: {}.", a.not_created);
        if let Some(error) = &a.first_error {
            let _ = writeln!(report, "First failed call: {error}.");
        }
        if !a.send_lags.is_empty() {
            let _ = writeln!(
                report,
                "Sends behind their schedule (counted in the latency): p50 {}, p99 {}, max {}.",
                ms(percentile(&a.send_lags, 0.5)),
                ms(percentile(&a.send_lags, 0.99)),
                ms(a.send_lags.last().copied().unwrap_or_default()),
            );
        }
        if a.errors > 0 {
            let _ = writeln!(report, "**{} calls failed and are not in the percentiles.**", a.errors);
        }
        let _ = writeln!(report, "\n{observed}");
    }

    if !args.skip_drain {
        stub.reset();
        let sampler = Sampler::start(&admin);
        let d = drain(&args, &fulfillment, &probe, &stub).await;
        let observed = sampler.finish().await;
        let stats = fulfillment.store().stats(chrono::Utc::now()).await.unwrap();
        let outbox = fulfillment.store().backlog().await.unwrap();
        let by_state: Vec<String> = stats.by_state.iter().map(|(state, n)| format!("{} {n}", state.as_str())).collect();
        let (retried, succeeded_transitions, outbox_rows): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM fulfillment.fulfillments WHERE attempts > 1),
                    (SELECT count(*) FROM fulfillment.fulfillment_transitions WHERE to_state = 'SUCCEEDED'),
                    (SELECT count(*) FROM fulfillment.outbox)",
        )
        .fetch_one(&probe)
        .await
        .unwrap();
        // A claim stamps every job it takes with the same `at`: so many claims, so many jobs each.
        // Claim to outcome is the LMS call as the worker sees it (the outcome's time is taken after the answer).
        let (claims, claimed, to_outcome_p50, to_outcome_p99): (i64, i64, f64, f64) = sqlx::query_as(
            "WITH c AS (SELECT fulfillment_id, lease_token, at FROM fulfillment.fulfillment_transitions
                        WHERE to_state = 'IN_PROGRESS' AND at >= $1),
                  s AS (SELECT fulfillment_id, lease_token, at FROM fulfillment.fulfillment_transitions
                        WHERE from_state = 'IN_PROGRESS' AND at >= $1)
             SELECT (SELECT count(DISTINCT at) FROM c), (SELECT count(*) FROM c),
                    coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM s.at - c.at)), 0)::float8,
                    coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM s.at - c.at)), 0)::float8
             FROM c JOIN s USING (fulfillment_id, lease_token)",
        )
        .bind(d.started_at)
        .fetch_one(&probe)
        .await
        .unwrap();
        // How the claims were sized: many single-job claims and a few that take a wave of jobs at
        // once mean the attempts move in lockstep (they finish, and are replaced, together).
        let (single_claims, wave_jobs): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE n = 1), coalesce(sum(n) FILTER (WHERE n >= $2), 0)::int8
             FROM (SELECT count(*) AS n FROM fulfillment.fulfillment_transitions
                   WHERE to_state = 'IN_PROGRESS' AND at >= $1 GROUP BY at) claims",
        )
        .bind(d.started_at)
        .bind(i64::try_from(args.concurrency.div_ceil(2)).unwrap_or(i64::MAX))
        .fetch_one(&probe)
        .await
        .unwrap();
        let calls = stub.calls.load(Ordering::Relaxed);
        let (unique, repeated_keys) = {
            let keys = stub.keys.lock().unwrap();
            (keys.len() as u64, keys.values().filter(|&&n| n > 1).count())
        };
        let latency = args.lms_latency.as_secs_f64();
        let ceiling = if latency > 0.0 { args.concurrency as f64 / latency } else { f64::INFINITY };
        let drained = d.drained.map_or("not drained".to_string(), |s| format!("{s:.1} s"));
        let rate = d.drained.map_or(0.0, |s| d.jobs as f64 / s);
        let _ = writeln!(
            report,
            "#### Draining: workers against a stub LMS answering in {} ms\n\n\
             | jobs | concurrency | time | jobs/s | ceiling (concurrency / latency) | LMS calls in flight (avg / max) | enrollment calls | unique enrollments | duplicates | jobs attempted more than once |\n\
             |---|---|---|---|---|---|---|---|---|---|\n\
             | {} | {} | {drained} | **{}** | {} | {:.1} / {} | {} | {} | **{}** | {} |\n",
            args.lms_latency.as_millis(),
            thousands(d.jobs as f64),
            args.concurrency,
            thousands(rate),
            thousands(ceiling),
            d.in_flight_average,
            stub.max_in_flight.load(Ordering::Relaxed),
            thousands(calls as f64),
            thousands(unique as f64),
            calls - unique,
            retried,
        );
        let _ = writeln!(
            report,
            "Jobs by state at the end: {}; SUCCEEDED transitions: {succeeded_transitions}; keys enrolled more than once: \
             {repeated_keys}; access tokens fetched: {}.\n",
            by_state.join(", "),
            stub.tokens.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            report,
            "Claims: {claims} claim statements took {claimed} jobs ({:.2} jobs a claim, {} claims/s); {single_claims} \
             claims took a single job, and claims of at least half the concurrency took {:.0} % of the jobs; from \
             claim to outcome (the LMS call as the worker sees it) p50 {:.1} ms, p99 {:.1} ms.\n",
            claimed as f64 / claims.max(1) as f64,
            thousands(claims as f64 / d.drained.unwrap_or(f64::INFINITY)),
            wave_jobs as f64 / claimed.max(1) as f64 * 100.0,
            to_outcome_p50 * 1e3,
            to_outcome_p99 * 1e3,
        );
        match (d.drained, d.relay_done) {
            (Some(drained), Some(done)) => {
                let backlog = if done > drained + 0.5 {
                    format!(
                        "; the {} rows left when the last job succeeded took {:.1} s more ({} events/s)",
                        d.unpublished_at_drain,
                        done - drained,
                        thousands(d.unpublished_at_drain as f64 / (done - drained))
                    )
                } else {
                    String::new()
                };
                let _ = writeln!(
                    report,
                    "Outbox relay: {outbox_rows} events, all published {done:.1} s after the workers started \
                     ({} events/s overall){backlog}; unpublished at the end: {}.\n",
                    thousands(outbox_rows as f64 / done),
                    outbox.unpublished,
                );
            }
            _ => {
                let _ = writeln!(report, "Outbox relay: {} rows still unpublished at the end.\n", outbox.unpublished);
            }
        }
        let _ = writeln!(report, "{observed}");
    }

    println!("\n---- summary (Markdown, for docs/BENCHMARKS.md) ----\n\n{report}");
    shutdown.cancel();
}
