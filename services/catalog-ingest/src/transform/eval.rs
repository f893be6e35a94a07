//! Evaluation: one pass that collects VALIDATE violations (`check`), TRANSFORM
//! mapping violations (`mapping`) and the canonical event with stand-ins where a
//! value failed.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::MAX_VIOLATIONS;
use super::coerce::{CoercionError, parse_date, parse_decimal, parse_integer, raw_text, whole_number_text};
use super::compile::{
    Conv, CourseMap, DateFormat, Field, FieldSource, InstructorMap, Out, Records, RunMap, SeatMap, Select,
};
use super::path::{JsonPath, Part, Template, describe, display_path, is_blank};
use crate::domain::{
    CanonicalEvent, Course, CourseRun, Effort, EventName, Instructor, Pacing, Price, ProductType, Seat, Violation,
};

pub(super) static NULL: Value = Value::Null;

#[derive(Clone, Debug)]
pub(super) struct Scope<'a> {
    pub(super) value: &'a Value,
    /// The concrete path of `value` in the payload; empty for the root.
    pub(super) path: String,
}

pub(super) struct Eval<'a> {
    pub(super) root: &'a Value,
    pub(super) check: Vec<Violation>,
    pub(super) mapping: Vec<Violation>,
    /// Canonical records (see [`record_of`]) where a coercion failed.
    pub(super) tainted: HashSet<String>,
}

pub(super) struct Outcome {
    pub(super) event: Option<CanonicalEvent>,
    pub(super) check: Vec<Violation>,
    pub(super) mapping: Vec<Violation>,
    pub(super) tainted: HashSet<String>,
}

/// What a field came to.
pub(super) enum Got {
    Value(Out),
    /// Not in the payload and no default.
    Absent,
    /// Present but unusable; a violation was recorded.
    Failed,
}

impl Got {
    pub(super) fn value(self) -> Option<Out> {
        match self {
            Got::Value(out) => Some(out),
            Got::Absent | Got::Failed => None,
        }
    }
}

impl<'a> Eval<'a> {
    pub(super) fn into_outcome(self, event: Option<CanonicalEvent>) -> Outcome {
        Outcome { event, check: self.check, mapping: self.mapping, tainted: self.tainted }
    }

    /// A coercion or value map failed: a TRANSFORM violation at the source path,
    /// and the canonical record marked so its stand-in values are not judged.
    pub(super) fn fail(&mut self, at: String, reason: impl ToString, record: &str) {
        self.mapping.push(violation(at, reason.to_string()));
        self.tainted.insert(record.to_string());
    }

    /// The one record a single-record section reads: the object at `at`, or
    /// the enclosing one. A missing `at` gives a null scope, so each required
    /// field under it reports its own path.
    pub(super) fn single(&mut self, at: Option<&JsonPath>, scope: &Scope<'a>) -> Scope<'a> {
        let Some(path) = at else { return scope.clone() };
        let (found, shape) = path.resolve(self.root, scope);
        self.check.extend(shape);
        match found.into_iter().next() {
            Some((path, value)) => Scope { value, path },
            None => Scope { value: &NULL, path: path.requested(scope) },
        }
    }

    /// The records of a list-capable section. A record that is not an object is
    /// still returned: its fields then report the wrong type at its path.
    pub(super) fn records(&mut self, records: &Records, scope: &Scope<'a>) -> Vec<Scope<'a>> {
        match &records.select {
            Select::Here => vec![scope.clone()],
            Select::At(path) => {
                let (found, shape) = path.resolve(self.root, scope);
                let shape_failed = !shape.is_empty();
                self.check.extend(shape);
                match found.into_iter().find(|(_, value)| !value.is_null()) {
                    Some((path, value)) => vec![Scope { value, path }],
                    None => {
                        if records.required && !shape_failed {
                            self.check.push(violation(path.requested(scope), "is required"));
                        }
                        Vec::new()
                    }
                }
            }
            Select::List { written, each } => {
                let (found, shape) = each.resolve(self.root, scope);
                let shape_failed = !shape.is_empty();
                self.check.extend(shape);
                if found.is_empty() && records.required && !shape_failed {
                    self.check.push(violation(written.requested(scope), "needs at least one element"));
                }
                found.into_iter().map(|(path, value)| Scope { value, path }).collect()
            }
        }
    }

    pub(super) fn course(
        &mut self,
        map: &CourseMap,
        scope: &Scope<'a>,
        record: &str,
        default_type: ProductType,
    ) -> Course {
        let product_type = match map.product_type.as_ref().map(|f| self.field(f, scope, record)) {
            Some(Got::Value(Out::ProductType(t))) => t,
            _ => default_type,
        };
        let effort = map.effort.as_ref().and_then(|(min, max)| {
            let got_min = self.field(min, scope, record);
            let got_max = self.field(max, scope, record);
            match (got_min, got_max) {
                (Got::Value(Out::Int(min)), Got::Value(Out::Int(max))) => {
                    Some(Effort { min_hours_per_week: min, max_hours_per_week: max })
                }
                (Got::Value(_), Got::Absent) => {
                    self.fail(max.describe_at(scope), "is required when the minimum effort is given", record);
                    None
                }
                (Got::Absent, Got::Value(_)) => {
                    self.fail(min.describe_at(scope), "is required when the maximum effort is given", record);
                    None
                }
                _ => None,
            }
        });
        Course {
            product_key: self.text(map.product_key.as_ref(), scope, record),
            product_type,
            title: self.text(map.title.as_ref(), scope, record),
            org: self.text(map.org.as_ref(), scope, record),
            number: self.text(map.number.as_ref(), scope, record),
            short_description: self.text(map.short_description.as_ref(), scope, record),
            long_description: self.text(map.long_description.as_ref(), scope, record),
            level: self.text(map.level.as_ref(), scope, record),
            subjects: self.list(map.subjects.as_ref(), scope, record),
            languages: self.list(map.languages.as_ref(), scope, record),
            effort,
            length_weeks: self.int(map.length_weeks.as_ref(), scope, record),
            image_url: self.text(map.image_url.as_ref(), scope, record),
        }
    }

    pub(super) fn instructor(&mut self, map: &InstructorMap, scope: &Scope<'a>, record: &str) -> Instructor {
        Instructor {
            instructor_key: self.text(map.instructor_key.as_ref(), scope, record),
            given_name: self.text(map.given_name.as_ref(), scope, record),
            family_name: self.text(map.family_name.as_ref(), scope, record),
            title: self.text(map.title.as_ref(), scope, record),
            organization: self.text(map.organization.as_ref(), scope, record),
            bio: self.text(map.bio.as_ref(), scope, record),
            image_url: self.text(map.image_url.as_ref(), scope, record),
        }
    }

    pub(super) fn run(&mut self, map: &RunMap, scope: &Scope<'a>, record: &str) -> CourseRun {
        let course_run_key = self.text(map.course_run_key.as_ref(), scope, record);
        // Stand-ins for a start, end or pacing that failed: the record is then
        // tainted, so no domain rule judges them.
        let start = self.time(Some(&map.start), scope, record).unwrap_or(DateTime::UNIX_EPOCH);
        let end = self.time(Some(&map.end), scope, record).unwrap_or(DateTime::UNIX_EPOCH);
        let enrollment_end = self.time(map.enrollment_end.as_ref(), scope, record);
        let pacing = match self.field(&map.pacing, scope, record).value() {
            Some(Out::Pacing(pacing)) => pacing,
            _ => Pacing::InstructorPaced,
        };
        let run_type = self.text(map.run_type.as_ref(), scope, record);
        let seats = match &map.seats {
            None => Vec::new(),
            Some(seats) => self
                .records(&seats.records, scope)
                .iter()
                .enumerate()
                .map(|(j, seat_scope)| self.seat(seats, seat_scope, &format!("{record}.seats[{j}]")))
                .collect(),
        };
        CourseRun { course_run_key, start, end, enrollment_end, pacing, run_type, seats }
    }

    pub(super) fn seat(&mut self, map: &SeatMap, scope: &Scope<'a>, record: &str) -> Seat {
        let mode = self.text(map.mode.as_ref(), scope, record);
        let price = map.price.as_ref().and_then(|(amount, currency)| {
            // Both read, so VALIDATE sees the currency's type even without an amount.
            let amount = self.field(amount, scope, record).value();
            // A missing currency is left empty: domain::validate then names the
            // canonical field (`...price.currency_code`).
            let currency_code = self.text(Some(currency), scope, record);
            match amount {
                Some(Out::Text(amount)) => Some(Price { currency_code, amount }),
                _ => None,
            }
        });
        Seat {
            mode,
            price,
            sku: self.text(map.sku.as_ref(), scope, record),
            upgrade_deadline: self.time(map.upgrade_deadline.as_ref(), scope, record),
        }
    }

    pub(super) fn text(&mut self, field: Option<&Field>, scope: &Scope<'a>, record: &str) -> String {
        match field.map(|f| self.field(f, scope, record).value()) {
            Some(Some(Out::Text(text))) => text,
            _ => String::new(),
        }
    }

    pub(super) fn int(&mut self, field: Option<&Field>, scope: &Scope<'a>, record: &str) -> Option<i32> {
        match field.map(|f| self.field(f, scope, record).value()) {
            Some(Some(Out::Int(n))) => Some(n),
            _ => None,
        }
    }

    pub(super) fn time(&mut self, field: Option<&Field>, scope: &Scope<'a>, record: &str) -> Option<DateTime<Utc>> {
        match field.map(|f| self.field(f, scope, record).value()) {
            Some(Some(Out::Time(t))) => Some(t),
            _ => None,
        }
    }

    pub(super) fn list(&mut self, field: Option<&Field>, scope: &Scope<'a>, record: &str) -> Vec<String> {
        match field.map(|f| self.field(f, scope, record).value()) {
            Some(Some(Out::List(items))) => items,
            _ => Vec::new(),
        }
    }

    /// One field: found (or defaulted), checked for a usable type, mapped and coerced.
    pub(super) fn field(&mut self, field: &Field, scope: &Scope<'a>, record: &str) -> Got {
        let path = match &field.source {
            FieldSource::Default => return field.fallback(),
            FieldSource::Template(template) => {
                return match self.template(template, scope, field.required) {
                    Some(text) => Got::Value(Out::Text(text)),
                    None => field.fallback(),
                };
            }
            FieldSource::Path(path) => path,
        };
        if let Conv::List(separator) = &field.conv {
            return self.list_field(field, path, separator.as_deref(), scope, record);
        }
        let (found, shape) = path.resolve(self.root, scope);
        let shape_failed = !shape.is_empty();
        self.check.extend(shape);
        // Paths of scalar fields have no wildcard (refused when loading), so at most one value.
        let Some((at, value)) = found.into_iter().next() else {
            if field.required && !shape_failed {
                self.check.push(violation(path.requested(scope), "is required"));
            }
            return field.fallback();
        };
        if is_blank(value) {
            if field.required {
                let reason = if value.is_null() { "is required" } else { "must not be empty" };
                self.check.push(violation(at, reason));
            }
            return field.fallback();
        }
        if let Err(expected) = field.accepts(value) {
            self.check.push(violation(at, format!("must be {expected}, got {}", describe(value))));
            return Got::Failed;
        }
        match raw_text(value).and_then(|raw| field.convert(&raw)) {
            Ok(out) => Got::Value(out),
            Err(reason) => {
                self.fail(at, reason, record);
                Got::Failed
            }
        }
    }

    /// A list field: the array at the path (or every value a `[*]` path reaches),
    /// each element mapped; with `split`, strings split on the separator.
    pub(super) fn list_field(
        &mut self,
        field: &Field,
        path: &JsonPath,
        separator: Option<&str>,
        scope: &Scope<'a>,
        record: &str,
    ) -> Got {
        let (found, shape) = path.resolve(self.root, scope);
        let shape_failed = !shape.is_empty();
        self.check.extend(shape);
        let mut elements: Vec<(String, &Value)> = Vec::new();
        if path.has_wildcard() {
            elements = found;
        } else if let Some((at, value)) = found.into_iter().next() {
            match value {
                Value::Array(items) => {
                    elements.extend(items.iter().enumerate().map(|(i, item)| (format!("{at}[{i}]"), item)))
                }
                Value::String(_) if separator.is_some() => elements.push((at, value)),
                Value::Null => {}
                other => {
                    let expected = if separator.is_some() { "a list or a string" } else { "a list" };
                    self.check.push(violation(at, format!("must be {expected}, got {}", describe(other))));
                    return Got::Failed;
                }
            }
        }
        let mut items = Vec::new();
        let mut failed = false;
        for (at, element) in elements {
            if is_blank(element) {
                continue;
            }
            let raw = match element {
                Value::String(_) | Value::Number(_) => raw_text(element),
                Value::Bool(_) if field.map.is_some() => raw_text(element),
                other => {
                    self.check.push(violation(at, format!("must be a string or a number, got {}", describe(other))));
                    failed = true;
                    continue;
                }
            };
            let parts = match (raw, separator) {
                (Ok(raw), Some(separator)) => {
                    raw.split(separator).map(str::trim).filter(|p| !p.is_empty()).map(str::to_string).collect()
                }
                (Ok(raw), None) => vec![raw],
                (Err(reason), _) => {
                    self.fail(at, reason, record);
                    failed = true;
                    continue;
                }
            };
            for part in parts {
                match field.mapped(&part) {
                    Ok(item) => items.push(item),
                    Err(reason) => {
                        self.fail(at.clone(), reason, record);
                        failed = true;
                    }
                }
            }
        }
        if failed {
            return Got::Failed;
        }
        if items.is_empty() {
            if field.required && !shape_failed {
                self.check.push(violation(path.requested(scope), "needs at least one value"));
            }
            return field.fallback();
        }
        Got::Value(Out::List(items))
    }

    /// The template's text, or None when a placeholder is absent (reported when
    /// the field is required) or unusable (always reported: a key from an object
    /// would be nonsense).
    pub(super) fn template(&mut self, template: &Template, scope: &Scope<'a>, required: bool) -> Option<String> {
        let mut text = String::new();
        let mut complete = true;
        for part in &template.parts {
            let path = match part {
                Part::Literal(literal) => {
                    text.push_str(literal);
                    continue;
                }
                Part::Value(path) => path,
            };
            let (found, shape) = path.resolve(self.root, scope);
            let shape_failed = !shape.is_empty();
            self.check.extend(shape);
            match found.into_iter().next() {
                Some((at, value)) if is_blank(value) && !value.is_null() => {
                    if required {
                        self.check.push(violation(at, "must not be empty"));
                    }
                    complete = false;
                }
                Some((_, Value::String(s))) => text.push_str(s.trim()),
                Some((at, Value::Number(n))) => match whole_number_text(n) {
                    Some(digits) => text.push_str(&digits),
                    None => {
                        self.check.push(violation(at, format!("must be a string or a whole number, got {n}")));
                        complete = false;
                    }
                },
                Some((_, Value::Null)) | None => {
                    if required && !shape_failed {
                        self.check.push(violation(path.requested(scope), "is required"));
                    }
                    complete = false;
                }
                Some((at, other)) => {
                    self.check
                        .push(violation(at, format!("must be a string or a whole number, got {}", describe(other))));
                    complete = false;
                }
            }
        }
        complete.then_some(text)
    }
}

impl Field {
    pub(super) fn fallback(&self) -> Got {
        self.default.clone().map_or(Got::Absent, Got::Value)
    }

    /// The payload path this field reads, for violations about its absence.
    pub(super) fn describe_at(&self, scope: &Scope<'_>) -> String {
        match &self.source {
            FieldSource::Path(path) => path.requested(scope),
            FieldSource::Template(_) | FieldSource::Default => display_path(scope.path.clone()),
        }
    }

    /// VALIDATE's type check of a present, non-blank scalar value; Err says what was expected.
    pub(super) fn accepts(&self, value: &Value) -> Result<(), &'static str> {
        let expected = match (&self.conv, value) {
            // With a value map, any scalar can be a key (`"isSelfPaced": true`).
            (_, Value::String(_) | Value::Number(_) | Value::Bool(_)) if self.map.is_some() => return Ok(()),
            (Conv::Time(DateFormat::EpochSeconds), Value::String(_) | Value::Number(_)) => return Ok(()),
            (Conv::Time(_), Value::String(_)) => return Ok(()),
            (Conv::Time(DateFormat::EpochSeconds), _) => "a number of seconds",
            (Conv::Time(_), _) => "a string (a date)",
            (Conv::Currency, Value::String(_)) => return Ok(()),
            (Conv::Currency, _) => "a string (a currency code)",
            (_, Value::String(_) | Value::Number(_)) => return Ok(()),
            _ => "a string or a number",
        };
        Err(expected)
    }

    /// The raw text through the value map, when there is one.
    pub(super) fn mapped(&self, raw: &str) -> Result<String, CoercionError> {
        let Some(map) = &self.map else { return Ok(raw.to_string()) };
        map.get(&raw.trim().to_lowercase()).cloned().ok_or_else(|| {
            let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
            keys.sort_unstable();
            CoercionError::NotMapped { raw: raw.to_string(), keys: keys.join(", ") }
        })
    }

    /// Value map, then coercion, to the canonical value (scalars; lists are converted in `list_field`).
    pub(super) fn convert(&self, raw: &str) -> Result<Out, CoercionError> {
        let text = self.mapped(raw)?;
        match &self.conv {
            Conv::Text => Ok(Out::Text(text)),
            Conv::Currency => Ok(Out::Text(text.trim().to_uppercase())),
            Conv::Decimal { scale } => parse_decimal(&text, *scale).map(Out::Text),
            Conv::Int => {
                let n = parse_integer(&text)?;
                i32::try_from(n).map(Out::Int).map_err(|_| CoercionError::OutOfRange { text: n.to_string() })
            }
            Conv::Time(format) => parse_date(&text, format).map(Out::Time),
            Conv::Pacing => Pacing::parse(&text.trim().to_uppercase())
                .map(Out::Pacing)
                .ok_or_else(|| CoercionError::NotPacing { text: text.clone() }),
            Conv::ProductType => ProductType::parse(&text.trim().to_uppercase())
                .map(Out::ProductType)
                .ok_or_else(|| CoercionError::NotProductType { text: text.clone() }),
            Conv::List(_) => Ok(Out::List(vec![text])),
        }
    }
}

pub(super) fn violation(field_path: impl Into<String>, reason: impl Into<String>) -> Violation {
    Violation { field_path: field_path.into(), reason: reason.into() }
}

pub(super) fn no_mapping(source: &str, event: EventName) -> Violation {
    violation("event_name", format!("source {source:?} has no mapping for {event}; see its source file"))
}

/// The canonical record a domain violation belongs to: `course_runs[1].seats[0]`
/// for `course_runs[1].seats[0].price.amount`, `course_runs[1]` for
/// `course_runs[1].end`, `course_run` for `course_run.end`, `` for `title`.
pub(super) fn record_of(field_path: &str) -> &str {
    if let Some(close) = field_path.rfind(']') {
        return field_path.get(..=close).unwrap_or_default();
    }
    match field_path.split_once('.') {
        Some((record, _)) => record,
        None => "",
    }
}

/// Duplicates out (a shape problem met by several fields is one problem), then capped.
pub(super) fn finish(violations: Vec<Violation>) -> Vec<Violation> {
    let mut seen = HashSet::new();
    let mut unique: Vec<Violation> =
        violations.into_iter().filter(|v| seen.insert((v.field_path.clone(), v.reason.clone()))).collect();
    if unique.len() > MAX_VIOLATIONS {
        let more = unique.len() - MAX_VIOLATIONS;
        unique.truncate(MAX_VIOLATIONS);
        unique.push(violation("$", format!("{more} more violations not listed")));
    }
    unique
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_canonical_paths() {
        assert_eq!(record_of("course_runs[1].seats[0].price.amount"), "course_runs[1].seats[0]");
        assert_eq!(record_of("course_runs[1].end"), "course_runs[1]");
        assert_eq!(record_of("course_run.end"), "course_run");
        assert_eq!(record_of("instructor.family_name"), "instructor");
        assert_eq!(record_of("title"), "");
    }
}
