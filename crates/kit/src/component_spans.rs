//! Spans exported under the `service.name` of the component that made them,
//! when one process runs several (`commerce-mesh up`): Jaeger then shows
//! gateway, Fulfillment, CustomerIdentity... as services of their own, as
//! they are when each runs alone.
//!
//! A span's component is, in order: its `mesh.component` attribute (the gRPC
//! server and client spans of [`crate::trace`] carry it when the server or
//! channel was made for a component), else the first [`Components`] rule whose
//! module prefix starts its `code.module.name` (where the span was made),
//! else none: it keeps the process's own service name.
//!
//! ```
//! use kit::component_spans::Components;
//!
//! let components = Components::new()
//!     .module("fulfillment", "fulfillment")
//!     .module("customer_identity", "customer-identity");
//! assert_eq!(components.of_module("fulfillment::worker"), Some("fulfillment"));
//! assert_eq!(components.of_module("fulfillment_extra::x"), None, "whole path segments only");
//! assert_eq!(components.of_module("kit::trace"), None);
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::{Key, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// The span attribute naming the component a span belongs to.
pub const COMPONENT_ATTRIBUTE: &str = "mesh.component";

/// The resource attribute telling instances of a service apart. A trace
/// viewer shows each value as a process of its own, so each component's is
/// the process's followed by `/<component>`.
pub const SERVICE_INSTANCE_ID: &str = "service.instance.id";

/// Which module prefixes belong to which component.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Components {
    by_module: Vec<(String, String)>,
}

impl Components {
    /// No rules: every span keeps the process's service name.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spans made in `module_prefix` (a crate or module path) belong to `component`.
    pub fn module(mut self, module_prefix: &str, component: &str) -> Self {
        self.by_module.push((module_prefix.to_string(), component.to_string()));
        self
    }

    /// True when there is no rule.
    pub fn is_empty(&self) -> bool {
        self.by_module.is_empty()
    }

    /// The component a span made in `module` belongs to, by the first matching rule.
    pub fn of_module(&self, module: &str) -> Option<&str> {
        self.by_module
            .iter()
            .find(|(prefix, _)| {
                module.strip_prefix(prefix.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
            })
            .map(|(_, component)| component.as_str())
    }

    /// Every component named by a rule.
    fn names(&self) -> impl Iterator<Item = &str> {
        self.by_module.iter().map(|(_, component)| component.as_str())
    }
}

/// Exports each span through the exporter of its component, whose resource
/// says that component's `service.name`; spans of no known component go
/// through the default exporter, with the process's resource.
pub struct ByComponent<E> {
    components: Arc<Components>,
    default: E,
    exporters: BTreeMap<String, E>,
}

impl<E: fmt::Debug> fmt::Debug for ByComponent<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByComponent").field("components", &self.components).finish_non_exhaustive()
    }
}

impl<E> ByComponent<E> {
    /// One exporter per component named in `components` (made by `make`) and a default one.
    pub fn new<Error>(components: Components, mut make: impl FnMut() -> Result<E, Error>) -> Result<Self, Error> {
        let mut exporters = BTreeMap::new();
        for name in components.names() {
            if !exporters.contains_key(name) {
                exporters.insert(name.to_string(), make()?);
            }
        }
        Ok(Self { components: Arc::new(components), default: make()?, exporters })
    }

    /// The component of `span`, if known and routed.
    fn component_of(&self, span: &SpanData) -> Option<&str> {
        let attribute = |name: &str| {
            span.attributes.iter().find(|kv| kv.key.as_str() == name).map(|kv| match &kv.value {
                Value::String(text) => text.as_str().to_string(),
                other => other.to_string(),
            })
        };
        if let Some(component) = attribute(COMPONENT_ATTRIBUTE)
            && let Some((name, _)) = self.exporters.get_key_value(component.as_str())
        {
            return Some(name.as_str());
        }
        let module = attribute("code.module.name").or_else(|| attribute("target"))?;
        self.components.of_module(&module)
    }
}

impl<E: SpanExporter> SpanExporter for ByComponent<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut groups: BTreeMap<Option<String>, Vec<SpanData>> = BTreeMap::new();
        for span in batch {
            let component = self.component_of(&span).map(str::to_string);
            groups.entry(component).or_default().push(span);
        }
        let mut result = Ok(());
        for (component, spans) in groups {
            let exporter = component.as_deref().and_then(|name| self.exporters.get(name)).unwrap_or(&self.default);
            // Every group is tried: one collector hiccup must not drop the others.
            if let Err(error) = exporter.export(spans).await {
                result = Err(error);
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let mut result = self.default.shutdown_with_timeout(timeout);
        for exporter in self.exporters.values() {
            if let Err(error) = exporter.shutdown_with_timeout(timeout) {
                result = Err(error);
            }
        }
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        let mut result = self.default.force_flush();
        for exporter in self.exporters.values() {
            if let Err(error) = exporter.force_flush() {
                result = Err(error);
            }
        }
        result
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.default.set_resource(resource);
        let process = resource.get(&Key::from_static_str(SERVICE_INSTANCE_ID));
        for (component, exporter) in &mut self.exporters {
            let instance = match &process {
                Some(process) => format!("{process}/{component}"),
                None => component.clone(),
            };
            let attributes = resource
                .iter()
                .filter(|(key, _)| key.as_str() != "service.name" && key.as_str() != SERVICE_INSTANCE_ID)
                .map(|(key, value)| KeyValue::new(key.clone(), value.clone()))
                .chain([
                    KeyValue::new(Key::from_static_str("service.name"), component.clone()),
                    KeyValue::new(Key::from_static_str(SERVICE_INSTANCE_ID), instance),
                ]);
            let own = Resource::builder_empty().with_attributes(attributes).build();
            exporter.set_resource(&own);
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;

    use opentelemetry::InstrumentationScope;
    use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};

    use super::*;

    /// Records what it is asked to export, and the service name it was given.
    #[derive(Debug, Default, Clone)]
    struct Recording {
        service: Arc<Mutex<String>>,
        exported: Arc<Mutex<Vec<(String, String)>>>,
        /// Every resource given, as (service name, service instance id).
        resources: Arc<Mutex<Vec<(String, String)>>>,
    }

    impl SpanExporter for Recording {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let service = self.service.lock().unwrap().clone();
            self.exported
                .lock()
                .unwrap()
                .extend(batch.into_iter().map(|span| (service.clone(), span.name.to_string())));
            Ok(())
        }

        fn set_resource(&mut self, resource: &Resource) {
            let name = resource.get(&Key::from_static_str("service.name")).map(|v| v.to_string()).unwrap_or_default();
            let instance =
                resource.get(&Key::from_static_str(SERVICE_INSTANCE_ID)).map(|v| v.to_string()).unwrap_or_default();
            self.resources.lock().unwrap().push((name.clone(), instance));
            *self.service.lock().unwrap() = name;
        }
    }

    #[test]
    fn each_component_is_an_instance_of_its_own_within_the_process() {
        let resources = Arc::new(Mutex::new(Vec::new()));
        let components = Components::new().module("fulfillment", "fulfillment").module("gateway", "gateway");
        let mut exporter = ByComponent::new(components, || {
            Ok::<_, std::convert::Infallible>(Recording { resources: resources.clone(), ..Recording::default() })
        })
        .unwrap();
        let process = Resource::builder_empty()
            .with_service_name("commerce-mesh")
            .with_attribute(KeyValue::new(SERVICE_INSTANCE_ID, "p-1"))
            .build();
        exporter.set_resource(&process);
        let mut seen = resources.lock().unwrap().clone();
        seen.sort();
        let expected = [("commerce-mesh", "p-1"), ("fulfillment", "p-1/fulfillment"), ("gateway", "p-1/gateway")];
        assert_eq!(seen, expected.map(|(name, instance)| (name.to_string(), instance.to_string())));
    }

    fn span(name: &str, attributes: Vec<KeyValue>) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(1),
                SpanId::from(2),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: name.to_string().into(),
            start_time: std::time::SystemTime::UNIX_EPOCH,
            end_time: std::time::SystemTime::UNIX_EPOCH,
            attributes,
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::builder("test").build(),
        }
    }

    #[tokio::test]
    async fn spans_are_exported_under_their_components_service_name() {
        let exported = Arc::new(Mutex::new(Vec::new()));
        let components = Components::new().module("fulfillment", "fulfillment").module("gateway", "gateway");
        let mut exporter = ByComponent::new(components, || {
            Ok::<_, std::convert::Infallible>(Recording { exported: exported.clone(), ..Recording::default() })
        })
        .unwrap();
        exporter.set_resource(&Resource::builder_empty().with_service_name("commerce-mesh").build());
        exporter
            .export(vec![
                span("worker", vec![KeyValue::new("code.module.name", "fulfillment::worker")]),
                span(
                    "rpc",
                    vec![
                        KeyValue::new(COMPONENT_ATTRIBUTE, "gateway"),
                        KeyValue::new("code.module.name", "kit::trace"),
                    ],
                ),
                span("unknown component", vec![KeyValue::new(COMPONENT_ATTRIBUTE, "nobody")]),
                span("kit", vec![KeyValue::new("code.module.name", "kit::bus")]),
            ])
            .await
            .unwrap();
        let mut seen = exported.lock().unwrap().clone();
        seen.sort();
        assert_eq!(
            seen,
            [
                ("commerce-mesh".to_string(), "kit".to_string()),
                ("commerce-mesh".to_string(), "unknown component".to_string()),
                ("fulfillment".to_string(), "worker".to_string()),
                ("gateway".to_string(), "rpc".to_string()),
            ]
        );
    }
}
