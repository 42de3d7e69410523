//! Password recovery: a single-use link valid for an hour. The request is answered the same
//! way whether or not the address has an account.

use serde::Deserialize;
use utoipa::ToSchema;

use crate::audit::{self, Actor};
use crate::automation::outbox::{self, OutgoingMail};
use crate::clock::rfc3339;
use crate::crypto::sha256_hex;
use crate::error::{Error, Result};
use crate::secret::Secret;

use super::registration::issue_one_time_token;
use super::users::mark_email_verified;
use super::validate::{self, Problems};
use super::{Accounts, ClientInfo, sessions};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequestInput {
    pub email: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetConfirmInput {
    pub token: Option<String>,
    #[schema(value_type = Option<String>, min_length = 8)]
    pub new_password: Option<Secret>,
}

impl Accounts {
    pub async fn request_password_reset(&self, input: ResetRequestInput) -> Result<()> {
        let mut problems = Problems::default();
        let email = validate::email(input.email.as_deref(), &mut problems);
        problems.finish()?;
        let Some(email) = email else {
            return Err(Error::internal("validated input missing"));
        };
        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        let row: Option<(i64, String)> = sqlx::query_as(
            "SELECT id, first_name FROM users WHERE email = $1 AND status = 'active'",
        )
        .bind(&email)
        .fetch_optional(tx.conn())
        .await?;
        let Some((user_id, first_name)) = row else {
            return Ok(());
        };
        let token = issue_one_time_token(
            tx.conn(),
            user_id,
            "password_reset",
            now,
            self.policy.reset_ttl,
        )
        .await?;
        outbox::enqueue(
            tx.conn(),
            OutgoingMail {
                to: &email,
                user_id: Some(user_id),
                template: "password_reset",
                context: serde_json::json!({
                    "first_name": first_name,
                    "reset_url": self.link("reset-password", &token),
                    "expires_at": rfc3339(now + self.policy.reset_ttl),
                }),
                dedupe_key: None,
            },
            now,
        )
        .await?;
        tx.commit().await
    }

    /// Sets the new password, ends every session and clears a lockout. The link proves the
    /// mailbox, so it also verifies the email.
    pub async fn confirm_password_reset(
        &self,
        input: ResetConfirmInput,
        client: &ClientInfo,
    ) -> Result<()> {
        let mut problems = Problems::default();
        let token = validate::required_token(input.token.as_deref(), &mut problems);
        let password =
            validate::new_password("new_password", input.new_password.as_ref(), &mut problems);
        problems.finish()?;
        let (Some(token), Some(password)) = (token, password) else {
            return Err(Error::internal("validated input missing"));
        };
        let token_hash = sha256_hex(token.as_bytes());
        let invalid = || {
            Error::invalid(
                "invalid_token",
                "This reset link is invalid, already used or expired",
            )
        };
        // Checked before hashing so a bad link costs no Argon2 work; consumed below.
        let live: Option<(i64,)> = sqlx::query_as(
            "SELECT id FROM one_time_tokens
             WHERE token_hash = $1 AND purpose = 'password_reset' AND used_at IS NULL AND expires_at > $2",
        )
        .bind(&token_hash)
        .bind(self.now())
        .fetch_optional(self.db.pool())
        .await?;
        if live.is_none() {
            return Err(invalid());
        }
        let password_hash = self.hasher.hash(&password).await?;

        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        let row: Option<(i64,)> = sqlx::query_as(
            "UPDATE one_time_tokens SET used_at = $1
             WHERE token_hash = $2 AND purpose = 'password_reset' AND used_at IS NULL AND expires_at > $1
             RETURNING user_id",
        )
        .bind(now)
        .bind(&token_hash)
        .fetch_optional(tx.conn())
        .await?;
        let Some((user_id,)) = row else {
            return Err(invalid());
        };
        sqlx::query(
            "UPDATE users SET password_hash = $1, failed_logins = 0, failed_login_first_at = NULL,
                              locked_until = NULL, updated_at = $2
             WHERE id = $3",
        )
        .bind(&password_hash)
        .bind(now)
        .bind(user_id)
        .execute(tx.conn())
        .await?;
        sessions::revoke_all(tx.conn(), user_id, "password_reset", now).await?;
        mark_email_verified(tx.conn(), user_id, now).await?;
        Self::mail_password_changed(tx.conn(), user_id, "reset", now).await?;
        audit::record(
            tx.conn(),
            audit::Entry {
                actor: Actor::User(user_id),
                action: "user.password_reset",
                target_type: Some("user"),
                target_id: Some(user_id.to_string()),
                details: serde_json::json!({}),
                ip: client.ip,
            },
            now,
        )
        .await?;
        tx.commit().await
    }
}
