//! `google.protobuf.Struct` ⇄ JSON, for payloads that travel as free-form JSON
//! inside a protobuf message.
//!
//! ```
//! let json = serde_json::json!({"title": "CS50", "weeks": 12, "tags": ["cs", null]});
//! assert_eq!(kit::json::from_struct(&kit::json::to_struct(&json).unwrap()), json);
//! ```

/// A Struct as JSON. Numbers arrive as f64 (protobuf's only number): integral
/// ones become JSON integers, so `"2450"` sent as 2450 maps alike; NaN and
/// infinities, which JSON cannot hold, become null.
pub fn from_struct(value: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(value.fields.iter().map(|(k, v)| (k.clone(), from_value(v))).collect())
}

/// A protobuf Value as JSON (see [`from_struct`]).
pub fn from_value(value: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            // Below 2^53 every integer is exact in an f64.
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                serde_json::Value::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n).map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(list)) => serde_json::Value::Array(list.values.iter().map(from_value).collect()),
        Some(Kind::StructValue(s)) => from_struct(s),
    }
}

/// A JSON value as a protobuf Value (numbers become f64).
pub fn to_value(json: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match json {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => {
            Kind::ListValue(prost_types::ListValue { values: a.iter().map(to_value).collect() })
        }
        serde_json::Value::Object(o) => {
            Kind::StructValue(prost_types::Struct { fields: o.iter().map(|(k, v)| (k.clone(), to_value(v))).collect() })
        }
    };
    prost_types::Value { kind: Some(kind) }
}

/// A JSON object as a Struct; None for any other JSON value.
pub fn to_struct(json: &serde_json::Value) -> Option<prost_types::Struct> {
    match to_value(json).kind {
        Some(prost_types::value::Kind::StructValue(s)) => Some(s),
        _ => None,
    }
}
