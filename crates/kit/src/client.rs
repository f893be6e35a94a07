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

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use tower::ServiceBuilder;

pub use crate::credential::Credential;
use crate::trace::{InjectTraceContext, InjectTraceContextLayer, grpc_client_layer, grpc_client_layer_for};

/// A tonic channel whose connection failures reach the caller as UNAVAILABLE
/// statuses (tonic would otherwise report a connection lost mid-call as
/// UNKNOWN "transport error", which callers take for a bug, not for a reason
/// to retry).
#[derive(Clone, Debug)]
pub struct PeerChannel {
    inner: Channel,
    /// Presented on every call that carries no `authorization` of its own.
    credential: Credential,
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

    fn call(&mut self, mut request: GrpcRequest) -> Self::Future {
        if !request.headers().contains_key(http::header::AUTHORIZATION)
            && let Some(token) = self.credential.header()
        {
            request.headers_mut().insert(http::header::AUTHORIZATION, token);
        }
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
    channel_with(address, grpc_client_layer(), Credential::none())
}

/// [`channel`] presenting `credential` on every call that has no
/// `authorization` of its own (a command-line tool, a test).
pub fn channel_as(address: &str, credential: Credential) -> Result<TracedChannel, ClientError> {
    channel_with(address, grpc_client_layer(), credential)
}

/// [`channel`] for calls `component` makes, presenting its own `credential`
/// (see [`Credential::of_component`]) unless a call carries a token already
/// (the gateway forwarding its caller's): its client spans say so in
/// `mesh.component` (see [`crate::component_spans`]).
pub fn channel_from(component: &str, address: &str, credential: Credential) -> Result<TracedChannel, ClientError> {
    channel_with(address, grpc_client_layer_for(component), credential)
}

fn channel_with(
    address: &str,
    layer: crate::trace::GrpcTraceLayer,
    credential: Credential,
) -> Result<TracedChannel, ClientError> {
    let traced = |channel: Channel| traced_with(layer, channel, credential);
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
/// followed as it changes, and across those of them whose gRPC health is
/// SERVING. The resolving task ends when the channel is dropped.
///
/// Each address's health (service `""`) is watched on a connection of its
/// own (gRPC's client-side health checking): a replica that reports
/// NOT_SERVING, as every `kit::serve` component does from the moment it is
/// asked to stop, or that cannot be reached, leaves the balance at once, not
/// at the next resolution, so no call goes to a listener closing under a
/// stale DNS answer; it comes back once it answers SERVING again. A peer
/// whose health cannot be asked (no health service, or a refusal) is
/// balanced as if SERVING, an address not heard from yet too; and when no
/// address qualifies, all are balanced, so calls fail fast (UNAVAILABLE)
/// rather than wait for a replica.
pub fn resolved_channel(host: String, port: u16, every: Duration, resolver: impl Resolve) -> Channel {
    let (channel, changes) = Channel::balance_channel::<SocketAddr>(64);
    tokio::spawn(follow(host, port, every, resolver, changes));
    channel
}

/// How long a health watcher waits before asking a replica that is not
/// SERVING, or cannot be reached, again.
pub const HEALTH_RETRY_EVERY: Duration = Duration::from_secs(1);

/// What the health watcher of one address last learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    /// Nothing yet.
    Unknown,
    /// SERVING, or the peer does not tell.
    Serving,
    /// NOT_SERVING (starting, or stopping) or any other status.
    NotServing,
    /// No connection, or the watch broke.
    Unreachable,
}

/// A resolved address: its health, and the task watching it (ended with it).
struct Peer {
    health: Health,
    watcher: tokio::task::AbortHandle,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// Resolves `host` every `every`, watches each address's health, and keeps
/// the balance (`changes`) to the addresses to call, until the channel is dropped.
async fn follow(
    host: String,
    port: u16,
    every: Duration,
    resolver: impl Resolve,
    changes: tokio::sync::mpsc::Sender<Change<SocketAddr, Endpoint>>,
) {
    let (reports, mut health) = tokio::sync::mpsc::channel::<(SocketAddr, Health)>(64);
    let mut peers: BTreeMap<SocketAddr, Peer> = BTreeMap::new();
    let mut balanced: BTreeSet<SocketAddr> = BTreeSet::new();
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = changes.closed() => return,
            _ = ticks.tick() => match resolver.resolve(&host, port).await {
                Ok(addresses) if !addresses.is_empty() => {
                    let resolved: BTreeSet<SocketAddr> = addresses.into_iter().collect();
                    if resolved.iter().ne(peers.keys()) {
                        tracing::debug!(%host, addresses = resolved.len(), "gRPC peer addresses changed");
                    }
                    peers.retain(|address, _| resolved.contains(address));
                    for address in resolved {
                        peers.entry(address).or_insert_with(|| Peer {
                            health: Health::Unknown,
                            watcher: tokio::spawn(watch_health(address, reports.clone())).abort_handle(),
                        });
                    }
                }
                // Keep the endpoints we have: a DNS hiccup must not empty the pool.
                Ok(_) => tracing::warn!(%host, "the gRPC peer resolves to no address; keeping its known addresses"),
                Err(error) => {
                    tracing::warn!(%host, %error, "cannot resolve the gRPC peer; keeping its known addresses");
                }
            },
            Some((address, now)) = health.recv() => {
                if let Some(peer) = peers.get_mut(&address)
                    && peer.health != now
                {
                    tracing::debug!(%host, %address, health = ?now, "gRPC peer health changed");
                    peer.health = now;
                }
            }
        }
        let wanted = to_balance(&peers);
        for gone in balanced.difference(&wanted) {
            if changes.send(Change::Remove(*gone)).await.is_err() {
                return;
            }
        }
        for new in wanted.difference(&balanced) {
            let Ok(endpoint) = endpoint(&format!("http://{new}")) else { continue };
            if changes.send(Change::Insert(*new, endpoint)).await.is_err() {
                return;
            }
        }
        balanced = wanted;
    }
}

/// The addresses calls go to: those SERVING or not heard from yet; all of
/// them when none is.
fn to_balance(peers: &BTreeMap<SocketAddr, Peer>) -> BTreeSet<SocketAddr> {
    let callable: BTreeSet<SocketAddr> = peers
        .iter()
        .filter(|(_, peer)| matches!(peer.health, Health::Serving | Health::Unknown))
        .map(|(address, _)| *address)
        .collect();
    if callable.is_empty() { peers.keys().copied().collect() } else { callable }
}

/// Watches the health of the server at `address` and reports each change of
/// it, until aborted.
///
/// A watch stream is kept open only while the server says SERVING: a server
/// that is stopping waits for its open streams before it closes, so on any
/// other status the stream is dropped, and asked again after
/// [`HEALTH_RETRY_EVERY`].
async fn watch_health(address: SocketAddr, reports: tokio::sync::mpsc::Sender<(SocketAddr, Health)>) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let Ok(endpoint) = endpoint(&format!("http://{address}")) else { return };
    let mut client = HealthClient::new(endpoint.connect_lazy());
    loop {
        let health = match client.watch(HealthCheckRequest { service: String::new() }).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(answer)) if answer.status() == ServingStatus::Serving => {
                            if reports.send((address, Health::Serving)).await.is_err() {
                                return;
                            }
                        }
                        Ok(Some(_)) => break Health::NotServing,
                        // The server went away, or the connection did.
                        Ok(None) | Err(_) => break Health::Unreachable,
                    }
                }
            }
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unimplemented
                        | tonic::Code::NotFound
                        | tonic::Code::Unauthenticated
                        | tonic::Code::PermissionDenied
                ) =>
            {
                tracing::warn!(%address, %status, "the gRPC peer does not tell its health; balancing to it regardless");
                let _ = reports.send((address, Health::Serving)).await;
                return;
            }
            Err(_) => Health::Unreachable,
        };
        if reports.send((address, health)).await.is_err() {
            return;
        }
        tokio::time::sleep(HEALTH_RETRY_EVERY).await;
    }
}

/// Wraps an existing channel with the client trace layers.
pub fn traced(channel: Channel) -> TracedChannel {
    traced_with(grpc_client_layer(), channel, Credential::none())
}

fn traced_with(layer: crate::trace::GrpcTraceLayer, channel: Channel, credential: Credential) -> TracedChannel {
    ServiceBuilder::new()
        .layer(layer)
        .layer(InjectTraceContextLayer)
        .service(PeerChannel { inner: channel, credential })
}

/// tonic turns a service error that is a `Status` into that status: the call
/// ends UNAVAILABLE, naming what failed (the causes of the transport error).
/// A deadline that passed stays tonic's own answer (CANCELLED, "Timeout
/// expired"), which callers tell apart from a lost peer.
fn connection_failed(error: tonic::transport::Error) -> tower::BoxError {
    let mut root = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(inner) = cause {
        if inner.is::<tonic::TimeoutExpired>() {
            return Box::new(error);
        }
        root = inner.to_string();
        cause = inner.source();
    }
    let reason = crate::error::causes(&error);
    Box::new(crate::error::with_reason(
        tonic::Code::Unavailable,
        format!("the connection to the peer failed ({reason})"),
        crate::error::CONNECTION_FAILED,
        [("cause", root)],
    ))
}
