//! The node certificate authority: created on first start (its key 0600 in the data
//! directory), it signs short-lived client certificates for enrolled nodes from the public key
//! of their CSR alone (the identity is ours to set: the server id), and the gRPC listener's
//! own certificate.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use time::OffsetDateTime;

use crate::clock::{DAY, Millis};
use crate::crypto::random_bytes;
use crate::error::{Error, FieldError, Result};
use crate::secret::Secret;

/// How long a node certificate is valid; agents renew well before.
pub const NODE_CERT_VALIDITY: Millis = 30 * DAY;
const CA_KEY_FILE: &str = "node-ca.key";
const CA_CERT_FILE: &str = "node-ca.pem";

pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    ca_der: Vec<u8>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

/// A certificate issued to a node.
#[derive(Debug)]
pub struct NodeCertificate {
    pub der: Vec<u8>,
    /// Lower-case hex, as stored in `node_certificates`.
    pub serial: String,
    pub not_after: Millis,
}

/// The gRPC listener's certificate and key (PEM), signed by this CA.
pub struct ServerIdentity {
    pub cert_pem: String,
    pub key_pem: Secret,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity").finish_non_exhaustive()
    }
}

fn config(e: impl std::fmt::Display) -> Error {
    Error::Config(format!("node CA: {e}"))
}

fn at(ms: Millis) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(ms / 1000).map_err(Error::internal)
}

impl CertificateAuthority {
    /// Loads the CA from `dir`, or creates it there on first start.
    pub fn load_or_create(dir: &Path, now: Millis) -> Result<Self> {
        let key_path = dir.join(CA_KEY_FILE);
        let cert_path = dir.join(CA_CERT_FILE);
        if key_path.exists() && cert_path.exists() {
            let key = KeyPair::from_pem(&std::fs::read_to_string(&key_path).map_err(config)?)
                .map_err(config)?;
            let ca_pem = std::fs::read_to_string(&cert_path).map_err(config)?;
            let issuer = Issuer::from_ca_cert_pem(&ca_pem, key).map_err(config)?;
            let ca_der =
                pem_body(&ca_pem).ok_or_else(|| config("node-ca.pem is not a PEM certificate"))?;
            return Ok(Self {
                issuer,
                ca_pem,
                ca_der,
            });
        }
        crate::fsutil::create_private_dir(dir)?;
        let key = KeyPair::generate().map_err(config)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name("TrueVault node CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = at(now - DAY)?;
        params.not_after = at(now + 3650 * DAY)?;
        let cert = params.self_signed(&key).map_err(config)?;
        write_private(&key_path, &key.serialize_pem())?;
        std::fs::write(&cert_path, cert.pem()).map_err(config)?;
        tracing::info!(path = %cert_path.display(), "created the node certificate authority");
        Ok(Self {
            ca_pem: cert.pem(),
            ca_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        })
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// Signs a client certificate for `node_id` with the CSR's public key. The CSR's signature
    /// is verified (the node holds the key); everything else in it is ignored.
    pub fn sign_node(&self, csr_der: &[u8], node_id: &str, now: Millis) -> Result<NodeCertificate> {
        let csr =
            CertificateSigningRequestParams::from_der(&csr_der.to_vec().into()).map_err(|_| {
                Error::Validation(vec![FieldError::new(
                    "csr_der",
                    "invalid",
                    "not a valid, signed PKCS#10 request",
                )])
            })?;
        // 126 random bits. The top bit clear keeps the DER integer positive, and the next one
        // set keeps the first byte non-zero: DER drops leading zero bytes, and a shorter
        // encoding would no longer match the serial recorded here (1 node in 128 could never
        // authenticate).
        let mut serial_bytes = random_bytes(16);
        serial_bytes[0] = (serial_bytes[0] & 0x7f) | 0x40;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&format!("node:{node_id}"));
        params.serial_number = Some(SerialNumber::from_slice(&serial_bytes));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = at(now - 5 * 60 * 1000)?;
        let not_after = now + NODE_CERT_VALIDITY;
        params.not_after = at(not_after)?;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(Error::internal)?;
        Ok(NodeCertificate {
            der: cert.der().to_vec(),
            serial: hex(&serial_bytes),
            not_after,
        })
    }

    /// A certificate for the gRPC listener, valid for `names` (DNS names or IP addresses).
    pub fn server_identity(&self, names: &[String], now: Millis) -> Result<ServerIdentity> {
        let key = KeyPair::generate().map_err(config)?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(config)?;
        params.distinguished_name = name("TrueVault control plane");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = at(now - DAY)?;
        params.not_after = at(now + 365 * DAY)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(config)?;
        Ok(ServerIdentity {
            cert_pem: cert.pem(),
            key_pem: Secret::new(key.serialize_pem()),
        })
    }
}

/// Node id and serial from a client certificate this CA issued (the TLS layer has verified the
/// chain already).
pub fn identify(cert_der: &[u8]) -> Option<(String, String)> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    let node_id = cn.strip_prefix("node:")?.to_owned();
    Some((node_id, hex(cert.raw_serial())))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn pem_body(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| config(format!("{}: {e}", path.display())))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_issued_serial_is_the_one_read_back_from_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path(), 0).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap();
        // With 127 random bits, about 1 serial in 128 started with a zero byte; 600 signings
        // would all but surely hit one.
        for _ in 0..600 {
            let cert = ca.sign_node(csr.der(), "7", 0).unwrap();
            let (node, serial) = identify(&cert.der).unwrap();
            assert_eq!((node.as_str(), serial), ("7", cert.serial));
        }
    }
}
