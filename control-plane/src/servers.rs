//! VPN servers, shared and dedicated. Operators add and retire them; customers see region,
//! country, status and load; device placement chooses among them.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row as _};
use utoipa::ToSchema;

use crate::audit::{self, Actor};
use crate::clock::{Millis, rfc3339};
use crate::devices::addresses::{self, Subnets};
use crate::devices::keys::parse_public_key;
use crate::error::{Error, FieldError, Result};
use crate::storage::{Db, is_unique_violation};

/// The seed's region map.
pub const REGION_COUNTRIES: &[(&str, &str)] = &[
    ("us-east", "USA"),
    ("us-central", "USA"),
    ("us-west", "USA"),
    ("ca-east", "Canada"),
    ("ca-west", "Canada"),
    ("eu-de", "Germany"),
    ("eu-uk", "UK"),
    ("eu-nl", "Netherlands"),
    ("asia-sg", "Singapore"),
    ("asia-jp", "Japan"),
];

/// A region name such as `us-east`: lower-case letters, digits and dashes, 1 to 32.
pub fn is_region_name(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 32
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

pub fn country_of(region: &str) -> Option<&'static str> {
    REGION_COUNTRIES
        .iter()
        .find(|(r, _)| *r == region)
        .map(|(_, c)| *c)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerInput {
    pub name: Option<String>,
    pub region: Option<String>,
    /// Default: from the region.
    pub country: Option<String>,
    pub endpoint_host: Option<String>,
    /// Default 51820.
    pub endpoint_port: Option<u16>,
    /// The server's WireGuard public key (set by the node agent when it enrolls).
    pub public_key: Option<String>,
    /// Default 10.8.0.0/16.
    pub ipv4_subnet: Option<String>,
    /// Default: a random ULA /64.
    pub ipv6_subnet: Option<String>,
    /// `shared` (default) or `dedicated`.
    pub server_type: Option<String>,
    /// For a dedicated server: its owner.
    pub dedicated_user_id: Option<i64>,
    /// `online` (default), `offline` or `maintenance`.
    pub status: Option<String>,
}

/// A server as operators see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ServerView {
    pub id: i64,
    pub uuid: String,
    pub name: String,
    pub region: String,
    pub country: String,
    pub endpoint_host: String,
    pub endpoint_port: i64,
    pub public_key: Option<String>,
    pub ipv4_subnet: String,
    pub ipv6_subnet: Option<String>,
    pub server_type: String,
    pub dedicated_user_id: Option<i64>,
    pub status: String,
    pub load_percent: f64,
    pub config_revision: i64,
    pub devices: i64,
    pub created_at: String,
}

/// A server as customers see it: nothing internal.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PublicServer {
    pub id: String,
    pub region: String,
    pub country: String,
    pub status: String,
    pub load_percent: f64,
}

const STATUSES: &[&str] = &["online", "offline", "maintenance"];

fn field(field: &'static str, code: &'static str, message: &str) -> FieldError {
    FieldError::new(field, code, message)
}

/// A server row as stored: operators' input validated by [`create`], or the row the order
/// runner makes for a new dedicated instance.
#[derive(Debug)]
pub struct NewServer<'a> {
    pub name: &'a str,
    /// `manual`, or the cloud provider it runs at.
    pub provider: &'a str,
    pub region: &'a str,
    pub country: &'a str,
    /// Empty until known (a booting instance).
    pub endpoint_host: &'a str,
    pub endpoint_port: i64,
    pub public_key: Option<&'a str>,
    pub ipv4_subnet: &'a str,
    pub ipv6_subnet: Option<&'a str>,
    pub server_type: &'a str,
    pub dedicated_user_id: Option<i64>,
    pub status: &'a str,
}

/// Inserts the row (and, for a dedicated server, records it as its owner's); returns its id.
/// Errors are the database's, for the caller to map (name or key taken, unknown owner).
pub async fn insert(
    conn: &mut AnyConnection,
    server: &NewServer<'_>,
    now: Millis,
) -> std::result::Result<i64, sqlx::Error> {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO vpn_servers (uuid, name, provider, region, country, endpoint_host, endpoint_port, wg_public_key,
                                  ipv4_subnet, ipv6_subnet, server_type, dedicated_user_id, status, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14) RETURNING id",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(server.name)
    .bind(server.provider)
    .bind(server.region)
    .bind(server.country)
    .bind(server.endpoint_host)
    .bind(server.endpoint_port)
    .bind(server.public_key)
    .bind(server.ipv4_subnet)
    .bind(server.ipv6_subnet)
    .bind(server.server_type)
    .bind(server.dedicated_user_id)
    .bind(server.status)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    if let Some(owner) = server.dedicated_user_id {
        sqlx::query("UPDATE users SET dedicated_server_id = $1, updated_at = $2 WHERE id = $3")
            .bind(id)
            .bind(now)
            .bind(owner)
            .execute(&mut *conn)
            .await?;
    }
    Ok(id)
}

pub async fn create(
    db: &Db,
    input: ServerInput,
    actor: Actor,
    ip: Option<IpAddr>,
    now: Millis,
) -> Result<ServerView> {
    let mut problems = Vec::new();
    let name = input
        .name
        .as_deref()
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        problems.push(field(
            "name",
            "invalid",
            "1 to 64 letters, digits, '-', '_' or '.'",
        ));
    }
    let region = input
        .region
        .as_deref()
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
    if !is_region_name(&region) {
        problems.push(field("region", "invalid", "a region such as us-east"));
    }
    let country = input
        .country
        .clone()
        .or_else(|| country_of(&region).map(str::to_owned))
        .unwrap_or_default();
    if country.trim().is_empty() {
        problems.push(field(
            "country",
            "required",
            "country is required for a region outside the region map",
        ));
    }
    let endpoint_host = input
        .endpoint_host
        .as_deref()
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
    let host_ok = endpoint_host.parse::<IpAddr>().is_ok()
        || (!endpoint_host.is_empty()
            && endpoint_host.len() <= 253
            && endpoint_host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            }));
    if !host_ok {
        problems.push(field(
            "endpoint_host",
            "invalid",
            "a hostname or IP address",
        ));
    }
    let port = input.endpoint_port.unwrap_or(51820);
    if port == 0 {
        problems.push(field("endpoint_port", "invalid", "1 to 65535"));
    }
    let public_key = match input.public_key.as_deref() {
        Some(k) => match parse_public_key("public_key", k) {
            Ok(k) => Some(k),
            Err(_) => {
                problems.push(field(
                    "public_key",
                    "invalid",
                    "a WireGuard public key (32 bytes, base64)",
                ));
                None
            }
        },
        None => None,
    };
    let ipv4_subnet = input
        .ipv4_subnet
        .clone()
        .unwrap_or_else(|| "10.8.0.0/16".to_owned());
    let ipv6_subnet = input
        .ipv6_subnet
        .clone()
        .unwrap_or_else(addresses::random_ula64);
    if let Err(Error::Validation(mut list)) = Subnets::parse(&ipv4_subnet, Some(&ipv6_subnet)) {
        problems.append(&mut list);
    }
    let server_type = input
        .server_type
        .clone()
        .unwrap_or_else(|| "shared".to_owned());
    if !["shared", "dedicated"].contains(&server_type.as_str()) {
        problems.push(field("server_type", "invalid", "shared or dedicated"));
    }
    if (server_type == "dedicated") != input.dedicated_user_id.is_some() {
        problems.push(field(
            "dedicated_user_id",
            "invalid",
            "required for, and only for, a dedicated server",
        ));
    }
    let status = input.status.clone().unwrap_or_else(|| "online".to_owned());
    if !STATUSES.contains(&status.as_str()) {
        problems.push(field("status", "invalid", "online, offline or maintenance"));
    }
    if !problems.is_empty() {
        return Err(Error::Validation(problems));
    }

    let mut tx = db.begin_write().await?;
    let inserted = insert(
        tx.conn(),
        &NewServer {
            name: &name,
            provider: "manual",
            region: &region,
            country: country.trim(),
            endpoint_host: &endpoint_host,
            endpoint_port: i64::from(port),
            public_key: public_key.as_deref(),
            ipv4_subnet: &ipv4_subnet,
            ipv6_subnet: Some(&ipv6_subnet),
            server_type: &server_type,
            dedicated_user_id: input.dedicated_user_id,
            status: &status,
        },
        now,
    )
    .await;
    let id = match inserted {
        Ok(id) => id,
        Err(e) if is_unique_violation(&e, "name") => {
            return Err(Error::conflict(
                "server_name_taken",
                "a server with this name exists",
            ));
        }
        Err(e) if is_unique_violation(&e, "") => {
            return Err(Error::conflict(
                "server_key_taken",
                "another server has this public key",
            ));
        }
        Err(e)
            if e.as_database_error()
                .is_some_and(|d| d.is_foreign_key_violation()) =>
        {
            return Err(Error::Validation(vec![field(
                "dedicated_user_id",
                "not_found",
                "no such user",
            )]));
        }
        Err(e) => return Err(e.into()),
    };
    audit::record(
        tx.conn(),
        audit::Entry {
            actor,
            action: "server.added",
            target_type: Some("server"),
            target_id: Some(id.to_string()),
            details: serde_json::json!({ "name": name, "region": region }),
            ip,
        },
        now,
    )
    .await?;
    let view = get(tx.conn(), id).await?;
    tx.commit().await?;
    Ok(view)
}

/// Stops placing devices on a server (existing peers stay until their devices move or go).
pub async fn retire(
    db: &Db,
    id: i64,
    actor: Actor,
    ip: Option<IpAddr>,
    now: Millis,
) -> Result<ServerView> {
    let mut tx = db.begin_write().await?;
    let retired = retire_in(tx.conn(), id, actor, ip, now).await?;
    let view = get(tx.conn(), id).await?;
    if !retired {
        return Err(Error::conflict(
            "server_retired",
            "this server is already retired",
        ));
    }
    tx.commit().await?;
    Ok(view)
}

/// Retires a server inside the caller's transaction, audited; false if it was already
/// retired (or does not exist).
pub async fn retire_in(
    conn: &mut AnyConnection,
    id: i64,
    actor: Actor,
    ip: Option<IpAddr>,
    now: Millis,
) -> Result<bool> {
    let retired: Option<(String,)> = sqlx::query_as(
        "UPDATE vpn_servers SET status = 'retired', updated_at = $1 WHERE id = $2 AND status <> 'retired'
         RETURNING name",
    )
    .bind(now)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((name,)) = retired else {
        return Ok(false);
    };
    audit::record(
        conn,
        audit::Entry {
            actor,
            action: "server.retired",
            target_type: Some("server"),
            target_id: Some(id.to_string()),
            details: serde_json::json!({ "name": name }),
            ip,
        },
        now,
    )
    .await?;
    Ok(true)
}

/// The columns of `SELECT`, in order.
struct ServerRow(ServerView);

impl<'r> sqlx::FromRow<'r, AnyRow> for ServerRow {
    #[allow(clippy::cast_precision_loss)]
    fn from_row(r: &'r AnyRow) -> std::result::Result<Self, sqlx::Error> {
        Ok(Self(ServerView {
            id: r.try_get(0)?,
            uuid: r.try_get(1)?,
            name: r.try_get(2)?,
            region: r.try_get(3)?,
            country: r.try_get(4)?,
            endpoint_host: r.try_get(5)?,
            endpoint_port: r.try_get(6)?,
            public_key: r.try_get(7)?,
            ipv4_subnet: r.try_get(8)?,
            ipv6_subnet: r.try_get(9)?,
            server_type: r.try_get(10)?,
            dedicated_user_id: r.try_get(11)?,
            status: r.try_get(12)?,
            load_percent: r.try_get::<i64, _>(13)? as f64 / 10.0,
            config_revision: r.try_get(14)?,
            devices: r.try_get(15)?,
            created_at: rfc3339(r.try_get(16)?),
        }))
    }
}

const SELECT: &str = "SELECT s.id, s.uuid, s.name, s.region, s.country, s.endpoint_host, s.endpoint_port, s.wg_public_key,
        s.ipv4_subnet, s.ipv6_subnet, s.server_type, s.dedicated_user_id, s.status, s.load_permille,
        s.config_revision, (SELECT COUNT(*) FROM devices d WHERE d.server_id = s.id), s.created_at
     FROM vpn_servers s";

fn view(row: ServerRow) -> ServerView {
    row.0
}

pub async fn get(conn: &mut AnyConnection, id: i64) -> Result<ServerView> {
    let sql = format!("{SELECT} WHERE s.id = $1");
    let row: Option<ServerRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.map(view).ok_or(Error::NotFound("server"))
}

pub async fn list(db: &Db) -> Result<Vec<ServerView>> {
    let sql = format!("{SELECT} ORDER BY s.region, s.name");
    let rows: Vec<ServerRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(db.pool())
        .await?;
    Ok(rows.into_iter().map(view).collect())
}

/// Shared servers in service, for the customer API.
#[allow(clippy::cast_precision_loss)]
pub async fn list_public(db: &Db) -> Result<Vec<PublicServer>> {
    let rows: Vec<(String, String, String, String, i64)> = sqlx::query_as(
        "SELECT uuid, region, country, status, load_permille FROM vpn_servers
         WHERE server_type = 'shared' AND status <> 'retired' ORDER BY region, load_permille",
    )
    .fetch_all(db.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, region, country, status, load)| PublicServer {
            id,
            region,
            country,
            status,
            load_percent: load as f64 / 10.0,
        })
        .collect())
}
