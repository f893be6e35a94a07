//! PurchaseHistory's rules, pure and unit-tested: what a valid purchase is
//! (from a stream message or from `RecordPurchase`, legacy fields included),
//! whose purchases a list asks for, and the keyset page token.
//!
//! Parse, don't validate: a [`Purchase`] is built only by [`Purchase::from_event`]
//! or [`Purchase::from_request`], which bound everything a caller sends and
//! name every bad field, so an invalid purchase never reaches the store.

use chrono::{DateTime, Utc};
use prost_types::value::Kind;
use proto::commerce::events::v1::PurchaseRecorded;
use proto::commerce::purchases::v1 as pb;
use proto::commerce::purchases::v1::RecordPurchaseRequest;
use proto::commerce::r#type::v1::Money;
use vocab::{
    Invalid, LmsUserId, LmsUsername, MAX_ID_LEN, OrderNumber, Price, ProductKey, PurchaseId, SourceSystem, Title,
    ViolationReason,
};

/// `source` of a purchase recorded through `RecordPurchase` that names none.
pub const RECORD_PURCHASE_SOURCE: &str = "record-purchase";
/// `source` of a purchase recorded through the legacy fields (`POST /buy`).
pub const LEGACY_SOURCE: &str = "legacy-buy";
/// The currency of a legacy price, which carries none.
pub const LEGACY_CURRENCY: &str = "USD";
/// A legacy `timestamp` number below this (in magnitude) is seconds since the
/// epoch, at or above it milliseconds: 1e11 seconds is the year 5138 and 1e11
/// milliseconds is 1973-03-03, so every plausible purchase time reads right
/// either way.
pub const LEGACY_MILLIS_FROM: f64 = 1e11;
/// Longest legacy `timestamp` string looked at (RFC 3339 needs about 35).
const MAX_TIME_STRING_LEN: usize = 64;

/// One purchase by one learner, valid by construction: every field is a
/// `vocab` value, parsed by the same types Fulfillment (the producer) parses
/// the order with, so what Fulfillment accepted is never refused here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Purchase {
    /// Unique: a repeat of it is stored once.
    pub purchase_id: PurchaseId,
    /// The buyer's LMS user id.
    pub lms_user_id: LmsUserId,
    /// The buyer's LMS username when they bought (a placeholder once retired).
    pub username: LmsUsername,
    /// The order, when known.
    pub order_number: Option<OrderNumber>,
    /// The product bought, when known.
    pub product_key: Option<ProductKey>,
    /// The product's title as sold; may be empty.
    pub title: Title,
    /// The price paid (never negative).
    pub price: Price,
    /// When, to the microsecond (what both backends keep).
    pub purchased_at: DateTime<Utc>,
    /// Which system reported it, when a stream message named one.
    pub source: Option<SourceSystem>,
}

/// One bad field of a message, as `google.rpc.BadRequest` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The field's path as the caller sees it: `purchase.price.amount`, `userid`.
    pub field_path: String,
    /// What is wrong with it.
    pub reason: String,
    /// The rule it broke (the violation's stable `reason` on the wire).
    pub rule: ViolationReason,
}

impl Violation {
    /// A violation of `field_path` that broke `rule`.
    pub fn new(field_path: impl Into<String>, rule: ViolationReason, reason: impl Into<String>) -> Self {
        Self { field_path: field_path.into(), reason: reason.into(), rule }
    }
}

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
struct Violations(Vec<Violation>);

impl Violations {
    fn check<T, E: kit::error::Refusal>(&mut self, path: String, result: Result<T, E>) -> Option<T> {
        result.map_err(|refusal| self.0.push(Violation::new(path, refusal.rule(), refusal.to_string()))).ok()
    }

    fn add(&mut self, path: impl Into<String>, rule: ViolationReason, reason: impl Into<String>) {
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

    /// The stream message for this purchase.
    pub fn to_event(&self) -> PurchaseRecorded {
        PurchaseRecorded {
            purchase_id: self.purchase_id.to_string(),
            lms_user_id: self.lms_user_id.to_string(),
            username: self.username.to_string(),
            order_number: text_of(self.order_number.as_deref()),
            product_key: text_of(self.product_key.as_deref()),
            title: self.title.to_string(),
            price: Some(Money::from(&self.price)),
            purchased_at: Some(kit::time::to_timestamp(self.purchased_at)),
            source: text_of(self.source.as_deref()),
        }
    }

    /// The API's form of this purchase, as bought (its refund, if any, is the store's to add).
    pub fn to_proto(&self) -> pb::Purchase {
        pb::Purchase {
            purchase_id: self.purchase_id.to_string(),
            lms_user_id: self.lms_user_id.to_string(),
            username: self.username.to_string(),
            order_number: text_of(self.order_number.as_deref()),
            product_key: text_of(self.product_key.as_deref()),
            title: self.title.to_string(),
            price: Some(Money::from(&self.price)),
            purchased_at: Some(kit::time::to_timestamp(self.purchased_at)),
            source: text_of(self.source.as_deref()),
            status: pb::PurchaseStatus::Purchased as i32,
            refund: None,
        }
    }
}

/// An optional field's wire form: empty when absent.
fn text_of(value: Option<&str>) -> String {
    value.unwrap_or_default().to_string()
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

/// The legacy `POST /buy` form: `username`, `userid`, `price`, `timestamp`.
fn parse_legacy(request: &RecordPurchaseRequest, now: DateTime<Utc>) -> Result<Purchase, Vec<Violation>> {
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

/// A time to the microsecond, what both backends keep, so a purchase read
/// back equals the one stored and a page cursor compares exactly.
pub fn truncate_to_micros(time: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(time.timestamp_micros()).unwrap_or(time)
}

/// The start of a caller's string, for error messages that must stay short.
fn clip(raw: &str) -> String {
    raw.chars().take(40).collect()
}

/// Whose purchases to list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LearnerKey {
    /// By LMS user id.
    LmsUserId(LmsUserId),
    /// By the username stored with each purchase, compared case-insensitively.
    Username(LmsUsername),
}

/// Where a page of `ListPurchases` ends: the next page holds what sorts
/// strictly after it in (purchased_at, purchase_id) descending order, so new
/// purchases (newer, hence on earlier pages) never shift later pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageCursor {
    /// The last listed purchase's time.
    pub purchased_at: DateTime<Utc>,
    /// The last listed purchase's id.
    pub purchase_id: PurchaseId,
}

/// First byte of an encoded cursor, so the format can change without misreading old tokens.
const CURSOR_VERSION: u8 = 1;
/// Longest token decoded: version, 8 bytes of time, an id of at most 100 characters of 4 bytes, in hex.
const MAX_TOKEN_LEN: usize = 2 * (1 + 8 + 4 * MAX_ID_LEN);

impl PageCursor {
    /// The cursor after `purchase`, the last of a page.
    pub fn after(purchase: &Purchase) -> Self {
        Self { purchased_at: purchase.purchased_at, purchase_id: purchase.purchase_id.clone() }
    }

    /// The opaque token: hex of a version byte, the time in microseconds (big-endian) and the id's bytes.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(9 + self.purchase_id.len());
        bytes.push(CURSOR_VERSION);
        bytes.extend_from_slice(&self.purchased_at.timestamp_micros().to_be_bytes());
        bytes.extend_from_slice(self.purchase_id.as_bytes());
        hex::encode(bytes)
    }

    /// Reads a token [`PageCursor::encode`] wrote; anything else is refused, saying why.
    pub fn decode(token: &str) -> Result<Self, String> {
        if token.len() > MAX_TOKEN_LEN {
            return Err("is too long".into());
        }
        let bytes = hex::decode(token).map_err(|_| "is not a page token".to_string())?;
        let (version, rest) = bytes.split_first().ok_or("is empty")?;
        if *version != CURSOR_VERSION {
            return Err("is not a page token of this version".into());
        }
        let (micros, id) = rest.split_first_chunk::<8>().ok_or("is truncated")?;
        let purchased_at = DateTime::from_timestamp_micros(i64::from_be_bytes(*micros))
            .filter(|t| kit::time::in_range(*t))
            .ok_or("holds a time outside years 1 to 9999")?;
        let purchase_id = std::str::from_utf8(id).map_err(|_| "holds an id that is not UTF-8".to_string())?;
        let purchase_id = PurchaseId::parse(purchase_id).map_err(|reason| format!("holds an invalid id: {reason}"))?;
        Ok(Self { purchased_at, purchase_id })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use proptest::prelude::*;
    use prost_types::{ListValue, Struct, Timestamp, Value};

    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_763_000_000, 123_456_000).unwrap()
    }

    fn event() -> PurchaseRecorded {
        PurchaseRecorded {
            purchase_id: "p-1".into(),
            lms_user_id: "42".into(),
            username: "ada_L".into(),
            order_number: "EDX-100".into(),
            product_key: "course-v1:edX+DemoX+T1".into(),
            title: "Demo: a course".into(),
            price: Some(Money { currency_code: "USD".into(), amount: "149.00".into() }),
            purchased_at: Some(kit::time::to_timestamp(t0())),
            source: "fulfillment".into(),
        }
    }

    fn number(n: f64) -> Option<Value> {
        Some(Value { kind: Some(Kind::NumberValue(n)) })
    }

    fn string(s: &str) -> Option<Value> {
        Some(Value { kind: Some(Kind::StringValue(s.into())) })
    }

    fn legacy(price: Option<Value>, timestamp: Option<Value>) -> RecordPurchaseRequest {
        RecordPurchaseRequest { purchase: None, username: "ada".into(), userid: 42, price, timestamp }
    }

    fn paths(violations: &[Violation]) -> Vec<&str> {
        violations.iter().map(|v| v.field_path.as_str()).collect()
    }

    #[test]
    fn a_full_event_parses_and_round_trips() {
        let purchase = Purchase::from_event(&event()).unwrap();
        assert_eq!(purchase.lms_user_id.get(), 42);
        assert_eq!(purchase.price, Price::parse("USD", "149.00").unwrap());
        assert_eq!(purchase.purchased_at, t0());
        assert_eq!(purchase.to_event(), event());
        assert_eq!(Purchase::from_event(&purchase.to_event()).unwrap(), purchase);
        let api = purchase.to_proto();
        assert_eq!((api.lms_user_id.as_str(), api.source.as_str()), ("42", "fulfillment"));
    }

    #[test]
    fn optional_fields_may_be_empty_and_times_keep_microseconds() {
        let mut e = event();
        e.order_number.clear();
        e.product_key.clear();
        e.title.clear();
        e.source.clear();
        e.purchased_at = Some(Timestamp { seconds: 1_763_000_000, nanos: 123_456_789 });
        let purchase = Purchase::from_event(&e).unwrap();
        assert_eq!((&purchase.order_number, purchase.title.as_str(), &purchase.source), (&None, "", &None));
        assert_eq!(purchase.purchased_at, t0(), "nanoseconds below the microsecond are dropped");
    }

    #[test]
    fn every_bad_field_of_an_event_is_named() {
        let e = PurchaseRecorded {
            purchase_id: String::new(),
            lms_user_id: "042".into(),
            username: "a".into(),
            order_number: "has space".into(),
            product_key: "k".repeat(vocab::MAX_KEY_LEN + 1),
            title: "bell\u{7}".into(),
            price: Some(Money { currency_code: "usd".into(), amount: "1".into() }),
            purchased_at: None,
            source: "tab\there".into(),
        };
        let violations = Purchase::from_event(&e).unwrap_err();
        assert_eq!(
            paths(&violations),
            [
                "purchase_id",
                "lms_user_id",
                "username",
                "order_number",
                "product_key",
                "title",
                "price.currency_code",
                "purchased_at",
                "source"
            ]
        );
        let mut e = event();
        e.price = None;
        assert_eq!(paths(&Purchase::from_event(&e).unwrap_err()), ["price"]);
        e.price = Some(Money { currency_code: "EUR".into(), amount: "-1.00".into() });
        assert_eq!(paths(&Purchase::from_event(&e).unwrap_err()), ["price.amount"]);
        e.price = Some(Money { currency_code: "EUR".into(), amount: "1e3".into() });
        assert_eq!(paths(&Purchase::from_event(&e).unwrap_err()), ["price.amount"]);
    }

    #[test]
    fn a_purchase_message_gets_an_id_a_time_and_a_source_when_absent() {
        let mut purchase = pb::Purchase {
            lms_user_id: "7".into(),
            username: "ada".into(),
            price: Some(Money { currency_code: "INR".into(), amount: "999".into() }),
            ..Default::default()
        };
        let request = RecordPurchaseRequest { purchase: Some(purchase.clone()), ..Default::default() };
        let parsed = Purchase::from_request(&request, t0()).unwrap();
        let id = uuid::Uuid::parse_str(&parsed.purchase_id).unwrap();
        assert_eq!(id.get_version_num(), 7);
        assert_eq!((parsed.purchased_at, parsed.source.as_deref()), (t0(), Some(RECORD_PURCHASE_SOURCE)));

        purchase.purchase_id = "mine".into();
        purchase.source = "lob-x".into();
        purchase.purchased_at = Some(Timestamp { seconds: 1_000, nanos: 0 });
        let request = RecordPurchaseRequest { purchase: Some(purchase), ..Default::default() };
        let parsed = Purchase::from_request(&request, t0()).unwrap();
        assert_eq!(
            (
                parsed.purchase_id.as_str(),
                parsed.source.as_deref().unwrap_or_default(),
                parsed.purchased_at.timestamp()
            ),
            ("mine", "lob-x", 1_000)
        );
    }

    #[test]
    fn purchase_violations_carry_the_purchase_prefix() {
        let request = RecordPurchaseRequest {
            purchase: Some(pb::Purchase {
                lms_user_id: "x".into(),
                price: Some(Money { currency_code: "USD".into(), amount: "4.5.6".into() }),
                purchased_at: Some(Timestamp { seconds: 0, nanos: -1 }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let violations = Purchase::from_request(&request, t0()).unwrap_err();
        assert_eq!(
            paths(&violations),
            ["purchase.lms_user_id", "purchase.username", "purchase.price.amount", "purchase.purchased_at"]
        );
    }

    #[test]
    fn both_forms_at_once_are_refused_naming_the_legacy_fields() {
        let mut request = legacy(number(1.0), None);
        request.purchase = Some(event_as_purchase());
        let violations = Purchase::from_request(&request, t0()).unwrap_err();
        assert_eq!(paths(&violations), ["username", "userid", "price"]);
        assert!(violations[0].reason.contains("purchase"));
        // A null legacy value is as good as absent.
        let request = RecordPurchaseRequest {
            purchase: Some(event_as_purchase()),
            price: Some(Value { kind: Some(Kind::NullValue(0)) }),
            ..Default::default()
        };
        assert!(Purchase::from_request(&request, t0()).is_ok());
    }

    fn event_as_purchase() -> pb::Purchase {
        Purchase::from_event(&event()).unwrap().to_proto()
    }

    #[test]
    fn an_empty_request_asks_for_a_purchase() {
        let violations = Purchase::from_request(&RecordPurchaseRequest::default(), t0()).unwrap_err();
        assert_eq!(paths(&violations), ["purchase"]);
    }

    #[test]
    fn legacy_prices_read_exactly() {
        for (price, amount) in [
            (number(49.99), "49.99"),
            (number(19.99), "19.99"),
            (number(0.1 + 0.2), "0.30000000000000004"),
            (number(49.0), "49"),
            (number(-0.0), "0"),
            (number(1e20), "100000000000000000000"),
            (string("49.990"), "49.990"),
        ] {
            let purchase = Purchase::from_request(&legacy(price, None), t0()).unwrap();
            assert_eq!((purchase.price.currency_code(), purchase.price.amount_text().as_str()), ("USD", amount));
            assert_eq!(
                (purchase.source.as_deref(), purchase.lms_user_id.get(), purchase.username.as_str()),
                (Some(LEGACY_SOURCE), 42, "ada")
            );
            assert_eq!(purchase.purchased_at, t0(), "no timestamp: now");
        }
        for price in [
            number(f64::NAN),
            number(f64::INFINITY),
            number(-1.5),
            number(1e300),
            string("1e3"),
            string("-2"),
            Some(Value { kind: Some(Kind::BoolValue(true)) }),
            Some(Value { kind: Some(Kind::StructValue(Struct::default())) }),
            None,
        ] {
            let violations = Purchase::from_request(&legacy(price.clone(), None), t0()).unwrap_err();
            assert_eq!(paths(&violations), ["price"], "{price:?}");
        }
    }

    #[test]
    fn legacy_timestamps_read_as_rfc3339_seconds_or_milliseconds() {
        let at = |timestamp| Purchase::from_request(&legacy(string("1"), timestamp), t0()).map(|p| p.purchased_at);
        let expected = DateTime::from_timestamp(1_763_000_000, 500_000_000).unwrap();
        assert_eq!(at(number(1_763_000_000.5)), Ok(expected));
        assert_eq!(at(number(1_763_000_000_500.0)), Ok(expected));
        assert_eq!(at(string("2025-11-13T02:13:20.5Z")), Ok(expected));
        assert_eq!(at(string("2025-11-13T03:13:20.5+01:00")), Ok(expected));
        for bad in [
            string("yesterday"),
            string("2025-11-13"),
            string(&"9".repeat(100)),
            number(f64::NAN),
            number(1e30),
            number(-1e15),
            Some(Value { kind: Some(Kind::ListValue(ListValue::default())) }),
        ] {
            let violations = Purchase::from_request(&legacy(string("1"), bad.clone()), t0()).unwrap_err();
            assert_eq!(paths(&violations), ["timestamp"], "{bad:?}");
        }
    }

    #[test]
    fn every_bad_legacy_field_is_named() {
        let request = RecordPurchaseRequest {
            purchase: None,
            username: "no spaces allowed".into(),
            userid: -3,
            price: string("free"),
            timestamp: string("soon"),
        };
        let violations = Purchase::from_request(&request, t0()).unwrap_err();
        assert_eq!(paths(&violations), ["username", "userid", "price", "timestamp"]);
        let request = RecordPurchaseRequest { username: "ada".into(), ..Default::default() };
        assert_eq!(paths(&Purchase::from_request(&request, t0()).unwrap_err()), ["userid", "price"]);
    }

    #[test]
    fn cursors_round_trip_and_refuse_what_they_did_not_write() {
        let cursor = PageCursor { purchased_at: t0(), purchase_id: PurchaseId::parse("p-ü-1").unwrap() };
        assert_eq!(PageCursor::decode(&cursor.encode()), Ok(cursor.clone()));
        assert_eq!(PageCursor::after(&Purchase::from_event(&event()).unwrap()).purchase_id.as_str(), "p-1");
        for bad in ["", "zz", "00", "01", "0100000000", "02000000000000000070", &"a".repeat(2000)] {
            assert!(PageCursor::decode(bad).is_err(), "{bad}");
        }
        // A cursor with an empty id or a time past year 9999 was never written.
        let mut bytes = vec![1u8];
        bytes.extend_from_slice(&t0().timestamp_micros().to_be_bytes());
        assert!(PageCursor::decode(&hex::encode(&bytes)).is_err());
        let mut bytes = vec![1u8];
        bytes.extend_from_slice(&i64::MAX.to_be_bytes());
        bytes.push(b'p');
        assert!(PageCursor::decode(&hex::encode(&bytes)).is_err());
    }

    fn any_value() -> impl Strategy<Value = Option<Value>> {
        let kind = prop_oneof![
            Just(Kind::NullValue(0)),
            any::<f64>().prop_map(Kind::NumberValue),
            (-1e16f64..1e16).prop_map(Kind::NumberValue),
            ".{0,70}".prop_map(Kind::StringValue),
            "[0-9]{1,45}(\\.[0-9]{0,5})?".prop_map(Kind::StringValue),
            any::<bool>().prop_map(Kind::BoolValue),
            Just(Kind::StructValue(Struct::default())),
            Just(Kind::ListValue(ListValue::default())),
        ];
        proptest::option::of(proptest::option::of(kind).prop_map(|kind| Value { kind }))
    }

    fn any_money() -> impl Strategy<Value = Option<Money>> {
        proptest::option::of(
            ("[A-Za-z]{0,4}|.{0,4}", "[0-9.\\-e]{0,45}|.{0,10}")
                .prop_map(|(currency_code, amount)| Money { currency_code, amount }),
        )
    }

    fn any_timestamp() -> impl Strategy<Value = Option<Timestamp>> {
        proptest::option::of((any::<i64>(), any::<i32>()).prop_map(|(seconds, nanos)| Timestamp { seconds, nanos }))
    }

    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![".{0,12}", "[A-Za-z0-9_-]{0,32}", ".{95,510}", "[0-9]{0,21}"]
    }

    prop_compose! {
        fn any_event()(
            ids in (any_text(), any_text(), any_text(), any_text()),
            more in (any_text(), any_text(), any_text()),
            price in any_money(),
            purchased_at in any_timestamp(),
        ) -> PurchaseRecorded {
            PurchaseRecorded {
                purchase_id: ids.0, lms_user_id: ids.1, username: ids.2, order_number: ids.3,
                product_key: more.0, title: more.1, source: more.2, price, purchased_at,
            }
        }
    }

    proptest! {
        #[test]
        fn from_event_never_panics(event in any_event()) {
            if let Ok(purchase) = Purchase::from_event(&event) {
                prop_assert_eq!(Purchase::from_event(&purchase.to_event()), Ok(purchase));
            }
        }

        #[test]
        fn from_request_never_panics(
            event in proptest::option::of(any_event()),
            username in any_text(),
            userid in prop_oneof![Just(0i64), any::<i64>()],
            price in any_value(),
            timestamp in any_value(),
        ) {
            let purchase = event.map(|e| pb::Purchase {
                purchase_id: e.purchase_id, lms_user_id: e.lms_user_id, username: e.username,
                order_number: e.order_number, product_key: e.product_key, title: e.title,
                price: e.price, purchased_at: e.purchased_at, source: e.source, ..pb::Purchase::default()
            });
            let request = RecordPurchaseRequest { purchase, username, userid, price, timestamp };
            if let Ok(purchase) = Purchase::from_request(&request, t0()) {
                prop_assert_eq!(Purchase::from_event(&purchase.to_event()), Ok(purchase));
            }
        }

        #[test]
        fn decode_never_panics(token in prop_oneof![".{0,64}", "[0-9a-f]{0,300}", "01[0-9a-f]{16,40}"]) {
            let _ = PageCursor::decode(&token);
        }

        #[test]
        fn cursors_round_trip(
            micros in -62_135_596_800_000_000i64..=253_402_300_799_999_999,
            purchase_id in "[^\\s\\p{Cc}]{1,100}",
        ) {
            let purchase_id = PurchaseId::parse(&purchase_id).unwrap();
            let cursor = PageCursor { purchased_at: DateTime::from_timestamp_micros(micros).unwrap(), purchase_id };
            prop_assert_eq!(PageCursor::decode(&cursor.encode()), Ok(cursor));
        }
    }
}
