//! Two checkouts started before either was approved, then both approved at PayPal: the first
//! activation wins, the second applies nothing (no plan change, the customer stays linked to
//! the first), its payment is recorded without service, and the operator is told to cancel and
//! refund it. A cancelled subscription does not count: its successor is applied as usual.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::paypal::{activation, app_with_paypal, cancelled, deliver_signed, sale_completed};
use common::{Engine, TestApp};
use reqwest::StatusCode;
use serde_json::json;
use truevault_control_plane::billing::fake_paypal::FakePayPal;
use truevault_control_plane::billing::payments;
use truevault_control_plane::clock::Clock as _;

engine_tests!(
    a_second_approved_subscription_is_not_applied_and_the_operator_is_told,
    two_activations_processed_at_once_apply_exactly_one,
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

async fn a_second_approved_subscription_is_not_applied_and_the_operator_is_told(engine: Engine) {
    let fake = FakePayPal::start().await;
    let app = app_with_paypal(engine, &fake, |s| {
        s.operator_email = Some(OPERATOR.into());
    })
    .await;
    let (user_id, token) = app.customer("twice@example.com").await;
    // Both pass the "already subscribed" check: neither is approved yet.
    let first = checkout(&app, &token, "personal").await;
    let second = checkout(&app, &token, "family").await;

    for raw in [
        activation("WH-A1", &first),
        sale_completed("WH-S1", "SALE-1", &first, "9.99"),
    ] {
        deliver_signed(&app, &fake, &raw).await;
    }
    app.run_tasks().await;
    let linked = ("personal".to_owned(), "active".to_owned(), first.clone(), 0);
    assert_eq!(subscription(&app, user_id).await, linked);
    let paid_until = period_end(&app, user_id).await;

    // The second approval and its first payment change nothing for the customer.
    for raw in [
        activation("WH-A2", &second),
        sale_completed("WH-S2", "SALE-2", &second, "14.99"),
    ] {
        deliver_signed(&app, &fake, &raw).await;
    }
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
    assert_eq!(
        app.mail_templates(OPERATOR).await,
        ["duplicate_subscription", "duplicate_subscription"],
        "one for the approval, one for the sale to refund"
    );
    let alert = app.last_mail(OPERATOR, "duplicate_subscription").await;
    assert_eq!(
        (alert["subscription"].as_str(), alert["current"].as_str()),
        (Some(second.as_str()), Some(first.as_str()))
    );
    assert_eq!(alert["sale"], "SALE-2");
    assert_eq!(alert["amount"], "14.99 USD");

    // The operator cancels the duplicate at PayPal: the customer's subscription is untouched.
    deliver_signed(&app, &fake, &cancelled("WH-C2", &second)).await;
    app.run_tasks().await;
    assert_eq!(subscription(&app, user_id).await, linked);

    // Once the customer cancels the first, a new checkout is a plan change, applied as usual.
    deliver_signed(&app, &fake, &cancelled("WH-C1", &first)).await;
    app.run_tasks().await;
    let third = checkout(&app, &token, "family").await;
    deliver_signed(&app, &fake, &activation("WH-A3", &third)).await;
    app.run_tasks().await;
    let (plan, status, linked_to, _) = subscription(&app, user_id).await;
    assert_eq!(
        (plan.as_str(), status.as_str(), linked_to.as_str()),
        ("family", "active", third.as_str())
    );
    assert_eq!(app.mail_templates(OPERATOR).await.len(), 2);
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
            payments::process_event(tx.conn(), row, Some(OPERATOR), now)
                .await
                .unwrap();
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
    assert_eq!(
        app.mail_templates(OPERATOR).await,
        ["duplicate_subscription"]
    );
}
