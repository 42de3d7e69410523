//! Argon2id password hashing, off the async threads and with a cap on how many run at once, so
//! a burst of logins queues instead of starving every other request of CPU.

use std::sync::Arc;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::error::{Error, Result};
use crate::secret::Secret;

#[derive(Debug, Clone)]
pub struct PasswordHasher {
    params: Params,
    permits: Arc<Semaphore>,
    /// A real hash of a random password: unknown emails are verified against it so they take
    /// as long as a wrong password for a known email.
    dummy_hash: Arc<str>,
}

impl PasswordHasher {
    pub fn new(
        memory_kib: u32,
        iterations: u32,
        parallelism: u32,
        concurrency: usize,
    ) -> Result<Self> {
        let params = Params::new(memory_kib, iterations, parallelism, None)
            .map_err(|e| Error::Config(format!("argon2 parameters: {e}")))?;
        let concurrency = if concurrency == 0 {
            std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
        } else {
            concurrency
        };
        let dummy = crate::crypto::random_token(16);
        let dummy_hash = hash_blocking(&params, dummy.expose())?;
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(concurrency)),
            dummy_hash: dummy_hash.into(),
        })
    }

    pub async fn hash(&self, password: &Secret) -> Result<String> {
        let params = self.params.clone();
        let password = password.clone();
        self.run(move || hash_blocking(&params, password.expose()))
            .await
    }

    /// Verifies against a stored PHC string. The stored string's own parameters are used, so
    /// hashes made before a parameter change keep working.
    pub async fn verify(&self, password: &Secret, stored: &str) -> Result<bool> {
        let password = password.clone();
        let stored = stored.to_owned();
        self.run(move || Ok(verify_blocking(password.expose(), &stored)))
            .await
    }

    /// Spends the same work as a real verification and always fails.
    pub async fn verify_dummy(&self, password: &Secret) -> Result<bool> {
        let dummy = Arc::clone(&self.dummy_hash);
        let password = password.clone();
        self.run(move || {
            let _ = verify_blocking(password.expose(), &dummy);
            Ok(false)
        })
        .await
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Error::internal("password hasher closed"))?;
        tokio::task::spawn_blocking(job)
            .await
            .map_err(|e| Error::internal(format!("password hashing task failed: {e}")))?
    }
}

fn argon2(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

fn hash_blocking(params: &Params, password: &str) -> Result<String> {
    argon2(params)
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| Error::internal(format!("argon2: {e}")))
}

fn verify_blocking(password: &str, stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_reject() {
        let hasher = PasswordHasher::new(1024, 1, 1, 2).unwrap();
        let pw = Secret::new("correct horse battery staple");
        let hash = hasher.hash(&pw).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{hash}");
        assert!(hasher.verify(&pw, &hash).await.unwrap());
        assert!(!hasher.verify(&Secret::new("wrong"), &hash).await.unwrap());
        assert!(!hasher.verify(&pw, "not a phc string").await.unwrap());
        assert!(!hasher.verify_dummy(&pw).await.unwrap());
    }
}
