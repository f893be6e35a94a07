//! The gRPC face of PurchaseHistory, each RPC parse → domain → store → answer
//! (parsing and answers in `convert.rs`): `RecordPurchase` appends the parsed
//! purchase to the purchases stream (the consumer stores it, like every other
//! purchase); `ListPurchases` resolves a username through CustomerIdentity so a
//! renamed learner keeps their history, then pages the store newest first. No SQL here.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use kit::bus::EventBus;
use kit::client::TracedChannel;
use kit::trace::TextContext;
use prost::Message;
use proto::commerce::events::v1::{EventEnvelope, event_envelope::Payload};
use proto::commerce::identity::v1 as identity;
use proto::commerce::identity::v1::customer_identity_service_client::CustomerIdentityServiceClient;
use proto::commerce::purchases::v1 as pb;
use proto::commerce::purchases::v1::purchase_history_service_server::PurchaseHistoryService;
use tonic::{Code, Request, Response, Status};

use vocab::{LmsUserId, LmsUsername};

use crate::convert::{PurchaseListing, purchase_page, purchase_to_record};
use crate::domain::LearnerKey;
use crate::store::{Store, StoreError};

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
    async fn resolve(&self, learner: &LearnerKey) -> Result<LearnerKey, Status> {
        let username = match learner {
            LearnerKey::LmsUserId(_) => return Ok(learner.clone()),
            LearnerKey::Username(username) => username,
        };
        let mut request = Request::new(identity::LookupCustomerRequest {
            key: Some(identity::lookup_customer_request::Key::LmsUsername(username.to_string())),
        });
        request.set_timeout(IDENTITY_TIMEOUT);
        match self.identity.clone().lookup_customer(request).await {
            Ok(found) => match found.into_inner().customer.and_then(|c| LmsUserId::parse(&c.lms_user_id).ok()) {
                Some(id) => Ok(LearnerKey::LmsUserId(id)),
                None => Ok(stored_username(username)),
            },
            // Unknown to CustomerIdentity (or not a valid username there): the stored username answers.
            Err(status) if matches!(status.code(), Code::NotFound | Code::InvalidArgument) => {
                Ok(stored_username(username))
            }
            Err(status) => {
                Err(kit::error::from_peer("CustomerIdentity", &format!("resolving username {username}"), &status))
            }
        }
    }
}

/// The purchases stored under `username` as written on each.
fn stored_username(username: &LmsUsername) -> LearnerKey {
    LearnerKey::Username(username.clone())
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

#[tonic::async_trait]
impl PurchaseHistoryService for PurchaseHistoryApi {
    async fn record_purchase(
        &self,
        request: Request<pb::RecordPurchaseRequest>,
    ) -> Result<Response<pb::RecordPurchaseResponse>, Status> {
        let mut purchase = purchase_to_record(request.get_ref(), Utc::now())?;
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
        let listing = PurchaseListing::try_from(request.get_ref())?;
        let learner = self.resolve(listing.learner()).await?;
        let page_size = listing.page_size();
        let listed = self
            .store
            .list_page(&learner, listing.after(), page_size.rows_to_read(), listing.hide_refunded())
            .await
            .map_err(store_status)?;
        Ok(Response::new(purchase_page(listed, page_size)))
    }
}
