//! The request message from the body, the path variables and the query, in
//! that order.

use std::collections::HashSet;

use base64::Engine as _;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage as _, Value};
use serde::de;
use serde_path_to_error::Track;

use super::error_path::body_error;
use super::fields::{check_oneof, descend, field_path, proto_names};
use super::response::WithOptions;
use super::text::{is_text_message, value_from_text};
use super::{BODY_OPTIONS, Refusal, TranscodeError};
use crate::template::Binding;

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
        let refuse = |reason: Refusal| TranscodeError::new(key.as_str(), reason);

        if body_rule == "*" {
            return Err(refuse("this method reads every field from the body; it takes no query parameters".into()));
        }
        let fields = field_path(&descriptor, &key).map_err(refuse)?;
        let Some((leaf, parents)) = fields.split_last() else {
            return Err(refuse("names no field".into()));
        };
        let name = proto_names(&fields);
        if bound.iter().any(|path| overlaps(path, &name)) {
            return Err(refuse(Refusal::from(format!("`{name}` is set by the URL path"))));
        }
        if let Some(first) = fields.first()
            && first.name() == body_rule
        {
            return Err(refuse(Refusal::from(format!(
                "`{name}` is inside the body field `{body_rule}`; send it in the body"
            ))));
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
            parent.try_set_field(leaf, value).map_err(|e| refuse(e.to_string().into()))?;
        }
    }
    Ok(())
}

/// `+` is a space and `%XX` a byte, as in HTML form encoding; the result must be UTF-8.
/// (`url::form_urlencoded` would replace bytes that are not UTF-8 instead of refusing them.)
fn form_decode(raw: &str) -> Result<String, Refusal> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| Refusal::from("is not UTF-8 once percent-decoded"))
}

/// True when one dotted path is the other or lies inside it.
fn overlaps(a: &str, b: &str) -> bool {
    let inside = |outer: &str, inner: &str| inner.strip_prefix(outer).is_some_and(|rest| rest.starts_with('.'));
    a == b || inside(a, b) || inside(b, a)
}

/// A query parameter fills a scalar, an enum, a scalar-like well-known type, or a list of those.
fn check_query_leaf(leaf: &FieldDescriptor) -> Result<(), Refusal> {
    if leaf.is_map() {
        return Err(Refusal::from(format!("`{}` is a map field, which query parameters cannot fill", leaf.name())));
    }
    match leaf.kind() {
        Kind::Message(message) if !is_text_message(&message) => Err(Refusal::from(format!(
            "`{}` is a message ({}); set its fields, such as `{}.<field>`",
            leaf.name(),
            message.full_name(),
            leaf.name()
        ))),
        _ => Ok(()),
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
