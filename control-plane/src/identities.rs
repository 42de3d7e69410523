//! Regional identities: a user's stable presence in a region, i.e. the region's preferred
//! server for that user, used by default when one of their devices connects there.

use serde::Serialize;
use sqlx::AnyConnection;
use utoipa::ToSchema;

use crate::clock::{Millis, rfc3339};
use crate::error::Result;
use crate::storage::Db;

/// Ensures identities in the first `count` regions (all of them for `None`); an existing
/// identity is kept. Returns how many were created.
pub async fn ensure(
    conn: &mut AnyConnection,
    user_id: i64,
    regions: &[String],
    count: Option<usize>,
    now: Millis,
) -> Result<u64> {
    let take = count.map_or(regions.len(), |c| c.min(regions.len()));
    let mut created = 0;
    for region in &regions[..take] {
        // The region's least loaded online shared server, if it has one yet.
        created += sqlx::query(
            "INSERT INTO regional_identities (user_id, region, server_id, created_at, updated_at)
             VALUES ($1, $2, (SELECT id FROM vpn_servers WHERE region = $2 AND status = 'online'
                              AND server_type = 'shared' ORDER BY load_permille, id LIMIT 1), $3, $3)
             ON CONFLICT (user_id, region) DO NOTHING",
        )
        .bind(user_id)
        .bind(region)
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    Ok(created)
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Identity {
    pub region: String,
    /// Whether a preferred server is assigned yet.
    pub has_server: bool,
    pub created_at: String,
}

pub async fn list(db: &Db, user_id: i64) -> Result<Vec<Identity>> {
    let rows: Vec<(String, Option<i64>, i64)> = sqlx::query_as(
        "SELECT region, server_id, created_at FROM regional_identities WHERE user_id = $1 ORDER BY id",
    )
    .bind(user_id)
    .fetch_all(db.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|(region, server, created)| Identity {
            region,
            has_server: server.is_some(),
            created_at: rfc3339(created),
        })
        .collect())
}
