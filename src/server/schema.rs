//! whisperd's own API description: `GET /openapi.json`, an OpenAPI 3.1 document generated (by
//! `utoipa`) from the handlers' `#[utoipa::path]` annotations and the types their bodies are
//! made of. The request forms here are also the handlers' list of accepted fields: a field that
//! is in no form is refused with 400 `unknown_parameter` (an ignored field is worse than an error).

use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;

use actix_web::HttpResponse;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::error::ApiError;

/// The form of `POST /transcribe`, `/v1/audio/transcriptions` and `/v1/audio/translations`
/// (multipart; every field may also come in the query string). The OpenAI endpoints take the
/// same fields; `task` is `/transcribe`'s only.
#[allow(dead_code)] // a schema: the handlers read the form as text fields
#[derive(Serialize, ToSchema)]
pub struct TranscriptionForm {
    /// The audio (any format ffmpeg-free decoding knows: wav, flac, mp3, ogg/opus, m4a/aac, …).
    #[schema(content_media_type = "application/octet-stream")]
    file: Option<Vec<u8>>,
    /// Audio to fetch instead of `file` (http/https, public addresses only unless the operator
    /// allows private ones).
    url: Option<String>,
    /// The model's name or an alias (`GET /v1/models`; OpenAI's names by default); another name
    /// is 404 `model_not_found`.
    model: Option<String>,
    /// ISO-639-1 language of the audio; detected when absent.
    language: Option<String>,
    /// `transcribe` or `translate` (to English) — `/transcribe` only.
    task: Option<String>,
    /// Text that precedes the audio (spelling, style).
    prompt: Option<String>,
    /// `json`, `text`, `srt`, `vtt`, `verbose_json`, `tsv` (`/transcribe`), `rttm`
    /// (`/transcribe`), `diarized_json` (the last two turn diarization on).
    response_format: Option<String>,
    /// Sampling temperature; 0 = the fallback ladder from the config.
    temperature: Option<f64>,
    /// `segment` and/or `word` (OpenAI endpoints, `verbose_json`).
    #[serde(rename = "timestamp_granularities[]")]
    timestamp_granularities: Option<Vec<String>>,
    /// `logprobs` (OpenAI endpoints, `json`).
    #[serde(rename = "include[]")]
    include: Option<Vec<String>>,
    /// Stream results as server-sent events.
    stream: Option<bool>,
    /// `auto` or a `server_vad` object: Silero VAD chunks the audio.
    chunking_strategy: Option<String>,
    /// Possible languages of the audio: detection picks among these.
    #[serde(rename = "languages[]")]
    languages: Option<Vec<String>>,
    /// Words or phrases that guide the transcription (names, jargon).
    #[serde(rename = "keywords[]")]
    keywords: Option<Vec<String>>,
    /// Beam search width at temperature 0 (1 = greedy).
    beam_size: Option<u32>,
    patience: Option<f64>,
    /// `none` or a number.
    length_penalty: Option<String>,
    /// Samples per temperature above 0.
    best_of: Option<u32>,
    compression_ratio_threshold: Option<f64>,
    logprob_threshold: Option<f64>,
    no_speech_threshold: Option<f64>,
    condition_on_previous_text: Option<bool>,
    /// Segment timestamps (`false`: one segment per window, no times).
    timestamps: Option<bool>,
    /// Per-word times and probabilities.
    word_timestamps: Option<bool>,
    /// Subtitles: characters per line.
    max_line_width: Option<u32>,
    /// Subtitles: lines per cue.
    max_line_count: Option<u32>,
    /// Subtitles: words per line.
    max_words_per_line: Option<u32>,
    /// Subtitles: one cue per word, underlined.
    highlight_words: Option<bool>,
    /// Silero VAD on or off (`/transcribe`).
    vad: Option<bool>,
    vad_threshold: Option<f64>,
    vad_neg_threshold: Option<f64>,
    vad_min_speech_duration_ms: Option<u32>,
    vad_max_speech_duration_s: Option<f64>,
    vad_min_silence_duration_ms: Option<u32>,
    vad_speech_pad_ms: Option<u32>,
    /// dBFS, or `none`.
    vad_gate_db: Option<String>,
    /// Who spoke when: segments (and words) carry `speaker`, the answer a `speakers` summary.
    diarize: Option<bool>,
    /// Exactly this many speakers (1–32; implies `diarize`).
    num_speakers: Option<u32>,
    /// At least this many speakers (1–32; implies `diarize`).
    min_speakers: Option<u32>,
    /// At most this many speakers (1–32; implies `diarize`).
    max_speakers: Option<u32>,
    /// Names for the voices of `known_speaker_references[]` (up to 4; implies `diarize`).
    #[serde(rename = "known_speaker_names[]")]
    known_speaker_names: Option<Vec<String>>,
    /// One short clip (1–30 s) per name, as a data URL (`data:audio/wav;base64,…`).
    #[serde(rename = "known_speaker_references[]")]
    known_speaker_references: Option<Vec<String>>,
    /// `mix` (the channels averaged) or `split`: each channel transcribed alone, segments
    /// labelled `CHANNEL_0`, `CHANNEL_1`, … on one timeline (call recordings; at most 8
    /// channels; not with `diarize`). Default from the config.
    channels: Option<String>,
}

/// The form of `POST /v1/jobs`: the transcription fields, plus where to send the outcome
/// (multipart with `file`, or JSON / form-encoded with `url`).
#[allow(dead_code)]
#[derive(Serialize, ToSchema)]
pub struct JobForm {
    #[schema(inline)]
    #[serde(flatten)]
    transcription: TranscriptionForm,
    /// POSTed the outcome, signed (`X-Whisperd-Signature`).
    webhook_url: Option<String>,
}

/// The form of `POST /detect-language`.
#[allow(dead_code)]
#[derive(Serialize, ToSchema)]
pub struct DetectLanguageForm {
    #[schema(content_media_type = "application/octet-stream")]
    file: Vec<u8>,
    /// The model's name or an alias (`GET /v1/models`).
    model: Option<String>,
    /// Languages to choose among.
    #[serde(rename = "languages[]")]
    languages: Option<Vec<String>>,
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`
    pub status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Ready {
    pub ready: bool,
    /// `ok`, or why not (`loading: …`, `draining: …`, `busy: …`).
    pub reason: &'static str,
}

/// An OpenAI `Model` object.
#[derive(Serialize, Clone, ToSchema)]
pub struct ModelObject {
    pub id: String,
    /// `model`
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct ModelList {
    /// `list`
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}

#[derive(Serialize, ToSchema)]
pub struct DetectedLanguage {
    pub language: String,
    pub probability: f32,
    /// The five most likely, most likely first.
    pub top: Vec<crate::transcript::LanguageProbability>,
}

/// `GET /info`: what this server is and runs (open, like `/health`).
#[derive(Serialize, ToSchema)]
pub struct Info {
    pub version: &'static str,
    /// The git commit built from (`unknown` outside `make build`).
    pub git_commit: &'static str,
    /// The default model (what a request without `model` gets).
    pub model: ModelInfo,
    /// Every model this server answers for, the default first.
    pub models: Vec<ModelInfo>,
    /// The configured device (`cpu`, `cuda`, `cuda:N`, `auto`).
    pub device: String,
    pub numerics: Numerics,
    /// What a request that does not choose gets (config defaults).
    pub decoding: Decoding,
    pub limits: Limits,
    pub features: Features,
}

#[derive(Serialize, ToSchema)]
pub struct Decoding {
    /// Beam width at temperature 0 (1 = greedy).
    pub beam_size: usize,
    pub patience: f32,
    /// `null`: the log-probability over the length; a number α: over `((5 + length) / 6)^α`.
    pub length_penalty: Option<f32>,
    /// The temperatures tried in turn while a window's text fails the checks.
    pub temperatures: Vec<f32>,
    /// Samples per temperature above 0.
    pub best_of: usize,
    /// The beam width of a realtime session's final pass (its partial passes are greedy).
    pub realtime_beam_size: usize,
}

#[derive(Clone, Serialize, ToSchema)]
pub struct ModelInfo {
    /// As `/v1/models` lists it (and a request's `model` names it).
    pub name: String,
    /// `loaded`, `loading`, or `unloaded` (it loads on its next request).
    pub state: &'static str,
    /// Requests using it now.
    pub busy: usize,
    /// What it counts for under `models_memory_mb` (an estimate from its weight files).
    pub memory_mb: u64,
    /// `ct2` (CTranslate2 model.bin) or `huggingface` (model.safetensors); while loaded.
    pub layout: Option<String>,
    /// While loaded.
    pub multilingual: Option<bool>,
    /// Layers, heads, widths and vocabulary, read from the weights; while loaded.
    #[schema(value_type = Option<Object>)]
    pub dims: Option<serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
pub struct Numerics {
    /// `f32` or `q8`.
    pub precision: String,
    /// The CPU kernels' instruction set: `portable`, `avx2`, `avx512`, `avx512-bf16`, `amx`.
    pub instruction_set: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Limits {
    pub max_upload_mb: u64,
    pub max_audio_s: f64,
    /// Requests that may wait for inference.
    pub queue_size: usize,
    /// Transcriptions decoding at once (batched).
    pub batch_size: usize,
    pub request_timeout_s: u64,
    pub max_queued_jobs: u64,
    /// Memory budget for loaded models (0: none).
    pub models_memory_mb: u64,
    /// Idle seconds before a model unloads (0: never).
    pub model_ttl_s: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Features {
    /// `off`, `memory`, or `memory+redis`.
    pub cache: &'static str,
    /// Where async jobs live: `sqlite`, `redis`, or `off` (store unavailable).
    pub jobs: &'static str,
    /// Silero VAD loaded.
    pub vad: bool,
    /// API keys required.
    pub auth: bool,
    /// Audio by URL may reach private addresses.
    pub private_urls: bool,
    /// The web page at `/`.
    pub ui: bool,
}

/// `/transcribe` and the OpenAI endpoints answer `application/json` in one of these shapes,
/// by `response_format` and endpoint.
#[allow(dead_code)]
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum TranscriptionResponse<'a> {
    Json(crate::output::TranscriptionJson<'a>),
    Verbose(crate::output::VerboseTranscription<'a>),
    OpenAi(crate::output::OpenAiTranscription<'a>),
}

/// The answers of `/transcribe`, `/v1/audio/transcriptions` and `/v1/audio/translations`: one
/// list, so that the three routes cannot drift apart.
pub struct TranscriptionAnswers;

/// Content types of the text formats (`text`, `srt`, `vtt`, `tsv`) and of a stream.
const TEXT_TYPES: &[&str] = &[
    "text/plain",
    "application/x-subrip",
    "text/vtt",
    "text/tab-separated-values",
    "text/event-stream",
];

const ERRORS: &[(u16, &str)] = &[
    (400, "A bad field (named in `param`)"),
    (401, "Missing or wrong API key"),
    (413, "Upload or audio too long"),
    (429, "Rate or in-flight limit"),
    (503, "Loading, draining or busy (Retry-After)"),
];

impl utoipa::IntoResponses for TranscriptionAnswers {
    fn responses() -> std::collections::BTreeMap<
        String,
        utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
    > {
        use utoipa::openapi::schema::{ObjectBuilder, Ref, Type};
        use utoipa::openapi::{Content, RefOr, ResponseBuilder};
        let json = |name: &str| Content::new(Some(Ref::from_schema_name(name)));
        let mut ok = ResponseBuilder::new()
            .description("The transcript, in the shape `response_format` asks for")
            .content("application/json", json("TranscriptionResponse"));
        for ct in TEXT_TYPES {
            let text = ObjectBuilder::new().schema_type(Type::String).build();
            ok = ok.content(*ct, Content::new(Some(text)));
        }
        let mut answers = std::collections::BTreeMap::new();
        answers.insert("200".to_string(), RefOr::T(ok.build()));
        for (status, what) in ERRORS {
            let r = ResponseBuilder::new()
                .description(*what)
                .content("application/json", json("ErrorResponse"));
            answers.insert(status.to_string(), RefOr::T(r.build()));
        }
        answers
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "whisperd",
        description = "Speech-to-text: Whisper in Rust. /transcribe is whisperd's own API; /v1 follows OpenAI's audio API; /v1/jobs are async jobs.",
    ),
    paths(
        super::routes::health,
        super::routes::ready,
        super::routes::metrics,
        super::routes::info,
        openapi_json,
        super::routes::models,
        super::routes::model,
        super::routes::transcribe_native,
        super::routes::openai_transcriptions,
        super::routes::openai_translations,
        super::routes::detect_language,
        super::realtime::connect,
        super::jobs::create,
        super::jobs::get,
        super::jobs::result,
        super::jobs::cancel,
    ),
    components(schemas(
        TranscriptionForm,
        JobForm,
        DetectLanguageForm,
        TranscriptionResponse,
        crate::output::TranscriptionJson,
        crate::output::VerboseTranscription,
        crate::output::OpenAiTranscription,
        crate::jobs::JobView,
        super::error::ErrorResponse,
    ))
)]
pub struct ApiDoc;

fn doc() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

/// `GET /openapi.json`: this document.
#[utoipa::path(get, path = "/openapi.json", tag = "service",
    responses((status = 200, description = "OpenAPI 3.1 description of this API", content_type = "application/json")))]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(doc())
}

/// The property names of a component schema of the document (`[]` kept), through `allOf` parts
/// and `$ref`s (a flattened form).
fn fields_of(schema: &str) -> BTreeSet<String> {
    fn collect(
        doc: &serde_json::Value,
        s: &serde_json::Value,
        out: &mut BTreeSet<String>,
        depth: u32,
    ) {
        if depth > 8 {
            return;
        }
        if let Some(r) = s["$ref"]
            .as_str()
            .and_then(|r| r.strip_prefix("#/components/schemas/"))
        {
            collect(doc, &doc["components"]["schemas"][r], out, depth + 1);
        }
        if let Some(props) = s["properties"].as_object() {
            out.extend(props.keys().cloned());
        }
        for part in s["allOf"].as_array().into_iter().flatten() {
            collect(doc, part, out, depth + 1);
        }
    }
    let v = serde_json::to_value(doc()).unwrap_or_default();
    let mut out = BTreeSet::new();
    collect(&v, &v["components"]["schemas"][schema], &mut out, 0);
    out
}

/// Which form a route reads.
#[derive(Clone, Copy)]
pub enum Form {
    Transcription,
    Job,
    DetectLanguage,
}

/// Refuse a field no form of this route has. List fields may come as `name[]` or `name`, object
/// fields as `name[key]`.
pub fn check_fields(form: Form, fields: &HashMap<String, String>) -> Result<(), ApiError> {
    static KNOWN: OnceLock<[BTreeSet<String>; 3]> = OnceLock::new();
    let known = KNOWN.get_or_init(|| {
        let t = fields_of("TranscriptionForm");
        let mut j = t.clone();
        j.extend(fields_of("JobForm"));
        [t, j, fields_of("DetectLanguageForm")]
    });
    let known = &known[form as usize];
    let mut unknown: Vec<&str> = fields
        .keys()
        .map(String::as_str)
        .filter(|k| {
            // `name[]` lists and `name[key]` objects (form encodings of chunking_strategy) count
            // as `name`.
            let base = k.split('[').next().unwrap_or(k);
            !known.contains(*k) && !known.contains(base) && !known.contains(&format!("{base}[]"))
        })
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort_unstable();
    Err(ApiError::bad_request(format!(
        "unknown parameter{} {}: see GET /openapi.json for the fields this endpoint takes",
        if unknown.len() > 1 { "s" } else { "" },
        unknown
            .iter()
            .map(|u| format!("`{u}`"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .code("unknown_parameter"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_list_every_field_and_unknown_ones_are_refused() {
        let f = |kv: &[(&str, &str)]| -> HashMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let ok = f(&[
            ("language", "en"),
            ("timestamp_granularities[]", "word"),
            ("languages", "en,de"),
            ("keywords[]", "Kenobi"),
            ("vad_gate_db", "none"),
            ("response_format", "srt"),
            ("chunking_strategy[type]", "server_vad"),
        ]);
        assert!(check_fields(Form::Transcription, &ok).is_ok());
        let e = check_fields(Form::Transcription, &f(&[("langauge", "en")])).unwrap_err();
        assert!(e.message.contains("`langauge`") && e.code == Some("unknown_parameter"));
        assert!(check_fields(Form::Transcription, &f(&[("webhook_url", "x")])).is_err());
        assert!(check_fields(Form::Job, &f(&[("webhook_url", "x"), ("url", "y")])).is_ok());
        assert!(check_fields(Form::DetectLanguage, &f(&[("languages[]", "en")])).is_ok());
        assert!(check_fields(Form::DetectLanguage, &f(&[("prompt", "x")])).is_err());
        let v = serde_json::to_value(doc()).unwrap();
        assert_eq!(v["openapi"], "3.1.0");
        for path in [
            "/transcribe",
            "/v1/audio/transcriptions",
            "/v1/jobs",
            "/v1/jobs/{id}/result",
            "/health",
        ] {
            assert!(v["paths"][path].is_object(), "{path} undocumented");
        }
    }
}
