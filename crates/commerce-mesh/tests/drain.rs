//! Drains lose nothing (issue 19): `commerce-mesh serve` processes over a
//! fresh Postgres database and Redis, under a steady REST load through the
//! gateway, stopped with SIGTERM as Kubernetes stops a pod.
//!
//! - The gateway: no request sent before its listener closed fails. When the
//!   listener closed is read off a probe that asks `/healthz` on a new
//!   connection each time, back to back: a probe answered proves the listener
//!   still accepted after the probe was sent, so every request sent before the
//!   last answered probe was sent before the close. (Requests sent after it
//!   may fail: those are the load balancer's to avoid, and the grace is there
//!   for it.) The probe also shows `/healthz` turning 503 before the close, and
//!   the load shows the gateway still serving after that.
//! - One service with two replicas, on 127.0.0.1 and 127.0.0.2, behind the
//!   gateway's `dns:///` name (resolved to both by nss_wrapper, see
//!   `support::nss_wrapper`, and still resolving to both after one stops, as a
//!   caller's cached DNS answer does): one replica is stopped and no request
//!   fails at all, while the other keeps serving.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

mod support;

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kit::db::Backend;
use kit::testing::TestDatabase;
use serde_json::json;
use support::{
    DEVELOPMENT_SECRET_ENV, HANG_GUARD, development_token, nss_wrapper, port_free_on_every, serve, sigterm, wait_until,
};
use tokio::process::Child;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "drain-test-development-secret-0123456789abcdef";
/// The grace of whatever is stopped: long enough for a load balancer here to
/// notice, short for a test.
const GRACE: &str = "1s";
/// Requests each load worker sends a second, and the workers.
const PER_WORKER_PER_SECOND: u32 = 50;
const WORKERS: usize = 4;
/// Answered requests before the stop, and after a replica has gone.
const WARM_UP: usize = 100;
const AFTERWARDS: usize = 200;
const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// One request of the load: when it was sent and how it ended.
#[derive(Clone, Debug)]
struct Sent {
    at: Instant,
    outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    /// An HTTP answer: its status and body.
    Answered(u16, String),
    /// No connection: nothing listened.
    Refused,
    /// Anything else: a connection reset or closed without an answer.
    Failed(String),
}

impl Outcome {
    async fn of(result: reqwest::Result<reqwest::Response>) -> Self {
        match result {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.text().await {
                    Ok(body) => Outcome::Answered(status, body),
                    Err(error) => Outcome::Failed(format!("{status}, then the body failed: {error:?}")),
                }
            }
            Err(error) if error.is_connect() => Outcome::Refused,
            Err(error) => Outcome::Failed(format!("{error:?}")),
        }
    }

    fn ok(&self) -> bool {
        matches!(self, Outcome::Answered(200, _))
    }
}

/// What the load sent, and how many were answered 200 so far.
struct Load {
    sent: Arc<Mutex<Vec<Sent>>>,
    answered: watch::Receiver<usize>,
    stop: CancellationToken,
    workers: JoinSet<()>,
}

impl Load {
    /// `WORKERS` tasks each sending `GET url` at a steady rate, one at a time.
    ///
    /// The client drops connections idle for longer than a quarter of the
    /// grace, as a load balancer's pool of upstream connections does: every
    /// connection it uses in the grace was answered `Connection: close` or
    /// opened during it. Its only kept-alive connections the gateway closes
    /// itself are then none: such a close races a request the client may be
    /// sending on it at that very moment (HTTP/1.1 leaves that retry to
    /// clients), which no server can prevent.
    fn start(url: String, token: String) -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_idle_timeout(Duration::from_millis(250))
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let (count, answered) = watch::channel(0);
        let count = Arc::new(count);
        let stop = CancellationToken::new();
        let mut workers = JoinSet::new();
        for _ in 0..WORKERS {
            let (client, url, token) = (client.clone(), url.clone(), token.clone());
            let (sent, count, stop) = (sent.clone(), count.clone(), stop.clone());
            workers.spawn(async move {
                let mut ticks = tokio::time::interval(Duration::from_secs(1) / PER_WORKER_PER_SECOND);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.is_cancelled() {
                    ticks.tick().await;
                    let at = Instant::now();
                    let outcome = Outcome::of(client.get(&url).bearer_auth(&token).send().await).await;
                    if outcome.ok() {
                        count.send_modify(|answered| *answered += 1);
                    }
                    sent.lock().unwrap().push(Sent { at, outcome });
                }
            });
        }
        Self { sent, answered, stop, workers }
    }

    /// Until `more` requests beyond those answered now have been answered 200.
    async fn wait_answered(&mut self, more: usize) {
        let target = *self.answered.borrow() + more;
        let answered =
            tokio::time::timeout(HANG_GUARD, self.answered.wait_for(|answered| *answered >= target)).await.map(drop);
        answered.unwrap_or_else(|_| panic!("{more} more requests answered: {:?}", self.failures()));
    }

    fn failures(&self) -> Vec<Sent> {
        self.sent.lock().unwrap().iter().filter(|sent| !sent.outcome.ok()).take(10).cloned().collect()
    }

    /// Stops the load; answers every request sent, oldest first.
    async fn stop(mut self) -> Vec<Sent> {
        self.stop.cancel();
        tokio::time::timeout(HANG_GUARD, async { while self.workers.join_next().await.is_some() {} })
            .await
            .expect("the load stops");
        let mut sent = self.sent.lock().unwrap().clone();
        sent.sort_by_key(|sent| sent.at);
        sent
    }
}

/// One `/healthz` probe on a connection of its own: when it was sent and how it ended.
#[derive(Debug)]
struct Probe {
    sent: Instant,
    answered: Instant,
    outcome: Outcome,
}

/// Probes `/healthz` on a new connection each time, back to back, until a
/// connection is refused: the listener has closed.
async fn probe_until_refused(base: String) -> Vec<Probe> {
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).build().unwrap();
    let mut probes = Vec::new();
    loop {
        let sent = Instant::now();
        let outcome = Outcome::of(client.get(format!("{base}/healthz")).send().await).await;
        let refused = outcome == Outcome::Refused;
        probes.push(Probe { sent, answered: Instant::now(), outcome });
        if refused {
            return probes;
        }
    }
}

/// The test's directory, database, Redis and processes.
struct Rig {
    dir: tempfile::TempDir,
    db: TestDatabase,
    redis_url: String,
    token: String,
    children: Vec<(String, Child)>,
}

impl Rig {
    /// A fresh database migrated for CustomerIdentity (as the migrations Job
    /// does: `serve` applies no migration), and a token for its routes.
    async fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("drain").tempdir().expect("tempdir");
        let db = TestDatabase::new(Backend::Postgres, "customer_identity").await;
        support::migrate(dir.path(), &db.config().url, "customer-identity").await;
        let redis_url = std::env::var("MESH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let token = development_token(dir.path(), SECRET, "drain-test", &["identity:read", "identity:write"]).await;
        Self { dir, db, redis_url, token, children: Vec::new() }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts `serve <component>` as `name`, with the shared settings and `env`.
    fn start(&mut self, name: &str, component: &str, env: &[(&str, String)]) {
        let shared = [
            ("MESH_DATABASE_URL", self.db.config().url.clone()),
            ("MESH_REDIS_URL", self.redis_url.clone()),
            ("MESH_DATA_DIR", self.path().join(format!("data-{name}")).display().to_string()),
            (DEVELOPMENT_SECRET_ENV, SECRET.into()),
            ("MESH_CUSTOMER_IDENTITY__RETIREMENT_SALT", "drain-test-retirement-salt".into()),
            ("MESH_SERVE__SHUTDOWN_GRACE", GRACE.into()),
            ("MESH_SERVE__DRAIN_TIMEOUT", "10s".into()),
            ("MESH_TELEMETRY__LOG_FILTER", "info".into()),
        ];
        let env: Vec<(String, String)> =
            shared.iter().chain(env).map(|(key, value)| (key.to_string(), value.clone())).collect();
        let child = serve(component, self.path(), &env, &self.log(name));
        self.children.push((name.to_string(), child));
    }

    fn log(&self, name: &str) -> std::path::PathBuf {
        self.path().join(format!("{name}.log"))
    }

    fn child(&mut self, name: &str) -> &mut Child {
        &mut self.children.iter_mut().find(|(n, _)| n == name).expect("started").1
    }

    /// Starts a CustomerIdentity replica on `address:port` and waits until it serves.
    async fn start_replica(&mut self, name: &str, address: Ipv4Addr, port: u16, admin_port: u16) {
        self.start(
            name,
            "customer-identity",
            &[
                ("MESH_CUSTOMER_IDENTITY__LISTEN", format!("{address}:{port}")),
                ("MESH_CUSTOMER_IDENTITY__ADMIN_LISTEN", format!("{address}:{admin_port}")),
            ],
        );
        support::wait_serving(&format!("http://{address}:{port}")).await;
    }

    /// Starts the gateway with CustomerIdentity at `identity_url` and `env`;
    /// once it answers, links the customer the load reads. Answers its base URL.
    async fn start_gateway(&mut self, identity_url: &str, env: &[(&str, String)]) -> String {
        let port = port_free_on_every(&[LOCALHOST]);
        let mut all = vec![
            ("MESH_GATEWAY__LISTEN", format!("127.0.0.1:{port}")),
            ("MESH_GATEWAY__ADMIN_LISTEN", format!("127.0.0.1:{}", port_free_on_every(&[LOCALHOST]))),
            ("MESH_GATEWAY__CUSTOMER_IDENTITY_URL", identity_url.to_string()),
            ("MESH_GATEWAY__REQUEST_TIMEOUT", "10s".into()),
        ];
        all.extend(env.iter().cloned());
        self.start("gateway", "gateway", &all);
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let url = format!("{base}/v1/customers/{}", customer());
        let body = json!({"lms_user_id": "4711", "lms_username": format!("drain-{}", &customer()[6..18])});
        let mut last = None;
        let linked = tokio::time::timeout(HANG_GUARD, async {
            loop {
                let answer = client.put(&url).bearer_auth(&self.token).json(&body).send().await;
                match Outcome::of(answer).await {
                    Outcome::Answered(200, _) => return,
                    Outcome::Answered(status, body) if status < 500 => panic!("linking refused: {status} {body}"),
                    outcome => last = Some(outcome),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(linked.is_ok(), "the gateway links the customer; last: {last:?}\n{}", self.logs_tail());
        base
    }

    /// The last lines of every process's log, for a failure message.
    fn logs_tail(&self) -> String {
        let mut text = String::new();
        for (name, _) in &self.children {
            let log = std::fs::read_to_string(self.log(name)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            text.push_str(&format!("--- {name}\n{}\n", lines[lines.len().saturating_sub(15)..].join("\n")));
        }
        text
    }
}

/// The customer the load reads, one per test process.
fn customer() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| format!("drain-{}", uuid::Uuid::new_v4().simple())).clone()
}

/// How the RPC `method` was answered on a component's admin port, summed over every status.
async fn calls_served(admin: &str, method: &str) -> u64 {
    let Ok(answer) = reqwest::get(format!("{admin}/metrics")).await else { return 0 };
    let text = answer.text().await.unwrap_or_default();
    text.lines()
        .filter(|line| {
            line.starts_with("rpc_server_requests_total{") && line.contains(&format!("rpc_method=\"{method}\""))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test]
async fn sigterm_to_the_gateway_fails_no_request_sent_before_its_listener_closed() {
    let mut rig = Rig::new().await;
    let port = port_free_on_every(&[LOCALHOST]);
    rig.start_replica("customer-identity", LOCALHOST, port, port_free_on_every(&[LOCALHOST])).await;
    let base = rig.start_gateway(&format!("http://127.0.0.1:{port}"), &[]).await;

    let mut load = Load::start(format!("{base}/v1/customers/{}", customer()), rig.token.clone());
    load.wait_answered(WARM_UP).await;
    let probes = tokio::spawn(probe_until_refused(base.clone()));
    sigterm(rig.child("gateway")).await;
    let probes = tokio::time::timeout(HANG_GUARD, probes).await.expect("the listener closes").unwrap();
    let exit = tokio::time::timeout(HANG_GUARD, rig.child("gateway").wait()).await.expect("exits").unwrap();
    let sent = load.stop().await;
    let logs = rig.logs_tail();
    assert!(exit.success(), "the gateway exits 0 after SIGTERM: {exit:?}\n{logs}");

    // The listener accepted every answered probe after it was sent.
    let last_answered = probes.iter().rev().find(|probe| matches!(probe.outcome, Outcome::Answered(..)));
    let still_open = last_answered.expect("a probe answered before the close").sent;
    let not_ready = probes.iter().find(|probe| matches!(probe.outcome, Outcome::Answered(503, _)));
    let not_ready = not_ready.unwrap_or_else(|| panic!("/healthz answered 503 before the close: {probes:?}\n{logs}"));
    let statuses: Vec<u16> = probes
        .iter()
        .filter_map(|probe| match probe.outcome {
            Outcome::Answered(status, _) => Some(status),
            _ => None,
        })
        .collect();
    let turned = statuses.iter().position(|status| *status == 503).unwrap();
    assert!(
        statuses[..turned].iter().all(|s| *s == 200) && statuses[turned..].iter().all(|s| *s == 503),
        "/healthz: ok, then 503 until the close: {statuses:?}"
    );

    let before: Vec<&Sent> = sent.iter().filter(|sent| sent.at < still_open).collect();
    let failed: Vec<&&Sent> = before.iter().filter(|sent| !sent.outcome.ok()).collect();
    let while_draining = before.iter().filter(|sent| sent.at > not_ready.answered && sent.outcome.ok()).count();
    let after = sent.len() - before.len();
    let failed_after = sent.iter().filter(|sent| sent.at >= still_open && !sent.outcome.ok()).count();
    let refused_after = sent.iter().filter(|sent| sent.at >= still_open && sent.outcome == Outcome::Refused).count();
    eprintln!(
        "{} requests sent before the listener closed ({while_draining} of them after /healthz turned 503), \
         {} failed; {after} sent from the last answered probe on, {failed_after} failed ({refused_after} refused a \
         connection); {} probes",
        before.len(),
        failed.len(),
        probes.len()
    );
    assert!(failed.is_empty(), "requests sent before the listener closed failed: {failed:?}\n{logs}");
    assert!(before.len() >= WARM_UP, "the load ran before the stop");
    assert!(while_draining > 0, "the gateway kept serving after it reported not ready\n{logs}");
    assert!(after > 0, "the load ran until the listener closed");
}

#[tokio::test]
async fn sigterm_to_one_of_two_replicas_fails_no_request_while_the_other_serves() {
    const NAME: &str = "customer-identity.drain.test";
    let replicas = [LOCALHOST, Ipv4Addr::new(127, 0, 0, 2)];
    let mut rig = Rig::new().await;
    let port = port_free_on_every(&replicas);
    let admin_port = port_free_on_every(&replicas);
    for (i, address) in replicas.iter().enumerate() {
        rig.start_replica(&format!("replica-{i}"), *address, port, admin_port).await;
    }
    let hosts = rig.path().join("hosts");
    std::fs::write(&hosts, replicas.iter().map(|address| format!("{address} {NAME}\n")).collect::<String>())
        .expect("hosts file");
    let resolver =
        [("LD_PRELOAD", nss_wrapper().display().to_string()), ("NSS_WRAPPER_HOSTS", hosts.display().to_string())];
    let base = rig.start_gateway(&format!("dns:///{NAME}:{port}"), &resolver).await;

    let mut load = Load::start(format!("{base}/v1/customers/{}", customer()), rig.token.clone());
    load.wait_answered(WARM_UP).await;
    let stopped_admin = format!("http://{}:{admin_port}", replicas[1]);
    wait_until("the replica to stop takes calls", || {
        let admin = stopped_admin.clone();
        async move { (calls_served(&admin, "GetCustomer").await > 0).then_some(()) }
    })
    .await;

    sigterm(rig.child("replica-1")).await;
    let exit = tokio::time::timeout(HANG_GUARD, rig.child("replica-1").wait()).await.expect("exits").unwrap();
    // The gateway goes on resolving the name to both addresses, one of them closed now.
    load.wait_answered(AFTERWARDS).await;
    let sent = load.stop().await;
    let logs = rig.logs_tail();
    assert!(exit.success(), "the replica exits 0 after SIGTERM: {exit:?}\n{logs}");
    assert!(matches!(rig.child("replica-0").try_wait(), Ok(None)), "the other replica still runs\n{logs}");

    let failed: Vec<&Sent> = sent.iter().filter(|sent| !sent.outcome.ok()).collect();
    eprintln!("{} requests sent, {} failed", sent.len(), failed.len());
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, first {:?}\n{logs}",
        failed.len(),
        sent.len(),
        &failed[..failed.len().min(5)]
    );
}
