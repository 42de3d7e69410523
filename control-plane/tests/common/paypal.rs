//! A control plane wired to a fake PayPal, and PayPal's webhook deliveries as PayPal formats
//! them (the signature covers the exact text).

use reqwest::StatusCode;
use serde_json::{Value, json};
use truevault_control_plane::billing::fake_paypal::{
    CLIENT_ID, CLIENT_SECRET, FakePayPal, WEBHOOK_ID,
};
use truevault_control_plane::config::Settings;
use truevault_control_plane::secret::Secret;

use super::{Engine, TestApp};

pub async fn app_with_paypal(
    engine: Engine,
    fake: &FakePayPal,
    tweak: impl FnOnce(&mut Settings),
) -> TestApp {
    let url = fake.url();
    TestApp::start_with(engine, move |s| {
        s.paypal_base_url = url;
        s.paypal_client_id = Some(CLIENT_ID.into());
        s.paypal_client_secret = Some(Secret::new(CLIENT_SECRET));
        s.paypal_webhook_id = Some(WEBHOOK_ID.into());
        s.paypal_plans = [
            ("personal", "P-PERSONAL"),
            ("family", "P-FAMILY"),
            ("dedicated", "P-DEDICATED"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
        tweak(s);
    })
    .await
}

pub async fn deliver(
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
    super::split(request.send().await.unwrap()).await
}

/// Delivers a webhook signed the way PayPal would; it must be accepted.
pub async fn deliver_signed(app: &TestApp, fake: &FakePayPal, raw: &str) {
    let (status, body) = deliver(app, raw, &fake.sign(raw, WEBHOOK_ID)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

pub fn activation(event_id: &str, subscription_id: &str) -> String {
    // As PayPal formats it (its own spacing): the signature covers this exact text.
    format!(
        r#"{{"id":"{event_id}","event_version":"1.0","create_time":"2026-11-24T10:00:00.000Z","resource_type":"subscription","event_type":"BILLING.SUBSCRIPTION.ACTIVATED","summary":"Subscription activated", "resource":{{"id":"{subscription_id}","plan_id":"P-PERSONAL","status":"ACTIVE"}}}}"#
    )
}

pub fn sale_completed(event_id: &str, sale_id: &str, subscription_id: &str, total: &str) -> String {
    format!(
        r#"{{"id":"{event_id}","event_version":"1.0","resource_type":"sale","event_type":"PAYMENT.SALE.COMPLETED","resource":{{"id":"{sale_id}","state":"completed","amount":{{"total":"{total}","currency":"USD"}},"payment_mode":"INSTANT_TRANSFER","billing_agreement_id":"{subscription_id}"}}}}"#
    )
}

pub fn refunded(event_id: &str, sale_id: &str, total: &str) -> String {
    format!(
        r#"{{"id":"{event_id}","event_version":"1.0","resource_type":"refund","event_type":"PAYMENT.SALE.REFUNDED","resource":{{"id":"REFUND-{sale_id}","state":"completed","sale_id":"{sale_id}","amount":{{"total":"{total}","currency":"USD"}}}}}}"#
    )
}

pub fn cancelled(event_id: &str, subscription_id: &str) -> String {
    format!(
        r#"{{"id":"{event_id}","event_version":"1.0","resource_type":"subscription","event_type":"BILLING.SUBSCRIPTION.CANCELLED","resource":{{"id":"{subscription_id}","status":"CANCELLED"}}}}"#
    )
}

/// A subscriber with one device, activated and paid through the webhook.
pub async fn subscriber(app: &TestApp, fake: &FakePayPal, email: &str) -> (String, String) {
    let (_, token) = app.customer(email).await;
    app.add_server(
        &format!("srv-{}", email.len()),
        "us-east",
        60 + email.len() as u8,
    )
    .await;
    let (status, device) = app
        .post_auth(
            "/api/v1/devices",
            &token,
            Some(json!({ "public_key": super::base64_key(email.len() as u8) })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{device}");
    app.run_tasks().await;
    let (_, checkout) = app
        .post_auth(
            "/api/v1/billing/checkout",
            &token,
            Some(json!({ "plan": "personal" })),
        )
        .await;
    let subscription = checkout["subscription_id"].as_str().unwrap().to_owned();
    fake.approve(&subscription);
    for raw in [
        activation(&format!("WH-A-{email}"), &subscription),
        sale_completed(
            &format!("WH-S-{email}"),
            &format!("SALE-1-{email}"),
            &subscription,
            "9.99",
        ),
    ] {
        let (status, body) = deliver(app, &raw, &fake.sign(&raw, WEBHOOK_ID)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(app.run_tasks().await, 2);
    (token, subscription)
}
