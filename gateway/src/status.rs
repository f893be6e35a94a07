//! gRPC statuses as HTTP responses: the status code by the table grpc-gateway
//! and Envoy share, the body a `google.rpc.Status` in proto3 JSON with its
//! details, and `Retry-After` from a `RetryInfo`.
//!
//! ```
//! use gateway::status::http_status;
//! use http::StatusCode;
//!
//! assert_eq!(http_status(tonic::Code::FailedPrecondition), StatusCode::BAD_REQUEST);
//! assert_eq!(http_status(tonic::Code::ResourceExhausted), StatusCode::TOO_MANY_REQUESTS);
//! ```

use axum::body::Body;
use base64::Engine;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use tonic::Code;

/// The fully qualified name of the error model message.
pub const STATUS_MESSAGE: &str = "google.rpc.Status";

/// The HTTP status for a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // 499 Client Closed Request, as nginx, grpc-gateway and Envoy answer.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Renders statuses as JSON, resolving each detail's type in the mesh's
/// descriptors (which include `google.rpc`'s error details).
#[derive(Clone, Debug)]
pub struct ErrorRenderer {
    status: MessageDescriptor,
}

/// The descriptors lack `google.rpc.Status`.
#[derive(Clone, Debug, thiserror::Error)]
#[error("the descriptors do not define {STATUS_MESSAGE}")]
pub struct NoStatusMessage;

impl ErrorRenderer {
    /// A renderer over `pool`, which must define `google.rpc.Status` and the
    /// detail types to render by name.
    pub fn new(pool: &DescriptorPool) -> Result<Self, NoStatusMessage> {
        pool.get_message_by_name(STATUS_MESSAGE).map(|status| Self { status }).ok_or(NoStatusMessage)
    }

    /// `status` as the `google.rpc.Status` JSON object.
    pub fn json(&self, status: &tonic::Status) -> serde_json::Value {
        let code = status.code() as i32;
        let details = self.details(status);
        serde_json::json!({ "code": code, "message": status.message(), "details": details })
    }

    /// The details of `status`, each as proto3 JSON with its `@type`; a detail
    /// whose type the descriptors lack keeps its bytes, base64-encoded.
    fn details(&self, status: &tonic::Status) -> Vec<serde_json::Value> {
        if status.details().is_empty() {
            return Vec::new();
        }
        let Ok(decoded) = RpcStatus::decode(status.details()) else {
            tracing::debug!("an upstream sent undecodable status details");
            return Vec::new();
        };
        let pool = self.status.parent_pool();
        let options = SerializeOptions::new().use_proto_field_name(true).skip_default_fields(false);
        decoded
            .details
            .into_iter()
            .map(|any| {
                let name = any.type_url.rsplit('/').next().unwrap_or_default();
                pool.get_message_by_name(name)
                    .and_then(|descriptor| DynamicMessage::decode(descriptor, any.value.as_slice()).ok())
                    .and_then(|message| message.serialize_with_options(serde_json::value::Serializer, &options).ok())
                    .map(|mut value| {
                        if let serde_json::Value::Object(fields) = &mut value {
                            fields.insert("@type".into(), serde_json::Value::String(any.type_url.clone()));
                        }
                        value
                    })
                    .unwrap_or_else(|| {
                        serde_json::json!({
                            "@type": any.type_url,
                            "value": base64::engine::general_purpose::STANDARD.encode(&any.value),
                        })
                    })
            })
            .collect()
    }

    /// `status` as an HTTP response with its mapped status code.
    pub fn response(&self, status: &tonic::Status) -> Response<Body> {
        self.response_with(http_status(status.code()), status)
    }

    /// `status` as an HTTP response with the given status code (413, 405: HTTP
    /// answers no gRPC code maps to).
    pub fn response_with(&self, http: StatusCode, status: &tonic::Status) -> Response<Body> {
        let body = serde_json::to_vec(&self.json(status)).unwrap_or_default();
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = http;
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(delay) = kit::error::retry_after(status) {
            // Whole seconds, rounded up: "retry in 0 s" would invite a stampede.
            let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

/// The wire form of `google.rpc.Status`, to reach the `Any` details' type URLs.
#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn renderer() -> ErrorRenderer {
        ErrorRenderer::new(&proto::descriptor_pool().unwrap()).unwrap()
    }

    #[test]
    fn every_code_maps_to_the_shared_table() {
        let table = [
            (Code::Ok, 200),
            (Code::Cancelled, 499),
            (Code::Unknown, 500),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 400),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
            (Code::Unauthenticated, 401),
        ];
        for (code, expected) in table {
            assert_eq!(http_status(code).as_u16(), expected, "{code:?}");
        }
    }

    #[test]
    fn bad_request_details_render_as_json_with_their_type() {
        let mut bad = kit::error::BadRequest::new();
        bad.violation("order_number", kit::error::ViolationReason::Required, "must not be empty");
        let json = renderer().json(&bad.into_status());
        assert_eq!(json["code"], 3);
        assert_eq!(json["details"][0]["@type"], "type.googleapis.com/google.rpc.BadRequest");
        assert_eq!(json["details"][0]["field_violations"][0]["field"], "order_number");
        assert_eq!(json["details"][0]["field_violations"][0]["description"], "must not be empty");
        assert_eq!(json["details"][0]["field_violations"][0]["reason"], "REQUIRED");
    }

    #[test]
    fn retry_info_becomes_retry_after_rounded_up() {
        let status = kit::error::throttled("slow down", Duration::from_millis(1500));
        let response = renderer().response(&status);
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[RETRY_AFTER], "2");
        let json = renderer().json(&status);
        assert_eq!(json["details"][0]["@type"], "type.googleapis.com/google.rpc.RetryInfo");
        assert_eq!(json["details"][0]["retry_delay"], "1.500s");
    }

    #[test]
    fn error_info_metadata_and_unknown_detail_types_survive() {
        let status = kit::error::with_reason(Code::AlreadyExists, "taken", "LMS_USER_TAKEN", [("owner", "c-1")]);
        let json = renderer().json(&status);
        assert_eq!(json["details"][0]["reason"], "LMS_USER_TAKEN");
        assert_eq!(json["details"][0]["metadata"]["owner"], "c-1");

        let unknown = RpcStatus {
            code: 13,
            message: "m".into(),
            details: vec![prost_types::Any { type_url: "type.googleapis.com/acme.Secret".into(), value: vec![1, 2] }],
        };
        let status = tonic::Status::with_details(Code::Internal, "m", unknown.encode_to_vec().into());
        let json = renderer().json(&status);
        assert_eq!(json["details"][0]["@type"], "type.googleapis.com/acme.Secret");
        assert_eq!(json["details"][0]["value"], "AQI=");
    }
}
