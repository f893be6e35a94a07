//! Source transformers as the API uses them: the shipped sources map their
//! example payloads (config/catalog/sources/examples) to the canonical model;
//! every coercion, value map, default and required path does what the README
//! says; VALIDATE and TRANSFORM name the exact field and report every violation;
//! malformed source files are refused naming the file and key; and no JSON at
//! all makes a transformer panic.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::path::{Path, PathBuf};

use catalog_ingest::domain::{
    CanonicalEvent, Course, CourseRun, Effort, EventName, Instructor, Pacing, Price, ProductType, Seat, Violation,
};
use catalog_ingest::transform::{MAX_VIOLATIONS, Quota, SourceConfigError, SourceTransformer, Sources};
use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{Value, json};

const EXEC_ED: &str = "exec-ed-partner";
const BOOTCAMP: &str = "bootcamp-hub";

fn sources_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/catalog/sources")
}

fn sources() -> Sources {
    Sources::load_dir(&sources_dir()).unwrap()
}

fn transformer(name: &str) -> SourceTransformer {
    sources().get(name).cloned().unwrap_or_else(|| panic!("no source {name}"))
}

fn example(source: &str, event: EventName) -> Value {
    let path = sources_dir().join("examples").join(source).join(format!("{event}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn day(y: i32, m: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap()
}

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).unwrap()
}

/// The payload with the value at a JSON pointer replaced.
fn with(mut payload: Value, pointer: &str, value: Value) -> Value {
    *payload.pointer_mut(pointer).unwrap_or_else(|| panic!("no {pointer}")) = value;
    payload
}

/// The payload without the key (or element) at a JSON pointer.
fn without(mut payload: Value, pointer: &str) -> Value {
    let (parent, last) = pointer.rsplit_once('/').unwrap();
    match payload.pointer_mut(parent).unwrap_or_else(|| panic!("no {parent}")) {
        Value::Object(map) => assert!(map.remove(last).is_some(), "no {pointer}"),
        Value::Array(items) => drop(items.remove(last.parse::<usize>().unwrap())),
        other => panic!("{parent} is {other}"),
    }
    payload
}

fn paths(violations: &[Violation]) -> Vec<&str> {
    violations.iter().map(|v| v.field_path.as_str()).collect()
}

/// VALIDATE's violations (the step must fail).
fn check_fails(source: &SourceTransformer, event: EventName, payload: &Value) -> Vec<Violation> {
    let violations = source.check(event, payload).expect_err("VALIDATE passed");
    // TRANSFORM of a payload VALIDATE refuses fails the same way.
    assert_eq!(source.transform(event, payload).expect_err("TRANSFORM passed"), violations);
    violations
}

/// TRANSFORM's violations, for a payload VALIDATE accepts.
fn transform_fails(source: &SourceTransformer, event: EventName, payload: &Value) -> Vec<Violation> {
    source.check(event, payload).unwrap_or_else(|v| panic!("VALIDATE failed: {v:?}"));
    source.transform(event, payload).expect_err("TRANSFORM passed")
}

fn transformed(source: &SourceTransformer, event: EventName, payload: &Value) -> CanonicalEvent {
    source.check(event, payload).unwrap_or_else(|v| panic!("VALIDATE failed: {v:?}"));
    source.transform(event, payload).unwrap_or_else(|v| panic!("TRANSFORM failed: {v:?}"))
}

fn runs(event: CanonicalEvent) -> Vec<CourseRun> {
    match event {
        CanonicalEvent::ProductUpserted { runs, .. } => runs,
        other => panic!("not a product: {other:?}"),
    }
}

fn course_fields(event: CanonicalEvent) -> Course {
    match event {
        CanonicalEvent::ProductUpserted { course, .. } | CanonicalEvent::CourseUpserted { course } => course,
        other => panic!("no course: {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// The shipped sources and their examples
// ---------------------------------------------------------------------------

#[test]
fn the_shipped_sources_load_with_their_quotas() {
    let sources = sources();
    assert_eq!(sources.names().collect::<Vec<_>>(), [BOOTCAMP, EXEC_ED]);
    assert_eq!(transformer(EXEC_ED).quota(), Quota { rate_per_second: 20, burst: 40 });
    assert_eq!(transformer(BOOTCAMP).quota(), Quota { rate_per_second: 5, burst: 10 });
    assert_eq!(transformer(EXEC_ED).name(), EXEC_ED);
}

#[test]
fn an_unknown_source_has_no_transformer() {
    assert!(sources().get("degree-partner").is_none());
    assert!(sources().get("").is_none());
}

#[test]
fn every_example_payload_passes_both_steps() {
    for name in [EXEC_ED, BOOTCAMP] {
        let source = transformer(name);
        for event in EventName::ALL {
            let payload = example(name, event);
            let canonical = transformed(&source, event, &payload);
            let matches = matches!(
                (event, &canonical),
                (EventName::ProductUpserted, CanonicalEvent::ProductUpserted { .. })
                    | (EventName::CourseUpserted, CanonicalEvent::CourseUpserted { .. })
                    | (EventName::CourseRunUpserted, CanonicalEvent::CourseRunUpserted { .. })
                    | (EventName::InstructorUpserted, CanonicalEvent::InstructorUpserted { .. })
                    | (EventName::ProductRetired, CanonicalEvent::ProductRetired { .. })
            );
            assert!(matches, "{name} {event}: {canonical:?}");
        }
    }
}

#[test]
fn exec_ed_product_upserted_becomes_the_expected_product() {
    let event =
        transformed(&transformer(EXEC_ED), EventName::ProductUpserted, &example(EXEC_ED, EventName::ProductUpserted));
    let seat = |amount: &str, currency: &str, sku: &str| Seat {
        mode: "paid-executive-education".into(),
        price: Some(Price { currency_code: currency.into(), amount: amount.into() }),
        sku: sku.into(),
        upgrade_deadline: None,
    };
    let expected = CanonicalEvent::ProductUpserted {
        course: Course {
            product_key: "NorthbridgeX+LSC-201".into(),
            product_type: ProductType::ExecutiveEducation,
            title: "Leading Strategic Change".into(),
            org: "NorthbridgeX".into(),
            number: "LSC-201".into(),
            short_description:
                "Lead your organisation through strategic change with the frameworks senior executives use.".into(),
            long_description: "<p>Over six weeks you will diagnose resistance, build coalitions and sequence change \
                               initiatives, working on a live challenge from your own organisation.</p>"
                .into(),
            level: "advanced".into(),
            subjects: vec!["leadership".into(), "business-strategy".into()],
            languages: vec!["en-us".into(), "es-419".into()],
            effort: Some(Effort { min_hours_per_week: 4, max_hours_per_week: 6 }),
            length_weeks: Some(6),
            image_url: "https://media.northbridge.example/courses/lsc-201/card.jpg".into(),
        },
        instructors: vec![
            Instructor {
                instructor_key: "fac-1021".into(),
                given_name: "Maria".into(),
                family_name: "Gomez".into(),
                title: "Professor of Management".into(),
                organization: "Northbridge Business School".into(),
                bio: "Maria studies how large organisations adopt new strategies.".into(),
                image_url: "https://media.northbridge.example/faculty/fac-1021.jpg".into(),
            },
            Instructor {
                instructor_key: "fac-1187".into(),
                given_name: "Tom".into(),
                family_name: "Okafor".into(),
                title: "Executive Fellow".into(),
                organization: "Northbridge Business School".into(),
                bio: String::new(),
                image_url: String::new(),
            },
        ],
        runs: vec![
            CourseRun {
                course_run_key: "course-v1:NorthbridgeX+LSC-201+2026-03".into(),
                start: day(2026, 3, 2),
                end: day(2026, 4, 13),
                enrollment_end: Some(day(2026, 2, 23)),
                pacing: Pacing::InstructorPaced,
                run_type: "paid-executive-education".into(),
                seats: vec![seat("2450.00", "USD", "EE-LSC201-2026-03")],
            },
            CourseRun {
                course_run_key: "course-v1:NorthbridgeX+LSC-201+2026-SP".into(),
                start: day(2026, 5, 4),
                end: day(2026, 8, 31),
                enrollment_end: None,
                pacing: Pacing::SelfPaced,
                run_type: "paid-executive-education".into(),
                seats: vec![seat("1950", "EUR", "EE-LSC201-2026-SP")],
            },
            CourseRun {
                course_run_key: "course-v1:NorthbridgeX+LSC-201+ON-DEMAND".into(),
                start: day(2026, 1, 5),
                end: day(2099, 12, 31),
                enrollment_end: None,
                pacing: Pacing::SelfPaced,
                run_type: "paid-executive-education".into(),
                seats: vec![seat("2450.00", "USD", "EE-LSC201-ON-DEMAND")],
            },
        ],
    };
    assert_eq!(event, expected);
}

#[test]
fn exec_ed_course_run_and_retirement_become_the_expected_events() {
    let source = transformer(EXEC_ED);
    let event = transformed(&source, EventName::CourseRunUpserted, &example(EXEC_ED, EventName::CourseRunUpserted));
    let expected = CanonicalEvent::CourseRunUpserted {
        product_key: "NorthbridgeX+LSC-201".into(),
        run: CourseRun {
            course_run_key: "course-v1:NorthbridgeX+LSC-201+ON-DEMAND".into(),
            start: day(2026, 1, 5),
            end: day(2099, 12, 31),
            enrollment_end: None,
            pacing: Pacing::SelfPaced,
            run_type: "paid-executive-education".into(),
            seats: vec![Seat {
                mode: "paid-executive-education".into(),
                price: Some(Price { currency_code: "USD".into(), amount: "2650.00".into() }),
                sku: "EE-LSC201-ON-DEMAND".into(),
                upgrade_deadline: None,
            }],
        },
    };
    assert_eq!(event, expected);
    let retired = transformed(&source, EventName::ProductRetired, &example(EXEC_ED, EventName::ProductRetired));
    assert_eq!(retired, CanonicalEvent::ProductRetired { product_key: "NorthbridgeX+LSC-201".into() });
}

#[test]
fn bootcamp_product_upserted_becomes_the_expected_product() {
    let event =
        transformed(&transformer(BOOTCAMP), EventName::ProductUpserted, &example(BOOTCAMP, EventName::ProductUpserted));
    let seat = |amount: &str, sku: &str| Seat {
        mode: "paid-bootcamp".into(),
        price: Some(Price { currency_code: "USD".into(), amount: amount.into() }),
        sku: sku.into(),
        upgrade_deadline: None,
    };
    let expected = CanonicalEvent::ProductUpserted {
        course: Course {
            product_key: "BootcampHub+data-science".into(),
            product_type: ProductType::Bootcamp,
            title: "Data Science Bootcamp".into(),
            org: "BootcampHub".into(),
            number: "data-science".into(),
            short_description: "Go from spreadsheets to production machine-learning models in 24 weeks.".into(),
            long_description: "<p>Python, SQL, statistics and machine learning, taught through weekly projects \
                               reviewed by working data scientists.</p>"
                .into(),
            level: "introductory".into(),
            subjects: vec!["data-science".into(), "machine-learning".into()],
            languages: vec!["en-us".into()],
            effort: Some(Effort { min_hours_per_week: 20, max_hours_per_week: 25 }),
            length_weeks: Some(24),
            image_url: "https://cdn.bootcamphub.example/img/data-science.jpg".into(),
        },
        instructors: vec![Instructor {
            instructor_key: "bootcamp-hub-3301".into(),
            given_name: "Ada".into(),
            family_name: "Nwosu".into(),
            title: "Lead Data Scientist".into(),
            organization: "Ledgerline".into(),
            bio: "Ada builds fraud models and has taught 14 cohorts.".into(),
            image_url: "https://cdn.bootcamphub.example/people/3301.jpg".into(),
        }],
        runs: vec![
            CourseRun {
                course_run_key: "course-v1:BootcampHub+data-science+2026-01-FT".into(),
                start: day(2026, 1, 12),
                end: day(2026, 6, 26),
                enrollment_end: Some(day(2026, 1, 2)),
                pacing: Pacing::InstructorPaced,
                run_type: "paid-bootcamp".into(),
                seats: vec![seat("12999.00", "BH-DS-2026-01-FT")],
            },
            CourseRun {
                course_run_key: "course-v1:BootcampHub+data-science+2026-03-FLEX".into(),
                start: day(2026, 3, 9),
                end: day(2026, 9, 25),
                enrollment_end: None,
                pacing: Pacing::SelfPaced,
                run_type: "paid-bootcamp".into(),
                seats: vec![seat("9999.00", "BH-DS-2026-03-FLEX")],
            },
        ],
    };
    assert_eq!(event, expected);
}

#[test]
fn bootcamp_instructor_course_and_retirement_become_the_expected_events() {
    let source = transformer(BOOTCAMP);
    let event = transformed(&source, EventName::InstructorUpserted, &example(BOOTCAMP, EventName::InstructorUpserted));
    let expected = CanonicalEvent::InstructorUpserted {
        instructor: Instructor {
            instructor_key: "bootcamp-hub-3301".into(),
            given_name: "Ada".into(),
            family_name: "Nwosu".into(),
            title: "Lead Data Scientist".into(),
            organization: "Ledgerline".into(),
            bio: "Ada builds fraud models and has taught 14 cohorts.".into(),
            image_url: "https://cdn.bootcamphub.example/people/3301.jpg".into(),
        },
    };
    assert_eq!(event, expected);
    let course =
        course_fields(transformed(&source, EventName::CourseUpserted, &example(BOOTCAMP, EventName::CourseUpserted)));
    assert_eq!(
        course,
        Course {
            product_key: "BootcampHub+data-science".into(),
            product_type: ProductType::Bootcamp,
            title: "Data Science Bootcamp".into(),
            org: "BootcampHub".into(),
            number: "data-science".into(),
            short_description: "Go from spreadsheets to production machine-learning models in 24 weeks.".into(),
            long_description: String::new(),
            level: "intermediate".into(),
            subjects: vec!["data-science".into()],
            languages: vec![],
            effort: Some(Effort { min_hours_per_week: 15, max_hours_per_week: 20 }),
            length_weeks: Some(30),
            image_url: String::new(),
        }
    );
    let retired = transformed(&source, EventName::ProductRetired, &example(BOOTCAMP, EventName::ProductRetired));
    assert_eq!(retired, CanonicalEvent::ProductRetired { product_key: "BootcampHub+data-science".into() });
}

// ---------------------------------------------------------------------------
// Coercions, value maps, defaults, templates
// ---------------------------------------------------------------------------

#[test]
fn date_strings_coerce_with_their_format() {
    let source = transformer(EXEC_ED);
    let payload = example(EXEC_ED, EventName::ProductUpserted);
    let first = &runs(transformed(&source, EventName::ProductUpserted, &payload))[0];
    assert_eq!(
        (first.start, first.end, first.enrollment_end),
        (day(2026, 3, 2), day(2026, 4, 13), Some(day(2026, 2, 23)))
    );
    for bad in ["2026-02-30", "03/02/2026", "2026-03-02T10:00:00Z"] {
        let payload = with(payload.clone(), "/variants/0/starts_on", json!(bad));
        let violations = transform_fails(&source, EventName::ProductUpserted, &payload);
        assert_eq!(paths(&violations), ["variants[0].starts_on"], "{bad}");
        assert!(violations[0].reason.contains("%Y-%m-%d"), "{violations:?}");
    }
    // A date format takes strings only: a number is the wrong shape (VALIDATE).
    let payload = with(payload, "/variants/0/starts_on", json!(20260302));
    assert_eq!(paths(&check_fails(&source, EventName::ProductUpserted, &payload)), ["variants[0].starts_on"]);
}

#[test]
fn epoch_seconds_coerce_from_numbers_strings_and_doubles() {
    let source = transformer(BOOTCAMP);
    let payload = example(BOOTCAMP, EventName::CourseRunUpserted);
    let start_of = |payload: &Value| match transformed(&source, EventName::CourseRunUpserted, payload) {
        CanonicalEvent::CourseRunUpserted { run, .. } => run.start,
        other => panic!("{other:?}"),
    };
    assert_eq!(start_of(&payload), at(1790294400));
    assert_eq!(start_of(&with(payload.clone(), "/startTs", json!("1790294400"))), at(1790294400));
    // What protobuf's Struct delivers: every number a double.
    assert_eq!(start_of(&with(payload.clone(), "/startTs", json!(1790294400.0))), at(1790294400));
    for (bad, reason) in [
        (json!(1790294400.5), "whole number"),
        (json!(1e300), "exponent"),
        (json!("99999999999999999"), "out of range"),
        (json!("next monday"), "whole number"),
    ] {
        let violations =
            transform_fails(&source, EventName::CourseRunUpserted, &with(payload.clone(), "/startTs", bad));
        assert_eq!(paths(&violations), ["startTs"]);
        assert!(violations[0].reason.contains(reason), "{violations:?}");
    }
}

#[test]
fn prices_coerce_to_exact_decimals() {
    let source = transformer(EXEC_ED);
    let payload = example(EXEC_ED, EventName::CourseRunUpserted);
    let price_of = |amount: Value| match transformed(
        &source,
        EventName::CourseRunUpserted,
        &with(payload.clone(), "/variant/price/amount", amount),
    ) {
        CanonicalEvent::CourseRunUpserted { run, .. } => run.seats[0].price.clone().unwrap().amount,
        other => panic!("{other:?}"),
    };
    assert_eq!(price_of(json!("2,450.00")), "2450.00");
    assert_eq!(price_of(json!("12,345,678.5")), "12345678.5");
    assert_eq!(price_of(json!("2450")), "2450");
    assert_eq!(price_of(json!(2450)), "2450");
    assert_eq!(price_of(json!(2450.0)), "2450");
    assert_eq!(price_of(json!(2450.1)), "2450.1");
    assert_eq!(price_of(json!(0)), "0");
    for bad in [json!("2.450,00"), json!("24,50.00"), json!("1e3"), json!(1e21), json!("USD 2450"), json!("NaN")] {
        let violations = transform_fails(
            &source,
            EventName::CourseRunUpserted,
            &with(payload.clone(), "/variant/price/amount", bad),
        );
        assert_eq!(paths(&violations), ["variant.price.amount"], "{violations:?}");
    }
}

#[test]
fn cents_coerce_with_a_scale() {
    let source = transformer(BOOTCAMP);
    let payload = example(BOOTCAMP, EventName::CourseRunUpserted);
    let price_of = |cents: Value| match transformed(
        &source,
        EventName::CourseRunUpserted,
        &with(payload.clone(), "/priceCents", cents),
    ) {
        CanonicalEvent::CourseRunUpserted { run, .. } => run.seats[0].price.clone().unwrap().amount,
        other => panic!("{other:?}"),
    };
    assert_eq!(price_of(json!(1299900)), "12999.00");
    assert_eq!(price_of(json!(1299900.0)), "12999.00");
    assert_eq!(price_of(json!("1299900")), "12999.00");
    assert_eq!(price_of(json!(5)), "0.05");
    assert_eq!(price_of(json!(0)), "0.00");
    for bad in [json!(12.5), json!("12.5"), json!("twelve")] {
        let violations =
            transform_fails(&source, EventName::CourseRunUpserted, &with(payload.clone(), "/priceCents", bad));
        assert_eq!(paths(&violations), ["priceCents"], "{violations:?}");
    }
}

#[test]
fn integers_coerce_from_numbers_and_strings() {
    let source = transformer(EXEC_ED);
    let payload = example(EXEC_ED, EventName::CourseUpserted);
    let weeks_of = |weeks: Value| {
        course_fields(transformed(
            &source,
            EventName::CourseUpserted,
            &with(payload.clone(), "/course/duration_weeks", weeks),
        ))
        .length_weeks
    };
    assert_eq!(weeks_of(json!(6)), Some(6));
    assert_eq!(weeks_of(json!("6")), Some(6));
    assert_eq!(weeks_of(json!(6.0)), Some(6));
    assert_eq!(weeks_of(json!(null)), None);
    assert_eq!(weeks_of(json!("")), None);
    for (bad, reason) in
        [(json!("6.5"), "whole number"), (json!("six"), "whole number"), (json!(99999999999u64), "range")]
    {
        let violations =
            transform_fails(&source, EventName::CourseUpserted, &with(payload.clone(), "/course/duration_weeks", bad));
        assert_eq!(paths(&violations), ["course.duration_weeks"]);
        assert!(violations[0].reason.contains(reason), "{violations:?}");
    }
    let violations =
        check_fails(&source, EventName::CourseUpserted, &with(payload, "/course/duration_weeks", json!([6])));
    assert_eq!(paths(&violations), ["course.duration_weeks"]);
    assert!(violations[0].reason.contains("got a list"), "{violations:?}");
}

#[test]
fn currencies_are_upper_cased_and_default() {
    let source = transformer(EXEC_ED);
    let payload = example(EXEC_ED, EventName::CourseRunUpserted);
    let currency_of = |payload: Value| match transformed(&source, EventName::CourseRunUpserted, &payload) {
        CanonicalEvent::CourseRunUpserted { run, .. } => run.seats[0].price.clone().unwrap().currency_code,
        other => panic!("{other:?}"),
    };
    assert_eq!(currency_of(with(payload.clone(), "/variant/price/currency", json!(" eur "))), "EUR");
    assert_eq!(currency_of(with(payload.clone(), "/variant/price/currency", json!(null))), "USD");
    assert_eq!(currency_of(without(payload.clone(), "/variant/price/currency")), "USD");
    let violations =
        check_fails(&source, EventName::CourseRunUpserted, &with(payload, "/variant/price/currency", json!(840)));
    assert_eq!(paths(&violations), ["variant.price.currency"]);
}

#[test]
fn split_lists_are_split_trimmed_and_mapped() {
    let source = transformer(EXEC_ED);
    let payload = example(EXEC_ED, EventName::CourseUpserted);
    let languages_of = |languages: Value| {
        course_fields(transformed(
            &source,
            EventName::CourseUpserted,
            &with(payload.clone(), "/course/languages", languages),
        ))
        .languages
    };
    assert_eq!(languages_of(json!("English, Spanish")), ["en-us", "es-419"]);
    assert_eq!(languages_of(json!(" french ,, GERMAN ")), ["fr-fr", "de-de"]);
    // A list is taken as it is, element by element, through the same map.
    assert_eq!(languages_of(json!(["English", "French, German"])), ["en-us", "fr-fr", "de-de"]);
    assert_eq!(languages_of(json!("")), Vec::<String>::new());
    let violations = transform_fails(
        &source,
        EventName::CourseUpserted,
        &with(payload, "/course/languages", json!("English, Klingon")),
    );
    assert_eq!(paths(&violations), ["course.languages"]);
    assert!(
        violations[0].reason.contains("\"Klingon\" is not one of: english, french, german, spanish"),
        "{violations:?}"
    );
}

#[test]
fn wildcard_paths_collect_lists() {
    let source = transformer(EXEC_ED);
    let payload = example(EXEC_ED, EventName::CourseUpserted);
    let topics = json!([{ "slug": "finance" }, { "name": "no slug" }, { "slug": "ethics" }]);
    let course = course_fields(transformed(
        &source,
        EventName::CourseUpserted,
        &with(payload.clone(), "/course/topics", topics),
    ));
    assert_eq!(course.subjects, ["finance", "ethics"]);
    let violations = check_fails(
        &source,
        EventName::CourseUpserted,
        &with(payload, "/course/topics", json!([{ "slug": { "x": 1 } }])),
    );
    assert_eq!(paths(&violations), ["course.topics[0].slug"]);
}

#[test]
fn value_maps_ignore_case_and_refuse_unknown_values() {
    let source = transformer(EXEC_ED);
    let payload = example(EXEC_ED, EventName::ProductUpserted);
    let paced = |pace: &str| {
        runs(transformed(&source, EventName::ProductUpserted, &with(payload.clone(), "/variants/0/pace", json!(pace))))
            [0]
        .pacing
    };
    assert_eq!(paced("self-paced"), Pacing::SelfPaced);
    assert_eq!(paced("Self-Paced"), Pacing::SelfPaced);
    assert_eq!(paced("  INSTRUCTOR-LED "), Pacing::InstructorPaced);
    let level = course_fields(transformed(
        &source,
        EventName::ProductUpserted,
        &with(payload.clone(), "/course/level", json!("FOUNDATION")),
    ))
    .level;
    assert_eq!(level, "introductory");
    let violations =
        transform_fails(&source, EventName::ProductUpserted, &with(payload, "/variants/1/pace", json!("hybrid")));
    assert_eq!(paths(&violations), ["variants[1].pace"]);
    assert_eq!(violations[0].reason, "\"hybrid\" is not one of: instructor-led, self-paced");
    let bootcamp = transformer(BOOTCAMP);
    let payload = example(BOOTCAMP, EventName::CourseRunUpserted);
    for (format, pacing) in [("flex", Pacing::SelfPaced), ("Live-Online", Pacing::InstructorPaced)] {
        match transformed(&bootcamp, EventName::CourseRunUpserted, &with(payload.clone(), "/format", json!(format))) {
            CanonicalEvent::CourseRunUpserted { run, .. } => assert_eq!(run.pacing, pacing),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn defaults_fill_what_the_payload_leaves_out() {
    let bootcamp = transformer(BOOTCAMP);
    let payload = example(BOOTCAMP, EventName::ProductUpserted);
    let event = transformed(&bootcamp, EventName::ProductUpserted, &payload);
    let CanonicalEvent::ProductUpserted { course, runs, .. } = event else { panic!() };
    // Constant org, the file's product type, the seat's mode and run type; the
    // second cohort has no currency.
    assert_eq!((course.org.as_str(), course.product_type), ("BootcampHub", ProductType::Bootcamp));
    assert_eq!((runs[1].run_type.as_str(), runs[1].seats[0].mode.as_str()), ("paid-bootcamp", "paid-bootcamp"));
    assert_eq!(runs[1].seats[0].price.as_ref().map(|p| p.currency_code.as_str()), Some("USD"));
    // Optional fields that are absent, null or blank stay empty.
    let sparse = without(without(with(payload, "/overviewHtml", json!("   ")), "/heroImageUrl"), "/lengthWeeks");
    let course =
        course_fields(transformed(&bootcamp, EventName::ProductUpserted, &with(sparse, "/difficulty", json!(null))));
    assert_eq!(
        (course.long_description.as_str(), course.image_url.as_str(), course.length_weeks, course.level.as_str()),
        ("", "", None, "")
    );
}

#[test]
fn templates_compose_keys_from_strings_and_whole_numbers() {
    let bootcamp = transformer(BOOTCAMP);
    let payload = example(BOOTCAMP, EventName::InstructorUpserted);
    let key_of = |id: Value| match transformed(
        &bootcamp,
        EventName::InstructorUpserted,
        &with(payload.clone(), "/instructorId", id),
    ) {
        CanonicalEvent::InstructorUpserted { instructor } => instructor.instructor_key,
        other => panic!("{other:?}"),
    };
    assert_eq!(key_of(json!(3301)), "bootcamp-hub-3301");
    assert_eq!(key_of(json!(3301.0)), "bootcamp-hub-3301");
    assert_eq!(key_of(json!(" A-17 ")), "bootcamp-hub-A-17");
    for bad in [json!(33.5), json!({ "id": 1 }), json!(true)] {
        let violations =
            check_fails(&bootcamp, EventName::InstructorUpserted, &with(payload.clone(), "/instructorId", bad));
        assert_eq!(paths(&violations), ["instructorId"], "{violations:?}");
    }
}

// ---------------------------------------------------------------------------
// VALIDATE: required paths, named as the source spells them
// ---------------------------------------------------------------------------

/// Every `required` rule of the shipped files: (source, event, JSON pointer removed, path named, reason).
const REQUIRED: &[(&str, EventName, &str, &str, &str)] = &[
    (EXEC_ED, EventName::ProductUpserted, "/course/org", "course.org", "is required"),
    (EXEC_ED, EventName::ProductUpserted, "/course/code", "course.code", "is required"),
    (EXEC_ED, EventName::ProductUpserted, "/course/title", "course.title", "is required"),
    (EXEC_ED, EventName::ProductUpserted, "/course/summary", "course.summary", "is required"),
    (EXEC_ED, EventName::ProductUpserted, "/course/faculty/1/id", "course.faculty[1].id", "is required"),
    (EXEC_ED, EventName::ProductUpserted, "/course/faculty/0/last_name", "course.faculty[0].last_name", "is required"),
    (EXEC_ED, EventName::ProductUpserted, "/variants", "variants", "needs at least one element"),
    (EXEC_ED, EventName::ProductUpserted, "/variants/1/id", "variants[1].id", "is required"),
    (EXEC_ED, EventName::ProductUpserted, "/variants/0/starts_on", "variants[0].starts_on", "is required"),
    (EXEC_ED, EventName::ProductUpserted, "/variants/1/ends_on", "variants[1].ends_on", "is required"),
    (EXEC_ED, EventName::ProductUpserted, "/variants/1/pace", "variants[1].pace", "is required"),
    (EXEC_ED, EventName::CourseUpserted, "/course/org", "course.org", "is required"),
    (EXEC_ED, EventName::CourseUpserted, "/course/code", "course.code", "is required"),
    (EXEC_ED, EventName::CourseUpserted, "/course/title", "course.title", "is required"),
    (EXEC_ED, EventName::CourseUpserted, "/course/summary", "course.summary", "is required"),
    (EXEC_ED, EventName::CourseRunUpserted, "/course/org", "course.org", "is required"),
    (EXEC_ED, EventName::CourseRunUpserted, "/course/code", "course.code", "is required"),
    (EXEC_ED, EventName::CourseRunUpserted, "/variant/id", "variant.id", "is required"),
    (EXEC_ED, EventName::CourseRunUpserted, "/variant/starts_on", "variant.starts_on", "is required"),
    (EXEC_ED, EventName::CourseRunUpserted, "/variant/ends_on", "variant.ends_on", "is required"),
    (EXEC_ED, EventName::CourseRunUpserted, "/variant/pace", "variant.pace", "is required"),
    (EXEC_ED, EventName::InstructorUpserted, "/faculty/id", "faculty.id", "is required"),
    (EXEC_ED, EventName::InstructorUpserted, "/faculty/last_name", "faculty.last_name", "is required"),
    (EXEC_ED, EventName::ProductRetired, "/course/org", "course.org", "is required"),
    (EXEC_ED, EventName::ProductRetired, "/course/code", "course.code", "is required"),
    (BOOTCAMP, EventName::ProductUpserted, "/bootcampSlug", "bootcampSlug", "is required"),
    (BOOTCAMP, EventName::ProductUpserted, "/title", "title", "is required"),
    (BOOTCAMP, EventName::ProductUpserted, "/tagline", "tagline", "is required"),
    (BOOTCAMP, EventName::ProductUpserted, "/instructors/0/instructorId", "instructors[0].instructorId", "is required"),
    (BOOTCAMP, EventName::ProductUpserted, "/instructors/0/firstName", "instructors[0].firstName", "is required"),
    (BOOTCAMP, EventName::ProductUpserted, "/instructors/0/lastName", "instructors[0].lastName", "is required"),
    (BOOTCAMP, EventName::ProductUpserted, "/cohorts", "cohorts", "needs at least one element"),
    (BOOTCAMP, EventName::ProductUpserted, "/cohorts/1/cohortCode", "cohorts[1].cohortCode", "is required"),
    (BOOTCAMP, EventName::ProductUpserted, "/cohorts/0/startTs", "cohorts[0].startTs", "is required"),
    (BOOTCAMP, EventName::ProductUpserted, "/cohorts/1/endTs", "cohorts[1].endTs", "is required"),
    (BOOTCAMP, EventName::ProductUpserted, "/cohorts/0/format", "cohorts[0].format", "is required"),
    (BOOTCAMP, EventName::CourseUpserted, "/bootcampSlug", "bootcampSlug", "is required"),
    (BOOTCAMP, EventName::CourseUpserted, "/title", "title", "is required"),
    (BOOTCAMP, EventName::CourseUpserted, "/tagline", "tagline", "is required"),
    (BOOTCAMP, EventName::CourseRunUpserted, "/bootcampSlug", "bootcampSlug", "is required"),
    (BOOTCAMP, EventName::CourseRunUpserted, "/cohortCode", "cohortCode", "is required"),
    (BOOTCAMP, EventName::CourseRunUpserted, "/startTs", "startTs", "is required"),
    (BOOTCAMP, EventName::CourseRunUpserted, "/endTs", "endTs", "is required"),
    (BOOTCAMP, EventName::CourseRunUpserted, "/format", "format", "is required"),
    (BOOTCAMP, EventName::InstructorUpserted, "/instructorId", "instructorId", "is required"),
    (BOOTCAMP, EventName::InstructorUpserted, "/firstName", "firstName", "is required"),
    (BOOTCAMP, EventName::InstructorUpserted, "/lastName", "lastName", "is required"),
    (BOOTCAMP, EventName::ProductRetired, "/bootcampSlug", "bootcampSlug", "is required"),
];

#[test]
fn every_required_path_fails_validate_with_its_source_path() {
    for &(name, event, pointer, path, reason) in REQUIRED {
        let source = transformer(name);
        let payload = example(name, event);
        let missing = check_fails(&source, event, &without(payload.clone(), pointer));
        assert_eq!(
            missing,
            [Violation { field_path: path.into(), reason: reason.into() }],
            "{name} {event} without {pointer}"
        );
        let null = check_fails(&source, event, &with(payload.clone(), pointer, Value::Null));
        assert_eq!(paths(&null), [path], "{name} {event} with {pointer} null");
        // Blank strings are missing values too.
        if reason == "is required" {
            let blank = check_fails(&source, event, &with(payload, pointer, json!("  ")));
            assert_eq!(blank, [Violation { field_path: path.into(), reason: "must not be empty".into() }]);
        }
    }
}

#[test]
fn an_empty_list_is_a_missing_list() {
    let source = transformer(EXEC_ED);
    let payload = with(example(EXEC_ED, EventName::ProductUpserted), "/variants", json!([]));
    let violations = check_fails(&source, EventName::ProductUpserted, &payload);
    assert_eq!(violations, [Violation { field_path: "variants".into(), reason: "needs at least one element".into() }]);
}

#[test]
fn values_of_the_wrong_shape_fail_validate() {
    let source = transformer(EXEC_ED);
    let payload = example(EXEC_ED, EventName::ProductUpserted);
    for (pointer, value, path, reason) in [
        ("/variants", json!({ "id": "x" }), "variants", "must be a list, got an object"),
        ("/variants/1", json!("2026-SP"), "variants[1]", "must be an object, got a string"),
        ("/course", json!(["NorthbridgeX"]), "course", "must be an object, got a list"),
        ("/course/title", json!({ "en": "Leading" }), "course.title", "must be a string or a number, got an object"),
        ("/course/effort", json!(4), "course.effort", "must be an object, got a number"),
        ("/variants/0/price", json!("2,450.00 USD"), "variants[0].price", "must be an object, got a string"),
    ] {
        let violations = check_fails(&source, EventName::ProductUpserted, &with(payload.clone(), pointer, value));
        assert_eq!(violations, [Violation { field_path: path.into(), reason: reason.into() }], "{pointer}");
    }
    let root = check_fails(&source, EventName::ProductRetired, &json!("NorthbridgeX+LSC-201"));
    assert_eq!(root, [Violation { field_path: "$".into(), reason: "must be an object, got a string".into() }]);
}

#[test]
fn validate_reports_every_violation() {
    let source = transformer(EXEC_ED);
    let payload = example(EXEC_ED, EventName::ProductUpserted);
    let payload = without(without(without(payload, "/course/title"), "/variants/0/starts_on"), "/variants/1/pace");
    let payload = with(payload, "/course/faculty/1/id", json!(["fac"]));
    let violations = check_fails(&source, EventName::ProductUpserted, &payload);
    assert_eq!(
        paths(&violations),
        ["course.title", "course.faculty[1].id", "variants[0].starts_on", "variants[1].pace"]
    );
    // Without its course object, every required course path is named once.
    let violations = check_fails(
        &source,
        EventName::ProductUpserted,
        &without(example(EXEC_ED, EventName::ProductUpserted), "/course"),
    );
    assert_eq!(paths(&violations), ["course.org", "course.code", "course.title", "course.summary"]);
}

#[test]
fn an_event_the_source_does_not_map_fails_validate() {
    let sources = Sources::from_files([("lab.toml".to_string(), LAB.to_string())]).unwrap();
    let lab = sources.get("lab").unwrap();
    let violations = check_fails(lab, EventName::ProductRetired, &json!({}));
    assert_eq!(paths(&violations), ["event_name"]);
    assert!(violations[0].reason.contains("no mapping for product.retired"), "{violations:?}");
}

#[test]
fn payloads_nested_too_deep_fail_validate() {
    let source = transformer(EXEC_ED);
    let mut deep = json!("bottom");
    for _ in 0..500 {
        deep = json!({ "nested": deep });
    }
    let payload = with(example(EXEC_ED, EventName::ProductUpserted), "/course/description", deep);
    let violations = check_fails(&source, EventName::ProductUpserted, &payload);
    assert_eq!(paths(&violations), ["$"]);
    assert!(violations[0].reason.contains("deeper than 64"), "{violations:?}");
}

#[test]
fn violations_are_capped() {
    let source = transformer(BOOTCAMP);
    let cohorts: Vec<Value> = (0..500).map(|i| json!({ "cohortCode": format!("c{i}") })).collect();
    let payload = with(example(BOOTCAMP, EventName::ProductUpserted), "/cohorts", Value::Array(cohorts));
    let violations = check_fails(&source, EventName::ProductUpserted, &payload);
    assert_eq!(violations.len(), MAX_VIOLATIONS + 1);
    assert_eq!(violations[0].field_path, "cohorts[0].startTs");
    assert_eq!(violations[MAX_VIOLATIONS].reason, "1400 more violations not listed");
}

// ---------------------------------------------------------------------------
// TRANSFORM: the canonical model's rules, at canonical paths
// ---------------------------------------------------------------------------

#[test]
fn a_run_ending_before_it_starts_fails_transform_at_the_canonical_path() {
    let source = transformer(EXEC_ED);
    let payload = with(example(EXEC_ED, EventName::ProductUpserted), "/variants/1/ends_on", json!("2026-05-01"));
    let violations = transform_fails(&source, EventName::ProductUpserted, &payload);
    assert_eq!(paths(&violations), ["course_runs[1].end"]);
    let bootcamp = transformer(BOOTCAMP);
    let payload = with(example(BOOTCAMP, EventName::CourseRunUpserted), "/endTs", json!(1790294400));
    assert_eq!(paths(&transform_fails(&bootcamp, EventName::CourseRunUpserted, &payload)), ["course_run.end"]);
}

#[test]
fn a_paid_seat_without_a_price_fails_transform() {
    let source = transformer(EXEC_ED);
    let payload = without(example(EXEC_ED, EventName::ProductUpserted), "/variants/0/price");
    let violations = transform_fails(&source, EventName::ProductUpserted, &payload);
    assert_eq!(
        violations,
        [Violation {
            field_path: "course_runs[0].seats[0].price".into(),
            reason: "is required for a paid seat".into()
        }]
    );
}

#[test]
fn unknown_currencies_and_negative_prices_fail_transform() {
    let source = transformer(EXEC_ED);
    let payload = with(example(EXEC_ED, EventName::ProductUpserted), "/variants/1/price/currency", json!("doubloons"));
    let payload = with(payload, "/variants/0/price/amount", json!("-2,450.00"));
    let violations = transform_fails(&source, EventName::ProductUpserted, &payload);
    assert_eq!(
        paths(&violations),
        ["course_runs[0].seats[0].price.amount", "course_runs[1].seats[0].price.currency_code"]
    );
    assert!(violations[1].reason.contains("DOUBLOONS"), "{violations:?}");
}

#[test]
fn effort_and_length_rules_fail_transform() {
    let source = transformer(BOOTCAMP);
    let payload = with(example(BOOTCAMP, EventName::CourseUpserted), "/hoursPerWeekMin", json!(30));
    let payload = with(payload, "/lengthWeeks", json!(0));
    assert_eq!(paths(&transform_fails(&source, EventName::CourseUpserted, &payload)), ["effort", "length_weeks"]);
    // Half an effort range is a mapping problem at the missing source path.
    let payload = without(example(BOOTCAMP, EventName::CourseUpserted), "/hoursPerWeekMax");
    assert_eq!(paths(&transform_fails(&source, EventName::CourseUpserted, &payload)), ["hoursPerWeekMax"]);
}

#[test]
fn transform_reports_every_violation_and_none_caused_by_stand_ins() {
    let source = transformer(EXEC_ED);
    let payload = example(EXEC_ED, EventName::ProductUpserted);
    let payload = with(payload, "/course/duration_weeks", json!("six"));
    let payload = with(payload, "/variants/0/ends_on", json!("13/04/2026"));
    let payload = with(payload, "/variants/1/pace", json!("hybrid"));
    let payload = with(payload, "/variants/1/price/currency", json!("xyz"));
    let violations = transform_fails(&source, EventName::ProductUpserted, &payload);
    // The failed end is not also reported as "not after start", nor its
    // enrollment end as after the (stand-in) end; the other run's seat is judged.
    assert_eq!(
        paths(&violations),
        [
            "course.duration_weeks",
            "variants[0].ends_on",
            "variants[1].pace",
            "course_runs[1].seats[0].price.currency_code"
        ]
    );
}

// ---------------------------------------------------------------------------
// Loading source files
// ---------------------------------------------------------------------------

/// A small source exercising what the shipped ones do not: RFC 3339 and
/// date-time patterns, booleans through a map, seat lists, absolute and indexed
/// paths, a custom separator, a product type map, list defaults.
const LAB: &str = r#"
source = "lab"
product_type = "COURSE"

[quota]
rate_per_second = 1
burst = 1

[events."course.upserted".course]
product_key = { template = "{org}+{number}" }
product_type = { path = "kind", map = { mooc = "COURSE", "exec-ed" = "EXECUTIVE_EDUCATION" } }
org = "org"
number = "number"
title = "names[0]"
short_description = "$.blurb"
subjects = { path = "tags", coerce = "split", separator = "|" }
languages = { path = "langs", default = ["en-us"] }

[events."course_run.upserted"]
product_key = "product"

[events."course_run.upserted".run]
at = "run"
course_run_key = "key"
start = { path = "start", required = true }
end = { path = "end", coerce = "date", format = "%d/%m/%Y %H:%M", required = true }
pacing = { path = "self_paced", map = { true = "SELF_PACED", false = "INSTRUCTOR_PACED" }, required = true }

[events."course_run.upserted".run.seats]
list = "offers"
mode = "mode"
price.amount = "cost"
price.currency_code = { path = "ccy", coerce = "string" }
upgrade_deadline = { path = "upgrade_by", coerce = "date", format = "%Y-%m-%dT%H:%M:%S%z" }
"#;

fn lab() -> SourceTransformer {
    Sources::from_files([("lab.toml".to_string(), LAB.to_string())]).unwrap().get("lab").cloned().unwrap()
}

#[test]
fn the_lab_source_covers_the_remaining_directives() {
    let lab = lab();
    let payload = json!({
        "run": {
            "key": "course-v1:Lab+L1+R1",
            "start": "2026-01-05T09:30:00+01:00",
            "end": "31/03/2026 17:00",
            "self_paced": true,
            "offers": [
                { "mode": "audit" },
                { "mode": "verified", "cost": "49", "ccy": "GBP", "upgrade_by": "2026-02-01T00:00:00-0500" }
            ]
        },
        "product": "Lab+L1"
    });
    let expected = CanonicalEvent::CourseRunUpserted {
        product_key: "Lab+L1".into(),
        run: CourseRun {
            course_run_key: "course-v1:Lab+L1+R1".into(),
            start: Utc.with_ymd_and_hms(2026, 1, 5, 8, 30, 0).unwrap(),
            end: Utc.with_ymd_and_hms(2026, 3, 31, 17, 0, 0).unwrap(),
            enrollment_end: None,
            pacing: Pacing::SelfPaced,
            run_type: String::new(),
            seats: vec![
                Seat { mode: "audit".into(), price: None, sku: String::new(), upgrade_deadline: None },
                Seat {
                    mode: "verified".into(),
                    price: Some(Price { currency_code: "GBP".into(), amount: "49".into() }),
                    sku: String::new(),
                    upgrade_deadline: Some(Utc.with_ymd_and_hms(2026, 2, 1, 5, 0, 0).unwrap()),
                },
            ],
        },
    };
    assert_eq!(transformed(&lab, EventName::CourseRunUpserted, &payload), expected);
    let payload = with(payload, "/run/offers/1/mode", json!("audit"));
    assert_eq!(paths(&transform_fails(&lab, EventName::CourseRunUpserted, &payload)), ["course_run.seats[1].mode"]);

    let course = course_fields(transformed(
        &lab,
        EventName::CourseUpserted,
        &json!({ "org": "Lab", "number": "L1", "names": ["Lab one", "Other"], "blurb": "Short.", "kind": "Exec-Ed",
                 "tags": "a | b|c" }),
    ));
    assert_eq!(
        (course.product_key.as_str(), course.product_type, course.title.as_str(), course.short_description.as_str()),
        ("Lab+L1", ProductType::ExecutiveEducation, "Lab one", "Short.")
    );
    assert_eq!((course.subjects, course.languages), (vec!["a".into(), "b".into(), "c".into()], vec!["en-us".into()]));
}

/// The lab file with one line replaced.
fn lab_with(old: &str, new: &str) -> String {
    assert!(LAB.contains(old), "{old}");
    LAB.replace(old, new)
}

fn load(file: &str, text: &str) -> SourceConfigError {
    Sources::from_files([(file.to_string(), text.to_string())]).expect_err("loaded")
}

#[test]
fn a_malformed_file_fails_naming_the_file_and_the_key() {
    let error = load("lab.toml", &lab_with("rate_per_second = 1", "rate_per_second = \"fast\""));
    let message = error.to_string();
    assert!(matches!(error, SourceConfigError::Parse { .. }), "{error:?}");
    assert!(message.starts_with("lab.toml: ") && message.contains("rate_per_second"), "{message}");

    let message = load("lab.toml", &lab_with("burst = 1", "")).to_string();
    assert!(message.starts_with("lab.toml: ") && message.contains("missing field `burst`"), "{message}");

    let message = load("lab.toml", &lab_with("[quota]", "[quota")).to_string();
    assert!(message.starts_with("lab.toml: ") && message.contains("line 5"), "{message}");
}

#[test]
fn unknown_directives_are_refused() {
    for (old, new, unknown) in [
        ("org = \"org\"", "org = { path = \"org\", requird = true }", "requird"),
        ("org = \"org\"", "organisation = \"org\"", "organisation"),
        ("[events.\"course_run.upserted\"]", "[events.\"course_run.deleted\"]", "course_run.deleted"),
        ("burst = 1", "burst = 1\nceiling = 3", "ceiling"),
        ("source = \"lab\"", "source = \"lab\"\nowner = \"me\"", "owner"),
        ("list = \"offers\"", "each = \"offers\"", "each"),
    ] {
        let error = load("lab.toml", &lab_with(old, new));
        let message = error.to_string();
        assert!(matches!(error, SourceConfigError::Parse { .. }), "{new}: {error:?}");
        assert!(message.contains(&format!("unknown field `{unknown}`")), "{new}: {message}");
    }
}

#[test]
fn unusable_directive_values_are_refused_naming_the_key() {
    let run = r#"events."course_run.upserted".run"#;
    let course = r#"events."course.upserted".course"#;
    for (old, new, key) in [
        ("start = { path = \"start\", required = true }", "start = \"start\"", format!("{run}.start")),
        ("org = \"org\"", "org = { path = \"org\", coerce = \"date\" }", format!("{course}.org.coerce")),
        ("org = \"org\"", "org = \"org..name\"", format!("{course}.org.path")),
        ("org = \"org\"", "org = \"orgs[*]\"", format!("{course}.org.path")),
        ("org = \"org\"", "org = { template = \"{org\" }", format!("{course}.org.template")),
        ("org = \"org\"", "org = { }", format!("{course}.org")),
        ("org = \"org\"", "org = { path = \"org\", template = \"{org}\" }", format!("{course}.org")),
        (
            "org = \"org\"",
            "org = { path = \"org\", required = true, default = \"X\" }",
            format!("{course}.org.required"),
        ),
        ("org = \"org\"", "org = { path = \"org\", format = \"%Y\" }", format!("{course}.org.format")),
        ("org = \"org\"", "org = { path = \"org\", scale = 2 }", format!("{course}.org.scale")),
        (
            "org = \"org\"",
            "length_weeks = { path = \"w\", default = \"six\" }",
            format!("{course}.length_weeks.default"),
        ),
        ("org = \"org\"", "length_weeks = { template = \"{w}\" }", format!("{course}.length_weeks.template")),
        ("org = \"org\"", "org = { path = \"o\", map = { a = \"x\", A = \"y\" } }", format!("{course}.org.map")),
        ("format = \"%d/%m/%Y %H:%M\"", "format = \"%d/%m/%Q\"", format!("{run}.end.format")),
        (
            "map = { true = \"SELF_PACED\", false = \"INSTRUCTOR_PACED\" }",
            "map = { true = \"FAST\" }",
            format!("{run}.pacing.map.true"),
        ),
        ("at = \"run\"", "at = \"run\"\nrequired = true", format!("{run}.required")),
        ("list = \"offers\"", "list = \"offers\"\nat = \"offer\"", format!("{run}.seats")),
        ("at = \"run\"", "list = \"runs\"", format!("{run}.list")),
        (
            "price.amount = \"cost\"",
            "price.amount = { path = \"cost\", scale = 40 }",
            format!("{run}.seats.price.amount.scale"),
        ),
        (
            "price.currency_code = { path = \"ccy\", coerce = \"string\" }",
            "price.currency_code = { path = \"ccy\", default = \"XXX\" }",
            format!("{run}.seats.price.currency_code.default"),
        ),
        ("burst = 1", "burst = 0", "quota.burst".to_string()),
        ("product_type = \"COURSE\"", "product_type = \"COURSES\"", "product_type".to_string()),
    ] {
        let error = load("lab.toml", &lab_with(old, new));
        match &error {
            SourceConfigError::Invalid { file, key: got, .. } => {
                assert_eq!((file.as_str(), got.as_str()), ("lab.toml", key.as_str()), "{new}: {error}");
            }
            other => panic!("{new}: {other:?}"),
        }
        assert!(error.to_string().starts_with(&format!("lab.toml: {key}: ")), "{error}");
    }
}

#[test]
fn a_source_must_match_its_file_name() {
    match load("other.toml", LAB) {
        SourceConfigError::NameMismatch { file, declared, expected } => {
            assert_eq!((file.as_str(), declared.as_str(), expected.as_str()), ("other.toml", "lab", "other"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(load("lab.yaml", LAB), SourceConfigError::FileName { .. }));
    let upper = LAB.replace("source = \"lab\"", "source = \"Lab\"");
    assert!(matches!(load("Lab.toml", &upper), SourceConfigError::Invalid { key, .. } if key == "source"));
    let twice =
        Sources::from_files([("lab.toml".to_string(), LAB.to_string()), ("lab.toml".to_string(), LAB.to_string())]);
    assert!(matches!(twice, Err(SourceConfigError::Duplicate { .. })));
}

#[test]
fn load_dir_reads_every_toml_file_and_only_those() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lab.toml"), LAB).unwrap();
    std::fs::write(dir.path().join("notes.md"), "not a source").unwrap();
    std::fs::create_dir(dir.path().join("examples.toml")).unwrap();
    let sources = Sources::load_dir(dir.path()).unwrap();
    assert_eq!(sources.names().collect::<Vec<_>>(), ["lab"]);

    std::fs::write(dir.path().join("broken.toml"), "source = \"broken\"\n").unwrap();
    let message = Sources::load_dir(dir.path()).expect_err("loaded").to_string();
    assert!(message.starts_with("broken.toml: ") && message.contains("product_type"), "{message}");

    let missing = Sources::load_dir(&dir.path().join("absent")).expect_err("loaded");
    assert!(matches!(missing, SourceConfigError::Read { .. }), "{missing:?}");
}

// ---------------------------------------------------------------------------
// Property: no JSON makes a transformer panic
// ---------------------------------------------------------------------------

/// Keys the shipped sources read, so generated objects reach their fields.
const KEYS: &[&str] = &[
    "course",
    "org",
    "code",
    "title",
    "summary",
    "description",
    "level",
    "topics",
    "slug",
    "languages",
    "effort",
    "min_hours",
    "max_hours",
    "duration_weeks",
    "image",
    "url",
    "faculty",
    "id",
    "first_name",
    "last_name",
    "variants",
    "variant",
    "starts_on",
    "ends_on",
    "enroll_by",
    "pace",
    "price",
    "amount",
    "currency",
    "sku",
    "bootcampSlug",
    "tagline",
    "difficulty",
    "tracks",
    "languageCodes",
    "hoursPerWeekMin",
    "hoursPerWeekMax",
    "lengthWeeks",
    "instructors",
    "instructorId",
    "firstName",
    "lastName",
    "cohorts",
    "cohortCode",
    "startTs",
    "endTs",
    "applyByTs",
    "format",
    "priceCents",
];

/// Strings that look like what coercions parse, and their near misses.
const STRINGS: &[&str] = &[
    "",
    " ",
    "NaN",
    "-NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-0",
    "0",
    "00",
    "2,450.00",
    "2.450,00",
    "1,2,3",
    "99999999999999999999999999999999999999999",
    "0x1F",
    "2026-03-02",
    "2026-02-30",
    "2026-03-02T10:00:00Z",
    "1768176000",
    "-62135596801",
    "self-paced",
    "SELF_PACED",
    "hybrid",
    "usd",
    "English, Spanish",
    ",,,",
    "{org}",
    "[*]",
    "$.course",
    "course-v1:A+B+C",
    "ñ",
    "\u{0}",
    "🦀",
];

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("JSON has no NaN", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        prop_oneof![Just(1e300), Just(-1e300), Just(f64::MAX), Just(5e-324), Just(0.1), Just(1299900.0)]
            .prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        prop::sample::select(STRINGS).prop_map(|s| Value::String(s.to_string())),
        ".{0,12}".prop_map(Value::String),
    ];
    let key = prop_oneof![prop::sample::select(KEYS).prop_map(str::to_string), "[a-zA-Z_]{1,6}"];
    leaf.prop_recursive(10, 96, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..8)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Every JSON pointer in a value, for mutating examples at random places.
fn pointers(value: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![(String::new(), value)];
    while let Some((pointer, value)) = stack.pop() {
        match value {
            Value::Object(map) => stack.extend(map.iter().map(|(k, v)| (format!("{pointer}/{k}"), v))),
            Value::Array(items) => stack.extend(items.iter().enumerate().map(|(i, v)| (format!("{pointer}/{i}"), v))),
            _ => {}
        }
        found.push(pointer);
    }
    found
}

fn shipped() -> &'static Sources {
    static SHIPPED: std::sync::OnceLock<Sources> = std::sync::OnceLock::new();
    SHIPPED.get_or_init(sources)
}

fn never_panics(sources: &Sources, payload: &Value) {
    for name in [EXEC_ED, BOOTCAMP] {
        let source = sources.get(name).unwrap();
        for event in EventName::ALL {
            // Ok or Err are both fine; a panic fails the property.
            let checked = source.check(event, payload);
            let transformed = source.transform(event, payload);
            if let Err(violations) = &checked {
                assert_eq!(transformed.as_ref().err(), Some(violations), "{name} {event}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_json_never_panics(payload in arbitrary_json()) {
        never_panics(shipped(), &payload);
    }

    #[test]
    fn examples_mutated_anywhere_never_panic(
        source in prop::sample::select(vec![EXEC_ED, BOOTCAMP]),
        event in prop::sample::select(EventName::ALL.to_vec()),
        place in any::<prop::sample::Index>(),
        replacement in arbitrary_json(),
    ) {
        let mut payload = example(source, event);
        let all = pointers(&payload);
        let pointer = place.get(&all).clone();
        if let Some(slot) = payload.pointer_mut(&pointer) {
            *slot = replacement;
        }
        never_panics(shipped(), &payload);
    }
}
