//! Starting components: one ([`serve`]), all in one process ([`start`]), and
//! migrating their databases ([`migrate`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use kit::db::{Database, DbError};
use kit::serve::{GrpcServer, ServeError};
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
    #[error("{component}: cannot listen on {address}: {source}")]
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
    /// A gRPC component failed.
    #[error("{component}: {source}")]
    Serve {
        /// Which component.
        component: Component,
        /// Why.
        source: ServeError,
    },
    /// The cache could not be set up (a malformed Redis URL).
    #[error("{component}: cache: {source}")]
    Cache {
        /// Which component.
        component: Component,
        /// Why.
        source: kit::cache::CacheError,
    },
    /// The gateway failed.
    #[error("gateway: {0}")]
    Gateway(#[from] gateway::GatewayError),
    /// A component's task panicked.
    #[error("a component crashed: {0}")]
    Crashed(#[from] tokio::task::JoinError),
}

/// Runs one component until `shutdown` is cancelled.
pub async fn serve(component: Component, config: &MeshConfig, shutdown: Shutdown) -> Result<(), MeshError> {
    let listener = bind(component, config.listen(component)).await?;
    run(component, listener, config, shutdown).await
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

/// Binds every component's listener (so a taken port fails before anything
/// runs), then starts them all. They stop when `shutdown` is cancelled, or when
/// one of them fails.
pub async fn start(config: MeshConfig, shutdown: Shutdown) -> Result<RunningMesh, MeshError> {
    let mut listeners = Vec::new();
    for component in Component::ALL {
        listeners.push((component, bind(component, config.listen(component)).await?));
    }
    let mut addresses = BTreeMap::new();
    let mut tasks = JoinSet::new();
    for (component, listener) in listeners {
        let address = listener.local_addr().map_err(|source| MeshError::Bind {
            component,
            address: config.listen(component),
            source,
        })?;
        addresses.insert(component, address);
        let config = config.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move { (component, run(component, listener, &config, shutdown).await) });
    }
    Ok(RunningMesh { addresses, shutdown, tasks, data_dir: config.data_dir, shared_database: config.database_url })
}

/// The whole mesh, running in this process.
pub struct RunningMesh {
    addresses: BTreeMap<Component, SocketAddr>,
    shutdown: Shutdown,
    tasks: JoinSet<(Component, Result<(), MeshError>)>,
    data_dir: std::path::PathBuf,
    shared_database: Option<String>,
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

    /// What `commerce-mesh up` prints: every component's URL and the storage in use.
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

async fn run(
    component: Component,
    listener: TcpListener,
    config: &MeshConfig,
    shutdown: Shutdown,
) -> Result<(), MeshError> {
    if component == Component::Gateway {
        return Ok(gateway::run(listener, shutdown).await?);
    }
    let database = config.database(component)?;
    let migrations = component.migrations().ok_or(ConfigProblem::NoDatabase)?;
    let db = Database::open(&database).map_err(|source| MeshError::Database { component, source })?;
    let server = grpc_server(component, &db, config)?;
    // Health stays NOT_SERVING until the schema is current and the database answers.
    let ready = async move {
        kit::db::migrate(&database, migrations).await?;
        db.ping().await
    };
    server
        .descriptors(proto::FILE_DESCRIPTOR_SET)
        .options(config.serve.clone())
        .run(listener, ready, shutdown)
        .await
        .map_err(|source| MeshError::Serve { component, source })
}

/// The gRPC server of a service component, over its database.
fn grpc_server(component: Component, db: &Database, config: &MeshConfig) -> Result<GrpcServer, MeshError> {
    let server = GrpcServer::new(component.name());
    Ok(match component {
        Component::Gateway => return Err(ConfigProblem::NoDatabase.into()),
        Component::Fulfillment => server.service(fulfillment::service()),
        Component::CustomerIdentity => {
            let settings = &config.customer_identity.settings;
            let cache = customer_identity::cache(settings, config.redis_url.as_deref())
                .map_err(|source| MeshError::Cache { component, source })?;
            server.service(customer_identity::service(db, cache, settings))
        }
        Component::CatalogIngest => server.service(catalog_ingest::service()),
        Component::PurchaseHistory => server.service(purchase_history::service()),
    })
}
