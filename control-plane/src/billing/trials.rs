//! The trial's end: conversion, extension, and expiry (one user at the trial's last step, or
//! every overdue trial in the periodic sweep, in set-based batches).

use std::net::IpAddr;

use serde::Serialize;
use sqlx::AnyConnection;
use utoipa::ToSchema;

use crate::audit::{self, Actor};
use crate::automation::{tasks, workflows};
use crate::clock::{DAY, Millis, rfc3339};
use crate::devices::{self, entitlement};
use crate::error::{Error, Result};
use crate::storage::{Db, Engine, placeholders};

/// Trials expired per transaction in the sweep (measured, see docs/benchmarks.md): on SQLite
/// small batches keep write turns short and statements cheap to prepare; on PostgreSQL each
/// batch costs round trips and a commit, so larger ones win. Both stay far below the engines'
/// limits on bound parameters (5 per trial).
fn sweep_batch(engine: Engine) -> i64 {
    match engine {
        Engine::Sqlite => 500,
        Engine::Postgres => 2000,
    }
}

type DueRow = (i64, i64, String, String);

/// Expires every trial whose end has passed and that was not converted, in batches. Safe to
/// run again or concurrently with itself: each batch re-selects what is still due, and the
/// guarded update in [`expire_batch`] decides. (No ORDER BY: sorting every due row again for
/// each batch made the sweep quadratic.)
pub async fn expire_due(db: &Db, now: Millis) -> Result<u64> {
    let batch = sweep_batch(db.engine());
    let mut total = 0;
    loop {
        let mut tx = db.begin_write().await?;
        let due: Vec<DueRow> = sqlx::query_as(
            "SELECT s.id, s.user_id, u.email, u.first_name FROM subscriptions s JOIN users u ON u.id = s.user_id
             WHERE s.status = 'trial' AND s.trial_ends <= $1 AND s.trial_converted = 0 LIMIT $2",
        )
        .bind(now)
        .bind(batch)
        .fetch_all(tx.conn())
        .await?;
        if due.is_empty() {
            tx.rollback().await?;
            return Ok(total);
        }
        let expired = expire_batch(tx.conn(), &due, now).await?;
        tx.commit().await?;
        total += expired;
        if expired == 0 {
            // Everything selected was converted or extended meanwhile; what is left is newer.
            return Ok(total);
        }
    }
}

/// The trial's last step for one user: if the trial was not converted and has ended, expire it.
pub async fn expire_if_due(conn: &mut AnyConnection, user_id: i64, now: Millis) -> Result<bool> {
    let due: Vec<DueRow> = sqlx::query_as(
        "SELECT s.id, s.user_id, u.email, u.first_name FROM subscriptions s JOIN users u ON u.id = s.user_id
         WHERE s.user_id = $1 AND s.status = 'trial' AND s.trial_ends <= $2 AND s.trial_converted = 0",
    )
    .bind(user_id)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    Ok(expire_batch(conn, &due, now).await? > 0)
}

/// Subscription `expired`, tracking `expired`, one `trial_expired` mail each, devices disabled:
/// for exactly the trials the guarded update expired. The users are locked first (as every
/// change to access does), so a conversion or extension that commits meanwhile either wins
/// before the update, which then skips that user, or waits for this transaction.
async fn expire_batch(conn: &mut AnyConnection, due: &[DueRow], now: Millis) -> Result<u64> {
    if due.is_empty() {
        return Ok(0);
    }
    let candidates: Vec<i64> = due.iter().map(|r| r.1).collect();
    entitlement::lock_users(&mut *conn, &candidates).await?;
    let sub_ids: Vec<i64> = due.iter().map(|r| r.0).collect();
    let sql = format!(
        "UPDATE subscriptions SET status = 'expired', updated_at = $1
         WHERE status = 'trial' AND trial_converted = 0 AND trial_ends <= $1 AND id IN ({})
         RETURNING user_id",
        placeholders(2, sub_ids.len())
    );
    let mut q = sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(sql)).bind(now);
    for id in &sub_ids {
        q = q.bind(*id);
    }
    let expired: std::collections::HashSet<i64> = q
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|(u,)| u)
        .collect();
    let due: Vec<&DueRow> = due.iter().filter(|r| expired.contains(&r.1)).collect();
    if due.is_empty() {
        return Ok(0);
    }
    let user_ids: Vec<i64> = due.iter().map(|r| r.1).collect();

    let sql = format!(
        "UPDATE trial_tracking SET expired = 1, expired_at = $1 WHERE expired = 0 AND user_id IN ({})",
        placeholders(2, user_ids.len())
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
    for id in &user_ids {
        q = q.bind(*id);
    }
    q.execute(&mut *conn).await?;

    // One row of five bound values per mail; `now` is $1 for all.
    let rows: Vec<String> = (0..due.len())
        .map(|i| {
            let b = 2 + i * 5;
            format!(
                "(${b}, ${}, ${}, 'trial_expired', ${}, ${}, 'pending', $1, $1, $1)",
                b + 1,
                b + 2,
                b + 3,
                b + 4
            )
        })
        .collect();
    let sql = format!(
        "INSERT INTO mail_outbox (uuid, user_id, to_address, template, context, dedupe_key, status,
                                  next_attempt_at, created_at, updated_at)
         VALUES {} ON CONFLICT (dedupe_key) DO NOTHING",
        rows.join(", ")
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
    for (_, user_id, email, first_name) in &due {
        q = q
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(*user_id)
            .bind(email.as_str())
            .bind(serde_json::json!({ "first_name": first_name }).to_string())
            .bind(format!("trial_expired:{user_id}"));
    }
    q.execute(&mut *conn).await?;

    devices::disable_all_for_users(conn, &user_ids, "trial_expired", now).await?;
    Ok(u64::try_from(user_ids.len()).unwrap_or(0))
}

/// A trial user becomes a paying customer of `plan`: the subscription converts, the trial
/// tracking records it, and the rest of the trial drip is cancelled.
pub async fn convert(
    conn: &mut AnyConnection,
    user_id: i64,
    plan: &str,
    now: Millis,
) -> Result<bool> {
    entitlement::lock_users(&mut *conn, &[user_id]).await?;
    let n = sqlx::query(
        "UPDATE subscriptions SET plan_type = $1, status = 'active', trial_converted = 1, converted_at = $2,
                                  current_period_start = $2, updated_at = $2
         WHERE user_id = $3 AND status = 'trial'",
    )
    .bind(plan)
    .bind(now)
    .bind(user_id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if n == 0 {
        return Ok(false);
    }
    sqlx::query("UPDATE trial_tracking SET converted = 1, converted_at = $1 WHERE user_id = $2")
        .bind(now)
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    tasks::cancel_pending(conn, user_id, workflows::TRIAL_SIGNUP, now).await?;
    Ok(true)
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TrialExtension {
    pub user_id: i64,
    pub trial_ends: String,
    /// Pending trial steps (mails, the conversion check) moved with the end.
    pub moved_steps: u64,
}

pub const MAX_EXTENSION_DAYS: i64 = 90;

/// The seed's "reply SAVE and I'll extend your trial": moves the trial end and every pending
/// trial step by `days`. Only a running trial can be extended.
pub async fn extend(
    conn: &mut AnyConnection,
    user_id: i64,
    days: i64,
    actor: Actor,
    ip: Option<IpAddr>,
    now: Millis,
) -> Result<TrialExtension> {
    if !(1..=MAX_EXTENSION_DAYS).contains(&days) {
        return Err(Error::Validation(vec![crate::error::FieldError::new(
            "days",
            "out_of_range",
            format!("days must be between 1 and {MAX_EXTENSION_DAYS}"),
        )]));
    }
    let by = days * DAY;
    entitlement::lock_users(&mut *conn, &[user_id]).await?;
    let row: Option<(i64,)> = sqlx::query_as(
        "UPDATE subscriptions SET trial_ends = trial_ends + $1, current_period_end = current_period_end + $1, updated_at = $2
         WHERE user_id = $3 AND status = 'trial' RETURNING trial_ends",
    )
    .bind(by)
    .bind(now)
    .bind(user_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((trial_ends,)) = row else {
        let exists: Option<(i64,)> = sqlx::query_as("SELECT id FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(&mut *conn)
            .await?;
        return Err(match exists {
            None => Error::NotFound("user"),
            Some(_) => Error::conflict(
                "not_on_trial",
                "this account has no running trial to extend",
            ),
        });
    };
    sqlx::query("UPDATE trial_tracking SET trial_ends = trial_ends + $1 WHERE user_id = $2")
        .bind(by)
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    let moved_steps =
        tasks::shift_pending(&mut *conn, user_id, workflows::TRIAL_SIGNUP, by, now).await?;
    audit::record(
        conn,
        audit::Entry {
            actor,
            action: "trial.extended",
            target_type: Some("user"),
            target_id: Some(user_id.to_string()),
            details: serde_json::json!({ "days": days, "trial_ends": trial_ends }),
            ip,
        },
        now,
    )
    .await?;
    Ok(TrialExtension {
        user_id,
        trial_ends: rfc3339(trial_ends),
        moved_steps,
    })
}
