//! Benchmark of find and repair at scale (issue #20): `--jobs` fulfillment
//! jobs (1 M by default) in Postgres, then the queries support staff and SREs
//! run, through the real store (`Store::list`, the page and its total, and
//! `Store::redrive_matching` as a dry run), each `--runs` times; prints p50
//! and p99 as Markdown for docs/BENCHMARKS.md.
//!
//! ```sh
//! cargo run --release -p fulfillment --example list_fulfillments -- --jobs 1000000 --runs 200
//! ```
//!
//! The database `fulfillment_list_bench` is recreated and migrated (schema
//! `fulfillment`, every index of the migrations), then filled in one
//! `INSERT ... SELECT generate_series` per 100,000 jobs: one line per order,
//! 97 % SUCCEEDED, 1 % FAILED, 0.5 % each REVOKE_FAILED, PENDING, REVOKED and
//! CANCELLED; 200 course runs; three source systems; the last change spread
//! over 30 days; a last error on the failures (and on 1 % of the successes,
//! retried once). Then `VACUUM ANALYZE`, as autovacuum would.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a harness, not a service: fail loudly

use std::time::{Duration, Instant};

use chrono::Utc;
use clap::Parser;
use fulfillment::domain::{ErrorKind, JobState, Learner, LearnerRef, Mode, Order, OrderHeader, OrderLine, Product};
use fulfillment::filter::{JobFilter, PageCursor, UpdateWindow};
use fulfillment::store::Store;
use fulfillment::store::postgres::PostgresStore;
use kit::bench::{ms, percentile, thousands, with_database};
use kit::db::{Database, DatabaseConfig};
use vocab::{CourseRunKey, LineItemId, LmsUserId, LmsUsername, OrderNumber, Price, SourceSystem, Title};

#[derive(Parser, Debug)]
#[command(about = "ListFulfillments and RetryFulfillments (dry run) at scale, on Postgres")]
struct Args {
    /// Postgres server (admin connection); the harness recreates the database `fulfillment_list_bench` there.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    database_url: String,
    /// Jobs to store.
    #[arg(long, default_value_t = 1_000_000)]
    jobs: i64,
    /// Times each query runs.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// Keep the database of a previous run (same `--jobs`) instead of filling it again.
    #[arg(long)]
    skip_load: bool,
}

const DATABASE: &str = "fulfillment_list_bench";
const BATCH: i64 = 100_000;

/// A job's spec as the service stores it, to vary per row in SQL.
fn template() -> String {
    let order = Order::new(
        OrderHeader {
            order_number: OrderNumber::parse("BENCH-0").unwrap(),
            order_id: None,
            order_version: 1,
            date_placed: Utc::now(),
            source_system: Some(SourceSystem::parse("commercetools").unwrap()),
            email_opt_in: false,
        },
        LearnerRef::Lms(learner()),
        vec![OrderLine {
            line_item_id: LineItemId::parse("l1").unwrap(),
            product: Product::course_run(
                CourseRunKey::parse("course-v1:Bench+C0+2026_T1").unwrap(),
                Mode::Verified,
                "",
            )
            .unwrap(),
            title: Title::parse("Bench course").unwrap(),
            price: Price::parse("USD", "49.00").unwrap(),
        }],
    );
    serde_json::to_string(&order.jobs(&learner())[0]).unwrap()
}

fn learner() -> Learner {
    Learner {
        customer_id: None,
        lms_user_id: LmsUserId::parse("42").unwrap(),
        lms_username: LmsUsername::parse("bench").unwrap(),
    }
}

async fn fill(pool: &sqlx::PgPool, jobs: i64) {
    let template = template();
    let started = Instant::now();
    let mut from = 0;
    while from < jobs {
        let to = (from + BATCH).min(jobs);
        sqlx::query(
            "WITH g AS (
                 SELECT i, now() - (i::float8 / $3) * interval '30 days' - random() * interval '1 minute' AS changed,
                        CASE WHEN i % 1000 < 10 THEN 'FAILED' WHEN i % 1000 < 15 THEN 'REVOKE_FAILED'
                             WHEN i % 1000 < 20 THEN 'PENDING' WHEN i % 1000 < 25 THEN 'REVOKED'
                             WHEN i % 1000 < 30 THEN 'CANCELLED' ELSE 'SUCCEEDED' END AS state
                 FROM generate_series($1::int8, $2::int8 - 1) AS i
             )
             INSERT INTO fulfillments (fulfillment_id, order_number, line_item_id, position, spec, fingerprint, state,
                                       attempts, next_attempt_at, last_error_kind, last_error_status,
                                       last_error_message, create_time, update_time)
             SELECT md5(i::text)::uuid::text, 'BENCH-' || i, 'l1', 0,
                    jsonb_set(jsonb_set(jsonb_set($4::jsonb,
                        '{header,order_number}', to_jsonb('BENCH-' || i)),
                        '{line,product,course_run_key}', to_jsonb('course-v1:Bench+C' || (i % 200) || '+2026_T1')),
                        '{header,source_system}', to_jsonb((ARRAY['commercetools', 'shopify', 'legacy'])[i % 3 + 1])),
                    md5(i::text), state, 1,
                    CASE WHEN state = 'PENDING' THEN changed END,
                    CASE WHEN state IN ('FAILED', 'REVOKE_FAILED') THEN
                              (ARRAY['REJECTED', 'ATTEMPTS_EXHAUSTED', 'TIMEOUT'])[i % 3 + 1]
                         WHEN i % 100 = 50 THEN 'TIMEOUT' END,
                    CASE WHEN state IN ('FAILED', 'REVOKE_FAILED') OR i % 100 = 50 THEN 400 END,
                    CASE WHEN state IN ('FAILED', 'REVOKE_FAILED') OR i % 100 = 50 THEN 'refused' END,
                    changed - interval '1 minute', changed
             FROM g",
        )
        .bind(from)
        .bind(to)
        .bind(jobs as f64)
        .bind(&template)
        .execute(pool)
        .await
        .expect("jobs inserted");
        from = to;
        eprintln!("{} jobs stored ({:.0} s)", thousands(to as f64), started.elapsed().as_secs_f64());
    }
    sqlx::query("VACUUM ANALYZE fulfillments").execute(pool).await.expect("vacuum");
    eprintln!("filled and analysed in {:.0} s", started.elapsed().as_secs_f64());
}

fn state(state: JobState) -> JobFilter {
    JobFilter { states: vec![state], ..Default::default() }
}

fn run(key: u32) -> Option<CourseRunKey> {
    Some(CourseRunKey::parse(&format!("course-v1:Bench+C{key}+2026_T1")).unwrap())
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let url = with_database(&args.database_url, DATABASE, "list-bench");
    if !args.skip_load {
        let admin = sqlx::PgPool::connect(&args.database_url).await.expect("admin connection");
        kit::bench::recreate_database(&admin, DATABASE).await.expect("bench database recreated");
    }
    let config =
        DatabaseConfig { url: url.clone(), schema: Some(fulfillment::NAME.into()), ..DatabaseConfig::default() };
    kit::db::migrate(&config, &fulfillment::MIGRATIONS).await.expect("migrate");
    let Database::Postgres(pool) = Database::open(&config).expect("open") else { panic!("a Postgres URL") };
    if !args.skip_load {
        fill(&pool, args.jobs).await;
    }
    let store = PostgresStore::new(pool.clone());
    let now = Utc::now();
    let since = |hours: i64| UpdateWindow::new(Some(now - chrono::Duration::hours(hours)), None).unwrap();
    // A cursor twenty pages deep into SUCCEEDED, as a caller paging would hold.
    let mut deep: Option<PageCursor> = None;
    for _ in 0..20 {
        let page = store.list(&state(JobState::Succeeded), deep.as_ref(), 50).await.unwrap();
        let last = page.jobs.last().unwrap();
        deep = Some(PageCursor { updated_at: last.updated_at, id: last.id.clone() });
    }
    let queries: Vec<(&str, JobFilter, Option<PageCursor>)> = vec![
        ("FAILED", state(JobState::Failed), None),
        ("FAILED, changed in the last 2 h", JobFilter { updated: since(2), ..state(JobState::Failed) }, None),
        (
            "FAILED or REVOKE_FAILED",
            JobFilter { states: vec![JobState::Failed, JobState::RevokeFailed], ..Default::default() },
            None,
        ),
        ("FAILED, one course run", JobFilter { course_run_key: run(7), ..state(JobState::Failed) }, None),
        ("one course run, any state", JobFilter { course_run_key: run(7), ..Default::default() }, None),
        ("last error REJECTED", JobFilter { error_kind: Some(ErrorKind::Rejected), ..Default::default() }, None),
        (
            "FAILED from one source system",
            JobFilter { source_system: Some(SourceSystem::parse("shopify").unwrap()), ..state(JobState::Failed) },
            None,
        ),
        ("changed in the last 2 h, any state", JobFilter { updated: since(2), ..Default::default() }, None),
        ("SUCCEEDED, page 21 (keyset)", state(JobState::Succeeded), deep),
        ("everything (the total counts 1 M)", JobFilter::default(), None),
    ];
    let mut out = String::from("| query (page of 50) | matching | p50 | p99 |\n|---|---:|---:|---:|\n");
    for (name, filter, after) in &queries {
        let mut times = Vec::with_capacity(args.runs);
        let mut total = 0;
        for _ in 0..args.runs {
            let started = Instant::now();
            let found = store.list(filter, after.as_ref(), 51).await.unwrap();
            times.push(started.elapsed());
            total = found.total;
        }
        out.push_str(&row(name, total, &mut times));
    }
    // RetryFulfillments' decision, changing nothing: the FAILED of one course run (about 50).
    let one_run = JobFilter { course_run_key: run(7), ..state(JobState::Failed) };
    let mut times = Vec::with_capacity(args.runs);
    let mut matched = 0;
    for _ in 0..args.runs {
        let started = Instant::now();
        let decided = store.redrive_matching(&one_run, 1000, Some("bench"), true, now).await.unwrap();
        times.push(started.elapsed());
        if let fulfillment::store::BulkRedriven::Redriven(ids) = decided {
            matched = ids.len() as u64;
        }
    }
    out.push_str(&row("RetryFulfillments dry run, FAILED of one course run", matched, &mut times));
    println!("{} jobs, {} runs of each query, one at a time\n\n{out}", thousands(args.jobs as f64), args.runs);
}

fn row(name: &str, total: u64, times: &mut [Duration]) -> String {
    times.sort();
    format!(
        "| {name} | {} | {} | {} |\n",
        thousands(total as f64),
        ms(percentile(times, 0.5)),
        ms(percentile(times, 0.99))
    )
}
