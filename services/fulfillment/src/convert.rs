//! Messages to domain values and back, once, at the edge: each request of
//! `FulfillmentService` becomes its domain value here, every bad field named in
//! one `BadRequest` (field paths as the proto spells them), and each job
//! becomes the `Fulfillment` message the API answers. `api.rs` only reads
//! what these functions built.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kit::error::{BadRequest, Refusal, ViolationReason};
use kit::page::PageSize;
use kit::time::to_timestamp;
use proto::commerce::fulfillment::v1 as pb;
use proto::commerce::r#type::v1::Money;
use tonic::Status;
use vocab::{
    CourseRunKey, CourseUuid, CustomerId, FulfillmentId, LineItemId, LmsUserId, LmsUsername, OrderId, OrderNumber,
    Price, RefundReason, SourceSystem, Title,
};

use crate::domain::{
    ErrorKind, JobState, Learner, LearnerKey, LearnerRef, MAX_LINE_ITEMS, Mode, Order, OrderHeader, OrderLine, Product,
    RefundMismatch,
};
use crate::filter::{
    BoundError, EmptyWindow, JobFilter, NotRetryable, PageCursor, UnknownToken, UpdateWindow, page_size, retry_bound,
};
use crate::store::FulfillmentJob;

/// A request's `fulfillment_id`, or the `fulfillment_id` violation.
#[allow(clippy::result_large_err)]
pub fn fulfillment_id(raw: &str) -> Result<String, Status> {
    FulfillmentId::parse(raw).map(String::from).map_err(|reason| {
        let mut bad = BadRequest::new();
        bad.check("fulfillment_id", Err::<(), _>(reason));
        bad.into_status()
    })
}

/// Parses and validates an order (`FulfillOrder`), naming every bad field;
/// `date_placed` may be up to `clock_skew` after `now`.
#[allow(clippy::result_large_err)]
pub fn parse_order(
    request: &pb::FulfillOrderRequest,
    now: DateTime<Utc>,
    clock_skew: Duration,
) -> Result<Order, Status> {
    let mut bad = BadRequest::new();
    let order_number = bad.check("order_number", OrderNumber::parse(&request.order_number));
    let order_id = optional(&mut bad, "order_id", &request.order_id, OrderId::parse);
    let source_system = optional(&mut bad, "source_system", &request.source_system, SourceSystem::parse);
    let date_placed = date_placed(&mut bad, request.date_placed.as_ref(), now, clock_skew);
    let learner = learner(&mut bad, request.learner.as_ref());
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
        let product = product(&mut bad, i, item.product.as_ref());
        let title = bad.check(at("title"), Title::parse(&item.title));
        let price = match &item.price {
            // Purchase history records every purchase with its price, free ones at "0".
            None => {
                bad.violation(at("price"), ViolationReason::Required, "is required (\"0\" for a free item)");
                None
            }
            Some(money) => price(&mut bad, &at("price"), money),
        };
        if let (Some(line_item_id), Some(product), Some(title), Some(price)) = (line_item_id, product, title, price) {
            lines.push(OrderLine { line_item_id, product, title, price });
        }
    }
    bad.into_result()?;
    match (order_number, date_placed, learner) {
        (Some(order_number), Some(date_placed), Some(learner)) => Ok(Order::new(
            OrderHeader {
                order_number,
                order_id,
                order_version: request.order_version,
                date_placed,
                source_system,
                email_opt_in: request.email_opt_in,
            },
            learner,
            lines,
        )),
        // Unreachable: every None above recorded a violation.
        _ => Err(Status::invalid_argument("invalid order")),
    }
}

/// An optional text field: None when empty, else parsed (a violation recorded in `bad` when it does not parse).
fn optional<T, E: Refusal>(
    bad: &mut BadRequest,
    field: &str,
    raw: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Option<T> {
    match raw {
        "" => None,
        raw => bad.check(field, parse(raw)),
    }
}

/// An order's `date_placed`: required, and not later than `clock_skew` after `now`.
fn date_placed(
    bad: &mut BadRequest,
    placed: Option<&prost_types::Timestamp>,
    now: DateTime<Utc>,
    clock_skew: Duration,
) -> Option<DateTime<Utc>> {
    let Some(placed) = placed else {
        bad.violation("date_placed", ViolationReason::Required, "is required");
        return None;
    };
    let placed = match kit::time::from_timestamp(placed) {
        Ok(placed) => placed,
        Err(reason) => {
            bad.violation("date_placed", ViolationReason::OutOfRange, reason);
            return None;
        }
    };
    let latest = now.checked_add_signed(chrono::Duration::from_std(clock_skew).unwrap_or_default());
    if latest.is_some_and(|latest| placed > latest) {
        bad.violation("date_placed", ViolationReason::OutOfRange, format!("{placed} is in the future (now {now})"));
        return None;
    }
    Some(placed)
}

/// A price or refunded amount at `field`, each bad part named (`field.currency_code`, ...).
fn price(bad: &mut BadRequest, field: &str, money: &Money) -> Option<Price> {
    Price::try_from(money).map_err(|e| bad.check(format!("{field}.{}", e.part.field()), Err::<(), _>(e.invalid))).ok()
}

/// The learner as an order names them: a customer, or an LMS user id with its username.
fn learner(bad: &mut BadRequest, learner: Option<&pb::Learner>) -> Option<LearnerRef> {
    const REQUIRED: &str = "is required: a customer_id, or lms_user_id with lms_username";
    let Some(learner) = learner else {
        bad.violation("learner", ViolationReason::Required, REQUIRED);
        return None;
    };
    let customer_id = optional(bad, "learner.customer_id", &learner.customer_id, CustomerId::parse);
    match (learner.lms_user_id.as_str(), learner.lms_username.as_str()) {
        ("", "") if learner.customer_id.is_empty() => {
            bad.violation("learner", ViolationReason::Required, REQUIRED);
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

/// What line item `i` gives: a course-run enrollment or a program entitlement.
fn product(bad: &mut BadRequest, i: usize, product: Option<&pb::line_item::Product>) -> Option<Product> {
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

/// `ListOrderFulfillments`: a page of an order's jobs, in line order.
#[derive(Clone, Debug)]
pub struct OrderPage {
    number: OrderNumber,
    size: PageSize,
    from_position: i32,
}

/// The token of the page of an order's jobs from this line position on.
pub fn order_page_token(position: i32) -> String {
    format!("position:{position}")
}

impl OrderPage {
    /// Parses the request, naming every bad field.
    #[allow(clippy::result_large_err)]
    pub fn parse(request: &pb::ListOrderFulfillmentsRequest) -> Result<Self, Status> {
        let mut bad = BadRequest::new();
        let number = bad.check("order_number", OrderNumber::parse(&request.order_number));
        let size = PageSize::clamped(request.page_size, &mut bad);
        let from_position = match request.page_token.as_str() {
            "" => Some(0),
            token => bad.check(
                "page_token",
                token
                    .strip_prefix("position:")
                    .and_then(|p| p.parse::<i32>().ok())
                    .filter(|position| *position >= 0)
                    .ok_or(UnknownToken),
            ),
        };
        bad.into_result()?;
        match (number, from_position) {
            (Some(number), Some(from_position)) => Ok(Self { number, size, from_position }),
            // Unreachable: every None above recorded a violation.
            _ => Err(Status::invalid_argument("order_number")),
        }
    }

    /// The order.
    pub fn number(&self) -> &OrderNumber {
        &self.number
    }

    /// The page's size.
    pub fn size(&self) -> PageSize {
        self.size
    }

    /// The line position the page starts at.
    pub fn first_position(&self) -> i32 {
        self.from_position
    }
}

/// `ListFulfillments`: a page of the jobs a filter matches.
#[derive(Clone, Debug)]
pub struct JobsPage {
    filter: JobFilter,
    size: PageSize,
    after: Option<PageCursor>,
}

impl JobsPage {
    /// Parses the request, naming every bad field; a page size over the largest is refused, not clamped.
    #[allow(clippy::result_large_err)]
    pub fn parse(request: &pb::ListFulfillmentsRequest) -> Result<Self, Status> {
        let mut bad = BadRequest::new();
        let filter = filter(&mut bad, request.filter.as_ref());
        // Checked against the bound first, so the size is then 0 (the default) to the largest.
        let size = bad.check("page_size", page_size(request.page_size)).map(|_| request.page_size);
        let after = match request.page_token.as_str() {
            "" => None,
            token => bad.check("page_token", PageCursor::from_token(token)),
        };
        let size = PageSize::clamped(size.unwrap_or_default(), &mut bad);
        bad.into_result()?;
        Ok(Self { filter, size, after })
    }

    /// Which jobs.
    pub fn filter(&self) -> &JobFilter {
        &self.filter
    }

    /// The page's size.
    pub fn size(&self) -> PageSize {
        self.size
    }

    /// Where the page starts: after this job.
    pub fn after(&self) -> Option<&PageCursor> {
        self.after.as_ref()
    }
}

/// `RetryFulfillments`: the failures to re-drive.
#[derive(Clone, Debug)]
pub struct BulkRetry {
    filter: JobFilter,
    max: u32,
    dry_run: bool,
}

impl BulkRetry {
    /// Parses the request, naming every bad field.
    #[allow(clippy::result_large_err)]
    pub fn parse(request: &pb::RetryFulfillmentsRequest) -> Result<Self, Status> {
        let mut bad = BadRequest::new();
        let filter = filter(&mut bad, request.filter.as_ref());
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
        Ok(Self { filter, max, dry_run: request.dry_run })
    }

    /// Which failures.
    pub fn filter(&self) -> &JobFilter {
        &self.filter
    }

    /// The most to re-drive: none when more match.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// Whether only to say what would be re-driven.
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }
}

/// A refund's terms as asked, before they are checked against the line's price.
#[derive(Clone, Debug)]
pub struct AskedRefund {
    /// The amount; None for the whole price.
    amount: Option<Price>,
    reason: RefundReason,
    source: SourceSystem,
}

impl AskedRefund {
    /// The amount; None for the whole price.
    pub fn amount(&self) -> Option<Price> {
        self.amount
    }

    /// Why.
    pub fn reason(&self) -> &RefundReason {
        &self.reason
    }

    /// Which system refunded.
    pub fn source(&self) -> &SourceSystem {
        &self.source
    }
}

/// `RevokeFulfillment`: a refund of one job.
#[derive(Clone, Debug)]
pub struct Revocation {
    fulfillment_id: String,
    asked: AskedRefund,
}

impl Revocation {
    /// Parses the request, naming every bad field.
    #[allow(clippy::result_large_err)]
    pub fn parse(request: &pb::RevokeFulfillmentRequest) -> Result<Self, Status> {
        let mut bad = BadRequest::new();
        let id = bad.check("fulfillment_id", FulfillmentId::parse(&request.fulfillment_id));
        let amount = refunded_amount(&mut bad, "refunded_amount", request.refunded_amount.as_ref());
        let (reason, source) = refunder(&mut bad, &request.reason, &request.source);
        bad.into_result()?;
        let (Some(id), Some(amount), Some(reason), Some(source)) = (id, amount, reason, source) else {
            return Err(Status::invalid_argument("invalid refund"));
        };
        Ok(Self { fulfillment_id: id.to_string(), asked: AskedRefund { amount, reason, source } })
    }

    /// The job refunded.
    pub fn fulfillment_id(&self) -> &str {
        &self.fulfillment_id
    }

    /// The terms asked.
    pub fn asked(&self) -> &AskedRefund {
        &self.asked
    }
}

/// `RefundOrder`: refunds of some lines of one order, on one reason and source.
#[derive(Clone, Debug)]
pub struct OrderRefund {
    number: OrderNumber,
    reason: RefundReason,
    source: SourceSystem,
    lines: Vec<(LineItemId, Option<Price>)>,
}

impl OrderRefund {
    /// Parses the request, naming every bad field.
    #[allow(clippy::result_large_err)]
    pub fn parse(request: &pb::RefundOrderRequest) -> Result<Self, Status> {
        let mut bad = BadRequest::new();
        let number = bad.check("order_number", OrderNumber::parse(&request.order_number));
        let (reason, source) = refunder(&mut bad, &request.reason, &request.source);
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
                refunded_amount(&mut bad, &format!("lines[{i}].refunded_amount"), line.refunded_amount.as_ref());
            if let (Some(id), Some(amount)) = (id, amount) {
                lines.push((id, amount));
            }
        }
        bad.into_result()?;
        let (Some(number), Some(reason), Some(source)) = (number, reason, source) else {
            return Err(Status::invalid_argument("invalid refund"));
        };
        Ok(Self { number, reason, source, lines })
    }

    /// The order.
    pub fn number(&self) -> &OrderNumber {
        &self.number
    }

    /// Each line refunded, in the order named, with its terms as asked.
    pub fn lines(&self) -> impl Iterator<Item = (&LineItemId, AskedRefund)> {
        self.lines.iter().map(|(id, amount)| {
            (id, AskedRefund { amount: *amount, reason: self.reason.clone(), source: self.source.clone() })
        })
    }
}

/// `RequestRefund`: the LMS asks for the refund of a learner's course run.
#[derive(Clone, Debug)]
pub struct AskedRefundRequest {
    learner: LearnerKey,
    course_run_key: CourseRunKey,
    reason: RefundReason,
}

impl AskedRefundRequest {
    /// Parses the request, naming every bad field.
    #[allow(clippy::result_large_err)]
    pub fn parse(request: &pb::RequestRefundRequest) -> Result<Self, Status> {
        use pb::request_refund_request::Learner as Named;
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
        Ok(Self { learner, course_run_key, reason })
    }

    /// The learner and the run, the reason: the parts of the request to record.
    pub fn into_parts(self) -> (LearnerKey, CourseRunKey, RefundReason) {
        (self.learner, self.course_run_key, self.reason)
    }
}

/// A refunded amount as given: None when it does not parse (recorded in
/// `bad`), Some(None) when absent (the whole price).
fn refunded_amount(bad: &mut BadRequest, field: &str, amount: Option<&Money>) -> Option<Option<Price>> {
    match amount {
        None => Some(None),
        Some(money) => price(bad, field, money).map(Some),
    }
}

/// A refund's reason and source, each None (recorded in `bad`) when invalid; the source is required.
fn refunder(bad: &mut BadRequest, reason: &str, source: &str) -> (Option<RefundReason>, Option<SourceSystem>) {
    let reason = bad.check("reason", RefundReason::parse(reason));
    let source = bad.check("source", SourceSystem::parse(source));
    (reason, source)
}

/// The filter of `ListFulfillments` and `RetryFulfillments`, every bad field
/// recorded in `bad` under `filter.` (the filter answered is then not to be used).
fn filter(bad: &mut BadRequest, filter: Option<&pb::FulfillmentFilter>) -> JobFilter {
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
    let course_run_key = optional(bad, "filter.course_run_key", &filter.course_run_key, CourseRunKey::parse);
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
    let source_system = optional(bad, "filter.source_system", &filter.source_system, SourceSystem::parse);
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

impl Refusal for BoundError {
    fn rule(&self) -> ViolationReason {
        match self {
            BoundError::Missing { .. } => ViolationReason::Required,
            BoundError::OutOfRange { .. } => ViolationReason::OutOfRange,
        }
    }
}

impl Refusal for UnknownToken {
    fn rule(&self) -> ViolationReason {
        ViolationReason::UnknownValue
    }
}

impl Refusal for EmptyWindow {
    fn rule(&self) -> ViolationReason {
        ViolationReason::Conflict
    }
}

impl Refusal for NotRetryable {}

impl Refusal for RefundMismatch {
    fn rule(&self) -> ViolationReason {
        match self {
            RefundMismatch::Currency { .. } => ViolationReason::Conflict,
            RefundMismatch::AboveThePrice { .. } => ViolationReason::OutOfRange,
        }
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
            price: Some(Money::from(&spec.line.price)),
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
            refunded_amount: Some(Money::from(refund.terms.amount())),
            reason: refund.terms.reason().to_string(),
            source: refund.terms.source().to_string(),
            request_time: Some(to_timestamp(refund.requested_at)),
        }),
    }
}

/// The proto's name for each state, both ways (None: unspecified).
const STATES: [(pb::FulfillmentState, JobState); 8] = [
    (pb::FulfillmentState::Pending, JobState::Pending),
    (pb::FulfillmentState::InProgress, JobState::InProgress),
    (pb::FulfillmentState::Succeeded, JobState::Succeeded),
    (pb::FulfillmentState::Failed, JobState::Failed),
    (pb::FulfillmentState::Revoking, JobState::Revoking),
    (pb::FulfillmentState::Revoked, JobState::Revoked),
    (pb::FulfillmentState::RevokeFailed, JobState::RevokeFailed),
    (pb::FulfillmentState::Cancelled, JobState::Cancelled),
];

/// The proto's name for each error kind, both ways.
const KINDS: [(pb::FulfillmentErrorKind, ErrorKind); 6] = [
    (pb::FulfillmentErrorKind::Rejected, ErrorKind::Rejected),
    (pb::FulfillmentErrorKind::Unavailable, ErrorKind::Unavailable),
    (pb::FulfillmentErrorKind::Timeout, ErrorKind::Timeout),
    (pb::FulfillmentErrorKind::Connection, ErrorKind::Connection),
    (pb::FulfillmentErrorKind::Authentication, ErrorKind::Authentication),
    (pb::FulfillmentErrorKind::AttemptsExhausted, ErrorKind::AttemptsExhausted),
];

fn state_from_proto(state: pb::FulfillmentState) -> Option<JobState> {
    STATES.iter().find(|(named, _)| *named == state).map(|(_, state)| *state)
}

fn state_to_proto(state: JobState) -> pb::FulfillmentState {
    STATES.iter().find(|(_, ours)| *ours == state).map_or(pb::FulfillmentState::Unspecified, |(named, _)| *named)
}

fn kind_from_proto(kind: pb::FulfillmentErrorKind) -> Option<ErrorKind> {
    KINDS.iter().find(|(named, _)| *named == kind).map(|(_, kind)| *kind)
}

fn kind_to_proto(kind: ErrorKind) -> pb::FulfillmentErrorKind {
    KINDS.iter().find(|(_, ours)| *ours == kind).map_or(pb::FulfillmentErrorKind::Unspecified, |(named, _)| *named)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_and_kind_has_its_proto_name_both_ways() {
        for state in JobState::ALL {
            assert_eq!(state_from_proto(state_to_proto(state)), Some(state));
        }
        for kind in ErrorKind::ALL {
            assert_eq!(kind_from_proto(kind_to_proto(kind)), Some(kind));
        }
        assert_eq!(state_from_proto(pb::FulfillmentState::Unspecified), None);
        assert_eq!(kind_from_proto(pb::FulfillmentErrorKind::Unspecified), None);
    }
}
