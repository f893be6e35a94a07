//! Coercions: pure functions of the raw text.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::{Number, Value};

use super::compile::DateFormat;
use super::path::describe;
use crate::domain::ProductType;

/// Why a raw value cannot become its canonical value. The text is the
/// TRANSFORM violation's reason, at the value's source path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum CoercionError {
    /// An object or a list where a scalar belongs.
    #[error("must be a string or a number, got {got}")]
    NotScalar { got: &'static str },
    /// A number serde_json prints with an exponent (`1e21`).
    #[error("{text} is in exponent form; send a plain decimal")]
    ExponentForm { text: String },
    /// Not digits with at most a zero fraction.
    #[error("{text:?} is not a whole number")]
    NotWholeNumber { text: String },
    /// A whole number too large for its field.
    #[error("{text} is out of range")]
    OutOfRange { text: String },
    /// An amount over 40 characters.
    #[error("is too long for an amount (over 40 characters)")]
    AmountTooLong,
    /// Not `-`? digits (`.` digits)?.
    #[error("{text:?} is not a decimal amount")]
    NotDecimal { text: String },
    /// Thousands separators not in groups of three.
    #[error("{text:?} has misplaced thousands separators")]
    MisplacedSeparators { text: String },
    /// A fraction where the amount counts 1/10^scale units.
    #[error("{text:?} is not a whole number of 1/10^{scale} units (scale = {scale})")]
    NotWholeUnits { text: String, scale: u32 },
    /// Not an RFC 3339 time.
    #[error("{text:?} is not an RFC 3339 time: {error}")]
    NotRfc3339 { text: String, error: chrono::ParseError },
    /// Epoch seconds no time can have.
    #[error("{seconds} seconds is out of range")]
    SecondsOutOfRange { seconds: i64 },
    /// A date that does not match the file's strftime pattern.
    #[error("{text:?} does not match the date format {pattern}: {error}")]
    DateMismatch { text: String, pattern: String, error: chrono::ParseError },
    /// A value the field's value map has no entry for; `keys` lists the map's keys.
    #[error("{raw:?} is not one of: {keys}")]
    NotMapped { raw: String, keys: String },
    /// Not a pacing name.
    #[error("{text:?} is not a pacing; expected INSTRUCTOR_PACED or SELF_PACED")]
    NotPacing { text: String },
    /// Not a product type name.
    #[error("{text:?} is not a product type; expected one of {}", product_type_names())]
    NotProductType { text: String },
}

/// A JSON scalar's text: a string trimmed, a number as written (see [`number_text`]), a boolean as `true`/`false`.
pub(super) fn raw_text(value: &Value) -> Result<String, CoercionError> {
    match value {
        Value::String(s) => Ok(s.trim().to_string()),
        Value::Number(n) => number_text(n),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(CoercionError::NotScalar { got: describe(other) }),
    }
}

/// A number's text, exact: integers as they are; other numbers in serde_json's
/// shortest round-trip form, refused in exponent form (`1e21`), which is no
/// price or count a source means. A payload that came through protobuf's
/// `Struct` carries every number as a double, so `1299900` arrives as
/// `1299900.0`: a zero fraction is dropped.
pub(super) fn number_text(n: &Number) -> Result<String, CoercionError> {
    if n.is_i64() || n.is_u64() {
        return Ok(n.to_string());
    }
    let text = n.to_string();
    if text.contains(['e', 'E']) {
        return Err(CoercionError::ExponentForm { text });
    }
    Ok(text.strip_suffix(".0").map(str::to_string).unwrap_or(text))
}

/// A whole number's digits, for keys built by templates; None for fractions and exponents.
pub(super) fn whole_number_text(n: &Number) -> Option<String> {
    number_text(n).ok().filter(|text| !text.contains('.'))
}

/// `-12`, `12`, `12.0` (a zero fraction, as doubles print); nothing else.
pub(super) fn parse_integer(text: &str) -> Result<i64, CoercionError> {
    let trimmed = text.trim();
    let whole = match trimmed.split_once('.') {
        Some((whole, fraction)) if !fraction.is_empty() && fraction.bytes().all(|b| b == b'0') => whole,
        Some(_) => return Err(CoercionError::NotWholeNumber { text: trimmed.to_string() }),
        None => trimmed,
    };
    let digits = whole.strip_prefix('-').unwrap_or(whole);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CoercionError::NotWholeNumber { text: trimmed.to_string() });
    }
    whole.parse::<i64>().map_err(|_| CoercionError::OutOfRange { text: trimmed.to_string() })
}

/// An exact decimal for a price: `2450`, `2450.00`, `2,450.00` (comma thousands
/// separators in groups of three), `-5`. With `scale` > 0 the input counts
/// 1/10^scale units (cents with 2) and must be whole: `1299900` → `12999.00`.
/// No exponents, no floats, at most 40 characters.
pub(super) fn parse_decimal(text: &str, scale: u32) -> Result<String, CoercionError> {
    let trimmed = text.trim();
    if trimmed.len() > 40 {
        return Err(CoercionError::AmountTooLong);
    }
    let (negative, unsigned) = match trimmed.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, trimmed),
    };
    let not_decimal = || CoercionError::NotDecimal { text: trimmed.to_string() };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (unsigned, None),
    };
    let whole = if whole.contains(',') {
        let mut groups = whole.split(',');
        let first = groups.next().unwrap_or_default();
        let grouped =
            (1..=3).contains(&first.len()) && all_digits(first) && groups.all(|g| g.len() == 3 && all_digits(g));
        if !grouped {
            return Err(CoercionError::MisplacedSeparators { text: trimmed.to_string() });
        }
        whole.replace(',', "")
    } else if all_digits(whole) {
        whole.to_string()
    } else {
        return Err(not_decimal());
    };
    if fraction.is_some_and(|f| !all_digits(f)) {
        return Err(not_decimal());
    }
    let sign = if negative { "-" } else { "" };
    if scale == 0 {
        return Ok(match fraction {
            Some(fraction) => format!("{sign}{whole}.{fraction}"),
            None => format!("{sign}{whole}"),
        });
    }
    if fraction.is_some_and(|f| f.bytes().any(|b| b != b'0')) {
        return Err(CoercionError::NotWholeUnits { text: trimmed.to_string(), scale });
    }
    // Shift the point `scale` places left, padding with zeros: 5 with scale 2 is 0.05.
    let scale = usize::try_from(scale).unwrap_or(usize::MAX);
    let significant = whole.trim_start_matches('0');
    let padded = format!("{significant:0>width$}", width = scale.saturating_add(1));
    let (units, fraction) = padded.split_at(padded.len().saturating_sub(scale));
    Ok(format!("{sign}{units}.{fraction}"))
}

/// A time from a date string in `format`, or from epoch seconds. Times without
/// an offset are UTC; a date alone is midnight UTC.
pub(super) fn parse_date(text: &str, format: &DateFormat) -> Result<DateTime<Utc>, CoercionError> {
    let trimmed = text.trim();
    match format {
        DateFormat::Rfc3339 => DateTime::parse_from_rfc3339(trimmed)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|error| CoercionError::NotRfc3339 { text: trimmed.to_string(), error }),
        DateFormat::EpochSeconds => {
            let seconds = parse_integer(trimmed)?;
            DateTime::from_timestamp(seconds, 0).ok_or(CoercionError::SecondsOutOfRange { seconds })
        }
        DateFormat::Pattern(pattern) => DateTime::parse_from_str(trimmed, pattern)
            .map(|t| t.with_timezone(&Utc))
            .or_else(|_| NaiveDateTime::parse_from_str(trimmed, pattern).map(|t| t.and_utc()))
            .or_else(|_| {
                NaiveDate::parse_from_str(trimmed, pattern).map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
            })
            .map_err(|error| CoercionError::DateMismatch {
                text: trimmed.to_string(),
                pattern: pattern.clone(),
                error,
            }),
    }
}

/// The product types' names, for messages.
pub(super) fn product_type_names() -> String {
    ProductType::ALL.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_their_text() {
        let text = |v: Value| match v {
            Value::Number(n) => number_text(&n),
            other => panic!("{other} is not a number"),
        };
        assert_eq!(text(serde_json::json!(1299900)), Ok("1299900".into()));
        assert_eq!(text(serde_json::json!(1299900.0)), Ok("1299900".into()));
        assert_eq!(text(serde_json::json!(2450.1)), Ok("2450.1".into()));
        assert_eq!(text(serde_json::json!(u64::MAX)), Ok(u64::MAX.to_string()));
        assert!(text(serde_json::json!(1e300)).is_err());
        assert!(text(serde_json::json!(1e-7)).is_err());
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(parse_decimal("2,450.00", 0), Ok("2450.00".into()));
        assert_eq!(parse_decimal("1,234,567", 0), Ok("1234567".into()));
        assert_eq!(parse_decimal("1299900", 2), Ok("12999.00".into()));
        assert_eq!(parse_decimal("5", 2), Ok("0.05".into()));
        assert_eq!(parse_decimal("0", 2), Ok("0.00".into()));
        assert_eq!(parse_decimal("12.00", 2), Ok("0.12".into()));
        assert_eq!(parse_decimal("-150", 2), Ok("-1.50".into()));
        assert_eq!(parse_decimal("7", 18), Ok("0.000000000000000007".into()));
        for bad in ["", "1e3", "12,34.00", "1,2345", ",123", "1.", ".5", "abc", "1.2.3", "--1", "+1", "NaN"] {
            assert!(parse_decimal(bad, 0).is_err(), "{bad:?} parsed");
        }
        assert!(parse_decimal("12.5", 2).is_err());
    }

    #[test]
    fn integers_accept_a_zero_fraction_only() {
        assert_eq!(parse_integer("6"), Ok(6));
        assert_eq!(parse_integer(" -6 "), Ok(-6));
        assert_eq!(parse_integer("6.00"), Ok(6));
        assert_eq!(parse_integer("-9223372036854775808"), Ok(i64::MIN));
        for bad in ["6.5", "6.", "six", "", "-", "1e3", "9223372036854775808", "+6"] {
            assert!(parse_integer(bad).is_err(), "{bad:?} parsed");
        }
    }
}
