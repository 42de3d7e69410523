//! Operator routes for dedicated servers: the pool of pre-provisioned servers and the orders.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::accounts::ClientInfo;
use crate::audit::Actor;
use crate::dedicated::orders::{self, ManualOrderInput, OrderView};
use crate::dedicated::pool::{self, PoolInput, PoolServerView, PoolStatusInput};
use crate::dedicated::refund::{self, RefundInput};
use crate::error::{Error, FieldError};

use super::AppState;
use super::error::{ApiJson, ErrorBody, OptionalJson};
use super::extract::{AdminCaller, Path, Query};

const ORDER_STATUSES: &[&str] = &[
    "pending",
    "provisioning",
    "configuring",
    "completed",
    "failed",
];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/pool", get(list_pool).post(add_to_pool))
        .route("/pool/{id}", patch(set_pool_status))
        .route("/orders", get(list_orders).post(place_manual_order))
        .route("/orders/{id}/retry", post(retry_order))
        .route("/orders/{id}/refund", post(refund_order))
}

#[utoipa::path(get, path = "/api/v1/admin/pool", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Vec<PoolServerView>)))]
pub async fn list_pool(
    State(state): State<AppState>,
    _admin: AdminCaller,
) -> Result<Json<Vec<PoolServerView>>, Error> {
    pool::list(state.db()).await.map(Json)
}

/// Put an idle server (normally with its agent enrolled) into the pool for dedicated buyers.
#[utoipa::path(post, path = "/api/v1/admin/pool", tag = "admin", security(("bearer" = [])), request_body = PoolInput,
    responses((status = 201, body = PoolServerView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn add_to_pool(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    ApiJson(input): ApiJson<PoolInput>,
) -> Result<(StatusCode, Json<PoolServerView>), Error> {
    let view = pool::add(
        state.db(),
        input,
        Actor::User(admin.user_id),
        client.ip,
        state.now(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Take a pool server out of service (`maintenance`, `retired`) or back (`available`).
#[utoipa::path(patch, path = "/api/v1/admin/pool/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path)), request_body = PoolStatusInput,
    responses((status = 200, body = PoolServerView), (status = 409, body = ErrorBody)))]
pub async fn set_pool_status(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    Path(id): Path<i64>,
    ApiJson(input): ApiJson<PoolStatusInput>,
) -> Result<Json<PoolServerView>, Error> {
    pool::set_status(
        state.db(),
        id,
        input,
        Actor::User(admin.user_id),
        client.ip,
        state.now(),
    )
    .await
    .map(Json)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct OrderQuery {
    /// `pending`, `provisioning`, `configuring`, `completed` or `failed`; default: all.
    pub status: Option<String>,
}

/// Dedicated-server orders, newest first (at most 500).
#[utoipa::path(get, path = "/api/v1/admin/orders", tag = "admin", security(("bearer" = [])), params(OrderQuery),
    responses((status = 200, body = Vec<OrderView>), (status = 400, body = ErrorBody)))]
pub async fn list_orders(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Query(query): Query<OrderQuery>,
) -> Result<Json<Vec<OrderView>>, Error> {
    if let Some(status) = query.status.as_deref()
        && !ORDER_STATUSES.contains(&status)
    {
        return Err(Error::Validation(vec![FieldError::new(
            "status",
            "invalid",
            "pending, provisioning, configuring, completed or failed",
        )]));
    }
    orders::list(state.db(), query.status.as_deref())
        .await
        .map(Json)
}

/// Record a dedicated-server purchase paid outside PayPal: the payment, the plan, the order,
/// and a pool server in the region if one waits.
#[utoipa::path(post, path = "/api/v1/admin/orders", tag = "admin", security(("bearer" = [])), request_body = ManualOrderInput,
    responses((status = 201, body = OrderView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn place_manual_order(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    ApiJson(input): ApiJson<ManualOrderInput>,
) -> Result<(StatusCode, Json<OrderView>), Error> {
    let order = orders::place_manual(
        state.db(),
        input,
        Actor::User(admin.user_id),
        client.ip,
        state.now(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(order)))
}

/// Send a failed order round again from where it stopped (a created instance is found again by
/// its name, never created twice); its deadline starts afresh.
#[utoipa::path(post, path = "/api/v1/admin/orders/{id}/retry", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path, description = "The order")),
    responses((status = 200, body = OrderView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn retry_order(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    Path(id): Path<i64>,
) -> Result<Json<OrderView>, Error> {
    orders::retry(
        state.db(),
        id,
        state.order_deadline(),
        Actor::User(admin.user_id),
        client.ip,
        state.now(),
    )
    .await
    .map(Json)
}

/// Give up on a failed order: the buyer's payment is refunded in full and their subscription
/// cancelled at PayPal first (a failure there is 502 and records nothing), then the order is
/// released (a created instance is cancelled at the provider), their plan ends and they are
/// told. The body is optional.
#[utoipa::path(post, path = "/api/v1/admin/orders/{id}/refund", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path, description = "The order")),
    request_body(content = RefundInput, description = "optional"),
    responses((status = 200, body = OrderView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 502, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn refund_order(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    Path(id): Path<i64>,
    OptionalJson(input): OptionalJson<RefundInput>,
) -> Result<Json<OrderView>, Error> {
    refund::refund(
        state.db(),
        state.payments().provider_if_configured(),
        id,
        input,
        Actor::User(admin.user_id),
        client.ip,
        state.now(),
    )
    .await
    .map(Json)
}
