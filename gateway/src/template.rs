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

use std::fmt;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

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
    /// Parses `template`.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        Parser { text: template, pos: 0, segments: Vec::new(), variables: Vec::new() }.template()
    }

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

    /// Matches a request path (percent-encoded, without the query): `None` when
    /// it does not match, else the captured values or the one that is invalid.
    pub fn matches(&self, path: &str) -> Option<Result<Vec<Binding>, BadPathValue>> {
        let segments = self.match_segments(path)?;
        let mut bindings = Vec::with_capacity(self.variables.len());
        for variable in &self.variables {
            // Only a variable ending in `**` can end past the fixed segments.
            let end =
                if variable.end == self.segments.len() && self.has_rest() { segments.len() } else { variable.end };
            let raw = segments.get(variable.start..end).unwrap_or_default();
            let value = match raw {
                [one] if !self.captures_several(variable) => decode(one),
                _ => decode_keeping_slashes(&raw.join("/")),
            };
            match value {
                Ok(value) => bindings.push(Binding { field: variable.field.clone(), value }),
                Err(reason) => return Some(Err(BadPathValue { field: variable.field.clone(), reason })),
            }
        }
        Some(Ok(bindings))
    }

    /// True when `path` matches, whether or not its captured values are valid;
    /// cheaper than [`matches`](Self::matches) as it captures nothing.
    pub fn is_match(&self, path: &str) -> bool {
        self.match_segments(path).is_some()
    }

    /// True when some request path matches both templates.
    pub fn overlaps(&self, other: &PathTemplate) -> bool {
        self.overlap_witness(other).is_some()
    }

    /// A request path that both templates match, if there is one.
    ///
    /// Both templates are read as constraints on the path's segments (split at
    /// every `/`, `:` ordinary); a verb becomes a `:verb` suffix on the last
    /// one. Every segment count that could make a difference is tried, and the
    /// constraints are intersected position by position.
    pub fn overlap_witness(&self, other: &PathTemplate) -> Option<String> {
        // Past both templates' fixed segments, more segments only add positions
        // where both accept anything; one more covers a `**` that is non-empty.
        let longest = self.fixed_len().max(other.fixed_len()) + 1;
        (0..=longest).find_map(|count| {
            let mine = self.shapes(count);
            let theirs = other.shapes(count);
            mine.iter().find_map(|a| theirs.iter().find_map(|b| intersect_shapes(a, b))).map(|shape| render(&shape))
        })
    }

    fn has_rest(&self) -> bool {
        self.segments.last() == Some(&Segment::Rest)
    }

    /// Segments before a trailing `**`.
    fn fixed_len(&self) -> usize {
        self.segments.len() - usize::from(self.has_rest())
    }

    /// Whether the variable's value is several segments long (or may be), which
    /// decides whether `%2F` is decoded.
    fn captures_several(&self, variable: &Variable) -> bool {
        variable.end - variable.start != 1 || self.segments.get(variable.start) == Some(&Segment::Rest)
    }

    fn accepts_count(&self, count: usize) -> bool {
        let fixed = self.fixed_len();
        count == fixed || (self.has_rest() && count > fixed)
    }

    /// The path's raw segments when they match the template's, verb split off.
    fn match_segments<'p>(&self, path: &'p str) -> Option<Vec<&'p str>> {
        let body = match &self.verb {
            None => path,
            Some(verb) => {
                let last_segment = path.rfind('/')?;
                let colon = last_segment + path.get(last_segment..)?.rfind(':')?;
                if !literal_eq(path.get(colon + 1..)?, &verb.decoded) {
                    return None;
                }
                path.get(..colon)?
            }
        };
        let inner = body.strip_prefix('/')?;
        // Count first: most routes are refused here, before anything is allocated.
        let count = if inner.is_empty() { 0 } else { 1 + inner.bytes().filter(|&b| b == b'/').count() };
        if !self.accepts_count(count) {
            return None;
        }
        let segments: Vec<&str> = if inner.is_empty() { Vec::new() } else { inner.split('/').collect() };
        if segments.iter().any(|s| s.is_empty()) {
            return None;
        }
        let fixed_match = self.segments.iter().zip(&segments).all(|(pattern, raw)| match pattern {
            Segment::Literal(literal) => literal_eq(raw, &literal.decoded),
            Segment::Single | Segment::Rest => true,
        });
        fixed_match.then_some(segments)
    }

    /// The constraints a path of `count` segments must meet to match, one list
    /// per way the template can match that many (at most two: `/**:verb` matches
    /// `/x:verb` with `**` empty or one segment long).
    fn shapes(&self, count: usize) -> Vec<Vec<SegmentConstraint>> {
        let fixed = self.fixed_len();
        let body_at = |index: usize| match self.segments.get(index) {
            Some(Segment::Literal(literal)) => Body::Literal(literal.decoded.clone()),
            Some(Segment::Single | Segment::Rest) | None => Body::NonEmpty,
        };
        let mut shapes = Vec::new();
        match &self.verb {
            None if self.accepts_count(count) => {
                shapes.push((0..count).map(|i| SegmentConstraint { body: body_at(i), verb: None }).collect());
            }
            None => {}
            Some(verb) => {
                if count >= 1 && self.accepts_count(count) {
                    let mut shape: Vec<_> =
                        (0..count).map(|i| SegmentConstraint { body: body_at(i), verb: None }).collect();
                    if let Some(last) = shape.last_mut() {
                        last.verb = Some(verb.decoded.clone());
                    }
                    shapes.push(shape);
                }
                // `/**:verb` with `**` empty is the path `/:verb`: one segment, all verb.
                if count == 1 && fixed == 0 && self.has_rest() {
                    shapes.push(vec![SegmentConstraint { body: Body::Empty, verb: Some(verb.decoded.clone()) }]);
                }
            }
        }
        shapes
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What one decoded path segment must be: `body`, then `:verb` when there is one.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SegmentConstraint {
    body: Body,
    verb: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Body {
    Literal(String),
    NonEmpty,
    Empty,
}

impl Body {
    fn accepts(&self, text: &str) -> bool {
        match self {
            Body::Literal(literal) => literal == text,
            Body::NonEmpty => !text.is_empty(),
            Body::Empty => text.is_empty(),
        }
    }

    fn intersect(&self, other: &Body) -> Option<Body> {
        match (self, other) {
            (Body::Literal(a), Body::Literal(b)) => (a == b).then(|| self.clone()),
            (Body::Literal(_), Body::NonEmpty) | (Body::Empty, Body::Empty) => Some(self.clone()),
            (Body::NonEmpty, Body::Literal(_) | Body::NonEmpty) => Some(other.clone()),
            (Body::Empty, _) | (_, Body::Empty) => None,
        }
    }
}

fn intersect_shapes(a: &[SegmentConstraint], b: &[SegmentConstraint]) -> Option<Vec<SegmentConstraint>> {
    a.iter().zip(b).map(|(a, b)| intersect_segment(a, b)).collect()
}

/// The segments both constraints accept. A witness writes every `:` unencoded,
/// so a segment's last `:` is the one before its verb (verbs have no `:`).
fn intersect_segment(a: &SegmentConstraint, b: &SegmentConstraint) -> Option<SegmentConstraint> {
    match (&a.verb, &b.verb) {
        (None, None) => Some(SegmentConstraint { body: a.body.intersect(&b.body)?, verb: None }),
        (Some(v), Some(w)) if v == w => {
            Some(SegmentConstraint { body: a.body.intersect(&b.body)?, verb: Some(v.clone()) })
        }
        // The text after a segment's last `:` is one verb or the other.
        (Some(_), Some(_)) => None,
        (None, Some(verb)) => with_verb(&a.body, &b.body, verb),
        (Some(verb), None) => with_verb(&b.body, &a.body, verb),
    }
}

/// A segment a verb-less template sees as `plain`, and a template with `verb`
/// sees as `body` followed by `:verb`.
fn with_verb(plain: &Body, body: &Body, verb: &str) -> Option<SegmentConstraint> {
    match plain {
        // Any segment with a verb is non-empty.
        Body::NonEmpty => Some(SegmentConstraint { body: body.clone(), verb: Some(verb.to_string()) }),
        Body::Literal(literal) => {
            let before = literal.strip_suffix(verb)?.strip_suffix(':')?;
            body.accepts(before).then(|| SegmentConstraint { body: plain.clone(), verb: None })
        }
        Body::Empty => None,
    }
}

/// What a witness leaves unencoded: RFC 3986 path characters, `%` excepted.
const WITNESS_KEEPS: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':')
    .remove(b'@');

fn render(shape: &[SegmentConstraint]) -> String {
    let segments: Vec<String> = shape
        .iter()
        .map(|segment| {
            let body = match &segment.body {
                Body::Literal(literal) => literal.as_str(),
                Body::NonEmpty => "x",
                Body::Empty => "",
            };
            let mut text = utf8_percent_encode(body, WITNESS_KEEPS).to_string();
            if let Some(verb) = &segment.verb {
                text.push(':');
                text.extend(utf8_percent_encode(verb, WITNESS_KEEPS));
            }
            text
        })
        .collect();
    format!("/{}", segments.join("/"))
}

/// Whether `raw`, percent-decoded, is `decoded`. A malformed escape matches nothing.
fn literal_eq(raw: &str, decoded: &str) -> bool {
    check_escapes(raw).is_ok() && percent_decode_str(raw).eq(decoded.bytes())
}

/// Refuses a `%` that does not start `%XX`: the crate's decoder would keep it
/// as it is, and a caller who sent it meant something else.
fn check_escapes(raw: &str) -> Result<(), String> {
    let bytes = raw.as_bytes();
    for (index, _) in raw.match_indices('%') {
        let hex = bytes.get(index + 1..index + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
        if !hex {
            return Err(format!("'%' at byte {index} does not start a percent-escape (%XX)"));
        }
    }
    Ok(())
}

fn decode(raw: &str) -> Result<String, String> {
    check_escapes(raw)?;
    from_utf8(percent_decode_str(raw).collect())
}

/// Decodes everything but `%2F` (any case), which stays as written.
fn decode_keeping_slashes(raw: &str) -> Result<String, String> {
    check_escapes(raw)?;
    let mut bytes = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = find_encoded_slash(rest) {
        bytes.extend(percent_decode_str(&rest[..at]));
        bytes.extend_from_slice(&rest.as_bytes()[at..at + 3]);
        rest = &rest[at + 3..];
    }
    bytes.extend(percent_decode_str(rest));
    from_utf8(bytes)
}

fn find_encoded_slash(raw: &str) -> Option<usize> {
    raw.match_indices('%')
        .map(|(at, _)| at)
        .find(|&at| raw.get(at + 1..at + 3).is_some_and(|h| h.eq_ignore_ascii_case("2f")))
}

fn from_utf8(bytes: Vec<u8>) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|e| {
        format!("not UTF-8 once percent-decoded (byte {} of the decoded value)", e.utf8_error().valid_up_to())
    })
}

/// Characters a literal may hold besides letters, digits and `%XX`.
fn is_literal_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~!$&'()+,;@%".contains(&byte)
}

fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A recursive-descent parser over the template's bytes; `pos` is always on a
/// character boundary because it only steps over ASCII.
struct Parser<'t> {
    text: &'t str,
    pos: usize,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
}

impl Parser<'_> {
    fn error(&self, reason: impl Into<String>) -> TemplateError {
        TemplateError { template: self.text.to_string(), reason: reason.into() }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    /// The character at `pos`, for messages.
    fn current(&self) -> String {
        self.text.get(self.pos..).and_then(|rest| rest.chars().next()).map(|c| format!("{c:?}")).unwrap_or_default()
    }

    fn template(mut self) -> Result<PathTemplate, TemplateError> {
        if self.text.is_empty() {
            return Err(self.error("is empty"));
        }
        if self.peek() != Some(b'/') {
            return Err(self.error("must start with '/'"));
        }
        self.pos += 1;
        self.segments_in(false)?;
        let verb = match self.peek() {
            None => None,
            Some(b':') => Some(self.verb()?),
            Some(b'}') => return Err(self.error(format!("'}}' at byte {} closes no '{{'", self.pos))),
            Some(_) => return Err(self.error(format!("unexpected {} at byte {}", self.current(), self.pos))),
        };
        if let Some(index) = self.segments.iter().position(|s| *s == Segment::Rest)
            && index + 1 != self.segments.len()
        {
            return Err(self.error("'**' must be the last segment (only a verb may follow it)"));
        }
        self.check_fields()?;
        Ok(PathTemplate { text: self.text.to_string(), segments: self.segments, variables: self.variables, verb })
    }

    /// `Segments`: stops before the first character that is not `/` after a segment.
    fn segments_in(&mut self, in_variable: bool) -> Result<(), TemplateError> {
        loop {
            self.segment(in_variable)?;
            if self.peek() != Some(b'/') {
                return Ok(());
            }
            self.pos += 1;
        }
    }

    fn segment(&mut self, in_variable: bool) -> Result<(), TemplateError> {
        let start = self.pos;
        match self.peek() {
            None | Some(b'/' | b':') => Err(self.error(format!("empty segment at byte {start}"))),
            Some(b'}') if in_variable => Err(self.error(format!("empty segment at byte {start}"))),
            Some(b'}') => Err(self.error(format!("'}}' at byte {start} closes no '{{'"))),
            Some(b'{') if in_variable => {
                Err(self.error(format!("'{{' at byte {start}: variables cannot nest inside variables")))
            }
            Some(b'{') => {
                self.variable()?;
                self.segment_end("a variable must be a whole segment")
            }
            Some(b'*') => {
                self.pos += 1;
                let segment = if self.peek() == Some(b'*') {
                    self.pos += 1;
                    Segment::Rest
                } else {
                    Segment::Single
                };
                self.segments.push(segment);
                self.segment_end("'*' and '**' must be whole segments")
            }
            Some(b'=') => Err(self.error(format!("'=' at byte {start} may only follow a variable's field path"))),
            Some(_) => {
                let literal = self.literal()?;
                self.segments.push(Segment::Literal(literal));
                match self.peek() {
                    Some(b'{') => Err(self
                        .error(format!("'{{' at byte {}: a segment is a literal or a variable, not both", self.pos))),
                    Some(b'*') => {
                        Err(self.error(format!("'*' at byte {}: '*' and '**' must be whole segments", self.pos)))
                    }
                    _ => self.segment_end("is not allowed in a literal (percent-encode it)"),
                }
            }
        }
    }

    /// A segment ends at `/`, `}`, `:` or the end; anything else is `problem`.
    fn segment_end(&self, problem: &str) -> Result<(), TemplateError> {
        match self.peek() {
            None | Some(b'/' | b'}' | b':') => Ok(()),
            Some(_) => Err(self.error(format!("{} at byte {}: {problem}", self.current(), self.pos))),
        }
    }

    /// A run of literal characters, percent-escapes checked and decoded.
    fn literal(&mut self) -> Result<Literal, TemplateError> {
        let start = self.pos;
        while self.peek().is_some_and(is_literal_byte) {
            self.pos += 1;
        }
        let raw = self.text.get(start..self.pos).unwrap_or_default();
        if raw.is_empty() {
            return Err(self
                .error(format!("{} at byte {start} is not allowed in a literal (percent-encode it)", self.current())));
        }
        let decoded = decode(raw).map_err(|reason| self.error(format!("literal {raw:?} at byte {start}: {reason}")))?;
        Ok(Literal { raw: raw.to_string(), decoded })
    }

    fn variable(&mut self) -> Result<(), TemplateError> {
        let open = self.pos;
        self.pos += 1;
        let field_start = self.pos;
        while self.peek().is_some_and(|b| !b"={}".contains(&b)) {
            self.pos += 1;
        }
        let field = self.text.get(field_start..self.pos).unwrap_or_default().to_string();
        match self.peek() {
            None => return Err(self.error(format!("'{{' at byte {open} is never closed"))),
            Some(b'{') => {
                return Err(self.error(format!("'{{' at byte {}: variables cannot nest inside variables", self.pos)));
            }
            _ => {}
        }
        if field.is_empty() {
            return Err(self.error(format!("the variable at byte {open} names no field")));
        }
        if !field.split('.').all(is_identifier) {
            return Err(self.error(format!(
                "{field:?} is not a field path: identifiers (a letter or '_', then letters, digits or '_') joined by '.'"
            )));
        }
        let start = self.segments.len();
        if self.peek() == Some(b'=') {
            self.pos += 1;
            self.segments_in(true)?;
        } else {
            self.segments.push(Segment::Single);
        }
        match self.peek() {
            Some(b'}') => self.pos += 1,
            None => return Err(self.error(format!("'{{' at byte {open} is never closed"))),
            Some(b':') => {
                return Err(
                    self.error(format!("':' at byte {} inside a variable: a verb follows the last segment", self.pos))
                );
            }
            Some(_) => {
                return Err(self.error(format!(
                    "unexpected {} at byte {} inside a variable",
                    self.current(),
                    self.pos
                )));
            }
        }
        self.variables.push(Variable { field, start, end: self.segments.len() });
        Ok(())
    }

    fn verb(&mut self) -> Result<Literal, TemplateError> {
        let colon = self.pos;
        self.pos += 1;
        if self.peek().is_none() {
            return Err(self.error(format!("the verb after ':' at byte {colon} is empty")));
        }
        let literal = self.literal()?;
        match self.peek() {
            None => Ok(literal),
            Some(b'/') => Err(self.error(format!(
                "':' at byte {colon} starts the verb, which must follow the last segment \
                 (a ':' inside a literal is written %3A)"
            ))),
            Some(_) => Err(self.error(format!("{} at byte {} is not allowed in the verb", self.current(), self.pos))),
        }
    }

    /// A field may be bound once, and not together with a field inside it.
    fn check_fields(&self) -> Result<(), TemplateError> {
        for (index, a) in self.variables.iter().enumerate() {
            for b in &self.variables[index + 1..] {
                let (a, b) = (&a.field, &b.field);
                if a == b {
                    return Err(self.error(format!("binds the field {a:?} twice")));
                }
                let (outer, inner) = if a.len() < b.len() { (a, b) } else { (b, a) };
                if inner.strip_prefix(outer.as_str()).is_some_and(|rest| rest.starts_with('.')) {
                    return Err(self.error(format!("binds both {outer:?} and {inner:?}, a field inside it")));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn template(text: &str) -> PathTemplate {
        PathTemplate::parse(text).unwrap()
    }

    fn parse_error(text: &str) -> String {
        PathTemplate::parse(text).expect_err(text).reason
    }

    /// The bindings as `(field, value)` pairs, or `None` when the path does not match.
    fn bound(template_text: &str, path: &str) -> Option<Vec<(String, String)>> {
        template(template_text)
            .matches(path)
            .map(|found| found.unwrap().into_iter().map(|b| (b.field, b.value)).collect())
    }

    fn pairs(pairs: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(pairs.iter().map(|(f, v)| (f.to_string(), v.to_string())).collect())
    }

    #[test]
    fn literal_only_template_matches_itself_and_nothing_longer_or_shorter() {
        assert_eq!(bound("/v1/products", "/v1/products"), pairs(&[]));
        assert_eq!(bound("/v1/products", "/v1/products/x"), None);
        assert_eq!(bound("/v1/products", "/v1"), None);
        assert_eq!(bound("/v1/products", "/v1/product"), None);
        assert_eq!(bound("/v1/products", "v1/products"), None);
    }

    #[test]
    fn a_bare_variable_captures_one_decoded_segment() {
        let t = template("/v1/customers/{customer_id}");
        assert_eq!(t.variables(), ["customer_id"]);
        assert_eq!(bound(t.text(), "/v1/customers/c%201"), pairs(&[("customer_id", "c 1")]));
        assert_eq!(bound(t.text(), "/v1/customers/a%2Fb"), pairs(&[("customer_id", "a/b")]));
        assert_eq!(bound(t.text(), "/v1/customers/a/b"), None);
        assert_eq!(bound(t.text(), "/v1/customers"), None);
    }

    #[test]
    fn colons_and_pluses_are_ordinary_without_a_verb() {
        assert_eq!(
            bound("/v1/course-runs/{course_run_key}", "/v1/course-runs/course-v1:edX+DemoX+2024"),
            pairs(&[("course_run_key", "course-v1:edX+DemoX+2024")])
        );
        assert_eq!(
            bound("/v1/course-runs/{course_run_key}", "/v1/course-runs/course-v1%3AedX%2BDemoX%2B2024"),
            pairs(&[("course_run_key", "course-v1:edX+DemoX+2024")])
        );
    }

    #[test]
    fn a_verb_is_split_off_the_last_segment_at_its_last_colon() {
        let t = "/v1/orders/{order_number}:fulfill";
        assert_eq!(bound(t, "/v1/orders/ORD-1:fulfill"), pairs(&[("order_number", "ORD-1")]));
        assert_eq!(bound(t, "/v1/orders/a:b:fulfill"), pairs(&[("order_number", "a:b")]));
        assert_eq!(bound(t, "/v1/orders/ORD-1"), None);
        assert_eq!(bound(t, "/v1/orders/ORD-1:retry"), None);
        assert_eq!(bound(t, "/v1/orders/:fulfill"), None, "the variable needs a non-empty segment");
        // An encoded colon is data, not the verb's separator.
        assert_eq!(bound(t, "/v1/orders/ORD-1%3Afulfill"), None);
        assert_eq!(bound(t, "/v1/orders:fulfill/x"), None);
        assert_eq!(bound("/v1/customers:lookup", "/v1/customers:lookup"), pairs(&[]));
        assert_eq!(bound("/v1/customers:lookup", "/v1/customers/x:lookup"), None);
        assert_eq!(bound("/v1/customers:lookup", "/v1/customers%3Alookup"), None);
    }

    #[test]
    fn verbs_compare_percent_decoded() {
        assert_eq!(bound("/v1/x:batchLookup", "/v1/x:batch%4Cookup"), pairs(&[]));
        assert_eq!(template("/v1/x:batch%4Cookup").verb(), Some("batchLookup"));
    }

    #[test]
    fn literals_compare_percent_decoded() {
        assert_eq!(bound("/v1/products", "/v1/%70roducts"), pairs(&[]));
        assert_eq!(bound("/v1/a%20b", "/v1/a%20b"), pairs(&[]));
        assert_eq!(bound("/v1/a%20b", "/v1/a+b"), None, "'+' is a plus");
        assert_eq!(bound("/v1/a+b", "/v1/a+b"), pairs(&[]));
        assert_eq!(bound("/v1/a%25", "/v1/a%"), None, "a malformed escape matches no literal");
    }

    #[test]
    fn single_star_matches_exactly_one_non_empty_segment() {
        assert_eq!(bound("/v1/*/x", "/v1/a/x"), pairs(&[]));
        assert_eq!(bound("/v1/*/x", "/v1/x"), None);
        assert_eq!(bound("/v1/*/x", "/v1//x"), None);
        assert_eq!(bound("/v1/*/x", "/v1/a/b/x"), None);
    }

    #[test]
    fn double_star_matches_zero_or_more_segments() {
        assert_eq!(bound("/v1/**", "/v1"), pairs(&[]));
        assert_eq!(bound("/v1/**", "/v1/a/b/c"), pairs(&[]));
        assert_eq!(bound("/v1/**", "/v1/a/"), None, "no empty segments");
        assert_eq!(bound("/v1/{rest=**}", "/v1"), pairs(&[("rest", "")]));
        assert_eq!(bound("/{rest=**}", "/"), pairs(&[("rest", "")]));
        assert_eq!(bound("/{rest=**}", "/a/b"), pairs(&[("rest", "a/b")]));
        assert_eq!(bound("/{rest=**}:v", "/:v"), pairs(&[("rest", "")]));
        assert_eq!(bound("/v1/{rest=**}:v", "/v1:v"), pairs(&[("rest", "")]));
        assert_eq!(bound("/v1/{rest=**}:v", "/v1/a/b:v"), pairs(&[("rest", "a/b")]));
    }

    #[test]
    fn a_multi_segment_variable_keeps_encoded_slashes() {
        let t = "/v1/{name=shelves/*/books/**}";
        assert_eq!(bound(t, "/v1/shelves/s1/books/b%2F1/p%202"), pairs(&[("name", "shelves/s1/books/b%2F1/p 2")]));
        assert_eq!(bound(t, "/v1/shelves/s1/books"), pairs(&[("name", "shelves/s1/books")]));
        assert_eq!(bound(t, "/v1/shelves/s1/pens/b1"), None);
        assert_eq!(bound("/v1/{name=a/*}", "/v1/a/x%2fy"), pairs(&[("name", "a/x%2fy")]), "kept as written");
        assert_eq!(bound("/v1/{name=**}", "/v1/x%2Fy"), pairs(&[("name", "x%2Fy")]), "one segment, but may be more");
        assert_eq!(bound("/v1/{name=*}", "/v1/x%2Fy"), pairs(&[("name", "x/y")]));
    }

    #[test]
    fn several_variables_and_dotted_field_paths() {
        let t = template("/v1/{purchase.user}/items/{purchase.id=i/*}:get");
        assert_eq!(t.variables(), ["purchase.user", "purchase.id"]);
        assert_eq!(
            bound(t.text(), "/v1/ada/items/i/7:get"),
            pairs(&[("purchase.user", "ada"), ("purchase.id", "i/7")])
        );
    }

    #[test]
    fn a_variable_of_one_literal_captures_it() {
        assert_eq!(bound("/v1/{kind=books}", "/v1/books"), pairs(&[("kind", "books")]));
        assert_eq!(bound("/v1/{kind=books}", "/v1/pens"), None);
    }

    #[test]
    fn invalid_captured_values_name_their_field() {
        let t = template("/v1/customers/{customer_id}");
        let bad = t.matches("/v1/customers/%FF").unwrap().unwrap_err();
        assert_eq!(bad.field, "customer_id");
        assert!(bad.reason.contains("UTF-8"), "{}", bad.reason);
        let bad = t.matches("/v1/customers/50%").unwrap().unwrap_err();
        assert_eq!(bad.field, "customer_id");
        assert!(bad.reason.contains("percent-escape"), "{}", bad.reason);
        let bad = template("/v1/{name=**}").matches("/v1/a/%C3%2F").unwrap().unwrap_err();
        assert_eq!(bad.field, "name");
        assert!(t.is_match("/v1/customers/%FF"));
    }

    #[test]
    fn anonymous_wildcards_bind_nothing() {
        let t = template("/v1/*/x/**");
        assert!(t.variables().is_empty());
        assert_eq!(bound(t.text(), "/v1/a/x/b/c"), pairs(&[]));
    }

    #[test]
    fn openapi_path_drops_patterns_and_keeps_literals_and_verb() {
        assert_eq!(template("/v1/{name=shelves/*}:archive").openapi_path(), "/v1/{name}:archive");
        assert_eq!(template("/v1/orders/{order_number}:fulfill").openapi_path(), "/v1/orders/{order_number}:fulfill");
        assert_eq!(template("/v1/{a.b=x/**}").openapi_path(), "/v1/{a.b}");
        assert_eq!(template("/v1/*/a%20b/**").openapi_path(), "/v1/*/a%20b/**");
        assert_eq!(template("/{x}/{y}").openapi_path(), "/{x}/{y}");
    }

    #[test]
    fn text_is_as_written() {
        let t = template("/v1/{name=shelves/*}:archive");
        assert_eq!(t.text(), "/v1/{name=shelves/*}:archive");
        assert_eq!(t.to_string(), t.text());
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let cases = [
            ("", "is empty"),
            ("v1/x", "must start with '/'"),
            ("/", "empty segment at byte 1"),
            ("/v1//x", "empty segment at byte 4"),
            ("/v1/x/", "empty segment at byte 6"),
            ("/v1/:lookup", "empty segment at byte 4"),
            ("/v1/{x=}", "empty segment at byte 7"),
            ("/v1/{x=a//b}", "empty segment at byte 9"),
            ("/v1/{x", "'{' at byte 4 is never closed"),
            ("/v1/{x=a/*", "'{' at byte 4 is never closed"),
            ("/v1/x}", "'}' at byte 5 closes no '{'"),
            ("/v1/}", "'}' at byte 4 closes no '{'"),
            ("/v1/{x=}}", "empty segment"),
            ("/v1/{x={y}}", "variables cannot nest"),
            ("/v1/{x{y}}", "variables cannot nest"),
            ("/v1/{a}/{a}", "binds the field \"a\" twice"),
            ("/v1/{a}/{a.b}", "binds both \"a\" and \"a.b\""),
            ("/v1/{a.b}/{a}", "binds both \"a\" and \"a.b\""),
            ("/v1/{}", "names no field"),
            ("/v1/{1x}", "\"1x\" is not a field path"),
            ("/v1/{a..b}", "\"a..b\" is not a field path"),
            ("/v1/{a-b}", "\"a-b\" is not a field path"),
            ("/v1/{a.}", "\"a.\" is not a field path"),
            ("/v1/{a b}", "\"a b\" is not a field path"),
            ("/v1/**/x", "'**' must be the last segment"),
            ("/{x=**}/y", "'**' must be the last segment"),
            ("/v1/{x=**/a}", "'**' must be the last segment"),
            ("/v1/**/**", "'**' must be the last segment"),
            ("/v1/x:", "the verb after ':' at byte 5 is empty"),
            ("/v1/a:b/c", "':' at byte 5 starts the verb"),
            ("/v1/a:b:c", "':' at byte 7 is not allowed in the verb"),
            ("/v1/x:a*", "'*' at byte 7 is not allowed in the verb"),
            ("/v1/{x=a:b}", "':' at byte 8 inside a variable"),
            ("/v1/a*", "'*' and '**' must be whole segments"),
            ("/v1/*a", "'*' and '**' must be whole segments"),
            ("/v1/***", "'*' and '**' must be whole segments"),
            ("/v1/a{x}", "a segment is a literal or a variable, not both"),
            ("/v1/{x}a", "a variable must be a whole segment"),
            ("/v1/a=b", "'=' at byte 5: is not allowed in a literal"),
            ("/v1/=", "'=' at byte 4 may only follow a variable's field path"),
            ("/v1/a b", "' ' at byte 5: is not allowed in a literal"),
            ("/v1/é", "'é' at byte 4 is not allowed in a literal"),
            ("/v1/a?b", "'?' at byte 5: is not allowed in a literal"),
            ("/v1/a%2", "'%' at byte 1 does not start a percent-escape"),
            ("/v1/a%FF", "not UTF-8 once percent-decoded"),
        ];
        for (text, expected) in cases {
            let reason = parse_error(text);
            assert!(reason.contains(expected), "{text:?}: {reason:?} does not contain {expected:?}");
        }
    }

    #[test]
    fn parse_error_names_the_template() {
        let error = PathTemplate::parse("/v1//x").unwrap_err();
        assert_eq!(error.template, "/v1//x");
        assert!(error.to_string().starts_with("path template \"/v1//x\": "), "{error}");
    }

    #[test]
    fn overlaps_of_real_shapes() {
        let overlap = |a: &str, b: &str| template(a).overlap_witness(&template(b));
        assert_eq!(overlap("/v1/customers/{customer_id}", "/v1/customers:lookup"), None);
        assert_eq!(overlap("/v1/customers:lookup", "/v1/customers:retire"), None);
        assert_eq!(overlap("/v1/x/{id}", "/v1/x/{id}:archive").as_deref(), Some("/v1/x/x:archive"));
        assert_eq!(overlap("/v1/x/{id}:archive", "/v1/x/{id}").as_deref(), Some("/v1/x/x:archive"));
        assert_eq!(overlap("/v1/x/{id}", "/v1/x/{other}").as_deref(), Some("/v1/x/x"));
        assert_eq!(overlap("/v1/{a=**}", "/v1/b/c").as_deref(), Some("/v1/b/c"));
        assert_eq!(overlap("/v1/{a=**}:v", "/v1:v").as_deref(), Some("/v1:v"));
        assert_eq!(overlap("/**:v", "/{x}").as_deref(), Some("/x:v"));
        assert_eq!(overlap("/**:v", "/%3Av").as_deref(), Some("/:v"));
        assert_eq!(overlap("/**", "/v1/x:v").as_deref(), Some("/v1/x:v"));
        assert_eq!(overlap("/v1/a%3Av", "/v1/{x=a}:v").as_deref(), Some("/v1/a:v"));
        assert_eq!(overlap("/v1/a%3Aw", "/v1/{x=a}:v"), None);
        assert_eq!(overlap("/v1/orders/{o}:fulfill", "/v1/orders/{o}/fulfillments"), None);
        assert_eq!(overlap("/v1/a%20b", "/v1/*").as_deref(), Some("/v1/a%20b"));
        assert!(!template("/v1/x").overlaps(&template("/v1/y")));
        assert!(template("/v1/x").overlaps(&template("/v1/x")));
    }

    mod properties {
        use proptest::prelude::*;
        use proptest::sample::select;

        use super::super::*;

        /// What a client leaves unencoded in a path segment: `:` and `+` on
        /// purpose, as course run keys carry them.
        const CLIENT_KEEPS: &AsciiSet =
            &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b':').remove(b'+');

        #[derive(Clone, Debug)]
        enum Piece {
            Literal(&'static str),
            Star,
            /// `{field}` or `{field=pattern}`; the pattern's last element may be `**`.
            Variable(Vec<Piece>),
            DoubleStar,
        }

        const LITERALS: [&str; 4] = ["v1", "shelves", "a+b", "x%20y"];

        fn decoded_literal(raw: &str) -> String {
            percent_decode_str(raw).decode_utf8().unwrap().into_owned()
        }

        fn pattern() -> impl Strategy<Value = Vec<Piece>> {
            let inner = prop_oneof![select(LITERALS.to_vec()).prop_map(Piece::Literal), Just(Piece::Star)];
            (prop::collection::vec(inner, 0..3), any::<bool>()).prop_map(|(mut pieces, rest)| {
                if rest || pieces.is_empty() {
                    pieces.push(if rest { Piece::DoubleStar } else { Piece::Star });
                }
                pieces
            })
        }

        /// A template as pieces: top-level pieces, `**` (bare or inside a variable) only last.
        fn pieces() -> impl Strategy<Value = (Vec<Piece>, Option<&'static str>)> {
            let piece = prop_oneof![
                select(LITERALS.to_vec()).prop_map(Piece::Literal),
                Just(Piece::Star),
                Just(Piece::Variable(vec![Piece::Star])),
                pattern()
                    .prop_filter("no ** before the end", |p| !matches!(p.last(), Some(Piece::DoubleStar)))
                    .prop_map(Piece::Variable),
            ];
            let last = prop_oneof![
                Just(None),
                Just(Some(Piece::DoubleStar)),
                pattern().prop_map(|p| Some(Piece::Variable(p))),
            ];
            let verb = prop_oneof![Just(None), Just(Some("archive")), Just(Some("a+b"))];
            (prop::collection::vec(piece, 0..4), last, verb).prop_filter_map(
                "a template has a segment",
                |(mut pieces, last, verb)| {
                    pieces.extend(last);
                    (!pieces.is_empty()).then_some((pieces, verb))
                },
            )
        }

        fn segment_text(piece: &Piece) -> String {
            match piece {
                Piece::Literal(literal) => literal.to_string(),
                Piece::Star => "*".into(),
                Piece::DoubleStar => "**".into(),
                Piece::Variable(_) => unreachable!("variables do not nest"),
            }
        }

        fn template_text(pieces: &[Piece], verb: Option<&str>) -> String {
            let mut field = 0;
            let segments: Vec<String> = pieces
                .iter()
                .map(|piece| match piece {
                    Piece::Variable(pattern) => {
                        field += 1;
                        let pattern: Vec<String> = pattern.iter().map(segment_text).collect();
                        format!("{{f{field}.value={}}}", pattern.join("/"))
                    }
                    other => segment_text(other),
                })
                .collect();
            format!("/{}{}", segments.join("/"), verb.map(|v| format!(":{v}")).unwrap_or_default())
        }

        /// Random values for a piece's segments: `*` any non-empty text, `**`
        /// zero to two of them, literals themselves (decoded).
        fn values(piece: &Piece) -> BoxedStrategy<Vec<String>> {
            let text = "\\PC{1,6}|[/%:+ ]{1,3}";
            match piece {
                Piece::Literal(literal) => Just(vec![decoded_literal(literal)]).boxed(),
                Piece::Star => text.prop_map(|s| vec![s]).boxed(),
                Piece::DoubleStar => prop::collection::vec(text, 0..3).boxed(),
                Piece::Variable(pattern) => {
                    pattern.iter().map(values).collect::<Vec<_>>().prop_map(|v| v.concat()).boxed()
                }
            }
        }

        fn case() -> impl Strategy<Value = (String, Option<&'static str>, Vec<Piece>, Vec<Vec<String>>)> {
            pieces().prop_flat_map(|(pieces, verb)| {
                let values: Vec<_> = pieces.iter().map(values).collect();
                (Just(template_text(&pieces, verb)), Just(verb), Just(pieces), values)
            })
        }

        fn encode(segment: &str) -> String {
            utf8_percent_encode(segment, CLIENT_KEEPS).to_string()
        }

        proptest! {
            #[test]
            fn rendered_values_match_back((text, verb, pieces, values) in case()) {
                let template = PathTemplate::parse(&text).unwrap();
                let segments: Vec<String> = values.iter().flatten().map(|s| encode(s)).collect();
                let verb = verb.map(|v| format!(":{}", encode(v))).unwrap_or_default();
                let path = format!("/{}{verb}", segments.join("/"));
                let mut expected = Vec::new();
                for (piece, value) in pieces.iter().zip(&values) {
                    if let Piece::Variable(pattern) = piece {
                        let single = matches!(pattern.as_slice(), [Piece::Star | Piece::Literal(_)]);
                        let value = if single {
                            value.concat()
                        } else {
                            // A slash inside a segment reaches the service as %2F.
                            value.iter().map(|s| s.replace('/', "%2F")).collect::<Vec<_>>().join("/")
                        };
                        expected.push(Binding { field: format!("f{}.value", expected.len() + 1), value });
                    }
                }
                prop_assert_eq!(template.matches(&path), Some(Ok(expected)), "path {}", path);
            }

            #[test]
            fn overlap_witness_is_sound_and_complete(
                a in small_template(),
                b in small_template(),
            ) {
                let (a, b) = (PathTemplate::parse(&a).unwrap(), PathTemplate::parse(&b).unwrap());
                let witness = a.overlap_witness(&b);
                if let Some(witness) = &witness {
                    prop_assert!(a.is_match(witness) && b.is_match(witness), "{} and {} vs {}", a, b, witness);
                    prop_assert_eq!(b.overlap_witness(&a).is_some(), true);
                }
                for path in small_paths() {
                    if a.is_match(&path) && b.is_match(&path) {
                        prop_assert!(witness.is_some(), "{} and {} both match {} but have no witness", a, b, path);
                    }
                }
            }

            #[test]
            fn matching_never_panics(text in "\\PC{0,12}|[/{}*=.:a%]{0,12}", path in "\\PC{0,20}|[/:a%F2]{0,20}") {
                for template in ["/v1/{a}", "/{a=**}:v", "/v1/{b=x/*/**}", "/*/a:v", "/**"] {
                    let template = PathTemplate::parse(template).unwrap();
                    let _ = template.matches(&path);
                }
                if let Ok(template) = PathTemplate::parse(&text) {
                    let _ = template.matches(&path);
                    let _ = template.openapi_path();
                    let _ = template.overlap_witness(&template);
                }
            }
        }

        /// Templates over a tiny alphabet, so random pairs often overlap.
        fn small_template() -> impl Strategy<Value = String> {
            let segment = select(vec!["a", "b", "a%3Av", "%3Av", "*", "{x}", "{y=a/*}"]);
            let last = select(vec!["", "/**", "/{r=**}", "/{r=a/**}"]);
            let verb = select(vec!["", ":v", ":w"]);
            (prop::collection::vec(segment, 0..3), last, verb).prop_filter_map(
                "a template has a segment",
                |(segments, last, verb)| {
                    let mut text = segments.iter().map(|s| format!("/{s}")).collect::<String>();
                    text.push_str(last);
                    // Each template binds x, y and r at most once.
                    let once = ["{x}", "{y="].iter().all(|v| text.matches(v).count() <= 1);
                    (!text.is_empty() && once).then(|| format!("{text}{verb}"))
                },
            )
        }

        /// Every path of up to three segments over the alphabet, with or
        /// without a verb-like suffix.
        fn small_paths() -> Vec<String> {
            let alphabet = ["a", "b", "x", "a:v", "a%3Av", ":v", "a:w"];
            let mut paths = vec![String::new()];
            let mut all = vec!["/".to_string(), "/:v".to_string(), "/:w".to_string()];
            for _ in 0..3 {
                paths = paths.iter().flat_map(|p| alphabet.iter().map(move |s| format!("{p}/{s}"))).collect();
                for path in &paths {
                    all.push(path.clone());
                    all.push(format!("{path}:v"));
                    all.push(format!("{path}:w"));
                }
            }
            all
        }
    }
}
