//! The node channel, measured end to end (needs root: it runs in a network namespace of its
//! own and creates a userspace WireGuard interface there).
//!
//! cargo bench -p truevault-e2e --bench node_channel -- [--part adds|fleet|all] [--devices N]
//!     [--agents N] [--fleet-adds N] [--seed-adds N]
//!
//! - `adds`: the seed's Flask peer API doing `--seed-adds` (250) sequential adds, then ours:
//!   sequential device adds through the REST API, each timed until the node agent (userspace
//!   WireGuard, in process) has the peer on its interface and acknowledges it, up to
//!   `--devices` (10,000) on one node; then the agent restarted with all of them.
//! - `fleet`: `--agents` (1,000) simulated agents (real mTLS Sync streams, no WireGuard) on one
//!   control plane process: its memory and CPU, and how long a change takes to reach a node.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

mod node_channel {
    pub mod fleet;
    pub mod support;
}

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use truevault_agent::config::BackendChoice;
use truevault_agent::{Agent, AgentConfig};
use truevault_control_plane::clock::SystemClock;
use truevault_control_plane::server::Server;

use node_channel::support::{self, Flags, percentile_ms};

fn main() {
    let flags = Flags::parse(&["part", "devices", "agents", "fleet-adds", "seed-adds"]);
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this benchmark needs root (a network namespace, a tun device)"
    );
    let part = flags.string("part", "all");
    let mut report = Vec::new();
    let seed = if part == "all" || part == "adds" {
        // Before leaving the root namespace: the script makes its own throw-away one.
        Some(support::seed_baseline(flags.usize("seed-adds", 250)))
    } else {
        None
    };
    support::enter_private_netns();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Some(seed) = seed {
        report.extend(runtime.block_on(adds(flags.usize("devices", 10_000), &seed)));
    }
    if part == "all" || part == "fleet" {
        report.extend(runtime.block_on(node_channel::fleet::run(
            flags.usize("agents", 1_000),
            flags.usize("fleet-adds", 2_000),
        )));
    }
    println!("\n{}", report.join("\n"));
}

async fn adds(total: usize, seed: &support::SeedResult) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let settings = support::control_settings(dir.path());
    let server = Server::bind(&settings, Arc::new(SystemClock))
        .await
        .unwrap();
    let base = format!("http://{}", server.local_addr().unwrap());
    let grpc = server.grpc_addr().unwrap();
    let db = server.state().accounts().db().clone();
    let (server_id, token) = support::server_with_token(&db, "bench-node", "10.8.0.0/16").await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));

    let wg_name = truevault_e2e::WgName::new("tvb");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let config = AgentConfig {
        control_plane_url: format!("https://127.0.0.1:{}", grpc.port()),
        control_plane_name: Some("localhost".into()),
        ca_file: settings.data_dir.join("node-ca.pem"),
        state_dir: dir.path().join("agent"),
        token_file: Some(token_file),
        interface: wg_name.to_string(),
        backend: BackendChoice::Userspace,
        health_listen: "127.0.0.1:0".parse().unwrap(),
        ..AgentConfig::default()
    };
    let agent = Agent::start(config.clone()).await.unwrap();
    let store = agent.store.clone();
    let (agent_stop, agent_stopped) = tokio::sync::oneshot::channel::<()>();
    let agent_task = tokio::spawn(agent.run(async move {
        let _ = agent_stopped.await;
    }));
    support::wait_online(&db, server_id).await;

    let http = reqwest::Client::new();
    let tokens = support::business_users(&http, &base, &db, 20).await;
    let mut revisions = store.subscribe();
    let mut latencies = Vec::with_capacity(total);
    let mut rest_only = Vec::with_capacity(total);
    let started = Instant::now();
    for i in 0..total {
        let key = support::device_key(i);
        let t = Instant::now();
        let response = http
            .post(format!("{base}/api/v1/devices"))
            .bearer_auth(&tokens[i % tokens.len()])
            .json(&json!({ "public_key": key, "name": format!("d{i}") }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        rest_only.push(t.elapsed());
        // The agent updates its applied state right after the peer is on the interface, and
        // acknowledges in the same step.
        while !store.with(|a| a.peers.contains_key(&key)) {
            revisions.changed().await.unwrap();
        }
        latencies.push(t.elapsed());
    }
    let total_secs = started.elapsed().as_secs_f64();
    let first: Vec<Duration> = sorted(&latencies[..250.min(total)]);
    let last: Vec<Duration> = sorted(&latencies[total.saturating_sub(250)..]);
    let all: Vec<Duration> = sorted(&latencies);
    let ratio = |ours: &[Duration], q: f64, theirs: f64| theirs / percentile_ms(ours, q).max(1e-6);
    let mut rows = vec![
        "## End-to-end device adds (REST call → peer on the node's interface, acknowledged)".into(),
        String::new(),
        "| what | adds | p50 | p99 | seed p50 / ours | seed p99 / ours |".into(),
        "|---|---|---|---|---|---|".into(),
        format!(
            "| seed Flask peer API (`run-seed-peer-api.sh {}`) | {} | {:.1} ms | {:.1} ms | 1 | 1 |",
            seed.adds, seed.adds, seed.p50_ms, seed.p99_ms
        ),
        format!(
            "| ours, devices 1 to {} | {} | {:.2} ms | {:.2} ms | {:.0}x | {:.0}x |",
            first.len(),
            first.len(),
            percentile_ms(&first, 0.5),
            percentile_ms(&first, 0.99),
            ratio(&first, 0.5, seed.p50_ms),
            ratio(&first, 0.99, seed.p99_ms)
        ),
    ];
    if total > 250 {
        rows.push(format!(
            "| ours, devices {} to {total} (node already holds {}) | {} | {:.2} ms | {:.2} ms | {:.0}x | {:.0}x |",
            total - last.len() + 1,
            total - last.len(),
            last.len(),
            percentile_ms(&last, 0.5),
            percentile_ms(&last, 0.99),
            ratio(&last, 0.5, seed.p50_ms),
            ratio(&last, 0.99, seed.p99_ms)
        ));
        rows.push(format!(
            "| ours, all {total} on one node | {total} | {:.2} ms | {:.2} ms | | |",
            percentile_ms(&all, 0.5),
            percentile_ms(&all, 0.99),
        ));
    }
    let rest_first = sorted(&rest_only[..250.min(total)]);
    let rest_last = sorted(&rest_only[total.saturating_sub(250)..]);
    for (label, part) in [("first", &rest_first), ("last", &rest_last)] {
        rows.push(format!(
            "| of which the REST call alone (until 201), {label} {} | {} | {:.2} ms | {:.2} ms | | |",
            part.len(),
            part.len(),
            percentile_ms(part, 0.5),
            percentile_ms(part, 0.99),
        ));
    }
    rows.push(String::new());
    rows.push(format!(
        "Ours: {total} adds in {total_secs:.1} s; seed: {} adds in {:.1} s ({}).",
        seed.adds, seed.total_s, seed.line
    ));

    // Restart: stop the agent (the userspace interface goes with it), start it again from its
    // saved state, and time until the interface holds every peer and the stream is resumed.
    let _ = agent_stop.send(());
    agent_task.await.unwrap().unwrap();
    support::wait_interface_gone(&config.interface).await;
    let t = Instant::now();
    let agent = Agent::start(config.clone()).await.unwrap();
    let ready = t.elapsed();
    let on_interface = agent.iface.read().await.unwrap().peers.len();
    let metrics = Arc::clone(&agent.metrics);
    let (agent_stop, agent_stopped) = tokio::sync::oneshot::channel::<()>();
    let agent_task = tokio::spawn(agent.run(async move {
        let _ = agent_stopped.await;
    }));
    while metrics.connected.get() != 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let resumed = t.elapsed();
    rows.push(String::new());
    rows.push("## Agent restart with every peer (userspace backend)".into());
    rows.push(String::new());
    rows.push(
        "| peers | interface re-created with all peers | Sync stream resumed at its revision |"
            .into(),
    );
    rows.push("|---|---|---|".into());
    rows.push(format!(
        "| {on_interface} | {:.0} ms | {:.0} ms |",
        ready.as_secs_f64() * 1000.0,
        resumed.as_secs_f64() * 1000.0
    ));
    let _ = agent_stop.send(());
    agent_task.await.unwrap().unwrap();
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    rows
}

fn sorted(latencies: &[Duration]) -> Vec<Duration> {
    let mut v = latencies.to_vec();
    v.sort();
    v
}
