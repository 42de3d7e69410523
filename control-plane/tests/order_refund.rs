//! An operator gives up on a dedicated-server order that could not be delivered
//! (`POST /api/v1/admin/orders/{id}/refund`): the buyer's payment is refunded and their
//! subscription cancelled at PayPal, the instance created for the order is cancelled at
//! Contabo, the plan ends and the buyer is told. PayPal failing records nothing; only a failed
//! order qualifies, once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::orders::{POLL, app, contabo, order_of, subscribe};
use common::paypal::{deliver_signed, sale_completed};
use common::{Engine, TestApp, error_code};
use reqwest::StatusCode;
use serde_json::json;
use truevault_control_plane::billing::fake_paypal::FakePayPal;

engine_tests!(
    a_failed_order_is_refunded_and_what_was_set_up_for_it_given_back,
    only_a_failed_order_is_refunded_and_a_manual_payment_needs_no_paypal,
    two_operators_refunding_at_once_refund_once,
);

async fn payments_of(app: &TestApp, user_id: i64) -> Vec<(String, Option<String>)> {
    sqlx::query_as("SELECT status, provider_refund_id FROM payments WHERE user_id = $1 ORDER BY id")
        .bind(user_id)
        .fetch_all(app.db().pool())
        .await
        .unwrap()
}

async fn payment_of(app: &TestApp, user_id: i64) -> (String, Option<String>) {
    payments_of(app, user_id).await.remove(0)
}

async fn a_failed_order_is_refunded_and_what_was_set_up_for_it_given_back(engine: Engine) {
    let (paypal, contabo) = (FakePayPal::start().await, contabo().await);
    let app = app(engine, &paypal, &contabo).await;
    let admin = app.admin_token().await;
    let email = "unlucky@example.com";
    let (buyer, subscription) = subscribe(&app, &paypal, email, "eu-de").await;
    app.run_tasks().await;
    app.state.orders().run_due().await.unwrap();
    let order = order_of(&app, &admin, email).await;
    let (id, user_id) = (
        order["id"].as_i64().unwrap(),
        order["user_id"].as_i64().unwrap(),
    );
    assert_eq!(order["status"], "provisioning", "{order}");
    assert_eq!(contabo.instances().len(), 1);
    let refund = format!("/api/v1/admin/orders/{id}/refund");
    // Meanwhile the buyer uses a shared server.
    app.add_server("shared-us-1", "us-east", 97).await;
    let (status, device) = app
        .post_auth(
            "/api/v1/devices",
            &buyer,
            Some(json!({ "public_key": common::base64_key(98) })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{device}");

    // An order still being set up is not given up, and never by its buyer.
    let (status, body) = app.post_auth(&refund, &admin, None).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "order_not_failed")
    );
    let (status, _) = app.post_auth(&refund, &buyer, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    app.advance(Duration::from_secs(31 * 60));
    app.state.orders().run_due().await.unwrap();
    let admin = app.admin_token().await;
    assert_eq!(order_of(&app, &admin, email).await["status"], "failed");

    // Bad input and PayPal being down change nothing.
    let (status, body) = app
        .post_auth(&refund, &admin, Some(json!({ "reason": "two\nlines" })))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "validation_failed")
    );
    paypal.fail_cancellations(1);
    let (status, body) = app.post_auth(&refund, &admin, None).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_GATEWAY, "upstream_error")
    );
    assert!(paypal.cancellations().is_empty() && paypal.refunds().is_empty());
    assert_eq!(
        payment_of(&app, user_id).await,
        ("completed".to_owned(), None)
    );
    assert_eq!(app.subscription_status(user_id).await, "active");
    assert!(order_of(&app, &admin, email).await["released_at"].is_null());

    // The order sits failed over a renewal: PayPal collects the next month too.
    let renewal = paypal.collect(&subscription, "49.99");
    let raw = sale_completed("S2-unlucky", &renewal, &subscription, "49.99");
    deliver_signed(&app, &paypal, &raw).await;
    app.run_tasks().await;
    assert_eq!(payments_of(&app, user_id).await.len(), 2);

    // Given up: both payments refunded and the subscription cancelled at PayPal, the plan
    // ends now (devices too), the buyer is told.
    let reason = "Our provider has no capacity in eu-de this week.";
    let (status, body) = app
        .post_auth(&refund, &admin, Some(json!({ "reason": reason })))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], id);
    let cancelled: Vec<String> = paypal.cancellations().into_iter().map(|(s, _)| s).collect();
    assert_eq!(cancelled, [subscription]);
    let refunds = paypal.refunds();
    assert_eq!(refunds.len(), 2, "{refunds:?}");
    assert_eq!(
        payments_of(&app, user_id).await,
        refunds
            .iter()
            .map(|(_, refund)| ("refunded".to_owned(), Some(refund.clone())))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM invoices WHERE status = 'refunded'")
            .await,
        2
    );
    assert_eq!(app.subscription_status(user_id).await, "cancelled");
    let (device_status,): (String,) =
        sqlx::query_as("SELECT status FROM devices WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(app.db().pool())
            .await
            .unwrap();
    assert_eq!(device_status, "disabled");
    let told = app.last_mail(email, "order_refunded").await;
    assert_eq!(
        (told["amount"].as_str(), told["reason"].as_str()),
        (Some("99.98 USD"), Some(reason))
    );
    let (status, body) = app
        .post_auth(&format!("/api/v1/admin/orders/{id}/retry"), &admin, None)
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "order_not_failed"),
        "an order given up is not retried"
    );
    let (_, buyer) = app.login(email, common::PASSWORD).await;
    let buyer = buyer["access_token"].as_str().unwrap().to_owned();
    let (_, mine) = app.get_auth("/api/v1/dedicated", &buyer).await;
    assert_eq!(mine[0]["status"], "released", "{mine}");

    // The runner cancels the instance created for it at Contabo.
    app.advance(POLL);
    app.state.orders().run_due().await.unwrap();
    assert!(
        contabo.instances()[0].cancelled,
        "{:?}",
        contabo.instances()
    );
    assert!(order_of(&app, &admin, email).await["released_at"].is_string());

    // Once only.
    let (status, body) = app.post_auth(&refund, &admin, None).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "order_refunded")
    );
    assert_eq!(paypal.refunds().len(), 2);
    let (status, _) = app
        .post_auth("/api/v1/admin/orders/999999/refund", &admin, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn only_a_failed_order_is_refunded_and_a_manual_payment_needs_no_paypal(engine: Engine) {
    let app = TestApp::start(engine).await;
    let admin = app.admin_token().await;
    app.pool_server("pool-sg-1", "asia-sg", 91).await;
    let (served_id, _) = app.customer("served@example.com").await;
    let (_, served) = app
        .post_auth(
            "/api/v1/admin/orders",
            &admin,
            Some(json!({ "user_id": served_id, "region": "asia-sg" })),
        )
        .await;
    assert_eq!(served["status"], "completed", "{served}");
    let (status, body) = app
        .post_auth(
            &format!("/api/v1/admin/orders/{}/refund", served["id"]),
            &admin,
            None,
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "order_not_failed")
    );

    // A bank-transfer order that failed: recorded as refunded (the operator returns the money
    // the way it came), with no PayPal configured at all.
    let (waiting_id, _) = app.customer("wire@example.com").await;
    let (_, waiting) = app
        .post_auth(
            "/api/v1/admin/orders",
            &admin,
            Some(json!({ "user_id": waiting_id, "region": "asia-jp", "reference": "wire-42" })),
        )
        .await;
    let id = waiting["id"].as_i64().unwrap();
    sqlx::query("UPDATE server_provisioning_queue SET status = 'failed' WHERE id = $1")
        .bind(id)
        .execute(app.db().pool())
        .await
        .unwrap();
    let (status, body) = app
        .post_auth(&format!("/api/v1/admin/orders/{id}/refund"), &admin, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["released_at"].is_string(),
        "nothing to cancel anywhere: {body}"
    );
    assert_eq!(
        payment_of(&app, waiting_id).await,
        ("refunded".to_owned(), None)
    );
    assert_eq!(app.subscription_status(waiting_id).await, "cancelled");
    let told = app.last_mail("wire@example.com", "order_refunded").await;
    assert_eq!(told["paypal"], false);
    // The served buyer keeps everything.
    assert_eq!(app.subscription_status(served_id).await, "active");
}

/// Two operators give the same failed order up at the same moment: PayPal refunds once (the
/// same idempotency key), the refund is recorded once, and the buyer is told once.
async fn two_operators_refunding_at_once_refund_once(engine: Engine) {
    let (paypal, contabo) = (FakePayPal::start().await, contabo().await);
    let app = app(engine, &paypal, &contabo).await;
    let email = "twice.refunded@example.com";
    subscribe(&app, &paypal, email, "eu-de").await;
    app.run_tasks().await;
    app.state.orders().run_due().await.unwrap();
    app.advance(Duration::from_secs(31 * 60));
    app.state.orders().run_due().await.unwrap();
    let admin = app.admin_token().await;
    let order = order_of(&app, &admin, email).await;
    assert_eq!(order["status"], "failed", "{order}");
    let refund = format!("/api/v1/admin/orders/{}/refund", order["id"]);

    let ((a, body_a), (b, body_b)) = tokio::join!(
        app.post_auth(&refund, &admin, None),
        app.post_auth(&refund, &admin, None)
    );
    for (status, body) in [(a, &body_a), (b, &body_b)] {
        assert!(
            status == StatusCode::OK
                || (status == StatusCode::CONFLICT && error_code(body) == "order_refunded"),
            "{status}: {body}"
        );
    }
    assert!(a == StatusCode::OK || b == StatusCode::OK);
    assert_eq!(paypal.refunds().len(), 1, "{:?}", paypal.refunds());
    let user_id = order["user_id"].as_i64().unwrap();
    assert_eq!(payment_of(&app, user_id).await.0, "refunded");
    assert_eq!(
        app.count("SELECT COUNT(*) FROM audit_log WHERE action = 'order.refunded'")
            .await,
        1
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM mail_outbox WHERE template = 'order_refunded'")
            .await,
        1
    );
}
