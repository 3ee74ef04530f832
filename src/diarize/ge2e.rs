//! The GE2E speaker encoder (Resemblyzer 0.1.4's `pretrained.pt`, converted once at fetch time
//! to `models/ge2e/ge2e.safetensors` by `models/fetch.py ge2e`): a window of 1.6 s of 16-kHz
//! audio → 40 mel powers per 10-ms frame (25-ms Hann window, no log) → a 3-layer LSTM of 256
//! → the last layer's final hidden state → linear 256 → ReLU → L2 norm: a 256-value voice
//! embedding, close (cosine) for the same speaker.
//!
//! Many windows run as one batch: each LSTM layer's input projection is one matrix product over
//! every frame of every window, and each time step one product over the batch.

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};

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
        let half = N_FFT as isize / 2;
        let n = samples.len();
        let n_frames = 1 + n / HOP;
        let mut out = Vec::with_capacity(n_frames * N_MELS);
        let mut work = self.frames.work();
        for f in 0..n_frames {
            let start = (f * HOP) as isize - half;
            let at = |i: usize| {
                let j = start + i as isize;
                if j >= 0 && (j as usize) < n {
                    samples[j as usize] as f64
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
    /// `(input, 4 * HIDDEN)`, gates in PyTorch's order: input, forget, cell, output.
    w_ih_t: Tensor,
    /// `(HIDDEN, 4 * HIDDEN)`.
    w_hh_t: Tensor,
    /// `b_ih + b_hh`, `(4 * HIDDEN,)`.
    bias: Tensor,
}

pub struct SpeakerEncoder {
    layers: Vec<LstmLayer>,
    /// `(HIDDEN, EMBEDDING)`.
    linear_t: Tensor,
    linear_b: Tensor,
    mel: SpeakerMel,
    device: Device,
}

impl SpeakerEncoder {
    /// Load `ge2e.safetensors` (see the module's header) onto the CPU.
    pub fn load(path: &Path) -> Result<Self, SpeakerError> {
        let device = Device::Cpu;
        let bad = |message: String| SpeakerError::Model {
            path: path.display().to_string(),
            message,
        };
        if !path.is_file() {
            return Err(bad("not found".into()));
        }
        let tensors = candle_core::safetensors::load(path, &device)
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
        let mut layers = Vec::with_capacity(LAYERS);
        for l in 0..LAYERS {
            let input = if l == 0 { N_MELS } else { HIDDEN };
            let w_ih = get(&format!("lstm.weight_ih_l{l}"), &[4 * HIDDEN, input])?;
            let w_hh = get(&format!("lstm.weight_hh_l{l}"), &[4 * HIDDEN, HIDDEN])?;
            let b_ih = get(&format!("lstm.bias_ih_l{l}"), &[4 * HIDDEN])?;
            let b_hh = get(&format!("lstm.bias_hh_l{l}"), &[4 * HIDDEN])?;
            layers.push(LstmLayer {
                w_ih_t: w_ih.t()?.contiguous()?,
                w_hh_t: w_hh.t()?.contiguous()?,
                bias: (b_ih + b_hh)?,
            });
        }
        let linear = get("linear.weight", &[EMBEDDING, HIDDEN])?;
        Ok(Self {
            layers,
            linear_t: linear.t()?.contiguous()?,
            linear_b: get("linear.bias", &[EMBEDDING])?,
            mel: SpeakerMel::new(),
            device,
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
        if windows == 0 {
            return Ok(Vec::new());
        }
        let mut x = Tensor::from_slice(mels, (windows * frames, N_MELS), &self.device)?;
        let mut h = Tensor::zeros((windows, HIDDEN), DType::F32, &self.device)?;
        for (l, layer) in self.layers.iter().enumerate() {
            // The last layer's outputs are not needed, only its final state.
            let last = l + 1 == self.layers.len();
            // Every frame's input projection at once: (windows·frames, 4·HIDDEN).
            let pre = x
                .matmul(&layer.w_ih_t)?
                .broadcast_add(&layer.bias)?
                .reshape((windows, frames, 4 * HIDDEN))?;
            h = Tensor::zeros((windows, HIDDEN), DType::F32, &self.device)?;
            let mut c = Tensor::zeros((windows, HIDDEN), DType::F32, &self.device)?;
            let mut outputs = Vec::with_capacity(if last { 0 } else { frames });
            for t in 0..frames {
                let gates = (pre.narrow(1, t, 1)?.squeeze(1)? + h.matmul(&layer.w_hh_t)?)?;
                let i = candle_nn::ops::sigmoid(&gates.narrow(1, 0, HIDDEN)?)?;
                let f = candle_nn::ops::sigmoid(&gates.narrow(1, HIDDEN, HIDDEN)?)?;
                let g = gates.narrow(1, 2 * HIDDEN, HIDDEN)?.tanh()?;
                let o = candle_nn::ops::sigmoid(&gates.narrow(1, 3 * HIDDEN, HIDDEN)?)?;
                c = ((f * &c)? + (i * g)?)?;
                h = (o * c.tanh()?)?;
                if !last {
                    outputs.push(h.clone());
                }
            }
            if !last {
                x = Tensor::stack(&outputs, 1)?.reshape((windows * frames, HIDDEN))?;
            }
        }
        let e = h
            .matmul(&self.linear_t)?
            .broadcast_add(&self.linear_b)?
            .relu()?;
        let norm = e
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?;
        let e = e.broadcast_div(&norm)?;
        Ok(e.to_vec2::<f32>()?)
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
