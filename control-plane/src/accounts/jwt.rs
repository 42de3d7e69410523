//! Access tokens: EdDSA-signed JWTs, 15 minutes by default, issuer and audience checked, the
//! algorithm pinned. Expiry is checked against the injected clock rather than the library's
//! wall clock, so tests can move time.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::error::{Error, Result};

const PEM_LABEL: &str = "PRIVATE KEY";

/// Tokens whose signature was checked, kept so a client's next requests skip the Ed25519
/// verification (about 50 µs each here); at most this many, about 200 bytes each.
const VERIFIED_CACHE: usize = 10_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user's UUID.
    pub sub: String,
    /// The login session (refresh-token family); revoking it ends this token too.
    pub sid: String,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
}

pub struct AccessTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    key_id: String,
    issuer: String,
    audience: String,
    ttl_secs: i64,
    validation: Validation,
    /// SHA-256 of a token whose signature, issuer and audience were valid, and its claims.
    /// Expiry is checked on every use; the session behind it is checked by the caller.
    verified: Mutex<HashMap<[u8; 32], Claims>>,
}

impl std::fmt::Debug for AccessTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessTokens")
            .field("key_id", &self.key_id)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

impl AccessTokens {
    pub fn new(pkcs8_der: &[u8], issuer: &str, audience: &str, ttl_secs: u64) -> Result<Self> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8_der).map_err(|_| {
            Error::Config("the JWT signing key is not an Ed25519 PKCS#8 key".into())
        })?;
        let public = pair.public_key().as_ref().to_vec();
        let key_id = crate::crypto::sha256_hex(&public)[..16].to_owned();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.algorithms = vec![Algorithm::EdDSA];
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        Ok(Self {
            encoding: EncodingKey::from_ed_der(pkcs8_der),
            decoding: DecodingKey::from_ed_der(&public),
            key_id,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            ttl_secs: i64::try_from(ttl_secs).unwrap_or(i64::MAX),
            validation,
            verified: Mutex::default(),
        })
    }

    pub fn ttl_secs(&self) -> i64 {
        self.ttl_secs
    }

    pub fn issue(&self, user_uuid: &str, session_id: &str, now: Millis) -> Result<String> {
        let iat = now / 1000;
        let claims = Claims {
            sub: user_uuid.to_owned(),
            sid: session_id.to_owned(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat,
            exp: iat.saturating_add(self.ttl_secs),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.key_id.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| Error::internal(format!("signing access token: {e}")))
    }

    /// Checks signature, algorithm, issuer, audience and expiry.
    pub fn verify(&self, token: &str, now: Millis) -> Result<Claims> {
        let digest = crate::crypto::sha256(token.as_bytes());
        let cached = self.cache().get(&digest).cloned();
        let claims = match cached {
            Some(claims) => claims,
            None => {
                let claims =
                    jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
                        .map_err(|_| Error::Unauthenticated("the access token is invalid"))?
                        .claims;
                self.remember(digest, &claims, now);
                claims
            }
        };
        if claims.exp <= now / 1000 {
            return Err(Error::Unauthenticated("the access token has expired"));
        }
        Ok(claims)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Claims>> {
        self.verified.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn remember(&self, digest: [u8; 32], claims: &Claims, now: Millis) {
        let mut cache = self.cache();
        if cache.len() >= VERIFIED_CACHE {
            cache.retain(|_, c| c.exp > now / 1000);
            if cache.len() >= VERIFIED_CACHE {
                // Every token still valid: start over rather than track use order.
                cache.clear();
            }
        }
        cache.insert(digest, claims.clone());
    }
}

/// Reads the signing key, or creates it (mode 0600) on first start. Concurrent first starts
/// are safe: only one `create_new` wins and the other reads its key.
pub fn load_or_create_signing_key(path: &Path) -> Result<Vec<u8>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            warn_if_readable_by_others(path);
            return parse_pem(&text).ok_or_else(|| {
                Error::Config(format!("{} is not a PEM private key", path.display()))
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::Config(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::fsutil::create_private_dir(dir)?;
    }
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| Error::internal("generating an Ed25519 key failed"))?;
    let pem = to_pem(pkcs8.as_ref());
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            file.write_all(pem.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))?;
            tracing::info!(path = %path.display(), "created a new JWT signing key");
            Ok(pkcs8.as_ref().to_vec())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_signing_key(path),
        Err(e) => Err(Error::Config(format!(
            "cannot create {}: {e}",
            path.display()
        ))),
    }
}

fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "the JWT signing key is readable by other users; chmod 600 it");
    }
}

fn to_pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {PEM_LABEL}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {PEM_LABEL}-----\n"));
    out
}

fn parse_pem(text: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {PEM_LABEL}-----");
    let end = format!("-----END {PEM_LABEL}-----");
    let body = text.split_once(&begin)?.1.split_once(&end)?.0;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD.decode(b64).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(dir: &Path) -> AccessTokens {
        let key = load_or_create_signing_key(&dir.join("k.pem")).unwrap();
        AccessTokens::new(&key, "iss", "aud", 900).unwrap()
    }

    #[test]
    fn key_file_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/k.pem");
        let a = load_or_create_signing_key(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = load_or_create_signing_key(&path).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn issues_and_verifies_with_expiry_on_the_given_clock() {
        let dir = tempfile::tempdir().unwrap();
        let t = tokens(dir.path());
        let now = 1_700_000_000_000;
        let jwt = t.issue("user-uuid", "sid", now).unwrap();
        let claims = t.verify(&jwt, now + 899_000).unwrap();
        assert_eq!(claims.sub, "user-uuid");
        assert_eq!(claims.sid, "sid");
        assert!(t.verify(&jwt, now + 900_000).is_err());
    }

    #[test]
    fn rejects_other_keys_audiences_and_algorithms() {
        let dir = tempfile::tempdir().unwrap();
        let t = tokens(dir.path());
        let now = 1_700_000_000_000;
        let jwt = t.issue("u", "s", now).unwrap();

        let other_key = load_or_create_signing_key(&dir.path().join("other.pem")).unwrap();
        let other = AccessTokens::new(&other_key, "iss", "aud", 900).unwrap();
        assert!(
            other.verify(&jwt, now).is_err(),
            "foreign signature accepted"
        );

        let key = load_or_create_signing_key(&dir.path().join("k.pem")).unwrap();
        let wrong_aud = AccessTokens::new(&key, "iss", "other-aud", 900).unwrap();
        assert!(
            wrong_aud.verify(&jwt, now).is_err(),
            "wrong audience accepted"
        );
        let wrong_iss = AccessTokens::new(&key, "other-iss", "aud", 900).unwrap();
        assert!(
            wrong_iss.verify(&jwt, now).is_err(),
            "wrong issuer accepted"
        );

        // An unsigned token claiming alg "none" must not pass.
        let mut parts = jwt.split('.');
        let _ = parts.next();
        let payload = parts.next().unwrap();
        let none_header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"alg":"none","typ":"JWT"}"#);
        assert!(t.verify(&format!("{none_header}.{payload}."), now).is_err());
    }

    #[test]
    fn a_remembered_token_still_expires_and_a_tampered_one_is_checked_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let t = tokens(dir.path());
        let now = 1_700_000_000_000;
        let jwt = t.issue("u", "s", now).unwrap();
        assert!(t.verify(&jwt, now).is_ok());
        assert!(t.verify(&jwt, now).is_ok(), "second use, from the cache");
        assert!(
            t.verify(&jwt, now + 900_000).is_err(),
            "expiry applies to a remembered token"
        );
        // Same header and signature, another subject: a different token, so verified again.
        let mut parts: Vec<&str> = jwt.split('.').collect();
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
            r#"{{"sub":"admin","sid":"s","iss":"iss","aud":"aud","iat":0,"exp":{}}}"#,
            now / 1000 + 900
        ));
        parts[1] = &forged;
        assert!(t.verify(&parts.join("."), now).is_err());
    }

    #[test]
    fn the_cache_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let t = tokens(dir.path());
        let now = 1_700_000_000_000;
        for i in 0..VERIFIED_CACHE + 10 {
            let jwt = t.issue("u", &format!("s{i}"), now).unwrap();
            t.verify(&jwt, now).unwrap();
        }
        assert!(t.cache().len() <= VERIFIED_CACHE);
    }
}
