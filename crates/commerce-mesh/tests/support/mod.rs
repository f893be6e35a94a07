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

/// A credential carrying `scopes`, minted with the development secret
/// `config` knows (configured, or the one `up` wrote in its `data_dir`).
pub fn developer(config: &commerce_mesh::MeshConfig, scopes: &[&str]) -> kit::credential::Credential {
    let credential = commerce_mesh::dev_tokens::tool_credential(config, None, scopes).expect("a credential");
    assert!(credential.header().is_some(), "a development secret to mint with");
    credential
}

/// Applies the migrations of `target` (a service or `all`) to the Postgres
/// database at `database_url`, as the migrations Job does: `serve` applies
/// none, it waits for them.
pub async fn migrate(dir: &Path, database_url: &str, target: &str) {
    let output = mesh_command(dir)
        .args(["migrate", target])
        .env("MESH_DATABASE_URL", database_url)
        .output()
        .await
        .expect("run commerce-mesh migrate");
    assert!(output.status.success(), "migrate {target}: {}", String::from_utf8_lossy(&output.stderr));
}

/// The variable carrying the development secret tokens are signed with, which
/// the gateway and every service verify them with (the one place a test
/// names it).
pub const DEVELOPMENT_SECRET_ENV: &str = "MESH_AUTH__DEVELOPMENT_SECRET";

/// A development token for `subject` with `scopes`, signed with `secret`, as
/// `commerce-mesh token` mints it.
pub async fn development_token(dir: &Path, secret: &str, subject: &str, scopes: &[&str]) -> String {
    let output = mesh_command(dir)
        .args(["token", "--subject", subject, "--scopes", &scopes.join(",")])
        .env(DEVELOPMENT_SECRET_ENV, secret)
        .output()
        .await
        .expect("run commerce-mesh token");
    assert!(output.status.success(), "token: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("UTF-8").trim().to_string()
}

/// nss_wrapper's library, wherever the distribution put it: preloaded into a
/// process (`LD_PRELOAD`, `NSS_WRAPPER_HOSTS`), it answers getaddrinfo from a
/// hosts file of the test's own, so a `dns:///` name resolves to several
/// loopback addresses without touching /etc/hosts.
pub fn nss_wrapper() -> std::path::PathBuf {
    let mut dirs: Vec<std::path::PathBuf> = vec!["/usr/lib".into(), "/usr/lib64".into(), "/lib".into()];
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        dirs.extend(entries.filter_map(|entry| Some(entry.ok()?.path())));
    }
    dirs.into_iter()
        .map(|dir| dir.join("libnss_wrapper.so"))
        .find(|library| library.exists())
        .expect("libnss_wrapper.so (apt-get install libnss-wrapper; scripts/services installs it)")
}

/// A port free on every address, for a child process to listen on. It stays
/// held for the rest of the test: bound (with SO_REUSEADDR) but not
/// listening, so the child, which sets SO_REUSEADDR too, can listen on it,
/// and the kernel hands it to no other socket meanwhile (a port bound and
/// released could be given to another test's server or connection, and was:
/// a health check then met an HTTP 404).
pub fn port_free_on_every(addresses: &[std::net::Ipv4Addr]) -> u16 {
    static HELD: std::sync::Mutex<Vec<tokio::net::TcpSocket>> = std::sync::Mutex::new(Vec::new());
    let hold = |address: std::net::Ipv4Addr, port: u16| -> std::io::Result<tokio::net::TcpSocket> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind((address, port).into())?;
        Ok(socket)
    };
    for _ in 0..100 {
        let first = hold(addresses[0], 0).expect("bind");
        let port = first.local_addr().expect("address").port();
        let others: Result<Vec<_>, _> = addresses[1..].iter().map(|address| hold(*address, port)).collect();
        if let Ok(others) = others {
            let mut held = HELD.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            held.push(first);
            held.extend(others);
            return port;
        }
    }
    panic!("no port free on every replica address");
}

/// A loopback port for a child process to listen on, held as [`port_free_on_every`] holds it.
pub fn free_port() -> u16 {
    port_free_on_every(&[std::net::Ipv4Addr::LOCALHOST])
}

/// `commerce-mesh serve <component>` with only `env` (and PATH), logging to `log`.
pub fn serve(component: &str, dir: &Path, env: &[(String, String)], log: &Path) -> tokio::process::Child {
    let log = std::fs::File::create(log).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_commerce-mesh"))
        .args(["serve", component])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().cloned())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn commerce-mesh serve")
}

/// Sends SIGTERM to `child`, as Kubernetes does to stop a pod.
pub async fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("running").to_string();
    let kill = Command::new("kill").args(["-TERM", &pid]).status().await.expect("kill runs");
    assert!(kill.success(), "kill -TERM {pid}");
}

/// Polls `probe` until it answers, within the guard (a process coming up gives no signal).
pub async fn wait_until<T, Fut: Future<Output = Option<T>>>(what: &str, mut probe: impl FnMut() -> Fut) -> T {
    tokio::time::timeout(HANG_GUARD, async {
        loop {
            if let Some(answer) = probe().await {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within {HANG_GUARD:?}"))
}
