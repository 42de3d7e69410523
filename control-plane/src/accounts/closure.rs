//! A customer closes their own account. Access ends at once (every peer leaves its node, every
//! session ends), everything that identifies the person is removed or overwritten, and the
//! address is free to register again (without a second trial: `trial_claims`). Payments and
//! invoices stay, linked to the anonymous row, because accounting must keep them.
//!
//! Refused while a PayPal subscription still bills (cancel it first, so nobody is charged for
//! a closed account) and for operator accounts (another operator removes those).

use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::audit::{self, Actor};
use crate::automation::outbox::{self, OutgoingMail};
use crate::devices::{self, addresses, entitlement};
use crate::error::{Error, FieldError, Result};
use crate::secret::Secret;

use super::{Accounts, Caller, ClientInfo, sessions, trial_claims};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseInput {
    /// The account's password, to confirm.
    #[schema(value_type = Option<String>)]
    pub password: Option<Secret>,
}

impl Accounts {
    pub async fn close_account(
        &self,
        caller: &Caller,
        input: CloseInput,
        client: &ClientInfo,
    ) -> Result<()> {
        let Some(password) = input.password.filter(|p| !p.expose().is_empty()) else {
            return Err(Error::Validation(vec![FieldError::new(
                "password",
                "required",
                "Confirm with your password",
            )]));
        };
        self.check_password(caller.user_id, &password, client)
            .await?;
        let user_id = caller.user_id;
        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        entitlement::lock_users(tx.conn(), &[user_id]).await?;
        // A password reset that landed meanwhile ended this session: it may not close.
        if !sessions::is_live(tx.conn(), &caller.session_id, now).await? {
            return Err(Error::Unauthenticated(
                "this session has ended; sign in again",
            ));
        }
        let (email, first_name, role, status): (String, String, String, String) =
            sqlx::query_as("SELECT email, first_name, role, status FROM users WHERE id = $1")
                .bind(user_id)
                .fetch_one(tx.conn())
                .await?;
        if status == "deleted" {
            return Err(Error::Unauthenticated("this account is closed"));
        }
        if role == "admin" {
            return Err(Error::conflict(
                "operator_account",
                "an operator account is closed by another operator",
            ));
        }
        let billing = crate::billing::subscription::billing(tx.conn(), user_id).await?;
        if billing.is_some_and(|b| !b.cancelling) {
            return Err(Error::conflict(
                "subscription_active",
                "your subscription still bills: cancel it first, then close the account",
            ));
        }

        // Access ends: peers leave their nodes, then the devices and their addresses go.
        devices::disable_all_for_users(tx.conn(), &[user_id], "account_closed", now).await?;
        let hosts: Vec<(i64, Option<i64>)> =
            sqlx::query_as("DELETE FROM devices WHERE user_id = $1 RETURNING server_id, host")
                .bind(user_id)
                .fetch_all(tx.conn())
                .await?;
        for (server_id, host) in hosts {
            if let Some(host) = host {
                let at = now + self.policy.address_quarantine;
                addresses::release(tx.conn(), server_id, host, at).await?;
            }
        }
        crate::dedicated::release::request(tx.conn(), user_id, now).await?;
        for statement in [
            "UPDATE subscriptions SET status = 'cancelled', updated_at = $2
             WHERE user_id = $1 AND status IN ('trial', 'active', 'past_due', 'suspended')",
            // Payment tasks carry on: a duplicate subscription must still be cancelled and
            // its payments refunded after the account is gone.
            "UPDATE scheduled_tasks SET status = 'cancelled', updated_at = $2
             WHERE user_id = $1 AND status = 'pending' AND workflow <> 'payments'",
            "UPDATE users SET email = 'closed-' || uuid || '@closed.invalid', password_hash = '!',
                              first_name = '', last_name = '', status = 'deleted', vip_tier = NULL,
                              email_verified_at = NULL, failed_logins = 0,
                              failed_login_first_at = NULL, locked_until = NULL,
                              dedicated_server_id = NULL, updated_at = $2
             WHERE id = $1",
        ] {
            sqlx::query(statement)
                .bind(user_id)
                .bind(now)
                .execute(tx.conn())
                .await?;
        }
        // What identifies the person goes: sessions (their addresses and browsers, and every
        // token with them), unsent mail, links, the scanner token, identities; mail already
        // sent keeps neither the address nor the content (only that it was sent).
        for statement in [
            "DELETE FROM auth_sessions WHERE user_id = $1",
            "DELETE FROM mail_outbox WHERE user_id = $1 AND status = 'pending'",
            "UPDATE mail_outbox SET to_address = (SELECT email FROM users WHERE id = $1),
                                    context = '{}', last_error = NULL
             WHERE user_id = $1",
            "DELETE FROM one_time_tokens WHERE user_id = $1",
            "DELETE FROM scanner_tokens WHERE user_id = $1",
            "DELETE FROM regional_identities WHERE user_id = $1",
        ] {
            sqlx::query(statement)
                .bind(user_id)
                .execute(tx.conn())
                .await?;
        }
        // The address had its trial (or, registered again after an earlier closure, had it
        // before): it starts no new one.
        trial_claims::record(tx.conn(), &email, now).await?;
        outbox::enqueue(
            tx.conn(),
            OutgoingMail {
                to: &email,
                user_id: None,
                template: "account_closed",
                context: json!({ "first_name": first_name }),
                dedupe_key: None,
            },
            now,
        )
        .await?;
        audit::record(
            tx.conn(),
            audit::Entry {
                actor: Actor::User(user_id),
                action: "account.closed",
                target_type: Some("user"),
                target_id: Some(user_id.to_string()),
                details: json!({}),
                ip: client.ip,
            },
            now,
        )
        .await?;
        tx.commit().await
    }
}
