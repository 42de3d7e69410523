//! `/api/v1/admin/*`: operator endpoints (admin role). Every change is in the audit log.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::accounts::{ClientInfo, VipEntry, VipInput};
use crate::audit::{self, Actor, AuditRecord};
use crate::error::Error;

use super::AppState;
use super::error::{ApiJson, ErrorBody};
use super::extract::AdminCaller;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/vip", get(list_vips).post(upsert_vip))
        .route("/vip/{email}", delete(remove_vip))
        .route("/audit", get(list_audit))
}

#[utoipa::path(get, path = "/api/v1/admin/vip", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Vec<VipEntry>), (status = 403, body = ErrorBody)))]
pub async fn list_vips(
    State(state): State<AppState>,
    _admin: AdminCaller,
) -> Result<Json<Vec<VipEntry>>, Error> {
    state.accounts().list_vips().await.map(Json)
}

/// Add an address to the VIP list, or change its tier and note.
#[utoipa::path(post, path = "/api/v1/admin/vip", tag = "admin", security(("bearer" = [])), request_body = VipInput,
    responses((status = 201, body = VipEntry), (status = 200, body = VipEntry), (status = 400, body = ErrorBody)))]
pub async fn upsert_vip(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    ApiJson(input): ApiJson<VipInput>,
) -> Result<(StatusCode, Json<VipEntry>), Error> {
    let (entry, created) = state
        .accounts()
        .upsert_vip(input, Actor::User(admin.user_id), client.ip)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(entry)))
}

#[utoipa::path(delete, path = "/api/v1/admin/vip/{email}", tag = "admin", security(("bearer" = [])),
    params(("email" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn remove_vip(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    Path(email): Path<String>,
) -> Result<StatusCode, Error> {
    state
        .accounts()
        .remove_vip(&email, Actor::User(admin.user_id), client.ip)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// At most 500; default 100.
    pub limit: Option<i64>,
    /// Only entries older than this id (for paging).
    pub before: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/admin/audit", tag = "admin", security(("bearer" = [])), params(AuditQuery),
    responses((status = 200, body = Vec<AuditRecord>), (status = 403, body = ErrorBody)))]
pub async fn list_audit(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Vec<AuditRecord>>, Error> {
    audit::list(
        state.accounts().db(),
        query.limit.unwrap_or(100),
        query.before,
    )
    .await
    .map(Json)
}
