//! Load benchmark of the accounts API over loopback, on SQLite and PostgreSQL.
//!
//! cargo bench -p truevault-control-plane --bench http_load -- [--engine sqlite|postgres|both]
//!     [--registrations N] [--logins N] [--me N] [--concurrency C] [--me-concurrency C]
//!
//! The server runs in this process with production settings (Argon2id 19 MiB, t=2, p=1); the
//! client shares the machine's cores, so figures are a lower bound for a dedicated server.
//! PostgreSQL uses a throw-away database on TRUEVAULT_TEST_POSTGRES_URL's server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::json;
use truevault_control_plane::accounts::PasswordHasher;
use truevault_control_plane::clock::SystemClock;
use truevault_control_plane::config::Settings;
use truevault_control_plane::secret::Secret;
use truevault_control_plane::server::Server;

use support::Flags;

struct Args {
    engines: Vec<&'static str>,
    registrations: usize,
    logins: usize,
    me: usize,
    concurrency: usize,
    me_concurrency: usize,
}

fn args() -> Args {
    let f = Flags::parse(&[
        "registrations",
        "logins",
        "me",
        "concurrency",
        "me-concurrency",
    ]);
    Args {
        engines: f.engines(),
        registrations: f.usize("registrations", 200),
        logins: f.usize("logins", 200),
        me: f.usize("me", 20_000),
        concurrency: f.usize("concurrency", 16),
        me_concurrency: f.usize("me-concurrency", 32),
    }
}

struct Stats {
    n: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Stats {
    fn pct(&self, p: f64) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        support::percentile_ms(&sorted, p)
    }

    #[allow(clippy::cast_precision_loss)]
    fn row(&self, engine: &str, what: &str, concurrency: usize) -> String {
        format!(
            "| {engine} | {what} | {} | {concurrency} | {:.0}/s | {:.2} ms | {:.2} ms | {} |",
            self.n,
            self.n as f64 / self.elapsed.as_secs_f64(),
            self.pct(0.50),
            self.pct(0.99),
            self.errors
        )
    }
}

async fn load<F, Fut>(n: usize, concurrency: usize, op: F) -> Stats
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    let results: Vec<(Duration, bool)> = futures_util::stream::iter(0..n)
        .map(|i| {
            let fut = op(i);
            async move {
                let t = Instant::now();
                let ok = fut.await;
                (t.elapsed(), ok)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    Stats {
        n,
        errors: results.iter().filter(|(_, ok)| !ok).count(),
        elapsed: started.elapsed(),
        latencies: results.into_iter().map(|(d, _)| d).collect(),
    }
}

async fn argon2_alone(settings: &Settings) -> Vec<String> {
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let hasher = PasswordHasher::new(
        settings.password_hash_memory_kib,
        settings.password_hash_iterations,
        settings.password_hash_parallelism,
        cores,
    )
    .unwrap();
    let pw = Secret::new("correct horse battery staple");
    let sequential = load(30, 1, |_| async { hasher.hash(&pw).await.is_ok() }).await;
    let parallel = load(60, cores, |_| async { hasher.hash(&pw).await.is_ok() }).await;
    vec![
        sequential.row("-", "Argon2id hash alone, 1 at a time", 1),
        parallel.row("-", "Argon2id hash alone, one per core", cores),
    ]
}

async fn bench_engine(engine: &'static str, a: &Args) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings {
        data_dir: dir.path().join("data"),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        auth_rate_limit_burst: u32::MAX,
        auth_rate_limit_per_minute: u32::MAX,
        ..Settings::default()
    };
    let pg = if engine == "postgres" {
        let pg = support::PgBench::create().await;
        settings.database_url = Some(Secret::new(pg.url.clone()));
        Some(pg)
    } else {
        None
    };
    let server = Server::bind(&settings, Arc::new(SystemClock))
        .await
        .unwrap();
    let base = format!("http://{}", server.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let mut rows = Vec::new();

    let register = load(a.registrations, a.concurrency, |i| {
        let req = http.post(format!("{base}/api/v1/auth/register")).json(&json!({
            "email": format!("user{i}@bench.example"), "password": "correct horse battery staple"
        }));
        async move { req.send().await.is_ok_and(|r| r.status() == 201) }
    })
    .await;
    rows.push(register.row(engine, "POST /auth/register", a.concurrency));

    let login = load(a.logins, a.concurrency, |i| {
        let req = http.post(format!("{base}/api/v1/auth/login")).json(&json!({
            "email": format!("user{}@bench.example", i % a.registrations), "password": "correct horse battery staple"
        }));
        async move { req.send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    rows.push(login.row(engine, "POST /auth/login", a.concurrency));

    let body: serde_json::Value = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(
            &json!({ "email": "user0@bench.example", "password": "correct horse battery staple" }),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = body["access_token"].as_str().unwrap().to_owned();
    // Warm the connection pools before measuring.
    load(500, a.me_concurrency, |_| {
        let req = http.get(format!("{base}/api/v1/me")).bearer_auth(&token);
        async move { req.send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    let me = load(a.me, a.me_concurrency, |_| {
        let req = http.get(format!("{base}/api/v1/me")).bearer_auth(&token);
        async move {
            match req.send().await {
                Ok(r) if r.status() == 200 => r.bytes().await.is_ok(),
                _ => false,
            }
        }
    })
    .await;
    rows.push(me.row(engine, "GET /me", a.me_concurrency));

    let _ = stop.send(());
    let _ = running.await;
    if let Some(pg) = pg {
        pg.drop().await;
    }
    rows
}

#[tokio::main]
async fn main() {
    let a = args();
    println!("| engine | operation | requests | concurrency | throughput | p50 | p99 | errors |");
    println!("|---|---|---|---|---|---|---|---|");
    for row in argon2_alone(&Settings::default()).await {
        println!("{row}");
    }
    for engine in a.engines.clone() {
        for row in bench_engine(engine, &a).await {
            println!("{row}");
        }
    }
}
