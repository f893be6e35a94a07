//! The start-up check of one `google.api.http` rule against its RPC.

use std::collections::HashSet;

use prost_reflect::{Kind, MessageDescriptor};

use super::fields::{field_path, proto_names};

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
