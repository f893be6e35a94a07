//! The purchase messages parsed: a stream's `PurchaseRecorded` and
//! `RecordPurchase`'s `purchase`, through one parser of the fields they share.

use chrono::{DateTime, Utc};
use prost_types::value::Kind;
use proto::commerce::events::v1::PurchaseRecorded;
use proto::commerce::purchases::v1 as pb;
use proto::commerce::purchases::v1::RecordPurchaseRequest;
use proto::commerce::r#type::v1::Money;
use vocab::{
    Invalid, LmsUserId, LmsUsername, OrderNumber, Price, ProductKey, PurchaseId, SourceSystem, Title, ViolationReason,
};

use super::legacy::parse_legacy;
#[cfg(doc)]
use super::{LEGACY_CURRENCY, LEGACY_MILLIS_FROM, LEGACY_SOURCE};
use super::{Purchase, RECORD_PURCHASE_SOURCE, Violation, truncate_to_micros};

/// The fields `Purchase` and `PurchaseRecorded` share, borrowed, so both
/// messages go through one parser.
struct Fields<'a> {
    purchase_id: &'a str,
    lms_user_id: &'a str,
    username: &'a str,
    order_number: &'a str,
    product_key: &'a str,
    title: &'a str,
    price: Option<&'a Money>,
    purchased_at: Option<&'a prost_types::Timestamp>,
    source: &'a str,
}

impl<'a> From<&'a PurchaseRecorded> for Fields<'a> {
    fn from(e: &'a PurchaseRecorded) -> Self {
        Self {
            purchase_id: &e.purchase_id,
            lms_user_id: &e.lms_user_id,
            username: &e.username,
            order_number: &e.order_number,
            product_key: &e.product_key,
            title: &e.title,
            price: e.price.as_ref(),
            purchased_at: e.purchased_at.as_ref(),
            source: &e.source,
        }
    }
}

impl<'a> From<&'a pb::Purchase> for Fields<'a> {
    fn from(p: &'a pb::Purchase) -> Self {
        Self {
            purchase_id: &p.purchase_id,
            lms_user_id: &p.lms_user_id,
            username: &p.username,
            order_number: &p.order_number,
            product_key: &p.product_key,
            title: &p.title,
            price: p.price.as_ref(),
            purchased_at: p.purchased_at.as_ref(),
            source: &p.source,
        }
    }
}

/// What a message may leave out, which differs between the stream and `RecordPurchase`.
enum Defaults {
    /// A stream message: everything required is required; an empty source stays empty.
    None,
    /// `RecordPurchase`: an id is generated, the time is `now`, the source is ours.
    Request { now: DateTime<Utc> },
}

/// Collects violations; each check answers the value when it passed.
#[derive(Default)]
pub(super) struct Violations(pub(super) Vec<Violation>);

impl Violations {
    pub(super) fn check<T, E: kit::error::Refusal>(&mut self, path: String, result: Result<T, E>) -> Option<T> {
        result.map_err(|refusal| self.0.push(Violation::new(path, refusal.rule(), refusal.to_string()))).ok()
    }

    pub(super) fn add(&mut self, path: impl Into<String>, rule: ViolationReason, reason: impl Into<String>) {
        self.0.push(Violation::new(path, rule, reason));
    }
}

impl Purchase {
    /// From a stream message (`PurchaseRecorded`): purchase_id, lms_user_id,
    /// username, price and purchased_at required; every violation named.
    pub fn from_event(event: &PurchaseRecorded) -> Result<Self, Vec<Violation>> {
        parse_fields(&Fields::from(event), "", Defaults::None)
    }

    /// From `RecordPurchase`: the `purchase` message (paths `purchase.…`), or
    /// the legacy fields `username`, `userid`, `price` (a number, read at its
    /// shortest round-trip decimal, or a decimal string; in [`LEGACY_CURRENCY`])
    /// and `timestamp` (RFC 3339, or a number of seconds or milliseconds since
    /// the epoch, see [`LEGACY_MILLIS_FROM`]).
    ///
    /// Setting both forms is refused, naming each legacy field set (the proto
    /// contract says so, and silently dropping half a request hides caller bugs).
    /// An empty purchase_id is generated (UUID v7); an absent time is `now`; an
    /// empty source is [`RECORD_PURCHASE_SOURCE`] ([`LEGACY_SOURCE`] for the legacy form).
    pub fn from_request(request: &RecordPurchaseRequest, now: DateTime<Utc>) -> Result<Self, Vec<Violation>> {
        let legacy_set: Vec<&str> = [
            ("username", !request.username.is_empty()),
            ("userid", request.userid != 0),
            ("price", is_set(request.price.as_ref())),
            ("timestamp", is_set(request.timestamp.as_ref())),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        match &request.purchase {
            Some(purchase) => {
                let mixed: Vec<Violation> = legacy_set
                    .iter()
                    .map(|name| {
                        Violation::new(
                            *name,
                            ViolationReason::Conflict,
                            "must not be set together with `purchase`: send either the purchase or the legacy \
                             fields (username, userid, price, timestamp)",
                        )
                    })
                    .collect();
                match parse_fields(&Fields::from(purchase), "purchase.", Defaults::Request { now }) {
                    Ok(parsed) if mixed.is_empty() => Ok(parsed),
                    Ok(_) => Err(mixed),
                    Err(more) => Err(mixed.into_iter().chain(more).collect()),
                }
            }
            None if legacy_set.is_empty() => Err(vec![Violation::new(
                "purchase",
                ViolationReason::Required,
                "is required (or the legacy fields username, userid, price and timestamp)",
            )]),
            None => parse_legacy(request, now),
        }
    }
}

/// Whether a protobuf `Value` carries something: absent and `null` both mean "not sent".
fn is_set(value: Option<&prost_types::Value>) -> bool {
    !matches!(value.and_then(|v| v.kind.as_ref()), None | Some(Kind::NullValue(_)))
}

fn parse_fields(fields: &Fields<'_>, prefix: &str, defaults: Defaults) -> Result<Purchase, Vec<Violation>> {
    let path = |name: &str| format!("{prefix}{name}");
    let mut bad = Violations::default();
    let purchase_id = match (fields.purchase_id, &defaults) {
        ("", Defaults::Request { .. }) => PurchaseId::parse(&uuid::Uuid::now_v7().to_string()).ok(),
        (raw, _) => bad.check(path("purchase_id"), PurchaseId::parse(raw)),
    };
    let lms_user_id = bad.check(path("lms_user_id"), LmsUserId::parse(fields.lms_user_id));
    let username = bad.check(path("username"), LmsUsername::parse(fields.username));
    let order_number = bad.check(path("order_number"), optional(fields.order_number, OrderNumber::parse));
    let product_key = bad.check(path("product_key"), optional(fields.product_key, ProductKey::parse));
    let title = bad.check(path("title"), Title::parse(fields.title));
    let price = match fields.price {
        None => {
            bad.add(path("price"), ViolationReason::Required, "is required, with currency_code and amount");
            None
        }
        Some(money) => Price::try_from(money)
            .map_err(|e| bad.add(path(&format!("price.{}", e.part.field())), e.invalid.rule(), e.invalid.to_string()))
            .ok(),
    };
    let purchased_at = match (fields.purchased_at, &defaults) {
        (None, Defaults::Request { now }) => Some(truncate_to_micros(*now)),
        (None, Defaults::None) => {
            bad.add(path("purchased_at"), ViolationReason::Required, "is required");
            None
        }
        (Some(timestamp), _) => bad.check(
            path("purchased_at"),
            kit::time::from_timestamp(timestamp)
                .map(truncate_to_micros)
                .map_err(|e| Invalid::because(ViolationReason::OutOfRange, e)),
        ),
    };
    let source = match (fields.source, &defaults) {
        ("", Defaults::Request { .. }) => Some(SourceSystem::parse(RECORD_PURCHASE_SOURCE).ok()),
        (raw, _) => bad.check(path("source"), optional(raw, SourceSystem::parse)),
    };
    match (purchase_id, lms_user_id, username, order_number, product_key, title, price, purchased_at, source) {
        (
            Some(purchase_id),
            Some(lms_user_id),
            Some(username),
            Some(order_number),
            Some(product_key),
            Some(title),
            Some(price),
            Some(purchased_at),
            Some(source),
        ) if bad.0.is_empty() => Ok(Purchase {
            purchase_id,
            lms_user_id,
            username,
            order_number,
            product_key,
            title,
            price,
            purchased_at,
            source,
        }),
        _ => Err(bad.0),
    }
}

/// A field that may be empty (not known); otherwise parsed by `parse`.
fn optional<T>(raw: &str, parse: impl Fn(&str) -> Result<T, Invalid>) -> Result<Option<T>, Invalid> {
    if raw.is_empty() { Ok(None) } else { parse(raw).map(Some) }
}
