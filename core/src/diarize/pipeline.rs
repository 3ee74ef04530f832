//! The diarization pipeline, from a recording to speaker turns:
//!
//! 1. **Speech** — its own fine-grained regions (Silero VAD when loaded, else the energy gate),
//!    splitting at pauses of 150 ms so that a window rarely straddles two speakers' turns;
//!    transcription's VAD keeps 2-s pauses, too coarse for this.
//! 2. **Features** — GE2E mel frames computed once per stretch of speech (plus half a window
//!    each side), not once per overlapping window.
//! 3. **Embeddings** — 1.6-s windows every [`HOP_FRAMES`] inside the speech, in batches.
//! 4. **Clustering** — average linkage over cosine distance, cut at [`DEFAULT_THRESHOLD`]
//!    (calibrated on `../shared/eval/diarization/calib/`) or at the count asked for.
//! 5. **Turns** — labels smoothed into turns, clipped to the speech.
//!
//! [`assign`] then labels a transcript's segments (and words, splitting a segment where its
//! words change speaker) and summarises each speaker's talk time.

use std::ops::Range;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::ge2e::EMBEDDING;

use super::ge2e::{SpeakerEncoder, SpeakerError, N_MELS};
use super::{cluster, speaker_of, turns, window_starts, ClusterOptions, Turn};
use crate::audio::Samples;
use crate::transcript::{Segment, Transcript};
use crate::vad::{self, SileroVad, VadOptions};

/// Mel frames per second (10-ms hop).
const FRAME_RATE: usize = 100;
const FRAME: usize = super::ge2e::SAMPLE_RATE / FRAME_RATE;
/// Frames in one embedding window (1.6 s, Resemblyzer's partial utterance).
pub const WINDOW_FRAMES: usize = 160;
/// Frames between window starts (0.4 s).
pub const HOP_FRAMES: usize = 40;
/// Windows embedded in one batch (bounds the LSTM's working memory to ~25 MB).
const BATCH: usize = 48;
/// The most speakers a request may ask for or the clustering may find.
pub const MAX_SPEAKERS: usize = 32;
/// Clusters whose average cosine distance is below this are one speaker. Calibrated on the
/// calibration conversations (24 voices not in the dev set): see `scripts/diarize_eval.py`.
pub const DEFAULT_THRESHOLD: f32 = 0.40;
/// A flip of fewer windows than this between two runs of one speaker is smoothed away.
const MIN_RUN: usize = 2;
/// Turns of one speaker closer than this (seconds) join.
const MAX_GAP_S: f64 = 0.5;

/// Speech detection for diarization: faster-whisper's settings, with short pauses ending a region.
const SPEECH: VadOptions = VadOptions {
    enabled: true,
    threshold: 0.5,
    neg_threshold: None,
    min_speech_duration_ms: 100,
    max_speech_duration_s: f32::INFINITY,
    min_silence_duration_ms: 150,
    speech_pad_ms: 30,
    gate_db: Some(-60.0),
};

/// The most known speakers a request may name (OpenAI's limit).
pub const MAX_KNOWN_SPEAKERS: usize = 4;
/// A found speaker takes a known speaker's name when the cosine similarity of its mean voice
/// embedding and the reference's is at least this (the clustering threshold's complement).
const KNOWN_MIN_SIMILARITY: f32 = 1.0 - DEFAULT_THRESHOLD;

/// What a request asks of diarization (`diarize=true` with these).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DiarizeOptions {
    /// Exactly this many speakers.
    pub num_speakers: Option<usize>,
    /// At least / at most this many (the automatic count is kept within them).
    pub min_speakers: Option<usize>,
    pub max_speakers: Option<usize>,
    /// Voices to label by name (`known_speaker_names[]` with `known_speaker_references[]`).
    pub known: Vec<KnownSpeaker>,
}

/// A speaker to recognise: a name and the voice embedding of a reference clip.
#[derive(Clone, PartialEq)]
pub struct KnownSpeaker {
    pub name: String,
    pub embedding: Vec<f32>,
}

impl std::fmt::Debug for KnownSpeaker {
    /// The name and a fingerprint of the embedding: enough for the result cache's key (which is
    /// the options' `Debug` form) without 256 numbers in it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for v in &self.embedding {
            for b in v.to_le_bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        write!(f, "KnownSpeaker({:?}, {h:016x})", self.name)
    }
}

impl DiarizeOptions {
    /// The error names the bad parameter.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.known.len() > MAX_KNOWN_SPEAKERS {
            return Err((
                "known_speaker_names",
                format!("at most {MAX_KNOWN_SPEAKERS} known speakers"),
            ));
        }
        for (i, k) in self.known.iter().enumerate() {
            if k.name.trim().is_empty() || k.name.chars().count() > 64 {
                return Err((
                    "known_speaker_names",
                    "names must be 1 to 64 characters".into(),
                ));
            }
            if self.known[..i].iter().any(|o| o.name == k.name) {
                return Err((
                    "known_speaker_names",
                    format!("`{}` is given twice", k.name),
                ));
            }
        }
        for (name, v) in [
            ("num_speakers", self.num_speakers),
            ("min_speakers", self.min_speakers),
            ("max_speakers", self.max_speakers),
        ] {
            if let Some(v) = v {
                if !(1..=MAX_SPEAKERS).contains(&v) {
                    return Err((name, format!("must be between 1 and {MAX_SPEAKERS}")));
                }
            }
        }
        if let (Some(lo), Some(hi)) = (self.min_speakers, self.max_speakers) {
            if lo > hi {
                return Err(("min_speakers", "must not be above max_speakers".into()));
            }
        }
        if let Some(n) = self.num_speakers {
            if self.min_speakers.is_some_and(|lo| n < lo)
                || self.max_speakers.is_some_and(|hi| n > hi)
            {
                return Err((
                    "num_speakers",
                    "must lie within min_speakers..max_speakers".into(),
                ));
            }
        }
        Ok(())
    }

    fn cluster_options(&self, threshold: f32) -> ClusterOptions {
        ClusterOptions {
            threshold,
            num_speakers: self.num_speakers,
            min_speakers: self.min_speakers.unwrap_or(1),
            max_speakers: self.max_speakers.unwrap_or(MAX_SPEAKERS),
        }
    }
}

/// Where `make model-ge2e` puts the speaker model, under `models/`.
pub const MODEL_DIR: &str = "ge2e";
pub const MODEL_FILE: &str = "ge2e.safetensors";

/// What a diarization run took, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiarizeRun {
    pub seconds: f64,
    pub windows: usize,
    pub speakers: usize,
}

/// Diarization running on a thread of its own beside the transcription; [`wait`](Self::wait)
/// for its turns.
pub struct Diarizing {
    rx: std::sync::Mutex<std::sync::mpsc::Receiver<Result<Diarization, DiarizeError>>>,
}

impl Diarizing {
    /// Embed and cluster `features` on a new thread (it continues the caller's span).
    pub fn start(
        diarizer: std::sync::Arc<Diarizer>,
        features: SpeakerFeatures,
        o: DiarizeOptions,
    ) -> Result<Self, DiarizeError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let span = tracing::info_span!("diarize", speech_s = features.speech_seconds());
        std::thread::Builder::new()
            .name("diarize".into())
            .spawn(move || {
                let _g = span.enter();
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    diarizer.diarize(&features, &o)
                }))
                .unwrap_or_else(|_| {
                    Err(DiarizeError::Failed(
                        "the diarization thread panicked".into(),
                    ))
                });
                let _ = tx.send(r);
            })
            .map_err(|e| DiarizeError::Failed(format!("cannot start a thread: {e}")))?;
        Ok(Self {
            rx: std::sync::Mutex::new(rx),
        })
    }

    /// The result (blocks until it is there). A second call gets an error.
    pub fn wait(&self) -> Result<Diarization, DiarizeError> {
        let rx = self
            .rx
            .lock()
            .map_err(|_| DiarizeError::Failed("poisoned".into()))?;
        rx.recv().map_err(|_| {
            DiarizeError::Failed("the diarization thread ended without a result".into())
        })?
    }
}

/// GE2E mel frames of a recording's speech: computed once, windows are slices of it.
pub struct SpeakerFeatures {
    /// Stretches of frames: (first frame, `[frame][N_MELS]` values).
    spans: Vec<(usize, Vec<f32>)>,
    /// Speech, in frames.
    regions: Vec<Range<usize>>,
    total_frames: usize,
}

impl SpeakerFeatures {
    pub fn speech_seconds(&self) -> f64 {
        self.regions.iter().map(|r| r.len()).sum::<usize>() as f64 / FRAME_RATE as f64
    }

    /// The `WINDOW_FRAMES` frames from `start`, zeros where no span holds them.
    fn window(&self, start: usize, out: &mut Vec<f32>) {
        let at = out.len();
        out.resize(at + WINDOW_FRAMES * N_MELS, 0.0);
        let dst = &mut out[at..];
        for (first, v) in &self.spans {
            let len = v.len() / N_MELS;
            let (a, b) = (start.max(*first), (start + WINDOW_FRAMES).min(first + len));
            if a < b {
                dst[(a - start) * N_MELS..(b - start) * N_MELS]
                    .copy_from_slice(&v[(a - first) * N_MELS..(b - first) * N_MELS]);
            }
        }
    }
}

/// Who spoke when.
#[derive(Debug, Clone, PartialEq)]
pub struct Diarization {
    /// Speaker turns over the speech, in order; speakers numbered by first appearance.
    pub turns: Vec<Turn>,
    pub speakers: usize,
    /// Per speaker: the known speaker's name it was matched to, if any.
    pub names: Vec<Option<String>>,
    /// Embedding windows, and the seconds spent embedding them and in the whole pipeline.
    pub windows: usize,
    pub embed_seconds: f64,
    pub seconds: f64,
}

/// The speaker encoder with the pipeline's settings.
pub struct Diarizer {
    encoder: SpeakerEncoder,
    pub threshold: f32,
}

impl Diarization {
    /// Speaker `i`'s label: a known speaker's name, else `SPEAKER_0i`.
    pub fn label(&self, i: usize) -> String {
        self.names
            .get(i)
            .cloned()
            .flatten()
            .unwrap_or_else(|| speaker_label(i))
    }
}

impl Diarizer {
    pub fn new(encoder: SpeakerEncoder) -> Self {
        Self {
            encoder,
            threshold: DEFAULT_THRESHOLD,
        }
    }

    pub fn load(path: &std::path::Path) -> Result<Self, SpeakerError> {
        Ok(Self::new(SpeakerEncoder::load(path)?))
    }

    pub fn encoder(&self) -> &SpeakerEncoder {
        &self.encoder
    }

    /// Steps 1–2: speech regions and their mel frames (reads `samples`, which may spill to disk).
    pub fn features(
        &self,
        samples: &dyn Samples,
        vad: Option<&SileroVad>,
    ) -> Result<SpeakerFeatures, DiarizeError> {
        let o = VadOptions {
            enabled: vad.is_some(),
            ..SPEECH
        };
        let speech = vad::analyze(samples, &o, vad)?;
        let total = samples.len();
        let total_frames = total / FRAME + 1;
        let regions: Vec<Range<usize>> = speech
            .regions
            .iter()
            .map(|r| r.start / FRAME..r.end.div_ceil(FRAME).min(total_frames))
            .filter(|r| !r.is_empty())
            .collect();
        // Frames each region needs: half a window either side (a short region's window is
        // centred on it), stretches that touch merged.
        let half = WINDOW_FRAMES / 2 + 1;
        let mut stretches: Vec<Range<usize>> = Vec::new();
        for r in &regions {
            let s = r.start.saturating_sub(half);
            let e = (r.end + half).min(total_frames);
            match stretches.last_mut() {
                Some(l) if s <= l.end => l.end = l.end.max(e),
                _ => stretches.push(s..e),
            }
        }
        let mel = self.encoder.mel();
        let mut spans = Vec::with_capacity(stretches.len());
        for s in stretches {
            spans.push((s.start, mel.frames_of(samples, s.clone())?));
        }
        Ok(SpeakerFeatures {
            spans,
            regions,
            total_frames,
        })
    }

    /// Steps 3–5.
    pub fn diarize(
        &self,
        f: &SpeakerFeatures,
        o: &DiarizeOptions,
    ) -> Result<Diarization, DiarizeError> {
        let t0 = Instant::now();
        let e = self.embed(f)?;
        let mut d = self.decide(f, &e, o, self.threshold);
        d.seconds = t0.elapsed().as_secs_f64();
        Ok(d)
    }

    /// Step 3: a voice embedding per window over the speech.
    pub fn embed(&self, f: &SpeakerFeatures) -> Result<Embedded, DiarizeError> {
        let t0 = Instant::now();
        let starts = window_starts(&f.regions, f.total_frames, WINDOW_FRAMES, HOP_FRAMES);
        let mut embeddings = Vec::with_capacity(starts.len());
        let mut mels = Vec::with_capacity(BATCH * WINDOW_FRAMES * N_MELS);
        for batch in starts.chunks(BATCH) {
            mels.clear();
            for &s in batch {
                f.window(s, &mut mels);
            }
            embeddings.extend(self.encoder.embed_mels(&mels, batch.len(), WINDOW_FRAMES)?);
        }
        Ok(Embedded {
            starts,
            embeddings,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// Steps 4–5 at a given threshold.
    pub fn decide(
        &self,
        f: &SpeakerFeatures,
        e: &Embedded,
        o: &DiarizeOptions,
        threshold: f32,
    ) -> Diarization {
        let labels = cluster(&e.embeddings, &o.cluster_options(threshold));
        let cluster_names = match_known(&e.embeddings, &labels, &o.known);
        let raw = turns(
            &e.starts,
            &labels,
            FRAME_RATE,
            WINDOW_FRAMES,
            HOP_FRAMES,
            MIN_RUN,
            MAX_GAP_S,
        );
        let speech: Vec<(f64, f64)> = f
            .regions
            .iter()
            .map(|r| {
                (
                    r.start as f64 / FRAME_RATE as f64,
                    r.end as f64 / FRAME_RATE as f64,
                )
            })
            .collect();
        let (turns, order) = renumber(clip_to_speech(&raw, &speech));
        Diarization {
            turns,
            speakers: order.len(),
            names: order
                .iter()
                .map(|&c| cluster_names.get(c).cloned().flatten())
                .collect(),
            windows: e.starts.len(),
            embed_seconds: e.seconds,
            seconds: e.seconds,
        }
    }
}

/// The windows of a recording (start frames) and their embeddings.
pub struct Embedded {
    pub starts: Vec<usize>,
    pub embeddings: Vec<Vec<f32>>,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum DiarizeError {
    #[error(transparent)]
    Model(#[from] SpeakerError),
    #[error("speech detection for diarization: {0}")]
    Vad(#[from] crate::vad::VadError),
    #[error("reading the audio for diarization: {0}")]
    Audio(#[from] crate::audio::SpillError),
    #[error("diarization stopped: {0}")]
    Failed(String),
}

/// Turns cut to the speech: each region takes the turns overlapping it, and any part of it no
/// turn covers goes to the nearest turn's speaker; neighbours of one speaker join.
fn clip_to_speech(raw: &[Turn], speech: &[(f64, f64)]) -> Vec<Turn> {
    let mut out: Vec<Turn> = Vec::new();
    let mut push = |t: Turn| {
        if t.end <= t.start {
            return;
        }
        match out.last_mut() {
            Some(l) if l.speaker == t.speaker && t.start - l.end < 1e-9 => l.end = t.end,
            _ => out.push(t),
        }
    };
    for &(a, b) in speech {
        let mut at = a;
        for t in raw.iter().filter(|t| t.end > a && t.start < b) {
            let (s, e) = (t.start.max(a), t.end.min(b));
            if s > at {
                if let Some(speaker) = speaker_of(raw, at, s, true) {
                    push(Turn {
                        start: at,
                        end: s,
                        speaker,
                    });
                }
            }
            let s = s.max(at);
            if e > s {
                push(Turn {
                    start: s,
                    end: e,
                    speaker: t.speaker,
                });
                at = e;
            }
        }
        if at < b {
            if let Some(speaker) = speaker_of(raw, at, b, true) {
                push(Turn {
                    start: at,
                    end: b,
                    speaker,
                });
            }
        }
    }
    out
}

/// The reference's voice: the mean of its windows' embeddings, normalised.
pub fn mean_embedding(e: &Embedded) -> Option<Vec<f32>> {
    if e.embeddings.is_empty() {
        return None;
    }
    let mut m = vec![0f32; EMBEDDING];
    for v in &e.embeddings {
        for (a, b) in m.iter_mut().zip(v) {
            *a += b;
        }
    }
    let norm = m.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    m.iter_mut().for_each(|v| *v /= norm);
    Some(m)
}

/// Per cluster label: the known speaker it is, if any. Each known speaker names at most one
/// cluster: the most similar pairs are taken first, down to `KNOWN_MIN_SIMILARITY`.
fn match_known(
    embeddings: &[Vec<f32>],
    labels: &[usize],
    known: &[KnownSpeaker],
) -> Vec<Option<String>> {
    let n = labels.iter().copied().max().map_or(0, |m| m + 1);
    let mut names = vec![None; n];
    if known.is_empty() {
        return names;
    }
    let centroids: Vec<Vec<f32>> = (0..n)
        .map(|c| {
            let mut m = vec![0f32; EMBEDDING];
            for (v, _) in embeddings.iter().zip(labels).filter(|(_, &l)| l == c) {
                for (a, b) in m.iter_mut().zip(v) {
                    *a += b;
                }
            }
            m
        })
        .collect();
    let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
    for (c, centroid) in centroids.iter().enumerate() {
        for (k, ks) in known.iter().enumerate() {
            let sim = super::cosine(centroid, &ks.embedding);
            if sim >= KNOWN_MIN_SIMILARITY {
                pairs.push((sim, c, k));
            }
        }
    }
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut used = vec![false; known.len()];
    for (_, c, k) in pairs {
        if names[c].is_none() && !used[k] {
            names[c] = Some(known[k].name.clone());
            used[k] = true;
        }
    }
    names
}

/// Speakers renumbered by first appearance after smoothing and clipping (a cluster may have lost
/// every turn); the old labels of those left, in their new order.
fn renumber(mut turns: Vec<Turn>) -> (Vec<Turn>, Vec<usize>) {
    let mut seen: Vec<usize> = Vec::new();
    for t in &mut turns {
        t.speaker = match seen.iter().position(|&s| s == t.speaker) {
            Some(i) => i,
            None => {
                seen.push(t.speaker);
                seen.len() - 1
            }
        };
    }
    (turns, seen)
}

/// The label of speaker `i` in transcripts: `SPEAKER_00`, `SPEAKER_01`, …
pub fn speaker_label(i: usize) -> String {
    format!("SPEAKER_{i:02}")
}

/// OpenAI's label for a speaker: `SPEAKER_00` → `A`, … `SPEAKER_25` → `Z`, then `AA`, `AB`, …;
/// any other label (a known speaker's name) unchanged.
pub fn letter_label(label: &str) -> String {
    let Some(i) = label
        .strip_prefix("SPEAKER_")
        .and_then(|n| n.parse::<usize>().ok())
    else {
        return label.to_string();
    };
    let letter = |k: usize| char::from(b'A' + (k % 26) as u8);
    if i < 26 {
        letter(i).to_string()
    } else {
        format!("{}{}", letter(i / 26 - 1), letter(i))
    }
}

/// One speaker's share of a diarized transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SpeakerSummary {
    /// `SPEAKER_00`, … (or a name given by `known_speaker_names`).
    pub speaker: String,
    /// Seconds of the transcript's segments this speaker has.
    pub talk_time: f64,
    pub segments: usize,
}

/// Labels `t`'s segments with speakers: each word (when there are word timings) takes the speaker
/// who talks most during it, and a segment whose words change speaker splits there; without words
/// a segment takes the speaker who talks most during it. Fills `t.speakers`.
pub fn assign(t: &mut Transcript, d: &Diarization) {
    let mut out: Vec<Segment> = Vec::with_capacity(t.segments.len());
    for seg in std::mem::take(&mut t.segments) {
        let whole = speaker_of(&d.turns, seg.start, seg.end, true);
        match &seg.words {
            Some(words) if !words.is_empty() => {
                let labels: Vec<Option<usize>> = words
                    .iter()
                    .map(|w| speaker_of(&d.turns, w.start, w.end, true))
                    .collect();
                split_by_speaker(seg, &labels, d, &mut out);
            }
            _ => {
                let mut seg = seg;
                seg.speaker = whole.map(|i| d.label(i));
                out.push(seg);
            }
        }
    }
    bridge_pauses(&mut out, TURN_PAUSE_S);
    for (i, s) in out.iter_mut().enumerate() {
        s.id = i;
    }
    t.segments = out;
    t.speakers = Some(summarise(&t.segments));
}

/// A pause shorter than this between two segments of one speaker is part of that speaker's
/// turn: the pause that does not end speech for voice activity detection by default
/// (`min_silence_duration_ms`).
const TURN_PAUSE_S: f64 = crate::vad::VadOptions::DEFAULT.min_silence_duration_ms as f64 / 1000.0;

/// A speaker's turn runs from their first word to their last, pauses included, as diarization
/// references and other services' utterances count it: a segment followed, after a pause
/// shorter than `max_pause_s`, by another of the same speaker ends where that one starts.
/// Segments of different speakers, and the words' own timings, are left as they are.
fn bridge_pauses(segments: &mut [Segment], max_pause_s: f64) {
    for i in 1..segments.len() {
        let (a, b) = segments.split_at_mut(i);
        let (prev, next) = (&mut a[i - 1], &b[0]);
        let pause = next.start - prev.end;
        if prev.speaker.is_some()
            && prev.speaker == next.speaker
            && pause > 0.0
            && pause < max_pause_s
        {
            prev.end = next.start;
        }
    }
}

/// Talk time and segment count per speaker, in order of first appearance.
pub fn summarise(segments: &[Segment]) -> Vec<SpeakerSummary> {
    let mut out: Vec<SpeakerSummary> = Vec::new();
    for s in segments {
        let Some(name) = &s.speaker else { continue };
        let i = match out.iter().position(|x| &x.speaker == name) {
            Some(i) => i,
            None => {
                out.push(SpeakerSummary {
                    speaker: name.clone(),
                    talk_time: 0.0,
                    segments: 0,
                });
                out.len() - 1
            }
        };
        out[i].talk_time += (s.end - s.start).max(0.0);
        out[i].segments += 1;
    }
    for s in &mut out {
        s.talk_time = (s.talk_time * 1000.0).round() / 1000.0;
    }
    out
}

/// `seg` cut where its words' speakers change (a single word between two of one speaker's
/// takes theirs). The pieces keep the segment's decoding statistics; tokens are divided
/// between them in proportion to their words, so that together they are the segment's.
fn split_by_speaker(
    seg: Segment,
    labels: &[Option<usize>],
    d: &Diarization,
    out: &mut Vec<Segment>,
) {
    let Some(mut words) = seg.words.clone() else {
        return;
    };
    let n = words.len();
    let mut labels = labels.to_vec();
    for i in 1..n.saturating_sub(1) {
        if labels[i - 1] == labels[i + 1] && labels[i] != labels[i - 1] {
            labels[i] = labels[i - 1];
        }
    }
    for (w, l) in words.iter_mut().zip(&labels) {
        w.speaker = l.map(|i| d.label(i));
    }
    // runs of one speaker: (first word, end word)
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for i in 0..n {
        match runs.last_mut() {
            Some((s, e)) if labels[*s] == labels[i] => *e = i + 1,
            _ => runs.push((i, i + 1)),
        }
    }
    if runs.len() <= 1 {
        let mut seg = seg;
        seg.speaker = labels.first().copied().flatten().map(|i| d.label(i));
        seg.words = Some(words);
        out.push(seg);
        return;
    }
    let tokens = seg.tokens.len();
    let mut token_at = 0;
    for (k, &(a, b)) in runs.iter().enumerate() {
        let last = k + 1 == runs.len();
        let token_end = if last {
            tokens
        } else {
            (tokens * b / n).max(token_at)
        };
        let mut piece = seg.clone();
        piece.words = Some(words[a..b].to_vec());
        piece.text = words[a..b].iter().map(|w| w.word.as_str()).collect();
        piece.start = if k == 0 { seg.start } else { words[a].start };
        piece.end = if last { seg.end } else { words[b - 1].end };
        piece.tokens = seg.tokens[token_at..token_end].to_vec();
        piece.token_logprobs = slice_or_empty(&seg.token_logprobs, token_at, token_end);
        piece.text_probs = slice_or_empty(&seg.text_probs, token_at, token_end);
        piece.speaker = labels[a].map(|i| d.label(i));
        token_at = token_end;
        out.push(piece);
    }
}

fn slice_or_empty(v: &[f32], a: usize, b: usize) -> Vec<f32> {
    v.get(a..b).map(<[f32]>::to_vec).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(start: f64, end: f64, speaker: usize) -> Turn {
        Turn {
            start,
            end,
            speaker,
        }
    }

    #[test]
    fn options_outside_1_to_32_or_crossed_are_refused_by_name() {
        let ok = DiarizeOptions {
            num_speakers: Some(2),
            min_speakers: Some(1),
            max_speakers: Some(3),
            known: Vec::new(),
        };
        assert!(ok.check().is_ok());
        let named = |names: &[&str]| DiarizeOptions {
            known: names
                .iter()
                .map(|n| KnownSpeaker {
                    name: n.to_string(),
                    embedding: vec![1.0; EMBEDDING],
                })
                .collect(),
            ..Default::default()
        };
        assert!(named(&["ann", "bob"]).check().is_ok());
        for names in [&["ann", "ann"][..], &["a", "b", "c", "d", "e"], &[" "]] {
            assert_eq!(named(names).check().unwrap_err().0, "known_speaker_names");
        }
        let bad = |o: DiarizeOptions| o.check().unwrap_err().0;
        assert_eq!(
            bad(DiarizeOptions {
                num_speakers: Some(0),
                ..Default::default()
            }),
            "num_speakers"
        );
        assert_eq!(
            bad(DiarizeOptions {
                max_speakers: Some(33),
                ..Default::default()
            }),
            "max_speakers"
        );
        assert_eq!(
            bad(DiarizeOptions {
                min_speakers: Some(3),
                max_speakers: Some(2),
                ..Default::default()
            }),
            "min_speakers"
        );
        assert_eq!(
            bad(DiarizeOptions {
                num_speakers: Some(4),
                max_speakers: Some(3),
                ..Default::default()
            }),
            "num_speakers"
        );
    }

    #[test]
    fn turns_are_cut_to_speech_and_gaps_inside_speech_go_to_the_nearest() {
        let raw = vec![turn(0.0, 2.0, 0), turn(2.0, 5.0, 1)];
        let speech = vec![(0.5, 1.0), (1.5, 2.5), (4.8, 6.0)];
        let got = clip_to_speech(&raw, &speech);
        assert_eq!(
            got,
            vec![
                turn(0.5, 1.0, 0),
                turn(1.5, 2.0, 0),
                turn(2.0, 2.5, 1),
                // 5.0..6.0 is covered by no turn: the nearest (speaker 1) takes it
                turn(4.8, 6.0, 1),
            ]
        );
        let (t, n) = renumber(vec![
            turn(0.0, 1.0, 3),
            turn(1.0, 2.0, 1),
            turn(2.0, 3.0, 3),
        ]);
        assert_eq!(n, vec![3, 1]);
        assert_eq!(
            t.iter().map(|t| t.speaker).collect::<Vec<_>>(),
            vec![0, 1, 0]
        );
    }

    #[test]
    fn known_speakers_name_the_most_similar_cluster_once_and_only_when_close() {
        let unit = |i: usize| {
            let mut v = vec![0f32; EMBEDDING];
            v[i] = 1.0;
            v
        };
        let emb = vec![unit(0), unit(0), unit(1), unit(2)];
        let labels = vec![0, 0, 1, 2];
        let known = vec![
            KnownSpeaker {
                name: "ann".into(),
                embedding: unit(1),
            },
            KnownSpeaker {
                name: "ann's twin".into(),
                embedding: unit(1),
            },
            KnownSpeaker {
                name: "nobody".into(),
                embedding: unit(9),
            },
        ];
        assert_eq!(
            match_known(&emb, &labels, &known),
            vec![None, Some("ann".to_string()), None]
        );
        // The cache key sees each reference without printing it whole.
        let d = format!("{:?}", known[0]);
        assert!(
            d.starts_with("KnownSpeaker(\"ann\", ") && d.len() < 50,
            "{d}"
        );
    }

    fn segment(start: f64, end: f64, words: Option<Vec<(&str, f64, f64)>>) -> Segment {
        Segment {
            id: 0,
            seek: 0,
            start,
            end,
            text: String::new(),
            tokens: (0..8).collect(),
            temperature: 0.0,
            avg_logprob: -0.1,
            compression_ratio: 1.0,
            no_speech_prob: 0.0,
            words: words.map(|w| {
                w.into_iter()
                    .map(|(word, start, end)| crate::transcript::Word {
                        word: word.into(),
                        start,
                        end,
                        probability: 0.9,
                        speaker: None,
                    })
                    .collect()
            }),
            speaker: None,
            token_logprobs: vec![-0.1; 8],
            text_probs: Vec::new(),
        }
    }

    #[test]
    fn segments_take_the_majority_speaker_and_split_where_their_words_change() {
        let d = Diarization {
            turns: vec![turn(0.0, 3.0, 0), turn(3.0, 6.0, 1)],
            speakers: 2,
            names: vec![None, Some("bob".into())],
            windows: 0,
            embed_seconds: 0.0,
            seconds: 0.0,
        };
        let mut t = Transcript {
            text: String::new(),
            language: "en".into(),
            duration: 6.0,
            segments: vec![
                segment(0.0, 2.5, None),
                segment(
                    2.5,
                    6.0,
                    Some(vec![
                        (" so", 2.5, 2.8),
                        (" yes.", 2.8, 2.95),
                        (" No", 3.1, 3.4),
                        (" way", 3.4, 3.6),
                        (" I", 3.6, 3.7),
                        (" think.", 3.7, 6.0),
                    ]),
                ),
            ],
            fallbacks: Vec::new(),
            speech: None,
            language_probabilities: None,
            speakers: None,
            diarized: None,
        };
        assign(&mut t, &d);
        let got: Vec<(usize, &str, Option<&str>, usize)> = t
            .segments
            .iter()
            .map(|s| (s.id, s.text.as_str(), s.speaker.as_deref(), s.tokens.len()))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, "", Some("SPEAKER_00"), 8),
                (1, " so yes.", Some("SPEAKER_00"), 2),
                (2, " No way I think.", Some("bob"), 6),
            ]
        );
        assert_eq!(t.segments[1].end, 2.95);
        assert_eq!(t.segments[2].start, 3.1);
        let s = t.speakers.unwrap();
        assert_eq!(s[0].speaker, "SPEAKER_00");
        assert_eq!(s[0].segments, 2);
        assert!((s[0].talk_time - 2.95).abs() < 1e-9);
        assert!((s[1].talk_time - 2.9).abs() < 1e-9);
        assert_eq!(s[1].speaker, "bob");
        assert_eq!(
            t.segments[2].words.as_ref().unwrap()[0].speaker.as_deref(),
            Some("bob")
        );
    }

    #[test]
    fn a_pause_shorter_than_the_vads_silence_stays_in_its_speakers_turn() {
        let mut segs = vec![
            segment(0.0, 2.0, None),
            segment(2.9, 4.0, None),
            segment(4.5, 5.0, None),
            segment(7.5, 8.0, None),
            segment(8.0, 9.0, None),
        ];
        for (s, who) in segs.iter_mut().zip(["A", "A", "B", "B", "B"]) {
            s.speaker = Some(who.into());
        }
        bridge_pauses(&mut segs, TURN_PAUSE_S);
        let spans: Vec<(f64, f64)> = segs.iter().map(|s| (s.start, s.end)).collect();
        // A's 0.9-s pause is bridged; the change of speaker and B's 2.5-s pause are not.
        assert_eq!(
            spans,
            vec![(0.0, 2.9), (2.9, 4.0), (4.5, 5.0), (7.5, 8.0), (8.0, 9.0)]
        );
        assert_eq!(TURN_PAUSE_S, 2.0);
    }
}
