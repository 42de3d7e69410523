//! What the node-channel benchmark's parts share.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use truevault_control_plane::storage::Db;

/// `--name value` flags (cargo bench also passes a bare `--bench`).
pub struct Flags(HashMap<String, String>);

impl Flags {
    pub fn parse(known: &[&str]) -> Self {
        let mut map = HashMap::new();
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "--bench" {
                continue;
            }
            let name = flag
                .strip_prefix("--")
                .unwrap_or_else(|| panic!("unexpected argument {flag}"));
            assert!(
                known.contains(&name),
                "unknown flag {flag}; known: {known:?}"
            );
            map.insert(name.to_owned(), it.next().expect("a value"));
        }
        Self(map)
    }

    pub fn usize(&self, name: &str, default: usize) -> usize {
        self.0.get(name).map_or(default, |v| v.parse().unwrap())
    }

    pub fn string(&self, name: &str, default: &str) -> String {
        self.0
            .get(name)
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    }
}

/// The `q` quantile (0 to 1) of sorted latencies in milliseconds (nearest rank).
pub fn percentile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

#[derive(Debug)]
pub struct SeedResult {
    pub adds: usize,
    pub total_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub line: String,
}

/// Runs the seed's Flask peer API baseline (shared/baseline) and parses its summary line.
pub fn seed_baseline(adds: usize) -> SeedResult {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/baseline/run-seed-peer-api.sh");
    println!("running the seed baseline: {} {adds}", script.display());
    let out = Command::new("bash")
        .arg(&script)
        .arg(adds.to_string())
        .output()
        .expect("the seed baseline script");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("seed_peer_api"))
        .unwrap_or_else(|| {
            panic!(
                "no summary from the seed baseline: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_owned();
    let field = |name: &str| -> f64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .map(|v| v.trim_end_matches("ms").trim_end_matches('s'))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    SeedResult {
        adds,
        total_s: field("total="),
        p50_ms: field("p50="),
        p99_ms: field("p99="),
        line,
    }
}

/// Moves this process (before any other thread exists) into a network namespace of its own,
/// which disappears with it: nothing here touches the machine's real network.
pub fn enter_private_netns() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    let ok = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "cannot bring up loopback in the new namespace");
}

pub async fn wait_online(db: &Db, server_id: i64) {
    for _ in 0..600 {
        let (status,): (String,) = sqlx::query_as("SELECT status FROM vpn_servers WHERE id = $1")
            .bind(server_id)
            .fetch_one(db.pool())
            .await
            .unwrap();
        if status == "online" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server {server_id} did not come online");
}

/// Registers `n` users through the API and puts them on the business plan (no device limit).
pub async fn business_users(http: &reqwest::Client, base: &str, db: &Db, n: usize) -> Vec<String> {
    let mut tokens = Vec::new();
    for i in 0..n {
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
    tokens
}

/// A distinct valid public key per device number.
pub fn device_key(i: usize) -> String {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    key[31] = 0x40;
    base64::engine::general_purpose::STANDARD.encode(key)
}

pub async fn wait_interface_gone(name: &str) {
    for _ in 0..200 {
        let exists = Command::new("ip")
            .args(["link", "show", "dev", name])
            .output()
            .is_ok_and(|o| o.status.success());
        if !exists {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("interface {name} is still there");
}
