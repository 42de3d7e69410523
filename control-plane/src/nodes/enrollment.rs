//! Enrollment tokens: how a new node proves it may join as a given server. Single use,
//! short-lived (an hour by default), stored only as a hash; issued by operators (API, CLI) or
//! by provisioning (into cloud-init), and consumed by the `Enroll` call.

use std::net::IpAddr;

use serde::Serialize;
use sqlx::AnyConnection;
use utoipa::ToSchema;

use crate::audit::{self, Actor};
use crate::clock::{Millis, rfc3339};
use crate::crypto::{random_token, sha256_hex};
use crate::error::{Error, Result};
use crate::storage::Db;

#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedToken {
    pub server_id: i64,
    /// Shown once: put it in the node's token file (or cloud-init); it works once.
    #[schema(value_type = String)]
    #[serde(serialize_with = "expose")]
    pub token: crate::secret::Secret,
    pub expires_at: String,
}

fn expose<S: serde::Serializer>(
    s: &crate::secret::Secret,
    ser: S,
) -> std::result::Result<S::Ok, S::Error> {
    ser.serialize_str(s.expose())
}

/// Issues a token for `server_id`, which must exist and not be retired.
pub async fn issue(
    db: &Db,
    server_id: i64,
    ttl: Millis,
    actor: Actor,
    ip: Option<IpAddr>,
    now: Millis,
) -> Result<IssuedToken> {
    let mut tx = db.begin_write().await?;
    let server: Option<(String, String)> =
        sqlx::query_as("SELECT name, status FROM vpn_servers WHERE id = $1")
            .bind(server_id)
            .fetch_optional(tx.conn())
            .await?;
    let Some((name, status)) = server else {
        return Err(Error::NotFound("server"));
    };
    if status == "retired" {
        return Err(Error::conflict(
            "server_retired",
            "a retired server cannot enroll a node",
        ));
    }
    let token = random_token(32);
    sqlx::query(
        "INSERT INTO node_enrollment_tokens (server_id, token_hash, created_by, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(server_id)
    .bind(sha256_hex(token.expose().as_bytes()))
    .bind(actor.label())
    .bind(now)
    .bind(now + ttl)
    .execute(tx.conn())
    .await?;
    audit::record(
        tx.conn(),
        audit::Entry {
            actor,
            action: "node.token_issued",
            target_type: Some("server"),
            target_id: Some(server_id.to_string()),
            details: serde_json::json!({ "server": name, "expires_at": now + ttl }),
            ip,
        },
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(IssuedToken {
        server_id,
        token,
        expires_at: rfc3339(now + ttl),
    })
}

/// Consumes a token (guarded: of two concurrent uses, one wins) and returns its server. Every
/// failure looks the same to the caller, which learns nothing about which tokens exist.
pub async fn consume(conn: &mut AnyConnection, token: &str, now: Millis) -> Result<i64> {
    let row: Option<(i64,)> = sqlx::query_as(
        "UPDATE node_enrollment_tokens SET used_at = $1
         WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1
         RETURNING server_id",
    )
    .bind(now)
    .bind(sha256_hex(token.trim().as_bytes()))
    .fetch_optional(conn)
    .await?;
    row.map(|(server_id,)| server_id)
        .ok_or(Error::Unauthenticated(
            "the enrollment token is invalid, used or expired",
        ))
}

/// Revokes every certificate issued to a server's node (a stolen or rebuilt machine): its
/// calls are refused from now on, and it must enroll again with a new token.
pub async fn revoke_certificates(
    db: &Db,
    server_id: i64,
    actor: Actor,
    ip: Option<IpAddr>,
    now: Millis,
) -> Result<u64> {
    let mut tx = db.begin_write().await?;
    let exists: Option<(i64,)> = sqlx::query_as("SELECT id FROM vpn_servers WHERE id = $1")
        .bind(server_id)
        .fetch_optional(tx.conn())
        .await?;
    if exists.is_none() {
        return Err(Error::NotFound("server"));
    }
    let revoked = revoke_in(tx.conn(), server_id, now).await?;
    audit::record(
        tx.conn(),
        audit::Entry {
            actor,
            action: "node.certificates_revoked",
            target_type: Some("server"),
            target_id: Some(server_id.to_string()),
            details: serde_json::json!({ "revoked": revoked }),
            ip,
        },
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(revoked)
}

/// Revokes the server's certificates inside the caller's transaction (which audits it).
pub async fn revoke_in(conn: &mut AnyConnection, server_id: i64, now: Millis) -> Result<u64> {
    Ok(sqlx::query(
        "UPDATE node_certificates SET revoked_at = $1 WHERE server_id = $2 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(server_id)
    .execute(conn)
    .await?
    .rows_affected())
}

/// Whether the server has a token it can still enroll with (issued, unused, unexpired).
pub async fn has_live_token(db: &Db, server_id: i64, now: Millis) -> Result<bool> {
    let (live,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM node_enrollment_tokens
         WHERE server_id = $1 AND used_at IS NULL AND expires_at > $2",
    )
    .bind(server_id)
    .bind(now)
    .fetch_one(db.pool())
    .await?;
    Ok(live > 0)
}
