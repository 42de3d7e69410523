//! Login with a per-account lockout kept in the database (so it holds across replicas),
//! refresh-token rotation, and logout.

use serde::Deserialize;
use utoipa::ToSchema;

use crate::audit::{self, Actor};
use crate::clock::Millis;
use crate::error::{Error, FieldError, Result};
use crate::secret::Secret;

use super::sessions::{self, Rotation};
use super::users::load_view;
use super::validate::Problems;
use super::{Accounts, AuthTokens, Caller, ClientInfo, UserView};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginInput {
    pub email: Option<String>,
    #[schema(value_type = Option<String>)]
    pub password: Option<Secret>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshInput {
    #[schema(value_type = Option<String>)]
    pub refresh_token: Option<Secret>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogoutInput {
    /// End every session of the account, not only this one.
    #[serde(default)]
    pub all: bool,
}

impl Accounts {
    pub async fn login(
        &self,
        input: LoginInput,
        client: &ClientInfo,
    ) -> Result<(AuthTokens, UserView)> {
        let mut problems = Problems::default();
        let email = input.email.as_deref().map(str::trim).unwrap_or_default();
        if email.is_empty() {
            problems.push("email", "required", "Email is required");
        }
        let password = input.password.filter(|p| !p.expose().is_empty());
        if password.is_none() {
            problems.push("password", "required", "Password is required");
        }
        problems.finish()?;
        let (email, Some(password)) = (email.to_ascii_lowercase(), password) else {
            return Err(Error::internal("validated input missing"));
        };

        let row: Option<(i64, String, String, Option<i64>)> = sqlx::query_as(
            "SELECT id, password_hash, status, locked_until FROM users WHERE email = $1",
        )
        .bind(&email)
        .fetch_optional(self.db.pool())
        .await?;
        let Some((user_id, password_hash, status, locked_until)) = row else {
            // Same work as a wrong password, so response time does not reveal accounts.
            self.hasher.verify_dummy(&password).await?;
            return Err(Error::InvalidCredentials);
        };
        let now = self.now();
        if let Some(until) = locked_until.filter(|&t| t > now) {
            return Err(locked(until, now));
        }
        if !self.hasher.verify(&password, &password_hash).await? {
            return Err(self.record_failure(user_id, client, now).await?);
        }
        if status != "active" {
            return Err(Error::Forbidden("this account is not active"));
        }

        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        // Guarded: a lock set by a concurrent failure (on any replica) still wins.
        let open: Option<(i64,)> = sqlx::query_as(
            "UPDATE users SET failed_logins = 0, failed_login_first_at = NULL
             WHERE id = $1 AND (locked_until IS NULL OR locked_until <= $2) RETURNING id",
        )
        .bind(user_id)
        .bind(now)
        .fetch_optional(tx.conn())
        .await?;
        if open.is_none() {
            return Err(Error::AccountLocked {
                retry_after_secs: whole_seconds(self.policy.lockout),
            });
        }
        let issued =
            sessions::create(tx.conn(), user_id, client, now, self.policy.refresh_ttl).await?;
        let user = load_view(tx.conn(), user_id).await?;
        tx.commit().await?;
        Ok((self.tokens_for(&user.uuid, issued, now)?, user))
    }

    /// Counts a failed password within the window; the failure that reaches the limit locks
    /// the account. Returns the error to answer with.
    pub(super) async fn record_failure(
        &self,
        user_id: i64,
        client: &ClientInfo,
        now: Millis,
    ) -> Result<Error> {
        let mut tx = self.db.begin_write().await?;
        let (failures,): (i64,) = sqlx::query_as(
            "UPDATE users SET
                failed_logins = CASE WHEN failed_login_first_at IS NULL OR failed_login_first_at <= $2
                                     THEN 1 ELSE failed_logins + 1 END,
                failed_login_first_at = CASE WHEN failed_login_first_at IS NULL OR failed_login_first_at <= $2
                                             THEN $3 ELSE failed_login_first_at END,
                updated_at = $3
             WHERE id = $1 RETURNING failed_logins",
        )
        .bind(user_id)
        .bind(now - self.policy.failure_window)
        .bind(now)
        .fetch_one(tx.conn())
        .await?;
        if failures < self.policy.max_failures {
            tx.commit().await?;
            return Ok(Error::InvalidCredentials);
        }
        let until = now + self.policy.lockout;
        sqlx::query(
            "UPDATE users SET locked_until = $1, failed_logins = 0, failed_login_first_at = NULL WHERE id = $2",
        )
        .bind(until)
        .bind(user_id)
        .execute(tx.conn())
        .await?;
        audit::record(
            tx.conn(),
            audit::Entry {
                actor: Actor::System,
                action: "user.locked",
                target_type: Some("user"),
                target_id: Some(user_id.to_string()),
                details: serde_json::json!({ "failures": failures, "locked_until": until }),
                ip: client.ip,
            },
            now,
        )
        .await?;
        tx.commit().await?;
        tracing::warn!(user_id, "account locked after repeated failed logins");
        Ok(locked(until, now))
    }

    /// Rotates a refresh token. A token presented twice revokes its whole session.
    pub async fn refresh(&self, input: RefreshInput) -> Result<AuthTokens> {
        let Some(token) = input.refresh_token.filter(|t| !t.expose().is_empty()) else {
            return Err(Error::Validation(vec![FieldError::new(
                "refresh_token",
                "required",
                "Refresh token is required",
            )]));
        };
        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        match sessions::rotate(tx.conn(), &token, now, self.policy.refresh_ttl).await? {
            Rotation::Rotated {
                user_uuid, issued, ..
            } => {
                tx.commit().await?;
                self.tokens_for(&user_uuid, issued, now)
            }
            Rotation::Reused => {
                tx.commit().await?;
                tracing::warn!("refresh token reused; its session was revoked");
                Err(Error::Unauthenticated(
                    "this refresh token was already used; the session has been revoked",
                ))
            }
            Rotation::Invalid => Err(Error::Unauthenticated(
                "the refresh token is invalid or expired",
            )),
        }
    }

    pub async fn logout(&self, caller: &Caller, input: LogoutInput) -> Result<()> {
        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        if input.all {
            sessions::revoke_all(tx.conn(), caller.user_id, "logout_all", now).await?;
        } else {
            sessions::revoke(tx.conn(), &caller.session_id, "logout", now).await?;
        }
        tx.commit().await
    }
}

pub(super) fn locked(until: Millis, now: Millis) -> Error {
    Error::AccountLocked {
        retry_after_secs: whole_seconds(until - now),
    }
}

/// Rounds up, and never below one second (a Retry-After of 0 invites a tight loop).
fn whole_seconds(ms: Millis) -> u64 {
    ms.max(1000).unsigned_abs().div_ceil(1000)
}
