//! Free text that crosses a seam: a product's title as sold, a refund's reason.

use serde::{Deserialize, Serialize};

use crate::forms::string_forms;
use crate::invalid::{Invalid, ViolationReason};

/// Longest title accepted, in characters.
pub const MAX_TITLE_LEN: usize = 500;

/// A product's title as sold: at most [`MAX_TITLE_LEN`] characters, no
/// control characters (they break logs, CSV exports and terminals
/// downstream); may be empty when the seller gave none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Title(String);

/// The rule of every free text here: at most `max` characters, no control characters.
fn check_text(raw: &str, max: usize) -> Result<(), Invalid> {
    if raw.chars().count() > max {
        return Err(Invalid::because(ViolationReason::TooLong, format!("must be at most {max} characters")));
    }
    if let Some(bad) = raw.chars().find(|c| c.is_control()) {
        return Err(Invalid::because(
            ViolationReason::InvalidFormat,
            format!("must not contain control characters, found {bad:?}"),
        ));
    }
    Ok(())
}

impl Title {
    /// Accepts up to [`MAX_TITLE_LEN`] characters without control characters.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        check_text(raw, MAX_TITLE_LEN)?;
        Ok(Self(raw.to_owned()))
    }

    /// The title; empty when none was given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when no title was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

string_forms!(Title, deref);

/// Longest refund reason accepted, in characters.
pub const MAX_REASON_LEN: usize = 500;

/// Why a line was refunded, as the refunding system said: at most
/// [`MAX_REASON_LEN`] characters, no control characters; may be empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RefundReason(String);

impl RefundReason {
    /// Accepts up to [`MAX_REASON_LEN`] characters without control characters.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        check_text(raw, MAX_REASON_LEN)?;
        Ok(Self(raw.to_owned()))
    }

    /// The reason; empty when none was given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

string_forms!(RefundReason);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_refuse_control_characters_and_length() {
        assert!(Title::parse("").unwrap().is_empty());
        assert!(Title::parse("Intro to Python — 2026 ☃").is_ok());
        assert!(Title::parse("bell\u{7}").is_err());
        assert!(Title::parse("line\nbreak").is_err());
        assert!(Title::parse(&"é".repeat(MAX_TITLE_LEN)).is_ok());
        assert!(Title::parse(&"é".repeat(MAX_TITLE_LEN + 1)).is_err());
    }

    #[test]
    fn refund_reasons_follow_the_same_rule() {
        assert_eq!(RefundReason::parse("").unwrap().as_str(), "");
        assert!(RefundReason::parse("requested_by_customer").is_ok());
        assert!(RefundReason::parse("tab\there").is_err());
        assert!(RefundReason::parse(&"x".repeat(MAX_REASON_LEN + 1)).is_err());
        assert!(serde_json::from_str::<RefundReason>("\"bell\\u0007\"").is_err(), "serde goes through parse");
    }
}
