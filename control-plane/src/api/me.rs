//! `/api/v1/me`: the caller's own account.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use crate::accounts::{Caller, UserView};
use crate::error::Error;
use crate::identities::{self, Identity};

use super::AppState;
use super::error::ErrorBody;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/me", get(me))
        .route("/me/scanner-token", post(rotate_scanner_token))
        .route("/me/identities", get(identities))
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
