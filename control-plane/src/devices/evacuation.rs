//! Moving every device off a shared server that has left service (retired, or in
//! maintenance), so its customers are not stranded on a machine that is going away.
//!
//! Each device is placed as a new one would be (the user's dedicated server, else their
//! identity server in the old server's region, else that region's least loaded server), gets
//! a fresh address there, and becomes `pending` until the new node acknowledges it: a removal
//! for the old node, an upsert for the new one, in one transaction with the move. Disabled
//! devices move too, without peer changes, so a later re-enable lands on a live server. A
//! device with nowhere to go stays and is counted as stranded. Its customer's config changes
//! (endpoint, server key, address), so each customer with a live device moved is mailed once.
//!
//! Work goes in batches, each its own write transaction that locks the batch's users first, as
//! every access change does (and before any server row), and reads the devices again under
//! those locks: a user's concurrent device change sees each device either before or after its
//! move, and a second evacuation running at once finds the moved devices gone. The servers a
//! batch touches (the old one and every target) are then locked in id order, the order the
//! peer-change log locks them in, before any address is taken on them.

use std::net::IpAddr;

use serde::Serialize;
use serde_json::json;
use sqlx::AnyConnection;
use utoipa::ToSchema;

use crate::audit::{self, Actor, Entry};
use crate::automation::outbox::{self, OutgoingMail};
use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::storage::WriteTx;

use super::Devices;
use super::addresses::{self, Subnets};
use super::entitlement;
use super::peers::{self, Op, PeerChange};
use super::placement::{self, Chosen, Placement};

/// Devices moved per transaction: long enough to amortize, short enough that users' own
/// device changes never wait long behind it.
const BATCH: i64 = 100;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct EvacuationReport {
    /// Devices now on another server.
    pub moved: u64,
    /// Devices left where they were: no server could take them (add capacity and run again).
    pub stranded: u64,
    /// Customers mailed to fetch their new configuration.
    pub customers_notified: u64,
}

/// A device on the server being evacuated: id, user, key, host, status.
type OnServer = (i64, i64, String, Option<i64>, String);

impl Devices {
    /// Moves every device off shared server `server_id`, which must no longer take new
    /// devices. Running it again moves what could not be moved before.
    pub async fn evacuate(
        &self,
        server_id: i64,
        actor: Actor,
        ip: Option<IpAddr>,
    ) -> Result<EvacuationReport> {
        let mut report = EvacuationReport::default();
        let mut after = 0;
        loop {
            let now = self.clock.now_ms();
            let mut tx = self.db.begin_write().await?;
            let region = leaving_region(tx.conn(), server_id).await?;
            let Some((last, batch)) = self.next_batch(tx.conn(), server_id, after).await? else {
                tx.rollback().await?;
                break;
            };
            after = last;
            let done = self
                .move_batch(&mut tx, server_id, &region, batch, (actor, ip), now)
                .await?;
            tx.commit().await?;
            report.moved += done.moved;
            report.stranded += done.stranded;
            report.customers_notified += done.customers_notified;
        }
        Ok(report)
    }

    /// Moves one batch (its users locked) in the caller's transaction, notifies and audits it.
    async fn move_batch(
        &self,
        tx: &mut WriteTx,
        server_id: i64,
        region: &str,
        batch: Vec<OnServer>,
        (actor, ip): (Actor, Option<IpAddr>),
        now: Millis,
    ) -> Result<EvacuationReport> {
        // Every server the batch touches is chosen first and locked in id order, as the
        // peer-change log locks them, so two transactions never wait on each other's
        // servers in opposite orders.
        let mut placed = Vec::with_capacity(batch.len());
        for device in batch {
            let target = placement::choose(tx.conn(), device.1, &in_region(region)).await?;
            placed.push((device, target));
        }
        let mut servers: Vec<i64> = placed
            .iter()
            .filter_map(|(_, target)| target.as_ref().map(|t| t.id))
            .chain([server_id])
            .collect();
        servers.sort_unstable();
        servers.dedup();
        lock_servers(tx.conn(), &servers).await?;
        let mut done = EvacuationReport::default();
        let mut changes = Vec::new();
        let mut notify = Vec::new();
        for (device, target) in &placed {
            match self
                .move_device(
                    tx.conn(),
                    server_id,
                    region,
                    device,
                    target.as_ref(),
                    &mut changes,
                    now,
                )
                .await?
            {
                Moved::Live => {
                    done.moved += 1;
                    notify.push(device.1);
                }
                Moved::Disabled => done.moved += 1,
                Moved::Stranded => done.stranded += 1,
            }
        }
        peers::record_in(tx, &changes, now).await?;
        notify.sort_unstable();
        notify.dedup();
        for user_id in notify {
            done.customers_notified +=
                u64::from(mail_customer(tx.conn(), server_id, region, user_id, now).await?);
        }
        // Each batch is audited with what it did, in its own transaction: a run cut short
        // (an error, the request's time limit) leaves its finished batches on record.
        audit::record(
            tx.conn(),
            Entry {
                actor,
                action: "server.evacuated",
                target_type: Some("server"),
                target_id: Some(server_id.to_string()),
                details: json!(done),
                ip,
            },
            now,
        )
        .await?;
        Ok(done)
    }

    /// The next devices on the server after id `after`, their users locked and the devices
    /// read again under those locks; with the last id looked at. `None` when none are left.
    async fn next_batch(
        &self,
        conn: &mut AnyConnection,
        server_id: i64,
        after: i64,
    ) -> Result<Option<(i64, Vec<OnServer>)>> {
        const SELECT: &str = "SELECT id, user_id, public_key, host, status FROM devices
             WHERE server_id = $1 AND id > $2 AND id <= $3 ORDER BY id LIMIT $4";
        let first: Vec<OnServer> = sqlx::query_as(SELECT)
            .bind(server_id)
            .bind(after)
            .bind(i64::MAX)
            .bind(BATCH)
            .fetch_all(&mut *conn)
            .await?;
        let Some(&(last, ..)) = first.last() else {
            return Ok(None);
        };
        let mut users: Vec<i64> = first.iter().map(|d| d.1).collect();
        users.sort_unstable();
        users.dedup();
        entitlement::lock_users(&mut *conn, &users).await?;
        let again: Vec<OnServer> = sqlx::query_as(SELECT)
            .bind(server_id)
            .bind(after)
            .bind(last)
            .bind(BATCH)
            .fetch_all(&mut *conn)
            .await?;
        // Only the devices of users this transaction holds: a lock is what makes a move safe.
        // A device deleted, or moved by another evacuation, meanwhile is gone from this read.
        let locked = again
            .into_iter()
            .filter(|d| users.binary_search(&d.1).is_ok())
            .collect();
        Ok(Some((last, locked)))
    }

    #[allow(clippy::too_many_arguments)]
    async fn move_device(
        &self,
        conn: &mut AnyConnection,
        from: i64,
        region: &str,
        device: &OnServer,
        target: Option<&Chosen>,
        changes: &mut Vec<PeerChange>,
        now: Millis,
    ) -> Result<Moved> {
        let (id, user_id, public_key, host, status) = device;
        let Some(target) = target else {
            return Ok(Moved::Stranded);
        };
        let subnets = Subnets::parse(&target.ipv4_subnet, target.ipv6_subnet.as_deref())?;
        let Some(new_host) = addresses::allocate(
            &mut *conn,
            self.db.engine(),
            target.id,
            subnets.max_host(),
            target.has_released,
            now,
        )
        .await?
        else {
            return Ok(Moved::Stranded);
        };
        let ipv4 = subnets.ipv4(new_host).to_string();
        let ipv6 = subnets.ipv6(new_host).map(|a| a.to_string());
        let live = status != "disabled";
        // Handshake, endpoint and counters belonged to the old node.
        sqlx::query(
            "UPDATE devices SET server_id = $1, ipv4_address = $2, ipv6_address = $3, host = $4,
                    status = CASE WHEN status = 'disabled' THEN 'disabled' ELSE 'pending' END,
                    last_handshake_at = NULL, endpoint = NULL, applied_at = NULL,
                    rx_bytes = 0, tx_bytes = 0, updated_at = $5
             WHERE id = $6",
        )
        .bind(target.id)
        .bind(&ipv4)
        .bind(ipv6.as_deref())
        .bind(new_host)
        .bind(now)
        .bind(*id)
        .execute(&mut *conn)
        .await?;
        if let Some(host) = host {
            addresses::release(&mut *conn, from, *host, now + self.quarantine).await?;
        }
        // The user's identity in the region pointed at the old server: it follows, so their
        // next device lands beside the moved ones (not when they went to a dedicated server
        // elsewhere).
        if target.region == region {
            sqlx::query(
                "UPDATE regional_identities SET server_id = $1, updated_at = $2
                 WHERE user_id = $3 AND server_id = $4",
            )
            .bind(target.id)
            .bind(now)
            .bind(*user_id)
            .bind(from)
            .execute(&mut *conn)
            .await?;
        }
        if !live {
            return Ok(Moved::Disabled);
        }
        changes.push(PeerChange {
            server_id: from,
            op: Op::Remove,
            device_id: Some(*id),
            public_key: public_key.clone(),
            old_public_key: None,
            allowed_ips: None,
            reason: "server_evacuated",
        });
        changes.push(PeerChange {
            server_id: target.id,
            op: Op::Upsert,
            device_id: Some(*id),
            public_key: public_key.clone(),
            old_public_key: None,
            allowed_ips: Some(peers::allowed_ips(&ipv4, ipv6.as_deref())),
            reason: "server_evacuated",
        });
        Ok(Moved::Live)
    }
}

/// Where a device of the server's region would go, as a new one would.
fn in_region(region: &str) -> Placement<'_> {
    Placement {
        server: None,
        region: Some(region),
        default_region: None,
    }
}

/// Locks server rows, in the given (id) order, for the rest of the transaction on
/// PostgreSQL; SQLite's single writer needs nothing.
async fn lock_servers(conn: &mut AnyConnection, ids: &[i64]) -> Result<()> {
    if conn.backend_name() != "PostgreSQL" {
        return Ok(());
    }
    for id in ids {
        sqlx::query("SELECT id FROM vpn_servers WHERE id = $1 FOR NO KEY UPDATE")
            .bind(*id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

enum Moved {
    Live,
    Disabled,
    Stranded,
}

/// The region of a shared server that no longer takes devices (the only kind that can be
/// evacuated). Not a lock (server rows come after users in the lock order): a server put back
/// in service meanwhile only loses devices it could have kept, and every move is guarded by
/// its user's lock.
async fn leaving_region(conn: &mut AnyConnection, server_id: i64) -> Result<String> {
    let row: Option<(String, String, String)> =
        sqlx::query_as("SELECT status, server_type, region FROM vpn_servers WHERE id = $1")
            .bind(server_id)
            .fetch_optional(conn)
            .await?;
    let Some((status, server_type, region)) = row else {
        return Err(Error::NotFound("server"));
    };
    if server_type != "shared" {
        return Err(Error::conflict(
            "dedicated_server",
            "a dedicated server's devices belong to it; release the server instead",
        ));
    }
    if !matches!(status.as_str(), "retired" | "maintenance") {
        return Err(Error::conflict(
            "server_in_service",
            "this server still takes new devices: retire it first",
        ));
    }
    Ok(region)
}

/// Tells the customer their devices moved and need their new configuration. Once per
/// customer and server. Returns whether a mail was queued.
async fn mail_customer(
    conn: &mut AnyConnection,
    server_id: i64,
    region: &str,
    user_id: i64,
    now: Millis,
) -> Result<bool> {
    let (email, first_name) = crate::accounts::contact(&mut *conn, user_id).await?;
    outbox::enqueue(
        conn,
        OutgoingMail {
            to: &email,
            user_id: Some(user_id),
            template: "devices_moved",
            context: json!({ "first_name": first_name, "region": region }),
            dedupe_key: Some(format!("devices_moved:{server_id}:{user_id}")),
        },
        now,
    )
    .await
}
