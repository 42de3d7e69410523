//! What a user may have connected: the seed's `checkTrialLimits`, read inside the transaction
//! that acts on it, and the reconciliation that makes devices match it after any change of
//! plan or state (oldest devices stay, the newest over the limit are disabled, and every
//! disabled or re-enabled device is a peer change for its server).

use serde_json::{Map, Value, json};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row as _};

use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::storage::placeholders;

use super::peers::{self, Op, PeerChange};

#[derive(Debug)]
pub enum Entitlement {
    /// A VIP, or a plan without a device limit.
    Unlimited {
        is_vip: bool,
    },
    Limited(i64),
    /// No device may be connected; the error explains why.
    Denied(Error),
}

impl Entitlement {
    pub fn allowed(&self) -> Option<i64> {
        match self {
            Self::Unlimited { .. } => None,
            Self::Limited(n) => Some(*n),
            Self::Denied(_) => Some(0),
        }
    }
}

fn refused(code: &'static str, message: &str, extra: Value) -> Error {
    let extra = match extra {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    Error::Refused {
        code,
        message: message.to_owned(),
        extra,
    }
}

/// Serializes every change to these users' access (device adds and deletes, plan changes,
/// suspension, VIP changes, trial expiry) on PostgreSQL by locking their rows, in id order,
/// for the rest of the transaction; SQLite's single writer already serializes them. Always
/// taken before any server row, so locks are acquired in one order everywhere. `NO KEY
/// UPDATE` leaves foreign-key inserts that reference the user (sessions, audit) unblocked.
pub async fn lock_users(conn: &mut AnyConnection, user_ids: &[i64]) -> Result<()> {
    if user_ids.is_empty() || conn.backend_name() != "PostgreSQL" {
        return Ok(());
    }
    let mut ids = user_ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let sql = format!(
        "SELECT id FROM users WHERE id IN ({}) ORDER BY id FOR NO KEY UPDATE",
        placeholders(1, ids.len())
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for id in &ids {
        q = q.bind(*id);
    }
    q.execute(conn).await?;
    Ok(())
}

/// The user's entitlement and the devices counting against it (everything not disabled), in
/// one row; `$1` is the user. Read with [`from_row`].
pub(super) const QUERY: &str =
    "SELECT u.status AS user_status, u.vip_tier, s.plan_type, s.status AS subscription_status,
            s.trial_ends, p.max_devices,
            (SELECT COUNT(*) FROM devices d WHERE d.user_id = u.id AND d.status <> 'disabled') AS counted
     FROM users u
     LEFT JOIN subscriptions s ON s.id = (SELECT MAX(id) FROM subscriptions WHERE user_id = u.id)
     LEFT JOIN plans p ON p.code = s.plan_type
     WHERE u.id = $1";
/// How many columns [`QUERY`] has.
pub(super) const COLUMNS: usize = 7;

/// The entitlement and the counted devices from [`QUERY`]'s columns, from `first` on.
pub(super) fn from_row(row: &AnyRow, first: usize, now: Millis) -> Result<(Entitlement, i64)> {
    let verdict = judge(
        row.try_get(first)?,
        row.try_get(first + 1)?,
        row.try_get(first + 2)?,
        row.try_get(first + 3)?,
        row.try_get(first + 4)?,
        row.try_get(first + 5)?,
        now,
    );
    Ok((verdict, row.try_get(first + 6)?))
}

/// The user's entitlement and the devices counting against it.
pub async fn entitlement(
    conn: &mut AnyConnection,
    user_id: i64,
    now: Millis,
) -> Result<(Entitlement, i64)> {
    let row = sqlx::query(QUERY)
        .bind(user_id)
        .fetch_optional(conn)
        .await?
        .ok_or(Error::NotFound("user"))?;
    from_row(&row, 0, now)
}

/// What a user's account state allows.
fn judge(
    user_status: String,
    vip: Option<String>,
    plan: Option<String>,
    status: Option<String>,
    trial_ends: Option<i64>,
    max_devices: Option<i64>,
    now: Millis,
) -> Entitlement {
    if user_status != "active" {
        return Entitlement::Denied(refused(
            "account_suspended",
            "This account is suspended.",
            json!({}),
        ));
    }
    if vip.is_some() {
        return Entitlement::Unlimited { is_vip: true };
    }
    let (Some(plan), Some(status)) = (plan, status) else {
        return Entitlement::Denied(refused(
            "no_subscription",
            "No subscription found.",
            json!({}),
        ));
    };
    let trial_over =
        plan == "trial" && (status == "expired" || trial_ends.is_some_and(|end| end <= now));
    if trial_over {
        return Entitlement::Denied(refused(
            "trial_expired",
            "Your free trial has expired. Please upgrade to continue.",
            json!({ "trial_expired": true, "upgrade_required": true, "upgrade_url": "/dashboard/billing" }),
        ));
    }
    if !["trial", "active", "past_due"].contains(&status.as_str()) {
        return Entitlement::Denied(refused(
            "subscription_inactive",
            &format!("Your subscription is {status}. Renew it to connect devices."),
            json!({ "subscription_status": status, "upgrade_required": true }),
        ));
    }
    match max_devices {
        None => Entitlement::Unlimited { is_vip: false },
        Some(n) => Entitlement::Limited(n),
    }
}

/// Devices that count against the limit (everything not disabled).
pub async fn active_devices(conn: &mut AnyConnection, user_id: i64) -> Result<i64> {
    let (n,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM devices WHERE user_id = $1 AND status <> 'disabled'")
            .bind(user_id)
            .fetch_one(conn)
            .await?;
    Ok(n)
}

pub fn limit_reached(current: i64, max: i64) -> Error {
    refused(
        "device_limit_reached",
        &format!("Device limit reached ({max}). Upgrade to add more devices."),
        json!({ "current_devices": current, "max_devices": max, "upgrade_required": true }),
    )
}

type DeviceRow = (i64, i64, String, String, Option<String>, String);

/// Makes a user's devices match their entitlement. Returns (disabled, re-enabled).
pub async fn reconcile(
    conn: &mut AnyConnection,
    user_id: i64,
    reason: &'static str,
    now: Millis,
) -> Result<(u64, u64)> {
    lock_users(&mut *conn, &[user_id]).await?;
    let allowed = entitlement(&mut *conn, user_id, now).await?.0.allowed();
    let devices: Vec<DeviceRow> = sqlx::query_as(
        "SELECT id, server_id, public_key, ipv4_address, ipv6_address, status FROM devices
         WHERE user_id = $1 ORDER BY created_at, id",
    )
    .bind(user_id)
    .fetch_all(&mut *conn)
    .await?;
    let keep = allowed.map_or(devices.len(), |n| usize::try_from(n).unwrap_or(0));
    let mut changes = Vec::new();
    let (mut disabled, mut enabled) = (0, 0);
    for (i, (id, server_id, key, ipv4, ipv6, status)) in devices.into_iter().enumerate() {
        let should_run = i < keep;
        let running = status != "disabled";
        if should_run == running {
            continue;
        }
        let (new_status, disabled_reason, op) = if should_run {
            enabled += 1;
            ("pending", None, Op::Upsert)
        } else {
            disabled += 1;
            ("disabled", Some(reason), Op::Remove)
        };
        sqlx::query(
            "UPDATE devices SET status = $1, disabled_reason = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(new_status)
        .bind(disabled_reason)
        .bind(now)
        .bind(id)
        .execute(&mut *conn)
        .await?;
        changes.push(PeerChange {
            server_id,
            op,
            device_id: Some(id),
            allowed_ips: should_run.then(|| peers::allowed_ips(&ipv4, ipv6.as_deref())),
            public_key: key,
            old_public_key: None,
            reason,
        });
    }
    peers::record(conn, &changes, now).await?;
    Ok((disabled, enabled))
}

/// Disables every enabled device of these users (e.g. expired trials), recording a peer
/// removal for each. The one path by which access ends in bulk.
pub async fn disable_all_for_users(
    conn: &mut AnyConnection,
    user_ids: &[i64],
    reason: &'static str,
    now: Millis,
) -> Result<u64> {
    if user_ids.is_empty() {
        return Ok(0);
    }
    lock_users(&mut *conn, user_ids).await?;
    let sql = format!(
        "SELECT id, server_id, public_key FROM devices WHERE status <> 'disabled' AND user_id IN ({}) ORDER BY id",
        placeholders(1, user_ids.len())
    );
    let mut q = sqlx::query_as::<_, (i64, i64, String)>(sqlx::AssertSqlSafe(sql));
    for id in user_ids {
        q = q.bind(*id);
    }
    let devices = q.fetch_all(&mut *conn).await?;
    if devices.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "UPDATE devices SET status = 'disabled', disabled_reason = $1, updated_at = $2 WHERE id IN ({})",
        placeholders(3, devices.len())
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(reason).bind(now);
    for (id, _, _) in &devices {
        q = q.bind(*id);
    }
    q.execute(&mut *conn).await?;
    let changes: Vec<PeerChange> = devices
        .into_iter()
        .map(|(id, server_id, public_key)| PeerChange {
            server_id,
            op: Op::Remove,
            device_id: Some(id),
            public_key,
            old_public_key: None,
            allowed_ips: None,
            reason,
        })
        .collect();
    peers::record(conn, &changes, now).await?;
    Ok(u64::try_from(changes.len()).unwrap_or(0))
}
