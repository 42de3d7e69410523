//! The pool of pre-provisioned servers: nodes already enrolled and idle, handed to a buyer of a
//! dedicated server at once instead of waiting for a new instance to boot.
//!
//! A pool server is a `vpn_servers` row of type `dedicated` with no owner (so shared placement
//! never puts devices on it) plus its `server_pool` row. Claiming one is a guarded update, so
//! two buyers can never get the same server.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row as _};
use utoipa::ToSchema;

use crate::audit::{self, Actor};
use crate::clock::{Millis, rfc3339};
use crate::error::{Error, FieldError, Result};
use crate::storage::{Db, Engine, is_unique_violation};

const TIERS: &[&str] = &["shared", "dedicated", "enterprise"];
/// Statuses an operator may set; `provisioning` and `assigned` belong to orders.
const OPERATOR_STATUSES: &[&str] = &["available", "maintenance", "retired"];

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolInput {
    /// The server (from `POST /admin/servers`), normally with its agent enrolled.
    pub server_id: Option<i64>,
    /// Where it runs (`contabo`, `manual`, ...). Default `manual`.
    pub provider: Option<String>,
    /// The provider's id for it, if the provider has one.
    pub provider_instance_id: Option<String>,
    /// `dedicated` (default), `shared` or `enterprise`.
    pub tier: Option<String>,
    pub monthly_cost_cents: Option<i64>,
    /// Free-form facts such as `{"cpu": 4, "ram_gb": 8}`.
    pub specs: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolStatusInput {
    /// `available`, `maintenance` or `retired`.
    pub status: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PoolServerView {
    pub id: i64,
    pub server_id: Option<i64>,
    pub server_name: Option<String>,
    pub provider: String,
    pub provider_instance_id: Option<String>,
    pub region: String,
    pub ip_address: Option<String>,
    pub ipv6_address: Option<String>,
    pub status: String,
    pub tier: String,
    pub assigned_user_id: Option<i64>,
    pub assigned_at: Option<String>,
    pub monthly_cost_cents: Option<i64>,
    pub specs: serde_json::Value,
    /// The node's own status (`online` once its agent is connected).
    pub server_status: Option<String>,
    pub created_at: String,
}

/// A claimed pool server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    pub pool_id: i64,
    pub server_id: i64,
}

/// Puts an idle server into the pool; the oldest order waiting in its region takes it.
pub async fn add(
    db: &Db,
    input: PoolInput,
    actor: Actor,
    ip: Option<IpAddr>,
    now: Millis,
) -> Result<PoolServerView> {
    let mut problems = Vec::new();
    let provider = input.provider.as_deref().unwrap_or("manual").trim();
    if provider.is_empty()
        || provider.len() > 32
        || !provider
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        problems.push(FieldError::new(
            "provider",
            "invalid",
            "1 to 32 lowercase letters, digits or '-'",
        ));
    }
    let tier = input.tier.as_deref().unwrap_or("dedicated");
    if !TIERS.contains(&tier) {
        problems.push(FieldError::new(
            "tier",
            "invalid",
            "shared, dedicated or enterprise",
        ));
    }
    if input.monthly_cost_cents.is_some_and(|c| c < 0) {
        problems.push(FieldError::new(
            "monthly_cost_cents",
            "invalid",
            "0 or more",
        ));
    }
    if input
        .provider_instance_id
        .as_deref()
        .is_some_and(|p| p.trim().is_empty() || p.len() > 128)
    {
        problems.push(FieldError::new(
            "provider_instance_id",
            "invalid",
            "1 to 128 characters",
        ));
    }
    let specs = input.specs.unwrap_or_else(|| serde_json::json!({}));
    if !specs.is_object() {
        problems.push(FieldError::new("specs", "invalid", "a JSON object"));
    }
    let Some(server_id) = input.server_id else {
        problems.push(FieldError::new(
            "server_id",
            "required",
            "the server to pool",
        ));
        return Err(Error::Validation(problems));
    };
    if !problems.is_empty() {
        return Err(Error::Validation(problems));
    }

    let mut tx = db.begin_write().await?;
    let server: Option<(String, String, String, Option<i64>, i64)> = sqlx::query_as(
        "SELECT s.region, s.endpoint_host, s.status, s.dedicated_user_id,
                (SELECT COUNT(*) FROM devices d WHERE d.server_id = s.id)
         FROM vpn_servers s WHERE s.id = $1",
    )
    .bind(server_id)
    .fetch_optional(tx.conn())
    .await?;
    let Some((region, host, status, owner, devices)) = server else {
        return Err(Error::NotFound("server"));
    };
    if status == "retired" || owner.is_some() || devices > 0 {
        return Err(Error::conflict(
            "server_in_use",
            "only an idle server (not retired, no owner, no devices) can join the pool",
        ));
    }
    // A pooled server takes no shared devices: it waits for its buyer.
    sqlx::query(
        "UPDATE vpn_servers SET server_type = 'dedicated', dedicated_user_id = NULL, updated_at = $1 WHERE id = $2",
    )
    .bind(now)
    .bind(server_id)
    .execute(tx.conn())
    .await?;
    let ip_address = host.parse::<IpAddr>().ok().map(|a| a.to_string());
    let inserted: std::result::Result<(i64,), sqlx::Error> = sqlx::query_as(
        "INSERT INTO server_pool (provider, provider_instance_id, region, ip_address, status, tier,
                                  monthly_cost_cents, specs, vpn_server_id, created_at, updated_at)
         VALUES ($1, $2, $3, $4, 'available', $5, $6, $7, $8, $9, $9) RETURNING id",
    )
    .bind(provider)
    .bind(input.provider_instance_id.as_deref().map(str::trim))
    .bind(&region)
    .bind(ip_address)
    .bind(tier)
    .bind(input.monthly_cost_cents)
    .bind(specs.to_string())
    .bind(server_id)
    .bind(now)
    .fetch_one(tx.conn())
    .await;
    let (id,) = match inserted {
        Ok(row) => row,
        Err(e) if is_unique_violation(&e, "") => {
            return Err(Error::conflict(
                "already_pooled",
                "this server (or provider instance) is already in the pool",
            ));
        }
        Err(e) => return Err(e.into()),
    };
    audit::record(
        tx.conn(),
        audit::Entry {
            actor,
            action: "pool.added",
            target_type: Some("pool_server"),
            target_id: Some(id.to_string()),
            details: serde_json::json!({ "server_id": server_id, "region": region, "tier": tier }),
            ip,
        },
        now,
    )
    .await?;
    // An order already waiting in the region takes it at once.
    super::orders::serve_waiting(tx.conn(), db.engine(), &region, now).await?;
    let view = get(tx.conn(), id).await?;
    tx.commit().await?;
    Ok(view)
}

/// Takes a server out of service or back (never one that is assigned or being provisioned).
pub async fn set_status(
    db: &Db,
    id: i64,
    input: PoolStatusInput,
    actor: Actor,
    ip: Option<IpAddr>,
    now: Millis,
) -> Result<PoolServerView> {
    if !OPERATOR_STATUSES.contains(&input.status.as_str()) {
        return Err(Error::Validation(vec![FieldError::new(
            "status",
            "invalid",
            "available, maintenance or retired",
        )]));
    }
    let mut tx = db.begin_write().await?;
    let changed = sqlx::query(
        "UPDATE server_pool SET status = $1, updated_at = $2
         WHERE id = $3 AND status IN ('available', 'maintenance')",
    )
    .bind(&input.status)
    .bind(now)
    .bind(id)
    .execute(tx.conn())
    .await?
    .rows_affected();
    let view = get(tx.conn(), id).await?;
    if changed == 0 {
        return Err(Error::conflict(
            "pool_server_busy",
            format!("a pool server that is {} cannot be changed", view.status),
        ));
    }
    audit::record(
        tx.conn(),
        audit::Entry {
            actor,
            action: "pool.status",
            target_type: Some("pool_server"),
            target_id: Some(id.to_string()),
            details: serde_json::json!({ "status": input.status }),
            ip,
        },
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(view)
}

/// Claims the oldest available server of `tier` in `region` for `user_id`, and makes its node
/// that user's dedicated server. `None` if there is none: the caller creates one.
pub async fn claim(
    conn: &mut AnyConnection,
    engine: Engine,
    user_id: i64,
    region: &str,
    tier: &str,
    now: Millis,
) -> Result<Option<Claimed>> {
    // The outer `status = 'available'` is re-checked under the row lock on PostgreSQL (READ
    // COMMITTED), and SKIP LOCKED lets a second buyer take the next server instead of waiting;
    // on SQLite the write transaction is the only one.
    let sql = match engine {
        Engine::Postgres => {
            "UPDATE server_pool SET status = 'assigned', assigned_user_id = $1, assigned_at = $2, updated_at = $2
             WHERE status = 'available' AND id =
               (SELECT id FROM server_pool WHERE status = 'available' AND tier = $3 AND region = $4
                  AND vpn_server_id IS NOT NULL
                ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING id, vpn_server_id"
        }
        Engine::Sqlite => {
            "UPDATE server_pool SET status = 'assigned', assigned_user_id = $1, assigned_at = $2, updated_at = $2
             WHERE status = 'available' AND id =
               (SELECT id FROM server_pool WHERE status = 'available' AND tier = $3 AND region = $4
                  AND vpn_server_id IS NOT NULL
                ORDER BY created_at, id LIMIT 1)
             RETURNING id, vpn_server_id"
        }
    };
    let claimed: Option<(i64, i64)> = sqlx::query_as(sql)
        .bind(user_id)
        .bind(now)
        .bind(tier)
        .bind(region)
        .fetch_optional(&mut *conn)
        .await?;
    let Some((pool_id, server_id)) = claimed else {
        return Ok(None);
    };
    sqlx::query(
        "UPDATE vpn_servers SET server_type = 'dedicated', dedicated_user_id = $1, updated_at = $2 WHERE id = $3",
    )
    .bind(user_id)
    .bind(now)
    .bind(server_id)
    .execute(&mut *conn)
    .await?;
    Ok(Some(Claimed { pool_id, server_id }))
}

const SELECT: &str =
    "SELECT p.id, p.vpn_server_id, s.name, p.provider, p.provider_instance_id, p.region,
        p.ip_address, p.ipv6_address, p.status, p.tier, p.assigned_user_id, p.assigned_at,
        p.monthly_cost_cents, p.specs, s.status, p.created_at
     FROM server_pool p LEFT JOIN vpn_servers s ON s.id = p.vpn_server_id";

fn view(r: &AnyRow) -> std::result::Result<PoolServerView, sqlx::Error> {
    let specs: String = r.try_get(13)?;
    Ok(PoolServerView {
        id: r.try_get(0)?,
        server_id: r.try_get(1)?,
        server_name: r.try_get(2)?,
        provider: r.try_get(3)?,
        provider_instance_id: r.try_get(4)?,
        region: r.try_get(5)?,
        ip_address: r.try_get(6)?,
        ipv6_address: r.try_get(7)?,
        status: r.try_get(8)?,
        tier: r.try_get(9)?,
        assigned_user_id: r.try_get(10)?,
        assigned_at: r.try_get::<Option<i64>, _>(11)?.map(rfc3339),
        monthly_cost_cents: r.try_get(12)?,
        specs: serde_json::from_str(&specs).unwrap_or_else(|_| serde_json::json!({})),
        server_status: r.try_get(14)?,
        created_at: rfc3339(r.try_get(15)?),
    })
}

pub async fn get(conn: &mut AnyConnection, id: i64) -> Result<PoolServerView> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("{SELECT} WHERE p.id = $1")))
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or(Error::NotFound("pool server"))?;
    Ok(view(&row)?)
}

pub async fn list(db: &Db) -> Result<Vec<PoolServerView>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!("{SELECT} ORDER BY p.id")))
        .fetch_all(db.pool())
        .await?;
    Ok(rows
        .iter()
        .map(view)
        .collect::<std::result::Result<_, _>>()?)
}
