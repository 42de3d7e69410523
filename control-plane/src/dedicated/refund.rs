//! Giving up on a dedicated-server order that could not be delivered: the buyer gets their
//! money back and is billed no more, and whatever was set up for the order is given back (its
//! instance is cancelled at the provider by the order runner, as for any release).
//!
//! Only a `failed` order qualifies, until its payments are refunded: a delivered server ends
//! with its subscription instead. The provider is asked first, outside the transaction: the
//! subscription is cancelled and every payment on it refunded in full, all idempotent, so an
//! operator repeating the request after an error (a 502 records nothing) causes no second
//! refund. A refund wins over an operator's retry of the same order racing it: the order is
//! released either way, and a retry of an order being given up is refused.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::json;
use sqlx::AnyConnection;
use utoipa::ToSchema;

use crate::accounts;
use crate::audit::{self, Actor};
use crate::automation::outbox::{self, OutgoingMail};
use crate::billing::provider::{PaymentProvider, Refund};
use crate::billing::{money, refunds};
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
    region: Option<String>,
    payment_id: i64,
    provider: String,
    subscription: Option<String>,
    currency: String,
}

/// A payment to give back: its row, the provider's id for it, its amount in cents.
type Refundable = (i64, String, i64);

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
    let refundable = refundable(db, &paid).await?;
    if refundable.is_empty() {
        return Err(Error::conflict(
            "order_refunded",
            "this order's payments are refunded already",
        ));
    }
    // At the provider first: a failure here records nothing, and the operator may simply try
    // again (every call is idempotent).
    let mut refunds = Vec::with_capacity(refundable.len());
    if paid.provider == "paypal" {
        let provider = provider.ok_or(Error::Unavailable(
            "payments are not configured on this server",
        ))?;
        if let Some(subscription) = &paid.subscription {
            provider
                .cancel_subscription(subscription, "the dedicated server could not be delivered")
                .await?;
        }
        for (_, sale, _) in &refundable {
            let key = format!("truevault-refund-{sale}");
            refunds.push(Some(provider.refund_payment(sale, &key).await?));
        }
    } else {
        // Paid outside PayPal (a bank transfer): the operator returns the money the same way.
        refunds.resize(refundable.len(), None);
    }

    let mut tx = db.begin_write().await?;
    entitlement::lock_users(tx.conn(), &[paid.user_id]).await?;
    let mut recorded = 0;
    let mut refunded_cents = 0;
    for ((payment_id, _, cents), refund) in refundable.iter().zip(&refunds) {
        // Guarded: of two operators refunding at once, one records it.
        if refunds::record(tx.conn(), *payment_id, refund.as_ref(), now).await? {
            recorded += 1;
            refunded_cents += cents;
        }
    }
    if recorded == 0 {
        tx.rollback().await?;
        let mut conn = db.pool().acquire().await?;
        return orders::get(&mut conn, id).await;
    }
    end_subscription(tx.conn(), &paid, id, now).await?;
    entitlement::reconcile(tx.conn(), paid.user_id, "order_refunded", now).await?;
    // Already released (its subscription ended meanwhile): nothing more to give back.
    release::request_order(tx.conn(), paid.user_id, id, now).await?;
    let amount = money(refunded_cents, &paid.currency);
    let pending = refunds
        .iter()
        .any(|r| matches!(r, Some(Refund::Pending(_))));
    audit::record(
        tx.conn(),
        audit::Entry {
            actor,
            action: "order.refunded",
            target_type: Some("order"),
            target_id: Some(id.to_string()),
            details: json!({
                "reason": reason, "amount": amount, "payments": refundable.len(),
                "pending": pending, "provider": paid.provider,
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
                "region": paid.region.clone().unwrap_or_default(),
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

/// The subscription the order was paid by ends now (refunded, so not at its period's end).
/// For PayPal it is that subscription alone: the customer's current row may carry a later one.
/// A manual purchase's plan ends only when the customer has no other dedicated order left.
async fn end_subscription(
    conn: &mut AnyConnection,
    paid: &Paid,
    order: i64,
    now: Millis,
) -> Result<()> {
    const END: &str = "UPDATE subscriptions SET status = 'cancelled', cancel_at_period_end = 0,
                              current_period_end = $1, updated_at = $1
                       WHERE user_id = $2 AND plan_type = 'dedicated'
                         AND status IN ('active', 'past_due', 'suspended')";
    match &paid.subscription {
        Some(subscription) => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "{END} AND provider_subscription_id = $3"
            )))
            .bind(now)
            .bind(paid.user_id)
            .bind(subscription)
            .execute(conn)
            .await?;
        }
        None => {
            let (others,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM server_provisioning_queue
                 WHERE user_id = $1 AND id <> $2 AND release_requested_at IS NULL",
            )
            .bind(paid.user_id)
            .bind(order)
            .fetch_one(&mut *conn)
            .await?;
            if others == 0 {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{END} AND provider_subscription_id IS NULL"
                )))
                .bind(now)
                .bind(paid.user_id)
                .execute(conn)
                .await?;
            }
        }
    }
    Ok(())
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
        Option<String>,
        i64,
        String,
        Option<String>,
        String,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT q.user_id, q.status, q.region_preference, p.id, p.provider,
                p.provider_subscription_id, p.currency
         FROM server_provisioning_queue q JOIN payments p ON p.id = q.payment_id
         WHERE q.id = $1",
    )
    .bind(id)
    .fetch_optional(db.pool())
    .await?;
    let (user_id, status, region, payment_id, provider, subscription, currency) =
        row.ok_or(Error::NotFound("order"))?;
    Ok(Paid {
        user_id,
        status,
        region,
        payment_id,
        provider,
        subscription,
        currency,
    })
}

/// What was paid for the order and not given back yet: for a PayPal subscription every
/// payment on it (renewals collected while the order sat failed too), else the order's own.
async fn refundable(db: &Db, paid: &Paid) -> Result<Vec<Refundable>> {
    const OPEN: &str = "status = 'completed' AND provider_refund_id IS NULL";
    let rows = match &paid.subscription {
        Some(subscription) => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT id, provider_payment_id, amount_cents FROM payments
                 WHERE provider = 'paypal' AND provider_subscription_id = $1 AND {OPEN}
                 ORDER BY id"
            )))
            .bind(subscription)
            .fetch_all(db.pool())
            .await?
        }
        None => sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, provider_payment_id, amount_cents FROM payments WHERE id = $1 AND {OPEN}"
        )))
        .bind(paid.payment_id)
        .fetch_all(db.pool())
        .await?,
    };
    Ok(rows)
}
