//! The HTTP edge: one error shape for every failure, body limits, content types, unknown
//! routes, admin authorization, operational endpoints, and migrations on both engines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Engine, PASSWORD, TestApp, error_code};
use reqwest::StatusCode;
use serde_json::{Value, json};

engine_tests!(
    malformed_unknown_and_mistyped_bodies_get_clear_errors,
    oversized_bodies_are_413_and_change_nothing,
    unknown_routes_and_methods_answer_in_json,
    admin_endpoints_need_the_admin_role,
    health_readiness_metrics_and_openapi,
    metrics_are_for_this_machine_or_the_metrics_token,
    migrations_are_idempotent,
    slow_requests_get_503_in_the_error_shape,
);

async fn raw(
    app: &TestApp,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut req = app.http.post(app.url(path)).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    common::split(req.send().await.unwrap()).await
}

fn assert_error_shape(body: &Value) {
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("not the error shape: {body}"));
    assert!(
        error["code"].is_string() && error["message"].is_string() && error["details"].is_array(),
        "{body}"
    );
}

async fn malformed_unknown_and_mistyped_bodies_get_clear_errors(engine: Engine) {
    let app = TestApp::start(engine).await;
    let path = "/api/v1/auth/register";
    let cases: Vec<(Option<&str>, &str, StatusCode, &str)> = vec![
        (
            Some("application/json"),
            "{\"email\": ",
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            Some("application/json"),
            "not json at all",
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            Some("application/json"),
            "",
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            Some("application/json"),
            r#"{"email":"a@b.co","password":"longenough","is_vip":true}"#,
            StatusCode::BAD_REQUEST,
            "unknown_field",
        ),
        (
            Some("application/json"),
            r#"{"email":42,"password":"longenough"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            Some("application/json"),
            "[1,2,3]",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            None,
            r#"{"email":"a@b.co","password":"longenough"}"#,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            Some("text/plain"),
            r#"{"email":"a@b.co","password":"longenough"}"#,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
    ];
    for (content_type, body, status, code) in cases {
        let (got, resp) = raw(&app, path, content_type, body.as_bytes().to_vec()).await;
        assert_eq!(
            (got, error_code(&resp)),
            (status, code),
            "{content_type:?} {body} -> {resp}"
        );
        assert_error_shape(&resp);
    }
    // Accepted with a charset parameter.
    let (status, _) = raw(
        &app,
        path,
        Some("application/json; charset=utf-8"),
        br#"{"email":"ok@b.co","password":"longenough"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 1);
}

async fn oversized_bodies_are_413_and_change_nothing(engine: Engine) {
    let app = TestApp::start_with(engine, |s| s.max_body_bytes = 4096).await;
    let big = json!({ "email": "big@example.com", "password": PASSWORD, "first_name": "x".repeat(10_000) });
    let (status, body) = app.post("/api/v1/auth/register", big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(error_code(&body), "payload_too_large");
    assert!(body["error"]["message"].as_str().unwrap().contains("4096"));
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0);
}

async fn unknown_routes_and_methods_answer_in_json(engine: Engine) {
    let app = TestApp::start(engine).await;
    let resp = app.http.get(app.url("/api/v1/nope")).send().await.unwrap();
    assert!(resp.headers().contains_key("x-request-id"));
    let (status, body) = common::split(resp).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (status, body) = common::split(
        app.http
            .get(app.url("/api/v1/auth/register"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    let (status, body) = app.get_auth("/api/v1/me", "garbage").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    let resp = app.http.get(app.url("/api/v1/me")).send().await.unwrap();
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Path and query parameters that do not parse are refused in the error shape too.
    let admin = app.admin_token().await;
    for (path, code) in [
        ("/api/v1/admin/users/abc", "invalid_path"),
        ("/api/v1/admin/audit?limit=many", "invalid_query"),
        ("/api/v1/admin/users?colour=blue", "invalid_query"),
    ] {
        let resp = app
            .http
            .get(app.url(path))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["content-type"], "application/json", "{path}");
        let (status, body) = common::split(resp).await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::BAD_REQUEST, code),
            "{path}: {body}"
        );
    }
}

async fn admin_endpoints_need_the_admin_role(engine: Engine) {
    let app = TestApp::start(engine).await;
    let reg = app.register("customer@example.com").await;
    let customer = reg["access_token"].as_str().unwrap();
    let (status, body) = app.get_auth("/api/v1/admin/vip", customer).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let (status, _) = app
        .post_auth(
            "/api/v1/admin/vip",
            customer,
            Some(json!({ "email": "customer@example.com", "tier": "vip_basic" })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM vip_list").await,
        0,
        "a refused request changes nothing"
    );
    let (status, _) = common::split(
        app.http
            .get(app.url("/api/v1/admin/audit"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Promotion takes effect on the next request (the role is read fresh, not from the token).
    app.state
        .accounts()
        .set_role(
            "customer@example.com",
            truevault_control_plane::accounts::Role::Admin,
            truevault_control_plane::audit::Actor::Cli,
        )
        .await
        .unwrap();
    let (status, _) = app.get_auth("/api/v1/admin/vip", customer).await;
    assert_eq!(status, StatusCode::OK);
    let (status, me) = app.get_auth("/api/v1/me", customer).await;
    assert_eq!(
        (status, me["role"].as_str()),
        (StatusCode::OK, Some("admin"))
    );
}

async fn health_readiness_metrics_and_openapi(engine: Engine) {
    let app = TestApp::start(engine).await;
    let get = |path: &'static str| app.http.get(app.url(path)).send();
    let (status, body) = common::split(get("/healthz").await.unwrap()).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, body) = common::split(get("/readyz").await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let expected = match engine {
        Engine::Sqlite => "sqlite",
        Engine::Postgres => "postgres",
    };
    assert_eq!(body["database"], expected);

    app.login("nobody@example.com", PASSWORD).await;
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(r#"truevault_http_requests_total{method="POST",route="/api/v1/auth/login",status="401"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("truevault_http_request_duration_seconds_bucket"));

    let (status, doc) = common::split(get("/openapi.json").await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/auth/register",
        "/api/v1/auth/login",
        "/api/v1/auth/refresh",
        "/api/v1/me",
        "/api/v1/admin/vip",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    // Readiness reflects the database: closed pool, not ready.
    app.db().close().await;
    let (status, body) = common::split(get("/readyz").await.unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_error_shape(&body);
}

async fn migrations_are_idempotent(engine: Engine) {
    let app = TestApp::start(engine).await;
    // Already applied at start: a second run applies nothing and keeps the data.
    app.register("keep@example.com").await;
    assert_eq!(app.db().migrate().await.unwrap(), Vec::<i64>::new());
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM plans").await, 5);
    assert!(truevault_control_plane::storage::version_drift().is_empty());
}

async fn slow_requests_get_503_in_the_error_shape(engine: Engine) {
    // Argon2id at 128 MiB and 32 passes (4 GiB of memory traffic) takes several seconds even
    // on a fast idle core: far over a one-second request limit.
    let app = TestApp::start_with(engine, |s| {
        s.request_timeout_secs = 1;
        s.password_hash_memory_kib = 128 * 1024;
        s.password_hash_iterations = 32;
    })
    .await;
    let (status, body) = app
        .post(
            "/api/v1/auth/register",
            json!({ "email": "slow@example.com", "password": PASSWORD }),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(error_code(&body), "unavailable");
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0);
}

/// Behind a trusted proxy, a remote client (known from `X-Forwarded-For`) is refused the
/// metrics unless it presents the metrics token; a client on this machine needs none.
async fn metrics_are_for_this_machine_or_the_metrics_token(engine: Engine) {
    let app = TestApp::start_with(engine, |s| {
        s.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        s.metrics_token = Some(truevault_control_plane::secret::Secret::new("scrape-me"));
    })
    .await;
    let get = |forwarded: Option<&str>, token: Option<&str>| {
        let mut req = app.http.get(app.url("/metrics"));
        if let Some(ip) = forwarded {
            req = req.header("x-forwarded-for", ip);
        }
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send()
    };
    let local = get(None, None).await.unwrap();
    assert_eq!(local.status(), StatusCode::OK);
    assert!(local.text().await.unwrap().contains("truevault_"));
    for token in [None, Some("guess"), Some("")] {
        let (status, body) = common::split(get(Some("203.0.113.9"), token).await.unwrap()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{token:?}: {body}");
        assert_eq!(error_code(&body), "forbidden");
    }
    let remote = get(Some("203.0.113.9"), Some("scrape-me")).await.unwrap();
    assert_eq!(remote.status(), StatusCode::OK);
    assert!(remote.text().await.unwrap().contains("truevault_"));
}
