//! Node enrollment tokens: single use, short-lived, stored hashed, issued to operators only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Engine, TestApp, error_code};
use reqwest::StatusCode;
use truevault_control_plane::clock::Clock as _;
use truevault_control_plane::nodes::enrollment;

engine_tests!(enrollment_tokens_work_once_for_an_hour_and_only_for_operators);

async fn enrollment_tokens_work_once_for_an_hour_and_only_for_operators(engine: Engine) {
    let app = TestApp::start(engine).await;
    let server = app.add_server("vpn1", "us-east", 1).await;
    let server_id = server["id"].as_i64().unwrap();
    let admin = app.admin_token().await;
    let url = format!("/api/v1/admin/servers/{server_id}/enrollment-token");

    let (status, issued) = app.post_auth(&url, &admin, None).await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let token = issued["token"].as_str().unwrap().to_owned();
    assert!(token.len() >= 43);
    let (hash,): (String,) = sqlx::query_as("SELECT token_hash FROM node_enrollment_tokens")
        .fetch_one(app.db().pool())
        .await
        .unwrap();
    assert_eq!(
        hash,
        truevault_control_plane::crypto::sha256_hex(token.as_bytes()),
        "stored only hashed"
    );

    // Used once, for its server; a second use, a made-up token and an expired one all fail alike.
    let consume = |token: String| {
        let db = app.db().clone();
        let now = app.clock.now_ms();
        async move {
            let mut tx = db.begin_write().await.unwrap();
            let result = enrollment::consume(tx.conn(), &token, now).await;
            tx.commit().await.unwrap();
            result
        }
    };
    assert_eq!(consume(token.clone()).await.unwrap(), server_id);
    let reused = consume(token).await.unwrap_err();
    assert_eq!(reused.code(), "unauthenticated");
    assert_eq!(
        consume("made-up".into()).await.unwrap_err().to_string(),
        reused.to_string()
    );
    let (_, fresh) = app.post_auth(&url, &admin, None).await;
    app.advance(Duration::from_secs(3601));
    assert!(
        consume(fresh["token"].as_str().unwrap().to_owned())
            .await
            .is_err(),
        "expired after an hour"
    );

    // Concurrent uses of one token: exactly one wins.
    let admin = app.admin_token().await;
    let (_, racing) = app.post_auth(&url, &admin, None).await;
    let racing = racing["token"].as_str().unwrap().to_owned();
    let results = futures_util::future::join_all((0..10).map(|_| consume(racing.clone()))).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);

    // Operators only; unknown and retired servers are refused.
    let (_, customer) = app.customer("nosy@example.com").await;
    assert_eq!(
        app.post_auth(&url, &customer, None).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.post_auth("/api/v1/admin/servers/99999/enrollment-token", &admin, None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    app.post_auth(
        &format!("/api/v1/admin/servers/{server_id}/retire"),
        &admin,
        None,
    )
    .await;
    let (status, body) = app.post_auth(&url, &admin, None).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "server_retired")
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM audit_log WHERE action = 'node.token_issued'")
            .await,
        3
    );
}
