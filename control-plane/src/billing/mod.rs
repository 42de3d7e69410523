//! Billing: plans, subscriptions and trials, and the payment provider (`paypal`; invoices and
//! webhook processing come next).

#[cfg(feature = "fake")]
pub mod fake_paypal;
pub mod payments;
pub mod paypal;
pub mod plans;
pub mod promo;
pub mod trials;
