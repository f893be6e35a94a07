#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking
//! The store contract: the same checks against every backend.

use std::sync::Arc;

use catalog_ingest::domain::{
    CanonicalEvent, Course, CourseRun, Effort, EventName, Instructor, Pacing, Price, ProductType, Seat,
};
use catalog_ingest::store::{
    Ingestion, IngestionState, NewIngestion, Recorded, Step, StepResult, StepStatus, Store, for_database, stored_time,
};
use chrono::{DateTime, Utc};
use kit::db::{Backend, Database};
use kit::testing::TestDatabase;

const SOURCE: &str = "exec-ed-partner";

struct Fixture {
    store: Arc<dyn Store>,
    _db: TestDatabase,
}

async fn fixture(backend: Backend) -> Fixture {
    let db = TestDatabase::new(backend, catalog_ingest::NAME).await;
    kit::db::migrate(db.config(), &catalog_ingest::MIGRATIONS).await.expect("migrate");
    let store = for_database(&Database::open(db.config()).expect("open"));
    Fixture { store, _db: db }
}

/// A time both backends keep exactly (whole microseconds).
fn t(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + seconds, 123_456_000).unwrap()
}

fn course(key: &str) -> Course {
    let (org, number) = key.split_once('+').unwrap();
    Course {
        product_key: key.into(),
        product_type: ProductType::ExecutiveEducation,
        title: format!("{number}: the course"),
        org: org.into(),
        number: number.into(),
        short_description: "Short".into(),
        long_description: "<p>Long</p>".into(),
        level: "intermediate".into(),
        subjects: vec!["business".into(), "leadership".into()],
        languages: vec!["en-us".into()],
        effort: Some(Effort { min_hours_per_week: 4, max_hours_per_week: 6 }),
        length_weeks: Some(8),
        image_url: "https://img.example/c.png".into(),
    }
}

fn instructor(key: &str, family_name: &str) -> Instructor {
    Instructor {
        instructor_key: key.into(),
        given_name: "Ada".into(),
        family_name: family_name.into(),
        title: "Professor".into(),
        organization: "Example University".into(),
        bio: "Teaches.".into(),
        image_url: String::new(),
    }
}

fn seat(mode: &str, amount: Option<&str>) -> Seat {
    Seat {
        mode: mode.into(),
        price: amount.map(|a| Price { currency_code: "USD".into(), amount: a.into() }),
        sku: amount.map(|_| format!("SKU-{mode}")).unwrap_or_default(),
        upgrade_deadline: amount.map(|_| t(86_400 * 20)),
    }
}

fn run(product_key: &str, name: &str, start_day: i64, seats: Vec<Seat>) -> CourseRun {
    CourseRun {
        course_run_key: format!("course-v1:{product_key}+{name}"),
        start: t(86_400 * start_day),
        end: t(86_400 * (start_day + 60)),
        enrollment_end: Some(t(86_400 * (start_day + 30))),
        pacing: Pacing::InstructorPaced,
        run_type: "paid-executive-education".into(),
        seats,
    }
}

/// A product with 2 instructors, 2 runs and 3 seats.
fn product(key: &str) -> CanonicalEvent {
    CanonicalEvent::ProductUpserted {
        course: course(key),
        instructors: vec![instructor("ada", "Lovelace"), instructor("alan", "Turing")],
        runs: vec![
            run(key, "2030T1", 1, vec![seat("audit", None), seat("verified", Some("149.00"))]),
            run(key, "2030T2", 100, vec![seat("paid-executive-education", Some("2450.00"))]),
        ],
    }
}

fn new(event_id: &str, event_name: EventName, occurred_at: DateTime<Utc>) -> NewIngestion {
    NewIngestion {
        id: uuid::Uuid::now_v7().to_string(),
        source: SOURCE.into(),
        event_id: event_id.into(),
        event_name,
        occurred_at,
        payload_hash: format!("hash-of-{event_id}"),
    }
}

fn name_of(event: &CanonicalEvent) -> EventName {
    match event {
        CanonicalEvent::ProductUpserted { .. } => EventName::ProductUpserted,
        CanonicalEvent::CourseUpserted { .. } => EventName::CourseUpserted,
        CanonicalEvent::CourseRunUpserted { .. } => EventName::CourseRunUpserted,
        CanonicalEvent::InstructorUpserted { .. } => EventName::InstructorUpserted,
        CanonicalEvent::ProductRetired { .. } => EventName::ProductRetired,
    }
}

/// Applies `event` as `event_id` of SOURCE at `at`, expecting a new record.
async fn apply(store: &dyn Store, event_id: &str, event: &CanonicalEvent, at: DateTime<Utc>) -> Ingestion {
    apply_as(store, new(event_id, name_of(event), at), event).await
}

async fn apply_as(store: &dyn Store, ingestion: NewIngestion, event: &CanonicalEvent) -> Ingestion {
    match store.apply(&ingestion, event, t(1_000_000)).await.unwrap() {
        Recorded::New(recorded) => recorded,
        Recorded::Existing(existing) => panic!("expected a new record, got {existing:?}"),
    }
}

fn statuses(ingestion: &Ingestion) -> Vec<(Step, StepStatus)> {
    ingestion.steps.iter().map(|s| (s.step, s.status)).collect()
}

fn step(ingestion: &Ingestion, step: Step) -> &StepResult {
    ingestion.steps.iter().find(|s| s.step == step).unwrap()
}

const OK: StepStatus = StepStatus::Ok;
const SKIPPED: StepStatus = StepStatus::Skipped;
const FAILED: StepStatus = StepStatus::Failed;

fn steps(write: [StepStatus; 4]) -> Vec<(Step, StepStatus)> {
    vec![
        (Step::Validate, OK),
        (Step::Transform, OK),
        (Step::Instructors, write[0]),
        (Step::Course, write[1]),
        (Step::CourseRuns, write[2]),
        (Step::Seats, write[3]),
    ]
}

async fn a_product_is_written_whole_and_reads_back(f: Fixture) {
    let event = product("ExecEd+LEAD1");
    let CanonicalEvent::ProductUpserted { course, instructors, runs } = &event else { unreachable!() };
    let recorded = apply(&*f.store, "e-1", &event, t(10)).await;
    assert_eq!(recorded.state, IngestionState::Applied);
    assert_eq!(statuses(&recorded), steps([OK, OK, OK, OK]));
    assert_eq!(recorded.product_key.as_deref(), Some("ExecEd+LEAD1"));
    assert_eq!(f.store.get_ingestion(&recorded.id).await.unwrap(), Some(recorded.clone()), "reads back as answered");
    assert_eq!(f.store.find_ingestion(SOURCE, "e-1").await.unwrap(), Some(recorded.clone()));

    let stored = f.store.get_product("ExecEd+LEAD1").await.unwrap().unwrap();
    assert_eq!(stored.source, SOURCE);
    assert_eq!(&stored.course, course);
    assert_eq!(&stored.instructors, instructors, "in display order");
    assert_eq!(&stored.runs, runs, "by start, seats in the order sent, prices exact");
    assert!(!stored.retired);
    assert_eq!(stored.source_update_time, t(10));
    assert_eq!((stored.created_at, stored.updated_at), (t(1_000_000), t(1_000_000)));

    let (run, product_key, retired) = f.store.get_course_run("course-v1:ExecEd+LEAD1+2030T1").await.unwrap().unwrap();
    assert_eq!((&run, product_key.as_str(), retired), (&runs[0], "ExecEd+LEAD1", false));
    assert_eq!(run.seats[1].price, Some(Price { currency_code: "USD".into(), amount: "149.00".into() }));
    assert_eq!(f.store.get_instructor(SOURCE, "alan").await.unwrap(), Some(instructors[1].clone()));
    assert_eq!(f.store.get_instructor("another-source", "alan").await.unwrap(), None, "instructors are per source");

    assert!(f.store.get_product("ExecEd+NONE").await.unwrap().is_none());
    assert!(f.store.get_course_run("course-v1:ExecEd+NONE+1").await.unwrap().is_none());
    assert!(f.store.get_ingestion("nope").await.unwrap().is_none());
    assert!(f.store.find_ingestion(SOURCE, "nope").await.unwrap().is_none());
}

async fn a_replay_answers_the_first_record_and_writes_nothing(f: Fixture) {
    let first = apply(&*f.store, "e-2", &product("ExecEd+REPLAY"), t(10)).await;
    // The same event id again, even with other content and a later time: the first record, nothing written.
    let mut changed = course("ExecEd+REPLAY");
    changed.title = "Changed".into();
    let again = new("e-2", EventName::CourseUpserted, t(20));
    let answered = f.store.apply(&again, &CanonicalEvent::CourseUpserted { course: changed }, t(1_000_001)).await;
    assert_eq!(answered.unwrap(), Recorded::Existing(first.clone()));
    let stored = f.store.get_product("ExecEd+REPLAY").await.unwrap().unwrap();
    assert_eq!((stored.course.title.as_str(), stored.source_update_time), ("REPLAY: the course", t(10)));
    assert!(f.store.get_ingestion(&again.id).await.unwrap().is_none(), "no second record");
    // The same id from another source is another event.
    let other = NewIngestion { source: "bootcamp-hub".into(), ..new("e-2", EventName::CourseUpserted, t(20)) };
    let theirs = CanonicalEvent::CourseUpserted { course: course("Boot+CAMP1") };
    assert!(matches!(f.store.apply(&other, &theirs, t(1_000_002)).await.unwrap(), Recorded::New(_)));
}

async fn a_stale_event_is_recorded_and_skipped(f: Fixture) {
    apply(&*f.store, "e-3", &product("ExecEd+STALE"), t(10)).await;
    let before = f.store.get_product("ExecEd+STALE").await.unwrap().unwrap();

    let mut older = course("ExecEd+STALE");
    older.title = "Older".into();
    let stale = apply(&*f.store, "e-4", &CanonicalEvent::CourseUpserted { course: older }, t(9)).await;
    assert_eq!(stale.state, IngestionState::SkippedStale);
    assert_eq!(statuses(&stale), steps([SKIPPED; 4]));
    let course_step = step(&stale, Step::Course);
    assert!(course_step.reason.starts_with("stale: the product reflects 2027-"), "{}", course_step.reason);
    assert_eq!(f.store.get_ingestion(&stale.id).await.unwrap(), Some(stale.clone()));

    let old_run = run("ExecEd+STALE", "2030T1", 1, vec![seat("audit", None)]);
    let stale_run = CanonicalEvent::CourseRunUpserted { product_key: "ExecEd+STALE".into(), run: old_run };
    assert_eq!(apply(&*f.store, "e-5", &stale_run, t(5)).await.state, IngestionState::SkippedStale);
    let retire = CanonicalEvent::ProductRetired { product_key: "ExecEd+STALE".into() };
    assert_eq!(apply(&*f.store, "e-6", &retire, t(5)).await.state, IngestionState::SkippedStale);
    assert_eq!(f.store.get_product("ExecEd+STALE").await.unwrap().unwrap(), before, "unchanged");

    // Instructors are dated on their own.
    let newer = CanonicalEvent::InstructorUpserted { instructor: instructor("ada", "Byron") };
    assert_eq!(apply(&*f.store, "e-7", &newer, t(30)).await.state, IngestionState::Applied);
    let older = CanonicalEvent::InstructorUpserted { instructor: instructor("ada", "King") };
    let skipped = apply(&*f.store, "e-8", &older, t(20)).await;
    assert_eq!(skipped.state, IngestionState::SkippedStale);
    assert!(step(&skipped, Step::Instructors).reason.starts_with("stale: the instructor reflects"));
    assert_eq!(skipped.product_key, None);
    assert_eq!(f.store.get_instructor(SOURCE, "ada").await.unwrap().unwrap().family_name, "Byron");
}

async fn a_newer_event_is_applied_and_equal_times_apply_again(f: Fixture) {
    let key = "ExecEd+NEWER";
    apply(&*f.store, "e-9", &product(key), t(10)).await;
    // Newer: one instructor fewer, a seat mode dropped and a price changed on the first
    // run, a new run; the second run, not in the event, is kept.
    let mut changed = course(key);
    changed.title = "Newer".into();
    changed.effort = None;
    changed.subjects = vec![];
    let first = run(key, "2030T1", 1, vec![seat("verified", Some("199.50"))]);
    let third = run(key, "2031T1", 400, vec![]);
    let event = CanonicalEvent::ProductUpserted {
        course: changed.clone(),
        instructors: vec![instructor("alan", "Turing")],
        runs: vec![first.clone(), third.clone()],
    };
    let applied = apply(&*f.store, "e-10", &event, t(20)).await;
    assert_eq!(applied.state, IngestionState::Applied);
    let stored = f.store.get_product(key).await.unwrap().unwrap();
    assert_eq!(stored.course, changed);
    assert_eq!(stored.instructors, [instructor("alan", "Turing")]);
    let CanonicalEvent::ProductUpserted { runs: original, .. } = product(key) else { unreachable!() };
    assert_eq!(stored.runs, [first, original[1].clone(), third], "the run not in the event is kept");
    assert_eq!(stored.source_update_time, t(20));
    assert_eq!(stored.created_at, t(1_000_000));

    // The same occurred_at again is applied (an idempotent upsert), not stale.
    let mut same_time = changed.clone();
    same_time.title = "Same time".into();
    let again = apply(&*f.store, "e-11", &CanonicalEvent::CourseUpserted { course: same_time }, t(20)).await;
    assert_eq!(again.state, IngestionState::Applied);
    assert_eq!(statuses(&again), steps([SKIPPED, OK, SKIPPED, SKIPPED]), "course.upserted has only a course");
    let stored = f.store.get_product(key).await.unwrap().unwrap();
    assert_eq!(stored.course.title, "Same time");
    assert_eq!(stored.instructors.len(), 1, "course.upserted leaves the instructors");
    assert_eq!(stored.runs.len(), 3, "and the runs");
}

async fn runs_are_added_and_products_retired(f: Fixture) {
    let key = "ExecEd+RUNS";
    apply(&*f.store, "e-12", &CanonicalEvent::CourseUpserted { course: course(key) }, t(10)).await;
    let added = run(key, "2032T1", 50, vec![seat("audit", None), seat("verified", Some("0"))]);
    let event = CanonicalEvent::CourseRunUpserted { product_key: key.into(), run: added };
    let recorded = apply(&*f.store, "e-13", &event, t(11)).await;
    assert_eq!(statuses(&recorded), steps([SKIPPED, SKIPPED, OK, OK]));
    // Seats of the run are replaced by the next upsert of it.
    let replaced = run(key, "2032T1", 50, vec![seat("professional", Some("10.5"))]);
    let event = CanonicalEvent::CourseRunUpserted { product_key: key.into(), run: replaced.clone() };
    apply(&*f.store, "e-14", &event, t(12)).await;
    let stored = f.store.get_product(key).await.unwrap().unwrap();
    assert_eq!(stored.runs, std::slice::from_ref(&replaced));
    assert_eq!(stored.source_update_time, t(12), "a run event dates its product");
    assert!(stored.instructors.is_empty());

    let retired = apply(&*f.store, "e-15", &CanonicalEvent::ProductRetired { product_key: key.into() }, t(13)).await;
    assert_eq!(statuses(&retired), steps([SKIPPED, OK, SKIPPED, SKIPPED]));
    let (run, _, is_retired) = f.store.get_course_run(&replaced.course_run_key).await.unwrap().unwrap();
    assert_eq!((run, is_retired), (replaced, true));
    // A later upsert changes the course but the product stays retired.
    apply(&*f.store, "e-16", &CanonicalEvent::CourseUpserted { course: course(key) }, t(14)).await;
    assert!(f.store.get_product(key).await.unwrap().unwrap().retired);
}

async fn a_failed_step_leaves_nothing_written(f: Fixture) {
    // A run for a product that does not exist.
    let orphan = run("ExecEd+GHOST", "2030T1", 1, vec![seat("audit", None)]);
    let event = CanonicalEvent::CourseRunUpserted { product_key: "ExecEd+GHOST".into(), run: orphan.clone() };
    let failed = apply(&*f.store, "e-17", &event, t(10)).await;
    assert_eq!(failed.state, IngestionState::Failed);
    assert_eq!(statuses(&failed), steps([SKIPPED, SKIPPED, FAILED, SKIPPED]));
    let runs_step = step(&failed, Step::CourseRuns);
    assert_eq!((runs_step.field_path.as_str(), runs_step.reason.as_str()), ("product_key", "no product ExecEd+GHOST"));
    assert_eq!(f.store.get_ingestion(&failed.id).await.unwrap(), Some(failed.clone()), "the failure is readable");
    assert!(f.store.get_course_run(&orphan.course_run_key).await.unwrap().is_none());
    let retire = CanonicalEvent::ProductRetired { product_key: "ExecEd+GHOST".into() };
    let failed = apply(&*f.store, "e-18", &retire, t(10)).await;
    assert_eq!(statuses(&failed), steps([SKIPPED, FAILED, SKIPPED, SKIPPED]));
    assert!(f.store.get_product("ExecEd+GHOST").await.unwrap().is_none());

    // A product whose instructors and course are written, in the transaction,
    // before its second run fails: the run key is already another product's.
    apply(&*f.store, "e-19", &product("ExecEd+OWNER"), t(10)).await;
    let mut taken = run("ExecEd+OWNER", "2030T2", 5, vec![seat("audit", None)]);
    taken.start = t(86_400 * 5);
    let event = CanonicalEvent::ProductUpserted {
        course: course("ExecEd+THIEF"),
        instructors: vec![instructor("grace", "Hopper"), instructor("ada", "Changed")],
        runs: vec![run("ExecEd+THIEF", "2030T1", 1, vec![seat("audit", None)]), taken],
    };
    let failed = apply(&*f.store, "e-20", &event, t(50)).await;
    assert_eq!(failed.state, IngestionState::Failed);
    assert_eq!(statuses(&failed), steps([OK, OK, FAILED, SKIPPED]));
    let runs_step = step(&failed, Step::CourseRuns);
    assert_eq!(
        (runs_step.field_path.as_str(), runs_step.reason.as_str()),
        ("course_runs[1].course_run_key", "belongs to product ExecEd+OWNER")
    );
    assert_eq!(f.store.get_ingestion(&failed.id).await.unwrap(), Some(failed));
    assert!(f.store.get_product("ExecEd+THIEF").await.unwrap().is_none(), "the course is rolled back");
    assert!(f.store.get_instructor(SOURCE, "grace").await.unwrap().is_none(), "a new instructor is rolled back");
    assert_eq!(f.store.get_instructor(SOURCE, "ada").await.unwrap().unwrap().family_name, "Lovelace", "and a change");
    assert!(f.store.get_course_run("course-v1:ExecEd+THIEF+2030T1").await.unwrap().is_none(), "and the first run");
    let owner = f.store.get_product("ExecEd+OWNER").await.unwrap().unwrap();
    assert_eq!((owner.runs[1].start, owner.source_update_time), (t(86_400 * 100), t(10)), "the owner is untouched");
    let listed = f.store.list_products(None, None, None, 10).await.unwrap();
    assert_eq!(listed.iter().map(|p| p.course.product_key.as_str()).collect::<Vec<_>>(), ["ExecEd+OWNER"]);
}

async fn a_product_of_another_source_is_refused(f: Fixture) {
    let theirs = NewIngestion { source: "bootcamp-hub".into(), ..new("b-1", EventName::ProductUpserted, t(10)) };
    apply_as(&*f.store, theirs, &product("Shared+KEY")).await;
    let before = f.store.get_product("Shared+KEY").await.unwrap().unwrap();
    let mine = CanonicalEvent::ProductUpserted {
        course: course("Shared+KEY"),
        instructors: vec![instructor("mine", "Mine")],
        runs: vec![],
    };
    let refused = apply(&*f.store, "e-21", &mine, t(99)).await;
    assert_eq!(refused.state, IngestionState::Failed);
    assert_eq!(statuses(&refused), steps([OK, FAILED, SKIPPED, SKIPPED]));
    let course_step = step(&refused, Step::Course);
    assert_eq!(
        (course_step.field_path.as_str(), course_step.reason.as_str()),
        ("product_key", "belongs to source bootcamp-hub")
    );
    assert!(f.store.get_instructor(SOURCE, "mine").await.unwrap().is_none());
    let run = run("Shared+KEY", "2030T9", 1, vec![]);
    let event = CanonicalEvent::CourseRunUpserted { product_key: "Shared+KEY".into(), run };
    let refused = apply(&*f.store, "e-22", &event, t(99)).await;
    assert_eq!(step(&refused, Step::CourseRuns).reason, "belongs to source bootcamp-hub");
    let retire = CanonicalEvent::ProductRetired { product_key: "Shared+KEY".into() };
    assert_eq!(apply(&*f.store, "e-23", &retire, t(99)).await.state, IngestionState::Failed);
    assert_eq!(f.store.get_product("Shared+KEY").await.unwrap().unwrap(), before);
}

async fn failures_before_any_write_are_recorded_with_their_steps(f: Fixture) {
    let failed_steps = vec![
        StepResult {
            step: Step::Validate,
            status: StepStatus::Ok,
            field_path: String::new(),
            reason: String::new(),
            call: String::new(),
        },
        StepResult {
            step: Step::Transform,
            status: StepStatus::Failed,
            field_path: "runs[1].end".into(),
            reason: "is not after start".into(),
            call: String::new(),
        },
    ];
    let ingestion = new("e-24", EventName::ProductUpserted, t(10));
    let Recorded::New(recorded) = f.store.record_failure(&ingestion, &failed_steps, t(1_000_000)).await.unwrap() else {
        panic!("a new record")
    };
    assert_eq!(
        (recorded.state, &recorded.steps, recorded.product_key.as_deref()),
        (IngestionState::Failed, &failed_steps, None)
    );
    assert_eq!(f.store.get_ingestion(&ingestion.id).await.unwrap(), Some(recorded.clone()));
    let again = new("e-24", EventName::ProductUpserted, t(10));
    assert_eq!(f.store.record_failure(&again, &[], t(1_000_001)).await.unwrap(), Recorded::Existing(recorded.clone()));
    // An event id that failed once is answered from that failure.
    let replay = f.store.apply(&again, &product("ExecEd+LATE"), t(1_000_002)).await.unwrap();
    assert_eq!(replay, Recorded::Existing(recorded));
    assert!(f.store.get_product("ExecEd+LATE").await.unwrap().is_none());
}

async fn discovery_steps_are_appended(f: Fixture) {
    let recorded = apply(&*f.store, "e-25", &product("ExecEd+DISC"), t(10)).await;
    let call = |n: u32| StepResult {
        step: Step::Discovery,
        status: StepStatus::Ok,
        field_path: String::new(),
        reason: String::new(),
        call: format!("PATCH /api/v1/course_runs/{n}/"),
    };
    f.store.append_steps(&recorded.id, &[call(1)]).await.unwrap();
    f.store.append_steps(&recorded.id, &[call(2), call(3)]).await.unwrap();
    f.store.append_steps("nope", &[call(4)]).await.unwrap();
    let read = f.store.get_ingestion(&recorded.id).await.unwrap().unwrap();
    let mut expected = recorded.steps.clone();
    expected.extend([call(1), call(2), call(3)]);
    assert_eq!(read.steps, expected);
}

async fn products_list_by_key_filtered_and_paged(f: Fixture) {
    for key in ["ExecEd+C", "ExecEd+A", "ExecEd+B"] {
        apply(&*f.store, &format!("e-{key}"), &product(key), t(10)).await;
    }
    let mut bootcamp = course("Boot+A");
    bootcamp.product_type = ProductType::Bootcamp;
    let theirs = NewIngestion { source: "bootcamp-hub".into(), ..new("b-2", EventName::CourseUpserted, t(10)) };
    apply_as(&*f.store, theirs, &CanonicalEvent::CourseUpserted { course: bootcamp }).await;
    let keys = |products: Vec<catalog_ingest::store::Product>| {
        products.into_iter().map(|p| p.course.product_key).collect::<Vec<_>>()
    };
    let all = f.store.list_products(None, None, None, 10).await.unwrap();
    assert_eq!(all[1].runs.len(), 2, "listed with their runs");
    assert_eq!(all[1].instructors.len(), 2, "and instructors");
    assert_eq!(keys(all), ["Boot+A", "ExecEd+A", "ExecEd+B", "ExecEd+C"]);
    assert_eq!(keys(f.store.list_products(Some(SOURCE), None, None, 2).await.unwrap()), ["ExecEd+A", "ExecEd+B"]);
    assert_eq!(keys(f.store.list_products(Some(SOURCE), None, Some("ExecEd+B"), 2).await.unwrap()), ["ExecEd+C"]);
    assert_eq!(keys(f.store.list_products(None, Some(ProductType::Bootcamp), None, 10).await.unwrap()), ["Boot+A"]);
    let exec_ed = Some(ProductType::ExecutiveEducation);
    assert_eq!(
        keys(f.store.list_products(Some("bootcamp-hub"), exec_ed, None, 10).await.unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(
        keys(f.store.list_products(None, exec_ed, Some("ExecEd+A"), 10).await.unwrap()),
        ["ExecEd+B", "ExecEd+C"]
    );
}

async fn a_product_keeps_newer_instructor_fields(f: Fixture) {
    apply(&*f.store, "e-26", &CanonicalEvent::InstructorUpserted { instructor: instructor("ada", "Byron") }, t(50))
        .await;
    // An older product event still links the instructor but does not overwrite her.
    apply(&*f.store, "e-27", &product("ExecEd+LINK"), t(40)).await;
    let stored = f.store.get_product("ExecEd+LINK").await.unwrap().unwrap();
    assert_eq!(stored.instructors[0].family_name, "Byron");
    assert_eq!(stored.instructors[1].family_name, "Turing");
}

async fn times_round_to_what_both_backends_keep(f: Fixture) {
    let now = Utc::now();
    let ingestion = new("e-28", EventName::CourseUpserted, now);
    let Recorded::New(recorded) = f
        .store
        .apply(&ingestion, &CanonicalEvent::CourseUpserted { course: course("ExecEd+TIME") }, now)
        .await
        .unwrap()
    else {
        panic!("a new record")
    };
    assert_eq!((recorded.occurred_at, recorded.created_at), (stored_time(now), stored_time(now)));
    assert_eq!(f.store.get_ingestion(&ingestion.id).await.unwrap(), Some(recorded));
    assert_eq!(f.store.get_product("ExecEd+TIME").await.unwrap().unwrap().source_update_time, stored_time(now));
}

async fn concurrent_applies_of_one_event_record_it_once(f: Fixture) {
    let tasks = (0..8).map(|_| {
        let store = Arc::clone(&f.store);
        tokio::spawn(async move {
            let event = product("ExecEd+RACE");
            store.apply(&new("e-race", EventName::ProductUpserted, t(10)), &event, t(1_000_000)).await.unwrap()
        })
    });
    let mut fresh = Vec::new();
    let mut existing = Vec::new();
    for task in tasks.collect::<Vec<_>>() {
        match task.await.unwrap() {
            Recorded::New(ingestion) => fresh.push(ingestion),
            Recorded::Existing(ingestion) => existing.push(ingestion),
        }
    }
    assert_eq!((fresh.len(), existing.len()), (1, 7), "exactly one new record");
    assert!(existing.iter().all(|e| *e == fresh[0]), "every other call answers the winner's record");
    assert_eq!(f.store.get_product("ExecEd+RACE").await.unwrap().unwrap().runs.len(), 2);

    // Different events for one new product, at once: each recorded, all applied in some order.
    let tasks = (0..6).map(|n| {
        let store = Arc::clone(&f.store);
        tokio::spawn(async move {
            let mut event = product("ExecEd+BUSY");
            if let CanonicalEvent::ProductUpserted { course, .. } = &mut event {
                course.title = format!("Version {n}");
            }
            store.apply(&new(&format!("e-busy-{n}"), EventName::ProductUpserted, t(n)), &event, t(1_000_000)).await
        })
    });
    let mut applied = 0;
    for task in tasks.collect::<Vec<_>>() {
        let Recorded::New(ingestion) = task.await.unwrap().unwrap() else { panic!("distinct events") };
        assert_ne!(ingestion.state, IngestionState::Failed);
        applied += usize::from(ingestion.state == IngestionState::Applied);
    }
    assert!(applied >= 1);
    let stored = f.store.get_product("ExecEd+BUSY").await.unwrap().unwrap();
    assert_eq!((stored.course.title.as_str(), stored.source_update_time), ("Version 5", t(5)), "the newest wins");
}

macro_rules! contract {
    ($name:ident, $kind:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn a_product_is_written_whole_and_reads_back() {
                super::a_product_is_written_whole_and_reads_back(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_replay_answers_the_first_record_and_writes_nothing() {
                super::a_replay_answers_the_first_record_and_writes_nothing(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_stale_event_is_recorded_and_skipped() {
                super::a_stale_event_is_recorded_and_skipped(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_newer_event_is_applied_and_equal_times_apply_again() {
                super::a_newer_event_is_applied_and_equal_times_apply_again(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn runs_are_added_and_products_retired() {
                super::runs_are_added_and_products_retired(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_failed_step_leaves_nothing_written() {
                super::a_failed_step_leaves_nothing_written(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_product_of_another_source_is_refused() {
                super::a_product_of_another_source_is_refused(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn failures_before_any_write_are_recorded_with_their_steps() {
                super::failures_before_any_write_are_recorded_with_their_steps(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn discovery_steps_are_appended() {
                super::discovery_steps_are_appended(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn products_list_by_key_filtered_and_paged() {
                super::products_list_by_key_filtered_and_paged(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_product_keeps_newer_instructor_fields() {
                super::a_product_keeps_newer_instructor_fields(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn times_round_to_what_both_backends_keep() {
                super::times_round_to_what_both_backends_keep(fixture($kind).await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_applies_of_one_event_record_it_once() {
                super::concurrent_applies_of_one_event_record_it_once(fixture($kind).await).await;
            }
        }
    };
}

contract!(postgres, Backend::Postgres);
contract!(sqlite, Backend::Sqlite);
