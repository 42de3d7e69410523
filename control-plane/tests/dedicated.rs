//! Dedicated servers: the pool of pre-provisioned servers, orders served from it (never one
//! server to two buyers), one order per payment, and the operator routes' refusals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Engine, TestApp, base64_key, error_code};
use reqwest::StatusCode;
use serde_json::{Value, json};
use truevault_control_plane::dedicated::orders;

engine_tests!(
    a_pooled_server_waits_for_its_buyer_and_then_takes_their_devices,
    pool_and_order_routes_refuse_bad_input_and_change_nothing,
    simultaneous_purchases_with_one_pool_server_give_it_to_one_buyer,
    one_payment_places_one_order_even_concurrently,
    a_server_added_to_the_pool_serves_the_oldest_waiting_order,
);

async fn pool(app: &TestApp, admin: &str, body: Value) -> (StatusCode, Value) {
    app.post_auth("/api/v1/admin/pool", admin, Some(body)).await
}

async fn order(app: &TestApp, admin: &str, body: Value) -> (StatusCode, Value) {
    app.post_auth("/api/v1/admin/orders", admin, Some(body))
        .await
}

async fn a_pooled_server_waits_for_its_buyer_and_then_takes_their_devices(engine: Engine) {
    let app = TestApp::start(engine).await;
    let admin = app.admin_token().await;
    let server = app.add_server("pool-eu-1", "eu-de", 41).await;
    let server_id = server["id"].as_i64().unwrap();
    let (status, pooled) = pool(
        &app,
        &admin,
        json!({ "server_id": server_id, "provider": "contabo", "provider_instance_id": "200123",
                "monthly_cost_cents": 1150, "specs": { "cpu": 4 } }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{pooled}");
    assert_eq!(pooled["status"], "available");
    assert_eq!(pooled["region"], "eu-de");
    assert_eq!(pooled["server_status"], "online");

    // Waiting in the pool, it takes no shared devices.
    let (buyer_id, buyer) = app.customer("buyer@example.com").await;
    let (status, body) = app
        .post_auth(
            "/api/v1/devices",
            &buyer,
            Some(json!({ "public_key": base64_key(1), "region": "eu-de" })),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "no_server_available"),
        "{body}"
    );

    let (status, placed) = order(
        &app,
        &admin,
        json!({ "user_id": buyer_id, "region": "eu-de", "reference": "wire-0001" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{placed}");
    // The pool server's agent is online, so the order is complete at once.
    assert_eq!(placed["status"], "completed", "{placed}");
    assert_eq!(placed["server_id"], server_id);
    assert_eq!(placed["pool_server_id"], pooled["id"]);

    let (_, pool_list) = app.get_auth("/api/v1/admin/pool", &admin).await;
    assert_eq!(pool_list[0]["status"], "assigned");
    assert_eq!(pool_list[0]["assigned_user_id"], buyer_id);
    let (_, me) = app.get_auth("/api/v1/me", &buyer).await;
    assert_eq!(me["plan_type"], "dedicated", "{me}");

    // Now the buyer's devices land on their server, wherever they ask.
    let (status, device) = app
        .post_auth(
            "/api/v1/devices",
            &buyer,
            Some(json!({ "public_key": base64_key(2) })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{device}");
    assert_eq!(device["device"]["server"]["id"], server["uuid"]);

    // An assigned server cannot be put back or retired from under its owner.
    let id = pooled["id"].as_i64().unwrap();
    let (status, body) = app
        .patch_auth(
            &format!("/api/v1/admin/pool/{id}"),
            &admin,
            json!({ "status": "available" }),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "pool_server_busy")
    );

    // A second buyer in the region waits for a new instance.
    let (other_id, _) = app.customer("second@example.com").await;
    let (status, second) = order(
        &app,
        &admin,
        json!({ "user_id": other_id, "region": "eu-de" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    assert_eq!(second["status"], "pending");
    assert!(second["server_id"].is_null());
    let (_, pending) = app
        .get_auth("/api/v1/admin/orders?status=pending", &admin)
        .await;
    assert_eq!(pending.as_array().unwrap().len(), 1);
    assert_eq!(pending[0]["id"], second["id"]);
}

async fn pool_and_order_routes_refuse_bad_input_and_change_nothing(engine: Engine) {
    let app = TestApp::start(engine).await;
    let admin = app.admin_token().await;
    let server = app.add_server("pool-us-1", "us-east", 42).await;
    let server_id = server["id"].as_i64().unwrap();

    let (status, body) = pool(
        &app,
        &admin,
        json!({ "tier": "gold", "monthly_cost_cents": -1 }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let fields: Vec<&str> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"tier")
            && fields.contains(&"monthly_cost_cents")
            && fields.contains(&"server_id"),
        "{body}"
    );
    let (status, _) = pool(&app, &admin, json!({ "server_id": 999_999 })).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = pool(
        &app,
        &admin,
        json!({ "server_id": server_id, "colour": "red" }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // A server with devices is in use.
    let (user_id, token) = app.customer("owner@example.com").await;
    app.set_plan(user_id, "business").await;
    let (status, body) = app
        .post_auth(
            "/api/v1/devices",
            &token,
            Some(json!({ "public_key": base64_key(9) })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = pool(&app, &admin, json!({ "server_id": server_id })).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "server_in_use")
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM server_pool").await, 0);

    let idle = app.add_server("pool-us-2", "us-east", 43).await;
    let (status, _) = pool(&app, &admin, json!({ "server_id": idle["id"] })).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = pool(&app, &admin, json!({ "server_id": idle["id"] })).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "already_pooled")
    );
    let (status, body) = app
        .patch_auth(
            "/api/v1/admin/pool/1",
            &admin,
            json!({ "status": "assigned" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Orders: a bad region, an unknown user, a reused payment reference.
    let (status, body) = order(
        &app,
        &admin,
        json!({ "user_id": user_id, "region": "mars" }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = order(
        &app,
        &admin,
        json!({ "user_id": 999_999, "region": "us-east" }),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, first) = order(
        &app,
        &admin,
        json!({ "user_id": user_id, "region": "us-east", "reference": "wire-7" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let payments = app.count("SELECT COUNT(*) FROM payments").await;
    let (status, body) = order(
        &app,
        &admin,
        json!({ "user_id": user_id, "region": "us-east", "reference": "wire-7" }),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "payment_recorded")
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM payments").await, payments);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM server_provisioning_queue")
            .await,
        1
    );
    let (status, _) = app
        .get_auth("/api/v1/admin/orders?status=lost", &admin)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Customers cannot reach any of it.
    let (status, _) = app.get_auth("/api/v1/admin/pool", &token).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

async fn simultaneous_purchases_with_one_pool_server_give_it_to_one_buyer(engine: Engine) {
    let app = TestApp::start(engine).await;
    let admin = app.admin_token().await;
    let server = app.add_server("pool-uk-1", "eu-uk", 44).await;
    let (status, _) = pool(&app, &admin, json!({ "server_id": server["id"] })).await;
    assert_eq!(status, StatusCode::CREATED);
    let mut buyers = Vec::new();
    for i in 0..8 {
        buyers.push(app.customer(&format!("buyer{i}@example.com")).await.0);
    }
    let placed = futures_util::future::join_all(buyers.iter().map(|&user_id| {
        let app = &app;
        let admin = &admin;
        async move { order(app, admin, json!({ "user_id": user_id, "region": "eu-uk" })).await }
    }))
    .await;
    let mut served = 0;
    for (status, body) in &placed {
        assert_eq!(*status, StatusCode::CREATED, "{body}");
        if body["server_id"].is_null() {
            assert_eq!(body["status"], "pending");
        } else {
            served += 1;
            assert_eq!(body["server_id"], server["id"]);
        }
    }
    assert_eq!(served, 1, "{placed:?}");
    assert_eq!(
        app.count(
            "SELECT COUNT(*) FROM server_provisioning_queue WHERE server_pool_id IS NOT NULL"
        )
        .await,
        1
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM vpn_servers WHERE dedicated_user_id IS NOT NULL")
            .await,
        1
    );
}

async fn one_payment_places_one_order_even_concurrently(engine: Engine) {
    let app = TestApp::start(engine).await;
    let (user_id, _) = app.customer("payer@example.com").await;
    let db = app.db().clone();
    sqlx::query(
        "INSERT INTO payments (uuid, user_id, provider, provider_payment_id, amount_cents, status, created_at, updated_at)
         VALUES ('p-1', $1, 'paypal', 'PAY-1', 4999, 'completed', 0, 0)",
    )
    .bind(user_id)
    .execute(db.pool())
    .await
    .unwrap();
    let (payment_id,): (i64,) = sqlx::query_as("SELECT id FROM payments WHERE uuid = 'p-1'")
        .fetch_one(db.pool())
        .await
        .unwrap();
    let results = futures_util::future::join_all((0..6).map(|_| {
        let db = db.clone();
        async move {
            let mut tx = db.begin_write().await.unwrap();
            let placed = orders::place(
                tx.conn(),
                db.engine(),
                user_id,
                payment_id,
                "us-west",
                1_000,
            )
            .await
            .unwrap();
            tx.commit().await.unwrap();
            placed
        }
    }))
    .await;
    let new = results.iter().filter(|(_, new)| *new).count();
    assert_eq!(new, 1, "{results:?}");
    assert!(results.iter().all(|(o, _)| o.id == results[0].0.id));
    assert_eq!(
        app.count("SELECT COUNT(*) FROM server_provisioning_queue")
            .await,
        1
    );
}

async fn a_server_added_to_the_pool_serves_the_oldest_waiting_order(engine: Engine) {
    let app = TestApp::start(engine).await;
    let admin = app.admin_token().await;
    let (first_id, first) = app.customer("waiting.first@example.com").await;
    let (second_id, _) = app.customer("waiting.second@example.com").await;
    for user_id in [first_id, second_id] {
        let (status, placed) = order(
            &app,
            &admin,
            json!({ "user_id": user_id, "region": "asia-jp" }),
        )
        .await;
        assert_eq!(
            (status, placed["status"].as_str()),
            (StatusCode::CREATED, Some("pending"))
        );
    }
    // A server elsewhere serves nobody here.
    let elsewhere = app.add_server("pool-sg-1", "asia-sg", 51).await;
    pool(&app, &admin, json!({ "server_id": elsewhere["id"] })).await;
    assert_eq!(
        app.count("SELECT COUNT(*) FROM server_provisioning_queue WHERE status = 'pending'")
            .await,
        2
    );

    let server = app.add_server("pool-jp-1", "asia-jp", 52).await;
    let (status, pooled) = pool(&app, &admin, json!({ "server_id": server["id"] })).await;
    assert_eq!(status, StatusCode::CREATED, "{pooled}");
    assert_eq!(pooled["status"], "assigned");
    assert_eq!(
        pooled["assigned_user_id"], first_id,
        "the oldest order first"
    );
    let (_, orders) = app
        .get_auth("/api/v1/admin/orders?status=completed", &admin)
        .await;
    assert_eq!(orders.as_array().unwrap().len(), 1, "{orders}");
    assert_eq!(orders[0]["user_id"], first_id);
    let ready = app
        .last_mail("waiting.first@example.com", "dedicated_ready")
        .await;
    assert_eq!(ready["address"], "pool-jp-1.example.com");
    let (status, device) = app
        .post_auth(
            "/api/v1/devices",
            &first,
            Some(json!({ "public_key": base64_key(53) })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{device}");
    assert_eq!(device["device"]["server"]["id"], server["uuid"]);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM server_provisioning_queue WHERE status = 'pending'")
            .await,
        1
    );
}
