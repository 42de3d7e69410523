//! What checkout and the webhook need from a payment provider: a subscription the customer
//! approves, its cancellation, a payment's refund, and a verdict on whether a webhook delivery really comes from
//! the provider.
//! PayPal implements it (`paypal`); the events themselves are the provider's own and are read
//! by `payments`.

use std::future::Future;
use std::pin::Pin;

use axum::http::HeaderMap;

use crate::error::Result;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A subscription to start.
#[derive(Debug, Clone, Copy)]
pub struct SubscriptionRequest<'a> {
    /// The provider's plan id (from `paypal_plans`).
    pub plan_id: &'a str,
    /// Comes back in every event about the subscription (it names our user).
    pub custom_id: &'a str,
    /// The provider's idempotency key: a retry returns the same subscription.
    pub request_id: &'a str,
    /// A price for the first billing cycle only (a promo code's first month): cents, currency.
    pub first_cycle: Option<(i64, &'a str)>,
}

/// What a customer must approve at the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    /// The provider's subscription (or order) id.
    pub provider_id: String,
    pub approval_url: String,
}

/// How a cancellation at the provider ended: either way, the subscription bills no more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancellation {
    Cancelled,
    /// It was not billing any more (cancelled before, at the provider or by an earlier call).
    AlreadyInactive,
}

/// How a full refund of a payment at the provider ended: either way, the money is back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refund {
    /// Done; the provider's id of the refund.
    Refunded(String),
    /// Accepted, not done yet (PayPal: `PENDING`, e.g. while the merchant balance is short);
    /// the provider tells when it completes.
    Pending(String),
    /// Refunded in full before (by an earlier call, or by an operator at the provider).
    AlreadyRefunded,
}

pub trait PaymentProvider: Send + Sync + std::fmt::Debug {
    /// As recorded in `checkouts`, `payments` and `payment_events` (`paypal`).
    fn name(&self) -> &'static str;

    fn create_subscription<'a>(
        &'a self,
        request: SubscriptionRequest<'a>,
    ) -> BoxFuture<'a, Result<Checkout>>;

    /// Stops the subscription's billing; `reason` is shown in the provider's records.
    fn cancel_subscription<'a>(
        &'a self,
        subscription: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<Cancellation>>;

    /// Refunds a completed payment in full. `request_id` is the provider's idempotency key: a
    /// retry after an unsure answer is the same refund, never a second one.
    fn refund_payment<'a>(
        &'a self,
        payment: &'a str,
        request_id: &'a str,
    ) -> BoxFuture<'a, Result<Refund>>;

    /// Whether the delivery (`body`, byte for byte, with its headers) is signed by the
    /// provider for this service. A delivery without signature headers is `false`, asked
    /// of nobody.
    fn verify_webhook<'a>(
        &'a self,
        headers: &'a HeaderMap,
        body: &'a str,
    ) -> BoxFuture<'a, Result<bool>>;
}
