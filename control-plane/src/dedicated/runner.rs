//! The order runner: drives each open dedicated-server order through its states
//! (`lifecycle`) in the background, one order at a time per control-plane process.
//!
//! An order is worked on under a lease (`lease_owner`, `lease_until`) kept alive while the work
//! runs, so two replicas never drive one order, and the orders of a process that stopped are
//! taken over once its leases lapse: a restart in any state resumes. Between steps an order
//! sleeps until its `next_run_at` (the provider is polled every `poll`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::AnyConnection;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use truevault_provisioning::{Provider, RetryPolicy};

use crate::clock::{Millis, SharedClock};
use crate::error::Result;
use crate::storage::Db;

/// What a new node is told in its cloud-init besides its own token and subnets.
#[derive(Debug, Clone)]
pub struct NodeBootstrapSettings {
    pub control_plane_url: String,
    pub control_plane_name: Option<String>,
    pub ca_pem: String,
    pub agent_url: String,
    pub agent_sha256: String,
    pub interface: String,
}

/// A provider and what creating on it needs.
#[derive(Debug, Clone)]
pub struct Provisioning {
    /// Recorded on orders and servers (`contabo`).
    pub provider_name: String,
    pub provider: Arc<dyn Provider>,
    pub bootstrap: NodeBootstrapSettings,
    pub create_policy: RetryPolicy,
}

#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// Without it, orders the pool cannot serve wait for an operator to add a pool server.
    pub provisioning: Option<Provisioning>,
    pub poll: Duration,
    /// From the first step to a connected agent.
    pub deadline: Millis,
    pub lease: Millis,
    /// Orders worked on at once by this process.
    pub concurrency: usize,
    pub operator_email: Option<String>,
}

#[derive(Debug)]
pub struct OrderRunner {
    pub(super) db: Db,
    pub(super) clock: SharedClock,
    pub(super) settings: RunnerSettings,
    pub(super) worker_id: String,
    /// Orders this process is working on: never claimed a second time while their work runs,
    /// even if the lease lapsed meanwhile (the lease owner is the process, not the task).
    in_flight: Mutex<HashSet<i64>>,
}

/// An order's `UPDATE` as [`OrderRunner::write_leased`] takes it, for the statement's own values.
pub(super) type LeasedWrite<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// Gives the order's lease up (with the write that leaves the order waiting or closed).
pub(super) const LET_GO: &str = "lease_owner = NULL, lease_until = NULL";

/// Orders a runner picks up: open ones (a `pending` one without a provider only looks for a
/// pool server), and those whose server is to be released.
const OPEN: &str = "(status IN ('pending', 'provisioning', 'configuring')
                     OR (release_requested_at IS NOT NULL AND released_at IS NULL))";

/// An open order this process may take at `$1` (now): due, and leased to nobody live. The
/// claiming `UPDATE` checks it again: between reading an order as due and taking it, another
/// process may have worked on it and put it to sleep (its lease given up).
const CLAIMABLE: &str =
    "COALESCE(next_run_at, 0) <= $1 AND (lease_until IS NULL OR lease_until <= $1)";

impl OrderRunner {
    pub fn new(db: Db, clock: SharedClock, settings: RunnerSettings) -> Self {
        Self {
            db,
            clock,
            settings,
            worker_id: format!(
                "orders-{}-{}",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            in_flight: Mutex::new(HashSet::new()),
        }
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn settings(&self) -> &RunnerSettings {
        &self.settings
    }

    /// Works on every order due now until each waits again (for its next poll, a pool server,
    /// or nothing: completed or failed). Returns how many were worked on.
    pub async fn run_due(self: &Arc<Self>) -> Result<usize> {
        let ids = self.claim_due().await?;
        let mut running = JoinSet::new();
        for id in &ids {
            let this = Arc::clone(self);
            let id = *id;
            running.spawn(async move { this.work_on(id).await });
        }
        while let Some(done) = running.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "an order step panicked; its lease will lapse");
            }
        }
        Ok(ids.len())
    }

    /// Runs in the background until `shutdown`: each due order is worked on in its own task
    /// (at most `concurrency` at once), so one slow provider call holds up no other order.
    pub fn spawn(self: &Arc<Self>, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            tracing::info!(worker = %this.worker_id, provider = ?this.settings.provisioning.as_ref().map(|p| &p.provider_name), "order runner started");
            let mut running: JoinSet<()> = JoinSet::new();
            let tick = this.settings.poll.min(Duration::from_secs(1));
            while !*shutdown.borrow() {
                while running.try_join_next().is_some() {}
                let room = this.settings.concurrency.saturating_sub(running.len());
                if room > 0 {
                    match this.claim(room).await {
                        Ok(ids) => {
                            for id in ids {
                                let worker = Arc::clone(&this);
                                running.spawn(async move { worker.work_on(id).await });
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "order runner cannot claim orders"),
                    }
                }
                if let Ok(Err(_)) = tokio::time::timeout(tick, shutdown.changed()).await {
                    break; // the server is gone
                }
            }
            // Steps are resumable: what was in flight is picked up again after a restart
            // (by this or another process once the leases lapse).
            running.shutdown().await;
        })
    }

    async fn claim_due(&self) -> Result<Vec<i64>> {
        self.claim(self.settings.concurrency.max(1)).await
    }

    /// Leases up to `limit` due orders to this process.
    async fn claim(&self, limit: usize) -> Result<Vec<i64>> {
        let now = self.clock.now_ms();
        let candidates: Vec<(i64,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM server_provisioning_queue WHERE {OPEN} AND {CLAIMABLE}
             ORDER BY COALESCE(next_run_at, 0), id LIMIT $2"
        )))
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(64))
        .fetch_all(self.db.pool())
        .await?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let busy = self.in_flight().clone();
        let mut claimed = Vec::new();
        let mut tx = self.db.begin_write().await?;
        for (id,) in candidates.into_iter().filter(|(id,)| !busy.contains(id)) {
            let taken = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE server_provisioning_queue SET lease_owner = $2, lease_until = $3
                 WHERE id = $4 AND {OPEN} AND {CLAIMABLE}"
            )))
            .bind(now)
            .bind(&self.worker_id)
            .bind(now + self.settings.lease)
            .bind(id)
            .execute(tx.conn())
            .await?
            .rows_affected();
            if taken == 1 {
                claimed.push(id);
            }
        }
        tx.commit().await?;
        self.in_flight().extend(claimed.iter().copied());
        Ok(claimed)
    }

    /// Works on one leased order, renewing the lease while the work runs. If the lease is
    /// lost (this process stalled past it), the work stops where it is: every step re-checks
    /// the lease when it writes, and the new owner starts from what was recorded.
    async fn work_on(self: Arc<Self>, id: i64) {
        /// Takes the order off this process's list however the work ends (aborted too).
        struct Done<'a>(&'a OrderRunner, i64);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.in_flight().remove(&self.1);
            }
        }
        let _done = Done(&self, id);
        let work = self.advance(id);
        let keep = self.keep_lease(id);
        tokio::select! {
            result = work => {
                if let Err(e) = result {
                    tracing::warn!(order = id, error = %e, "order step failed; trying again at the next poll");
                    if let Err(e) = self.park(id, None).await {
                        tracing::error!(order = id, error = %e, "cannot reschedule the order");
                    }
                }
            }
            () = keep => tracing::warn!(order = id, "lost the order's lease; another process goes on with it"),
        }
    }

    /// Returns when the lease is lost, or when it could not be renewed for two thirds of its
    /// length (then another process may take the order over soon: stop first).
    async fn keep_lease(&self, id: i64) {
        let lease = Duration::from_millis(u64::try_from(self.settings.lease).unwrap_or(60_000));
        let every = (lease / 3).max(Duration::from_millis(100));
        let mut renewed_at = Instant::now();
        loop {
            tokio::time::sleep(every).await;
            match self.renew(id).await {
                Ok(true) => renewed_at = Instant::now(),
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(order = id, error = %e, "cannot renew the order's lease");
                    if renewed_at.elapsed() >= lease * 2 / 3 {
                        return;
                    }
                }
            }
        }
    }

    /// Extends this process's lease on the order; false if it no longer holds a live one.
    pub(super) async fn renew(&self, id: i64) -> Result<bool> {
        let now = self.clock.now_ms();
        let mut tx = self.db.begin_write().await?;
        let renewed = self
            .write_leased(
                tx.conn(),
                id,
                "lease_until = $3",
                Some("lease_until > $4"),
                |q| q.bind(now + self.settings.lease).bind(now),
            )
            .await?;
        tx.commit().await?;
        Ok(renewed)
    }

    /// Puts the order to sleep until `at` (default: the next poll) and gives up its lease.
    pub(super) async fn park(&self, id: i64, at: Option<Millis>) -> Result<()> {
        let now = self.clock.now_ms();
        let poll = i64::try_from(self.settings.poll.as_millis()).unwrap_or(i64::MAX / 2);
        let mut tx = self.db.begin_write().await?;
        let set = format!(
            "next_run_at = $3, deadline_at = COALESCE(deadline_at, $4), {LET_GO}, updated_at = $5"
        );
        self.write_leased(tx.conn(), id, &set, None, |q| {
            q.bind(at.unwrap_or(now + poll))
                .bind(now + self.settings.deadline)
                .bind(now)
        })
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Writes the order's row only while this process holds its lease: `UPDATE ... SET {set}
    /// WHERE id = $1 AND lease_owner = $2 [AND {guard}]`, so a process that stalled past its
    /// lease changes nothing its successor did. `bind` binds the statement's own values, from
    /// `$3` on. Returns whether the row was written.
    pub(super) async fn write_leased<'q>(
        &self,
        conn: &mut AnyConnection,
        order: i64,
        set: &str,
        guard: Option<&str>,
        bind: impl FnOnce(LeasedWrite<'q>) -> LeasedWrite<'q>,
    ) -> Result<bool> {
        let guard = guard.map(|g| format!(" AND {g}")).unwrap_or_default();
        let query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE server_provisioning_queue SET {set} WHERE id = $1 AND lease_owner = $2{guard}"
        )))
        .bind(order)
        .bind(self.worker_id.clone());
        Ok(bind(query).execute(conn).await?.rows_affected() == 1)
    }
}
