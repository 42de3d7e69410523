//! Automation: the seed's AutomationEngine and cron, made durable.
//!
//! Workflows are scheduled as tasks in the transaction that causes them (`workflows`), run by
//! workers with leases and retries (`tasks`, `steps`), and send mail through an outbox
//! (`outbox`) rendered from templates (`render`) onto SMTP or files (`transport`).

mod dead;
pub mod outbox;
pub mod render;
pub mod steps;
pub mod tasks;
pub mod transport;
pub mod workflows;

use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::audit::{self, Actor};
use crate::billing::duplicates::{self, Settlement};
use crate::billing::payments::PAYMENTS;
use crate::billing::provider::PaymentProvider;
use crate::billing::trials::{self, TrialExtension};
use crate::clock::{Millis, SECOND, SharedClock};
use crate::config::Settings;
use crate::devices::peers;
use crate::error::{Error, Result};
use crate::storage::{Db, WriteTx};

use self::render::MailRenderer;
use self::steps::StepContext;
use self::tasks::{ClaimedTask, TaskAction, TaskView};
use self::transport::MailTransport;

/// How a claimed task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// Failed; the task is `pending` again (after a backoff) or `dead`.
    Failed(String),
    /// Another worker took the task over after this one's lease expired; nothing was recorded.
    LeaseLost,
    /// Its input has not arrived yet; it runs again later, the attempt not counted.
    Waiting,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryReport {
    pub sent: usize,
    pub retrying: usize,
    pub failed: usize,
}

#[derive(Debug)]
pub struct Automation {
    db: Db,
    clock: SharedClock,
    renderer: MailRenderer,
    transport: MailTransport,
    steps: StepContext,
    /// Settles duplicate subscriptions (`None`: payments are not configured).
    provider: Option<Arc<dyn PaymentProvider>>,
    /// Identifies this worker's leases; unique per process start.
    worker_id: String,
    lease: Millis,
    poll: Duration,
    sweep_period: Millis,
    mail_max_attempts: i64,
    last_sweep_period: AtomicI64,
}

impl Automation {
    pub fn new(
        db: Db,
        clock: SharedClock,
        settings: &Settings,
        provider: Option<Arc<dyn PaymentProvider>>,
    ) -> Result<Self> {
        let to_ms = |secs: u64| i64::try_from(secs).unwrap_or(i64::MAX / SECOND) * SECOND;
        Ok(Self {
            db,
            clock,
            renderer: MailRenderer::new(&settings.public_url)?,
            transport: MailTransport::from_settings(settings)?,
            steps: StepContext {
                regions: settings.regions.clone(),
                operator_email: settings.operator_email.clone(),
            },
            provider,
            worker_id: format!(
                "{}-{}",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            lease: to_ms(settings.task_lease_secs),
            poll: Duration::from_millis(settings.worker_poll_interval_ms),
            sweep_period: to_ms(settings.trial_sweep_interval_secs),
            mail_max_attempts: i64::from(settings.mail_max_attempts),
            last_sweep_period: AtomicI64::new(i64::MIN),
        })
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    pub fn renderer(&self) -> &MailRenderer {
        &self.renderer
    }

    pub fn transport(&self) -> &MailTransport {
        &self.transport
    }

    /// Claims and runs up to `limit` due tasks; returns the ids of those that succeeded.
    pub async fn run_due(&self, limit: i64) -> Result<Vec<i64>> {
        let now = self.clock.now_ms();
        let claimed = tasks::claim(&self.db, &self.worker_id, now, self.lease, limit).await?;
        let mut succeeded = Vec::new();
        for task in claimed {
            if self.execute(&task).await? == Outcome::Succeeded {
                succeeded.push(task.id);
            }
        }
        Ok(succeeded)
    }

    /// Runs due tasks until none is left (for the clock's current time); returns how many ran.
    pub async fn run_until_idle(&self) -> Result<usize> {
        let mut total = 0;
        loop {
            let now = self.clock.now_ms();
            let claimed = tasks::claim(&self.db, &self.worker_id, now, self.lease, 64).await?;
            if claimed.is_empty() {
                return Ok(total);
            }
            for task in claimed {
                self.execute(&task).await?;
                total += 1;
            }
        }
    }

    /// Runs one claimed task: its effects and its completion commit together, or not at all.
    pub async fn execute(&self, task: &ClaimedTask) -> Result<Outcome> {
        let run = match (task.workflow.as_str(), task.step.as_str()) {
            (workflows::MAINTENANCE, workflows::EXPIRE_TRIALS) => self.run_sweep(task).await,
            (PAYMENTS, duplicates::CANCEL | duplicates::REFUND) => self.run_settlement(task).await,
            _ => self.run_step(task).await,
        };
        match run {
            Ok(outcome) => Ok(outcome),
            Err(Error::NotYet { awaits }) => self.wait(task, &awaits).await,
            Err(error) => self.record_failure(task, &error.to_string()).await,
        }
    }

    async fn run_step(&self, task: &ClaimedTask) -> Result<Outcome> {
        let mut tx = self.db.begin_write().await?;
        if let Err(e) = steps::run(&self.steps, tx.conn(), task, self.clock.now_ms()).await {
            tx.rollback().await?;
            return Err(e);
        }
        self.complete(tx, task).await
    }

    /// Marks the task done in `tx`, its effects' transaction, and commits both; rolls back if
    /// the lease was lost meanwhile (another worker runs it).
    async fn complete(&self, mut tx: WriteTx, task: &ClaimedTask) -> Result<Outcome> {
        if tasks::complete(tx.conn(), task.id, &self.worker_id, self.clock.now_ms()).await? {
            tx.commit().await?;
            Ok(Outcome::Succeeded)
        } else {
            tx.rollback().await?;
            tracing::warn!(task = %task.key, "lease lost before completion; the run was rolled back");
            Ok(Outcome::LeaseLost)
        }
    }

    /// A duplicate subscription's cancellation or refund: the provider is asked first, outside
    /// the transaction (the call is idempotent, so a retry or a successor repeats it safely),
    /// then its answer is recorded with the task's completion.
    async fn run_settlement(&self, task: &ClaimedTask) -> Result<Outcome> {
        let settlement = Settlement::of_task(&task.step, &task.payload)?;
        let user_id = task
            .user_id
            .ok_or_else(|| Error::internal(format!("task {} has no user", task.key)))?;
        let provider = self.provider.as_deref().ok_or(Error::Unavailable(
            "payments are not configured on this server",
        ))?;
        let settled = settlement.carry_out(provider).await?;
        let mut tx = self.db.begin_write().await?;
        settlement
            .record(tx.conn(), user_id, &settled, self.clock.now_ms())
            .await?;
        self.complete(tx, task).await
    }

    /// The sweep commits in batches of its own (it is idempotent), then completes its task.
    /// Besides expiring trials it trims the peer-change log, which every device change grows.
    async fn run_sweep(&self, task: &ClaimedTask) -> Result<Outcome> {
        let expired = trials::expire_due(&self.db, self.clock.now_ms()).await?;
        if expired > 0 {
            tracing::info!(expired, "the trial sweep expired trials");
        }
        let pruned = peers::prune(&self.db, peers::KEEP_PER_SERVER).await?;
        if pruned > 0 {
            tracing::info!(pruned, "old peer changes pruned");
        }
        let mut tx = self.db.begin_write().await?;
        let done =
            tasks::complete(tx.conn(), task.id, &self.worker_id, self.clock.now_ms()).await?;
        tx.commit().await?;
        Ok(if done {
            Outcome::Succeeded
        } else {
            Outcome::LeaseLost
        })
    }

    async fn wait(&self, task: &ClaimedTask, awaits: &str) -> Result<Outcome> {
        let operator = self.steps.operator_email.as_deref();
        let now = self.clock.now_ms();
        match tasks::defer(&self.db, task, &self.worker_id, awaits, operator, now).await? {
            Some(status) if status == "dead" => {
                tracing::error!(task = %task.key, %awaits, "a task waited too long for its input");
                Ok(Outcome::Failed(format!("waited too long for {awaits}")))
            }
            Some(_) => {
                tracing::info!(task = %task.key, %awaits, "task waits for its input");
                Ok(Outcome::Waiting)
            }
            None => Ok(Outcome::LeaseLost),
        }
    }

    async fn record_failure(&self, task: &ClaimedTask, message: &str) -> Result<Outcome> {
        match tasks::fail(
            &self.db,
            task,
            &self.worker_id,
            message,
            self.steps.operator_email.as_deref(),
            self.clock.now_ms(),
        )
        .await?
        {
            Some(status) if status == "dead" => {
                tracing::error!(task = %task.key, attempts = task.attempt, error = %message, "task failed for the last time");
            }
            Some(_) => {
                tracing::warn!(task = %task.key, attempt = task.attempt, error = %message, "task failed; will retry")
            }
            None => return Ok(Outcome::LeaseLost),
        }
        Ok(Outcome::Failed(message.to_owned()))
    }

    /// Delivers up to `limit` due mails, each recorded right after the transport accepts it.
    pub async fn deliver_due(&self, limit: i64) -> Result<DeliveryReport> {
        let now = self.clock.now_ms();
        let mut report = DeliveryReport::default();
        for mail in outbox::claim(&self.db, now, self.lease, limit).await? {
            let sent = match self.renderer.render(&mail.template, &mail.context) {
                Ok(rendered) => self
                    .transport
                    .send(&mail.uuid, &mail.to, &rendered)
                    .await
                    .map_err(|f| (f.permanent, f.message)),
                Err(e) => Err((true, e.to_string())),
            };
            let now = self.clock.now_ms();
            match sent {
                Ok(()) => {
                    outbox::mark_sent(&self.db, &mail, now).await?;
                    report.sent += 1;
                }
                Err((permanent, message)) => {
                    let retry_at = (!permanent && mail.attempt < self.mail_max_attempts)
                        .then(|| now + tasks::backoff(mail.attempt));
                    tracing::warn!(mail = mail.id, attempt = mail.attempt, permanent, error = %message, "mail not delivered");
                    outbox::mark_failed(&self.db, &mail, &message, retry_at, now).await?;
                    if retry_at.is_some() {
                        report.retrying += 1;
                    } else {
                        report.failed += 1;
                    }
                }
            }
        }
        Ok(report)
    }

    /// Enqueues this period's trial sweep (once per period per process; the unique key keeps
    /// it to one task across replicas).
    pub async fn enqueue_sweep(&self) -> Result<bool> {
        let now = self.clock.now_ms();
        let period = now.div_euclid(self.sweep_period);
        if self.last_sweep_period.swap(period, Ordering::SeqCst) == period {
            return Ok(false);
        }
        let mut tx = self.db.begin_write().await?;
        let inserted = tasks::schedule(
            tx.conn(),
            workflows::sweep_task(now, self.sweep_period),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(inserted)
    }

    /// Starts the background workers: tasks (with the sweep and lease recovery) and mail.
    pub fn spawn(self: &Arc<Self>, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        tracing::info!(worker = %self.worker_id, mail = %self.transport.describe(), "automation workers started");
        let tasks_worker = {
            let this = Arc::clone(self);
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut last_recovery = i64::MIN;
                while !*shutdown.borrow() {
                    let tick = AssertUnwindSafe(this.task_tick(&mut last_recovery)).catch_unwind();
                    let busy = match tick.await {
                        Ok(Ok(ran)) => ran > 0,
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "task worker error");
                            false
                        }
                        // A bug in one step must not stop every workflow: log and go on (the
                        // task's lease expires and it is retried, then dead-lettered).
                        Err(_) => {
                            tracing::error!("task worker panicked; continuing");
                            false
                        }
                    };
                    if !busy {
                        let _ = tokio::time::timeout(this.poll, shutdown.changed()).await;
                    }
                }
            })
        };
        let mail_worker = {
            let this = Arc::clone(self);
            let mut shutdown = shutdown;
            tokio::spawn(async move {
                while !*shutdown.borrow() {
                    let tick = AssertUnwindSafe(this.deliver_due(16)).catch_unwind();
                    let busy = match tick.await {
                        Ok(Ok(r)) => r.sent + r.retrying + r.failed > 0,
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "mail worker error");
                            false
                        }
                        Err(_) => {
                            tracing::error!("mail worker panicked; continuing");
                            false
                        }
                    };
                    if !busy {
                        let _ = tokio::time::timeout(this.poll, shutdown.changed()).await;
                    }
                }
            })
        };
        vec![tasks_worker, mail_worker]
    }

    async fn task_tick(&self, last_recovery: &mut Millis) -> Result<usize> {
        self.enqueue_sweep().await?;
        let now = self.clock.now_ms();
        if now.saturating_sub(*last_recovery) >= 30 * SECOND {
            *last_recovery = now;
            self.recover_expired_leases().await?;
        }
        Ok(self.run_due(32).await?.len())
    }

    /// Makes tasks whose worker stopped mid-run due again; returns how many.
    pub async fn recover_expired_leases(&self) -> Result<u64> {
        let operator = self.steps.operator_email.as_deref();
        let recovered =
            tasks::recover_expired_leases(&self.db, operator, self.clock.now_ms()).await?;
        if recovered > 0 {
            tracing::warn!(recovered, "took over tasks whose worker stopped");
        }
        Ok(recovered)
    }

    // ----- operators -----

    /// Schedules a no-op task and waits until a worker (of any replica) has run it.
    pub async fn ping(&self, timeout: Duration) -> Result<Duration> {
        let started = std::time::Instant::now();
        let task = workflows::noop_task(self.clock.now_ms());
        let key = task.key.clone();
        let mut tx = self.db.begin_write().await?;
        tasks::schedule(tx.conn(), task, self.clock.now_ms()).await?;
        tx.commit().await?;
        loop {
            let row: Option<(String,)> =
                sqlx::query_as("SELECT status FROM scheduled_tasks WHERE task_key = $1")
                    .bind(&key)
                    .fetch_optional(self.db.pool())
                    .await?;
            if row.is_some_and(|(status,)| status == "succeeded") {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= timeout {
                let mut tx = self.db.begin_write().await?;
                sqlx::query("UPDATE scheduled_tasks SET status = 'cancelled' WHERE task_key = $1 AND status = 'pending'")
                    .bind(&key)
                    .execute(tx.conn())
                    .await?;
                tx.commit().await?;
                return Err(Error::Unavailable(
                    "no automation worker ran the ping task in time",
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn list_tasks(&self, status: &str, limit: i64) -> Result<Vec<TaskView>> {
        tasks::list(&self.db, status, limit).await
    }

    /// Retries or cancels a task, as an operator; audited.
    pub async fn act_on_task(
        &self,
        id: i64,
        action: TaskAction,
        actor: Actor,
        ip: Option<IpAddr>,
    ) -> Result<TaskView> {
        let now = self.clock.now_ms();
        let mut tx = self.db.begin_write().await?;
        let task = tasks::act(tx.conn(), id, action, now).await?;
        audit::record(
            tx.conn(),
            audit::Entry {
                actor,
                action: action.audit_action(),
                target_type: Some("task"),
                target_id: Some(id.to_string()),
                details: serde_json::json!({ "key": task.key }),
                ip,
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(task)
    }

    /// Extends a running trial by `days` (the user given by id or email).
    pub async fn extend_trial(
        &self,
        user: UserRef<'_>,
        days: i64,
        actor: Actor,
        ip: Option<IpAddr>,
    ) -> Result<TrialExtension> {
        let now = self.clock.now_ms();
        let mut tx = self.db.begin_write().await?;
        let user_id = match user {
            UserRef::Id(id) => id,
            UserRef::Email(email) => {
                let row: Option<(i64,)> = sqlx::query_as("SELECT id FROM users WHERE email = $1")
                    .bind(email.trim().to_ascii_lowercase())
                    .fetch_optional(tx.conn())
                    .await?;
                row.ok_or(Error::NotFound("user"))?.0
            }
        };
        let extension = trials::extend(tx.conn(), user_id, days, actor, ip, now).await?;
        tx.commit().await?;
        Ok(extension)
    }
}

#[derive(Debug, Clone, Copy)]
pub enum UserRef<'a> {
    Id(i64),
    Email(&'a str),
}
