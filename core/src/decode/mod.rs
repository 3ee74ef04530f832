//! From audio features to tokens and segments: the start sequence, logit rules, greedy/sampled
//! decoding of one 30-s window with temperature fallback (`window`), and OpenAI's long-form
//! seek loop over a whole file (`transcribe`).

pub mod beam;
pub mod filters;
pub mod languages;
mod runner;
pub mod timing;
pub mod tokens;
mod transcribe;
pub mod window;

pub use beam::{parse_length_penalty, BeamOptions, MAX_BEAM_SIZE};
pub use filters::SuppressTokens;
pub use runner::{Cancellable, ModelRunner};
pub use tokens::{SpecialTokens, WhisperTokenizer, TIME_PRECISION};
pub use transcribe::{detect_language, language_probabilities, transcribe, Content};
pub use window::{
    decode_window, initial_tokens, select_fallback, DecodeError, FallbackOutcome, FallbackResult,
    FallbackRules, WindowFallback, WindowOptions, WindowResult,
};

/// transcribe (speech → text in its language) or translate (speech → English).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    #[default]
    Transcribe,
    Translate,
}

impl std::str::FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "transcribe" => Ok(Task::Transcribe),
            "translate" => Ok(Task::Translate),
            other => Err(format!(
                "unknown task `{other}` (expected transcribe or translate)"
            )),
        }
    }
}

/// The beam width the service and the CLI decode with unless told otherwise (config
/// `beam_size`, `--beam-size`): beam search, as faster-whisper, whisper.cpp and openai-whisper's
/// command line do. [`TranscribeOptions::default`] keeps openai-whisper's `transcribe()`
/// default, greedy; realtime partial passes are greedy too.
pub const DEFAULT_BEAM_SIZE: usize = 5;

/// What the caller may choose for a whole transcription. Defaults are OpenAI's transcribe().
#[derive(Debug, Clone, PartialEq)]
pub struct TranscribeOptions {
    /// A language code; `None` detects it on the first window (multilingual models).
    pub language: Option<String>,
    /// Languages detection chooses among (OpenAI's `languages[]`); empty: any.
    pub languages: Vec<String>,
    /// Words or phrases that guide the transcription (OpenAI's `keywords[]`, faster-whisper's
    /// `hotwords`): they lead every window's prompt, ahead of the previous text.
    pub keywords: Vec<String>,
    pub task: Task,
    /// Segment timestamps (and seeking by them). Off: one segment per 30-s window.
    pub timestamps: bool,
    pub initial_prompt: Option<String>,
    /// Feed the previous window's text as the prompt of the next.
    pub condition_on_previous_text: bool,
    /// Tried in order while the output looks like a hallucination.
    pub temperatures: Vec<f32>,
    pub compression_ratio_threshold: Option<f32>,
    pub logprob_threshold: Option<f32>,
    pub no_speech_threshold: Option<f32>,
    /// Samples drawn at each temperature above 0, the best-scoring one kept.
    pub best_of: usize,
    /// Beam search at temperature 0 (`beam_size` 1: greedy).
    pub beam: BeamOptions,
    /// Speech detection before decoding (the energy gate, and Silero VAD when enabled).
    pub vad: crate::vad::VadOptions,
    /// Word-level timings (`timing`): one extra decoder pass per window.
    pub word_timestamps: bool,
    /// Only identify the language (from the first 30 s of speech): no text, and the
    /// transcript's `language_probabilities` filled in.
    pub language_detection_only: bool,
    /// Who spoke when: segments (and words) labelled with speakers.
    pub diarize: Option<crate::diarize::DiarizeOptions>,
    /// The recording's channels mixed, or each transcribed alone (`channels=split`).
    pub channels: crate::audio::Channels,
}

impl Default for TranscribeOptions {
    fn default() -> Self {
        Self {
            language: None,
            languages: Vec::new(),
            keywords: Vec::new(),
            task: Task::Transcribe,
            timestamps: true,
            initial_prompt: None,
            condition_on_previous_text: true,
            temperatures: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            compression_ratio_threshold: Some(2.4),
            logprob_threshold: Some(-1.0),
            no_speech_threshold: Some(0.6),
            best_of: 5,
            beam: BeamOptions::default(),
            vad: crate::vad::VadOptions::default(),
            word_timestamps: false,
            language_detection_only: false,
            diarize: None,
            channels: crate::audio::Channels::Mix,
        }
    }
}

impl TranscribeOptions {
    /// Checks the temperature list and thresholds; the error names the bad setting.
    pub fn check_fallback(&self) -> Result<(), (&'static str, String)> {
        if self.temperatures.is_empty()
            || self.temperatures.iter().any(|t| !(0.0..=1.0).contains(t))
        {
            return Err((
                "temperature",
                "temperatures must be one or more numbers between 0 and 1".into(),
            ));
        }
        if !(1..=20).contains(&self.best_of) {
            return Err(("best_of", "best_of must be between 1 and 20".into()));
        }
        self.beam.check()?;
        for (name, v) in [
            (
                "compression_ratio_threshold",
                self.compression_ratio_threshold,
            ),
            ("logprob_threshold", self.logprob_threshold),
            ("no_speech_threshold", self.no_speech_threshold),
        ] {
            if v.is_some_and(f32::is_nan) {
                return Err((name, format!("{name} must be a number or `none`")));
            }
        }
        self.vad.check()
    }
}

/// A fallback threshold from text: a number (`inf`/`-inf` allowed), or `none`/`off` to turn the
/// check off.
pub fn parse_threshold(v: &str) -> Result<Option<f32>, String> {
    let v = v.trim();
    if matches!(v.to_ascii_lowercase().as_str(), "none" | "off" | "null") {
        return Ok(None);
    }
    match v.parse::<f32>() {
        Ok(x) if !x.is_nan() => Ok(Some(x)),
        _ => Err(format!("must be a number or `none`, not `{v}`")),
    }
}

/// A temperature list from text: comma-separated numbers between 0 and 1, tried in order.
pub fn parse_temperatures(v: &str) -> Result<Vec<f32>, String> {
    let t = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<f32>()
                .ok()
                .filter(|t| (0.0..=1.0).contains(t))
                .ok_or_else(|| format!("`{s}` is not a number between 0 and 1"))
        })
        .collect::<Result<Vec<f32>, String>>()?;
    if t.is_empty() {
        return Err("needs at least one temperature".into());
    }
    Ok(t)
}

/// `len(text) / len(zlib(text))`, as OpenAI computes it: repetitive (hallucinated) text compresses well.
pub fn compression_ratio(text: &str) -> f32 {
    use std::io::Write;
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return 0.0;
    }
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let compressed = enc
        .write_all(bytes)
        .and_then(|_| enc.finish())
        .map(|c| c.len())
        .unwrap_or(bytes.len());
    bytes.len() as f32 / compressed.max(1) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_compresses() {
        let normal = compression_ratio(
            "And so my fellow Americans, ask not what your country can do for you.",
        );
        let looped = compression_ratio(&"I'm sorry. ".repeat(30));
        assert!(normal < 1.6, "{normal}");
        assert!(looped > 2.4, "{looped}");
        assert_eq!(compression_ratio(""), 0.0);
    }

    #[test]
    fn fallback_settings_parse_and_check() {
        assert_eq!(parse_threshold(" 2.4 "), Ok(Some(2.4)));
        assert_eq!(parse_threshold("none"), Ok(None));
        assert!(parse_threshold("high").is_err() && parse_threshold("NaN").is_err());
        assert_eq!(parse_temperatures("0, 0.5,1"), Ok(vec![0.0, 0.5, 1.0]));
        assert!(parse_temperatures("0,1.5").is_err() && parse_temperatures(" ").is_err());
        let mut o = TranscribeOptions::default();
        assert!(o.check_fallback().is_ok());
        o.no_speech_threshold = Some(f32::NAN);
        assert_eq!(o.check_fallback().unwrap_err().0, "no_speech_threshold");
    }

    #[test]
    fn task_parses() {
        assert_eq!("Translate".parse::<Task>().unwrap(), Task::Translate);
        assert!("x".parse::<Task>().is_err());
    }
}
