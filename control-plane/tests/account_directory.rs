//! Operators find customers: by part of the address or a UUID, by status, a page at a time,
//! with the plan, subscription and devices on each line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Engine, TestApp, error_code};
use reqwest::StatusCode;
use serde_json::{Value, json};

engine_tests!(operators_find_accounts_by_address_status_and_page);

fn emails(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|a| a["email"].as_str().unwrap())
        .collect()
}

async fn operators_find_accounts_by_address_status_and_page(engine: Engine) {
    let app = TestApp::start(engine).await;
    app.add_server("vpn1", "us-east", 1).await;
    let (ada, ada_token) = app.customer("ada.lovelace@history.test").await;
    let (_, _) = app.customer("alan.turing@history.test").await;
    let (grace, _) = app.customer("grace_hopper@navy.test").await;
    let (status, body) = app
        .post_auth(
            "/api/v1/devices",
            &ada_token,
            Some(json!({ "public_key": common::base64_key(9) })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let admin = app.admin_token().await;
    let (status, _) = app
        .post_auth(
            &format!("/api/v1/admin/users/{grace}/suspend"),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let find = |query: &'static str| {
        let admin = admin.clone();
        let app = &app;
        async move {
            app.get_auth(&format!("/api/v1/admin/users{query}"), &admin)
                .await
        }
    };

    // Part of an address, any case; wildcards are literal.
    let (status, found) = find("?q=LOVELACE").await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(emails(&found), ["ada.lovelace@history.test"]);
    let line = &found[0];
    assert_eq!(line["id"], ada);
    assert_eq!(line["plan_type"], "trial");
    assert_eq!(line["subscription_status"], "trial");
    assert_eq!(
        (line["devices"].as_i64(), line["devices_disabled"].as_i64()),
        (Some(1), Some(0))
    );
    assert_eq!(line["role"], "customer");
    let (_, found) = find("?q=_").await;
    assert_eq!(
        emails(&found),
        ["grace_hopper@navy.test"],
        "_ is not a wildcard"
    );
    let (_, found) = find("?q=.test").await;
    assert_eq!(found.as_array().unwrap().len(), 3);
    // By UUID, and by status.
    let uuid = line["uuid"].as_str().unwrap().to_owned();
    let (_, found) = app
        .get_auth(&format!("/api/v1/admin/users?q={uuid}"), &admin)
        .await;
    assert_eq!(emails(&found), ["ada.lovelace@history.test"]);
    let (_, found) = find("?status=suspended").await;
    assert_eq!(emails(&found), ["grace_hopper@navy.test"]);

    // Newest first, a page at a time.
    let (_, first) = find("?q=.test&limit=2").await;
    assert_eq!(
        emails(&first),
        ["grace_hopper@navy.test", "alan.turing@history.test"]
    );
    let last_id = first[1]["id"].as_i64().unwrap();
    let (_, rest) = app
        .get_auth(
            &format!("/api/v1/admin/users?q=.test&limit=2&before={last_id}"),
            &admin,
        )
        .await;
    assert_eq!(emails(&rest), ["ada.lovelace@history.test"]);

    // One account by id; refusals.
    let (status, one) = app
        .get_auth(&format!("/api/v1/admin/users/{ada}"), &admin)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one, *line);
    let (status, body) = app.get_auth("/api/v1/admin/users/999999", &admin).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    for query in ["?limit=0", "?limit=201", "?status=gone"] {
        let (status, body) = app
            .get_auth(&format!("/api/v1/admin/users{query}"), &admin)
            .await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::BAD_REQUEST, "validation_failed"),
            "{query}"
        );
    }
    let (status, _) = app.get_auth("/api/v1/admin/users", &ada_token).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
