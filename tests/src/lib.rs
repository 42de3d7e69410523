//! Workspace end-to-end tests: control plane, node agents, a fake cloud provider, an SMTP sink
//! and real WireGuard clients in network namespaces. The control plane's own API tests live in
//! `control-plane/tests/` for now.
