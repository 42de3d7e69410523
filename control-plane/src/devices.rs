//! Devices. The one place where devices are disabled, so every path that ends access (trial
//! expiry now; deletion, suspension and plan changes as they arrive) takes the same route.
//! The per-server peer-removal records that make nodes drop the peers join this function when
//! the node channel exists.

use sqlx::AnyConnection;

use crate::clock::Millis;
use crate::error::Result;
use crate::storage::placeholders;

/// Disables every enabled device of these users; returns how many were disabled.
pub async fn disable_all_for_users(
    conn: &mut AnyConnection,
    user_ids: &[i64],
    reason: &str,
    now: Millis,
) -> Result<u64> {
    if user_ids.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "UPDATE devices SET status = 'disabled', disabled_reason = $1, updated_at = $2
         WHERE status <> 'disabled' AND user_id IN ({})",
        placeholders(3, user_ids.len())
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(reason).bind(now);
    for id in user_ids {
        query = query.bind(*id);
    }
    Ok(query.execute(conn).await?.rows_affected())
}
