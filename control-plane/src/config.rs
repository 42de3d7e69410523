//! Settings: built-in defaults, then a TOML file, then `TRUEVAULT_<NAME>` environment variables,
//! then command-line flags. Every setting has an environment variable of its own name. Secrets
//! come from the environment or from files (`<name>_file`), never from a default.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::secret::Secret;

pub const ENV_PREFIX: &str = "TRUEVAULT_";

/// Environment variables under the prefix that are not settings.
const NOT_SETTINGS: &[&str] = &["CONFIG", "LOG", "ADMIN_PASSWORD"];

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Holds the SQLite database, signing keys and (without SMTP) mail files.
    pub data_dir: PathBuf,
    pub http_listen: SocketAddr,
    pub grpc_listen: SocketAddr,
    /// `postgres://...` for PostgreSQL; unset means SQLite in the data directory.
    #[serde(skip_serializing)]
    pub database_url: Option<Secret>,
    pub database_url_file: Option<PathBuf>,
    pub database_max_connections: u32,
    /// Base URL of the customer dashboard, used in mails (verification and reset links).
    pub public_url: String,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    /// PKCS#8 Ed25519 key (PEM). Default: `<data_dir>/jwt-signing-key.pem`, created on first start.
    pub jwt_signing_key_file: Option<PathBuf>,
    pub access_token_ttl_secs: u64,
    pub refresh_token_ttl_days: u64,
    pub trial_days: u64,
    pub email_verification_ttl_hours: u64,
    pub password_reset_ttl_minutes: u64,
    /// Argon2id cost. The defaults are OWASP's recommendation (19 MiB, 2 passes, 1 lane).
    pub password_hash_memory_kib: u32,
    pub password_hash_iterations: u32,
    pub password_hash_parallelism: u32,
    /// Hashes computed at once; 0 means one per CPU core. Excess requests queue.
    pub password_hash_concurrency: usize,
    pub login_max_failures: u32,
    pub login_failure_window_secs: u64,
    pub login_lockout_secs: u64,
    /// Per client address on the /auth routes: a bucket of `burst` refilled per minute.
    pub auth_rate_limit_burst: u32,
    pub auth_rate_limit_per_minute: u32,
    /// Peers whose `X-Forwarded-For` is believed (reverse proxies in front of the API).
    pub trusted_proxies: Vec<IpAddr>,
    pub max_body_bytes: usize,
    pub request_timeout_secs: u64,
    /// Outgoing mail. Without `smtp_host`, mails are written as `.eml` files under
    /// `<data_dir>/mail/`.
    pub smtp_host: Option<String>,
    /// Default: 587 for `starttls`, 465 for `tls`, 25 for `none`.
    pub smtp_port: Option<u16>,
    pub smtp_security: SmtpSecurity,
    pub smtp_username: Option<String>,
    #[serde(skip_serializing)]
    pub smtp_password: Option<Secret>,
    pub smtp_password_file: Option<PathBuf>,
    pub smtp_timeout_secs: u64,
    pub mail_from: String,
    /// Delivery attempts before a mail is marked failed.
    pub mail_max_attempts: u32,
    /// Run the automation workers (tasks and mail) inside `serve`.
    pub workers_enabled: bool,
    pub worker_poll_interval_ms: u64,
    /// How long a worker owns a claimed task or mail before another may take it over.
    pub task_lease_secs: u64,
    /// The trial-expiry sweep runs once per interval across all replicas (the seed's cron).
    pub trial_sweep_interval_secs: u64,
    /// Regions in order of preference; a trial's one regional identity is in the first.
    pub regions: Vec<String>,
    /// DNS servers written into client configs.
    pub client_dns: Vec<String>,
    /// How long a released tunnel address rests before another device may get it.
    pub address_quarantine_hours: u64,
    /// Lifetime of a node enrollment token.
    pub enrollment_token_ttl_minutes: u64,
    /// Names (DNS or IP) in the gRPC listener's certificate: what agents dial.
    pub grpc_server_names: Vec<String>,
    /// Node sessions are woken by commits; this slower re-read of every connected node's
    /// revision catches what no wake-up announced (another process's writes, a dropped
    /// PostgreSQL listener), and marks silent nodes offline.
    pub node_resync_interval_secs: u64,
    /// PayPal's API (the sandbox by default). Payments are off until `paypal_client_id` is set;
    /// then `paypal_client_secret` (or `_file`), `paypal_webhook_id` and `paypal_plans` are needed.
    pub paypal_base_url: String,
    pub paypal_client_id: Option<String>,
    #[serde(skip_serializing)]
    pub paypal_client_secret: Option<Secret>,
    pub paypal_client_secret_file: Option<PathBuf>,
    pub paypal_webhook_id: Option<String>,
    /// Our plan code → PayPal's billing plan id, e.g. `{ personal = "P-5ML4271244454362WXNWU5NQ" }`.
    pub paypal_plans: BTreeMap<String, String>,
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS (port 587); the default.
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption: only for a relay on the same host.
    None,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            database_url: None,
            database_url_file: None,
            database_max_connections: 16,
            public_url: "http://127.0.0.1:8080".to_owned(),
            jwt_issuer: "truevault-control".to_owned(),
            jwt_audience: "truevault-api".to_owned(),
            jwt_signing_key_file: None,
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_days: 30,
            trial_days: 7,
            email_verification_ttl_hours: 24,
            password_reset_ttl_minutes: 60,
            password_hash_memory_kib: 19 * 1024,
            password_hash_iterations: 2,
            password_hash_parallelism: 1,
            password_hash_concurrency: 0,
            login_max_failures: 5,
            login_failure_window_secs: 15 * 60,
            login_lockout_secs: 15 * 60,
            auth_rate_limit_burst: 20,
            auth_rate_limit_per_minute: 30,
            trusted_proxies: Vec::new(),
            max_body_bytes: 64 * 1024,
            request_timeout_secs: 30,
            smtp_host: None,
            smtp_port: None,
            smtp_security: SmtpSecurity::Starttls,
            smtp_username: None,
            smtp_password: None,
            smtp_password_file: None,
            smtp_timeout_secs: 30,
            mail_from: "TrueVault VPN <no-reply@truevault.invalid>".to_owned(),
            mail_max_attempts: 10,
            workers_enabled: true,
            worker_poll_interval_ms: 1000,
            task_lease_secs: 300,
            trial_sweep_interval_secs: 300,
            regions: [
                "us-east",
                "us-central",
                "us-west",
                "ca-east",
                "ca-west",
                "eu-de",
                "eu-uk",
                "eu-nl",
                "asia-sg",
                "asia-jp",
            ]
            .map(str::to_owned)
            .to_vec(),
            client_dns: vec!["1.1.1.1".to_owned(), "1.0.0.1".to_owned()],
            address_quarantine_hours: 24,
            enrollment_token_ttl_minutes: 60,
            grpc_server_names: vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            node_resync_interval_secs: 5,
            paypal_base_url: "https://api-m.sandbox.paypal.com".to_owned(),
            paypal_client_id: None,
            paypal_client_secret: None,
            paypal_client_secret_file: None,
            paypal_webhook_id: None,
            paypal_plans: BTreeMap::new(),
        }
    }
}

/// Flags given on the command line; they win over the file and the environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub http_listen: Option<SocketAddr>,
    pub grpc_listen: Option<SocketAddr>,
    pub database_url: Option<String>,
}

impl Settings {
    /// Loads the effective settings from a file (optional), the process environment and flags.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self> {
        let env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        Self::load_from(file, &env, overrides)
    }

    /// As [`Settings::load`], with the environment passed in (so tests need not mutate it).
    pub fn load_from(
        file: Option<&Path>,
        env: &BTreeMap<String, String>,
        overrides: &Overrides,
    ) -> Result<Self> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::Config(format!("cannot read config file {}: {e}", path.display()))
                })?;
                toml::from_str::<toml::Table>(&text)
                    .map_err(|e| Error::Config(format!("config file {}: {e}", path.display())))?
            }
            None => toml::Table::new(),
        };
        let defaults = toml::Table::try_from(Settings::default())
            .map_err(|e| Error::Config(format!("serializing defaults: {e}")))?;
        for (name, raw) in env {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if NOT_SETTINGS.contains(&key) || key.starts_with("TEST_") {
                continue;
            }
            let key = key.to_ascii_lowercase();
            let value = env_value(defaults.get(&key), raw);
            table.insert(key, value);
        }
        if let Some(v) = &overrides.data_dir {
            table.insert("data_dir".into(), path_value(v)?);
        }
        if let Some(v) = overrides.http_listen {
            table.insert("http_listen".into(), toml::Value::String(v.to_string()));
        }
        if let Some(v) = overrides.grpc_listen {
            table.insert("grpc_listen".into(), toml::Value::String(v.to_string()));
        }
        if let Some(v) = &overrides.database_url {
            table.insert("database_url".into(), toml::Value::String(v.clone()));
        }
        let mut settings: Settings = table.try_into().map_err(|e: toml::de::Error| {
            Error::Config(format!(
                "{} (settings are also read from {ENV_PREFIX}<NAME> variables)",
                e.message()
            ))
        })?;
        settings.resolve_secret_files()?;
        settings.validate()?;
        Ok(settings)
    }

    fn resolve_secret_files(&mut self) -> Result<()> {
        read_secret_file(
            "database_url",
            &mut self.database_url,
            self.database_url_file.as_deref(),
        )?;
        read_secret_file(
            "smtp_password",
            &mut self.smtp_password,
            self.smtp_password_file.as_deref(),
        )?;
        read_secret_file(
            "paypal_client_secret",
            &mut self.paypal_client_secret,
            self.paypal_client_secret_file.as_deref(),
        )
    }

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
        if self.max_body_bytes < 1024 {
            problems.push("max_body_bytes must be at least 1024".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(problems.join("; ")))
        }
    }

    pub fn jwt_key_path(&self) -> PathBuf {
        self.jwt_signing_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("jwt-signing-key.pem"))
    }

    /// The database to use: the configured URL, else SQLite in the data directory.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.expose().to_owned(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("truevault.db").display()
            ),
        }
    }

    /// The effective settings as TOML, with secrets left out, for `config check`.
    pub fn to_redacted_toml(&self) -> Result<String> {
        let mut text = toml::to_string_pretty(self).map_err(|e| Error::Config(e.to_string()))?;
        if self.database_url.is_some() {
            text.push_str("# database_url = <set, redacted>\n");
        }
        if self.smtp_password.is_some() {
            text.push_str("# smtp_password = <set, redacted>\n");
        }
        if self.paypal_client_secret.is_some() {
            text.push_str("# paypal_client_secret = <set, redacted>\n");
        }
        Ok(text)
    }
}

fn read_secret_file(name: &str, value: &mut Option<Secret>, file: Option<&Path>) -> Result<()> {
    let Some(path) = file else { return Ok(()) };
    if value.is_some() {
        return Err(Error::Config(format!(
            "set {name} or {name}_file, not both"
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
    *value = Some(Secret::new(text.trim_end_matches(['\r', '\n'])));
    Ok(())
}

/// Types an environment value after the default of the same setting: a string setting stays a
/// string even when it looks like a number; lists also accept `a,b,c`.
fn env_value(default: Option<&toml::Value>, raw: &str) -> toml::Value {
    match default {
        Some(toml::Value::String(_)) => toml::Value::String(raw.to_owned()),
        Some(toml::Value::Array(_)) if !raw.trim_start().starts_with('[') => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
        _ => parse_scalar(raw).unwrap_or_else(|| toml::Value::String(raw.to_owned())),
    }
}

fn parse_scalar(raw: &str) -> Option<toml::Value> {
    let doc: toml::Table = toml::from_str(&format!("v = {raw}")).ok()?;
    doc.get("v").cloned()
}

fn path_value(path: &Path) -> Result<toml::Value> {
    path.to_str()
        .map(|s| toml::Value::String(s.to_owned()))
        .ok_or_else(|| Error::Config(format!("path is not UTF-8: {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_need_no_file() {
        let s = Settings::load_from(None, &BTreeMap::new(), &Overrides::default()).unwrap();
        assert_eq!(s.http_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.grpc_listen.to_string(), "127.0.0.1:8443");
        assert!(s.database_url().starts_with("sqlite://./data/truevault.db"));
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "trial_days = 3\njwt_issuer = \"file\"\nlogin_max_failures = 9\n",
        )
        .unwrap();
        let e = env(&[
            ("TRUEVAULT_TRIAL_DAYS", "5"),
            ("TRUEVAULT_JWT_ISSUER", "12345"),
            ("TRUEVAULT_TRUSTED_PROXIES", "10.1.2.3, ::1"),
            ("TRUEVAULT_HTTP_LISTEN", "127.0.0.1:1"),
            ("TRUEVAULT_LOG", "debug"),
            ("TRUEVAULT_TEST_POSTGRES_URL", "x"),
        ]);
        let flags = Overrides {
            http_listen: Some("127.0.0.1:2".parse().unwrap()),
            ..Overrides::default()
        };
        let s = Settings::load_from(Some(&file), &e, &flags).unwrap();
        assert_eq!(s.trial_days, 5);
        assert_eq!(s.jwt_issuer, "12345");
        assert_eq!(s.login_max_failures, 9);
        assert_eq!(s.trusted_proxies.len(), 2);
        assert_eq!(s.http_listen.to_string(), "127.0.0.1:2");
    }

    #[test]
    fn unknown_and_invalid_settings_are_errors() {
        let err = Settings::load_from(
            None,
            &env(&[("TRUEVAULT_NO_SUCH_THING", "1")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no_such_thing"), "{err}");
        let err = Settings::load_from(
            None,
            &env(&[("TRUEVAULT_TRIAL_DAYS", "0")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("trial_days"), "{err}");
        let err = Settings::load_from(
            None,
            &env(&[("TRUEVAULT_PAYPAL_CLIENT_ID", "AZ123")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("paypal_client_secret"), "{err}");
        let s = Settings::load_from(
            None,
            &env(&[
                ("TRUEVAULT_PAYPAL_CLIENT_ID", "AZ123"),
                ("TRUEVAULT_PAYPAL_CLIENT_SECRET", "shh"),
                ("TRUEVAULT_PAYPAL_WEBHOOK_ID", "WH-1"),
                ("TRUEVAULT_PAYPAL_PLANS", "{ personal = \"P-1\" }"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            s.paypal_plans.get("personal").map(String::as_str),
            Some("P-1")
        );
        assert!(!s.to_redacted_toml().unwrap().contains("shh"));
    }

    #[test]
    fn database_url_from_file_is_secret() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("db");
        std::fs::write(&file, "postgres://u:pw@db/x\n").unwrap();
        let s = Settings::load_from(
            None,
            &env(&[("TRUEVAULT_DATABASE_URL_FILE", file.to_str().unwrap())]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.database_url(), "postgres://u:pw@db/x");
        assert!(!format!("{s:?}").contains("pw@"));
        assert!(!s.to_redacted_toml().unwrap().contains("pw@"));
    }
}
