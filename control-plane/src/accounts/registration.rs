//! Registration (the seed's WORKFLOW 1) and email verification.
//!
//! Unlike the seed, the user, the subscription, the trial tracking, the verification mail and
//! the first session are written in ONE transaction, and VIP perks wait for a verified email.
//! An address gets one trial: registering it again after its account closed starts none.

use serde::Deserialize;
use sqlx::AnyConnection;
use utoipa::ToSchema;

use crate::automation::outbox::{self, OutgoingMail};
use crate::automation::workflows;
use crate::clock::{Millis, rfc3339};
use crate::crypto::{random_token, sha256_hex};
use crate::error::{Error, Result};
use crate::secret::Secret;
use crate::storage::is_unique_violation;

use super::users::{load_view, mark_email_verified};
use super::validate::{self, Problems};
use super::{Accounts, AuthTokens, Caller, ClientInfo, UserView, sessions, trial_claims};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterInput {
    pub email: Option<String>,
    #[schema(value_type = Option<String>, min_length = 8)]
    pub password: Option<Secret>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
}

impl Accounts {
    pub async fn register(
        &self,
        input: RegisterInput,
        client: &ClientInfo,
    ) -> Result<(AuthTokens, UserView)> {
        let mut problems = Problems::default();
        let email = validate::email(input.email.as_deref(), &mut problems);
        let password = validate::new_password("password", input.password.as_ref(), &mut problems);
        let first_name =
            validate::person_name("first_name", input.first_name.as_deref(), &mut problems);
        let last_name =
            validate::person_name("last_name", input.last_name.as_deref(), &mut problems);
        problems.finish()?;
        let (Some(email), Some(password)) = (email, password) else {
            return Err(Error::internal("validated input missing"));
        };

        // A cheap early answer that spares an Argon2 hash; the UNIQUE constraint below is
        // what decides when registrations race.
        let taken: Option<(i64,)> = sqlx::query_as("SELECT id FROM users WHERE email = $1")
            .bind(&email)
            .fetch_optional(self.db.pool())
            .await?;
        if taken.is_some() {
            return Err(email_taken());
        }
        let password_hash = self.hasher.hash(&password).await?;

        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        let inserted: Result<(i64,), sqlx::Error> = sqlx::query_as(
            "INSERT INTO users (uuid, email, password_hash, first_name, last_name, role, status, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, 'customer', 'active', $6, $6) RETURNING id",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(&email)
        .bind(&password_hash)
        .bind(&first_name)
        .bind(&last_name)
        .bind(now)
        .fetch_one(tx.conn())
        .await;
        let user_id = match inserted {
            Ok((id,)) => id,
            Err(e) if is_unique_violation(&e, "email") => return Err(email_taken()),
            Err(e) => return Err(e.into()),
        };
        self.queue_verification(tx.conn(), user_id, &email, &first_name, now)
            .await?;
        // An address whose trial was used under a closed account starts without one.
        let trial = !trial_claims::used(tx.conn(), &email).await?;
        if trial {
            self.start_trial(tx.conn(), user_id, now).await?;
        }
        let issued =
            sessions::create(tx.conn(), user_id, client, now, self.policy.refresh_ttl).await?;
        let user = load_view(tx.conn(), user_id).await?;
        tx.commit().await?;
        tracing::info!(user_id, trial, "registered a new account");
        Ok((self.tokens_for(&user.uuid, issued, now)?, user))
    }

    /// The trial subscription, its tracking row and its workflow (mails, the end).
    async fn start_trial(&self, conn: &mut AnyConnection, user_id: i64, now: Millis) -> Result<()> {
        let trial_ends = now + self.policy.trial;
        sqlx::query(
            "INSERT INTO subscriptions (user_id, plan_type, status, trial_started, trial_ends,
                                        current_period_start, current_period_end, created_at, updated_at)
             VALUES ($1, 'trial', 'trial', $2, $3, $2, $3, $2, $2)",
        )
        .bind(user_id)
        .bind(now)
        .bind(trial_ends)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO trial_tracking (user_id, trial_started, trial_ends, created_at)
             VALUES ($1, $2, $3, $2)",
        )
        .bind(user_id)
        .bind(now)
        .bind(trial_ends)
        .execute(&mut *conn)
        .await?;
        workflows::trigger_trial_signup(conn, user_id, now, self.policy.trial).await
    }

    /// Consumes a verification token (single use, 24 h) and verifies the address; VIP status
    /// follows if the address is on the VIP list.
    pub async fn verify_email(&self, token: Option<&str>) -> Result<UserView> {
        let mut problems = Problems::default();
        let token = validate::required_token(token, &mut problems);
        problems.finish()?;
        let Some(token) = token else {
            return Err(Error::internal("validated input missing"));
        };
        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        let row: Option<(i64,)> = sqlx::query_as(
            "UPDATE one_time_tokens SET used_at = $1
             WHERE token_hash = $2 AND purpose = 'verify_email' AND used_at IS NULL AND expires_at > $1
             RETURNING user_id",
        )
        .bind(now)
        .bind(sha256_hex(token.as_bytes()))
        .fetch_optional(tx.conn())
        .await?;
        let Some((user_id,)) = row else {
            return Err(Error::invalid(
                "invalid_token",
                "This verification link is invalid, already used or expired",
            ));
        };
        mark_email_verified(tx.conn(), user_id, now).await?;
        let user = load_view(tx.conn(), user_id).await?;
        tx.commit().await?;
        Ok(user)
    }

    /// Sends a fresh verification mail (older links stop working). False if already verified.
    pub async fn resend_verification(&self, caller: &Caller) -> Result<bool> {
        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        let row: Option<(String, String, Option<i64>)> =
            sqlx::query_as("SELECT email, first_name, email_verified_at FROM users WHERE id = $1")
                .bind(caller.user_id)
                .fetch_optional(tx.conn())
                .await?;
        let Some((email, first_name, verified)) = row else {
            return Err(Error::NotFound("user"));
        };
        if verified.is_some() {
            return Ok(false);
        }
        self.queue_verification(tx.conn(), caller.user_id, &email, &first_name, now)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn queue_verification(
        &self,
        conn: &mut AnyConnection,
        user_id: i64,
        email: &str,
        first_name: &str,
        now: Millis,
    ) -> Result<()> {
        let token = issue_one_time_token(
            conn,
            user_id,
            "verify_email",
            now,
            self.policy.verification_ttl,
        )
        .await?;
        outbox::enqueue(
            conn,
            OutgoingMail {
                to: email,
                user_id: Some(user_id),
                template: "verify_email",
                context: serde_json::json!({
                    "first_name": first_name,
                    "verify_url": self.link("verify-email", &token),
                    "expires_at": rfc3339(now + self.policy.verification_ttl),
                }),
                dedupe_key: None,
            },
            now,
        )
        .await?;
        Ok(())
    }
}

/// Stores a new single-use token (hashed) and retires the user's unused ones of that purpose.
pub(crate) async fn issue_one_time_token(
    conn: &mut AnyConnection,
    user_id: i64,
    purpose: &str,
    now: Millis,
    ttl: Millis,
) -> Result<Secret> {
    sqlx::query(
        "UPDATE one_time_tokens SET used_at = $1 WHERE user_id = $2 AND purpose = $3 AND used_at IS NULL",
    )
    .bind(now)
    .bind(user_id)
    .bind(purpose)
    .execute(&mut *conn)
    .await?;
    let token = random_token(32);
    sqlx::query(
        "INSERT INTO one_time_tokens (user_id, purpose, token_hash, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(user_id)
    .bind(purpose)
    .bind(sha256_hex(token.expose().as_bytes()))
    .bind(now)
    .bind(now + ttl)
    .execute(conn)
    .await?;
    Ok(token)
}

fn email_taken() -> Error {
    Error::conflict("email_taken", "Email already registered")
}
