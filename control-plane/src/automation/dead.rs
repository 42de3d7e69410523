//! What the operator is told when a task gives up: each task that goes `dead` (its last
//! attempt failed, or its worker stopped during it) mails `operator_email` with the error and
//! what to do about it. Without this a dead task is only a log line, and a dead payment task
//! is a customer who paid for nothing.
//!
//! Reporting is best effort, in its own transaction after the task is recorded dead: a report
//! that cannot be made (a broken payload, the database failing) is logged and never keeps the
//! task from being dead, nor the recovery of other tasks from going on.

use serde_json::{Value, json};
use sqlx::AnyConnection;

use crate::accounts;
use crate::billing::duplicates::{self, Settlement};
use crate::billing::payments::{PAYMENTS, PROCESS_EVENT};
use crate::clock::Millis;
use crate::error::Result;
use crate::storage::Db;

use super::outbox::{self, OutgoingMail};

/// Mails the operator about dead task `task_id` (nothing without an operator address). Once
/// per death: a task retried by hand that dies again is reported again.
pub async fn report(db: &Db, operator: Option<&str>, task_id: i64, now: Millis) {
    let reported = async {
        let mut tx = db.begin_write().await?;
        report_in(tx.conn(), operator, task_id, now).await?;
        tx.commit().await
    };
    if let Err(e) = reported.await {
        tracing::error!(task = task_id, error = %e, "cannot tell the operator about a dead task");
    }
}

async fn report_in(
    conn: &mut AnyConnection,
    operator: Option<&str>,
    task_id: i64,
    now: Millis,
) -> Result<()> {
    let row: (
        String,
        String,
        String,
        String,
        Option<i64>,
        i64,
        Option<String>,
        Millis,
    ) = sqlx::query_as(
        "SELECT task_key, workflow, step, payload, user_id, attempts, last_error, updated_at
             FROM scheduled_tasks WHERE id = $1",
    )
    .bind(task_id)
    .fetch_one(&mut *conn)
    .await?;
    let (key, workflow, step, payload, user_id, attempts, error, updated_at) = row;
    tracing::error!(task = %key, attempts, error = ?error, "a task gave up; it needs a person");
    let Some(operator) = operator else {
        return Ok(());
    };
    let payload: Value = serde_json::from_str(&payload).unwrap_or(Value::Null);
    // Whatever stops the specific advice (a payload this version cannot read) still leaves the
    // operator told.
    let remedy = remedy(&mut *conn, &workflow, &step, &payload)
        .await
        .unwrap_or_else(|_| GENERIC.to_owned());
    let (customer, first_name) = match user_id {
        Some(user_id) => accounts::contact(&mut *conn, user_id).await?,
        None => (String::new(), String::new()),
    };
    outbox::enqueue(
        conn,
        OutgoingMail {
            to: operator,
            user_id: None,
            template: "task_dead",
            context: json!({
                "id": task_id,
                "key": key,
                "workflow": workflow,
                "step": step,
                "customer": customer,
                "first_name": first_name,
                "attempts": attempts,
                "error": error.unwrap_or_default(),
                "remedy": remedy,
            }),
            dedupe_key: Some(format!("task_dead:{task_id}:{updated_at}")),
        },
        now,
    )
    .await?;
    Ok(())
}

const GENERIC: &str = "Fix the cause of the error, then retry the task.";

/// What a person does about a dead task of this kind.
async fn remedy(
    conn: &mut AnyConnection,
    workflow: &str,
    step: &str,
    payload: &Value,
) -> Result<String> {
    Ok(match (workflow, step) {
        (PAYMENTS, PROCESS_EVENT) => format!(
            "A PayPal event (payment_events row {}) was not applied to the customer's account: \
             what they paid for may be missing. Fix the cause, then retry the task.",
            payload.get("event").unwrap_or(&Value::Null)
        ),
        (PAYMENTS, duplicates::CANCEL | duplicates::REFUND) => {
            Settlement::of_task(step, payload)?.remedy(conn).await?
        }
        _ => GENERIC.to_owned(),
    })
}
