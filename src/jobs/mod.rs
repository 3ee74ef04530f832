//! Async jobs: a transcription submitted now and fetched later (`/v1/jobs`), so a long file never
//! has to hold one HTTP connection open for minutes.
//!
//! A job lives in a [`Store`]: with `redis_url`, a Redis Stream with a consumer group, so any
//! replica takes the next job and a job whose replica died is reclaimed by another after
//! `job_visibility_timeout_s` (`redis_queue`); without it, an SQLite database (`jobs_db`) that
//! survives a restart or a SIGKILL of the one replica (`sqlite`). Either way a job is *claimed*,
//! run (or, when it is already finished, only its webhook delivered), and *acknowledged* last, so
//! a crash anywhere before the acknowledgement means the job is taken up again: results and
//! webhooks are at least once. The server side (routes, runners) is `crate::server::jobs`.

pub mod redis_queue;
pub mod sqlite;
pub mod webhook;

use std::collections::BTreeMap;

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use serde::{Deserialize, Serialize};

/// A job that has stopped its replica this many times fails instead of running again (a poison
/// input must not take replica after replica down).
pub const MAX_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Status::Queued,
            "running" => Status::Running,
            "succeeded" => Status::Succeeded,
            "failed" => Status::Failed,
            "cancelled" => Status::Cancelled,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }
}

/// What the client asked for, fixed at submission. The options stay as the form fields they came
/// in (checked at submission, parsed again when the job runs: one parser for both).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    pub fields: BTreeMap<String, String>,
    /// Audio from this URL instead of an upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
}

/// A failed job's error, as the API shows errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobError {
    pub status: u16,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub message: String,
}

/// Where a job's webhook stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookState {
    pub url: String,
    /// The same on every attempt: receivers deduplicate on it.
    pub delivery_id: String,
    /// pending, delivered or failed.
    pub status: String,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status_code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<f64>,
}

impl WebhookState {
    pub fn new(url: String) -> Self {
        Self {
            url,
            delivery_id: format!("dlv_{:032x}", rand::random::<u128>()),
            status: "pending".into(),
            attempts: 0,
            last_status_code: None,
            last_error: None,
            delivered_at: None,
        }
    }

    pub fn is_pending(&self) -> bool {
        self.status == "pending"
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: String,
    /// `key:<sha256>` of the API key that created it; empty with authentication off (the id,
    /// 128 random bits, is then the capability).
    pub owner: String,
    pub status: Status,
    pub created_at: f64,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
    pub attempts: u32,
    /// The replica that ran it last.
    pub worker: Option<String>,
    pub request: JobRequest,
    /// The transcript (`crate::cache::encode_transcript`) once succeeded.
    pub result: Option<Vec<u8>>,
    pub error: Option<JobError>,
    pub webhook: Option<WebhookState>,
}

impl Job {
    pub fn new(owner: String, request: JobRequest) -> Self {
        Self {
            id: new_id(),
            owner,
            status: Status::Queued,
            created_at: now(),
            started_at: None,
            finished_at: None,
            attempts: 0,
            worker: None,
            webhook: request.webhook_url.clone().map(WebhookState::new),
            request,
            result: None,
            error: None,
        }
    }

    /// The job as the API shows it; `result` is the rendered transcript, when there is one.
    pub fn view(&self, result: Option<serde_json::Value>) -> JobView<'_> {
        JobView {
            id: &self.id,
            object: "transcription.job",
            status: self.status,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            attempts: self.attempts,
            url: self.request.url.as_deref(),
            result,
            error: self.error.as_ref(),
            webhook: self.webhook.as_ref(),
        }
    }
}

/// A job as `GET /v1/jobs/{id}` (and webhooks) show it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobView<'a> {
    /// `job_` and 128 random bits in hex.
    pub id: &'a str,
    /// `transcription.job`
    pub object: &'static str,
    pub status: Status,
    /// Unix seconds.
    pub created_at: f64,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
    /// Runs started (more than 1 when a replica stopped mid-run and another took over).
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<&'a str>,
    /// Once succeeded: what `/transcribe` answers with `response_format=json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::output::TranscriptionJson>)]
    pub result: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a JobError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<&'a WebhookState>,
}

/// 128 random bits from the thread's CSPRNG: unguessable, so an id is a capability.
pub fn new_id() -> String {
    format!("job_{:032x}", rand::random::<u128>())
}

/// A plausible job id (what a store may be asked for).
pub fn is_valid_id(id: &str) -> bool {
    id.len() == 36 && id.starts_with("job_") && id[4..].bytes().all(|b| b.is_ascii_hexdigit())
}

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// How a run ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Succeeded(Vec<u8>),
    Failed(JobError),
}

/// A job handed to this replica: start it (or deliver its webhook), then acknowledge it.
#[derive(Debug, Clone)]
pub struct Claim {
    pub id: String,
    /// The Redis stream entry; empty for SQLite.
    pub(crate) entry: String,
    /// Taken over from a replica that stopped while holding it.
    pub reclaimed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the job queue is full ({0} jobs waiting); try again later")]
    Full(u64),
    #[error("the job store is unavailable: {0}")]
    Unavailable(String),
}

/// How long things are kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Finished jobs (and their results) are kept this long.
    pub job_ttl_s: u64,
    /// SQLite: jobs (with their audio) still queued after this long are dropped. (Redis keeps
    /// unfinished jobs without expiry; `max_queued_jobs` bounds them.)
    pub max_queued_s: u64,
    pub max_queued_jobs: u64,
    /// A claimed job whose replica sent no heartbeat for this long is taken by another.
    pub visibility_timeout_s: u64,
}

/// Where jobs live.
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Redis(redis_queue::RedisStore),
}

impl Store {
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Redis(_) => "redis",
        }
    }

    pub async fn create(&self, job: &Job, audio: Option<Vec<u8>>) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.create(job, audio).await,
            Store::Redis(s) => s.create(job, audio).await,
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        if !is_valid_id(id) {
            return Ok(None);
        }
        match self {
            Store::Sqlite(s) => s.get(id).await,
            Store::Redis(s) => s.get(id).await,
        }
    }

    pub async fn audio(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Store::Sqlite(s) => s.audio(id).await,
            Store::Redis(s) => s.audio(id).await,
        }
    }

    /// Cancel a queued or running job; the job as it now stands.
    pub async fn cancel(&self, id: &str) -> Result<Option<Job>, StoreError> {
        match self {
            Store::Sqlite(s) => s.cancel(id).await?,
            Store::Redis(s) => s.cancel(id).await?,
        }
        self.get(id).await
    }

    /// The next job for this replica, if any is waiting (or was left by a stopped replica).
    pub async fn next(&self) -> Result<Option<Claim>, StoreError> {
        match self {
            Store::Sqlite(s) => s.next().await,
            Store::Redis(s) => s.next().await,
        }
    }

    /// Mark a claimed job running (unless it is finished or cancelled) and return it.
    pub async fn start(&self, claim: &Claim) -> Result<Option<Job>, StoreError> {
        match self {
            Store::Sqlite(s) => s.start(claim).await,
            Store::Redis(s) => s.start(claim).await,
        }
    }

    /// Keep a claim from being taken by another replica while it runs. `false` when it was
    /// taken over anyway (this replica paused or lost Redis for longer than the visibility
    /// timeout): the other replica now runs it too.
    pub async fn heartbeat(&self, claim: &Claim) -> bool {
        match self {
            Store::Redis(s) => s.heartbeat(claim).await != Some(false),
            Store::Sqlite(_) => true,
        }
    }

    /// Record how a run ended (unless the job was cancelled meanwhile).
    pub async fn finish(&self, claim: &Claim, outcome: &Outcome) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.finish(claim, outcome).await,
            Store::Redis(s) => s.finish(claim, outcome).await,
        }
    }

    pub async fn set_webhook(&self, id: &str, w: &WebhookState) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.set_webhook(id, w).await,
            Store::Redis(s) => s.set_webhook(id, w).await,
        }
    }

    /// Give a claim back without finishing it (it will be handed out again).
    pub async fn release(&self, claim: &Claim) {
        if let Store::Sqlite(s) = self {
            s.release(claim);
        }
        // Redis: the entry stays pending; without heartbeats it is reclaimed after the
        // visibility timeout.
    }

    /// Nothing more to do for this claim.
    pub async fn ack(&self, claim: &Claim) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.ack(claim).await,
            Store::Redis(s) => s.ack(claim).await,
        }
    }

    /// (queued, running) across every replica sharing the store.
    pub async fn counts(&self) -> Result<(u64, u64), StoreError> {
        match self {
            Store::Sqlite(s) => s.counts().await,
            Store::Redis(s) => s.counts().await,
        }
    }

    /// Drop finished jobs past their retention (Redis expires keys itself).
    pub async fn expire(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.expire().await,
            Store::Redis(_) => Ok(0),
        }
    }
}

/// Job metrics, registered into the server's registry.
#[derive(Clone)]
pub struct JobMetrics {
    /// Jobs queued and running across the replicas sharing the store.
    pub jobs: IntGaugeVec,
    pub submitted: IntCounter,
    pub finished: IntCounterVec,
    /// Seconds from submission to the start of the run.
    pub queue_lag_seconds: Histogram,
    pub reclaims: IntCounter,
    pub webhook_deliveries: IntCounterVec,
}

impl JobMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            jobs: IntGaugeVec::new(
                Opts::new(
                    "whisperd_async_jobs",
                    "Async jobs by state (queued, running), across the replicas sharing the job store",
                ),
                &["state"],
            )?,
            submitted: IntCounter::new(
                "whisperd_async_jobs_submitted_total",
                "Async jobs accepted by this replica",
            )?,
            finished: IntCounterVec::new(
                Opts::new(
                    "whisperd_async_jobs_finished_total",
                    "Async jobs this replica finished, by state (succeeded, failed, cancelled)",
                ),
                &["state"],
            )?,
            queue_lag_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "whisperd_async_job_queue_lag_seconds",
                    "Seconds from a job's submission to the start of its run on this replica",
                )
                .buckets(prometheus::exponential_buckets(0.05, 2.0, 16)?),
            )?,
            reclaims: IntCounter::new(
                "whisperd_async_job_reclaims_total",
                "Jobs this replica took over from a replica that stopped while running them (or resumed after its own restart)",
            )?,
            webhook_deliveries: IntCounterVec::new(
                Opts::new(
                    "whisperd_webhook_deliveries_total",
                    "Webhook attempts by outcome: delivered, retry (failed, will try again), failed (gave up)",
                ),
                &["outcome"],
            )?,
        };
        registry.register(Box::new(m.jobs.clone()))?;
        registry.register(Box::new(m.submitted.clone()))?;
        registry.register(Box::new(m.finished.clone()))?;
        registry.register(Box::new(m.queue_lag_seconds.clone()))?;
        registry.register(Box::new(m.reclaims.clone()))?;
        registry.register(Box::new(m.webhook_deliveries.clone()))?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_128_random_bits() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert!(is_valid_id(&a), "{a}");
        assert_eq!(a.len(), 4 + 32);
        assert!(!is_valid_id("job_123"));
        assert!(!is_valid_id("../../etc/passwd"));
    }

    #[test]
    fn status_round_trips() {
        for s in [
            Status::Queued,
            Status::Running,
            Status::Succeeded,
            Status::Failed,
            Status::Cancelled,
        ] {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert!(Status::Cancelled.is_terminal() && !Status::Running.is_terminal());
    }
}
