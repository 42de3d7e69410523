//! `/api/v1/admin/*`: operator endpoints (admin role). Every change is in the audit log.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::accounts::{AccountSearch, AccountSummary, ClientInfo, VipEntry, VipInput};
use crate::audit::{self, Actor, AuditRecord};
use crate::automation::UserRef;
use crate::automation::tasks::{TaskAction, TaskView};
use crate::billing::trials::TrialExtension;
use crate::error::Error;

use super::AppState;
use super::error::{ApiJson, ErrorBody};
use super::extract::{AdminCaller, Path, Query};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/vip", get(list_vips).post(upsert_vip))
        .route("/vip/{email}", delete(remove_vip))
        .route("/audit", get(list_audit))
        .route("/tasks", get(list_tasks))
        .route("/tasks/{id}/retry", post(retry_task))
        .route("/tasks/{id}/cancel", post(cancel_task))
        .route("/users", get(list_users))
        .route("/users/{id}", get(get_user))
        .route("/users/{id}/extend-trial", post(extend_trial))
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

/// Find accounts by part of the email address (or a UUID) and status, newest first.
#[utoipa::path(get, path = "/api/v1/admin/users", tag = "admin", security(("bearer" = [])), params(AccountSearch),
    responses((status = 200, body = Vec<AccountSummary>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_users(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Query(search): Query<AccountSearch>,
) -> Result<Json<Vec<AccountSummary>>, Error> {
    state.accounts().find_accounts(search).await.map(Json)
}

/// One account: plan, subscription, devices, lockout.
#[utoipa::path(get, path = "/api/v1/admin/users/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path)), responses((status = 200, body = AccountSummary), (status = 404, body = ErrorBody)))]
pub async fn get_user(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(id): Path<i64>,
) -> Result<Json<AccountSummary>, Error> {
    state.accounts().account(id).await.map(Json)
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

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TaskQuery {
    /// `pending`, `running`, `succeeded`, `dead` (default) or `cancelled`.
    pub status: Option<String>,
    /// At most 1000; default 100.
    pub limit: Option<i64>,
}

/// Scheduled tasks by status; by default the dead-lettered ones that need an operator.
#[utoipa::path(get, path = "/api/v1/admin/tasks", tag = "admin", security(("bearer" = [])), params(TaskQuery),
    responses((status = 200, body = Vec<TaskView>), (status = 400, body = ErrorBody)))]
pub async fn list_tasks(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Query(query): Query<TaskQuery>,
) -> Result<Json<Vec<TaskView>>, Error> {
    let status = query.status.as_deref().unwrap_or("dead");
    state
        .automation()
        .list_tasks(status, query.limit.unwrap_or(100))
        .await
        .map(Json)
}

/// Run a dead or cancelled task again, with a fresh set of attempts.
#[utoipa::path(post, path = "/api/v1/admin/tasks/{id}/retry", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path)), responses((status = 200, body = TaskView), (status = 409, body = ErrorBody)))]
pub async fn retry_task(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    Path(id): Path<i64>,
) -> Result<Json<TaskView>, Error> {
    state
        .automation()
        .act_on_task(id, TaskAction::Retry, Actor::User(admin.user_id), client.ip)
        .await
        .map(Json)
}

#[utoipa::path(post, path = "/api/v1/admin/tasks/{id}/cancel", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path)), responses((status = 200, body = TaskView), (status = 409, body = ErrorBody)))]
pub async fn cancel_task(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    Path(id): Path<i64>,
) -> Result<Json<TaskView>, Error> {
    state
        .automation()
        .act_on_task(
            id,
            TaskAction::Cancel,
            Actor::User(admin.user_id),
            client.ip,
        )
        .await
        .map(Json)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendTrialInput {
    /// 1 to 90.
    pub days: i64,
}

/// Move a running trial's end, and every pending trial step, by `days`.
#[utoipa::path(post, path = "/api/v1/admin/users/{id}/extend-trial", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path)), request_body = ExtendTrialInput,
    responses((status = 200, body = TrialExtension), (status = 409, body = ErrorBody)))]
pub async fn extend_trial(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    Path(id): Path<i64>,
    ApiJson(input): ApiJson<ExtendTrialInput>,
) -> Result<Json<TrialExtension>, Error> {
    state
        .automation()
        .extend_trial(
            UserRef::Id(id),
            input.days,
            Actor::User(admin.user_id),
            client.ip,
        )
        .await
        .map(Json)
}
