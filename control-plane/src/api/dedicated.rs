//! `/api/v1/dedicated`: the caller's dedicated servers, as a buyer sees them.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use crate::accounts::Caller;
use crate::dedicated::purchases::{self, DedicatedPurchase};
use crate::error::Error;

use super::AppState;
use super::error::ErrorBody;

pub fn routes() -> Router<AppState> {
    Router::new().route("/dedicated", get(list_purchases))
}

/// The caller's dedicated-server purchases, newest first: how far each is, and the server to
/// connect to once it is ready.
#[utoipa::path(get, path = "/api/v1/dedicated", tag = "dedicated", security(("bearer" = [])),
    responses((status = 200, body = Vec<DedicatedPurchase>), (status = 401, body = ErrorBody)))]
pub async fn list_purchases(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<DedicatedPurchase>>, Error> {
    purchases::of_user(state.db(), caller.user_id)
        .await
        .map(Json)
}
