//! Per-client-address token buckets: requests to the authentication routes, and failed
//! verifications of payment webhooks. In memory, per replica: the cross-replica protection of
//! an account is the lockout stored in the database.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug)]
pub struct RateLimiter {
    burst: f64,
    per_second: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refreshed: Instant,
}

/// Above this many tracked addresses, full buckets are dropped (they carry no information).
const PRUNE_ABOVE: usize = 50_000;

impl RateLimiter {
    pub fn new(burst: u32, per_minute: u32) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            per_second: f64::from(per_minute.max(1)) / 60.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `ip`; on refusal, the seconds until one is available.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        self.check_at(ip, Instant::now())
    }

    /// Whether `ip` has a token left, without taking it; on refusal, the seconds until one is.
    /// (For limits that charge only some outcomes, such as failed webhook verifications.)
    pub fn peek(&self, ip: IpAddr) -> Result<(), u64> {
        let now = Instant::now();
        let buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tokens = buckets
            .get(&bucket_key(ip))
            .map_or(self.burst, |b| refill(b, now, self.burst, self.per_second));
        if tokens >= 1.0 {
            Ok(())
        } else {
            let wait = ((1.0 - tokens) / self.per_second).ceil();
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Err(wait.max(1.0) as u64)
        }
    }

    fn check_at(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let key = bucket_key(ip);
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() > PRUNE_ABOVE {
            let (burst, rate) = (self.burst, self.per_second);
            buckets.retain(|_, b| refill(b, now, burst, rate) < burst);
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            refreshed: now,
        });
        let tokens = refill(bucket, now, self.burst, self.per_second);
        if tokens >= 1.0 {
            bucket.tokens = tokens - 1.0;
            bucket.refreshed = now;
            Ok(())
        } else {
            let wait = ((1.0 - tokens) / self.per_second).ceil();
            // Bounded by 60 / per_minute, so the cast cannot overflow.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Err(wait.max(1.0) as u64)
        }
    }
}

fn refill(bucket: &Bucket, now: Instant, burst: f64, per_second: f64) -> f64 {
    let elapsed = now
        .saturating_duration_since(bucket.refreshed)
        .as_secs_f64();
    (bucket.tokens + elapsed * per_second).min(burst)
}

/// One IPv6 client controls a whole /64, so that is the unit limited.
fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn burst_then_refill() {
        let limiter = RateLimiter::new(3, 60);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at(ip, t0).is_ok());
        }
        assert_eq!(limiter.check_at(ip, t0), Err(1));
        // Another address has its own bucket.
        assert!(limiter.check_at("192.0.2.2".parse().unwrap(), t0).is_ok());
        assert!(limiter.check_at(ip, t0 + Duration::from_secs(1)).is_ok());
        assert!(limiter.check_at(ip, t0 + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn ipv6_limited_per_64() {
        let limiter = RateLimiter::new(1, 1);
        let t0 = Instant::now();
        assert!(limiter.check_at("2001:db8::1".parse().unwrap(), t0).is_ok());
        assert!(
            limiter
                .check_at("2001:db8::2".parse().unwrap(), t0)
                .is_err()
        );
        assert!(
            limiter
                .check_at("2001:db8:0:1::1".parse().unwrap(), t0)
                .is_ok()
        );
    }
}
