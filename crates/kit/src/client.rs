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

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tower::ServiceBuilder;

use crate::trace::{InjectTraceContext, InjectTraceContextLayer, grpc_client_layer};

/// A tonic channel wrapped so every call has a client span whose context
/// travels with the request.
pub type TracedChannel = tower_http::trace::Trace<
    InjectTraceContext<Channel>,
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
}

/// A lazily connected, traced channel to `address` (`http://host:port`).
/// Connection failures surface as UNAVAILABLE on the calls themselves.
pub fn channel(address: &str) -> Result<TracedChannel, ClientError> {
    let endpoint = Endpoint::from_shared(address.to_string())
        .map_err(|source| ClientError::InvalidAddress { address: address.to_string(), source })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    Ok(traced(endpoint.connect_lazy()))
}

/// Wraps an existing channel with the client trace layers.
pub fn traced(channel: Channel) -> TracedChannel {
    ServiceBuilder::new().layer(grpc_client_layer()).layer(InjectTraceContextLayer).service(channel)
}
