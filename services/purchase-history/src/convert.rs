//! The edge of `PurchaseHistoryService`: each request message becomes its
//! domain value here, once, every bad field named in one `BadRequest`; and the
//! stored values become the answer messages. `api.rs` only orchestrates.

#![allow(clippy::result_large_err)] // tonic's Status is what a handler answers

use chrono::{DateTime, Utc};
use kit::error::{BadRequest, ViolationReason};
use kit::page::PageSize;
use proto::commerce::purchases::v1 as pb;
use tonic::Status;
use vocab::{LmsUserId, LmsUsername};

use crate::domain::{LearnerKey, PageCursor, Purchase, Violation};
use crate::refund::PurchaseRefund;
use crate::store::Listed;

/// The purchase a `RecordPurchase` asks to record, received `now`.
pub fn purchase_to_record(request: &pb::RecordPurchaseRequest, now: DateTime<Utc>) -> Result<Purchase, Status> {
    Purchase::from_request(request, now).map_err(bad_request)
}

/// A `ListPurchases` request, parsed: whose purchases (a username not yet
/// resolved through CustomerIdentity), which page, and which purchases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PurchaseListing {
    learner: LearnerKey,
    page_size: PageSize,
    after: Option<PageCursor>,
    hide_refunded: bool,
}

impl PurchaseListing {
    /// Whose purchases, as the request names them.
    pub fn learner(&self) -> &LearnerKey {
        &self.learner
    }

    /// How many purchases one page holds.
    pub fn page_size(&self) -> PageSize {
        self.page_size
    }

    /// Where the previous page ended; None for the first page.
    pub fn after(&self) -> Option<&PageCursor> {
        self.after.as_ref()
    }

    /// Whether refunded purchases are left out.
    pub fn hide_refunded(&self) -> bool {
        self.hide_refunded
    }
}

impl TryFrom<&pb::ListPurchasesRequest> for PurchaseListing {
    type Error = Status;

    /// Every bad field named: `page_size` (negative), `page_token` (not one this
    /// service gave), and the learner (`lms_user_id`, `username`, or `learner` when absent).
    fn try_from(request: &pb::ListPurchasesRequest) -> Result<Self, Status> {
        use pb::list_purchases_request::Learner;
        let mut bad = BadRequest::new();
        let page_size = PageSize::clamped(request.page_size, &mut bad);
        let after = match request.page_token.as_str() {
            "" => None,
            token => PageCursor::decode(token)
                .map_err(|_| {
                    bad.violation(
                        "page_token",
                        ViolationReason::UnknownValue,
                        "is not a next_page_token this service gave",
                    )
                })
                .ok(),
        };
        let learner = match &request.learner {
            Some(Learner::LmsUserId(id)) => bad.check("lms_user_id", LmsUserId::parse(id)).map(LearnerKey::LmsUserId),
            Some(Learner::Username(name)) => bad.check("username", LmsUsername::parse(name)).map(LearnerKey::Username),
            None => {
                bad.violation("learner", ViolationReason::Required, "is required: username or lms_user_id");
                None
            }
        };
        match learner {
            Some(learner) if bad.is_empty() => {
                Ok(Self { learner, page_size, after, hide_refunded: request.hide_refunded })
            }
            _ => Err(bad.into_status()),
        }
    }
}

/// A page of listed purchases as the answer, with the token of the next page.
pub fn purchase_page(listed: Vec<Listed>, page_size: PageSize) -> pb::ListPurchasesResponse {
    let (page, next_page_token) = page_size.split(listed, |last| PageCursor::after(&last.purchase).encode());
    pb::ListPurchasesResponse { purchases: page.iter().map(listed_to_proto).collect(), next_page_token }
}

/// The API's view of a listed purchase: its status, and its refund when refunded.
fn listed_to_proto(listed: &Listed) -> pb::Purchase {
    let status = match listed.refund {
        Some(_) => pb::PurchaseStatus::Refunded,
        None => pb::PurchaseStatus::Purchased,
    };
    pb::Purchase {
        status: status as i32,
        refund: listed.refund.as_ref().map(PurchaseRefund::to_proto),
        ..listed.purchase.to_proto()
    }
}

/// A parser's violations as the INVALID_ARGUMENT answer.
fn bad_request(violations: Vec<Violation>) -> Status {
    let mut bad = BadRequest::new();
    for violation in violations {
        bad.violation(violation.field_path, violation.rule, violation.reason);
    }
    bad.into_status()
}
