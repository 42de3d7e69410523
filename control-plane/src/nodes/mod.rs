//! Nodes: the VPN servers' agents and their channel to the control plane: enrollment tokens,
//! the certificate authority, and the `Sync` sessions (their reads and writes, and the hub
//! that wakes them when peers change).

pub mod ca;
pub mod enrollment;
pub mod hub;
pub mod session;
