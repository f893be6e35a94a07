//! Paths into a payload (`course.faculty[0].name`) and templates built from them.

use std::fmt;

use serde_json::Value;

use super::eval::{Scope, violation};
use crate::domain::Violation;

/// Why a path in a source file cannot be read; the compiler names the key and the path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum PathError {
    /// `$` followed by neither `.` nor `[`.
    #[error("after $ comes . or [")]
    AfterRoot,
    /// Nothing to read.
    #[error("is empty")]
    Empty,
    /// `[` never closed.
    #[error("has a [ without its ]")]
    UnclosedBracket,
    /// An index past `usize`.
    #[error("[{inner}] is too large an index")]
    IndexTooLarge { inner: String },
    /// Brackets holding neither digits nor `*`.
    #[error("[{inner}] is neither an index nor [*]")]
    NotAnIndex { inner: String },
    /// `a..b`, `a.`, `.a`, `a.[0]`.
    #[error("has an empty key")]
    EmptyKey,
    /// A key with a character paths and templates reserve.
    #[error("key {key:?} contains ], {{ or }}")]
    ReservedCharacter { key: String },
    /// Text after a segment that starts no segment.
    #[error("cannot read {rest:?}")]
    Unreadable { rest: String },
}

/// Why a template in a source file cannot be used; the compiler names the key and the template.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum TemplateError {
    /// `{` never closed.
    #[error("{{{inner} is not closed with }}")]
    Unclosed { inner: String },
    /// A placeholder whose path cannot be read.
    #[error("placeholder {{{inner}}} {error}")]
    Placeholder { inner: String, error: PathError },
    /// A placeholder that could reach several values.
    #[error("placeholder {{{inner}}} has a [*]; a placeholder is one value")]
    Wildcard { inner: String },
    /// A lone `}`.
    #[error("has a }} without its {{; write }}}} for a literal brace")]
    StrayClose,
    /// Only literal text.
    #[error("has no {{placeholder}}; use default for a constant")]
    NoPlaceholder,
}

/// `course.faculty[0].name`, `topics[*].slug`, `$.course.org` (from the payload's root).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct JsonPath {
    pub(super) absolute: bool,
    pub(super) segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Segment {
    Key(String),
    Index(usize),
    Any,
}

impl JsonPath {
    pub(super) fn parse(raw: &str) -> Result<Self, PathError> {
        let (absolute, body) = match raw.strip_prefix('$') {
            Some("") => return Ok(Self { absolute: true, segments: Vec::new() }),
            Some(rest) if rest.starts_with('[') => (true, rest),
            Some(rest) => (true, rest.strip_prefix('.').ok_or(PathError::AfterRoot)?),
            None => (false, raw),
        };
        if body.is_empty() {
            return Err(PathError::Empty);
        }
        let mut segments = Vec::new();
        let mut rest = body;
        loop {
            if let Some(after) = rest.strip_prefix('[') {
                let (inner, tail) = after.split_once(']').ok_or(PathError::UnclosedBracket)?;
                segments.push(match inner {
                    "*" => Segment::Any,
                    _ if !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_digit()) => Segment::Index(
                        inner.parse().map_err(|_| PathError::IndexTooLarge { inner: inner.to_string() })?,
                    ),
                    _ => return Err(PathError::NotAnIndex { inner: inner.to_string() }),
                });
                rest = tail;
            } else {
                let end = rest.find(['.', '[']).unwrap_or(rest.len());
                let (key, tail) = rest.split_at(end);
                if key.is_empty() {
                    return Err(PathError::EmptyKey);
                }
                if key.contains([']', '{', '}']) {
                    return Err(PathError::ReservedCharacter { key: key.to_string() });
                }
                segments.push(Segment::Key(key.to_string()));
                rest = tail;
            }
            if rest.is_empty() {
                break;
            }
            if let Some(after) = rest.strip_prefix('.') {
                if after.is_empty() || after.starts_with(['.', '[']) {
                    return Err(PathError::EmptyKey);
                }
                rest = after;
            } else if !rest.starts_with('[') {
                return Err(PathError::Unreadable { rest: rest.to_string() });
            }
        }
        Ok(Self { absolute, segments })
    }

    pub(super) fn has_wildcard(&self) -> bool {
        self.segments.contains(&Segment::Any)
    }

    /// The path as the payload would spell it from `scope`, for "is required" violations.
    pub(super) fn requested(&self, scope: &Scope<'_>) -> String {
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
    pub(super) fn resolve<'a>(&self, root: &'a Value, scope: &Scope<'a>) -> (Vec<(String, &'a Value)>, Vec<Violation>) {
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
pub(super) struct Template {
    pub(super) parts: Vec<Part>,
}

#[derive(Clone, Debug)]
pub(super) enum Part {
    Literal(String),
    Value(JsonPath),
}

impl Template {
    pub(super) fn parse(raw: &str) -> Result<Self, TemplateError> {
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
                            None => return Err(TemplateError::Unclosed { inner }),
                        }
                    }
                    let path = JsonPath::parse(&inner)
                        .map_err(|error| TemplateError::Placeholder { inner: inner.clone(), error })?;
                    if path.has_wildcard() {
                        return Err(TemplateError::Wildcard { inner });
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Value(path));
                }
                '}' => return Err(TemplateError::StrayClose),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if !parts.iter().any(|p| matches!(p, Part::Value(_))) {
            return Err(TemplateError::NoPlaceholder);
        }
        Ok(Self { parts })
    }
}

pub(super) fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

/// The payload's root is `$` in violations; everything else is spelt from it without the `$.`.
pub(super) fn display_path(path: String) -> String {
    if path.is_empty() { "$".to_string() } else { path }
}

pub(super) fn describe(value: &Value) -> &'static str {
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
pub(super) fn is_blank(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        _ => false,
    }
}

/// Whether the payload nests deeper than `max`; with an explicit stack, so a
/// hostile payload cannot exhaust the thread's.
pub(super) fn deeper_than(value: &Value, max: usize) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::MAX_DEPTH;

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
