//! Dotted field paths (`purchase.price.units`) through a message schema, and
//! the messages along them.

use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};

use super::Refusal;

/// The fields along a dotted path, each step by proto or JSON name; every
/// step but the last is a singular message field.
pub(super) fn field_path(descriptor: &MessageDescriptor, path: &str) -> Result<Vec<FieldDescriptor>, Refusal> {
    let mut fields: Vec<FieldDescriptor> = Vec::new();
    let mut message = descriptor.clone();
    for step in path.split('.') {
        if let Some(parent) = fields.last() {
            message = match parent.kind() {
                Kind::Message(inner) if !parent.is_list() && !parent.is_map() && !is_well_known(&inner) => inner,
                _ => {
                    return Err(Refusal::from(format!(
                        "`{}` is not a message field, so it has no field `{step}`",
                        parent.name()
                    )));
                }
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

pub(super) fn proto_names(fields: &[FieldDescriptor]) -> String {
    fields.iter().map(FieldDescriptor::name).collect::<Vec<_>>().join(".")
}

/// The message at the end of a path of singular message fields, creating the
/// ones not set yet.
pub(super) fn descend<'m>(
    mut message: &'m mut DynamicMessage,
    path: &[FieldDescriptor],
) -> Result<&'m mut DynamicMessage, Refusal> {
    for field in path {
        check_oneof(message, field)?;
        message = match message.get_field_mut(field) {
            Value::Message(inner) => inner,
            _ => return Err(Refusal::from(format!("`{}` is not a message field", field.name()))),
        };
    }
    Ok(message)
}

/// Refuses to set a oneof member when another member of the same oneof is set.
pub(super) fn check_oneof(message: &DynamicMessage, field: &FieldDescriptor) -> Result<(), Refusal> {
    let Some(oneof) = field.containing_oneof() else { return Ok(()) };
    match oneof.fields().find(|other| other.number() != field.number() && message.has_field(other)) {
        Some(other) => Err(Refusal::from(format!(
            "`{}` and `{}` are both set, but they are members of oneof `{}`; set only one",
            field.name(),
            other.name(),
            oneof.name()
        ))),
        None => Ok(()),
    }
}

fn is_well_known(message: &MessageDescriptor) -> bool {
    message.full_name().starts_with("google.protobuf.")
}
