//! Dunning, as the original's workflow: when PayPal cannot collect a subscription payment the
//! subscription is `past_due` (devices keep working), the customer is mailed on days 0, 3 and
//! 7, and on day 8 the subscription is suspended and the devices disconnected. A payment at any
//! point makes it `active` again, and every later step then does nothing (each step re-reads
//! the subscription before acting).

use serde_json::json;
use sqlx::AnyConnection;

use crate::automation::outbox::{self, OutgoingMail};
use crate::automation::tasks::{self, ClaimedTask, DEFAULT_MAX_ATTEMPTS, NewTask};
use crate::clock::{DAY, Millis};
use crate::devices::entitlement;
use crate::error::{Error, Result};

pub const DUNNING: &str = "dunning";

/// The steps and their days after the failure.
pub const STEPS: &[(&str, i64)] = &[
    ("payment_failed", 0),
    ("payment_reminder", 3),
    ("payment_final_notice", 7),
    ("suspend_for_nonpayment", 8),
];
const SUSPEND_DAY: i64 = 8;

/// A failed collection for `subscription` (PayPal's id): the first failure of a cycle makes
/// the subscription past due and schedules the steps; later failures in the same cycle do
/// nothing more.
pub async fn start(
    conn: &mut AnyConnection,
    user_id: i64,
    subscription: &str,
    now: Millis,
) -> Result<bool> {
    let overdue = sqlx::query(
        "UPDATE subscriptions SET status = 'past_due', updated_at = $1
         WHERE user_id = $2 AND provider_subscription_id = $3 AND status = 'active'",
    )
    .bind(now)
    .bind(user_id)
    .bind(subscription)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if overdue == 0 {
        return Ok(false);
    }
    for &(step, day) in STEPS {
        tasks::schedule(
            &mut *conn,
            NewTask {
                key: format!("dunning:{subscription}:{now}:{step}"),
                workflow: DUNNING,
                step,
                payload: json!({ "subscription": subscription, "failed_at": now }),
                user_id: Some(user_id),
                run_at: now + day * DAY,
                max_attempts: DEFAULT_MAX_ATTEMPTS,
            },
            now,
        )
        .await?;
    }
    Ok(true)
}

/// The PayPal subscription a billing task is about.
pub(super) fn subscription_of(task: &ClaimedTask) -> Result<&str> {
    task.payload
        .get("subscription")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| Error::internal(format!("task {} names no subscription", task.key)))
}

/// One dunning step; nothing once the subscription is no longer past due.
pub async fn run_step(
    conn: &mut AnyConnection,
    task: &ClaimedTask,
    user_id: i64,
    now: Millis,
) -> Result<()> {
    let subscription = subscription_of(task)?;
    let row: Option<(String, String, String)> = sqlx::query_as(
        "SELECT s.status, u.email, u.first_name FROM subscriptions s JOIN users u ON u.id = s.user_id
         WHERE s.user_id = $1 AND s.provider_subscription_id = $2",
    )
    .bind(user_id)
    .bind(subscription)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((status, email, first_name)) = row else {
        return Ok(());
    };
    if status != "past_due" {
        return Ok(());
    }
    let day = STEPS
        .iter()
        .find(|(step, _)| *step == task.step)
        .map(|(_, day)| *day)
        .ok_or_else(|| Error::internal(format!("no dunning step {}", task.step)))?;
    if day == SUSPEND_DAY {
        sqlx::query(
            "UPDATE subscriptions SET status = 'suspended', updated_at = $1
             WHERE user_id = $2 AND provider_subscription_id = $3 AND status = 'past_due'",
        )
        .bind(now)
        .bind(user_id)
        .bind(subscription)
        .execute(&mut *conn)
        .await?;
        entitlement::reconcile(conn, user_id, "payment_overdue", now).await?;
        return Ok(());
    }
    let stage = match day {
        0 => "first",
        d if d < 7 => "reminder",
        _ => "final",
    };
    outbox::enqueue(
        conn,
        OutgoingMail {
            to: &email,
            user_id: Some(user_id),
            template: "payment_failed",
            context: json!({
                "first_name": first_name,
                "stage": stage,
                "days_left": SUSPEND_DAY - day,
            }),
            dedupe_key: Some(task.key.clone()),
        },
        now,
    )
    .await?;
    Ok(())
}
