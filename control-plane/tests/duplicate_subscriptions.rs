//! Two checkouts started before either was approved, then both approved at PayPal: the first
//! activation wins, the second applies nothing (no plan change, the customer stays linked to
//! the first), and the service cancels it at PayPal and refunds what PayPal took on it,
//! telling the customer; the operator only hears of it when PayPal keeps refusing. A cancelled
//! subscription does not count: its successor is applied as usual.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::paypal::{
    activation, app_with_paypal, cancelled, deliver_signed, refunded, sale_completed,
};
use common::{Engine, TestApp};
use reqwest::StatusCode;
use serde_json::json;
use truevault_control_plane::billing::fake_paypal::FakePayPal;
use truevault_control_plane::billing::payments;
use truevault_control_plane::clock::Clock as _;

engine_tests!(
    a_second_approved_subscription_is_cancelled_and_refunded_at_paypal,
    paypal_refusing_delays_the_settlement_and_then_hands_it_to_the_operator,
    two_activations_processed_at_once_apply_exactly_one,
    closing_the_account_does_not_stop_the_settlement,
);

const OPERATOR: &str = "ops@truevault.example";

async fn checkout(app: &TestApp, token: &str, plan: &str) -> String {
    let (status, body) = app
        .post_auth(
            "/api/v1/billing/checkout",
            token,
            Some(json!({ "plan": plan })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["subscription_id"].as_str().unwrap().to_owned()
}

/// The customer's subscription: plan, status, linked PayPal id, cancelling at period end.
async fn subscription(app: &TestApp, user_id: i64) -> (String, String, String, i64) {
    sqlx::query_as(
        "SELECT plan_type, status, provider_subscription_id, cancel_at_period_end
         FROM subscriptions WHERE user_id = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(user_id)
    .fetch_one(app.db().pool())
    .await
    .unwrap()
}

async fn period_end(app: &TestApp, user_id: i64) -> i64 {
    let (end,): (i64,) =
        sqlx::query_as("SELECT current_period_end FROM subscriptions WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(app.db().pool())
            .await
            .unwrap();
    end
}

/// The customer's payment on `subscription`: status and the provider's refund id.
async fn payment(app: &TestApp, sale: &str) -> (String, Option<String>) {
    sqlx::query_as("SELECT status, provider_refund_id FROM payments WHERE provider_payment_id = $1")
        .bind(sale)
        .fetch_one(app.db().pool())
        .await
        .unwrap()
}

async fn cancelled_at(app: &TestApp, subscription: &str) -> Option<i64> {
    let (at,): (Option<i64>,) =
        sqlx::query_as("SELECT duplicate_cancelled_at FROM checkouts WHERE provider_ref = $1")
            .bind(subscription)
            .fetch_one(app.db().pool())
            .await
            .unwrap();
    at
}

/// Two approved subscriptions, the second processed after the first was applied and paid:
/// returns the customer's id and token and the two subscription ids.
async fn approve_twice(
    app: &TestApp,
    fake: &FakePayPal,
    email: &str,
) -> (i64, String, String, String) {
    let (user_id, token) = app.customer(email).await;
    // Both pass the "already subscribed" check: neither is approved yet.
    let first = checkout(app, &token, "personal").await;
    let second = checkout(app, &token, "family").await;
    fake.approve(&first);
    fake.approve(&second);
    let sale = fake.collect(&first, "9.99");
    for raw in [
        activation(&format!("WH-A1-{email}"), &first),
        sale_completed(&format!("WH-S1-{email}"), &sale, &first, "9.99"),
    ] {
        deliver_signed(app, fake, &raw).await;
    }
    app.run_tasks().await;
    (user_id, token, first, second)
}

async fn a_second_approved_subscription_is_cancelled_and_refunded_at_paypal(engine: Engine) {
    let fake = FakePayPal::start().await;
    let app = app_with_paypal(engine, &fake, |s| {
        s.operator_email = Some(OPERATOR.into());
    })
    .await;
    let email = "twice@example.com";
    let (user_id, token, first, second) = approve_twice(&app, &fake, email).await;
    let linked = ("personal".to_owned(), "active".to_owned(), first.clone(), 0);
    assert_eq!(subscription(&app, user_id).await, linked);
    let paid_until = period_end(&app, user_id).await;

    // The second approval and its first payment change nothing for the customer, even with
    // PayPal delivering the payment first: it waits for the activation.
    let sale = fake.collect(&second, "14.99");
    for raw in [
        sale_completed("WH-S2", &sale, &second, "14.99"),
        activation("WH-A2", &second),
    ] {
        deliver_signed(&app, &fake, &raw).await;
    }
    // The payment waited for the activation and ran right after it, with no clock moving.
    app.run_tasks().await;
    assert_eq!(subscription(&app, user_id).await, linked);
    assert_eq!(
        period_end(&app, user_id).await,
        paid_until,
        "the duplicate's payment extends nothing"
    );
    let duplicate_of: (Option<String>,) =
        sqlx::query_as("SELECT duplicate_of FROM checkouts WHERE provider_ref = $1")
            .bind(&second)
            .fetch_one(app.db().pool())
            .await
            .unwrap();
    assert_eq!(duplicate_of.0.as_deref(), Some(first.as_str()));
    assert_eq!(app.count("SELECT COUNT(*) FROM payments").await, 2);
    assert_eq!(app.count("SELECT COUNT(*) FROM invoices").await, 1);

    // ...and the service settles it at PayPal itself: the duplicate no longer bills, and the
    // money it took is back with the customer, who is told of both. No operator is needed.
    let cancellations = fake.cancellations();
    assert_eq!(cancellations.len(), 1, "{cancellations:?}");
    assert_eq!(cancellations[0].0, second);
    assert_eq!(fake.subscription_status(&second), Some("CANCELLED"));
    assert_eq!(fake.subscription_status(&first), Some("ACTIVE"));
    assert!(cancelled_at(&app, &second).await.is_some());
    let refunds = fake.refunds();
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(refunds[0].0, sale);
    assert_eq!(
        payment(&app, &sale).await,
        ("refunded".to_owned(), Some(refunds[0].1.clone()))
    );
    let mails = app.mail_templates(email).await;
    assert_eq!(
        mails
            .iter()
            .filter(|t| t.starts_with("duplicate_"))
            .collect::<Vec<_>>(),
        ["duplicate_cancelled", "duplicate_refunded"],
        "{mails:?}"
    );
    assert_eq!(
        app.last_mail(email, "duplicate_refunded").await["amount"],
        "14.99 USD"
    );
    let told = app.last_mail(email, "duplicate_cancelled").await;
    assert_eq!(
        (told["plan"].as_str(), told["kept_plan"].as_str()),
        (Some("Family"), Some("Personal"))
    );
    assert!(app.mail_templates(OPERATOR).await.is_empty());

    // PayPal's own events about what was done change nothing more, and mail nobody again.
    deliver_signed(&app, &fake, &cancelled("WH-C2", &second)).await;
    deliver_signed(&app, &fake, &refunded("WH-R2", &sale, "14.99")).await;
    app.run_tasks().await;
    assert_eq!(subscription(&app, user_id).await, linked);
    assert_eq!(payment(&app, &sale).await.0, "refunded");
    assert_eq!(app.mail_templates(email).await, mails);

    // Once the customer cancels the first, a new checkout is a plan change, applied as usual.
    deliver_signed(&app, &fake, &cancelled("WH-C1", &first)).await;
    app.run_tasks().await;
    let third = checkout(&app, &token, "family").await;
    fake.approve(&third);
    deliver_signed(&app, &fake, &activation("WH-A3", &third)).await;
    app.run_tasks().await;
    let (plan, status, linked_to, _) = subscription(&app, user_id).await;
    assert_eq!(
        (plan.as_str(), status.as_str(), linked_to.as_str()),
        ("family", "active", third.as_str())
    );
    assert_eq!(
        fake.cancellations().len(),
        1,
        "the new subscription is left alone"
    );
    assert!(app.mail_templates(OPERATOR).await.is_empty());
}

/// PayPal failing for a while delays the settlement; a payment an operator refunded at PayPal
/// first counts as refunded; a pending refund waits for PayPal's word; and when PayPal keeps
/// refusing, the task gives up and the operator is told once what to do.
async fn paypal_refusing_delays_the_settlement_and_then_hands_it_to_the_operator(engine: Engine) {
    let fake = FakePayPal::start().await;
    let app = app_with_paypal(engine, &fake, |s| {
        s.operator_email = Some(OPERATOR.into());
    })
    .await;
    let email = "flaky@example.com";
    let (.., second) = approve_twice(&app, &fake, email).await;
    // Payments PayPal collects on the duplicate before it is cancelled.
    let by_hand = fake.collect(&second, "14.99");
    let pending = fake.collect(&second, "14.99");
    let stuck = fake.collect(&second, "14.99");

    // Two 503s on the cancel: it is retried after the tasks' backoff and made once.
    fake.fail_cancellations(2);
    deliver_signed(&app, &fake, &activation("WH-A2", &second)).await;
    app.run_tasks().await;
    assert!(fake.cancellations().is_empty());
    assert!(cancelled_at(&app, &second).await.is_none());
    for _ in 0..2 {
        app.advance(Duration::from_secs(3600));
        app.run_tasks().await;
    }
    assert_eq!(fake.cancellations().len(), 1);
    assert!(cancelled_at(&app, &second).await.is_some());

    // A payment the operator already refunded by hand at PayPal: 422 CAPTURE_FULLY_REFUNDED
    // is a refund done, not a failure (no second refund, no refund id of ours).
    fake.refund_at_paypal(&by_hand);
    deliver_signed(
        &app,
        &fake,
        &sale_completed("WH-S2", &by_hand, &second, "14.99"),
    )
    .await;
    app.run_tasks().await;
    assert_eq!(payment(&app, &by_hand).await, ("refunded".to_owned(), None));
    assert!(fake.refunds().is_empty());

    // A refund PayPal accepts as pending: the payment stays as it is until PayPal says the
    // money went back.
    fake.refunds_end_as("PENDING");
    deliver_signed(
        &app,
        &fake,
        &sale_completed("WH-S3", &pending, &second, "14.99"),
    )
    .await;
    app.run_tasks().await;
    let refund_id = fake.refunds()[0].1.clone();
    assert_eq!(
        payment(&app, &pending).await,
        ("completed".to_owned(), Some(refund_id.clone()))
    );
    deliver_signed(&app, &fake, &refunded("WH-R3", &pending, "14.99")).await;
    app.run_tasks().await;
    assert_eq!(
        payment(&app, &pending).await,
        ("refunded".to_owned(), Some(refund_id))
    );

    // A refund PayPal refuses on every attempt ends with the operator, told once what to do.
    fake.refunds_end_as("COMPLETED");
    fake.fail_refunds(100);
    deliver_signed(
        &app,
        &fake,
        &sale_completed("WH-S4", &stuck, &second, "14.99"),
    )
    .await;
    for _ in 0..10 {
        app.run_tasks().await;
        app.advance(Duration::from_secs(3600));
    }
    assert_eq!(payment(&app, &stuck).await, ("completed".to_owned(), None));
    assert_eq!(app.mail_templates(OPERATOR).await, ["task_dead"]);
    let alert = app.last_mail(OPERATOR, "task_dead").await;
    assert_eq!(alert["step"], "refund_duplicate_payment");
    assert_eq!(alert["customer"], email);
    assert_eq!(alert["attempts"], 8);
    assert!(alert["error"].as_str().unwrap().contains("503"), "{alert}");
    let remedy = alert["remedy"].as_str().unwrap();
    assert!(
        remedy.contains(&stuck) && remedy.contains("14.99 USD") && remedy.contains(&second),
        "{remedy}"
    );
    let refund_mails = app
        .mail_templates(email)
        .await
        .into_iter()
        .filter(|t| t == "duplicate_refunded")
        .count();
    assert_eq!(
        refund_mails, 2,
        "the hand-made and the pending refund, not the stuck one"
    );

    // The operator refunds it by hand and retries the task: recorded, customer told.
    fake.fail_refunds(0);
    fake.refund_at_paypal(&stuck);
    let (id,): (i64,) = sqlx::query_as(
        "SELECT id FROM scheduled_tasks WHERE step = 'refund_duplicate_payment' AND status = 'dead'",
    )
    .fetch_one(app.db().pool())
    .await
    .unwrap();
    let admin = app.admin_token().await;
    let (status, body) = app
        .post_auth(&format!("/api/v1/admin/tasks/{id}/retry"), &admin, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.run_tasks().await;
    assert_eq!(payment(&app, &stuck).await.0, "refunded");
    assert_eq!(app.mail_templates(OPERATOR).await.len(), 1);
}

/// Both approvals' events processed at the same moment, each in its own transaction (two task
/// workers on PostgreSQL): exactly one is applied, and the other is recorded as its duplicate.
async fn two_activations_processed_at_once_apply_exactly_one(engine: Engine) {
    let fake = FakePayPal::start().await;
    let app = app_with_paypal(engine, &fake, |s| {
        s.operator_email = Some(OPERATOR.into());
    })
    .await;
    let (user_id, token) = app.customer("racing@example.com").await;
    let first = checkout(&app, &token, "personal").await;
    let second = checkout(&app, &token, "family").await;
    fake.approve(&first);
    fake.approve(&second);
    deliver_signed(&app, &fake, &activation("WH-R1", &first)).await;
    deliver_signed(&app, &fake, &activation("WH-R2", &second)).await;
    let events: Vec<(i64,)> = sqlx::query_as("SELECT id FROM payment_events ORDER BY id")
        .fetch_all(app.db().pool())
        .await
        .unwrap();
    assert_eq!(events.len(), 2);
    let now = app.clock.now_ms();
    let process = |row: i64| {
        let db = app.db().clone();
        async move {
            let mut tx = db.begin_write().await.unwrap();
            payments::process_event(tx.conn(), row, now).await.unwrap();
            tx.commit().await.unwrap();
        }
    };
    tokio::join!(process(events[0].0), process(events[1].0));

    let checkouts: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT provider_ref, duplicate_of FROM checkouts ORDER BY id")
            .fetch_all(app.db().pool())
            .await
            .unwrap();
    let applied: Vec<&String> = checkouts
        .iter()
        .filter(|(_, dup)| dup.is_none())
        .map(|(r, _)| r)
        .collect();
    assert_eq!(applied.len(), 1, "{checkouts:?}");
    let (_, _, linked, _) = subscription(&app, user_id).await;
    assert_eq!(&linked, applied[0]);
    let duplicate = checkouts.iter().find(|(_, dup)| dup.is_some()).unwrap();
    assert_eq!(duplicate.1.as_ref(), Some(applied[0]));
    assert!([&first, &second].contains(&applied[0]));
    // Only the duplicate is cancelled at PayPal, once.
    app.run_tasks().await;
    let cancelled: Vec<String> = fake.cancellations().into_iter().map(|(s, _)| s).collect();
    assert_eq!(cancelled, std::slice::from_ref(&duplicate.0));
    assert!(app.mail_templates(OPERATOR).await.is_empty());
}

/// A customer who closes their account while the duplicate's cancellation waits out a PayPal
/// outage: the duplicate is still cancelled (it would bill them), and no mail goes to the
/// closed account.
async fn closing_the_account_does_not_stop_the_settlement(engine: Engine) {
    let fake = FakePayPal::start().await;
    let app = app_with_paypal(engine, &fake, |s| {
        s.operator_email = Some(OPERATOR.into());
    })
    .await;
    let (_, token, _, second) = approve_twice(&app, &fake, "leaving@example.com").await;
    fake.fail_cancellations(1);
    deliver_signed(&app, &fake, &activation("WH-A2", &second)).await;
    app.run_tasks().await;
    assert!(fake.cancellations().is_empty());

    let (status, body) = app
        .post_auth("/api/v1/billing/subscription/cancel", &token, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let response = app
        .http
        .delete(app.url("/api/v1/me"))
        .bearer_auth(&token)
        .json(&json!({ "password": common::PASSWORD }))
        .send()
        .await
        .unwrap();
    let (status, body) = common::split(response).await;
    assert!(status.is_success(), "{status}: {body}");

    app.advance(Duration::from_secs(3600));
    app.run_tasks().await;
    let cancelled: Vec<String> = fake.cancellations().into_iter().map(|(s, _)| s).collect();
    assert!(cancelled.contains(&second), "{cancelled:?}");
    assert!(cancelled_at(&app, &second).await.is_some());
    let mailed = app
        .count("SELECT COUNT(*) FROM mail_outbox WHERE template = 'duplicate_cancelled'")
        .await;
    assert_eq!(mailed, 0, "nobody to tell: the account is closed");
}
