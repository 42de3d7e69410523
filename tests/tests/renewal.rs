//! Certificate renewal from the agent's side, against a real control plane over mTLS on
//! loopback (no WireGuard, no root): each renewal brings a new TLS key, and the renewed pair is
//! what authenticates the node from then on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use truevault_agent::AgentConfig;
use truevault_agent::control;
use truevault_agent::keys::{StateDir, TLS_KEY_FILE};
use truevault_agent::state::Store;
use truevault_control_plane::clock::{Clock as _, SystemClock};
use truevault_control_plane::server::Server;
use truevault_e2e::in_process;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_renewal_brings_a_new_key_and_the_new_pair_authenticates_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let settings = in_process::settings(dir.path());
    let server = Server::bind(&settings, Arc::new(SystemClock))
        .await
        .unwrap();
    let grpc_port = server.grpc_addr().unwrap().port();
    let db = server.state().accounts().db().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let now = SystemClock.now_ms();
    let (server_id, token) = in_process::server_with_token(&db, "renewing", "10.8.0.0/16").await;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();

    let config = AgentConfig {
        control_plane_url: format!("https://127.0.0.1:{grpc_port}"),
        control_plane_name: Some("localhost".into()),
        ca_file: settings.data_dir.join("node-ca.pem"),
        state_dir: dir.path().join("agent"),
        ..AgentConfig::default()
    };
    let state = || StateDir::open(&config.state_dir).unwrap();
    let store = Store::load(state()).unwrap();
    let wg_key = state().wireguard_key().unwrap();
    control::enroll(&config, &state(), &store, &token_file, &wg_key)
        .await
        .unwrap();
    let serials = || async {
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM node_certificates WHERE server_id = $1")
                .bind(server_id)
                .fetch_one(db.pool())
                .await
                .unwrap();
        n
    };
    assert_eq!(serials().await, 1);

    // Not due: nothing happens.
    let enrolled_key = state().read(TLS_KEY_FILE).unwrap().unwrap();
    control::renew_if_due(&config, &state(), &store)
        .await
        .unwrap();
    assert_eq!(state().read(TLS_KEY_FILE).unwrap().unwrap(), enrolled_key);
    assert_eq!(serials().await, 1);

    // Due twice in a row: the second renewal authenticates with the first one's new pair.
    let mut keys = vec![enrolled_key];
    for expected in [2, 3] {
        store.update(|a| a.certificate_not_after_ms = 0);
        control::renew_if_due(&config, &state(), &store)
            .await
            .unwrap();
        let key = state().read(TLS_KEY_FILE).unwrap().unwrap();
        assert!(!keys.contains(&key), "a renewal makes a new key");
        keys.push(key);
        assert_eq!(serials().await, expected);
        assert!(store.with(|a| a.certificate_not_after_ms) > now);
    }
    for leftover in ["node.key.next", "node.crt.next"] {
        assert!(!config.state_dir.join(leftover).exists(), "{leftover}");
    }

    let _ = stop.send(());
    running.await.unwrap().unwrap();
}
