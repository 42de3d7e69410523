//! Dedicated servers: the pool of pre-provisioned servers, the orders that claim them (the
//! seed's `server_pool` and `server_provisioning_queue`), and the runner that creates a new
//! instance (through the `truevault-provisioning` crate) for an order the pool cannot serve.

mod instance;
mod lifecycle;
pub mod orders;
pub mod pool;
pub mod purchases;
pub mod refund;
pub mod release;
pub mod runner;
