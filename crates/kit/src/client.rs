//! gRPC clients between components: lazily connected channels that carry the
//! trace.
//!
//! ```no_run
//! # fn run() -> Result<(), kit::client::ClientError> {
//! use tonic_health::pb::health_client::HealthClient;
//!
//! // Any generated client takes the channel: here, health checks on a peer.
//! let channel = kit::client::channel("http://127.0.0.1:50052")?;
//! let health = HealthClient::new(channel);
//! # Ok(()) }
//! ```

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use tower::ServiceBuilder;

use crate::trace::{InjectTraceContext, InjectTraceContextLayer, grpc_client_layer, grpc_client_layer_for};

/// A tonic channel whose connection failures reach the caller as UNAVAILABLE
/// statuses (tonic would otherwise report a connection lost mid-call as
/// UNKNOWN "transport error", which callers take for a bug, not for a reason
/// to retry).
#[derive(Clone, Debug)]
pub struct PeerChannel {
    inner: Channel,
}

type GrpcRequest = http::Request<tonic::body::Body>;
type GrpcResponse = <Channel as tower::Service<GrpcRequest>>::Response;

impl tower::Service<GrpcRequest> for PeerChannel {
    type Response = GrpcResponse;
    type Error = tower::BoxError;
    type Future = PeerCall;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(connection_failed)
    }

    fn call(&mut self, request: GrpcRequest) -> Self::Future {
        PeerCall { answer: self.inner.call(request) }
    }
}

pin_project_lite::pin_project! {
    /// A call on a [`PeerChannel`]: the channel's answer, a failed connection
    /// made a status (no allocation per call).
    pub struct PeerCall {
        #[pin]
        answer: <Channel as tower::Service<GrpcRequest>>::Future,
    }
}

impl Future for PeerCall {
    type Output = Result<GrpcResponse, tower::BoxError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        self.project().answer.poll(cx).map_err(connection_failed)
    }
}

/// A [`PeerChannel`] wrapped so every call has a client span whose context
/// travels with the request.
pub type TracedChannel = tower_http::trace::Trace<
    InjectTraceContext<PeerChannel>,
    tower_http::classify::SharedClassifier<tower_http::classify::GrpcErrorsAsFailures>,
    crate::trace::RpcSpan,
    (),
    crate::trace::RecordStatus,
    (),
    crate::trace::RecordStatus,
    crate::trace::RecordStatus,
>;

/// Why a client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address is not a valid URI.
    #[error("invalid gRPC address {address:?}: {source}")]
    InvalidAddress {
        /// The address given.
        address: String,
        /// Why it is invalid.
        source: tonic::transport::Error,
    },
    /// A `dns:///` address without a host and port.
    #[error("invalid gRPC address {address:?}: {reason}")]
    InvalidTarget {
        /// The address given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A lazily connected, traced channel to `address`. Connection failures
/// surface as UNAVAILABLE on the calls themselves.
///
/// - `http://host:port`: one HTTP/2 connection to whatever `host` resolves to.
/// - `dns:///host:port` (gRPC's naming syntax): every address `host` resolves
///   to, re-resolved every [`RESOLVE_EVERY`], with requests balanced across
///   them. Use it for a headless Kubernetes service, whose name resolves to
///   every ready pod: a single connection to a ClusterIP would pin all calls
///   to one pod. Must be called inside a tokio runtime.
pub fn channel(address: &str) -> Result<TracedChannel, ClientError> {
    channel_with(address, grpc_client_layer())
}

/// [`channel`] for calls `component` makes: its client spans say so in
/// `mesh.component` (see [`crate::component_spans`]).
pub fn channel_from(component: &str, address: &str) -> Result<TracedChannel, ClientError> {
    channel_with(address, grpc_client_layer_for(component))
}

fn channel_with(address: &str, layer: crate::trace::GrpcTraceLayer) -> Result<TracedChannel, ClientError> {
    let traced = |channel: Channel| traced_with(layer, channel);
    match address.strip_prefix(DNS_SCHEME) {
        Some(target) => {
            let target = target.trim_start_matches('/').to_string();
            let (host, port) = split_host_port(&target).ok_or_else(|| ClientError::InvalidTarget {
                address: address.to_string(),
                reason: "expected dns:///host:port".into(),
            })?;
            Ok(traced(resolved_channel(host, port, RESOLVE_EVERY, DnsResolver)))
        }
        None => Ok(traced(endpoint(address)?.connect_lazy())),
    }
}

/// The scheme of addresses resolved to every endpoint and balanced across.
pub const DNS_SCHEME: &str = "dns:";

/// How often a `dns:///` address is resolved again, to follow pods coming and going.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(10);

fn endpoint(address: &str) -> Result<Endpoint, ClientError> {
    Ok(Endpoint::from_shared(address.to_string())
        .map_err(|source| ClientError::InvalidAddress { address: address.to_string(), source })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true))
}

fn split_host_port(target: &str) -> Option<(String, u16)> {
    let (host, port) = target.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}

/// Turns a host name into the addresses to balance across.
pub trait Resolve: Send + Sync + 'static {
    /// Every address of `host`, with `port`.
    fn resolve(&self, host: &str, port: u16) -> impl Future<Output = std::io::Result<Vec<SocketAddr>>> + Send;
}

/// The system resolver (as `getaddrinfo` answers: Kubernetes DNS in a cluster).
#[derive(Clone, Copy, Debug, Default)]
pub struct DnsResolver;

impl Resolve for DnsResolver {
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// A channel balanced across every address `resolver` gives for `host`,
/// followed as it changes. The resolving task ends when the channel is dropped.
pub fn resolved_channel(host: String, port: u16, every: Duration, resolver: impl Resolve) -> Channel {
    let (channel, changes) = Channel::balance_channel::<SocketAddr>(64);
    tokio::spawn(async move {
        let mut current: BTreeSet<SocketAddr> = BTreeSet::new();
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let resolved: BTreeSet<SocketAddr> = match resolver.resolve(&host, port).await {
                Ok(addresses) => addresses.into_iter().collect(),
                Err(error) => {
                    // Keep the endpoints we have: a DNS hiccup must not empty the pool.
                    tracing::warn!(%host, %error, "cannot resolve the gRPC peer; keeping its known addresses");
                    continue;
                }
            };
            if resolved.is_empty() {
                tracing::warn!(%host, "the gRPC peer resolves to no address; keeping its known addresses");
                continue;
            }
            for gone in current.difference(&resolved) {
                if changes.send(Change::Remove(*gone)).await.is_err() {
                    return;
                }
            }
            for new in resolved.difference(&current) {
                let Ok(endpoint) = endpoint(&format!("http://{new}")) else { continue };
                if changes.send(Change::Insert(*new, endpoint)).await.is_err() {
                    return;
                }
            }
            if resolved != current {
                tracing::debug!(%host, addresses = resolved.len(), "gRPC peer addresses changed");
            }
            current = resolved;
        }
    });
    channel
}

/// Wraps an existing channel with the client trace layers.
pub fn traced(channel: Channel) -> TracedChannel {
    traced_with(grpc_client_layer(), channel)
}

fn traced_with(layer: crate::trace::GrpcTraceLayer, channel: Channel) -> TracedChannel {
    ServiceBuilder::new().layer(layer).layer(InjectTraceContextLayer).service(PeerChannel { inner: channel })
}

/// tonic turns a service error that is a `Status` into that status: the call
/// ends UNAVAILABLE, naming what failed (the causes of the transport error).
/// A deadline that passed stays tonic's own answer (CANCELLED, "Timeout
/// expired"), which callers tell apart from a lost peer.
fn connection_failed(error: tonic::transport::Error) -> tower::BoxError {
    let mut reason = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(inner) = cause {
        if inner.is::<tonic::TimeoutExpired>() {
            return Box::new(error);
        }
        reason.push_str(": ");
        reason.push_str(&inner.to_string());
        cause = inner.source();
    }
    Box::new(tonic::Status::unavailable(format!("the connection to the peer failed ({reason})")))
}
