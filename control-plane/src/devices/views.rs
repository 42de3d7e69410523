//! What the device routes take and give: the requests and the views of a device.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    /// Default: a memorable two-word name.
    pub name: Option<String>,
    /// Preferred region (default: the user's first identity, else the first region).
    pub region: Option<String>,
    /// A specific server (its id from `GET /api/v1/servers`).
    pub server_id: Option<String>,
    /// The device's WireGuard public key. Without it a key pair is generated and the private
    /// key is returned once (never stored).
    pub public_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeviceServer {
    pub id: String,
    pub region: String,
    pub country: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeviceView {
    pub id: String,
    pub name: String,
    /// `pending` until the server has applied it, then `active`; `disabled` when the plan or
    /// account does not allow it.
    pub status: String,
    pub disabled_reason: Option<String>,
    pub public_key: String,
    pub ipv4_address: String,
    pub ipv6_address: Option<String>,
    pub server: DeviceServer,
    pub last_handshake_at: Option<String>,
    pub rx_bytes: i64,
    pub tx_bytes: i64,
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedDevice {
    pub device: DeviceView,
    /// The wg-quick configuration; with the private key when it was generated here.
    pub config: String,
    /// Only when generated here: shown once, never stored.
    pub private_key: Option<String>,
    pub is_vip: bool,
    pub current_devices: i64,
    /// Null: unlimited.
    pub max_devices: Option<i64>,
    pub remaining: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameDevice {
    pub name: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// The new public key; without it a pair is generated and the private key returned once.
    pub public_key: Option<String>,
}
