//! Billing: plans, subscriptions and trials, payments through a provider (`provider`: the
//! trait; `paypal`: PayPal's client; `payments`: checkout and the webhook; `subscription`: the
//! customer's view of theirs and its cancellation; `refunds`: recording the refunds the
//! service makes) and invoices.

pub mod dunning;
pub mod duplicates;
#[cfg(feature = "fake")]
pub mod fake_paypal;
pub mod invoices;
pub mod payments;
pub mod paypal;
pub mod plans;
pub mod promo;
pub mod provider;
pub mod refunds;
pub mod renewals;
pub mod subscription;
pub mod trials;

/// An amount as customers read it: `14.99 USD`.
pub fn money(cents: i64, currency: &str) -> String {
    format!("{} {currency}", paypal::decimal(cents))
}
