//! Billing: plans, subscriptions and trials, payments through a provider (`provider`: the
//! trait; `paypal`: PayPal's client; `payments`: checkout and the webhook; `subscription`: the
//! customer's view of theirs and its cancellation) and invoices.

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
pub mod renewals;
pub mod subscription;
pub mod trials;
