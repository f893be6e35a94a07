//! Parsing a template by the grammar in the module docs.

use super::percent::decode;
use super::{Literal, PathTemplate, Segment, TemplateError, Variable};

impl PathTemplate {
    /// Parses `template`.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        Parser { text: template, pos: 0, segments: Vec::new(), variables: Vec::new() }.template()
    }
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
