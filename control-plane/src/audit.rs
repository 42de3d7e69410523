//! The audit log: who did what to whom, for admin and security-relevant actions.

use std::net::IpAddr;

use serde::Serialize;
use sqlx::AnyConnection;
use utoipa::ToSchema;

use crate::clock::{Millis, rfc3339};
use crate::error::Result;
use crate::storage::Db;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    User(i64),
    /// An operator at the command line of the control-plane host.
    Cli,
    /// The control plane itself (automation, security reactions).
    System,
}

impl Actor {
    /// `user:<id>`, `cli` or `system`, as recorded in the audit log.
    pub fn label(self) -> String {
        match self {
            Self::User(id) => format!("user:{id}"),
            Self::Cli => "cli".to_owned(),
            Self::System => "system".to_owned(),
        }
    }

    fn user_id(self) -> Option<i64> {
        match self {
            Self::User(id) => Some(id),
            Self::Cli | Self::System => None,
        }
    }
}

#[derive(Debug)]
pub struct Entry<'a> {
    pub actor: Actor,
    pub action: &'a str,
    pub target_type: Option<&'a str>,
    pub target_id: Option<String>,
    pub details: serde_json::Value,
    pub ip: Option<IpAddr>,
}

pub async fn record(conn: &mut AnyConnection, entry: Entry<'_>, now: Millis) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (actor_user_id, actor, action, target_type, target_id, details, ip, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(entry.actor.user_id())
    .bind(entry.actor.label())
    .bind(entry.action)
    .bind(entry.target_type)
    .bind(entry.target_id)
    .bind(entry.details.to_string())
    .bind(entry.ip.map(|ip| ip.to_string()))
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditRecord {
    pub id: i64,
    pub actor: String,
    pub action: String,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub details: serde_json::Value,
    pub ip: Option<String>,
    pub created_at: String,
}

/// Newest first; `before_id` pages backwards.
pub async fn list(db: &Db, limit: i64, before_id: Option<i64>) -> Result<Vec<AuditRecord>> {
    type Row = (
        i64,
        String,
        String,
        Option<String>,
        Option<String>,
        String,
        Option<String>,
        i64,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, actor, action, target_type, target_id, details, ip, created_at
         FROM audit_log WHERE id < $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(before_id.unwrap_or(i64::MAX))
    .bind(limit.clamp(1, 500))
    .fetch_all(db.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, actor, action, target_type, target_id, details, ip, at)| AuditRecord {
                id,
                actor,
                action,
                target_type,
                target_id,
                details: serde_json::from_str(&details).unwrap_or(serde_json::Value::Null),
                ip,
                created_at: rfc3339(at),
            },
        )
        .collect())
}
