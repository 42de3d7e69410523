//! Accounts: registration with a trial or VIP status, email verification, login with lockout,
//! sessions and token rotation, password recovery, the VIP list and admin accounts.
//!
//! Each public method is one domain operation that owns its transaction.

mod closure;
mod directory;
mod jwt;
mod login;
mod passwords;
mod profile;
mod recovery;
mod registration;
pub mod scanner;
mod sessions;
mod trial_claims;
mod users;
pub mod validate;
mod vip;

use std::net::IpAddr;

use serde::Serialize;
use utoipa::ToSchema;

use crate::clock::{DAY, HOUR, MINUTE, Millis, SECOND, SharedClock};
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::secret::Secret;
use crate::storage::Db;

pub use closure::CloseInput;
pub use directory::{AccountSearch, AccountSummary};
pub use jwt::{AccessTokens, Claims, load_or_create_signing_key};
pub use login::{LoginInput, LogoutInput, RefreshInput};
pub use passwords::PasswordHasher;
pub use profile::{PasswordChange, ProfileUpdate};
pub use recovery::{ResetConfirmInput, ResetRequestInput};
pub use registration::RegisterInput;
pub use users::{Role, UserView, contact};
pub use vip::{VipEntry, VipInput, VipTier};

/// Where a request came from, for sessions and the audit log.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
}

/// Tokens handed to a client after registration, login or refresh.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuthTokens {
    #[schema(value_type = String)]
    #[serde(serialize_with = "expose_secret")]
    pub access_token: Secret,
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// Single use: every refresh returns a new one.
    #[schema(value_type = String)]
    #[serde(serialize_with = "expose_secret")]
    pub refresh_token: Secret,
}

fn expose_secret<S: serde::Serializer>(s: &Secret, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.expose())
}

/// The authenticated caller, established from an access token and a live session.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: i64,
    pub user_uuid: String,
    pub session_id: String,
    pub role: Role,
}

/// Time limits and thresholds, from settings, in milliseconds.
#[derive(Debug, Clone)]
struct Policy {
    trial: Millis,
    refresh_ttl: Millis,
    verification_ttl: Millis,
    reset_ttl: Millis,
    max_failures: i64,
    failure_window: Millis,
    lockout: Millis,
    public_url: String,
    /// How long a closed account's device addresses rest before reuse.
    address_quarantine: Millis,
}

#[derive(Debug)]
pub struct Accounts {
    db: Db,
    clock: SharedClock,
    hasher: PasswordHasher,
    tokens: AccessTokens,
    policy: Policy,
}

fn ms(n: u64, unit: Millis) -> Millis {
    i64::try_from(n)
        .unwrap_or(i64::MAX / unit)
        .saturating_mul(unit)
}

impl Accounts {
    pub fn new(
        db: Db,
        clock: SharedClock,
        settings: &Settings,
        signing_key: &[u8],
    ) -> Result<Self> {
        let hasher = PasswordHasher::new(
            settings.password_hash_memory_kib,
            settings.password_hash_iterations,
            settings.password_hash_parallelism,
            settings.password_hash_concurrency,
        )?;
        let tokens = AccessTokens::new(
            signing_key,
            &settings.jwt_issuer,
            &settings.jwt_audience,
            settings.access_token_ttl_secs,
        )?;
        let policy = Policy {
            trial: ms(settings.trial_days, DAY),
            refresh_ttl: ms(settings.refresh_token_ttl_days, DAY),
            verification_ttl: ms(settings.email_verification_ttl_hours, HOUR),
            reset_ttl: ms(settings.password_reset_ttl_minutes, MINUTE),
            max_failures: i64::from(settings.login_max_failures),
            failure_window: ms(settings.login_failure_window_secs, SECOND),
            lockout: ms(settings.login_lockout_secs, SECOND),
            public_url: settings.public_url.trim_end_matches('/').to_owned(),
            address_quarantine: ms(settings.address_quarantine_hours, HOUR),
        };
        Ok(Self {
            db,
            clock,
            hasher,
            tokens,
            policy,
        })
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    fn now(&self) -> Millis {
        self.clock.now_ms()
    }

    /// Authenticates a bearer access token: signature and expiry, then a live session and an
    /// active user, read fresh so logout, suspension and role changes apply at once.
    pub async fn authenticate(&self, bearer: &str) -> Result<Caller> {
        let now = self.now();
        let claims = self.tokens.verify(bearer, now)?;
        let row: Option<(i64, String, String, String)> = sqlx::query_as(
            "SELECT u.id, u.uuid, u.role, u.status
             FROM auth_sessions s JOIN users u ON u.id = s.user_id
             WHERE s.id = $1 AND s.revoked_at IS NULL AND s.expires_at > $2",
        )
        .bind(&claims.sid)
        .bind(now)
        .fetch_optional(self.db.pool())
        .await?;
        let Some((user_id, user_uuid, role, status)) = row else {
            return Err(Error::Unauthenticated(
                "the session has ended; log in again",
            ));
        };
        if user_uuid != claims.sub {
            return Err(Error::Unauthenticated("the access token is invalid"));
        }
        if status != "active" {
            return Err(Error::Forbidden("this account is not active"));
        }
        Ok(Caller {
            user_id,
            user_uuid,
            session_id: claims.sid,
            role: Role::parse(&role),
        })
    }

    fn tokens_for(
        &self,
        user_uuid: &str,
        issued: sessions::IssuedSession,
        now: Millis,
    ) -> Result<AuthTokens> {
        Ok(AuthTokens {
            access_token: Secret::new(self.tokens.issue(user_uuid, &issued.session_id, now)?),
            token_type: "Bearer",
            expires_in: self.tokens.ttl_secs(),
            refresh_token: issued.refresh_token,
        })
    }

    fn link(&self, path: &str, token: &Secret) -> String {
        format!("{}/{path}?token={}", self.policy.public_url, token.expose())
    }
}
