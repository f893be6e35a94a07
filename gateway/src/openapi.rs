//! The OpenAPI 3.1 document, built from the descriptors: every binding's path,
//! parameters, request and response schemas, and the bearer security scheme.
//!
//! Schemas follow the proto3 JSON mapping as the gateway speaks it: property
//! names are the proto field names, 64-bit integers are strings, enums are
//! their value names, and well-known types take their JSON forms (a
//! `google.protobuf.Timestamp` is an RFC 3339 string). Every message reachable
//! from an RPC is a component keyed by its full name. The document is built
//! from sorted maps, so the same descriptors always give the same bytes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prost_reflect::{
    DescriptorPool, EnumDescriptor, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor, ServiceDescriptor,
};
use serde_json::{Map, Value, json};

use crate::binding::{HttpBinding, MethodBinding};
use crate::template::PathTemplate;

/// The component name of the error body every failed call answers.
pub const STATUS_SCHEMA: &str = "google.rpc.Status";
/// The name of the security scheme every operation requires.
pub const BEARER_SCHEME: &str = "bearer";
/// The operation extension listing the scopes a caller's token must carry.
pub const REQUIRED_SCOPES_EXTENSION: &str = "x-required-scopes";
/// The media type of a streamed body: one JSON message a line.
pub const NDJSON: &str = "application/x-ndjson";

/// How deep query parameters reach into nested request messages; a message
/// that contains itself would otherwise never end.
const MAX_QUERY_DEPTH: usize = 8;

/// The error answers every operation documents, with the gRPC codes behind each.
const ERROR_RESPONSES: [(&str, &str); 8] = [
    (
        "400",
        "The request is invalid (INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE); \
         `BadRequest` details name each field at fault.",
    ),
    ("401", "No valid bearer token (UNAUTHENTICATED)."),
    ("403", "The token lacks a required scope (PERMISSION_DENIED)."),
    ("404", "What the request names does not exist (NOT_FOUND)."),
    (
        "409",
        "The request conflicts with the stored state (ALREADY_EXISTS, ABORTED); \
         `ErrorInfo` details carry a stable reason.",
    ),
    ("429", "Throttled (RESOURCE_EXHAUSTED); `RetryInfo` details say when to try again."),
    ("503", "A service is unavailable (UNAVAILABLE); the call may be retried."),
    ("default", "Any other failure, as a `google.rpc.Status`."),
];

/// What `info.description` says about the JSON the gateway speaks.
const JSON_MAPPING_NOTE: &str = "Bodies are proto3 JSON. Property names are the proto field names \
(snake_case), as the gateway writes them; requests may also use the lowerCamelCase JSON names. \
64-bit integers are strings, enums are their value names, times are RFC 3339 strings. \
Every error answers a `google.rpc.Status`.";

/// The document's title and version.
#[derive(Clone, Debug)]
pub struct ApiInfo {
    /// `info.title`.
    pub title: String,
    /// `info.version`.
    pub version: String,
}

/// The OpenAPI 3.1 document for `bindings`.
///
/// One operation per HTTP binding. A binding whose method OpenAPI 3.1 has no
/// field for (a custom kind other than HEAD, OPTIONS or TRACE) is left out; of
/// two bindings with the same method and OpenAPI path (templates that differ
/// only in a variable's `=pattern`), the first is documented.
pub fn document(pool: &DescriptorPool, bindings: &[MethodBinding], info: &ApiInfo) -> Value {
    let mut builder = SchemaBuilder::new(pool);
    let labels = ServiceLabels::new(bindings);
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut tags: BTreeMap<String, Value> = BTreeMap::new();

    for binding in bindings {
        let service = binding.method.parent_service();
        let label = labels.label(service);
        tags.entry(label.clone()).or_insert_with(|| {
            let mut tag = json!({"name": label});
            set_text(&mut tag, "description", builder.comments.of(&service.parent_file(), service.path()));
            tag
        });
        builder.register(Named::Message(binding.method.input()));
        builder.register(Named::Message(binding.method.output()));
        for (index, http) in binding.http.iter().enumerate() {
            let Some(verb) = openapi_verb(&http.verb) else { continue };
            // The route table refuses a template that does not parse; here it is shown as written.
            let (path, variables) = match PathTemplate::parse(&http.path) {
                Ok(template) => (template.openapi_path(), template.variables().into_iter().map(String::from).collect()),
                Err(_) => (http.path.clone(), Vec::new()),
            };
            let operation_id = match index {
                0 => format!("{}_{}", label.replace('.', "_"), binding.method.name()),
                n => format!("{}_{}_{n}", label.replace('.', "_"), binding.method.name()),
            };
            let operation = builder.operation(binding, http, &variables, operation_id, &label);
            paths.entry(path).or_default().entry(verb).or_insert(operation);
        }
    }

    let mut schemas = builder.finish();
    schemas.insert(STATUS_SCHEMA.to_string(), status_schema());
    json!({
        "openapi": "3.1.0",
        "info": {"title": info.title, "version": info.version, "description": JSON_MAPPING_NOTE},
        "tags": tags.into_values().collect::<Vec<_>>(),
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                BEARER_SCHEME: {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
        },
    })
}

/// Adds `POST {route}`, Stripe's webhook: authenticated by its
/// `Stripe-Signature` header instead of a bearer token (`security: []`), its
/// body a Stripe event read as sent.
pub fn add_stripe_webhook(document: &mut Value, route: &str) {
    let status = json!({"$ref": format!("#/components/schemas/{STATUS_SCHEMA}")});
    let error = |description: &str| json!({"description": description, "content": {"application/json": {"schema": status.clone()}}});
    let operation = json!({
        "operationId": "webhooks_stripe",
        "tags": ["webhooks"],
        "summary": "Stripe's charge.refunded events: the order's lines are refunded in Fulfillment",
        "description": "Verified by the `Stripe-Signature` header (HMAC-SHA256 over `{t}.{body}` with the \
            endpoint's signing secret; any configured secret; `t` within the tolerance) before the body is \
            parsed. A full refund is the whole order (`metadata.order_number`); a partial one refunds the \
            lines in `metadata.line_item_ids`. A redelivered event is a repeat and changes nothing; other \
            event types are acknowledged and ignored. 404 when no signing secret is configured.",
        "security": [],
        "parameters": [{
            "name": "Stripe-Signature", "in": "header", "required": true,
            "description": "`t=<unix seconds>,v1=<hex HMAC-SHA256>[,v1=...]`",
            "schema": {"type": "string"}
        }],
        "requestBody": {
            "required": true,
            "content": {"application/json": {"schema": {"type": "object", "description": "A Stripe event"}}}
        },
        "responses": {
            "200": {"description": "Received: the refund recorded (or repeated), or the event ignored",
                    "content": {"application/json": {"schema": {"type": "object"}}}},
            "400": error("Missing or malformed signature, a timestamp outside the tolerance, or an event that names no order or lines"),
            "401": error("No signature matches a configured secret"),
            "404": error("No signing secret is configured, or Fulfillment knows no such order or line"),
            "409": error("A line was already refunded by another event"),
        },
    });
    if let Some(paths) = document["paths"].as_object_mut() {
        paths.insert(route.into(), json!({"post": operation}));
    }
}

/// The Path Item field for an HTTP method, if OpenAPI 3.1 has one.
fn openapi_verb(verb: &str) -> Option<String> {
    let verb = verb.to_ascii_lowercase();
    matches!(verb.as_str(), "get" | "put" | "post" | "delete" | "options" | "head" | "patch" | "trace").then_some(verb)
}

/// The name a service goes by in tags and operation ids: its short name, or
/// its full name when two packages share the short name.
struct ServiceLabels {
    ambiguous: BTreeSet<String>,
}

impl ServiceLabels {
    fn new(bindings: &[MethodBinding]) -> Self {
        let mut packages: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for binding in bindings {
            let service = binding.method.parent_service();
            packages.entry(service.name()).or_default().insert(service.full_name());
        }
        let ambiguous = packages
            .into_iter()
            .filter(|(_, full_names)| full_names.len() > 1)
            .map(|(name, _)| name.to_string())
            .collect();
        Self { ambiguous }
    }

    fn label(&self, service: &ServiceDescriptor) -> String {
        if self.ambiguous.contains(service.name()) {
            service.full_name().to_string()
        } else {
            service.name().to_string()
        }
    }
}

/// The comments written above each element of the proto files, by file and
/// source path.
struct Comments(HashMap<String, HashMap<Vec<i32>, String>>);

impl Comments {
    fn index(pool: &DescriptorPool) -> Self {
        let mut files = HashMap::new();
        for file in pool.files() {
            let Some(info) = &file.file_descriptor_proto().source_code_info else { continue };
            let comments: HashMap<Vec<i32>, String> = info
                .location
                .iter()
                .filter_map(|location| {
                    let raw = location.leading_comments.as_deref().or(location.trailing_comments.as_deref())?;
                    let text = clean_comment(raw);
                    (!text.is_empty()).then(|| (location.path.clone(), text))
                })
                .collect();
            files.insert(file.name().to_string(), comments);
        }
        Self(files)
    }

    fn of(&self, file: &FileDescriptor, path: &[i32]) -> Option<&str> {
        self.0.get(file.name())?.get(path).map(String::as_str)
    }
}

/// A comment as written, without the space after each `//`.
fn clean_comment(raw: &str) -> String {
    raw.lines()
        .map(|line| line.strip_prefix(' ').unwrap_or(line).trim_end())
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

/// The first sentence of a comment, on one line.
fn summary(comment: &str) -> String {
    let paragraph = comment.split("\n\n").next().unwrap_or_default();
    let line = paragraph.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.find(". ") {
        Some(end) => line[..=end].to_string(),
        None => line,
    }
}

/// Sets `key` to `text` on an object, when there is a text.
fn set_text(target: &mut Value, key: &str, text: Option<&str>) {
    if let (Some(object), Some(text)) = (target.as_object_mut(), text) {
        object.insert(key.to_string(), Value::String(text.to_string()));
    }
}

/// A message or an enum that has a component schema.
enum Named {
    Message(MessageDescriptor),
    Enum(EnumDescriptor),
}

impl Named {
    fn full_name(&self) -> &str {
        match self {
            Named::Message(message) => message.full_name(),
            Named::Enum(enumeration) => enumeration.full_name(),
        }
    }
}

/// Builds operations and the component schemas they reach.
struct SchemaBuilder {
    comments: Comments,
    /// Every component named so far, built or still queued.
    named: BTreeSet<String>,
    queued: Vec<Named>,
}

impl SchemaBuilder {
    fn new(pool: &DescriptorPool) -> Self {
        Self { comments: Comments::index(pool), named: BTreeSet::new(), queued: Vec::new() }
    }

    /// Makes `named` a component (once) and answers a reference to it.
    fn register(&mut self, named: Named) -> Value {
        let reference = json!({"$ref": format!("#/components/schemas/{}", named.full_name())});
        let is_component = match &named {
            Named::Message(message) => well_known(message).is_none(),
            Named::Enum(_) => true,
        };
        if is_component && self.named.insert(named.full_name().to_string()) {
            self.queued.push(named);
        }
        reference
    }

    /// Every component registered, and every one they reach.
    fn finish(mut self) -> BTreeMap<String, Value> {
        let mut schemas = BTreeMap::new();
        while let Some(named) = self.queued.pop() {
            let schema = match &named {
                Named::Message(message) => self.message_schema(message, &BTreeSet::new()),
                Named::Enum(enumeration) => self.enum_schema(enumeration),
            };
            schemas.insert(named.full_name().to_string(), schema);
        }
        schemas
    }

    fn operation(
        &mut self,
        binding: &MethodBinding,
        http: &HttpBinding,
        variables: &[String],
        operation_id: String,
        tag: &str,
    ) -> Value {
        let method = &binding.method;
        let input = method.input();
        let mut operation = Map::new();
        operation.insert("operationId".into(), Value::String(operation_id));
        operation.insert("tags".into(), json!([tag]));
        if let Some(comment) = self.comments.of(&method.parent_file(), method.path()) {
            operation.insert("summary".into(), Value::String(summary(comment)));
            operation.insert("description".into(), Value::String(comment.to_string()));
        }

        let mut parameters: Vec<Value> =
            variables.iter().map(|variable| self.path_parameter(&input, variable)).collect();
        if http.body != "*" {
            let bound: BTreeSet<&str> = variables.iter().map(String::as_str).collect();
            let body_field = (!http.body.is_empty()).then_some(http.body.as_str());
            let mut visiting = vec![input.full_name().to_string()];
            self.query_parameters(&input, "", &bound, body_field, &mut visiting, &mut parameters);
        }
        if !parameters.is_empty() {
            operation.insert("parameters".into(), Value::Array(parameters));
        }

        if !http.body.is_empty() {
            operation.insert("requestBody".into(), self.request_body(binding, http, variables));
        }
        operation.insert("responses".into(), self.responses(binding, http));
        operation.insert("security".into(), json!([{BEARER_SCHEME: binding.scopes}]));
        operation.insert(REQUIRED_SCOPES_EXTENSION.into(), json!(binding.scopes));
        Value::Object(operation)
    }

    /// A path variable as a required parameter typed by the field it binds.
    fn path_parameter(&mut self, input: &MessageDescriptor, variable: &str) -> Value {
        let field = field_at(input, variable);
        let schema = field
            .as_ref()
            .and_then(|field| self.query_schema(&field.kind()))
            .unwrap_or_else(|| json!({"type": "string"}));
        let mut parameter = json!({"name": variable, "in": "path", "required": true, "schema": schema});
        if let Some(field) = &field {
            set_text(&mut parameter, "description", self.field_description(field).as_deref());
        }
        parameter
    }

    /// Every scalar leaf of `message` that neither the path nor the body sets,
    /// as a query parameter named by its dotted field path.
    fn query_parameters(
        &mut self,
        message: &MessageDescriptor,
        prefix: &str,
        bound: &BTreeSet<&str>,
        body_field: Option<&str>,
        visiting: &mut Vec<String>,
        parameters: &mut Vec<Value>,
    ) {
        for field in message.fields() {
            let name = format!("{prefix}{}", field.name());
            if bound.contains(name.as_str())
                || (prefix.is_empty() && body_field == Some(field.name()))
                || field.is_map()
            {
                continue;
            }
            let kind = field.kind();
            if let Some(schema) = self.query_schema(&kind) {
                let mut parameter = if field.is_list() {
                    json!({
                        "name": name,
                        "in": "query",
                        "schema": {"type": "array", "items": schema},
                        "style": "form",
                        "explode": true,
                    })
                } else {
                    json!({"name": name, "in": "query", "schema": schema})
                };
                set_text(&mut parameter, "description", self.field_description(&field).as_deref());
                parameters.push(parameter);
            } else if let Kind::Message(nested) = kind {
                // A repeated message and the JSON-valued well-known types (Struct, Value, ...) have
                // no query form; a message already on the way down would never end.
                if field.is_list()
                    || well_known(&nested).is_some()
                    || visiting.len() >= MAX_QUERY_DEPTH
                    || visiting.iter().any(|n| n == nested.full_name())
                {
                    continue;
                }
                visiting.push(nested.full_name().to_string());
                self.query_parameters(&nested, &format!("{name}."), bound, body_field, visiting, parameters);
                visiting.pop();
            }
        }
    }

    fn request_body(&mut self, binding: &MethodBinding, http: &HttpBinding, variables: &[String]) -> Value {
        let input = binding.method.input();
        let (schema, required, mut description) = if http.body == "*" {
            let from_path: BTreeSet<String> =
                variables.iter().filter(|variable| !variable.contains('.')).cloned().collect();
            let required = input.fields().any(|field| !from_path.contains(field.name()));
            if from_path.is_empty() || well_known(&input).is_some() {
                (self.message_reference(&input), required, None)
            } else {
                let names = from_path.iter().map(|name| format!("`{name}`")).collect::<Vec<_>>().join(", ");
                let description = format!("`{}` without {names}, which the path sets.", input.full_name());
                (self.message_schema(&input, &from_path), required, Some(description))
            }
        } else {
            match input.get_field_by_name(&http.body) {
                Some(field) => (self.field_schema(&field), true, None),
                None => (json!({}), false, None),
            }
        };
        let media_type = if binding.method.is_client_streaming() {
            description = Some(format!("Newline-delimited JSON: one `{}` a line.", input.full_name()));
            NDJSON
        } else {
            "application/json"
        };
        let mut body = json!({"required": required, "content": {media_type: {"schema": schema}}});
        set_text(&mut body, "description", description.as_deref());
        body
    }

    fn responses(&mut self, binding: &MethodBinding, http: &HttpBinding) -> Value {
        let output = binding.method.output();
        let field = (!http.response_body.is_empty()).then(|| output.get_field_by_name(&http.response_body)).flatten();
        let (schema, description) = match &field {
            Some(field) => {
                (self.field_schema(field), format!("The `{}` field of `{}`.", field.name(), output.full_name()))
            }
            None => (
                self.message_reference(&output),
                self.comments
                    .of(&output.parent_file(), output.path())
                    .map(summary)
                    .unwrap_or_else(|| format!("A `{}`.", output.full_name())),
            ),
        };
        let media_type = if binding.method.is_server_streaming() { NDJSON } else { "application/json" };
        let mut responses = Map::new();
        responses
            .insert("200".into(), json!({"description": description, "content": {media_type: {"schema": schema}}}));
        for (status, description) in ERROR_RESPONSES {
            responses.insert(
                status.into(),
                json!({
                    "description": description,
                    "content": {
                        "application/json": {"schema": {"$ref": format!("#/components/schemas/{STATUS_SCHEMA}")}},
                    },
                }),
            );
        }
        Value::Object(responses)
    }

    /// An object schema with one property per field, named as in the proto,
    /// except those in `omit`.
    fn message_schema(&mut self, message: &MessageDescriptor, omit: &BTreeSet<String>) -> Value {
        let mut properties = Map::new();
        for field in message.fields() {
            if !omit.contains(field.name()) {
                properties.insert(field.name().to_string(), self.field_schema(&field));
            }
        }
        let mut text: Vec<String> =
            self.comments.of(&message.parent_file(), message.path()).map(String::from).into_iter().collect();
        for oneof in message.oneofs().filter(|oneof| !oneof.is_synthetic()) {
            let members = oneof.fields().map(|field| format!("`{}`", field.name())).collect::<Vec<_>>().join(", ");
            text.push(format!("Oneof `{}`: at most one of {members} is set.", oneof.name()));
        }
        let mut schema = json!({"type": "object", "properties": properties});
        if !text.is_empty() {
            set_text(&mut schema, "description", Some(&text.join("\n\n")));
        }
        schema
    }

    fn enum_schema(&mut self, enumeration: &EnumDescriptor) -> Value {
        let names: Vec<String> = enumeration.values().map(|value| value.name().to_string()).collect();
        let mut text: Vec<String> =
            self.comments.of(&enumeration.parent_file(), enumeration.path()).map(String::from).into_iter().collect();
        let values: Vec<String> = enumeration
            .values()
            .filter_map(|value| {
                let comment = self.comments.of(&value.parent_file(), value.path())?;
                Some(format!("- `{}`: {}", value.name(), comment.split_whitespace().collect::<Vec<_>>().join(" ")))
            })
            .collect();
        if !values.is_empty() {
            text.push(values.join("\n"));
        }
        let mut schema = json!({"type": "string", "enum": names});
        if !text.is_empty() {
            set_text(&mut schema, "description", Some(&text.join("\n\n")));
        }
        schema
    }

    /// A field's schema as a property: its value's, in an array when repeated or
    /// an object when a map, described by its comment.
    fn field_schema(&mut self, field: &FieldDescriptor) -> Value {
        let mut schema = match field.kind() {
            Kind::Message(entry) if field.is_map() => {
                let value = self.value_schema(&entry.map_entry_value_field().kind());
                json!({"type": "object", "additionalProperties": value})
            }
            kind if field.is_list() => json!({"type": "array", "items": self.value_schema(&kind)}),
            kind => self.value_schema(&kind),
        };
        set_text(&mut schema, "description", self.field_description(field).as_deref());
        schema
    }

    /// A field's comment, and the oneof it belongs to.
    fn field_description(&self, field: &FieldDescriptor) -> Option<String> {
        let comment = self.comments.of(&field.parent_file(), field.path()).map(String::from);
        let oneof = field.containing_oneof().filter(|oneof| !oneof.is_synthetic()).map(|oneof| {
            let others: Vec<String> = oneof
                .fields()
                .filter(|other| other.number() != field.number())
                .map(|other| format!("`{}`", other.name()))
                .collect();
            if others.is_empty() {
                format!("Part of oneof `{}`.", oneof.name())
            } else {
                format!("Part of oneof `{}`: not set together with {}.", oneof.name(), others.join(", "))
            }
        });
        match (comment, oneof) {
            (Some(comment), Some(oneof)) => Some(format!("{comment}\n\n{oneof}")),
            (comment, oneof) => comment.or(oneof),
        }
    }

    /// The schema of one value of a field of `kind`.
    fn value_schema(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Double => json!({"type": "number", "format": "double"}),
            Kind::Float => json!({"type": "number", "format": "float"}),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({"type": "integer", "format": "int32"}),
            Kind::Uint32 | Kind::Fixed32 => {
                json!({"type": "integer", "format": "uint32", "minimum": 0, "maximum": u32::MAX})
            }
            // proto3 JSON writes 64-bit integers as strings: a double cannot hold them all.
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({"type": "string", "format": "int64"}),
            Kind::Uint64 | Kind::Fixed64 => json!({"type": "string", "format": "uint64"}),
            Kind::Bool => json!({"type": "boolean"}),
            Kind::String => json!({"type": "string"}),
            Kind::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
            Kind::Enum(enumeration) if enumeration.full_name() == "google.protobuf.NullValue" => {
                json!({"type": "null"})
            }
            Kind::Enum(enumeration) => self.register(Named::Enum(enumeration.clone())),
            Kind::Message(message) => self.message_reference(message),
        }
    }

    /// A well-known type's JSON form, or a reference to the message's component.
    fn message_reference(&mut self, message: &MessageDescriptor) -> Value {
        match well_known(message) {
            Some(WellKnown::Wrapper(inner)) => {
                let mut schema = self.value_schema(&inner);
                // A wrapper is its scalar, or null for "not set".
                if let Some(object) = schema.as_object_mut()
                    && let Some(scalar) = object.remove("type")
                {
                    object.insert("type".into(), json!([scalar, "null"]));
                }
                schema
            }
            Some(WellKnown::Json(schema)) => schema,
            None => self.register(Named::Message(message.clone())),
        }
    }

    /// The schema of a query or path parameter of `kind`, or `None` when
    /// such a value has no text form (messages other than the scalar-like
    /// well-known types).
    fn query_schema(&mut self, kind: &Kind) -> Option<Value> {
        match kind {
            Kind::Message(message) => match well_known(message)? {
                WellKnown::Wrapper(inner) => Some(self.value_schema(&inner)),
                WellKnown::Json(schema) => is_scalar_like(message).then_some(schema),
            },
            kind => Some(self.value_schema(kind)),
        }
    }
}

/// How a well-known type appears in JSON.
enum WellKnown {
    /// A wrapper: its `value` field's scalar, or null.
    Wrapper(Kind),
    /// A fixed schema.
    Json(Value),
}

/// The JSON form of a `google.protobuf` well-known type, or `None` for any other message.
fn well_known(message: &MessageDescriptor) -> Option<WellKnown> {
    let schema = match message.full_name() {
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => {
            json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$", "examples": ["1.5s"]})
        }
        "google.protobuf.FieldMask" => json!({"type": "string", "examples": ["displayName,price.amount"]}),
        "google.protobuf.Struct" => json!({"type": "object"}),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({"type": "array"}),
        "google.protobuf.Empty" => json!({"type": "object"}),
        "google.protobuf.Any" => json!({
            "type": "object",
            "properties": {"@type": {"type": "string"}},
            "required": ["@type"],
        }),
        name if crate::transcode::WRAPPER_TYPES.contains(&name) => {
            return message.get_field_by_name("value").map(|value| WellKnown::Wrapper(value.kind()));
        }
        _ => return None,
    };
    Some(WellKnown::Json(schema))
}

/// Well-known types whose JSON form is one string, so a query parameter can carry them.
fn is_scalar_like(message: &MessageDescriptor) -> bool {
    matches!(
        message.full_name(),
        "google.protobuf.Timestamp" | "google.protobuf.Duration" | "google.protobuf.FieldMask"
    )
}

/// The field a dotted path names, through singular message fields.
fn field_at(message: &MessageDescriptor, path: &str) -> Option<FieldDescriptor> {
    let mut current = message.clone();
    let mut names = path.split('.').peekable();
    while let Some(name) = names.next() {
        let field = current.get_field_by_name(name)?;
        if names.peek().is_none() {
            return Some(field);
        }
        match field.kind() {
            Kind::Message(nested) if !field.is_list() => current = nested,
            _ => return None,
        }
    }
    None
}

/// `google.rpc.Status` as the gateway writes it.
fn status_schema() -> Value {
    json!({
        "type": "object",
        "description": "An error: the gRPC status code, a message for developers, and typed details.",
        "properties": {
            "code": {
                "type": "integer",
                "format": "int32",
                "description": "The gRPC status code, such as 3 for INVALID_ARGUMENT.",
            },
            "message": {"type": "string", "description": "What went wrong, in English, for developers."},
            "details": {
                "type": "array",
                "description": "Typed details, such as `google.rpc.BadRequest`, `google.rpc.ErrorInfo` \
                    and `google.rpc.RetryInfo`.",
                "items": {
                    "type": "object",
                    "properties": {
                        "@type": {
                            "type": "string",
                            "description": "The detail's type URL, such as \
                                `type.googleapis.com/google.rpc.ErrorInfo`.",
                        },
                    },
                    "required": ["@type"],
                    "additionalProperties": true,
                },
            },
        },
    })
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn comments_lose_the_space_after_the_slashes_and_keep_their_paragraphs() {
        assert_eq!(clean_comment(" Reads one.\n\n Then:\n   - indented  \n"), "Reads one.\n\nThen:\n  - indented");
    }

    #[test]
    fn the_summary_is_the_first_sentence_on_one_line() {
        assert_eq!(
            summary("Reads a product with its\ninstructors. Unknown: NOT_FOUND."),
            "Reads a product with its instructors."
        );
        assert_eq!(summary("Lists products.\n\nMore."), "Lists products.");
        assert_eq!(summary("Names `a.b` in a path"), "Names `a.b` in a path");
    }

    #[test]
    fn without_bindings_the_document_has_no_paths_and_only_the_status_schema() {
        let info = ApiInfo { title: "t".into(), version: "v".into() };
        let doc = document(&DescriptorPool::new(), &[], &info);
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["paths"], json!({}));
        let schemas: Vec<&String> = doc["components"]["schemas"].as_object().unwrap().keys().collect();
        assert_eq!(schemas, [STATUS_SCHEMA]);
    }

    #[test]
    fn only_methods_openapi_has_fields_for_are_operations() {
        assert_eq!(openapi_verb("GET").as_deref(), Some("get"));
        assert_eq!(openapi_verb("HEAD").as_deref(), Some("head"));
        assert_eq!(openapi_verb("SEARCH"), None);
    }

    proptest! {
        /// Whatever the comment, its summary is one line that starts its first paragraph.
        #[test]
        fn a_summary_is_one_line_from_the_first_paragraph(comment in "([a-zé.`]{0,8}[ \n\t]{0,3}){0,20}") {
            let summary = summary(&comment);
            prop_assert!(!summary.contains('\n'));
            let first = comment.split("\n\n").next().unwrap().split_whitespace().collect::<Vec<_>>().join(" ");
            prop_assert!(first.starts_with(&summary), "{:?} from {:?}", summary, first);
        }
    }
}
