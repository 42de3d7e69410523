//! Recording a refund: the one place a payment becomes `refunded` after the service gave the
//! money back (a duplicate subscription's payment, a failed order's), with its invoice voided.
//! PayPal's own `PAYMENT.SALE.REFUNDED` (which may be partial) is read by `payments`.

use sqlx::AnyConnection;

use crate::clock::Millis;
use crate::error::Result;

use super::provider::Refund;

/// The provider's refund id and whether the money is back (a pending refund is not yet);
/// `None` is a refund made outside the provider (a bank transfer returned by the operator).
pub fn outcome(refund: Option<&Refund>) -> (Option<&str>, bool) {
    match refund {
        Some(Refund::Refunded(id)) => (Some(id.as_str()), true),
        Some(Refund::Pending(id)) => (Some(id.as_str()), false),
        Some(Refund::AlreadyRefunded) | None => (None, true),
    }
}

/// Records `refund` of payment `payment_id`. A pending refund keeps the payment as it is
/// (only its refund id is kept) until PayPal's event says the money went back. False when the
/// payment was recorded refunded before (by a concurrent caller, or PayPal's event).
pub async fn record(
    conn: &mut AnyConnection,
    payment_id: i64,
    refund: Option<&Refund>,
    now: Millis,
) -> Result<bool> {
    let (refund_id, done) = outcome(refund);
    let recorded = sqlx::query(
        "UPDATE payments SET updated_at = $1,
                status = CASE WHEN $2 = 1 THEN 'refunded' ELSE status END,
                provider_refund_id = COALESCE(provider_refund_id, $3)
         WHERE id = $4 AND status = 'completed' AND provider_refund_id IS NULL",
    )
    .bind(now)
    .bind(i64::from(done))
    .bind(refund_id)
    .bind(payment_id)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if recorded && done {
        sqlx::query("UPDATE invoices SET status = 'refunded' WHERE payment_id = $1")
            .bind(payment_id)
            .execute(conn)
            .await?;
    }
    Ok(recorded)
}
