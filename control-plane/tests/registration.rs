//! Registration: validation, the trial, duplicates (also under concurrency), and VIP status
//! that waits for a verified email.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Engine, PASSWORD, TestApp, error_code};
use reqwest::StatusCode;
use serde_json::json;
use truevault_control_plane::clock::Clock as _;

engine_tests!(
    every_validation_error_is_listed_and_nothing_is_created,
    registration_starts_a_seven_day_trial_in_one_transaction,
    duplicate_email_in_any_case_is_409,
    twenty_concurrent_registrations_of_one_email_create_one_account,
    vip_status_only_after_the_email_is_verified,
    vip_list_changes_reach_verified_accounts,
    verification_tokens_are_single_use_and_expire,
);

async fn every_validation_error_is_listed_and_nothing_is_created(engine: Engine) {
    let app = TestApp::start(engine).await;
    let cases = [
        (
            json!({}),
            vec![("email", "required"), ("password", "required")],
        ),
        (
            json!({ "email": "", "password": "" }),
            vec![("email", "required"), ("password", "required")],
        ),
        (
            json!({ "email": "not-an-email", "password": "longenough" }),
            vec![("email", "invalid")],
        ),
        (
            json!({ "email": "a@b.co", "password": "short" }),
            vec![("password", "too_short")],
        ),
        (
            json!({ "email": "nope@", "password": "1234567" }),
            vec![("email", "invalid"), ("password", "too_short")],
        ),
        (
            json!({ "email": "a@b.co", "password": "longenough", "first_name": "x".repeat(101) }),
            vec![("first_name", "too_long")],
        ),
    ];
    for (body, expected) in cases {
        let (status, resp) = app.post("/api/v1/auth/register", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {resp}");
        assert_eq!(error_code(&resp), "validation_failed");
        let got: Vec<(String, String)> = resp["error"]["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["field"].as_str().unwrap().to_owned(),
                    d["code"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(f, c)| ((*f).to_owned(), (*c).to_owned()))
            .collect();
        assert_eq!(got, expected, "{body}");
        for detail in resp["error"]["details"].as_array().unwrap() {
            assert!(!detail["message"].as_str().unwrap().is_empty());
        }
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0);
    assert_eq!(app.count("SELECT COUNT(*) FROM subscriptions").await, 0);
    assert_eq!(app.count("SELECT COUNT(*) FROM mail_outbox").await, 0);
}

async fn registration_starts_a_seven_day_trial_in_one_transaction(engine: Engine) {
    let app = TestApp::start(engine).await;
    let now = app.clock.now_ms();
    let body = app.register("  Grace.Hopper@Example.COM ").await;
    let user = &body["user"];
    assert_eq!(user["email"], "grace.hopper@example.com");
    assert_eq!(user["first_name"], "Test");
    assert_eq!(user["plan_type"], "trial");
    assert_eq!(user["subscription_status"], "trial");
    assert_eq!(user["is_vip"], false);
    assert_eq!(user["vip_badge"], serde_json::Value::Null);
    assert_eq!(user["email_verified"], false);
    let uuid = uuid::Uuid::parse_str(user["uuid"].as_str().unwrap()).unwrap();
    assert_eq!(uuid.get_version_num(), 4);
    assert!(body["access_token"].as_str().unwrap().split('.').count() == 3);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert!(body["refresh_token"].as_str().unwrap().len() >= 43);

    let (trial_started, trial_ends, period_end): (i64, i64, i64) = sqlx::query_as(
        "SELECT trial_started, trial_ends, current_period_end FROM subscriptions WHERE status = 'trial'",
    )
    .fetch_one(app.db().pool())
    .await
    .unwrap();
    assert_eq!(trial_started, now);
    assert_eq!(trial_ends - trial_started, 7 * 24 * 3600 * 1000);
    assert_eq!(period_end, trial_ends);
    let (tracked_ends, converted, expired): (i64, i64, i64) =
        sqlx::query_as("SELECT trial_ends, converted, expired FROM trial_tracking")
            .fetch_one(app.db().pool())
            .await
            .unwrap();
    assert_eq!((tracked_ends, converted, expired), (trial_ends, 0, 0));
    let expected_end = truevault_control_plane::clock::rfc3339(trial_ends);
    assert_eq!(user["trial_ends"], expected_end.as_str());
    // The verification mail was queued in the same transaction.
    let mail = app
        .last_mail("grace.hopper@example.com", "verify_email")
        .await;
    assert!(
        mail["verify_url"]
            .as_str()
            .unwrap()
            .contains("/verify-email?token=")
    );

    // The password is stored as an Argon2id PHC string, never in the clear.
    let (hash,): (String,) = sqlx::query_as("SELECT password_hash FROM users")
        .fetch_one(app.db().pool())
        .await
        .unwrap();
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
}

async fn duplicate_email_in_any_case_is_409(engine: Engine) {
    let app = TestApp::start(engine).await;
    app.register("dup@example.com").await;
    let (status, body) = app
        .post(
            "/api/v1/auth/register",
            json!({ "email": "DUP@Example.com", "password": PASSWORD }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error_code(&body), "email_taken");
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM subscriptions").await, 1);
}

async fn twenty_concurrent_registrations_of_one_email_create_one_account(engine: Engine) {
    let app = TestApp::start(engine).await;
    let variants = [
        "race@example.com",
        "RACE@example.com",
        "Race@Example.com",
        "race@EXAMPLE.COM",
    ];
    let attempts = (0..20).map(|i| {
        let app = &app;
        let email = format!("  {} ", variants[i % variants.len()]);
        async move {
            app.post(
                "/api/v1/auth/register",
                json!({ "email": email, "password": PASSWORD }),
            )
            .await
        }
    });
    let results = futures_util::future::join_all(attempts).await;
    let created = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    let conflicts = results
        .iter()
        .filter(|(s, b)| *s == StatusCode::CONFLICT && error_code(b) == "email_taken")
        .count();
    assert_eq!((created, conflicts), (1, 19), "{results:?}");
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM subscriptions").await, 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM trial_tracking").await, 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM auth_sessions").await, 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM mail_outbox").await, 1);
}

async fn vip_status_only_after_the_email_is_verified(engine: Engine) {
    let app = TestApp::start(engine).await;
    let admin = app.admin_token().await;
    for (email, tier, badge) in [
        ("vip@example.com", "vip_basic", "\u{2b50} VIP"),
        (
            "king@example.com",
            "vip_dedicated",
            "\u{1f451} VIP Dedicated",
        ),
    ] {
        let (status, body) = app
            .post_auth(
                "/api/v1/admin/vip",
                &admin,
                Some(json!({ "email": email, "tier": tier, "note": "friend" })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["granted"], false);

        // Registering a listed address gives nothing until the mailbox is proven.
        let reg = app.register(email).await;
        assert_eq!(reg["user"]["is_vip"], false);
        assert_eq!(reg["user"]["plan_type"], "trial");
        let access = reg["access_token"].as_str().unwrap();
        let (_, me) = app.get_auth("/api/v1/me", access).await;
        assert_eq!(me["is_vip"], false);

        let token = app
            .token_from_mail(email, "verify_email", "verify_url")
            .await;
        let (status, verified) = app
            .post("/api/v1/auth/verify-email", json!({ "token": token }))
            .await;
        assert_eq!(status, StatusCode::OK, "{verified}");
        assert_eq!(verified["message"], "Email verified. Welcome VIP!");
        let (_, me) = app.get_auth("/api/v1/me", access).await;
        assert_eq!(me["is_vip"], true, "{me}");
        assert_eq!(me["vip_badge"], badge);
        assert_eq!(me["plan_type"], "business");
        assert_eq!(me["subscription_status"], "active");
        assert_eq!(me["trial_ends"], serde_json::Value::Null);
        assert_eq!(me["email_verified"], true);
    }
    // Lifetime: no period end, and still one current subscription each.
    assert_eq!(
        app.count("SELECT COUNT(*) FROM subscriptions WHERE plan_type = 'business' AND current_period_end IS NULL").await,
        2
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM subscriptions").await, 2);

    // A regular user who verifies stays on the trial.
    let reg = app.register("plain@example.com").await;
    let token = app
        .token_from_mail("plain@example.com", "verify_email", "verify_url")
        .await;
    let (status, verified) = app
        .post("/api/v1/auth/verify-email", json!({ "token": token }))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(verified["user"]["is_vip"], false);
    assert_eq!(verified["user"]["plan_type"], "trial");
    assert_eq!(verified["user"]["email_verified"], true);
    assert!(reg["user"]["trial_ends"].is_string());
}

async fn vip_list_changes_reach_verified_accounts(engine: Engine) {
    let app = TestApp::start(engine).await;
    let admin = app.admin_token().await;
    let reg = app.register("later@example.com").await;
    let access = reg["access_token"].as_str().unwrap().to_owned();
    let token = app
        .token_from_mail("later@example.com", "verify_email", "verify_url")
        .await;
    app.post("/api/v1/auth/verify-email", json!({ "token": token }))
        .await;

    // Listed after verification: granted at once.
    let (status, entry) = app
        .post_auth(
            "/api/v1/admin/vip",
            &admin,
            Some(json!({ "email": "Later@Example.com", "tier": "vip_basic" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{entry}");
    assert_eq!(entry["granted"], true);
    assert_eq!(
        app.get_auth("/api/v1/me", &access).await.1["vip_badge"],
        "\u{2b50} VIP"
    );

    // Changing the tier changes the badge; the answer is 200 (updated), not 201.
    let (status, _) = app
        .post_auth(
            "/api/v1/admin/vip",
            &admin,
            Some(json!({ "email": "later@example.com", "tier": "vip_dedicated" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.get_auth("/api/v1/me", &access).await.1["vip_badge"],
        "\u{1f451} VIP Dedicated"
    );

    // Bad input is a clear 400 and changes nothing.
    let (status, body) = app
        .post_auth(
            "/api/v1/admin/vip",
            &admin,
            Some(json!({ "email": "later@example.com", "tier": "gold" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["details"][0]["field"], "tier");

    let (status, list) = app.get_auth("/api/v1/admin/vip", &admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["tier"], "vip_dedicated");

    // Removal takes the status and the lifetime grant away.
    let (status, _) = app
        .delete_auth("/api/v1/admin/vip/later@example.com", &admin)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, me) = app.get_auth("/api/v1/me", &access).await;
    assert_eq!(me["is_vip"], false);
    assert_eq!(me["subscription_status"], "cancelled");
    let (status, body) = app
        .delete_auth("/api/v1/admin/vip/later@example.com", &admin)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // Every admin action is in the audit log.
    let (_, audit) = app.get_auth("/api/v1/admin/audit?limit=50", &admin).await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for expected in [
        "vip.added",
        "vip.updated",
        "vip.removed",
        "vip.granted",
        "admin.created",
    ] {
        assert!(
            actions.contains(&expected),
            "{expected} missing from {actions:?}"
        );
    }
}

async fn verification_tokens_are_single_use_and_expire(engine: Engine) {
    let app = TestApp::start(engine).await;
    app.register("once@example.com").await;
    let token = app
        .token_from_mail("once@example.com", "verify_email", "verify_url")
        .await;
    let (status, _) = app
        .post("/api/v1/auth/verify-email", json!({ "token": token }))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app
        .post("/api/v1/auth/verify-email", json!({ "token": token }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "invalid_token");
    let (status, body) = app.post("/api/v1/auth/verify-email", json!({})).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "validation_failed")
    );

    // A link older than 24 hours no longer works; a resent one does, and retires the old.
    let reg = app.register("late@example.com").await;
    let access = reg["access_token"].as_str().unwrap().to_owned();
    let stale = app
        .token_from_mail("late@example.com", "verify_email", "verify_url")
        .await;
    app.clock.advance(Duration::from_secs(24 * 3600 + 1));
    let (status, _) = app
        .post("/api/v1/auth/verify-email", json!({ "token": stale }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // The old access token has expired by now as well: log in again to ask for a new link.
    let (status, _) = app
        .post_auth("/api/v1/auth/verify-email/resend", &access, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, login) = app.login("late@example.com", PASSWORD).await;
    let access = login["access_token"].as_str().unwrap();
    let (status, _) = app
        .post_auth("/api/v1/auth/verify-email/resend", access, None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let fresh = app
        .token_from_mail("late@example.com", "verify_email", "verify_url")
        .await;
    assert_ne!(fresh, stale);
    let (status, _) = app
        .post("/api/v1/auth/verify-email", json!({ "token": fresh }))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app
        .post_auth("/api/v1/auth/verify-email/resend", access, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
