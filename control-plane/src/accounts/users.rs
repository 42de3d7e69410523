//! Reading users as the API shows them, and operator-made accounts.

use serde::Serialize;
use sqlx::AnyConnection;
use utoipa::ToSchema;

use crate::audit::{self, Actor};
use crate::clock::{Millis, rfc3339};
use crate::error::{Error, Result};
use crate::secret::Secret;
use crate::storage::is_unique_violation;

use super::validate::{self, Problems};
use super::{Accounts, VipTier};

/// Where a mail about a user goes, and the name it greets: `(email, first_name)`.
pub async fn contact(conn: &mut AnyConnection, user_id: i64) -> Result<(String, String)> {
    Ok(
        sqlx::query_as("SELECT email, first_name FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_one(conn)
            .await?,
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Customer,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Self {
        if s == "admin" {
            Self::Admin
        } else {
            Self::Customer
        }
    }
}

/// A user as the customer API shows it (the seed's `user` object plus verification state).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserView {
    pub id: i64,
    pub uuid: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    /// The plan of the latest subscription (`trial`, `personal`, ...); null when there is none.
    pub plan_type: Option<String>,
    /// `trial`, `active`, `past_due`, `suspended`, `cancelled` or `expired`.
    pub subscription_status: Option<String>,
    pub is_vip: bool,
    /// RFC 3339; set while the plan is the trial.
    pub trial_ends: Option<String>,
    pub vip_badge: Option<String>,
    pub email_verified: bool,
    pub role: Role,
    pub created_at: String,
}

type UserRow = (
    i64,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<i64>,
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
);

pub(crate) async fn load_view(conn: &mut AnyConnection, user_id: i64) -> Result<UserView> {
    let row: Option<UserRow> = sqlx::query_as(
        "SELECT u.id, u.uuid, u.email, u.first_name, u.last_name, u.role, u.vip_tier,
                u.email_verified_at, u.created_at, s.plan_type, s.status, s.trial_ends
         FROM users u
         LEFT JOIN subscriptions s
           ON s.id = (SELECT MAX(id) FROM subscriptions WHERE user_id = u.id)
         WHERE u.id = $1",
    )
    .bind(user_id)
    .fetch_optional(conn)
    .await?;
    let Some((
        id,
        uuid,
        email,
        first_name,
        last_name,
        role,
        vip_tier,
        verified,
        created,
        plan,
        status,
        trial_ends,
    )) = row
    else {
        return Err(Error::NotFound("user"));
    };
    let tier = vip_tier.as_deref().and_then(VipTier::parse);
    let on_trial = plan.as_deref() == Some("trial");
    Ok(UserView {
        id,
        uuid,
        email,
        first_name,
        last_name,
        plan_type: plan,
        subscription_status: status,
        is_vip: tier.is_some(),
        trial_ends: trial_ends.filter(|_| on_trial).map(rfc3339),
        vip_badge: tier.map(|t| t.badge().to_owned()),
        email_verified: verified.is_some(),
        role: Role::parse(&role),
        created_at: rfc3339(created),
    })
}

impl Accounts {
    pub async fn me(&self, user_id: i64) -> Result<UserView> {
        let mut conn = self.db.pool().acquire().await?;
        load_view(&mut conn, user_id).await
    }

    /// Creates an operator account (verified, no subscription) from the command line.
    pub async fn create_admin(&self, email: &str, password: &Secret) -> Result<UserView> {
        let mut problems = Problems::default();
        let email = validate::email(Some(email), &mut problems);
        let password = validate::new_password("password", Some(password), &mut problems);
        problems.finish()?;
        let (Some(email), Some(password)) = (email, password) else {
            return Err(Error::internal("validated input missing"));
        };
        let hash = self.hasher.hash(&password).await?;
        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        let inserted: Result<(i64,), sqlx::Error> = sqlx::query_as(
            "INSERT INTO users (uuid, email, password_hash, role, status, email_verified_at, created_at, updated_at)
             VALUES ($1, $2, $3, 'admin', 'active', $4, $4, $4) RETURNING id",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(&email)
        .bind(&hash)
        .bind(now)
        .fetch_one(tx.conn())
        .await;
        let (user_id,) = match inserted {
            Ok(row) => row,
            Err(e) if is_unique_violation(&e, "email") => {
                return Err(Error::conflict("email_taken", "Email already registered"));
            }
            Err(e) => return Err(e.into()),
        };
        audit::record(
            tx.conn(),
            audit::Entry {
                actor: Actor::Cli,
                action: "admin.created",
                target_type: Some("user"),
                target_id: Some(user_id.to_string()),
                details: serde_json::json!({ "email": email }),
                ip: None,
            },
            now,
        )
        .await?;
        let view = load_view(tx.conn(), user_id).await?;
        tx.commit().await?;
        Ok(view)
    }

    /// Gives an existing account the admin role (or takes it away).
    pub async fn set_role(&self, email: &str, role: Role, actor: Actor) -> Result<UserView> {
        let email = email.trim().to_ascii_lowercase();
        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        let role_str = match role {
            Role::Admin => "admin",
            Role::Customer => "customer",
        };
        let row: Option<(i64,)> = sqlx::query_as(
            "UPDATE users SET role = $1, updated_at = $2 WHERE email = $3 RETURNING id",
        )
        .bind(role_str)
        .bind(now)
        .bind(&email)
        .fetch_optional(tx.conn())
        .await?;
        let Some((user_id,)) = row else {
            return Err(Error::NotFound("user"));
        };
        audit::record(
            tx.conn(),
            audit::Entry {
                actor,
                action: "user.role_changed",
                target_type: Some("user"),
                target_id: Some(user_id.to_string()),
                details: serde_json::json!({ "email": email, "role": role_str }),
                ip: None,
            },
            now,
        )
        .await?;
        let view = load_view(tx.conn(), user_id).await?;
        tx.commit().await?;
        Ok(view)
    }
}

/// Marks the email verified (idempotent) and applies VIP status if the address is listed.
/// Called by verification and by a completed password reset (both prove the mailbox).
pub(crate) async fn mark_email_verified(
    conn: &mut AnyConnection,
    user_id: i64,
    now: Millis,
) -> Result<()> {
    let row: Option<(String,)> = sqlx::query_as(
        "UPDATE users SET email_verified_at = COALESCE(email_verified_at, $1), updated_at = $1
         WHERE id = $2 RETURNING email",
    )
    .bind(now)
    .bind(user_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((email,)) = row else {
        return Err(Error::NotFound("user"));
    };
    super::vip::apply_if_listed(conn, user_id, &email, now).await
}
