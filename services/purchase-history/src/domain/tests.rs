//! The purchase parsers' unit tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Timestamp, Value};
use proto::commerce::events::v1::PurchaseRecorded;
use proto::commerce::purchases::v1 as pb;
use proto::commerce::purchases::v1::RecordPurchaseRequest;
use proto::commerce::r#type::v1::Money;
use vocab::Price;

use super::*;

pub(super) fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_763_000_000, 123_456_000).unwrap()
}

pub(super) fn event() -> PurchaseRecorded {
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
        (parsed.purchase_id.as_str(), parsed.source.as_deref().unwrap_or_default(), parsed.purchased_at.timestamp()),
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
}
