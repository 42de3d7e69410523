//! A dedicated server as its buyer sees it (`GET /api/v1/dedicated`): setting up, ready with
//! the server to connect to, delayed, and given back when the subscription ends; never another
//! customer's, never the operator's details.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::paypal::{activation, app_with_paypal, deliver_signed, sale_completed};
use common::{Engine, TestApp, base64_key};
use reqwest::StatusCode;
use serde_json::{Value, json};
use truevault_control_plane::billing::fake_paypal::FakePayPal;
use truevault_control_plane::clock::Clock as _;
use truevault_control_plane::dedicated::release;

engine_tests!(
    a_buyer_follows_their_dedicated_server_from_payment_to_release,
    a_cancelled_buyer_moving_to_another_plan_gives_the_server_back,
    a_cancelled_buyer_subscribing_again_keeps_their_server,
);

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
    let (server, pooled) = app.pool_server("pool-de-1", "eu-de", 81).await;
    assert_eq!(pooled["status"], "assigned");
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
            "id": server["uuid"], "location": "eu-de (Germany)",
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

/// Subscribes `token`'s account to `plan` through checkout and PayPal's events (processed).
async fn subscribe(app: &TestApp, fake: &FakePayPal, token: &str, body: Value, n: u32) -> String {
    let (status, checkout) = app
        .post_auth("/api/v1/billing/checkout", token, Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{checkout}");
    let subscription = checkout["subscription_id"].as_str().unwrap().to_owned();
    fake.approve(&subscription);
    deliver_signed(app, fake, &activation(&format!("WH-A{n}"), &subscription)).await;
    let sale = fake.collect(&subscription, "9.99");
    deliver_signed(
        app,
        fake,
        &sale_completed(&format!("WH-S{n}"), &sale, &subscription, "9.99"),
    )
    .await;
    app.run_tasks().await;
    subscription
}

/// A dedicated buyer cancels, then starts another plan before the paid period ends: the plan
/// changes at once, and so the server goes back at once (nothing would release it later).
async fn a_cancelled_buyer_moving_to_another_plan_gives_the_server_back(engine: Engine) {
    let fake = FakePayPal::start().await;
    let app = app_with_paypal(engine, &fake, |_| {}).await;
    let admin = app.admin_token().await;
    app.pool_server("pool-de-2", "eu-de", 96).await;
    let (_, token) = app.customer("mover@example.com").await;
    subscribe(
        &app,
        &fake,
        &token,
        json!({ "plan": "dedicated", "region": "eu-de" }),
        1,
    )
    .await;
    assert_eq!(purchases(&app, &token).await[0]["status"], "ready");

    let (status, body) = app
        .post_auth("/api/v1/billing/subscription/cancel", &token, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let cancelled = &purchases(&app, &token).await[0];
    assert_eq!(cancelled["status"], "ready");
    assert!(cancelled["ends_at"].is_string(), "{cancelled}");

    subscribe(&app, &fake, &token, json!({ "plan": "personal" }), 2).await;
    let (_, me) = app.get_auth("/api/v1/me", &token).await;
    assert_eq!(me["plan_type"], "personal", "{me}");
    let moved = &purchases(&app, &token).await[0];
    assert_eq!(moved["status"], "released", "{moved}");
    assert!(moved["server"].is_null());
    let (_, pool) = app.get_auth("/api/v1/admin/pool", &admin).await;
    assert_eq!(pool[0]["status"], "maintenance", "{pool}");
}

/// A dedicated buyer cancels, then subscribes to the dedicated plan again before the period
/// ends: they keep the server they have (no second order, nothing released), and it no longer
/// ends with the old period.
async fn a_cancelled_buyer_subscribing_again_keeps_their_server(engine: Engine) {
    let fake = FakePayPal::start().await;
    let app = app_with_paypal(engine, &fake, |_| {}).await;
    let admin = app.admin_token().await;
    for (name, key) in [("pool-de-3", 97), ("pool-de-4", 98)] {
        app.pool_server(name, "eu-de", key).await;
    }
    let (_, token) = app.customer("stayer@example.com").await;
    let dedicated = json!({ "plan": "dedicated", "region": "eu-de" });
    subscribe(&app, &fake, &token, dedicated.clone(), 1).await;
    let first = purchases(&app, &token).await[0].clone();
    assert_eq!(first["status"], "ready");
    let (status, body) = app
        .post_auth("/api/v1/billing/subscription/cancel", &token, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    subscribe(&app, &fake, &token, dedicated, 2).await;
    let mine = purchases(&app, &token).await;
    assert_eq!(mine.len(), 1, "one server, not two: {mine:?}");
    assert_eq!(mine[0]["order_id"], first["order_id"]);
    assert_eq!(mine[0]["status"], "ready");
    assert_eq!(mine[0]["server"]["id"], first["server"]["id"]);
    assert!(mine[0]["ends_at"].is_null(), "it bills again: {}", mine[0]);
    let (_, pool) = app.get_auth("/api/v1/admin/pool", &admin).await;
    let available = pool
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["status"] == "available")
        .count();
    assert_eq!(available, 1, "{pool}");
}
