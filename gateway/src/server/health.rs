//! `/healthz` (the serving port's readiness, 503 while draining) and
//! `/readyz` (every upstream's health).

use std::collections::BTreeMap;
use std::time::Duration;

use super::Gateway;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// `ok`; from the moment the gateway is asked to stop, 503 (UNAVAILABLE as a
/// `google.rpc.Status`), while it keeps serving every request for its
/// `shutdown_grace`: the serving port's readiness.
pub(super) async fn healthz(State(gateway): State<Gateway>) -> Response {
    if gateway.draining() {
        return gateway.0.errors.response(&tonic::Status::unavailable("the gateway is shutting down"));
    }
    "ok".into_response()
}

/// 200 when every upstream answers SERVING to a health check of its service,
/// else 503; the body lists each upstream's answer. 503 without asking them
/// once the gateway is shutting down.
pub(super) async fn readyz(State(gateway): State<Gateway>) -> Response {
    if gateway.draining() {
        let body = serde_json::json!({ "ready": false, "shutting_down": true });
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    let checks = gateway.0.upstreams.iter().map(|upstream| async move {
        let mut client = HealthClient::new(upstream.channel.clone());
        let check = client.check(HealthCheckRequest { service: upstream.service.clone() });
        let answer = match tokio::time::timeout(Duration::from_secs(2), check).await {
            Ok(Ok(answer)) => ServingStatus::try_from(answer.into_inner().status)
                .map(|status| status.as_str_name().to_string())
                .unwrap_or_else(|_| "UNKNOWN".into()),
            Ok(Err(status)) => format!("{:?}: {}", status.code(), status.message()),
            Err(_) => "no answer in 2 s".into(),
        };
        (upstream.service.clone(), answer)
    });
    let answers: BTreeMap<String, String> = futures::future::join_all(checks).await.into_iter().collect();
    let ready = answers.values().all(|answer| answer == "SERVING");
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({ "ready": ready, "upstreams": answers });
    (status, axum::Json(body)).into_response()
}
