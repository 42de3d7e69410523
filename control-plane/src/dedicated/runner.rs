//! The order runner: drives each open dedicated-server order through its states
//! (`lifecycle`) in the background, one order at a time per control-plane process.
//!
//! An order is worked on under a lease (`lease_owner`, `lease_until`) kept alive while the work
//! runs, so two replicas never drive one order, and the orders of a process that stopped are
//! taken over once its leases lapse: a restart in any state resumes. Between steps an order
//! sleeps until its `next_run_at` (the provider is polled every `poll`).

use std::sync::Arc;
use std::time::Duration;

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
}

/// Orders a runner may pick up: open ones, and those whose server is to be released.
const OPEN: &str = "(status IN ('pending', 'provisioning', 'configuring')
                     OR (release_requested_at IS NOT NULL AND released_at IS NULL))";
/// The same when no provider can create servers: orders wait for a pool server.
const OPEN_WITHOUT_PROVIDER: &str = "(status IN ('provisioning', 'configuring')
                     OR (release_requested_at IS NOT NULL AND released_at IS NULL))";

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
        }
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
                let _ = tokio::time::timeout(tick, shutdown.changed()).await;
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
        let open = if self.settings.provisioning.is_some() {
            OPEN
        } else {
            OPEN_WITHOUT_PROVIDER
        };
        let candidates: Vec<(i64,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM server_provisioning_queue
             WHERE {open} AND COALESCE(next_run_at, 0) <= $1
               AND (lease_until IS NULL OR lease_until <= $1)
             ORDER BY COALESCE(next_run_at, 0), id LIMIT $2"
        )))
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(64))
        .fetch_all(self.db.pool())
        .await?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let mut claimed = Vec::new();
        let mut tx = self.db.begin_write().await?;
        for (id,) in candidates {
            let taken = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE server_provisioning_queue SET lease_owner = $1, lease_until = $2
                 WHERE id = $3 AND {open} AND (lease_until IS NULL OR lease_until <= $4)"
            )))
            .bind(&self.worker_id)
            .bind(now + self.settings.lease)
            .bind(id)
            .bind(now)
            .execute(tx.conn())
            .await?
            .rows_affected();
            if taken == 1 {
                claimed.push(id);
            }
        }
        tx.commit().await?;
        Ok(claimed)
    }

    /// Works on one leased order, renewing the lease while the work runs. If the lease is
    /// lost (this process stalled past it), the work stops where it is: every step re-checks
    /// the lease when it writes, and the new owner starts from what was recorded.
    async fn work_on(self: Arc<Self>, id: i64) {
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

    async fn keep_lease(&self, id: i64) {
        let every = Duration::from_millis(u64::try_from(self.settings.lease / 3).unwrap_or(1000))
            .max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(every).await;
            match self.renew(id).await {
                Ok(true) => {}
                Ok(false) => return,
                // The database may be busy for a moment: the lease outlives a few misses.
                Err(e) => tracing::warn!(order = id, error = %e, "cannot renew the order's lease"),
            }
        }
    }

    async fn renew(&self, id: i64) -> Result<bool> {
        let now = self.clock.now_ms();
        let mut tx = self.db.begin_write().await?;
        let renewed = sqlx::query(
            "UPDATE server_provisioning_queue SET lease_until = $1 WHERE id = $2 AND lease_owner = $3",
        )
        .bind(now + self.settings.lease)
        .bind(id)
        .bind(&self.worker_id)
        .execute(tx.conn())
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(renewed == 1)
    }

    /// Puts the order to sleep until `at` (default: the next poll) and gives up its lease.
    pub(super) async fn park(&self, id: i64, at: Option<Millis>) -> Result<()> {
        let now = self.clock.now_ms();
        let poll = i64::try_from(self.settings.poll.as_millis()).unwrap_or(i64::MAX / 2);
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "UPDATE server_provisioning_queue
             SET next_run_at = $1, deadline_at = COALESCE(deadline_at, $2), lease_owner = NULL,
                 lease_until = NULL, updated_at = $3
             WHERE id = $4 AND lease_owner = $5",
        )
        .bind(at.unwrap_or(now + poll))
        .bind(now + self.settings.deadline)
        .bind(now)
        .bind(id)
        .bind(&self.worker_id)
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
