//! A stand-in for Contabo's auth and compute API: a real HTTP server on loopback that checks
//! requests the way Contabo's spec does (password grant, bearer token, a UUID `x-request-id`
//! on every call, JSON types and enums of a create) and answers in Contabo's shapes, with
//! faults to inject: 429 with `Retry-After`, 500, an HTML page, a slow answer, and a create
//! that happens while its answer is lost.

// Handlers return their refusals as ready responses; boxing them would only add noise here.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::{Value, json};

use self::routes::{error, is_request_id};

mod routes;

pub const CLIENT_ID: &str = "fake-client";
pub const CLIENT_SECRET: &str = "fake-client-secret";
pub const API_USER: &str = "api@example.com";
pub const API_PASSWORD: &str = "fake-api-password";
pub const UBUNTU_IMAGE: &str = "d64d5c6c-9dda-4e38-8174-0ee282474d8a";

/// What the next matching request gets instead of a plain answer.
#[derive(Debug, Clone)]
pub enum Fault {
    /// 429, optionally with `Retry-After` seconds; nothing is done.
    RateLimited(Option<u64>),
    /// 500 with Contabo's JSON error; `done` says whether the work happened first.
    ServerError { done: bool },
    /// 502 with an HTML page (a gateway in front of the API); `done` as above.
    Html { done: bool },
    /// The work happens after this pause, then the normal answer.
    Slow(Duration),
    /// The work happens, then the connection is cut before the body is sent.
    Lost,
}

/// Which requests a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Route {
    Token,
    Create,
    List,
    Get,
}

#[derive(Debug, Clone)]
pub struct FakeInstance {
    pub id: i64,
    pub display_name: String,
    pub region: String,
    pub product_id: String,
    pub image_id: String,
    pub user_data: String,
    pub created_at: Instant,
    pub cancelled: bool,
    pub reinstalls: u32,
    /// Set by [`FakeContabo::boot`]: its public address (kept across reinstalls, as Contabo
    /// does); without it, one made from its id.
    pub ipv4: Option<Ipv4Addr>,
    /// Set by [`FakeContabo::boot`], cleared by a reinstall: running, whatever the boot time.
    pub booted: bool,
    /// Set by [`FakeContabo::set_status`]: a status Contabo may report (`error`,
    /// `pending_payment`, ...), with its `errorMessage`.
    pub forced_status: Option<(String, String)>,
}

impl FakeInstance {
    /// The files its cloud-init writes (`write_files`: path and content), as a machine booting
    /// it would write them. Reads the document as rendered by `cloud_init`, whose contents are
    /// JSON-quoted strings on one line.
    pub fn written_files(&self) -> Vec<(String, String)> {
        let mut files = Vec::new();
        let mut path = None;
        for line in self.user_data.lines() {
            let line = line.trim();
            if let Some(p) = line.strip_prefix("- path: ") {
                path = Some(p.trim().to_owned());
            } else if let (Some(content), Some(p)) = (line.strip_prefix("content: "), &path) {
                if let Ok(text) = serde_json::from_str::<String>(content) {
                    files.push((p.clone(), text));
                }
                path = None;
            }
        }
        files
    }

    /// One written file's content.
    pub fn written_file(&self, path: &str) -> Option<String> {
        self.written_files()
            .into_iter()
            .find(|(p, _)| p == path)
            .map(|(_, c)| c)
    }
}

#[derive(Debug, Default)]
struct World {
    instances: Vec<FakeInstance>,
    next_id: i64,
    tokens: BTreeMap<String, Instant>,
    faults: BTreeMap<Route, VecDeque<Fault>>,
    request_ids: HashSet<String>,
    calls: BTreeMap<Route, u32>,
    image_lookups: u32,
    token_grants: u32,
}

#[derive(Debug, Clone)]
pub struct FakeContabo {
    world: Arc<Mutex<World>>,
    pub addr: SocketAddr,
    /// How long a new instance stays `provisioning` before it runs with an IP.
    boot_time: Duration,
    token_lifetime: Duration,
}

impl FakeContabo {
    /// Starts the server on an ephemeral loopback port (it lives as long as the runtime).
    pub async fn start(boot_time: Duration, token_lifetime: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Contabo");
        let addr = listener.local_addr().expect("its address");
        let fake = Self {
            world: Arc::new(Mutex::new(World {
                next_id: 200_100,
                ..World::default()
            })),
            addr,
            boot_time,
            token_lifetime,
        };
        let app = Router::new()
            .route("/auth/token", post(routes::token))
            .route("/v1/compute/images", get(routes::images))
            .route(
                "/v1/compute/instances",
                get(routes::list).post(routes::create),
            )
            .route(
                "/v1/compute/instances/{id}",
                get(routes::one).put(routes::reinstall),
            )
            .route("/v1/compute/instances/{id}/cancel", post(routes::cancel))
            .with_state(fake.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        fake
    }

    pub fn auth_url(&self) -> String {
        format!("http://{}/auth/token", self.addr)
    }

    pub fn api_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues faults for the next requests on `route`, in order.
    pub fn inject(&self, route: Route, faults: impl IntoIterator<Item = Fault>) {
        self.world().faults.entry(route).or_default().extend(faults);
    }

    pub fn instances(&self) -> Vec<FakeInstance> {
        self.world().instances.clone()
    }

    pub fn named(&self, name: &str) -> Vec<FakeInstance> {
        self.instances()
            .into_iter()
            .filter(|i| i.display_name == name)
            .collect()
    }

    pub fn calls(&self, route: Route) -> u32 {
        self.world().calls.get(&route).copied().unwrap_or(0)
    }

    pub fn image_lookups(&self) -> u32 {
        self.world().image_lookups
    }

    pub fn token_grants(&self) -> u32 {
        self.world().token_grants
    }

    /// Makes every issued token invalid (as if they had expired early).
    pub fn revoke_tokens(&self) {
        self.world().tokens.clear();
    }

    /// Adds an instance as if made by hand in Contabo's panel (for duplicate-name cases).
    pub fn add_instance(&self, name: &str) -> i64 {
        let mut world = self.world();
        let id = world.next_id;
        world.next_id += 1;
        world.instances.push(FakeInstance {
            id,
            display_name: name.to_owned(),
            region: "EU".into(),
            product_id: "V94".into(),
            image_id: UBUNTU_IMAGE.into(),
            user_data: String::new(),
            created_at: Instant::now(),
            cancelled: false,
            reinstalls: 0,
            ipv4: None,
            booted: false,
            forced_status: None,
        });
        id
    }

    /// The instance finishes booting now with `ipv4` as its public address (a test that
    /// runs the node itself gives the address its namespace has).
    pub fn boot(&self, id: i64, ipv4: Ipv4Addr) {
        if let Some(i) = self.world().instances.iter_mut().find(|i| i.id == id) {
            i.ipv4 = Some(ipv4);
            i.booted = true;
        }
    }

    /// From now on the instance reports `status` with `message` (`error`, say).
    pub fn set_status(&self, id: i64, status: &str, message: &str) {
        if let Some(i) = self.world().instances.iter_mut().find(|i| i.id == id) {
            i.forced_status = Some((status.to_owned(), message.to_owned()));
        }
    }

    fn next_fault(&self, route: Route) -> Option<Fault> {
        let mut world = self.world();
        *world.calls.entry(route).or_default() += 1;
        world.faults.get_mut(&route).and_then(VecDeque::pop_front)
    }

    /// Bearer token and request id, as every compute call needs.
    fn check(&self, headers: &HeaderMap) -> Result<(), Response> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let mut world = self.world();
        let valid = bearer
            .and_then(|t| world.tokens.get(t))
            .is_some_and(|expires| Instant::now() < *expires);
        if !valid {
            return Err(error(StatusCode::UNAUTHORIZED, json!("Unauthorized")));
        }
        let request_id = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !is_request_id(request_id) {
            return Err(error(
                StatusCode::BAD_REQUEST,
                json!(["x-request-id must be a UUID v4 (^[0-9A-Fa-f]{8}-...$)"]),
            ));
        }
        if !world.request_ids.insert(request_id.to_owned()) {
            return Err(error(
                StatusCode::BAD_REQUEST,
                json!(["x-request-id was used before"]),
            ));
        }
        Ok(())
    }

    fn view(&self, instance: &FakeInstance) -> Value {
        let up = instance.booted || instance.created_at.elapsed() >= self.boot_time;
        let (status, error_message) = match &instance.forced_status {
            Some((status, message)) => (status.as_str(), message.as_str()),
            None if up => ("running", ""),
            None => ("provisioning", ""),
        };
        let n = instance.id % 250 + 1;
        let ipv4 = instance
            .ipv4
            .map_or_else(|| format!("203.0.113.{n}"), |ip| ip.to_string());
        json!({
            "tenantId": "DE",
            "customerId": "54321",
            "instanceId": instance.id,
            "name": format!("vmi{}", instance.id),
            "displayName": instance.display_name,
            "region": instance.region,
            "productId": instance.product_id,
            "imageId": instance.image_id,
            "status": status,
            "ipConfig": if up {
                json!({"v4": {"ip": ipv4, "netmaskCidr": 24, "gateway": "203.0.113.254"},
                       "v6": {"ip": format!("2001:db8::{n:x}"), "netmaskCidr": 64, "gateway": "fe80::1"}})
            } else {
                json!({"v4": {"ip": "", "netmaskCidr": 0, "gateway": ""}, "v6": {"ip": "", "netmaskCidr": 0, "gateway": ""}})
            },
            "errorMessage": error_message,
            "defaultUser": "root",
            "cancelDate": if instance.cancelled { json!("2026-12-24") } else { Value::Null },
        })
    }
}
