//! Device adds end to end, on a small node and a big one, then the big node's agent restarted.
//!
//! Two nodes on one control plane, each with its agent in process (userspace WireGuard). The
//! big node is filled to `total - WINDOW` devices; then the last `WINDOW` adds to it alternate,
//! one for one, with the first `WINDOW` adds to the small node. So "adds to a node holding
//! under 250 peers" and "adds to a node holding nearly 10,000" are measured in the same
//! seconds, and a slow moment of the (shared, two-core) machine weighs on both alike instead of
//! deciding the comparison.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::oneshot;
use truevault_agent::config::BackendChoice;
use truevault_agent::state::Store;
use truevault_agent::{Agent, AgentConfig};
use truevault_control_plane::clock::SystemClock;
use truevault_control_plane::server::Server;
use truevault_control_plane::storage::Db;

use super::support::{self, SeedResult, percentile_ms};

/// Adds per measured window.
const WINDOW: usize = 250;

/// One node: its server row and its running agent.
struct Node {
    server_uuid: String,
    config: AgentConfig,
    store: Store,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<truevault_agent::error::Result<()>>,
    /// Removes the interface's control socket when dropped.
    wg_name: truevault_e2e::WgName,
}

impl Node {
    async fn start(
        db: &Db,
        grpc_port: u16,
        ca_file: std::path::PathBuf,
        dir: &std::path::Path,
        name: &str,
        subnet: &str,
        listen_port: u16,
    ) -> Self {
        let (server_id, token) =
            truevault_e2e::in_process::server_with_token(db, name, subnet).await;
        let wg_name = truevault_e2e::WgName::new("tvb");
        let token_file = dir.join(format!("{name}.token"));
        std::fs::write(&token_file, token).unwrap();
        let config = AgentConfig {
            control_plane_url: format!("https://127.0.0.1:{grpc_port}"),
            control_plane_name: Some("localhost".into()),
            ca_file,
            state_dir: dir.join(name),
            token_file: Some(token_file),
            interface: wg_name.to_string(),
            listen_port: Some(listen_port),
            backend: BackendChoice::Userspace,
            health_listen: "127.0.0.1:0".parse().unwrap(),
            ..AgentConfig::default()
        };
        let (store, stop, task) = run_agent(&config).await;
        support::wait_online(db, server_id).await;
        let (server_uuid,): (String,) =
            sqlx::query_as("SELECT uuid FROM vpn_servers WHERE id = $1")
                .bind(server_id)
                .fetch_one(db.pool())
                .await
                .unwrap();
        Self {
            server_uuid,
            config,
            store,
            stop,
            task,
            wg_name,
        }
    }

    async fn stop(self) -> (AgentConfig, truevault_e2e::WgName) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
        (self.config, self.wg_name)
    }
}

async fn run_agent(
    config: &AgentConfig,
) -> (
    Store,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<truevault_agent::error::Result<()>>,
) {
    let agent = Agent::start(config.clone()).await.unwrap();
    let store = agent.store.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(async move {
        let _ = stopped.await;
    }));
    (store, stop, task)
}

/// One timed add: the REST call, then until the node's agent has the peer on its interface
/// and has acknowledged it (it updates its applied state in the same step). Returns (REST
/// call alone, end to end).
async fn add(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    node: &Node,
    i: usize,
) -> (Duration, Duration) {
    let key = support::device_key(i);
    let mut revisions = node.store.subscribe();
    let t = Instant::now();
    let response = http
        .post(format!("{base}/api/v1/devices"))
        .bearer_auth(token)
        .json(&json!({ "public_key": key, "name": format!("d{i}"), "server_id": node.server_uuid }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let rest = t.elapsed();
    while !node.store.with(|a| a.peers.contains_key(&key)) {
        revisions.changed().await.unwrap();
    }
    (rest, t.elapsed())
}

/// Latencies of a series of adds.
#[derive(Default)]
struct Series {
    rest: Vec<Duration>,
    total: Vec<Duration>,
}

impl Series {
    fn push(&mut self, (rest, total): (Duration, Duration)) {
        self.rest.push(rest);
        self.total.push(total);
    }
}

fn sorted(latencies: &[Duration]) -> Vec<Duration> {
    let mut v = latencies.to_vec();
    v.sort();
    v
}

pub async fn run(total: usize, seed: &SeedResult) -> Vec<String> {
    assert!(total >= WINDOW, "--devices must be at least {WINDOW}");
    let dir = tempfile::tempdir().unwrap();
    let settings = truevault_e2e::in_process::settings(dir.path());
    let server = Server::bind(&settings, Arc::new(SystemClock))
        .await
        .unwrap();
    let base = format!("http://{}", server.local_addr().unwrap());
    let grpc_port = server.grpc_addr().unwrap().port();
    let db = server.state().accounts().db().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let ca = settings.data_dir.join("node-ca.pem");
    let big = Node::start(
        &db,
        grpc_port,
        ca.clone(),
        dir.path(),
        "big",
        "10.8.0.0/16",
        51820,
    )
    .await;
    let small = Node::start(
        &db,
        grpc_port,
        ca,
        dir.path(),
        "small",
        "10.9.0.0/16",
        51821,
    )
    .await;

    let http = reqwest::Client::new();
    let tokens = support::business_users(&http, &base, &db, 20).await;
    let token = |i: usize| tokens[i % tokens.len()].as_str();
    let started = Instant::now();
    let mut fill = Series::default();
    for i in 0..total - WINDOW {
        fill.push(add(&http, &base, token(i), &big, i).await);
    }
    let (mut small_window, mut big_window) = (Series::default(), Series::default());
    for j in 0..WINDOW {
        let i = total - WINDOW + j;
        small_window.push(add(&http, &base, token(i), &small, total + j).await);
        big_window.push(add(&http, &base, token(i), &big, i).await);
    }
    let total_secs = started.elapsed().as_secs_f64();
    let mut rows = report(total, seed, &fill, &small_window, &big_window);
    rows.push(String::new());
    rows.push(format!(
        "Ours: {} adds in {total_secs:.1} s; seed: {} adds in {:.1} s ({}).",
        total + WINDOW,
        seed.adds,
        seed.total_s,
        seed.line
    ));

    let (_, _small_name) = small.stop().await;
    rows.extend(restart(big).await);
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    rows
}

fn report(
    total: usize,
    seed: &SeedResult,
    fill: &Series,
    small: &Series,
    big: &Series,
) -> Vec<String> {
    let ratio = |ours: &[Duration], q: f64, theirs: f64| theirs / percentile_ms(ours, q).max(1e-6);
    let row = |what: String, latencies: &[Duration], with_ratio: bool| {
        let s = sorted(latencies);
        let (p50, p99) = (percentile_ms(&s, 0.5), percentile_ms(&s, 0.99));
        if with_ratio {
            format!(
                "| {what} | {} | {p50:.2} ms | {p99:.2} ms | {:.0}x | {:.0}x |",
                s.len(),
                ratio(&s, 0.5, seed.p50_ms),
                ratio(&s, 0.99, seed.p99_ms)
            )
        } else {
            format!("| {what} | {} | {p50:.2} ms | {p99:.2} ms | | |", s.len())
        }
    };
    let all_big: Vec<Duration> = fill.total.iter().chain(&big.total).copied().collect();
    let before = total - WINDOW;
    vec![
        "## End-to-end device adds (REST call → peer on the node's interface, acknowledged)".into(),
        String::new(),
        "| what | adds | p50 | p99 | seed p50 / ours | seed p99 / ours |".into(),
        "|---|---|---|---|---|---|".into(),
        format!(
            "| seed Flask peer API (`run-seed-peer-api.sh {}`) | {} | {:.1} ms | {:.1} ms | 1 | 1 |",
            seed.adds, seed.adds, seed.p50_ms, seed.p99_ms
        ),
        row(
            format!("ours, small node: devices 1 to {WINDOW}"),
            &small.total,
            true,
        ),
        row(
            format!(
                "ours, big node: devices {} to {total} (node already holds {before})",
                before + 1
            ),
            &big.total,
            true,
        ),
        row(format!("ours, big node: all {total}"), &all_big, false),
        row(
            format!("ours, big node: devices 1 to {WINDOW} (start of the fill)"),
            &fill.total[..WINDOW.min(fill.total.len())],
            true,
        ),
        row(
            "of which the REST call alone (until 201), small node".into(),
            &small.rest,
            false,
        ),
        row(
            "of which the REST call alone (until 201), big node's last adds".into(),
            &big.rest,
            false,
        ),
    ]
}

/// Stops the big node's agent (the userspace interface goes with it), starts it again from its
/// saved state, and times until the interface holds every peer and the stream is resumed.
async fn restart(node: Node) -> Vec<String> {
    let (config, _name) = node.stop().await;
    support::wait_interface_gone(&config.interface).await;
    let t = Instant::now();
    let agent = Agent::start(config.clone()).await.unwrap();
    let ready = t.elapsed();
    let on_interface = agent.iface.read().await.unwrap().peers.len();
    let metrics = Arc::clone(&agent.metrics);
    let (agent_stop, agent_stopped) = oneshot::channel::<()>();
    let agent_task = tokio::spawn(agent.run(async move {
        let _ = agent_stopped.await;
    }));
    while metrics.connected.get() != 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let resumed = t.elapsed();
    let _ = agent_stop.send(());
    agent_task.await.unwrap().unwrap();
    vec![
        String::new(),
        "## Agent restart with every peer (userspace backend)".into(),
        String::new(),
        "| peers | interface re-created with all peers | Sync stream resumed at its revision |"
            .into(),
        "|---|---|---|".into(),
        format!(
            "| {on_interface} | {:.0} ms | {:.0} ms |",
            ready.as_secs_f64() * 1000.0,
            resumed.as_secs_f64() * 1000.0
        ),
    ]
}
