//! The Stripe webhook route.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::limits::{at_capacity, read_body, within_deadline};
use super::trace::{finish_span, server_span};
use super::{FULFILLMENT_SERVICE, Gateway, REQUEST_ID_HEADER, STRIPE_WEBHOOK_ROUTE};
use crate::access_log::AccessNote;

/// `POST /v1/webhooks/stripe`: signed by Stripe instead of a bearer token
/// ([`crate::webhooks::stripe`]); traced and measured as every route is.
pub(super) async fn stripe_webhook(State(gateway): State<Gateway>, request: Request) -> Response {
    let started = Instant::now();
    let span = server_span(&request, Some(STRIPE_WEBHOOK_ROUTE), gateway.0.config.trust_client_traces == Some(true));
    let inner = &gateway.0;
    let mut response = async {
        let Some(webhook) = &inner.stripe else {
            return inner.errors.response(&tonic::Status::not_found("no Stripe webhook is configured on this gateway"));
        };
        let (parts, body) = request.into_parts();
        let body = match read_body(inner, &parts.headers, body).await {
            Ok(body) => body,
            Err(refusal) => return refusal,
        };
        let Some(_admitted) = inner.gate.enter().await else {
            return inner.errors.response(&at_capacity());
        };
        let signature = parts.headers.get(crate::webhooks::signature::HEADER).and_then(|v| v.to_str().ok());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| i64::try_from(since.as_secs()).unwrap_or(i64::MAX));
        let request_id = parts.headers.get(REQUEST_ID_HEADER).and_then(|id| id.to_str().ok());
        let timeout = inner.config.request_timeout;
        let answer = webhook.answer(signature, &body, now, timeout, request_id);
        match within_deadline(FULFILLMENT_SERVICE, timeout, answer).await {
            Ok(answer) => axum::Json(answer).into_response(),
            Err(status) => inner.errors.response(&status),
        }
    }
    .instrument(span.clone())
    .await;
    finish_span(&gateway, &span, "POST", Some(STRIPE_WEBHOOK_ROUTE), &response, started);
    response.extensions_mut().insert(AccessNote::in_span(STRIPE_WEBHOOK_ROUTE, &span));
    response
}
