//! Cloud providers behind one trait (Contabo first) and cloud-init rendering.
//!
//! Empty until provisioning is built; the crate exists so the workspace has its final shape.
