//! The agent: its interface, its applied state, and the tasks that keep them in line with the
//! control plane. Peers are only ever changed under one lock, by the smallest per-peer
//! difference; the interface is never torn down, whatever happens to the connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use crate::config::AgentConfig;
use crate::control::{self, Client};
use crate::error::{Error, Result};
use crate::health::Metrics;
use crate::keys::{self, StateDir};
use crate::peers::{self, PeerSet};
use crate::state::{InterfacePlan, Store};
use crate::wireguard::Interface;

/// Reconnection backoff: doubling from this, capped at [`BACKOFF_MAX`], with jitter.
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Agent {
    pub config: AgentConfig,
    pub dir: StateDir,
    pub store: Store,
    pub iface: Interface,
    pub metrics: Arc<Metrics>,
    pub wg_public_key: String,
    pub started: std::time::Instant,
    /// Held while peers change: the session's updates and the periodic reconcile never
    /// interleave (an interleaving could add a peer that exists, which the userspace device
    /// does not survive).
    apply_lock: Mutex<()>,
}

impl Agent {
    /// Enrolls if needed, opens the interface with the applied state, and reconciles it.
    pub async fn start(config: AgentConfig) -> Result<Self> {
        let dir = StateDir::open(&config.state_dir)?;
        let store = Store::load(dir.clone())?;
        let wg_key = dir.wireguard_key()?;
        if !control::is_enrolled(&dir) {
            let token = config.token_file().ok_or(Error::NotEnrolled)?;
            if !token.exists() {
                return Err(Error::NotEnrolled);
            }
            control::enroll(&config, &dir, &store, &token, &wg_key).await?;
        }
        let plan = interface_plan(&config, &store.with(|a| a.interface.clone()));
        let peers = store.with(|a| a.peers.clone());
        let (iface, created) =
            Interface::open(&config.interface, config.backend, &wg_key, &plan, &peers).await?;
        tracing::info!(
            interface = %config.interface,
            backend = ?iface.backend,
            created,
            peers = peers.len(),
            "interface ready"
        );
        let agent = Self {
            metrics: Arc::new(Metrics::default()),
            wg_public_key: keys::public_key(&wg_key)?,
            started: std::time::Instant::now(),
            apply_lock: Mutex::new(()),
            config,
            dir,
            store,
            iface,
        };
        agent.metrics.peers.set(gauge(peers.len()));
        agent
            .metrics
            .applied_revision
            .set(gauge(agent.store.with(|a| a.revision)));
        if !created {
            agent.reconcile().await?;
        }
        Ok(agent)
    }

    /// Makes the interface hold `desired` and records it (with `revision`) as applied.
    /// Returns the peers that failed.
    pub async fn apply(&self, desired: PeerSet, revision: u64) -> Result<Vec<(String, String)>> {
        let _turn = self.apply_lock.lock().await;
        let previous = self.store.with(|a| a.peers.clone());
        let diff = peers::diff(&previous, &desired);
        let failed = self.iface.apply(diff).await?;
        self.store.update(|a| {
            a.peers = desired;
            a.revision = revision;
        });
        self.applied(failed, revision).await
    }

    /// Applies a stream's changes (only the peers they touch) and records `revision`.
    pub async fn apply_changes(
        &self,
        changes: &[truevault_proto::v1::PeerChange],
        revision: u64,
    ) -> Result<Vec<(String, String)>> {
        let _turn = self.apply_lock.lock().await;
        let (diff, updates) = self.store.with(|a| peers::change_diff(&a.peers, changes));
        let failed = self.iface.apply(diff).await?;
        self.store.update_peers(revision, updates);
        self.applied(failed, revision).await
    }

    /// After recording an application (apply lock held): if peers failed, the interface may
    /// differ from what was assumed, so compare it for real; then the metrics.
    async fn applied(
        &self,
        mut failed: Vec<(String, String)>,
        revision: u64,
    ) -> Result<Vec<(String, String)>> {
        if !failed.is_empty() {
            tracing::warn!(failed = failed.len(), "some peers failed; reconciling");
            failed = self.reconcile_locked().await?;
        }
        self.metrics
            .peers
            .set(gauge(self.store.with(|a| a.peers.len())));
        self.metrics.applied_revision.set(gauge(revision));
        self.metrics.apply_errors.inc_by(failed.len() as u64);
        Ok(failed)
    }

    /// Compares the interface's real peers with the applied ones and fixes the difference.
    pub async fn reconcile(&self) -> Result<Vec<(String, String)>> {
        let _turn = self.apply_lock.lock().await;
        self.reconcile_locked().await
    }

    async fn reconcile_locked(&self) -> Result<Vec<(String, String)>> {
        let actual = self.iface.read().await?.peers;
        let desired = self.store.with(|a| a.peers.clone());
        let diff = peers::diff(&actual, &desired);
        if diff.is_empty() {
            return Ok(Vec::new());
        }
        let repairs = diff.remove.len() + diff.add.len();
        tracing::warn!(repairs, "the interface differed from the applied state");
        self.metrics.reconcile_repairs.inc_by(repairs as u64);
        self.iface.apply(diff).await
    }

    /// Runs until `shutdown` completes: the Sync session (reconnecting with backoff), the
    /// periodic reconcile, the state writer and the health endpoint. Then saves the state.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        let agent = Arc::new(self);
        let health = crate::health::bind(agent.config.health_listen).await?;
        let tasks = [
            tokio::spawn(agent.store.clone().run_writer()),
            tokio::spawn(crate::health::serve(
                health,
                Arc::clone(&agent.metrics),
                agent.store.clone(),
            )),
            tokio::spawn(Arc::clone(&agent).reconcile_forever()),
            tokio::spawn(Arc::clone(&agent).connect_forever()),
            tokio::spawn(Arc::clone(&agent).renew_forever()),
        ];
        tokio::select! {
            () = shutdown => {}
            () = agent.device_stopped() => {
                // A signal boringtun caught first, or a crash: either way end cleanly, and let
                // the service manager start the agent again (which recreates the device).
                tracing::warn!("the userspace WireGuard device stopped; exiting");
            }
        }
        for task in &tasks {
            task.abort();
        }
        // The interface stays as it is (kernel) or goes with the process (userspace); peers
        // are never removed on the way out.
        agent.store.flush()?;
        tracing::info!("stopped");
        Ok(())
    }

    /// Completes when the interface's device is found stopped (checked twice a second).
    async fn device_stopped(&self) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let iface = self.iface.clone();
            if !tokio::task::spawn_blocking(move || iface.alive())
                .await
                .unwrap_or(true)
            {
                return;
            }
        }
    }

    async fn reconcile_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.reconcile_interval());
        tick.tick().await;
        loop {
            tick.tick().await;
            match self.reconcile().await {
                Ok(_) => self
                    .metrics
                    .interface_up
                    .store(true, std::sync::atomic::Ordering::Relaxed),
                Err(e) => {
                    self.metrics
                        .interface_up
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!(error = %e, "reconcile failed");
                }
            }
        }
    }

    /// A stream can outlive a certificate: renewal is also checked every few hours, not only
    /// when connecting.
    async fn renew_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(6 * 3600));
        loop {
            tick.tick().await;
            if let Err(e) = control::renew_if_due(&self.config, &self.dir, &self.store).await {
                tracing::warn!(error = %e, "certificate renewal failed; retrying later");
            }
        }
    }

    async fn connect_forever(self: Arc<Self>) {
        let mut failures = 0u32;
        loop {
            let started = std::time::Instant::now();
            let result = self.connect_once().await;
            self.metrics.connected.set(0);
            match result {
                Ok(()) => tracing::info!("control plane closed the stream"),
                Err(e) => {
                    tracing::warn!(error = %e, "control plane unreachable; peers stay as they are")
                }
            }
            // A stream that lasted a while resets the backoff.
            if started.elapsed() > Duration::from_secs(30) {
                failures = 0;
            }
            self.metrics.reconnects.inc();
            tokio::time::sleep(backoff(failures)).await;
            failures = failures.saturating_add(1);
        }
    }

    async fn connect_once(&self) -> Result<()> {
        control::renew_if_due(&self.config, &self.dir, &self.store).await?;
        let client: Client = control::connect(&self.config, &self.dir, true).await?;
        crate::session::run(self, client).await
    }
}

/// The interface as configured, or as the control plane assigned it.
fn interface_plan(config: &AgentConfig, assigned: &InterfacePlan) -> InterfacePlan {
    InterfacePlan {
        addresses: if config.addresses.is_empty() {
            assigned.addresses.clone()
        } else {
            config.addresses.clone()
        },
        listen_port: config.listen_port.unwrap_or(if assigned.listen_port == 0 {
            51820
        } else {
            assigned.listen_port
        }),
        mtu: config.mtu,
    }
}

/// Doubling from 250 ms to 10 s, then a random point in its upper half (so a fleet that lost
/// the control plane together does not return in one wave).
pub fn backoff(failures: u32) -> Duration {
    let base = BACKOFF_START
        .saturating_mul(1u32 << failures.min(8))
        .min(BACKOFF_MAX);
    let mut byte = [0u8; 1];
    let _ = aws_lc_rs::rand::fill(&mut byte);
    base / 2 + base / 2 * u32::from(byte[0]) / 255
}

fn gauge(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_about_ten_seconds_with_jitter() {
        assert!(backoff(0) <= Duration::from_millis(250));
        assert!(backoff(0) >= Duration::from_millis(125));
        for failures in [6, 10, 1_000] {
            let wait = backoff(failures);
            assert!(
                wait >= Duration::from_secs(5) && wait <= BACKOFF_MAX,
                "{wait:?}"
            );
        }
    }

    #[test]
    fn configured_interface_settings_win_over_assigned_ones() {
        let assigned = InterfacePlan {
            addresses: vec!["10.8.0.1/16".into()],
            listen_port: 51821,
            mtu: 1500,
        };
        let mut config = AgentConfig::default();
        assert_eq!(interface_plan(&config, &assigned).listen_port, 51821);
        assert_eq!(interface_plan(&config, &assigned).mtu, 1420);
        config.listen_port = Some(4000);
        config.addresses = vec!["10.9.0.1/24".into()];
        let plan = interface_plan(&config, &assigned);
        assert_eq!(
            (plan.listen_port, plan.addresses),
            (4000, vec!["10.9.0.1/24".to_owned()])
        );
    }
}
