//! The gateway's settings.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::callers::CallerQuotasConfig;
use crate::webhooks::WebhooksConfig;
use kit::auth::AuthConfig;

/// The gateway's settings.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
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

/// Every setting, the Redis URL's password hidden: settings are logged.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured so that a new setting cannot be left out unnoticed.
        let Self {
            listen,
            upstreams,
            auth,
            identity,
            request_timeout,
            max_body_bytes,
            max_concurrent_requests,
            queue_timeout,
            header_read_timeout,
            body_read_timeout,
            cors,
            webhooks,
            caller_quotas,
            redis_url,
            trust_client_traces,
            shutdown_grace,
            drain_timeout,
        } = self;
        f.debug_struct("Config")
            .field("listen", listen)
            .field("upstreams", upstreams)
            .field("auth", auth)
            .field("identity", identity)
            .field("request_timeout", request_timeout)
            .field("max_body_bytes", max_body_bytes)
            .field("max_concurrent_requests", max_concurrent_requests)
            .field("queue_timeout", queue_timeout)
            .field("header_read_timeout", header_read_timeout)
            .field("body_read_timeout", body_read_timeout)
            .field("cors", cors)
            .field("webhooks", webhooks)
            .field("caller_quotas", caller_quotas)
            .field("redis_url", &redis_url.as_deref().map(kit::db::redact))
            .field("trust_client_traces", trust_client_traces)
            .field("shutdown_grace", shutdown_grace)
            .field("drain_timeout", drain_timeout)
            .finish()
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
