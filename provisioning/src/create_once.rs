//! Creating an instance at most once per order.
//!
//! Providers have no idempotency keys, and a create can succeed while its answer is lost, so a
//! blind retry can buy (and bill) a second server. The rule here: the name is unique to the
//! order, and before every create attempt (the first too, since a crashed control plane may
//! have sent one) the name is looked up; a create is only sent after a lookup that answered
//! "no such instance". A failed lookup is retried, never skipped. After a create that may have
//! happened (no answer, a 5xx), "no such instance" is believed only once it has held for the
//! policy's `settle` time: a slow create can land after the lookup that followed it.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::provider::{CreateInstance, Instance, Provider};

/// Attempts and pauses between them (exponential, honouring a provider's `Retry-After`).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_pause: Duration,
    pub max_pause: Duration,
    /// After a create that may have happened, how long lookups must keep finding nothing
    /// before another create is sent.
    pub settle: Duration,
}

impl Default for RetryPolicy {
    /// Contabo publishes no limits: from 5 s up to 60 s, for about 6 minutes in all.
    fn default() -> Self {
        Self {
            attempts: 8,
            first_pause: Duration::from_secs(5),
            max_pause: Duration::from_secs(60),
            settle: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The pause before attempt `attempt + 1` (0-based), at least what the provider asked.
    pub fn pause(&self, attempt: u32, error: &Error) -> Duration {
        let exponential = self
            .first_pause
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_pause);
        error.retry_after().map_or(exponential, |asked| {
            asked.min(self.max_pause).max(exponential)
        })
    }
}

/// The order's instance: the one already carrying `request.display_name`, or a new one.
pub async fn create_once(
    provider: &dyn Provider,
    request: &CreateInstance,
    policy: RetryPolicy,
) -> Result<Instance> {
    create_once_resuming(provider, request, policy, None).await
}

/// As [`create_once`], for a caller taking over from one that stopped: `last_create_age` is
/// how long ago that caller last sent a create for this name (it may still land), so "no such
/// instance" is believed only once `settle` has passed since then.
pub async fn create_once_resuming(
    provider: &dyn Provider,
    request: &CreateInstance,
    policy: RetryPolicy,
    last_create_age: Option<Duration>,
) -> Result<Instance> {
    let mut attempt = 0;
    let mut unsure_since: Option<Instant> = last_create_age
        .filter(|age| *age < policy.settle)
        .map(|age| Instant::now().checked_sub(age).unwrap_or_else(Instant::now));
    loop {
        let error = match provider.find_by_name(&request.display_name).await {
            Ok(Some(existing)) => return Ok(existing),
            Ok(None) if unsure_since.is_some_and(|t| t.elapsed() < policy.settle) => {
                // The last create may still land; look again rather than create again.
                tokio::time::sleep(policy.first_pause).await;
                continue;
            }
            Ok(None) => match provider.create(request).await {
                Ok(created) => return Ok(created),
                Err(e) => {
                    if e.may_have_happened() {
                        unsure_since = Some(Instant::now());
                    }
                    e
                }
            },
            Err(e) => e,
        };
        if !(error.is_transient() || error.may_have_happened()) {
            return Err(error);
        }
        attempt += 1;
        if attempt >= policy.attempts {
            return Err(Error::GaveUp {
                attempts: attempt,
                last: Box::new(error),
            });
        }
        let pause = policy.pause(attempt - 1, &error);
        tracing::warn!(name = %request.display_name, %error, ?pause, "create not confirmed; looking the name up again");
        tokio::time::sleep(pause).await;
    }
}
