//! `/healthz` and `/metrics` on a local address, for systemd, the operator and Prometheus.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::net::TcpListener;

use crate::error::{Error, Result};
use crate::state::Store;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connected: Gauge,
    pub peers: Gauge,
    pub applied_revision: Gauge,
    pub apply_errors: Counter,
    pub reconnects: Counter,
    pub reconcile_repairs: Counter,
    /// False once the interface stops answering.
    pub interface_up: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("truevault_agent");
        let connected = Gauge::default();
        let peers = Gauge::default();
        let applied_revision = Gauge::default();
        let apply_errors = Counter::default();
        let reconnects = Counter::default();
        let reconcile_repairs = Counter::default();
        registry.register(
            "connected",
            "1 while the Sync stream is open",
            connected.clone(),
        );
        registry.register("peers", "Peers installed on the interface", peers.clone());
        registry.register(
            "applied_revision",
            "The last peer revision applied",
            applied_revision.clone(),
        );
        registry.register(
            "apply_errors",
            "Peers that could not be applied",
            apply_errors.clone(),
        );
        registry.register(
            "reconnects",
            "Connection attempts after a failure",
            reconnects.clone(),
        );
        registry.register(
            "reconcile_repairs",
            "Peers the periodic reconcile had to fix",
            reconcile_repairs.clone(),
        );
        Self {
            registry,
            connected,
            peers,
            applied_revision,
            apply_errors,
            reconnects,
            reconcile_repairs,
            interface_up: AtomicBool::new(true),
        }
    }
}

#[derive(Debug, Clone)]
struct HealthState {
    metrics: Arc<Metrics>,
    store: Store,
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {addr}: {e}")))
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, store: Store) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render))
        .with_state(HealthState { metrics, store });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "health endpoint stopped");
    }
}

/// Healthy while the interface answers; being disconnected from the control plane is reported
/// but is not unhealthy (peers keep working; restarting would not help).
async fn healthz(State(state): State<HealthState>) -> impl IntoResponse {
    let up = state.metrics.interface_up.load(Ordering::Relaxed);
    let (revision, peers, node) = state
        .store
        .with(|a| (a.revision, a.peers.len(), a.node_id.clone()));
    let body = json!({
        "status": if up { "ok" } else { "interface_down" },
        "node_id": node,
        "connected": state.metrics.connected.get() == 1,
        "applied_revision": revision,
        "peers": peers,
    });
    let code = if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

async fn render(State(state): State<HealthState>) -> impl IntoResponse {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &state.metrics.registry).is_err() {
        out.clear();
    }
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        out,
    )
}
