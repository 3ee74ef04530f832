//! The GE2E speaker encoder (Resemblyzer 0.1.4's `pretrained.pt`, converted once at fetch time
//! to `models/ge2e/ge2e.safetensors` by `models/fetch.py ge2e`): a window of 1.6 s of 16-kHz
//! audio → 40 mel powers per 10-ms frame (25-ms Hann window, no log) → a 3-layer LSTM of 256
//! → the last layer's final hidden state → linear 256 → ReLU → L2 norm: a 256-value voice
//! embedding, close (cosine) for the same speaker.
//!
//! Many windows run as one batch: each LSTM layer's input projection is one matrix product over
//! every frame of every window, each time step one product over the batch (the `gemm` crate,
//! accumulating into the gates) and one fused, vectorized cell update
//! (`whisperd_kernels::elementwise::lstm_cell`): candle's separate sigmoid/tanh/mul ops spent
//! most of the time allocating and in scalar libm.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

pub const SAMPLE_RATE: usize = 16_000;
/// Samples in one window (1.6 s), as Resemblyzer's partial utterances.
pub const WINDOW_SAMPLES: usize = 25_600;
pub const N_MELS: usize = 40;
const N_FFT: usize = crate::mel::N_FFT;
const HOP: usize = crate::mel::HOP_LENGTH;
pub const EMBEDDING: usize = 256;
const HIDDEN: usize = 256;
const LAYERS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    #[error(
        "speaker model {path}: {message} (run `make model-ge2e`, or python3 models/fetch.py ge2e)"
    )]
    Model { path: String, message: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("speaker encoder input: {0}")]
    Shape(String),
}

/// Mel frames of 1-D audio, frame-major (`[frames][N_MELS]`), computed as librosa's
/// `melspectrogram(y, sr=16000, n_fft=400, hop_length=160, n_mels=40)`: centred frames with
/// zero padding, periodic Hann window, power 2, Slaney mel filters, no log.
pub struct SpeakerMel {
    frames: crate::mel::MelFrames,
}

impl Default for SpeakerMel {
    fn default() -> Self {
        Self::new()
    }
}

impl SpeakerMel {
    pub fn new() -> Self {
        Self {
            frames: crate::mel::MelFrames::new(N_MELS),
        }
    }

    /// `1 + len / 160` frames (161 for a 1.6-s window).
    pub fn frames(&self, samples: &[f32]) -> Vec<f32> {
        self.frames_in(samples, 0, samples.len(), 0..1 + samples.len() / HOP)
    }

    /// Frames `range` of a whole recording (frame `f` centred on sample `160·f`, zeros past
    /// either end), reading only the samples they need.
    pub fn frames_of(
        &self,
        samples: &dyn crate::audio::Samples,
        range: std::ops::Range<usize>,
    ) -> Result<Vec<f32>, crate::audio::SpillError> {
        let n = samples.len();
        let first = (range.start * HOP).saturating_sub(N_FFT / 2).min(n);
        let last = (range.end * HOP + N_FFT / 2).min(n).max(first);
        let mut buf = vec![0f32; last - first];
        samples.read(first, &mut buf)?;
        Ok(self.frames_in(&buf, first, n, range))
    }

    /// Frames `range` of a recording `total` samples long of which `part` starts at `offset`
    /// (and holds every sample those frames touch).
    fn frames_in(
        &self,
        part: &[f32],
        offset: usize,
        total: usize,
        range: std::ops::Range<usize>,
    ) -> Vec<f32> {
        let half = N_FFT as isize / 2;
        let mut out = Vec::with_capacity(range.len() * N_MELS);
        let mut work = self.frames.work();
        for f in range {
            let start = (f * HOP) as isize - half;
            let at = |i: usize| {
                let j = start + i as isize;
                if j >= 0 && (j as usize) < total {
                    part.get(j as usize - offset).map_or(0.0, |&v| v as f64)
                } else {
                    0.0
                }
            };
            self.frames.powers(at, &mut work, |e| out.push(e as f32));
        }
        out
    }
}

struct LstmLayer {
    /// `[input][4·HIDDEN]`, gates in PyTorch's order: input, forget, cell, output.
    w_ih_t: Vec<f32>,
    /// `[HIDDEN][4·HIDDEN]`.
    w_hh_t: Vec<f32>,
    /// `b_ih + b_hh`, `[4·HIDDEN]`.
    bias: Vec<f32>,
    input: usize,
}

pub struct SpeakerEncoder {
    layers: Vec<LstmLayer>,
    /// `[EMBEDDING][HIDDEN]` (PyTorch's layout: one row per output).
    linear: Vec<f32>,
    linear_b: Vec<f32>,
    mel: SpeakerMel,
}

/// `dst[m×n] += a[m×k] · b[k×n]`, all row-major and contiguous.
fn matmul_add(dst: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize) {
    assert!(dst.len() >= m * n && a.len() >= m * k && b.len() >= k * n);
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    let par = if threads > 1 && m * n * k >= 1 << 20 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the three buffers hold at least m×n, m×k and k×n values (asserted above), the
    // strides describe contiguous row-major matrices of those shapes, and `dst` does not alias
    // `a` or `b` (a `&mut` and two `&` borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            true,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

impl SpeakerEncoder {
    /// Load `ge2e.safetensors` (see the module's header).
    pub fn load(path: &Path) -> Result<Self, SpeakerError> {
        let bad = |message: String| SpeakerError::Model {
            path: path.display().to_string(),
            message,
        };
        if !path.is_file() {
            return Err(bad("not found".into()));
        }
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| bad(format!("unreadable: {e}")))?;
        let get = |name: &str, shape: &[usize]| -> Result<Tensor, SpeakerError> {
            let t = tensors
                .get(name)
                .ok_or_else(|| bad(format!("no tensor {name}")))?;
            if t.dims() != shape {
                return Err(bad(format!(
                    "{name} has shape {:?}, expected {shape:?}",
                    t.dims()
                )));
            }
            Ok(t.to_dtype(DType::F32)?)
        };
        let flat =
            |t: Tensor| -> Result<Vec<f32>, SpeakerError> { Ok(t.flatten_all()?.to_vec1()?) };
        let mut layers = Vec::with_capacity(LAYERS);
        for l in 0..LAYERS {
            let input = if l == 0 { N_MELS } else { HIDDEN };
            let w_ih = get(&format!("lstm.weight_ih_l{l}"), &[4 * HIDDEN, input])?;
            let w_hh = get(&format!("lstm.weight_hh_l{l}"), &[4 * HIDDEN, HIDDEN])?;
            let b_ih = get(&format!("lstm.bias_ih_l{l}"), &[4 * HIDDEN])?;
            let b_hh = get(&format!("lstm.bias_hh_l{l}"), &[4 * HIDDEN])?;
            layers.push(LstmLayer {
                w_ih_t: flat(w_ih.t()?.contiguous()?)?,
                w_hh_t: flat(w_hh.t()?.contiguous()?)?,
                bias: flat((b_ih + b_hh)?)?,
                input,
            });
        }
        Ok(Self {
            layers,
            linear: flat(get("linear.weight", &[EMBEDDING, HIDDEN])?)?,
            linear_b: flat(get("linear.bias", &[EMBEDDING])?)?,
            mel: SpeakerMel::new(),
        })
    }

    pub fn mel(&self) -> &SpeakerMel {
        &self.mel
    }

    /// Embeddings of windows given as mel frames, all with the same number of frames:
    /// `mels` is `[window][frame][N_MELS]` flattened. One L2-normalised `EMBEDDING` per window.
    pub fn embed_mels(
        &self,
        mels: &[f32],
        windows: usize,
        frames: usize,
    ) -> Result<Vec<Vec<f32>>, SpeakerError> {
        if windows == 0 || frames == 0 {
            return Ok(vec![vec![0.0; EMBEDDING]; windows]);
        }
        if mels.len() != windows * frames * N_MELS {
            return Err(SpeakerError::Shape(format!(
                "{} mel values for {windows} windows of {frames} frames",
                mels.len()
            )));
        }
        let g4 = 4 * HIDDEN;
        let mut x: Vec<f32> = mels.to_vec();
        let mut h = vec![0f32; windows * HIDDEN];
        let mut c = vec![0f32; windows * HIDDEN];
        let mut gates = vec![0f32; windows * g4];
        for (l, layer) in self.layers.iter().enumerate() {
            // The last layer's outputs are not needed, only its final state.
            let last = l + 1 == self.layers.len();
            // Every frame's input projection at once: `[window][frame][4·HIDDEN]`.
            let mut pre: Vec<f32> = layer
                .bias
                .iter()
                .copied()
                .cycle()
                .take(windows * frames * g4)
                .collect();
            matmul_add(
                &mut pre,
                &x,
                &layer.w_ih_t,
                windows * frames,
                layer.input,
                g4,
            );
            h.fill(0.0);
            c.fill(0.0);
            let mut outputs = if last {
                Vec::new()
            } else {
                vec![0f32; windows * frames * HIDDEN]
            };
            for t in 0..frames {
                for w in 0..windows {
                    gates[w * g4..(w + 1) * g4]
                        .copy_from_slice(&pre[(w * frames + t) * g4..][..g4]);
                }
                matmul_add(&mut gates, &h, &layer.w_hh_t, windows, HIDDEN, g4);
                whisperd_kernels::elementwise::lstm_cell(&gates, &mut c, &mut h, HIDDEN);
                if !last {
                    for w in 0..windows {
                        outputs[(w * frames + t) * HIDDEN..][..HIDDEN]
                            .copy_from_slice(&h[w * HIDDEN..(w + 1) * HIDDEN]);
                    }
                }
            }
            if !last {
                x = outputs;
            }
        }
        Ok(h.chunks_exact(HIDDEN)
            .map(|state| {
                let mut e: Vec<f32> = self
                    .linear
                    .chunks_exact(HIDDEN)
                    .zip(&self.linear_b)
                    .map(|(row, b)| {
                        (row.iter().zip(state).map(|(w, s)| w * s).sum::<f32>() + b).max(0.0)
                    })
                    .collect();
                let norm = e.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                e.iter_mut().for_each(|v| *v /= norm);
                e
            })
            .collect())
    }

    /// Embeddings of windows of samples (each [`WINDOW_SAMPLES`] long; shorter ones are
    /// zero-padded, longer ones cut).
    pub fn embed(&self, windows: &[&[f32]]) -> Result<Vec<Vec<f32>>, SpeakerError> {
        let frames = 1 + WINDOW_SAMPLES / HOP;
        let mut mels = Vec::with_capacity(windows.len() * frames * N_MELS);
        let mut padded = vec![0f32; WINDOW_SAMPLES];
        for w in windows {
            let n = w.len().min(WINDOW_SAMPLES);
            padded[..n].copy_from_slice(&w[..n]);
            padded[n..].fill(0.0);
            mels.extend(self.mel.frames(&padded));
        }
        self.embed_mels(&mels, windows.len(), frames)
    }
}

/// Cosine similarity of two embeddings.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_of_a_range_equal_the_same_frames_of_the_whole() {
        let m = SpeakerMel::new();
        let x: Vec<f32> = (0..16_123)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let whole = m.frames(&x);
        let s: &[f32] = &x;
        assert_eq!(m.frames_of(&s, 0..whole.len() / N_MELS).unwrap(), whole);
        let part = m.frames_of(&s, 37..90).unwrap();
        assert_eq!(part, whole[37 * N_MELS..90 * N_MELS]);
    }

    #[test]
    fn a_window_has_161_frames_of_40_mels_and_silence_is_zero() {
        let m = SpeakerMel::new();
        let frames = m.frames(&vec![0.0; WINDOW_SAMPLES]);
        assert_eq!(frames.len(), 161 * N_MELS);
        assert!(frames.iter().all(|&v| v == 0.0));
        // A 1-kHz tone puts its power in the mel bins around 1 kHz, not at the edges.
        let tone: Vec<f32> = (0..WINDOW_SAMPLES)
            .map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 16_000.0).sin())
            .collect();
        let f = m.frames(&tone);
        let mid = &f[80 * N_MELS..81 * N_MELS];
        let peak = mid
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .unwrap_or(0);
        assert!((10..25).contains(&peak), "peak in mel bin {peak}");
    }

    #[test]
    fn a_missing_model_is_a_clear_error() {
        let e = SpeakerEncoder::load(Path::new("/nonexistent/ge2e.safetensors"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("models/fetch.py ge2e"), "{e}");
    }
}
