//! Billing: plans, subscriptions and trials, payments through PayPal (`paypal`, `payments`)
//! and invoices.

pub mod dunning;
#[cfg(feature = "fake")]
pub mod fake_paypal;
pub mod invoices;
pub mod payments;
pub mod paypal;
pub mod plans;
pub mod promo;
pub mod renewals;
pub mod trials;
