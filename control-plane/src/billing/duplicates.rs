//! A second PayPal subscription for a customer who already pays for one.
//!
//! Checkout refuses a second subscription while one is live, but two checkouts started before
//! either was approved both pass, and approving both would bill the customer twice. The first
//! activation wins. A later one is recorded as a duplicate (`checkouts.duplicate_of`) and
//! applies nothing (no plan change, no promo code, the customer's subscription stays linked to
//! the first); the second subscription's payments are recorded, give no service, and the
//! operator is told to cancel and refund it at PayPal. Its other events (failed payments,
//! cancellation) already touch only the subscription they name, which is not the linked one.

use serde_json::json;
use sqlx::AnyConnection;

use crate::accounts;
use crate::automation::outbox::{self, OutgoingMail};
use crate::clock::Millis;
use crate::error::Result;

/// The customer's live PayPal subscription other than `subscription`, if any: one that bills
/// and is not cancelled at its period's end.
pub async fn live_other(
    conn: &mut AnyConnection,
    user_id: i64,
    subscription: &str,
) -> Result<Option<String>> {
    let live: Option<(String,)> = sqlx::query_as(
        "SELECT provider_subscription_id FROM subscriptions
         WHERE user_id = $1 AND provider = 'paypal' AND provider_subscription_id IS NOT NULL
           AND provider_subscription_id <> $2 AND cancel_at_period_end = 0
           AND status IN ('active', 'past_due', 'suspended')
         ORDER BY id DESC LIMIT 1",
    )
    .bind(user_id)
    .bind(subscription)
    .fetch_optional(conn)
    .await?;
    Ok(live.map(|(id,)| id))
}

/// Records the checkout as done, as a duplicate of `current`.
pub async fn mark(
    conn: &mut AnyConnection,
    checkout_id: i64,
    current: &str,
    now: Millis,
) -> Result<()> {
    sqlx::query(
        "UPDATE checkouts SET status = 'completed', completed_at = $1, duplicate_of = $2 WHERE id = $3",
    )
    .bind(now)
    .bind(current)
    .bind(checkout_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// What the operator is told about a duplicate subscription.
#[derive(Debug)]
pub struct Alert<'a> {
    pub user_id: i64,
    pub subscription: &'a str,
    pub current: &'a str,
    pub plan: &'a str,
    /// A payment collected on the duplicate: its sale id and amount.
    pub sale: Option<(&'a str, String)>,
}

/// Mails the operator (once per subscription, and once per sale on it).
pub async fn alert(
    conn: &mut AnyConnection,
    operator: Option<&str>,
    alert: Alert<'_>,
    now: Millis,
) -> Result<()> {
    tracing::warn!(
        user_id = alert.user_id,
        subscription = alert.subscription,
        current = alert.current,
        sale = alert.sale.as_ref().map(|(id, _)| *id),
        "a second PayPal subscription was not applied; it must be cancelled and refunded"
    );
    let Some(operator) = operator else {
        tracing::warn!("no operator_email is set: nobody is mailed about the duplicate");
        return Ok(());
    };
    let (email, first_name) = accounts::contact(&mut *conn, alert.user_id).await?;
    let (sale, amount) = alert.sale.unwrap_or_default();
    let action = if sale.is_empty() {
        "cancel it and refund it".to_owned()
    } else {
        format!("refund sale {sale}")
    };
    outbox::enqueue(
        conn,
        OutgoingMail {
            to: operator,
            user_id: None,
            template: "duplicate_subscription",
            context: json!({
                "first_name": first_name,
                "email": email,
                "user_id": alert.user_id,
                "subscription": alert.subscription,
                "current": alert.current,
                "plan": alert.plan,
                "sale": sale,
                "amount": amount,
                "action": action,
            }),
            dedupe_key: Some(format!(
                "duplicate_subscription:{}:{sale}",
                alert.subscription
            )),
        },
        now,
    )
    .await?;
    Ok(())
}
