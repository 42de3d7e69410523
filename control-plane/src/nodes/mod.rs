//! Nodes: the VPN servers' agents and their channel to the control plane. This part holds
//! enrollment tokens; the certificate authority and the `Sync` sessions build on it.

pub mod ca;
pub mod enrollment;
