//! Many simulated node agents on one control plane process: real enrollment and real mTLS
//! Sync streams (hello, snapshot, acknowledgements, heartbeats), without WireGuard. Measures
//! the control plane's memory and CPU, and the time from a device add's REST call to the
//! node's receipt of the change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::json;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use truevault_proto::v1::node_service_client::NodeServiceClient;
use truevault_proto::v1::{
    Ack, AgentMessage, EnrollRequest, Heartbeat, Hello, NodeHealth, agent_message, control_message,
};

use super::support::{self, percentile_ms};

const HTTP: &str = "127.0.0.1:18080";
const GRPC: &str = "127.0.0.1:18443";
const HEARTBEAT: Duration = Duration::from_secs(30);

type Received = Arc<Mutex<HashMap<String, Instant>>>;

pub async fn run(agents: usize, adds: usize) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("control");
    let binary = truevault_e2e::binary("truevault-control");
    let log = std::fs::File::create(dir.path().join("control.log")).unwrap();
    let mut child = std::process::Command::new(binary)
        .arg("serve")
        .env("TRUEVAULT_DATA_DIR", &data)
        .env("TRUEVAULT_HTTP_LISTEN", HTTP)
        .env("TRUEVAULT_GRPC_LISTEN", GRPC)
        .env("TRUEVAULT_AUTH_RATE_LIMIT_BURST", "1000000")
        .env("TRUEVAULT_AUTH_RATE_LIMIT_PER_MINUTE", "1000000")
        .env("TRUEVAULT_LOG", "warn")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = child.id();
    let http = reqwest::Client::new();
    let base = format!("http://{HTTP}");
    for _ in 0..300 {
        if http.get(format!("{base}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let db = truevault_control_plane::storage::Db::connect(
        &format!("sqlite://{}?mode=rw", data.join("truevault.db").display()),
        4,
    )
    .await
    .unwrap();

    let mut tokens = Vec::with_capacity(agents);
    for i in 0..agents {
        tokens.push(
            truevault_e2e::in_process::server_with_token(&db, &format!("fleet-{i}"), "10.8.0.0/16")
                .await,
        );
    }
    let ca = std::fs::read_to_string(data.join("node-ca.pem")).unwrap();
    let (rss_before, _) = proc_stats(pid);

    // Enroll and connect every agent.
    let received: Received = Arc::default();
    let started = Instant::now();
    let streams: Vec<()> = futures_util::stream::iter(tokens)
        .map(|(server_id, token)| {
            let ca = ca.clone();
            let received = Arc::clone(&received);
            async move { simulated_agent(ca, server_id, token, received).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(streams.len(), agents);
    loop {
        let (online,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM vpn_servers WHERE status = 'online'")
                .fetch_one(db.pool())
                .await
                .unwrap();
        if usize::try_from(online).unwrap() >= agents {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_connected, cpu_0) = proc_stats(pid);

    // Idle: one heartbeat interval with every stream open.
    let idle_start = Instant::now();
    tokio::time::sleep(HEARTBEAT).await;
    let (_, cpu_1) = proc_stats(pid);
    let idle_cpu = (cpu_1 - cpu_0) / idle_start.elapsed().as_secs_f64() * 100.0;

    // Device adds spread over the fleet; time from the REST call to the node's receipt. One
    // at a time (the push path alone), then 16 at a time (throughput, with queueing).
    let users = support::business_users(&http, &base, &db, 20).await;
    let mut rounds = Vec::new();
    for (round, concurrency) in [(0usize, 1usize), (1, 16)] {
        let offset = 1_000_000 + round * adds;
        rounds.push((
            concurrency,
            add_round(
                &http,
                &base,
                &users,
                &received,
                pid,
                offset,
                adds,
                concurrency,
            )
            .await,
        ));
    }
    let _ = child.kill();
    let _ = child.wait();
    let mib = |kb: f64| kb / 1024.0;
    vec![
        String::new(),
        format!("## {agents} simulated agents on one control plane (SQLite, one process)"),
        String::new(),
        "| measure | value |".into(),
        "|---|---|".into(),
        format!("| enroll + connect all (64 at a time) | {connect_secs:.1} s |"),
        format!("| control plane RSS before / with all streams open | {:.0} MiB / {:.0} MiB ({:.1} KiB a stream) |",
            mib(rss_before), mib(rss_connected), (rss_connected - rss_before) / agents as f64),
        format!("| control plane CPU, idle with heartbeats every {}s | {idle_cpu:.1}% of one core |", HEARTBEAT.as_secs()),
    ]
    .into_iter()
    .chain(rounds.into_iter().map(|(c, r)| {
        format!(
            "| {adds} device adds, {c} at a time: rate, control plane CPU; REST call → node has the change p50 / p99 ({} delivered) | {:.0}/s, {:.0}% of one core; {:.2} ms / {:.2} ms |",
            r.delivered, r.rate, r.cpu_percent, r.p50_ms, r.p99_ms
        )
    }))
    .collect()
}

struct Round {
    rate: f64,
    cpu_percent: f64,
    p50_ms: f64,
    p99_ms: f64,
    delivered: usize,
}

#[allow(clippy::too_many_arguments)]
async fn add_round(
    http: &reqwest::Client,
    base: &str,
    users: &[String],
    received: &Received,
    pid: u32,
    offset: usize,
    adds: usize,
    concurrency: usize,
) -> Round {
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let (_, cpu_0) = proc_stats(pid);
    let started = Instant::now();
    futures_util::stream::iter(0..adds)
        .map(|i| {
            let key = support::device_key(offset + i);
            let req = http
                .post(format!("{base}/api/v1/devices"))
                .bearer_auth(&users[i % users.len()])
                .json(&json!({ "public_key": key, "name": format!("f{}", offset + i) }));
            let sent = Arc::clone(&sent);
            async move {
                sent.lock().unwrap().insert(key, Instant::now());
                let response = req.send().await.unwrap();
                assert_eq!(response.status(), 201);
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
    let secs = started.elapsed().as_secs_f64();
    let (_, cpu_1) = proc_stats(pid);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = {
            let sent = sent.lock().unwrap();
            let received = received.lock().unwrap();
            sent.keys().all(|k| received.contains_key(k))
        };
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut latencies: Vec<Duration> = {
        let sent = sent.lock().unwrap();
        let received = received.lock().unwrap();
        sent.iter()
            .filter_map(|(k, t)| received.get(k).map(|r| r.saturating_duration_since(*t)))
            .collect()
    };
    latencies.sort();
    Round {
        rate: adds as f64 / secs,
        cpu_percent: (cpu_1 - cpu_0) / secs * 100.0,
        p50_ms: percentile_ms(&latencies, 0.5),
        p99_ms: percentile_ms(&latencies, 0.99),
        delivered: latencies.len(),
    }
}

/// Enrolls, opens a Sync stream and keeps it: acknowledges everything, records when each
/// upserted key arrives, and sends a heartbeat every interval.
async fn simulated_agent(ca: String, server_id: i64, token: String, received: Received) {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec();
    let wg = support::device_key(5_000_000 + usize::try_from(server_id).unwrap());
    let mut anonymous = client(&ca, None).await;
    let enrolled = anonymous
        .enroll(EnrollRequest {
            token,
            csr_der: csr,
            wireguard_public_key: wg,
            hostname: "sim".into(),
            agent_version: "sim".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let cert = truevault_agent::keys::pem("CERTIFICATE", &enrolled.certificate_der);
    let mut node = client(&ca, Some((cert, key.serialize_pem()))).await;
    let (tx, rx) = mpsc::channel(8);
    let hello = Hello {
        applied_revision: 0,
        interface: None,
        agent_version: "sim".into(),
        heartbeat_interval_ms: u32::try_from(HEARTBEAT.as_millis()).unwrap(),
    };
    tx.send(message(agent_message::Body::Hello(hello)))
        .await
        .unwrap();
    let mut inbound = node
        .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tokio::spawn(async move {
        let mut beat = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                m = inbound.message() => {
                    let Ok(Some(m)) = m else { return };
                    let revision = match m.body {
                        Some(control_message::Body::Snapshot(s)) => s.revision,
                        Some(control_message::Body::Changes(c)) => {
                            let now = Instant::now();
                            let mut seen = received.lock().unwrap();
                            for change in &c.changes {
                                if let Some(peer) = &change.peer {
                                    seen.entry(peer.public_key.clone()).or_insert(now);
                                }
                            }
                            c.revision
                        }
                        _ => continue,
                    };
                    let ack = Ack { revision, errors: vec![] };
                    if tx.send(message(agent_message::Body::Ack(ack))).await.is_err() { return; }
                }
                _ = beat.tick() => {
                    let health = NodeHealth { interface_up: true, cpu_count: 2, load1: 0.1, ..NodeHealth::default() };
                    let hb = Heartbeat { health: Some(health), peers: vec![] };
                    if tx.send(message(agent_message::Body::Heartbeat(hb))).await.is_err() { return; }
                }
            }
        }
    });
}

fn message(body: agent_message::Body) -> AgentMessage {
    AgentMessage { body: Some(body) }
}

async fn client(ca: &str, identity: Option<(String, String)>) -> NodeServiceClient<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(format!("https://{GRPC}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    NodeServiceClient::new(channel)
}

/// (resident memory in KiB, user + system CPU seconds) of a process.
fn proc_stats(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    (rss, ticks / 100.0)
}
