//! Starting components: one ([`serve`]), all in one process ([`start`]), and
//! migrating their databases ([`migrate`]).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;

use kit::db::{Database, DbError, Migrations};
use kit::metrics::Metrics;
use kit::serve::{GrpcServer, ServeError};
use kit::service::{Dependencies, Service, SetupError};
use kit::shutdown::Shutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::config::ConfigProblem;
use crate::{Component, MeshConfig, MigrateTarget};

/// Why a component could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The configuration cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigProblem),
    /// The listen address is taken or invalid.
    #[error("{component}: cannot listen on {address}: {source} (set {} to another address)", component.listen_variable())]
    Bind {
        /// Which component.
        component: Component,
        /// The address asked for.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The database could not be opened or migrated.
    #[error("{component}: {source}")]
    Database {
        /// Which component.
        component: Component,
        /// Why.
        source: DbError,
    },
    /// Migrations were still missing when `wait-for-migrations` gave up.
    #[error("{component}: migrations {pending:?} not applied; run `commerce-mesh migrate {component}`")]
    MigrationsPending {
        /// Which component.
        component: Component,
        /// The versions not applied.
        pending: Vec<i64>,
    },
    /// A gRPC component failed.
    #[error("{component}: {source}")]
    Serve {
        /// Which component.
        component: Component,
        /// Why.
        source: ServeError,
    },
    /// A service could not be built from its settings and dependencies.
    #[error("{component}: {source}")]
    Service {
        /// Which component.
        component: Component,
        /// Why.
        source: SetupError,
    },
    /// A component's settings cannot be used.
    #[error("{component}: {reason}")]
    Setup {
        /// Which component.
        component: Component,
        /// What is wrong.
        reason: String,
    },
    /// The gateway failed.
    #[error("gateway: {0}")]
    Gateway(#[from] gateway::GatewayError),
    /// The admin port (`/metrics`, `/healthz`) could not listen or failed.
    #[error(
        "admin port {address}: {source} (set MESH_ADMIN_LISTEN, or MESH_<COMPONENT>__ADMIN_LISTEN under `serve`, to \
         another address)"
    )]
    Admin {
        /// The admin address, as configured or as bound.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The development LMS could not start or failed.
    #[error(transparent)]
    DevLms(#[from] crate::dev_lms::DevLmsError),
    /// The trace UI could not start or failed.
    #[error(transparent)]
    TraceUi(#[from] crate::trace_ui::TraceUiError),
    /// A component's task panicked.
    #[error("a component crashed: {0}")]
    Crashed(#[from] tokio::task::JoinError),
}

/// Runs one component, with its admin port, until `shutdown` is cancelled.
pub async fn serve(component: Component, config: &MeshConfig, shutdown: Shutdown) -> Result<(), MeshError> {
    refuse_development_secrets(component, config)?;
    let listener = bind(component, config.listen(component)).await?;
    let (admin_listener, admin_address) = bind_admin(config.admin_listen_of(component)).await?;
    let metrics = Metrics::new().for_component(component.name());
    // The admin port stops with the component, however the component stops,
    // and only then: through the shutdown grace and the drain it still
    // answers `/healthz` (liveness) and `/metrics`.
    let admin_stop = Shutdown::new();
    let served = async {
        let result = run(component, listener, config, &metrics, Schema::AwaitMigrations, shutdown).await;
        admin_stop.cancel();
        result
    };
    let admin = admin(admin_listener, admin_address, metrics.clone(), admin_stop.clone());
    let (served, admin) = tokio::join!(served, admin);
    served.and(admin)
}

/// A component served on its own over Postgres is a deployment, not a laptop:
/// it must not key retired learners' placeholders with the development salt,
/// which anyone can read in this repository (and so could test candidate
/// usernames against a placeholder). `up` on embedded storage only warns.
fn refuse_development_secrets(component: Component, config: &MeshConfig) -> Result<(), MeshError> {
    let on_postgres = matches!(config.database(component).map(|db| db.backend()), Ok(Ok(kit::db::Backend::Postgres)));
    if component == Component::CustomerIdentity
        && on_postgres
        && config.customer_identity.settings.is_development_salt()
    {
        return Err(MeshError::Setup {
            component,
            reason: "customer_identity.retirement_salt is the development default; set \
                     MESH_CUSTOMER_IDENTITY__RETIREMENT_SALT to a secret that stays the same across releases \
                     (it keys retired learners' placeholders) before serving on Postgres"
                .into(),
        });
    }
    Ok(())
}

/// Migrates the databases `target` names; answers the components migrated.
pub async fn migrate(target: MigrateTarget, config: &MeshConfig) -> Result<Vec<Component>, MeshError> {
    let components = target.components();
    for &component in &components {
        let database = config.database(component)?;
        let migrations = component.migrations().ok_or(ConfigProblem::NoDatabase)?;
        kit::db::migrate(&database, migrations).await.map_err(|source| MeshError::Database { component, source })?;
        tracing::info!(%component, database = ?database, "migrated");
    }
    Ok(components)
}

/// Waits, applying nothing, until every migration of the databases `target`
/// names has been applied by someone else (the migrations Job), polling every
/// `poll`; fails with the versions still missing once `timeout` passes. An
/// unreachable database counts as not migrated yet.
pub async fn wait_for_migrations(
    target: MigrateTarget,
    config: &MeshConfig,
    timeout: std::time::Duration,
    poll: std::time::Duration,
) -> Result<(), MeshError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut waiting = Vec::new();
    for component in target.components() {
        waiting.push((
            component,
            config.database(component)?,
            component.migrations().ok_or(ConfigProblem::NoDatabase)?,
        ));
    }
    loop {
        let mut last = None;
        let mut still = Vec::new();
        for (component, database, migrations) in waiting {
            match migrations_applied(component, &database, migrations).await {
                Ok(()) => tracing::info!(%component, "migrations applied"),
                Err(error) => {
                    tracing::info!(%component, %error, "waiting for migrations");
                    last = Some(error);
                    still.push((component, database, migrations));
                }
            }
        }
        let Some(error) = last else { return Ok(()) };
        if tokio::time::Instant::now() + poll > deadline {
            return Err(error);
        }
        waiting = still;
        tokio::time::sleep(poll).await;
    }
}

/// Binds every component's listener (so a taken port fails before anything
/// runs), then starts them all. They stop when `shutdown` is cancelled, or when
/// one of them fails.
pub async fn start(config: MeshConfig, shutdown: Shutdown) -> Result<RunningMesh, MeshError> {
    start_with_trace_store(config, shutdown, None).await
}

/// [`start`], also serving the trace UI on `trace_ui.listen` over `traces`,
/// the store this process's telemetry feeds ([`crate::trace_ui::init_telemetry`]).
/// Without a store, `trace_ui.enabled` is refused.
pub async fn start_with_trace_store(
    config: MeshConfig,
    shutdown: Shutdown,
    traces: Option<crate::trace_ui::TraceStore>,
) -> Result<RunningMesh, MeshError> {
    let mut listeners = Vec::new();
    for component in Component::ALL {
        listeners.push((component, bind(component, config.listen(component)).await?));
    }
    let (admin_listener, admin_address) = bind_admin(config.admin_listen).await?;
    let dev_lms_listener =
        if config.dev_lms.enabled { Some(crate::dev_lms::bind(config.dev_lms.listen).await?) } else { None };
    let trace_ui = match traces {
        Some(store) => Some((store, crate::trace_ui::bind(config.trace_ui.listen).await?)),
        None if config.trace_ui.enabled => {
            crate::trace_ui::TraceStore::for_config(&config.trace_ui)?;
            return Err(crate::trace_ui::TraceUiError::NoStore.into());
        }
        None => None,
    };
    let metrics = Metrics::new();
    let mut addresses = BTreeMap::new();
    for (component, listener) in &listeners {
        let address = listener.local_addr().map_err(|source| MeshError::Bind {
            component: *component,
            address: config.listen(*component),
            source,
        })?;
        addresses.insert(*component, address);
    }
    // Peers in this process call each other where they actually listen (ports may be ephemeral).
    let mut config = config;
    // One process for a laptop: tools may list and describe its services,
    // and a developer's own traceparent is followed (unless configured off).
    config.serve.reflection = true;
    config.gateway.http.trust_client_traces.get_or_insert(true);
    let development_tokens = !config.auth.has_key_source();
    if development_tokens {
        let secret = crate::dev_tokens::load_or_create_secret(&config.data_dir)
            .map_err(|e| MeshError::Setup { component: Component::Gateway, reason: e.to_string() })?;
        tracing::warn!(
            file = %config.data_dir.join(crate::dev_tokens::SECRET_FILE).display(),
            "the gateway accepts development tokens (`commerce-mesh token`); configure auth.jwks_url for real callers"
        );
        config.auth.development_secret = Some(secret);
    }
    // Components call each other with development identities unless given
    // token files; beside a JWKS (no callers' secret) they get one of their own.
    let peers = &config.auth.peers;
    if peers.token_file.is_none() && config.auth.peer_development_secret().is_none() {
        let secret = crate::dev_tokens::load_or_create_secret(&config.data_dir)
            .map_err(|e| MeshError::Setup { component: Component::Gateway, reason: e.to_string() })?;
        config.auth.peers.development_secret = Some(secret);
    }
    if let Some(identity) = addresses.get(&Component::CustomerIdentity) {
        config.fulfillment.settings.customer_identity_url = format!("http://{identity}");
        config.purchase_history.settings.customer_identity_url = format!("http://{identity}");
        config.gateway.customer_identity_url = format!("http://{identity}");
    }
    if let Some(catalog) = addresses.get(&Component::CatalogIngest) {
        config.fulfillment.settings.catalog_url = format!("http://{catalog}");
        config.gateway.catalog_ingest_url = format!("http://{catalog}");
    }
    if let Some(fulfillment) = addresses.get(&Component::Fulfillment) {
        config.gateway.fulfillment_url = format!("http://{fulfillment}");
    }
    if let Some(purchases) = addresses.get(&Component::PurchaseHistory) {
        config.gateway.purchase_history_url = format!("http://{purchases}");
    }
    let mut tasks = JoinSet::new();
    // Before Fulfillment's config is handed out, so Fulfillment calls it; nothing after this can fail,
    // so a failed start never leaves it running.
    let mut dev_lms_address = None;
    if let Some(listener) = dev_lms_listener {
        let lms =
            crate::dev_lms::DevLms::start(listener, crate::dev_lms::Credentials::development(), shutdown.clone())?;
        lms.delay_answers(config.dev_lms.answer_delay);
        config.fulfillment.settings.lms.url = lms.url();
        config.fulfillment.settings.lms.client_id = crate::dev_lms::CLIENT_ID.into();
        config.fulfillment.settings.lms.client_secret = crate::dev_lms::CLIENT_SECRET.into();
        dev_lms_address = Some(lms.address());
        tasks.spawn(async move { ("dev-lms", lms.wait().await.map_err(MeshError::from)) });
    }
    let trace_ui_address = trace_ui.as_ref().map(|(_, (_, address))| *address);
    if let Some((store, (listener, address))) = trace_ui {
        let stop = shutdown.clone();
        tasks.spawn(async move { ("trace-ui", store.serve(listener, address, stop).await.map_err(MeshError::from)) });
    }
    for (component, listener) in listeners {
        let config = config.clone();
        let shutdown = shutdown.clone();
        let metrics = metrics.for_component(component.name());
        tasks.spawn(async move {
            (component.name(), run(component, listener, &config, &metrics, Schema::Migrate, shutdown).await)
        });
    }
    let admin = admin(admin_listener, admin_address, metrics, shutdown.clone());
    tasks.spawn(async move { ("admin", admin.await) });
    Ok(RunningMesh {
        addresses,
        admin_address,
        shutdown,
        tasks,
        data_dir: config.data_dir,
        shared_database: config.database_url,
        development_tokens,
        dev_lms: dev_lms_address,
        trace_ui: trace_ui_address,
        auth: config.auth,
    })
}

/// The whole mesh, running in this process.
pub struct RunningMesh {
    addresses: BTreeMap<Component, SocketAddr>,
    admin_address: SocketAddr,
    shutdown: Shutdown,
    /// Each component's task, and the admin port's, by name.
    tasks: JoinSet<(&'static str, Result<(), MeshError>)>,
    data_dir: std::path::PathBuf,
    shared_database: Option<String>,
    /// The gateway verifies tokens with the development secret `up` made.
    development_tokens: bool,
    /// Where the development LMS listens, when it runs.
    dev_lms: Option<SocketAddr>,
    /// Where the trace UI listens, when it runs.
    trace_ui: Option<SocketAddr>,
    /// How callers are verified (with the development secret `up` made, if it made one).
    auth: kit::auth::AuthConfig,
}

impl RunningMesh {
    /// Where `component` listens.
    pub fn address(&self, component: Component) -> SocketAddr {
        self.addresses[&component]
    }

    /// `http://host:port` of a component: a gRPC endpoint for services, the
    /// REST base URL for the gateway.
    pub fn url(&self, component: Component) -> String {
        format!("http://{}", self.address(component))
    }

    /// The gRPC endpoint of a service (same as [`RunningMesh::url`]).
    pub fn grpc_url(&self, component: Component) -> String {
        self.url(component)
    }

    /// A gRPC channel to `component` presenting a development token with
    /// every scope of the mesh, for tools and tests on this machine; with no
    /// development secret (a JWKS only), it presents nothing and the services
    /// refuse it.
    pub fn grpc_channel(&self, component: Component) -> kit::client::TracedChannel {
        let credential = match &self.auth.development_secret {
            Some(secret) if self.auth.accepts_development_tokens() => {
                let day = std::time::Duration::from_secs(24 * 60 * 60);
                let claims = crate::dev_tokens::claims(&self.auth, "developer", crate::dev_tokens::every_scope(), day);
                kit::credential::Credential::development(secret.clone(), claims).unwrap_or_default()
            }
            _ => kit::credential::Credential::none(),
        };
        #[allow(clippy::expect_used)] // `http://` and a socket address this process bound: always a valid URI
        kit::client::channel_as(&self.grpc_url(component), credential).expect("a bound address is a valid gRPC URI")
    }

    /// Where the admin port listens.
    pub fn admin_address(&self) -> SocketAddr {
        self.admin_address
    }

    /// `http://host:port` of the admin port: `/metrics` of every component, `/healthz`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_address)
    }

    /// `http://host:port` of the development LMS, when it runs (`dev_lms.enabled`).
    pub fn dev_lms_url(&self) -> Option<String> {
        self.dev_lms.map(|address| format!("http://{address}"))
    }

    /// `http://host:port` of the trace UI, when it runs ([`start_with_trace_store`]).
    pub fn trace_ui_url(&self) -> Option<String> {
        self.trace_ui.map(|address| format!("http://{address}"))
    }

    /// What `commerce-mesh up` prints: every component's URL, the metrics URL
    /// and the storage in use.
    pub fn banner(&self) -> String {
        let storage = match &self.shared_database {
            Some(url) => format!("Postgres {}", kit::db::redact(url)),
            None => format!("embedded SQLite in {}", self.data_dir.display()),
        };
        let mut text = format!("commerce-mesh is up ({storage}); Ctrl-C stops it\n");
        for component in Component::DISPLAY_ORDER {
            let scheme = if component == Component::Gateway { "http" } else { "grpc" };
            text.push_str(&format!("  {:<18} {scheme}://{}\n", component.name(), self.address(component)));
        }
        text.push_str(&format!("  {:<18} {}/metrics\n", "metrics", self.admin_url()));
        text.push_str(&format!("  {:<18} {}/openapi.json\n", "openapi", self.url(Component::Gateway)));
        if let Some(url) = self.dev_lms_url() {
            text.push_str(&format!("  {:<18} {url} (development LMS: enrollments go nowhere)\n", "dev-lms"));
        }
        if let Some(url) = self.trace_ui_url() {
            text.push_str(&format!("  {:<18} {url} (Jaeger UI: this process's traces, in memory)\n", "trace-ui"));
        }
        if self.development_tokens {
            text.push_str(&format!(
                "  {:<18} commerce-mesh token --all-scopes (development tokens, secret in {})\n",
                "tokens",
                self.data_dir.join(crate::dev_tokens::SECRET_FILE).display()
            ));
        }
        text
    }

    /// Waits until every component has stopped. The first failure stops the
    /// others and is returned.
    pub async fn wait(mut self) -> Result<(), MeshError> {
        let mut first_error = None;
        while let Some(joined) = self.tasks.join_next().await {
            let failure = match joined {
                Ok((_, Ok(()))) => None,
                Ok((component, Err(error))) => {
                    tracing::error!(%component, %error, "component failed; stopping the mesh");
                    Some(error)
                }
                Err(join_error) => Some(MeshError::Crashed(join_error)),
            };
            if let Some(error) = failure {
                self.shutdown.cancel();
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Stops every component gracefully and waits for them.
    pub async fn stop(self) -> Result<(), MeshError> {
        self.shutdown.cancel();
        self.wait().await
    }
}

async fn bind(component: Component, address: SocketAddr) -> Result<TcpListener, MeshError> {
    TcpListener::bind(address).await.map_err(|source| MeshError::Bind { component, address, source })
}

/// Binds the admin port; answers the listener and the address it got.
async fn bind_admin(address: SocketAddr) -> Result<(TcpListener, SocketAddr), MeshError> {
    let admin_error = |source| MeshError::Admin { address, source };
    let listener = TcpListener::bind(address).await.map_err(admin_error)?;
    let bound = listener.local_addr().map_err(admin_error)?;
    Ok((listener, bound))
}

/// Serves `/metrics` (everything registered through `metrics`) and `/healthz`
/// on `listener`, bound to `address`, until `stop` is cancelled.
async fn admin(listener: TcpListener, address: SocketAddr, metrics: Metrics, stop: Shutdown) -> Result<(), MeshError> {
    kit::metrics::serve_admin(listener, metrics, stop.cancelled_owned())
        .await
        .map_err(|source| MeshError::Admin { address, source })
}

/// Who brings a service's schema up to date before it serves.
#[derive(Clone, Copy, Debug)]
enum Schema {
    /// This process migrates (`up`: one process, nothing else to do it).
    Migrate,
    /// Another process does (`migrate`, the Kubernetes Job): the service
    /// only waits, NOT_SERVING, until every migration it knows is applied.
    /// Migrations a newer release applied are tolerated, so a rollback starts.
    AwaitMigrations,
}

/// One look at `database`: Ok once every migration of `component` is
/// applied (newer unknown ones tolerated); else what is missing, or why the
/// database could not say.
async fn migrations_applied(
    component: Component,
    database: &kit::db::DatabaseConfig,
    migrations: &Migrations,
) -> Result<(), MeshError> {
    match kit::db::pending_migrations(database, migrations).await {
        Ok(pending) if pending.is_empty() => Ok(()),
        Ok(pending) => Err(MeshError::MigrationsPending { component, pending }),
        Err(source) => Err(MeshError::Database { component, source }),
    }
}

/// How often a service waiting for its migrations looks again.
const MIGRATIONS_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits until every migration in `migrations` is applied to `database`,
/// applying nothing; logs what it waits for whenever that changes.
async fn await_migrations(component: Component, database: &kit::db::DatabaseConfig, migrations: &Migrations) {
    let mut last = None;
    loop {
        let now = match migrations_applied(component, database, migrations).await {
            Ok(()) => return,
            Err(error) => error.to_string(),
        };
        if last.as_ref() != Some(&now) {
            tracing::warn!(%component, waiting_for = %now, "not ready");
            last = Some(now);
        }
        tokio::time::sleep(MIGRATIONS_POLL).await;
    }
}

/// `metrics` is the component's handle: its server records RED per RPC into it,
/// and service constructors register their own metrics through it.
async fn run(
    component: Component,
    listener: TcpListener,
    config: &MeshConfig,
    metrics: &Metrics,
    schema: Schema,
    shutdown: Shutdown,
) -> Result<(), MeshError> {
    if component == Component::Gateway {
        return Ok(gateway::run(listener, config.gateway_settings(), metrics, shutdown).await?);
    }
    let database = config.database(component)?;
    let migrations = component.migrations().ok_or(ConfigProblem::NoDatabase)?;
    let db = Database::open(&database).map_err(|source| MeshError::Database { component, source })?;
    let access = config.access().await.map_err(|e| MeshError::Setup { component, reason: e.to_string() })?;
    let (server, background) = grpc_server(component, &db, config, metrics)?;
    let server = server.access(access);
    // Health stays NOT_SERVING until the schema is current and the database
    // answers (a service that waits for migrations keeps waiting, it never fails); background work (Fulfillment's workers) starts only then.
    let (is_ready, ready_signal) = tokio::sync::oneshot::channel::<()>();
    let ready = async move {
        match schema {
            Schema::Migrate => kit::db::migrate(&database, migrations).await?,
            Schema::AwaitMigrations => await_migrations(component, &database, migrations).await,
        }
        db.ping().await?;
        let _ = is_ready.send(());
        Ok::<(), DbError>(())
    };
    let background = {
        let shutdown = shutdown.clone();
        async move {
            if ready_signal.await.is_ok() {
                futures::future::join_all(background.into_iter().map(|work| work(shutdown.clone()))).await;
            }
        }
    };
    let served = server.descriptors(proto::FILE_DESCRIPTOR_SET).options(config.serve.clone()).run(
        listener,
        ready,
        shutdown.clone(),
    );
    let (served, ()) = tokio::join!(
        async {
            let result = served.await;
            // However the server stops, the background work stops with it.
            shutdown.cancel();
            result
        },
        background
    );
    served.map_err(|source| MeshError::Serve { component, source })
}

/// Work a component does besides answering RPCs: its service's background work,
/// or trimming the streams its bus uses; started once the component is ready.
type Background = Box<dyn FnOnce(Shutdown) -> futures::future::BoxFuture<'static, ()> + Send>;

/// The component's event bus (Redis Streams with `redis_url`, else the log in
/// `data_dir`), with the mesh's retention; the task that trims the streams it
/// uses is added to `background`, so every component with a bus trims.
fn open_bus(
    config: &MeshConfig,
    metrics: &Metrics,
    background: &RefCell<Vec<Background>>,
) -> Result<std::sync::Arc<dyn kit::bus::EventBus>, SetupError> {
    config.bus.check().map_err(SetupError::setting)?;
    let bus = kit::bus::open_with(config.redis_url.as_deref(), &config.data_dir.join("events.db"), &config.bus)?;
    let retention = kit::bus::Retention::new(std::sync::Arc::clone(&bus), config.bus.trim_every, metrics);
    background.borrow_mut().push(Box::new(move |shutdown| Box::pin(retention.run(shutdown))));
    Ok(bus)
}

/// The gRPC server of a service component, over its database, recording into
/// `metrics`, and the background work that goes with it. Every service starts
/// the same way ([`start_service`]); only its settings differ.
fn grpc_server(
    component: Component,
    db: &Database,
    config: &MeshConfig,
    metrics: &Metrics,
) -> Result<(GrpcServer, Vec<Background>), MeshError> {
    let server = GrpcServer::new(component.name()).metrics(metrics.clone());
    let background = RefCell::new(Vec::new());
    let bus = || open_bus(config, metrics, &background);
    let dependencies = Dependencies::new(component.name(), db, metrics)
        .with_redis(config.redis_url.as_deref())
        .with_credential(config.identity(component))
        .with_bus_opened_by(&bus);
    let server = match component {
        Component::Gateway => return Err(ConfigProblem::NoDatabase.into()),
        Component::Fulfillment => {
            start_service::<fulfillment::Fulfillment>(&config.fulfillment.settings, &dependencies, server, &background)
        }
        Component::CustomerIdentity => start_service::<customer_identity::CustomerIdentity>(
            &config.customer_identity.settings,
            &dependencies,
            server,
            &background,
        ),
        Component::CatalogIngest => start_service::<catalog_ingest::CatalogIngest>(
            &config.catalog_ingest.settings,
            &dependencies,
            server,
            &background,
        ),
        Component::PurchaseHistory => start_service::<purchase_history::PurchaseHistory>(
            &config.purchase_history.settings,
            &dependencies,
            server,
            &background,
        ),
    }
    .map_err(|source| MeshError::Service { component, source })?;
    drop(dependencies);
    Ok((server, background.into_inner()))
}

/// Builds service `S` from its settings, adds its gRPC services to `server`,
/// and queues its background work.
fn start_service<S: Service>(
    settings: &S::Config,
    dependencies: &Dependencies<'_>,
    server: GrpcServer,
    background: &RefCell<Vec<Background>>,
) -> Result<GrpcServer, SetupError> {
    let service = S::build(settings, dependencies)?;
    let server = service.serve(server);
    background
        .borrow_mut()
        .push(Box::new(move |shutdown| Box::pin(async move { service.run_background(shutdown).await })));
    Ok(server)
}
