//! Test harness: a real control plane on loopback over a real database, per test.
//!
//! `engine_tests!` runs each scenario twice: on a fresh SQLite file and on a fresh PostgreSQL
//! database (created per test, dropped afterwards even when the test fails). Without a
//! PostgreSQL server the PostgreSQL half fails when `CI` is set and skips with a printed reason
//! otherwise.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use truevault_control_plane::api::AppState;
use truevault_control_plane::automation::Automation;
use truevault_control_plane::clock::ManualClock;
use truevault_control_plane::config::Settings;
use truevault_control_plane::server::Server;
use truevault_control_plane::storage::Db;

pub mod node;
pub mod orders;
pub mod paypal;

pub const PASSWORD: &str = "correct horse battery staple";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// Generates `<scenario>::sqlite` and `<scenario>::postgres` tests for `async fn scenario(Engine)`.
#[macro_export]
macro_rules! engine_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::Engine::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if $crate::common::postgres_available(stringify!($name)).await {
                    super::$name($crate::common::Engine::Postgres).await;
                }
            }
        }
    )*};
}

pub use truevault_control_plane::storage::scratch::PgDatabase;

/// True when PostgreSQL answers; in CI a missing server is a failure, never a skip.
pub async fn postgres_available(test: &str) -> bool {
    truevault_control_plane::storage::scratch::available(test).await
}

/// A running control plane with a manual clock, its database and an HTTP client.
#[derive(Debug)]
pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub clock: Arc<ManualClock>,
    pub state: AppState,
    pub settings: Settings,
    /// The node gRPC listener.
    pub grpc_addr: std::net::SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    _pg: Option<Arc<PgDatabase>>,
    _dir: Arc<TempDir>,
}

impl TestApp {
    pub async fn start(engine: Engine) -> Self {
        Self::start_with(engine, |_| {}).await
    }

    pub async fn start_with(engine: Engine, tweak: impl FnOnce(&mut Settings)) -> Self {
        // `TEST_LOG=debug cargo test ...` shows the control plane's log.
        if let Ok(filter) = std::env::var("TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let pg = match engine {
            Engine::Sqlite => None,
            Engine::Postgres => Some(Arc::new(PgDatabase::create().await)),
        };
        let mut settings = Settings {
            data_dir: dir.path().join("data"),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            grpc_listen: "127.0.0.1:0".parse().unwrap(),
            database_url: pg
                .as_ref()
                .map(|p| truevault_control_plane::secret::Secret::new(p.url.clone())),
            // Tests share one loopback address: keep the per-address limit out of the way
            // except where a test sets it.
            auth_rate_limit_burst: 100_000,
            auth_rate_limit_per_minute: 100_000,
            // Tests drive the workers themselves, with the manual clock.
            workers_enabled: false,
            // Never during a test: node sessions must be woken by the commits themselves.
            node_resync_interval_secs: 3600,
            ..Settings::default()
        };
        tweak(&mut settings);
        Self::launch(settings, Arc::new(ManualClock::starting_now()), pg, dir).await
    }

    /// A second control-plane instance over the same database and clock (another replica).
    pub async fn replica(&self) -> Self {
        let mut settings = self.settings.clone();
        settings.http_listen = "127.0.0.1:0".parse().unwrap();
        Self::launch(
            settings,
            Arc::clone(&self.clock),
            self._pg.clone(),
            Arc::clone(&self._dir),
        )
        .await
    }

    async fn launch(
        settings: Settings,
        clock: Arc<ManualClock>,
        pg: Option<Arc<PgDatabase>>,
        dir: Arc<TempDir>,
    ) -> Self {
        let server = Server::bind(&settings, clock.clone())
            .await
            .expect("start the control plane");
        let addr = server.local_addr().unwrap();
        let grpc_addr = server.grpc_addr().unwrap();
        let state = server.state().clone();
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            clock,
            state,
            settings,
            grpc_addr,
            shutdown: Some(tx),
            _pg: pg,
            _dir: dir,
        }
    }

    pub fn db(&self) -> &Db {
        self.state.accounts().db()
    }

    pub fn automation(&self) -> &Arc<Automation> {
        self.state.automation()
    }

    /// Stops this control plane and starts a new one on the same database, data directory and
    /// clock, as an operator's restart would.
    pub async fn restart(mut self) -> Self {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.db().close().await;
        let settings = self.settings.clone();
        Self::launch(
            settings,
            Arc::clone(&self.clock),
            self._pg.clone(),
            Arc::clone(&self._dir),
        )
        .await
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// Runs every task due at the clock's current time.
    pub async fn run_tasks(&self) -> usize {
        self.automation().run_until_idle().await.unwrap()
    }

    /// Delivers every due mail; returns how many were sent.
    pub async fn deliver_mail(&self) -> usize {
        let mut sent = 0;
        loop {
            let report = self.automation().deliver_due(64).await.unwrap();
            sent += report.sent;
            if report.sent + report.retrying + report.failed == 0 {
                return sent;
            }
        }
    }

    /// Templates of the mails queued for an address, oldest first.
    pub async fn mail_templates(&self, to: &str) -> Vec<String> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT template FROM mail_outbox WHERE to_address = $1 ORDER BY id")
                .bind(to)
                .fetch_all(self.db().pool())
                .await
                .unwrap();
        rows.into_iter().map(|(t,)| t).collect()
    }

    /// Inserts `n` users with trials directly (no Argon2 work), for volume tests.
    pub async fn insert_trial_users(&self, n: usize, trial_ends: i64) -> Vec<i64> {
        let mut ids = Vec::with_capacity(n);
        let mut tx = self.db().begin_write().await.unwrap();
        for i in 0..n {
            let (id,): (i64,) = sqlx::query_as(
                "INSERT INTO users (uuid, email, password_hash, first_name, created_at, updated_at)
                 VALUES ($1, $2, 'x', 'Bulk', 0, 0) RETURNING id",
            )
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(format!(
                "bulk{i}-{}@example.com",
                uuid::Uuid::new_v4().simple()
            ))
            .fetch_one(tx.conn())
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO subscriptions (user_id, plan_type, status, trial_started, trial_ends,
                                            current_period_start, current_period_end, created_at, updated_at)
                 VALUES ($1, 'trial', 'trial', 0, $2, 0, $2, 0, 0)",
            )
            .bind(id)
            .bind(trial_ends)
            .execute(tx.conn())
            .await
            .unwrap();
            sqlx::query("INSERT INTO trial_tracking (user_id, trial_started, trial_ends, created_at) VALUES ($1, -1, $2, 0)")
                .bind(id)
                .bind(trial_ends)
                .execute(tx.conn())
                .await
                .unwrap();
            ids.push(id);
        }
        tx.commit().await.unwrap();
        ids
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        split(resp).await
    }

    pub async fn post_auth(
        &self,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.post(self.url(path)).bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        split(req.send().await.unwrap()).await
    }

    pub async fn get_auth(&self, path: &str, token: &str) -> (StatusCode, Value) {
        split(
            self.http
                .get(self.url(path))
                .bearer_auth(token)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn patch_auth(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        split(
            self.http
                .patch(self.url(path))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn delete_auth(&self, path: &str, token: &str) -> (StatusCode, Value) {
        split(
            self.http
                .delete(self.url(path))
                .bearer_auth(token)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// Registers and returns the response body (asserting 201).
    pub async fn register(&self, email: &str) -> Value {
        let (status, body) = self
            .post(
                "/api/v1/auth/register",
                json!({ "email": email, "password": PASSWORD, "first_name": "Test" }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    pub async fn login(&self, email: &str, password: &str) -> (StatusCode, Value) {
        self.post(
            "/api/v1/auth/login",
            json!({ "email": email, "password": password }),
        )
        .await
    }

    /// The newest outbox mail of a template to an address: its JSON context.
    pub async fn last_mail(&self, to: &str, template: &str) -> Value {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT context FROM mail_outbox WHERE to_address = $1 AND template = $2 ORDER BY id DESC LIMIT 1",
        )
        .bind(to)
        .bind(template)
        .fetch_optional(self.db().pool())
        .await
        .unwrap();
        let (context,) = row.unwrap_or_else(|| panic!("no {template} mail to {to}"));
        serde_json::from_str(&context).unwrap()
    }

    /// The `token` query parameter of a link in the newest mail of a template.
    pub async fn token_from_mail(&self, to: &str, template: &str, link_field: &str) -> String {
        let ctx = self.last_mail(to, template).await;
        let link = ctx[link_field].as_str().unwrap();
        link.split_once("token=").unwrap().1.to_owned()
    }

    /// The plan status of the user's latest subscription.
    pub async fn subscription_status(&self, user_id: i64) -> String {
        let (status,): (String,) = sqlx::query_as(
            "SELECT status FROM subscriptions WHERE user_id = $1 ORDER BY id DESC LIMIT 1",
        )
        .bind(user_id)
        .fetch_one(self.db().pool())
        .await
        .unwrap();
        status
    }

    /// Adds a server (as [`Self::add_server`]) and puts it into the dedicated pool; returns the
    /// server and its pool row (`assigned` at once when an order waits in its region).
    pub async fn pool_server(&self, name: &str, region: &str, key_byte: u8) -> (Value, Value) {
        let server = self.add_server(name, region, key_byte).await;
        let admin = self.admin_token().await;
        let (status, pooled) = self
            .post_auth(
                "/api/v1/admin/pool",
                &admin,
                Some(json!({ "server_id": server["id"] })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{pooled}");
        (server, pooled)
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        let (n,): (i64,) = sqlx::query_as(sql)
            .fetch_one(self.db().pool())
            .await
            .unwrap();
        n
    }

    /// Adds an online shared server (as an operator would) and returns its view.
    pub async fn add_server(&self, name: &str, region: &str, public_key_byte: u8) -> Value {
        let admin = self.admin_token().await;
        let key = base64_key(public_key_byte);
        let (status, body) = self
            .post_auth(
                "/api/v1/admin/servers",
                &admin,
                Some(json!({
                    "name": name, "region": region, "endpoint_host": format!("{name}.example.com"),
                    "public_key": key, "ipv4_subnet": "10.8.0.0/16", "ipv6_subnet": "fd00:1:2:3::/64",
                })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// Registers a user and returns (user id, access token).
    pub async fn customer(&self, email: &str) -> (i64, String) {
        let body = self.register(email).await;
        (
            body["user"]["id"].as_i64().unwrap(),
            body["access_token"].as_str().unwrap().to_owned(),
        )
    }

    /// Puts a user on a plan through the admin API.
    pub async fn set_plan(&self, user_id: i64, plan: &str) {
        let admin = self.admin_token().await;
        let (status, body) = self
            .post_auth(
                &format!("/api/v1/admin/users/{user_id}/plan"),
                &admin,
                Some(json!({ "plan": plan })),
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }

    /// Peer changes recorded for a server: (revision, op, public key, old key, reason).
    pub async fn peer_changes(
        &self,
        server_id: i64,
    ) -> Vec<(i64, String, String, Option<String>, String)> {
        sqlx::query_as(
            "SELECT revision, op, public_key, old_public_key, reason FROM peer_changes WHERE server_id = $1 ORDER BY revision",
        )
        .bind(server_id)
        .fetch_all(self.db().pool())
        .await
        .unwrap()
    }

    /// The peers a node holds after applying its server's whole change log.
    pub async fn replayed_peers(&self, server_id: i64) -> std::collections::BTreeSet<String> {
        let mut peers = std::collections::BTreeSet::new();
        for (_, op, key, old, _) in self.peer_changes(server_id).await {
            if let Some(old) = old {
                peers.remove(&old);
            }
            if op == "upsert" {
                peers.insert(key);
            } else {
                peers.remove(&key);
            }
        }
        peers
    }

    /// The keys of the server's devices that belong on its node (everything not disabled).
    pub async fn live_keys(&self, server_id: i64) -> std::collections::BTreeSet<String> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT public_key FROM devices WHERE server_id = $1 AND status <> 'disabled'",
        )
        .bind(server_id)
        .fetch_all(self.db().pool())
        .await
        .unwrap();
        rows.into_iter().map(|(k,)| k).collect()
    }

    /// An access token for a user, via a fresh login (after clock jumps, or for bulk users).
    pub async fn token_for(&self, email: &str) -> String {
        let (status, body) = self.login(email, PASSWORD).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// An admin account (made the way an operator does) and its access token.
    pub async fn admin_token(&self) -> String {
        let email = format!("admin-{}@example.com", uuid::Uuid::new_v4().simple());
        self.state
            .accounts()
            .create_admin(
                &email,
                &truevault_control_plane::secret::Secret::new(PASSWORD),
            )
            .await
            .unwrap();
        let (status, body) = self.login(&email, PASSWORD).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub async fn split(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

/// A valid WireGuard public key made of one repeated byte.
pub fn base64_key(byte: u8) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

pub fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}
