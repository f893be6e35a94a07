//! The gRPC face of PurchaseHistory: `RecordPurchase` validates and appends to
//! the purchases stream (the consumer stores it, like every other purchase);
//! `ListPurchases` resolves a username through CustomerIdentity so a renamed
//! learner keeps their history, then pages the store newest first. No SQL here.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use kit::bus::EventBus;
use kit::client::TracedChannel;
use kit::error::{BadRequest, ViolationReason};
use kit::trace::TextContext;
use prost::Message;
use proto::commerce::events::v1::{EventEnvelope, event_envelope::Payload};
use proto::commerce::identity::v1 as identity;
use proto::commerce::identity::v1::customer_identity_service_client::CustomerIdentityServiceClient;
use proto::commerce::purchases::v1 as pb;
use proto::commerce::purchases::v1::purchase_history_service_server::PurchaseHistoryService;
use tonic::{Code, Request, Response, Status};

use vocab::{LmsUserId, LmsUsername};

use crate::domain::{LearnerKey, PageCursor, Purchase, Violation};
use crate::refund::PurchaseRefund;
use crate::store::StoreError;
use crate::store::{Listed, Store};

/// The page of `ListPurchases` when the caller asks for none.
const DEFAULT_PAGE_SIZE: i32 = 50;
/// The largest page of `ListPurchases`.
const MAX_PAGE_SIZE: i32 = 500;
/// How long a username lookup waits for CustomerIdentity.
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers `commerce.purchases.v1.PurchaseHistoryService`.
#[derive(Clone)]
pub struct PurchaseHistoryApi {
    store: Arc<dyn Store>,
    bus: Arc<dyn EventBus>,
    identity: CustomerIdentityServiceClient<TracedChannel>,
    stream: String,
}

impl PurchaseHistoryApi {
    /// The API over `store`, appending to `stream` on `bus`, resolving usernames through `identity`.
    pub fn new(
        store: Arc<dyn Store>,
        bus: Arc<dyn EventBus>,
        identity: CustomerIdentityServiceClient<TracedChannel>,
        stream: &str,
    ) -> Self {
        Self { store, bus, identity, stream: stream.to_string() }
    }

    /// Whose purchases: an LMS user id as given; a username resolved to its
    /// LMS user id when CustomerIdentity knows it, else the stored username.
    async fn learner(&self, learner: Option<&pb::list_purchases_request::Learner>) -> Result<LearnerKey, Status> {
        use pb::list_purchases_request::Learner;
        let mut bad = BadRequest::new();
        let username = match learner {
            Some(Learner::LmsUserId(id)) => {
                let id = bad.check("lms_user_id", LmsUserId::parse(id));
                bad.into_result()?;
                return id.map(LearnerKey::LmsUserId).ok_or_else(|| Status::invalid_argument("lms_user_id"));
            }
            Some(Learner::Username(name)) => {
                let name = bad.check("username", LmsUsername::parse(name));
                bad.into_result()?;
                name.ok_or_else(|| Status::invalid_argument("username"))?
            }
            None => {
                bad.violation("learner", ViolationReason::Required, "is required: username or lms_user_id");
                return Err(bad.into_status());
            }
        };
        let mut request = Request::new(identity::LookupCustomerRequest {
            key: Some(identity::lookup_customer_request::Key::LmsUsername(username.to_string())),
        });
        request.set_timeout(IDENTITY_TIMEOUT);
        match self.identity.clone().lookup_customer(request).await {
            Ok(found) => match found.into_inner().customer.and_then(|c| LmsUserId::parse(&c.lms_user_id).ok()) {
                Some(id) => Ok(LearnerKey::LmsUserId(id)),
                None => Ok(LearnerKey::Username(username.clone())),
            },
            // Unknown to CustomerIdentity (or not a valid username there): the stored username answers.
            Err(status) if matches!(status.code(), Code::NotFound | Code::InvalidArgument) => {
                Ok(LearnerKey::Username(username.clone()))
            }
            Err(status) => {
                Err(kit::error::from_peer("CustomerIdentity", &format!("resolving username {username}"), &status))
            }
        }
    }
}

/// A store failure as the caller sees it: never the database's own text.
fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::Database(error) => kit::db::store_status("the purchase store", &error),
        StoreError::Corrupt { purchase_id, reason } => {
            tracing::error!(%purchase_id, %reason, "a stored purchase could not be read back");
            Status::internal(format!("purchase {purchase_id} could not be read back; this is logged"))
        }
    }
}

fn invalid(violations: Vec<Violation>) -> Status {
    let mut bad = BadRequest::new();
    for violation in violations {
        bad.violation(violation.field_path, violation.rule, violation.reason);
    }
    bad.into_status()
}

#[tonic::async_trait]
impl PurchaseHistoryService for PurchaseHistoryApi {
    async fn record_purchase(
        &self,
        request: Request<pb::RecordPurchaseRequest>,
    ) -> Result<Response<pb::RecordPurchaseResponse>, Status> {
        let mut purchase = Purchase::from_request(request.get_ref(), Utc::now()).map_err(invalid)?;
        // A retired learner's name never goes back onto the stream.
        if let Some(placeholder) = self.store.retired_username(purchase.lms_user_id).await.map_err(store_status)? {
            purchase.username = placeholder;
        }
        let trace = TextContext::current();
        let event_id = format!("purchase:{}", purchase.purchase_id);
        let envelope = EventEnvelope {
            event_id: event_id.clone(),
            event_type: "commerce.events.v1.PurchaseRecorded".into(),
            occurred_at: Some(kit::time::to_timestamp(Utc::now())),
            traceparent: trace.traceparent,
            tracestate: trace.tracestate,
            payload: Some(Payload::PurchaseRecorded(purchase.to_event())),
        };
        // The bus publishes an event id once, so a repeated call with the same purchase_id appends nothing.
        self.bus.publish(&self.stream, &event_id, &envelope.encode_to_vec()).await.map_err(|error| {
            tracing::error!(%error, "could not append a purchase to the stream");
            kit::error::with_retry_info(
                Code::Unavailable,
                "the purchases stream is unavailable; repeat the request with the same purchase_id",
                kit::error::RETRY_AFTER,
            )
        })?;
        Ok(Response::new(pb::RecordPurchaseResponse { purchase_id: purchase.purchase_id.into() }))
    }

    async fn list_purchases(
        &self,
        request: Request<pb::ListPurchasesRequest>,
    ) -> Result<Response<pb::ListPurchasesResponse>, Status> {
        let request = request.get_ref();
        let mut bad = BadRequest::new();
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => {
                bad.violation("page_size", ViolationReason::OutOfRange, "must not be negative");
                DEFAULT_PAGE_SIZE
            }
            n => n.min(MAX_PAGE_SIZE),
        };
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
        bad.into_result()?;
        let learner = self.learner(request.learner.as_ref()).await?;
        let mut purchases = self
            .store
            .list_page(&learner, after.as_ref(), i64::from(page_size) + 1, request.hide_refunded)
            .await
            .map_err(store_status)?;
        let next_page_token = if purchases.len() > page_size as usize {
            purchases.truncate(page_size as usize);
            purchases.last().map(|listed| PageCursor::after(&listed.purchase).encode()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListPurchasesResponse {
            purchases: purchases.iter().map(listed_to_proto).collect(),
            next_page_token,
        }))
    }
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
