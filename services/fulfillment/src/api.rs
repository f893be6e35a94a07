//! The gRPC face of Fulfillment: each RPC parses its request into domain
//! values (`convert.rs`, every bad field named), resolves the learner, asks the
//! store, and answers. No SQL here.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kit::client::TracedChannel;
use kit::error::{BadRequest, with_reason};
use kit::trace::TextContext;
use proto::commerce::catalog::v1 as catalog;
use proto::commerce::catalog::v1::catalog_ingest_service_client::CatalogIngestServiceClient;
use proto::commerce::fulfillment::v1 as pb;
use proto::commerce::fulfillment::v1::fulfillment_service_server::FulfillmentService;
use proto::commerce::identity::v1 as identity;
use proto::commerce::identity::v1::customer_identity_service_client::CustomerIdentityServiceClient;
use tokio::sync::Notify;
use tonic::{Code, Request, Response, Status};
use vocab::{LmsUserId, LmsUsername};

use crate::convert::{
    AskedRefund, AskedRefundRequest, BulkRetry, JobsPage, OrderPage, OrderRefund, Revocation, fulfillment_id,
    order_page_token,
};
pub use crate::convert::{parse_order, to_proto};
use crate::domain::{JobState, Learner, LearnerKey, LearnerRef, Order, Product, RefundTerms, Repeat, compare_repeat};
use crate::filter::PageCursor;
use crate::store::{
    BulkRedriven, FulfillmentJob, NewJob, NewRefundRequest, Redriven, RefundOf, RefundRequested, Refunded, Store,
    StoreError,
};
use kit::time::to_timestamp;

/// Every line of one order, read in one page (an order has at most `MAX_LINE_ITEMS` lines).
const ORDER_LINES: i64 = kit::page::MAX_PAGE_SIZE as i64;
/// How long FulfillOrder waits for CustomerIdentity (and CatalogIngest).
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers `commerce.fulfillment.v1.FulfillmentService`.
#[derive(Clone)]
pub struct FulfillmentApi {
    store: Arc<dyn Store>,
    identity: CustomerIdentityServiceClient<TracedChannel>,
    wake: Arc<Notify>,
    clock_skew: Duration,
    catalog: Option<CatalogIngestServiceClient<TracedChannel>>,
}

impl FulfillmentApi {
    /// The API over `store`, resolving customers through `identity`; `wake` is
    /// notified when new work is stored; `date_placed` may be up to `clock_skew` ahead of now.
    pub fn new(
        store: Arc<dyn Store>,
        identity: CustomerIdentityServiceClient<TracedChannel>,
        wake: Arc<Notify>,
        clock_skew: Duration,
    ) -> Self {
        Self { store, identity, wake, clock_skew, catalog: None }
    }

    /// Also checks, before accepting an order, that each course run is in the
    /// catalog, not retired, open for enrollment, and sold in the mode bought
    /// (CatalogIngest's `GetCourseRun`).
    pub fn checking_catalog(mut self, catalog: CatalogIngestServiceClient<TracedChannel>) -> Self {
        self.catalog = Some(catalog);
        self
    }

    /// Refuses a line whose course run the catalog does not sell in its mode,
    /// or whose enrollment has closed by `now`.
    async fn check_sellable(&self, order: &Order, now: DateTime<Utc>) -> Result<(), Status> {
        let Some(catalog) = &self.catalog else {
            return Ok(());
        };
        for (i, line) in order.lines().iter().enumerate() {
            let Product::CourseRun { course_run_key, mode, .. } = &line.product else {
                continue;
            };
            let key = course_run_key.as_str();
            let field = format!("line_items[{i}].course_run.course_run_key");
            let refuse_with = |reason: &str, why: String, more: Vec<(&str, String)>| {
                let metadata = [("course_run_key", key.to_string()), ("line_item_id", line.line_item_id.to_string())];
                with_reason(
                    Code::FailedPrecondition,
                    format!("{field}: {why}"),
                    reason,
                    metadata.into_iter().chain(more),
                )
            };
            let refuse = |reason: &str, why: String| refuse_with(reason, why, Vec::new());
            let mut request = Request::new(catalog::GetCourseRunRequest { course_run_key: key.to_string() });
            request.set_timeout(IDENTITY_TIMEOUT);
            let answer = match catalog.clone().get_course_run(request).await {
                Ok(answer) => answer.into_inner(),
                Err(status) if status.code() == Code::NotFound => {
                    return Err(refuse("COURSE_RUN_UNKNOWN", format!("the catalog has no course run {key}")));
                }
                Err(status) => {
                    return Err(kit::error::from_peer(
                        "CatalogIngest",
                        &format!("checking course run {key} (nothing was stored)"),
                        &status,
                    ));
                }
            };
            if answer.product_retired {
                return Err(refuse("COURSE_RUN_RETIRED", format!("course run {key} is no longer sold")));
            }
            let run = answer.course_run.unwrap_or_default();
            if let Some(closed) = enrollment_closed(&run, now) {
                let closes = closed.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                let line_item = line.line_item_id.as_str();
                return Err(refuse_with(
                    "ENROLLMENT_CLOSED",
                    format!("line item {line_item}: enrollment in course run {key} closed at {closes}"),
                    vec![("enrollment_end_time", closes)],
                ));
            }
            let seats = run.seats;
            if !seats.iter().any(|seat| seat.mode == mode.as_str()) {
                let sold: Vec<&str> = seats.iter().map(|seat| seat.mode.as_str()).collect();
                return Err(refuse(
                    "MODE_NOT_SOLD",
                    format!("course run {key} is not sold in mode {} (sold: {})", mode.as_str(), sold.join(", ")),
                ));
            }
        }
        Ok(())
    }

    /// The learner's LMS account: as given, or through CustomerIdentity.
    async fn resolve(&self, learner: &LearnerRef) -> Result<Learner, Status> {
        let customer_id = match learner {
            LearnerRef::Lms(learner) => return Ok(learner.clone()),
            LearnerRef::Customer { customer_id } => customer_id,
        };
        let mut request = Request::new(identity::GetCustomerRequest { customer_id: customer_id.to_string() });
        request.set_timeout(IDENTITY_TIMEOUT);
        let found = self.identity.clone().get_customer(request).await;
        let metadata = [("customer_id", customer_id.to_string())];
        let customer = match found {
            Ok(response) => response.into_inner().customer,
            Err(status) if status.code() == Code::NotFound => {
                return Err(with_reason(
                    Code::FailedPrecondition,
                    format!("learner.customer_id: no customer {customer_id} in CustomerIdentity"),
                    "UNKNOWN_CUSTOMER",
                    metadata,
                ));
            }
            Err(status) => {
                return Err(kit::error::from_peer(
                    "CustomerIdentity",
                    &format!("resolving customer {customer_id} (nothing was stored)"),
                    &status,
                ));
            }
        };
        let customer = customer.unwrap_or_default();
        if customer.retired {
            return Err(with_reason(
                Code::FailedPrecondition,
                format!("learner.customer_id: customer {customer_id} is retired and cannot be enrolled"),
                "CUSTOMER_RETIRED",
                metadata,
            ));
        }
        match (LmsUserId::parse(&customer.lms_user_id), LmsUsername::parse(&customer.lms_username)) {
            (Ok(lms_user_id), Ok(lms_username)) => {
                Ok(Learner { customer_id: Some(customer_id.clone()), lms_user_id, lms_username })
            }
            (id, name) => {
                tracing::error!(?id, ?name, "CustomerIdentity answered a customer without a usable LMS account");
                Err(Status::internal(format!(
                    "CustomerIdentity answered customer {customer_id} without a usable LMS user id and username; \
                     nothing was stored"
                )))
            }
        }
    }

    /// Every job of an order, in line order.
    async fn order_jobs(&self, order_number: &str) -> Result<Vec<FulfillmentJob>, Status> {
        self.store.list_order(order_number, 0, ORDER_LINES).await.map_err(store_status)
    }

    fn already_accepted(order_number: &str, line_item_id: &str) -> Status {
        with_reason(
            Code::AlreadyExists,
            format!(
                "order {order_number} was already accepted, and line item {line_item_id} differs from (or is \
                 missing from) what was accepted then; an accepted order cannot change"
            ),
            "ORDER_CONTENT_MISMATCH",
            [("order_number", order_number.to_string()), ("line_item_id", line_item_id.to_string())],
        )
    }
}

#[tonic::async_trait]
impl FulfillmentService for FulfillmentApi {
    async fn fulfill_order(
        &self,
        request: Request<pb::FulfillOrderRequest>,
    ) -> Result<Response<pb::FulfillOrderResponse>, Status> {
        let order = parse_order(request.get_ref(), Utc::now(), self.clock_skew)?;
        let number = order.header().order_number.clone();
        let stored = self.store.order_fingerprints(&number).await.map_err(store_status)?;
        match compare_repeat(&order, &stored) {
            Repeat::Same => {
                let fulfillments = self.order_jobs(&number).await?.iter().map(to_proto).collect();
                return Ok(Response::new(pb::FulfillOrderResponse { fulfillments, created: false }));
            }
            Repeat::Conflict { line_item_id } => return Err(Self::already_accepted(&number, &line_item_id)),
            Repeat::New => {}
        }
        self.check_sellable(&order, Utc::now()).await?;
        let learner = self.resolve(order.learner()).await?;
        let traceparent = TextContext::current().traceparent;
        let jobs: Vec<NewJob> = order
            .jobs(&learner)
            .into_iter()
            .map(|spec| NewJob { id: uuid::Uuid::now_v7().to_string(), spec, traceparent: traceparent.clone() })
            .collect();
        let now = crate::store::stored_time(Utc::now());
        if self.store.insert_order(&jobs, now).await.map_err(store_status)? {
            // Answered from what was stored, so it shows the jobs as accepted
            // (PENDING), whatever a worker does with them from now on.
            let fulfillments = jobs.iter().map(|new| to_proto(&FulfillmentJob::accepted(new, now))).collect();
            self.wake.notify_one();
            return Ok(Response::new(pb::FulfillOrderResponse { fulfillments, created: true }));
        }
        // A concurrent acceptance of the same order won: compare with what it stored.
        let stored = self.store.order_fingerprints(&number).await.map_err(store_status)?;
        if let Repeat::Conflict { line_item_id } = compare_repeat(&order, &stored) {
            return Err(Self::already_accepted(&number, &line_item_id));
        }
        let fulfillments = self.order_jobs(&number).await?.iter().map(to_proto).collect();
        Ok(Response::new(pb::FulfillOrderResponse { fulfillments, created: false }))
    }

    async fn get_fulfillment(
        &self,
        request: Request<pb::GetFulfillmentRequest>,
    ) -> Result<Response<pb::GetFulfillmentResponse>, Status> {
        let id = fulfillment_id(&request.get_ref().fulfillment_id)?;
        match self.store.get(&id).await.map_err(store_status)? {
            Some(job) => Ok(Response::new(pb::GetFulfillmentResponse { fulfillment: Some(to_proto(&job)) })),
            None => Err(not_found(&id)),
        }
    }

    async fn list_order_fulfillments(
        &self,
        request: Request<pb::ListOrderFulfillmentsRequest>,
    ) -> Result<Response<pb::ListOrderFulfillmentsResponse>, Status> {
        let page = OrderPage::parse(request.get_ref())?;
        let size = page.size();
        let jobs = self
            .store
            .list_order(page.number().as_str(), page.first_position(), size.rows_to_read())
            .await
            .map_err(store_status)?;
        let (jobs, next_page_token) = size.split(jobs, |last| order_page_token(last.spec.position + 1));
        Ok(Response::new(pb::ListOrderFulfillmentsResponse {
            fulfillments: jobs.iter().map(to_proto).collect(),
            next_page_token,
        }))
    }

    async fn retry_fulfillment(
        &self,
        request: Request<pb::RetryFulfillmentRequest>,
    ) -> Result<Response<pb::RetryFulfillmentResponse>, Status> {
        let id = fulfillment_id(&request.get_ref().fulfillment_id)?;
        let asker = kit::access::subject(&request);
        let now = crate::store::stored_time(Utc::now());
        match self.store.redrive(&id, asker.as_deref(), now).await.map_err(store_status)? {
            Redriven::Pending(job) => {
                self.wake.notify_one();
                Ok(Response::new(pb::RetryFulfillmentResponse { fulfillment: Some(to_proto(&job)) }))
            }
            Redriven::NotFailed(job) => Err(with_reason(
                Code::FailedPrecondition,
                format!("fulfillment {id} is {}; only a FAILED or REVOKE_FAILED fulfillment can be retried", job.state),
                "NOT_FAILED",
                [("fulfillment_id", id.clone()), ("state", job.state.to_string())],
            )),
            Redriven::NotFound => Err(not_found(&id)),
        }
    }

    async fn list_fulfillments(
        &self,
        request: Request<pb::ListFulfillmentsRequest>,
    ) -> Result<Response<pb::ListFulfillmentsResponse>, Status> {
        let page = JobsPage::parse(request.get_ref())?;
        let size = page.size();
        let found = self.store.list(page.filter(), page.after(), size.rows_to_read()).await.map_err(store_status)?;
        let (jobs, next_page_token) =
            size.split(found.jobs, |last| PageCursor { updated_at: last.updated_at, id: last.id.clone() }.token());
        Ok(Response::new(pb::ListFulfillmentsResponse {
            fulfillments: jobs.iter().map(to_proto).collect(),
            next_page_token,
            total_size: i64::try_from(found.total).unwrap_or(i64::MAX),
        }))
    }

    async fn retry_fulfillments(
        &self,
        request: Request<pb::RetryFulfillmentsRequest>,
    ) -> Result<Response<pb::RetryFulfillmentsResponse>, Status> {
        let asker = kit::access::subject(&request);
        let retry = BulkRetry::parse(request.get_ref())?;
        let (max, dry_run) = (retry.max(), retry.dry_run());
        let now = crate::store::stored_time(Utc::now());
        let redriven = self.store.redrive_matching(retry.filter(), max, asker.as_deref(), dry_run, now);
        match redriven.await.map_err(store_status)? {
            BulkRedriven::Redriven(ids) => {
                if !dry_run && !ids.is_empty() {
                    tracing::info!(
                        requested_by = asker.as_deref().unwrap_or(""),
                        retried = ids.len(),
                        "fulfillments retried in bulk"
                    );
                    self.wake.notify_one();
                }
                Ok(Response::new(pb::RetryFulfillmentsResponse {
                    retried_count: i32::try_from(ids.len()).unwrap_or(i32::MAX),
                    fulfillment_ids: ids,
                    dry_run,
                }))
            }
            BulkRedriven::TooMany { matched } => Err(with_reason(
                Code::FailedPrecondition,
                format!(
                    "{matched} failed fulfillments match the filter, more than max_jobs ({max}); none was retried: \
                     narrow the filter or raise max_jobs"
                ),
                "TOO_MANY_MATCH",
                [("matched", matched.to_string()), ("max_jobs", max.to_string())],
            )),
        }
    }

    async fn revoke_fulfillment(
        &self,
        request: Request<pb::RevokeFulfillmentRequest>,
    ) -> Result<Response<pb::RevokeFulfillmentResponse>, Status> {
        let revocation = Revocation::parse(request.get_ref())?;
        let id = revocation.fulfillment_id();
        let Some(job) = self.store.get(id).await.map_err(store_status)? else { return Err(not_found(id)) };
        let terms = terms_for(&job, revocation.asked()).map_err(|mismatch| {
            let mut bad = BadRequest::new();
            bad.check("refunded_amount", Err::<(), _>(mismatch));
            bad.into_status()
        })?;
        let (mut jobs, created) = self.refund(vec![RefundOf { job_id: job.id, terms }]).await?;
        Ok(Response::new(pb::RevokeFulfillmentResponse { fulfillment: jobs.pop().map(|job| to_proto(&job)), created }))
    }

    async fn request_refund(
        &self,
        request: Request<pb::RequestRefundRequest>,
    ) -> Result<Response<pb::RequestRefundResponse>, Status> {
        let (learner, course_run_key, reason) = AskedRefundRequest::parse(request.get_ref())?.into_parts();
        let who = match &learner {
            LearnerKey::LmsUserId(id) => format!("LMS user {id}"),
            LearnerKey::Username(name) => format!("LMS username {name}"),
        };
        let asked = NewRefundRequest {
            id: uuid::Uuid::now_v7().to_string(),
            learner,
            course_run_key,
            reason,
            traceparent: TextContext::current().traceparent,
        };
        let now = crate::store::stored_time(Utc::now());
        match self.store.request_refund(&asked, now).await.map_err(store_status)? {
            RefundRequested::Recorded { request, job, created } => Ok(Response::new(pb::RequestRefundResponse {
                refund_request_id: request.id,
                fulfillment: Some(to_proto(&job)),
                request_time: Some(to_timestamp(request.requested_at)),
                created,
            })),
            RefundRequested::AlreadyRefunded(job) => Err(with_reason(
                Code::FailedPrecondition,
                format!(
                    "the {} line of {who} ({}, order {}) was refunded already; nothing was recorded",
                    asked.course_run_key, job.state, job.spec.header.order_number
                ),
                "ALREADY_REFUNDED",
                [("fulfillment_id", job.id.clone()), ("course_run_key", asked.course_run_key.to_string())],
            )),
            RefundRequested::NoFulfilledLine => Err(with_reason(
                Code::NotFound,
                format!("no fulfilled order line of {} for {who}; nothing was recorded", asked.course_run_key),
                "NO_FULFILLED_LINE",
                [("course_run_key", asked.course_run_key.to_string())],
            )),
        }
    }

    async fn refund_order(
        &self,
        request: Request<pb::RefundOrderRequest>,
    ) -> Result<Response<pb::RefundOrderResponse>, Status> {
        let order = OrderRefund::parse(request.get_ref())?;
        let number = order.number();
        let jobs = self.order_jobs(number).await?;
        if jobs.is_empty() {
            return Err(Status::not_found(format!("no order {number}")));
        }
        let mut bad = BadRequest::new();
        let mut refunds = Vec::new();
        for (i, (id, asked)) in order.lines().enumerate() {
            let Some(job) = jobs.iter().find(|job| job.spec.line.line_item_id == *id) else {
                return Err(Status::not_found(format!(
                    "lines[{i}].line_item_id: order {number} has no line item {id}"
                )));
            };
            match terms_for(job, &asked) {
                Ok(terms) => refunds.push(RefundOf { job_id: job.id.clone(), terms }),
                Err(mismatch) => {
                    bad.check(format!("lines[{i}].refunded_amount"), Err::<(), _>(mismatch));
                }
            }
        }
        bad.into_result()?;
        let (jobs, created) = self.refund(refunds).await?;
        Ok(Response::new(pb::RefundOrderResponse { fulfillments: jobs.iter().map(to_proto).collect(), created }))
    }
}

/// The terms of the refund `asked` of `job`'s line, checked against its price.
fn terms_for(job: &FulfillmentJob, asked: &AskedRefund) -> Result<RefundTerms, crate::domain::RefundMismatch> {
    RefundTerms::for_line(&job.spec.line.price, asked.amount(), asked.reason().clone(), asked.source().clone())
}

impl FulfillmentApi {
    /// Records refunds (all or none) under the calling trace; wakes the workers when one is to be revoked.
    async fn refund(&self, refunds: Vec<RefundOf>) -> Result<(Vec<FulfillmentJob>, bool), Status> {
        let traceparent = TextContext::current().traceparent;
        let now = crate::store::stored_time(Utc::now());
        match self.store.refund(&refunds, &traceparent, now).await.map_err(store_status)? {
            Refunded::Recorded { jobs, created } => {
                if jobs.iter().any(|job| job.state == JobState::Revoking) {
                    self.wake.notify_one();
                }
                Ok((jobs, created))
            }
            Refunded::Refused { job } => Err(refund_refused(&job)),
            Refunded::NotFound(id) => Err(not_found(&id)),
        }
    }
}

/// Why a refund of `job` was refused (a [`crate::domain::RefundEffect::Conflict`]), for the caller to branch on.
fn refund_refused(job: &FulfillmentJob) -> Status {
    let line = job.spec.line.line_item_id.to_string();
    let order = job.spec.header.order_number.to_string();
    let metadata =
        [("fulfillment_id", job.id.clone()), ("line_item_id", line.clone()), ("order_number", order.clone())];
    match &job.refund {
        Some(recorded) => with_reason(
            Code::AlreadyExists,
            format!(
                "line item {line} of order {order} was already refunded on other terms ({} {}, reason {:?}, source \
                 {}); a refund cannot change, and nothing was changed",
                recorded.terms.amount().amount_text(),
                recorded.terms.amount().currency_code(),
                recorded.terms.reason().as_str(),
                recorded.terms.source(),
            ),
            "REFUND_MISMATCH",
            metadata,
        ),
        // A refunded state without its refund: written by hand, not by this service.
        None => with_reason(
            Code::FailedPrecondition,
            format!("line item {line} of order {order} is {} and cannot be refunded; nothing was changed", job.state),
            "NOT_REFUNDABLE",
            metadata,
        ),
    }
}

/// When enrollment in `run` closed, if it has by `now`: its `enrollment_end_time`,
/// else (unset: open until the run ends) its `end_time`. A run without either
/// is never refused here (the catalog requires an end; its absence is not the buyer's fault).
fn enrollment_closed(run: &catalog::CourseRun, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let closes = run.enrollment_end_time.as_ref().or(run.end_time.as_ref())?;
    let closes = kit::time::from_timestamp(closes).ok()?;
    (closes <= now).then_some(closes)
}

fn not_found(id: &str) -> Status {
    Status::not_found(format!("no fulfillment {id}"))
}

fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::LearnerRetired(lms_user_id) => with_reason(
            Code::FailedPrecondition,
            format!("learner.lms_user_id: learner {lms_user_id} is retired and cannot be enrolled"),
            "CUSTOMER_RETIRED",
            [("lms_user_id", lms_user_id.to_string())],
        ),
        StoreError::Corrupt { id, reason } => {
            tracing::error!(fulfillment_id = %id, %reason, "a stored fulfillment could not be read back");
            Status::internal(format!("fulfillment {id} could not be read back; this is logged"))
        }
        // The change may or may not have been stored; every RPC is safe to repeat.
        StoreError::Database(error) => kit::db::store_status("the fulfillment store", &error),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(year: i32, month: u32, day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(year, month, day, 0, 0, 0).unwrap()
    }

    #[test]
    fn enrollment_closes_at_its_end_else_at_the_run_end() {
        let run = |enrollment_end: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>| catalog::CourseRun {
            enrollment_end_time: enrollment_end.map(to_timestamp),
            end_time: end.map(to_timestamp),
            ..Default::default()
        };
        let now = at(2026, 12, 3);
        let closed = run(Some(at(2026, 2, 23)), Some(at(2026, 4, 13)));
        assert_eq!(enrollment_closed(&closed, now), Some(at(2026, 2, 23)));
        assert_eq!(enrollment_closed(&closed, at(2026, 2, 22)), None, "open the day before");
        assert_eq!(enrollment_closed(&run(None, Some(at(2026, 8, 31))), now), Some(at(2026, 8, 31)), "at the end");
        assert_eq!(enrollment_closed(&run(None, Some(at(2099, 12, 31))), now), None);
        assert_eq!(enrollment_closed(&run(Some(at(2027, 1, 1)), Some(at(2027, 6, 1))), now), None);
        assert_eq!(enrollment_closed(&run(None, None), now), None, "no window known: not refused here");
    }
}
