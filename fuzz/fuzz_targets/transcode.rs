//! REST/JSON ↔ protobuf transcoding, as the gateway does it for one request.
//!
//! Input: four selector bytes, then up to four sections split by 0xFF bytes
//! (never part of UTF-8 text, so seeds stay readable):
//!
//! ```text
//! [route] [body rule] [response rule] [response type] path 0xFF query 0xFF body 0xFF response-protobuf
//! ```
//!
//! - route: one of the mesh's http bindings (every RPC's rule and additional
//!   bindings); a path as sent picks the first binding from there on that
//!   matches it, as the router would, so seeds do not depend on the order;
//! - body rule: mostly the binding's own, sometimes `""`, `"*"` or any top-level
//!   field of the request message (every one `check_rule` accepts);
//! - path: starting with `/` (or `VERB /`), the request path as sent;
//!   otherwise the path variables' values, one per line, percent-encoded into
//!   the template;
//! - query: absent without its 0xFF, else the query string as sent;
//! - body: the request body (NDJSON for client-streaming RPCs, as the server splits it);
//! - response: bytes decoded as the RPC's response (or any message of the pool)
//!   and rendered with `response_json`, the whole message or one field.
//!
//! The request message, when it builds, is rendered back with `response_json` too.
#![no_main]

use std::sync::LazyLock;

use gateway::binding::HttpBinding;
use gateway::template::{Binding, PathTemplate};
use gateway::transcode::{request_message, response_json};
use libfuzzer_sys::fuzz_target;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor};

/// What a client leaves unencoded in a path segment (`:` and `+` as course run keys carry them).
const CLIENT_KEEPS: &AsciiSet =
    &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b':').remove(b'+');

/// Splits the input's sections; never inside UTF-8 text.
const SEPARATOR: u8 = 0xFF;

struct Route {
    method: MethodDescriptor,
    http: HttpBinding,
    template: PathTemplate,
}

struct Mesh {
    routes: Vec<Route>,
    messages: Vec<MessageDescriptor>,
}

static MESH: LazyLock<Mesh> = LazyLock::new(|| {
    let pool: DescriptorPool = proto::descriptor_pool().expect("the mesh's descriptors load");
    let bindings = gateway::binding::method_bindings(&pool).expect("the mesh's http rules are valid");
    let routes = bindings
        .iter()
        .flat_map(|binding| {
            binding.http.iter().map(|http| Route {
                method: binding.method.clone(),
                http: http.clone(),
                template: PathTemplate::parse(&http.path).expect("the mesh's templates parse"),
            })
        })
        .collect();
    Mesh { routes, messages: pool.all_messages().collect() }
});

fuzz_target!(|data: &[u8]| {
    let mesh = &*MESH;
    let [route, body_rule, response_rule, response_type, rest @ ..] = data else { return };
    let mut sections = rest.splitn(4, |&b| b == SEPARATOR);
    let path_section = String::from_utf8_lossy(sections.next().unwrap_or_default());
    let query = sections.next().map(String::from_utf8_lossy);
    let body = sections.next().unwrap_or_default();
    let response = sections.next().unwrap_or_default();

    let (route, bindings) = route_and_bindings(&mesh.routes, usize::from(*route), &path_section);
    let input = route.method.input();
    let output = route.method.output();
    let body_rule = rule(*body_rule, &route.http.body, &input);
    if let Some(bindings) = bindings {
        let query = query.as_deref();
        if route.method.is_client_streaming() {
            // As the server reads a client stream: one message per non-blank line.
            for line in body.split(|&b| b == b'\n').filter(|line| !line.iter().all(u8::is_ascii_whitespace)) {
                request(&input, &body_rule, &bindings, query, line);
            }
        } else {
            request(&input, &body_rule, &bindings, query, body);
        }
    }

    // Mostly the RPC's own response type; sometimes any message, as for error details.
    let decodes = if response_type % 2 == 0 {
        output
    } else {
        mesh.messages[usize::from(response_type / 2) % mesh.messages.len()].clone()
    };
    let response_body = rule(*response_rule, &route.http.response_body, &decodes);
    if let Ok(message) = DynamicMessage::decode(decodes, response) {
        let _ = response_json(&message, &response_body);
        let _ = response_json(&message, "");
    }
});

fn request(input: &MessageDescriptor, body_rule: &str, bindings: &[Binding], query: Option<&str>, body: &[u8]) {
    if let Ok(message) = request_message(input, body_rule, bindings, query, body) {
        let _ = response_json(&message, "");
    }
}

/// The binding's own rule most of the time; else `""`, `"*"` or a top-level field.
fn rule(selector: u8, own: &str, message: &MessageDescriptor) -> String {
    if selector < 128 {
        return own.to_owned();
    }
    let fields: Vec<String> = message.fields().map(|field| field.name().to_owned()).collect();
    match usize::from(selector - 128) % (fields.len() + 2) {
        0 => String::new(),
        1 => "*".to_owned(),
        n => fields[n - 2].clone(),
    }
}

/// The route and its path variables' values. A path as sent (starting with
/// `/` or `VERB /`) is matched against the routes from `start` on; without a match the
/// route at `start` serves, with no values (the server answers 404). Otherwise
/// the values, one per line, are rendered into the route's template and
/// matched back, or used directly when the rendered path does not match (a
/// value may hold what a path cannot). None when a value is invalid (400).
fn route_and_bindings<'r>(routes: &'r [Route], start: usize, section: &str) -> (&'r Route, Option<Vec<Binding>>) {
    let first = &routes[start % routes.len()];
    // `POST /v1/purchases`: the verb narrows the routes, as in the router.
    let (verb, path) = match section.split_once(' ') {
        Some((verb, path)) if path.starts_with('/') => (Some(verb), path),
        _ => (None, section),
    };
    if path.starts_with('/') {
        let found = (0..routes.len()).map(|i| &routes[(start + i) % routes.len()]).find_map(|route| {
            if verb.is_some_and(|verb| verb != route.http.verb) {
                return None;
            }
            let matched = route.template.matches(path)?;
            Some((route, matched.ok()))
        });
        return found.unwrap_or((first, None));
    }
    let values: Vec<&str> = section.split('\n').collect();
    let path = render(&first.template.openapi_path(), &values);
    let bindings = match first.template.matches(&path) {
        Some(Ok(bindings)) => Some(bindings),
        Some(Err(_)) => None,
        None => Some(
            first
                .template
                .variables()
                .iter()
                .enumerate()
                .map(|(i, field)| Binding {
                    field: (*field).to_owned(),
                    value: values.get(i).copied().unwrap_or_default().to_owned(),
                })
                .collect(),
        ),
    };
    (first, bindings)
}

/// The OpenAPI path with each `{variable}` replaced by the next value, encoded.
fn render(openapi_path: &str, values: &[&str]) -> String {
    let mut path = String::with_capacity(openapi_path.len() + 32);
    let mut values = values.iter();
    let mut rest = openapi_path;
    while let Some(open) = rest.find('{') {
        path.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            path.push_str(&rest[open..]);
            return path;
        };
        let value = values.next().copied().unwrap_or("x");
        path.extend(utf8_percent_encode(value, CLIENT_KEEPS));
        rest = &rest[open + close + 1..];
    }
    path.push_str(rest);
    path
}
