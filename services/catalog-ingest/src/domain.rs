//! The catalog's canonical model and the rules every product obeys whatever
//! its source: pure and unit-tested. A source's payload becomes these types
//! through its transformer (`transform`); the store writes only these.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The event names a source may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventName {
    /// A whole product with instructors, runs and seats.
    #[serde(rename = "product.upserted")]
    ProductUpserted,
    /// The course fields of a product only.
    #[serde(rename = "course.upserted")]
    CourseUpserted,
    /// One run of an existing product, with its seats.
    #[serde(rename = "course_run.upserted")]
    CourseRunUpserted,
    /// One instructor.
    #[serde(rename = "instructor.upserted")]
    InstructorUpserted,
    /// The product is no longer sold.
    #[serde(rename = "product.retired")]
    ProductRetired,
}

impl EventName {
    /// Every event name.
    pub const ALL: [EventName; 5] = [
        EventName::ProductUpserted,
        EventName::CourseUpserted,
        EventName::CourseRunUpserted,
        EventName::InstructorUpserted,
        EventName::ProductRetired,
    ];

    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EventName::ProductUpserted => "product.upserted",
            EventName::CourseUpserted => "course.upserted",
            EventName::CourseRunUpserted => "course_run.upserted",
            EventName::InstructorUpserted => "instructor.upserted",
            EventName::ProductRetired => "product.retired",
        }
    }

    /// The event a wire name stands for.
    pub fn parse(raw: &str) -> Result<Self, UnknownEventName> {
        EventName::ALL.into_iter().find(|e| e.as_str() == raw).ok_or_else(|| UnknownEventName { name: raw.to_string() })
    }
}

/// A wire name that is no [`EventName`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown event {name:?}; expected one of {}", event_names())]
pub struct UnknownEventName {
    name: String,
}

impl UnknownEventName {
    /// The name as sent.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Every event's wire name, for messages.
fn event_names() -> String {
    EventName::ALL.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProductType {
    /// An open course.
    Course,
    /// An executive education course.
    ExecutiveEducation,
    /// A bootcamp.
    Bootcamp,
    /// A degree.
    Degree,
    /// A program of several courses.
    Program,
}

impl ProductType {
    /// Every type.
    pub const ALL: [ProductType; 5] = [
        ProductType::Course,
        ProductType::ExecutiveEducation,
        ProductType::Bootcamp,
        ProductType::Degree,
        ProductType::Program,
    ];

    /// The stored name (as in the proto enum, without its prefix).
    pub fn as_str(self) -> &'static str {
        match self {
            ProductType::Course => "COURSE",
            ProductType::ExecutiveEducation => "EXECUTIVE_EDUCATION",
            ProductType::Bootcamp => "BOOTCAMP",
            ProductType::Degree => "DEGREE",
            ProductType::Program => "PROGRAM",
        }
    }

    /// The type a stored name stands for.
    pub fn parse(raw: &str) -> Option<Self> {
        ProductType::ALL.into_iter().find(|t| t.as_str() == raw)
    }
}

/// How a run is paced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Pacing {
    /// On the instructors' schedule.
    InstructorPaced,
    /// At the learner's pace.
    SelfPaced,
}

impl Pacing {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Pacing::InstructorPaced => "INSTRUCTOR_PACED",
            Pacing::SelfPaced => "SELF_PACED",
        }
    }

    /// The pacing a stored name stands for.
    pub fn parse(raw: &str) -> Option<Self> {
        [Pacing::InstructorPaced, Pacing::SelfPaced].into_iter().find(|p| p.as_str() == raw)
    }
}

/// An exact price: ISO 4217 code and a decimal amount, never a float.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    /// `USD`, `EUR`, …
    pub currency_code: String,
    /// `"149.00"`: an optional `-`, digits, optionally `.` and digits.
    pub amount: String,
}

/// Expected weekly effort.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effort {
    /// Fewest hours a week.
    pub min_hours_per_week: i32,
    /// Most hours a week.
    pub max_hours_per_week: i32,
}

/// The course fields of a product (what `course.upserted` carries).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Course {
    /// `ORG+NUMBER`.
    pub product_key: String,
    /// What kind of product.
    pub product_type: ProductType,
    /// Required.
    pub title: String,
    /// The organisation.
    pub org: String,
    /// Required.
    pub number: String,
    /// Required.
    pub short_description: String,
    /// HTML allowed.
    pub long_description: String,
    /// `introductory`, …
    pub level: String,
    /// Subject slugs.
    pub subjects: Vec<String>,
    /// BCP 47 tags.
    pub languages: Vec<String>,
    /// Weekly effort.
    pub effort: Option<Effort>,
    /// Length in weeks.
    pub length_weeks: Option<i32>,
    /// Card image URL.
    pub image_url: String,
}

/// A person who teaches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instructor {
    /// Unique per source.
    pub instructor_key: String,
    /// Given name.
    pub given_name: String,
    /// Family name.
    pub family_name: String,
    /// Job title.
    pub title: String,
    /// Organisation.
    pub organization: String,
    /// Short biography.
    pub bio: String,
    /// Portrait URL.
    pub image_url: String,
}

/// A purchasable mode of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seat {
    /// The enrollment mode (`verified`, `audit`, …).
    pub mode: String,
    /// Required for a paid mode.
    pub price: Option<Price>,
    /// The commerce platform's SKU.
    pub sku: String,
    /// The last moment to upgrade.
    pub upgrade_deadline: Option<DateTime<Utc>>,
}

/// One run of a course.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CourseRun {
    /// `course-v1:ORG+NUMBER+RUN`.
    pub course_run_key: String,
    /// Required.
    pub start: DateTime<Utc>,
    /// Required; after `start`.
    pub end: DateTime<Utc>,
    /// Unset: at the end.
    pub enrollment_end: Option<DateTime<Utc>>,
    /// Required.
    pub pacing: Pacing,
    /// `verified-audit`, …
    pub run_type: String,
    /// What can be bought.
    pub seats: Vec<Seat>,
}

/// An event mapped to the canonical model: what the store applies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CanonicalEvent {
    /// A whole product.
    ProductUpserted {
        /// The course fields.
        course: Course,
        /// Its instructors, in display order.
        instructors: Vec<Instructor>,
        /// Its runs.
        runs: Vec<CourseRun>,
    },
    /// The course fields only.
    CourseUpserted {
        /// The course fields.
        course: Course,
    },
    /// One run of an existing product.
    CourseRunUpserted {
        /// The product it belongs to.
        product_key: String,
        /// The run.
        run: CourseRun,
    },
    /// One instructor.
    InstructorUpserted {
        /// The instructor.
        instructor: Instructor,
    },
    /// The product is no longer sold.
    ProductRetired {
        /// Which product.
        product_key: String,
    },
}

impl CanonicalEvent {
    /// The product the event is about; None for an instructor.
    pub fn product_key(&self) -> Option<&str> {
        match self {
            CanonicalEvent::ProductUpserted { course, .. } | CanonicalEvent::CourseUpserted { course } => {
                Some(&course.product_key)
            }
            CanonicalEvent::CourseRunUpserted { product_key, .. } | CanonicalEvent::ProductRetired { product_key } => {
                Some(product_key)
            }
            CanonicalEvent::InstructorUpserted { .. } => None,
        }
    }
}

/// A rule the canonical model broke: the field path into the model and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Such as `course_runs[1].end`.
    pub field_path: String,
    /// Why.
    pub reason: String,
}

impl Violation {
    fn new(field_path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field_path: field_path.into(), reason: reason.into() }
    }
}

/// Most instructors, runs, or seats per run in one event: the catalog's
/// products are far smaller, and a bound keeps one event's work bounded.
pub const MAX_LIST: usize = 100;
/// Longest key (product, instructor, run, SKU) accepted: keys are indexed and
/// read back through the API, which takes up to this many characters.
pub const MAX_KEY_LEN: usize = 255;
/// Longest long description accepted.
pub const MAX_LONG_TEXT: usize = 100_000;
/// Longest other text field accepted.
pub const MAX_TEXT: usize = 5_000;

/// Modes that cost nothing; every other mode is paid and needs a price.
pub const FREE_MODES: [&str; 2] = ["audit", "honor"];

/// Currencies the catalog sells in (ISO 4217, active codes commonly used for courses).
pub const KNOWN_CURRENCIES: [&str; 30] = [
    "AED", "AUD", "BRL", "CAD", "CHF", "CNY", "COP", "CZK", "DKK", "EGP", "EUR", "GBP", "HKD", "IDR", "ILS", "INR",
    "JPY", "KRW", "MXN", "MYR", "NOK", "NZD", "PHP", "PKR", "PLN", "SAR", "SEK", "SGD", "USD", "ZAR",
];

/// Checks what the catalog needs of an event, answering every violation.
pub fn validate(event: &CanonicalEvent) -> Vec<Violation> {
    let mut violations = Vec::new();
    match event {
        CanonicalEvent::ProductUpserted { course, instructors, runs } => {
            check_course(course, &mut violations);
            if check_list(instructors, "instructors", &mut violations) {
                let mut keys = std::collections::HashSet::new();
                for (i, instructor) in instructors.iter().enumerate() {
                    check_instructor(instructor, &format!("instructors[{i}]"), &mut violations);
                    if !keys.insert(instructor.instructor_key.as_str()) {
                        violations.push(Violation::new(format!("instructors[{i}].instructor_key"), "appears twice"));
                    }
                }
            }
            if check_list(runs, "course_runs", &mut violations) {
                let mut keys = std::collections::HashSet::new();
                for (i, run) in runs.iter().enumerate() {
                    check_run(run, Some(&course.product_key), &format!("course_runs[{i}]"), &mut violations);
                    if !keys.insert(run.course_run_key.as_str()) {
                        violations.push(Violation::new(format!("course_runs[{i}].course_run_key"), "appears twice"));
                    }
                }
            }
        }
        CanonicalEvent::CourseUpserted { course } => check_course(course, &mut violations),
        CanonicalEvent::CourseRunUpserted { product_key, run } => {
            check_product_key(product_key, &mut violations);
            check_run(run, Some(product_key), "course_run", &mut violations);
        }
        CanonicalEvent::InstructorUpserted { instructor } => {
            check_instructor(instructor, "instructor", &mut violations)
        }
        CanonicalEvent::ProductRetired { product_key } => check_product_key(product_key, &mut violations),
    }
    violations
}

fn check_product_key(key: &str, violations: &mut Vec<Violation>) {
    if !product_key_ok(key) {
        violations.push(Violation::new(
            "product_key",
            format!("must have the form ORG+NUMBER (letters, digits, _ - . ~), got {:?}", truncated(key)),
        ));
    }
}

/// At most 100 characters of a value, for a message.
fn truncated(value: &str) -> String {
    value.chars().take(100).collect()
}

fn required(value: &str, path: &str, violations: &mut Vec<Violation>) {
    if value.trim().is_empty() {
        violations.push(Violation::new(path, "is required"));
    }
}

/// Text the database stores as it is: no control characters other than line
/// breaks and tabs (Postgres refuses NUL), and a length bound.
fn check_text(value: &str, path: &str, max: usize, violations: &mut Vec<Violation>) {
    if value.chars().count() > max {
        violations.push(Violation::new(path, format!("must be at most {max} characters")));
    }
    if value.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
        violations.push(Violation::new(path, "must not contain control characters"));
    }
}

fn check_time(time: DateTime<Utc>, path: &str, violations: &mut Vec<Violation>) {
    if !kit::time::in_range(time) {
        violations.push(Violation::new(path, format!("{time} is outside years 1 to 9999")));
    }
}

fn check_list<T>(list: &[T], path: &str, violations: &mut Vec<Violation>) -> bool {
    if list.len() > MAX_LIST {
        violations.push(Violation::new(path, format!("must have at most {MAX_LIST} entries")));
        return false;
    }
    true
}

fn check_course(course: &Course, violations: &mut Vec<Violation>) {
    if !product_key_ok(&course.product_key) {
        violations.push(Violation::new(
            "product_key",
            format!(
                "must have the form ORG+NUMBER (letters, digits, _ - . ~), got {:?}",
                truncated(&course.product_key)
            ),
        ));
    }
    for (value, path, max) in [
        (&course.title, "title", 500),
        (&course.org, "org", MAX_KEY_LEN),
        (&course.number, "number", MAX_KEY_LEN),
        (&course.short_description, "short_description", MAX_TEXT),
        (&course.long_description, "long_description", MAX_LONG_TEXT),
        (&course.level, "level", MAX_KEY_LEN),
        (&course.image_url, "image_url", 2_000),
    ] {
        check_text(value, path, max, violations);
    }
    for (list, path) in [(&course.subjects, "subjects"), (&course.languages, "languages")] {
        if check_list(list, path, violations) {
            for (i, item) in list.iter().enumerate() {
                check_text(item, &format!("{path}[{i}]"), MAX_KEY_LEN, violations);
            }
        }
    }
    required(&course.title, "title", violations);
    required(&course.number, "number", violations);
    required(&course.short_description, "short_description", violations);
    if let Some(effort) = course.effort
        && (effort.min_hours_per_week < 0 || effort.max_hours_per_week < effort.min_hours_per_week)
    {
        violations.push(Violation::new("effort", "needs 0 <= min_hours_per_week <= max_hours_per_week"));
    }
    if course.length_weeks.is_some_and(|w| w <= 0) {
        violations.push(Violation::new("length_weeks", "must be positive"));
    }
}

fn check_instructor(instructor: &Instructor, path: &str, violations: &mut Vec<Violation>) {
    required(&instructor.instructor_key, &format!("{path}.instructor_key"), violations);
    for (value, field, max) in [
        (&instructor.instructor_key, "instructor_key", MAX_KEY_LEN),
        (&instructor.given_name, "given_name", 200),
        (&instructor.family_name, "family_name", 200),
        (&instructor.title, "title", 500),
        (&instructor.organization, "organization", 500),
        (&instructor.bio, "bio", MAX_TEXT),
        (&instructor.image_url, "image_url", 2_000),
    ] {
        check_text(value, &format!("{path}.{field}"), max, violations);
    }
    if instructor.given_name.trim().is_empty() && instructor.family_name.trim().is_empty() {
        violations.push(Violation::new(format!("{path}.family_name"), "an instructor needs a name"));
    }
}

fn check_run(run: &CourseRun, product_key: Option<&str>, path: &str, violations: &mut Vec<Violation>) {
    match run_key_product(&run.course_run_key) {
        None => violations.push(Violation::new(
            format!("{path}.course_run_key"),
            format!("must have the form course-v1:ORG+NUMBER+RUN, got {:?}", run.course_run_key),
        )),
        Some(of) if product_key.is_some_and(|key| !key.is_empty() && key != of) => violations.push(Violation::new(
            format!("{path}.course_run_key"),
            format!("belongs to product {of}, not {}", product_key.unwrap_or_default()),
        )),
        Some(_) => {}
    }
    check_time(run.start, &format!("{path}.start"), violations);
    check_time(run.end, &format!("{path}.end"), violations);
    if let Some(enrollment_end) = run.enrollment_end {
        check_time(enrollment_end, &format!("{path}.enrollment_end"), violations);
    }
    check_text(&run.run_type, &format!("{path}.run_type"), MAX_KEY_LEN, violations);
    if run.end <= run.start {
        violations.push(Violation::new(format!("{path}.end"), format!("{} is not after start {}", run.end, run.start)));
    }
    if run.enrollment_end.is_some_and(|e| e > run.end) {
        violations.push(Violation::new(format!("{path}.enrollment_end"), "is after the run ends"));
    }
    if !check_list(&run.seats, &format!("{path}.seats"), violations) {
        return;
    }
    let mut modes = std::collections::HashSet::new();
    for (i, seat) in run.seats.iter().enumerate() {
        check_seat(seat, &format!("{path}.seats[{i}]"), violations);
        if !modes.insert(seat.mode.as_str()) {
            violations
                .push(Violation::new(format!("{path}.seats[{i}].mode"), format!("{:?} appears twice", seat.mode)));
        }
    }
}

fn check_seat(seat: &Seat, path: &str, violations: &mut Vec<Violation>) {
    required(&seat.mode, &format!("{path}.mode"), violations);
    check_text(&seat.mode, &format!("{path}.mode"), 64, violations);
    check_text(&seat.sku, &format!("{path}.sku"), MAX_KEY_LEN, violations);
    if let Some(deadline) = seat.upgrade_deadline {
        check_time(deadline, &format!("{path}.upgrade_deadline"), violations);
    }
    let paid = !FREE_MODES.contains(&seat.mode.as_str());
    match &seat.price {
        None if paid => violations.push(Violation::new(format!("{path}.price"), "is required for a paid seat")),
        None => {}
        Some(price) => {
            if !KNOWN_CURRENCIES.contains(&price.currency_code.as_str()) {
                violations.push(Violation::new(
                    format!("{path}.price.currency_code"),
                    format!("{:?} is not a currency the catalog sells in", price.currency_code),
                ));
            }
            // The rule every service holds a price to (vocab::Price): what the catalog
            // sells, Fulfillment and purchase history accept.
            if let Err(invalid) = vocab::Price::parse_amount(&price.amount) {
                violations.push(Violation::new(format!("{path}.price.amount"), invalid.to_string()));
            }
        }
    }
}

/// An exact decimal as every service reads one (`vocab::Money`): `-`? digits (`.` digits)?.
pub fn is_decimal(raw: &str) -> bool {
    vocab::Money::parse_amount(raw).is_ok()
}

/// Whether a product key has the form `ORG+NUMBER` (`vocab::CourseKey`), which is also safe in a URL path.
pub fn product_key_ok(key: &str) -> bool {
    vocab::CourseKey::parse(key).is_ok()
}

/// The product key (`ORG+NUMBER`) of a run key `course-v1:ORG+NUMBER+RUN` (`vocab::CourseRunKey`).
pub fn run_key_product(run_key: &str) -> Option<String> {
    vocab::CourseRunKey::parse(run_key).ok().map(|key| key.course_key().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).unwrap_or_default()
    }

    fn course() -> Course {
        Course {
            product_key: "HarvardX+CS50".into(),
            product_type: ProductType::Course,
            title: "CS50".into(),
            org: "HarvardX".into(),
            number: "CS50".into(),
            short_description: "Intro".into(),
            long_description: String::new(),
            level: String::new(),
            subjects: vec![],
            languages: vec![],
            effort: None,
            length_weeks: None,
            image_url: String::new(),
        }
    }

    fn run() -> CourseRun {
        CourseRun {
            course_run_key: "course-v1:HarvardX+CS50+2025".into(),
            start: at(100),
            end: at(200),
            enrollment_end: None,
            pacing: Pacing::SelfPaced,
            run_type: "verified-audit".into(),
            seats: vec![
                Seat { mode: "audit".into(), price: None, sku: String::new(), upgrade_deadline: None },
                Seat {
                    mode: "verified".into(),
                    price: Some(Price { currency_code: "USD".into(), amount: "99.00".into() }),
                    sku: "SKU1".into(),
                    upgrade_deadline: None,
                },
            ],
        }
    }

    fn paths(event: &CanonicalEvent) -> Vec<String> {
        validate(event).into_iter().map(|v| v.field_path).collect()
    }

    #[test]
    fn a_complete_product_is_valid() {
        let event = CanonicalEvent::ProductUpserted { course: course(), instructors: vec![], runs: vec![run()] };
        assert_eq!(validate(&event), []);
    }

    #[test]
    fn each_rule_names_its_field() {
        let mut c = course();
        c.title.clear();
        c.number = " ".into();
        c.short_description.clear();
        let mut r = run();
        r.end = r.start;
        r.seats[1].price = None;
        let mut r2 = run();
        r2.course_run_key = "course-v1:MITx+6.00+T1".into();
        r2.seats[1].price = Some(Price { currency_code: "XXX".into(), amount: "-1".into() });
        let event = CanonicalEvent::ProductUpserted { course: c, instructors: vec![], runs: vec![r, r2] };
        assert_eq!(
            paths(&event),
            [
                "title",
                "number",
                "short_description",
                "course_runs[0].end",
                "course_runs[0].seats[1].price",
                "course_runs[1].course_run_key",
                "course_runs[1].seats[1].price.currency_code",
                "course_runs[1].seats[1].price.amount",
            ]
        );
    }

    #[test]
    fn runs_and_instructors_appear_once_in_a_product() {
        let instructor = Instructor {
            instructor_key: "i1".into(),
            given_name: "Ada".into(),
            family_name: "Lovelace".into(),
            title: String::new(),
            organization: String::new(),
            bio: String::new(),
            image_url: String::new(),
        };
        let event = CanonicalEvent::ProductUpserted {
            course: course(),
            instructors: vec![instructor.clone(), instructor],
            runs: vec![run(), run()],
        };
        assert_eq!(paths(&event), ["instructors[1].instructor_key", "course_runs[1].course_run_key"]);
    }

    #[test]
    fn free_seats_need_no_price_and_modes_appear_once() {
        let mut r = run();
        r.seats.push(r.seats[0].clone());
        let event = CanonicalEvent::CourseRunUpserted { product_key: "HarvardX+CS50".into(), run: r };
        assert_eq!(paths(&event), ["course_run.seats[2].mode"]);
    }

    #[test]
    fn run_keys_belong_to_their_product() {
        assert_eq!(run_key_product("course-v1:HarvardX+CS50+2025").as_deref(), Some("HarvardX+CS50"));
        assert_eq!(run_key_product("HarvardX/CS50/2025"), None);
        assert_eq!(run_key_product("course-v1:a+b"), None);
    }

    #[test]
    fn event_names_round_trip() {
        for name in EventName::ALL {
            assert_eq!(EventName::parse(name.as_str()), Ok(name));
        }
        assert!(EventName::parse("product.deleted").unwrap_err().to_string().contains("product.retired"));
    }
}
