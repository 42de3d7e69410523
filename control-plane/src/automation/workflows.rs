//! The seed's workflows: named lists of steps with delays, scheduled as tasks when triggered.

use serde_json::json;
use sqlx::AnyConnection;

use crate::clock::{DAY, HOUR, Millis};
use crate::error::Result;

use super::tasks::{self, DEFAULT_MAX_ATTEMPTS, NewTask};

#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub name: &'static str,
    pub delay: Millis,
}

const fn step(name: &'static str, delay: Millis) -> Step {
    Step { name, delay }
}

pub const TRIAL_SIGNUP: &str = "trial_signup";
pub const VIP_SIGNUP: &str = "vip_signup";
pub const MAINTENANCE: &str = "maintenance";
pub const EXPIRE_TRIALS: &str = "expire_trials";
/// A step that does nothing: a liveness probe for the workers.
pub const NOOP: &str = "noop";

/// The seed's `trial_signup`, step for step.
pub const TRIAL_SIGNUP_STEPS: &[Step] = &[
    step("welcome_trial", 0),
    step("create_default_identities", 0),
    step("generate_scanner_token", 0),
    step("trial_getting_started", HOUR),
    step("trial_day1_tips", DAY),
    step("trial_ending_soon", 5 * DAY),
    step("trial_last_day", 6 * DAY),
    step("check_trial_conversion", 7 * DAY),
];

/// After a VIP's email is verified.
pub const VIP_SIGNUP_STEPS: &[Step] = &[
    step("welcome_vip", 0),
    step("create_identities", 0),
    step("generate_scanner_token", 0),
];

/// Schedules every step of a user's workflow; a second trigger schedules nothing.
pub async fn trigger(
    conn: &mut AnyConnection,
    workflow: &'static str,
    steps: &[Step],
    user_id: i64,
    now: Millis,
) -> Result<()> {
    for s in steps {
        tasks::schedule(
            &mut *conn,
            NewTask {
                key: format!("{workflow}:{user_id}:{}", s.name),
                workflow,
                step: s.name,
                payload: json!({ "user_id": user_id }),
                user_id: Some(user_id),
                run_at: now + s.delay,
                max_attempts: DEFAULT_MAX_ATTEMPTS,
            },
            now,
        )
        .await?;
    }
    Ok(())
}

/// The trial drip for a trial of `length`: the seed's steps, with the last three placed
/// relative to the trial's end (2 days before, 1 day before, at the end), which for the
/// seed's 7 days is exactly +5 d, +6 d and +7 d.
pub async fn trigger_trial_signup(
    conn: &mut AnyConnection,
    user_id: i64,
    now: Millis,
    length: Millis,
) -> Result<()> {
    let steps: Vec<Step> = TRIAL_SIGNUP_STEPS
        .iter()
        .map(|s| {
            let delay = match s.name {
                "trial_ending_soon" => (length - 2 * DAY).max(0),
                "trial_last_day" => (length - DAY).max(0),
                "check_trial_conversion" => length,
                _ => s.delay,
            };
            step(s.name, delay)
        })
        .collect();
    trigger(conn, TRIAL_SIGNUP, &steps, user_id, now).await
}

/// Starts the VIP welcome and stops the trial drip (its steps would skip anyway).
pub async fn trigger_vip_signup(conn: &mut AnyConnection, user_id: i64, now: Millis) -> Result<()> {
    tasks::cancel_pending(&mut *conn, user_id, TRIAL_SIGNUP, now).await?;
    trigger(conn, VIP_SIGNUP, VIP_SIGNUP_STEPS, user_id, now).await
}

/// The key of the trial-expiry sweep for the period containing `now`: however many replicas
/// enqueue it, one task exists per period.
pub fn sweep_task(now: Millis, period: Millis) -> NewTask {
    let period_start = now - now.rem_euclid(period);
    NewTask {
        key: format!("{MAINTENANCE}:{EXPIRE_TRIALS}:{period_start}"),
        workflow: MAINTENANCE,
        step: EXPIRE_TRIALS,
        payload: json!({ "period_start": period_start }),
        user_id: None,
        run_at: period_start,
        max_attempts: 3,
    }
}

/// A no-op task, due now, under a fresh key.
pub fn noop_task(now: Millis) -> NewTask {
    NewTask {
        key: format!("{MAINTENANCE}:{NOOP}:{}", uuid::Uuid::new_v4()),
        workflow: MAINTENANCE,
        step: NOOP,
        payload: json!({}),
        user_id: None,
        run_at: now,
        max_attempts: 1,
    }
}
