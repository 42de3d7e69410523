//! Payments through PayPal: a checkout is a PayPal subscription the customer approves; PayPal
//! then reports what happened through its webhook. A delivery is verified by PayPal itself
//! (a failed verification is 400 and changes nothing), stored once per PayPal event id (a
//! replay is acknowledged and ignored), and processed by a task, so processing retries on its
//! own and its effects commit together with the event being marked processed.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::AnyConnection;
use utoipa::ToSchema;

use crate::automation::tasks::{self, DEFAULT_MAX_ATTEMPTS, NewTask};
use crate::clock::{Millis, SharedClock};
use crate::dedicated::orders::{self, DEDICATED_PLAN};
use crate::dedicated::release;
use crate::devices::entitlement;
use crate::error::{Error, FieldError, Result};
use crate::servers::country_of;
use crate::storage::{Db, Engine};

use super::invoices::{self, LineItem, NewInvoice};
use super::provider::{PaymentProvider, SubscriptionRequest};
use super::{dunning, duplicates, plans, promo, renewals};

/// The workflow whose tasks process payment events.
pub const PAYMENTS: &str = "payments";
pub const PROCESS_EVENT: &str = "process_event";

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutInput {
    /// `personal`, `family`, `business` or `dedicated`.
    pub plan: Option<String>,
    pub promo_code: Option<String>,
    /// For `dedicated`: where the server should be, such as `us-east`.
    pub region: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckoutView {
    pub plan: String,
    /// Send the customer here to approve the subscription at PayPal.
    pub approval_url: String,
    pub subscription_id: String,
}

#[derive(Debug, Clone)]
pub struct Payments {
    pub(super) db: Db,
    pub(super) clock: SharedClock,
    provider: Option<Arc<dyn PaymentProvider>>,
    /// Our plan code → the provider's billing plan id.
    plans: BTreeMap<String, String>,
}

impl Payments {
    pub fn new(
        db: Db,
        clock: SharedClock,
        provider: Option<Arc<dyn PaymentProvider>>,
        plans: BTreeMap<String, String>,
    ) -> Self {
        Self {
            db,
            clock,
            provider,
            plans,
        }
    }

    /// The payment provider, if one is configured.
    pub fn provider_if_configured(&self) -> Option<&dyn PaymentProvider> {
        self.provider.as_deref()
    }

    pub(super) fn provider(&self) -> Result<&dyn PaymentProvider> {
        self.provider.as_deref().ok_or(Error::Unavailable(
            "payments are not configured on this server",
        ))
    }

    /// Starts a subscription at PayPal and returns the link the customer approves it at.
    pub async fn checkout(&self, user_id: i64, input: CheckoutInput) -> Result<CheckoutView> {
        let provider = self.provider()?;
        let plan = input.plan.as_deref().unwrap_or_default().trim().to_owned();
        let Some(paypal_plan) = self.plans.get(&plan) else {
            let choices: Vec<&str> = self.plans.keys().map(String::as_str).collect();
            return Err(Error::Validation(vec![FieldError::new(
                "plan",
                "invalid",
                format!("one of: {}", choices.join(", ")),
            )]));
        };
        let region = input
            .region
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty());
        if plan == DEDICATED_PLAN && region.is_none_or(|r| country_of(r).is_none()) {
            return Err(Error::Validation(vec![FieldError::new(
                "region",
                "invalid",
                "a dedicated server needs a region such as us-east",
            )]));
        }
        // A second PayPal subscription would bill the customer twice: changing plans goes
        // through cancelling the current one first (PayPal's own revise flow is not built).
        let mut conn = self.db.pool().acquire().await?;
        let current = super::subscription::billing(&mut conn, user_id).await?;
        drop(conn);
        if let Some(current) = current.filter(|b| !b.cancelling) {
            return Err(Error::conflict(
                "already_subscribed",
                format!(
                    "you already have a PayPal subscription ({}); cancel it to change plans",
                    current.status
                ),
            ));
        }
        let (currency,): (String,) = sqlx::query_as("SELECT currency FROM plans WHERE code = $1")
            .bind(&plan)
            .fetch_one(self.db.pool())
            .await?;
        let now = self.clock.now_ms();
        let quote = match input.promo_code.as_deref().filter(|c| !c.trim().is_empty()) {
            Some(code) => {
                let check = promo::PromoCheck {
                    code: Some(code.to_owned()),
                    plan: Some(plan.clone()),
                };
                Some(promo::validate(&self.db, check, now).await?)
            }
            None => None,
        };
        let promo_code = quote.as_ref().map(|q| q.code.clone());
        // The quoted first month is what PayPal charges first.
        let first_cycle = quote
            .as_ref()
            .and_then(|q| q.first_month_price_cents)
            .map(|cents| (cents, currency.as_str()));
        let request_id = format!("checkout-{user_id}-{}", uuid::Uuid::new_v4().simple());
        let created = provider
            .create_subscription(SubscriptionRequest {
                plan_id: paypal_plan,
                custom_id: &format!("user:{user_id}"),
                request_id: &request_id,
                first_cycle,
            })
            .await?;
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "INSERT INTO checkouts (user_id, plan_code, promo_code, region, provider, provider_ref, created_at)
             VALUES ($1, $2, $3, $4, 'paypal', $5, $6)",
        )
        .bind(user_id)
        .bind(&plan)
        .bind(promo_code.as_deref())
        .bind(region.filter(|_| plan == DEDICATED_PLAN))
        .bind(&created.provider_id)
        .bind(now)
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(CheckoutView {
            plan,
            approval_url: created.approval_url,
            subscription_id: created.provider_id,
        })
    }

    /// A webhook delivery: verified, stored once, queued. Returns whether it was new.
    pub async fn receive_webhook(&self, headers: &HeaderMap, body: &str) -> Result<bool> {
        let provider = self.provider()?;
        let unverified = || {
            Error::invalid(
                "webhook_unverified",
                "the delivery's signature could not be verified",
            )
        };
        let event: Value =
            serde_json::from_str(body).map_err(|e| Error::MalformedJson(e.to_string()))?;
        let (Some(event_id), Some(event_type)) = (
            event.get("id").and_then(Value::as_str),
            event.get("event_type").and_then(Value::as_str),
        ) else {
            return Err(Error::invalid(
                "invalid_event",
                "a PayPal event has an id and an event_type",
            ));
        };
        // A delivery of an event already stored changes nothing: it is acknowledged without
        // asking the provider (so replaying a captured delivery costs it nothing).
        let known: Option<(i64,)> = sqlx::query_as(
            "SELECT id FROM payment_events WHERE provider = 'paypal' AND event_id = $1",
        )
        .bind(event_id)
        .fetch_optional(self.db.pool())
        .await?;
        if known.is_some() {
            tracing::info!(event_id, event_type, "PayPal webhook replayed; ignored");
            return Ok(false);
        }
        if !provider.verify_webhook(headers, body).await? {
            tracing::warn!(event_id, event_type, "PayPal webhook failed verification");
            return Err(unverified());
        }
        let now = self.clock.now_ms();
        let mut tx = self.db.begin_write().await?;
        let stored: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO payment_events (provider, event_id, event_type, payload, received_at)
             VALUES ('paypal', $1, $2, $3, $4)
             ON CONFLICT (provider, event_id) DO NOTHING RETURNING id",
        )
        .bind(event_id)
        .bind(event_type)
        .bind(body)
        .bind(now)
        .fetch_optional(tx.conn())
        .await?;
        let Some((row,)) = stored else {
            tracing::info!(event_id, event_type, "PayPal webhook replayed; ignored");
            return Ok(false);
        };
        tasks::schedule(
            tx.conn(),
            NewTask {
                key: format!("paypal_event:{event_id}"),
                workflow: PAYMENTS,
                step: PROCESS_EVENT,
                payload: json!({ "event": row }),
                user_id: None,
                run_at: now,
                max_attempts: DEFAULT_MAX_ATTEMPTS,
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// The `process_event` step: applies a stored event once (it is marked processed in the same
/// transaction as its effects).
pub async fn process_event(conn: &mut AnyConnection, row: i64, now: Millis) -> Result<()> {
    let event: Option<(String, String, Option<i64>)> = sqlx::query_as(
        "SELECT event_type, payload, processed_at FROM payment_events WHERE id = $1",
    )
    .bind(row)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((event_type, payload, processed)) = event else {
        return Err(Error::internal(format!("payment event {row} is gone")));
    };
    if processed.is_some() {
        return Ok(());
    }
    let payload: Value = serde_json::from_str(&payload).map_err(Error::internal)?;
    let resource = payload.get("resource").cloned().unwrap_or(Value::Null);
    match event_type.as_str() {
        "BILLING.SUBSCRIPTION.ACTIVATED" => {
            subscription_activated(conn, &resource, now).await?;
        }
        "PAYMENT.SALE.COMPLETED" => sale_completed(conn, &resource, now).await?,
        "BILLING.SUBSCRIPTION.PAYMENT.FAILED" => payment_failed(conn, &resource, now).await?,
        "BILLING.SUBSCRIPTION.CANCELLED" => {
            let subscription = subscription_id(&resource)?;
            let (user_id, ..) = checkout_for(conn, subscription).await?;
            renewals::cancel_at_period_end(conn, user_id, subscription, now).await?;
        }
        "PAYMENT.SALE.REFUNDED" => sale_refunded(conn, &resource, now).await?,
        other => tracing::info!(
            event_type = other,
            "PayPal event recorded; nothing to do for it yet"
        ),
    }
    sqlx::query("UPDATE payment_events SET processed_at = $1 WHERE id = $2")
        .bind(now)
        .bind(row)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The customer approved a checkout's subscription: their plan changes (a trial converts),
/// the subscription is linked to PayPal's, and the promo code is used.
async fn subscription_activated(
    conn: &mut AnyConnection,
    resource: &Value,
    now: Millis,
) -> Result<()> {
    let reference = resource
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::internal("subscription event without a subscription id"))?;
    let checkout: Option<(i64, i64, String, Option<String>, String)> = sqlx::query_as(
        "SELECT id, user_id, plan_code, promo_code, status FROM checkouts
         WHERE provider = 'paypal' AND provider_ref = $1",
    )
    .bind(reference)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((checkout_id, user_id, plan, promo_code, status)) = checkout else {
        // Retried, then dead-lettered for an operator: a subscription we did not start.
        return Err(Error::internal(format!(
            "no checkout for PayPal subscription {reference}"
        )));
    };
    if status == "completed" {
        return Ok(());
    }
    // The user's row first: a second activation processed at the same time waits here until
    // this one commits, and then finds this subscription live (PostgreSQL; SQLite has one
    // writer).
    entitlement::lock_users(&mut *conn, &[user_id]).await?;
    // Events about this subscription that came first and wait for it run right after this,
    // in the order PayPal sent them.
    tasks::wake(&mut *conn, &activation_of(reference), now).await?;
    if let Some(current) = duplicates::live_other(&mut *conn, user_id, reference).await? {
        return duplicates::mark(conn, checkout_id, user_id, reference, &current, now).await;
    }
    if plan != DEDICATED_PLAN && current_plan(&mut *conn, user_id).await? == DEDICATED_PLAN {
        // A dedicated buyer who cancelled and now starts another plan: the plan changes now,
        // and the old subscription's end (which would give the server back) is no longer
        // tracked on this row, so the server goes back now.
        release::request(&mut *conn, user_id, now).await?;
    }
    plans::change_plan(&mut *conn, user_id, &plan, now).await?;
    // The row may carry an earlier subscription that was cancelled at its period's end: the
    // new one bills, so it is not cancelling (the old one's end task finds its id gone).
    sqlx::query(
        "UPDATE subscriptions SET provider = 'paypal', provider_subscription_id = $1,
                                  cancel_at_period_end = 0, updated_at = $2
         WHERE user_id = $3 AND status IN ('trial', 'active', 'past_due', 'suspended')",
    )
    .bind(reference)
    .bind(now)
    .bind(user_id)
    .execute(&mut *conn)
    .await?;
    if let Some(code) = promo_code {
        // Looked at first: a failed statement would abort the whole transaction on PostgreSQL.
        // A code used up or expired meanwhile does not undo a paid subscription; it is just
        // not applied (the guarded update inside `redeem` fails without an SQL error).
        let used: Option<(i64,)> =
            sqlx::query_as("SELECT id FROM promo_redemptions WHERE code = $1 AND user_id = $2")
                .bind(&code)
                .bind(user_id)
                .fetch_optional(&mut *conn)
                .await?;
        if used.is_none()
            && let Err(e) = promo::redeem(&mut *conn, &code, user_id, now).await
        {
            tracing::warn!(user_id, code, error = %e, "promo code not applied at activation");
        }
    }
    sqlx::query("UPDATE checkouts SET status = 'completed', completed_at = $1 WHERE id = $2")
        .bind(now)
        .bind(checkout_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// What events ahead of a subscription's activation wait for (`Error::NotYet`).
fn activation_of(subscription: &str) -> String {
    format!("the activation of PayPal subscription {subscription}")
}

/// The plan of the user's live subscription ("" without one).
async fn current_plan(conn: &mut AnyConnection, user_id: i64) -> Result<String> {
    let plan: Option<(String,)> = sqlx::query_as(
        "SELECT plan_type FROM subscriptions
         WHERE user_id = $1 AND status IN ('trial', 'active', 'past_due', 'suspended')
         ORDER BY id DESC LIMIT 1",
    )
    .bind(user_id)
    .fetch_optional(conn)
    .await?;
    Ok(plan.map(|(p,)| p).unwrap_or_default())
}

/// PayPal could not collect a subscription payment: dunning starts (once per cycle).
async fn payment_failed(conn: &mut AnyConnection, resource: &Value, now: Millis) -> Result<()> {
    let subscription = subscription_id(resource)?;
    let (user_id, ..) = checkout_for(conn, subscription).await?;
    dunning::start(conn, user_id, subscription, now).await?;
    Ok(())
}

fn subscription_id(resource: &Value) -> Result<&str> {
    resource
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::internal("subscription event without a subscription id"))
}

/// The user, plan and region of a PayPal subscription started by our checkout, and the live
/// subscription it duplicates, if it does (see `duplicates`). No checkout is an error: the
/// task retries and then waits for an operator.
///
/// The events that ask for it (a payment, a failed payment, a cancellation) need the
/// activation applied first, and PayPal does not promise to deliver events in order: a sale
/// processed before its activation would find no linked subscription to extend, one on a
/// duplicate would not be known as one (so not refunded), and a cancellation would find
/// nothing to cancel and be lost. Until the activation is applied this is [`Error::NotYet`]:
/// the task waits for it (for as long as PayPal redelivers), no attempt counted.
async fn checkout_for(
    conn: &mut AnyConnection,
    subscription: &str,
) -> Result<(i64, String, Option<String>, Option<String>)> {
    type Row = (i64, String, Option<String>, Option<String>, String);
    let row: Option<Row> = sqlx::query_as(
        "SELECT user_id, plan_code, region, duplicate_of, status FROM checkouts
         WHERE provider = 'paypal' AND provider_ref = $1",
    )
    .bind(subscription)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((user, plan, region, duplicate_of, status)) = row else {
        return Err(Error::internal(format!(
            "no checkout for PayPal subscription {subscription}"
        )));
    };
    if status != "completed" {
        return Err(Error::NotYet {
            awaits: activation_of(subscription),
        });
    }
    Ok((user, plan, region, duplicate_of))
}

/// A sale was refunded (in full or in part): the payment says so, and a full refund voids
/// the invoice as `refunded`. Access is not touched here: a refund is an operator's decision,
/// and ending access is a cancellation.
async fn sale_refunded(conn: &mut AnyConnection, resource: &Value, now: Millis) -> Result<()> {
    let text = |pointer: &str| resource.pointer(pointer).and_then(Value::as_str);
    let sale = text("/sale_id").ok_or_else(|| Error::internal("refund without a sale id"))?;
    let refunded = text("/amount/total")
        .and_then(cents)
        .ok_or_else(|| Error::internal(format!("refund of {sale} has no readable amount")))?;
    let payment: Option<(i64, i64)> = sqlx::query_as(
        "SELECT id, amount_cents FROM payments WHERE provider = 'paypal' AND provider_payment_id = $1",
    )
    .bind(sale)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((payment_id, paid)) = payment else {
        return Err(Error::internal(format!("refund of unknown sale {sale}")));
    };
    let full = refunded >= paid;
    sqlx::query("UPDATE payments SET status = $1, updated_at = $2 WHERE id = $3")
        .bind(if full {
            "refunded"
        } else {
            "partially_refunded"
        })
        .bind(now)
        .bind(payment_id)
        .execute(&mut *conn)
        .await?;
    if full {
        sqlx::query("UPDATE invoices SET status = 'refunded' WHERE payment_id = $1")
            .bind(payment_id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// A subscription payment went through: it is recorded once (`UNIQUE(provider,
/// provider_payment_id)`), invoiced with the next number, and the subscription is active for
/// another period (a past-due or dunning-suspended one too: the payment ends its dunning and
/// its devices come back).
async fn sale_completed(conn: &mut AnyConnection, resource: &Value, now: Millis) -> Result<()> {
    let text = |pointer: &str| resource.pointer(pointer).and_then(Value::as_str);
    let sale = text("/id").ok_or_else(|| Error::internal("sale event without a sale id"))?;
    let Some(subscription) = text("/billing_agreement_id") else {
        tracing::info!(sale, "a sale outside a subscription; nothing to do for it");
        return Ok(());
    };
    let paid = text("/amount/total")
        .and_then(cents)
        .ok_or_else(|| Error::internal(format!("sale {sale} has no readable amount")))?;
    let currency = text("/amount/currency").unwrap_or("USD").to_owned();
    let (user_id, plan, region, duplicate_of) = checkout_for(conn, subscription).await?;
    let recorded: Option<(i64,)> = sqlx::query_as(
        "INSERT INTO payments (uuid, user_id, provider, provider_payment_id, provider_subscription_id,
                               plan_type, amount_cents, currency, status, created_at, updated_at)
         VALUES ($1, $2, 'paypal', $3, $4, $5, $6, $7, 'completed', $8, $8)
         ON CONFLICT (provider, provider_payment_id) DO NOTHING RETURNING id",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(user_id)
    .bind(sale)
    .bind(subscription)
    .bind(&plan)
    .bind(paid)
    .bind(&currency)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((payment_id,)) = recorded else {
        return Ok(());
    };
    if duplicate_of.is_some() {
        // Money came in on a subscription that gives nothing: recorded, and given back.
        return duplicates::refund_later(conn, user_id, sale, now).await;
    }
    let (name, price, period): (String, i64, String) =
        sqlx::query_as("SELECT name, price_cents, billing_period FROM plans WHERE code = $1")
            .bind(&plan)
            .fetch_one(&mut *conn)
            .await?;
    let days = if period == "year" { 365 } else { 30 };
    let end = now + days * crate::clock::DAY;
    // What was paid below the list price is the discount (a promo code's first month).
    let listed = price.max(paid);
    invoices::issue(
        conn,
        NewInvoice {
            user_id,
            payment_id: Some(payment_id),
            currency,
            items: vec![LineItem {
                description: format!("{name} plan, {days} days"),
                amount_cents: listed,
            }],
            discount_cents: listed - paid,
            period: Some((now, end)),
        },
        now,
    )
    .await?;
    sqlx::query(
        "UPDATE subscriptions SET status = 'active', current_period_start = $1, current_period_end = $2,
                updated_at = $1
         WHERE user_id = $3 AND provider_subscription_id = $4
           AND status IN ('active', 'past_due', 'suspended')",
    )
    .bind(now)
    .bind(end)
    .bind(user_id)
    .bind(subscription)
    .execute(&mut *conn)
    .await?;
    renewals::schedule_reminders(conn, user_id, subscription, end, now).await?;
    let (payments_so_far,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM payments WHERE provider = 'paypal' AND provider_subscription_id = $1",
    )
    .bind(subscription)
    .fetch_one(&mut *conn)
    .await?;
    // A buyer who cancelled and subscribes again before the period ends keeps the server they
    // have (their subscription row goes on with the new subscription): no second order.
    if plan == DEDICATED_PLAN && payments_so_far == 1 && !orders::holds_one(conn, user_id).await? {
        // The seed's `dedicated_server_purchase`, on the subscription's first payment (renewals
        // keep the server): the plan is set (activation), the order is placed (served from the
        // pool when it can), the buyer is told, and the invoice and reminders are above.
        let region = region.ok_or_else(|| {
            Error::internal(format!("dedicated checkout {subscription} has no region"))
        })?;
        let engine = Engine::of(conn);
        let (order, new) = orders::place(conn, engine, user_id, payment_id, &region, now).await?;
        if new {
            orders::notify_placed(conn, &order, now).await?;
        }
    }
    // Devices disconnected by dunning come back.
    entitlement::reconcile(conn, user_id, "payment_received", now).await?;
    Ok(())
}

/// PayPal's decimal amount (`"9.99"`) in cents.
fn cents(amount: &str) -> Option<i64> {
    let (whole, fraction) = amount
        .trim()
        .split_once('.')
        .unwrap_or((amount.trim(), "0"));
    if fraction.len() > 2 || whole.is_empty() {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let fraction: i64 = format!("{fraction:0<2}").parse().ok()?;
    (whole >= 0).then(|| whole * 100 + fraction)
}

#[cfg(test)]
mod tests {
    #[test]
    fn paypal_amounts_in_cents() {
        assert_eq!(super::cents("9.99"), Some(999));
        assert_eq!(super::cents("10"), Some(1000));
        assert_eq!(super::cents("0.5"), Some(50));
        assert_eq!(super::cents("1.005"), None);
        assert_eq!(super::cents("-1.00"), None);
        assert_eq!(super::cents("abc"), None);
    }
}
