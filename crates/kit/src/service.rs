//! The one face every service crate shows: a value built from its settings and
//! what the mesh gives it ([`Dependencies`]), which adds its gRPC services to a
//! server and runs its background work. The binary starts all four services
//! through this trait, and a reader who knows one service's `lib.rs` knows all four.
//!
//! ```text
//! // crates/commerce-mesh starts every service the same way:
//! let service = S::build(&settings, &dependencies)?;
//! let server = service.serve(GrpcServer::new(component.name()));
//! let background = service.run_background(shutdown);
//! ```

use std::cell::OnceCell;
use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::bus::EventBus;
use crate::client::TracedChannel;
use crate::credential::Credential;
use crate::db::{Database, Migrations};
use crate::metrics::Metrics;
use crate::serve::GrpcServer;

/// Why a service cannot start with its settings and dependencies.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A setting it cannot run with; the message names it (`fulfillment.workers.concurrency …`).
    #[error("{0}")]
    Setting(Box<dyn std::error::Error + Send + Sync>),
    /// The event bus could not be opened.
    #[error("{0}")]
    Bus(#[from] crate::bus::BusError),
    /// The cache could not be set up (a malformed Redis URL).
    #[error("cache: {0}")]
    Cache(#[from] crate::cache::CacheError),
}

impl SetupError {
    /// A setting the service cannot run with, from any error that names it.
    pub fn setting(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Setting(error.into())
    }
}

/// A peer's URL that makes no channel.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {source}")]
struct PeerUrlError {
    setting: &'static str,
    source: crate::client::ClientError,
}

/// Opens the event bus for a service that uses one.
pub type OpenBus<'a> = dyn Fn() -> Result<Arc<dyn EventBus>, SetupError> + 'a;

/// What the mesh hands a service when it builds it.
pub struct Dependencies<'a> {
    /// The component's name as the mesh knows it (`purchase-history`): its spans
    /// and the calls it makes to peers carry it.
    pub component: &'static str,
    /// The service's own database (migrated before the service answers).
    pub db: &'a Database,
    /// Where its metrics are registered.
    pub metrics: &'a Metrics,
    /// Redis, when the mesh has one (caches, cluster-wide quotas).
    pub redis_url: Option<&'a str>,
    /// What the service presents when it calls a peer.
    pub credential: Credential,
    open_bus: Option<&'a OpenBus<'a>>,
    bus: OnceCell<Arc<dyn EventBus>>,
}

impl<'a> Dependencies<'a> {
    /// Component `component`'s database and metrics; no Redis, no bus, no credential yet.
    pub fn new(component: &'static str, db: &'a Database, metrics: &'a Metrics) -> Self {
        Self {
            component,
            db,
            metrics,
            redis_url: None,
            credential: Credential::none(),
            open_bus: None,
            bus: OnceCell::new(),
        }
    }

    /// With Redis at `url`, when there is one.
    pub fn with_redis(mut self, url: Option<&'a str>) -> Self {
        self.redis_url = url;
        self
    }

    /// Presenting `credential` to peers.
    pub fn with_credential(mut self, credential: Credential) -> Self {
        self.credential = credential;
        self
    }

    /// With a bus already open.
    pub fn with_bus(self, bus: Arc<dyn EventBus>) -> Self {
        let _ = self.bus.set(bus);
        self
    }

    /// With a bus `open` opens when the service first asks for it, so a service
    /// without events opens none.
    pub fn with_bus_opened_by(mut self, open: &'a OpenBus<'a>) -> Self {
        self.open_bus = Some(open);
        self
    }

    /// A channel to the peer at `url` (the value of setting `setting`, named in
    /// the error), presenting this component's credential on every call.
    pub fn peer(&self, setting: &'static str, url: &str) -> Result<TracedChannel, SetupError> {
        crate::client::channel_from(self.component, url, self.credential.clone())
            .map_err(|source| SetupError::Setting(Box::new(PeerUrlError { setting, source })))
    }

    /// The event bus, opened on first use.
    pub fn bus(&self) -> Result<Arc<dyn EventBus>, SetupError> {
        if let Some(bus) = self.bus.get() {
            return Ok(Arc::clone(bus));
        }
        let open =
            self.open_bus.ok_or_else(|| SetupError::setting("this service needs an event bus; none was given"))?;
        let bus = open()?;
        let _ = self.bus.set(Arc::clone(&bus));
        Ok(bus)
    }
}

/// A service of the mesh: built from its settings, answering gRPC, working in the background.
pub trait Service: Sized + Send + Sync + 'static {
    /// Its own settings (`MESH_<NAME>__…`).
    type Config;

    /// Its name: in logs, as its Postgres schema, as its SQLite file name.
    const NAME: &'static str;

    /// Its schema migrations, for both backends.
    fn migrations() -> &'static Migrations;

    /// Checks `config` and builds the service over `dependencies`.
    fn build(config: &Self::Config, dependencies: &Dependencies<'_>) -> Result<Self, SetupError>;

    /// Adds its gRPC services to `server`.
    fn serve(&self, server: GrpcServer) -> GrpcServer;

    /// Runs its background work (workers, relays, consumers; possibly none) until `shutdown`.
    fn run_background(&self, shutdown: CancellationToken) -> impl Future<Output = ()> + Send {
        async move { shutdown.cancelled().await }
    }
}
