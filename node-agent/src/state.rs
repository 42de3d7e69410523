//! The applied state (revision, interface settings, peers) persisted in the state directory.
//!
//! Saving costs what changed, not what there is: peer changes are appended to a journal
//! (`state.journal`, one JSON line each) and only a snapshot, an identity change or a journal
//! past [`COMPACT_AFTER`] lines rewrites the whole state (`state.json`). Saves are coalesced:
//! changes mark the store dirty and one writer saves at most every [`FLUSH_EVERY`]. Losing the
//! last moments to a crash is safe: the agent then reports an older revision and the control
//! plane sends those changes again (they are idempotent). A torn last journal line is ignored.

use std::io::{BufRead as _, Write as _};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::error::{Error, Result};
use crate::keys::StateDir;
use crate::peers::{PeerSet, Updates};

pub const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// Journal lines after which the next save rewrites the snapshot (amortized O(1) a change).
pub const COMPACT_AFTER: usize = 10_000;
const SNAPSHOT: &str = "state.json";
const JOURNAL: &str = "state.journal";

/// What the control plane told this node about its own interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfacePlan {
    pub addresses: Vec<String>,
    pub listen_port: u16,
    pub mtu: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Applied {
    /// The node's id at the control plane (its server id), from enrollment.
    pub node_id: String,
    /// When the current client certificate expires (ms since the epoch).
    pub certificate_not_after_ms: i64,
    pub revision: u64,
    pub interface: InterfacePlan,
    pub peers: PeerSet,
    /// Journal lines of another epoch belong to an older snapshot and are never replayed.
    #[serde(default)]
    pub journal_epoch: u64,
}

/// One journal line: the revision reached and, for a peer change, the key and its allowed IPs
/// (`None`: removed).
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    e: u64,
    r: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    v: Option<Vec<String>>,
}

#[derive(Debug, Default)]
struct Inner {
    applied: Applied,
    /// Lines not yet appended.
    pending: Vec<Line>,
    /// The snapshot must be rewritten (and the journal started afresh).
    full: bool,
    journal_lines: usize,
}

/// The applied state shared by the agent's tasks, and its coalescing writer.
#[derive(Debug, Clone)]
pub struct Store {
    dir: StateDir,
    inner: Arc<Mutex<Inner>>,
    /// One save at a time: a snapshot's removal of the old journal must not race an append.
    saving: Arc<Mutex<()>>,
    dirty: Arc<Notify>,
    /// The applied revision, for whoever waits on it (health, benchmarks).
    revision: watch::Sender<u64>,
}

impl Store {
    pub fn load(dir: StateDir) -> Result<Self> {
        let mut applied: Applied = match dir.read(SNAPSHOT)? {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| Error::Config(format!("{}: {e}", dir.path(SNAPSHOT).display())))?,
            None => Applied::default(),
        };
        let journal_lines = replay(&dir, &mut applied)?;
        let revision = watch::Sender::new(applied.revision);
        Ok(Self {
            dir,
            inner: Arc::new(Mutex::new(Inner {
                applied,
                journal_lines,
                ..Inner::default()
            })),
            saving: Arc::default(),
            dirty: Arc::new(Notify::new()),
            revision,
        })
    }

    pub fn get(&self) -> Applied {
        self.lock().applied.clone()
    }

    /// Reads a part of the state without cloning the rest.
    pub fn with<T>(&self, f: impl FnOnce(&Applied) -> T) -> T {
        f(&self.lock().applied)
    }

    /// Changes anything in the state; the next save rewrites it whole.
    pub fn update(&self, f: impl FnOnce(&mut Applied)) {
        let revision = {
            let mut inner = self.lock();
            f(&mut inner.applied);
            inner.full = true;
            inner.applied.revision
        };
        self.saved_soon(revision);
    }

    /// Records peer changes and the revision they reach; the next save appends them.
    pub fn update_peers(&self, revision: u64, updates: Updates) {
        {
            let mut inner = self.lock();
            let epoch = inner.applied.journal_epoch;
            for (key, value) in updates {
                match &value {
                    Some(ips) => inner.applied.peers.insert(key.clone(), ips.clone()),
                    None => inner.applied.peers.remove(&key),
                };
                inner.pending.push(Line {
                    e: epoch,
                    r: revision,
                    k: Some(key),
                    v: value,
                });
            }
            inner.applied.revision = revision;
            inner.pending.push(Line {
                e: epoch,
                r: revision,
                k: None,
                v: None,
            });
        }
        self.saved_soon(revision);
    }

    fn saved_soon(&self, revision: u64) {
        self.dirty.notify_one();
        self.revision.send_replace(revision);
    }

    /// Follows the applied revision (it changes after the peers are on the interface).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// Saves what changed since the last save: appends to the journal, or rewrites the whole
    /// state when needed.
    pub fn flush(&self) -> Result<()> {
        enum Work {
            Snapshot(Box<Applied>),
            Append(Vec<Line>),
        }
        let _saving = self.saving.lock().unwrap_or_else(PoisonError::into_inner);
        let work = {
            let mut inner = self.lock();
            if inner.full || inner.journal_lines + inner.pending.len() > COMPACT_AFTER {
                inner.full = false;
                inner.pending.clear();
                inner.journal_lines = 0;
                inner.applied.journal_epoch += 1;
                Work::Snapshot(Box::new(inner.applied.clone()))
            } else if inner.pending.is_empty() {
                return Ok(());
            } else {
                let lines = std::mem::take(&mut inner.pending);
                inner.journal_lines += lines.len();
                Work::Append(lines)
            }
        };
        let written = match &work {
            Work::Snapshot(applied) => self.write_snapshot(applied),
            Work::Append(lines) => self.append(lines),
        };
        if written.is_err() {
            // Whatever was lost from memory is in the state: rewrite it whole next time.
            self.lock().full = true;
        }
        written
    }

    fn write_snapshot(&self, applied: &Applied) -> Result<()> {
        let json = serde_json::to_vec(applied)
            .map_err(|e| Error::Config(format!("serializing state: {e}")))?;
        self.dir.write_private(SNAPSHOT, &json)?;
        // The new snapshot's epoch already disowns the old lines; removing them saves space.
        let journal = self.dir.path(JOURNAL);
        match std::fs::remove_file(&journal) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::file(journal, e)),
            _ => Ok(()),
        }
    }

    fn append(&self, lines: &[Line]) -> Result<()> {
        let path = self.dir.path(JOURNAL);
        let mut text = Vec::with_capacity(lines.len() * 96);
        for line in lines {
            serde_json::to_writer(&mut text, line)
                .map_err(|e| Error::Config(format!("serializing state: {e}")))?;
            text.push(b'\n');
        }
        let write = || -> std::io::Result<()> {
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)?;
            file.write_all(&text)?;
            file.sync_data()
        };
        write().map_err(|e| Error::file(&path, e))
    }

    /// Saves whenever the state is dirty, at most every [`FLUSH_EVERY`]; runs forever.
    pub async fn run_writer(self) {
        loop {
            self.dirty.notified().await;
            let store = self.clone();
            match tokio::task::spawn_blocking(move || store.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "cannot save the applied state"),
                Err(e) => tracing::error!(error = %e, "state writer failed"),
            }
            tokio::time::sleep(FLUSH_EVERY).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Applies the journal's lines of the snapshot's epoch; stops at a torn line. Returns how many
/// lines the journal holds.
fn replay(dir: &StateDir, applied: &mut Applied) -> Result<usize> {
    let path = dir.path(JOURNAL);
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::file(path, e)),
    };
    let mut count = 0;
    for line in std::io::BufReader::new(file).lines() {
        let Ok(line) = line else { break };
        let Ok(line) = serde_json::from_str::<Line>(&line) else {
            tracing::warn!("ignoring a torn line at the end of the state journal");
            break;
        };
        count += 1;
        if line.e != applied.journal_epoch {
            continue;
        }
        applied.revision = line.r;
        if let Some(key) = line.k {
            match line.v {
                Some(ips) => applied.peers.insert(key, ips),
                None => applied.peers.remove(&key),
            };
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn updates(range: std::ops::Range<u64>) -> Updates {
        range
            .map(|i| {
                (
                    format!("key{i}"),
                    Some(vec![format!("10.0.{}.{}/32", i / 250, i % 250)]),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn a_burst_of_changes_is_appended_coalesced_and_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let store = Store::load(state.clone()).unwrap();
        store.update(|a| a.node_id = "7".into());
        store.flush().unwrap();
        let writer = tokio::spawn(store.clone().run_writer());
        for i in 0..1_000u64 {
            store.update_peers(i + 1, updates(i..i + 1));
        }
        store.update_peers(1_001, vec![("key5".into(), None)]);
        // The writer saves on its own; wait for it (bounded) rather than for a fixed time.
        let mut reloaded = Applied::default();
        for _ in 0..200 {
            tokio::time::sleep(FLUSH_EVERY / 10).await;
            reloaded = Store::load(state.clone()).unwrap().get();
            if reloaded.revision == 1_001 {
                break;
            }
        }
        writer.abort();
        assert_eq!(reloaded.revision, 1_001);
        assert_eq!(reloaded.node_id, "7");
        assert_eq!(reloaded.peers.len(), 999);
        assert!(!reloaded.peers.contains_key("key5"));
        assert!(
            std::fs::metadata(state.path(JOURNAL)).is_ok(),
            "peer changes go to the journal, not a rewrite"
        );
    }

    #[test]
    fn a_snapshot_disowns_the_old_journal_and_a_torn_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let store = Store::load(state.clone()).unwrap();
        store.update_peers(1, updates(0..3));
        store.flush().unwrap();
        // A crash between writing a snapshot and removing the journal leaves old lines.
        let old_journal = std::fs::read(state.path(JOURNAL)).unwrap();
        store.update(|a| {
            a.peers.clear();
            a.revision = 1;
        });
        store.flush().unwrap();
        std::fs::write(state.path(JOURNAL), &old_journal).unwrap();
        assert!(Store::load(state.clone()).unwrap().get().peers.is_empty());

        // New lines after the snapshot replay; a torn last line does not.
        let store = Store::load(state.clone()).unwrap();
        std::fs::remove_file(state.path(JOURNAL)).unwrap();
        store.update_peers(2, updates(10..12));
        store.flush().unwrap();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(state.path(JOURNAL))
            .unwrap();
        file.write_all(b"{\"e\":1,\"r\":3,\"k\":\"tor").unwrap();
        let reloaded = Store::load(state).unwrap().get();
        assert_eq!(reloaded.revision, 2);
        assert_eq!(reloaded.peers.len(), 2);
    }
}
