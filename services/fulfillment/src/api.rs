//! The gRPC face of Fulfillment: parse the request into domain values (every
//! bad field named), resolve the learner, then the store, then the answer.
//! No SQL here.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kit::client::TracedChannel;
use kit::error::{BadRequest, Refusal, ViolationReason, with_reason};
use kit::trace::TextContext;
use proto::commerce::catalog::v1 as catalog;
use proto::commerce::catalog::v1::catalog_ingest_service_client::CatalogIngestServiceClient;
use proto::commerce::fulfillment::v1 as pb;
use proto::commerce::fulfillment::v1::fulfillment_service_server::FulfillmentService;
use proto::commerce::identity::v1 as identity;
use proto::commerce::identity::v1::customer_identity_service_client::CustomerIdentityServiceClient;
use tokio::sync::Notify;
use tonic::{Code, Request, Response, Status};

use vocab::{
    CourseRunKey, CourseUuid, CustomerId, FulfillmentId, LineItemId, LmsUserId, LmsUsername, OrderId, OrderNumber,
    Price, RefundReason, SourceSystem, Title,
};

use crate::domain::{
    ErrorKind, JobState, Learner, LearnerKey, LearnerRef, MAX_LINE_ITEMS, Mode, Order, OrderHeader, OrderLine, Product,
    RefundTerms, Repeat, compare_repeat,
};
use crate::filter::{
    BoundError, EmptyWindow, JobFilter, NotRetryable, PageCursor, UnknownToken, UpdateWindow, page_size, retry_bound,
};
use crate::store::{
    BulkRedriven, FulfillmentJob, NewJob, NewRefundRequest, Redriven, RefundOf, RefundRequested, Refunded, Store,
    StoreError,
};
use kit::time::to_timestamp;

/// The page of `ListOrderFulfillments` when the caller asks for none.
const DEFAULT_PAGE_SIZE: i32 = 50;
/// The largest page of `ListOrderFulfillments`; larger requests get this many.
const MAX_PAGE_SIZE: i32 = 500;
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
        for (i, line) in order.lines.iter().enumerate() {
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
        self.store.list_order(order_number, 0, i64::from(MAX_PAGE_SIZE)).await.map_err(store_status)
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
        let number = order.header.order_number.clone();
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
        let learner = self.resolve(&order.learner).await?;
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
        let id = parse_fulfillment_id(&request.get_ref().fulfillment_id)?;
        match self.store.get(&id).await.map_err(store_status)? {
            Some(job) => Ok(Response::new(pb::GetFulfillmentResponse { fulfillment: Some(to_proto(&job)) })),
            None => Err(not_found(&id)),
        }
    }

    async fn list_order_fulfillments(
        &self,
        request: Request<pb::ListOrderFulfillmentsRequest>,
    ) -> Result<Response<pb::ListOrderFulfillmentsResponse>, Status> {
        let request = request.get_ref();
        let mut bad = BadRequest::new();
        let number = bad.check("order_number", OrderNumber::parse(&request.order_number));
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => {
                bad.violation("page_size", ViolationReason::OutOfRange, "must not be negative");
                DEFAULT_PAGE_SIZE
            }
            n => n.min(MAX_PAGE_SIZE),
        };
        let from = match request.page_token.as_str() {
            "" => 0,
            token => match token.strip_prefix("position:").and_then(|p| p.parse::<i32>().ok()) {
                Some(position) if position >= 0 => position,
                _ => {
                    bad.violation(
                        "page_token",
                        ViolationReason::UnknownValue,
                        "is not a next_page_token this service gave",
                    );
                    0
                }
            },
        };
        bad.into_result()?;
        let Some(number) = number else { return Err(Status::invalid_argument("order_number")) };
        let mut jobs =
            self.store.list_order(number.as_str(), from, i64::from(page_size) + 1).await.map_err(store_status)?;
        let next_page_token = if jobs.len() > page_size as usize {
            jobs.truncate(page_size as usize);
            jobs.last().map(|j| format!("position:{}", j.spec.position + 1)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListOrderFulfillmentsResponse {
            fulfillments: jobs.iter().map(to_proto).collect(),
            next_page_token,
        }))
    }

    async fn retry_fulfillment(
        &self,
        request: Request<pb::RetryFulfillmentRequest>,
    ) -> Result<Response<pb::RetryFulfillmentResponse>, Status> {
        let id = parse_fulfillment_id(&request.get_ref().fulfillment_id)?;
        let asker = kit::access::subject(&request);
        match self
            .store
            .redrive(&id, asker.as_deref(), crate::store::stored_time(Utc::now()))
            .await
            .map_err(store_status)?
        {
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
        let request = request.get_ref();
        let mut bad = BadRequest::new();
        let filter = parse_filter(&mut bad, request.filter.as_ref());
        let size = bad.check("page_size", page_size(request.page_size));
        let cursor = match request.page_token.as_str() {
            "" => None,
            token => bad.check("page_token", PageCursor::from_token(token)),
        };
        bad.into_result()?;
        let size = size.unwrap_or(crate::filter::DEFAULT_PAGE_SIZE);
        let found = self.store.list(&filter, cursor.as_ref(), i64::from(size) + 1).await.map_err(store_status)?;
        let (mut jobs, total) = (found.jobs, found.total);
        let next_page_token = if jobs.len() > size as usize {
            jobs.truncate(size as usize);
            jobs.last()
                .map(|job| PageCursor { updated_at: job.updated_at, id: job.id.clone() }.token())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListFulfillmentsResponse {
            fulfillments: jobs.iter().map(to_proto).collect(),
            next_page_token,
            total_size: i64::try_from(total).unwrap_or(i64::MAX),
        }))
    }

    async fn retry_fulfillments(
        &self,
        request: Request<pb::RetryFulfillmentsRequest>,
    ) -> Result<Response<pb::RetryFulfillmentsResponse>, Status> {
        let asker = kit::access::subject(&request);
        let request = request.get_ref();
        let mut bad = BadRequest::new();
        let filter = parse_filter(&mut bad, request.filter.as_ref());
        let max = bad.check("max_jobs", retry_bound(request.max_jobs));
        // Checked on a filter that parsed whole, so each state's index is the one the caller sent.
        let filter = match filter.retryable() {
            Ok(filter) => filter,
            Err(refused) if bad.is_empty() => {
                bad.violation(format!("filter.states[{}]", refused.index), refused.rule(), refused.to_string());
                JobFilter::default()
            }
            Err(_) => JobFilter::default(),
        };
        bad.into_result()?;
        let Some(max) = max else { return Err(Status::invalid_argument("max_jobs")) };
        let now = crate::store::stored_time(Utc::now());
        let dry_run = request.dry_run;
        match self.store.redrive_matching(&filter, max, asker.as_deref(), dry_run, now).await.map_err(store_status)? {
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
        let request = request.get_ref();
        let mut bad = BadRequest::new();
        let id = bad.check("fulfillment_id", FulfillmentId::parse(&request.fulfillment_id));
        let amount = parse_refunded_amount(&mut bad, "refunded_amount", request.refunded_amount.as_ref());
        let (reason, source) = parse_refunder(&mut bad, &request.reason, &request.source);
        bad.into_result()?;
        let (Some(id), Some(amount), Some(reason), Some(source)) = (id, amount, reason, source) else {
            return Err(Status::invalid_argument("invalid refund"));
        };
        let Some(job) = self.store.get(&id).await.map_err(store_status)? else { return Err(not_found(&id)) };
        let terms = RefundTerms::for_line(&job.spec.line.price, amount, reason, source).map_err(|mismatch| {
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
        use pb::request_refund_request::Learner as Named;
        let request = request.get_ref();
        let mut bad = BadRequest::new();
        let learner = match &request.learner {
            None => {
                bad.violation("learner", ViolationReason::Required, "is required: lms_username or lms_user_id");
                None
            }
            Some(Named::LmsUsername(name)) => {
                bad.check("lms_username", LmsUsername::parse(name)).map(LearnerKey::Username)
            }
            Some(Named::LmsUserId(id)) => bad.check("lms_user_id", LmsUserId::parse(id)).map(LearnerKey::LmsUserId),
        };
        let course_run_key = bad.check("course_run_key", CourseRunKey::parse(&request.course_run_key));
        let reason = bad.check("reason", RefundReason::parse(&request.reason));
        bad.into_result()?;
        let (Some(learner), Some(course_run_key), Some(reason)) = (learner, course_run_key, reason) else {
            return Err(Status::invalid_argument("invalid refund request"));
        };
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
        let request = request.get_ref();
        let mut bad = BadRequest::new();
        let number = bad.check("order_number", OrderNumber::parse(&request.order_number));
        let (reason, source) = parse_refunder(&mut bad, &request.reason, &request.source);
        if request.lines.is_empty() {
            bad.violation("lines", ViolationReason::Required, "must name at least one line item");
        }
        if request.lines.len() > MAX_LINE_ITEMS {
            bad.violation("lines", ViolationReason::TooLong, format!("must name at most {MAX_LINE_ITEMS} line items"));
        }
        let mut lines = Vec::with_capacity(request.lines.len());
        for (i, line) in request.lines.iter().enumerate() {
            let id = bad.check(format!("lines[{i}].line_item_id"), LineItemId::parse(&line.line_item_id));
            if request.lines[..i].iter().any(|earlier| earlier.line_item_id == line.line_item_id) {
                bad.violation(
                    format!("lines[{i}].line_item_id"),
                    ViolationReason::Duplicate,
                    "names a line item already named",
                );
            }
            let amount =
                parse_refunded_amount(&mut bad, &format!("lines[{i}].refunded_amount"), line.refunded_amount.as_ref());
            lines.push((id, amount));
        }
        bad.into_result()?;
        let (Some(number), Some(reason), Some(source)) = (number, reason, source) else {
            return Err(Status::invalid_argument("invalid refund"));
        };
        let jobs = self.order_jobs(&number).await?;
        if jobs.is_empty() {
            return Err(Status::not_found(format!("no order {number}")));
        }
        let mut bad = BadRequest::new();
        let mut refunds = Vec::with_capacity(lines.len());
        for (i, (id, amount)) in lines.into_iter().enumerate() {
            let (Some(id), Some(amount)) = (id, amount) else { continue };
            let Some(job) = jobs.iter().find(|job| job.spec.line.line_item_id == id) else {
                return Err(Status::not_found(format!(
                    "lines[{i}].line_item_id: order {number} has no line item {id}"
                )));
            };
            match RefundTerms::for_line(&job.spec.line.price, amount, reason.clone(), source.clone()) {
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

/// A refunded amount as given: None when it does not parse (recorded in
/// `bad`), Some(None) when absent (the whole price).
fn parse_refunded_amount(
    bad: &mut BadRequest,
    field: &str,
    amount: Option<&proto::commerce::r#type::v1::Money>,
) -> Option<Option<Price>> {
    match amount {
        None => Some(None),
        Some(money) => Price::try_from(money)
            .map_err(|e| bad.check(format!("{field}.{}", e.part.field()), Err::<(), _>(e.invalid)))
            .ok()
            .map(Some),
    }
}

/// A refund's reason and source, each None (recorded in `bad`) when invalid; the source is required.
fn parse_refunder(bad: &mut BadRequest, reason: &str, source: &str) -> (Option<RefundReason>, Option<SourceSystem>) {
    let reason = bad.check("reason", RefundReason::parse(reason));
    let source = bad.check("source", SourceSystem::parse(source));
    (reason, source)
}

/// When enrollment in `run` closed, if it has by `now`: its `enrollment_end_time`,
/// else (unset: open until the run ends) its `end_time`. A run without either
/// is never refused here (the catalog requires an end; its absence is not the buyer's fault).
fn enrollment_closed(run: &catalog::CourseRun, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let closes = run.enrollment_end_time.as_ref().or(run.end_time.as_ref())?;
    let closes = kit::time::from_timestamp(closes).ok()?;
    (closes <= now).then_some(closes)
}

impl kit::error::Refusal for BoundError {
    fn rule(&self) -> ViolationReason {
        match self {
            BoundError::Missing { .. } => ViolationReason::Required,
            BoundError::OutOfRange { .. } => ViolationReason::OutOfRange,
        }
    }
}

impl kit::error::Refusal for UnknownToken {
    fn rule(&self) -> ViolationReason {
        ViolationReason::UnknownValue
    }
}

impl kit::error::Refusal for EmptyWindow {
    fn rule(&self) -> ViolationReason {
        ViolationReason::Conflict
    }
}

impl kit::error::Refusal for NotRetryable {}

impl kit::error::Refusal for crate::domain::RefundMismatch {
    fn rule(&self) -> ViolationReason {
        match self {
            crate::domain::RefundMismatch::Currency { .. } => ViolationReason::Conflict,
            crate::domain::RefundMismatch::AboveThePrice { .. } => ViolationReason::OutOfRange,
        }
    }
}

/// The filter of `ListFulfillments` and `RetryFulfillments`, every bad field
/// recorded in `bad` under `filter.` (the filter answered is then not to be used).
fn parse_filter(bad: &mut BadRequest, filter: Option<&pb::FulfillmentFilter>) -> JobFilter {
    let Some(filter) = filter else { return JobFilter::default() };
    let mut states = Vec::new();
    if filter.states.len() > JobState::ALL.len() {
        bad.violation(
            "filter.states",
            ViolationReason::TooLong,
            format!("names {} states; there are {}", filter.states.len(), JobState::ALL.len()),
        );
    } else {
        for (i, raw) in filter.states.iter().enumerate() {
            let field = format!("filter.states[{i}]");
            match pb::FulfillmentState::try_from(*raw).ok().and_then(state_from_proto) {
                None => {
                    bad.violation(field, ViolationReason::UnknownValue, format!("{raw} is not a fulfillment state"));
                }
                Some(state) if states.contains(&state) => {
                    bad.violation(field, ViolationReason::Duplicate, format!("{state} is named more than once"));
                }
                Some(state) => states.push(state),
            }
        }
    }
    let course_run_key = match filter.course_run_key.as_str() {
        "" => None,
        raw => bad.check("filter.course_run_key", CourseRunKey::parse(raw)),
    };
    let error_kind = match filter.error_kind {
        0 => None,
        raw => {
            let kind = pb::FulfillmentErrorKind::try_from(raw).ok().and_then(kind_from_proto);
            if kind.is_none() {
                bad.violation(
                    "filter.error_kind",
                    ViolationReason::UnknownValue,
                    format!("{raw} is not a fulfillment error kind"),
                );
            }
            kind
        }
    };
    let source_system = match filter.source_system.as_str() {
        "" => None,
        raw => bad.check("filter.source_system", SourceSystem::parse(raw)),
    };
    let mut time = |field: &str, at: Option<&prost_types::Timestamp>| {
        at.and_then(|at| {
            kit::time::from_timestamp(at)
                .map_err(|reason| bad.violation(field, ViolationReason::OutOfRange, reason))
                .ok()
        })
    };
    let after = time("filter.updated_after", filter.updated_after.as_ref());
    let before = time("filter.updated_before", filter.updated_before.as_ref());
    let updated = bad.check("filter.updated_after", UpdateWindow::new(after, before)).unwrap_or_default();
    JobFilter { states, course_run_key, error_kind, source_system, updated }
}

fn state_from_proto(state: pb::FulfillmentState) -> Option<JobState> {
    match state {
        pb::FulfillmentState::Unspecified => None,
        pb::FulfillmentState::Pending => Some(JobState::Pending),
        pb::FulfillmentState::InProgress => Some(JobState::InProgress),
        pb::FulfillmentState::Succeeded => Some(JobState::Succeeded),
        pb::FulfillmentState::Failed => Some(JobState::Failed),
        pb::FulfillmentState::Revoking => Some(JobState::Revoking),
        pb::FulfillmentState::Revoked => Some(JobState::Revoked),
        pb::FulfillmentState::RevokeFailed => Some(JobState::RevokeFailed),
        pb::FulfillmentState::Cancelled => Some(JobState::Cancelled),
    }
}

fn kind_from_proto(kind: pb::FulfillmentErrorKind) -> Option<ErrorKind> {
    match kind {
        pb::FulfillmentErrorKind::Unspecified => None,
        pb::FulfillmentErrorKind::Rejected => Some(ErrorKind::Rejected),
        pb::FulfillmentErrorKind::Unavailable => Some(ErrorKind::Unavailable),
        pb::FulfillmentErrorKind::Timeout => Some(ErrorKind::Timeout),
        pb::FulfillmentErrorKind::Connection => Some(ErrorKind::Connection),
        pb::FulfillmentErrorKind::Authentication => Some(ErrorKind::Authentication),
        pb::FulfillmentErrorKind::AttemptsExhausted => Some(ErrorKind::AttemptsExhausted),
    }
}

fn not_found(id: &str) -> Status {
    Status::not_found(format!("no fulfillment {id}"))
}

#[allow(clippy::result_large_err)]
fn parse_fulfillment_id(raw: &str) -> Result<String, Status> {
    FulfillmentId::parse(raw).map(String::from).map_err(|reason| {
        let mut bad = BadRequest::new();
        bad.check("fulfillment_id", Err::<(), _>(reason));
        bad.into_status()
    })
}

/// Parses and validates an order, naming every bad field.
#[allow(clippy::result_large_err)]
pub fn parse_order(
    request: &pb::FulfillOrderRequest,
    now: DateTime<Utc>,
    clock_skew: Duration,
) -> Result<Order, Status> {
    let mut bad = BadRequest::new();
    let order_number = bad.check("order_number", OrderNumber::parse(&request.order_number));
    let order_id = match request.order_id.as_str() {
        "" => None,
        raw => bad.check("order_id", OrderId::parse(raw)),
    };
    let source_system = match request.source_system.as_str() {
        "" => None,
        raw => bad.check("source_system", SourceSystem::parse(raw)),
    };
    let date_placed = match &request.date_placed {
        None => {
            bad.violation("date_placed", ViolationReason::Required, "is required");
            None
        }
        Some(ts) => match kit::time::from_timestamp(ts) {
            Err(reason) => {
                bad.violation("date_placed", ViolationReason::OutOfRange, reason);
                None
            }
            Ok(placed)
                if now
                    .checked_add_signed(chrono::Duration::from_std(clock_skew).unwrap_or_default())
                    .is_some_and(|latest| placed > latest) =>
            {
                bad.violation(
                    "date_placed",
                    ViolationReason::OutOfRange,
                    format!("{placed} is in the future (now {now})"),
                );
                None
            }
            Ok(placed) => Some(placed),
        },
    };
    let learner = parse_learner(&mut bad, request.learner.as_ref());
    if request.line_items.is_empty() {
        bad.violation("line_items", ViolationReason::Required, "must have at least one line item");
    }
    if request.line_items.len() > MAX_LINE_ITEMS {
        bad.violation("line_items", ViolationReason::TooLong, format!("must have at most {MAX_LINE_ITEMS} line items"));
    }
    let mut lines = Vec::with_capacity(request.line_items.len());
    for (i, item) in request.line_items.iter().enumerate() {
        let at = |field: &str| format!("line_items[{i}].{field}");
        let line_item_id = bad.check(at("line_item_id"), LineItemId::parse(&item.line_item_id));
        if let Some(id) = &line_item_id
            && request.line_items[..i].iter().any(|earlier| earlier.line_item_id == id.as_str())
        {
            bad.violation(
                at("line_item_id"),
                ViolationReason::Duplicate,
                format!("{:?} appears more than once in the order", id.as_str()),
            );
        }
        let product = parse_product(&mut bad, i, item.product.as_ref());
        let title = bad.check(at("title"), Title::parse(&item.title));
        let price = match &item.price {
            // Purchase history records every purchase with its price, free ones at "0".
            None => {
                bad.violation(at("price"), ViolationReason::Required, "is required (\"0\" for a free item)");
                None
            }
            Some(money) => Price::try_from(money)
                .map_err(|e| bad.check(at(&format!("price.{}", e.part.field())), Err::<(), _>(e.invalid)))
                .ok(),
        };
        if let (Some(line_item_id), Some(product), Some(title), Some(price)) = (line_item_id, product, title, price) {
            lines.push(OrderLine { line_item_id, product, title, price });
        }
    }
    bad.into_result()?;
    match (order_number, date_placed, learner) {
        (Some(order_number), Some(date_placed), Some(learner)) => Ok(Order {
            header: OrderHeader {
                order_number,
                order_id,
                order_version: request.order_version,
                date_placed,
                source_system,
                email_opt_in: request.email_opt_in,
            },
            learner,
            lines,
        }),
        // Unreachable: every None above recorded a violation.
        _ => Err(Status::invalid_argument("invalid order")),
    }
}

fn parse_learner(bad: &mut BadRequest, learner: Option<&pb::Learner>) -> Option<LearnerRef> {
    let Some(learner) = learner else {
        bad.violation(
            "learner",
            ViolationReason::Required,
            "is required: a customer_id, or lms_user_id with lms_username",
        );
        return None;
    };
    let customer_id = match learner.customer_id.as_str() {
        "" => None,
        raw => bad.check("learner.customer_id", CustomerId::parse(raw)),
    };
    match (learner.lms_user_id.as_str(), learner.lms_username.as_str()) {
        ("", "") if learner.customer_id.is_empty() => {
            bad.violation(
                "learner",
                ViolationReason::Required,
                "is required: a customer_id, or lms_user_id with lms_username",
            );
            None
        }
        ("", "") => customer_id.map(|customer_id| LearnerRef::Customer { customer_id }),
        (id, "") => {
            bad.check("learner.lms_user_id", LmsUserId::parse(id));
            bad.violation("learner.lms_username", ViolationReason::Required, "is required with lms_user_id");
            None
        }
        ("", name) => {
            bad.check("learner.lms_username", LmsUsername::parse(name));
            bad.violation("learner.lms_user_id", ViolationReason::Required, "is required with lms_username");
            None
        }
        (id, name) => {
            let lms_user_id = bad.check("learner.lms_user_id", LmsUserId::parse(id));
            let lms_username = bad.check("learner.lms_username", LmsUsername::parse(name));
            let customer_ok = learner.customer_id.is_empty() || customer_id.is_some();
            match (lms_user_id, lms_username) {
                (Some(lms_user_id), Some(lms_username)) if customer_ok => {
                    Some(LearnerRef::Lms(Learner { customer_id, lms_user_id, lms_username }))
                }
                _ => None,
            }
        }
    }
}

fn parse_product(bad: &mut BadRequest, i: usize, product: Option<&pb::line_item::Product>) -> Option<Product> {
    let at = |field: &str| format!("line_items[{i}].{field}");
    match product {
        None => {
            bad.violation(at("product"), ViolationReason::Required, "is required: course_run or entitlement");
            None
        }
        Some(pb::line_item::Product::CourseRun(run)) => {
            let key = bad.check(at("course_run.course_run_key"), CourseRunKey::parse(&run.course_run_key));
            let mode = bad.check(at("course_run.mode"), Mode::parse(&run.mode));
            let (key, mode) = (key?, mode?);
            bad.check(at("course_run.credit_provider_id"), Product::course_run(key, mode, &run.credit_provider_id))
        }
        Some(pb::line_item::Product::Entitlement(entitlement)) => {
            let mode = bad.check(at("entitlement.mode"), Mode::parse(&entitlement.mode));
            let course_uuid = bad.check(at("entitlement.course_uuid"), CourseUuid::parse(&entitlement.course_uuid));
            Some(Product::Entitlement { course_uuid: course_uuid?, mode: mode? })
        }
    }
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

/// The API's view of a job.
pub fn to_proto(job: &FulfillmentJob) -> pb::Fulfillment {
    let spec = &job.spec;
    let product = match &spec.line.product {
        Product::CourseRun { course_run_key, mode, credit_provider_id } => {
            pb::line_item::Product::CourseRun(pb::CourseRunEnrollment {
                course_run_key: course_run_key.as_str().into(),
                mode: mode.as_str().into(),
                credit_provider_id: credit_provider_id.as_ref().map(|id| id.to_string()).unwrap_or_default(),
            })
        }
        Product::Entitlement { course_uuid, mode } => pb::line_item::Product::Entitlement(pb::ProgramEntitlement {
            course_uuid: course_uuid.to_string(),
            mode: mode.as_str().into(),
        }),
    };
    pb::Fulfillment {
        fulfillment_id: job.id.clone(),
        order_number: spec.header.order_number.to_string(),
        order_id: spec.header.order_id.as_ref().map(|id| id.to_string()).unwrap_or_default(),
        line_item_id: spec.line.line_item_id.to_string(),
        learner: Some(pb::Learner {
            customer_id: spec.learner.customer_id.as_ref().map(|id| id.to_string()).unwrap_or_default(),
            lms_user_id: spec.learner.lms_user_id.to_string(),
            lms_username: spec.learner.lms_username.to_string(),
        }),
        line_item: Some(pb::LineItem {
            line_item_id: spec.line.line_item_id.to_string(),
            product: Some(product),
            title: spec.line.title.to_string(),
            price: Some(proto::commerce::r#type::v1::Money::from(&spec.line.price)),
        }),
        state: state_to_proto(job.state) as i32,
        attempts: i32::try_from(job.attempts).unwrap_or(i32::MAX),
        last_error: job.last_error.as_ref().map(|e| pb::FulfillmentError {
            kind: kind_to_proto(e.kind) as i32,
            lms_status: e.lms_status.map_or(0, i32::from),
            message: e.message.clone(),
        }),
        next_attempt_time: match job.state {
            JobState::Pending | JobState::Revoking => job.next_attempt_at.map(to_timestamp),
            _ => None,
        },
        entitlement_uuid: job.entitlement_uuid.clone().unwrap_or_default(),
        create_time: Some(to_timestamp(job.created_at)),
        update_time: Some(to_timestamp(job.updated_at)),
        refund: job.refund.as_ref().map(|refund| pb::Refund {
            refunded_amount: Some(proto::commerce::r#type::v1::Money::from(refund.terms.amount())),
            reason: refund.terms.reason().to_string(),
            source: refund.terms.source().to_string(),
            request_time: Some(to_timestamp(refund.requested_at)),
        }),
    }
}

fn state_to_proto(state: JobState) -> pb::FulfillmentState {
    match state {
        JobState::Pending => pb::FulfillmentState::Pending,
        JobState::InProgress => pb::FulfillmentState::InProgress,
        JobState::Succeeded => pb::FulfillmentState::Succeeded,
        JobState::Failed => pb::FulfillmentState::Failed,
        JobState::Revoking => pb::FulfillmentState::Revoking,
        JobState::Revoked => pb::FulfillmentState::Revoked,
        JobState::RevokeFailed => pb::FulfillmentState::RevokeFailed,
        JobState::Cancelled => pb::FulfillmentState::Cancelled,
    }
}

fn kind_to_proto(kind: ErrorKind) -> pb::FulfillmentErrorKind {
    match kind {
        ErrorKind::Rejected => pb::FulfillmentErrorKind::Rejected,
        ErrorKind::Unavailable => pb::FulfillmentErrorKind::Unavailable,
        ErrorKind::Timeout => pb::FulfillmentErrorKind::Timeout,
        ErrorKind::Connection => pb::FulfillmentErrorKind::Connection,
        ErrorKind::Authentication => pb::FulfillmentErrorKind::Authentication,
        ErrorKind::AttemptsExhausted => pb::FulfillmentErrorKind::AttemptsExhausted,
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
