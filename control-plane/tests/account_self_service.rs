//! A customer manages their own account: their name, their password (the current one
//! confirms it; other sessions end), and closing the account (access ends at once, the
//! person's details go, the address can register again), with the refusals and the race
//! against device adds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::paypal::{app_with_paypal, subscriber};
use common::{Engine, PASSWORD, TestApp, error_code};
use reqwest::StatusCode;
use serde_json::{Value, json};
use truevault_control_plane::billing::fake_paypal::FakePayPal;

engine_tests!(
    the_name_and_password_change_and_other_sessions_end,
    closing_an_account_ends_access_and_removes_the_person,
    closing_is_refused_while_a_subscription_bills_and_for_operators,
    a_closure_racing_device_adds_leaves_no_peer_behind,
    guessing_the_password_through_a_session_locks_the_account,
    a_reset_racing_a_change_always_wins,
);

const NEW_PASSWORD: &str = "a much longer new passphrase";

async fn close(app: &TestApp, token: &str, body: Value) -> (StatusCode, Value) {
    let response = app
        .http
        .delete(app.url("/api/v1/me"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    common::split(response).await
}

async fn user_devices(app: &TestApp, user_id: i64) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM devices WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(app.db().pool())
        .await
        .unwrap();
    n
}

async fn the_name_and_password_change_and_other_sessions_end(engine: Engine) {
    let app = TestApp::start(engine).await;
    let email = "ada@example.com";
    let (_, here) = app.customer(email).await;
    let elsewhere = app.token_for(email).await;

    let (status, view) = app
        .patch_auth(
            "/api/v1/me",
            &here,
            json!({ "first_name": " Ada ", "last_name": "Lovelace" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(
        (&view["first_name"], &view["last_name"]),
        (&json!("Ada"), &json!("Lovelace"))
    );
    for (body, code) in [
        (json!({ "first_name": "A\u{7}da" }), "validation_failed"),
        (json!({ "nickname": "ada" }), "unknown_field"),
    ] {
        let (status, answer) = app.patch_auth("/api/v1/me", &here, body).await;
        assert_eq!(
            (status, error_code(&answer)),
            (StatusCode::BAD_REQUEST, code)
        );
    }
    let (_, me) = app.get_auth("/api/v1/me", &here).await;
    assert_eq!(me["first_name"], "Ada", "refusals changed nothing");

    // Wrong current password, or a weak new one: refused, and the old password still works.
    for (body, code) in [
        (
            json!({ "current_password": "not it at all", "new_password": NEW_PASSWORD }),
            "wrong_password",
        ),
        (
            json!({ "current_password": PASSWORD, "new_password": "short" }),
            "validation_failed",
        ),
    ] {
        let (status, answer) = app
            .post_auth("/api/v1/me/password", &here, Some(body))
            .await;
        assert_eq!(
            (status, error_code(&answer)),
            (StatusCode::BAD_REQUEST, code),
            "{answer}"
        );
    }
    assert_eq!(app.login(email, PASSWORD).await.0, StatusCode::OK);

    let (status, body) = app
        .post_auth(
            "/api/v1/me/password",
            &here,
            Some(json!({ "current_password": PASSWORD, "new_password": NEW_PASSWORD })),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(app.get_auth("/api/v1/me", &here).await.0, StatusCode::OK);
    assert_eq!(
        app.get_auth("/api/v1/me", &elsewhere).await.0,
        StatusCode::UNAUTHORIZED,
        "other sessions end"
    );
    assert_eq!(app.login(email, PASSWORD).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(app.login(email, NEW_PASSWORD).await.0, StatusCode::OK);
    // The owner is told, once (the refused attempts told nobody anything).
    let told = app
        .mail_templates(email)
        .await
        .iter()
        .filter(|t| *t == "password_changed")
        .count();
    assert_eq!(told, 1);
    assert_eq!(
        app.last_mail(email, "password_changed").await["how"],
        "changed"
    );
}

async fn closing_an_account_ends_access_and_removes_the_person(engine: Engine) {
    let app = TestApp::start(engine).await;
    let server = app.add_server("vpn1", "us-east", 1).await;
    let server_id = server["id"].as_i64().unwrap();
    let email = "leaving@example.com";
    let (user_id, token) = app.customer(email).await;
    app.set_plan(user_id, "family").await;
    for key in [10, 11] {
        let (status, body) = app
            .post_auth(
                "/api/v1/devices",
                &token,
                Some(json!({ "public_key": common::base64_key(key) })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    for (body, expected) in [
        (json!({}), (StatusCode::BAD_REQUEST, "validation_failed")),
        (
            json!({ "password": "not it at all" }),
            (StatusCode::BAD_REQUEST, "wrong_password"),
        ),
    ] {
        let (status, answer) = close(&app, &token, body).await;
        assert_eq!((status, error_code(&answer)), expected, "{answer}");
    }
    assert_eq!(user_devices(&app, user_id).await, 2, "nothing changed");

    // The verification mail goes out first: sent mail must not keep the person either.
    assert!(app.deliver_mail().await >= 1);
    let (status, body) = close(&app, &token, json!({ "password": PASSWORD })).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (kept,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM mail_outbox WHERE (to_address = $1 OR context LIKE '%Test%')
                                          AND template <> 'account_closed'",
    )
    .bind(email)
    .fetch_one(app.db().pool())
    .await
    .unwrap();
    assert_eq!(kept, 0, "no mail row names the person");
    // Access ends: the session, the login, and both peers on the node.
    assert_eq!(
        app.get_auth("/api/v1/me", &token).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.login(email, PASSWORD).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(user_devices(&app, user_id).await, 0);
    assert!(app.replayed_peers(server_id).await.is_empty());
    let closed_reasons = app
        .peer_changes(server_id)
        .await
        .iter()
        .filter(|c| c.1 == "remove" && c.4 == "account_closed")
        .count();
    assert_eq!(closed_reasons, 2);
    // The person is gone from the account; a goodbye goes to the address they had.
    let (stored_email, first_name, status): (String, String, String) =
        sqlx::query_as("SELECT email, first_name, status FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_one(app.db().pool())
            .await
            .unwrap();
    assert!(stored_email.ends_with("@closed.invalid"), "{stored_email}");
    assert_eq!((first_name.as_str(), status.as_str()), ("", "deleted"));
    for (sql, left) in [
        ("SELECT COUNT(*) FROM auth_sessions WHERE user_id = $1", 0),
        (
            "SELECT COUNT(*) FROM mail_outbox WHERE user_id = $1 AND status = 'pending'",
            0,
        ),
        (
            "SELECT COUNT(*) FROM scheduled_tasks WHERE user_id = $1 AND status = 'pending'",
            0,
        ),
        (
            "SELECT COUNT(*) FROM audit_log WHERE action = 'account.closed' AND target_id = CAST($1 AS TEXT)",
            1,
        ),
    ] {
        let (n,): (i64,) = sqlx::query_as(sql)
            .bind(user_id)
            .fetch_one(app.db().pool())
            .await
            .unwrap();
        assert_eq!(n, left, "{sql}");
    }
    assert_eq!(app.mail_templates(email).await, ["account_closed"]);
    // The address is free again, but its trial was used: a new account starts without one.
    let again = app.register(email).await;
    assert_ne!(again["user"]["id"].as_i64().unwrap(), user_id);
    assert_eq!(again["user"]["plan_type"], Value::Null, "{again}");
    assert!(
        again["message"]
            .as_str()
            .unwrap()
            .contains("already had its free trial"),
        "{again}"
    );
    let token = again["access_token"].as_str().unwrap();
    let (status, body) = app
        .post_auth(
            "/api/v1/devices",
            token,
            Some(json!({ "public_key": common::base64_key(12) })),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::FORBIDDEN, "no_subscription"),
        "{body}"
    );
    // Another address still gets its trial.
    let fresh = app.register("newcomer@example.com").await;
    assert_eq!(fresh["user"]["plan_type"], "trial");
}

async fn closing_is_refused_while_a_subscription_bills_and_for_operators(engine: Engine) {
    let fake = FakePayPal::start().await;
    let app = app_with_paypal(engine, &fake, |_| {}).await;
    let email = "payer@example.com";
    let (token, _) = subscriber(&app, &fake, email).await;
    let (status, body) = close(&app, &token, json!({ "password": PASSWORD })).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "subscription_active"),
        "{body}"
    );
    assert_eq!(app.get_auth("/api/v1/me", &token).await.0, StatusCode::OK);
    // Cancelled first: then it closes.
    let (status, body) = app
        .post_auth("/api/v1/billing/subscription/cancel", &token, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = close(&app, &token, json!({ "password": PASSWORD })).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    let admin = app.admin_token().await;
    let (status, body) = close(&app, &admin, json!({ "password": PASSWORD })).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "operator_account"),
        "{body}"
    );
}

async fn a_closure_racing_device_adds_leaves_no_peer_behind(engine: Engine) {
    let app = TestApp::start(engine).await;
    let server = app.add_server("vpn1", "us-east", 1).await;
    let server_id = server["id"].as_i64().unwrap();
    let (user_id, token) = app.customer("racer@example.com").await;
    app.set_plan(user_id, "business").await;
    let adds = (0..12u8).map(|i| {
        app.post_auth(
            "/api/v1/devices",
            &token,
            Some(json!({ "public_key": common::base64_key(100 + i) })),
        )
    });
    let (added, (status, body)) = tokio::join!(
        futures_util::future::join_all(adds),
        close(&app, &token, json!({ "password": PASSWORD }))
    );
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    for (status, body) in &added {
        assert!(
            [
                StatusCode::CREATED,
                StatusCode::UNAUTHORIZED,
                StatusCode::FORBIDDEN
            ]
            .contains(status),
            "{status} {body}"
        );
    }
    assert_eq!(user_devices(&app, user_id).await, 0);
    assert!(
        app.replayed_peers(server_id).await.is_empty(),
        "no device added around the closure is left on the node"
    );
}

async fn guessing_the_password_through_a_session_locks_the_account(engine: Engine) {
    let app = TestApp::start(engine).await;
    let email = "stolen-session@example.com";
    let (_, token) = app.customer(email).await;
    let guess = json!({ "current_password": "a wrong guess", "new_password": NEW_PASSWORD });
    let mut answers = Vec::new();
    for _ in 0..5 {
        let (status, body) = app
            .post_auth("/api/v1/me/password", &token, Some(guess.clone()))
            .await;
        answers.push((status, error_code(&body).to_owned()));
    }
    assert_eq!(
        answers.last().unwrap(),
        &(StatusCode::TOO_MANY_REQUESTS, "account_locked".to_owned()),
        "{answers:?}"
    );
    // Locked for the right password too, through the session and at login.
    let (status, body) = close(&app, &token, json!({ "password": PASSWORD })).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::TOO_MANY_REQUESTS, "account_locked")
    );
    assert_eq!(
        app.login(email, PASSWORD).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

async fn a_reset_racing_a_change_always_wins(engine: Engine) {
    let app = TestApp::start(engine).await;
    let email = "contested@example.com";
    let (_, token) = app.customer(email).await;
    let (status, _) = app
        .post("/api/v1/auth/password-reset", json!({ "email": email }))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let reset = app
        .token_from_mail(email, "password_reset", "reset_url")
        .await;
    const RESET: &str = "the password from the reset link";
    // Whichever commits first, the reset ends every session, so a change made through one
    // of them can never overwrite the password the owner just set by mail.
    let (changed, reset_answer) = tokio::join!(
        app.post_auth(
            "/api/v1/me/password",
            &token,
            Some(json!({ "current_password": PASSWORD, "new_password": NEW_PASSWORD })),
        ),
        app.post(
            "/api/v1/auth/password-reset/confirm",
            json!({ "token": reset, "new_password": RESET }),
        )
    );
    assert_eq!(reset_answer.0, StatusCode::OK, "{}", reset_answer.1);
    assert!(
        // Done before the reset; refused after it (its session ended, or the old password
        // no longer matches).
        [
            StatusCode::NO_CONTENT,
            StatusCode::UNAUTHORIZED,
            StatusCode::BAD_REQUEST
        ]
        .contains(&changed.0),
        "{changed:?}"
    );
    assert_eq!(app.login(email, RESET).await.0, StatusCode::OK);
    assert_eq!(
        app.login(email, NEW_PASSWORD).await.0,
        StatusCode::UNAUTHORIZED
    );
}
