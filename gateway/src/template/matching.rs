//! Matching a request path against a template, capturing its variables.

use super::percent::{decode, decode_keeping_slashes, literal_eq};
use super::{BadPathValue, Binding, PathTemplate, Segment, Variable};

impl PathTemplate {
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
                Err(bad) => {
                    return Some(Err(BadPathValue { field: variable.field.clone(), reason: bad.to_string() }));
                }
            }
        }
        Some(Ok(bindings))
    }

    /// True when `path` matches, whether or not its captured values are valid;
    /// cheaper than [`matches`](Self::matches) as it captures nothing.
    pub fn is_match(&self, path: &str) -> bool {
        self.match_segments(path).is_some()
    }

    pub(super) fn has_rest(&self) -> bool {
        self.segments.last() == Some(&Segment::Rest)
    }

    /// Segments before a trailing `**`.
    pub(super) fn fixed_len(&self) -> usize {
        self.segments.len() - usize::from(self.has_rest())
    }

    /// Whether the variable's value is several segments long (or may be), which
    /// decides whether `%2F` is decoded.
    fn captures_several(&self, variable: &Variable) -> bool {
        variable.end - variable.start != 1 || self.segments.get(variable.start) == Some(&Segment::Rest)
    }

    pub(super) fn accepts_count(&self, count: usize) -> bool {
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
}
