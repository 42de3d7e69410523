//! Where a new device goes: the user's dedicated server if any; else the server asked for;
//! else the region's preferred (identity) server; else the least loaded online shared server
//! in the region.

use sqlx::AnyConnection;

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

type Row = (
    i64,
    String,
    Option<String>,
    String,
    String,
    String,
    String,
    i64,
    Option<String>,
    i64,
);

const COLUMNS: &str = "s.id, s.ipv4_subnet, s.ipv6_subnet, s.uuid, s.region, s.country, \
                       s.endpoint_host, s.endpoint_port, s.wg_public_key";
/// The same columns, as named in the union of candidates, and whether addresses were released.
const NAMES: &str = "id, ipv4_subnet, ipv6_subnet, uuid, region, country, endpoint_host, endpoint_port, wg_public_key, \
                     CAST(CASE WHEN EXISTS (SELECT 1 FROM released_addresses r WHERE r.server_id = c.id) \
                          THEN 1 ELSE 0 END AS BIGINT)";

/// Servers a config can be made for: in service and with a known WireGuard key.
const USABLE: &str = "s.wg_public_key IS NOT NULL AND s.status = 'online'";

pub async fn choose(conn: &mut AnyConnection, user_id: i64, want: Placement<'_>) -> Result<Chosen> {
    // Each candidate is at most one row (a top-1 per branch), so the cost does not grow with
    // the number of servers in a region beyond its index scan.
    let dedicated = format!(
        "SELECT * FROM (
            SELECT {COLUMNS}, 0 AS pick_rank FROM vpn_servers s
            WHERE s.server_type = 'dedicated' AND s.dedicated_user_id = $1
              AND s.status <> 'retired' AND s.wg_public_key IS NOT NULL
            ORDER BY s.id LIMIT 1) d"
    );
    if let Some(server) = want.server {
        // A dedicated server still wins over the one asked for.
        let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {NAMES} FROM (
                {dedicated}
                UNION ALL
                SELECT * FROM (SELECT {COLUMNS}, 1 AS pick_rank FROM vpn_servers s
                    WHERE s.uuid = $2 AND s.server_type = 'shared' AND {USABLE}) a
             ) c ORDER BY pick_rank LIMIT 1"
        )))
        .bind(user_id)
        .bind(server)
        .fetch_optional(&mut *conn)
        .await?;
        return row.map(chosen).ok_or_else(|| {
            Error::conflict(
                "server_unavailable",
                "that server does not exist or is not available now",
            )
        });
    }
    // One query for the usual case (it is on every device add): the user's dedicated server,
    // else their identity server in the region, else the region's least loaded server. The
    // region is the one asked for, else the user's first identity's, else the default.
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
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
    )))
    .bind(user_id)
    .bind(want.region)
    .bind(want.default_region)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = row {
        return Ok(chosen(row));
    }
    // Nothing: say which region had no server (a second query, on the refusal path only).
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
    Err(match region {
        Some(region) => Error::conflict(
            "no_server_available",
            format!("no server is available in {region} right now"),
        ),
        None => Error::conflict("no_server_available", "no region is configured"),
    })
}

fn chosen(
    (
        id,
        ipv4_subnet,
        ipv6_subnet,
        uuid,
        region,
        country,
        endpoint_host,
        endpoint_port,
        public_key,
        has_released,
    ): Row,
) -> Chosen {
    Chosen {
        id,
        ipv4_subnet,
        ipv6_subnet,
        uuid,
        region,
        country,
        endpoint_host,
        endpoint_port,
        public_key,
        has_released: has_released != 0,
    }
}
