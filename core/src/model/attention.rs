//! candle glue for the fused encoder attention (`whisperd_kernels::attention`), in f32 or in
//! 16-bit integers.

pub use whisperd_kernels::attention::available;
use whisperd_kernels::attention::{self, HEAD_MULTIPLE};

/// Multi-head self-attention: input the fused `(batch, t, 3·d)` q/k/v projection (q already
/// scaled by dh^-0.5), output `(batch, t, d)` with heads side by side.
pub struct Attention {
    pub heads: usize,
    /// 16-bit integer products (q8's attention without AVX-512 BF16) instead of f32.
    pub integer: bool,
}

impl candle_core::CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "whisperd-fused-attention"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        if !available() {
            candle_core::bail!("fused attention needs AVX2 and FMA");
        }
        let candle_core::CpuStorage::F32(data) = s else {
            candle_core::bail!("fused attention takes f32 tensors")
        };
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("fused attention takes a contiguous tensor")
        };
        let qkv = &data[start..end];
        let &[b, t, d3] = l.dims() else {
            candle_core::bail!("attention takes (batch, t, 3d), got {:?}", l.dims())
        };
        let d = d3 / 3;
        if d3 % 3 != 0
            || self.heads == 0
            || d % self.heads != 0
            || !(d / self.heads).is_multiple_of(HEAD_MULTIPLE)
        {
            candle_core::bail!(
                "{d3} values per position do not split into q, k, v heads of a multiple of {HEAD_MULTIPLE}"
            );
        }
        let mut y = vec![0f32; b * t * d];
        if self.integer {
            attention::attention_int16(qkv, b, t, d, self.heads, &mut y);
        } else {
            attention::attention(qkv, b, t, d, self.heads, &mut y);
        }
        Ok((candle_core::CpuStorage::F32(y), (b, t, d).into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_values as values;
    use candle_core::{Device, Tensor};

    /// The fused kernels (f32 and 16-bit integer) against attention in candle f32 ops (`encoder::unfused_attention`),
    /// for a batch of two, lengths with partial query blocks and partial key tiles, and a full
    /// window; scores are spread wide enough (q scaled up) that the softmax is far from uniform.
    #[test]
    fn fused_attention_matches_candle_ops() {
        if !available() {
            eprintln!("no AVX2 here: the encoder uses candle ops");
            return;
        }
        let dev = Device::Cpu;
        for (b, t, heads) in [(2, 37, 2), (1, 100, 3), (1, 1500, 1)] {
            let d = heads * 64;
            let mut qkv = values(b * t * 3 * d, t as u64);
            for row in qkv.chunks_exact_mut(3 * d) {
                row[..d].iter_mut().for_each(|q| *q *= 4.0);
            }
            let qkv = Tensor::from_vec(qkv, (b, t, 3 * d), &dev).unwrap();
            let want = super::super::encoder::unfused_attention(&qkv, heads).unwrap();
            // Outputs are averages of values in [-1, 1]: in f32 only summation order differs;
            // the 16-bit integers move them by ~5e-4.
            for (integer, bound) in [(false, 1e-5), (true, 2e-3)] {
                let got = qkv.apply_op1_no_bwd(&Attention { heads, integer }).unwrap();
                assert_eq!(got.dims(), want.dims());
                let diff = crate::model::test_max_abs_diff(&got, &want);
                assert!(
                    diff < bound,
                    "b {b}, t {t}, heads {heads}, integer {integer}: max diff {diff}"
                );
            }
        }
    }

    /// Shapes the kernel cannot run are errors, not wrong answers.
    #[test]
    fn rejects_heads_that_do_not_fit_the_tiles() {
        let qkv = Tensor::zeros((1, 4, 3 * 40), candle_core::DType::F32, &Device::Cpu).unwrap();
        for integer in [false, true] {
            assert!(qkv
                .apply_op1_no_bwd(&Attention { heads: 1, integer })
                .is_err());
            assert!(qkv
                .apply_op1_no_bwd(&Attention { heads: 3, integer })
                .is_err());
        }
    }
}
