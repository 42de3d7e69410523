//! The connection to the control plane: mTLS channels that trust only the configured CA,
//! enrollment with a single-use token, and certificate renewal.

use std::path::Path;
use std::time::{Duration, SystemTime};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use truevault_proto::v1::node_service_client::NodeServiceClient;
use truevault_proto::v1::{EnrollRequest, RenewRequest};

use crate::config::AgentConfig;
use crate::error::{Error, Result};
use crate::keys::{self, Secret, StateDir};
use crate::state::{InterfacePlan, Store};

pub type Client = NodeServiceClient<Channel>;

/// Renew when less than this much of the certificate's life is left (it lasts 30 days).
const RENEW_BEFORE: Duration = Duration::from_secs(10 * 24 * 3600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub const CERT_FILE: &str = "node.crt";
/// A renewal's new key and certificate, written beside the current ones before they replace
/// them (see [`install_renewed`]).
const NEXT_KEY_FILE: &str = "node.key.next";
const NEXT_CERT_FILE: &str = "node.crt.next";

/// A channel to the control plane, with the node's certificate when `with_identity`.
pub async fn connect(config: &AgentConfig, dir: &StateDir, with_identity: bool) -> Result<Client> {
    let ca =
        std::fs::read_to_string(&config.ca_file).map_err(|e| Error::file(&config.ca_file, e))?;
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(config.control_plane_name());
    if with_identity {
        finish_install(dir)?;
        let cert = dir.read(CERT_FILE)?.ok_or(Error::NotEnrolled)?;
        let key = dir.read(keys::TLS_KEY_FILE)?.ok_or(Error::NotEnrolled)?;
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(config.control_plane_url.clone())
        .map_err(|e| Error::Config(format!("control_plane_url: {e}")))?
        .tls_config(tls)?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect()
        .await?;
    // Snapshots are chunked far below the default limit; this only bounds a misbehaving peer.
    Ok(NodeServiceClient::new(channel).max_decoding_message_size(16 * 1024 * 1024))
}

pub fn is_enrolled(dir: &StateDir) -> bool {
    dir.path(CERT_FILE).exists()
}

/// Trades the token in `token_file` for a client certificate; deletes the token afterwards.
pub async fn enroll(
    config: &AgentConfig,
    dir: &StateDir,
    store: &Store,
    token_file: &Path,
    wg_key: &Secret,
) -> Result<()> {
    let token = std::fs::read_to_string(token_file).map_err(|e| Error::file(token_file, e))?;
    let token = Secret::from(token.trim().to_owned());
    let tls_key = dir.tls_key()?;
    let mut client = connect(config, dir, false).await?;
    let response = client
        .enroll(EnrollRequest {
            token: token.expose().to_owned(),
            csr_der: keys::csr(&tls_key)?,
            wireguard_public_key: keys::public_key(wg_key)?,
            hostname: hostname(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
        })
        .await
        .map_err(|status| Error::Enrollment(status.message().to_owned()))?
        .into_inner();
    dir.write_private(
        CERT_FILE,
        keys::pem("CERTIFICATE", &response.certificate_der).as_bytes(),
    )?;
    dir.write_private(
        "ca.pem",
        keys::pem("CERTIFICATE", &response.ca_certificate_der).as_bytes(),
    )?;
    let plan = response.interface.map(|i| InterfacePlan {
        addresses: i.addresses,
        listen_port: u16::try_from(i.listen_port).unwrap_or(51820),
        mtu: i.mtu,
    });
    store.update(|a| {
        a.node_id = response.node_id.clone();
        a.certificate_not_after_ms = response.not_after_ms;
        if let Some(plan) = plan {
            a.interface = plan;
        }
    });
    store.flush()?;
    // Single use: keep it from lying around (a systemd credential is read-only; that is fine).
    if let Err(e) = std::fs::remove_file(token_file) {
        tracing::info!(error = %e, file = %token_file.display(), "could not delete the used token file");
    }
    tracing::info!(node_id = %response.node_id, "enrolled");
    Ok(())
}

/// Renews the client certificate when it is close to expiry, for a new TLS key made here: a
/// key that ever leaked stops being of use when its certificate expires.
pub async fn renew_if_due(config: &AgentConfig, dir: &StateDir, store: &Store) -> Result<()> {
    let not_after = store.with(|a| a.certificate_not_after_ms);
    let due = i64::try_from(RENEW_BEFORE.as_millis()).unwrap_or(i64::MAX);
    if not_after - due > now_ms() {
        return Ok(());
    }
    let mut client = connect(config, dir, true).await?;
    let key = keys::new_tls_key()?;
    let response = client
        .renew(RenewRequest {
            csr_der: keys::csr(&key)?,
        })
        .await?
        .into_inner();
    install_renewed(dir, &key, &response.certificate_der)?;
    store.update(|a| a.certificate_not_after_ms = response.not_after_ms);
    store.flush()?;
    tracing::info!(
        not_after_ms = response.not_after_ms,
        "certificate renewed with a new key"
    );
    Ok(())
}

/// Puts a renewed key and certificate in place. Two files cannot be replaced at once, so the
/// pair is first written beside the current one, the certificate last: from then on the
/// renewal counts, and [`finish_install`] moves both in (again after a crash, on the next
/// connection).
fn install_renewed(dir: &StateDir, key: &rcgen::KeyPair, cert_der: &[u8]) -> Result<()> {
    dir.write_private(NEXT_KEY_FILE, key.serialize_pem().as_bytes())?;
    dir.write_private(
        NEXT_CERT_FILE,
        keys::pem("CERTIFICATE", cert_der).as_bytes(),
    )?;
    finish_install(dir)
}

/// Completes a renewal whose new certificate was written, or drops a new key without one.
fn finish_install(dir: &StateDir) -> Result<()> {
    if dir.path(NEXT_CERT_FILE).exists() {
        // The key first: a crash after it leaves the new certificate waiting, found again here.
        dir.rename(NEXT_KEY_FILE, keys::TLS_KEY_FILE)?;
        dir.rename(NEXT_CERT_FILE, CERT_FILE)
    } else {
        dir.remove(NEXT_KEY_FILE)
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (tempfile::TempDir, StateDir) {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        state.write_private(keys::TLS_KEY_FILE, b"key A").unwrap();
        state.write_private(CERT_FILE, b"cert A").unwrap();
        (dir, state)
    }

    fn current(state: &StateDir) -> (String, String) {
        (
            state.read(keys::TLS_KEY_FILE).unwrap().unwrap(),
            state.read(CERT_FILE).unwrap().unwrap(),
        )
    }

    #[test]
    fn a_new_key_without_its_certificate_is_dropped() {
        let (_dir, state) = state();
        state.write_private(NEXT_KEY_FILE, b"key B").unwrap();
        finish_install(&state).unwrap();
        assert_eq!(current(&state), ("key A".into(), "cert A".into()));
        assert!(!state.path(NEXT_KEY_FILE).exists());
    }

    #[test]
    fn a_renewal_interrupted_between_the_two_files_is_completed() {
        let (_dir, state) = state();
        state.write_private(NEXT_KEY_FILE, b"key B").unwrap();
        state.write_private(NEXT_CERT_FILE, b"cert B").unwrap();
        // The crash came after the key was moved in, before the certificate.
        state.rename(NEXT_KEY_FILE, keys::TLS_KEY_FILE).unwrap();
        finish_install(&state).unwrap();
        assert_eq!(current(&state), ("key B".into(), "cert B".into()));
        // Nothing pending: a second look changes nothing.
        finish_install(&state).unwrap();
        assert_eq!(current(&state), ("key B".into(), "cert B".into()));
    }
}
