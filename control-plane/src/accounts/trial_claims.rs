//! One free trial per address, across accounts: a closed account leaves the SHA-256 of its
//! address behind (`trial_claims`), and registering that address again starts no trial. Live
//! accounts need no entry: their address is unique among users.
//!
//! A hash of an address can be matched against a guessed address; it is the least that lets
//! the check work, and it names nobody on its own.

use sqlx::AnyConnection;

use crate::clock::Millis;
use crate::crypto::sha256_hex;
use crate::error::Result;

fn key(email: &str) -> String {
    sha256_hex(format!("truevault-trial:{}", email.trim().to_ascii_lowercase()).as_bytes())
}

/// Whether the address already had its trial (under an account since closed).
pub(super) async fn used(conn: &mut AnyConnection, email: &str) -> Result<bool> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT email_hash FROM trial_claims WHERE email_hash = $1")
            .bind(key(email))
            .fetch_optional(conn)
            .await?;
    Ok(row.is_some())
}

/// Records that the address had its trial (as its account closes).
pub(super) async fn record(conn: &mut AnyConnection, email: &str, now: Millis) -> Result<()> {
    sqlx::query(
        "INSERT INTO trial_claims (email_hash, claimed_at) VALUES ($1, $2)
         ON CONFLICT (email_hash) DO NOTHING",
    )
    .bind(key(email))
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}
