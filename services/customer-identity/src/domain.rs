//! CustomerIdentity's rules, pure and unit-tested: what a valid link is, how a
//! retired learner's username is replaced, and the cache keys of a customer.
//!
//! Parse, don't validate: each value below is built only by its `parse`, so an
//! invalid one cannot exist past `api.rs`.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

/// Longest email accepted (RFC 5321's path limit).
pub const MAX_EMAIL_LEN: usize = 254;
/// Most keys in one batch lookup.
pub const MAX_BATCH_KEYS: usize = 1000;
pub use vocab::{CustomerId, LmsUserId, LmsUsername, RETIRED_PREFIX, RetirementKey};

/// An email address, or none. Light checks only: the LMS owns validation.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Email(String);

impl Email {
    /// Accepts empty, or `local@domain` without whitespace, at most 254 characters.
    pub fn parse(raw: &str) -> Result<Self, vocab::Invalid> {
        if raw.is_empty() {
            return Ok(Self::default());
        }
        if raw.chars().count() > MAX_EMAIL_LEN {
            return Err(vocab::Invalid::because(
                vocab::ViolationReason::TooLong,
                format!("must be at most {MAX_EMAIL_LEN} characters"),
            ));
        }
        match raw.split_once('@') {
            Some((local, domain))
                if !local.is_empty()
                    && !domain.is_empty()
                    && !domain.contains('@')
                    && !raw.contains(char::is_whitespace) =>
            {
                Ok(Self(raw.to_string()))
            }
            _ => Err(vocab::Invalid::because(
                vocab::ViolationReason::InvalidFormat,
                "must be an email address such as ada@example.org",
            )),
        }
    }

    /// The address; empty for none.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a caller asks to store: a valid link, built only from parsed values
/// ([`CustomerLink::new`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomerLink {
    customer_id: CustomerId,
    lms_user_id: LmsUserId,
    lms_username: LmsUsername,
    email: Email,
}

impl CustomerLink {
    /// The link of `customer_id` to the LMS user `lms_user_id` named `lms_username`, with `email` (possibly empty).
    pub fn new(customer_id: CustomerId, lms_user_id: LmsUserId, lms_username: LmsUsername, email: Email) -> Self {
        Self { customer_id, lms_user_id, lms_username, email }
    }

    /// The commerce customer.
    pub fn customer_id(&self) -> &CustomerId {
        &self.customer_id
    }

    /// The LMS user.
    pub fn lms_user_id(&self) -> LmsUserId {
        self.lms_user_id
    }

    /// The LMS username.
    pub fn lms_username(&self) -> &LmsUsername {
        &self.lms_username
    }

    /// The email address, possibly empty.
    pub fn email(&self) -> &Email {
        &self.email
    }
}

/// One way to find a customer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CustomerKey {
    /// By the commerce platform's id.
    CustomerId(CustomerId),
    /// By LMS user id.
    LmsUserId(LmsUserId),
    /// By LMS username, case-insensitively.
    LmsUsername(LmsUsername),
}

impl CustomerKey {
    /// The cache key for this lookup.
    pub fn cache_key(&self) -> String {
        match self {
            Self::CustomerId(id) => id_cache_key(id.as_str()),
            Self::LmsUserId(id) => lms_user_id_cache_key(id.get()),
            Self::LmsUsername(name) => username_cache_key(name.as_str()),
        }
    }
}

fn id_cache_key(customer_id: &str) -> String {
    format!("c:{customer_id}")
}

fn lms_user_id_cache_key(lms_user_id: i64) -> String {
    format!("u:{lms_user_id}")
}

/// By a hash of the folded username, not the username: a cache (Redis) must
/// not keep a retired learner's name in a key, and a lookup by the old name
/// after a retirement caches its miss under this key.
fn username_cache_key(lms_username: &str) -> String {
    let digest = Sha256::digest(lms_username.to_ascii_lowercase().as_bytes());
    format!("n:{}", hex::encode(&digest[..16]))
}

/// The cache keys under which a customer with these values is found, one per
/// [`CustomerKey`] kind.
fn cache_keys_of(customer_id: &str, lms_user_id: i64, lms_username: &str) -> [String; 3] {
    [id_cache_key(customer_id), lms_user_id_cache_key(lms_user_id), username_cache_key(lms_username)]
}

impl CustomerLink {
    /// Every cache key under which the stored link will be found.
    pub fn cache_keys(&self) -> [String; 3] {
        cache_keys_of(self.customer_id.as_str(), self.lms_user_id.get(), self.lms_username.as_str())
    }
}

/// A stored customer link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Customer {
    /// The commerce platform's id.
    pub customer_id: String,
    /// The LMS user id.
    pub lms_user_id: i64,
    /// The LMS username (a placeholder once retired).
    pub lms_username: String,
    /// The email; empty once retired.
    pub email: String,
    /// Increases by one on every change.
    pub version: i64,
    /// True once retired.
    pub retired: bool,
    /// When created.
    pub create_time: DateTime<Utc>,
    /// When last changed.
    pub update_time: DateTime<Utc>,
}

impl Customer {
    /// Every cache key under which this customer can be found.
    pub fn cache_keys(&self) -> [String; 3] {
        cache_keys_of(&self.customer_id, self.lms_user_id, &self.lms_username)
    }

    /// True when storing `link` would change nothing.
    pub fn matches(&self, link: &CustomerLink) -> bool {
        self.lms_user_id == link.lms_user_id.get()
            && self.lms_username == link.lms_username.as_str()
            && self.email == link.email.as_str()
    }
}

/// Keys a write must invalidate: those of the customer before and after.
pub fn keys_to_invalidate<'a>(customers: impl IntoIterator<Item = &'a Customer>) -> Vec<String> {
    let mut keys: Vec<String> = customers.into_iter().flat_map(Customer::cache_keys).collect();
    keys.sort();
    keys.dedup();
    keys
}

/// What an upsert does to what is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpsertPlan {
    /// No such customer yet: create it.
    Insert,
    /// Change the stored customer (its version goes up by one).
    Update,
    /// The stored customer already says this: change nothing.
    Unchanged,
}

/// Why an upsert is refused, whatever the database says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpsertRefused {
    /// `expected_version` does not match the stored version.
    VersionMismatch {
        /// What the caller expected (0: not yet created).
        expected: i64,
        /// What is stored; None when the customer does not exist.
        stored: Option<i64>,
    },
    /// The customer was retired: its link is frozen.
    Retired,
}

/// Decides an upsert of `link` over `stored`, checking `expected_version`.
pub fn plan_upsert(
    stored: Option<&Customer>,
    link: &CustomerLink,
    expected_version: Option<i64>,
) -> Result<UpsertPlan, UpsertRefused> {
    let stored_version = stored.map(|c| c.version);
    if let Some(expected) = expected_version.filter(|_| !version_matches(expected_version, stored_version)) {
        return Err(UpsertRefused::VersionMismatch { expected, stored: stored_version });
    }
    match stored {
        None => Ok(UpsertPlan::Insert),
        Some(current) if current.retired => Err(UpsertRefused::Retired),
        Some(current) if current.matches(link) => Ok(UpsertPlan::Unchanged),
        Some(_) => Ok(UpsertPlan::Update),
    }
}

/// An optimistic-concurrency check: `expected` (if any) against the stored version.
pub fn version_matches(expected: Option<i64>, stored: Option<i64>) -> bool {
    match (expected, stored) {
        (None, _) => true,
        (Some(0), None) => true,
        (Some(expected), Some(stored)) => expected == stored,
        (Some(_), None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lms_user_ids_are_positive_decimal_integers() {
        assert_eq!(LmsUserId::parse("4242").map(LmsUserId::get), Ok(4242));
        assert_eq!(LmsUserId::parse("9223372036854775807").map(LmsUserId::get), Ok(i64::MAX));
        for bad in ["", "0", "-1", "+5", "12a", "1.5", " 7", "0042", "9223372036854775808", "٣"] {
            assert!(LmsUserId::parse(bad).is_err(), "{bad:?} is refused");
        }
    }

    #[test]
    fn emails_are_optional_but_shaped() {
        assert_eq!(Email::parse("").unwrap().as_str(), "");
        assert!(Email::parse("ada@example.org").is_ok());
        for bad in ["ada", "@example.org", "ada@", "a@b@c", "ada @example.org"] {
            assert!(Email::parse(bad).is_err(), "{bad:?} is refused");
        }
    }

    #[test]
    fn version_checks() {
        assert!(version_matches(None, Some(3)));
        assert!(version_matches(Some(0), None));
        assert!(!version_matches(Some(0), Some(1)));
        assert!(version_matches(Some(3), Some(3)));
        assert!(!version_matches(Some(2), Some(3)));
        assert!(!version_matches(Some(2), None));
    }

    fn stored(version: i64, retired: bool) -> Customer {
        let now = Utc::now();
        Customer {
            customer_id: "c1".into(),
            lms_user_id: 7,
            lms_username: "ada".into(),
            email: String::new(),
            version,
            retired,
            create_time: now,
            update_time: now,
        }
    }

    fn link(username: &str) -> CustomerLink {
        CustomerLink {
            customer_id: CustomerId::parse("c1").unwrap(),
            lms_user_id: LmsUserId::parse("7").unwrap(),
            lms_username: LmsUsername::parse(username).unwrap(),
            email: Email::default(),
        }
    }

    #[test]
    fn upsert_plans() {
        assert_eq!(plan_upsert(None, &link("ada"), None), Ok(UpsertPlan::Insert));
        assert_eq!(plan_upsert(None, &link("ada"), Some(0)), Ok(UpsertPlan::Insert));
        assert_eq!(plan_upsert(Some(&stored(3, false)), &link("ada"), None), Ok(UpsertPlan::Unchanged));
        assert_eq!(plan_upsert(Some(&stored(3, false)), &link("grace"), Some(3)), Ok(UpsertPlan::Update));
        assert_eq!(
            plan_upsert(Some(&stored(3, false)), &link("grace"), Some(2)),
            Err(UpsertRefused::VersionMismatch { expected: 2, stored: Some(3) })
        );
        assert_eq!(
            plan_upsert(None, &link("ada"), Some(5)),
            Err(UpsertRefused::VersionMismatch { expected: 5, stored: None })
        );
        assert_eq!(plan_upsert(Some(&stored(3, true)), &link("grace"), None), Err(UpsertRefused::Retired));
    }

    #[test]
    fn keys_cover_old_and_new_names_once() {
        let now = Utc::now();
        let before = Customer {
            customer_id: "c1".into(),
            lms_user_id: 7,
            lms_username: "Ada".into(),
            email: String::new(),
            version: 1,
            retired: false,
            create_time: now,
            update_time: now,
        };
        let after = Customer { lms_username: "Countess".into(), version: 2, ..before.clone() };
        let mut expected =
            vec!["c:c1".to_string(), username_cache_key("ADA"), username_cache_key("countess"), "u:7".to_string()];
        expected.sort();
        assert_eq!(keys_to_invalidate([&before, &after]), expected);
        assert!(expected.iter().all(|key| !key.contains("ada") && !key.contains("countess")), "no name in a key");
    }

    proptest! {
        #[test]
        fn parsers_never_panic(raw in ".{0,64}") {
            let _ = CustomerId::parse(&raw);
            let _ = LmsUserId::parse(&raw);
            let _ = LmsUsername::parse(&raw);
            let _ = Email::parse(&raw);
        }

        #[test]
        fn every_positive_id_round_trips(id in 1i64..) {
            prop_assert_eq!(LmsUserId::parse(&id.to_string()).map(LmsUserId::get), Ok(id));
        }
    }
}
