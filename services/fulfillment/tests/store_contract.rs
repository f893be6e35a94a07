//! The store contract: the same checks against every backend.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fulfillment::domain::RefundTerms;
use fulfillment::domain::{
    ErrorKind, JobError, JobState, Learner, LearnerRef, Mode, Order, OrderHeader, OrderLine, Product,
};
use fulfillment::filter::{JobFilter, PageCursor, UpdateWindow};
use fulfillment::outbox::completion_events;
use fulfillment::store::StoreError;
use fulfillment::store::{BulkRedriven, RefundOf};
use fulfillment::store::{Finished, NewJob, OutboxEvent, Outcome, Redriven, Store, for_database, stored_time};
use kit::db::{Backend, Database};
use kit::testing::TestDatabase;
use kit::trace::TextContext;
use prost::Message;
use proto::commerce::events::v1::{EventEnvelope, event_envelope::Payload};
use vocab::{
    CourseRunKey, CustomerId, LineItemId, LmsUserId, LmsUsername, OrderId, OrderNumber, Price, SourceSystem, Title,
};
use vocab::{RefundReason, Retirement};

struct Fixture {
    store: Arc<dyn Store>,
    _db: TestDatabase,
}

async fn fixture(backend: Backend) -> Fixture {
    let db = TestDatabase::new(backend, fulfillment::NAME).await;
    kit::db::migrate(db.config(), &fulfillment::MIGRATIONS).await.expect("migrate");
    let store = for_database(&Database::open(db.config()).expect("open"));
    Fixture { store, _db: db }
}

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 123_456_000).unwrap()
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

fn order(number: &str, line_ids: &[&str]) -> Vec<NewJob> {
    let order = Order::new(
        OrderHeader {
            order_number: OrderNumber::parse(number).unwrap(),
            order_id: Some(OrderId::parse("internal-1").unwrap()),
            order_version: 3,
            date_placed: t0(),
            source_system: Some(SourceSystem::parse("commercetools").unwrap()),
            email_opt_in: true,
        },
        LearnerRef::Customer { customer_id: CustomerId::parse("c-1").unwrap() },
        line_ids
            .iter()
            .map(|id| OrderLine {
                line_item_id: LineItemId::parse(id).unwrap(),
                product: Product::course_run(
                    CourseRunKey::parse("course-v1:edX+DemoX+T1").unwrap(),
                    Mode::Verified,
                    "",
                )
                .unwrap(),
                title: Title::parse("Demo").unwrap(),
                price: Price::parse("USD", "49.00").unwrap(),
            })
            .collect(),
    );
    let learner = Learner {
        customer_id: Some(CustomerId::parse("c-1").unwrap()),
        lms_user_id: LmsUserId::parse("42").unwrap(),
        lms_username: LmsUsername::parse("ada").unwrap(),
    };
    order
        .jobs(&learner)
        .into_iter()
        .map(|spec| NewJob {
            id: uuid::Uuid::now_v7().to_string(),
            spec,
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        })
        .collect()
}

fn events(tag: &str) -> Vec<OutboxEvent> {
    ["a", "b"]
        .iter()
        .map(|k| OutboxEvent { event_id: format!("{tag}-{k}"), stream: "s".into(), payload: vec![1, 2, 3] })
        .collect()
}

fn transient() -> JobError {
    JobError { kind: ErrorKind::Unavailable, lms_status: Some(503), message: "busy".into() }
}

async fn an_order_is_stored_once_in_line_order(f: Fixture) {
    let jobs = order("EDX-1", &["l1", "l2", "l3"]);
    assert!(f.store.insert_order(&jobs, t0()).await.unwrap());
    assert!(!f.store.insert_order(&order("EDX-1", &["l2"]), t0()).await.unwrap(), "a stored line refuses the order");
    // The refused insert stored nothing, not even its other lines.
    assert!(!f.store.insert_order(&order("EDX-1", &["l9", "l1"]), t0()).await.unwrap());
    let listed = f.store.list_order("EDX-1", 0, 10).await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|j| j.spec.line.line_item_id.as_str()).collect();
    assert_eq!(ids, ["l1", "l2", "l3"]);
    assert!(listed.iter().all(|j| j.state == JobState::Pending && j.attempts == 0 && j.next_attempt_at == Some(t0())));
    assert_eq!(listed[0].spec, jobs[0].spec, "the spec reads back as written");
    assert_eq!(listed[0].traceparent, jobs[0].traceparent, "the accepting call's trace context is kept");
    assert_eq!(f.store.list_order("EDX-1", 1, 1).await.unwrap()[0].spec.line.line_item_id.as_str(), "l2");
    let mut fingerprints = f.store.order_fingerprints("EDX-1").await.unwrap();
    fingerprints.sort();
    assert_eq!(fingerprints.len(), 3);
    assert_eq!(fingerprints[0], ("l1".to_string(), jobs[0].spec.fingerprint.clone()));
    assert_eq!(f.store.get(&jobs[1].id).await.unwrap().unwrap().spec.line.line_item_id.as_str(), "l2");
    assert!(f.store.get("nope").await.unwrap().is_none());
}

async fn claims_take_due_jobs_once_and_count_attempts(f: Fixture) {
    f.store.insert_order(&order("EDX-2", &["l1", "l2", "l3"]), t0()).await.unwrap();
    assert!(f.store.claim(10, Duration::from_secs(30), t0() - secs(1)).await.unwrap().is_empty(), "not yet due");
    let first = f.store.claim(2, Duration::from_secs(30), t0()).await.unwrap();
    assert_eq!(first.len(), 2);
    let second = f.store.claim(10, Duration::from_secs(30), t0()).await.unwrap();
    assert_eq!(second.len(), 1, "leased jobs are not claimed again while the lease runs");
    assert!(f.store.claim(10, Duration::from_secs(30), t0() + secs(29)).await.unwrap().is_empty());
    for claimed in first.iter().chain(&second) {
        assert_eq!((claimed.job.state, claimed.job.attempts), (JobState::InProgress, 1));
    }
    assert_eq!(f.store.next_due().await.unwrap(), Some(t0() + secs(30)), "the leases' expiry");
}

async fn only_the_current_lease_records_an_outcome(f: Fixture) {
    let jobs = order("EDX-3", &["l1"]);
    f.store.insert_order(&jobs, t0()).await.unwrap();
    let vanished = f.store.claim(1, Duration::from_secs(10), t0()).await.unwrap().remove(0);
    // The first worker vanishes; its lease runs out and another worker claims the job.
    let taker = f.store.claim(1, Duration::from_secs(10), t0() + secs(11)).await.unwrap().remove(0);
    assert_eq!(taker.job.id, vanished.job.id);
    assert_eq!(taker.job.attempts, 2);
    assert_ne!(taker.lease, vanished.lease);
    let done = Outcome::Succeeded { entitlement_uuid: None, events: events("e3") };
    assert!(matches!(f.store.finish(&taker.lease, done, t0() + secs(12)).await.unwrap(), Finished::Recorded(_)));
    // The first worker comes back with its own (also successful) answer: discarded.
    let late = Outcome::Succeeded { entitlement_uuid: None, events: events("late") };
    assert_eq!(f.store.finish(&vanished.lease, late, t0() + secs(13)).await.unwrap(), Finished::LeaseLost);

    let transitions = f.store.transitions(&jobs[0].id).await.unwrap();
    let states: Vec<(Option<JobState>, JobState)> = transitions.iter().map(|t| (t.from, t.to)).collect();
    assert_eq!(
        states,
        [
            (None, JobState::Pending),
            (Some(JobState::Pending), JobState::InProgress),
            (Some(JobState::InProgress), JobState::InProgress),
            (Some(JobState::InProgress), JobState::Succeeded),
        ]
    );
    let outbox = f.store.unpublished(10).await.unwrap();
    let ids: Vec<&str> = outbox.iter().map(|e| e.event.event_id.as_str()).collect();
    assert_eq!(ids, ["e3-a", "e3-b"], "one set of events, the winner's");
    assert_eq!(outbox[0].event.payload, [1, 2, 3]);
}

async fn failures_reschedule_or_fail_and_redrive_resets(f: Fixture) {
    let jobs = order("EDX-4", &["l1"]);
    f.store.insert_order(&jobs, t0()).await.unwrap();
    let claimed = f.store.claim(1, Duration::from_secs(10), t0()).await.unwrap().remove(0);
    let retry = Outcome::RetryAt { at: t0() + secs(5), error: transient() };
    let Finished::Recorded(job) = f.store.finish(&claimed.lease, retry, t0() + secs(1)).await.unwrap() else {
        panic!("lease held")
    };
    assert_eq!(
        (job.state, job.next_attempt_at, job.last_error.clone()),
        (JobState::Pending, Some(t0() + secs(5)), Some(transient()))
    );
    assert!(f.store.claim(1, Duration::from_secs(10), t0() + secs(4)).await.unwrap().is_empty(), "backing off");
    assert_eq!(f.store.next_due().await.unwrap(), Some(t0() + secs(5)));
    let claimed = f.store.claim(1, Duration::from_secs(10), t0() + secs(5)).await.unwrap().remove(0);
    assert_eq!(claimed.job.attempts, 2);
    let rejected = JobError { kind: ErrorKind::Rejected, lms_status: Some(400), message: "no such course".into() };
    f.store.finish(&claimed.lease, Outcome::Failed { error: rejected.clone() }, t0() + secs(6)).await.unwrap();
    let failed = f.store.get(&jobs[0].id).await.unwrap().unwrap();
    assert_eq!(
        (failed.state, failed.last_error, failed.next_attempt_at),
        (JobState::Failed, Some(rejected.clone()), None)
    );

    let Redriven::Pending(redriven) = f.store.redrive(&jobs[0].id, Some("ops"), t0() + secs(7)).await.unwrap() else {
        panic!("a failed job is re-driven")
    };
    assert_eq!((redriven.state, redriven.attempts), (JobState::Pending, 0));
    assert_eq!(redriven.last_error, Some(rejected), "the last error is kept for audit");
    let last = f.store.transitions(&jobs[0].id).await.unwrap().pop().unwrap();
    assert_eq!(
        (last.from, last.to, last.requested_by.as_deref()),
        (Some(JobState::Failed), JobState::Pending, Some("ops")),
        "the re-drive names who asked"
    );
    assert!(
        matches!(f.store.redrive(&jobs[0].id, None, t0()).await.unwrap(), Redriven::NotFailed(j) if j.state == JobState::Pending)
    );
    assert_eq!(f.store.redrive("nope", None, t0()).await.unwrap(), Redriven::NotFound);
    let claimed = f.store.claim(1, Duration::from_secs(10), t0() + secs(7)).await.unwrap().remove(0);
    assert_eq!(claimed.job.attempts, 1);
    let done = Outcome::Succeeded { entitlement_uuid: Some("e-uuid".into()), events: vec![] };
    let Finished::Recorded(job) = f.store.finish(&claimed.lease, done, t0() + secs(8)).await.unwrap() else {
        panic!("lease held")
    };
    assert_eq!((job.state, job.entitlement_uuid.as_deref()), (JobState::Succeeded, Some("e-uuid")));
    assert!(job.last_error.is_some(), "kept after a later success");
    assert!(f.store.next_due().await.unwrap().is_none());
}

async fn the_outbox_is_published_in_order_and_stamped(f: Fixture) {
    f.store.insert_order(&order("EDX-5", &["l1", "l2"]), t0()).await.unwrap();
    for (i, claimed) in f.store.claim(2, Duration::from_secs(10), t0()).await.unwrap().into_iter().enumerate() {
        let done = Outcome::Succeeded { entitlement_uuid: None, events: events(&format!("o{i}")) };
        f.store.finish(&claimed.lease, done, t0()).await.unwrap();
    }
    let stats = f.store.stats(t0()).await.unwrap();
    assert!(stats.by_state.iter().all(|(_, n)| *n == 0), "{:?}", stats.by_state);
    let backlog = f.store.backlog().await.unwrap();
    assert_eq!((backlog.unpublished, backlog.oldest_unpublished), (4, Some(t0())));
    let outbox = f.store.unpublished(3).await.unwrap();
    assert_eq!(outbox.len(), 3);
    assert!(outbox.windows(2).all(|w| w[0].seq < w[1].seq));
    f.store.mark_published(&[outbox[0].seq, outbox[1].seq], t0()).await.unwrap();
    let rest = f.store.unpublished(10).await.unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(rest[0].seq, outbox[2].seq, "the unstamped rows, oldest first");
    assert!(rest[1].seq > outbox[2].seq);
    assert_eq!(f.store.backlog().await.unwrap().unpublished, 2);
}

fn retirement_of(lms_user_id: &str) -> Retirement {
    Retirement {
        customer_id: None,
        lms_user_id: LmsUserId::parse(lms_user_id).unwrap(),
        retired_username: LmsUsername::parse(&format!("retired__user_{}", "0a".repeat(20))).unwrap(),
    }
}

async fn a_retirement_reaches_jobs_errors_and_unpublished_events_and_holds(f: Fixture) {
    let jobs = order("EDX-R", &["l1", "l2"]);
    f.store.insert_order(&jobs, t0()).await.unwrap();
    // l1 succeeds: its events (naming ada) wait in the outbox; l2 fails with the LMS echoing ada.
    let mut claimed = f.store.claim(2, Duration::from_secs(10), t0()).await.unwrap();
    claimed.sort_by_key(|c| c.job.spec.position);
    let events = completion_events(&claimed[0].job, None, t0(), &TextContext::default());
    f.store.finish(&claimed[0].lease, Outcome::Succeeded { entitlement_uuid: None, events }, t0()).await.unwrap();
    let echoed = JobError { kind: ErrorKind::Rejected, lms_status: Some(400), message: "user ada is inactive".into() };
    f.store.finish(&claimed[1].lease, Outcome::Failed { error: echoed }, t0()).await.unwrap();

    let retirement = retirement_of("42");
    assert_eq!(f.store.retire_learners(std::slice::from_ref(&retirement), t0()).await.unwrap(), 2);
    for job in &jobs {
        let stored = f.store.get(&job.id).await.unwrap().unwrap();
        assert_eq!(stored.spec.learner.lms_username, retirement.retired_username);
        // A word, not a substring: ids and fingerprints are hex and may hold "ada".
        let names_ada = format!("{stored:?}").split(|c: char| !c.is_ascii_alphanumeric()).any(|word| word == "ada");
        assert!(!names_ada, "{stored:?}");
    }
    for entry in f.store.unpublished(10).await.unwrap() {
        let envelope = EventEnvelope::decode(entry.event.payload.as_slice()).unwrap();
        let username = match envelope.payload.unwrap() {
            Payload::PurchaseRecorded(p) => p.username,
            Payload::FulfillmentCompleted(c) => c.lms_username,
            // l2's failure: its username scrubbed, and the LMS's echo of it left out when it was written.
            Payload::FulfillmentFailed(failed) => {
                assert_eq!(failed.error.unwrap().message, "user <learner> is inactive");
                failed.lms_username
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(username, retirement.retired_username.as_str());
    }
    assert_eq!(
        f.store.retired_username(retirement.lms_user_id).await.unwrap(),
        Some(retirement.retired_username.clone())
    );
    assert_eq!(f.store.retired_username(LmsUserId::parse("43").unwrap()).await.unwrap(), None);
    assert_eq!(f.store.retire_learners(&[retirement], t0()).await.unwrap(), 0, "applying it again changes nothing");
    assert!(
        matches!(f.store.insert_order(&order("EDX-R2", &["l1"]), t0()).await, Err(StoreError::LearnerRetired(_))),
        "a retired learner's new order stores nothing"
    );
    assert!(f.store.list_order("EDX-R2", 0, 10).await.unwrap().is_empty());
}

async fn published_outbox_rows_are_pruned_after_the_window(f: Fixture) {
    f.store.insert_order(&order("EDX-P", &["l1", "l2"]), t0()).await.unwrap();
    for (i, claimed) in f.store.claim(2, Duration::from_secs(10), t0()).await.unwrap().into_iter().enumerate() {
        let done = Outcome::Succeeded { entitlement_uuid: None, events: events(&format!("p{i}")) };
        f.store.finish(&claimed.lease, done, t0()).await.unwrap();
    }
    let outbox = f.store.unpublished(10).await.unwrap();
    f.store.mark_published(&[outbox[0].seq], t0()).await.unwrap();
    f.store.mark_published(&[outbox[1].seq], t0() + secs(60)).await.unwrap();
    f.store.mark_published(&[outbox[1].seq], t0() + secs(999)).await.unwrap(); // stamped once: keeps its time

    assert_eq!(f.store.prune_published(t0(), 100).await.unwrap(), 0, "published at the cutoff: kept");
    assert_eq!(f.store.prune_published(t0() + secs(61), 1).await.unwrap(), 1, "at most the limit");
    assert_eq!(f.store.prune_published(t0() + secs(61), 100).await.unwrap(), 1);
    assert_eq!(f.store.prune_published(t0() + secs(10_000), 100).await.unwrap(), 0, "unpublished rows stay");
    let left: Vec<i64> = f.store.unpublished(10).await.unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(left, [outbox[2].seq, outbox[3].seq]);
    assert_eq!(f.store.backlog().await.unwrap().unpublished, 2);
}

async fn stats_count_unfinished_states_and_the_longest_wait(f: Fixture) {
    assert_eq!(f.store.stats(t0()).await.unwrap().oldest_due, None);
    f.store.insert_order(&order("EDX-6", &["l1"]), t0()).await.unwrap();
    f.store.insert_order(&order("EDX-7", &["l1", "l2"]), t0() + secs(3)).await.unwrap();
    f.store.insert_order(&order("EDX-8", &["l1"]), t0() + secs(100)).await.unwrap();
    f.store.claim(1, Duration::from_secs(10), t0() + secs(3)).await.unwrap();
    let claimed = f.store.claim(1, Duration::from_secs(10), t0() + secs(3)).await.unwrap().remove(0);
    let rejected = JobError { kind: ErrorKind::Rejected, lms_status: Some(400), message: "no".into() };
    f.store.finish(&claimed.lease, Outcome::Failed { error: rejected }, t0() + secs(4)).await.unwrap();
    let mut stats = f.store.stats(t0() + secs(10)).await.unwrap();
    stats.by_state.sort_by_key(|(s, _)| s.as_str());
    let expected = [
        (JobState::Failed, 1),
        (JobState::InProgress, 1),
        (JobState::Pending, 2),
        (JobState::RevokeFailed, 0),
        (JobState::Revoking, 0),
    ];
    assert_eq!(stats.by_state, expected, "every unfinished or failed state, the refund ones too");
    assert_eq!(stats.oldest_due, Some(t0() + secs(3)), "EDX-7's second line has waited since t0+3s; EDX-8 is not due");
}

async fn times_round_to_what_both_backends_keep(f: Fixture) {
    let now = stored_time(Utc::now());
    let jobs = order("EDX-8", &["l1"]);
    f.store.insert_order(&jobs, now).await.unwrap();
    assert_eq!(f.store.get(&jobs[0].id).await.unwrap().unwrap().created_at, now);
}

async fn concurrent_claimers_never_share_a_job(f: Fixture) {
    for n in 0..20 {
        f.store.insert_order(&order(&format!("EDX-C{n}"), &["l1", "l2", "l3", "l4", "l5"]), t0()).await.unwrap();
    }
    let claimers = (0..8).map(|_| {
        let store = Arc::clone(&f.store);
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let claimed = store.claim(3, Duration::from_secs(60), t0()).await.unwrap();
                if claimed.is_empty() {
                    return mine;
                }
                mine.extend(claimed.into_iter().map(|c| c.job.id));
            }
        })
    });
    let mut all: Vec<String> = Vec::new();
    for claimer in claimers.collect::<Vec<_>>() {
        all.extend(claimer.await.unwrap());
    }
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!((total, all.len()), (100, 100), "every job claimed exactly once");
}

async fn a_refunded_job_whose_worker_vanished_is_reclaimed_for_revocation(f: Fixture) {
    f.store.insert_order(&order("EDX-V", &["l1"]), t0()).await.unwrap();
    let vanished = f.store.claim(1, Duration::from_secs(10), t0()).await.unwrap().remove(0);
    let terms = fulfillment::domain::RefundTerms::for_line(
        &vanished.job.spec.line.price,
        None,
        vocab::RefundReason::default(),
        SourceSystem::parse("support").unwrap(),
    )
    .unwrap();
    let refund = fulfillment::store::RefundOf { job_id: vanished.job.id.clone(), terms };
    f.store.refund(&[refund], "", t0() + secs(1)).await.unwrap();
    // Its lease runs out: the job is taken again to be revoked, never enrolled again, its attempts afresh.
    let taken = f.store.claim(1, Duration::from_secs(10), t0() + secs(11)).await.unwrap().remove(0);
    assert_eq!((taken.job.state, taken.job.attempts), (JobState::Revoking, 1));
    let late = Outcome::Succeeded { entitlement_uuid: None, events: Vec::new() };
    assert_eq!(f.store.finish(&vanished.lease, late, t0() + secs(12)).await.unwrap(), Finished::LeaseLost);
    let path: Vec<(Option<JobState>, JobState)> =
        f.store.transitions(&taken.job.id).await.unwrap().into_iter().map(|t| (t.from, t.to)).collect();
    assert_eq!(path.last(), Some(&(Some(JobState::InProgress), JobState::Revoking)));
}

/// One job of `number` for `run`, from `source`, accepted at `at`.
fn job_of(number: &str, line: &str, run: &str, source: &str) -> NewJob {
    let mut job = order(number, &[line]).remove(0);
    job.spec.line.product = Product::course_run(CourseRunKey::parse(run).unwrap(), Mode::Verified, "").unwrap();
    job.spec.header.source_system = Some(SourceSystem::parse(source).unwrap());
    job
}

/// Stores `job` at `at` and, claimed at once, ends its attempt at `end` with `outcome`.
async fn attempted(f: &Fixture, job: &NewJob, at: DateTime<Utc>, outcome: Outcome, end: DateTime<Utc>) {
    assert!(f.store.insert_order(std::slice::from_ref(job), at).await.unwrap());
    let claimed = f.store.claim(1, Duration::from_secs(10), at).await.unwrap().remove(0);
    assert_eq!(claimed.job.id, job.id, "the job just stored is the one due");
    assert!(matches!(f.store.finish(&claimed.lease, outcome, end).await.unwrap(), Finished::Recorded(_)));
}

fn failed_with(kind: ErrorKind) -> Outcome {
    Outcome::Failed { error: JobError { kind, lms_status: Some(400), message: "refused".into() } }
}

async fn listed(f: &Fixture, filter: &JobFilter) -> Vec<String> {
    let found = f.store.list(filter, None, 50).await.unwrap();
    assert_eq!(found.total, found.jobs.len() as u64, "the count is of the same jobs");
    found.jobs.into_iter().map(|job| job.id).collect()
}

const RUN_1: &str = "course-v1:edX+Find+R1";
const RUN_2: &str = "course-v1:edX+Find+R2";

async fn listing_filters_newest_first_in_stable_pages(f: Fixture) {
    let a = job_of("EDX-FA", "l1", RUN_1, "commercetools");
    attempted(&f, &a, t0(), failed_with(ErrorKind::Rejected), t0() + secs(10)).await;
    let b = job_of("EDX-FB", "l1", RUN_2, "commercetools");
    attempted(&f, &b, t0() + secs(11), failed_with(ErrorKind::AttemptsExhausted), t0() + secs(20)).await;
    let c = job_of("EDX-FC", "l1", RUN_1, "shopify");
    let done = Outcome::Succeeded { entitlement_uuid: None, events: vec![] };
    attempted(&f, &c, t0() + secs(21), done, t0() + secs(30)).await;
    let mut d = order("EDX-FD", &["l1", "l2"]);
    for job in &mut d {
        job.spec.line.product = Product::course_run(CourseRunKey::parse(RUN_1).unwrap(), Mode::Verified, "").unwrap();
    }
    assert!(f.store.insert_order(&d, t0() + secs(40)).await.unwrap());
    // The two lines of D changed at the same time: the larger id first.
    let (d_hi, d_lo) = if d[0].id > d[1].id { (&d[0].id, &d[1].id) } else { (&d[1].id, &d[0].id) };
    let ids = |jobs: &[&String]| jobs.iter().map(|id| id.to_string()).collect::<Vec<_>>();

    assert_eq!(listed(&f, &JobFilter::default()).await, ids(&[d_hi, d_lo, &c.id, &b.id, &a.id]));
    let failed = JobFilter { states: vec![JobState::Failed], ..Default::default() };
    assert_eq!(listed(&f, &failed).await, ids(&[&b.id, &a.id]));
    let settled = JobFilter { states: vec![JobState::Succeeded, JobState::Failed], ..Default::default() };
    assert_eq!(listed(&f, &settled).await, ids(&[&c.id, &b.id, &a.id]));
    let run_1 = JobFilter { course_run_key: Some(CourseRunKey::parse(RUN_1).unwrap()), ..Default::default() };
    assert_eq!(listed(&f, &run_1).await, ids(&[d_hi, d_lo, &c.id, &a.id]));
    let failed_run_1 = JobFilter { states: vec![JobState::Failed], ..run_1.clone() };
    assert_eq!(listed(&f, &failed_run_1).await, ids(&[&a.id]));
    let rejected = JobFilter { error_kind: Some(ErrorKind::Rejected), ..Default::default() };
    assert_eq!(listed(&f, &rejected).await, ids(&[&a.id]));
    let shopify = JobFilter { source_system: Some(SourceSystem::parse("shopify").unwrap()), ..Default::default() };
    assert_eq!(listed(&f, &shopify).await, ids(&[&c.id]));
    let window = UpdateWindow::new(Some(t0() + secs(20)), Some(t0() + secs(40))).unwrap();
    let between = JobFilter { updated: window, ..Default::default() };
    assert_eq!(listed(&f, &between).await, ids(&[&c.id, &b.id]), "from inclusive, to exclusive");
    let nothing = JobFilter { states: vec![JobState::Revoked], ..Default::default() };
    assert!(listed(&f, &nothing).await.is_empty());

    // Pages of two: the tie inside D is split without losing or repeating a job.
    let mut seen = Vec::new();
    let mut after: Option<PageCursor> = None;
    loop {
        let page = f.store.list(&JobFilter::default(), after.as_ref(), 2).await.unwrap();
        assert_eq!(page.total, 5, "the total is of every page");
        let page = page.jobs;
        let Some(last) = page.last() else { break };
        after = Some(PageCursor { updated_at: last.updated_at, id: last.id.clone() });
        seen.extend(page.iter().map(|job| job.id.clone()));
        assert!(seen.len() <= 5, "pages repeat jobs: {seen:?}");
    }
    assert_eq!(seen, ids(&[d_hi, d_lo, &c.id, &b.id, &a.id]));
    let mut one_by_one = Vec::new();
    let mut after: Option<PageCursor> = None;
    while let Some(job) = f.store.list(&failed, after.as_ref(), 1).await.unwrap().jobs.pop() {
        after = Some(PageCursor { updated_at: job.updated_at, id: job.id.clone() });
        one_by_one.push(job.id);
        assert!(one_by_one.len() <= 2, "pages repeat jobs: {one_by_one:?}");
    }
    assert_eq!(one_by_one, ids(&[&b.id, &a.id]));
}

async fn redriving_in_bulk_is_bounded_all_or_none_and_names_who_asked(f: Fixture) {
    let a1 = job_of("EDX-RA", "l1", RUN_1, "commercetools");
    attempted(&f, &a1, t0(), failed_with(ErrorKind::Rejected), t0() + secs(10)).await;
    let a2 = job_of("EDX-RA", "l2", RUN_1, "commercetools");
    attempted(&f, &a2, t0() + secs(11), failed_with(ErrorKind::Rejected), t0() + secs(20)).await;
    let b = job_of("EDX-RB", "l1", RUN_2, "commercetools");
    attempted(&f, &b, t0() + secs(21), failed_with(ErrorKind::Rejected), t0() + secs(30)).await;
    // E: enrolled, refunded, and its revocation refused: REVOKE_FAILED.
    let e = job_of("EDX-RE", "l1", RUN_1, "commercetools");
    let done = Outcome::Succeeded { entitlement_uuid: None, events: vec![] };
    attempted(&f, &e, t0() + secs(31), done, t0() + secs(32)).await;
    let terms = RefundTerms::for_line(
        &e.spec.line.price,
        None,
        RefundReason::parse("test").unwrap(),
        SourceSystem::parse("support").unwrap(),
    )
    .unwrap();
    f.store.refund(&[RefundOf { job_id: e.id.clone(), terms }], "", t0() + secs(33)).await.unwrap();
    let revoking = f.store.claim(1, Duration::from_secs(10), t0() + secs(34)).await.unwrap().remove(0);
    f.store.finish(&revoking.lease, failed_with(ErrorKind::Rejected), t0() + secs(40)).await.unwrap();
    assert_eq!(f.store.get(&e.id).await.unwrap().unwrap().state, JobState::RevokeFailed);
    let pending = job_of("EDX-RP", "l1", RUN_1, "commercetools");
    assert!(f.store.insert_order(std::slice::from_ref(&pending), t0() + secs(41)).await.unwrap());
    let states = async || {
        let mut states = Vec::new();
        for id in [&a1.id, &a2.id, &b.id, &e.id, &pending.id] {
            states.push(f.store.get(id).await.unwrap().unwrap().state);
        }
        states
    };
    let before = states().await;
    let now = t0() + secs(50);

    let failures = JobFilter { states: vec![JobState::Failed, JobState::RevokeFailed], ..Default::default() };
    assert_eq!(
        f.store.redrive_matching(&failures, 3, Some("ops"), false, now).await.unwrap(),
        BulkRedriven::TooMany { matched: 4 }
    );
    assert_eq!(
        f.store.redrive_matching(&failures, 3, Some("ops"), true, now).await.unwrap(),
        BulkRedriven::TooMany { matched: 4 }
    );
    assert_eq!(states().await, before, "over the bound, nothing changed");
    let every = vec![e.id.clone(), b.id.clone(), a2.id.clone(), a1.id.clone()];
    assert_eq!(
        f.store.redrive_matching(&failures, 4, Some("ops"), true, now).await.unwrap(),
        BulkRedriven::Redriven(every),
        "a dry run names them, newest change first"
    );
    assert_eq!(states().await, before, "a dry run changes nothing");
    let pending_only = JobFilter { states: vec![JobState::Pending], ..Default::default() };
    assert_eq!(
        f.store.redrive_matching(&pending_only, 10, Some("ops"), false, now).await.unwrap(),
        BulkRedriven::Redriven(vec![]),
        "only failures are ever re-driven"
    );

    let run_1 = JobFilter { course_run_key: Some(CourseRunKey::parse(RUN_1).unwrap()), ..Default::default() };
    assert_eq!(
        f.store.redrive_matching(&run_1, 3, Some("ops@example.org"), false, now).await.unwrap(),
        BulkRedriven::Redriven(vec![e.id.clone(), a2.id.clone(), a1.id.clone()])
    );
    assert_eq!(
        states().await,
        [JobState::Pending, JobState::Pending, JobState::Failed, JobState::Revoking, JobState::Pending]
    );
    for (id, from, to) in
        [(&a1.id, JobState::Failed, JobState::Pending), (&e.id, JobState::RevokeFailed, JobState::Revoking)]
    {
        let job = f.store.get(id).await.unwrap().unwrap();
        assert_eq!((job.attempts, job.next_attempt_at, job.updated_at), (0, Some(now), now), "due now, attempts reset");
        let last = f.store.transitions(id).await.unwrap().pop().unwrap();
        assert_eq!(
            (last.from, last.to, last.attempt, last.requested_by.as_deref(), last.at),
            (Some(from), to, 0, Some("ops@example.org"), now)
        );
    }
    // Due now: the workers claim them again.
    let claimed = f.store.claim(10, Duration::from_secs(10), now).await.unwrap();
    let mut claimed: Vec<&str> = claimed.iter().map(|c| c.job.id.as_str()).collect();
    claimed.sort();
    let mut expected = vec![a1.id.as_str(), a2.id.as_str(), e.id.as_str(), pending.id.as_str()];
    expected.sort();
    assert_eq!(claimed, expected);
}

macro_rules! contract {
    ($name:ident, $kind:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn an_order_is_stored_once_in_line_order() {
                super::an_order_is_stored_once_in_line_order(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn claims_take_due_jobs_once_and_count_attempts() {
                super::claims_take_due_jobs_once_and_count_attempts(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_refunded_job_whose_worker_vanished_is_reclaimed_for_revocation() {
                super::a_refunded_job_whose_worker_vanished_is_reclaimed_for_revocation(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn only_the_current_lease_records_an_outcome() {
                super::only_the_current_lease_records_an_outcome(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn failures_reschedule_or_fail_and_redrive_resets() {
                super::failures_reschedule_or_fail_and_redrive_resets(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_retirement_reaches_jobs_errors_and_unpublished_events_and_holds() {
                super::a_retirement_reaches_jobs_errors_and_unpublished_events_and_holds(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn the_outbox_is_published_in_order_and_stamped() {
                super::the_outbox_is_published_in_order_and_stamped(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn published_outbox_rows_are_pruned_after_the_window() {
                super::published_outbox_rows_are_pruned_after_the_window(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn stats_count_unfinished_states_and_the_longest_wait() {
                super::stats_count_unfinished_states_and_the_longest_wait(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn times_round_to_what_both_backends_keep() {
                super::times_round_to_what_both_backends_keep(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn listing_filters_newest_first_in_stable_pages() {
                super::listing_filters_newest_first_in_stable_pages(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn redriving_in_bulk_is_bounded_all_or_none_and_names_who_asked() {
                super::redriving_in_bulk_is_bounded_all_or_none_and_names_who_asked(fixture($kind).await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_claimers_never_share_a_job() {
                super::concurrent_claimers_never_share_a_job(fixture($kind).await).await;
            }
        }
    };
}

contract!(postgres, Backend::Postgres);
contract!(sqlite, Backend::Sqlite);

/// Workers in another process hear of new work: a store listening on one pool
/// is woken when another pool (another process) stores an order, after its
/// commit (announcements are coalesced, never dropped).
#[tokio::test]
async fn another_process_hears_of_new_work_after_the_commit() {
    let f = fixture(Backend::Postgres).await;
    let other = for_database(&Database::open(f._db.config()).expect("open"));
    let wake = Arc::new(tokio::sync::Notify::new());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let listening = tokio::spawn({
        let (other, wake, shutdown) = (Arc::clone(&other), Arc::clone(&wake), shutdown.clone());
        async move { other.listen_for_work(wake, shutdown).await }
    });
    // The listener connects in the background: announce until heard, each time with new work.
    let mut n = 0;
    let heard = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            n += 1;
            f.store.insert_order(&order(&format!("EDX-W{n}"), &["l1"]), t0()).await.unwrap();
            if tokio::time::timeout(Duration::from_millis(200), wake.notified()).await.is_ok() {
                return;
            }
        }
    })
    .await;
    assert!(heard.is_ok(), "the other store was never woken");
    shutdown.cancel();
    listening.await.unwrap();
}

/// SQLite cannot alter a CHECK constraint, so `0004_refunds` rebuilds the jobs
/// table and its transitions: what a release before it wrote must read back
/// whole after it, and keep working.
#[tokio::test]
async fn jobs_written_before_the_refund_migration_read_back_and_run_after_it() {
    let db = TestDatabase::new(Backend::Sqlite, fulfillment::NAME).await;
    let Database::Sqlite(pool) = Database::open(db.config()).expect("open") else { panic!("a SQLite database") };
    fulfillment::MIGRATIONS.sqlite.run_to(3, &pool).await.expect("migrations up to 0003");
    let job = order("EDX-M", &["l1"]).remove(0);
    let spec = serde_json::to_string(&job.spec).unwrap();
    let at = t0().timestamp_micros();
    sqlx::query(
        "INSERT INTO fulfillments (fulfillment_id, order_number, line_item_id, position, spec, fingerprint, state,
                                   attempts, next_attempt_at, traceparent, create_time, update_time)
         VALUES (?1, 'EDX-M', 'l1', 0, ?2, ?3, 'PENDING', 0, ?4, '', ?4, ?4)",
    )
    .bind(&job.id)
    .bind(spec)
    .bind(&job.spec.fingerprint)
    .bind(at)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO fulfillment_transitions (fulfillment_id, to_state, attempt, at) VALUES (?1, 'PENDING', 0, ?2)",
    )
    .bind(&job.id)
    .bind(at)
    .execute(&pool)
    .await
    .unwrap();

    kit::db::migrate(db.config(), &fulfillment::MIGRATIONS).await.expect("0004 applies over existing rows");
    let store = for_database(&Database::open(db.config()).expect("open"));
    let stored = store.get(&job.id).await.unwrap().expect("the job survives the rebuild");
    assert_eq!((stored.state, stored.spec, stored.refund), (JobState::Pending, job.spec.clone(), None));
    assert_eq!(store.transitions(&job.id).await.unwrap().len(), 1, "its history too");
    let claimed = store.claim(1, Duration::from_secs(30), t0() + secs(1)).await.unwrap();
    assert_eq!(claimed.len(), 1, "and it is still due work");
    let orphan = sqlx::query(
        "INSERT INTO fulfillment_transitions (fulfillment_id, to_state, attempt, at) VALUES ('none', 'X', 0, 0)",
    )
    .execute(&pool)
    .await;
    assert!(orphan.is_err(), "the transitions still reference the jobs");
}
