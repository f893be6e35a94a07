//! RED metrics per route: requests by method, route template and HTTP status,
//! and their duration.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// Labels of one request: the route is the template (`/v1/orders/{order_number}:fulfill`),
/// never the raw path, so the label set stays bounded.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `http.request.method`.
    pub method: String,
    /// `http.route`; `unmatched` when no route matched.
    pub route: String,
    /// `http.response.status_code`.
    pub status: u16,
}

/// Route-level labels for the duration histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// `http.request.method`.
    pub method: String,
    /// `http.route`.
    pub route: String,
}

/// The gateway's request metrics.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
}

impl HttpMetrics {
    /// Families registered in `metrics`.
    pub fn register(metrics: &kit::metrics::Metrics) -> Self {
        let this = Self {
            requests: Family::default(),
            // 0.5 ms to ~16 s.
            duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))),
        };
        metrics.register("gateway_http_requests", "REST requests by method, route and status", this.requests.clone());
        metrics.register(
            "gateway_http_request_duration_seconds",
            "REST request duration by method and route",
            this.duration.clone(),
        );
        this
    }

    /// Counts one finished request.
    pub fn observe(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let route_labels = RouteLabels { method: method.to_string(), route: route.to_string() };
        self.duration.get_or_create(&route_labels).observe(elapsed.as_secs_f64());
        self.requests
            .get_or_create(&RequestLabels { method: route_labels.method, route: route_labels.route, status })
            .inc();
    }
}
