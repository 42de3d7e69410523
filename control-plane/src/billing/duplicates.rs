//! A second PayPal subscription for a customer who already pays for one.
//!
//! Checkout refuses a second subscription while one is live, but two checkouts started before
//! either was approved both pass, and approving both would bill the customer twice. The first
//! activation wins. A later one is recorded as a duplicate (`checkouts.duplicate_of`) and
//! applies nothing (no plan change, no promo code, the customer's subscription stays linked to
//! the first). Its other events (failed payments, cancellation) already touch only the
//! subscription they name, which is not the linked one.
//!
//! The service then settles it itself, each as a task of its own: the duplicate is cancelled
//! at PayPal, and every payment PayPal collects on it is recorded, gives no service, and is
//! refunded in full. The customer is told of each; the operator only when a task gives up
//! (`automation::dead`, with [`Settlement::remedy`]). The provider is called before the
//! task's transaction and is idempotent (a cancelled subscription, a refund's request id), so
//! a retried or taken-over task repeats the call harmlessly.

use serde_json::{Value, json};
use sqlx::AnyConnection;

use crate::accounts;
use crate::audit::{self, Actor, Entry};
use crate::automation::outbox::{self, OutgoingMail};
use crate::automation::tasks::{self, DEFAULT_MAX_ATTEMPTS, NewTask};
use crate::clock::Millis;
use crate::error::{Error, Result};

use super::payments::PAYMENTS;
use super::provider::{Cancellation, PaymentProvider, Refund};
use super::{money, refunds};

/// The task step that cancels a duplicate subscription at PayPal.
pub const CANCEL: &str = "cancel_duplicate";
/// The task step that refunds a payment collected on a duplicate subscription.
pub const REFUND: &str = "refund_duplicate_payment";

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

/// Records the checkout as done, as a duplicate of `current`, and schedules its cancellation.
pub async fn mark(
    conn: &mut AnyConnection,
    checkout_id: i64,
    user_id: i64,
    subscription: &str,
    current: &str,
    now: Millis,
) -> Result<()> {
    sqlx::query(
        "UPDATE checkouts SET status = 'completed', completed_at = $1, duplicate_of = $2 WHERE id = $3",
    )
    .bind(now)
    .bind(current)
    .bind(checkout_id)
    .execute(&mut *conn)
    .await?;
    tracing::warn!(
        user_id,
        subscription,
        current,
        "a second PayPal subscription was not applied; it is cancelled at PayPal"
    );
    let settlement = Settlement::Cancel {
        subscription: subscription.to_owned(),
    };
    settlement.schedule(conn, user_id, now).await
}

/// Schedules the refund of a payment just recorded on a duplicate subscription.
pub async fn refund_later(
    conn: &mut AnyConnection,
    user_id: i64,
    sale: &str,
    now: Millis,
) -> Result<()> {
    tracing::warn!(
        user_id,
        sale,
        "a payment on a duplicate subscription; its refund is scheduled"
    );
    let settlement = Settlement::Refund {
        sale: sale.to_owned(),
    };
    settlement.schedule(conn, user_id, now).await
}

/// One thing to set right at the provider about a duplicate subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    Cancel { subscription: String },
    Refund { sale: String },
}

/// What the provider answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    Cancelled(Cancellation),
    Refunded(Refund),
}

impl Settlement {
    /// The settlement a task (`payments`/[`CANCEL`] or [`REFUND`]) carries.
    pub fn of_task(step: &str, payload: &Value) -> Result<Self> {
        let field = |name: &str| {
            payload
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| Error::internal(format!("a {step} task without its {name}")))
        };
        match step {
            CANCEL => Ok(Self::Cancel {
                subscription: field("subscription")?,
            }),
            REFUND => Ok(Self::Refund {
                sale: field("sale")?,
            }),
            other => Err(Error::internal(format!("{other} is not a settlement step"))),
        }
    }

    async fn schedule(&self, conn: &mut AnyConnection, user_id: i64, now: Millis) -> Result<()> {
        let (step, key, payload) = match self {
            Self::Cancel { subscription } => (
                CANCEL,
                format!("{CANCEL}:{subscription}"),
                json!({ "subscription": subscription }),
            ),
            Self::Refund { sale } => (REFUND, format!("{REFUND}:{sale}"), json!({ "sale": sale })),
        };
        tasks::schedule(
            conn,
            NewTask {
                key,
                workflow: PAYMENTS,
                step,
                payload,
                user_id: Some(user_id),
                run_at: now,
                max_attempts: DEFAULT_MAX_ATTEMPTS,
            },
            now,
        )
        .await?;
        Ok(())
    }

    /// Asks the provider; outside any transaction (it may take seconds).
    pub async fn carry_out(&self, provider: &dyn PaymentProvider) -> Result<Settled> {
        match self {
            Self::Cancel { subscription } => provider
                .cancel_subscription(
                    subscription,
                    "A second subscription approved by mistake: the customer already has one.",
                )
                .await
                .map(Settled::Cancelled),
            Self::Refund { sale } => provider
                .refund_payment(sale, &format!("truevault-refund-{sale}"))
                .await
                .map(Settled::Refunded),
        }
    }

    /// Records what the provider did and tells the customer (once, whoever records it; not
    /// at all once the account is closed).
    pub async fn record(
        &self,
        conn: &mut AnyConnection,
        user_id: i64,
        settled: &Settled,
        now: Millis,
    ) -> Result<()> {
        let (action, template, dedupe, context, details) = match (self, settled) {
            (Self::Cancel { subscription }, Settled::Cancelled(how)) => {
                sqlx::query(
                    "UPDATE checkouts SET duplicate_cancelled_at = COALESCE(duplicate_cancelled_at, $1)
                     WHERE provider = 'paypal' AND provider_ref = $2",
                )
                .bind(now)
                .bind(subscription)
                .execute(&mut *conn)
                .await?;
                let (cancelled, kept) = plans_of(conn, user_id, subscription).await?;
                (
                    "subscription.duplicate_cancelled",
                    "duplicate_cancelled",
                    format!("duplicate_cancelled:{subscription}"),
                    json!({ "plan": cancelled, "kept_plan": kept }),
                    json!({ "subscription": subscription, "already_inactive": *how == Cancellation::AlreadyInactive }),
                )
            }
            (Self::Refund { sale }, Settled::Refunded(how)) => {
                let (payment_id, cents, currency): (i64, i64, String) = sqlx::query_as(
                    "SELECT id, amount_cents, currency FROM payments
                     WHERE provider = 'paypal' AND provider_payment_id = $1",
                )
                .bind(sale)
                .fetch_one(&mut *conn)
                .await?;
                // Recorded before by PayPal's own refund event: the customer is still told.
                refunds::record(conn, payment_id, Some(how), now).await?;
                let (refund_id, done) = refunds::outcome(Some(how));
                (
                    "payment.refunded",
                    "duplicate_refunded",
                    format!("duplicate_refunded:{sale}"),
                    json!({ "sale": sale, "amount": money(cents, &currency) }),
                    json!({ "sale": sale, "refund": refund_id, "pending": !done }),
                )
            }
            _ => {
                return Err(Error::internal(
                    "a settlement recorded with another's answer",
                ));
            }
        };
        audit::record(
            &mut *conn,
            Entry {
                actor: Actor::System,
                action,
                target_type: Some("user"),
                target_id: Some(user_id.to_string()),
                details,
                ip: None,
            },
            now,
        )
        .await?;
        let (status,): (String,) = sqlx::query_as("SELECT status FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_one(&mut *conn)
            .await?;
        if status == "deleted" {
            return Ok(());
        }
        let (email, first_name) = accounts::contact(&mut *conn, user_id).await?;
        let mut context = context;
        context["first_name"] = json!(first_name);
        outbox::enqueue(
            conn,
            OutgoingMail {
                to: &email,
                user_id: Some(user_id),
                template,
                context,
                dedupe_key: Some(dedupe),
            },
            now,
        )
        .await?;
        Ok(())
    }

    /// What a person does when this settlement gave up (for the operator's dead-task mail).
    pub async fn remedy(&self, conn: &mut AnyConnection) -> Result<String> {
        Ok(match self {
            Self::Cancel { subscription } => format!(
                "Cancel PayPal subscription {subscription} at PayPal: it duplicates one the \
                 customer already pays for, and bills them twice. Then retry the task: it records \
                 the cancellation and tells the customer."
            ),
            Self::Refund { sale } => {
                let row: Option<(Option<String>, i64, String)> = sqlx::query_as(
                    "SELECT provider_subscription_id, amount_cents, currency FROM payments
                     WHERE provider = 'paypal' AND provider_payment_id = $1",
                )
                .bind(sale)
                .fetch_optional(conn)
                .await?;
                let (subscription, amount) = row.map_or_else(Default::default, |(s, c, cur)| {
                    (s.unwrap_or_default(), money(c, &cur))
                });
                format!(
                    "Refund sale {sale} ({amount}) in full at PayPal: it was collected on \
                     duplicate subscription {subscription} and gives no service. Then retry the \
                     task: it records the refund and tells the customer."
                )
            }
        })
    }
}

/// The names of the duplicate's plan and of the plan the customer keeps.
async fn plans_of(
    conn: &mut AnyConnection,
    user_id: i64,
    subscription: &str,
) -> Result<(String, String)> {
    let cancelled = plan_name(&mut *conn, subscription).await?;
    let kept: Option<(String,)> = sqlx::query_as(
        "SELECT p.name FROM subscriptions s JOIN plans p ON p.code = s.plan_type
         WHERE s.user_id = $1 ORDER BY s.id DESC LIMIT 1",
    )
    .bind(user_id)
    .fetch_optional(conn)
    .await?;
    Ok((cancelled, kept.map(|(k,)| k).unwrap_or_default()))
}

/// The name of the plan the duplicate checkout was for.
async fn plan_name(conn: &mut AnyConnection, subscription: &str) -> Result<String> {
    let (name,): (String,) = sqlx::query_as(
        "SELECT p.name FROM checkouts c JOIN plans p ON p.code = c.plan_code
         WHERE c.provider = 'paypal' AND c.provider_ref = $1",
    )
    .bind(subscription)
    .fetch_one(conn)
    .await?;
    Ok(name)
}
