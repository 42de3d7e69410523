//! Agent settings: built-in defaults, then a TOML file, then `TRUEVAULT_AGENT_<NAME>`
//! environment variables.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const ENV_PREFIX: &str = "TRUEVAULT_AGENT_";

/// Which WireGuard implementation drives the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// The kernel module where it exists, otherwise userspace.
    Auto,
    Kernel,
    Userspace,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The control plane's gRPC endpoint, e.g. `https://control.example.com:8443`.
    pub control_plane_url: String,
    /// The name the control plane's TLS certificate must carry (default: the URL's host).
    pub control_plane_name: Option<String>,
    /// The control plane's CA certificate (PEM): the only CA this agent trusts.
    pub ca_file: PathBuf,
    /// Keys, certificate and the applied peer state (mode 0700).
    pub state_dir: PathBuf,
    /// The single-use enrollment token; deleted after a successful enrollment. Default:
    /// `$CREDENTIALS_DIRECTORY/enrollment-token` (systemd `LoadCredential`).
    pub token_file: Option<PathBuf>,
    pub interface: String,
    /// Overrides the listen port the control plane assigned.
    pub listen_port: Option<u16>,
    /// Overrides the tunnel addresses the control plane assigned (e.g. `10.8.0.1/16`).
    pub addresses: Vec<String>,
    pub mtu: u32,
    pub backend: BackendChoice,
    pub stats_interval_secs: u64,
    /// How often the interface's real state is compared with the applied one.
    pub reconcile_interval_secs: u64,
    /// `/healthz` and `/metrics`, on a local address.
    pub health_listen: SocketAddr,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            control_plane_url: "https://127.0.0.1:8443".into(),
            control_plane_name: None,
            ca_file: PathBuf::from("/etc/truevault/ca.pem"),
            state_dir: PathBuf::from("/var/lib/truevault-agent"),
            token_file: None,
            interface: "wg0".into(),
            listen_port: None,
            addresses: Vec::new(),
            mtu: 1420,
            backend: BackendChoice::Auto,
            stats_interval_secs: 30,
            reconcile_interval_secs: 60,
            health_listen: SocketAddr::from(([127, 0, 0, 1], 9586)),
        }
    }
}

impl AgentConfig {
    /// Reads `file` (if any) and the `TRUEVAULT_AGENT_*` variables of this process.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        let env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        Self::load_from(file, &env)
    }

    pub fn load_from(file: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Self> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
                toml::from_str::<toml::Table>(&text)
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?
            }
            None => toml::Table::new(),
        };
        for (name, raw) in env {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if key == "CONFIG" || key == "LOG" {
                continue;
            }
            let key = key.to_ascii_lowercase();
            table.insert(key.clone(), env_value(&key, raw));
        }
        let config: Self = table.try_into().map_err(|e: toml::de::Error| {
            Error::Config(format!(
                "{} (settings are also read from {ENV_PREFIX}<NAME> variables)",
                e.message()
            ))
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        if !self.control_plane_url.starts_with("https://") {
            return Err(Error::Config(
                "control_plane_url must start with https:// (the channel is mTLS)".into(),
            ));
        }
        let name_ok = !self.interface.is_empty()
            && self.interface.len() <= 15
            && self
                .interface
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(Error::Config(
                "interface must be 1 to 15 letters, digits, '-' or '_'".into(),
            ));
        }
        if !(576..=9000).contains(&self.mtu) {
            return Err(Error::Config("mtu must be between 576 and 9000".into()));
        }
        if !(1..=300).contains(&self.stats_interval_secs) {
            return Err(Error::Config(
                "stats_interval_secs must be between 1 and 300".into(),
            ));
        }
        if self.reconcile_interval_secs == 0 {
            return Err(Error::Config(
                "reconcile_interval_secs must be positive".into(),
            ));
        }
        Ok(())
    }

    pub fn stats_interval(&self) -> Duration {
        Duration::from_secs(self.stats_interval_secs)
    }

    pub fn reconcile_interval(&self) -> Duration {
        Duration::from_secs(self.reconcile_interval_secs)
    }

    /// The TLS name of the control plane: configured, or the URL's host.
    pub fn control_plane_name(&self) -> String {
        if let Some(name) = &self.control_plane_name {
            return name.clone();
        }
        let rest = self
            .control_plane_url
            .trim_start_matches("https://")
            .split('/')
            .next()
            .unwrap_or_default();
        let host = match rest.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => rest.rsplit_once(':').map_or(rest, |(h, _)| h),
        };
        host.to_owned()
    }

    pub fn token_file(&self) -> Option<PathBuf> {
        self.token_file.clone().or_else(|| {
            std::env::var_os("CREDENTIALS_DIRECTORY")
                .map(|dir| PathBuf::from(dir).join("enrollment-token"))
        })
    }
}

/// An environment value as the TOML type the setting has: numbers stay numbers, lists are
/// comma-separated, everything else is a string.
fn env_value(key: &str, raw: &str) -> toml::Value {
    const NUMBERS: &[&str] = &[
        "listen_port",
        "mtu",
        "stats_interval_secs",
        "reconcile_interval_secs",
    ];
    if NUMBERS.contains(&key)
        && let Ok(n) = raw.trim().parse::<i64>()
    {
        return toml::Value::Integer(n);
    }
    if key == "addresses" {
        return toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        );
    }
    toml::Value::String(raw.to_owned())
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
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            "control_plane_url = \"https://cp.example.com:8443\"\ninterface = \"wg1\"\nmtu = 1400\n",
        )
        .unwrap();
        let config = AgentConfig::load_from(
            Some(&file),
            &env(&[
                ("TRUEVAULT_AGENT_MTU", "1380"),
                ("TRUEVAULT_AGENT_BACKEND", "userspace"),
                ("TRUEVAULT_AGENT_ADDRESSES", "10.8.0.1/16, fd00::1/64"),
            ]),
        )
        .unwrap();
        assert_eq!(config.interface, "wg1");
        assert_eq!(config.mtu, 1380);
        assert_eq!(config.backend, BackendChoice::Userspace);
        assert_eq!(config.addresses, ["10.8.0.1/16", "fd00::1/64"]);
        assert_eq!(config.control_plane_name(), "cp.example.com");
    }

    #[test]
    fn bad_values_are_refused_with_their_name() {
        for (key, value) in [
            ("TRUEVAULT_AGENT_CONTROL_PLANE_URL", "http://plain"),
            ("TRUEVAULT_AGENT_INTERFACE", "this-name-is-far-too-long"),
            ("TRUEVAULT_AGENT_MTU", "10"),
            ("TRUEVAULT_AGENT_BACKEND", "magic"),
            ("TRUEVAULT_AGENT_NO_SUCH", "1"),
        ] {
            let err = AgentConfig::load_from(None, &env(&[(key, value)])).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{key}: {err}");
        }
    }
}

#[cfg(test)]
mod deploy_example {
    use super::*;

    /// The example shipped in deploy/ stays a valid configuration.
    #[test]
    fn the_deploy_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.example.toml");
        let config = AgentConfig::load_from(Some(&path), &BTreeMap::new()).unwrap();
        assert_eq!(config.interface, "wg0");
        assert_eq!(config.backend, BackendChoice::Auto);
    }
}
