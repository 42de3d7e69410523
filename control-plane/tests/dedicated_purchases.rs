//! A dedicated server as its buyer sees it (`GET /api/v1/dedicated`): setting up, ready with
//! the server to connect to, delayed, and given back when the subscription ends; never another
//! customer's, never the operator's details.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Engine, TestApp, base64_key};
use reqwest::StatusCode;
use serde_json::{Value, json};
use truevault_control_plane::clock::Clock as _;
use truevault_control_plane::dedicated::release;

engine_tests!(a_buyer_follows_their_dedicated_server_from_payment_to_release);

async fn purchases(app: &TestApp, token: &str) -> Vec<Value> {
    let (status, body) = app.get_auth("/api/v1/dedicated", token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body.as_array().unwrap().clone()
}

async fn a_buyer_follows_their_dedicated_server_from_payment_to_release(engine: Engine) {
    let app = TestApp::start(engine).await;
    let admin = app.admin_token().await;
    let (buyer_id, buyer) = app.customer("owner@example.com").await;
    let (_, other) = app.customer("someone.else@example.com").await;
    assert!(purchases(&app, &buyer).await.is_empty());
    let anonymous = app
        .http
        .get(app.url("/api/v1/dedicated"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // Paid (an operator records a bank transfer); no pool server waits in the region.
    let (status, placed) = app
        .post_auth(
            "/api/v1/admin/orders",
            &admin,
            Some(json!({ "user_id": buyer_id, "region": "eu-de", "reference": "wire-7" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{placed}");
    let mine = purchases(&app, &buyer).await;
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0]["order_id"], placed["id"]);
    assert_eq!(mine[0]["status"], "setting_up");
    assert_eq!(mine[0]["region"], "eu-de");
    assert!(mine[0]["server"].is_null() && mine[0]["ready_at"].is_null());
    // The operator's view stays the operator's.
    for internal in [
        "provider_instance_id",
        "error_message",
        "attempt",
        "payment_id",
    ] {
        assert!(
            mine[0].get(internal).is_none(),
            "{internal} shown: {}",
            mine[0]
        );
    }
    assert!(purchases(&app, &other).await.is_empty());

    // A server joins the pool and is handed over: the buyer sees where to connect.
    let server = app.add_server("pool-de-1", "eu-de", 81).await;
    let (status, pooled) = app
        .post_auth(
            "/api/v1/admin/pool",
            &admin,
            Some(json!({ "server_id": server["id"] })),
        )
        .await;
    assert_eq!(
        (status, pooled["status"].as_str()),
        (StatusCode::CREATED, Some("assigned"))
    );
    let (status, device) = app
        .post_auth(
            "/api/v1/devices",
            &buyer,
            Some(json!({ "public_key": base64_key(82) })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{device}");
    let ready = &purchases(&app, &buyer).await[0];
    assert_eq!(ready["status"], "ready", "{ready}");
    assert!(ready["ready_at"].is_string());
    assert!(ready["ends_at"].is_null(), "nothing cancelled");
    assert_eq!(
        ready["server"],
        json!({
            "name": "pool-de-1", "location": "eu-de (Germany)",
            "address": "pool-de-1.example.com", "port": 51820, "online": true, "devices": 1,
        })
    );
    assert!(purchases(&app, &other).await.is_empty());

    // Cancelled: the buyer sees until when the server stays theirs.
    sqlx::query("UPDATE subscriptions SET cancel_at_period_end = 1 WHERE user_id = $1")
        .bind(buyer_id)
        .execute(app.db().pool())
        .await
        .unwrap();
    assert!(purchases(&app, &buyer).await[0]["ends_at"].is_string());

    // A second purchase whose setup is overdue reads as delayed, not as a failure to act on.
    let (_, second) = app
        .post_auth(
            "/api/v1/admin/orders",
            &admin,
            Some(json!({ "user_id": buyer_id, "region": "asia-jp", "reference": "wire-8" })),
        )
        .await;
    sqlx::query("UPDATE server_provisioning_queue SET status = 'failed', error_message = 'no agent' WHERE id = $1")
        .bind(second["id"].as_i64().unwrap())
        .execute(app.db().pool())
        .await
        .unwrap();
    let both = purchases(&app, &buyer).await;
    assert_eq!(both.len(), 2);
    assert_eq!(
        (both[0]["order_id"].clone(), both[0]["status"].as_str()),
        (second["id"].clone(), Some("delayed"))
    );
    assert!(both[0].get("error_message").is_none());

    // The paid period ends: both are given back, and no server is shown any more.
    let mut tx = app.db().begin_write().await.unwrap();
    release::request(tx.conn(), buyer_id, app.clock.now_ms())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    for released in purchases(&app, &buyer).await {
        assert_eq!(released["status"], "released", "{released}");
        assert!(released["server"].is_null());
        assert!(released["ends_at"].is_null());
        assert!(released["released_at"].is_string());
    }
}
