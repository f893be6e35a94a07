//! Naming the field an error happened at, in proto names, from the JSON path
//! serde tracked.

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde::ser::Serialize;
use serde_path_to_error::Segment;

use super::TranscodeError;

/// Names the field a body error happened at, in proto names.
pub(super) fn body_error(
    descriptor: &MessageDescriptor,
    path: &serde_path_to_error::Path,
    error: &serde_json::Error,
) -> TranscodeError {
    let description = error.to_string();
    // serde_path_to_error marks a path it could not follow with `?` segments only.
    let mut segments: Vec<Segment> = match path.iter().all(|segment| matches!(segment, Segment::Unknown)) {
        true => Vec::new(),
        false => path.iter().cloned().collect(),
    };
    // prost-reflect refuses an unknown key (or a second oneof member) after
    // reading it, so the tracked path stops at the enclosing object; its
    // message quotes the key, which completes the path.
    let quoted = ["unrecognized field name '", "multiple fields provided for oneof '"]
        .iter()
        .find_map(|prefix| description.strip_prefix(prefix))
        .and_then(|rest| rest.rsplit_once('\''))
        .map(|(key, _)| key.to_owned());
    if let Some(key) = quoted {
        segments.push(Segment::Map { key });
    }
    let field = proto_path(descriptor, &segments);
    TranscodeError::new(if field.is_empty() { "body".to_owned() } else { field }, description)
}

/// Where a walk along a JSON error path stands in the message schema.
enum Position {
    /// In an object that is a message with fields.
    Message(MessageDescriptor),
    /// In an array that is a repeated field of this kind.
    List(Kind),
    /// In an object that is a map field with values of this kind.
    Map(Kind),
    /// Anywhere else: keys and indices are shown as sent.
    Opaque,
}

impl Position {
    fn of_value(kind: Kind) -> Self {
        match kind {
            // Well-known types have their own JSON shapes (Struct keys are not fields).
            Kind::Message(message) if !message.full_name().starts_with("google.protobuf.") => Self::Message(message),
            _ => Self::Opaque,
        }
    }

    fn of_field(field: &FieldDescriptor) -> Self {
        if field.is_map() {
            match field.kind() {
                Kind::Message(entry) => Self::Map(entry.map_entry_value_field().kind()),
                _ => Self::Opaque,
            }
        } else if field.is_list() {
            Self::List(field.kind())
        } else {
            Self::of_value(field.kind())
        }
    }
}

/// The JSON path as proto field names: `lineItems[2].sku` → `line_items[2].sku`.
fn proto_path(descriptor: &MessageDescriptor, segments: &[Segment]) -> String {
    let mut path = String::new();
    let mut position = Position::Message(descriptor.clone());
    for segment in segments {
        position = match (segment, position) {
            (Segment::Map { key }, Position::Message(message)) => {
                match message.get_field_by_json_name(key).or_else(|| message.get_field_by_name(key)) {
                    Some(field) => {
                        push_step(&mut path, field.name());
                        Position::of_field(&field)
                    }
                    None => {
                        push_step(&mut path, key);
                        Position::Opaque
                    }
                }
            }
            (Segment::Map { key }, Position::Map(kind)) => {
                push_step(&mut path, key);
                Position::of_value(kind)
            }
            (Segment::Seq { index }, Position::List(kind)) => {
                path.push_str(&format!("[{index}]"));
                Position::of_value(kind)
            }
            (Segment::Seq { index }, _) => {
                path.push_str(&format!("[{index}]"));
                Position::Opaque
            }
            (Segment::Map { key } | Segment::Enum { variant: key }, _) => {
                push_step(&mut path, key);
                Position::Opaque
            }
            (Segment::Unknown, _) => {
                push_step(&mut path, "?");
                Position::Opaque
            }
        };
    }
    path
}

fn push_step(path: &mut String, step: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(step);
}

/// Names the field a response failed to serialize at (a Timestamp out of
/// range, say). The fast path does not track paths, so this serializes once
/// more, rarely, with tracking.
pub(super) fn response_error(value: &impl Serialize, prefix: &str, error: &serde_json::Error) -> TranscodeError {
    let located = serde_path_to_error::serialize(value, &mut serde_json::Serializer::new(std::io::sink()));
    let path = match located {
        Err(located) if !located.path().iter().all(|s| matches!(s, Segment::Unknown)) => {
            let mut path = prefix.to_owned();
            for segment in located.path() {
                match segment {
                    Segment::Seq { index } => path.push_str(&format!("[{index}]")),
                    Segment::Map { key } | Segment::Enum { variant: key } => push_step(&mut path, key),
                    Segment::Unknown => push_step(&mut path, "?"),
                }
            }
            path
        }
        _ => prefix.to_owned(),
    };
    TranscodeError::new(if path.is_empty() { "response".to_owned() } else { path }, error.to_string())
}
