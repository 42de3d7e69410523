//! Promo codes (the seed's TRIAL20 and COMEBACK30): validity dates and a use limit that no
//! race can exceed (a guarded update plus a CHECK constraint).

use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;
use utoipa::ToSchema;

use crate::clock::Millis;
use crate::error::{Error, FieldError, Result};
use crate::storage::{Db, is_unique_violation};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoCheck {
    pub code: Option<String>,
    /// With a plan, the answer includes the discounted first month.
    pub plan: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PromoQuote {
    pub code: String,
    pub description: String,
    pub percent_off: i64,
    pub plan: Option<String>,
    pub regular_price_cents: Option<i64>,
    pub first_month_price_cents: Option<i64>,
}

fn normalize(raw: Option<&str>) -> Result<String> {
    let code = raw.map(str::trim).unwrap_or_default().to_ascii_uppercase();
    if code.len() < 3
        || code.len() > 32
        || !code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Error::Validation(vec![FieldError::new(
            "code",
            "invalid",
            "3 to 32 letters, digits, '-' or '_'",
        )]));
    }
    Ok(code)
}

type PromoRow = (
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    i64,
    i64,
);

async fn load(conn: &mut AnyConnection, code: &str) -> Result<PromoRow> {
    let row: Option<PromoRow> = sqlx::query_as(
        "SELECT code, description, percent_off, valid_from, valid_until, max_uses, uses, active FROM promo_codes WHERE code = $1",
    )
    .bind(code)
    .fetch_optional(conn)
    .await?;
    row.ok_or_else(|| Error::NotFound("promo code"))
}

fn check_usable(row: &PromoRow, now: Millis) -> Result<()> {
    let (_, _, _, from, until, max, uses, active) = *row;
    let refusal = |code: &'static str, message: &str| Error::Conflict {
        code,
        message: message.to_owned(),
    };
    if active == 0 {
        return Err(refusal(
            "promo_inactive",
            "this promo code is no longer offered",
        ));
    }
    if from.is_some_and(|f| now < f) {
        return Err(refusal(
            "promo_not_started",
            "this promo code is not valid yet",
        ));
    }
    if until.is_some_and(|u| now >= u) {
        return Err(refusal("promo_expired", "this promo code has expired"));
    }
    if max.is_some_and(|m| uses >= m) {
        return Err(refusal("promo_used_up", "this promo code has been used up"));
    }
    Ok(())
}

pub async fn validate(db: &Db, input: PromoCheck, now: Millis) -> Result<PromoQuote> {
    let code = normalize(input.code.as_deref())?;
    let mut conn = db.pool().acquire().await?;
    let row = load(&mut conn, &code).await?;
    check_usable(&row, now)?;
    let price = match input.plan.as_deref() {
        Some(plan) => {
            let price: Option<(i64,)> =
                sqlx::query_as("SELECT price_cents FROM plans WHERE code = $1 AND is_public = 1")
                    .bind(plan)
                    .fetch_optional(&mut *conn)
                    .await?;
            Some(
                price
                    .ok_or_else(|| {
                        Error::Validation(vec![FieldError::new("plan", "invalid", "no such plan")])
                    })?
                    .0,
            )
        }
        None => None,
    };
    let percent = row.2;
    Ok(PromoQuote {
        code: row.0,
        description: row.1,
        percent_off: percent,
        plan: input.plan,
        regular_price_cents: price,
        // Rounded to the cent in the customer's favour.
        first_month_price_cents: price.map(|p| p - (p * percent + 99) / 100),
    })
}

/// Uses a code once for a user (checkout calls this in its transaction). Refused when used up,
/// expired, or already used by this user.
pub async fn redeem(
    conn: &mut AnyConnection,
    code: &str,
    user_id: i64,
    now: Millis,
) -> Result<i64> {
    let code = normalize(Some(code))?;
    let row = load(&mut *conn, &code).await?;
    check_usable(&row, now)?;
    let taken = sqlx::query(
        "UPDATE promo_codes SET uses = uses + 1, updated_at = $1
         WHERE code = $2 AND active = 1 AND (max_uses IS NULL OR uses < max_uses)",
    )
    .bind(now)
    .bind(&code)
    .execute(&mut *conn)
    .await;
    match taken {
        Ok(r) if r.rows_affected() == 1 => {}
        Ok(_) => {
            return Err(Error::conflict(
                "promo_used_up",
                "this promo code has been used up",
            ));
        }
        Err(e)
            if e.as_database_error()
                .is_some_and(|d| d.is_check_violation()) =>
        {
            return Err(Error::conflict(
                "promo_used_up",
                "this promo code has been used up",
            ));
        }
        Err(e) => return Err(e.into()),
    }
    let inserted = sqlx::query(
        "INSERT INTO promo_redemptions (code, user_id, created_at) VALUES ($1, $2, $3)",
    )
    .bind(&code)
    .bind(user_id)
    .bind(now)
    .execute(conn)
    .await;
    match inserted {
        Ok(_) => Ok(row.2),
        Err(e) if is_unique_violation(&e, "") => Err(Error::conflict(
            "promo_already_used",
            "you have already used this promo code",
        )),
        Err(e) => Err(e.into()),
    }
}
