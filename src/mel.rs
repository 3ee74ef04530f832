//! Whisper's log-mel front end, computed exactly as OpenAI's `log_mel_spectrogram`:
//! STFT (n_fft 400, hop 160, periodic Hann, centred with reflect padding), power spectrum with the
//! last frame dropped, a Slaney mel filterbank built here (80 or 128 bins), log10 clamped at
//! `max − 8`, then `(x + 4) / 4`.

use std::sync::Arc;

use rustfft::{num_complex::Complex, Fft, FftPlanner};

pub const N_FFT: usize = 400;
pub const HOP_LENGTH: usize = 160;
/// Frames in one 30-s window.
pub const N_FRAMES: usize = 3000;
/// Samples in one 30-s window.
pub const N_SAMPLES: usize = 480_000;

/// A log-mel spectrogram, row-major `[n_mels][n_frames]`.
#[derive(Debug, Clone)]
pub struct Mel {
    pub n_mels: usize,
    pub n_frames: usize,
    pub data: Vec<f32>,
}

impl Mel {
    /// Frames `start..start+len` (clipped to what exists), zero-padded *in the log-mel domain* to
    /// `N_FRAMES`, as OpenAI's transcribe() pads a short last window.
    pub fn window(&self, start: usize, len: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.n_mels * N_FRAMES];
        let end = (start + len.min(N_FRAMES)).min(self.n_frames);
        if start >= end {
            return out;
        }
        for m in 0..self.n_mels {
            let row = &self.data[m * self.n_frames..(m + 1) * self.n_frames];
            out[m * N_FRAMES..m * N_FRAMES + (end - start)].copy_from_slice(&row[start..end]);
        }
        out
    }
}

/// Precomputed window, filterbank and FFT plan; cheap to share between threads.
pub struct MelSpectrogram {
    n_mels: usize,
    window: Vec<f64>,
    /// Per mel bin: first FFT bin and the non-zero weights from there (the filters are sparse).
    filters: Vec<(usize, Vec<f64>)>,
    fft: Arc<dyn Fft<f64>>,
}

impl MelSpectrogram {
    pub fn new(n_mels: usize) -> Self {
        let window = (0..N_FFT)
            .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / N_FFT as f64).cos())
            .collect();
        let dense = mel_filterbank(n_mels, N_FFT, 16_000);
        let filters = dense
            .iter()
            .map(|row| {
                let first = row.iter().position(|&w| w != 0.0).unwrap_or(0);
                let last = row.iter().rposition(|&w| w != 0.0).map_or(first, |l| l + 1);
                (first, row[first..last].to_vec())
            })
            .collect();
        let fft = FftPlanner::new().plan_fft_forward(N_FFT);
        Self {
            n_mels,
            window,
            filters,
            fft,
        }
    }

    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// Log-mel of `samples` followed by `pad_samples` zeros (OpenAI pads with 30 s before the
    /// STFT in transcribe(); Hugging Face pads a clip to 30 s).
    pub fn compute(&self, samples: &[f32], pad_samples: usize) -> Mel {
        let n = samples.len() + pad_samples;
        let half = N_FFT / 2;
        // Centre the frames: reflect-pad by n_fft/2 on both sides (as torch.stft(center=True)).
        let padded_len = n + 2 * half;
        let at = |i: usize| -> f64 {
            if i < samples.len() {
                samples[i] as f64
            } else {
                0.0
            }
        };
        let reflect = |j: isize| -> f64 {
            let nn = n as isize;
            let mut k = j;
            if k < 0 {
                k = -k;
            }
            if k >= nn {
                k = 2 * (nn - 1) - k;
            }
            at(k.clamp(0, nn.max(1) - 1) as usize)
        };
        // torch.stft gives 1 + n/hop frames; Whisper drops the last.
        let n_frames = (padded_len - N_FFT) / HOP_LENGTH + 1 - 1;
        let n_bins = N_FFT / 2 + 1;
        let mut data = vec![0f32; self.n_mels * n_frames];
        let mut buf = vec![Complex::new(0.0, 0.0); N_FFT];
        let mut scratch = vec![Complex::new(0.0, 0.0); self.fft.get_inplace_scratch_len()];
        let mut power = vec![0f64; n_bins];
        let mut max_log = f32::NEG_INFINITY;
        for f in 0..n_frames {
            let start = (f * HOP_LENGTH) as isize - half as isize;
            for (i, c) in buf.iter_mut().enumerate() {
                *c = Complex::new(reflect(start + i as isize) * self.window[i], 0.0);
            }
            self.fft.process_with_scratch(&mut buf, &mut scratch);
            for (p, c) in power.iter_mut().zip(buf.iter()) {
                *p = c.norm_sqr();
            }
            for (m, (first, weights)) in self.filters.iter().enumerate() {
                let e: f64 = weights
                    .iter()
                    .zip(&power[*first..])
                    .map(|(w, p)| w * p)
                    .sum();
                let v = e.max(1e-10).log10() as f32;
                max_log = max_log.max(v);
                data[m * n_frames + f] = v;
            }
        }
        let floor = max_log - 8.0;
        for v in data.iter_mut() {
            *v = (v.max(floor) + 4.0) / 4.0;
        }
        Mel {
            n_mels: self.n_mels,
            n_frames,
            data,
        }
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
        let m = mel.compute(&vec![0.0; 16_000], N_SAMPLES - 16_000);
        assert_eq!(m.n_frames, N_FRAMES);
        let m = mel.compute(&vec![0.0; 176_000], N_SAMPLES);
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

    #[test]
    fn window_pads_with_zeros_in_log_domain() {
        let mel = MelSpectrogram::new(80);
        let m = mel.compute(&vec![0.1; 32_000], N_SAMPLES);
        let w = m.window(0, 200);
        assert_eq!(w.len(), 80 * N_FRAMES);
        assert_eq!(w[250], 0.0);
        assert_ne!(w[10], 0.0);
    }
}
