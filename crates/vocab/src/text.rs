//! Free text that crosses a seam: a product's title as sold.

use serde::{Deserialize, Serialize};

use crate::invalid::Invalid;

/// Longest title accepted, in characters.
pub const MAX_TITLE_LEN: usize = 500;

/// A product's title as sold: at most [`MAX_TITLE_LEN`] characters, no
/// control characters (they break logs, CSV exports and terminals
/// downstream); may be empty when the seller gave none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Title(String);

impl Title {
    /// Accepts up to [`MAX_TITLE_LEN`] characters without control characters.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        if raw.chars().count() > MAX_TITLE_LEN {
            return Err(Invalid::new(format!("must be at most {MAX_TITLE_LEN} characters")));
        }
        if let Some(bad) = raw.chars().find(|c| c.is_control()) {
            return Err(Invalid::new(format!("must not contain control characters, found {bad:?}")));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The title; empty when none was given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when no title was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Deref for Title {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Title {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Title {
    type Error = Invalid;
    fn try_from(raw: String) -> Result<Self, Invalid> {
        Self::parse(&raw)
    }
}

impl From<Title> for String {
    fn from(title: Title) -> String {
        title.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_refuse_control_characters_and_length() {
        assert!(Title::parse("").unwrap().is_empty());
        assert!(Title::parse("Intro to Python — 2026 ☃").is_ok());
        assert!(Title::parse("bell\u{7}").is_err());
        assert!(Title::parse("line\nbreak").is_err());
        assert!(Title::parse(&"é".repeat(MAX_TITLE_LEN)).is_ok());
        assert!(Title::parse(&"é".repeat(MAX_TITLE_LEN + 1)).is_err());
    }
}
