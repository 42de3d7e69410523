//! Prometheus metrics of the HTTP edge and the node channel, exposed at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

type DurationFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_duration: DurationFamily,
    /// Connected node sessions on this replica.
    pub node_sessions: Gauge,
    /// From a peer change's commit to the node's acknowledgement of it.
    pub peer_propagation: Histogram,
    /// Peers a node reported it could not apply.
    pub peer_apply_errors: Counter,
}

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("truevault");
        let http_requests = Family::<RequestLabels, Counter>::default();
        let http_duration: DurationFamily = Family::new_with_constructor(duration_histogram);
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            http_duration.clone(),
        );
        let node_sessions = Gauge::default();
        registry.register(
            "node_sessions",
            "Node Sync streams open on this replica",
            node_sessions.clone(),
        );
        let peer_propagation = duration_histogram();
        registry.register(
            "peer_propagation_seconds",
            "Time from a committed peer change to the node's acknowledgement",
            peer_propagation.clone(),
        );
        let peer_apply_errors = Counter::default();
        registry.register(
            "peer_apply_errors",
            "Peers that nodes reported they could not apply",
            peer_apply_errors.clone(),
        );
        Self {
            registry,
            http_requests,
            http_duration,
            node_sessions,
            peer_propagation,
            peer_apply_errors,
        }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
