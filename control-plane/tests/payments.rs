//! Checkout and PayPal's webhook against a fake PayPal on loopback: a verified activation
//! converts the trial once, however often PayPal delivers it; a delivery that fails
//! verification changes nothing; without PayPal settings both routes say so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::paypal::{
    activation, app_with_paypal, cancelled, deliver, refunded, sale_completed, subscriber,
};
use common::{Engine, TestApp, error_code};
use reqwest::StatusCode;
use serde_json::json;
use truevault_control_plane::billing::fake_paypal::{FakePayPal, WEBHOOK_ID};
use truevault_control_plane::clock::Clock as _;

engine_tests!(
    an_activation_converts_the_trial_once_however_often_it_is_delivered,
    payments_without_paypal_settings_say_so,
    invoice_numbers_stay_gapless_under_concurrency_and_rollback,
    a_failed_payment_runs_dunning_and_a_later_payment_ends_it,
    reminders_precede_renewal_and_a_cancellation_keeps_access_to_the_period_end,
    a_paid_dedicated_plan_gets_a_pool_server_and_the_ready_mail,
    forged_deliveries_cost_paypal_calls_only_until_their_sender_is_cut_off,
    events_ahead_of_their_activation_wait_for_it_however_late_it_comes,
);

async fn an_activation_converts_the_trial_once_however_often_it_is_delivered(engine: Engine) {
    let fake = FakePayPal::start().await;
    let app = app_with_paypal(engine, &fake, |_| {}).await;
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
    assert_eq!(
        fake.first_cycle_price(&subscription).as_deref(),
        Some("7.99"),
        "PayPal charges the quoted first month (TRIAL20 on 9.99)"
    );
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

    // Subscribed: a second checkout would bill twice.
    let (status, body) = app
        .post_auth(
            "/api/v1/billing/checkout",
            &token,
            Some(json!({ "plan": "family" })),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "already_subscribed"),
        "{body}"
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM checkouts").await, 1);

    // Delivered again after processing: still one effect.
    let (status, _) = deliver(&app, &raw, &signed).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.run_tasks().await, 0);
    assert_eq!(app.count("SELECT COUNT(*) FROM promo_redemptions").await, 1);

    // The first payment, discounted by TRIAL20 (20% of 9.99), twice: one payment, one invoice.
    let sale = sale_completed("WH-2", "80021663DE681814L", &subscription, "7.99");
    let signed = fake.sign(&sale, WEBHOOK_ID);
    for _ in 0..2 {
        let (status, body) = deliver(&app, &sale, &signed).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // The same sale under another event id (PayPal resends with new ids too): still one.
    let again = sale_completed("WH-3", "80021663DE681814L", &subscription, "7.99");
    let (status, _) = deliver(&app, &again, &fake.sign(&again, WEBHOOK_ID)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.run_tasks().await, 2);
    assert_eq!(app.count("SELECT COUNT(*) FROM payments").await, 1);
    let (status, invoices) = app.get_auth("/api/v1/billing/invoices", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(invoices.as_array().unwrap().len(), 1, "{invoices}");
    let invoice = &invoices[0];
    assert_eq!(invoice["number"], "TV-000001");
    assert_eq!(
        (
            invoice["subtotal_cents"].as_i64(),
            invoice["discount_cents"].as_i64(),
            invoice["total_cents"].as_i64()
        ),
        (Some(999), Some(200), Some(799)),
        "{invoice}"
    );
    assert_eq!(invoice["items"][0]["description"], "Personal plan, 30 days");
    let (status, one) = app
        .get_auth("/api/v1/billing/invoices/TV-000001", &token)
        .await;
    assert_eq!(
        (status, &one["number"]),
        (StatusCode::OK, &json!("TV-000001"))
    );
    let page = app
        .http
        .get(app.url("/api/v1/billing/invoices/TV-000001/html"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(
        html.contains("TV-000001") && html.contains("7.99") && html.contains("-2.00"),
        "{html}"
    );
    assert!(html.contains("payer@example.com"), "{html}");

    // Another customer sees none of it.
    let (_, stranger) = app.customer("stranger@example.com").await;
    let (status, _) = app
        .get_auth("/api/v1/billing/invoices/TV-000001", &stranger)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, theirs) = app.get_auth("/api/v1/billing/invoices", &stranger).await;
    assert_eq!(theirs, json!([]));
}

async fn invoice_numbers_stay_gapless_under_concurrency_and_rollback(engine: Engine) {
    use truevault_control_plane::billing::invoices::{self, LineItem, NewInvoice};
    let app = TestApp::start(engine).await;
    let (user_id, _) = app.customer("buyer@example.com").await;
    let invoice = || NewInvoice {
        user_id,
        payment_id: None,
        currency: "USD".into(),
        items: vec![LineItem {
            description: "Personal plan, 30 days".into(),
            amount_cents: 999,
        }],
        discount_cents: 0,
        period: None,
    };
    // A transaction that takes a number and rolls back leaves no hole.
    let mut tx = app.db().begin_write().await.unwrap();
    assert_eq!(invoices::issue(tx.conn(), invoice(), 1).await.unwrap(), 1);
    tx.rollback().await.unwrap();
    let numbers = futures_util::future::join_all((0..12).map(|_| {
        let db = app.db().clone();
        let invoice = invoice();
        async move {
            let mut tx = db.begin_write().await.unwrap();
            let n = invoices::issue(tx.conn(), invoice, 2).await.unwrap();
            tx.commit().await.unwrap();
            n
        }
    }))
    .await;
    let mut sorted = numbers.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=12).collect::<Vec<i64>>(), "{numbers:?}");
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

fn payment_failed(event_id: &str, subscription_id: &str) -> String {
    format!(
        r#"{{"id":"{event_id}","event_version":"1.0","resource_type":"subscription","event_type":"BILLING.SUBSCRIPTION.PAYMENT.FAILED","resource":{{"id":"{subscription_id}","status":"ACTIVE","billing_info":{{"failed_payments_count":1}}}}}}"#
    )
}

/// The subscription's and the first device's status, with a fresh login (the clock jumps days,
/// past any access token's life).
async fn statuses(app: &TestApp, email: &str) -> (String, String) {
    let token = app.token_for(email).await;
    let (status, me) = app.get_auth("/api/v1/me", &token).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    let (status, devices) = app.get_auth("/api/v1/devices", &token).await;
    assert_eq!(status, StatusCode::OK, "{devices}");
    (
        me["subscription_status"].as_str().unwrap().to_owned(),
        devices[0]["status"].as_str().unwrap().to_owned(),
    )
}

async fn a_failed_payment_runs_dunning_and_a_later_payment_ends_it(engine: Engine) {
    let fake = FakePayPal::start().await;
    let app = app_with_paypal(engine, &fake, |_| {}).await;
    let day = std::time::Duration::from_secs(24 * 3600);

    // Unpaid: reminders on days 0, 3 and 7, suspension on day 8.
    let late_payer = "late@example.com";
    let (_, subscription) = subscriber(&app, &fake, late_payer).await;
    let failed = payment_failed("WH-F1", &subscription);
    let (status, _) = deliver(&app, &failed, &fake.sign(&failed, WEBHOOK_ID)).await;
    assert_eq!(status, StatusCode::OK);
    // PayPal retries the collection and reports the failure again: no second run of dunning.
    let again = payment_failed("WH-F2", &subscription);
    deliver(&app, &again, &fake.sign(&again, WEBHOOK_ID)).await;
    app.run_tasks().await;
    let (subscription_status, device) = statuses(&app, late_payer).await;
    assert_eq!(subscription_status, "past_due");
    assert_ne!(device, "disabled", "past due still connects");
    let mails = || async {
        app.mail_templates(late_payer)
            .await
            .iter()
            .filter(|t| *t == "payment_failed")
            .count()
    };
    assert_eq!(mails().await, 1, "day 0");
    app.advance(day * 3);
    app.run_tasks().await;
    assert_eq!(mails().await, 2, "day 3");
    app.advance(day * 4);
    app.run_tasks().await;
    assert_eq!(mails().await, 3, "day 7");
    assert_eq!(statuses(&app, late_payer).await.0, "past_due");
    app.advance(day);
    app.run_tasks().await;
    assert_eq!(
        statuses(&app, late_payer).await,
        ("suspended".to_owned(), "disabled".to_owned()),
        "day 8"
    );
    assert_eq!(mails().await, 3);

    // Paying late brings the subscription and its device back.
    let late = sale_completed("WH-S2", "SALE-2", &subscription, "9.99");
    deliver(&app, &late, &fake.sign(&late, WEBHOOK_ID)).await;
    app.run_tasks().await;
    let (subscription_status, device) = statuses(&app, late_payer).await;
    assert_eq!(subscription_status, "active");
    assert_ne!(device, "disabled");

    // Paid on day 2: the remaining steps do nothing.
    let prompt = "prompt.payer@example.com";
    let (_, subscription) = subscriber(&app, &fake, prompt).await;
    let failed = payment_failed("WH-F3", &subscription);
    deliver(&app, &failed, &fake.sign(&failed, WEBHOOK_ID)).await;
    app.run_tasks().await;
    app.advance(day * 2);
    let paid = sale_completed("WH-S3", "SALE-3", &subscription, "9.99");
    deliver(&app, &paid, &fake.sign(&paid, WEBHOOK_ID)).await;
    app.run_tasks().await;
    app.advance(day * 7);
    app.run_tasks().await;
    let (subscription_status, device) = statuses(&app, prompt).await;
    assert_eq!(subscription_status, "active");
    assert_ne!(device, "disabled");
    let sent = app.mail_templates(prompt).await;
    assert_eq!(
        sent.iter().filter(|t| *t == "payment_failed").count(),
        1,
        "{sent:?}"
    );
}

async fn reminders_precede_renewal_and_a_cancellation_keeps_access_to_the_period_end(
    engine: Engine,
) {
    let fake = FakePayPal::start().await;
    let app = app_with_paypal(engine, &fake, |_| {}).await;
    let day = std::time::Duration::from_secs(24 * 3600);
    let email = "leaving@example.com";
    let (_, subscription) = subscriber(&app, &fake, email).await;
    let reminders = || async {
        app.mail_templates(email)
            .await
            .iter()
            .filter(|t| *t == "renewal_reminder")
            .count()
    };
    assert_eq!(reminders().await, 0);
    // The period is 30 days: a reminder 7 days before its end.
    app.advance(day * 23);
    app.run_tasks().await;
    assert_eq!(reminders().await, 1, "7 days before");

    // Cancelled at PayPal: no more reminders, access until the period ends.
    let cancel = cancelled("WH-C1", &subscription);
    let (status, _) = deliver(&app, &cancel, &fake.sign(&cancel, WEBHOOK_ID)).await;
    assert_eq!(status, StatusCode::OK);
    app.run_tasks().await;
    let confirmations = app.mail_templates(email).await;
    assert_eq!(
        confirmations
            .iter()
            .filter(|t| *t == "subscription_cancelled")
            .count(),
        1,
        "the customer is told: {confirmations:?}"
    );
    app.advance(day * 6);
    app.run_tasks().await;
    assert_eq!(
        reminders().await,
        1,
        "no reminder for a period that will not renew"
    );
    let (subscription_status, device) = statuses(&app, email).await;
    assert_eq!(subscription_status, "active");
    assert_ne!(device, "disabled", "paid until the period ends");
    app.advance(day);
    app.run_tasks().await;
    assert_eq!(
        statuses(&app, email).await,
        ("cancelled".to_owned(), "disabled".to_owned())
    );

    // A full refund of the first payment: the payment and its invoice say so.
    let refund = refunded("WH-R1", &format!("SALE-1-{email}"), "9.99");
    let (status, _) = deliver(&app, &refund, &fake.sign(&refund, WEBHOOK_ID)).await;
    assert_eq!(status, StatusCode::OK);
    app.run_tasks().await;
    assert_eq!(
        app.count("SELECT COUNT(*) FROM payments WHERE status = 'refunded'")
            .await,
        1
    );
    let token = app.token_for(email).await;
    let (_, invoices) = app.get_auth("/api/v1/billing/invoices", &token).await;
    assert_eq!(invoices[0]["status"], "refunded", "{invoices}");
}

async fn a_paid_dedicated_plan_gets_a_pool_server_and_the_ready_mail(engine: Engine) {
    let fake = FakePayPal::start().await;
    let app = app_with_paypal(engine, &fake, |_| {}).await;
    let admin = app.admin_token().await;
    let server = app.add_server("pool-de-1", "eu-de", 90).await;
    let (status, _) = app
        .post_auth(
            "/api/v1/admin/pool",
            &admin,
            Some(json!({ "server_id": server["id"] })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let buy = |email: &'static str, sale: &'static str| {
        let (app, fake) = (&app, &fake);
        async move {
            let (_, token) = app.customer(email).await;
            app.run_tasks().await;
            let (status, body) = app
                .post_auth(
                    "/api/v1/billing/checkout",
                    &token,
                    Some(json!({ "plan": "dedicated" })),
                )
                .await;
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "a dedicated server needs a region: {body}"
            );
            let (status, checkout) = app
                .post_auth(
                    "/api/v1/billing/checkout",
                    &token,
                    Some(json!({ "plan": "dedicated", "region": "eu-de" })),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{checkout}");
            let subscription = checkout["subscription_id"].as_str().unwrap().to_owned();
            for raw in [
                activation(&format!("WH-A-{email}"), &subscription),
                sale_completed(&format!("WH-S-{email}"), sale, &subscription, "49.99"),
            ] {
                let (status, body) = deliver(app, &raw, &fake.sign(&raw, WEBHOOK_ID)).await;
                assert_eq!(status, StatusCode::OK, "{body}");
            }
            app.run_tasks().await;
            (token, subscription)
        }
    };

    let (token, subscription) = buy("first.buyer@example.com", "SALE-D1").await;
    let mails = app.mail_templates("first.buyer@example.com").await;
    assert!(
        mails.contains(&"dedicated_processing".to_owned())
            && mails.contains(&"dedicated_ready".to_owned()),
        "{mails:?}"
    );
    let ready = app
        .last_mail("first.buyer@example.com", "dedicated_ready")
        .await;
    assert_eq!(ready["address"], "pool-de-1.example.com", "{ready}");
    let (_, orders) = app.get_auth("/api/v1/admin/orders", &admin).await;
    assert_eq!(orders[0]["status"], "completed", "{orders}");
    assert_eq!(orders[0]["server_id"], server["id"]);
    let (status, device) = app
        .post_auth(
            "/api/v1/devices",
            &token,
            Some(json!({ "public_key": common::base64_key(91) })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{device}");
    assert_eq!(device["device"]["server"]["id"], server["uuid"]);

    // The next month's payment keeps the server: no second order.
    let renewal = sale_completed("WH-S-renewal", "SALE-D2", &subscription, "49.99");
    deliver(&app, &renewal, &fake.sign(&renewal, WEBHOOK_ID)).await;
    app.run_tasks().await;
    assert_eq!(
        app.count("SELECT COUNT(*) FROM server_provisioning_queue")
            .await,
        1
    );

    // The pool is empty now: the second buyer's order waits for a new instance.
    buy("second.buyer@example.com", "SALE-D3").await;
    let mails = app.mail_templates("second.buyer@example.com").await;
    assert!(
        mails.contains(&"dedicated_processing".to_owned()),
        "{mails:?}"
    );
    assert!(!mails.contains(&"dedicated_ready".to_owned()), "{mails:?}");
    let (_, pending) = app
        .get_auth("/api/v1/admin/orders?status=pending", &admin)
        .await;
    assert_eq!(pending.as_array().unwrap().len(), 1, "{pending}");
}

async fn forged_deliveries_cost_paypal_calls_only_until_their_sender_is_cut_off(engine: Engine) {
    let fake = FakePayPal::start().await;
    let app = app_with_paypal(engine, &fake, |_| {}).await;
    let (_, token) = app.customer("target@example.com").await;
    let (_, checkout) = app
        .post_auth(
            "/api/v1/billing/checkout",
            &token,
            Some(json!({ "plan": "personal" })),
        )
        .await;
    let subscription = checkout["subscription_id"].as_str().unwrap().to_owned();

    // A real delivery, stored; its replays are acknowledged without asking PayPal again.
    let real = activation("WH-REAL", &subscription);
    let signed = fake.sign(&real, WEBHOOK_ID);
    assert_eq!(deliver(&app, &real, &signed).await.0, StatusCode::OK);
    let asked = fake.verifications();
    for _ in 0..3 {
        assert_eq!(deliver(&app, &real, &signed).await.0, StatusCode::OK);
    }
    assert_eq!(
        fake.verifications(),
        asked,
        "a replay needs no verification"
    );

    // Forged deliveries: each one is asked about, until the address has failed ten times.
    for n in 0..10 {
        let raw = activation(&format!("WH-FORGED-{n}"), &subscription);
        let forged = fake.sign(&raw.replace("ACTIVE", "ACTIVE "), WEBHOOK_ID);
        let (status, body) = deliver(&app, &raw, &forged).await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::BAD_REQUEST, "webhook_unverified")
        );
    }
    assert_eq!(fake.verifications(), asked + 10);
    let raw = activation("WH-FORGED-X", &subscription);
    let forged = fake.sign(&raw.replace("ACTIVE", "ACTIVE "), WEBHOOK_ID);
    let (status, body) = deliver(&app, &raw, &forged).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        "{body}"
    );
    assert_eq!(
        fake.verifications(),
        asked + 10,
        "PayPal is not asked again"
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM payment_events").await, 1);
}

/// PayPal delivers a subscription's payment and cancellation hours before its activation (its
/// delivery of the activation kept failing): they wait for it, without using up their task's
/// attempts, run as soon as it is applied, and in the order they came: paid, and cancelled at
/// the period's end.
async fn events_ahead_of_their_activation_wait_for_it_however_late_it_comes(engine: Engine) {
    let fake = FakePayPal::start().await;
    let app = app_with_paypal(engine, &fake, |_| {}).await;
    let (user_id, token) = app.customer("late.activation@example.com").await;
    let (status, checkout) = app
        .post_auth(
            "/api/v1/billing/checkout",
            &token,
            Some(json!({ "plan": "personal" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{checkout}");
    let subscription = checkout["subscription_id"].as_str().unwrap().to_owned();
    // The payment first, the cancellation two minutes later: they must apply in that order
    // (a cancellation before the first payment would end the plan at once).
    for raw in [
        sale_completed("WH-EARLY-S", "SALE-EARLY", &subscription, "9.99"),
        cancelled("WH-EARLY-C", &subscription),
    ] {
        let (status, body) = deliver(&app, &raw, &fake.sign(&raw, WEBHOOK_ID)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        app.run_tasks().await;
        app.advance(std::time::Duration::from_secs(120));
    }
    // Six hours of waiting: far more than a failing task's attempts would last.
    for _ in 0..12 {
        app.run_tasks().await;
        app.advance(std::time::Duration::from_secs(30 * 60));
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM payments").await, 0);
    let waiting: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, attempts FROM scheduled_tasks WHERE step = 'process_event' ORDER BY id",
    )
    .fetch_all(app.db().pool())
    .await
    .unwrap();
    assert_eq!(
        waiting,
        [("pending".to_owned(), 0), ("pending".to_owned(), 0)]
    );

    let raw = activation("WH-LATE-A", &subscription);
    let (status, body) = deliver(&app, &raw, &fake.sign(&raw, WEBHOOK_ID)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.run_tasks().await;
    app.advance(std::time::Duration::from_secs(3600));
    app.run_tasks().await;
    let (plan, status, cancelling, end): (String, String, i64, Option<i64>) = sqlx::query_as(
        "SELECT plan_type, status, cancel_at_period_end, current_period_end FROM subscriptions
         WHERE user_id = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(user_id)
    .fetch_one(app.db().pool())
    .await
    .unwrap();
    assert_eq!(
        (plan.as_str(), status.as_str(), cancelling),
        ("personal", "active", 1)
    );
    let paid_until = end.unwrap() - app.clock.now_ms();
    assert!(
        paid_until > 28 * 24 * 3600 * 1000,
        "the payment extended the period"
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM invoices").await, 1);
}
