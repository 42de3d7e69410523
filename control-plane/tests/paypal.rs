//! The PayPal client against a fake PayPal API on loopback: the token grant and its reuse,
//! checkouts (idempotent by request id), PayPal's error shapes, and webhook verification over
//! the delivery's exact text.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use truevault_control_plane::billing::fake_paypal::{
    CLIENT_ID, CLIENT_SECRET, FakePayPal, WEBHOOK_ID,
};
use truevault_control_plane::billing::paypal::{PayPal, PayPalSettings, WebhookSignature};
use truevault_control_plane::error::Error;
use truevault_control_plane::secret::Secret;

fn settings(fake: &FakePayPal) -> PayPalSettings {
    PayPalSettings {
        base_url: fake.url(),
        client_id: CLIENT_ID.into(),
        client_secret: Secret::new(CLIENT_SECRET),
        webhook_id: WEBHOOK_ID.into(),
        return_url: "https://truevault.example/billing/done".into(),
        cancel_url: "https://truevault.example/billing/cancelled".into(),
        timeout: Duration::from_secs(5),
    }
}

fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn upstream_message(error: &Error) -> &str {
    match error {
        Error::Upstream {
            service: "paypal",
            message,
        } => message,
        other => panic!("not a PayPal error: {other}"),
    }
}

#[tokio::test]
async fn checkouts_share_one_token_and_a_retried_one_returns_the_first() {
    let fake = FakePayPal::start().await;
    let paypal = PayPal::new(settings(&fake)).unwrap();
    let first = paypal
        .create_subscription("P-PERSONAL", "user:7", "checkout-7-1", None)
        .await
        .unwrap();
    assert!(first.provider_id.starts_with("I-"));
    assert!(
        first.approval_url.contains("ba_token="),
        "{}",
        first.approval_url
    );
    let again = paypal
        .create_subscription("P-PERSONAL", "user:7", "checkout-7-1", None)
        .await
        .unwrap();
    assert_eq!(again, first, "the same request id is the same subscription");
    let other = paypal
        .create_subscription("P-PERSONAL", "user:7", "checkout-7-2", Some((799, "USD")))
        .await
        .unwrap();
    assert_ne!(other.provider_id, first.provider_id);
    assert_eq!(
        fake.first_cycle_price(&other.provider_id).as_deref(),
        Some("7.99")
    );
    assert_eq!(fake.first_cycle_price(&first.provider_id), None);

    let order = paypal
        .create_order(4999, "USD", "order:1", "order-1")
        .await
        .unwrap();
    assert!(
        order.approval_url.contains("checkoutnow"),
        "{}",
        order.approval_url
    );
    assert_eq!(fake.token_grants(), 1, "one token for every call");

    fake.revoke_tokens();
    paypal
        .create_subscription("P-FAMILY", "user:8", "checkout-8-1", None)
        .await
        .unwrap();
    assert_eq!(fake.token_grants(), 2, "a refused token is replaced once");
}

#[tokio::test]
async fn paypal_errors_are_reported_with_their_reason() {
    let fake = FakePayPal::start().await;
    let paypal = PayPal::new(settings(&fake)).unwrap();
    let error = paypal
        .create_subscription("P-NOPE", "user:1", "x-1", None)
        .await
        .unwrap_err();
    let message = upstream_message(&error);
    assert!(
        message.contains("404") && message.contains("INVALID_RESOURCE_ID"),
        "{message}"
    );

    let mut wrong = settings(&fake);
    wrong.client_secret = Secret::new("not-the-secret");
    let paypal = PayPal::new(wrong).unwrap();
    let error = paypal
        .create_subscription("P-PERSONAL", "user:1", "x-2", None)
        .await
        .unwrap_err();
    assert!(
        upstream_message(&error).contains("Client Authentication failed"),
        "{error}"
    );

    let mut nowhere = settings(&fake);
    nowhere.base_url = "http://127.0.0.1:9".into();
    let error = PayPal::new(nowhere)
        .unwrap()
        .create_order(100, "USD", "o", "o-1")
        .await
        .unwrap_err();
    assert!(
        upstream_message(&error).contains("token request"),
        "{error}"
    );
}

#[tokio::test]
async fn only_an_untouched_delivery_for_our_webhook_verifies() {
    let fake = FakePayPal::start().await;
    let paypal = PayPal::new(settings(&fake)).unwrap();
    // Spacing and key order as PayPal sends them: the signature covers this exact text.
    let raw = r#"{"id":"WH-58D329510W468432D-8HN650336L201105X","event_type":"PAYMENT.SALE.COMPLETED", "resource":{"id":"80021663DE681814L","amount":{"total":"9.99","currency":"USD"}}}"#;

    let signed = headers(&fake.sign(raw, WEBHOOK_ID));
    let signature = WebhookSignature::from_headers(&signed).unwrap();
    assert!(paypal.verify_webhook(&signature, raw).await.unwrap());

    let tampered = raw.replace("9.99", "0.01");
    assert!(!paypal.verify_webhook(&signature, &tampered).await.unwrap());

    let for_another_webhook = headers(&fake.sign(raw, "WH-SOMEONE-ELSE"));
    let signature = WebhookSignature::from_headers(&for_another_webhook).unwrap();
    assert!(!paypal.verify_webhook(&signature, raw).await.unwrap());

    let mut missing = signed.clone();
    missing.remove("paypal-transmission-sig");
    assert!(WebhookSignature::from_headers(&missing).is_none());

    // PayPal failing to answer is an error, never a pass.
    fake.fail_verifications(1);
    let signature = WebhookSignature::from_headers(&signed).unwrap();
    assert!(paypal.verify_webhook(&signature, raw).await.is_err());
    assert!(paypal.verify_webhook(&signature, "not json").await.is_err());
    assert_eq!(fake.verifications(), 4);
}
