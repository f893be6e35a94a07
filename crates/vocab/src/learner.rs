//! The learner as the LMS knows them: user id and username, and the
//! placeholder that replaces a retired learner's username everywhere.

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::forms::string_forms;
use crate::invalid::{Invalid, ViolationReason, clip};

/// Prefix of a retired learner's placeholder username, as the LMS writes it.
pub const RETIRED_PREFIX: &str = "retired__user_";
/// Hex digits of the placeholder made here (160 bits, as long as the LMS's own SHA-1 placeholders).
const RETIRED_HEX_DIGITS: usize = 40;
/// Most hex digits a placeholder may carry (a full SHA-256, for placeholders written elsewhere).
const MAX_RETIRED_HEX_DIGITS: usize = 64;

/// An LMS user id: a positive 64-bit integer, a decimal string on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LmsUserId(i64);

impl LmsUserId {
    /// Accepts decimal digits only, without sign or leading zeros, from 1 to 2^63 - 1.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        if raw.is_empty() {
            return Err(Invalid::empty());
        }
        if !raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Invalid::because(
                ViolationReason::InvalidFormat,
                format!("must be a decimal integer, got {:?}", clip(raw)),
            ));
        }
        if raw.len() > 1 && raw.starts_with('0') {
            return Err(Invalid::because(ViolationReason::InvalidFormat, "must not have leading zeros"));
        }
        match raw.parse::<i64>() {
            Ok(id) => Self::new(id),
            Err(_) => Err(Invalid::because(ViolationReason::OutOfRange, "is too large")),
        }
    }

    /// From a number (a stored id, a legacy integer field): at least 1.
    pub fn new(id: i64) -> Result<Self, Invalid> {
        if id >= 1 {
            Ok(Self(id))
        } else {
            Err(Invalid::because(ViolationReason::OutOfRange, format!("must be at least 1, got {id}")))
        }
    }

    /// The number.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl std::fmt::Display for LmsUserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl TryFrom<String> for LmsUserId {
    type Error = Invalid;
    fn try_from(raw: String) -> Result<Self, Invalid> {
        Self::parse(&raw)
    }
}

impl From<LmsUserId> for String {
    fn from(id: LmsUserId) -> String {
        id.0.to_string()
    }
}

/// The secret that keys retired learners' placeholders. The same key always
/// gives a learner the same placeholder; without it, a placeholder cannot be
/// traced back to a username by trying candidates.
#[derive(Clone)]
pub struct RetirementKey(Vec<u8>);

impl RetirementKey {
    /// A key from secret bytes (a salt from configuration).
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        Self(secret.as_ref().to_vec())
    }
}

impl std::fmt::Debug for RetirementKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RetirementKey(<secret>)")
    }
}

/// An LMS username: what the LMS accepts for an account (2 to 30 letters,
/// digits, `_` or `-`), or a retired learner's placeholder
/// ([`RETIRED_PREFIX`] and 1 to 64 hex digits). Compared case-insensitively,
/// as the LMS compares them ([`LmsUsername::folded`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LmsUsername(String);

impl LmsUsername {
    /// Accepts an account's username or a retired learner's placeholder.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        if raw.is_empty() {
            return Err(Invalid::empty());
        }
        if is_placeholder(raw) {
            return Ok(Self(raw.to_owned()));
        }
        let length = raw.chars().count();
        if !(2..=30).contains(&length) {
            let rule = if length < 2 { ViolationReason::TooShort } else { ViolationReason::TooLong };
            return Err(Invalid::because(rule, format!("must be 2 to 30 characters, got {length}")));
        }
        if let Some(bad) = raw.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
            return Err(Invalid::because(
                ViolationReason::InvalidFormat,
                format!("may contain only letters, digits, _ and -, found {bad:?}"),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The placeholder that replaces this username when its learner is
    /// retired: [`RETIRED_PREFIX`] and 40 hex digits of HMAC-SHA256 of the
    /// lower-cased username under `key`. Stable per learner and key; a
    /// placeholder retired again stays as it is.
    pub fn retired(&self, key: &RetirementKey) -> Self {
        Self::retired_placeholder(&self.0, key)
    }

    /// [`LmsUsername::retired`] of a username as stored (read back from a
    /// database, where it was valid when written).
    pub fn retired_placeholder(original: &str, key: &RetirementKey) -> Self {
        if is_placeholder(original) {
            return Self(original.to_owned());
        }
        // HMAC accepts keys of any length: new_from_slice cannot fail for it.
        let digest = match Hmac::<Sha256>::new_from_slice(&key.0) {
            Ok(mac) => mac.chain_update(original.to_ascii_lowercase().as_bytes()).finalize().into_bytes(),
            Err(_) => unreachable_key_length(),
        };
        let hex = hex::encode(digest);
        Self(format!("{RETIRED_PREFIX}{}", &hex[..RETIRED_HEX_DIGITS]))
    }

    /// Whether this is a retired learner's placeholder.
    pub fn is_retired(&self) -> bool {
        is_placeholder(&self.0)
    }

    /// The username as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form compared for uniqueness and lookups (ASCII lower case).
    pub fn folded(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

fn is_placeholder(raw: &str) -> bool {
    raw.strip_prefix(RETIRED_PREFIX).is_some_and(|hash| {
        (1..=MAX_RETIRED_HEX_DIGITS).contains(&hash.len()) && hash.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

#[cold]
fn unreachable_key_length() -> ! {
    // Hmac<Sha256> takes keys of every length (longer ones are hashed first).
    panic!("HMAC-SHA256 refused a key length")
}

string_forms!(LmsUsername, deref);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_positive_decimals() {
        assert_eq!(LmsUserId::parse("42").unwrap().get(), 42);
        assert_eq!(LmsUserId::parse(&i64::MAX.to_string()).unwrap().get(), i64::MAX);
        for bad in ["", "0", "-1", "+1", "042", "4 2", "9223372036854775808", "1e3"] {
            assert!(LmsUserId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(LmsUserId::new(0).is_err());
    }

    #[test]
    fn usernames_are_the_lms_rules_or_a_placeholder() {
        assert!(LmsUsername::parse("ada_lovelace-1").is_ok());
        for bad in ["", "a", "ada lovelace", "adá", &"a".repeat(31)] {
            assert!(LmsUsername::parse(bad).is_err(), "{bad:?}");
        }
        let sha1_placeholder = format!("{RETIRED_PREFIX}{}", "ab".repeat(20));
        assert!(LmsUsername::parse(&sha1_placeholder).unwrap().is_retired(), "longer than 30, still accepted");
        assert!(LmsUsername::parse(&format!("{RETIRED_PREFIX}{}", "a".repeat(65))).is_err());
    }

    #[test]
    fn retired_placeholders_are_keyed_stable_and_valid() {
        let key = RetirementKey::new("salt");
        let ada = LmsUsername::parse("Ada").unwrap();
        let retired = ada.retired(&key);
        assert_eq!(retired, LmsUsername::parse("ada").unwrap().retired(&key), "case does not matter");
        assert_ne!(retired, ada.retired(&RetirementKey::new("pepper")), "the key matters");
        assert!(retired.is_retired());
        assert_eq!(retired.as_str().len(), RETIRED_PREFIX.len() + 40);
        assert_eq!(LmsUsername::parse(retired.as_str()), Ok(retired.clone()), "a placeholder parses back");
        assert_eq!(retired.retired(&key), retired, "retiring twice changes nothing");
        assert!(!format!("{key:?}").contains("salt"));
    }
}
