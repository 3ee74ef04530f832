//! Whisper's audio encoder: two convolutions, sinusoidal positions, pre-norm transformer blocks.
//! Takes a batch of log-mel windows; every tensor keeps the batch dimension.

use candle_core::{Module, Tensor};
use candle_nn::{LayerNorm, Linear};
use rayon::prelude::*;

use super::weights::Weights;
use super::{AttentionMath, ModelDims, ModelError, Numerics};

const LN_EPS: f64 = 1e-5;

pub(super) fn linear(
    w: &Weights,
    name: &str,
    out: usize,
    inp: usize,
) -> Result<Linear, ModelError> {
    let weight = w.take(&format!("{name}.weight"), &[out, inp])?;
    let bias = w.bias_or_zeros(&format!("{name}.bias"), out, weight.device())?;
    Ok(Linear::new(weight, Some(bias)))
}

pub(super) fn layer_norm(w: &Weights, name: &str, n: usize) -> Result<LayerNorm, ModelError> {
    Ok(LayerNorm::new(
        w.take(&format!("{name}.weight"), &[n])?,
        w.take(&format!("{name}.bias"), &[n])?,
        LN_EPS,
    ))
}

/// q, k and v fused into one projection (one matmul instead of three); the query rows are
/// pre-multiplied by head_dim^-0.5 so attention needs no separate scaling op.
pub(super) fn fused_qkv(
    w: &Weights,
    prefix: &str,
    d: usize,
    n_head: usize,
) -> Result<Linear, ModelError> {
    let dev = w.get(&format!("{prefix}.q_proj.weight"))?.device().clone();
    let scale = ((d / n_head) as f64).powf(-0.5);
    let q = linear(w, &format!("{prefix}.q_proj"), d, d)?;
    let k = linear(w, &format!("{prefix}.k_proj"), d, d)?;
    let v = linear(w, &format!("{prefix}.v_proj"), d, d)?;
    let zeros = candle_core::Tensor::zeros(d, candle_core::DType::F32, &dev)?;
    let bias = |l: &Linear| l.bias().cloned().unwrap_or_else(|| zeros.clone());
    let weight = Tensor::cat(
        &[
            (q.weight() * scale)?,
            k.weight().clone(),
            v.weight().clone(),
        ],
        0,
    )?;
    let bias = Tensor::cat(&[(bias(&q) * scale)?, bias(&k), bias(&v)], 0)?;
    Ok(Linear::new(weight, Some(bias)))
}

/// How the encoder's 1500-row projections (and the decoder's cross-attention keys/values)
/// compute. `Whisper::from_weights` picks: f32, or for q8 the fastest lossy path the CPU has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderMath {
    F32,
    /// bf16 on Intel AMX tiles (see `amx`).
    AmxBf16,
    /// Integer arithmetic (see `whisperd_kernels::intgemm`): 10-bit weights and 16-bit
    /// activations on AVX2, 8-bit weights and activations on AVX-512 VNNI; the self-attention
    /// in bf16 where the CPU has AVX-512 BF16 (as AMX's is).
    Int8Avx2,
}

/// A projection over a window's 1500 rows (encoder layers, the decoder's cross-attention
/// keys/values), as [`EncoderMath`] says.
pub(super) enum Proj {
    F32(Linear),
    Amx(super::bf16::Linear),
    Int(super::intgemm::IntLinear),
}

impl Proj {
    pub(super) fn new(l: Linear, math: EncoderMath) -> candle_core::Result<Self> {
        Ok(match math {
            EncoderMath::F32 => Proj::F32(l),
            EncoderMath::AmxBf16 => Proj::Amx(super::bf16::Linear::new(&l)?),
            EncoderMath::Int8Avx2 => Proj::Int(super::intgemm::IntLinear::new(&l)?),
        })
    }

    /// [`Self::new`], but never below ten-bit integers: for the first layer, whose error every
    /// later one carries. Its 240 inputs (3 frames × 80 mel bins) make it ~3 % of the encoder's
    /// products, and in 8 bits it was a third of the q8 encoder's difference from f32 (relative
    /// L2 on jfk, tiny.en: 5.3 % with it in 8 bits, 3.6 % in 10).
    pub(super) fn new_first(l: Linear, math: EncoderMath) -> candle_core::Result<Self> {
        Ok(match math {
            EncoderMath::Int8Avx2 => Proj::Int(super::intgemm::IntLinear::new_as(
                &l,
                super::intgemm::WeightBits::Ten,
            )?),
            _ => Self::new(l, math)?,
        })
    }

    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Proj::F32(l) => l.forward(x),
            Proj::Amx(l) => l.forward(x),
            Proj::Int(l) => l.forward(x),
        }
    }
}

/// Multi-head attention over one sequence of the encoder.
struct SelfAttention {
    qkv: Proj,
    out: Proj,
    n_head: usize,
    math: AttentionMath,
}

impl SelfAttention {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.math == AttentionMath::Bf16 {
            let qkv = self.qkv.forward(x)?;
            let y = qkv.apply_op1_no_bwd(&super::bf16::Attention { heads: self.n_head })?;
            return self.out.forward(&y);
        }
        let integer = self.math == AttentionMath::Int16;
        if (self.math == AttentionMath::F32Fused || integer) && x.device().is_cpu() {
            let qkv = self.qkv.forward(x)?.contiguous()?;
            let y = qkv.apply_op1_no_bwd(&super::attention::Attention {
                heads: self.n_head,
                integer,
            })?;
            return self.out.forward(&y);
        }
        self.out
            .forward(&unfused_attention(&self.qkv.forward(x)?, self.n_head)?)
    }
}

/// Attention in candle ops, for CPUs without AVX2 (and the reference the fused kernels are
/// tested against): `qkv` `(batch, t, 3·d)` → `(batch, t, d)`.
pub(super) fn unfused_attention(qkv: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (b, t, d3) = qkv.dims3()?;
    let d = d3 / 3;
    let dh = d / n_head;
    let qkv = qkv
        .reshape((b, t, 3, n_head, dh))?
        .permute((2, 0, 3, 1, 4))?;
    let q = qkv.get(0)?.contiguous()?;
    let k = qkv.get(1)?.contiguous()?;
    let v = qkv.get(2)?.contiguous()?;
    // One head at a time: the (T × T) score matrix of all heads at once is 54 MB per window
    // for T = 1500; per head it is 9 MB, which keeps peak memory (and cache misses) down.
    let mut heads = Vec::with_capacity(n_head);
    for h in 0..n_head {
        let (qh, kh, vh) = (q.narrow(1, h, 1)?, k.narrow(1, h, 1)?, v.narrow(1, h, 1)?);
        let att = super::kernels::softmax_last_dim_owned(qh.matmul(&kh.t()?)?)?;
        heads.push(att.matmul(&vh)?);
    }
    Tensor::cat(&heads, 1)?.transpose(1, 2)?.reshape((b, t, d))
}

/// Whisper's kernel-3, padding-1 convolution over time, as one matmul: each output frame's input
/// is the three input frames around it side by side ("im2col"), so the convolutions run on the
/// same GEMM (or AMX) path as the linear layers instead of candle's direct conv1d (which
/// reached ~60–110 GFLOP/s here, a fifth of the encoder's time). Inputs and outputs are
/// time-major `(batch, frames, channels)`, the layout the transformer blocks use.
struct Conv {
    /// Weight reordered to `(out, 3 · in)`, kernel tap major, to match the unfolded rows.
    proj: Proj,
    cin: usize,
    stride: usize,
}

impl Conv {
    fn new(
        w: &Weights,
        name: &str,
        cout: usize,
        cin: usize,
        stride: usize,
        math: EncoderMath,
    ) -> Result<Self, ModelError> {
        let weight = w.take(&format!("encoder.{name}.weight"), &[cout, cin, 3])?;
        let bias = w.take(&format!("encoder.{name}.bias"), &[cout])?;
        Ok(Self::from_tensors(
            &weight,
            bias,
            stride,
            math,
            name == "conv1",
        )?)
    }

    /// `weight` `(out, in, 3)` as PyTorch stores it; `first`: the encoder's first layer (see
    /// [`Proj::new_first`]).
    fn from_tensors(
        weight: &Tensor,
        bias: Tensor,
        stride: usize,
        math: EncoderMath,
        first: bool,
    ) -> candle_core::Result<Self> {
        let (cout, cin, _) = weight.dims3()?;
        let weight = weight
            .permute((0, 2, 1))?
            .contiguous()?
            .reshape((cout, 3 * cin))?;
        let l = Linear::new(weight, Some(bias));
        Ok(Self {
            proj: if first {
                Proj::new_first(l, math)?
            } else {
                Proj::new(l, math)?
            },
            cin,
            stride,
        })
    }

    /// `(batch, frames, cin)` → `(batch, ⌈frames / stride⌉, cout)`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, frames, cin) = x.dims3()?;
        if cin != self.cin {
            candle_core::bail!("convolution expects {} channels, got {cin}", self.cin);
        }
        let out_frames = (frames - 1) / self.stride + 1;
        // Zero frame before, zero frames after (enough for every tap of the last output frame).
        let span = out_frames * self.stride;
        let after = span + 2 - frames - 1;
        let padded = Tensor::cat(
            &[
                &Tensor::zeros((b, 1, cin), x.dtype(), x.device())?,
                x,
                &Tensor::zeros((b, after, cin), x.dtype(), x.device())?,
            ],
            1,
        )?;
        // Tap k of output frame t is padded frame t·stride + k.
        let taps = (0..3)
            .map(|k| {
                let frames = padded.narrow(1, k, span)?;
                if self.stride == 1 {
                    Ok(frames)
                } else {
                    frames
                        .reshape((b, out_frames, self.stride, cin))?
                        .narrow(2, 0, 1)?
                        .squeeze(2)
                }
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let cols = Tensor::cat(&taps, 2)?;
        self.proj.forward(&cols)
    }
}

struct EncoderBlock {
    attn_ln: LayerNorm,
    attn: SelfAttention,
    mlp_ln: LayerNorm,
    fc1: Proj,
    fc2: Proj,
}

impl EncoderBlock {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = (x + self.attn.forward(&self.attn_ln.forward(x)?)?)?;
        // Whisper's GELU is the exact erf form.
        let h = super::kernels::gelu_erf_owned(self.fc1.forward(&self.mlp_ln.forward(&x)?)?)?;
        let h = self.fc2.forward(&h)?;
        x + h
    }
}

pub struct AudioEncoder {
    conv1: Conv,
    conv2: Conv,
    positions: Tensor,
    blocks: Vec<EncoderBlock>,
    ln_post: LayerNorm,
}

impl AudioEncoder {
    /// `math`: how the convolutions' and blocks' projections compute (the caller decides).
    pub fn new(w: &Weights, dims: &ModelDims, numerics: Numerics) -> Result<Self, ModelError> {
        let math = numerics.encoder;
        let d = dims.n_audio_state;
        let blocks = (0..dims.n_audio_layer)
            .map(|i| {
                let p = format!("encoder.layers.{i}");
                Ok(EncoderBlock {
                    attn_ln: layer_norm(w, &format!("{p}.self_attn_layer_norm"), d)?,
                    attn: SelfAttention {
                        qkv: Proj::new(
                            fused_qkv(w, &format!("{p}.self_attn"), d, dims.n_audio_head)?,
                            math,
                        )?,
                        out: Proj::new(linear(w, &format!("{p}.self_attn.out_proj"), d, d)?, math)?,
                        n_head: dims.n_audio_head,
                        math: numerics.attention,
                    },
                    mlp_ln: layer_norm(w, &format!("{p}.final_layer_norm"), d)?,
                    fc1: Proj::new(linear(w, &format!("{p}.fc1"), 4 * d, d)?, math)?,
                    fc2: Proj::new(linear(w, &format!("{p}.fc2"), d, 4 * d)?, math)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Self {
            conv1: Conv::new(w, "conv1", d, dims.n_mels, 1, math)?,
            conv2: Conv::new(w, "conv2", d, d, 2, math)?,
            positions: w.take("encoder.embed_positions.weight", &[dims.n_audio_ctx, d])?,
            blocks,
            ln_post: layer_norm(w, "encoder.layer_norm", d)?,
        })
    }

    /// `(batch, n_mels, 3000)` log-mel → `(batch, 1500, d_model)` audio features.
    pub fn forward(&self, mel: &Tensor) -> candle_core::Result<Tensor> {
        let b = mel.dim(0)?;
        if b > 1 && mel.device().is_cpu() {
            // On a CPU one stacked batch costs more per window than one window (91 vs 67 ms for
            // eight, q8): the 1500-row matmuls are compute-bound either way, and eight windows'
            // activations (74 MB for one MLP output) fall out of cache. Windows side by side,
            // each a nested task of the compute pool, fill the gaps each window's fork-joins
            // leave: 60 ms per window for eight (q8), 180 vs 238 ms (f32).
            let windows = (0..b)
                .into_par_iter()
                .map(|i| self.forward_batch(&mel.narrow(0, i, 1)?))
                .collect::<candle_core::Result<Vec<_>>>()?;
            return Tensor::cat(&windows, 0);
        }
        self.forward_batch(mel)
    }

    fn forward_batch(&self, mel: &Tensor) -> candle_core::Result<Tensor> {
        let x = super::kernels::gelu_erf_owned(self.conv1.forward(&mel.transpose(1, 2)?)?)?;
        let x = super::kernels::gelu_erf_owned(self.conv2.forward(&x)?)?;
        let t = x.dim(1)?;
        let mut x = x.broadcast_add(&self.positions.narrow(0, 0, t)?)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        self.ln_post.forward(&x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_max_abs_diff as max_abs_diff;
    use candle_core::{Device, Tensor};

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 2001) as f32 / 1000.0
                    - 1.0
            })
            .collect()
    }

    /// The unfolded convolution against candle's direct conv1d (Whisper's: kernel 3,
    /// padding 1), for both strides, odd and even lengths, a batch of two, on every
    /// [`EncoderMath`] this CPU runs.
    #[test]
    fn unfolded_conv_matches_conv1d() {
        let dev = Device::Cpu;
        let (cin, cout) = (80, 64);
        let weight = Tensor::from_vec(values(cout * cin * 3, 1), (cout, cin, 3), &dev).unwrap();
        let bias = Tensor::from_vec(values(cout, 2), cout, &dev).unwrap();
        for (stride, frames) in [(1, 37), (2, 37), (2, 40)] {
            let x = Tensor::from_vec(values(2 * cin * frames, 3), (2, cin, frames), &dev).unwrap();
            let want = x
                .conv1d(&weight, 1, stride, 1, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, cout, 1)).unwrap())
                .unwrap()
                .transpose(1, 2)
                .unwrap();
            let mut modes = vec![EncoderMath::F32];
            if super::super::bf16::amx_available() {
                modes.push(EncoderMath::AmxBf16);
            }
            if super::super::intgemm::available() {
                modes.push(EncoderMath::Int8Avx2);
            }
            for math in modes {
                let conv =
                    Conv::from_tensors(&weight, bias.clone(), stride, math, stride == 1).unwrap();
                let got = conv.forward(&x.transpose(1, 2).unwrap()).unwrap();
                assert_eq!(got.dims(), want.dims(), "stride {stride}, {frames} frames");
                let diff = max_abs_diff(&got, &want);
                // The first layer stays in ten bits where the CPU has bytes.
                let bits = match &conv.proj {
                    Proj::Int(l) => Some(l.bits()),
                    _ => None,
                };
                let eight = super::super::intgemm::WeightBits::Eight;
                let native = super::super::intgemm::WeightBits::for_tier(
                    whisperd_kernels::isa::Tier::best(),
                );
                if math == EncoderMath::Int8Avx2 {
                    let want = if stride == 1 {
                        super::super::intgemm::WeightBits::Ten
                    } else {
                        native
                    };
                    assert_eq!(bits, Some(want), "stride {stride}");
                }
                // f32: summation order only; AMX: inputs rounded to bf16 (8-bit mantissa) over
                // 240 terms; integers: weights to 1/1022 of their row's largest over 240 terms,
                // or in bytes weights and inputs to 1/254 and 1/255 of their ranges (a standard
                // deviation of ~0.03 here: 0.2 is ~7 of them).
                let bound = match math {
                    EncoderMath::F32 => 1e-4,
                    EncoderMath::AmxBf16 => 0.1,
                    EncoderMath::Int8Avx2 if bits == Some(eight) => 0.2,
                    EncoderMath::Int8Avx2 => 0.1,
                };
                assert!(
                    diff < bound,
                    "stride {stride}, {frames} frames, {math:?}: max diff {diff}"
                );
            }
        }
    }
}
