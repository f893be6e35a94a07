//! The axum app: the fixed paths, every binding, and the layers around them
//! (CORS, request ids, the access log, `Connection: close` while draining).

use super::health::{healthz, readyz};
use super::pipeline::transcode_request;
use super::webhook::stripe_webhook;
use super::{CorsConfig, Gateway, GatewayError, REQUEST_ID_HEADER, STRIPE_WEBHOOK_ROUTE};
use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header::{ALLOW, AUTHORIZATION, CONNECTION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, StatusCode};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};

impl Gateway {
    /// The axum app: `/healthz`, `/readyz`, `/openapi.json`, and every
    /// binding. Metrics are not here: they are on the admin port
    /// (`kit::metrics::serve_admin`), never on the public one.
    pub fn router(&self) -> Result<Router, GatewayError> {
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/openapi.json", get(openapi_json))
            .route(STRIPE_WEBHOOK_ROUTE, axum::routing::post(stripe_webhook))
            .fallback(transcode_request)
            .method_not_allowed_fallback(fixed_path_method_not_allowed)
            .with_state(self.clone());
        let app = match cors(&self.0.config.cors)? {
            Some(cors) => app.layer(cors),
            None => app,
        };
        let gateway = self.clone();
        let close_while_draining = move |mut response: Response| {
            // While draining, each answer closes its connection: a client (or
            // a proxy's upstream pool, or a conntrack-pinned ClusterIP
            // connection) that would keep sending on a kept-alive connection
            // opens a new one instead, which the load balancer sends to a
            // ready pod once it has seen our 503. A kept-alive connection the
            // gateway closed itself later, when its listener closes, could
            // race a request the client sends at that moment; one closed right
            // after an answer that says so cannot.
            if gateway.draining() {
                response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            }
            response
        };
        // Outermost: every answer, even a CORS refusal, carries the request id,
        // which the access log (inside it) writes down.
        Ok(app
            .layer(axum::middleware::from_fn(crate::access_log::log_access))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(SetRequestIdLayer::x_request_id(RandomRequestId))
            .layer(tower::util::MapRequestLayer::new(drop_unusable_request_id))
            .layer(tower::util::MapResponseLayer::new(close_while_draining)))
    }
}

/// The longest client-sent request id kept; services log it and pass it on.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Drops a client's `x-request-id` unless it is short printable ASCII, so a
/// fresh one is made in its place.
fn drop_unusable_request_id<B>(mut request: http::Request<B>) -> http::Request<B> {
    let usable = request.headers().get(REQUEST_ID_HEADER).is_none_or(|id| {
        id.len() <= MAX_REQUEST_ID_LEN && !id.is_empty() && id.as_bytes().iter().all(u8::is_ascii_graphic)
    });
    if !usable {
        request.headers_mut().remove(REQUEST_ID_HEADER);
    }
    request
}

/// Request ids: random (v4) UUIDs from the thread's generator, which makes no
/// system call per request (tower-http's `MakeRequestUuid` asks the OS each time).
#[derive(Clone, Copy, Debug)]
struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _request: &http::Request<B>) -> Option<RequestId> {
        let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        let mut text = uuid::Uuid::encode_buffer();
        HeaderValue::from_str(id.hyphenated().encode_lower(&mut text)).ok().map(RequestId::new)
    }
}

fn cors(config: &CorsConfig) -> Result<Option<CorsLayer>, GatewayError> {
    if config.allowed_origins.is_empty() {
        return Ok(None);
    }
    let origins = if config.allowed_origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        let origins = config
            .allowed_origins
            .iter()
            .map(|origin| HeaderValue::from_str(origin).map_err(|_| GatewayError::CorsOrigin(origin.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(origins)
    };
    let request_id = http::HeaderName::from_static(REQUEST_ID_HEADER);
    Ok(Some(
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods(tower_http::cors::Any)
            .allow_headers([AUTHORIZATION, CONTENT_TYPE, request_id.clone()])
            .expose_headers([request_id, http::header::RETRY_AFTER, WWW_AUTHENTICATE])
            .max_age(config.max_age),
    ))
}

/// Another method on `/healthz`, `/readyz`, `/openapi.json` or a webhook:
/// 405 as a `google.rpc.Status`, like every other refusal.
async fn fixed_path_method_not_allowed(State(gateway): State<Gateway>, request: Request) -> Response {
    let allowed = if request.uri().path() == STRIPE_WEBHOOK_ROUTE { "POST" } else { "GET,HEAD" };
    let status = tonic::Status::unimplemented(format!("{} is only served to {allowed}", request.uri().path()));
    let mut response = gateway.0.errors.response_with(StatusCode::METHOD_NOT_ALLOWED, &status);
    response.headers_mut().insert(ALLOW, HeaderValue::from_static(allowed));
    response
}

async fn openapi_json(State(gateway): State<Gateway>) -> Response {
    ([(CONTENT_TYPE, "application/json")], gateway.0.openapi.clone()).into_response()
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_made_here_are_distinct_random_uuids_in_lower_case() {
        let request = http::Request::new(());
        let mut make = RandomRequestId;
        let ids: Vec<String> = (0..1000)
            .map(|_| make.make_request_id(&request).unwrap().header_value().to_str().unwrap().to_string())
            .collect();
        for id in &ids {
            let uuid = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(uuid.get_version(), Some(uuid::Version::Random), "{id}");
            assert_eq!(id, &uuid.hyphenated().to_string());
        }
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }
}
