//! Proto3 JSON ↔ protobuf for one binding: the request message from path
//! values, query parameters and the body; the response as JSON.
//!
//! The request is built in the order `google.api.http` implies: the body
//! first (the whole message for `body: "*"`, one top-level field otherwise),
//! then the path variables, which may agree with the body but not contradict
//! it, then the query parameters, which may only fill fields neither the path
//! nor the body owns. Every refusal names the field (proto names, dotted, with
//! `[i]` for list elements) or the query parameter as sent.

use std::collections::HashSet;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage as _,
    SerializeOptions, Value,
};
use serde::de;
use serde::ser::{Serialize, SerializeSeq, Serializer};
use serde_path_to_error::{Segment, Track};

use crate::template::Binding;

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

/// The proto3 JSON mapping, refusing fields the message does not have.
const BODY_OPTIONS: DeserializeOptions = DeserializeOptions::new().deny_unknown_fields(true);

/// Proto field names, every field present (defaults too), enums by name, 64-bit integers as strings.
const RESPONSE_OPTIONS: SerializeOptions =
    SerializeOptions::new().use_proto_field_name(true).skip_default_fields(false);

/// Builds the RPC's request from the body, the path values and the query,
/// taking the body as `HttpRule.body` says: `*`, one top-level field, or nothing.
pub fn request_message(
    descriptor: &MessageDescriptor,
    body_rule: &str,
    bindings: &[Binding],
    query: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, TranscodeError> {
    let mut message = match body_rule {
        "" if is_blank(body) => DynamicMessage::new(descriptor.clone()),
        "" => return Err(TranscodeError::new("body", "this method takes no request body; send none")),
        _ if is_blank(body) => DynamicMessage::new(descriptor.clone()),
        "*" => body_message(descriptor, None, body)?,
        field_name => {
            let field = descriptor.get_field_by_name(field_name).ok_or_else(|| {
                TranscodeError::new(
                    "body",
                    format!("the rule's body field `{field_name}` is not a field of {}", descriptor.full_name()),
                )
            })?;
            body_message(descriptor, Some(&field), body)?
        }
    };

    let mut bound = Vec::with_capacity(bindings.len());
    for binding in bindings {
        bound.push(apply_binding(&mut message, binding)?);
    }

    if let Some(query) = query {
        apply_query(&mut message, body_rule, &bound, query)?;
    }
    Ok(message)
}

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

/// Checks a rule against its RPC's messages at start-up: the body field and
/// the response field exist, and every path variable names a scalar field.
pub fn check_rule(
    input: &MessageDescriptor,
    output: &MessageDescriptor,
    body_rule: &str,
    variables: &[&str],
    response_body: &str,
) -> Result<(), String> {
    if !matches!(body_rule, "" | "*") && input.get_field_by_name(body_rule).is_none() {
        return Err(format!(
            "body `{body_rule}` is not a top-level field of {} (or `*` for the whole message)",
            input.full_name()
        ));
    }

    let mut seen = HashSet::new();
    for variable in variables {
        let fields = field_path(input, variable).map_err(|reason| format!("path variable `{variable}`: {reason}"))?;
        let Some(leaf) = fields.last() else {
            return Err(format!("path variable `{variable}` names no field"));
        };
        if leaf.is_list() || leaf.is_map() {
            return Err(format!("path variable `{variable}` names a repeated field; a variable fills one value"));
        }
        if let Kind::Message(message) = leaf.kind() {
            return Err(format!(
                "path variable `{variable}` names a field of type {}; it must end in a string, number, bool or enum field",
                message.full_name()
            ));
        }
        // A variable inside the body field is allowed (AIP-134's
        // `patch: "/v1/{book.name=shelves/*/books/*}" body: "book"`): the
        // path value fills it, and a body that disagrees is refused per request.
        if !seen.insert(proto_names(&fields)) {
            return Err(format!("path variable `{variable}` is bound twice"));
        }
    }

    if !response_body.is_empty() && output.get_field_by_name(response_body).is_none() {
        return Err(format!("response_body `{response_body}` is not a top-level field of {}", output.full_name()));
    }
    Ok(())
}

/// Nothing but JSON whitespace: no body.
fn is_blank(body: &[u8]) -> bool {
    body.iter().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// Reads the body as the request message (`body_field` = `None`) or as the
/// value of one of its fields, tracking where in the JSON an error happens.
fn body_message(
    descriptor: &MessageDescriptor,
    body_field: Option<&FieldDescriptor>,
    body: &[u8],
) -> Result<DynamicMessage, TranscodeError> {
    let mut json = serde_json::Deserializer::from_slice(body);
    let mut track = Track::new();
    let decoded = match body_field {
        None => DynamicMessage::deserialize_with_options(
            descriptor.clone(),
            serde_path_to_error::Deserializer::new(&mut json, &mut track),
            &BODY_OPTIONS,
        ),
        Some(field) => DynamicMessage::deserialize_with_options(
            descriptor.clone(),
            serde_path_to_error::Deserializer::new(BodyField { name: field.name(), value: &mut json }, &mut track),
            &BODY_OPTIONS,
        ),
    };
    match decoded {
        Ok(message) => {
            json.end().map_err(|e| TranscodeError::new("body", e.to_string()))?;
            Ok(message)
        }
        Err(error) => Err(body_error(descriptor, &track.path(), &error)),
    }
}

/// Names the field a body error happened at, in proto names.
fn body_error(
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

/// The body of a `body: "<field>"` rule read as if it were `{"<field>": <body>}`:
/// the request message's own JSON mapping reads the field, and error paths
/// start at the field's name.
struct BodyField<'a, D> {
    name: &'a str,
    value: D,
}

impl<'de, D: de::Deserializer<'de>> de::Deserializer<'de> for BodyField<'_, D> {
    type Error = D::Error;

    fn deserialize_any<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        visitor.visit_map(BodyFieldEntry { name: Some(self.name), value: Some(self.value) })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

/// The one entry of [`BodyField`]'s object.
struct BodyFieldEntry<'a, D> {
    name: Option<&'a str>,
    value: Option<D>,
}

impl<'de, D: de::Deserializer<'de>> de::MapAccess<'de> for BodyFieldEntry<'_, D> {
    type Error = D::Error;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, D::Error> {
        match self.name.take() {
            Some(name) => seed.deserialize(de::value::StrDeserializer::<D::Error>::new(name)).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, D::Error> {
        match self.value.take() {
            Some(value) => seed.deserialize(value),
            None => Err(de::Error::custom("the body field was read twice")),
        }
    }
}

/// Sets one path variable; answers the field's proto path.
fn apply_binding(message: &mut DynamicMessage, binding: &Binding) -> Result<String, TranscodeError> {
    let fields = field_path(&message.descriptor(), &binding.field)
        .map_err(|reason| TranscodeError::new(binding.field.as_str(), reason))?;
    let name = proto_names(&fields);
    let Some((leaf, parents)) = fields.split_last() else {
        return Err(TranscodeError::new("path", "a path variable names no field"));
    };
    if leaf.is_list() || leaf.is_map() {
        return Err(TranscodeError::new(name, "a path variable cannot fill a repeated field"));
    }
    let value =
        value_from_text(&leaf.kind(), &binding.value).map_err(|reason| TranscodeError::new(name.as_str(), reason))?;
    let parent = descend(message, parents).map_err(|reason| TranscodeError::new(name.as_str(), reason))?;
    if parent.has_field(leaf) {
        let from_body = parent.get_field(leaf);
        if *from_body != value {
            let kind = leaf.kind();
            let description =
                format!("set to {} by the path and {} by the body", show(&value, &kind), show(&from_body, &kind));
            return Err(TranscodeError::new(name, description));
        }
        return Ok(name);
    }
    check_oneof(parent, leaf).map_err(|reason| TranscodeError::new(name.as_str(), reason))?;
    parent.try_set_field(leaf, value).map_err(|e| TranscodeError::new(name.as_str(), e.to_string()))?;
    Ok(name)
}

/// Fills fields from the query string: `key=value` pairs, form-encoded.
fn apply_query(
    message: &mut DynamicMessage,
    body_rule: &str,
    bound: &[String],
    query: &str,
) -> Result<(), TranscodeError> {
    let descriptor = message.descriptor();
    let mut given = HashSet::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = form_decode(raw_key)
            .map_err(|reason| TranscodeError::new("query", format!("a parameter name {reason}")))?;
        if key.is_empty() {
            return Err(TranscodeError::new("query", "a query parameter has no name"));
        }
        let text = form_decode(raw_value)
            .map_err(|reason| TranscodeError::new(key.as_str(), format!("the value {reason}")))?;
        let refuse = |reason: String| TranscodeError::new(key.as_str(), reason);

        if body_rule == "*" {
            return Err(refuse("this method reads every field from the body; it takes no query parameters".into()));
        }
        let fields = field_path(&descriptor, &key).map_err(refuse)?;
        let Some((leaf, parents)) = fields.split_last() else {
            return Err(refuse("names no field".into()));
        };
        let name = proto_names(&fields);
        if bound.iter().any(|path| overlaps(path, &name)) {
            return Err(refuse(format!("`{name}` is set by the URL path")));
        }
        if let Some(first) = fields.first()
            && first.name() == body_rule
        {
            return Err(refuse(format!("`{name}` is inside the body field `{body_rule}`; send it in the body")));
        }
        check_query_leaf(leaf).map_err(refuse)?;
        let value = value_from_text(&leaf.kind(), &text).map_err(refuse)?;
        let parent = descend(message, parents).map_err(refuse)?;
        if leaf.is_list() {
            match parent.get_field_mut(leaf) {
                Value::List(items) => items.push(value),
                _ => return Err(refuse("is not a list".into())),
            }
        } else {
            if !given.insert(name) {
                return Err(refuse("is given more than once, but the field holds one value".into()));
            }
            check_oneof(parent, leaf).map_err(refuse)?;
            parent.try_set_field(leaf, value).map_err(|e| refuse(e.to_string()))?;
        }
    }
    Ok(())
}

/// `+` is a space and `%XX` a byte, as in HTML form encoding; the result must be UTF-8.
fn form_decode(raw: &str) -> Result<String, String> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| "is not UTF-8 once percent-decoded".to_owned())
}

/// True when one dotted path is the other or lies inside it.
fn overlaps(a: &str, b: &str) -> bool {
    let inside = |outer: &str, inner: &str| inner.strip_prefix(outer).is_some_and(|rest| rest.starts_with('.'));
    a == b || inside(a, b) || inside(b, a)
}

/// A query parameter fills a scalar, an enum, a scalar-like well-known type, or a list of those.
fn check_query_leaf(leaf: &FieldDescriptor) -> Result<(), String> {
    if leaf.is_map() {
        return Err(format!("`{}` is a map field, which query parameters cannot fill", leaf.name()));
    }
    match leaf.kind() {
        Kind::Message(message) if !is_text_message(&message) => Err(format!(
            "`{}` is a message ({}); set its fields, such as `{}.<field>`",
            leaf.name(),
            message.full_name(),
            leaf.name()
        )),
        _ => Ok(()),
    }
}

/// The fields along a dotted path, each step by proto or JSON name; every
/// step but the last is a singular message field.
fn field_path(descriptor: &MessageDescriptor, path: &str) -> Result<Vec<FieldDescriptor>, String> {
    let mut fields: Vec<FieldDescriptor> = Vec::new();
    let mut message = descriptor.clone();
    for step in path.split('.') {
        if let Some(parent) = fields.last() {
            message = match parent.kind() {
                Kind::Message(inner) if !parent.is_list() && !parent.is_map() && !is_well_known(&inner) => inner,
                _ => return Err(format!("`{}` is not a message field, so it has no field `{step}`", parent.name())),
            };
        }
        let field = message
            .get_field_by_name(step)
            .or_else(|| message.get_field_by_json_name(step))
            .ok_or_else(|| format!("{} has no field `{step}`", message.full_name()))?;
        fields.push(field);
    }
    Ok(fields)
}

fn proto_names(fields: &[FieldDescriptor]) -> String {
    fields.iter().map(FieldDescriptor::name).collect::<Vec<_>>().join(".")
}

/// The message at the end of a path of singular message fields, creating the
/// ones not set yet.
fn descend<'m>(
    mut message: &'m mut DynamicMessage,
    path: &[FieldDescriptor],
) -> Result<&'m mut DynamicMessage, String> {
    for field in path {
        check_oneof(message, field)?;
        message = match message.get_field_mut(field) {
            Value::Message(inner) => inner,
            _ => return Err(format!("`{}` is not a message field", field.name())),
        };
    }
    Ok(message)
}

/// Refuses to set a oneof member when another member of the same oneof is set.
fn check_oneof(message: &DynamicMessage, field: &FieldDescriptor) -> Result<(), String> {
    let Some(oneof) = field.containing_oneof() else { return Ok(()) };
    match oneof.fields().find(|other| other.number() != field.number() && message.has_field(other)) {
        Some(other) => Err(format!(
            "`{}` and `{}` are both set, but they are members of oneof `{}`; set only one",
            field.name(),
            other.name(),
            oneof.name()
        )),
        None => Ok(()),
    }
}

fn is_well_known(message: &MessageDescriptor) -> bool {
    message.full_name().starts_with("google.protobuf.")
}

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
fn is_text_message(message: &MessageDescriptor) -> bool {
    let name = message.full_name();
    matches!(name, "google.protobuf.Timestamp" | "google.protobuf.Duration" | "google.protobuf.FieldMask")
        || WRAPPER_TYPES.contains(&name)
}

/// Text from a path or query string as a value of the given kind.
fn value_from_text(kind: &Kind, text: &str) -> Result<Value, String> {
    match kind {
        Kind::String => Ok(Value::String(text.to_owned())),
        Kind::Bool => match text {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(format!("expected `true` or `false`, got `{text}`")),
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

fn integer<T: std::str::FromStr<Err = std::num::ParseIntError>>(text: &str, type_name: &str) -> Result<T, String> {
    use std::num::IntErrorKind;
    text.parse().map_err(|error: std::num::ParseIntError| match error.kind() {
        IntErrorKind::PosOverflow | IntErrorKind::NegOverflow => format!("`{text}` is out of range for {type_name}"),
        _ => format!("expected a decimal {type_name}, got `{text}`"),
    })
}

fn float<T: std::str::FromStr + FloatCheck>(text: &str, type_name: &str) -> Result<T, String> {
    let value: T =
        text.parse().map_err(|_| format!("expected a {type_name} (or NaN, Infinity, -Infinity), got `{text}`"))?;
    // Rust reads an overflowing literal such as `1e999` as infinity; only a written infinity is one.
    let written_infinity =
        matches!(text.trim_start_matches(['+', '-']).to_ascii_lowercase().as_str(), "inf" | "infinity");
    if value.is_infinite_value() && !written_infinity {
        return Err(format!("`{text}` is out of range for {type_name}"));
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
fn base64_bytes(text: &str) -> Result<Bytes, String> {
    const CONFIG: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, CONFIG);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, CONFIG);
    STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .map(Bytes::from)
        .map_err(|error| format!("expected base64 (standard or URL-safe): {error}"))
}

/// An enum value by name, or by number as the proto3 JSON mapping allows.
fn enum_number(descriptor: &EnumDescriptor, text: &str) -> Result<i32, String> {
    if let Some(value) = descriptor.get_value_by_name(text) {
        return Ok(value.number());
    }
    text.parse().map_err(|_| {
        let names: Vec<String> = descriptor.values().map(|value| value.name().to_owned()).collect();
        format!("`{text}` is not a value of {}; expected one of {}", descriptor.full_name(), names.join(", "))
    })
}

/// Scalar-like well-known types from their text form.
fn message_from_text(descriptor: &MessageDescriptor, text: &str) -> Result<DynamicMessage, String> {
    match descriptor.full_name() {
        // Their proto3 JSON form is a string: reuse prost-reflect's reading of it.
        "google.protobuf.Timestamp" | "google.protobuf.Duration" => DynamicMessage::deserialize_with_options(
            descriptor.clone(),
            de::value::StrDeserializer::<de::value::Error>::new(text),
            &BODY_OPTIONS,
        )
        .map_err(|error| format!("expected {}: {error}", text_form(descriptor))),
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
        name => Err(format!("a {name} cannot be given as text; set its fields one by one")),
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
fn mask_path(path: &str) -> Result<Value, String> {
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
        Err(format!("`{path}` is not a field path (names of lower-case letters, digits and `_`, joined by `.`)"))
    }
}

/// A value as a caller would write it, for error messages.
fn show(value: &Value, kind: &Kind) -> String {
    match (value, kind) {
        (Value::String(text), _) => format!("{text:?}"),
        (Value::EnumNumber(number), Kind::Enum(descriptor)) => match descriptor.get_value(*number) {
            Some(named) => named.name().to_owned(),
            None => number.to_string(),
        },
        (Value::Bool(v), _) => v.to_string(),
        (Value::I32(v), _) => v.to_string(),
        (Value::I64(v), _) => v.to_string(),
        (Value::U32(v), _) => v.to_string(),
        (Value::U64(v), _) => v.to_string(),
        (Value::F32(v), _) => v.to_string(),
        (Value::F64(v), _) => v.to_string(),
        (Value::Bytes(bytes), _) => base64::engine::general_purpose::STANDARD.encode(bytes),
        (Value::Message(message), _) => {
            serde_json::to_string(&WithOptions(message)).unwrap_or_else(|_| message.descriptor().full_name().to_owned())
        }
        (other, _) => format!("{other:?}"),
    }
}

/// A message serialized with [`RESPONSE_OPTIONS`].
struct WithOptions<'a>(&'a DynamicMessage);

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

/// Names the field a response failed to serialize at (a Timestamp out of
/// range, say). The fast path does not track paths, so this serializes once
/// more, rarely, with tracking.
fn response_error(value: &impl Serialize, prefix: &str, error: &serde_json::Error) -> TranscodeError {
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

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking
mod tests {
    use std::sync::OnceLock;

    use proptest::prelude::*;
    use prost_reflect::DescriptorPool;
    use serde_json::json;

    use super::*;

    fn mesh(name: &str) -> MessageDescriptor {
        static POOL: OnceLock<DescriptorPool> = OnceLock::new();
        let pool = POOL.get_or_init(|| proto::descriptor_pool().expect("the mesh's descriptors decode"));
        pool.get_message_by_name(name).unwrap_or_else(|| panic!("{name} is in the mesh"))
    }

    /// `gateway.test.v1.Probe` from tests/protos: the forms the mesh lacks.
    fn probe() -> MessageDescriptor {
        static POOL: OnceLock<DescriptorPool> = OnceLock::new();
        let pool = POOL.get_or_init(|| {
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/protos");
            let files = protox::compile(["transcode_probe.proto"], [dir]).expect("the test proto compiles");
            DescriptorPool::from_file_descriptor_set(files).expect("the test descriptors are valid")
        });
        pool.get_message_by_name("gateway.test.v1.Probe").expect("Probe is described")
    }

    fn bind(field: &str, value: &str) -> Binding {
        Binding { field: field.into(), value: value.into() }
    }

    /// The fields a message has set, proto names, defaults left out.
    fn set_fields(message: &DynamicMessage) -> serde_json::Value {
        let options = SerializeOptions::new().use_proto_field_name(true);
        message.serialize_with_options(serde_json::value::Serializer, &options).expect("serializes")
    }

    fn query(descriptor: &MessageDescriptor, query: &str) -> Result<DynamicMessage, TranscodeError> {
        request_message(descriptor, "", &[], Some(query), b"")
    }

    fn refused(result: Result<DynamicMessage, TranscodeError>) -> TranscodeError {
        match result {
            Ok(message) => panic!("expected an error, got {}", set_fields(&message)),
            Err(error) => error,
        }
    }

    // ---- rule forms -------------------------------------------------------

    #[test]
    fn body_star_reads_the_whole_order_and_the_path_fills_order_number() {
        let body = br#"{
            "orderId": "0f6c", "order_version": 3, "dateplaced": "2026-01-01T10:00:00Z",
            "learner": {"lmsUserId": "4242", "lms_username": "ada"}, "emailOptIn": true,
            "lineItems": [{"lineItemId": "1", "courseRun": {"courseRunKey": "course-v1:X+Y+Z", "mode": "verified"},
                           "price": {"currencyCode": "USD", "amount": "49.00"}}]
        }"#;
        let body = std::str::from_utf8(body).unwrap().replace("dateplaced", "datePlaced");
        let descriptor = mesh("commerce.fulfillment.v1.FulfillOrderRequest");
        let message =
            request_message(&descriptor, "*", &[bind("order_number", "EDX-100042")], None, body.as_bytes()).unwrap();
        assert_eq!(
            set_fields(&message),
            json!({
                "order_number": "EDX-100042", "order_id": "0f6c", "order_version": "3",
                "date_placed": "2026-01-01T10:00:00Z",
                "learner": {"lms_user_id": "4242", "lms_username": "ada"}, "email_opt_in": true,
                "line_items": [{"line_item_id": "1",
                                "course_run": {"course_run_key": "course-v1:X+Y+Z", "mode": "verified"},
                                "price": {"currency_code": "USD", "amount": "49.00"}}]
            })
        );
    }

    #[test]
    fn a_path_value_the_body_repeats_unchanged_is_accepted() {
        let descriptor = mesh("commerce.fulfillment.v1.FulfillOrderRequest");
        let body = br#"{"order_number": "EDX-1", "order_id": "o"}"#;
        let message = request_message(&descriptor, "*", &[bind("order_number", "EDX-1")], None, body).unwrap();
        assert_eq!(set_fields(&message), json!({"order_number": "EDX-1", "order_id": "o"}));
    }

    #[test]
    fn an_empty_or_blank_body_with_body_star_is_an_empty_message() {
        let descriptor = mesh("commerce.fulfillment.v1.RetryFulfillmentRequest");
        for body in [&b""[..], b" \r\n\t"] {
            let message = request_message(&descriptor, "*", &[bind("fulfillment_id", "f-1")], None, body).unwrap();
            assert_eq!(set_fields(&message), json!({"fulfillment_id": "f-1"}));
        }
    }

    #[test]
    fn a_body_field_rule_reads_the_body_as_that_field() {
        let descriptor = mesh("commerce.purchases.v1.RecordPurchaseRequest");
        let body = br#"{"purchaseId": "p-1", "lms_user_id": "42", "username": "ada",
                        "price": {"currencyCode": "USD", "amount": "19.99"}, "purchasedAt": "2026-01-01T00:00:00Z"}"#;
        let message = request_message(&descriptor, "purchase", &[], None, body).unwrap();
        assert_eq!(
            set_fields(&message),
            json!({"purchase": {"purchase_id": "p-1", "lms_user_id": "42", "username": "ada",
                                "price": {"currency_code": "USD", "amount": "19.99"},
                                "purchased_at": "2026-01-01T00:00:00Z"}})
        );
        // No body leaves the field unset rather than refusing.
        let empty = request_message(&descriptor, "purchase", &[], None, b"").unwrap();
        assert_eq!(set_fields(&empty), json!({}));
    }

    #[test]
    fn a_body_field_may_be_a_scalar_or_a_list() {
        let descriptor = probe();
        let message = request_message(&descriptor, "tags", &[], None, br#"["a", "b"]"#).unwrap();
        assert_eq!(set_fields(&message), json!({"tags": ["a", "b"]}));
        let message = request_message(&descriptor, "big", &[], None, b"\"-12\"").unwrap();
        assert_eq!(set_fields(&message), json!({"big": "-12"}));
    }

    #[test]
    fn the_legacy_buy_body_reads_as_record_purchase_request() {
        let descriptor = mesh("commerce.purchases.v1.RecordPurchaseRequest");
        let body = br#"{"username":"ada","userid":42,"price":19.99,"timestamp":"2026-01-01T00:00:00Z"}"#;
        let message = request_message(&descriptor, "*", &[], None, body).unwrap();
        assert_eq!(
            set_fields(&message),
            json!({"username": "ada", "userid": "42", "price": 19.99, "timestamp": "2026-01-01T00:00:00Z"})
        );
    }

    #[test]
    fn a_get_without_body_reads_the_query_by_proto_or_json_name() {
        let descriptor = mesh("commerce.purchases.v1.ListPurchasesRequest");
        let message = query(&descriptor, "lms_user_id=42&page_size=20&pageToken=abc").unwrap();
        assert_eq!(set_fields(&message), json!({"lms_user_id": "42", "page_size": 20, "page_token": "abc"}));
    }

    #[test]
    fn the_legacy_buy_list_path_fills_the_username() {
        let descriptor = mesh("commerce.purchases.v1.ListPurchasesRequest");
        let message =
            request_message(&descriptor, "", &[bind("username", "ada lovelace")], Some("page_size=5"), b"").unwrap();
        assert_eq!(set_fields(&message), json!({"username": "ada lovelace", "page_size": 5}));
    }

    #[test]
    fn nested_path_variables_create_their_intermediate_messages() {
        let bindings = [bind("shelf.shelf_id", "s-9"), bind("shelf.location.aisle", "A7")];
        let message =
            request_message(&probe(), "", &bindings, Some("shelf.location.bay=3&shelf.location.colour=1"), b"")
                .unwrap();
        assert_eq!(
            set_fields(&message),
            json!({"shelf": {"shelf_id": "s-9", "location": {"aisle": "A7", "bay": 3, "colour": "COLOUR_RED"}}})
        );
    }

    #[test]
    fn a_path_variable_inside_a_star_body_joins_the_body_fields() {
        let body = br#"{"shelf": {"location": {"bay": 2}}}"#;
        let message = request_message(&probe(), "*", &[bind("shelf.location.aisle", "B")], None, body).unwrap();
        assert_eq!(set_fields(&message), json!({"shelf": {"location": {"aisle": "B", "bay": 2}}}));
    }

    #[test]
    fn query_values_convert_by_the_field_type() {
        let text = "count=-7&small=4000000000&big=-9007199254740993&huge=18446744073709551615&delta=-3\
                    &ratio=NaN&weight=-Infinity&active=true&colour=COLOUR_GREEN&colours=1&colours=COLOUR_GREEN\
                    &blob=aGk-Pz8_&at=2026-01-01T00%3A00%3A00Z&timeout=1.5s&limit=5&note=a+b%26c&flag=false\
                    &update_mask=shelf.shelfId,count&tags=x&tags=y&times=1970-01-01T00:00:01Z&times=2026-01-01T00:00:00Z";
        let message = query(&probe(), text).unwrap();
        assert_eq!(
            set_fields(&message),
            json!({
                "count": -7, "small": 4_000_000_000_u32, "big": "-9007199254740993", "huge": "18446744073709551615",
                "delta": -3, "ratio": "NaN", "weight": "-Infinity", "active": true, "colour": "COLOUR_GREEN",
                "colours": ["COLOUR_RED", "COLOUR_GREEN"], "blob": "aGk+Pz8/", "at": "2026-01-01T00:00:00Z",
                "timeout": "1.500s", "limit": 5, "note": "a b&c", "flag": false, "update_mask": "shelf.shelfId,count",
                "tags": ["x", "y"], "times": ["1970-01-01T00:00:01Z", "2026-01-01T00:00:00Z"]
            })
        );
    }

    #[test]
    fn query_bytes_take_standard_base64_percent_encoded_and_unpadded_url_safe() {
        let standard = query(&probe(), "blob=aGk%2BPz8%2F").unwrap();
        let url_safe = query(&probe(), "blob=aGk-Pz8_").unwrap();
        assert_eq!(set_fields(&standard), json!({"blob": "aGk+Pz8/"}));
        assert_eq!(set_fields(&standard), set_fields(&url_safe));
        let unpadded = query(&probe(), "blob=aGk").unwrap();
        assert_eq!(set_fields(&unpadded), json!({"blob": "aGk="}));
    }

    #[test]
    fn query_floats_take_infinity_and_a_wrapper_takes_an_empty_string() {
        let message = query(&probe(), "ratio=Infinity&weight=2.5e3&note=").unwrap();
        assert_eq!(set_fields(&message), json!({"ratio": "Infinity", "weight": 2500.0, "note": ""}));
    }

    #[test]
    fn body_keys_may_be_json_or_proto_names() {
        let by_json =
            request_message(&probe(), "*", &[], None, br#"{"shelfName": "n", "updateMask": "shelf.shelfId"}"#);
        let by_proto =
            request_message(&probe(), "*", &[], None, br#"{"shelf_name": "n", "update_mask": "shelf.shelfId"}"#);
        assert_eq!(set_fields(&by_json.unwrap()), json!({"shelf_name": "n", "update_mask": "shelf.shelfId"}));
        assert_eq!(set_fields(&by_proto.unwrap()), json!({"shelf_name": "n", "update_mask": "shelf.shelfId"}));
    }

    // ---- errors -----------------------------------------------------------

    #[test]
    fn malformed_json_names_the_body_with_line_and_column() {
        let descriptor = mesh("commerce.fulfillment.v1.FulfillOrderRequest");
        let error = refused(request_message(&descriptor, "*", &[], None, b"{\n  not json"));
        assert_eq!(error.field, "body");
        assert!(error.description.contains("line 2 column"), "{error}");

        let error = refused(request_message(&descriptor, "*", &[], None, br#"{"order_id": "o"} trailing"#));
        assert_eq!(error.field, "body");
        assert!(error.description.contains("trailing"), "{error}");

        let error = refused(request_message(&descriptor, "*", &[], None, b"[1, 2]"));
        assert_eq!(error.field, "body");
    }

    #[test]
    fn malformed_json_inside_a_field_names_the_field_reached() {
        let descriptor = mesh("commerce.fulfillment.v1.FulfillOrderRequest");
        let error = refused(request_message(&descriptor, "*", &[], None, br#"{"learner": {"lmsUserId": tru}}"#));
        assert_eq!(error.field, "learner.lms_user_id");
        assert!(error.description.contains("line 1 column"), "{error}");
    }

    #[test]
    fn a_wrong_type_names_the_field_in_proto_names() {
        let descriptor = mesh("commerce.fulfillment.v1.FulfillOrderRequest");
        let body = br#"{"lineItems": [{"lineItemId": "1"}, {"lineItemId": "2", "price": {"amount": 5}}]}"#;
        let error = refused(request_message(&descriptor, "*", &[], None, body));
        assert_eq!(error.field, "line_items[1].price.amount");

        let purchases = mesh("commerce.purchases.v1.RecordPurchaseRequest");
        let error = refused(request_message(&purchases, "purchase", &[], None, br#"{"price": {"currencyCode": 1}}"#));
        assert_eq!(error.field, "purchase.price.currency_code");
        let error = refused(request_message(&purchases, "purchase", &[], None, b"\"a string\""));
        assert_eq!(error.field, "purchase");
    }

    #[test]
    fn an_unknown_body_field_is_refused_by_its_path() {
        let purchases = mesh("commerce.purchases.v1.RecordPurchaseRequest");
        let error = refused(request_message(&purchases, "purchase", &[], None, br#"{"purchaseId": "p", "colour": 1}"#));
        assert_eq!(error.field, "purchase.colour");
        let error = refused(request_message(&purchases, "*", &[], None, br#"{"purchase": {"price": {"units": 5}}}"#));
        assert_eq!(error.field, "purchase.price.units");
        let error = refused(request_message(&purchases, "*", &[], None, br#"{"nope": 5}"#));
        assert_eq!(error.field, "nope");
    }

    #[test]
    fn out_of_range_integers_are_refused_in_body_and_query() {
        let error = refused(request_message(&probe(), "*", &[], None, br#"{"count": 3000000000}"#));
        assert_eq!(error.field, "count");
        let error = refused(request_message(&probe(), "*", &[], None, br#"{"counts": {"a": 3000000000}}"#));
        assert_eq!(error.field, "counts.a");
        let error = refused(query(&probe(), "count=3000000000"));
        assert_eq!(
            (error.field.as_str(), error.description.as_str()),
            ("count", "`3000000000` is out of range for int32")
        );
        let error = refused(query(&probe(), "small=-1"));
        assert_eq!(error.field, "small");
        let error = refused(query(&probe(), "ratio=1e39"));
        assert_eq!(error.field, "ratio");
        let error = refused(query(&probe(), "count=1.5"));
        assert_eq!(error.field, "count");
    }

    #[test]
    fn a_bad_enum_name_is_refused_in_body_and_query() {
        let body = br#"{"shelf": {"location": {"colour": "PURPLE"}}}"#;
        let error = refused(request_message(&probe(), "*", &[], None, body));
        assert_eq!(error.field, "shelf.location.colour");
        let error = refused(query(&probe(), "colours=COLOUR_RED&colours=PURPLE"));
        assert_eq!(error.field, "colours");
        assert!(error.description.contains("COLOUR_GREEN"), "lists the names: {error}");
    }

    #[test]
    fn a_bad_timestamp_duration_bool_or_base64_names_its_field() {
        let purchases = mesh("commerce.purchases.v1.RecordPurchaseRequest");
        let error = refused(request_message(&purchases, "purchase", &[], None, br#"{"purchasedAt": "yesterday"}"#));
        assert_eq!(error.field, "purchase.purchased_at");
        for (text, field) in
            [("at=yesterday", "at"), ("timeout=soon", "timeout"), ("active=yes", "active"), ("blob=%21%21", "blob")]
        {
            assert_eq!(refused(query(&probe(), text)).field, field, "{text}");
        }
        assert_eq!(refused(query(&probe(), "flag=1")).field, "flag");
        assert_eq!(refused(query(&probe(), "limit=x")).field, "limit");
        for mask in ["a__b", "a_1", "shelf.", "Shelf_id", "a=_b"] {
            assert_eq!(refused(query(&probe(), &format!("update_mask=count,{mask}"))).field, "update_mask", "{mask}");
        }
    }

    #[test]
    fn the_path_and_the_body_may_not_disagree() {
        let descriptor = mesh("commerce.fulfillment.v1.FulfillOrderRequest");
        let error = refused(request_message(
            &descriptor,
            "*",
            &[bind("order_number", "EDX-1")],
            None,
            br#"{"orderNumber": "EDX-2"}"#,
        ));
        assert_eq!(error.field, "order_number");
        assert_eq!(error.description, r#"set to "EDX-1" by the path and "EDX-2" by the body"#);

        let body = br#"{"shelf": {"location": {"colour": "COLOUR_RED"}}}"#;
        let error =
            refused(request_message(&probe(), "*", &[bind("shelf.location.colour", "COLOUR_GREEN")], None, body));
        assert_eq!(error.field, "shelf.location.colour");
        assert_eq!(error.description, "set to COLOUR_GREEN by the path and COLOUR_RED by the body");
    }

    #[test]
    fn a_path_value_that_does_not_convert_names_its_field() {
        let error = refused(request_message(&probe(), "", &[bind("shelf.location.bay", "x")], None, b""));
        assert_eq!(error.field, "shelf.location.bay");
    }

    #[test]
    fn a_singular_query_parameter_given_twice_is_refused() {
        let descriptor = mesh("commerce.purchases.v1.ListPurchasesRequest");
        let error = refused(query(&descriptor, "page_size=1&pageSize=2"));
        assert_eq!(error.field, "pageSize");
        let error = refused(query(&descriptor, "page_size=1&page_size=1"));
        assert_eq!(error.field, "page_size");
    }

    #[test]
    fn query_parameters_are_refused_when_the_body_is_everything() {
        let descriptor = mesh("commerce.fulfillment.v1.FulfillOrderRequest");
        let error = refused(request_message(&descriptor, "*", &[], Some("order_id=o"), b"{}"));
        assert_eq!(error.field, "order_id");
        // An empty query string has no parameters.
        assert!(request_message(&descriptor, "*", &[], Some(""), b"{}").is_ok());
    }

    #[test]
    fn a_body_on_a_rule_without_one_is_refused() {
        let descriptor = mesh("commerce.purchases.v1.ListPurchasesRequest");
        let error = refused(request_message(&descriptor, "", &[], None, br#"{"page_size": 1}"#));
        assert_eq!(error.field, "body");
    }

    #[test]
    fn unknown_query_parameters_are_refused() {
        let descriptor = mesh("commerce.purchases.v1.ListPurchasesRequest");
        assert_eq!(refused(query(&descriptor, "colour=red")).field, "colour");
        assert_eq!(refused(query(&probe(), "shelf.location.depth=1")).field, "shelf.location.depth");
        assert_eq!(refused(query(&probe(), "count.value=1")).field, "count.value");
        assert_eq!(refused(query(&probe(), "shelves.shelf_id=1")).field, "shelves.shelf_id");
    }

    #[test]
    fn query_parameters_may_not_touch_the_path_or_the_body_field() {
        let list = mesh("commerce.purchases.v1.ListPurchasesRequest");
        let error = refused(request_message(&list, "", &[bind("username", "ada")], Some("username=bob"), b""));
        assert_eq!(error.field, "username");

        let record = mesh("commerce.purchases.v1.RecordPurchaseRequest");
        let error = refused(request_message(&record, "purchase", &[], Some("purchase.title=x"), b"{}"));
        assert_eq!(error.field, "purchase.title");
        // Fields outside the body field are the query's.
        let message = request_message(&record, "purchase", &[], Some("username=ada"), b"{}").unwrap();
        assert_eq!(set_fields(&message), json!({"purchase": {}, "username": "ada"}));
    }

    #[test]
    fn query_parameters_naming_messages_or_maps_are_refused() {
        assert_eq!(refused(query(&probe(), "shelf=x")).field, "shelf");
        assert_eq!(refused(query(&probe(), "shelf.location=x")).field, "shelf.location");
        assert_eq!(refused(query(&probe(), "counts=1")).field, "counts");
        assert_eq!(refused(query(&probe(), "extra=1")).field, "extra");
    }

    #[test]
    fn two_members_of_one_oneof_are_refused_wherever_they_come_from() {
        let list = mesh("commerce.purchases.v1.ListPurchasesRequest");
        let error = refused(request_message(&list, "", &[bind("username", "ada")], Some("lms_user_id=4"), b""));
        assert_eq!(error.field, "lms_user_id");
        assert!(error.description.contains("oneof `learner`"), "{error}");

        let error = refused(query(&probe(), "shelf_name=a&shelf_number=2"));
        assert_eq!(error.field, "shelf_number");

        let error = refused(request_message(&probe(), "*", &[], None, br#"{"shelfName": "a", "shelf_number": "2"}"#));
        assert_eq!(error.field, "target");

        let error =
            refused(request_message(&probe(), "*", &[bind("shelf_number", "2")], None, br#"{"shelfName": "a"}"#));
        assert_eq!(error.field, "shelf_number");
    }

    #[test]
    fn query_text_that_is_not_utf8_or_has_no_name_is_refused() {
        assert_eq!(refused(query(&probe(), "note=%FF")).field, "note");
        assert_eq!(refused(query(&probe(), "=x")).field, "query");
        assert_eq!(refused(query(&probe(), "%FF=x")).field, "query");
    }

    #[test]
    fn a_body_rule_naming_no_field_is_refused_per_request() {
        let error = refused(request_message(&probe(), "missing", &[], None, b"{}"));
        assert_eq!(error.field, "body");
    }

    // ---- responses --------------------------------------------------------

    fn purchases_response() -> DynamicMessage {
        let descriptor = mesh("commerce.purchases.v1.ListPurchasesResponse");
        let body = br#"{"purchases": [{"purchaseId": "p-1", "price": {"currencyCode": "USD", "amount": "19.99"},
                                       "purchasedAt": "2026-01-01T00:00:00Z"}], "nextPageToken": "t"}"#;
        request_message(&descriptor, "*", &[], None, body).unwrap()
    }

    #[test]
    fn a_response_has_proto_names_and_every_default() {
        let json: serde_json::Value =
            serde_json::from_slice(&response_json(&purchases_response(), "").unwrap()).unwrap();
        let purchase = json!({
            "purchase_id": "p-1", "lms_user_id": "", "username": "", "order_number": "", "product_key": "",
            "title": "", "price": {"currency_code": "USD", "amount": "19.99"},
            "purchased_at": "2026-01-01T00:00:00Z", "source": "", "status": "PURCHASE_STATUS_UNSPECIFIED"
        });
        assert_eq!(json, json!({"purchases": [purchase], "next_page_token": "t"}));
    }

    #[test]
    fn a_response_writes_enums_by_name_and_64_bit_integers_as_strings() {
        let message = query(&probe(), "big=5&colour=2").unwrap();
        let json: serde_json::Value = serde_json::from_slice(&response_json(&message, "").unwrap()).unwrap();
        assert_eq!((&json["big"], &json["colour"], &json["count"]), (&json!("5"), &json!("COLOUR_GREEN"), &json!(0)));
        assert_eq!(json["shelves"], json!([]));
        // Message fields have presence: an unset one is left out, as proto3 JSON says.
        assert_eq!(json.get("shelf"), None);
    }

    #[test]
    fn response_body_answers_that_field_alone() {
        let response = purchases_response();
        let list: serde_json::Value = serde_json::from_slice(&response_json(&response, "purchases").unwrap()).unwrap();
        assert_eq!(list.as_array().map(Vec::len), Some(1));
        assert_eq!(list[0]["purchase_id"], json!("p-1"));
        assert_eq!(list[0]["source"], json!(""));
        assert_eq!(response_json(&response, "next_page_token").unwrap(), b"\"t\"");

        let message = query(&probe(), "tags=a&tags=b&big=7&colour=1").unwrap();
        assert_eq!(response_json(&message, "tags").unwrap(), br#"["a","b"]"#);
        assert_eq!(response_json(&message, "big").unwrap(), br#""7""#);
        assert_eq!(response_json(&message, "colour").unwrap(), br#""COLOUR_RED""#);
        assert_eq!(response_json(&message, "shelves").unwrap(), b"[]");
        let shelf: serde_json::Value = serde_json::from_slice(&response_json(&message, "shelf").unwrap()).unwrap();
        // An unset message field answers its default, whose own message fields, having presence, stay out.
        assert_eq!(shelf, json!({"shelf_id": ""}));
    }

    #[test]
    fn a_response_that_cannot_be_json_names_the_field() {
        let descriptor = mesh("commerce.purchases.v1.ListPurchasesResponse");
        let mut response = purchases_response();
        let mut bad_time = DynamicMessage::new(mesh("commerce.purchases.v1.Purchase"));
        let far = prost_types::Timestamp { seconds: i64::MAX, nanos: 0 };
        let mut timestamp = DynamicMessage::new(
            bad_time
                .descriptor()
                .get_field_by_name("purchased_at")
                .map(|f| match f.kind() {
                    Kind::Message(m) => m,
                    _ => unreachable!(),
                })
                .unwrap(),
        );
        timestamp.transcode_from(&far).unwrap();
        bad_time.set_field_by_name("purchased_at", Value::Message(timestamp));
        let purchases = descriptor.get_field_by_name("purchases").unwrap();
        match response.get_field_mut(&purchases) {
            Value::List(items) => items.push(Value::Message(bad_time)),
            _ => unreachable!(),
        }
        assert_eq!(response_json(&response, "").unwrap_err().field, "purchases[1].purchased_at");
        assert_eq!(response_json(&response, "purchases").unwrap_err().field, "purchases[1].purchased_at");
        assert_eq!(response_json(&response, "colour").unwrap_err().field, "colour");
    }

    // ---- rules at start-up ------------------------------------------------

    #[test]
    fn the_mesh_rules_check() {
        let fulfill = mesh("commerce.fulfillment.v1.FulfillOrderRequest");
        let fulfilled = mesh("commerce.fulfillment.v1.FulfillOrderResponse");
        check_rule(&fulfill, &fulfilled, "*", &["order_number"], "").unwrap();
        let record = mesh("commerce.purchases.v1.RecordPurchaseRequest");
        let recorded = mesh("commerce.purchases.v1.RecordPurchaseResponse");
        check_rule(&record, &recorded, "purchase", &[], "").unwrap();
        let list = mesh("commerce.purchases.v1.ListPurchasesRequest");
        let listed = mesh("commerce.purchases.v1.ListPurchasesResponse");
        check_rule(&list, &listed, "", &["username"], "purchases").unwrap();
        // Path variables may reach inside a `*` body and nest.
        check_rule(&probe(), &probe(), "*", &["shelf.location.aisle", "shelf.location.colour", "count"], "tags")
            .unwrap();
    }

    #[test]
    fn bad_rules_are_explained() {
        let p = probe();
        let cases: [(&str, &[&str], &str, &str); 8] = [
            ("missing", &[], "", "body `missing`"),
            ("shelf.location", &[], "", "body `shelf.location`"),
            ("", &["tags"], "", "repeated"),
            ("", &["counts"], "", "repeated"),
            ("", &["shelf"], "", "gateway.test.v1.Shelf"),
            ("", &["at"], "", "google.protobuf.Timestamp"),
            ("", &["shelf.nope"], "", "has no field `nope`"),
            ("", &[], "nope", "response_body `nope`"),
        ];
        for (body, variables, response_body, expected) in cases {
            let error = check_rule(&p, &p, body, variables, response_body).unwrap_err();
            assert!(error.contains(expected), "{error:?} mentions {expected:?}");
        }
        let error = check_rule(&p, &p, "", &["count", "count"], "").unwrap_err();
        assert!(error.contains("twice"), "{error}");
        let error = check_rule(&p, &p, "", &["count.value"], "").unwrap_err();
        assert!(error.contains("not a message field"), "{error}");
    }

    // ---- properties -------------------------------------------------------

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            "[a-zA-Z0-9:._+/=-]{0,12}".prop_map(serde_json::Value::from),
            prop_oneof![Just("COLOUR_RED"), Just("2026-01-01T00:00:00Z"), Just("1.5s"), Just("NaN"), Just("-1")]
                .prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            let key = prop_oneof![
                Just("shelf".to_owned()),
                Just("location".to_owned()),
                Just("shelfName".to_owned()),
                Just("shelf_number".to_owned()),
                Just("count".to_owned()),
                Just("tags".to_owned()),
                Just("counts".to_owned()),
                Just("times".to_owned()),
                Just("purchase".to_owned()),
                Just("price".to_owned()),
                Just("lineItems".to_owned()),
                "[a-z_]{1,8}",
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                prop::collection::btree_map(key, inner, 0..5)
                    .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }

    /// The rules the properties exercise: (message, body rule, path bindings).
    fn rules() -> Vec<(MessageDescriptor, &'static str, Vec<Binding>)> {
        vec![
            (probe(), "*", vec![bind("shelf.location.aisle", "A")]),
            (probe(), "shelf", vec![bind("count", "1")]),
            (probe(), "tags", vec![]),
            (probe(), "", vec![bind("shelf_name", "n")]),
            (mesh("commerce.fulfillment.v1.FulfillOrderRequest"), "*", vec![bind("order_number", "EDX-1")]),
            (mesh("commerce.purchases.v1.RecordPurchaseRequest"), "purchase", vec![]),
            (mesh("commerce.purchases.v1.RecordPurchaseRequest"), "*", vec![]),
            (mesh("commerce.purchases.v1.ListPurchasesRequest"), "", vec![bind("username", "ada")]),
        ]
    }

    /// Never a panic; an error always names something; a message always serializes back.
    fn holds(result: Result<DynamicMessage, TranscodeError>) -> Result<(), TestCaseError> {
        match result {
            Ok(message) => {
                let json = response_json(&message, "").map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(serde_json::from_slice::<serde_json::Value>(&json).is_ok());
            }
            Err(error) => prop_assert!(!error.field.is_empty(), "{error:?}"),
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn any_bytes_as_body_are_a_message_or_a_named_error(body in prop::collection::vec(any::<u8>(), 0..64)) {
            for (descriptor, rule, bindings) in rules() {
                holds(request_message(&descriptor, rule, &bindings, None, &body))?;
            }
        }

        #[test]
        fn any_json_as_body_is_a_message_or_a_named_error(value in json_value()) {
            let body = serde_json::to_vec(&value).unwrap();
            for (descriptor, rule, bindings) in rules() {
                holds(request_message(&descriptor, rule, &bindings, None, &body))?;
            }
        }

        #[test]
        fn any_query_is_a_message_or_a_named_error(
            text in prop_oneof![
                "[a-zA-Z_.=&%+0-9]{0,40}",
                "((shelf\\.location\\.|shelf\\.)?(aisle|bay|colour|count|tags|at|timeout|limit|flag|blob|ratio|shelf_name|shelf_number|username|page_size|update_mask)=[a-zA-Z0-9%+._:-]{0,10}&?){0,5}",
                any::<String>(),
            ]
        ) {
            for (descriptor, rule, bindings) in rules() {
                holds(request_message(&descriptor, rule, &bindings, Some(&text), b""))?;
            }
        }
    }
}
