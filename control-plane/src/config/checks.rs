//! Whether loaded settings make sense together: every problem found is reported at once, in
//! one `Error::Config`, before anything starts.

use std::net::IpAddr;

use crate::error::{Error, Result};

use super::Settings;

impl Settings {
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if !(self.public_url.starts_with("http://") || self.public_url.starts_with("https://")) {
            problems.push("public_url must start with http:// or https://".to_owned());
        }
        if let Some(url) = &self.database_url {
            let url = url.expose();
            if !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"))
            {
                problems.push("database_url must be a postgres:// or sqlite: URL".to_owned());
            }
        }
        if self.password_hash_memory_kib < 8 * self.password_hash_parallelism.max(1) {
            problems.push("password_hash_memory_kib is too small for the parallelism".to_owned());
        }
        for (name, value) in [
            (
                "password_hash_iterations",
                u64::from(self.password_hash_iterations),
            ),
            (
                "password_hash_parallelism",
                u64::from(self.password_hash_parallelism),
            ),
            ("access_token_ttl_secs", self.access_token_ttl_secs),
            ("refresh_token_ttl_days", self.refresh_token_ttl_days),
            ("trial_days", self.trial_days),
            ("login_max_failures", u64::from(self.login_max_failures)),
            (
                "auth_rate_limit_burst",
                u64::from(self.auth_rate_limit_burst),
            ),
            (
                "auth_rate_limit_per_minute",
                u64::from(self.auth_rate_limit_per_minute),
            ),
            (
                "database_max_connections",
                u64::from(self.database_max_connections),
            ),
        ] {
            if value == 0 {
                problems.push(format!("{name} must be greater than 0"));
            }
        }
        if self.client_dns.iter().any(|d| d.parse::<IpAddr>().is_err()) {
            problems.push("client_dns must list IP addresses".to_owned());
        }
        if self.regions.is_empty() || self.regions.iter().any(|r| r.trim().is_empty()) {
            problems.push("regions must list at least one region, none empty".to_owned());
        }
        if self.mail_from.parse::<lettre::message::Mailbox>().is_err() {
            problems.push(
                "mail_from must be a mailbox such as \"TrueVault <no-reply@example.com>\""
                    .to_owned(),
            );
        }
        if self.paypal_client_id.is_some()
            && (self.paypal_client_secret.is_none() || self.paypal_webhook_id.is_none())
        {
            problems.push(
                "paypal_client_id needs paypal_client_secret (or _file) and paypal_webhook_id"
                    .to_owned(),
            );
        }
        self.validate_provisioning(&mut problems);
        if self.max_body_bytes < 1024 {
            problems.push("max_body_bytes must be at least 1024".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(problems.join("; ")))
        }
    }

    fn validate_provisioning(&self, problems: &mut Vec<String>) {
        if self
            .operator_email
            .as_deref()
            .is_some_and(|m| m.parse::<lettre::Address>().is_err())
        {
            problems.push("operator_email must be an email address".to_owned());
        }
        if self.provisioning_poll_secs == 0 || self.provisioning_deadline_minutes == 0 {
            problems.push(
                "provisioning_poll_secs and provisioning_deadline_minutes must be greater than 0"
                    .to_owned(),
            );
        }
        let Some(provider) = self.provisioning_provider.as_deref() else {
            return;
        };
        if provider != "contabo" {
            problems.push("provisioning_provider must be \"contabo\" (or unset)".to_owned());
            return;
        }
        let mut missing = Vec::new();
        for (name, set) in [
            (
                "provisioning_grpc_url",
                self.provisioning_grpc_url.is_some(),
            ),
            ("agent_download_url", self.agent_download_url.is_some()),
            ("agent_sha256", self.agent_sha256.is_some()),
            ("contabo_client_id", self.contabo_client_id.is_some()),
            (
                "contabo_client_secret",
                self.contabo_client_secret.is_some(),
            ),
            ("contabo_api_user", self.contabo_api_user.is_some()),
            ("contabo_api_password", self.contabo_api_password.is_some()),
        ] {
            if !set {
                missing.push(name);
            }
        }
        if !missing.is_empty() {
            problems.push(format!(
                "provisioning_provider = \"contabo\" needs {}",
                missing.join(", ")
            ));
        }
        if self
            .provisioning_grpc_url
            .as_deref()
            .is_some_and(|u| !u.starts_with("https://"))
        {
            problems.push("provisioning_grpc_url must start with https://".to_owned());
        }
        if self
            .agent_sha256
            .as_deref()
            .is_some_and(|h| h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()))
        {
            problems.push("agent_sha256 must be 64 hex digits".to_owned());
        }
        if ![1, 3, 6, 12].contains(&self.contabo_period_months) {
            problems.push("contabo_period_months must be 1, 3, 6 or 12".to_owned());
        }
    }
}
