//! `whisperd serve`: the actix-web service. Routes, middleware (request ids, auth, rate limit,
//! metrics, panic → 500), and graceful shutdown. Inference lives in `worker`.

mod auth;
mod disconnect;
mod error;
mod jobs;
mod metrics;
mod models;
mod realtime;
mod routes;
mod schema;
mod stream;
mod ui;
mod upload;
mod worker;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpMessage, HttpRequest, HttpServer, ResponseError};

pub use error::ApiError;

use crate::cache::ResultCache;
use crate::config::Config;

pub struct AppState {
    shared: Arc<worker::Shared>,
    api_keys: Arc<auth::ApiKeys>,
    limiter: auth::RateLimiter,
    in_flight: auth::InFlightLimiter,
    /// Realtime sessions open per client, and their limits.
    sessions: auth::InFlightLimiter,
    realtime: realtime::Limits,
    trusted_proxies: crate::net::TrustedProxies,
    max_upload_bytes: usize,
    /// Transcription options from the config, which request fields override.
    defaults: crate::TranscribeOptions,
    /// Async jobs (`None` when the job store could not be opened).
    jobs: Option<Arc<jobs::Jobs>>,
    /// Bounds on audio fetched from a URL and on webhook calls.
    urls: crate::net::fetch::Limits,
    /// Settings `/info` shows that live nowhere else at run time.
    static_info: StaticInfo,
}

struct StaticInfo {
    device: String,
    precision: String,
    batch_size: usize,
    max_queued_jobs: u64,
    models_memory_mb: u64,
    model_ttl_s: u64,
    cache_on: bool,
    ui: bool,
}

#[derive(Clone)]
struct RequestId(String);

/// Who is asking, as metrics may show it: `key:<hash prefix>` with API keys, else `anonymous`
/// (client addresses would give metrics unbounded label values).
#[derive(Clone)]
pub(crate) struct ClientLabel(pub String);

/// Who is asking, as limits count it: `key:<sha256>` with API keys, else `ip:<address>`.
#[derive(Clone)]
pub(crate) struct ClientId(pub String);

fn request_id(req: &HttpRequest) -> String {
    req.extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default()
}

fn new_request_id() -> String {
    format!("req_{:016x}", rand::random::<u64>())
}

/// Longest query string a handler sees (the form carries the options; a query is a convenience).
/// Request lines over 64 KiB never reach this point: the HTTP parser refuses them with a bare 400.
const MAX_QUERY_BYTES: usize = 8 * 1024;

/// Endpoints that never need a key: probes, metrics scrapers, and the web page's own files (the
/// page asks for the key and sends it with each API call).
fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/health" | "/ready" | "/metrics" | "/openapi.json" | "/info"
    ) || ui::is_asset(path)
}

/// Request id, authentication, rate limit, panic catching, metrics and the access log.
async fn edge(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let t0 = Instant::now();
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
        .map(String::from)
        .unwrap_or_else(new_request_id);
    req.extensions_mut().insert(RequestId(id.clone()));
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let path = req.path().to_string();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();

    let mut early: Option<ApiError> = None;
    if req.query_string().len() > MAX_QUERY_BYTES {
        early = Some(
            ApiError::new(
                actix_web::http::StatusCode::URI_TOO_LONG,
                "invalid_request_error",
                format!(
                    "the query string is {} bytes, over the limit of {MAX_QUERY_BYTES}; send options as form fields",
                    req.query_string().len()
                ),
            )
            .code("query_too_long"),
        );
    }
    let mut _permit: Option<auth::InFlightPermit> = None;
    if let Some(state) = &state {
        if !is_public(&path) && early.is_none() {
            let client = if !state.api_keys.enabled() {
                let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
                match req.peer_addr() {
                    Some(peer) => format!(
                        "ip:{}",
                        state.trusted_proxies.client_ip(
                            peer.ip(),
                            header("x-forwarded-for"),
                            header("forwarded")
                        )
                    ),
                    None => "ip:unknown".to_string(),
                }
            } else {
                let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
                // Browsers cannot set headers on a WebSocket: OpenAI's clients send the key as
                // the `openai-insecure-api-key.<key>` subprotocol instead.
                let keys = state.api_keys.snapshot();
                let key = auth::authorized(&keys, header("authorization")).or_else(|| {
                    auth::authorized_subprotocol(&keys, header("sec-websocket-protocol"))
                });
                match key {
                    Some(key) => format!("key:{}", crate::cache::audio_hash(key.as_bytes())),
                    None => {
                        early = Some(
                            ApiError::new(
                                actix_web::http::StatusCode::UNAUTHORIZED,
                                "invalid_request_error",
                                "missing or invalid API key (Authorization: Bearer KEY)",
                            )
                            .code("invalid_api_key"),
                        );
                        String::new()
                    }
                }
            };
            let label = match client.strip_prefix("key:") {
                Some(hash) => format!("key:{}", &hash[..hash.len().min(12)]),
                None => "anonymous".to_string(),
            };
            req.extensions_mut().insert(ClientLabel(label));
            req.extensions_mut().insert(ClientId(client.clone()));
            if early.is_none() {
                if let Err(wait) = state.limiter.check(&client) {
                    early = Some(
                        ApiError::new(
                            actix_web::http::StatusCode::TOO_MANY_REQUESTS,
                            "rate_limit_error",
                            "rate limit exceeded",
                        )
                        .retry_after(wait)
                        .code("rate_limit_exceeded"),
                    );
                }
            }
            if early.is_none() {
                _permit = state.in_flight.acquire(&client);
                if _permit.is_none() {
                    tracing::warn!(client = %client, "per-key in-flight cap reached: answering 429");
                    early = Some(
                        ApiError::new(
                            actix_web::http::StatusCode::TOO_MANY_REQUESTS,
                            "rate_limit_error",
                            "too many requests in progress for this API key; wait for one to finish",
                        )
                        .retry_after(1)
                        .code("too_many_requests_in_flight"),
                    );
                }
            }
        }
    }

    // One span per request (probes and scrapes excepted): the root of its trace, or a child of
    // the caller's when it sent a W3C `traceparent`.
    let span = if matches!(route.as_str(), "/health" | "/ready" | "/metrics") {
        tracing::Span::none()
    } else {
        let span = tracing::info_span!(
            "request",
            otel.name = %format!("{method} {route}"),
            otel.kind = "server",
            request_id = %id,
            http.request.method = %method,
            http.route = %route,
            http.response.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        // A request refused before any work (bad key, rate limit) does not follow the caller's
        // traceparent, so an anonymous client cannot force traces past otlp_sample_ratio.
        if early.is_none() {
            let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
            crate::telemetry::continue_trace(&span, header("traceparent"), header("tracestate"));
        }
        span
    };

    // (Handlers catch their own panics: the request cannot be cloned here, routing needs it unique.)
    let mut res = match early {
        Some(e) => req.into_response(e.error_response()),
        None => {
            use tracing::Instrument;
            next.call(req)
                .instrument(span.clone())
                .await?
                .map_into_boxed_body()
        }
    };
    if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&id) {
        res.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static("x-request-id"),
            v,
        );
    }
    let status = res.status().as_u16();
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    let secs = t0.elapsed().as_secs_f64();
    if let Some(state) = &state {
        state
            .shared
            .metrics
            .requests
            .with_label_values(&[&route, &status.to_string()])
            .inc();
        state
            .shared
            .metrics
            .request_seconds
            .with_label_values(&[&route])
            .observe(secs);
    }
    if route != "/health" && route != "/metrics" && route != "/ready" {
        tracing::info!(request_id = %id, %method, route, status, latency_s = secs, "request");
    }
    Ok(res)
}

/// Start the service and run until SIGTERM/SIGINT, then drain and return.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let api_keys = Arc::new(auth::ApiKeys::load(&cfg.api_keys, &cfg.api_keys_file)?);
    let metrics = metrics::Metrics::new()?;
    metrics.api_keys.set(api_keys.snapshot().len() as i64);
    let link = if cfg.redis_url.is_empty() {
        None
    } else {
        let link = crate::cluster::RedisLink::new(
            &cfg.redis_url,
            Duration::from_millis(cfg.redis_timeout_ms),
            metrics.cluster.clone(),
        )
        .map_err(anyhow::Error::msg)?;
        tracing::info!(replica = %link.replica, "redis configured: shared result cache, cross-replica single flight, shared job queue");
        Some(Arc::new(link))
    };
    let shared_cache = link.as_ref().filter(|_| cfg.cache_entries > 0).map(|l| {
        crate::cluster::cache::SharedCache::new(l.clone(), Duration::from_secs(cfg.cache_ttl_s))
    });
    let async_jobs = open_job_store(&cfg, link.clone());
    let models = open_models(&cfg)?;
    let shared = worker::Shared::new(
        models,
        ResultCache::new(
            cfg.cache_entries,
            (cfg.cache_mb as usize).saturating_mul(1 << 20),
        ),
        shared_cache,
        metrics,
        cfg.queue_size,
        Duration::from_secs(cfg.request_timeout_s),
        cfg.max_audio_s,
    );
    shared
        .metrics
        .build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION"), &shared.models.specs()[0].name])
        .set(1);
    models::load_default(shared.clone());
    actix_web::rt::spawn(models::unload_idle(shared.clone()));
    let state = web::Data::new(AppState {
        shared: shared.clone(),
        api_keys: api_keys.clone(),
        limiter: auth::RateLimiter::new(cfg.rate_limit_per_minute),
        in_flight: auth::InFlightLimiter::new(cfg.max_in_flight_per_key),
        sessions: auth::InFlightLimiter::new(cfg.realtime_max_sessions_per_key),
        realtime: realtime::Limits {
            max_session: Duration::from_secs(cfg.realtime_max_session_s.max(1)),
            idle_timeout: Duration::from_secs(cfg.realtime_idle_timeout_s.max(1)),
            beam_size: cfg.realtime_beam_size,
        },
        trusted_proxies: crate::net::TrustedProxies::parse(&cfg.trusted_proxies)
            .map_err(anyhow::Error::msg)?,
        max_upload_bytes: (cfg.max_upload_mb as usize).saturating_mul(1 << 20),
        defaults: cfg.transcribe_defaults(),
        jobs: async_jobs.clone(),
        urls: crate::net::fetch::Limits {
            allow_private: cfg.allow_private_urls,
            timeout: Duration::from_secs(cfg.url_timeout_s),
            max_bytes: (cfg.max_upload_mb as usize).saturating_mul(1 << 20),
        },
        static_info: StaticInfo {
            device: cfg.device.to_string(),
            precision: cfg.precision.as_str().to_string(),
            batch_size: cfg.batch_size,
            max_queued_jobs: cfg.max_queued_jobs,
            models_memory_mb: cfg.models_memory_mb,
            model_ttl_s: cfg.model_ttl_s,
            cache_on: cfg.cache_entries > 0,
            ui: cfg.ui,
        },
    });
    if let Some(j) = &async_jobs {
        jobs::start(state.clone(), j.clone(), cfg.job_workers);
    }
    if cfg.allow_private_urls {
        tracing::warn!("allow_private_urls = true: audio and webhook URLs may reach loopback, private and metadata addresses");
    }
    if !api_keys.enabled() {
        tracing::warn!("no API keys configured: every endpoint is open");
    } else if !cfg.api_keys_file.is_empty() {
        actix_web::rt::spawn(watch_api_keys(api_keys.clone(), shared.clone()));
    }
    let ui_on = cfg.ui;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(usize::MAX))
            .wrap(from_fn(edge))
            .route("/health", web::get().to(routes::health))
            .route("/ready", web::get().to(routes::ready))
            .route("/metrics", web::get().to(routes::metrics))
            .route("/openapi.json", web::get().to(schema::openapi_json))
            .route("/info", web::get().to(routes::info))
            .route("/v1/models", web::get().to(routes::models))
            .route("/v1/models/{model}", web::get().to(routes::model))
            .route("/detect-language", web::post().to(routes::detect_language))
            .route("/transcribe", web::post().to(routes::transcribe_native))
            .route(
                "/v1/audio/transcriptions",
                web::post().to(routes::openai_transcriptions),
            )
            .route(
                "/v1/audio/translations",
                web::post().to(routes::openai_translations),
            )
            .route("/v1/realtime", web::get().to(realtime::connect))
            .route("/v1/jobs", web::post().to(jobs::create))
            .route("/v1/jobs/{id}", web::get().to(jobs::get))
            .route("/v1/jobs/{id}", web::delete().to(jobs::cancel))
            .route("/v1/jobs/{id}/result", web::get().to(jobs::result))
            .configure(|c| ui::routes(c, ui_on))
            .default_service(web::to(|| async {
                ApiError::new(
                    actix_web::http::StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    "no such endpoint",
                )
                .error_response()
            }))
    })
    .on_connect(disconnect::remember_socket)
    .workers(cfg.http_workers)
    .disable_signals()
    .shutdown_timeout(cfg.drain_timeout_s)
    .bind((cfg.host.as_str(), cfg.port))?;
    for addr in server.addrs() {
        // Tests and operators read the bound address (port 0 picks a free one).
        tracing::info!(%addr, "listening");
        eprintln!("whisperd listening on http://{addr}");
    }
    let server = server.run();
    let handle = server.handle();
    let drain = shared.clone();
    let grace = Duration::from_secs(cfg.drain_grace_s);
    actix_web::rt::spawn(async move {
        wait_for_shutdown_signal().await;
        // Kubernetes takes a terminating pod out of its endpoints only some time after the
        // signal: keep serving (with /ready saying no) so requests still routed here succeed.
        drain.draining.store(true, Ordering::SeqCst);
        tracing::info!(
            grace_s = grace.as_secs(),
            "shutdown signal: draining; /ready now answers 503, requests are still accepted during the grace period"
        );
        actix_web::rt::time::sleep(grace).await;
        tracing::info!("grace period over: closing the listener, finishing in-flight requests");
        handle.stop(true).await;
    });
    server.await?;
    tracing::info!("stopped");
    Ok(())
}

/// An auxiliary model file: the configured path, else the first of `candidates` that exists;
/// none found while `required` stops the start with `missing` (`{looked}`: the candidates).
fn model_file(
    configured: &str,
    candidates: Vec<std::path::PathBuf>,
    required: bool,
    missing: &str,
) -> anyhow::Result<Option<std::path::PathBuf>> {
    if !configured.is_empty() {
        return Ok(Some(configured.into()));
    }
    let found = candidates.iter().find(|p| p.is_file()).cloned();
    if required && found.is_none() {
        anyhow::bail!(
            "{}",
            missing.replace("{looked}", &format!("{candidates:?}"))
        );
    }
    Ok(found)
}

/// The configured models (checked now; the default loads once the server runs) and the one
/// Silero VAD model they share. `vad = true` without a VAD model stops the start here.
fn open_models(cfg: &Config) -> anyhow::Result<models::Models> {
    let dirs = cfg.model_dirs();
    let vad_file = model_file(
        &cfg.vad_model,
        crate::engine::vad_model_candidates(&dirs[0]),
        cfg.vad,
        "vad = true but no Silero VAD model was found in {looked}: run `make model` (or python3 models/fetch.py silero-vad), set vad_model, or set vad = false",
    )?;
    let speaker_file = model_file(
        &cfg.speaker_model,
        crate::engine::diarizer_model_candidates(&dirs[0]),
        cfg.diarize,
        "diarize = true but no speaker model was found in {looked}: run `make model-ge2e` (or python3 models/fetch.py ge2e), set speaker_model, or set diarize = false",
    )?;
    models::Models::new(
        &dirs,
        cfg.model_aliases
            .iter()
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect(),
        models::LoadSettings {
            device: crate::engine::select_device(cfg.device)?,
            precision: cfg.precision,
            scheduler: crate::scheduler::SchedulerConfig {
                max_batch: cfg.batch_size,
                max_wait: Duration::from_millis(cfg.batch_wait_ms),
            },
            ttl: Duration::from_secs(cfg.model_ttl_s),
            budget: cfg.models_memory_mb.saturating_mul(1 << 20),
            beam: cfg.transcribe_defaults().beam,
        },
        vad_file,
        speaker_file,
    )
}

/// The job store: Redis when configured, else the SQLite file `jobs_db`. A store that cannot be
/// opened leaves the server up without jobs (their endpoints answer 503), with the reason logged.
fn open_job_store(
    cfg: &Config,
    link: Option<Arc<crate::cluster::RedisLink>>,
) -> Option<Arc<jobs::Jobs>> {
    use crate::jobs::{redis_queue::RedisStore, sqlite::SqliteStore, Retention, Store};
    let retention = Retention {
        job_ttl_s: cfg.job_ttl_s,
        max_queued_s: cfg.job_ttl_s.max(7 * 86_400),
        max_queued_jobs: cfg.max_queued_jobs,
        visibility_timeout_s: cfg.job_visibility_timeout_s,
    };
    let store = match link {
        Some(link) => Store::Redis(RedisStore::new(link, retention)),
        None => {
            let worker = format!("pid-{}", std::process::id());
            match SqliteStore::open(std::path::Path::new(&cfg.jobs_db), retention, worker) {
                Ok(s) => Store::Sqlite(s),
                Err(e) => {
                    tracing::error!(error = %e, jobs_db = %cfg.jobs_db, "cannot open the job store: /v1/jobs answers 503; point jobs_db at a writable volume");
                    return None;
                }
            }
        }
    };
    Some(jobs::Jobs::new(
        store,
        cfg.webhook_secret.clone(),
        Duration::from_secs(cfg.job_visibility_timeout_s),
    ))
}

/// How often `api_keys_file` is checked for changes (SIGHUP checks at once).
const KEYS_FILE_POLL: Duration = Duration::from_secs(2);

/// Re-read `api_keys_file` every [`KEYS_FILE_POLL`] and on SIGHUP. Polling the content (not
/// file events) also follows Kubernetes Secret volumes, which swap a symlink. Requests in
/// flight keep the key they were admitted with; the next request sees the new set.
async fn watch_api_keys(keys: Arc<auth::ApiKeys>, shared: Arc<worker::Shared>) {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let by_signal = match hup.as_mut() {
            Some(h) => tokio::select! {
                _ = h.recv() => true,
                _ = actix_web::rt::time::sleep(KEYS_FILE_POLL) => false,
            },
            None => {
                actix_web::rt::time::sleep(KEYS_FILE_POLL).await;
                false
            }
        };
        #[cfg(not(unix))]
        let by_signal = {
            actix_web::rt::time::sleep(KEYS_FILE_POLL).await;
            false
        };
        let m = &shared.metrics;
        match keys.reload() {
            Ok(Some(n)) => {
                m.api_keys.set(n as i64);
                m.api_key_reloads.with_label_values(&["changed"]).inc();
                if n == 0 {
                    tracing::warn!("API keys file reloaded: it lists no key, every request needing a key is refused until one is added");
                } else {
                    tracing::info!(keys = n, by_signal, "API keys file reloaded");
                }
            }
            Ok(None) => {
                if by_signal {
                    tracing::info!("SIGHUP: API keys file unchanged");
                }
            }
            Err(e) => {
                m.api_key_reloads.with_label_values(&["error"]).inc();
                tracing::error!(error = %e, "API keys file not reloaded: the keys in force stay as they were; fix the file");
            }
        }
    }
}

async fn wait_for_shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
