//! What a buyer sees of their dedicated servers: each order's progress in the customer's terms,
//! and once it is handed over, the server to connect to. The operator's view (`orders`) keeps
//! the provider's ids, leases and errors; none of that is shown here.

use serde::Serialize;
use sqlx::Row as _;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use crate::clock::{Millis, rfc3339};
use crate::error::Result;
use crate::storage::Db;

/// Where a dedicated-server purchase stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PurchaseStatus {
    /// Paid; the server is being set up (minutes when one waits in the pool, longer when a new
    /// machine is created).
    SettingUp,
    /// Handed over: `server` says where it is.
    Ready,
    /// Setting up takes longer than it should; the team has been told and is on it.
    Delayed,
    /// The subscription ended and the server was given back.
    Released,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DedicatedPurchase {
    pub order_id: i64,
    pub status: PurchaseStatus,
    /// The region asked for, such as `eu-de`.
    pub region: Option<String>,
    pub ordered_at: String,
    pub ready_at: Option<String>,
    /// When a cancelled subscription's paid period ends: the server is given back then.
    pub ends_at: Option<String>,
    pub released_at: Option<String>,
    /// Only while it is the buyer's.
    pub server: Option<DedicatedServer>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DedicatedServer {
    /// As `server.id` on the buyer's devices.
    pub id: String,
    /// Region and country, such as `eu-de (Germany)`.
    pub location: String,
    /// The address WireGuard connects to, and its port.
    pub address: String,
    pub port: i64,
    /// Whether its node is connected to the control plane now.
    pub online: bool,
    /// The buyer's devices on it.
    pub devices: i64,
}

/// The buyer's dedicated-server orders, newest first.
pub async fn of_user(db: &Db, user_id: i64) -> Result<Vec<DedicatedPurchase>> {
    // The paid period's end matters only once the subscription is cancelled: that is when the
    // servers go back.
    let ends: Option<(Option<Millis>,)> = sqlx::query_as(
        "SELECT current_period_end FROM subscriptions
         WHERE user_id = $1 AND plan_type = 'dedicated' AND cancel_at_period_end = 1
           AND status IN ('active', 'past_due', 'suspended')",
    )
    .bind(user_id)
    .fetch_optional(db.pool())
    .await?;
    let ends_at = ends.and_then(|(end,)| end).map(rfc3339);
    let rows = sqlx::query(
        "SELECT q.id, q.status, q.region_preference, q.created_at, q.completed_at,
                COALESCE(q.released_at, q.release_requested_at),
                s.uuid, s.region, s.country, s.endpoint_host, s.endpoint_port, s.status,
                (SELECT COUNT(*) FROM devices d WHERE d.server_id = s.id AND d.user_id = q.user_id)
         FROM server_provisioning_queue q
         LEFT JOIN vpn_servers s ON s.id = q.vpn_server_id AND s.dedicated_user_id = q.user_id
         WHERE q.user_id = $1 ORDER BY q.id DESC",
    )
    .bind(user_id)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|row| purchase(row, ends_at.as_deref()))
        .collect::<std::result::Result<_, _>>()
        .map_err(Into::into)
}

fn purchase(
    row: &AnyRow,
    ends_at: Option<&str>,
) -> std::result::Result<DedicatedPurchase, sqlx::Error> {
    let order_status: String = row.try_get(1)?;
    let released: Option<Millis> = row.try_get(5)?;
    // A release also stops an order still being set up (as `failed`): it reads as released.
    let status = match (released, order_status.as_str()) {
        (Some(_), _) => PurchaseStatus::Released,
        (None, "completed") => PurchaseStatus::Ready,
        (None, "failed") => PurchaseStatus::Delayed,
        (None, _) => PurchaseStatus::SettingUp,
    };
    let server = match (status, row.try_get::<Option<String>, _>(6)?) {
        (PurchaseStatus::Ready, Some(id)) => {
            let (region, country): (String, String) = (row.try_get(7)?, row.try_get(8)?);
            Some(DedicatedServer {
                id,
                location: format!("{region} ({country})"),
                address: row.try_get(9)?,
                port: row.try_get(10)?,
                online: row.try_get::<String, _>(11)? == "online",
                devices: row.try_get(12)?,
            })
        }
        _ => None,
    };
    Ok(DedicatedPurchase {
        order_id: row.try_get(0)?,
        status,
        region: row.try_get(2)?,
        ordered_at: rfc3339(row.try_get(3)?),
        ready_at: row.try_get::<Option<Millis>, _>(4)?.map(rfc3339),
        ends_at: (status != PurchaseStatus::Released)
            .then(|| ends_at.map(str::to_owned))
            .flatten(),
        released_at: released.map(rfc3339),
        server,
    })
}
