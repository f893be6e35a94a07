//! Building the gateway at start-up: every binding checked and routed to
//! its upstream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use http::uri::PathAndQuery;
use prost_reflect::DescriptorPool;
use tokio::net::TcpListener;

use super::{Config, FULFILLMENT_SERVICE, Gateway, GatewayError, Inner, Rpc, STRIPE_WEBHOOK_ROUTE, Upstream, serve};
use crate::binding::method_bindings;
use crate::callers::CallerLimits;
use crate::metrics::HttpMetrics;
use crate::openapi::{self, ApiInfo};
use crate::router::{Route, RouteTable};
use crate::status::ErrorRenderer;
use crate::template::PathTemplate;
use crate::transcode;
use crate::webhooks::stripe::StripeWebhook;
use kit::auth::Authenticator;

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
}

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
