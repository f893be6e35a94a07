//! `google.api.http` path templates: parsing, matching a request path, and
//! telling whether two templates could match the same path.
//!
//! Grammar (from `google/api/http.proto`):
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb     = ":" LITERAL ;
//! ```
//!
//! A LITERAL is made of RFC 3986 path characters other than `:`, `*` and `=`
//! (which the grammar reserves), percent-escapes allowed. `{field}` means
//! `{field=*}`.
//!
//! Matching a request path (percent-encoded, without the query):
//!
//! - a template with a verb needs the path's last segment to end in `:verb`,
//!   split at that segment's last `:`; a template without one treats `:` as an
//!   ordinary character, so `/v1/course-runs/{course_run_key}` matches
//!   `/v1/course-runs/course-v1:edX+DemoX+2024` (`+` is a plus, not a space);
//! - `*` matches one non-empty segment, `**` zero or more; a path with an empty
//!   segment (`//`, a trailing `/`) matches nothing;
//! - literals compare after percent-decoding; a one-segment variable's value is
//!   percent-decoded, a longer one's too except that `%2F` stays as written so
//!   that an encoded slash stays distinguishable from a separator.
//!
//! ```
//! use gateway::template::PathTemplate;
//!
//! let template = PathTemplate::parse("/v1/{name=shelves/*}:archive").unwrap();
//! assert_eq!(template.openapi_path(), "/v1/{name}:archive");
//! let bindings = template.matches("/v1/shelves/s%201:archive").unwrap().unwrap();
//! assert_eq!(bindings[0].value, "shelves/s 1");
//! assert!(template.overlaps(&PathTemplate::parse("/v1/{name=**}:archive").unwrap()));
//! ```

mod matching;
mod overlap;
mod parse;
mod percent;

use std::fmt;

/// A field value captured from the request path by a template variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The field path the variable names, such as `order_number` or `purchase.id`.
    pub field: String,
    /// The value, percent-decoded (a multi-segment value keeps `%2F` encoded).
    pub value: String,
}

/// A captured value that is not valid percent-encoded UTF-8.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct BadPathValue {
    /// The field the variable names.
    pub field: String,
    /// Why the value is refused.
    pub reason: String,
}

/// A template that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("path template {template:?}: {reason}")]
pub struct TemplateError {
    /// The template as written.
    pub template: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A parsed path template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathTemplate {
    text: String,
    /// Every segment, variables' patterns inlined; `**` can only be last.
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    verb: Option<Literal>,
}

/// A literal as written and as it compares (percent-decoded).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Literal {
    raw: String,
    decoded: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(Literal),
    /// `*`: one non-empty segment.
    Single,
    /// `**`: zero or more segments.
    Rest,
}

/// A variable: its field path and the segments `start..end` it captures.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Variable {
    field: String,
    start: usize,
    end: usize,
}

impl PathTemplate {
    /// The template as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The field paths its variables bind, in order.
    pub fn variables(&self) -> Vec<&str> {
        self.variables.iter().map(|v| v.field.as_str()).collect()
    }

    /// The custom verb (percent-decoded), such as `fulfill` in `/v1/orders/{order_number}:fulfill`.
    pub fn verb(&self) -> Option<&str> {
        self.verb.as_ref().map(|v| v.decoded.as_str())
    }

    /// The template in OpenAPI form: each variable as `{field.path}`.
    pub fn openapi_path(&self) -> String {
        let mut parts = Vec::with_capacity(self.segments.len());
        let mut index = 0;
        while let Some(segment) = self.segments.get(index) {
            if let Some(variable) = self.variables.iter().find(|v| v.start == index) {
                parts.push(format!("{{{}}}", variable.field));
                index = variable.end;
                continue;
            }
            parts.push(match segment {
                Segment::Literal(literal) => literal.raw.clone(),
                Segment::Single => "*".to_string(),
                Segment::Rest => "**".to_string(),
            });
            index += 1;
        }
        let verb = self.verb.as_ref().map(|v| format!(":{}", v.raw)).unwrap_or_default();
        format!("/{}{verb}", parts.join("/"))
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking
mod tests;
