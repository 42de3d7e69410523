//! What each workflow step does. A step runs inside the transaction that also marks its task
//! done, re-reads the state it depends on, and does nothing when that state says it should not
//! (a converted, suspended or deleted user gets no trial mail).

use serde_json::json;
use sqlx::AnyConnection;

use crate::accounts::{VipTier, scanner};
use crate::billing::{dunning, payments, renewals, trials};
use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::identities;

use super::outbox::{self, OutgoingMail};
use super::render::human_date;
use super::tasks::ClaimedTask;
use super::workflows::{MAINTENANCE, NOOP, TRIAL_SIGNUP, VIP_SIGNUP};

/// What steps need besides the database.
#[derive(Debug, Clone)]
pub struct StepContext {
    pub regions: Vec<String>,
    /// Where problems only a person can fix are mailed (tasks that gave up).
    pub operator_email: Option<String>,
}

pub async fn run(
    ctx: &StepContext,
    conn: &mut AnyConnection,
    task: &ClaimedTask,
    now: Millis,
) -> Result<()> {
    if (task.workflow.as_str(), task.step.as_str()) == (MAINTENANCE, NOOP) {
        // Proves the pipeline works end to end (`admin tasks ping`); measures its overhead.
        return Ok(());
    }
    if (task.workflow.as_str(), task.step.as_str()) == (payments::PAYMENTS, payments::PROCESS_EVENT)
    {
        let row = task
            .payload
            .get("event")
            .and_then(serde_json::Value::as_i64)
            .ok_or_else(|| Error::internal(format!("task {} names no event", task.key)))?;
        return payments::process_event(conn, row, now).await;
    }
    let user_id = task
        .user_id
        .ok_or_else(|| Error::internal(format!("task {} has no user", task.key)))?;
    match (task.workflow.as_str(), task.step.as_str()) {
        (TRIAL_SIGNUP, "welcome_trial") => {
            trial_mail(conn, task, user_id, "welcome_trial", None, now).await
        }
        (TRIAL_SIGNUP, "trial_getting_started") => {
            trial_mail(conn, task, user_id, "trial_getting_started", None, now).await
        }
        (TRIAL_SIGNUP, "trial_day1_tips") => {
            trial_mail(
                conn,
                task,
                user_id,
                "trial_day1_tips",
                Some(Flag::Day1),
                now,
            )
            .await
        }
        (TRIAL_SIGNUP, "trial_ending_soon") => {
            trial_mail(
                conn,
                task,
                user_id,
                "trial_ending_soon",
                Some(Flag::Day5),
                now,
            )
            .await
        }
        (TRIAL_SIGNUP, "trial_last_day") => {
            trial_mail(conn, task, user_id, "trial_last_day", Some(Flag::Day6), now).await
        }
        (TRIAL_SIGNUP, "create_default_identities") => {
            // The seed's step data: a trial gets one identity.
            identities::ensure(conn, user_id, &ctx.regions, Some(1), now)
                .await
                .map(drop)
        }
        (TRIAL_SIGNUP | VIP_SIGNUP, "generate_scanner_token") => {
            scanner::ensure(conn, user_id, now).await.map(drop)
        }
        (TRIAL_SIGNUP, "check_trial_conversion") => {
            // Converted: nothing more. Otherwise the trial ends now (if it was extended, its
            // end moved and this step moved with it).
            trials::expire_if_due(conn, user_id, now).await.map(drop)
        }
        (VIP_SIGNUP, "welcome_vip") => welcome_vip(conn, task, user_id, now).await,
        (dunning::DUNNING, _) => dunning::run_step(conn, task, user_id, now).await,
        (renewals::RENEWALS, _) => renewals::run_step(conn, task, user_id, now).await,
        (VIP_SIGNUP, "create_identities") => {
            identities::ensure(conn, user_id, &ctx.regions, None, now)
                .await
                .map(drop)
        }
        (workflow, step) => Err(Error::internal(format!(
            "no step {step:?} in workflow {workflow:?} (written by another version?)"
        ))),
    }
}

/// The trial tracking flags of the seed: which reminders were sent.
#[derive(Debug, Clone, Copy)]
enum Flag {
    Day1,
    Day5,
    Day6,
}

impl Flag {
    fn column(self) -> &'static str {
        match self {
            Self::Day1 => "reminder_day1_sent",
            Self::Day5 => "reminder_day5_sent",
            Self::Day6 => "reminder_day6_sent",
        }
    }
}

type TrialRow = (
    String,
    String,
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
    i64,
    i64,
    i64,
);

async fn trial_mail(
    conn: &mut AnyConnection,
    task: &ClaimedTask,
    user_id: i64,
    template: &'static str,
    flag: Option<Flag>,
    now: Millis,
) -> Result<()> {
    let row: Option<TrialRow> = sqlx::query_as(
        "SELECT u.email, u.first_name, u.status, s.status, s.trial_ends, s.trial_converted,
                COALESCE(t.reminder_day1_sent, 0), COALESCE(t.reminder_day5_sent, 0), COALESCE(t.reminder_day6_sent, 0)
         FROM users u
         LEFT JOIN subscriptions s ON s.id = (SELECT MAX(id) FROM subscriptions WHERE user_id = u.id)
         LEFT JOIN trial_tracking t ON t.user_id = u.id
         WHERE u.id = $1",
    )
    .bind(user_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((email, first_name, user_status, sub_status, trial_ends, converted, day1, day5, day6)) =
        row
    else {
        return Ok(()); // the account is gone
    };
    let on_trial =
        user_status == "active" && sub_status.as_deref() == Some("trial") && converted == Some(0);
    let already = match flag {
        Some(Flag::Day1) => day1 != 0,
        Some(Flag::Day5) => day5 != 0,
        Some(Flag::Day6) => day6 != 0,
        None => false,
    };
    let Some(trial_ends) = trial_ends.filter(|_| on_trial && !already) else {
        return Ok(());
    };
    outbox::enqueue(
        &mut *conn,
        OutgoingMail {
            to: &email,
            user_id: Some(user_id),
            template,
            context: json!({ "first_name": first_name, "trial_ends": human_date(trial_ends) }),
            dedupe_key: Some(task.key.clone()),
        },
        now,
    )
    .await?;
    if let Some(flag) = flag {
        let sql = format!(
            "UPDATE trial_tracking SET {} = 1 WHERE user_id = $1",
            flag.column()
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .execute(conn)
            .await?;
    }
    Ok(())
}

async fn welcome_vip(
    conn: &mut AnyConnection,
    task: &ClaimedTask,
    user_id: i64,
    now: Millis,
) -> Result<()> {
    let row: Option<(String, String, String, Option<String>)> =
        sqlx::query_as("SELECT email, first_name, status, vip_tier FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((email, first_name, status, Some(tier))) = row else {
        return Ok(()); // gone, or no longer a VIP
    };
    let Some(tier) = VipTier::parse(&tier).filter(|_| status == "active") else {
        return Ok(());
    };
    outbox::enqueue(
        conn,
        OutgoingMail {
            to: &email,
            user_id: Some(user_id),
            template: "welcome_vip",
            context: json!({ "first_name": first_name, "vip_badge": tier.badge(), "tier": tier.as_str() }),
            dedupe_key: Some(task.key.clone()),
        },
        now,
    )
    .await
    .map(drop)
}
