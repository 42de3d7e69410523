//! `/api/v1/billing/*`: checkout at PayPal, the subscription and its cancellation, invoices,
//! and PayPal's webhook.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Html;
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::accounts::{Caller, ClientInfo};
use crate::billing::invoices::{self, InvoiceView};
use crate::billing::payments::{CheckoutInput, CheckoutView};
use crate::billing::subscription::{CancelInput, SubscriptionView};
use crate::error::Error;

use super::AppState;
use super::error::{ApiJson, ErrorBody, OptionalJson};
use super::extract::Path;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/billing/checkout", post(checkout))
        .route("/billing/paypal/webhook", post(paypal_webhook))
        .route("/billing/subscription", get(get_subscription))
        .route("/billing/subscription/cancel", post(cancel_subscription))
        .route("/billing/invoices", get(list_invoices))
        .route("/billing/invoices/{number}", get(invoice))
        .route("/billing/invoices/{number}/html", get(invoice_page))
}

/// The caller's subscription: plan, status, paid period, and whether it is cancelled.
#[utoipa::path(get, path = "/api/v1/billing/subscription", tag = "billing", security(("bearer" = [])),
    responses((status = 200, body = SubscriptionView), (status = 404, body = ErrorBody)))]
pub async fn get_subscription(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<SubscriptionView>, Error> {
    state
        .payments()
        .subscription(caller.user_id)
        .await
        .map(Json)
}

/// Cancel the caller's PayPal subscription: nothing more is charged, and access continues
/// until the paid period ends. Cancelling again changes nothing. The body is optional.
#[utoipa::path(post, path = "/api/v1/billing/subscription/cancel", tag = "billing", security(("bearer" = [])),
    request_body(content = CancelInput, description = "optional"),
    responses((status = 200, body = SubscriptionView), (status = 400, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "no PayPal subscription bills the caller"),
              (status = 502, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn cancel_subscription(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    OptionalJson(input): OptionalJson<CancelInput>,
) -> Result<Json<SubscriptionView>, Error> {
    state
        .payments()
        .cancel_subscription(caller.user_id, input, client.ip)
        .await
        .map(Json)
}

/// The caller's invoices, newest first.
#[utoipa::path(get, path = "/api/v1/billing/invoices", tag = "billing", security(("bearer" = [])),
    responses((status = 200, body = Vec<InvoiceView>)))]
pub async fn list_invoices(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<InvoiceView>>, Error> {
    invoices::list(state.db(), caller.user_id).await.map(Json)
}

/// One of the caller's invoices (`TV-000042`).
#[utoipa::path(get, path = "/api/v1/billing/invoices/{number}", tag = "billing", security(("bearer" = [])),
    params(("number" = String, Path)), responses((status = 200, body = InvoiceView), (status = 404, body = ErrorBody)))]
pub async fn invoice(
    State(state): State<AppState>,
    caller: Caller,
    Path(number): Path<String>,
) -> Result<Json<InvoiceView>, Error> {
    invoices::get(state.db(), caller.user_id, &number)
        .await
        .map(Json)
}

/// One of the caller's invoices as a printable page.
#[utoipa::path(get, path = "/api/v1/billing/invoices/{number}/html", tag = "billing", security(("bearer" = [])),
    params(("number" = String, Path)), responses((status = 200, content_type = "text/html"), (status = 404, body = ErrorBody)))]
pub async fn invoice_page(
    State(state): State<AppState>,
    caller: Caller,
    Path(number): Path<String>,
) -> Result<Html<String>, Error> {
    invoices::page(state.db(), caller.user_id, &number)
        .await
        .map(Html)
}

/// Start paying for a plan: returns the PayPal link the customer approves the subscription at.
/// The plan changes when PayPal reports the subscription active (webhook).
#[utoipa::path(post, path = "/api/v1/billing/checkout", tag = "billing", security(("bearer" = [])),
    request_body = CheckoutInput,
    responses((status = 201, body = CheckoutView), (status = 400, body = ErrorBody), (status = 502, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn checkout(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(input): ApiJson<CheckoutInput>,
) -> Result<(StatusCode, Json<CheckoutView>), Error> {
    let view = state.payments().checkout(caller.user_id, input).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// PayPal's webhook: verified with PayPal, stored once per event id, processed as a task.
/// The body is taken as text: the signature covers its exact bytes.
#[utoipa::path(post, path = "/api/v1/billing/paypal/webhook", tag = "billing",
    responses((status = 200), (status = 400, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn paypal_webhook(
    State(state): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    body: String,
) -> Result<StatusCode, Error> {
    // Every unknown delivery costs a call to PayPal: an address whose deliveries keep failing
    // verification is refused before that call.
    if let Some(ip) = client.ip
        && let Err(retry_after_secs) = state.webhook_failures().peek(ip)
    {
        return Err(Error::RateLimited { retry_after_secs });
    }
    let received = state.payments().receive_webhook(&headers, &body).await;
    if let (Err(Error::InvalidRequest { code, .. }), Some(ip)) = (&received, client.ip)
        && *code == "webhook_unverified"
    {
        let _ = state.webhook_failures().check(ip);
    }
    received?;
    // A replay is acknowledged too, so PayPal stops sending it.
    Ok(StatusCode::OK)
}
