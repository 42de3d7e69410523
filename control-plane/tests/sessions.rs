//! Login, tokens and sessions: refresh rotation and reuse detection, logout, expiry, lockout
//! (across replicas), per-address rate limits and password recovery.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Engine, PASSWORD, TestApp, error_code};
use reqwest::StatusCode;
use serde_json::{Value, json};

engine_tests!(
    login_checks_credentials_without_revealing_accounts,
    refresh_rotates_and_reuse_revokes_the_session,
    concurrent_refreshes_of_one_token_succeed_once,
    logout_ends_the_session_and_its_tokens,
    access_tokens_expire_after_fifteen_minutes,
    repeated_failures_lock_the_account_on_every_replica,
    concurrent_failed_logins_cannot_skip_the_lock,
    auth_routes_are_rate_limited_per_address,
    password_reset_is_single_use_and_ends_sessions,
);

fn tokens(body: &Value) -> (String, String) {
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["refresh_token"].as_str().unwrap().to_owned(),
    )
}

async fn login_checks_credentials_without_revealing_accounts(engine: Engine) {
    let app = TestApp::start(engine).await;
    app.register("who@example.com").await;
    let (status, body) = app.login(" WHO@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["email"], "who@example.com");

    let (wrong_status, wrong) = app.login("who@example.com", "wrong password").await;
    let (unknown_status, unknown) = app.login("nobody@example.com", PASSWORD).await;
    assert_eq!(wrong_status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown_status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        wrong, unknown,
        "a wrong password and an unknown email must look the same"
    );
    assert_eq!(error_code(&wrong), "invalid_credentials");

    let (status, body) = app.post("/api/v1/auth/login", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["details"].as_array().unwrap().len(), 2);
}

async fn refresh_rotates_and_reuse_revokes_the_session(engine: Engine) {
    let app = TestApp::start(engine).await;
    let reg = app.register("rot@example.com").await;
    let (_, first_refresh) = tokens(&reg);

    let (status, second) = app
        .post(
            "/api/v1/auth/refresh",
            json!({ "refresh_token": first_refresh }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let (second_access, second_refresh) = tokens(&second);
    assert_ne!(second_refresh, first_refresh);
    assert_eq!(
        app.get_auth("/api/v1/me", &second_access).await.0,
        StatusCode::OK
    );
    // Only the hash is stored.
    assert_eq!(
        app.count("SELECT COUNT(*) FROM refresh_tokens WHERE length(token_hash) = 64")
            .await,
        2
    );

    let (status, third) = app
        .post(
            "/api/v1/auth/refresh",
            json!({ "refresh_token": second_refresh }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (third_access, third_refresh) = tokens(&third);

    // Replaying a rotated token (as a thief would) revokes the whole family...
    let (status, body) = app
        .post(
            "/api/v1/auth/refresh",
            json!({ "refresh_token": first_refresh }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    // ...so the legitimate holder's newest tokens stop working too.
    let (status, _) = app
        .post(
            "/api/v1/auth/refresh",
            json!({ "refresh_token": third_refresh }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = app.get_auth("/api/v1/me", &third_access).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(
        app.count(
            "SELECT COUNT(*) FROM auth_sessions WHERE revoked_reason = 'refresh_token_reuse'"
        )
        .await,
        1
    );

    // Another session of the same account is not affected.
    let (status, other) = app.login("rot@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    let (other_access, _) = tokens(&other);
    assert_eq!(
        app.get_auth("/api/v1/me", &other_access).await.0,
        StatusCode::OK
    );

    for bad in [
        json!({ "refresh_token": "made-up" }),
        json!({ "refresh_token": "" }),
    ] {
        let (status, _) = app.post("/api/v1/auth/refresh", bad).await;
        assert!(status == StatusCode::UNAUTHORIZED || status == StatusCode::BAD_REQUEST);
    }
}

async fn concurrent_refreshes_of_one_token_succeed_once(engine: Engine) {
    let app = TestApp::start(engine).await;
    let reg = app.register("twice@example.com").await;
    let (_, refresh) = tokens(&reg);
    let attempts =
        (0..10).map(|_| app.post("/api/v1/auth/refresh", json!({ "refresh_token": refresh })));
    let results = futures_util::future::join_all(attempts).await;
    let ok = results.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    let denied = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::UNAUTHORIZED)
        .count();
    assert_eq!((ok, denied), (1, 9), "{results:?}");
    // One rotation happened: exactly two tokens exist in the family, one used.
    assert_eq!(app.count("SELECT COUNT(*) FROM refresh_tokens").await, 2);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM refresh_tokens WHERE used_at IS NOT NULL")
            .await,
        1
    );
}

async fn logout_ends_the_session_and_its_tokens(engine: Engine) {
    let app = TestApp::start(engine).await;
    let reg = app.register("bye@example.com").await;
    let (access, refresh) = tokens(&reg);
    let (_, second) = app.login("bye@example.com", PASSWORD).await;
    let (second_access, _) = tokens(&second);
    let (_, third) = app.login("bye@example.com", PASSWORD).await;
    let (third_access, third_refresh) = tokens(&third);

    let (status, _) = app.post_auth("/api/v1/auth/logout", &access, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.get_auth("/api/v1/me", &access).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = app
        .post("/api/v1/auth/refresh", json!({ "refresh_token": refresh }))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.get_auth("/api/v1/me", &second_access).await.0,
        StatusCode::OK
    );

    let (status, _) = app
        .post_auth(
            "/api/v1/auth/logout",
            &second_access,
            Some(json!({ "all": true })),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.get_auth("/api/v1/me", &third_access).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = app
        .post(
            "/api/v1/auth/refresh",
            json!({ "refresh_token": third_refresh }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, body) = app.post("/api/v1/auth/logout", json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body), "unauthenticated");
}

async fn access_tokens_expire_after_fifteen_minutes(engine: Engine) {
    let app = TestApp::start(engine).await;
    let reg = app.register("late@example.com").await;
    let (access, refresh) = tokens(&reg);
    app.clock.advance(Duration::from_secs(14 * 60));
    assert_eq!(app.get_auth("/api/v1/me", &access).await.0, StatusCode::OK);
    app.clock.advance(Duration::from_secs(60));
    let (status, body) = app.get_auth("/api/v1/me", &access).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    // The refresh token still works (30 days) and yields a fresh access token.
    let (status, fresh) = app
        .post("/api/v1/auth/refresh", json!({ "refresh_token": refresh }))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.get_auth("/api/v1/me", fresh["access_token"].as_str().unwrap())
            .await
            .0,
        StatusCode::OK
    );
    // Tampering with the token is refused.
    let mut forged = access.clone();
    forged.pop();
    forged.push(if access.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(
        app.get_auth("/api/v1/me", &forged).await.0,
        StatusCode::UNAUTHORIZED
    );
}

async fn repeated_failures_lock_the_account_on_every_replica(engine: Engine) {
    let app = TestApp::start(engine).await;
    let other = app.replica().await;
    app.register("lock@example.com").await;
    for attempt in 1..=4 {
        let (status, _) = app.login("lock@example.com", "wrong password").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {attempt}");
    }
    let (status, body) = other.login("lock@example.com", "wrong password").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(error_code(&body), "account_locked");

    // The right password does not open a locked account, on either replica.
    for instance in [&app, &other] {
        let resp = instance
            .http
            .post(instance.url("/api/v1/auth/login"))
            .json(&json!({ "email": "lock@example.com", "password": PASSWORD }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = resp.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=900).contains(&retry), "{retry}");
    }
    assert_eq!(
        app.count("SELECT COUNT(*) FROM audit_log WHERE action = 'user.locked'")
            .await,
        1
    );

    app.clock.advance(Duration::from_secs(15 * 60));
    let (status, _) = other.login("lock@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    // Success clears the count: four more failures do not lock again.
    for _ in 0..4 {
        assert_eq!(
            app.login("lock@example.com", "nope nope").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        app.login("lock@example.com", PASSWORD).await.0,
        StatusCode::OK
    );
}

async fn concurrent_failed_logins_cannot_skip_the_lock(engine: Engine) {
    let app = TestApp::start(engine).await;
    app.register("storm@example.com").await;
    let attempts = (0..12).map(|_| app.login("storm@example.com", "wrong password"));
    let results = futures_util::future::join_all(attempts).await;
    assert!(
        results
            .iter()
            .all(|(s, _)| *s == StatusCode::UNAUTHORIZED || *s == StatusCode::TOO_MANY_REQUESTS)
    );
    let (status, _) = app.login("storm@example.com", PASSWORD).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "12 concurrent failures must lock the account"
    );
}

async fn auth_routes_are_rate_limited_per_address(engine: Engine) {
    let app = TestApp::start_with(engine, |s| {
        s.auth_rate_limit_burst = 3;
        s.auth_rate_limit_per_minute = 1;
    })
    .await;
    for _ in 0..3 {
        let (status, _) = app.login("rl@example.com", PASSWORD).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let resp = app
        .http
        .post(app.url("/api/v1/auth/register"))
        .json(&json!({ "email": "rl@example.com", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().contains_key("retry-after"));
    let (_, body) = common::split(resp).await;
    assert_eq!(error_code(&body), "rate_limited");
    // Nothing was created by the refused request; routes outside /auth are not limited.
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0);
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

async fn password_reset_is_single_use_and_ends_sessions(engine: Engine) {
    let app = TestApp::start(engine).await;
    let reg = app.register("forgot@example.com").await;
    let (access, _) = tokens(&reg);

    let (known_status, known) = app
        .post(
            "/api/v1/auth/password-reset",
            json!({ "email": "Forgot@example.com" }),
        )
        .await;
    let (unknown_status, unknown) = app
        .post(
            "/api/v1/auth/password-reset",
            json!({ "email": "ghost@example.com" }),
        )
        .await;
    assert_eq!(known_status, StatusCode::ACCEPTED);
    assert_eq!(
        (known_status, &known),
        (unknown_status, &unknown),
        "must not reveal accounts"
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM mail_outbox WHERE template = 'password_reset'")
            .await,
        1
    );

    let token = app
        .token_from_mail("forgot@example.com", "password_reset", "reset_url")
        .await;
    let (status, body) = app
        .post(
            "/api/v1/auth/password-reset/confirm",
            json!({ "token": token, "new_password": "short" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["details"][0]["field"], "new_password");
    let (status, body) = app
        .post(
            "/api/v1/auth/password-reset/confirm",
            json!({ "token": token, "new_password": "a brand new secret" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = app
        .post(
            "/api/v1/auth/password-reset/confirm",
            json!({ "token": token, "new_password": "another secret!" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a reset link works once");

    assert_eq!(
        app.get_auth("/api/v1/me", &access).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login("forgot@example.com", PASSWORD).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, body) = app.login("forgot@example.com", "a brand new secret").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["user"]["email_verified"], true,
        "the reset link proves the mailbox"
    );
    assert_eq!(
        app.last_mail("forgot@example.com", "password_changed")
            .await["how"],
        "reset",
        "the owner is told"
    );

    // Links expire after an hour.
    app.post(
        "/api/v1/auth/password-reset",
        json!({ "email": "forgot@example.com" }),
    )
    .await;
    let token = app
        .token_from_mail("forgot@example.com", "password_reset", "reset_url")
        .await;
    app.clock.advance(Duration::from_secs(3601));
    let (status, body) = app
        .post(
            "/api/v1/auth/password-reset/confirm",
            json!({ "token": token, "new_password": "too late now" }),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_token")
    );
}
