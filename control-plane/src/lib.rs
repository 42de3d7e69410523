//! TrueVault VPN control plane.
//!
//! Split by domain (`accounts`, `automation`, ...) with thin transport edges (`api`). Domain
//! functions own their transactions; the edges parse, call one domain function, and map the
//! result. See `docs/architecture.md`.

pub mod accounts;
pub mod api;
pub mod audit;
pub mod automation;
pub mod billing;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod dedicated;
pub mod devices;
pub mod error;
mod fsutil;
pub mod grpc;
pub mod identities;
pub mod metrics;
pub mod nodes;
pub mod secret;
pub mod server;
pub mod servers;
pub mod storage;

pub use error::{Error, Result};
