//! A stand-in for PayPal's REST API (feature `fake`), a real HTTP server on loopback for tests:
//! OAuth2 client credentials with Basic auth, subscriptions and orders with `PayPal-Request-Id`
//! idempotency and PayPal's error shapes, cancelling a subscription (only an active or
//! suspended one, as PayPal allows), refunding a collected payment once, and
//! `verify-webhook-signature`, which checks a
//! signature over the event's exact text the way PayPal's does (here with a secret of the
//! fake's, since PayPal's own key is not ours to hold). Tests sign deliveries with
//! [`FakePayPal::sign`].

// Handlers return their refusals as ready responses; boxing them would only add noise here.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{Value, json};

pub const CLIENT_ID: &str = "fake-paypal-client";
pub const CLIENT_SECRET: &str = "fake-paypal-secret";
pub const WEBHOOK_ID: &str = "WH-FAKE-0001";
/// Billing plans that exist at this PayPal.
pub const PLANS: &[&str] = &["P-PERSONAL", "P-FAMILY", "P-BUSINESS", "P-DEDICATED"];
const SIGNING_SECRET: &str = "fake-paypal-signing-secret";

#[derive(Debug, Default)]
struct World {
    tokens: Vec<String>,
    token_grants: u32,
    /// `PayPal-Request-Id` → the answer first given for it.
    created: BTreeMap<String, Value>,
    next: u32,
    verifications: u32,
    fail_verifications: u32,
    /// Subscription id → its status (`APPROVAL_PENDING`, `ACTIVE`, `CANCELLED`).
    subscriptions: BTreeMap<String, &'static str>,
    /// Cancellations PayPal accepted: subscription id and the reason given.
    cancellations: Vec<(String, String)>,
    fail_cancellations: u32,
    /// Payments collected on subscriptions: sale id → the sale.
    sales: BTreeMap<String, Sale>,
    /// Refunds PayPal made, in order: sale id and refund id.
    refunds: Vec<(String, String)>,
    fail_refunds: u32,
    /// The status new refunds get (`COMPLETED` unless a test says otherwise).
    refund_status: Option<&'static str>,
}

#[derive(Debug)]
struct Sale {
    total: String,
    currency: String,
    refunded: bool,
}

#[derive(Debug, Clone)]
pub struct FakePayPal {
    world: Arc<Mutex<World>>,
    pub addr: SocketAddr,
}

impl FakePayPal {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake PayPal");
        let addr = listener.local_addr().expect("its address");
        let fake = Self {
            world: Arc::default(),
            addr,
        };
        let app = Router::new()
            .route("/v1/oauth2/token", post(token))
            .route("/v1/billing/subscriptions", post(subscription))
            .route("/v1/billing/subscriptions/{id}/cancel", post(cancel))
            .route("/v2/checkout/orders", post(order))
            .route("/v2/payments/captures/{id}/refund", post(refund))
            .route("/v1/notifications/verify-webhook-signature", post(verify))
            .with_state(fake.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        fake
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn token_grants(&self) -> u32 {
        self.world().token_grants
    }

    pub fn verifications(&self) -> u32 {
        self.world().verifications
    }

    /// The first-cycle price a subscription was created with (a promo's first month), if any.
    pub fn first_cycle_price(&self, subscription: &str) -> Option<String> {
        self.world()
            .created
            .values()
            .find(|c| c.get("id").and_then(Value::as_str) == Some(subscription))
            .and_then(|c| c.get("first_cycle_price"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// The customer approves the subscription at PayPal: it becomes `ACTIVE` (PayPal then
    /// sends `BILLING.SUBSCRIPTION.ACTIVATED`, which tests deliver themselves).
    pub fn approve(&self, subscription: &str) {
        if let Some(status) = self.world().subscriptions.get_mut(subscription) {
            *status = "ACTIVE";
        }
    }

    /// A subscription's status at PayPal, if it exists.
    pub fn subscription_status(&self, subscription: &str) -> Option<&'static str> {
        self.world().subscriptions.get(subscription).copied()
    }

    /// The cancellations PayPal accepted, in order: subscription id and reason.
    pub fn cancellations(&self) -> Vec<(String, String)> {
        self.world().cancellations.clone()
    }

    /// PayPal collects a payment of `total` (`"9.99"`, USD) on the subscription; returns the
    /// sale id its `PAYMENT.SALE.COMPLETED` event names (tests deliver that themselves).
    pub fn collect(&self, subscription: &str, total: &str) -> String {
        let mut world = self.world();
        assert_eq!(
            world.subscriptions.get(subscription).copied(),
            Some("ACTIVE"),
            "PayPal collects only on an active subscription"
        );
        world.next += 1;
        let id = format!("8SALE{:06}{}", world.next, subscription.len());
        world.sales.insert(
            id.clone(),
            Sale {
                total: total.to_owned(),
                currency: "USD".to_owned(),
                refunded: false,
            },
        );
        id
    }

    /// An operator refunds the payment in PayPal's own dashboard.
    pub fn refund_at_paypal(&self, sale: &str) {
        if let Some(sale) = self.world().sales.get_mut(sale) {
            sale.refunded = true;
        }
    }

    /// The refunds PayPal made through the API, in order: sale id and refund id.
    pub fn refunds(&self) -> Vec<(String, String)> {
        self.world().refunds.clone()
    }

    /// From now on refunds are accepted as `status` (`PENDING`, `FAILED`) instead of done.
    pub fn refunds_end_as(&self, status: &'static str) {
        self.world().refund_status = Some(status);
    }

    /// The next `n` refund calls answer 503.
    pub fn fail_refunds(&self, n: u32) {
        self.world().fail_refunds = n;
    }

    /// Every issued token stops working (as after PayPal rotates them).
    pub fn revoke_tokens(&self) {
        self.world().tokens.clear();
    }

    /// The next `n` verification calls answer 500.
    pub fn fail_verifications(&self, n: u32) {
        self.world().fail_verifications = n;
    }

    /// The next `n` cancel calls answer 503 (PayPal is having a bad moment).
    pub fn fail_cancellations(&self, n: u32) {
        self.world().fail_cancellations = n;
    }

    /// The signature headers PayPal would send with `raw_event` for `webhook_id`.
    pub fn sign(&self, raw_event: &str, webhook_id: &str) -> Vec<(&'static str, String)> {
        let transmission_id = uuid::Uuid::new_v4().to_string();
        let time = "2026-11-24T10:00:00Z".to_owned();
        let sig = signature(&transmission_id, &time, webhook_id, raw_event);
        vec![
            ("paypal-auth-algo", "SHA256withRSA".into()),
            (
                "paypal-cert-url",
                "https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-1d93a270"
                    .into(),
            ),
            ("paypal-transmission-id", transmission_id),
            ("paypal-transmission-sig", sig),
            ("paypal-transmission-time", time),
        ]
    }
}

fn signature(transmission_id: &str, time: &str, webhook_id: &str, raw_event: &str) -> String {
    let event_digest = crate::crypto::sha256_hex(raw_event.as_bytes());
    let signed = format!("{SIGNING_SECRET}|{transmission_id}|{time}|{webhook_id}|{event_digest}");
    base64::engine::general_purpose::STANDARD.encode(crate::crypto::sha256(signed.as_bytes()))
}

/// PayPal's money format: digits, a point, two digits.
fn is_decimal(value: &str) -> bool {
    value.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty()
            && a.chars().all(|c| c.is_ascii_digit())
            && b.len() == 2
            && b.chars().all(|c| c.is_ascii_digit())
    })
}

fn paypal_error(status: StatusCode, name: &str, message: &str, issue: Option<&str>) -> Response {
    let mut body = json!({
        "name": name,
        "message": message,
        "debug_id": format!("{:x}", uuid::Uuid::new_v4().as_u128() >> 64),
        "links": [{"href": "https://developer.paypal.com/docs/api/overview/#error", "rel": "information_link"}],
    });
    if let Some(issue) = issue {
        body["details"] = json!([{ "issue": issue, "description": message }]);
    }
    (status, Json(body)).into_response()
}

fn not_found() -> Response {
    paypal_error(
        StatusCode::NOT_FOUND,
        "RESOURCE_NOT_FOUND",
        "The specified resource does not exist.",
        Some("INVALID_RESOURCE_ID"),
    )
}

fn invalid_request(issue: &str) -> Response {
    paypal_error(
        StatusCode::BAD_REQUEST,
        "INVALID_REQUEST",
        "Request is not well-formed, syntactically incorrect, or violates schema.",
        Some(issue),
    )
}

fn unprocessable(issue: &str) -> Response {
    paypal_error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "UNPROCESSABLE_ENTITY",
        "The requested action could not be performed, semantically incorrect, or failed business validation.",
        Some(issue),
    )
}

/// An injected outage.
fn unavailable() -> Response {
    paypal_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "SERVICE_UNAVAILABLE",
        "Service Unavailable.",
        None,
    )
}

/// The bearer token of a request, if this fake issued it.
fn authorized(fake: &FakePayPal, headers: &HeaderMap) -> Result<(), Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if token.is_some_and(|t| fake.world().tokens.iter().any(|k| k == t)) {
        Ok(())
    } else {
        Err(paypal_error(
            StatusCode::UNAUTHORIZED,
            "AUTHENTICATION_FAILURE",
            "Authentication failed due to invalid authentication credentials or a missing Authorization header.",
            None,
        ))
    }
}

async fn token(State(fake): State<FakePayPal>, headers: HeaderMap, body: String) -> Response {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    );
    let basic_ok = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(expected.as_str());
    if !basic_ok {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client", "error_description": "Client Authentication failed"})),
        )
            .into_response();
    }
    if body.trim() != "grant_type=client_credentials" {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unsupported_grant_type", "error_description": "Grant Type is NULL"})),
        )
            .into_response();
    }
    let token = format!("A21AA{}", uuid::Uuid::new_v4().simple());
    let mut world = fake.world();
    world.token_grants += 1;
    world.tokens.push(token.clone());
    Json(json!({
        "scope": "https://uri.paypal.com/services/subscriptions",
        "access_token": token,
        "token_type": "Bearer",
        "app_id": "APP-80W284485P519543T",
        "expires_in": 32400,
        "nonce": "2026-11-24T10:00:00Z",
    }))
    .into_response()
}

/// Replays the first answer for a `PayPal-Request-Id`, or makes a new one with `make`.
fn idempotent(
    fake: &FakePayPal,
    headers: &HeaderMap,
    make: impl FnOnce(&mut World, u32) -> Value,
) -> Response {
    let key = headers
        .get("paypal-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut world = fake.world();
    if let Some(previous) = key.as_ref().and_then(|k| world.created.get(k)) {
        return (StatusCode::OK, Json(previous.clone())).into_response();
    }
    world.next += 1;
    let n = world.next;
    let created = make(&mut world, n);
    if let Some(key) = key {
        world.created.insert(key, created.clone());
    }
    (StatusCode::CREATED, Json(created)).into_response()
}

async fn subscription(
    State(fake): State<FakePayPal>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Err(refused) = authorized(&fake, &headers) {
        return refused;
    }
    let plan = body
        .get("plan_id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if plan.is_empty() {
        return invalid_request("MISSING_REQUIRED_PARAMETER");
    }
    if !PLANS.contains(&plan) {
        return not_found();
    }
    // A plan override may only reprice existing cycles, with a decimal string.
    if let Some(cycles) = body.pointer("/plan/billing_cycles") {
        let well_formed = cycles.as_array().is_some_and(|c| {
            c.iter().all(|cycle| {
                cycle.get("sequence").and_then(Value::as_i64).is_some()
                    && cycle
                        .pointer("/pricing_scheme/fixed_price/value")
                        .and_then(Value::as_str)
                        .is_some_and(is_decimal)
            })
        });
        if !well_formed {
            return unprocessable("INVALID_PARAMETER_VALUE");
        }
    }
    let plan = plan.to_owned();
    let first_price = body
        .pointer("/plan/billing_cycles/0/pricing_scheme/fixed_price/value")
        .cloned();
    idempotent(&fake, &headers, |world, n| {
        let id = format!("I-FAKE{n:06}");
        world.subscriptions.insert(id.clone(), "APPROVAL_PENDING");
        json!({
            "id": id,
            "plan_id": plan,
            "status": "APPROVAL_PENDING",
            "custom_id": body.get("custom_id"),
            "plan_overridden": first_price.is_some(),
            "first_cycle_price": first_price,
            "links": [
                {"href": format!("https://www.sandbox.paypal.com/webapps/billing/subscriptions?ba_token=BA-{n:06}"), "rel": "approve", "method": "GET"},
                {"href": format!("https://api-m.sandbox.paypal.com/v1/billing/subscriptions/{id}"), "rel": "edit", "method": "PATCH"},
                {"href": format!("https://api-m.sandbox.paypal.com/v1/billing/subscriptions/{id}"), "rel": "self", "method": "GET"},
            ],
        })
    })
}

/// `POST /v1/billing/subscriptions/{id}/cancel`: 204 without a body. The reason is required
/// (1 to 128 characters); an unknown id is 404; a subscription that is not active or
/// suspended (never approved, or already cancelled) is 422 `SUBSCRIPTION_STATUS_INVALID`.
async fn cancel(
    State(fake): State<FakePayPal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Err(refused) = authorized(&fake, &headers) {
        return refused;
    }
    let reason = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|b| b.get("reason").and_then(Value::as_str).map(str::to_owned));
    let Some(reason) = reason.filter(|r| !r.is_empty()) else {
        return invalid_request("MISSING_REQUIRED_PARAMETER");
    };
    if reason.chars().count() > 128 {
        return invalid_request("INVALID_STRING_MAX_LENGTH");
    }
    let mut world = fake.world();
    if world.fail_cancellations > 0 {
        world.fail_cancellations -= 1;
        return unavailable();
    }
    let Some(status) = world.subscriptions.get_mut(&id) else {
        return not_found();
    };
    if !matches!(*status, "ACTIVE" | "SUSPENDED") {
        return unprocessable("SUBSCRIPTION_STATUS_INVALID");
    }
    *status = "CANCELLED";
    world.cancellations.push((id, reason));
    StatusCode::NO_CONTENT.into_response()
}

/// `POST /v2/payments/captures/{id}/refund`: an empty object refunds the payment in full
/// (201 with the refund, `COMPLETED` or as set by [`FakePayPal::refunds_end_as`]). The same
/// `PayPal-Request-Id` again answers the first refund (200);
/// an unknown payment is 404; one refunded in full before is 422 `CAPTURE_FULLY_REFUNDED`.
async fn refund(
    State(fake): State<FakePayPal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Err(refused) = authorized(&fake, &headers) {
        return refused;
    }
    if !serde_json::from_str::<Value>(&body).is_ok_and(|b| b.is_object()) {
        return invalid_request("MALFORMED_REQUEST_JSON");
    }
    let key = headers
        .get("paypal-request-id")
        .and_then(|v| v.to_str().ok())
        .map(|k| format!("refund:{k}"));
    let mut world = fake.world();
    if world.fail_refunds > 0 {
        world.fail_refunds -= 1;
        return unavailable();
    }
    if let Some(previous) = key.as_ref().and_then(|k| world.created.get(k)) {
        return (StatusCode::OK, Json(previous.clone())).into_response();
    }
    world.next += 1;
    let refund_id = format!("1REFUND{:08}", world.next);
    let status = world.refund_status.unwrap_or("COMPLETED");
    let Some(sale) = world.sales.get_mut(&id) else {
        return not_found();
    };
    if sale.refunded {
        return unprocessable("CAPTURE_FULLY_REFUNDED");
    }
    // A pending refund is on its way: PayPal refuses a second full refund already.
    sale.refunded = !matches!(status, "FAILED" | "CANCELLED");
    let created = json!({
        "id": refund_id,
        "status": status,
        "amount": { "value": sale.total, "currency_code": sale.currency },
        "links": [
            {"href": format!("https://api-m.sandbox.paypal.com/v2/payments/refunds/{refund_id}"), "rel": "self", "method": "GET"},
            {"href": format!("https://api-m.sandbox.paypal.com/v2/payments/captures/{id}"), "rel": "up", "method": "GET"},
        ],
    });
    world.refunds.push((id, refund_id));
    if let Some(key) = key {
        world.created.insert(key, created.clone());
    }
    (StatusCode::CREATED, Json(created)).into_response()
}

async fn order(
    State(fake): State<FakePayPal>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Err(refused) = authorized(&fake, &headers) {
        return refused;
    }
    let value = body
        .pointer("/purchase_units/0/amount/value")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let well_formed = value.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty()
            && a.chars().all(|c| c.is_ascii_digit())
            && b.len() == 2
            && b.chars().all(|c| c.is_ascii_digit())
    });
    if body.get("intent").and_then(Value::as_str) != Some("CAPTURE") || !well_formed {
        return unprocessable("DECIMAL_PRECISION");
    }
    idempotent(&fake, &headers, |_, n| {
        let id = format!("5O19FAKE{n:08}");
        json!({
            "id": id,
            "status": "PAYER_ACTION_REQUIRED",
            "links": [
                {"href": format!("https://api-m.sandbox.paypal.com/v2/checkout/orders/{id}"), "rel": "self", "method": "GET"},
                {"href": format!("https://www.sandbox.paypal.com/checkoutnow?token={id}"), "rel": "payer-action", "method": "GET"},
            ],
        })
    })
}

async fn verify(State(fake): State<FakePayPal>, headers: HeaderMap, body: String) -> Response {
    if let Err(refused) = authorized(&fake, &headers) {
        return refused;
    }
    {
        let mut world = fake.world();
        world.verifications += 1;
        if world.fail_verifications > 0 {
            world.fail_verifications -= 1;
            return paypal_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_SERVICE_ERROR",
                "An internal service error has occurred.",
                None,
            );
        }
    }
    #[derive(serde::Deserialize)]
    struct Verify<'a> {
        auth_algo: String,
        cert_url: String,
        transmission_id: String,
        transmission_sig: String,
        transmission_time: String,
        webhook_id: String,
        #[serde(borrow)]
        webhook_event: &'a serde_json::value::RawValue,
    }
    let Ok(request) = serde_json::from_str::<Verify<'_>>(&body) else {
        return invalid_request("MISSING_REQUIRED_PARAMETER");
    };
    let expected = signature(
        &request.transmission_id,
        &request.transmission_time,
        &request.webhook_id,
        request.webhook_event.get(),
    );
    let valid = request.webhook_id == WEBHOOK_ID
        && request.auth_algo == "SHA256withRSA"
        && request.cert_url.starts_with("https://api.paypal.com/")
        && request.transmission_sig == expected;
    Json(json!({ "verification_status": if valid { "SUCCESS" } else { "FAILURE" } }))
        .into_response()
}
