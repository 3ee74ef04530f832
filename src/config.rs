//! Every setting of `whisperd serve`, its default, and where it comes from: the defaults here,
//! then a TOML file (`--config`), then `WHISPERD_<NAME>` environment variables, then flags.
//! `whisperd serve --print-config` prints the effective result in the same format as
//! `config/default.toml` (a test keeps the two equal).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub model: String,
    pub models: Vec<String>,
    pub model_aliases: Vec<String>,
    pub model_ttl_s: u64,
    pub models_memory_mb: u64,
    pub device: crate::engine::DeviceSpec,
    pub precision: crate::model::Precision,
    pub http_workers: usize,
    pub threads: usize,
    pub batch_size: usize,
    pub batch_wait_ms: u64,
    pub queue_size: usize,
    pub request_timeout_s: u64,
    pub drain_timeout_s: u64,
    pub drain_grace_s: u64,
    pub max_upload_mb: u64,
    pub max_audio_s: f64,
    pub cache_entries: usize,
    pub cache_mb: u64,
    pub redis_url: String,
    pub redis_timeout_ms: u64,
    pub cache_ttl_s: u64,
    pub jobs_db: String,
    pub job_workers: usize,
    pub max_queued_jobs: u64,
    pub job_ttl_s: u64,
    pub job_visibility_timeout_s: u64,
    pub webhook_secret: String,
    pub allow_private_urls: bool,
    pub url_timeout_s: u64,
    pub ui: bool,
    pub otlp_endpoint: String,
    pub otlp_sample_ratio: f64,
    pub api_keys: Vec<String>,
    pub api_keys_file: String,
    pub rate_limit_per_minute: u32,
    pub max_in_flight_per_key: usize,
    pub realtime_max_sessions_per_key: usize,
    pub realtime_max_session_s: u64,
    pub realtime_idle_timeout_s: u64,
    pub realtime_beam_size: usize,
    pub trusted_proxies: Vec<String>,
    pub log_format: String,
    pub log_level: String,
    pub temperature: Vec<f64>,
    pub compression_ratio_threshold: f64,
    pub logprob_threshold: f64,
    pub no_speech_threshold: f64,
    pub condition_on_previous_text: bool,
    pub best_of: usize,
    pub beam_size: usize,
    pub patience: f64,
    pub length_penalty: String,
    pub vad: bool,
    pub vad_threshold: f64,
    pub vad_min_speech_duration_ms: u32,
    pub vad_max_speech_duration_s: f64,
    pub vad_min_silence_duration_ms: u32,
    pub vad_speech_pad_ms: u32,
    pub vad_gate_db: f64,
    pub vad_model: String,
    pub diarize: bool,
    pub speaker_model: String,
    pub channels: crate::audio::Channels,
}

impl Default for Config {
    fn default() -> Self {
        let v = crate::vad::VadOptions::default();
        Self {
            host: "0.0.0.0".into(),
            port: 8080,
            model: "models/whisper-tiny.en".into(),
            models: Vec::new(),
            model_aliases: [
                "whisper-1",
                "gpt-4o-transcribe",
                "gpt-4o-mini-transcribe",
                "gpt-transcribe",
            ]
            .map(String::from)
            .to_vec(),
            model_ttl_s: 0,
            models_memory_mb: 0,
            device: crate::engine::DeviceSpec::Cpu,
            precision: crate::model::Precision::F32,
            http_workers: 2,
            threads: 0,
            batch_size: crate::scheduler::DEFAULT_MAX_BATCH,
            batch_wait_ms: crate::scheduler::DEFAULT_MAX_WAIT_MS,
            queue_size: 32,
            request_timeout_s: 300,
            drain_timeout_s: 30,
            drain_grace_s: 5,
            max_upload_mb: 25,
            max_audio_s: 7200.0,
            cache_entries: crate::cache::DEFAULT_CACHE_ENTRIES,
            cache_mb: crate::cache::DEFAULT_CACHE_MB,
            redis_url: String::new(),
            redis_timeout_ms: 500,
            cache_ttl_s: 7 * 86_400,
            jobs_db: "data/jobs.sqlite".into(),
            job_workers: 2,
            max_queued_jobs: 1000,
            job_ttl_s: 86_400,
            job_visibility_timeout_s: 60,
            webhook_secret: String::new(),
            allow_private_urls: false,
            url_timeout_s: 120,
            ui: true,
            otlp_endpoint: String::new(),
            otlp_sample_ratio: 1.0,
            api_keys: Vec::new(),
            api_keys_file: String::new(),
            rate_limit_per_minute: 0,
            max_in_flight_per_key: 0,
            realtime_max_sessions_per_key: 4,
            realtime_max_session_s: 1800,
            realtime_idle_timeout_s: 60,
            realtime_beam_size: 1,
            trusted_proxies: Vec::new(),
            log_format: "text".into(),
            log_level: "info".into(),
            temperature: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            compression_ratio_threshold: 2.4,
            logprob_threshold: -1.0,
            no_speech_threshold: 0.6,
            condition_on_previous_text: true,
            best_of: 5,
            beam_size: crate::decode::DEFAULT_BEAM_SIZE,
            patience: 1.0,
            length_penalty: "none".into(),
            vad: crate::vad::DEFAULT_ON,
            vad_threshold: v.threshold as f64,
            vad_min_speech_duration_ms: v.min_speech_duration_ms,
            vad_max_speech_duration_s: v.max_speech_duration_s as f64,
            vad_min_silence_duration_ms: v.min_silence_duration_ms,
            vad_speech_pad_ms: v.speech_pad_ms,
            vad_gate_db: v.gate_db.map_or(f64::NEG_INFINITY, f64::from),
            vad_model: String::new(),
            diarize: false,
            speaker_model: String::new(),
            channels: crate::audio::Channels::Mix,
        }
    }
}

/// One line of documentation per setting, in file order.
const DOCS: &[(&str, &str)] = &[
    ("host", "Address to bind."),
    ("port", "TCP port to listen on."),
    (
        "model",
        "Model directory (CTranslate2 model.bin or Hugging Face model.safetensors + config.json).",
    ),
    (
        "models",
        "Several model directories served by one process (`serve` only), e.g. [\"models/whisper-tiny.en\", \"models/whisper-base\"]: a request's `model` picks one by its directory's name; the first is the default and loads at start, the others on first use. Empty: just `model`.",
    ),
    (
        "model_aliases",
        "Other names a request's `model` may use for the default model (by default OpenAI's, so every OpenAI client works unchanged); any name but these and the models' own is answered 404 model_not_found.",
    ),
    (
        "model_ttl_s",
        "Unload a model no request has used for this many seconds (it loads again on its next request); 0 = keep models loaded.",
    ),
    (
        "models_memory_mb",
        "Memory budget for loaded models (each counted as about 3.4x its weight file, /info shows the figure): loading one past it first unloads the idle model used longest ago; when every loaded model is busy the request gets 503 with Retry-After. 0 = no budget.",
    ),
    (
        "device",
        "cpu, cuda, cuda:N or auto (CUDA needs a build with --features cuda).",
    ),
    (
        "precision",
        "f32, or q8 (decoder weights quantized to Q8_0 at load: faster, slightly less exact).",
    ),
    (
        "http_workers",
        "HTTP worker threads (they only parse and wait; inference runs on the compute threads).",
    ),
    (
        "threads",
        "Compute threads for inference; 0 = one per CPU core.",
    ),
    (
        "batch_size",
        "Transcriptions in progress at once: their windows share encoder batches and their tokens one decoder step (1 = one at a time).",
    ),
    (
        "batch_wait_ms",
        "Longest a new window waits, while other requests are decoding, to join an encoder batch (so their tokens then decode together).",
    ),
    (
        "queue_size",
        "Requests that may wait for inference; beyond it the server answers 503 with Retry-After.",
    ),
    (
        "request_timeout_s",
        "A request still queued after this many seconds fails with 503.",
    ),
    (
        "drain_timeout_s",
        "On SIGTERM/SIGINT, how long in-flight requests may take to finish.",
    ),
    (
        "drain_grace_s",
        "On SIGTERM, seconds to keep accepting requests (with /ready answering 503) so load balancers stop sending new ones before the listener closes.",
    ),
    (
        "max_upload_mb",
        "Largest upload in MiB (413 beyond it, before the body is read).",
    ),
    ("max_audio_s", "Longest audio in seconds (413 beyond it)."),
    (
        "cache_entries",
        "Result cache: most transcripts kept (0 disables the cache).",
    ),
    ("cache_mb", "Result cache: most MiB of transcripts kept."),
    (
        "redis_url",
        "Redis shared by replicas (redis://host:6379/0, rediss:// for TLS): second-level result cache, single flight across replicas, and the async job queue. Empty = this replica alone (jobs in jobs_db).",
    ),
    (
        "redis_timeout_ms",
        "Longest wait for a Redis call; beyond it (or with Redis down) requests go on as on a lone replica and Redis is retried with backoff.",
    ),
    (
        "cache_ttl_s",
        "How long a transcript stays in the Redis result cache.",
    ),
    (
        "jobs_db",
        "SQLite file holding async jobs when redis_url is empty (put it on a volume: queued and running jobs survive a restart).",
    ),
    (
        "job_workers",
        "Async jobs this replica runs at once (their windows batch with other requests); 0 = accept jobs but leave running them to other replicas.",
    ),
    (
        "max_queued_jobs",
        "Unfinished async jobs (with their audio) the store holds; beyond it POST /v1/jobs answers 429.",
    ),
    (
        "job_ttl_s",
        "How long a finished job and its result can be fetched.",
    ),
    (
        "job_visibility_timeout_s",
        "With Redis: a running job whose replica sent no heartbeat for this long (it died) is taken over by another replica.",
    ),
    (
        "webhook_secret",
        "Key for the HMAC-SHA256 signature (X-Whisperd-Signature) of webhook calls; jobs with webhook_url are refused while it is empty.",
    ),
    (
        "allow_private_urls",
        "Let audio URLs and webhook URLs reach loopback, private, link-local and metadata addresses (off: only public addresses, checked on the address actually connected to).",
    ),
    (
        "url_timeout_s",
        "Longest time to download audio from a URL (its size is bounded by max_upload_mb).",
    ),
    (
        "otlp_endpoint",
        "OpenTelemetry collector for traces over OTLP/HTTP, e.g. http://otel-collector:4318 (/v1/traces is appended to a bare host); empty = no traces. The W3C traceparent header continues a caller's trace.",
    ),
    (
        "otlp_sample_ratio",
        "Share of new traces exported (0-1); requests carrying a traceparent follow the caller's sampling decision.",
    ),
    (
        "ui",
        "Serve the web page at / (upload or record, see the transcript, download subtitles); it uses the public API, so API keys still apply to what it does.",
    ),
    (
        "api_keys",
        "Accepted API keys (Authorization: Bearer KEY); empty = no authentication.",
    ),
    (
        "api_keys_file",
        "File with one API key per line (# comments), added to api_keys; re-read within 2 s of a change and on SIGHUP. Setting it turns authentication on even while it lists no key.",
    ),
    (
        "rate_limit_per_minute",
        "Requests per minute per API key (or client IP without keys); 0 = unlimited.",
    ),
    (
        "max_in_flight_per_key",
        "Requests one API key (or client IP without keys) may have in progress at once; beyond it 429 with Retry-After. 0 = unlimited.",
    ),
    (
        "realtime_max_sessions_per_key",
        "Realtime (WebSocket /v1/realtime) sessions one API key (or client IP without keys) may hold open; beyond it 429. 0 = unlimited.",
    ),
    (
        "realtime_max_session_s",
        "Longest a realtime session may last; then it gets an error event and is closed.",
    ),
    (
        "realtime_idle_timeout_s",
        "A realtime session with no client message for this long gets an error event and is closed.",
    ),
    (
        "realtime_beam_size",
        "Beam width of a realtime session's final pass (1 = greedy, at most 16; partial passes are always greedy). Greedy keeps `completed` within a second of the end of speech on small CPUs; with beam_size it equals an upload at beam_size.",
    ),
    (
        "trusted_proxies",
        "Proxies (IP addresses or CIDRs) whose X-Forwarded-For / Forwarded headers name the client; from anyone else those headers are ignored and the peer address is the client.",
    ),
    ("log_format", "text or json."),
    (
        "log_level",
        "error, warn, info, debug or trace (RUST_LOG overrides).",
    ),
    (
        "temperature",
        "Default temperatures tried in order while a window's text fails the two checks below (0 = deterministic: beam search at beam_size, greedy at 1); if all fail, the attempt with the best average log-probability is kept. A request's `temperature` field overrides it.",
    ),
    (
        "compression_ratio_threshold",
        "Retry at the next temperature when the text's zlib compression ratio is above this (repetitive text); inf turns the check off.",
    ),
    (
        "logprob_threshold",
        "Retry at the next temperature when the text's average token log-probability is below this; -inf turns the check off.",
    ),
    (
        "no_speech_threshold",
        "A window whose no-speech probability is above this and whose text fails logprob_threshold is silence: no retry, no text.",
    ),
    (
        "condition_on_previous_text",
        "Feed each window's text to the next as its prompt (reset after a window that needed a temperature above 0.5).",
    ),
    (
        "best_of",
        "Samples drawn at each temperature above 0; the one with the best average log-probability is that temperature's attempt.",
    ),
    (
        "beam_size",
        "Beam search width at temperature 0 (1 = greedy, at most 16). A request's `beam_size` field overrides it; the OpenAI endpoints use this default.",
    ),
    (
        "patience",
        "Beam search: finished candidates collected before a window stops, as a multiple of beam_size.",
    ),
    (
        "length_penalty",
        "Beam search ranking: \"none\" divides a candidate's log-probability by its length (faster-whisper's default); a number a divides by ((5 + length) / 6)^a.",
    ),
    (
        "vad",
        "Silero VAD on /transcribe by default: only speech reaches the decoder, in chunks of at most 30 s, times mapped back to the recording. /v1 uses VAD only when a request sends chunking_strategy. Either way the energy gate (vad_gate_db) drops long near-silence.",
    ),
    (
        "vad_threshold",
        "Speech probability at or above which a 32-ms frame is speech (faster-whisper's threshold).",
    ),
    (
        "vad_min_speech_duration_ms",
        "Speech regions shorter than this are dropped.",
    ),
    (
        "vad_max_speech_duration_s",
        "Longer speech regions are split at their last pause of 98 ms or more; inf = never.",
    ),
    (
        "vad_min_silence_duration_ms",
        "Silence shorter than this does not end a speech region.",
    ),
    (
        "vad_speech_pad_ms",
        "Audio kept on each side of a speech region.",
    ),
    (
        "vad_gate_db",
        "Energy gate: runs of 1 s or more quieter than this (dBFS) and 50 dB below the recording's loudest frame are dropped before VAD and decoding; -inf turns the gate off.",
    ),
    (
        "vad_model",
        "Silero VAD v6 ONNX file; empty = silero-vad/silero_vad_v6.onnx beside the model directory (where `make model` puts it), else models/silero-vad/ under the working directory.",
    ),
    (
        "diarize",
        "Label every transcript's segments with speakers (who spoke when) unless a request sends diarize=false; requests turn it on with diarize=true, a speaker count, or response_format=rttm/diarized_json.",
    ),
    (
        "speaker_model",
        "GE2E speaker-encoder file for diarization; empty = ge2e/ge2e.safetensors beside the model directory (where `make model-ge2e` puts it), else models/ge2e/ under the working directory. Without one, diarization requests get 400.",
    ),
    (
        "channels",
        "How a recording's channels are transcribed unless a request sends channels=: mix (averaged into one signal) or split (each channel alone, segments labelled CHANNEL_0, CHANNEL_1, … on one timeline: call recordings with each party on its own channel; at most 8 channels). Does not combine with diarize = true.",
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
    #[error("environment variable {var}: {msg}")]
    Env { var: String, msg: String },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl Config {
    /// Defaults, then the file (if any), then `WHISPERD_*` variables from `env`.
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut value = toml::Value::try_from(Config::default())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(path) = file {
            let p = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                path: p.clone(),
                msg: e.to_string(),
            })?;
            let from_file: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::File {
                        path: p.clone(),
                        msg: e.to_string(),
                    })?;
            // Validate names and types against the struct before merging.
            Config::deserialize(toml::Value::Table(from_file.clone())).map_err(|e| {
                ConfigError::File {
                    path: p.clone(),
                    msg: e.to_string(),
                }
            })?;
            if let toml::Value::Table(t) = &mut value {
                t.extend(from_file);
            }
        }
        if let toml::Value::Table(t) = &mut value {
            for (key, _) in DOCS {
                let var = format!("WHISPERD_{}", key.to_ascii_uppercase());
                if let Some(raw) = env(&var) {
                    let current = t
                        .get(*key)
                        .cloned()
                        .unwrap_or(toml::Value::String(String::new()));
                    let parsed = parse_like(&current, &raw).map_err(|msg| ConfigError::Env {
                        var: var.clone(),
                        msg,
                    })?;
                    t.insert((*key).to_string(), parsed);
                }
            }
        }
        let cfg = Config::deserialize(value).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.queue_size == 0 {
            return bad("queue_size must be at least 1");
        }
        if self.diarize && self.channels == crate::audio::Channels::Split {
            return bad(
                "diarize = true and channels = \"split\" both label speakers: turn one off",
            );
        }
        if self.batch_size == 0 || self.batch_size > 256 {
            return bad("batch_size must be between 1 and 256");
        }
        if self.http_workers == 0 {
            return bad("http_workers must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.otlp_sample_ratio) {
            return bad("otlp_sample_ratio must be between 0 and 1");
        }
        if !self.otlp_endpoint.is_empty() {
            if let Err(e) = crate::telemetry::traces_url(&self.otlp_endpoint) {
                return Err(ConfigError::Invalid(e.to_string()));
            }
        }
        if self.max_upload_mb == 0 || self.max_audio_s.is_nan() || self.max_audio_s <= 0.0 {
            return bad("max_upload_mb and max_audio_s must be positive");
        }
        if self.redis_timeout_ms == 0 || self.url_timeout_s == 0 || self.job_ttl_s == 0 {
            return bad("redis_timeout_ms, url_timeout_s and job_ttl_s must be positive");
        }
        if self.job_visibility_timeout_s < 3 {
            return bad(
                "job_visibility_timeout_s must be at least 3 (heartbeats go every third of it)",
            );
        }
        if !self.redis_url.is_empty() && redis::Client::open(self.redis_url.as_str()).is_err() {
            return bad("redis_url must look like redis://host:6379/0 (or rediss:// or unix://)");
        }
        if self.precision == crate::model::Precision::Q8
            && matches!(self.device, crate::engine::DeviceSpec::Cuda(_))
        {
            return bad("precision = \"q8\" runs on the CPU only: use precision = \"f32\" with device = \"cuda\"");
        }
        for p in &self.trusted_proxies {
            if p.parse::<crate::net::IpNet>().is_err() {
                return bad(&format!(
                    "trusted_proxies: `{p}` is not an IP address or CIDR (e.g. 10.0.0.0/8)"
                ));
            }
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return bad("log_format must be text or json");
        }
        if let Err(msg) = crate::decode::parse_length_penalty(&self.length_penalty) {
            return Err(ConfigError::Invalid(format!("length_penalty: {msg}")));
        }
        let realtime_beam = crate::decode::BeamOptions {
            beam_size: self.realtime_beam_size,
            ..Default::default()
        };
        if let Err((_, msg)) = realtime_beam.check() {
            return Err(ConfigError::Invalid(format!("realtime_beam_size: {msg}")));
        }
        if let Err((name, msg)) = self.transcribe_defaults().check_fallback() {
            return Err(ConfigError::Invalid(format!("{name}: {msg}")));
        }
        Ok(())
    }

    /// The model directories `serve` runs, the default first: `models`, or else `model`.
    pub fn model_dirs(&self) -> Vec<std::path::PathBuf> {
        let dirs: Vec<std::path::PathBuf> = self
            .models
            .iter()
            .map(|m| m.trim())
            .filter(|m| !m.is_empty())
            .map(std::path::PathBuf::from)
            .collect();
        if dirs.is_empty() {
            vec![self.model.clone().into()]
        } else {
            dirs
        }
    }

    /// The transcription options a request starts from (its fields override them).
    pub fn transcribe_defaults(&self) -> crate::TranscribeOptions {
        crate::TranscribeOptions {
            temperatures: self.temperature.iter().map(|&t| t as f32).collect(),
            compression_ratio_threshold: Some(self.compression_ratio_threshold as f32),
            logprob_threshold: Some(self.logprob_threshold as f32),
            no_speech_threshold: Some(self.no_speech_threshold as f32),
            condition_on_previous_text: self.condition_on_previous_text,
            best_of: self.best_of,
            beam: crate::decode::BeamOptions {
                beam_size: self.beam_size,
                patience: self.patience as f32,
                // Checked in `validate`; a bad value there never reaches a request.
                length_penalty: crate::decode::parse_length_penalty(&self.length_penalty)
                    .unwrap_or(None),
            },
            vad: crate::vad::VadOptions {
                enabled: self.vad,
                ..self.vad_settings()
            },
            diarize: self.diarize.then(Default::default),
            channels: self.channels,
            ..Default::default()
        }
    }

    /// The VAD thresholds, with VAD off (the gate on, as configured): what `/v1` uses unless a
    /// request's `chunking_strategy` turns VAD on.
    pub fn vad_settings(&self) -> crate::vad::VadOptions {
        crate::vad::VadOptions {
            enabled: false,
            threshold: self.vad_threshold as f32,
            neg_threshold: None,
            min_speech_duration_ms: self.vad_min_speech_duration_ms,
            max_speech_duration_s: self.vad_max_speech_duration_s as f32,
            min_silence_duration_ms: self.vad_min_silence_duration_ms,
            speech_pad_ms: self.vad_speech_pad_ms,
            gate_db: Some(self.vad_gate_db as f32).filter(|g| g.is_finite()),
        }
    }

    /// The config as a commented TOML file (the format of `config/default.toml`).
    pub fn to_commented_toml(&self) -> String {
        let value = toml::Value::try_from(self).unwrap_or(toml::Value::Table(Default::default()));
        let mut out = String::from("# whisperd configuration: every setting with its default.\n# Each can be overridden by WHISPERD_<NAME> (e.g. WHISPERD_PORT=9000) and by `whisperd serve` flags.\n\n");
        for (key, doc) in DOCS {
            out.push_str(&format!("# {doc}\n"));
            if let Some(v) = value.get(*key) {
                out.push_str(&format!("{key} = {v}\n"));
            }
        }
        out
    }
}

/// Parse an environment string into the type of `current` (lists are comma-separated).
fn parse_like(current: &toml::Value, raw: &str) -> Result<toml::Value, String> {
    Ok(match current {
        toml::Value::Integer(_) => toml::Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| format!("`{raw}` is not a whole number"))?,
        ),
        toml::Value::Float(_) => toml::Value::Float(
            raw.trim()
                .parse()
                .map_err(|_| format!("`{raw}` is not a number"))?,
        ),
        toml::Value::Boolean(_) => {
            toml::Value::Boolean(matches!(raw.trim(), "1" | "true" | "yes" | "on"))
        }
        toml::Value::Array(items) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| match items.first() {
                    // A list of numbers (temperature) stays one.
                    Some(first @ toml::Value::Float(_)) => parse_like(first, s),
                    _ => Ok(toml::Value::String(s.to_string())),
                })
                .collect::<Result<_, _>>()?,
        ),
        _ => toml::Value::String(raw.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_env_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "port = 9000\nqueue_size = 4\n").unwrap();
        let env = |k: &str| match k {
            "WHISPERD_PORT" => Some("9100".to_string()),
            "WHISPERD_API_KEYS" => Some("a, b".to_string()),
            _ => None,
        };
        let c = Config::load(Some(&f), env).unwrap();
        assert_eq!(
            (c.port, c.queue_size, c.api_keys.clone()),
            (9100, 4, vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(c.host, "0.0.0.0");
        let c = Config::load(None, |k| {
            (k == "WHISPERD_TEMPERATURE").then(|| "0, 0.5".to_string())
        })
        .unwrap();
        assert_eq!(c.transcribe_defaults().temperatures, vec![0.0, 0.5]);
        let e = Config::load(None, |k| {
            (k == "WHISPERD_TEMPERATURE").then(|| "0, 2".to_string())
        })
        .unwrap_err();
        assert!(e.to_string().contains("temperature"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "prot = 9000\n").unwrap();
        assert!(Config::load(Some(&f), |_| None)
            .unwrap_err()
            .to_string()
            .contains("prot"));
        let e =
            Config::load(None, |k| (k == "WHISPERD_PORT").then(|| "http".to_string())).unwrap_err();
        assert!(e.to_string().contains("WHISPERD_PORT"));
        for (key, v) in [
            ("WHISPERD_BEAM_SIZE", "0"),
            ("WHISPERD_REALTIME_BEAM_SIZE", "17"),
        ] {
            let e = Config::load(None, |k| (k == key).then(|| v.to_string())).unwrap_err();
            let name = key.trim_start_matches("WHISPERD_").to_lowercase();
            assert!(e.to_string().contains(&name), "{key}={v}: {e}");
        }
    }

    /// Device and precision are the CLI's types: parsed once, case-insensitive, and a pair that
    /// cannot run is refused before anything loads.
    #[test]
    fn device_and_precision_are_typed() {
        use crate::engine::DeviceSpec;
        use crate::model::Precision;
        let env = |k: &str| match k {
            "WHISPERD_PRECISION" => Some("Q8".to_string()),
            "WHISPERD_DEVICE" => Some("auto".to_string()),
            _ => None,
        };
        let c = Config::load(None, env).unwrap();
        assert_eq!((c.precision, c.device), (Precision::Q8, DeviceSpec::Auto));
        let e = Config::load(None, |k| {
            (k == "WHISPERD_DEVICE").then(|| "tpu".to_string())
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("`device`") && e.contains("tpu"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "device = \"cuda:1\"\nprecision = \"int8\"\n").unwrap();
        let e = Config::load(Some(&f), |_| None).unwrap_err().to_string();
        assert!(e.contains("CPU only"), "{e}");
        std::fs::write(&f, "device = \"CUDA:1\"\n").unwrap();
        let c = Config::load(Some(&f), |_| None).unwrap();
        assert_eq!(c.device, DeviceSpec::Cuda(1));
        assert!(
            c.to_commented_toml().contains("device = \"cuda:1\""),
            "{}",
            c.to_commented_toml()
        );
    }

    #[test]
    fn commented_toml_round_trips() {
        let text = Config::default().to_commented_toml();
        let parsed: Config = toml::from_str(&text).unwrap();
        assert_eq!(parsed, Config::default());
        assert_eq!(
            text.lines().filter(|l| l.starts_with("# ")).count(),
            DOCS.len() + 2
        );
    }
}
