//! The applied state (revision, interface settings, peers) persisted in the state directory.
//! Writes are coalesced: changes mark it dirty and one writer saves at most every
//! [`FLUSH_EVERY`], so a burst of 10,000 changes is a handful of writes, never one per change.
//! Losing the last moments to a crash is safe: the agent then reports an older revision and the
//! control plane sends those changes again (they are idempotent).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::error::{Error, Result};
use crate::keys::StateDir;
use crate::peers::PeerSet;

pub const FLUSH_EVERY: Duration = Duration::from_millis(500);
const FILE: &str = "state.json";

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
}

/// The applied state shared by the agent's tasks, and its coalescing writer.
#[derive(Debug, Clone)]
pub struct Store {
    dir: StateDir,
    inner: Arc<Mutex<(Applied, bool)>>,
    dirty: Arc<Notify>,
    /// The applied revision, for whoever waits on it (health, benchmarks).
    revision: watch::Sender<u64>,
}

impl Store {
    pub fn load(dir: StateDir) -> Result<Self> {
        let applied = match dir.read(FILE)? {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| Error::Config(format!("{}: {e}", dir.path(FILE).display())))?,
            None => Applied::default(),
        };
        let revision = watch::Sender::new(applied.revision);
        Ok(Self {
            dir,
            inner: Arc::new(Mutex::new((applied, false))),
            dirty: Arc::new(Notify::new()),
            revision,
        })
    }

    pub fn get(&self) -> Applied {
        self.lock().0.clone()
    }

    /// Reads a part of the state without cloning the rest.
    pub fn with<T>(&self, f: impl FnOnce(&Applied) -> T) -> T {
        f(&self.lock().0)
    }

    /// Changes the state and schedules a save.
    pub fn update(&self, f: impl FnOnce(&mut Applied)) {
        let revision = {
            let mut inner = self.lock();
            f(&mut inner.0);
            inner.1 = true;
            inner.0.revision
        };
        self.dirty.notify_one();
        self.revision.send_replace(revision);
    }

    /// Follows the applied revision (it changes after the peers are on the interface).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// Saves now if anything changed since the last save.
    pub fn flush(&self) -> Result<()> {
        let snapshot = {
            let mut inner = self.lock();
            if !inner.1 {
                return Ok(());
            }
            inner.1 = false;
            inner.0.clone()
        };
        let json = serde_json::to_vec(&snapshot)
            .map_err(|e| Error::Config(format!("serializing state: {e}")))?;
        let written = self.dir.write_private(FILE, &json);
        if written.is_err() {
            self.lock().1 = true;
        }
        written
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

    fn lock(&self) -> std::sync::MutexGuard<'_, (Applied, bool)> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_updates_is_saved_once_and_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let store = Store::load(state.clone()).unwrap();
        let writer = tokio::spawn(store.clone().run_writer());
        for i in 0..1_000u64 {
            store.update(|a| {
                a.revision = i;
                a.peers.insert(
                    format!("key{i}"),
                    vec![format!("10.0.{}.{}/32", i / 250, i % 250)],
                );
            });
        }
        // The writer saves on its own; wait for it (bounded) rather than for a fixed time.
        let mut reloaded = Applied::default();
        for _ in 0..200 {
            tokio::time::sleep(FLUSH_EVERY / 10).await;
            reloaded = Store::load(state.clone()).unwrap().get();
            if reloaded.revision == 999 {
                break;
            }
        }
        writer.abort();
        assert_eq!(reloaded.revision, 999);
        assert_eq!(reloaded.peers.len(), 1_000);
    }
}
