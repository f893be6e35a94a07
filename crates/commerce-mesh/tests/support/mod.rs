//! What the binary's integration tests share (each uses some of it).

#![allow(dead_code)]

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

/// Waits until `url` answers SERVING: on the health Watch stream, once the
/// process listens (until then the call itself fails, and is tried again).
pub async fn wait_serving(url: &str) {
    tokio::time::timeout(HANG_GUARD, async {
        let mut updates = loop {
            let mut health = HealthClient::new(kit::client::channel(url).expect("channel"));
            match health.watch(HealthCheckRequest { service: String::new() }).await {
                Ok(updates) => break updates.into_inner(),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
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
