//! The gRPC contract between node agents and the control plane (`Enroll`, `Renew`, `Sync`).
//!
//! Empty until the node channel is built; the crate exists so the workspace has its final shape.
