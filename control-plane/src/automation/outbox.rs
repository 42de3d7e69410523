//! The mail outbox. A mail is written in the same transaction as the change that causes it, so
//! a rolled-back registration never mails anyone and a committed one always will.

use serde_json::Value;
use sqlx::AnyConnection;

use crate::clock::Millis;
use crate::error::Result;
use crate::storage::{Db, Engine};

#[derive(Debug)]
pub struct OutgoingMail<'a> {
    pub to: &'a str,
    pub user_id: Option<i64>,
    /// Template name, e.g. `verify_email`; rendered with `context` when sent.
    pub template: &'a str,
    pub context: Value,
    /// A mail with the same key is written once (e.g. one reminder per trial and step).
    pub dedupe_key: Option<String>,
}

/// Queues a mail; returns false when a mail with the same dedupe key already exists.
pub async fn enqueue(
    conn: &mut AnyConnection,
    mail: OutgoingMail<'_>,
    now: Millis,
) -> Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO mail_outbox (uuid, user_id, to_address, template, context, dedupe_key, status,
                                  next_attempt_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $7, $7)
         ON CONFLICT (dedupe_key) DO NOTHING",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(mail.user_id)
    .bind(mail.to)
    .bind(mail.template)
    .bind(mail.context.to_string())
    .bind(mail.dedupe_key)
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// A mail claimed for delivery.
#[derive(Debug, Clone)]
pub struct ClaimedMail {
    pub id: i64,
    pub uuid: String,
    pub to: String,
    pub template: String,
    pub context: Value,
    pub attempt: i64,
}

type MailRow = (i64, String, String, String, String, i64);

/// Claims due mails. A mail left `sending` by a worker that stopped (its lease, kept in
/// `next_attempt_at`, has passed) is claimed again: the crash case, where at most that one
/// message may go out twice.
pub async fn claim(db: &Db, now: Millis, lease: Millis, limit: i64) -> Result<Vec<ClaimedMail>> {
    let sql = match db.engine() {
        Engine::Postgres => {
            "UPDATE mail_outbox SET status = 'sending', attempts = attempts + 1, next_attempt_at = $1, updated_at = $2
             WHERE id IN (SELECT id FROM mail_outbox WHERE status IN ('pending', 'sending') AND next_attempt_at <= $2
                          ORDER BY next_attempt_at, id LIMIT $3 FOR UPDATE SKIP LOCKED)
             RETURNING id, uuid, to_address, template, context, attempts"
        }
        Engine::Sqlite => {
            "UPDATE mail_outbox SET status = 'sending', attempts = attempts + 1, next_attempt_at = $1, updated_at = $2
             WHERE id IN (SELECT id FROM mail_outbox WHERE status IN ('pending', 'sending') AND next_attempt_at <= $2
                          ORDER BY next_attempt_at, id LIMIT $3)
             RETURNING id, uuid, to_address, template, context, attempts"
        }
    };
    let mut tx = db.begin_write().await?;
    let rows: Vec<MailRow> = sqlx::query_as(sql)
        .bind(now + lease)
        .bind(now)
        .bind(limit)
        .fetch_all(tx.conn())
        .await?;
    tx.commit().await?;
    let mut mails: Vec<ClaimedMail> = rows
        .into_iter()
        .map(|(id, uuid, to, template, context, attempt)| ClaimedMail {
            id,
            uuid,
            to,
            template,
            context: serde_json::from_str(&context).unwrap_or(Value::Null),
            attempt,
        })
        .collect();
    mails.sort_by_key(|m| m.id);
    Ok(mails)
}

/// Records a delivered mail, right after the transport accepted it. Guarded by the claim's
/// attempt: a worker whose lease ran out (and whose mail another worker re-claimed) records
/// nothing. The context is cleared: it may hold live verification or reset links.
pub async fn mark_sent(db: &Db, mail: &ClaimedMail, now: Millis) -> Result<()> {
    let mut tx = db.begin_write().await?;
    sqlx::query(
        "UPDATE mail_outbox SET status = 'sent', sent_at = $1, last_error = NULL, context = '{}', updated_at = $1
         WHERE id = $2 AND status = 'sending' AND attempts = $3",
    )
    .bind(now)
    .bind(mail.id)
    .bind(mail.attempt)
    .execute(tx.conn())
    .await?;
    tx.commit().await
}

/// Records a failed delivery: retried after `retry_at`, or `failed` for good. Guarded by the
/// claim's attempt, as [`mark_sent`].
pub async fn mark_failed(
    db: &Db,
    mail: &ClaimedMail,
    error: &str,
    retry_at: Option<Millis>,
    now: Millis,
) -> Result<()> {
    let error: String = error.chars().take(2000).collect();
    let mut tx = db.begin_write().await?;
    sqlx::query(
        "UPDATE mail_outbox SET status = $1, next_attempt_at = $2, last_error = $3, updated_at = $4
         WHERE id = $5 AND status = 'sending' AND attempts = $6",
    )
    .bind(if retry_at.is_some() {
        "pending"
    } else {
        "failed"
    })
    .bind(retry_at.unwrap_or(now))
    .bind(&error)
    .bind(now)
    .bind(mail.id)
    .bind(mail.attempt)
    .execute(tx.conn())
    .await?;
    tx.commit().await
}
