//! A customer cancels their PayPal subscription from the API, against a fake PayPal on
//! loopback: billing stops at PayPal, access lasts until the paid period ends, one mail says
//! so; bad input, no subscription, PayPal failures and concurrent cancels change nothing
//! they should not.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::paypal::{activation, app_with_paypal, cancelled, deliver_signed, subscriber};
use common::{Engine, TestApp, error_code};
use reqwest::StatusCode;
use serde_json::{Value, json};
use truevault_control_plane::billing::fake_paypal::FakePayPal;

engine_tests!(
    a_cancelled_subscription_stops_billing_and_keeps_access_until_the_period_ends,
    cancelling_without_a_paid_subscription_or_with_bad_input_changes_nothing,
    a_paypal_failure_leaves_the_subscription_billing,
    two_cancels_at_once_cancel_once_and_mail_once,
    a_new_subscription_after_a_cancel_bills_and_can_be_cancelled_again,
);

const CANCEL: &str = "/api/v1/billing/subscription/cancel";

async fn subscription(app: &TestApp, token: &str) -> Value {
    let (status, view) = app.get_auth("/api/v1/billing/subscription", token).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    view
}

async fn cancellation_mails(app: &TestApp, email: &str) -> usize {
    app.mail_templates(email)
        .await
        .iter()
        .filter(|t| *t == "subscription_cancelled")
        .count()
}

async fn a_cancelled_subscription_stops_billing_and_keeps_access_until_the_period_ends(
    engine: Engine,
) {
    let fake = FakePayPal::start().await;
    let app = app_with_paypal(engine, &fake, |_| {}).await;
    let email = "leaving-here@example.com";
    let (token, sub) = subscriber(&app, &fake, email).await;
    let before = subscription(&app, &token).await;
    assert_eq!(before["plan"], "personal");
    assert_eq!(before["status"], "active");
    assert_eq!(before["provider"], "paypal");
    assert_eq!(before["cancel_at_period_end"], false);
    let period_end = before["current_period_end"].as_str().unwrap().to_owned();

    let (status, view) = app
        .post_auth(CANCEL, &token, Some(json!({ "reason": "too expensive" })))
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["cancel_at_period_end"], true);
    assert_eq!(view["status"], "active", "paid until the period ends");
    assert_eq!(view["current_period_end"], period_end.as_str());
    assert_eq!(fake.subscription_status(&sub), Some("CANCELLED"));
    assert_eq!(
        fake.cancellations(),
        [(sub.clone(), "too expensive".to_owned())]
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM audit_log WHERE action = 'subscription.cancel'")
            .await,
        1
    );
    assert_eq!(cancellation_mails(&app, email).await, 1);
    let mail = app.last_mail(email, "subscription_cancelled").await;
    assert_eq!(mail["plan"], "Personal", "{mail}");

    // Again: nothing more happens, at PayPal or here.
    let (status, again) = app.post_auth(CANCEL, &token, None).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again, view);
    assert_eq!(fake.cancellations().len(), 1);
    // PayPal's own event for the cancellation arrives later and changes nothing more.
    deliver_signed(&app, &fake, &cancelled("WH-CANCEL-HERE", &sub)).await;
    app.run_tasks().await;
    assert_eq!(cancellation_mails(&app, email).await, 1);
    assert_eq!(subscription(&app, &token).await, view);

    // A cancelled subscription no longer blocks a new checkout (PayPal cannot resume one).
    let (status, body) = app
        .post_auth(
            "/api/v1/billing/checkout",
            &token,
            Some(json!({ "plan": "family" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // The period ends: so does the subscription, and its device is disabled.
    app.advance(Duration::from_secs(31 * 24 * 3600));
    app.run_tasks().await;
    let token = app.token_for(email).await;
    let ended = subscription(&app, &token).await;
    assert_eq!(ended["status"], "cancelled", "{ended}");
    let (_, devices) = app.get_auth("/api/v1/devices", &token).await;
    assert_eq!(devices[0]["status"], "disabled", "{devices}");
}

async fn cancelling_without_a_paid_subscription_or_with_bad_input_changes_nothing(engine: Engine) {
    let fake = FakePayPal::start().await;
    let app = app_with_paypal(engine, &fake, |_| {}).await;
    // A trial has nothing to cancel at PayPal.
    let (_, trial) = app.customer("trying@example.com").await;
    let (status, body) = app.post_auth(CANCEL, &trial, None).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "no_subscription"),
        "{body}"
    );
    assert_eq!(subscription(&app, &trial).await["plan"], "trial");
    let (status, _) = app.post(CANCEL, json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Bad input from a subscriber: refused before PayPal is asked.
    let (token, sub) = subscriber(&app, &fake, "picky@example.com").await;
    for (body, expected) in [
        (
            json!({ "reason": "x".repeat(501) }),
            (StatusCode::BAD_REQUEST, "validation_failed"),
        ),
        (
            json!({ "reason": "line one\nline two" }),
            (StatusCode::BAD_REQUEST, "validation_failed"),
        ),
        (
            json!({ "reason": "fine", "now": true }),
            (StatusCode::BAD_REQUEST, "unknown_field"),
        ),
        (
            json!({ "reason": 7 }),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        ),
    ] {
        let (status, answer) = app.post_auth(CANCEL, &token, Some(body)).await;
        assert_eq!((status, error_code(&answer)), expected, "{answer}");
    }
    assert!(fake.cancellations().is_empty());
    assert_eq!(fake.subscription_status(&sub), Some("ACTIVE"));
    assert_eq!(
        subscription(&app, &token).await["cancel_at_period_end"],
        false
    );
    assert_eq!(cancellation_mails(&app, "picky@example.com").await, 0);

    // Without PayPal settings the service says so.
    let bare = TestApp::start(engine).await;
    let (_, token) = bare.customer("nopaypal@example.com").await;
    let (status, body) = bare.post_auth(CANCEL, &token, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}

async fn a_paypal_failure_leaves_the_subscription_billing(engine: Engine) {
    let fake = FakePayPal::start().await;
    let app = app_with_paypal(engine, &fake, |_| {}).await;
    let email = "unlucky@example.com";
    let (token, sub) = subscriber(&app, &fake, email).await;
    fake.fail_cancellations(1);
    let (status, body) = app.post_auth(CANCEL, &token, None).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_GATEWAY, "upstream_error"),
        "{body}"
    );
    assert_eq!(
        subscription(&app, &token).await["cancel_at_period_end"],
        false,
        "nothing is recorded while PayPal still bills"
    );
    assert_eq!(cancellation_mails(&app, email).await, 0);
    assert_eq!(fake.subscription_status(&sub), Some("ACTIVE"));
    // Trying again works.
    let (status, body) = app.post_auth(CANCEL, &token, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["cancel_at_period_end"], true);
    assert_eq!(
        fake.cancellations(),
        [(sub, "cancelled by the customer".to_owned())]
    );
}

async fn two_cancels_at_once_cancel_once_and_mail_once(engine: Engine) {
    let fake = FakePayPal::start().await;
    let app = app_with_paypal(engine, &fake, |_| {}).await;
    let email = "double-click@example.com";
    let (token, sub) = subscriber(&app, &fake, email).await;
    let (a, b) = tokio::join!(
        app.post_auth(CANCEL, &token, None),
        app.post_auth(CANCEL, &token, None)
    );
    for (status, body) in [&a, &b] {
        assert_eq!(*status, StatusCode::OK, "{body}");
        assert_eq!(body["cancel_at_period_end"], true);
    }
    assert_eq!(fake.cancellations().len(), 1, "PayPal cancels once");
    assert_eq!(cancellation_mails(&app, email).await, 1);
    let (tasks,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM scheduled_tasks WHERE task_key = $1")
            .bind(format!("cancel:{sub}"))
            .fetch_one(app.db().pool())
            .await
            .unwrap();
    assert_eq!(tasks, 1, "one end of the subscription is scheduled");
}

async fn a_new_subscription_after_a_cancel_bills_and_can_be_cancelled_again(engine: Engine) {
    let fake = FakePayPal::start().await;
    let app = app_with_paypal(engine, &fake, |_| {}).await;
    let email = "comes-back@example.com";
    let (token, first) = subscriber(&app, &fake, email).await;
    let (status, _) = app.post_auth(CANCEL, &token, None).await;
    assert_eq!(status, StatusCode::OK);
    // Back within the paid period, on another plan: a new subscription, approved and active.
    let (status, checkout) = app
        .post_auth(
            "/api/v1/billing/checkout",
            &token,
            Some(json!({ "plan": "family" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{checkout}");
    let second = checkout["subscription_id"].as_str().unwrap().to_owned();
    fake.approve(&second);
    deliver_signed(&app, &fake, &activation("WH-A-AGAIN", &second)).await;
    app.run_tasks().await;
    let view = subscription(&app, &token).await;
    assert_eq!(view["plan"], "family");
    assert_eq!(
        view["cancel_at_period_end"], false,
        "the new subscription bills: {view}"
    );
    // Its cancellation reaches PayPal, and the first one's old end takes nothing away.
    let (status, view) = app.post_auth(CANCEL, &token, None).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["cancel_at_period_end"], true);
    assert_eq!(
        fake.cancellations()
            .into_iter()
            .map(|(id, _)| id)
            .collect::<Vec<_>>(),
        [first, second]
    );
    assert_eq!(cancellation_mails(&app, email).await, 2);
}
