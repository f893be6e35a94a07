//! The one way a gRPC component starts.
//!
//! A [`GrpcServer`] serves the component's services together with
//! `grpc.health.v1.Health` and, when `reflection` is on, server reflection
//! (v1 and v1alpha), behind the server trace layer and, with
//! [`GrpcServer::metrics`], RED metrics per RPC, its callers checked with
//! [`GrpcServer::access`] ([`crate::access`]), and protected by
//! [`crate::protect`]: a deadline on every unary call (`rpc_timeout`) and
//! load shedding past `max_concurrent_rpcs`.
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

use std::collections::HashSet;
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

use crate::access::{Access, AccessLayer};
use crate::metrics::{GrpcMetricsLayer, Metrics};
use crate::protect::{ProtectLayer, Protection};
use crate::shutdown::Shutdown;
use crate::trace::grpc_server_layer_for;

/// How a component protects itself and how it stops.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ServeOptions {
    /// The longest a unary call may run; past it the call ends
    /// DEADLINE_EXCEEDED and its handler is dropped. A caller's shorter
    /// `grpc-timeout` wins; streaming calls have only the caller's. Zero: no
    /// limit of the server's own.
    #[serde(with = "humantime_serde")]
    pub rpc_timeout: Duration,
    /// Calls running at once (health and reflection not counted); one more
    /// is refused at once with UNAVAILABLE and `RetryInfo`.
    pub max_concurrent_rpcs: usize,
    /// After health goes NOT_SERVING and before the listener closes, so load
    /// balancers stop sending new calls. 0 for a single process; a few seconds
    /// on Kubernetes.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Longest wait for in-flight calls once the listener closed.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Serve gRPC server reflection (v1, v1alpha), so tools such as
    /// `grpcurl` list and describe the services. Off unless asked for: it
    /// maps the whole API for anyone who reaches the port.
    pub reflection: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            rpc_timeout: Duration::from_secs(30),
            max_concurrent_rpcs: 1024,
            shutdown_grace: Duration::ZERO,
            drain_timeout: Duration::from_secs(4),
            reflection: false,
        }
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
    /// The descriptors given do not decode.
    #[error("descriptors: {0}")]
    Descriptors(#[from] prost::DecodeError),
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
    access: AccessLayer,
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
            access: AccessLayer::new(None),
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

    /// Sets how the server protects itself and stops.
    pub fn options(mut self, options: ServeOptions) -> Self {
        self.options = options;
        self
    }

    /// Checks every call's caller against `access` (see [`crate::access`]);
    /// without it every call is let through.
    pub fn access(mut self, access: Access) -> Self {
        self.access = AccessLayer::new(Some(access));
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
        let Self { component, mut routes, services, descriptors, options, metrics, access } = self;
        let address = listener.local_addr()?;

        let (health, health_service) = tonic_health::server::health_reporter();
        set_status(&health, &services, ServingStatus::NotServing).await;
        routes.add_service(health_service);

        if options.reflection {
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
        }
        let protection = ProtectLayer::new(Protection {
            max_concurrent_rpcs: options.max_concurrent_rpcs,
            rpc_timeout: options.rpc_timeout,
            streaming_methods: streaming_methods(&descriptors, &services)?,
        });

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
            // Inside the trace and metrics layers, so a refused, shed or
            // timed-out call is traced and counted with its status like any
            // other; callers are checked before a call takes a permit.
            .layer(access)
            .layer(protection)
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

/// The full paths (`/package.Service/Method`) of the streaming methods of
/// `services`, from the descriptors given for reflection.
fn streaming_methods(
    descriptors: &[&'static [u8]],
    services: &[&'static str],
) -> Result<HashSet<String>, prost::DecodeError> {
    use prost::Message as _;
    let mut streaming = HashSet::new();
    // A set that does not decode is an error, not skipped: its streaming
    // methods would otherwise get the unary deadline.
    for bytes in descriptors {
        let set = prost_types::FileDescriptorSet::decode(*bytes)?;
        for file in &set.file {
            let package = file.package();
            for service in &file.service {
                let name = if package.is_empty() {
                    service.name().to_string()
                } else {
                    format!("{package}.{}", service.name())
                };
                if !services.contains(&name.as_str()) {
                    continue;
                }
                for method in &service.method {
                    if method.client_streaming() || method.server_streaming() {
                        streaming.insert(format!("/{name}/{}", method.name()));
                    }
                }
            }
        }
    }
    Ok(streaming)
}

async fn set_status(health: &HealthReporter, services: &[&'static str], status: ServingStatus) {
    health.set_service_status("", status).await;
    for name in services {
        health.set_service_status(*name, status).await;
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use prost::Message as _;
    use prost_types::{FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto, ServiceDescriptorProto};

    use super::*;

    fn method(name: &str, client_streaming: bool, server_streaming: bool) -> MethodDescriptorProto {
        MethodDescriptorProto {
            name: Some(name.into()),
            client_streaming: Some(client_streaming),
            server_streaming: Some(server_streaming),
            ..Default::default()
        }
    }

    #[test]
    fn streaming_methods_of_the_served_services_are_found_in_the_descriptors() {
        let service = |name: &str| ServiceDescriptorProto {
            name: Some(name.into()),
            method: vec![
                method("Get", false, false),
                method("Import", true, false),
                method("Watch", false, true),
                method("Chat", true, true),
            ],
            ..Default::default()
        };
        let set = FileDescriptorSet {
            file: vec![FileDescriptorProto {
                name: Some("a.proto".into()),
                package: Some("shop.v1".into()),
                service: vec![service("Served"), service("NotServed")],
                ..Default::default()
            }],
        };
        let bytes: &'static [u8] = Box::leak(set.encode_to_vec().into_boxed_slice());
        let mut found: Vec<String> = streaming_methods(&[bytes], &["shop.v1.Served"]).unwrap().into_iter().collect();
        found.sort();
        assert_eq!(found, ["/shop.v1.Served/Chat", "/shop.v1.Served/Import", "/shop.v1.Served/Watch"]);
    }
}
