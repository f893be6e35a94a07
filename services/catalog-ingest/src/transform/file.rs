//! The source file format, as serde reads it, and why a file cannot be used.
//! Every table denies unknown keys, so a misspelt directive is an error rather
//! than a silently ignored line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::{MapAccess, Visitor, value::MapAccessDeserializer};
use serde::{Deserialize, Deserializer};

use super::Quota;

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SourceFile {
    pub(super) source: String,
    pub(super) product_type: String,
    pub(super) quota: Quota,
    #[serde(default)]
    pub(super) events: EventsFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsFile {
    #[serde(rename = "product.upserted")]
    pub(super) product_upserted: Option<ProductFile>,
    #[serde(rename = "course.upserted")]
    pub(super) course_upserted: Option<CourseEventFile>,
    #[serde(rename = "course_run.upserted")]
    pub(super) course_run_upserted: Option<RunEventFile>,
    #[serde(rename = "instructor.upserted")]
    pub(super) instructor_upserted: Option<InstructorEventFile>,
    #[serde(rename = "product.retired")]
    pub(super) product_retired: Option<RetiredFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProductFile {
    pub(super) course: CourseFile,
    pub(super) instructors: Option<InstructorFile>,
    pub(super) runs: Option<RunFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CourseEventFile {
    pub(super) course: CourseFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RunEventFile {
    pub(super) product_key: FieldSpec,
    pub(super) run: RunFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InstructorEventFile {
    pub(super) instructor: InstructorFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RetiredFile {
    pub(super) product_key: FieldSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CourseFile {
    pub(super) at: Option<String>,
    pub(super) product_key: Option<FieldSpec>,
    pub(super) product_type: Option<FieldSpec>,
    pub(super) title: Option<FieldSpec>,
    pub(super) org: Option<FieldSpec>,
    pub(super) number: Option<FieldSpec>,
    pub(super) short_description: Option<FieldSpec>,
    pub(super) long_description: Option<FieldSpec>,
    pub(super) level: Option<FieldSpec>,
    pub(super) subjects: Option<FieldSpec>,
    pub(super) languages: Option<FieldSpec>,
    pub(super) effort: Option<EffortFile>,
    pub(super) length_weeks: Option<FieldSpec>,
    pub(super) image_url: Option<FieldSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EffortFile {
    pub(super) min_hours_per_week: FieldSpec,
    pub(super) max_hours_per_week: FieldSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InstructorFile {
    pub(super) list: Option<String>,
    pub(super) at: Option<String>,
    #[serde(default)]
    pub(super) required: bool,
    pub(super) instructor_key: Option<FieldSpec>,
    pub(super) given_name: Option<FieldSpec>,
    pub(super) family_name: Option<FieldSpec>,
    pub(super) title: Option<FieldSpec>,
    pub(super) organization: Option<FieldSpec>,
    pub(super) bio: Option<FieldSpec>,
    pub(super) image_url: Option<FieldSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RunFile {
    pub(super) list: Option<String>,
    pub(super) at: Option<String>,
    #[serde(default)]
    pub(super) required: bool,
    pub(super) course_run_key: Option<FieldSpec>,
    pub(super) start: FieldSpec,
    pub(super) end: FieldSpec,
    pub(super) enrollment_end: Option<FieldSpec>,
    pub(super) pacing: FieldSpec,
    pub(super) run_type: Option<FieldSpec>,
    pub(super) seats: Option<SeatFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SeatFile {
    pub(super) list: Option<String>,
    pub(super) at: Option<String>,
    #[serde(default)]
    pub(super) required: bool,
    pub(super) mode: Option<FieldSpec>,
    pub(super) price: Option<PriceFile>,
    pub(super) sku: Option<FieldSpec>,
    pub(super) upgrade_deadline: Option<FieldSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PriceFile {
    pub(super) amount: FieldSpec,
    pub(super) currency_code: FieldSpec,
}

/// One canonical field's directives: a table, or a bare string as shorthand for `{ path = "..." }`.
#[derive(Debug, Default)]
pub(super) struct FieldSpec(pub(super) FieldFile);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FieldFile {
    pub(super) path: Option<String>,
    pub(super) template: Option<String>,
    pub(super) default: Option<toml::Value>,
    #[serde(default)]
    pub(super) required: bool,
    pub(super) map: Option<BTreeMap<String, String>>,
    pub(super) coerce: Option<CoerceName>,
    pub(super) format: Option<String>,
    pub(super) scale: Option<u32>,
    pub(super) separator: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum CoerceName {
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
