//! Optional API keys (constant-time comparison; `api_keys_file` re-read when it changes or on
//! SIGHUP), a per-key (or per-IP) rate limit with bounded memory, and a per-key cap on requests in
//! progress.

use std::collections::HashMap;
use std::io::Read;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// Largest keys file read (a key file is a few lines; a bigger one is a mistake, refused).
const MAX_KEYS_FILE_BYTES: u64 = 1 << 20;

/// The keys a request may carry: `api_keys` from the config (fixed for the process's life) plus
/// the lines of `api_keys_file`, which [`ApiKeys::reload`] re-reads. Authentication is on when
/// either is configured, even while the file lists no key (then every request is refused until
/// one is added), so emptying the file can never open the service.
pub struct ApiKeys {
    fixed: Vec<String>,
    file: Option<PathBuf>,
    /// The keys in force and the file text they came from (`None` before the first read).
    current: RwLock<(Arc<Vec<String>>, Option<String>)>,
}

/// Why the keys file could not be (re)read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the API keys file {path}: {msg}")]
pub struct KeysFileError {
    pub path: String,
    pub msg: String,
}

/// The keys in a keys file: one per line, blank lines and `#` comments skipped.
pub fn parse_key_lines(text: &str) -> impl Iterator<Item = String> + '_ {
    // Editors on some systems start a UTF-8 file with a byte-order mark; it is not part of a key.
    text.trim_start_matches('\u{feff}')
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
}

impl ApiKeys {
    /// Keys from the config; the file (when set) must be readable now.
    pub fn load(fixed: &[String], file: &str) -> Result<Self, KeysFileError> {
        let fixed: Vec<String> = fixed
            .iter()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect();
        let file = (!file.is_empty()).then(|| PathBuf::from(file));
        let keys = Self {
            current: RwLock::new((Arc::new(fixed.clone()), None)),
            fixed,
            file,
        };
        keys.reload()?;
        Ok(keys)
    }

    /// Whether requests need a key.
    pub fn enabled(&self) -> bool {
        !self.fixed.is_empty() || self.file.is_some()
    }

    /// The keys in force now.
    pub fn snapshot(&self) -> Arc<Vec<String>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// Re-read the keys file. `Ok(Some(n))`: its text changed and `n` keys are now in force;
    /// `Ok(None)`: unchanged (or no file). On an error the keys in force stay as they were.
    pub fn reload(&self) -> Result<Option<usize>, KeysFileError> {
        let Some(path) = &self.file else {
            return Ok(None);
        };
        let err = |msg: String| KeysFileError {
            path: path.display().to_string(),
            msg,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_KEYS_FILE_BYTES + 1).read_to_string(&mut text))
            .map_err(|e| err(e.to_string()))?;
        if text.len() as u64 > MAX_KEYS_FILE_BYTES {
            return Err(err(format!("larger than {MAX_KEYS_FILE_BYTES} bytes")));
        }
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if current.1.as_deref() == Some(text.as_str()) {
            return Ok(None);
        }
        let mut keys = self.fixed.clone();
        for k in parse_key_lines(&text) {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        let n = keys.len();
        *current = (Arc::new(keys), Some(text));
        Ok(Some(n))
    }
}

/// Compare without an early exit, so response time does not reveal how much of a key matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// Whether `header` (an `Authorization` value) carries one of `keys`. Checks every key. The
/// scheme name is case-insensitive (RFC 7235): `Bearer`, `bearer` and `BEARER` are the same.
pub fn authorized(keys: &[String], header: Option<&str>) -> Option<String> {
    let (scheme, token) = header?.trim_start().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    let mut found = None;
    for k in keys {
        if constant_time_eq(k.as_bytes(), token.as_bytes()) {
            found = Some(k.clone());
        }
    }
    found
}

/// The key in a `Sec-WebSocket-Protocol` offer (`realtime, openai-insecure-api-key.<key>`), if it
/// is one of `keys` (checked like a bearer token).
pub fn authorized_subprotocol(keys: &[String], header: Option<&str>) -> Option<String> {
    let key = header?
        .split(',')
        .find_map(|p| p.trim().strip_prefix("openai-insecure-api-key."))?;
    authorized(keys, Some(&format!("Bearer {key}")))
}

/// Most clients whose buckets are remembered. Past it the client seen longest ago is forgotten
/// (it starts again with a full bucket), so a flood of new addresses cannot grow memory.
const MAX_TRACKED_CLIENTS: usize = 50_000;

/// Token bucket per client: `per_minute` requests, refilled continuously.
pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<lru::LruCache<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self::with_capacity(per_minute, MAX_TRACKED_CLIENTS)
    }

    fn with_capacity(per_minute: u32, clients: usize) -> Self {
        Self {
            per_minute,
            buckets: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(clients).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
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
        let (tokens, last) = b.get_or_insert_mut(client.to_string(), || (cap, now));
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

/// Requests in progress per client; `acquire` fails past `max` (0 = unlimited). Entries exist only
/// while a client has requests in progress, so memory is bounded by the requests in flight.
pub struct InFlightLimiter {
    max: usize,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

/// Held while a request is in progress; releases its slot when dropped.
pub struct InFlightPermit {
    key: String,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

impl InFlightLimiter {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            counts: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn acquire(&self, client: &str) -> Option<InFlightPermit> {
        if self.max == 0 {
            // Unlimited: a permit that counts nothing (no entry has the empty key).
            return Some(InFlightPermit {
                key: String::new(),
                counts: self.counts.clone(),
            });
        }
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = c.entry(client.to_string()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(InFlightPermit {
            key: client.to_string(),
            counts: self.counts.clone(),
        })
    }
}

impl Drop for InFlightPermit {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = c.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_file_is_reread() {
        let dir = std::env::temp_dir().join(format!("whisperd-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys");
        std::fs::write(&path, "\u{feff}# team a\nalpha\n\n  beta  \nalpha\n").unwrap();
        let keys = ApiKeys::load(&["fixed".into(), " ".into()], path.to_str().unwrap()).unwrap();
        assert!(keys.enabled());
        assert_eq!(*keys.snapshot(), ["fixed", "alpha", "beta"]);
        assert_eq!(
            keys.reload().unwrap(),
            None,
            "unchanged text is not a reload"
        );
        std::fs::write(&path, "beta\ngamma\n").unwrap();
        assert_eq!(keys.reload().unwrap(), Some(3));
        assert_eq!(*keys.snapshot(), ["fixed", "beta", "gamma"]);
        // An unreadable file keeps the keys in force.
        std::fs::remove_file(&path).unwrap();
        assert!(keys.reload().is_err());
        assert_eq!(keys.snapshot().len(), 3);
        // An emptied file leaves authentication on, with only the fixed keys.
        std::fs::write(&path, "").unwrap();
        assert_eq!(keys.reload().unwrap(), Some(1));
        assert!(keys.enabled());
        let only_file = ApiKeys::load(&[], path.to_str().unwrap()).unwrap();
        assert!(only_file.enabled() && only_file.snapshot().is_empty());
        assert!(authorized(&only_file.snapshot(), Some("Bearer ")).is_none());
        // Oversized files are refused.
        std::fs::write(&path, vec![b'k'; MAX_KEYS_FILE_BYTES as usize + 1]).unwrap();
        assert!(keys.reload().is_err());
        assert!(!ApiKeys::load(&[], "").unwrap().enabled());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn keys_and_limits() {
        let keys = vec!["secret-1".to_string(), "other".to_string()];
        assert_eq!(
            authorized(&keys, Some("Bearer secret-1")).as_deref(),
            Some("secret-1")
        );
        assert!(authorized(&keys, Some("Bearer secret-")).is_none());
        assert!(authorized(&keys, Some("secret-1")).is_none());
        for scheme in ["bearer", "BEARER", "BeArEr"] {
            assert_eq!(
                authorized(&keys, Some(&format!("{scheme} secret-1"))).as_deref(),
                Some("secret-1")
            );
        }
        assert!(authorized(&keys, Some("Basic secret-1")).is_none());
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

    #[test]
    fn limiter_memory_is_bounded() {
        let rl = RateLimiter::with_capacity(60, 1000);
        for i in 0..5000 {
            let _ = rl.check(&format!("10.0.{}.{}", i / 256, i % 256));
        }
        assert_eq!(rl.tracked(), 1000);
    }

    #[test]
    fn in_flight_cap_per_client() {
        let l = InFlightLimiter::new(2);
        let a1 = l.acquire("a").unwrap();
        let _a2 = l.acquire("a").unwrap();
        assert!(l.acquire("a").is_none());
        assert!(l.acquire("b").is_some());
        drop(a1);
        assert!(l.acquire("a").is_some());
        // Slots of finished requests are forgotten.
        assert_eq!(l.counts.lock().unwrap().len(), 1);
        let unlimited = InFlightLimiter::new(0);
        let held: Vec<_> = (0..100).map(|_| unlimited.acquire("a")).collect();
        assert!(held.iter().all(Option::is_some));
    }
}
