//! The TrueVault node agent: owns a VPN server's WireGuard interface and keeps its peers in
//! line with the control plane over an mTLS gRPC stream (replacing the seed's Flask peer API).
//!
//! - `config`: settings (TOML, `TRUEVAULT_AGENT_*` variables).
//! - `keys`: the WireGuard and TLS keys, made on the node, files 0600.
//! - `control`: the mTLS channel, enrollment and certificate renewal.
//! - `wireguard`: the interface on its own thread (kernel or userspace backend); `uapi`: the
//!   userspace device's control socket, for changes in batches.
//! - `peers`: peer sets and per-peer differences; `state`: the applied state, saved coalesced.
//! - `agent`: the tasks; `session`: one Sync stream; `health`: `/healthz` and `/metrics`.

pub mod agent;
pub mod config;
pub mod control;
pub mod error;
pub mod health;
pub mod keys;
pub mod peers;
pub mod session;
pub mod state;
mod uapi;
pub mod wireguard;

pub use agent::Agent;
pub use config::AgentConfig;
pub use error::{Error, Result};
