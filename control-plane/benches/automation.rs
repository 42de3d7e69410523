//! Automation throughput on SQLite and PostgreSQL.
//!
//! cargo bench -p truevault-control-plane --bench automation -- [--engine sqlite|postgres|both]
//!     [--tasks N] [--mails N] [--trials N]
//!
//! - no-op tasks: claim, run (nothing) and complete, in one worker.
//! - mail tasks: the `welcome_trial` step (re-read the user, queue the mail) for N users, then
//!   delivery: render both parts and write each `.eml` file (fsync) in the data directory.
//! - the expiry sweep over N overdue trials (subscription, tracking, mail, devices).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_precision_loss
)]

mod support;

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use truevault_control_plane::automation::tasks::{self, NewTask};
use truevault_control_plane::automation::{Automation, workflows};
use truevault_control_plane::billing::trials;
use truevault_control_plane::clock::{Clock as _, SystemClock};
use truevault_control_plane::config::Settings;
use truevault_control_plane::secret::Secret;
use truevault_control_plane::server;
use truevault_control_plane::storage::{Db, placeholders};

use support::{Flags, PgBench};

struct Args {
    engines: Vec<&'static str>,
    tasks: usize,
    mails: usize,
    trials: usize,
}

fn args() -> Args {
    let f = Flags::parse(&["tasks", "mails", "trials"]);
    Args {
        engines: f.engines(),
        tasks: f.usize("tasks", 5_000),
        mails: f.usize("mails", 2_000),
        trials: f.usize("trials", 100_000),
    }
}

/// Inserts `n` users with trials ending at `trial_ends`, 500 rows per statement.
async fn bulk_trial_users(db: &Db, n: usize, trial_ends: i64) -> Vec<i64> {
    let mut ids = Vec::with_capacity(n);
    let mut done = 0;
    while done < n {
        let batch = (n - done).min(500);
        let mut tx = db.begin_write().await.unwrap();
        let rows: Vec<String> = (0..batch)
            .map(|i| format!("({}, 'x', 'Bench', 0, 0)", placeholders(1 + i * 2, 2)))
            .collect();
        let sql = format!(
            "INSERT INTO users (uuid, email, password_hash, first_name, created_at, updated_at) VALUES {} RETURNING id",
            rows.join(", ")
        );
        let mut q = sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(sql));
        for i in 0..batch {
            q = q.bind(uuid::Uuid::new_v4().to_string()).bind(format!(
                "b{}-{}@bench.example",
                done + i,
                uuid::Uuid::new_v4().simple()
            ));
        }
        let batch_ids: Vec<i64> = q
            .fetch_all(tx.conn())
            .await
            .unwrap()
            .into_iter()
            .map(|(id,)| id)
            .collect();
        for table in ["subscriptions", "trial_tracking"] {
            let (cols, row) = if table == "subscriptions" {
                (
                    "user_id, plan_type, status, trial_started, trial_ends, current_period_start, current_period_end, created_at, updated_at",
                    "(${u}, 'trial', 'trial', 0, $1, 0, $1, 0, 0)",
                )
            } else {
                (
                    "user_id, trial_started, trial_ends, created_at",
                    "(${u}, -1, $1, 0)",
                )
            };
            let rows: Vec<String> = (0..batch_ids.len())
                .map(|i| row.replace("{u}", &(i + 2).to_string()))
                .collect();
            let sql = format!("INSERT INTO {table} ({cols}) VALUES {}", rows.join(", "));
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(trial_ends);
            for id in &batch_ids {
                q = q.bind(*id);
            }
            q.execute(tx.conn()).await.unwrap();
        }
        tx.commit().await.unwrap();
        ids.extend(batch_ids);
        done += batch;
    }
    ids
}

async fn schedule(db: &Db, tasks: Vec<NewTask>) {
    let now = SystemClock.now_ms();
    for chunk in tasks.chunks(1000) {
        let mut tx = db.begin_write().await.unwrap();
        for task in chunk {
            tasks::schedule(tx.conn(), task.clone(), now).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
}

fn row(engine: &str, what: &str, n: usize, secs: f64) -> String {
    format!(
        "| {engine} | {what} | {n} | {:.2} s | {:.0}/s |",
        secs,
        n as f64 / secs
    )
}

async fn bench(engine: &'static str, a: &Args) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings {
        data_dir: dir.path().join("data"),
        ..Settings::default()
    };
    let pg = if engine == "postgres" {
        let pg = PgBench::create().await;
        settings.database_url = Some(Secret::new(pg.url.clone()));
        Some(pg)
    } else {
        None
    };
    let db = server::open_database(&settings).await.unwrap();
    let automation = Automation::new(db.clone(), Arc::new(SystemClock), &settings, None).unwrap();
    let mut rows = Vec::new();

    let now = SystemClock.now_ms();
    schedule(
        &db,
        (0..a.tasks).map(|_| workflows::noop_task(now)).collect(),
    )
    .await;
    let t = Instant::now();
    let ran = automation.run_until_idle().await.unwrap();
    rows.push(row(
        engine,
        "no-op tasks (claim, run, complete)",
        ran,
        t.elapsed().as_secs_f64(),
    ));

    let users = bulk_trial_users(&db, a.mails, now + 7 * 86_400_000).await;
    let mail_tasks = users
        .iter()
        .map(|id| NewTask {
            key: format!("bench:welcome:{id}"),
            workflow: workflows::TRIAL_SIGNUP,
            step: "welcome_trial",
            payload: json!({}),
            user_id: Some(*id),
            run_at: now,
            max_attempts: 3,
        })
        .collect();
    schedule(&db, mail_tasks).await;
    let t = Instant::now();
    let ran = automation.run_until_idle().await.unwrap();
    let step_secs = t.elapsed().as_secs_f64();
    rows.push(row(
        engine,
        "welcome_trial steps (re-read user, queue mail)",
        ran,
        step_secs,
    ));
    let t = Instant::now();
    let mut sent = 0;
    loop {
        let r = automation.deliver_due(64).await.unwrap();
        if r.sent + r.retrying + r.failed == 0 {
            break;
        }
        sent += r.sent;
    }
    let mail_secs = t.elapsed().as_secs_f64();
    rows.push(row(
        engine,
        "mails rendered and written to .eml files",
        sent,
        mail_secs,
    ));
    rows.push(row(
        engine,
        "mail tasks end to end (step + file)",
        sent,
        step_secs + mail_secs,
    ));

    bulk_trial_users(&db, a.trials, now - 1).await;
    let t = Instant::now();
    let expired = trials::expire_due(&db, SystemClock.now_ms()).await.unwrap();
    rows.push(row(
        engine,
        "expiry sweep: overdue trials expired",
        usize::try_from(expired).unwrap(),
        t.elapsed().as_secs_f64(),
    ));

    db.close().await;
    if let Some(pg) = pg {
        pg.drop().await;
    }
    rows
}

#[tokio::main]
async fn main() {
    let a = args();
    println!("| engine | operation | count | time | rate |");
    println!("|---|---|---|---|---|");
    for engine in a.engines.clone() {
        for r in bench(engine, &a).await {
            println!("{r}");
        }
    }
}
