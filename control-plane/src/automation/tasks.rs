//! Scheduled tasks: the durable queue under every workflow.
//!
//! A task is scheduled inside the transaction of the change that causes it, under a unique key,
//! so the change and its follow-ups commit or fail together and a retried trigger cannot
//! schedule twice. Workers claim due tasks (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite has
//! one writer), hold a lease, and record the outcome with an update guarded by that lease: a
//! worker whose lease expired (and whose task another worker took) cannot record anything.

use serde::Serialize;
use serde_json::Value;
use sqlx::AnyConnection;
use utoipa::ToSchema;

use crate::clock::{HOUR, Millis, SECOND, rfc3339};
use crate::error::{Error, Result};
use crate::storage::{Db, Engine, WriteTx};

use super::dead;

pub const DEFAULT_MAX_ATTEMPTS: i64 = 8;
const BACKOFF_BASE: Millis = 30 * SECOND;
const BACKOFF_CAP: Millis = HOUR;

#[derive(Debug, Clone)]
pub struct NewTask {
    /// Unique per workflow run and step, e.g. `trial_signup:42:trial_last_day`.
    pub key: String,
    pub workflow: &'static str,
    pub step: &'static str,
    pub payload: Value,
    pub user_id: Option<i64>,
    pub run_at: Millis,
    pub max_attempts: i64,
}

/// Inserts a task unless one with the same key exists; true if inserted.
pub async fn schedule(conn: &mut AnyConnection, task: NewTask, now: Millis) -> Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO scheduled_tasks (task_key, workflow, step, payload, user_id, run_at, status,
                                      attempts, max_attempts, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $8, $8)
         ON CONFLICT (task_key) DO NOTHING",
    )
    .bind(task.key)
    .bind(task.workflow)
    .bind(task.step)
    .bind(task.payload.to_string())
    .bind(task.user_id)
    .bind(task.run_at)
    .bind(task.max_attempts)
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

#[derive(Debug, Clone)]
pub struct ClaimedTask {
    pub id: i64,
    pub key: String,
    pub workflow: String,
    pub step: String,
    pub payload: Value,
    pub user_id: Option<i64>,
    /// This run's attempt number, from 1.
    pub attempt: i64,
    pub max_attempts: i64,
}

type ClaimRow = (i64, String, String, String, String, Option<i64>, i64, i64);

/// Claims up to `limit` due tasks for `owner` until `now + lease`.
pub async fn claim(
    db: &Db,
    owner: &str,
    now: Millis,
    lease: Millis,
    limit: i64,
) -> Result<Vec<ClaimedTask>> {
    // The one dialect difference: PostgreSQL workers skip rows another worker is claiming;
    // SQLite's single writer (BEGIN IMMEDIATE) already serializes claims.
    let sql = match db.engine() {
        Engine::Postgres => {
            "UPDATE scheduled_tasks
             SET status = 'running', lease_owner = $1, lease_expires_at = $2, attempts = attempts + 1, updated_at = $3
             WHERE id IN (SELECT id FROM scheduled_tasks WHERE status = 'pending' AND run_at <= $3
                          ORDER BY run_at, id LIMIT $4 FOR UPDATE SKIP LOCKED)
             RETURNING id, task_key, workflow, step, payload, user_id, attempts, max_attempts"
        }
        Engine::Sqlite => {
            "UPDATE scheduled_tasks
             SET status = 'running', lease_owner = $1, lease_expires_at = $2, attempts = attempts + 1, updated_at = $3
             WHERE id IN (SELECT id FROM scheduled_tasks WHERE status = 'pending' AND run_at <= $3
                          ORDER BY run_at, id LIMIT $4)
             RETURNING id, task_key, workflow, step, payload, user_id, attempts, max_attempts"
        }
    };
    let mut tx = db.begin_write().await?;
    let rows: Vec<ClaimRow> = sqlx::query_as(sql)
        .bind(owner)
        .bind(now + lease)
        .bind(now)
        .bind(limit)
        .fetch_all(tx.conn())
        .await?;
    tx.commit().await?;
    let mut tasks: Vec<ClaimedTask> = rows
        .into_iter()
        .map(
            |(id, key, workflow, step, payload, user_id, attempt, max_attempts)| ClaimedTask {
                id,
                key,
                workflow,
                step,
                payload: serde_json::from_str(&payload).unwrap_or(Value::Null),
                user_id,
                attempt,
                max_attempts,
            },
        )
        .collect();
    tasks.sort_by_key(|t| t.id);
    Ok(tasks)
}

/// Marks a claimed task done, inside the transaction that applied its effects. False when the
/// lease was lost: the caller must roll back, so the effects happen exactly once.
pub async fn complete(
    conn: &mut AnyConnection,
    task_id: i64,
    owner: &str,
    now: Millis,
) -> Result<bool> {
    let n = sqlx::query(
        "UPDATE scheduled_tasks
         SET status = 'succeeded', completed_at = $1, updated_at = $1, lease_owner = NULL,
             lease_expires_at = NULL, last_error = NULL
         WHERE id = $2 AND status = 'running' AND lease_owner = $3",
    )
    .bind(now)
    .bind(task_id)
    .bind(owner)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// The wait before attempt `attempt + 1`: 30 s, doubling, at most an hour.
pub fn backoff(attempt: i64) -> Millis {
    let exp = u32::try_from(attempt.clamp(1, 20) - 1).unwrap_or(0);
    BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_CAP)
}

/// Records a failed attempt: back to pending after the backoff, or dead after the last one
/// (then the operator is told). Returns the new status (None when
/// the lease was lost meanwhile).
pub async fn fail(
    db: &Db,
    task: &ClaimedTask,
    owner: &str,
    error: &str,
    operator: Option<&str>,
    now: Millis,
) -> Result<Option<String>> {
    let error: String = error.chars().take(2000).collect();
    let mut tx = db.begin_write().await?;
    let row: Option<(String,)> = sqlx::query_as(
        "UPDATE scheduled_tasks
         SET status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'pending' END,
             run_at = CASE WHEN attempts >= max_attempts THEN run_at ELSE $1 END,
             last_error = $2, lease_owner = NULL, lease_expires_at = NULL, updated_at = $3
         WHERE id = $4 AND status = 'running' AND lease_owner = $5
         RETURNING status",
    )
    .bind(now + backoff(task.attempt))
    .bind(&error)
    .bind(now)
    .bind(task.id)
    .bind(owner)
    .fetch_optional(tx.conn())
    .await?;
    commit_status(db, tx, row, task.id, operator, now).await
}

/// Commits a task's new status (`row`, from the `UPDATE`); one that went dead is reported to
/// the operator.
async fn commit_status(
    db: &Db,
    tx: WriteTx,
    row: Option<(String,)>,
    task_id: i64,
    operator: Option<&str>,
    now: Millis,
) -> Result<Option<String>> {
    tx.commit().await?;
    let status = row.map(|(s,)| s);
    if status.as_deref() == Some("dead") {
        dead::report(db, operator, task_id, now).await;
    }
    Ok(status)
}

/// How long a task may wait for its input ([`Error::NotYet`]): PayPal redelivers a webhook
/// for up to three days.
const WAIT_LIMIT: Millis = 3 * 24 * HOUR;

/// Puts a task whose input has not arrived back to `pending` without counting the attempt,
/// to run again after a wait that grows with how long it has waited (30 s to 1 h), or as soon
/// as [`wake`] says its input came; dead once it has waited [`WAIT_LIMIT`] (then the operator
/// is told). Returns the new status (None when the lease was lost meanwhile).
pub async fn defer(
    db: &Db,
    task: &ClaimedTask,
    owner: &str,
    awaits: &str,
    operator: Option<&str>,
    now: Millis,
) -> Result<Option<String>> {
    let mut tx = db.begin_write().await?;
    let row: Option<(String,)> = sqlx::query_as(
        "UPDATE scheduled_tasks
         SET waiting_since = COALESCE(waiting_since, $2), waiting_for = $5,
             status = CASE WHEN COALESCE(waiting_since, $2) < $1 THEN 'dead' ELSE 'pending' END,
             attempts = CASE WHEN COALESCE(waiting_since, $2) < $1 THEN attempts
                             ELSE attempts - 1 END,
             run_at = $2 + CASE WHEN ($2 - COALESCE(waiting_since, $2)) / 2 < $3 THEN $3
                                WHEN ($2 - COALESCE(waiting_since, $2)) / 2 > $4 THEN $4
                                ELSE ($2 - COALESCE(waiting_since, $2)) / 2 END,
             last_error = 'waiting for ' || $5, lease_owner = NULL, lease_expires_at = NULL,
             updated_at = $2
         WHERE id = $6 AND status = 'running' AND lease_owner = $7
         RETURNING status",
    )
    .bind(now - WAIT_LIMIT)
    .bind(now)
    .bind(BACKOFF_BASE)
    .bind(BACKOFF_CAP)
    .bind(awaits)
    .bind(task.id)
    .bind(owner)
    .fetch_optional(tx.conn())
    .await?;
    commit_status(db, tx, row, task.id, operator, now).await
}

/// Tasks waiting for `awaits` (as named by their step's `Error::NotYet`) run now: it has
/// arrived. They then run in the order they were scheduled (`run_at`, then id), so events that
/// waited keep the order PayPal sent them in.
pub async fn wake(conn: &mut AnyConnection, awaits: &str, now: Millis) -> Result<u64> {
    let woken = sqlx::query(
        "UPDATE scheduled_tasks SET run_at = $1, updated_at = $1
         WHERE status = 'pending' AND waiting_for = $2",
    )
    .bind(now)
    .bind(awaits)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(woken)
}

/// Tasks whose worker stopped or crashed mid-run become due again (or dead, if that was their
/// last attempt: then the operator is told).
pub async fn recover_expired_leases(db: &Db, operator: Option<&str>, now: Millis) -> Result<u64> {
    let mut tx = db.begin_write().await?;
    let recovered: Vec<(i64, String)> = sqlx::query_as(
        "UPDATE scheduled_tasks
         SET status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'pending' END,
             last_error = 'the lease expired: the worker stopped or crashed during the run',
             lease_owner = NULL, lease_expires_at = NULL, updated_at = $1
         WHERE status = 'running' AND lease_expires_at < $1
         RETURNING id, status",
    )
    .bind(now)
    .fetch_all(tx.conn())
    .await?;
    tx.commit().await?;
    for (id, status) in &recovered {
        if status == "dead" {
            dead::report(db, operator, *id, now).await;
        }
    }
    Ok(u64::try_from(recovered.len()).unwrap_or(u64::MAX))
}

/// Moves every pending task of a user's workflow by `by` milliseconds.
pub async fn shift_pending(
    conn: &mut AnyConnection,
    user_id: i64,
    workflow: &str,
    by: Millis,
    now: Millis,
) -> Result<u64> {
    let n = sqlx::query(
        "UPDATE scheduled_tasks SET run_at = run_at + $1, updated_at = $2
         WHERE user_id = $3 AND workflow = $4 AND status = 'pending'",
    )
    .bind(by)
    .bind(now)
    .bind(user_id)
    .bind(workflow)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n)
}

/// Cancels every pending task of a user's workflow (e.g. the trial drip of a new VIP).
pub async fn cancel_pending(
    conn: &mut AnyConnection,
    user_id: i64,
    workflow: &str,
    now: Millis,
) -> Result<u64> {
    let n = sqlx::query(
        "UPDATE scheduled_tasks SET status = 'cancelled', updated_at = $1
         WHERE user_id = $2 AND workflow = $3 AND status = 'pending'",
    )
    .bind(now)
    .bind(user_id)
    .bind(workflow)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n)
}

/// A task as operators see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskView {
    pub id: i64,
    pub key: String,
    pub workflow: String,
    pub step: String,
    /// `pending`, `running`, `succeeded`, `dead` or `cancelled`.
    pub status: String,
    pub attempts: i64,
    pub max_attempts: i64,
    pub run_at: String,
    pub last_error: Option<String>,
    pub user_id: Option<i64>,
    pub updated_at: String,
}

type ViewRow = (
    i64,
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    Option<String>,
    Option<i64>,
    i64,
);

const VIEW_COLUMNS: &str = "id, task_key, workflow, step, status, attempts, max_attempts, run_at, last_error, user_id, updated_at";

fn view(
    (id, key, workflow, step, status, attempts, max_attempts, run_at, last_error, user_id, updated): ViewRow,
) -> TaskView {
    TaskView {
        id,
        key,
        workflow,
        step,
        status,
        attempts,
        max_attempts,
        run_at: rfc3339(run_at),
        last_error,
        user_id,
        updated_at: rfc3339(updated),
    }
}

pub const STATUSES: &[&str] = &["pending", "running", "succeeded", "dead", "cancelled"];

/// Tasks in one status, newest change first.
pub async fn list(db: &Db, status: &str, limit: i64) -> Result<Vec<TaskView>> {
    if !STATUSES.contains(&status) {
        return Err(Error::Validation(vec![crate::error::FieldError::new(
            "status",
            "invalid",
            format!("status must be one of {}", STATUSES.join(", ")),
        )]));
    }
    let sql = format!(
        "SELECT {VIEW_COLUMNS} FROM scheduled_tasks WHERE status = $1 ORDER BY updated_at DESC, id DESC LIMIT $2"
    );
    let rows: Vec<ViewRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(status)
        .bind(limit.clamp(1, 1000))
        .fetch_all(db.pool())
        .await?;
    Ok(rows.into_iter().map(view).collect())
}

pub async fn get(conn: &mut AnyConnection, id: i64) -> Result<TaskView> {
    let sql = format!("SELECT {VIEW_COLUMNS} FROM scheduled_tasks WHERE id = $1");
    let row: Option<ViewRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.map(view).ok_or(Error::NotFound("task"))
}

/// What an operator can do to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskAction {
    /// A dead or cancelled task runs again now, with a fresh set of attempts.
    Retry,
    /// A pending or dead task will not run.
    Cancel,
}

impl TaskAction {
    pub fn audit_action(self) -> &'static str {
        match self {
            Self::Retry => "task.retried",
            Self::Cancel => "task.cancelled",
        }
    }
}

/// Applies an operator's action; a task in a state the action does not apply to is a 409.
pub async fn act(
    conn: &mut AnyConnection,
    id: i64,
    action: TaskAction,
    now: Millis,
) -> Result<TaskView> {
    let (sql, allowed, code) = match action {
        TaskAction::Retry => (
            "UPDATE scheduled_tasks SET status = 'pending', attempts = 0, waiting_since = NULL,
                                        waiting_for = NULL, run_at = $1, updated_at = $1
             WHERE id = $2 AND status IN ('dead', 'cancelled')",
            "dead or cancelled",
            "task_not_retryable",
        ),
        TaskAction::Cancel => (
            "UPDATE scheduled_tasks SET status = 'cancelled', updated_at = $1
             WHERE id = $2 AND status IN ('pending', 'dead')",
            "pending or dead",
            "task_not_cancellable",
        ),
    };
    let changed = sqlx::query(sql)
        .bind(now)
        .bind(id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let task = get(conn, id).await?;
    if changed == 0 {
        return Err(Error::conflict(
            code,
            format!(
                "this applies only to {allowed} tasks; this one is {}",
                task.status
            ),
        ));
    }
    Ok(task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), 30 * SECOND);
        assert_eq!(backoff(2), 60 * SECOND);
        assert_eq!(backoff(4), 240 * SECOND);
        assert_eq!(backoff(8), HOUR);
        assert_eq!(backoff(50), HOUR);
    }
}
