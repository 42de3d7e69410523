//! Dedicated servers: the pool of pre-provisioned servers and the orders that claim them (the
//! seed's `server_pool` and `server_provisioning_queue`). Creating new instances for orders the
//! pool cannot serve is the `truevault-provisioning` crate's job, driven from here.

pub mod orders;
pub mod pool;
