//! Webhooks: when a job ends, its outcome is POSTed to the `webhook_url` it was submitted with.
//!
//! - Body: `{"type": "job.succeeded"|"job.failed"|"job.cancelled", "delivery_id", "job": <the job
//!   as GET /v1/jobs/{id} shows it>}`.
//! - `X-Whisperd-Delivery`: the delivery id, the same on every attempt (deduplicate on it).
//! - `X-Whisperd-Timestamp`: Unix seconds when this attempt was signed.
//! - `X-Whisperd-Signature`: `v1=` + hex HMAC-SHA256 with `webhook_secret` of
//!   `"{timestamp}.{body}"`; a receiver recomputes it and refuses timestamps older than a few
//!   minutes (replays).
//! - A 2xx answer is delivery. Anything else, or no answer, is retried after 1, 2, 4, 8 and 16 s
//!   (6 attempts), while the job's claim is held, so a replica that dies mid-way leaves the
//!   delivery to the replica that reclaims the job: at least once. Exactly once is impossible
//!   across a crash (the receiver may have processed a request whose answer never came back),
//!   hence the delivery id.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Waits before the 2nd, 3rd, … attempt.
pub const BACKOFF_S: &[u64] = &[1, 2, 4, 8, 16];

/// Outcome of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    Delivered(u16),
    /// Worth trying again: an error status or no answer.
    Retry {
        status: Option<u16>,
        error: String,
    },
    /// Never deliverable (a URL that may not be reached).
    Refused(String),
}

/// `v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(), // HMAC takes keys of any length: unreachable
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The headers of one attempt.
pub fn headers(secret: &[u8], delivery_id: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    vec![
        ("x-whisperd-delivery", delivery_id.to_string()),
        ("x-whisperd-timestamp", ts.to_string()),
        ("x-whisperd-signature", signature(secret, ts, body)),
    ]
}

/// One attempt (blocking).
pub fn attempt(
    url: &str,
    secret: &[u8],
    delivery_id: &str,
    body: &[u8],
    allow_private: bool,
) -> Attempt {
    use crate::net::fetch::{self, FetchError, Limits};
    let limits = Limits {
        allow_private,
        timeout: Duration::from_secs(10),
        max_bytes: 0,
    };
    let url = match fetch::parse(url, allow_private) {
        Ok(u) => u,
        Err(e) => return Attempt::Refused(e.to_string()),
    };
    match fetch::post_json(&url, &headers(secret, delivery_id, body), body, &limits) {
        Ok(code) if (200..300).contains(&code) => Attempt::Delivered(code),
        Ok(code) => Attempt::Retry {
            status: Some(code),
            error: format!("the receiver answered HTTP {code}"),
        },
        Err(e @ FetchError::Blocked { .. }) | Err(e @ FetchError::BadUrl(_)) => {
            Attempt::Refused(e.to_string())
        }
        Err(e) => Attempt::Retry {
            status: None,
            error: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        let sig = signature(b"secret", 1700000000, br#"{"a":1}"#);
        let mut mac = Hmac::<Sha256>::new_from_slice(b"secret").unwrap();
        mac.update(br#"1700000000.{"a":1}"#);
        assert_eq!(
            sig,
            format!("v1={}", hex::encode(mac.finalize().into_bytes()))
        );
        assert_ne!(sig, signature(b"other", 1700000000, br#"{"a":1}"#));
        assert_ne!(sig, signature(b"secret", 1700000001, br#"{"a":1}"#));
        // Known answer (computed with Python's hmac module).
        assert_eq!(
            signature(b"key", 1, b"x"),
            "v1=fc4913c41a7bf793267e2a384f3261c9436ec2cd097bd745e7b0d99113f510ec"
        );
    }

    #[test]
    fn urls_inside_the_network_are_refused_without_a_connection() {
        let a = attempt("http://127.0.0.1:9/hook", b"s", "dlv_1", b"{}", false);
        assert!(matches!(a, Attempt::Refused(_)), "{a:?}");
        let a = attempt("http://169.254.169.254/hook", b"s", "dlv_1", b"{}", false);
        assert!(matches!(a, Attempt::Refused(_)), "{a:?}");
    }
}
