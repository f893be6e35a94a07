//! The seam between Fulfillment (producer) and PurchaseHistory (consumer):
//! whatever order Fulfillment accepts, the `PurchaseRecorded` event it emits
//! when the order succeeds, and the `PurchaseRefunded` it emits when the line
//! is refunded, are accepted by PurchaseHistory's consumer parser.
//! Both parse with the `vocab` types; this holds them against each other with
//! arbitrary orders, including the ones that were lost before (a negative
//! price, a control character in a title, a course run key over 100
//! characters).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use fulfillment::api::parse_order;
use fulfillment::domain::{Learner, LearnerRef, Refund, RefundTerms};
use fulfillment::outbox::{completion_events, refund_recorded_event};
use fulfillment::store::{FulfillmentJob, NewJob};
use kit::trace::TextContext;
use proptest::prelude::*;
use proto::commerce::fulfillment::v1 as pb;
use proto::commerce::r#type::v1::Money;
use vocab::{CustomerId, LmsUserId, LmsUsername, RefundReason, SourceSystem};

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

/// Every PurchaseRecorded event of an accepted order, and the PurchaseRefunded
/// of each line refunded in whole, through the consumer's parser. Answers how
/// many PurchaseRecorded events were checked; panics with the refusal if one is refused.
fn emit_and_consume(order: &fulfillment::domain::Order, resolved: &Learner) -> usize {
    let learner = match order.learner() {
        LearnerRef::Lms(learner) => learner.clone(),
        LearnerRef::Customer { .. } => resolved.clone(),
    };
    let mut checked = 0;
    for spec in order.jobs(&learner) {
        let new = NewJob { id: uuid::Uuid::now_v7().to_string(), spec, traceparent: String::new() };
        let job = FulfillmentJob::accepted(&new, now());
        for event in
            completion_events(&job, Some("e8f8a0f4-0f5e-4c3f-9f7e-2b1d3c4a5b6c"), now(), &TextContext::default())
        {
            if event.stream != proto::streams::PURCHASES {
                continue;
            }
            if let Err(refused) = purchase_history::consumer::decode(&event.payload) {
                panic!("PurchaseHistory refused what Fulfillment accepted: {refused}\norder: {order:?}");
            }
            checked += 1;
        }
        let terms = RefundTerms::for_line(
            &job.spec.line.price,
            None,
            RefundReason::parse("requested_by_customer").unwrap(),
            SourceSystem::parse("stripe").unwrap(),
        )
        .expect("a whole refund fits its line");
        let refund = Refund { terms, requested_at: now(), traceparent: String::new() };
        if let Err(refused) = purchase_history::consumer::decode(&refund_recorded_event(&job, &refund).payload) {
            panic!("PurchaseHistory refused the refund of what Fulfillment accepted: {refused}\norder: {order:?}");
        }
    }
    checked
}

fn line(key: &str, title: &str, amount: &str) -> pb::LineItem {
    pb::LineItem {
        line_item_id: "1".into(),
        product: Some(pb::line_item::Product::CourseRun(pb::CourseRunEnrollment {
            course_run_key: key.into(),
            mode: "verified".into(),
            credit_provider_id: String::new(),
        })),
        title: title.into(),
        price: Some(Money { currency_code: "USD".into(), amount: amount.into() }),
    }
}

fn order_of(line: pb::LineItem) -> pb::FulfillOrderRequest {
    pb::FulfillOrderRequest {
        order_number: "EDX-1".into(),
        date_placed: Some(kit::time::to_timestamp(now())),
        learner: Some(pb::Learner { customer_id: String::new(), lms_user_id: "7".into(), lms_username: "ada".into() }),
        line_items: vec![line],
        ..Default::default()
    }
}

fn refused_fields(request: &pb::FulfillOrderRequest) -> Vec<String> {
    let status = parse_order(request, now(), Duration::from_secs(300)).expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    kit::error::field_violations(&status).into_iter().map(|(field, _)| field).collect()
}

#[test]
fn the_orders_that_were_lost_are_refused_at_the_door_naming_the_field() {
    let ok_key = "course-v1:edX+DemoX+2026";
    let long_key = format!("course-v1:edX+{}+2026", "X".repeat(240));
    assert!(long_key.len() > 255);
    for (request, field) in [
        (order_of(line(ok_key, "Demo", "-5.00")), "line_items[0].price.amount"),
        (order_of(line(ok_key, "Demo\u{7}", "5.00")), "line_items[0].title"),
        (order_of(line(&long_key, "Demo", "5.00")), "line_items[0].course_run.course_run_key"),
        (order_of(line(ok_key, "Demo", "1e3")), "line_items[0].price.amount"),
    ] {
        assert_eq!(refused_fields(&request), [field]);
    }
}

#[test]
fn a_course_run_key_over_100_characters_is_accepted_and_listed() {
    // PurchaseHistory once refused product keys over 100 characters that Fulfillment took.
    let key = format!("course-v1:edX+{}+2026", "X".repeat(120));
    let order = parse_order(&order_of(line(&key, "Demo", "0")), now(), Duration::from_secs(300)).expect("accepted");
    let nobody = resolved("1", "nobody");
    assert_eq!(emit_and_consume(&order, &nobody), 1);
}

fn resolved(id: &str, name: &str) -> Learner {
    Learner {
        customer_id: Some(CustomerId::parse("c-1").unwrap()),
        lms_user_id: LmsUserId::parse(id).unwrap(),
        lms_username: LmsUsername::parse(name).unwrap(),
    }
}

/// Text near the rules' edges: valid shapes, control and space characters, long runs, anything.
fn edgy(valid: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        60 => proptest::string::string_regex(valid).unwrap(),
        1 => "[ -~]{0,12}",
        1 => "[\\x00-\\x1f\\x7f\\u{85}\\u{2028} a-z]{0,8}",
        1 => "\\PC{0,8}",
        1 => "[a-zA-Z0-9]{95,110}",
        1 => Just(String::new()),
    ]
}

prop_compose! {
    fn any_line()(
        line_item_id in edgy("[A-Za-z0-9_-]{1,12}"),
        product in prop_oneof![
            (edgy("course-v1:[A-Za-z0-9_.~-]{1,100}\\+[A-Za-z0-9_.~-]{1,100}\\+[A-Za-z0-9_.~-]{1,100}"),
             prop_oneof![
                 8 => prop_oneof![Just(("verified", "")), Just(("audit", "")), Just(("credit", "asu"))],
                 1 => prop_oneof![Just(("credit", "")), Just(("gold", "")), Just(("verified", "asu")), Just(("credit", "a b"))],
             ])
                .prop_map(|(key, (mode, provider))| pb::line_item::Product::CourseRun(pb::CourseRunEnrollment {
                    course_run_key: key, mode: mode.into(), credit_provider_id: provider.into(),
                })),
            (prop_oneof![8 => any::<[u8; 16]>().prop_map(|b| uuid::Uuid::from_bytes(b).to_string()), 1 => edgy("[0-9a-f-]{36}")],
             prop_oneof![Just("verified"), Just("professional")])
                .prop_map(|(uuid, mode)| pb::line_item::Product::Entitlement(pb::ProgramEntitlement {
                    course_uuid: uuid, mode: mode.into(),
                })),
        ],
        title in edgy("[\\PC]{0,40}"),
        currency in edgy("[A-Z]{3}"),
        amount in prop_oneof![9 => edgy("[0-9]{1,12}(\\.[0-9]{1,4})?"), 1 => "-[0-9]{1,5}", 1 => "[0-9]{27,31}"],
        priced in proptest::bool::weighted(0.95),
    ) -> pb::LineItem {
        pb::LineItem {
            line_item_id,
            product: Some(product),
            title,
            price: priced.then_some(Money { currency_code: currency, amount }),
        }
    }
}

prop_compose! {
    fn any_order()(
        order_number in edgy("[A-Z0-9-]{1,20}"),
        order_id in edgy("[a-z0-9-]{0,20}"),
        source_system in edgy("[a-z-]{0,20}"),
        customer_id in edgy("[a-z0-9-]{0,20}"),
        lms_user_id in edgy("[1-9][0-9]{0,17}"),
        lms_username in edgy("[A-Za-z0-9_-]{2,30}"),
        line_items in proptest::collection::vec(any_line(), 1..4),
        placed in -5_000_000_000i64..5_000_000_000i64,
    ) -> pb::FulfillOrderRequest {
        pb::FulfillOrderRequest {
            order_number,
            order_id,
            order_version: 1,
            date_placed: Some(prost_types::Timestamp { seconds: 1_700_000_000 + placed / 100, nanos: 0 }),
            source_system,
            learner: Some(pb::Learner { customer_id, lms_user_id, lms_username }),
            email_opt_in: false,
            line_items,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    /// No order Fulfillment accepts yields a purchase PurchaseHistory refuses.
    #[test]
    fn whatever_fulfillment_accepts_purchase_history_accepts(request in any_order()) {
        if let Ok(order) = parse_order(&request, now(), Duration::from_secs(300)) {
            // An order naming only a customer gets its learner from CustomerIdentity, whose
            // answer Fulfillment parses with the same vocabulary: any valid learner will do.
            emit_and_consume(&order, &resolved("42", "grace"));
        }
    }
}

/// The property above proves something only if the generator reaches both sides
/// of the door: orders accepted (and their events checked) and orders refused.
#[test]
fn the_generated_orders_are_both_accepted_and_refused() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    const ORDERS: usize = 1_000;
    let (mut accepted, mut refused, mut events) = (0, 0, 0);
    for _ in 0..ORDERS {
        let request = any_order().new_tree(&mut runner).unwrap().current();
        match parse_order(&request, now(), Duration::from_secs(300)) {
            Ok(order) => {
                accepted += 1;
                events += emit_and_consume(&order, &resolved("42", "grace"));
            }
            Err(_) => refused += 1,
        }
    }
    let figures = serde_json::json!({
        "suite": "seams-property",
        "orders": ORDERS,
        "accepted": accepted,
        "refused_at_the_door": refused,
        "purchase_events_checked": events,
        "refused_by_consumer": 0,
    });
    println!("RELIABILITY-FIGURES {figures}");
    assert!(accepted >= 100, "only {accepted} of 1000 generated orders were accepted");
    assert!(refused >= 100, "only {refused} of 1000 generated orders were refused");
}
