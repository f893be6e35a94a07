//! One request through a route: route → token → scopes → quota → body →
//! request message → permit → upstream call → response JSON.

use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, StatusCode};
use tonic::metadata::MetadataValue;
use tracing::{Instrument, Span};

use super::authorize::authorize;
use super::limits::{at_capacity, read_body, within_deadline};
use super::trace::{finish_span, server_span};
use super::{Gateway, REQUEST_ID_HEADER, Rpc, SUBJECT_METADATA};
use crate::access_log::AccessNote;
use crate::codec::DynamicCodec;
use crate::router::RouteMatch;
use crate::transcode;

/// Every request that is not one of the fixed paths: routed, traced, measured, then handled.
pub(super) async fn transcode_request(State(gateway): State<Gateway>, request: Request) -> Response {
    let started = Instant::now();
    // A standard method clones without allocating.
    let method = request.method().clone();
    // Routed first, so the span is named after its route from the start
    // (`GET /v1/customers/{customer_id}`): an OpenTelemetry span's name cannot
    // change once its context has been handed on.
    let found = gateway.0.routes.find(method.as_str(), request.uri().path());
    let route = match &found {
        RouteMatch::Found { route, .. } => Some(route.template.text()),
        _ => None,
    };
    let span = server_span(&request, route, gateway.0.config.trust_client_traces == Some(true));
    let mut note = AccessNote::in_span(route.unwrap_or(crate::access_log::UNMATCHED), &span);
    let mut response = handle(&gateway, request, found, &span, &mut note).instrument(span.clone()).await;
    finish_span(&gateway, &span, method.as_str(), route, &response, started);
    response.extensions_mut().insert(note);
    response
}

async fn handle(
    gateway: &Gateway,
    request: Request,
    found: RouteMatch<'_, Rpc>,
    span: &Span,
    note: &mut AccessNote,
) -> Response {
    let inner = &gateway.0;
    let errors = &inner.errors;
    let (parts, body) = request.into_parts();
    let request_id = parts.headers.get(REQUEST_ID_HEADER).cloned();
    if let Some(id) = request_id.as_ref().and_then(|id| id.to_str().ok()) {
        span.record("request.id", id);
    }
    let verb = parts.method.as_str();
    let (route, bindings) = match found {
        RouteMatch::Found { route, bindings } => (route, bindings),
        RouteMatch::BadPathValue(bad) => {
            let mut violations = kit::error::BadRequest::new();
            // A JSON body, query or path value that does not read as the message: its form.
            violations.violation(bad.field, kit::error::ViolationReason::InvalidFormat, bad.reason);
            return errors.response(&violations.into_status());
        }
        RouteMatch::MethodNotAllowed { allowed } => {
            let status = tonic::Status::unimplemented(format!(
                "{verb} is not served on {}; allowed: {}",
                parts.uri.path(),
                allowed.join(", ")
            ));
            let mut response = errors.response_with(StatusCode::METHOD_NOT_ALLOWED, &status);
            if let Ok(allow) = HeaderValue::from_str(&allowed.join(", ")) {
                response.headers_mut().insert(ALLOW, allow);
            }
            return response;
        }
        RouteMatch::NotFound => {
            return errors.response(&tonic::Status::not_found(format!(
                "no route for {verb} {}; every route is described at /openapi.json",
                parts.uri.path()
            )));
        }
    };
    let rpc = &route.value;

    let caller = match authorize(&inner.auth, &parts.headers, &rpc.scopes).await {
        Ok(caller) => caller,
        Err(refusal) => {
            note.subject = refusal.subject();
            return refusal.response(errors);
        }
    };
    note.subject = Some(caller.subject.clone());

    // Before the body is read: a caller over its quota costs no more than a token check.
    if let Err(over) = inner.callers.admit(&caller.subject, &rpc.scopes).await {
        let status = kit::error::throttled(
            format!("{} is over its quota for {}; retry after the delay given", caller.subject, over.scope),
            over.retry_after,
        );
        return errors.response(&status);
    }

    let body = match read_body(inner, &parts.headers, body).await {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };

    let messages = match request_messages(rpc, &bindings, parts.uri.query(), &body) {
        Ok(messages) => messages,
        Err(error) => {
            let mut violations = kit::error::BadRequest::new();
            violations.violation(error.field, kit::error::ViolationReason::InvalidFormat, error.description);
            return errors.response(&violations.into_status());
        }
    };

    // Only now, with the caller known and the request read whole, does it
    // take a permit: nothing that fails or stalls before this holds one.
    let Some(_admitted) = inner.gate.enter().await else {
        return errors.response(&at_capacity());
    };

    let mut metadata = tonic::metadata::MetadataMap::new();
    if let Ok(subject) = MetadataValue::try_from(caller.subject.as_str()) {
        metadata.insert(SUBJECT_METADATA, subject);
    }
    // The service checks the caller itself, with the token the gateway verified.
    if let Some(token) =
        parts.headers.get(AUTHORIZATION).and_then(|value| MetadataValue::try_from(value.as_bytes()).ok())
    {
        metadata.insert(AUTHORIZATION.as_str(), token);
    }
    if let Some(id) = request_id.as_ref().and_then(|id| MetadataValue::try_from(id.as_bytes()).ok()) {
        metadata.insert(REQUEST_ID_HEADER, id);
    }
    let call = call(rpc, messages, metadata, inner.config.request_timeout);
    let reply = match within_deadline(&rpc.upstream.service, inner.config.request_timeout, call).await {
        Ok(reply) => reply,
        Err(status) => return errors.response(&status),
    };
    match transcode::response_json(&reply, &rpc.response_body) {
        Ok(json) => ([(CONTENT_TYPE, "application/json")], json).into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot render the response");
            errors.response(&tonic::Status::internal("cannot render the response"))
        }
    }
}

/// The request message, or for a client-streaming RPC one message per line of
/// newline-delimited JSON (blank lines skipped), each filled from the path too.
fn request_messages(
    rpc: &Rpc,
    bindings: &[crate::template::Binding],
    query: Option<&str>,
    body: &[u8],
) -> Result<Vec<prost_reflect::DynamicMessage>, transcode::TranscodeError> {
    if !rpc.client_streaming {
        return transcode::request_message(&rpc.input, &rpc.body, bindings, query, body).map(|m| vec![m]);
    }
    body.split(|byte| *byte == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(index, line)| {
            transcode::request_message(&rpc.input, &rpc.body, bindings, query, line).map_err(|error| {
                transcode::TranscodeError {
                    field: match error.field.as_str() {
                        "body" => format!("body[line {}]", index + 1),
                        field => format!("body[line {}].{field}", index + 1),
                    },
                    description: error.description,
                }
            })
        })
        .collect()
}

/// Calls the RPC on its upstream: unary, or client-streaming with every message.
async fn call(
    rpc: &Rpc,
    messages: Vec<prost_reflect::DynamicMessage>,
    metadata: tonic::metadata::MetadataMap,
    timeout: Duration,
) -> Result<prost_reflect::DynamicMessage, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(rpc.upstream.channel.clone());
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(format!("{} unavailable: {e}", rpc.upstream.service)))?;
    let codec = DynamicCodec::new(rpc.output.clone());
    let reply = if rpc.client_streaming {
        let mut request = tonic::Request::from_parts(metadata, Default::default(), futures::stream::iter(messages));
        request.set_timeout(timeout);
        grpc.client_streaming(request, rpc.grpc_path.clone(), codec).await?
    } else {
        let Some(message) = messages.into_iter().next() else {
            return Err(tonic::Status::internal("no request message"));
        };
        let mut request = tonic::Request::from_parts(metadata, Default::default(), message);
        request.set_timeout(timeout);
        grpc.unary(request, rpc.grpc_path.clone(), codec).await?
    };
    Ok(reply.into_inner())
}
