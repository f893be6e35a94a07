//! [`Fulfillment`]: the service's one public face ([`kit::service::Service`]):
//! the API, the workers, the outbox relay, the retirements consumer and the
//! outcome webhooks' sender, over one store.

use std::sync::Arc;
use std::time::Duration;

use kit::bus::EventBus;
use kit::bus::consumer::{Consumer, ConsumerMetrics};
use kit::client::TracedChannel;
use kit::db::{Database, Migrations};
use kit::outbox::OutboxMetrics;
use kit::serve::GrpcServer;
use kit::service::{Dependencies, Service, SetupError};
use proto::commerce::catalog::v1::catalog_ingest_service_client::CatalogIngestServiceClient;
use proto::commerce::fulfillment::v1::fulfillment_dead_letter_service_server::FulfillmentDeadLetterServiceServer;
use proto::commerce::fulfillment::v1::fulfillment_service_server::FulfillmentServiceServer;
use proto::commerce::identity::v1::customer_identity_service_client::CustomerIdentityServiceClient;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::api::FulfillmentApi;
use crate::config::{Config, ConfigError};
use crate::lms::LmsClient;
use crate::metrics::FulfillmentMetrics;
use crate::outbox::OutboxRelay;
use crate::retirement::LearnerRetirer;
use crate::store::{self, Store};
use crate::worker::Workers;
use crate::{MIGRATIONS, NAME, dead_letters, retirement, webhook};

/// The running parts of Fulfillment: the API, the workers and the relay, over one store.
pub struct Fulfillment {
    store: Arc<dyn Store>,
    lms: LmsClient,
    bus: Arc<dyn EventBus>,
    identity: CustomerIdentityServiceClient<TracedChannel>,
    catalog: Option<CatalogIngestServiceClient<TracedChannel>>,
    config: Config,
    metrics: Arc<FulfillmentMetrics>,
    outbox_metrics: OutboxMetrics,
    retirement_metrics: ConsumerMetrics,
    wake: Arc<Notify>,
    published: Arc<Notify>,
    /// The outcome webhooks' sender, when any source system has one.
    webhooks: Option<Arc<webhook::WebhookSender>>,
    /// Notified when outcomes are recorded: wakes the webhook sender.
    outcomes: Arc<Notify>,
}

impl Fulfillment {
    /// Fulfillment over the service's database, publishing to `bus` and
    /// resolving customers through `identity`; its metrics go to `metrics`.
    pub fn new(
        db: &Database,
        bus: Arc<dyn EventBus>,
        identity: CustomerIdentityServiceClient<TracedChannel>,
        config: &Config,
        metrics: &kit::metrics::Metrics,
    ) -> Result<Self, ConfigError> {
        config.check()?;
        let sources = webhook::WebhookSources::of(&config.webhooks);
        let mut fulfillment =
            Self::with_store(store::for_database_with_webhooks(db, sources.clone()), bus, identity, config, metrics)?;
        // Registered with or without webhooks, so dashboards and alerts find the names.
        let webhook_metrics = webhook::WebhookMetrics::default();
        webhook_metrics.register(metrics);
        if !sources.is_empty() {
            let sender = webhook::WebhookSender::new(
                webhook::store::WebhookOutbox::new(db.clone()),
                &config.webhooks,
                config.webhook_delivery,
                webhook_metrics,
                Arc::clone(&fulfillment.outcomes),
            )
            .map_err(|e| ConfigError::new(format!("webhooks: {e}")))?;
            fulfillment.webhooks = Some(Arc::new(sender));
        }
        Ok(fulfillment)
    }

    /// The same over a given store, without the outcome webhooks' sender (`new` builds
    /// the store and the sender from `webhooks`).
    pub fn with_store(
        store: Arc<dyn Store>,
        bus: Arc<dyn EventBus>,
        identity: CustomerIdentityServiceClient<TracedChannel>,
        config: &Config,
        registry: &kit::metrics::Metrics,
    ) -> Result<Self, ConfigError> {
        config.check()?;
        let catalog = match config.check_course_runs {
            true => Some(CatalogIngestServiceClient::new(
                kit::client::channel_from(NAME, &config.catalog_url, config.identity.clone())
                    .map_err(|e| ConfigError::new(format!("catalog_url: {e}")))?,
            )),
            false => None,
        };
        let metrics = Arc::new(FulfillmentMetrics::default());
        metrics.register(registry);
        let outbox_metrics = OutboxMetrics::default();
        outbox_metrics.register("fulfillment_outbox", registry);
        let retirement_metrics = ConsumerMetrics::default();
        retirement_metrics.register("fulfillment_retirements", registry);
        Ok(Self {
            store,
            lms: LmsClient::new(&config.lms).map_err(|e| ConfigError::new(format!("lms: {e}")))?,
            bus,
            identity,
            catalog,
            config: config.clone(),
            metrics,
            outbox_metrics,
            retirement_metrics,
            wake: Arc::new(Notify::new()),
            published: Arc::new(Notify::new()),
            webhooks: None,
            outcomes: Arc::new(Notify::new()),
        })
    }

    /// The gRPC service, ready to hand to [`kit::serve::GrpcServer::service`].
    pub fn service(&self) -> FulfillmentServiceServer<FulfillmentApi> {
        let api = FulfillmentApi::new(
            Arc::clone(&self.store),
            self.identity.clone(),
            Arc::clone(&self.wake),
            self.config.clock_skew,
        );
        FulfillmentServiceServer::new(match &self.catalog {
            Some(catalog) => api.checking_catalog(catalog.clone()),
            None => api,
        })
    }

    /// The operators' dead-letter service of the streams Fulfillment consumes.
    pub fn dead_letter_service(&self) -> FulfillmentDeadLetterServiceServer<dead_letters::FulfillmentDeadLetters> {
        dead_letters::service(Arc::clone(&self.bus), &self.config.customers_stream)
    }

    /// The workers (not yet running).
    pub fn workers(&self) -> Workers {
        Workers::new(
            Arc::clone(&self.store),
            self.lms.clone(),
            self.config.retry,
            self.config.workers,
            Arc::clone(&self.metrics),
            Arc::clone(&self.wake),
            Arc::clone(&self.published),
        )
        .waking_on_outcomes(Arc::clone(&self.outcomes))
    }

    /// The outbox relay (not yet running), with `outbox` retention.
    pub fn relay(&self) -> OutboxRelay {
        OutboxRelay::new(Arc::clone(&self.store) as _, Arc::clone(&self.bus), Arc::clone(&self.published))
            .with_config(self.config.outbox)
            .with_metrics(self.outbox_metrics.clone())
    }

    /// The consumer of the customers stream (retirements), named `name` in its group.
    pub fn retirements_consumer(&self, name: &str) -> Consumer {
        Consumer::new(
            Arc::clone(&self.bus),
            &self.config.customers_stream,
            retirement::GROUP,
            name,
            self.config.consumer,
            self.retirement_metrics.clone(),
        )
    }

    /// Runs the workers, the relay (publishing, pruning), the retirements consumer and the queue gauges
    /// until `shutdown`. The workers finish the attempts in flight, then the
    /// relay publishes what they recorded before it stops.
    async fn run_all(&self, shutdown: CancellationToken) {
        let gauges =
            Arc::clone(&self.metrics).refresh_every(Arc::clone(&self.store), Duration::from_secs(5), shutdown.clone());
        let listen = self.store.listen_for_work(Arc::clone(&self.wake), shutdown.clone());
        let workers_done = CancellationToken::new();
        let workers = async {
            self.workers().run(shutdown.clone()).await;
            workers_done.cancel();
        };
        let relay = async {
            self.relay().run(workers_done.clone()).await;
            if let Err(error) = self.relay().publish_pending().await {
                tracing::warn!(%error, "outbox rows left for the next start: the relay could not publish them");
            }
        };
        let name = format!("{}-{}", NAME, uuid::Uuid::new_v4().simple());
        let (retirements, retirer) = (self.retirements_consumer(&name), LearnerRetirer::new(Arc::clone(&self.store)));
        let retire = retirements.run(&retirer, shutdown.clone());
        // Outcome webhooks go on while the workers finish their attempts, like the relay.
        let webhooks = async {
            if let Some(sender) = &self.webhooks {
                sender.run(workers_done.clone()).await;
            }
        };
        tokio::join!(workers, relay, gauges, listen, retire, webhooks);
    }

    /// Reads the queue and outbox gauges from the store now (they refresh every few seconds while running).
    pub async fn refresh_metrics(&self) -> Result<(), store::StoreError> {
        self.metrics.refresh(self.store.as_ref()).await?;
        self.relay().refresh_backlog(chrono::Utc::now()).await?;
        Ok(())
    }

    /// The store (for tests and tools).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The outcome webhooks' sender, when a source system has a webhook (for tests and tools).
    pub fn webhook_sender(&self) -> Option<&Arc<webhook::WebhookSender>> {
        self.webhooks.as_ref()
    }
}

impl Service for Fulfillment {
    type Config = Config;

    const NAME: &'static str = NAME;

    fn migrations() -> &'static Migrations {
        &MIGRATIONS
    }

    /// Fulfillment over its database and the mesh's bus, resolving customers
    /// through CustomerIdentity at `customer_identity_url` as `dependencies.credential`.
    fn build(config: &Config, dependencies: &Dependencies<'_>) -> Result<Self, SetupError> {
        let config = Config { identity: dependencies.credential.clone(), ..config.clone() };
        let identity = CustomerIdentityServiceClient::new(
            dependencies.peer("fulfillment.customer_identity_url", &config.customer_identity_url)?,
        );
        Self::new(dependencies.db, dependencies.bus()?, identity, &config, dependencies.metrics)
            .map_err(SetupError::setting)
    }

    fn serve(&self, server: GrpcServer) -> GrpcServer {
        server.service(self.service()).service(self.dead_letter_service())
    }

    fn run_background(&self, shutdown: CancellationToken) -> impl Future<Output = ()> + Send {
        self.run_all(shutdown)
    }
}
