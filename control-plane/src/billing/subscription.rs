//! The customer's subscription as they see it, and cancelling it from here.
//!
//! Cancelling stops the billing at PayPal first, then records the same thing PayPal's
//! `BILLING.SUBSCRIPTION.CANCELLED` would (`renewals::cancel_at_period_end`): no renewal, access
//! until the paid period ends, one confirmation mail. PayPal's own event for it arrives later
//! and changes nothing more. PayPal cannot resume a cancelled subscription: the customer
//! starts a new checkout instead, which a cancelled subscription no longer blocks.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::AnyConnection;
use utoipa::ToSchema;

use crate::audit::{self, Actor, Entry};
use crate::clock::{Millis, rfc3339};
use crate::devices::entitlement;
use crate::error::{Error, FieldError, Result};

use super::payments::Payments;
use super::provider::Cancellation;
use super::renewals;

/// The longest reason a customer may give (PayPal keeps the first 128 characters).
pub const MAX_REASON_CHARS: usize = 500;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SubscriptionView {
    /// `trial`, `personal`, `family`, `business` or `dedicated`.
    pub plan: String,
    /// `trial`, `active`, `past_due`, `suspended`, `cancelled` or `expired`.
    pub status: String,
    /// Who bills it (`paypal`); null for a trial or a plan given by an operator.
    pub provider: Option<String>,
    /// RFC 3339: the end of the paid period (it renews then unless cancelled).
    pub current_period_end: Option<String>,
    /// Cancelled: access continues until `current_period_end`, and nothing more is charged.
    pub cancel_at_period_end: bool,
    /// RFC 3339; set while the plan is the trial.
    pub trial_ends: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelInput {
    /// Why the customer leaves (optional; kept in the audit log and sent to PayPal).
    pub reason: Option<String>,
}

type Row = (
    String,
    String,
    Option<String>,
    Option<Millis>,
    i64,
    Option<Millis>,
);

/// The user's latest subscription.
pub async fn view(conn: &mut AnyConnection, user_id: i64) -> Result<SubscriptionView> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT plan_type, status, provider, current_period_end, cancel_at_period_end, trial_ends
         FROM subscriptions WHERE user_id = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(user_id)
    .fetch_optional(conn)
    .await?;
    let (plan, status, provider, period_end, cancelling, trial_ends) =
        row.ok_or(Error::NotFound("subscription"))?;
    Ok(SubscriptionView {
        trial_ends: trial_ends.filter(|_| status == "trial").map(rfc3339),
        plan,
        status,
        provider,
        current_period_end: period_end.map(rfc3339),
        cancel_at_period_end: cancelling != 0,
    })
}

/// A PayPal subscription that still bills the user.
#[derive(Debug, Clone)]
pub struct Billing {
    pub subscription: String,
    /// `active`, `past_due` or `suspended`.
    pub status: String,
    /// Cancelled: it bills no more after the current period.
    pub cancelling: bool,
}

/// The user's PayPal subscription that still bills, if any.
pub async fn billing(conn: &mut AnyConnection, user_id: i64) -> Result<Option<Billing>> {
    let row: Option<(String, String, i64)> = sqlx::query_as(
        "SELECT provider_subscription_id, status, cancel_at_period_end FROM subscriptions
         WHERE user_id = $1 AND provider = 'paypal' AND provider_subscription_id IS NOT NULL
           AND status IN ('active', 'past_due', 'suspended')
         ORDER BY id DESC LIMIT 1",
    )
    .bind(user_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(subscription, status, cancelling)| Billing {
        subscription,
        status,
        cancelling: cancelling != 0,
    }))
}

impl Payments {
    /// The caller's latest subscription.
    pub async fn subscription(&self, user_id: i64) -> Result<SubscriptionView> {
        let mut conn = self.db.pool().acquire().await?;
        view(&mut conn, user_id).await
    }

    /// Cancels the caller's PayPal subscription at the end of its paid period. Cancelling
    /// again changes nothing; without a subscription that bills, 409 `no_subscription`.
    pub async fn cancel_subscription(
        &self,
        user_id: i64,
        input: CancelInput,
        ip: Option<IpAddr>,
    ) -> Result<SubscriptionView> {
        let reason = input
            .reason
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty());
        if reason.is_some_and(|r| r.chars().count() > MAX_REASON_CHARS) {
            return Err(Error::Validation(vec![FieldError::new(
                "reason",
                "too_long",
                format!("at most {MAX_REASON_CHARS} characters"),
            )]));
        }
        // One line of text: PayPal takes no line breaks, and the audit log shows it as is.
        if reason.is_some_and(|r| r.chars().any(char::is_control)) {
            return Err(Error::Validation(vec![FieldError::new(
                "reason",
                "invalid",
                "one line, without control characters",
            )]));
        }
        let provider = self.provider()?;
        let mut conn = self.db.pool().acquire().await?;
        let Some(Billing {
            subscription,
            cancelling,
            ..
        }) = billing(&mut conn, user_id).await?
        else {
            return Err(Error::conflict(
                "no_subscription",
                "there is no PayPal subscription to cancel",
            ));
        };
        if cancelling {
            return view(&mut conn, user_id).await;
        }
        drop(conn);
        // Billing stops at PayPal before anything is recorded here: a failure leaves the
        // customer's subscription as it was, and they can simply try again.
        let outcome = provider
            .cancel_subscription(&subscription, reason.unwrap_or("cancelled by the customer"))
            .await?;
        let now = self.clock.now_ms();
        let mut tx = self.db.begin_write().await?;
        entitlement::lock_users(tx.conn(), &[user_id]).await?;
        renewals::cancel_at_period_end(tx.conn(), user_id, &subscription, now).await?;
        audit::record(
            tx.conn(),
            Entry {
                actor: Actor::User(user_id),
                action: "subscription.cancel",
                target_type: Some("subscription"),
                target_id: Some(subscription.clone()),
                details: json!({
                    "reason": reason,
                    "already_inactive_at_provider": outcome == Cancellation::AlreadyInactive,
                }),
                ip,
            },
            now,
        )
        .await?;
        let view = view(tx.conn(), user_id).await?;
        tx.commit().await?;
        Ok(view)
    }
}
