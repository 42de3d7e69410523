//! Plans as data an operator can change, and the one function that changes a user's plan or
//! access (used by admins now and by payments later): upgrades convert a trial, downgrades and
//! ends disable the newest devices over the limit, and every device change is a peer change.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;
use utoipa::ToSchema;

use crate::audit::{self, Actor};
use crate::clock::Millis;
use crate::devices::entitlement;
use crate::error::{Error, FieldError, Result};
use crate::storage::Db;

use super::trials;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Plan {
    pub code: String,
    pub name: String,
    /// Null: unlimited.
    pub max_devices: Option<i64>,
    /// Null: every region.
    pub regional_identities: Option<i64>,
    pub price_cents: i64,
    pub currency: String,
    /// `month`, `year` or `none`.
    pub billing_period: String,
}

type PlanRow = (
    String,
    String,
    Option<i64>,
    Option<i64>,
    i64,
    String,
    String,
);

fn plan(r: PlanRow) -> Plan {
    Plan {
        code: r.0,
        name: r.1,
        max_devices: r.2,
        regional_identities: r.3,
        price_cents: r.4,
        currency: r.5,
        billing_period: r.6,
    }
}

const PLAN_COLUMNS: &str =
    "code, name, max_devices, regional_identities, price_cents, currency, billing_period";

/// The plans customers can buy.
pub async fn list_public(db: &Db) -> Result<Vec<Plan>> {
    let sql =
        format!("SELECT {PLAN_COLUMNS} FROM plans WHERE is_public = 1 ORDER BY sort_order, code");
    let rows: Vec<PlanRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(db.pool())
        .await?;
    Ok(rows.into_iter().map(plan).collect())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanUpdate {
    pub name: Option<String>,
    /// A number, or null for unlimited (omit to leave unchanged).
    #[serde(default, deserialize_with = "some_option")]
    #[schema(value_type = Option<i64>)]
    pub max_devices: Option<Option<i64>>,
    pub price_cents: Option<i64>,
}

/// Tells an absent field (None) from an explicit null (Some(None)).
fn some_option<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Option<i64>>, D::Error> {
    Option::<i64>::deserialize(d).map(Some)
}

/// An operator changes a plan's data. Existing devices are not touched: a lower limit applies
/// to new devices (and to each user's next plan change).
pub async fn update(
    db: &Db,
    code: &str,
    input: PlanUpdate,
    actor: Actor,
    ip: Option<IpAddr>,
    now: Millis,
) -> Result<Plan> {
    let mut problems = Vec::new();
    if let Some(name) = &input.name
        && (name.trim().is_empty() || name.chars().count() > 64)
    {
        problems.push(FieldError::new("name", "invalid", "1 to 64 characters"));
    }
    if let Some(Some(n)) = input.max_devices
        && n < 0
    {
        problems.push(FieldError::new(
            "max_devices",
            "invalid",
            "0 or more, or null for unlimited",
        ));
    }
    if input.price_cents.is_some_and(|p| p < 0) {
        problems.push(FieldError::new("price_cents", "invalid", "0 or more"));
    }
    if !problems.is_empty() {
        return Err(Error::Validation(problems));
    }
    let mut tx = db.begin_write().await?;
    let sql = format!(
        "UPDATE plans SET name = COALESCE($1, name),
                          max_devices = CASE WHEN $2 = 1 THEN $3 ELSE max_devices END,
                          price_cents = COALESCE($4, price_cents), updated_at = $5
         WHERE code = $6 RETURNING {PLAN_COLUMNS}"
    );
    let row: Option<PlanRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(input.name.as_deref().map(str::trim))
        .bind(i64::from(input.max_devices.is_some()))
        .bind(input.max_devices.flatten())
        .bind(input.price_cents)
        .bind(now)
        .bind(code)
        .fetch_optional(tx.conn())
        .await?;
    let updated = row.map(plan).ok_or(Error::NotFound("plan"))?;
    audit::record(
        tx.conn(),
        audit::Entry {
            actor,
            action: "plan.updated",
            target_type: Some("plan"),
            target_id: Some(code.to_owned()),
            details: serde_json::json!({ "max_devices": updated.max_devices, "price_cents": updated.price_cents }),
            ip,
        },
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(updated)
}

/// Puts a user on `plan`: a trial converts (`trial_converted`, `converted_at`); a current
/// subscription changes plan; without one, a new active subscription starts. Then the user's
/// devices are reconciled with the new limit.
pub async fn change_plan(
    conn: &mut AnyConnection,
    user_id: i64,
    plan: &str,
    now: Millis,
) -> Result<()> {
    entitlement::lock_users(&mut *conn, &[user_id]).await?;
    let exists: Option<(String,)> =
        sqlx::query_as("SELECT code FROM plans WHERE code = $1 AND code <> 'trial'")
            .bind(plan)
            .fetch_optional(&mut *conn)
            .await?;
    if exists.is_none() {
        return Err(Error::Validation(vec![FieldError::new(
            "plan",
            "invalid",
            "no such plan",
        )]));
    }
    if !trials::convert(&mut *conn, user_id, plan, now).await? {
        let changed = sqlx::query(
            "UPDATE subscriptions SET plan_type = $1, status = 'active', updated_at = $2
             WHERE user_id = $3 AND status IN ('active', 'past_due', 'suspended')",
        )
        .bind(plan)
        .bind(now)
        .bind(user_id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if changed == 0 {
            sqlx::query(
                "INSERT INTO subscriptions (user_id, plan_type, status, current_period_start, created_at, updated_at)
                 VALUES ($1, $2, 'active', $3, $3, $3)",
            )
            .bind(user_id)
            .bind(plan)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        }
    }
    entitlement::reconcile(conn, user_id, "plan_changed", now).await?;
    Ok(())
}

/// Suspends or restores an account: every device leaves (or returns to) its server, and a
/// suspension ends every login session.
pub async fn set_suspended(
    conn: &mut AnyConnection,
    user_id: i64,
    suspended: bool,
    now: Millis,
) -> Result<()> {
    entitlement::lock_users(&mut *conn, &[user_id]).await?;
    let (from, to) = if suspended {
        ("active", "suspended")
    } else {
        ("suspended", "active")
    };
    let n =
        sqlx::query("UPDATE users SET status = $1, updated_at = $2 WHERE id = $3 AND status = $4")
            .bind(to)
            .bind(now)
            .bind(user_id)
            .bind(from)
            .execute(&mut *conn)
            .await?
            .rows_affected();
    if n == 0 {
        let exists: Option<(String,)> = sqlx::query_as("SELECT status FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(&mut *conn)
            .await?;
        return Err(match exists {
            None => Error::NotFound("user"),
            Some((status,)) => {
                Error::conflict("account_status", format!("the account is {status}"))
            }
        });
    }
    if suspended {
        sqlx::query(
            "UPDATE auth_sessions SET revoked_at = $1, revoked_reason = 'suspended' WHERE user_id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    }
    entitlement::reconcile(
        conn,
        user_id,
        if suspended {
            "account_suspended"
        } else {
            "account_restored"
        },
        now,
    )
    .await?;
    Ok(())
}

/// An operator's plan change for a user; audited.
pub async fn admin_change_plan(
    db: &Db,
    user_id: i64,
    plan: &str,
    actor: Actor,
    ip: Option<IpAddr>,
    now: Millis,
) -> Result<()> {
    let mut tx = db.begin_write().await?;
    change_plan(tx.conn(), user_id, plan, now).await?;
    audit_user(
        tx.conn(),
        "user.plan_changed",
        user_id,
        serde_json::json!({ "plan": plan }),
        actor,
        ip,
        now,
    )
    .await?;
    tx.commit().await
}

/// An operator suspends or restores an account; audited.
pub async fn admin_set_suspended(
    db: &Db,
    user_id: i64,
    suspended: bool,
    actor: Actor,
    ip: Option<IpAddr>,
    now: Millis,
) -> Result<()> {
    let mut tx = db.begin_write().await?;
    set_suspended(tx.conn(), user_id, suspended, now).await?;
    let action = if suspended {
        "user.suspended"
    } else {
        "user.restored"
    };
    audit_user(
        tx.conn(),
        action,
        user_id,
        serde_json::json!({}),
        actor,
        ip,
        now,
    )
    .await?;
    tx.commit().await
}

async fn audit_user(
    conn: &mut AnyConnection,
    action: &'static str,
    user_id: i64,
    details: serde_json::Value,
    actor: Actor,
    ip: Option<IpAddr>,
    now: Millis,
) -> Result<()> {
    audit::record(
        conn,
        audit::Entry {
            actor,
            action,
            target_type: Some("user"),
            target_id: Some(user_id.to_string()),
            details,
            ip,
        },
        now,
    )
    .await
}
