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
use proto::commerce::fulfillment::v1 as pb;
use proto::commerce::fulfillment::v1::fulfillment_service_client::FulfillmentServiceClient;
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

/// Polls the learner's history (`GET /v1/purchases?lms_user_id=`) until a
/// purchase of `order_number` is listed, bounded by the guard.
async fn listed_in_history(load: &Load, lms_user_id: &str, order_number: &str) -> serde_json::Value {
    cluster::wait_until(&format!("order {order_number} listed in the history of {lms_user_id}"), || async {
        let (status, page) = load
            .send(reqwest::Method::GET, &format!("/v1/purchases?lms_user_id={lms_user_id}&page_size=500"), None)
            .await?;
        (status == 200).then_some(())?;
        page["purchases"].as_array()?.iter().find(|p| p["order_number"] == order_number).cloned()
    })
    .await
}

fn grpc_order(number: &str, customer_id: &str) -> pb::FulfillOrderRequest {
    pb::FulfillOrderRequest {
        order_number: number.into(),
        date_placed: Some(kit::time::to_timestamp(chrono::Utc::now() - chrono::Duration::minutes(1))),
        learner: Some(pb::Learner { customer_id: customer_id.into(), ..Default::default() }),
        line_items: vec![pb::LineItem {
            line_item_id: "1".into(),
            product: Some(pb::line_item::Product::CourseRun(pb::CourseRunEnrollment {
                course_run_key: load::COURSE_RUN.into(),
                mode: "verified".into(),
                credit_provider_id: String::new(),
            })),
            title: "Seams 101".into(),
            price: Some(proto::commerce::r#type::v1::Money { currency_code: "USD".into(), amount: "5.00".into() }),
        }],
        ..Default::default()
    }
}

fn odd_order(customer_id: &str, key: &str, title: &str, amount: &str) -> serde_json::Value {
    json!({
        "date_placed": (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339(),
        "learner": {"customer_id": customer_id},
        "line_items": [{
            "line_item_id": "1",
            "course_run": {"course_run_key": key, "mode": "verified"},
            "title": title,
            "price": {"currency_code": "USD", "amount": amount},
        }],
    })
}

/// The seams between the components, each its own process (`serve`): orders
/// that one service used to accept and the next refuse end either refused at
/// the door with a 400 naming the field, or enrolled and listed in the
/// learner's history, none lost; a frozen CustomerIdentity (SIGSTOP) makes an
/// order naming a customer answer 503 or 504, never 500, and the same order
/// succeeds once it is thawed (SIGCONT).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seams_hold_between_processes_odd_orders_and_a_frozen_peer() {
    let mut rig = Rig::start().await;
    let (customer, lms_user_id) = rig.load.learner(0);
    let long_key = format!("course-v1:SeamsX+{}+2026", "L".repeat(120));
    let cases = [
        ("negative price", load::COURSE_RUN.to_string(), "Seams 101", "-5.00", Some("line_items[0].price.amount")),
        (
            "control character in the title",
            load::COURSE_RUN.to_string(),
            "Seams\u{7}101",
            "5.00",
            Some("line_items[0].title"),
        ),
        ("course run key over 100 characters", long_key, "Seams 101", "5.00", None),
        ("free line, title in any script", load::COURSE_RUN.to_string(), "Séminaire — 縫い目 101", "0", None),
    ];
    let mut summary = Vec::new();
    for (i, (case, key, title, amount, refused_field)) in cases.into_iter().enumerate() {
        let number = format!("SEAM-{}-{i}", uuid::Uuid::new_v4().simple());
        let (status, body) = rig
            .load
            .send(
                reqwest::Method::POST,
                &format!("/v1/orders/{number}:fulfill"),
                Some(odd_order(&customer, &key, title, amount)),
            )
            .await
            .expect("an answer");
        match refused_field {
            Some(field) => {
                assert_eq!(status, 400, "{case}: {body}");
                let named: Vec<&str> = body["details"][0]["field_violations"]
                    .as_array()
                    .map(|v| v.iter().filter_map(|v| v["field"].as_str()).collect())
                    .unwrap_or_default();
                assert_eq!(named, [field], "{case}: {body}");
                summary.push(format!("{case}: 400 naming {field}"));
            }
            None => {
                assert_eq!(status, 200, "{case}: {body}");
                let purchase = listed_in_history(&rig.load, &lms_user_id, &number).await;
                assert_eq!(purchase["product_key"], key.as_str(), "{case}");
                assert_eq!(purchase["title"], title, "{case}");
                summary.push(format!("{case}: enrolled and listed"));
            }
        }
    }

    // A stalled CustomerIdentity: the order that names a customer waits for it, then is answered 503 or 504.
    let number = format!("SEAM-FROZEN-{}", uuid::Uuid::new_v4().simple());
    let order = odd_order(&customer, load::COURSE_RUN, "Seams 101", "5.00");
    rig.mesh.signal(Component::CustomerIdentity, "STOP").await;
    let frozen =
        rig.load.send(reqwest::Method::POST, &format!("/v1/orders/{number}:fulfill"), Some(order.clone())).await;
    // Fulfillment itself, asked over gRPC with a deadline longer than its own
    // wait for CustomerIdentity: its answer is its classification of the stall.
    let mut secret = commerce_mesh::MeshConfig::default();
    secret.auth.development_secret = Some(kit::auth::Secret::new(cluster::GATEWAY_SECRET.to_string()));
    let credential = support::developer(&secret, &["fulfillment:write"]);
    let channel = kit::client::channel_as(&rig.mesh.grpc_url(Component::Fulfillment), credential).expect("channel");
    let mut fulfillment = FulfillmentServiceClient::new(channel);
    let mut direct = tonic::Request::new(grpc_order(&format!("{number}-GRPC"), &customer));
    direct.set_timeout(Duration::from_secs(30));
    let direct = fulfillment.fulfill_order(direct).await.expect_err("refused while frozen");
    rig.mesh.signal(Component::CustomerIdentity, "CONT").await;
    assert_eq!(direct.code(), tonic::Code::DeadlineExceeded, "{direct:?}");
    assert!(kit::error::retry_after(&direct).is_some(), "with RetryInfo: {direct:?}");
    let (status, body) = frozen.expect("an answer while CustomerIdentity is frozen");
    assert!([503, 504].contains(&status), "a frozen peer is 503 or 504, never {status}: {body}");
    summary.push(format!("frozen CustomerIdentity: {status} ({})", body["message"]));
    summary.push(format!("frozen CustomerIdentity, Fulfillment over gRPC: {:?}", direct.code()));
    let thawed = cluster::wait_until("the same order is accepted once CustomerIdentity is thawed", || async {
        let (status, _) =
            rig.load.send(reqwest::Method::POST, &format!("/v1/orders/{number}:fulfill"), Some(order.clone())).await?;
        (status == 200).then_some(status)
    })
    .await;
    assert_eq!(thawed, 200);
    listed_in_history(&rig.load, &lms_user_id, &number).await;
    summary.push("after SIGCONT: the same order enrolled and listed".into());
    let figures = json!({
        "suite": "seams",
        "cases": summary,
        "orders": 6,
        "lost": 0,
        "server_errors_500": 0,
    });
    println!("RELIABILITY-FIGURES {figures}");
}
