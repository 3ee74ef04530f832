//! `GET /v1/realtime?intent=transcription`: live audio in over a WebSocket, transcripts out, in
//! the transcription-session subset of OpenAI's Realtime API (the GA events the official
//! `openai` Python client sends: `session.update` with `session.type = "transcription"`).
//!
//! - Client events: `session.update`, `input_audio_buffer.append` (base64 audio),
//!   `input_audio_buffer.commit`, `input_audio_buffer.clear`.
//! - Server events: `session.created` / `session.updated`, `input_audio_buffer.committed` /
//!   `.cleared` / `.speech_started` / `.speech_stopped` (server VAD),
//!   `conversation.item.input_audio_transcription.delta` / `.completed` / `.failed`, `error`.
//! - Audio: PCM16 mono at 24 kHz (`audio/pcm`, the spec's rate), G.711 µ-law / A-law at 8 kHz
//!   (`audio/pcmu`, `audio/pcma`), and PCM16 at 16 kHz as an extension (`rate: 16000`).
//! - Turn detection: none (the client commits) or `server_vad` (Silero on the live audio: speech
//!   starts at `threshold`, ends after `silence_duration_ms` below it, `prefix_padding_ms` of
//!   audio kept before the start).
//! - While an utterance grows, it is re-decoded about once a second; only words that two passes
//!   in a row agree on, and that end a second or more before the edge of the audio heard, are
//!   sent as deltas (local agreement, [`agree`]), so sent text never changes. The
//!   committed audio is transcribed like an upload of the same audio (same queue, scheduler
//!   batches and options), and `completed` carries that text; a last delta carries the rest of
//!   it after the words already sent ([`continuation`]).
//! - Everything malformed gets an `error` event and the session goes on; nothing closes the socket
//!   without a reason.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use base64::Engine as _;
use futures_util::future::LocalBoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use serde_json::{json, Value};

use super::error::ApiError;
use super::worker::{self, Shared};
use super::AppState;
use crate::audio::resample::StreamResampler;
use crate::transcript::Transcript;
use crate::vad::silero::SileroStream;
use crate::TranscribeOptions;

/// Largest client message (an append of 15 MiB of base64, as OpenAI allows).
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// A growing utterance is first re-decoded for partial text when it is this long.
const PARTIAL_EVERY_S: f64 = 1.0;
/// A commit needs at least this much audio (OpenAI's rule).
const MIN_COMMIT_MS: u64 = 100;
/// Server VAD: after this much silence the utterance so far starts decoding, so its transcript
/// is (nearly) ready when `silence_duration_ms` ends it; speech that resumes cancels the pass.
const SPECULATE_MS: u64 = 160;
/// A partial pass needs this much new audio since the last one.
const PARTIAL_STEP_S: f64 = 0.5;
/// A word is settled, and may go out as a delta, once the pass that agrees on it heard this much
/// audio after its end: near the edge of what was heard the model completes half-spoken words
/// with guesses, and two passes a half-second apart can make the same wrong guess.
const SETTLED_S: f64 = 1.0;

/// Limits and settings of realtime sessions (config `realtime_*`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_session: Duration,
    pub idle_timeout: Duration,
    /// The final pass's beam width (`realtime_beam_size`); partial passes are greedy.
    pub beam_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Encoding {
    Pcm16,
    Mulaw,
    Alaw,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct ServerVad {
    threshold: f32,
    prefix_padding_ms: u64,
    silence_duration_ms: u64,
}

impl Default for ServerVad {
    /// OpenAI's defaults.
    fn default() -> Self {
        Self {
            threshold: 0.5,
            prefix_padding_ms: 300,
            silence_duration_ms: 500,
        }
    }
}

/// The utterance being spoken (server VAD) or buffered (manual commits).
struct Item {
    id: String,
    /// Session time (ms) where its audio starts.
    start_ms: u64,
    spoke_at: Instant,
    /// The text sent as deltas so far (their concatenation), and the last partial pass's words.
    sent: String,
    last_pass: Vec<String>,
    /// Audio length (input samples) of the last partial pass, and of the one before it.
    last_partial_len: usize,
    prev_partial_len: usize,
    first_delta_sent: bool,
}

type Done = (String, Result<Arc<Transcript>, ApiError>);
type Partial = (String, usize, Result<Arc<Transcript>, ApiError>);

struct Conn {
    ws: actix_ws::Session,
    shared: Arc<Shared>,
    defaults: TranscribeOptions,
    id: String,
    events: u64,
    items: u64,
    configured: bool,
    encoding: Encoding,
    rate: u32,
    model: String,
    /// `model`'s index in `shared.models`.
    model_index: usize,
    /// The names `transcription.model` may use (the models' own and the aliases).
    model_names: Vec<String>,
    /// The key set and the SHA-256 of the key this session was opened with: a session whose key
    /// is removed from `api_keys_file` is closed (checked every 2 s).
    key: Option<(Arc<super::auth::ApiKeys>, String)>,
    language: Option<String>,
    prompt: String,
    vad: Option<ServerVad>,
    /// Input audio (as 16-bit samples at `rate`) from session time `buf_start_ms` on.
    buf: VecDeque<i16>,
    buf_start_ms: u64,
    /// Samples appended since the session started (or the format last changed).
    total: u64,
    resampler: Option<StreamResampler>,
    silero: SileroStream,
    /// 32-ms VAD frames seen, and the run of silent ones inside speech.
    vad_frames: u64,
    silent_ms: u64,
    item: Option<Item>,
    last_item: Option<String>,
    partial: Option<LocalBoxFuture<'static, Partial>>,
    /// Server VAD: the final pass started early over [item start, end ms) during a silence.
    speculative: Option<(u64, LocalBoxFuture<'static, Done>)>,
    finals: FuturesUnordered<LocalBoxFuture<'static, Done>>,
    /// Committed items still decoding: the text already sent as deltas, and when committed.
    committed: std::collections::HashMap<String, (String, Instant)>,
}

/// The upgrade. Auth, rate limits and request ids ran in the edge middleware; the key may also
/// come as the `openai-insecure-api-key.<key>` subprotocol (browsers cannot set headers).
#[utoipa::path(get, path = "/v1/realtime", tag = "openai",
    params(("intent" = Option<String>, Query, description = "transcription")),
    responses(
        (status = 101, description = "WebSocket upgrade: the transcription-session subset of OpenAI's Realtime API (events in OpenAI's published schema)"),
        (status = 401, body = super::error::ErrorResponse),
        (status = 429, description = "Too many sessions for this API key", body = super::error::ErrorResponse)))]
pub async fn connect(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let shared = state.shared.clone();
    if !shared.ready.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(ApiError::unavailable("the model is still loading", 5));
    }
    let query =
        web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
            .map(|q| q.into_inner())
            .unwrap_or_default();
    if query.get("intent").map(String::as_str) != Some("transcription") {
        return Err(ApiError::bad_request(
            "this server speaks transcription sessions only: connect to /v1/realtime?intent=transcription",
        )
        .param("intent"));
    }
    let client = req
        .extensions()
        .get::<super::ClientId>()
        .map(|c| c.0.clone())
        .unwrap_or_default();
    let Some(permit) = state.sessions.acquire(&client) else {
        tracing::warn!(client = %client, "realtime session cap per key reached: answering 429");
        return Err(ApiError::new(
            actix_web::http::StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "too many realtime sessions open for this API key",
        )
        .retry_after(5)
        .code("too_many_sessions"));
    };
    let offered_realtime = req
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim() == "realtime"));
    let (mut response, ws, msgs) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::bad_request(format!("not a WebSocket upgrade: {e}")))?;
    if offered_realtime {
        // The key subprotocol is never echoed: that would reflect the secret.
        response.headers_mut().insert(
            actix_web::http::header::SEC_WEBSOCKET_PROTOCOL,
            actix_web::http::header::HeaderValue::from_static("realtime"),
        );
    }
    let msgs = msgs
        .max_frame_size(MAX_MESSAGE_BYTES)
        .aggregate_continuations()
        .max_continuation_size(MAX_MESSAGE_BYTES);
    let defaults = session_defaults(&state.defaults, &state.realtime);
    let model_names = shared.models.names();
    let key = client
        .strip_prefix("key:")
        .filter(|_| state.api_keys.enabled())
        .map(|hash| (state.api_keys.clone(), hash.to_string()));
    let conn = Conn {
        ws,
        shared: shared.clone(),
        defaults,
        model: model_names
            .iter()
            .find(|m| *m == "whisper-1")
            .or(model_names.first())
            .cloned()
            .unwrap_or_default(),
        model_index: 0,
        model_names,
        key,
        id: format!("sess_{:016x}", rand::random::<u64>()),
        events: 0,
        items: 0,
        configured: false,
        encoding: Encoding::Pcm16,
        rate: 24_000,
        language: None,
        prompt: String::new(),
        vad: None,
        buf: VecDeque::new(),
        buf_start_ms: 0,
        total: 0,
        resampler: None,
        silero: SileroStream::default(),
        vad_frames: 0,
        silent_ms: 0,
        item: None,
        last_item: None,
        partial: None,
        speculative: None,
        finals: FuturesUnordered::new(),
        committed: std::collections::HashMap::new(),
    };
    let limits = state.realtime;
    // The session's work (every pass over its audio) belongs to one trace, under the upgrade request.
    let span = tracing::info_span!("realtime_session", session = %conn.id);
    actix_web::rt::spawn(tracing::Instrument::instrument(
        async move {
            let _permit = permit;
            shared.metrics.realtime_sessions_open.inc();
            let t0 = Instant::now();
            let id = conn.id.clone();
            tracing::info!(session = %id, "realtime session opened");
            let reason = conn.run(msgs, limits).await;
            shared.metrics.realtime_sessions_open.dec();
            tracing::info!(session = %id, seconds = t0.elapsed().as_secs_f64(), reason, "realtime session closed");
        },
        span,
    ));
    Ok(response)
}

fn invalid(code: &'static str, message: impl Into<String>) -> (&'static str, String) {
    (code, message.into())
}

impl Conn {
    /// Serve the session until the client closes it or a limit ends it; why it ended.
    async fn run(
        mut self,
        mut msgs: actix_ws::AggregatedMessageStream,
        limits: Limits,
    ) -> &'static str {
        let created = json!({"type": "session.created", "session": self.session_json()});
        if self.send(created).await.is_err() {
            return "client gone";
        }
        let end = tokio::time::Instant::now() + limits.max_session;
        let mut idle = tokio::time::Instant::now() + limits.idle_timeout;
        let shared = self.shared.clone();
        loop {
            let draining = async {
                while !shared.draining.load(std::sync::atomic::Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            };
            let revoked = async {
                match &self.key {
                    Some((keys, hash)) => loop {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        let still = keys
                            .snapshot()
                            .iter()
                            .any(|k| crate::cache::audio_hash(k.as_bytes()) == *hash);
                        if !still {
                            break;
                        }
                    },
                    None => std::future::pending().await,
                }
            };
            let partial = async {
                match self.partial.as_mut() {
                    Some(p) => p.await,
                    None => std::future::pending().await,
                }
            };
            let next_final = async {
                if self.finals.is_empty() {
                    std::future::pending().await
                } else {
                    self.finals.next().await
                }
            };
            tokio::select! {
                m = msgs.recv() => {
                    idle = tokio::time::Instant::now() + limits.idle_timeout;
                    let ok = match m {
                        None => return "client gone",
                        Some(Ok(AggregatedMessage::Text(t))) => self.on_text(&t).await,
                        Some(Ok(AggregatedMessage::Binary(_))) => self.error(None, invalid("binary_not_supported", "send events as JSON text messages, not binary"), None).await,
                        Some(Ok(AggregatedMessage::Ping(b))) => self.ws.pong(&b).await.map_err(|_| ()),
                        Some(Ok(AggregatedMessage::Pong(_))) => Ok(()),
                        Some(Ok(AggregatedMessage::Close(_))) => return "client closed",
                        Some(Err(e)) => {
                            let _ = self.error(None, invalid("protocol_error", format!("WebSocket protocol error: {e}")), None).await;
                            let _ = self.ws.close(Some(CloseReason { code: CloseCode::Protocol, description: Some("protocol error".into()) })).await;
                            return "protocol error";
                        }
                    };
                    if ok.is_err() {
                        return "client gone";
                    }
                }
                p = partial => {
                    self.partial = None;
                    if self.on_partial(p).await.is_err() {
                        return "client gone";
                    }
                }
                Some(done) = next_final => {
                    if self.on_final(done).await.is_err() {
                        return "client gone";
                    }
                }
                _ = draining => return self.drain().await,
                _ = revoked => {
                    tracing::warn!(session = %self.id, "the session's API key was removed: closing it");
                    let _ = self.error(None, invalid("invalid_api_key", "this session's API key was revoked"), None).await;
                    let _ = self.ws.close(Some(CloseReason { code: CloseCode::Policy, description: Some("API key revoked".into()) })).await;
                    return "API key revoked";
                }
                _ = tokio::time::sleep_until(idle) => {
                    let _ = self.error(None, invalid("idle_timeout", format!("no message for {} s: closing the session", limits.idle_timeout.as_secs())), None).await;
                    let _ = self.ws.close(Some(CloseReason { code: CloseCode::Normal, description: Some("idle timeout".into()) })).await;
                    return "idle timeout";
                }
                _ = tokio::time::sleep_until(end) => {
                    let _ = self.error(None, invalid("session_expired", format!("sessions last at most {} s", limits.max_session.as_secs())), None).await;
                    let _ = self.ws.close(Some(CloseReason { code: CloseCode::Normal, description: Some("session expired".into()) })).await;
                    return "session length limit";
                }
            }
        }
    }

    /// The server is shutting down (SIGTERM, within its grace period): say so, finish the
    /// utterances already committed (their transcripts are sent), then close with 1001.
    async fn drain(&mut self) -> &'static str {
        let notice = invalid(
            "server_shutting_down",
            "the server is shutting down: committed audio is still transcribed; reconnect for more",
        );
        if self
            .error_of("server_error", None, notice, None)
            .await
            .is_err()
        {
            return "client gone";
        }
        self.partial = None;
        if let Some(end) = self.speculative.as_ref().map(|s| s.0) {
            // speech that had already gone quiet: commit it rather than lose it
            if self.commit_item(end).await.is_err() {
                return "client gone";
            }
        }
        while let Some(done) = self.finals.next().await {
            if self.on_final(done).await.is_err() {
                return "client gone";
            }
        }
        let reason = CloseReason {
            code: CloseCode::Away,
            description: Some("server shutting down".into()),
        };
        let _ = self.ws.clone().close(Some(reason)).await;
        "server shutting down"
    }

    async fn send(&mut self, mut event: Value) -> Result<(), ()> {
        self.events += 1;
        event["event_id"] = json!(format!("event_{}_{}", &self.id[5..], self.events));
        self.ws.text(event.to_string()).await.map_err(|_| ())
    }

    /// An `error` event about the client's input (`invalid_request_error`); the session goes on.
    async fn error(
        &mut self,
        client_event: Option<&str>,
        code_message: (&'static str, String),
        param: Option<&str>,
    ) -> Result<(), ()> {
        self.error_of("invalid_request_error", client_event, code_message, param)
            .await
    }

    /// An `error` event of type `kind`.
    async fn error_of(
        &mut self,
        kind: &'static str,
        client_event: Option<&str>,
        (code, message): (&'static str, String),
        param: Option<&str>,
    ) -> Result<(), ()> {
        tracing::info!(session = %self.id, code, message = %message, "realtime client error");
        let e = json!({"type": "error", "error": {
            "type": kind, "code": code, "message": message, "param": param, "event_id": client_event,
        }});
        self.send(e).await
    }

    async fn on_text(&mut self, text: &str) -> Result<(), ()> {
        let v: Value = match serde_json::from_str(text) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                return self
                    .error(
                        None,
                        invalid("invalid_event", "an event is a JSON object with a `type`"),
                        None,
                    )
                    .await
            }
            Err(e) => {
                return self
                    .error(
                        None,
                        invalid("invalid_json", format!("not JSON: {e}")),
                        None,
                    )
                    .await
            }
        };
        let event_id = v
            .get("event_id")
            .and_then(Value::as_str)
            .map(str::to_string);
        let eid = event_id.as_deref();
        match v.get("type").and_then(Value::as_str) {
            Some("session.update") | Some("transcription_session.update") => {
                match self.update_session(&v) {
                    Ok(()) => {
                        let updated =
                            json!({"type": "session.updated", "session": self.session_json()});
                        self.send(updated).await
                    }
                    Err((param, msg)) => {
                        self.error(eid, invalid("invalid_value", msg), Some(param))
                            .await
                    }
                }
            }
            Some("input_audio_buffer.append") => self.append(&v, eid).await,
            Some("input_audio_buffer.commit") => self.commit(eid).await,
            Some("input_audio_buffer.clear") => {
                self.clear();
                self.send(json!({"type": "input_audio_buffer.cleared"}))
                    .await
            }
            Some(other) => {
                let msg = format!("unknown or unsupported event type `{other}` (transcription sessions take session.update and input_audio_buffer.append/commit/clear)");
                self.error(eid, invalid("unknown_event", msg), Some("type"))
                    .await
            }
            None => {
                self.error(
                    eid,
                    invalid("missing_type", "the event has no `type`"),
                    Some("type"),
                )
                .await
            }
        }
    }

    /// The effective session, as `session.created` / `session.updated` carry it.
    fn session_json(&self) -> Value {
        let format = match self.encoding {
            Encoding::Pcm16 => json!({"type": "audio/pcm", "rate": self.rate}),
            Encoding::Mulaw => json!({"type": "audio/pcmu"}),
            Encoding::Alaw => json!({"type": "audio/pcma"}),
        };
        let mut transcription = json!({"model": self.model, "prompt": self.prompt});
        if let Some(l) = &self.language {
            transcription["language"] = json!(l);
        }
        let turn = self.vad.map(|v| json!({
            "type": "server_vad", "threshold": v.threshold,
            "prefix_padding_ms": v.prefix_padding_ms, "silence_duration_ms": v.silence_duration_ms,
        }));
        json!({
            "type": "transcription", "id": self.id, "object": "realtime.transcription_session",
            "expires_at": 0, "include": [],
            "audio": {"input": {"format": format, "transcription": transcription, "turn_detection": turn}},
        })
    }

    /// Merge a `session.update` (only the fields present; `null` clears); the error names the field.
    fn update_session(&mut self, v: &Value) -> Result<(), (&'static str, String)> {
        let s = v.get("session").ok_or((
            "session",
            "session.update needs a `session` object".to_string(),
        ))?;
        if let Some(t) = s.get("type").and_then(Value::as_str) {
            if t != "transcription" {
                return Err((
                    "session.type",
                    format!("this server runs transcription sessions only, not `{t}`"),
                ));
            }
        }
        // The beta shape puts the fields at the top of the session; the GA one under audio.input.
        let input = s.pointer("/audio/input").unwrap_or(s);
        let mut next = (self.encoding, self.rate);
        if let Some(f) = input.get("format").or_else(|| s.get("input_audio_format")) {
            next = parse_format(f)?;
        }
        let tr = input
            .get("transcription")
            .or_else(|| s.get("input_audio_transcription"));
        let mut language = self.language.clone();
        let mut prompt = self.prompt.clone();
        let mut model = self.model.clone();
        if let Some(tr) = tr.filter(|t| !t.is_null()) {
            if let Some(m) = tr.get("model") {
                model = m
                    .as_str()
                    .ok_or((
                        "session.audio.input.transcription.model",
                        "must be a string".to_string(),
                    ))?
                    .to_string();
                model = model.trim().to_string();
                if !self.model_names.contains(&model) {
                    return Err((
                        "session.audio.input.transcription.model",
                        format!(
                            "the model `{model}` does not exist here; use one of: {}",
                            self.model_names.join(", ")
                        ),
                    ));
                }
            }
            match tr.get("language") {
                Some(Value::Null) => language = None,
                Some(Value::String(l)) if l.is_empty() => language = None,
                Some(Value::String(l)) => language = Some(l.clone()),
                Some(_) => {
                    return Err((
                        "session.audio.input.transcription.language",
                        "must be a language code".into(),
                    ))
                }
                None => {}
            }
            match tr.get("prompt") {
                Some(Value::Null) => prompt.clear(),
                Some(Value::String(p)) => prompt = p.clone(),
                Some(_) => {
                    return Err((
                        "session.audio.input.transcription.prompt",
                        "must be a string".into(),
                    ))
                }
                None => {}
            }
        }
        let mut vad = self.vad;
        if let Some(td) = input.get("turn_detection") {
            vad = parse_turn_detection(td)?;
        }
        let probe = TranscribeOptions {
            language: language.clone(),
            ..self.defaults.clone()
        };
        let model_index = self.shared.models.resolve(Some(&model)).unwrap_or(0);
        // Checked here when the model is in memory; otherwise when it transcribes.
        if let Some(engine) = self.shared.models.loaded_engine(model_index) {
            engine.check_options(&probe).map_err(|e| {
                (
                    "session.audio.input.transcription.language",
                    ApiError::from(e).message,
                )
            })?;
        }
        if vad.is_some() && self.shared.models.vad.is_none() {
            return Err((
                "session.audio.input.turn_detection",
                "server_vad needs the Silero VAD model, which this server has not loaded".into(),
            ));
        }
        if next != (self.encoding, self.rate) {
            // Audio already buffered was in the old format.
            self.clear();
            self.total = 0;
            self.buf_start_ms = 0;
            self.resampler = None;
            self.silero = SileroStream::default();
            self.vad_frames = 0;
        }
        (self.encoding, self.rate) = next;
        if vad != self.vad {
            self.item = None;
            self.speculative = None;
            self.silent_ms = 0;
        }
        self.vad = vad;
        self.language = language;
        self.prompt = prompt;
        self.model = model;
        self.model_index = model_index;
        self.configured = true;
        Ok(())
    }

    fn options(&self) -> TranscribeOptions {
        let mut o = self.defaults.clone();
        o.language = self.language.clone();
        o.initial_prompt = (!self.prompt.is_empty()).then(|| self.prompt.clone());
        o
    }

    fn ms_to_samples(&self, ms: u64) -> usize {
        (ms * self.rate as u64 / 1000) as usize
    }

    fn now_ms(&self) -> u64 {
        self.total * 1000 / self.rate as u64
    }

    async fn append(&mut self, v: &Value, eid: Option<&str>) -> Result<(), ()> {
        if !self.configured {
            return self
                .error(
                    eid,
                    invalid(
                        "session_not_configured",
                        "send session.update (session.type = transcription) before audio",
                    ),
                    None,
                )
                .await;
        }
        let Some(b64) = v.get("audio").and_then(Value::as_str) else {
            return self
                .error(
                    eid,
                    invalid(
                        "missing_audio",
                        "input_audio_buffer.append needs `audio` (base64)",
                    ),
                    Some("audio"),
                )
                .await;
        };
        let bytes = match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(b) => b,
            Err(e) => {
                return self
                    .error(
                        eid,
                        invalid("invalid_base64", format!("`audio` is not base64: {e}")),
                        Some("audio"),
                    )
                    .await
            }
        };
        let samples: Vec<i16> = match self.encoding {
            Encoding::Pcm16 => {
                if bytes.len() % 2 != 0 {
                    return self
                        .error(
                            eid,
                            invalid(
                                "invalid_audio",
                                "PCM16 audio must be a whole number of 2-byte samples",
                            ),
                            Some("audio"),
                        )
                        .await;
                }
                bytes
                    .chunks_exact(2)
                    .map(|c| i16::from_le_bytes([c[0], c[1]]))
                    .collect()
            }
            Encoding::Mulaw => bytes.iter().map(|&b| mulaw(b)).collect(),
            Encoding::Alaw => bytes.iter().map(|&b| alaw(b)).collect(),
        };
        let max = self.ms_to_samples((self.shared.max_audio_s * 1000.0) as u64);
        if self.buf.len() + samples.len() > max {
            return self
                .error(
                    eid,
                    invalid(
                        "buffer_too_long",
                        format!(
                            "the input buffer holds at most {} s: commit or clear it",
                            self.shared.max_audio_s
                        ),
                    ),
                    Some("audio"),
                )
                .await;
        }
        self.total += samples.len() as u64;
        self.buf.extend(samples.iter().copied());
        if self.vad.is_some() {
            self.detect(&samples).await?;
        } else if self.item.is_none() && !self.buf.is_empty() {
            self.item = Some(self.new_item(self.buf_start_ms));
        }
        self.maybe_partial();
        Ok(())
    }

    fn new_item(&mut self, start_ms: u64) -> Item {
        self.items += 1;
        Item {
            id: format!("item_{}_{}", &self.id[5..], self.items),
            start_ms,
            spoke_at: Instant::now(),
            sent: String::new(),
            last_pass: Vec::new(),
            last_partial_len: 0,
            prev_partial_len: 0,
            first_delta_sent: false,
        }
    }

    /// Server VAD over newly appended audio: speech start and stop events, automatic commits.
    async fn detect(&mut self, samples: &[i16]) -> Result<(), ()> {
        let Some(vad) = self.vad else { return Ok(()) };
        let Some(model) = self.shared.models.vad.clone() else {
            return Ok(());
        };
        let x: Vec<f32> = samples.iter().map(|&s| s as f32 / 32768.0).collect();
        let mut x16 = Vec::new();
        if self.rate == 16_000 {
            x16 = x;
        } else {
            if self.resampler.is_none() {
                self.resampler = StreamResampler::new(self.rate, 16_000).ok();
            }
            if let Some(r) = self.resampler.as_mut() {
                if r.push(&x, &mut x16).is_err() {
                    return Ok(());
                }
            }
        }
        let probs = match self.silero.push(&model, &x16) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(session = %self.id, error = %e, "VAD failed on live audio");
                return Ok(());
            }
        };
        let neg = (vad.threshold - 0.15).max(0.01);
        for p in probs {
            self.vad_frames += 1;
            let t_ms = self.vad_frames * 32;
            match &self.item {
                None if p >= vad.threshold => {
                    let start = t_ms
                        .saturating_sub(32 + vad.prefix_padding_ms)
                        .max(self.buf_start_ms);
                    let item = self.new_item(start);
                    let ev = json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": start, "item_id": item.id});
                    self.item = Some(item);
                    self.silent_ms = 0;
                    self.send(ev).await?;
                }
                None => {
                    // Keep only the padding that may precede the next speech.
                    let keep_from = t_ms.saturating_sub(vad.prefix_padding_ms + 64);
                    self.trim_to(keep_from);
                }
                Some(_) => {
                    self.silent_ms = if p < neg { self.silent_ms + 32 } else { 0 };
                    if self.silent_ms == 0 {
                        self.speculative = None; // speech goes on: that pass stops
                    } else if self.silent_ms >= SPECULATE_MS && self.speculative.is_none() {
                        self.speculate(t_ms.min(self.now_ms()));
                    }
                    if self.silent_ms >= vad.silence_duration_ms {
                        // Speech ended where the silence began; the utterance's audio runs to
                        // now (its trailing silence included, as an upload would have it).
                        let end = t_ms.saturating_sub(self.silent_ms);
                        let id = self.item.as_ref().map(|i| i.id.clone()).unwrap_or_default();
                        self.send(json!({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": end, "item_id": id})).await?;
                        let audio_end = self
                            .speculative
                            .as_ref()
                            .map_or(t_ms.min(self.now_ms()), |s| s.0);
                        self.commit_item(audio_end).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Drop buffered audio before session time `ms`.
    fn trim_to(&mut self, ms: u64) {
        if ms <= self.buf_start_ms {
            return;
        }
        let n = self
            .ms_to_samples(ms - self.buf_start_ms)
            .min(self.buf.len());
        self.buf.drain(..n);
        self.buf_start_ms += (n as u64 * 1000) / self.rate as u64;
    }

    /// The audio of session time [from, to) as a WAV file at the input rate (what an upload of
    /// the same audio would be).
    fn wav(&self, from_ms: u64, to_ms: Option<u64>) -> Vec<u8> {
        let a = self
            .ms_to_samples(from_ms.saturating_sub(self.buf_start_ms))
            .min(self.buf.len());
        let b = to_ms
            .map(|t| self.ms_to_samples(t.saturating_sub(self.buf_start_ms)))
            .unwrap_or(self.buf.len())
            .min(self.buf.len())
            .max(a);
        let rate = self.rate;
        let n = (b - a) as u32;
        let mut w = Vec::with_capacity(44 + 2 * n as usize);
        w.extend_from_slice(b"RIFF");
        w.extend_from_slice(&(36 + 2 * n).to_le_bytes());
        w.extend_from_slice(b"WAVEfmt ");
        w.extend_from_slice(&16u32.to_le_bytes());
        w.extend_from_slice(&1u16.to_le_bytes());
        w.extend_from_slice(&1u16.to_le_bytes());
        w.extend_from_slice(&rate.to_le_bytes());
        w.extend_from_slice(&(rate * 2).to_le_bytes());
        w.extend_from_slice(&2u16.to_le_bytes());
        w.extend_from_slice(&16u16.to_le_bytes());
        w.extend_from_slice(b"data");
        w.extend_from_slice(&(2 * n).to_le_bytes());
        for s in self.buf.range(a..b) {
            w.extend_from_slice(&s.to_le_bytes());
        }
        w
    }

    /// Start a partial pass over the growing utterance when a second more of it has arrived and
    /// none is running.
    fn maybe_partial(&mut self) {
        // Once a silence has begun the utterance may be over: a pass started now would likely
        // still hold the encoder when the speculative final pass needs it (a model call runs to
        // its end), and during that pass the compute is its own, so that its transcript follows
        // within the silence that ends the utterance.
        if self.partial.is_some() || self.speculative.is_some() || self.silent_ms > 0 {
            return;
        }
        let Some(item) = &self.item else { return };
        let len = self.ms_to_samples(self.now_ms().saturating_sub(item.start_ms));
        let first = (PARTIAL_EVERY_S * self.rate as f64) as usize;
        let step = (PARTIAL_STEP_S * self.rate as f64) as usize;
        if len < first || len < item.last_partial_len + step {
            return;
        }
        let id = item.id.clone();
        let wav = self.wav(item.start_ms, None);
        if let Some(item) = self.item.as_mut() {
            item.prev_partial_len = item.last_partial_len;
            item.last_partial_len = len;
        }
        let (shared, model) = (self.shared.clone(), self.model_index);
        let options = partial_options(self.options());
        self.partial = Some(
            async move {
                let r = transcribe(&shared, model, wav, options, false).await;
                (id, len, r)
            }
            .boxed_local(),
        );
    }

    /// Local agreement over each partial pass (see [`agree`]).
    async fn on_partial(&mut self, (id, len, r): Partial) -> Result<(), ()> {
        let Ok(t) = r else { return Ok(()) };
        let heard_s = len as f64 / self.rate.max(1) as f64;
        let Some(item) = self.item.as_mut().filter(|i| i.id == id) else {
            return Ok(());
        };
        let words: Vec<String> = t.text.split_whitespace().map(String::from).collect();
        let delta = agree(&item.sent, &item.last_pass, &t, heard_s);
        tracing::debug!(session = %self.id, item = %id, heard_s, since_speech_s = item.spoke_at.elapsed().as_secs_f64(), text = %t.text, delta = ?delta, "partial pass");
        item.last_pass = words;
        let Some(delta) = delta else {
            self.maybe_partial();
            return Ok(());
        };
        item.sent.push_str(&delta);
        if !item.first_delta_sent {
            item.first_delta_sent = true;
            self.shared
                .metrics
                .realtime_first_delta_seconds
                .observe(item.spoke_at.elapsed().as_secs_f64());
        }
        let ev = json!({"type": "conversation.item.input_audio_transcription.delta", "item_id": id, "content_index": 0, "delta": delta});
        self.send(ev).await?;
        self.maybe_partial();
        Ok(())
    }

    async fn commit(&mut self, eid: Option<&str>) -> Result<(), ()> {
        if self.vad.is_some() && self.item.is_none() {
            return self
                .error(
                    eid,
                    invalid(
                        "input_audio_buffer_commit_empty",
                        "no speech in the buffer to commit",
                    ),
                    None,
                )
                .await;
        }
        let held_ms = self
            .now_ms()
            .saturating_sub(self.item.as_ref().map_or(self.buf_start_ms, |i| i.start_ms));
        if held_ms < MIN_COMMIT_MS || self.buf.is_empty() {
            let msg = format!("the buffer holds {held_ms} ms of audio; a commit needs at least {MIN_COMMIT_MS} ms");
            return self
                .error(eid, invalid("input_audio_buffer_commit_empty", msg), None)
                .await;
        }
        let now = self.now_ms();
        self.commit_item(now).await
    }

    /// The final pass over the current item's audio up to `end_ms`, started before the commit.
    fn speculate(&mut self, end_ms: u64) {
        let Some(item) = self.item.as_mut() else {
            return;
        };
        // A partial pass still decoding would share the cores with this one and delay the
        // completed transcript; its job stops at its next model call. Its audio counts as not
        // yet passed over, so a pass starts again as soon as speech resumes.
        if self.partial.take().is_some() {
            item.last_partial_len = item.prev_partial_len;
        }
        let (id, start_ms) = (item.id.clone(), item.start_ms);
        // Running on its own task from now on; dropping the handle (speech resumed) cancels it.
        let (run, handle) = self.final_pass(id, start_ms, end_ms).remote_handle();
        actix_web::rt::spawn(run);
        self.speculative = Some((end_ms, handle.boxed_local()));
    }

    fn final_pass(&self, id: String, start_ms: u64, end_ms: u64) -> LocalBoxFuture<'static, Done> {
        let wav = self.wav(start_ms, Some(end_ms));
        let (shared, model) = (self.shared.clone(), self.model_index);
        let options = self.options();
        async move {
            let r = transcribe(&shared, model, wav, options, true).await;
            (id, r)
        }
        .boxed_local()
    }

    /// `committed` for the current item, then its transcription (the whole utterance, like an
    /// upload) in the background (or the one already started over the same audio).
    async fn commit_item(&mut self, end_ms: u64) -> Result<(), ()> {
        let item = match self.item.take() {
            Some(i) => i,
            None => self.new_item(self.buf_start_ms),
        };
        self.partial = None; // its job stops at its next model call unless shared
        self.silent_ms = 0;
        let pass = match self.speculative.take() {
            Some((e, fut)) if e == end_ms => fut,
            _ => self.final_pass(item.id.clone(), item.start_ms, end_ms),
        };
        let ev = json!({"type": "input_audio_buffer.committed", "item_id": item.id, "previous_item_id": self.last_item});
        self.last_item = Some(item.id.clone());
        self.trim_to(end_ms);
        if self.vad.is_none() {
            self.buf.clear();
            self.buf_start_ms = self.now_ms();
        }
        self.committed.insert(item.id, (item.sent, Instant::now()));
        self.finals.push(pass);
        self.send(ev).await
    }

    async fn on_final(&mut self, (id, r): Done) -> Result<(), ()> {
        let (sent, committed_at) = self
            .committed
            .remove(&id)
            .unwrap_or_else(|| (String::new(), Instant::now()));
        let t = match r {
            Ok(t) => t,
            Err(e) => {
                let ev = json!({"type": "conversation.item.input_audio_transcription.failed", "item_id": id, "content_index": 0,
                    "error": {"type": "transcription_error", "code": e.code.unwrap_or("transcription_failed"), "message": e.message}});
                return self.send(ev).await;
            }
        };
        // The rest of the text after what was already sent (when that is its start, up to case
        // and punctuation: then the deltas joined are the transcript up to those).
        match continuation(&sent, &t.text) {
            Some(rest) => {
                if !sent.is_empty() && !t.text.starts_with(sent.as_str()) {
                    tracing::debug!(session = %self.id, item = %id, sent = %sent, transcript = %t.text,
                        "the final transcript differs from the sent partial text in case or punctuation only");
                }
                if !rest.trim().is_empty() {
                    let ev = json!({"type": "conversation.item.input_audio_transcription.delta", "item_id": id, "content_index": 0, "delta": rest});
                    self.send(ev).await?;
                }
            }
            None => {
                self.shared.metrics.realtime_partial_mismatches.inc();
                tracing::warn!(session = %self.id, item = %id, sent = %sent, transcript = %t.text,
                    "the final transcript does not start with the partial text already sent");
            }
        }
        let secs = committed_at.elapsed().as_secs_f64();
        self.shared.metrics.realtime_latency_seconds.observe(secs);
        tracing::debug!(session = %self.id, item = %id, seconds = secs, "utterance transcribed");
        let ev = json!({"type": "conversation.item.input_audio_transcription.completed", "item_id": id, "content_index": 0,
            "transcript": t.text, "usage": {"type": "duration", "seconds": t.duration}});
        self.send(ev).await
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.buf_start_ms = self.now_ms();
        self.item = None;
        self.partial = None;
        self.speculative = None;
        self.silent_ms = 0;
    }
}

/// A session's transcription defaults: the server's, but like a /v1 upload the committed audio
/// is one block (no VAD chunking; the energy gate stays on), and the final pass decodes at
/// `realtime_beam_size`.
fn session_defaults(server: &TranscribeOptions, limits: &Limits) -> TranscribeOptions {
    let mut o = server.clone();
    o.vad.enabled = false;
    o.beam.beam_size = limits.beam_size;
    o
}

/// A partial pass's options: a hint, so greedy whatever the session's beam width, with no
/// fallback passes; with word timestamps, to know which words are settled.
fn partial_options(mut o: TranscribeOptions) -> TranscribeOptions {
    o.temperatures = vec![0.0];
    o.beam.beam_size = 1;
    o.word_timestamps = true;
    o
}

/// Local agreement: the text to send after `sent`, given the previous partial pass's words and
/// this pass (`t`, over `heard_s` seconds of the utterance). Sent are the words both passes
/// agree on — up to case and punctuation ("But email," and "But, A-mail," agree on "But"), in
/// the newer pass's spelling — except the newer pass's last word and any word it places less
/// than `SETTLED_S` before the end of what it heard, and less a closing punctuation mark on the
/// last of them (the speaker's next words may turn a period into a comma, or drop it): that
/// mark goes out with the words after it. `None` when nothing new is agreed on, or when the
/// agreed words do not extend what was sent (compared as [`continuation`] does, so a later pass
/// that punctuates the sent words differently still extends them).
fn agree(sent: &str, last_pass: &[String], t: &Transcript, heard_s: f64) -> Option<String> {
    let agreed = last_pass
        .iter()
        .zip(t.text.split_whitespace())
        .take_while(|(a, b)| bare_word(a) == bare_word(b))
        .count()
        .min(t.text.split_whitespace().count().saturating_sub(1))
        .min(last_pass.len().saturating_sub(1))
        .min(settled_words(t, heard_s - SETTLED_S));
    let end = match agreed.checked_sub(1) {
        Some(last) => t.text.split_whitespace().nth(last).map_or(0, |w| {
            w.as_ptr() as usize - t.text.as_ptr() as usize + w.len()
        }),
        None => 0,
    };
    let head = t
        .text
        .get(..end)?
        .trim_end_matches(|c| crate::decode::timing::APPEND_PUNCTUATIONS.contains(c));
    continuation(sent, head)
        .filter(|d| !d.trim().is_empty())
        .map(str::to_string)
}

/// A word without the punctuation whisper attaches to words (`timing::PREPEND_PUNCTUATIONS`
/// before, `APPEND_PUNCTUATIONS` after), lower-cased: what two passes (or a pass and the final
/// text) must share for the word to count as the same. Only the edges are trimmed, so
/// "we're" and "were", or "U.S." and "us", stay different words; a word that is all
/// punctuation is compared whole.
fn bare_word(w: &str) -> String {
    use crate::decode::timing::{APPEND_PUNCTUATIONS, PREPEND_PUNCTUATIONS};
    let core = w
        .trim_start_matches(|c| PREPEND_PUNCTUATIONS.contains(c) || APPEND_PUNCTUATIONS.contains(c))
        .trim_end_matches(|c| APPEND_PUNCTUATIONS.contains(c) || PREPEND_PUNCTUATIONS.contains(c));
    if core.is_empty() { w } else { core }.to_lowercase()
}

/// What of the final transcript `text` follows the partial text already `sent`: the rest after
/// `sent` when `text` starts with it (and `sent` ends at one of `text`'s grapheme boundaries),
/// or else, when `text`'s first words are `sent`'s up to case
/// and punctuation (the final decode of a longer utterance may drop a period the partial passes
/// agreed on, "country. And so" → "country And so"), the text after the last of those words'
/// letters. `None` when the words themselves differ.
fn continuation<'a>(sent: &str, text: &'a str) -> Option<&'a str> {
    use unicode_segmentation::UnicodeSegmentation;
    if let Some(rest) = text.strip_prefix(sent) {
        // Not when `sent` ends inside one of `text`'s characters as a reader sees them (a
        // combining mark follows): a delta starting with that mark would change the last
        // character the client shows.
        if rest.is_empty() || text.grapheme_indices(true).any(|(i, _)| i == sent.len()) {
            return Some(rest);
        }
    }
    let said: Vec<String> = sent.split_whitespace().map(bare_word).collect();
    let mut words = text.split_whitespace();
    let mut end = 0;
    for s in &said {
        let w = words.next()?;
        if bare_word(w) != *s {
            return None;
        }
        // The word up to its closing punctuation (combining marks stay with their letter).
        let core = w.trim_end_matches(|c| crate::decode::timing::APPEND_PUNCTUATIONS.contains(c));
        end = w.as_ptr() as usize - text.as_ptr() as usize + core.len();
    }
    text.get(end..)
}

/// How many of the transcript's words (split at whitespace, as its text) end by `until_s`,
/// counted from the start until the first that does not.
fn settled_words(t: &Transcript, until_s: f64) -> usize {
    t.segments
        .iter()
        .flat_map(|s| s.words.iter().flatten())
        .take_while(|w| w.end <= until_s)
        .map(|w| w.word.split_whitespace().count())
        .sum()
}

/// A WAV through the shared queue and scheduler, like an upload; partial passes skip the cache.
async fn transcribe(
    shared: &Arc<Shared>,
    model: usize,
    wav: Vec<u8>,
    options: TranscribeOptions,
    cached: bool,
) -> Result<Arc<Transcript>, ApiError> {
    match worker::submit_with(shared, model, wav, options, cached)
        .await?
        .0
    {
        worker::Pending::Hit(t) => Ok(t),
        worker::Pending::Job { mut rx, .. } => rx
            .recv()
            .await
            .map_err(|_| ApiError::unavailable("the inference worker stopped", 5))?,
    }
}

fn parse_format(f: &Value) -> Result<(Encoding, u32), (&'static str, String)> {
    const P: &str = "session.audio.input.format";
    let (kind, rate) = match f {
        Value::String(s) => (s.as_str(), None),
        Value::Object(o) => (
            o.get("type").and_then(Value::as_str).unwrap_or("audio/pcm"),
            o.get("rate").and_then(Value::as_u64),
        ),
        Value::Null => ("audio/pcm", None),
        _ => {
            return Err((
                P,
                "must be an object like {\"type\": \"audio/pcm\", \"rate\": 24000}".into(),
            ))
        }
    };
    match (kind, rate) {
        ("audio/pcm" | "pcm16", None | Some(24_000)) => Ok((Encoding::Pcm16, 24_000)),
        ("audio/pcm" | "pcm16", Some(16_000)) => Ok((Encoding::Pcm16, 16_000)),
        ("audio/pcm" | "pcm16", Some(r)) => Err((
            P,
            format!("rate {r} is not supported: 24000 (or 16000, an extension)"),
        )),
        ("audio/pcmu" | "g711_ulaw", _) => Ok((Encoding::Mulaw, 8_000)),
        ("audio/pcma" | "g711_alaw", _) => Ok((Encoding::Alaw, 8_000)),
        (k, _) => Err((
            P,
            format!("unknown audio format `{k}` (audio/pcm, audio/pcmu, audio/pcma)"),
        )),
    }
}

fn parse_turn_detection(td: &Value) -> Result<Option<ServerVad>, (&'static str, String)> {
    const P: &str = "session.audio.input.turn_detection";
    if td.is_null() {
        return Ok(None);
    }
    match td.get("type").and_then(Value::as_str) {
        Some("server_vad") | None => {
            let d = ServerVad::default();
            let num = |k: &str| td.get(k).filter(|v| !v.is_null());
            let threshold = match num("threshold") {
                Some(v) => v
                    .as_f64()
                    .filter(|t| (0.0..=1.0).contains(t))
                    .ok_or((P, "threshold must be between 0 and 1".to_string()))?
                    as f32,
                None => d.threshold,
            };
            let ms = |k: &str, dflt: u64| -> Result<u64, (&'static str, String)> {
                match num(k) {
                    Some(v) => v
                        .as_u64()
                        .filter(|&m| m <= 60_000)
                        .ok_or((P, format!("{k} must be 0..60000 ms"))),
                    None => Ok(dflt),
                }
            };
            Ok(Some(ServerVad {
                threshold,
                prefix_padding_ms: ms("prefix_padding_ms", d.prefix_padding_ms)?,
                silence_duration_ms: ms("silence_duration_ms", d.silence_duration_ms)?.max(32),
            }))
        }
        Some(t) => Err((
            P,
            format!("turn detection `{t}` is not supported: server_vad or null"),
        )),
    }
}

/// G.711 µ-law to 16-bit linear.
fn mulaw(b: u8) -> i16 {
    let b = !b;
    let t = (((b & 0x0f) as i16) << 3) + 0x84;
    let t = t << ((b & 0x70) >> 4);
    if b & 0x80 != 0 {
        0x84 - t
    } else {
        t - 0x84
    }
}

/// G.711 A-law to 16-bit linear.
fn alaw(b: u8) -> i16 {
    let b = b ^ 0x55;
    let mut t = ((b & 0x0f) as i16) << 4;
    let seg = (b & 0x70) >> 4;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    if b & 0x80 != 0 {
        t
    } else {
        -t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partial pass's transcript: words (each with its leading space) ending at the times given.
    fn pass(words: &[(&str, f64)]) -> Transcript {
        let text: String = words.iter().map(|w| w.0).collect();
        let words: Vec<Value> = words
            .iter()
            .map(|(w, end)| json!({"word": w, "start": end - 0.3, "end": end, "probability": 0.9}))
            .collect();
        serde_json::from_value(
            json!({"text": text.trim(), "language": "en", "duration": 30.0,
            "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": 30.0, "text": text, "tokens": [],
                "temperature": 0.0, "avg_logprob": -0.1, "compression_ratio": 1.0,
                "no_speech_prob": 0.0, "words": words}]}),
        )
        .unwrap()
    }

    fn split(t: &Transcript) -> Vec<String> {
        t.text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn agreement_waits_for_words_to_settle_and_for_their_punctuation() {
        // Two passes that agree on a guess at the edge of the audio (heard to 3.0 s, then
        // 3.4 s): only words a second clear of the edge go out.
        let a = pass(&[
            (" ask", 1.0),
            (" not", 1.4),
            (" what", 2.5),
            (" you", 2.7),
            (" are", 2.9),
        ]);
        let b = pass(&[
            (" ask", 1.0),
            (" not", 1.4),
            (" what", 2.5),
            (" you", 2.7),
            (" are", 3.0),
            (" going", 3.3),
        ]);
        assert_eq!(agree("", &split(&a), &b, 3.4).as_deref(), Some("ask not"));
        // Without the settling rule the guess would have gone out.
        assert_eq!(
            agree("", &split(&a), &b, 99.0).as_deref(),
            Some("ask not what you")
        );
        // A closing period is held back until the next word is agreed on: the final decode
        // may drop it ("country And so"), and the deltas must still join into it.
        let c = pass(&[
            (" your", 1.0),
            (" country.", 1.5),
            (" And", 4.0),
            (" so", 4.2),
        ]);
        let d = pass(&[
            (" your", 1.0),
            (" country.", 1.5),
            (" And", 4.0),
            (" so", 4.2),
            (" my", 4.5),
        ]);
        assert_eq!(
            agree("", &split(&c), &d, 4.0).as_deref(),
            Some("your country")
        );
        assert_eq!(
            agree("your country", &split(&c), &d, 5.3).as_deref(),
            Some(". And")
        );
        // Nothing new, or text that does not extend what was sent: nothing.
        assert_eq!(agree("your country", &split(&c), &d, 4.0), None);
        assert_eq!(agree("our country", &split(&c), &d, 5.3), None);
        assert_eq!(agree("", &[], &d, 9.0), None);
        // Passes that punctuate the same words differently still agree on them (in the newer
        // pass's spelling), and a later pass that punctuates the sent words differently again
        // still extends them; different words do not agree.
        let e = pass(&[(" But,", 0.5), (" email,", 1.0), (" and", 1.3)]);
        let f = pass(&[(" But", 0.5), (" email,", 1.0), (" and", 1.3), (" so", 1.6)]);
        assert_eq!(agree("", &split(&e), &f, 9.0).as_deref(), Some("But email"));
        let g = pass(&[
            (" But,", 0.5),
            (" email,", 1.0),
            (" and", 1.3),
            (" so", 1.6),
            (" on", 1.9),
        ]);
        assert_eq!(
            agree("But email", &split(&f), &g, 9.0).as_deref(),
            Some(", and")
        );
        let h = pass(&[(" But,", 0.5), (" A-mail,", 1.0), (" and", 1.3)]);
        assert_eq!(agree("", &split(&e), &h, 9.0).as_deref(), Some("But"));
        assert_eq!(agree("But", &split(&e), &h, 9.0), None);
        // Only the punctuation at a word's edges is set aside: letters, apostrophes inside a
        // word and combining marks still tell words apart.
        let i = pass(&[(" We're", 0.5), (" late,", 1.0), (" so", 1.3)]);
        let j = pass(&[(" Were", 0.5), (" late,", 1.0), (" so", 1.3)]);
        assert_eq!(agree("", &split(&i), &j, 9.0), None);
        let k = pass(&[(" \u{0e44}\u{0e21}\u{0e48}", 0.5), (" a", 1.0), (" b", 1.3)]);
        let l = pass(&[(" \u{0e44}\u{0e21}\u{0e49}", 0.5), (" a", 1.0), (" b", 1.3)]);
        assert_eq!(agree("", &split(&k), &l, 9.0), None);
        assert_eq!(bare_word("\"Hello,\""), "hello");
        assert_eq!(bare_word("-"), "-");
    }

    #[test]
    fn the_final_text_continues_what_was_sent_up_to_case_and_punctuation() {
        let fin = "And so my fellow Americans ask not What your country And so, my fellow";
        assert_eq!(
            continuation("And so my fellow", fin),
            Some(" Americans ask not What your country And so, my fellow")
        );
        // The partial passes agreed on a period and a lower-case word the final pass drops.
        let sent = "And so my fellow Americans ask not what your country. And so";
        assert_eq!(continuation(sent, fin), Some(", my fellow"));
        assert_eq!(continuation("", fin), Some(fin));
        // Different words, or more sent than the final has: no continuation.
        assert_eq!(continuation("And so my friend", fin), None);
        assert_eq!(continuation("my fellow", fin), None);
        assert_eq!(continuation(&format!("{fin} Americans"), fin), None);
        // A combining mark is part of its word: it never starts the continuation.
        assert_eq!(
            continuation("\u{0e44}\u{0e21}", "\u{0e44}\u{0e21}\u{0e49} a"),
            None
        );
    }

    #[test]
    fn final_passes_decode_at_the_realtime_width_and_partial_passes_greedily() {
        let mut server = TranscribeOptions::default();
        server.beam.beam_size = 5;
        let limits = Limits {
            max_session: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            beam_size: 1,
        };
        let session = session_defaults(&server, &limits);
        assert_eq!(session.beam.beam_size, 1);
        assert!(!session.vad.enabled);
        let wide = session_defaults(
            &server,
            &Limits {
                beam_size: 3,
                ..limits
            },
        );
        assert_eq!(wide.beam.beam_size, 3);
        let partial = partial_options(wide);
        assert_eq!(partial.beam.beam_size, 1);
        assert_eq!(partial.temperatures, vec![0.0]);
        assert!(partial.word_timestamps);
    }

    #[test]
    fn g711_decodes_to_the_standard_values() {
        assert_eq!(mulaw(0xff), 0);
        assert_eq!(mulaw(0x00), -32124);
        assert_eq!(mulaw(0x80), 32124);
        assert_eq!(alaw(0xd5), 8);
        assert_eq!(alaw(0x55), -8);
        assert_eq!(alaw(0xaa), 32256);
    }

    #[test]
    fn formats_and_turn_detection() {
        assert_eq!(
            parse_format(&json!({"type": "audio/pcm", "rate": 24000})).unwrap(),
            (Encoding::Pcm16, 24_000)
        );
        assert_eq!(
            parse_format(&json!({"type": "audio/pcm", "rate": 16000})).unwrap(),
            (Encoding::Pcm16, 16_000)
        );
        assert_eq!(
            parse_format(&json!({"type": "audio/pcmu"})).unwrap(),
            (Encoding::Mulaw, 8_000)
        );
        assert_eq!(
            parse_format(&json!("pcm16")).unwrap(),
            (Encoding::Pcm16, 24_000)
        );
        assert!(parse_format(&json!({"type": "audio/pcm", "rate": 44100})).is_err());
        assert!(parse_format(&json!({"type": "audio/opus"})).is_err());
        assert_eq!(parse_turn_detection(&Value::Null).unwrap(), None);
        let v = parse_turn_detection(&json!({"type": "server_vad", "silence_duration_ms": 800}))
            .unwrap()
            .unwrap();
        assert_eq!(
            (v.threshold, v.prefix_padding_ms, v.silence_duration_ms),
            (0.5, 300, 800)
        );
        assert!(parse_turn_detection(&json!({"type": "semantic_vad"})).is_err());
        assert!(parse_turn_detection(&json!({"type": "server_vad", "threshold": 2})).is_err());
    }
}
