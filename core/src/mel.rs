//! Whisper's log-mel front end, computed exactly as OpenAI's `log_mel_spectrogram`:
//! STFT (n_fft 400, hop 160, periodic Hann, centred with reflect padding), power spectrum with the
//! last frame dropped, a Slaney mel filterbank built here (80 or 128 bins), log10 clamped at
//! `max − 8`, then `(x + 4) / 4`.

use std::sync::Arc;

use rustfft::{num_complex::Complex, Fft, FftPlanner};

use crate::audio::{Samples, SpillBuffer, SpillError};

pub const N_FFT: usize = 400;
pub const HOP_LENGTH: usize = 160;
/// Frames in one 30-s window.
pub const N_FRAMES: usize = 3000;
/// Samples in one 30-s window.
pub const N_SAMPLES: usize = 480_000;

/// Frames computed (and stored) together.
const BLOCK_FRAMES: usize = 512;

/// A log-mel spectrogram. Kept as each frame's `log10` mel powers, frame-major
/// (`[n_frames][n_mels]`) and before the floor, in a [`SpillBuffer`]: an hour's log-mel (115 MB)
/// goes to a temporary file, and windows are read back as decoding reaches them.
#[derive(Debug)]
pub struct Mel {
    pub n_mels: usize,
    pub n_frames: usize,
    log: SpillBuffer,
    /// The whole recording's `max − 8`, below which values are clamped.
    floor: f32,
}

impl Mel {
    /// Whether the frames have moved to a temporary file (long audio).
    pub fn is_spilled(&self) -> bool {
        self.log.is_spilled()
    }

    /// Frames `start..start+len` (clipped to what exists), `[n_mels][N_FRAMES]` row-major,
    /// zero-padded *in the log-mel domain* to `N_FRAMES`, as OpenAI's transcribe() pads a short
    /// last window.
    pub fn window(&self, start: usize, len: usize) -> Result<Vec<f32>, SpillError> {
        let mut out = vec![0f32; self.n_mels * N_FRAMES];
        let end = (start + len.min(N_FRAMES)).min(self.n_frames);
        if start >= end {
            return Ok(out);
        }
        let mut frames = vec![0f32; (end - start) * self.n_mels];
        self.log.read(start * self.n_mels, &mut frames)?;
        for (i, frame) in frames.chunks_exact(self.n_mels).enumerate() {
            for (m, &v) in frame.iter().enumerate() {
                out[m * N_FRAMES + i] = (v.max(self.floor) + 4.0) / 4.0;
            }
        }
        Ok(out)
    }
}

/// One STFT frame's mel powers: a periodic Hann window of `N_FFT`, the FFT, a Slaney
/// filterbank. Whisper's log-mel and the speaker encoder's mel frames both use it.
pub struct MelFrames {
    window: Vec<f64>,
    /// Per mel bin: first FFT bin and the non-zero weights from there (the filters are sparse).
    filters: Vec<(usize, Vec<f64>)>,
    fft: Arc<dyn Fft<f64>>,
}

/// Buffers one thread reuses frame after frame.
pub struct FrameWork {
    buf: Vec<Complex<f64>>,
    scratch: Vec<Complex<f64>>,
    power: Vec<f64>,
}

impl MelFrames {
    pub fn new(n_mels: usize) -> Self {
        let window = (0..N_FFT)
            .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / N_FFT as f64).cos())
            .collect();
        let filters = mel_filterbank(n_mels, N_FFT, 16_000)
            .iter()
            .map(|row| {
                let first = row.iter().position(|&w| w != 0.0).unwrap_or(0);
                let last = row.iter().rposition(|&w| w != 0.0).map_or(first, |l| l + 1);
                (first, row[first..last].to_vec())
            })
            .collect();
        Self {
            window,
            filters,
            fft: FftPlanner::new().plan_fft_forward(N_FFT),
        }
    }

    pub fn work(&self) -> FrameWork {
        FrameWork {
            buf: vec![Complex::new(0.0, 0.0); N_FFT],
            scratch: vec![Complex::new(0.0, 0.0); self.fft.get_inplace_scratch_len()],
            power: vec![0f64; N_FFT / 2 + 1],
        }
    }

    /// The mel powers of the frame whose `i`-th sample is `sample(i)` (`i < N_FFT`), one per
    /// bin, handed to `emit` in bin order.
    pub fn powers(
        &self,
        sample: impl Fn(usize) -> f64,
        work: &mut FrameWork,
        mut emit: impl FnMut(f64),
    ) {
        for (i, c) in work.buf.iter_mut().enumerate() {
            *c = Complex::new(sample(i) * self.window[i], 0.0);
        }
        self.fft
            .process_with_scratch(&mut work.buf, &mut work.scratch);
        for (p, c) in work.power.iter_mut().zip(work.buf.iter()) {
            *p = c.norm_sqr();
        }
        for (first, weights) in &self.filters {
            emit(
                weights
                    .iter()
                    .zip(&work.power[*first..])
                    .map(|(w, p)| w * p)
                    .sum(),
            );
        }
    }
}

/// Whisper's log-mel front end; cheap to share between threads.
pub struct MelSpectrogram {
    n_mels: usize,
    frames: MelFrames,
}

impl MelSpectrogram {
    pub fn new(n_mels: usize) -> Self {
        Self {
            n_mels,
            frames: MelFrames::new(n_mels),
        }
    }

    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// Log-mel of `samples` followed by `pad_samples` zeros (OpenAI pads with 30 s before the
    /// STFT in transcribe(); Hugging Face pads a clip to 30 s).
    pub fn compute(&self, samples: &[f32], pad_samples: usize) -> Result<Mel, SpillError> {
        self.compute_from(&samples, pad_samples)
    }

    /// As [`compute`](Self::compute), reading the samples block by block from wherever they are
    /// kept: memory holds a block of samples and of frames at a time, whatever the length.
    pub fn compute_from(
        &self,
        samples: &dyn Samples,
        pad_samples: usize,
    ) -> Result<Mel, SpillError> {
        let content = samples.len();
        let n = content + pad_samples;
        let half = N_FFT / 2;
        // Centre the frames: reflect-pad by n_fft/2 on both sides (as torch.stft(center=True)).
        let padded_len = n + 2 * half;
        let reflect = |j: isize| -> usize {
            let nn = n as isize;
            let mut k = j;
            if k < 0 {
                k = -k;
            }
            if k >= nn {
                k = 2 * (nn - 1) - k;
            }
            k.clamp(0, nn.max(1) - 1) as usize
        };
        // torch.stft gives 1 + n/hop frames; Whisper drops the last.
        let n_frames = (padded_len - N_FFT) / HOP_LENGTH + 1 - 1;
        let mut log = SpillBuffer::new();
        let mut values = Vec::with_capacity(BLOCK_FRAMES.min(n_frames) * self.n_mels);
        let mut loaded: Vec<f32> = Vec::new();
        let mut work = self.frames.work();
        let mut max_log = f32::NEG_INFINITY;
        for f0 in (0..n_frames).step_by(BLOCK_FRAMES) {
            let f1 = (f0 + BLOCK_FRAMES).min(n_frames);
            // The samples this block's frames read (through the reflections), within the audio.
            let first_j = (f0 * HOP_LENGTH) as isize - half as isize;
            let last_j = ((f1 - 1) * HOP_LENGTH) as isize - half as isize + N_FFT as isize;
            let (mut lo, mut hi) = (usize::MAX, 0usize);
            for j in first_j..last_j {
                let k = reflect(j);
                if k < content {
                    lo = lo.min(k);
                    hi = hi.max(k + 1);
                }
            }
            let lo = lo.min(hi);
            loaded.resize(hi - lo, 0.0);
            samples.read(lo, &mut loaded)?;
            let at = |j: isize| -> f64 {
                let k = reflect(j);
                if k < content {
                    loaded[k - lo] as f64
                } else {
                    0.0
                }
            };
            values.clear();
            for f in f0..f1 {
                let start = (f * HOP_LENGTH) as isize - half as isize;
                self.frames.powers(
                    |i| at(start + i as isize),
                    &mut work,
                    |e| {
                        let v = e.max(1e-10).log10() as f32;
                        max_log = max_log.max(v);
                        values.push(v);
                    },
                );
            }
            log.push(&values)?;
        }
        Ok(Mel {
            n_mels: self.n_mels,
            n_frames,
            log,
            floor: max_log - 8.0,
        })
    }
}

fn hz_to_mel(f: f64) -> f64 {
    // Slaney: linear below 1 kHz, logarithmic above.
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = (6.4f64).ln() / 27.0;
    if f >= min_log_hz {
        min_log_mel + (f / min_log_hz).ln() / logstep
    } else {
        f / f_sp
    }
}

fn mel_to_hz(m: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = (6.4f64).ln() / 27.0;
    if m >= min_log_mel {
        min_log_hz * (logstep * (m - min_log_mel)).exp()
    } else {
        f_sp * m
    }
}

/// librosa.filters.mel(sr, n_fft, n_mels, fmin=0, fmax=sr/2, htk=False, norm="slaney").
pub fn mel_filterbank(n_mels: usize, n_fft: usize, sample_rate: usize) -> Vec<Vec<f64>> {
    let n_bins = n_fft / 2 + 1;
    let fft_freqs: Vec<f64> = (0..n_bins)
        .map(|i| i as f64 * sample_rate as f64 / n_fft as f64)
        .collect();
    let min_mel = hz_to_mel(0.0);
    let max_mel = hz_to_mel(sample_rate as f64 / 2.0);
    let mel_f: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(min_mel + (max_mel - min_mel) * i as f64 / (n_mels + 1) as f64))
        .collect();
    (0..n_mels)
        .map(|i| {
            let lower_width = mel_f[i + 1] - mel_f[i];
            let upper_width = mel_f[i + 2] - mel_f[i + 1];
            let enorm = 2.0 / (mel_f[i + 2] - mel_f[i]);
            fft_freqs
                .iter()
                .map(|&f| {
                    let lower = (f - mel_f[i]) / lower_width;
                    let upper = (mel_f[i + 2] - f) / upper_width;
                    lower.min(upper).max(0.0) * enorm
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_counts_follow_whisper() {
        let mel = MelSpectrogram::new(80);
        let m = mel.compute(&vec![0.0; 16_000], N_SAMPLES - 16_000).unwrap();
        assert_eq!(m.n_frames, N_FRAMES);
        let m = mel.compute(&vec![0.0; 176_000], N_SAMPLES).unwrap();
        assert_eq!(m.n_frames, 1100 + N_FRAMES);
    }

    #[test]
    fn filterbank_rows_are_triangles_with_slaney_area() {
        for n_mels in [80, 128] {
            let fb = mel_filterbank(n_mels, N_FFT, 16_000);
            assert_eq!(fb.len(), n_mels);
            assert!(fb
                .iter()
                .all(|r| r.len() == 201 && r.iter().any(|&w| w > 0.0)));
        }
    }

    /// One frame's log10 mel powers computed directly from the definition (reflect-padded,
    /// windowed FFT, filterbank), for checking the blockwise computation.
    fn direct_frame(mel: &MelSpectrogram, x: &[f32], pad: usize, f: usize) -> Vec<f32> {
        let n = (x.len() + pad) as isize;
        let sample = |j: isize| -> f64 {
            let k = if j < 0 { -j } else { j };
            let k = if k >= n { 2 * (n - 1) - k } else { k };
            x.get(k as usize).map_or(0.0, |&v| v as f64)
        };
        let mut buf: Vec<Complex<f64>> = (0..N_FFT)
            .map(|i| {
                let j = (f * HOP_LENGTH + i) as isize - (N_FFT / 2) as isize;
                Complex::new(sample(j) * mel.frames.window[i], 0.0)
            })
            .collect();
        mel.frames.fft.process(&mut buf);
        let power: Vec<f64> = buf.iter().map(|c| c.norm_sqr()).collect();
        mel.frames
            .filters
            .iter()
            .map(|(first, w)| {
                let e: f64 = w.iter().zip(&power[*first..]).map(|(w, p)| w * p).sum();
                e.max(1e-10).log10() as f32
            })
            .collect()
    }

    #[test]
    fn blockwise_frames_equal_the_definition_at_every_block_seam() {
        let mel = MelSpectrogram::new(80);
        let x: Vec<f32> = (0..3 * BLOCK_FRAMES * HOP_LENGTH + 777)
            .map(|i| ((i as f32 * 0.013).sin() + (i as f32 * 0.41).cos() * 0.3) * 0.5)
            .collect();
        for pad in [0, 150, N_SAMPLES] {
            let m = mel.compute(&x, pad).unwrap();
            let max = (0..m.n_frames)
                .flat_map(|f| direct_frame(&mel, &x, pad, f))
                .fold(f32::NEG_INFINITY, f32::max);
            let seams = [0, 1, BLOCK_FRAMES - 1, BLOCK_FRAMES, 2 * BLOCK_FRAMES + 1];
            for f in seams.into_iter().chain([m.n_frames - 2, m.n_frames - 1]) {
                let got = m.window(f, 1).unwrap();
                let want = direct_frame(&mel, &x, pad, f);
                for (b, w) in want.iter().enumerate() {
                    let w = (w.max(max - 8.0) + 4.0) / 4.0;
                    assert_eq!(
                        got[b * N_FRAMES].to_bits(),
                        w.to_bits(),
                        "pad {pad}, frame {f}, bin {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn spilled_samples_give_the_same_log_mel() {
        let mel = MelSpectrogram::new(80);
        let x: Vec<f32> = (0..40_000).map(|i| (i as f32 * 0.02).sin() * 0.3).collect();
        let mut spilled = SpillBuffer::with_limit(1000);
        for piece in x.chunks(4321) {
            spilled.push(piece).unwrap();
        }
        assert!(spilled.is_spilled());
        let (a, b) = (
            mel.compute(&x, N_SAMPLES).unwrap(),
            mel.compute_from(&spilled, N_SAMPLES).unwrap(),
        );
        assert_eq!(a.n_frames, b.n_frames);
        for start in [0, 100, a.n_frames - 5] {
            assert_eq!(
                a.window(start, N_FRAMES).unwrap(),
                b.window(start, N_FRAMES).unwrap()
            );
        }
    }

    #[test]
    fn window_pads_with_zeros_in_log_domain() {
        let mel = MelSpectrogram::new(80);
        let m = mel.compute(&vec![0.1; 32_000], N_SAMPLES).unwrap();
        let w = m.window(0, 200).unwrap();
        assert_eq!(w.len(), 80 * N_FRAMES);
        assert_eq!(w[250], 0.0);
        assert_ne!(w[10], 0.0);
    }
}
