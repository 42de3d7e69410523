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

#[derive(Debug)]
pub struct Chosen {
    pub id: i64,
    pub ipv4_subnet: String,
    pub ipv6_subnet: Option<String>,
}

type Row = (i64, String, Option<String>);

/// Servers a config can be made for: in service and with a known WireGuard key.
const USABLE: &str = "s.wg_public_key IS NOT NULL AND s.status = 'online'";

pub async fn choose(conn: &mut AnyConnection, user_id: i64, want: Placement<'_>) -> Result<Chosen> {
    let dedicated: Option<Row> = sqlx::query_as(
        "SELECT s.id, s.ipv4_subnet, s.ipv6_subnet FROM vpn_servers s
         WHERE s.server_type = 'dedicated' AND s.dedicated_user_id = $1 AND s.status <> 'retired'
           AND s.wg_public_key IS NOT NULL ORDER BY s.id LIMIT 1",
    )
    .bind(user_id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = dedicated {
        return Ok(chosen(row));
    }
    if let Some(server) = want.server {
        let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT s.id, s.ipv4_subnet, s.ipv6_subnet FROM vpn_servers s
             WHERE s.uuid = $1 AND s.server_type = 'shared' AND {USABLE}"
        )))
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
    let region = match want.region {
        Some(r) => Some(r.to_owned()),
        None => {
            let first: Option<(String,)> = sqlx::query_as(
                "SELECT region FROM regional_identities WHERE user_id = $1 ORDER BY id LIMIT 1",
            )
            .bind(user_id)
            .fetch_optional(&mut *conn)
            .await?;
            first
                .map(|(r,)| r)
                .or_else(|| want.default_region.map(str::to_owned))
        }
    };
    let Some(region) = region else {
        return Err(Error::conflict(
            "no_server_available",
            "no region is configured",
        ));
    };
    let preferred: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT s.id, s.ipv4_subnet, s.ipv6_subnet FROM regional_identities i JOIN vpn_servers s ON s.id = i.server_id
         WHERE i.user_id = $1 AND i.region = $2 AND s.server_type = 'shared' AND {USABLE}"
    )))
    .bind(user_id)
    .bind(&region)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = preferred {
        return Ok(chosen(row));
    }
    let least_loaded: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT s.id, s.ipv4_subnet, s.ipv6_subnet FROM vpn_servers s
         WHERE s.region = $1 AND s.server_type = 'shared' AND {USABLE} ORDER BY s.load_permille, s.id LIMIT 1"
    )))
    .bind(&region)
    .fetch_optional(conn)
    .await?;
    least_loaded.map(chosen).ok_or_else(|| {
        Error::conflict(
            "no_server_available",
            format!("no server is available in {region} right now"),
        )
    })
}

fn chosen((id, ipv4_subnet, ipv6_subnet): Row) -> Chosen {
    Chosen {
        id,
        ipv4_subnet,
        ipv6_subnet,
    }
}
