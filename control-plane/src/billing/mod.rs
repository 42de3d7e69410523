//! Billing: plans, subscriptions and trials (payments and invoices come with the payment
//! provider).

pub mod trials;
