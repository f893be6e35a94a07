//! What the binary's integration tests share.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Guards against a hang, not a timing assertion: generous on purpose.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

/// Waits (on the health Watch stream, no polling) until `url` answers SERVING.
pub async fn wait_serving(url: &str) {
    let mut health = HealthClient::new(kit::client::channel(url).expect("channel"));
    let mut updates = health.watch(HealthCheckRequest { service: String::new() }).await.expect("watch").into_inner();
    tokio::time::timeout(HANG_GUARD, async {
        while let Some(update) = updates.next().await {
            if update.expect("health update").status() == ServingStatus::Serving {
                return;
            }
        }
        panic!("health stream ended before SERVING");
    })
    .await
    .expect("becomes SERVING");
}

/// The binary with none of the caller's mesh or telemetry settings.
pub fn mesh_command(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_commerce-mesh"));
    command.current_dir(dir).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    for (name, _) in std::env::vars() {
        if name.starts_with("MESH_") || name.starts_with("OTEL_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command
}
