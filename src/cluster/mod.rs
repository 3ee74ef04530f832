//! What replicas share through Redis (`redis_url`): the second level of the result cache with
//! single flight across replicas (`cache`), and the async job queue (`crate::jobs`).
//!
//! [`RedisLink`] is the one connection every part uses. Redis being down or slow must never fail
//! a request, so every call is bounded by `redis_timeout_ms`, a failure answers `None` (callers
//! then behave as a lone replica would), the first failure of an incident is logged once, every
//! failure is counted, and reconnection waits a backoff that doubles up to 30 s.

pub mod cache;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use redis::aio::MultiplexedConnection;

/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// Redis and shared-cache metrics, registered into the server's registry.
#[derive(Clone)]
pub struct ClusterMetrics {
    pub redis_up: IntGauge,
    pub redis_errors: IntCounterVec,
    /// Second-level cache lookups by result: hit, miss, error (Redis unavailable).
    pub shared_cache: IntCounterVec,
    /// Requests that waited for another replica running the same audio and options.
    pub shared_waits: IntCounterVec,
}

impl ClusterMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            redis_up: IntGauge::new(
                "whisperd_redis_up",
                "1 while the last Redis call succeeded, 0 after a failure (requests then run as on a lone replica)",
            )?,
            redis_errors: IntCounterVec::new(
                Opts::new(
                    "whisperd_redis_errors_total",
                    "Redis calls that failed or timed out, by operation",
                ),
                &["op"],
            )?,
            shared_cache: IntCounterVec::new(
                Opts::new(
                    "whisperd_cache_shared_lookups_total",
                    "Lookups in the Redis result cache after a local miss, by result",
                ),
                &["result"],
            )?,
            shared_waits: IntCounterVec::new(
                Opts::new(
                    "whisperd_cache_shared_waits_total",
                    "Requests that found another replica running the same audio and options, by how the wait ended (result, takeover)",
                ),
                &["outcome"],
            )?,
        };
        registry.register(Box::new(m.redis_up.clone()))?;
        registry.register(Box::new(m.redis_errors.clone()))?;
        registry.register(Box::new(m.shared_cache.clone()))?;
        registry.register(Box::new(m.shared_waits.clone()))?;
        Ok(m)
    }
}

struct LinkState {
    conn: Option<MultiplexedConnection>,
    retry_at: Instant,
    backoff: Duration,
    /// Inside an incident: the failure was logged, the recovery will be.
    incident: bool,
}

/// The connection to Redis, with timeouts, backoff and incident logging.
pub struct RedisLink {
    client: redis::Client,
    /// Connections are made (and their I/O driven) on this runtime, whichever thread asks. It
    /// lives as long as the process (dropping a runtime inside async code would panic).
    rt: &'static tokio::runtime::Runtime,
    state: Mutex<LinkState>,
    timeout: Duration,
    metrics: ClusterMetrics,
    /// This process, as other replicas see it (lock holder, job consumer).
    pub replica: String,
}

impl RedisLink {
    pub fn new(url: &str, timeout: Duration, metrics: ClusterMetrics) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis_url: {e}"))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("redis-io")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the Redis I/O thread: {e}"))?;
        let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(rt));
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "whisperd".into());
        Ok(Self {
            client,
            rt,
            state: Mutex::new(LinkState {
                conn: None,
                retry_at: Instant::now(),
                backoff: FIRST_BACKOFF,
                incident: false,
            }),
            timeout,
            metrics,
            replica: format!(
                "{host}-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ),
        })
    }

    pub fn metrics(&self) -> &ClusterMetrics {
        &self.metrics
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection, or `None` while Redis is unreachable (within the backoff after a failure).
    async fn conn(&self) -> Option<MultiplexedConnection> {
        {
            let s = self.lock();
            if let Some(c) = &s.conn {
                return Some(c.clone());
            }
            if Instant::now() < s.retry_at {
                return None;
            }
        }
        let client = self.client.clone();
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let made = self.rt.spawn(async move {
            client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await
        });
        match tokio::time::timeout(self.timeout * 2, made).await {
            Ok(Ok(Ok(c))) => {
                self.succeeded();
                self.lock().conn = Some(c.clone());
                Some(c)
            }
            Ok(Ok(Err(e))) => {
                self.failed("connect", &e.to_string());
                None
            }
            Ok(Err(e)) => {
                self.failed("connect", &e.to_string());
                None
            }
            Err(_) => {
                self.failed("connect", "timed out");
                None
            }
        }
    }

    fn succeeded(&self) {
        let mut s = self.lock();
        if s.incident {
            s.incident = false;
            tracing::info!("redis reachable again: shared cache and jobs resume");
        }
        s.backoff = FIRST_BACKOFF;
        self.metrics.redis_up.set(1);
    }

    fn failed(&self, op: &str, error: &str) {
        self.metrics.redis_errors.with_label_values(&[op]).inc();
        self.metrics.redis_up.set(0);
        let mut s = self.lock();
        s.conn = None;
        s.retry_at = Instant::now() + s.backoff;
        let backoff = s.backoff;
        s.backoff = (s.backoff * 2).min(MAX_BACKOFF);
        if !s.incident {
            s.incident = true;
            tracing::warn!(
                op,
                error,
                retry_in_ms = backoff.as_millis() as u64,
                "redis unavailable: serving from this replica alone (no shared cache, no cross-replica single flight, jobs wait) until it is back"
            );
        }
    }

    /// Run `f` on the Redis runtime (lock refreshers, writes nobody waits for).
    pub fn spawn<F>(&self, f: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.rt.spawn(f)
    }

    /// Run one command; `None` when Redis is unavailable or answers with an error.
    pub async fn query<T: redis::FromRedisValue>(&self, op: &str, cmd: &redis::Cmd) -> Option<T> {
        self.query_within(op, cmd, self.timeout).await
    }

    /// [`query`](Self::query) with its own time limit (commands that move large values).
    pub async fn query_within<T: redis::FromRedisValue>(
        &self,
        op: &str,
        cmd: &redis::Cmd,
        limit: Duration,
    ) -> Option<T> {
        let mut c = self.conn().await?;
        let r = tokio::time::timeout(limit, cmd.query_async::<T>(&mut c)).await;
        self.judge(op, r)
    }

    /// Run a pipeline (atomic when built with `.atomic()`) carrying about `bytes` of values:
    /// its time limit grows with them (10 MB/s on top of `redis_timeout_ms`).
    pub async fn pipe<T: redis::FromRedisValue>(
        &self,
        op: &str,
        p: &redis::Pipeline,
        bytes: usize,
    ) -> Option<T> {
        let mut c = self.conn().await?;
        let limit = self.timeout + Duration::from_millis((bytes / 10_000) as u64);
        let r = tokio::time::timeout(limit, p.query_async::<T>(&mut c)).await;
        self.judge(op, r)
    }

    /// The outcome of one call: an outage (I/O, timeout) trips the backoff; an error answer
    /// (out of memory, a bug) is counted and logged but keeps the connection.
    fn judge<T>(
        &self,
        op: &str,
        r: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Option<T> {
        match r {
            Ok(Ok(v)) => {
                self.succeeded();
                Some(v)
            }
            Ok(Err(e))
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_unrecoverable_error() =>
            {
                self.failed(op, &e.to_string());
                None
            }
            Ok(Err(e)) => {
                self.metrics.redis_errors.with_label_values(&[op]).inc();
                tracing::warn!(op, error = %e, "redis command failed");
                None
            }
            Err(_) => {
                self.failed(op, "timed out");
                None
            }
        }
    }

    /// Run a Lua script (EVAL) with its keys and arguments.
    pub async fn eval<T: redis::FromRedisValue>(
        &self,
        op: &str,
        script: &str,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Option<T> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script).arg(keys.len());
        for k in keys {
            cmd.arg(*k);
        }
        for a in args {
            cmd.arg(*a);
        }
        self.query(op, &cmd).await
    }
}
