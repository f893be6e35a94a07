//! Whether two templates could match one request path, and such a path.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::{PathTemplate, Segment};

impl PathTemplate {
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
