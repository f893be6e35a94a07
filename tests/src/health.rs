//! Waiting for a component to be ready: its gRPC health turns SERVING once its
//! migrations ran and its dependencies answer.

use std::time::Duration;

use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Why a component did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    /// The address is not a gRPC URL.
    #[error("{0}")]
    Address(#[from] kit::client::ClientError),
    /// The health service refused or failed.
    #[error("health watch: {0}")]
    Health(#[from] tonic::Status),
    /// The health stream ended before SERVING.
    #[error("health stream ended before SERVING")]
    Ended,
    /// Not SERVING within the guard time.
    #[error("not SERVING after {0:?}")]
    TimedOut(Duration),
}

/// Waits, on the health `Watch` stream (no polling), until the server at `url`
/// is SERVING; gives up after `guard`, which only bounds a hung test.
pub async fn wait_serving(url: &str, guard: Duration) -> Result<(), NotReady> {
    let mut health = HealthClient::new(kit::client::channel(url)?);
    let watched = async {
        let mut updates = health.watch(HealthCheckRequest { service: String::new() }).await?.into_inner();
        while let Some(update) = updates.next().await {
            if update?.status() == ServingStatus::Serving {
                return Ok(());
            }
        }
        Err(NotReady::Ended)
    };
    tokio::time::timeout(guard, watched).await.map_err(|_| NotReady::TimedOut(guard))?
}
