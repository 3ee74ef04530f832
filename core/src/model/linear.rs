//! A decoder projection, f32 or int8 (`--precision q8`). In f32, inputs of a few rows (decoder
//! steps) take the weight-streaming [`RowMatmul`] and longer ones (a prompt's prefill) candle's
//! GEMM. In q8 every input takes [`RowMatmul`] over int8 weights (groups of 32 with an f32
//! scale, as GGML's Q8_0, quantized at load): a step reads a quarter of the f32 bytes, once for
//! all the sequences of a batched step. (candle's own Q8_0 matmul re-reads the weights for every
//! row and quantizes the activations too.)

use candle_core::{Module, Tensor};
use candle_nn::Linear;

use super::rowmatmul::{self, RowMatmul};

/// Inputs with at most this many rows take [`RowMatmul`] (f32 precision).
pub const ROW_KERNEL_MAX_ROWS: usize = 32;

/// Numeric precision of the decoder's weights.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum Precision {
    #[default]
    F32,
    /// Decoder weights as 8-bit blocks of 32 with one scale each, quantized at load; where the
    /// CPU has AMX, the encoder and cross-attention keys/values in bf16 (see `amx`).
    Q8,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Q8 => "q8",
        }
    }
}

impl TryFrom<String> for Precision {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(Precision::F32),
            "q8" | "q8_0" | "int8" => Ok(Precision::Q8),
            other => Err(format!("unknown precision `{other}` (expected f32 or q8)")),
        }
    }
}

pub enum Proj {
    /// `dense` is the f32 weight for candle's GEMM, kept only when fp16 cannot hold the
    /// weights exactly; else a long input's GEMM gets them from `rows` per call (the same f32
    /// values: a few milliseconds per window's prompt, and base holds 100 MB less).
    F32 {
        dense: Option<Linear>,
        rows: RowMatmul,
    },
    Q8(RowMatmul),
}

impl Proj {
    pub fn new(l: Linear, precision: Precision) -> candle_core::Result<Self> {
        Ok(match precision {
            Precision::F32 => {
                let rows = rowmatmul::from_tensors(l.weight(), l.bias())?;
                Proj::F32 {
                    dense: (!rows.is_f16()).then_some(l),
                    rows,
                }
            }
            Precision::Q8 => Proj::Q8(rowmatmul::quantized_from_tensors(l.weight(), l.bias())?),
        })
    }

    /// `x` `(…, inp)` → `(…, out)`. `row_kernel` sends every input to [`RowMatmul`], whose
    /// result for a row does not depend on the other rows (candle's GEMM blocks its sums by the
    /// matrix's size): the alignment pass uses it so that batched equals alone.
    pub fn forward_with(&self, x: &Tensor, row_kernel: bool) -> candle_core::Result<Tensor> {
        match self {
            Proj::F32 { dense, rows } => match small_rows(x, row_kernel)? {
                Some((data, n)) => {
                    let mut dims = x.dims().to_vec();
                    if let Some(last) = dims.last_mut() {
                        *last = rows.out_features();
                    }
                    Tensor::from_vec(rows.forward(&data, n), dims, x.device())
                }
                None => match dense {
                    Some(dense) => dense.forward(x),
                    None => dense_from_rows(rows, x.device())?.forward(x),
                },
            },
            Proj::Q8(rows) => {
                let inp = x.dims().last().copied().unwrap_or(0);
                let n = x.elem_count() / inp.max(1);
                let data = x.flatten_all()?.to_vec1::<f32>()?;
                let mut dims = x.dims().to_vec();
                if let Some(last) = dims.last_mut() {
                    *last = rows.out_features();
                }
                Tensor::from_vec(rows.forward(&data, n), dims, x.device())
            }
        }
    }
}

/// A `Linear` with `rows`' fp16 weights in f32, for one GEMM.
fn dense_from_rows(rows: &RowMatmul, device: &candle_core::Device) -> candle_core::Result<Linear> {
    let (out, inp) = (rows.out_features(), rows.in_features());
    let w = rows
        .f16_weights_as_f32()
        .ok_or_else(|| candle_core::Error::Msg("weights are not fp16".into()))?;
    let b = rows
        .bias()
        .map(|b| Tensor::from_slice(b, out, device))
        .transpose()?;
    Ok(Linear::new(Tensor::from_vec(w, (out, inp), device)?, b))
}

/// The rows of `x` (`(…, inp)`) as plain memory when there are few enough for [`RowMatmul`] and
/// they live on the CPU as f32; `None` sends the input to candle's GEMM.
/// `any_count`: however many rows there are.
pub fn small_rows(x: &Tensor, any_count: bool) -> candle_core::Result<Option<(Vec<f32>, usize)>> {
    if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 || x.rank() == 0 {
        return Ok(None);
    }
    let inp = x.dims()[x.rank() - 1];
    let n = x.elem_count() / inp.max(1);
    if n == 0 || (n > ROW_KERNEL_MAX_ROWS && !any_count) {
        return Ok(None);
    }
    Ok(Some((x.flatten_all()?.to_vec1::<f32>()?, n)))
}
