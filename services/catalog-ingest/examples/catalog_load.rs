//! Load harness for CatalogIngest (issue #5): how many `product.upserted`
//! events a second the service ingests on Postgres, and how exactly the
//! per-source quota admits an offered overload. Prints the figures as Markdown
//! for docs/BENCHMARKS.md.
//!
//! ```sh
//! cargo run --release -p catalog-ingest --example catalog_load -- --mode ingest --events 20000 --clients 32
//! cargo run --release -p catalog-ingest --example catalog_load -- --mode throttle --quota 50 --burst 20 --seconds 30
//! ```
//!
//! Everything runs in this process, as `tests/api.rs` assembles it: the
//! CatalogIngest gRPC server on 127.0.0.1:0 over Postgres (database
//! `catalog_bench`, dropped and created again on every run, schema
//! `catalog_ingest`), with the shipped source files read from
//! `config/catalog/sources` and their quota lines rewritten (as the tests'
//! `tighten` does); the callers, over real gRPC (`kit::client::channel`).
//!
//! **Ingest** (`--mode ingest`): every source gets a quota it cannot reach
//! (1,000,000/s, burst 1,000,000), the gate is `--gate` ingestions at once with
//! `--gate-wait` of queueing. The payload is the exec-ed-partner example
//! `product.upserted` made into 2 instructors, 2 runs and 3 seats: the shipped
//! mapping reads exactly one seat per variant, so the harness's copy of the
//! source file reads a `seats` list from each variant instead (the first
//! variant sells a paid seat and an audit seat, the second a paid seat).
//! `--shipped-seats` keeps the shipped mapping and payload (2 seats). One
//! `GetProduct` checks the shape before the clock starts. Then, each with
//! `--events` events sent by `--clients` concurrent callers, unique event ids:
//!
//! 1. **new**: every event creates a product (unique `code`, so a unique product key and run keys);
//! 2. **update**: every event updates one product of phase 1 (title and prices changed, a newer `occurred_at`);
//! 3. **mixed**: even events create products, odd ones update products of phase 1, interleaved.
//!
//! Instructors are unique per product unless `--faculty-pool N`: then every
//! product draws its two faculty ids from N shared ones.
//!
//! **Throttle** (`--mode throttle`): both sources (exec-ed-partner and
//! bootcamp-hub) get `--quota` Q/s with `--burst` B (`--second-quota`,
//! `--second-burst` for bootcamp-hub), and each is offered `--offered` × Q
//! events/s for `--seconds` by a `tokio::time::interval` of its own
//! (`--missed-tick burst|skip`), every tick sending one event on a task of its
//! own, so a slow answer never delays the next send. Both sources at once; the
//! harness counts what each had accepted and refused. `--redis-url` keeps the
//! quotas in Redis (as `serve` does with `MESH_REDIS_URL`); `--replicas N`
//! runs N service instances over the one database, events spread across them
//! round robin, so they share one quota per source through Redis.
//!
//! During each phase the harness samples, every 100 ms, what the service's
//! Postgres connections are doing (`pg_stat_activity`, by `application_name`),
//! and reads the CPU time of this process and of Postgres from /proc, and the
//! WAL written (`pg_current_wal_lsn`).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a harness, not a service: fail loudly

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use catalog_ingest::CatalogIngestApi;
use catalog_ingest::transform::Sources;
use clap::{Parser, ValueEnum};
use kit::bench::{CpuSnapshot, cpu_snapshot, ms, percentile, thousands, with_database};
use kit::client::TracedChannel;
use kit::db::{Database, DatabaseConfig};
use kit::serve::GrpcServer;
use kit::shutdown::Shutdown;
use kit::throttle::{ConcurrencyGate, QuotaMetrics, Quotas, SharedQuotaConfig};
use proto::commerce::catalog::v1 as pb;
use proto::commerce::catalog::v1::catalog_ingest_service_client::CatalogIngestServiceClient;
use proto::commerce::catalog::v1::catalog_ingest_service_server::CatalogIngestServiceServer;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::time::MissedTickBehavior;
use tonic::Code;

type Client = CatalogIngestServiceClient<TracedChannel>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Throughput and latency of product.upserted.
    Ingest,
    /// Accuracy of the per-source quota under an offered overload.
    Throttle,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Phase {
    New,
    Update,
    Mixed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Missed {
    /// Late ticks fire at once until the schedule is caught up: the offered count holds.
    Burst,
    /// Late ticks are dropped: the offered rate falls when the sender lags.
    Skip,
}

#[derive(Parser, Debug)]
#[command(
    about = "CatalogIngest load harness: product.upserted throughput on Postgres, and per-source throttle accuracy"
)]
struct Args {
    /// What to measure.
    #[arg(long, value_enum, default_value = "ingest")]
    mode: Mode,
    /// Postgres server (admin connection); the harness drops and creates the database `catalog_bench` there.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    database_url: String,
    /// The service's Postgres pool size (`database.max_connections`).
    #[arg(long, default_value_t = DatabaseConfig::default().max_connections)]
    db_connections: u32,
    /// Ping every pooled connection as it is taken (`database.ping_after_idle = 0s`, sqlx's
    /// own check) instead of only those idle for a second: the before of that change.
    #[arg(long)]
    ping_every_checkout: bool,
    /// The concurrency gate: ingestions running at once (`max_concurrent_ingests`).
    #[arg(long, default_value_t = 64)]
    gate: usize,
    /// How long an ingestion waits at the gate before it is shed (`max_queue_wait`).
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    gate_wait: Duration,
    /// For experiments only: `name=value` set on `catalog_bench` (`ALTER DATABASE ... SET`) before the
    /// service connects, such as `synchronous_commit=off` or `plan_cache_mode=force_generic_plan`. Repeatable.
    #[arg(long, value_parser = parse_setting)]
    db_setting: Vec<(String, String)>,

    // ---- ingest
    /// Events per phase.
    #[arg(long, default_value_t = 20_000)]
    events: u64,
    /// Concurrent gRPC callers.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// HTTP/2 connections the callers share (caller i uses connection i mod this).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Phases to run, in order; `new` must come first (the others update its products).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "new,update,mixed")]
    phases: Vec<Phase>,
    /// Keep the shipped exec-ed-partner mapping and example: one seat per variant (2 seats, not 3).
    #[arg(long)]
    shipped_seats: bool,
    /// Draw every product's two faculty ids from this many shared ones (0: unique per product).
    #[arg(long, default_value_t = 0)]
    faculty_pool: u64,

    // ---- throttle
    /// Quota of exec-ed-partner (and of bootcamp-hub unless --second-quota), events/s.
    #[arg(long, default_value_t = 50)]
    quota: u32,
    /// Burst of exec-ed-partner (and of bootcamp-hub unless --second-burst).
    #[arg(long, default_value_t = 20)]
    burst: u32,
    /// Quota of bootcamp-hub, events/s.
    #[arg(long)]
    second_quota: Option<u32>,
    /// Burst of bootcamp-hub.
    #[arg(long)]
    second_burst: Option<u32>,
    /// Offered rate per source, as a multiple of its quota.
    #[arg(long, default_value_t = 3.0)]
    offered: f64,
    /// How long each source is offered load.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// What the offering interval does with a tick it could not fire on time.
    #[arg(long, value_enum, default_value = "burst")]
    missed_tick: Missed,
    /// Keep the quotas in this Redis (cluster-wide, as `serve` does with MESH_REDIS_URL); unset: in process.
    #[arg(long)]
    redis_url: Option<String>,
    /// Service instances in this process over the one database, callers spread across them (round robin
    /// per event): with --redis-url they share one quota per source, without it each has its own.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
}

const DATABASE: &str = "catalog_bench";
/// `application_name` of the service's connections, to tell them apart in `pg_stat_activity`.
const SERVICE_APP: &str = "catalog-ingest-service";
const HARNESS_APP: &str = "catalog-ingest-bench";
const EXEC: &str = "exec-ed-partner";
const BOOTCAMP: &str = "bootcamp-hub";
/// Quota lines given to every source in ingest mode: never the limit.
const UNLIMITED: u32 = 1_000_000;

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

/// `name=value`, the name a plain identifier (it is spliced into `ALTER DATABASE`).
fn parse_setting(raw: &str) -> Result<(String, String), String> {
    let (name, value) = raw.split_once('=').ok_or_else(|| format!("{raw:?}: expected name=value"))?;
    let plain = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if !plain(name) || !plain(value) {
        return Err(format!("{raw:?}: name and value must be letters, digits, _ and ."));
    }
    Ok((name.to_string(), value.to_string()))
}

// ---------------------------------------------------------------- sources and payloads

fn sources_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config/catalog/sources")
}

fn example(source: &str, event: &str) -> Value {
    let file = sources_dir().join("examples").join(source).join(format!("{event}.json"));
    serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap()
}

/// The file's quota lines set to `rate`/s with `burst` (as the tests' `tighten` does).
fn with_quota(text: &str, rate: u32, burst: u32) -> String {
    text.lines()
        .map(|line| {
            if line.starts_with("rate_per_second") {
                format!("rate_per_second = {rate}")
            } else if line.starts_with("burst") {
                format!("burst = {burst}")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The exec-ed-partner file with `product.upserted` reading a `seats` list from
/// each variant (mode from the seat, defaulting as the shipped file does)
/// instead of one seat per variant.
fn with_seat_lists(text: &str) -> String {
    const SHIPPED: &str =
        "[events.\"product.upserted\".runs.seats]\nmode = { default = \"paid-executive-education\" }\n";
    const LISTED: &str = "[events.\"product.upserted\".runs.seats]\nlist = \"seats\"\n\
                          mode = { path = \"mode\", default = \"paid-executive-education\" }\n";
    assert!(text.contains(SHIPPED), "the exec-ed-partner seat section changed; update the harness");
    text.replacen(SHIPPED, LISTED, 1)
}

/// The shipped sources, each with the quota given.
fn sources(quotas: [(u32, u32); 2], seat_lists: bool) -> Sources {
    let files = [EXEC, BOOTCAMP].into_iter().zip(quotas).map(|(name, (rate, burst))| {
        let text = std::fs::read_to_string(sources_dir().join(format!("{name}.toml"))).unwrap();
        let mut text = with_quota(&text, rate, burst);
        if name == EXEC && seat_lists {
            text = with_seat_lists(&text);
        }
        (format!("{name}.toml"), text)
    });
    Sources::from_files(files).expect("the shipped sources, rewritten, still parse")
}

/// The exec-ed-partner example `product.upserted` as product `code`, revision
/// `revision` (0 when created; an update changes the title and the prices).
struct ExecPayloads {
    template: Value,
    seat_lists: bool,
    faculty_pool: u64,
}

impl ExecPayloads {
    fn new(seat_lists: bool, faculty_pool: u64) -> Self {
        let mut template = example(EXEC, "product.upserted");
        // The target's product has two runs; the example gained a third (an
        // on-demand run for the quickstart), which the bench leaves out.
        template["variants"].as_array_mut().expect("the example has variants").truncate(2);
        Self { template, seat_lists, faculty_pool }
    }

    fn payload(&self, code: &str, product: u64, revision: u32) -> Value {
        let mut p = self.template.clone();
        p["course"]["code"] = code.into();
        let title = if revision == 0 {
            format!("Leading Strategic Change {code}")
        } else {
            format!("Leading Strategic Change {code}, revision {revision}")
        };
        p["course"]["title"] = title.into();
        for (k, faculty) in p["course"]["faculty"].as_array_mut().unwrap().iter_mut().enumerate() {
            let id = if self.faculty_pool == 0 {
                format!("fac-{code}-{k}")
            } else {
                format!("fac-pool-{}", (2 * product + k as u64) % self.faculty_pool)
            };
            faculty["id"] = id.into();
        }
        let bump = u64::from(revision) * 100;
        let prices = [format!("{},{:03}.00", (2450 + bump) / 1000, (2450 + bump) % 1000), (1950 + bump).to_string()];
        for (variant, price) in p["variants"].as_array_mut().unwrap().iter_mut().zip(prices) {
            let id = variant["id"].as_str().unwrap().to_string();
            let sku = format!("EE-{code}-{id}");
            let currency = variant["price"]["currency"].clone();
            if self.seat_lists {
                let object = variant.as_object_mut().unwrap();
                object.remove("price");
                object.remove("sku");
                let mut seats = vec![json!({
                    "mode": "paid-executive-education",
                    "price": {"amount": price, "currency": currency},
                    "sku": sku,
                })];
                if id == "2026-03" {
                    seats.push(json!({"mode": "audit", "sku": format!("{sku}-AUDIT")}));
                }
                object.insert("seats".into(), Value::Array(seats));
            } else {
                variant["price"]["amount"] = price.into();
                variant["sku"] = sku.into();
            }
        }
        p
    }
}

/// The bootcamp-hub example `product.upserted` as bootcamp `slug`, with instructors of its own.
fn bootcamp_payload(template: &Value, slug: &str) -> Value {
    let mut p = template.clone();
    p["bootcampSlug"] = slug.into();
    p["title"] = format!("Data Science Bootcamp {slug}").into();
    for (k, instructor) in p["instructors"].as_array_mut().unwrap().iter_mut().enumerate() {
        instructor["instructorId"] = format!("{slug}-{k}").into();
    }
    p
}

fn event(source: &str, event_id: String, seconds: i64, payload: &Value) -> pb::IngestProductEventRequest {
    pb::IngestProductEventRequest {
        source: source.into(),
        event_id,
        event_name: "product.upserted".into(),
        occurred_at: Some(prost_types::Timestamp { seconds, nanos: 0 }),
        payload: kit::json::to_struct(payload),
    }
}

// ---------------------------------------------------------------- observation

const ME: &str = "this process (service + callers)";
const POSTGRES: &str = "Postgres";
/// Postgres processes by what they serve (from `pg_stat_activity`), so other
/// people's databases on the same server are not counted as this service's.
const PG_SERVICE: &str = "Postgres, the service's backends";
const PG_SHARED: &str = "Postgres, background processes (WAL writer, checkpointer, ...) and the harness's probes";
const PG_OTHER: &str = "Postgres, other databases' backends";

async fn wal_position(admin: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8").fetch_one(admin).await.unwrap()
}

/// What one phase cost.
struct Observed {
    seconds: f64,
    machine_busy: f64,
    iowait: f64,
    /// CPU seconds by process.
    cpu: BTreeMap<&'static str, f64>,
    /// Everything else, CPU seconds.
    other: f64,
    wal_bytes: i64,
    samples: u64,
    /// State of the service's connections → summed count over the samples.
    waits: HashMap<String, u64>,
}

impl Observed {
    fn cpu_of(&self, who: &str) -> f64 {
        self.cpu.get(who).copied().unwrap_or(0.0)
    }

    /// Markdown: CPU by process (and per event), WAL, and the wait profile of the service's connections.
    fn markdown(&self, events: u64) -> String {
        let mut out = String::new();
        let share = |cpu_seconds: f64| cpu_seconds / self.seconds * 100.0;
        let per_event = |cpu_seconds: f64| cpu_seconds * 1e3 / events.max(1) as f64;
        let _ = writeln!(
            out,
            "CPU (100 % = one core): machine busy {:.0} % of {} cores (iowait {:.0} %); {ME} {:.0} % ({:.2} ms an event); \
             {PG_SERVICE} {:.0} % ({:.2} ms an event); {PG_SHARED} {:.0} % ({:.2} ms an event); not this bench: \
             {PG_OTHER} {:.0} %, everything else {:.0} %. WAL written: {:.1} MiB ({} bytes an event).\n",
            self.machine_busy,
            cores(),
            self.iowait,
            share(self.cpu_of(ME)),
            per_event(self.cpu_of(ME)),
            share(self.cpu_of(PG_SERVICE)),
            per_event(self.cpu_of(PG_SERVICE)),
            share(self.cpu_of(PG_SHARED)),
            per_event(self.cpu_of(PG_SHARED)),
            share(self.cpu_of(PG_OTHER)),
            share(self.other),
            self.wal_bytes as f64 / (1 << 20) as f64,
            thousands(self.wal_bytes as f64 / events.max(1) as f64),
        );
        let mut waits: Vec<_> = self.waits.iter().collect();
        waits.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let _ = writeln!(
            out,
            "The service's Postgres connections, sampled every 100 ms ({} samples; average connections in each state):\n",
            self.samples
        );
        out.push_str("| state | average connections |\n|---|---|\n");
        for (label, n) in waits {
            let _ = writeln!(out, "| {label} | {:.2} |", *n as f64 / self.samples.max(1) as f64);
        }
        out
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// What the sampling task saw: samples taken, the service's connections by
/// state (summed over the samples), and each Postgres process's label.
type Sampled = (u64, HashMap<String, u64>, HashMap<u32, &'static str>);

/// Samples the service's Postgres connections every 100 ms, and the CPU and WAL around a phase.
struct Sampler {
    stop: Shutdown,
    task: tokio::task::JoinHandle<Sampled>,
    cpu: CpuSnapshot,
    wal: i64,
    admin: PgPool,
}

impl Sampler {
    async fn start(admin: &PgPool) -> Self {
        let stop = Shutdown::new();
        let probe = admin.clone();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut samples = 0u64;
            let mut counts: HashMap<String, u64> = HashMap::new();
            let mut postgres: HashMap<u32, &'static str> = HashMap::new();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    () = stopped.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let Ok(states) = kit::bench::connection_states(&probe, SERVICE_APP).await else { continue };
                samples += 1;
                let processes: Vec<(i32, String, String)> = sqlx::query_as(
                    "SELECT pid, coalesce(application_name, ''), coalesce(backend_type, '') FROM pg_stat_activity",
                )
                .fetch_all(&probe)
                .await
                .unwrap_or_default();
                for (pid, application, backend_type) in processes {
                    let label = if application == SERVICE_APP {
                        PG_SERVICE
                    } else if application == HARNESS_APP || backend_type != "client backend" {
                        PG_SHARED
                    } else {
                        PG_OTHER
                    };
                    postgres.insert(pid.unsigned_abs(), label);
                }
                for (label, n) in states {
                    *counts.entry(label).or_default() += n;
                }
            }
            (samples, counts, postgres)
        });
        let wal = wal_position(admin).await;
        Self { stop, task, cpu: cpu_snapshot(ME), wal, admin: admin.clone() }
    }

    async fn finish(self) -> Observed {
        let end = cpu_snapshot(ME);
        let wal_bytes = wal_position(&self.admin).await - self.wal;
        self.stop.cancel();
        let (samples, waits, postgres) = self.task.await.unwrap();
        let seconds = end.at.duration_since(self.cpu.at).as_secs_f64().max(1e-9);
        // Linux reports process CPU time in USER_HZ, 100 a second.
        let mut cpu: BTreeMap<&'static str, f64> = BTreeMap::new();
        for (pid, (who, ticks)) in &end.by_pid {
            let before = self.cpu.by_pid.get(pid).map_or(0, |(_, t)| *t);
            // A Postgres process never seen in pg_stat_activity lived less than a sample: someone else's.
            let who = if *who == POSTGRES { postgres.get(pid).copied().unwrap_or(PG_OTHER) } else { who };
            *cpu.entry(who).or_default() += ticks.saturating_sub(before) as f64 / 100.0;
        }
        let total = (end.total - self.cpu.total).max(1) as f64;
        let busy_share = (end.busy - self.cpu.busy) as f64 / total;
        // Whatever else ran (another build, say): large here means the figures are not this service's alone.
        let listed: f64 = cpu.values().sum();
        let other = (busy_share * cores() as f64 * seconds - listed).max(0.0);
        Observed {
            seconds,
            machine_busy: busy_share * 100.0,
            iowait: (end.iowait - self.cpu.iowait) as f64 / total * 100.0,
            cpu,
            other,
            wal_bytes,
            samples,
            waits,
        }
    }
}

async fn setting(admin: &PgPool, name: &str) -> String {
    sqlx::query_scalar::<_, String>("SELECT current_setting($1)").bind(name).fetch_one(admin).await.unwrap_or_default()
}

async fn machine(admin: &PgPool, pool: u32) -> String {
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
    // SHOW, as asked; the same values as current_setting.
    let show = |name: &'static str| {
        let admin = admin.clone();
        async move {
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!("SHOW {name}")))
                .fetch_one(&admin)
                .await
                .unwrap_or_default()
        }
    };
    format!(
        "Machine: {} cores ({cpu_model}), {ram_gib} GiB RAM; PostgreSQL {} local (SHOW fsync: {}, SHOW synchronous_commit: \
         {}, wal_sync_method {}, shared_buffers {}, commit_delay {}). Service pool: {pool} Postgres connections.\n",
        cores(),
        setting(admin, "server_version").await,
        show("fsync").await,
        show("synchronous_commit").await,
        setting(admin, "wal_sync_method").await,
        setting(admin, "shared_buffers").await,
        setting(admin, "commit_delay").await,
    )
}

// ---------------------------------------------------------------- the service

struct Service {
    clients: Vec<Client>,
    shutdown: Shutdown,
    probe: PgPool,
}

/// A fresh `catalog_bench`, migrated, and the service over it on 127.0.0.1:0.
async fn start(args: &Args, admin: &PgPool, sources: Sources) -> Service {
    kit::bench::recreate_database(admin, DATABASE).await.expect("bench database recreated");
    for (name, value) in &args.db_setting {
        let sql = format!("ALTER DATABASE {DATABASE} SET {name} = '{value}'");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(admin).await.unwrap();
    }
    let db_config = DatabaseConfig {
        url: with_database(&args.database_url, DATABASE, SERVICE_APP),
        schema: Some(catalog_ingest::NAME.into()),
        max_connections: args.db_connections,
        ping_after_idle: if args.ping_every_checkout {
            Duration::ZERO
        } else {
            DatabaseConfig::default().ping_after_idle
        },
        ..DatabaseConfig::default()
    };
    kit::db::migrate(&db_config, &catalog_ingest::MIGRATIONS).await.expect("migrate");
    let database = Database::open(&db_config).expect("open");
    let probe = PgPoolOptions::new()
        .max_connections(1)
        .connect(&with_database(&args.database_url, DATABASE, HARNESS_APP))
        .await
        .unwrap();
    let sources = Arc::new(sources);
    let shutdown = Shutdown::new();
    // Keys of this run only: a run never inherits an earlier run's quota state.
    let quota_config =
        SharedQuotaConfig { key_prefix: format!("bench-{}:", uuid::Uuid::new_v4().simple()), ..Default::default() };
    let mut clients = Vec::new();
    for _ in 0..args.replicas.max(1) {
        let gate = ConcurrencyGate::new(args.gate, args.gate_wait);
        let api = CatalogIngestApi::new(catalog_ingest::store::for_database(&database), sources.clone(), gate, None);
        let api = match &args.redis_url {
            Some(url) => api.with_quotas(
                Quotas::cluster(url, sources.quotas(), quota_config.clone(), QuotaMetrics::default())
                    .expect("a Redis URL"),
            ),
            None => api,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(GrpcServer::new("catalog-bench").service(CatalogIngestServiceServer::new(api)).run(
            listener,
            async { Ok::<(), std::io::Error>(()) },
            shutdown.clone(),
        ));
        clients.extend(
            (0..args.connections.max(1)).map(|_| CatalogIngestServiceClient::new(kit::client::channel(&url).unwrap())),
        );
    }
    Service { clients, shutdown, probe }
}

// ---------------------------------------------------------------- ingest

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    New,
    Update,
}

/// The event `i` of `phase`, and whether it creates or updates a product.
fn ingest_event(
    phase: Phase,
    i: u64,
    events: u64,
    created: u64,
    base: i64,
    payloads: &ExecPayloads,
) -> (Kind, pb::IngestProductEventRequest) {
    let n = events as i64;
    let i_signed = i as i64;
    // Phase 1's products are N000000...; an update of product j names it again with a newer occurred_at.
    let (kind, id, code, product, revision, seconds) = match phase {
        Phase::New => (Kind::New, format!("new-{i}"), format!("N{i:06}"), i, 0, base + i_signed),
        Phase::Update => {
            let j = i % created.max(1);
            (Kind::Update, format!("upd-{i}"), format!("N{j:06}"), j, 1, base + n + i_signed)
        }
        Phase::Mixed if i.is_multiple_of(2) => {
            (Kind::New, format!("mix-{i}"), format!("M{:06}", i / 2), i / 2, 0, base + i_signed)
        }
        Phase::Mixed => {
            let j = (i / 2) % created.max(1);
            (Kind::Update, format!("mix-{i}"), format!("N{j:06}"), j, 2, base + 2 * n + i_signed)
        }
    };
    (kind, event(EXEC, id, seconds, &payloads.payload(&code, product, revision)))
}

#[derive(Default)]
struct Ingested {
    seconds: f64,
    new: Vec<Duration>,
    update: Vec<Duration>,
    states: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    gave_up: u64,
    first_error: Option<String>,
}

async fn ingest_phase(
    args: &Args,
    phase: Phase,
    created: u64,
    base: i64,
    service: &Service,
    payloads: &Arc<ExecPayloads>,
) -> Ingested {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let progress = {
        let (done, events) = (Arc::clone(&done), args.events);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let n = done.load(Ordering::Relaxed);
                eprintln!("{phase:?}: {n}/{events} events, {:.0}/s", n as f64 / started.elapsed().as_secs_f64());
            }
        })
    };
    let callers: Vec<_> = (0..args.clients)
        .map(|c| {
            let mut client = service.clients[c % service.clients.len()].clone();
            let (next, done, payloads, events) =
                (Arc::clone(&next), Arc::clone(&done), Arc::clone(payloads), args.events);
            tokio::spawn(async move {
                let mut out = Ingested::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= events {
                        break;
                    }
                    let (kind, request) = ingest_event(phase, i, events, created, base, &payloads);
                    // A refused call is repeated with the same event id (a replay answers the first result).
                    let mut answered = false;
                    for _ in 0..5 {
                        let sent = Instant::now();
                        match client.ingest_product_event(request.clone()).await {
                            Ok(answer) => {
                                let latency = sent.elapsed();
                                let state = answer.into_inner().ingestion.map(|i| i.state()).unwrap_or_default();
                                *out.states.entry(state.as_str_name().to_string()).or_default() += 1;
                                match kind {
                                    Kind::New => out.new.push(latency),
                                    Kind::Update => out.update.push(latency),
                                }
                                answered = true;
                                break;
                            }
                            Err(status) => {
                                *out.errors.entry(format!("{:?}", status.code())).or_default() += 1;
                                out.first_error
                                    .get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
                                let wait = kit::error::retry_after(&status).unwrap_or(Duration::from_millis(100));
                                tokio::time::sleep(wait.min(Duration::from_secs(1))).await;
                            }
                        }
                    }
                    out.gave_up += u64::from(!answered);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                out
            })
        })
        .collect();
    let mut result = Ingested::default();
    for caller in callers {
        let out = caller.await.unwrap();
        result.new.extend(out.new);
        result.update.extend(out.update);
        for (k, v) in out.states {
            *result.states.entry(k).or_default() += v;
        }
        for (k, v) in out.errors {
            *result.errors.entry(k).or_default() += v;
        }
        result.gave_up += out.gave_up;
        if result.first_error.is_none() {
            result.first_error = out.first_error;
        }
    }
    result.seconds = started.elapsed().as_secs_f64();
    progress.abort();
    result.new.sort();
    result.update.sort();
    result
}

/// One table row per kind of event (and one for all of them when mixed).
fn latency_rows(args: &Args, phase: Phase, r: &Ingested) -> String {
    let mut out = String::new();
    let mut row = |label: &str, latencies: &[Duration]| {
        if latencies.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "| {phase:?} | {label} | {} | {} | {:.1} s | **{}** | {} | {} | **{}** | {} |",
            args.clients,
            thousands(latencies.len() as f64),
            r.seconds,
            thousands(latencies.len() as f64 / r.seconds),
            ms(percentile(latencies, 0.50)),
            ms(percentile(latencies, 0.90)),
            ms(percentile(latencies, 0.99)),
            ms(latencies.last().copied().unwrap_or_default()),
        );
    };
    if r.new.is_empty() || r.update.is_empty() {
        let (label, latencies) = if r.new.is_empty() { ("updates", &r.update) } else { ("new products", &r.new) };
        row(label, latencies);
    } else {
        let mut all: Vec<Duration> = r.new.iter().chain(&r.update).copied().collect();
        all.sort();
        row("all", &all);
        row("of which new", &r.new);
        row("of which updates", &r.update);
    }
    out
}

async fn run_ingest(args: &Args, admin: &PgPool, report: &mut String) {
    assert_eq!(args.phases.first(), Some(&Phase::New), "--phases must start with new: the others update its products");
    let seat_lists = !args.shipped_seats;
    let service = start(args, admin, sources([(UNLIMITED, UNLIMITED); 2], seat_lists)).await;
    let payloads = Arc::new(ExecPayloads::new(seat_lists, args.faculty_pool));
    let base = chrono::Utc::now().timestamp() - 86_400 * 30;

    // The shape, read back once (and the connection opened) before any clock starts.
    let mut client = service.clients[0].clone();
    let shape = event(EXEC, "shape".into(), base - 1, &payloads.payload("SHAPE", u64::MAX / 4, 0));
    let applied = client.ingest_product_event(shape).await.expect("the shape event").into_inner().ingestion.unwrap();
    let product = client
        .get_product(pb::GetProductRequest { product_key: applied.product_key.clone() })
        .await
        .expect("GetProduct")
        .into_inner()
        .product
        .unwrap();
    let seats: Vec<String> = product
        .course_runs
        .iter()
        .flat_map(|run| {
            run.seats.iter().map(move |s| {
                let price =
                    s.price.as_ref().map_or("free".to_string(), |p| format!("{} {}", p.currency_code, p.amount));
                format!("{} {} ({price})", run.course_run_key.rsplit('+').next().unwrap_or_default(), s.mode)
            })
        })
        .collect();
    let shape = (product.instructors.len(), product.course_runs.len(), seats.len());
    let wanted = (2, 2, if seat_lists { 3 } else { 2 });
    assert_eq!(shape, wanted, "the bench product's shape (instructors, runs, seats)");
    let _ = writeln!(
        report,
        "Shape check (`GetProduct {}` after one event, {}): {} instructors, {} runs, {} seats: {}; steps {}.\n",
        applied.product_key,
        pb::IngestionState::try_from(applied.state).map_or("?", |s| s.as_str_name()),
        shape.0,
        shape.1,
        shape.2,
        seats.join(", "),
        applied.steps.len(),
    );

    // What building a request costs the harness (JSON edit + Struct), measured apart from the phases.
    let built = Instant::now();
    for i in 0..1_000 {
        std::hint::black_box(ingest_event(Phase::Mixed, i, args.events, args.events, base, &payloads));
    }
    let build_cost = built.elapsed() / 1_000;

    let _ = writeln!(
        report,
        "| phase | kind | clients | answered | time | events/s | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    let mut details = String::new();
    let mut created = 0;
    for &phase in &args.phases {
        let sampler = Sampler::start(admin).await;
        let r = ingest_phase(args, phase, created, base, &service, &payloads).await;
        let observed = sampler.finish().await;
        if phase == Phase::New {
            created = args.events;
        }
        report.push_str(&latency_rows(args, phase, &r));
        let states: Vec<String> = r.states.iter().map(|(s, n)| format!("{s} {n}")).collect();
        let errors: Vec<String> = r.errors.iter().map(|(c, n)| format!("{c} {n}")).collect();
        let _ = writeln!(
            details,
            "**{phase:?}**: answers {}; refused calls (repeated) {}; gave up {}{}.\n",
            states.join(", "),
            if errors.is_empty() { "0".to_string() } else { errors.join(", ") },
            r.gave_up,
            r.first_error.as_ref().map_or(String::new(), |e| format!("; first refusal: {e}")),
        );
        details.push_str(&observed.markdown(r.new.len() as u64 + r.update.len() as u64));
        details.push('\n');
    }
    report.push('\n');
    report.push_str(&details);

    let counts: (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM catalog_ingest.products), (SELECT count(*) FROM catalog_ingest.instructors),
                (SELECT count(*) FROM catalog_ingest.course_runs), (SELECT count(*) FROM catalog_ingest.seats),
                (SELECT count(*) FROM catalog_ingest.ingestions)",
    )
    .fetch_one(&service.probe)
    .await
    .unwrap();
    let size: i64 =
        sqlx::query_scalar("SELECT pg_database_size(current_database())").fetch_one(&service.probe).await.unwrap();
    let _ = writeln!(
        report,
        "Stored at the end: {} products, {} instructors, {} runs, {} seats, {} ingestions; database {:.0} MiB. \
         Building one request in the harness (JSON edit + protobuf Struct) takes {:.1} µs.\n",
        counts.0,
        counts.1,
        counts.2,
        counts.3,
        counts.4,
        size as f64 / (1 << 20) as f64,
        build_cost.as_secs_f64() * 1e6,
    );
    service.shutdown.cancel();
}

// ---------------------------------------------------------------- throttle

#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    Accepted,
    /// RESOURCE_EXHAUSTED for the source's quota.
    Throttled,
    /// RESOURCE_EXHAUSTED from the concurrency gate.
    Shed,
    Other(Code),
}

struct Offered {
    source: &'static str,
    quota: u32,
    burst: u32,
    /// When each event was sent (from the first), its answer, and how long the answer took.
    sends: Vec<(Duration, Answer, Duration)>,
    /// How far each send was behind the tick it answered (the interval's own schedule).
    lags: Vec<Duration>,
    max_in_flight: u64,
}

async fn offer(
    clients: Vec<Client>,
    source: &'static str,
    (quota, burst): (u32, u32),
    args: &Args,
    start_at: tokio::time::Instant,
) -> Offered {
    let rate = f64::from(quota) * args.offered;
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut tick = tokio::time::interval_at(start_at, period);
    tick.set_missed_tick_behavior(match args.missed_tick {
        Missed::Burst => MissedTickBehavior::Burst,
        Missed::Skip => MissedTickBehavior::Skip,
    });
    let template = example(BOOTCAMP, "product.upserted");
    let exec = ExecPayloads::new(false, 0);
    let in_flight = Arc::new(AtomicU64::new(0));
    let max_in_flight = Arc::new(AtomicU64::new(0));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let mut lags = Vec::new();
    let mut tasks = Vec::new();
    let until = Duration::from_secs(args.seconds);
    let mut k = 0u32;
    loop {
        let scheduled = tick.tick().await;
        let sent_at = start_at.elapsed();
        if sent_at >= until {
            break;
        }
        lags.push(tokio::time::Instant::now().saturating_duration_since(scheduled));
        let request = if source == EXEC {
            event(EXEC, format!("t-{k}"), 1_000 + i64::from(k), &exec.payload(&format!("T{k:06}"), u64::from(k), 0))
        } else {
            event(BOOTCAMP, format!("t-{k}"), 1_000 + i64::from(k), &bootcamp_payload(&template, &format!("t{k:06}")))
        };
        k += 1;
        let client = clients[k as usize % clients.len()].clone();
        let (mut client, in_flight, max_in_flight, answers) =
            (client, Arc::clone(&in_flight), Arc::clone(&max_in_flight), Arc::clone(&answers));
        tasks.push(tokio::spawn(async move {
            let now = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            max_in_flight.fetch_max(now, Ordering::Relaxed);
            let sent = Instant::now();
            let answer = match client.ingest_product_event(request).await {
                Ok(_) => Answer::Accepted,
                Err(s) if s.code() == Code::ResourceExhausted && s.message().contains("quota") => Answer::Throttled,
                Err(s) if s.code() == Code::ResourceExhausted => Answer::Shed,
                Err(s) => Answer::Other(s.code()),
            };
            let latency = sent.elapsed();
            in_flight.fetch_sub(1, Ordering::Relaxed);
            answers.lock().unwrap().push((sent_at, answer, latency));
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut sends = std::mem::take(&mut *answers.lock().unwrap());
    sends.sort_by_key(|(at, _, _)| *at);
    lags.sort();
    Offered { source, quota, burst, sends, lags, max_in_flight: max_in_flight.load(Ordering::Relaxed) }
}

async fn run_throttle(args: &Args, admin: &PgPool, report: &mut String) {
    let exec_quota = (args.quota, args.burst);
    let bootcamp_quota = (args.second_quota.unwrap_or(args.quota), args.second_burst.unwrap_or(args.burst));
    let service = start(args, admin, sources([exec_quota, bootcamp_quota], false)).await;
    // Connect (GetProduct is not throttled) so the first offered event does not pay for the handshake.
    let _ = service.clients[0].clone().get_product(pb::GetProductRequest { product_key: "warm-up".into() }).await;

    let sampler = Sampler::start(admin).await;
    let start_at = tokio::time::Instant::now() + Duration::from_millis(50);
    let exec = offer(service.clients.clone(), EXEC, exec_quota, args, start_at);
    let bootcamp = offer(service.clients.clone(), BOOTCAMP, bootcamp_quota, args, start_at);
    let (exec, bootcamp) = tokio::join!(exec, bootcamp);
    let observed = sampler.finish().await;

    let _ = writeln!(
        report,
        "| source | quota / burst | offered (target) | sent | achieved offered rate | accepted | expected Q×{s}+B | error | \
         expected over the achieved span | error | RESOURCE_EXHAUSTED (quota / gate) | other errors | accepted in the first second | accepted/s after it |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        s = args.seconds
    );
    let mut notes = String::new();
    for o in [&exec, &bootcamp] {
        let count = |want: Answer| o.sends.iter().filter(|(_, a, _)| *a == want).count();
        let accepted = count(Answer::Accepted);
        let throttled = count(Answer::Throttled);
        let shed = count(Answer::Shed);
        let other = o.sends.iter().filter(|(_, a, _)| matches!(a, Answer::Other(_))).count();
        let span = match (o.sends.first(), o.sends.last()) {
            (Some(first), Some(last)) => (last.0 - first.0).as_secs_f64(),
            _ => 0.0,
        };
        let achieved = (o.sends.len().saturating_sub(1)) as f64 / span.max(1e-9);
        let expected = f64::from(o.quota) * args.seconds as f64 + f64::from(o.burst);
        let expected_span = f64::from(o.quota) * span + f64::from(o.burst);
        let error = |e: f64| (accepted as f64 - e) / e * 100.0;
        let first_second =
            o.sends.iter().filter(|(at, a, _)| *a == Answer::Accepted && *at < Duration::from_secs(1)).count();
        let after = (accepted - first_second) as f64 / (span - 1.0).max(1e-9);
        let _ = writeln!(
            report,
            "| {} | {}/s / {} | {:.0}/s | {} | {:.1}/s | **{accepted}** | {expected:.0} | **{:+.2} %** | {expected_span:.0} | {:+.2} % | {} ({} / {shed}) | {other} | {first_second} | {after:.2} |",
            o.source,
            o.quota,
            o.burst,
            f64::from(o.quota) * args.offered,
            o.sends.len(),
            achieved,
            error(expected),
            error(expected_span),
            throttled + shed,
            throttled,
        );
        let latencies = |want: Answer| {
            let mut l: Vec<Duration> = o.sends.iter().filter(|(_, a, _)| *a == want).map(|(_, _, d)| *d).collect();
            l.sort();
            l
        };
        let (ok, refused) = (latencies(Answer::Accepted), latencies(Answer::Throttled));
        let _ = writeln!(
            notes,
            "{}: sends behind schedule p50 {}, p99 {}, max {}; at most {} calls in flight; accepted answered in p50 {}, \
             p99 {}; throttled answered in p50 {}, p99 {}.\n",
            o.source,
            ms(percentile(&o.lags, 0.5)),
            ms(percentile(&o.lags, 0.99)),
            ms(o.lags.last().copied().unwrap_or_default()),
            o.max_in_flight,
            ms(percentile(&ok, 0.5)),
            ms(percentile(&ok, 0.99)),
            ms(percentile(&refused, 0.5)),
            ms(percentile(&refused, 0.99)),
        );
    }
    report.push('\n');
    report.push_str(&notes);
    let total = exec.sends.len() + bootcamp.sends.len();
    report.push_str(&observed.markdown(total as u64));
    service.shutdown.cancel();
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
    let admin_options = sqlx::postgres::PgConnectOptions::from_str(&args.database_url)
        .expect("a Postgres URL")
        .application_name(HARNESS_APP);
    let admin = PgPoolOptions::new().max_connections(2).connect_with(admin_options).await.expect("Postgres reachable");

    let mut report = machine(&admin, args.db_connections).await;
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let _ = writeln!(report, "Run: `catalog_load {}`; gate {} / {:?}.\n", raw.join(" "), args.gate, args.gate_wait);
    if !args.db_setting.is_empty() {
        let set: Vec<String> = args.db_setting.iter().map(|(n, v)| format!("{n} = {v}")).collect();
        let _ = writeln!(
            report,
            "**Experiment**: the service's database has {} (not the server's defaults above).\n",
            set.join(", ")
        );
    }
    match args.mode {
        Mode::Ingest => run_ingest(&args, &admin, &mut report).await,
        Mode::Throttle => {
            let _ = writeln!(
                report,
                "Throttle: both sources at once on Postgres, each offered {}× its quota for {} s by its own \
                 `tokio::time::interval` (MissedTickBehavior::{:?}), one task per event; {} service instance(s), \
                 quotas {}.\n",
                args.offered,
                args.seconds,
                args.missed_tick,
                args.replicas.max(1),
                if args.redis_url.is_some() { "in Redis (shared)" } else { "in process (each instance its own)" }
            );
            run_throttle(&args, &admin, &mut report).await;
        }
    }
    println!("\n---- summary (Markdown, for docs/BENCHMARKS.md) ----\n\n{report}");
}
