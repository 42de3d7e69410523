//! What write commits tell the node hub.
//!
//! On SQLite (one process, one writer) the hub learns of new peer changes from the commits
//! themselves. A transaction that logged peer changes hands its rows over with its commit
//! (`devices::peers::record_in`), and the hub passes them to the nodes' sessions without reading
//! them back: on the path from a customer's request to the node, that read was a round trip to
//! sqlx's SQLite thread. Any other commit only says that something may have changed, and the
//! hub reads `peer_changes` after the last row it saw. PostgreSQL commits are announced by
//! `NOTIFY` to every replica instead, so nothing is held here.

use std::sync::{Mutex, PoisonError};

use tokio::sync::Notify;

use crate::devices::peers::Logged;

/// Rows held for a hub that is not taking them (none runs, in a CLI command or a test): past
/// this many they are dropped, and the next look reads the database instead.
const HELD_MAX: usize = 10_000;

#[derive(Debug, Default)]
pub struct CommitFeed {
    notify: Notify,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    /// A commit since the last take did not hand over its rows (it may have logged some).
    unknown: bool,
    rows: Vec<Logged>,
}

/// What was committed since the last [`CommitFeed::take`].
#[derive(Debug, Default)]
pub struct Committed {
    /// The rows handed over, in commit order.
    pub rows: Vec<Logged>,
    /// True when every commit since the last take handed over its rows: then `rows` is all
    /// that was logged meanwhile, as far as commits through [`super::WriteTx`] go.
    pub complete: bool,
}

impl CommitFeed {
    /// A commit that handed over `rows` (empty: it did not say what it logged).
    pub(super) fn committed(&self, rows: Vec<Logged>) {
        {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            if rows.is_empty() {
                held.unknown = true;
            } else if held.rows.len() + rows.len() > HELD_MAX {
                held.rows.clear();
                held.unknown = true;
            } else {
                held.rows.extend(rows);
            }
        }
        self.notify.notify_one();
    }

    /// Completes after the next commit (one stored permit: commits meanwhile are coalesced).
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// Takes what was handed over since the last take.
    pub fn take(&self) -> Committed {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let complete = !std::mem::take(&mut held.unknown);
        Committed {
            rows: std::mem::take(&mut held.rows),
            complete,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::peers::Op;

    fn row(id: i64) -> Logged {
        Logged {
            id,
            server_id: 1,
            revision: id,
            op: Op::Upsert,
            public_key: format!("k{id}"),
            old_public_key: None,
            allowed_ips: None,
        }
    }

    #[test]
    fn a_commit_without_rows_makes_the_next_take_incomplete() {
        let feed = CommitFeed::default();
        feed.committed(vec![row(1)]);
        feed.committed(Vec::new());
        feed.committed(vec![row(2)]);
        let taken = feed.take();
        assert!(!taken.complete);
        assert_eq!(taken.rows.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2]);
        feed.committed(vec![row(3)]);
        let taken = feed.take();
        assert!(taken.complete);
        assert_eq!(taken.rows.len(), 1);
    }

    #[test]
    fn rows_nobody_takes_are_dropped_past_the_bound() {
        let feed = CommitFeed::default();
        for id in 0..i64::try_from(HELD_MAX).unwrap_or(0) {
            feed.committed(vec![row(id)]);
        }
        assert!(feed.take().complete);
        for id in 0..=i64::try_from(HELD_MAX).unwrap_or(0) {
            feed.committed(vec![row(id)]);
        }
        let taken = feed.take();
        assert!(!taken.complete);
        assert!(taken.rows.len() < HELD_MAX);
    }
}
