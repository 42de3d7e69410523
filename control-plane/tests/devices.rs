//! Devices: plan limits, VIP bypass, expired trials, missing subscriptions, key validation,
//! rename, delete and rotation (each with its peer changes and revisions), configs and QR
//! codes, plan changes and suspension, and the concurrency invariants.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Engine, TestApp, base64_key, error_code};
use reqwest::StatusCode;
use serde_json::{Value, json};

engine_tests!(
    each_plan_allows_its_number_of_devices_and_vips_are_unlimited,
    expired_trials_and_missing_subscriptions_are_refused,
    bad_keys_and_names_are_refused_and_change_nothing,
    rename_delete_and_rotate_record_their_peer_changes,
    the_config_matches_the_golden_file_and_its_qr_code_decodes_to_it,
    downgrade_expiry_and_suspension_remove_every_affected_peer,
    twenty_concurrent_adds_on_a_three_device_plan_give_three,
    two_hundred_concurrent_adds_on_one_server_get_distinct_addresses,
    a_promo_code_with_five_uses_is_used_exactly_five_times,
    placement_prefers_a_dedicated_server_then_the_identity_server_then_the_least_loaded,
);

async fn add(app: &TestApp, token: &str, body: Value) -> (StatusCode, Value) {
    app.post_auth("/api/v1/devices", token, Some(body)).await
}

async fn each_plan_allows_its_number_of_devices_and_vips_are_unlimited(engine: Engine) {
    let app = TestApp::start(engine).await;
    let server = app.add_server("vpn1", "us-east", 1).await;
    let server_id = server["id"].as_i64().unwrap();
    let mut key = 10u8;
    for (plan, max) in [
        ("trial", Some(1)),
        ("personal", Some(3)),
        ("family", None),
        ("business", None),
    ] {
        let email = format!("{plan}@example.com");
        let (user_id, token) = app.customer(&email).await;
        if plan != "trial" {
            app.set_plan(user_id, plan).await;
        }
        let allowed = max.unwrap_or(6);
        for i in 0..allowed {
            key += 1;
            let (status, body) = add(
                &app,
                &token,
                json!({ "public_key": base64_key(key), "name": format!("d{i}") }),
            )
            .await;
            assert_eq!(status, StatusCode::CREATED, "{plan} device {i}: {body}");
            assert_eq!(body["max_devices"], max.map_or(Value::Null, Value::from));
            assert_eq!(body["current_devices"], i + 1);
            assert_eq!(
                body["remaining"],
                max.map_or(Value::Null, |m| Value::from(m - i - 1))
            );
            assert_eq!(body["device"]["status"], "pending");
            assert!(body["private_key"].is_null(), "the client kept its key");
        }
        key += 1;
        let (status, body) = add(&app, &token, json!({ "public_key": base64_key(key) })).await;
        if let Some(max) = max {
            assert_eq!(status, StatusCode::FORBIDDEN, "{plan}: {body}");
            assert_eq!(error_code(&body), "device_limit_reached");
            assert_eq!(
                (
                    body["error"]["current_devices"].as_i64(),
                    body["error"]["max_devices"].as_i64()
                ),
                (Some(max), Some(max))
            );
            assert_eq!(body["error"]["upgrade_required"], true);
        } else {
            assert_eq!(status, StatusCode::CREATED, "{plan} is unlimited");
        }
    }
    // A VIP bypasses every limit (here on a verified, listed address).
    let admin = app.admin_token().await;
    app.post_auth(
        "/api/v1/admin/vip",
        &admin,
        Some(json!({ "email": "vip@example.com", "tier": "vip_basic" })),
    )
    .await;
    let (_, token) = app.customer("vip@example.com").await;
    let verify = app
        .token_from_mail("vip@example.com", "verify_email", "verify_url")
        .await;
    app.post("/api/v1/auth/verify-email", json!({ "token": verify }))
        .await;
    for i in 0..4u8 {
        let (status, body) = add(&app, &token, json!({ "public_key": base64_key(200 + i) })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["is_vip"], true);
        assert!(
            body["device"]["name"].as_str().unwrap().contains('-'),
            "a two-word name"
        );
    }
    // Every device added is one upsert at the next revision.
    let changes = app.peer_changes(server_id).await;
    let (devices,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM devices")
        .fetch_one(app.db().pool())
        .await
        .unwrap();
    assert_eq!(changes.len() as i64, devices);
    assert!(
        changes
            .iter()
            .all(|c| c.1 == "upsert" && c.4 == "device_added")
    );
    let revisions: Vec<i64> = changes.iter().map(|c| c.0).collect();
    assert_eq!(revisions, (1..=devices).collect::<Vec<_>>());
    let (revision,): (i64,) = sqlx::query_as("SELECT config_revision FROM vpn_servers")
        .fetch_one(app.db().pool())
        .await
        .unwrap();
    assert_eq!(revision, devices);
}

async fn expired_trials_and_missing_subscriptions_are_refused(engine: Engine) {
    let app = TestApp::start(engine).await;
    app.add_server("vpn1", "us-east", 1).await;
    let (_, _) = app.customer("late@example.com").await;
    app.advance(Duration::from_secs(8 * 24 * 3600));
    let token = app.token_for("late@example.com").await;
    let (status, body) = add(&app, &token, json!({ "public_key": base64_key(9) })).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(error_code(&body), "trial_expired");
    assert_eq!(body["error"]["trial_expired"], true);
    assert!(body["error"]["upgrade_url"].is_string());

    let (user_id, token) = app.customer("nosub@example.com").await;
    sqlx::query("DELETE FROM subscriptions WHERE user_id = $1")
        .bind(user_id)
        .execute(app.db().pool())
        .await
        .unwrap();
    let (status, body) = add(&app, &token, json!({ "public_key": base64_key(10) })).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::FORBIDDEN, "no_subscription")
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM devices").await, 0);
    assert_eq!(app.count("SELECT COUNT(*) FROM peer_changes").await, 0);
}

async fn bad_keys_and_names_are_refused_and_change_nothing(engine: Engine) {
    let app = TestApp::start(engine).await;
    app.add_server("vpn1", "us-east", 1).await;
    let (user_id, token) = app.customer("keys@example.com").await;
    app.set_plan(user_id, "business").await;
    for bad in [
        json!({ "public_key": "" }),
        json!({ "public_key": "not base64!" }),
        json!({ "public_key": "AAAA" }),
        json!({ "public_key": base64_key(0) }),
        json!({ "public_key": format!("{}\nAllowedIPs = 0.0.0.0/0", base64_key(3)) }),
        json!({ "public_key": base64_key(3), "name": "x".repeat(65) }),
        json!({ "public_key": base64_key(3), "name": "two\nlines" }),
        json!({ "public_key": base64_key(3), "region": "Not A Region" }),
    ] {
        let (status, body) = add(&app, &token, bad.clone()).await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::BAD_REQUEST, "validation_failed"),
            "{bad}: {body}"
        );
    }
    let (status, body) = add(
        &app,
        &token,
        json!({ "public_key": base64_key(3), "admin": true }),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "unknown_field")
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM devices").await, 0);
    assert_eq!(app.count("SELECT COUNT(*) FROM peer_changes").await, 0);
    assert_eq!(
        app.count("SELECT next_host FROM vpn_servers").await,
        2,
        "no address was taken"
    );

    // One key, one device: a second device with the same key is a conflict.
    let (status, _) = add(
        &app,
        &token,
        json!({ "public_key": base64_key(3), "name": "a" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = add(
        &app,
        &token,
        json!({ "public_key": base64_key(3), "name": "b" }),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "key_in_use")
    );
    let (status, body) = add(
        &app,
        &token,
        json!({ "public_key": base64_key(4), "name": "a" }),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "name_taken")
    );
    let (status, body) = add(
        &app,
        &token,
        json!({ "public_key": base64_key(5), "region": "eu-de" }),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "no_server_available")
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM devices").await, 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM peer_changes").await, 1);
}

async fn rename_delete_and_rotate_record_their_peer_changes(engine: Engine) {
    let app = TestApp::start(engine).await;
    let server = app.add_server("vpn1", "us-east", 1).await;
    let server_id = server["id"].as_i64().unwrap();
    let (user_id, token) = app.customer("ops@example.com").await;
    app.set_plan(user_id, "personal").await;
    let (_, a) = add(
        &app,
        &token,
        json!({ "public_key": base64_key(20), "name": "phone" }),
    )
    .await;
    let a_id = a["device"]["id"].as_str().unwrap().to_owned();
    assert_eq!(a["device"]["ipv4_address"], "10.8.0.2");
    assert_eq!(a["device"]["ipv6_address"], "fd00:1:2:3::2");

    // Rename: no peer change (the node does not care), 409 on a duplicate.
    let (status, renamed) = app
        .http
        .patch(app.url(&format!("/api/v1/devices/{a_id}")))
        .bearer_auth(&token)
        .json(&json!({ "name": "work phone" }))
        .send()
        .await
        .map(|r| (r.status(), r))
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(common::split(renamed).await.1["name"], "work phone");

    // Rotation without a key: a pair is generated; the upsert names the old key.
    let (status, rotated) = app
        .post_auth(&format!("/api/v1/devices/{a_id}/rotate-key"), &token, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new_key = rotated["device"]["public_key"].as_str().unwrap().to_owned();
    let private = rotated["private_key"].as_str().unwrap();
    assert!(
        rotated["config"]
            .as_str()
            .unwrap()
            .contains(&format!("PrivateKey = {private}"))
    );
    assert_ne!(new_key, base64_key(20));
    let changes = app.peer_changes(server_id).await;
    assert_eq!(changes.len(), 2);
    assert_eq!(
        (changes[1].0, changes[1].1.as_str(), changes[1].2.as_str()),
        (2, "upsert", new_key.as_str())
    );
    assert_eq!(changes[1].3.as_deref(), Some(base64_key(20).as_str()));
    assert_eq!(changes[1].4, "key_rotated");
    let (status, none_stored): (StatusCode, Value) = app.get_auth("/api/v1/devices", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !none_stored.to_string().contains(private),
        "the private key is never stored or shown again"
    );

    // Delete: a removal, and the address rests in quarantine before anyone gets it again.
    let (status, _) = app
        .delete_auth(&format!("/api/v1/devices/{a_id}"), &token)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let changes = app.peer_changes(server_id).await;
    assert_eq!(
        (changes[2].0, changes[2].1.as_str(), changes[2].2.as_str()),
        (3, "remove", new_key.as_str())
    );
    let (_, b) = add(&app, &token, json!({ "public_key": base64_key(21) })).await;
    assert_eq!(
        b["device"]["ipv4_address"], "10.8.0.3",
        "the released address is quarantined"
    );
    app.advance(Duration::from_secs(25 * 3600));
    let token = app.token_for("ops@example.com").await;
    let (_, c) = add(&app, &token, json!({ "public_key": base64_key(22) })).await;
    assert_eq!(
        c["device"]["ipv4_address"], "10.8.0.2",
        "reused after the quarantine"
    );
    let (status, _) = app
        .delete_auth(&format!("/api/v1/devices/{a_id}"), &token)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Another user's device is invisible.
    let (_, other) = app.customer("other@example.com").await;
    let b_id = b["device"]["id"].as_str().unwrap();
    assert_eq!(
        app.delete_auth(&format!("/api/v1/devices/{b_id}"), &other)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let revisions: Vec<i64> = app
        .peer_changes(server_id)
        .await
        .iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(revisions, vec![1, 2, 3, 4, 5]);
}

async fn the_config_matches_the_golden_file_and_its_qr_code_decodes_to_it(engine: Engine) {
    let app = TestApp::start(engine).await;
    app.add_server("vpn1", "us-east", 1).await;
    let (_, token) = app.customer("golden@example.com").await;
    let (status, created) = add(
        &app,
        &token,
        json!({ "public_key": base64_key(2), "name": "laptop" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let golden = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/client.conf"
    ))
    .unwrap();
    assert_eq!(created["config"].as_str().unwrap(), golden);
    let id = created["device"]["id"].as_str().unwrap();

    let resp = app
        .http
        .get(app.url(&format!("/api/v1/devices/{id}/config")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-disposition"],
        "attachment; filename=\"truevault-laptop.conf\""
    );
    assert_eq!(resp.text().await.unwrap(), golden);

    let resp = app
        .http
        .get(app.url(&format!("/api/v1/devices/{id}/qr.png")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "image/png");
    let png = resp.bytes().await.unwrap();
    let decoder = png::Decoder::new(std::io::Cursor::new(png.to_vec()));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    let (w, h) = (info.width as usize, info.height as usize);
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| pixels[y * w + x]);
    let grids = image.detect_grids();
    assert_eq!(grids.len(), 1);
    let (_, text) = grids[0].decode().unwrap();
    assert_eq!(text, golden, "the QR code holds exactly the config");

    let svg = app
        .http
        .get(app.url(&format!("/api/v1/devices/{id}/qr.svg")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");
    assert!(svg.text().await.unwrap().contains("<svg"));
}

async fn downgrade_expiry_and_suspension_remove_every_affected_peer(engine: Engine) {
    let app = TestApp::start(engine).await;
    let server = app.add_server("vpn1", "us-east", 1).await;
    let server_id = server["id"].as_i64().unwrap();
    let (user_id, token) = app.customer("big@example.com").await;
    app.set_plan(user_id, "business").await;
    let mut keys = Vec::new();
    for i in 0..5u8 {
        let (status, _) = add(
            &app,
            &token,
            json!({ "public_key": base64_key(30 + i), "name": format!("d{i}") }),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        keys.push(base64_key(30 + i));
    }
    // Downgrade to personal (3): the two newest leave their server.
    app.set_plan(user_id, "personal").await;
    let changes = app.peer_changes(server_id).await;
    let removed: Vec<&str> = changes[5..]
        .iter()
        .filter(|c| c.1 == "remove")
        .map(|c| c.2.as_str())
        .collect();
    assert_eq!(removed, [keys[3].as_str(), keys[4].as_str()]);
    let (_, list) = app.get_auth("/api/v1/devices", &token).await;
    let statuses: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["pending", "pending", "pending", "disabled", "disabled"]
    );
    // Back up: they return.
    app.set_plan(user_id, "family").await;
    let upserts = app.peer_changes(server_id).await[7..]
        .iter()
        .filter(|c| c.1 == "upsert")
        .count();
    assert_eq!(upserts, 2);

    // Suspension removes every peer; restoring brings them back.
    let admin = app.admin_token().await;
    let before = app.peer_changes(server_id).await.len();
    let (status, _) = app
        .post_auth(
            &format!("/api/v1/admin/users/{user_id}/suspend"),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let after = app.peer_changes(server_id).await;
    assert_eq!(
        after[before..]
            .iter()
            .filter(|c| c.1 == "remove" && c.4 == "account_suspended")
            .count(),
        5
    );
    assert_eq!(
        app.get_auth("/api/v1/devices", &token).await.0,
        StatusCode::UNAUTHORIZED,
        "sessions ended"
    );
    let (status, _) = app
        .post_auth(
            &format!("/api/v1/admin/users/{user_id}/restore"),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM devices WHERE status = 'pending'")
            .await,
        5
    );

    // Trial expiry (the automation sweep) removes the trial user's peer.
    let (_, trial_token) = app.customer("trial@example.com").await;
    let (status, _) = add(&app, &trial_token, json!({ "public_key": base64_key(60) })).await;
    assert_eq!(status, StatusCode::CREATED);
    app.advance(Duration::from_secs(7 * 24 * 3600 + 60));
    app.automation().enqueue_sweep().await.unwrap();
    app.run_tasks().await;
    let last = app.peer_changes(server_id).await.pop().unwrap();
    assert_eq!(
        (last.1.as_str(), last.2.as_str(), last.4.as_str()),
        ("remove", base64_key(60).as_str(), "trial_expired")
    );
    let revisions: Vec<i64> = app
        .peer_changes(server_id)
        .await
        .iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(
        revisions,
        (1..=revisions.len() as i64).collect::<Vec<_>>(),
        "revisions only grow, without gaps"
    );
}

async fn twenty_concurrent_adds_on_a_three_device_plan_give_three(engine: Engine) {
    let app = TestApp::start(engine).await;
    app.add_server("vpn1", "us-east", 1).await;
    let (user_id, token) = app.customer("race@example.com").await;
    app.set_plan(user_id, "personal").await;
    let attempts =
        (0..20u8).map(|i| add(&app, &token, json!({ "public_key": base64_key(100 + i) })));
    let results = futures_util::future::join_all(attempts).await;
    let created = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    let refused = results
        .iter()
        .filter(|(s, b)| *s == StatusCode::FORBIDDEN && error_code(b) == "device_limit_reached")
        .count();
    assert_eq!((created, refused), (3, 17), "{results:?}");
    assert_eq!(app.count("SELECT COUNT(*) FROM devices").await, 3);
    assert_eq!(app.count("SELECT COUNT(*) FROM peer_changes").await, 3);
}

async fn two_hundred_concurrent_adds_on_one_server_get_distinct_addresses(engine: Engine) {
    let app = TestApp::start(engine).await;
    app.add_server("vpn1", "us-east", 1).await;
    let users = app.insert_trial_users(200, i64::MAX / 2).await;
    let devices = app.state.devices();
    let attempts = users.iter().enumerate().map(|(i, user)| {
        let key = {
            use base64::Engine as _;
            let mut bytes = [7u8; 32];
            bytes[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            base64::engine::general_purpose::STANDARD.encode(bytes)
        };
        devices.create(
            *user,
            serde_json::from_value(json!({ "public_key": key })).unwrap(),
        )
    });
    let results = futures_util::future::join_all(attempts).await;
    let addresses: HashSet<String> = results
        .iter()
        .map(|r| r.as_ref().unwrap().device.ipv4_address.clone())
        .collect();
    assert_eq!(addresses.len(), 200, "every device has its own address");
    let v6: HashSet<String> = results
        .iter()
        .map(|r| r.as_ref().unwrap().device.ipv6_address.clone().unwrap())
        .collect();
    assert_eq!(v6.len(), 200);
    assert_eq!(
        app.count("SELECT config_revision FROM vpn_servers").await,
        200
    );
}

async fn a_promo_code_with_five_uses_is_used_exactly_five_times(engine: Engine) {
    let app = TestApp::start(engine).await;
    sqlx::query("INSERT INTO promo_codes (code, percent_off, max_uses, created_at, updated_at) VALUES ('FIVE', 50, 5, 0, 0)")
        .execute(app.db().pool())
        .await
        .unwrap();
    let users = app.insert_trial_users(50, i64::MAX / 2).await;
    let attempts = users.iter().map(|user| {
        let db = app.db().clone();
        let now = truevault_control_plane::clock::Clock::now_ms(&*app.clock);
        async move {
            let mut tx = db.begin_write().await.unwrap();
            let result =
                truevault_control_plane::billing::promo::redeem(tx.conn(), "five", *user, now)
                    .await;
            if result.is_ok() {
                tx.commit().await.unwrap();
            } else {
                tx.rollback().await.unwrap();
            }
            result
        }
    });
    let results = futures_util::future::join_all(attempts).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 5, "{results:?}");
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| e.code() == "promo_used_up")
    );
    assert_eq!(
        app.count("SELECT uses FROM promo_codes WHERE code = 'FIVE'")
            .await,
        5
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM promo_redemptions").await, 5);

    // The public check: a quote, or a clear refusal.
    let (status, quote) = app
        .post(
            "/api/v1/billing/promo/validate",
            json!({ "code": "trial20", "plan": "personal" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{quote}");
    assert_eq!(
        (
            quote["percent_off"].as_i64(),
            quote["first_month_price_cents"].as_i64()
        ),
        (Some(20), Some(799))
    );
    let (status, body) = app
        .post("/api/v1/billing/promo/validate", json!({ "code": "five" }))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "promo_used_up")
    );
    assert_eq!(
        app.post(
            "/api/v1/billing/promo/validate",
            json!({ "code": "NOPE42" })
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.post("/api/v1/billing/promo/validate", json!({ "code": "x" }))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    let (status, plans) =
        common::split(app.http.get(app.url("/api/v1/plans")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let codes: Vec<&str> = plans
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["personal", "family", "business", "dedicated"]);
    assert_eq!(plans[0]["max_devices"], 3);
    assert_eq!(plans[0]["price_cents"], 999);
}

mod operators {
    use super::*;

    engine_tests!(servers_are_managed_by_operators_and_listed_without_internals);
}

async fn servers_are_managed_by_operators_and_listed_without_internals(engine: Engine) {
    let app = TestApp::start(engine).await;
    let admin = app.admin_token().await;
    for (bad, field) in [
        (
            json!({ "name": "x y", "region": "us-east", "endpoint_host": "h.example.com" }),
            "name",
        ),
        (
            json!({ "name": "a", "region": "us-east", "endpoint_host": "h.example.com", "ipv4_subnet": "8.8.8.0/24" }),
            "ipv4_subnet",
        ),
        (
            json!({ "name": "a", "region": "us-east", "endpoint_host": "h.example.com", "public_key": "nope" }),
            "public_key",
        ),
        (
            json!({ "name": "a", "region": "mars-1", "endpoint_host": "h.example.com" }),
            "country",
        ),
        (
            json!({ "name": "a", "region": "us-east", "endpoint_host": "bad host!" }),
            "endpoint_host",
        ),
    ] {
        let (status, body) = app
            .post_auth("/api/v1/admin/servers", &admin, Some(bad.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(
            body["error"]["details"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["field"] == field),
            "{field}: {body}"
        );
    }
    let server = app.add_server("vpn1", "eu-de", 1).await;
    assert_eq!(server["country"], "Germany");
    let (status, body) = app
        .post_auth(
            "/api/v1/admin/servers",
            &admin,
            Some(json!({ "name": "vpn1", "region": "eu-de", "endpoint_host": "x.example.com" })),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "server_name_taken")
    );

    let (status, public) = common::split(
        app.http
            .get(app.url("/api/v1/servers"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let entry = public[0].as_object().unwrap();
    let mut keys: Vec<&str> = entry.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["country", "id", "load_percent", "region", "status"],
        "nothing internal"
    );

    let id = server["id"].as_i64().unwrap();
    let (status, retired) = app
        .post_auth(&format!("/api/v1/admin/servers/{id}/retire"), &admin, None)
        .await;
    assert_eq!(
        (status, retired["status"].as_str()),
        (StatusCode::OK, Some("retired"))
    );
    let (_, public) = common::split(
        app.http
            .get(app.url("/api/v1/servers"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(public, json!([]));
    let (_, token) = app.customer("late@example.com").await;
    let (status, body) = add(
        &app,
        &token,
        json!({ "public_key": base64_key(5), "region": "eu-de" }),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "no_server_available"),
        "no device on a retired server"
    );
    let (status, list) = app.get_auth("/api/v1/admin/servers", &admin).await;
    assert_eq!(
        (status, list[0]["public_key"].as_str()),
        (StatusCode::OK, Some(base64_key(1).as_str()))
    );
    let (status, _) = app.get_auth("/api/v1/admin/servers", &token).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

mod review {
    use super::*;

    engine_tests!(
        vip_changes_reconcile_devices,
        a_downgrade_racing_device_adds_never_leaves_the_user_over_the_limit,
        conversions_racing_the_sweep_are_never_expired,
    );
}

async fn vip_changes_reconcile_devices(engine: Engine) {
    let app = TestApp::start(engine).await;
    let server = app.add_server("vpn1", "us-east", 1).await;
    let server_id = server["id"].as_i64().unwrap();
    // A trial user connects a device; the trial expires and takes it down.
    let (_, token) = app.customer("vipdev@example.com").await;
    let (status, _) = add(&app, &token, json!({ "public_key": base64_key(70) })).await;
    assert_eq!(status, StatusCode::CREATED);
    app.advance(Duration::from_secs(8 * 24 * 3600));
    app.automation().enqueue_sweep().await.unwrap();
    app.run_tasks().await;
    assert_eq!(
        app.count("SELECT COUNT(*) FROM devices WHERE status = 'disabled'")
            .await,
        1
    );
    // Verified and listed as a VIP: the device comes back.
    let admin = app.admin_token().await;
    let verify = {
        let token = app.token_for("vipdev@example.com").await;
        app.post_auth("/api/v1/auth/verify-email/resend", &token, None)
            .await;
        app.token_from_mail("vipdev@example.com", "verify_email", "verify_url")
            .await
    };
    app.post("/api/v1/auth/verify-email", json!({ "token": verify }))
        .await;
    let (status, _) = app
        .post_auth(
            "/api/v1/admin/vip",
            &admin,
            Some(json!({ "email": "vipdev@example.com", "tier": "vip_basic" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM devices WHERE status = 'pending'")
            .await,
        1,
        "re-enabled for the VIP"
    );
    let last = app.peer_changes(server_id).await.pop().unwrap();
    assert_eq!(
        (last.1.as_str(), last.4.as_str()),
        ("upsert", "vip_granted")
    );
    // Removed from the list: the lifetime grant ends and the peer leaves the server.
    let (status, _) = app
        .delete_auth("/api/v1/admin/vip/vipdev@example.com", &admin)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM devices WHERE status = 'disabled'")
            .await,
        1
    );
    let last = app.peer_changes(server_id).await.pop().unwrap();
    assert_eq!(
        (last.1.as_str(), last.4.as_str()),
        ("remove", "vip_revoked")
    );
}

async fn a_downgrade_racing_device_adds_never_leaves_the_user_over_the_limit(engine: Engine) {
    let app = TestApp::start(engine).await;
    app.add_server("vpn1", "us-east", 1).await;
    for round in 0..3u8 {
        let email = format!("racer{round}@example.com");
        let (user_id, token) = app.customer(&email).await;
        app.set_plan(user_id, "family").await;
        for i in 0..3u8 {
            let (status, _) = add(
                &app,
                &token,
                json!({ "public_key": base64_key(80 + round * 20 + i) }),
            )
            .await;
            assert_eq!(status, StatusCode::CREATED);
        }
        let admin = app.admin_token().await;
        let adds = (3..12u8).map(|i| {
            add(
                &app,
                &token,
                json!({ "public_key": base64_key(80 + round * 20 + i) }),
            )
        });
        let plan_url = format!("/api/v1/admin/users/{user_id}/plan");
        let downgrade = app.post_auth(&plan_url, &admin, Some(json!({ "plan": "personal" })));
        let (results, (status, body)) =
            tokio::join!(futures_util::future::join_all(adds), downgrade);
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        assert!(
            results
                .iter()
                .all(|(s, _)| *s == StatusCode::CREATED || *s == StatusCode::FORBIDDEN)
        );
        let (active,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM devices WHERE user_id = $1 AND status <> 'disabled'",
        )
        .bind(user_id)
        .fetch_one(app.db().pool())
        .await
        .unwrap();
        assert_eq!(
            active, 3,
            "round {round}: a personal plan keeps exactly 3 devices running"
        );
    }
}

async fn conversions_racing_the_sweep_are_never_expired(engine: Engine) {
    let app = TestApp::start(engine).await;
    let end = truevault_control_plane::clock::Clock::now_ms(&*app.clock) + 1000;
    let users = app.insert_trial_users(300, end).await;
    app.advance(Duration::from_secs(2));
    let now = truevault_control_plane::clock::Clock::now_ms(&*app.clock);
    let converting: Vec<i64> = users.iter().copied().step_by(2).collect();
    let db = app.db().clone();
    let conversions = converting.iter().map(|user| {
        let db = db.clone();
        async move {
            let mut tx = db.begin_write().await.unwrap();
            truevault_control_plane::billing::plans::change_plan(tx.conn(), *user, "personal", now)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
    });
    let sweep = truevault_control_plane::billing::trials::expire_due(&db, now);
    let (_, expired) = tokio::join!(futures_util::future::join_all(conversions), sweep);
    let expired = expired.unwrap();
    // Two interleavings are legitimate for a converting user. Its conversion committed first:
    // its one subscription is the converted trial and it was never mailed "expired". Or the
    // sweep committed first: the trial expired unconverted (mailed once) and the conversion
    // then started a new active subscription. Anything else (a converted trial that was also
    // expired or mailed) is the lost update this test is about.
    let mut swept_first: u64 = 0;
    for user in &converting {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, trial_converted FROM subscriptions WHERE user_id = $1 ORDER BY id",
        )
        .bind(*user)
        .fetch_all(app.db().pool())
        .await
        .unwrap();
        let (mails,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM mail_outbox WHERE user_id = $1 AND template = 'trial_expired'",
        )
        .bind(*user)
        .fetch_one(app.db().pool())
        .await
        .unwrap();
        let rows: Vec<(&str, i64)> = rows.iter().map(|(s, c)| (s.as_str(), *c)).collect();
        match (rows.as_slice(), mails) {
            ([("active", 1)], 0) => {}
            ([("expired", 0), ("active", 0)], 1) => swept_first += 1,
            other => panic!("user {user}: subscriptions and expiry mails {other:?}"),
        }
    }
    // The rest expire (now or in a later sweep), each mailed once.
    let later = truevault_control_plane::billing::trials::expire_due(app.db(), now)
        .await
        .unwrap();
    assert_eq!(expired + later, 150 + swept_first);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM mail_outbox WHERE template = 'trial_expired'")
            .await,
        150 + i64::try_from(swept_first).unwrap()
    );
}

async fn placement_prefers_a_dedicated_server_then_the_identity_server_then_the_least_loaded(
    engine: Engine,
) {
    let app = TestApp::start(engine).await;
    let busy = app.add_server("busy", "us-east", 1).await;
    let idle = app.add_server("idle", "us-east", 2).await;
    let europe = app.add_server("europe", "eu-de", 3).await;
    let id = |v: &Value| v["id"].as_i64().unwrap();
    let uuid = |v: &Value| v["uuid"].as_str().unwrap().to_owned();
    for (server, load) in [(&busy, 500), (&idle, 100)] {
        sqlx::query("UPDATE vpn_servers SET load_permille = $1 WHERE id = $2")
            .bind(load)
            .bind(id(server))
            .execute(app.db().pool())
            .await
            .unwrap();
    }
    let (user_id, token) = app.customer("placed@example.com").await;
    app.set_plan(user_id, "business").await;
    let mut n = 0u8;
    let mut place = |body: Value| {
        n += 1;
        let mut body = body;
        body["public_key"] = json!(common::base64_key(100 + n));
        body["name"] = json!(format!("d{n}"));
        let app = &app;
        let token = token.clone();
        async move { add(app, &token, body).await }
    };
    let server_of = |(status, body): (StatusCode, Value)| {
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["device"]["server"]["id"].as_str().unwrap().to_owned()
    };

    // No identity yet: the default region's least loaded server.
    assert_eq!(server_of(place(json!({})).await), uuid(&idle));
    // A region asked for.
    assert_eq!(
        server_of(place(json!({ "region": "eu-de" })).await),
        uuid(&europe)
    );
    // A server asked for.
    assert_eq!(
        server_of(place(json!({ "server_id": uuid(&busy) })).await),
        uuid(&busy)
    );
    // The user's identity server in the region wins over the least loaded one.
    sqlx::query(
        "INSERT INTO regional_identities (user_id, region, server_id, created_at, updated_at)
         VALUES ($1, 'us-east', $2, 0, 0)",
    )
    .bind(user_id)
    .bind(id(&busy))
    .execute(app.db().pool())
    .await
    .unwrap();
    assert_eq!(server_of(place(json!({})).await), uuid(&busy));
    // A server that does not exist (or is another user's dedicated one) is refused.
    let (status, body) =
        place(json!({ "server_id": "00000000-0000-4000-8000-000000000000" })).await;
    assert_eq!(
        (status, common::error_code(&body)),
        (StatusCode::CONFLICT, "server_unavailable")
    );
    // A region without servers is refused by name, and nothing is added.
    let (status, body) = place(json!({ "region": "asia-jp" })).await;
    assert_eq!(
        (status, common::error_code(&body)),
        (StatusCode::CONFLICT, "no_server_available")
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("asia-jp"),
        "{body}"
    );
    // A dedicated server of the user's wins over everything.
    let dedicated = app.add_server("mine", "eu-de", 4).await;
    sqlx::query(
        "UPDATE vpn_servers SET server_type = 'dedicated', dedicated_user_id = $1 WHERE id = $2",
    )
    .bind(user_id)
    .bind(id(&dedicated))
    .execute(app.db().pool())
    .await
    .unwrap();
    assert_eq!(server_of(place(json!({})).await), uuid(&dedicated));
    assert_eq!(
        server_of(place(json!({ "server_id": uuid(&idle) })).await),
        uuid(&dedicated)
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM devices").await, 6);
}
