//! Optional API keys (constant-time comparison) and a per-key (or per-IP) rate limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Compare without an early exit, so response time does not reveal how much of a key matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// Whether `header` (an `Authorization` value) carries one of `keys`. Checks every key.
pub fn authorized(keys: &[String], header: Option<&str>) -> Option<String> {
    let token = header?.strip_prefix("Bearer ")?.trim();
    let mut found = None;
    for k in keys {
        if constant_time_eq(k.as_bytes(), token.as_bytes()) {
            found = Some(k.clone());
        }
    }
    found
}

/// Token bucket per client: `per_minute` requests, refilled continuously.
pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `Ok(())` to proceed, or `Err(seconds to wait)`.
    pub fn check(&self, client: &str) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let cap = self.per_minute as f64;
        let rate = cap / 60.0;
        let now = Instant::now();
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() > 100_000 {
            b.retain(|_, (_, t)| now.duration_since(*t).as_secs() < 120); // bound memory
        }
        let (tokens, last) = b.entry(client.to_string()).or_insert((cap, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(cap);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / rate).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_limits() {
        let keys = vec!["secret-1".to_string(), "other".to_string()];
        assert_eq!(
            authorized(&keys, Some("Bearer secret-1")).as_deref(),
            Some("secret-1")
        );
        assert!(authorized(&keys, Some("Bearer secret-")).is_none());
        assert!(authorized(&keys, Some("secret-1")).is_none());
        assert!(authorized(&keys, None).is_none());
        assert!(
            constant_time_eq(b"abc", b"abc")
                && !constant_time_eq(b"abc", b"abd")
                && !constant_time_eq(b"", b"a")
        );
        let rl = RateLimiter::new(2);
        assert!(rl.check("a").is_ok() && rl.check("a").is_ok());
        assert!(rl.check("a").unwrap_err() >= 1);
        assert!(rl.check("b").is_ok());
    }
}
