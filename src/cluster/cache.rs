//! The second level of the result cache, in Redis, and single flight across replicas.
//!
//! Keys: the local cache key (audio hash, model name, every option) hashed together with what
//! else changes a result between replicas — a hash of the weights' content, the precision, the
//! numerics tier the kernels run at, and the whisperd version — so a rolling upgrade or q8 on AMX
//! beside q8 on AVX2 never serves one replica's output as another's. Values: gzip'd JSON
//! (`crate::cache::encode_transcript`) with a TTL (`cache_ttl_s`).
//!
//! Single flight: a replica about to run inference takes `whisperd:flight:<key>` (SET NX with an
//! expiry, refreshed while it runs); a replica that finds it taken polls for the result, and takes
//! over if the lock disappears without one (its holder died or gave up).

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::RedisLink;
use crate::transcript::Transcript;

/// How long a flight lock lives without a refresh: a holder that died frees it within this.
const LOCK_TTL: Duration = Duration::from_secs(10);
const LOCK_REFRESH: Duration = Duration::from_secs(3);
/// How often a waiting replica looks for the result.
const POLL: Duration = Duration::from_millis(100);

const REFRESH_LUA: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
const UNLOCK_LUA: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

pub enum Lookup {
    Hit(Box<Transcript>),
    Miss,
    Unavailable,
}

/// The result of asking for the flight lock.
pub enum Claim {
    /// This replica runs the inference; hand the lock back to [`SharedCache::release`].
    Mine(FlightLock),
    /// Another replica is running it.
    Theirs,
    /// Redis is unavailable: run it here.
    Unavailable,
}

/// How waiting for another replica ended.
pub enum Waited {
    Result(Box<Transcript>),
    /// The lock is gone and no result came: try to take it.
    Vanished,
    /// Redis went away, the deadline passed, or nobody wants the result any more.
    GaveUp,
}

/// A held flight lock; its refresher stops when it is released or dropped.
pub struct FlightLock {
    key: String,
    token: String,
    refresher: tokio::task::JoinHandle<()>,
}

impl Drop for FlightLock {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

pub struct SharedCache {
    link: Arc<RedisLink>,
    ttl: Duration,
}

impl SharedCache {
    pub fn new(link: Arc<RedisLink>, ttl: Duration) -> Arc<Self> {
        Arc::new(Self { link, ttl })
    }

    pub fn link(&self) -> &Arc<RedisLink> {
        &self.link
    }

    /// Keys name the model with its [`model_identity`] (the server puts it there), so replicas
    /// share results only when their weights, precision, tier and version agree.
    fn hashed(&self, key: &str) -> String {
        hex::encode(Sha256::digest(key))
    }

    fn result_key(&self, key: &str) -> String {
        format!("whisperd:result:{}", self.hashed(key))
    }

    fn lock_key(&self, key: &str) -> String {
        format!("whisperd:flight:{}", self.hashed(key))
    }

    pub async fn get(&self, key: &str) -> Lookup {
        let m = self.link.metrics();
        let got: Option<Option<Vec<u8>>> = self
            .link
            .query("cache_get", redis::cmd("GET").arg(self.result_key(key)))
            .await;
        match got {
            None => {
                m.shared_cache.with_label_values(&["error"]).inc();
                Lookup::Unavailable
            }
            Some(None) => {
                m.shared_cache.with_label_values(&["miss"]).inc();
                Lookup::Miss
            }
            Some(Some(bytes)) => match crate::cache::decode_transcript(&bytes) {
                Some(t) => {
                    m.shared_cache.with_label_values(&["hit"]).inc();
                    Lookup::Hit(Box::new(t))
                }
                None => {
                    tracing::warn!("unreadable entry in the Redis result cache: ignored");
                    m.shared_cache.with_label_values(&["miss"]).inc();
                    Lookup::Miss
                }
            },
        }
    }

    pub async fn put(&self, key: &str, t: &Transcript) {
        let bytes = crate::cache::encode_transcript(t);
        let _: Option<()> = self
            .link
            .query(
                "cache_put",
                redis::cmd("SET")
                    .arg(self.result_key(key))
                    .arg(bytes)
                    .arg("EX")
                    .arg(self.ttl.as_secs().max(1)),
            )
            .await;
    }

    pub async fn claim(&self, key: &str) -> Claim {
        let lock_key = self.lock_key(key);
        let token = format!("{}:{:016x}", self.link.replica, rand::random::<u64>());
        let set: Option<Option<String>> = self
            .link
            .query(
                "flight_lock",
                redis::cmd("SET")
                    .arg(&lock_key)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(LOCK_TTL.as_millis() as u64),
            )
            .await;
        match set {
            None => Claim::Unavailable,
            Some(None) => Claim::Theirs,
            Some(Some(_)) => {
                let link = self.link.clone();
                let (k, t) = (lock_key.clone(), token.clone());
                let refresher = self.link.spawn(async move {
                    loop {
                        tokio::time::sleep(LOCK_REFRESH).await;
                        let ttl = LOCK_TTL.as_millis().to_string();
                        let kept: Option<i64> = link
                            .eval("flight_refresh", REFRESH_LUA, &[&k], &[t.as_bytes(), ttl.as_bytes()])
                            .await;
                        if kept == Some(0) {
                            tracing::warn!("lost the cross-replica flight lock while running; another replica may run the same audio");
                            return;
                        }
                    }
                });
                Claim::Mine(FlightLock {
                    key: lock_key,
                    token,
                    refresher,
                })
            }
        }
    }

    /// Give the lock back (after the result, if any, is stored).
    pub async fn release(&self, lock: FlightLock) {
        lock.refresher.abort();
        let _: Option<i64> = self
            .link
            .eval(
                "flight_unlock",
                UNLOCK_LUA,
                &[&lock.key],
                &[lock.token.as_bytes()],
            )
            .await;
    }

    /// Wait for another replica's result until `deadline`, while `wanted()` says someone still
    /// wants it.
    pub async fn wait(&self, key: &str, deadline: Instant, wanted: impl Fn() -> bool) -> Waited {
        let m = self.link.metrics();
        let (result_key, lock_key) = (self.result_key(key), self.lock_key(key));
        while Instant::now() < deadline && wanted() {
            tokio::time::sleep(POLL).await;
            let mut pipe = redis::cmd("MGET");
            pipe.arg(&result_key).arg(&lock_key);
            let got: Option<(Option<Vec<u8>>, Option<String>)> =
                self.link.query("flight_wait", &pipe).await;
            match got {
                None => return Waited::GaveUp,
                Some((Some(bytes), _)) => {
                    return match crate::cache::decode_transcript(&bytes) {
                        Some(t) => {
                            m.shared_waits.with_label_values(&["result"]).inc();
                            Waited::Result(Box::new(t))
                        }
                        None => Waited::GaveUp, // unreadable (another version?): run it here
                    };
                }
                Some((None, None)) => {
                    m.shared_waits.with_label_values(&["takeover"]).inc();
                    return Waited::Vanished;
                }
                Some((None, Some(_))) => {}
            }
        }
        Waited::GaveUp
    }
}

/// What, beside the request, decides a transcript: the weights' and VAD model's content, the
/// precision, the kernels' numerics tier and the whisperd version.
pub fn model_identity(files: &[&Path], precision: &str) -> std::io::Result<String> {
    let mut h = Sha256::new();
    for f in files {
        let mut paths: Vec<std::path::PathBuf> = if f.is_dir() {
            std::fs::read_dir(f)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        } else {
            vec![f.to_path_buf()]
        };
        paths.sort();
        for p in paths {
            h.update(
                p.file_name()
                    .map(|n| n.as_encoded_bytes())
                    .unwrap_or_default(),
            );
            let mut file = std::fs::File::open(&p)?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
        }
    }
    let weights = hex::encode(h.finalize());
    Ok(format!(
        "weights={}|precision={precision}|tier={}|whisperd={}",
        &weights[..16],
        whisperd_kernels::isa::Tier::best().name(),
        env!("CARGO_PKG_VERSION")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_follows_content_not_names() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("model.bin"), b"weights").unwrap();
        std::fs::write(b.path().join("model.bin"), b"weights").unwrap();
        let id = |p: &Path, prec| model_identity(&[p], prec).unwrap();
        assert_eq!(id(a.path(), "f32"), id(b.path(), "f32"));
        assert_ne!(id(a.path(), "f32"), id(a.path(), "q8"));
        std::fs::write(b.path().join("model.bin"), b"weightz").unwrap();
        assert_ne!(id(a.path(), "f32"), id(b.path(), "f32"));
        assert!(id(a.path(), "f32").contains(env!("CARGO_PKG_VERSION")));
    }
}
