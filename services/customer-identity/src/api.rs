//! The gRPC face of CustomerIdentity: parse the request into domain values
//! (every bad field named), then the cache and the store, then the answer.
//! No SQL here.

use std::collections::HashMap;
use std::sync::Arc;

use kit::cache::ReadThrough;
use kit::error::{BadRequest, ViolationReason, with_reason};
use kit::trace::TextContext;
use prost::Message;
use proto::commerce::identity::v1 as pb;
use proto::commerce::identity::v1::customer_identity_service_server::CustomerIdentityService;
use tokio::sync::Notify;
use tokio_stream::StreamExt;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::domain::{
    Customer, CustomerId, CustomerKey, CustomerLink, Email, LmsUserId, LmsUsername, MAX_BATCH_KEYS, RetirementKey,
    keys_to_invalidate,
};
use crate::store::{Store, StoreError, TakenKey};

/// Most rejections an import answers with; the counts cover them all.
const MAX_REPORTED_REJECTIONS: usize = 1000;

/// Answers `commerce.identity.v1.CustomerIdentityService`.
#[derive(Clone)]
pub struct CustomerIdentityApi {
    store: Arc<dyn Store>,
    cache: Arc<ReadThrough>,
    retirement: RetirementKey,
    published: Arc<Notify>,
}

impl CustomerIdentityApi {
    /// The API over a store and a cache; `retirement` keys the retired
    /// usernames' placeholders; `published` wakes the outbox relay after a
    /// retirement wrote its event.
    pub fn new(
        store: Arc<dyn Store>,
        cache: Arc<ReadThrough>,
        retirement: RetirementKey,
        published: Arc<Notify>,
    ) -> Self {
        Self { store, cache, retirement, published }
    }

    /// One customer by key, through the cache.
    async fn find(&self, key: &CustomerKey) -> Result<Option<pb::Customer>, Status> {
        let cached = self
            .cache
            .get(&key.cache_key(), || async {
                let found = self.store.get(key).await.map_err(store_status)?;
                Ok::<_, Status>(found.map(|c| to_proto(&c).encode_to_vec()))
            })
            .await?;
        cached.map(|bytes| decode(&bytes)).transpose()
    }

    /// Removes every cached entry the change touched, before the caller is answered.
    async fn invalidate<'a>(&self, customers: impl IntoIterator<Item = &'a Customer>) -> Result<(), Status> {
        self.invalidate_keys(keys_to_invalidate(customers)).await
    }

    async fn invalidate_keys(&self, keys: Vec<String>) -> Result<(), Status> {
        self.cache.invalidate(&keys).await.map_err(|error| {
            tracing::error!(%error, "cache invalidation failed after a committed write");
            Status::unavailable(
                "the change was stored, but the cache could not be invalidated; repeat the request \
                 (it is idempotent) once the cache is reachable",
            )
        })
    }
}

fn decode(bytes: &[u8]) -> Result<pb::Customer, Status> {
    pb::Customer::decode(bytes).map_err(|error| {
        tracing::error!(%error, "undecodable cache entry");
        Status::internal("cached customer could not be decoded")
    })
}

fn to_proto(customer: &Customer) -> pb::Customer {
    pb::Customer {
        customer_id: customer.customer_id.clone(),
        lms_user_id: customer.lms_user_id.to_string(),
        lms_username: customer.lms_username.clone(),
        email: customer.email.clone(),
        version: customer.version,
        retired: customer.retired,
        create_time: Some(kit::time::to_timestamp(customer.create_time)),
        update_time: Some(kit::time::to_timestamp(customer.update_time)),
    }
}

/// A store failure as the caller should see it.
fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::VersionMismatch { expected, stored } => with_reason(
            Code::Aborted,
            error.to_string(),
            "VERSION_MISMATCH",
            [
                ("expected_version", expected.to_string()),
                ("stored_version", stored.map_or_else(String::new, |v| v.to_string())),
            ],
        ),
        StoreError::Taken { key, ref value, ref owner } => with_reason(
            Code::AlreadyExists,
            error.to_string(),
            match key {
                TakenKey::LmsUserId => "LMS_USER_ID_TAKEN",
                TakenKey::LmsUsername => "LMS_USERNAME_TAKEN",
            },
            [("field", key.field().to_string()), ("value", value.clone()), ("owner_customer_id", owner.clone())],
        ),
        StoreError::Retired(ref customer_id) => {
            with_reason(Code::FailedPrecondition, error.to_string(), "RETIRED", [("customer_id", customer_id.clone())])
        }
        StoreError::Database(error) => kit::db::store_status("the customer store", &error),
    }
}

/// A whole link from its four fields (top-level field names: no per-row formatting).
fn parse_link(
    bad: &mut BadRequest,
    customer_id: &str,
    lms_user_id: &str,
    lms_username: &str,
    email: &str,
) -> Option<CustomerLink> {
    let customer_id = bad.check("customer_id", CustomerId::parse(customer_id));
    let lms_user_id = bad.check("lms_user_id", LmsUserId::parse(lms_user_id));
    let lms_username = bad.check("lms_username", LmsUsername::parse(lms_username));
    let email = bad.check("email", Email::parse(email));
    Some(CustomerLink {
        customer_id: customer_id?,
        lms_user_id: lms_user_id?,
        lms_username: lms_username?,
        email: email?,
    })
}

fn parse_key(bad: &mut BadRequest, prefix: &str, key: Option<&pb::customer_key::Key>) -> Option<CustomerKey> {
    use pb::customer_key::Key;
    match key {
        Some(Key::CustomerId(id)) => {
            bad.check(format!("{prefix}customer_id"), CustomerId::parse(id)).map(CustomerKey::CustomerId)
        }
        Some(Key::LmsUserId(id)) => {
            bad.check(format!("{prefix}lms_user_id"), LmsUserId::parse(id)).map(CustomerKey::LmsUserId)
        }
        Some(Key::LmsUsername(name)) => {
            bad.check(format!("{prefix}lms_username"), LmsUsername::parse(name)).map(CustomerKey::LmsUsername)
        }
        None => {
            let field = if prefix.is_empty() { "key".to_string() } else { prefix.trim_end_matches('.').to_string() };
            bad.violation(field, ViolationReason::Required, "set one of customer_id, lms_user_id, lms_username");
            None
        }
    }
}

#[tonic::async_trait]
impl CustomerIdentityService for CustomerIdentityApi {
    async fn upsert_customer(
        &self,
        request: Request<pb::UpsertCustomerRequest>,
    ) -> Result<Response<pb::UpsertCustomerResponse>, Status> {
        let request = request.into_inner();
        let mut bad = BadRequest::new();
        let link =
            parse_link(&mut bad, &request.customer_id, &request.lms_user_id, &request.lms_username, &request.email);
        if request.expected_version.is_some_and(|v| v < 0) {
            bad.violation(
                "expected_version",
                ViolationReason::OutOfRange,
                "must be 0 (not yet created) or a stored version",
            );
        }
        bad.into_result()?;
        let Some(link) = link else { return Err(Status::internal("validation inconsistency")) };

        let upserted = self.store.upsert(&link, request.expected_version).await.map_err(store_status)?;
        // Even an unchanged upsert invalidates: repeating a write whose
        // invalidation failed repairs the cache.
        self.invalidate(upserted.previous.iter().chain([&upserted.customer])).await?;
        Ok(Response::new(pb::UpsertCustomerResponse {
            customer: Some(to_proto(&upserted.customer)),
            created: upserted.previous.is_none(),
        }))
    }

    async fn get_customer(
        &self,
        request: Request<pb::GetCustomerRequest>,
    ) -> Result<Response<pb::GetCustomerResponse>, Status> {
        let mut bad = BadRequest::new();
        let id = bad.check("customer_id", CustomerId::parse(&request.get_ref().customer_id));
        bad.into_result()?;
        let Some(id) = id else { return Err(Status::internal("validation inconsistency")) };
        let customer = self
            .find(&CustomerKey::CustomerId(id.clone()))
            .await?
            .ok_or_else(|| Status::not_found(format!("no customer {}", id.as_str())))?;
        Ok(Response::new(pb::GetCustomerResponse { customer: Some(customer) }))
    }

    async fn lookup_customer(
        &self,
        request: Request<pb::LookupCustomerRequest>,
    ) -> Result<Response<pb::LookupCustomerResponse>, Status> {
        use pb::lookup_customer_request::Key;
        let mut bad = BadRequest::new();
        let key = match &request.get_ref().key {
            Some(Key::LmsUserId(id)) => bad.check("lms_user_id", LmsUserId::parse(id)).map(CustomerKey::LmsUserId),
            Some(Key::LmsUsername(name)) => {
                bad.check("lms_username", LmsUsername::parse(name)).map(CustomerKey::LmsUsername)
            }
            None => {
                bad.field("key", "set lms_user_id or lms_username");
                None
            }
        };
        bad.into_result()?;
        let Some(key) = key else { return Err(Status::internal("validation inconsistency")) };
        let customer =
            self.find(&key).await?.ok_or_else(|| Status::not_found("no customer is linked to that LMS user"))?;
        Ok(Response::new(pb::LookupCustomerResponse { customer: Some(customer) }))
    }

    async fn batch_lookup_customers(
        &self,
        request: Request<pb::BatchLookupCustomersRequest>,
    ) -> Result<Response<pb::BatchLookupCustomersResponse>, Status> {
        let request = request.into_inner();
        let mut bad = BadRequest::new();
        if request.keys.is_empty() || request.keys.len() > MAX_BATCH_KEYS {
            let rule = if request.keys.is_empty() { ViolationReason::Required } else { ViolationReason::TooLong };
            bad.violation("keys", rule, format!("must hold 1 to {MAX_BATCH_KEYS} keys, got {}", request.keys.len()));
            return Err(bad.into_status());
        }
        let keys: Vec<Option<CustomerKey>> = request
            .keys
            .iter()
            .enumerate()
            .map(|(i, key)| parse_key(&mut bad, &format!("keys[{i}]."), key.key.as_ref()))
            .collect();
        bad.into_result()?;
        let keys: Vec<CustomerKey> = keys.into_iter().flatten().collect();

        let cache_keys: Vec<String> = keys.iter().map(CustomerKey::cache_key).collect();
        let by_cache_key: HashMap<&str, &CustomerKey> = cache_keys.iter().map(String::as_str).zip(&keys).collect();
        let found = self
            .cache
            .get_many(&cache_keys, |missing| async move {
                let wanted: Vec<CustomerKey> =
                    missing.iter().filter_map(|k| by_cache_key.get(k.as_str()).map(|key| (*key).clone())).collect();
                let loaded = self.store.get_many(&wanted).await.map_err(store_status)?;
                Ok::<_, Status>(loaded.into_iter().map(|c| c.map(|c| to_proto(&c).encode_to_vec())).collect())
            })
            .await?;
        let results = request
            .keys
            .into_iter()
            .zip(found)
            .map(|(key, customer)| {
                Ok(pb::CustomerLookupResult { key: Some(key), customer: customer.map(|b| decode(&b)).transpose()? })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        Ok(Response::new(pb::BatchLookupCustomersResponse { results }))
    }

    async fn retire_customer(
        &self,
        request: Request<pb::RetireCustomerRequest>,
    ) -> Result<Response<pb::RetireCustomerResponse>, Status> {
        use pb::retire_customer_request::Key;
        let key = request.into_inner().key.map(|key| match key {
            Key::CustomerId(id) => pb::customer_key::Key::CustomerId(id),
            Key::LmsUserId(id) => pb::customer_key::Key::LmsUserId(id),
            Key::LmsUsername(name) => pb::customer_key::Key::LmsUsername(name),
        });
        let mut bad = BadRequest::new();
        let key = parse_key(&mut bad, "", key.as_ref());
        bad.into_result()?;
        let Some(key) = key else { return Err(Status::internal("validation inconsistency")) };

        let retired = self
            .store
            .retire(&key, &self.retirement, &TextContext::current())
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found("no such customer"))?;
        self.published.notify_one();
        // The old username's entry goes too: it must no longer find the learner.
        self.invalidate(retired.previous.iter().chain([&retired.customer])).await?;
        Ok(Response::new(pb::RetireCustomerResponse { customer: Some(to_proto(&retired.customer)) }))
    }

    async fn import_customers(
        &self,
        request: Request<Streaming<pb::ImportCustomersRequest>>,
    ) -> Result<Response<pb::ImportCustomersResponse>, Status> {
        let mut stream = request.into_inner();
        let mut answer = pb::ImportCustomersResponse::default();
        let mut next_row: i64 = 1;
        let reject = |answer: &mut pb::ImportCustomersResponse, rejection: pb::ImportRejection| {
            answer.rejected += 1;
            if answer.rejections.len() < MAX_REPORTED_REJECTIONS {
                answer.rejections.push(rejection);
            }
        };
        while let Some(message) = stream.next().await {
            let batch = message?;
            let first_row = next_row;
            next_row += batch.customers.len() as i64;
            let mut valid = Vec::with_capacity(batch.customers.len());
            let mut rows = Vec::with_capacity(batch.customers.len());
            let mut rejections = Vec::new();
            for (offset, record) in batch.customers.iter().enumerate() {
                let mut bad = BadRequest::new();
                match parse_link(
                    &mut bad,
                    &record.customer_id,
                    &record.lms_user_id,
                    &record.lms_username,
                    &record.email,
                ) {
                    Some(link) => {
                        valid.push(link);
                        rows.push(first_row + offset as i64);
                    }
                    None => {
                        let status = bad.into_status();
                        let (field, reason) =
                            kit::error::field_violations(&status).into_iter().next().unwrap_or_default();
                        rejections.push(pb::ImportRejection {
                            row: first_row + offset as i64,
                            customer_id: record.customer_id.clone(),
                            field,
                            reason,
                        });
                    }
                }
            }
            if !valid.is_empty() {
                let outcome = self.store.import(&valid).await.map_err(store_status)?;
                let refused: std::collections::HashSet<usize> = outcome.rejected.iter().map(|r| r.index).collect();
                let mut keys = keys_to_invalidate(&outcome.previous);
                // Stored rows may end cached misses under their new keys.
                for (_, link) in valid.iter().enumerate().filter(|(i, _)| !refused.contains(i)) {
                    keys.extend(link.cache_keys());
                }
                self.invalidate_keys(keys).await?;
                answer.inserted += outcome.inserted as i64;
                answer.updated += outcome.updated as i64;
                answer.unchanged += outcome.unchanged as i64;
                for rejection in outcome.rejected {
                    rejections.push(pb::ImportRejection {
                        row: rows[rejection.index],
                        customer_id: valid[rejection.index].customer_id.as_str().to_string(),
                        field: rejection.field.to_string(),
                        reason: rejection.reason,
                    });
                }
            }
            rejections.sort_by_key(|r| r.row);
            for rejection in rejections {
                reject(&mut answer, rejection);
            }
        }
        Ok(Response::new(answer))
    }
}
