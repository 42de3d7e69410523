//! Whether a user may add a device, and where it would go, read in one statement: both are
//! needed on every device add, inside its write transaction (which on SQLite holds the only
//! writer), so they share one round trip to the database.

use sqlx::AnyConnection;

use crate::clock::Millis;
use crate::error::{Error, Result};

use super::entitlement::{self, Entitlement};
use super::placement::{self, Chosen, Placement};

#[derive(Debug)]
pub(super) struct Admission {
    pub entitlement: Entitlement,
    /// Devices counted against the limit now.
    pub counted: i64,
    /// The server the device would go to, if any is available.
    pub server: Option<Chosen>,
}

pub(super) async fn read(
    conn: &mut AnyConnection,
    user_id: i64,
    want: &Placement<'_>,
    now: Millis,
) -> Result<Admission> {
    // The entitlement is exactly one row; the placement at most one, outer-joined to it.
    let sql = format!(
        "SELECT entitled.*, chosen.* FROM ({}) entitled LEFT JOIN ({}) chosen ON 1 = 1",
        entitlement::QUERY,
        placement::query(want)
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(user_id);
    for param in placement::params(want) {
        query = query.bind(param);
    }
    let row = query
        .fetch_optional(conn)
        .await?
        .ok_or(Error::NotFound("user"))?;
    let (entitlement, counted) = entitlement::from_row(&row, 0, now)?;
    Ok(Admission {
        entitlement,
        counted,
        server: placement::from_row(&row, entitlement::COLUMNS)?,
    })
}
