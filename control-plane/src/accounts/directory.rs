//! Finding customers, for operators (support, refunds, suspensions): a search over accounts
//! that shows on one line what support asks first (plan, subscription, devices, lockout).

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::clock::rfc3339;
use crate::error::{Error, FieldError, Result};

use super::Accounts;
use super::users::Role;

/// The most accounts one page shows.
pub const MAX_PAGE: i64 = 200;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AccountSearch {
    /// Part of the email address, or a user's UUID.
    pub q: Option<String>,
    /// `active`, `suspended` or `deleted` (closed).
    pub status: Option<String>,
    /// At most 200; default 50.
    pub limit: Option<i64>,
    /// Only accounts with a smaller id (the next page: the last id seen).
    pub before: Option<i64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AccountSummary {
    pub id: i64,
    pub uuid: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub role: Role,
    /// `active`, `suspended` or `deleted`.
    pub status: String,
    pub vip_tier: Option<String>,
    pub email_verified: bool,
    /// The latest subscription's plan and status; null without one.
    pub plan_type: Option<String>,
    pub subscription_status: Option<String>,
    pub cancel_at_period_end: bool,
    /// Devices that connect (pending or active), and disabled ones.
    pub devices: i64,
    pub devices_disabled: i64,
    /// RFC 3339: logins are refused until then (too many failures).
    pub locked_until: Option<String>,
    pub created_at: String,
}

type Row = (
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
    i64,
    i64,
    i64,
    Option<i64>,
    i64,
);

/// The summary's columns for the users matching `filter` (which binds from `$1`).
fn select(filter: &str) -> String {
    format!(
        "SELECT u.id, u.uuid, u.email, u.first_name, u.last_name, u.role, u.status, u.vip_tier,
                u.email_verified_at, s.plan_type, s.status, COALESCE(s.cancel_at_period_end, 0),
                (SELECT COUNT(*) FROM devices d WHERE d.user_id = u.id AND d.status <> 'disabled'),
                (SELECT COUNT(*) FROM devices d WHERE d.user_id = u.id AND d.status = 'disabled'),
                u.locked_until, u.created_at
         FROM users u
         LEFT JOIN subscriptions s ON s.id = (SELECT MAX(id) FROM subscriptions WHERE user_id = u.id)
         WHERE {filter}"
    )
}

fn summary(row: Row) -> AccountSummary {
    let (
        id,
        uuid,
        email,
        first_name,
        last_name,
        role,
        status,
        vip_tier,
        verified_at,
        plan_type,
        subscription_status,
        cancelling,
        devices,
        devices_disabled,
        locked_until,
        created_at,
    ) = row;
    AccountSummary {
        id,
        uuid,
        email,
        first_name,
        last_name,
        role: Role::parse(&role),
        status,
        vip_tier,
        email_verified: verified_at.is_some(),
        plan_type,
        subscription_status,
        cancel_at_period_end: cancelling != 0,
        devices,
        devices_disabled,
        locked_until: locked_until.map(rfc3339),
        created_at: rfc3339(created_at),
    }
}

/// `q` as a LIKE pattern matching it anywhere, its wildcards taken literally.
fn contains_pattern(q: &str) -> String {
    let mut pattern = String::from("%");
    for c in q.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

impl Accounts {
    /// Accounts matching the search, newest first.
    pub async fn find_accounts(&self, search: AccountSearch) -> Result<Vec<AccountSummary>> {
        let mut problems = Vec::new();
        let limit = search.limit.unwrap_or(50);
        if !(1..=MAX_PAGE).contains(&limit) {
            problems.push(FieldError::new(
                "limit",
                "invalid",
                format!("between 1 and {MAX_PAGE}"),
            ));
        }
        if let Some(status) = search.status.as_deref()
            && !matches!(status, "active" | "suspended" | "deleted")
        {
            problems.push(FieldError::new(
                "status",
                "invalid",
                "one of: active, suspended, deleted",
            ));
        }
        let q = search
            .q
            .as_deref()
            .map(|q| q.trim().to_lowercase())
            .filter(|q| !q.is_empty());
        if q.as_ref().is_some_and(|q| q.chars().count() > 254) {
            problems.push(FieldError::new("q", "too_long", "at most 254 characters"));
        }
        if !problems.is_empty() {
            return Err(Error::Validation(problems));
        }
        let sql = select(
            "u.id < $1 AND ($2 IS NULL OR u.status = $2)
               AND ($3 IS NULL OR u.email LIKE $4 ESCAPE '\\' OR u.uuid = $3)
             ORDER BY u.id DESC LIMIT $5",
        );
        let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(search.before.unwrap_or(i64::MAX))
            .bind(search.status.as_deref())
            .bind(q.as_deref())
            .bind(q.as_deref().map(contains_pattern))
            .bind(limit)
            .fetch_all(self.db.pool())
            .await?;
        Ok(rows.into_iter().map(summary).collect())
    }

    /// One account, by id.
    pub async fn account(&self, user_id: i64) -> Result<AccountSummary> {
        let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(select("u.id = $1")))
            .bind(user_id)
            .fetch_optional(self.db.pool())
            .await?;
        row.map(summary).ok_or(Error::NotFound("user"))
    }
}

#[cfg(test)]
mod tests {
    use super::contains_pattern;

    #[test]
    fn wildcards_in_a_search_are_literal() {
        assert_eq!(contains_pattern("ada"), "%ada%");
        assert_eq!(contains_pattern("a_b%c\\"), "%a\\_b\\%c\\\\%");
    }
}
