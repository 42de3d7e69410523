//! Billing: plans, subscriptions and trials, payments through a provider (`provider`: the
//! trait; `paypal`: PayPal's client; `payments`: checkout and the webhook) and invoices.

pub mod dunning;
#[cfg(feature = "fake")]
pub mod fake_paypal;
pub mod invoices;
pub mod payments;
pub mod paypal;
pub mod plans;
pub mod promo;
pub mod provider;
pub mod renewals;
pub mod trials;
