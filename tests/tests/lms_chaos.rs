//! LMS chaos (issue 10): the whole mesh in-process, Fulfillment pointed at a
//! [`ChaosLms`] that answers half the enrollment and entitlement requests 503,
//! a tenth too late for Fulfillment's request timeout, a tenth 429 with
//! `Retry-After`, and always 400 for a few courses.
//!
//! Claims: every other job ends SUCCEEDED exactly once (one enrollment or
//! entitlement in the LMS, as many attempts as LMS attempts, no request after
//! a success was heard, one completion event and one purchase); every 400 job
//! is FAILED with a reason after exactly one request; `Retry-After` is
//! honoured; the waits between attempts follow the retry policy and grow.
//!
//! Quick by default (40 orders, a fixed seed); larger on demand, e.g.
//! `MESH_CHAOS_ORDERS=500 MESH_CHAOS_SEED=7 cargo nextest run -p mesh-tests --test lms_chaos --no-capture`.
//! Either way it prints one `RELIABILITY-FIGURES {json}` line.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use commerce_mesh::Component;
use kit::shutdown::Shutdown;
use mesh_tests::chaos_lms::{self, Answer, ChaosConfig, ChaosLms, Endpoint, LmsRequest, Subject};
use prost::Message;
use proto::commerce::events::v1::{EventEnvelope, event_envelope::Payload};
use proto::commerce::fulfillment::v1 as pb;
use proto::commerce::fulfillment::v1::fulfillment_service_client::FulfillmentServiceClient;
use proto::commerce::identity::v1::UpsertCustomerRequest;
use proto::commerce::identity::v1::customer_identity_service_client::CustomerIdentityServiceClient;
use proto::commerce::purchases::v1::purchase_history_service_client::PurchaseHistoryServiceClient;
use proto::commerce::purchases::v1::{ListPurchasesRequest, list_purchases_request};
use serde_json::json;

const DEFAULT_ORDERS: usize = 40;
const DEFAULT_SEED: u64 = 7;
/// Orders go to these many learners in turn.
const LEARNERS: usize = 5;
/// Fulfillment's LMS request timeout; a slow answer comes after twice this.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(300);
const RETRY_BASE: Duration = Duration::from_millis(20);
const RETRY_CAP: Duration = Duration::from_millis(400);
/// Attempts before a job fails for good: none should. An enrollment attempt fails 70 % of the time; an
/// entitlement attempt makes two chaotic calls (lookup, then grant) and fails about 88 % of the time, so 60
/// attempts would be exhausted about once in 2000 entitlement jobs, 200 about once in 10^11.
const MAX_ATTEMPTS: u32 = 200;
/// How often the test looks at the jobs while it waits for them.
const POLL: Duration = Duration::from_millis(20);
/// What the stored times keep: a scheduled wait read back may be this much shorter than the one computed.
const STORED_PRECISION: Duration = Duration::from_micros(1);
/// Attempts from this one on have a backoff ceiling of at least 4 × the first's: their gaps show growth.
const LATE_ATTEMPT: u32 = 3;

/// Every 15th order (from the 8th) buys a course the LMS always refuses with 400.
fn rejected(i: usize) -> bool {
    i % 15 == 7
}

/// Every 8th order (from the 4th) buys a program entitlement rather than a course run.
fn entitlement(i: usize) -> bool {
    !rejected(i) && i % 8 == 3
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value.parse().unwrap_or_else(|_| panic!("{name}={value:?} does not parse")),
        Err(_) => default,
    }
}

fn username(learner: usize) -> String {
    format!("chaos-learner-{learner}")
}

fn customer_id(learner: usize) -> String {
    format!("chaos-cust-{learner}")
}

/// One order the test places: one line item, so one job.
struct Planned {
    number: String,
    learner: usize,
    /// The course run key or, for an entitlement, the course UUID: unique per order.
    course: String,
    entitlement: bool,
    rejected: bool,
}

impl Planned {
    fn new(i: usize) -> Self {
        let entitlement = entitlement(i);
        let course = if entitlement {
            format!("00000000-0000-4000-8000-{i:012}")
        } else {
            format!("course-v1:ChaosX+C{i:05}+2025_T1")
        };
        Self { number: format!("CHAOS-{i:05}"), learner: i % LEARNERS, course, entitlement, rejected: rejected(i) }
    }

    /// What the LMS sees a request of this job as.
    fn subject(&self) -> Subject {
        Subject { user: username(self.learner), course: self.course.clone() }
    }

    fn request(&self) -> pb::FulfillOrderRequest {
        let product = if self.entitlement {
            pb::line_item::Product::Entitlement(pb::ProgramEntitlement {
                course_uuid: self.course.clone(),
                mode: "verified".into(),
            })
        } else {
            pb::line_item::Product::CourseRun(pb::CourseRunEnrollment {
                course_run_key: self.course.clone(),
                mode: "verified".into(),
                credit_provider_id: String::new(),
            })
        };
        pb::FulfillOrderRequest {
            order_number: self.number.clone(),
            order_id: format!("id-{}", self.number),
            date_placed: Some(prost_types::Timestamp { seconds: 1_763_000_000, nanos: 0 }),
            source_system: "chaos".into(),
            learner: Some(pb::Learner { customer_id: customer_id(self.learner), ..Default::default() }),
            line_items: vec![pb::LineItem {
                line_item_id: "1".into(),
                product: Some(product),
                title: format!("Chaos {}", self.course),
                price: Some(proto::commerce::r#type::v1::Money { currency_code: "USD".into(), amount: "49.00".into() }),
            }],
            ..Default::default()
        }
    }
}

/// One attempt as the LMS saw it: the request that started it and the one whose answer decided it.
struct Attempt<'a> {
    first: &'a LmsRequest,
    decisive: &'a LmsRequest,
}

/// A job's requests as attempts: each enrollment request is one; for an
/// entitlement, each lookup starts one and a grant belongs to the lookup before it.
fn attempts<'a>(requests: &[&'a LmsRequest]) -> Result<Vec<Attempt<'a>>, String> {
    let mut attempts: Vec<Attempt<'a>> = Vec::new();
    for &request in requests {
        match request.endpoint {
            Endpoint::Enroll | Endpoint::FindEntitlement => {
                attempts.push(Attempt { first: request, decisive: request })
            }
            Endpoint::GrantEntitlement => match attempts.last_mut() {
                Some(attempt) if attempt.decisive.endpoint == Endpoint::FindEntitlement => attempt.decisive = request,
                _ => return Err(format!("a grant without a lookup before it: {request:?}")),
            },
            Endpoint::Token => {}
        }
    }
    Ok(attempts)
}

/// A wait Fulfillment scheduled, read back while the job was PENDING: `next_attempt_time - update_time`.
struct ScheduledWait {
    /// The attempt that failed.
    attempt: u32,
    wait: Duration,
    lms_status: i32,
}

fn micros(timestamp: &prost_types::Timestamp) -> i64 {
    timestamp.seconds * 1_000_000 + i64::from(timestamp.nanos) / 1000
}

fn ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e4).round() / 10.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_succeeds_exactly_once_through_a_chaotic_lms() {
    let orders: usize = env_or("MESH_CHAOS_ORDERS", DEFAULT_ORDERS);
    let seed: u64 = env_or("MESH_CHAOS_SEED", DEFAULT_SEED);
    // Guards against a hang, not a timing assertion: generous on purpose.
    let guard = Duration::from_secs(120) + Duration::from_millis(500) * u32::try_from(orders).unwrap();
    let planned: Vec<Planned> = (0..orders).map(Planned::new).collect();

    let lms = ChaosLms::start(ChaosConfig {
        seed,
        slow_answer_after: REQUEST_TIMEOUT * 2,
        rejected_courses: planned.iter().filter(|p| p.rejected).map(|p| p.course.clone()).collect(),
        ..ChaosConfig::default()
    })
    .await
    .expect("chaos LMS starts");
    let retry_after = Duration::from_secs(lms.config().retry_after_seconds);

    let data = tempfile::tempdir().expect("tempdir");
    let mut config = commerce_mesh::MeshConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
    config.use_ephemeral_ports();
    let settings = &mut config.fulfillment.settings;
    settings.lms.url = lms.url();
    settings.lms.client_id = chaos_lms::CLIENT_ID.into();
    settings.lms.client_secret = chaos_lms::CLIENT_SECRET.into();
    settings.lms.request_timeout = REQUEST_TIMEOUT;
    settings.retry.base = RETRY_BASE;
    settings.retry.cap = RETRY_CAP;
    settings.retry.max_attempts = MAX_ATTEMPTS;
    let policy = settings.retry;
    let mesh = commerce_mesh::start(config, Shutdown::new()).await.expect("mesh starts");
    for component in [Component::Fulfillment, Component::CustomerIdentity, Component::PurchaseHistory] {
        mesh_tests::health::wait_serving(&mesh.grpc_url(component), guard).await.expect("ready");
    }
    let channel = |component| mesh.grpc_channel(component);
    let mut identity = CustomerIdentityServiceClient::new(channel(Component::CustomerIdentity));
    let mut fulfillment = FulfillmentServiceClient::new(channel(Component::Fulfillment));
    let mut history = PurchaseHistoryServiceClient::new(channel(Component::PurchaseHistory));
    for learner in 0..LEARNERS {
        identity
            .upsert_customer(UpsertCustomerRequest {
                customer_id: customer_id(learner),
                lms_user_id: (5000 + learner).to_string(),
                lms_username: username(learner),
                email: String::new(),
                expected_version: None,
            })
            .await
            .expect("customer linked");
    }

    // The auditor's group exists before the first event: retention drops what every
    // group has acknowledged, so a group made afterwards would find the streams trimmed.
    let bus = kit::bus::open(None, &data.path().join("events.db")).expect("event log");
    for stream in [proto::streams::FULFILLMENTS, proto::streams::PURCHASES] {
        bus.ensure_group(stream, "chaos-audit").await.unwrap();
    }

    // Place every order; the workers start on the first while the last are placed.
    let started = Instant::now();
    let mut ids = Vec::with_capacity(orders);
    for order in &planned {
        let accepted = fulfillment.fulfill_order(order.request()).await.expect("order accepted").into_inner();
        assert_eq!(accepted.fulfillments.len(), 1);
        ids.push(accepted.fulfillments[0].fulfillment_id.clone());
    }

    // Wait (bounded) until every job is terminal, reading back the waits scheduled along the way.
    let mut finished: Vec<Option<pb::Fulfillment>> = vec![None; orders];
    let mut scheduled: BTreeMap<(usize, u32), ScheduledWait> = BTreeMap::new();
    tokio::time::timeout(guard, async {
        loop {
            let mut open = 0;
            for (index, id) in ids.iter().enumerate() {
                if finished[index].is_some() {
                    continue;
                }
                let job = mesh_tests::orders::fulfillment(&mut fulfillment, id).await.expect("get");
                match job.state() {
                    pb::FulfillmentState::Succeeded | pb::FulfillmentState::Failed => finished[index] = Some(job),
                    pb::FulfillmentState::Pending => {
                        open += 1;
                        if let (Some(due), Some(updated), Ok(attempt)) =
                            (&job.next_attempt_time, &job.update_time, u32::try_from(job.attempts))
                            && attempt > 0
                        {
                            let wait = Duration::from_micros(u64::try_from(micros(due) - micros(updated)).unwrap());
                            let lms_status = job.last_error.as_ref().map_or(0, |e| e.lms_status);
                            scheduled.insert((index, attempt), ScheduledWait { attempt, wait, lms_status });
                        }
                    }
                    _ => open += 1,
                }
            }
            if open == 0 {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not every job finished within {guard:?}"));
    let wall = started.elapsed();
    let finished: Vec<pb::Fulfillment> = finished.into_iter().map(Option::unwrap).collect();
    let expected_successes = planned.iter().filter(|p| !p.rejected).count();

    // What was announced: every completion event on the stream, and what PurchaseHistory stored.
    // Per fulfillment id, the entitlement uuid of each completion event for it.
    let mut completions: HashMap<String, Vec<String>> = HashMap::new();
    let mut purchase_events: HashMap<String, usize> = HashMap::new();
    // Per fulfillment id, the FulfillmentFailed events for it: a job ends in one event, completed or failed.
    let mut failures: HashMap<String, usize> = HashMap::new();
    for stream in [proto::streams::FULFILLMENTS, proto::streams::PURCHASES] {
        let expected = if stream == proto::streams::FULFILLMENTS { orders } else { expected_successes };
        let mut read = 0;
        tokio::time::timeout(guard, async {
            loop {
                let batch = bus.read(stream, "chaos-audit", "auditor", 1000, Duration::from_millis(250)).await.unwrap();
                // Once as many as expected are in, one empty read shows nothing more is coming.
                if batch.is_empty() && read >= expected {
                    return;
                }
                read += batch.len();
                for delivery in batch {
                    let envelope = EventEnvelope::decode(delivery.payload.as_slice()).unwrap();
                    match envelope.payload {
                        Some(Payload::FulfillmentCompleted(done)) => {
                            completions.entry(done.fulfillment_id.clone()).or_default().push(done.entitlement_uuid)
                        }
                        Some(Payload::PurchaseRecorded(purchase)) => {
                            *purchase_events.entry(purchase.purchase_id).or_default() += 1;
                        }
                        Some(Payload::FulfillmentFailed(failed)) => {
                            *failures.entry(failed.fulfillment_id).or_default() += 1;
                        }
                        other => panic!("unexpected event on {stream}: {other:?}"),
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{stream}: {read} events of {expected} within {guard:?}"));
    }
    let mut stored_purchases: HashMap<String, usize> = HashMap::new();
    tokio::time::timeout(guard, async {
        loop {
            stored_purchases.clear();
            for learner in 0..LEARNERS {
                let mut page_token = String::new();
                loop {
                    let page = history
                        .list_purchases(ListPurchasesRequest {
                            learner: Some(list_purchases_request::Learner::Username(username(learner))),
                            page_size: 500,
                            page_token,
                            hide_refunded: false,
                        })
                        .await
                        .expect("purchases listed")
                        .into_inner();
                    for purchase in page.purchases {
                        *stored_purchases.entry(purchase.purchase_id).or_default() += 1;
                    }
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    page_token = page.next_page_token;
                }
            }
            if stored_purchases.values().sum::<usize>() >= expected_successes {
                return;
            }
            tokio::time::sleep(POLL * 10).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("PurchaseHistory did not store {expected_successes} purchases within {guard:?}"));

    // The LMS's side.
    let ledger = lms.ledger();
    let mut by_subject: HashMap<Subject, Vec<&LmsRequest>> = HashMap::new();
    for request in &ledger {
        if let Some(subject) = &request.subject {
            by_subject.entry(subject.clone()).or_default().push(request);
        }
    }
    let enrollments = lms.enrollments();
    let entitlements = lms.entitlements();
    let mut problems: Vec<String> = Vec::new();
    let job_subjects: BTreeSet<Subject> = planned.iter().map(Planned::subject).collect();
    for request in &ledger {
        match (&request.subject, request.answer) {
            (_, Answer::Malformed | Answer::Unauthorized) => {
                problems.push(format!("the LMS refused a request the client should not send: {request:?}"));
            }
            (Some(subject), _) if !job_subjects.contains(subject) => {
                problems.push(format!("a request for no job: {request:?}"));
            }
            _ => {}
        }
    }

    let (mut succeeded, mut failed_4xx, mut lost, mut duplicates) = (0usize, 0usize, 0usize, 0usize);
    let (mut retried_after_4xx, mut retried_after_success, mut retry_after_honoured) = (0usize, 0usize, 0usize);
    let mut attempt_counts: Vec<usize> = Vec::new();
    let mut found_on_retry = 0usize;
    // After each 503: the attempt number, the gap until the next attempt arrived, and that attempt's backoff ceiling.
    let mut gaps_after_503: Vec<(u32, Duration, Duration)> = Vec::new();
    for ((order, job), id) in planned.iter().zip(&finished).zip(&ids) {
        let name = &order.number;
        let requests = by_subject.get(&order.subject()).map(Vec::as_slice).unwrap_or_default();
        let attempts = match attempts(requests) {
            Ok(attempts) => attempts,
            Err(problem) => {
                problems.push(format!("{name}: {problem}"));
                continue;
            }
        };
        attempt_counts.push(attempts.len());
        // A lookup that decided its attempt found what an earlier grant, answered too late, had granted.
        found_on_retry += attempts
            .iter()
            .filter(|a| a.decisive.endpoint == Endpoint::FindEntitlement && a.decisive.answer == Answer::Ok)
            .count();
        for (number, pair) in (1u32..).zip(attempts.windows(2)) {
            let (before, after) = (&pair[0], &pair[1]);
            match before.decisive.answer {
                Answer::Rejected => retried_after_4xx += 1,
                Answer::Ok => retried_after_success += 1,
                _ => {}
            }
            let Some(answered) = before.decisive.answered else { continue };
            let gap = after.first.arrived.saturating_duration_since(answered);
            match before.decisive.answer {
                Answer::Throttled if gap >= retry_after => retry_after_honoured += 1,
                Answer::Throttled => problems.push(format!(
                    "{name}: attempt {} came {gap:?} after a 429 with Retry-After {retry_after:?}",
                    number + 1
                )),
                Answer::Unavailable => gaps_after_503.push((number, gap, policy.backoff(number, 1.0))),
                _ => {}
            }
        }
        let completed = completions.get(id).map(Vec::as_slice).unwrap_or_default();
        let purchase_id = format!("fulfillment:{id}");
        let announced = (
            completed.len(),
            purchase_events.get(&purchase_id).copied().unwrap_or_default(),
            stored_purchases.get(&purchase_id).copied().unwrap_or_default(),
        );
        if order.rejected {
            let error = job.last_error.clone().unwrap_or_default();
            let refused_once = job.state() == pb::FulfillmentState::Failed
                && error.kind() == pb::FulfillmentErrorKind::Rejected
                && error.lms_status == 400
                && !error.message.is_empty()
                && job.attempts == 1
                && requests.len() == 1;
            if refused_once {
                failed_4xx += 1;
            } else {
                problems.push(format!(
                    "{name}: a 400 job should fail after exactly one request: {:?} after {} attempts and {} requests, {error:?}",
                    job.state(),
                    job.attempts,
                    requests.len()
                ));
            }
            let failed_events = failures.get(id).copied().unwrap_or_default();
            if failed_events != 1 {
                problems.push(format!("{name}: {failed_events} FulfillmentFailed events for a failed job, not 1"));
            }
            if announced != (0, 0, 0) {
                problems.push(format!(
                    "{name}: a failed job was announced (events, purchase events, purchases): {announced:?}"
                ));
            }
            continue;
        }
        if job.state() != pb::FulfillmentState::Succeeded {
            lost += 1;
            problems.push(format!("{name}: {:?} after {} attempts: {:?}", job.state(), job.attempts, job.last_error));
            continue;
        }
        succeeded += 1;
        if usize::try_from(job.attempts).unwrap() != attempts.len() {
            problems.push(format!("{name}: {} attempts recorded, {} seen by the LMS", job.attempts, attempts.len()));
        }
        if attempts.last().is_none_or(|last| !last.decisive.answer.heard_success()) {
            problems.push(format!("{name}: SUCCEEDED though the LMS's last answer was not a success heard in time"));
        }
        // What the LMS holds for the job: one enrollment, or one entitlement and the job's uuid is its uuid.
        let held = if order.entitlement {
            let granted: Vec<_> = entitlements
                .iter()
                .filter(|e| e.user == username(order.learner) && e.course_uuid == order.course)
                .collect();
            if granted.len() == 1 && granted[0].uuid != job.entitlement_uuid {
                problems.push(format!(
                    "{name}: the job says {} but the LMS granted {}",
                    job.entitlement_uuid, granted[0].uuid
                ));
            }
            if completed.iter().any(|uuid| *uuid != job.entitlement_uuid) {
                problems.push(format!("{name}: the completion event names another entitlement"));
            }
            granted.len()
        } else {
            enrollments.iter().filter(|e| e.user == username(order.learner) && e.course_run == order.course).count()
        };
        match held {
            0 => {
                lost += 1;
                problems.push(format!("{name}: SUCCEEDED but the LMS holds nothing for it"));
            }
            1 => {}
            more => {
                duplicates += more - 1;
                problems.push(format!("{name}: the LMS holds {more} for it"));
            }
        }
        match announced {
            (1, 1, 1) => {}
            (0, _, _) | (_, 0, _) | (_, _, 0) => {
                lost += 1;
                problems
                    .push(format!("{name}: missing announcements (events, purchase events, purchases): {announced:?}"));
            }
            _ => {
                duplicates += 1;
                problems.push(format!(
                    "{name}: announced more than once (events, purchase events, purchases): {announced:?}"
                ));
            }
        }
    }
    if retried_after_4xx > 0 {
        problems.push(format!("{retried_after_4xx} attempts came after a 400"));
    }
    if retried_after_success > 0 {
        problems.push(format!("{retried_after_success} attempts came after a success was heard"));
    }

    // Waits scheduled, read back exactly: within [0, ceiling] of the policy, or [Retry-After, max(ceiling, Retry-After)] after a 429.
    let retry_after_floor = retry_after.min(policy.max_retry_after);
    for ((index, _), wait) in &scheduled {
        let ceiling = policy.backoff(wait.attempt, 1.0);
        let (low, high) = if wait.lms_status == 429 {
            (retry_after_floor.saturating_sub(STORED_PRECISION), ceiling.max(retry_after_floor))
        } else {
            (Duration::ZERO, ceiling)
        };
        if wait.wait < low || wait.wait > high {
            problems.push(format!(
                "{}: after attempt {} (LMS status {}) the job was scheduled {:?} later, outside the policy's [{low:?}, {high:?}]",
                planned[*index].number, wait.attempt, wait.lms_status, wait.wait
            ));
        }
    }
    // Growth, exactly: waits read back after late attempts exceed the first attempt's ceiling. Each is uniform in
    // [0, ceiling >= 4 x the first's], so ten at or under the first's ceiling have odds under 1e-6.
    let first_ceiling = policy.backoff(1, 1.0);
    let late_waits: Vec<&ScheduledWait> =
        scheduled.values().filter(|w| w.lms_status != 429 && w.attempt >= LATE_ATTEMPT).collect();
    let grown = late_waits.iter().filter(|w| w.wait > first_ceiling).count();
    if late_waits.len() < 10 {
        problems.push(format!("only {} waits read back after attempt {LATE_ATTEMPT} or later", late_waits.len()));
    } else if grown == 0 {
        problems.push(format!(
            "no wait after attempt {LATE_ATTEMPT} or later exceeds the first's ceiling {first_ceiling:?}"
        ));
    }
    // Growth: gaps after late 503s, each as a share of its backoff ceiling. Full jitter makes each wait uniform
    // in [0, ceiling]: their mean is about half; a mean under a fifth over 10 or more has odds under 1e-5.
    let late: Vec<f64> = gaps_after_503
        .iter()
        .filter(|(number, _, _)| *number >= LATE_ATTEMPT)
        .map(|(_, gap, ceiling)| gap.as_secs_f64() / ceiling.as_secs_f64())
        .collect();
    let late_mean = late.iter().sum::<f64>() / late.len().max(1) as f64;
    if late.len() < 10 {
        problems.push(format!(
            "only {} gaps after a 503 at attempt {LATE_ATTEMPT} or later: too few to judge growth",
            late.len()
        ));
    } else if late_mean < 0.2 {
        problems
            .push(format!("gaps after late 503s average {late_mean:.3} of their ceiling: the backoff does not grow"));
    }

    // Figures.
    let answers = |endpoints: &[Endpoint], answer: Answer| {
        ledger.iter().filter(|r| endpoints.contains(&r.endpoint) && r.answer == answer).count()
    };
    let api = [Endpoint::Enroll, Endpoint::FindEntitlement, Endpoint::GrantEntitlement];
    let mut gap_ms: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for (number, gap, _) in &gaps_after_503 {
        let key = if *number < 8 { number.to_string() } else { "8+".into() };
        let entry = gap_ms.entry(key).or_default();
        entry.0 += gap.as_secs_f64() * 1000.0;
        entry.1 += 1;
    }
    let over_ceiling =
        gaps_after_503.iter().filter(|(_, gap, ceiling)| *gap > *ceiling + Duration::from_millis(100)).count();
    let figures = json!({
        "suite": "lms-chaos",
        "orders": orders,
        "seed": seed,
        "entitlement_jobs": planned.iter().filter(|p| p.entitlement).count(),
        "lms_requests": ledger.iter().filter(|r| api.contains(&r.endpoint)).count(),
        "token_requests": ledger.iter().filter(|r| r.endpoint == Endpoint::Token).count(),
        "faults": {
            "503": answers(&api, Answer::Unavailable),
            "slow": answers(&api, Answer::Slow),
            "429": answers(&api, Answer::Throttled),
            "400": answers(&api, Answer::Rejected),
        },
        "ok": answers(&api, Answer::Ok),
        "succeeded": succeeded,
        "failed_4xx": failed_4xx,
        "lost": lost,
        "duplicates": duplicates,
        "retried_after_4xx": retried_after_4xx,
        "retried_after_success": retried_after_success,
        "retry_after_honoured": retry_after_honoured,
        "attempts": {
            "mean": (attempt_counts.iter().sum::<usize>() as f64 / attempt_counts.len().max(1) as f64 * 100.0).round() / 100.0,
            "max": attempt_counts.iter().max().copied().unwrap_or_default(),
        },
        "gap_ms_after_503_by_attempt": gap_ms.iter().map(|(k, (sum, n))| (k.clone(), json!(((sum / *n as f64) * 10.0).round() / 10.0))).collect::<serde_json::Map<_, _>>(),
        "late_gaps": late.len(),
        "late_gap_share_of_ceiling": (late_mean * 1000.0).round() / 1000.0,
        "gaps_over_ceiling_by_100ms": over_ceiling,
        "waits_read_back": scheduled.len(),
        "late_waits_over_first_ceiling": format!("{grown}/{}", late_waits.len()),
        "entitlements_found_on_retry": found_on_retry,
        "wall_ms": ms(wall),
        "problems": problems.len(),
    });
    println!("RELIABILITY-FIGURES {figures}");

    mesh.stop().await.expect("clean stop");
    lms.stop().await.expect("chaos LMS stops");
    assert_eq!(succeeded, expected_successes, "{:#?}", &problems[..problems.len().min(20)]);
    assert!(problems.is_empty(), "{} problems, the first: {:#?}", problems.len(), &problems[..problems.len().min(20)]);
}
