//! PayPal's REST API, the payment provider this business uses: OAuth2 client credentials (one
//! token shared by every caller, renewed before it expires), subscriptions and one-time orders
//! (the approval link a customer follows), and webhook verification through PayPal's own
//! `verify-webhook-signature` call with the configured webhook id.
//!
//! Creates carry a `PayPal-Request-Id` (PayPal's idempotency key), so a retried checkout
//! returns the first subscription instead of making a second one.

use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::error::{Error, Result};
use crate::secret::Secret;

pub const LIVE_URL: &str = "https://api-m.paypal.com";
pub const SANDBOX_URL: &str = "https://api-m.sandbox.paypal.com";

#[derive(Debug, Clone)]
pub struct PayPalSettings {
    pub base_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// The id of the webhook registered for this service: verification needs it.
    pub webhook_id: String,
    /// Where PayPal sends the customer after approving or cancelling.
    pub return_url: String,
    pub cancel_url: String,
    pub timeout: Duration,
}

pub use super::provider::Checkout;
use super::provider::{BoxFuture, Cancellation, PaymentProvider, Refund, SubscriptionRequest};

/// The headers PayPal signs a webhook delivery with.
#[derive(Debug, Clone)]
pub struct WebhookSignature {
    pub auth_algo: String,
    pub cert_url: String,
    pub transmission_id: String,
    pub transmission_sig: String,
    pub transmission_time: String,
}

impl WebhookSignature {
    /// `None` when a signature header is missing: such a request is not from PayPal.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        Some(Self {
            auth_algo: get("paypal-auth-algo")?,
            cert_url: get("paypal-cert-url")?,
            transmission_id: get("paypal-transmission-id")?,
            transmission_sig: get("paypal-transmission-sig")?,
            transmission_time: get("paypal-transmission-time")?,
        })
    }
}

#[derive(Debug)]
struct Token {
    access: Secret,
    renew_at: Instant,
}

#[derive(Debug)]
pub struct PayPal {
    http: reqwest::Client,
    settings: PayPalSettings,
    token: Mutex<Option<Token>>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct Created {
    id: String,
    #[serde(default)]
    links: Vec<Link>,
}

#[derive(Deserialize)]
struct Link {
    href: String,
    rel: String,
}

fn upstream(message: impl Into<String>) -> Error {
    Error::Upstream {
        service: "paypal",
        message: message.into(),
    }
}

impl PayPal {
    pub fn new(settings: PayPalSettings) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(settings.timeout)
            .build()
            .map_err(|e| Error::Config(format!("PayPal HTTP client: {e}")))?;
        Ok(Self {
            http,
            settings,
            token: Mutex::new(None),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.settings.base_url.trim_end_matches('/'))
    }

    async fn bearer(&self) -> Result<Secret> {
        let mut current = self.token.lock().await;
        if let Some(token) = current.as_ref().filter(|t| Instant::now() < t.renew_at) {
            return Ok(token.access.clone());
        }
        let response = self
            .http
            .post(self.url("/v1/oauth2/token"))
            .basic_auth(
                &self.settings.client_id,
                Some(self.settings.client_secret.expose()),
            )
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .map_err(|e| upstream(format!("token request: {e}")))?;
        let answer: TokenAnswer = read(response).await?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(300));
        let margin = (lifetime / 10).max(Duration::from_secs(60)).min(lifetime);
        let access = Secret::new(answer.access_token);
        *current = Some(Token {
            access: access.clone(),
            renew_at: Instant::now() + (lifetime - margin),
        });
        Ok(access)
    }

    /// A JSON call with the shared token, its answer read as JSON (or PayPal's error).
    async fn call<B: serde::Serialize + ?Sized>(
        &self,
        path: &str,
        body: &B,
        request_id: Option<&str>,
    ) -> Result<Value> {
        read(self.send(path, body, request_id).await?).await
    }

    /// Posts JSON with the shared token; a refused token is replaced once.
    async fn send<B: serde::Serialize + ?Sized>(
        &self,
        path: &str,
        body: &B,
        request_id: Option<&str>,
    ) -> Result<reqwest::Response> {
        let mut renewed = false;
        loop {
            let token = self.bearer().await?;
            let mut request = self
                .http
                .post(self.url(path))
                .bearer_auth(token.expose())
                .json(body);
            if let Some(id) = request_id {
                request = request.header("PayPal-Request-Id", id);
            }
            let response = request
                .send()
                .await
                .map_err(|e| upstream(format!("{path}: {e}")))?;
            if response.status() == reqwest::StatusCode::UNAUTHORIZED && !renewed {
                let mut current = self.token.lock().await;
                if current.as_ref().is_some_and(|t| t.access == token) {
                    *current = None;
                }
                renewed = true;
                continue;
            }
            return Ok(response);
        }
    }

    /// Stops a subscription's billing at PayPal (204). PayPal refuses to cancel one that is
    /// not active or suspended (422 `SUBSCRIPTION_STATUS_INVALID`): it was cancelled already,
    /// at PayPal or by an earlier call, so it is not billing either.
    pub async fn cancel_subscription(
        &self,
        subscription: &str,
        reason: &str,
    ) -> Result<Cancellation> {
        // PayPal takes at most 128 characters of reason.
        let reason: String = reason.chars().take(128).collect();
        let path = format!("/v1/billing/subscriptions/{subscription}/cancel");
        let response = self.send(&path, &json!({ "reason": reason }), None).await?;
        if response.status() == reqwest::StatusCode::UNPROCESSABLE_ENTITY {
            let text = response.text().await.unwrap_or_default();
            if text.contains("SUBSCRIPTION_STATUS_INVALID") {
                return Ok(Cancellation::AlreadyInactive);
            }
            return Err(error_of(reqwest::StatusCode::UNPROCESSABLE_ENTITY, &text));
        }
        read::<Value>(response).await?;
        Ok(Cancellation::Cancelled)
    }

    /// Refunds a subscription's payment (a sale) in full. PayPal's v2 payments API refunds it
    /// by its transaction id, the sale id of `PAYMENT.SALE.COMPLETED` (the v1 sale endpoint is
    /// deprecated). An empty body is a full refund; `PayPal-Request-Id` makes a retry the same
    /// refund. A payment refunded in full before is 422 `CAPTURE_FULLY_REFUNDED`; a refund that
    /// `FAILED` or was `CANCELLED` is an error (retried, then handed to the operator).
    pub async fn refund_sale(&self, sale: &str, request_id: &str) -> Result<Refund> {
        let path = format!("/v2/payments/captures/{sale}/refund");
        let response = self.send(&path, &json!({}), Some(request_id)).await?;
        if response.status() == reqwest::StatusCode::UNPROCESSABLE_ENTITY {
            let text = response.text().await.unwrap_or_default();
            if text.contains("CAPTURE_FULLY_REFUNDED") {
                return Ok(Refund::AlreadyRefunded);
            }
            return Err(error_of(reqwest::StatusCode::UNPROCESSABLE_ENTITY, &text));
        }
        let refund: Value = read(response).await?;
        let field = |name: &str| refund.get(name).and_then(Value::as_str);
        let id = field("id").ok_or_else(|| upstream("a refund without an id"))?;
        match field("status") {
            Some("COMPLETED") => Ok(Refund::Refunded(id.to_owned())),
            Some("PENDING") => Ok(Refund::Pending(id.to_owned())),
            other => Err(upstream(format!(
                "refund {id} of {sale} is {}",
                other.unwrap_or("without a status")
            ))),
        }
    }

    /// A subscription to PayPal's billing plan `plan_id`; `custom_id` comes back in every event
    /// about it (it names our user). `request_id` makes a retry return the same subscription.
    /// `first_cycle` overrides the price of the plan's first billing cycle (a promo code's first
    /// month): the PayPal plan must start with a one-cycle trial cycle at the list price for
    /// this to discount only the first month.
    pub async fn create_subscription(
        &self,
        plan_id: &str,
        custom_id: &str,
        request_id: &str,
        first_cycle: Option<(i64, &str)>,
    ) -> Result<Checkout> {
        let mut body = json!({
            "plan_id": plan_id,
            "custom_id": custom_id,
            "application_context": {
                "brand_name": "TrueVault VPN",
                "user_action": "SUBSCRIBE_NOW",
                "shipping_preference": "NO_SHIPPING",
                "return_url": self.settings.return_url,
                "cancel_url": self.settings.cancel_url,
            },
        });
        if let Some((cents, currency)) = first_cycle {
            body["plan"] = json!({ "billing_cycles": [{
                "sequence": 1,
                "pricing_scheme": { "fixed_price": { "value": decimal(cents), "currency_code": currency } },
            }]});
        }
        let created = self
            .call("/v1/billing/subscriptions", &body, Some(request_id))
            .await?;
        checkout(created, "approve")
    }

    /// A one-time payment (a dedicated server's first month, for instance).
    pub async fn create_order(
        &self,
        amount_cents: i64,
        currency: &str,
        custom_id: &str,
        request_id: &str,
    ) -> Result<Checkout> {
        let body = json!({
            "intent": "CAPTURE",
            "purchase_units": [{
                "custom_id": custom_id,
                "amount": { "currency_code": currency, "value": decimal(amount_cents) },
            }],
            "payment_source": { "paypal": { "experience_context": {
                "brand_name": "TrueVault VPN",
                "shipping_preference": "NO_SHIPPING",
                "user_action": "PAY_NOW",
                "return_url": self.settings.return_url,
                "cancel_url": self.settings.cancel_url,
            }}},
        });
        let created = self
            .call("/v2/checkout/orders", &body, Some(request_id))
            .await?;
        checkout(created, "payer-action")
    }

    /// Asks PayPal whether `raw_event` (the delivery's body, byte for byte: PayPal checks its
    /// signature over the exact text) carries a valid signature for our webhook. Anything but
    /// `SUCCESS` is a refusal.
    pub async fn verify_webhook(
        &self,
        signature: &WebhookSignature,
        raw_event: &str,
    ) -> Result<bool> {
        let event = serde_json::value::RawValue::from_string(raw_event.to_owned())
            .map_err(|_| Error::invalid("malformed_json", "the webhook body is not JSON"))?;
        #[derive(serde::Serialize)]
        struct Verify<'a> {
            auth_algo: &'a str,
            cert_url: &'a str,
            transmission_id: &'a str,
            transmission_sig: &'a str,
            transmission_time: &'a str,
            webhook_id: &'a str,
            webhook_event: &'a serde_json::value::RawValue,
        }
        // Serialized as is: the event's raw text goes out unchanged.
        let body = Verify {
            auth_algo: &signature.auth_algo,
            cert_url: &signature.cert_url,
            transmission_id: &signature.transmission_id,
            transmission_sig: &signature.transmission_sig,
            transmission_time: &signature.transmission_time,
            webhook_id: &self.settings.webhook_id,
            webhook_event: &event,
        };
        let answer = self
            .call("/v1/notifications/verify-webhook-signature", &body, None)
            .await?;
        Ok(answer.get("verification_status").and_then(Value::as_str) == Some("SUCCESS"))
    }
}

impl PaymentProvider for PayPal {
    fn name(&self) -> &'static str {
        "paypal"
    }

    fn create_subscription<'a>(
        &'a self,
        request: SubscriptionRequest<'a>,
    ) -> BoxFuture<'a, Result<Checkout>> {
        Box::pin(PayPal::create_subscription(
            self,
            request.plan_id,
            request.custom_id,
            request.request_id,
            request.first_cycle,
        ))
    }

    fn cancel_subscription<'a>(
        &'a self,
        subscription: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<Cancellation>> {
        Box::pin(PayPal::cancel_subscription(self, subscription, reason))
    }

    fn refund_payment<'a>(
        &'a self,
        payment: &'a str,
        request_id: &'a str,
    ) -> BoxFuture<'a, Result<Refund>> {
        Box::pin(PayPal::refund_sale(self, payment, request_id))
    }

    fn verify_webhook<'a>(
        &'a self,
        headers: &'a HeaderMap,
        body: &'a str,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            match WebhookSignature::from_headers(headers) {
                Some(signature) => PayPal::verify_webhook(self, &signature, body).await,
                None => Ok(false),
            }
        })
    }
}

/// Cents as PayPal's decimal string (`4999` → `"49.99"`).
pub fn decimal(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let cents = cents.unsigned_abs();
    format!("{sign}{}.{:02}", cents / 100, cents % 100)
}

fn checkout(created: Value, approve_rel: &str) -> Result<Checkout> {
    let created: Created = serde_json::from_value(created)
        .map_err(|e| upstream(format!("unreadable create answer: {e}")))?;
    // Orders name the link `payer-action` (or `approve` in older answers).
    let approval_url = created
        .links
        .iter()
        .find(|l| l.rel == approve_rel || l.rel == "approve")
        .map(|l| l.href.clone())
        .ok_or_else(|| upstream("the answer has no approval link"))?;
    Ok(Checkout {
        provider_id: created.id,
        approval_url,
    })
}

/// A 2xx body as `T` (an empty one, such as a 204's, as JSON `null`); otherwise PayPal's error
/// as an upstream error.
async fn read<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> Result<T> {
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| upstream(format!("reading the answer: {e}")))?;
    if status.is_success() {
        let text = if text.trim().is_empty() {
            "null"
        } else {
            &text
        };
        return serde_json::from_str(text).map_err(|e| upstream(format!("unreadable answer: {e}")));
    }
    Err(error_of(status, &text))
}

/// PayPal's error body (`name`, `message`, `details[].issue`, or OAuth's `error_description`)
/// as an upstream error.
fn error_of(status: reqwest::StatusCode, text: &str) -> Error {
    let json: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let field = |k: &str| json.get(k).and_then(Value::as_str);
    let issues: Vec<&str> = json
        .get("details")
        .and_then(Value::as_array)
        .map(|d| {
            d.iter()
                .filter_map(|i| i.get("issue").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    let message = match (field("name"), field("message"), field("error_description")) {
        (Some(name), Some(message), _) if issues.is_empty() => format!("{name}: {message}"),
        (Some(name), Some(message), _) => format!("{name}: {message} ({})", issues.join(", ")),
        (_, _, Some(description)) => description.to_owned(),
        _ => format!("HTTP {status}"),
    };
    upstream(format!("HTTP {}: {message}", status.as_u16()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cents_become_paypal_decimals() {
        assert_eq!(decimal(4999), "49.99");
        assert_eq!(decimal(5), "0.05");
        assert_eq!(decimal(100), "1.00");
        assert_eq!(decimal(-250), "-2.50");
    }
}
