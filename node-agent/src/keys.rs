//! The node's key material, generated on the node and never sent anywhere: the WireGuard
//! private key and the TLS key whose CSR the control plane signs. Files are written
//! atomically with mode 0600 in a 0700 state directory.

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use defguard_wireguard_rs::key::Key;

use crate::error::{Error, Result};

/// A private key held in memory; `Debug` never prints it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The files of a state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating, mode 0700) the state directory.
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|e| Error::file(root, e))?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn read(&self, name: &str) -> Result<Option<String>> {
        let path = self.path(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::file(path, e)),
        }
    }

    /// Replaces `name` atomically (write, fsync, rename), readable by the owner only.
    pub fn write_private(&self, name: &str, contents: &[u8]) -> Result<()> {
        let path = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(contents)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| Error::file(&path, e))
    }

    /// Renames `from` to `to` inside the directory (atomic), if `from` exists.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        match std::fs::rename(self.path(from), self.path(to)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::file(self.path(to), e))
            }
            _ => Ok(()),
        }
    }

    /// Removes `name`, if it exists.
    pub fn remove(&self, name: &str) -> Result<()> {
        match std::fs::remove_file(self.path(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::file(self.path(name), e))
            }
            _ => Ok(()),
        }
    }

    /// The WireGuard private key, generated on first use.
    pub fn wireguard_key(&self) -> Result<Secret> {
        if let Some(text) = self.read("wireguard.key")? {
            let text = text.trim().to_owned();
            parse_key(&text)?;
            return Ok(Secret(text));
        }
        let key = base64::engine::general_purpose::STANDARD.encode(Key::generate().as_slice());
        self.write_private("wireguard.key", key.as_bytes())?;
        Ok(Secret(key))
    }

    /// The TLS key (PEM), generated on first use.
    pub fn tls_key(&self) -> Result<rcgen::KeyPair> {
        if let Some(pem) = self.read(TLS_KEY_FILE)? {
            return rcgen::KeyPair::from_pem(&pem).map_err(|e| Error::Keys(e.to_string()));
        }
        let key = new_tls_key()?;
        self.write_private(TLS_KEY_FILE, key.serialize_pem().as_bytes())?;
        Ok(key)
    }
}

/// The node's TLS key file (PEM), beside its certificate (`control::CERT_FILE`).
pub const TLS_KEY_FILE: &str = "node.key";

/// A fresh TLS key pair (made on the node; only its public half ever leaves).
pub fn new_tls_key() -> Result<rcgen::KeyPair> {
    rcgen::KeyPair::generate().map_err(|e| Error::Keys(e.to_string()))
}

pub fn parse_key(base64_key: &str) -> Result<Key> {
    Key::try_from(base64_key).map_err(|_| Error::Keys("not a base64 WireGuard key".into()))
}

/// The public key (base64) of a base64 private key.
pub fn public_key(private: &Secret) -> Result<String> {
    let key = parse_key(private.expose())?;
    Ok(base64::engine::general_purpose::STANDARD.encode(key.public_key().as_slice()))
}

/// A CSR (DER) for `key`; the control plane takes only the public key from it.
pub fn csr(key: &rcgen::KeyPair) -> Result<Vec<u8>> {
    let request = rcgen::CertificateParams::default()
        .serialize_request(key)
        .map_err(|e| Error::Keys(e.to_string()))?;
    Ok(request.der().to_vec())
}

pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn keys_are_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let wg = state.wireguard_key().unwrap();
        assert_eq!(state.wireguard_key().unwrap().expose(), wg.expose());
        assert_eq!(public_key(&wg).unwrap().len(), 44);
        let tls = state.tls_key().unwrap();
        assert_eq!(
            state.tls_key().unwrap().public_key_pem(),
            tls.public_key_pem()
        );
        for name in ["wireguard.key", "node.key"] {
            let mode = std::fs::metadata(state.path(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let mode = std::fs::metadata(dir.path().join("state"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(!format!("{wg:?}").contains(wg.expose()));
        assert!(!csr(&tls).unwrap().is_empty());
    }
}
