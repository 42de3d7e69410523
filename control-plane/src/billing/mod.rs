//! Billing: plans, subscriptions and trials (payments and invoices come with the payment
//! provider).

pub mod plans;
pub mod promo;
pub mod trials;
