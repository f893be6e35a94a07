//! The gateway's HTTP server: every `google.api.http` binding routed to its
//! RPC, behind authentication, limits, tracing and metrics.
//!
//! A request goes: headers (read within `header_read_timeout`) → route →
//! token → scopes → caller's quota ([`crate::callers`]) → body (size limit,
//! read within `body_read_timeout`) →
//! request message → concurrency gate → upstream call (deadline) → response
//! JSON. Every refusal on the way is a `google.rpc.Status` JSON body
//! ([`crate::status`]), and a refused request never reaches a service.
//!
//! Only a request that is authenticated, authorized and read whole takes one
//! of the `max_concurrent_requests` permits: a flood of bad tokens, or a
//! client trickling its headers or body, holds none of them. The server
//! speaks HTTP/1.1 ([`serve`]); a connection idle or sending its headers for
//! longer than `header_read_timeout` is closed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http::header::{ALLOW, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use opentelemetry::global;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_http::HeaderExtractor;
use prost_reflect::{DescriptorPool, MessageDescriptor};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::access_log::AccessNote;
use crate::binding::{InvalidBindings, method_bindings};
use crate::callers::{CallerLimits, CallerQuotasConfig};
use crate::codec::DynamicCodec;
use crate::metrics::HttpMetrics;
use crate::openapi::{self, ApiInfo};
use crate::router::{Route, RouteConflicts, RouteMatch, RouteTable};
use crate::status::{ErrorRenderer, NoStatusMessage};
use crate::template::{PathTemplate, TemplateError};
use crate::transcode;
use crate::webhooks::WebhooksConfig;
use crate::webhooks::stripe::{StripeSetupError, StripeWebhook};
use kit::auth::{AuthConfig, AuthSetupError, Authenticator, Caller};

/// The metadata key carrying the authenticated caller's token subject to the service.
pub const SUBJECT_METADATA: &str = kit::access::SUBJECT_METADATA;
/// The header (and metadata key) carrying the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The route of Stripe's webhook ([`crate::webhooks::stripe`]).
pub const STRIPE_WEBHOOK_ROUTE: &str = "/v1/webhooks/stripe";
/// The service the webhooks call.
const FULFILLMENT_SERVICE: &str = "commerce.fulfillment.v1.FulfillmentService";

/// The gateway's settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    /// Where the HTTP server listens.
    pub listen: SocketAddr,
    /// Each gRPC service's address, by full service name
    /// (`commerce.fulfillment.v1.FulfillmentService`): `http://host:port`, or
    /// `dns:///host:port` to balance across every address a (headless) name resolves to.
    pub upstreams: BTreeMap<String, String>,
    /// Token verification: the mesh's `[auth]`, which every service shares
    /// (the services verify the tokens the gateway forwards), so not a key
    /// of the gateway's own.
    #[serde(skip)]
    pub auth: AuthConfig,
    /// What the gateway presents on calls of its own (webhooks); on a
    /// caller's request it forwards the caller's token instead.
    #[serde(skip)]
    pub identity: kit::credential::Credential,
    /// The longest a request may take; passed on as the gRPC deadline.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The largest request body accepted; larger ones are answered 413.
    pub max_body_bytes: usize,
    /// Requests in flight at once; more wait up to `queue_timeout`, then get 503.
    pub max_concurrent_requests: usize,
    /// How long a request may wait for a slot under `max_concurrent_requests`.
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
    /// How long a client may take to send a request's headers, and how long
    /// a kept-alive connection may sit idle before its next request; then the
    /// connection is closed. Zero: no limit.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request's body; then it is
    /// answered 408 and the connection closed. Zero: no limit.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Cross-origin access for browsers.
    pub cors: CorsConfig,
    /// Signed inbound events (Stripe's refunds).
    pub webhooks: WebhooksConfig,
    /// Per-caller rate limits ([`crate::callers`]): by token subject and
    /// scope; none unless configured.
    pub caller_quotas: CallerQuotasConfig,
    /// Where callers' quotas are kept cluster-wide: the mesh's `redis_url`,
    /// so not a key of the gateway's own. Unset: in this process.
    #[serde(skip)]
    pub redis_url: Option<String>,
    /// Continue a caller's `traceparent` (its trace id and sampling
    /// decision) instead of starting a trace of the gateway's own linked to
    /// it. Off: callers are the internet, and one that could pick trace ids
    /// or switch sampling off would steer the whole mesh's traces. On only
    /// when every caller is trusted (a proxy of yours that starts the trace).
    /// Unset: off under `serve gateway`, on under `up` (a laptop).
    pub trust_client_traces: Option<bool>,
    /// Once asked to stop: how long the gateway keeps accepting and serving
    /// while `/healthz` answers 503, so load balancers take it out before its
    /// listener closes. The mesh's `serve.shutdown_grace`, as for every
    /// component, so not a key of the gateway's own.
    #[serde(skip)]
    pub shutdown_grace: Duration,
    /// Then, with the listener closed: the longest wait for requests in
    /// flight; connections still open after it are closed. The mesh's
    /// `serve.drain_timeout`.
    #[serde(skip)]
    pub drain_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            upstreams: BTreeMap::new(),
            auth: AuthConfig::default(),
            identity: kit::credential::Credential::none(),
            request_timeout: Duration::from_secs(30),
            max_body_bytes: 1024 * 1024,
            max_concurrent_requests: 1024,
            queue_timeout: Duration::from_millis(500),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(15),
            cors: CorsConfig::default(),
            webhooks: WebhooksConfig::default(),
            caller_quotas: CallerQuotasConfig::default(),
            redis_url: None,
            trust_client_traces: None,
            shutdown_grace: Duration::ZERO,
            drain_timeout: Duration::from_secs(4),
        }
    }
}

/// Which browser origins may call the gateway. Empty (the default): no CORS
/// headers at all, so browsers refuse cross-origin calls.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct CorsConfig {
    /// Origins such as `https://admin.example.com`; `*` allows any.
    pub allowed_origins: Vec<String>,
    /// How long browsers may cache a preflight answer.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

/// Why the gateway cannot start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The embedded descriptors do not decode.
    #[error("cannot read the mesh's descriptors: {0}")]
    Descriptors(#[from] prost_reflect::DescriptorError),
    /// Some RPC lacks an http rule or an access rule.
    #[error("{0}")]
    Bindings(#[from] InvalidBindings),
    /// A path template does not parse.
    #[error("{method}: {source}")]
    Template {
        /// The RPC.
        method: String,
        /// The parse error.
        source: TemplateError,
    },
    /// A rule does not fit its RPC's messages.
    #[error("{method}: {reason}")]
    Rule {
        /// The RPC.
        method: String,
        /// What does not fit.
        reason: String,
    },
    /// Two rules would match the same request.
    #[error("{0}")]
    Conflicts(#[from] RouteConflicts),
    /// A service has RPCs to serve but no upstream address.
    #[error("no upstream address for {service}: set gateway.upstreams.\"{service}\"")]
    MissingUpstream {
        /// The service's full name.
        service: String,
    },
    /// An upstream address is invalid.
    #[error("upstream of {service}: {source}")]
    Upstream {
        /// The service's full name.
        service: String,
        /// Why.
        source: kit::client::ClientError,
    },
    /// The descriptors lack the error model.
    #[error("{0}")]
    ErrorModel(#[from] NoStatusMessage),
    /// Token verification cannot be set up.
    #[error("authentication: {0}")]
    Auth(#[from] AuthSetupError),
    /// A CORS origin is not a valid header value.
    #[error("cors.allowed_origins: {0:?} is not a valid origin")]
    CorsOrigin(String),
    /// A webhook cannot be set up.
    #[error("{0}")]
    Webhook(#[from] StripeSetupError),
    /// A webhook is configured, but the service it calls is not served.
    #[error("webhooks.stripe has signing secrets, but no route leads to {FULFILLMENT_SERVICE}")]
    WebhookWithoutService,
    /// The callers' quota store cannot be used (a malformed Redis URL).
    #[error("caller_quotas: {0}")]
    CallerQuotas(#[from] kit::throttle::ThrottleError),
    /// The server failed.
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
}

/// One RPC as a route leads to it.
#[derive(Debug)]
struct Rpc {
    /// `/package.Service/Method`.
    grpc_path: PathAndQuery,
    output: MessageDescriptor,
    input: MessageDescriptor,
    body: String,
    response_body: String,
    scopes: Vec<String>,
    upstream: Arc<Upstream>,
    /// The request is newline-delimited JSON, one message a line.
    client_streaming: bool,
}

/// One gRPC service's channel.
#[derive(Debug)]
struct Upstream {
    service: String,
    channel: kit::client::TracedChannel,
}

/// The gateway, built from descriptors and configuration: serve it with
/// [`Gateway::router`] or [`serve`].
#[derive(Clone)]
pub struct Gateway(Arc<Inner>);

struct Inner {
    routes: RouteTable<Rpc>,
    upstreams: Vec<Arc<Upstream>>,
    auth: Authenticator,
    errors: ErrorRenderer,
    openapi: Bytes,
    gate: kit::throttle::ConcurrencyGate,
    metrics: HttpMetrics,
    callers: CallerLimits,
    stripe: Option<StripeWebhook>,
    config: Config,
    /// Set once [`serve`] is asked to stop: `/healthz` answers 503 and every
    /// answer carries `Connection: close`.
    draining: AtomicBool,
}

impl Gateway {
    /// Routes every binding in `pool`'s `commerce.*` services. Fails when an
    /// RPC lacks a rule or an access option, a rule does not fit its messages,
    /// two rules would match the same request, or a service has no upstream.
    pub async fn new(
        pool: &DescriptorPool,
        config: Config,
        metrics: &kit::metrics::Metrics,
    ) -> Result<Self, GatewayError> {
        let bindings = method_bindings(pool)?;
        let mut upstreams: BTreeMap<String, Arc<Upstream>> = BTreeMap::new();
        let mut routes = Vec::new();
        for binding in &bindings {
            let method = &binding.method;
            let service = method.parent_service().full_name().to_string();
            let upstream = match upstreams.get(&service) {
                Some(upstream) => upstream.clone(),
                None => {
                    let address = config
                        .upstreams
                        .get(&service)
                        .ok_or_else(|| GatewayError::MissingUpstream { service: service.clone() })?;
                    let channel = kit::client::channel_from("gateway", address, config.identity.clone())
                        .map_err(|source| GatewayError::Upstream { service: service.clone(), source })?;
                    let upstream = Arc::new(Upstream { service: service.clone(), channel });
                    upstreams.insert(service.clone(), upstream.clone());
                    upstream
                }
            };
            if method.is_server_streaming() {
                // A stream of answers has no single JSON body to give; such an
                // RPC is for gRPC clients.
                return Err(GatewayError::Rule {
                    method: method.full_name().into(),
                    reason: "server-streaming RPCs cannot be served over REST; remove its google.api.http rule".into(),
                });
            }
            let grpc_path = format!("/{service}/{}", method.name())
                .parse::<PathAndQuery>()
                .map_err(|e| GatewayError::Rule { method: method.full_name().into(), reason: e.to_string() })?;
            for http in &binding.http {
                let template = PathTemplate::parse(&http.path)
                    .map_err(|source| GatewayError::Template { method: method.full_name().into(), source })?;
                transcode::check_rule(
                    &method.input(),
                    &method.output(),
                    &http.body,
                    &template.variables(),
                    &http.response_body,
                )
                .map_err(|reason| GatewayError::Rule { method: method.full_name().into(), reason })?;
                routes.push(Route {
                    verb: http.verb.clone(),
                    label: format!("{} ({} {})", method.full_name(), http.verb, http.path),
                    template,
                    value: Rpc {
                        grpc_path: grpc_path.clone(),
                        input: method.input(),
                        output: method.output(),
                        body: http.body.clone(),
                        response_body: http.response_body.clone(),
                        scopes: binding.scopes.clone(),
                        upstream: upstream.clone(),
                        client_streaming: method.is_client_streaming(),
                    },
                });
            }
        }
        let routes = RouteTable::new(routes)?;
        // The error details' types: from the given descriptors when they have
        // them, else from the mesh's own, which always do.
        let errors = match ErrorRenderer::new(pool) {
            Ok(errors) => errors,
            Err(_) => ErrorRenderer::new(&proto::descriptor_pool()?)?,
        };
        let info = ApiInfo { title: "commerce-mesh".into(), version: env!("CARGO_PKG_VERSION").into() };
        let mut document = openapi::document(pool, &bindings, &info);
        if upstreams.contains_key(FULFILLMENT_SERVICE) {
            openapi::add_stripe_webhook(&mut document, STRIPE_WEBHOOK_ROUTE);
        }
        let openapi = serde_json::to_vec_pretty(&document).unwrap_or_default();
        let auth = Authenticator::new(&config.auth).await?;
        let stripe = match upstreams.get(FULFILLMENT_SERVICE) {
            Some(fulfillment) => StripeWebhook::new(&config.webhooks.stripe, fulfillment.channel.clone())?,
            None if !config.webhooks.stripe.secrets()?.is_empty() => return Err(GatewayError::WebhookWithoutService),
            None => None,
        };
        Ok(Self(Arc::new(Inner {
            routes,
            upstreams: upstreams.into_values().collect(),
            auth,
            errors,
            openapi: openapi.into(),
            gate: kit::throttle::ConcurrencyGate::new(config.max_concurrent_requests.max(1), config.queue_timeout),
            metrics: HttpMetrics::register(metrics),
            callers: CallerLimits::new(config.caller_quotas.clone(), config.redis_url.as_deref(), metrics)?,
            stripe,
            config,
            draining: AtomicBool::new(false),
        })))
    }

    /// How many REST routes are served.
    pub fn route_count(&self) -> usize {
        self.0.routes.routes().len()
    }

    /// Whether [`serve`] has been asked to stop (and is in its grace or drain).
    pub fn draining(&self) -> bool {
        self.0.draining.load(Ordering::Relaxed)
    }

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

/// Serves `gateway` on `listener` over HTTP/1.1 until `shutdown` is
/// cancelled, then drains, as `kit::serve` does for the services:
///
/// 1. `/healthz` answers 503 and every answer carries `Connection: close`,
///    while the gateway keeps accepting and serving everything for
///    `shutdown_grace`, so load balancers take it out first;
/// 2. the listener closes: connections the kernel had completed are
///    accepted and served first, so none is reset unanswered;
/// 3. requests in flight finish, for up to `drain_timeout`; connections
///    kept alive from before the shutdown close once idle (hyper's graceful
///    shutdown), those opened during the grace after their one answer; what is
///    still open after `drain_timeout` is closed.
///
/// Not `axum::serve`: it has no header-read timeout, so a client trickling
/// its headers (or idling between requests) would hold its connection for
/// ever. Here each connection gets `header_read_timeout` for each request's
/// headers, counted from the end of the previous answer, so an idle
/// kept-alive connection is closed too; the body's own timeout is the
/// handler's. HTTP/2 is left to the ingress in front (it has no header-read
/// timeout in hyper).
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: kit::shutdown::Shutdown,
) -> Result<(), GatewayError> {
    let address = listener.local_addr()?;
    let app = gateway.router()?;
    let config = &gateway.0.config;
    let mut http = hyper::server::conn::http1::Builder::new();
    let header_read_timeout = Some(config.header_read_timeout).filter(|timeout| !timeout.is_zero());
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_read_timeout);
    let (open, mut all_closed) = tokio::sync::mpsc::channel(1);
    let connections = Connections {
        http,
        app,
        kept_alive: hyper_util::server::graceful::GracefulShutdown::new(),
        open,
        cut_off: kit::shutdown::Shutdown::new(),
    };
    tracing::info!(%address, routes = gateway.route_count(), "gateway listening");
    accept_until(&listener, shutdown.cancelled(), &connections, false).await;

    gateway.0.draining.store(true, Ordering::Relaxed);
    let grace = config.shutdown_grace;
    tracing::info!(?grace, "shutting down: /healthz answers 503; serving every request through the grace");
    accept_until(&listener, tokio::time::sleep(grace), &connections, true).await;
    // What the kernel accepted already is served, not reset by the close.
    match listener.into_std() {
        Ok(listener) => {
            let mut failures = 0u32;
            loop {
                match listener.accept() {
                    Ok((stream, _)) => {
                        match stream.set_nonblocking(true).and_then(|()| tokio::net::TcpStream::from_std(stream)) {
                            Ok(stream) => connections.serve(stream, true),
                            Err(error) => tracing::warn!(%error, "cannot serve a connection accepted at the close"),
                        }
                    }
                    // The queue is empty (the listener is non-blocking).
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                    // One connection aborted, or no descriptor for it: the others queued
                    // behind it still count, but a failure that persists ends the loop.
                    Err(error) => {
                        tracing::warn!(%error, "cannot accept a connection at the close");
                        failures += 1;
                        if failures >= MAX_CLOSING_ACCEPT_FAILURES {
                            break;
                        }
                    }
                }
            }
        }
        Err(error) => tracing::warn!(%error, "cannot take the last connections off the listener"),
    }
    let drain_timeout = config.drain_timeout;
    tracing::info!(?drain_timeout, "listener closed; draining the requests in flight");

    let Connections { kept_alive, open, cut_off, .. } = connections;
    drop(open);
    // Each connection task holds a sender: `recv` answers None once all have ended.
    let drained = async {
        tokio::join!(kept_alive.shutdown(), all_closed.recv());
    };
    if tokio::time::timeout(drain_timeout, drained).await.is_err() {
        tracing::warn!(?drain_timeout, "requests still in flight after the drain timeout; closing them");
        cut_off.cancel();
    }
    tracing::info!("gateway stopped");
    Ok(())
}

/// What every connection of [`serve`] shares.
struct Connections {
    http: hyper::server::conn::http1::Builder,
    app: Router,
    /// Connections accepted before the shutdown began: told to close once
    /// idle when the listener closes. Those accepted during the grace are not:
    /// their first answer closes them, and one accepted just before the close
    /// is still waiting for the request its client has sent.
    kept_alive: hyper_util::server::graceful::GracefulShutdown,
    /// Held by every connection's task.
    open: tokio::sync::mpsc::Sender<()>,
    /// Cancelled when the drain times out: every connection still open closes.
    cut_off: kit::shutdown::Shutdown,
}

impl Connections {
    /// Serves one accepted connection on a task of its own.
    fn serve(&self, stream: tokio::net::TcpStream, draining: bool) {
        // Nagle's algorithm off: a response written in pieces must not wait for the client's delayed ACK.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set on an accepted connection");
        }
        let service = hyper_util::service::TowerToHyperService::new(self.app.clone());
        let connection = self.http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let (open, cut_off) = (self.open.clone(), self.cut_off.clone());
        if draining {
            tokio::spawn(until_closed(connection, open, cut_off));
        } else {
            tokio::spawn(until_closed(self.kept_alive.watch(connection), open, cut_off));
        }
    }
}

/// Runs a connection until it ends or the drain is cut off.
async fn until_closed(
    connection: impl Future<Output = Result<(), hyper::Error>>,
    _open: tokio::sync::mpsc::Sender<()>,
    cut_off: kit::shutdown::Shutdown,
) {
    tokio::select! {
        ended = connection => if let Err(error) = ended {
            // A client that went away, or one too slow with its headers.
            tracing::debug!(%error, "connection ended with an error");
        },
        () = cut_off.cancelled() => tracing::debug!("connection closed at the end of the drain"),
    }
}

/// Accepts connections on `listener` and serves them until `until` resolves.
async fn accept_until(
    listener: &TcpListener,
    until: impl Future<Output = ()>,
    connections: &Connections,
    draining: bool,
) {
    let mut until = std::pin::pin!(until);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut until => return,
        };
        match accepted {
            Ok((stream, _)) => connections.serve(stream, draining),
            Err(error) => {
                // Out of file descriptors, say: the listener stays, and a
                // pause keeps the loop from spinning while none are freed.
                tracing::warn!(%error, "cannot accept a connection");
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                    () = &mut until => return,
                }
            }
        }
    }
}

/// Failed accepts tolerated while serving the connections queued at the close.
const MAX_CLOSING_ACCEPT_FAILURES: u32 = 64;

/// How long the accept loop pauses after an error accepting a connection.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Builds the gateway over the mesh's own descriptors and serves it.
pub async fn run(
    listener: TcpListener,
    config: Config,
    metrics: &kit::metrics::Metrics,
    shutdown: kit::shutdown::Shutdown,
) -> Result<(), GatewayError> {
    let gateway = Gateway::new(&proto::descriptor_pool()?, config, metrics).await?;
    serve(listener, gateway, shutdown).await
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

/// `POST /v1/webhooks/stripe`: signed by Stripe instead of a bearer token
/// ([`crate::webhooks::stripe`]); traced and measured as every route is.
async fn stripe_webhook(State(gateway): State<Gateway>, request: Request) -> Response {
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

/// `ok`; from the moment the gateway is asked to stop, 503 (UNAVAILABLE as a
/// `google.rpc.Status`), while it keeps serving every request for its
/// `shutdown_grace`: the serving port's readiness.
async fn healthz(State(gateway): State<Gateway>) -> Response {
    if gateway.draining() {
        return gateway.0.errors.response(&tonic::Status::unavailable("the gateway is shutting down"));
    }
    "ok".into_response()
}

async fn openapi_json(State(gateway): State<Gateway>) -> Response {
    ([(CONTENT_TYPE, "application/json")], gateway.0.openapi.clone()).into_response()
}

/// 200 when every upstream answers SERVING to a health check of its service,
/// else 503; the body lists each upstream's answer. 503 without asking them
/// once the gateway is shutting down.
async fn readyz(State(gateway): State<Gateway>) -> Response {
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

/// Every request that is not one of the fixed paths: routed, traced, measured, then handled.
async fn transcode_request(State(gateway): State<Gateway>, request: Request) -> Response {
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

/// The server span of a request on `route` (OpenTelemetry HTTP conventions):
/// the root of a trace of the gateway's own, linked to the caller's
/// `traceparent` when it sent one; with `trust_client_traces`, a
/// continuation of the caller's trace.
fn server_span(request: &Request, route: Option<&str>, trust_client_traces: bool) -> Span {
    let method = request.method();
    let span = tracing::info_span!(
        "http",
        otel.name = %SpanName { method, route },
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = tracing::field::Empty,
        url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
        request.id = tracing::field::Empty,
    );
    if let Some(route) = route {
        span.record("http.route", route);
    }
    // A disabled span (tracing filtered out) has no trace to continue.
    if span.is_disabled() {
        return span;
    }
    let caller = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(request.headers())));
    if trust_client_traces {
        if let Err(error) = span.set_parent(caller) {
            tracing::debug!(%error, "cannot continue the caller's trace");
        }
    } else {
        // A new root: the gateway's sampler decides, and the trace id is ours.
        // Cut from any trace the task was in, so only the link leads to the caller's.
        if let Err(error) = span.set_parent(opentelemetry::Context::new()) {
            tracing::debug!(%error, "cannot start the request's trace");
        }
        let linked = caller.span().span_context().clone();
        if linked.is_valid() {
            span.add_link(linked);
        }
    }
    span
}

/// Records the answer on the request's span and in the metrics.
fn finish_span(
    gateway: &Gateway,
    span: &Span,
    method: &str,
    route: Option<&str>,
    response: &Response,
    started: Instant,
) {
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    if response.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    gateway.0.metrics.observe(method, route.unwrap_or("unmatched"), status, started.elapsed());
}

/// A request's body, read within the size limit and `body_read_timeout`; else the refusal to answer.
async fn read_body(inner: &Inner, headers: &HeaderMap, body: axum::body::Body) -> Result<Bytes, Response> {
    let errors = &inner.errors;
    if let Some(length) = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        && length > inner.config.max_body_bytes
    {
        return Err(too_large(errors, inner.config.max_body_bytes));
    }
    let read = Limited::new(body, inner.config.max_body_bytes).collect();
    let read_timeout = Some(inner.config.body_read_timeout).filter(|timeout| !timeout.is_zero());
    let read = async {
        match read_timeout {
            Some(timeout) => tokio::time::timeout(timeout, read).await,
            None => Ok(read.await),
        }
    };
    match read.await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<LengthLimitError>() => Err(too_large(errors, inner.config.max_body_bytes)),
        Err(_) => Err(body_too_slow(errors, inner.config.body_read_timeout)),
        Ok(Err(error)) => {
            let mut violations = kit::error::BadRequest::new();
            violations.violation(
                "body",
                kit::error::ViolationReason::InvalidFormat,
                format!("cannot read the request body: {error}"),
            );
            Err(errors.response(&violations.into_status()))
        }
    }
}

/// Awaits an upstream call for at most `timeout`; its failure as the gateway
/// answers it. tonic enforces the grpc-timeout it sends (and a tonic service
/// the one it receives) by answering CANCELLED; the gateway cancels nothing
/// else, so past the deadline that CANCELLED is the deadline. A call
/// cancelled before it (a reset stream, a service going away mid-call) is the
/// upstream unavailable, not our bug. Every other answer is the service's
/// own, passed on as it is.
async fn within_deadline<T>(
    service: &str,
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    let deadline = tokio::time::Instant::now() + timeout;
    match tokio::time::timeout_at(deadline, call).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(status)) if status.code() != Code::Cancelled => Err(status),
        Ok(Err(status))
            if tokio::time::Instant::now() < deadline
                && kit::error::classify_peer(&status) != kit::error::PeerFailure::Deadline =>
        {
            Err(kit::error::from_peer(service, "answering", &status))
        }
        Ok(Err(_)) | Err(_) => Err(kit::error::with_retry_info(
            Code::DeadlineExceeded,
            format!("{service} did not answer within {timeout:?}"),
            kit::error::RETRY_AFTER,
        )),
    }
}

/// The answer when every permit is taken and the wait for one ran out.
fn at_capacity() -> tonic::Status {
    kit::error::with_retry_info(
        Code::Unavailable,
        "the gateway is at its concurrency limit; retry shortly",
        Duration::from_secs(1),
    )
}

/// A request span's name, `GET /v1/customers/{customer_id}` (the method alone
/// when no route matched), written only when the span is enabled.
struct SpanName<'a> {
    method: &'a http::Method,
    route: Option<&'a str>,
}

impl std::fmt::Display for SpanName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.route {
            Some(route) => write!(f, "{} {route}", self.method),
            None => f.write_str(self.method.as_str()),
        }
    }
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

/// 408 for a body not sent within `limit`; the connection is closed, as the
/// rest of the body may still be on its way.
fn body_too_slow(errors: &ErrorRenderer, limit: Duration) -> Response {
    let status = tonic::Status::deadline_exceeded(format!("the request body was not sent within {limit:?}"));
    let mut response = errors.response_with(StatusCode::REQUEST_TIMEOUT, &status);
    response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

fn too_large(errors: &ErrorRenderer, limit: usize) -> Response {
    let status = tonic::Status::new(Code::ResourceExhausted, format!("the request body exceeds {limit} bytes"));
    errors.response_with(StatusCode::PAYLOAD_TOO_LARGE, &status)
}

/// A caller refused before any service is called.
enum Refusal {
    Unauthenticated {
        reason: String,
        challenge: HeaderValue,
    },
    /// Authenticated as `subject`, but lacking a scope.
    Forbidden {
        reason: String,
        challenge: HeaderValue,
        subject: String,
    },
}

impl Refusal {
    /// The verified subject of a caller refused for its scopes.
    fn subject(&self) -> Option<String> {
        match self {
            Refusal::Unauthenticated { .. } => None,
            Refusal::Forbidden { subject, .. } => Some(subject.clone()),
        }
    }

    fn response(self, errors: &ErrorRenderer) -> Response {
        let (status, challenge) = match self {
            Refusal::Unauthenticated { reason, challenge } => (tonic::Status::unauthenticated(reason), challenge),
            Refusal::Forbidden { reason, challenge, .. } => (tonic::Status::permission_denied(reason), challenge),
        };
        let mut response = errors.response(&status);
        response.headers_mut().insert(WWW_AUTHENTICATE, challenge);
        response
    }
}

async fn authorize(auth: &Authenticator, headers: &HeaderMap, scopes: &[String]) -> Result<Caller, Refusal> {
    let caller = auth.authenticate(headers.get(AUTHORIZATION)).await.map_err(|refused| Refusal::Unauthenticated {
        challenge: refused.www_authenticate(),
        reason: refused.to_string(),
    })?;
    caller.require(scopes).map_err(|refused| Refusal::Forbidden {
        challenge: refused.www_authenticate(),
        reason: refused.to_string(),
        subject: caller.subject.clone(),
    })?;
    Ok(caller)
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
