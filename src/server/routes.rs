//! Handlers: parse and validate the request, hand off to the worker, render the answer.
//! No transcription logic lives here.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};

use super::error::ApiError;
use super::upload::read_form;

/// Longest the body of an upload may take to arrive.
const UPLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
use super::worker::{self, Shared};
use super::AppState;
use crate::output::{Format, Granularities, RenderOptions, SubtitleOptions};
use crate::{Task, TranscribeOptions};

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "service", responses((status = 200, body = super::schema::Health)))]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(super::schema::Health { status: "ok" })
}

/// Readiness: the model is loaded and warm, the server is not draining and its queue not full.
#[utoipa::path(get, path = "/ready", tag = "service", responses(
    (status = 200, body = super::schema::Ready), (status = 503, body = super::schema::Ready)))]
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let s = &state.shared;
    let reason = if s.draining.load(Ordering::SeqCst) {
        Some("draining: the server is shutting down")
    } else if !s.ready.load(Ordering::SeqCst) {
        Some("loading: the model is loading or warming up")
    } else if s.queue_full() {
        Some("busy: the inference queue is full")
    } else {
        None
    };
    match reason {
        Some(r) => HttpResponse::ServiceUnavailable().json(super::schema::Ready {
            ready: false,
            reason: r,
        }),
        None => HttpResponse::Ok().json(super::schema::Ready {
            ready: true,
            reason: "ok",
        }),
    }
}

/// What this server is and runs: version, models, device, numerics, limits, features.
#[utoipa::path(get, path = "/info", tag = "service", responses((status = 200, body = super::schema::Info)))]
pub async fn info(state: web::Data<AppState>) -> HttpResponse {
    use super::schema::{Decoding, Features, Info, Limits, ModelInfo, Numerics};
    let models: Vec<ModelInfo> = state
        .shared
        .models
        .status()
        .into_iter()
        .map(|m| ModelInfo {
            name: m.name,
            state: m.state,
            busy: m.busy,
            memory_mb: m.memory >> 20,
            layout: m.engine.as_ref().map(|e| {
                serde_json::to_value(e.model.layout)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default()
            }),
            multilingual: m.engine.as_ref().map(|e| e.is_multilingual()),
            dims: m
                .engine
                .as_ref()
                .and_then(|e| serde_json::to_value(&e.model.dims).ok()),
        })
        .collect();
    let s = &state.static_info;
    HttpResponse::Ok().json(Info {
        version: env!("CARGO_PKG_VERSION"),
        git_commit: option_env!("WHISPERD_GIT_COMMIT").unwrap_or("unknown"),
        model: models[0].clone(),
        models,
        device: s.device.clone(),
        numerics: Numerics {
            precision: s.precision.clone(),
            instruction_set: whisperd_kernels::isa::Tier::best().name(),
        },
        decoding: Decoding {
            beam_size: state.defaults.beam.beam_size,
            patience: state.defaults.beam.patience,
            length_penalty: state.defaults.beam.length_penalty,
            temperatures: state.defaults.temperatures.clone(),
            best_of: state.defaults.best_of,
            realtime_beam_size: state.realtime.beam_size,
        },
        limits: Limits {
            max_upload_mb: (state.max_upload_bytes >> 20) as u64,
            max_audio_s: state.shared.max_audio_s,
            queue_size: state.shared.queue_size,
            batch_size: s.batch_size,
            request_timeout_s: state.shared.request_timeout.as_secs(),
            max_queued_jobs: s.max_queued_jobs,
            models_memory_mb: s.models_memory_mb,
            model_ttl_s: s.model_ttl_s,
        },
        features: Features {
            cache: match (s.cache_on, state.shared.shared_cache.is_some()) {
                (false, _) => "off",
                (true, true) => "memory+redis",
                (true, false) => "memory",
            },
            jobs: state.jobs.as_ref().map_or("off", |j| j.store.kind()),
            vad: state.shared.models.vad.is_some(),
            auth: state.api_keys.enabled(),
            private_urls: state.urls.allow_private,
            ui: s.ui,
        },
    })
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "service", responses((status = 200, body = String, content_type = "text/plain")))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.shared.metrics.render())
}

fn model_objects(state: &AppState) -> Vec<super::schema::ModelObject> {
    let created = state.shared.started_unix;
    state
        .shared
        .models
        .names()
        .into_iter()
        .map(|id| super::schema::ModelObject {
            id,
            object: "model",
            created,
            owned_by: "whisperd",
        })
        .collect()
}

/// The models a request's `model` may name (OpenAI's `ListModelsResponse`).
#[utoipa::path(get, path = "/v1/models", tag = "openai", responses((status = 200, body = super::schema::ModelList)))]
pub async fn models(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(super::schema::ModelList {
        object: "list",
        data: model_objects(&state),
    })
}

/// One model (OpenAI's `Model`).
#[utoipa::path(get, path = "/v1/models/{model}", tag = "openai", params(("model" = String, Path)),
    responses((status = 200, body = super::schema::ModelObject), (status = 404, body = super::error::ErrorResponse)))]
pub async fn model(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    model_objects(&state)
        .into_iter()
        .find(|m| m.id == id.as_str())
        .map(|m| HttpResponse::Ok().json(m))
        .ok_or_else(|| model_not_found(&id))
}

fn model_not_found(id: &str) -> ApiError {
    ApiError::new(
        actix_web::http::StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("the model `{id}` does not exist (GET /v1/models lists the names this server answers to)"),
    )
    .param("model")
    .code("model_not_found")
}

/// The model a request's `model` (field or query; optional) names: one of the models' names or
/// an alias of the default; none is the default. An unknown name is a 404 `model_not_found`, as
/// OpenAI answers it, rather than a silent answer from a model the caller did not ask for.
pub(super) fn pick_model(
    state: &AppState,
    fields: &HashMap<String, String>,
) -> Result<usize, ApiError> {
    let asked = fields.get("model").map(String::as_str);
    state
        .shared
        .models
        .resolve(asked)
        .ok_or_else(|| model_not_found(asked.unwrap_or_default().trim()))
}

/// Which API a request came in through: it decides defaults, allowed formats and body shapes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Api {
    Native,
    OpenAiTranscriptions,
    OpenAiTranslations,
}

fn parse_bool(name: &'static str, v: &str) -> Result<bool, ApiError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(
            ApiError::bad_request(format!("`{name}` must be true or false, not `{v}`")).param(name),
        ),
    }
}

/// A comma-separated list is tried as given. One number follows OpenAI's rule: temperature 0
/// means "start greedy and fall back"; t > 0 starts at t.
fn temperatures(v: &str) -> Result<Vec<f32>, ApiError> {
    if v.contains(',') {
        return crate::decode::parse_temperatures(v)
            .map_err(|e| ApiError::bad_request(format!("temperature: {e}")).param("temperature"));
    }
    let t: f32 = v.trim().parse().map_err(|_| {
        ApiError::bad_request(format!("temperature must be a number, not `{v}`"))
            .param("temperature")
    })?;
    if !(0.0..=1.0).contains(&t) {
        return Err(
            ApiError::bad_request(format!("temperature must be between 0 and 1, not {t}"))
                .param("temperature"),
        );
    }
    let mut out = vec![t];
    let mut next = t + 0.2;
    while next <= 1.0 + 1e-6 {
        out.push(next.min(1.0));
        next += 0.2;
    }
    Ok(out)
}

/// A fallback threshold field: a number, or `none` to turn the check off.
fn threshold(
    f: &HashMap<String, String>,
    name: &'static str,
) -> Result<Option<Option<f32>>, ApiError> {
    match f.get(name).filter(|v| !v.trim().is_empty()) {
        None => Ok(None),
        Some(v) => crate::decode::parse_threshold(v)
            .map(Some)
            .map_err(|e| ApiError::bad_request(format!("`{name}` {e}")).param(name)),
    }
}

fn number<T: std::str::FromStr>(
    f: &HashMap<String, String>,
    name: &'static str,
) -> Result<Option<T>, ApiError> {
    match f.get(name).map(|v| v.trim()).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!("`{name}` must be a number, not `{v}`")).param(name)
        }),
    }
}

/// `/transcribe`'s VAD fields: `vad` (true/false) and faster-whisper's knobs with a `vad_` prefix.
fn vad_fields(f: &HashMap<String, String>, v: &mut crate::vad::VadOptions) -> Result<(), ApiError> {
    if let Some(on) = f.get("vad").filter(|x| !x.trim().is_empty()) {
        v.enabled = parse_bool("vad", on)?;
    }
    if let Some(x) = number(f, "vad_threshold")? {
        v.threshold = x;
    }
    if let Some(x) = number(f, "vad_neg_threshold")? {
        v.neg_threshold = Some(x);
    }
    if let Some(x) = number(f, "vad_min_speech_duration_ms")? {
        v.min_speech_duration_ms = x;
    }
    if let Some(x) = number(f, "vad_max_speech_duration_s")? {
        v.max_speech_duration_s = x;
    }
    if let Some(x) = number(f, "vad_min_silence_duration_ms")? {
        v.min_silence_duration_ms = x;
    }
    if let Some(x) = number(f, "vad_speech_pad_ms")? {
        v.speech_pad_ms = x;
    }
    if let Some(g) = threshold(f, "vad_gate_db")? {
        v.gate_db = g;
    }
    check_vad(v)
}

fn check_vad(v: &crate::vad::VadOptions) -> Result<(), ApiError> {
    v.check()
        .map_err(|(name, msg)| ApiError::bad_request(format!("`{name}` {msg}")).param(name))
}

/// OpenAI's `chunking_strategy`: `"auto"` (VAD with the server's settings) or a `server_vad`
/// object (`threshold`, `prefix_padding_ms`, `silence_duration_ms`, OpenAI's defaults 0.5, 300,
/// 200), sent as a JSON string or as `chunking_strategy[key]` fields (how the `openai` client
/// encodes an object in a form).
fn chunking_strategy(
    f: &HashMap<String, String>,
    v: &mut crate::vad::VadOptions,
) -> Result<(), ApiError> {
    const P: &str = "chunking_strategy";
    let bad = |m: String| ApiError::bad_request(m).param(P);
    let mut obj: serde_json::Map<String, serde_json::Value> = serde_json::Map::new();
    if let Some(raw) = f.get(P).map(|s| s.trim()).filter(|s| !s.is_empty()) {
        if raw == "auto" || raw == "\"auto\"" {
            v.enabled = true;
            return Ok(());
        }
        if raw == "null" {
            return Ok(());
        }
        match serde_json::from_str::<serde_json::Value>(raw) {
            Ok(serde_json::Value::Object(m)) => obj = m,
            Ok(serde_json::Value::String(s)) if s == "auto" => {
                v.enabled = true;
                return Ok(());
            }
            _ => {
                return Err(bad(format!(
                    "`{P}` must be \"auto\" or an object {{\"type\": \"server_vad\", ...}}, not `{raw}`"
                )))
            }
        }
    }
    for (k, val) in f {
        if let Some(key) = k
            .strip_prefix("chunking_strategy[")
            .and_then(|r| r.strip_suffix(']'))
        {
            let parsed = serde_json::from_str::<serde_json::Value>(val.trim())
                .unwrap_or_else(|_| serde_json::Value::String(val.clone()));
            obj.insert(key.to_string(), parsed);
        }
    }
    if obj.is_empty() {
        return Ok(());
    }
    if obj.get("type").and_then(|t| t.as_str()) != Some("server_vad") {
        return Err(bad(format!("`{P}.type` must be \"server_vad\"")));
    }
    let num = |key: &str| -> Result<Option<f64>, ApiError> {
        match obj.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(x) => x
                .as_f64()
                .filter(|n| n.is_finite())
                .map(Some)
                .ok_or_else(|| bad(format!("`{P}.{key}` must be a number"))),
        }
    };
    let ms = |key: &str, default: u32| -> Result<u32, ApiError> {
        match num(key)? {
            None => Ok(default),
            Some(n) if (0.0..=600_000.0).contains(&n) && n.fract() == 0.0 => Ok(n as u32),
            Some(_) => Err(bad(format!(
                "`{P}.{key}` must be a whole number of milliseconds between 0 and 600000"
            ))),
        }
    };
    for key in obj.keys() {
        if !matches!(
            key.as_str(),
            "type" | "threshold" | "prefix_padding_ms" | "silence_duration_ms"
        ) {
            return Err(bad(format!("`{P}` has no field `{key}`")));
        }
    }
    v.enabled = true;
    v.threshold = match num("threshold")? {
        None => 0.5,
        Some(t) if (0.0..=1.0).contains(&t) => t as f32,
        Some(_) => return Err(bad(format!("`{P}.threshold` must be between 0 and 1"))),
    };
    v.neg_threshold = None;
    v.speech_pad_ms = ms("prefix_padding_ms", 300)?;
    v.min_silence_duration_ms = ms("silence_duration_ms", 200)?;
    check_vad(v)
}

/// `timestamp_granularities[]` (`segment`, `word`; repeated fields arrive comma-joined) and the
/// subtitle layout fields (`max_line_width`, `max_line_count`, `max_words_per_line`,
/// `highlight_words`, as openai-whisper's CLI names them).
pub(super) fn render_options(f: &HashMap<String, String>) -> Result<RenderOptions, ApiError> {
    const G: &str = "timestamp_granularities[]";
    let mut granularities = None;
    if let Some(g) = f
        .get("timestamp_granularities[]")
        .or_else(|| f.get("timestamp_granularities"))
    {
        let mut parsed = Granularities {
            segment: false,
            word: false,
        };
        for part in g.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "segment" => parsed.segment = true,
                "word" => parsed.word = true,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown timestamp granularity `{other}` (expected segment or word)"
                    ))
                    .param(G))
                }
            }
        }
        if parsed.segment || parsed.word {
            granularities = Some(parsed);
        }
    }
    let mut logprobs = false;
    if let Some(inc) = f.get("include[]").or_else(|| f.get("include")) {
        for part in inc.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "logprobs" => logprobs = true,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown include value `{other}` (expected logprobs)"
                    ))
                    .param("include[]"))
                }
            }
        }
    }
    let count = |name: &'static str| -> Result<Option<usize>, ApiError> { number(f, name) };
    let subtitles = SubtitleOptions {
        max_line_width: count("max_line_width")?,
        max_line_count: count("max_line_count")?,
        max_words_per_line: count("max_words_per_line")?,
        highlight_words: match f.get("highlight_words").filter(|h| !h.trim().is_empty()) {
            Some(h) => parse_bool("highlight_words", h)?,
            None => false,
        },
    };
    subtitles
        .check()
        .map_err(|(param, message)| ApiError::bad_request(message).param(param))?;
    Ok(RenderOptions {
        subtitles,
        file_id: None,
        granularities,
        logprobs,
    })
}

/// `defaults`: the server's configured options, which the fields override.
pub(super) fn parse_options(
    api: Api,
    f: &HashMap<String, String>,
    defaults: &TranscribeOptions,
) -> Result<(TranscribeOptions, Format), ApiError> {
    let mut o = defaults.clone();
    if let Some(l) = f.get("language").filter(|l| !l.trim().is_empty()) {
        o.language = Some(l.clone());
    }
    o.task = match api {
        Api::OpenAiTranslations => Task::Translate,
        Api::OpenAiTranscriptions => Task::Transcribe,
        Api::Native => match f.get("task") {
            Some(t) => t
                .parse()
                .map_err(|e: String| ApiError::bad_request(e).param("task"))?,
            None => Task::Transcribe,
        },
    };
    if api == Api::OpenAiTranslations {
        o.language = None; // OpenAI's translations endpoint takes no language
    }
    if api != Api::OpenAiTranslations {
        o.languages = list_field(f, "languages");
    }
    o.keywords = list_field(f, "keywords");
    if let Some(p) = f.get("prompt").filter(|p| !p.trim().is_empty()) {
        o.initial_prompt = Some(p.clone());
    }
    if let Some(t) = f.get("temperature").filter(|t| !t.trim().is_empty()) {
        o.temperatures = temperatures(t)?;
    }
    if let Some(b) = f.get("best_of").filter(|b| !b.trim().is_empty()) {
        o.best_of = b.trim().parse().map_err(|_| {
            ApiError::bad_request(format!("`best_of` must be a whole number, not `{b}`"))
                .param("best_of")
        })?;
    }
    // Beam search (not in OpenAI's API; accepted on every endpoint, as speaches does).
    if let Some(b) = number(f, "beam_size")? {
        o.beam.beam_size = b;
    }
    if let Some(p) = number(f, "patience")? {
        o.beam.patience = p;
    }
    if let Some(l) = f.get("length_penalty").filter(|l| !l.trim().is_empty()) {
        o.beam.length_penalty = crate::decode::parse_length_penalty(l).map_err(|e| {
            ApiError::bad_request(format!("`length_penalty` {e}")).param("length_penalty")
        })?;
    }
    if let Some(v) = threshold(f, "compression_ratio_threshold")? {
        o.compression_ratio_threshold = v;
    }
    if let Some(v) = threshold(f, "logprob_threshold")? {
        o.logprob_threshold = v;
    }
    if let Some(v) = threshold(f, "no_speech_threshold")? {
        o.no_speech_threshold = v;
    }
    if let Some(c) = f
        .get("condition_on_previous_text")
        .filter(|c| !c.trim().is_empty())
    {
        o.condition_on_previous_text = parse_bool("condition_on_previous_text", c)?;
    }
    if let Some(ts) = f.get("timestamps") {
        o.timestamps = parse_bool("timestamps", ts)?;
    }
    match api {
        Api::Native => vad_fields(f, &mut o.vad)?,
        // OpenAI: one block unless `chunking_strategy` asks for VAD; the gate still runs.
        Api::OpenAiTranscriptions | Api::OpenAiTranslations => {
            o.vad.enabled = false;
            chunking_strategy(f, &mut o.vad)?;
        }
    }
    if let Some(w) = f.get("word_timestamps").filter(|w| !w.trim().is_empty()) {
        o.word_timestamps = parse_bool("word_timestamps", w)?;
    }
    let render = render_options(f)?;
    if render.granularities.is_some_and(|g| g.word) || render.subtitles.needs_words() {
        o.word_timestamps = true;
    }
    let format = response_format(api, f)?;
    diarize_fields(f, format, &mut o)?;
    if render.logprobs && format != Format::Json {
        return Err(
            ApiError::bad_request("include[]=logprobs needs response_format=json")
                .param("include[]"),
        );
    }
    Ok((o, format))
}

/// `diarize`, `num_speakers`, `min_speakers`, `max_speakers` (any count, or a format made of
/// speaker labels, turns diarization on; `diarize=false` with one of those is refused), and
/// `channels` (`split`: speakers are the channels, so diarization stays off).
fn diarize_fields(
    f: &HashMap<String, String>,
    format: Format,
    o: &mut TranscribeOptions,
) -> Result<(), ApiError> {
    if let Some(c) = f.get("channels").filter(|c| !c.trim().is_empty()) {
        o.channels = c
            .parse()
            .map_err(|e: String| ApiError::bad_request(e).param("channels"))?;
    }
    let asked = match f.get("diarize").filter(|d| !d.trim().is_empty()) {
        Some(d) => Some(parse_bool("diarize", d)?),
        None => None,
    };
    let counts = crate::diarize::DiarizeOptions {
        num_speakers: number(f, "num_speakers")?,
        min_speakers: number(f, "min_speakers")?,
        max_speakers: number(f, "max_speakers")?,
        known: Vec::new(),
    };
    let wants_counts = counts != crate::diarize::DiarizeOptions::default();
    if o.channels == crate::audio::Channels::Split && asked != Some(true) && !wants_counts {
        // The channels are the speakers: a configured `diarize` or a format of speaker labels
        // asks for nothing more. (Asked for outright, the engine's option check refuses it.)
        o.diarize = None;
        return Ok(());
    }
    let on = asked.unwrap_or(o.diarize.is_some()) || format.needs_speakers() || wants_counts;
    if asked == Some(false) && (format.needs_speakers() || wants_counts) {
        return Err(ApiError::bad_request(
            "diarize=false, but the speaker counts or response_format ask for speakers",
        )
        .param("diarize"));
    }
    if !on {
        o.diarize = None;
        return Ok(());
    }
    counts
        .check()
        .map_err(|(param, message)| ApiError::bad_request(message).param(param))?;
    o.diarize = Some(counts);
    Ok(())
}

/// Longest known speaker reference clip, in seconds.
const MAX_REFERENCE_S: f64 = 30.0;

/// `known_speaker_names[]` with `known_speaker_references[]` (data URLs of short clips): each
/// clip's voice, so that found speakers take these names. Turns diarization on.
async fn known_speakers(
    state: &AppState,
    f: &HashMap<String, String>,
    o: &mut TranscribeOptions,
) -> Result<(), ApiError> {
    const REFS: &str = "known_speaker_references";
    let names = list_field(f, "known_speaker_names");
    let refs = data_urls(
        f.get("known_speaker_references[]")
            .or_else(|| f.get(REFS))
            .map_or("", String::as_str),
    );
    if names.is_empty() && refs.is_empty() {
        return Ok(());
    }
    if names.len() != refs.len() {
        return Err(ApiError::bad_request(format!(
            "one reference clip per name: {} names, {} clips",
            names.len(),
            refs.len()
        ))
        .param(REFS));
    }
    if names.len() > crate::diarize::pipeline::MAX_KNOWN_SPEAKERS {
        return Err(ApiError::bad_request(format!(
            "at most {} known speakers",
            crate::diarize::pipeline::MAX_KNOWN_SPEAKERS
        ))
        .param("known_speaker_names"));
    }
    if f.get("diarize")
        .is_some_and(|d| parse_bool("diarize", d).ok() == Some(false))
    {
        return Err(
            ApiError::bad_request("diarize=false, but known speakers were given").param("diarize"),
        );
    }
    let Some(diarizer) = state.shared.models.diarizer.clone() else {
        return Err(ApiError::bad_request(
            "this server has no speaker model (ge2e.safetensors; `make model-ge2e` fetches it)",
        )
        .param("diarize"));
    };
    let mut clips = Vec::with_capacity(refs.len());
    for (i, r) in refs.iter().enumerate() {
        clips.push(
            decode_data_url(r)
                .map_err(|m| ApiError::bad_request(format!("{REFS}[{i}]: {m}")).param(REFS))?,
        );
    }
    let vad = state.shared.models.vad.clone();
    let known = web::block(move || {
        clips
            .into_iter()
            .zip(names)
            .enumerate()
            .map(|(i, (bytes, name))| {
                let bad = |m: String| {
                    ApiError::bad_request(format!("{REFS}[{i}] ({name}): {m}")).param(REFS)
                };
                let pcm = crate::Engine::load_audio_within(bytes, Some(MAX_REFERENCE_S))
                    .map_err(|e| bad(format!("undecodable reference clip: {e}")))?;
                if pcm.duration_s() < 1.0 {
                    return Err(bad("the clip is shorter than 1 s".into()));
                }
                let features = diarizer
                    .features(&pcm.samples, vad.as_deref())
                    .map_err(|e| bad(e.to_string()))?;
                let embedded = diarizer.embed(&features).map_err(|e| bad(e.to_string()))?;
                let embedding = crate::diarize::pipeline::mean_embedding(&embedded)
                    .ok_or_else(|| bad("no speech in the clip".into()))?;
                Ok(crate::diarize::pipeline::KnownSpeaker { name, embedding })
            })
            .collect::<Result<Vec<_>, ApiError>>()
    })
    .await
    .map_err(|_| ApiError::unavailable("the server is shutting down", 5))??;
    o.diarize.get_or_insert_with(Default::default).known = known;
    Ok(())
}

/// Data URLs from a form field whose repeats were joined by commas (a data URL has one comma,
/// after its header; base64 has none).
fn data_urls(joined: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for part in joined.split(',') {
        let part = part.trim();
        match out.last_mut() {
            Some(last) if !part.starts_with("data:") => {
                last.push(',');
                last.push_str(part);
            }
            _ if part.is_empty() => {}
            _ => out.push(part.to_string()),
        }
    }
    out
}

/// The bytes of a `data:<type>;base64,<payload>` URL.
fn decode_data_url(url: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let (header, payload) = url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(','))
        .ok_or("expected a data URL (data:audio/wav;base64,…)")?;
    if !header.ends_with(";base64") {
        return Err("expected a base64 data URL (data:<type>;base64,…)".into());
    }
    base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .map_err(|e| format!("bad base64: {e}"))
}

fn response_format(api: Api, f: &HashMap<String, String>) -> Result<Format, ApiError> {
    Ok(
        match f
            .get("response_format")
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
        {
            None => Format::Json,
            Some(s) => {
                let fmt: Format = s
                    .parse()
                    .map_err(|e: String| ApiError::bad_request(e).param("response_format"))?;
                if api != Api::Native && matches!(fmt, Format::Tsv | Format::Rttm) {
                    return Err(ApiError::bad_request(
                    "response_format must be one of json, text, srt, verbose_json, vtt, diarized_json",
                )
                .param("response_format"));
                }
                fmt
            }
        },
    )
}

/// Transcribe (or translate) an upload or a URL: whisperd's own API, with every option.
#[utoipa::path(post, path = "/transcribe", tag = "transcription",
    request_body(content = super::schema::TranscriptionForm, content_type = "multipart/form-data"),
    responses(super::schema::TranscriptionAnswers))]
pub async fn transcribe_native(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    handle(Api::Native, req, body, state).await
}

/// OpenAI's `createTranscription`.
#[utoipa::path(post, path = "/v1/audio/transcriptions", tag = "openai",
    request_body(content = super::schema::TranscriptionForm, content_type = "multipart/form-data"),
    responses(super::schema::TranscriptionAnswers))]
pub async fn openai_transcriptions(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    handle(Api::OpenAiTranscriptions, req, body, state).await
}

/// OpenAI's `createTranslation` (to English).
#[utoipa::path(post, path = "/v1/audio/translations", tag = "openai",
    request_body(content = super::schema::TranscriptionForm, content_type = "multipart/form-data"),
    responses(super::schema::TranscriptionAnswers))]
pub async fn openai_translations(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    handle(Api::OpenAiTranslations, req, body, state).await
}

/// A streamed request answers like any other until its job is queued: audio that cannot be
/// decoded, a full queue or a result that comes first give the plain response, not a stream.
async fn accepted(pending: worker::Pending) -> Result<worker::Pending, ApiError> {
    let worker::Pending::Job { mut rx, progress } = pending else {
        return Ok(pending);
    };
    tokio::select! {
        _ = progress.accepted() => Ok(worker::Pending::Job { rx, progress }),
        r = rx.recv() => match r {
            Ok(r) => r.map(worker::Pending::Hit),
            Err(_) => Err(ApiError::unavailable("the inference worker stopped", 5)),
        },
    }
}

/// `stream=true`: which events to send, after checking the request can be streamed (`None`: an
/// ordinary response).
fn stream_flavor(
    api: Api,
    fields: &HashMap<String, String>,
    format: Format,
    task: Task,
) -> Result<Option<super::stream::Flavor>, ApiError> {
    let Some(v) = fields.get("stream") else {
        return Ok(None);
    };
    if !parse_bool("stream", v)? {
        return Ok(None);
    }
    let render = render_options(fields)?;
    match api {
        Api::OpenAiTranslations => Err(ApiError::bad_request(
            "stream is not supported on /v1/audio/translations (as in OpenAI's API)",
        )
        .param("stream")),
        Api::OpenAiTranscriptions if matches!(format, Format::Json | Format::Text) => {
            Ok(Some(super::stream::Flavor::OpenAi {
                logprobs: render.logprobs,
            }))
        }
        Api::OpenAiTranscriptions => Err(ApiError::bad_request(
            "stream=true sends transcript.text.* events: response_format must be json or text",
        )
        .param("stream")),
        Api::Native if matches!(format, Format::Json | Format::VerboseJson) => {
            Ok(Some(super::stream::Flavor::Native {
                format,
                task,
                render: RenderOptions {
                    granularities: None,
                    ..render
                },
            }))
        }
        Api::Native => Err(ApiError::bad_request(
            "stream=true sends JSON events: response_format must be json or verbose_json",
        )
        .param("stream")),
    }
}

/// A request's fields (query parameters, then form fields over them) and its uploaded file
/// (`None` when there is none), read within `UPLOAD_TIMEOUT`.
pub(super) async fn read_request(
    req: &HttpRequest,
    body: web::Payload,
    state: &AppState,
) -> Result<(HashMap<String, String>, Option<Vec<u8>>), ApiError> {
    let mut fields: HashMap<String, String> =
        web::Query::<HashMap<String, String>>::from_query(req.query_string())
            .map(|q| q.into_inner())
            .map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))?;
    // A body that stops arriving (slow or stalled client) must not hold the request forever.
    let upload =
        actix_web::rt::time::timeout(UPLOAD_TIMEOUT, read_form(req, body, state.max_upload_bytes))
            .await
            .map_err(|_| {
                tracing::warn!(
                    timeout_s = UPLOAD_TIMEOUT.as_secs(),
                    "upload not complete in time"
                );
                ApiError::new(
                    actix_web::http::StatusCode::REQUEST_TIMEOUT,
                    "invalid_request_error",
                    "the upload did not complete in time",
                )
            })??;
    tracing::debug!(
        bytes = upload.file.as_ref().map_or(0, Vec::len),
        "upload read"
    );
    fields.extend(upload.fields);
    Ok((fields, upload.file))
}

/// `POST /detect-language`: the language of the first 30 s of speech, among `languages[]` when
/// given, through the same queue, cache and single flight as transcriptions.
#[utoipa::path(post, path = "/detect-language", tag = "transcription",
    request_body(content = super::schema::DetectLanguageForm, content_type = "multipart/form-data"),
    responses((status = 200, body = super::schema::DetectedLanguage), (status = 400, description = "A bad field (named in `param`)", body = super::error::ErrorResponse), (status = 401, description = "Missing or wrong API key", body = super::error::ErrorResponse), (status = 413, description = "Upload or audio too long", body = super::error::ErrorResponse), (status = 429, description = "Rate or in-flight limit", body = super::error::ErrorResponse), (status = 503, description = "Loading, draining or busy (Retry-After)", body = super::error::ErrorResponse)))]
pub async fn detect_language(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let shared: &Arc<Shared> = &state.shared;
    let _in_flight = admit(shared)?;
    let (fields, file) = read_request(&req, body, &state).await?;
    super::schema::check_fields(super::schema::Form::DetectLanguage, &fields)?;
    let model = pick_model(&state, &fields)?;
    let file = file.filter(|f| !f.is_empty()).ok_or_else(|| {
        ApiError::bad_request("no audio: send it in multipart field `file`")
            .param("file")
            .code("missing_file")
    })?;
    let languages = list_field(&fields, "languages");
    let options = TranscribeOptions {
        language: None,
        languages,
        language_detection_only: true,
        ..state.defaults.clone()
    };
    let client = req.conn_data::<super::disconnect::ClientSocket>().copied();
    let (t, cache, _) = worker::transcribe(shared, model, file, options, client).await?;
    let top: Vec<_> = t
        .language_probabilities
        .iter()
        .flatten()
        .take(5)
        .cloned()
        .collect();
    Ok(HttpResponse::Ok()
        .insert_header(("X-Cache", cache.as_str()))
        .json(super::schema::DetectedLanguage {
            language: t.language.clone(),
            probability: top.first().map_or(0.0, |p| p.probability),
            top,
        }))
}

/// A request may start once the model is loaded; it counts as in flight until the guard drops.
fn admit(shared: &Shared) -> Result<InFlight<'_>, ApiError> {
    if !shared.ready.load(Ordering::SeqCst) {
        return Err(ApiError::unavailable("the model is still loading", 5));
    }
    shared.metrics.in_flight.inc();
    Ok(InFlight(shared))
}

/// A list field: repeated `name[]` fields (joined with commas on upload) or one comma-separated
/// `name` field.
fn list_field(f: &HashMap<String, String>, name: &str) -> Vec<String> {
    f.get(&format!("{name}[]"))
        .or_else(|| f.get(name))
        .map(|v| {
            v.split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

struct InFlight<'a>(&'a Shared);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.metrics.in_flight.dec();
    }
}

/// Runs `handle_inner`; a panic anywhere in it becomes a 500 naming the request id.
async fn handle(
    api: Api,
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    use futures_util::FutureExt;
    let id = super::request_id(&req);
    match std::panic::AssertUnwindSafe(handle_inner(api, req, body, state))
        .catch_unwind()
        .await
    {
        Ok(r) => r,
        Err(_) => {
            tracing::error!(request_id = %id, "handler panicked");
            Err(ApiError::internal(&id))
        }
    }
}

async fn handle_inner(
    api: Api,
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let shared: &Arc<Shared> = &state.shared;
    // While draining, requests are still served: the listener stays open only for the grace
    // period, so whatever arrives is work a load balancer sent before it saw the pod going.
    let _in_flight = admit(shared)?;

    // Query parameters first, form fields override them.
    let (fields, file) = read_request(&req, body, &state).await?;
    super::schema::check_fields(super::schema::Form::Transcription, &fields)?;
    let model = pick_model(&state, &fields)?;
    let url = fields.get("url").filter(|u| !u.trim().is_empty());
    let (mut options, format) = parse_options(api, &fields, &state.defaults)?;
    known_speakers(&state, &fields, &mut options).await?;
    let file = match (file, url) {
        (Some(_), Some(_)) => {
            return Err(
                ApiError::bad_request("send the audio as `file` or as `url`, not both")
                    .param("url"),
            )
        }
        (Some(f), None) => f,
        (None, Some(u)) => super::jobs::audio_from_url(&state, u).await?,
        (None, None) => {
            return Err(ApiError::bad_request(
                "no audio: send it in multipart field `file` (or its `url`)",
            )
            .param("file")
            .code("missing_file"))
        }
    };
    if file.is_empty() {
        return Err(
            ApiError::bad_request("the uploaded file is empty (0 bytes)")
                .param("file")
                .code("empty_file"),
        );
    }
    let upload_bytes = file.len();
    let t0 = std::time::Instant::now();
    let client = req.conn_data::<super::disconnect::ClientSocket>().copied();
    if let Some(flavor) = stream_flavor(api, &fields, format, options.task)? {
        let (pending, engine) = worker::submit(shared, model, file, options).await?;
        let pending = accepted(pending).await?;
        tracing::info!(
            request_id = %super::request_id(&req),
            route = req.match_pattern().unwrap_or_default(),
            upload_bytes,
            "transcription streaming"
        );
        return Ok(super::stream::response(
            shared.clone(),
            engine,
            pending,
            flavor,
            client,
            t0,
        ));
    }
    let (transcript, cache, engine) =
        worker::transcribe(shared, model, file, options.clone(), client).await?;
    let label = req
        .extensions()
        .get::<super::ClientLabel>()
        .map(|l| l.0.clone());
    if let Some(label) = label {
        shared
            .metrics
            .client_audio_seconds
            .with_label_values(&[&label])
            .inc_by(transcript.duration);
    }
    let task = if api == Api::OpenAiTranslations && !engine.is_multilingual() {
        Task::Transcribe
    } else {
        options.task
    };
    tracing::info!(
        request_id = %super::request_id(&req),
        route = req.match_pattern().unwrap_or_default(),
        model = %engine.model_name,
        audio_s = transcript.duration,
        upload_bytes,
        seconds = t0.elapsed().as_secs_f64(),
        cache = cache.as_str(),
        "transcription served"
    );
    let mut render = render_options(&fields)?;
    if api == Api::Native {
        render.granularities = None; // /transcribe keeps words on their segments
    }
    let usage = serde_json::json!({ "type": "duration", "seconds": transcript.duration });
    let _render = tracing::info_span!("render", format = ?format).entered();
    let body = match (api, format) {
        (Api::Native, Format::Json) => transcript.render(Format::Json, task),
        (_, Format::Json) => {
            let mut v = serde_json::json!({ "text": transcript.text });
            if render.logprobs {
                v["logprobs"] = serde_json::json!(transcript.logprobs(&engine.tokenizer));
            }
            if api == Api::OpenAiTranscriptions {
                v["usage"] = usage;
            }
            v.to_string()
        }
        (Api::OpenAiTranscriptions, Format::DiarizedJson) => {
            let mut d = transcript.diarized_json();
            d.usage = Some(crate::output::Usage::duration(transcript.duration));
            serde_json::to_string(&d).unwrap_or_default()
        }
        (Api::OpenAiTranscriptions, Format::VerboseJson) => {
            let mut v: serde_json::Value =
                serde_json::from_str(&transcript.render_with(format, task, &render))
                    .unwrap_or_default();
            v["usage"] = usage;
            v.to_string()
        }
        (_, f) => transcript.render_with(f, task, &render),
    };
    drop(_render);
    Ok(HttpResponse::Ok()
        .content_type(format.content_type())
        .insert_header(("X-Cache", cache.as_str()))
        .body(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_fallback_follows_openai() {
        assert_eq!(temperatures("0").unwrap().len(), 6);
        assert_eq!(temperatures("0.5").unwrap(), vec![0.5, 0.7, 0.9]);
        assert!(temperatures("1.5").is_err() && temperatures("hot").is_err());
        assert_eq!(temperatures("0, 0.4").unwrap(), vec![0.0, 0.4]);
        assert!(temperatures("0,2").is_err());
    }

    fn fields(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn fallback_fields_override_the_defaults_and_bad_ones_are_named() {
        let defaults = TranscribeOptions {
            logprob_threshold: Some(-0.5),
            ..Default::default()
        };
        let (o, _) = parse_options(Api::OpenAiTranslations, &fields(&[]), &defaults).unwrap();
        assert_eq!(o.logprob_threshold, Some(-0.5));
        let f = fields(&[
            ("compression_ratio_threshold", "2"),
            ("logprob_threshold", "none"),
            ("no_speech_threshold", "0.5"),
            ("condition_on_previous_text", "false"),
        ]);
        let (o, _) = parse_options(Api::Native, &f, &defaults).unwrap();
        assert_eq!(
            (
                o.compression_ratio_threshold,
                o.logprob_threshold,
                o.no_speech_threshold,
                o.condition_on_previous_text
            ),
            (Some(2.0), None, Some(0.5), false)
        );
        for name in [
            "compression_ratio_threshold",
            "logprob_threshold",
            "no_speech_threshold",
            "condition_on_previous_text",
            "temperature",
            "best_of",
            "beam_size",
            "patience",
            "length_penalty",
        ] {
            let e = parse_options(Api::Native, &fields(&[(name, "lots")]), &defaults).unwrap_err();
            let body = format!("{e:?}");
            assert!(body.contains(name), "{name}: {body}");
        }
    }

    #[test]
    fn beam_fields_on_every_endpoint() {
        let defaults = TranscribeOptions::default();
        let f = fields(&[
            ("beam_size", "5"),
            ("patience", "2"),
            ("length_penalty", "0.6"),
        ]);
        for api in [
            Api::Native,
            Api::OpenAiTranscriptions,
            Api::OpenAiTranslations,
        ] {
            let (o, _) = parse_options(api, &f, &defaults).unwrap();
            assert_eq!(
                (o.beam.beam_size, o.beam.patience, o.beam.length_penalty),
                (5, 2.0, Some(0.6))
            );
        }
        // Unset fields keep the configured default.
        let (o, _) = parse_options(Api::OpenAiTranscriptions, &fields(&[]), &defaults).unwrap();
        assert_eq!(o.beam, defaults.beam);
        // Out-of-range values are caught where every option is checked (400 naming the field).
        for (name, v) in [("beam_size", "0"), ("beam_size", "17"), ("patience", "0")] {
            let (o, _) = parse_options(Api::Native, &fields(&[(name, v)]), &defaults).unwrap();
            assert_eq!(o.check_fallback().unwrap_err().0, name);
        }
    }

    #[test]
    fn vad_fields_and_chunking_strategy() {
        let d = TranscribeOptions {
            vad: crate::vad::VadOptions {
                enabled: true,
                ..Default::default()
            },
            ..Default::default()
        };
        // /transcribe keeps the configured default; /v1 is one block unless asked
        let (o, _) = parse_options(Api::Native, &fields(&[]), &d).unwrap();
        assert!(o.vad.enabled);
        let (o, _) = parse_options(Api::OpenAiTranscriptions, &fields(&[]), &d).unwrap();
        assert!(!o.vad.enabled);
        assert_eq!(o.vad.gate_db, d.vad.gate_db, "the gate stays on");
        let f = fields(&[
            ("vad", "false"),
            ("vad_min_silence_duration_ms", "500"),
            ("vad_gate_db", "none"),
        ]);
        let (o, _) = parse_options(Api::Native, &f, &d).unwrap();
        assert_eq!(
            (o.vad.enabled, o.vad.min_silence_duration_ms, o.vad.gate_db),
            (false, 500, None)
        );
        let (o, _) = parse_options(
            Api::OpenAiTranscriptions,
            &fields(&[("chunking_strategy", "auto")]),
            &d,
        )
        .unwrap();
        assert!(o.vad.enabled);
        assert_eq!(
            o.vad.min_silence_duration_ms, 2000,
            "auto: the server's settings"
        );
        let f = fields(&[(
            "chunking_strategy",
            r#"{"type":"server_vad","threshold":0.7}"#,
        )]);
        let (o, _) = parse_options(Api::OpenAiTranscriptions, &f, &d).unwrap();
        assert_eq!(
            (
                o.vad.enabled,
                o.vad.threshold,
                o.vad.speech_pad_ms,
                o.vad.min_silence_duration_ms
            ),
            (true, 0.7, 300, 200),
            "OpenAI's server_vad defaults fill what is not sent"
        );
        let f = fields(&[
            ("chunking_strategy[type]", "server_vad"),
            ("chunking_strategy[prefix_padding_ms]", "100"),
        ]);
        let (o, _) = parse_options(Api::OpenAiTranslations, &f, &d).unwrap();
        assert_eq!((o.vad.enabled, o.vad.speech_pad_ms), (true, 100));
        for bad in [
            "yes",
            r#"{"type":"semantic_vad"}"#,
            r#"{"type":"server_vad","threshold":"high"}"#,
            r#"{"type":"server_vad","prefix_padding_ms":-5}"#,
            r#"{"type":"server_vad","extra":1}"#,
        ] {
            let e = parse_options(
                Api::OpenAiTranscriptions,
                &fields(&[("chunking_strategy", bad)]),
                &d,
            )
            .unwrap_err();
            assert!(
                format!("{e:?}").contains("chunking_strategy"),
                "{bad}: {e:?}"
            );
        }
        let e = parse_options(Api::Native, &fields(&[("vad_threshold", "2")]), &d).unwrap_err();
        assert!(format!("{e:?}").contains("vad_threshold"));
    }

    #[test]
    fn options_from_fields() {
        let f: HashMap<String, String> = [
            ("response_format", "srt"),
            ("timestamps", "false"),
            ("task", "translate"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let d = TranscribeOptions::default();
        let (o, fmt) = parse_options(Api::Native, &f, &d).unwrap();
        assert_eq!(
            (o.timestamps, o.task, fmt),
            (false, Task::Translate, Format::Srt)
        );
        let tsv: HashMap<String, String> =
            [("response_format".to_string(), "tsv".to_string())].into();
        assert!(parse_options(Api::OpenAiTranscriptions, &tsv, &d).is_err());
        assert!(parse_options(Api::Native, &tsv, &d).is_ok());
    }
}
