//! `/v1/jobs`: async transcription jobs (submit, poll, fetch the result, cancel) and the runners
//! that take jobs from the store (`crate::jobs`) and put them through the same queue, cache and
//! single flight as synchronous requests.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use tracing::Instrument;

use super::error::ApiError;
use super::routes::{self, Api};
use super::{worker, AppState};
use crate::jobs::{
    webhook, Claim, Job, JobError, JobRequest, Outcome, Status, Store, StoreError, WebhookState,
    MAX_ATTEMPTS,
};

/// Largest JSON or URL-encoded job request (no audio in it: that comes by URL).
const MAX_FORM_BYTES: usize = 64 * 1024;
/// How often an idle runner looks for work (a local submission wakes it at once).
const IDLE_POLL: Duration = Duration::from_millis(500);

pub struct Jobs {
    pub store: Store,
    /// HMAC key for webhooks (empty: webhooks refused).
    pub secret: String,
    pub visibility: Duration,
    wake: tokio::sync::Notify,
}

impl Jobs {
    pub fn new(store: Store, secret: String, visibility: Duration) -> Arc<Self> {
        Arc::new(Self {
            store,
            secret,
            visibility,
            wake: tokio::sync::Notify::new(),
        })
    }
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Full(_) => ApiError::new(
            actix_web::http::StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            e.to_string(),
        )
        .retry_after(10)
        .code("job_queue_full"),
        StoreError::Unavailable(_) => {
            tracing::warn!(error = %e, "job store unavailable: answering 503");
            ApiError::unavailable("the job store is unavailable; try again shortly", 5)
        }
    }
}

fn jobs(state: &AppState) -> Result<&Arc<Jobs>, ApiError> {
    state.jobs.as_ref().ok_or_else(|| {
        ApiError::unavailable(
            "async jobs are unavailable on this server: its job store could not be opened (see its log)",
            30,
        )
    })
}

/// Who owns jobs created by this request: the API key's hash, or nobody with auth off.
fn owner(req: &HttpRequest) -> String {
    req.extensions()
        .get::<super::ClientId>()
        .map(|c| c.0.clone())
        .filter(|c| c.starts_with("key:"))
        .unwrap_or_default()
}

fn not_found() -> ApiError {
    ApiError::new(
        actix_web::http::StatusCode::NOT_FOUND,
        "invalid_request_error",
        "no such job",
    )
    .code("job_not_found")
}

/// The job, if it exists and belongs to the caller (another key's job is "not found").
async fn find(state: &AppState, req: &HttpRequest, id: &str) -> Result<Job, ApiError> {
    let job = jobs(state)?.store.get(id).await.map_err(store_error)?;
    match job {
        Some(j) if j.owner == owner(req) => Ok(j),
        _ => Err(not_found()),
    }
}

/// A string for each JSON value (lists joined with commas, as repeated form fields are).
fn json_fields(v: serde_json::Value) -> Result<HashMap<String, String>, ApiError> {
    let serde_json::Value::Object(map) = v else {
        return Err(ApiError::bad_request(
            "the JSON body must be an object of options",
        ));
    };
    Ok(map
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| {
            let s = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Array(items) => items
                    .into_iter()
                    .map(|i| match i {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.to_string(),
            };
            (k, s)
        })
        .collect())
}

/// Fields and upload of a job request: multipart (with `file`), or JSON / URL-encoded (with `url`).
async fn read_job_request(
    req: &HttpRequest,
    mut body: web::Payload,
    state: &AppState,
) -> Result<(HashMap<String, String>, Option<Vec<u8>>), ApiError> {
    let ct = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let json = ct.starts_with("application/json");
    if !json && !ct.starts_with("application/x-www-form-urlencoded") {
        return routes::read_request(req, body, state).await;
    }
    let mut bytes = web::BytesMut::new();
    let read = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::bad_request(format!("could not read the request body: {e}"))
            })?;
            if bytes.len() + chunk.len() > MAX_FORM_BYTES {
                return Err(ApiError::too_large(format!(
                    "a JSON or form job request is at most {} KiB (upload audio as multipart `file`, or give a `url`)",
                    MAX_FORM_BYTES / 1024
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(())
    };
    actix_web::rt::time::timeout(Duration::from_secs(30), read)
        .await
        .map_err(|_| ApiError::bad_request("the request body did not arrive in time"))??;
    let mut fields: HashMap<String, String> =
        web::Query::<HashMap<String, String>>::from_query(req.query_string())
            .map(|q| q.into_inner())
            .map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))?;
    if json {
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
        fields.extend(json_fields(v)?);
    } else {
        fields.extend(url::form_urlencoded::parse(&bytes).into_owned());
    }
    Ok((fields, None))
}

/// `POST /v1/jobs`: queue a transcription; 202 with the job's id.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    request_body(content(
        (super::schema::JobForm = "multipart/form-data"),
        (super::schema::JobForm = "application/json"),
        (super::schema::JobForm = "application/x-www-form-urlencoded"))),
    responses((status = 202, description = "Queued", body = crate::jobs::JobView), (status = 400, description = "A bad field (named in `param`)", body = super::error::ErrorResponse), (status = 401, description = "Missing or wrong API key", body = super::error::ErrorResponse), (status = 429, description = "Rate limit, or the job queue is full", body = super::error::ErrorResponse), (status = 503, description = "Job store unavailable", body = super::error::ErrorResponse)))]
pub async fn create(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let jobs = jobs(&state)?;
    let (mut fields, file) = read_job_request(&req, body, &state).await?;
    super::schema::check_fields(super::schema::Form::Job, &fields)?;
    let url = fields.remove("url").filter(|u| !u.trim().is_empty());
    let webhook_url = fields
        .remove("webhook_url")
        .filter(|u| !u.trim().is_empty());
    let file = file.filter(|f| !f.is_empty());
    match (&file, &url) {
        (Some(_), Some(_)) => {
            return Err(
                ApiError::bad_request("send the audio as `file` or as `url`, not both")
                    .param("url"),
            )
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "no audio: upload it in multipart field `file`, or give its `url`",
            )
            .param("file")
            .code("missing_file"))
        }
        _ => {}
    }
    if let Some(u) = &url {
        crate::net::fetch::parse(u, state.urls.allow_private).map_err(|e| url_error(&e))?;
    }
    if let Some(w) = &webhook_url {
        if jobs.secret.is_empty() {
            return Err(ApiError::bad_request(
                "webhooks need a signing key: the operator has not set webhook_secret",
            )
            .param("webhook_url")
            .code("webhooks_disabled"));
        }
        crate::net::fetch::parse(w, state.urls.allow_private)
            .map_err(|e| url_error(&e).param("webhook_url"))?;
    }
    if fields
        .get("stream")
        .is_some_and(|v| v == "true" || v == "1")
    {
        return Err(ApiError::bad_request(
            "stream=true is for /transcribe; a job's result is fetched from /v1/jobs/{id}/result",
        )
        .param("stream"));
    }
    // The options are checked now (a bad one is a 400 here, not a failed job later).
    routes::pick_model(&state, &fields)?;
    routes::parse_options(Api::Native, &fields, &state.defaults)?;
    if fields.keys().any(|k| k.starts_with("known_speaker_")) {
        return Err(ApiError::bad_request(
            "known speakers are for /transcribe and /v1/audio/transcriptions, not jobs",
        )
        .param("known_speaker_names"));
    }
    let job = Job::new(
        owner(&req),
        JobRequest {
            fields: fields.into_iter().collect::<BTreeMap<_, _>>(),
            url,
            webhook_url,
        },
    );
    jobs.store.create(&job, file).await.map_err(store_error)?;
    state.shared.metrics.async_jobs.submitted.inc();
    jobs.wake.notify_one();
    tracing::info!(
        request_id = %super::request_id(&req),
        job_id = %job.id,
        source = if job.request.url.is_some() { "url" } else { "upload" },
        webhook = job.webhook.is_some(),
        store = jobs.store.kind(),
        "job queued"
    );
    Ok(HttpResponse::Accepted()
        .insert_header(("Location", format!("/v1/jobs/{}", job.id)))
        .json(job.view(None)))
}

/// A succeeded job's `result`: what `/transcribe` answers with `response_format=json`.
fn result_json(job: &Job) -> Option<serde_json::Value> {
    transcript(job).and_then(|t| serde_json::to_value(t.json()).ok())
}

/// The transcript of a succeeded job, decoded.
fn transcript(job: &Job) -> Option<crate::transcript::Transcript> {
    job.result
        .as_deref()
        .and_then(crate::cache::decode_transcript)
}

/// `GET /v1/jobs/{id}`: the job, with its result (as `/transcribe` answers) once succeeded.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = crate::jobs::JobView), (status = 404, description = "No such job for this API key", body = super::error::ErrorResponse)))]
pub async fn get(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let job = find(&state, &req, &id).await?;
    let result = result_json(&job);
    Ok(HttpResponse::Ok().json(job.view(result)))
}

/// `GET /v1/jobs/{id}/result?response_format=…`: the transcript in any response format.
#[utoipa::path(get, path = "/v1/jobs/{id}/result", tag = "jobs",
    params(("id" = String, Path), ("response_format" = Option<String>, Query, description = "json, text, srt, vtt, verbose_json, tsv")),
    responses(
        (status = 200, content((super::schema::TranscriptionResponse = "application/json"), (String = "text/plain"), (String = "application/x-subrip"), (String = "text/vtt"), (String = "text/tab-separated-values"))),
        (status = 404, body = super::error::ErrorResponse),
        (status = 409, description = "Not succeeded (yet)", body = super::error::ErrorResponse)))]
pub async fn result(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let job = find(&state, &req, &id).await?;
    let Some(t) = transcript(&job) else {
        let msg = match job.status {
            Status::Queued | Status::Running => format!(
                "the job is {}: poll /v1/jobs/{} until it has succeeded",
                job.status.as_str(),
                job.id
            ),
            s => format!("the job {}: it has no result", s.as_str()),
        };
        return Err(ApiError::new(
            actix_web::http::StatusCode::CONFLICT,
            "invalid_request_error",
            msg,
        )
        .code("job_has_no_result"));
    };
    let mut fields: HashMap<String, String> = job.request.fields.clone().into_iter().collect();
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))?;
    for (k, v) in query {
        if matches!(
            k.as_str(),
            "response_format" | "timestamp_granularities[]" | "timestamp_granularities"
        ) {
            fields.insert(k, v);
        }
    }
    let (options, format) = routes::parse_options(Api::Native, &fields, &state.defaults)?;
    let render = routes::render_options(&fields)?;
    Ok(HttpResponse::Ok()
        .content_type(format.content_type())
        .body(t.render_with(format, options.task, &render)))
}

/// `DELETE /v1/jobs/{id}`: cancel a queued or running job (a running one stops at its next
/// window); a finished job cannot be cancelled (409).
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = crate::jobs::JobView), (status = 404, body = super::error::ErrorResponse),
        (status = 409, description = "Already finished", body = super::error::ErrorResponse)))]
pub async fn cancel(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let job = find(&state, &req, &id).await?;
    if matches!(job.status, Status::Succeeded | Status::Failed) {
        return Err(ApiError::new(
            actix_web::http::StatusCode::CONFLICT,
            "invalid_request_error",
            format!("the job has already {}", job.status.as_str()),
        )
        .code("job_finished"));
    }
    let job = jobs(&state)?
        .store
        .cancel(&job.id)
        .await
        .map_err(store_error)?
        .ok_or_else(not_found)?;
    tracing::info!(job_id = %job.id, status = job.status.as_str(), "job cancel requested");
    Ok(HttpResponse::Ok().json(job.view(None)))
}

fn url_error(e: &crate::net::fetch::FetchError) -> ApiError {
    use crate::net::fetch::FetchError;
    let err = match e {
        FetchError::TooLarge { .. } => ApiError::too_large(format!("the audio at `url`: {e}")),
        _ => ApiError::bad_request(format!("url: {e}")),
    };
    err.param("url").code(e.code())
}

/// Download audio a request names by URL (on a blocking thread, within the configured bounds).
pub async fn audio_from_url(state: &AppState, raw: &str) -> Result<Vec<u8>, ApiError> {
    let url = crate::net::fetch::parse(raw, state.urls.allow_private).map_err(|e| url_error(&e))?;
    let limits = state.urls;
    let t0 = std::time::Instant::now();
    let got = web::block(move || crate::net::fetch::get(&url, &limits))
        .await
        .map_err(|_| ApiError::unavailable("server is shutting down", 1))?;
    match got {
        Ok(bytes) => {
            tracing::info!(
                bytes = bytes.len(),
                seconds = t0.elapsed().as_secs_f64(),
                "audio fetched from url"
            );
            Ok(bytes)
        }
        Err(e) => {
            tracing::info!(error = %e, code = e.code(), "audio url refused or unreachable");
            Err(url_error(&e))
        }
    }
}

/// Start `n` runners (on the server's main thread; they only wait) and the gauge updater.
pub fn start(state: web::Data<AppState>, jobs: Arc<Jobs>, n: usize) {
    for _ in 0..n {
        actix_web::rt::spawn(runner(state.clone(), jobs.clone()));
    }
    actix_web::rt::spawn(housekeeping(state, jobs));
}

async fn housekeeping(state: web::Data<AppState>, jobs: Arc<Jobs>) {
    let m = state.shared.metrics.async_jobs.clone();
    let mut tick = 0u64;
    loop {
        if let Ok((queued, running)) = jobs.store.counts().await {
            m.jobs.with_label_values(&["queued"]).set(queued as i64);
            m.jobs.with_label_values(&["running"]).set(running as i64);
        }
        if tick.is_multiple_of(30) {
            match jobs.store.expire().await {
                Ok(n) if n > 0 => tracing::info!(jobs = n, "expired finished jobs removed"),
                _ => {}
            }
        }
        tick += 1;
        actix_web::rt::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn runner(state: web::Data<AppState>, jobs: Arc<Jobs>) {
    loop {
        let shared = &state.shared;
        if !shared.ready.load(Ordering::SeqCst) || shared.draining.load(Ordering::SeqCst) {
            // Loading, or shutting down: what is queued waits for a replica (or this one's restart).
            actix_web::rt::time::sleep(IDLE_POLL).await;
            continue;
        }
        match jobs.store.next().await {
            Ok(Some(claim)) => {
                let span = tracing::info_span!("job", job_id = %claim.id);
                process(state.clone(), &jobs, claim).instrument(span).await
            }
            Ok(None) => {
                let _ = actix_web::rt::time::timeout(IDLE_POLL, jobs.wake.notified()).await;
            }
            Err(_) => actix_web::rt::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// Run a claimed job (or only deliver its webhook, when it is already finished), then
/// acknowledge it. A heartbeat keeps the claim while this takes.
async fn process(state: web::Data<AppState>, jobs: &Arc<Jobs>, claim: Claim) {
    let m = state.shared.metrics.async_jobs.clone();
    let heartbeat = {
        let (jobs, claim) = (jobs.clone(), claim.clone());
        actix_web::rt::spawn(async move {
            loop {
                actix_web::rt::time::sleep(jobs.visibility / 3).await;
                if !jobs.store.heartbeat(&claim).await {
                    tracing::warn!(job_id = %claim.id, "another replica took this job over (this one paused or lost Redis past job_visibility_timeout_s); both may finish it, the first result is kept");
                    return;
                }
            }
        })
    };
    let job = match jobs.store.start(&claim).await {
        Ok(Some(j)) => j,
        Ok(None) => {
            // Expired or never written: nothing to do.
            let _ = jobs.store.ack(&claim).await;
            heartbeat.abort();
            return;
        }
        Err(_) => {
            // The store is unavailable: give the claim back (Redis: it stays pending and is
            // taken again after the visibility timeout) and wait before the next one.
            jobs.store.release(&claim).await;
            heartbeat.abort();
            actix_web::rt::time::sleep(Duration::from_secs(1)).await;
            return;
        }
    };
    if claim.reclaimed {
        m.reclaims.inc();
        tracing::warn!(job_id = %job.id, attempt = job.attempts, "job taken over from a replica that stopped while running it");
    }
    if job.status == Status::Running {
        m.queue_lag_seconds
            .observe((job.started_at.unwrap_or(job.created_at) - job.created_at).max(0.0));
        let end = if job.attempts > MAX_ATTEMPTS {
            tracing::error!(job_id = %job.id, attempts = job.attempts, "job stopped its replica too often: failing it");
            RunEnd::Done(Outcome::Failed(JobError {
                status: 500,
                kind: "server_error".into(),
                code: Some("job_crashed".into()),
                message: format!(
                    "the job was interrupted {} times (its replica stopped); not retried again",
                    job.attempts - 1
                ),
            }))
        } else {
            match run(&state, jobs, &job).await {
                // Cancelled while it ran (even before its audio was read: cancelling drops the
                // audio, and the run then fails for want of it): the store keeps `cancelled`,
                // and so does the count.
                RunEnd::Done(_) if cancelled(jobs, &job.id).await => RunEnd::Cancelled,
                end => end,
            }
        };
        if let RunEnd::Later = end {
            tracing::warn!(job_id = %job.id, "job store unavailable mid-run: the job will run again");
            jobs.store.release(&claim).await;
            heartbeat.abort();
            actix_web::rt::time::sleep(Duration::from_secs(1)).await;
            return;
        }
        if let RunEnd::Done(outcome) = end {
            let label = match &outcome {
                Outcome::Succeeded(_) => "succeeded",
                Outcome::Failed(_) => "failed",
            };
            if jobs.store.finish(&claim, &outcome).await.is_err() {
                // Not recorded: give the claim back, the job runs again.
                jobs.store.release(&claim).await;
                heartbeat.abort();
                actix_web::rt::time::sleep(Duration::from_secs(1)).await;
                return;
            }
            m.finished.with_label_values(&[label]).inc();
            tracing::info!(job_id = %job.id, status = label, "job finished");
        } else {
            m.finished.with_label_values(&["cancelled"]).inc();
            tracing::info!(job_id = %job.id, "job cancelled while running");
        }
    }
    // The webhook (retried for up to about 90 s) goes on beside the runner, which takes the next
    // job; the claim is acknowledged, and its heartbeat stopped, only once it is settled.
    let jobs = jobs.clone();
    actix_web::rt::spawn(async move {
        if let Ok(Some(job)) = jobs.store.get(&claim.id).await {
            deliver_webhook(&state, &jobs, &job).await;
        }
        let _ = jobs.store.ack(&claim).await;
        heartbeat.abort();
    });
}

fn job_error(e: &ApiError) -> JobError {
    JobError {
        status: e.status.as_u16(),
        kind: e.kind.to_string(),
        code: e.code.map(String::from),
        message: e.message.clone(),
    }
}

/// How a run ended.
enum RunEnd {
    Done(Outcome),
    Cancelled,
    /// The store could not be read: leave the job for a later run.
    Later,
}

/// Transcribe a job's audio.
async fn run(state: &AppState, jobs: &Jobs, job: &Job) -> RunEnd {
    let fields: HashMap<String, String> = job.request.fields.clone().into_iter().collect();
    let failed = |e: ApiError| RunEnd::Done(Outcome::Failed(job_error(&e)));
    let succeeded = |t: &crate::transcript::Transcript| {
        RunEnd::Done(Outcome::Succeeded(crate::cache::encode_transcript(t)))
    };
    let options = match routes::parse_options(Api::Native, &fields, &state.defaults) {
        Ok((o, _)) => o,
        Err(e) => return failed(e),
    };
    // (Checked when the job was created; a model since dropped from the config fails it.)
    let model = match routes::pick_model(state, &fields) {
        Ok(m) => m,
        Err(e) => return failed(e),
    };
    let audio = match &job.request.url {
        Some(u) => audio_from_url(state, u).await,
        None => match jobs.store.audio(&job.id).await {
            Ok(Some(a)) => Ok(a),
            Ok(None) => Err(ApiError::bad_request(
                "the job's audio is gone (it expired before the job ran)",
            )),
            Err(_) => return RunEnd::Later,
        },
    };
    let audio = match audio {
        Ok(a) if !a.is_empty() => a,
        Ok(_) => {
            return failed(ApiError::bad_request("the audio is empty (0 bytes)").code("empty_file"))
        }
        Err(e) => return failed(e),
    };
    // A full inference queue (or one that made the job wait too long) is this replica being
    // busy, not the job failing: try again while the job is still wanted, for up to 10 minutes.
    let t0 = std::time::Instant::now();
    loop {
        let submitted = worker::submit(&state.shared, model, audio.clone(), options.clone()).await;
        let result = match submitted.map(|(p, _)| p) {
            Ok(worker::Pending::Hit(t)) => Ok(t),
            Ok(worker::Pending::Job { rx, .. }) => match wait(jobs, &job.id, rx).await {
                Some(r) => r,
                None => return RunEnd::Cancelled,
            },
            Err(e) => Err(e),
        };
        match result {
            Ok(t) => return succeeded(&t),
            Err(e)
                if e.status == actix_web::http::StatusCode::SERVICE_UNAVAILABLE
                    && t0.elapsed() < Duration::from_secs(600) =>
            {
                tracing::info!(job_id = %job.id, error = %e.message, "inference busy: the job tries again");
                let pause = Duration::from_secs(e.retry_after_s.unwrap_or(2).clamp(1, 10));
                actix_web::rt::time::sleep(pause).await;
                if cancelled(jobs, &job.id).await {
                    return RunEnd::Cancelled;
                }
            }
            Err(e) => return failed(e),
        }
    }
}

async fn cancelled(jobs: &Jobs, id: &str) -> bool {
    matches!(jobs.store.get(id).await, Ok(Some(j)) if j.status == Status::Cancelled)
}

/// The job's transcript from the inference worker; `None` when the job is cancelled meanwhile
/// (dropping `rx` then stops the inference, unless another request waits for the same result).
async fn wait(
    jobs: &Jobs,
    id: &str,
    mut rx: tokio::sync::broadcast::Receiver<worker::JobResult>,
) -> Option<worker::JobResult> {
    loop {
        tokio::select! {
            r = rx.recv() => return Some(match r {
                Ok(r) => r,
                Err(_) => Err(ApiError::unavailable("the inference worker stopped", 5)),
            }),
            _ = actix_web::rt::time::sleep(Duration::from_secs(1)) => {
                if cancelled(jobs, id).await {
                    return None;
                }
            }
        }
    }
}

/// Deliver a finished job's webhook if it is still pending: retried with backoff while this
/// replica holds the claim; the state is recorded on the job after every attempt.
async fn deliver_webhook(state: &AppState, jobs: &Jobs, job: &Job) {
    let Some(mut w) = job.webhook.clone().filter(WebhookState::is_pending) else {
        return;
    };
    if !job.status.is_terminal() {
        return;
    }
    let m = &state.shared.metrics.async_jobs;
    let result = result_json(job);
    let body = serde_json::json!({
        "type": format!("job.{}", job.status.as_str()),
        "delivery_id": w.delivery_id,
        "job": job.view(result),
    })
    .to_string()
    .into_bytes();
    let body = Arc::new(body);
    loop {
        w.attempts += 1;
        let (url, secret, id, body2, allow) = (
            w.url.clone(),
            jobs.secret.clone(),
            w.delivery_id.clone(),
            body.clone(),
            state.urls.allow_private,
        );
        let attempt =
            web::block(move || webhook::attempt(&url, secret.as_bytes(), &id, &body2, allow))
                .await
                .unwrap_or(webhook::Attempt::Retry {
                    status: None,
                    error: "shutting down".into(),
                });
        match attempt {
            webhook::Attempt::Delivered(code) => {
                m.webhook_deliveries.with_label_values(&["delivered"]).inc();
                w.status = "delivered".into();
                w.last_status_code = Some(code);
                w.last_error = None;
                w.delivered_at = Some(crate::jobs::now());
                tracing::info!(job_id = %job.id, attempts = w.attempts, status = code, "webhook delivered");
                break;
            }
            webhook::Attempt::Refused(e) => {
                m.webhook_deliveries.with_label_values(&["failed"]).inc();
                w.status = "failed".into();
                w.last_error = Some(e.clone());
                tracing::warn!(job_id = %job.id, error = %e, "webhook refused: not delivered");
                break;
            }
            webhook::Attempt::Retry { status, error } => {
                w.last_status_code = status;
                w.last_error = Some(error.clone());
                let Some(wait) = webhook::BACKOFF_S.get(w.attempts as usize - 1) else {
                    m.webhook_deliveries.with_label_values(&["failed"]).inc();
                    w.status = "failed".into();
                    tracing::warn!(job_id = %job.id, attempts = w.attempts, error = %error, "webhook failed on every attempt: giving up");
                    break;
                };
                m.webhook_deliveries.with_label_values(&["retry"]).inc();
                tracing::info!(job_id = %job.id, attempt = w.attempts, retry_in_s = wait, error = %error, "webhook attempt failed: will retry");
                let _ = jobs.store.set_webhook(&job.id, &w).await;
                actix_web::rt::time::sleep(Duration::from_secs(*wait)).await;
            }
        }
    }
    let _ = jobs.store.set_webhook(&job.id, &w).await;
}
