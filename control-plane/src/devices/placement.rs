//! Where a new device goes: the user's dedicated server if any; else the server asked for;
//! else the region's preferred (identity) server; else the least loaded online shared server
//! in the region.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row as _};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    pub server: Option<&'a str>,
    pub region: Option<&'a str>,
    pub default_region: Option<&'a str>,
}

/// The chosen server, with what a new device's view and config need from it.
#[derive(Debug)]
pub struct Chosen {
    pub id: i64,
    pub ipv4_subnet: String,
    pub ipv6_subnet: Option<String>,
    pub uuid: String,
    pub region: String,
    pub country: String,
    pub endpoint_host: String,
    pub endpoint_port: i64,
    pub public_key: Option<String>,
    /// Whether the server has released addresses (perhaps still in quarantine); without any,
    /// allocation goes straight to the server's counter.
    pub has_released: bool,
}

const COLUMNS: &str = "s.id, s.ipv4_subnet, s.ipv6_subnet, s.uuid, s.region, s.country, \
                       s.endpoint_host, s.endpoint_port, s.wg_public_key";
/// The same columns, as named in the union of candidates, and whether addresses were released.
const NAMES: &str = "id, ipv4_subnet, ipv6_subnet, uuid, region, country, endpoint_host, endpoint_port, wg_public_key, \
                     CAST(CASE WHEN EXISTS (SELECT 1 FROM released_addresses r WHERE r.server_id = c.id) \
                          THEN 1 ELSE 0 END AS BIGINT) AS has_released";

/// Servers a config can be made for: in service and with a known WireGuard key.
const USABLE: &str = "s.wg_public_key IS NOT NULL AND s.status = 'online'";

/// The statement choosing a server for `want`: at most one row, of the columns [`from_row`]
/// reads. Its parameters are `$1`, the user, then [`params`]. Each candidate is at most one
/// row (a top-1 per branch), so the cost does not grow with the number of servers in a region
/// beyond its index scan.
pub(super) fn query(want: &Placement<'_>) -> String {
    let dedicated = format!(
        "SELECT * FROM (
            SELECT {COLUMNS}, 0 AS pick_rank FROM vpn_servers s
            WHERE s.server_type = 'dedicated' AND s.dedicated_user_id = $1
              AND s.status <> 'retired' AND s.wg_public_key IS NOT NULL
            ORDER BY s.id LIMIT 1) d"
    );
    if want.server.is_some() {
        // A dedicated server still wins over the one asked for.
        return format!(
            "SELECT {NAMES} FROM (
                {dedicated}
                UNION ALL
                SELECT * FROM (SELECT {COLUMNS}, 1 AS pick_rank FROM vpn_servers s
                    WHERE s.uuid = $2 AND s.server_type = 'shared' AND {USABLE}) a
             ) c ORDER BY pick_rank LIMIT 1"
        );
    }
    // The usual case: the user's dedicated server, else their identity server in the region,
    // else the region's least loaded server. The region is the one asked for, else the
    // user's first identity's, else the default.
    format!(
        "WITH wanted (region) AS (
            SELECT COALESCE($2, (SELECT region FROM regional_identities WHERE user_id = $1 ORDER BY id LIMIT 1), $3)
         )
         SELECT {NAMES} FROM (
            {dedicated}
            UNION ALL
            SELECT * FROM (SELECT {COLUMNS}, 1 AS pick_rank FROM regional_identities i
                JOIN vpn_servers s ON s.id = i.server_id
                JOIN wanted w ON i.region = w.region
                WHERE i.user_id = $1 AND s.server_type = 'shared' AND {USABLE} LIMIT 1) p
            UNION ALL
            SELECT * FROM (SELECT {COLUMNS}, 2 AS pick_rank FROM vpn_servers s
                JOIN wanted w ON s.region = w.region
                WHERE s.server_type = 'shared' AND {USABLE}
                ORDER BY s.load_permille, s.id LIMIT 1) l
         ) c ORDER BY pick_rank LIMIT 1"
    )
}

/// The server [`query`] chooses for `user_id`, on its own (a device add reads it together
/// with the entitlement instead: `admission`).
pub(super) async fn choose(
    conn: &mut AnyConnection,
    user_id: i64,
    want: &Placement<'_>,
) -> Result<Option<Chosen>> {
    let sql = query(want);
    let mut statement = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(user_id);
    for param in params(want) {
        statement = statement.bind(param);
    }
    match statement.fetch_optional(conn).await? {
        Some(row) => from_row(&row, 0),
        None => Ok(None),
    }
}

/// The parameters of [`query`] after the user.
pub(super) fn params<'a>(want: &Placement<'a>) -> Vec<Option<&'a str>> {
    match want.server {
        Some(server) => vec![Some(server)],
        None => vec![want.region, want.default_region],
    }
}

/// The chosen server from [`query`]'s columns, from `first` on; `None` when they are empty
/// (the query found nothing and was outer-joined).
pub(super) fn from_row(row: &AnyRow, first: usize) -> Result<Option<Chosen>> {
    let Some(id) = row.try_get::<Option<i64>, _>(first)? else {
        return Ok(None);
    };
    Ok(Some(Chosen {
        id,
        ipv4_subnet: row.try_get(first + 1)?,
        ipv6_subnet: row.try_get(first + 2)?,
        uuid: row.try_get(first + 3)?,
        region: row.try_get(first + 4)?,
        country: row.try_get(first + 5)?,
        endpoint_host: row.try_get(first + 6)?,
        endpoint_port: row.try_get(first + 7)?,
        public_key: row.try_get(first + 8)?,
        has_released: row.try_get::<i64, _>(first + 9)? != 0,
    }))
}

/// Why no server was found for `want`: the server asked for is not available, or the region
/// has none (a second query, on the refusal path only, names the region).
pub(super) async fn unavailable(
    conn: &mut AnyConnection,
    user_id: i64,
    want: &Placement<'_>,
) -> Result<Error> {
    if want.server.is_some() {
        return Ok(Error::conflict(
            "server_unavailable",
            "that server does not exist or is not available now",
        ));
    }
    let region = match want.region {
        Some(r) => Some(r.to_owned()),
        None => sqlx::query_as::<_, (String,)>(
            "SELECT region FROM regional_identities WHERE user_id = $1 ORDER BY id LIMIT 1",
        )
        .bind(user_id)
        .fetch_optional(conn)
        .await?
        .map(|(r,)| r)
        .or_else(|| want.default_region.map(str::to_owned)),
    };
    Ok(match region {
        Some(region) => Error::conflict(
            "no_server_available",
            format!("no server is available in {region} right now"),
        ),
        None => Error::conflict("no_server_available", "no region is configured"),
    })
}
