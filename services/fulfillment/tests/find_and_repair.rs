//! Find and repair over gRPC: `ListFulfillments` finds failed jobs across
//! orders, newest change first, paged, with a total; `RetryFulfillments`
//! re-drives them in bulk within a bound (a dry run changes nothing), each
//! transition naming who asked, as `RetryFulfillment`'s now does; bad filters
//! and bounds name the field and change nothing. On Postgres + Redis Streams
//! and on SQLite + the embedded log, with a wiremock LMS.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

mod common;

use common::*;
use fulfillment::domain::JobState;
use kit::db::Backend;
use proto::commerce::fulfillment::v1 as pb;
use tonic::Code;
use wiremock::ResponseTemplate;

const RUN_1: &str = "course-v1:edX+Repair+R1";
const RUN_2: &str = "course-v1:edX+Repair+R2";

fn states(states: &[pb::FulfillmentState]) -> pb::FulfillmentFilter {
    pb::FulfillmentFilter { states: states.iter().map(|s| *s as i32).collect(), ..Default::default() }
}

fn failed_filter() -> pb::FulfillmentFilter {
    states(&[pb::FulfillmentState::Failed])
}

/// A one-line order for `run`, accepted and attempted once: the LMS refuses
/// it (400), so it is FAILED. Answers its fulfillment id.
async fn failed_order(f: &Fixture, run: &str) -> String {
    lms_answers(f, ENROLL, ResponseTemplate::new(400).set_body_string("Course run not found"), 1).await;
    let accepted = f.fulfill(order(&order_number(), vec![course_run("l1", run, "verified")])).await.unwrap();
    let id = accepted.fulfillments[0].fulfillment_id.clone();
    f.attempt_at(now()).await;
    assert_eq!(f.get(&id).await.state, pb::FulfillmentState::Failed as i32);
    id
}

/// `request` as the caller `subject` (what `kit::access` puts in the metadata once it verified the token).
fn as_caller<T>(subject: &str, request: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(request);
    request.metadata_mut().insert(kit::access::SUBJECT_METADATA, subject.parse().unwrap());
    request
}

async fn list(
    f: &Fixture,
    request: pb::ListFulfillmentsRequest,
) -> Result<pb::ListFulfillmentsResponse, tonic::Status> {
    f.client.clone().list_fulfillments(request).await.map(|r| r.into_inner())
}

async fn retry(
    f: &Fixture,
    request: pb::RetryFulfillmentsRequest,
) -> Result<pb::RetryFulfillmentsResponse, tonic::Status> {
    f.client.clone().retry_fulfillments(as_caller("ops@example.org", request)).await.map(|r| r.into_inner())
}

fn fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    kit::error::field_violations(status).into_iter().map(|(field, _)| field).collect()
}

async fn state_of(f: &Fixture, ids: &[String]) -> Vec<i32> {
    let mut states = Vec::new();
    for id in ids {
        states.push(f.get(id).await.state);
    }
    states
}

async fn failed_jobs_are_found_across_orders_newest_first_in_pages_with_a_total(f: Fixture) {
    let first = failed_order(&f, RUN_1).await;
    let second = failed_order(&f, RUN_2).await;
    let third = failed_order(&f, RUN_1).await;
    lms_answers(&f, ENROLL, ResponseTemplate::new(200), 1).await;
    let enrolled = f.fulfill(order(&order_number(), vec![course_run("l1", RUN_1, "verified")])).await.unwrap();
    f.attempt_at(now()).await;
    let enrolled = enrolled.fulfillments[0].fulfillment_id.clone();
    assert_eq!(f.get(&enrolled).await.state, pb::FulfillmentState::Succeeded as i32);

    let page =
        list(&f, pb::ListFulfillmentsRequest { filter: Some(failed_filter()), page_size: 2, ..Default::default() })
            .await
            .unwrap();
    let ids: Vec<&str> = page.fulfillments.iter().map(|j| j.fulfillment_id.as_str()).collect();
    assert_eq!(ids, [third.as_str(), second.as_str()], "the most recently changed first");
    assert_eq!(page.total_size, 3, "the total counts every page");
    let error = page.fulfillments[0].last_error.clone().unwrap();
    assert_eq!((error.kind, error.lms_status), (pb::FulfillmentErrorKind::Rejected as i32, 400));
    assert!(!page.next_page_token.is_empty());
    let rest = list(
        &f,
        pb::ListFulfillmentsRequest {
            filter: Some(failed_filter()),
            page_size: 2,
            page_token: page.next_page_token.clone(),
        },
    )
    .await
    .unwrap();
    let ids: Vec<&str> = rest.fulfillments.iter().map(|j| j.fulfillment_id.as_str()).collect();
    assert_eq!(ids, [first.as_str()]);
    assert!(rest.next_page_token.is_empty(), "the last page");

    let run_1 = pb::FulfillmentFilter {
        course_run_key: RUN_1.into(),
        error_kind: pb::FulfillmentErrorKind::Rejected as i32,
        source_system: "commercetools".into(),
        updated_after: Some(kit::time::to_timestamp(now() - secs(3600))),
        ..failed_filter()
    };
    let found = list(&f, pb::ListFulfillmentsRequest { filter: Some(run_1), ..Default::default() }).await.unwrap();
    let ids: Vec<&str> = found.fulfillments.iter().map(|j| j.fulfillment_id.as_str()).collect();
    assert_eq!((ids, found.total_size), (vec![third.as_str(), first.as_str()], 2));
    let everything = list(&f, pb::ListFulfillmentsRequest::default()).await.unwrap();
    assert_eq!(everything.total_size, 4);
    assert_eq!(everything.fulfillments[0].fulfillment_id, enrolled);
    let elsewhere = pb::FulfillmentFilter { source_system: "shopify".into(), ..Default::default() };
    let none = list(&f, pb::ListFulfillmentsRequest { filter: Some(elsewhere), ..Default::default() }).await.unwrap();
    assert_eq!((none.fulfillments.len(), none.total_size), (0, 0));
}

async fn bad_filters_and_bounds_name_the_field_and_change_nothing(f: Fixture) {
    let failed = failed_order(&f, RUN_1).await;
    let bad_list = |filter: pb::FulfillmentFilter, page_size: i32, page_token: &str| pb::ListFulfillmentsRequest {
        filter: Some(filter),
        page_size,
        page_token: page_token.into(),
    };
    let cases = [
        (bad_list(pb::FulfillmentFilter { states: vec![99], ..Default::default() }, 0, ""), "filter.states[0]"),
        (bad_list(pb::FulfillmentFilter { states: vec![0], ..Default::default() }, 0, ""), "filter.states[0]"),
        (bad_list(states(&[pb::FulfillmentState::Failed, pb::FulfillmentState::Failed]), 0, ""), "filter.states[1]"),
        (
            bad_list(pb::FulfillmentFilter { course_run_key: "not a run".into(), ..Default::default() }, 0, ""),
            "filter.course_run_key",
        ),
        (bad_list(pb::FulfillmentFilter { error_kind: 42, ..Default::default() }, 0, ""), "filter.error_kind"),
        (
            bad_list(pb::FulfillmentFilter { source_system: "x".repeat(500), ..Default::default() }, 0, ""),
            "filter.source_system",
        ),
        (
            bad_list(
                pb::FulfillmentFilter {
                    updated_after: Some(kit::time::to_timestamp(now())),
                    updated_before: Some(kit::time::to_timestamp(now() - secs(60))),
                    ..Default::default()
                },
                0,
                "",
            ),
            "filter.updated_after",
        ),
        (
            bad_list(
                pb::FulfillmentFilter {
                    updated_before: Some(prost_types::Timestamp { seconds: i64::MAX, nanos: 0 }),
                    ..Default::default()
                },
                0,
                "",
            ),
            "filter.updated_before",
        ),
        (bad_list(pb::FulfillmentFilter::default(), 501, ""), "page_size"),
        (bad_list(pb::FulfillmentFilter::default(), -1, ""), "page_size"),
        (bad_list(pb::FulfillmentFilter::default(), 0, "position:2"), "page_token"),
    ];
    for (request, field) in cases {
        let refused = list(&f, request.clone()).await.unwrap_err();
        assert_eq!(fields(&refused), [field], "{request:?}");
    }

    let bad_retry = |filter: pb::FulfillmentFilter, max_jobs: i32| pb::RetryFulfillmentsRequest {
        filter: Some(filter),
        max_jobs,
        dry_run: false,
    };
    let cases = [
        (bad_retry(failed_filter(), 0), vec!["max_jobs"]),
        (bad_retry(failed_filter(), -3), vec!["max_jobs"]),
        (bad_retry(failed_filter(), 1001), vec!["max_jobs"]),
        (
            bad_retry(states(&[pb::FulfillmentState::Failed, pb::FulfillmentState::Succeeded]), 10),
            vec!["filter.states[1]"],
        ),
        (
            bad_retry(pb::FulfillmentFilter { course_run_key: "nope".into(), ..Default::default() }, 0),
            vec!["filter.course_run_key", "max_jobs"],
        ),
    ];
    for (request, expected) in cases {
        let refused = retry(&f, request.clone()).await.unwrap_err();
        assert_eq!(fields(&refused), expected, "{request:?}");
    }
    assert_eq!(f.get(&failed).await.state, pb::FulfillmentState::Failed as i32, "refusals change nothing");
    assert_eq!(f.store().transitions(&failed).await.unwrap().len(), 3, "accepted, claimed, failed: nothing more");
}

async fn retrying_in_bulk_is_bounded_previewed_and_names_who_asked(f: Fixture) {
    let run_1 = [failed_order(&f, RUN_1).await, failed_order(&f, RUN_1).await, failed_order(&f, RUN_1).await];
    let other = failed_order(&f, RUN_2).await;
    let run_1_filter = pb::FulfillmentFilter { course_run_key: RUN_1.into(), ..failed_filter() };
    let newest_first: Vec<String> = run_1.iter().rev().cloned().collect();

    let preview =
        retry(&f, pb::RetryFulfillmentsRequest { filter: Some(run_1_filter.clone()), max_jobs: 3, dry_run: true })
            .await
            .unwrap();
    assert_eq!((preview.retried_count, &preview.fulfillment_ids, preview.dry_run), (3, &newest_first, true));
    let failed = pb::FulfillmentState::Failed as i32;
    assert_eq!(state_of(&f, &run_1).await, [failed; 3], "a dry run changes nothing");

    let over =
        retry(&f, pb::RetryFulfillmentsRequest { filter: Some(run_1_filter.clone()), max_jobs: 2, dry_run: false })
            .await
            .unwrap_err();
    assert_eq!(over.code(), Code::FailedPrecondition);
    assert_eq!(kit::error::reason(&over).as_deref(), Some("TOO_MANY_MATCH"));
    assert!(over.message().contains("3 failed fulfillments match"), "{}", over.message());
    assert_eq!(state_of(&f, &run_1).await, [failed; 3], "over the bound, none is retried");
    let over_preview =
        retry(&f, pb::RetryFulfillmentsRequest { filter: Some(run_1_filter.clone()), max_jobs: 2, dry_run: true })
            .await
            .unwrap_err();
    assert_eq!(
        kit::error::reason(&over_preview).as_deref(),
        Some("TOO_MANY_MATCH"),
        "a dry run answers as the call would"
    );

    let retried =
        retry(&f, pb::RetryFulfillmentsRequest { filter: Some(run_1_filter.clone()), max_jobs: 3, dry_run: false })
            .await
            .unwrap();
    assert_eq!((retried.retried_count, &retried.fulfillment_ids, retried.dry_run), (3, &newest_first, false));
    for id in &run_1 {
        let job = f.get(id).await;
        assert_eq!(
            (job.state, job.attempts),
            (pb::FulfillmentState::Pending as i32, 0),
            "re-driven as RetryFulfillment does"
        );
        let last = f.store().transitions(id).await.unwrap().pop().unwrap();
        assert_eq!(
            (last.from, last.to, last.requested_by.as_deref()),
            (Some(JobState::Failed), JobState::Pending, Some("ops@example.org")),
            "the transition names who asked"
        );
    }
    assert_eq!(f.get(&other).await.state, failed, "another course run's failure is left alone");
    let again = retry(&f, pb::RetryFulfillmentsRequest { filter: Some(run_1_filter), max_jobs: 3, dry_run: false })
        .await
        .unwrap();
    assert_eq!((again.retried_count, again.fulfillment_ids.len()), (0, 0), "nothing left to retry");

    // The single retry names who asked too.
    let single = pb::RetryFulfillmentRequest { fulfillment_id: other.clone() };
    f.client.clone().retry_fulfillment(as_caller("support-7", single)).await.unwrap();
    let last = f.store().transitions(&other).await.unwrap().pop().unwrap();
    assert_eq!((last.to, last.requested_by.as_deref()), (JobState::Pending, Some("support-7")));

    // Re-driven jobs are due now: the workers enrol them.
    lms_answers(&f, ENROLL, ResponseTemplate::new(200), 4).await;
    for _ in 0..4 {
        f.attempt_at(now()).await;
    }
    let succeeded = pb::FulfillmentState::Succeeded as i32;
    assert_eq!(state_of(&f, &[run_1.to_vec(), vec![other]].concat()).await, [succeeded; 4]);
}

macro_rules! suite {
    ($name:ident, $kind:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn failed_jobs_are_found_across_orders_newest_first_in_pages_with_a_total() {
                super::failed_jobs_are_found_across_orders_newest_first_in_pages_with_a_total(fixture($kind).await)
                    .await;
            }
            #[tokio::test]
            async fn bad_filters_and_bounds_name_the_field_and_change_nothing() {
                super::bad_filters_and_bounds_name_the_field_and_change_nothing(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn retrying_in_bulk_is_bounded_previewed_and_names_who_asked() {
                super::retrying_in_bulk_is_bounded_previewed_and_names_who_asked(fixture($kind).await).await;
            }
        }
    };
}

suite!(postgres, Backend::Postgres);
suite!(sqlite, Backend::Sqlite);
