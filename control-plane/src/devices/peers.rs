//! The per-server peer-change log. Every change to what a node should have installed is a row
//! with the server's next revision (revisions only grow); the node channel streams them.

use std::collections::BTreeMap;

use sqlx::AnyConnection;

use crate::clock::Millis;
use crate::error::Result;
use crate::storage::{Db, WriteTx};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Upsert,
    Remove,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upsert => "upsert",
            Self::Remove => "remove",
        }
    }
}

#[derive(Debug, Clone)]
pub struct PeerChange {
    pub server_id: i64,
    pub op: Op,
    pub device_id: Option<i64>,
    pub public_key: String,
    /// On a key rotation's upsert: the key the node must remove.
    pub old_public_key: Option<String>,
    pub allowed_ips: Option<String>,
    pub reason: &'static str,
}

/// A change as logged: its row id and its server's revision.
#[derive(Debug, Clone)]
pub struct Logged {
    pub id: i64,
    pub server_id: i64,
    pub revision: i64,
    pub op: Op,
    pub public_key: String,
    pub old_public_key: Option<String>,
    pub allowed_ips: Option<String>,
}

impl Logged {
    fn new(change: &PeerChange, id: i64, revision: i64) -> Self {
        Self {
            id,
            server_id: change.server_id,
            revision,
            op: change.op,
            public_key: change.public_key.clone(),
            old_public_key: change.old_public_key.clone(),
            allowed_ips: change.allowed_ips.clone(),
        }
    }
}

/// Records changes, each with the next revision of its server. Returns them as logged, in
/// input order.
pub async fn record(
    conn: &mut AnyConnection,
    changes: &[PeerChange],
    now: Millis,
) -> Result<Vec<Logged>> {
    if conn.backend_name() == "PostgreSQL" {
        record_locking(conn, changes, now).await
    } else {
        record_single_writer(conn, changes, now).await
    }
}

/// Records changes in a write transaction and hands them to the node hub with its commit, so
/// the nodes get them without the hub reading them back (SQLite; see `storage::CommitFeed`).
pub async fn record_in(tx: &mut WriteTx, changes: &[PeerChange], now: Millis) -> Result<()> {
    let logged = record(tx.conn(), changes, now).await?;
    tx.hand_over(logged);
    Ok(())
}

/// SQLite: one statement per change. The writer is alone, so the row can read its server's
/// revision in a subquery; a trigger (migration 0009) moves the server's revision up to it.
async fn record_single_writer(
    conn: &mut AnyConnection,
    changes: &[PeerChange],
    now: Millis,
) -> Result<Vec<Logged>> {
    let mut logged = Vec::with_capacity(changes.len());
    for c in changes {
        logged.push(insert(conn, c, None, now).await?);
    }
    Ok(logged)
}

/// PostgreSQL: one revision bump per server for the whole set (which locks the server rows,
/// in id order, against concurrent writers), then the rows in order.
async fn record_locking(
    conn: &mut AnyConnection,
    changes: &[PeerChange],
    now: Millis,
) -> Result<Vec<Logged>> {
    let mut per_server: BTreeMap<i64, i64> = BTreeMap::new();
    for c in changes {
        *per_server.entry(c.server_id).or_default() += 1;
    }
    // Servers in id order, so concurrent transactions lock them in the same order.
    let mut next: BTreeMap<i64, i64> = BTreeMap::new();
    for (&server_id, &count) in &per_server {
        let (last,): (i64,) = sqlx::query_as(
            "UPDATE vpn_servers SET config_revision = config_revision + $1, updated_at = $2 WHERE id = $3
             RETURNING config_revision",
        )
        .bind(count)
        .bind(now)
        .bind(server_id)
        .fetch_one(&mut *conn)
        .await?;
        next.insert(server_id, last - count + 1);
        // PostgreSQL delivers a NOTIFY on commit (never on rollback) to every replica's
        // listener, which wakes that node's session (see `nodes::hub`).
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(crate::nodes::hub::PEER_CHANGES_CHANNEL)
            .bind(format!("{server_id}:{last}"))
            .execute(&mut *conn)
            .await?;
    }
    let mut logged = Vec::with_capacity(changes.len());
    for c in changes {
        let revision = next.get_mut(&c.server_id).map_or(0, |r| {
            *r += 1;
            *r - 1
        });
        logged.push(insert(conn, c, Some(revision), now).await?);
    }
    Ok(logged)
}

/// One change row, with the given revision, or (`None`: SQLite's single writer) its server's
/// next one read in the statement itself.
async fn insert(
    conn: &mut AnyConnection,
    c: &PeerChange,
    revision: Option<i64>,
    now: Millis,
) -> Result<Logged> {
    let next = match revision {
        Some(_) => "$9",
        None => "(SELECT config_revision + 1 FROM vpn_servers WHERE id = $1)",
    };
    let mut query = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO peer_changes (server_id, revision, op, device_id, public_key, old_public_key,
                                   allowed_ips, reason, created_at)
         VALUES ($1, {next}, $2, $3, $4, $5, $6, $7, $8) RETURNING id, revision"
    )))
    .bind(c.server_id)
    .bind(c.op.as_str())
    .bind(c.device_id)
    .bind(&c.public_key)
    .bind(c.old_public_key.as_deref())
    .bind(c.allowed_ips.as_deref())
    .bind(c.reason)
    .bind(now);
    if let Some(revision) = revision {
        query = query.bind(revision);
    }
    let (id, revision): (i64, i64) = query.fetch_one(&mut *conn).await?;
    Ok(Logged::new(c, id, revision))
}

/// How many of each server's latest changes are kept. A node further behind than
/// `nodes::session::SNAPSHOT_GAP` gets a snapshot anyway; twice that leaves room for a session
/// that chose "changes since" just before a prune, however many changes land meanwhile.
pub const KEEP_PER_SERVER: i64 = 2 * crate::nodes::session::SNAPSHOT_GAP;

/// Deletes the changes no node can need any more: those `keep` or more revisions behind their
/// server's current one. In batches, each its own short write, so customers' writes never wait
/// long behind it. Returns how many rows went.
pub async fn prune(db: &Db, keep: i64) -> Result<u64> {
    let mut total = 0;
    loop {
        let mut tx = db.begin_write().await?;
        let deleted = sqlx::query(
            "DELETE FROM peer_changes WHERE id IN (
                SELECT c.id FROM vpn_servers s
                JOIN peer_changes c ON c.server_id = s.id AND c.revision <= s.config_revision - $1
                LIMIT 5000)",
        )
        .bind(keep)
        .execute(tx.conn())
        .await?
        .rows_affected();
        tx.commit().await?;
        total += deleted;
        if deleted < 5000 {
            return Ok(total);
        }
    }
}

/// The allowed IPs a node installs for a device: its two host addresses.
pub fn allowed_ips(ipv4: &str, ipv6: Option<&str>) -> String {
    match ipv6 {
        Some(v6) => format!("{ipv4}/32, {v6}/128"),
        None => format!("{ipv4}/32"),
    }
}
