//! The trace UI of `up --with-trace-ui`: the Jaeger UI and Jaeger's query API
//! (`/api/services`, `/api/traces?service=…&limit=…`, `/api/traces/{id}`) on
//! `trace_ui.listen`, over this process's own spans kept in memory: no Jaeger,
//! no Docker, no other process.
//!
//! The UI, its API and the store are the `otlp-embedded` crate's, behind the
//! cargo feature `trace-ui` (off by default: its build script needs a protoc,
//! which `scripts/protoc` provides). Every component's spans reach the store
//! as they reach an OTLP collector: through a batch processor, each under its
//! component's `service.name` and `service.instance.id`
//! ([`kit::component_spans`]), so the UI shows each component as a service of
//! its own. Spans are handed over in process; the store keeps the
//! `trace_ui.max_traces` most recent traces within about
//! `trace_ui.max_memory_mib`, dropping the least recently used first.
//!
//! The store's search looks at each trace's root span: `/api/services` lists
//! the services that start traces (the gateway, the workers), and a trace
//! continuing a caller's `traceparent` (its root is the caller's) is found by
//! its id only, at `/trace/<id>`.

use std::net::SocketAddr;

use kit::component_spans::Components;
use kit::telemetry::{Telemetry, TelemetryConfig, TelemetryError};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

/// The trace UI's settings (`trace_ui.*`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct TraceUiConfig {
    /// `up` serves the UI (`up --with-trace-ui`); needs a binary built with the `trace-ui` feature.
    pub enabled: bool,
    /// Where the UI and its API listen.
    pub listen: SocketAddr,
    /// The most traces kept (at least 1); past it the least recently used are dropped.
    pub max_traces: u32,
    /// About the most memory the kept traces take, in MiB; past it the least recently used are dropped.
    pub max_memory_mib: u32,
}

impl Default for TraceUiConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 16686)),
            max_traces: 10_000,
            max_memory_mib: 256,
        }
    }
}

/// Why the trace UI cannot run.
#[derive(Debug, thiserror::Error)]
pub enum TraceUiError {
    /// The binary was built without the `trace-ui` feature.
    #[error(
        "the trace UI (--with-trace-ui, trace_ui.enabled) is not in this build of commerce-mesh; build it with \
         the trace-ui feature: PROTOC=\"$(scripts/protoc)\" cargo run --release -p commerce-mesh --features trace-ui \
         -- up --with-trace-ui"
    )]
    NotBuilt,
    /// The UI was asked for, but no store is fed with this process's spans.
    #[error("trace_ui.enabled, but no trace store is fed with this process's spans (see commerce_mesh::trace_ui)")]
    NoStore,
    /// The listen address is taken or invalid.
    #[error("trace UI: cannot listen on {address}: {source}")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("trace UI on {address}: {source}")]
    Serve {
        /// Where it listened.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Installs telemetry as [`kit::telemetry::init_with_components`] does and,
/// given a store, also hands it every span.
pub fn init_telemetry(
    config: &TelemetryConfig,
    components: Components,
    store: Option<&TraceStore>,
) -> Result<Telemetry, TelemetryError> {
    match store {
        None => kit::telemetry::init_with_components(config, components),
        Some(store) => store.init_telemetry(config, components),
    }
}

/// Binds the UI's listener; answers it and the address it got.
pub async fn bind(address: SocketAddr) -> Result<(TcpListener, SocketAddr), TraceUiError> {
    let bind_error = |source| TraceUiError::Bind { address, source };
    let listener = TcpListener::bind(address).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    Ok((listener, bound))
}

#[cfg(feature = "trace-ui")]
pub use store::TraceStore;

#[cfg(feature = "trace-ui")]
mod store {
    use std::convert::Infallible;
    use std::fmt;
    use std::net::SocketAddr;
    use std::time::Duration;

    use axum::http::{StatusCode, header::LOCATION};
    use axum::response::Response;
    use kit::component_spans::{ByComponent, Components};
    use kit::shutdown::Shutdown;
    use kit::telemetry::{Telemetry, TelemetryConfig, TelemetryError};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
    use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanExporter};
    use otlp_embedded::TraceService as _;
    use prost::Message as _;
    use tokio::net::TcpListener;

    use super::{TraceUiConfig, TraceUiError};

    /// How long a finished span may wait before the store has it: short, so
    /// the trace of a request just made is there when its caller looks.
    const HANDOVER_DELAY: Duration = Duration::from_millis(500);

    /// The traces of this process, in memory, bounded; cheap to clone (one store).
    #[derive(Clone)]
    pub struct TraceStore {
        state: otlp_embedded::StateRef,
    }

    impl fmt::Debug for TraceStore {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("TraceStore").finish_non_exhaustive()
        }
    }

    impl TraceStore {
        /// An empty store bounded as `config` says.
        pub fn new(config: &TraceUiConfig) -> Self {
            let mib = usize::try_from(config.max_memory_mib).unwrap_or(usize::MAX);
            let state = otlp_embedded::State::new(otlp_embedded::Config {
                // None would keep nothing at all.
                max_length: config.max_traces.max(1),
                max_memory_usage: mib.saturating_mul(1 << 20),
            });
            Self { state }
        }

        /// A store when `config` enables the UI.
        pub fn for_config(config: &TraceUiConfig) -> Result<Option<Self>, TraceUiError> {
            Ok(config.enabled.then(|| Self::new(config)))
        }

        pub(super) fn init_telemetry(
            &self,
            config: &TelemetryConfig,
            components: Components,
        ) -> Result<Telemetry, TelemetryError> {
            kit::telemetry::init_with_components_and(config, components, |builder, components| {
                // As OTLP export does: OTEL_SERVICE_NAME names every span alike.
                if components.is_empty() || std::env::var_os("OTEL_SERVICE_NAME").is_some() {
                    builder.with_span_processor(batched(self.exporter()))
                } else {
                    match ByComponent::new(components.clone(), || Ok::<_, Infallible>(self.exporter())) {
                        Ok(exporter) => builder.with_span_processor(batched(exporter)),
                        Err(never) => match never {},
                    }
                }
            })
        }

        /// An exporter into this store.
        fn exporter(&self) -> StoreExporter {
            StoreExporter { state: self.state.clone(), resource: Resource::builder_empty().build() }
        }

        /// Serves the UI and its API on `listener`, bound to `address`, until `stop` is cancelled.
        pub async fn serve(
            self,
            listener: TcpListener,
            address: SocketAddr,
            stop: Shutdown,
        ) -> Result<(), TraceUiError> {
            let app = otlp_embedded::ui_app(self.state, "/").layer(axum::middleware::map_response(page_not_redirect));
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .map_err(|source| TraceUiError::Serve { address, source })
        }
    }

    /// The UI's pages (`/`, `/search`, `/trace/<id>`) come as a 307 with the
    /// page as its body and no `Location`: a 200, so every client shows the page.
    async fn page_not_redirect(mut response: Response) -> Response {
        if response.status() == StatusCode::TEMPORARY_REDIRECT && !response.headers().contains_key(LOCATION) {
            *response.status_mut() = StatusCode::OK;
        }
        response
    }

    fn batched(exporter: impl SpanExporter + 'static) -> BatchSpanProcessor {
        let config = BatchConfigBuilder::default().with_scheduled_delay(HANDOVER_DELAY).build();
        BatchSpanProcessor::builder(exporter).with_batch_config(config).build()
    }

    /// Hands spans to the store in process, as the OTLP request a collector
    /// would receive (the store has its own copy of the OTLP messages: the
    /// same wire format, so a request is re-read as the store's).
    struct StoreExporter {
        state: otlp_embedded::StateRef,
        resource: Resource,
    }

    impl fmt::Debug for StoreExporter {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("StoreExporter").field("resource", &self.resource).finish_non_exhaustive()
        }
    }

    impl SpanExporter for StoreExporter {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let resource = ResourceAttributesWithSchema::from(&self.resource);
            let request =
                ExportTraceServiceRequest { resource_spans: group_spans_by_resource_and_scope(batch, &resource) };
            let request = otlp_embedded::proto::collector::trace::v1::ExportTraceServiceRequest::decode(
                request.encode_to_vec().as_slice(),
            )
            .map_err(|error| OTelSdkError::InternalFailure(format!("trace store: {error}")))?;
            otlp_embedded::TraceServiceImpl::new(self.state.clone())
                .export(tonic::Request::new(request))
                .await
                .map(drop)
                .map_err(|status| OTelSdkError::InternalFailure(format!("trace store: {}", status.message())))
        }

        fn set_resource(&mut self, resource: &Resource) {
            self.resource = resource.clone();
        }
    }

    #[cfg(test)]
    #[allow(clippy::unwrap_used)]
    mod tests {
        use std::collections::BTreeSet;

        use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
        use opentelemetry_sdk::trace::SdkTracerProvider;

        use super::*;

        #[test]
        fn the_store_keeps_the_newest_traces_under_their_service_and_drops_the_oldest() {
            let store = TraceStore::new(&TraceUiConfig { max_traces: 2, ..TraceUiConfig::default() });
            let provider = SdkTracerProvider::builder()
                .with_resource(Resource::builder_empty().with_service_name("gateway").build())
                .with_simple_exporter(store.exporter())
                .build();
            let tracer = provider.tracer("test");
            let ids: Vec<_> = (0..3)
                .map(|i| {
                    let mut span = tracer.start(format!("request {i}"));
                    let id = span.span_context().trace_id();
                    span.end();
                    id
                })
                .collect();
            let mut state = store.state.blocking_write();
            assert_eq!(state.len(), 2, "max_traces");
            assert!(state.get_by_id(&ids[0].to_bytes()).is_none(), "the oldest is dropped");
            let newest = state.get_by_id(&ids[2].to_bytes()).expect("the newest is kept");
            assert_eq!(newest.service_name(), Some("gateway"), "under its resource's service name");
            assert_eq!(newest.operation(), Some("request 2"));
            assert_eq!(state.get_operations("gateway"), BTreeSet::from(["request 1", "request 2"]));
        }
    }
}

/// Without the `trace-ui` feature there is no store: asking for one fails,
/// saying how to build with it.
#[cfg(not(feature = "trace-ui"))]
#[derive(Clone, Debug)]
pub struct TraceStore {
    never: std::convert::Infallible,
}

#[cfg(not(feature = "trace-ui"))]
impl TraceStore {
    /// Fails when `config` enables the UI: this build has none.
    pub fn for_config(config: &TraceUiConfig) -> Result<Option<Self>, TraceUiError> {
        if config.enabled { Err(TraceUiError::NotBuilt) } else { Ok(None) }
    }

    fn init_telemetry(&self, _: &TelemetryConfig, _: Components) -> Result<Telemetry, TelemetryError> {
        match self.never {}
    }

    /// Never called: no store exists in this build.
    pub async fn serve(self, _: TcpListener, _: SocketAddr, _: kit::shutdown::Shutdown) -> Result<(), TraceUiError> {
        match self.never {}
    }
}
