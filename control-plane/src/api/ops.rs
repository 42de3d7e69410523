//! Operational endpoints: liveness, readiness, metrics (for this machine or a scraper with the
//! metrics token) and the OpenAPI document.

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use utoipa::OpenApi as _;

use crate::error::Error;

use super::extract::MetricsReader;
use super::{ApiDoc, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the database answers within two seconds.
async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, Error> {
    match tokio::time::timeout(Duration::from_secs(2), state.0.db.ping()).await {
        Ok(Ok(())) => Ok(Json(json!({
            "status": "ready",
            "database": state.0.db.engine().name(),
        }))),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check failed");
            Err(Error::Unavailable("the database is not reachable"))
        }
        Err(_) => Err(Error::Unavailable("the database did not answer in time")),
    }
}

async fn metrics(_reader: MetricsReader, State(state): State<AppState>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.0.metrics.render(),
    )
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
