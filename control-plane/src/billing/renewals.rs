//! A paid subscription's period: renewal reminders 7 days and 1 day before it ends, and the end
//! of a cancelled subscription (confirmed by mail; access until the period ends, then devices
//! disabled).
//!
//! Both are tasks of the `renewals` workflow keyed by the subscription and the period's end, so
//! a period is reminded of once however often its payment is reported; each re-reads the
//! subscription and does nothing when it no longer applies (cancelled, renewed, moved on).

use serde_json::json;
use sqlx::AnyConnection;

use crate::automation::outbox::{self, OutgoingMail};
use crate::automation::render::human_date;
use crate::automation::tasks::{self, ClaimedTask, DEFAULT_MAX_ATTEMPTS, NewTask};
use crate::clock::{DAY, Millis};
use crate::dedicated::orders::DEDICATED_PLAN;
use crate::devices::entitlement;
use crate::error::{Error, Result};

pub const RENEWALS: &str = "renewals";
const REMIND: &str = "renewal_reminder";
const END: &str = "end_cancelled_subscription";
/// The mail confirming a cancellation.
const CANCELLED: &str = "subscription_cancelled";
/// Days before a period ends that the customer is reminded.
const REMINDER_DAYS: [i64; 2] = [7, 1];

/// After a payment: reminders before `period_end`.
pub async fn schedule_reminders(
    conn: &mut AnyConnection,
    user_id: i64,
    subscription: &str,
    period_end: Millis,
    now: Millis,
) -> Result<()> {
    for days in REMINDER_DAYS {
        let at = period_end - days * DAY;
        if at <= now {
            continue;
        }
        tasks::schedule(
            &mut *conn,
            NewTask {
                key: format!("renewal:{subscription}:{period_end}:{days}"),
                workflow: RENEWALS,
                step: REMIND,
                payload: json!({ "subscription": subscription, "period_end": period_end, "days": days }),
                user_id: Some(user_id),
                run_at: at,
                max_attempts: DEFAULT_MAX_ATTEMPTS,
            },
            now,
        )
        .await?;
    }
    Ok(())
}

/// The subscription is cancelled (at PayPal, or by the customer here): no renewal, access
/// until the paid period ends, and one mail that says so. Only the first call for a
/// subscription does anything.
pub async fn cancel_at_period_end(
    conn: &mut AnyConnection,
    user_id: i64,
    subscription: &str,
    now: Millis,
) -> Result<()> {
    let row: Option<(Option<Millis>, String)> = sqlx::query_as(
        "UPDATE subscriptions SET cancel_at_period_end = 1, updated_at = $1
         WHERE user_id = $2 AND provider_subscription_id = $3 AND cancel_at_period_end = 0
           AND status IN ('active', 'past_due', 'suspended')
         RETURNING current_period_end, plan_type",
    )
    .bind(now)
    .bind(user_id)
    .bind(subscription)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((period_end, plan)) = row else {
        return Ok(());
    };
    let end = period_end.unwrap_or(now).max(now);
    tasks::schedule(
        &mut *conn,
        NewTask {
            key: format!("cancel:{subscription}"),
            workflow: RENEWALS,
            step: END,
            payload: json!({ "subscription": subscription }),
            user_id: Some(user_id),
            run_at: end,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        },
        now,
    )
    .await?;
    let (email, first_name) = crate::accounts::contact(&mut *conn, user_id).await?;
    let (plan_name,): (String,) = sqlx::query_as("SELECT name FROM plans WHERE code = $1")
        .bind(&plan)
        .fetch_one(&mut *conn)
        .await?;
    outbox::enqueue(
        conn,
        OutgoingMail {
            to: &email,
            user_id: Some(user_id),
            template: CANCELLED,
            context: json!({
                "first_name": first_name,
                "plan": plan_name,
                "access_until": human_date(end),
            }),
            dedupe_key: Some(format!("{CANCELLED}:{subscription}")),
        },
        now,
    )
    .await?;
    Ok(())
}

/// Status, cancelling, period end, plan name, email, first name, plan code.
type SubscriptionRow = (String, i64, Option<Millis>, String, String, String, String);

/// One `renewals` step.
pub async fn run_step(
    conn: &mut AnyConnection,
    task: &ClaimedTask,
    user_id: i64,
    now: Millis,
) -> Result<()> {
    let subscription = super::dunning::subscription_of(task)?;
    let row: Option<SubscriptionRow> = sqlx::query_as(
        "SELECT s.status, s.cancel_at_period_end, s.current_period_end, p.name, u.email, u.first_name,
                s.plan_type
         FROM subscriptions s JOIN plans p ON p.code = s.plan_type JOIN users u ON u.id = s.user_id
         WHERE s.user_id = $1 AND s.provider_subscription_id = $2",
    )
    .bind(user_id)
    .bind(subscription)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((status, cancelling, period_end, plan, email, first_name, plan_code)) = row else {
        return Ok(());
    };
    match task.step.as_str() {
        REMIND => {
            let expected = task
                .payload
                .get("period_end")
                .and_then(serde_json::Value::as_i64);
            // Cancelled, or the period this reminder was for is no longer the current one.
            if status != "active" || cancelling != 0 || period_end != expected {
                return Ok(());
            }
            let days = task
                .payload
                .get("days")
                .and_then(serde_json::Value::as_i64)
                .unwrap_or(1);
            outbox::enqueue(
                conn,
                OutgoingMail {
                    to: &email,
                    user_id: Some(user_id),
                    template: REMIND,
                    context: json!({
                        "first_name": first_name,
                        "plan": plan,
                        "days_left": days,
                        "renews_on": human_date(period_end.unwrap_or(now)),
                    }),
                    dedupe_key: Some(task.key.clone()),
                },
                now,
            )
            .await?;
            Ok(())
        }
        END => {
            if cancelling == 0 || period_end.is_some_and(|end| end > now) {
                // Resumed meanwhile, or paid further (a later task covers the new end).
                return Ok(());
            }
            let ended = sqlx::query(
                "UPDATE subscriptions SET status = 'cancelled', updated_at = $1
                 WHERE user_id = $2 AND provider_subscription_id = $3
                   AND status IN ('active', 'past_due', 'suspended')",
            )
            .bind(now)
            .bind(user_id)
            .bind(subscription)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if ended > 0 {
                entitlement::reconcile(conn, user_id, "subscription_ended", now).await?;
                if plan_code == DEDICATED_PLAN {
                    crate::dedicated::release::request(conn, user_id, now).await?;
                }
            }
            Ok(())
        }
        other => Err(Error::internal(format!("no renewals step {other}"))),
    }
}
