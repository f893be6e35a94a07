//! Load harness for PurchaseHistory (issue #6): how fast the stream consumer
//! stores purchases in Postgres, and how fast `ListPurchases` pages one
//! learner's 1,000 purchases among millions of rows. Prints the figures as
//! Markdown for docs/BENCHMARKS.md.
//!
//! ```sh
//! cargo run --release -p purchase-history --example purchases_load -- --events 100000 --rows 10000000
//! ```
//!
//! Everything runs in this process, as `tests/service.rs` assembles it: the
//! PurchaseHistory gRPC server on 127.0.0.1:0 over Postgres (database
//! `purchases_bench`, recreated unless `--reuse`, schema `purchase_history`)
//! with the event bus on Redis Streams (database 15 by default, flushed at the end).
//!
//! 1. **Consume**, for each (`--consumers`, `--batches`) pair: the table is
//!    emptied, `--events` valid `PurchaseRecorded` envelopes are published to a
//!    stream of the run's own (concurrently; not timed), then K
//!    `kit::bus::consumer::Consumer`s of the group `purchase-history` (the
//!    service's `PurchaseHistory::consumer`, each under its own name) run the
//!    real `PurchaseRecorder`. The clock runs until every event was settled,
//!    the group has nothing pending and the table holds `--events` rows.
//! 2. **Fill**: `--rows` rows straight into `purchase_history.purchases` with
//!    one `INSERT ... SELECT FROM generate_series` (the secondary indexes and
//!    the primary key dropped during the load and recreated from their own
//!    definitions afterwards), one learner (`lms_user_id` 1, username
//!    `Bench_Target`) holding exactly 1,000 rows spread evenly through the
//!    table; then ANALYZE.
//! 3. **List**: `ListPurchases` over real gRPC by `lms_user_id` (first page and
//!    paging through all 1,000 with page_size 50 and 500), and the username
//!    path at the store level (`Store::list(&LearnerKey::Username(..))`): the
//!    API resolves a username through CustomerIdentity first, which is not
//!    running here. Each case is `--calls` calls or more, one at a time.
//!
//! During each consume run the harness reads the CPU time of this process,
//! Postgres and Redis from /proc, and samples what the service's Postgres
//! connections are doing (`pg_stat_activity`) every 100 ms.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a harness, not a service: fail loudly

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use kit::bench::{CpuSnapshot, cpu_snapshot, ms, percentile, thousands, with_database};
use kit::bus::Delivery;
use kit::bus::consumer::{BatchHandler, ConsumerConfig, Verdict};
use kit::db::{Database, DatabaseConfig};
use kit::serve::GrpcServer;
use kit::shutdown::Shutdown;
use prost::Message;
use proto::commerce::events::v1::{EventEnvelope, PurchaseRecorded, event_envelope::Payload};
use proto::commerce::identity::v1::customer_identity_service_client::CustomerIdentityServiceClient;
use proto::commerce::purchases::v1 as pb;
use proto::commerce::purchases::v1::purchase_history_service_client::PurchaseHistoryServiceClient;
use purchase_history::consumer::{GROUP, PurchaseRecorder};
use purchase_history::domain::{LearnerKey, PageCursor};
use purchase_history::{Config, PurchaseHistory};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

#[derive(Parser, Debug)]
#[command(about = "PurchaseHistory load harness: stream consumption into Postgres, then ListPurchases at 10 M rows")]
struct Args {
    /// Postgres server (admin connection); the harness (re)creates the database `purchases_bench` there.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    database_url: String,
    /// Redis for the event bus, in a database of its own (flushed at the end).
    #[arg(long, default_value = "redis://127.0.0.1:6379/15")]
    redis: String,
    /// Events pre-filled on the stream for each consume run.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Consumers in the group, one run each (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 2, 4])]
    consumers: Vec<usize>,
    /// Consumer batch sizes, one run each (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = vec![500usize, 1000])]
    batches: Vec<usize>,
    /// Concurrent publishers when pre-filling the stream (not timed).
    #[arg(long, default_value_t = 64)]
    publishers: usize,
    /// Rows to fill the table with for the list phase.
    #[arg(long, default_value_t = 10_000_000)]
    rows: u64,
    /// Calls per list case (at least).
    #[arg(long, default_value_t = 2_000)]
    calls: usize,
    /// The service's Postgres pool size (`database.max_connections`).
    #[arg(long, default_value_t = DatabaseConfig::default().max_connections)]
    db_connections: u32,
    /// Reuse `purchases_bench` as it is (a filled table): no consume runs, no fill.
    #[arg(long)]
    reuse: bool,
    /// No consume runs.
    #[arg(long)]
    skip_consume: bool,
    /// No fill and no list phase.
    #[arg(long)]
    skip_list: bool,
    /// Give up a consume run after this many seconds.
    #[arg(long, default_value_t = 300)]
    consume_timeout_secs: u64,
}

const DATABASE: &str = "purchases_bench";
const SERVICE_APP: &str = "purchases-service";
const HARNESS_APP: &str = "purchases-bench";
/// The learner with exactly 1,000 purchases.
const TARGET_ID: i64 = 1;
const TARGET_USERNAME: &str = "Bench_Target";
const TARGET_PURCHASES: u64 = 1_000;

// ---------------------------------------------------------------- observation

/// CPU per process, and what the service's Postgres connections did, sampled every 100 ms.
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
        Self { stop, task, cpu: cpu_snapshot("this process (service + harness)") }
    }

    /// One line of CPU figures and one of connection states.
    async fn finish(self) -> (String, String) {
        let end = cpu_snapshot("this process (service + harness)");
        self.stop.cancel();
        let (samples, counts) = self.task.await.unwrap();
        let seconds = end.at.duration_since(self.cpu.at).as_secs_f64().max(1e-9);
        let mut per: HashMap<&str, u64> = HashMap::new();
        for (pid, (who, ticks)) in &end.by_pid {
            let before = self.cpu.by_pid.get(pid).map_or(0, |(_, t)| *t);
            *per.entry(who).or_default() += ticks.saturating_sub(before);
        }
        let total = (end.total - self.cpu.total).max(1) as f64;
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        let busy = (end.busy - self.cpu.busy) as f64 / total * 100.0;
        let mut cpu =
            format!("machine {busy:.0} % (iowait {:.0} %)", (end.iowait - self.cpu.iowait) as f64 / total * 100.0);
        let mut listed = 0.0;
        for who in ["Postgres", "this process (service + harness)", "Redis"] {
            // Linux reports process CPU time in USER_HZ, 100 a second.
            let share = per.get(who).copied().unwrap_or(0) as f64 / 100.0 / seconds * 100.0;
            listed += share;
            let short = who.split(' ').next().unwrap_or(who);
            let _ = write!(cpu, ", {short} {share:.0} %");
        }
        let _ = write!(cpu, ", else {:.0} %", (busy * cores - listed).max(0.0));
        let mut counts: Vec<_> = counts.into_iter().collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let states: Vec<String> = counts
            .into_iter()
            .filter(|(label, _)| label != kit::bench::IDLE)
            .map(|(label, n)| format!("{label} {:.2}", n as f64 / samples.max(1) as f64))
            .collect();
        (cpu, states.join("; "))
    }
}

async fn setting(admin: &PgPool, name: &str) -> String {
    sqlx::query_scalar::<_, String>("SELECT current_setting($1)").bind(name).fetch_one(admin).await.unwrap_or_default()
}

async fn redis_connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.expect("Redis reachable")
}

// ---------------------------------------------------------------- consume

fn envelope(run: &str, i: u64) -> (String, Vec<u8>) {
    let purchase_id = format!("{run}-{i:09}");
    let user = 1_000 + (i * 7_919) % 100_000;
    let event = PurchaseRecorded {
        purchase_id: purchase_id.clone(),
        lms_user_id: user.to_string(),
        username: format!("user_{user}"),
        order_number: format!("EDX-{i}"),
        product_key: format!("course-v1:edX+C{}+2026_T1", i % 500),
        title: format!("Benchmark course {}", i % 500),
        price: Some(proto::commerce::r#type::v1::Money { currency_code: "USD".into(), amount: "149.00".into() }),
        purchased_at: Some(prost_types::Timestamp { seconds: 1_763_000_000 + i as i64, nanos: 0 }),
        source: "fulfillment".into(),
    };
    let event_id = format!("purchase:{purchase_id}");
    let envelope = EventEnvelope {
        event_id: event_id.clone(),
        event_type: "commerce.events.v1.PurchaseRecorded".into(),
        occurred_at: Some(prost_types::Timestamp { seconds: 1_763_000_000 + i as i64, nanos: 0 }),
        traceparent: String::new(),
        tracestate: String::new(),
        payload: Some(Payload::PurchaseRecorded(event)),
    };
    (event_id, envelope.encode_to_vec())
}

/// The real recorder, counting what it settled (to know when the group is done).
struct Counting {
    inner: PurchaseRecorder,
    settled: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl BatchHandler for Counting {
    async fn handle(&self, batch: &[Delivery]) -> Result<Vec<Verdict>, Box<dyn std::error::Error + Send + Sync>> {
        let verdicts = self.inner.handle(batch).await?;
        let settled = verdicts.iter().filter(|v| matches!(v, Verdict::Settled)).count() as u64;
        self.settled.fetch_add(settled, Ordering::Relaxed);
        self.refused.fetch_add(verdicts.len() as u64 - settled, Ordering::Relaxed);
        Ok(verdicts)
    }
}

struct Consumed {
    consumers: usize,
    batch: usize,
    seconds: f64,
    rows: i64,
    refused: u64,
    publish_seconds: f64,
    cpu: String,
    states: String,
}

async fn consume_run(
    args: &Args,
    database: &Database,
    bus: &Arc<dyn kit::bus::EventBus>,
    admin: &PgPool,
    probe: &PgPool,
    consumers: usize,
    batch: usize,
) -> Consumed {
    sqlx::query("TRUNCATE purchase_history.purchases").execute(probe).await.unwrap();
    sqlx::query("CHECKPOINT").execute(admin).await.unwrap();
    let run = format!("r{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let stream = format!("bench-{run}.purchases");

    // Pre-fill the stream: publishers in parallel over the bus's multiplexed connection.
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut publishers = tokio::task::JoinSet::new();
    for _ in 0..args.publishers {
        let (bus, next, stream, run, events) =
            (Arc::clone(bus), Arc::clone(&next), stream.clone(), run.clone(), args.events);
        publishers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= events {
                    return;
                }
                let (event_id, payload) = envelope(&run, i);
                assert!(bus.publish(&stream, &event_id, &payload).await.expect("publish"));
            }
        });
    }
    while let Some(done) = publishers.join_next().await {
        done.unwrap();
    }
    let publish_seconds = started.elapsed().as_secs_f64();

    let config = Config {
        stream: stream.clone(),
        consumer: ConsumerConfig { batch, ..ConsumerConfig::default() },
        ..Config::default()
    };
    let identity = CustomerIdentityServiceClient::new(kit::client::channel("http://127.0.0.1:9").unwrap());
    let history =
        Arc::new(PurchaseHistory::new(database, Arc::clone(bus), identity, &config, &kit::metrics::Metrics::new()));
    bus.ensure_group(&stream, GROUP).await.unwrap();
    let settled = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let shutdown = Shutdown::new();
    let sampler = Sampler::start(admin);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..consumers {
        let history = Arc::clone(&history);
        let handler =
            Counting { inner: history.recorder(), settled: Arc::clone(&settled), refused: Arc::clone(&refused) };
        let token = shutdown.clone();
        tasks.spawn(async move {
            history.consumer(&format!("bench-consumer-{k}")).run(&handler, token).await;
        });
    }
    let deadline = started + Duration::from_secs(args.consume_timeout_secs);
    loop {
        if settled.load(Ordering::Relaxed) + refused.load(Ordering::Relaxed) >= args.events
            && bus.pending(&stream, GROUP).await.unwrap() == 0
        {
            break;
        }
        assert!(Instant::now() < deadline, "consume run timed out");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM purchase_history.purchases").fetch_one(probe).await.unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let (cpu, states) = sampler.finish().await;
    shutdown.cancel();
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    Consumed { consumers, batch, seconds, rows, refused: refused.load(Ordering::Relaxed), publish_seconds, cpu, states }
}

// ---------------------------------------------------------------- fill

/// Fills `rows` rows; answers a Markdown report of the steps.
async fn fill(probe: &PgPool, rows: u64) -> String {
    let mut out = String::new();
    let indexes = || async {
        let mut defs: Vec<(String, String)> = sqlx::query_as(
            "SELECT indexname::text, indexdef FROM pg_indexes
             WHERE schemaname = 'purchase_history' AND tablename = 'purchases' ORDER BY 1",
        )
        .fetch_all(probe)
        .await
        .unwrap();
        defs.sort();
        defs
    };
    let before = indexes().await;
    let mut connection = probe.acquire().await.unwrap();
    sqlx::query("SET maintenance_work_mem = '1GB'").execute(&mut *connection).await.unwrap();
    sqlx::query("SET max_parallel_maintenance_workers = 2").execute(&mut *connection).await.unwrap();
    sqlx::query("TRUNCATE purchase_history.purchases").execute(&mut *connection).await.unwrap();
    for (name, _) in before.iter().filter(|(name, _)| name != "purchases_pkey") {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP INDEX purchase_history.{name}")))
            .execute(&mut *connection)
            .await
            .unwrap();
    }
    sqlx::query("ALTER TABLE purchase_history.purchases DROP CONSTRAINT purchases_pkey")
        .execute(&mut *connection)
        .await
        .unwrap();

    // Row i belongs to the target learner when i is a multiple of `step` (exactly
    // 1,000 of them, spread through the table as over time); else to one of
    // 1,000,000 other learners. Times are 30 s apart, so a learner's rows are scattered.
    let step = (rows / TARGET_PURCHASES).max(1);
    let started = Instant::now();
    let inserted = sqlx::query(
        "INSERT INTO purchase_history.purchases
             (purchase_id, lms_user_id, username, order_number, product_key, title, currency_code, amount,
              purchased_at, source)
         SELECT 'fill-' || lpad(i::text, 9, '0'),
                CASE WHEN i % $2 = 0 AND i / $2 <= $3 THEN $4 ELSE 2 + (i * 7919) % 1000000 END,
                CASE WHEN i % $2 = 0 AND i / $2 <= $3 THEN $5 ELSE 'user_' || (2 + (i * 7919) % 1000000) END,
                'EDX-' || i,
                'course-v1:edX+C' || (i % 500) || '+2026_T1',
                'Benchmark course ' || (i % 500),
                'USD', '149.00',
                timestamptz '2020-01-01 00:00:00+00' + i * interval '30 seconds',
                'fulfillment'
         FROM generate_series(1::int8, $1::int8) AS i",
    )
    .bind(rows as i64)
    .bind(step as i64)
    .bind(TARGET_PURCHASES as i64)
    .bind(TARGET_ID)
    .bind(TARGET_USERNAME)
    .execute(&mut *connection)
    .await
    .unwrap()
    .rows_affected();
    let insert = started.elapsed();
    let started = Instant::now();
    sqlx::query("ALTER TABLE purchase_history.purchases ADD CONSTRAINT purchases_pkey PRIMARY KEY (purchase_id)")
        .execute(&mut *connection)
        .await
        .unwrap();
    let pkey = started.elapsed();
    let started = Instant::now();
    for (_, def) in before.iter().filter(|(name, _)| name != "purchases_pkey") {
        sqlx::raw_sql(sqlx::AssertSqlSafe(def.clone())).execute(&mut *connection).await.unwrap();
    }
    let secondary = started.elapsed();
    let started = Instant::now();
    sqlx::query("ANALYZE purchase_history.purchases").execute(&mut *connection).await.unwrap();
    let analyze = started.elapsed();
    let after = indexes().await;
    assert_eq!(before, after, "the indexes are recreated exactly");
    let target: i64 = sqlx::query_scalar("SELECT count(*) FROM purchase_history.purchases WHERE lms_user_id = $1")
        .bind(TARGET_ID)
        .fetch_one(&mut *connection)
        .await
        .unwrap();
    assert_eq!(target, TARGET_PURCHASES as i64);
    let size: String = sqlx::query_scalar(
        "SELECT pg_size_pretty(pg_table_size('purchase_history.purchases')) || ' heap, '
             || pg_size_pretty(pg_indexes_size('purchase_history.purchases')) || ' indexes'",
    )
    .fetch_one(&mut *connection)
    .await
    .unwrap();
    let _ = writeln!(
        out,
        "#### Fill: {} rows ({size}); learner {TARGET_ID} / `{TARGET_USERNAME}` has {target}\n\n\
         | INSERT ... generate_series | primary key | 2 secondary indexes | ANALYZE | total |\n|---|---|---|---|---|\n\
         | {:.1} s | {:.1} s | {:.1} s | {:.1} s | **{:.1} s** |\n\n\
         Index definitions after the load identical to the migration's: {}.\n",
        thousands(inserted as f64),
        insert.as_secs_f64(),
        pkey.as_secs_f64(),
        secondary.as_secs_f64(),
        analyze.as_secs_f64(),
        (insert + pkey + secondary + analyze).as_secs_f64(),
        before == after,
    );
    out
}

// ---------------------------------------------------------------- list

/// How one list case is called: page size, and whether to page through everything.
#[derive(Clone, Copy)]
struct Case {
    page_size: i32,
    walk: bool,
}

fn cases() -> [Case; 4] {
    [
        Case { page_size: 50, walk: false },
        Case { page_size: 500, walk: false },
        Case { page_size: 50, walk: true },
        Case { page_size: 500, walk: true },
    ]
}

/// Latencies of every call, of the walk's last page, and of whole walks.
#[derive(Default)]
struct Timings {
    calls: Vec<Duration>,
    last_pages: Vec<Duration>,
    walks: Vec<Duration>,
    listed_per_walk: usize,
}

fn row(label: &str, case: Case, t: &mut Timings) -> String {
    t.calls.sort();
    t.last_pages.sort();
    t.walks.sort();
    let kind = if case.walk {
        format!(
            "all {} by page_size {} ({} pages)",
            t.listed_per_walk,
            case.page_size,
            t.calls.len() / t.walks.len().max(1)
        )
    } else {
        format!("first page, page_size {}", case.page_size)
    };
    let extra = if case.walk {
        format!(
            "last page p50 {} / p99 {}; whole walk p50 {} / p99 {}",
            ms(percentile(&t.last_pages, 0.5)),
            ms(percentile(&t.last_pages, 0.99)),
            ms(percentile(&t.walks, 0.5)),
            ms(percentile(&t.walks, 0.99)),
        )
    } else {
        String::new()
    };
    format!(
        "| {label} | {kind} | {} | {} | {} | **{}** | {} | {extra} |\n",
        thousands(t.calls.len() as f64),
        ms(percentile(&t.calls, 0.5)),
        ms(percentile(&t.calls, 0.9)),
        ms(percentile(&t.calls, 0.99)),
        ms(t.calls.last().copied().unwrap_or_default()),
    )
}

async fn grpc_case(
    client: &PurchaseHistoryServiceClient<kit::client::TracedChannel>,
    case: Case,
    calls: usize,
    warmup: bool,
) -> Timings {
    let mut t = Timings::default();
    while t.calls.len() < calls {
        let walk_started = Instant::now();
        let mut token = String::new();
        let mut listed = 0;
        loop {
            let request = pb::ListPurchasesRequest {
                learner: Some(pb::list_purchases_request::Learner::LmsUserId(TARGET_ID.to_string())),
                page_size: case.page_size,
                page_token: token,
                hide_refunded: false,
            };
            let started = Instant::now();
            let page = client.clone().list_purchases(request).await.expect("ListPurchases").into_inner();
            let took = started.elapsed();
            t.calls.push(took);
            listed += page.purchases.len();
            token = page.next_page_token;
            if !case.walk || token.is_empty() {
                if case.walk {
                    t.last_pages.push(took);
                    t.walks.push(walk_started.elapsed());
                    assert_eq!(listed as u64, TARGET_PURCHASES, "a walk lists every purchase once");
                    t.listed_per_walk = listed;
                }
                break;
            }
        }
        if warmup {
            break;
        }
    }
    t
}

async fn store_case(history: &PurchaseHistory, learner: &LearnerKey, case: Case, calls: usize) -> Timings {
    let mut t = Timings::default();
    let limit = i64::from(case.page_size) + 1;
    while t.calls.len() < calls {
        let walk_started = Instant::now();
        let mut after: Option<PageCursor> = None;
        let mut listed = 0;
        loop {
            let started = Instant::now();
            let mut page = history.store().list(learner, after.as_ref(), limit).await.expect("list");
            let took = started.elapsed();
            t.calls.push(took);
            let more = page.len() > case.page_size as usize;
            page.truncate(case.page_size as usize);
            listed += page.len();
            after = page.last().map(PageCursor::after);
            if !case.walk || !more {
                if case.walk {
                    t.last_pages.push(took);
                    t.walks.push(walk_started.elapsed());
                    assert_eq!(listed as u64, TARGET_PURCHASES, "a walk lists every purchase once");
                    t.listed_per_walk = listed;
                }
                break;
            }
        }
    }
    t
}

/// EXPLAIN (ANALYZE, BUFFERS) of the store's first-page and deepest-page queries.
async fn explain(probe: &PgPool, by: &str, limit: i64) -> String {
    let learner =
        if by == "id" { format!("lms_user_id = {TARGET_ID}") } else { "lower(username) = 'bench_target'".into() };
    let oldest: (chrono::DateTime<chrono::Utc>, String) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT purchased_at, purchase_id FROM purchase_history.purchases WHERE {learner}
         ORDER BY purchased_at DESC, purchase_id DESC OFFSET 950 LIMIT 1"
    )))
    .fetch_one(probe)
    .await
    .unwrap();
    let mut out = String::new();
    for (page, after) in [
        ("first page", String::new()),
        (
            "after 950 rows",
            format!(" AND (purchased_at, purchase_id) < ('{}'::timestamptz, '{}')", oldest.0.to_rfc3339(), oldest.1),
        ),
    ] {
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (ANALYZE, BUFFERS) SELECT purchase_id, lms_user_id, username, order_number, product_key, title,
                 currency_code, amount, purchased_at, source FROM purchase_history.purchases
             WHERE {learner}{after} ORDER BY purchased_at DESC, purchase_id DESC LIMIT {limit}"
        )))
        .fetch_all(probe)
        .await
        .unwrap();
        let _ = writeln!(
            out,
            "- by {by}, {page}, LIMIT {limit}: `{}`",
            plan.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" / ")
        );
    }
    out
}

// ---------------------------------------------------------------- main

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let _telemetry = kit::telemetry::init(&kit::telemetry::TelemetryConfig {
        log_filter: "warn".into(),
        log_format: kit::telemetry::LogFormat::Text,
        ..Default::default()
    })
    .unwrap();

    let admin = PgPoolOptions::new().max_connections(2).connect(&args.database_url).await.expect("Postgres reachable");
    if !args.reuse {
        kit::bench::recreate_database(&admin, DATABASE).await.expect("bench database recreated");
    }
    let db_config = DatabaseConfig {
        url: with_database(&args.database_url, DATABASE, SERVICE_APP),
        schema: Some(purchase_history::NAME.into()),
        max_connections: args.db_connections,
        ..DatabaseConfig::default()
    };
    kit::db::migrate(&db_config, &purchase_history::MIGRATIONS).await.expect("migrate");
    let database = Database::open(&db_config).expect("open");
    let probe = PgPoolOptions::new()
        .max_connections(2)
        .connect(&with_database(&args.database_url, DATABASE, HARNESS_APP))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bus = kit::bus::open(Some(&args.redis), &dir.path().join("events.db")).expect("bus");
    let mut redis = redis_connection(&args.redis).await;

    // The machine.
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let ram_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok()))
        .map_or(0, |kib| kib / 1024 / 1024);
    let info: String = redis::cmd("INFO").arg("server").query_async(&mut redis).await.unwrap_or_default();
    let redis_version =
        info.lines().find_map(|l| l.strip_prefix("redis_version:")).unwrap_or("unknown").trim().to_string();
    let mut report = String::new();
    let _ = writeln!(
        report,
        "Machine: {cores} cores ({cpu_model}), {ram_gib} GiB RAM; PostgreSQL {} (fsync {}, synchronous_commit {}, \
         wal_sync_method {}, shared_buffers {}) and Redis {redis_version}, both local. Service pool: {} connections.\n",
        setting(&admin, "server_version").await,
        setting(&admin, "fsync").await,
        setting(&admin, "synchronous_commit").await,
        setting(&admin, "wal_sync_method").await,
        setting(&admin, "shared_buffers").await,
        args.db_connections,
    );

    if !args.reuse && !args.skip_consume {
        let _ = writeln!(
            report,
            "#### Consume: {} events per run, from a pre-filled stream into an emptied table\n\n\
             | consumers | batch | time | events/s | rows stored | refused | CPU (100 % = one core) | service connections (avg, non-idle) | publish (not timed) |\n\
             |---|---|---|---|---|---|---|---|---|",
            thousands(args.events as f64)
        );
        for &consumers in &args.consumers {
            for &batch in &args.batches {
                let c = consume_run(&args, &database, &bus, &admin, &probe, consumers, batch).await;
                let line = format!(
                    "| {} | {} | {:.2} s | **{}** | {} | {} | {} | {} | {} /s |",
                    c.consumers,
                    c.batch,
                    c.seconds,
                    thousands(args.events as f64 / c.seconds),
                    thousands(c.rows as f64),
                    c.refused,
                    c.cpu,
                    c.states,
                    thousands(args.events as f64 / c.publish_seconds),
                );
                eprintln!("{line}");
                let _ = writeln!(report, "{line}");
            }
        }
        report.push('\n');
    }

    if !args.skip_list {
        if !args.reuse {
            let filled = fill(&probe, args.rows).await;
            eprintln!("{filled}");
            report.push_str(&filled);
        }
        let rows: i64 =
            sqlx::query_scalar("SELECT count(*) FROM purchase_history.purchases").fetch_one(&probe).await.unwrap();
        let identity = CustomerIdentityServiceClient::new(kit::client::channel("http://127.0.0.1:9").unwrap());
        let history = Arc::new(PurchaseHistory::new(
            &database,
            Arc::clone(&bus),
            identity,
            &Config { stream: "bench-unused.purchases".into(), ..Config::default() },
            &kit::metrics::Metrics::new(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = Shutdown::new();
        tokio::spawn(GrpcServer::new("purchases-bench").service(history.service()).run(
            listener,
            async { Ok::<(), std::io::Error>(()) },
            shutdown.clone(),
        ));
        let client = PurchaseHistoryServiceClient::new(kit::client::channel(&url).unwrap());
        // Warm up: every page once (hint bits, caches, connections).
        for case in cases() {
            grpc_case(&client, case, 1, true).await;
            store_case(
                &history,
                &LearnerKey::Username(vocab::LmsUsername::parse(TARGET_USERNAME).expect("a valid username")),
                case,
                1,
            )
            .await;
        }
        let _ = writeln!(
            report,
            "#### List: learner with {TARGET_PURCHASES} purchases among {} rows, one call at a time\n\n\
             | path | what | calls | p50 | p90 | p99 | max | walks |\n|---|---|---|---|---|---|---|---|",
            thousands(rows as f64)
        );
        let sampler = Sampler::start(&admin);
        for case in cases() {
            let mut t = grpc_case(&client, case, args.calls, false).await;
            let line = row("gRPC, by lms_user_id", case, &mut t);
            eprint!("{line}");
            report.push_str(&line);
        }
        for case in cases() {
            let mut t = store_case(
                &history,
                &LearnerKey::Username(vocab::LmsUsername::parse(TARGET_USERNAME).expect("a valid username")),
                case,
                args.calls,
            )
            .await;
            let line = row("store, by username", case, &mut t);
            eprint!("{line}");
            report.push_str(&line);
        }
        for case in cases().into_iter().take(2) {
            let mut t = store_case(
                &history,
                &LearnerKey::LmsUserId(vocab::LmsUserId::new(TARGET_ID).expect("a valid id")),
                case,
                args.calls,
            )
            .await;
            let line = row("store, by lms_user_id", case, &mut t);
            eprint!("{line}");
            report.push_str(&line);
        }
        let (cpu, _) = sampler.finish().await;
        let _ = writeln!(report, "\nCPU during the list phase: {cpu}.\n\nPlans (EXPLAIN ANALYZE, BUFFERS, warm):\n");
        for (by, limit) in [("id", 51), ("id", 501), ("username", 51)] {
            report.push_str(&explain(&probe, by, limit).await);
        }
        shutdown.cancel();
    }

    let _: () = redis::cmd("FLUSHDB").query_async(&mut redis).await.unwrap();
    report.push_str("\nRedis database flushed.\n");
    println!("{report}");
}
