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

mod app;
mod authorize;
mod config;
mod connections;
mod health;
mod limits;
mod pipeline;
mod startup;
mod trace;
mod webhook;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::uri::PathAndQuery;
use prost_reflect::MessageDescriptor;

use crate::binding::InvalidBindings;
use crate::callers::CallerLimits;
use crate::metrics::HttpMetrics;
use crate::router::{RouteConflicts, RouteTable};
use crate::status::{ErrorRenderer, NoStatusMessage};
use crate::template::TemplateError;
use crate::webhooks::stripe::{StripeSetupError, StripeWebhook};
use kit::auth::{AuthSetupError, Authenticator};

pub use app::MAX_REQUEST_ID_LEN;
pub use config::{Config, CorsConfig};
pub use connections::serve;
pub use startup::run;

/// The metadata key carrying the authenticated caller's token subject to the service.
pub const SUBJECT_METADATA: &str = kit::access::SUBJECT_METADATA;
/// The header (and metadata key) carrying the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The route of Stripe's webhook ([`crate::webhooks::stripe`]).
pub const STRIPE_WEBHOOK_ROUTE: &str = "/v1/webhooks/stripe";
/// The service the webhooks call.
const FULFILLMENT_SERVICE: &str = "commerce.fulfillment.v1.FulfillmentService";

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
    /// How many REST routes are served.
    pub fn route_count(&self) -> usize {
        self.0.routes.routes().len()
    }

    /// Whether [`serve`] has been asked to stop (and is in its grace or drain).
    pub fn draining(&self) -> bool {
        self.0.draining.load(Ordering::Relaxed)
    }
}
