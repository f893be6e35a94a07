//! The mesh's configuration: defaults, then an optional TOML file
//! (`--config` or `MESH_CONFIG`), then `MESH_*` environment variables.
//! A variable's value that reads as a number or `true`/`false` is taken as
//! one; where text is wanted (a secret of digits), put it in double quotes:
//! `MESH_AUTH__DEVELOPMENT_SECRET='"0123..."'`.
//!
//! | key | environment | default |
//! |---|---|---|
//! | `data_dir` | `MESH_DATA_DIR` | `./data` (SQLite files, one per service) |
//! | `database_url` | `MESH_DATABASE_URL` | unset: SQLite; a `postgres://` URL puts every service in a schema of its own there |
//! | `redis_url` | `MESH_REDIS_URL` | unset: in-process caches and the event log in `data_dir/events.db`; a `redis://` URL puts caches and event streams in Redis |
//! | `bus.dedupe_window` | `MESH_BUS__DEDUPE_WINDOW` | `7d`: a published event id is remembered this long (publishing it again appends nothing); entries of a stream no consumer group reads are kept as long |
//! | `bus.max_len` | `MESH_BUS__MAX_LEN` | `2000000` entries per stream at most (about), even unread ones: the safety net against a consumer group that stopped reading |
//! | `bus.dead_letter_window` | `MESH_BUS__DEAD_LETTER_WINDOW` | `7d`: dead letters are kept this long |
//! | `bus.trim_every` | `MESH_BUS__TRIM_EVERY` | `30s`: each component trims the streams it uses (acknowledged entries, expired ids and dead letters) this often |
//! | `fulfillment.lms.url` | `MESH_FULFILLMENT__LMS__URL` | `http://127.0.0.1:18000` |
//! | `fulfillment.lms.client_id`, `.client_secret` | `MESH_FULFILLMENT__LMS__CLIENT_ID`, `..._SECRET` | empty: the LMS's OAuth2 client |
//! | `fulfillment.lms.request_timeout` | `MESH_FULFILLMENT__LMS__REQUEST_TIMEOUT` | `10s` (connect: `lms.connect_timeout`, `2s`) |
//! | `fulfillment.retry.base`, `.cap`, `.max_attempts` | `MESH_FULFILLMENT__RETRY__BASE`, ... | `2s`, `10m`, `8` |
//! | `fulfillment.workers.concurrency` | `MESH_FULFILLMENT__WORKERS__CONCURRENCY` | `128` LMS calls in flight: at least the target rate × (LMS latency + ~40 ms); lease `workers.lease`, `60s` |
//! | `catalog_ingest.sources_dir` | `MESH_CATALOG_INGEST__SOURCES_DIR` | `config/catalog/sources` (absent: the two built-in example sources) |
//! | `catalog_ingest.max_concurrent_ingests` | `MESH_CATALOG_INGEST__MAX_CONCURRENT_INGESTS` | `32` (then wait up to `max_queue_wait`, `250ms`, then shed) |
//! | `catalog_ingest.quota.expected_replicas` | `MESH_CATALOG_INGEST__QUOTA__EXPECTED_REPLICAS` | `1`; with `redis_url` each source's quota is shared by every replica through Redis, and while Redis does not answer each replica admits the quota divided by this (`quota.redis_timeout` `200ms`, tried again every `quota.retry_every` `1s`; keys `quota.key_prefix` + source, `quota:`) |
//! | `catalog_ingest.discovery.url` | `MESH_CATALOG_INGEST__DISCOVERY__URL` | unset: no downstream calls |
//! | `purchase_history.consumer.batch` | `MESH_PURCHASE_HISTORY__CONSUMER__BATCH` | `1000` entries per read (`consumer.reclaim_idle` `30s`, `consumer.max_deliveries` `5`, then dead-lettered) |
//! | `purchase_history.customer_identity_url` | `MESH_PURCHASE_HISTORY__CUSTOMER_IDENTITY_URL` | `http://127.0.0.1:50052` (`up` uses its own) |
//! | `fulfillment.check_course_runs` | `MESH_FULFILLMENT__CHECK_COURSE_RUNS` | `false`; `true`: only runs the catalog sells in the mode bought, open for enrollment (before their `enrollment_end_time`, else their end), are accepted (`fulfillment.catalog_url`, `http://127.0.0.1:50053`; `up` uses its own) |
//! | `fulfillment.customer_identity_url` | `MESH_FULFILLMENT__CUSTOMER_IDENTITY_URL` | `http://127.0.0.1:50052` (`up` uses its own) |
//! | `fulfillment.outbox.retention` | `MESH_FULFILLMENT__OUTBOX__RETENTION` | `7d`: published outbox rows are deleted this long after publishing (`outbox.prune_every`, `1m`) |
//! | `fulfillment.webhooks.<source_system>.url`, `.secret` | `MESH_FULFILLMENT__WEBHOOKS__<SOURCE_SYSTEM>__URL`, `..._SECRET` | none: each line's SUCCEEDED, FAILED, REVOKED and REVOKE_FAILED POSTed to the order's source system (compared without case), signed with the secret (16+ characters, never logged; `X-Commerce-Mesh-Signature`, docs/OPERATIONS.md) |
//! | `fulfillment.webhook_delivery.retry.base`, `.cap`, `.max_attempts` | `MESH_FULFILLMENT__WEBHOOK_DELIVERY__RETRY__BASE`, ... | `2s`, `15m`, `30` (408/429/5xx, timeouts, connection failures retried; other answers given up); `webhook_delivery.request_timeout` `10s`, `.connect_timeout` `2s`, `.concurrency` `16`, `.lease` `60s`, `.poll` `1s`, `.retention` `7d` |
//! | `customer_identity.retirement_salt` | `MESH_CUSTOMER_IDENTITY__RETIREMENT_SALT` | a development value (warned about) |
//! | `customer_identity.cache.ttl` | `MESH_CUSTOMER_IDENTITY__CACHE__TTL` | `5m` (misses: `cache.negative_ttl`, `5s`) |
//! | `<service>.listen` | `MESH_FULFILLMENT__LISTEN`, ... | `127.0.0.1:50051` to `:50054` |
//! | `<service>.admin_listen` | `MESH_FULFILLMENT__ADMIN_LISTEN`, ... | `127.0.0.1:9051` to `:9054`: `/metrics` and `/healthz` of `serve <service>` |
//! | `<service>.database.url` | `MESH_FULFILLMENT__DATABASE__URL`, ... | unset: as above |
//! | `<service>.database.statement_timeout` | `MESH_FULFILLMENT__DATABASE__STATEMENT_TIMEOUT`, ... | `10s`: Postgres cancels a statement (lock waits included) past it; `0s` turns it off; migrations run without it. Without `database.url` it applies to the shared database |
//! | `<service>.database.ping_after_idle` | `MESH_FULFILLMENT__DATABASE__PING_AFTER_IDLE`, ... | `1s`: a pooled connection idle this long is pinged before use; one in steady use is not; `0s` pings at every checkout |
//! | `gateway.listen` | `MESH_GATEWAY__LISTEN` | `127.0.0.1:8080` |
//! | `gateway.admin_listen` | `MESH_GATEWAY__ADMIN_LISTEN` | `127.0.0.1:9080`: the admin port of `serve gateway` |
//! | `gateway.fulfillment_url`, `.customer_identity_url`, `.catalog_ingest_url`, `.purchase_history_url` | `MESH_GATEWAY__FULFILLMENT_URL`, ... | `http://127.0.0.1:50051` to `:50054` (`up` uses its own); `dns:///host:port` balances across every address of a headless service |
//! | `gateway.request_timeout` | `MESH_GATEWAY__REQUEST_TIMEOUT` | `30s`, passed on as the gRPC deadline (504 when it passes) |
//! | `gateway.max_body_bytes` | `MESH_GATEWAY__MAX_BODY_BYTES` | `1048576` (larger bodies: 413) |
//! | `gateway.max_concurrent_requests` | `MESH_GATEWAY__MAX_CONCURRENT_REQUESTS` | `1024` in flight; more wait `gateway.queue_timeout` (`500ms`), then 503. Taken only once a request is authenticated and its body read |
//! | `gateway.header_read_timeout` | `MESH_GATEWAY__HEADER_READ_TIMEOUT` | `10s` to send a request's headers, and the longest a kept-alive connection idles; then it is closed |
//! | `gateway.body_read_timeout` | `MESH_GATEWAY__BODY_READ_TIMEOUT` | `15s` to send a request's body; then 408 and the connection is closed |
//! | `auth.jwks_url` or `.jwks_file` | `MESH_AUTH__JWKS_URL`, `..._JWKS_FILE` | unset; RS256 tokens are verified against this JWKS (the URL re-fetched every `auth.jwks_refresh`, `5m`, and in the background on an unknown `kid`, which is refused meanwhile; at most once per `auth.jwks_refetch_cooldown`, `30s`). The gateway and every service verify callers with the same settings: the gateway forwards the token it verified, and a service checks it again against the RPC's scopes |
//! | `auth.issuer`, `.audience` | `MESH_AUTH__ISSUER`, `..._AUDIENCE` | `commerce-mesh`, `commerce-mesh`: a token's `iss` and `aud` must match (`auth.leeway`, `30s`, for `exp`/`nbf`) |
//! | `auth.development_secret` | `MESH_AUTH__DEVELOPMENT_SECRET` | unset; HS256 tokens signed with it are accepted (`commerce-mesh token`). `up` with no key source makes one in `data_dir/gateway-development-secret`; `serve` needs one of the three |
//! | `auth.allow_development_tokens` | `MESH_AUTH__ALLOW_DEVELOPMENT_TOKENS` | `false`: a JWKS and a development secret together are refused at start; `true` accepts both (and says so in the log) |
//! | `auth.peers.issuer`, `.audience` | `MESH_AUTH__PEERS__ISSUER`, `..._AUDIENCE` | `https://kubernetes.default.svc.cluster.local`, `commerce-mesh`: the components' own tokens (projected service-account tokens, subject `system:serviceaccount:<namespace>:<component>`). Fulfillment and PurchaseHistory may call, with their own identity, the `<area>:read` RPCs of each service a `*_url` of theirs names (the catalog only with `fulfillment.check_course_runs`); the gateway, pointed at Fulfillment, `fulfillment:read` and `fulfillment:write` (its webhooks list and refund orders); on callers' requests the gateway forwards their token |
//! | `auth.peers.jwks_url` or `.jwks_file` | `MESH_AUTH__PEERS__JWKS_URL`, `..._JWKS_FILE` | unset: peer tokens are verified with the development secret only (when development tokens are accepted); on Kubernetes the cluster's service-account JWKS |
//! | `auth.peers.namespace`, `.token_file` | `MESH_AUTH__PEERS__NAMESPACE`, `..._TOKEN_FILE` | unset: peers from any namespace, and this component mints its own development identity with the secret; on Kubernetes the pod's namespace and its projected token |
//! | `gateway.trust_client_traces` | `MESH_GATEWAY__TRUST_CLIENT_TRACES` | unset: `false` under `serve` (each request is the root of a trace of the gateway's own, linked to the caller's `traceparent`, so a caller picks neither trace ids nor sampling), `true` under `up` (the caller's trace is continued) |
//! | `gateway.cors.allowed_origins` | `MESH_GATEWAY__CORS__ALLOWED_ORIGINS` | empty: no CORS; `["*"]` or a list of origins |
//! | `gateway.caller_quotas.default`, `.by_scope."<scope>"`, `.by_subject."<subject>"` | `MESH_GATEWAY__CALLER_QUOTAS__DEFAULT__RATE_PER_SECOND`, `..._BURST`, ... | unset: no per-caller limit. Each `{ rate_per_second, burst }`; a request counts against its caller (token subject) and its route's scope; the subject's quota beats the scope's, which beats `default`; over it: 429 with `Retry-After`. With `redis_url` shared by every gateway replica (`caller_quotas.cluster.expected_replicas`, `1`, divides it while Redis does not answer; keys `cluster.key_prefix` + `caller:<scope>/<subject>`, `quota:caller:…`) |
//! | `gateway.webhooks.stripe.signing_secrets`, `.signing_secrets_file` | `MESH_GATEWAY__WEBHOOKS__STRIPE__SIGNING_SECRETS` (`[whsec_new,whsec_old]`), `..._SIGNING_SECRETS_FILE` (one a line) | empty: `POST /v1/webhooks/stripe` answers 404. Any listed secret verifies a signature, so one is rotated by listing both; never logged |
//! | `gateway.webhooks.stripe.tolerance`, `.refund_lines` | `MESH_GATEWAY__WEBHOOKS__STRIPE__TOLERANCE`, `..._REFUND_LINES` | `5m` between a signature's timestamp and now; `amount` (a full refund is the whole order, a partial one the lines in `metadata.line_item_ids`), `whole_order` or `metadata` |
//! | `dev_lms.enabled` | `MESH_DEV_LMS__ENABLED` (`up --with-dev-lms`) | `false`; `true`: `up` runs the development LMS (in memory, enrollments go nowhere; never for production) and points `fulfillment.lms` at it |
//! | `dev_lms.listen` | `MESH_DEV_LMS__LISTEN` | `127.0.0.1:18000` (also `commerce-mesh dev-lms`'s default) |
//! | `trace_ui.enabled` | `MESH_TRACE_UI__ENABLED` (`up --with-trace-ui`) | `false`; `true`: `up` also serves the Jaeger UI and Jaeger's query API over this process's spans, in memory (a binary built with `--features trace-ui`) |
//! | `trace_ui.listen` | `MESH_TRACE_UI__LISTEN` | `127.0.0.1:16686` |
//! | `trace_ui.max_traces`, `.max_memory_mib` | `MESH_TRACE_UI__MAX_TRACES`, `..._MAX_MEMORY_MIB` | `10000` traces, about `256` MiB: past either, the least recently used traces are dropped |
//! | `admin_listen` | `MESH_ADMIN_LISTEN` | `127.0.0.1:9090`: the admin port of `up`, with every component's metrics |
//! | `telemetry.log_filter` | `MESH_TELEMETRY__LOG_FILTER` (or `RUST_LOG`) | `info` |
//! | `telemetry.log_format` | `MESH_TELEMETRY__LOG_FORMAT` | `auto`: human-readable text when stdout (where logs go) is a terminal, JSON lines otherwise; `json` or `text` decide |
//! | `telemetry.otlp_endpoint` | `OTEL_EXPORTER_OTLP_ENDPOINT` | unset: no span export |
//! | `serve.rpc_timeout` | `MESH_SERVE__RPC_TIMEOUT` | `30s`: a unary call past it ends DEADLINE_EXCEEDED (a caller's shorter deadline wins; streaming calls have only the caller's); `0s`: none |
//! | `serve.max_concurrent_rpcs` | `MESH_SERVE__MAX_CONCURRENT_RPCS` | `1024` calls at once per component; one more is refused at once, UNAVAILABLE with `RetryInfo` (health and reflection never) |
//! | `serve.shutdown_grace` | `MESH_SERVE__SHUTDOWN_GRACE` | `0s`: on SIGTERM every component, the gateway too, first reports not ready (a service's gRPC health NOT_SERVING, the gateway's `/healthz` 503, its answers then with `Connection: close`) and keeps serving this long, then closes its listener |
//! | `serve.drain_timeout` | `MESH_SERVE__DRAIN_TIMEOUT` | `4s`: then calls and requests in flight get this long to finish; what is still open is closed |
//! | `serve.reflection` | `MESH_SERVE__REFLECTION` | `false`: no gRPC server reflection under `serve`; `up` turns it on |

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;

use kit::db::DatabaseConfig;
use kit::serve::ServeOptions;
use kit::telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};

use crate::Component;

/// Settings of the whole mesh.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct MeshConfig {
    /// Where embedded storage keeps its files.
    pub data_dir: PathBuf,
    /// A Postgres URL shared by every service that has no database of its own.
    pub database_url: Option<String>,
    /// Redis for caches and the event bus; unset: in-process caches and a SQLite event log.
    pub redis_url: Option<String>,
    /// What the event bus keeps, and for how long.
    pub bus: kit::bus::BusConfig,
    /// Logs and traces.
    pub telemetry: TelemetryConfig,
    /// How callers' and components' tokens are verified, by the gateway and every service.
    pub auth: kit::auth::AuthConfig,
    /// How gRPC components stop.
    pub serve: ServeOptions,
    /// `up`'s admin port: `/metrics` of every component, `/healthz`. (`serve`
    /// uses the component's own `admin_listen`.)
    pub admin_listen: SocketAddr,
    /// The REST gateway.
    pub gateway: GatewayConfig,
    /// Fulfillment.
    pub fulfillment: ServiceConfig<fulfillment::Config>,
    /// CustomerIdentity.
    pub customer_identity: ServiceConfig<customer_identity::Config>,
    /// CatalogIngest.
    pub catalog_ingest: ServiceConfig<catalog_ingest::Config>,
    /// PurchaseHistory.
    pub purchase_history: ServiceConfig<purchase_history::Config>,
    /// The development LMS (off unless asked).
    pub dev_lms: crate::dev_lms::DevLmsConfig,
    /// The trace UI of `up` (off unless asked).
    pub trace_ui: crate::trace_ui::TraceUiConfig,
}

/// Where a gRPC service listens and keeps its data, and its own settings
/// (`S`, whose keys sit beside `listen` and `database`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ServiceConfig<S = NoSettings> {
    /// The gRPC listen address.
    pub listen: SocketAddr,
    /// The admin port (`/metrics`, `/healthz`) when the service runs alone (`serve`).
    pub admin_listen: SocketAddr,
    /// The service's own database; unset: `database_url`, else SQLite in `data_dir`.
    pub database: Option<DatabaseConfig>,
    /// The service's own settings.
    #[serde(flatten)]
    pub settings: S,
}

/// For a service with no settings of its own yet.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NoSettings {}

/// The REST gateway: where it listens, the services it calls, and its HTTP
/// settings (`auth`, limits, `cors`), which sit beside `listen`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct GatewayConfig {
    /// The admin port (`/metrics`, `/healthz`) when the gateway runs alone (`serve`).
    pub admin_listen: SocketAddr,
    /// Fulfillment's gRPC address: `http://host:port`, or `dns:///host:port` to
    /// balance across every pod of a headless service.
    pub fulfillment_url: String,
    /// CustomerIdentity's gRPC address.
    pub customer_identity_url: String,
    /// CatalogIngest's gRPC address.
    pub catalog_ingest_url: String,
    /// PurchaseHistory's gRPC address.
    pub purchase_history_url: String,
    /// The gateway's own settings: `listen`, `auth`, `request_timeout`,
    /// `max_body_bytes`, `max_concurrent_requests`, `queue_timeout`,
    /// `header_read_timeout`, `body_read_timeout`, `cors`, `webhooks`.
    #[serde(flatten)]
    pub http: gateway::Config,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            admin_listen: local(9080),
            fulfillment_url: "http://127.0.0.1:50051".into(),
            customer_identity_url: "http://127.0.0.1:50052".into(),
            catalog_ingest_url: "http://127.0.0.1:50053".into(),
            purchase_history_url: "http://127.0.0.1:50054".into(),
            http: gateway::Config::default(),
        }
    }
}

impl GatewayConfig {
    /// The gateway's settings with each service's upstream filled in (an
    /// upstream already set in `upstreams` wins).
    pub fn gateway_settings(&self) -> gateway::Config {
        let mut settings = self.http.clone();
        let urls =
            [&self.fulfillment_url, &self.customer_identity_url, &self.catalog_ingest_url, &self.purchase_history_url];
        for (service, url) in proto::COMMERCE_SERVICES.iter().zip(urls) {
            settings.upstreams.entry(service.to_string()).or_insert_with(|| url.clone());
        }
        // The dead-letter services are served beside the services whose consumers they are about.
        for (service, url) in
            proto::DEAD_LETTER_SERVICES.iter().zip([&self.fulfillment_url, &self.purchase_history_url])
        {
            settings.upstreams.entry(service.to_string()).or_insert_with(|| url.clone());
        }
        settings
    }
}

/// A component's addresses and database, whatever its settings.
struct Placement<'a> {
    listen: SocketAddr,
    admin_listen: SocketAddr,
    database: Option<&'a DatabaseConfig>,
}

impl<S: Default> ServiceConfig<S> {
    fn on_ports(port: u16, admin_port: u16) -> Self {
        Self { listen: local(port), admin_listen: local(admin_port), database: None, settings: S::default() }
    }
}

impl<S> ServiceConfig<S> {
    fn placement(&self) -> Placement<'_> {
        Placement { listen: self.listen, admin_listen: self.admin_listen, database: self.database.as_ref() }
    }
}

impl<S: Default> Default for ServiceConfig<S> {
    fn default() -> Self {
        Self::on_ports(0, 0)
    }
}

/// `127.0.0.1:<port>`.
fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            database_url: None,
            redis_url: None,
            bus: kit::bus::BusConfig::default(),
            telemetry: TelemetryConfig::default(),
            auth: kit::auth::AuthConfig::default(),
            serve: ServeOptions::default(),
            admin_listen: local(9090),
            gateway: GatewayConfig::default(),
            fulfillment: ServiceConfig::on_ports(50051, 9051),
            customer_identity: ServiceConfig::on_ports(50052, 9052),
            catalog_ingest: ServiceConfig::on_ports(50053, 9053),
            purchase_history: ServiceConfig::on_ports(50054, 9054),
            dev_lms: crate::dev_lms::DevLmsConfig::default(),
            trace_ui: crate::trace_ui::TraceUiConfig::default(),
        }
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigProblem {
    /// `database_url` names something other than Postgres.
    #[error(
        "database_url must be a postgres:// URL (every service gets a schema there); \
         for SQLite leave it unset and set data_dir, or set <service>.database.url"
    )]
    SharedDatabaseNotPostgres,
    /// The gateway has no database.
    #[error("the gateway stores nothing and has no database")]
    NoDatabase,
}

impl MeshConfig {
    /// The services `component` calls and where it is told they are: what
    /// its identity may call ([`MeshConfig::peer_grants`]) and, on
    /// Kubernetes, what its NetworkPolicy lets it reach.
    pub fn peer_urls(&self, component: Component) -> Vec<(Component, &str)> {
        let gateway = &self.gateway;
        match component {
            Component::Gateway => vec![
                (Component::Fulfillment, gateway.fulfillment_url.as_str()),
                (Component::CustomerIdentity, &gateway.customer_identity_url),
                (Component::CatalogIngest, &gateway.catalog_ingest_url),
                (Component::PurchaseHistory, &gateway.purchase_history_url),
            ],
            Component::Fulfillment => vec![
                (Component::CustomerIdentity, self.fulfillment.settings.customer_identity_url.as_str()),
                (Component::CatalogIngest, &self.fulfillment.settings.catalog_url),
            ],
            Component::PurchaseHistory => {
                vec![(Component::CustomerIdentity, self.purchase_history.settings.customer_identity_url.as_str())]
            }
            Component::CustomerIdentity | Component::CatalogIngest => Vec::new(),
        }
    }

    /// What each component may call with its own identity, as scopes: the
    /// read scope of every service its configuration points it at, and for
    /// the gateway pointed at Fulfillment, refunds (its webhooks). The gateway
    /// otherwise calls with its caller's token, never with its own.
    pub fn peer_grants(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut grants: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for component in [Component::Fulfillment, Component::PurchaseHistory] {
            let scopes = self
                .peer_urls(component)
                .into_iter()
                .filter(|(_, url)| !url.is_empty())
                // Fulfillment asks the catalog only to check course runs.
                .filter(|(service, _)| {
                    component != Component::Fulfillment
                        || *service != Component::CatalogIngest
                        || self.fulfillment.settings.check_course_runs
                })
                .filter_map(|(service, _)| service.read_scope())
                .map(str::to_string);
            grants.entry(component.name().to_string()).or_default().extend(scopes);
        }
        // The webhooks (Stripe's refunds) list and refund orders. Decided by
        // where the gateway is pointed, not by its signing secrets: Fulfillment,
        // which decides, is never given the gateway's secrets.
        if !self.gateway.fulfillment_url.is_empty() {
            let refunds = ["fulfillment:read".to_string(), "fulfillment:write".to_string()];
            grants.entry(Component::Gateway.name().to_string()).or_default().extend(refunds);
        }
        grants
    }

    /// How `component` checks the callers of its RPCs: the mesh's `auth`
    /// for callers' tokens, the components' identities and
    /// [`MeshConfig::peer_grants`] for peers.
    pub async fn access(&self) -> Result<kit::access::Access, kit::auth::AuthSetupError> {
        let rules = proto::access_rules().map_err(|e| kit::auth::AuthSetupError::Setting {
            setting: "rules",
            problem: format!("the mesh's descriptors: {e}"),
        })?;
        let callers = kit::auth::Authenticator::new(&self.auth).await?;
        let peers = match self.auth.peer_verification() {
            Some(verification) => Some(kit::access::Peers::new(
                kit::auth::Authenticator::new(&verification).await?,
                self.auth.peers.namespace.clone(),
                self.peer_grants(),
            )),
            None => None,
        };
        Ok(kit::access::Access::new(kit::access::AccessRules::new(rules), callers, peers))
    }

    /// What `component` presents when it calls a peer.
    pub fn identity(&self, component: Component) -> kit::credential::Credential {
        kit::credential::Credential::of_component(&self.auth, component.name())
    }

    /// The gateway's settings: its own, each service's upstream, the mesh's
    /// `auth`, and its identity for calls of its own; and how it stops, the
    /// mesh's `serve.shutdown_grace` and `serve.drain_timeout` as for every
    /// component.
    pub fn gateway_settings(&self) -> gateway::Config {
        let mut settings = self.gateway.gateway_settings();
        settings.auth = self.auth.clone();
        settings.identity = self.identity(Component::Gateway);
        settings.shutdown_grace = self.serve.shutdown_grace;
        settings.drain_timeout = self.serve.drain_timeout;
        // Callers' quotas are cluster-wide where the mesh keeps its other shared state.
        settings.redis_url = self.redis_url.clone();
        settings
    }

    /// `component`'s addresses and database (none for the gateway).
    fn placement(&self, component: Component) -> Placement<'_> {
        match component {
            Component::Gateway => {
                Placement { listen: self.gateway.http.listen, admin_listen: self.gateway.admin_listen, database: None }
            }
            Component::Fulfillment => self.fulfillment.placement(),
            Component::CustomerIdentity => self.customer_identity.placement(),
            Component::CatalogIngest => self.catalog_ingest.placement(),
            Component::PurchaseHistory => self.purchase_history.placement(),
        }
    }

    /// Where `component` listens.
    pub fn listen(&self, component: Component) -> SocketAddr {
        self.placement(component).listen
    }

    /// Where `component`'s admin port listens when it runs alone (`serve`);
    /// `up` has one admin port for all, `admin_listen`.
    pub fn admin_listen_of(&self, component: Component) -> SocketAddr {
        self.placement(component).admin_listen
    }

    /// `component`'s listen and admin addresses, to set.
    fn addresses_mut(&mut self, component: Component) -> (&mut SocketAddr, &mut SocketAddr) {
        match component {
            Component::Gateway => (&mut self.gateway.http.listen, &mut self.gateway.admin_listen),
            Component::Fulfillment => (&mut self.fulfillment.listen, &mut self.fulfillment.admin_listen),
            Component::CustomerIdentity => {
                (&mut self.customer_identity.listen, &mut self.customer_identity.admin_listen)
            }
            Component::CatalogIngest => (&mut self.catalog_ingest.listen, &mut self.catalog_ingest.admin_listen),
            Component::PurchaseHistory => (&mut self.purchase_history.listen, &mut self.purchase_history.admin_listen),
        }
    }

    /// Sets where `component` listens.
    pub fn set_listen(&mut self, component: Component, address: SocketAddr) {
        *self.addresses_mut(component).0 = address;
    }

    /// Every component and admin port (and the development LMS and trace UI) on 127.0.0.1 port 0: free ports, for tests.
    pub fn use_ephemeral_ports(&mut self) {
        self.admin_listen = local(0);
        for component in Component::ALL {
            let (listen, admin_listen) = self.addresses_mut(component);
            (*listen, *admin_listen) = (local(0), local(0));
        }
        self.dev_lms.listen = local(0);
        self.trace_ui.listen = local(0);
    }

    /// The database `component` uses: its own, else a schema in the shared
    /// Postgres, else its SQLite file in `data_dir`.
    pub fn database(&self, component: Component) -> Result<DatabaseConfig, ConfigProblem> {
        let name = component.storage_name().ok_or(ConfigProblem::NoDatabase)?;
        let own = self.placement(component).database;
        if let Some(own) = own.filter(|own| !own.url.is_empty()) {
            let mut own = own.clone();
            if own.schema.is_none() && own.backend().is_ok_and(|b| b == kit::db::Backend::Postgres) {
                own.schema = Some(name.to_string());
            }
            return Ok(own);
        }
        let shared = match &self.database_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                DatabaseConfig::postgres(url.clone(), name)
            }
            Some(_) => return Err(ConfigProblem::SharedDatabaseNotPostgres),
            None => DatabaseConfig::sqlite_file(self.data_dir.join(format!("{name}.db"))),
        };
        // A service's database settings without a URL (say, only its
        // `statement_timeout`) apply to the shared database or SQLite file.
        Ok(match own {
            Some(own) => {
                DatabaseConfig { url: shared.url, schema: own.schema.clone().or(shared.schema), ..own.clone() }
            }
            None => shared,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_components_identity_may_read_what_its_configuration_points_it_at() {
        let scopes = |items: &[&str]| items.iter().map(ToString::to_string).collect::<BTreeSet<String>>();
        let mut config = MeshConfig::default();
        let grants = config.peer_grants();
        assert_eq!(grants["fulfillment"], scopes(&["identity:read"]), "no catalog checks by default");
        assert_eq!(grants["purchase-history"], scopes(&["identity:read"]));
        assert_eq!(grants["gateway"], scopes(&["fulfillment:read", "fulfillment:write"]), "its webhooks refund");
        assert!(!grants.contains_key("customer-identity") && !grants.contains_key("catalog-ingest"));

        config.fulfillment.settings.check_course_runs = true;
        config.purchase_history.settings.customer_identity_url = String::new();
        config.gateway.fulfillment_url = String::new();
        let grants = config.peer_grants();
        assert_eq!(grants["fulfillment"], scopes(&["catalog:read", "identity:read"]));
        assert!(grants["purchase-history"].is_empty(), "pointed nowhere: may call nothing");
        assert!(!grants.contains_key("gateway"));
    }

    #[test]
    fn embedded_by_default_one_sqlite_file_per_service() {
        let config = MeshConfig::default();
        let db = config.database(Component::CustomerIdentity).unwrap();
        assert_eq!(db.url, "sqlite://data/customer_identity.db");
        assert_eq!(db.schema, None);
    }

    #[test]
    fn a_shared_postgres_gives_each_service_its_schema() {
        let config = MeshConfig { database_url: Some("postgres://db/mesh".into()), ..Default::default() };
        let db = config.database(Component::PurchaseHistory).unwrap();
        assert_eq!(db.url, "postgres://db/mesh");
        assert_eq!(db.schema.as_deref(), Some("purchase_history"));
    }

    #[test]
    fn a_service_database_wins_and_keeps_its_schema_default() {
        let mut config = MeshConfig { database_url: Some("postgres://shared/mesh".into()), ..Default::default() };
        config.fulfillment.database = Some(DatabaseConfig { url: "postgres://own/f".into(), ..Default::default() });
        let db = config.database(Component::Fulfillment).unwrap();
        assert_eq!(db.url, "postgres://own/f");
        assert_eq!(db.schema.as_deref(), Some("fulfillment"));
    }

    #[test]
    fn a_service_database_without_a_url_tunes_the_shared_one() {
        let mut config = MeshConfig { database_url: Some("postgres://shared/mesh".into()), ..Default::default() };
        config.fulfillment.database =
            Some(DatabaseConfig { statement_timeout: std::time::Duration::from_secs(30), ..DatabaseConfig::default() });
        let db = config.database(Component::Fulfillment).unwrap();
        assert_eq!(db.url, "postgres://shared/mesh");
        assert_eq!(db.schema.as_deref(), Some("fulfillment"));
        assert_eq!(db.statement_timeout, std::time::Duration::from_secs(30));
        let other = config.database(Component::CustomerIdentity).unwrap();
        assert_eq!(other.statement_timeout, DatabaseConfig::default().statement_timeout);
    }

    #[test]
    fn a_shared_sqlite_url_and_the_gateway_database_are_refused() {
        let config = MeshConfig { database_url: Some("sqlite://all.db".into()), ..Default::default() };
        assert!(matches!(config.database(Component::Fulfillment), Err(ConfigProblem::SharedDatabaseNotPostgres)));
        assert!(matches!(MeshConfig::default().database(Component::Gateway), Err(ConfigProblem::NoDatabase)));
    }

    #[test]
    fn source_quotas_fall_back_to_one_replica_unless_configured() {
        use figment::Figment;
        use figment::providers::{Format, Serialized, Toml};
        let quota = MeshConfig::default().catalog_ingest.settings.quota;
        assert_eq!((quota.expected_replicas, quota.redis_timeout), (1, std::time::Duration::from_millis(200)));
        let text = "[catalog_ingest.quota]\nexpected_replicas = 4\nredis_timeout = \"50ms\"\n";
        let config: MeshConfig =
            Figment::from(Serialized::defaults(MeshConfig::default())).merge(Toml::string(text)).extract().unwrap();
        let quota = config.catalog_ingest.settings.quota;
        assert_eq!((quota.expected_replicas, quota.redis_timeout), (4, std::time::Duration::from_millis(50)));
        assert_eq!(quota.key_prefix, "quota:");
    }

    #[test]
    fn default_ports_are_distinct() {
        let config = MeshConfig::default();
        let mut ports: Vec<u16> = Component::ALL.iter().map(|c| config.listen(*c).port()).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports, vec![8080, 50051, 50052, 50053, 50054]);
    }

    #[test]
    fn each_component_has_its_own_admin_port_and_up_one_for_all() {
        let config = MeshConfig::default();
        let ports: Vec<u16> = Component::DISPLAY_ORDER.iter().map(|c| config.admin_listen_of(*c).port()).collect();
        assert_eq!(ports, vec![9080, 9051, 9052, 9053, 9054]);
        assert_eq!(config.admin_listen, "127.0.0.1:9090".parse().unwrap());
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
    fn caller_quotas_come_from_the_file_and_environment_and_follow_the_meshs_redis() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "mesh.toml",
                "redis_url = \"redis://redis:6379\"\n[gateway.caller_quotas.by_scope]\n\
                 \"fulfillment:write\" = { rate_per_second = 20, burst = 40 }\n",
            )?;
            jail.set_env("MESH_GATEWAY__CALLER_QUOTAS__DEFAULT__RATE_PER_SECOND", "50");
            jail.set_env("MESH_GATEWAY__CALLER_QUOTAS__DEFAULT__BURST", "100");
            jail.set_env("MESH_GATEWAY__CALLER_QUOTAS__CLUSTER__EXPECTED_REPLICAS", "3");
            let config: MeshConfig =
                kit::config::load(Some(std::path::Path::new("mesh.toml"))).map_err(|e| e.to_string())?;
            let settings = config.gateway_settings();
            let quotas = &settings.caller_quotas;
            let quota = |rate_per_second, burst| kit::throttle::Quota { rate_per_second, burst };
            assert_eq!(quotas.default, Some(quota(50, 100)));
            assert_eq!(quotas.by_scope["fulfillment:write"], quota(20, 40));
            assert_eq!(quotas.cluster.expected_replicas, 3);
            assert_eq!(settings.redis_url.as_deref(), Some("redis://redis:6379"), "cluster-wide where Redis is");
            assert_eq!(MeshConfig::default().gateway_settings().redis_url, None, "else in the process");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
    fn retention_windows_and_floor_come_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("MESH_BUS__DEDUPE_WINDOW", "1d");
            jail.set_env("MESH_BUS__MAX_LEN", "500000");
            jail.set_env("MESH_BUS__DEAD_LETTER_WINDOW", "30d");
            jail.set_env("MESH_BUS__TRIM_EVERY", "5s");
            jail.set_env("MESH_FULFILLMENT__OUTBOX__RETENTION", "2d");
            let config: MeshConfig = kit::config::load(None).map_err(|e| e.to_string())?;
            let day = std::time::Duration::from_secs(86_400);
            assert_eq!(
                config.bus,
                kit::bus::BusConfig {
                    dedupe_window: day,
                    max_len: 500_000,
                    dead_letter_window: 30 * day,
                    trim_every: std::time::Duration::from_secs(5),
                }
            );
            assert_eq!(config.fulfillment.settings.outbox.retention, 2 * day);
            assert_eq!(MeshConfig::default().bus, kit::bus::BusConfig::default());
            Ok(())
        });
    }

    #[test]
    fn ephemeral_ports_free_the_admin_ports_too() {
        let mut config = MeshConfig::default();
        config.use_ephemeral_ports();
        assert_eq!(config.admin_listen.port(), 0);
        assert!(Component::ALL.iter().all(|c| config.listen(*c).port() == 0 && config.admin_listen_of(*c).port() == 0));
    }
}
