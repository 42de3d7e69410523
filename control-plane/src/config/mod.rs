//! Settings: built-in defaults, then a TOML file, then `TRUEVAULT_<NAME>` environment variables,
//! then command-line flags. Every setting has an environment variable of its own name. Secrets
//! come from the environment or from files (`<name>_file`), never from a default.

mod checks;

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
    /// `/metrics` answers a client on this machine (loopback) or one that presents this token
    /// as `Authorization: Bearer ...` (e.g. Prometheus's `bearer_token_file`); anyone else
    /// gets 403. Also `metrics_token_file`.
    #[serde(skip_serializing)]
    pub metrics_token: Option<Secret>,
    pub metrics_token_file: Option<PathBuf>,
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
    /// Where new dedicated servers are created when the pool has none: `contabo`, or unset
    /// (orders then wait for an operator to add a pool server in their region).
    pub provisioning_provider: Option<String>,
    /// The gRPC URL new nodes dial (`https://control.example.com:8443`): it goes into their
    /// cloud-init, so it must be reachable from the internet and named in `grpc_server_names`.
    pub provisioning_grpc_url: Option<String>,
    /// The name the agent expects in the control plane's certificate, when the URL's host is
    /// not it.
    pub provisioning_grpc_name: Option<String>,
    /// The agent binary a new node downloads, and its SHA-256 (hex), checked before it runs.
    pub agent_download_url: Option<String>,
    pub agent_sha256: Option<String>,
    /// How often a booting order is looked at (Contabo: 10 to 15 s).
    pub provisioning_poll_secs: u64,
    /// From payment to a connected agent; past it the order fails and the operator is told.
    pub provisioning_deadline_minutes: u64,
    /// After a create whose answer was lost, how long its name must stay unknown at the
    /// provider before a second create may be sent.
    pub provisioning_settle_secs: u64,
    /// The first pause between create attempts (it doubles up to a minute).
    pub provisioning_retry_pause_ms: u64,
    /// Who is mailed about what only a person can fix: a failed order, a task that gave up
    /// (unset: it is only logged).
    pub operator_email: Option<String>,
    /// Contabo's API (`provisioning_provider = "contabo"`): the password grant's client and
    /// API user, the product, contract period and image (looked up by name unless an id is
    /// given), and our region names mapped to Contabo's (empty: the built-in map).
    pub contabo_auth_url: String,
    pub contabo_api_url: String,
    pub contabo_client_id: Option<String>,
    #[serde(skip_serializing)]
    pub contabo_client_secret: Option<Secret>,
    pub contabo_client_secret_file: Option<PathBuf>,
    pub contabo_api_user: Option<String>,
    #[serde(skip_serializing)]
    pub contabo_api_password: Option<Secret>,
    pub contabo_api_password_file: Option<PathBuf>,
    pub contabo_product_id: String,
    pub contabo_period_months: u32,
    pub contabo_image_id: Option<String>,
    pub contabo_image_name: String,
    pub contabo_regions: BTreeMap<String, String>,
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
            metrics_token: None,
            metrics_token_file: None,
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
            provisioning_provider: None,
            provisioning_grpc_url: None,
            provisioning_grpc_name: None,
            agent_download_url: None,
            agent_sha256: None,
            provisioning_poll_secs: 12,
            provisioning_deadline_minutes: 30,
            provisioning_settle_secs: 120,
            provisioning_retry_pause_ms: 5000,
            operator_email: None,
            contabo_auth_url: truevault_provisioning::contabo::AUTH_URL.to_owned(),
            contabo_api_url: truevault_provisioning::contabo::API_URL.to_owned(),
            contabo_client_id: None,
            contabo_client_secret: None,
            contabo_client_secret_file: None,
            contabo_api_user: None,
            contabo_api_password: None,
            contabo_api_password_file: None,
            contabo_product_id: "V94".to_owned(),
            contabo_period_months: 1,
            contabo_image_id: None,
            contabo_image_name: "ubuntu-24.04".to_owned(),
            contabo_regions: BTreeMap::new(),
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
        )?;
        read_secret_file(
            "contabo_client_secret",
            &mut self.contabo_client_secret,
            self.contabo_client_secret_file.as_deref(),
        )?;
        read_secret_file(
            "contabo_api_password",
            &mut self.contabo_api_password,
            self.contabo_api_password_file.as_deref(),
        )?;
        read_secret_file(
            "metrics_token",
            &mut self.metrics_token,
            self.metrics_token_file.as_deref(),
        )
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
        for (name, set) in [
            ("paypal_client_secret", self.paypal_client_secret.is_some()),
            (
                "contabo_client_secret",
                self.contabo_client_secret.is_some(),
            ),
            ("contabo_api_password", self.contabo_api_password.is_some()),
            ("metrics_token", self.metrics_token.is_some()),
        ] {
            if set {
                text.push_str(&format!("# {name} = <set, redacted>\n"));
            }
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
mod tests;
