//! What a node's `Sync` stream reads and writes: where it stands on hello, the peers it must
//! catch up on, its acknowledgements and its heartbeats. The stream itself is `grpc::sync`.

use std::collections::HashSet;

use sqlx::Row as _;
use sqlx::any::AnyRow;
use truevault_proto::v1::{
    Backend, ChangeKind, Changes, Heartbeat, Hello, InterfaceSettings, Peer, PeerChange,
};

use crate::clock::Millis;
use crate::devices::peers::{self, Logged, Op};
use crate::error::{Error, Result};
use crate::storage::{Db, placeholders};

/// Changes per `Changes` message; a node further behind gets several in a row.
pub const CHANGES_BATCH_LEN: usize = 1_000;
const CHANGES_BATCH: i64 = CHANGES_BATCH_LEN as i64;
/// A node this far behind gets a snapshot instead of the changes one by one.
pub const SNAPSHOT_GAP: i64 = 10_000;
/// Heartbeat intervals a node may announce, and the default when it announces none.
const HEARTBEAT_MS: (i64, i64, i64) = (1_000, 300_000, 30_000);

/// A session as opened on hello.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    pub generation: i64,
    /// The server's committed revision when the session opened.
    pub revision: i64,
    pub heartbeat_interval_ms: i64,
}

/// Opens a node's session: a new generation (older streams' writes stop counting), the
/// agent's facts, and the server online.
pub async fn open(db: &Db, server_id: i64, hello: &Hello, now: Millis) -> Result<Opened> {
    let interval = match i64::from(hello.heartbeat_interval_ms) {
        0 => HEARTBEAT_MS.2,
        ms => ms.clamp(HEARTBEAT_MS.0, HEARTBEAT_MS.1),
    };
    let backend = hello
        .interface
        .as_ref()
        .map(|i| match i.backend() {
            Backend::Kernel => "kernel",
            Backend::Userspace => "userspace",
            Backend::Unspecified => "unknown",
        })
        .unwrap_or("unknown");
    let mut tx = db.begin_write().await?;
    let row: Option<(i64, i64)> = sqlx::query_as(
        "UPDATE vpn_servers SET session_generation = session_generation + 1,
            heartbeat_interval_ms = $1, agent_version = $2, wg_backend = $3, last_seen_at = $4,
            status = CASE WHEN status IN ('offline', 'provisioning') THEN 'online' ELSE status END,
            updated_at = $4
         WHERE id = $5 RETURNING session_generation, config_revision",
    )
    .bind(interval)
    .bind(truncate(&hello.agent_version, 64))
    .bind(backend)
    .bind(now)
    .bind(server_id)
    .fetch_optional(tx.conn())
    .await?;
    tx.commit().await?;
    let (generation, revision) = row.ok_or(Error::NotFound("server"))?;
    Ok(Opened {
        generation,
        revision,
        heartbeat_interval_ms: interval,
    })
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Whether a node at `applied` must get a snapshot rather than the changes since: it has
/// nothing yet, it is ahead of us (a restored database), or too far behind.
pub async fn needs_snapshot(db: &Db, server_id: i64, applied: i64, current: i64) -> Result<bool> {
    if applied == 0 || applied > current || current - applied > SNAPSHOT_GAP {
        return Ok(true);
    }
    // Changes before the oldest one kept are gone (`devices::peers::prune`).
    let (oldest,): (Option<i64>,) =
        sqlx::query_as("SELECT MIN(revision) FROM peer_changes WHERE server_id = $1")
            .bind(server_id)
            .fetch_one(db.pool())
            .await?;
    Ok(oldest.is_some_and(|oldest| oldest > applied + 1))
}

/// Every peer the node must have, at a revision it can continue from.
///
/// The revision is read before the peers: a change committing in between is then both in the
/// peer set and among the changes sent after the snapshot, and applying it twice is harmless
/// (upserts and removals are idempotent on the node). The other order could lose it.
pub async fn snapshot(db: &Db, server_id: i64) -> Result<(i64, InterfaceSettings, Vec<Peer>)> {
    let (revision, v4, v6, port): (i64, String, Option<String>, i64) = sqlx::query_as(
        "SELECT config_revision, ipv4_subnet, ipv6_subnet, endpoint_port FROM vpn_servers WHERE id = $1",
    )
    .bind(server_id)
    .fetch_optional(db.pool())
    .await?
    .ok_or(Error::NotFound("server"))?;
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT public_key, ipv4_address, ipv6_address FROM devices
         WHERE server_id = $1 AND status IN ('pending', 'active') ORDER BY id",
    )
    .bind(server_id)
    .fetch_all(db.pool())
    .await?;
    let peers = rows
        .into_iter()
        .map(|(public_key, v4, v6)| Peer {
            public_key,
            allowed_ips: split_ips(&peers::allowed_ips(&v4, v6.as_deref())),
        })
        .collect();
    Ok((
        revision,
        interface_settings(&v4, v6.as_deref(), port),
        peers,
    ))
}

fn split_ips(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The server's own addresses (host 1 of each subnet) and WireGuard settings.
pub fn interface_settings(v4: &str, v6: Option<&str>, port: i64) -> InterfaceSettings {
    let mut addresses = Vec::new();
    if let Ok(subnets) = crate::devices::addresses::Subnets::parse(v4, v6) {
        addresses.push(format!("{}/{}", subnets.ipv4(1), subnets.v4.1));
        if let (Some(addr), Some((_, prefix))) = (subnets.ipv6(1), subnets.v6) {
            addresses.push(format!("{addr}/{prefix}"));
        }
    }
    InterfaceSettings {
        addresses,
        listen_port: u32::try_from(port).unwrap_or(51820),
        mtu: 1420,
    }
}

/// Up to [`CHANGES_BATCH_LEN`] changes after `after`, in order; `None` when there are none.
pub async fn changes_since(db: &Db, server_id: i64, after: i64) -> Result<Option<Changes>> {
    let rows = sqlx::query(
        "SELECT revision, op, public_key, old_public_key, allowed_ips FROM peer_changes
         WHERE server_id = $1 AND revision > $2 ORDER BY revision LIMIT $3",
    )
    .bind(server_id)
    .bind(after)
    .bind(CHANGES_BATCH)
    .fetch_all(db.pool())
    .await?;
    let changes = rows
        .iter()
        .map(|row| change_from_row(row, 0))
        .collect::<Result<Vec<_>>>()?;
    Ok(changes
        .last()
        .map(|last| last.revision)
        .map(|revision| Changes { revision, changes }))
}

/// A change from a `peer_changes` row whose columns from `first` on are `revision, op,
/// public_key, old_public_key, allowed_ips`.
pub fn change_from_row(row: &AnyRow, first: usize) -> Result<PeerChange> {
    let op: String = row.try_get(first + 1)?;
    Ok(change(
        row.try_get(first)?,
        op == "remove",
        row.try_get(first + 2)?,
        row.try_get(first + 3)?,
        row.try_get::<Option<String>, _>(first + 4)?.as_deref(),
    ))
}

/// A change as its transaction logged it.
pub fn change_from_logged(logged: &Logged) -> PeerChange {
    change(
        logged.revision,
        logged.op == Op::Remove,
        logged.public_key.clone(),
        logged.old_public_key.clone(),
        logged.allowed_ips.as_deref(),
    )
}

fn change(
    revision: i64,
    remove: bool,
    public_key: String,
    old_public_key: Option<String>,
    allowed_ips: Option<&str>,
) -> PeerChange {
    PeerChange {
        revision: u64::try_from(revision).unwrap_or_default(),
        kind: if remove {
            ChangeKind::Remove
        } else {
            ChangeKind::Upsert
        } as i32,
        peer: Some(Peer {
            public_key,
            allowed_ips: allowed_ips.map(split_ips).unwrap_or_default(),
        }),
        old_public_key: old_public_key.unwrap_or_default(),
    }
}

/// Acknowledgements received from a node and not yet recorded. They are recorded together a
/// moment after the first one arrives, so a burst of changes costs one write, not one per
/// change, and customers' writes rarely queue behind an acknowledgement.
#[derive(Debug, Default)]
pub struct AckBatch {
    /// The highest revision acknowledged.
    revision: i64,
    /// Keys the node could not apply, in any acknowledgement of the batch (they stay pending).
    failed: HashSet<String>,
    /// Each acknowledgement's revision and arrival, in arrival order.
    received: Vec<(i64, Millis)>,
}

impl AckBatch {
    pub fn add(
        &mut self,
        revision: i64,
        failed_keys: impl IntoIterator<Item = String>,
        at: Millis,
    ) {
        self.revision = self.revision.max(revision);
        self.failed.extend(failed_keys);
        self.received.push((revision, at));
    }

    pub fn is_empty(&self) -> bool {
        self.received.is_empty()
    }

    /// When the change at `revision` was first acknowledged.
    fn acknowledged_at(&self, revision: i64) -> Option<Millis> {
        let mut highest = i64::MIN;
        self.received.iter().find_map(|&(r, at)| {
            highest = highest.max(r);
            (highest >= revision).then_some(at)
        })
    }
}

/// Records a batch of acknowledgements: the node applied everything up to the batch's revision
/// except the failed keys, so those devices become `active`. Returns the commit-to-
/// acknowledgement latency of each newly acknowledged change.
pub async fn acknowledge(db: &Db, server_id: i64, batch: &AckBatch) -> Result<Vec<Millis>> {
    let Some(&(_, now)) = batch.received.last() else {
        return Ok(Vec::new());
    };
    let revision = batch.revision;
    // Reads first, outside the write turn (WAL readers never wait for writers): the write
    // itself is two guarded updates.
    let (before,): (i64,) =
        sqlx::query_as("SELECT applied_revision FROM vpn_servers WHERE id = $1")
            .bind(server_id)
            .fetch_one(db.pool())
            .await?;
    if revision <= before {
        return Ok(Vec::new());
    }
    let created: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT revision, created_at FROM peer_changes
         WHERE server_id = $1 AND revision > $2 AND revision <= $3
         ORDER BY revision LIMIT 10000",
    )
    .bind(server_id)
    .bind(before)
    .bind(revision)
    .fetch_all(db.pool())
    .await?;
    let mut tx = db.begin_write().await?;
    let advanced = sqlx::query(
        "UPDATE vpn_servers SET applied_revision = $1 WHERE id = $2 AND applied_revision < $1",
    )
    .bind(revision)
    .bind(server_id)
    .execute(tx.conn())
    .await?
    .rows_affected();
    if advanced == 0 {
        tx.rollback().await?;
        return Ok(Vec::new());
    }
    // A device is installed once the node has applied its latest upsert (after a key rotation,
    // the upsert of the new key, not the first one).
    let failed: Vec<&str> = batch.failed.iter().map(String::as_str).collect();
    let mut sql = String::from(
        "UPDATE devices SET status = 'active', applied_at = COALESCE(applied_at, $1), updated_at = $1
         WHERE server_id = $2 AND status = 'pending'
           AND (SELECT MAX(pc.revision) FROM peer_changes pc
                WHERE pc.device_id = devices.id AND pc.op = 'upsert') <= $3",
    );
    if !failed.is_empty() {
        sql.push_str(&format!(
            " AND public_key NOT IN ({})",
            placeholders(4, failed.len())
        ));
    }
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(now)
        .bind(server_id)
        .bind(revision);
    for key in &failed {
        query = query.bind(*key);
    }
    query.execute(tx.conn()).await?;
    tx.commit().await?;
    Ok(created
        .into_iter()
        .map(|(revision, created)| batch.acknowledged_at(revision).unwrap_or(now) - created)
        .collect())
}

/// What a heartbeat changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    Recorded,
    /// A newer stream of this node exists (here or on another replica): this one must end.
    Superseded,
}

/// Records a heartbeat: the node is alive, its load, and its peers' counters.
pub async fn heartbeat(
    db: &Db,
    server_id: i64,
    generation: i64,
    beat: &Heartbeat,
    now: Millis,
) -> Result<Beat> {
    let load = beat.health.as_ref().map_or(0, load_permille);
    let mut tx = db.begin_write().await?;
    let updated = sqlx::query(
        "UPDATE vpn_servers SET last_seen_at = $1, load_permille = $2,
            status = CASE WHEN status IN ('offline', 'provisioning') THEN 'online' ELSE status END
         WHERE id = $3 AND session_generation = $4",
    )
    .bind(now)
    .bind(load)
    .bind(server_id)
    .bind(generation)
    .execute(tx.conn())
    .await?
    .rows_affected();
    if updated == 0 {
        tx.rollback().await?;
        return Ok(Beat::Superseded);
    }
    // One statement per 200 peers: the counters of a busy node arrive in a few round trips.
    for batch in beat.peers.chunks(200) {
        let rows: Vec<String> = (0..batch.len())
            .map(|i| {
                let p = 2 + i * 5;
                format!(
                    "(CAST(${} AS TEXT), CAST(${} AS BIGINT), CAST(${} AS BIGINT), CAST(${} AS BIGINT), CAST(${} AS TEXT))",
                    p,
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4
                )
            })
            .collect();
        let sql = format!(
            "WITH v (k, rx, tx, hs, ep) AS (VALUES {})
             UPDATE devices SET rx_bytes = v.rx, tx_bytes = v.tx,
                last_handshake_at = CASE WHEN v.hs > 0 THEN v.hs ELSE devices.last_handshake_at END,
                endpoint = CASE WHEN v.ep <> '' THEN v.ep ELSE devices.endpoint END
             FROM v WHERE devices.server_id = $1 AND devices.public_key = v.k",
            rows.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(server_id);
        for peer in batch {
            query = query
                .bind(peer.public_key.as_str())
                .bind(i64::try_from(peer.rx_bytes).unwrap_or(i64::MAX))
                .bind(i64::try_from(peer.tx_bytes).unwrap_or(i64::MAX))
                .bind(peer.last_handshake_ms)
                .bind(truncate(&peer.endpoint, 64));
        }
        query.execute(tx.conn()).await?;
    }
    tx.commit().await?;
    Ok(Beat::Recorded)
}

/// Load per core in per mille (0..=1000), the figure server choice compares.
fn load_permille(health: &truevault_proto::v1::NodeHealth) -> i64 {
    let cores = f64::from(health.cpu_count.max(1));
    let permille = (health.load1.max(0.0) / cores * 1000.0).round();
    if permille.is_finite() {
        (permille as i64).clamp(0, 1000)
    } else {
        1000
    }
}

/// A stream that went silent for 3 heartbeats: offline, unless a newer stream took over.
pub async fn close_silent(db: &Db, server_id: i64, generation: i64, now: Millis) -> Result<()> {
    let mut tx = db.begin_write().await?;
    sqlx::query(
        "UPDATE vpn_servers SET status = 'offline', updated_at = $1
         WHERE id = $2 AND session_generation = $3 AND status = 'online'",
    )
    .bind(now)
    .bind(server_id)
    .bind(generation)
    .execute(tx.conn())
    .await?;
    tx.commit().await
}

/// Nodes whose last heartbeat is older than 3 of their intervals are offline, whichever
/// replica (perhaps a crashed one) held their stream. Returns how many were marked.
pub async fn mark_silent_offline(db: &Db, now: Millis) -> Result<u64> {
    let mut tx = db.begin_write().await?;
    let marked = sqlx::query(
        "UPDATE vpn_servers SET status = 'offline', updated_at = $1
         WHERE status = 'online' AND last_seen_at IS NOT NULL AND heartbeat_interval_ms IS NOT NULL
           AND last_seen_at + 3 * heartbeat_interval_ms < $1",
    )
    .bind(now)
    .execute(tx.conn())
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(marked)
}
