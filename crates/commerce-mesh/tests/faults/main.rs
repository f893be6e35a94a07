//! Faults: the mesh as separate processes (`commerce-mesh serve <component>`)
//! on PostgreSQL and Redis servers of its own, under a steady load of orders,
//! purchases and catalog events through the REST gateway, while each
//! component is killed (SIGKILL) and restarted, and Redis and PostgreSQL are
//! crashed and restarted. Afterwards, from the databases: every accepted order
//! has exactly one fulfillment per line item, SUCCEEDED or FAILED with a
//! reason, and none SUCCEEDED twice; every accepted purchase, and the purchase
//! of every SUCCEEDED line, is stored; every accepted catalog event has its
//! one ingestion, in the state it was answered with. No answer is a 500.
//!
//! The sizes here are quick; `scripts/reliability` runs the same tests longer
//! (`MESH_FAULTS_PHASE_SECONDS`, `MESH_FAULTS_DOWN_MS`, `MESH_FAULTS_RATE`)
//! and collects the `RELIABILITY-FIGURES` line each prints.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

mod cluster;
mod load;
#[path = "../support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use cluster::{MeshProcesses, PrivatePostgres, PrivateRedis};
use commerce_mesh::Component;
use commerce_mesh::dev_lms::{Credentials, DevLms};
use kit::shutdown::Shutdown;
use load::{Ledger, Load, Rates};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// How long the load runs around each fault, how long a killed thing stays
/// down, and the load's rates: quick by default, longer from the environment.
struct Sizes {
    phase: Duration,
    down: Duration,
    rates: Rates,
}

fn sizes() -> Sizes {
    let number = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let rate = number("MESH_FAULTS_RATE", 10) as u32;
    Sizes {
        phase: Duration::from_secs(number("MESH_FAULTS_PHASE_SECONDS", 1)),
        down: Duration::from_millis(number("MESH_FAULTS_DOWN_MS", 500)),
        rates: Rates { orders: rate, purchases: rate, events: (rate / 2).max(1) },
    }
}

/// Everything the mesh and its dependencies need, started.
struct Rig {
    postgres: PrivatePostgres,
    redis: PrivateRedis,
    lms: DevLms,
    mesh: MeshProcesses,
    load: Load,
}

impl Rig {
    async fn start() -> Self {
        let postgres = PrivatePostgres::start().await;
        let redis = PrivateRedis::start().await;
        let lms = DevLms::bind_and_start("127.0.0.1:0".parse().unwrap(), Credentials::development(), Shutdown::new())
            .await
            .expect("the LMS stub starts");
        let mesh = MeshProcesses::start(&postgres.url(), &redis.url(), &lms.url()).await;
        let load = Load::new(mesh.gateway_url());
        load.link_customers().await;
        Self { postgres, redis, lms, mesh, load }
    }

    /// Starts the load; the returned token stops it.
    fn start_load(&self, rates: Rates) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let stop = CancellationToken::new();
        let load = self.load.clone();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move { load.run(rates, stop).await }
        });
        (stop, task)
    }
}

/// What the databases and the LMS hold for what was accepted.
#[derive(Debug, Default)]
struct Outcome {
    lines: usize,
    succeeded: usize,
    failed: usize,
    purchases_expected: usize,
    events: usize,
    lost: Vec<String>,
    duplicates: Vec<String>,
}

/// Waits (bounded) for every accepted item to settle, then checks each.
async fn verify(rig: &Rig) -> Outcome {
    let ledger = rig.load.ledger.lock().expect("ledger").clone();
    let pool = sqlx::PgPool::connect(&rig.postgres.url()).await.expect("connect");
    let orders: Vec<String> = ledger.orders.keys().cloned().collect();

    // Settled: no accepted line still PENDING or IN_PROGRESS, and the
    // purchases stream consumed. Bounded; what is not settled by then is lost.
    let deadline = tokio::time::Instant::now() + cluster::GUARD;
    let mut outcome;
    loop {
        outcome = check(&pool, &ledger, &orders, rig).await;
        if outcome.lost.is_empty() || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pool.close().await;
    outcome
}

async fn check(pool: &sqlx::PgPool, ledger: &Ledger, orders: &[String], rig: &Rig) -> Outcome {
    let mut outcome = Outcome::default();
    let rows: Vec<(String, String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT fulfillment_id, order_number, line_item_id, state, last_error_message
         FROM fulfillment.fulfillments WHERE order_number = ANY($1)",
    )
    .bind(orders)
    .fetch_all(pool)
    .await
    .expect("fulfillments");
    let mut purchases_expected: BTreeSet<String> = ledger.purchases.clone();
    for (order, lines) in &ledger.orders {
        for line in lines {
            outcome.lines += 1;
            let found: Vec<_> = rows.iter().filter(|r| &r.1 == order && &r.2 == line).collect();
            match found.as_slice() {
                [] => outcome.lost.push(format!("order {order} line {line}: no fulfillment")),
                [(id, _, _, state, error)] => match state.as_str() {
                    "SUCCEEDED" => {
                        outcome.succeeded += 1;
                        purchases_expected.insert(format!("fulfillment:{id}"));
                    }
                    "FAILED" if error.as_deref().is_some_and(|e| !e.is_empty()) => outcome.failed += 1,
                    other => outcome.lost.push(format!("order {order} line {line}: {other}, {error:?}")),
                },
                more => outcome.duplicates.push(format!("order {order} line {line}: {} fulfillments", more.len())),
            }
        }
    }
    let twice: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT f.order_number, f.line_item_id, count(*) FROM fulfillment.fulfillment_transitions t
         JOIN fulfillment.fulfillments f USING (fulfillment_id)
         WHERE t.to_state = 'SUCCEEDED' AND f.order_number = ANY($1)
         GROUP BY 1, 2 HAVING count(*) > 1",
    )
    .bind(orders)
    .fetch_all(pool)
    .await
    .expect("transitions");
    outcome.duplicates.extend(twice.into_iter().map(|(o, l, n)| format!("order {o} line {l}: SUCCEEDED {n} times")));

    outcome.purchases_expected = purchases_expected.len();
    let expected: Vec<String> = purchases_expected.into_iter().collect();
    let stored: BTreeSet<String> =
        sqlx::query_scalar("SELECT purchase_id FROM purchase_history.purchases WHERE purchase_id = ANY($1)")
            .bind(&expected)
            .fetch_all(pool)
            .await
            .expect("purchases")
            .into_iter()
            .collect();
    outcome
        .lost
        .extend(expected.iter().filter(|id| !stored.contains(*id)).map(|id| format!("purchase {id}: not stored")));

    let event_ids: Vec<String> = ledger.events.keys().cloned().collect();
    let ingested: Vec<(String, String)> = sqlx::query_as(
        "SELECT event_id, state FROM catalog_ingest.ingestions WHERE source = $1 AND event_id = ANY($2)",
    )
    .bind(load::SOURCE)
    .bind(&event_ids)
    .fetch_all(pool)
    .await
    .expect("ingestions");
    outcome.events = ledger.events.len();
    for (event, answered) in &ledger.events {
        match ingested.iter().find(|(id, _)| id == event) {
            None => outcome.lost.push(format!("catalog event {event}: no ingestion")),
            Some((_, state)) if !answered.ends_with(state.as_str()) => {
                outcome.lost.push(format!("catalog event {event}: stored {state}, answered {answered}"))
            }
            Some(_) => {}
        }
    }

    // The LMS holds an enrollment for every learner with a SUCCEEDED line.
    let enrollments = rig.lms.enrollments();
    if outcome.succeeded > 0 && enrollments.iter().all(|e| e.course_details.course_id != load::COURSE_RUN) {
        outcome.lost.push("no enrollment reached the LMS".into());
    }
    outcome
}

/// Prints the line `scripts/reliability` collects into docs/RELIABILITY.md.
fn report(suite: &str, faults: &[String], rig: &Rig, outcome: &Outcome) {
    let ledger = rig.load.ledger.lock().expect("ledger");
    let figures = json!({
        "suite": suite,
        "faults": faults,
        "requests": ledger.requests,
        "answers": ledger.statuses,
        "no_answer": ledger.transport_errors,
        "unavailable_502_503_504": ledger.unavailable(),
        "server_errors_other_5xx": ledger.server_errors(),
        "accepted": {
            "orders": ledger.orders.len(),
            "line_items": outcome.lines,
            "purchases": ledger.purchases.len(),
            "catalog_events": outcome.events,
        },
        "settled": {"succeeded": outcome.succeeded, "failed": outcome.failed, "purchases_stored": outcome.purchases_expected},
        "refused_4xx": ledger.refused.len(),
        "abandoned": ledger.abandoned.len(),
        "lost": outcome.lost.len(),
        "duplicates": outcome.duplicates.len(),
    });
    println!("RELIABILITY-FIGURES {figures}");
}

fn assert_clean(rig: &Rig, outcome: &Outcome) {
    let ledger = rig.load.ledger.lock().expect("ledger");
    let logs = || rig.mesh.logs_tail(30);
    assert!(outcome.lines > 0 && !ledger.purchases.is_empty() && outcome.events > 0, "the load was accepted");
    assert!(outcome.lost.is_empty(), "lost: {:?}\n{}", outcome.lost, logs());
    assert!(outcome.duplicates.is_empty(), "duplicated: {:?}", outcome.duplicates);
    assert_eq!(
        ledger.server_errors(),
        0,
        "answers: {:?}: {:?}\n{}",
        ledger.statuses,
        ledger.server_error_samples,
        logs()
    );
    assert!(ledger.refused.is_empty(), "refused: {:?}", ledger.refused);
    assert!(ledger.abandoned.is_empty(), "never accepted: {:?}", ledger.abandoned);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_each_component_under_load_loses_and_duplicates_nothing() {
    let sizes = sizes();
    let mut rig = Rig::start().await;
    let (stop, load) = rig.start_load(sizes.rates);
    let mut faults = Vec::new();
    for component in Component::DISPLAY_ORDER {
        // The load keeps running while time passes: this is the experiment's
        // length, not a wait for something to happen.
        tokio::time::sleep(sizes.phase).await;
        rig.mesh.kill9(component).await;
        tokio::time::sleep(sizes.down).await;
        rig.mesh.restart(component).await;
        faults.push(format!("kill -9 {component}"));
    }
    tokio::time::sleep(sizes.phase).await;
    stop.cancel();
    load.await.expect("load");
    let outcome = verify(&rig).await;
    report("process-loss", &faults, &rig, &outcome);
    assert_clean(&rig, &outcome);
    for component in Component::ALL {
        assert_eq!(rig.mesh.starts[&component], 2, "{component} was killed once and restarted once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_and_postgres_outages_are_ridden_out_without_restarts_or_losses() {
    let sizes = sizes();
    let mut rig = Rig::start().await;
    let (stop, load) = rig.start_load(sizes.rates);
    let mut faults = Vec::new();

    tokio::time::sleep(sizes.phase).await;
    rig.redis.crash().await;
    tokio::time::sleep(sizes.down).await;
    rig.redis.start_again().await;
    faults.push("Redis killed (SIGKILL) and restarted".to_string());

    tokio::time::sleep(sizes.phase).await;
    rig.postgres.crash().await;
    tokio::time::sleep(sizes.down).await;
    rig.postgres.start_again().await;
    faults.push("PostgreSQL crashed (immediate stop) and restarted".to_string());

    tokio::time::sleep(sizes.phase).await;
    stop.cancel();
    load.await.expect("load");
    let outcome = verify(&rig).await;
    report("dependency-loss", &faults, &rig, &outcome);
    assert_clean(&rig, &outcome);
    let unavailable = rig.load.ledger.lock().expect("ledger").unavailable();
    assert!(unavailable > 0, "the outages were felt: some answers were 503 while a dependency was down");
    for component in Component::ALL {
        assert!(rig.mesh.still_running(component), "{component} recovered without a restart");
        assert_eq!(rig.mesh.starts[&component], 1, "{component} was started once");
    }
}
