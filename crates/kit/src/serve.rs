//! The one way a gRPC component starts.
//!
//! A [`GrpcServer`] serves the component's services together with
//! `grpc.health.v1.Health` and server reflection (v1 and v1alpha), behind the
//! server trace layer and, with [`GrpcServer::metrics`], RED metrics per RPC.
//! Health answers NOT_SERVING until the component says it is ready (migrations
//! ran, dependencies answer), then SERVING. On shutdown it goes NOT_SERVING
//! first, waits `shutdown_grace` so load balancers notice, stops accepting, and
//! lets in-flight calls finish for up to `drain_timeout`.
//!
//! ```no_run
//! # async fn run() -> Result<(), kit::serve::ServeError> {
//! use kit::serve::{GrpcServer, ServeOptions};
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let shutdown = kit::shutdown::on_signal();
//! GrpcServer::new("example")
//!     // .service(FulfillmentServiceServer::new(api)) for a real component
//!     .options(ServeOptions::default())
//!     .run(listener, async { Ok::<(), std::io::Error>(()) }, shutdown)
//!     .await
//! # }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::metrics::{GrpcMetricsLayer, Metrics};
use crate::shutdown::Shutdown;
use crate::trace::grpc_server_layer_for;

/// How a component stops.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ServeOptions {
    /// After health goes NOT_SERVING and before the listener closes, so load
    /// balancers stop sending new calls. 0 for a single process; a few seconds
    /// on Kubernetes.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Longest wait for in-flight calls once the listener closed.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self { shutdown_grace: Duration::ZERO, drain_timeout: Duration::from_secs(4) }
    }
}

/// Why a component stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listener could not be bound or read.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection service could not read the descriptors.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The component could not get ready (a migration or a dependency failed).
    #[error("not ready: {0}")]
    NotReady(BoxError),
}

/// Any error a readiness step may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A gRPC component being assembled: its services, descriptors and options.
pub struct GrpcServer {
    component: &'static str,
    routes: RoutesBuilder,
    services: Vec<&'static str>,
    descriptors: Vec<&'static [u8]>,
    options: ServeOptions,
    metrics: GrpcMetricsLayer,
}

impl GrpcServer {
    /// A server for the component named `component` (used in logs).
    pub fn new(component: &'static str) -> Self {
        Self {
            component,
            routes: RoutesBuilder::default(),
            services: Vec::new(),
            descriptors: Vec::new(),
            options: ServeOptions::default(),
            metrics: GrpcMetricsLayer::disabled(),
        }
    }

    /// Serves a generated tonic service; its name is listed by reflection and
    /// reported by health.
    pub fn service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.services.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Registers an encoded FileDescriptorSet describing the services, for reflection.
    pub fn descriptors(mut self, file_descriptor_set: &'static [u8]) -> Self {
        self.descriptors.push(file_descriptor_set);
        self
    }

    /// Sets how the server stops.
    pub fn options(mut self, options: ServeOptions) -> Self {
        self.options = options;
        self
    }

    /// Records RED metrics of every RPC into `metrics`, labelled with its
    /// component (see [`GrpcMetricsLayer`]).
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = GrpcMetricsLayer::new(&metrics);
        self
    }

    /// Serves on `listener` until `shutdown` is cancelled. Health turns SERVING
    /// once `ready` succeeds; if it fails, the server stops with
    /// [`ServeError::NotReady`].
    pub async fn run<E>(
        self,
        listener: TcpListener,
        ready: impl Future<Output = Result<(), E>> + Send + 'static,
        shutdown: Shutdown,
    ) -> Result<(), ServeError>
    where
        E: Into<BoxError> + 'static,
    {
        let Self { component, mut routes, services, descriptors, options, metrics } = self;
        let address = listener.local_addr()?;

        let (health, health_service) = tonic_health::server::health_reporter();
        set_status(&health, &services, ServingStatus::NotServing).await;
        routes.add_service(health_service);

        let mut reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        let mut reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for set in &descriptors {
            reflection_v1 = reflection_v1.register_encoded_file_descriptor_set(set);
            reflection_v1alpha = reflection_v1alpha.register_encoded_file_descriptor_set(set);
        }
        // List only what this component serves, not every service in the descriptors.
        for name in services.iter().copied().chain(["grpc.health.v1.Health"]) {
            reflection_v1 = reflection_v1.with_service_name(name);
            reflection_v1alpha = reflection_v1alpha.with_service_name(name);
        }
        routes.add_service(reflection_v1.build_v1()?);
        routes.add_service(reflection_v1alpha.build_v1alpha()?);

        let readiness = {
            let health = health.clone();
            let services = services.clone();
            async move {
                match ready.await {
                    Ok(()) => {
                        set_status(&health, &services, ServingStatus::Serving).await;
                        tracing::info!(component, %address, "ready: health SERVING");
                        // Stay pending: only the server or the shutdown ends `run`.
                        std::future::pending::<BoxError>().await
                    }
                    Err(error) => error.into(),
                }
            }
        };

        let stop_accepting = {
            let health = health.clone();
            let services = services.clone();
            let shutdown = shutdown.clone();
            let grace = options.shutdown_grace;
            async move {
                shutdown.cancelled().await;
                set_status(&health, &services, ServingStatus::NotServing).await;
                tracing::info!(component, grace = ?grace, "health NOT_SERVING; draining");
                tokio::time::sleep(grace).await;
            }
        };

        let server = tonic::transport::Server::builder()
            .layer(grpc_server_layer_for(component))
            .layer(metrics)
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(accept_nodelay(listener), stop_accepting);

        tracing::info!(component, %address, services = ?services, "listening");
        let drain_deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(options.shutdown_grace + options.drain_timeout).await;
        };
        let result = tokio::select! {
            result = server => result.map_err(ServeError::from),
            error = readiness => {
                tracing::error!(component, %error, "could not get ready; stopping");
                Err(ServeError::NotReady(error))
            }
            () = drain_deadline => {
                tracing::warn!(component, "in-flight calls still running after the drain timeout; stopping anyway");
                Ok(())
            }
        };
        tracing::info!(component, "stopped");
        result
    }
}

/// Accepted connections with Nagle's algorithm off: tonic's own `tcp_nodelay`
/// applies only to listeners it binds, and small gRPC frames otherwise wait
/// out the peer's delayed ACK (40 ms).
fn accept_nodelay(listener: TcpListener) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

async fn set_status(health: &HealthReporter, services: &[&'static str], status: ServingStatus) {
    health.set_service_status("", status).await;
    for name in services {
        health.set_service_status(*name, status).await;
    }
}
