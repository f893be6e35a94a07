//! The gRPC face of CustomerIdentity: parse the request into domain values
//! (every bad field named, in `convert.rs`), then the cache and the store, then
//! the answer.
//! No SQL here.

use std::collections::HashMap;
use std::sync::Arc;

use kit::cache::ReadThrough;
use kit::error::with_reason;
use kit::trace::TextContext;
use prost::Message;
use proto::commerce::identity::v1 as pb;
use proto::commerce::identity::v1::customer_identity_service_server::CustomerIdentityService;
use tokio::sync::Notify;
use tokio_stream::StreamExt;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::convert::{
    CustomerUpsert, customer_to_get, customer_to_proto, customer_to_retire, imported_link, key_to_look_up,
    keys_to_look_up,
};
use crate::domain::{Customer, CustomerKey, CustomerLink, RetirementKey, keys_to_invalidate};
use crate::store::first_load::{FirstLoad, FirstLoaded};
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
                Ok::<_, Status>(found.map(|c| customer_to_proto(&c).encode_to_vec()))
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
            stored_but_not_invalidated(
                error,
                "the change was stored, but the cache could not be invalidated; repeat the request \
                 (it is idempotent) once the cache is reachable",
            )
        })
    }
}

/// A write committed, its cache invalidation failed: UNAVAILABLE, so the
/// caller repeats the (idempotent) write and its invalidation with it.
fn stored_but_not_invalidated(error: kit::cache::CacheError, message: &'static str) -> Status {
    tracing::error!(%error, "cache invalidation failed after a committed write");
    Status::unavailable(message)
}

fn decode(bytes: &[u8]) -> Result<pb::Customer, Status> {
    pb::Customer::decode(bytes).map_err(|error| {
        tracing::error!(%error, "undecodable cache entry");
        Status::internal("cached customer could not be decoded")
    })
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

#[tonic::async_trait]
impl CustomerIdentityService for CustomerIdentityApi {
    async fn upsert_customer(
        &self,
        request: Request<pb::UpsertCustomerRequest>,
    ) -> Result<Response<pb::UpsertCustomerResponse>, Status> {
        let upsert = CustomerUpsert::try_from(request.get_ref())?;
        let upserted = self.store.upsert(upsert.link(), upsert.expected_version()).await.map_err(store_status)?;
        // Even an unchanged upsert invalidates: repeating a write whose
        // invalidation failed repairs the cache.
        self.invalidate(upserted.previous.iter().chain([&upserted.customer])).await?;
        Ok(Response::new(pb::UpsertCustomerResponse {
            customer: Some(customer_to_proto(&upserted.customer)),
            created: upserted.previous.is_none(),
        }))
    }

    async fn get_customer(
        &self,
        request: Request<pb::GetCustomerRequest>,
    ) -> Result<Response<pb::GetCustomerResponse>, Status> {
        let id = customer_to_get(request.get_ref())?;
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
        let key = key_to_look_up(request.get_ref())?;
        let customer =
            self.find(&key).await?.ok_or_else(|| Status::not_found("no customer is linked to that LMS user"))?;
        Ok(Response::new(pb::LookupCustomerResponse { customer: Some(customer) }))
    }

    async fn batch_lookup_customers(
        &self,
        request: Request<pb::BatchLookupCustomersRequest>,
    ) -> Result<Response<pb::BatchLookupCustomersResponse>, Status> {
        let request = request.into_inner();
        let keys = keys_to_look_up(&request)?;
        let cache_keys: Vec<String> = keys.iter().map(CustomerKey::cache_key).collect();
        let by_cache_key: HashMap<&str, &CustomerKey> = cache_keys.iter().map(String::as_str).zip(&keys).collect();
        let found = self
            .cache
            .get_many(&cache_keys, |missing| async move {
                let wanted: Vec<CustomerKey> =
                    missing.iter().filter_map(|k| by_cache_key.get(k.as_str()).map(|key| (*key).clone())).collect();
                let loaded = self.store.get_many(&wanted).await.map_err(store_status)?;
                Ok::<_, Status>(loaded.into_iter().map(|c| c.map(|c| customer_to_proto(&c).encode_to_vec())).collect())
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
        let key = customer_to_retire(request.into_inner())?;
        let retired = self
            .store
            .retire(&key, &self.retirement, &TextContext::current())
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found("no such customer"))?;
        self.published.notify_one();
        // The old username's entry goes too: it must no longer find the learner.
        self.invalidate(retired.previous.iter().chain([&retired.customer])).await?;
        Ok(Response::new(pb::RetireCustomerResponse { customer: Some(customer_to_proto(&retired.customer)) }))
    }

    async fn import_customers(
        &self,
        request: Request<Streaming<pb::ImportCustomersRequest>>,
    ) -> Result<Response<pb::ImportCustomersResponse>, Status> {
        let mut stream = request.into_inner();
        let mut import = Import::default();
        // Into an empty table, the batches are staged and written at the end
        // with the indexes built after (store::first_load).
        let mut first_load = self.store.begin_first_load().await.map_err(store_status)?;
        while let Some(message) = stream.next().await {
            let batch = match message {
                Ok(batch) => batch,
                Err(status) => {
                    // What arrived before the failure is stored, as batch by batch.
                    if let Some(load) = first_load.take() {
                        self.finish_first_load(load, &mut import).await?;
                    }
                    return Err(status);
                }
            };
            let valid = import.parse(&batch);
            match first_load.as_mut() {
                Some(load) if !valid.is_empty() => load.stage(&valid).await.map_err(store_status)?,
                Some(_) => {}
                None => self.merge(&mut import, valid).await?,
            }
        }
        if let Some(load) = first_load {
            self.finish_first_load(load, &mut import).await?;
        }
        Ok(Response::new(import.answer()))
    }
}

/// An import stream's progress: the next row's number, the counts, the rejections.
#[derive(Default)]
struct Import {
    next_row: i64,
    answer: pb::ImportCustomersResponse,
    /// The rejections of the lowest row numbers seen so far, at most [`MAX_REPORTED_REJECTIONS`]
    /// (a first load that falls back rejects its rows after the stream's invalid ones).
    first_rejections: std::collections::BTreeMap<i64, pb::ImportRejection>,
}

impl Import {
    /// The valid rows of `batch`, each with its number in the stream; the
    /// invalid ones are rejected.
    fn parse(&mut self, batch: &pb::ImportCustomersRequest) -> Vec<(i64, CustomerLink)> {
        let first_row = self.next_row + 1;
        self.next_row += batch.customers.len() as i64;
        let mut valid = Vec::with_capacity(batch.customers.len());
        for (row, record) in (first_row..).zip(&batch.customers) {
            match imported_link(record) {
                Ok(link) => valid.push((row, link)),
                Err((field, reason)) => {
                    self.reject(pb::ImportRejection { row, customer_id: record.customer_id.clone(), field, reason })
                }
            }
        }
        valid
    }

    fn reject(&mut self, rejection: pb::ImportRejection) {
        self.answer.rejected += 1;
        self.first_rejections.insert(rejection.row, rejection);
        if self.first_rejections.len() > MAX_REPORTED_REJECTIONS {
            self.first_rejections.pop_last();
        }
    }

    fn answer(mut self) -> pb::ImportCustomersResponse {
        self.answer.rejections = self.first_rejections.into_values().collect();
        self.answer
    }
}

impl CustomerIdentityApi {
    /// One batch merged into a table that has rows: stored, the cache cleared of its keys, rejections counted.
    async fn merge(&self, import: &mut Import, valid: Vec<(i64, CustomerLink)>) -> Result<(), Status> {
        if valid.is_empty() {
            return Ok(());
        }
        let (rows, links): (Vec<i64>, Vec<CustomerLink>) = valid.into_iter().unzip();
        let outcome = self.store.import(&links).await.map_err(store_status)?;
        let refused: std::collections::HashSet<usize> = outcome.rejected.iter().map(|r| r.index).collect();
        let mut keys = keys_to_invalidate(&outcome.previous);
        // Stored rows may end cached misses under their new keys.
        for (_, link) in links.iter().enumerate().filter(|(i, _)| !refused.contains(i)) {
            keys.extend(link.cache_keys());
        }
        self.invalidate_keys(keys).await?;
        import.answer.inserted += outcome.inserted as i64;
        import.answer.updated += outcome.updated as i64;
        import.answer.unchanged += outcome.unchanged as i64;
        for rejection in outcome.rejected {
            import.reject(pb::ImportRejection {
                row: rows[rejection.index],
                customer_id: links[rejection.index].customer_id().as_str().to_string(),
                field: rejection.field.to_string(),
                reason: rejection.reason,
            });
        }
        Ok(())
    }

    /// Writes a first load's staged rows, then clears the cache: it may hold
    /// misses for any of the keys the table now has. When they cannot go in
    /// at once, merges them batch by batch instead.
    async fn finish_first_load(&self, load: Box<dyn FirstLoad>, import: &mut Import) -> Result<(), Status> {
        match load.finish().await.map_err(store_status)? {
            FirstLoaded::Inserted(0) => return Ok(()),
            FirstLoaded::Inserted(inserted) => import.answer.inserted += inserted as i64,
            FirstLoaded::Conflicted(mut staged) => {
                // Each merged batch clears its own keys, as batch by batch does.
                while let Some(batch) = staged.next_batch().await.map_err(store_status)? {
                    self.merge(import, batch).await?;
                }
                return Ok(());
            }
        }
        self.cache.invalidate_all().await.map_err(|error| {
            stored_but_not_invalidated(
                error,
                "the rows were stored, but the cache could not be cleared; import the file again \
                 (it is idempotent) once the cache is reachable",
            )
        })
    }
}
