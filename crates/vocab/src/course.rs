//! What is sold: course run keys, course UUIDs, and the product key purchase
//! history shows for either.

use serde::{Deserialize, Serialize};

use crate::forms::string_forms;
use crate::id::check_id;
use crate::invalid::{Invalid, ViolationReason, clip};

/// Longest course run key or product key accepted, in characters.
pub const MAX_KEY_LEN: usize = 255;

/// A course run key in Open edX's `course-v1:ORG+NUMBER+RUN` form.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CourseRunKey(String);

impl CourseRunKey {
    /// Accepts `course-v1:` and three non-empty parts joined by `+`, each of
    /// letters, digits, `_`, `-`, `.` or `~` (what Open edX's opaque keys
    /// allow), at most [`MAX_KEY_LEN`] characters in all.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let rule = if raw.is_empty() { ViolationReason::Required } else { ViolationReason::InvalidFormat };
        let bad =
            || Invalid::because(rule, format!("must have the form course-v1:ORG+NUMBER+RUN, got {:?}", clip(raw)));
        let rest = raw.strip_prefix("course-v1:").ok_or_else(bad)?;
        let mut parts = 0;
        for part in rest.split('+') {
            parts += 1;
            if !key_part_ok(part) {
                return Err(bad());
            }
        }
        if parts != 3 {
            return Err(bad());
        }
        // Every character is ASCII by now: bytes are characters.
        if raw.len() > MAX_KEY_LEN {
            return Err(Invalid::because(
                ViolationReason::TooLong,
                format!("must be at most {MAX_KEY_LEN} characters"),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The course this run is of, `ORG+NUMBER`.
    pub fn course_key(&self) -> CourseKey {
        let rest = &self.0["course-v1:".len()..];
        // Parsing guaranteed two `+`: the course key ends at the second.
        CourseKey(rest.rfind('+').map_or(rest, |run| &rest[..run]).to_owned())
    }
}

/// A course's key in Open edX's `ORG+NUMBER` form: what a course run key
/// begins with, and the catalog's product key of a course.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CourseKey(String);

impl CourseKey {
    /// Accepts two non-empty parts joined by `+`, each of letters, digits, `_`,
    /// `-`, `.` or `~`, at most [`MAX_KEY_LEN`] characters in all.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let ok = raw.len() <= MAX_KEY_LEN
            && raw.split_once('+').is_some_and(|(org, number)| key_part_ok(org) && key_part_ok(number));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            let rule = if raw.is_empty() { ViolationReason::Required } else { ViolationReason::InvalidFormat };
            Err(Invalid::because(rule, format!("must have the form ORG+NUMBER, got {:?}", clip(raw))))
        }
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

string_forms!(CourseKey);

/// A part of a key: letters, digits, `_`, `-`, `.` or `~`.
pub(crate) fn key_part_ok(part: &str) -> bool {
    !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'~'))
}

string_forms!(CourseRunKey, deref);

/// A course's UUID (what a program entitlement names), lower-case and hyphenated.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CourseUuid(String);

impl CourseUuid {
    /// Accepts any form the `uuid` crate reads; keeps the hyphenated lower-case form.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let rule = if raw.is_empty() { ViolationReason::Required } else { ViolationReason::InvalidFormat };
        let uuid = uuid::Uuid::parse_str(raw)
            .map_err(|_| Invalid::because(rule, format!("must be a UUID, got {:?}", clip(raw))))?;
        Ok(Self(uuid.hyphenated().to_string()))
    }

    /// The UUID, hyphenated, lower case.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

string_forms!(CourseUuid, deref);

/// What a purchase was of, as purchase history shows it: a course run key, a
/// course UUID, or another line of business's product key. 1 to
/// [`MAX_KEY_LEN`] characters, no whitespace or control characters; every
/// [`CourseRunKey`] and [`CourseUuid`] is one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProductKey(String);

impl ProductKey {
    /// Accepts 1 to [`MAX_KEY_LEN`] characters, none of them whitespace or control characters.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        check_id(raw, MAX_KEY_LEN)?;
        Ok(Self(raw.to_owned()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&CourseRunKey> for ProductKey {
    fn from(key: &CourseRunKey) -> Self {
        Self(key.0.clone())
    }
}

impl From<&CourseUuid> for ProductKey {
    fn from(uuid: &CourseUuid) -> Self {
        Self(uuid.0.clone())
    }
}

string_forms!(ProductKey, deref);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn course_run_keys_have_three_parts() {
        let key = CourseRunKey::parse("course-v1:MITx+6.00x+2026_T1").unwrap();
        assert_eq!(key.course_key().as_str(), "MITx+6.00x");
        assert_eq!(CourseKey::parse("MITx+6.00x"), Ok(key.course_key()));
        assert!(CourseKey::parse("MITx").is_err() && CourseKey::parse("MITx+").is_err());
        for bad in [
            "",
            "course-v1:",
            "course-v1:A+B",
            "course-v1:A+B+C+D",
            "course-v1:A++C",
            "course-v1:A+B C+D",
            "MITx/6.00x/2026",
        ] {
            assert!(CourseRunKey::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!("course-v1:{}+N+R", "O".repeat(MAX_KEY_LEN));
        assert!(CourseRunKey::parse(&long).is_err());
    }

    #[test]
    fn course_uuids_are_normalised() {
        let uuid = CourseUuid::parse("6F1C3A6E-2B8D-4B1A-9C1E-0A4F6C3B2D1E").unwrap();
        assert_eq!(uuid.as_str(), "6f1c3a6e-2b8d-4b1a-9c1e-0a4f6c3b2d1e");
        assert!(CourseUuid::parse("not-a-uuid").is_err());
    }

    proptest! {
        /// Whatever Fulfillment sells, purchase history can list.
        #[test]
        fn every_course_run_key_and_uuid_is_a_product_key(raw in "course-v1:[A-Za-z0-9_.~-]{1,90}\\+[A-Za-z0-9_.~-]{1,90}\\+[A-Za-z0-9_.~+-]{1,90}", bytes in any::<[u8; 16]>()) {
            if let Ok(key) = CourseRunKey::parse(&raw) {
                prop_assert_eq!(ProductKey::parse(key.as_str()), Ok(ProductKey::from(&key)));
            }
            let uuid = CourseUuid::parse(&uuid::Uuid::from_bytes(bytes).to_string()).unwrap();
            prop_assert_eq!(ProductKey::parse(uuid.as_str()), Ok(ProductKey::from(&uuid)));
        }
    }
}
