//! Compilation: a source file becomes the checked form evaluation walks.
//! Every problem names the file and key.

use std::collections::{BTreeMap, HashMap};

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, Utc};

use super::SourceConfigError;
use super::coerce::product_type_names;
use super::file::{
    CoerceName, CourseFile, EventsFile, FieldFile, FieldSpec, InstructorFile, RunFile, SeatFile, SourceFile,
};
use super::path::{JsonPath, Segment, Template};
use super::transformer::SourceTransformer;
use crate::domain::{self, Pacing, ProductType};

/// The compiled form of a file's `[events]`: what evaluation walks, one map per event it maps.
#[derive(Clone, Debug, Default)]
pub(super) struct Events {
    pub(super) product_upserted: Option<ProductMap>,
    pub(super) course_upserted: Option<CourseMap>,
    pub(super) course_run_upserted: Option<RunEventMap>,
    pub(super) instructor_upserted: Option<InstructorMap>,
    pub(super) product_retired: Option<Field>,
}

#[derive(Clone, Debug)]
pub(super) struct ProductMap {
    pub(super) course: CourseMap,
    pub(super) instructors: Option<InstructorMap>,
    pub(super) runs: Option<RunMap>,
}

#[derive(Clone, Debug)]
pub(super) struct RunEventMap {
    pub(super) product_key: Field,
    pub(super) run: RunMap,
}

#[derive(Clone, Debug)]
pub(super) struct CourseMap {
    pub(super) at: Option<JsonPath>,
    pub(super) product_key: Option<Field>,
    pub(super) product_type: Option<Field>,
    pub(super) title: Option<Field>,
    pub(super) org: Option<Field>,
    pub(super) number: Option<Field>,
    pub(super) short_description: Option<Field>,
    pub(super) long_description: Option<Field>,
    pub(super) level: Option<Field>,
    pub(super) subjects: Option<Field>,
    pub(super) languages: Option<Field>,
    pub(super) effort: Option<(Field, Field)>,
    pub(super) length_weeks: Option<Field>,
    pub(super) image_url: Option<Field>,
}

#[derive(Clone, Debug)]
pub(super) struct InstructorMap {
    pub(super) records: Records,
    pub(super) instructor_key: Option<Field>,
    pub(super) given_name: Option<Field>,
    pub(super) family_name: Option<Field>,
    pub(super) title: Option<Field>,
    pub(super) organization: Option<Field>,
    pub(super) bio: Option<Field>,
    pub(super) image_url: Option<Field>,
}

#[derive(Clone, Debug)]
pub(super) struct RunMap {
    pub(super) records: Records,
    pub(super) course_run_key: Option<Field>,
    pub(super) start: Field,
    pub(super) end: Field,
    pub(super) enrollment_end: Option<Field>,
    pub(super) pacing: Field,
    pub(super) run_type: Option<Field>,
    pub(super) seats: Option<SeatMap>,
}

#[derive(Clone, Debug)]
pub(super) struct SeatMap {
    pub(super) records: Records,
    pub(super) mode: Option<Field>,
    pub(super) price: Option<(Field, Field)>,
    pub(super) sku: Option<Field>,
    pub(super) upgrade_deadline: Option<Field>,
}

/// Where a section's records come from.
#[derive(Clone, Debug)]
pub(super) struct Records {
    pub(super) select: Select,
    /// A list must have at least one element; an `at` object must be present.
    pub(super) required: bool,
}

impl Records {
    pub(super) fn at(&self) -> Option<&JsonPath> {
        match &self.select {
            Select::At(path) => Some(path),
            Select::Here | Select::List { .. } => None,
        }
    }
}

#[derive(Clone, Debug)]
pub(super) enum Select {
    /// One record: the enclosing object itself.
    Here,
    /// One record: the object at this path.
    At(JsonPath),
    /// One record per element: `each` is `written` with a trailing `[*]` when it had no wildcard.
    List { written: JsonPath, each: JsonPath },
}

/// What the kind of canonical field a directive set fills is; decides the coercions allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
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
    pub(super) fn describe(self) -> &'static str {
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

/// A field's value map: the source's values, folded to lower case, to canonical ones.
pub(super) type ValueMap = HashMap<String, String>;

/// A compiled field.
#[derive(Clone, Debug)]
pub(super) struct Field {
    pub(super) source: FieldSource,
    pub(super) required: bool,
    pub(super) default: Option<Out>,
    /// Keys folded to lower case.
    pub(super) map: Option<ValueMap>,
    pub(super) conv: Conv,
}

#[derive(Clone, Debug)]
pub(super) enum FieldSource {
    Path(JsonPath),
    Template(Template),
    /// Only a `default`: a constant.
    Default,
}

/// How a raw value becomes the canonical one.
#[derive(Clone, Debug)]
pub(super) enum Conv {
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
pub(super) enum DateFormat {
    Rfc3339,
    EpochSeconds,
    Pattern(String),
}

/// A canonical value.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Out {
    Text(String),
    Int(i32),
    Time(DateTime<Utc>),
    List(Vec<String>),
    Pacing(Pacing),
    ProductType(ProductType),
}

/// A source file (`file` names it, `<source>.toml`) parsed and checked into its transformer.
pub(super) fn parse_file(file: &str, contents: &str) -> Result<SourceTransformer, SourceConfigError> {
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

/// Compiles the parts of one file, naming it in every error.
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

    fn value_map(&self, key: &str, map: BTreeMap<String, String>, conv: &Conv) -> Result<ValueMap, SourceConfigError> {
        let mut folded = ValueMap::new();
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
