//! Dedicated-server orders (`server_provisioning_queue`): one per payment (a database
//! constraint), served from the pool when a server is waiting in the buyer's region, otherwise
//! left `pending` for a new instance.
//!
//! Statuses, as in the seed: `pending` (no server yet), `provisioning` (an instance is being
//! created), `configuring` (a server is assigned and its agent must be connected), `completed`,
//! `failed` (with its reason; an operator can retry).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row as _};
use utoipa::ToSchema;

use serde_json::json;

use crate::accounts;
use crate::audit::{self, Actor};
use crate::automation::outbox::{self, OutgoingMail};
use crate::billing::plans;
use crate::clock::{Millis, rfc3339};
use crate::error::{Error, FieldError, Result};
use crate::servers::{country_of, is_region_name};
use crate::storage::{Db, Engine};

use super::pool::{self, Claimed};

/// The plan a dedicated server is sold as.
pub const DEDICATED_PLAN: &str = "dedicated";

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderView {
    pub id: i64,
    pub user_id: i64,
    pub payment_id: i64,
    pub plan_type: String,
    pub region: Option<String>,
    pub status: String,
    pub pool_server_id: Option<i64>,
    pub server_id: Option<i64>,
    pub provider_display_name: Option<String>,
    /// The provider's id for the instance created for this order.
    pub provider_instance_id: Option<String>,
    /// The instance's public address, once it has one.
    pub ip_address: Option<String>,
    pub error_message: Option<String>,
    /// Operator retries so far.
    pub attempt: i64,
    /// When the order fails if its server is not connected by then.
    pub deadline_at: Option<String>,
    /// When the server was given back after the buyer's subscription ended.
    pub released_at: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
}

/// An order an operator records for a payment made outside PayPal (a bank transfer, say).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ManualOrderInput {
    pub user_id: Option<i64>,
    /// Where the server should be, such as `us-east`.
    pub region: Option<String>,
    /// What was paid; default: the dedicated plan's price.
    pub amount_cents: Option<i64>,
    /// The operator's reference for the payment (unique); default: generated.
    pub reference: Option<String>,
}

/// Records an order for `payment_id` (a second call for the same payment returns the first
/// order) and serves it from the pool if it can. Returns the order and whether it is new.
pub async fn place(
    conn: &mut AnyConnection,
    engine: Engine,
    user_id: i64,
    payment_id: i64,
    region: &str,
    now: Millis,
) -> Result<(OrderView, bool)> {
    // ON CONFLICT keeps a replayed payment from ordering twice without aborting the
    // transaction (PostgreSQL aborts it on a failed INSERT).
    let inserted: Option<(i64,)> = sqlx::query_as(
        "INSERT INTO server_provisioning_queue (user_id, payment_id, plan_type, region_preference, status,
                                                created_at, updated_at)
         VALUES ($1, $2, $3, $4, 'pending', $5, $5)
         ON CONFLICT (payment_id) DO NOTHING RETURNING id",
    )
    .bind(user_id)
    .bind(payment_id)
    .bind(DEDICATED_PLAN)
    .bind(region)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((id,)) = inserted else {
        let (id,): (i64,) =
            sqlx::query_as("SELECT id FROM server_provisioning_queue WHERE payment_id = $1")
                .bind(payment_id)
                .fetch_one(&mut *conn)
                .await?;
        return Ok((get(conn, id).await?, false));
    };
    serve_from_pool(conn, engine, id, user_id, region, now).await?;
    Ok((get(conn, id).await?, true))
}

/// Assigns a waiting pool server to a `pending` order. The order becomes `completed` when the
/// server's agent is online, else `configuring` until it is.
pub async fn serve_from_pool(
    conn: &mut AnyConnection,
    engine: Engine,
    order_id: i64,
    user_id: i64,
    region: &str,
    now: Millis,
) -> Result<Option<Claimed>> {
    let Some(claimed) = pool::claim(&mut *conn, engine, user_id, region, "dedicated", now).await?
    else {
        return Ok(None);
    };
    let (server_status,): (String,) =
        sqlx::query_as("SELECT status FROM vpn_servers WHERE id = $1")
            .bind(claimed.server_id)
            .fetch_one(&mut *conn)
            .await?;
    let online = server_status == "online";
    let assigned = sqlx::query(
        "UPDATE server_provisioning_queue
         SET status = $1, server_pool_id = $2, vpn_server_id = $3, started_at = COALESCE(started_at, $4),
             completed_at = $5, error_message = NULL, updated_at = $4
         WHERE id = $6 AND status = 'pending'",
    )
    .bind(if online { "completed" } else { "configuring" })
    .bind(claimed.pool_id)
    .bind(claimed.server_id)
    .bind(now)
    .bind(online.then_some(now))
    .bind(order_id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if assigned == 0 {
        return Err(Error::conflict(
            "order_not_pending",
            "the order was no longer waiting for a server",
        ));
    }
    Ok(Some(claimed))
}

/// A server just joined the pool in `region`: the oldest order waiting there takes it (and its
/// buyer hears it is ready when its agent is online). Returns the order served, if any.
pub async fn serve_waiting(
    conn: &mut AnyConnection,
    engine: Engine,
    region: &str,
    now: Millis,
) -> Result<Option<OrderView>> {
    // An order the runner is working on (leased) is left to it: it may be creating an
    // instance for it right now. On PostgreSQL the row is locked too (one the runner is
    // moving on is skipped), so the runner's guarded update and this one cannot both win.
    let lock = match engine {
        Engine::Postgres => " FOR UPDATE SKIP LOCKED",
        Engine::Sqlite => "",
    };
    let waiting: Option<(i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, user_id FROM server_provisioning_queue
         WHERE status = 'pending' AND region_preference = $1
           AND (lease_until IS NULL OR lease_until <= $2)
         ORDER BY created_at, id LIMIT 1{lock}"
    )))
    .bind(region)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((order_id, user_id)) = waiting else {
        return Ok(None);
    };
    if serve_from_pool(&mut *conn, engine, order_id, user_id, region, now)
        .await?
        .is_none()
    {
        return Ok(None);
    }
    let order = get(&mut *conn, order_id).await?;
    if order.status == "completed" {
        notify_ready(conn, &order, now).await?;
    }
    Ok(Some(order))
}

/// Mails the buyer about a new order: it is being set up, and it is ready when the pool
/// served it at once. Each mail once per order.
pub async fn notify_placed(conn: &mut AnyConnection, order: &OrderView, now: Millis) -> Result<()> {
    let (email, first_name) = accounts::contact(&mut *conn, order.user_id).await?;
    outbox::enqueue(
        &mut *conn,
        OutgoingMail {
            to: &email,
            user_id: Some(order.user_id),
            template: "dedicated_processing",
            context: json!({ "first_name": first_name, "region": order.region }),
            dedupe_key: Some(format!("dedicated_processing:{}", order.id)),
        },
        now,
    )
    .await?;
    if order.status == "completed" {
        notify_ready(conn, order, now).await?;
    }
    Ok(())
}

/// Whether the user has an order not given back (being set up, delivered, or failed and
/// waiting for an operator).
pub async fn holds_one(conn: &mut AnyConnection, user_id: i64) -> Result<bool> {
    let (open,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM server_provisioning_queue
         WHERE user_id = $1 AND release_requested_at IS NULL",
    )
    .bind(user_id)
    .fetch_one(conn)
    .await?;
    Ok(open > 0)
}

/// The "ready" mail: the server's address and location.
pub async fn notify_ready(conn: &mut AnyConnection, order: &OrderView, now: Millis) -> Result<()> {
    let server = order
        .server_id
        .ok_or_else(|| Error::internal(format!("order {} is ready without a server", order.id)))?;
    let (email, first_name, address, region, country): (String, String, String, String, String) =
        sqlx::query_as(
            "SELECT u.email, u.first_name, s.endpoint_host, s.region, s.country
             FROM users u, vpn_servers s WHERE u.id = $1 AND s.id = $2",
        )
        .bind(order.user_id)
        .bind(server)
        .fetch_one(&mut *conn)
        .await?;
    outbox::enqueue(
        conn,
        OutgoingMail {
            to: &email,
            user_id: Some(order.user_id),
            template: "dedicated_ready",
            context: json!({
                "first_name": first_name,
                "address": address,
                "location": format!("{region} ({country})"),
            }),
            dedupe_key: Some(format!("dedicated_ready:{}", order.id)),
        },
        now,
    )
    .await?;
    Ok(())
}

/// An operator's order for a manual payment: the payment, the plan change, the order, and the
/// pool server if one waits, in one transaction.
pub async fn place_manual(
    db: &Db,
    input: ManualOrderInput,
    actor: Actor,
    ip: Option<IpAddr>,
    now: Millis,
) -> Result<OrderView> {
    let mut problems = Vec::new();
    let region = input
        .region
        .as_deref()
        .unwrap_or_default()
        .trim()
        .to_owned();
    if !is_region_name(&region) {
        problems.push(FieldError::new(
            "region",
            "invalid",
            "a region such as us-east",
        ));
    }
    if input.amount_cents.is_some_and(|a| a < 0) {
        problems.push(FieldError::new("amount_cents", "invalid", "0 or more"));
    }
    let reference = input
        .reference
        .clone()
        .unwrap_or_else(|| format!("manual-{}", uuid::Uuid::new_v4()));
    if reference.trim().is_empty() || reference.len() > 128 {
        problems.push(FieldError::new(
            "reference",
            "invalid",
            "1 to 128 characters",
        ));
    }
    let Some(user_id) = input.user_id else {
        problems.push(FieldError::new("user_id", "required", "the buyer"));
        return Err(Error::Validation(problems));
    };
    if !problems.is_empty() {
        return Err(Error::Validation(problems));
    }
    let mut tx = db.begin_write().await?;
    if country_of(&region).is_none() {
        let known: Option<(i64,)> =
            sqlx::query_as("SELECT id FROM vpn_servers WHERE region = $1 LIMIT 1")
                .bind(&region)
                .fetch_optional(tx.conn())
                .await?;
        if known.is_none() {
            return Err(Error::Validation(vec![FieldError::new(
                "region",
                "unknown",
                "a region this service has servers in or can create them in",
            )]));
        }
    }
    let user: Option<(i64,)> = sqlx::query_as("SELECT id FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_optional(tx.conn())
        .await?;
    if user.is_none() {
        return Err(Error::NotFound("user"));
    }
    let (price,): (i64,) = sqlx::query_as("SELECT price_cents FROM plans WHERE code = $1")
        .bind(DEDICATED_PLAN)
        .fetch_one(tx.conn())
        .await?;
    let payment: Option<(i64,)> = sqlx::query_as(
        "INSERT INTO payments (uuid, user_id, provider, provider_payment_id, plan_type, amount_cents,
                               status, created_at, updated_at)
         VALUES ($1, $2, 'manual', $3, $4, $5, 'completed', $6, $6)
         ON CONFLICT (provider, provider_payment_id) DO NOTHING RETURNING id",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(user_id)
    .bind(&reference)
    .bind(DEDICATED_PLAN)
    .bind(input.amount_cents.unwrap_or(price))
    .bind(now)
    .fetch_optional(tx.conn())
    .await?;
    let Some((payment_id,)) = payment else {
        return Err(Error::conflict(
            "payment_recorded",
            "a payment with this reference is already recorded",
        ));
    };
    plans::change_plan(tx.conn(), user_id, DEDICATED_PLAN, now).await?;
    let (order, _) = place(tx.conn(), db.engine(), user_id, payment_id, &region, now).await?;
    notify_placed(tx.conn(), &order, now).await?;
    audit::record(
        tx.conn(),
        audit::Entry {
            actor,
            action: "order.manual",
            target_type: Some("order"),
            target_id: Some(order.id.to_string()),
            details: serde_json::json!({ "user_id": user_id, "region": region, "reference": reference }),
            ip,
        },
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(order)
}

/// An operator sends a failed order round again, from where it stopped: a pool server is
/// waited on, a created instance is looked at again (never created twice: its name is looked
/// up first), an order without a server starts over. The deadline starts afresh.
pub async fn retry(
    db: &Db,
    id: i64,
    deadline: Millis,
    actor: Actor,
    ip: Option<IpAddr>,
    now: Millis,
) -> Result<OrderView> {
    let mut tx = db.begin_write().await?;
    let row: Option<(String, Option<i64>, Option<i64>)> = sqlx::query_as(
        "SELECT status, server_pool_id, vpn_server_id FROM server_provisioning_queue WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(tx.conn())
    .await?;
    let Some((status, pool_id, server_id)) = row else {
        return Err(Error::NotFound("order"));
    };
    if status != "failed" {
        return Err(Error::conflict(
            "order_not_failed",
            "only a failed order can be retried",
        ));
    }
    let resume = match (pool_id, server_id) {
        (Some(_), _) => "configuring",
        (None, Some(_)) => "provisioning",
        (None, None) => "pending",
    };
    let retried = sqlx::query(
        "UPDATE server_provisioning_queue
         SET status = $1, attempt = attempt + 1, error_message = NULL, deadline_at = $2,
             next_run_at = $3, lease_owner = NULL, lease_until = NULL, updated_at = $3
         WHERE id = $4 AND status = 'failed' AND release_requested_at IS NULL",
    )
    .bind(resume)
    .bind(now + deadline)
    .bind(now)
    .bind(id)
    .execute(tx.conn())
    .await?
    .rows_affected();
    if retried == 0 {
        // Retried by someone else meanwhile, or its server was given back.
        return Err(Error::conflict(
            "order_not_failed",
            "only a failed order that is not being given up can be retried",
        ));
    }
    audit::record(
        tx.conn(),
        audit::Entry {
            actor,
            action: "order.retried",
            target_type: Some("order"),
            target_id: Some(id.to_string()),
            details: serde_json::json!({ "resumes_at": resume }),
            ip,
        },
        now,
    )
    .await?;
    let order = get(tx.conn(), id).await?;
    tx.commit().await?;
    Ok(order)
}

const SELECT: &str =
    "SELECT id, user_id, payment_id, plan_type, region_preference, status, server_pool_id,
        vpn_server_id, provider_display_name, error_message, created_at, started_at, completed_at,
        provider_instance_id, ip_address, attempt, deadline_at, released_at
     FROM server_provisioning_queue";

fn view(r: &AnyRow) -> std::result::Result<OrderView, sqlx::Error> {
    Ok(OrderView {
        id: r.try_get(0)?,
        user_id: r.try_get(1)?,
        payment_id: r.try_get(2)?,
        plan_type: r.try_get(3)?,
        region: r.try_get(4)?,
        status: r.try_get(5)?,
        pool_server_id: r.try_get(6)?,
        server_id: r.try_get(7)?,
        provider_display_name: r.try_get(8)?,
        provider_instance_id: r.try_get(13)?,
        ip_address: r.try_get(14)?,
        error_message: r.try_get(9)?,
        attempt: r.try_get(15)?,
        deadline_at: r.try_get::<Option<i64>, _>(16)?.map(rfc3339),
        released_at: r.try_get::<Option<i64>, _>(17)?.map(rfc3339),
        created_at: rfc3339(r.try_get(10)?),
        started_at: r.try_get::<Option<i64>, _>(11)?.map(rfc3339),
        completed_at: r.try_get::<Option<i64>, _>(12)?.map(rfc3339),
    })
}

pub async fn get(conn: &mut AnyConnection, id: i64) -> Result<OrderView> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("{SELECT} WHERE id = $1")))
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or(Error::NotFound("order"))?;
    Ok(view(&row)?)
}

/// Orders, newest first, optionally of one status.
pub async fn list(db: &Db, status: Option<&str>) -> Result<Vec<OrderView>> {
    let rows = match status {
        Some(status) => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "{SELECT} WHERE status = $1 ORDER BY id DESC LIMIT 500"
            )))
            .bind(status)
            .fetch_all(db.pool())
            .await?
        }
        None => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "{SELECT} ORDER BY id DESC LIMIT 500"
            )))
            .fetch_all(db.pool())
            .await?
        }
    };
    Ok(rows
        .iter()
        .map(view)
        .collect::<std::result::Result<_, _>>()?)
}
