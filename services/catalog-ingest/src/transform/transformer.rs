//! A source's transformer (VALIDATE and TRANSFORM over its compiled file) and
//! the set of configured sources.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde_json::Value;

use super::compile::{Events, parse_file};
use super::eval::{Eval, Outcome, Scope, finish, no_mapping, record_of, violation};
use super::path::deeper_than;
use super::{MAX_DEPTH, Quota, SourceConfigError};
use crate::domain::{self, CanonicalEvent, EventName, ProductType, Violation};

/// One source's transformer: its parsed and checked file.
#[derive(Clone, Debug)]
pub struct SourceTransformer {
    pub(super) name: String,
    pub(super) quota: Quota,
    pub(super) product_type: ProductType,
    pub(super) events: Events,
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

    pub(super) fn evaluate(&self, event: EventName, payload: &Value) -> Outcome {
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
    pub(super) by_name: BTreeMap<String, SourceTransformer>,
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
