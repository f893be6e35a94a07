//! Serde for an optional value whose wire and storage form is a string that
//! is empty when absent (proto3 strings have no null): `None` ⇄ `""`.
//!
//! ```
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Header {
//!     #[serde(with = "vocab::empty_as_none")]
//!     order_id: Option<vocab::OrderId>,
//! }
//! let header: Header = serde_json::from_str(r#"{"order_id": ""}"#).unwrap();
//! assert!(header.order_id.is_none());
//! assert_eq!(serde_json::to_string(&header).unwrap(), r#"{"order_id":""}"#);
//! ```

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Writes `None` as `""`, a value as itself.
pub fn serialize<T: Serialize, S: Serializer>(value: &Option<T>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        None => serializer.serialize_str(""),
        Some(value) => value.serialize(serializer),
    }
}

/// Reads `""` as `None`, anything else through the value's parser.
pub fn deserialize<'de, T, D>(deserializer: D) -> Result<Option<T>, D::Error>
where
    T: TryFrom<String>,
    T::Error: std::fmt::Display,
    D: Deserializer<'de>,
{
    let raw = String::deserialize(deserializer)?;
    if raw.is_empty() { Ok(None) } else { T::try_from(raw).map(Some).map_err(serde::de::Error::custom) }
}
