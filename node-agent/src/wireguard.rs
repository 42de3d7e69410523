//! The WireGuard interface, driven through defguard_wireguard_rs on a thread of its own.
//!
//! Why a thread: every call into the library is blocking I/O; the userspace device is bound to
//! the network namespace and signal mask of the thread that creates it (boringtun blocks
//! SIGINT/SIGTERM there, so that must not be a runtime thread); and a dead userspace device can
//! block a read forever, so every call is awaited with a timeout from async code.

use std::net::SocketAddr;
use std::str::FromStr as _;
use std::time::{Duration, SystemTime};

use defguard_wireguard_rs::host::Host;
use defguard_wireguard_rs::net::IpAddrMask;
use defguard_wireguard_rs::peer::Peer;
use defguard_wireguard_rs::{
    InterfaceConfiguration, Kernel, Userspace, WGApi, WireguardInterfaceApi,
};
use tokio::sync::oneshot;

use crate::config::BackendChoice;
use crate::error::{Error, Result};
use crate::keys::{Secret, parse_key};
use crate::peers::{Diff, PeerSet};
use crate::state::InterfacePlan;
use crate::uapi;

/// How long one call may take; configuring 10,000 peers at once takes about 1.5 s here.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Kernel,
    Userspace,
}

enum Api {
    Kernel(WGApi<Kernel>),
    Userspace(WGApi<Userspace>),
}

impl Api {
    fn get(&self) -> &dyn WireguardInterfaceApi {
        match self {
            Self::Kernel(api) => api,
            Self::Userspace(api) => api,
        }
    }
}

type Job = Box<dyn FnOnce(&Api) + Send>;

/// A handle to the interface's thread. Dropping every handle ends the thread; with the
/// userspace backend that also removes the interface (the kernel one stays up).
#[derive(Debug, Clone)]
pub struct Interface {
    jobs: std::sync::mpsc::Sender<Job>,
    pub backend: Backend,
    pub name: String,
}

/// One peer's counters as read from the interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCounters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub last_handshake_ms: i64,
    pub endpoint: Option<SocketAddr>,
}

/// What the interface really holds.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    pub listen_port: u16,
    pub peers: PeerSet,
    pub counters: std::collections::BTreeMap<String, PeerCounters>,
}

impl Interface {
    /// Opens the interface: an existing kernel interface is adopted as it is (the caller
    /// reconciles it); otherwise one is created and configured with `peers` in one call.
    /// Returns whether it was created.
    pub async fn open(
        name: &str,
        choice: BackendChoice,
        key: &Secret,
        plan: &InterfacePlan,
        peers: &PeerSet,
    ) -> Result<(Self, bool)> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let (ready_tx, ready) = oneshot::channel();
        let config = InterfaceConfiguration {
            name: name.to_owned(),
            prvkey: key.expose().to_owned(),
            addresses: plan
                .addresses
                .iter()
                .map(|a| {
                    IpAddrMask::from_str(a)
                        .map_err(|_| Error::Config(format!("not an interface address: {a}")))
                })
                .collect::<Result<_>>()?,
            port: plan.listen_port,
            peers: peers
                .iter()
                .map(|(k, ips)| to_peer(k, ips))
                .collect::<Result<_>>()?,
            mtu: Some(plan.mtu),
            fwmark: None,
        };
        let thread_name = name.to_owned();
        std::thread::Builder::new()
            .name(format!("wg-{name}"))
            .spawn(move || {
                let opened = create(&thread_name, choice, &config);
                let api = match opened {
                    Ok((api, backend, created)) => {
                        let _ = ready_tx.send(Ok((backend, created)));
                        api
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = queue.recv() {
                    job(&api);
                }
                tracing::info!(interface = %thread_name, "interface thread ends");
            })
            .map_err(|e| Error::WireGuard(format!("cannot start the interface thread: {e}")))?;
        let (backend, created) = tokio::time::timeout(CALL_TIMEOUT, ready)
            .await
            .map_err(|_| Error::WireGuard("creating the interface timed out".into()))?
            .map_err(|_| Error::WireGuard("the interface thread died".into()))??;
        Ok((
            Self {
                jobs,
                backend,
                name: name.to_owned(),
            },
            created,
        ))
    }

    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Api) -> T + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |api| {
                let _ = tx.send(f(api));
            }))
            .map_err(|_| Error::WireGuard("the interface thread is gone".into()))?;
        tokio::time::timeout(CALL_TIMEOUT, rx)
            .await
            .map_err(|_| Error::WireGuard("the interface did not answer in time".into()))?
            .map_err(|_| Error::WireGuard("the interface thread died".into()))
    }

    /// Applies a difference. Returns the peers that failed, with the reason; one bad peer
    /// never stops the others.
    pub async fn apply(&self, diff: Diff) -> Result<Vec<(String, String)>> {
        if diff.is_empty() {
            return Ok(Vec::new());
        }
        let name = self.name.clone();
        self.call(move |api| match api {
            Api::Userspace(api) => apply_batched(&name, api, diff),
            Api::Kernel(api) => apply_each(api, diff),
        })
        .await
    }

    /// Whether the device still runs. The userspace device can stop under the agent: boringtun
    /// watches SIGINT and SIGTERM itself (a signalfd on its threads) and may read the service
    /// manager's SIGTERM before the agent's handler does, and a crashed device stops too. Its
    /// control socket stays open but nothing answers it any more, so ask it something.
    /// (A kernel interface outlives the agent anyway.)
    pub fn alive(&self) -> bool {
        self.backend == Backend::Kernel || uapi::answers(&self.name)
    }

    /// Reads the interface's real peers and counters.
    pub async fn read(&self) -> Result<Reading> {
        let host = self
            .call(|api| api.get().read_interface_data())
            .await?
            .map_err(|e| Error::WireGuard(e.to_string()))?;
        Ok(reading(&host))
    }
}

fn create(
    name: &str,
    choice: BackendChoice,
    config: &InterfaceConfiguration,
) -> Result<(Api, Backend, bool)> {
    let wg =
        |e: defguard_wireguard_rs::error::WireguardInterfaceError| Error::WireGuard(e.to_string());
    if choice != BackendChoice::Userspace {
        let mut api = WGApi::<Kernel>::new(name).map_err(wg)?;
        if api.read_interface_data().is_ok() {
            // Left running by an earlier agent: adopt it, never recreate (that drops tunnels).
            return Ok((Api::Kernel(api), Backend::Kernel, false));
        }
        match api.create_interface() {
            Ok(()) => {
                api.configure_interface(config).map_err(wg)?;
                return Ok((Api::Kernel(api), Backend::Kernel, true));
            }
            Err(e) if choice == BackendChoice::Kernel => return Err(wg(e)),
            Err(e) => tracing::info!(error = %e, "no kernel WireGuard; using the userspace one"),
        }
    }
    let mut api = WGApi::<Userspace>::new(name).map_err(wg)?;
    api.create_interface().map_err(wg)?;
    api.configure_interface(config).map_err(wg)?;
    Ok((Api::Userspace(api), Backend::Userspace, true))
}

/// Peer by peer: a removal, then an addition (a changed peer is removed and added again).
fn apply_each(api: &dyn WireguardInterfaceApi, diff: Diff) -> Vec<(String, String)> {
    let mut failed = Vec::new();
    for key in diff.remove {
        let result = parse_key(&key).and_then(|k| {
            api.remove_peer(&k)
                .map_err(|e| Error::WireGuard(e.to_string()))
        });
        if let Err(e) = result {
            failed.push((key, e.to_string()));
        }
    }
    for (key, ips) in diff.add {
        let result = to_peer(&key, &ips).and_then(|p| {
            api.configure_peer(&p)
                .map_err(|e| Error::WireGuard(e.to_string()))
        });
        if let Err(e) = result {
            failed.push((key, e.to_string()));
        }
    }
    failed
}

/// The userspace device: every removal in one message, then every addition in another. A
/// refused message may have taken effect up to the peer at fault, so then the device is read
/// and what did not happen is done peer by peer, which names the peer at fault.
fn apply_batched(name: &str, api: &WGApi<Userspace>, diff: Diff) -> Vec<(String, String)> {
    let mut failed = Vec::new();
    let mut parsed = |key: &str, ips: &[String]| match to_peer(key, ips) {
        Ok(peer) => Some(peer),
        Err(e) => {
            failed.push((key.to_owned(), e.to_string()));
            None
        }
    };
    let removals: Vec<Peer> = diff.remove.iter().filter_map(|k| parsed(k, &[])).collect();
    let additions: Vec<Peer> = diff
        .add
        .iter()
        .filter_map(|(k, ips)| parsed(k, ips))
        .collect();
    let Err(e) = uapi::remove_all(name, &removals).and_then(|()| uapi::add_all(name, &additions))
    else {
        return failed;
    };
    tracing::warn!(error = %e, "the device refused a batched change; applying it peer by peer");
    let present = match api.read_interface_data() {
        Ok(host) => host.peers,
        Err(e) => {
            failed.extend(
                diff.remove
                    .into_iter()
                    .chain(diff.add.into_iter().map(|(k, _)| k))
                    .map(|k| (k, e.to_string())),
            );
            return failed;
        }
    };
    // Keys that did not parse are already among the failures.
    let on_device = |key: &str| parse_key(key).map(|k| present.contains_key(&k));
    let remove: Vec<String> = diff
        .remove
        .into_iter()
        .filter(|k| on_device(k).unwrap_or(false))
        .collect();
    let add = diff
        .add
        .into_iter()
        .filter(|(k, _)| on_device(k).is_ok_and(|on| !on || remove.contains(k)))
        .collect();
    let rest = Diff { remove, add };
    failed.extend(apply_each(api, rest));
    failed
}

fn to_peer(key: &str, ips: &[String]) -> Result<Peer> {
    let mut peer = Peer::new(parse_key(key)?);
    peer.set_allowed_ips(
        ips.iter()
            .map(|ip| {
                IpAddrMask::from_str(ip)
                    .map_err(|_| Error::Protocol(format!("not an allowed IP: {ip}")))
            })
            .collect::<Result<_>>()?,
    );
    Ok(peer)
}

fn reading(host: &Host) -> Reading {
    let mut out = Reading {
        listen_port: host.listen_port,
        ..Reading::default()
    };
    for (key, peer) in &host.peers {
        let key = key.to_string();
        let mut ips: Vec<String> = peer.allowed_ips.iter().map(ToString::to_string).collect();
        ips.sort();
        out.peers.insert(key.clone(), ips);
        // The userspace device reports the time a peer was added as its first "handshake"
        // (shared notes, pitfall 6); a peer that never sent anything has not shaken hands.
        let handshake = match peer.last_handshake {
            Some(at) if peer.rx_bytes > 0 => at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0)),
            _ => 0,
        };
        out.counters.insert(
            key,
            PeerCounters {
                rx_bytes: peer.rx_bytes,
                tx_bytes: peer.tx_bytes,
                last_handshake_ms: handshake,
                endpoint: peer.endpoint,
            },
        );
    }
    out
}
