//! What part of a recording is speech, before any of it reaches the decoder.
//!
//! 1. An energy gate (`gate`): long runs of near-silence (digital silence, a noise floor far below
//!    the recording's speech) are marked. It always runs, VAD on or off, and costs one pass over
//!    the samples.
//! 2. Silero VAD (`silero`), when VAD is on: a speech probability per 32-ms frame for every frame
//!    the gate did not mark.
//! 3. Regions (`regions`): faster-whisper's `get_speech_timestamps` over those probabilities
//!    (hysteresis thresholds, minimum speech and silence, padding). With VAD off the gate's
//!    verdict stands in for the probabilities, so only long gated runs are cut.
//! 4. A `SpeechMap`: the kept regions joined end to end (the audio the decoder sees, decoded by
//!    the normal seek loop in 30-s windows, as faster-whisper's `vad_filter` does), and the way
//!    back from a time in the joined audio to the original recording.

mod gate;
pub mod onnx;
mod regions;
pub mod silero;

use std::ops::Range;
use std::path::PathBuf;

pub use gate::{quiet_frames, GATE_FLOOR_DB, GATE_RELATIVE_DB};
pub use regions::speech_timestamps;
pub use silero::{SileroVad, FRAME};

use crate::audio::{Samples, SpillError, SAMPLE_RATE};

/// Frames of each gated run that Silero still sees before speech resumes (0.5 s).
const WARM_UP: usize = 16;
/// Gated runs at least this long (10 s) are not run through Silero at all.
const SKIP_RUN: usize = 313;

/// Frames Silero need not see: gated runs of `SKIP_RUN` frames or more, minus their last
/// `WARM_UP` frames.
fn skip_long_runs(quiet: &[bool]) -> Vec<bool> {
    let mut skip = vec![false; quiet.len()];
    let mut f = 0;
    while f < quiet.len() {
        if !quiet[f] {
            f += 1;
            continue;
        }
        let start = f;
        while f < quiet.len() && quiet[f] {
            f += 1;
        }
        if f - start >= SKIP_RUN {
            let end = if f == quiet.len() { f } else { f - WARM_UP };
            skip[start..end].fill(true);
        }
    }
    skip
}

/// Seconds without speech after which what follows is a new passage: the decoder does not join
/// it to the speech before into one window, and Silero's state restarts
/// (`silero::RESET_AFTER_QUIET`).
pub const PASSAGE_GAP_S: f32 = 10.0;

/// Whether `/transcribe`, `whisperd transcribe` and `whisperd batch` run Silero VAD unless told
/// otherwise (`/v1` follows OpenAI: only with `chunking_strategy`). The one place this default is set.
pub const DEFAULT_ON: bool = true;

/// The VAD model file and where `make model` puts it (beside the Whisper model directories).
pub const MODEL_FILE: &str = "silero_vad_v6.onnx";
pub const MODEL_DIR: &str = "silero-vad";

#[derive(Debug, thiserror::Error)]
pub enum VadError {
    #[error("cannot read the VAD model {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Onnx(#[from] onnx::OnnxError),
    #[error("not a Silero VAD v6 model: {0}")]
    Model(String),
    #[error("VAD computation failed: {0}")]
    Compute(#[from] candle_core::Error),
    #[error(transparent)]
    Spill(#[from] crate::audio::SpillError),
}

/// Speech detection settings: faster-whisper's `VadOptions` (same names, same defaults) plus the
/// energy gate's level.
#[derive(Debug, Clone, PartialEq)]
pub struct VadOptions {
    /// Run Silero VAD and transcribe only the speech it finds. Off: only the energy gate cuts.
    pub enabled: bool,
    /// Frames with a speech probability at or above this start (or continue) speech.
    pub threshold: f32,
    /// Below this a frame is silence even inside speech; `None`: `max(threshold - 0.15, 0.01)`.
    pub neg_threshold: Option<f32>,
    pub min_speech_duration_ms: u32,
    /// Longer speech is split at its last silence of 98 ms or more (or hard at this length).
    pub max_speech_duration_s: f32,
    /// Silence shorter than this does not end a speech region.
    pub min_silence_duration_ms: u32,
    /// Kept on each side of a speech region.
    pub speech_pad_ms: u32,
    /// The energy gate's level in dBFS: frames quieter than this (and 50 dB below the recording's
    /// loudest frame) are near-silence; `None` turns the gate off.
    pub gate_db: Option<f32>,
}

impl Default for VadOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl VadOptions {
    /// faster-whisper's `VadOptions()` defaults, VAD off (the library transcribes what it is
    /// given; front ends turn VAD on by `DEFAULT_ON`), the gate at -60 dBFS.
    pub const DEFAULT: VadOptions = VadOptions {
        enabled: false,
        threshold: 0.5,
        neg_threshold: None,
        min_speech_duration_ms: 0,
        max_speech_duration_s: f32::INFINITY,
        min_silence_duration_ms: 2000,
        speech_pad_ms: 400,
        gate_db: Some(-60.0),
    };

    /// The error names the bad setting.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let prob = |v: f32| (0.0..=1.0).contains(&v);
        if !prob(self.threshold) {
            return Err(("vad_threshold", "must be between 0 and 1".into()));
        }
        if self.neg_threshold.is_some_and(|v| !prob(v)) {
            return Err(("vad_neg_threshold", "must be between 0 and 1".into()));
        }
        if self.max_speech_duration_s.is_nan() || self.max_speech_duration_s <= 0.0 {
            return Err((
                "vad_max_speech_duration_s",
                "must be a positive number of seconds (or inf)".into(),
            ));
        }
        for (name, v) in [
            ("vad_min_speech_duration_ms", self.min_speech_duration_ms),
            ("vad_min_silence_duration_ms", self.min_silence_duration_ms),
            ("vad_speech_pad_ms", self.speech_pad_ms),
        ] {
            if v > 600_000 {
                return Err((name, "must be at most 600000 ms".into()));
            }
        }
        if self
            .gate_db
            .is_some_and(|g| g.is_nan() || !(-120.0..=0.0).contains(&g))
        {
            return Err((
                "vad_gate_db",
                "must be between -120 and 0 dBFS, or `none`".into(),
            ));
        }
        Ok(())
    }
}

/// The kept regions of a recording and how the joined audio maps back onto it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeechMap {
    /// Kept sample ranges of the original recording, in order, not overlapping.
    pub regions: Vec<Range<usize>>,
    /// Samples in the original recording.
    pub total: usize,
    /// Whether Silero ran (VAD on) or only the energy gate cut.
    pub vad: bool,
}

impl SpeechMap {
    /// Everything kept: what decoding without VAD or gate sees.
    pub fn whole(total: usize) -> Self {
        Self {
            regions: std::iter::once(0..total).collect(),
            total,
            vad: false,
        }
    }

    pub fn kept_samples(&self) -> usize {
        self.regions.iter().map(|r| r.len()).sum()
    }

    pub fn speech_seconds(&self) -> f64 {
        self.kept_samples() as f64 / SAMPLE_RATE as f64
    }

    pub fn skipped_seconds(&self) -> f64 {
        (self.total - self.kept_samples()) as f64 / SAMPLE_RATE as f64
    }

    /// Whether nothing is cut (the joined audio is the recording).
    pub fn is_whole(&self) -> bool {
        self.regions.len() == 1 && self.regions[0] == (0..self.total)
    }

    /// The kept audio, joined, read from `samples` (the recording) as it is asked for.
    pub fn join<'a>(&'a self, samples: &'a dyn Samples) -> Joined<'a> {
        Joined { map: self, samples }
    }

    /// The region holding joined sample `s` (an `is_end` exactly on a seam: the earlier region),
    /// and where that region starts in the joined audio.
    fn locate(&self, s: usize, is_end: bool) -> (usize, usize) {
        let mut joined_start = 0usize;
        for (i, r) in self.regions.iter().enumerate() {
            let joined_end = joined_start + r.len();
            if s < joined_end || (is_end && s == joined_end) || i + 1 == self.regions.len() {
                return (i, joined_start);
            }
            joined_start = joined_end;
        }
        (0, 0)
    }

    /// Where the decoder's chunks end, in samples of the joined audio. Consecutive regions are
    /// merged while the chunk stays within `max` samples (a longer region is a chunk of its own),
    /// as faster-whisper's batched pipeline and whisperX merge VAD segments, except across a gap
    /// of [`PASSAGE_GAP_S`] or more: speech after that long a silence is a new passage, and
    /// joined to the last one it only makes a window that does not sound like any recording (the
    /// same sentence twice reads as a repetition loop to the fallback check). A decoding window
    /// never crosses a chunk end. The last end is the joined length.
    pub fn chunk_ends(&self, max: usize) -> Vec<usize> {
        let gap = (PASSAGE_GAP_S * SAMPLE_RATE as f32) as usize;
        let mut ends = Vec::new();
        let (mut joined, mut chunk) = (0usize, 0usize);
        let mut prev_end = 0usize;
        for r in &self.regions {
            let far = r.start.saturating_sub(prev_end) >= gap;
            if chunk > 0 && (chunk + r.len() > max || far) {
                ends.push(joined);
                chunk = 0;
            }
            chunk += r.len();
            joined += r.len();
            prev_end = r.end;
        }
        ends.push(joined);
        ends
    }

    /// A time in the joined audio → the same instant in the original recording.
    pub fn original_time(&self, t: f64, is_end: bool) -> f64 {
        let sr = SAMPLE_RATE as f64;
        let (i, joined_start) = self.locate((t * sr).round().max(0.0) as usize, is_end);
        let Some(r) = self.regions.get(i) else {
            return t;
        };
        ((t + (r.start as f64 - joined_start as f64) / sr) * 1000.0).round() / 1000.0
    }

    /// A segment (and its words) from the joined audio's timeline to the recording's.
    pub fn map_segment(&self, s: &mut crate::transcript::Segment) {
        (s.start, s.end) = self.original_span(s.start, s.end);
        for w in s.words.iter_mut().flatten() {
            (w.start, w.end) = self.original_span(w.start, w.end);
        }
    }

    /// A segment's (start, end) in the joined audio → the original recording. A segment never
    /// spans audio that was removed: one whose ends fall in two regions with a cut between them
    /// is kept on the side that holds more of it (its other edge moves to that region's edge),
    /// so a subtitle does not stay up across minutes of skipped silence.
    pub fn original_span(&self, start: f64, end: f64) -> (f64, f64) {
        let sr = SAMPLE_RATE as f64;
        let secs = |s: usize| s as f64 / sr;
        let (i, _) = self.locate((start * sr).round().max(0.0) as usize, false);
        let (j, j_start) = self.locate((end * sr).round().max(0.0) as usize, true);
        let total = secs(self.total);
        let (os, oe) = (
            self.original_time(start, false).min(total),
            self.original_time(end, true).min(total),
        );
        let cut_between = j > i && self.regions[i].end < self.regions[j].start;
        if !cut_between {
            return (os, oe.max(os));
        }
        let seam = secs(j_start);
        if seam - start >= end - seam {
            (os, secs(self.regions[i].end).max(os))
        } else {
            (secs(self.regions[j].start), oe)
        }
    }
}

/// The kept regions of a recording, joined: what the decoder hears.
pub struct Joined<'a> {
    map: &'a SpeechMap,
    samples: &'a dyn Samples,
}

impl Samples for Joined<'_> {
    fn len(&self) -> usize {
        self.map
            .regions
            .iter()
            .map(|r| r.end.min(self.samples.len()).saturating_sub(r.start))
            .sum()
    }

    fn read(&self, start: usize, out: &mut [f32]) -> Result<(), SpillError> {
        let (mut at, mut done) = (0usize, 0usize);
        for r in &self.map.regions {
            let r = r.start..r.end.min(self.samples.len()).max(r.start);
            let want = start + done;
            if done < out.len() && want < at + r.len() {
                let from = r.start + (want - at);
                let n = (r.end - from).min(out.len() - done);
                self.samples.read(from, &mut out[done..done + n])?;
                done += n;
            }
            at += r.len();
        }
        if done < out.len() {
            // past the joined end: the same error the sources give
            let mut none = vec![0f32; out.len() - done];
            return self.samples.read(self.samples.len(), &mut none);
        }
        Ok(())
    }
}

/// The kept regions of `samples` under `o`: the gate always (unless `gate_db` is none), Silero
/// when `o.enabled` (then `vad` must be given).
pub fn analyze(
    samples: &dyn Samples,
    o: &VadOptions,
    vad: Option<&SileroVad>,
) -> Result<SpeechMap, VadError> {
    let total = samples.len();
    let quiet = match o.gate_db {
        Some(db) => quiet_frames(samples, db)?,
        None => vec![false; total / FRAME + 1],
    };
    let probs = match (o.enabled, vad) {
        (true, Some(model)) => {
            // Silero sees every frame except those of long gated runs (its output over short
            // pauses then stays exactly faster-whisper's). Its state restarts before the last
            // WARM_UP frames of each long run, which it sees, so speech after it meets a settled
            // state.
            let skip = skip_long_runs(&quiet);
            model.speech_probs(samples, |f| skip.get(f).copied().unwrap_or(false))?
        }
        (true, None) => {
            return Err(VadError::Model(
                "VAD is on but no VAD model is loaded".into(),
            ))
        }
        (false, _) => {
            if !quiet.iter().any(|&q| q) {
                return Ok(SpeechMap::whole(total));
            }
            quiet.iter().map(|&q| if q { 0.0 } else { 1.0 }).collect()
        }
    };
    Ok(SpeechMap {
        regions: speech_timestamps(&probs, total, o),
        total,
        vad: o.enabled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: usize = SAMPLE_RATE as usize;

    fn map(regions: Vec<Range<usize>>, total: usize) -> SpeechMap {
        SpeechMap {
            regions,
            total,
            vad: true,
        }
    }

    #[test]
    fn regions_merge_into_chunks_of_at_most_max() {
        let m = map(vec![0..10, 20..35, 40..45, 50..90, 95..100], 100);
        // 10 + 15 + 5 fill 30; 40 is a chunk of its own; the last 5 start another
        assert_eq!(m.chunk_ends(30), vec![30, 70, 75]);
        assert_eq!(m.chunk_ends(1000), vec![75]);
        // a gap of PASSAGE_GAP_S or more starts a new chunk
        let g = (PASSAGE_GAP_S * SAMPLE_RATE as f32) as usize;
        let m = map(
            vec![0..S, S + g - 1..2 * S + g, 2 * S + 2 * g..3 * S + 2 * g],
            4 * S + 2 * g,
        );
        assert_eq!(m.chunk_ends(30 * S), vec![2 * S + 1, 3 * S + 1]);
        assert_eq!(SpeechMap::whole(7).chunk_ends(3), vec![7]);
        assert_eq!(map(vec![], 7).chunk_ends(3), vec![0]);
    }

    #[test]
    fn joined_times_map_back_to_the_recording() {
        let m = map(vec![S..3 * S, 10 * S..12 * S], 20 * S);
        assert_eq!(m.speech_seconds(), 4.0);
        assert_eq!(m.skipped_seconds(), 16.0);
        assert_eq!(m.original_time(0.0, false), 1.0);
        assert_eq!(m.original_time(1.5, false), 2.5);
        // the seam at 2 s of joined audio: a start belongs to the second region, an end to the first
        assert_eq!(m.original_time(2.0, false), 10.0);
        assert_eq!(m.original_time(2.0, true), 3.0);
        assert_eq!(m.original_time(3.5, true), 11.5);
        // past the end stays in the last region
        assert_eq!(m.original_time(5.0, true), 13.0);
        assert!(SpeechMap::whole(5).is_whole());
        let x: Vec<f32> = (0..20 * S).map(|i| i as f32).collect();
        let joined = m.join(&x);
        assert_eq!(joined.len(), 4 * S);
        let mut j = vec![0f32; 4 * S];
        joined.read(0, &mut j).unwrap();
        assert_eq!(j[0], S as f32);
        assert_eq!(j[2 * S], (10 * S) as f32);
        // a read across the seam, and one past the end
        let mut two = [0f32; 2];
        joined.read(2 * S - 1, &mut two).unwrap();
        assert_eq!(two, [(3 * S - 1) as f32, (10 * S) as f32]);
        assert!(joined.read(4 * S - 1, &mut two).is_err());
    }

    #[test]
    fn segments_never_span_removed_audio() {
        let m = map(vec![S..3 * S, 10 * S..12 * S], 20 * S);
        // within one region: plain mapping
        assert_eq!(m.original_span(0.5, 1.5), (1.5, 2.5));
        // mostly before the seam: ends where the first region ends
        assert_eq!(m.original_span(0.5, 2.2), (1.5, 3.0));
        // mostly after: starts where the second region starts
        assert_eq!(m.original_span(1.9, 3.5), (10.0, 11.5));
        // adjacent regions (nothing removed between): nothing to move
        let q = map(vec![0..2 * S, 2 * S..4 * S], 4 * S);
        assert_eq!(q.original_span(1.0, 3.0), (1.0, 3.0));
    }

    #[test]
    fn vad_off_cuts_only_long_gated_silence() {
        let mut x = vec![0f32; 20 * S];
        // a 440 Hz tone at -20 dBFS for 0-5 s and 15-20 s, digital silence between
        for (i, v) in x.iter_mut().enumerate() {
            if !(5 * S..15 * S).contains(&i) {
                *v = 0.1 * (i as f32 * 440.0 * std::f32::consts::TAU / S as f32).sin();
            }
        }
        let m = analyze(&x, &VadOptions::default(), None).unwrap();
        assert!(!m.vad);
        assert_eq!(m.regions.len(), 2, "{:?}", m.regions);
        // padded by 0.4 s into the silence on each side
        let pad = (0.4 * S as f64) as usize;
        assert!(
            m.regions[0].end.abs_diff(5 * S + pad) <= FRAME,
            "{:?}",
            m.regions
        );
        assert!(
            m.regions[1].start.abs_diff(15 * S - pad) <= FRAME,
            "{:?}",
            m.regions
        );
        // gate off: nothing cut
        let o = VadOptions {
            gate_db: None,
            ..VadOptions::default()
        };
        assert!(analyze(&x, &o, None).unwrap().is_whole());
        // all digital silence: nothing kept
        let m = analyze(&vec![0f32; 10 * S], &VadOptions::default(), None).unwrap();
        assert!(m.regions.is_empty());
        // VAD on without a model is an error, not a silent fallback
        let on = VadOptions {
            enabled: true,
            ..VadOptions::default()
        };
        assert!(analyze(&x, &on, None).is_err());
    }

    #[test]
    fn silero_skips_only_long_gated_runs() {
        let mut q = vec![false; 1200];
        q[10..100].fill(true); // 90 frames: Silero sees them
        q[200..600].fill(true); // 400 frames: skipped but for the last WARM_UP
        q[700..].fill(true); // a long run to the end: skipped whole
        let s = skip_long_runs(&q);
        assert!(!s[10..100].iter().any(|&x| x));
        assert!(s[200..600 - WARM_UP].iter().all(|&x| x));
        assert!(!s[600 - WARM_UP..700].iter().any(|&x| x));
        assert!(s[700..].iter().all(|&x| x));
    }

    #[test]
    fn options_are_checked() {
        assert!(VadOptions::default().check().is_ok());
        let bad = VadOptions {
            threshold: 1.5,
            ..VadOptions::default()
        };
        assert_eq!(bad.check().unwrap_err().0, "vad_threshold");
        let bad = VadOptions {
            gate_db: Some(f32::NAN),
            ..VadOptions::default()
        };
        assert_eq!(bad.check().unwrap_err().0, "vad_gate_db");
    }
}
