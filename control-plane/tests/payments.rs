//! Checkout and PayPal's webhook against a fake PayPal on loopback: a verified activation
//! converts the trial once, however often PayPal delivers it; a delivery that fails
//! verification changes nothing; without PayPal settings both routes say so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Engine, TestApp, error_code};
use reqwest::StatusCode;
use serde_json::{Value, json};
use truevault_control_plane::billing::fake_paypal::{
    CLIENT_ID, CLIENT_SECRET, FakePayPal, WEBHOOK_ID,
};
use truevault_control_plane::secret::Secret;

engine_tests!(
    an_activation_converts_the_trial_once_however_often_it_is_delivered,
    payments_without_paypal_settings_say_so,
);

async fn app_with_paypal(engine: Engine, fake: &FakePayPal) -> TestApp {
    let url = fake.url();
    TestApp::start_with(engine, move |s| {
        s.paypal_base_url = url;
        s.paypal_client_id = Some(CLIENT_ID.into());
        s.paypal_client_secret = Some(Secret::new(CLIENT_SECRET));
        s.paypal_webhook_id = Some(WEBHOOK_ID.into());
        s.paypal_plans = [("personal", "P-PERSONAL"), ("family", "P-FAMILY")]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect();
    })
    .await
}

async fn deliver(
    app: &TestApp,
    raw: &str,
    signature: &[(&'static str, String)],
) -> (StatusCode, Value) {
    let mut request = app
        .http
        .post(app.url("/api/v1/billing/paypal/webhook"))
        .header("content-type", "application/json")
        .body(raw.to_owned());
    for (name, value) in signature {
        request = request.header(*name, value);
    }
    common::split(request.send().await.unwrap()).await
}

fn activation(event_id: &str, subscription_id: &str) -> String {
    // As PayPal formats it (its own spacing): the signature covers this exact text.
    format!(
        r#"{{"id":"{event_id}","event_version":"1.0","create_time":"2026-11-24T10:00:00.000Z","resource_type":"subscription","event_type":"BILLING.SUBSCRIPTION.ACTIVATED","summary":"Subscription activated", "resource":{{"id":"{subscription_id}","plan_id":"P-PERSONAL","status":"ACTIVE"}}}}"#
    )
}

async fn an_activation_converts_the_trial_once_however_often_it_is_delivered(engine: Engine) {
    let fake = FakePayPal::start().await;
    let app = app_with_paypal(engine, &fake).await;
    let (_, token) = app.customer("payer@example.com").await;
    app.run_tasks().await; // the trial's first steps, out of the way

    let (status, body) = app
        .post_auth(
            "/api/v1/billing/checkout",
            &token,
            Some(json!({ "plan": "gold" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = app
        .post_auth(
            "/api/v1/billing/checkout",
            &token,
            Some(json!({ "plan": "personal", "promo_code": "NOSUCHCODE" })),
        )
        .await;
    assert!(status.is_client_error(), "{status} {body}");
    assert_eq!(app.count("SELECT COUNT(*) FROM checkouts").await, 0);

    let (status, checkout) = app
        .post_auth(
            "/api/v1/billing/checkout",
            &token,
            Some(json!({ "plan": "personal", "promo_code": "trial20" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{checkout}");
    assert!(
        checkout["approval_url"]
            .as_str()
            .unwrap()
            .contains("paypal.com")
    );
    let subscription = checkout["subscription_id"].as_str().unwrap().to_owned();
    let (_, me) = app.get_auth("/api/v1/me", &token).await;
    assert_eq!(
        me["subscription_status"], "trial",
        "nothing changes before PayPal says so"
    );

    // A delivery whose signature does not hold changes nothing.
    let raw = activation("WH-1", &subscription);
    let forged = fake.sign(&raw.replace("ACTIVE", "ACTIVE "), WEBHOOK_ID);
    let (status, body) = deliver(&app, &raw, &forged).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "webhook_unverified")
    );
    let (status, _) = deliver(&app, &raw, &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(app.count("SELECT COUNT(*) FROM payment_events").await, 0);
    assert_eq!(app.run_tasks().await, 0);

    // The real one, three times (PayPal redelivers until it hears 2xx).
    let signed = fake.sign(&raw, WEBHOOK_ID);
    for _ in 0..3 {
        let (status, body) = deliver(&app, &raw, &signed).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM payment_events").await, 1);
    assert_eq!(app.run_tasks().await, 1);
    let (_, me) = app.get_auth("/api/v1/me", &token).await;
    assert_eq!(
        (me["plan_type"].as_str(), me["subscription_status"].as_str()),
        (Some("personal"), Some("active")),
        "{me}"
    );
    assert_eq!(
        app.count(
            "SELECT COUNT(*) FROM subscriptions WHERE trial_converted = 1 AND provider = 'paypal'"
        )
        .await,
        1
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM promo_redemptions").await, 1);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM payment_events WHERE processed_at IS NOT NULL")
            .await,
        1
    );

    // Delivered again after processing: still one effect.
    let (status, _) = deliver(&app, &raw, &signed).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.run_tasks().await, 0);
    assert_eq!(app.count("SELECT COUNT(*) FROM promo_redemptions").await, 1);
}

async fn payments_without_paypal_settings_say_so(engine: Engine) {
    let app = TestApp::start(engine).await;
    let (_, token) = app.customer("early@example.com").await;
    let (status, body) = app
        .post_auth(
            "/api/v1/billing/checkout",
            &token,
            Some(json!({ "plan": "personal" })),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
    let (status, _) = app
        .post(
            "/api/v1/billing/paypal/webhook",
            json!({ "id": "WH-1", "event_type": "X" }),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = app
        .post("/api/v1/billing/checkout", json!({ "plan": "personal" }))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
