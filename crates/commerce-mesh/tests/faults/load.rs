//! A steady load through the REST gateway, as an external backend sends it:
//! orders, purchases and catalog events at fixed rates, each re-sent with the
//! same identity until it is accepted (so a request whose answer was lost in a
//! crash is retried, as a careful caller would), and a ledger of what was
//! accepted and how every attempt was answered.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The course run every order line enrolls in (no catalog check is configured).
pub const COURSE_RUN: &str = "course-v1:FaultsX+Chaos101+2026";
/// The catalog source the load's events come from (one of the two examples).
pub const SOURCE: &str = "exec-ed-partner";
/// Line items per order.
pub const LINES: usize = 2;
/// Customers the orders are spread over.
pub const CUSTOMERS: usize = 20;

/// Attempts per item before it is abandoned (counted, never silently).
const MAX_ATTEMPTS: u32 = 600;
/// Pause between attempts of one item.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What was sent and what was accepted.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// Accepted orders: number → line item ids.
    pub orders: BTreeMap<String, Vec<String>>,
    /// Accepted purchase ids.
    pub purchases: BTreeSet<String>,
    /// Accepted catalog event ids, with the state the ingestion answered.
    pub events: BTreeMap<String, String>,
    /// Requests sent (every attempt).
    pub requests: u64,
    /// Answers by HTTP status.
    pub statuses: BTreeMap<u16, u64>,
    /// Attempts that got no HTTP answer (connection refused or reset, timeout).
    pub transport_errors: u64,
    /// Items refused with a 4xx other than 429 (a fault of the load, not of the mesh).
    pub refused: Vec<String>,
    /// Items still not accepted after every attempt.
    pub abandoned: Vec<String>,
    /// The first few answers that were server errors other than 502-504, in full.
    pub server_error_samples: Vec<String>,
}

impl Ledger {
    /// Answers with a 5xx status other than 502, 503 and 504 (which a caller
    /// is told to retry while a component or dependency is down).
    pub fn server_errors(&self) -> u64 {
        self.statuses.iter().filter(|(s, _)| **s >= 500 && ![502, 503, 504].contains(*s)).map(|(_, n)| n).sum()
    }

    /// Answers 502, 503 or 504.
    pub fn unavailable(&self) -> u64 {
        self.statuses.iter().filter(|(s, _)| [502, 503, 504].contains(*s)).map(|(_, n)| n).sum()
    }
}

/// The load generator.
#[derive(Clone)]
pub struct Load {
    client: reqwest::Client,
    base: String,
    token: String,
    /// Makes this run's ids unique.
    pub run: String,
    /// What happened so far.
    pub ledger: Arc<Mutex<Ledger>>,
}

/// Items per second of each kind.
#[derive(Clone, Copy, Debug)]
pub struct Rates {
    /// Orders per second.
    pub orders: u32,
    /// Purchases per second.
    pub purchases: u32,
    /// Catalog events per second.
    pub events: u32,
}

impl Load {
    /// A generator against the gateway at `base`, with a token carrying every scope.
    pub fn new(base: String) -> Self {
        let mut config = commerce_mesh::MeshConfig::default();
        config.auth.development_secret = Some(kit::auth::Secret::new(super::cluster::GATEWAY_SECRET.to_string()));
        let scopes = commerce_mesh::dev_tokens::every_scope();
        let token = commerce_mesh::dev_tokens::mint(&config, "faults-suite", scopes, Duration::from_secs(3600))
            .expect("a development token");
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
        let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        Self { client, base, token, run, ledger: Arc::default() }
    }

    /// Links the customers the orders name.
    pub async fn link_customers(&self) {
        for i in 0..CUSTOMERS {
            let body = json!({
                "lms_user_id": (1_000 + i).to_string(),
                "lms_username": format!("learner-{}-{i}", self.run),
                "email": format!("learner{i}@example.org"),
            });
            let path = format!("/v1/customers/{}", self.customer(i));
            assert!(self.until_accepted(Method::PUT, &path, body).await.is_some(), "customer {i} linked");
        }
    }

    /// One request through the gateway, answered as it came (no retry): the
    /// HTTP status and the JSON body, or None when no answer came.
    pub async fn send(&self, method: Method, path: &str, body: Option<Value>) -> Option<(u16, Value)> {
        let mut request = self.client.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.unwrap_or_default()))
    }

    /// The commerce customer id of learner `i` (linked by [`Load::link_customers`]) and their LMS user id.
    pub fn learner(&self, i: usize) -> (String, String) {
        (self.customer(i), (1_000 + i % CUSTOMERS).to_string())
    }

    fn customer(&self, i: usize) -> String {
        format!("fc-{}-{}", self.run, i % CUSTOMERS)
    }

    /// Sends `body` until a 2xx answer (returned), a 4xx other than 429
    /// (recorded as refused), or [`MAX_ATTEMPTS`] (recorded as abandoned).
    async fn until_accepted(&self, method: Method, path: &str, body: Value) -> Option<Value> {
        for _ in 0..MAX_ATTEMPTS {
            let sent = self
                .client
                .request(method.clone(), format!("{}{path}", self.base))
                .bearer_auth(&self.token)
                .json(&body)
                .send()
                .await;
            let answer = match sent {
                Ok(response) => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    Some((status, text))
                }
                Err(_) => None,
            };
            {
                let mut ledger = self.ledger.lock().expect("ledger");
                ledger.requests += 1;
                match &answer {
                    Some((status, _)) => *ledger.statuses.entry(status.as_u16()).or_default() += 1,
                    None => ledger.transport_errors += 1,
                }
            }
            if let Some((status, text)) = &answer
                && status.is_server_error()
                && ![502, 503, 504].contains(&status.as_u16())
            {
                let mut ledger = self.ledger.lock().expect("ledger");
                if ledger.server_error_samples.len() < 10 {
                    ledger.server_error_samples.push(format!("{method} {path}: {status} {text}"));
                }
            }
            match answer {
                Some((status, text)) if status.is_success() => {
                    return Some(serde_json::from_str(&text).unwrap_or_default());
                }
                Some((status, text)) if status.is_client_error() && status.as_u16() != 429 => {
                    self.ledger.lock().expect("ledger").refused.push(format!("{method} {path}: {status} {text}"));
                    return None;
                }
                _ => tokio::time::sleep(RETRY_PAUSE).await,
            }
        }
        self.ledger.lock().expect("ledger").abandoned.push(format!("{method} {path}"));
        None
    }

    async fn order(&self, i: u64) {
        let number = format!("FO-{}-{i}", self.run);
        let lines: Vec<String> = (1..=LINES).map(|l| l.to_string()).collect();
        let body = json!({
            "date_placed": (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339(),
            "source_system": "faults-suite",
            "learner": {"customer_id": self.customer(i as usize)},
            "line_items": lines.iter().map(|line| json!({
                "line_item_id": line,
                "course_run": {"course_run_key": COURSE_RUN, "mode": "verified"},
                "title": "Chaos engineering",
                "price": {"currency_code": "USD", "amount": "10.00"},
            })).collect::<Vec<_>>(),
        });
        if self.until_accepted(Method::POST, &format!("/v1/orders/{number}:fulfill"), body).await.is_some() {
            self.ledger.lock().expect("ledger").orders.insert(number, lines);
        }
    }

    async fn purchase(&self, i: u64) {
        let id = format!("fp-{}-{i}", self.run);
        let learner = (i as usize) % CUSTOMERS;
        let body = json!({
            "purchase_id": id,
            "lms_user_id": (1_000 + learner).to_string(),
            "username": format!("learner-{}-{learner}", self.run),
            "order_number": format!("FP-{}-{i}", self.run),
            "product_key": COURSE_RUN,
            "title": "Chaos engineering",
            "price": {"currency_code": "USD", "amount": "5.00"},
            "purchased_at": (chrono::Utc::now() - chrono::Duration::seconds(1)).to_rfc3339(),
            "source": "faults-suite",
        });
        if self.until_accepted(Method::POST, "/v1/purchases", body).await.is_some() {
            self.ledger.lock().expect("ledger").purchases.insert(id);
        }
    }

    async fn event(&self, i: u64) {
        let id = format!("fe-{}-{i}", self.run);
        let payload: Value = serde_json::from_str(include_str!(
            "../../../../config/catalog/sources/examples/exec-ed-partner/course.upserted.json"
        ))
        .expect("example payload");
        let body = json!({
            "event_id": id,
            "event_name": "course.upserted",
            // Later events are newer; two sent at once may still arrive in
            // either order, and the older is then skipped as stale.
            "occurred_at": (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339(),
            "payload": payload,
        });
        if let Some(answer) = self.until_accepted(Method::POST, &format!("/v1/sources/{SOURCE}/events"), body).await {
            let state = answer["ingestion"]["state"].as_str().unwrap_or_default().to_string();
            self.ledger.lock().expect("ledger").events.insert(id, state);
        }
    }

    /// Sends at `rates` until `stop`, then waits for every item in flight to
    /// be accepted, refused or abandoned.
    pub async fn run(&self, rates: Rates, stop: CancellationToken) {
        let kinds: [(u32, u8); 3] = [(rates.orders, 0), (rates.purchases, 1), (rates.events, 2)];
        let mut tickers = JoinSet::new();
        for (rate, kind) in kinds.into_iter().filter(|(rate, _)| *rate > 0) {
            let load = self.clone();
            let stop = stop.clone();
            tickers.spawn(async move {
                let mut items = JoinSet::new();
                let mut interval = tokio::time::interval(Duration::from_secs(1) / rate);
                let mut i = 0;
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = interval.tick() => {}
                    }
                    let load = load.clone();
                    items.spawn(async move {
                        match kind {
                            0 => load.order(i).await,
                            1 => load.purchase(i).await,
                            _ => load.event(i).await,
                        }
                    });
                    i += 1;
                }
                items.join_all().await;
            });
        }
        while let Some(done) = tickers.join_next().await {
            done.expect("a load task panicked");
        }
    }
}
