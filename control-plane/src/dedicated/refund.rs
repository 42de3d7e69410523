//! Giving up on a dedicated-server order that could not be delivered: the buyer gets their
//! money back and is billed no more, and whatever was set up for the order is given back (its
//! instance is cancelled at the provider by the order runner, as for any release).
//!
//! Only a `failed` order qualifies: a delivered server ends with its subscription instead. The
//! provider is asked first, outside the transaction: the subscription is cancelled and the
//! payment refunded in full, both idempotent, so an operator repeating the request after an
//! error (a 502 records nothing) causes no second refund.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::accounts;
use crate::audit::{self, Actor};
use crate::automation::outbox::{self, OutgoingMail};
use crate::billing::provider::{PaymentProvider, Refund};
use crate::clock::Millis;
use crate::devices::entitlement;
use crate::error::{Error, FieldError, Result};
use crate::storage::Db;

use super::orders::{self, OrderView};
use super::release;

/// Longest reason kept: it is shown to the buyer and in the audit log.
const MAX_REASON_CHARS: usize = 500;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundInput {
    /// Told to the buyer, one line (optional).
    pub reason: Option<String>,
}

/// The order and the payment that placed it.
struct Paid {
    user_id: i64,
    status: String,
    release_requested: bool,
    region: Option<String>,
    payment_id: i64,
    provider: String,
    sale: String,
    subscription: Option<String>,
    amount_cents: i64,
    currency: String,
}

/// Refunds failed order `id` and stops its billing; returns the order (to be released).
pub async fn refund(
    db: &Db,
    provider: Option<&dyn PaymentProvider>,
    id: i64,
    input: RefundInput,
    actor: Actor,
    ip: Option<IpAddr>,
    now: Millis,
) -> Result<OrderView> {
    let reason = reason_of(input)?;
    let paid = paid(db, id).await?;
    if paid.status != "failed" {
        return Err(Error::conflict(
            "order_not_failed",
            "only a failed order can be refunded; a delivered server ends with its subscription",
        ));
    }
    if paid.release_requested {
        return Err(Error::conflict(
            "order_released",
            "this order was given up already",
        ));
    }
    // At the provider first: a failure here records nothing, and the operator may simply try
    // again (both calls are idempotent).
    let refund = match paid.provider.as_str() {
        "paypal" => {
            let provider = provider.ok_or(Error::Unavailable(
                "payments are not configured on this server",
            ))?;
            if let Some(subscription) = &paid.subscription {
                provider
                    .cancel_subscription(
                        subscription,
                        "the dedicated server could not be delivered",
                    )
                    .await?;
            }
            Some(
                provider
                    .refund_payment(&paid.sale, &format!("truevault-refund-{}", paid.sale))
                    .await?,
            )
        }
        // Paid outside PayPal (a bank transfer): the operator returns the money the same way.
        _ => None,
    };
    let (refund_id, done) = match &refund {
        Some(Refund::Refunded(id)) => (Some(id.as_str()), true),
        Some(Refund::Pending(id)) => (Some(id.as_str()), false),
        Some(Refund::AlreadyRefunded) | None => (None, true),
    };
    let mut tx = db.begin_write().await?;
    entitlement::lock_users(tx.conn(), &[paid.user_id]).await?;
    if !release::request_order(tx.conn(), paid.user_id, id, now).await? {
        // Given up by another operator meanwhile: they recorded it all.
        tx.rollback().await?;
        let mut conn = db.pool().acquire().await?;
        return orders::get(&mut conn, id).await;
    }
    sqlx::query(
        "UPDATE payments SET updated_at = $1,
                status = CASE WHEN $2 = 1 THEN 'refunded' ELSE status END,
                provider_refund_id = COALESCE(provider_refund_id, $3)
         WHERE id = $4",
    )
    .bind(now)
    .bind(i64::from(done))
    .bind(refund_id)
    .bind(paid.payment_id)
    .execute(tx.conn())
    .await?;
    if done {
        sqlx::query("UPDATE invoices SET status = 'refunded' WHERE payment_id = $1")
            .bind(paid.payment_id)
            .execute(tx.conn())
            .await?;
    }
    // Refunded, so it ends now rather than at the paid period's end; devices follow.
    sqlx::query(
        "UPDATE subscriptions SET status = 'cancelled', cancel_at_period_end = 0,
                current_period_end = $1, updated_at = $1
         WHERE user_id = $2 AND plan_type = 'dedicated'
           AND status IN ('active', 'past_due', 'suspended')",
    )
    .bind(now)
    .bind(paid.user_id)
    .execute(tx.conn())
    .await?;
    entitlement::reconcile(tx.conn(), paid.user_id, "order_refunded", now).await?;
    let amount = format!(
        "{}.{:02} {}",
        paid.amount_cents / 100,
        paid.amount_cents % 100,
        paid.currency
    );
    audit::record(
        tx.conn(),
        audit::Entry {
            actor,
            action: "order.refunded",
            target_type: Some("order"),
            target_id: Some(id.to_string()),
            details: json!({
                "reason": reason, "amount": amount, "refund": refund_id, "pending": !done,
                "provider": paid.provider,
            }),
            ip,
        },
        now,
    )
    .await?;
    let (email, first_name) = accounts::contact(tx.conn(), paid.user_id).await?;
    outbox::enqueue(
        tx.conn(),
        OutgoingMail {
            to: &email,
            user_id: Some(paid.user_id),
            template: "order_refunded",
            context: json!({
                "first_name": first_name,
                "region": paid.region.unwrap_or_default(),
                "amount": amount,
                "reason": reason.clone().unwrap_or_default(),
                "paypal": paid.provider == "paypal",
            }),
            dedupe_key: Some(format!("order_refunded:{id}")),
        },
        now,
    )
    .await?;
    let order = orders::get(tx.conn(), id).await?;
    tx.commit().await?;
    Ok(order)
}

fn reason_of(input: RefundInput) -> Result<Option<String>> {
    let reason = input
        .reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty());
    let problem = match &reason {
        Some(r) if r.chars().count() > MAX_REASON_CHARS => {
            Some(("too_long", format!("at most {MAX_REASON_CHARS} characters")))
        }
        Some(r) if r.chars().any(char::is_control) => {
            Some(("invalid", "one line, without control characters".to_owned()))
        }
        _ => None,
    };
    match problem {
        Some((code, message)) => Err(Error::Validation(vec![FieldError::new(
            "reason", code, message,
        )])),
        None => Ok(reason),
    }
}

async fn paid(db: &Db, id: i64) -> Result<Paid> {
    type Row = (
        i64,
        String,
        Option<i64>,
        Option<String>,
        i64,
        String,
        String,
        Option<String>,
        i64,
        String,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT q.user_id, q.status, q.release_requested_at, q.region_preference, p.id,
                p.provider, p.provider_payment_id, p.provider_subscription_id, p.amount_cents,
                p.currency
         FROM server_provisioning_queue q JOIN payments p ON p.id = q.payment_id
         WHERE q.id = $1",
    )
    .bind(id)
    .fetch_optional(db.pool())
    .await?;
    let (user_id, status, released, region, payment_id, provider, sale, subscription, cents, cur) =
        row.ok_or(Error::NotFound("order"))?;
    Ok(Paid {
        user_id,
        status,
        release_requested: released.is_some(),
        region,
        payment_id,
        provider,
        sale,
        subscription,
        amount_cents: cents,
        currency: cur,
    })
}
