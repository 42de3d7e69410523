//! Wakes node sessions when their server's peers change.
//!
//! Each connected node has one entry: a `watch` of its server's latest committed revision. A
//! watch holds one value, so however many changes commit while a session is busy sending, it
//! wakes once and reads everything since its last sent revision from `peer_changes`: the
//! database is the queue, and no buffer grows with the change rate.
//!
//! Wake-ups come from the commit itself. On PostgreSQL, `peers::record` sends a `NOTIFY`
//! inside the transaction, which the server delivers on commit to every replica's listener.
//! On SQLite (one process), every write commit tells the hub (`storage::CommitFeed`). Once per
//! burst of commits the hub takes the new `peer_changes` rows, as handed over by the committing
//! transactions when every commit meanwhile did so, else read from the table, and hands each
//! connected session its own rows (up to one batch), so the session sends them without
//! querying again. A slow tick re-reads
//! the revisions on both engines (changes made by another process, a dropped listener;
//! `node_resync_interval_secs`, 5 s) and marks silent nodes offline; a session whose handed
//! rows do not follow on from what it sent reads `peer_changes` itself.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::Row as _;
use tokio::sync::{Notify, watch};
use truevault_proto::v1::{Changes, PeerChange};

use crate::clock::SharedClock;
use crate::devices::peers::Logged;
use crate::error::Result;
use crate::nodes::session;
use crate::storage::{Db, Engine, placeholders};

/// The PostgreSQL channel `peers::record` notifies with `"<server id>:<revision>"`.
pub const PEER_CHANGES_CHANNEL: &str = "truevault_peer_changes";

#[derive(Debug)]
pub struct Hub {
    nodes: Mutex<HashMap<i64, Entry>>,
    next_session: AtomicU64,
    /// SQLite: the last `peer_changes.id` seen. SQLite has one writer, so ids appear in commit
    /// order and "every row after the last one seen" misses nothing.
    last_change_id: AtomicI64,
    /// True once the control plane shuts down: every session ends, so the gRPC server's
    /// graceful shutdown is not held up by streams that would otherwise last forever.
    closing: watch::Sender<bool>,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            nodes: Mutex::default(),
            next_session: AtomicU64::new(0),
            last_change_id: AtomicI64::new(-1),
            closing: watch::Sender::new(false),
        }
    }
}

#[derive(Debug)]
struct Entry {
    session: u64,
    revision: watch::Sender<i64>,
    superseded: Arc<Notify>,
    handed: Arc<Mutex<VecDeque<PeerChange>>>,
}

/// Rows a session may be handed before it must read `peer_changes` itself: a session that
/// falls behind costs one batch of memory, never more.
const HANDED_MAX: usize = session::CHANGES_BATCH_LEN;
/// Rows the hub reads per query after a commit.
const READ_BATCH: i64 = 2_000;

/// A session's place in the hub; dropping it leaves (unless a newer session took the place).
#[derive(Debug)]
pub struct Registration {
    hub: Arc<Hub>,
    server_id: i64,
    session: u64,
    /// The server's latest committed revision.
    pub revision: watch::Receiver<i64>,
    /// Notified when a newer session of the same node registers on this replica.
    pub superseded: Arc<Notify>,
    handed: Arc<Mutex<VecDeque<PeerChange>>>,
}

impl Registration {
    /// The changes after `sent` that the hub read for this session, if they follow on from
    /// `sent` without a gap; otherwise `None`, and the session reads `peer_changes` itself.
    pub fn take_changes(&self, sent: u64) -> Option<Changes> {
        let mut handed = self.handed.lock().unwrap_or_else(PoisonError::into_inner);
        while handed.front().is_some_and(|c| c.revision <= sent) {
            handed.pop_front();
        }
        if handed.front()?.revision != sent + 1 {
            return None;
        }
        let changes: Vec<PeerChange> = handed.drain(..).collect();
        let revision = changes.last()?.revision;
        Some(Changes { revision, changes })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut nodes = self
            .hub
            .nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if nodes
            .get(&self.server_id)
            .is_some_and(|e| e.session == self.session)
        {
            nodes.remove(&self.server_id);
        }
    }
}

impl Hub {
    /// Registers a node's session; an older session of the same node on this replica is told
    /// to end (one session per node).
    pub fn register(self: &Arc<Self>, server_id: i64, revision: i64) -> Registration {
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(revision);
        let superseded = Arc::new(Notify::new());
        let handed = Arc::new(Mutex::new(VecDeque::new()));
        let old = self
            .nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                server_id,
                Entry {
                    session,
                    revision: tx,
                    superseded: Arc::clone(&superseded),
                    handed: Arc::clone(&handed),
                },
            );
        if let Some(old) = old {
            // notify_one keeps a permit, so the old session sees it even if not waiting yet.
            old.superseded.notify_one();
        }
        Registration {
            hub: Arc::clone(self),
            server_id,
            session,
            revision: rx,
            superseded,
            handed,
        }
    }

    /// Ends every session (the nodes reconnect, to another replica or after the restart).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Completes when the hub closes.
    pub async fn closed(&self) {
        let mut closing = self.closing.subscribe();
        let _ = closing.wait_for(|c| *c).await;
    }

    /// Records that `server_id` has committed changes up to `revision`.
    pub fn observe(&self, server_id: i64, revision: i64) {
        let nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = nodes.get(&server_id) {
            entry.revision.send_if_modified(|current| {
                let newer = revision > *current;
                if newer {
                    *current = revision;
                }
                newer
            });
        }
    }

    pub fn connected(&self) -> Vec<i64> {
        let nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        nodes.keys().copied().collect()
    }

    /// SQLite, after a commit: the change rows since the last look, handed to the sessions of
    /// their servers before those sessions are woken. Rows the committing transactions handed
    /// over are used as they are when they follow on from the last row seen; otherwise the
    /// rows are read (in batches, so the cost grows with the new changes, not with the fleet).
    pub async fn refresh_new_changes(&self, db: &Db) -> Result<()> {
        let committed = db.commits().take();
        if self
            .nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
        {
            // Nobody to wake; the next look starts afresh (and a new session starts from the
            // revision it reads itself).
            self.last_change_id.store(-1, Ordering::Release);
            return Ok(());
        }
        let mut last = self.last_change_id.load(Ordering::Acquire);
        if last < 0 {
            let (max,): (Option<i64>,) = sqlx::query_as("SELECT MAX(id) FROM peer_changes")
                .fetch_one(db.pool())
                .await?;
            self.last_change_id
                .store(max.unwrap_or(0), Ordering::Release);
            return self.refresh(db).await;
        }
        if committed.complete {
            let fresh: Vec<&Logged> = committed.rows.iter().filter(|r| r.id > last).collect();
            let follows = fresh
                .iter()
                .zip(last..)
                .all(|(row, before)| row.id == before + 1);
            if follows {
                self.hand(
                    fresh
                        .iter()
                        .map(|r| (r.server_id, session::change_from_logged(r))),
                );
                if let Some(row) = fresh.last() {
                    self.last_change_id.fetch_max(row.id, Ordering::AcqRel);
                }
                return Ok(());
            }
        }
        loop {
            let rows = sqlx::query(
                "SELECT id, server_id, revision, op, public_key, old_public_key, allowed_ips
                 FROM peer_changes WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .bind(last)
            .bind(READ_BATCH)
            .fetch_all(db.pool())
            .await?;
            let full = rows.len() >= usize::try_from(READ_BATCH).unwrap_or(usize::MAX);
            let mut changes = Vec::with_capacity(rows.len());
            for row in &rows {
                last = row.try_get(0)?;
                changes.push((row.try_get(1)?, session::change_from_row(row, 2)?));
            }
            self.hand(changes);
            self.last_change_id.fetch_max(last, Ordering::AcqRel);
            if !full {
                return Ok(());
            }
        }
    }

    /// Hands each change to its server's session, if connected, then wakes those sessions (the
    /// rows are handed over first, so a woken session finds them).
    fn hand(&self, changes: impl IntoIterator<Item = (i64, PeerChange)>) {
        let mut latest: HashMap<i64, i64> = HashMap::new();
        {
            let nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
            for (server_id, change) in changes {
                let Some(entry) = nodes.get(&server_id) else {
                    continue;
                };
                latest.insert(
                    server_id,
                    i64::try_from(change.revision).unwrap_or(i64::MAX),
                );
                let mut handed = entry.handed.lock().unwrap_or_else(PoisonError::into_inner);
                if handed.len() >= HANDED_MAX {
                    // Too far behind to hand over: it reads the database instead.
                    handed.clear();
                }
                handed.push_back(change);
            }
        }
        for (server_id, revision) in latest {
            self.observe(server_id, revision);
        }
    }

    /// Reads the revisions of every connected server and wakes the sessions behind.
    pub async fn refresh(&self, db: &Db) -> Result<()> {
        for ids in self.connected().chunks(500) {
            let sql = format!(
                "SELECT id, config_revision FROM vpn_servers WHERE id IN ({})",
                placeholders(1, ids.len())
            );
            let mut query = sqlx::query_as::<_, (i64, i64)>(sqlx::AssertSqlSafe(sql));
            for id in ids {
                query = query.bind(id);
            }
            for (id, revision) in query.fetch_all(db.pool()).await? {
                self.observe(id, revision);
            }
        }
        Ok(())
    }

    /// Runs the wake-up sources until `stop` turns true.
    pub async fn run(
        self: Arc<Self>,
        db: Db,
        database_url: String,
        clock: SharedClock,
        resync: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let commits = db.commits();
        if db.engine() == Engine::Postgres {
            tokio::spawn(Arc::clone(&self).listen(database_url, stop.clone()));
        }
        let mut tick = tokio::time::interval(resync.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let slow = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = commits.notified(), if db.engine() == Engine::Sqlite => false,
                _ = tick.tick() => true,
            };
            let refreshed = if slow {
                self.refresh(&db).await
            } else {
                self.refresh_new_changes(&db).await
            };
            if let Err(e) = refreshed {
                tracing::warn!(error = %e, "cannot read server revisions");
            }
            if slow {
                match session::mark_silent_offline(&db, clock.now_ms()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(servers = n, "nodes missed 3 heartbeats: offline"),
                    Err(e) => tracing::warn!(error = %e, "cannot sweep silent nodes"),
                }
            }
        }
    }

    /// PostgreSQL: wakes sessions from `NOTIFY`s of every replica's commits; reconnects with
    /// a pause if the listener's connection drops (the slow tick covers the gap).
    async fn listen(self: Arc<Self>, url: String, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                result = self.listen_once(&url) => {
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "peer-change listener lost; reconnecting");
                    }
                }
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn listen_once(&self, url: &str) -> std::result::Result<(), sqlx::Error> {
        let mut listener = sqlx::postgres::PgListener::connect(url).await?;
        listener.listen(PEER_CHANGES_CHANNEL).await?;
        loop {
            let note = listener.recv().await?;
            if let Some((id, rev)) = note.payload().split_once(':')
                && let (Ok(id), Ok(rev)) = (id.parse(), rev.parse())
            {
                self.observe(id, rev);
            }
        }
    }
}
