//! Operator routes for servers, plans, and a user's plan or suspension. Audited.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::accounts::ClientInfo;
use crate::audit::Actor;
use crate::billing::plans::{self, Plan, PlanUpdate};
use crate::devices::EvacuationReport;
use crate::error::Error;
use crate::nodes::enrollment::{self, IssuedToken};
use crate::servers::{self, ServerInput, ServerView};

use super::AppState;
use super::error::{ApiJson, ErrorBody};
use super::extract::{AdminCaller, Path};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/servers", get(list_servers).post(add_server))
        .route("/servers/{id}/retire", post(retire_server))
        .route("/servers/{id}/evacuate", post(evacuate_server))
        .route("/servers/{id}/enrollment-token", post(enrollment_token))
        .route(
            "/servers/{id}/revoke-certificates",
            post(revoke_certificates),
        )
        .route("/plans/{code}", patch(update_plan))
        .route("/users/{id}/plan", post(change_plan))
        .route("/users/{id}/suspend", post(suspend))
        .route("/users/{id}/restore", post(restore))
}

#[utoipa::path(get, path = "/api/v1/admin/servers", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Vec<ServerView>)))]
pub async fn list_servers(
    State(state): State<AppState>,
    _admin: AdminCaller,
) -> Result<Json<Vec<ServerView>>, Error> {
    servers::list(state.db()).await.map(Json)
}

#[utoipa::path(post, path = "/api/v1/admin/servers", tag = "admin", security(("bearer" = [])), request_body = ServerInput,
    responses((status = 201, body = ServerView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn add_server(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    ApiJson(input): ApiJson<ServerInput>,
) -> Result<(StatusCode, Json<ServerView>), Error> {
    let server = servers::create(
        state.db(),
        input,
        Actor::User(admin.user_id),
        client.ip,
        state.now(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(server)))
}

#[utoipa::path(post, path = "/api/v1/admin/servers/{id}/retire", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path)), responses((status = 200, body = ServerView), (status = 409, body = ErrorBody)))]
pub async fn retire_server(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    Path(id): Path<i64>,
) -> Result<Json<ServerView>, Error> {
    servers::retire(
        state.db(),
        id,
        Actor::User(admin.user_id),
        client.ip,
        state.now(),
    )
    .await
    .map(Json)
}

/// Move every device off a retired server to others in its region; each customer with a live
/// device moved is mailed to fetch the new settings. Run again after adding capacity to move
/// the stranded ones.
#[utoipa::path(post, path = "/api/v1/admin/servers/{id}/evacuate", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path)), responses((status = 200, body = EvacuationReport), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the server still takes devices, or is dedicated")))]
pub async fn evacuate_server(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    Path(id): Path<i64>,
) -> Result<Json<EvacuationReport>, Error> {
    state
        .devices()
        .evacuate(id, Actor::User(admin.user_id), client.ip)
        .await
        .map(Json)
}

#[utoipa::path(patch, path = "/api/v1/admin/plans/{code}", tag = "admin", security(("bearer" = [])),
    params(("code" = String, Path)), request_body = PlanUpdate, responses((status = 200, body = Plan)))]
pub async fn update_plan(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    Path(code): Path<String>,
    ApiJson(input): ApiJson<PlanUpdate>,
) -> Result<Json<Plan>, Error> {
    plans::update(
        state.db(),
        &code,
        input,
        Actor::User(admin.user_id),
        client.ip,
        state.now(),
    )
    .await
    .map(Json)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanChange {
    pub plan: String,
}

/// Put a user on a plan: converts a trial; a lower limit disables the newest devices.
#[utoipa::path(post, path = "/api/v1/admin/users/{id}/plan", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path)), request_body = PlanChange, responses((status = 204), (status = 400, body = ErrorBody)))]
pub async fn change_plan(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    Path(id): Path<i64>,
    ApiJson(input): ApiJson<PlanChange>,
) -> Result<StatusCode, Error> {
    plans::admin_change_plan(
        state.db(),
        id,
        &input.plan,
        Actor::User(admin.user_id),
        client.ip,
        state.now(),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Suspend an account: its devices leave their servers and its sessions end.
#[utoipa::path(post, path = "/api/v1/admin/users/{id}/suspend", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path)), responses((status = 204), (status = 409, body = ErrorBody)))]
pub async fn suspend(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    Path(id): Path<i64>,
) -> Result<StatusCode, Error> {
    plans::admin_set_suspended(
        state.db(),
        id,
        true,
        Actor::User(admin.user_id),
        client.ip,
        state.now(),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/admin/users/{id}/restore", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path)), responses((status = 204), (status = 409, body = ErrorBody)))]
pub async fn restore(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    Path(id): Path<i64>,
) -> Result<StatusCode, Error> {
    plans::admin_set_suspended(
        state.db(),
        id,
        false,
        Actor::User(admin.user_id),
        client.ip,
        state.now(),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A single-use token (1 hour by default) for the server's node agent to enroll with.
#[utoipa::path(post, path = "/api/v1/admin/servers/{id}/enrollment-token", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path)), responses((status = 201, body = IssuedToken), (status = 404, body = ErrorBody),
                                          (status = 409, body = ErrorBody)))]
pub async fn enrollment_token(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    Path(id): Path<i64>,
) -> Result<(StatusCode, Json<IssuedToken>), Error> {
    let ttl = state.enrollment_token_ttl();
    let issued = enrollment::issue(
        state.db(),
        id,
        ttl,
        Actor::User(admin.user_id),
        client.ip,
        state.now(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

#[derive(Debug, serde::Serialize, ToSchema)]
pub struct Revoked {
    pub revoked: u64,
}

/// Revoke every certificate of the server's node; it must enroll again.
#[utoipa::path(post, path = "/api/v1/admin/servers/{id}/revoke-certificates", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path)), responses((status = 200, body = Revoked), (status = 404, body = ErrorBody)))]
pub async fn revoke_certificates(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    Path(id): Path<i64>,
) -> Result<Json<Revoked>, Error> {
    let revoked = enrollment::revoke_certificates(
        state.db(),
        id,
        Actor::User(admin.user_id),
        client.ip,
        state.now(),
    )
    .await?;
    Ok(Json(Revoked { revoked }))
}
