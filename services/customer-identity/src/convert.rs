//! The edge of `CustomerIdentityService`: each request message becomes its
//! domain value here, once, every bad field named in one `BadRequest`; and a
//! stored customer becomes the answer message. `api.rs` only orchestrates.

#![allow(clippy::result_large_err)] // tonic's Status is what a handler answers

use kit::error::{BadRequest, ViolationReason};
use proto::commerce::identity::v1 as pb;
use tonic::Status;

use crate::domain::{Customer, CustomerId, CustomerKey, CustomerLink, Email, LmsUserId, LmsUsername, MAX_BATCH_KEYS};

/// An `UpsertCustomer` request, parsed: the link and the optimistic-concurrency check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomerUpsert {
    link: CustomerLink,
    expected_version: Option<i64>,
}

impl CustomerUpsert {
    /// The link to store.
    pub fn link(&self) -> &CustomerLink {
        &self.link
    }

    /// The version the caller expects stored (0: not yet created); None: no check.
    pub fn expected_version(&self) -> Option<i64> {
        self.expected_version
    }
}

impl TryFrom<&pb::UpsertCustomerRequest> for CustomerUpsert {
    type Error = Status;

    fn try_from(request: &pb::UpsertCustomerRequest) -> Result<Self, Status> {
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
        match link {
            Some(link) if bad.is_empty() => Ok(Self { link, expected_version: request.expected_version }),
            _ => Err(bad.into_status()),
        }
    }
}

/// The customer a `GetCustomer` names.
pub fn customer_to_get(request: &pb::GetCustomerRequest) -> Result<CustomerId, Status> {
    let mut bad = BadRequest::new();
    let id = bad.check("customer_id", CustomerId::parse(&request.customer_id));
    accepted(id, bad)
}

/// The key a `LookupCustomer` looks up by (an LMS user id or username).
pub fn key_to_look_up(request: &pb::LookupCustomerRequest) -> Result<CustomerKey, Status> {
    use pb::lookup_customer_request::Key;
    let mut bad = BadRequest::new();
    let key = match &request.key {
        Some(Key::LmsUserId(id)) => bad.check("lms_user_id", LmsUserId::parse(id)).map(CustomerKey::LmsUserId),
        Some(Key::LmsUsername(name)) => {
            bad.check("lms_username", LmsUsername::parse(name)).map(CustomerKey::LmsUsername)
        }
        None => {
            bad.field("key", "set lms_user_id or lms_username");
            None
        }
    };
    accepted(key, bad)
}

/// The keys a `BatchLookupCustomers` looks up, in order: 1 to [`MAX_BATCH_KEYS`],
/// each named `keys[i].…` when bad.
pub fn keys_to_look_up(request: &pb::BatchLookupCustomersRequest) -> Result<Vec<CustomerKey>, Status> {
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
    match keys.into_iter().collect::<Option<Vec<CustomerKey>>>() {
        Some(keys) if bad.is_empty() => Ok(keys),
        _ => Err(bad.into_status()),
    }
}

/// The customer a `RetireCustomer` names, by any of its keys.
pub fn customer_to_retire(request: pb::RetireCustomerRequest) -> Result<CustomerKey, Status> {
    use pb::retire_customer_request::Key;
    let key = request.key.map(|key| match key {
        Key::CustomerId(id) => pb::customer_key::Key::CustomerId(id),
        Key::LmsUserId(id) => pb::customer_key::Key::LmsUserId(id),
        Key::LmsUsername(name) => pb::customer_key::Key::LmsUsername(name),
    });
    let mut bad = BadRequest::new();
    let key = parse_key(&mut bad, "", key.as_ref());
    accepted(key, bad)
}

/// One `ImportCustomers` record as a link, or its first bad field and why.
pub fn imported_link(record: &pb::CustomerRecord) -> Result<CustomerLink, (String, String)> {
    let mut bad = BadRequest::new();
    match parse_link(&mut bad, &record.customer_id, &record.lms_user_id, &record.lms_username, &record.email) {
        Some(link) => Ok(link),
        None => Err(kit::error::field_violations(&bad.into_status()).into_iter().next().unwrap_or_default()),
    }
}

/// The API's view of a stored customer.
pub fn customer_to_proto(customer: &Customer) -> pb::Customer {
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

/// `value` when nothing was refused, else every violation as INVALID_ARGUMENT.
fn accepted<T>(value: Option<T>, bad: BadRequest) -> Result<T, Status> {
    match value {
        Some(value) if bad.is_empty() => Ok(value),
        _ => Err(bad.into_status()),
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
    Some(CustomerLink::new(customer_id?, lms_user_id?, lms_username?, email?))
}

/// A customer key, its fields named under `prefix` (`keys[2].`, or none).
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
