//! The one type for a secret value of configuration or a credential (a
//! development signing secret, an OAuth client secret): it never prints, and
//! its memory is wiped when it is dropped ([`secrecy`]).
//!
//! ```
//! use kit::secret::Secret;
//!
//! let secret = Secret::new("hunter2".into());
//! assert_eq!(format!("{secret:?} {secret}"), "[redacted] [redacted]");
//! assert_eq!(secret.expose(), "hunter2");
//! ```

use std::fmt;

use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What `Debug` and `Display` show instead of the secret.
const REDACTED: &str = "[redacted]";

/// A secret string that never prints (`Debug` and `Display` show
/// `[redacted]`) and is zeroized when dropped.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// Wraps `secret`.
    pub fn new(secret: String) -> Self {
        Self(SecretString::from(secret))
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl From<String> for Secret {
    fn from(secret: String) -> Self {
        Self::new(secret)
    }
}

impl From<&str> for Secret {
    fn from(secret: &str) -> Self {
        Self::new(secret.to_owned())
    }
}

/// Two secrets are equal when their values are (configuration compares
/// whole structs; no secret is compared with a caller's guess).
impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Serialized as the plain string: configuration layering (figment)
/// serializes the defaults before merging the file and environment over them.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.expose())
    }
}

/// Read from the plain string, as configuration holds it.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking
mod tests {
    use super::*;

    #[test]
    fn a_secret_round_trips_through_serde_as_a_plain_string() {
        let secret: Secret = serde_json::from_str("\"s3cret\"").unwrap();
        assert_eq!(secret.expose(), "s3cret");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"s3cret\"");
        assert_eq!(secret.clone(), secret);
        assert_ne!(secret, Secret::new("other".into()));
    }
}
