//! Contabo's compute API (`shared/reference/contabo-openapi.yaml`): every call carries a bearer
//! token from the shared password grant and a fresh UUID v4 `x-request-id` (the spec requires
//! it); reads are retried on 429, 5xx and lost answers; writes never are (see
//! [`crate::create_once`] for creating safely).

mod auth;
mod wire;

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

pub use self::auth::Credentials;
use self::wire::{DataList, ImageWire, InstanceWire};
use crate::create_once::RetryPolicy;
use crate::error::{Error, Result};
use crate::provider::{BoxFuture, CreateInstance, Instance, Provider};

pub const AUTH_URL: &str =
    "https://auth.contabo.com/auth/realms/contabo/protocol/openid-connect/token";
pub const API_URL: &str = "https://api.contabo.com";
/// Pages read when listing by name; a unique name never needs more than one.
const MAX_PAGES: u32 = 20;

#[derive(Debug, Clone)]
pub struct ContaboSettings {
    pub auth_url: String,
    pub api_url: String,
    pub credentials: Credentials,
    /// Contabo's product (e.g. `V94`); prices and sizes change, so it is a setting.
    pub product_id: String,
    /// Contract period in months: 1, 3, 6 or 12.
    pub period_months: u32,
    /// Our region name → Contabo's (`us-east` → `US-east`).
    pub regions: BTreeMap<String, String>,
    /// A fixed image id; otherwise `image_name` is looked up once and remembered.
    pub image_id: Option<String>,
    pub image_name: String,
    pub request_timeout: Duration,
    /// For reads: how often and how patiently they are retried.
    pub read_retry: RetryPolicy,
}

impl ContaboSettings {
    pub fn new(credentials: Credentials) -> Self {
        Self {
            auth_url: AUTH_URL.into(),
            api_url: API_URL.into(),
            credentials,
            product_id: "V94".into(),
            period_months: 1,
            // The control plane's region names; Contabo has no Canada or Netherlands region.
            regions: [
                ("us-east", "US-east"),
                ("us-central", "US-central"),
                ("us-west", "US-west"),
                ("eu-de", "EU"),
                ("eu-uk", "UK"),
                ("asia-sg", "SIN"),
                ("asia-jp", "JPN"),
            ]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect(),
            image_id: None,
            image_name: "ubuntu-24.04".into(),
            request_timeout: Duration::from_secs(30),
            read_retry: RetryPolicy::default(),
        }
    }
}

#[derive(Debug)]
pub struct Contabo {
    http: reqwest::Client,
    settings: ContaboSettings,
    auth: auth::Auth,
    image_id: OnceCell<String>,
}

impl Contabo {
    pub fn new(settings: ContaboSettings) -> Result<Self> {
        if ![1, 3, 6, 12].contains(&settings.period_months) {
            return Err(Error::Config(
                "contabo period_months must be 1, 3, 6 or 12".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        let auth = auth::Auth::new(
            http.clone(),
            settings.auth_url.clone(),
            settings.credentials.clone(),
            settings.request_timeout,
        );
        Ok(Self {
            http,
            settings,
            auth,
            image_id: OnceCell::new(),
        })
    }

    /// One request; a refused token is replaced once. No retries otherwise.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        trace_id: Option<&str>,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.settings.api_url.trim_end_matches('/'));
        let mut renewed = false;
        loop {
            let token = self.auth.bearer().await?;
            let mut request = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(token.expose())
                .header("x-request-id", uuid::Uuid::new_v4().to_string())
                .query(query)
                .timeout(self.settings.request_timeout);
            if let Some(trace) = trace_id {
                request = request.header("x-trace-id", trace);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request
                .send()
                .await
                .map_err(|e| Error::Transport(format!("{method} {path}: {e}")))?;
            let status = response.status().as_u16();
            let retry_after = wire::retry_after(response.headers());
            let content_type = wire::content_type(response.headers());
            let text = response
                .text()
                .await
                .map_err(|e| Error::Transport(format!("{method} {path}: {e}")))?;
            match status {
                200..=299 if text.trim().is_empty() => return Ok(Value::Null),
                200..=299 => {
                    return serde_json::from_str(&text)
                        .map_err(|e| Error::Unreadable(format!("{method} {path}: {e}")));
                }
                401 if !renewed => {
                    self.auth.invalidate(&token).await;
                    renewed = true;
                }
                401 | 403 => {
                    return Err(Error::Auth(wire::error_message(
                        status,
                        &content_type,
                        &text,
                    )));
                }
                429 => return Err(Error::RateLimited { retry_after }),
                _ => {
                    return Err(Error::Api {
                        status,
                        message: wire::error_message(status, &content_type, &text),
                    });
                }
            }
        }
    }

    /// A read, retried while the failure is transient.
    async fn read(&self, path: &str, query: &[(&str, String)]) -> Result<Value> {
        let policy = self.settings.read_retry;
        let mut attempt = 0;
        loop {
            match self.call(Method::GET, path, query, None, None).await {
                Ok(value) => return Ok(value),
                Err(e) if e.is_transient() && attempt + 1 < policy.attempts => {
                    let pause = policy.pause(attempt, &e);
                    tracing::warn!(path, error = %e, ?pause, "contabo read failed; retrying");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn region(&self, ours: &str) -> Result<&str> {
        self.settings
            .regions
            .get(ours)
            .map(String::as_str)
            .ok_or_else(|| Error::Config(format!("no Contabo region is mapped for {ours}")))
    }

    /// The image to install: the configured id, or the standard image of `image_name`, looked
    /// up once.
    pub async fn image_id(&self) -> Result<String> {
        if let Some(id) = &self.settings.image_id {
            return Ok(id.clone());
        }
        self.image_id
            .get_or_try_init(|| async {
                let name = &self.settings.image_name;
                let value = self
                    .read(
                        "/v1/compute/images",
                        &[
                            ("standardImage", "true".into()),
                            ("name", name.clone()),
                            ("size", "100".into()),
                        ],
                    )
                    .await?;
                let images: DataList<ImageWire> = from_value(value, "image list")?;
                // The filter may match by substring: prefer the exact name.
                let image = images
                    .data
                    .iter()
                    .find(|i| &i.name == name)
                    .or_else(|| images.data.first())
                    .ok_or_else(|| {
                        Error::Config(format!("Contabo has no standard image {name}"))
                    })?;
                uuid::Uuid::parse_str(&image.image_id).map_err(|_| {
                    Error::Unreadable(format!("image id {} is not a UUID", image.image_id))
                })?;
                Ok(image.image_id.clone())
            })
            .await
            .cloned()
    }

    async fn create_instance(&self, request: &CreateInstance) -> Result<Instance> {
        let body = json!({
            "imageId": self.image_id().await?,
            "productId": self.settings.product_id,
            "region": self.region(&request.region)?,
            "period": self.settings.period_months,
            "displayName": request.display_name,
            "defaultUser": "root",
            "userData": request.user_data,
        });
        let value = self
            .call(
                Method::POST,
                "/v1/compute/instances",
                &[],
                Some(&body),
                request.trace_id.as_deref(),
            )
            .await?;
        let created: DataList<InstanceWire> = from_value(value, "created instance")?;
        let mut instance: Instance = created
            .data
            .into_iter()
            .next()
            .ok_or_else(|| Error::Unreadable("create answered without an instance".into()))?
            .into();
        // The create answer may leave the name out; it is the one we sent.
        if instance.display_name.is_empty() {
            instance.display_name.clone_from(&request.display_name);
        }
        Ok(instance)
    }

    async fn get_instance(&self, id: &str) -> Result<Instance> {
        let value = self
            .read(&format!("/v1/compute/instances/{}", instance_id(id)?), &[])
            .await?;
        let found: DataList<InstanceWire> = from_value(value, "instance")?;
        found
            .data
            .into_iter()
            .next()
            .map(Instance::from)
            .ok_or_else(|| Error::Unreadable(format!("instance {id} answered empty")))
    }

    async fn find_instance(&self, name: &str) -> Result<Option<Instance>> {
        let mut matches = Vec::new();
        let mut page = 1;
        loop {
            let value = self
                .read(
                    "/v1/compute/instances",
                    &[
                        ("displayName", name.to_owned()),
                        ("page", page.to_string()),
                        ("size", "100".into()),
                    ],
                )
                .await?;
            let list: DataList<InstanceWire> = from_value(value, "instance list")?;
            let pages = list.pagination.as_ref().map_or(1, |p| p.total_pages);
            // The filter may match by substring; only the exact name is ours.
            matches.extend(list.data.into_iter().filter(|i| i.display_name == name));
            if page >= pages.min(MAX_PAGES) {
                break;
            }
            page += 1;
        }
        match matches.len() {
            0 => Ok(None),
            1 => Ok(matches.pop().map(Instance::from)),
            count => Err(Error::Duplicates {
                name: name.to_owned(),
                count,
            }),
        }
    }
}

fn instance_id(id: &str) -> Result<i64> {
    id.parse()
        .map_err(|_| Error::Config(format!("{id} is not a Contabo instance id")))
}

fn from_value<T: serde::de::DeserializeOwned>(value: Value, what: &str) -> Result<T> {
    serde_json::from_value(value).map_err(|e| Error::Unreadable(format!("{what}: {e}")))
}

impl Provider for Contabo {
    fn create<'a>(&'a self, request: &'a CreateInstance) -> BoxFuture<'a, Result<Instance>> {
        Box::pin(self.create_instance(request))
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Instance>> {
        Box::pin(self.get_instance(id))
    }

    fn find_by_name<'a>(
        &'a self,
        display_name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Instance>>> {
        Box::pin(self.find_instance(display_name))
    }

    fn cancel<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let path = format!("/v1/compute/instances/{}/cancel", instance_id(id)?);
            self.call(Method::POST, &path, &[], Some(&json!({})), None)
                .await
                .map(drop)
        })
    }

    fn reinstall<'a>(&'a self, id: &'a str, user_data: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let path = format!("/v1/compute/instances/{}", instance_id(id)?);
            let body = json!({
                "imageId": self.image_id().await?,
                "defaultUser": "root",
                "userData": user_data,
            });
            self.call(Method::PUT, &path, &[], Some(&body), None)
                .await
                .map(drop)
        })
    }
}
