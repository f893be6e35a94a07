//! Prometheus metrics: one registry per process, RED per RPC, and the admin
//! port that exposes them.
//!
//! - [`Metrics`]: the registry handle a component gets; [`Metrics::for_component`]
//!   labels what it registers with `component="<name>"`, so `commerce-mesh up`
//!   (every component in one process) keeps each one's metrics apart;
//! - [`GrpcMetricsLayer`]: `rpc_server_requests_total` and
//!   `rpc_server_duration_seconds` for a tonic server (see
//!   [`crate::serve::GrpcServer::metrics`]);
//! - [`serve_admin`]: `GET /metrics` (OpenMetrics text) and `GET /healthz`.

use std::any::Any;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use http::{HeaderMap, Request, Response, header};
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry, Unit};
use tokio::net::TcpListener;
use tonic::Code;
use tower::Layer;
use tower_http::classify::{ClassifiedResponse, ClassifyEos, ClassifyResponse, MakeClassifier};
use tower_http::trace::{MakeSpan, Trace, TraceLayer};
use tracing::Span;

use crate::trace::{grpc_status, split_rpc_path};

/// The content type of `GET /metrics`.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A handle on one process-wide metrics registry; clones share it.
///
/// A component registers its own metrics through the handle
/// [`Metrics::for_component`] gave it; the admin port encodes them all:
///
/// ```
/// use kit::metrics::Metrics;
/// use prometheus_client::encoding::EncodeLabelSet;
/// use prometheus_client::metrics::counter::Counter;
/// use prometheus_client::metrics::family::Family;
///
/// #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
/// struct Outcome {
///     outcome: &'static str,
/// }
///
/// let metrics = Metrics::new();
/// let enrollments = Family::<Outcome, Counter>::default();
/// metrics.for_component("fulfillment").register(
///     "fulfillment_enrollments",
///     "LMS enrollment attempts by outcome",
///     enrollments.clone(),
/// );
/// enrollments.get_or_create(&Outcome { outcome: "enrolled" }).inc();
///
/// let text = metrics.encode();
/// assert!(text.contains(r#"fulfillment_enrollments_total{component="fulfillment",outcome="enrolled"} 1"#));
/// ```
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Mutex<Registered>>,
    rpc: RpcFamilies,
    component: Option<Arc<String>>,
}

/// The registry and the names in it: a name registered twice would repeat its
/// metric family in the exposition, which Prometheus rejects whole.
#[derive(Debug, Default)]
struct Registered {
    registry: Registry,
    names: HashSet<String>,
    /// The families [`Metrics::shared`] registered, by name, for the next component that asks.
    shared: HashMap<String, Box<dyn Any + Send>>,
}

impl Registered {
    fn register(
        &mut self,
        component: Option<&str>,
        name: String,
        help: String,
        unit: Option<Unit>,
        metric: impl Metric,
    ) {
        if !self.names.insert(name.clone()) {
            tracing::warn!(
                metric = %name,
                component,
                "metric already registered; not registering it again (a metric several components record \
                 is one family with a component label)"
            );
            return;
        }
        let registry = match component {
            // A sub-registry per registration: they encode alike, and prometheus-client
            // has no lookup of an existing one.
            Some(component) => {
                self.registry.sub_registry_with_label((Cow::Borrowed("component"), Cow::Owned(component.to_string())))
            }
            None => &mut self.registry,
        };
        match unit {
            Some(unit) => registry.register_with_unit(name, help, unit, Declared(metric)),
            None => registry.register(name, help, Declared(metric)),
        }
    }
}

/// A metric encoded even before its first series: prometheus-client leaves a
/// family without series out of the exposition, and then a dashboard, an
/// alert or `crates/commerce-mesh/tests/monitoring.rs` (which reads the
/// `# TYPE` lines) cannot tell a metric nothing recorded yet from one that
/// does not exist. OpenMetrics allows a family with no samples.
#[derive(Debug)]
struct Declared<M>(M);

impl<M: EncodeMetric> EncodeMetric for Declared<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }

    // `is_empty` keeps its default, false: always declared.
}

impl Metrics {
    /// An empty registry, with no component label.
    pub fn new() -> Self {
        let rpc = RpcFamilies::default();
        let mut registered = Registered::default();
        rpc.register(&mut registered);
        Self { registry: Arc::new(Mutex::new(registered)), rpc, component: None }
    }

    /// A handle on the same registry whose registrations (and RPC metrics) are
    /// labelled `component="<component>"`.
    pub fn for_component(&self, component: &str) -> Metrics {
        Self { component: Some(Arc::new(component.to_string())), ..self.clone() }
    }

    /// The component this handle labels with, if any.
    pub fn component(&self) -> Option<&str> {
        self.component.as_deref().map(String::as_str)
    }

    /// Registers `metric` under `name` (without the `_total` suffix counters
    /// get), labelled with this handle's component. A name already in the
    /// registry is not registered again (a warning is logged).
    pub fn register(&self, name: impl Into<String>, help: impl Into<String>, metric: impl Metric) {
        self.lock().register(self.component(), name.into(), help.into(), None, metric);
    }

    /// The metric several components record into: registered once under
    /// `name`, unlabelled by any handle, from `make()` the first time; every
    /// later call with that name (from any component's handle) answers the
    /// same metric, so the exposition has one family. Its series must carry
    /// the component in their own labels ([`Metrics::component`]). A name
    /// taken by a metric of another type answers a fresh, unregistered metric
    /// (and logs a warning), as [`Metrics::register`] does.
    pub fn shared<M>(&self, name: &str, help: &str, make: impl FnOnce() -> M) -> M
    where
        M: Metric + Clone,
    {
        let mut registered = self.lock();
        if let Some(existing) = registered.shared.get(name) {
            if let Some(metric) = existing.downcast_ref::<M>() {
                return metric.clone();
            }
            tracing::warn!(metric = name, "a shared metric of another type has this name; not registering it");
            return make();
        }
        let metric = make();
        if registered.names.contains(name) {
            tracing::warn!(metric = name, "metric already registered; not sharing it");
            return metric;
        }
        registered.register(None, name.to_string(), help.to_string(), None, metric.clone());
        registered.shared.insert(name.to_string(), Box::new(metric.clone()));
        metric
    }

    /// The OpenMetrics text of every metric registered through any handle on
    /// this registry, ending in `# EOF`.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.lock().registry) {
            // Writing to a String cannot fail; a metric's own label encoding can.
            tracing::error!(%error, "a metric could not be encoded; the exposition is incomplete");
        }
        text
    }

    fn lock(&self) -> MutexGuard<'_, Registered> {
        // Registering is a push and encoding only reads: a panic elsewhere while
        // holding the lock leaves the registry whole, so keep using it.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The RED families of every component's RPCs. One family each, with the
/// component as a label, so several servers in one process share them.
#[derive(Clone, Debug)]
struct RpcFamilies {
    requests: Family<RpcStatusLabels, Counter>,
    duration: Family<RpcLabels, Histogram>,
}

impl Default for RpcFamilies {
    fn default() -> Self {
        // 1 ms to 32 s, doubling.
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16))),
        }
    }
}

impl RpcFamilies {
    fn register(&self, registered: &mut Registered) {
        registered.register(
            None,
            "rpc_server_requests".into(),
            "gRPC calls answered, by method and status code".into(),
            None,
            self.requests.clone(),
        );
        registered.register(
            None,
            "rpc_server_duration".into(),
            "Time from a call's arrival to its status".into(),
            Some(Unit::Seconds),
            self.duration.clone(),
        );
    }
}

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    component: Option<Arc<String>>,
    rpc_service: String,
    rpc_method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcStatusLabels {
    #[prometheus(flatten)]
    rpc: RpcLabels,
    grpc_status: i32,
}

/// RED per RPC on a tonic server: `rpc_server_requests_total{rpc_service,
/// rpc_method, grpc_status}` and `rpc_server_duration_seconds{rpc_service,
/// rpc_method}`, labelled with the [`Metrics`] handle's component.
///
/// Every call is counted once, when its status is known: from the response
/// headers of a trailers-only answer, else from the trailers at the body's
/// end. A call dropped before either (the client went away, or the drain
/// timed out) counts as CANCELLED.
#[derive(Clone, Debug)]
pub struct GrpcMetricsLayer {
    // tower-http's trace layer is the plumbing that follows a response to its
    // trailers (as in `trace`); here it makes no span and its per-call
    // classifier records the metrics.
    trace: TraceLayer<MakeRpcOutcome, NoSpan, (), (), (), (), ()>,
}

/// The service [`GrpcMetricsLayer`] wraps around a server's routes.
pub type GrpcMetricsService<S> = Trace<S, MakeRpcOutcome, NoSpan, (), (), (), (), ()>;

impl GrpcMetricsLayer {
    /// Records into `metrics`, labelled with its component.
    pub fn new(metrics: &Metrics) -> Self {
        Self::with(Some(RpcRecorder { families: metrics.rpc.clone(), component: metrics.component.clone() }))
    }

    /// Records nothing: a server built without metrics.
    pub(crate) fn disabled() -> Self {
        Self::with(None)
    }

    fn with(recorder: Option<RpcRecorder>) -> Self {
        let trace = TraceLayer::new(MakeRpcOutcome { recorder })
            .make_span_with(NoSpan)
            .on_request(())
            .on_response(())
            .on_body_chunk(())
            .on_eos(())
            .on_failure(());
        Self { trace }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.trace.layer(inner)
    }
}

/// Makes no span: the server trace layer already has one per RPC.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoSpan;

impl<B> MakeSpan<B> for NoSpan {
    fn make_span(&mut self, _request: &Request<B>) -> Span {
        Span::none()
    }
}

#[derive(Clone, Debug)]
struct RpcRecorder {
    families: RpcFamilies,
    component: Option<Arc<String>>,
}

/// Starts an [`RpcOutcome`] for each call.
#[derive(Clone, Debug)]
pub struct MakeRpcOutcome {
    recorder: Option<RpcRecorder>,
}

impl MakeClassifier for MakeRpcOutcome {
    type Classifier = RpcOutcome;
    type FailureClass = ();
    type ClassifyEos = RpcOutcome;

    fn make_classifier<B>(&self, request: &Request<B>) -> RpcOutcome {
        RpcOutcome(self.recorder.as_ref().map(|recorder| {
            let (service, method) = split_rpc_path(request.uri().path());
            Arc::new(RpcCall {
                families: recorder.families.clone(),
                labels: RpcLabels {
                    component: recorder.component.clone(),
                    rpc_service: service.to_string(),
                    rpc_method: method.to_string(),
                },
                start: Instant::now(),
                status: OnceLock::new(),
            })
        }))
    }
}

/// One call on its way to a status. It is recorded when the last clone drops
/// (tower-http never clones it), so exactly once, whichever way the call ends.
#[derive(Clone, Debug)]
pub struct RpcOutcome(Option<Arc<RpcCall>>);

impl RpcOutcome {
    /// Sets the call's status; dropping `self` at the end records the call.
    fn finish(self, code: i32) {
        if let Some(call) = &self.0 {
            // Cannot be set already: each classify step consumes the only handle.
            let _ = call.status.set(code);
        }
    }
}

impl ClassifyResponse for RpcOutcome {
    type FailureClass = ();
    type ClassifyEos = Self;

    fn classify_response<B>(self, response: &Response<B>) -> ClassifiedResponse<(), Self> {
        // A trailers-only answer (most errors) carries its status in the headers.
        match grpc_status(response.headers()) {
            Some(code) => {
                self.finish(code);
                ClassifiedResponse::Ready(Ok(()))
            }
            None => ClassifiedResponse::RequiresEos(self),
        }
    }

    fn classify_error<E: fmt::Display + 'static>(self, _error: &E) {
        self.finish(Code::Unknown as i32);
    }
}

impl ClassifyEos for RpcOutcome {
    type FailureClass = ();

    fn classify_eos(self, trailers: Option<&HeaderMap>) -> Result<(), ()> {
        // A body that ends without a status is a broken answer.
        self.finish(trailers.and_then(grpc_status).unwrap_or(Code::Unknown as i32));
        Ok(())
    }

    fn classify_error<E: fmt::Display + 'static>(self, _error: &E) {
        self.finish(Code::Unknown as i32);
    }
}

#[derive(Debug)]
struct RpcCall {
    families: RpcFamilies,
    labels: RpcLabels,
    start: Instant,
    status: OnceLock<i32>,
}

impl Drop for RpcCall {
    fn drop(&mut self) {
        // No status: dropped unanswered, which the client sees as cancelled.
        let grpc_status = self.status.get().copied().unwrap_or(Code::Cancelled as i32);
        self.families.duration.get_or_create(&self.labels).observe(self.start.elapsed().as_secs_f64());
        let labels = RpcStatusLabels { rpc: std::mem::take(&mut self.labels), grpc_status };
        self.families.requests.get_or_create(&labels).inc();
    }
}

/// Serves the admin endpoints on `listener` until `shutdown` resolves:
/// `GET /metrics` answers [`Metrics::encode`] as [`OPENMETRICS_CONTENT_TYPE`],
/// `GET /healthz` answers 200 `ok` while the process runs.
pub async fn serve_admin(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let address = listener.local_addr()?;
    let app =
        Router::new().route("/metrics", get(exposition)).route("/healthz", get(|| async { "ok" })).with_state(metrics);
    tracing::info!(%address, "admin listening (/metrics, /healthz)");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn exposition(State(metrics): State<Metrics>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], metrics.encode())
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{Service, ServiceExt};

    use super::*;

    #[test]
    fn a_component_counter_is_encoded_with_its_component_label() {
        let metrics = Metrics::new();
        let jobs = Counter::<u64>::default();
        metrics.for_component("fulfillment").register("fulfillment_jobs", "Jobs done", jobs.clone());
        jobs.inc_by(3);

        let text = metrics.encode();
        assert!(text.contains("# TYPE fulfillment_jobs counter\n"), "{text}");
        assert!(text.contains("fulfillment_jobs_total{component=\"fulfillment\"} 3\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn a_family_without_series_is_declared() {
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct Labels {
            outcome: String,
        }
        let metrics = Metrics::new();
        let attempts = Family::<Labels, Counter>::default();
        metrics.for_component("fulfillment").register("fulfillment_attempts", "Attempts", attempts);

        let text = metrics.encode();
        assert!(text.contains("# TYPE fulfillment_attempts counter\n"), "{text}");
        assert!(text.contains("# TYPE rpc_server_duration_seconds histogram\n"), "before any call: {text}");
        assert!(!text.contains("fulfillment_attempts_total"), "no sample yet: {text}");
    }

    #[test]
    fn a_name_registered_twice_is_encoded_once() {
        let metrics = Metrics::new();
        let (first, second) = (Counter::<u64>::default(), Counter::<u64>::default());
        metrics.for_component("a").register("cache_hits", "Hits", first.clone());
        metrics.for_component("b").register("cache_hits", "Hits", second.clone());
        first.inc();
        second.inc();

        let text = metrics.encode();
        assert_eq!(text.matches("# TYPE cache_hits counter").count(), 1, "{text}");
        assert!(text.contains("cache_hits_total{component=\"a\"} 1"), "{text}");
    }

    #[test]
    fn a_shared_metric_is_one_family_for_every_component() {
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct Labels {
            component: String,
        }
        let metrics = Metrics::new();
        let make = Family::<Labels, Counter>::default;
        let a = metrics.for_component("a").shared("bus_trims", "Trims", make);
        let b = metrics.for_component("b").shared("bus_trims", "Trims", make);
        a.get_or_create(&Labels { component: "a".into() }).inc();
        b.get_or_create(&Labels { component: "b".into() }).inc_by(2);

        let text = metrics.encode();
        assert_eq!(text.matches("# TYPE bus_trims counter").count(), 1, "{text}");
        assert!(text.contains("bus_trims_total{component=\"a\"} 1"), "{text}");
        assert!(text.contains("bus_trims_total{component=\"b\"} 2"), "{text}");
        let other = metrics.shared("bus_trims", "Trims", Counter::<u64>::default);
        other.inc();
        assert!(!metrics.encode().contains("bus_trims_total 1"), "a metric of another type is not registered");
    }

    fn request(path: &str) -> Request<tonic::body::Body> {
        Request::builder().uri(path).body(tonic::body::Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn a_trailers_only_answer_counts_with_its_status_and_duration() {
        let metrics = Metrics::new().for_component("catalog");
        let service = GrpcMetricsLayer::new(&metrics).layer(tower::service_fn(|_| async {
            let mut response = Response::new(tonic::body::Body::empty());
            response.headers_mut().insert("grpc-status", http::HeaderValue::from_static("5"));
            Ok::<_, Infallible>(response)
        }));
        let response = service.oneshot(request("/commerce.catalog.v1.CatalogIngestService/GetProduct")).await;
        drop(response);

        let text = metrics.encode();
        let labels =
            r#"component="catalog",rpc_service="commerce.catalog.v1.CatalogIngestService",rpc_method="GetProduct""#;
        assert!(text.contains(&format!("rpc_server_requests_total{{{labels},grpc_status=\"5\"}} 1\n")), "{text}");
        assert!(text.contains(&format!("rpc_server_duration_seconds_count{{{labels}}} 1\n")), "{text}");
    }

    #[tokio::test]
    async fn a_call_dropped_before_its_answer_counts_as_cancelled() {
        let metrics = Metrics::new().for_component("catalog");
        let mut service = GrpcMetricsLayer::new(&metrics)
            .layer(tower::service_fn(|_| std::future::pending::<Result<Response<tonic::body::Body>, Infallible>>()));
        drop(service.ready().await.unwrap().call(request("/pkg.Service/Hang")));

        let text = metrics.encode();
        assert!(text.contains(r#"rpc_method="Hang",grpc_status="1"} 1"#), "{text}");
    }
}
