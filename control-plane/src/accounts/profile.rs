//! The caller's own profile: their name, and a password change that proves the current one.

use serde::Deserialize;
use utoipa::ToSchema;

use crate::audit::{self, Actor};
use crate::automation::outbox::{self, OutgoingMail};
use crate::clock::rfc3339;
use crate::error::{Error, Result};
use crate::secret::Secret;

use super::sessions;
use super::users::load_view;
use super::validate::{self, Problems};
use super::{Accounts, Caller, ClientInfo, UserView};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdate {
    /// Omitted: unchanged. Empty: cleared.
    pub first_name: Option<String>,
    pub last_name: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    #[schema(value_type = Option<String>)]
    pub current_password: Option<Secret>,
    #[schema(value_type = Option<String>, min_length = 8)]
    pub new_password: Option<Secret>,
}

impl Accounts {
    pub async fn update_profile(&self, user_id: i64, input: ProfileUpdate) -> Result<UserView> {
        let mut problems = Problems::default();
        let first = input
            .first_name
            .as_deref()
            .map(|n| validate::person_name("first_name", Some(n), &mut problems));
        let last = input
            .last_name
            .as_deref()
            .map(|n| validate::person_name("last_name", Some(n), &mut problems));
        problems.finish()?;
        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "UPDATE users SET first_name = COALESCE($1, first_name), last_name = COALESCE($2, last_name),
                              updated_at = $3
             WHERE id = $4",
        )
        .bind(first)
        .bind(last)
        .bind(now)
        .bind(user_id)
        .execute(tx.conn())
        .await?;
        let view = load_view(tx.conn(), user_id).await?;
        tx.commit().await?;
        Ok(view)
    }

    /// Replaces the password after checking the current one, and ends every other session (a
    /// thief holding one is out; the caller stays signed in).
    pub async fn change_password(
        &self,
        caller: &Caller,
        input: PasswordChange,
        client: &ClientInfo,
    ) -> Result<()> {
        let mut problems = Problems::default();
        let current = input.current_password.filter(|p| !p.expose().is_empty());
        if current.is_none() {
            problems.push(
                "current_password",
                "required",
                "The current password is required",
            );
        }
        let new =
            validate::new_password("new_password", input.new_password.as_ref(), &mut problems);
        problems.finish()?;
        let (Some(current), Some(new)) = (current, new) else {
            return Err(Error::internal("validated input missing"));
        };
        let old = self
            .check_password(caller.user_id, &current, client)
            .await?;
        let hash = self.hasher.hash(&new).await?;
        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        // Guarded: a reset (or another change) that landed meanwhile, and revoked this
        // session, wins.
        if !sessions::is_live(tx.conn(), &caller.session_id, now).await? {
            return Err(Error::Unauthenticated(
                "this session has ended; sign in again",
            ));
        }
        let changed = sqlx::query(
            "UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3 AND password_hash = $4",
        )
        .bind(&hash)
        .bind(now)
        .bind(caller.user_id)
        .bind(&old)
        .execute(tx.conn())
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(Error::invalid(
                "wrong_password",
                "the password changed meanwhile; try again",
            ));
        }
        let ended =
            sessions::revoke_others(tx.conn(), caller.user_id, &caller.session_id, now).await?;
        Self::mail_password_changed(tx.conn(), caller.user_id, "changed", now).await?;
        audit::record(
            tx.conn(),
            audit::Entry {
                actor: Actor::User(caller.user_id),
                action: "account.password_changed",
                target_type: Some("user"),
                target_id: Some(caller.user_id.to_string()),
                details: serde_json::json!({ "other_sessions_ended": ended }),
                ip: client.ip,
            },
            now,
        )
        .await?;
        tx.commit().await
    }

    /// Tells the account's owner their password changed (`how`: `changed` or `reset`), so a
    /// change they did not make does not go unnoticed.
    pub(super) async fn mail_password_changed(
        conn: &mut sqlx::AnyConnection,
        user_id: i64,
        how: &str,
        now: crate::clock::Millis,
    ) -> Result<()> {
        let (email, first_name) = super::contact(&mut *conn, user_id).await?;
        outbox::enqueue(
            conn,
            OutgoingMail {
                to: &email,
                user_id: Some(user_id),
                template: "password_changed",
                context: serde_json::json!({
                    "first_name": first_name,
                    "changed_at": rfc3339(now),
                    "how": how,
                }),
                dedupe_key: None,
            },
            now,
        )
        .await?;
        Ok(())
    }

    /// Checks that `password` is the user's and returns its stored hash. A wrong one is 400
    /// `wrong_password` (the caller is signed in; a 401 would read as an expired session) and
    /// counts towards the same lockout as failed logins, so a stolen session cannot be used
    /// to guess the password.
    pub(super) async fn check_password(
        &self,
        user_id: i64,
        password: &Secret,
        client: &ClientInfo,
    ) -> Result<String> {
        let (stored, locked_until): (String, Option<i64>) =
            sqlx::query_as("SELECT password_hash, locked_until FROM users WHERE id = $1")
                .bind(user_id)
                .fetch_optional(self.db.pool())
                .await?
                .ok_or(Error::NotFound("user"))?;
        let now = self.now();
        if let Some(until) = locked_until.filter(|&t| t > now) {
            return Err(super::login::locked(until, now));
        }
        if self.hasher.verify(password, &stored).await? {
            return Ok(stored);
        }
        match self.record_failure(user_id, client, now).await? {
            Error::InvalidCredentials => Err(Error::invalid(
                "wrong_password",
                "the current password is not correct",
            )),
            locked => Err(locked),
        }
    }
}
