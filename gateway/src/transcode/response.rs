//! The response message as proto3 JSON.

use prost_reflect::{DynamicMessage, Kind, ReflectMessage as _, Value};
use serde::ser::{Serialize, SerializeSeq, Serializer};

use super::error_path::response_error;
use super::{RESPONSE_OPTIONS, TranscodeError};

/// The response as proto3 JSON with proto field names and defaults emitted:
/// the whole message, or the field `response_body` names.
pub fn response_json(message: &DynamicMessage, response_body: &str) -> Result<Vec<u8>, TranscodeError> {
    if response_body.is_empty() {
        let mut json = Vec::with_capacity(256);
        return match message.serialize_with_options(&mut serde_json::Serializer::new(&mut json), &RESPONSE_OPTIONS) {
            Ok(()) => Ok(json),
            Err(error) => Err(response_error(&WithOptions(message), "", &error)),
        };
    }

    let descriptor = message.descriptor();
    let field = descriptor.get_field_by_name(response_body).ok_or_else(|| {
        TranscodeError::new(
            response_body,
            format!("the rule's response_body is not a field of {}", descriptor.full_name()),
        )
    })?;
    let value = message.get_field(&field);
    let mut json = Vec::with_capacity(256);
    let written = match (value.as_ref(), field.kind()) {
        // The common cases (a message, a list of messages) go straight to bytes.
        (Value::Message(inner), _) => {
            inner.serialize_with_options(&mut serde_json::Serializer::new(&mut json), &RESPONSE_OPTIONS)
        }
        (Value::List(items), Kind::Message(_)) => {
            MessageList(items).serialize(&mut serde_json::Serializer::new(&mut json))
        }
        // Scalars, scalar lists and maps need the field's JSON mapping, which
        // prost-reflect applies only within a message: serialize one holding
        // just this field and take the entry out.
        _ => {
            let mut only = DynamicMessage::new(descriptor.clone());
            let copied = only.try_set_field(&field, value.into_owned());
            let entry = copied.map_err(|e| e.to_string()).and_then(|()| {
                let tree = only.serialize_with_options(serde_json::value::Serializer, &RESPONSE_OPTIONS);
                tree.map_err(|e| e.to_string())
            });
            return match entry {
                Ok(serde_json::Value::Object(mut fields)) => {
                    let entry = fields.remove(field.name()).unwrap_or(serde_json::Value::Null);
                    serde_json::to_vec(&entry).map_err(|e| TranscodeError::new(response_body, e.to_string()))
                }
                Ok(_) => Err(TranscodeError::new(response_body, "the response did not serialize as an object")),
                Err(description) => Err(TranscodeError::new(response_body, description)),
            };
        }
    };
    match written {
        Ok(()) => Ok(json),
        Err(error) => {
            let error = match value.as_ref() {
                Value::Message(inner) => response_error(&WithOptions(inner), response_body, &error),
                Value::List(items) => response_error(&MessageList(items), response_body, &error),
                _ => TranscodeError::new(response_body, error.to_string()),
            };
            Err(error)
        }
    }
}

/// A message serialized with [`RESPONSE_OPTIONS`].
pub(super) struct WithOptions<'a>(pub(super) &'a DynamicMessage);

impl Serialize for WithOptions<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_with_options(serializer, &RESPONSE_OPTIONS)
    }
}

/// A repeated message field's items as a JSON array.
struct MessageList<'a>(&'a [Value]);

impl Serialize for MessageList<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut list = serializer.serialize_seq(Some(self.0.len()))?;
        for item in self.0 {
            match item {
                Value::Message(message) => list.serialize_element(&WithOptions(message))?,
                other => {
                    return Err(serde::ser::Error::custom(format!("expected a message in the list, got {other:?}")));
                }
            }
        }
        list.end()
    }
}
