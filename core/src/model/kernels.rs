//! candle glue for the elementwise kernels of `whisperd_kernels::elementwise`: row softmax and
//! the erf GELU as in-place ops on f32 CPU tensors. Non-CPU devices and non-f32 tensors take
//! candle's own ops.

use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Tensor};

use whisperd_kernels::elementwise;
pub use whisperd_kernels::query::QueryAttention;
pub use whisperd_kernels::{log_sum_exp, max_value};

/// `softmax` over the last dimension, computed in place: `x` must be a tensor the caller just
/// computed and holds alone (a matmul's output), never a view of weights or of a cache.
pub fn softmax_last_dim_owned(x: Tensor) -> candle_core::Result<Tensor> {
    if takes_fast_path(&x) {
        x.inplace_op1(&SoftmaxLastDim)?;
        Ok(x)
    } else {
        candle_nn::ops::softmax_last_dim(&x)
    }
}

/// `0.5·x·(1 + erf(x/√2))`, Whisper's GELU, in place; the same ownership rule as
/// [`softmax_last_dim_owned`].
pub fn gelu_erf_owned(x: Tensor) -> candle_core::Result<Tensor> {
    if takes_fast_path(&x) {
        x.inplace_op1(&GeluErf)?;
        Ok(x)
    } else {
        x.gelu_erf()
    }
}

fn takes_fast_path(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && x.is_contiguous()
}

fn contiguous_f32<'a>(s: &'a mut CpuStorage, l: &Layout) -> candle_core::Result<&'a mut [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("kernel needs an f32 tensor")
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&mut data[start..end]),
        None => candle_core::bail!("kernel needs a contiguous tensor"),
    }
}

struct SoftmaxLastDim;

impl InplaceOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "whisperd-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let n = l.dims().last().copied().unwrap_or(1).max(1);
        elementwise::softmax_rows_par(contiguous_f32(s, l)?, n);
        Ok(())
    }
}

struct GeluErf;

impl InplaceOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "whisperd-gelu-erf"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        elementwise::gelu_par(contiguous_f32(s, l)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_match_candle() -> candle_core::Result<()> {
        let dev = candle_core::Device::Cpu;
        // Enough rows to take the threaded path, a width that is not a multiple of 16, and a
        // masked row.
        let mut v: Vec<f32> = (0..300 * 37)
            .map(|i| ((i * 7919) % 1000) as f32 / 50.0 - 10.0)
            .collect();
        for x in &mut v[37..37 + 20] {
            *x = f32::NEG_INFINITY;
        }
        let x = Tensor::from_vec(v, (300, 37), &dev)?;
        let theirs = candle_nn::ops::softmax_last_dim(&x)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let ours = softmax_last_dim_owned(x)?.flatten_all()?.to_vec1::<f32>()?;
        let diff = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-6, "softmax max diff {diff}");

        let big = Tensor::arange(0u32, 70_001, &dev)?.to_dtype(DType::F32)?;
        let big = ((big / 7000.0)? - 5.0)?;
        let theirs = big.gelu_erf()?.to_vec1::<f32>()?;
        let ours = gelu_erf_owned(big)?.to_vec1::<f32>()?;
        let diff = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // Inputs reach ±5, where one f32 ulp is 4.8e-7.
        assert!(diff < 2e-6, "gelu max diff {diff}");
        Ok(())
    }
}
