//! A decoder projection that is either f32 or Q8_0-quantized (`--precision q8`). Q8_0 pays off
//! for the decoder's one-row-per-step inputs; the encoder and the per-window cross-attention
//! keys/values (1500 rows, inner dimension 384) stay f32, where candle's Q8_0 kernel is slower.
//! In f32, inputs of a few rows (decoder steps) take the weight-streaming [`RowMatmul`] and
//! longer ones (a prompt's prefill) candle's GEMM.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Tensor};
use candle_nn::Linear;

use super::rowmatmul::RowMatmul;

/// Inputs with at most this many rows take [`RowMatmul`] (f32 precision).
pub const ROW_KERNEL_MAX_ROWS: usize = 32;

/// Numeric precision of the decoder's weights.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// 8-bit blocks of 32 weights with one f16 scale each (GGML Q8_0), quantized at load.
    Q8,
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
    F32 {
        dense: Linear,
        rows: RowMatmul,
    },
    Q8 {
        weight: QMatMul,
        bias: Option<Tensor>,
    },
}

impl Proj {
    pub fn new(l: Linear, precision: Precision) -> candle_core::Result<Self> {
        Ok(match precision {
            Precision::F32 => Proj::F32 {
                rows: RowMatmul::from_tensors(l.weight(), l.bias())?,
                dense: l,
            },
            Precision::Q8 => Proj::Q8 {
                weight: quantize(l.weight())?,
                bias: l.bias().cloned(),
            },
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Proj::F32 { dense, rows } => match small_rows(x)? {
                Some((data, n)) => {
                    let mut dims = x.dims().to_vec();
                    if let Some(last) = dims.last_mut() {
                        *last = rows.out_features();
                    }
                    Tensor::from_vec(rows.forward(&data, n), dims, x.device())
                }
                None => dense.forward(x),
            },
            Proj::Q8 { weight, bias } => {
                let y = weight.forward(x)?;
                match bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
        }
    }
}

/// Q8_0 matmul of an `(out, in)` f32 weight.
pub fn quantize(weight: &Tensor) -> candle_core::Result<QMatMul> {
    QMatMul::from_qtensor(QTensor::quantize(weight, GgmlDType::Q8_0)?)
}

/// The rows of `x` (`(…, inp)`) as plain memory when there are few enough for [`RowMatmul`] and
/// they live on the CPU as f32; `None` sends the input to candle's GEMM.
pub fn small_rows(x: &Tensor) -> candle_core::Result<Option<(Vec<f32>, usize)>> {
    if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 || x.rank() == 0 {
        return Ok(None);
    }
    let inp = x.dims()[x.rank() - 1];
    let n = x.elem_count() / inp.max(1);
    if n == 0 || n > ROW_KERNEL_MAX_ROWS {
        return Ok(None);
    }
    Ok(Some((x.flatten_all()?.to_vec1::<f32>()?, n)))
}
