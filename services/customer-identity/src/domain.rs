//! CustomerIdentity's rules, pure and unit-tested: what a valid link is, how a
//! retired learner's username is replaced, and the cache keys of a customer.
//!
//! Parse, don't validate: each value below is built only by its `parse`, so an
//! invalid one cannot exist past `api.rs`.

use std::fmt;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

/// Longest customer id accepted.
pub const MAX_CUSTOMER_ID_LEN: usize = 100;
/// Longest email accepted (RFC 5321's path limit).
pub const MAX_EMAIL_LEN: usize = 254;
/// Most keys in one batch lookup.
pub const MAX_BATCH_KEYS: usize = 1000;
/// Prefix of a retired learner's placeholder username, as the LMS writes it.
pub const RETIRED_PREFIX: &str = "retired__user_";

/// The commerce platform's customer id: 1 to 100 printable characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CustomerId(String);

impl CustomerId {
    /// Accepts 1 to 100 characters, none of them whitespace or control characters.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("must not be empty".into());
        }
        if raw.chars().count() > MAX_CUSTOMER_ID_LEN {
            return Err(format!("must be at most {MAX_CUSTOMER_ID_LEN} characters"));
        }
        if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("must not contain whitespace or control characters".into());
        }
        Ok(Self(raw.to_string()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The LMS user id: a positive decimal integer, a string in the API, stored as
/// a 64-bit integer so lookups by it use an index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LmsUserId(i64);

impl LmsUserId {
    /// Accepts decimal digits only, without sign or leading zeros, from 1 to 2^63 - 1.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("must not be empty".into());
        }
        if !raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("must be a decimal integer, got {raw:?}"));
        }
        if raw.len() > 1 && raw.starts_with('0') {
            return Err("must not have leading zeros".into());
        }
        match raw.parse::<i64>() {
            Ok(0) => Err("must be at least 1".into()),
            Ok(id) => Ok(Self(id)),
            Err(_) => Err("is too large".into()),
        }
    }

    /// From a stored value.
    pub fn from_stored(id: i64) -> Self {
        Self(id)
    }

    /// The number.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for LmsUserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An LMS username: 2 to 30 letters, digits, `_` or `-`; compared
/// case-insensitively, as the LMS compares them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LmsUsername(String);

impl LmsUsername {
    /// Accepts what the LMS accepts for a new username.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let length = raw.chars().count();
        if !(2..=30).contains(&length) {
            return Err(format!("must be 2 to 30 characters, got {length}"));
        }
        if let Some(bad) = raw.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
            return Err(format!("may contain only letters, digits, _ and -, found {bad:?}"));
        }
        Ok(Self(raw.to_string()))
    }

    /// The placeholder that replaces `original` when its learner is retired:
    /// `retired__user_` and 16 hex digits of SHA-256 over the salt and the
    /// lower-cased username. The same learner always gets the same placeholder.
    pub fn retired(salt: &str, original: &str) -> Self {
        let digest = Sha256::new().chain_update(salt.as_bytes()).chain_update(original.to_lowercase()).finalize();
        Self(format!("{RETIRED_PREFIX}{}", &hex::encode(digest)[..16]))
    }

    /// The username as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form compared for uniqueness and lookups.
    pub fn folded(&self) -> String {
        self.0.to_lowercase()
    }
}

/// An email address, or none. Light checks only: the LMS owns validation.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Email(String);

impl Email {
    /// Accepts empty, or `local@domain` without whitespace, at most 254 characters.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Ok(Self::default());
        }
        if raw.chars().count() > MAX_EMAIL_LEN {
            return Err(format!("must be at most {MAX_EMAIL_LEN} characters"));
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
            _ => Err("must be an email address such as ada@example.org".into()),
        }
    }

    /// The address; empty for none.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a caller asks to store: a valid link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomerLink {
    /// The commerce customer.
    pub customer_id: CustomerId,
    /// The LMS user.
    pub lms_user_id: LmsUserId,
    /// The LMS username.
    pub lms_username: LmsUsername,
    /// The email address, possibly empty.
    pub email: Email,
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

fn username_cache_key(lms_username: &str) -> String {
    format!("n:{}", lms_username.to_lowercase())
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
    fn usernames_follow_the_lms_rules() {
        for good in ["ab", "Ada_Lovelace-1815", "x".repeat(30).as_str()] {
            assert!(LmsUsername::parse(good).is_ok(), "{good:?}");
        }
        for bad in ["a", "", "x".repeat(31).as_str(), "ada lovelace", "ada@home", "adá", "ada.l"] {
            assert!(LmsUsername::parse(bad).is_err(), "{bad:?} is refused");
        }
        assert_eq!(LmsUsername::parse("Ada").unwrap().folded(), "ada");
    }

    #[test]
    fn customer_ids_are_bounded_and_printable() {
        assert!(CustomerId::parse("cust-1").is_ok());
        assert!(CustomerId::parse(&"c".repeat(100)).is_ok());
        assert!(CustomerId::parse(&"c".repeat(101)).is_err());
        assert!(CustomerId::parse("").is_err());
        assert!(CustomerId::parse("a b").is_err());
        assert!(CustomerId::parse("a\u{0}b").is_err());
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
    fn retired_usernames_are_stable_salted_and_valid() {
        let one = LmsUsername::retired("salt", "Ada");
        assert_eq!(one, LmsUsername::retired("salt", "ada"), "case does not matter");
        assert_ne!(one, LmsUsername::retired("pepper", "ada"), "the salt matters");
        assert!(one.as_str().starts_with(RETIRED_PREFIX));
        assert_eq!(one.as_str().len(), 30);
        assert!(LmsUsername::parse(one.as_str()).is_ok(), "a placeholder is itself a valid username");
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
        assert_eq!(keys_to_invalidate([&before, &after]), ["c:c1", "n:ada", "n:countess", "u:7"]);
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
