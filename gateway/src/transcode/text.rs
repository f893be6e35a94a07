//! Field values from the text of a path segment or a query parameter.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use prost_reflect::{DynamicMessage, EnumDescriptor, Kind, MessageDescriptor, Value};
use serde::de;

use super::{BODY_OPTIONS, Refusal};

/// The `google.protobuf` wrapper messages, whose JSON form is their one `value`.
pub const WRAPPER_TYPES: [&str; 9] = [
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
];

/// Well-known messages with a one-string form: times, durations, wrappers, masks.
pub(super) fn is_text_message(message: &MessageDescriptor) -> bool {
    let name = message.full_name();
    matches!(name, "google.protobuf.Timestamp" | "google.protobuf.Duration" | "google.protobuf.FieldMask")
        || WRAPPER_TYPES.contains(&name)
}

/// Text from a path or query string as a value of the given kind.
pub(super) fn value_from_text(kind: &Kind, text: &str) -> Result<Value, Refusal> {
    match kind {
        Kind::String => Ok(Value::String(text.to_owned())),
        Kind::Bool => match text {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(Refusal::from(format!("expected `true` or `false`, got `{text}`"))),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => integer(text, "int32").map(Value::I32),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => integer(text, "int64").map(Value::I64),
        Kind::Uint32 | Kind::Fixed32 => integer(text, "uint32").map(Value::U32),
        Kind::Uint64 | Kind::Fixed64 => integer(text, "uint64").map(Value::U64),
        Kind::Float => float(text, "float").map(Value::F32),
        Kind::Double => float(text, "double").map(Value::F64),
        Kind::Bytes => base64_bytes(text).map(Value::Bytes),
        Kind::Enum(descriptor) => enum_number(descriptor, text).map(Value::EnumNumber),
        Kind::Message(descriptor) => message_from_text(descriptor, text).map(Value::Message),
    }
}

fn integer<T: std::str::FromStr<Err = std::num::ParseIntError>>(text: &str, type_name: &str) -> Result<T, Refusal> {
    use std::num::IntErrorKind;
    text.parse().map_err(|error: std::num::ParseIntError| match error.kind() {
        IntErrorKind::PosOverflow | IntErrorKind::NegOverflow => {
            Refusal::from(format!("`{text}` is out of range for {type_name}"))
        }
        _ => Refusal::from(format!("expected a decimal {type_name}, got `{text}`")),
    })
}

fn float<T: std::str::FromStr + FloatCheck>(text: &str, type_name: &str) -> Result<T, Refusal> {
    let value: T =
        text.parse().map_err(|_| format!("expected a {type_name} (or NaN, Infinity, -Infinity), got `{text}`"))?;
    // Rust reads an overflowing literal such as `1e999` as infinity; only a written infinity is one.
    let written_infinity =
        matches!(text.trim_start_matches(['+', '-']).to_ascii_lowercase().as_str(), "inf" | "infinity");
    if value.is_infinite_value() && !written_infinity {
        return Err(Refusal::from(format!("`{text}` is out of range for {type_name}")));
    }
    Ok(value)
}

/// What [`float`] needs of `f32` and `f64`.
trait FloatCheck {
    fn is_infinite_value(&self) -> bool;
}

impl FloatCheck for f32 {
    fn is_infinite_value(&self) -> bool {
        self.is_infinite()
    }
}

impl FloatCheck for f64 {
    fn is_infinite_value(&self) -> bool {
        self.is_infinite()
    }
}

/// Standard or URL-safe base64, padded or not.
fn base64_bytes(text: &str) -> Result<Bytes, Refusal> {
    const CONFIG: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, CONFIG);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, CONFIG);
    STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .map(Bytes::from)
        .map_err(|error| Refusal::from(format!("expected base64 (standard or URL-safe): {error}")))
}

/// An enum value by name, or by number as the proto3 JSON mapping allows.
fn enum_number(descriptor: &EnumDescriptor, text: &str) -> Result<i32, Refusal> {
    if let Some(value) = descriptor.get_value_by_name(text) {
        return Ok(value.number());
    }
    text.parse().map_err(|_| {
        let names: Vec<String> = descriptor.values().map(|value| value.name().to_owned()).collect();
        Refusal::from(format!(
            "`{text}` is not a value of {}; expected one of {}",
            descriptor.full_name(),
            names.join(", ")
        ))
    })
}

/// Scalar-like well-known types from their text form.
fn message_from_text(descriptor: &MessageDescriptor, text: &str) -> Result<DynamicMessage, Refusal> {
    match descriptor.full_name() {
        // Their proto3 JSON form is a string: reuse prost-reflect's reading of it.
        "google.protobuf.Timestamp" | "google.protobuf.Duration" => DynamicMessage::deserialize_with_options(
            descriptor.clone(),
            de::value::StrDeserializer::<de::value::Error>::new(text),
            &BODY_OPTIONS,
        )
        .map_err(|error| Refusal::from(format!("expected {}: {error}", text_form(descriptor)))),
        "google.protobuf.FieldMask" => {
            let paths = text.split(',').filter(|path| !path.is_empty()).map(mask_path).collect::<Result<_, _>>()?;
            let mut mask = DynamicMessage::new(descriptor.clone());
            mask.try_set_field_by_name("paths", Value::List(paths)).map_err(|e| e.to_string())?;
            Ok(mask)
        }
        _ if is_text_message(descriptor) => {
            // A wrapper: its `value` field, read as that scalar.
            let field = descriptor.get_field_by_name("value").ok_or("a wrapper without a `value` field")?;
            let value = value_from_text(&field.kind(), text)?;
            let mut wrapper = DynamicMessage::new(descriptor.clone());
            wrapper.try_set_field(&field, value).map_err(|e| e.to_string())?;
            Ok(wrapper)
        }
        name => Err(Refusal::from(format!("a {name} cannot be given as text; set its fields one by one"))),
    }
}

fn text_form(descriptor: &MessageDescriptor) -> &'static str {
    match descriptor.full_name() {
        "google.protobuf.Timestamp" => "an RFC 3339 time such as `2026-01-01T00:00:00Z`",
        _ => "a duration in seconds such as `1.5s`",
    }
}

/// A field mask path in proto names, from proto or lowerCamel JSON names.
///
/// Each step must survive the trip to lowerCamel and back, as the JSON form
/// of the mask requires: lower-case letters and digits, `_` only before a letter.
fn mask_path(path: &str) -> Result<Value, Refusal> {
    let mut snake = String::with_capacity(path.len() + 4);
    for ch in path.chars() {
        if ch.is_ascii_uppercase() {
            snake.push('_');
            snake.push(ch.to_ascii_lowercase());
        } else {
            snake.push(ch);
        }
    }
    let step_is_a_name = |step: &str| {
        let bytes = step.as_bytes();
        bytes.first().is_some_and(u8::is_ascii_lowercase)
            && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
            && bytes.windows(2).all(|pair| pair[0] != b'_' || pair[1].is_ascii_lowercase())
            && bytes.last() != Some(&b'_')
    };
    if snake.split('.').all(step_is_a_name) {
        Ok(Value::String(snake))
    } else {
        Err(Refusal::from(format!(
            "`{path}` is not a field path (names of lower-case letters, digits and `_`, joined by `.`)"
        )))
    }
}
