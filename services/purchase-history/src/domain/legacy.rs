//! The legacy `POST /buy` form of `RecordPurchase`: `username`, `userid`,
//! a `price` without a currency and a `timestamp` in one of several forms.

use chrono::{DateTime, Utc};
use prost_types::value::Kind;
use proto::commerce::purchases::v1::RecordPurchaseRequest;
use vocab::{Invalid, LmsUserId, LmsUsername, Price, PurchaseId, SourceSystem, Title, ViolationReason};

use super::message::Violations;
use super::{LEGACY_CURRENCY, LEGACY_MILLIS_FROM, LEGACY_SOURCE, Purchase, Violation, truncate_to_micros};

/// Longest legacy `timestamp` string looked at (RFC 3339 needs about 35).
const MAX_TIME_STRING_LEN: usize = 64;

/// The legacy `POST /buy` form: `username`, `userid`, `price`, `timestamp`.
pub(super) fn parse_legacy(request: &RecordPurchaseRequest, now: DateTime<Utc>) -> Result<Purchase, Vec<Violation>> {
    let mut bad = Violations::default();
    let username = bad.check("username".into(), LmsUsername::parse(&request.username));
    let lms_user_id = match request.userid {
        0 => {
            bad.add("userid", ViolationReason::Required, "is required");
            None
        }
        id => bad.check("userid".into(), LmsUserId::new(id)),
    };
    let price = match request.price.as_ref().and_then(|v| v.kind.as_ref()) {
        None | Some(Kind::NullValue(_)) => Err(Invalid::because(ViolationReason::Required, "is required")),
        Some(Kind::NumberValue(n)) => amount_of_number(*n).and_then(|amount| legacy_price(&amount)),
        Some(Kind::StringValue(s)) => legacy_price(s),
        Some(_) => Err(Invalid::because(
            ViolationReason::InvalidFormat,
            "must be a number or a decimal string such as \"49.99\"",
        )),
    };
    let price = bad.check("price".into(), price);
    let purchased_at = match request.timestamp.as_ref().and_then(|v| v.kind.as_ref()) {
        None | Some(Kind::NullValue(_)) => Some(truncate_to_micros(now)),
        Some(Kind::StringValue(s)) => bad.check("timestamp".into(), time_of_string(s)),
        Some(Kind::NumberValue(n)) => bad.check("timestamp".into(), time_of_number(*n)),
        Some(_) => {
            bad.add(
                "timestamp",
                ViolationReason::InvalidFormat,
                "must be an RFC 3339 string or a number of seconds or milliseconds since the epoch",
            );
            None
        }
    };
    let purchase_id = PurchaseId::parse(&uuid::Uuid::now_v7().to_string()).ok();
    let source = SourceSystem::parse(LEGACY_SOURCE).ok();
    match (purchase_id, username, lms_user_id, price, purchased_at) {
        (Some(purchase_id), Some(username), Some(lms_user_id), Some(price), Some(purchased_at)) if bad.0.is_empty() => {
            Ok(Purchase {
                purchase_id,
                lms_user_id,
                username,
                order_number: None,
                product_key: None,
                title: Title::default(),
                price,
                purchased_at,
                source,
            })
        }
        _ => Err(bad.0),
    }
}

/// A legacy price: an amount in [`LEGACY_CURRENCY`].
fn legacy_price(amount: &str) -> Result<Price, Invalid> {
    Price::parse(LEGACY_CURRENCY, amount).map_err(|e| e.invalid)
}

/// A JSON number as an exact decimal: Rust's `Display` for `f64` writes the
/// shortest digits that read back as the same double, without an exponent, so
/// `49.99` is `"49.99"` (never `49.990000000000002`).
fn amount_of_number(n: f64) -> Result<String, Invalid> {
    if !n.is_finite() {
        return Err(Invalid::because(ViolationReason::OutOfRange, "must be a finite number"));
    }
    if n < 0.0 {
        return Err(Invalid::because(ViolationReason::OutOfRange, "must not be negative"));
    }
    // -0.0 passes the check above but would print as "-0".
    let n = if n == 0.0 { 0.0 } else { n };
    Ok(format!("{n}"))
}

fn time_of_string(raw: &str) -> Result<DateTime<Utc>, Invalid> {
    let bad = || {
        let text = format!("must be an RFC 3339 time such as \"2025-11-13T02:13:20Z\", got {:?}", clip(raw));
        Invalid::because(ViolationReason::InvalidFormat, text)
    };
    if raw.len() > MAX_TIME_STRING_LEN {
        return Err(bad());
    }
    let time = DateTime::parse_from_rfc3339(raw).map_err(|_| bad())?.with_timezone(&Utc);
    in_range(time)
}

fn time_of_number(n: f64) -> Result<DateTime<Utc>, Invalid> {
    let outside = || Invalid::because(ViolationReason::OutOfRange, "is outside years 1 to 9999");
    if !n.is_finite() {
        return Err(Invalid::because(ViolationReason::OutOfRange, "must be a finite number"));
    }
    let micros = if n.abs() < LEGACY_MILLIS_FROM { n * 1e6 } else { n * 1e3 };
    // Beyond ±2^62 µs is far outside years 1 to 9999; checking first keeps the cast exact.
    if micros.abs() >= 4.6e18 {
        return Err(outside());
    }
    let time = DateTime::from_timestamp_micros(micros.round() as i64).ok_or_else(outside)?;
    in_range(time)
}

fn in_range(time: DateTime<Utc>) -> Result<DateTime<Utc>, Invalid> {
    if kit::time::in_range(time) {
        Ok(truncate_to_micros(time))
    } else {
        Err(Invalid::because(ViolationReason::OutOfRange, "is outside years 1 to 9999"))
    }
}

/// The start of a caller's string, for error messages that must stay short.
fn clip(raw: &str) -> String {
    raw.chars().take(40).collect()
}
