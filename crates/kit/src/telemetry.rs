//! Logs and traces for every component.
//!
//! [`init`] installs, once per process:
//! - logs on stdout: human-readable lines when stdout is a terminal, JSON
//!   lines (carrying the `trace_id` and `span_id` of the span they were
//!   written in) otherwise, unless `log_format` says which;
//! - an OpenTelemetry layer, so every `tracing` span is an OpenTelemetry span
//!   and trace context can be carried to the next hop;
//! - OTLP/gRPC export of those spans when an endpoint is configured
//!   (`otlp_endpoint`, or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`); the other
//!   standard `OTEL_*` variables (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//!   `OTEL_TRACES_SAMPLER`, `OTEL_EXPORTER_OTLP_TIMEOUT`, ...) are honoured;
//! - the W3C trace-context propagator.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

use opentelemetry::global;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, TracerProviderBuilder};

use crate::component_spans::{ByComponent, Components, SERVICE_INSTANCE_ID};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Noisy dependencies kept at WARN whatever the filter says, unless named.
const QUIET: &str = "h2=warn,hyper=warn,hyper_util=warn,tower=warn,tonic=warn,sqlx=warn,opentelemetry=warn,opentelemetry_sdk=warn,opentelemetry_otlp=warn";

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text when the log stream (stdout) is a terminal, JSON otherwise.
    #[default]
    Auto,
    /// One JSON object a line, with `trace_id` and `span_id`.
    Json,
    /// Human-readable lines, for a terminal.
    Text,
}

impl LogFormat {
    /// The format to write in, `Json` or `Text`: an explicit setting as it
    /// is; `Auto` is text for a person at a terminal and JSON for whatever
    /// collects the logs (a pipe, a file, a container runtime).
    pub fn resolve(self, is_terminal: bool) -> LogFormat {
        match self {
            LogFormat::Auto if is_terminal => LogFormat::Text,
            LogFormat::Auto => LogFormat::Json,
            explicit => explicit,
        }
    }
}

/// Logging and tracing settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct TelemetryConfig {
    /// Filter directives such as `info` or `info,fulfillment=debug`; `RUST_LOG`
    /// takes precedence when set.
    pub log_filter: String,
    /// JSON lines, text, or `auto` (text when stdout is a terminal, else JSON).
    pub log_format: LogFormat,
    /// OTLP/gRPC endpoint to export spans to, such as `http://jaeger:4317`.
    /// Unset: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`;
    /// none of them: spans are not exported (trace context still propagates).
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of exported spans; `OTEL_SERVICE_NAME` takes precedence.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_filter: "info".into(),
            log_format: LogFormat::Auto,
            otlp_endpoint: None,
            service_name: "commerce-mesh".into(),
        }
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log filter does not parse.
    #[error("invalid log filter {filter:?}: {source}")]
    Filter {
        /// The directives given.
        filter: String,
        /// Why they do not parse.
        source: tracing_subscriber::filter::ParseError,
    },
    /// The OTLP exporter could not be built.
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// A global subscriber was already installed.
    #[error("telemetry is already initialised in this process")]
    AlreadyInitialised,
}

/// Keeps the tracer provider alive; call [`Telemetry::shutdown`] before exit
/// so buffered spans are exported.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl Telemetry {
    /// True when spans are exported over OTLP.
    pub fn is_exporting(&self) -> bool {
        self.exporting
    }

    /// Exports every span finished so far; blocks, so call it from a blocking context.
    pub fn force_flush(&self) {
        if let Err(error) = self.provider.force_flush() {
            tracing::warn!(%error, "span export flush failed");
        }
    }

    /// Flushes and stops export. Runs the SDK's blocking shutdown off the async workers.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let result = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(error)) = result {
            tracing::warn!(%error, "span exporter shutdown failed");
        }
    }
}

/// Installs logging and tracing for the whole process. Must run inside a tokio
/// runtime (the OTLP exporter needs one).
pub fn init(config: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    init_with_components(config, Components::new())
}

/// [`init`], exporting each span under the `service.name` of its component
/// ([`crate::component_spans`]): for a process that runs several.
pub fn init_with_components(config: &TelemetryConfig, components: Components) -> Result<Telemetry, TelemetryError> {
    init_with_components_and(config, components, |builder, _| builder)
}

/// [`init_with_components`], where `extend` may add span processors of its
/// own beside OTLP export (the trace UI's in-memory store): it is given the
/// tracer provider's builder and the components.
pub fn init_with_components_and(
    config: &TelemetryConfig,
    components: Components,
    extend: impl FnOnce(TracerProviderBuilder, &Components) -> TracerProviderBuilder,
) -> Result<Telemetry, TelemetryError> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let (provider, exporting) = tracer_provider(config, components, extend)?;
    global::set_tracer_provider(provider.clone());
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("commerce-mesh"));

    let filter = env_filter(config)?;
    // Logs go to stdout, so stdout is the stream whose reader decides the format.
    let logs = match config.log_format.resolve(std::io::stdout().is_terminal()) {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stdout).with_target(true).boxed(),
        LogFormat::Json | LogFormat::Auto => JsonLogLayer::new(std::io::stdout).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(otel)
        .with(logs)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInitialised)?;
    Ok(Telemetry { provider, exporting })
}

fn env_filter(config: &TelemetryConfig) -> Result<EnvFilter, TelemetryError> {
    let directives =
        std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| config.log_filter.clone());
    // Later directives win for the same target, so the caller's come last.
    let combined = format!("{QUIET},{directives}");
    EnvFilter::builder().parse(&combined).map_err(|source| TelemetryError::Filter { filter: directives, source })
}

fn tracer_provider(
    config: &TelemetryConfig,
    components: Components,
    extend: impl FnOnce(TracerProviderBuilder, &Components) -> TracerProviderBuilder,
) -> Result<(SdkTracerProvider, bool), TelemetryError> {
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(config.service_name.clone());
    }
    let mut builder = SdkTracerProvider::builder().with_resource(with_instance_id(resource.build()));
    builder = extend(builder, &components);
    let from_env = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|v| !v.is_empty()));
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v == "none");
    let exporting = !disabled && (config.otlp_endpoint.is_some() || from_env);
    if exporting {
        let otlp = || {
            let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if let Some(endpoint) = &config.otlp_endpoint {
                exporter = exporter.with_endpoint(endpoint.clone());
            }
            exporter.build()
        };
        // OTEL_SERVICE_NAME names every span alike, as its user asked.
        if components.is_empty() || std::env::var_os("OTEL_SERVICE_NAME").is_some() {
            builder = builder.with_batch_exporter(otlp()?);
        } else {
            builder = builder.with_batch_exporter(ByComponent::new(components, otlp)?);
        }
    }
    Ok((builder.build(), exporting))
}

/// `resource` with a `service.instance.id` (a random UUID) unless
/// `OTEL_RESOURCE_ATTRIBUTES` gave one: each process is an instance of its own
/// in a trace viewer, and [`ByComponent`] derives each component's from it.
fn with_instance_id(resource: Resource) -> Resource {
    let key = opentelemetry::Key::from_static_str(SERVICE_INSTANCE_ID);
    if resource.get(&key).is_some() {
        return resource;
    }
    let attributes = resource.iter().map(|(key, value)| opentelemetry::KeyValue::new(key.clone(), value.clone()));
    let mut builder = Resource::builder_empty().with_attributes(attributes);
    if let Some(schema_url) = resource.schema_url() {
        builder = builder.with_schema_url([], schema_url.to_string());
    }
    builder.with_attribute(opentelemetry::KeyValue::new(key, uuid::Uuid::new_v4().to_string())).build()
}

/// Writes each event as one JSON object a line: `timestamp`, `level`,
/// `target`, `message`, `fields`, and, inside a span, `span`, `trace_id` and
/// `span_id`.
pub struct JsonLogLayer<W> {
    make_writer: W,
    dispatch: OnceLock<WeakDispatch>,
}

impl<W> JsonLogLayer<W> {
    /// Writes to whatever `make_writer` makes (stdout in production).
    pub fn new(make_writer: W) -> Self {
        Self { make_writer, dispatch: OnceLock::new() }
    }
}

impl<S, W> Layer<S> for JsonLogLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_register_dispatch(&self, dispatch: &Dispatch) {
        // Trace ids live in the OpenTelemetry layer's span data, reached
        // through the dispatcher this layer is part of.
        let _ = self.dispatch.set(dispatch.downgrade());
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut fields = JsonFields::default();
        event.record(&mut fields);
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        line.insert("level".into(), Value::String(meta.level().as_str().into()));
        line.insert("target".into(), Value::String(meta.target().into()));
        if let Some(message) = fields.0.remove("message") {
            line.insert("message".into(), message);
        }
        if let Some(span) = ctx.event_span(event) {
            line.insert("span".into(), Value::String(span.name().into()));
            let dispatch = self.dispatch.get().and_then(WeakDispatch::upgrade);
            let otel = dispatch.and_then(|d| tracing_opentelemetry::get_otel_context(&span.id(), &d));
            if let Some(cx) = otel {
                let span_ref = cx.span();
                let ids = span_ref.span_context();
                if ids.is_valid() {
                    line.insert("trace_id".into(), Value::String(ids.trace_id().to_string()));
                    line.insert("span_id".into(), Value::String(ids.span_id().to_string()));
                }
            }
        }
        if !fields.0.is_empty() {
            line.insert("fields".into(), Value::Object(fields.0));
        }
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        // A log line that cannot be written is dropped: logging must not fail a request.
        let _ = self.make_writer.make_writer_for(meta).write_all(text.as_bytes());
    }
}

#[derive(Default)]
struct JsonFields(Map<String, Value>);

impl Visit for JsonFields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), Value::String(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), Value::String(value.into()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), Value::String(value.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn lines(buffer: &Buffer) -> Vec<Value> {
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    }

    #[test]
    fn json_lines_carry_the_span_trace_and_span_ids() {
        let buffer = Buffer::default();
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(JsonLogLayer::new(buffer.clone()));
        let (trace_id, span_id) = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("handle_order");
            let _entered = span.enter();
            tracing::info!(order_number = "EDX-1", attempts = 2, "order accepted");
            let cx = span.context();
            let ids = cx.span().span_context().clone();
            (ids.trace_id().to_string(), ids.span_id().to_string())
        });
        let logged = lines(&buffer);
        assert_eq!(logged.len(), 1, "{logged:?}");
        let line = &logged[0];
        assert_eq!(line["message"], "order accepted");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["span"], "handle_order");
        assert_eq!(line["fields"]["order_number"], "EDX-1");
        assert_eq!(line["fields"]["attempts"], 2);
        assert_eq!(line["trace_id"], Value::String(trace_id.clone()));
        assert_eq!(line["span_id"], Value::String(span_id));
        assert_eq!(trace_id.len(), 32);
    }

    #[test]
    fn an_explicit_format_wins_and_auto_follows_the_terminal() {
        let cases = [
            (LogFormat::Auto, true, LogFormat::Text),
            (LogFormat::Auto, false, LogFormat::Json),
            (LogFormat::Json, true, LogFormat::Json),
            (LogFormat::Json, false, LogFormat::Json),
            (LogFormat::Text, true, LogFormat::Text),
            (LogFormat::Text, false, LogFormat::Text),
        ];
        for (setting, is_terminal, expected) in cases {
            assert_eq!(setting.resolve(is_terminal), expected, "{setting:?}, terminal: {is_terminal}");
        }
        assert_eq!(TelemetryConfig::default().log_format, LogFormat::Auto, "unset means decide by the terminal");
        let parsed: TelemetryConfig = serde_json::from_str(r#"{"log_format": "auto"}"#).unwrap();
        assert_eq!(parsed.log_format, LogFormat::Auto);
    }

    #[test]
    fn events_outside_spans_have_no_ids() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(JsonLogLayer::new(buffer.clone()));
        tracing::subscriber::with_default(subscriber, || tracing::warn!("plain"));
        let logged = lines(&buffer);
        assert_eq!(logged[0]["message"], "plain");
        assert!(logged[0].get("trace_id").is_none());
    }

    #[test]
    fn every_process_gets_an_instance_id_unless_given_one() {
        let key = opentelemetry::Key::from_static_str(SERVICE_INSTANCE_ID);
        let plain = || Resource::builder_empty().with_service_name("gateway").build();
        let (first, second) = (with_instance_id(plain()), with_instance_id(plain()));
        let id = |resource: &Resource| resource.get(&key).map(|v| v.to_string()).unwrap_or_default();
        assert_eq!(id(&first).len(), 36, "a UUID: {first:?}");
        assert_ne!(id(&first), id(&second), "each process its own");
        assert_eq!(first.get(&opentelemetry::Key::from_static_str("service.name")), Some("gateway".into()));
        let given =
            Resource::builder_empty().with_attribute(opentelemetry::KeyValue::new(key.clone(), "pod-7")).build();
        assert_eq!(id(&with_instance_id(given)), "pod-7", "OTEL_RESOURCE_ATTRIBUTES wins");
    }
}
