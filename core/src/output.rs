//! Writers of the finished transcript (`crate::transcript`): text, json, verbose_json (OpenAI's
//! schema), srt, vtt, tsv, rttm, and the response types they fill.

use serde::{Deserialize, Serialize};

use crate::decode::{languages, Task};
use crate::transcript::{Segment, SpeechStats, Transcript, Word};

impl Segment {
    /// This segment's text tokens with their log-probabilities (see [`Transcript::logprobs`]).
    pub fn logprobs(&self, tok: &crate::decode::WhisperTokenizer) -> Vec<TokenLogprob> {
        self.tokens
            .iter()
            .zip(&self.token_logprobs)
            .filter_map(|(&t, &logprob)| {
                let bytes = tok.token_bytes(t)?;
                Some(TokenLogprob {
                    token: String::from_utf8_lossy(&bytes).into_owned(),
                    logprob,
                    bytes,
                })
            })
            .collect()
    }
}

/// `response_format=json` on `/transcribe` (and a job's `result`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TranscriptionJson<'a> {
    pub text: &'a str,
    /// Language code (`en`, `de`, …).
    pub language: &'a str,
    /// Seconds of audio.
    pub duration: f64,
    pub segments: &'a [Segment],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speech: Option<SpeechStats>,
    /// With diarization: each speaker's talk time, in order of first appearance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speakers: Option<&'a [crate::diarize::SpeakerSummary]>,
}

/// `response_format=verbose_json` (OpenAI's `CreateTranscriptionResponseVerboseJson`, plus
/// `speech` when speech detection ran).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VerboseTranscription<'a> {
    /// `transcribe` or `translate`.
    pub task: &'static str,
    /// The language's English name (`english`), as OpenAI gives it.
    pub language: &'a str,
    pub duration: f64,
    pub text: &'a str,
    /// Absent when `timestamp_granularities[]` asks for words only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments: Option<Vec<Segment>>,
    /// With `timestamp_granularities[]=word` on the OpenAI endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub words: Option<Vec<TimedWord>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speech: Option<SpeechStats>,
    /// With diarization: each speaker's talk time, in order of first appearance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speakers: Option<&'a [crate::diarize::SpeakerSummary]>,
    /// On `/v1/audio/transcriptions`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// A word and its time, in OpenAI's top-level `words`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TimedWord {
    pub word: String,
    pub start: f64,
    pub end: f64,
}

/// What a transcription is billed by: seconds of audio (OpenAI's `TranscriptTextUsageDuration`).
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct Usage {
    /// Always `duration`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub seconds: f64,
}

impl Usage {
    pub fn duration(seconds: f64) -> Self {
        Self {
            kind: "duration",
            seconds,
        }
    }
}

/// `response_format=json` on the OpenAI endpoints.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OpenAiTranscription<'a> {
    pub text: &'a str,
    /// With `include[]=logprobs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// On `/v1/audio/transcriptions`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// Milliseconds, as subtitles count them.
fn to_ms(seconds: f64) -> u64 {
    (seconds.max(0.0) * 1000.0).round() as u64
}

/// How subtitles (srt, vtt) are laid out from word timings, as openai-whisper's CLI does it.
/// Without word timings each segment is one cue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SubtitleOptions {
    /// Characters per line before a line break.
    pub max_line_width: Option<usize>,
    /// Lines per cue; with `max_line_width` cues no longer follow segments.
    pub max_line_count: Option<usize>,
    /// Words per line.
    pub max_words_per_line: Option<usize>,
    /// One cue per word, the word underlined (`<u>…</u>`) in its line.
    pub highlight_words: bool,
}

impl SubtitleOptions {
    /// Whether any option needs word timings.
    pub fn needs_words(&self) -> bool {
        *self != Self::default()
    }

    /// Checks the numbers; the error names the bad setting.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for (name, v) in [
            ("max_line_width", self.max_line_width),
            ("max_line_count", self.max_line_count),
            ("max_words_per_line", self.max_words_per_line),
        ] {
            if v.is_some_and(|n| n == 0 || n > 10_000) {
                return Err((name, format!("{name} must be between 1 and 10000")));
            }
        }
        Ok(())
    }
}

/// OpenAI's `timestamp_granularities[]`: which of `segments` and top-level `words` a
/// `verbose_json` answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granularities {
    pub segment: bool,
    pub word: bool,
}

/// How a transcript is written out, beyond its format.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RenderOptions {
    pub subtitles: SubtitleOptions,
    /// The recording's name in RTTM lines (`audio` when unset).
    pub file_id: Option<String>,
    /// `Some`: OpenAI's verbose_json shape for these granularities.
    pub granularities: Option<Granularities>,
    /// OpenAI's `include[]=logprobs` (json only).
    pub logprobs: bool,
}

/// `response_format=diarized_json` (OpenAI's `CreateTranscriptionResponseDiarizedJson`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DiarizedTranscription<'a> {
    /// Always `transcribe`.
    pub task: &'static str,
    pub duration: f64,
    pub text: &'a str,
    pub segments: Vec<DiarizedSegment>,
    /// On `/v1/audio/transcriptions`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// OpenAI's `TranscriptionDiarizedSegment`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DiarizedSegment {
    /// Always `transcript.text.segment`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    pub start: f64,
    pub end: f64,
    pub text: String,
    /// `A`, `B`, … in order of first appearance, or a name from `known_speaker_names[]`.
    pub speaker: String,
}

/// One text token with its log-probability, as OpenAI's `logprobs` lists them.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// One subtitle cue.
#[derive(Debug, Clone, PartialEq)]
pub struct Cue {
    pub start_ms: u64,
    pub end_ms: u64,
    pub text: String,
    /// With diarization: who speaks the cue.
    pub speaker: Option<String>,
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
    /// Speaker turns as RTTM lines (diarization turns on).
    Rttm,
    /// OpenAI's diarized transcription object (diarization turns on).
    DiarizedJson,
}

impl Format {
    pub const ALL: [Format; 8] = [
        Format::Text,
        Format::Json,
        Format::VerboseJson,
        Format::Srt,
        Format::Vtt,
        Format::Tsv,
        Format::Rttm,
        Format::DiarizedJson,
    ];

    /// Formats made of speaker labels: asking for one turns diarization on.
    pub fn needs_speakers(self) -> bool {
        matches!(self, Format::Rttm | Format::DiarizedJson)
    }

    /// File extension used by the CLI and batch (`jfk.wav.srt`).
    pub fn extension(self) -> &'static str {
        match self {
            Format::Text => "txt",
            Format::Json => "json",
            Format::VerboseJson => "verbose.json",
            Format::Srt => "srt",
            Format::Vtt => "vtt",
            Format::Tsv => "tsv",
            Format::Rttm => "rttm",
            Format::DiarizedJson => "diarized.json",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json | Format::VerboseJson | Format::DiarizedJson => "application/json",
            Format::Rttm => "text/plain; charset=utf-8",
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
            "rttm" => Ok(Format::Rttm),
            "diarized_json" | "diarized-json" => Ok(Format::DiarizedJson),
            other => Err(format!("unknown format `{other}` (expected one of text, json, verbose_json, srt, vtt, tsv, rttm, diarized_json)")),
        }
    }
}

/// `HH:MM:SS{sep}mmm`.
fn timestamp_ms(ms: u64, sep: char) -> String {
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
        self.render_with(format, task, &RenderOptions::default())
    }

    /// As [`render`](Self::render), with subtitle layout and OpenAI's timestamp granularities.
    pub fn render_with(&self, format: Format, task: Task, opts: &RenderOptions) -> String {
        let diarized = self.speakers.is_some();
        match format {
            Format::Text if diarized => self.speaker_paragraphs(),
            Format::Text => format!("{}\n", self.text),
            Format::Json => serde_json::to_string(&self.json()).unwrap_or_default(),
            Format::VerboseJson => {
                serde_json::to_string(&self.verbose(task, opts.granularities)).unwrap_or_default()
            }
            Format::Srt => self
                .cues(&opts.subtitles)
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let who = c
                        .speaker
                        .as_deref()
                        .map_or(String::new(), |s| format!("[{s}] "));
                    format!(
                        "{}\n{} --> {}\n{who}{}\n\n",
                        i + 1,
                        timestamp_ms(c.start_ms, ','),
                        timestamp_ms(c.end_ms, ','),
                        c.text
                    )
                })
                .collect(),
            Format::Vtt => {
                let mut out = String::from("WEBVTT\n\n");
                for c in self.cues(&opts.subtitles) {
                    // A WebVTT voice span; `>` and `&` cannot appear in its annotation.
                    let who = c.speaker.as_deref().map_or(String::new(), |s| {
                        format!("<v {}>", s.replace(['>', '&', '\n'], " "))
                    });
                    out.push_str(&format!(
                        "{} --> {}\n{who}{}\n\n",
                        timestamp_ms(c.start_ms, '.'),
                        timestamp_ms(c.end_ms, '.'),
                        c.text
                    ));
                }
                out
            }
            Format::Tsv => {
                let mut out = String::from(if diarized {
                    "start\tend\tspeaker\ttext\n"
                } else {
                    "start\tend\ttext\n"
                });
                for s in &self.segments {
                    let text = s.text.trim().replace('\t', " ");
                    let who = if diarized {
                        format!("{}\t", s.speaker.as_deref().unwrap_or(""))
                    } else {
                        String::new()
                    };
                    out.push_str(&format!(
                        "{}\t{}\t{who}{}\n",
                        (s.start * 1000.0).round() as u64,
                        (s.end * 1000.0).round() as u64,
                        text
                    ));
                }
                out
            }
            Format::Rttm => {
                let file = opts
                    .file_id
                    .as_deref()
                    .map(|f| f.replace(char::is_whitespace, "_"))
                    .filter(|f| !f.is_empty())
                    .unwrap_or_else(|| "audio".into());
                self.segments
                    .iter()
                    .filter_map(|s| {
                        let who = s.speaker.as_deref()?.replace(char::is_whitespace, "_");
                        Some(format!(
                            "SPEAKER {file} 1 {:.3} {:.3} <NA> <NA> {who} <NA> <NA>\n",
                            s.start,
                            (s.end - s.start).max(0.0)
                        ))
                    })
                    .collect()
            }
            Format::DiarizedJson => {
                serde_json::to_string(&self.diarized_json()).unwrap_or_default()
            }
        }
    }

    /// Text with one paragraph per speaker turn: `SPEAKER_00: …`.
    fn speaker_paragraphs(&self) -> String {
        let mut out = String::new();
        let mut current: Option<&str> = None;
        for s in &self.segments {
            let who = s.speaker.as_deref().unwrap_or("UNKNOWN");
            let text = s.text.trim();
            if current != Some(who) {
                if current.is_some() {
                    out.push_str("\n\n");
                }
                out.push_str(who);
                out.push(':');
                current = Some(who);
            }
            if !text.is_empty() {
                out.push(' ');
                out.push_str(text);
            }
        }
        out.push('\n');
        out
    }

    /// OpenAI's `diarized_json`: speakers `A`, `B`, … (known speakers keep their names).
    pub fn diarized_json(&self) -> DiarizedTranscription<'_> {
        DiarizedTranscription {
            task: "transcribe",
            duration: self.duration,
            text: &self.text,
            segments: self
                .segments
                .iter()
                .map(|s| DiarizedSegment {
                    kind: "transcript.text.segment",
                    id: format!("seg_{:03}", s.id),
                    start: s.start,
                    end: s.end,
                    text: s.text.trim().to_string(),
                    speaker: s
                        .speaker
                        .as_deref()
                        .map_or_else(|| "A".to_string(), crate::diarize::letter_label),
                })
                .collect(),
            usage: None,
        }
    }

    /// Subtitle cues: one per segment, or, with word timings, lines and cues laid out by `o`
    /// (openai-whisper's `WriteSubtitles`).
    pub fn cues(&self, o: &SubtitleOptions) -> Vec<Cue> {
        let has_words = self.segments.first().is_some_and(|s| s.words.is_some());
        if !has_words {
            return self
                .segments
                .iter()
                .map(|s| Cue {
                    start_ms: to_ms(s.start),
                    end_ms: to_ms(s.end),
                    text: s.text.trim().replace("-->", "->"),
                    speaker: s.speaker.clone(),
                })
                .collect();
        }
        let mut cues = Vec::new();
        for sub in self.word_groups(o) {
            let (Some(first), Some(last)) = (sub.first(), sub.last()) else {
                continue;
            };
            let text: String = sub.iter().map(|w| w.word.as_str()).collect();
            let (start, end) = (to_ms(first.start), to_ms(last.end));
            let speaker = first.speaker.clone();
            if !o.highlight_words {
                cues.push(Cue {
                    start_ms: start,
                    end_ms: end,
                    text,
                    speaker,
                });
                continue;
            }
            let mut prev = start;
            for (i, w) in sub.iter().enumerate() {
                let (ws, we) = (to_ms(w.start), to_ms(w.end));
                if prev != ws {
                    cues.push(Cue {
                        start_ms: prev,
                        end_ms: ws,
                        text: text.clone(),
                        speaker: speaker.clone(),
                    });
                }
                let highlighted: String = sub
                    .iter()
                    .enumerate()
                    .map(|(j, x)| {
                        if j != i {
                            return x.word.clone();
                        }
                        let body = x.word.trim_start();
                        let lead = &x.word[..x.word.len() - body.len()];
                        format!("{lead}<u>{body}</u>")
                    })
                    .collect();
                cues.push(Cue {
                    start_ms: ws,
                    end_ms: we,
                    text: highlighted,
                    speaker: speaker.clone(),
                });
                prev = we;
            }
        }
        cues
    }

    /// Words grouped into cues, each word's text carrying the line break or space before it.
    fn word_groups(&self, o: &SubtitleOptions) -> Vec<Vec<Word>> {
        let preserve_segments = o.max_line_count.is_none() || o.max_line_width.is_none();
        let max_width = o.max_line_width.unwrap_or(1000);
        let per_line = o.max_words_per_line.unwrap_or(1000).max(1);
        let mut out = Vec::new();
        let mut sub: Vec<Word> = Vec::new();
        let (mut line_len, mut line_count) = (0usize, 1usize);
        let mut last = self.segments.first().map_or(0.0, |s| s.start);
        for seg in &self.segments {
            let words = seg.words.as_deref().unwrap_or_default();
            for chunk in words.chunks(per_line) {
                for (i, w) in chunk.iter().enumerate() {
                    let mut w = w.clone();
                    let len = w.word.chars().count();
                    let long_pause = !preserve_segments && w.start - last > 3.0;
                    let has_room = line_len + len <= max_width;
                    let seg_break = i == 0 && !sub.is_empty() && preserve_segments
                        || sub.last().is_some_and(|l: &Word| l.speaker != w.speaker);
                    if line_len > 0 && has_room && !long_pause && !seg_break {
                        line_len += len;
                    } else {
                        w.word = w.word.trim().to_string();
                        let cue_break = !sub.is_empty()
                            && o.max_line_count
                                .is_some_and(|max| long_pause || line_count >= max);
                        if cue_break || seg_break {
                            out.push(std::mem::take(&mut sub));
                            line_count = 1;
                        } else if line_len > 0 {
                            line_count += 1;
                            w.word = format!("\n{}", w.word);
                        }
                        line_len = w.word.trim().chars().count();
                    }
                    last = w.start;
                    sub.push(w);
                }
            }
        }
        if !sub.is_empty() {
            out.push(sub);
        }
        out
    }

    /// Every text token of the transcript with its log-probability (timestamps and other
    /// special tokens left out).
    pub fn logprobs(&self, tok: &crate::decode::WhisperTokenizer) -> Vec<TokenLogprob> {
        self.segments.iter().flat_map(|s| s.logprobs(tok)).collect()
    }

    /// `response_format=json` on `/transcribe`.
    pub fn json(&self) -> TranscriptionJson<'_> {
        TranscriptionJson {
            text: &self.text,
            language: &self.language,
            duration: self.duration,
            segments: &self.segments,
            speech: self.speech,
            speakers: self.speakers.as_deref(),
        }
    }

    /// `verbose_json`: the language is its English name. With `timestamp_granularities[]`
    /// (OpenAI's endpoints): `segments` when `segment` is asked for (without per-segment words),
    /// top-level `words` (`word`, `start`, `end`) when `word` is.
    pub fn verbose(&self, task: Task, g: Option<Granularities>) -> VerboseTranscription<'_> {
        let segments = match g {
            None => Some(self.segments.clone()),
            Some(g) if g.segment => Some(
                self.segments
                    .iter()
                    .map(|s| Segment {
                        words: None,
                        ..s.clone()
                    })
                    .collect(),
            ),
            Some(_) => None,
        };
        let words = g.filter(|g| g.word).map(|_| {
            self.segments
                .iter()
                .flat_map(|s| s.words.iter().flatten())
                .map(|w| TimedWord {
                    word: w.word.trim().to_string(),
                    start: w.start,
                    end: w.end,
                })
                .collect()
        });
        VerboseTranscription {
            task: match task {
                Task::Transcribe => "transcribe",
                Task::Translate => "translate",
            },
            language: languages::name_of(&self.language).unwrap_or(&self.language),
            duration: self.duration,
            text: &self.text,
            segments,
            words,
            speech: self.speech,
            speakers: self.speakers.as_deref(),
            usage: None,
        }
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
                    words: None,
                    speaker: None,
                    token_logprobs: vec![],
                    text_probs: vec![],
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
                    words: None,
                    speaker: None,
                    token_logprobs: vec![],
                    text_probs: vec![],
                },
            ],
            fallbacks: vec![],
            speech: None,
            language_probabilities: None,
            speakers: None,
            diarized: None,
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

    fn diarized() -> Transcript {
        let mut t = sample();
        t.segments[0].speaker = Some("SPEAKER_00".into());
        t.segments[1].speaker = Some("SPEAKER_01".into());
        t.speakers = Some(crate::diarize::summarise(&t.segments));
        t
    }

    #[test]
    fn split_channels_merge_on_one_timeline() {
        // Channel 0 speaks at 0 s and 3661 s, channel 1 between them.
        let a = sample();
        let mut b = sample();
        b.segments.truncate(1);
        b.segments[0].start = 2.0;
        b.segments[0].end = 4.0;
        b.segments[0].text = " Hi.".into();
        b.segments[0].words = Some(vec![Word {
            word: " Hi.".into(),
            start: 2.0,
            end: 2.5,
            probability: 0.9,
            speaker: None,
        }]);
        b.duration = 10.0;
        let t = crate::transcript::merge_channels(vec![a, b]);
        let who: Vec<(usize, &str, f64)> = t
            .segments
            .iter()
            .map(|s| (s.id, s.speaker.as_deref().unwrap(), s.start))
            .collect();
        assert_eq!(
            who,
            [
                (0, "CHANNEL_0", 0.0),
                (1, "CHANNEL_1", 2.0),
                (2, "CHANNEL_0", 3661.25)
            ]
        );
        assert_eq!(t.text, "Hello there. Hi. General Kenobi.");
        assert_eq!(t.duration, 3725.5);
        assert_eq!(
            t.segments[1].words.as_ref().unwrap()[0].speaker.as_deref(),
            Some("CHANNEL_1")
        );
        let talk: Vec<(&str, f64)> = t
            .speakers
            .as_ref()
            .unwrap()
            .iter()
            .map(|s| (s.speaker.as_str(), s.talk_time))
            .collect();
        assert_eq!(talk, [("CHANNEL_0", 2.25), ("CHANNEL_1", 2.0)]);
        assert!(t
            .render(Format::Srt, Task::Transcribe)
            .contains("[CHANNEL_1] Hi."));
    }

    #[test]
    fn every_format_shows_the_speakers() {
        let t = diarized();
        let render = |f: Format| t.render(f, Task::Transcribe);
        assert!(render(Format::Srt).contains("00:00:01,500\n[SPEAKER_00] Hello there.\n"));
        assert!(render(Format::Vtt).contains("00:00:01.500\n<v SPEAKER_00>Hello there.\n"));
        let tsv = render(Format::Tsv);
        assert_eq!(tsv.lines().next(), Some("start\tend\tspeaker\ttext"));
        assert_eq!(
            tsv.lines().nth(2),
            Some("3661250\t3662000\tSPEAKER_01\tGeneral Kenobi.")
        );
        assert_eq!(
            render(Format::Text),
            "SPEAKER_00: Hello there.\n\nSPEAKER_01: General Kenobi.\n"
        );
        let o = RenderOptions {
            file_id: Some("call 7".into()),
            ..Default::default()
        };
        assert_eq!(
            t.render_with(Format::Rttm, Task::Transcribe, &o),
            "SPEAKER call_7 1 0.000 1.500 <NA> <NA> SPEAKER_00 <NA> <NA>\n\
             SPEAKER call_7 1 3661.250 0.750 <NA> <NA> SPEAKER_01 <NA> <NA>\n"
        );
        let d: serde_json::Value = serde_json::from_str(&render(Format::DiarizedJson)).unwrap();
        assert_eq!(d["segments"][1]["speaker"], "B");
        assert_eq!(d["segments"][1]["type"], "transcript.text.segment");
        assert_eq!(d["segments"][1]["text"], "General Kenobi.");
        let v: serde_json::Value = serde_json::from_str(&render(Format::VerboseJson)).unwrap();
        assert_eq!(v["speakers"][1]["speaker"], "SPEAKER_01");
        assert_eq!(v["segments"][0]["speaker"], "SPEAKER_00");
        // Undiarized transcripts render as before.
        assert!(!sample()
            .render(Format::Json, Task::Transcribe)
            .contains("speaker"));
        assert_eq!(crate::diarize::letter_label("SPEAKER_27"), "AB");
        assert_eq!(crate::diarize::letter_label("agent"), "agent");
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
