//! The control plane's library in this process, on loopback and without namespaces: for the
//! tests and benchmarks that drive it directly.

use std::path::Path;

use truevault_control_plane::audit::Actor;
use truevault_control_plane::clock::{Clock as _, SystemClock};
use truevault_control_plane::config::Settings;
use truevault_control_plane::nodes::enrollment;
use truevault_control_plane::servers::{self, ServerInput};
use truevault_control_plane::storage::Db;

/// Settings on ephemeral loopback ports with data under `dir`: no background workers (the
/// caller drives what it needs) and no per-address rate limits (every client is 127.0.0.1).
pub fn settings(dir: &Path) -> Settings {
    Settings {
        data_dir: dir.join("control"),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        auth_rate_limit_burst: u32::MAX,
        auth_rate_limit_per_minute: u32::MAX,
        workers_enabled: false,
        ..Settings::default()
    }
}

/// An offline server in `us-east` (its agent brings it online) and a one-hour enrollment
/// token for it.
pub async fn server_with_token(db: &Db, name: &str, subnet: &str) -> (i64, String) {
    let input = ServerInput {
        name: Some(name.into()),
        region: Some("us-east".into()),
        country: None,
        endpoint_host: Some("127.0.0.1".into()),
        endpoint_port: None,
        public_key: None,
        ipv4_subnet: Some(subnet.into()),
        ipv6_subnet: None,
        server_type: None,
        dedicated_user_id: None,
        status: Some("offline".into()),
    };
    let now = SystemClock.now_ms();
    let id = servers::create(db, input, Actor::Cli, None, now)
        .await
        .unwrap()
        .id;
    let issued = enrollment::issue(db, id, 3_600_000, Actor::Cli, None, now)
        .await
        .unwrap();
    (id, issued.token.expose().to_owned())
}
