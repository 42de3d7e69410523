//! The mail outbox. A mail is written in the same transaction as the change that causes it, so
//! a rolled-back registration never mails anyone and a committed one always will.

use serde_json::Value;
use sqlx::AnyConnection;

use crate::clock::Millis;
use crate::error::Result;

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
