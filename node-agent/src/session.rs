//! The agent's side of one `Sync` stream: hello with the applied revision, then snapshots and
//! changes applied as they arrive (each acknowledged with its per-peer errors), and a
//! heartbeat every stats interval with node health and the counters that changed.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use truevault_proto::v1::{
    Ack, AgentMessage, Backend, Heartbeat, Hello, InterfaceFacts, NodeHealth, Peer, PeerError,
    PeerStats, agent_message, control_message,
};

use crate::agent::Agent;
use crate::control::Client;
use crate::error::{Error, Result};
use crate::peers;
use crate::wireguard::{self, PeerCounters};

/// Runs one stream until it ends. Returns `Ok` when the control plane closed it.
pub async fn run(agent: &Agent, mut client: Client) -> Result<()> {
    let (tx, rx) = mpsc::channel::<AgentMessage>(16);
    let interval = agent.config.stats_interval();
    tx.send(hello(agent).await)
        .await
        .map_err(|_| Error::Protocol("stream closed".into()))?;
    let mut inbound = client
        .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    agent.metrics.connected.set(1);
    tracing::info!("connected to the control plane");

    // The control plane pings every heartbeat interval: silence for 3 of them is a dead link.
    let silence = interval * 3 + Duration::from_secs(5);
    let mut deadline = Instant::now() + silence;
    let mut beats = tokio::time::interval(interval);
    let mut sent_counters: BTreeMap<String, PeerCounters> = BTreeMap::new();
    let mut snapshot: Vec<Peer> = Vec::new();
    loop {
        tokio::select! {
            message = inbound.message() => {
                let Some(message) = message? else { return Ok(()) };
                deadline = Instant::now() + silence;
                let Some(body) = message.body else { continue };
                let ack = match body {
                    control_message::Body::Snapshot(chunk) => {
                        if chunk.chunk == 1 {
                            snapshot.clear();
                        }
                        snapshot.extend(chunk.peers);
                        if chunk.chunk < chunk.chunks {
                            continue;
                        }
                        let desired = peers::from_peers(&std::mem::take(&mut snapshot));
                        tracing::info!(revision = chunk.revision, peers = desired.len(), "snapshot");
                        Some((chunk.revision, agent.apply(desired, chunk.revision).await?))
                    }
                    control_message::Body::Changes(changes) => {
                        Some((changes.revision, agent.apply_changes(&changes.changes, changes.revision).await?))
                    }
                    control_message::Body::Ping(_) => None,
                };
                if let Some((revision, failed)) = ack {
                    let errors = failed
                        .into_iter()
                        .map(|(public_key, message)| PeerError { public_key, message })
                        .collect();
                    let ack = agent_message::Body::Ack(Ack { revision, errors });
                    if tx.send(AgentMessage { body: Some(ack) }).await.is_err() {
                        return Ok(());
                    }
                }
            }
            _ = beats.tick() => {
                let beat = heartbeat(agent, &mut sent_counters).await;
                if tx.send(AgentMessage { body: Some(agent_message::Body::Heartbeat(beat)) }).await.is_err() {
                    return Ok(());
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                return Err(Error::Protocol("no message from the control plane in 3 intervals".into()));
            }
        }
    }
}

async fn hello(agent: &Agent) -> AgentMessage {
    let reading = agent.iface.read().await.ok();
    let (revision, peer_count) = agent.store.with(|a| (a.revision, a.peers.len()));
    AgentMessage {
        body: Some(agent_message::Body::Hello(Hello {
            applied_revision: revision,
            interface: Some(InterfaceFacts {
                name: agent.iface.name.clone(),
                public_key: agent.wg_public_key.clone(),
                listen_port: reading.map_or(0, |r| u32::from(r.listen_port)),
                backend: match agent.iface.backend {
                    wireguard::Backend::Kernel => Backend::Kernel,
                    wireguard::Backend::Userspace => Backend::Userspace,
                } as i32,
                peer_count: u32::try_from(peer_count).unwrap_or(u32::MAX),
            }),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            heartbeat_interval_ms: u32::try_from(agent.config.stats_interval().as_millis())
                .unwrap_or(u32::MAX),
        })),
    }
}

/// Node health and the counters that changed since the last heartbeat on this stream.
async fn heartbeat(agent: &Agent, sent: &mut BTreeMap<String, PeerCounters>) -> Heartbeat {
    let reading = agent.iface.read().await;
    let up = reading.is_ok();
    agent
        .metrics
        .interface_up
        .store(up, std::sync::atomic::Ordering::Relaxed);
    let mut peers = Vec::new();
    let mut peer_count = 0;
    if let Ok(reading) = reading {
        peer_count = reading.peers.len();
        for (key, counters) in reading.counters {
            if sent.get(&key) != Some(&counters) {
                peers.push(PeerStats {
                    public_key: key.clone(),
                    rx_bytes: counters.rx_bytes,
                    tx_bytes: counters.tx_bytes,
                    last_handshake_ms: counters.last_handshake_ms,
                    endpoint: counters.endpoint.map(|e| e.to_string()).unwrap_or_default(),
                });
                sent.insert(key, counters);
            }
        }
    }
    let (load1, mem_used, mem_total) = host_load();
    Heartbeat {
        health: Some(NodeHealth {
            uptime_seconds: agent.started.elapsed().as_secs(),
            load1,
            memory_used_bytes: mem_used,
            memory_total_bytes: mem_total,
            interface_up: up,
            peer_count: u32::try_from(peer_count).unwrap_or(u32::MAX),
            cpu_count: std::thread::available_parallelism()
                .map_or(1, |n| u32::try_from(n.get()).unwrap_or(1)),
        }),
        peers,
    }
}

/// 1-minute load and memory (used, total) from /proc.
fn host_load() -> (f64, u64, u64) {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> u64 {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let total = field("MemTotal:");
    let available = field("MemAvailable:");
    (load, total.saturating_sub(available), total)
}
