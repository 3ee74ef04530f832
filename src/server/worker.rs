//! The inference side of the server: for each loaded model (`super::models`), `batch_size`
//! transcription threads take jobs from its bounded queue and run the decoding loop, sending every
//! model call to that model's scheduler (`crate::scheduler`), which batches them across requests;
//! HTTP workers never run tensor code. Identical requests in flight share one job (single flight);
//! finished results go into the shared result cache.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument;

use tokio::sync::broadcast;

use super::error::ApiError;
use super::metrics::Metrics;
use super::models::{Lease, Models};
use crate::admission::{Admission, Admit};
use crate::audio::AudioError;
use crate::cache::ResultCache;
use crate::engine::{Engine, EngineError, Prepared};
use crate::transcript::{Segment, Transcript};
use crate::TranscribeOptions;

pub type JobResult = Result<Arc<Transcript>, ApiError>;

/// The segments a job has finished so far, for streaming waiters: one that joins late reads
/// the backlog, then waits for the count to grow.
pub struct Progress {
    segments: Mutex<Vec<Segment>>,
    count: tokio::sync::watch::Sender<usize>,
    /// Set once the audio is decoded and the job is in the queue.
    accepted: tokio::sync::watch::Sender<bool>,
}

impl Progress {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            segments: Mutex::new(Vec::new()),
            count: tokio::sync::watch::channel(0).0,
            accepted: tokio::sync::watch::channel(false).0,
        })
    }

    /// Resolves once the job is queued (its audio decoded); never, if it fails before that.
    pub async fn accepted(&self) {
        let mut rx = self.accepted.subscribe();
        if rx.wait_for(|&a| a).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    fn push(&self, s: &Segment) {
        let mut segments = self.segments.lock().unwrap_or_else(|p| p.into_inner());
        segments.push(s.clone());
        self.count.send_replace(segments.len());
    }

    /// Segments from index `from` on.
    pub fn since(&self, from: usize) -> Vec<Segment> {
        let segments = self.segments.lock().unwrap_or_else(|p| p.into_inner());
        segments.get(from..).unwrap_or_default().to_vec()
    }

    /// Changes whenever a segment is added.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<usize> {
        self.count.subscribe()
    }
}

/// What the server keeps with a job in flight (`crate::admission`): its segments so far.
struct Flight {
    progress: Arc<Progress>,
    /// The cross-replica flight lock, while this replica runs the job for everyone.
    lock: Option<crate::cluster::cache::FlightLock>,
}

/// Where a request's transcript will come from.
pub enum Pending {
    /// The result cache had it.
    Hit(Arc<Transcript>),
    /// A job (this request's or an identical one's) will send it; its segments arrive first.
    Job {
        rx: broadcast::Receiver<JobResult>,
        progress: Arc<Progress>,
    },
}

pub struct Job {
    key: String,
    prepared: Prepared,
    options: crate::CheckedOptions,
    tx: broadcast::Sender<JobResult>,
    progress: Arc<Progress>,
    enqueued: Instant,
    deadline: Instant,
    /// The request's span (its trace): inference on a transcription thread continues it.
    span: tracing::Span,
    /// Keeps the model loaded (and counted busy) until the job is done; let go before the
    /// result goes out, so a client that asks another model next finds this one idle.
    lease: Option<Lease>,
}

/// Everything the HTTP side and the inference thread share.
pub struct Shared {
    pub models: Models,
    /// The default model is loaded and warm.
    pub ready: AtomicBool,
    pub draining: AtomicBool,
    /// The Redis second level and cross-replica single flight (`redis_url`).
    pub shared_cache: Option<Arc<crate::cluster::cache::SharedCache>>,
    pub metrics: Metrics,
    /// The result cache and single flight (`crate::admission`).
    admission: Admission<ApiError, Flight>,
    /// Jobs waiting in every model's queue together; at most `queue_size`.
    queued: AtomicUsize,
    pub queue_size: usize,
    pub request_timeout: Duration,
    pub max_audio_s: f64,
    /// When the server started (Unix seconds): the `created` of the models it lists.
    pub started_unix: u64,
}

/// How a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
        }
    }
}

impl Shared {
    pub fn new(
        models: Models,
        cache: ResultCache,
        shared_cache: Option<Arc<crate::cluster::cache::SharedCache>>,
        metrics: Metrics,
        queue_size: usize,
        request_timeout: Duration,
        max_audio_s: f64,
    ) -> Arc<Self> {
        Arc::new(Self {
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            models,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            admission: Admission::new(cache),
            shared_cache,
            metrics,
            queued: AtomicUsize::new(0),
            queue_size,
            request_timeout,
            max_audio_s,
        })
    }

    pub fn queue_full(&self) -> bool {
        self.queued.load(Ordering::SeqCst) >= self.queue_size
    }

    /// A place in the queue (every model's together), or `false` when `queue_size` are taken.
    fn reserve_queue_place(&self) -> bool {
        let taken = self
            .queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.queue_size).then_some(n + 1)
            })
            .is_ok();
        if taken {
            self.metrics.queue_depth.inc();
        }
        taken
    }

    fn release_queue_place(&self) {
        self.queued.fetch_sub(1, Ordering::SeqCst);
        self.metrics.queue_depth.dec();
    }

    /// Hand `result` to everyone waiting on `key` and forget the job. The key leaves the in-flight
    /// map before the result is sent, so a later identical request finds the cache instead.
    fn finish(&self, key: &str, result: JobResult) {
        let cacheable = !key.starts_with(UNCACHED);
        let (tx, lock) = self
            .admission
            .complete(key, &result, cacheable)
            .map_or((None, None), |(tx, f)| (Some(tx), f.lock));
        if result.is_ok() && cacheable {
            let (entries, bytes) = self.admission.cache().usage();
            self.metrics.cache_entries.set(entries as i64);
            self.metrics.cache_bytes.set(bytes as i64);
        }
        // This replica ran the job under the cross-replica lock: publish the result (before the
        // lock goes, so that waiting replicas find it), then let the lock go — on failure too,
        // so that a waiting replica takes over at once.
        if let (Some(lock), Some(sc)) = (lock, &self.shared_cache) {
            let (sc2, key, t) = (sc.clone(), key.to_string(), result.as_ref().ok().cloned());
            sc.link().spawn(async move {
                if let Some(t) = t {
                    sc2.put(&key, &t).await;
                }
                sc2.release(lock).await;
            });
        }
        if let Some(tx) = tx {
            let _ = tx.send(result);
        }
    }
}

/// One job of a model's queue (`crate::admission::JobQueue`), on one of its transcription
/// threads: run it through the scheduler and answer its waiters.
pub(super) fn run_job(
    shared: &Shared,
    model: &str,
    engine: &Engine,
    runner: &crate::scheduler::SchedulerHandle,
    mut job: Job,
) {
    let m = &shared.metrics;
    shared.release_queue_place();
    if job.tx.receiver_count() == 0 {
        // Every client that wanted this result has disconnected: skip the work.
        m.jobs.with_label_values(&[model, "cancelled"]).inc();
        tracing::info!("dropping a queued job whose clients disconnected");
        job.lease = None;
        shared.finish(&job.key, Err(ApiError::client_closed()));
        return;
    }
    if Instant::now() > job.deadline {
        m.jobs.with_label_values(&[model, "timeout"]).inc();
        tracing::warn!(
            waited_s = job.enqueued.elapsed().as_secs_f64(),
            "job expired in the queue; raise queue capacity or add replicas"
        );
        job.lease = None;
        shared.finish(
            &job.key,
            Err(ApiError::unavailable(
                "the request waited too long for inference",
                5,
            )),
        );
        return;
    }
    let waited = job.enqueued.elapsed().as_secs_f64();
    m.queue_wait_seconds.observe(waited);
    let _span =
        tracing::info_span!(parent: &job.span, "inference", model, queue_wait_s = waited).entered();
    let t0 = Instant::now();
    // Single flight: every waiter holds a receiver; when the last one leaves, the job stops at
    // its next window.
    let cancellable = crate::decode::Cancellable {
        inner: runner,
        cancelled: || job.tx.receiver_count() == 0,
    };
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        engine.transcribe_streaming(&cancellable, &job.prepared, &job.options, &mut |s| {
            job.progress.push(s)
        })
    }));
    let secs = t0.elapsed().as_secs_f64();
    let result = match outcome {
        Ok(Ok(t)) => {
            m.jobs.with_label_values(&[model, "ok"]).inc();
            m.inference_seconds
                .with_label_values(&[model])
                .observe(secs);
            m.audio_seconds
                .with_label_values(&[model])
                .inc_by(t.duration);
            m.realtime_factor
                .with_label_values(&[model])
                .observe(secs / t.duration.max(1e-3));
            m.decoded_tokens
                .inc_by(t.segments.iter().map(|s| s.tokens.len() as u64).sum());
            if let Some(sp) = t.speech {
                let detector = if sp.vad { "silero" } else { "gate" };
                m.vad_speech_seconds
                    .with_label_values(&[detector])
                    .inc_by(sp.speech_duration);
                m.vad_skipped_seconds
                    .with_label_values(&[detector])
                    .inc_by(sp.skipped_duration);
            }
            if let Some(d) = t.diarized {
                m.diarize_seconds.observe(d.seconds);
                m.diarize_speakers.observe(d.speakers as f64);
                m.diarize_windows.inc_by(d.windows as u64);
            }
            for w in &t.fallbacks {
                m.fallbacks
                    .with_label_values(&[w.outcome.as_str(), &format!("{:.1}", w.temperature)])
                    .inc();
                if w.resumed_early_end {
                    m.early_end_resumes.inc();
                }
            }
            Ok(Arc::new(t))
        }
        Ok(Err(EngineError::Decode(crate::decode::DecodeError::Cancelled))) => {
            m.jobs.with_label_values(&[model, "cancelled"]).inc();
            tracing::info!(
                seconds = secs,
                "stopped a running job: every client waiting for it disconnected"
            );
            Err(ApiError::client_closed())
        }
        Ok(Err(e)) => {
            m.jobs.with_label_values(&[model, "error"]).inc();
            Err(ApiError::from(e))
        }
        Err(_) => {
            m.jobs.with_label_values(&[model, "panic"]).inc();
            tracing::error!("inference panicked; the request gets a 500 and the worker continues");
            Err(ApiError::new(
                actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal error during inference",
            ))
        }
    };
    job.lease = None;
    shared.finish(&job.key, result);
}

/// Before running a job: the Redis cache, then the cross-replica flight lock. A transcript when
/// another replica has (or produces) it; `None` when this replica should run the job — it then
/// holds the lock (kept in the flight until `finish`), or Redis is unavailable.
async fn across_replicas(
    shared: &Shared,
    sc: &crate::cluster::cache::SharedCache,
    key: &str,
    tx: &broadcast::Sender<JobResult>,
    deadline: Instant,
) -> Option<Transcript> {
    use crate::cluster::cache::{Claim, Lookup, Waited};
    match sc.get(key).await {
        Lookup::Hit(t) => return Some(*t),
        Lookup::Unavailable => return None,
        Lookup::Miss => {}
    }
    loop {
        match sc.claim(key).await {
            Claim::Unavailable => return None,
            Claim::Mine(lock) => {
                shared.admission.update(key, |f| f.lock = Some(lock));
                return None;
            }
            Claim::Theirs => {
                tracing::debug!(
                    "another replica is running the same audio and options: waiting for its result"
                );
                match sc.wait(key, deadline, || tx.receiver_count() > 0).await {
                    Waited::Result(t) => return Some(*t),
                    Waited::Vanished => continue,
                    Waited::GaveUp => return None,
                }
            }
        }
    }
}

/// Removes a single-flight entry (answering its waiters) unless the job reached the queue.
struct InflightGuard {
    shared: Arc<Shared>,
    key: String,
    armed: bool,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.armed {
            self.shared.finish(
                &self.key,
                Err(ApiError::unavailable(
                    "the request was abandoned before inference",
                    1,
                )),
            );
        }
    }
}

/// Transcribe uploaded `bytes` with model `model` (an index of `shared.models`): from the cache,
/// by joining an identical request in flight, or by decoding (on the blocking pool) and queueing
/// a job. The engine comes back too, for what rendering needs of the model (its tokenizer).
pub async fn transcribe(
    shared: &Arc<Shared>,
    model: usize,
    bytes: Vec<u8>,
    options: TranscribeOptions,
    client: Option<super::disconnect::ClientSocket>,
) -> Result<(Arc<Transcript>, CacheStatus, Arc<Engine>), ApiError> {
    let (pending, engine) = submit(shared, model, bytes, options).await?;
    let mut rx = match pending {
        Pending::Hit(t) => return Ok((t, CacheStatus::Hit, engine)),
        Pending::Job { rx, .. } => rx,
    };
    // Wait for the result, or stop waiting when the client hangs up (actix does not cancel a
    // handler on disconnect); with no one left waiting, the worker skips the job.
    tokio::select! {
        r = rx.recv() => match r {
            Ok(r) => r.map(|t| (t, CacheStatus::Miss, engine)),
            Err(_) => Err(ApiError::unavailable("the inference worker stopped", 5)),
        },
        _ = super::disconnect::closed(client) => {
            tracing::info!("client disconnected while waiting for its transcript");
            Err(ApiError::client_closed())
        }
    }
}

/// Find `bytes` under `options` in the cache, or join the identical job in flight, or start one
/// (decoding on the blocking pool, then the queue). Whoever holds the returned receiver keeps
/// the job wanted; when every holder has dropped it, the job stops at its next window.
pub async fn submit(
    shared: &Arc<Shared>,
    model: usize,
    bytes: Vec<u8>,
    options: TranscribeOptions,
) -> Result<(Pending, Arc<Engine>), ApiError> {
    submit_with(shared, model, bytes, options, true).await
}

/// Keys of jobs whose results stay out of the cache (and that no other request joins).
const UNCACHED: &str = "uncached:";

/// [`submit`]; with `cached` false the result cache is neither read nor written and the job is
/// not shared (realtime sessions' partial passes over a growing utterance).
pub async fn submit_with(
    shared: &Arc<Shared>,
    model: usize,
    bytes: Vec<u8>,
    options: TranscribeOptions,
    cached: bool,
) -> Result<(Pending, Arc<Engine>), ApiError> {
    let lease = super::models::acquire(shared, model).await?;
    let engine = lease.engine.clone();
    let options = engine.check_options(&options)?;
    let (bytes, hash) = actix_web::web::block(move || {
        let h = crate::cache::audio_hash(&bytes);
        (bytes, h)
    })
    .await
    .map_err(|_| ApiError::unavailable("server is shutting down", 1))?;
    let mut key = crate::cache::cache_key(&hash, &lease.cache_name, &options);
    tracing::debug!(audio_hash = %hash, "upload hashed");
    if !cached {
        key = format!("{UNCACHED}{:016x}:{key}", rand::random::<u64>());
    }
    let admitted = shared.admission.admit(
        &key,
        cached,
        || Flight {
            progress: Progress::new(),
            lock: None,
        },
        |f| f.progress.clone(),
    );
    let crate::admission::Joined {
        rx,
        view: progress,
        leader,
    } = match admitted {
        Admit::Hit(t) => {
            shared.metrics.cache_hits.inc();
            return Ok((Pending::Hit(t), engine));
        }
        Admit::Flight(joined) => joined,
    };
    if cached {
        shared.metrics.cache_misses.inc();
    }
    if leader.is_none() {
        shared.metrics.cache_coalesced.inc();
    }
    if let Some(tx) = leader {
        // Decoding and queueing run in their own task: if this client goes away, identical
        // requests waiting on the same key still get their answer.
        let shared = shared.clone();
        let job = (key, bytes, options, tx, progress.clone());
        actix_web::rt::spawn(
            prepare_and_enqueue(shared, lease, job).instrument(tracing::Span::current()),
        );
    }
    Ok((Pending::Job { rx, progress }, engine))
}

type NewJob = (
    String,
    Vec<u8>,
    crate::CheckedOptions,
    broadcast::Sender<JobResult>,
    Arc<Progress>,
);

async fn prepare_and_enqueue(shared: Arc<Shared>, lease: Lease, job: NewJob) {
    let engine = lease.engine.clone();
    let (key, bytes, options, tx, progress) = job;
    let accepted = progress.accepted.clone();
    let mut guard = InflightGuard {
        shared: shared.clone(),
        key: key.clone(),
        armed: true,
    };
    if !key.starts_with(UNCACHED) {
        if let Some(sc) = shared.shared_cache.clone() {
            let deadline = Instant::now() + shared.request_timeout;
            if let Some(t) = across_replicas(&shared, &sc, &key, &tx, deadline).await {
                guard.armed = false;
                shared.finish(&key, Ok(Arc::new(t)));
                return;
            }
            if tx.receiver_count() == 0 {
                return; // everyone left while another replica ran it: the guard answers
            }
        }
    }
    let max_audio_s = shared.max_audio_s;
    let prepare_options = options.clone();
    let parent = tracing::Span::current();
    let prepared = actix_web::web::block(move || -> Result<Prepared, EngineError> {
        parent.in_scope(|| engine.prepare_bytes(bytes, Some(max_audio_s), &prepare_options))
    })
    .await;
    let prepared = match prepared {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            if matches!(e, EngineError::Audio(AudioError::DecoderPanic(_))) {
                // Contained and answered as invalid audio, but counted: a decoder library bug.
                shared
                    .metrics
                    .jobs
                    .with_label_values(&[&lease.name, "panic"])
                    .inc();
            }
            guard.armed = false;
            shared.finish(&key, Err(ApiError::from(e)));
            return;
        }
        Err(_) => return, // blocking pool gone: shutting down; the guard answers the waiters
    };
    let model = lease.name.clone();
    let queued = shared.reserve_queue_place() && {
        let queue = lease.queue();
        let now = Instant::now();
        let job = Job {
            key: key.clone(),
            prepared,
            options,
            tx,
            progress,
            enqueued: now,
            deadline: now + shared.request_timeout,
            span: tracing::Span::current(),
            lease: Some(lease),
        };
        // (Each model's channel holds queue_size: with a place reserved it has room.)
        let sent = queue.try_send(job).is_ok();
        if !sent {
            shared.release_queue_place();
        }
        sent
    };
    guard.armed = false;
    if queued {
        accepted.send_replace(true);
        return;
    }
    shared
        .metrics
        .jobs
        .with_label_values(&[&model, "rejected"])
        .inc();
    tracing::warn!(
        queue_size = shared.queue_size,
        "inference queue full: answering 503; add replicas or raise queue_size"
    );
    shared.finish(
        &key,
        Err(ApiError::unavailable(
            "the server is busy: inference queue full",
            2,
        )),
    );
}
