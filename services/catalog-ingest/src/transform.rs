//! Per-source transformers, declared in files rather than code.
//!
//! Each line of business has one TOML file, `config/catalog/sources/<source>.toml`,
//! saying for every event it sends which of its JSON paths become which field of
//! the canonical model ([`crate::domain`]), with defaults, value maps, coercions
//! and required paths; the file also carries the source's throttle [`Quota`].
//! The format is documented in `config/catalog/sources/README.md`.
//!
//! A [`SourceTransformer`] runs two steps of an ingestion:
//!
//! - VALIDATE ([`SourceTransformer::check`]): the payload has what the file
//!   requires for the event: required paths present and not blank, and every
//!   mapped value of a usable JSON type. Violations name source paths
//!   (`variants[1].ends_on`).
//! - TRANSFORM ([`SourceTransformer::transform`]): the payload is mapped and
//!   coerced to a [`CanonicalEvent`], then checked with [`domain::validate`].
//!   Violations name the source path where a coercion or value map failed, or
//!   the canonical path a domain rule names (`course_runs[1].end`).
//!
//! Either step reports every violation it finds, not only the first (up to
//! [`MAX_VIOLATIONS`]). Nothing here panics on any payload: paths are walked
//! one segment at a time (no recursion over the payload), payloads nested deeper
//! than [`MAX_DEPTH`] are refused up front, and money is parsed from the JSON
//! number's text, never through a float.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::de::{MapAccess, Visitor, value::MapAccessDeserializer};
use serde::{Deserialize, Deserializer};
use serde_json::{Number, Value};

use crate::domain::{
    self, CanonicalEvent, Course, CourseRun, Effort, EventName, Instructor, Pacing, Price, ProductType, Seat, Violation,
};

/// Payloads nested deeper than this (objects and arrays) fail VALIDATE before any path is read.
pub const MAX_DEPTH: usize = 64;

/// The most violations a step reports; past it, one last violation says how many more there were.
pub const MAX_VIOLATIONS: usize = 100;

/// A source's throttle quota: the `[quota]` table of its file.
pub use kit::throttle::Quota;

/// Why the source files cannot be used; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum SourceConfigError {
    /// The directory or a file in it could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not named `<source>.toml`.
    #[error("{file}: a source file is named <source>.toml")]
    FileName {
        /// The file name.
        file: String,
    },
    /// Not TOML, or not the shape of a source file: an unknown directive, a missing key, a wrong type.
    /// `message` is the TOML reader's, with the line, the key and what was expected.
    #[error("{file}: {message}")]
    Parse {
        /// The file name.
        file: String,
        /// What is wrong, and where.
        message: String,
    },
    /// A key's value cannot be used.
    #[error("{file}: {key}: {problem}")]
    Invalid {
        /// The file name.
        file: String,
        /// The key, such as `events."product.upserted".runs.start.format`.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The file's `source` is not its file name.
    #[error("{file}: source = {declared:?} does not match the file name; expected {expected:?}")]
    NameMismatch {
        /// The file name.
        file: String,
        /// The `source` the file declares.
        declared: String,
        /// The name the file name gives.
        expected: String,
    },
    /// Two files declare the same source.
    #[error("{file}: source {name:?} is declared twice")]
    Duplicate {
        /// The second file.
        file: String,
        /// The source.
        name: String,
    },
}

/// One source's transformer: its parsed and checked file.
#[derive(Clone, Debug)]
pub struct SourceTransformer {
    name: String,
    quota: Quota,
    product_type: ProductType,
    events: Events,
}

impl SourceTransformer {
    /// The source's name, as in its file name and in request paths.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The source's throttle quota.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// VALIDATE: the payload has what this source's file requires for `event`:
    /// required paths present and not blank, mapped values of a usable JSON type.
    /// Violations name paths into the payload.
    pub fn check(&self, event: EventName, payload: &Value) -> Result<(), Vec<Violation>> {
        let outcome = self.evaluate(event, payload);
        if outcome.check.is_empty() { Ok(()) } else { Err(finish(outcome.check)) }
    }

    /// TRANSFORM: maps and coerces the payload to the canonical model, then
    /// checks it with [`domain::validate`]. A payload that fails [`check`](Self::check)
    /// fails here with the same violations.
    ///
    /// Every coercion or value-map failure is reported at its source path; domain
    /// rules are reported at their canonical path, except for records (a course,
    /// an instructor, a run, a seat) where a coercion already failed, whose
    /// stand-in values would only produce misleading violations.
    pub fn transform(&self, event: EventName, payload: &Value) -> Result<CanonicalEvent, Vec<Violation>> {
        let outcome = self.evaluate(event, payload);
        if !outcome.check.is_empty() {
            return Err(finish(outcome.check));
        }
        let Some(canonical) = outcome.event else {
            return Err(vec![no_mapping(&self.name, event)]);
        };
        let mut violations = outcome.mapping;
        violations.extend(
            domain::validate(&canonical).into_iter().filter(|v| !outcome.tainted.contains(record_of(&v.field_path))),
        );
        if violations.is_empty() { Ok(canonical) } else { Err(finish(violations)) }
    }

    fn evaluate(&self, event: EventName, payload: &Value) -> Outcome {
        let mut eval = Eval { root: payload, check: Vec::new(), mapping: Vec::new(), tainted: HashSet::new() };
        if deeper_than(payload, MAX_DEPTH) {
            eval.check.push(violation("$", format!("is nested deeper than {MAX_DEPTH} levels")));
            return eval.into_outcome(None);
        }
        let root = Scope { value: payload, path: String::new() };
        let canonical = match event {
            EventName::ProductUpserted => self.events.product_upserted.as_ref().map(|map| {
                let course_scope = eval.single(map.course.at.as_ref(), &root);
                let course = eval.course(&map.course, &course_scope, "", self.product_type);
                let instructors = match &map.instructors {
                    None => Vec::new(),
                    Some(m) => eval
                        .records(&m.records, &root)
                        .iter()
                        .enumerate()
                        .map(|(i, scope)| eval.instructor(m, scope, &format!("instructors[{i}]")))
                        .collect(),
                };
                let runs = match &map.runs {
                    None => Vec::new(),
                    Some(m) => eval
                        .records(&m.records, &root)
                        .iter()
                        .enumerate()
                        .map(|(i, scope)| eval.run(m, scope, &format!("course_runs[{i}]")))
                        .collect(),
                };
                CanonicalEvent::ProductUpserted { course, instructors, runs }
            }),
            EventName::CourseUpserted => self.events.course_upserted.as_ref().map(|map| {
                let scope = eval.single(map.at.as_ref(), &root);
                CanonicalEvent::CourseUpserted { course: eval.course(map, &scope, "", self.product_type) }
            }),
            EventName::CourseRunUpserted => self.events.course_run_upserted.as_ref().map(|map| {
                let product_key = eval.text(Some(&map.product_key), &root, "");
                let scope = eval.single(map.run.records.at(), &root);
                CanonicalEvent::CourseRunUpserted { product_key, run: eval.run(&map.run, &scope, "course_run") }
            }),
            EventName::InstructorUpserted => self.events.instructor_upserted.as_ref().map(|map| {
                let scope = eval.single(map.records.at(), &root);
                CanonicalEvent::InstructorUpserted { instructor: eval.instructor(map, &scope, "instructor") }
            }),
            EventName::ProductRetired => self
                .events
                .product_retired
                .as_ref()
                .map(|field| CanonicalEvent::ProductRetired { product_key: eval.text(Some(field), &root, "") }),
        };
        if canonical.is_none() {
            eval.check.push(no_mapping(&self.name, event));
        }
        eval.into_outcome(canonical)
    }
}

/// The sources by name, each with its transformer.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    by_name: BTreeMap<String, SourceTransformer>,
}

impl Sources {
    /// Reads every `*.toml` file in `dir` (not its subdirectories), one source per file.
    pub fn load_dir(dir: &Path) -> Result<Self, SourceConfigError> {
        let read_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SourceConfigError::Read { path, source }
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_error(dir))? {
            let path = entry.map_err(read_error(dir))?.path();
            if path.extension().is_some_and(|ext| ext == "toml") && path.is_file() {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let contents = std::fs::read_to_string(&path).map_err(read_error(&path))?;
                files.push((name, contents));
            }
        }
        // Sorted, so that the same broken directory always reports the same file first.
        files.sort();
        Self::from_files(files)
    }

    /// Parses source files given as (file name, contents); the file name is `<source>.toml`.
    pub fn from_files(files: impl IntoIterator<Item = (String, String)>) -> Result<Self, SourceConfigError> {
        let mut by_name = BTreeMap::new();
        for (file, contents) in files {
            let transformer = parse_file(&file, &contents)?;
            if by_name.contains_key(&transformer.name) {
                return Err(SourceConfigError::Duplicate { file, name: transformer.name });
            }
            by_name.insert(transformer.name.clone(), transformer);
        }
        Ok(Self { by_name })
    }

    /// The source's transformer; None for a source no file declares (the API answers NOT_FOUND).
    pub fn get(&self, source: &str) -> Option<&SourceTransformer> {
        self.by_name.get(source)
    }

    /// The configured sources' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Each source's quota, keyed by the source's name.
    pub fn quotas(&self) -> Vec<(String, Quota)> {
        self.by_name.iter().map(|(name, transformer)| (name.clone(), transformer.quota)).collect()
    }
}

// ---------------------------------------------------------------------------
// The file format, as serde reads it. Every table denies unknown keys, so a
// misspelt directive is an error rather than a silently ignored line.
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceFile {
    source: String,
    product_type: String,
    quota: Quota,
    #[serde(default)]
    events: EventsFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsFile {
    #[serde(rename = "product.upserted")]
    product_upserted: Option<ProductFile>,
    #[serde(rename = "course.upserted")]
    course_upserted: Option<CourseEventFile>,
    #[serde(rename = "course_run.upserted")]
    course_run_upserted: Option<RunEventFile>,
    #[serde(rename = "instructor.upserted")]
    instructor_upserted: Option<InstructorEventFile>,
    #[serde(rename = "product.retired")]
    product_retired: Option<RetiredFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProductFile {
    course: CourseFile,
    instructors: Option<InstructorFile>,
    runs: Option<RunFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CourseEventFile {
    course: CourseFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunEventFile {
    product_key: FieldSpec,
    run: RunFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstructorEventFile {
    instructor: InstructorFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetiredFile {
    product_key: FieldSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CourseFile {
    at: Option<String>,
    product_key: Option<FieldSpec>,
    product_type: Option<FieldSpec>,
    title: Option<FieldSpec>,
    org: Option<FieldSpec>,
    number: Option<FieldSpec>,
    short_description: Option<FieldSpec>,
    long_description: Option<FieldSpec>,
    level: Option<FieldSpec>,
    subjects: Option<FieldSpec>,
    languages: Option<FieldSpec>,
    effort: Option<EffortFile>,
    length_weeks: Option<FieldSpec>,
    image_url: Option<FieldSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EffortFile {
    min_hours_per_week: FieldSpec,
    max_hours_per_week: FieldSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstructorFile {
    list: Option<String>,
    at: Option<String>,
    #[serde(default)]
    required: bool,
    instructor_key: Option<FieldSpec>,
    given_name: Option<FieldSpec>,
    family_name: Option<FieldSpec>,
    title: Option<FieldSpec>,
    organization: Option<FieldSpec>,
    bio: Option<FieldSpec>,
    image_url: Option<FieldSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunFile {
    list: Option<String>,
    at: Option<String>,
    #[serde(default)]
    required: bool,
    course_run_key: Option<FieldSpec>,
    start: FieldSpec,
    end: FieldSpec,
    enrollment_end: Option<FieldSpec>,
    pacing: FieldSpec,
    run_type: Option<FieldSpec>,
    seats: Option<SeatFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeatFile {
    list: Option<String>,
    at: Option<String>,
    #[serde(default)]
    required: bool,
    mode: Option<FieldSpec>,
    price: Option<PriceFile>,
    sku: Option<FieldSpec>,
    upgrade_deadline: Option<FieldSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    amount: FieldSpec,
    currency_code: FieldSpec,
}

/// One canonical field's directives: a table, or a bare string as shorthand for `{ path = "..." }`.
#[derive(Debug, Default)]
struct FieldSpec(FieldFile);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldFile {
    path: Option<String>,
    template: Option<String>,
    default: Option<toml::Value>,
    #[serde(default)]
    required: bool,
    map: Option<BTreeMap<String, String>>,
    coerce: Option<CoerceName>,
    format: Option<String>,
    scale: Option<u32>,
    separator: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum CoerceName {
    String,
    Integer,
    Date,
    Decimal,
    Currency,
    Split,
}

impl fmt::Display for CoerceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CoerceName::String => "string",
            CoerceName::Integer => "integer",
            CoerceName::Date => "date",
            CoerceName::Decimal => "decimal",
            CoerceName::Currency => "currency",
            CoerceName::Split => "split",
        })
    }
}

impl<'de> Deserialize<'de> for FieldSpec {
    // By hand rather than `#[serde(untagged)]`: untagged would turn a misspelt
    // directive into "did not match any variant" instead of naming the key.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpecVisitor;
        impl<'de> Visitor<'de> for SpecVisitor {
            type Value = FieldSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a source path such as \"course.title\", or a table of directives")
            }
            fn visit_str<E: serde::de::Error>(self, path: &str) -> Result<FieldSpec, E> {
                Ok(FieldSpec(FieldFile { path: Some(path.to_string()), ..FieldFile::default() }))
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<FieldSpec, M::Error> {
                FieldFile::deserialize(MapAccessDeserializer::new(map)).map(FieldSpec)
            }
        }
        deserializer.deserialize_any(SpecVisitor)
    }
}

// ---------------------------------------------------------------------------
// The compiled form: what evaluation walks.
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
struct Events {
    product_upserted: Option<ProductMap>,
    course_upserted: Option<CourseMap>,
    course_run_upserted: Option<RunEventMap>,
    instructor_upserted: Option<InstructorMap>,
    product_retired: Option<Field>,
}

#[derive(Clone, Debug)]
struct ProductMap {
    course: CourseMap,
    instructors: Option<InstructorMap>,
    runs: Option<RunMap>,
}

#[derive(Clone, Debug)]
struct RunEventMap {
    product_key: Field,
    run: RunMap,
}

#[derive(Clone, Debug)]
struct CourseMap {
    at: Option<JsonPath>,
    product_key: Option<Field>,
    product_type: Option<Field>,
    title: Option<Field>,
    org: Option<Field>,
    number: Option<Field>,
    short_description: Option<Field>,
    long_description: Option<Field>,
    level: Option<Field>,
    subjects: Option<Field>,
    languages: Option<Field>,
    effort: Option<(Field, Field)>,
    length_weeks: Option<Field>,
    image_url: Option<Field>,
}

#[derive(Clone, Debug)]
struct InstructorMap {
    records: Records,
    instructor_key: Option<Field>,
    given_name: Option<Field>,
    family_name: Option<Field>,
    title: Option<Field>,
    organization: Option<Field>,
    bio: Option<Field>,
    image_url: Option<Field>,
}

#[derive(Clone, Debug)]
struct RunMap {
    records: Records,
    course_run_key: Option<Field>,
    start: Field,
    end: Field,
    enrollment_end: Option<Field>,
    pacing: Field,
    run_type: Option<Field>,
    seats: Option<SeatMap>,
}

#[derive(Clone, Debug)]
struct SeatMap {
    records: Records,
    mode: Option<Field>,
    price: Option<(Field, Field)>,
    sku: Option<Field>,
    upgrade_deadline: Option<Field>,
}

/// Where a section's records come from.
#[derive(Clone, Debug)]
struct Records {
    select: Select,
    /// A list must have at least one element; an `at` object must be present.
    required: bool,
}

impl Records {
    fn at(&self) -> Option<&JsonPath> {
        match &self.select {
            Select::At(path) => Some(path),
            Select::Here | Select::List { .. } => None,
        }
    }
}

#[derive(Clone, Debug)]
enum Select {
    /// One record: the enclosing object itself.
    Here,
    /// One record: the object at this path.
    At(JsonPath),
    /// One record per element: `each` is `written` with a trailing `[*]` when it had no wildcard.
    List { written: JsonPath, each: JsonPath },
}

/// What the kind of canonical field a directive set fills is; decides the coercions allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Text,
    Currency,
    Amount,
    Int,
    Time,
    Pacing,
    ProductType,
    List,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Text => "a text field (coerce: string)",
            Kind::Currency => "a currency code (coerce: currency or string)",
            Kind::Amount => "a price amount (coerce: decimal)",
            Kind::Int => "a whole-number field (coerce: integer)",
            Kind::Time => "a time (coerce: date)",
            Kind::Pacing => "the pacing (coerce: string, then INSTRUCTOR_PACED or SELF_PACED)",
            Kind::ProductType => "the product type (coerce: string, then a ProductType name)",
            Kind::List => "a list of strings (coerce: string or split)",
        }
    }
}

/// A compiled field.
#[derive(Clone, Debug)]
struct Field {
    source: FieldSource,
    required: bool,
    default: Option<Out>,
    /// Keys folded to lower case.
    map: Option<HashMap<String, String>>,
    conv: Conv,
}

#[derive(Clone, Debug)]
enum FieldSource {
    Path(JsonPath),
    Template(Template),
    /// Only a `default`: a constant.
    Default,
}

/// How a raw value becomes the canonical one.
#[derive(Clone, Debug)]
enum Conv {
    Text,
    Currency,
    Decimal {
        scale: u32,
    },
    Int,
    Time(DateFormat),
    Pacing,
    ProductType,
    /// A list; with a separator, strings are split on it.
    List(Option<String>),
}

#[derive(Clone, Debug)]
enum DateFormat {
    Rfc3339,
    EpochSeconds,
    Pattern(String),
}

/// A canonical value.
#[derive(Clone, Debug, PartialEq)]
enum Out {
    Text(String),
    Int(i32),
    Time(DateTime<Utc>),
    List(Vec<String>),
    Pacing(Pacing),
    ProductType(ProductType),
}

// ---------------------------------------------------------------------------
// Paths and templates.
// ---------------------------------------------------------------------------

/// `course.faculty[0].name`, `topics[*].slug`, `$.course.org` (from the payload's root).
#[derive(Clone, Debug, PartialEq, Eq)]
struct JsonPath {
    absolute: bool,
    segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
    Any,
}

impl JsonPath {
    fn parse(raw: &str) -> Result<Self, String> {
        let (absolute, body) = match raw.strip_prefix('$') {
            Some("") => return Ok(Self { absolute: true, segments: Vec::new() }),
            Some(rest) if rest.starts_with('[') => (true, rest),
            Some(rest) => (true, rest.strip_prefix('.').ok_or("after $ comes . or [")?),
            None => (false, raw),
        };
        if body.is_empty() {
            return Err("is empty".into());
        }
        let mut segments = Vec::new();
        let mut rest = body;
        loop {
            if let Some(after) = rest.strip_prefix('[') {
                let (inner, tail) = after.split_once(']').ok_or("has a [ without its ]")?;
                segments.push(match inner {
                    "*" => Segment::Any,
                    _ if !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_digit()) => {
                        Segment::Index(inner.parse().map_err(|_| format!("[{inner}] is too large an index"))?)
                    }
                    _ => return Err(format!("[{inner}] is neither an index nor [*]")),
                });
                rest = tail;
            } else {
                let end = rest.find(['.', '[']).unwrap_or(rest.len());
                let (key, tail) = rest.split_at(end);
                if key.is_empty() {
                    return Err("has an empty key".into());
                }
                if key.contains([']', '{', '}']) {
                    return Err(format!("key {key:?} contains ], {{ or }}"));
                }
                segments.push(Segment::Key(key.to_string()));
                rest = tail;
            }
            if rest.is_empty() {
                break;
            }
            if let Some(after) = rest.strip_prefix('.') {
                if after.is_empty() || after.starts_with(['.', '[']) {
                    return Err("has an empty key".into());
                }
                rest = after;
            } else if !rest.starts_with('[') {
                return Err(format!("cannot read {rest:?}"));
            }
        }
        Ok(Self { absolute, segments })
    }

    fn has_wildcard(&self) -> bool {
        self.segments.contains(&Segment::Any)
    }

    /// The path as the payload would spell it from `scope`, for "is required" violations.
    fn requested(&self, scope: &Scope<'_>) -> String {
        let mut path = if self.absolute { String::new() } else { scope.path.clone() };
        for segment in &self.segments {
            path = match segment {
                Segment::Key(key) => join_key(&path, key),
                Segment::Index(i) => format!("{path}[{i}]"),
                Segment::Any => format!("{path}[*]"),
            };
        }
        display_path(path)
    }

    /// Every value the path reaches from `scope` (or the root), with its concrete
    /// path; and a violation for each step that met the wrong JSON type. A null or
    /// a missing key on the way is simply absent. Iterative: a path is as long as
    /// its file says, whatever the payload.
    fn resolve<'a>(&self, root: &'a Value, scope: &Scope<'a>) -> (Vec<(String, &'a Value)>, Vec<Violation>) {
        let start = if self.absolute { (String::new(), root) } else { (scope.path.clone(), scope.value) };
        let mut current = vec![start];
        let mut shape = Vec::new();
        for segment in &self.segments {
            let mut next = Vec::new();
            for (path, value) in current {
                match (segment, value) {
                    (_, Value::Null) => {}
                    (Segment::Key(key), Value::Object(map)) => {
                        if let Some(child) = map.get(key) {
                            next.push((join_key(&path, key), child));
                        }
                    }
                    (Segment::Key(_), other) => {
                        shape.push(violation(display_path(path), format!("must be an object, got {}", describe(other))))
                    }
                    (Segment::Index(i), Value::Array(items)) => {
                        if let Some(child) = items.get(*i) {
                            next.push((format!("{path}[{i}]"), child));
                        }
                    }
                    (Segment::Any, Value::Array(items)) => {
                        next.extend(items.iter().enumerate().map(|(i, child)| (format!("{path}[{i}]"), child)));
                    }
                    (Segment::Index(_) | Segment::Any, other) => {
                        shape.push(violation(display_path(path), format!("must be a list, got {}", describe(other))))
                    }
                }
            }
            current = next;
        }
        (current.into_iter().map(|(path, value)| (display_path(path), value)).collect(), shape)
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = if self.absolute { "$".to_string() } else { String::new() };
        for segment in &self.segments {
            match segment {
                Segment::Key(key) if text.is_empty() => text.push_str(key),
                Segment::Key(key) => {
                    text.push('.');
                    text.push_str(key);
                }
                Segment::Index(i) => text.push_str(&format!("[{i}]")),
                Segment::Any => text.push_str("[*]"),
            }
        }
        f.write_str(&text)
    }
}

/// `course-v1:{$.course.org}+{$.course.code}+{id}`: literal text and `{path}`
/// placeholders; `{{` and `}}` are literal braces.
#[derive(Clone, Debug)]
struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug)]
enum Part {
    Literal(String),
    Value(JsonPath),
}

impl Template {
    fn parse(raw: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = raw.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut inner = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => inner.push(c),
                            None => return Err(format!("{{{inner} is not closed with }}")),
                        }
                    }
                    let path = JsonPath::parse(&inner).map_err(|e| format!("placeholder {{{inner}}} {e}"))?;
                    if path.has_wildcard() {
                        return Err(format!("placeholder {{{inner}}} has a [*]; a placeholder is one value"));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Value(path));
                }
                '}' => return Err("has a } without its {; write }} for a literal brace".into()),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if !parts.iter().any(|p| matches!(p, Part::Value(_))) {
            return Err("has no {placeholder}; use default for a constant".into());
        }
        Ok(Self { parts })
    }
}

fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

/// The payload's root is `$` in violations; everything else is spelt from it without the `$.`.
fn display_path(path: String) -> String {
    if path.is_empty() { "$".to_string() } else { path }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Null, or a string of only whitespace: treated as absent.
fn is_blank(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        _ => false,
    }
}

/// Whether the payload nests deeper than `max`; with an explicit stack, so a
/// hostile payload cannot exhaust the thread's.
fn deeper_than(value: &Value, max: usize) -> bool {
    let mut stack = vec![(value, 1usize)];
    while let Some((value, depth)) = stack.pop() {
        match value {
            Value::Array(_) | Value::Object(_) if depth > max => return true,
            Value::Array(items) => stack.extend(items.iter().map(|child| (child, depth + 1))),
            Value::Object(map) => stack.extend(map.values().map(|child| (child, depth + 1))),
            _ => {}
        }
    }
    false
}

// ---------------------------------------------------------------------------
// Evaluation: one pass that collects VALIDATE violations (`check`), TRANSFORM
// mapping violations (`mapping`) and the canonical event with stand-ins where a
// value failed.
// ---------------------------------------------------------------------------

static NULL: Value = Value::Null;

#[derive(Clone, Debug)]
struct Scope<'a> {
    value: &'a Value,
    /// The concrete path of `value` in the payload; empty for the root.
    path: String,
}

struct Eval<'a> {
    root: &'a Value,
    check: Vec<Violation>,
    mapping: Vec<Violation>,
    /// Canonical records (see [`record_of`]) where a coercion failed.
    tainted: HashSet<String>,
}

struct Outcome {
    event: Option<CanonicalEvent>,
    check: Vec<Violation>,
    mapping: Vec<Violation>,
    tainted: HashSet<String>,
}

/// What a field came to.
enum Got {
    Value(Out),
    /// Not in the payload and no default.
    Absent,
    /// Present but unusable; a violation was recorded.
    Failed,
}

impl Got {
    fn value(self) -> Option<Out> {
        match self {
            Got::Value(out) => Some(out),
            Got::Absent | Got::Failed => None,
        }
    }
}

impl<'a> Eval<'a> {
    fn into_outcome(self, event: Option<CanonicalEvent>) -> Outcome {
        Outcome { event, check: self.check, mapping: self.mapping, tainted: self.tainted }
    }

    /// A coercion or value map failed: a TRANSFORM violation at the source path,
    /// and the canonical record marked so its stand-in values are not judged.
    fn fail(&mut self, at: String, reason: String, record: &str) {
        self.mapping.push(violation(at, reason));
        self.tainted.insert(record.to_string());
    }

    /// The one record a single-record section reads: the object at `at`, or
    /// the enclosing one. A missing `at` gives a null scope, so each required
    /// field under it reports its own path.
    fn single(&mut self, at: Option<&JsonPath>, scope: &Scope<'a>) -> Scope<'a> {
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
    fn records(&mut self, records: &Records, scope: &Scope<'a>) -> Vec<Scope<'a>> {
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

    fn course(&mut self, map: &CourseMap, scope: &Scope<'a>, record: &str, default_type: ProductType) -> Course {
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
                    self.fail(max.describe_at(scope), "is required when the minimum effort is given".into(), record);
                    None
                }
                (Got::Absent, Got::Value(_)) => {
                    self.fail(min.describe_at(scope), "is required when the maximum effort is given".into(), record);
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

    fn instructor(&mut self, map: &InstructorMap, scope: &Scope<'a>, record: &str) -> Instructor {
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

    fn run(&mut self, map: &RunMap, scope: &Scope<'a>, record: &str) -> CourseRun {
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

    fn seat(&mut self, map: &SeatMap, scope: &Scope<'a>, record: &str) -> Seat {
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

    fn text(&mut self, field: Option<&Field>, scope: &Scope<'a>, record: &str) -> String {
        match field.map(|f| self.field(f, scope, record).value()) {
            Some(Some(Out::Text(text))) => text,
            _ => String::new(),
        }
    }

    fn int(&mut self, field: Option<&Field>, scope: &Scope<'a>, record: &str) -> Option<i32> {
        match field.map(|f| self.field(f, scope, record).value()) {
            Some(Some(Out::Int(n))) => Some(n),
            _ => None,
        }
    }

    fn time(&mut self, field: Option<&Field>, scope: &Scope<'a>, record: &str) -> Option<DateTime<Utc>> {
        match field.map(|f| self.field(f, scope, record).value()) {
            Some(Some(Out::Time(t))) => Some(t),
            _ => None,
        }
    }

    fn list(&mut self, field: Option<&Field>, scope: &Scope<'a>, record: &str) -> Vec<String> {
        match field.map(|f| self.field(f, scope, record).value()) {
            Some(Some(Out::List(items))) => items,
            _ => Vec::new(),
        }
    }

    /// One field: found (or defaulted), checked for a usable type, mapped and coerced.
    fn field(&mut self, field: &Field, scope: &Scope<'a>, record: &str) -> Got {
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
    fn list_field(
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
    fn template(&mut self, template: &Template, scope: &Scope<'a>, required: bool) -> Option<String> {
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
    fn fallback(&self) -> Got {
        self.default.clone().map_or(Got::Absent, Got::Value)
    }

    /// The payload path this field reads, for violations about its absence.
    fn describe_at(&self, scope: &Scope<'_>) -> String {
        match &self.source {
            FieldSource::Path(path) => path.requested(scope),
            FieldSource::Template(_) | FieldSource::Default => display_path(scope.path.clone()),
        }
    }

    /// VALIDATE's type check of a present, non-blank scalar value; Err says what was expected.
    fn accepts(&self, value: &Value) -> Result<(), &'static str> {
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
    fn mapped(&self, raw: &str) -> Result<String, String> {
        let Some(map) = &self.map else { return Ok(raw.to_string()) };
        map.get(&raw.trim().to_lowercase()).cloned().ok_or_else(|| {
            let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
            keys.sort_unstable();
            format!("{raw:?} is not one of: {}", keys.join(", "))
        })
    }

    /// Value map, then coercion, to the canonical value (scalars; lists are converted in `list_field`).
    fn convert(&self, raw: &str) -> Result<Out, String> {
        let text = self.mapped(raw)?;
        match &self.conv {
            Conv::Text => Ok(Out::Text(text)),
            Conv::Currency => Ok(Out::Text(text.trim().to_uppercase())),
            Conv::Decimal { scale } => parse_decimal(&text, *scale).map(Out::Text),
            Conv::Int => {
                let n = parse_integer(&text)?;
                i32::try_from(n).map(Out::Int).map_err(|_| format!("{n} is out of range"))
            }
            Conv::Time(format) => parse_date(&text, format).map(Out::Time),
            Conv::Pacing => Pacing::parse(&text.trim().to_uppercase())
                .map(Out::Pacing)
                .ok_or_else(|| format!("{text:?} is not a pacing; expected INSTRUCTOR_PACED or SELF_PACED")),
            Conv::ProductType => ProductType::parse(&text.trim().to_uppercase())
                .map(Out::ProductType)
                .ok_or_else(|| format!("{text:?} is not a product type; expected one of {}", product_type_names())),
            Conv::List(_) => Ok(Out::List(vec![text])),
        }
    }
}

fn violation(field_path: impl Into<String>, reason: impl Into<String>) -> Violation {
    Violation { field_path: field_path.into(), reason: reason.into() }
}

fn no_mapping(source: &str, event: EventName) -> Violation {
    violation("event_name", format!("source {source:?} has no mapping for {event}; see its source file"))
}

/// The canonical record a domain violation belongs to: `course_runs[1].seats[0]`
/// for `course_runs[1].seats[0].price.amount`, `course_runs[1]` for
/// `course_runs[1].end`, `course_run` for `course_run.end`, `` for `title`.
fn record_of(field_path: &str) -> &str {
    if let Some(close) = field_path.rfind(']') {
        return field_path.get(..=close).unwrap_or_default();
    }
    match field_path.split_once('.') {
        Some((record, _)) => record,
        None => "",
    }
}

/// Duplicates out (a shape problem met by several fields is one problem), then capped.
fn finish(violations: Vec<Violation>) -> Vec<Violation> {
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

// ---------------------------------------------------------------------------
// Coercions: pure functions of the raw text.
// ---------------------------------------------------------------------------

/// A JSON scalar's text: a string trimmed, a number as written (see [`number_text`]), a boolean as `true`/`false`.
fn raw_text(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.trim().to_string()),
        Value::Number(n) => number_text(n),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("must be a string or a number, got {}", describe(other))),
    }
}

/// A number's text, exact: integers as they are; other numbers in serde_json's
/// shortest round-trip form, refused in exponent form (`1e21`), which is no
/// price or count a source means. A payload that came through protobuf's
/// `Struct` carries every number as a double, so `1299900` arrives as
/// `1299900.0`: a zero fraction is dropped.
fn number_text(n: &Number) -> Result<String, String> {
    if n.is_i64() || n.is_u64() {
        return Ok(n.to_string());
    }
    let text = n.to_string();
    if text.contains(['e', 'E']) {
        return Err(format!("{text} is in exponent form; send a plain decimal"));
    }
    Ok(text.strip_suffix(".0").map(str::to_string).unwrap_or(text))
}

/// A whole number's digits, for keys built by templates; None for fractions and exponents.
fn whole_number_text(n: &Number) -> Option<String> {
    number_text(n).ok().filter(|text| !text.contains('.'))
}

/// `-12`, `12`, `12.0` (a zero fraction, as doubles print); nothing else.
fn parse_integer(text: &str) -> Result<i64, String> {
    let trimmed = text.trim();
    let whole = match trimmed.split_once('.') {
        Some((whole, fraction)) if !fraction.is_empty() && fraction.bytes().all(|b| b == b'0') => whole,
        Some(_) => return Err(format!("{trimmed:?} is not a whole number")),
        None => trimmed,
    };
    let digits = whole.strip_prefix('-').unwrap_or(whole);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{trimmed:?} is not a whole number"));
    }
    whole.parse::<i64>().map_err(|_| format!("{trimmed} is out of range"))
}

/// An exact decimal for a price: `2450`, `2450.00`, `2,450.00` (comma thousands
/// separators in groups of three), `-5`. With `scale` > 0 the input counts
/// 1/10^scale units (cents with 2) and must be whole: `1299900` → `12999.00`.
/// No exponents, no floats, at most 40 characters.
fn parse_decimal(text: &str, scale: u32) -> Result<String, String> {
    let trimmed = text.trim();
    if trimmed.len() > 40 {
        return Err("is too long for an amount (over 40 characters)".into());
    }
    let (negative, unsigned) = match trimmed.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, trimmed),
    };
    let not_decimal = || format!("{trimmed:?} is not a decimal amount");
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
            return Err(format!("{trimmed:?} has misplaced thousands separators"));
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
        return Err(format!("{trimmed:?} is not a whole number of 1/10^{scale} units (scale = {scale})"));
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
fn parse_date(text: &str, format: &DateFormat) -> Result<DateTime<Utc>, String> {
    let trimmed = text.trim();
    match format {
        DateFormat::Rfc3339 => DateTime::parse_from_rfc3339(trimmed)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| format!("{trimmed:?} is not an RFC 3339 time: {e}")),
        DateFormat::EpochSeconds => {
            let seconds = parse_integer(trimmed)?;
            DateTime::from_timestamp(seconds, 0).ok_or_else(|| format!("{seconds} seconds is out of range"))
        }
        DateFormat::Pattern(pattern) => DateTime::parse_from_str(trimmed, pattern)
            .map(|t| t.with_timezone(&Utc))
            .or_else(|_| NaiveDateTime::parse_from_str(trimmed, pattern).map(|t| t.and_utc()))
            .or_else(|_| {
                NaiveDate::parse_from_str(trimmed, pattern).map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
            })
            .map_err(|e| format!("{trimmed:?} does not match the date format {pattern}: {e}")),
    }
}

fn product_type_names() -> String {
    ProductType::ALL.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
}

// ---------------------------------------------------------------------------
// Loading: file → checked transformer. Every problem names the file and key.
// ---------------------------------------------------------------------------

fn parse_file(file: &str, contents: &str) -> Result<SourceTransformer, SourceConfigError> {
    let Some(expected) = file.strip_suffix(".toml") else {
        return Err(SourceConfigError::FileName { file: file.to_string() });
    };
    let parsed: SourceFile = toml::from_str(contents)
        .map_err(|e| SourceConfigError::Parse { file: file.to_string(), message: e.to_string() })?;
    let compiler = Compiler { file };
    if parsed.source != expected {
        return Err(SourceConfigError::NameMismatch {
            file: file.to_string(),
            declared: parsed.source,
            expected: expected.to_string(),
        });
    }
    let name_ok = (1..=64).contains(&parsed.source.len())
        && parsed.source.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !name_ok {
        return Err(compiler.invalid("source", "use 1 to 64 lower-case letters, digits, - and _"));
    }
    let product_type = ProductType::parse(&parsed.product_type).ok_or_else(|| {
        compiler.invalid("product_type", format!("{:?} is not one of {}", parsed.product_type, product_type_names()))
    })?;
    if parsed.quota.rate_per_second == 0 {
        return Err(compiler.invalid("quota.rate_per_second", "must be at least 1"));
    }
    if parsed.quota.burst == 0 {
        return Err(compiler.invalid("quota.burst", "must be at least 1"));
    }
    let events = compiler.events(parsed.events)?;
    Ok(SourceTransformer { name: parsed.source, quota: parsed.quota, product_type, events })
}

struct Compiler<'f> {
    file: &'f str,
}

impl Compiler<'_> {
    fn invalid(&self, key: &str, problem: impl Into<String>) -> SourceConfigError {
        SourceConfigError::Invalid { file: self.file.to_string(), key: key.to_string(), problem: problem.into() }
    }

    fn events(&self, file: EventsFile) -> Result<Events, SourceConfigError> {
        let product_upserted = file
            .product_upserted
            .map(|p| {
                let key = r#"events."product.upserted""#;
                Ok::<_, SourceConfigError>(ProductMap {
                    course: self.course(&format!("{key}.course"), p.course)?,
                    instructors: p
                        .instructors
                        .map(|i| self.instructor(&format!("{key}.instructors"), i, true))
                        .transpose()?,
                    runs: p.runs.map(|r| self.run(&format!("{key}.runs"), r, true)).transpose()?,
                })
            })
            .transpose()?;
        let course_upserted =
            file.course_upserted.map(|c| self.course(r#"events."course.upserted".course"#, c.course)).transpose()?;
        let course_run_upserted = file
            .course_run_upserted
            .map(|r| {
                let key = r#"events."course_run.upserted""#;
                Ok::<_, SourceConfigError>(RunEventMap {
                    product_key: self.field(&format!("{key}.product_key"), r.product_key, Kind::Text, false)?,
                    run: self.run(&format!("{key}.run"), r.run, false)?,
                })
            })
            .transpose()?;
        let instructor_upserted = file
            .instructor_upserted
            .map(|i| self.instructor(r#"events."instructor.upserted".instructor"#, i.instructor, false))
            .transpose()?;
        let product_retired = file
            .product_retired
            .map(|r| self.field(r#"events."product.retired".product_key"#, r.product_key, Kind::Text, false))
            .transpose()?;
        Ok(Events { product_upserted, course_upserted, course_run_upserted, instructor_upserted, product_retired })
    }

    fn course(&self, key: &str, file: CourseFile) -> Result<CourseMap, SourceConfigError> {
        let k = |name: &str| format!("{key}.{name}");
        Ok(CourseMap {
            at: file.at.map(|at| self.path(&k("at"), &at, false)).transpose()?,
            product_key: self.optional(&k("product_key"), file.product_key, Kind::Text)?,
            product_type: self.optional(&k("product_type"), file.product_type, Kind::ProductType)?,
            title: self.optional(&k("title"), file.title, Kind::Text)?,
            org: self.optional(&k("org"), file.org, Kind::Text)?,
            number: self.optional(&k("number"), file.number, Kind::Text)?,
            short_description: self.optional(&k("short_description"), file.short_description, Kind::Text)?,
            long_description: self.optional(&k("long_description"), file.long_description, Kind::Text)?,
            level: self.optional(&k("level"), file.level, Kind::Text)?,
            subjects: self.optional(&k("subjects"), file.subjects, Kind::List)?,
            languages: self.optional(&k("languages"), file.languages, Kind::List)?,
            effort: file
                .effort
                .map(|e| {
                    Ok::<_, SourceConfigError>((
                        self.field(&k("effort.min_hours_per_week"), e.min_hours_per_week, Kind::Int, false)?,
                        self.field(&k("effort.max_hours_per_week"), e.max_hours_per_week, Kind::Int, false)?,
                    ))
                })
                .transpose()?,
            length_weeks: self.optional(&k("length_weeks"), file.length_weeks, Kind::Int)?,
            image_url: self.optional(&k("image_url"), file.image_url, Kind::Text)?,
        })
    }

    fn instructor(&self, key: &str, file: InstructorFile, many: bool) -> Result<InstructorMap, SourceConfigError> {
        let k = |name: &str| format!("{key}.{name}");
        Ok(InstructorMap {
            records: self.records(key, file.list, file.at, file.required, many)?,
            instructor_key: self.optional(&k("instructor_key"), file.instructor_key, Kind::Text)?,
            given_name: self.optional(&k("given_name"), file.given_name, Kind::Text)?,
            family_name: self.optional(&k("family_name"), file.family_name, Kind::Text)?,
            title: self.optional(&k("title"), file.title, Kind::Text)?,
            organization: self.optional(&k("organization"), file.organization, Kind::Text)?,
            bio: self.optional(&k("bio"), file.bio, Kind::Text)?,
            image_url: self.optional(&k("image_url"), file.image_url, Kind::Text)?,
        })
    }

    fn run(&self, key: &str, file: RunFile, many: bool) -> Result<RunMap, SourceConfigError> {
        let k = |name: &str| format!("{key}.{name}");
        Ok(RunMap {
            records: self.records(key, file.list, file.at, file.required, many)?,
            course_run_key: self.optional(&k("course_run_key"), file.course_run_key, Kind::Text)?,
            start: self.field(&k("start"), file.start, Kind::Time, true)?,
            end: self.field(&k("end"), file.end, Kind::Time, true)?,
            enrollment_end: self.optional(&k("enrollment_end"), file.enrollment_end, Kind::Time)?,
            pacing: self.field(&k("pacing"), file.pacing, Kind::Pacing, true)?,
            run_type: self.optional(&k("run_type"), file.run_type, Kind::Text)?,
            seats: file.seats.map(|s| self.seat(&k("seats"), s)).transpose()?,
        })
    }

    fn seat(&self, key: &str, file: SeatFile) -> Result<SeatMap, SourceConfigError> {
        let k = |name: &str| format!("{key}.{name}");
        Ok(SeatMap {
            records: self.records(key, file.list, file.at, file.required, true)?,
            mode: self.optional(&k("mode"), file.mode, Kind::Text)?,
            price: file
                .price
                .map(|p| {
                    Ok::<_, SourceConfigError>((
                        self.field(&k("price.amount"), p.amount, Kind::Amount, false)?,
                        self.field(&k("price.currency_code"), p.currency_code, Kind::Currency, false)?,
                    ))
                })
                .transpose()?,
            sku: self.optional(&k("sku"), file.sku, Kind::Text)?,
            upgrade_deadline: self.optional(&k("upgrade_deadline"), file.upgrade_deadline, Kind::Time)?,
        })
    }

    /// `list` / `at` / `required` of a section; `many` when the section may be a list.
    fn records(
        &self,
        key: &str,
        list: Option<String>,
        at: Option<String>,
        required: bool,
        many: bool,
    ) -> Result<Records, SourceConfigError> {
        let select = match (list, at) {
            (Some(_), Some(_)) => return Err(self.invalid(key, "has both list and at; use one")),
            (Some(_), None) if !many => {
                return Err(self.invalid(&format!("{key}.list"), "this section maps one record; use at"));
            }
            (Some(list), None) => {
                let written = self.path(&format!("{key}.list"), &list, true)?;
                let mut each = written.clone();
                if !each.has_wildcard() {
                    each.segments.push(Segment::Any);
                }
                Select::List { written, each }
            }
            (None, Some(at)) => Select::At(self.path(&format!("{key}.at"), &at, false)?),
            (None, None) => Select::Here,
        };
        if required && (!many || matches!(select, Select::Here)) {
            return Err(self.invalid(
                &format!("{key}.required"),
                "applies to a list or an at object of a list section; mark the fields required instead",
            ));
        }
        Ok(Records { select, required })
    }

    fn path(&self, key: &str, raw: &str, wildcards: bool) -> Result<JsonPath, SourceConfigError> {
        let path = JsonPath::parse(raw).map_err(|e| self.invalid(key, format!("path {raw:?} {e}")))?;
        if path.has_wildcard() && !wildcards {
            return Err(self.invalid(key, format!("path {raw:?} has a [*], but this field takes one value")));
        }
        Ok(path)
    }

    fn optional(&self, key: &str, spec: Option<FieldSpec>, kind: Kind) -> Result<Option<Field>, SourceConfigError> {
        spec.map(|spec| self.field(key, spec, kind, false)).transpose()
    }

    /// One field's directives, checked against the canonical field's kind.
    /// `always` for fields the model cannot leave empty (a run's start, end, pacing).
    fn field(&self, key: &str, spec: FieldSpec, kind: Kind, always: bool) -> Result<Field, SourceConfigError> {
        let k = |name: &str| format!("{key}.{name}");
        let FieldFile { path, template, default, required, map, coerce, format, scale, separator } = spec.0;
        let conv = match (kind, coerce) {
            (Kind::Text, None | Some(CoerceName::String)) => Conv::Text,
            (Kind::Currency, None | Some(CoerceName::Currency)) => Conv::Currency,
            (Kind::Currency, Some(CoerceName::String)) => Conv::Text,
            (Kind::Amount, None | Some(CoerceName::Decimal)) => {
                let scale = scale.unwrap_or(0);
                if scale > 18 {
                    return Err(self.invalid(&k("scale"), "must be at most 18"));
                }
                Conv::Decimal { scale }
            }
            (Kind::Int, None | Some(CoerceName::Integer)) => Conv::Int,
            (Kind::Time, None | Some(CoerceName::Date)) => {
                Conv::Time(self.date_format(&k("format"), format.as_deref())?)
            }
            (Kind::Pacing, None | Some(CoerceName::String)) => Conv::Pacing,
            (Kind::ProductType, None | Some(CoerceName::String)) => Conv::ProductType,
            (Kind::List, None | Some(CoerceName::String)) => Conv::List(None),
            (Kind::List, Some(CoerceName::Split)) => {
                let separator = separator.clone().unwrap_or_else(|| ",".to_string());
                if separator.is_empty() {
                    return Err(self.invalid(&k("separator"), "must not be empty"));
                }
                Conv::List(Some(separator))
            }
            (kind, Some(coerce)) => {
                return Err(self.invalid(&k("coerce"), format!("{coerce} does not fit {}", kind.describe())));
            }
        };
        if format.is_some() && !matches!(conv, Conv::Time(_)) {
            return Err(self.invalid(&k("format"), "applies to coerce = \"date\" only"));
        }
        if scale.is_some() && !matches!(conv, Conv::Decimal { .. }) {
            return Err(self.invalid(&k("scale"), "applies to coerce = \"decimal\" only"));
        }
        if separator.is_some() && !matches!(conv, Conv::List(Some(_))) {
            return Err(self.invalid(&k("separator"), "applies to coerce = \"split\" only"));
        }
        let source = match (path, template) {
            (Some(_), Some(_)) => return Err(self.invalid(key, "has both path and template; use one")),
            (Some(path), None) => FieldSource::Path(self.path(&k("path"), &path, kind == Kind::List)?),
            (None, Some(template)) => {
                if kind != Kind::Text {
                    return Err(self.invalid(&k("template"), format!("makes text, but this is {}", kind.describe())));
                }
                if map.is_some() {
                    return Err(self.invalid(&k("map"), "does not apply to a template"));
                }
                FieldSource::Template(
                    Template::parse(&template)
                        .map_err(|e| self.invalid(&k("template"), format!("{template:?} {e}")))?,
                )
            }
            (None, None) if default.is_some() => FieldSource::Default,
            (None, None) => return Err(self.invalid(key, "needs a path, a template or a default")),
        };
        if required && default.is_some() {
            return Err(self.invalid(&k("required"), "a required field takes no default; drop one of them"));
        }
        if always && !required && default.is_none() {
            return Err(self.invalid(key, "the canonical model needs a value: set required = true or a default"));
        }
        let map = map.map(|map| self.value_map(&k("map"), map, &conv)).transpose()?;
        let default = default.map(|value| self.default(&k("default"), value, &conv)).transpose()?;
        Ok(Field { source, required, default, map, conv })
    }

    fn date_format(&self, key: &str, format: Option<&str>) -> Result<DateFormat, SourceConfigError> {
        Ok(match format {
            None | Some("rfc3339") => DateFormat::Rfc3339,
            Some("epoch_seconds") => DateFormat::EpochSeconds,
            Some(pattern) => {
                if pattern.is_empty() || StrftimeItems::new(pattern).any(|item| matches!(item, Item::Error)) {
                    return Err(self.invalid(
                        key,
                        format!("{pattern:?} is neither rfc3339, epoch_seconds nor a valid strftime pattern"),
                    ));
                }
                DateFormat::Pattern(pattern.to_string())
            }
        })
    }

    fn value_map(
        &self,
        key: &str,
        map: BTreeMap<String, String>,
        conv: &Conv,
    ) -> Result<HashMap<String, String>, SourceConfigError> {
        let mut folded = HashMap::new();
        for (from, to) in map {
            let canonical_ok = match conv {
                Conv::Pacing => Pacing::parse(&to.to_uppercase()).is_some(),
                Conv::ProductType => ProductType::parse(&to.to_uppercase()).is_some(),
                _ => true,
            };
            if !canonical_ok {
                return Err(self.invalid(&format!("{key}.{from}"), format!("{to:?} is not a value of this field")));
            }
            if folded.insert(from.trim().to_lowercase(), to).is_some() {
                return Err(self.invalid(key, format!("{from:?} appears twice, ignoring case")));
            }
        }
        Ok(folded)
    }

    /// A default is a canonical value, checked now so a bad one fails at start-up, not per event.
    fn default(&self, key: &str, value: toml::Value, conv: &Conv) -> Result<Out, SourceConfigError> {
        let wrong = |expected: &str| self.invalid(key, format!("must be {expected}"));
        match (conv, value) {
            (Conv::Text, toml::Value::String(s)) => Ok(Out::Text(s)),
            (Conv::Text, _) => Err(wrong("a string")),
            (Conv::Currency, toml::Value::String(s)) if domain::KNOWN_CURRENCIES.contains(&s.as_str()) => {
                Ok(Out::Text(s))
            }
            (Conv::Currency, _) => Err(wrong("a currency code the catalog sells in, such as \"USD\"")),
            (Conv::Decimal { .. }, toml::Value::String(s)) if domain::is_decimal(&s) => Ok(Out::Text(s)),
            (Conv::Decimal { .. }, toml::Value::Integer(n)) => Ok(Out::Text(n.to_string())),
            (Conv::Decimal { .. }, _) => Err(wrong("a decimal amount as a string, such as \"0.00\"")),
            (Conv::Int, toml::Value::Integer(n)) => {
                i32::try_from(n).map(Out::Int).map_err(|_| wrong("an integer within 32 bits"))
            }
            (Conv::Int, _) => Err(wrong("an integer")),
            (Conv::Time(_), toml::Value::String(s)) => DateTime::parse_from_rfc3339(&s)
                .map(|t| Out::Time(t.with_timezone(&Utc)))
                .map_err(|_| wrong("an RFC 3339 time")),
            (Conv::Time(_), toml::Value::Datetime(d)) => DateTime::parse_from_rfc3339(&d.to_string())
                .map(|t| Out::Time(t.with_timezone(&Utc)))
                .map_err(|_| wrong("an RFC 3339 time with an offset")),
            (Conv::Time(_), _) => Err(wrong("an RFC 3339 time")),
            (Conv::Pacing, toml::Value::String(s)) => {
                Pacing::parse(&s).map(Out::Pacing).ok_or_else(|| wrong("INSTRUCTOR_PACED or SELF_PACED"))
            }
            (Conv::Pacing, _) => Err(wrong("INSTRUCTOR_PACED or SELF_PACED")),
            (Conv::ProductType, toml::Value::String(s)) => ProductType::parse(&s)
                .map(Out::ProductType)
                .ok_or_else(|| wrong(&format!("one of {}", product_type_names()))),
            (Conv::ProductType, _) => Err(wrong(&format!("one of {}", product_type_names()))),
            (Conv::List(_), toml::Value::Array(items)) => items
                .into_iter()
                .map(|item| match item {
                    toml::Value::String(s) => Ok(s),
                    _ => Err(wrong("a list of strings")),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Out::List),
            (Conv::List(_), _) => Err(wrong("a list of strings")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_and_print() {
        for raw in ["course.title", "variants[1].starts_on", "topics[*].slug", "$.course.org", "$", "$[0]", "a[0][1]"] {
            let path = JsonPath::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(path.to_string(), raw);
        }
        for bad in ["", "a..b", "a.", ".a", "a[", "a[x]", "a[-1]", "$x", "a]b", "a.[0]", "a[0]b"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn templates_parse() {
        let t = Template::parse("course-v1:{$.course.org}+{code}+{{x}}").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.parts.len(), 5);
        for bad in ["{a", "a}", "no placeholder", "{a[*]}", "{}"] {
            assert!(Template::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn numbers_keep_their_text() {
        let text = |v: Value| match v {
            Value::Number(n) => number_text(&n),
            _ => Err("not a number".into()),
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

    #[test]
    fn records_of_canonical_paths() {
        assert_eq!(record_of("course_runs[1].seats[0].price.amount"), "course_runs[1].seats[0]");
        assert_eq!(record_of("course_runs[1].end"), "course_runs[1]");
        assert_eq!(record_of("course_run.end"), "course_run");
        assert_eq!(record_of("instructor.family_name"), "instructor");
        assert_eq!(record_of("title"), "");
    }

    #[test]
    fn depth_is_measured_without_recursion() {
        let mut deep = Value::Null;
        for _ in 0..100 {
            deep = Value::Array(vec![deep]);
        }
        assert!(deeper_than(&deep, MAX_DEPTH));
        assert!(!deeper_than(&serde_json::json!({"a": [{"b": 1}]}), 3));
        assert!(deeper_than(&serde_json::json!({"a": [{"b": [1]}]}), 3));
    }
}
