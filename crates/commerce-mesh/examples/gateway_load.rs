//! Load harness for the REST gateway (issue 7): the same RPC, CustomerIdentity
//! `GetCustomer`, over REST through the gateway and over gRPC directly to the
//! same server, in one run. Prints the figures as Markdown for docs/BENCHMARKS.md.
//!
//! ```sh
//! cargo run --release -p commerce-mesh --example gateway_load -- --clients 64 --seconds 10
//! ```
//!
//! The whole mesh runs in this process (`commerce_mesh::start`, every port
//! 127.0.0.1:0) on embedded storage in a temporary directory (SQLite and the
//! in-process cache), or on `--postgres` (database `gateway_bench`, recreated)
//! and `--redis`. The mesh has a tokio runtime of its own (threads `mesh`, one
//! worker per core), the load generator another (this thread alone by
//! default, `--load-threads`), so the CPU each uses can be told apart (from
//! /proc, by thread); they share the machine's cores.
//!
//! One customer is seeded with `UpsertCustomer`; then every request reads it:
//! `GET /v1/customers/{id}` with a development token (HTTP/1.1 keep-alive,
//! pooled connections) or `GetCustomer` on gRPC channels to CustomerIdentity
//! (HTTP/2, multiplexed). It is a cached read, so the service is cheap and the
//! gateway's own cost shows.
//!
//! 1. **Peak**: closed loop, `--clients` concurrent callers for `--seconds`
//!    (after `--warmup` seconds not counted), gRPC then REST. Requests/s and
//!    the ratio REST / gRPC.
//! 2. **Half of peak**: open loop at `--rate` (default half the REST peak) for
//!    `--seconds`, gRPC then REST at the same rate, over at most `--clients`
//!    requests in flight (as many keep-alive connections for REST). Each
//!    request is due at its scheduled time whatever the earlier ones are
//!    doing, and its latency runs from that scheduled time, waiting for a free
//!    connection included (no coordinated omission). The p99 the gateway adds
//!    is the REST p99 minus the gRPC p99.
//!
//! Every error is counted (a REST answer other than 200 is one) and the first
//! few are printed.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a harness, not a service: fail loudly

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use commerce_mesh::{Component, MeshConfig, RunningMesh};
use kit::auth::Secret;
use kit::bench::{CpuSnapshot, cpu_snapshot, ms, percentile, thousands};
use kit::client::TracedChannel;
use kit::shutdown::Shutdown;
use proto::commerce::identity::v1 as pb;
use proto::commerce::identity::v1::customer_identity_service_client::CustomerIdentityServiceClient;

#[derive(Parser, Debug)]
#[command(about = "Gateway load harness: GetCustomer over REST through the gateway vs gRPC directly")]
struct Args {
    /// Concurrent callers in the peak phase.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds each measured phase runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of warm-up before each peak phase, not counted.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Requests/s of the open-loop phase; default: half the REST peak.
    #[arg(long)]
    rate: Option<f64>,
    /// gRPC channels (HTTP/2 connections) the direct calls spread over.
    #[arg(long, default_value_t = 1)]
    grpc_channels: usize,
    /// Worker threads of the mesh's runtime; default: one per core.
    #[arg(long)]
    mesh_threads: Option<usize>,
    /// Threads of the load generator: 1 runs it all on one thread (the
    /// cheapest per request, leaving the most CPU to the mesh); more, a
    /// multi-thread runtime with that many workers.
    #[arg(long, default_value_t = 1)]
    load_threads: usize,
    /// A Postgres server (admin connection): the mesh's services get schemas
    /// in the database `gateway_bench` there, recreated. Unset: SQLite.
    #[arg(long)]
    postgres: Option<String>,
    /// Redis for caches and the event bus. Unset: in-process.
    #[arg(long)]
    redis: Option<String>,
    /// The log filter of the whole process (`info` also turns on the gateway's
    /// per-request spans).
    #[arg(long, default_value = "warn")]
    log_filter: String,
}

const DATABASE: &str = "gateway_bench";
/// Thread names: the load generator's start with this, the mesh's do not.
const LOAD_THREADS: &str = "load";
/// The open loop's pacer sleeps at least this long: requests due meanwhile
/// go out together when it wakes (their latency still counts from their own
/// scheduled time).
const PACER_TICK: Duration = Duration::from_micros(200);
/// Errors printed in full; the rest are only counted.
const ERRORS_SHOWN: usize = 5;

// ---------------------------------------------------------------- the two paths

/// How a request reaches CustomerIdentity: REST through the gateway, or gRPC straight to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Grpc,
    Rest,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Grpc => "gRPC direct",
            Via::Rest => "REST via gateway",
        }
    }
}

/// Everything a request needs, shared by every caller.
struct Target {
    grpc: Vec<CustomerIdentityServiceClient<TracedChannel>>,
    rest: reqwest::Client,
    rest_url: String,
    authorization: String,
    customer_id: String,
    /// The first errors, in full.
    errors: Mutex<Vec<String>>,
}

impl Target {
    /// One `GetCustomer`; the `n`th request picks gRPC channel `n mod channels`.
    async fn call(&self, via: Via, n: usize) -> bool {
        let outcome = match via {
            Via::Grpc => {
                let mut client = self.grpc[n % self.grpc.len()].clone();
                let request = pb::GetCustomerRequest { customer_id: self.customer_id.clone() };
                match client.get_customer(request).await {
                    Ok(_) => Ok(()),
                    Err(status) => Err(format!("gRPC {:?}: {}", status.code(), status.message())),
                }
            }
            Via::Rest => {
                let sent = self.rest.get(&self.rest_url).header("authorization", &self.authorization).send().await;
                match sent {
                    Ok(response) => {
                        let status = response.status();
                        match response.bytes().await {
                            Ok(_) if status == reqwest::StatusCode::OK => Ok(()),
                            Ok(body) => Err(format!("REST {status}: {}", String::from_utf8_lossy(&body))),
                            Err(error) => Err(format!("REST {status}, body unread: {error}")),
                        }
                    }
                    Err(error) => Err(format!("REST: {error}")),
                }
            }
        };
        match outcome {
            Ok(()) => true,
            Err(error) => {
                let mut errors = self.errors.lock().unwrap();
                if errors.len() < ERRORS_SHOWN {
                    errors.push(error);
                }
                false
            }
        }
    }
}

// ---------------------------------------------------------------- CPU

/// CPU ticks (USER_HZ, 100 a second) of this process's threads, split into the
/// load generator's and the mesh's.
#[derive(Clone, Copy, Default)]
struct ThreadTicks {
    load: u64,
    mesh: u64,
}

fn thread_ticks() -> ThreadTicks {
    let me = std::process::id();
    let mut ticks = ThreadTicks::default();
    for entry in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let comm = &stat[open + 1..close];
        // After the comm: utime and stime are the 12th and 13th fields.
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let used = rest.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + rest.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // The main thread runs the load generator (with one load thread) or only drives the harness.
        if tid == me || comm.starts_with(LOAD_THREADS) {
            ticks.load += used;
        } else {
            ticks.mesh += used;
        }
    }
    ticks
}

/// Who used the CPU between [`CpuWindow::open`] and [`CpuWindow::close`].
struct CpuWindow {
    machine: CpuSnapshot,
    threads: ThreadTicks,
}

/// CPU use over one phase, in cores (1.0 = one core busy the whole time).
struct CpuUse {
    seconds: f64,
    machine_busy: f64,
    load: f64,
    mesh: f64,
    /// Postgres and Redis, when they run on this machine.
    others: Vec<(&'static str, f64)>,
}

impl CpuWindow {
    fn open() -> Self {
        Self { machine: cpu_snapshot("harness"), threads: thread_ticks() }
    }

    fn close(self) -> CpuUse {
        let end = cpu_snapshot("harness");
        let threads = thread_ticks();
        let seconds = end.at.duration_since(self.machine.at).as_secs_f64().max(1e-9);
        let cores = |ticks: u64| ticks as f64 / 100.0 / seconds;
        let total = (end.total - self.machine.total).max(1) as f64;
        let mut others = Vec::new();
        for who in ["Postgres", "Redis"] {
            let used: u64 = end
                .by_pid
                .iter()
                .filter(|(_, (name, _))| *name == who)
                .map(|(pid, (_, ticks))| ticks.saturating_sub(self.machine.by_pid.get(pid).map_or(0, |(_, t)| *t)))
                .sum();
            // Shown only when they did something measurable.
            if cores(used) >= 0.01 {
                others.push((who, cores(used)));
            }
        }
        CpuUse {
            seconds,
            machine_busy: (end.busy - self.machine.busy) as f64 / total,
            load: cores(threads.load.saturating_sub(self.threads.load)),
            mesh: cores(threads.mesh.saturating_sub(self.threads.mesh)),
            others,
        }
    }
}

impl CpuUse {
    /// `machine 98 % busy; load generator 0.81 cores, mesh 1.12 cores, else 0.03 cores`.
    fn summary(&self) -> String {
        let mut text = format!(
            "machine {:.0} % busy; load generator {:.2} cores, mesh {:.2} cores",
            self.machine_busy * 100.0,
            self.load,
            self.mesh
        );
        let mut listed = self.load + self.mesh;
        for (who, cores) in &self.others {
            let _ = write!(text, ", {who} {cores:.2} cores");
            listed += cores;
        }
        // Anything else on the machine competes with the figures: show it.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let _ = write!(text, ", else {:.2} cores", (self.machine_busy * cores - listed).max(0.0));
        text
    }

    /// CPU time per request, in µs, of the load generator and of the mesh.
    fn per_request(&self, requests: usize) -> (f64, f64) {
        let per = |cores: f64| cores * self.seconds / requests.max(1) as f64 * 1e6;
        (per(self.load), per(self.mesh))
    }
}

// ---------------------------------------------------------------- phases

/// What a closed-loop phase measured.
struct Peak {
    via: Via,
    ok: usize,
    errors: usize,
    per_second: f64,
    latencies: Vec<Duration>,
    cpu: CpuUse,
}

/// `clients` callers, each sending its next request as soon as the last one is
/// answered, for `duration`; only answers within the window count.
async fn closed_loop(target: &Arc<Target>, via: Via, clients: usize, duration: Duration) -> Peak {
    let cpu = CpuWindow::open();
    let start = Instant::now();
    let end = start + duration;
    let callers: Vec<_> = (0..clients)
        .map(|client| {
            let target = target.clone();
            tokio::spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), 0usize);
                for n in (client..).step_by(clients) {
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    let ok = target.call(via, n).await;
                    let answered = Instant::now();
                    if answered > end {
                        break;
                    }
                    if ok {
                        latencies.push(answered - sent);
                    } else {
                        errors += 1;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for caller in callers {
        let (mine, failed) = caller.await.unwrap();
        latencies.extend(mine);
        errors += failed;
    }
    let cpu = cpu.close();
    latencies.sort_unstable();
    let ok = latencies.len();
    Peak { via, ok, errors, per_second: ok as f64 / duration.as_secs_f64(), latencies, cpu }
}

/// What an open-loop phase measured.
struct Paced {
    via: Via,
    sent: usize,
    errors: usize,
    achieved: f64,
    /// From each request's scheduled send time to its answer, sorted.
    latencies: Vec<Duration>,
    /// From each request's scheduled send time to when its task started sending, sorted.
    lags: Vec<Duration>,
    cpu: CpuUse,
}

/// `rate` requests a second for `duration`, each at its scheduled time,
/// whatever the earlier ones are doing, over at most `connections` requests
/// in flight (as many clients with a connection each): a request finding them
/// all busy waits, and that wait counts in its latency.
async fn open_loop(target: &Arc<Target>, via: Via, rate: f64, duration: Duration, connections: usize) -> Paced {
    let total = (rate * duration.as_secs_f64()).round() as usize;
    let runtime = tokio::runtime::Handle::current();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(connections.max(1)));
    let cpu = CpuWindow::open();
    let start = Instant::now();
    // An OS thread keeps the schedule: its sleeps are precise to tens of µs
    // where tokio's timer rounds to the millisecond.
    let pacer = {
        let target = target.clone();
        tokio::task::spawn_blocking(move || {
            let mut requests = Vec::with_capacity(total);
            for n in 0..total {
                let due = start + Duration::from_secs_f64(n as f64 / rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    // Never shorter than PACER_TICK: what falls due meanwhile
                    // goes out together, for fewer wake-ups of the pacer and
                    // the load generator.
                    std::thread::sleep(wait.max(PACER_TICK));
                }
                let (target, in_flight) = (target.clone(), in_flight.clone());
                requests.push(runtime.spawn(async move {
                    let _connection = in_flight.acquire_owned().await;
                    let lag = due.elapsed();
                    let ok = target.call(via, n).await;
                    (due.elapsed(), lag, ok)
                }));
            }
            requests
        })
    };
    let requests = pacer.await.unwrap();
    let (mut latencies, mut lags, mut errors) = (Vec::with_capacity(total), Vec::with_capacity(total), 0);
    for request in requests {
        let (latency, lag, ok) = request.await.unwrap();
        latencies.push(latency);
        lags.push(lag);
        errors += usize::from(!ok);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu.close();
    latencies.sort_unstable();
    lags.sort_unstable();
    Paced { via, sent: total, errors, achieved: total as f64 / elapsed, latencies, lags, cpu }
}

// ---------------------------------------------------------------- set-up

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok()))
        .map_or(0, |kib| kib / 1024 / 1024);
    format!(
        "{} cores ({model}), {memory_gib} GiB RAM",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    )
}

/// The mesh's configuration: free ports, a development secret, storage as asked.
async fn mesh_config(args: &Args, data_dir: &std::path::Path) -> MeshConfig {
    let mut config = MeshConfig { data_dir: data_dir.to_path_buf(), ..MeshConfig::default() };
    config.use_ephemeral_ports();
    config.telemetry.log_filter = args.log_filter.clone();
    config.auth.development_secret =
        Some(Secret::new(format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())));
    if let Some(admin_url) = &args.postgres {
        let admin = sqlx::PgPool::connect(admin_url).await.expect("Postgres reachable");
        kit::bench::recreate_database(&admin, DATABASE).await.expect("bench database recreated");
        config.database_url = Some(kit::bench::with_database(admin_url, DATABASE, "gateway-bench"));
    }
    if let Some(redis) = &args.redis {
        config.redis_url = Some(redis.clone());
        // The run's own keys, whatever earlier runs left in this Redis.
        config.customer_identity.settings.cache.namespace = format!("gateway-bench-{}", uuid::Uuid::new_v4().simple());
    }
    config
}

/// Waits until the gateway's `/readyz` answers 200: every service migrated and SERVING.
async fn wait_until_ready(http: &reqwest::Client, gateway: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(answer) = http.get(format!("{gateway}/readyz")).send().await
            && answer.status() == reqwest::StatusCode::OK
        {
            return;
        }
        assert!(Instant::now() < deadline, "the mesh was not ready within 60 s");
        // Nothing to wait on from outside the mesh but its answer: poll.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn storage(args: &Args) -> String {
    let database = match &args.postgres {
        Some(_) => format!("Postgres (database `{DATABASE}`, on this machine)"),
        None => "SQLite in a temporary directory".to_string(),
    };
    let cache = match &args.redis {
        Some(_) => "Redis on this machine",
        None => "the in-process cache",
    };
    format!("{database}, {cache}")
}

// ---------------------------------------------------------------- the run

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
        "gateway-bench",
        vec!["identity:read".into(), "identity:write".into()],
        Duration::from_secs(3600),
    )
    .unwrap();
    // The mesh's tasks live on its own runtime.
    let shutdown = Shutdown::new();
    let mesh: RunningMesh = mesh_runtime.spawn(commerce_mesh::start(config, shutdown)).await.unwrap().unwrap();
    let gateway_url = mesh.url(Component::Gateway);

    let rest =
        reqwest::Client::builder().no_proxy().http1_only().pool_max_idle_per_host(args.clients.max(1)).build().unwrap();
    wait_until_ready(&rest, &gateway_url).await;
    let grpc: Vec<_> = (0..args.grpc_channels.max(1))
        .map(|_| CustomerIdentityServiceClient::new(mesh.grpc_channel(Component::CustomerIdentity)))
        .collect();

    let customer_id = uuid::Uuid::new_v4().to_string();
    let seeded = grpc[0]
        .clone()
        .upsert_customer(pb::UpsertCustomerRequest {
            customer_id: customer_id.clone(),
            lms_user_id: "1".into(),
            lms_username: "bench_learner".into(),
            email: "bench_learner@example.org".into(),
            expected_version: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(seeded.created, "a fresh database creates the customer");

    let authorization = format!("Bearer {token}");
    let rest_url = format!("{gateway_url}/v1/customers/{customer_id}");
    let target = Arc::new(Target {
        grpc,
        rest: rest.clone(),
        rest_url: rest_url.clone(),
        authorization: authorization.clone(),
        customer_id: customer_id.clone(),
        errors: Mutex::new(Vec::new()),
    });

    // Both paths answer the same customer before anything is timed.
    let direct = target.grpc[0]
        .clone()
        .get_customer(pb::GetCustomerRequest { customer_id: customer_id.clone() })
        .await
        .unwrap()
        .into_inner();
    let answer = rest.get(&rest_url).header("authorization", &authorization).send().await.unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::OK);
    let body = answer.bytes().await.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["customer"]["customer_id"], customer_id.as_str());
    assert_eq!(direct.customer.as_ref().map(|c| c.customer_id.as_str()), Some(customer_id.as_str()));

    let mut report = String::new();
    let _ = writeln!(report, "Machine: {}. Storage: {}.\n", machine(), storage(&args));
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let _ = writeln!(
        report,
        "Run: `gateway_load {}`: {} clients, {} s a phase, {} gRPC channel(s); worker threads: mesh {}, \
         load generator {}; log filter `{}`. The answer: {} bytes of JSON, {} bytes of protobuf.\n",
        raw.join(" "),
        args.clients,
        args.seconds,
        target.grpc.len(),
        args.mesh_threads.map_or("one per core".to_string(), |n| n.to_string()),
        args.load_threads,
        args.log_filter,
        body.len(),
        prost::Message::encoded_len(&direct),
    );
    let at_rest = CpuWindow::open();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = at_rest.close();
    let _ = writeln!(report, "At rest (2 s, before the load): {}.\n", idle.summary());

    // ---- peak
    let duration = Duration::from_secs(args.seconds);
    let mut peaks = Vec::new();
    for via in [Via::Grpc, Via::Rest] {
        eprintln!("peak, {}: warm-up {} s, then {} s", via.name(), args.warmup, args.seconds);
        let _ = closed_loop(&target, via, args.clients, Duration::from_secs(args.warmup)).await;
        peaks.push(closed_loop(&target, via, args.clients, duration).await);
    }
    let _ = writeln!(
        report,
        "### Peak: closed loop, {} clients, {} s each\n\n\
         | path | answered | errors | requests/s | p50 | p99 | CPU | CPU µs per request (load generator / mesh) |\n\
         |---|---|---|---|---|---|---|---|",
        args.clients, args.seconds
    );
    for peak in &peaks {
        let (load_us, mesh_us) = peak.cpu.per_request(peak.ok);
        let _ = writeln!(
            report,
            "| {} | {} | {} | **{}** | {} | {} | {} | {load_us:.0} / {mesh_us:.0} |",
            peak.via.name(),
            thousands(peak.ok as f64),
            peak.errors,
            thousands(peak.per_second),
            ms(percentile(&peak.latencies, 0.50)),
            ms(percentile(&peak.latencies, 0.99)),
            peak.cpu.summary(),
        );
    }
    let (grpc_peak, rest_peak) = (peaks[0].per_second, peaks[1].per_second);
    let ratio = rest_peak / grpc_peak.max(1e-9);
    let _ = writeln!(
        report,
        "\nThroughput ratio REST / gRPC: **{ratio:.2}** (target ≥ 0.6: {}).\n",
        if ratio >= 0.6 { "MET" } else { "MISSED" }
    );

    // ---- half of peak
    let rate = args.rate.unwrap_or(rest_peak / 2.0).max(1.0);
    let mut paced = Vec::new();
    for via in [Via::Grpc, Via::Rest] {
        eprintln!("open loop, {}: {rate:.0}/s for {} s", via.name(), args.seconds);
        paced.push(open_loop(&target, via, rate, duration, args.clients).await);
    }
    let _ = writeln!(
        report,
        "### Latency at {} requests/s, {} (open loop, {} s each; from each request's scheduled send time)\n\n\
         | path | sent | errors | achieved /s | p50 | p90 | p99 | max | send lag p99 | CPU | CPU µs per request (load generator / mesh) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|",
        thousands(rate),
        if args.rate.is_some() { "as asked" } else { "half the REST peak" },
        args.seconds
    );
    for phase in &paced {
        let (load_us, mesh_us) = phase.cpu.per_request(phase.sent);
        let _ = writeln!(
            report,
            "| {} | {} | {} | {} | {} | {} | **{}** | {} | {} | {} | {load_us:.0} / {mesh_us:.0} |",
            phase.via.name(),
            thousands(phase.sent as f64),
            phase.errors,
            thousands(phase.achieved),
            ms(percentile(&phase.latencies, 0.50)),
            ms(percentile(&phase.latencies, 0.90)),
            ms(percentile(&phase.latencies, 0.99)),
            ms(phase.latencies.last().copied().unwrap_or_default()),
            ms(percentile(&phase.lags, 0.99)),
            phase.cpu.summary(),
        );
    }
    let p99 = |phase: &Paced| percentile(&phase.latencies, 0.99).as_secs_f64() * 1e3;
    let p50 = |phase: &Paced| percentile(&phase.latencies, 0.50).as_secs_f64() * 1e3;
    let added_p99 = p99(&paced[1]) - p99(&paced[0]);
    let _ = writeln!(
        report,
        "\nAdded by the gateway at {} requests/s: p50 {:+.2} ms, **p99 {added_p99:+.2} ms** (target ≤ 1 ms: {}).\n",
        thousands(rate),
        p50(&paced[1]) - p50(&paced[0]),
        if added_p99 <= 1.0 { "MET" } else { "MISSED" }
    );

    let errors: usize = peaks.iter().map(|p| p.errors).sum::<usize>() + paced.iter().map(|p| p.errors).sum::<usize>();
    let _ = writeln!(report, "Errors over all measured phases: {errors}.");
    for error in target.errors.lock().unwrap().iter() {
        let _ = writeln!(report, "- {error}");
    }
    println!("{report}");

    mesh_runtime.spawn(mesh.stop()).await.unwrap().unwrap();
}

fn main() {
    let args = Args::parse();
    let mut mesh = tokio::runtime::Builder::new_multi_thread();
    mesh.thread_name("mesh").enable_all();
    if let Some(threads) = args.mesh_threads {
        mesh.worker_threads(threads.max(1));
    }
    // One load thread: this one, with no other worker to wake.
    let mut load = if args.load_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut multi = tokio::runtime::Builder::new_multi_thread();
        multi.worker_threads(args.load_threads);
        multi
    };
    load.thread_name(LOAD_THREADS).enable_all();
    let (mesh, load) = (mesh.build().unwrap(), load.build().unwrap());
    load.block_on(run(args, mesh.handle().clone()));
    // The load runtime first: its connections close before the mesh goes.
    drop(load);
    mesh.shutdown_timeout(Duration::from_secs(5));
}
