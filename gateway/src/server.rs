//! The gateway's HTTP server.

use std::net::SocketAddr;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::binding::{InvalidBindings, method_bindings};

/// The gateway's settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Config {
    /// Where the HTTP server listens.
    pub listen: SocketAddr,
}

impl Default for Config {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 8080)) }
    }
}

/// Why the gateway stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The embedded descriptors do not decode.
    #[error("cannot read the mesh's descriptors: {0}")]
    Descriptors(#[from] prost_reflect::DescriptorError),
    /// Some RPC lacks an http rule or an access rule.
    #[error("{0}")]
    Bindings(#[from] InvalidBindings),
    /// The server failed.
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves until `shutdown` is cancelled. Fails at once if any RPC lacks its
/// http rule or access rule.
pub async fn run(listener: TcpListener, shutdown: kit::shutdown::Shutdown) -> Result<(), GatewayError> {
    let bindings = method_bindings(&proto::descriptor_pool()?)?;
    let address = listener.local_addr()?;
    tracing::info!(%address, rpcs = bindings.len(), "gateway listening");
    let app = Router::new().route("/healthz", get(|| async { "ok" })).fallback(not_built);
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
    tracing::info!("gateway stopped");
    Ok(())
}

/// 501 with a `google.rpc.Status` body, as every gateway error will be.
async fn not_built() -> impl IntoResponse {
    let status = serde_json::json!({
        "code": 12,
        "message": "REST transcoding is not built yet; call the gRPC services directly",
        "details": [],
    });
    (StatusCode::NOT_IMPLEMENTED, axum::Json(status))
}
