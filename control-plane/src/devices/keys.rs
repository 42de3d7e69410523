//! WireGuard keys: Curve25519, 32 bytes, standard base64 (44 characters).

use aws_lc_rs::agreement::{PrivateKey, X25519};
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::error::{Error, FieldError, Result};
use crate::secret::Secret;

/// Parses a client's public key; the canonical base64 form is what gets stored and sent to
/// nodes, so a key is never accepted in two spellings.
pub fn parse_public_key(field: &'static str, raw: &str) -> Result<String> {
    let raw = raw.trim();
    let invalid = |why: &str| {
        Error::Validation(vec![FieldError::new(
            field,
            "invalid",
            format!(
                "{why}: a WireGuard public key is 32 bytes in base64 (44 characters, ending in '=')"
            ),
        )])
    };
    let bytes = STANDARD.decode(raw).map_err(|_| invalid("not base64"))?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| invalid("wrong length"))?;
    if bytes == [0u8; 32] {
        return Err(invalid("the all-zero key is not a usable key"));
    }
    let canonical = STANDARD.encode(bytes);
    if canonical != raw {
        return Err(invalid("not in canonical form"));
    }
    Ok(canonical)
}

/// A fresh key pair generated for a client that sent no public key. The private key is
/// returned to the client once and never stored.
#[derive(Debug)]
pub struct GeneratedKeyPair {
    pub private_key: Secret,
    pub public_key: String,
}

pub fn generate_key_pair() -> Result<GeneratedKeyPair> {
    let mut private = [0u8; 32];
    SystemRandom::new()
        .fill(&mut private)
        .map_err(|_| Error::internal("the random number generator failed"))?;
    // Clamp as WireGuard does, so the stored form is what `wg genkey` would produce.
    private[0] &= 248;
    private[31] = (private[31] & 127) | 64;
    let key = PrivateKey::from_private_key(&X25519, &private)
        .map_err(|_| Error::internal("invalid X25519 private key"))?;
    let public = key
        .compute_public_key()
        .map_err(|_| Error::internal("computing the X25519 public key failed"))?;
    Ok(GeneratedKeyPair {
        private_key: Secret::new(STANDARD.encode(private)),
        public_key: STANDARD.encode(public.as_ref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_canonical_32_byte_keys() {
        let good = STANDARD.encode([7u8; 32]);
        assert_eq!(parse_public_key("k", &format!(" {good} ")).unwrap(), good);
        for bad in [
            "",
            "abc",
            &STANDARD.encode([7u8; 31]),
            &STANDARD.encode([0u8; 32]),
            "!!!!",
        ] {
            assert!(parse_public_key("k", bad).is_err(), "{bad}");
        }
        // A newline inside (config injection in the seed) is refused.
        let injected = format!("{}\nAllowedIPs = 0.0.0.0/0", &good[..20]);
        assert!(parse_public_key("k", &injected).is_err());
    }

    #[test]
    fn generated_pairs_match_the_rfc7748_vector() {
        // RFC 7748 section 6.1: Alice's private and public key.
        let private = hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let key = PrivateKey::from_private_key(&X25519, &private).unwrap();
        let public = key.compute_public_key().unwrap();
        assert_eq!(
            public.as_ref(),
            hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        let pair = generate_key_pair().unwrap();
        assert_eq!(
            parse_public_key("k", &pair.public_key).unwrap(),
            pair.public_key
        );
        assert_eq!(
            STANDARD.decode(pair.private_key.expose()).unwrap().len(),
            32
        );
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
