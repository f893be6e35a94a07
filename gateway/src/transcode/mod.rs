//! Proto3 JSON ↔ protobuf for one binding: the request message from path
//! values, query parameters and the body; the response as JSON.
//!
//! The request is built in the order `google.api.http` implies: the body
//! first (the whole message for `body: "*"`, one top-level field otherwise),
//! then the path variables, which may agree with the body but not contradict
//! it, then the query parameters, which may only fill fields neither the path
//! nor the body owns. Every refusal names the field (proto names, dotted, with
//! `[i]` for list elements) or the query parameter as sent.

mod error_path;
mod fields;
mod request;
mod response;
mod rule;
mod text;

use prost_reflect::{DeserializeOptions, SerializeOptions};

pub use request::request_message;
pub use response::response_json;
pub use rule::check_rule;
pub use text::WRAPPER_TYPES;

/// Input that cannot become the request message, naming the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {description}")]
pub struct TranscodeError {
    /// The field path (`purchase.price.units`), the query parameter, or `body`.
    pub field: String,
    /// What is wrong.
    pub description: String,
}

impl TranscodeError {
    fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self { field: field.into(), description: description.into() }
    }
}

/// Why a text, a field path or a value is refused, in words for the caller;
/// where it is refused (the field, the query parameter) is added by whoever
/// knows it, as a [`TranscodeError`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
struct Refusal(String);

impl From<String> for Refusal {
    fn from(reason: String) -> Self {
        Self(reason)
    }
}

impl From<&str> for Refusal {
    fn from(reason: &str) -> Self {
        Self(reason.to_owned())
    }
}

impl From<Refusal> for String {
    fn from(refusal: Refusal) -> Self {
        refusal.0
    }
}

/// The proto3 JSON mapping, refusing fields the message does not have.
const BODY_OPTIONS: DeserializeOptions = DeserializeOptions::new().deny_unknown_fields(true);

/// Proto field names, every field present (defaults too), enums by name, 64-bit integers as strings.
const RESPONSE_OPTIONS: SerializeOptions =
    SerializeOptions::new().use_proto_field_name(true).skip_default_fields(false);

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking
mod tests;
