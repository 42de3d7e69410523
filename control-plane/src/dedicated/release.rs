//! Giving a dedicated server back when its buyer's subscription has ended (cancelled and the
//! paid period over).
//!
//! At once, in the transaction that ends the subscription: the server loses its owner (so no
//! device is placed on it), and a pool server goes to `maintenance`, for an operator to wipe
//! before pooling it again. An instance created for the order is then cancelled at the provider
//! by the order runner (a network call, so never inside that transaction); its node's
//! certificates are revoked and its server retired. An order still being set up stops there.

use serde_json::json;
use sqlx::AnyConnection;

use crate::audit::{self, Actor};
use crate::clock::Millis;
use crate::error::Result;
use crate::nodes::enrollment;
use crate::servers;

use super::lifecycle::{Open, Step};
use super::runner::{LET_GO, OrderRunner};

/// An order not yet handed over stops as `failed`, saying why (both expressions read the row
/// as it was before the statement).
const STOPPED: &str = "error_message = CASE WHEN status IN ('completed', 'failed') THEN error_message
                                   ELSE 'the subscription ended before the server was handed over' END,
     status = CASE WHEN status IN ('completed', 'failed') THEN status ELSE 'failed' END";

/// Marks every dedicated server of `user_id` for release. Returns how many orders it touched.
pub async fn request(conn: &mut AnyConnection, user_id: i64, now: Millis) -> Result<u64> {
    let orders: Vec<OrderServers> = sqlx::query_as(
        "SELECT id, server_pool_id, vpn_server_id FROM server_provisioning_queue
         WHERE user_id = $1 AND release_requested_at IS NULL",
    )
    .bind(user_id)
    .fetch_all(&mut *conn)
    .await?;
    release(conn, user_id, &orders, now).await
}

/// Marks one order of `user_id` for release (the buyer keeps any other); nothing if it is not
/// theirs or its release was requested before.
pub async fn request_order(
    conn: &mut AnyConnection,
    user_id: i64,
    order_id: i64,
    now: Millis,
) -> Result<()> {
    let orders: Vec<OrderServers> = sqlx::query_as(
        "SELECT id, server_pool_id, vpn_server_id FROM server_provisioning_queue
         WHERE user_id = $1 AND id = $2 AND release_requested_at IS NULL",
    )
    .bind(user_id)
    .bind(order_id)
    .fetch_all(&mut *conn)
    .await?;
    release(conn, user_id, &orders, now).await?;
    Ok(())
}

/// An order and the pool server and server it holds.
type OrderServers = (i64, Option<i64>, Option<i64>);

async fn release(
    conn: &mut AnyConnection,
    user_id: i64,
    orders: &[OrderServers],
    now: Millis,
) -> Result<u64> {
    for (order, pool_id, server_id) in orders {
        sqlx::query(
            "UPDATE vpn_servers SET dedicated_user_id = NULL, updated_at = $1
             WHERE id = $2 AND dedicated_user_id = $3",
        )
        .bind(now)
        .bind(server_id)
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
        // A pool server needs nothing from the provider, and an order without a server has
        // nothing to give back: both are released now (an order still waiting stops).
        let released_now = pool_id.is_some() || server_id.is_none();
        if let Some(pool_id) = pool_id {
            sqlx::query(
                "UPDATE server_pool SET status = 'maintenance', assigned_user_id = NULL, updated_at = $1
                 WHERE id = $2 AND status = 'assigned'",
            )
            .bind(now)
            .bind(pool_id)
            .execute(&mut *conn)
            .await?;
        }
        if released_now {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE server_provisioning_queue
                 SET release_requested_at = $1, released_at = $1, next_run_at = NULL, {STOPPED}, updated_at = $1
                 WHERE id = $2"
            )))
            .bind(now)
            .bind(order)
            .execute(&mut *conn)
            .await?;
        } else {
            sqlx::query(
                "UPDATE server_provisioning_queue
                 SET release_requested_at = $1, next_run_at = $1, updated_at = $1 WHERE id = $2",
            )
            .bind(now)
            .bind(order)
            .execute(&mut *conn)
            .await?;
        }
        audit::record(
            &mut *conn,
            audit::Entry {
                actor: Actor::System,
                action: "order.release_requested",
                target_type: Some("order"),
                target_id: Some(order.to_string()),
                details: json!({ "server_id": server_id, "pool_server_id": pool_id }),
                ip: None,
            },
            now,
        )
        .await?;
    }
    for (_, _, server_id) in orders {
        sqlx::query(
            "UPDATE users SET dedicated_server_id = NULL, updated_at = $1
             WHERE id = $2 AND dedicated_server_id = $3",
        )
        .bind(now)
        .bind(user_id)
        .bind(server_id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(orders.len() as u64)
}

impl OrderRunner {
    /// Cancels the order's instance at the provider (found by its name if its id was never
    /// recorded), then retires its server and revokes its node's certificates.
    pub(super) async fn release(&self, order: &Open) -> Result<Step> {
        if order.pool_id.is_none()
            && let Some(step) = self.cancel_instance(order).await?
        {
            return Ok(step);
        }
        let now = self.clock.now_ms();
        let mut tx = self.db.begin_write().await?;
        let set =
            format!("released_at = $3, next_run_at = NULL, {LET_GO}, {STOPPED}, updated_at = $3");
        let released = self
            .write_leased(
                tx.conn(),
                order.id,
                &set,
                Some("released_at IS NULL"),
                |q| q.bind(now),
            )
            .await?;
        if !released {
            tx.rollback().await?;
            return Ok(Step::Waits);
        }
        if let (Some(server), None) = (order.server_id, order.pool_id) {
            servers::retire_in(tx.conn(), server, Actor::System, None, now).await?;
            enrollment::revoke_in(tx.conn(), server, now).await?;
        }
        audit::record(
            tx.conn(),
            audit::Entry {
                actor: Actor::System,
                action: "order.released",
                target_type: Some("order"),
                target_id: Some(order.id.to_string()),
                details: json!({ "server_id": order.server_id, "instance": order.instance_id }),
                ip: None,
            },
            now,
        )
        .await?;
        tx.commit().await?;
        tracing::info!(order = order.id, instance = ?order.instance_id, "dedicated server released");
        Ok(Step::Waits)
    }

    /// `Some(step)` when the order must wait (the provider cannot be asked now).
    async fn cancel_instance(&self, order: &Open) -> Result<Option<Step>> {
        let Some(provisioning) = &self.settings.provisioning else {
            if order.instance_id.is_some() {
                tracing::warn!(
                    order = order.id,
                    "no provider is configured to cancel the instance at"
                );
                self.park(order.id, None).await?;
                return Ok(Some(Step::Waits));
            }
            return Ok(None);
        };
        let provider = provisioning.provider.as_ref();
        let instance = match (&order.instance_id, &order.display_name) {
            (Some(id), _) => Some(id.clone()),
            // Created by a run that stopped before recording it: look it up by its name.
            (None, Some(name)) => match provider.find_by_name(name).await {
                Ok(found) => found.map(|i| i.id),
                Err(e) => {
                    tracing::warn!(order = order.id, error = %e, "cannot look the instance up");
                    self.park(order.id, None).await?;
                    return Ok(Some(Step::Waits));
                }
            },
            (None, None) => None,
        };
        let Some(instance) = instance else {
            return Ok(None);
        };
        match provider.cancel(&instance).await {
            Ok(()) => Ok(None),
            Err(truevault_provisioning::Error::Api { status: 404, .. }) => Ok(None),
            Err(e) => {
                tracing::warn!(order = order.id, %instance, error = %e, "cannot cancel the instance now");
                self.park(order.id, None).await?;
                Ok(Some(Step::Waits))
            }
        }
    }
}
