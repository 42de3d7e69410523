//! The task engine under failure and concurrency: restarts and crashed workers, two workers
//! (and two real processes) on one queue, retries and the dead-letter state.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Engine, PgDatabase, TestApp, error_code};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::{AnyConnection, Connection as _};
use truevault_control_plane::automation::tasks::{self, NewTask};
use truevault_control_plane::automation::{outbox, render::MailRenderer, workflows};
use truevault_control_plane::clock::{Clock as _, MINUTE};

engine_tests!(
    a_restart_mid_trial_loses_and_duplicates_nothing,
    two_workers_never_run_one_task_twice,
    a_failing_step_is_retried_then_dead_lettered_and_can_be_retried,
);

fn days(n: u64) -> Duration {
    Duration::from_secs(n * 24 * 3600)
}

async fn schedule_scanner_tasks(app: &TestApp, user_ids: &[i64]) {
    let now = app.clock.now_ms();
    let mut tx = app.db().begin_write().await.unwrap();
    for id in user_ids {
        tasks::schedule(
            tx.conn(),
            NewTask {
                key: format!("load:{id}"),
                workflow: workflows::TRIAL_SIGNUP,
                step: "generate_scanner_token",
                payload: json!({ "user_id": id }),
                user_id: Some(*id),
                run_at: now,
                max_attempts: 3,
            },
            now,
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

async fn a_restart_mid_trial_loses_and_duplicates_nothing(engine: Engine) {
    let app = TestApp::start(engine).await;
    let email = "restart@example.com";
    app.register(email).await;
    app.run_tasks().await;
    app.deliver_mail().await;
    app.advance(days(5) + Duration::from_secs(1));

    // A worker claims the day-1 and day-5 steps and dies before finishing them; another mail
    // goes out but the crash comes before it is recorded as sent.
    let now = app.clock.now_ms();
    let claimed = tasks::claim(app.db(), "crashed-worker", now, 5 * MINUTE, 10)
        .await
        .unwrap();
    assert_eq!(
        claimed.len(),
        3,
        "getting_started, day1 tips and ending_soon are due"
    );
    let mails = outbox::claim(app.db(), now, 5 * MINUTE, 10).await.unwrap();
    assert!(mails.is_empty(), "everything queued so far was delivered");
    let mut tx = app.db().begin_write().await.unwrap();
    outbox::enqueue(
        tx.conn(),
        outbox::OutgoingMail {
            to: email,
            user_id: None,
            template: "trial_expired",
            context: json!({}),
            dedupe_key: None,
        },
        now,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let in_flight = outbox::claim(app.db(), now, 5 * MINUTE, 10).await.unwrap();
    assert_eq!(in_flight.len(), 1);
    let rendered = MailRenderer::new("http://127.0.0.1:8080")
        .unwrap()
        .render("trial_expired", &json!({}))
        .unwrap();
    app.automation()
        .transport()
        .send(&in_flight[0].uuid, email, &rendered)
        .await
        .unwrap();

    let app = app.restart().await;
    // Until the dead worker's lease runs out, nobody touches its tasks.
    app.automation().recover_expired_leases().await.unwrap();
    assert_eq!(app.run_tasks().await, 0);
    app.advance(Duration::from_secs(6 * 60));
    assert_eq!(app.automation().recover_expired_leases().await.unwrap(), 3);
    app.run_tasks().await;
    app.advance(days(3));
    app.run_tasks().await;
    app.deliver_mail().await;

    let templates = app.mail_templates(email).await;
    let expected = [
        "verify_email",
        "welcome_trial",
        "trial_expired",
        "trial_getting_started",
        "trial_day1_tips",
        "trial_ending_soon",
        "trial_last_day",
        "trial_expired",
    ];
    let mut sorted_got = templates.clone();
    sorted_got.sort();
    let mut sorted_expected: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
    sorted_expected.sort();
    assert_eq!(
        sorted_got, sorted_expected,
        "each mail exactly once (plus the injected one)"
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM mail_outbox WHERE status <> 'sent'")
            .await,
        0
    );
    // The mail that went out just before the crash was sent again under the same id: one file.
    let files = std::fs::read_dir(app.settings.data_dir.join("mail"))
        .unwrap()
        .count();
    assert_eq!(files, expected.len());
    assert_eq!(
        app.count("SELECT COUNT(*) FROM scheduled_tasks WHERE workflow = 'trial_signup' AND status <> 'succeeded'").await,
        0
    );
}

async fn two_workers_never_run_one_task_twice(engine: Engine) {
    let app = TestApp::start(engine).await;
    let other = app.replica().await;
    let users = app
        .insert_trial_users(300, app.clock.now_ms() + days(7).as_millis() as i64)
        .await;
    schedule_scanner_tasks(&app, &users).await;

    let drain = |instance: &TestApp| {
        let automation = std::sync::Arc::clone(instance.automation());
        async move {
            let mut ran = Vec::new();
            loop {
                let batch = automation.run_due(8).await.unwrap();
                if batch.is_empty() {
                    return ran;
                }
                ran.extend(batch);
            }
        }
    };
    let (a, b) = tokio::join!(tokio::spawn(drain(&app)), tokio::spawn(drain(&other)));
    let (a, b) = (a.unwrap(), b.unwrap());
    let all: Vec<i64> = a.iter().chain(&b).copied().collect();
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), unique.len(), "a task ran twice");
    assert_eq!(unique.len(), 300);
    assert_eq!(
        app.count(
            "SELECT COUNT(*) FROM scheduled_tasks WHERE attempts = 1 AND status = 'succeeded'"
        )
        .await,
        300
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM scanner_tokens").await, 300);
}

async fn a_failing_step_is_retried_then_dead_lettered_and_can_be_retried(engine: Engine) {
    const OPERATOR: &str = "ops@truevault.example";
    let app = TestApp::start_with(engine, |s| s.operator_email = Some(OPERATOR.into())).await;
    let user = app.insert_trial_users(1, 0).await[0];
    let now = app.clock.now_ms();
    let mut tx = app.db().begin_write().await.unwrap();
    // A step this version does not know, as after a rollback to an older release.
    tasks::schedule(
        tx.conn(),
        NewTask {
            key: "future:1".into(),
            workflow: workflows::TRIAL_SIGNUP,
            step: "step_from_the_future",
            payload: json!({}),
            user_id: Some(user),
            run_at: now,
            max_attempts: 3,
        },
        now,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    app.run_tasks().await;
    let (status, attempts): (String, i64) =
        sqlx::query_as("SELECT status, attempts FROM scheduled_tasks WHERE task_key = 'future:1'")
            .fetch_one(app.db().pool())
            .await
            .unwrap();
    assert_eq!((status.as_str(), attempts), ("pending", 1));
    app.run_tasks().await;
    assert_eq!(
        app.count("SELECT attempts FROM scheduled_tasks WHERE task_key = 'future:1'")
            .await,
        1,
        "backoff: not yet"
    );
    app.advance(Duration::from_secs(31));
    app.run_tasks().await;
    app.advance(Duration::from_secs(61));
    app.run_tasks().await;
    app.advance(Duration::from_secs(3600));
    app.run_tasks().await;

    let admin = app.admin_token().await;
    let (status, dead) = app.get_auth("/api/v1/admin/tasks", &admin).await;
    assert_eq!(status, StatusCode::OK);
    let dead = dead.as_array().unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        (dead[0]["key"].as_str(), dead[0]["attempts"].as_i64()),
        (Some("future:1"), Some(3))
    );
    assert!(
        dead[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("step_from_the_future")
    );
    let id = dead[0]["id"].as_i64().unwrap();
    // The operator hears of it once, with the error and what to do.
    assert_eq!(app.mail_templates(OPERATOR).await, ["task_dead"]);
    let told = app.last_mail(OPERATOR, "task_dead").await;
    assert_eq!(
        (told["id"].as_i64(), told["key"].as_str()),
        (Some(id), Some("future:1"))
    );
    assert!(
        told["error"]
            .as_str()
            .unwrap()
            .contains("step_from_the_future")
    );
    assert!(
        told["customer"].as_str().unwrap().ends_with("@example.com"),
        "{told}"
    );

    let (status, retried) = app
        .post_auth(&format!("/api/v1/admin/tasks/{id}/retry"), &admin, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    assert_eq!(
        (retried["status"].as_str(), retried["attempts"].as_i64()),
        (Some("pending"), Some(0))
    );
    let (status, body) = app
        .post_auth(&format!("/api/v1/admin/tasks/{id}/retry"), &admin, None)
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "task_not_retryable")
    );
    let (status, cancelled) = app
        .post_auth(&format!("/api/v1/admin/tasks/{id}/cancel"), &admin, None)
        .await;
    assert_eq!(
        (status, cancelled["status"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    app.advance(Duration::from_secs(60));
    assert_eq!(app.run_tasks().await, 0, "a cancelled task does not run");
    let (status, _) = app
        .post_auth("/api/v1/admin/tasks/424242/retry", &admin, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = app
        .get_auth("/api/v1/admin/tasks?status=bogus", &admin)
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "validation_failed")
    );
    assert_eq!(
        app.count(
            "SELECT COUNT(*) FROM audit_log WHERE action IN ('task.retried', 'task.cancelled')"
        )
        .await,
        2
    );

    // A worker that dies during a task's last attempt: the task is dead once its lease runs
    // out, and the operator is told of that too.
    let now = app.clock.now_ms();
    let mut tx = app.db().begin_write().await.unwrap();
    let last_chance = NewTask {
        key: "crash:1".into(),
        workflow: workflows::TRIAL_SIGNUP,
        step: "generate_scanner_token",
        payload: json!({}),
        user_id: Some(user),
        run_at: now,
        max_attempts: 1,
    };
    tasks::schedule(tx.conn(), last_chance, now).await.unwrap();
    tx.commit().await.unwrap();
    let claimed = tasks::claim(app.db(), "crashed-worker", now, 5 * MINUTE, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    app.advance(Duration::from_secs(6 * 60));
    assert_eq!(app.automation().recover_expired_leases().await.unwrap(), 1);
    assert_eq!(
        app.mail_templates(OPERATOR).await,
        ["task_dead", "task_dead"]
    );
    let told = app.last_mail(OPERATOR, "task_dead").await;
    assert_eq!(told["key"], "crash:1");
    assert!(told["error"].as_str().unwrap().contains("lease expired"));
}

/// Kills a spawned control plane when the test ends, however it ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two real `truevault-control` processes work one PostgreSQL queue: every task runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_postgres_never_run_one_task_twice() {
    if !common::postgres_available("two_processes_on_postgres_never_run_one_task_twice").await {
        return;
    }
    let pg = PgDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_truevault-control");
    let status = Command::new(bin)
        .args([
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--database-url",
            &pg.url,
            "migrate",
        ])
        .env("TRUEVAULT_LOG", "warn")
        .status()
        .unwrap();
    assert!(status.success());

    let mut conn = AnyConnection::connect(&pg.url).await.unwrap();
    let now = truevault_control_plane::clock::SystemClock.now_ms();
    let n: i64 = 400;
    for i in 0..n {
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO users (uuid, email, password_hash, created_at, updated_at) VALUES ($1, $2, 'x', 0, 0) RETURNING id",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(format!("p{i}@example.com"))
        .fetch_one(&mut conn)
        .await
        .unwrap();
        tasks::schedule(
            &mut conn,
            NewTask {
                key: format!("load:{id}"),
                workflow: workflows::TRIAL_SIGNUP,
                step: "generate_scanner_token",
                payload: json!({}),
                user_id: Some(id),
                run_at: now,
                max_attempts: 3,
            },
            now,
        )
        .await
        .unwrap();
    }

    let spawn = |name: &str| {
        Process(
            Command::new(bin)
                .args([
                    "--data-dir",
                    dir.path().join(name).to_str().unwrap(),
                    "--database-url",
                    &pg.url,
                ])
                .args([
                    "serve",
                    "--http-listen",
                    "127.0.0.1:0",
                    "--grpc-listen",
                    "127.0.0.1:0",
                ])
                .env("TRUEVAULT_LOG", "warn")
                .env("TRUEVAULT_WORKER_POLL_INTERVAL_MS", "20")
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let _a = spawn("a");
    let _b = spawn("b");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (done,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM scheduled_tasks WHERE task_key LIKE 'load:%' AND status = 'succeeded'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if done == n {
            break;
        }
        assert!(Instant::now() < deadline, "only {done} of {n} tasks ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (twice,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM scheduled_tasks WHERE task_key LIKE 'load:%' AND attempts <> 1",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(twice, 0, "a task was claimed more than once");
    let (tokens,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM scanner_tokens")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(tokens, n);
    let _ = conn.close().await;
}

mod mail_claims {
    use super::*;

    engine_tests!(a_stale_mail_claim_records_nothing);
}

async fn a_stale_mail_claim_records_nothing(engine: Engine) {
    let app = TestApp::start(engine).await;
    app.register("slow@example.com").await;
    let now = app.clock.now_ms();
    let first = outbox::claim(app.db(), now, MINUTE, 10).await.unwrap();
    assert_eq!(first.len(), 1);
    // The first worker is slow; its lease runs out and another worker claims the mail again.
    app.advance(Duration::from_secs(61));
    let second = outbox::claim(app.db(), app.clock.now_ms(), MINUTE, 10)
        .await
        .unwrap();
    assert_eq!((second.len(), second[0].attempt), (1, 2));
    // The first worker's late failure must not reset the second worker's claim...
    outbox::mark_failed(
        app.db(),
        &first[0],
        "timeout",
        Some(app.clock.now_ms()),
        app.clock.now_ms(),
    )
    .await
    .unwrap();
    let (status,): (String,) = sqlx::query_as("SELECT status FROM mail_outbox")
        .fetch_one(app.db().pool())
        .await
        .unwrap();
    assert_eq!(status, "sending");
    // ...and the second worker's success is what is recorded, with the links scrubbed.
    outbox::mark_sent(app.db(), &second[0], app.clock.now_ms())
        .await
        .unwrap();
    let (status, context): (String, String) =
        sqlx::query_as("SELECT status, context FROM mail_outbox")
            .fetch_one(app.db().pool())
            .await
            .unwrap();
    assert_eq!((status.as_str(), context.as_str()), ("sent", "{}"));
}
