//! Cloud providers behind one trait (Contabo first) and the cloud-init document that turns a
//! fresh server into an enrolled TrueVault node.
//!
//! - `provider`: the [`Provider`] trait and what it speaks of (instances and their status).
//! - `create_once`: creating an instance without ever buying two for one order, whatever the
//!   provider answers (timeouts, 5xx, rate limits, a lost response).
//! - `contabo`: Contabo's API, to its OpenAPI spec (password grant, `x-request-id`, image
//!   lookup, defensive error parsing, backoff).
//! - `cloud_init`: the `#cloud-config` document, rendered from `deploy/cloud-init.yaml.j2`.

pub mod cloud_init;
pub mod contabo;
pub mod create_once;
mod error;
#[cfg(feature = "fake")]
pub mod fake;
pub mod provider;
mod secret;

pub use create_once::{RetryPolicy, create_once, create_once_resuming};
pub use error::{Error, Result};
pub use provider::{CreateInstance, Instance, InstanceStatus, Provider};
pub use secret::Secret;
