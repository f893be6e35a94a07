//! Why a value was refused.

use std::borrow::Cow;

/// Which rule a refused value broke: the stable `reason` of a
/// `google.rpc.BadRequest.FieldViolation`, for callers that branch on it
/// (the description beside it is for people and may change).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ViolationReason {
    /// Absent or empty, and needed.
    Required,
    /// Longer than allowed (characters, or items in a list).
    TooLong,
    /// Shorter than allowed.
    TooShort,
    /// Not in the expected form (syntax, characters, type).
    InvalidFormat,
    /// A number, amount or time outside what is allowed.
    OutOfRange,
    /// Not one of the values this field knows (a mode, an event name, a token of ours).
    UnknownValue,
    /// Repeats something already given in the same request.
    Duplicate,
    /// Contradicts another field of the same request (set together, or not at all).
    Conflict,
    /// Breaks a rule of its own, named in the description.
    InvalidValue,
}

impl ViolationReason {
    /// Every reason, in the order of the list above.
    pub const ALL: [ViolationReason; 9] = [
        Self::Required,
        Self::TooLong,
        Self::TooShort,
        Self::InvalidFormat,
        Self::OutOfRange,
        Self::UnknownValue,
        Self::Duplicate,
        Self::Conflict,
        Self::InvalidValue,
    ];

    /// The wire form, UPPER_SNAKE_CASE (`REQUIRED`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Required => "REQUIRED",
            Self::TooLong => "TOO_LONG",
            Self::TooShort => "TOO_SHORT",
            Self::InvalidFormat => "INVALID_FORMAT",
            Self::OutOfRange => "OUT_OF_RANGE",
            Self::UnknownValue => "UNKNOWN_VALUE",
            Self::Duplicate => "DUPLICATE",
            Self::Conflict => "CONFLICT",
            Self::InvalidValue => "INVALID_VALUE",
        }
    }
}

impl std::fmt::Display for ViolationReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a raw value is not a valid one: a sentence for the caller, and the
/// rule it broke. It names no field: the caller knows the field's path
/// (`line_items[2].price.amount`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text}")]
pub struct Invalid {
    rule: ViolationReason,
    text: Cow<'static, str>,
}

impl Invalid {
    /// A reason, for a rule of a service's own (its callers read it beside
    /// the field's path); its [`ViolationReason`] is `INVALID_VALUE`.
    pub fn new(reason: impl Into<Cow<'static, str>>) -> Self {
        Self::because(ViolationReason::InvalidValue, reason)
    }

    /// A reason that broke `rule`.
    pub fn because(rule: ViolationReason, reason: impl Into<Cow<'static, str>>) -> Self {
        Self { rule, text: reason.into() }
    }

    /// `must not be empty` (`REQUIRED`).
    pub fn empty() -> Self {
        Self::because(ViolationReason::Required, "must not be empty")
    }

    /// The reason, as a sentence fragment (`must not be empty`).
    pub fn reason(&self) -> &str {
        &self.text
    }

    /// The rule it broke.
    pub fn rule(&self) -> ViolationReason {
        self.rule
    }
}

/// The start of a caller's string, for messages that must stay short.
pub(crate) fn clip(raw: &str) -> String {
    const SHOWN: usize = 40;
    let mut shown: String = raw.chars().take(SHOWN).collect();
    if raw.chars().nth(SHOWN).is_some() {
        shown.push('…');
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::ViolationReason as R;
    use crate::{CourseRunKey, CustomerId, LmsUserId, LmsUsername, Price, Title};

    #[test]
    fn each_refusal_names_the_rule_it_broke() {
        let rule = |refused: Result<(), super::Invalid>| refused.map_err(|e| e.rule()).err();
        assert_eq!(rule(CustomerId::parse("").map(drop)), Some(R::Required));
        assert_eq!(rule(CustomerId::parse(&"x".repeat(101)).map(drop)), Some(R::TooLong));
        assert_eq!(rule(CustomerId::parse("a b").map(drop)), Some(R::InvalidFormat));
        assert_eq!(rule(LmsUserId::parse("x1").map(drop)), Some(R::InvalidFormat));
        assert_eq!(rule(LmsUserId::parse("99999999999999999999").map(drop)), Some(R::OutOfRange));
        assert_eq!(rule(LmsUsername::parse("a").map(drop)), Some(R::TooShort));
        assert_eq!(rule(LmsUsername::parse(&"a".repeat(31)).map(drop)), Some(R::TooLong));
        assert_eq!(rule(CourseRunKey::parse("").map(drop)), Some(R::Required));
        assert_eq!(rule(CourseRunKey::parse("course-v1:x").map(drop)), Some(R::InvalidFormat));
        assert_eq!(rule(Title::parse("a\u{7}").map(drop)), Some(R::InvalidFormat));
        assert_eq!(rule(Price::parse("USD", "-1").map(drop).map_err(|e| e.invalid)), Some(R::OutOfRange));
        assert_eq!(rule(Price::parse("usd", "1").map(drop).map_err(|e| e.invalid)), Some(R::InvalidFormat));
        assert_eq!(super::Invalid::new("a rule of its own").rule(), R::InvalidValue);
    }

    #[test]
    fn reasons_are_upper_snake_case_and_distinct() {
        let names: Vec<&str> = R::ALL.iter().map(|r| r.as_str()).collect();
        let mut distinct = names.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), names.len());
        assert!(names.iter().all(|n| n.chars().all(|c| c.is_ascii_uppercase() || c == '_')), "{names:?}");
    }
}
