//! From audio features to tokens and segments: the start sequence, logit rules, greedy/sampled
//! decoding of one 30-s window with temperature fallback (`window`), and OpenAI's long-form
//! seek loop over a whole file (`transcribe`).

pub mod filters;
pub mod languages;
mod runner;
pub mod tokens;
mod transcribe;
pub mod window;

pub use filters::SuppressTokens;
pub use runner::{Cancellable, ModelRunner};
pub use tokens::{SpecialTokens, WhisperTokenizer, TIME_PRECISION};
pub use transcribe::{detect_language, transcribe};
pub use window::{
    decode_window, initial_tokens, DecodeError, FallbackRules, WindowOptions, WindowResult,
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

/// What the caller may choose for a whole transcription. Defaults are OpenAI's transcribe().
#[derive(Debug, Clone, PartialEq)]
pub struct TranscribeOptions {
    /// A language code; `None` detects it on the first window (multilingual models).
    pub language: Option<String>,
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
}

impl Default for TranscribeOptions {
    fn default() -> Self {
        Self {
            language: None,
            task: Task::Transcribe,
            timestamps: true,
            initial_prompt: None,
            condition_on_previous_text: true,
            temperatures: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            compression_ratio_threshold: Some(2.4),
            logprob_threshold: Some(-1.0),
            no_speech_threshold: Some(0.6),
        }
    }
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
    fn task_parses() {
        assert_eq!("Translate".parse::<Task>().unwrap(), Task::Translate);
        assert!("x".parse::<Task>().is_err());
    }
}
