//! The scanner token: a per-user secret for the seed's network-scanner app. Stored only as a
//! hash; shown once, when it is (re)generated.

use sqlx::AnyConnection;

use crate::clock::Millis;
use crate::crypto::{random_token, sha256_hex};
use crate::error::Result;
use crate::secret::Secret;

use super::Accounts;

/// Gives the user a scanner token if they have none (the signup step). Nobody learns this
/// first token; the app gets a usable one from [`Accounts::rotate_scanner_token`].
pub async fn ensure(conn: &mut AnyConnection, user_id: i64, now: Millis) -> Result<bool> {
    let token = random_token(32);
    let n = sqlx::query(
        "INSERT INTO scanner_tokens (user_id, token_hash, created_at, rotated_at) VALUES ($1, $2, $3, $3)
         ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(user_id)
    .bind(sha256_hex(token.expose().as_bytes()))
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

impl Accounts {
    /// Replaces the user's scanner token and returns the new one (the only time it is shown).
    pub async fn rotate_scanner_token(&self, user_id: i64) -> Result<Secret> {
        let now = self.now();
        let token = random_token(32);
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "INSERT INTO scanner_tokens (user_id, token_hash, created_at, rotated_at) VALUES ($1, $2, $3, $3)
             ON CONFLICT (user_id) DO UPDATE SET token_hash = excluded.token_hash, rotated_at = excluded.rotated_at",
        )
        .bind(user_id)
        .bind(sha256_hex(token.expose().as_bytes()))
        .bind(now)
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(token)
    }
}
