//! The transcript decoding produces: segments, words, the whole recording's result and its
//! statistics. Decoding, the engine, the cache and diarization build and read these; `output`
//! renders them (text, json, verbose_json, srt, vtt, tsv, rttm).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Segment {
    pub id: usize,
    /// Mel frame at which this segment's window started.
    pub seek: usize,
    pub start: f64,
    pub end: f64,
    pub text: String,
    pub tokens: Vec<u32>,
    pub temperature: f32,
    pub avg_logprob: f32,
    pub compression_ratio: f32,
    pub no_speech_prob: f32,
    /// Word timings, when word timestamps were asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub words: Option<Vec<Word>>,
    /// Who speaks (`SPEAKER_00`, … or a known speaker's name), when diarization was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speaker: Option<String>,
    /// The log-probability of each of `tokens` (OpenAI's `include[]=logprobs`; not serialized).
    #[serde(skip)]
    pub token_logprobs: Vec<f32>,
    /// With word timestamps: each token's probability among the text tokens (not serialized).
    #[serde(skip)]
    pub text_probs: Vec<f32>,
}

/// One word with its time in the recording and its confidence (the mean probability of its
/// tokens). The text keeps its leading space and attached punctuation, as OpenAI returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Word {
    pub word: String,
    pub start: f64,
    pub end: f64,
    pub probability: f32,
    /// Who says it, when diarization was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speaker: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    pub text: String,
    /// Language code (`en`, `de`, …).
    pub language: String,
    /// Seconds of audio.
    pub duration: f64,
    pub segments: Vec<Segment>,
    /// How each decoded window's temperature fallback ended (for metrics; not serialized).
    #[serde(skip)]
    pub fallbacks: Vec<crate::decode::WindowFallback>,
    /// What speech detection let through to the decoder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speech: Option<SpeechStats>,
    /// Language identification only: every candidate language, most likely first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language_probabilities: Option<Vec<LanguageProbability>>,
    /// Diarization: each speaker's talk time, in order of first appearance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speakers: Option<Vec<crate::diarize::SpeakerSummary>>,
    /// What diarization took (for metrics; not serialized).
    #[serde(skip)]
    pub diarized: Option<crate::diarize::DiarizeRun>,
}

/// `channels=split`: one transcript per channel (in channel order) merged on one timeline. Each
/// segment and word is labelled `CHANNEL_<n>`; segments are ordered by start (a tie by channel)
/// and numbered again; the text follows that order; `speakers` sums each channel's talk time.
/// The language is the first channel's that has text.
pub fn merge_channels(parts: Vec<Transcript>) -> Transcript {
    let language = parts
        .iter()
        .find(|t| !t.segments.is_empty())
        .or(parts.first())
        .map_or_else(|| "en".to_string(), |t| t.language.clone());
    let duration = parts.iter().map(|t| t.duration).fold(0.0, f64::max);
    let mut speech: Option<SpeechStats> = None;
    let mut segments = Vec::new();
    let mut fallbacks = Vec::new();
    for (c, t) in parts.into_iter().enumerate() {
        let label = format!("CHANNEL_{c}");
        if let Some(s) = t.speech {
            let sum = speech.get_or_insert(SpeechStats {
                vad: s.vad,
                speech_duration: 0.0,
                skipped_duration: 0.0,
            });
            sum.speech_duration += s.speech_duration;
            sum.skipped_duration += s.skipped_duration;
        }
        fallbacks.extend(t.fallbacks);
        for mut seg in t.segments {
            seg.speaker = Some(label.clone());
            for w in seg.words.iter_mut().flatten() {
                w.speaker = Some(label.clone());
            }
            segments.push((c, seg));
        }
    }
    segments.sort_by(|(ca, a), (cb, b)| a.start.total_cmp(&b.start).then(ca.cmp(cb)));
    let segments: Vec<Segment> = segments
        .into_iter()
        .enumerate()
        .map(|(i, (_, mut s))| {
            s.id = i;
            s
        })
        .collect();
    let text = segments
        .iter()
        .map(|s| s.text.as_str())
        .collect::<String>()
        .trim()
        .to_string();
    Transcript {
        text,
        language,
        duration,
        speakers: Some(crate::diarize::summarise(&segments)),
        segments,
        fallbacks,
        speech,
        language_probabilities: None,
        diarized: None,
    }
}

/// One candidate language and its probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LanguageProbability {
    pub language: String,
    pub probability: f32,
}

/// Seconds of the recording that reached the decoder and seconds skipped as silence or non-speech
/// (rendered as `speech` in json and verbose_json).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SpeechStats {
    /// Whether Silero VAD chose the speech (otherwise only the energy gate cut silence).
    pub vad: bool,
    pub speech_duration: f64,
    pub skipped_duration: f64,
}
