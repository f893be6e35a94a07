//! Why a value was refused.

use std::borrow::Cow;

/// Why a raw value is not a valid one: a sentence for the caller. It names no
/// field: the caller knows the field's path (`line_items[2].price.amount`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(Cow<'static, str>);

impl Invalid {
    /// A reason, for a rule of a service's own (its callers read it beside the field's path).
    pub fn new(reason: impl Into<Cow<'static, str>>) -> Self {
        Self(reason.into())
    }

    /// The reason, as a sentence fragment (`must not be empty`).
    pub fn reason(&self) -> &str {
        &self.0
    }
}

/// The start of a caller's string, for messages that must stay short.
pub(crate) fn clip(raw: &str) -> String {
    const SHOWN: usize = 40;
    let mut shown: String = raw.chars().take(SHOWN).collect();
    if raw.chars().nth(SHOWN).is_some() {
        shown.push('…');
    }
    shown
}
