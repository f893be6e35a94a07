//! The mesh as separate processes on this machine, with a PostgreSQL cluster
//! and a Redis server of its own, so each can be killed and restarted without
//! touching anything else: `commerce-mesh serve <component>` per component, on
//! loopback ports fixed for the whole run (a restarted component comes back
//! where its callers expect it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use commerce_mesh::Component;
use tokio::process::{Child, Command};

/// Guards against a hang, not a timing assertion: generous on purpose.
pub const GUARD: Duration = Duration::from_secs(90);

/// The development secret the gateway accepts tokens signed with.
pub const GATEWAY_SECRET: &str = "faults-suite-gateway-development-secret";

pub use super::support::free_port;

/// A PostgreSQL cluster of its own (initdb into a temporary directory, run as
/// the `postgres` user), which can be crashed (`pg_ctl stop -m immediate`)
/// and started again on the same port.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl PrivatePostgres {
    /// Creates and starts a cluster.
    pub async fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's binaries in /usr/lib/postgresql (scripts/services installs them)")
            .map(|entry| entry.expect("entry").path().join("bin"))
            .filter(|bin| bin.join("initdb").exists())
            .max()
            .expect("an initdb");
        let dir = tempfile::Builder::new().prefix("faults-pg").tempdir().expect("tempdir");
        as_postgres(Command::new("chown").arg("postgres").arg(dir.path())).await;
        let postgres = Self { port: free_port(), dir, bin };
        postgres.pg(&["initdb", "-D", &postgres.data(), "-A", "trust", "-U", "postgres", "--no-sync"]).await;
        postgres.start_again().await;
        postgres
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// `postgres://...` for the `postgres` database of this cluster.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    async fn pg(&self, args: &[&str]) {
        let tool = self.bin.join(args[0]);
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(tool).args(&args[1..]);
        as_postgres(&mut command).await;
    }

    /// Starts the (stopped) cluster, waiting until it accepts connections.
    pub async fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        self.pg(&["pg_ctl", "-D", &self.data(), "-o", &options, "-l", &log, "-w", "start"]).await;
    }

    /// Stops the cluster the way a crash would: no checkpoint, recovery from
    /// the write-ahead log at the next start.
    pub async fn crash(&self) {
        self.pg(&["pg_ctl", "-D", &self.data(), "-m", "immediate", "-w", "stop"]).await;
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

async fn as_postgres(command: &mut Command) {
    let output = command.stdin(Stdio::null()).output().await.expect("run a PostgreSQL tool");
    assert!(
        output.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A Redis server of its own with the append-only file on, which can be killed
/// (SIGKILL) and started again on the same port and file.
pub struct PrivateRedis {
    dir: tempfile::TempDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts a server.
    pub async fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("faults-redis").tempdir().expect("tempdir");
        let mut redis = Self { dir, port: free_port(), child: None };
        redis.start_again().await;
        redis
    }

    /// `redis://...` of this server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the (stopped) server on its port and append-only file.
    pub async fn start_again(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "everysec", "--dir"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (scripts/services installs it)");
        self.child = Some(child);
        // It answers PING once it has loaded the append-only file.
        let url = self.url();
        wait_until("Redis answers PING", || {
            let url = url.clone();
            async move {
                let client = redis::Client::open(url).ok()?;
                let mut connection = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("PING").query_async::<String>(&mut connection).await.ok()
            }
        })
        .await;
    }

    /// Kills the server (SIGKILL): what it acknowledged is in the append-only
    /// file's page cache already, as after a process crash.
    pub async fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().expect("kill redis");
            child.wait().await.expect("redis exits");
        }
    }
}

/// Polls `probe` until it answers, within [`GUARD`]: for things that give no
/// signal (a server coming up), never as a timing assertion.
pub async fn wait_until<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    tokio::time::timeout(GUARD, async {
        loop {
            if let Some(answer) = probe().await {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within {GUARD:?}"))
}

/// Every component as a process of its own.
pub struct MeshProcesses {
    bin: PathBuf,
    dir: tempfile::TempDir,
    env: BTreeMap<String, String>,
    ports: BTreeMap<Component, (u16, u16)>,
    children: BTreeMap<Component, Child>,
    /// How many times each component was started.
    pub starts: BTreeMap<Component, u32>,
}

impl MeshProcesses {
    /// Starts every component against `database_url` and `redis_url`, with
    /// Fulfillment enrolling into `lms_url`; waits until each serves.
    pub async fn start(database_url: &str, redis_url: &str, lms_url: &str) -> Self {
        let ports: BTreeMap<Component, (u16, u16)> =
            Component::ALL.into_iter().map(|c| (c, (free_port(), free_port()))).collect();
        let grpc = |c: Component| format!("http://127.0.0.1:{}", ports[&c].0);
        let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut env = BTreeMap::from([
            ("MESH_DATABASE_URL".to_string(), database_url.to_string()),
            ("MESH_REDIS_URL".into(), redis_url.into()),
            ("MESH_AUTH__DEVELOPMENT_SECRET".into(), GATEWAY_SECRET.into()),
            ("MESH_GATEWAY__REQUEST_TIMEOUT".into(), "5s".into()),
            ("MESH_GATEWAY__FULFILLMENT_URL".into(), grpc(Component::Fulfillment)),
            ("MESH_GATEWAY__CUSTOMER_IDENTITY_URL".into(), grpc(Component::CustomerIdentity)),
            ("MESH_GATEWAY__CATALOG_INGEST_URL".into(), grpc(Component::CatalogIngest)),
            ("MESH_GATEWAY__PURCHASE_HISTORY_URL".into(), grpc(Component::PurchaseHistory)),
            ("MESH_FULFILLMENT__CUSTOMER_IDENTITY_URL".into(), grpc(Component::CustomerIdentity)),
            ("MESH_FULFILLMENT__CATALOG_URL".into(), grpc(Component::CatalogIngest)),
            ("MESH_PURCHASE_HISTORY__CUSTOMER_IDENTITY_URL".into(), grpc(Component::CustomerIdentity)),
            ("MESH_FULFILLMENT__LMS__URL".into(), lms_url.into()),
            ("MESH_FULFILLMENT__LMS__CLIENT_ID".into(), commerce_mesh::dev_lms::CLIENT_ID.into()),
            ("MESH_FULFILLMENT__LMS__CLIENT_SECRET".into(), commerce_mesh::dev_lms::CLIENT_SECRET.into()),
            // A killed worker's jobs are taken over once their lease runs out.
            ("MESH_FULFILLMENT__WORKERS__LEASE".into(), "3s".into()),
            ("MESH_FULFILLMENT__WORKERS__IDLE_POLL".into(), "100ms".into()),
            ("MESH_FULFILLMENT__RETRY__BASE".into(), "100ms".into()),
            ("MESH_FULFILLMENT__RETRY__CAP".into(), "1s".into()),
            ("MESH_FULFILLMENT__RETRY__MAX_ATTEMPTS".into(), "40".into()),
            // A killed consumer's unacknowledged purchases are reclaimed by the next one.
            ("MESH_PURCHASE_HISTORY__CONSUMER__RECLAIM_IDLE".into(), "2s".into()),
            ("MESH_PURCHASE_HISTORY__CONSUMER__RECLAIM_EVERY".into(), "500ms".into()),
            (
                "MESH_CATALOG_INGEST__SOURCES_DIR".into(),
                repository.join("config/catalog/sources").display().to_string(),
            ),
            ("MESH_SERVE__DRAIN_TIMEOUT".into(), "1s".into()),
            // `serve customer-identity` on Postgres refuses the development salt.
            ("MESH_CUSTOMER_IDENTITY__RETIREMENT_SALT".into(), "faults-suite-retirement-salt".into()),
            ("MESH_TELEMETRY__LOG_FILTER".into(), "info".into()),
        ]);
        for (component, (port, admin)) in &ports {
            let module = component.module().to_uppercase();
            env.insert(format!("MESH_{module}__LISTEN"), format!("127.0.0.1:{port}"));
            env.insert(format!("MESH_{module}__ADMIN_LISTEN"), format!("127.0.0.1:{admin}"));
        }
        let dir = tempfile::Builder::new().prefix("faults-mesh").tempdir().expect("tempdir");
        env.insert("MESH_DATA_DIR".into(), dir.path().join("data").display().to_string());
        let mut mesh = Self {
            bin: PathBuf::from(env!("CARGO_BIN_EXE_commerce-mesh")),
            dir,
            env,
            ports,
            children: BTreeMap::new(),
            starts: BTreeMap::new(),
        };
        // As the migrations Job would: `serve` applies none.
        crate::support::migrate(mesh.dir.path(), database_url, "all").await;
        for component in Component::ALL {
            mesh.spawn(component);
        }
        for component in Component::ALL {
            mesh.wait_serving(component).await;
        }
        mesh
    }

    /// The gateway's base URL.
    pub fn gateway_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[&Component::Gateway].0)
    }

    /// `http://127.0.0.1:<port>` of a service's gRPC server.
    pub fn grpc_url(&self, component: Component) -> String {
        format!("http://127.0.0.1:{}", self.ports[&component].0)
    }

    /// Where a component's log lines go (stdout and stderr, every start appended).
    pub fn log_path(&self, component: Component) -> PathBuf {
        self.dir.path().join(format!("{}.log", component.name()))
    }

    fn spawn(&mut self, component: Component) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(component)).expect("log file");
        let child = Command::new(&self.bin)
            .args(["serve", component.name()])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(&self.env)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn commerce-mesh serve");
        self.children.insert(component, child);
        *self.starts.entry(component).or_default() += 1;
    }

    /// Whether the process of `component` is still the one started last (it
    /// has not exited).
    pub fn still_running(&mut self, component: Component) -> bool {
        self.children.get_mut(&component).is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// `kill -9` of the component, then waits for it to be gone.
    pub async fn kill9(&mut self, component: Component) {
        let mut child = self.children.remove(&component).expect("running");
        child.start_kill().expect("SIGKILL");
        child.wait().await.expect("exits");
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the component's process: it keeps
    /// its connections and answers nothing while frozen, like a stalled peer.
    pub async fn signal(&mut self, component: Component, signal: &str) {
        let pid = self.children.get(&component).and_then(Child::id).expect("running");
        let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().await.expect("kill");
        assert!(status.success(), "kill -{signal} {component}");
    }

    /// Starts the component again (on the same ports) and waits until it serves.
    pub async fn restart(&mut self, component: Component) {
        self.spawn(component);
        self.wait_serving(component).await;
    }

    /// Until the component answers SERVING (gRPC health) or, for the
    /// gateway, `/healthz`.
    pub async fn wait_serving(&self, component: Component) {
        let (port, _) = self.ports[&component];
        if component == Component::Gateway {
            let url = format!("http://127.0.0.1:{port}/healthz");
            wait_until("the gateway answers /healthz", || {
                let url = url.clone();
                async move { reqwest::get(&url).await.ok().filter(|r| r.status().is_success()) }
            })
            .await;
            return;
        }
        super::support::wait_serving(&format!("http://127.0.0.1:{port}")).await;
    }

    /// Every component's log, for the failure message of a test.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        for component in Component::ALL {
            let log = std::fs::read_to_string(self.log_path(component)).unwrap_or_default();
            let all: Vec<&str> = log.lines().collect();
            text.push_str(&format!("--- {component}\n"));
            for line in &all[all.len().saturating_sub(lines)..] {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }
}
