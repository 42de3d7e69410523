//! Devices: what a customer pays for. Adding one is a single transaction: the plan check, the
//! choice of server, the address, the device row and the server's peer change commit together
//! or not at all. Disabling always records peer removals: nothing is only a database flag.

pub mod addresses;
mod admission;
pub mod client_config;
pub mod entitlement;
mod evacuation;
pub mod keys;
mod names;
pub mod peers;
mod placement;
mod views;

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row as _};

use crate::clock::{HOUR, Millis, SharedClock, rfc3339};
use crate::config::Settings;
use crate::error::{Error, FieldError, Result};
use crate::secret::Secret;
use crate::storage::{Db, is_unique_violation};

use self::addresses::Subnets;
use self::client_config::ConfigInput;
use self::entitlement::Entitlement;
use self::peers::{Op, PeerChange};
use self::placement::Placement;

pub use self::entitlement::disable_all_for_users;
pub use self::evacuation::EvacuationReport;
pub use self::views::{
    CreatedDevice, DeviceServer, DeviceView, NewDevice, RenameDevice, RotateKey,
};

#[derive(Debug)]
pub struct Devices {
    db: Db,
    clock: SharedClock,
    regions: Vec<String>,
    dns: Vec<String>,
    quarantine: Millis,
}

const NAME_MAX: usize = 64;

fn validate_name(raw: &str) -> Result<String> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > NAME_MAX || name.chars().any(char::is_control) {
        return Err(Error::Validation(vec![FieldError::new(
            "name",
            "invalid",
            format!("1 to {NAME_MAX} characters, no line breaks"),
        )]));
    }
    Ok(name.to_owned())
}

/// A device joined with its server: the columns of `DEVICE_SELECT`, in order.
struct DeviceRow(Loaded);

impl<'r> sqlx::FromRow<'r, AnyRow> for DeviceRow {
    fn from_row(r: &'r AnyRow) -> std::result::Result<Self, sqlx::Error> {
        Ok(Self(Loaded {
            id: r.try_get(0)?,
            view: DeviceView {
                id: r.try_get(1)?,
                name: r.try_get(2)?,
                status: r.try_get(3)?,
                disabled_reason: r.try_get(4)?,
                public_key: r.try_get(5)?,
                ipv4_address: r.try_get(6)?,
                ipv6_address: r.try_get(7)?,
                last_handshake_at: r.try_get::<Option<i64>, _>(8)?.map(rfc3339),
                rx_bytes: r.try_get(9)?,
                tx_bytes: r.try_get(10)?,
                created_at: rfc3339(r.try_get(11)?),
                server: DeviceServer {
                    id: r.try_get(12)?,
                    region: r.try_get(13)?,
                    country: r.try_get(14)?,
                },
            },
            endpoint_host: r.try_get(15)?,
            endpoint_port: r.try_get(16)?,
            server_key: r.try_get(17)?,
            server_id: r.try_get(18)?,
        }))
    }
}

const DEVICE_SELECT: &str =
    "SELECT d.id, d.uuid, d.name, d.status, d.disabled_reason, d.public_key, d.ipv4_address,
        d.ipv6_address, d.last_handshake_at, d.rx_bytes, d.tx_bytes, d.created_at,
        s.uuid, s.region, s.country, s.endpoint_host, s.endpoint_port, s.wg_public_key, s.id
     FROM devices d JOIN vpn_servers s ON s.id = d.server_id";

/// A device with what its config needs.
#[derive(Debug)]
struct Loaded {
    id: i64,
    view: DeviceView,
    endpoint_host: String,
    endpoint_port: i64,
    server_key: Option<String>,
    server_id: i64,
}

fn loaded(row: DeviceRow) -> Loaded {
    row.0
}

impl Devices {
    pub fn new(db: Db, clock: SharedClock, settings: &Settings) -> Self {
        Self {
            db,
            clock,
            regions: settings.regions.clone(),
            dns: settings.client_dns.clone(),
            quarantine: i64::try_from(settings.address_quarantine_hours).unwrap_or(24) * HOUR,
        }
    }

    /// Serializes a user's device changes with every other change to their access.
    async fn lock_user(&self, conn: &mut AnyConnection, user_id: i64) -> Result<()> {
        entitlement::lock_users(conn, &[user_id]).await
    }

    pub async fn create(&self, user_id: i64, input: NewDevice) -> Result<CreatedDevice> {
        let mut problems = Vec::new();
        let name = match input.name.as_deref() {
            Some(n) => gather(validate_name(n), &mut problems)?,
            None => None,
        };
        let (public_key, generated) = match input.public_key.as_deref() {
            Some(k) => (
                gather(keys::parse_public_key("public_key", k), &mut problems)?,
                None,
            ),
            None => {
                let pair = keys::generate_key_pair()?;
                (Some(pair.public_key.clone()), Some(pair.private_key))
            }
        };
        if let Some(region) = input.region.as_deref()
            && !crate::servers::is_region_name(region)
        {
            problems.push(FieldError::new(
                "region",
                "invalid",
                "a region such as us-east",
            ));
        }
        if !problems.is_empty() {
            return Err(Error::Validation(problems));
        }
        let Some(public_key) = public_key else {
            return Err(Error::internal("validated key missing"));
        };

        let now = self.clock.now_ms();
        let mut tx = self.db.begin_write().await?;
        self.lock_user(tx.conn(), user_id).await?;
        let want = Placement {
            server: input.server_id.as_deref(),
            region: input.region.as_deref(),
            default_region: self.regions.first().map(String::as_str),
        };
        let admission = admission::read(tx.conn(), user_id, &want, now).await?;
        let current = admission.counted;
        let (is_vip, max) = match admission.entitlement {
            Entitlement::Denied(refusal) => return Err(refusal),
            Entitlement::Unlimited { is_vip } => (is_vip, None),
            Entitlement::Limited(max) => {
                if current >= max {
                    return Err(entitlement::limit_reached(current, max));
                }
                (false, Some(max))
            }
        };
        let Some(server) = admission.server else {
            return Err(placement::unavailable(tx.conn(), user_id, &want).await?);
        };
        let subnets = Subnets::parse(&server.ipv4_subnet, server.ipv6_subnet.as_deref())?;
        let host = addresses::allocate(
            tx.conn(),
            self.db.engine(),
            server.id,
            subnets.max_host(),
            server.has_released,
            now,
        )
        .await?
        .ok_or_else(|| {
            Error::conflict(
                "server_full",
                "this server has no free addresses; choose another",
            )
        })?;
        let ipv4 = subnets.ipv4(host).to_string();
        let ipv6 = subnets.ipv6(host).map(|a| a.to_string());
        let name = match name {
            Some(n) => n,
            None => self.free_name(tx.conn(), user_id).await?,
        };
        let device_uuid = uuid::Uuid::new_v4().to_string();
        let inserted: Result<(i64,), sqlx::Error> = sqlx::query_as(
            "INSERT INTO devices (uuid, user_id, server_id, name, public_key, ipv4_address, ipv6_address, host,
                                  status, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $9) RETURNING id",
        )
        .bind(&device_uuid)
        .bind(user_id)
        .bind(server.id)
        .bind(&name)
        .bind(&public_key)
        .bind(&ipv4)
        .bind(ipv6.as_deref())
        .bind(host)
        .bind(now)
        .fetch_one(tx.conn())
        .await;
        let (device_id,) = match inserted {
            Ok(row) => row,
            Err(e) if is_unique_violation(&e, "public_key") => {
                return Err(Error::conflict(
                    "key_in_use",
                    "this public key is already registered",
                ));
            }
            Err(e) if is_unique_violation(&e, "name") => {
                return Err(Error::conflict(
                    "name_taken",
                    "you already have a device with this name",
                ));
            }
            Err(e) => return Err(e.into()),
        };
        peers::record_in(
            &mut tx,
            &[PeerChange {
                server_id: server.id,
                op: Op::Upsert,
                device_id: Some(device_id),
                allowed_ips: Some(peers::allowed_ips(&ipv4, ipv6.as_deref())),
                public_key: public_key.clone(),
                old_public_key: None,
                reason: "device_added",
            }],
            now,
        )
        .await?;
        tx.commit().await?;
        // Everything the view shows is known here; no need to read the row back.
        let device = Loaded {
            id: device_id,
            view: DeviceView {
                id: device_uuid,
                name,
                status: "pending".into(),
                disabled_reason: None,
                public_key,
                ipv4_address: ipv4,
                ipv6_address: ipv6,
                last_handshake_at: None,
                rx_bytes: 0,
                tx_bytes: 0,
                created_at: rfc3339(now),
                server: DeviceServer {
                    id: server.uuid,
                    region: server.region,
                    country: server.country,
                },
            },
            endpoint_host: server.endpoint_host,
            endpoint_port: server.endpoint_port,
            server_key: server.public_key,
            server_id: server.id,
        };
        let config = self.render_config(&device, generated.as_ref())?;
        Ok(CreatedDevice {
            device: device.view,
            config,
            private_key: generated.map(|k| k.expose().to_owned()),
            is_vip,
            current_devices: current + 1,
            max_devices: max,
            remaining: max.map(|m| m - current - 1),
        })
    }

    async fn free_name(&self, conn: &mut AnyConnection, user_id: i64) -> Result<String> {
        for _ in 0..8 {
            let candidate = names::random_name();
            let taken: Option<(i64,)> =
                sqlx::query_as("SELECT id FROM devices WHERE user_id = $1 AND name = $2")
                    .bind(user_id)
                    .bind(&candidate)
                    .fetch_optional(&mut *conn)
                    .await?;
            if taken.is_none() {
                return Ok(candidate);
            }
        }
        Ok(format!(
            "{}-{}",
            names::random_name(),
            &uuid::Uuid::new_v4().simple().to_string()[..4]
        ))
    }

    async fn load(
        &self,
        conn: &mut AnyConnection,
        user_id: i64,
        device: DeviceRef<'_>,
    ) -> Result<Loaded> {
        let row: Option<DeviceRow> = match device {
            DeviceRef::Id(id) => {
                let sql = format!("{DEVICE_SELECT} WHERE d.id = $1 AND d.user_id = $2");
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .bind(user_id)
                    .fetch_optional(conn)
                    .await?
            }
            DeviceRef::Uuid(uuid) => {
                let sql = format!("{DEVICE_SELECT} WHERE d.uuid = $1 AND d.user_id = $2");
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(uuid)
                    .bind(user_id)
                    .fetch_optional(conn)
                    .await?
            }
        };
        row.map(loaded).ok_or(Error::NotFound("device"))
    }

    fn render_config(&self, device: &Loaded, private_key: Option<&Secret>) -> Result<String> {
        let server_key = device.server_key.as_deref().ok_or_else(|| {
            Error::conflict("server_not_ready", "the server has no WireGuard key yet")
        })?;
        Ok(client_config::render(&ConfigInput {
            device_name: &device.view.name,
            private_key,
            ipv4: &device.view.ipv4_address,
            ipv6: device.view.ipv6_address.as_deref(),
            dns: &self.dns,
            server_public_key: server_key,
            endpoint_host: &device.endpoint_host,
            endpoint_port: u16::try_from(device.endpoint_port).unwrap_or(51820),
        }))
    }

    pub async fn list(&self, user_id: i64) -> Result<Vec<DeviceView>> {
        let sql = format!("{DEVICE_SELECT} WHERE d.user_id = $1 ORDER BY d.created_at, d.id");
        let rows: Vec<DeviceRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .fetch_all(self.db.pool())
            .await?;
        Ok(rows.into_iter().map(|r| loaded(r).view).collect())
    }

    /// The device's config as stored (with a private-key placeholder: the key is not kept).
    pub async fn config(&self, user_id: i64, device: &str) -> Result<(DeviceView, String)> {
        let mut conn = self.db.pool().acquire().await?;
        let loaded = self
            .load(&mut conn, user_id, DeviceRef::Uuid(device))
            .await?;
        let config = self.render_config(&loaded, None)?;
        Ok((loaded.view, config))
    }

    pub async fn rename(
        &self,
        user_id: i64,
        device: &str,
        input: RenameDevice,
    ) -> Result<DeviceView> {
        let name = validate_name(input.name.as_deref().unwrap_or_default())?;
        let now = self.clock.now_ms();
        let mut tx = self.db.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE devices SET name = $1, updated_at = $2 WHERE uuid = $3 AND user_id = $4",
        )
        .bind(&name)
        .bind(now)
        .bind(device)
        .bind(user_id)
        .execute(tx.conn())
        .await;
        match updated {
            Ok(r) if r.rows_affected() == 0 => return Err(Error::NotFound("device")),
            Ok(_) => {}
            Err(e) if is_unique_violation(&e, "name") => {
                return Err(Error::conflict(
                    "name_taken",
                    "you already have a device with this name",
                ));
            }
            Err(e) => return Err(e.into()),
        }
        let loaded = self
            .load(tx.conn(), user_id, DeviceRef::Uuid(device))
            .await?;
        tx.commit().await?;
        Ok(loaded.view)
    }

    /// Removes a device: its peer leaves the server, and its address rests in quarantine.
    pub async fn delete(&self, user_id: i64, device: &str) -> Result<()> {
        let now = self.clock.now_ms();
        let mut tx = self.db.begin_write().await?;
        self.lock_user(tx.conn(), user_id).await?;
        let loaded = self
            .load(tx.conn(), user_id, DeviceRef::Uuid(device))
            .await?;
        let (host,): (Option<i64>,) = sqlx::query_as("SELECT host FROM devices WHERE id = $1")
            .bind(loaded.id)
            .fetch_one(tx.conn())
            .await?;
        if loaded.view.status != "disabled" {
            peers::record_in(
                &mut tx,
                &[PeerChange {
                    server_id: loaded.server_id,
                    op: Op::Remove,
                    device_id: Some(loaded.id),
                    public_key: loaded.view.public_key.clone(),
                    old_public_key: None,
                    allowed_ips: None,
                    reason: "device_deleted",
                }],
                now,
            )
            .await?;
        }
        sqlx::query("DELETE FROM devices WHERE id = $1")
            .bind(loaded.id)
            .execute(tx.conn())
            .await?;
        if let Some(host) = host {
            addresses::release(tx.conn(), loaded.server_id, host, now + self.quarantine).await?;
        }
        tx.commit().await
    }

    /// Replaces a device's key: one upsert that names the old key, so the node removes the old
    /// peer and adds the new one (never a modify in place).
    pub async fn rotate_key(
        &self,
        user_id: i64,
        device: &str,
        input: RotateKey,
    ) -> Result<CreatedDevice> {
        let (public_key, generated) = match input.public_key.as_deref() {
            Some(k) => (keys::parse_public_key("public_key", k)?, None),
            None => {
                let pair = keys::generate_key_pair()?;
                (pair.public_key, Some(pair.private_key))
            }
        };
        let now = self.clock.now_ms();
        let mut tx = self.db.begin_write().await?;
        self.lock_user(tx.conn(), user_id).await?;
        let before = self
            .load(tx.conn(), user_id, DeviceRef::Uuid(device))
            .await?;
        if before.view.public_key == public_key {
            return Err(Error::conflict(
                "same_key",
                "the new key is the current key",
            ));
        }
        let enabled = before.view.status != "disabled";
        let updated = sqlx::query(
            "UPDATE devices SET public_key = $1, status = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(&public_key)
        .bind(if enabled { "pending" } else { "disabled" })
        .bind(now)
        .bind(before.id)
        .execute(tx.conn())
        .await;
        match updated {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e, "public_key") => {
                return Err(Error::conflict(
                    "key_in_use",
                    "this public key is already registered",
                ));
            }
            Err(e) => return Err(e.into()),
        }
        if enabled {
            peers::record_in(
                &mut tx,
                &[PeerChange {
                    server_id: before.server_id,
                    op: Op::Upsert,
                    device_id: Some(before.id),
                    allowed_ips: Some(peers::allowed_ips(
                        &before.view.ipv4_address,
                        before.view.ipv6_address.as_deref(),
                    )),
                    public_key,
                    old_public_key: Some(before.view.public_key.clone()),
                    reason: "key_rotated",
                }],
                now,
            )
            .await?;
        }
        let after = self
            .load(tx.conn(), user_id, DeviceRef::Id(before.id))
            .await?;
        let current = entitlement::active_devices(tx.conn(), user_id).await?;
        tx.commit().await?;
        let config = self.render_config(&after, generated.as_ref())?;
        Ok(CreatedDevice {
            device: after.view,
            config,
            private_key: generated.map(|k| k.expose().to_owned()),
            is_vip: false,
            current_devices: current,
            max_devices: None,
            remaining: None,
        })
    }
}

/// Moves a validation error's field problems into `problems` (so every problem is reported
/// at once); other errors pass through.
fn gather<T>(result: Result<T>, problems: &mut Vec<FieldError>) -> Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(Error::Validation(mut list)) => {
            problems.append(&mut list);
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[derive(Debug, Clone, Copy)]
enum DeviceRef<'a> {
    Id(i64),
    Uuid(&'a str),
}
