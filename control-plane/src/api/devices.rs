//! Customer routes for what they buy: plans, servers, promo codes, and their devices with
//! WireGuard configs (text and QR code).

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router, middleware};

use crate::accounts::Caller;
use crate::billing::plans::{self, Plan};
use crate::billing::promo::{self, PromoCheck, PromoQuote};
use crate::devices::client_config;
use crate::devices::{CreatedDevice, DeviceView, NewDevice, RenameDevice, RotateKey};
use crate::error::Error;
use crate::servers::{self, PublicServer};

use super::AppState;
use super::error::{ApiJson, ErrorBody, OptionalJson};
use super::extract::{Path, limit_auth};

pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/plans", get(list_plans))
        .route("/servers", get(list_servers))
        // Per-address limits, as on the auth routes: codes must not be guessable by brute force.
        .route(
            "/billing/promo/validate",
            post(validate_promo).layer(middleware::from_fn_with_state(state, limit_auth)),
        )
        .route("/devices", get(list_devices).post(create_device))
        .route(
            "/devices/{id}",
            axum::routing::patch(rename_device).delete(delete_device),
        )
        .route("/devices/{id}/rotate-key", post(rotate_key))
        .route("/devices/{id}/config", get(device_config))
        .route("/devices/{id}/qr.png", get(device_qr_png))
        .route("/devices/{id}/qr.svg", get(device_qr_svg))
}

#[utoipa::path(get, path = "/api/v1/plans", tag = "billing", responses((status = 200, body = Vec<Plan>)))]
pub async fn list_plans(State(state): State<AppState>) -> Result<Json<Vec<Plan>>, Error> {
    plans::list_public(state.db()).await.map(Json)
}

/// Shared servers in service: region, country, status and load.
#[utoipa::path(get, path = "/api/v1/servers", tag = "devices", responses((status = 200, body = Vec<PublicServer>)))]
pub async fn list_servers(State(state): State<AppState>) -> Result<Json<Vec<PublicServer>>, Error> {
    servers::list_public(state.db()).await.map(Json)
}

#[utoipa::path(post, path = "/api/v1/billing/promo/validate", tag = "billing", request_body = PromoCheck,
    responses((status = 200, body = PromoQuote), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn validate_promo(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<PromoCheck>,
) -> Result<Json<PromoQuote>, Error> {
    promo::validate(state.db(), input, state.now())
        .await
        .map(Json)
}

#[utoipa::path(get, path = "/api/v1/devices", tag = "devices", security(("bearer" = [])),
    responses((status = 200, body = Vec<DeviceView>)))]
pub async fn list_devices(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<DeviceView>>, Error> {
    state.devices().list(caller.user_id).await.map(Json)
}

/// Connect a device. Refusals carry the seed's fields: `trial_expired`, or `current_devices`,
/// `max_devices` and `upgrade_required`.
#[utoipa::path(post, path = "/api/v1/devices", tag = "devices", security(("bearer" = [])), request_body = NewDevice,
    responses((status = 201, body = CreatedDevice), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn create_device(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(input): ApiJson<NewDevice>,
) -> Result<(StatusCode, Json<CreatedDevice>), Error> {
    let created = state.devices().create(caller.user_id, input).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(patch, path = "/api/v1/devices/{id}", tag = "devices", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = RenameDevice, responses((status = 200, body = DeviceView)))]
pub async fn rename_device(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<RenameDevice>,
) -> Result<Json<DeviceView>, Error> {
    state
        .devices()
        .rename(caller.user_id, &id, input)
        .await
        .map(Json)
}

#[utoipa::path(delete, path = "/api/v1/devices/{id}", tag = "devices", security(("bearer" = [])),
    params(("id" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_device(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    state.devices().delete(caller.user_id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replace the device's key (the old peer is removed from the server, the new one added).
#[utoipa::path(post, path = "/api/v1/devices/{id}/rotate-key", tag = "devices", security(("bearer" = [])),
    params(("id" = String, Path)), request_body(content = RotateKey, description = "optional"),
    responses((status = 200, body = CreatedDevice)))]
pub async fn rotate_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    OptionalJson(input): OptionalJson<RotateKey>,
) -> Result<Json<CreatedDevice>, Error> {
    state
        .devices()
        .rotate_key(caller.user_id, &id, input)
        .await
        .map(Json)
}

fn attachment(content_type: &'static str, filename: &str, body: Vec<u8>) -> Response {
    let safe: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response()
}

/// The device's wg-quick config (the private key stays a placeholder: it is never stored).
#[utoipa::path(get, path = "/api/v1/devices/{id}/config", tag = "devices", security(("bearer" = [])),
    params(("id" = String, Path)), responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn device_config(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let (device, config) = state.devices().config(caller.user_id, &id).await?;
    Ok(attachment(
        "text/plain; charset=utf-8",
        &format!("truevault-{}.conf", device.name),
        config.into_bytes(),
    ))
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/qr.png", tag = "devices", security(("bearer" = [])),
    params(("id" = String, Path)), responses((status = 200, content_type = "image/png", body = Vec<u8>)))]
pub async fn device_qr_png(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let (device, config) = state.devices().config(caller.user_id, &id).await?;
    let png = client_config::qr_png(&config)?;
    Ok(attachment(
        "image/png",
        &format!("truevault-{}.png", device.name),
        png,
    ))
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/qr.svg", tag = "devices", security(("bearer" = [])),
    params(("id" = String, Path)), responses((status = 200, content_type = "image/svg+xml", body = String)))]
pub async fn device_qr_svg(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let (device, config) = state.devices().config(caller.user_id, &id).await?;
    let svg = client_config::qr_svg(&config)?;
    Ok(attachment(
        "image/svg+xml",
        &format!("truevault-{}.svg", device.name),
        svg.into_bytes(),
    ))
}
