//! A cloud provider as the control plane needs it: create a server from a cloud-init document,
//! watch it come up, find it again by its name, and cancel or reinstall it.

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use crate::error::Result;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What to create. `display_name` must be unique to the order (`tv-order-<id>`): it is how a
/// create whose answer was lost is found again.
#[derive(Debug, Clone)]
pub struct CreateInstance {
    pub display_name: String,
    /// Our region name (`us-east`); each provider maps it to its own.
    pub region: String,
    /// The `#cloud-config` document (it carries a single-use enrollment token).
    pub user_data: String,
    /// Sent along for the provider's logs (the order id).
    pub trace_id: Option<String>,
}

/// An instance as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The provider's id, as text whatever its type there.
    pub id: String,
    pub display_name: String,
    pub status: InstanceStatus,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// The provider's own explanation when the status is an error.
    pub error_message: Option<String>,
}

impl Instance {
    /// Running with a public IPv4: the node can boot its agent and enroll.
    pub fn is_up(&self) -> bool {
        self.status == InstanceStatus::Running && self.ipv4.is_some()
    }
}

/// An instance's lifecycle, with every state a provider may add kept rather than refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceStatus {
    Provisioning,
    Installing,
    Running,
    Stopped,
    /// The provider cannot go on without a person (an error, no stock, a verification, an
    /// unpaid bill): the order fails visibly and the operator is told.
    NeedsOperator(String),
    Uninstalled,
    /// Anything else, as the provider spelled it; waited on like `provisioning`.
    Other(String),
}

impl InstanceStatus {
    pub fn is_terminal_failure(&self) -> bool {
        matches!(self, Self::NeedsOperator(_) | Self::Uninstalled)
    }
}

/// One cloud provider. Implementations map their API onto these calls; the rules that keep
/// one order from buying two servers live in [`crate::create_once`], not here.
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// Creates an instance. Never retried inside after a failure that may have created it.
    fn create<'a>(&'a self, request: &'a CreateInstance) -> BoxFuture<'a, Result<Instance>>;

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Instance>>;

    /// The instance with exactly this display name, if any; [`crate::Error::Duplicates`] if
    /// several.
    fn find_by_name<'a>(&'a self, display_name: &'a str)
    -> BoxFuture<'a, Result<Option<Instance>>>;

    /// Ends the instance (at the provider's contract end, for Contabo).
    fn cancel<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Wipes the instance and boots it again with a new cloud-init document (its IP stays):
    /// how a pool server is recycled.
    fn reinstall<'a>(&'a self, id: &'a str, user_data: &'a str) -> BoxFuture<'a, Result<()>>;
}
