//! `/api/v1/me`: the caller's own account.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use crate::accounts::{Caller, UserView};
use crate::error::Error;

use super::AppState;
use super::error::ErrorBody;

pub fn routes() -> Router<AppState> {
    Router::new().route("/me", get(me))
}

#[utoipa::path(get, path = "/api/v1/me", tag = "account", security(("bearer" = [])),
    responses((status = 200, body = UserView), (status = 401, body = ErrorBody)))]
pub async fn me(State(state): State<AppState>, caller: Caller) -> Result<Json<UserView>, Error> {
    state.accounts().me(caller.user_id).await.map(Json)
}
