//! Contabo's OAuth2 password grant (Keycloak), one token shared by every caller and refreshed
//! before it runs out. Contabo does not accept `client_credentials`.

use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Mutex;

use super::wire;
use crate::error::{Error, Result};
use crate::secret::Secret;

#[derive(Debug, Clone)]
pub struct Credentials {
    pub client_id: String,
    pub client_secret: Secret,
    /// The API user's email.
    pub api_user: String,
    /// The separate API password (not the customer-panel one).
    pub api_password: Secret,
}

#[derive(Debug)]
struct Token {
    access: Secret,
    refresh_at: Instant,
}

#[derive(Debug)]
pub struct Auth {
    http: reqwest::Client,
    url: String,
    credentials: Credentials,
    timeout: Duration,
    current: Mutex<Option<Token>>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl Auth {
    pub fn new(
        http: reqwest::Client,
        url: String,
        credentials: Credentials,
        timeout: Duration,
    ) -> Self {
        Self {
            http,
            url,
            credentials,
            timeout,
            current: Mutex::new(None),
        }
    }

    /// A valid access token; at most one request for a new one at a time (callers wait on the
    /// lock and then share its result).
    pub async fn bearer(&self) -> Result<Secret> {
        let mut current = self.current.lock().await;
        if let Some(token) = current.as_ref().filter(|t| Instant::now() < t.refresh_at) {
            return Ok(token.access.clone());
        }
        let token = self.fetch().await?;
        let access = token.access.clone();
        *current = Some(token);
        Ok(access)
    }

    /// Forgets `used` after the API refused it (a newer token is kept).
    pub async fn invalidate(&self, used: &Secret) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|t| &t.access == used) {
            *current = None;
        }
    }

    async fn fetch(&self) -> Result<Token> {
        let form = [
            ("grant_type", "password"),
            ("client_id", self.credentials.client_id.as_str()),
            ("client_secret", self.credentials.client_secret.expose()),
            ("username", self.credentials.api_user.as_str()),
            ("password", self.credentials.api_password.expose()),
        ];
        let response = self
            .http
            .post(&self.url)
            .form(&form)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| Error::Transport(format!("token request: {e}")))?;
        let status = response.status();
        let retry_after = wire::retry_after(response.headers());
        let content_type = wire::content_type(response.headers());
        let body = response
            .text()
            .await
            .map_err(|e| Error::Transport(format!("token answer: {e}")))?;
        match status.as_u16() {
            200..=299 => {}
            429 => return Err(Error::RateLimited { retry_after }),
            400 | 401 | 403 => {
                return Err(Error::Auth(wire::error_message(
                    status.as_u16(),
                    &content_type,
                    &body,
                )));
            }
            code => {
                return Err(Error::Api {
                    status: code,
                    message: wire::error_message(code, &content_type, &body),
                });
            }
        }
        let answer: TokenAnswer = serde_json::from_str(&body)
            .map_err(|e| Error::Unreadable(format!("token answer: {e}")))?;
        // The lifetime is not documented: trust `expires_in`, and renew well before it ends.
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(300));
        let margin = (lifetime / 5).max(Duration::from_secs(30)).min(lifetime);
        Ok(Token {
            access: Secret::new(answer.access_token),
            refresh_at: Instant::now() + (lifetime - margin),
        })
    }
}
