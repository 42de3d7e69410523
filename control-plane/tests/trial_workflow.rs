//! The seed's trial workflow, driven by a fake clock: which mails exist after each offset and
//! what they say, conversion, extension, expiry, the sweep, VIP signup and scanner tokens.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Engine, TestApp, error_code};
use reqwest::StatusCode;
use serde_json::json;
use truevault_control_plane::automation::render::human_date;
use truevault_control_plane::clock::{Clock as _, DAY};

engine_tests!(
    a_whole_trial_sends_each_mail_at_its_time_then_expires,
    a_trial_converted_on_day_three_gets_no_later_mails,
    an_extended_trial_moves_its_mails_and_its_end,
    the_sweep_runs_once_per_period_and_expires_overdue_trials,
    a_verified_vip_gets_the_vip_workflow_instead,
    scanner_tokens_are_shown_once_and_rotate,
);

const HOUR: Duration = Duration::from_secs(3600);

fn days(n: u64) -> Duration {
    Duration::from_secs(n * 24 * 3600)
}

async fn registered(app: &TestApp, email: &str) -> (i64, i64) {
    let body = app.register(email).await;
    let user_id = body["user"]["id"].as_i64().unwrap();
    let (trial_ends,): (i64,) =
        sqlx::query_as("SELECT trial_ends FROM subscriptions WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(app.db().pool())
            .await
            .unwrap();
    (user_id, trial_ends)
}

async fn a_whole_trial_sends_each_mail_at_its_time_then_expires(engine: Engine) {
    let app = TestApp::start(engine).await;
    let email = "ada@example.com";
    let (user_id, trial_ends) = registered(&app, email).await;
    let ends = human_date(trial_ends);

    // +0: welcome (beside the verification mail), one regional identity, a scanner token.
    app.run_tasks().await;
    assert_eq!(
        app.mail_templates(email).await,
        ["verify_email", "welcome_trial"]
    );
    let welcome = app.last_mail(email, "welcome_trial").await;
    assert_eq!(welcome["first_name"], "Test");
    assert_eq!(welcome["trial_ends"], ends.as_str());
    assert_eq!(
        app.count("SELECT COUNT(*) FROM regional_identities").await,
        1
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM scanner_tokens").await, 1);

    let timeline: [(Duration, &[&str]); 5] = [
        (HOUR, &["trial_getting_started"]),
        (days(1), &["trial_day1_tips"]),
        (days(5), &["trial_ending_soon"]),
        (days(6), &["trial_last_day"]),
        (days(7), &["trial_expired"]),
    ];
    let start = app.clock.now_ms() - 1; // the registration instant is in the past now
    let mut expected: Vec<String> = vec!["verify_email".into(), "welcome_trial".into()];
    for (offset, new_mails) in timeline {
        // Just before the offset: nothing new.
        let target = start + i64::try_from(offset.as_millis()).unwrap();
        app.clock.set(target - 1000);
        app.run_tasks().await;
        assert_eq!(
            app.mail_templates(email).await,
            expected,
            "before {offset:?}"
        );
        app.clock.set(target + 1);
        app.run_tasks().await;
        expected.extend(new_mails.iter().map(|m| (*m).to_owned()));
        assert_eq!(app.mail_templates(email).await, expected, "at {offset:?}");
    }
    // What the reminders say: the name and the trial's end date.
    for template in ["trial_day1_tips", "trial_ending_soon", "trial_last_day"] {
        let ctx = app.last_mail(email, template).await;
        assert_eq!(
            (ctx["first_name"].as_str(), ctx["trial_ends"].as_str()),
            (Some("Test"), Some(ends.as_str()))
        );
    }
    let (d1, d5, d6, expired): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT reminder_day1_sent, reminder_day5_sent, reminder_day6_sent, expired FROM trial_tracking WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_one(app.db().pool())
    .await
    .unwrap();
    assert_eq!((d1, d5, d6, expired), (1, 1, 1, 1));
    assert_eq!(app.subscription_status(user_id).await, "expired");

    // Delivered (to .eml files by default): rendered with the name, date and links.
    assert_eq!(app.deliver_mail().await, 7);
    let dir = app.settings.data_dir.join("mail");
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(files.len(), 7);
    let soon = files
        .iter()
        .find(|f| f.contains("2 Days Left"))
        .expect("the trial_ending_soon mail");
    let unfolded = soon.replace("=\r\n", "");
    assert!(
        unfolded.contains(&format!("Your free trial ends in 2 days ({ends})")),
        "{soon}"
    );
    assert!(unfolded.contains("http://127.0.0.1:8080/dashboard/billing"));
    assert!(soon.contains("Content-Type: multipart/alternative"));
    assert_eq!(
        app.count("SELECT COUNT(*) FROM mail_outbox WHERE status = 'sent'")
            .await,
        7
    );

    // Nothing more happens, however long we wait.
    app.advance(days(30));
    app.run_tasks().await;
    assert_eq!(app.mail_templates(email).await, expected);
}

async fn a_trial_converted_on_day_three_gets_no_later_mails(engine: Engine) {
    let app = TestApp::start(engine).await;
    let email = "payer@example.com";
    let (user_id, _) = registered(&app, email).await;
    app.run_tasks().await;
    app.advance(days(3));
    app.run_tasks().await;
    let before = app.mail_templates(email).await;
    assert_eq!(
        before,
        [
            "verify_email",
            "welcome_trial",
            "trial_getting_started",
            "trial_day1_tips"
        ]
    );

    let mut tx = app.db().begin_write().await.unwrap();
    let now = app.clock.now_ms();
    assert!(
        truevault_control_plane::billing::trials::convert(tx.conn(), user_id, "personal", now)
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();

    for _ in 0..10 {
        app.advance(days(1));
        app.run_tasks().await;
        app.automation().enqueue_sweep().await.unwrap();
        app.run_tasks().await;
    }
    assert_eq!(
        app.mail_templates(email).await,
        before,
        "no trial mail after conversion"
    );
    assert_eq!(app.subscription_status(user_id).await, "active");
    let (converted, expired): (i64, i64) =
        sqlx::query_as("SELECT converted, expired FROM trial_tracking WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(app.db().pool())
            .await
            .unwrap();
    assert_eq!((converted, expired), (1, 0));
}

async fn an_extended_trial_moves_its_mails_and_its_end(engine: Engine) {
    let app = TestApp::start(engine).await;
    let email = "save@example.com";
    let (user_id, trial_ends) = registered(&app, email).await;
    app.run_tasks().await;
    app.advance(days(4));
    app.run_tasks().await;

    // "Reply SAVE": three more days.
    let admin = app.admin_token().await;
    let (status, body) = app
        .post_auth(
            &format!("/api/v1/admin/users/{user_id}/extend-trial"),
            &admin,
            Some(json!({ "days": 3 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["moved_steps"], 3,
        "ending_soon, last_day and the conversion check"
    );
    let new_end = human_date(trial_ends + 3 * DAY);

    app.advance(days(2)); // day 6: the original ending-soon time has passed
    app.run_tasks().await;
    assert!(
        !app.mail_templates(email)
            .await
            .contains(&"trial_ending_soon".to_owned())
    );
    app.advance(days(2)); // day 8 = 5 + 3
    app.run_tasks().await;
    assert_eq!(
        app.last_mail(email, "trial_ending_soon").await["trial_ends"],
        new_end.as_str()
    );
    app.advance(days(1)); // day 9 = 6 + 3
    app.run_tasks().await;
    assert!(
        app.mail_templates(email)
            .await
            .contains(&"trial_last_day".to_owned())
    );
    assert_eq!(
        app.subscription_status(user_id).await,
        "trial",
        "not expired at the original end"
    );
    app.advance(days(1)); // day 10 = 7 + 3
    app.run_tasks().await;
    assert_eq!(app.subscription_status(user_id).await, "expired");
    assert_eq!(
        app.mail_templates(email)
            .await
            .iter()
            .filter(|t| *t == "trial_expired")
            .count(),
        1
    );

    // Bad input is refused and changes nothing.
    let admin = app.admin_token().await;
    let (status, body) = app
        .post_auth(
            &format!("/api/v1/admin/users/{user_id}/extend-trial"),
            &admin,
            Some(json!({ "days": 0 })),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "validation_failed")
    );
    let (status, body) = app
        .post_auth(
            &format!("/api/v1/admin/users/{user_id}/extend-trial"),
            &admin,
            Some(json!({ "days": 3 })),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "not_on_trial"),
        "an expired trial"
    );
    let (status, _) = app
        .post_auth(
            "/api/v1/admin/users/999999/extend-trial",
            &admin,
            Some(json!({ "days": 3 })),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM audit_log WHERE action = 'trial.extended'")
            .await,
        1
    );
}

async fn the_sweep_runs_once_per_period_and_expires_overdue_trials(engine: Engine) {
    let app = TestApp::start(engine).await;
    let now = app.clock.now_ms();
    let overdue = app.insert_trial_users(1200, now - 1).await;
    let running = app.insert_trial_users(5, now + DAY).await;
    // A device of an overdue user (on a server row) is disabled by the expiry.
    sqlx::query(
        "INSERT INTO vpn_servers (uuid, name, region, country, endpoint_host, ipv4_subnet, status, created_at, updated_at)
         VALUES ('s1', 'us-east-1', 'us-east', 'USA', 'vpn1.example.com', '10.8.0.0/16', 'online', 0, 0)",
    )
    .execute(app.db().pool())
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO devices (uuid, user_id, server_id, name, public_key, ipv4_address, status, created_at, updated_at)
         VALUES ('d1', $1, (SELECT id FROM vpn_servers), 'laptop', $2, '10.8.0.2', 'active', 0, 0)",
    )
    .bind(overdue[0])
    .bind("A".repeat(43) + "=")
    .execute(app.db().pool())
    .await
    .unwrap();

    // Two replicas enqueue the sweep for the same period: one task.
    let other = app.replica().await;
    assert!(app.automation().enqueue_sweep().await.unwrap());
    assert!(!other.automation().enqueue_sweep().await.unwrap());
    assert_eq!(
        app.count("SELECT COUNT(*) FROM scheduled_tasks WHERE workflow = 'maintenance'")
            .await,
        1
    );
    app.run_tasks().await;

    assert_eq!(
        app.count("SELECT COUNT(*) FROM subscriptions WHERE status = 'expired'")
            .await,
        1200
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM trial_tracking WHERE expired = 1")
            .await,
        1200
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM mail_outbox WHERE template = 'trial_expired'")
            .await,
        1200
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM devices WHERE status = 'disabled'")
            .await,
        1
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM subscriptions WHERE status = 'trial'")
            .await,
        5
    );
    let _ = running;

    // The next period has its own sweep; it finds nothing new and mails nobody twice.
    app.advance(Duration::from_secs(301));
    assert!(app.automation().enqueue_sweep().await.unwrap());
    app.run_tasks().await;
    assert_eq!(
        app.count("SELECT COUNT(*) FROM mail_outbox WHERE template = 'trial_expired'")
            .await,
        1200
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM scheduled_tasks WHERE status = 'succeeded' AND workflow = 'maintenance'").await, 2);
}

async fn a_verified_vip_gets_the_vip_workflow_instead(engine: Engine) {
    let app = TestApp::start(engine).await;
    let admin = app.admin_token().await;
    app.post_auth(
        "/api/v1/admin/vip",
        &admin,
        Some(json!({ "email": "star@example.com", "tier": "vip_basic" })),
    )
    .await;
    let (user_id, _) = registered(&app, "star@example.com").await;
    app.run_tasks().await;
    let token = app
        .token_from_mail("star@example.com", "verify_email", "verify_url")
        .await;
    let (status, _) = app
        .post("/api/v1/auth/verify-email", json!({ "token": token }))
        .await;
    assert_eq!(status, StatusCode::OK);
    app.run_tasks().await;
    let ctx = app.last_mail("star@example.com", "welcome_vip").await;
    assert_eq!(ctx["vip_badge"], "\u{2b50} VIP");
    // Every region gets an identity; the trial drip is cancelled.
    let (identities,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM regional_identities WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(app.db().pool())
            .await
            .unwrap();
    assert_eq!(
        usize::try_from(identities).unwrap(),
        app.settings.regions.len()
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM scheduled_tasks WHERE workflow = 'trial_signup' AND status = 'pending'").await,
        0
    );
    app.advance(days(10));
    app.run_tasks().await;
    assert_eq!(
        app.mail_templates("star@example.com").await,
        ["verify_email", "welcome_trial", "welcome_vip"]
    );
    assert_eq!(app.subscription_status(user_id).await, "active");
    let (_, login) = app.login("star@example.com", common::PASSWORD).await;
    let (status, list) = app
        .get_auth(
            "/api/v1/me/identities",
            login["access_token"].as_str().unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), app.settings.regions.len());
}

async fn scanner_tokens_are_shown_once_and_rotate(engine: Engine) {
    let app = TestApp::start(engine).await;
    let reg = app.register("scan@example.com").await;
    let access = reg["access_token"].as_str().unwrap();
    let (status, first) = app
        .post_auth("/api/v1/me/scanner-token", access, None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (_, second) = app
        .post_auth("/api/v1/me/scanner-token", access, None)
        .await;
    let (a, b) = (
        first["scanner_token"].as_str().unwrap(),
        second["scanner_token"].as_str().unwrap(),
    );
    assert_ne!(a, b);
    let (hash,): (String,) = sqlx::query_as("SELECT token_hash FROM scanner_tokens")
        .fetch_one(app.db().pool())
        .await
        .unwrap();
    assert_eq!(
        hash,
        truevault_control_plane::crypto::sha256_hex(b.as_bytes()),
        "only the hash is stored"
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM scanner_tokens").await, 1);
}

mod short_trials {
    use super::*;

    engine_tests!(a_shorter_trial_places_its_reminders_before_its_end);
}

async fn a_shorter_trial_places_its_reminders_before_its_end(engine: Engine) {
    let app = TestApp::start_with(engine, |s| s.trial_days = 3).await;
    let email = "short@example.com";
    let (user_id, trial_ends) = registered(&app, email).await;
    let start = app.clock.now_ms();
    assert_eq!(trial_ends - start, 3 * DAY);
    let run_at = |step: &'static str| {
        let db = app.db().clone();
        async move {
            let (at,): (i64,) =
                sqlx::query_as("SELECT run_at FROM scheduled_tasks WHERE step = $1")
                    .bind(step)
                    .fetch_one(db.pool())
                    .await
                    .unwrap();
            at
        }
    };
    assert_eq!(run_at("trial_ending_soon").await, start + DAY);
    assert_eq!(run_at("trial_last_day").await, start + 2 * DAY);
    assert_eq!(run_at("check_trial_conversion").await, trial_ends);
    app.advance(days(3) + Duration::from_secs(1));
    app.run_tasks().await;
    assert_eq!(app.subscription_status(user_id).await, "expired");
}
