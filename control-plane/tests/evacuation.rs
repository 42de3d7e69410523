//! Evacuating a retired server: every device moves to another server of its region with a
//! fresh address, the old node is told to drop the peers and the new one to add them, and
//! each customer with a live device moved is mailed once. Checked against the peer-change log
//! itself: replaying it per server gives exactly the server's live devices.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Engine, TestApp, error_code};
use reqwest::StatusCode;
use serde_json::{Value, json};

engine_tests!(
    a_retired_servers_devices_move_within_their_region_and_customers_are_told,
    devices_with_nowhere_to_go_stay_until_capacity_is_added,
    evacuations_racing_each_other_and_device_deletes_move_each_device_once,
);

/// A distinct WireGuard public key per `n`.
fn key(n: u16) -> String {
    use base64::Engine as _;
    let mut bytes = [7u8; 32];
    bytes[..2].copy_from_slice(&n.to_be_bytes());
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn add_on(app: &TestApp, token: &str, server: &Value, n: u16) -> Value {
    let (status, body) = app
        .post_auth(
            "/api/v1/devices",
            token,
            Some(json!({ "public_key": key(n), "server_id": server["uuid"] })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["device"].clone()
}

async fn evacuate(app: &TestApp, admin: &str, server: &Value) -> (StatusCode, Value) {
    let path = format!("/api/v1/admin/servers/{}/evacuate", server["id"]);
    app.post_auth(&path, admin, None).await
}

async fn retire(app: &TestApp, admin: &str, server: &Value) {
    let path = format!("/api/v1/admin/servers/{}/retire", server["id"]);
    let (status, body) = app.post_auth(&path, admin, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn replayed_peers(app: &TestApp, server: &Value) -> BTreeSet<String> {
    app.replayed_peers(server["id"].as_i64().unwrap()).await
}

async fn live_keys(app: &TestApp, server: &Value) -> BTreeSet<String> {
    app.live_keys(server["id"].as_i64().unwrap()).await
}

async fn devices_on(app: &TestApp, server: &Value) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM devices WHERE server_id = $1")
        .bind(server["id"].as_i64().unwrap())
        .fetch_one(app.db().pool())
        .await
        .unwrap();
    n
}

async fn a_retired_servers_devices_move_within_their_region_and_customers_are_told(engine: Engine) {
    let app = TestApp::start(engine).await;
    let old = app.add_server("vpn-old", "us-east", 1).await;
    let new = app.add_server("vpn-new", "us-east", 2).await;
    let europe = app.add_server("vpn-eu", "eu-de", 3).await;
    // Two paying customers with devices on the old server (one also on the new one), and a
    // trial whose device the trial's end disabled.
    let (ada, ada_token) = app.customer("ada@example.com").await;
    let (bob, bob_token) = app.customer("bob@example.com").await;
    let (_, cy_token) = app.customer("cy@example.com").await;
    let ada_laptop = add_on(&app, &ada_token, &old, 10).await;
    add_on(&app, &cy_token, &old, 12).await;
    app.set_plan(ada, "family").await;
    app.set_plan(bob, "family").await;
    add_on(&app, &ada_token, &old, 11).await;
    add_on(&app, &bob_token, &old, 13).await;
    add_on(&app, &bob_token, &new, 14).await;
    app.advance(Duration::from_secs(8 * 24 * 3600));
    app.automation().enqueue_sweep().await.unwrap();
    app.run_tasks().await;
    let admin = app.admin_token().await;

    // Refused while the server still takes devices, for a non-operator, and for no server.
    let (status, body) = evacuate(&app, &admin, &old).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "server_in_service"),
        "{body}"
    );
    let ada_token = app.token_for("ada@example.com").await;
    let (status, _) = evacuate(&app, &ada_token, &old).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = evacuate(&app, &admin, &json!({ "id": 999_999 })).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(devices_on(&app, &old).await, 4, "nothing moved");

    retire(&app, &admin, &old).await;
    let (status, report) = evacuate(&app, &admin, &old).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        report,
        json!({ "moved": 4, "stranded": 0, "customers_notified": 2 })
    );
    assert_eq!(devices_on(&app, &old).await, 0);
    assert_eq!(devices_on(&app, &new).await, 5, "same region");
    assert_eq!(devices_on(&app, &europe).await, 0);
    let (distinct,): (i64,) =
        sqlx::query_as("SELECT COUNT(DISTINCT ipv4_address) FROM devices WHERE server_id = $1")
            .bind(new["id"].as_i64().unwrap())
            .fetch_one(app.db().pool())
            .await
            .unwrap();
    assert_eq!(distinct, 5, "fresh, distinct addresses");
    // The nodes' view (the change log replayed) is exactly what the database says.
    assert!(replayed_peers(&app, &old).await.is_empty());
    assert_eq!(
        replayed_peers(&app, &new).await,
        live_keys(&app, &new).await
    );
    let moved_reasons = app
        .peer_changes(new["id"].as_i64().unwrap())
        .await
        .iter()
        .filter(|c| c.4 == "server_evacuated")
        .count();
    assert_eq!(
        moved_reasons, 3,
        "the disabled device is not a peer anywhere"
    );
    let (status, devices) = app.get_auth("/api/v1/devices", &ada_token).await;
    assert_eq!(status, StatusCode::OK);
    for device in devices.as_array().unwrap() {
        assert_eq!(device["server"]["id"], new["uuid"], "{device}");
        assert_eq!(device["status"], "pending", "until the new node confirms");
    }
    let (_, config) = app
        .get_auth(
            &format!(
                "/api/v1/devices/{}/config",
                ada_laptop["id"].as_str().unwrap()
            ),
            &ada_token,
        )
        .await;
    assert!(
        config.as_str().unwrap().contains("vpn-new.example.com"),
        "{config}"
    );
    for (email, mails) in [
        ("ada@example.com", 1),
        ("bob@example.com", 1),
        ("cy@example.com", 0),
    ] {
        let sent = app
            .mail_templates(email)
            .await
            .iter()
            .filter(|t| *t == "devices_moved")
            .count();
        assert_eq!(sent, mails, "{email}");
    }
    // Again: nothing left to move, nobody mailed twice.
    let (_, again) = evacuate(&app, &admin, &old).await;
    assert_eq!(
        again,
        json!({ "moved": 0, "stranded": 0, "customers_notified": 0 })
    );
    // Each batch is audited; the empty run moved nothing and recorded nothing.
    assert_eq!(
        app.count("SELECT COUNT(*) FROM audit_log WHERE action = 'server.evacuated'")
            .await,
        1
    );
}

async fn devices_with_nowhere_to_go_stay_until_capacity_is_added(engine: Engine) {
    let app = TestApp::start(engine).await;
    let only = app.add_server("vpn-only", "asia-jp", 20).await;
    let admin = app.admin_token().await;
    let (user, token) = app.customer("far@example.com").await;
    app.set_plan(user, "family").await;
    for key in 30..33 {
        add_on(&app, &token, &only, key).await;
    }
    retire(&app, &admin, &only).await;
    let (status, report) = evacuate(&app, &admin, &only).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        report,
        json!({ "moved": 0, "stranded": 3, "customers_notified": 0 })
    );
    assert_eq!(devices_on(&app, &only).await, 3);
    assert_eq!(replayed_peers(&app, &only).await.len(), 3, "still served");

    let added = app.add_server("vpn-jp2", "asia-jp", 21).await;
    let (_, report) = evacuate(&app, &admin, &added).await;
    assert_eq!(
        report["error"]["code"], "server_in_service",
        "an online server is refused"
    );
    let (_, report) = evacuate(&app, &admin, &only).await;
    assert_eq!(
        report,
        json!({ "moved": 3, "stranded": 0, "customers_notified": 1 })
    );
    assert_eq!(
        replayed_peers(&app, &added).await,
        live_keys(&app, &added).await
    );
    assert!(replayed_peers(&app, &only).await.is_empty());
}

async fn evacuations_racing_each_other_and_device_deletes_move_each_device_once(engine: Engine) {
    let app = TestApp::start(engine).await;
    let old = app.add_server("vpn-a", "us-east", 40).await;
    let new = app.add_server("vpn-b", "us-east", 41).await;
    let admin = app.admin_token().await;
    let mut owners = Vec::new();
    for i in 0..6u16 {
        let email = format!("crowd{i}@example.com");
        let (user, token) = app.customer(&email).await;
        app.set_plan(user, "business").await;
        let mut ids = Vec::new();
        for d in 0..40u16 {
            let device = add_on(&app, &token, &old, 50 + i * 40 + d).await;
            ids.push(device["id"].as_str().unwrap().to_owned());
        }
        owners.push((token, ids));
    }
    retire(&app, &admin, &old).await;
    // Two operators evacuate at once while customers delete some of their devices.
    let app = &app;
    let doomed: Vec<(String, &String)> = owners
        .iter()
        .flat_map(|(token, ids)| {
            ids.iter()
                .step_by(8)
                .map(move |id| (format!("/api/v1/devices/{id}"), token))
        })
        .collect();
    let deletes = doomed
        .iter()
        .map(|(path, token)| app.delete_auth(path, token));
    let (first, second, deleted) = tokio::join!(
        evacuate(app, &admin, &old),
        evacuate(app, &admin, &old),
        futures_util::future::join_all(deletes)
    );
    for (status, body) in deleted {
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }
    let (first, second) = (first.1, second.1);
    let moved = first["moved"].as_u64().unwrap() + second["moved"].as_u64().unwrap();
    let (remaining,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM devices")
        .fetch_one(app.db().pool())
        .await
        .unwrap();
    assert_eq!(remaining, 240 - 30);
    assert!(
        (210..=240).contains(&moved),
        "each device moved at most once: {first} {second}"
    );
    assert_eq!(devices_on(app, &old).await, 0);
    assert_eq!(devices_on(app, &new).await, 210);
    assert!(replayed_peers(app, &old).await.is_empty());
    assert_eq!(replayed_peers(app, &new).await, live_keys(app, &new).await);
    // Each device moved at most once: at most one evacuation upsert per key on the new node.
    let mut upserts = std::collections::BTreeMap::<String, usize>::new();
    for (_, op, key, _, reason) in app.peer_changes(new["id"].as_i64().unwrap()).await {
        if op == "upsert" && reason == "server_evacuated" {
            *upserts.entry(key).or_default() += 1;
        }
    }
    assert!(upserts.values().all(|&n| n == 1), "{upserts:?}");
    assert_eq!(
        u64::try_from(upserts.len()).unwrap(),
        moved,
        "every moved device was announced to the new node once"
    );
    let customers = first["customers_notified"].as_u64().unwrap()
        + second["customers_notified"].as_u64().unwrap();
    assert_eq!(customers, 6, "each customer mailed once");
}
