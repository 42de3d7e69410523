//! Device adds through the REST API, on SQLite and PostgreSQL, as one server fills up.
//!
//! cargo bench -p truevault-control-plane --bench devices -- [--engine sqlite|postgres|both]
//!     [--devices N (10000)] [--users N (50)] [--concurrency C (16)]
//!
//! Users are on the business plan (unlimited devices) and all devices land on one server, so
//! the stages show whether an add gets slower as the server's subnet fills (it must not: the
//! address comes from a counter or a free list, never a scan).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::StreamExt as _;
use serde_json::json;
use truevault_control_plane::audit::Actor;
use truevault_control_plane::clock::{Clock as _, SystemClock};
use truevault_control_plane::config::Settings;
use truevault_control_plane::secret::Secret;
use truevault_control_plane::server::Server;
use truevault_control_plane::servers::{self, ServerInput};

use support::{Flags, PgBench};

async fn bench(
    engine: &'static str,
    total: usize,
    users: usize,
    concurrency: usize,
) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings {
        data_dir: dir.path().join("data"),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        auth_rate_limit_burst: u32::MAX,
        auth_rate_limit_per_minute: u32::MAX,
        workers_enabled: false,
        ..Settings::default()
    };
    let pg = if engine == "postgres" {
        let pg = PgBench::create().await;
        settings.database_url = Some(Secret::new(pg.url.clone()));
        Some(pg)
    } else {
        None
    };
    let server = Server::bind(&settings, Arc::new(SystemClock))
        .await
        .unwrap();
    let base = format!("http://{}", server.local_addr().unwrap());
    let db = server.state().accounts().db().clone();
    let input = ServerInput {
        name: Some("bench-1".into()),
        region: Some("us-east".into()),
        country: None,
        endpoint_host: Some("vpn.bench.example".into()),
        endpoint_port: None,
        public_key: Some(base64::engine::general_purpose::STANDARD.encode([9u8; 32])),
        ipv4_subnet: Some("10.8.0.0/16".into()),
        ipv6_subnet: None,
        server_type: None,
        dedicated_user_id: None,
        status: None,
    };
    servers::create(&db, input, Actor::Cli, None, SystemClock.now_ms())
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let mut tokens = Vec::new();
    for i in 0..users {
        let body: serde_json::Value = http
            .post(format!("{base}/api/v1/auth/register"))
            .json(&json!({ "email": format!("u{i}@bench.example"), "password": "correct horse battery staple" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens.push(body["access_token"].as_str().unwrap().to_owned());
    }
    sqlx::query("UPDATE subscriptions SET plan_type = 'business', status = 'active'")
        .execute(db.pool())
        .await
        .unwrap();

    let mut rows = Vec::new();
    let mut done = 0usize;
    for stage_end in [100, 1_000, total] {
        if stage_end <= done || stage_end > total {
            continue;
        }
        let n = stage_end - done;
        let started = Instant::now();
        let mut latencies: Vec<(Duration, bool)> = futures_util::stream::iter(done..stage_end)
            .map(|i| {
                let mut key = [0u8; 32];
                key[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
                key[31] = 1;
                let req = http
                    .post(format!("{base}/api/v1/devices"))
                    .bearer_auth(&tokens[i % tokens.len()])
                    .json(&json!({ "public_key": base64::engine::general_purpose::STANDARD.encode(key), "name": format!("d{i}") }));
                async move {
                    let t = Instant::now();
                    let ok = req.send().await.is_ok_and(|r| r.status() == 201);
                    (t.elapsed(), ok)
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let elapsed = started.elapsed().as_secs_f64();
        let errors = latencies.iter().filter(|(_, ok)| !ok).count();
        latencies.sort();
        let sorted: Vec<Duration> = latencies.iter().map(|(d, _)| *d).collect();
        rows.push(format!(
            "| {engine} | {done} to {stage_end} | {n} | {:.0}/s | {:.2} ms | {:.2} ms | {errors} |",
            n as f64 / elapsed,
            support::percentile_ms(&sorted, 0.5),
            support::percentile_ms(&sorted, 0.99)
        ));
        done = stage_end;
    }
    let _ = stop.send(());
    let _ = running.await;
    if let Some(pg) = pg {
        pg.drop().await;
    }
    rows
}

#[tokio::main]
async fn main() {
    let f = Flags::parse(&["devices", "users", "concurrency"]);
    let (total, users, concurrency) = (
        f.usize("devices", 10_000),
        f.usize("users", 50),
        f.usize("concurrency", 16),
    );
    println!("| engine | devices on the server | adds | throughput | p50 | p99 | errors |");
    println!("|---|---|---|---|---|---|---|");
    for engine in f.engines() {
        for row in bench(engine, total, users, concurrency).await {
            println!("{row}");
        }
    }
}
