//! `/api/v1/me`: the caller's own account: profile, password, closing it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use crate::accounts::{Caller, ClientInfo, CloseInput, PasswordChange, ProfileUpdate, UserView};
use crate::error::Error;
use crate::identities::{self, Identity};

use super::AppState;
use super::error::{ApiJson, ErrorBody};
use super::extract::limit_auth;

pub fn routes(state: AppState) -> Router<AppState> {
    // The routes that check a password share the login routes' per-address limit.
    let password_checked = Router::new()
        .route("/me", axum::routing::delete(close_account))
        .route("/me/password", post(change_password))
        .layer(middleware::from_fn_with_state(state, limit_auth));
    Router::new()
        .route("/me", get(me).patch(update_profile))
        .route("/me/scanner-token", post(rotate_scanner_token))
        .route("/me/identities", get(identities))
        .merge(password_checked)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScannerTokenResponse {
    /// Shown only now; store it in the scanner app. A new request replaces it.
    pub scanner_token: String,
    pub message: String,
}

#[utoipa::path(get, path = "/api/v1/me", tag = "account", security(("bearer" = [])),
    responses((status = 200, body = UserView), (status = 401, body = ErrorBody)))]
pub async fn me(State(state): State<AppState>, caller: Caller) -> Result<Json<UserView>, Error> {
    state.accounts().me(caller.user_id).await.map(Json)
}

/// Change the caller's name.
#[utoipa::path(patch, path = "/api/v1/me", tag = "account", security(("bearer" = [])),
    request_body = ProfileUpdate,
    responses((status = 200, body = UserView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn update_profile(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(input): ApiJson<ProfileUpdate>,
) -> Result<Json<UserView>, Error> {
    state
        .accounts()
        .update_profile(caller.user_id, input)
        .await
        .map(Json)
}

/// Change the password (the current one confirms it). Every other session ends; this one
/// stays signed in.
#[utoipa::path(post, path = "/api/v1/me/password", tag = "account", security(("bearer" = [])),
    request_body = PasswordChange,
    responses((status = 204), (status = 400, body = ErrorBody, description = "invalid, or `wrong_password`"),
              (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn change_password(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    ApiJson(input): ApiJson<PasswordChange>,
) -> Result<StatusCode, Error> {
    state
        .accounts()
        .change_password(&caller, input, &client)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Close the caller's account (the password confirms it): every device stops at once, every
/// session ends, and what identifies the person is removed. Refused while a PayPal
/// subscription still bills (409 `subscription_active`: cancel it first).
#[utoipa::path(delete, path = "/api/v1/me", tag = "account", security(("bearer" = [])),
    request_body = CloseInput,
    responses((status = 204), (status = 400, body = ErrorBody, description = "invalid, or `wrong_password`"),
              (status = 401, body = ErrorBody), (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn close_account(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    ApiJson(input): ApiJson<CloseInput>,
) -> Result<StatusCode, Error> {
    state
        .accounts()
        .close_account(&caller, input, &client)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new scanner token for the network-scanner app (the previous one stops working).
#[utoipa::path(post, path = "/api/v1/me/scanner-token", tag = "account", security(("bearer" = [])),
    responses((status = 201, body = ScannerTokenResponse), (status = 401, body = ErrorBody)))]
pub async fn rotate_scanner_token(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<(StatusCode, Json<ScannerTokenResponse>), Error> {
    let token = state
        .accounts()
        .rotate_scanner_token(caller.user_id)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(ScannerTokenResponse {
            scanner_token: token.expose().to_owned(),
            message: "Copy this token into the scanner app now: it is not shown again.".to_owned(),
        }),
    ))
}

/// The caller's regional identities.
#[utoipa::path(get, path = "/api/v1/me/identities", tag = "account", security(("bearer" = [])),
    responses((status = 200, body = Vec<Identity>), (status = 401, body = ErrorBody)))]
pub async fn identities(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<Identity>>, Error> {
    identities::list(state.accounts().db(), caller.user_id)
        .await
        .map(Json)
}
