//! The VIP list. A listed address gets the seed's VIP treatment (business plan, a lifetime
//! subscription, a badge by tier) only once its owner has verified it: the seed granted it to
//! whoever registered the address first.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;
use utoipa::ToSchema;

use crate::audit::{self, Actor};
use crate::automation::workflows;
use crate::clock::{Millis, rfc3339};
use crate::devices::entitlement;
use crate::error::{Error, Result};

use super::Accounts;
use super::validate::{self, Problems};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VipTier {
    VipBasic,
    VipDedicated,
}

impl VipTier {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "vip_basic" => Some(Self::VipBasic),
            "vip_dedicated" => Some(Self::VipDedicated),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::VipBasic => "vip_basic",
            Self::VipDedicated => "vip_dedicated",
        }
    }

    /// The seed's badges.
    pub fn badge(self) -> &'static str {
        match self {
            Self::VipBasic => "\u{2b50} VIP",
            Self::VipDedicated => "\u{1f451} VIP Dedicated",
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VipEntry {
    pub email: String,
    pub tier: VipTier,
    pub note: String,
    /// Whether a verified account holds the status now.
    pub granted: bool,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VipInput {
    pub email: Option<String>,
    /// `vip_basic` or `vip_dedicated`.
    pub tier: Option<String>,
    pub note: Option<String>,
}

const NOTE_MAX_CHARS: usize = 500;

impl Accounts {
    pub async fn list_vips(&self) -> Result<Vec<VipEntry>> {
        let rows: Vec<(String, String, String, i64, i64, Option<String>)> = sqlx::query_as(
            "SELECT v.email, v.tier, v.note, v.created_at, v.updated_at, u.vip_tier
             FROM vip_list v LEFT JOIN users u ON u.email = v.email
             ORDER BY v.email",
        )
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(email, tier, note, created, updated, held)| {
                Some(VipEntry {
                    email,
                    tier: VipTier::parse(&tier)?,
                    note,
                    granted: held.is_some(),
                    created_at: rfc3339(created),
                    updated_at: rfc3339(updated),
                })
            })
            .collect())
    }

    /// Adds an address or changes its tier and note; returns the entry and whether it is new.
    /// A verified account with that address gets (or changes) its VIP status at once.
    pub async fn upsert_vip(
        &self,
        input: VipInput,
        actor: Actor,
        ip: Option<IpAddr>,
    ) -> Result<(VipEntry, bool)> {
        let mut problems = Problems::default();
        let email = validate::email(input.email.as_deref(), &mut problems);
        let tier = match input.tier.as_deref() {
            None | Some("") => {
                problems.push("tier", "required", "Tier is required");
                None
            }
            Some(t) => VipTier::parse(t).or_else(|| {
                problems.push("tier", "invalid", "Tier must be vip_basic or vip_dedicated");
                None
            }),
        };
        let note = input.note.unwrap_or_default().trim().to_owned();
        if note.chars().count() > NOTE_MAX_CHARS {
            problems.push(
                "note",
                "too_long",
                format!("Must be at most {NOTE_MAX_CHARS} characters"),
            );
        }
        problems.finish()?;
        let (Some(email), Some(tier)) = (email, tier) else {
            return Err(Error::internal("validated input missing"));
        };

        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        let existed: Option<(i64,)> = sqlx::query_as("SELECT id FROM vip_list WHERE email = $1")
            .bind(&email)
            .fetch_optional(tx.conn())
            .await?;
        sqlx::query(
            "INSERT INTO vip_list (email, tier, note, added_by, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $5)
             ON CONFLICT (email) DO UPDATE SET tier = excluded.tier, note = excluded.note, updated_at = excluded.updated_at",
        )
        .bind(&email)
        .bind(tier.as_str())
        .bind(&note)
        .bind(match actor {
            Actor::User(id) => Some(id),
            Actor::Cli | Actor::System => None,
        })
        .bind(now)
        .execute(tx.conn())
        .await?;
        // Lock the account (after listing the address) before reading its verification: a
        // verification committing meanwhile is then either seen here or sees the new entry.
        let account: Option<(i64,)> = sqlx::query_as("SELECT id FROM users WHERE email = $1")
            .bind(&email)
            .fetch_optional(tx.conn())
            .await?;
        if let Some((user_id,)) = account {
            entitlement::lock_users(tx.conn(), &[user_id]).await?;
            let verified: Option<(i64,)> = sqlx::query_as(
                "SELECT id FROM users WHERE id = $1 AND email_verified_at IS NOT NULL",
            )
            .bind(user_id)
            .fetch_optional(tx.conn())
            .await?;
            if verified.is_some() {
                grant(tx.conn(), user_id, tier, now).await?;
            }
        }
        audit::record(
            tx.conn(),
            audit::Entry {
                actor,
                action: if existed.is_some() {
                    "vip.updated"
                } else {
                    "vip.added"
                },
                target_type: Some("vip"),
                target_id: Some(email.clone()),
                details: serde_json::json!({ "tier": tier.as_str(), "note": note }),
                ip,
            },
            now,
        )
        .await?;
        tx.commit().await?;
        let entry = self
            .list_vips()
            .await?
            .into_iter()
            .find(|v| v.email == email)
            .ok_or(Error::NotFound("VIP entry"))?;
        Ok((entry, existed.is_none()))
    }

    /// Removes an address. An account holding VIP status through it loses the status and the
    /// lifetime subscription that came with it (a paid subscription is left alone).
    pub async fn remove_vip(&self, email: &str, actor: Actor, ip: Option<IpAddr>) -> Result<()> {
        let email = email.trim().to_ascii_lowercase();
        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        let removed = sqlx::query("DELETE FROM vip_list WHERE email = $1")
            .bind(&email)
            .execute(tx.conn())
            .await?
            .rows_affected();
        if removed == 0 {
            return Err(Error::NotFound("VIP entry"));
        }
        let holder: Option<(i64,)> = sqlx::query_as(
            "UPDATE users SET vip_tier = NULL, updated_at = $1
             WHERE email = $2 AND vip_tier IS NOT NULL RETURNING id",
        )
        .bind(now)
        .bind(&email)
        .fetch_optional(tx.conn())
        .await?;
        if let Some((user_id,)) = holder {
            sqlx::query(
                "UPDATE subscriptions SET status = 'cancelled', current_period_end = $1, updated_at = $1
                 WHERE user_id = $2 AND status = 'active' AND provider IS NULL AND current_period_end IS NULL",
            )
            .bind(now)
            .bind(user_id)
            .execute(tx.conn())
            .await?;
            // Without the lifetime grant the devices follow what is left (usually nothing).
            entitlement::reconcile(tx.conn(), user_id, "vip_revoked", now).await?;
        }
        audit::record(
            tx.conn(),
            audit::Entry {
                actor,
                action: "vip.removed",
                target_type: Some("vip"),
                target_id: Some(email),
                details: serde_json::json!({ "revoked_from_user": holder.map(|(id,)| id) }),
                ip,
            },
            now,
        )
        .await?;
        tx.commit().await
    }
}

/// For a verified account: grants VIP status if its address is listed.
pub(crate) async fn apply_if_listed(
    conn: &mut AnyConnection,
    user_id: i64,
    email: &str,
    now: Millis,
) -> Result<()> {
    let listed: Option<(String,)> = sqlx::query_as("SELECT tier FROM vip_list WHERE email = $1")
        .bind(email)
        .fetch_optional(&mut *conn)
        .await?;
    match listed.and_then(|(t,)| VipTier::parse(&t)) {
        Some(tier) => grant(conn, user_id, tier, now).await,
        None => Ok(()),
    }
}

/// The seed's VIP treatment: business plan, lifetime (no end), status by tier. A running trial
/// becomes the lifetime subscription; a paid subscription is left as it is.
async fn grant(conn: &mut AnyConnection, user_id: i64, tier: VipTier, now: Millis) -> Result<()> {
    let previous: Option<(Option<String>,)> =
        sqlx::query_as("SELECT vip_tier FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(&mut *conn)
            .await?;
    sqlx::query("UPDATE users SET vip_tier = $1, updated_at = $2 WHERE id = $3")
        .bind(tier.as_str())
        .bind(now)
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE subscriptions SET plan_type = 'business', status = 'active', current_period_start = $1,
                                  current_period_end = NULL, updated_at = $1
         WHERE user_id = $2 AND status = 'trial'",
    )
    .bind(now)
    .bind(user_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO subscriptions (user_id, plan_type, status, current_period_start, current_period_end, created_at, updated_at)
         SELECT $1, 'business', 'active', $2, NULL, $2, $2
         WHERE NOT EXISTS (SELECT 1 FROM subscriptions
                           WHERE user_id = $1 AND status IN ('trial', 'active', 'past_due', 'suspended'))",
    )
    .bind(user_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let previous = previous.and_then(|(t,)| t);
    if previous.is_none() {
        workflows::trigger_vip_signup(&mut *conn, user_id, now).await?;
    }
    if previous.as_deref() != Some(tier.as_str()) {
        audit::record(
            conn,
            audit::Entry {
                actor: Actor::System,
                action: "vip.granted",
                target_type: Some("user"),
                target_id: Some(user_id.to_string()),
                details: serde_json::json!({ "tier": tier.as_str() }),
                ip: None,
            },
            now,
        )
        .await?;
    }
    // Devices disabled earlier (an expired trial) come back within the new entitlement.
    entitlement::reconcile(conn, user_id, "vip_granted", now).await?;
    Ok(())
}
