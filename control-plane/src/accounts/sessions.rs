//! Login sessions and refresh tokens. A session is one refresh-token family: every refresh
//! rotates the token; presenting an already-rotated token means it was stolen or replayed, and
//! the whole session is revoked. Access tokens name their session, so revocation ends them too.

use sqlx::AnyConnection;

use crate::clock::Millis;
use crate::crypto::{random_token, sha256_hex};
use crate::error::{Error, Result};
use crate::secret::Secret;

use super::ClientInfo;

#[derive(Debug)]
pub(crate) struct IssuedSession {
    pub session_id: String,
    pub refresh_token: Secret,
}

#[derive(Debug)]
pub(crate) enum Rotation {
    Rotated {
        user_uuid: String,
        issued: IssuedSession,
    },
    /// A token that was already used: the session has been revoked (commit the transaction).
    Reused,
    Invalid,
}

pub(crate) async fn create(
    conn: &mut AnyConnection,
    user_id: i64,
    client: &ClientInfo,
    now: Millis,
    ttl: Millis,
) -> Result<IssuedSession> {
    let session_id = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO auth_sessions (id, user_id, created_at, last_used_at, expires_at, ip, user_agent)
         VALUES ($1, $2, $3, $3, $4, $5, $6)",
    )
    .bind(&session_id)
    .bind(user_id)
    .bind(now)
    .bind(now + ttl)
    .bind(client.ip.map(|ip| ip.to_string()))
    .bind(client.user_agent.as_deref())
    .execute(&mut *conn)
    .await?;
    let refresh_token = insert_refresh_token(conn, &session_id, now, ttl).await?;
    Ok(IssuedSession {
        session_id,
        refresh_token,
    })
}

async fn insert_refresh_token(
    conn: &mut AnyConnection,
    session_id: &str,
    now: Millis,
    ttl: Millis,
) -> Result<Secret> {
    let token = random_token(32);
    sqlx::query(
        "INSERT INTO refresh_tokens (session_id, token_hash, created_at, expires_at)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(session_id)
    .bind(sha256_hex(token.expose().as_bytes()))
    .bind(now)
    .bind(now + ttl)
    .execute(conn)
    .await?;
    Ok(token)
}

/// A refresh token with its session and user: id, session, expiry, use, user uuid, user
/// status, session revocation, session expiry.
type TokenRow = (
    i64,
    String,
    i64,
    Option<i64>,
    String,
    String,
    Option<i64>,
    i64,
);

pub(crate) async fn rotate(
    conn: &mut AnyConnection,
    presented: &Secret,
    now: Millis,
    ttl: Millis,
) -> Result<Rotation> {
    let row: Option<TokenRow> = sqlx::query_as(
        "SELECT rt.id, rt.session_id, rt.expires_at, rt.used_at,
                    u.uuid, u.status, s.revoked_at, s.expires_at
             FROM refresh_tokens rt
             JOIN auth_sessions s ON s.id = rt.session_id
             JOIN users u ON u.id = s.user_id
             WHERE rt.token_hash = $1",
    )
    .bind(sha256_hex(presented.expose().as_bytes()))
    .fetch_optional(&mut *conn)
    .await?;
    let Some((
        token_id,
        session_id,
        expires_at,
        used_at,
        user_uuid,
        status,
        revoked_at,
        session_expires,
    )) = row
    else {
        return Ok(Rotation::Invalid);
    };
    if revoked_at.is_some() {
        return Ok(Rotation::Invalid);
    }
    if used_at.is_some() {
        revoke(conn, &session_id, "refresh_token_reuse", now).await?;
        return Ok(Rotation::Reused);
    }
    if expires_at <= now || session_expires <= now {
        return Ok(Rotation::Invalid);
    }
    if status != "active" {
        return Err(Error::Forbidden("this account is not active"));
    }
    // Guarded: of two concurrent uses of one token, exactly one gets here with a row updated.
    let claimed =
        sqlx::query("UPDATE refresh_tokens SET used_at = $1 WHERE id = $2 AND used_at IS NULL")
            .bind(now)
            .bind(token_id)
            .execute(&mut *conn)
            .await?
            .rows_affected();
    if claimed == 0 {
        revoke(conn, &session_id, "refresh_token_reuse", now).await?;
        return Ok(Rotation::Reused);
    }
    sqlx::query("UPDATE auth_sessions SET last_used_at = $1, expires_at = $2 WHERE id = $3")
        .bind(now)
        .bind(now + ttl)
        .bind(&session_id)
        .execute(&mut *conn)
        .await?;
    let refresh_token = insert_refresh_token(conn, &session_id, now, ttl).await?;
    Ok(Rotation::Rotated {
        user_uuid,
        issued: IssuedSession {
            session_id,
            refresh_token,
        },
    })
}

pub(crate) async fn revoke(
    conn: &mut AnyConnection,
    session_id: &str,
    reason: &str,
    now: Millis,
) -> Result<bool> {
    let n = sqlx::query(
        "UPDATE auth_sessions SET revoked_at = $1, revoked_reason = $2
         WHERE id = $3 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(reason)
    .bind(session_id)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n > 0)
}

pub(crate) async fn revoke_all(
    conn: &mut AnyConnection,
    user_id: i64,
    reason: &str,
    now: Millis,
) -> Result<u64> {
    let n = sqlx::query(
        "UPDATE auth_sessions SET revoked_at = $1, revoked_reason = $2
         WHERE user_id = $3 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(reason)
    .bind(user_id)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n)
}

/// Ends every session of the user but `keep` (the caller's own).
pub(crate) async fn revoke_others(
    conn: &mut AnyConnection,
    user_id: i64,
    keep: &str,
    now: Millis,
) -> Result<u64> {
    let n = sqlx::query(
        "UPDATE auth_sessions SET revoked_at = $1, revoked_reason = 'password_changed'
         WHERE user_id = $2 AND id <> $3 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(user_id)
    .bind(keep)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n)
}

/// Whether the session is still open (not revoked, not expired), read in the caller's
/// transaction so a revocation committed meanwhile is seen.
pub(crate) async fn is_live(
    conn: &mut AnyConnection,
    session_id: &str,
    now: Millis,
) -> Result<bool> {
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT id FROM auth_sessions WHERE id = $1 AND revoked_at IS NULL AND expires_at > $2",
    )
    .bind(session_id)
    .bind(now)
    .fetch_optional(conn)
    .await?;
    Ok(row.is_some())
}
