//! Silero VAD v6, written out in Rust from its ONNX graph (`silero_vad_v6.onnx`, as faster-whisper
//! 1.2.1 ships it), with the weights read from that file:
//!
//! ```text
//! frame: 64 samples of context + 512 new samples (32 ms at 16 kHz)
//!   → reflect-pad 128 both sides → STFT as a conv1d (258 filters of 256, hop 128), first frame
//!     dropped → magnitude of 129 bins × 4 frames
//!   → conv 129→128 (k3) ReLU → conv 128→64 (k3, stride 2) ReLU → conv 64→64 (k3, stride 2) ReLU
//!   → conv 64→128 (k3) ReLU → one 128-vector per frame
//!   → LSTM(128) across frames (the frames are its time axis) → ReLU → linear 128→1 → sigmoid
//! ```
//!
//! Everything up to the LSTM is independent per frame, so frames go through it in batches as
//! matrix products (candle's CPU matmul); only the LSTM's recurrent half runs frame by frame.

use std::path::Path;

use candle_core::{Device, Tensor};

use super::onnx::{self, FloatTensor};
use super::VadError;
use crate::audio::spill::{ForwardReader, Samples};

/// Samples per VAD frame at 16 kHz.
pub const FRAME: usize = 512;
/// Samples of the previous frame each frame sees.
pub const CONTEXT: usize = 64;
const INPUT: usize = FRAME + CONTEXT; // 576
const PAD: usize = 128; // reflect padding of the STFT input
const N_FFT: usize = 256;
const HOP: usize = 128;
const BINS: usize = N_FFT / 2 + 1; // 129
const T0: usize = 4; // STFT frames kept per VAD frame
const HIDDEN: usize = 128;
/// The LSTM state is restarted after this many frames (10 s, `PASSAGE_GAP_S`) in a row without speech (below
/// [`QUIET_BELOW`]), and where the gate skipped frames. Over minutes of steady noise the recurrent state of
/// a never-restarted Silero drifts and the probability creeps up to ~0.5-0.7 (white noise at
/// -40 dBFS: 0.14 after one minute, 0.55 after four), so noise turns into "speech" that Whisper
/// fills with dots or made-up text (the same drift reported in snakers4/silero-vad#725). A restart
/// inside a long non-speech stretch returns the model to the state it was trained from and costs
/// no speech onset; speech with pauses shorter than 10 s sees exactly faster-whisper's numbers.
const RESET_AFTER_QUIET: usize = 313;
/// Speech probability under which a frame counts toward [`RESET_AFTER_QUIET`] (faster-whisper's
/// default `neg_threshold`).
const QUIET_BELOW: f32 = 0.35;
/// Frames per batch through the convolutional front (bounds memory: ~20 MB of im2col rows).
const BATCH: usize = 2048;

pub struct SileroVad {
    /// STFT basis as a `(256, 258)` right-hand matrix.
    basis_t: Tensor,
    /// Convolutions as `(k·cin, cout)` right-hand matrices, row index `k*cin + c`.
    convs: [Conv; 4],
    /// LSTM input weights `(128, 512)` (gates i, o, f, c), summed biases, recurrent weights
    /// transposed `[j][gate row]` for an axpy per hidden unit.
    w_ih_t: Tensor,
    bias: Vec<f32>,
    w_hh_t: Vec<f32>,
    out_w: Vec<f32>,
    out_b: f32,
}

struct Conv {
    w: Tensor,
    b: Vec<f32>,
    cin: usize,
    cout: usize,
}

fn take(
    map: &mut std::collections::HashMap<String, FloatTensor>,
    name: &str,
    dims: &[usize],
) -> Result<Vec<f32>, VadError> {
    let t = map
        .remove(name)
        .ok_or_else(|| VadError::Model(format!("tensor `{name}` is missing")))?;
    if t.dims != dims {
        return Err(VadError::Model(format!(
            "tensor `{name}` has shape {:?}, expected {dims:?}",
            t.dims
        )));
    }
    Ok(t.data)
}

fn matrix(data: Vec<f32>, rows: usize, cols: usize) -> Result<Tensor, VadError> {
    Ok(Tensor::from_vec(data, (rows, cols), &Device::Cpu)?)
}

impl SileroVad {
    pub fn load(path: &Path) -> Result<Self, VadError> {
        let bytes = std::fs::read(path).map_err(|e| VadError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::from_onnx(&bytes)
    }

    pub fn from_onnx(bytes: &[u8]) -> Result<Self, VadError> {
        let mut m = onnx::float_initializers(bytes)?;
        let basis = take(
            &mut m,
            "encoder.feature_extractor.forward_basis_buffer",
            &[2 * BINS, 1, N_FFT],
        )?;
        let mut basis_t = vec![0f32; N_FFT * 2 * BINS];
        for c in 0..2 * BINS {
            for k in 0..N_FFT {
                basis_t[k * 2 * BINS + c] = basis[c * N_FFT + k];
            }
        }
        let mut conv = |i: usize, cin: usize, cout: usize| -> Result<Conv, VadError> {
            let w = take(
                &mut m,
                &format!("encoder.conv_layers.{i}.weight"),
                &[cout, cin, 3],
            )?;
            let b = take(&mut m, &format!("encoder.conv_layers.{i}.bias"), &[cout])?;
            let mut wt = vec![0f32; 3 * cin * cout];
            for o in 0..cout {
                for c in 0..cin {
                    for k in 0..3 {
                        wt[(k * cin + c) * cout + o] = w[(o * cin + c) * 3 + k];
                    }
                }
            }
            Ok(Conv {
                w: matrix(wt, 3 * cin, cout)?,
                b,
                cin,
                cout,
            })
        };
        let convs = [
            conv(0, BINS, 128)?,
            conv(1, 128, 64)?,
            conv(2, 64, 64)?,
            conv(3, 64, 128)?,
        ];
        let w_ih = take(&mut m, "onnx::LSTM_209", &[1, 4 * HIDDEN, HIDDEN])?;
        let w_hh = take(&mut m, "onnx::LSTM_210", &[1, 4 * HIDDEN, HIDDEN])?;
        let b = take(&mut m, "onnx::LSTM_211", &[1, 8 * HIDDEN])?;
        let transpose = |w: &[f32]| {
            let mut t = vec![0f32; 4 * HIDDEN * HIDDEN];
            for g in 0..4 * HIDDEN {
                for j in 0..HIDDEN {
                    t[j * 4 * HIDDEN + g] = w[g * HIDDEN + j];
                }
            }
            t
        };
        let bias = (0..4 * HIDDEN).map(|g| b[g] + b[4 * HIDDEN + g]).collect();
        let out_w = take(&mut m, "decoder.conv1d.weight", &[1, HIDDEN, 1])?;
        let out_b = take(&mut m, "decoder.conv1d.bias", &[1])?[0];
        Ok(Self {
            basis_t: matrix(basis_t, N_FFT, 2 * BINS)?,
            convs,
            w_ih_t: matrix(transpose(&w_ih), HIDDEN, 4 * HIDDEN)?,
            bias,
            w_hh_t: transpose(&w_hh),
            out_w,
            out_b,
        })
    }

    /// One speech probability per 512-sample frame of `audio`, as faster-whisper computes them:
    /// the audio is zero-padded to whole frames (a whole extra frame when it already is), the last
    /// 64 samples of the padded audio are zeroed (faster-whisper's context set-up writes through a
    /// view into the audio), and each frame sees the last 64 samples of the one before. Frames for
    /// which `skip` is true are not run (probability 0); the LSTM state restarts after them and after
    /// 10 s without speech ([`RESET_AFTER_QUIET`]).
    pub fn speech_probs(
        &self,
        audio: &dyn Samples,
        skip: impl Fn(usize) -> bool,
    ) -> Result<Vec<f32>, VadError> {
        let n_frames = audio.len() / FRAME + 1;
        let padded_len = n_frames * FRAME;
        let reader = ForwardReader::new(audio, CONTEXT);
        let sample = |i: usize| -> f32 {
            if i >= padded_len - CONTEXT {
                0.0
            } else {
                reader.get(i)
            }
        };
        let mut probs = vec![0f32; n_frames];
        let run: Vec<usize> = (0..n_frames).filter(|&f| !skip(f)).collect();
        let mut rec = Recurrent::default();
        let mut next = 0usize;
        for batch in run.chunks(BATCH) {
            let feats = self.features(batch, &sample)?;
            let gates_in = mm(feats, batch.len(), HIDDEN, &self.w_ih_t)?;
            for (&f, gi) in batch.iter().zip(gates_in.chunks_exact(4 * HIDDEN)) {
                // A gap is a gated run of 10 s or more (the state restarts before its last
                // WARM_UP frames, which are run).
                let gap = f > next;
                next = f + 1;
                probs[f] = rec.step(self, gi, gap);
            }
        }
        reader.finish()?;
        Ok(probs)
    }

    /// The convolutional front for a batch of frames: `(n, 128)` row-major.
    fn features(
        &self,
        frames: &[usize],
        sample: &dyn Fn(usize) -> f32,
    ) -> Result<Vec<f32>, VadError> {
        let n = frames.len();
        // STFT rows: (frame, t) for t in 1..5 of the reflect-padded 832-sample input.
        let mut patches = vec![0f32; n * T0 * N_FFT];
        let mut input = [0f32; INPUT];
        for (r, &f) in frames.iter().enumerate() {
            let start = f * FRAME;
            for (i, x) in input.iter_mut().enumerate() {
                // context: the 64 samples before the frame (zeros before the audio starts)
                *x = (start + i).checked_sub(CONTEXT).map_or(0.0, sample);
            }
            for t in 0..T0 {
                let row = &mut patches[(r * T0 + t) * N_FFT..][..N_FFT];
                for (k, v) in row.iter_mut().enumerate() {
                    // position in the padded input is (t+1)*HOP + k; in `input`, minus PAD
                    let x = (t + 1) * HOP + k - PAD;
                    let x = if x >= INPUT { 2 * (INPUT - 1) - x } else { x };
                    *v = input[x];
                }
            }
        }
        let spec = mm(patches, n * T0, N_FFT, &self.basis_t)?;
        let mut mag = vec![0f32; n * T0 * BINS];
        for (m, s) in mag.chunks_exact_mut(BINS).zip(spec.chunks_exact(2 * BINS)) {
            for (b, v) in m.iter_mut().enumerate() {
                *v = (s[b] * s[b] + s[BINS + b] * s[BINS + b]).sqrt();
            }
        }
        let x = self.conv(&self.convs[0], &mag, n, T0, 1)?;
        let x = self.conv(&self.convs[1], &x, n, T0, 2)?;
        let x = self.conv(&self.convs[2], &x, n, T0 / 2, 2)?;
        self.conv(&self.convs[3], &x, n, 1, 1)
    }

    /// conv1d (kernel 3, padding 1) + bias + ReLU over `(n, t_in, cin)` channel-last input.
    fn conv(
        &self,
        c: &Conv,
        x: &[f32],
        n: usize,
        t_in: usize,
        stride: usize,
    ) -> Result<Vec<f32>, VadError> {
        let t_out = (t_in - 1) / stride + 1;
        let mut cols = vec![0f32; n * t_out * 3 * c.cin];
        for b in 0..n {
            for to in 0..t_out {
                let row = &mut cols[(b * t_out + to) * 3 * c.cin..][..3 * c.cin];
                for k in 0..3 {
                    let ti = (to * stride + k).checked_sub(1).filter(|&ti| ti < t_in);
                    if let Some(ti) = ti {
                        row[k * c.cin..(k + 1) * c.cin]
                            .copy_from_slice(&x[(b * t_in + ti) * c.cin..][..c.cin]);
                    }
                }
            }
        }
        let mut y = mm(cols, n * t_out, 3 * c.cin, &c.w)?;
        for r in y.chunks_exact_mut(c.cout) {
            for (v, b) in r.iter_mut().zip(&c.b) {
                *v = (*v + b).max(0.0);
            }
        }
        Ok(y)
    }

    /// One LSTM step from the frame's input-gate products `gi`; the frame's speech probability.
    fn step(&self, gi: &[f32], s: &mut LstmState, g: &mut [f32; 4 * HIDDEN]) -> f32 {
        {
            for ((g, a), b) in g.iter_mut().zip(gi).zip(&self.bias) {
                *g = a + b;
            }
            for (j, &hj) in s.h.iter().enumerate() {
                let w = &self.w_hh_t[j * 4 * HIDDEN..][..4 * HIDDEN];
                for (g, w) in g.iter_mut().zip(w) {
                    *g += hj * w;
                }
            }
            let mut logit = self.out_b;
            for u in 0..HIDDEN {
                let i = sigmoid(g[u]);
                let o = sigmoid(g[HIDDEN + u]);
                let f = sigmoid(g[2 * HIDDEN + u]);
                let cand = g[3 * HIDDEN + u].tanh();
                s.c[u] = f * s.c[u] + i * cand;
                s.h[u] = o * s.c[u].tanh();
                logit += s.h[u].max(0.0) * self.out_w[u];
            }
            sigmoid(logit)
        }
    }
}

/// The recurrent half's state across frames, with the restart rule ([`RESET_AFTER_QUIET`]).
#[derive(Default)]
struct Recurrent {
    lstm: LstmState,
    quiet: usize,
    gates: Gates,
}

struct Gates([f32; 4 * HIDDEN]);

impl Default for Gates {
    fn default() -> Self {
        Self([0.0; 4 * HIDDEN])
    }
}

impl Recurrent {
    /// The next frame's speech probability from its input-gate products `gi`; `restart`: start
    /// from a fresh state first.
    fn step(&mut self, model: &SileroVad, gi: &[f32], restart: bool) -> f32 {
        if restart || self.quiet >= RESET_AFTER_QUIET {
            self.lstm = LstmState::default();
            self.quiet = 0;
        }
        let p = model.step(gi, &mut self.lstm, &mut self.gates.0);
        self.quiet = if p < QUIET_BELOW { self.quiet + 1 } else { 0 };
        p
    }
}

/// Silero over audio that arrives in pieces (a live stream at 16 kHz): each call returns the
/// probabilities of the frames it completed. Each frame sees the 64 samples before it, as in
/// [`SileroVad::speech_probs`]; the state restarts after 10 s without speech.
pub struct SileroStream {
    rec: Recurrent,
    /// The last 64 samples of the previous frame, then samples not yet a whole frame.
    buf: Vec<f32>,
}

impl Default for SileroStream {
    fn default() -> Self {
        Self {
            rec: Recurrent::default(),
            buf: vec![0.0; CONTEXT],
        }
    }
}

impl SileroStream {
    pub fn push(&mut self, model: &SileroVad, samples: &[f32]) -> Result<Vec<f32>, VadError> {
        self.buf.extend_from_slice(samples);
        let n = (self.buf.len() - CONTEXT) / FRAME;
        if n == 0 {
            return Ok(Vec::new());
        }
        // Frame k (from 1) starts at k * FRAME in `features`' numbering; its samples are
        // buf[CONTEXT + (k-1) * FRAME ..], its context the 64 before.
        let buf = &self.buf;
        let sample = |g: usize| -> f32 { buf.get(g + CONTEXT - FRAME).copied().unwrap_or(0.0) };
        let frames: Vec<usize> = (1..=n).collect();
        let feats = model.features(&frames, &sample)?;
        let gates_in = mm(feats, n, HIDDEN, &model.w_ih_t)?;
        let probs = gates_in
            .chunks_exact(4 * HIDDEN)
            .map(|gi| self.rec.step(model, gi, false))
            .collect();
        self.buf.drain(..n * FRAME);
        Ok(probs)
    }
}

struct LstmState {
    h: [f32; HIDDEN],
    c: [f32; HIDDEN],
}

impl Default for LstmState {
    fn default() -> Self {
        Self {
            h: [0.0; HIDDEN],
            c: [0.0; HIDDEN],
        }
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `(rows, k) × w(k, n)` on candle's CPU matmul.
fn mm(a: Vec<f32>, rows: usize, k: usize, w: &Tensor) -> Result<Vec<f32>, VadError> {
    let a = Tensor::from_vec(a, (rows, k), &Device::Cpu)?;
    Ok(a.matmul(w)?.flatten_all()?.to_vec1::<f32>()?)
}
