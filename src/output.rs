//! The finished transcript and its writers: text, json, verbose_json (OpenAI's schema), srt, vtt, tsv.

use serde::{Deserialize, Serialize};

use crate::decode::{languages, Task};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

/// Seconds of the recording that reached the decoder and seconds skipped as silence or non-speech
/// (rendered as `speech` in json and verbose_json).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpeechStats {
    /// Whether Silero VAD chose the speech (otherwise only the energy gate cut silence).
    pub vad: bool,
    pub speech_duration: f64,
    pub skipped_duration: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Text,
    Json,
    VerboseJson,
    Srt,
    Vtt,
    Tsv,
}

impl Format {
    pub const ALL: [Format; 6] = [
        Format::Text,
        Format::Json,
        Format::VerboseJson,
        Format::Srt,
        Format::Vtt,
        Format::Tsv,
    ];

    /// File extension used by the CLI and batch (`jfk.wav.srt`).
    pub fn extension(self) -> &'static str {
        match self {
            Format::Text => "txt",
            Format::Json => "json",
            Format::VerboseJson => "verbose.json",
            Format::Srt => "srt",
            Format::Vtt => "vtt",
            Format::Tsv => "tsv",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json | Format::VerboseJson => "application/json",
            Format::Vtt => "text/vtt; charset=utf-8",
            Format::Srt => "application/x-subrip; charset=utf-8",
            Format::Tsv => "text/tab-separated-values; charset=utf-8",
            Format::Text => "text/plain; charset=utf-8",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" | "txt" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            "verbose_json" | "verbose-json" => Ok(Format::VerboseJson),
            "srt" => Ok(Format::Srt),
            "vtt" => Ok(Format::Vtt),
            "tsv" => Ok(Format::Tsv),
            other => Err(format!("unknown format `{other}` (expected one of text, json, verbose_json, srt, vtt, tsv)")),
        }
    }
}

/// `HH:MM:SS{sep}mmm`.
fn timestamp(seconds: f64, sep: char) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02}{sep}{:03}",
        ms / 3_600_000,
        (ms / 60_000) % 60,
        (ms / 1000) % 60,
        ms % 1000
    )
}

impl Transcript {
    pub fn render(&self, format: Format, task: Task) -> String {
        match format {
            Format::Text => format!("{}\n", self.text),
            Format::Json => {
                let mut v = serde_json::json!({
                    "text": self.text,
                    "language": self.language,
                    "duration": self.duration,
                    "segments": self.segments,
                });
                if let Some(sp) = self.speech {
                    v["speech"] = serde_json::json!(sp);
                }
                v.to_string()
            }
            Format::VerboseJson => self.verbose_json(task).to_string(),
            Format::Srt => self
                .segments
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    format!(
                        "{}\n{} --> {}\n{}\n\n",
                        i + 1,
                        timestamp(s.start, ','),
                        timestamp(s.end, ','),
                        s.text.trim()
                    )
                })
                .collect(),
            Format::Vtt => {
                let mut out = String::from("WEBVTT\n\n");
                for s in &self.segments {
                    out.push_str(&format!(
                        "{} --> {}\n{}\n\n",
                        timestamp(s.start, '.'),
                        timestamp(s.end, '.'),
                        s.text.trim()
                    ));
                }
                out
            }
            Format::Tsv => {
                let mut out = String::from("start\tend\ttext\n");
                for s in &self.segments {
                    let text = s.text.trim().replace('\t', " ");
                    out.push_str(&format!(
                        "{}\t{}\t{}\n",
                        (s.start * 1000.0).round() as u64,
                        (s.end * 1000.0).round() as u64,
                        text
                    ));
                }
                out
            }
        }
    }

    /// OpenAI's `verbose_json`: the language is its English name.
    pub fn verbose_json(&self, task: Task) -> serde_json::Value {
        let mut v = serde_json::json!({
            "task": match task { Task::Transcribe => "transcribe", Task::Translate => "translate" },
            "language": languages::name_of(&self.language).unwrap_or(&self.language),
            "duration": self.duration,
            "text": self.text,
            "segments": self.segments,
        });
        if let Some(sp) = self.speech {
            v["speech"] = serde_json::json!(sp);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Transcript {
        Transcript {
            text: "Hello there. General Kenobi.".into(),
            language: "en".into(),
            duration: 3725.5,
            segments: vec![
                Segment {
                    id: 0,
                    seek: 0,
                    start: 0.0,
                    end: 1.5,
                    text: " Hello there.".into(),
                    tokens: vec![1],
                    temperature: 0.0,
                    avg_logprob: -0.2,
                    compression_ratio: 1.0,
                    no_speech_prob: 0.01,
                },
                Segment {
                    id: 1,
                    seek: 0,
                    start: 3661.25,
                    end: 3662.0,
                    text: " General Kenobi.".into(),
                    tokens: vec![2],
                    temperature: 0.0,
                    avg_logprob: -0.2,
                    compression_ratio: 1.0,
                    no_speech_prob: 0.01,
                },
            ],
            fallbacks: vec![],
            speech: None,
        }
    }

    #[test]
    fn srt_and_vtt_timestamps() {
        let t = sample();
        let srt = t.render(Format::Srt, Task::Transcribe);
        assert!(srt.starts_with("1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n2\n01:01:01,250 --> 01:01:02,000\nGeneral Kenobi.\n\n"), "{srt}");
        let vtt = t.render(Format::Vtt, Task::Transcribe);
        assert!(
            vtt.starts_with("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there.\n"),
            "{vtt}"
        );
        let tsv = t.render(Format::Tsv, Task::Transcribe);
        assert_eq!(
            tsv.lines().nth(2),
            Some("3661250\t3662000\tGeneral Kenobi.")
        );
    }

    #[test]
    fn verbose_json_uses_language_name() {
        let v: serde_json::Value =
            serde_json::from_str(&sample().render(Format::VerboseJson, Task::Transcribe)).unwrap();
        assert_eq!(v["language"], "english");
        assert_eq!(v["task"], "transcribe");
        assert_eq!(v["segments"][1]["start"], 3661.25);
        assert!("verbose_json".parse::<Format>().is_ok() && "mp4".parse::<Format>().is_err());
    }
}
